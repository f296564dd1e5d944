"""Surgery anywhere, through the window: "Add head here" on any layer of the tree (a multi-exit network),
Surgery ▸ Input channels… and Input size…, and Compare with… shown in the tree's Change column."""
from __future__ import annotations

import torch
from PySide6.QtWidgets import QFileDialog

from engine.network.heads import HeadSpec
from engine.network.layer_tree import HEADS_KEY
from engine.surgery.operations import AddHead, DeleteOutputLayer
from tests.app.test_main_window import LOAD_TIMEOUT, give_session
from widgets.layer_tree_model import CHANGE, LayerTreeModel


def accept(monkeypatch, cls, choose):
    """Make ``cls``'s dialog accept itself after ``choose(dialog)``; returns the dialogs shown."""
    seen = []

    def exec_(self):
        seen.append(self)
        choose(self)
        self.accept()
        return self.result()

    monkeypatch.setattr(cls, "exec", exec_)
    return seen


def context_action(window, path: str, name: str):
    assert window.tree_view.select_path(path)
    menu = window.tree_view.context_menu()
    return next(a for a in menu.actions() if a.objectName() == name)


def test_add_head_here_from_the_tree_makes_a_multi_exit_network(qtbot, window, monkeypatch, default_network):
    from widgets.head_dialog import HeadDialog

    s = give_session(window, default_network)
    window.surgery.apply_op(DeleteOutputLayer())
    dialogs = accept(monkeypatch, HeadDialog, lambda d: (d.name_edit.setText("early"),
                                                         d.labels_edit.setPlainText("a, b")))
    here = context_action(window, "features.4", "add_head_here")
    assert here.isEnabled()
    here.trigger()
    assert dialogs[-1].layer_combo.currentText() == "features.4"
    assert [(h.name, h.layer) for h in s.heads] == [("early", "features.4")]
    assert window.undo_stack.undoText() == "Add head 'early' at features.4"
    model = window.tree_model
    assert model.index_for_path("features.6").data(LayerTreeModel.UnusedRole)
    assert model.index_for_path("features.4").data(LayerTreeModel.BadgeRole) == "→ early"
    assert window.heads_panel.diagram.exit_labels() == ["features.4 · 80"]
    # and one at the end, from the Surgery menu: the later layers run again
    accept(monkeypatch, HeadDialog, lambda d: (d.name_edit.setText("late"), d.labels_edit.setPlainText("x, y")))
    window.actions.add_head.trigger()
    assert [(h.name, h.layer) for h in s.heads] == [("early", "features.4"), ("late", None)]
    assert not model.index_for_path("features.6").data(LayerTreeModel.UnusedRole)
    assert window.heads_panel.diagram.exit_labels() == ["features.4 · 80", "end · 1280"]
    s.model.eval()
    with torch.no_grad():
        out = s.model(torch.randn(2, 3, 224, 224))
    assert out["early"].shape == (2, 2) and out["late"].shape == (2, 2)
    window.actions.undo.trigger()
    window.actions.undo.trigger()
    assert not s.heads and not model.index_for_path("features.6").data(LayerTreeModel.UnusedRole)


def test_only_the_first_head_at_the_end_offers_to_delete_the_output_layer(qtbot, window, monkeypatch, boxes,
                                                                         default_network):
    from PySide6.QtWidgets import QMessageBox

    from widgets.head_dialog import HeadDialog

    s = give_session(window, default_network)
    names = iter(["early", "late", "later"])
    accept(monkeypatch, HeadDialog, lambda d: (d.name_edit.setText(next(names)), d.labels_edit.setPlainText("a, b")))
    assert window.surgery.add_head_here("features.4")  # reads an earlier layer: the output layer can stay
    assert not boxes.calls and s.output_layer is not None
    boxes.answers = [QMessageBox.StandardButton.Yes]
    window.actions.add_head.trigger()  # the first head at the end would read the old classifier's scores
    assert [title for _, title, _ in boxes.calls] == ["Delete the output layer?"] and s.output_layer is None
    window.actions.add_head.trigger()
    assert len(boxes.calls) == 1 and [h.name for h in s.heads] == ["early", "late", "later"]


def test_add_head_here_is_off_where_no_head_can_read(qtbot, window, boxes, default_network):
    s = give_session(window, default_network)
    assert not context_action(window, HEADS_KEY, "add_head_here").isEnabled()  # the heads group is no layer
    assert context_action(window, "features.2", "add_head_here").isEnabled()
    assert not window.surgery.add_head_here("features.99")
    assert "cannot read features.99" in window.message_label.text() and not s.heads


