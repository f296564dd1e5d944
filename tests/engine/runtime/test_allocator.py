"""engine.runtime.allocator: set once per process; large blocks come from the heap afterwards; switched off
by GRAFT_ALLOCATOR=system; reported by ``main.py --version``. Each case runs in a fresh interpreter:
the setting belongs to a process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                           reason="the tuning is for glibc")

# Allocates and frees a 64 MiB block through malloc and reports what glibc's mallinfo2 says about
# memory mapped for it (hblkhd: bytes in mmap'd blocks) while it is held.
PROBE = r"""
import ctypes, json, sys
sys.path.insert(0, sys.argv[1])
from engine.runtime import allocator

class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
first = allocator.configure_allocator()
again = allocator.configure_allocator()
before = libc.mallinfo2().hblkhd
block = libc.malloc(64 << 20)
mapped = libc.mallinfo2().hblkhd - before
libc.free(block)
print(json.dumps({"same": first is again, "calls": allocator._calls, "applied": first.applied,
                  "text": first.describe(), "mapped": mapped}))
"""


def probe(**env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GRAFT_ALLOCATOR"}
    out = subprocess.run([sys.executable, "-c", PROBE, str(ROOT)], capture_output=True, text=True, timeout=120,
                         env={**environ, **env}, check=True)
    return json.loads(out.stdout)


@glibc
def test_applied_once_and_large_blocks_come_from_the_heap():
    tuned = probe()
    assert tuned["same"] and tuned["applied"]
    assert tuned["calls"] == 3, "three mallopt settings, made by the first call only"
    assert tuned["text"].startswith("glibc ") and "tuned" in tuned["text"]
    assert tuned["mapped"] == 0, "a 64 MiB block is no longer a fresh mmap"


@glibc
def test_graft_allocator_system_leaves_glibc_as_it_is():
    plain = probe(GRAFT_ALLOCATOR="system")
    assert plain["same"] and not plain["applied"] and plain["calls"] == 0
    assert plain["text"].endswith("default settings (GRAFT_ALLOCATOR=system)")
    assert plain["mapped"] >= 64 << 20, "glibc's default maps a block that large"


@glibc
def test_the_users_own_glibc_settings_are_kept():
    own = probe(MALLOC_ARENA_MAX="2")
    assert not own["applied"] and own["calls"] == 0 and "as set by MALLOC_ARENA_MAX" in own["text"]


def version(**env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "GRAFT_ALLOCATOR"}
    out = subprocess.run([sys.executable, str(ROOT / "main.py"), "--version"], capture_output=True, text=True,
                         timeout=120, env={**environ, **env}, check=True)
    assert out.stderr == ""
    return out.stdout


@pytest.mark.slow
def test_main_version_reports_the_environment_and_the_allocator():
    import onnxruntime
    import torch

    import engine

    text = version()
    rows = dict(line.split(None, 1) for line in text.strip().splitlines())
    assert rows["graft"] == engine.__version__
    assert rows["torch"].startswith(f"{torch.__version__}, torchvision ") and "CPU threads" in rows["torch"]
    assert rows["onnxruntime"].startswith(onnxruntime.__version__)
    if sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION"):
        assert rows["allocator"].startswith("glibc ") and ", tuned (" in rows["allocator"]
        assert "default settings (GRAFT_ALLOCATOR=system)" in version(GRAFT_ALLOCATOR="system")
    else:
        assert rows["allocator"].startswith("system default")
