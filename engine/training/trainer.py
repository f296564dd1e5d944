"""Training a session's heads (and, if unfrozen, its trunk) on a :class:`~engine.data.samples.DataSource`.

This module is the loop: :class:`Trainer`'s run, its endings and the epoch/step loop. The rest of a run lives
beside it: the settings (:mod:`engine.training.config`), the events and errors (:mod:`engine.training.events`),
the device and precision (:mod:`engine.training.device`), heads matched with the data
(:mod:`engine.training.binding`), datasets and loaders (:mod:`engine.training.loaders`); and three parts of the
Trainer itself: preparation and the optimiser (:mod:`engine.training.setup`), training on images
(:mod:`engine.training.image_training`; on cached features: :mod:`engine.training.features`), the best weights
and pause/resume state (:mod:`engine.training.run_state`).

``Trainer(session, data, config, on_event).run()`` blocks until training ends; the GUI calls it on a
worker thread and may call :meth:`Trainer.stop` from any thread. Progress is reported through plain
event dataclasses (no tensors) passed to ``on_event`` on the training thread:

``TrainStarted`` → (``MessageEvent`` | ``StepEvent`` | ``ProgressEvent`` | ``EpochEvent``)* → ``TrainFinished``.

How it ends (``TrainResult.reason`` / ``TrainFinished.reason``):

* ``"completed"`` — all epochs ran; ``"early_stopping"`` — the best validation result did not improve for
  ``patience`` epochs; ``"stopped"`` — :meth:`Trainer.stop` was called (run returns within one batch).
  In these three cases the weights of the best validation epoch are restored: the heads' metric
  (accuracy, macro F1, -MAE; :func:`engine.training.metrics.selection_score`), a tie broken by the lower
  validation loss (with no validation data, or when stopped before the first epoch ended, the weights are
  left as trained).
* ``"paused"`` — :meth:`Trainer.pause` was called (or ``TrainConfig.pause_after`` reached): the run ends
  after the current epoch with the weights as trained so far and ``TrainResult.checkpoint``
  (:class:`engine.training.checkpoint.TrainCheckpoint`); ``Trainer(..., resume=checkpoint)`` continues.
* ``"error"`` — the loss became NaN/inf, the GPU ran out of memory, or another failure. The weights of
  the best epoch (or, before the first epoch ended, the weights from before training) are restored,
  ``TrainFinished(reason="error", message=...)`` is emitted, and then **run raises**
  :class:`TrainingError` (a :class:`GraftError` whose text is the message for the user and whose
  ``.result`` holds the :class:`TrainResult` so far). Problems found before training starts (heads that
  do not match the data, nothing to train, bad settings) raise :class:`GraftError` without any event
  and without touching the model.

Whatever happens, after ``run`` the model is back on the CPU, in eval mode, with ordinary (contiguous)
memory format, so it can be saved and exported at once.

Regression targets are standardised: a regression head without statistics gets the mean and std of
the training split's labelled values (``HeadSpec.target_mean``/``target_std`` and the head's buffers,
see :class:`engine.network.graft_model.RegressionHead`) when training starts, and keeps them when it trains
again; the loss is the squared error divided by the std (:mod:`engine.training.losses`). The head's output stays
in the data's units. A run that ends restoring the weights from before training takes them back too.

Learning rates: AdamW with the heads at ``lr_heads`` and trainable trunk layers at ``lr_trunk``, each times
the layer's learning-rate factor (:mod:`engine.network.lr_factors`; factor 0 does not train), warm-up then
cosine. ``TrainConfig.unfreeze_every`` unfreezes the trunk block by block (:mod:`engine.training.schedule`);
``TrainConfig.telemetry`` adds :class:`engine.training.telemetry.TelemetryEvent` to the events.

Speed: CUDA uses bf16 autocast where supported (else fp16 with a GradScaler), channels-last, pinned
memory and non-blocking copies; the loop never syncs with the GPU except once per step, one step late,
to report the loss. With a frozen trunk and no augmentation the trunk's features are computed once
and only the heads are trained, on the cached features (``TrainStarted.cached_features``); with
``TrainConfig.augment_views`` = K, once for K augmented views of each training image, and past a RAM budget
in a memory-mapped file (:mod:`engine.training.features`). On a CPU a
frozen trunk runs in onnxruntime (:mod:`engine.runtime.onnx_trunk`: converted once, checked against
PyTorch, PyTorch again with a note when it does not convert); ``TrainResult.trunk_backend`` says which.
"""
from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from engine.errors import GraftError
from engine.runtime.allocator import release_free_memory
from engine.runtime.onnx_trunk import TrunkRunner
from engine.training.config import TrainConfig
from engine.training.device import (autocast_context, clean_loader_error, describe_device, free_device_memory,
                                    is_out_of_memory, out_of_memory_message)
