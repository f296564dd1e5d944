"""The GUI thread's garbage collector (app/garbage.py): what it froze is skipped by full collections, and
given back to them by a thaw (a model or data set replaced), after which it freezes again."""
from __future__ import annotations

import gc
import weakref

import pytest

from app import garbage
from app.garbage import GuiCollector


class Node:
    pass


@pytest.fixture
def collector(qapp):
    made = GuiCollector(interval=3600)
    made.timer.stop()
    yield made
    gc.unfreeze()


def full_collection(collector: GuiCollector) -> None:
    saved, collector.threshold = collector.threshold, (-1, -1, -1)  # every threshold passed
    try:
        collector.check()
    finally:
        collector.threshold = saved


def test_the_app_collects_on_its_gui_thread_only(qapp):
    assert isinstance(garbage.collector(), GuiCollector)
    assert not gc.isenabled()


def test_settled_objects_are_skipped_until_a_thaw(collector):
    cycle = Node()
    cycle.me = cycle
    alive = weakref.ref(cycle)
    collector.settle()
    assert collector.settled and gc.get_freeze_count() > 0
    del cycle
    full_collection(collector)
    assert alive() is not None  # frozen: the full collection did not look at it
    collector.thaw()
    assert gc.get_freeze_count() == 0
    full_collection(collector)
    assert alive() is None  # the collection after the thaw freed it ...
    assert gc.get_freeze_count() > 0  # ... and froze what is still alive again
    count = gc.get_freeze_count()
    full_collection(collector)
    assert gc.get_freeze_count() == count  # once


def test_check_collects_as_the_thresholds_say(collector):
    before = collector.full_collections
    collector.threshold = (10**9, 10, 10)
    collector.check()
    assert collector.full_collections == before
    full_collection(collector)
    assert collector.full_collections == before + 1


def test_a_thaw_before_any_settle_does_nothing(collector):
    count = gc.get_freeze_count()  # the app's own collector may have frozen some already
    collector.thaw()
    full_collection(collector)
    assert gc.get_freeze_count() == count
