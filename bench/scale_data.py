"""Graft on more images than memory: ``python bench/scale_data.py [--images N] [--ram-mb MB]``

Generates N small images (default 100,000; 64x64 JPEG, ten class folders, a shape drawn on noise) with
Pillow in parallel processes into Graft's cache folder (``engine.files.cache_dir()/scale-<N>``; kept and
reused: generating is the slow part on a small machine), then reports, in one process:

* listing and checking the folder (:func:`engine.data.loading.load_data`): seconds and images/s
  (``--cold``: after dropping the page cache, as from a cold disk);
* peak memory (``resource.getrusage`` max RSS) after listing, after the caching pass and at the end;
* the frozen-trunk caching pass (the trainer's "features" phase, timed from its events): images/s,
  with the RAM budget (``--ram-mb``, default 16 MB: far below the features' size) forcing the spill
  to a memory-mapped file on disk;
* one heads-only epoch on the cached (spilled) features, and the same epoch's images/s.

The trunk is the default network at ``--size`` pixels (default 64: the images' own size). ``--random-weights``
skips nothing here (the speed is the same); it only avoids the bundled weights. Run it niced on a shared
machine: ``nice -n 10 .venv/bin/python bench/scale_data.py --images 20000``.
"""
from __future__ import annotations

import argparse
import math
import os
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLASSES = 10
SIDE = 64
FORMATS = {"jpeg": ".jpg", "png": ".png"}


