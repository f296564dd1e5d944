"""Training: Start and Stop, the run's progress on the Train tab, and what a finished run leaves behind
(its :class:`~engine.training.record.TrainingRecord` in the project, trained weights to save, an
evaluation).

The run goes in a :class:`~app.workers.TrainWorker`, registered with :meth:`Jobs.set_training` so that
other work waits for it; its batched events arrive here as ``progress``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Signal

from engine.errors import GraftError
from engine.training.record import TrainingRecord
from engine.training.runs import runs_of

from .jobs import UNTIL
from .workers import TrainWorker, start_worker

if TYPE_CHECKING:
    from PySide6.QtWidgets import QLabel, QWidget

    from widgets.curve_panel import CurvePanel
    from widgets.runs_view import RunsView
    from widgets.training_panel import TrainingPanel

    from .jobs import Jobs
    from .messages import Messages
    from .settings import Settings
    from .workspace import Workspace

ENDED_WELL = ("completed", "early_stopping", "stopped")  # runs whose model is worth evaluating


class Training(QObject):
    """The Train menu and tab. ``started()``, ``finished(result)`` (the TrainResult as a dict, or
    ``{"reason": "error", …}``); ``evaluateRequested()`` when a run has ended with a model to evaluate."""

    started = Signal()
    finished = Signal(object)
    evaluateRequested = Signal()
    tensorboard_changed = Signal(bool)  # whether runs are logged to TensorBoard now

    def __init__(self, window: QWidget, workspace: Workspace, jobs: Jobs, messages: Messages, panel: TrainingPanel,
                 curves: CurvePanel, device_label: QLabel, show_tab: Callable[[str], Any],
                 runs: RunsView | None = None, settings: Settings | None = None) -> None:
        super().__init__(window)
        self._window, self._runs, self._settings = window, runs, settings
        self._workspace, self._jobs, self._messages = workspace, jobs, messages
        self._panel, self._curves, self._device_label = panel, curves, device_label
        self._show_tab = show_tab
        self._record: TrainingRecord | None = None  # the running training's data and settings
        self._epochs = self._epoch = 0
        self._evaluate_after_close = False  # a run ended while closing, and the close may yet be cancelled
        self.last_result: dict[str, Any] | None = None
        workspace.connect("session", self._new_session)
        for event in ("session_changed", "data"):
            workspace.connect(event, lambda *_: self._refresh())
        workspace.connect("closing", self._on_closing)
        jobs.connect("changed", self._refresh)
        self._refresh()

    def _new_session(self, session) -> None:
        self.last_result = None  # nothing the previous model produced stays on screen
        self._curves.reset([])
        self._panel.clear_progress()
        self._show_runs()
        self._refresh()

    def _show_runs(self) -> None:
        """The Runs tab: every run the open project keeps (a reopened project's too)."""
        if self._runs is not None:
            s = self._workspace.session
            self._runs.set_runs(runs_of(s.project_extra if s is not None else None))

    def choose_tensorboard(self, on: bool) -> None:
        """Train ▸ Log runs to TensorBoard: ask for the folder when switched on; off forgets it."""
        if self._settings is None:
            return
        if not on:
            self._settings.set_tensorboard_dir(None)
            self._messages.show_message("Runs are no longer logged to TensorBoard.")
            return
        from PySide6.QtWidgets import QFileDialog

        start = self._settings.tensorboard_dir() or self._settings.last_dir("tensorboard")
        folder = QFileDialog.getExistingDirectory(self._window, "Log runs to TensorBoard in", start)
        self._settings.set_tensorboard_dir(folder or None)
        if folder:
            self._settings.set_last_dir("tensorboard", folder)
            self._messages.show_message(f"Each run is also logged to TensorBoard in {folder} "
                                        f"(tensorboard --logdir \"{folder}\").")
        self.tensorboard_changed.emit(bool(folder))

    def tensorboard_dir(self) -> str:
        return self._settings.tensorboard_dir() if self._settings is not None else ""

    def _on_closing(self, closing: bool) -> None:
        if not closing and self._evaluate_after_close:  # the close was cancelled
            self._evaluate_after_close = False
            self.evaluateRequested.emit()

    def _refresh(self) -> None:
        running = self._jobs.training
        if self._panel.is_running() != running:  # only on a change: it resets the progress
            self._panel.set_running(running)
        if running and self._jobs.stopping:
            self._panel.set_stopping()
        why = self.why_not_start()
        self._panel.set_can_start(not why, why)

    def why_not_start(self) -> str:
        """Why Start training is disabled (its tooltip), or "" when it is not."""
        s = self._workspace.session
        if s is None:
            return "Open a model first"
        if self._jobs.training:
            return "Training is running"
        blocker = self._jobs.blocker("train")
        if blocker is not None:
            return f"Training waits until {UNTIL[blocker]}"
        if not s.heads:
            return "Add a head first (Surgery ▸ Add head)"
        if self._workspace.data is None:
            return "Load data first (drop a folder or CSV on the window)"
        return ""

    # -- start and stop -------------------------------------------------------------------------
    def start(self) -> bool:
        s, data, say = self._workspace.session, self._workspace.data, self._messages.show_message
        if s is None:
            say("Open a model first.", "warning")
            return False
        if self._jobs.training:
            say("Training is already running.", "warning")
            return False
        if self._jobs.must_wait("train", "Training"):
            return False
        if not s.heads:
            self._messages.show_error("Add at least one head before training (Surgery ▸ Add head).")
            return False
        if data is None:
            self._messages.show_error("Load data before training (drop a folder or CSV on the window).")
            return False
        try:
            config = self._panel.config()
        except GraftError as exc:
            self._messages.show_error(str(exc), title="Training settings")
            return False
        worker_class = TrainWorker
        if getattr(config, "devices", 1) > 1:  # all the GPUs: the run goes in child processes
            from .distributed import DistributedTrainWorker as worker_class
        worker = worker_class(s, data, config, tensorboard=self.tensorboard_dir() or None)
        # what evaluate and export read back from a saved project, as main.py train records it
        self._record = TrainingRecord.begin(data, config)
        self._epochs = int(getattr(config, "epochs", 0) or 0)
        self._epoch = 0
        self._curves.reset(list(s.heads))
        self._evaluate_after_close = False
        self._show_tab("train")
        job = start_worker(worker, name="train", progress=self._on_progress, finished=self._on_finished,
                           errored=self._on_errored, start=False)
        self._panel.set_status("Starting…")
        say("Training started.")
        self._jobs.set_training(job)
        job.start()
        self.started.emit()
        return True

    def stop(self) -> None:
        if self._jobs.train_job is not None:
            self._panel.set_status("Stopping after this batch…")
            self._messages.show_message("Stopping after the current batch…")
            self._jobs.stop_training()  # Stop stays disabled from now on

    # -- what the run reports -------------------------------------------------------------------
    def _on_progress(self, batch: dict[str, Any]) -> None:
        started = batch.get("started")
        if started:
            self._device_label.setText(started.get("device_name") or started.get("device") or "CPU")
            self._epochs = int(started.get("epochs") or self._epochs)
        if batch.get("steps"):
            self._curves.add_steps(batch["steps"])
        for epoch in batch.get("epochs", []):
            self._curves.add_epoch(epoch)
            val = epoch.get("val_loss")
            text = f"Epoch {epoch.get('epoch')}: train loss {epoch.get('train_loss', math.nan):.4f}"
            if val is not None:
                text += f", validation loss {val:.4f}"
            text += " (best so far)" if epoch.get("best") else ""
            self._messages.show_message(text)
            self._panel.set_status(text)
        for message in batch.get("messages", []):
            self._messages.show_message(message.get("text", ""), message.get("level", "info"))
            self._panel.set_status(message.get("text", ""))
        if batch.get("steps"):
            self._epoch = max(self._epoch, int(batch["steps"][-1].get("epoch") or 0))
        p = batch.get("progress")
        if p:  # the fraction covers the whole run, computing cached features included
            fraction = p.get("fraction")
            done, total = (int(round(1000 * fraction)), 1000) if fraction is not None else \
                (p.get("done_steps", 0), p.get("total_steps", 0))
            self._panel.set_progress(done, total, p.get("eta_seconds"), self._epoch or None, self._epochs)

    def _on_finished(self, result: dict[str, Any] | None) -> None:
        result = result or {}
        self.last_result = result
        s = self._workspace.session
        if s is not None and self._record is not None:
            s.project_extra = self._record.finish(result).store(s.project_extra)
            self._show_runs()
        self._jobs.set_training(None)
        self._workspace.weights_changed = True
        reason = result.get("reason", "done")
        message = result.get("message") or f"Training ended ({reason})."
        self._panel.set_status(message)
        self._messages.show_message(message)
        self.finished.emit(result)
        if self._workspace.data is not None and reason in ENDED_WELL:
            if self._workspace.closing:
                self._evaluate_after_close = True  # evaluated after all if the close is cancelled
            else:
                self.evaluateRequested.emit()

    def _on_errored(self, message: str, details: str) -> None:
        self._jobs.set_training(None)
        self._panel.set_status(message)
        self._messages.show_error(message, details, "Training failed")
        self.finished.emit({"reason": "error", "message": message})
