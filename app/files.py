"""Opening models and projects, saving, recent files, dropped files and closing with unsaved changes.

A model or project loads in a worker and becomes the workspace's session (:meth:`Workspace.set_session`);
the other concerns follow that event. A dropped data folder or image is handed on as a request
(``dataRequested``, ``imageRequested``) that the window gives to the concern for it.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QEventLoop, QObject, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QUndoStack
from PySide6.QtWidgets import QApplication, QFileDialog, QMainWindow, QMenu, QMessageBox, QProgressDialog

from engine.data.manifests import MANIFEST_SUFFIXES
from engine.units import plural

from . import dialogs
from .jobs import WAITING_FOR

if TYPE_CHECKING:
    from .jobs import Jobs
    from .messages import Messages, NotesStrip
    from .settings import Settings
    from .workers import Job
    from .workspace import Workspace

log = logging.getLogger(__name__)

MODEL_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".torchscript", ".ptl", ".pkl"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
PROJECT_FILTER = "Graft projects (*.graft);;All files (*)"
STOP_WAIT_MS = 15000  # closing: how long to wait for training to end after asking it to stop
JOB_WAIT_MS = 30000  # closing: how long to wait for other work (a load, an evaluation) to end
WAIT_NOTE_S = 0.2  # closing: after this long, a note says what it waits for


# -- work done in worker threads (plain functions: no Qt, no widgets) ---------------------------------
def _load_session(request: dict[str, Any]):
    from engine.network.loading import load_network
    from engine.surgery.session import Session

    network = load_network(request.get("spec") or "default", weights=request.get("weights"),
                           arch=request.get("arch"), random_init=bool(request.get("random_init")),
                           trust=bool(request.get("trust")))
    return Session(network)


class TrustNeeded:
    """What :func:`_open_project` brings back for a project whose pickled source model would be unpickled
    again: the window asks the user before trying again with ``trust``."""

    def __init__(self, message: str, model_file: str | None) -> None:
        self.message = message
        self.model_file = model_file  # the pickled file (None: not known)


class Opened:
    """What :func:`_open_project` brings back: the session and the paused training run the project keeps
    (None when it keeps none)."""

    def __init__(self, session: Any, paused_run: Any = None) -> None:
        self.session, self.paused_run = session, paused_run


def _open_project(path: str, trust: bool = False):
    from engine.network.loading import NeedsTrust
    from engine.project.project_file import open_project, read_checkpoint

    try:
        session = open_project(path, trust=trust)
    except NeedsTrust as exc:
        return TrustNeeded(str(exc), exc.path)
    return Opened(session, read_checkpoint(path))


def _save_project(session, path: str, extra: dict[str, Any], checkpoint: Any = None) -> str:
    from engine.project.project_file import save_project

    return str(save_project(session, path, extra=extra, checkpoint=checkpoint))


class Files(QObject):
    """File ▸ open, save and recent files; drops; closing. ``saved(path)`` after every save."""

    saved = Signal(str)
    dataRequested = Signal(str)  # a data folder or manifest was dropped or chosen from the recent files
    imageRequested = Signal(str)  # an image was dropped: try it
    stopTrainingRequested = Signal()  # closing while training runs, and the user said stop

    def __init__(self, window: QMainWindow, workspace: Workspace, jobs: Jobs, messages: Messages,
                 settings: Settings, undo_stack: QUndoStack, notes: NotesStrip, recent_menu: QMenu,
                 clear_recent: QAction, show_tab: Callable[[str], Any]) -> None:
        super().__init__(window)
        self._window = window
        self._workspace, self._jobs, self._messages = workspace, jobs, messages
        self._settings, self._undo_stack, self._notes = settings, undo_stack, notes
        self._recent_menu, self._clear_recent = recent_menu, clear_recent
        self._show_tab = show_tab
        self._close_after_save = False
        self._after_save = None
        self.wait_dialog: QProgressDialog | None = None  # shown while closing waits for work to end
        workspace.connect("session", lambda session: notes.hide())  # the notes were about the previous model
        settings.on_recent_changed(self.rebuild_recent_menu)
        self.rebuild_recent_menu()

    # -- opening ------------------------------------------------------------------------------
    def open_model_dialog(self, page: str = "bundled") -> None:
        if self._jobs.must_wait("open", "Opening a model"):
            return
        if not self.maybe_save("opening another model", then=lambda: self.open_model_dialog(page)):
            return
        dialog = dialogs.OpenModelDialog(self._window, page=page, start_dir=self._settings.last_dir("model"))
        if dialog.exec() != dialogs.QDialog.DialogCode.Accepted:
            return
        request = dialog.request()
        if request["spec"] and Path(request["spec"]).exists():
            self._settings.set_last_dir("model", request["spec"])
        self.load_model(request, ask=False)

    def load_model(self, request: dict[str, Any] | str, ask: bool = True) -> None:
        """Load a network in a worker: ``request`` is a spec string or load_network's keyword arguments."""
        if isinstance(request, str):
            request = {"spec": request}
        if self._jobs.must_wait("open", "Opening a model"):
            return
        if ask and not self.maybe_save("opening another model", then=lambda: self.load_model(request)):
            return
        text = dialogs.describe_request(request)

        def loaded(session, request=request):
            self._workspace.set_session(session, project_path=None)
            self._jobs.warm_up_once()
            spec = str(request.get("spec") or "default")
            if Path(spec).exists():
                self._settings.add_recent(spec, "model")
            self._show_notes(session.network.notes, f"Loaded {session.describe()}.")

        self._jobs.run("load", text, _load_session, dict(request), finished=loaded, bound=False,
                       errored=self._messages.errors_titled("Could not open the model"))

    def open_project_dialog(self) -> None:
        if self._jobs.must_wait("open", "Opening a project"):
            return
        if not self.maybe_save("opening a project", then=self.open_project_dialog):
            return
        path, _ = QFileDialog.getOpenFileName(self._window, "Open project", self._settings.last_dir("project"),
                                              PROJECT_FILTER)
        if path:
            self.open_project_file(path, ask=False)

    def open_project_file(self, path: str, ask: bool = True, trust: bool = False, recovered: Any = None,
                          then: Callable[[], Any] | None = None) -> None:
        """Open a project in a worker. ``trust``: the user has said they trust its pickled source model
        (asked for when the project needs it, see :meth:`_ask_trust`). ``recovered``: ``path`` is a recovery
        file (:class:`engine.project.recovery.RecoveryInfo`): the work opens as unsaved work of the project
        it came from (if any), its data loads again; ``then()`` once it is open."""
        if self._jobs.must_wait("open", "Opening a project"):
            return
        if ask and not self.maybe_save("opening a project", then=lambda: self.open_project_file(
                path, trust=trust, recovered=recovered, then=then)):
            return

        def opened(result, path=str(path)):
            if isinstance(result, TrustNeeded):
                if recovered is None:
                    self._ask_trust(path, result)
                else:
                    self._messages.show_error(f"The recovered work cannot be opened: {result.message}")
                return
            session = result.session
            if recovered is not None:
                self._workspace.set_session(session, project_path=recovered.project, paused_run=result.paused_run,
                                            steps=recovered.steps)
                self._undo_stack.resetClean()  # its steps (undoable again) are in no saved file
                self._workspace.weights_changed = True  # unsaved work, until it is saved
                self._jobs.warm_up_once()
                self._show_notes(session.network.notes, f"Recovered the work from {recovered.clock()}: "
                                 f"{session.describe()}, {plural(len(session.heads), 'head')}. Save it to keep it.")
                if recovered.data and Path(recovered.data).exists():
                    self.dataRequested.emit(recovered.data)
            else:
                self._workspace.set_session(session, project_path=path, paused_run=result.paused_run)
                self._jobs.warm_up_once()
                self._settings.add_recent(path, "project")
                self._settings.set_last_dir("project", path)
                self._show_notes(session.network.notes, f"Opened {Path(path).name}: {session.describe()}, "
                                                        f"{plural(len(session.heads), 'head')}.")
            if then is not None:
                then()

        self._jobs.run("load", f"Opening {Path(path).name}…", _open_project, str(path), trust, finished=opened,
                       bound=False, errored=self._messages.errors_titled("Could not open the project"))

    def _ask_trust(self, path: str, needed: TrustNeeded) -> None:
        """The project would unpickle its source model again: open it only if the user trusts that file."""
        name = Path(path).name
        model = needed.model_file
        if model:
            text = (f"{name} was made from a pickled model file:\n\n{model}\n\n"
                    f"Opening the project loads {Path(model).name} again. Loading a pickled file can run any "
                    "code it contains, with your permissions, so do this only if you trust that file and "
                    f"where it came from.\n\nTrust {Path(model).name} and open {name}?")
        else:
            text = f"{needed.message}\n\nTrust that model file and open {name}?"
        answer = QMessageBox.question(self._window, "Trust this model file?", text,
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        if answer == QMessageBox.StandardButton.Yes:
            self.open_project_file(path, ask=False, trust=True)
        else:
            what = f"the pickled model {Path(model).name}" if model else "its pickled model"
            self._messages.show_message(f"{name} was not opened: it needs {what}, which you did not trust.",
                                        "warning")

    def _show_notes(self, notes: list[str], done: str) -> None:
        """After a model or project has loaded: its notes (e.g. weights assumed or missing, how far undo
        reaches) in the status line and, in full, in the strip above the tree and tabs; else ``done`` and
        what to do next."""
        for note in notes:
            self._messages.show_message(note, "warning" if "random" in note else "info")
        if not notes:
            self._messages.show_message(done)
            self._messages.suggest_next()
            return
        self._notes.show_notes(done, notes, "warning" if any("random" in note for note in notes) else "info")

    def open_path(self, path: str) -> None:
        """What a dropped file means: a project, a model, data (folder or CSV) or an image to try."""
        p = Path(path)
        suffix = p.suffix.lower()
        if suffix == ".graft":
            self.open_project_file(str(p))
        elif suffix in MODEL_SUFFIXES:
            self.load_model({"spec": str(p)})
        elif p.is_dir() or suffix in MANIFEST_SUFFIXES:
            self.dataRequested.emit(str(p))
            self._show_tab("data")
        elif suffix in IMAGE_SUFFIXES:
            self._show_tab("evaluate")
            self.imageRequested.emit(str(p))
        else:
            self._messages.show_error(f"{p.name}: Graft opens .graft projects, model files, data folders or CSV "
                                      "manifests, and images to try.")

    # -- recent files -------------------------------------------------------------------------
    def rebuild_recent_menu(self) -> None:
        menu = self._recent_menu
        menu.clear()
        items = self._settings.recent_files()
        for i, item in enumerate(items):
            label = f"&{i + 1} {Path(item['path']).name}  ({item['kind']})"
            action = menu.addAction(label)
            action.setToolTip(item["path"])
            action.setStatusTip(item["path"])
            action.triggered.connect(lambda _=False, it=dict(item): self.open_recent(it))
        if items:
            menu.addSeparator()
            menu.addAction(self._clear_recent)
        else:
            empty = menu.addAction("No recent files")
            empty.setEnabled(False)

    def open_recent(self, item: dict[str, str]) -> None:
        path = item["path"]
        if not Path(path).exists():
            self._settings.remove_recent(path)
            self._messages.show_error(f"{path} is no longer there.")
            return
        if item["kind"] == "project":
            self.open_project_file(path)
        elif item["kind"] == "data":
            self.dataRequested.emit(path)
        else:
            self.load_model({"spec": path})

    def clear_recent(self) -> None:
        self._settings.clear_recent()

    # -- saving -------------------------------------------------------------------------------
    def save_project(self) -> bool:
        if self._workspace.project_path:
            return self.save_project_to(self._workspace.project_path)
        return self.save_project_as()

    def save_project_as(self) -> bool:
        if self._workspace.session is None:
            return False
        start = self._workspace.project_path or str(Path(self._settings.last_dir("project")) / "untitled.graft")
        path, _ = QFileDialog.getSaveFileName(self._window, "Save project", start, PROJECT_FILTER)
        if not path:
            return False
        if not path.endswith(".graft"):
            path += ".graft"
        return self.save_project_to(path)

    def save_project_to(self, path: str) -> bool:
        session = self._workspace.session
        if session is None:
            return False
        if self._jobs.must_wait("save", "Saving"):
            return False
        extra = dict(session.project_extra or {})  # keeps the training record (evaluate/export read it)
        if self._workspace.data_path:
            extra["data"] = self._workspace.data_path
        clean_index = self._undo_stack.index()

        def done(written, clean_index=clean_index):
            clean = self._undo_stack.index() == clean_index
            if clean:
                self._undo_stack.setClean()
            self._workspace.saved(written, clean)
            self._settings.add_recent(written, "project")
            self._settings.set_last_dir("project", written)
            self._messages.show_message(f"Saved {Path(written).name}.")
            self.saved.emit(written)
            if self._close_after_save:
                QTimer.singleShot(0, self._window.close)
            elif self._after_save is not None:
                QTimer.singleShot(0, self._after_save)
            self._after_save = None

        def failed(message, details):
            closing = self._close_after_save
            self._close_after_save = False
            self._after_save = None
            self._messages.show_error(message, details, "Could not save")
            if closing:
                self._close_cancelled()

        def stale(written):
            self._close_after_save = False  # both were meant for the session saved, which is gone
            self._after_save = None
            self._messages.show_message(f"Saved {Path(written).name} (the model that was open when the save began).")

        # a paused run is kept with the project, so it can be resumed after reopening it
        return self._jobs.run("save", f"Saving {Path(path).name}…", _save_project, session, str(path), extra,
                              self._workspace.paused_run, finished=done, errored=failed, stale=stale) is not None

    def maybe_save(self, doing: str, then=None) -> bool:
        """Offer to save unsaved work. True: go on now. False: cancelled, or saving first — then ``then``
        runs once the save has succeeded."""
        if self._workspace.session is None or not self._window.isWindowModified():
            return True
        answer = QMessageBox.question(
            self._window, "Unsaved changes",
            f"The project has unsaved changes (surgery, heads or trained weights). Save them before {doing}?",
            QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard | QMessageBox.StandardButton.Cancel,
            QMessageBox.StandardButton.Save)
        if answer == QMessageBox.StandardButton.Cancel:
            return False
        if answer == QMessageBox.StandardButton.Save:
            self._after_save = then
            if not self.save_project():
                self._after_save = None
            return False  # the save runs in a worker; ``then`` continues when it is done
        return True

    # -- closing ------------------------------------------------------------------------------
    def close_now(self) -> bool:
        """Everything closing involves; False when the window stays open (cancelled, or saving first)."""
        jobs = self._jobs
        if jobs.training:
            answer = QMessageBox.question(
                self._window, "Training is running",
                "Training is still running. Stop it and close Graft?\n\n"
                "Training stops after the current batch; the weights it has learned stay in the model.",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
            if answer != QMessageBox.StandardButton.Yes:
                return False
            self._workspace.closing = True
            job = jobs.train_job
            self.stopTrainingRequested.emit()
            # The run ends as any stopped run does (its result recorded, the weights it learned kept), so
            # that a cancelled close below leaves a window that is simply not training any more.
            if not self.wait_for([job], STOP_WAIT_MS):
                log.warning("training did not stop within %d ms", STOP_WAIT_MS)
        if "save" in jobs.running:
            self._close_after_save = True  # closes itself when the save is done
            return False
        if self._window.isWindowModified() and not self._close_after_save:
            answer = QMessageBox.question(
                self._window, "Unsaved changes",
                "Save the project before closing? Otherwise the surgery, heads and trained weights are lost.",
                QMessageBox.StandardButton.Save | QMessageBox.StandardButton.Discard
                | QMessageBox.StandardButton.Cancel, QMessageBox.StandardButton.Save)
            if answer == QMessageBox.StandardButton.Cancel:
                self._close_cancelled()
                return False
            if answer == QMessageBox.StandardButton.Save:
                self._close_after_save = True
                if not self.save_project():
                    self._close_after_save = False
                    self._close_cancelled()
                return False  # the save worker closes the window when it is done
        self._workspace.closing = True
        pending = jobs.stop_all()  # from now on their results reach nobody
        if not self.wait_for(pending, JOB_WAIT_MS):
            log.warning("%s still running when the window closed", ", ".join(j.name for j in pending if not j.ended))
        jobs.forget()
        self._workspace.close()
        return True

    def _close_cancelled(self) -> None:
        """The window stays open after all (a run that ended while closing is evaluated now)."""
        self._workspace.closing = False

    def wait_for(self, jobs: list[Job], timeout_ms: int) -> bool:
        """Wait until ``jobs`` have ended (True) or ``timeout_ms`` passed. The GUI thread keeps handling
        events meanwhile (but not the user's input), so the jobs' last signals arrive and the window
        repaints; after a moment a small modal note says what it waits for."""
        pending = [j for j in jobs if not j.ended]
        if not pending:
            return True

        def text() -> str:
            return f"Closing Graft: waiting for {WAITING_FOR.get(pending[0].name, 'work in the background to end')}…"

        start = time.monotonic()
        dialog: QProgressDialog | None = None
        try:
            while True:
                QApplication.processEvents(QEventLoop.ProcessEventsFlag.ExcludeUserInputEvents)
                pending = [j for j in pending if not j.ended]
                elapsed = time.monotonic() - start
                if not pending or elapsed * 1000 >= timeout_ms:
                    break
                if dialog is None and elapsed >= WAIT_NOTE_S:  # not for work that ends at once
                    dialog = QProgressDialog(text(), "", 0, 0, self._window)
                    dialog.setCancelButton(None)
                    dialog.setWindowTitle("Graft")
                    dialog.setWindowModality(Qt.WindowModality.WindowModal)
                    dialog.setMinimumDuration(0)
                    dialog.setAutoClose(False)
                    self.wait_dialog = dialog
                    dialog.show()
                elif dialog is not None:
                    dialog.setLabelText(text())
                pending[0].wait(20)
        finally:
            if dialog is not None:
                dialog.close()
                dialog.deleteLater()
            self.wait_dialog = None
        return not pending
