"""The window's background work, by name: what each kind of work has to wait for, the busy indicator in
the status bar, and results that come back after another session replaced theirs (dropped).

Every concern starts its slow work here (:meth:`Jobs.run`, in a worker from :mod:`app.workers`); the
training run, which has its own worker, is registered with :meth:`Jobs.set_training`. The plain event
``changed()`` follows every start and end, and a training's Stop.
"""
from __future__ import annotations

import logging
from typing import Any

from PySide6.QtWidgets import QLabel, QProgressBar

from .messages import Messages
from .workers import Job, run_in_thread
from .workspace import Events, Workspace

log = logging.getLogger(__name__)

# What each kind of work has to wait for: the names of running jobs, "train" for the training run.
# Loading data never touches the model. A prediction only reads it (one forward pass): saving, which only
# reads it too, and opening another model (whose session replaces it; the late prediction is dropped) need
# not wait for one, but surgery, which changes the modules under the forward pass, must; so must an
# evaluation or an export, which move the model or switch it between train and eval mode. A heatmap or an
# activation grid ("explain") hooks the model's layers for its forward (and backward) pass: it waits like
# a prediction does, and whatever runs the model waits for it, since its hooks would see that pass too.
# A comparison (app.compare) reads the weights like a save: what changes or moves them waits for it.
# The learning rate finder ("lr-find") trains for a few steps and then puts the weights back: it runs the
# model like training does, so it waits for what training waits for, and everything that waits for
# training waits for it (a save meanwhile would catch the test's weights).
WAITS_FOR: dict[str, frozenset[str]] = {
    "surgery": frozenset({"train", "load", "save", "evaluate", "export", "predict", "explain", "compare",
                          "lr-find"}),
    "save": frozenset({"train", "load", "save", "evaluate", "export", "lr-find"}),
    "open": frozenset({"train", "load", "save", "evaluate", "export", "lr-find"}),
    "export": frozenset({"train", "load", "save", "evaluate", "export", "predict", "explain", "compare",
                         "lr-find"}),
    "evaluate": frozenset({"train", "load", "save", "evaluate", "export", "predict", "explain", "data",
                           "compare", "lr-find"}),
    "predict": frozenset({"train", "load", "evaluate", "export", "predict", "explain", "lr-find"}),
    "explain": frozenset({"train", "load", "evaluate", "export", "predict", "explain", "lr-find"}),
    "train": frozenset({"train", "load", "save", "evaluate", "export", "predict", "explain", "data",
                        "compare", "lr-find"}),
    "data": frozenset({"train", "data", "lr-find"}),
    "compare": frozenset({"train", "load", "evaluate", "export", "compare", "lr-find"}),
    "lr-find": frozenset({"train", "load", "save", "evaluate", "export", "predict", "explain", "data",
                          "compare", "lr-find"}),
}
UNTIL = {  # "… waits until <this>."
    "train": "training has finished (Stop ends it after the current batch)",
    "load": "the model has loaded",
    "save": "the project has been saved",
    "evaluate": "the evaluation has finished",
    "export": "the export has finished",
    "predict": "the prediction has finished",
    "explain": "the heatmap (or activation grid) has been computed",
    "data": "the data has loaded",
    "compare": "the comparison has finished",
    "lr-find": "the learning rate finder has finished",
}
WAITING_FOR = {  # closing: "waiting for <this>…"
    "train": "training to stop",
    "load": "the model to load",
    "save": "the project to be saved",
    "evaluate": "the evaluation to stop",
    "export": "the export to finish",
    "predict": "the prediction to finish",
    "explain": "the heatmap to finish",
    "mistakes": "the mistakes to be listed",
    "cell": "the cell's images to be listed",
    "suggestions": "the label suggestions to be written",
    "data": "the data to load",
    "compare": "the comparison to finish",
    "lr-find": "the learning rate finder to stop",
}


def _warm_up() -> None:
    """Import what training and the first heatmap (Captum) need the first time (PyTorch loads ~900 modules
    lazily on the first optimizer step, holding the GIL for over a second). Done once in the background
    after the first model loads, so the GUI does not stutter when training starts."""
    import importlib

    import torch

    for name in ("engine.training.trainer", "engine.training.evaluation", "captum.attr"):
        importlib.import_module(name)
    layer = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(layer.parameters())
    layer(torch.zeros(2, 4)).sum().backward()
    optimizer.step()


