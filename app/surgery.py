"""Surgery: delete the output layer, cut, freeze (the tree's checkboxes and the presets), add heads (at the
end, or on any layer: "Add head here"), edit and remove them, change the input's channels and size,
learning-rate factors (a layer's from the tree's "Learning-rate factor…", and the Train tab's
Discriminative rates preset), and what undo and redo say.

Every surgery is applied first — an illegal one raises GraftError and changes nothing — and then pushed
on the QUndoStack as an already-applied :class:`~app.undo.OperationCommand`. The layer tree and the
Heads tab show the session; they follow the workspace's events.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject
from PySide6.QtGui import QAction, QUndoStack
from PySide6.QtWidgets import QMessageBox, QUndoView, QWidget

from engine.errors import GraftError
from engine.network.layer_tree import HEADS_KEY
from widgets.head_diagram import KIND_SHORT

from . import dialogs
from .undo import push_history, push_operation

if TYPE_CHECKING:
    from widgets.heads_panel import HeadsPanel
    from widgets.layer_tree_model import LayerTreeModel
    from widgets.layer_tree_view import LayerTreeView

    from .jobs import Jobs
    from .messages import Messages
    from .workspace import Workspace



def demo_heads(suggestions) -> list:
    """Of a data's suggested heads, the demo task's: the first classification (single-label) head and the
    first segment and detect heads — none unless there is a dense one."""
    chosen = [next((h for h in suggestions if h.kind == kind), None) for kind in ("single", "segment", "detect")]
    return [h for h in chosen if h is not None] if any(h is not None and h.dense for h in chosen) else []


def _dense_choices(session) -> tuple[list[str], list[str]]:
    """The layers a dense head may read (those giving a feature map, in the order they run) and those it
    reads when none is chosen (empty when the trunk has no such defaults, e.g. a vision transformer)."""
    from engine.network.dense_heads import default_layers, map_shape

    maps = [p for p in session.head_layers() if map_shape(session.tree.shapes.get(p)) is not None]
    try:
        defaults = default_layers(session.tree, session.input_spec.size)
    except GraftError:
        defaults = []
    return maps, defaults

class Surgery(QObject):
    """The Surgery menu, the layer tree's checkboxes and the Heads tab."""

    def __init__(self, window: QWidget, workspace: Workspace, jobs: Jobs, messages: Messages,
                 undo_stack: QUndoStack, tree_model: LayerTreeModel, tree_view: LayerTreeView,
                 heads_panel: HeadsPanel, history_view: QUndoView, show_tab: Callable[[str], Any]) -> None:
        super().__init__(window)
        self._window = window
        self._workspace, self._jobs, self._messages = workspace, jobs, messages
        self._stack = undo_stack
        self._tree_model, self._tree_view = tree_model, tree_view
        self._heads_panel, self._history_view = heads_panel, history_view
        self._show_tab = show_tab
        self._undo_index = 0  # the stack's index as last seen (undo and redo say what they did)
        self._pushing = False  # a surgery is being pushed: it says what it did itself
        self._undo_failed = False  # the undo or redo under way could not be done and said so
        self._factor_action: QAction | None = None
        self._demo_armed = False  # set up the demo task once the model and the demo data are both in
        undo_stack.indexChanged.connect(self._on_undo_index)
        tree_model.set_toggle_handler(self.toggle_trainable)
        tree_view.currentPathChanged.connect(self._on_tree_current)
        workspace.connect("session", self._show_session)
        workspace.connect("session", self._maybe_demo_task)
        workspace.connect("data", self._maybe_demo_task)
        workspace.connect("closed", self._closed)
        jobs.connect("changed", self._refresh)
        self._refresh()

    # -- following the workspace ----------------------------------------------------------------
    def _show_session(self, session) -> None:
        self._undo_index = 0  # clearing the stack undoes nothing: no "Undid …"
        self._stack.clear()
        self._tree_model.set_tree(session.tree)
        self._tree_view.tree_view.expandToDepth(0)
        self._heads_panel.set_session(session)
        # A reopened project or restored work: the replayed steps its engine history can undo faithfully
        # (engine.project.project_file.open_project) are the history here too, already applied, grouped as
        # the crashed window had them.
        self.show_history(self._workspace.history_steps)
        self._stack.setClean()

    def show_history(self, steps: list[tuple[str, int]] | None = None) -> None:
        """The session's undoable operations as the history (:func:`app.undo.push_history`); ``steps``: as
        the window that did them had grouped them (restored work's)."""
        self._undo_index = 0
        self._stack.clear()
        self._pushing = True  # pushing them redoes nothing: no "Redid …"
        try:
            push_history(self._stack, self._workspace.session, steps, on_error=self._surgery_failed)
        finally:
            self._pushing = False

    def _closed(self) -> None:
        self._heads_panel.set_session(None)
        self._tree_model.set_tree(None)
        self._stack.indexChanged.disconnect(self._on_undo_index)

    def _refresh(self, *_: Any) -> None:
        self._heads_panel.setEnabled(not self._jobs.training)
        self._history_view.setEnabled(self._jobs.blocker("surgery") is None)
        if self._factor_action is not None:
            self._factor_action.setEnabled(self._factor_path() is not None and self._jobs.blocker("surgery") is None)

    def _on_undo_index(self, index: int) -> None:
        """Undo, redo or a click in the surgery history: say what was undone or redone (the status line
        otherwise kept naming the step just undone, as if it had been done)."""
        previous, self._undo_index = self._undo_index, index
        if not self._pushing and not self._undo_failed and previous != index:
            stack, say = self._stack, self._messages.show_message
            if index < previous:
                steps, text = previous - index, stack.text(previous - 1) if previous - index == 1 else ""
                say(f"Undid {text}." if text else
                    f"Undid {steps} steps: back to "
                    f"{('after ' + stack.text(index - 1)) if index else 'the network as loaded'}.")
            else:
                steps = index - previous
                say(f"Redid {stack.text(index - 1)}." if steps == 1 else
                    f"Redid {steps} steps, up to {stack.text(index - 1)}.")
        self._undo_failed = False

    def _surgery_failed(self, message: str) -> None:
        """An undo or redo could not be done (see OperationCommand): its message, not 'Undid …'."""
        self._undo_failed = True
        self._messages.show_error(message)

    # -- what is selected -----------------------------------------------------------------------
    def _selected_path(self) -> str | None:
        path = self._tree_view.current_path() if self._workspace.session is not None else None
        return path or None

    def selected_layer(self) -> str | None:
        path = self._selected_path()
        return path if path and not path.startswith(HEADS_KEY) else None

    def selected_head(self) -> str | None:
        s = self._workspace.session
        path = self._selected_path()
        if path and path.startswith(HEADS_KEY + "."):
            return path[len(HEADS_KEY) + 1:].split(".")[0]
        if s is not None and self._heads_panel.current_head():
            return self._heads_panel.current_head()
        if s is not None and len(s.heads) == 1:
            return s.heads[0].name
        return None

    def _on_tree_current(self, path: str) -> None:
        """A head chosen in the tree is the head the Heads tab's Edit and Remove act on, too."""
        if path.startswith(HEADS_KEY + "."):
            self._heads_panel.select_head(path[len(HEADS_KEY) + 1:].split(".")[0])
        self._refresh()

    # -- operations -----------------------------------------------------------------------------
    def apply_op(self, op) -> bool:
        """Apply ``op`` and push it on the undo stack; a GraftError is shown and changes nothing."""
        if self._workspace.session is None:
            self._messages.show_message("Open a model first.", "warning")
            return False
        if self._jobs.must_wait("surgery", "Surgery"):
            return False
        try:
            self._pushing = True
            push_operation(self._stack, self._workspace.session, op, on_error=self._surgery_failed)
        except GraftError as exc:
            self._messages.show_error(str(exc), title="Surgery")
            return False
        finally:
            self._pushing = False
        self._messages.show_message(f"{op.text}.")
        return True

    def delete_output_layer(self) -> bool:
        from engine.surgery.operations import DeleteOutputLayer

        return self.apply_op(DeleteOutputLayer())

    def cut_here(self, path: str | None = None) -> bool:
        from engine.surgery.operations import CutAt

        layer = path or self.selected_layer()
        if not layer:
            self._messages.show_message("Select the layer to cut at.", "warning")
            return False
        return self.apply_op(CutAt(layer))

    def freeze_up_to_here(self, path: str | None = None) -> bool:
        from engine.surgery.operations import SetTrainable

        layer = path or self.selected_layer()
        if not layer:
            self._messages.show_message("Select the last layer to freeze.", "warning")
            return False
        return self.apply_op(SetTrainable("up_to", [layer]))

    def apply_preset(self, preset: str) -> bool:
        from engine.surgery.operations import freeze_preset

        try:
            op = freeze_preset(preset)
        except GraftError as exc:
            self._messages.show_error(str(exc))
            return False
        return self.apply_op(op)

    def toggle_trainable(self, path: str, trainable: bool) -> bool:
        """The tree's checkbox: freeze or unfreeze one layer (or head) through the undo stack."""
        from engine.surgery.operations import SetTrainable

        if self._jobs.training:
            self._messages.show_message("Freezing cannot change while training runs.", "warning")
            return False
        return self.apply_op(SetTrainable("layers", [path], trainable))

    # -- the demo task ----------------------------------------------------------------------------------
    def arm_demo_task(self) -> None:
        """Set up :meth:`setup_demo_task` as soon as a model and data that suggests dense heads are both in
        (the window opening with the bundled network and the demo data)."""
        self._demo_armed = True
        self._maybe_demo_task()

    def _maybe_demo_task(self, *_: Any) -> None:
        s, data = self._workspace.session, self._workspace.data
        if not self._demo_armed or s is None or data is None:
            return
        self._demo_armed = False
        if not s.heads and demo_heads(data.heads) and self.setup_demo_task():
            # the window as launched, not the user's work: closing it, or restoring crashed work into it,
            # asks nothing (undoing the step back to the network as loaded does)
            self._stack.setClean()

    def setup_demo_task(self) -> bool:
        """The demo task: a classification, a segmentation and a box head from the data's suggestions on
        the trunk (output layer deleted, only the heads train), one undoable step."""
        from engine.surgery.operations import AddHead, DeleteOutputLayer, freeze_preset

        s, data = self._workspace.session, self._workspace.data
        heads = demo_heads(data.heads if data is not None else [])
        if s is None or not heads:
            self._messages.show_message("The demo task needs a model and data with masks or boxes.", "warning")
            return False
        if self._jobs.must_wait("surgery", "Setting up the demo task"):
            return False
        taken = {h.name for h in s.heads}
        ops = ([DeleteOutputLayer()] if s.output_layer else []) + [AddHead(h) for h in heads if h.name not in taken]
        self._stack.beginMacro("Set up the demo task")
        try:
            ok = all(self.apply_op(op) for op in ops + [freeze_preset("heads-only")])
        finally:
            self._stack.endMacro()
        if ok:
            kinds = ", ".join(f"{h.name} ({KIND_SHORT.get(h.kind, h.kind)})" for h in heads)
            self._messages.show_message(f"Demo task: {kinds} on the frozen trunk — press Train (F5) to train "
                                        "them together.")
            self._show_tab("heads")
        return ok

    # -- heads ----------------------------------------------------------------------------------
    def can_read(self, layer: str | None) -> bool:
        """Whether a head can read ``layer`` (its output pools to a vector and the trunk gets there)."""
        s = self._workspace.session
        return bool(s is not None and layer and layer in s.head_layers())

    def add_head_here(self, path: str | None = None) -> bool:
        """"Add head here": a head that reads the selected layer's output (a multi-exit network)."""
        layer = path or self.selected_layer()
        if not layer:
            self._messages.show_message("Select the layer the head should read.", "warning")
            return False
        if not self.can_read(layer):
            s = self._workspace.session
            shape = s.tree.shapes.get(layer) if s is not None else None
            self._messages.show_message(f"A head cannot read {layer}: its output "
                                        f"({'×'.join(map(str, shape)) if shape else 'none'}) is no feature map, "
                                        "token sequence or vector the trunk reaches.", "warning")
            return False
        return self.add_head(layer=layer)

    def add_head(self, layer: str | None = None) -> bool:
        """Ask for a new head (reading ``layer``, or the end when None) and add it."""
        from engine.surgery.operations import AddHead
        from widgets.head_dialog import HeadDialog

        s = self._workspace.session
        if s is None:
            self._messages.show_message("Open a model first.", "warning")
            return False
        if self._jobs.must_wait("surgery", "Adding a head"):
            return False
        delete_first = False
        if s.output_layer and layer is None and not any(h.layer is None and not h.dense for h in s.heads):  # first at the end
            answer = QMessageBox.question(
                self._window, "Delete the output layer?",
                f"The network still ends in its output layer ({s.output_layer}), which predicts the classes it "
                "was trained on. New heads usually replace it and read the features before it.\n\n"
                "Delete the output layer first?",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No | QMessageBox.StandardButton.Cancel,
                QMessageBox.StandardButton.Yes)
            if answer == QMessageBox.StandardButton.Cancel:
                return False
            delete_first = answer == QMessageBox.StandardButton.Yes
        existing = [h.name for h in s.heads]
        data = self._workspace.data
        suggestions = [h for h in (data.heads if data is not None else []) if h.name not in existing]
        maps, defaults = _dense_choices(s)
        spec = self._ask_spec(HeadDialog.for_new(existing, suggestions, self._window, layers=s.head_layers(),
                                                 layer=layer, dense_layers=maps, default_dense_layers=defaults),
                              "Add head")
        if spec is None:
            return False
        if delete_first and s.output_layer and spec.layer is None and not spec.dense:
            if not self.delete_output_layer():
                return False
        ok = self.apply_op(AddHead(spec))
        if ok:
            self._show_tab("heads")
        return ok

    def edit_head(self, name: str | None) -> bool:
        from engine.surgery.operations import UpdateHead
        from widgets.head_dialog import HeadDialog

        s = self._workspace.session
        if s is None or not name:
            return False
        spec = next((h for h in s.heads if h.name == name), None)
        if spec is None or self._jobs.must_wait("surgery", "Editing a head"):
            return False
        maps, defaults = _dense_choices(s)
        new = self._ask_spec(HeadDialog.for_edit(spec, self._window, existing_names=[h.name for h in s.heads],
                                                 layers=s.head_layers(), dense_layers=maps,
                                                 default_dense_layers=defaults), "Edit head")
        if new is None:
            return False

        def edited(h) -> dict:  # the dialog does not show the statistics training sets on a regression head
            return {k: v for k, v in h.to_dict().items() if k not in ("target_mean", "target_std")}

        if edited(new) == edited(spec):
            return False
        return self.apply_op(UpdateHead(name, new))

    def _ask_spec(self, dialog, title: str):
        """The head the dialog describes once accepted; None when cancelled or invalid (said so)."""
        if dialog.exec() != dialogs.QDialog.DialogCode.Accepted:
            return None
        try:
            return dialog.spec()
        except GraftError as exc:
            self._messages.show_error(str(exc), title=title)
            return None

    def remove_head(self, name: str | None) -> bool:
        from engine.surgery.operations import RemoveHead

        if self._workspace.session is None or not name:
            self._messages.show_message("Select the head to remove.", "warning")
            return False
        return self.apply_op(RemoveHead(name))

    # -- learning-rate factors ------------------------------------------------------------------
    def set_factor_action(self, action: QAction) -> None:
        """The "Learning-rate factor…" action (the tree's context menu, the Surgery menu): enabled on a
        layer, head or the heads' group with weights; it asks for the selected one's factor."""
        self._factor_action = action
        action.triggered.connect(lambda: self.set_lr_factor())
        for event in ("session", "session_changed"):
            self._workspace.connect(event, self._refresh)
        self._refresh()

    def _factor_path(self, path: str | None = None) -> str | None:
        """``path`` (or the selected one) when a factor can be set on it: a node with weights."""
        s = self._workspace.session
        path = path or self._selected_path()
        node = s.tree.node(path) if s is not None and path else None
        return path if node is not None and node.params > 0 else None

    def set_lr_factor(self, path: str | None = None, factor: float | None | bool = False) -> bool:
        """Set the learning-rate factor of ``path`` (default: the selected layer), asking for it unless
        ``factor`` is given (None: remove the layer's own factor); undoable (SetLrFactor)."""
        from engine.network.lr_factors import effective_factor, factor_source
        from engine.surgery.operations import SetLrFactor

        s = self._workspace.session
        layer = self._factor_path(path)
        if s is None or layer is None:
            self._messages.show_message("Select a layer or head with weights to set its learning-rate factor.",
                                        "warning")
            return False
        if self._jobs.must_wait("surgery", "Setting a learning-rate factor"):
            return False
        if factor is False:
            from widgets.lr_factor_dialog import LrFactorDialog

            factors = dict(s.model.lr_factors or {})
            dialog = LrFactorDialog(layer, effective_factor(factors, layer), layer in factors,
                                    factor_source(factors, layer), heads=layer.startswith(HEADS_KEY),
                                    parent=self._window)
            if dialog.exec() != dialogs.QDialog.DialogCode.Accepted:
                return False
            factor = dialog.factor()
            if factor is None and layer not in factors:
                return False
        return self._apply_new(lambda: SetLrFactor({layer: factor}), "Learning-rate factor")

    def apply_discriminative(self, low: float = 0.1) -> bool:
        """The Discriminative rates preset: factors from ``low`` on the bottom block to ×1 on the top one."""
        from engine.training.schedule import discriminative_rates

        s = self._workspace.session
        if s is None:
            self._messages.show_message("Open a model first.", "warning")
            return False
        ok = self._apply_new(lambda: discriminative_rates(s, low), "Discriminative rates")
        if ok and not s.model.trunk_trainable():
            self._messages.show_message(
                "Discriminative rates set. The network is frozen now, so they act once its layers train "
                "(unfreeze them, or unfreeze a block every few epochs on the Train tab).", "warning")
        return ok

    # -- the input ------------------------------------------------------------------------------
    def input_channels(self, channels: int | None = None) -> bool:
        """Surgery ▸ Input channels…: ask (unless given) and adapt the first convolution."""
        from engine.surgery.operations import SetInputChannels, first_conv
        from widgets.input_dialogs import InputChannelsDialog

        s = self._workspace.session
        if s is None or self._jobs.must_wait("surgery", "Changing the input"):
            return False
        if channels is None:
            try:
                layer, _ = first_conv(s)
            except GraftError as exc:
                self._messages.show_error(str(exc), title="Input channels")
                return False
            dialog = InputChannelsDialog(s.input_spec.channels, layer, self._window)
            if dialog.exec() != dialogs.QDialog.DialogCode.Accepted:
                return False
            channels = dialog.channels()
        return self._apply_new(lambda: SetInputChannels(channels), "Input channels")

    def input_size(self, size: int | None = None, resize: int | None = None) -> bool:
        """Surgery ▸ Input size…: ask (unless given) and change the crop (and resize) of the input."""
        from engine.surgery.operations import SetInputSize
        from widgets.input_dialogs import InputSizeDialog

        s = self._workspace.session
        if s is None or self._jobs.must_wait("surgery", "Changing the input"):
            return False
        if size is None:
            dialog = InputSizeDialog(s.input_spec.size, s.input_spec.resize, self._window)
            if dialog.exec() != dialogs.QDialog.DialogCode.Accepted:
                return False
            size, resize = dialog.input_size(), dialog.resize_to()
        return self._apply_new(lambda: SetInputSize(size, resize), "Input size")

    def _apply_new(self, make: Callable[[], Any], title: str) -> bool:
        """Build an operation (its own checks may refuse it) and apply it."""
        try:
            op = make()
        except GraftError as exc:
            self._messages.show_error(str(exc), title=title)
            return False
        return self.apply_op(op)
