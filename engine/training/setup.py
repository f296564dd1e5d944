"""Setting a run up, before anything trains: the checks and plans of :meth:`TrainerSetup._prepare` (heads
bound to the data, what trains, cached features or not, the steps, the regression heads' target statistics, a
resumed run's fit, joining other processes), moving the model to the device, and the optimiser with its
learning-rate groups and schedule (AdamW; warm-up then cosine, :func:`lr_lambda`).

A part of :class:`engine.training.trainer.Trainer` (a mixin: its methods work on the trainer's state)."""
from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from engine.errors import GraftError
from engine.network.graft_model import RegressionHead
from engine.network.heads import HeadSpec
from engine.network.lr_factors import param_factors
from engine.training.binding import bind_heads, labelled_count, target_statistics
from engine.training.device import autocast_dtype, resolve_device
from engine.training.events import MessageEvent


CHANNELS_LAST_ON_CPU = True  # a trunk that trains on a CPU does so in channels-last memory format


def lr_lambda(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


def _usable_stats(mean: Sequence[float], std: Sequence[float]) -> bool:
    return all(math.isfinite(m) for m in mean) and all(math.isfinite(v) and v > 0 for v in std)


def _short(values: Sequence[float]) -> str:
    text = ", ".join(f"{v:.4g}" for v in values[:4]) + (" …" if len(values) > 4 else "")
    return text if len(values) == 1 else f"[{text}]"


class TrainerSetup:
    """Preparation, device placement and the optimiser of a :class:`~engine.training.trainer.Trainer`."""

    # -- preparation (nothing trained, nothing moved) ------------------------------------------------
    def _prepare(self) -> None:
        cfg = self.config
        cfg.validate()
        model = self.session.model
        self.notes: list[str] = []
        self.target_map = bind_heads(self.session.heads, self.data, notes=self.notes)
        self.heads = self.target_map.heads
        train, val = list(self.data.train), list(self.data.val)
        if not train:
            raise GraftError("There is no training data (every usable image is in validation).")
        for b in self.target_map.bindings:
            if labelled_count(train, b) == 0:
                raise GraftError(f"Head {b.spec.name!r} has no labelled example in the training data.")
        from engine.data.splits import only_in_validation

        unseen = only_in_validation(self.target_map.data_heads, train, val)
        split_from = getattr(self.data, "split_from", "random")
        if unseen and split_from in ("column", "folders"):
            source = "the train/val folders" if split_from == "folders" else "the split column"
            more = f" ({len(unseen) - 1} more like it)" if len(unseen) > 1 else ""
            raise GraftError(f"No training example: {unseen[0]} ({source}){more}. Put at least one in training.")
        self.data_messages = [MessageEvent(note) for note in getattr(self.data, "notes", [])]
        self.data_messages += [MessageEvent(f"{u} (too few examples for the random split to share); training "
                                            "never sees it.", "warning") for u in unseen]
        self.train_samples, self.val_samples = train, val
        for name in (b.spec.name for b in self.target_map.bindings):
            if name not in model.heads:
                raise GraftError(f"Head {name!r} has no module in the model.")
        named = list(model.named_parameters())
        self.param_factors = factors = param_factors(model)  # learning-rate factor 0: does not train
        head_params = [p for n, p in named if n.startswith("heads.") and p.requires_grad and factors[n] > 0]
        trunk_params = [p for n, p in named if n.startswith("trunk.") and p.requires_grad and factors[n] > 0]
        self.unfreeze = None
        if cfg.unfreeze_every:
            from engine.training.schedule import UnfreezePlan

            self.unfreeze = UnfreezePlan(self.session, cfg.unfreeze_every, cfg.epochs)
            if not self.unfreeze.stages:
                raise GraftError("Gradual unfreezing: no block of the trunk can train (learning-rate factor 0).")
            params = dict(named)
            trunk_params = [params[n] for n in self.unfreeze.params]
            self.notes.append(self.unfreeze.describe())
        if not head_params and not trunk_params:
            raise GraftError("Nothing to train: every layer and head is frozen (or has learning-rate factor 0). "
                             "Unfreeze the heads at least.")
        self.head_params, self.trunk_params = head_params, trunk_params
        self.trunk_frozen = not trunk_params
        self.device = resolve_device(cfg.device)
        self.amp_dtype = autocast_dtype(self.device, cfg.amp)
        augment = (not self.trunk_frozen) if cfg.augment == "auto" else bool(cfg.augment)
        self.views = self._augment_views()
        if cfg.cache_features is True:
            self.cached = self.trunk_frozen
            if not self.trunk_frozen:
                self.notes.append("Features are not cached: part of the trunk trains.")
            elif augment and not self.views:
                self.notes.append("Cached features: augmentation is off.")
        elif cfg.cache_features == "auto":
            self.cached = self.trunk_frozen and (not augment or bool(self.views))
        else:
            self.cached = False
        if self.cached and model.has_dense_heads:
            self.cached, self.views = False, 0
            self.notes.append("Features are not cached: dense heads (segment, detect) read whole feature maps.")
        # augmented views: the cached features are of augmented images (and augmentation "auto" means on)
        self.augment = bool(self.views) or (augment and not self.cached)
        self.boundary = self._boundary_layer()
        n = len(train)
        self.drop_last = n > cfg.batch_size and n % cfg.batch_size == 1  # no batch of one (BatchNorm)
        self.steps_per_epoch = n // cfg.batch_size if self.drop_last else math.ceil(n / cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self._plan_target_stats()
        if self.resume is not None:
            self._check_resume()
        from engine.training import distributed

        if distributed.current() is not None:
            if model.has_dense_heads:
                raise GraftError("Dense heads (segment, detect) train in one process: train without --devices.")
            self._join_processes(distributed.current())

    def _boundary_layer(self) -> str | None:
        """Where the boundary cache (``TrainConfig.boundary_cache``) splits the trunk: the last frozen block
        below the ones that train (:func:`engine.training.boundary.boundary_for`), or None (a note says why
        when the cache was asked for)."""
        cfg = self.config
        if cfg.boundary_cache is False or self.cached or self.trunk_frozen or self.session.model.has_dense_heads:
            return None  # (dense heads read maps of layers that may lie below the boundary)
        from engine.training import distributed
        from engine.training.boundary import boundary_for

        why = None
        if self.unfreeze is not None:
            why = "gradual unfreezing moves the boundary"
        elif distributed.current() is not None or cfg.devices > 1:
            why = "it runs in one process only"
        elif cfg.boundary_cache == "auto" and self.device.type != "cpu":
            return None  # measured on a CPU only
        boundary = boundary_for(self.session) if why is None else None
        if boundary is None and why is None:
            why = "no frozen block lies below the blocks that train"
        if why is not None:
            if cfg.boundary_cache is True:
                self.notes.append(f"The frozen layers' output is not cached: {why}.")
            return None
        return boundary

    def _join_processes(self, ctx: Any) -> None:
        """Train as one of several processes (:mod:`engine.training.distributed`): this process's device;
        with images, this process's shard of every global batch."""
        cfg = self.config
        self._dist, self._sharded = ctx, not self.cached
        self._stop_request = threading.Event()
        self.device = ctx.device
        self.amp_dtype = autocast_dtype(self.device, cfg.amp)
        ctx.broadcast_state(self.session.model)  # the same start everywhere (random weights differ per process)
        if cfg.sync_batchnorm is True and not self.trunk_frozen:
            ctx.sync_batchnorm(nn.Module(), True)  # refused on the CPU before anything moves
        if self._sharded:
            self._shard = ctx.train_batches(len(self.train_samples), cfg.batch_size, cfg.seed,
                                            self.resume.epochs_run if self.resume is not None else 0)
            self.steps_per_epoch = len(self._shard)
            self.total_steps = self.steps_per_epoch * cfg.epochs
        self.notes.append(f"Training on {ctx.world_size} processes ({ctx.backend}): "
                          + ("each takes its share of every batch (DDP)." if self._sharded else
                             "each computes the features of its share of the images; the heads train on all."))

    def _augment_views(self) -> int:
        """The augmented views to cache per training image: the setting, or 0 with a note saying why it
        does not apply (a trunk that trains, augmentation or caching switched off)."""
        cfg = self.config
        views = cfg.augment_views
        if not views:
            return 0
        why = ("part of the trunk trains, so the images are augmented afresh every epoch" if not self.trunk_frozen
               else "augmentation is switched off" if cfg.augment is False
               else "feature caching is switched off" if cfg.cache_features is False else None)
        if why is None:
            return views
        self.notes.append(f"Augmented views ({views}) apply to a frozen trunk only, with augmentation and feature "
                          f"caching on: {why}; the setting is not used.")
        return 0

    def _check_resume(self) -> None:
        ck = self.resume
        ck.check_config(self.config)
        if (len(self.train_samples), len(self.val_samples)) != (ck.n_train, ck.n_val):
            raise GraftError(f"The data differs from the paused run's: {ck.n_train} training and {ck.n_val} "
                             f"validation images then, {len(self.train_samples)} and {len(self.val_samples)} now.")
        if (ck.cached, ck.trunk_frozen) != (self.cached, self.trunk_frozen):
            raise GraftError("The layers' freeze settings differ from the paused run's: resume it on the project "
                             "as it was saved.")

    def _plan_target_stats(self) -> None:
        """The target statistics each regression head trains with (set by :meth:`_apply_target_stats`
        once training starts): the spec's own when it has them (trained before: kept), else those
        already in the head's buffers (a head whose spec lost them, e.g. edited), else the mean/std of
        the training split's labelled values."""
        model = self.session.model
        self._stats_plan: list[tuple[HeadSpec, RegressionHead, list[float], list[float]]] = []
        for b in self.target_map.bindings:
            module = model.heads[b.spec.name]
            if b.spec.kind != "regression" or not isinstance(module, RegressionHead):
                continue
            if b.spec.has_target_stats:
                mean, std = list(b.spec.target_mean), list(b.spec.target_std)
            elif not module.is_identity() and _usable_stats(*module.target_stats()):
                mean, std = module.target_stats()
            else:
                mean, std, n = target_statistics(self.train_samples, b)
                self.notes.append(f"Head {b.spec.name!r} learns standardised targets: mean {_short(mean)}, "
                                  f"std {_short(std)} (from {n} labelled training images); its outputs stay "
                                  "in the data's units.")
            self._stats_plan.append((b.spec, module, mean, std))

    def _apply_target_stats(self) -> None:
        """Store the planned statistics in the specs and the heads' buffers (undone by
        :meth:`_revert_target_stats` when the weights from before training are restored)."""
        self._stats_before = []
        for spec, module, mean, std in self._stats_plan:
            self._stats_before.append((spec, spec.target_mean, spec.target_std))
            spec.set_target_stats(mean, std)
            module.set_target_stats(mean, std)

    def _revert_target_stats(self) -> None:
        for spec, mean, std in getattr(self, "_stats_before", []):
            spec.set_target_stats(mean, std)

    # -- device and optimiser -----------------------------------------------------------------------
    def _to_device(self) -> None:
        model = self.session.model
        device = self.device
        if device.type != "cpu":
            model.to(device)
            self._moved = True
            if device.type == "cuda":
                torch.backends.cudnn.benchmark = True
                if not self.cached:
                    with contextlib.suppress(Exception):
                        model.to(memory_format=torch.channels_last)
                        self._channels_last = True
        elif not self.cached and not self.trunk_frozen and self.boundary is None and CHANNELS_LAST_ON_CPU:
            # Training the trunk on a CPU: channels-last convolutions, 1.45x the fine-tuning step's speed on
            # Lite0 (bench/train_speed.py, part (e)); the boundary cache sets it for its own layers.
            model.to(memory_format=torch.channels_last)
            self._channels_last = True

    def _param_groups(self) -> list[dict[str, Any]]:
        """AdamW's groups: the heads at ``lr_heads`` and the trunk at ``lr_trunk``, each split by
        learning-rate factor (``lr × factor``; the factor-1 group of the heads first)."""
        cfg = self.config
        names = {id(p): n for n, p in self.session.model.named_parameters()}
        groups: list[dict[str, Any]] = []

        def add(params: list[nn.Parameter], base: float, name: str) -> None:
            by_factor: dict[float, list[nn.Parameter]] = {}
            for p in params:
                by_factor.setdefault(self.param_factors[names[id(p)]], []).append(p)
            for factor in sorted(by_factor, key=lambda f: (f != 1.0, -f)):
                groups.append({"params": by_factor[factor], "lr": base * factor, "factor": factor,
                               "name": name if factor == 1.0 else f"{name} x{factor:g}"})

        if self.head_params:
            add(self.head_params, cfg.lr_heads, "heads")
        if self.trunk_params and not self.cached:
            add(self.trunk_params, cfg.lr_trunk, "trunk")
        return groups

    def _schedule(self, warmup_steps: int) -> Callable[[int], float]:
        """The learning-rate multiplier per step (LambdaLR): warm-up then cosine."""
        return lr_lambda(warmup_steps, self.total_steps)

    def _reported_lr(self) -> float:
        """The learning rate of the first group without its factor: the heads' rate (the trunk's when
        only the trunk trains), as StepEvent and the history report it."""
        group = self.optimizer.param_groups[0]
        return group["lr"] / group.get("factor", 1.0)

    def _build_optimizer(self) -> None:
        cfg = self.config
        groups = self._param_groups()
        if any(g["factor"] != 1.0 for g in groups):
            parts = [f"{g['name']} {g['lr']:.3g}" for g in groups]
            self._emit(MessageEvent("Learning rates by factor: " + ", ".join(parts) + "."))
        extra: dict[str, Any] = {}
        if self.device.type == "cuda":
            extra["fused"] = True
        self.optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay, **extra)
        warmup = int(round(cfg.warmup_epochs * self.steps_per_epoch))
        warmup = min(warmup, max(0, self.total_steps - 1))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._schedule(warmup))
        self.scaler = None
        if self.amp_dtype == torch.float16:
            self.scaler = torch.amp.GradScaler("cuda")
