"""The Graft window: the layer tree on the left; Heads, Data, Train and Evaluate tabs on the right.

Everything slow (loading a network, a project or data, training, evaluating, predicting, saving,
exporting) runs in a worker (:mod:`app.workers`); the window only starts jobs and shows what comes back.
Every surgery is applied first — an illegal one raises GraftError and changes nothing — and then pushed on
the QUndoStack as an already-applied :class:`~app.undo.OperationCommand`.
"""
from __future__ import annotations

import html
import logging
import math
import time
from pathlib import Path
from typing import Any

from PySide6.QtCore import QEvent, QEventLoop, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QDragEnterEvent, QDropEvent, QPainter, QUndoStack
from PySide6.QtWidgets import (QApplication, QFileDialog, QFrame, QGroupBox, QHBoxLayout, QLabel, QMainWindow,
                               QMessageBox, QProgressBar, QProgressDialog, QScrollArea, QSizePolicy, QSplitter,
                               QTabWidget, QToolBar, QToolButton, QUndoView, QVBoxLayout, QWidget)

from engine.data.datasets import MANIFEST_SUFFIXES
from engine.errors import GraftError
from engine.network.layer_tree import HEADS_KEY
from engine.training.record import TrainingRecord
from engine.units import human_count as human
from engine.units import plural

from . import dialogs
from .actions import Actions, icon
from .settings import Settings
from .undo import push_operation
from .workers import Cancelled, Job, TrainWorker, run_in_thread, start_worker

log = logging.getLogger(__name__)

MODEL_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".torchscript", ".ptl", ".pkl"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
PROJECT_FILTER = "Graft projects (*.graft);;All files (*)"
ONNX_FILTER = "ONNX models (*.onnx);;All files (*)"
DATA_FILTER = "CSV manifests (*.csv *.tsv);;All files (*)"
STOP_WAIT_MS = 15000  # closing: how long to wait for training to end after asking it to stop
JOB_WAIT_MS = 30000  # closing: how long to wait for other work (a load, an evaluation) to end
WAIT_NOTE_S = 0.2  # closing: after this long, a note says what it waits for
TABS = ("heads", "data", "train", "evaluate")
NOTES_STYLE = {  # the strip above the tree and tabs with what loading a model or project noted
    "info": "QFrame#loadNotes { background: #e8f1fb; border: 1px solid #c4daf2; border-radius: 6px; }",
    "warning": "QFrame#loadNotes { background: #fff4e5; border: 1px solid #f3c58a; border-radius: 6px; }",
}

# What each kind of work has to wait for: the names of running jobs, "train" for the training run.
# Loading data never touches the model. A prediction only reads it (one forward pass): saving, which only
# reads it too, and opening another model (whose session replaces it; the late prediction is dropped) need
# not wait for one, but surgery, which changes the modules under the forward pass, must; so must an
# evaluation or an export, which move the model or switch it between train and eval mode.
WAITS_FOR: dict[str, frozenset[str]] = {
    "surgery": frozenset({"train", "load", "save", "evaluate", "export", "predict"}),
    "save": frozenset({"train", "load", "save", "evaluate", "export"}),
    "open": frozenset({"train", "load", "save", "evaluate", "export"}),
    "export": frozenset({"train", "load", "save", "evaluate", "export", "predict"}),
    "evaluate": frozenset({"train", "load", "save", "evaluate", "export", "predict", "data"}),
    "predict": frozenset({"train", "load", "evaluate", "export", "predict"}),
    "train": frozenset({"train", "load", "save", "evaluate", "export", "predict", "data"}),
    "data": frozenset({"train", "data"}),
}
UNTIL = {  # "… waits until <this>."
    "train": "training has finished (Stop ends it after the current batch)",
    "load": "the model has loaded",
    "save": "the project has been saved",
    "evaluate": "the evaluation has finished",
    "export": "the export has finished",
    "predict": "the prediction has finished",
    "data": "the data has loaded",
}
WAITING_FOR = {  # closing: "waiting for <this>…"
    "train": "training to stop",
    "load": "the model to load",
    "save": "the project to be saved",
    "evaluate": "the evaluation to stop",
    "export": "the export to finish",
    "predict": "the prediction to finish",
    "data": "the data to load",
}


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


def _open_project(path: str, trust: bool = False):
    from engine.network.loading import NeedsTrust
    from engine.project.project_file import open_project

    try:
        return open_project(path, trust=trust)
    except NeedsTrust as exc:
        return TrustNeeded(str(exc), exc.path)


def _load_data(path: str, heads=None):
    from engine.data.datasets import load_data

    # Suggested heads leave out a column with a stray cell (a warning says which) instead of refusing the file.
    return load_data(path, heads=heads, strict_suggestions=False)


def _load_demo_data():
    from engine.data.datasets import load_data
    from engine.data.demo_data import ensure_demo_data

    return load_data(ensure_demo_data())


def _warm_up() -> None:
    """Import what training needs the first time (PyTorch loads ~900 modules lazily on the first optimizer
    step, holding the GIL for over a second). Done once in the background after the first model loads,
    so the GUI does not stutter when training starts."""
    import importlib

    import torch

    for name in ("engine.training.trainer", "engine.training.evaluation"):
        importlib.import_module(name)
    layer = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(layer.parameters())
    layer(torch.zeros(2, 4)).sum().backward()
    optimizer.step()


