"""A paused training run, to be resumed later: ``Trainer(..., resume=checkpoint)`` continues where it
stopped, ending at the weights an uninterrupted run would have reached (same data, same settings).

A run pauses at the end of an epoch (:meth:`engine.training.trainer.Trainer.pause`, or
``TrainConfig.pause_after``). The checkpoint holds what the weights alone do not: the optimizer's state
(AdamW moments and step counts), the learning-rate schedule's position, the epoch/step counters, the best
epoch so far with its weights, the patience count, the per-epoch history, and the random generators'
states (PyTorch's global one, which drives dropout and main-process augmentation, and the batch order's).
With augmentation in loader worker processes the workers start afresh on resume, so their random crops
differ from an uninterrupted run's.

It is stored in the project as plain data (``to_parts``: a JSON-able dict and a dict of tensors, which
:mod:`engine.project.project_file` writes as ``checkpoint.json`` and ``checkpoint.safetensors``): no pickle.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import torch

from engine.errors import GraftError

FORMAT = 1
# Settings a resumed run must share with the paused one: they decide the schedule, the batches and the steps.
RESUME_FIELDS = ("epochs", "batch_size", "lr_heads", "lr_trunk", "weight_decay", "warmup_epochs", "seed",
                 "unfreeze_every", "augment", "cache_features", "amp", "augment_views")
FIELD_DEFAULTS = {"augment_views": 0}  # a checkpoint from before the setting existed ran without it


@dataclass
class TrainCheckpoint:
    config: dict[str, Any]  # the TrainConfig's fields
    epochs_run: int
    done_steps: int
    images_seen: int
    seconds: float  # training time before the pause
    n_train: int
    n_val: int
    cached: bool
    trunk_frozen: bool
    best_epoch: int | None = None
    best_val_loss: float | None = None
    has_validated_best: bool = False
    best_steps: int = 0
    bad_epochs: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    optimizer: dict[str, Any] = field(default_factory=dict)  # torch optimizer state_dict
    scheduler: dict[str, Any] = field(default_factory=dict)  # torch LR scheduler state_dict
    rng: torch.Tensor | None = None  # torch.get_rng_state()
    cuda_rng: list[torch.Tensor] = field(default_factory=list)
    sampler_rng: torch.Tensor | None = None  # the batch order's generator
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)  # the best epoch's weights

    # -- to and from plain parts -----------------------------------------------------------------------
    def to_parts(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """A JSON-able dict and independent contiguous CPU tensors (safetensors-ready)."""
        tensors: dict[str, torch.Tensor] = {}

        def put(key: str, t: torch.Tensor) -> str:
            tensors[key] = t.detach().to("cpu").contiguous().clone()
            return key

        state: dict[str, dict[str, Any]] = {}
        for index, entry in self.optimizer.get("state", {}).items():
            state[str(index)] = {k: {"tensor": put(f"optimizer.{index}.{k}", v)} if isinstance(v, torch.Tensor)
                                 else v for k, v in entry.items()}
        groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
                  for g in self.optimizer.get("param_groups", [])]
        meta = {k: getattr(self, k) for k in ("config", "epochs_run", "done_steps", "images_seen", "seconds",
                                               "n_train", "n_val", "cached", "trunk_frozen", "best_epoch",
                                               "best_val_loss", "has_validated_best", "best_steps", "bad_epochs",
                                               "history", "scheduler")}
        meta.update(format=FORMAT, optimizer={"state": state, "param_groups": groups},
                    best_state=sorted(self.best_state), cuda_rng=len(self.cuda_rng))
        for k, v in self.best_state.items():
            put(f"best.{k}", v)
        if self.rng is not None:
            put("rng.torch", self.rng)
        if self.sampler_rng is not None:
            put("rng.sampler", self.sampler_rng)
        for i, t in enumerate(self.cuda_rng):
            put(f"rng.cuda.{i}", t)
        return meta, tensors

    @classmethod
    def from_parts(cls, meta: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> "TrainCheckpoint":
        """The checkpoint :meth:`to_parts` wrote; GraftError when it is damaged or of a newer format."""
        try:
            if int(meta.get("format", 0)) > FORMAT:
                raise GraftError("The paused run was saved by a newer Graft: it cannot be resumed here.")
            state = {}
            for index, entry in meta["optimizer"]["state"].items():
                state[int(index)] = {k: tensors[v["tensor"]] if isinstance(v, dict) and "tensor" in v else v
                                     for k, v in entry.items()}
            groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()}
                      for g in meta["optimizer"]["param_groups"]]
            known = {f.name for f in fields(cls)} - {"optimizer", "best_state", "rng", "cuda_rng", "sampler_rng"}
            values = {k: meta[k] for k in known if k in meta}
            checkpoint = cls(**values, optimizer={"state": state, "param_groups": groups},
                             best_state={k: tensors[f"best.{k}"] for k in meta.get("best_state", [])},
                             rng=tensors.get("rng.torch"), sampler_rng=tensors.get("rng.sampler"),
                             cuda_rng=[tensors[f"rng.cuda.{i}"] for i in range(int(meta.get("cuda_rng", 0)))])
        except GraftError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise GraftError(f"The paused run's checkpoint is damaged ({exc.__class__.__name__}: {exc}).") from None
        if not isinstance(checkpoint.config, dict) or not isinstance(checkpoint.history, list):
            raise GraftError("The paused run's checkpoint is damaged (settings or history).")
        return checkpoint

    # -- checks ------------------------------------------------------------------------------------------
    def check_config(self, config: Any) -> None:
        """GraftError naming the first setting that differs from the paused run's."""
        for name in RESUME_FIELDS:
            then, now = self.config.get(name, FIELD_DEFAULTS.get(name)), getattr(config, name, None)
            same = then == now or (isinstance(then, float) and isinstance(now, float) and math.isclose(then, now))
            if not same:
                raise GraftError(f"The paused run trained with {name.replace('_', ' ')} {then!r}, not {now!r}: "
                                 "resume it with the same settings.")
        if self.epochs_run >= int(self.config.get("epochs", 0)):
            raise GraftError("The paused run has already finished all its epochs.")

    def describe(self) -> str:
        total = self.config.get("epochs", "?")
        best = (f"; best epoch so far {self.best_epoch} (validation loss {self.best_val_loss:.4f})"
                if self.has_validated_best and self.best_val_loss is not None else "")
        return f"paused after epoch {self.epochs_run} of {total} (step {self.done_steps}){best}"
