"""``main.py export``: write a verified, self-describing ONNX file from a project."""
from __future__ import annotations

import argparse

HELP = "export a project (or a model) to a verified ONNX file with its preprocessing as metadata"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", metavar="FILE.graft",
                        help="the project to export (a model name or file also works: exported without heads)")
    parser.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    parser.add_argument("--image", action="append", default=[], metavar="IMG",
                        help="an image to verify the export on as well (repeatable; default: up to 4 images "
                             "from the data the project was trained on, when it is still there)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset, 13 or newer (default: 18)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest allowed absolute difference between PyTorch and onnxruntime (default: 1e-4)")
    parser.add_argument("--exporter", choices=("auto", "torchscript", "dynamo"), default="auto",
                        help="which PyTorch ONNX exporter to use (default: auto, TorchScript then torch.export)")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime comparison")
    parser.add_argument("--random-weights", action="store_true",
                        help="for a model name: accept random weights when none are available")
    parser.add_argument("--trust", action="store_true", help="for a pickled model file: allow loading it")


def run(args: argparse.Namespace) -> int:
    from engine.export.onnx_export import OPSET, check_opset, check_target, check_tolerance, export_onnx, training_images

    from .common import load_session

    check_target(args.onnx)  # before spending seconds on loading the project
    opset = check_opset(OPSET if args.opset is None else args.opset)
    tolerance = check_tolerance(args.tolerance)
    load_args = argparse.Namespace(model=args.project, weights=None, arch=None,
                                   random_weights=args.random_weights, trust=args.trust)
    session = load_session(load_args)
    images, where, why = list(args.image), "", ""
    if not images and not args.no_verify:
        images, found = training_images(getattr(session, "project_extra", None))
        where, why = (found, "") if images else ("", found)
    report = export_onnx(session, args.onnx, opset=opset, verify=not args.no_verify,
                         images=images, tolerance=tolerance, exporter=args.exporter)
    print(report.format())
    if where:
        print(f"verification images: {len(images)} {where}")
    elif why:
        print(f"note: only random inputs were checked, no real images: {why}. "
              "Add --image IMG (repeatable) to verify on real pictures too.")
    return 0
