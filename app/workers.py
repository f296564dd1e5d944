"""Background work for the window: a thin QObject moved to a QThread, wired like superqt's
``new_worker_qthread`` (thread.started -> work, finished -> thread.quit, deleteLater on both).

Every worker has the same signal set — ``started()``, ``progress(object)``, ``finished(object)``,
``errored(str, str)`` — and the signals carry plain Python values only (numbers, strings, lists, dicts,
dataclasses of those). A worker never opens UI: the window shows what ``errored`` brings (the message
for the user, and the traceback as details for an unexpected failure).

Stopping never kills a thread: :meth:`Worker.request_stop` sets a flag the work checks (between the
items a generator yields, or every batch for :class:`TrainWorker`, which calls ``Trainer.stop()``).
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from PySide6.QtCore import QObject, QThread, Signal, Slot

from engine.errors import GraftError

log = logging.getLogger(__name__)

# Workers whose thread is still running are kept alive here: a QThread garbage-collected while it
# runs aborts the process. Entries leave when the thread has finished.
_LIVE: set["Job"] = set()


class Cancelled(Exception):
    """Raised by work that noticed a stop request (e.g. from a progress callback): the worker ends with
    ``finished(None)`` and ``cancelled`` set, not with an error."""


def user_message(exc: BaseException) -> tuple[str, str]:
    """(message for the user, details). GraftError messages are meant for the user as they are; anything
    else is a bug or an environment problem: say what it was, and keep the traceback as details."""
    if isinstance(exc, GraftError):
        return str(exc), ""
    if isinstance(exc, MemoryError):
        return "Out of memory. Try a smaller batch size or a smaller model.", ""
    details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    text = str(exc).strip() or "no further information"
    return f"Unexpected error ({exc.__class__.__name__}): {text}", details


def plain(value: Any) -> Any:
    """A deep copy of ``value`` made of plain Python values (dataclasses become dicts, tuples lists, numpy
    and torch scalars Python numbers), safe to send across threads in a signal."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    return value


class Worker(QObject):
    """Runs ``fn(*args, **kwargs)`` once in its thread.

    ``fn`` may be a generator function: each value it yields is sent as ``progress`` and a stop request
    is honoured between yields (the generator is closed; ``finished(None)`` follows and ``cancelled`` is
    True). If ``fn`` has a parameter named ``should_stop``, it is given a callable it can poll (and may
    raise :class:`Cancelled` when it returns True); one named ``report_progress`` is given a callable that
    sends its argument as ``progress``.
    """

    started = Signal()
    progress = Signal(object)
    finished = Signal(object)
    errored = Signal(str, str)

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        super().__init__()
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self._stop = threading.Event()
        self.cancelled = False
        self.done = False
        try:
            params = inspect.signature(fn).parameters
        except (TypeError, ValueError):
            params = {}
        if "should_stop" in params:
            self._kwargs["should_stop"] = self._stop.is_set
        if "report_progress" in params:
            self._kwargs["report_progress"] = self.progress.emit

    def request_stop(self) -> None:
        """Thread-safe: ask the work to end at its next check."""
        self._stop.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def _execute(self) -> Any:
        result = self._fn(*self._args, **self._kwargs)
        if inspect.isgenerator(result):
            gen = result
            try:
                while True:
                    if self._stop.is_set():
                        gen.close()
                        self.cancelled = True
                        return None
                    self.progress.emit(next(gen))
            except StopIteration as stop:
                return stop.value
        if self._stop.is_set() and result is None:
            self.cancelled = True
        return result

    @Slot()
    def work(self) -> None:
        self.started.emit()
        try:
            result = self._execute()
        except Cancelled:
            self.cancelled = True
            self.done = True
            self.finished.emit(None)
        except BaseException as exc:  # noqa: BLE001 - every failure reaches the window as a message
            message, details = user_message(exc)
            if details:
                log.error("worker failed: %s", details)
            self.done = True
            self.errored.emit(message, details)
        else:
            self.done = True
            self.finished.emit(result)
        finally:
            # Quit from this thread, not through a queued call: a GUI thread blocked in wait() still sees it.
            thread = self.thread()
            if thread is not None:
                thread.quit()


