"""The Graft window: the layer tree on the left; Heads, Data, Train and Evaluate tabs on the right.

The window builds the layout and the chrome (menus, toolbar, status bar) and wires them to the concerns
that do the work, one module each (the shape of napari's ``_qt/_qapp_model/qactions``): :mod:`app.files`
(opening, saving, recent files, drops, closing), :mod:`app.data`, :mod:`app.surgery`, :mod:`app.compare`,
:mod:`app.training`, :mod:`app.evaluation`, :mod:`app.explain`, :mod:`app.export` and :mod:`app.recovery`
(autosave, and the work of a window that crashed). The concerns share
what is open (:class:`~app.workspace.Workspace`, with plain events), the background work
(:class:`~app.jobs.Jobs`) and the status line (:class:`~app.messages.Messages`); none reaches into
another's widgets. Everything slow runs in a worker (:mod:`app.workers`); the GUI thread only starts jobs
and shows what comes back.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QEvent, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QCloseEvent, QDragEnterEvent, QDropEvent, QUndoStack
from PySide6.QtWidgets import (QApplication, QFrame, QGroupBox, QLabel, QMainWindow, QProgressBar, QScrollArea,
                               QSizePolicy, QSplitter, QTabWidget, QToolBar, QUndoView, QVBoxLayout, QWidget)

from engine.units import human_count as human

from . import dialogs, garbage
from .actions import Actions, icon
from .compare import Compare
from .data import Datasets
from .evaluation import Evaluation
from .explain import Explain
from .export import Export
from .files import Files
from .jobs import Jobs
from .messages import ElidedLabel, Messages, NotesStrip
from .recovery import Recovery
from .settings import Settings
from .surgery import Surgery
from .training import Training
from .workspace import Workspace

TABS = ("heads", "data", "train", "evaluate", "runs")


class MainWindow(QMainWindow):
    """The application window. Signals announce finished background work (tests wait on them)."""

    modelLoaded = Signal()
    dataLoaded = Signal()
    trainingStarted = Signal()
    trainingFinished = Signal(object)  # the TrainResult as a dict
    evaluated = Signal(object)  # the EvalReport
    compared = Signal(object)  # the ModelDiff the tree shows
    predicted = Signal(object)
    exported = Signal(object)  # the ExportReport
    saved = Signal(str)
    errorShown = Signal(str)

    def __init__(self, settings: Settings | None = None) -> None:
        super().__init__()
        self.settings = settings or Settings()
        self.workspace = Workspace()
        self.undo_stack = QUndoStack(self)
        self._in_close = False
        self.setWindowTitle("Graft[*]")
        self.setWindowIcon(icon("graft"))
        self.setAcceptDrops(True)
        self.setDockNestingEnabled(False)

        self.actions = Actions(self, self.undo_stack)
        self._build_widgets()
        self._build_chrome()
        self._build_concerns()
        self._connect()
        self._restore_window()
        self._refresh()
        QTimer.singleShot(0, self.recovery.offer)  # a crashed window's work, once this one is up

    # What is open, at a glance (the workspace holds it).
    session = property(lambda self: self.workspace.session)
    data = property(lambda self: self.workspace.data)
    data_path = property(lambda self: self.workspace.data_path)
    project_path = property(lambda self: self.workspace.project_path)

    # ------------------------------------------------------------------------------------------
    # construction
    # ------------------------------------------------------------------------------------------
    def _build_widgets(self) -> None:
        from widgets.activation_grid import ActivationGridView
        from widgets.curve_panel import CurvePanel
        from widgets.data_panel import DataPanel
        from widgets.evaluation_panel import EvaluationPanel
        from widgets.heads_panel import HeadsPanel
        from widgets.heatmap_view import HeatmapView
        from widgets.label_audit_view import LabelAuditView
        from widgets.layer_tree_model import LayerTreeModel
        from widgets.layer_tree_view import LayerTreeView
        from widgets.mistakes_gallery import MistakesGallery
        from widgets.runs_view import RunsView
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
        self.heatmap_view = HeatmapView()
        self.activation_grid = ActivationGridView()
        self.gallery = MistakesGallery()
        self.label_audit = LabelAuditView()
        self.runs_view = RunsView()

        self.tabs = QTabWidget()
        self.tabs.setDocumentMode(False)
        self.tabs.addTab(self._heads_page(), icon("add-head"), "Heads")
        self.tabs.addTab(self.data_panel, icon("data"), "Data")
        # The settings scroll rather than forcing their width on the window; the plots stack when narrow.
        self.train_split = self._split(Qt.Orientation.Horizontal, self._scrolled(self.training_panel),
                                       self.curve_panel, (0, 1))
        self.curve_panel.set_orientation(Qt.Orientation.Vertical)
        self.curve_panel.installEventFilter(self)
        self.tabs.addTab(self.train_split, icon("start"), "Train")
        # Evaluate: the metrics over the images behind them; the tried image over where the model looks.
        self.image_lists = self._tabbed((self.gallery, "Images"), (self.label_audit, "Label audit"))
        self.looks = self._tabbed((self.heatmap_view, "Heatmap"), (self.activation_grid, "Activations"))
        self.evaluate_split = self._split(
            Qt.Orientation.Horizontal, self._split(Qt.Orientation.Vertical, self.evaluation_panel, self.image_lists,
                                                   (1, 1)),
            self._split(Qt.Orientation.Vertical, self.try_image, self.looks, (1, 1)), (1, 1))
        # Scrolls when the window is short: its panes' minimum heights add up (the window must fit 600 px).
        self.evaluate_area = self._scrolled(self.evaluate_split)
        self.tabs.addTab(self.evaluate_area, icon("evaluate"), "Evaluate")
        self.tabs.addTab(self.runs_view, icon("layers"), "Runs")

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
        self.notes = NotesStrip()
        column.addWidget(self.notes)
        column.addWidget(self.splitter, 1)
        self.setCentralWidget(central)

    def _heads_page(self) -> QWidget:
        """The heads at their natural height (they grow with each head), the history below in the rest:
        a fixed split left a tall empty band under a few heads."""
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.heads_panel, 0)
        layout.addWidget(self._history_box(), 1)
        return page

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
    def _tabbed(*pages: tuple[QWidget, str]) -> QTabWidget:
        tabs = QTabWidget()
        tabs.setDocumentMode(True)
        for widget, title in pages:
            tabs.addTab(widget, title)
        return tabs

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
        self.model_label = ElidedLabel("No model", max_width=230)  # the title and tooltip say it in full
        self.model_label.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)
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

    def _build_concerns(self) -> None:
        """One object per concern, each handed the widgets it shows its work in. They hear the workspace's
        events in this order, and the window last (:meth:`_connect`)."""
        ws, show_tab = self.workspace, self.show_tab
        self.messages = Messages(self.message_label, self, ws, self.undo_stack)
        self.jobs = jobs = Jobs(ws, self.messages, self.busy_label, self.busy_bar)
        self.files = Files(self, ws, jobs, self.messages, self.settings, self.undo_stack, self.notes,
                           self.actions.recent_menu, self.actions.clear_recent, show_tab)
        self.surgery = Surgery(self, ws, jobs, self.messages, self.undo_stack, self.tree_model, self.tree_view,
                               self.heads_panel, self.history_view, show_tab)
        self.compare = Compare(self, ws, jobs, self.messages, self.settings, self.tree_model)
        self.datasets = Datasets(self, ws, jobs, self.messages, self.settings, self.data_panel)
        self.training = Training(self, ws, jobs, self.messages, self.training_panel, self.curve_panel,
                                 self.device_label, show_tab, self.runs_view, self.settings, self.tree_model)
        self.evaluation = Evaluation(self, ws, jobs, self.messages, self.evaluation_panel, self.try_image, show_tab)
        self.explain = Explain(self, ws, jobs, self.messages, self.heatmap_view, self.activation_grid, self.gallery,
                               self.label_audit, self.looks, self.image_lists)
        self.export = Export(self, ws, jobs, self.messages, self.settings)
        self.recovery = Recovery(self, ws, jobs, self.messages, self.settings, self.files, self.undo_stack)
        self.training.on_launch = self.recovery.training_started
        self.training.finished.connect(self.recovery.training_finished)

    def _connect(self) -> None:
        """Requests (actions, panels' buttons, drops) go to the concern that does them; what the concerns
        announce, the window announces; and the chrome follows the state."""
        a, f, s, d, t, e, x = (self.actions, self.files, self.surgery, self.datasets, self.training, self.evaluation,
                               self.explain)
        for action, slot in (
                (a.open_model, lambda: f.open_model_dialog("bundled")),
                (a.open_torchvision, lambda: f.open_model_dialog("torchvision")),
                (a.open_project, f.open_project_dialog), (a.open_data, d.open_data_dialog),
                (a.open_data_folder, d.open_data_folder_dialog), (a.save_project, f.save_project),
                (a.save_project_as, f.save_project_as), (a.export_onnx, self.export.export_onnx_dialog),
                (a.export_script, self.export.export_script_dialog),
                (a.quit, self.close), (a.clear_recent, f.clear_recent),
                (a.delete_output, s.delete_output_layer), (a.cut_here, s.cut_here),
                (a.add_head, lambda: s.add_head()), (a.add_head_here, lambda: s.add_head_here()),
                (a.input_channels, lambda: s.input_channels()), (a.input_size, lambda: s.input_size()),
                (a.compare_loaded, self.compare.with_loaded), (a.compare_file, self.compare.with_file_dialog),
                (a.clear_compare, lambda: self.compare.clear()),
                (a.edit_head, lambda: s.edit_head(s.selected_head())),
                (a.remove_head, lambda: s.remove_head(s.selected_head())),
                (a.freeze_up_to, s.freeze_up_to_here), (a.heads_only, lambda: s.apply_preset("heads-only")),
                (a.unfreeze_all, lambda: s.apply_preset("none")), (a.train_start, t.start),
                (a.train_stop, t.stop), (a.evaluate, e.evaluate), (a.about, lambda: dialogs.about_box(self))):
            action.triggered.connect(slot)
        a.tensorboard.setChecked(bool(t.tensorboard_dir()))
        a.tensorboard.triggered.connect(t.choose_tensorboard)
        t.tensorboard_changed.connect(a.tensorboard.setChecked)
        s.set_factor_action(a.lr_factor)
        self.tree_view.set_context_actions(a.context_actions())
        for signal, slot in (
                (self.heads_panel.addRequested, s.add_head), (self.heads_panel.editRequested, s.edit_head),
                (self.heads_panel.removeRequested, s.remove_head), (self.data_panel.dataRequested, d.load_data),
                (self.data_panel.adviceApplied, s.apply_preset), (self.training_panel.startRequested, t.start),
                (self.training_panel.stopRequested, t.stop), (self.try_image.imageChosen, x.open_image),
                (self.training_panel.discriminativeRequested, s.apply_discriminative),
                (f.dataRequested, d.load_data), (f.imageRequested, x.open_image),
                # seeing inside: images to try come through the explain concern (they wait for its work)
                (x.tryRequested, e.predict_image), (e.tried, x.image_tried), (e.tryFailed, x.try_failed),
                (e.evaluated, x.set_report), (self.evaluation_panel.cellClicked, x.show_cell),
                (self.tree_view.currentPathChanged, x.layer_selected),
                (f.stopTrainingRequested, t.stop), (t.evaluateRequested, e.evaluate),
                # announcements
                (d.loaded, self.dataLoaded), (t.started, self.trainingStarted), (t.finished, self.trainingFinished),
                (e.evaluated, self.evaluated), (e.predicted, self.predicted), (self.export.exported, self.exported),
                (self.compare.compared, self.compared), (self.compare.compared, self._refresh_actions),
                (self.compare.compared, self._room_for_the_tree),
                (self.compare.cleared, self._refresh_actions),
                (f.saved, self.saved), (self.messages.errorShown, self.errorShown),
                # the chrome follows the state
                (self.tree_view.currentPathChanged, self._refresh_actions),
                (self.heads_panel.table.itemSelectionChanged, self._refresh_actions),
                (self.undo_stack.indexChanged, self._refresh), (self.undo_stack.cleanChanged, self._update_modified)):
            signal.connect(slot)
        ws = self.workspace
        ws.connect("session", self._on_session)
        for event in ("session", "data", "closed"):  # what the garbage collector froze may be garbage now
            ws.connect(event, garbage.thaw)
        for event in ("session_changed", "data", "closing"):
            ws.connect(event, self._refresh)
        ws.connect("modified", self._update_modified)
        ws.connect("closed", self._closed)
        self.jobs.connect("changed", self._refresh)
        self.tabs.currentChanged.connect(lambda i: i == TABS.index("evaluate") and x.tab_shown())

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

    def _room_for_the_tree(self, *_: Any) -> None:
        """A comparison adds the tree's Change column: widen the tree's pane for it, as far as the tabs allow."""
        left, right = self.splitter.sizes()
        wanted = self.tree_view.sizeHint().width()
        grow = min(wanted - left, right - self.tabs.minimumSizeHint().width())
        if grow > 0:
            self.splitter.setSizes([left + grow, right - grow])

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
        elif widget is self.evaluate_area:
            self.evaluate_split.setSizes([width // 2, width - width // 2])
            height = max(self.tabs.height() - 40, 400)
            for column in (0, 1):  # the metrics or the tried image over the images or the heatmap
                self.evaluate_split.widget(column).setSizes([height * 9 // 20, height - height * 9 // 20])

    def _save_window(self) -> None:
        self.settings.save_window_state(self.saveGeometry(), self.saveState(), self.splitter.sizes())
        self.settings.sync()

    def show_tab(self, name: str) -> None:
        self.tabs.setCurrentIndex(TABS.index(name))

    # ------------------------------------------------------------------------------------------
    # the chrome follows the state
    # ------------------------------------------------------------------------------------------
    def _on_session(self, session) -> None:
        self._refresh()
        self.modelLoaded.emit()

    def _closed(self) -> None:
        self.undo_stack.indexChanged.disconnect(self._refresh)
        self.undo_stack.cleanChanged.disconnect(self._update_modified)

    def _refresh(self, *_: Any) -> None:
        self._refresh_actions()
        self._refresh_status()
        self._update_modified()

    def _refresh_actions(self, *_: Any) -> None:
        s, jobs = self.workspace.session, self.jobs
        layer = self.surgery.selected_layer() if s is not None else None
        node = s.tree.node(layer) if (s is not None and layer) else None
        order = set(s.tree.order) if s is not None else set()
        self.actions.update_enabled(
            has_model=s is not None, free=jobs.free(), training=jobs.training, stopping=jobs.stopping,
            output_present=bool(s is not None and s.output_layer),
            layer_selected=node is not None, head_selected=self.surgery.selected_head() is not None,
            has_heads=bool(s is not None and s.heads), has_data=self.workspace.data is not None,
            can_cut=node is not None and layer in order,
            can_freeze_here=node is not None and layer in order and node.params > 0,
            can_read_here=node is not None and self.surgery.can_read(layer),
            has_comparison=self.compare.diff is not None)

    def _refresh_status(self) -> None:
        s = self.workspace.session
        if s is None:
            self.model_label.setText("No model")
            self.features_label.setText("")
            self.params_label.setText("")
            return
        self.model_label.setText(s.describe())
        dim = s.tree.feature_dim
        if s.output_layer and dim:
            # Still the pretrained classifier's outputs, not the trunk's width: say which.
            self.features_label.setText(f"classifier outputs: {dim}")
            self.features_label.setToolTip(f"The network still ends in its output layer ({s.output_layer}), "
                                           f"{dim} outputs; delete it to graft heads on the trunk's features")
        else:
            self.features_label.setText(f"features: {dim}" if dim else "features: ?")
            self.features_label.setToolTip("How many features the heads at the trunk's end read")
        total = trainable = 0
        for p in s.model.parameters():
            n = p.numel()
            total += n
            if p.requires_grad:
                trainable += n
        self.params_label.setText(f"{human(trainable)} of {human(total)} parameters train")
        self.params_label.setToolTip(f"{trainable:,} trainable of {total:,} parameters")

    def _update_modified(self, *_: Any) -> None:
        ws = self.workspace
        modified = ws.session is not None and (not self.undo_stack.isClean() or ws.weights_changed)
        self.setWindowModified(modified)
        name = Path(ws.project_path).name if ws.project_path else (
            ws.session.describe() if ws.session is not None else "")
        self.setWindowTitle(f"{name}[*] — Graft" if name else "Graft[*]")

    # ------------------------------------------------------------------------------------------
    # drops and closing (Qt's events; the files concern decides)
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
        self.files.open_path(paths[0])

    def closeEvent(self, event: QCloseEvent) -> None:
        if self._in_close:  # asked again while this close waits for work to end
            event.ignore()
            return
        self._in_close = True
        try:
            accepted = self.files.close_now()
        finally:
            self._in_close = False
        if accepted:
            self._save_window()
            event.accept()
        else:
            event.ignore()
