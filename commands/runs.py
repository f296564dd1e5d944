"""``main.py runs PROJECT``: the training runs a project keeps, one row per run in order."""
from __future__ import annotations

import argparse

HELP = "list a project's training runs: settings, outcome and each head's metric, one row per run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", metavar="PROJECT.graft", help="a project saved by Graft")


def run(args: argparse.Namespace) -> int:
    from engine.project.project_file import read_project
    from engine.training.runs import runs_of, runs_table

    recipe, _ = read_project(args.project)
    records = runs_of(recipe.get("extra"))
    if not records:
        print(f"{args.project} records no training run yet.")
        return 0
    print(runs_table(records).text())
    return 0
