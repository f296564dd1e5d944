"""The soak: a long training run in the real window with the curves, the tree's layer telemetry and autosave
(the recovery file at each best epoch) on, sampling each minute the process's resident memory and how late
the GUI event loop ran (a 10 ms timer), into a CSV; then a plot of both (PNG, drawn with pyqtgraph).

    DISPLAY=:18 nice .venv/bin/python bench/soak.py --show --threads 1 --minutes 60 --out soak
    .venv/bin/python bench/soak.py --plot soak.csv          # the PNG again from a CSV

The run fine-tunes every layer of the bundled network on the demo data (``--preset heads-only``: the heads
on cached features, epochs of milliseconds, so the curves and the recovery copies come far more often). It
is stopped at ``--minutes``; a run that ends before that is started again (the curves then start afresh).
Memory is flat when, after ``--warmup`` minutes, the resident size stays within ``--bound`` MB of its
first value then (the process's own; the loader's worker processes are sampled beside it). The allocator is
set as the launcher sets it (:mod:`engine.runtime.allocator`; ``GRAFT_ALLOCATOR=system`` for glibc's
defaults), and each sample also says how glibc's heap splits into blocks in use and free blocks it keeps.
"""
from __future__ import annotations

import argparse
import csv
import gc
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

FIELDS = ("minute", "rss_mb", "workers_rss_mb", "heap_used_mb", "heap_free_mb", "heap_mmap_mb", "epochs", "steps",
          "runs", "recovery_writes", "write_s_max", "lat_ticks", "lat_p50_ms", "lat_p99_ms", "lat_max_ms", "gc_objects")


def heap_mb() -> tuple[float, float, float]:
    """glibc's own account of its heap (``mallinfo2``, all arenas), in MB: blocks in use, free blocks it keeps
    (RSS the program no longer uses, unless the pages were given back), and blocks mapped on their own.
    NaN where there is no glibc 2.33+."""
    import ctypes

    class Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                         "fsmblks", "uordblks", "fordblks", "keepcost")]

    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return float("nan"), float("nan"), float("nan")
    fn.restype = Mallinfo2
    m = fn()
    return m.uordblks / 2**20, m.fordblks / 2**20, m.hblkhd / 2**20


