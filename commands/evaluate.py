"""``main.py evaluate``: per-head metrics of a trained ``.graft`` project on labelled data."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from engine.units import plural

from .common import DATA_HELP, data_path

HELP = "print per-head loss and metrics of a .graft project on an image folder or CSV manifest"

from engine.training.record import DEFAULT_SEED, DEFAULT_VAL_FRACTION  # noqa: E402  load_data's defaults


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", metavar="FILE.graft", help="a project saved by Graft (e.g. by 'train')")
    parser.add_argument("--data", required=True, metavar="DIR_OR_CSV",
                        help=DATA_HELP)
    parser.add_argument("--split", default="all", choices=("all", "train", "val"),
                        help="which images to evaluate (default: all of them). On the data the project was "
                             "trained on, train/val are the split training used (same seed and fraction); "
                             "'all' then includes the images it learned from")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--workers", type=int, default=None, help="image decoding processes (default: automatic)")
    parser.add_argument("--tta", choices=("none", "flip", "flip+crops"), default="none",
                        help="test-time augmentation: flip (each image and its mirror image) or flip+crops (also "
                             "four corner crops); probabilities (values for regression) averaged over the views")
    parser.add_argument("--errors", metavar="FILE.csv",
                        help="write every mistake (image, head, truth, prediction, confidence, loss), worst first")
    parser.add_argument("--report", metavar="FILE.html",
                        help="write a self-contained HTML report: each head's metrics, confusion matrix, most "
                             "confident mistakes with their heatmaps, and the label audit")
    parser.add_argument("--suggestions", metavar="FILE.csv",
                        help="write the label audit (labels the model contradicts with high confidence, and its "
                             "labels for blank cells) to a new CSV; the data itself is never changed")
    parser.add_argument("--trust", action="store_true",
                        help="the project was made from a pickled model file: allow loading that file again "
                             "(it can run code: only for files you trust)")


def _same_file(a: str | Path, b: Path) -> bool:
    try:
        return Path(a).expanduser().resolve() == b.expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return False


def training_split(extra: dict[str, Any] | None, data_file: Path) -> tuple[int, float, bool | None]:
    """``(seed, val_fraction, same)`` for evaluating ``data_file``: when it is the data the project was
    trained on (``same`` True), the seed and validation fraction training used; otherwise load_data's
    defaults. ``same`` is None when the project does not say what it was trained on."""
    from engine.training.record import TrainingRecord

    record = TrainingRecord.latest(extra)
    if record is None or record.data is None:
        return DEFAULT_SEED, DEFAULT_VAL_FRACTION, None
    if not _same_file(record.data, data_file):
        return DEFAULT_SEED, DEFAULT_VAL_FRACTION, False
    return record.seed, float(record.val_fraction), True


def describe_selection(data, split: str, same: bool | None, name: str) -> str:
    """One line saying which images are evaluated, e.g. ``Evaluating the validation split of labels.csv
    (seed 3, 20 %, as in training): 72 images``."""
    if data.split_from == "column":
        how = "set by its split column"
    elif data.split_from == "folders":
        how = "set by its train/val folders"
    else:
        how = f"seed {data.seed}, {data.val_fraction * 100:g} %"
    if same:
        how += ", as in training"
    elif same is False:
        how += "; not the data the project was trained on"
    else:
        how += "; the project does not say which data it was trained on"
    if split == "all":
        n = len(data.train) + len(data.val)
        line = f"Evaluating all {n} images of {name}"
        if same and data.train:
            line += (f", including the {len(data.train)} training images the model learned from "
                     "(--split val for a fair measure)")
        return line
    chosen = data.val if split == "val" else data.train
    which = "validation" if split == "val" else "training"
    return f"Evaluating the {which} split of {name} ({how}): {len(chosen)} images"


def run(args: argparse.Namespace) -> int:
    from engine.data.loading import load_data
    from engine.errors import GraftError
    from engine.explain.mistakes import refuse_data
    from engine.training.evaluation import evaluate
    from engine.project.project_file import open_project

    if args.batch_size < 1:
        raise GraftError("The batch size must be at least 1.")
    outputs = _output_files(args)
    session = open_project(Path(args.project).expanduser(), trust=args.trust)
    if not session.heads:
        raise GraftError(f"{Path(args.project).name} has no heads to evaluate.")
    data_file = data_path(args.data)
    for path in outputs.values():  # before any work: the data is never written over
        refuse_data(path, [data_file])
    seed, fraction, same = training_split(session.project_extra, data_file)
    # Evaluation data may lack classes (a test set of cats only); unknown classes are still refused.
    data = load_data(data_file, session.heads, seed=seed, val_fraction=fraction, require_every_class=False)
    if data.skipped:
        print(f"{plural(len(data.skipped), 'file')} skipped (unreadable or not in a class folder)")
    selection = describe_selection(data, args.split, same, data_file.name)
    print(selection)
    report = evaluate(session, data, batch_size=args.batch_size, device=args.device, split=args.split,
                      num_workers=args.workers, tta=args.tta)
    print(report.format())
    _write_outputs(outputs, session, data, report, selection, data_file)
    return 0


def _output_files(args: argparse.Namespace) -> dict[str, Path]:
    """The files asked for, checked before any work (their folder exists and takes files; no two alike)."""
    from engine.errors import GraftError
    from engine.files import check_target

    files = {k: Path(v).expanduser() for k in ("errors", "report", "suggestions") if (v := getattr(args, k, None))}
    resolved = [p.resolve() for p in files.values()]
    if len(set(resolved)) != len(resolved):
        raise GraftError("--errors, --report and --suggestions must name different files.")
    for path in files.values():
        check_target(path)
    return files


def _write_outputs(files: dict[str, Path], session, data, report, selection: str, data_file: Path) -> None:
    from engine.explain import mistakes

    protected = [data_file] if data_file.is_file() else []
    root = data.root
    if "errors" in files:
        rows = mistakes.errors_table(report)
        mistakes.write_errors(files["errors"], rows, root=root, protected=protected)
        print(f"Wrote {plural(len(rows), 'mistake')} to {files['errors']}")
    if "suggestions" in files:
        audit = mistakes.label_audit(report)
        mistakes.write_suggestions(files["suggestions"], audit, root=root, protected=protected)
        contradicted = sum(1 for s in audit if s.reason == "contradicted")
        print(f"Wrote the label audit ({contradicted} likely mislabelled, {len(audit) - contradicted} blank cells "
              f"filled) to {files['suggestions']}")
    if "report" in files:
        from engine.explain.report import build_report, write_report

        html = build_report(session, report, data_name=data_file.name, selection=selection)
        write_report(files["report"], html)
        print(f"Wrote the report to {files['report']}")
