"""Before and after: Surgery ▸ Compare with ▸ the network as loaded, or another project or model file.

The comparison (:mod:`engine.project.diff`: layers removed, added, replaced or reshaped, and how far each
layer's weights moved) runs in a worker, since rebuilding the other side loads a network; the layer
tree then shows it in its Change column, with badges (:meth:`LayerTreeModel.set_changes`), until it is
cleared, another network is opened, or surgery changes the network (the comparison would be stale).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QFileDialog, QWidget

if TYPE_CHECKING:
    from widgets.layer_tree_model import LayerTreeModel

    from .jobs import Jobs
    from .messages import Messages
    from .settings import Settings
    from .workspace import Workspace

COMPARE_FILTER = ("Projects and models (*.graft *.pt *.pth *.bin *.ckpt *.safetensors *.torchscript *.pkl);;"
                  "Graft projects (*.graft);;All files (*)")


# -- work done in a worker (plain functions: no Qt) ---------------------------------------------------
def _with_loaded(session):
    from engine.project.diff import compare_with_loaded

    return compare_with_loaded(session)


def _with_file(session, path: str):
    from engine.project.diff import compare, load_side, side_of_session

    return compare(load_side(path), side_of_session(session, f"{session.describe()} now"))


class Compare(QObject):
    """The comparison the layer tree shows. ``compared(diff)`` once one is shown; ``cleared()``."""

    compared = Signal(object)  # the engine's ModelDiff
    cleared = Signal()

    def __init__(self, window: QWidget, workspace: Workspace, jobs: Jobs, messages: Messages, settings: Settings,
                 tree_model: LayerTreeModel) -> None:
        super().__init__(window)
        self._window = window
        self._workspace, self._jobs, self._messages, self._settings = workspace, jobs, messages, settings
        self._tree_model = tree_model
        self.diff: Any = None  # the comparison shown, or None
        workspace.connect("session", lambda session: self.clear(quiet=True))
        workspace.connect("session_changed", self._network_changed)

    def with_loaded(self) -> bool:
        """Compare the network now with the network as it was loaded (rebuilt from its source)."""
        session = self._workspace.session
        if session is None or self._jobs.must_wait("compare", "Comparing"):
            return False
        return self._start(_with_loaded, session, f"Comparing with {session.describe()} as loaded…")

    def with_file_dialog(self) -> bool:
        if self._workspace.session is None:
            return False
        path, _ = QFileDialog.getOpenFileName(self._window, "Compare with a project or model",
                                              self._settings.last_dir("project"), COMPARE_FILTER)
        return bool(path) and self.with_path(path)

    def with_path(self, path: str) -> bool:
        """Compare the network now with a .graft project, a model file or a model name (``resnet18``)."""
        session = self._workspace.session
        if session is None or self._jobs.must_wait("compare", "Comparing"):
            return False
        return self._start(_with_file, session, f"Comparing with {Path(path).name}…", path)

    def _start(self, fn, session, text: str, *args) -> bool:
        return self._jobs.run("compare", text, fn, session, *args, finished=self._show,
                              errored=lambda message, details: self._messages.show_error(message, details,
                                                                                         title="Compare")) is not None

    def _show(self, diff) -> None:
        self.diff = diff
        self._tree_model.set_changes(diff.changes())
        changed = len(diff.changed())
        notes = "".join(f" Note: {n}." for n in diff.notes)
        self._messages.show_message(f"Compared with {diff.before}: {changed} change{'s' if changed != 1 else ''} "
                                    f"({diff.summary()}), shown in the tree's Change column.{notes}")
        self.compared.emit(diff)

    def clear(self, quiet: bool = False) -> None:
        """Hide the comparison (the tree's Change column goes away)."""
        had = self.diff is not None or self._tree_model.has_changes()
        self.diff = None
        self._tree_model.set_changes(None)
        if had:
            if not quiet:
                self._messages.show_message("Comparison cleared.")
            self.cleared.emit()

    def _network_changed(self, op: Any) -> None:
        """Surgery done or undone: a comparison of modules that changed since is stale (freezing is not)."""
        if self.diff is not None and (op.structural or op.touches_heads or op.sets_input):
            self.clear(quiet=True)
