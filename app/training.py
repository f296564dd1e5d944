"""Training: Start, Pause, Resume and Stop, the run's progress on the Train tab, the learning rate finder,
the tree's live layer telemetry, and what a finished run leaves behind (its
:class:`~engine.training.record.TrainingRecord` in the project, trained weights to save, an evaluation).

The run goes in a :class:`~app.workers.TrainWorker`, registered with :meth:`Jobs.set_training` so that
other work waits for it; its batched events arrive here as ``progress``. A paused run's checkpoint is the
workspace's ``paused_run``: saving keeps it in the project, so Resume works after reopening it too (the
curves then start from the epochs the checkpoint recorded). The learning rate finder
(:class:`engine.training.rate_finder.RateFinder`) is the job "lr-find": it trains for a few steps and puts
the weights back, so it waits for what training waits for. Layer telemetry shows in the tree's Training
column from the start of a run that samples it until the next run starts (or another model opens), so the
last values can still be read after the run.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtWidgets import QMessageBox

from engine.errors import GraftError
from engine.training.record import TrainingRecord
from engine.training.runs import runs_of

from .jobs import UNTIL
from .workers import TrainWorker, start_worker

if TYPE_CHECKING:
    from PySide6.QtWidgets import QLabel, QWidget

    from widgets.curve_panel import CurvePanel
    from widgets.layer_tree_model import LayerTreeModel
    from widgets.rate_finder_view import RateFinderDialog
    from widgets.runs_view import RunsView
    from widgets.training_panel import TrainingPanel

    from .jobs import Jobs
    from .messages import Messages
    from .settings import Settings
    from .workspace import Workspace

ENDED_WELL = ("completed", "early_stopping", "stopped")  # runs whose model is worth evaluating
TELEMETRY_MS = 250  # the tree's Training column is redrawn at most this often (4 Hz)
RAM_KEY = "training/feature_ram_mb"  # QSettings: the features' memory budget (MB), a setting of this computer


def _find_rate(session: Any, data: Any, config: Any, options: dict[str, Any],
               report_progress: Callable[[Any], Any], should_stop: Callable[[], bool]) -> Any:
    """The range test, in a worker: each step's ``{"lr", "loss"}`` and the messages go out as progress;
    a stop request ends the test after the current step. The engine puts the weights back."""
    from engine.training.rate_finder import RateFinder

    finder: Any = None

    def on_event(event: Any) -> None:
        if should_stop():
            finder.stop()
        name = type(event).__name__
        if name == "StepEvent":
            report_progress({"lr": float(event.lr), "loss": float(event.loss)})
        elif name == "MessageEvent":
            report_progress({"message": event.text, "level": event.level})

    finder = RateFinder(session, data, config, on_event, **options)
    return finder.find()


class Training(QObject):
    """The Train menu and tab. ``started()``, ``finished(result)`` (the TrainResult as a dict, or
    ``{"reason": "error", …}``); ``evaluateRequested()`` when a run has ended with a model to evaluate."""

    started = Signal()
    finished = Signal(object)
    evaluateRequested = Signal()
    tensorboard_changed = Signal(bool)  # whether runs are logged to TensorBoard now
    rateFound = Signal(object)  # the learning rate finder's RateFinderResult (None: stopped before it began)
    rateFailed = Signal(str)  # the finder's message when it gave no suggestion

    def __init__(self, window: QWidget, workspace: Workspace, jobs: Jobs, messages: Messages, panel: TrainingPanel,
                 curves: CurvePanel, device_label: QLabel, show_tab: Callable[[str], Any],
                 runs: RunsView | None = None, settings: Settings | None = None,
                 tree_model: LayerTreeModel | None = None) -> None:
        super().__init__(window)
        self._window, self._runs, self._settings, self._tree_model = window, runs, settings, tree_model
        self._workspace, self._jobs, self._messages = workspace, jobs, messages
        self._panel, self._curves, self._device_label = panel, curves, device_label
        self._show_tab = show_tab
        self._record: TrainingRecord | None = None  # the running training's data and settings
        self._epochs = self._epoch = 0
        self._evaluate_after_close = False  # a run ended while closing, and the close may yet be cancelled
        self.last_result: dict[str, Any] | None = None
        self._resuming = False  # the running run continues a paused one
        self._curves_hold_paused = False  # the curves on screen are the paused run's
        self.finder_dialog: RateFinderDialog | None = None
        self.last_finder: Any = None  # the last RateFinderResult
        self._telemetry: dict[str, Any] | None = None  # the latest sample not drawn yet
        self._telemetry_drawn = 0.0
        self.telemetry_draws = 0
        self._telemetry_timer = QTimer(self)
        self._telemetry_timer.setSingleShot(True)
        self._telemetry_timer.timeout.connect(self._draw_telemetry)
        # The window shows the telemetry by default: sampling costs a few percent of training time.
        panel.set_config(replace(panel.config(), telemetry=True))
        if settings is not None:  # the features' memory budget is this computer's setting
            saved = settings.value(RAM_KEY)
            try:
                if saved is not None:
                    panel.ram_spin.setValue(int(float(saved)))
            except (TypeError, ValueError):
                pass
            panel.ram_spin.valueChanged.connect(lambda mb: settings.set_value(RAM_KEY, int(mb)))
        panel.pauseRequested.connect(self.pause)
        panel.resumeRequested.connect(self.resume)
        panel.findRateRequested.connect(lambda: self.find_rate())
        panel.budgetRequested.connect(self.start_budget)
        workspace.connect("session", self._new_session)
        for event in ("session_changed", "data"):
            workspace.connect(event, lambda *_: self._refresh())
        workspace.connect("closing", self._on_closing)
        jobs.connect("changed", self._refresh)
        self._refresh()

    def _new_session(self, session) -> None:
        self.last_result = None  # nothing the previous model produced stays on screen
        self._curves_hold_paused = False
        self._curves.reset([])
        self._panel.clear_progress()
        self._telemetry_timer.stop()
        self._telemetry = None
        if self._tree_model is not None:
            self._tree_model.set_telemetry(None)
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
        why = self.why_not_find()
        self._panel.set_can_find(not why, why)
        why = self.why_not_resume()
        paused = self._workspace.paused_run
        self._panel.set_can_resume(not why, why or (f"Continue the run {paused.describe()}" if paused else ""))

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

    def why_not_find(self) -> str:
        """Why Find learning rate is disabled (its tooltip), or "" when it is not."""
        blocker = self._jobs.blocker("lr-find")
        why = self.why_not_start()
        if why.startswith("Training waits") and blocker is not None:
            return f"The learning rate finder waits until {UNTIL[blocker]}"
        return why

    def why_not_resume(self) -> str:
        """Why Resume is disabled, or "" when a paused run can continue now."""
        if self._workspace.paused_run is None:
            return "No run is paused"
        return self.why_not_start()

    # -- start and stop -------------------------------------------------------------------------
    def start(self) -> bool:
        """Start a new run with the panel's settings (a paused run is given up, after asking)."""
        paused = self._workspace.paused_run
        if paused is not None and not self._jobs.training:
            answer = QMessageBox.question(
                self._window, "Give up the paused run?",
                f"A run is paused ({paused.describe()}). Start a new run instead of resuming it?\n\n"
                "The paused run's state is then given up (its weights so far stay).",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
            if answer != QMessageBox.StandardButton.Yes:
                return False
        return self._launch(None)

    def start_budget(self, seconds: float) -> bool:
        """"Best model in N minutes": the time-budgeted plan (:mod:`engine.training.budget_run`) in the training
        worker; the plan, each stage's start and what it bought arrive as messages, the curves run on across
        the stages, Stop ends it keeping the best stage so far."""
        if self._jobs.training:
            self._messages.show_message("Training is already running.", "warning")
            return False
        return self._launch(None, budget=float(seconds))

    def resume(self) -> bool:
        """Continue the paused run with its own settings (the device and telemetry as the panel says)."""
        checkpoint = self._workspace.paused_run
        if checkpoint is None:
            self._messages.show_message("No run is paused.", "warning")
            return False
        return self._launch(checkpoint)

    def _resume_config(self, checkpoint: Any) -> Any:
        from engine.training.config import TrainConfig

        known = {f.name for f in fields(TrainConfig)}
        config = TrainConfig(**{k: v for k, v in checkpoint.config.items() if k in known})
        now = self._panel.config()
        config.device, config.telemetry, config.pause_after = now.device, now.telemetry, None
        return config

    def _launch(self, checkpoint: Any, budget: float | None = None) -> bool:
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
            config = self._panel.config() if checkpoint is None else self._resume_config(checkpoint)
        except GraftError as exc:
            self._messages.show_error(str(exc), title="Training settings")
            return False
        if budget is not None:
            from engine.training.budget_run import OneRun

            config = replace(config, devices=1)
            started = time.monotonic()  # the budget counts from the click

            def one_run(session: Any, data: Any, cfg: Any, on_event: Any) -> Any:
                return OneRun(session, data, budget, on_event, base=cfg, started=started)

            worker = TrainWorker(s, data, config, tensorboard=self.tensorboard_dir() or None, trainer_factory=one_run)
        elif getattr(config, "devices", 1) > 1 and checkpoint is None:  # all the GPUs: in child processes
            from .distributed import DistributedTrainWorker

            worker = DistributedTrainWorker(s, data, config, tensorboard=self.tensorboard_dir() or None)
        else:
            worker = TrainWorker(s, data, config, tensorboard=self.tensorboard_dir() or None, resume=checkpoint)
        self._resuming = checkpoint is not None
        # what evaluate and export read back from a saved project, as main.py train records it
        record = TrainingRecord.latest(s.project_extra) if checkpoint is not None else None
        if record is None:
            record = TrainingRecord.begin(data, config)
        record.config = dict(vars(config)) if budget is None else {**vars(config), "budget": budget}
        self._record = record
        self._epochs = int(getattr(config, "epochs", 0) or 0)
        self._epoch = checkpoint.epochs_run if checkpoint is not None else 0
        self._panel.set_plan("")
        if checkpoint is None:
            self._workspace.paused_run = None
            self._curves.reset(list(s.heads))
        else:
            self._panel.set_config(config)  # the paused run's settings, as it goes on with them
            if not self._curves_hold_paused:  # a reopened project: its curves so far, epoch by epoch
                self._replay(checkpoint)
        self._curves_hold_paused = False
        if self._tree_model is not None:
            self._telemetry_timer.stop()
            self._telemetry = None
            self._tree_model.set_telemetry({} if config.telemetry else None)
        self._evaluate_after_close = False
        self._show_tab("train")
        job = start_worker(worker, name="train", progress=self._on_progress, finished=self._on_finished,
                           errored=self._on_errored, start=False)
        self._panel.set_status("Resuming…" if checkpoint is not None else "Starting…" if budget is None else
                               "Measuring this computer's speed to plan the time…")
        say(f"Resuming the run {checkpoint.describe()}." if checkpoint is not None else "Training started."
            if budget is None else f"Best model in {budget / 60:g} minutes: measuring, then the plan.")
        self._jobs.set_training(job)
        job.start()
        self.started.emit()
        return True

    def _replay(self, checkpoint: Any) -> None:
        """The paused run's epochs on the curves (validation and metrics per epoch; its steps' losses are
        not kept), each at its last step."""
        s = self._workspace.session
        self._curves.reset(list(s.heads))
        per_epoch = checkpoint.done_steps / max(1, checkpoint.epochs_run)
        for entry in checkpoint.history:
            self._curves.add_epoch({**entry, "step": round(per_epoch * int(entry.get("epoch") or 0))})

    def pause(self) -> None:
        """Pause after the current epoch: the run ends with a checkpoint that Resume continues."""
        job = self._jobs.train_job
        if job is None or self._jobs.stopping:
            return
        job.worker.request_pause()
        self._panel.set_pausing()
        self._panel.set_status("Pausing after this epoch…")
        self._messages.show_message("Pausing after the current epoch…")

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
            level = message.get("level", "info")
            if level == "plan":  # a time-budgeted run's plan: kept on the Train tab while it runs
                self._panel.set_plan(message.get("text", ""))
                level = "info"
            self._messages.show_message(message.get("text", ""), level)
            self._panel.set_status(message.get("text", "").splitlines()[0] if message.get("text") else "")
        if batch.get("steps"):
            self._epoch = max(self._epoch, int(batch["steps"][-1].get("epoch") or 0))
        p = batch.get("progress")
        if p:  # the fraction covers the whole run, computing cached features included
            fraction = p.get("fraction")
            done, total = (int(round(1000 * fraction)), 1000) if fraction is not None else \
                (p.get("done_steps", 0), p.get("total_steps", 0))
            self._panel.set_progress(done, total, p.get("eta_seconds"), self._epoch or None, self._epochs)
        telemetry = batch.get("telemetry")
        if telemetry and self._tree_model is not None:
            self._show_telemetry(telemetry.get("blocks") or {})

    # -- live layer telemetry -------------------------------------------------------------------
    def _show_telemetry(self, blocks: dict[str, Any]) -> None:
        """Keep the latest sample; draw it now, or once TELEMETRY_MS has passed since the last drawing."""
        self._telemetry = blocks
        if self._telemetry_timer.isActive():
            return
        wait = TELEMETRY_MS - (time.monotonic() - self._telemetry_drawn) * 1000
        if wait <= 0:
            self._draw_telemetry()
        else:
            self._telemetry_timer.start(int(wait) + 1)

    def _draw_telemetry(self) -> None:
        if self._telemetry is None or self._tree_model is None:
            return
        self._tree_model.set_telemetry(self._telemetry)
        self._telemetry = None
        self._telemetry_drawn = time.monotonic()
        self.telemetry_draws += 1

    def _on_finished(self, result: dict[str, Any] | None) -> None:
        result = dict(result or {})
        checkpoint = result.pop("checkpoint", None)
        self.last_result = result
        self._telemetry_timer.stop()
        self._draw_telemetry()  # the last sample stays in the tree until the next run
        s = self._workspace.session
        if s is not None and self._record is not None:
            s.project_extra = self._record.finish(result).store(s.project_extra, replace_latest=self._resuming)
            self._show_runs()
        reason = result.get("reason", "done")
        self._workspace.paused_run = checkpoint if reason == "paused" else None
        self._curves_hold_paused = reason == "paused"
        self._jobs.set_training(None)
        self._workspace.weights_changed = True
        message = result.get("message") or f"Training ended ({reason})."
        if checkpoint is not None:
            message += " Resume continues it (saving keeps it in the project)."
        self._panel.set_status(message)
        self._messages.show_message(message)
        self.finished.emit(result)
        if self._workspace.data is not None and reason in ENDED_WELL:
            if self._workspace.closing:
                self._evaluate_after_close = True  # evaluated after all if the close is cancelled
            else:
                self.evaluateRequested.emit()

    def _on_errored(self, message: str, details: str) -> None:
        self._telemetry_timer.stop()
        self._jobs.set_training(None)
        self._panel.set_status(message)
        self._messages.show_error(message, details, "Training failed")
        self.finished.emit({"reason": "error", "message": message})

    # -- the learning rate finder ---------------------------------------------------------------
    def find_rate(self, **options: Any) -> bool:
        """Train ▸ Find learning rate: the range test in a worker with the panel's settings, its curve in
        the finder's window; ``options``: RateFinder's (``start_lr``, ``end_lr``, ``steps``)."""
        s, data = self._workspace.session, self._workspace.data
        why = self.why_not_find()
        if why:
            self._messages.show_message(why.rstrip(".") + ".", "warning")
            return False
        try:
            config = self._panel.config()
        except GraftError as exc:
            self._messages.show_error(str(exc), title="Training settings")
            return False
        dialog = self._finder()
        dialog.view.clear()
        dialog.show()
        dialog.raise_()
        self._panel.set_status("Finding a learning rate…")
        job = self._jobs.run("lr-find", "Finding a learning rate…", _find_rate, s, data, config, dict(options),
                             progress=self._on_finder_step, finished=self._on_found, errored=self._on_finder_failed)
        return job is not None

    def _finder(self) -> RateFinderDialog:
        if self.finder_dialog is None:
            from widgets.rate_finder_view import RateFinderDialog

            self.finder_dialog = RateFinderDialog(self._window)
            self.finder_dialog.view.applied.connect(self.use_rate)
            self.finder_dialog.rejected.connect(self._stop_finder)  # closing the window ends the test
        return self.finder_dialog

    def _stop_finder(self) -> None:
        job = self._jobs.running.get("lr-find")
        if job is not None:
            job.request_stop()

    def _on_finder_step(self, item: dict[str, Any]) -> None:
        if "lr" in item and self.finder_dialog is not None:
            self.finder_dialog.view.add_point(item["lr"], item["loss"])
        elif "message" in item:
            self._messages.show_message(item["message"], item.get("level", "info"))

    def _on_found(self, result: Any) -> None:
        self.last_finder = result
        if result is None:  # stopped before it began
            self._panel.set_status("The learning rate finder was stopped.")
            self.rateFound.emit(None)
            return
        if self.finder_dialog is not None:
            self.finder_dialog.view.set_result(result)
        text = result.describe()
        self._panel.set_status(text)
        self._messages.show_message(text + " Use this rate puts it in the learning rate field.")
        self.rateFound.emit(result)

    def _on_finder_failed(self, message: str, details: str) -> None:
        if self.finder_dialog is not None:
            self.finder_dialog.view.set_failed(message)
        self._panel.set_status(message)
        self._messages.show_error(message, details, "Learning rate finder")
        self.rateFailed.emit(message)

    def use_rate(self, rate: float) -> None:
        """Use this rate: the suggestion in the heads' learning rate field (the network's keeping its
        ratio to it when layers of the network train, as the test swept them), or in the network's when
        only its layers train."""
        s = self._workspace.session
        heads = self.finder_dialog.view.heads_rate if self.finder_dialog is not None else True
        trunk = bool(s is not None and s.model.trunk_trainable())
        self._panel.apply_rate(rate, heads=heads, keep_ratio=heads and trunk)
        config = self._panel.config()
        if heads:
            text = f"Heads learning rate set to {config.lr_heads:g}"
            text += f" (the network's to {config.lr_trunk:g}, keeping their ratio)." if trunk else "."
        else:
            text = f"Network learning rate set to {config.lr_trunk:g}."
        self._panel.set_status(text)
        self._messages.show_message(text)
