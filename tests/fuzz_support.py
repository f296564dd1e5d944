"""Running one fuzzed input under bounds, for the property-based tests (tests/**/test_fuzz_*.py).

The property every loader must keep, whatever the bytes it is given: it returns (a correct load) or raises
one :class:`GraftError`; never another exception, never a hang, never memory past a stated bound, never a
file written outside the folder it was given. :func:`bounded` checks all four at once by running the call
in a forked child (the test process's imports are shared, so a fork costs milliseconds):

* the outcome comes back through a pipe: ``ok`` (with a summary of the value), ``graft`` (the message) or
  ``crash`` (any other exception's traceback);
* a child still running after ``timeout`` seconds is killed: ``timeout``;
* the child's address space is capped (``RLIMIT_AS``), so a decompression bomb cannot take the machine (it
  has 23 GB shared by a team), and its peak resident memory above what it started with is measured from
  ``/proc/self/status`` (VmHWM − VmRSS at the start): ``memory`` when past ``memory_mb``;
* an audit hook (:func:`sys.addaudithook`) records every file the child opens for writing, creates,
  renames, removes or links: a path outside ``allowed`` is reported in ``outside``.

Profiles (tests/conftest.py): ``ci`` (the default, a few dozen examples per property, derandomized so the
suite is stable) and ``thorough`` (``HYPOTHESIS_PROFILE=thorough``: thousands, random).
"""
from __future__ import annotations

import ctypes
import copy
import os
import pickle
import resource
import select
import signal
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.errors import GraftError

DEFAULT_MEMORY_MB = 300  # peak resident memory a load may add (the fuzzed files are small or bombs)
ADDRESS_SPACE_MB = 3000  # hard cap on the child's address space growth: a bomb hits it, not the machine
DEFAULT_TIMEOUT = 30.0  # seconds; generous, the machine's cores are shared and loaded
WRITE_EVENTS = {"os.rename", "os.replace", "os.remove", "os.unlink", "os.rmdir", "os.mkdir", "os.link",
                "os.symlink", "os.truncate", "shutil.copyfile", "shutil.move", "shutil.rmtree", "os.chmod"}
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

COUNTS: Counter[str] = Counter()  # examples run per input kind and outcome, printed at the session's end


@dataclass
class Outcome:
    kind: str  # "ok" | "graft" | "crash" | "timeout" | "memory" | "died"
    detail: str = ""
    peak_mb: float = 0.0
    outside: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def problem(self, memory_mb: float) -> str | None:
        """What breaks the property, or None."""
        if self.kind in ("crash", "timeout", "died"):
            return f"{self.kind}: {self.detail}"
        if self.peak_mb > memory_mb:
            return f"memory: {self.peak_mb:.0f} MB above the start, bound {memory_mb} MB ({self.kind}: {self.detail[:300]})"
        if self.outside:
            return f"wrote outside its folder: {self.outside[:5]}"
        return None


