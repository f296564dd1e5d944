"""``main.py runs PROJECT``: the training runs a project keeps, one row per run in order."""
from __future__ import annotations

import argparse

HELP = ("list a project's training runs: settings, outcome and each head's metric, one row per run (and, for a "
        "time-budgeted run, one row per stage: its time and validation result)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", metavar="PROJECT.graft", help="a project saved by Graft")


def run(args: argparse.Namespace) -> int:
    from engine.project.project_file import read_project
    from engine.training.runs import runs_of, runs_table, stage_table

    recipe, _ = read_project(args.project)
    records = runs_of(recipe.get("extra"))
    if not records:
        print(f"{args.project} records no training run yet.")
        return 0
    print(runs_table(records).text())
    for i, record in enumerate(records, 1):
        if record.stages:  # a time-budgeted run: what each stage bought
            print(f"\nRun {i}, by stage:")
            print(stage_table(record).text())
    return 0
