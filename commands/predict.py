"""``main.py predict``: run an exported ONNX file on images with onnxruntime. Never imports torch."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any, TextIO

HELP = "predict images with an exported ONNX file (onnxruntime only, preprocessing from its metadata)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL.onnx", help="a file written by 'main.py export' (fp32, fp16 or int8)")
    parser.add_argument("images", nargs="+", metavar="PATH",
                        help="image files, or folders (searched recursively for images)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per image (all values)")
    parser.add_argument("--csv", metavar="OUT.csv",
                        help="write one row per image (every head's prediction and probabilities) to this file, "
                             "with a progress bar on stderr, instead of printing the predictions")
    parser.add_argument("--batch-size", type=int, default=16, help="images per onnxruntime run (default 16)")
    parser.add_argument("--threads", type=int, default=0, help="onnxruntime threads (default: all cores)")


class ProgressBar:
    """``[####....]  40%  120/300 images`` redrawn in place on a terminal, at most ten times a second;
    nothing on a stream that is not one (a log file wants no carriage returns)."""

    WIDTH = 28

    def __init__(self, total: int, stream: TextIO | None = None, what: str = "images") -> None:
        self.total, self.what = total, what
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.shown = False
        self.last = 0.0

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.tty or (now - self.last < 0.1 and done < self.total):
            return
        self.last = now
        share = done / self.total if self.total else 1.0
        filled = int(round(self.WIDTH * share))
        self.stream.write(f"\r\033[K[{'#' * filled}{'.' * (self.WIDTH - filled)}] {share * 100:3.0f}%  "
                          f"{done}/{self.total} {self.what}")
        self.stream.flush()
        self.shown = True

    def clear(self) -> None:
        """Take the bar off the line before other text is printed."""
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


def csv_columns(predictor: Any) -> list[str]:
    """``image``, then per output: the prediction (single: the class; multi: the labels above the
    threshold, ``;``-separated) and one ``output:name`` column per class, label, target or feature."""
    columns = ["image"]
    for name in predictor.outputs:
        spec = predictor.specs.get(name)
        if spec is not None and spec.kind in ("single", "multi"):
            columns.append(name)
        names = spec.label_names if spec is not None else None
        if names is None:
            shape = predictor.session.get_outputs()[predictor.outputs.index(name)].shape
            width = shape[-1] if shape and isinstance(shape[-1], int) else 0
            names = [str(i) for i in range(width)]
        columns += [f"{name}:{n}" for n in names]
    return columns


def csv_row(image: str, preds: dict[str, Any]) -> dict[str, str]:
    row = {"image": image}
    for name, p in preds.items():
        if p.kind == "single":
            row[name] = p.label or ""
        elif p.kind == "multi":
            above = set(p.labels)
            row[name] = ";".join(n for n in p.names if n in above)  # in the head's label order
        for n, v in zip(p.names, p.values):
            row[f"{name}:{n}"] = f"{float(v):.6g}"
    return row


def run(args: argparse.Namespace) -> int:
    """Predictions for every readable image; an unreadable one gets its own error line on stderr, the
    others are still predicted, and the exit code is then 1."""
    import json

    from engine.errors import GraftError
    from engine.export.metadata import OnnxPredictor, find_images

    if args.batch_size < 1:
        raise GraftError("The batch size must be at least 1.")
    if args.csv and args.json:
        raise GraftError("Choose --csv or --json, not both.")
    if args.csv:
        from engine.files import check_target

        check_target(args.csv)  # before predicting thousands of images
    predictor = OnnxPredictor(args.model, threads=args.threads)
    paths = find_images(args.images)
    if not paths:
        raise GraftError("No image files in " + ", ".join(args.images) + ".")
    if args.csv:
        return _to_csv(args, predictor, paths)
    failed = 0
    for image, preds in predictor.predict_each(paths, batch_size=args.batch_size):
        if isinstance(preds, GraftError):
            failed += 1
            sys.stdout.flush()  # keep the two streams in order on a terminal
            print(f"graft: error: {preds}", file=sys.stderr, flush=True)
            continue
        if args.json:
            print(json.dumps({"image": str(image), "outputs": {n: p.to_dict() for n, p in preds.items()}}))
            continue
        print(image)
        for p in preds.values():
            print(f"  {p.format()}")
    return 1 if failed else 0


def _to_csv(args: argparse.Namespace, predictor: Any, paths: list) -> int:
    import csv
    from pathlib import Path

    from engine.errors import GraftError
    from engine.files import atomic_write
    from engine.units import plural

    columns = csv_columns(predictor)
    rows: list[dict[str, str]] = []
    failed: list[tuple[str, str]] = []
    bar = ProgressBar(len(paths))
    for done, (image, preds) in enumerate(predictor.predict_each(paths, batch_size=args.batch_size), 1):
        if isinstance(preds, GraftError):
            failed.append((str(image), str(preds)))
            bar.clear()
            print(f"graft: skipped: {preds}", file=sys.stderr, flush=True)
        else:
            rows.append(csv_row(str(image), preds))
        bar.update(done)
    bar.clear()

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    out = Path(args.csv).expanduser()
    atomic_write(out, write)
    summary = f"{plural(len(rows), 'image')} predicted into {out}"
    if failed:
        summary += f"; {plural(len(failed), 'unreadable file')} skipped"
    print(summary, file=sys.stderr)
    return 1 if failed else 0
