"""LayerTreeModel: a faithful, incremental Qt adapter of the engine's layer tree."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from PySide6.QtCore import QModelIndex, Qt

from engine.network.heads import HeadSpec
from engine.network.layer_tree import HEADS_KEY
from engine.network.loading import load_network
from engine.surgery.operations import AddHead, CutAt, DeleteOutputLayer, RemoveHead, SetTrainable
from engine.surgery.session import Session
from engine.units import human_count as human
from widgets.layer_tree_model import LayerTreeModel, shape_text

# The C++ QAbstractItemModelTester reports problems as Qt warnings: make them fail the test.
pytestmark = pytest.mark.qt_log_level_fail("WARNING")

CHECK = {"trainable": Qt.CheckState.Checked, "frozen": Qt.CheckState.Unchecked,
         "partial": Qt.CheckState.PartiallyChecked, "none": None}


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return load_network("resnet18", random_init=True)


@pytest.fixture
def session(network) -> Session:
    """A fresh resnet18 session (on a copy of one network: quicker than building it again)."""
    return Session(replace(network, module=copy.deepcopy(network.module)))


def check_state(model: LayerTreeModel, index: QModelIndex):
    value = model.data(index, Qt.ItemDataRole.CheckStateRole)
    return None if value is None else Qt.CheckState(value)


def assert_mirrors(model: LayerTreeModel, node, parent: QModelIndex = QModelIndex()) -> int:
    """The Qt rows under ``parent`` equal the engine node's children (names, paths, check states)."""
    assert model.rowCount(parent) == len(node.children)
    seen = 0
    for row, child in enumerate(node.children):
        index = model.index(row, 0, parent)
        assert index.data() == child.name
        assert index.data(LayerTreeModel.PathRole) == child.path
        assert index.data(LayerTreeModel.NodeRole) is child
        assert model.parent(index) == parent
        assert check_state(model, index) == CHECK[child.frozen_state]
        assert bool(model.flags(index) & Qt.ItemFlag.ItemIsUserCheckable) == (child.params > 0)
        seen += 1 + assert_mirrors(model, child, index)
    return seen


def test_columns_and_roles(qtmodeltester, session):
    model = LayerTreeModel(session.tree)
    qtmodeltester.check(model)
    assert [model.headerData(c, Qt.Orientation.Horizontal) for c in range(5)] == \
        ["Layer", "Type", "Output shape", "Parameters", "Trainable"]
    layer1 = model.index_for_path("layer1")
    row = [layer1.siblingAtColumn(c).data() for c in range(5)]
    assert row == ["layer1", "Sequential", "64×56×56", "148K", "148K / 148K"]
    assert layer1.data(LayerTreeModel.ShapeRole) == (64, 56, 56)
    assert layer1.data(LayerTreeModel.ParamsRole) == (147968, 147968)
    assert layer1.data(LayerTreeModel.KindRole) == "layer"
    assert "layer1" in layer1.data(Qt.ItemDataRole.ToolTipRole)
    deep = model.index_for_path("layer3.1.conv2")
    assert deep.isValid() and deep.data() == "conv2"
    assert "layer3.1.conv2" in deep.data(Qt.ItemDataRole.ToolTipRole)
    fc = model.index_for_path("fc")
    assert fc.data(LayerTreeModel.IsOutputRole) is True
    assert fc.data(LayerTreeModel.BadgeRole) == "output"
    assert fc.data(Qt.ItemDataRole.FontRole).bold()
    relu = model.index_for_path("relu")
    assert relu.data(Qt.ItemDataRole.CheckStateRole) is None  # no weights: no check box
    assert not model.flags(relu) & Qt.ItemFlag.ItemIsUserCheckable
    assert model.index_for_path("nope").isValid() is False
    assert human(11_689_512) == "11.7M" and human(950) == "950" and human(9408) == "9.4K"
    assert shape_text((512, 7, 7)) == "512×7×7" and shape_text(None) == ""


@pytest.mark.slow
def test_stays_in_step_with_every_edit_and_undo(qtmodeltester, session):
    model = LayerTreeModel(session.tree)
    resets = []
    model.modelReset.connect(lambda: resets.append(1))
    inserted, removed = [], []
    model.rowsInserted.connect(lambda parent, a, b: inserted.append((parent.data(LayerTreeModel.PathRole), a, b)))
    model.rowsRemoved.connect(lambda parent, a, b: removed.append((parent.data(LayerTreeModel.PathRole), a, b)))
    qtmodeltester.check(model)
    total = assert_mirrors(model, session.tree.root)
    assert total == len(session.tree)

    ops = [DeleteOutputLayer(), AddHead(HeadSpec("shape", "single", labels=["circle", "square", "star"])),
           AddHead(HeadSpec("tags", "multi", labels=["red", "striped"], hidden=[64])),
           SetTrainable("up_to", ["layer3"]), CutAt("layer4.0"), RemoveHead("shape"),
           SetTrainable("layers", [f"{HEADS_KEY}.tags"], trainable=False)]
    for op in ops:
        session.do(op)
        qtmodeltester.check(model)
        assert assert_mirrors(model, session.tree.root) == len(session.tree)
    assert (None, 9, 9) in removed  # fc (a top-level row) went away as a row removal, not a reset
    assert (HEADS_KEY, 0, 0) in inserted and (HEADS_KEY, 1, 1) in inserted
    while session.history.can_undo:
        session.history.undo()
        qtmodeltester.check(model)
        assert assert_mirrors(model, session.tree.root) == len(session.tree)
    assert model.index_for_path("fc").isValid()
    assert not resets, "edits must map to row inserts/removes and dataChanged, never a reset"


