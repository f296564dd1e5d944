"""Every command of the window as one QAction, shared by the menus, the toolbar and the layer tree's
context menu, so that enabling, shortcuts and tooltips agree everywhere."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from PySide6.QtCore import QObject, Qt
from PySide6.QtGui import QAction, QIcon, QKeySequence, QUndoStack
from PySide6.QtWidgets import QMenu, QMenuBar, QToolBar, QWidget

ICONS = Path(__file__).resolve().parents[1] / "resources" / "icons"


def icon(name: str) -> QIcon:
    path = ICONS / f"{name}.svg"
    return QIcon(str(path)) if path.is_file() else QIcon()


class Actions(QObject):
    """The window's QActions. The window connects ``triggered`` and calls :meth:`update_enabled`."""

    def __init__(self, parent: QWidget, undo_stack: QUndoStack) -> None:
        super().__init__(parent)
        self._parent = parent
        self._stack = undo_stack

        # File
        self.open_model = self._make("&Open model…", "open-model", QKeySequence.StandardKey.Open,
                                     "Open a pretrained network: bundled EfficientNet-Lite, a torchvision "
                                     "architecture or a model file")
        self.open_torchvision = self._make("Open &torchvision architecture…", "layers", None,
                                           "Choose a torchvision architecture, with a weights file or random weights")
        self.open_project = self._make("Open &project…", "open-project", "Ctrl+Shift+O",
                                       "Open a .graft project (network, surgery, heads and weights)")
        self.open_data = self._make("Open CSV &manifest…", "data", "Ctrl+D",
                                    "Load labelled images listed in a CSV file (an image column, one column "
                                    "per label)")
        self.open_data_folder = self._make("Open image &folder…", "data", "Ctrl+Shift+D",
                                           "Load labelled images from a folder of class folders "
                                           "(root/<class>/<image>)")
        self.save_project = self._make("&Save project", "save", QKeySequence.StandardKey.Save,
                                       "Save the network, its surgery, heads and weights as a .graft project")
        self.save_project_as = self._make("Save project &as…", None, "Ctrl+Shift+S",
                                          "Save the project under a new name")
        self.export_onnx = self._make("&Export ONNX…", "export", "Ctrl+E",
                                      "Export the network with its heads to ONNX (fp32, or fp16/int8 measured "
                                      "against fp32: choose the file type) and check it against PyTorch")
        self.export_script = self._make("Export training &script…", None, None,
                                        "Write one Python training script (torch, torchvision, NumPy, Pillow; no "
                                        "Graft) that rebuilds, trains and exports what this project trains")
        self.quit = self._make("&Quit", "quit", QKeySequence.StandardKey.Quit, "Close Graft")
        self.quit.setMenuRole(QAction.MenuRole.QuitRole)
        self.recent_menu = QMenu("Open &recent", parent)
        self.clear_recent = QAction("Clear list", self)

        # Edit: the undo stack's own actions show the command's text ("Undo Cut at layer3").
        self.undo = undo_stack.createUndoAction(self, "&Undo")
        self.undo.setShortcut(QKeySequence("Ctrl+Z"))
        self.undo.setIcon(icon("undo"))
        self.undo.setObjectName("undo")
        self.redo = undo_stack.createRedoAction(self, "&Redo")
        self.redo.setShortcuts([QKeySequence("Ctrl+Shift+Z"), QKeySequence("Ctrl+Y")])
        self.redo.setIcon(icon("redo"))
        self.redo.setObjectName("redo")

        # Surgery
        self.delete_output = self._make("&Delete output layer", "delete-output", "Ctrl+Shift+Del",
                                        "Remove the network's classifier layer so new heads read its features")
        self.cut_here = self._make("&Cut here", "cut", "Ctrl+K",
                                   "Keep the network up to the selected layer; heads read that layer's output")
        self.add_head = self._make("&Add head…", "add-head", "Ctrl+H",
                                   "Graft a new output head (several heads = multi-task)")
        self.add_head_here = self._make("Add head &here…", "add-head", None,
                                        "Graft a head that reads the selected layer's output, pooled to a "
                                        "vector (heads on several layers: a multi-exit network)")
        self.edit_head = self._make("&Edit head…", None, None, "Change the selected head")
        self.remove_head = self._make("&Remove head", "remove-head", None, "Remove the selected head")
        self.freeze_up_to = self._make("&Freeze up to here", "freeze", None,
                                       "Freeze the selected layer and everything before it; train the rest")
        self.heads_only = self._make("Train only the &heads", "heads-only", None,
                                     "Freeze the whole network; only the grafted heads learn")
        self.unfreeze_all = self._make("&Unfreeze all", "unfreeze", None, "Train every layer")
        self.lr_factor = self._make("Learning-rate &factor…", None, None,
                                    "Multiply the selected layer's learning rate (and that of the layers below "
                                    "it) by a factor; 0 freezes it")
        self.input_channels = self._make("Input &channels…", None, None,
                                         "Read 1 channel (greyscale) or 4 and more (RGB plus infrared, depth …): "
                                         "the first convolution is adapted from its pretrained RGB kernels")
        self.input_size = self._make("Input si&ze…", None, None,
                                     "Change the size of the image the network sees (e.g. 224 → 320)")
        self.compare_loaded = self._make("The network as &loaded", None, None,
                                         "Show in the tree what surgery and training changed since the network "
                                         "was loaded: layers added, reshaped, and how far their weights moved")
        self.compare_file = self._make("A project or &model file…", None, None,
                                       "Show in the tree how the network differs from another project or model")
        self.clear_compare = self._make("C&lear comparison", None, None, "Hide the tree's Change column")
        self.compare_menu = QMenu("Co&mpare with", parent)
        self.heads_only.setIconText("Heads only")  # the toolbar's short labels
        self.freeze_up_to.setIconText("Freeze to here")
        self.unfreeze_all.setIconText("Unfreeze all")
        self.export_onnx.setIconText("Export ONNX")

        # Train
        self.train_start = self._make("&Start training", "start", "F5", "Train on the loaded data")
        self.train_stop = self._make("S&top training", "stop", "Shift+F5",
                                     "Stop after the current batch (the best weights so far are kept)")
        self.evaluate = self._make("&Evaluate", "evaluate", "F6", "Evaluate every head on the validation data")
        self.tensorboard = self._make("Log runs to &TensorBoard…", None, None,
                                      "Also write each run's curves as TensorBoard event files in a folder")
        self.tensorboard.setCheckable(True)
        self.train_start.setIconText("Train")  # short toolbar labels: the menu keeps the full names
        self.train_stop.setIconText("Stop")

        # Help
        self.about = self._make("&About Graft", "about", None, "About Graft")
        self.about.setMenuRole(QAction.MenuRole.AboutRole)

        for name, action in vars(self).items():
            if isinstance(action, QAction) and not action.objectName():
                action.setObjectName(name)

    def _make(self, text: str, icon_name: str | None, shortcut, tip: str) -> QAction:
        action = QAction(text, self)
        if icon_name:
            action.setIcon(icon(icon_name))
        if shortcut is not None:
            action.setShortcut(QKeySequence(shortcut))
        clean = text.replace("&", "").rstrip("…")
        action.setToolTip(f"{clean} ({QKeySequence(shortcut).toString(QKeySequence.SequenceFormat.NativeText)})"
                          if shortcut is not None else clean)
        action.setStatusTip(tip)
        action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        return action

    # -- placement ------------------------------------------------------------------------------
    def build_menus(self, bar: QMenuBar) -> dict[str, QMenu]:
        menus: dict[str, QMenu] = {}
        m = menus["file"] = bar.addMenu("&File")
        m.addActions([self.open_model, self.open_torchvision, self.open_project])
        m.addMenu(self.recent_menu)
        m.addSeparator()
        m.addActions([self.open_data_folder, self.open_data])
        m.addSeparator()
        m.addActions([self.save_project, self.save_project_as, self.export_onnx, self.export_script])
        m.addSeparator()
        m.addAction(self.quit)
        m = menus["edit"] = bar.addMenu("&Edit")
        m.addActions([self.undo, self.redo])
        m = menus["surgery"] = bar.addMenu("&Surgery")
        m.addActions([self.delete_output, self.cut_here])
        m.addSeparator()
        m.addActions([self.add_head, self.add_head_here, self.edit_head, self.remove_head])
        m.addSeparator()
        m.addActions([self.input_channels, self.input_size])
        m.addSeparator()
        m.addActions([self.freeze_up_to, self.heads_only, self.unfreeze_all, self.lr_factor])
        m.addSeparator()
        self.compare_menu.addActions([self.compare_loaded, self.compare_file])
        self.compare_menu.addSeparator()
        self.compare_menu.addAction(self.clear_compare)
        m.addMenu(self.compare_menu)
        m = menus["train"] = bar.addMenu("&Train")
        m.addActions([self.train_start, self.train_stop])
        m.addSeparator()
        m.addAction(self.tensorboard)
        m.addSeparator()
        m.addAction(self.evaluate)
        m = menus["help"] = bar.addMenu("&Help")
        m.addAction(self.about)
        return menus

    def build_toolbar(self, bar: QToolBar) -> None:
        bar.addActions([self.open_model, self.open_project, self.save_project])
        bar.addSeparator()
        bar.addActions([self.undo, self.redo])
        bar.addSeparator()
        bar.addActions([self.delete_output, self.cut_here, self.add_head, self.freeze_up_to, self.heads_only,
                        self.unfreeze_all])
        bar.addSeparator()
        bar.addActions([self.train_start, self.train_stop, self.evaluate])
        bar.addSeparator()
        bar.addAction(self.export_onnx)

    def context_actions(self) -> list[QAction | None]:
        """What right-clicking a layer offers, in order (``None``: a separator)."""
        return [self.cut_here, self.delete_output, None, self.freeze_up_to, self.heads_only, self.unfreeze_all,
                self.lr_factor, None, self.add_head_here, self.add_head, self.edit_head, self.remove_head]

    def update_enabled(self, *, has_model: bool, free: Mapping[str, bool], training: bool, output_present: bool,
                       layer_selected: bool, head_selected: bool, has_heads: bool, has_data: bool,
                       can_cut: bool, can_freeze_here: bool, stopping: bool = False, can_read_here: bool = False,
                       has_comparison: bool = False) -> None:
        """Enable exactly what makes sense now. ``free``: which kinds of work ("surgery", "save", "open",
        "export", "evaluate", "train", "data", "compare") may start now, given the work already running (a
        kind not named is free). ``stopping``: Stop was pressed for the running training; ``can_read_here``:
        a head can read the selected layer; ``has_comparison``: the tree shows a comparison."""
        def ok(kind: str) -> bool:
            return bool(free.get(kind, True))

        surgery = has_model and ok("surgery")
        self.open_model.setEnabled(ok("open"))
        self.open_torchvision.setEnabled(ok("open"))
        self.open_project.setEnabled(ok("open"))
        self.recent_menu.setEnabled(ok("open") or ok("data"))  # it holds data, too
        self.open_data.setEnabled(ok("data"))
        self.open_data_folder.setEnabled(ok("data"))
        self.save_project.setEnabled(has_model and ok("save"))
        self.save_project_as.setEnabled(has_model and ok("save"))
        self.export_onnx.setEnabled(has_model and ok("export"))
        self.export_script.setEnabled(has_model and has_heads and ok("export"))
        self.delete_output.setEnabled(surgery and output_present)
        self.cut_here.setEnabled(surgery and layer_selected and can_cut)
        self.add_head.setEnabled(surgery)
        self.add_head_here.setEnabled(surgery and layer_selected and can_read_here)
        self.input_channels.setEnabled(surgery)
        self.input_size.setEnabled(surgery)
        self.compare_loaded.setEnabled(has_model and ok("compare"))
        self.compare_file.setEnabled(has_model and ok("compare"))
        self.clear_compare.setEnabled(has_comparison)
        self.edit_head.setEnabled(surgery and head_selected)
        self.remove_head.setEnabled(surgery and head_selected)
        self.freeze_up_to.setEnabled(surgery and layer_selected and can_freeze_here)
        self.heads_only.setEnabled(surgery and has_heads)
        self.unfreeze_all.setEnabled(surgery)
        self.train_start.setEnabled(has_model and ok("train") and has_heads and has_data)
        self.train_stop.setEnabled(training and not stopping)
        self.evaluate.setEnabled(has_model and ok("evaluate") and has_heads and has_data)
        # The stack enables its actions on canUndo/canRedo changes; none happen while work runs.
        self.undo.setEnabled(surgery and self._stack.canUndo())
        self.redo.setEnabled(surgery and self._stack.canRedo())
