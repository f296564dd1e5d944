"""What a training run reports and how it fails: the plain event dataclasses (no tensors) a
:class:`~engine.training.trainer.Trainer` passes to ``on_event``, its :class:`TrainResult`, :class:`TrainingError`,
and the two signals that end the loop from inside (a stop, a loss that is not finite).

``TrainStarted`` → (``MessageEvent`` | ``StepEvent`` | ``ProgressEvent`` | ``EpochEvent``)* → ``TrainFinished``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.errors import GraftError


@dataclass
class TrainStarted:
    epochs: int
    steps_per_epoch: int
    total_steps: int
    device: str  # "cpu", "cuda:0", "mps"
    cached_features: bool
    n_train: int
    n_val: int
    heads: list[str]
    device_name: str = ""  # for people: "NVIDIA H100 (bf16)", "CPU (2 threads)"
    precision: str = "fp32"  # "bf16" | "fp16" | "fp32"
    num_workers: int = 0
    augmented: bool = False  # random crops/flips/colour on the training images
    augment_views: int = 0  # cached features of this many augmented views per training image (0: plain)


@dataclass
class StepEvent:
    step: int  # optimizer steps done so far (1-based)
    epoch: int  # 1-based
    loss: float  # weighted total on this batch
    head_losses: dict[str, float]
    lr: float  # the heads' learning rate used for this step


@dataclass
class EpochEvent:
    epoch: int  # 1-based
    train_loss: float | None
    val_loss: float | None  # None without validation data
    train_head_losses: dict[str, float]
    val_head_losses: dict[str, float]
    metrics: dict[str, dict[str, float]]  # validation metrics per head (see engine.training.metrics)
    best: bool  # this epoch validates best so far (metric, then loss: RunState._keep_best)
    seconds: float


@dataclass
class ProgressEvent:
    done_steps: int
    total_steps: int
    fraction: float  # 0..1 over the whole run (feature caching included)
    eta_seconds: float | None
    phase: str = "train"  # "features" (computing cached features) | "train"


@dataclass
class MessageEvent:
    text: str
    level: str = "info"  # "info" | "warning"


@dataclass
class TrainFinished:
    reason: str  # "completed" | "stopped" | "early_stopping" | "paused" | "error"
    best_epoch: int | None
    best_val_loss: float | None
    message: str


@dataclass
class TrainResult:
    reason: str
    history: list[dict[str, Any]]  # one dict per finished epoch, the EpochEvent's fields + "lr"
    best_epoch: int | None
    best_val_loss: float | None
    seconds: float  # wall time of run(), feature caching and validation included
    images_per_second: float  # training images processed / seconds
    message: str = ""
    epochs_run: int = 0
    steps: int = 0
    cached_features: bool = False
    device: str = "cpu"
    trunk_backend: str = "pytorch"  # what ran the frozen trunk's passes: "pytorch" | "onnxruntime"
    checkpoint: Any = None  # reason "paused": the TrainCheckpoint to resume from
    augment_views: int = 0  # augmented views cached per training image (0: none)
    features_on_disk: bool = False  # the cached features went past the RAM budget into a memory-mapped file
    boundary_cached: bool = False  # only the top blocks trained, on the frozen layers' cached output (features.py)


class TrainingError(GraftError):
    """Training failed part-way (NaN loss, out of memory …). ``str()`` is the message for the user;
    ``result`` is the TrainResult so far (reason "error"); the best weights were restored."""

    def __init__(self, message: str, result: TrainResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class NonFinite(Exception):
    """Raised inside the loop when a loss becomes NaN/inf; the run ends with reason "error"."""

    def __init__(self, head: str | None, epoch: int, step: int) -> None:
        super().__init__(head)
        self.head, self.epoch, self.step = head, epoch, step


class Stopped(Exception):
    """Raised inside the loop when a stop was asked; the run ends with reason "stopped"."""
