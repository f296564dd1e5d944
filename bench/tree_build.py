"""How long building the layer tree takes (one dry run + node build) on big torchvision models.

Run: .venv/bin/python bench/tree_build.py  — the issue's goal is under 1 s for vit_b_16 / convnext_base.
Also prints the ratio against a plain PyTorch forward pass of the same model at batch 1.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.network.loading import load_network  # noqa: E402
from engine.surgery.session import Session  # noqa: E402


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"{'model':<20}{'modules':>9}{'tree (s)':>10}{'forward (s)':>13}{'ratio':>8}")
    for arch in ("resnet50", "vit_b_16", "convnext_base", "efficientnet_lite0"):
        net = load_network(arch, random_init=True)
        x = torch.zeros(1, 3, net.input_spec.size, net.input_spec.size)
        with torch.inference_mode():
            net.module.eval()(x)  # warm-up
            plain = []
            for _ in range(3):
                t = time.perf_counter()
                net.module(x)
                plain.append(time.perf_counter() - t)
        times = []
        for _ in range(3):
            t = time.perf_counter()
            s = Session(net)
            times.append(time.perf_counter() - t)
        tree, fwd = statistics.median(times), statistics.median(plain)
        print(f"{arch:<20}{len(s.tree):>9}{tree:>10.3f}{fwd:>13.3f}{tree / fwd:>8.2f}")


if __name__ == "__main__":
    main()
