"""Graft installed as one package, ``graft``.

In the repository Graft's parts are top-level folders that import each other by name (``engine``,
``widgets``, ``app``, ``commands``, ``resources``). Installed, they live inside this package
(``graft/engine``, ``graft/app``, …), so the wheel puts nothing in site-packages under a generic name that
another package's ``app`` or ``engine`` could collide with. Importing ``graft`` makes those names refer to
the parts inside it, for this process only, before any of them is imported.
"""
from __future__ import annotations

import importlib
import sys

__version__ = "0.1.0"
PARTS = ("engine", "widgets", "app", "commands", "resources")


def _alias_parts() -> None:
    for name in PARTS:
        module = importlib.import_module(f"{__name__}.{name}")
        sys.modules[name] = module


if __name__ == "graft":  # installed; in the repository the parts are top-level already
    _alias_parts()
