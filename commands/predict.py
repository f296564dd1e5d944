"""``main.py predict``: run an exported ONNX file on images with onnxruntime. Never imports torch."""
from __future__ import annotations

import argparse

HELP = "predict images with an exported ONNX file (onnxruntime only, preprocessing from its metadata)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL.onnx", help="a file written by 'main.py export'")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image (all values)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default: all cores)")


def run(args: argparse.Namespace) -> int:
    """Predictions for every readable image; an unreadable one gets its own error line on stderr, the
    others are still predicted, and the exit code is then 1."""
    import json
    import sys

    from engine.errors import GraftError
    from engine.export.metadata import OnnxPredictor

    predictor = OnnxPredictor(args.model, threads=args.threads)
    failed = 0
    for image, preds in predictor.predict_each(args.images):
        if isinstance(preds, GraftError):
            failed += 1
            sys.stdout.flush()  # keep the two streams in order on a terminal
            print(f"graft: error: {preds}", file=sys.stderr, flush=True)
            continue
        if args.json:
            print(json.dumps({"image": image, "outputs": {n: p.to_dict() for n, p in preds.items()}}))
            continue
        print(image)
        for p in preds.values():
            print(f"  {p.format()}")
    return 1 if failed else 0
