"""Graft: ``python main.py`` opens the window; ``python main.py SUBCOMMAND`` runs the same engine headless."""
from __future__ import annotations

import sys

from commands.cli import build_parser, main, run_gui

__all__ = ["build_parser", "main", "run_gui"]

if __name__ == "__main__":
    sys.exit(main())
