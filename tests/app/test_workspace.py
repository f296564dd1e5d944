"""The window's workspace: what is open, and the plain events its concerns follow instead of each other."""
from __future__ import annotations

from app.workspace import Workspace


class FakeSession:
    """Just the event half of engine.surgery.session.Session."""

    def __init__(self) -> None:
        self.listeners: dict[str, list] = {"changed": []}

    def connect(self, event, callback) -> None:
        self.listeners[event].append(callback)

    def disconnect(self, event, callback) -> None:
        self.listeners[event].remove(callback)

    def change(self, op) -> None:
        for cb in list(self.listeners["changed"]):
            cb(op)


def record(ws: Workspace) -> list[tuple]:
    seen: list[tuple] = []
    for event in Workspace.EVENTS:
        ws.connect(event, lambda *args, event=event: seen.append((event, *args)))
    return seen


def test_only_the_open_session_s_changes_are_forwarded(resnet_session):
    ws = Workspace()
    seen = record(ws)
    first, second = FakeSession(), FakeSession()
    ws.set_session(first, project_path="/p/a.graft")
    ws.weights_changed = True
    ws.set_session(second)
    assert ws.project_path is None and not ws.weights_changed  # a new session: nothing unsaved
    first.change("old op")
    second.change("new op")
    assert seen == [("session", first), ("modified",), ("session", second), ("session_changed", "new op")]
    assert first.listeners["changed"] == []

    from engine.surgery.operations import DeleteOutputLayer

    ws.set_session(resnet_session)  # the real thing announces its operations the same way
    op = DeleteOutputLayer()
    resnet_session.apply(op)
    assert seen[-1] == ("session_changed", op) and second.listeners["changed"] == []


def test_saving_clears_the_trained_flag_only_when_nothing_changed_meanwhile():
    ws = Workspace()
    ws.set_session(FakeSession())
    ws.weights_changed = True
    ws.saved("/p/b.graft", clean=False)
    assert ws.project_path == "/p/b.graft" and ws.weights_changed
    ws.saved("/p/b.graft", clean=True)
    assert not ws.weights_changed


def test_closing_is_announced_on_a_change_and_closed_once():
    ws = Workspace()
    session = FakeSession()
    ws.set_session(session)
    seen = record(ws)
    ws.closing = True
    ws.closing = True
    ws.closing = False
    ws.close()
    ws.close()
    assert seen == [("closing", True), ("closing", False), ("closed",)]
    assert session.listeners["changed"] == []  # the window let go of the session
    ws.set_data("source", "/d/labels.csv")
    assert seen[-1] == ("data", "source") and ws.data_path == "/d/labels.csv"
