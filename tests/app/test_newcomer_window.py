"""What a newcomer reads at the window's default size: each test fails without its fix (issue 23's list)."""
from __future__ import annotations

import copy

import pytest
from PySide6.QtWidgets import QApplication

from app.main_window import MainWindow
from engine.network.heads import HeadSpec
from engine.surgery.operations import AddHead, DeleteOutputLayer
from engine.surgery.session import Session
from widgets.layer_tree_model import TYPE

DEFAULT_SIZE = (1480, 940)  # what _restore_window gives a first start


@pytest.fixture(scope="module")
def lite0():
    from engine.network.loading import load_network

    return load_network("default")


def fresh_window(qtbot, network) -> MainWindow:
    w = MainWindow()
    qtbot.addWidget(w)
    w.resize(*DEFAULT_SIZE)
    w.show()
    qtbot.waitExposed(w)
    net = copy.copy(network)
    net.module = copy.deepcopy(network.module)
    w.workspace.set_session(Session(net), project_path=None)
    QApplication.processEvents()
    return w


def close(w: MainWindow) -> None:
    w.undo_stack.setClean()
    w.workspace.weights_changed = False
    w.close()


def test_the_next_step_hint_fits_the_status_bar_at_the_default_size(qtbot, window, tiny_folder, lite0):
    """The hint said "Ready: <model> and 360 images. Next: … then add he…": the model's name, already
    beside it in the status bar, pushed the one line a newcomer needs out of sight."""
    window.resize(*DEFAULT_SIZE)
    net = copy.copy(lite0)
    net.module = copy.deepcopy(lite0.module)
    window.workspace.set_session(Session(net), project_path=None)
    with qtbot.waitSignal(window.dataLoaded, timeout=60_000):
        window.datasets.load_data(str(tiny_folder))
    window.messages.suggest_next()
    QApplication.processEvents()
    label = window.message_label
    text = label.text()
    assert "Next: delete the output layer" in text and "then add heads" in text
    room = label.contentsRect().width() - 16  # ElidedLabel's margins
    assert label.fontMetrics().horizontalAdvance(text) <= room, (text, room)
    assert not label.toolTip()  # nothing elided, so no tooltip needed
    model = window.model_label
    assert model.width() <= 250 and "efficientnet_lite0" in model.toolTip() + model.text()
    window.undo_stack.setClean()


def test_an_elided_status_line_offers_its_full_text_as_a_tooltip(qtbot):
    from app.messages import ElidedLabel

    label = ElidedLabel("", max_width=120)
    qtbot.addWidget(label)
    label.resize(120, 20)
    label.setText("a line far longer than one hundred and twenty pixels can show in this font")
    assert label.toolTip() == label.text()
    label.setText("short")
    assert label.toolTip() == ""
    assert label.sizeHint().width() <= 120


def test_the_type_column_shows_adaptive_avg_pool_whole(qtbot, lite0):
    w = fresh_window(qtbot, lite0)
    header = w.tree_view.tree_view.header()
    fm = w.tree_view.tree_view.fontMetrics()
    assert header.sectionSize(TYPE) >= fm.horizontalAdvance("AdaptiveAvgPool2d") + 12
    close(w)


def test_the_heads_tab_gives_the_history_the_room_the_heads_do_not_need(qtbot, lite0):
    """A fixed 3:1 split left a tall empty grey band between the diagram and the surgery history."""
    w = fresh_window(qtbot, lite0)
    w.tabs.setCurrentIndex(0)
    QApplication.processEvents()
    panel = w.heads_panel
    history = w.history_view
    def band() -> int:
        top = history.mapTo(w, history.rect().topLeft()).y()
        return top - panel.diagram.mapTo(w, panel.diagram.rect().bottomLeft()).y()

    assert 0 < band() < 80, band()
    before = panel.height()
    s = w.session
    s.do(DeleteOutputLayer())
    for i in range(3):
        s.do(AddHead(HeadSpec(name=f"head{i}", kind="single", labels=["a", "b", "c"]), seed=0))
    QApplication.processEvents()
    assert panel.height() > before  # the table of heads grows into the history's room, not over it
    assert panel.table.isVisible() and panel.diagram.height() >= panel.diagram.sizeHint().height()
    assert 0 < band() < 80, band()
    close(w)


def test_before_the_classifier_is_deleted_the_window_says_its_outputs_not_features(qtbot, lite0):
    """"features: 1000" and "trunk · 1000 features" read as the trunk's width (1280)."""
    w = fresh_window(qtbot, lite0)
    s = w.session
    assert s.output_layer and s.tree.feature_dim == 1000
    assert w.features_label.text() == "classifier outputs: 1000"
    assert s.output_layer in w.features_label.toolTip()
    assert w.heads_panel.diagram.trunk_text() == "1000 classifier outputs"
    s.do(DeleteOutputLayer())
    QApplication.processEvents()
    assert w.features_label.text() == "features: 1280"
    assert w.heads_panel.diagram.trunk_text() == "trunk · 1280 features"
    close(w)
