"""The batch size a CPU pass runs fastest at, found by timing the first batches of the real work.

On a CPU the fastest batch is often small (on 2 cores onnxruntime ran the default trunk at 190 images/s
one by one and 133 at 64: activations that fit the caches beat big matrix products), and where it lies
depends on the machine and the network. So nothing is fixed: :class:`BatchSizeProbe` hands out each
candidate size in turn for the first chunks of a pass, timing each twice (the first run of a shape
allocates), and then keeps the size with the lowest time per image. The probing costs nothing extra:
those chunks are part of the pass. Sizes are tried smallest first and the climb stops at the first size
clearly slower per image than a smaller one (:data:`GIVE_UP`): time per image falls and then rises with the
batch, so the larger sizes would be slower still, and timing them is what the probe costs.
"""
from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

CANDIDATES = (1, 4, 16, 32)  # 64 was never the fastest and its arena doubled the peak memory
TIMINGS_PER_SIZE = 2
GIVE_UP = 1.25  # a size this much slower per image than a smaller one ends the climb


class BatchSizeProbe:
    """Chunk sizes for a pass: the candidates first (each :data:`TIMINGS_PER_SIZE` times), then the
    fastest per image. Thread-safe; one probe serves every later pass of the same runner."""

    def __init__(self, candidates: Sequence[int] = CANDIDATES, timings: int = TIMINGS_PER_SIZE,
                 give_up: float | None = GIVE_UP) -> None:
        self.candidates = sorted({int(c) for c in candidates if int(c) >= 1})
        if not self.candidates:
            raise ValueError("a probe needs at least one candidate batch size")
        self.timings = max(1, int(timings))
        self.give_up = give_up
        self._seconds: dict[int, list[float]] = {c: [] for c in self.candidates}
        self._lock = threading.Lock()

    @property
    def best(self) -> int | None:
        """The fastest size per image once every candidate was timed, else None."""
        with self._lock:
            if any(len(t) < self.timings for t in self._seconds.values()):
                return None
            return min(self.candidates, key=lambda c: min(self._seconds[c]) / c)

    def per_image(self) -> dict[int, float]:
        """Seconds per image for each size timed so far (its fastest run)."""
        with self._lock:
            return {c: min(t) / c for c, t in self._seconds.items() if t}

    def _next(self, remaining: int) -> int:
        best = self.best
        if best is not None:
            return best
        with self._lock:
            for c in self.candidates:
                if len(self._seconds[c]) < self.timings and c <= remaining:
                    return c
        return remaining  # the rest is smaller than every size still to time: run it whole, untimed

    def chunks(self, n: int) -> Iterator[tuple[int, int, bool]]:
        """``(start, stop, timed)`` chunks covering ``range(n)``; report the seconds of each timed one
        to :meth:`record`."""
        start = 0
        while start < n:
            size = min(self._next(n - start), n - start)
            timed = size in self._seconds and self.best is None
            yield start, start + size, timed
            start += size

    def record(self, size: int, seconds: float) -> None:
        with self._lock:
            if size in self._seconds and len(self._seconds[size]) < self.timings:
                self._seconds[size].append(seconds)
                if len(self._seconds[size]) == self.timings and self.give_up is not None:
                    self._climb_stops_at(size)

    def _climb_stops_at(self, size: int) -> None:
        """Drop the sizes above ``size`` once it is :attr:`give_up` times slower per image than the
        fastest smaller size (lock held)."""
        smaller = [min(t) / c for c, t in self._seconds.items() if c < size and len(t) == self.timings]
        if smaller and min(self._seconds[size]) / size > self.give_up * min(smaller):
            self.candidates = [c for c in self.candidates if c <= size]
            self._seconds = {c: t for c, t in self._seconds.items() if c <= size}
