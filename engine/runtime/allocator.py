"""The process's memory allocator, set once at start so that large tensors are reused between batches.

glibc's malloc hands every block above its mmap threshold (at most 32 MiB, by default) to the kernel:
a fresh ``mmap`` faulted in page by page, unmapped again by ``free``. A CPU forward pass at batch 64
allocates dozens of such activations per batch, so on Linux half of a training step went to the kernel
(measured in ``bench/cpu_speed.py``). :func:`configure_allocator` raises the mmap and trim thresholds and
keeps every thread in the main arena (a worker thread's arena cannot hold blocks over 64 MiB and maps
them whatever the threshold), so freed blocks stay in the heap and the next batch reuses them.
Memory stays bounded by the largest working set: the heap only grows for blocks that are live at the
same time, and :func:`release_free_memory` hands the free pages back after a large pass.

jemalloc and tcmalloc, which Intel's PyTorch CPU guide recommends, only replace malloc when preloaded
(``LD_PRELOAD``) before the process starts; no package that Graft installs provides them, and the glibc
settings measured as fast (see the bench). One that is preloaded anyway is left alone and reported.

Elsewhere (macOS, Windows, musl) this is a no-op. ``GRAFT_ALLOCATOR=system`` leaves glibc as it is
(the bench uses it to measure Graft as it was).
"""
from __future__ import annotations

import ctypes
import os
import sys
import threading
from dataclasses import dataclass

ENV = "GRAFT_ALLOCATOR"  # "auto" (default) or "system": leave the allocator as it is
MIB = 1024 ** 2
# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
MMAP_THRESHOLD = 2 ** 31 - 1  # mallopt takes an int: every block up to 2 GiB comes from the heap
TRIM_THRESHOLD = 1024 * MIB  # free memory at the top of the heap kept for the next batch (at most this)
ARENA_MAX = 1  # one heap for all threads (training runs on a worker thread in the window)
_GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_ARENA_MAX", "GLIBC_TUNABLES")
_PRELOADED = ("jemalloc", "tcmalloc", "mimalloc")


@dataclass(frozen=True)
class AllocatorSetting:
    """What :func:`configure_allocator` found or did. ``applied``: Graft changed the allocator."""

    name: str
    detail: str
    applied: bool

    def describe(self) -> str:
        return f"{self.name} ({self.detail})" if self.detail else self.name


_setting: AllocatorSetting | None = None
_lock = threading.Lock()
_calls = 0  # mallopt calls made: the setting is applied once per process


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        version = libc.gnu_get_libc_version
    except (OSError, AttributeError):  # musl and others have no gnu_get_libc_version
        return None
    version.restype = ctypes.c_char_p
    return libc


def _decide() -> AllocatorSetting:
    global _calls
    preload = os.environ.get("LD_PRELOAD", "")
    other = next((name for name in _PRELOADED if name in preload), None)
    if other:
        return AllocatorSetting(other, "preloaded with LD_PRELOAD; left as it is", False)
    libc = _glibc()
    if libc is None:
        return AllocatorSetting("system default", f"nothing to set on {sys.platform}", False)
    version = libc.gnu_get_libc_version().decode()
    if os.environ.get(ENV, "auto").strip().lower() == "system":
        return AllocatorSetting(f"glibc {version} malloc, default settings", f"{ENV}=system", False)
    own = [name for name in _GLIBC_ENV if name in os.environ
           and (name != "GLIBC_TUNABLES" or "malloc" in os.environ[name])]
    if own:
        return AllocatorSetting(f"glibc {version} malloc", f"as set by {', '.join(own)}", False)
    values = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, ARENA_MAX))
    for param, value in values:
        _calls += 1
        if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) != 1:
            return AllocatorSetting(f"glibc {version} malloc, default settings", "mallopt refused", False)
    return AllocatorSetting(f"glibc {version} malloc, tuned",
                            f"blocks up to {MMAP_THRESHOLD // MIB} MiB reused from the heap, up to "
                            f"{TRIM_THRESHOLD // MIB} MiB of it kept free, one arena", True)


def configure_allocator() -> AllocatorSetting:
    """Set the allocator for this process (the first call does it; later ones return the same setting)."""
    global _setting
    with _lock:
        if _setting is None:
            _setting = _decide()
        return _setting


def allocator_setting() -> AllocatorSetting | None:
    """The setting made by :func:`configure_allocator`, or None before it was called."""
    return _setting


def release_free_memory() -> None:
    """Give the heap's free pages back to the system (``malloc_trim``), e.g. after caching features:
    the next pass allocates them again, but an idle window does not hold the peak of the last one."""
    if _setting is None or not _setting.applied:
        return
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(ctypes.c_size_t(0))
