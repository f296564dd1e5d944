"""Loading labelled data (a CSV manifest, an image folder, the demo data) and the Data tab's reactions.

Data loads in a worker and becomes the workspace's data (:meth:`Workspace.set_data`); the Data tab's
rule of thumb follows the session (its blocks) and the data.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QFileDialog

from engine.units import plural

if TYPE_CHECKING:
    from PySide6.QtWidgets import QWidget

    from widgets.data_panel import DataPanel

    from .jobs import Jobs
    from .messages import Messages
    from .settings import Settings
    from .workspace import Workspace

DATA_FILTER = "CSV manifests (*.csv *.tsv);;All files (*)"


# -- work done in worker threads (plain functions: no Qt, no widgets) ---------------------------------
def _load_data(path: str, heads=None):
    from engine.data.loading import load_data

    # Suggested heads leave out a column with a stray cell (a warning says which) instead of refusing the file.
    data = load_data(path, heads=heads, strict_suggestions=False, dense_suggestions=True)
    data.summary()  # worked out here, in the worker: the Data tab reads it (0.5 s for 200,000 images)
    return data


def _load_demo_data():
    from engine.data.loading import load_data
    from engine.data.demo_data import ensure_demo_data

    data = load_data(ensure_demo_data(), dense_suggestions=True)  # the demo task's masks and boxes
    data.summary()
    return data


class Datasets(QObject):
    """File ▸ open data, the demo data, and the Data tab. ``loaded()`` after data has loaded."""

    loaded = Signal()

    def __init__(self, window: QWidget, workspace: Workspace, jobs: Jobs, messages: Messages, settings: Settings,
                 panel: DataPanel) -> None:
        super().__init__(window)
        self._window = window
        self._workspace, self._jobs, self._messages, self._settings = workspace, jobs, messages, settings
        self._panel = panel
        # The panel's rule of thumb depends on the session's blocks and on the data.
        workspace.connect("session", self._refresh_advice)
        workspace.connect("session_changed", self._refresh_advice)

    def _refresh_advice(self, *_: Any) -> None:
        self._panel.set_session(self._workspace.session)

    def open_data_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self._window, "Open data (a CSV manifest)",
                                              self._settings.last_dir("data"), DATA_FILTER)
        if path:
            self.load_data(path)

    def open_data_folder_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self._window,
                                                "Open data (an image folder with one subfolder per class)",
                                                self._settings.last_dir("data"))
        if path:
            self.load_data(path)

    def load_data(self, path: str) -> None:
        if self._jobs.training:
            self._messages.show_message("Data cannot change while training runs.", "warning")
            return

        def loaded(source, path=str(path)):
            self._set_data(source, path)
            self._settings.add_recent(path, "data")
            self._settings.set_last_dir("data", path)

        def failed(message, details):
            before = self._workspace.data_path
            if self._workspace.data is not None and before:  # the data loaded before stays: say which it is
                self._panel.set_path(before)
                message = f"{message}\nThe data from {Path(before).name} is still loaded."
            self._panel.set_error(message)
            self._messages.show_error(message, details, "Could not load the data")

        if self._jobs.run("data", f"Loading data from {Path(path).name}…", _load_data, str(path), finished=loaded,
                          errored=failed, bound=False) is not None:
            self._panel.set_path(str(path))

    def load_demo_data(self) -> None:
        if self._jobs.training:
            self._messages.show_message("Data cannot change while training runs.", "warning")
            return

        def failed(message, details):
            self._panel.set_error(message)
            self._messages.show_error(message, details, "Demo data")

        self._jobs.run("data", "Preparing the demo data…", _load_demo_data, bound=False, errored=failed,
                       finished=lambda source: self._set_data(source, str(source.path or source.root)))

    def _set_data(self, source, path: str) -> None:
        self._workspace.set_data(source, path)
        self._panel.set_session(self._workspace.session)
        self._panel.set_data(source)
        summary = source.summary()
        skipped = f", {summary['n_skipped']} skipped" if summary.get("n_skipped") else ""
        warnings = list(summary.get("warnings") or [])
        heed = f" {plural(len(warnings), 'warning')}: see the Data tab." if warnings else ""
        self._messages.show_message(f"Data: {summary['n_train']} training and {summary['n_val']} validation "
                                    f"images{skipped} from {Path(path).name}.{heed}",
                                    "warning" if warnings else "info")
        if not warnings:
            self._messages.suggest_next()
        self.loaded.emit()
