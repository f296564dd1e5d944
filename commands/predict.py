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
    import json

    from engine.onnx_metadata import OnnxPredictor

    predictor = OnnxPredictor(args.model, threads=args.threads)
    for start in range(0, len(args.images), 16):
        chunk = args.images[start:start + 16]
        for image, preds in zip(chunk, predictor.predict_files(chunk)):
            if args.json:
                print(json.dumps({"image": image, "outputs": {n: p.to_dict() for n, p in preds.items()}}))
                continue
            print(image)
            for p in preds.values():
                print(f"  {p.format()}")
    return 0