class Job(QObject):
    """A worker, the thread it runs in, and the same signal set re-emitted on the GUI thread.

    The worker's signals reach the Job's slots through queued connections (the Job lives on the GUI
    thread), so whatever is connected to the Job's signals — even a plain function or lambda — runs on the
    GUI thread. After :meth:`disconnect_all` (closing), late results are dropped here.
    """

    started = Signal()
    progress = Signal(object)
    finished = Signal(object)
    errored = Signal(str, str)

    def __init__(self, worker: Worker, name: str = "") -> None:
        super().__init__()
        self.worker = worker
        self.name = name or "worker"
        self.thread = QThread()
        self.thread.setObjectName(f"graft-{self.name}")
        self._finished = False
        self._detached = False
        worker.moveToThread(self.thread)
        worker.started.connect(self._on_started)
        worker.progress.connect(self._on_progress)
        worker.finished.connect(self._on_finished)
        worker.errored.connect(self._on_errored)
        self.thread.started.connect(worker.work)
        self.thread.finished.connect(self._on_thread_finished)

    def start(self) -> "Job":
        _LIVE.add(self)
        self.thread.start()
        return self

    # -- relays (GUI thread) ----------------------------------------------------------------------
    @Slot()
    def _on_started(self) -> None:
        if not self._detached:
            self.started.emit()

    @Slot(object)
    def _on_progress(self, value: Any) -> None:
        if not self._detached:
            self.progress.emit(value)

    @Slot(object)
    def _on_finished(self, result: Any) -> None:
        if not self._detached:
            self.finished.emit(result)

    @Slot(str, str)
    def _on_errored(self, message: str, details: str) -> None:
        if not self._detached:
            self.errored.emit(message, details)

    @Slot()
    def _on_thread_finished(self) -> None:
        self._finished = True
        _LIVE.discard(self)
        self.worker.deleteLater()
        self.thread.deleteLater()

    # -- control ----------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return not self._finished and not self.worker.done

    @property
    def ended(self) -> bool:
        """The thread has finished (its ``finished`` signal was handled)."""
        return self._finished

    def request_stop(self) -> None:
        self.worker.request_stop()

    def wait(self, timeout_ms: int) -> bool:
        """Block until the thread has ended (True) or ``timeout_ms`` passed (False)."""
        if self._finished:
            return True
        try:
            return bool(self.thread.wait(max(0, int(timeout_ms))))
        except RuntimeError:  # already deleted: it had finished
            return True

    def disconnect_all(self) -> None:
        """From now on results and errors reach nobody (used when the window closes)."""
        self._detached = True

    def stop_and_wait(self, timeout_ms: int = 5000) -> bool:
        """Request a stop, wait up to ``timeout_ms``, then disconnect. True when the thread ended."""
        self.request_stop()
        ended = self.wait(timeout_ms)
        self.disconnect_all()
        return ended


def start_worker(worker: Worker, *, name: str = "", started: Callable[[], Any] | None = None,
                 progress: Callable[[Any], Any] | None = None, finished: Callable[[Any], Any] | None = None,
                 errored: Callable[[str, str], Any] | None = None, start: bool = True) -> Job:
    """Wire the given callbacks (called on the GUI thread) and start ``worker`` in a new QThread."""
    job = Job(worker, name)
    for signal, slot in ((job.started, started), (job.progress, progress),
                         (job.finished, finished), (job.errored, errored)):
        if slot is not None:
            signal.connect(slot)
    if start:
        job.start()
    return job


def run_in_thread(fn: Callable[..., Any], *args: Any, _name: str = "", _started=None, _progress=None,
                  _finished=None, _errored=None, _start: bool = True, **kwargs: Any) -> Job:
    """Run ``fn(*args, **kwargs)`` in a fresh thread; results come back through the callbacks."""
    return start_worker(Worker(fn, *args, **kwargs), name=_name or getattr(fn, "__name__", "work"),
                        started=_started, progress=_progress, finished=_finished, errored=_errored, start=_start)


def shutdown_all(timeout_ms: int = 5000) -> bool:
    """Stop every running job (used on quit). True when all of them ended in time."""
    ok = True
    deadline = time.monotonic() + timeout_ms / 1000
    for job in list(_LIVE):
        job.request_stop()
    for job in list(_LIVE):
        left = max(0, int((deadline - time.monotonic()) * 1000))
        ok = job.stop_and_wait(left) and ok
    return ok


