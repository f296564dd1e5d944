"""engine.runtime.batch_size: every candidate is timed on the real work, then the fastest per image is kept."""
from __future__ import annotations

import pytest

from engine.runtime.batch_size import BatchSizeProbe


def run(probe: BatchSizeProbe, n: int, seconds_per_image: dict[int, float]) -> list[int]:
    sizes, covered = [], 0
    for start, stop, timed in probe.chunks(n):
        assert start == covered and stop > start
        covered = stop
        sizes.append(stop - start)
        if timed:
            probe.record(stop - start, seconds_per_image[stop - start] * (stop - start))
    assert covered == n
    return sizes


def test_each_candidate_is_timed_twice_then_the_fastest_per_image_is_used():
    probe = BatchSizeProbe((1, 4, 16), timings=2)
    speed = {1: 0.010, 4: 0.004, 16: 0.006}  # batch 4 is fastest per image
    assert run(probe, 50, speed) == [1, 1, 4, 4, 16, 16, 4, 4]
    assert probe.best == 4
    assert run(probe, 10, speed) == [4, 4, 2], "later passes use it at once"
    assert probe.per_image() == pytest.approx(speed)


def test_a_pass_smaller_than_a_candidate_runs_whole_and_untimed():
    probe = BatchSizeProbe((4, 64), timings=1)
    assert [(a, b, t) for a, b, t in probe.chunks(3)] == [(0, 3, False)]
    assert probe.best is None
    sizes = run(probe, 70, {4: 0.01, 64: 0.002})
    assert sizes == [4, 64, 2] and probe.best == 64


def test_the_first_slow_run_of_a_size_does_not_decide():
    probe = BatchSizeProbe((2, 8), timings=2)
    probe.record(2, 0.02)
    probe.record(8, 1.0)  # first run of a new shape: allocation
    probe.record(2, 0.02)
    probe.record(8, 0.04)
    assert probe.best == 8


def test_the_climb_stops_at_a_size_clearly_slower_than_a_smaller_one():
    probe = BatchSizeProbe((1, 4, 16, 32), timings=2)
    speed = {1: 0.009, 4: 0.018, 16: 0.019, 32: 0.018}  # as onnxruntime ran the default trunk on 2 cores
    assert run(probe, 40, speed) == [1, 1, 4, 4] + [1] * 30, "16 and 32 are never run"
    assert probe.best == 1 and set(probe.per_image()) == {1, 4}


def test_a_size_only_a_little_slower_does_not_stop_the_climb():
    probe = BatchSizeProbe((1, 4, 16), timings=1)
    sizes = run(probe, 40, {1: 0.010, 4: 0.011, 16: 0.005})  # noisy at 4, fastest at 16
    assert sizes[:3] == [1, 4, 16] and probe.best == 16
