"""``main.py evaluate``: per-head metrics of a trained ``.graft`` project on labelled data."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import DATA_HELP, data_path

HELP = "print per-head loss and metrics of a .graft project on an image folder or CSV manifest"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", metavar="FILE.graft", help="a project saved by Graft (e.g. by 'train')")
    parser.add_argument("--data", required=True, metavar="DIR_OR_CSV",
                        help=DATA_HELP)
    parser.add_argument("--split", default="all", choices=("all", "train", "val"),
                        help="which images to evaluate (default: all of them)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--workers", type=int, default=None, help="image decoding processes (default: automatic)")


def run(args: argparse.Namespace) -> int:
    from engine.datasets import load_data
    from engine.errors import GraftError
    from engine.evaluation import evaluate
    from engine.project import open_project

    if args.batch_size < 1:
        raise GraftError("The batch size must be at least 1.")
    session = open_project(Path(args.project).expanduser())
    if not session.heads:
        raise GraftError(f"{Path(args.project).name} has no heads to evaluate.")
    data = load_data(data_path(args.data), session.heads)
    if data.skipped:
        print(f"{len(data.skipped)} file(s) skipped (unreadable or not in a class folder)")
    report = evaluate(session, data, batch_size=args.batch_size, device=args.device, split=args.split,
                      num_workers=args.workers)
    print(report.format())
    return 0
