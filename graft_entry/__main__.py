"""``graft`` (and ``python -m graft``): the command line, or the window without a subcommand;
``graft-gui``: the window, started without a console on Windows."""
from __future__ import annotations

import sys

import graft  # noqa: F401  (makes the parts importable by their names)


def main() -> int:
    from commands.cli import main as cli_main

    return cli_main()


def gui() -> int:
    from commands.cli import run_gui

    return run_gui(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