def _status_kb(field_name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


def _inside(path: Any, allowed: tuple[str, ...]) -> bool:
    if isinstance(path, int):  # a file descriptor: opened earlier, already checked
        return True
    try:
        text = os.fsdecode(path)
    except TypeError:
        return True
    real = os.path.realpath(text)
    return real in ("/dev/null",) or any(real == a or real.startswith(a + os.sep) for a in allowed)


def _watch_writes(allowed: tuple[str, ...], outside: list[str]) -> None:
    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = (tuple(args) + (None, None, None))[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or \
                      (isinstance(flags, int) and flags & WRITE_FLAGS)
            if writing and not _inside(path, allowed):
                outside.append(f"open {path!r} {mode or flags}")
        elif event in WRITE_EVENTS:
            for path in args[:2]:
                if isinstance(path, (str, bytes, os.PathLike)) and not _inside(path, allowed):
                    outside.append(f"{event} {path!r}")

    sys.addaudithook(hook)


def _summary(value: Any) -> str:
    try:
        return repr(value)[:2000]
    except Exception as exc:  # noqa: BLE001 - a summary only
        return f"<unprintable {type(value).__name__}: {exc}>"


def _measure_from_here() -> None:
    """Make the child's peak resident memory measure what it allocates from now on. The parent's freed heap
    is still resident in the child (Graft's allocator setting keeps it for reuse), so a load that reuses it
    copies shared pages and its resident size never grows (a 200 MB load measured 2 MB): hand it back to the
    kernel (``malloc_trim``), then restart the kernel's high-water mark at the current size (``clear_refs``)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _child(fn: Callable[..., Any], args: tuple, allowed: tuple[str, ...], write_fd: int) -> None:
    outside: list[str] = []
    _measure_from_here()
    start_kb = _status_kb("VmRSS")
    try:
        sys.dont_write_bytecode = True  # a lazy import must not write a .pyc into the venv
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = _status_kb("VmSize") * 1024 + ADDRESS_SPACE_MB * 2 ** 20
        resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
        _watch_writes(allowed, outside)
        try:
            kind, detail = "ok", _summary(fn(*args))
        except GraftError as exc:
            kind, detail = "graft", str(exc)
        except BaseException:  # noqa: BLE001 - any other exception breaks the property: report it whole
            kind, detail = "crash", traceback.format_exc()[-4000:]
        peak_mb = max(0, _status_kb("VmHWM") - start_kb) / 1024
        os.write(write_fd, pickle.dumps((kind, detail, peak_mb, outside[:20])))
    finally:
        os._exit(0)


def bounded(fn: Callable[..., Any], *args: Any, allowed: tuple[str | Path, ...] = (), timeout: float = DEFAULT_TIMEOUT,
            label: str | None = None) -> Outcome:
    """Run ``fn(*args)`` in a forked child under the bounds above; ``allowed``: folders it may write in.
    ``label``: the input kind counted in :data:`COUNTS`."""
    roots = tuple(os.path.realpath(str(a)) for a in allowed)
    read_fd, write_fd = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    began = time.monotonic()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_fd)
        _child(fn, args, roots, write_fd)
    os.close(write_fd)
    chunks: list[bytes] = []
    deadline = began + timeout
    timed_out = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([read_fd], [], [], left)
            if ready:
                chunk = os.read(read_fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.close(read_fd)
        if timed_out:
            os.kill(pid, signal.SIGKILL)
        _, status, _ = os.wait4(pid, 0)
    seconds = time.monotonic() - began
    if timed_out:
        outcome = Outcome("timeout", f"still running after {timeout:.0f} s", seconds=seconds)
    elif not chunks:
        why = f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else f"exit {os.WEXITSTATUS(status)}"
        outcome = Outcome("died", f"the child ended without a result ({why})", seconds=seconds)
    else:
        kind, detail, peak_mb, outside = pickle.loads(b"".join(chunks))
        outcome = Outcome(kind, detail, peak_mb, outside, seconds)
    if label:
        COUNTS[f"{label}\t{outcome.kind}"] += 1
    return outcome


def check(fn: Callable[..., Any], *args: Any, allowed: tuple[str | Path, ...] = (), memory_mb: float = DEFAULT_MEMORY_MB,
          timeout: float = DEFAULT_TIMEOUT, label: str | None = None) -> Outcome:
    """:func:`bounded`, then fail the test (with what happened) unless the property holds."""
    outcome = bounded(fn, *args, allowed=allowed, timeout=timeout, label=label)
    problem = outcome.problem(memory_mb)
    if problem:
        raise AssertionError(problem)
    return outcome


def readable(message: str) -> bool:
    """A GraftError's message is meant for a person: not empty, not a traceback, not pages long (a huge cell
    or label quoted whole is no message)."""
    return bool(message.strip()) and "Traceback" not in message and len(message) < MAX_MESSAGE


MAX_MESSAGE = 2000
SHORT_MESSAGE = 300  # characters a refusal of a fuzzed file may take beside the paths it names


def short(message: str, *paths: str | Path) -> bool:
    """A refusal stays short whatever the input: at most :data:`SHORT_MESSAGE` characters beside the paths it
    names (``engine.units.quoted`` cuts what it quotes from the file: a 35,000-character line quoted whole, or
    cut to 60 characters without saying so, is no message)."""
    for path in paths:
        message = message.replace(str(path), "")
    return len(message) <= SHORT_MESSAGE


def mutate_json(draw: Callable[..., Any], value: Any, odd: Any, new_keys: list[str]) -> Any:
    """A copy of the JSON ``value`` with one to four places replaced by a value drawn from the strategy
    ``odd``, deleted, or given an extra key (one of ``new_keys``) or list item. Each drawn value is
    deep-copied: ``sampled_from`` hands every example the same list or dict, and a later mutation landing
    inside it would change what every later example draws."""
    from hypothesis import strategies as st

    value = copy.deepcopy(value)
    for _ in range(draw(st.integers(1, 4))):
        places = [p for p in paths_in(value) if p]
        if not places:
            return copy.deepcopy(draw(odd))
        place = draw(st.sampled_from(places))
        parent = value
        for key in place[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "replace", "replace", "delete", "add"]))
        if action == "replace":
            parent[place[-1]] = copy.deepcopy(draw(odd))
        elif action == "delete":
            del parent[place[-1]]
        elif isinstance(parent, dict):
            parent[draw(st.sampled_from(new_keys))] = copy.deepcopy(draw(odd))
        else:
            parent.insert(draw(st.integers(0, len(parent))), copy.deepcopy(draw(odd)))
    return value


class Fuzzed(bytes):
    """A fuzzed file's bytes, shown in a failure report by what was done to them (not kilobytes of repr):
    the test sets ``steps``, one line per change."""

    steps: list[str]

    def __repr__(self) -> str:
        return f"<{len(self)} bytes: {'; '.join(self.steps) or 'unchanged'}>"


def flip_bytes(draw: Callable[..., Any], data: bytes, most: int = 8) -> bytes:
    """``data`` with 1 to ``most`` bytes, drawn, XORed with a drawn non-zero value (a damaged file)."""
    from hypothesis import strategies as st

    for _ in range(draw(st.integers(1, most))):
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    return data


def paths_in(value: Any, prefix: tuple = ()):
    """Every place in a JSON value, as a tuple of keys and indices (the root is ``()``): where a fuzzed
    document gets its mutations."""
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from paths_in(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from paths_in(v, prefix + (i,))