from engine.training.events import (EpochEvent, MessageEvent, NonFinite, ProgressEvent, StepEvent, Stopped,
                                    TrainFinished, TrainingError, TrainResult, TrainStarted)
from engine.training.image_training import ImageTraining
from engine.training.loaders import auto_num_workers
from engine.training.losses import LossAccumulator, compute_losses, target_scales
from engine.training.run_state import RunState
from engine.training.setup import TrainerSetup
from engine.units import plural


class Trainer(TrainerSetup, ImageTraining, RunState):
    """Trains ``session.model`` on ``data`` (a DataSource). See the module docstring for the events,
    endings and errors. One run per Trainer."""

    PROGRESS_INTERVAL = 0.2  # seconds between ProgressEvents
    # A heads-only epoch on cached features against the caching pass over the same images (Lite0, demo, CPU:
    # about 2 %): the caching pass's share of the progress bar until a step is timed, then the bar goes by time.
    HEADS_EPOCH_COST = 0.02

    WARN_NO_VALIDATION = True  # say so when there is no validation data (a rate finder needs none)

    def __init__(self, session: Any, data: Any, config: TrainConfig | None = None,
                 on_event: Callable[[object], None] | None = None, resume: Any = None,
                 on_checkpoint: Callable[[Any], None] | None = None) -> None:
        """``resume``: a :class:`~engine.training.checkpoint.TrainCheckpoint` of a paused run on this session
        and data, to continue it (the settings must be the paused run's). ``on_checkpoint``: called on the
        training thread after every finished epoch the run goes on from, with the checkpoint a pause there
        would have made (the model holds that epoch's weights meanwhile), so that the caller can save it:
        a run killed later resumes from there (``main.py train --out`` saves each)."""
        self.session = session
        self.data = data
        self.config = config or TrainConfig()
        self.on_event = on_event
        self.resume = resume
        self.on_checkpoint = on_checkpoint
        self._stop = threading.Event()
        self._stop_request = self._stop  # several processes: a request, agreed on into _stop every step
        self._pause = threading.Event()
        self._ran = False
        self._average: Any = None  # TrainConfig.ema: engine.training.averaging.WeightAverage
        self._dist: Any = None  # engine.training.distributed.Context when training on several processes
        self._sharded = False  # the images are sharded over the processes (DDP); else one process's work

    # -- public ------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the run to end after the current batch (thread-safe; the best weights are kept)."""
        self._stop_request.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop_request.is_set()

    def pause(self) -> None:
        """Ask the run to pause at the end of the current epoch (thread-safe): it ends with reason
        "paused", the weights as trained so far and ``TrainResult.checkpoint`` to resume from. On the
        last epoch the run simply completes."""
        self._pause.set()

    @property
    def pause_requested(self) -> bool:
        return self._pause.is_set()

    def run(self) -> TrainResult:
        if self._ran:
            raise GraftError("This trainer has already run; make a new one to train again.")
        self._ran = True
        self._prepare()
        try:
            return self._run()
        finally:
            self._cleanup()

    def _agree_stop(self, step: int | None = None) -> None:
        """Several processes: a stop asked in any of them stops all of them, here, at the same step."""
        if self._dist is not None and self._dist.agree(self._stop_request.is_set(), step):
            self._stop.set()

    @property
    def feature_share(self) -> float:
        """The caching pass's share of the run before any step is timed (from the epochs to come)."""
        return 1.0 / (1.0 + self.HEADS_EPOCH_COST * max(1, int(self.config.epochs or 1)))

    # -- events ------------------------------------------------------------------------------------
    def _emit(self, event: object) -> None:
        if self.on_event is not None and (self._dist is None or self._dist.main):  # process 0 alone reports
            self.on_event(event)

    def _progress(self, done: int, phase: str = "train", force: bool = False, fraction: float | None = None) -> None:
        now = time.perf_counter()
        if not force and now - self._last_progress < self.PROGRESS_INTERVAL:
            return
        self._last_progress = now
        elapsed = now - self._t0
        eta = None
        if phase == "train" and done > self._resumed_steps:
            per_step = (now - self._t_train) / (done - self._resumed_steps)
            eta = per_step * (self.total_steps - done)
            if fraction is None:  # by time: the caching pass's share is what it took, not a guess
                spent = elapsed + per_step * self._resumed_steps  # steps of a paused run, at today's pace
                fraction = spent / (spent + eta) if spent + eta > 0 else 1.0
        if fraction is None:  # no step timed yet
            base = self.feature_share if self.cached else 0.0
            fraction = base + (1.0 - base) * done / max(1, self.total_steps)
        fraction = min(1.0, max(0.0, fraction))
        if eta is None and fraction > 0.01:
            eta = elapsed / fraction * (1.0 - fraction)
        self._emit(ProgressEvent(done, self.total_steps, fraction, eta, phase))

    # -- the run -------------------------------------------------------------------------------------
    def _run(self) -> TrainResult:
        cfg = self.config
        device = self.device
        self._t0 = self._t_train = time.perf_counter()
        self._last_progress = 0.0
        self.history: list[dict[str, Any]] = []
        self.best_epoch: int | None = None
        self.best_val_loss: float | None = None  # the best epoch's (not always the lowest)
        self.best_score: float | None = None  # the best epoch's metrics.selection_score
        self.done_steps = 0
        self.images_seen = 0
        self.epochs_run = 0
        self._moved = False
        self._channels_last = False
        self._runner: TrunkRunner | None = None
        self._phase: tuple[str, int] | None = None  # (what runs, its batch size): for out-of-memory advice
        self._val_batch = cfg.batch_size * 2
        self._bad_epochs = 0
        self._resumed_steps = self._resumed_images = 0
        self._seconds_before = 0.0
        self.checkpoint = None
        self.telemetry = None
        self.features_on_disk = False
        self.boundary_cached = False
        model = self.session.model
        # gradual unfreezing changes trainable flags during the run: they are put back by _cleanup
        self._flags_before = ({n: p.requires_grad for n, p in model.named_parameters()}
                              if self.unfreeze is not None else {})
        torch.manual_seed(cfg.seed)  # dropout in the heads; augmentation in workers is seeded by the loader
        self.num_workers = 0
        if not self.cached:
            self.num_workers = auto_num_workers(len(self.train_samples), cfg.batch_size, cfg.num_workers,
                                                self.device)

        # Weights to restore if things go wrong before the first validation.
        self._best_state = self._snapshot()
        self._has_validated_best = False
        self._best_steps = 0
        if self.resume is not None:
            self._resume_counters()
        reason, message = "completed", ""
        self._apply_target_stats()
        try:
            self._to_device()
            self.scales = target_scales(self.session.model.heads)  # the heads' target_std, on the device
            self._emit(TrainStarted(cfg.epochs, self.steps_per_epoch, self.total_steps, str(device), self.cached,
                                    len(self.train_samples), len(self.val_samples), [h.name for h in self.heads],
                                    describe_device(device, self.amp_dtype),
                                    {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "fp32"),
                                    self.num_workers, self.augment, self.views))
            for event in self.data_messages:
                self._emit(event)
            for note in self.notes:
                self._emit(MessageEvent(note))
            if not self.val_samples and self.WARN_NO_VALIDATION:
                self._emit(MessageEvent("No validation data: early stopping is off and the final weights are kept.",
                                        "warning"))
            self._build_optimizer()
            if self.resume is not None:
                self._resume_optimizer()
            if cfg.telemetry:
                from engine.training.advice import trunk_blocks
                from engine.training.telemetry import Telemetry, telemetry_blocks

                trained = [p for g in self.optimizer.param_groups for p in g["params"]]
                blocks = [n.path for n in trunk_blocks(self.session)]
                self.telemetry = Telemetry(telemetry_blocks(self.session.model, trained, blocks))
            if self.cached:
                reason = self._train_cached()
            elif self.boundary is not None:
                reason = self._train_boundary()
            else:
                reason = self._train_images()
        except Stopped:
            reason = "stopped"
        except NonFinite as exc:
            reason = "error"
            which = f" of head {exc.head!r}" if exc.head else ""
            message = (f"Training stopped at epoch {exc.epoch}, step {exc.step}: the loss{which} became NaN or "
                       "infinite. Try a lower learning rate")
            message += ("; the weights of the best epoch were restored." if self._has_validated_best
                        else "; the weights from before training were restored.")
        except Exception as exc:  # noqa: BLE001 - everything ends in TrainFinished and a clean model
            reason = "error"
            if is_out_of_memory(exc):
                free_device_memory(device)
                phase, batch = self._phase or (None, cfg.batch_size)
                message = out_of_memory_message(device, batch, phase, configured=cfg.batch_size)
                self._error = GraftError(message)
            else:
                clean = clean_loader_error(exc)
                if clean is None and self._dist is not None:  # e.g. DDP's all-reduce in the backward pass
                    from engine.training.distributed import ProcessLost, lost_message

                    clean = ProcessLost(lost_message(self._dist, exc))
                message = str(clean) if clean is not None else f"Training failed: {exc.__class__.__name__}: {exc}"
                self._error = clean if clean is not None else exc
            message = message.rstrip(".") + (
                f" (the weights of the best epoch, {self.best_epoch}, were restored)." if self._has_validated_best
                else " (the weights from before training were restored).")

        averaged = getattr(self, "_average", None) is not None  # the best state holds averaged weights
        if reason == "error" or (reason != "paused" and self._has_validated_best
                                 and (self.done_steps != self._best_steps or averaged)):
            self._restore(self._best_state)
            if not self._has_validated_best:
                self._revert_target_stats()  # the weights from before training: their statistics too
        seconds = time.perf_counter() - self._t0
        if reason == "paused":
            message = (f"Paused after epoch {self.epochs_run} of {cfg.epochs}; resume to continue from here "
                       "(optimizer and schedule state kept). The weights are as trained so far"
                       + (f"; the best epoch so far is {self.best_epoch}." if self._has_validated_best else "."))
        elif reason == "stopped" and not message:
            message = (f"Stopped after {plural(self.done_steps, 'step')}; "
                       + (f"kept the weights of epoch {self.best_epoch} ({self._best_text()})."
                          if self._has_validated_best else "the weights are as trained so far (no epoch finished)."))
        elif reason == "early_stopping":
            message = (f"Stopped early after epoch {self.epochs_run}: the validation result has not improved for "
                       f"{cfg.patience} epochs; kept epoch {self.best_epoch} ({self._best_text()}).")
        elif reason == "completed":
            message = (f"Finished {plural(self.epochs_run, 'epoch')}"
                       + (f"; kept epoch {self.best_epoch} ({self._best_text()})."
                          if self._has_validated_best else "; no validation data, so the final weights are kept."))
        images = self.images_seen - self._resumed_images
        result = TrainResult(reason, self.history, self.best_epoch, self.best_val_loss, seconds + self._seconds_before,
                             images / seconds if seconds > 0 else 0.0, message, self.epochs_run,
                             self.done_steps, self.cached, str(device),
                             self._runner.backend if self._runner is not None else "pytorch", self.checkpoint,
                             self.views, self.features_on_disk, self.boundary_cached)
        self._emit(TrainFinished(reason, self.best_epoch, self.best_val_loss, message))
        if reason == "error":
            err = getattr(self, "_error", None)
            if err is not None and not isinstance(err, GraftError):
                raise err
            raise TrainingError(message, result) from err
        return result

    def _batchnorm_eval(self) -> None:
        """``TrainConfig.batchnorm_eval``: the trunk's BatchNorm layers on their running statistics while
        training (called after ``model.train()``)."""
        if self.config.batchnorm_eval:
            for m in self.session.model.trunk.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def _best_text(self) -> str:
        """The kept epoch's validation result in words: ``"best validation: acc 0.991; loss 0.0913"``."""
        from engine.training.metrics import headline

        kept = next((h for h in self.history if h.get("epoch") == self.best_epoch), None)
        metrics = (kept or {}).get("metrics") or {}
        words = [headline(h.kind, metrics[h.name]) for h in self.heads if metrics.get(h.name)]
        loss = f"loss {self.best_val_loss:.4f}" if self.best_val_loss is not None else ""
        return "best validation: " + "; ".join(w for w in [", ".join(words), loss] if w)

    def _cleanup(self) -> None:
        model = self.session.model
        if getattr(self, "_flags_before", None):  # gradual unfreezing: the session's own freeze settings
            for name, p in model.named_parameters():
                if name in self._flags_before:
                    p.requires_grad_(self._flags_before[name])
        if getattr(self, "_moved", False):
            model.to("cpu")
            free_device_memory(self.device)
        if getattr(self, "_channels_last", False):
            model.to(memory_format=torch.contiguous_format)
        model.eval()
        release_free_memory()

    # -- one optimisation step -----------------------------------------------------------------------
    def _step(self, outputs_fn: Callable[[], dict[str, torch.Tensor]], targets: dict[str, torch.Tensor]):
        with autocast_context(self.device, self.amp_dtype):
            outputs = outputs_fn()
        losses = compute_losses(self.heads, outputs, targets, self.scales, self.config.label_smoothing)
        objective = losses.total
        if self._sharded:  # the global batch's loss (its reported value too)
            objective, losses = self._dist.step_losses(losses, self.heads)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(objective).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            objective.backward()
            self.optimizer.step()
        lr = self._reported_lr()
        self.scheduler.step()
        if self._average is not None:
            self._average.update()
        return losses, lr

    def _report_step(self, pending: tuple | None, epoch_acc: LossAccumulator) -> None:
        """Emit the StepEvent of a finished step (called one step late, so reading the loss does not
        stall the GPU) and check the loss is finite."""
        if pending is None:
            return
        step, epoch, losses, lr = pending
        names = list(losses.per_head)
        values = torch.stack([losses.total.detach().float()] + [losses.per_head[n].detach().float()
                                                                 for n in names]).tolist()
        total, per_head = values[0], dict(zip(names, values[1:]))
        if not math.isfinite(total):
            bad = next((n for n, v in per_head.items() if not math.isfinite(v)), None)
            raise NonFinite(bad, epoch, step)
        self._emit(StepEvent(step, epoch, total, per_head, lr))

    # -- training on cached features (engine.training.features) -------------------------------------
    def _train_cached(self) -> str:
        from engine.training.features import train_cached

        return train_cached(self)

    # -- gradual unfreezing ------------------------------------------------------------------------------
    def _train_boundary(self) -> str:
        """The boundary cache when the trunk splits at the boundary (checked on a dry run), else images."""
        from engine.training.boundary import split_trunk
        from engine.training.features import train_boundary_cached

        model = self.session.model
        try:
            split = split_trunk(model.trunk, self.boundary, model.dummy_input(2).to(self.device))
        except GraftError as exc:
            self._emit(MessageEvent(f"The frozen layers' output is not cached: {exc}"))
            self.boundary = None
            return self._train_images()
        self.boundary_cached = True
        return train_boundary_cached(self, split)

    def _apply_unfreeze(self, epoch: int) -> None:
        plan = self.unfreeze
        trains = plan.trainable_at(epoch)
        params = dict(self.session.model.named_parameters())
        for name in plan.params:
            params[name].requires_grad_(name in trains)
        joined = plan.starting_at(epoch)
        if joined:
            self._emit(MessageEvent(f"Epoch {epoch}: {', '.join(joined)} starts training (gradual unfreezing)."))

    # -- the epoch loop shared by both paths ---------------------------------------------------------
    def _epochs(self, train_batches: Callable[[], Iterator], validate: Callable | None,
                set_train_mode: Callable[[], None]) -> str:
        cfg = self.config
        patience = cfg.patience or 0
        self._progress(self.done_steps, force=True)
        if self.resume is not None:
            self._restore_rng()
        self._average = self._weight_average() if cfg.ema else None
        for epoch in range(self.epochs_run + 1, cfg.epochs + 1):
            t_epoch = time.perf_counter()
            if self.unfreeze is not None:
                self._apply_unfreeze(epoch)
            set_train_mode()
            self._phase = ("training", cfg.batch_size)
            train_acc = LossAccumulator(self.heads)
            pending = None
            for outputs_fn, targets, n in train_batches():
                losses, lr = self._step(outputs_fn, targets)
                self.done_steps += 1
                self.images_seen += n
                train_acc.add(losses)
                self._report_step(pending, train_acc)
                pending = (self.done_steps, epoch, losses, lr)
                if self.telemetry is not None and self.telemetry.due():
                    self._emit(self.telemetry.sample(self.done_steps, epoch))
                self._progress(self.done_steps)
                self._agree_stop(self.done_steps)
                if self._stop.is_set():
                    self._report_step(pending, train_acc)
                    raise Stopped
            self._report_step(pending, train_acc)
            if self._sharded:
                self._dist.reduce_accumulator(train_acc)
            train_loss, train_heads = train_acc.values()
            if train_loss is not None and not math.isfinite(train_loss):
                raise NonFinite(None, epoch, self.done_steps)
            val_loss, val_heads, metrics = None, {}, {}
            averaged = self._average.swapped_in() if self._average is not None else contextlib.nullcontext()
            with averaged:  # with weight averaging, the averaged weights are validated and kept
                if validate is not None:
                    self._phase = ("validating", self._val_batch)
                    val_acc, val_metrics = validate()
                    val_loss, val_heads = val_acc.values()
                    metrics = val_metrics.summary()
                    if val_loss is not None and not math.isfinite(val_loss):
                        raise NonFinite(next((n for n, v in val_heads.items() if not math.isfinite(v)), None),
                                         epoch, self.done_steps)
                self.epochs_run = epoch
                best = self._keep_best(epoch, val_loss, validated=validate is not None, metrics=metrics)
            seconds = time.perf_counter() - t_epoch
            event = EpochEvent(epoch, train_loss, val_loss, train_heads, val_heads, metrics, best, seconds)
            self.history.append({**event.__dict__, "lr": self._reported_lr()})
            self._emit(event)
            self._progress(self.done_steps, force=True)
            if patience and self._bad_epochs >= patience and epoch < cfg.epochs:
                return "early_stopping"
            pause = self._pause.is_set() if self._dist is None else self._dist.agree(self._pause.is_set())
            if epoch < cfg.epochs and (pause or cfg.pause_after == epoch):
                self.checkpoint = self._make_checkpoint()
                return "paused"
            if epoch < cfg.epochs and self.on_checkpoint is not None and (self._dist is None or self._dist.main):
                self.on_checkpoint(self._make_checkpoint())
        if self._average is not None and validate is None:
            self._average.keep()  # no validation to choose with: end on the averaged weights
        return "completed"

    def _weight_average(self):
        """``TrainConfig.ema``: the moving average of the weights that train (:mod:`engine.training.averaging`),
        spanning about an epoch's steps."""
        from engine.training.averaging import WeightAverage

        names = {id(p): n for n, p in self.session.model.named_parameters()}
        trained = [names[id(p)] for g in self.optimizer.param_groups for p in g["params"] if id(p) in names]
        return WeightAverage(self.session.model, trained, self.steps_per_epoch)


def train(session: Any, data: Any, config: TrainConfig | None = None,
          on_event: Callable[[object], None] | None = None) -> TrainResult:
    """Shorthand for ``Trainer(session, data, config, on_event).run()``."""
    return Trainer(session, data, config, on_event).run()
