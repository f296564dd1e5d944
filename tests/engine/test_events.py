"""engine.events: the plain events Session, LayerTree and the window's Workspace announce changes with."""
from __future__ import annotations

import pytest

from engine.events import Events


class Thing(Events):
    EVENTS = ("moved", "gone")


def test_callbacks_run_in_connection_order_and_disconnect():
    thing, seen = Thing(), []
    first, second = (lambda *a: seen.append(("first", a))), (lambda *a: seen.append(("second", a)))
    thing.connect("moved", first)
    thing.connect("moved", second)
    thing._emit("moved", 1, 2)
    thing.disconnect("moved", first)
    thing.disconnect("moved", first)  # twice: nothing to remove, no error
    thing._emit("moved", 3)
    thing._emit("gone")
    assert seen == [("first", (1, 2)), ("second", (1, 2)), ("second", (3,))]


def test_a_callback_connected_while_an_event_is_sent_gets_the_next_one():
    thing, seen = Thing(), []

    def late(*args):
        seen.append(("late", args))

    def connecting(*args):
        seen.append(("connecting", args))
        thing.connect("moved", late)

    thing.connect("moved", connecting)
    thing._emit("moved", 1)
    assert seen == [("connecting", (1,))]
    thing.disconnect("moved", connecting)
    thing._emit("moved", 2)
    assert seen[-1] == ("late", (2,))


def test_an_unknown_event_is_named_with_the_ones_there_are():
    with pytest.raises(ValueError, match="Thing has no event 'moving' \\(it has moved, gone\\)"):
        Thing().connect("moving", print)


def test_the_session_and_its_tree_announce_with_them():
    from engine.network.layer_tree import LayerTree
    from engine.surgery.session import Session

    assert issubclass(Session, Events) and issubclass(LayerTree, Events)
    assert set(Session.EVENTS) == {"heads_changed", "changed"} and "reset" in LayerTree.EVENTS
