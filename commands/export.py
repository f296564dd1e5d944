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
    parser.add_argument("--tta", choices=("none", "flip", "flip+crops"), default="none",
                        help="test-time augmentation inside the file: flip (the image and its mirror image, 2x the "
                             "work) or flip+crops (also four corner crops, 6x); single- and multi-label heads average "
                             "their probabilities, regression heads their values; verified like any export (fp32)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                        help="the numbers inside the file: fp32 (default), fp16 (half the size) or int8 (about a "
                             "quarter, faster on CPUs); the input and outputs stay float32. A reduced file is "
                             "measured against fp32 on the validation images (size, latency, agreement, accuracy)")
    parser.add_argument("--data", metavar="DIR_OR_CSV",
                        help="fp16/int8: labelled data whose training split calibrates int8 and whose validation "
                             "split the comparison runs on (default: the data the project was trained on)")
    parser.add_argument("--calibration", action="append", default=[], metavar="PATH",
                        help="int8: an image or a folder of images to calibrate on instead (repeatable); without "
                             "any image int8 quantizes only the linear layers (dynamic quantization)")
    parser.add_argument("--keep-float", default=None, metavar="auto|N",
                        help="int8: keep the N layers most sensitive to int8 in float, or 'auto': as few as it takes "
                             "for no head to lose more than 1 point of accuracy (a per-layer sensitivity pass)")
    parser.add_argument("--runs", type=int, default=10, help="fp16/int8: timed runs per batch size (default 10)")
    parser.add_argument("--random-weights", action="store_true",
                        help="for a model name: accept random weights when none are available")
    parser.add_argument("--trust", action="store_true", help="for a pickled model file: allow loading it")


def run(args: argparse.Namespace) -> int:
    from engine.export.onnx_export import OPSET, check_opset, check_target, check_tolerance, export_onnx, training_images

    from .common import load_session

    check_target(args.onnx)  # before spending seconds on loading the project
    opset = check_opset(OPSET if args.opset is None else args.opset)
    tolerance = check_tolerance(args.tolerance)
    reduced = _reduced_inputs(args) if args.precision != "fp32" else None  # before loading: bad input fails fast
    if args.tta != "none" and reduced is not None:
        from engine.errors import GraftError

        raise GraftError("--tta is for fp32 exports: leave out --precision, or export without --tta.")
    load_args = argparse.Namespace(model=args.project, weights=None, arch=None,
                                   random_weights=args.random_weights, trust=args.trust)
    session = load_session(load_args)
    images, where, why = list(args.image), "", ""
    if not images and not args.no_verify:
        images, found = training_images(getattr(session, "project_extra", None))
        where, why = (found, "") if images else ("", found)
    if reduced is not None:
        return _reduced(args, reduced, session, images, opset, tolerance)
    from engine.export.tta import mark_tta, output_kinds, with_tta

    report = export_onnx(with_tta(session, args.tta), args.onnx, opset=opset, verify=not args.no_verify,
                         images=images, tolerance=tolerance, exporter=args.exporter)
    print(report.format())
    if args.tta != "none":
        report.metadata = mark_tta(args.onnx, args.tta, output_kinds(session))
        tta = report.metadata["tta"]
        print(f"test-time augmentation inside the file: {tta['description']} ({tta['views']} views per image)")
    if where:
        print(f"verification images: {len(images)} {where}")
    elif why:
        print(f"note: only random inputs were checked, no real images: {why}. "
              "Add --image IMG (repeatable) to verify on real pictures too.")
    return 0


def _reduced_inputs(args: argparse.Namespace) -> dict:
    """fp16/int8 options, checked: the layers to keep in float, the data and the calibration images."""
    from engine.errors import GraftError
    from engine.export.metadata import find_images
    from engine.export.precision import check_keep_float

    from .common import data_path

    keep_float = check_keep_float(args.keep_float)
    if args.runs < 1:
        raise GraftError("The number of timed runs must be at least 1.")
    if args.no_verify:
        raise GraftError("--no-verify is for fp32 exports: a reduced file is always measured against fp32.")
    data = data_path(args.data) if args.data else None
    if data is not None and not data.exists():
        raise GraftError(f"{data}: no such file or folder.")
    calibration = find_images(args.calibration) if args.calibration else None
    if args.calibration and not calibration:
        raise GraftError("No image files in " + ", ".join(args.calibration) + ".")
    return {"keep_float": keep_float, "data": data, "calibration": calibration}


def _reduced(args: argparse.Namespace, options: dict, session, verify: list[str], opset: int, tolerance: float) -> int:
    """fp16/int8: calibration images from --calibration or the training split, the comparison on the
    validation split (or the --image images), one table."""
    import sys

    from engine.export.compare import validation_images
    from engine.export.precision import export_precision

    found = validation_images(session, options["data"])
    calibration = options["calibration"] or found.calibration
    compare, targets, where = found.validation, found.targets, found.where
    if not compare and args.image:
        compare, targets, where = list(args.image), None, "given with --image"
    if args.precision == "int8" and not calibration:
        print(f"note: no calibration images ({found.where}): int8 falls back to dynamic quantization of the "
              "linear layers. Give --data or --calibration for a full int8 model.", file=sys.stderr)

    def progress(message: str) -> None:
        print(f"... {message}", file=sys.stderr, flush=True)

    report = export_precision(session, args.onnx, args.precision, calibration=calibration, images=compare,
                              targets=targets, where=where, keep_float=options["keep_float"], verify_images=verify,
                              runs=args.runs, opset=opset, tolerance=tolerance, exporter=args.exporter,
                              progress=progress)
    print(report.format())
    return 0
