"""ONNX export speed and onnxruntime vs PyTorch CPU inference for the default model with one head.

Run: .venv/bin/python bench/export_speed.py [--runs N] [--model NAME] [--precision-only | --no-precision]
Prints the export time (first export in a fresh process and the median of later ones), then the median
inference time at batch 1 and batch 16 for PyTorch (eval, inference_mode) and onnxruntime
(CPUExecutionProvider), with the ratio torch / onnxruntime (above 1: onnxruntime is faster).

Then reduced precision: a 'shape' head is trained on the demo data (3 epochs, heads only), the model is
exported as fp32, fp16 and int8 (calibrated on 64 training images; --keep-float auto) and the three files
are compared on the validation split in one table, with the targets checked:
int8 file <= 0.35x fp32, int8 latency at batch 16 <= 0.7x fp32, int8 accuracy within 1 point of fp32.
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
    parser.add_argument("--precision-only", action="store_true", help="only the fp32/fp16/int8 comparison")
    parser.add_argument("--no-precision", action="store_true", help="skip the fp32/fp16/int8 comparison")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.precision_only:
        precision_targets(args)
        return

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
    if not args.no_precision:
        precision_targets(args)


TARGETS = {"int8 file size": 0.35, "int8 latency, batch 16": 0.7, "int8 accuracy loss (points)": 1.0}


def precision_targets(args: argparse.Namespace) -> None:
    """fp32, fp16 and int8 files of the default network with one trained head, compared in one table."""
    from engine.data.loading import load_data
    from engine.data.demo_data import ensure_demo_data
    from engine.export.compare import compare_models, validation_images
    from engine.export.precision import export_precision
    from engine.network.preprocess import preprocess_file
    from engine.surgery.operations import freeze_preset
    from engine.training.config import TrainConfig
    from engine.training.trainer import Trainer

    network, label = load(args.model)
    session = Session(network)
    manifest = ensure_demo_data()
    data = load_data(manifest, [HeadSpec("shape", columns=["shape"])])
    session.do(DeleteOutputLayer())
    session.do(AddHead(data.heads[0], seed=0))
    session.do(freeze_preset("heads-only"))
    result = Trainer(session, data, TrainConfig(epochs=3)).run()
    accuracy = result.history[-1]["metrics"]["shape"]["accuracy"]
    print(f"\nreduced precision: {label}, head 'shape' trained on the demo data ({result.epochs_run} epochs, "
          f"validation accuracy {accuracy:.3f})")
    images = validation_images(session, manifest)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, fp16, int8 = (Path(tmp) / f"{p}.onnx" for p in ("fp32", "fp16", "int8"))
        q = export_precision(session, int8, "int8", calibration=images.calibration, images=images.validation,
                             targets=images.targets, keep_float="auto", timing=False, keep_reference=fp32)
        export_precision(session, fp16, "fp16", timing=False)
        print(f"int8: {q.reduction.method}, calibrated on {q.reduction.calibration_images} training images, "
              f"{len(q.reduction.float_layers)} layers kept in float; {q.seconds:.1f} s")
        batch = np.stack([preprocess_file(p, session.input_spec) for p in images.validation])
        report = compare_models(fp32, [fp16, int8], batch, images.targets, runs=args.runs, threads=args.threads,
                                where=images.where)
        print(report.table())
        ref, q8 = report.reference, report.candidate("int8")
        loss = next(h for h in report.heads["int8"] if h.name == "shape").loss_points
        measured = {"int8 file size": q8.size_bytes / ref.size_bytes,
                    "int8 latency, batch 16": q8.latency[16] / ref.latency[16],
                    "int8 accuracy loss (points)": loss}
        for name, limit in TARGETS.items():
            value, unit = measured[name], "" if "points" in name else "x"
            print(f"target {name}: {value:.2f}{unit} (at most {limit:g}{unit})  {'PASS' if value <= limit else 'FAIL'}")


if __name__ == "__main__":
    main()
