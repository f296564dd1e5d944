"""Converted trunks kept on disk, so that the same frozen trunk is converted once per machine, not once
per process.

Every ``main.py train`` of a new head on the bundled network, every reopened project, starts from a trunk
this machine has converted before: the conversion (the TorchScript exporter, 1.5-2 s for the default
network on 2 cores, far more for a ViT) is the largest fixed cost of a heads-only run. The file is found
by a key over everything the ONNX graph depends on: the trunk's modules (their classes and ``repr``, which
holds their settings), its cut and taps, every weight's and buffer's bytes, the input's channels and
size, the opset and the torch and onnxruntime versions. A file found is still checked against PyTorch
before it is used (the caller does, as after a conversion), so a stale or damaged file only costs a
conversion. ``GRAFT_TRUNK_CACHE=off`` switches the store off, ``GRAFT_TRUNK_CACHE=/some/folder`` puts it
there (default: ``trunks/`` in :func:`engine.files.cache_dir`); it keeps the :data:`KEEP` newest files.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import nn

from engine.files import atomic_write, cache_dir

ENV = "GRAFT_TRUNK_CACHE"  # "auto" (default), "off" or a folder
KEEP = 8  # trunk files kept (the default network's is 13 MB)


def enabled() -> bool:
    return os.environ.get(ENV, "auto").strip().lower() not in ("off", "0", "false", "no")


def folder() -> Path:
    value = os.environ.get(ENV, "auto").strip()
    return Path(value).expanduser() if value.lower() not in ("", "auto", "on", "1", "true", "yes") else cache_dir() / "trunks"


def trunk_key(trunk: nn.Module, channels: int, size: int, opset: int) -> str:
    """A hex digest of what the converted graph depends on (see the module's docstring)."""
    import onnxruntime

    h = hashlib.sha256()
    h.update(repr((torch.__version__, onnxruntime.__version__, opset, channels, size,
                   getattr(trunk, "cut_at", None), getattr(trunk, "taps", None))).encode())
    h.update(repr(trunk).encode())
    h.update(repr([(n, type(m).__module__, type(m).__qualname__) for n, m in trunk.named_modules()]).encode())
    for name, t in [*trunk.named_parameters(), *trunk.named_buffers()]:
        h.update(repr((name, tuple(t.shape), str(t.dtype))).encode())
        data = t.detach().cpu().contiguous().reshape(-1)  # 0-d (BatchNorm's batch count) viewed as 1-d
        h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return h.hexdigest()[:32]


def load(key: str) -> bytes | None:
    """The stored graph for ``key``, or None (none stored, unreadable, or the store is off)."""
    if not enabled():
        return None
    path = folder() / f"{key}.onnx"
    try:
        data = path.read_bytes()
        os.utime(path)  # the newest use is kept longest
    except OSError:
        return None
    return data or None


def save(key: str, data: bytes) -> None:
    """Keep ``data`` under ``key`` and drop the oldest files past :data:`KEEP`. Failing to write (a full
    or read-only disk) only means the next process converts again: never an error."""
    if not enabled():
        return
    try:
        target = folder()
        target.mkdir(parents=True, exist_ok=True)
        atomic_write(target / f"{key}.onnx", lambda tmp: tmp.write_bytes(data))
        files = sorted(target.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[KEEP:]:
            old.unlink(missing_ok=True)
    except Exception:  # noqa: BLE001 - GraftError/OSError: a cache that cannot be written is no cache
        pass


def forget(key: str) -> None:
    """Remove a stored graph that failed its check."""
    try:
        (folder() / f"{key}.onnx").unlink(missing_ok=True)
    except OSError:
        pass
