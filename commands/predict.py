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
    parser.add_argument("--masks", metavar="DIR",
                        help="write each segment head's mask as a PNG of class indices (one per pixel of the input "
                             "square; a palette PNG, coloured as PASCAL VOC masks are) into this folder, named "
                             "IMAGE.HEAD.png; the JSON and CSV name the file (default with --json: ./masks, "
                             "with --csv: OUT_masks beside the CSV)")
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
        if spec is not None and spec.kind in ("single", "multi", "segment", "detect"):
            columns.append(name)  # segment: the mask file; detect: the boxes as JSON
        names = spec.label_names if spec is not None else None
        if names is None:
            shape = predictor.session.get_outputs()[predictor.outputs.index(name)].shape
            width = shape[-1] if shape and isinstance(shape[-1], int) else 0
            names = [str(i) for i in range(width)]
        columns += [f"{name}:{n}" for n in names]
    return columns


def csv_row(image: str, preds: dict[str, Any], input_spec: Any = None) -> dict[str, str]:
    import json

    row = {"image": image}
    for name, p in preds.items():
        if p.kind == "single":
            row[name] = p.label or ""
        elif p.kind == "multi":
            above = set(p.labels)
            row[name] = ";".join(n for n in p.names if n in above)  # in the head's label order
        elif p.kind == "segment":
            row[name] = p.mask_file or ""
        elif p.kind == "detect":
            row[name] = json.dumps(p.to_dict(input_spec)["boxes"])
        for n, v in zip(p.names, p.values):
            row[f"{name}:{n}"] = f"{float(v):.6g}"
    return row


class MaskFiles:
    """Where each image's segment masks go: ``DIR/IMAGE.HEAD.png`` (a second image of the same name, from
    another folder, gets ``IMAGE-2.HEAD.png``)."""

    def __init__(self, folder: Any) -> None:
        self.folder = folder
        self.stems: dict[str, str] = {}  # image path -> its stem in the folder
        self.taken: set[str] = set()

    @staticmethod
    def _safe(text: str) -> str:
        import re

        return re.sub(r"[^\w.-]", "_", text).strip(".") or "image"

    def write(self, image: Any, preds: dict[str, Any]) -> None:
        """Write the masks of ``preds`` (one image's) and set each prediction's ``mask_file``."""
        from pathlib import Path

        from engine.export.dense_decode import write_mask

        key = str(image)
        if key not in self.stems:
            base = self._safe(Path(key).stem)
            stem, k = base, 1
            while stem.lower() in self.taken:
                k += 1
                stem = f"{base}-{k}"
            self.taken.add(stem.lower())
            self.stems[key] = stem
        for name, p in preds.items():
            if p.kind == "segment":
                p.mask_file = str(write_mask(p.mask, self.folder / f"{self.stems[key]}.{self._safe(name)}.png"))


def mask_files(args: argparse.Namespace, predictor: Any) -> MaskFiles | None:
    """The folder segment masks are written to (made now, before predicting), or None: none asked for
    (plain text without --masks) or no segment head."""
    from pathlib import Path

    from engine.errors import GraftError

    if not any(spec is not None and spec.kind == "segment" for spec in predictor.specs.values()):
        if args.masks:
            raise GraftError(f"--masks: {Path(args.model).name} has no segment head, so there are no masks to write.")
        return None
    if args.masks:
        folder = Path(args.masks).expanduser()
    elif args.csv:
        out = Path(args.csv).expanduser()
        folder = out.with_name(out.stem + "_masks")
    elif args.json:
        folder = Path("masks")
    else:
        return None
    if folder.exists() and not folder.is_dir():
        raise GraftError(f"Cannot write the masks into {folder}: it is a file.")
    try:
        folder.mkdir(exist_ok=True)
    except FileNotFoundError:
        raise GraftError(f"Cannot write the masks into {folder}: folder {folder.parent} does not exist.") from None
    except OSError as exc:
        raise GraftError(f"Cannot make the masks folder {folder}: {exc.strerror or exc}.") from None
    return MaskFiles(folder)


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
    masks = mask_files(args, predictor)
    if args.csv:
        return _to_csv(args, predictor, paths, masks)
    failed = 0
    for image, preds in predictor.predict_each(paths, batch_size=args.batch_size):
        if isinstance(preds, GraftError):
            failed += 1
            sys.stdout.flush()  # keep the two streams in order on a terminal
            print(f"graft: error: {preds}", file=sys.stderr, flush=True)
            continue
        if masks is not None:
            masks.write(image, preds)
        if args.json:
            print(json.dumps({"image": str(image),
                              "outputs": {n: p.to_dict(predictor.input_spec) for n, p in preds.items()}}))
            continue
        print(image)
        for p in preds.values():
            print(f"  {p.format()}" + (f" -> {p.mask_file}" if p.mask_file else ""))
    return 1 if failed else 0


def _to_csv(args: argparse.Namespace, predictor: Any, paths: list, masks: MaskFiles | None = None) -> int:
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
            if masks is not None:
                masks.write(image, preds)
            rows.append(csv_row(str(image), preds, predictor.input_spec))
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
    if masks is not None and rows:
        summary += f", masks into {masks.folder}"
    if failed:
        summary += f"; {plural(len(failed), 'unreadable file')} skipped"
    print(summary, file=sys.stderr)
    return 1 if failed else 0
