"""What the process sets up before PyTorch loads, per system.

On Apple silicon, PyTorch's MPS device lacks some operations; with ``PYTORCH_ENABLE_MPS_FALLBACK=1`` (read
when torch first loads) those run on the CPU with a warning instead of failing, so Graft sets it on macOS
unless the user chose otherwise.
"""
from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

MPS_FALLBACK = "PYTORCH_ENABLE_MPS_FALLBACK"
MPS_NOTE = "On Apple silicon, operations the MPS device lacks run on the CPU (PYTORCH_ENABLE_MPS_FALLBACK=1)."


def prepare(environ: MutableMapping[str, str] | None = None, platform: str | None = None) -> list[str]:
    """Set what this system needs in ``environ`` (the process's by default); the notes say what."""
    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    notes: list[str] = []
    if platform == "darwin":
        environ.setdefault(MPS_FALLBACK, "1")
        if environ.get(MPS_FALLBACK) == "1":
            notes.append(MPS_NOTE)
    return notes
