"""The command line's dispatcher: no subcommand opens the window, ``SUBCOMMAND`` runs the same engine
headless. ``main.py`` in the repository and the installed ``graft`` command both end here."""
from __future__ import annotations

import argparse
import importlib
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    from commands import NAMES

    parser = argparse.ArgumentParser(prog="graft", description="Model surgery: cut a pretrained network, "
                                     "graft new heads, train, export to ONNX.")
    parser.add_argument("--version", action="store_true",
                        help="print the version and the environment (libraries, threads, memory allocator)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in NAMES:
        try:
            module = importlib.import_module(f"commands.{name.replace('-', '_')}")
        except ModuleNotFoundError as exc:
            if exc.name != f"commands.{name.replace('-', '_')}":
                raise
            continue
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def run_gui(argv: list[str]) -> int:
    from engine.runtime.allocator import configure_allocator
    from engine.system import prepare

    prepare()
    configure_allocator()  # once per process: graft-gui comes here without main()
    from app.application import run_app

    return run_app(argv)


def print_version() -> int:
    from engine.runtime.environment import describe_environment

    print(describe_environment())
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from engine.system import prepare

    prepare()  # before torch loads
    from commands import NAMES
    from engine.runtime.allocator import configure_allocator

    configure_allocator()  # before any tensor: the window and every subcommand reuse large blocks
    # No subcommand: the window, which takes its own options and a file to open (main.py project.graft).
    first = argv[0] if argv else ""
    if first == "--version":
        return print_version()
    if not argv or (first.startswith("-") and first not in ("-h", "--help")) or (
            first not in NAMES and os.path.exists(first)):
        return run_gui(argv)
    args = build_parser().parse_args(argv)
    args._argv = list(argv)  # train --devices N runs the same command in N processes
    if not getattr(args, "_run", None):
        return print_version() if args.version else run_gui([])
    from engine.errors import GraftError

    try:
        return int(args._run(args) or 0)
    except GraftError as exc:
        from engine.training.launch import record_worker_error

        if not record_worker_error(exc):  # a process of train --devices N: its launcher says it, once
            print(f"graft: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("graft: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print("graft: error: out of memory", file=sys.stderr)
        return 1
    except OSError as exc:  # a file that vanished, a full disk, a folder we may not write
        print(f"graft: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # python -m commands.cli: how train --devices N starts its processes
    sys.exit(main())