def rss_mb(pid: int | str = "self") -> float:
    """Resident set size from /proc (Linux), in MB; 0 when the process is gone."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def children(pid: int | str = "self") -> list[int]:
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


class MinuteLateness:
    """A 10 ms QTimer's lateness, kept for the current minute only (an hour of ticks would itself grow
    the memory being measured)."""

    def __init__(self, interval: int = 10) -> None:
        from PySide6.QtCore import QElapsedTimer, QTimer

        self.interval, self.values = interval, []
        self.clock = QElapsedTimer()
        self.clock.start()
        self.last = self.clock.nsecsElapsed()
        self.timer = QTimer()
        self.timer.setInterval(interval)
        self.timer.timeout.connect(self._tick)
        self.timer.start()

    def _tick(self) -> None:
        now = self.clock.nsecsElapsed()
        self.values.append(max(0.0, (now - self.last) / 1e6 - self.interval))
        self.last = now

    def take(self) -> list[float]:
        values, self.values = self.values, []
        return values


def soak(args: argparse.Namespace) -> int:
    from PySide6.QtCore import QEventLoop, QTimer

    from gui_latency import grafted_window

    app, window = grafted_window(args.preset)
    recovery = window.recovery
    recovery.set_minutes(args.autosave_minutes)
    panel = window.training_panel
    config = panel.config()
    config.epochs, config.batch_size, config.patience = args.epochs, args.batch, None
    assert config.telemetry, "the panel's default shows the layer telemetry"
    panel.config = lambda: config
    out_csv = Path(args.out).with_suffix(".csv")
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    state = {"epochs": 0, "steps": 0, "runs": 0, "writes_seen": 0, "done": False}
    original_progress = window.training._on_progress

    def counting(batch):
        state["epochs"] += len(batch.get("epochs", []))
        state["steps"] += len(batch.get("steps", []))
        original_progress(batch)

    window.training._on_progress = counting
    lateness = MinuteLateness()
    t0 = time.monotonic()
    end = t0 + args.minutes * 60

    def start_run() -> None:
        if state["done"] or window.jobs.training:
            return
        if window.jobs.busy:  # the evaluation after a run: then the next run
            QTimer.singleShot(500, start_run)
            return
        if window.training.start():
            state["runs"] += 1

    def finished(_result) -> None:
        if not state["done"]:
            QTimer.singleShot(0, start_run)

    window.trainingFinished.connect(finished)

    with open(out_csv, "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()

        def sample() -> None:
            values = lateness.take()
            seconds = recovery.writer.seconds[state["writes_seen"]:]
            state["writes_seen"] = len(recovery.writer.seconds)
            used, free, mapped = heap_mb()
            row = {"minute": round((time.monotonic() - t0) / 60, 2), "rss_mb": round(rss_mb(), 1),
                   "workers_rss_mb": round(sum(rss_mb(c) for c in children()), 1), "heap_used_mb": round(used, 1),
                   "heap_free_mb": round(free, 1), "heap_mmap_mb": round(mapped, 1), "epochs": state["epochs"],
                   "steps": state["steps"], "runs": state["runs"], "recovery_writes": recovery.writer.writes,
                   "write_s_max": round(max(seconds, default=0.0), 3), "lat_ticks": len(values),
                   "lat_p50_ms": round(percentile(values, 50), 2), "lat_p99_ms": round(percentile(values, 99), 2),
                   "lat_max_ms": round(max(values, default=float("nan")), 1),
                   "gc_objects": len(gc.get_objects()) if args.count_objects else ""}
            rows.append(row)
            writer.writerow(row)
            f.flush()
            print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            if time.monotonic() >= end:
                state["done"] = True
                minute_timer.stop()
                if window.jobs.training:
                    window.training.stop()
                QTimer.singleShot(0, wait_end)

        loop = QEventLoop()

        def wait_end() -> None:
            # the run's job too: it is let go after the evaluation ends, and closing the window while it is
            # held asks "Training is running. Stop it and close?" in a modal box nobody answers
            if window.jobs.busy or window.jobs.training:
                QTimer.singleShot(200, wait_end)
            else:
                loop.quit()

        minute_timer = QTimer()
        minute_timer.timeout.connect(sample)
        minute_timer.start(int(args.sample_seconds * 1000))
        sample()  # minute 0
        start_run()
        loop.exec()
    lateness.timer.stop()
    recovery.writer.flush(60)
    print(f"recovery copies written: {recovery.writer.writes}, slowest {max(recovery.writer.seconds, default=0):.2f} s "
          f"(on the writer's thread)")
    verdict = summarize(rows, args.warmup, args.bound)
    plot(out_csv, Path(args.out).with_suffix(".png"), args.warmup, args.bound)
    window.workspace.weights_changed = False
    window.undo_stack.setClean()
    window.close()
    return 0 if verdict else 1


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: (float(v) if v not in ("", None) else None) for k, v in row.items()} for row in csv.DictReader(f)]


def summarize(rows: list[dict], warmup: float, bound: float) -> bool:
    rows = [{k: (float(v) if isinstance(v, (int, float)) else v) for k, v in r.items()} for r in rows]
    after = [r for r in rows if r["minute"] >= warmup]
    if not after:
        print("no samples after the warm-up")
        return False
    base = after[0]["rss_mb"]
    top, low = max(r["rss_mb"] for r in after), min(r["rss_mb"] for r in after)
    n = len(after)
    xs, ys = [r["minute"] for r in after], [r["rss_mb"] for r in after]
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var * 60 if var else 0.0
    p99s = [r["lat_p99_ms"] for r in rows if r["lat_p99_ms"] == r["lat_p99_ms"]]
    maxes = [r["lat_max_ms"] for r in rows if r["lat_max_ms"] == r["lat_max_ms"]]
    flat = top - base <= bound
    print(f"resident memory: {rows[0]['rss_mb']:.0f} MB at the start, {base:.0f} MB at minute {after[0]['minute']:.0f}, "
          f"then {low:.0f}..{top:.0f} MB to minute {after[-1]['minute']:.0f} (growth {top - base:+.0f} MB, "
          f"trend {slope:+.1f} MB/hour); bound +{bound:.0f} MB: {'flat' if flat else 'NOT flat'}")
    print(f"event-loop lateness per minute: p99 median {percentile(p99s, 50):.1f} ms, worst minute's p99 "
          f"{max(p99s, default=float('nan')):.1f} ms, worst tick {max(maxes, default=float('nan')):.0f} ms")
    return flat


def plot(csv_path: Path, png: Path, warmup: float = 10, bound: float = 64) -> Path:
    """Resident memory and the event loop's p99 lateness per minute, one above the other (pyqtgraph)."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    import pyqtgraph as pg
    import pyqtgraph.exporters
    from PySide6.QtWidgets import QApplication

    _app = QApplication.instance() or QApplication([])
    rows = read_rows(csv_path)
    pg.setConfigOptions(antialias=True, background="w", foreground="k")
    layout = pg.GraphicsLayoutWidget()
    layout.resize(1000, 700)
    minutes = [r["minute"] for r in rows]
    mem = layout.addPlot(row=0, col=0, title="Resident memory (MB) of the window's process")
    mem.plot(minutes, [r["rss_mb"] for r in rows], pen=pg.mkPen("b", width=2), symbol="o", symbolSize=4, name="RSS")
    if any(r["workers_rss_mb"] for r in rows):
        mem.plot(minutes, [r["workers_rss_mb"] for r in rows], pen=pg.mkPen((0, 150, 0), width=1),
                 name="loader workers")
    after = [r for r in rows if r["minute"] >= warmup]
    if after:
        limit = after[0]["rss_mb"] + bound
        mem.addLine(y=limit, pen=pg.mkPen("r", style=pg.QtCore.Qt.PenStyle.DashLine))
        mem.addLine(x=warmup, pen=pg.mkPen((150, 150, 150), style=pg.QtCore.Qt.PenStyle.DotLine))
    mem.setLabel("bottom", "minute")
    mem.showGrid(x=True, y=True, alpha=0.3)
    lat = layout.addPlot(row=1, col=0, title="Event-loop lateness per minute (ms, log scale): p50 (green), "
                                             "p99 (blue), max (grey); 16 ms (red)")
    timed = [r for r in rows if r["lat_ticks"]]

    def curve(key: str, pen) -> None:
        lat.plot([r["minute"] for r in timed], [max(0.05, r[key]) for r in timed], pen=pen, symbol="o", symbolSize=4,
                 symbolPen=pen, symbolBrush=pen.color())

    curve("lat_p50_ms", pg.mkPen((0, 150, 0), width=1))
    curve("lat_p99_ms", pg.mkPen("b", width=2))
    curve("lat_max_ms", pg.mkPen((150, 150, 150), width=1))
    lat.setLogMode(y=True)
    lat.addLine(y=math.log10(16), pen=pg.mkPen("r", style=pg.QtCore.Qt.PenStyle.DashLine))
    lat.setLabel("bottom", "minute")
    lat.showGrid(x=True, y=True, alpha=0.3)
    layout.show()  # laid out at its size before it is drawn
    for _ in range(5):
        _app.processEvents()
    exporter = pyqtgraph.exporters.ImageExporter(layout.scene())
    exporter.parameters()["width"] = 1000
    exporter.export(str(png))
    print(f"plot: {png}")
    return png


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--sample-seconds", type=float, default=60.0, help="seconds between samples (default 60)")
    parser.add_argument("--preset", choices=("none", "heads-only"), default="none",
                        help="what trains: none = every layer (default), heads-only = the heads on cached features")
    parser.add_argument("--epochs", type=int, default=200, help="epochs of a run (restarted when it ends early)")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--autosave-minutes", type=float, default=1.0)
    parser.add_argument("--warmup", type=float, default=10.0, help="minutes before the memory must stay flat")
    parser.add_argument("--bound", type=float, default=64.0, help="MB the memory may grow after the warm-up")
    parser.add_argument("--count-objects", action="store_true", help="also count Python's objects each sample")
    parser.add_argument("--out", default="soak", help="CSV and PNG path without suffix (default ./soak)")
    parser.add_argument("--threads", type=int, default=None,
                        help="PyTorch's CPU threads for the training (default: PyTorch's own, one per core)")
    parser.add_argument("--show", action="store_true", help="the real display ($DISPLAY) instead of offscreen")
    parser.add_argument("--plot", metavar="CSV", help="only draw the PNG of this CSV")
    args = parser.parse_args(argv)
    if args.plot:
        plot(Path(args.plot), Path(args.plot).with_suffix(".png"), args.warmup, args.bound)
        summarize(read_rows(Path(args.plot)), args.warmup, args.bound)
        return 0
    if not args.show:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from engine.runtime.allocator import configure_allocator

    # as the launcher sets it (commands/cli.py), before any tensor; GRAFT_ALLOCATOR=system: glibc's defaults
    print(f"allocator: {configure_allocator().describe()}", flush=True)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # read as PyTorch loads, by the training's thread too
        import torch

        torch.set_num_threads(args.threads)
        print(f"PyTorch CPU threads: {torch.get_num_threads()}", flush=True)
    return soak(args)


if __name__ == "__main__":
    sys.exit(main())