def test_toggle_goes_through_handler_and_updates_check_state_only(qtmodeltester, qtbot, session):
    model = LayerTreeModel(session.tree)
    qtmodeltester.check(model)
    calls = []
    model.set_toggle_handler(lambda path, trainable: calls.append((path, trainable)))
    conv = model.index_for_path("layer2.0.conv1")
    assert model.setData(conv, Qt.CheckState.Unchecked, Qt.ItemDataRole.CheckStateRole)
    assert calls == [("layer2.0.conv1", False)]
    # the handler did nothing, so nothing changed
    assert check_state(model, conv) == Qt.CheckState.Checked

    model.apply_directly(session)
    changes: list[tuple[str, int, list[int]]] = []
    model.dataChanged.connect(lambda a, b, roles: changes.append((a.data(LayerTreeModel.PathRole), a.column(),
                                                                  [int(r) for r in roles])))
    with qtbot.waitSignal(model.dataChanged, timeout=1000):
        assert model.setData(conv, Qt.CheckState.Unchecked.value, Qt.ItemDataRole.CheckStateRole)
    assert check_state(model, conv) == Qt.CheckState.Unchecked
    for path in ("layer2", "layer2.0"):
        assert check_state(model, model.index_for_path(path)) == Qt.CheckState.PartiallyChecked
    assert check_state(model, model.index_for_path("layer1")) == Qt.CheckState.Checked
    check_role = int(Qt.ItemDataRole.CheckStateRole)
    changed_paths = {p for p, column, roles in changes if column == 0}
    assert changed_paths == {"layer2", "layer2.0", "layer2.0.conv1"}
    for path, column, roles in changes:
        assert column in (0, 4)  # the check box and the Trainable column, nothing else
        if column == 0:
            assert roles == [check_role]
    assert model.index_for_path("layer2").siblingAtColumn(4).data() == "452K / 526K"
    assert_mirrors(model, session.tree.root)

    # ticking the partial parent trains the whole subtree again; undo restores the partial state
    model.setData(model.index_for_path("layer2"), Qt.CheckState.Checked, Qt.ItemDataRole.CheckStateRole)
    assert check_state(model, model.index_for_path("layer2")) == Qt.CheckState.Checked
    session.history.undo()
    assert check_state(model, model.index_for_path("layer2")) == Qt.CheckState.PartiallyChecked
    assert not model.setData(model.index_for_path("relu"), Qt.CheckState.Unchecked, Qt.ItemDataRole.CheckStateRole)


def test_set_tree_resets_and_disconnects_the_old_tree(qtmodeltester, session):
    model = LayerTreeModel(session.tree)
    other = Session(load_network("mobilenet_v3_small", random_init=True))
    with_resets = []
    model.modelReset.connect(lambda: with_resets.append(1))
    model.set_tree(other.tree)
    qtmodeltester.check(model)
    assert with_resets == [1]
    assert assert_mirrors(model, other.tree.root) == len(other.tree)
    session.do(DeleteOutputLayer())  # the old tree's events no longer reach the model
    assert assert_mirrors(model, other.tree.root) == len(other.tree)
    model.set_tree(None)
    assert model.rowCount() == 0


@pytest.mark.slow
def test_heads_on_a_layer_grey_out_the_layers_after_it(qtmodeltester, qtbot, session):
    model = LayerTreeModel(session.tree)
    qtmodeltester.check(model)
    session.do(DeleteOutputLayer())
    layer3 = model.index_for_path("layer3")
    with qtbot.waitSignal(model.dataChanged, check_params_cb=lambda first, last, roles:
                          first.internalPointer().path == "layer3" and LayerTreeModel.UnusedRole in roles):
        session.do(AddHead(HeadSpec("early", "single", outputs=2, layer="layer2")))
    qtmodeltester.check(model)
    layer2 = model.index_for_path("layer2")
    assert layer3.data(LayerTreeModel.UnusedRole) and not layer2.data(LayerTreeModel.UnusedRole)
    assert layer3.siblingAtColumn(3).data(Qt.ItemDataRole.ForegroundRole) is not None
    assert "Not computed" in layer3.data(Qt.ItemDataRole.ToolTipRole)
    assert layer2.data(LayerTreeModel.BadgeRole) == "→ early"
    assert layer2.data(LayerTreeModel.BadgeColourRole) == "#4C72B0"  # the head's colour
    head = model.index_for_path(f"{HEADS_KEY}.early")
    assert head.siblingAtColumn(1).data() == "Head (single) ← layer2"
    assert "Reads layer layer2" in head.data(Qt.ItemDataRole.ToolTipRole)
    session.do(AddHead(HeadSpec("end", "single", outputs=2)))  # the end needs every layer again
    assert not layer3.data(LayerTreeModel.UnusedRole) and layer3.data(Qt.ItemDataRole.ForegroundRole) is None
    session.history.undo()
    session.history.undo()
    assert layer2.data(LayerTreeModel.BadgeRole) == "" and not layer3.data(LayerTreeModel.UnusedRole)
