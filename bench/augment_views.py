"""Augmented features at cached speed: ``python bench/augment_views.py [--views 4] [--epochs 30] [--seeds 1]``

With a frozen trunk Graft computes the trunk's features once and trains the heads on them. With
``augment_views`` = K it computes them for K augmented views of every training image instead (the
fine-tuning augmentation) and trains each epoch on one view per image. This script measures, in one process,
on the bundled pretrained network (EfficientNet-Lite0, heads only):

* validation accuracy (single-label heads; macro F1 for multi-label, MAE for regression) of the epoch kept
  (lowest validation loss) with K = 0 (plain caching) and with K views, on two data sets:
  the demo data (``engine.data.demo_data``: shape, red, striped, outlined, size) and "polygons", a harder
  set made here (600 small noisy images, 10 classes: 3-7 corners, filled or outlined, at random positions,
  sizes and turns; ``bench/scale_data.py``'s generator, into the cache folder);
* the caching pass's time (the trainer's ``extract_features`` calls, timed; the one-off ONNX conversion of
  the trunk left out) and the median epoch time, K views against plain caching. Expected: about K x for the
  training images' pass (validation stays one plain pass), the same epochs.

``--seeds N`` repeats each run with N seeds (head initialisation, batch order and the views) and reports the
mean: the validation sets are small (72 and 120 images), one image is 1.4 % and 0.8 %.
"""
from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from engine.data.loading import load_data  # noqa: E402
from engine.data.demo_data import ensure_demo_data  # noqa: E402
from engine.network.loading import load_network  # noqa: E402
from engine.surgery.operations import AddHead, DeleteOutputLayer, freeze_preset  # noqa: E402
from engine.surgery.session import Session  # noqa: E402
from engine.training import features  # noqa: E402
from engine.training.config import TrainConfig  # noqa: E402
from engine.training.metrics import MAIN_METRIC  # noqa: E402
from engine.training.trainer import Trainer  # noqa: E402


def make_session(data) -> Session:
    torch.manual_seed(0)
    session = Session(load_network("default"))
    session.do(DeleteOutputLayer())
    for h in data.heads:
        session.do(AddHead(h, seed=0))
    session.do(freeze_preset("heads-only"))
    return session


class CachingClock:
    """Adds up the time spent in :func:`engine.training.features.extract_features` (the caching passes)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.original = features.extract_features

    def __enter__(self) -> "CachingClock":
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return self.original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start
        features.extract_features = timed
        return self

    def __exit__(self, *exc) -> None:
        features.extract_features = self.original


def run(data, views: int, epochs: int, seed: int) -> dict:
    session = make_session(data)
    config = TrainConfig(epochs=epochs, batch_size=32, patience=None, seed=seed, augment_views=views)
    with CachingClock() as clock:
        result = Trainer(session, data, config).run()
    assert result.cached_features and result.augment_views == views
    best = result.history[result.best_epoch - 1]
    scores = {h.name: best["metrics"].get(h.name, {}).get(MAIN_METRIC[h.kind]) for h in data.heads}
    return {"caching": clock.seconds, "epoch": statistics.median(h["seconds"] for h in result.history),
            "scores": scores, "best_epoch": result.best_epoch}


def polygons(n: int = 600):
    sys.path.insert(0, str(ROOT / "bench"))
    from scale_data import ensure_images

    folder, _ = ensure_images(n)
    return load_data(folder)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--views", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--only", choices=("demo", "polygons"), default=None)
    parser.add_argument("--train-images", type=int, default=None,
                        help="train on the first N training images only (a small-data case); validation unchanged")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sets = {"demo": lambda: load_data(ensure_demo_data()), "polygons": polygons}
    rows = []
    for name, make in sets.items():
        if args.only and name != args.only:
            continue
        data = make()
        if args.train_images:
            data = replace(data, train=data.train[:args.train_images])
        results: dict[int, list[dict]] = {0: [], args.views: []}
        for seed in range(args.seeds):  # interleaved: a busy spell on a shared machine hits both alike
            for k in (0, args.views):
                results[k].append(run(data, k, args.epochs, seed))
        plain, viewed = results[0], results[args.views]
        print(f"\n{name}: {len(data.train)} training / {len(data.val)} validation images, {args.epochs} epochs, "
              f"{args.seeds} seed(s)")
        for h in data.heads:
            metric = MAIN_METRIC[h.kind]
            a = statistics.mean(r["scores"][h.name] for r in plain)
            b = statistics.mean(r["scores"][h.name] for r in viewed)
            better = (b > a) if metric != "mae" else (b < a)
            print(f"  {h.name:10s} {metric:9s} plain {a:.3f}   {args.views} views {b:.3f}   "
                  f"({'better' if better else 'not better' if a != b else 'same'})")
        cache_a = statistics.mean(r["caching"] for r in plain)
        cache_b = statistics.mean(r["caching"] for r in viewed)
        epoch_a = statistics.mean(r["epoch"] for r in plain)
        epoch_b = statistics.mean(r["epoch"] for r in viewed)
        expected = (args.views * len(data.train) + len(data.val)) / (len(data.train) + len(data.val))
        print(f"  caching pass: plain {cache_a:.2f} s, {args.views} views {cache_b:.2f} s: {cache_b / cache_a:.2f}x "
              f"(images passed: {expected:.2f}x)")
        print(f"  epoch: plain {epoch_a * 1000:.1f} ms, {args.views} views {epoch_b * 1000:.1f} ms: "
              f"{epoch_b / epoch_a:.2f}x")
        rows.append((name, cache_b / cache_a, expected, epoch_b / epoch_a))
    print("\nratios (views / plain):")
    for name, caching, expected, epoch in rows:
        print(f"  {name:9s} caching {caching:5.2f}x (images {expected:.2f}x)   epoch {epoch:5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
