"""Workers: results and errors come back as signals with plain values, stop requests are honoured, the
thread always ends by itself, and training events arrive batched."""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import pytest
from PySide6.QtCore import QThread

from app import workers
from app.workers import Job, TrainWorker, Worker, plain, run_in_thread, start_worker
from engine.errors import GraftError


def wait_ended(qtbot, job: Job) -> None:
    qtbot.waitUntil(lambda: job._finished, timeout=5000)
    assert job not in workers._LIVE


def test_result_comes_back_on_the_gui_thread(qtbot):
    seen = {}

    def work(a, b):
        seen["thread"] = QThread.currentThread()
        return {"sum": a + b}

    gui = QThread.currentThread()
    job = run_in_thread(work, 2, 3, _start=False)
    results = []
    job.finished.connect(lambda result: seen.setdefault("callback_thread", QThread.currentThread()))
    job.finished.connect(results.append)
    with qtbot.waitSignals([job.started, job.finished], timeout=5000):
        job.start()
    assert results == [{"sum": 5}]
    assert seen["thread"] is not gui
    assert seen["callback_thread"] is gui  # even a lambda runs on the GUI thread
    wait_ended(qtbot, job)


def test_errored_carries_the_user_message_not_a_traceback(qtbot):
    def work():
        raise GraftError("model.pt is not a model file Graft can read.")

    job = run_in_thread(work, _start=False)
    with qtbot.waitSignal(job.errored, timeout=5000) as blocker:
        job.start()
    message, details = blocker.args
    assert message == "model.pt is not a model file Graft can read."
    assert details == ""
    wait_ended(qtbot, job)


def test_unexpected_errors_name_the_exception_and_keep_the_traceback_as_details(qtbot):
    def work():
        return {}["missing"]

    job = run_in_thread(work, _start=False)
    with qtbot.waitSignal(job.errored, timeout=5000) as blocker:
        job.start()
    message, details = blocker.args
    assert message.startswith("Unexpected error (KeyError)")
    assert "Traceback" in details and "Traceback" not in message
    wait_ended(qtbot, job)


def test_generator_work_reports_progress_and_can_be_cancelled(qtbot):
    release = threading.Event()
    produced = []

    def work():
        for i in range(1000):
            produced.append(i)
            yield i
            release.wait(5)
        return "all done"

    job = run_in_thread(work, _start=False)
    with qtbot.waitSignal(job.progress, timeout=5000):
        job.start()
    with qtbot.waitSignal(job.finished, timeout=5000) as blocker:
        job.request_stop()
        release.set()
    assert blocker.args == [None]
    assert job.worker.cancelled
    assert len(produced) < 1000
    wait_ended(qtbot, job)


def test_should_stop_is_given_to_functions_that_ask_for_it(qtbot):
    def work(should_stop):
        t0 = time.monotonic()
        while not should_stop():
            if time.monotonic() - t0 > 5:
                return "never stopped"
            time.sleep(0.005)
        return None

    job = run_in_thread(work)
    qtbot.waitUntil(lambda: job.worker.thread() is not None and job.thread.isRunning(), timeout=5000)
    start = time.monotonic()
    assert job.stop_and_wait(5000)
    assert time.monotonic() - start < 1.0
    assert job.worker.cancelled


def test_stop_and_wait_ends_the_thread_while_the_gui_thread_is_blocked(qtbot):
    """The thread quits from inside the worker, so wait() does not need the GUI event loop."""
    def work(should_stop):
        while not should_stop():
            time.sleep(0.01)
        return "stopped"

    results = []
    job = start_worker(Worker(work), finished=results.append)
    qtbot.waitUntil(job.thread.isRunning, timeout=5000)
    assert job.stop_and_wait(5000)
    assert job.thread.isFinished()
    qtbot.wait(20)
    assert results == []  # disconnected: a late result reaches nobody


# -- the training worker -----------------------------------------------------------------------------
@dataclass
class StepEvent:
    step: int
    epoch: int
    loss: float
    head_losses: dict
    lr: float


@dataclass
class EpochEvent:
    epoch: int
    train_loss: float
    val_loss: float
    best: bool


@dataclass
class TrainResult:
    reason: str
    steps: int


