"""LayerTreeView: filtering, selection by path, the context menu, and staying quick on big networks."""
from __future__ import annotations

import time

import pytest
import torch
from PySide6.QtCore import QModelIndex, Qt
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QStyle, QStyleOptionViewItem
from torch import nn

from engine.network.heads import HeadSpec
from engine.network.loading import LoadedNetwork, ModelSource, load_network
from engine.surgery.operations import AddHead, RemoveHead
from engine.network.preprocess import InputSpec
from engine.surgery.session import Session
from widgets.layer_tree_model import LayerTreeModel
from widgets.layer_tree_view import LayerTreeView


@pytest.fixture(scope="module")
def session() -> Session:
    """One resnet18 session for the module; a test that edits it undoes its edits."""
    torch.manual_seed(0)
    return Session(load_network("resnet18", random_init=True))


@pytest.fixture
def view(qtbot, session) -> LayerTreeView:
    view = LayerTreeView(LayerTreeModel(session.tree))
    qtbot.addWidget(view)
    view.resize(700, 500)
    view.show()
    yield view
    view.model.set_tree(None)  # stop listening to the shared session's tree


def visible_paths(view: LayerTreeView, parent: QModelIndex = QModelIndex()) -> list[str]:
    """Paths of the rows the user can see (the proxy's rows under expanded parents)."""
    out = []
    for row in range(view.proxy.rowCount(parent)):
        index = view.proxy.index(row, 0, parent)
        out.append(index.data(LayerTreeModel.PathRole))
        if view.tree_view.isExpanded(index):
            out += visible_paths(view, index)
    return out


def test_filter_finds_a_deep_layer_and_expands_to_it(view):
    view.set_filter("downsample")
    shown = visible_paths(view)
    assert "layer2.0.downsample" in shown and "layer4.0.downsample" in shown
    assert "layer1" not in shown and "fc" not in shown  # no downsample inside
    assert "layer2" in shown and "layer2.0" in shown  # ancestors stay, expanded
    view.set_filter("layer3.1.conv2")  # a dotted path
    assert visible_paths(view) == ["layer3", "layer3.1", "layer3.1.conv2"]
    view.set_filter("batchnorm")  # by type, any case
    assert "layer1.0.bn1" in visible_paths(view)
    view.set_filter("no such layer")
    assert view.proxy.rowCount() == 0 and view.no_match.isVisible()
    view.set_filter("")
    assert view.proxy.rowCount() == view.model.rowCount() and not view.no_match.isVisible()


def test_typing_filters_after_a_pause(qtbot, view):
    view.filter_edit.setText("conv2")
    qtbot.waitUntil(lambda: view.proxy.filter_text() == "conv2", timeout=2000)
    assert "layer1.0.conv2" in visible_paths(view)


def test_select_path_and_current_path_changed(qtbot, view, session):
    assert view.current_path() is None
    with qtbot.waitSignal(view.currentPathChanged, timeout=1000) as blocker:
        assert view.select_path("layer4.1.bn2")
    assert blocker.args == ["layer4.1.bn2"]
    assert view.current_path() == "layer4.1.bn2"
    assert "layer4.1.bn2" in visible_paths(view)  # parents expanded
    # a filter that hides the layer is cleared by select_path
    view.set_filter("fc")
    assert view.select_path("layer1.0.conv1")
    assert view.proxy.filter_text() == "" and view.current_path() == "layer1.0.conv1"
    assert not view.select_path("nope")


def test_current_path_follows_engine_edits(qtbot, view, session):
    session.do(AddHead(HeadSpec("shape", "single", labels=["a", "b", "c"])))
    assert "@heads.shape" in visible_paths(view)  # the heads group is kept open
    view.select_path("@heads.shape")
    with qtbot.waitSignal(view.currentPathChanged, timeout=1000):
        session.do(RemoveHead("shape"))
    assert view.current_path() != "@heads.shape"
    session.history.undo()
    session.history.undo()


def test_context_menu_shows_the_shared_actions(view):
    assert view.context_menu() is None
    cut, freeze = QAction("Cut here", view), QAction("Freeze up to here", view)
    view.set_context_actions([cut, None, freeze])
    menu = view.context_menu()
    actions = menu.actions()
    assert [a.text() for a in actions] == ["Cut here", "", "Freeze up to here"]
    assert actions[0] is cut and actions[1].isSeparator() and actions[2] is freeze


def test_ticking_in_the_view_reaches_the_handler(qtbot, view):
    calls = []
    view.model.set_toggle_handler(lambda path, trainable: calls.append((path, trainable)))
    view.select_path("conv1")
    index = view.tree_view.currentIndex()
    assert view.proxy.setData(index, Qt.CheckState.Unchecked, Qt.ItemDataRole.CheckStateRole)
    assert calls == [("conv1", False)]


def test_thousands_of_modules_stay_quick(qtbot):
    blocks = [nn.Sequential(*[nn.Conv2d(3, 3, 1) for _ in range(10)]) for _ in range(300)]
    network = LoadedNetwork(nn.Sequential(*blocks), InputSpec(size=8, resize=8), ModelSource("file", "big.pt"))
    session = Session(network)
    assert len(session.tree) > 3000
    view = LayerTreeView(LayerTreeModel(session.tree))
    qtbot.addWidget(view)
    view.resize(700, 500)
    view.show()
    start = time.perf_counter()
    view.set_filter("299.9")
    qtbot.waitUntil(lambda: "299.9" in visible_paths(view), timeout=5000)
    view.set_filter("")
    view.tree_view.expandAll()
    view.select_path("299.9")
    qtbot.wait(1)
    assert time.perf_counter() - start < 5.0


def test_clicking_the_check_box_asks_the_handler(qtbot, view):
    calls = []
    view.model.set_toggle_handler(lambda path, trainable: calls.append((path, trainable)))
    index = view.proxy.mapFromSource(view.model.index_for_path("layer1"))
    option = QStyleOptionViewItem()
    view.tree_view.itemDelegate().initStyleOption(option, index)
    option.rect = view.tree_view.visualRect(index)
    option.widget = view.tree_view
    box = view.tree_view.style().subElementRect(QStyle.SubElement.SE_ItemViewItemCheckIndicator, option,
                                                view.tree_view)
    qtbot.mouseClick(view.tree_view.viewport(), Qt.MouseButton.LeftButton, pos=box.center())
    assert calls == [("layer1", False)]  # it was ticked (trains): a click asks to freeze it
