"""Autosave and crash recovery: unsaved work goes to a recovery file in Graft's cache folder every few
minutes (the setting ``recovery/autosave_minutes``; 0: never) and, while a run trains, at each epoch that is
the best so far; a clean close (or a save) removes it. After a crash the next start asks "Recover the work
from 10:42?" (Restore / Discard).

The file and its writing thread are the engine's (:mod:`engine.project.recovery`): the GUI thread only
captures the recipe and references to the weights (a millisecond or so) when nothing trains; a run hands
over its own copies from the training thread (:attr:`app.workers.TrainWorker.keep`). Each window holds a
``QLockFile`` beside its file while it is open, so another window never offers it; a lock whose process has
died is stale, and its file is the crashed window's work.
"""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QLockFile, QObject, QTimer, Signal
from PySide6.QtWidgets import QMessageBox

from engine.errors import GraftError
from engine.project.recovery import (RecoveryInfo, RecoveryWriter, capture, read_recovery, recovery_files,
                                     recovery_folder)
from engine.units import plural

from .undo import history_steps

if TYPE_CHECKING:
    from PySide6.QtGui import QUndoStack
    from PySide6.QtWidgets import QMainWindow

    from .files import Files
    from .jobs import Jobs
    from .messages import Messages
    from .settings import Settings
    from .workspace import Workspace

MINUTES_KEY = "recovery/autosave_minutes"
DEFAULT_MINUTES = 2.0


def lock_path(path: Path) -> Path:
    return path.with_suffix(".lock")


