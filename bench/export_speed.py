"""ONNX export speed and onnxruntime vs PyTorch CPU inference for the default model with one head.

Run: .venv/bin/python bench/export_speed.py [--runs N] [--model NAME]
Prints the export time (first export in a fresh process and the median of later ones), then the median
inference time at batch 1 and batch 16 for PyTorch (eval, inference_mode) and onnxruntime
(CPUExecutionProvider), with the ratio torch / onnxruntime (above 1: onnxruntime is faster).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from engine.export.onnx_export import export_onnx  # noqa: E402
from engine.units import human_bytes  # noqa: E402
from engine.network.heads import HeadSpec  # noqa: E402
from engine.export.inference import predict_arrays  # noqa: E402
from engine.network.loading import load_network  # noqa: E402
from engine.export.metadata import OnnxPredictor  # noqa: E402
from engine.surgery.operations import AddHead, DeleteOutputLayer  # noqa: E402
from engine.surgery.session import Session  # noqa: E402


def load(name: str | None):
    if name:
        return load_network(name, random_init=True), name
    try:
        return load_network("default"), "default (efficientnet_lite0, ImageNet weights)"
    except ImportError:
        return load_network("mobilenet_v3_small", random_init=True), \
            "mobilenet_v3_small, random weights (engine/efficientnet_lite.py is not there yet)"


def median_time(fn, runs: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per measurement (median reported)")
    parser.add_argument("--model", help="a torchvision architecture instead of the default (random weights)")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for both PyTorch and onnxruntime (default: each library's own default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    network, label = load(args.model)
    session = Session(network)
    session.do(DeleteOutputLayer())
    session.do(AddHead(HeadSpec("species", labels=[f"class{i}" for i in range(10)]), seed=0))
    size = session.input_spec.size
    loadavg = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    print(f"model: {label}, input {size}x{size}; torch threads {torch.get_num_threads()}, onnxruntime threads "
          f"{args.threads or 'default'}; {os.cpu_count()} CPUs, load average {loadavg}")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.onnx"
        first = export_onnx(session, path)
        later = [export_onnx(session, path) for _ in range(3)]
        print(f"export ({first.exporter}, opset {first.opset}, {human_bytes(first.size_bytes)}): "
              f"first {first.export_seconds:.2f} s, then median {statistics.median(r.export_seconds for r in later):.2f} s "
              f"(+ verify {statistics.median(r.verify_seconds for r in later):.2f} s); "
              f"max |torch - onnxruntime| {first.max_diff:.2e}")
        predictor = OnnxPredictor(path, threads=args.threads)
        rng = np.random.default_rng(0)
        print(f"{'batch':>5} {'torch (ms)':>11} {'onnxruntime (ms)':>17} {'torch/ort':>10} {'max diff':>9}")
        for batch in (1, 16):
            x = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
            runs = args.runs if batch == 1 else max(3, args.runs // 2)
            t_torch = median_time(lambda: predict_arrays(session, x), runs)
            t_ort = median_time(lambda: predictor.predict_arrays(x), runs)
            diff = float(np.abs(predict_arrays(session, x)["species"] - predictor.predict_arrays(x)["species"]).max())
            print(f"{batch:>5} {t_torch * 1000:>11.1f} {t_ort * 1000:>17.1f} {t_torch / t_ort:>10.2f} {diff:>9.1e}")


if __name__ == "__main__":
    main()