class FakeTrainer:
    """Emits step events as fast as it can until stopped or ``steps`` ran (the real Trainer's contract)."""

    def __init__(self, session, data, config, on_event, steps=2000, delay=0.0005):
        self.on_event, self.steps, self.delay = on_event, steps, delay
        self._stop = threading.Event()
        self.thread = None

    def stop(self):
        self._stop.set()

    def run(self):
        self.thread = QThread.currentThread()
        done = 0
        for i in range(1, self.steps + 1):
            if self._stop.is_set():
                return TrainResult("stopped", done)
            time.sleep(self.delay)
            self.on_event(StepEvent(i, 1, 1.0 / i, {"a": 0.5 / i}, 1e-3))
            done = i
            if i % 500 == 0:
                self.on_event(EpochEvent(i // 500, 0.1, 0.2, True))
        return TrainResult("completed", done)


def test_train_worker_batches_steps_and_returns_a_plain_result(qtbot):
    batches = []
    worker = TrainWorker(None, None, None, trainer_factory=lambda *a: FakeTrainer(*a, steps=1000))
    job = start_worker(worker, progress=batches.append, start=False)
    with qtbot.waitSignal(job.finished, timeout=10000) as blocker:
        job.start()
    assert blocker.args == [{"reason": "completed", "steps": 1000}]
    qtbot.wait(10)
    steps = [s["step"] for b in batches for s in b["steps"]]
    assert steps == list(range(1, 1001))  # nothing lost, in order
    assert all(isinstance(s["loss"], float) and isinstance(s["head_losses"], dict) for b in batches for s in b["steps"])
    assert [e["epoch"] for b in batches for e in b["epochs"]] == [1, 2]
    # ~0.5 s of steps at most every 50 ms (+ the urgent epoch ends): far fewer batches than steps
    assert len(batches) < 60
    wait_ended(qtbot, job)


def test_train_worker_stop_ends_within_a_step_with_reason_stopped(qtbot):
    worker = TrainWorker(None, None, None, trainer_factory=lambda *a: FakeTrainer(*a, steps=10**7, delay=0.001))
    job = start_worker(worker)
    qtbot.waitUntil(lambda: worker.batches_sent > 0, timeout=5000)
    with qtbot.waitSignal(job.finished, timeout=5000) as blocker:
        worker.request_stop()
    assert blocker.args[0]["reason"] == "stopped"
    wait_ended(qtbot, job)


def test_train_worker_errors_arrive_as_messages(qtbot):
    class Failing(FakeTrainer):
        def run(self):
            raise GraftError("Head 'shape' has no data.")

    worker = TrainWorker(None, None, None, trainer_factory=lambda *a: Failing(*a))
    job = start_worker(worker, start=False)
    with qtbot.waitSignal(job.errored, timeout=5000) as blocker:
        job.start()
    assert blocker.args == ["Head 'shape' has no data.", ""]
    wait_ended(qtbot, job)


def test_plain_values():
    np = pytest.importorskip("numpy")
    value = plain({"a": (1, np.float32(2.5)), "b": TrainResult("x", np.int64(3))})
    assert value == {"a": [1, 2.5], "b": {"reason": "x", "steps": 3}}
    assert type(value["a"][1]) is float and type(value["b"]["steps"]) is int


@pytest.mark.skipif(not hasattr(os, "setpriority"), reason="thread priorities through nice values: Linux")
def test_training_runs_at_a_lower_cpu_priority_than_the_gui(qtbot):
    """The training thread and the threads it starts (PyTorch's) yield the CPU to the event loop."""
    seen = {}

    class Niced(FakeTrainer):
        def run(self):
            seen["trainer"] = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            child = threading.Thread(target=lambda: seen.setdefault(
                "child", os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
            child.start()  # as PyTorch's intra-op threads are started by the training thread
            child.join()
            return super().run()

    gui = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    worker = TrainWorker(None, None, None, trainer_factory=lambda *a: Niced(*a, steps=5))
    job = start_worker(worker, start=False)
    with qtbot.waitSignal(job.finished, timeout=10000):
        job.start()
    expected = min(19, gui + TrainWorker.NICE)
    assert TrainWorker.NICE > 0 and seen == {"trainer": expected, "child": expected}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == gui  # the GUI thread keeps its own
    wait_ended(qtbot, job)