# --------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------
class TrainWorker(Worker):
    """Runs ``Trainer(session, data, config, on_event).run()`` and turns its events into ``progress``
    batches, at most one every ``interval`` seconds (epoch ends, messages and the finish are sent at
    once). A batch is a dict of plain values::

        {"steps": [{"step", "epoch", "loss", "head_losses", "lr"}, …],   # every step since the last batch
         "epochs": [{"epoch", "train_loss", "val_loss", …}, …],
         "progress": {"done_steps", "total_steps", "fraction", "eta_seconds"} | None,
         "messages": [{"text", "level"}, …], "started": {...} | None,
         "telemetry": {"step", "epoch", "blocks": {path: [gradient norm, change]}} | None}  # the latest

    ``finished`` carries the TrainResult as a dict (``reason``, ``best_epoch`` …); a paused run's
    ``checkpoint`` stays the :class:`~engine.training.checkpoint.TrainCheckpoint` itself (its tensors, such
    as the optimizer's 0-d step counts, must not become plain numbers). ``resume``: a checkpoint to continue.
    """

    def __init__(self, session: Any, data: Any, config: Any, interval: float = 0.05,
                 trainer_factory: Callable[..., Any] | None = None, tensorboard: str | None = None,
                 resume: Any = None) -> None:
        super().__init__(self._train)
        self.session, self.data, self.config = session, data, config
        self.resume = resume
        self._pause_asked = False
        self.tensorboard = tensorboard  # a folder: the run's curves are also written there
        self.interval = interval
        self._factory = trainer_factory
        self._trainer: Any = None
        self._lock = threading.Lock()
        self._pending = self._empty()
        self._last_emit = 0.0
        self.batches_sent = 0
        # ``keep(weights, note)``, on this worker's thread: the weights before training (a copy) and the best
        # epoch's so far, each time one is better (app/recovery.py keeps them in the recovery file)
        self.keep: Callable[[dict[str, Any], str], Any] | None = None

    @staticmethod
    def _empty() -> dict[str, Any]:
        return {"steps": [], "epochs": [], "progress": None, "messages": [], "started": None, "telemetry": None}

    def request_stop(self) -> None:
        super().request_stop()
        with self._lock:
            trainer = self._trainer
        if trainer is not None:
            trainer.stop()

    def request_pause(self) -> None:
        """Thread-safe: pause at the end of the current epoch (``Trainer.pause``)."""
        with self._lock:
            self._pause_asked = True
            trainer = self._trainer
        if trainer is not None:
            trainer.pause()

    def _make_trainer(self) -> Any:
        on_event = self._on_event
        if self.tensorboard:
            from engine.training.runs import TensorBoardLog

            on_event = TensorBoardLog(self.tensorboard, then=on_event)  # in the worker: writes no widget
        resume = {} if self.resume is None else {"resume": self.resume}
        if self._factory is not None:
            return self._factory(self.session, self.data, self.config, on_event, **resume)
        from engine.training.trainer import Trainer

        return Trainer(self.session, self.data, self.config, on_event, **resume)

    NICE = 5  # how much lower than the window's the training thread's CPU priority is (Linux; 0: the same)

    def _lower_priority(self) -> None:
        """Give the training thread, and the PyTorch threads it starts (they inherit it), a lower CPU
        priority than the GUI thread's: on a small machine they would otherwise take the cores the event
        loop needs to paint and answer input, and it waits in the run queue behind them (bench/gui_latency.py
        counts the wait). On an otherwise idle machine training loses nothing; the CLI is not affected."""
        if not self.NICE or not hasattr(os, "setpriority"):
            return
        try:  # on Linux, PRIO_PROCESS with a thread's id sets that thread's nice value only
            tid = threading.get_native_id()
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + self.NICE))
        except OSError:
            pass

    def _train(self) -> Any:
        self._lower_priority()
        trainer = self._make_trainer()
        with self._lock:
            self._trainer = trainer
            pause = self._pause_asked
        if self.stop_requested:  # asked to stop before the trainer existed
            trainer.stop()
        if pause:
            trainer.pause()
        if self.keep is not None:
            from engine.project.project_file import state_tensors

            self.keep(state_tensors(self.session.model), "the weights before training")
        try:
            result = trainer.run()
        finally:
            self._flush()
        checkpoint = getattr(result, "checkpoint", None)
        out = plain(result)
        if isinstance(out, dict) and "checkpoint" in out:
            out["checkpoint"] = checkpoint
        return out

    def _on_event(self, event: Any) -> None:
        """Called by the trainer in this worker's thread."""
        name = type(event).__name__
        data = plain(event)
        p = self._pending
        urgent = False
        if name == "StepEvent":
            p["steps"].append(data)
        elif name == "EpochEvent":
            p["epochs"].append(data)
            urgent = True
            best = getattr(self._trainer, "best_weights", None)
            if self.keep is not None and event.best and best is not None:
                loss = f", validation loss {event.val_loss:.4f}" if event.val_loss is not None else ""
                self.keep(best(), f"training, epoch {event.epoch} of {self.config.epochs}, the best so far{loss}")
        elif name == "ProgressEvent":
            p["progress"] = data
        elif name == "MessageEvent":
            p["messages"].append(data)
            urgent = True
        elif name == "TrainStarted":
            p["started"] = data
            urgent = True
        elif name == "TelemetryEvent":
            p["telemetry"] = data  # only the latest sample is worth drawing
        elif name == "TrainFinished":
            return  # the result arrives through ``finished``
        now = time.monotonic()
        if urgent or now - self._last_emit >= self.interval:
            self._flush(now)

    def _flush(self, now: float | None = None) -> None:
        p = self._pending
        if not (p["steps"] or p["epochs"] or p["progress"] or p["messages"] or p["started"] or p["telemetry"]):
            return
        self._pending = self._empty()
        self._last_emit = time.monotonic() if now is None else now
        self.batches_sent += 1
        self.progress.emit(p)
