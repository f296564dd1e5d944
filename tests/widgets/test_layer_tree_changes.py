"""The layer tree's Change column: a before/after comparison shown per layer, hidden without one."""
from __future__ import annotations

import pytest
import torch
from PySide6.QtCore import Qt

from engine.network.heads import HeadSpec
from engine.network.loading import load_network
from engine.project.diff import compare, side_of_network, side_of_session
from engine.surgery.operations import AddHead, DeleteOutputLayer
from engine.surgery.session import Session
from widgets.layer_tree_model import CHANGE, LayerTreeModel
from widgets.layer_tree_view import LayerTreeView

pytestmark = pytest.mark.qt_log_level_fail("WARNING")


@pytest.fixture
def compared():
    """A resnet18 session whose output layer was replaced by a head and whose layer4.1.conv2 moved 2%,
    with its comparison against a copy taken before."""
    import copy

    torch.manual_seed(0)
    network = load_network("resnet18", random_init=True)
    before = side_of_network(copy.deepcopy(network.module), "before")
    s = Session(network)
    s.do(DeleteOutputLayer())
    s.do(AddHead(HeadSpec("kind", "single", labels=["a", "b"]), seed=0))
    with torch.no_grad():
        s.model.trunk.body.layer4[1].conv2.weight.mul_(1.02)
    return s, compare(before, side_of_session(s, "after"))


def cell(model: LayerTreeModel, path: str, role=Qt.ItemDataRole.DisplayRole):
    return model.index_for_path(path, CHANGE).data(role)


@pytest.mark.slow
def test_the_change_column_shows_a_comparison(qtmodeltester, compared):
    s, diff = compared
    model = LayerTreeModel(s.tree)
    qtmodeltester.check(model)
    assert model.headerData(CHANGE, Qt.Orientation.Horizontal) == "Change"
    assert cell(model, "layer4.1.conv2") == "" and cell(model, "layer4.1.conv2", LayerTreeModel.ChangeRole) is None
    announced = []
    model.dataChanged.connect(lambda a, b, roles: announced.append(a.column()))
    model.set_changes(diff.changes())
    assert announced and set(announced) == {CHANGE}
    assert cell(model, "layer4.1.conv2") == "moved 2.0%"
    assert cell(model, "layer4.1.conv2", LayerTreeModel.ChangeRole) == "moved"
    assert cell(model, "layer4").startswith("moved ") and diff.changes()["layer4"].relative < 0.02
    assert cell(model, "layer1.0.conv1") == "" and cell(model, "layer1.0.conv1", LayerTreeModel.ChangeRole) == "same"
    assert cell(model, "@heads.kind") == "added"
    assert "moved" in cell(model, "layer4.1.conv2", Qt.ItemDataRole.ToolTipRole)
    assert cell(model, "layer4.1.conv2", Qt.ItemDataRole.ForegroundRole) is not None
    qtmodeltester.check(model)
    model.set_changes(None)
    assert not model.has_changes() and cell(model, "layer4.1.conv2") == ""


def test_the_view_shows_the_column_only_with_a_comparison(qtbot, compared):
    s, diff = compared
    view = LayerTreeView(LayerTreeModel(s.tree))
    qtbot.addWidget(view)
    assert view.tree_view.isColumnHidden(CHANGE)
    view.model.set_changes(diff.changes())
    assert not view.tree_view.isColumnHidden(CHANGE)
    view.model.set_changes({})
    assert view.tree_view.isColumnHidden(CHANGE)


@pytest.mark.qt_log_ignore("propagateSizeHints")  # the offscreen platform's note on showing a window
def test_the_change_column_never_squeezes_the_layer_names_away(qtbot, compared):
    """In the window's first split the Change column left the Layer column 40 px: no names at all."""
    from widgets.layer_tree_model import LAYER

    s, diff = compared
    view = LayerTreeView(LayerTreeModel(s.tree))
    qtbot.addWidget(view)
    view.resize(view.sizeHint().width(), 400)  # every column fits, but not the Change column too
    view.show()
    header = view.tree_view.header()
    wide = header.sectionSize(LAYER)
    view.model.set_changes(diff.changes())
    assert header.sectionSize(LAYER) >= view.tree_view.fontMetrics().horizontalAdvance("layer4.1.conv1") + 60
    qtbot.waitUntil(lambda: view.tree_view.horizontalScrollBar().maximum() > 0, timeout=2000)  # they scroll instead
    view.model.set_changes(None)
    assert header.sectionSize(LAYER) == wide
