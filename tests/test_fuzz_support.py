"""The fuzz tests' bounds can fail: fuzz_support.bounded sees each kind of broken property it claims to."""
from __future__ import annotations

import time

import numpy as np

from engine.errors import GraftError
from fuzz_support import bounded


def test_a_correct_load_and_a_graft_error_pass():
    assert bounded(lambda: [1, 2]).kind == "ok"
    outcome = bounded(lambda: (_ for _ in ()).throw(GraftError("x.csv: the CSV is empty.")))
    assert (outcome.kind, outcome.detail, outcome.problem(100)) == ("graft", "x.csv: the CSV is empty.", None)


def test_another_exception_is_a_crash():
    outcome = bounded(lambda: {}["missing"])
    assert outcome.kind == "crash" and "KeyError" in outcome.detail and outcome.problem(100)


def test_a_hang_is_killed_at_the_timeout():
    began = time.monotonic()
    outcome = bounded(time.sleep, 60, timeout=1)
    assert outcome.kind == "timeout" and time.monotonic() - began < 20


def test_memory_past_the_bound_is_measured_and_a_bomb_hits_the_cap():
    def touch(mb: int) -> int:
        return int(np.ones(mb * 2 ** 20 // 8).sum())

    outcome = bounded(touch, 200)
    assert outcome.kind == "ok" and 190 < outcome.peak_mb < 260 and outcome.problem(100)
    assert bounded(touch, 5000).kind == "crash"  # MemoryError at the address-space cap, not the machine's OOM


def test_memory_reused_from_the_parents_freed_heap_is_measured_too():
    """With Graft's allocator setting the parent's freed blocks stay resident; a child reusing them must
    still be measured (it was: 2 MB for a 200 MB load, when an earlier test in the process had freed one)."""
    from engine.runtime.allocator import configure_allocator

    configure_allocator()
    freed = np.ones(400 * 2 ** 20 // 8)
    del freed
    outcome = bounded(lambda mb: int(np.ones(mb * 2 ** 20 // 8).sum()), 200)
    assert outcome.kind == "ok" and 190 < outcome.peak_mb < 260


def test_a_write_outside_the_allowed_folder_is_reported(tmp_path):
    inside, outside = tmp_path / "in", tmp_path / "out"
    inside.mkdir()
    outside.mkdir()

    def write(path):
        path.write_text("x")

    assert bounded(write, inside / "a.txt", allowed=(inside,)).outside == []
    outcome = bounded(write, outside / "b.txt", allowed=(inside,))
    assert outcome.outside and "b.txt" in outcome.outside[0] and outcome.problem(100)
    outcome = bounded(lambda: (inside / "c.txt").rename(outside / "c.txt") if (inside / "c.txt").write_text("y") else 0,
                      allowed=(inside,))
    assert any("os.rename" in w for w in outcome.outside)
