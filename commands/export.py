"""``main.py export``: write a verified, self-describing ONNX file from a project."""
from __future__ import annotations

import argparse

HELP = "export a project (or a model) to a verified ONNX file with its preprocessing as metadata"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", metavar="FILE.graft",
                        help="the project to export (a model name or file also works: exported without heads)")
    parser.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    parser.add_argument("--image", action="append", default=[], metavar="IMG",
                        help="an image to verify the export on as well (repeatable)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default: 18)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest allowed absolute difference between PyTorch and onnxruntime (default: 1e-4)")
    parser.add_argument("--exporter", choices=("auto", "torchscript", "dynamo"), default="auto",
                        help="which PyTorch ONNX exporter to use (default: auto, TorchScript then torch.export)")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")
    parser.add_argument("--random-weights", action="store_true",
                        help="for a model name: accept random weights when none are available")
    parser.add_argument("--trust", action="store_true", help="for a pickled model file: allow loading it")


def run(args: argparse.Namespace) -> int:
    from engine.export import OPSET, check_target, export_onnx

    from .common import load_session

    check_target(args.onnx)  # before spending seconds on loading the project
    load_args = argparse.Namespace(model=args.project, weights=None, arch=None,
                                   random_weights=args.random_weights, trust=args.trust)
    session = load_session(load_args)
    report = export_onnx(session, args.onnx, opset=args.opset or OPSET, verify=not args.no_verify,
                         images=args.image, tolerance=args.tolerance, exporter=args.exporter)
    print(report.format())
    return 0
