"""Training on images decoded every epoch (augmented while layers of the trunk train; a frozen trunk runs in
PyTorch or onnxruntime for each batch), and the services both paths share with
:mod:`engine.training.features` (which trains on cached features and must not import the trainer): the image
dataset, loaders for passes without gradients, moving batches, images that did not decode, stop checks.

A part of :class:`engine.training.trainer.Trainer` (a mixin: its methods work on the trainer's state)."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from engine.data.image_dataset import UNREADABLE
from engine.runtime.onnx_trunk import TrunkRunner, features_then_heads, trunk_runner
from engine.training.device import autocast_context
from engine.training.events import MessageEvent, Stopped
from engine.training.loaders import MappedDataset, auto_num_workers, make_loader
from engine.training.losses import LossAccumulator, compute_losses
from engine.training.metrics import MetricSet
from engine.units import plural


class ImageTraining:
    """The image path and the shared services of a :class:`~engine.training.trainer.Trainer`."""

    # -- training on images --------------------------------------------------------------------------
    def _image_dataset(self, samples: Sequence[Any], augment: bool):
        from engine.data.image_dataset import ImageDataset

        from engine.training.augment import apply_policy

        base = ImageDataset(samples, self.target_map.data_heads, self.session.input_spec, augment=augment)
        return MappedDataset(apply_policy(base, self.config.augment_policy), self.target_map)

    def _frozen_trunk(self, images: int) -> TrunkRunner | None:
        """What runs the frozen trunk over ``images`` images (None: PyTorch); its note becomes a message."""
        runner, note = trunk_runner(self.session.model, self.device, images)
        if note:
            self._emit(MessageEvent(note[0].upper() + note[1:] + "."))
        self._runner = runner
        return runner

    # -- small services for engine.training.features (which must not import the trainer) -------------
    def _note(self, text: str, level: str = "info") -> None:
        self._emit(MessageEvent(text, level))

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise Stopped

    def _autocast(self):
        return autocast_context(self.device, self.amp_dtype)

    def _loader(self, dataset: torch.utils.data.Dataset, batch_size: int) -> torch.utils.data.DataLoader:
        """An ordered loader for a pass without gradients (workers as for training); several processes: this
        process's shard (:meth:`engine.training.distributed.Context.extract_sampler`)."""
        cfg = self.config
        workers = auto_num_workers(len(dataset), cfg.batch_size, cfg.num_workers, self.device)
        shard = self._dist.extract_sampler(len(dataset), batch_size) if self._dist is not None else None
        return make_loader(dataset, batch_size=batch_size, device=self.device, num_workers=workers, seed=cfg.seed,
                           batch_sampler=shard)

    def _unreadable(self, targets: dict[str, torch.Tensor], samples: Sequence[Any]) -> dict[str, torch.Tensor]:
        """The targets without the unreadable-image marks; images that did not decode (data only quick-checked
        up front) are reported once each, as a warning and in ``data.skipped``. Their labels count as missing."""
        marks = targets.pop(UNREADABLE, None)
        if marks is None or not bool((marks >= 0).any()):
            return targets
        from engine.data.decoding import check_image

        seen = self.__dict__.setdefault("_unreadable_paths", set())
        found = []
        for i in marks[marks >= 0].tolist():
            path = samples[i].path
            if path not in seen:
                seen.add(path)
                found.append((str(path), check_image(path) or "does not decode"))
        if found:
            skipped = getattr(self.data, "skipped", None)
            if isinstance(skipped, list):
                skipped.extend(found)
            shown = "; ".join(f"{p}: {r}" for p, r in found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
            self._emit(MessageEvent(f"Left out {plural(len(found), 'image')} that did not decode (labels counted as "
                                    f"missing; {len(seen)} so far): {shown}.", "warning"))
        return targets

    def _to(self, images: torch.Tensor, targets: dict[str, torch.Tensor]):
        device = self.device
        if device.type == "cpu":
            if self._channels_last and images.dim() == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            return images, targets
        nb = device.type == "cuda"
        fmt = torch.channels_last if self._channels_last else torch.preserve_format
        images = images.to(device, non_blocking=nb, memory_format=fmt)
        return images, {k: v.to(device, non_blocking=nb) for k, v in targets.items()}

    def _train_images(self) -> str:
        cfg = self.config
        model = self.session.model
        sampler = self._train_sampler()
        ctx, rank = self._dist, (self._dist.rank if self._dist is not None else 0)
        val_samples = self.val_samples if ctx is None else [self.val_samples[i]
                                                             for i in ctx.val_indices(len(self.val_samples))]
        train_loader = make_loader(self._image_dataset(self.train_samples, self.augment), batch_size=cfg.batch_size,
                                   device=self.device, num_workers=self.num_workers,
                                   batch_sampler=sampler if ctx is None else self._shard, seed=cfg.seed + 7919 * rank)
        val_loader = None
        if self.val_samples:
            val_workers = auto_num_workers(len(val_samples), cfg.batch_size, cfg.num_workers, self.device)
            self._val_batch = cfg.batch_size * 2
            val_loader = make_loader(self._image_dataset(val_samples, False), batch_size=self._val_batch,
                                     device=self.device, num_workers=val_workers, seed=cfg.seed)
        trunk = model.trunk
        runner = None
        if self.trunk_frozen:  # augmented images through a fixed trunk: every epoch is a frozen-trunk pass
            runner = self._frozen_trunk(len(self.train_samples) * cfg.epochs + len(self.val_samples))
        self._ddp, world = None, (ctx.world_size if ctx is not None else 1)
        if ctx is not None and not self.trunk_frozen:
            replaced = ctx.sync_batchnorm(model.trunk, cfg.sync_batchnorm)
            if replaced:
                self._emit(MessageEvent(f"SyncBatchNorm: {plural(replaced, 'BatchNorm layer')} normalise over the "
                                        "global batch."))

        def forward(images: torch.Tensor) -> Callable[[], dict[str, torch.Tensor]]:
            ddp = self._ddp  # several processes: DDP averages the gradients in the backward pass
            if self.trunk_frozen and model.has_dense_heads:  # dense heads read the maps: PyTorch runs the trunk
                def run_dense() -> dict[str, torch.Tensor]:
                    with torch.no_grad():
                        features, maps = trunk.forward_maps(images)
                    return model.heads_on_maps(features, maps, tuple(images.shape[-2:]))
                return run_dense
            if self.trunk_frozen:
                def run() -> dict[str, torch.Tensor]:
                    with torch.no_grad():
                        features = trunk(images) if runner is None else runner(images)
                    return (model.forward_heads if ddp is None else ddp)(features)
                return run
            return lambda: (model if ddp is None else ddp)(images)

        def train_batches() -> Iterator[tuple[Callable, dict[str, torch.Tensor], int]]:
            for images, targets in train_loader:
                if self._stop.is_set():
                    raise Stopped
                images, targets = self._to(images, self._unreadable(targets, self.train_samples))
                yield forward(images), targets, images.shape[0] * world

        def validate() -> tuple[LossAccumulator, MetricSet]:
            acc, metrics = LossAccumulator(self.heads), MetricSet(self.heads, model.heads)
            model.eval()
            with torch.no_grad(), autocast_context(self.device, self.amp_dtype):
                for images, targets in val_loader:
                    if self._stop.is_set():
                        raise Stopped
                    images, targets = self._to(images, self._unreadable(targets, self.val_samples))
                    outputs = features_then_heads(model, runner, images)
                    acc.add(compute_losses(self.heads, outputs, targets, self.scales))
                    metrics.update(outputs, targets)
            if ctx is not None:  # every process's share of the validation images, summed
                ctx.reduce_accumulator(acc)
                ctx.reduce_metrics(metrics)
            return acc, metrics

        def set_train_mode() -> None:
            model.train()
            if self.trunk_frozen:
                model.trunk.eval()  # a frozen trunk is a fixed feature extractor (as with cached features)
            self._batchnorm_eval()
            if ctx is not None:
                self._wrap_ddp(ctx)

        try:
            return self._epochs(train_batches, validate if val_loader is not None else None, set_train_mode)
        finally:
            train_loader = val_loader = self._ddp = None  # drop the loaders: persistent workers shut down now
            if ctx is not None:
                ctx.restore_batchnorm()

    def _wrap_ddp(self, ctx: Any) -> None:
        """DDP over what trains now (again when gradual unfreezing changed it: DDP syncs the parameters
        that train when it is built)."""
        from engine.training.distributed import HeadsOnFeatures

        model = self.session.model
        key = tuple(p.requires_grad for p in model.parameters())
        if self._ddp is None or key != self._ddp_key:
            self._ddp = None
            self._ddp = ctx.wrap(HeadsOnFeatures(model) if self.trunk_frozen else model)
            self._ddp_key = key
