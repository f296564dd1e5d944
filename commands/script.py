"""``main.py script``: a standalone training script (torch, torchvision, NumPy, Pillow) for a project."""
from __future__ import annotations

import argparse
from pathlib import Path

HELP = ("write one readable Python training script that rebuilds, trains and exports what a .graft project "
        "trains, without Graft (torch, torchvision, NumPy and Pillow only)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", metavar="FILE.graft", help="a project saved by Graft (e.g. by 'train')")
    parser.add_argument("--out", default="train_model.py", metavar="SCRIPT.py",
                        help="the script to write (default ./train_model.py)")
    parser.add_argument("--trust", action="store_true",
                        help="the project was made from a pickled model file: allow loading that file again")


def run(args: argparse.Namespace) -> int:
    from engine.export.script import write_training_script
    from engine.files import check_target
    from engine.project.project_file import open_project

    out = check_target(Path(args.out).expanduser())  # before opening the project
    project = Path(args.project).expanduser()
    session = open_project(project, trust=args.trust)
    path = write_training_script(session, out, project.name)
    print(f"Wrote {path}: run it with  python {path} --data PATH [--epochs N] [--out DIR]")
    return 0