def _draw(args: tuple[int, str, str]) -> int:
    """Write images ``start..start+count`` (one task: a chunk of indices) and return how many."""
    import numpy as np
    from PIL import Image, ImageDraw

    start_count, folder, fmt = args
    start, count = map(int, start_count.split(":"))
    ext = FORMATS[fmt]
    for i in range(start, start + count):
        label = i % CLASSES
        path = Path(folder) / f"c{label}" / f"{i:07d}{ext}"
        if path.exists():
            continue
        rng = np.random.default_rng(i)
        base = rng.integers(0, 90, size=3)
        noise = rng.integers(0, 60, size=(SIDE, SIDE, 3))
        image = Image.fromarray((base + noise).clip(0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        r = rng.uniform(10, 24)
        cx, cy = rng.uniform(r, SIDE - r, size=2)
        sides = 3 + label % 5  # the class: the number of corners (3-7) and, for 5 of them, filled or not
        points = [(cx + r * math.cos(2 * math.pi * k / sides + label), cy + r * math.sin(2 * math.pi * k / sides + label))
                  for k in range(sides)]
        colour = tuple(int(c) for c in rng.integers(150, 256, size=3))
        if label < 5:
            draw.polygon(points, fill=colour)
        else:
            draw.polygon(points, outline=colour, width=3)
        tmp = path.with_name(path.name + ".tmp")
        image.save(tmp, format=fmt.upper(), **({"quality": 90} if fmt == "jpeg" else {}))
        os.replace(tmp, path)
    return count


def ensure_images(n: int, fmt: str = "jpeg", workers: int | None = None) -> tuple[Path, float]:
    """The folder of ``n`` generated images (made now where missing) and the seconds spent making them."""
    from engine.files import cache_dir

    folder = cache_dir() / f"scale-{fmt}-{n}"
    for c in range(CLASSES):
        (folder / f"c{c}").mkdir(parents=True, exist_ok=True)
    stamp = folder / ".complete"
    if stamp.exists():
        return folder, 0.0
    start = time.perf_counter()
    chunk = 2000
    tasks = [(f"{s}:{min(chunk, n - s)}", str(folder), fmt) for s in range(0, n, chunk)]
    with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        done = 0
        for count in pool.map(_draw, tasks):
            done += count
            print(f"\r  generated {done:,} / {n:,} images", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    stamp.write_text("ok\n")
    return folder, time.perf_counter() - start


def peak_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def resident_mb() -> float | None:
    """This process's resident memory now (Linux), for the high-water mark of each phase."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def drop_page_cache() -> None:
    """Write the disk's dirty pages and drop the page cache, so the listing reads the disk as after a reboot."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError as exc:
        raise SystemExit(f"--cold: cannot drop the page cache ({exc.strerror or exc}); run as root on Linux.") from exc
    print("page cache dropped: the listing reads a cold disk")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--format", choices=sorted(FORMATS), default="jpeg")
    parser.add_argument("--ram-mb", type=float, default=16.0, help="the feature cache's RAM budget (MB)")
    parser.add_argument("--size", type=int, default=SIDE, help="the network's input size (pixels)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--list-only", action="store_true", help="generate and list; no caching pass")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--cold", action="store_true",
                        help="drop the page cache before listing (Linux, as root): the listing from a cold disk")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    folder, made = ensure_images(args.images, args.format)
    if made:
        print(f"generated {args.images:,} {args.format} images in {made:.1f} s into {folder}")
    from engine.data.loading import load_data

    if args.cold:
        drop_page_cache()
    t0 = time.perf_counter()
    data = load_data(folder)
    listing = time.perf_counter() - t0
    n = len(data.train) + len(data.val)
    print(f"listing and checking: {n:,} images in {listing:.2f} s ({n / listing:,.0f} images/s), "
          f"{len(data.skipped)} skipped; peak memory {peak_mb():.0f} MB")
    if args.list_only:
        return 0

    from engine.network.loading import load_network
    from engine.network.preprocess import InputSpec
    from engine.surgery.operations import AddHead, DeleteOutputLayer, freeze_preset
    from engine.surgery.session import Session
    from engine.training.config import TrainConfig
    from engine.training.events import EpochEvent, MessageEvent, ProgressEvent
    from engine.training.trainer import Trainer

    torch.manual_seed(0)
    session = Session(load_network("default", random_init=args.random_weights))
    session.model.input_spec = InputSpec(size=args.size, resize=args.size)
    session.do(DeleteOutputLayer())
    for h in data.heads:
        session.do(AddHead(h, seed=0))
    session.do(freeze_preset("heads-only"))
    marks: dict[str, float] = {}
    epochs: list[EpochEvent] = []
    peaks: dict[str, float] = {}

    resident: dict[str, float] = {}

    def on_event(event) -> None:
        now = time.perf_counter()
        if isinstance(event, ProgressEvent):
            phase = "caching" if event.phase == "features" else "training"
            current = resident_mb()
            if current is not None:
                resident[phase] = max(resident.get(phase, 0.0), current)
        if isinstance(event, ProgressEvent) and event.phase == "features":
            marks.setdefault("features", now)
        elif isinstance(event, ProgressEvent) and event.phase == "train" and "features" in marks:
            if "train" not in marks:
                marks["train"] = now
                peaks["after caching"] = peak_mb()
        elif isinstance(event, MessageEvent):
            print("  " + event.text)
        elif isinstance(event, EpochEvent):
            epochs.append(event)

    config = TrainConfig(epochs=1, batch_size=args.batch_size, augment=False, patience=None,
                         feature_ram_budget_mb=args.ram_mb, device="cpu")
    t_run = time.perf_counter()
    result = Trainer(session, data, config, on_event).run()
    total = time.perf_counter() - t_run
    assert result.cached_features and result.epochs_run == 1
    caching = marks["train"] - marks["features"]
    epoch = epochs[0].seconds
    print(f"caching pass ({result.trunk_backend}): {n:,} images in {caching:.1f} s ({n / caching:,.0f} images/s); "
          f"peak memory {peaks.get('after caching', peak_mb()):.0f} MB")
    print(f"heads-only epoch on the cached features: {len(data.train):,} images in {epoch:.2f} s "
          f"({len(data.train) / epoch:,.0f} images/s, validation of {len(data.val):,} included)")
    if resident:
        print("resident memory, highest sampled: " + ", ".join(f"{k} {v:.0f} MB" for k, v in resident.items()))
    print(f"whole run {total:.1f} s; peak memory at the end {peak_mb():.0f} MB; "
          f"features {n * session.feature_dim * 4 / 2**20:.0f} MB against a RAM budget of {args.ram_mb:g} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
