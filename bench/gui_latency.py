"""How responsive the window stays while it trains.

Opens the real Graft window (offscreen unless a display is asked for), loads the bundled network and the
demo data through the window's own workers, grafts the demo's suggested heads, starts training from the
Train tab, and meanwhile a 10 ms QTimer measures how late the GUI event loop runs each tick. Prints
p50 / p99 / max lateness (goal on a 2-core CPU: p99 < 50 ms) and where the GUI thread spent its time.

    .venv/bin/python bench/gui_latency.py                 # heads only: cached trunk features (the default)
    .venv/bin/python bench/gui_latency.py --augment on    # heads only, augmented images through the trunk
    .venv/bin/python bench/gui_latency.py --mode finetune # unfreeze everything: images through the trunk
    .venv/bin/python bench/gui_latency.py --seconds 20 --epochs 3 --batch 16
    .venv/bin/python bench/gui_latency.py --mode gallery  # a mistakes gallery of 200 photos fills (goal p99 < 16 ms)
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("heads", "finetune", "gallery"), default="heads",
                        help="heads: train only the heads (cached features); finetune: train every layer; "
                             "gallery: fill a mistakes gallery with thumbnails decoded in a thread pool")
    parser.add_argument("--images", type=int, default=200, help="gallery: how many images (default 200)")
    parser.add_argument("--photo-side", type=int, default=2400,
                        help="gallery: the longer side of the JPEGs made for it (default 2400, a phone photo's scale)")
    parser.add_argument("--seconds", type=float, default=25.0, help="measure at most this long (default 25)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--interval", type=int, default=10, help="timer interval in ms (default 10)")
    parser.add_argument("--augment", choices=("auto", "on", "off"), default="auto",
                        help="auto (the panel's default): off with a frozen trunk, whose features are then cached")
    parser.add_argument("--show", action="store_true", help="use the real display instead of offscreen")
    args = parser.parse_args(argv)
    if not args.show:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

    if args.mode == "gallery":
        return gallery_latency(args)
    from PySide6.QtCore import QCoreApplication, QElapsedTimer, QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from app.application import configure_app
    from app.main_window import MainWindow
    from engine.surgery.operations import AddHead, DeleteOutputLayer, freeze_preset

    app = QApplication.instance() or QApplication([])
    configure_app(app)
    QCoreApplication.setApplicationName("GraftBench")  # keep the user's settings out of it
    window = MainWindow()
    window.show()

    def wait(predicate, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > end:
                raise SystemExit(f"timed out waiting for {what}")
            app.processEvents()
            time.sleep(0.005)

    t0 = time.perf_counter()
    window.files.load_model({"spec": "default"})
    window.datasets.load_demo_data()
    wait(lambda: window.session is not None and window.data is not None and not window.jobs.busy, 300, "loading")
    print(f"loaded {window.session.describe()} and {len(window.data.samples)} demo images "
          f"in {time.perf_counter() - t0:.1f} s")

    # A person takes longer than this to do the surgery: let the background warm-up (first-use imports of
    # PyTorch's optimizer machinery) finish, as it would have by then.
    wait(lambda: window.jobs.warm_job is None or window.jobs.warm_job.ended, 120, "the warm-up")
    window.surgery.apply_op(DeleteOutputLayer())
    for spec in window.data.heads:
        window.surgery.apply_op(AddHead(spec, seed=0))
    window.surgery.apply_op(freeze_preset("heads-only" if args.mode == "heads" else "none"))
    panel = window.training_panel
    config = panel.config()
    config.epochs, config.batch_size, config.patience = args.epochs, args.batch, None
    config.augment = {"on": True, "off": False}.get(args.augment, "auto")
    panel.config = lambda: config  # the panel's own widgets are not the point here

    lateness: list[float] = []
    gui_busy: list[float] = []
    clock = QElapsedTimer()
    clock.start()
    last = [clock.nsecsElapsed()]
    timer = QTimer()
    timer.setInterval(args.interval)

    when: list[float] = []

    def tick() -> None:
        now = clock.nsecsElapsed()
        late = (now - last[0]) / 1e6 - args.interval
        last[0] = now
        lateness.append(max(0.0, late))
        when.append(now / 1e9)

    timer.timeout.connect(tick)

    # Time spent in the window's own reactions to training progress (the GUI thread's share of the work).
    original = window.training._on_progress

    def timed(batch):
        start = time.perf_counter()
        original(batch)
        gui_busy.append((time.perf_counter() - start) * 1000)

    window.training._on_progress = timed  # bound before start_training wires the worker
    finish_ms: list[float] = []
    original_finished = window.training._on_finished

    def timed_finished(result):
        start = time.perf_counter()
        original_finished(result)
        finish_ms.append((time.perf_counter() - start) * 1000)

    window.training._on_finished = timed_finished

    # The real event loop (as app.exec() runs it): it sleeps in Qt between events, holding no GIL.
    loop = QEventLoop()
    window.trainingFinished.connect(lambda _: loop.quit())
    limit = QTimer()
    limit.setSingleShot(True)
    limit.timeout.connect(window.training.stop)  # training then finishes (reason "stopped") and quits
    limit.start(int(args.seconds * 1000))
    timer.start()
    last[0] = clock.nsecsElapsed()
    t_start = time.monotonic()
    if not window.training.start():
        raise SystemExit("training did not start")
    loop.exec()
    timer.stop()
    stopped_early = not limit.isActive()
    limit.stop()
    duration = time.monotonic() - t_start
    wait(lambda: not window.jobs.busy, 120, "the evaluation after training")

    curve = window.curve_panel
    reason = (window.training.last_result or {}).get("reason")
    print(f"mode {args.mode}: trained {duration:.1f} s ({reason}{', at the time limit' if stopped_early else ''}), "
          f"{len(lateness)} timer ticks at {args.interval} ms")
    print(f"event-loop lateness: p50 {percentile(lateness, 50):.1f} ms, p99 {percentile(lateness, 99):.1f} ms, "
          f"max {max(lateness, default=float('nan')):.1f} ms")
    if gui_busy:
        print(f"progress batches handled on the GUI thread: {len(gui_busy)}, "
              f"mean {statistics.mean(gui_busy):.2f} ms, max {max(gui_busy):.1f} ms; "
              f"curve redraws {getattr(curve, 'redraw_count', '?')}")
    if finish_ms:
        print(f"handling the end of training on the GUI thread: {finish_ms[0]:.1f} ms")
    if lateness:
        t0 = when[0]
        worst = sorted(range(len(lateness)), key=lambda i: -lateness[i])[:5]
        print("worst ticks (s after start: ms late):",
              ", ".join(f"{when[i] - t0:.1f}: {lateness[i]:.0f}" for i in sorted(worst)))
    goal = percentile(lateness, 99) < 50
    print("goal p99 < 50 ms:", "met" if goal else "NOT met")
    window.workspace.weights_changed = False
    window.undo_stack.setClean()
    window.close()
    return 0 if goal else 1


def gallery_latency(args: argparse.Namespace) -> int:
    """A MistakesGallery of ``--images`` photo-sized JPEGs fills while a 10 ms timer measures how late the
    event loop runs: the thumbnails are decoded (scaled, in JPEG's DCT) by a ThumbnailLoader on the thread
    pool, and only the finished QImages reach the GUI thread."""
    import tempfile
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image
    from PySide6.QtCore import QElapsedTimer, QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    from engine.data.demo_data import ensure_demo_data
    from widgets.mistakes_gallery import MistakesGallery
    from widgets.thumbnails import ThumbnailLoader

    app = QApplication.instance() or QApplication([])  # noqa: F841 - held while the gallery runs
    demo = sorted((ensure_demo_data().parent / "images").iterdir())
    folder = Path(tempfile.mkdtemp(prefix="graft-gallery-"))
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    side = (args.photo_side, args.photo_side * 3 // 4)
    items = []
    for i in range(args.images):
        path = folder / f"photo_{i:03d}.jpg"
        big = Image.open(demo[i % len(demo)]).convert("RGB").resize(side, Image.Resampling.BILINEAR)
        noisy = np.asarray(big, np.int16) + rng.integers(-12, 13, (side[1], side[0], 3), dtype=np.int16)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, "JPEG", quality=90)
        items.append(SimpleNamespace(image=str(path), truth="star", prediction="square", confidence=0.9 - i / 1000,
                                     loss=3.0 - i / 100, label=None, error=None))
    print(f"made {args.images} JPEGs of {side[0]}x{side[1]} in {time.perf_counter() - t0:.1f} s")

    gallery = MistakesGallery()
    gallery.resize(900, 700)
    gallery.show()
    loader = ThumbnailLoader(gallery)
    lateness: list[float] = []
    clock = QElapsedTimer()
    clock.start()
    last = [clock.nsecsElapsed()]

    def tick() -> None:
        now = clock.nsecsElapsed()
        lateness.append(max(0.0, (now - last[0]) / 1e6 - args.interval))
        last[0] = now
        if all(gallery.model.has_thumbnail(r) for r in range(len(items))):
            loop.quit()

    loop = QEventLoop()
    timer = QTimer()
    timer.setInterval(args.interval)
    timer.timeout.connect(tick)
    limit = QTimer()
    limit.setSingleShot(True)
    limit.timeout.connect(loop.quit)
    limit.start(int(args.seconds * 1000))
    start = time.perf_counter()
    gallery.show_items(items, f"{len(items)} images")  # the model/view part: on the GUI thread, as in the window
    timer.start()
    last[0] = clock.nsecsElapsed()
    gallery.load_with(loader)
    loop.exec()
    timer.stop()
    filled = time.perf_counter() - start
    missing = sum(not gallery.model.has_thumbnail(r) for r in range(len(items)))
    print(f"gallery of {len(items)} filled in {filled:.2f} s ({missing} thumbnails missing), "
          f"{loader.pool.maxThreadCount()} decoding threads, {len(lateness)} timer ticks at {args.interval} ms")
    print(f"event-loop lateness: p50 {percentile(lateness, 50):.1f} ms, p99 {percentile(lateness, 99):.1f} ms, "
          f"max {max(lateness, default=float('nan')):.1f} ms")
    goal = percentile(lateness, 99) < 16 and not missing
    print("goal p99 < 16 ms:", "met" if goal else "NOT met")
    gallery.close()
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()
    return 0 if goal else 1


if __name__ == "__main__":
    sys.exit(main())
