"""What a run keeps: the best epoch's weights (kept whenever the heads' validation metric rises, a tie
broken by the validation loss; restored when the run ends), and the state a pause saves in a
:class:`~engine.training.checkpoint.TrainCheckpoint` and a resumed run takes back (counters, optimiser and
schedule, random states, the batch order).

A part of :class:`engine.training.trainer.Trainer` (a mixin: its methods work on the trainer's state)."""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from engine.errors import GraftError
from engine.training.loaders import EpochBatchSampler


class RunState:
    """The best weights and the pause/resume state of a :class:`~engine.training.trainer.Trainer`."""

    # -- weights -------------------------------------------------------------------------------------
    def _snapshot_module(self) -> nn.Module:
        # With a frozen trunk (in eval mode, no trainable BatchNorm) only the heads change.
        return self.session.model.heads if self.trunk_frozen else self.session.model

    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self._snapshot_module().state_dict().items()}

    def _restore(self, state: dict[str, torch.Tensor]) -> None:
        module = self._snapshot_module()
        with torch.no_grad():
            current = module.state_dict()
            for k, v in state.items():
                current[k].copy_(v)

    def best_weights(self) -> dict[str, torch.Tensor]:
        """The best epoch's weights so far (before the first validation: the weights from before training),
        keyed as ``session.model.state_dict()`` is: all of them, or the heads' alone when only the heads
        train. CPU copies that training never writes into (a new epoch's best makes new ones), so another
        thread may read them while training goes on. Call it on the training thread (``on_event``)."""
        prefix = "heads." if self._snapshot_module() is not self.session.model else ""
        return {prefix + k: v for k, v in self._best_state.items()}

    def _keep_best(self, epoch: int, val_loss: float | None, validated: bool,
                   metrics: dict[str, dict[str, float]] | None = None) -> bool:
        """After an epoch: keep its weights if it validates best so far (True), else count it towards early
        stopping. Best: the heads' validation metric (:func:`engine.training.metrics.selection_score`:
        accuracy, macro F1, -MAE/std; several heads, their mean), a tie broken by the lower validation loss
        (:func:`engine.training.metrics.better_epoch`). Without validation data every epoch is the best one
        (weights left as trained)."""
        from engine.training.metrics import better_epoch, selection_score

        best = False
        score = selection_score(self.heads, metrics or {}) if val_loss is not None else None
        if val_loss is not None and better_epoch(score, val_loss, self.best_score, self.best_val_loss):
            best = True
            self.best_val_loss, self.best_score, self.best_epoch = val_loss, score, epoch
            self._best_state = self._snapshot()
            self._has_validated_best = True
            self._best_steps = self.done_steps
            self._bad_epochs = 0
        elif val_loss is not None:
            self._bad_epochs += 1
        if not validated:
            self.best_epoch = epoch
        return best

    # -- pause and resume ----------------------------------------------------------------------------
    def _train_sampler(self) -> EpochBatchSampler:
        """The training batches' order; a resumed run continues the paused run's sequence of orders."""
        cfg = self.config
        sampler = EpochBatchSampler(len(self.train_samples), cfg.batch_size, self.drop_last, cfg.seed)
        if self.resume is not None and self.resume.sampler_rng is not None:
            sampler.generator.set_state(self.resume.sampler_rng)
        self._sampler = sampler
        return sampler

    def _resume_counters(self) -> None:
        ck = self.resume
        if ck.has_validated_best:
            if set(ck.best_state) != set(self._best_state):
                raise GraftError("The paused run's best weights do not fit this model.")
            self._best_state = {k: v.detach().to("cpu", copy=True) for k, v in ck.best_state.items()}
        self.history = [dict(h) for h in ck.history]
        self.best_epoch, self.best_val_loss = ck.best_epoch, ck.best_val_loss
        kept = next((h for h in self.history if h.get("epoch") == ck.best_epoch), None)
        if kept is not None and ck.has_validated_best:
            from engine.training.metrics import selection_score

            self.best_score = selection_score(self.heads, kept.get("metrics") or {})
        self._has_validated_best, self._best_steps, self._bad_epochs = ck.has_validated_best, ck.best_steps, ck.bad_epochs
        self.epochs_run, self.done_steps, self.images_seen = ck.epochs_run, ck.done_steps, ck.images_seen
        self._resumed_steps, self._resumed_images, self._seconds_before = ck.done_steps, ck.images_seen, ck.seconds
        self.notes.append(f"Resuming the run {ck.describe()}.")

    def _resume_optimizer(self) -> None:
        saved = self.resume.optimizer.get("param_groups", [])
        if [len(g["params"]) for g in saved] != [len(g["params"]) for g in self.optimizer.param_groups]:
            raise GraftError("The paused run's optimizer state does not fit the weights that train now (were the "
                             "freeze settings or learning-rate factors changed?).")
        self.optimizer.load_state_dict(self.resume.optimizer)
        self.scheduler.load_state_dict(self.resume.scheduler)

    def _make_checkpoint(self) -> Any:
        from engine.training.checkpoint import TrainCheckpoint

        def cpu(value: Any) -> Any:
            if isinstance(value, torch.Tensor):
                return value.detach().to("cpu", copy=True)
            if isinstance(value, dict):
                return {k: cpu(v) for k, v in value.items()}
            if isinstance(value, list):
                return [cpu(v) for v in value]
            return value

        cuda_rng = [torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else []
        return TrainCheckpoint(
            config=dict(vars(self.config)), epochs_run=self.epochs_run, done_steps=self.done_steps,
            images_seen=self.images_seen, seconds=self._seconds_before + time.perf_counter() - self._t0,
            n_train=len(self.train_samples), n_val=len(self.val_samples), cached=self.cached,
            trunk_frozen=self.trunk_frozen, best_epoch=self.best_epoch, best_val_loss=self.best_val_loss,
            has_validated_best=self._has_validated_best, best_steps=self._best_steps, bad_epochs=self._bad_epochs,
            history=[dict(h) for h in self.history], optimizer=cpu(self.optimizer.state_dict()),
            scheduler=cpu(self.scheduler.state_dict()), rng=torch.get_rng_state(), cuda_rng=cuda_rng,
            sampler_rng=self._sampler.generator.get_state(), best_state=dict(self._best_state))

    def _restore_rng(self) -> None:
        ck = self.resume
        if ck.rng is not None:
            torch.set_rng_state(ck.rng)
        if ck.cuda_rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(ck.cuda_rng[0], self.device)