def test_input_channels_dialog_says_how_the_first_convolution_is_adapted(qtbot, window, monkeypatch,
                                                                      default_network):
    from widgets.input_dialogs import InputChannelsDialog

    s = give_session(window, default_network)
    rgb = next(m for m in s.model.trunk.body.modules() if isinstance(m, torch.nn.Conv2d)).weight.detach().clone()
    texts = {}

    def choose(d):
        for n in (4, 1):
            d.spin.setValue(n)
            texts[n] = d.explanation.text()

    accept(monkeypatch, InputChannelsDialog, choose)
    window.actions.input_channels.trigger()
    assert "sum of its pretrained RGB kernels" in texts[1] and "greyscale" in texts[1]
    assert "mean of the RGB kernels" in texts[4] and "4 bands" in texts[4]
    assert s.input_spec.channels == 1 and window.undo_stack.undoText() == "Input channels: 1 (greyscale)"
    first = next(m for m in s.model.trunk.body.modules() if isinstance(m, torch.nn.Conv2d))
    assert torch.allclose(first.weight, rgb.sum(dim=1, keepdim=True))
    assert s.tree.shapes and s.tree.shape_error is None
    window.actions.undo.trigger()
    first = next(m for m in s.model.trunk.body.modules() if isinstance(m, torch.nn.Conv2d))
    assert s.input_spec.channels == 3 and torch.equal(first.weight, rgb)


def test_input_size_dialog_changes_the_input_and_undo_puts_it_back(qtbot, window, monkeypatch, default_network):
    from widgets.input_dialogs import InputSizeDialog

    s = give_session(window, default_network)
    seen = accept(monkeypatch, InputSizeDialog, lambda d: d.size_spin.setValue(160))
    window.actions.input_size.trigger()
    assert "shorter side is 183 px" in seen[-1].explanation.text()  # 160 × 256 / 224, the ratio kept
    assert (s.input_spec.size, s.input_spec.resize) == (160, 183)
    assert window.tree_model.index_for_path("features.0").siblingAtColumn(2).data() == "32×80×80"
    accept(monkeypatch, InputSizeDialog, lambda d: d.size_spin.setValue(8))  # smaller than the network's strides
    window.actions.input_size.trigger()
    assert "too small for this network" in window.message_label.text() and s.input_spec.size == 160
    window.actions.undo.trigger()
    assert s.input_spec.size == 224 and window.tree_model.index_for_path("features.0").siblingAtColumn(2).data() \
        == "32×112×112"


def test_compare_with_the_network_as_loaded_shows_the_change_column(qtbot, window, default_network):
    s = give_session(window, default_network)
    window.surgery.apply_op(DeleteOutputLayer())
    window.surgery.apply_op(AddHead(HeadSpec("shape", labels=["a", "b"]), seed=0))
    with torch.no_grad():  # as training would: one layer's weights move by 5 %
        weight = s.model.trunk.body.get_submodule("features.6.0.project.conv").weight
        weight.mul_(1.05)
    view = window.tree_view.tree_view
    assert view.isColumnHidden(CHANGE) and not window.actions.clear_compare.isEnabled()
    with qtbot.waitSignal(window.compared, timeout=LOAD_TIMEOUT) as blocker:
        window.actions.compare_loaded.trigger()
    diff = blocker.args[0]
    model = window.tree_model
    assert model.has_changes() and not view.isColumnHidden(CHANGE)
    left, right = window.splitter.sizes()  # the tree's pane widened for the column, as far as the tabs allow
    assert left >= window.tree_view.sizeHint().width() or right <= window.tabs.minimumSizeHint().width()
    moved = model.index_for_path("features.6.0.project.conv")
    assert moved.siblingAtColumn(CHANGE).data() == "moved 5.0%" and moved.data(LayerTreeModel.ChangeRole) == "moved"
    assert model.index_for_path(f"{HEADS_KEY}.shape").siblingAtColumn(CHANGE).data() == "added"
    assert model.index_for_path("features.5.0.project.conv").siblingAtColumn(CHANGE).data() == ""
    assert {r.path for r in diff.changed()} == {"classifier.1", "features.6.0.project.conv", f"{HEADS_KEY}.shape"}
    assert "Compared with" in window.message_label.text() and window.actions.clear_compare.isEnabled()
    window.actions.clear_compare.trigger()
    assert not model.has_changes() and view.isColumnHidden(CHANGE) and not window.actions.clear_compare.isEnabled()


def test_compare_with_a_project_file_and_surgery_clears_a_stale_comparison(qtbot, window, monkeypatch, tmp_path,
                                                                          default_network):
    from engine.project.project_file import save_project

    s = give_session(window, default_network)
    window.surgery.apply_op(DeleteOutputLayer())
    project = save_project(s, tmp_path / "before.graft")
    window.surgery.apply_op(AddHead(HeadSpec("shape", labels=["a", "b"]), seed=0))
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (str(project), "")))
    with qtbot.waitSignal(window.compared, timeout=LOAD_TIMEOUT) as blocker:
        window.actions.compare_file.trigger()
    assert [r.path for r in blocker.args[0].changed()] == [f"{HEADS_KEY}.shape"]
    assert window.tree_model.index_for_path(f"{HEADS_KEY}.shape").siblingAtColumn(CHANGE).data() == "added"
    window.surgery.apply_op(AddHead(HeadSpec("size", kind="regression", outputs=1), seed=0))
    assert not window.tree_model.has_changes() and window.compare.diff is None
