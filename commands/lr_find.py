"""``main.py lr-find``: the learning-rate range test; prints a suggested rate, optionally plots the curve."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("learning rate finder: a short run with a growing rate; prints the suggested learning rate (nothing is "
        "learnt or saved) and can plot the curve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .train import add_setup_arguments

    add_setup_arguments(parser)
    parser.add_argument("--start-lr", type=float, default=1e-7, help="the rate of the first step (default 1e-7)")
    parser.add_argument("--end-lr", type=float, default=10.0, help="the rate of the last step (default 10)")
    parser.add_argument("--steps", type=int, default=100, help="steps of the test at most (default 100)")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="draw the curve with the suggestion into a PNG")
    parser.add_argument("--csv", default=None, metavar="FILE.csv", help="write the curve (rate, loss, smoothed loss)")


def _target(text: str | None, suffix: str) -> Path | None:
    from engine.files import check_target

    if not text:
        return None
    path = Path(text).expanduser()
    if path.suffix.lower() != suffix:
        path = path.with_name(path.name + suffix)
    return check_target(path)


def run(args: argparse.Namespace) -> int:
    from engine.training.config import TrainConfig
    from engine.training.rate_finder import RateFinder

    from .common import data_path
    from .train import _ctrl_c_stops, _Printer, prepare_session, setting

    plot, table = _target(args.plot, ".png"), _target(args.csv, ".csv")
    config = TrainConfig(batch_size=setting(args, "batch_size"), lr_heads=setting(args, "lr_heads"),
                         lr_trunk=setting(args, "lr_trunk"), augment={"on": True, "off": False}.get(args.augment, "auto"),
                         device=args.device, num_workers=args.workers, seed=args.seed)
    config.validate()
    session, data = prepare_session(args, data_path(args.data))
    printer = _Printer(session.heads, title="Range test")
    finder = RateFinder(session, data, config, printer, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps)
    with _ctrl_c_stops(finder):
        result = finder.find()
    print(result.describe())
    if plot is not None:
        print(f"Wrote the curve to {result.write_png(plot).resolve()}")
    if table is not None:
        print(f"Wrote the curve's points to {result.write_csv(table).resolve()}")
    option = "--lr-heads" if result.heads_rate else "--lr-trunk"
    print(f"Train with it: graft train --data {args.data} {option} {result.suggestion:.2g} …")
    return 0
