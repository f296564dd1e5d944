"""Starting the training processes on this machine with torchrun's own launcher
(``torch.distributed.launcher.api.elastic_launch``, what ``torch.distributed.run`` runs), for
``main.py train --devices N``: the user needs to know nothing about torchrun.

The launcher (this process) is the elastic agent: it starts N copies of the command (without
``--devices``, with :data:`LAUNCHED_ENV` set), one per GPU (``LOCAL_RANK``) or N gloo processes on the
CPU, on a free local port (torchrun's ``--standalone``). Process 0 prints to the terminal; the others'
output goes to torch's log files (``redirects``), so the terminal shows one run.

How it ends:

* every process exits 0: done;
* a process fails: torch's agent ends the others; the workers' errors reach the launcher through
  torch's error files (:func:`record_worker_error`, ``torch.distributed.elastic`` error handler) and
  :func:`failure_message` picks the cause: one line, exit 1, nothing saved (process 0 saves only after
  a run that ended well);
* Ctrl-C (SIGINT) once: every process stops after the same batch (the stop file, below) and process 0
  saves the best weights, as on one process; twice, or SIGTERM: torch's agent ends every process
  (SIGTERM), nothing is saved, :class:`KeyboardInterrupt`.

The stop file (:data:`STOP_FILE_ENV`): a path every process watches; when it exists the run stops after
the current batch. The window creates it for Stop (it works where signals do not, e.g. on Windows).
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine.errors import GraftError

LAUNCHED_ENV = "GRAFT_LAUNCHED"  # set in the processes Graft's launcher starts
STOP_FILE_ENV = "GRAFT_STOP_FILE"  # a file whose existence asks every process to stop after this batch
ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"  # set by torch's agent for each process
LOST_PREFIX = "Another training process"  # engine.training.distributed.lost_message: a consequence, not a cause


def launched_by_graft() -> bool:
    return bool(os.environ.get(LAUNCHED_ENV))


def record_worker_error(exc: BaseException) -> bool:
    """In a process Graft's launcher started: write ``exc`` to torch's error file for the launcher to
    report (instead of every process printing it). False where there is none (print it as usual)."""
    if not (launched_by_graft() and os.environ.get(ERROR_FILE_ENV)):
        return False
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    ErrorHandler().record_exception(exc)
    return True


def watch_stop_file(stop: Callable[[], None], interval: float = 0.2) -> Callable[[], None]:
    """Call ``stop()`` once the stop file exists (a daemon thread); returns a function ending the watch."""
    path = os.environ.get(STOP_FILE_ENV)
    done = threading.Event()
    if not path:
        return done.set

    def watch() -> None:
        while not done.wait(interval):
            if os.path.exists(path):
                stop()
                return

    threading.Thread(target=watch, name="graft-stop-file", daemon=True).start()
    return done.set


def _message_of(failure: Any) -> str:
    """The one-line error a process recorded, '' when it recorded none (it died)."""
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    if not isinstance(message, str) or failure.error_file in ("", "<N/A>") or not os.path.isfile(failure.error_file):
        return ""
    text = message.strip().splitlines()[0] if message.strip() else ""
    for prefix in ("GraftError: ", "TrainingError: ", "ProcessLost: "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def failure_message(failures: dict[int, Any], world: int) -> str:
    """The cause of a failed run in one line: a process's own error first, then a process that died
    without one (crashed, killed), then one the agent ended (SIGTERM), then one that lost the others; among
    equals the first torch's agent saw (``failures`` is in that order: it records the processes it then
    ends after the one that failed)."""
    found: list[tuple[int, int, str]] = []
    for seen, (rank, failure) in enumerate(failures.items()):
        text = _message_of(failure)
        if text and not text.startswith(LOST_PREFIX):
            found.append((0, seen, text))
        elif not text:
            code = failure.exitcode
            how = (f"was killed by signal {failure.signal_name()}" if code is not None and code < 0
                   else f"ended unexpectedly (exit code {code})")
            ended = code is not None and -code == signal.SIGTERM  # likely the agent, after another
            found.append((2 if ended else 1, seen, f"Training process {rank} of {world} {how}; the run was stopped "
                                                   "and nothing was saved."))
        else:
            found.append((3, seen, text))
    if not found:
        return "The training processes failed; nothing was saved."
    found.sort()
    return found[0][2]


def _quiet_torch_logs() -> None:
    """torch's agent logs each step of the launch and its own view of a failure: the launcher says it."""
    os.environ.setdefault("LOGLEVEL", "ERROR")
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("torch.distributed"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def launch(nproc: int, argv: Sequence[str], *, module: str, root: Path, env: dict[str, str] | None = None) -> None:
    """Run ``python -m module *argv`` in ``nproc`` processes of one job (see the module docstring).
    Returns when all ended well; raises GraftError (the cause, one line) or KeyboardInterrupt."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if nproc < 2:
        raise GraftError("--devices needs at least 2 processes.")
    log_dir = tempfile.mkdtemp(prefix="graft-processes-")
    stop_file = os.environ.get(STOP_FILE_ENV) or str(Path(log_dir) / "stop")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    extra = {LAUNCHED_ENV: "1", STOP_FILE_ENV: stop_file,
             "PYTHONPATH": os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH", "")) if p),
             "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS") or str(max(1, cpus // nproc))}
    extra.update(env or {})
    saved_env = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)  # the agent starts the processes with this process's environment
    _quiet_torch_logs()
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1,
                          logs_specs=DefaultLogsSpecs(log_dir=log_dir, redirects={r: Std.ALL for r in range(1, nproc)}),
                          signals_to_handle="SIGTERM,SIGHUP,SIGQUIT", shutdown_timeout=5)
    interrupted = {"count": 0}

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted["count"] += 1
        if interrupted["count"] == 1:
            Path(stop_file).touch()
            print("\nStopping every process after this batch; the best weights so far will be saved "
                  "(Ctrl-C again to abort).", flush=True, file=sys.stderr)
            return
        raise SignalException("interrupted", sigval=signal.SIGTERM)  # torch's agent ends every process

    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, on_sigint) if in_main else None
    try:
        elastic_launch(config, entrypoint=sys.executable)("-m", module, *argv)
    except ChildFailedError as exc:
        raise GraftError(failure_message(exc.failures, nproc)) from None
    except SignalException:
        raise KeyboardInterrupt from None
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