class ElidedLabel(QLabel):
    """A status-bar label that shrinks with an ellipsis instead of pushing its neighbours out."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setMinimumWidth(60)

    def sizeHint(self) -> QSize:
        hint = super().sizeHint()
        return QSize(min(hint.width(), 520), hint.height())

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        rect = self.contentsRect().adjusted(self.margin() + 8, 0, -self.margin() - 8, 0)
        text = self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight, rect.width())
        painter.setPen(self.palette().color(self.foregroundRole()))
        painter.drawText(rect, int(Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft), text)


class MainWindow(QMainWindow):
    """The application window. Signals announce finished background work (tests wait on them)."""

    _warmed_up = False  # once per process: see _warm_up

    modelLoaded = Signal()
    dataLoaded = Signal()
    trainingStarted = Signal()
    trainingFinished = Signal(object)  # the TrainResult as a dict
    evaluated = Signal(object)  # the EvalReport
    predicted = Signal(object)
    exported = Signal(object)  # the ExportReport
    saved = Signal(str)
    errorShown = Signal(str)

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__()
        self.settings = settings or Settings()
        self.session = None
        self.data = None
        self.data_path: str | None = None
        self.project_path: str | None = None
        self.train_job: Job | None = None
        self._train_record: TrainingRecord | None = None  # the running training's data and settings
        self.last_train_result: dict[str, Any] | None = None
        self.last_report = None
        self._jobs: dict[str, Job] = {}
        self._session_serial = 0  # +1 for every new session: a job's result is applied only to its own
        self._stop_requested = False  # Stop was pressed for the running training
        self._weights_changed = False  # training changes weights outside the undo stack
        self._close_after_save = False
        self._after_save = None
        self._closing = False
        self._in_close = False
        self._evaluate_after_close = False  # training ended while closing, and the close was then cancelled
        self._closed = False
        self._warm_job: Job | None = None
        self.wait_dialog: QProgressDialog | None = None  # shown while closing waits for work to end

        self.undo_stack = QUndoStack(self)
        self._undo_index = 0  # the stack's index as last seen (undo and redo say what they did)
        self._pushing = False  # a surgery is being pushed: it says what it did itself
        self._undo_failed = False  # the undo or redo under way could not be done and said so
        self.undo_stack.cleanChanged.connect(self._update_modified)
        self.undo_stack.indexChanged.connect(self._on_undo_index)

        self.setWindowTitle("Graft[*]")
        self.setWindowIcon(icon("graft"))
        self.setAcceptDrops(True)
        self.setDockNestingEnabled(False)

        self.actions = Actions(self, self.undo_stack)
        self._build_widgets()
        self._build_chrome()
        self._connect()
        self._restore_window()
        self._refresh()

    # ------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------
    def _build_widgets(self) -> None:
        from widgets.curve_panel import CurvePanel
        from widgets.data_panel import DataPanel
        from widgets.evaluation_panel import EvaluationPanel
        from widgets.heads_panel import HeadsPanel
        from widgets.layer_tree_model import LayerTreeModel
        from widgets.layer_tree_view import LayerTreeView
        from widgets.training_panel import TrainingPanel
        from widgets.try_image_view import TryImageView

        self.tree_model = LayerTreeModel(parent=self)
        self.tree_view = LayerTreeView(self.tree_model)

        self.heads_panel = HeadsPanel()
        self.data_panel = DataPanel()
        self.training_panel = TrainingPanel()
        self.curve_panel = CurvePanel()
        self.evaluation_panel = EvaluationPanel()
        self.try_image = TryImageView()

        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(False)
        self.tabs.addTab(self._split(Qt.Orientation.Vertical, self.heads_panel, self._history_box(), (3, 1)),
                         icon("add-head"), "Heads")
        self.tabs.addTab(self.data_panel, icon("data"), "Data")
        # The settings scroll rather than forcing their width on the window; the plots stack when narrow.
        self.train_split = self._split(Qt.Orientation.Horizontal, self._scrolled(self.training_panel),
                                       self.curve_panel, (0, 1))
        self.curve_panel.set_orientation(Qt.Orientation.Vertical)
        self.curve_panel.installEventFilter(self)
        self.tabs.addTab(self.train_split, icon("start"), "Train")
        self.evaluate_split = self._split(Qt.Orientation.Horizontal, self.evaluation_panel, self.try_image, (1, 1))
        self.tabs.addTab(self.evaluate_split, icon("evaluate"), "Evaluate")

        self.splitter = QSplitter(Qt.Orientation.Horizontal)
        self.splitter.setObjectName("mainSplitter")
        self.splitter.addWidget(self.tree_view)
        self.splitter.addWidget(self.tabs)
        self.splitter.setStretchFactor(0, 2)
        self.splitter.setStretchFactor(1, 3)
        self.splitter.setChildrenCollapsible(False)
        central = QWidget()
        column = QVBoxLayout(central)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(4)
        column.addWidget(self._notes_box())
        column.addWidget(self.splitter, 1)
        self.setCentralWidget(central)

    def _notes_box(self) -> QWidget:
        """What loading a model or project noted (weights assumed or missing, how far undo reaches), in
        full: the status line has room for one short message. Hidden until there are notes."""
        self.notes_box = QWidget()
        self.notes_frame = QFrame(self.notes_box)
        self.notes_frame.setObjectName("loadNotes")
        self.notes_label = QLabel()
        self.notes_label.setObjectName("loadNotesText")
        self.notes_label.setTextFormat(Qt.TextFormat.RichText)
        self.notes_label.setWordWrap(True)
        self.notes_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.notes_label.setStyleSheet("background: transparent; border: none;")
        close = QToolButton()
        close.setObjectName("loadNotesClose")
        close.setText("✕")
        close.setAutoRaise(True)
        close.setToolTip("Hide these notes")
        close.clicked.connect(self.notes_box.hide)
        layout = QHBoxLayout(self.notes_frame)
        layout.setContentsMargins(10, 6, 4, 6)
        layout.addWidget(self.notes_label, 1)
        layout.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        margins = QVBoxLayout(self.notes_box)
        margins.setContentsMargins(6, 6, 6, 2)
        margins.addWidget(self.notes_frame)
        self.notes_box.hide()
        return self.notes_box

    def _history_box(self) -> QWidget:
        """The surgery so far, in order (the undo stack): clicking a step goes back to it."""
        box = QGroupBox("Surgery history")
        layout = QVBoxLayout(box)
        layout.setContentsMargins(8, 6, 8, 8)
        self.history_view = QUndoView(self.undo_stack)
        self.history_view.setObjectName("history")
        self.history_view.setEmptyLabel("Network as loaded")
        self.history_view.setAlternatingRowColors(True)
        hint = QLabel("Every change in order; click a step to go back to it (Ctrl+Z / Ctrl+Shift+Z).")
        hint.setObjectName("hint")
        hint.setWordWrap(True)
        layout.addWidget(hint)
        layout.addWidget(self.history_view, 1)
        box.setMinimumHeight(140)
        return box

    @staticmethod
    def _scrolled(widget: QWidget) -> QScrollArea:
        area = QScrollArea()
        area.setWidget(widget)
        area.setWidgetResizable(True)
        area.setFrameShape(QFrame.Shape.NoFrame)
        area.setMinimumWidth(220)
        return area

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt's name
        if watched is self.curve_panel and event.type() == QEvent.Type.Resize:
            wide = event.size().width() >= 1.3 * event.size().height() and event.size().width() >= 640
            self.curve_panel.set_orientation(Qt.Orientation.Horizontal if wide else Qt.Orientation.Vertical)
        return super().eventFilter(watched, event)

    @staticmethod
    def _split(orientation: Qt.Orientation, first: QWidget, second: QWidget, stretch: tuple[int, int]) -> QSplitter:
        splitter = QSplitter(orientation)
        splitter.addWidget(first)
        splitter.addWidget(second)
        splitter.setStretchFactor(0, stretch[0])
        splitter.setStretchFactor(1, stretch[1])
        splitter.setChildrenCollapsible(False)
        return splitter

    def _build_chrome(self) -> None:
        a = self.actions
        a.build_menus(self.menuBar())
        self.toolbar = QToolBar("Main")
        self.toolbar.setObjectName("mainToolbar")
        self.toolbar.setIconSize(QSize(20, 20))
        self.toolbar.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toolbar.setMovable(False)
        a.build_toolbar(self.toolbar)
        # Only the most used actions show their text; the rest are icons with tooltips.
        for action in (a.open_model, a.open_project, a.save_project, a.undo, a.redo):
            button = self.toolbar.widgetForAction(action)
            if button is not None:
                button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonIconOnly)
        self.addToolBar(self.toolbar)

        bar = self.statusBar()
        bar.setSizeGripEnabled(True)
        self.message_label = ElidedLabel("")
        self.message_label.setObjectName("statusMessage")
        self.busy_label = QLabel("")
        self.busy_label.setObjectName("busyLabel")
        self.busy_bar = QProgressBar()
        self.busy_bar.setRange(0, 0)
        self.busy_bar.setMaximumWidth(110)
        self.busy_bar.setMaximumHeight(14)
        self.busy_bar.setTextVisible(False)
        self.model_label = QLabel("No model")
        self.features_label = QLabel("")
        self.params_label = QLabel("")
        self.device_label = QLabel(self._device_text())
        for label in (self.features_label, self.params_label, self.device_label):
            label.setObjectName("statusSeparated")
        bar.addWidget(self.message_label, 1)
        bar.addPermanentWidget(self.busy_label)
        bar.addPermanentWidget(self.busy_bar)
        bar.addPermanentWidget(self.model_label)
        bar.addPermanentWidget(self.features_label)
        bar.addPermanentWidget(self.params_label)
        bar.addPermanentWidget(self.device_label)
        self.busy_bar.hide()
        self.busy_label.hide()

    @staticmethod
    def _device_text() -> str:
        try:
            import torch

            if torch.cuda.is_available():
                return f"GPU: {torch.cuda.get_device_name(0)}"
        except Exception:  # noqa: BLE001
            pass
        return "CPU"

    def _connect(self) -> None:
        a = self.actions
        a.open_model.triggered.connect(lambda: self.open_model_dialog("bundled"))
        a.open_torchvision.triggered.connect(lambda: self.open_model_dialog("torchvision"))
        a.open_project.triggered.connect(self.open_project_dialog)
        a.open_data.triggered.connect(self.open_data_dialog)
        a.open_data_folder.triggered.connect(self.open_data_folder_dialog)
        a.save_project.triggered.connect(self.save_project)
        a.save_project_as.triggered.connect(self.save_project_as)
        a.export_onnx.triggered.connect(self.export_onnx_dialog)
        a.quit.triggered.connect(self.close)
        a.clear_recent.triggered.connect(self._clear_recent)
        a.delete_output.triggered.connect(self.delete_output_layer)
        a.cut_here.triggered.connect(self.cut_here)
        a.add_head.triggered.connect(self.add_head)
        a.edit_head.triggered.connect(lambda: self.edit_head(self._selected_head()))
        a.remove_head.triggered.connect(lambda: self.remove_head(self._selected_head()))
        a.freeze_up_to.triggered.connect(self.freeze_up_to_here)
        a.heads_only.triggered.connect(lambda: self.apply_preset("heads-only"))
        a.unfreeze_all.triggered.connect(lambda: self.apply_preset("none"))
        a.train_start.triggered.connect(self.start_training)
        a.train_stop.triggered.connect(self.stop_training)
        a.evaluate.triggered.connect(self.evaluate)
        a.about.triggered.connect(lambda: dialogs.about_box(self))

        self.tree_model.set_toggle_handler(self._toggle_trainable)
        self.tree_view.set_context_actions(a.context_actions())
        self.tree_view.currentPathChanged.connect(self._on_tree_current)
        self.heads_panel.table.itemSelectionChanged.connect(self._refresh_actions)

        self.heads_panel.addRequested.connect(self.add_head)
        self.heads_panel.editRequested.connect(self.edit_head)
        self.heads_panel.removeRequested.connect(self.remove_head)
        self.data_panel.dataRequested.connect(self.load_data)
        self.data_panel.adviceApplied.connect(self.apply_preset)
        self.training_panel.startRequested.connect(self.start_training)
        self.training_panel.stopRequested.connect(self.stop_training)
        self.try_image.imageChosen.connect(self.predict_image)
        self._rebuild_recent_menu()

    def _restore_window(self) -> None:
        geometry, state, sizes = self.settings.window_state()
        if geometry is None or not self.restoreGeometry(geometry):
            screen = QApplication.primaryScreen()
            avail = screen.availableGeometry() if screen is not None else None
            w, h = 1480, 940
            if avail is not None:
                # On a small screen: inside it (a window as wide as the screen plus its frame is moved
                # and shrunk when its geometry is restored), but never below what the window needs.
                need = self.minimumSizeHint()
                w = max(need.width(), min(w, avail.width() - 40))
                h = max(need.height(), 560, min(h, avail.height() - 60))
            self.resize(w, h)
            if avail is not None:
                self.move(avail.x() + (avail.width() - w) // 2, avail.y() + (avail.height() - h) // 2)
        if state is not None:
            self.restoreState(state)
        self._saved_split = sizes if sizes and len(sizes) == 2 and min(sizes) > 50 else None
        self._split_done = False
        self._proportioned: set[int] = set()
        self.tabs.currentChanged.connect(self._proportion_tab)

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        """Split tree and tabs once the window has its real width (whoever resized it before showing)."""
        super().showEvent(event)
        if not self._split_done:
            self._split_done = True
            total = max(self.width(), 800)
            room = total - self.tabs.minimumSizeHint().width() - self.splitter.handleWidth()
            wanted = max(self.tree_view.sizeHint().width(), int(total * 0.36))  # every column when it fits
            left = max(self.tree_view.minimumSizeHint().width(), min(wanted, room))
            self.splitter.setSizes(self._saved_split or [left, total - left - self.splitter.handleWidth()])

    def _proportion_tab(self, index: int) -> None:
        """Split a tab's panes sensibly the first time it is shown (hidden splitters have no width yet)."""
        if index in self._proportioned:
            return
        self._proportioned.add(index)
        widget = self.tabs.widget(index)
        width = max(self.tabs.width() - 10, 400)
        if widget is self.train_split:
            panel = min(self.training_panel.sizeHint().width() + 20, width // 2)
            self.train_split.setSizes([panel, width - panel])
        elif widget is self.evaluate_split:
            self.evaluate_split.setSizes([width * 5 // 9, width * 4 // 9])

    def _save_window(self) -> None:
        self.settings.save_window_state(self.saveGeometry(), self.saveState(), self.splitter.sizes())
        self.settings.sync()

    # ------------------------------------------------------------------------------------------
    # state and messages
    # ------------------------------------------------------------------------------------------
    @property
    def training(self) -> bool:
        return self.train_job is not None

    @property
    def busy(self) -> bool:
        return bool(self._jobs)

    def _running(self) -> list[str]:
        """The work running now: job names, and "train" for the training run."""
        return (["train"] if self.training else []) + list(self._jobs)

    def _blocker(self, kind: str) -> str | None:
        """The running work that ``kind`` of work (a key of WAITS_FOR) has to wait for, if any."""
        return next((name for name in self._running() if name in WAITS_FOR[kind]), None)

    def _must_wait(self, kind: str, doing: str) -> bool:
        """True, and a status message saying what it waits for, when ``kind`` of work cannot start now."""
        blocker = self._blocker(kind)
        if blocker is None:
            return False
        self.show_message(f"{doing} waits until {UNTIL.get(blocker, 'the running work has finished')}.", "warning")
        return True

    def _selected_path(self) -> str | None:
        path = self.tree_view.current_path() if self.session is not None else None
        return path or None

    def _selected_layer(self) -> str | None:
        path = self._selected_path()
        return path if path and not path.startswith(HEADS_KEY) else None

    def _selected_head(self) -> str | None:
        path = self._selected_path()
        if path and path.startswith(HEADS_KEY + "."):
            return path[len(HEADS_KEY) + 1:].split(".")[0]
        if self.session is not None and self.heads_panel.current_head():
            return self.heads_panel.current_head()
        if self.session is not None and len(self.session.heads) == 1:
            return self.session.heads[0].name
        return None

    def _on_tree_current(self, path: str) -> None:
        """A head chosen in the tree is the head the Heads tab's Edit and Remove act on, too."""
        if path.startswith(HEADS_KEY + "."):
            self.heads_panel.select_head(path[len(HEADS_KEY) + 1:].split(".")[0])
        self._refresh_actions()

    def _on_undo_index(self, index: int) -> None:
        """Undo, redo or a click in the surgery history: say what was undone or redone (the status line
        otherwise kept naming the step just undone, as if it had been done)."""
        previous, self._undo_index = self._undo_index, index
        if not self._pushing and not self._undo_failed and previous != index:
            stack = self.undo_stack
            if index < previous:
                steps, text = previous - index, stack.text(previous - 1) if previous - index == 1 else ""
                self.show_message(f"Undid {text}." if text else
                                  f"Undid {steps} steps: back to "
                                  f"{('after ' + stack.text(index - 1)) if index else 'the network as loaded'}.")
            else:
                steps = index - previous
                self.show_message(f"Redid {stack.text(index - 1)}." if steps == 1 else
                                  f"Redid {steps} steps, up to {stack.text(index - 1)}.")
        self._undo_failed = False
        self._refresh()

    def _surgery_failed(self, message: str) -> None:
        """An undo or redo could not be done (see OperationCommand): its message, not 'Undid …'."""
        self._undo_failed = True
        self.show_error(message)

    def _refresh(self) -> None:
        self._refresh_actions()
        self._refresh_status()
        self._update_modified()

    def _refresh_actions(self) -> None:
        s = self.session
        layer = self._selected_layer() if s is not None else None
        node = s.tree.node(layer) if (s is not None and layer) else None
        order = set(s.tree.order) if s is not None else set()
        free = {kind: self._blocker(kind) is None for kind in WAITS_FOR}
        self.actions.update_enabled(
            has_model=s is not None, free=free, training=self.training, stopping=self._stop_requested,
            output_present=bool(s is not None and s.output_layer),
            layer_selected=node is not None, head_selected=self._selected_head() is not None,
            has_heads=bool(s is not None and s.heads), has_data=self.data is not None,
            can_cut=node is not None and layer in order,
            can_freeze_here=node is not None and layer in order and node.params > 0)
        if self.training_panel.is_running() != self.training:  # only on a change: it resets the progress
            self.training_panel.set_running(self.training)
        if self.training and self._stop_requested:
            self.training_panel.set_stopping()
        self.training_panel.set_can_start(self.actions.train_start.isEnabled(), self._why_not_start())
        self.heads_panel.setEnabled(not self.training)
        self.history_view.setEnabled(free["surgery"])

    def _why_not_start(self) -> str:
        """Why Start training is disabled (its tooltip), or "" when it is not."""
        s = self.session
        if s is None:
            return "Open a model first"
        if self.training:
            return "Training is running"
        blocker = self._blocker("train")
        if blocker is not None:
            return f"Training waits until {UNTIL[blocker]}"
        if not s.heads:
            return "Add a head first (Surgery ▸ Add head)"
        if self.data is None:
            return "Load data first (drop a folder or CSV on the window)"
        return ""

    def _refresh_status(self) -> None:
        s = self.session
        if s is None:
            self.model_label.setText("No model")
            self.features_label.setText("")
            self.params_label.setText("")
            return
        self.model_label.setText(s.describe())
        dim = s.tree.feature_dim
        self.features_label.setText(f"features: {dim}" if dim else "features: ?")
        total = trainable = 0
        for p in s.model.parameters():
            n = p.numel()
            total += n
            if p.requires_grad:
                trainable += n
        self.params_label.setText(f"{human(trainable)} of {human(total)} parameters train")
        self.params_label.setToolTip(f"{trainable:,} trainable of {total:,} parameters")

    def _update_modified(self, *_: Any) -> None:
        modified = self.session is not None and (not self.undo_stack.isClean() or self._weights_changed)
        self.setWindowModified(modified)
        name = Path(self.project_path).name if self.project_path else (
            self.session.describe() if self.session is not None else "")
        self.setWindowTitle(f"{name}[*] — Graft" if name else "Graft[*]")

    def show_message(self, text: str, level: str = "info") -> None:
        """The last message, in the status line (errors also get a message box: :meth:`show_error`)."""
        self.message_label.setText(text)
        self.message_label.setToolTip(text)
        color = {"error": "#c62828", "warning": "#bf360c"}.get(level, "#455a64")
        self.message_label.setStyleSheet(f"color: {color};")

    def show_error(self, message: str, details: str = "", title: str = "Graft") -> None:
        self.show_message(message, "error")
        self.errorShown.emit(message)
        if details:
            box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, self)
            box.setDetailedText(details)
            box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
            box.open()
        else:
            QMessageBox.warning(self, title, message)

    def _busy(self, name: str, text: str, job: Job) -> None:
        self._jobs[name] = job
        self.busy_label.setText(text)
        self.busy_label.show()
        self.busy_bar.show()
        self._refresh_actions()

    def _done(self, name: str) -> None:
        self._jobs.pop(name, None)
        self.busy_bar.setRange(0, 0)
        if not self._jobs:
            self.busy_label.hide()
            self.busy_bar.hide()
        else:
            self.busy_label.setText(next(iter(self._jobs)).capitalize() + "…")
        self._refresh_actions()

    def _run(self, name: str, text: str, fn, *args, finished, errored=None, progress=None, bound: bool = True,
             stale=None, **kwargs) -> Job | None:
        """Start ``fn`` in a worker under ``name`` (one at a time per name), with a busy indicator.

        ``bound``: the work uses the current session, and what it brings back belongs to that session: when
        another session has replaced it meanwhile, ``finished`` is not called (``stale(result)`` is, if
        given) and an error is shown as a plain message, without ``errored`` (which may touch the session's
        views)."""
        if name in self._jobs:
            self.show_message(f"Still {text[0].lower() + text[1:]}", "warning")
            return None
        serial = self._session_serial

        def current() -> bool:
            return not bound or serial == self._session_serial

        def ok(result, name=name):
            self._done(name)
            if current():
                finished(result)
            elif stale is not None:
                stale(result)
            else:
                log.info("%s finished for a session that is no longer open: its result was dropped", name)

        def failed(message, details, name=name):
            self._done(name)
            if errored is not None and current():
                errored(message, details)
            else:
                self.show_error(message, details)

        job = run_in_thread(fn, *args, _name=name, _finished=ok, _errored=failed, _progress=progress,
                            _start=False, **kwargs)
        self._busy(name, text, job)
        job.start()
        return job

    # ------------------------------------------------------------------------------------------
    # loading models and projects
    # ------------------------------------------------------------------------------------------
    def open_model_dialog(self, page: str = "bundled") -> None:
        if self._must_wait("open", "Opening a model"):
            return
        if not self._maybe_save("opening another model", then=lambda: self.open_model_dialog(page)):
            return
        dialog = dialogs.OpenModelDialog(self, page=page, start_dir=self.settings.last_dir("model"))
        if dialog.exec() != dialogs.QDialog.DialogCode.Accepted:
            return
        request = dialog.request()
        if request["spec"] and Path(request["spec"]).exists():
            self.settings.set_last_dir("model", request["spec"])
        self.load_model(request, ask=False)

    def load_model(self, request: dict[str, Any] | str, ask: bool = True) -> None:
        """Load a network in a worker: ``request`` is a spec string or load_network's keyword arguments."""
        if isinstance(request, str):
            request = {"spec": request}
        if self._must_wait("open", "Opening a model"):
            return
        if ask and not self._maybe_save("opening another model", then=lambda: self.load_model(request)):
            return
        text = dialogs.describe_request(request)

        def loaded(session, request=request):
            self._set_session(session, project_path=None)
            self._warm_up_once()
            spec = str(request.get("spec") or "default")
            if Path(spec).exists():
                self.settings.add_recent(spec, "model")
                self._rebuild_recent_menu()
            self._show_notes(session.network.notes, f"Loaded {session.describe()}.")

        self._run("load", text, _load_session, dict(request), finished=loaded, bound=False,
                  errored=lambda m, d: self.show_error(m, d, "Could not open the model"))

    def open_project_dialog(self) -> None:
        if self._must_wait("open", "Opening a project"):
            return
        if not self._maybe_save("opening a project", then=self.open_project_dialog):
            return
        path, _ = QFileDialog.getOpenFileName(self, "Open project", self.settings.last_dir("project"),
                                              PROJECT_FILTER)
        if path:
            self.open_project_file(path, ask=False)

    def open_project_file(self, path: str, ask: bool = True, trust: bool = False) -> None:
        """Open a project in a worker. ``trust``: the user has said they trust its pickled source model
        (asked for when the project needs it, see :meth:`_ask_trust`)."""
        if self._must_wait("open", "Opening a project"):
            return
        if ask and not self._maybe_save("opening a project", then=lambda: self.open_project_file(path)):
            return

        def opened(session, path=str(path)):
            if isinstance(session, TrustNeeded):
                self._ask_trust(path, session)
                return
            self._set_session(session, project_path=path)
            self._warm_up_once()
            self.settings.add_recent(path, "project")
            self.settings.set_last_dir("project", path)
            self._rebuild_recent_menu()
            self._show_notes(session.network.notes, f"Opened {Path(path).name}: {session.describe()}, "
                                                    f"{plural(len(session.heads), 'head')}.")

        self._run("load", f"Opening {Path(path).name}…", _open_project, str(path), trust, finished=opened,
                  bound=False, errored=lambda m, d: self.show_error(m, d, "Could not open the project"))

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
        answer = QMessageBox.question(self, "Trust this model file?", text,
                                      QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                      QMessageBox.StandardButton.No)
        if answer == QMessageBox.StandardButton.Yes:
            self.open_project_file(path, ask=False, trust=True)
        else:
            what = f"the pickled model {Path(model).name}" if model else "its pickled model"
            self.show_message(f"{name} was not opened: it needs {what}, which you did not trust.", "warning")

    def _show_notes(self, notes: list[str], done: str) -> None:
        """After a model or project has loaded: its notes (e.g. weights assumed or missing, how far undo
        reaches) in the status line and, in full, in the strip above the tree and tabs; else ``done`` and
        what to do next."""
        for note in notes:
            self.show_message(note, "warning" if "random" in note else "info")
        if not notes:
            self.show_message(done)
            self._suggest_next()
            return
        level = "warning" if any("random" in note for note in notes) else "info"
        lines = [f"<b>{html.escape(done, quote=False)}</b>"] + [html.escape(n, quote=False) for n in notes]
        self.notes_label.setText("<br>".join(lines))
        self.notes_frame.setStyleSheet(NOTES_STYLE[level])
        self.notes_box.show()

    def _warm_up_once(self) -> None:
        if not MainWindow._warmed_up:
            MainWindow._warmed_up = True
            self._warm_job = run_in_thread(_warm_up, _name="warm-up",
                                           _errored=lambda m, d: log.warning("warm-up failed: %s", m))

    def _set_session(self, session, project_path: str | None) -> None:
        old = self.session
        if old is not None:
            old.disconnect("changed", self._on_session_changed)
        self._undo_index = 0  # clearing the stack undoes nothing: no "Undid …"
        self.undo_stack.clear()
        self.notes_box.hide()  # the notes were about the previous model
        self._session_serial += 1  # work still running on the old session brings nothing back to this one
        self.session = session
        self.project_path = project_path
        self._weights_changed = False
        self.last_train_result = None
        self.last_report = None  # nothing the previous model produced stays on screen
        self.evaluation_panel.clear()
        self.try_image.clear()
        self.curve_panel.reset([])
        self.training_panel.clear_progress()
        session.connect("changed", self._on_session_changed)
        self.tree_model.set_tree(session.tree)
        self.tree_view.tree_view.expandToDepth(0)
        self.heads_panel.set_session(session)
        self.undo_stack.setClean()
        self._refresh_advice()
        self._refresh()
        self.modelLoaded.emit()

    def _on_session_changed(self, op) -> None:
        self._refresh()
        self._refresh_advice()

    # ------------------------------------------------------------------------------------------
    # data
    # ------------------------------------------------------------------------------------------
    def open_data_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Open data (a CSV manifest)", self.settings.last_dir("data"),
                                              DATA_FILTER)
        if path:
            self.load_data(path)

    def open_data_folder_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open data (an image folder with one subfolder per class)",
                                                self.settings.last_dir("data"))
        if path:
            self.load_data(path)

    def load_data(self, path: str) -> None:
        if self.training:
            self.show_message("Data cannot change while training runs.", "warning")
            return

        def loaded(source, path=str(path)):
            self._set_data(source, path)
            self.settings.add_recent(path, "data")
            self.settings.set_last_dir("data", path)
            self._rebuild_recent_menu()

        def failed(message, details):
            if self.data is not None and self.data_path:  # the data loaded before stays: say which it is
                self.data_panel.set_path(self.data_path)
                message = f"{message}\nThe data from {Path(self.data_path).name} is still loaded."
            self.data_panel.set_error(message)
            self.show_error(message, details, "Could not load the data")

        if self._run("data", f"Loading data from {Path(path).name}…", _load_data, str(path), finished=loaded,
                     errored=failed, bound=False) is not None:
            self.data_panel.set_path(str(path))

    def load_demo_data(self) -> None:
        if self.training:
            self.show_message("Data cannot change while training runs.", "warning")
            return
        self._run("data", "Preparing the demo data…", _load_demo_data, bound=False,
                  finished=lambda source: self._set_data(source, str(source.path or source.root)),
                  errored=lambda m, d: (self.data_panel.set_error(m), self.show_error(m, d, "Demo data")))

    def _set_data(self, source, path: str) -> None:
        self.data = source
        self.data_path = path
        self.data_panel.set_session(self.session)
        self.data_panel.set_data(source)
        summary = source.summary()
        skipped = f", {summary['n_skipped']} skipped" if summary.get("n_skipped") else ""
        warnings = list(summary.get("warnings") or [])
        heed = f" {plural(len(warnings), 'warning')}: see the Data tab." if warnings else ""
        self.show_message(f"Data: {summary['n_train']} training and {summary['n_val']} validation images"
                          f"{skipped} from {Path(path).name}.{heed}", "warning" if warnings else "info")
        self._refresh()
        if not warnings:
            self._suggest_next()
        self.dataLoaded.emit()

    def _suggest_next(self) -> None:
        """With a fresh model and data, say what to do next."""
        s = self.session
        if s is None or self.data is None or s.heads or s.network.notes or self.undo_stack.count():
            return
        names = ", ".join(h.name for h in self.data.heads[:4])
        first = "delete the output layer (or cut at a layer), then " if s.output_layer else ""
        self.show_message(f"Ready: {s.describe()} and {len(self.data.samples)} images. Next: {first}"
                          f"add heads (the data suggests {names}).")

    def _refresh_advice(self) -> None:
        """The data panel's rule of thumb depends on the session's blocks and on the data."""
        self.data_panel.set_session(self.session)

    # ------------------------------------------------------------------------------------------
    # surgery
    # ------------------------------------------------------------------------------------------
    def apply_op(self, op) -> bool:
        """Apply ``op`` and push it on the undo stack; a GraftError is shown and changes nothing."""
        if self.session is None:
            self.show_message("Open a model first.", "warning")
            return False
        if self._must_wait("surgery", "Surgery"):
            return False
        try:
            self._pushing = True
            push_operation(self.undo_stack, self.session, op, on_error=self._surgery_failed)
        except GraftError as exc:
            self.show_error(str(exc), title="Surgery")
            return False
        finally:
            self._pushing = False
        self.show_message(f"{op.text}.")
        return True

    def delete_output_layer(self) -> bool:
        from engine.surgery.operations import DeleteOutputLayer

        return self.apply_op(DeleteOutputLayer())

    def cut_here(self, path: str | None = None) -> bool:
        from engine.surgery.operations import CutAt

        layer = path or self._selected_layer()
        if not layer:
            self.show_message("Select the layer to cut at.", "warning")
            return False
        return self.apply_op(CutAt(layer))

    def freeze_up_to_here(self, path: str | None = None) -> bool:
        from engine.surgery.operations import SetTrainable

        layer = path or self._selected_layer()
        if not layer:
            self.show_message("Select the last layer to freeze.", "warning")
            return False
        return self.apply_op(SetTrainable("up_to", [layer]))

    def apply_preset(self, preset: str) -> bool:
        from engine.surgery.operations import freeze_preset

        try:
            op = freeze_preset(preset)
        except GraftError as exc:
            self.show_error(str(exc))
            return False
        return self.apply_op(op)

    def _toggle_trainable(self, path: str, trainable: bool) -> bool:
        """The tree's checkbox: freeze or unfreeze one layer (or head) through the undo stack."""
        from engine.surgery.operations import SetTrainable

        if self.training:
            self.show_message("Freezing cannot change while training runs.", "warning")
            return False
        return self.apply_op(SetTrainable("layers", [path], trainable))

    def add_head(self) -> bool:
        from engine.surgery.operations import AddHead
        from widgets.head_dialog import HeadDialog

        s = self.session
        if s is None:
            self.show_message("Open a model first.", "warning")
            return False
        if self._must_wait("surgery", "Adding a head"):
            return False
        delete_first = False
        if s.output_layer and not s.heads:
            answer = QMessageBox.question(
                self, "Delete the output layer?",
                f"The network still ends in its output layer ({s.output_layer}), which predicts the classes it "
                "was trained on. New heads usually replace it and read the features before it.\n\n"
                "Delete the output layer first?",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No | QMessageBox.StandardButton.Cancel,
                QMessageBox.StandardButton.Yes)
            if answer == QMessageBox.StandardButton.Cancel:
                return False
            delete_first = answer == QMessageBox.StandardButton.Yes
        existing = [h.name for h in s.heads]
        suggestions = [h for h in (self.data.heads if self.data is not None else []) if h.name not in existing]
        dialog = HeadDialog.for_new(existing, suggestions, self)
        if dialog.exec() != dialogs.QDialog.DialogCode.Accepted:
            return False
        try:
            spec = dialog.spec()
        except GraftError as exc:
            self.show_error(str(exc), title="Add head")
            return False
        if delete_first and s.output_layer:
            if not self.delete_output_layer():
                return False
        ok = self.apply_op(AddHead(spec))
        if ok:
            self.tabs.setCurrentIndex(TABS.index("heads"))
        return ok

    def edit_head(self, name: str | None) -> bool:
        from engine.surgery.operations import UpdateHead
        from widgets.head_dialog import HeadDialog

        if self.session is None or not name:
            return False
        spec = next((h for h in self.session.heads if h.name == name), None)
        if spec is None or self._must_wait("surgery", "Editing a head"):
            return False
        dialog = HeadDialog.for_edit(spec, self, existing_names=[h.name for h in self.session.heads])
        if dialog.exec() != dialogs.QDialog.DialogCode.Accepted:
            return False
        try:
            new = dialog.spec()
        except GraftError as exc:
            self.show_error(str(exc), title="Edit head")
            return False
        def edited(h) -> dict:  # the dialog does not show the statistics training sets on a regression head
            return {k: v for k, v in h.to_dict().items() if k not in ("target_mean", "target_std")}

        if edited(new) == edited(spec):
            return False
        return self.apply_op(UpdateHead(name, new))

    def remove_head(self, name: str | None) -> bool:
        from engine.surgery.operations import RemoveHead

        if self.session is None or not name:
            self.show_message("Select the head to remove.", "warning")
            return False
        return self.apply_op(RemoveHead(name))

    # ------------------------------------------------------------------------------------------
    # training
    # ------------------------------------------------------------------------------------------
    def start_training(self) -> bool:
        s = self.session
        if s is None:
            self.show_message("Open a model first.", "warning")
            return False
        if self.training:
            self.show_message("Training is already running.", "warning")
            return False
        if self._must_wait("train", "Training"):
            return False
        if not s.heads:
            self.show_error("Add at least one head before training (Surgery ▸ Add head).")
            return False
        if self.data is None:
            self.show_error("Load data before training (drop a folder or CSV on the window).")
            return False
        try:
            config = self.training_panel.config()
        except GraftError as exc:
            self.show_error(str(exc), title="Training settings")
            return False
        worker = TrainWorker(s, self.data, config)
        data = self.data
        # what evaluate and export read back from a saved project, as main.py train records it
        self._train_record = TrainingRecord.begin(data, config)
        self._train_epochs = int(getattr(config, "epochs", 0) or 0)
        self._train_epoch = 0
        self.curve_panel.reset(list(s.heads))
        self._stop_requested = False
        self._evaluate_after_close = False
        self.tabs.setCurrentIndex(TABS.index("train"))
        self.train_job = start_worker(worker, name="train", progress=self._on_train_progress,
                                      finished=self._on_train_finished, errored=self._on_train_errored,
                                      start=False)
        self.training_panel.set_status("Starting…")
        self.show_message("Training started.")
        self._refresh()
        self.train_job.start()
        self.trainingStarted.emit()
        return True

    def stop_training(self) -> None:
        if self.train_job is not None:
            self.train_job.request_stop()
            self._stop_requested = True
            self.training_panel.set_status("Stopping after this batch…")
            self.show_message("Stopping after the current batch…")
            self._refresh_actions()  # Stop stays disabled from now on

    def _on_train_progress(self, batch: dict[str, Any]) -> None:
        started = batch.get("started")
        if started:
            self.device_label.setText(started.get("device_name") or started.get("device") or "CPU")
            self._train_epochs = int(started.get("epochs") or self._train_epochs)
        if batch.get("steps"):
            self.curve_panel.add_steps(batch["steps"])
        for epoch in batch.get("epochs", []):
            self.curve_panel.add_epoch(epoch)
            val = epoch.get("val_loss")
            text = f"Epoch {epoch.get('epoch')}: train loss {epoch.get('train_loss', math.nan):.4f}"
            if val is not None:
                text += f", validation loss {val:.4f}"
            text += " (best so far)" if epoch.get("best") else ""
            self.show_message(text)
            self.training_panel.set_status(text)
        for message in batch.get("messages", []):
            self.show_message(message.get("text", ""), message.get("level", "info"))
            self.training_panel.set_status(message.get("text", ""))
        if batch.get("steps"):
            self._train_epoch = max(self._train_epoch, int(batch["steps"][-1].get("epoch") or 0))
        p = batch.get("progress")
        if p:  # the fraction covers the whole run, computing cached features included
            fraction = p.get("fraction")
            done, total = (int(round(1000 * fraction)), 1000) if fraction is not None else \
                (p.get("done_steps", 0), p.get("total_steps", 0))
            self.training_panel.set_progress(done, total, p.get("eta_seconds"), self._train_epoch or None,
                                             self._train_epochs)

    def _end_training(self) -> None:
        self.train_job = None
        self._stop_requested = False
        self._refresh()

    def _on_train_finished(self, result: dict[str, Any] | None) -> None:
        result = result or {}
        self.last_train_result = result
        if self.session is not None and self._train_record is not None:
            self.session.project_extra = self._train_record.finish(result).store(self.session.project_extra)
        self._end_training()
        self._weights_changed = True
        self._update_modified()
        reason = result.get("reason", "done")
        message = result.get("message") or f"Training ended ({reason})."
        self.training_panel.set_status(message)
        self.show_message(message)
        self._refresh_status()
        self.trainingFinished.emit(result)
        if self.data is not None and reason in ("completed", "early_stopping", "stopped"):
            if self._closing:
                self._evaluate_after_close = True  # evaluated after all if the close is cancelled
            else:
                self.evaluate()

    def _on_train_errored(self, message: str, details: str) -> None:
        self._end_training()
        self.training_panel.set_status(message)
        self.show_error(message, details, "Training failed")
        self.trainingFinished.emit({"reason": "error", "message": message})

    # ------------------------------------------------------------------------------------------
    # evaluation and predictions
    # ------------------------------------------------------------------------------------------
    def evaluate(self) -> None:
        if self.session is None or self.data is None:
            self.show_message("Evaluating needs a model with heads and loaded data.", "warning")
            return
        if self._must_wait("evaluate", "Evaluating"):
            return
        session, data = self.session, self.data
        split = "val" if data.val else "all"

        def run(session=session, data=data, split=split, report_progress=None, should_stop=None):
            from engine.training.evaluation import evaluate

            def progress(done, total):
                if should_stop is not None and should_stop():
                    raise Cancelled  # the window is closing: stop after this batch
                if report_progress is not None:
                    report_progress((done, total))

            return evaluate(session, data, split=split, on_progress=progress)

        def done(report):
            if report is None:
                return
            self.last_report = report
            self.evaluation_panel.set_report(report)
            self.tabs.setCurrentIndex(TABS.index("evaluate"))
            where = "validation" if split == "val" else "all the"
            self.show_message(f"Evaluated on {where} data: {report.n_images} images (Evaluate tab).")
            self.evaluated.emit(report)

        self._run("evaluate", "Evaluating on the validation data…", run, finished=done,
                  errored=lambda m, d: self.show_error(m, d, "Evaluation failed"), progress=self._busy_progress)

    def _busy_progress(self, value) -> None:
        done, total = value
        if total:
            self.busy_bar.setRange(0, int(total))
            self.busy_bar.setValue(int(done))

    def predict_image(self, path: str) -> None:
        path = str(path)
        refusal = "Open a model first." if self.session is None else None
        blocker = self._blocker("predict") if refusal is None else None
        if blocker is not None:
            refusal = f"Predictions wait until {UNTIL[blocker]}."
        if refusal is not None:  # say so where the image is shown, too
            if self.try_image.image_path() != path:
                self.try_image.set_image(path)
            self.try_image.set_status(refusal)
            self.show_message(refusal, "warning")
            return
        session = self.session

        def run(session=session, path=str(path)):
            from engine.export.inference import predict_files

            return predict_files(session, [path])

        def done(preds, path=str(path)):
            first = preds[0] if isinstance(preds, list) and preds else preds
            self.try_image.show_predictions(path, first)
            self.show_message(f"Predicted {Path(path).name}.")
            self.predicted.emit(first)

        def failed(message, details):
            self.try_image.set_status(message)
            self.show_error(message, details, "Prediction failed")

        if self._run("predict", f"Predicting {Path(path).name}…", run, finished=done, errored=failed) is not None:
            if self.try_image.image_path() != path:  # chosen in the view: it is shown (decoded) already
                self.try_image.set_image(path)
            self.try_image.set_status("Predicting…")

    # ------------------------------------------------------------------------------------------
    # saving and export
    # ------------------------------------------------------------------------------------------
    def save_project(self) -> bool:
        if self.project_path:
            return self.save_project_to(self.project_path)
        return self.save_project_as()

    def save_project_as(self) -> bool:
        if self.session is None:
            return False
        start = self.project_path or str(Path(self.settings.last_dir("project")) / "untitled.graft")
        path, _ = QFileDialog.getSaveFileName(self, "Save project", start, PROJECT_FILTER)
        if not path:
            return False
        if not path.endswith(".graft"):
            path += ".graft"
        return self.save_project_to(path)

    def save_project_to(self, path: str) -> bool:
        if self.session is None:
            return False
        if self._must_wait("save", "Saving"):
            return False
        session = self.session
        extra = dict(session.project_extra or {})  # keeps the training record (evaluate/export read it)
        if self.data_path:
            extra["data"] = self.data_path
        clean_index = self.undo_stack.index()

        def run(session=session, path=str(path), extra=extra):
            from engine.project.project_file import save_project

            return str(save_project(session, path, extra=extra))

        def done(written, clean_index=clean_index):
            self.project_path = written
            if self.undo_stack.index() == clean_index:
                self.undo_stack.setClean()
                self._weights_changed = False
            self.settings.add_recent(written, "project")
            self.settings.set_last_dir("project", written)
            self._rebuild_recent_menu()
            self._update_modified()
            self.show_message(f"Saved {Path(written).name}.")
            self.saved.emit(written)
            if self._close_after_save:
                QTimer.singleShot(0, self.close)
            elif self._after_save is not None:
                QTimer.singleShot(0, self._after_save)
            self._after_save = None

        def failed(message, details):
            closing = self._close_after_save
            self._close_after_save = False
            self._after_save = None
            self.show_error(message, details, "Could not save")
            if closing:
                self._close_cancelled()

        def stale(written):
            self._close_after_save = False  # both were meant for the session saved, which is gone
            self._after_save = None
            self.show_message(f"Saved {Path(written).name} (the model that was open when the save began).")

        return self._run("save", f"Saving {Path(path).name}…", run, finished=done, errored=failed,
                         stale=stale) is not None

    def export_onnx_dialog(self) -> None:
        if self.session is None:
            return
        base = Path(self.project_path).with_suffix(".onnx").name if self.project_path else "model.onnx"
        start = str(Path(self.settings.last_dir("export")) / base)
        path, _ = QFileDialog.getSaveFileName(self, "Export ONNX", start, ONNX_FILTER)
        if path:
            if not path.lower().endswith(".onnx"):
                path += ".onnx"
            self.export_onnx(path)

    def export_onnx(self, path: str) -> None:
        if self.session is None:
            return
        if self._must_wait("export", "Exporting"):
            return
        folder = Path(path).expanduser().parent
        if not folder.is_dir():
            self.show_error(f"Cannot export to {path}: the folder {folder} does not exist.", title="Export ONNX")
            return
        session = self.session
        images = [str(s.path) for s in (self.data.val[:4] if self.data is not None else [])] or None
        extra = dict(session.project_extra or {})  # its TrainingRecord says where the training data is

        def run(session=session, path=str(path), images=images, extra=extra, report_progress=None):
            from engine.export.onnx_export import export_onnx, training_images

            note = ""
            if images is None:  # no data loaded: the data the project records, as main.py export does
                found, where = training_images(extra)
                images = [str(p) for p in found] or None
                note = (f"Verified on {plural(len(found), 'image')} {where}." if found else
                        f"Only random inputs were checked, no real images: {where}. Load data to verify the "
                        "export on real pictures too.")
            report = export_onnx(session, path, verify=True, images=images, progress=report_progress)
            if note:
                report.notes.append(note)
            return report

        def done(report, path=str(path)):
            self.settings.set_last_dir("export", path)
            text = self.export_summary(report, path)
            self.show_message(text.splitlines()[0])
            QMessageBox.information(self, "Export ONNX", text)
            self.exported.emit(report)

        def stale(report, path=str(path)):
            self.show_message(f"Exported {Path(path).name} (the model that was open when the export began).")

        self._run("export", f"Exporting {Path(path).name}…", run, finished=done, stale=stale,
                  errored=lambda m, d: self.show_error(m, d, "Export failed"),
                  progress=lambda text: self.busy_label.setText(str(text)))

    @staticmethod
    def export_summary(report, path: str) -> str:
        """The message after an export: where, how big, and the largest difference from PyTorch per head."""
        from engine.export.onnx_export import allowed_diff

        size = getattr(report, "size_bytes", 0) or 0
        lines = [f"Exported {Path(path).name} ({size / 1e6:.1f} MB)." if size else f"Exported {Path(path).name}."]
        random_diff = dict(getattr(report, "random_diff", {}) or {})
        image_diff = dict(getattr(report, "image_diff", {}) or {})
        heads = list(dict.fromkeys(list(random_diff) + list(image_diff)))
        if heads:
            images = getattr(report, "images", 0)
            where = f"a random batch and {images} real image{'s' if images != 1 else ''}" if image_diff \
                else "a random batch"
            lines.append(f"Largest difference between ONNX Runtime and PyTorch on {where}:")
            tolerance = getattr(report, "tolerance", 1e-4)
            scales = dict(getattr(report, "output_scale", {}) or {})
            within = True
            for head in heads:
                value = max(v for v in (random_diff.get(head), image_diff.get(head)) if v is not None)
                allowed = allowed_diff(tolerance, scales.get(head, 0.0))  # relative beyond ±1, as verified
                within = within and value <= allowed
                extra = f"  (outputs up to {scales[head]:.3g}: {allowed:.1e} allowed)" if allowed > tolerance else ""
                lines.append(f"    {head}: {value:.1e}{extra}")
            lines.append("Within the tolerance of {:.0e}.".format(tolerance) if within
                         else "Larger than the tolerance of {:.0e}!".format(tolerance))
        for note in getattr(report, "notes", []) or []:
            lines.append(note)
        return "\n".join(lines)

    # ------------------------------------------------------------------------------------------
    # recent files
    # ------------------------------------------------------------------------------------------
    def _rebuild_recent_menu(self) -> None:
        menu = self.actions.recent_menu
        menu.clear()
        items = self.settings.recent_files()
        for i, item in enumerate(items):
            label = f"&{i + 1} {Path(item['path']).name}  ({item['kind']})"
            action = menu.addAction(label)
            action.setToolTip(item["path"])
            action.setStatusTip(item["path"])
            action.triggered.connect(lambda _=False, it=dict(item): self.open_recent(it))
        if items:
            menu.addSeparator()
            menu.addAction(self.actions.clear_recent)
        else:
            empty = menu.addAction("No recent files")
            empty.setEnabled(False)

    def open_recent(self, item: dict[str, str]) -> None:
        path = item["path"]
        if not Path(path).exists():
            self.settings.remove_recent(path)
            self._rebuild_recent_menu()
            self.show_error(f"{path} is no longer there.")
            return
        if item["kind"] == "project":
            self.open_project_file(path)
        elif item["kind"] == "data":
            self.load_data(path)
        else:
            self.load_model({"spec": path})

    def _clear_recent(self) -> None:
        self.settings.clear_recent()
        self._rebuild_recent_menu()

    # ------------------------------------------------------------------------------------------
    # drag and drop
    # ------------------------------------------------------------------------------------------
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if event.mimeData().hasUrls() and any(u.isLocalFile() for u in event.mimeData().urls()):
            event.acceptProposedAction()
        else:
            event.ignore()

    def dropEvent(self, event: QDropEvent) -> None:
        paths = [u.toLocalFile() for u in event.mimeData().urls() if u.isLocalFile()]
        if not paths:
            event.ignore()
            return
        event.acceptProposedAction()
        self.open_path(paths[0])

    def open_path(self, path: str) -> None:
        """What a dropped file means: a project, a model, data (folder or CSV) or an image to try."""
        p = Path(path)
        suffix = p.suffix.lower()
        if suffix == ".graft":
            self.open_project_file(str(p))
        elif suffix in MODEL_SUFFIXES:
            self.load_model({"spec": str(p)})
        elif p.is_dir() or suffix in MANIFEST_SUFFIXES:
            self.load_data(str(p))
            self.tabs.setCurrentIndex(TABS.index("data"))
        elif suffix in IMAGE_SUFFIXES:
            self.tabs.setCurrentIndex(TABS.index("evaluate"))
            self.predict_image(str(p))
        else:
            self.show_error(f"{p.name}: Graft opens .graft projects, model files, data folders or CSV "
                            "manifests, and images to try.")

    # ------------------------------------------------------------------------------------------
    # closing
    # ------------------------------------------------------------------------------------------
    def _maybe_save(self, doing: str, then=None) -> bool:
        """Offer to save unsaved work. True: go on now. False: cancelled, or saving first — then ``then``
        runs once the save has succeeded."""
        if self.session is None or not self.isWindowModified():
            return True
        answer = QMessageBox.question(
            self, "Unsaved changes",
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

    def closeEvent(self, event: QCloseEvent) -> None:
        if self._in_close:  # asked again while this close waits for work to end
            event.ignore()
            return
        self._in_close = True
        try:
            accepted = self._close_now()
        finally:
            self._in_close = False
        if accepted:
            event.accept()
        else:
            event.ignore()

    def _close_now(self) -> bool:
        """Everything closing involves; False when the window stays open (cancelled, or saving first)."""
        if self.training:
            answer = QMessageBox.question(
                self, "Training is running",
                "Training is still running. Stop it and close Graft?\n\n"
                "Training stops after the current batch; the weights it has learned stay in the model.",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
            if answer != QMessageBox.StandardButton.Yes:
                return False
            self._closing = True
            job = self.train_job
            self.stop_training()
            # The run ends as any stopped run does (its result recorded, the weights it learned kept), so
            # that a cancelled close below leaves a window that is simply not training any more.
            if not self._wait_for([job], STOP_WAIT_MS):
                log.warning("training did not stop within %d ms", STOP_WAIT_MS)
        if "save" in self._jobs:
            self._close_after_save = True  # closes itself when the save is done
            return False
        if self.isWindowModified() and not self._close_after_save:
            answer = QMessageBox.question(
                self, "Unsaved changes",
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
        self._closing = True
        jobs = list(self._jobs.values()) + [j for j in (self.train_job, self._warm_job) if j is not None]
        for job in jobs:  # from now on their results reach nobody; loads and exports cannot be interrupted
            job.disconnect_all()
            job.request_stop()
        if not self._wait_for(jobs, JOB_WAIT_MS):
            log.warning("%s still running when the window closed", ", ".join(j.name for j in jobs if not j.ended))
        self._jobs.clear()
        self.train_job = None
        if self.session is not None:
            self.session.disconnect("changed", self._on_session_changed)
            self.heads_panel.set_session(None)
            self.tree_model.set_tree(None)
        self._save_window()
        if not self._closed:
            self._closed = True
            self.undo_stack.indexChanged.disconnect(self._on_undo_index)
            self.undo_stack.cleanChanged.disconnect(self._update_modified)
        return True

    def _close_cancelled(self) -> None:
        """The window stays open after all: back to normal, and evaluate a run that ended while closing."""
        self._closing = False
        self._refresh()
        if self._evaluate_after_close:
            self._evaluate_after_close = False
            self.evaluate()

    def _wait_for(self, jobs: list[Job], timeout_ms: int) -> bool:
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
                    dialog = QProgressDialog(text(), "", 0, 0, self)
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