class Jobs(Events):
    """The running work: ``running`` (name -> Job), the training run (``train_job``) and the warm-up.
    Event: ``changed()``."""

    EVENTS = ("changed",)

    _warmed_up = False  # once per process: see _warm_up

    def __init__(self, workspace: Workspace, messages: Messages, busy_label: QLabel, busy_bar: QProgressBar) -> None:
        super().__init__()
        self.running: dict[str, Job] = {}
        self.train_job: Job | None = None
        self.stopping = False  # Stop was pressed for the running training
        self.warm_job: Job | None = None
        self._messages = messages
        self._label, self._bar = busy_label, busy_bar
        self._serial = 0  # +1 for every new session: a job's result is applied only to its own
        workspace.connect("session", self._new_session)

    def _changed(self) -> None:
        self._emit("changed")

    def _new_session(self, session: Any) -> None:
        self._serial += 1  # work still running on the old session brings nothing back to this one

    # -- what runs, and what may start --------------------------------------------------------
    @property
    def training(self) -> bool:
        return self.train_job is not None

    @property
    def busy(self) -> bool:
        return bool(self.running)

    def names(self) -> list[str]:
        """The work running now: job names, and "train" for the training run."""
        return (["train"] if self.training else []) + list(self.running)

    def blocker(self, kind: str) -> str | None:
        """The running work that ``kind`` of work (a key of WAITS_FOR) has to wait for, if any."""
        return next((name for name in self.names() if name in WAITS_FOR[kind]), None)

    def free(self) -> dict[str, bool]:
        """Which kinds of work may start now."""
        return {kind: self.blocker(kind) is None for kind in WAITS_FOR}

    def must_wait(self, kind: str, doing: str) -> bool:
        """True, and a status message saying what it waits for, when ``kind`` of work cannot start now."""
        blocker = self.blocker(kind)
        if blocker is None:
            return False
        self._messages.show_message(f"{doing} waits until {UNTIL.get(blocker, 'the running work has finished')}.",
                                    "warning")
        return True

    # -- starting and ending ------------------------------------------------------------------
    def run(self, name: str, text: str, fn, *args, finished, errored=None, progress=None, bound: bool = True,
            stale=None, **kwargs) -> Job | None:
        """Start ``fn`` in a worker under ``name`` (one at a time per name), with a busy indicator.

        ``bound``: the work uses the current session, and what it brings back belongs to that session: when
        another session has replaced it meanwhile, ``finished`` is not called (``stale(result)`` is, if
        given) and an error is shown as a plain message, without ``errored`` (which may touch the session's
        views)."""
        if name in self.running:
            self._messages.show_message(f"Still {text[0].lower() + text[1:]}", "warning")
            return None
        serial = self._serial

        def current() -> bool:
            return not bound or serial == self._serial

        def ok(result, name=name):
            self._done(name)
            if current():
                finished(result)
            elif stale is not None:
                stale(result)
            else:
                log.info("%s finished for a session that is no longer open: its result was dropped", name)

        def failed(message, details, name=name):
            self._done(name)
            if errored is not None and current():
                errored(message, details)
            else:
                self._messages.show_error(message, details)

        job = run_in_thread(fn, *args, _name=name, _finished=ok, _errored=failed, _progress=progress,
                            _start=False, **kwargs)
        self.running[name] = job
        self._label.setText(text)
        self._label.show()
        self._bar.show()
        self._changed()
        job.start()
        return job

    def _done(self, name: str) -> None:
        self.running.pop(name, None)
        self._bar.setRange(0, 0)
        if not self.running:
            self._label.hide()
            self._bar.hide()
        else:
            self._label.setText(next(iter(self.running)).capitalize() + "…")
        self._changed()

    def set_training(self, job: Job | None) -> None:
        """The training run has started (``job``) or ended (None)."""
        self.train_job = job
        self.stopping = False
        self._changed()

    def stop_training(self) -> None:
        """Ask the training run to stop after its current batch."""
        if self.train_job is not None:
            self.train_job.request_stop()
            self.stopping = True
            self._changed()

    def warm_up_once(self) -> None:
        if not Jobs._warmed_up:
            Jobs._warmed_up = True
            from .garbage import settle

            # its imports are the bulk of what the garbage collector tracks, alive until the end: frozen then
            self.warm_job = run_in_thread(_warm_up, _name="warm-up", _finished=lambda _: settle(),
                                          _errored=lambda m, d: log.warning("warm-up failed: %s", m))

    def stop_all(self) -> list[Job]:
        """Closing: every job, from now on without anyone to receive its results, asked to stop (loads and
        exports cannot be interrupted). Returns them, to wait for before :meth:`forget`."""
        jobs = list(self.running.values()) + [j for j in (self.train_job, self.warm_job) if j is not None]
        for job in jobs:
            job.disconnect_all()
            job.request_stop()
        return jobs

    def forget(self) -> None:
        self.running.clear()
        self.train_job = None

    # -- the busy indicator -------------------------------------------------------------------
    def show_progress(self, value: tuple[int, int]) -> None:
        """``(done, total)`` of the running job, on the busy bar."""
        done, total = value
        if total:
            self._bar.setRange(0, int(total))
            self._bar.setValue(int(done))

    def show_text(self, text: Any) -> None:
        self._label.setText(str(text))