class Recovery(QObject):
    """The window's recovery file. ``prompt``: the open "Recover the work from …?" box (None when none);
    ``written(path)`` after each write (from the writer's thread, queued here), ``restored(info)`` once
    recovered work is open, ``offered(info)`` when the prompt appears."""

    written = Signal(str)
    failed = Signal(str)
    offered = Signal(object)
    restored = Signal(object)

    def __init__(self, window: QMainWindow, workspace: Workspace, jobs: Jobs, messages: Messages,
                 settings: Settings, files: Files, undo_stack: QUndoStack, folder: str | Path | None = None) -> None:
        super().__init__(window)
        self._window, self._workspace, self._jobs, self._messages = window, workspace, jobs, messages
        self._settings, self._files, self._undo_stack = settings, files, undo_stack
        self.folder = Path(folder) if folder is not None else recovery_folder()
        self.path = self.folder / f"recovery-{os.getpid()}-{uuid.uuid4().hex[:8]}.graft"
        self._lock: QLockFile | None = None
        self._claimed: dict[Path, QLockFile] = {}  # crashed windows' files being offered, locked meanwhile
        self._queue: list[RecoveryInfo] = []
        self.prompt: QMessageBox | None = None
        self._dirty = False
        self._failed_said = False
        self.writer = RecoveryWriter(self.path, on_written=lambda p: self.written.emit(str(p)),
                                     on_failed=self.failed.emit)
        self.failed.connect(self._on_failed)
        self.timer = QTimer(self)
        self.timer.timeout.connect(self.autosave)
        self.set_minutes(self.minutes())
        for event in ("session_changed", "data"):
            workspace.connect(event, self._changed)
        workspace.connect("modified", self._saved_or_not)
        undo_stack.cleanChanged.connect(self._saved_or_not)
        workspace.connect("session", self._new_session)
        workspace.connect("closed", self._closed)

    # -- the setting --------------------------------------------------------------------------------
    def minutes(self) -> float:
        try:
            value = float(self._settings.value(MINUTES_KEY, DEFAULT_MINUTES))
        except (TypeError, ValueError):
            value = DEFAULT_MINUTES
        return max(0.0, value)

    def set_minutes(self, minutes: float) -> None:
        """Autosave every ``minutes`` (0: off, and no copies at best epochs either)."""
        self._settings.set_value(MINUTES_KEY, float(minutes))
        if minutes > 0:
            self.timer.start(max(1000, int(minutes * 60_000)))
        else:
            self.timer.stop()

    @property
    def enabled(self) -> bool:
        return self.timer.isActive()

    # -- keeping the work ---------------------------------------------------------------------------
    def _new_session(self, session: Any) -> None:
        self._dirty = False  # a model or project just opened: nothing unsaved yet
        self.writer.discard()

    def unsaved(self) -> bool:
        """Work the project file does not hold (the window's modified mark, worked out as it does)."""
        ws = self._workspace
        return ws.session is not None and (not self._undo_stack.isClean() or ws.weights_changed)

    def _changed(self, *_: Any) -> None:
        self._dirty = self._workspace.session is not None  # whether it is unsaved is known at the next copy

    def _saved_or_not(self, *_: Any) -> None:
        if self._workspace.session is None:
            return
        if not self.unsaved() and not self._jobs.training:
            self._dirty = False  # saved (or back to the saved state): nothing to recover
            self.writer.discard()
        else:
            self._dirty = True

    def _note(self) -> str:
        s = self._workspace.session
        steps = len(s.recipe()) if s is not None else 0
        note = plural(steps, "surgery step")
        if self._workspace.weights_changed:
            note += ", trained weights"
        return note

    def autosave(self, force: bool = False) -> bool:
        """Hand the unsaved work to the writer (True); nothing when it is saved, or while a run trains (the
        run hands over its best weights itself). ``force``: even when nothing changed since the last copy."""
        ws = self._workspace
        if ws.session is None or self._jobs.training or ws.closing or not (self._dirty or force):
            return False
        if not self.unsaved():
            return False
        if not self.writer.idle:  # the last copy is still being written: capture after it, not beside it
            QTimer.singleShot(250, lambda: self.autosave(force))
            return False
        self._hold_lock()  # before the file exists: no other window may take it for a crashed one's
        self.writer.submit(capture(ws.session, ws.session.project_extra, ws.project_path, ws.data_path, self._note(),
                                   steps=history_steps(self._undo_stack)))
        self._dirty = False
        return True

    def training_started(self, worker: Any) -> None:
        """A run starts: the recipe now (with no weights: the run's thread hands over its own copies) and the
        worker's ``keep`` wired to the writer. A run that is a pause's resumption is the same."""
        ws = self._workspace
        if ws.session is None or not self.enabled or not hasattr(worker, "keep"):
            return
        state = capture(ws.session, ws.session.project_extra, ws.project_path, ws.data_path, "training",
                        steps=history_steps(self._undo_stack))
        state.weights = None  # the live ones change under the run: never written
        self._hold_lock()
        self.writer.submit(state, write=False)

        def keep(weights: dict[str, Any], note: str, writer: RecoveryWriter = self.writer) -> None:
            first = note == "the weights before training"
            writer.update(weights, note="training; " + note, write=not first)

        worker.keep = keep

    def training_finished(self, *_: Any) -> None:
        """The run ended: the model is idle on the CPU again, its weights are the run's result."""
        self._dirty = True
        if self.enabled:
            self.autosave()

    def _hold_lock(self) -> None:
        if self._lock is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._lock = QLockFile(str(lock_path(self.path)))
            self._lock.setStaleLockTime(0)  # stale only when its process is gone, however old
            if not self._lock.tryLock(0):
                self._lock = None

    def _on_failed(self, message: str) -> None:
        if not self._failed_said:  # once: it is retried at the next autosave
            self._failed_said = True
            self._messages.show_message(f"Could not keep a recovery copy of the work: {message}", "warning")

    def _closed(self) -> None:
        """A clean close: the work was saved or given up, so the file goes."""
        self.timer.stop()
        try:  # the stack says it is clean as it is destroyed, after the window's parts this reads are gone
            self._undo_stack.cleanChanged.disconnect(self._saved_or_not)
        except (RuntimeError, TypeError):
            pass
        self.writer.close(remove=True)
        if self._lock is not None:
            self._lock.unlock()
            self._lock = None
        for lock in self._claimed.values():
            lock.unlock()
        self._claimed.clear()

    # -- after a crash ------------------------------------------------------------------------------
    def stale(self) -> list[RecoveryInfo]:
        """The recovery files of windows that ended without closing (their lock is stale), newest first,
        each locked by this window until it is restored or discarded. Damaged ones are removed."""
        found = []
        for path in recovery_files(self.folder):
            if path == self.path or path in self._claimed:
                continue
            lock = QLockFile(str(lock_path(path)))
            lock.setStaleLockTime(0)
            if not lock.tryLock(0):  # its window is open
                continue
            try:
                info = read_recovery(path)
            except GraftError:
                path.unlink(missing_ok=True)
                lock.unlock()
                continue
            self._claimed[path] = lock
            found.append(info)
        return found

    def offer(self) -> RecoveryInfo | None:
        """Ask about the newest crashed window's work (the next after each answer)."""
        if self.prompt is not None:
            return None
        if not self._queue:
            self._queue = self.stale()
        if not self._queue:
            return None
        info = self._queue.pop(0)
        box = QMessageBox(QMessageBox.Icon.Question, "Recover unsaved work", info.question(),
                          QMessageBox.StandardButton.NoButton, self._window)
        box.setObjectName("recoveryPrompt")
        box.setInformativeText(info.details() + "\n\nRestore opens it as it was then; Discard deletes it.")
        restore = box.addButton("Restore", QMessageBox.ButtonRole.AcceptRole)
        discard = box.addButton("Discard", QMessageBox.ButtonRole.DestructiveRole)
        box.setDefaultButton(restore)
        box.setEscapeButton(None)

        def answered(_: int = 0) -> None:
            self.prompt = None
            clicked = box.clickedButton()
            if clicked is restore:
                self.restore(info)
            elif clicked is discard:
                self.discard(info)
            else:  # the box closed unanswered: ask again next time
                self._release(info.path)
            box.deleteLater()
            QTimer.singleShot(0, self.offer)

        box.finished.connect(answered)
        self.prompt = box
        box.open()
        self.offered.emit(info)
        return info

    def restore(self, info: RecoveryInfo) -> None:
        """Open the crashed window's work (in a worker); its file goes once the work is open here, whose own
        recovery file then keeps it."""
        def opened() -> None:
            self.discard(info)
            self._dirty = True
            self.autosave()
            self.restored.emit(info)

        self._files.open_project_file(str(info.path), recovered=info, then=opened)

    def discard(self, info: RecoveryInfo) -> None:
        info.path.unlink(missing_ok=True)
        self._release(info.path, remove=True)

    def _release(self, path: Path, remove: bool = False) -> None:
        lock = self._claimed.pop(path, None)
        if lock is not None:
            lock.unlock()  # unlocking removes the lock file
        if remove:
            lock_path(path).unlink(missing_ok=True)
