"""``run_cli(*args)``: ``python main.py ARGS`` in the test process, as a ``subprocess.CompletedProcess``.

A child process pays ~3.7 CPU-s importing torch and torchvision before it does anything, and the command
line's tests start dozens. This runs the command line's own entry (``commands.cli.main``, what
``main.py`` calls) here instead, and gives back what a child would have: the exit status (``SystemExit``
included, an escaping exception as Python's traceback and status 1), and stdout and stderr as the
process's file descriptors 1 and 2 received them, so C++ warnings and whatever an exporter prints at the
descriptor level are in the text as they would be in a child's, decoded as ``text=True`` does.

What a child would start from, and what a run could leave behind, is set and put back around each run:
the working folder, ``os.environ`` (``env`` as a child's whole environment; ``OMP_NUM_THREADS`` there sets
torch's threads, which a child reads at its start), torch's threads and global random state (a fresh
process's seed: a random one), the warnings filters (a fresh interpreter's, printing to stderr rather
than into pytest's record), the SIGINT/SIGTERM handlers, the root logger's handlers and level,
``sys.argv`` and ``sys.path``.

Real processes stay where the behaviour is a process's: a kill (SIGKILL, Ctrl-C), ``predict`` never
importing torch, the training script without Graft, ``--devices N`` (torchrun), ``./graft cli``, and one
smoke test per subcommand (``main.py`` as a user starts it, exit 1 with one line and no traceback).
"""
from __future__ import annotations

import faulthandler
import io
import logging
import os
import signal
import subprocess
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
MAIN = ROOT / "main.py"
_SIGNALS = [s for s in (signal.SIGINT, signal.SIGTERM) if s is not None]


def _fresh_warnings() -> None:
    """A fresh interpreter's warnings filters (PEP 565), shown on sys.stderr as a child shows them."""
    warnings.resetwarnings()
    warnings.simplefilter("default")
    for category in (ResourceWarning, ImportWarning, PendingDeprecationWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("default", category=DeprecationWarning, module="__main__")
    for option in sys.warnoptions:  # -W and PYTHONWARNINGS, as the child would get them
        warnings._setoption(option)  # type: ignore[attr-defined]  # how Python itself applies them

    def show(message, category, filename, lineno, file=None, line=None):
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = show


def _decode(data: bytes) -> str:
    """As ``subprocess.run(text=True)`` reads a pipe: the locale's encoding, universal newlines."""
    return io.TextIOWrapper(io.BytesIO(data), encoding=None).read()


def _exit_status(code: object) -> int:
    """What Python makes of ``sys.exit(code)``: None is 0, a number itself, anything else printed and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def run_cli(*args: object, cwd: str | os.PathLike | None = ROOT, env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    """``subprocess.run([python, main.py, *args], capture_output=True, text=True, cwd=cwd, env=env)``,
    run in this process. ``timeout``: a run still going after it ends this test process with every
    thread's stack on the real stderr (a hung child would have been killed; here nothing can be)."""
    argv = [str(a) for a in args]
    from commands.cli import main

    saved_environ = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_threads = torch.get_num_threads()
    saved_rng = torch.get_rng_state()
    saved_signals = {s: signal.getsignal(s) for s in _SIGNALS}
    root = logging.getLogger()
    saved_logging = (list(root.handlers), root.level)
    saved_argv, saved_path = list(sys.argv), list(sys.path)
    saved_streams = (sys.stdout, sys.stderr)
    out_file, err_file = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    for stream in saved_streams:
        stream.flush()
    saved_fds = (os.dup(1), os.dup(2))
    real_err = open(os.dup(saved_fds[1]), "w", closefd=True)
    code = 1
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
            torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
        torch.seed()  # a fresh process's: drawn from the system's entropy
        if cwd is not None:
            os.chdir(cwd)
        sys.argv = [str(MAIN), *argv]
        os.dup2(out_file.fileno(), 1)
        os.dup2(err_file.fileno(), 2)
        # as a child's: the locale's encoding, stderr's errors backslashreplaced; line-buffered, so that
        # descriptor-level writes land in the order they happen
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, errors="backslashreplace", closefd=False)
        faulthandler.dump_traceback_later(timeout, exit=True, file=real_err)
        with warnings.catch_warnings():
            _fresh_warnings()
            try:
                code = _exit_status(main(argv))
            except SystemExit as exc:
                code = _exit_status(exc.code)
            except BaseException:  # noqa: BLE001 (what the interpreter does with an exception no one caught)
                traceback.print_exc()
                code = 1
    finally:
        faulthandler.cancel_dump_traceback_later()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        sys.stdout, sys.stderr = saved_streams
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for fd in saved_fds:
            os.close(fd)
        real_err.close()
        sys.argv[:], sys.path[:] = saved_argv, saved_path
        root.handlers[:] = saved_logging[0]
        root.setLevel(saved_logging[1])
        for s, handler in saved_signals.items():
            if handler is not None:
                signal.signal(s, handler)
        torch.set_rng_state(saved_rng)
        torch.set_num_threads(saved_threads)
        os.chdir(saved_cwd)
        if dict(os.environ) != saved_environ:
            os.environ.clear()
            os.environ.update(saved_environ)
    results = []
    for f in (out_file, err_file):
        f.seek(0)
        results.append(_decode(f.read()))
        f.close()
    return subprocess.CompletedProcess([sys.executable, str(MAIN), *argv], code, results[0], results[1])


def run_child(*args: object, cwd: str | os.PathLike | None = ROOT, env: dict[str, str] | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess:
    """``python main.py ARGS`` in a real child process: for what only a process shows (its start, a crash
    of the interpreter, the one line it ends with)."""
    return subprocess.run([sys.executable, str(MAIN), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)
