"""How long a heatmap takes per image, against the plain prediction it explains.

Run: .venv/bin/python bench/explain_speed.py [--models default vit_b_16] [--images N] [--threads T]
For each network (the default one with its ImageNet weights, others with random weights) and the demo's
three heads (single-label, multi-label, regression): the first heatmap in the process (it also finds the
default layer), then the median over N demo images of one head's heatmap and of all three heads' (one
batch), the model's preprocessing included, and the ratio to a plain forward pass (inference_mode,
batch 1) of the same image. The goal: one head under 1 s for the default network on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.data.loading import load_data  # noqa: E402
from engine.data.demo_data import ensure_demo_data  # noqa: E402
from engine.explain.heatmap import explain, model_input  # noqa: E402
from engine.network.loading import load_network  # noqa: E402
from engine.surgery.operations import AddHead, DeleteOutputLayer, freeze_preset  # noqa: E402
from engine.surgery.session import Session  # noqa: E402


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["default", "vit_b_16"])
    parser.add_argument("--images", type=int, default=10, help="demo images to time (default 10)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_data(ensure_demo_data())
    paths = [str(s.path) for s in data.samples[:args.images]]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(paths)} demo images")
    ok = True
    for name in args.models:
        network = load_network(name) if name == "default" else load_network(name, random_init=True)
        session = Session(network)
        session.do(DeleteOutputLayer())
        for spec in data.heads:
            session.do(AddHead(spec, seed=0))
        session.do(freeze_preset("heads-only"))
        first = timed(lambda: explain(session, paths[0], heads=[data.heads[0].name]))
        layer = explain(session, paths[0], heads=[data.heads[0].name])[0].layer
        one = [timed(lambda p=p: explain(session, p, heads=[data.heads[0].name])) for p in paths]
        every = [timed(lambda p=p: explain(session, p)) for p in paths]

        def predict(p: str) -> None:
            _, x = model_input(session, p)
            with torch.inference_mode():
                session.model(x)

        plain = [timed(lambda p=p: predict(p)) for p in paths]
        m1, m3, mp = statistics.median(one), statistics.median(every), statistics.median(plain)
        print(f"{session.describe()} at {layer}: first {first:.2f} s; one head {m1 * 1000:.0f} ms "
              f"({m1 / mp:.1f}x a prediction of {mp * 1000:.0f} ms), all {len(data.heads)} heads {m3 * 1000:.0f} ms "
              f"({m3 / mp:.1f}x)")
        if name == "default":
            ok = ok and m1 < 1.0
    print("goal (default network, one head) < 1 s:", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
