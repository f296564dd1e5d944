"""HeadsPanel: adapts a session's heads and asks for add / edit / remove."""
from __future__ import annotations

import pytest
import torch
from PySide6.QtCore import Qt

from engine.network.heads import HeadSpec
from engine.network.loading import load_network
from engine.surgery.operations import AddHead, RemoveHead, UpdateHead
from engine.surgery.session import Session
from widgets.heads_panel import HeadsPanel


@pytest.fixture(scope="module")
def session() -> Session:
    torch.manual_seed(0)
    return Session(load_network("mobilenet_v3_small", random_init=True))


@pytest.fixture
def panel(qtbot, session) -> HeadsPanel:
    panel = HeadsPanel()
    qtbot.addWidget(panel)
    panel.set_session(session)
    panel.show()
    yield panel
    panel.set_session(None)
    while session.history.can_undo:
        session.history.undo()


def rows(panel: HeadsPanel) -> list[list[str]]:
    t = panel.table
    return [[t.item(r, c).text() for c in range(t.columnCount())] for r in range(t.rowCount())]


def test_follows_the_sessions_heads(panel, session):
    assert rows(panel) == [] and not panel.table.isVisibleTo(panel) and panel.empty.isVisibleTo(panel)
    session.do(AddHead(HeadSpec("shape", "single", labels=["circle", "square", "star"])))
    session.do(AddHead(HeadSpec("tags", "multi", labels=["red", "striped"], hidden=[256, 64], dropout=0.2,
                                loss_weight=0.5)))
    assert rows(panel) == [["shape", "single-label", "3 classes: circle, square, star", "–", "0", "1", "end"],
                           ["tags", "multi-label", "2 labels: red, striped", "256, 64", "0.2", "0.5", "end"]]
    assert [h.name for h in panel.diagram.heads()] == ["shape", "tags"]
    panel.select_head("tags")
    session.do(UpdateHead("shape", HeadSpec("shape", "single", labels=["a", "b"])))
    assert panel.current_head() == "tags"  # the selection survives a refresh
    assert rows(panel)[0][2] == "2 classes: a, b"
    session.do(RemoveHead("tags"))
    assert [r[0] for r in rows(panel)] == ["shape"]
    assert panel.current_head() is None and not panel.remove_button.isEnabled()


def test_buttons_and_double_click_ask(qtbot, panel, session):
    session.do(AddHead(HeadSpec("shape", "single", labels=["a", "b"])))
    with qtbot.waitSignal(panel.addRequested, timeout=1000):
        qtbot.mouseClick(panel.add_button, Qt.MouseButton.LeftButton)
    assert not panel.edit_button.isEnabled()
    panel.select_head("shape")
    assert panel.edit_button.isEnabled() and panel.remove_button.isEnabled()
    with qtbot.waitSignal(panel.editRequested, timeout=1000) as edit:
        qtbot.mouseClick(panel.edit_button, Qt.MouseButton.LeftButton)
    assert edit.args == ["shape"]
    with qtbot.waitSignal(panel.removeRequested, timeout=1000) as remove:
        qtbot.mouseClick(panel.remove_button, Qt.MouseButton.LeftButton)
    assert remove.args == ["shape"]
    with qtbot.waitSignal(panel.editRequested, timeout=1000) as double:
        panel.table.cellDoubleClicked.emit(0, 2)
    assert double.args == ["shape"]


def test_set_session_disconnects_the_old_one(panel, session):
    panel.set_session(None)
    assert not panel.add_button.isEnabled()
    session.do(AddHead(HeadSpec("late", "single", labels=["a", "b"])))
    assert rows(panel) == []
    panel.set_session(session)
    assert [r[0] for r in rows(panel)] == ["late"]


def test_a_head_on_a_layer_says_which_layer_it_reads(panel, session):
    session.do(AddHead(HeadSpec("early", "single", outputs=2, layer="features.3")))
    assert rows(panel)[-1][-1] == "features.3"
    assert panel.diagram.exit_labels() == ["features.3 · 24"]
