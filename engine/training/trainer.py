"""Training a session's heads (and, if unfrozen, its trunk) on a :class:`~engine.data.datasets.DataSource`.

``Trainer(session, data, config, on_event).run()`` blocks until training ends; the GUI calls it on a
worker thread and may call :meth:`Trainer.stop` from any thread. Progress is reported through plain
event dataclasses (no tensors) passed to ``on_event`` on the training thread:

``TrainStarted`` → (``MessageEvent`` | ``StepEvent`` | ``ProgressEvent`` | ``EpochEvent``)* → ``TrainFinished``.

How it ends (``TrainResult.reason`` / ``TrainFinished.reason``):

* ``"completed"`` — all epochs ran; ``"early_stopping"`` — the validation loss did not improve for
  ``patience`` epochs; ``"stopped"`` — :meth:`Trainer.stop` was called (run returns within one batch).
  In these three cases the weights of the epoch with the lowest validation loss are restored (with no
  validation data, or when stopped before the first epoch ended, the weights are left as trained).
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
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine.data.datasets import UNREADABLE
from engine.errors import GraftError
from engine.network.graft_model import RegressionHead
from engine.network.heads import KIND_TITLES, HeadSpec
from engine.runtime.allocator import release_free_memory
from engine.runtime.onnx_trunk import TrunkRunner, features_then_heads, trunk_runner
from engine.network.lr_factors import param_factors
from engine.training.losses import LossAccumulator, compute_losses, target_scales
from engine.training.metrics import MetricSet
from engine.units import plural

# ------------------------------------------------------------------------------------------------
# configuration and events
# ------------------------------------------------------------------------------------------------

DEVICES = ("auto", "cuda", "mps", "cpu")


@dataclass
class TrainConfig:
    """Training settings. ``patience``: epochs without a lower validation loss before stopping early
    (0 or None: never). ``num_workers``: DataLoader decoding processes (None: automatic).
    ``augment``: True, False or "auto" (on while layers of the trunk train; off with a frozen trunk,
    whose features are then computed once: a new head on a fixed trunk gains little from augmentation
    and it would cost a trunk pass per image per epoch).
    ``cache_features``: "auto" (cache when the trunk is frozen and augmentation is off), True (cache
    whenever the trunk is frozen, giving up augmentation) or False (never).
    ``unfreeze_every``: gradual unfreezing (:class:`engine.training.schedule.UnfreezePlan`): the heads
    train alone for N epochs, then one more trunk block from the top every N epochs; the trunk trains
    in this run whatever the layers' freeze settings, which are put back afterwards (no cached features).
    ``telemetry``: emit :class:`engine.training.telemetry.TelemetryEvent` (per block gradient norm and
    weight change) at a bounded rate. ``pause_after``: pause (see :meth:`Trainer.pause`) after this epoch.
    ``sync_batchnorm``: with several processes and layers of the trunk training, normalise over the
    global batch (:mod:`engine.training.distributed`): "auto" (on with several GPUs), True or False.
    ``devices``: processes to train in (``main.py train --devices``, the window's "All N GPUs"); a Trainer
    is always one of them: the launcher (:mod:`engine.training.launch`) starts them.

    ``augment_views``: K > 0 caches the frozen trunk's features of K augmented views of every training image
    and trains the heads each epoch on one view per image (:mod:`engine.training.features`); it applies to a
    frozen trunk with augmentation not switched off and caching not switched off, and is left out with a note
    otherwise (the window keeps the setting while the freeze settings change). ``feature_ram_budget_mb``: past
    this many MB the cached features go to a memory-mapped file on disk (None: ``$GRAFT_FEATURE_RAM_MB``, else
    1024)."""

    epochs: int = 10
    batch_size: int = 32
    lr_heads: float = 1e-3
    lr_trunk: float = 1e-4
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    augment: bool | str = "auto"
    device: str = "auto"
    amp: bool = True
    patience: int | None = 5
    num_workers: int | None = None
    seed: int = 0
    cache_features: bool | str = "auto"
    unfreeze_every: int | None = None
    telemetry: bool = False
    pause_after: int | None = None
    augment_views: int = 0
    feature_ram_budget_mb: float | None = None
    sync_batchnorm: bool | str = "auto"
    devices: int = 1

    def validate(self) -> None:
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise GraftError(f"Epochs must be a whole number of at least 1 (got {self.epochs!r}).")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise GraftError(f"The batch size must be a whole number of at least 1 (got {self.batch_size!r}).")
        for name in ("lr_heads", "lr_trunk"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
                raise GraftError(f"The learning rate ({name.replace('_', ' ')}) must be a positive number "
                                 f"(got {value!r}).")
        if not self.weight_decay >= 0:
            raise GraftError(f"Weight decay must not be negative (got {self.weight_decay!r}).")
        if not self.warmup_epochs >= 0:
            raise GraftError(f"Warm-up epochs must not be negative (got {self.warmup_epochs!r}).")
        if self.patience is not None and self.patience < 0:
            raise GraftError(f"Patience must not be negative (got {self.patience!r}).")
        if self.num_workers is not None and self.num_workers < 0:
            raise GraftError(f"The number of loader workers must not be negative (got {self.num_workers!r}).")
        if self.augment not in ("auto", True, False):
            raise GraftError(f"augment must be 'auto', True or False (got {self.augment!r}).")
        if self.sync_batchnorm not in ("auto", True, False):
            raise GraftError(f"sync_batchnorm must be 'auto', True or False (got {self.sync_batchnorm!r}).")
        if self.cache_features not in ("auto", True, False):
            raise GraftError(f"cache_features must be 'auto', True or False (got {self.cache_features!r}).")
        for name in ("unfreeze_every", "pause_after", "devices"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise GraftError(f"{name.replace('_', ' ').capitalize()} must be a whole number of epochs, at least 1 "
                                 f"(got {value!r}).")
        views = self.augment_views
        if isinstance(views, bool) or not isinstance(views, int) or views < 0:
            raise GraftError(f"Augmented views must be a whole number, at least 0 (0: off; got {views!r}).")
        budget = self.feature_ram_budget_mb
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float))
                                   or not budget > 0 or math.isinf(budget)):
            raise GraftError(f"The feature cache's RAM budget must be a positive number of MB (got {budget!r}).")
        base = str(self.device).split(":")[0]
        if base not in DEVICES:
            raise GraftError(f"Unknown device {self.device!r}: use auto, cuda, mps or cpu.")


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
    best: bool  # this epoch has the lowest validation loss so far
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


class TrainingError(GraftError):
    """Training failed part-way (NaN loss, out of memory …). ``str()`` is the message for the user;
    ``result`` is the TrainResult so far (reason "error"); the best weights were restored."""

    def __init__(self, message: str, result: TrainResult | None = None) -> None:
        super().__init__(message)
        self.result = result


# ------------------------------------------------------------------------------------------------
# devices
# ------------------------------------------------------------------------------------------------

def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | None = "auto") -> torch.device:
    """"auto" → CUDA, else MPS, else CPU; an explicit choice that is not available → GraftError."""
    text = str(name or "auto").strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    base = text.split(":")[0]
    if base == "cuda":
        if not torch.cuda.is_available():
            raise GraftError("No CUDA GPU is available here (or this PyTorch was built without CUDA); "
                             "use --device cpu or auto.")
        dev = torch.device(text)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise GraftError(f"There is no GPU {text} (this machine has {torch.cuda.device_count()}).")
        return dev
    if base == "mps":
        if not _mps_available():
            raise GraftError("Apple's MPS GPU backend is not available here; use cpu or auto.")
        return torch.device("mps")
    if base == "cpu":
        return torch.device("cpu")
    raise GraftError(f"Unknown device {name!r}: use auto, cuda, mps or cpu.")


def autocast_dtype(device: torch.device, amp: bool) -> torch.dtype | None:
    """bf16 on CUDA GPUs that support it, else fp16; no autocast elsewhere or with amp off."""
    if not amp or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def describe_device(device: torch.device, dtype: torch.dtype | None) -> str:
    precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({precision})"
    if device.type == "mps":
        return f"Apple GPU (MPS, {precision})"
    return f"CPU ({torch.get_num_threads()} threads, {precision})"


def is_out_of_memory(exc: BaseException) -> bool:
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def out_of_memory_message(device: torch.device, batch_size: int, phase: str | None = None,
                          configured: int | None = None) -> str:
    """What to tell the user. ``batch_size``: the batch that failed; ``phase``: what was running
    ("computing features", "training", "validating", "evaluating"); ``configured``: the batch-size
    setting, when the failed batch was derived from it (e.g. twice it for validation)."""
    setting = configured or batch_size
    smaller = max(1, setting // 2)
    where = "GPU" if device.type in ("cuda", "mps") else "computer"
    during = f" while {phase}" if phase else ""
    derived = (f" ({batch_size // setting}x the batch size setting {setting})"
               if configured and batch_size != configured and batch_size % configured == 0 else "")
    return (f"The {where} ran out of memory{during} at batch size {batch_size}{derived}. "
            f"Try a smaller batch size (e.g. {smaller})" + (", or train on the CPU." if where == "GPU" else "."))


def _free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        with contextlib.suppress(Exception):
            torch.mps.empty_cache()


def clean_loader_error(exc: BaseException) -> GraftError | None:
    """A GraftError raised inside a DataLoader worker comes back wrapped with a traceback in its text;
    return a GraftError with just the original one-line message (None if ``exc`` is not one)."""
    if not isinstance(exc, GraftError):
        return None
    text = str(exc)
    if not text.startswith("Caught ") or "Traceback" not in text:
        return exc
    for line in reversed(text.strip().splitlines()):
        if "GraftError:" in line:
            return GraftError(line.split("GraftError:", 1)[1].strip())
    return GraftError(text.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# matching the session's heads with the data
# ------------------------------------------------------------------------------------------------

@dataclass
class HeadBinding:
    """A session head and the data head that feeds it. ``lut`` (single): data class index + 1 → the
    head's class index (``lut[0] = -1`` keeps missing as missing). ``columns`` (multi/regression): for
    each head output, the index of the data column feeding it."""

    spec: HeadSpec
    data: HeadSpec
    lut: torch.Tensor | None = None
    columns: torch.Tensor | None = None

    def map(self, target: torch.Tensor) -> torch.Tensor:
        if self.lut is not None:
            return self.lut[target + 1]
        if self.columns is not None:
            return target[..., self.columns]
        return target


class TargetMap:
    """Turns the data's targets ``{data head: tensor}`` into the session's ``{head: tensor}``; works on
    one example or a batch. Picklable (it runs in DataLoader workers)."""

    def __init__(self, bindings: Sequence[HeadBinding]) -> None:
        self.bindings = list(bindings)

    def __call__(self, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {b.spec.name: b.map(targets[b.data.name]) for b in self.bindings}

    @property
    def data_heads(self) -> list[HeadSpec]:
        return [b.data for b in self.bindings]

    @property
    def heads(self) -> list[HeadSpec]:
        return [b.spec for b in self.bindings]


def _kind_title(kind: str) -> str:
    return KIND_TITLES.get(kind, kind)


def _bind(spec: HeadSpec, data: HeadSpec) -> HeadBinding:
    if spec.kind != data.kind:
        raise GraftError(f"Head {spec.name!r} is {_kind_title(spec.kind)} but the data's {data.name!r} is "
                         f"{_kind_title(data.kind)}.")
    head_names = spec.label_names
    data_names = data.label_names
    if spec.kind == "single":
        if all(n in head_names for n in data_names):
            index = [head_names.index(n) for n in data_names]
        elif not spec.labels and len(data_names) <= spec.outputs:
            index = list(range(len(data_names)))  # an unnamed head takes the data's classes in order
        else:
            unknown = [n for n in data_names if n not in head_names]
            raise GraftError(f"Head {spec.name!r} does not know the data's class(es) "
                             f"{', '.join(repr(n) for n in unknown[:5])}{' …' if len(unknown) > 5 else ''} "
                             f"(its classes: {', '.join(head_names[:8])}{' …' if len(head_names) > 8 else ''}).")
        identity = index == list(range(len(data_names)))
        lut = None if identity else torch.tensor([-1] + index, dtype=torch.int64)
        return HeadBinding(spec, data, lut=lut)
    if all(n in data_names for n in head_names):
        columns = [data_names.index(n) for n in head_names]
    elif not spec.labels and len(data_names) == spec.outputs:
        columns = list(range(spec.outputs))
    else:
        missing = [n for n in head_names if n not in data_names]
        what = "label" if spec.kind == "multi" else "target"
        raise GraftError(f"The data has no {what} {', '.join(repr(n) for n in missing[:5])} for head "
                         f"{spec.name!r} (the data's {data.name!r} has {', '.join(data_names[:8])}).")
    identity = columns == list(range(len(data_names)))
    return HeadBinding(spec, data, columns=None if identity else torch.tensor(columns, dtype=torch.int64))


def bind_heads(heads: Sequence[HeadSpec], data: Any, *, notes: list[str] | None = None) -> TargetMap:
    """Match every head with the data's head of the same name (kind and labels checked; a single-label
    head's classes are mapped by name). An image folder's one class head also feeds a session's one
    single-label head of another name. Raises GraftError when a head has no matching data."""
    heads = list(heads)
    if not heads:
        raise GraftError("The model has no head to train: add a head first.")
    data_heads = {h.name: h for h in data.heads}
    bindings: list[HeadBinding] = []
    for spec in heads:
        match = data_heads.get(spec.name)
        if match is None and len(heads) == 1 and len(data_heads) == 1 and getattr(data, "kind", "") == "folder":
            only = next(iter(data_heads.values()))
            if only.kind == spec.kind == "single":
                match = only
                if notes is not None:
                    notes.append(f"Head {spec.name!r} learns the image folder's classes.")
        if match is None:
            have = ", ".join(repr(n) for n in data_heads) or "none"
            raise GraftError(f"Head {spec.name!r} has no data: the data's heads are {have}. "
                             "Name the head after a data head, or choose data with labels for it.")
        bindings.append(_bind(spec, match))
    unused = [n for n in data_heads if n not in {b.data.name for b in bindings}]
    if unused and notes is not None:
        notes.append(f"Not trained (no head for them): {', '.join(unused)}.")
    return TargetMap(bindings)


def _labelled_counts(samples: Sequence[Any], binding: HeadBinding) -> int:
    name = binding.data.name
    n = 0
    for s in samples:
        value = s.targets.get(name)
        if value is None:
            continue
        if binding.spec.kind == "single":
            n += value >= 0
        else:
            cols = binding.columns.tolist() if binding.columns is not None else range(len(value))
            n += any(not math.isnan(value[j]) for j in cols)
    return n


STD_FLOOR = 1e-6  # a target std at most this share of its mean (or 1e-12) counts as constant: std 1


def target_statistics(samples: Sequence[Any], binding: HeadBinding) -> tuple[list[float], list[float], int]:
    """``(mean, std, n)`` of a regression head's labelled targets in ``samples`` (one mean/std per
    output, NaN left out; population std; n: the examples with at least one value). An output without
    values gets mean 0, a constant one (std <= STD_FLOOR * |mean|, or 1e-12) std 1. Rounded to
    float32, the precision the head's buffers keep them in."""
    import numpy as np

    spec = binding.spec
    columns = binding.columns.tolist() if binding.columns is not None else list(range(spec.outputs))
    values: list[list[float]] = []
    for s in samples:
        value = s.targets.get(binding.data.name)
        if value is not None:
            values.append([float(value[j]) for j in columns])
    table = np.asarray(values, dtype=np.float64).reshape(-1, len(columns))
    labelled = ~np.isnan(table)
    means, stds = [], []
    for j in range(len(columns)):
        column = table[labelled[:, j], j]
        mean = float(column.mean()) if column.size else 0.0
        std = float(column.std()) if column.size else 0.0
        if not math.isfinite(std) or std <= max(STD_FLOOR * abs(mean), 1e-12):
            std = 1.0
        means.append(float(np.float32(mean)))
        stds.append(float(np.float32(std)))
    return means, stds, int(labelled.any(axis=1).sum())


def _usable_stats(mean: Sequence[float], std: Sequence[float]) -> bool:
    return all(math.isfinite(m) for m in mean) and all(math.isfinite(v) and v > 0 for v in std)


def _short(values: Sequence[float]) -> str:
    text = ", ".join(f"{v:.4g}" for v in values[:4]) + (" …" if len(values) > 4 else "")
    return text if len(values) == 1 else f"[{text}]"


# ------------------------------------------------------------------------------------------------
# data loading
# ------------------------------------------------------------------------------------------------

class MappedDataset(torch.utils.data.Dataset):
    """An ImageDataset whose targets are renamed/remapped for the session's heads (in the workers); an image
    found unreadable only now (:data:`engine.data.datasets.UNREADABLE`) stays marked."""

    def __init__(self, base: torch.utils.data.Dataset, target_map: TargetMap) -> None:
        self.base = base
        self.target_map = target_map

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, targets = self.base[index]
        mapped = self.target_map(targets)
        if UNREADABLE in targets:
            mapped[UNREADABLE] = targets[UNREADABLE]
        return image, mapped


class EpochBatchSampler(torch.utils.data.Sampler):
    """Seeded shuffled batches: epoch e uses the e-th ``randperm`` of its own generator, so the
    image loader and the cached-feature path visit the examples in the same order."""

    def __init__(self, n: int, batch_size: int, drop_last: bool, seed: int, shuffle: bool = True) -> None:
        self.n, self.batch_size, self.drop_last, self.shuffle = n, batch_size, drop_last, shuffle
        self.generator = torch.Generator().manual_seed(seed)

    def next_order(self) -> torch.Tensor:
        return torch.randperm(self.n, generator=self.generator) if self.shuffle else torch.arange(self.n)

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = self.next_order().tolist()
        for i in range(len(self)):
            yield order[i * self.batch_size:(i + 1) * self.batch_size]


def auto_num_workers(n_images: int, batch_size: int, requested: int | None = None,
                     device: torch.device | str | None = None) -> int:
    """Decoding processes: as asked, else ``min(4, cpus - 1)`` when a GPU computes. None for small
    datasets (starting workers costs more than decoding a few batches in the main process), and on the
    CPU only from 8 cores up (then 1-2): there torch's threads already use every core and decoding is a
    small part of a step, so workers only compete with them (measured on 2 cores: a worker made full
    fine-tuning 1.5x slower)."""
    if requested is not None:
        return int(requested)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(4, cpus - 1)
    if device is not None and torch.device(device).type == "cpu":
        workers = min(2, cpus // 8)
    if workers < 1 or n_images < max(4 * batch_size, 128):
        return 0
    return workers


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers must not compete with the main process's threads
    # Ctrl-C reaches the whole process group: the main process decides (stop after this batch), so a
    # worker must not die of it and break the loader mid-epoch.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset: torch.utils.data.Dataset, *, batch_size: int, device: torch.device,
                num_workers: int, batch_sampler: torch.utils.data.Sampler | None = None,
                seed: int = 0) -> torch.utils.data.DataLoader:
    kwargs: dict[str, Any] = {"num_workers": num_workers, "pin_memory": device.type == "cuda",
                              "generator": torch.Generator().manual_seed(seed + 1)}
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=4, worker_init_fn=_worker_init)
    if batch_sampler is not None:
        return torch.utils.data.DataLoader(dataset, batch_sampler=batch_sampler, **kwargs)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, **kwargs)


# ------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------

class _NonFinite(Exception):
    def __init__(self, head: str | None, epoch: int, step: int) -> None:
        super().__init__(head)
        self.head, self.epoch, self.step = head, epoch, step


class _Stopped(Exception):
    pass


def lr_lambda(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    def factor(step: int) -> float:
        if warmup_steps > 0 and step < warmup_steps:
            return (step + 1) / warmup_steps
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return factor


class Trainer:
    """Trains ``session.model`` on ``data`` (a DataSource). See the module docstring for the events,
    endings and errors. One run per Trainer."""

    PROGRESS_INTERVAL = 0.2  # seconds between ProgressEvents
    # A heads-only epoch on cached features against the caching pass over the same images (Lite0, demo, CPU:
    # about 2 %): the caching pass's share of the progress bar until a step is timed, then the bar goes by time.
    HEADS_EPOCH_COST = 0.02

    WARN_NO_VALIDATION = True  # say so when there is no validation data (a rate finder needs none)

    def __init__(self, session: Any, data: Any, config: TrainConfig | None = None,
                 on_event: Callable[[object], None] | None = None, resume: Any = None) -> None:
        """``resume``: a :class:`~engine.training.checkpoint.TrainCheckpoint` of a paused run on this session
        and data, to continue it (the settings must be the paused run's)."""
        self.session = session
        self.data = data
        self.config = config or TrainConfig()
        self.on_event = on_event
        self.resume = resume
        self._stop = threading.Event()
        self._stop_request = self._stop  # several processes: a request, agreed on into _stop every step
        self._pause = threading.Event()
        self._ran = False
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
            if _labelled_counts(train, b) == 0:
                raise GraftError(f"Head {b.spec.name!r} has no labelled example in the training data.")
        from engine.data.datasets import only_in_validation

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
        # augmented views: the cached features are of augmented images (and augmentation "auto" means on)
        self.augment = bool(self.views) or (augment and not self.cached)
        n = len(train)
        self.drop_last = n > cfg.batch_size and n % cfg.batch_size == 1  # no batch of one (BatchNorm)
        self.steps_per_epoch = n // cfg.batch_size if self.drop_last else math.ceil(n / cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self._plan_target_stats()
        if self.resume is not None:
            self._check_resume()
        from engine.training import distributed

        if distributed.current() is not None:
            self._join_processes(distributed.current())

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

    def _agree_stop(self, step: int | None = None) -> None:
        """Several processes: a stop asked in any of them stops all of them, here, at the same step."""
        if self._dist is not None and self._dist.agree(self._stop_request.is_set(), step):
            self._stop.set()

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
        self.best_val_loss: float | None = None
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
            else:
                reason = self._train_images()
        except _Stopped:
            reason = "stopped"
        except _NonFinite as exc:
            reason = "error"
            which = f" of head {exc.head!r}" if exc.head else ""
            message = (f"Training stopped at epoch {exc.epoch}, step {exc.step}: the loss{which} became NaN or "
                       "infinite. Try a lower learning rate")
            message += ("; the weights of the best epoch were restored." if self._has_validated_best
                        else "; the weights from before training were restored.")
        except Exception as exc:  # noqa: BLE001 - everything ends in TrainFinished and a clean model
            reason = "error"
            if is_out_of_memory(exc):
                _free_device_memory(device)
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

        if reason == "error" or (reason != "paused" and self._has_validated_best
                                 and self.done_steps != self._best_steps):
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
                       + (f"kept the weights of epoch {self.best_epoch} (lowest validation loss)."
                          if self._has_validated_best else "the weights are as trained so far (no epoch finished)."))
        elif reason == "early_stopping":
            message = (f"Stopped early after epoch {self.epochs_run}: the validation loss has not improved for "
                       f"{cfg.patience} epochs; kept epoch {self.best_epoch}.")
        elif reason == "completed":
            message = (f"Finished {plural(self.epochs_run, 'epoch')}"
                       + (f"; kept epoch {self.best_epoch} (lowest validation loss {self.best_val_loss:.4f})."
                          if self._has_validated_best else "; no validation data, so the final weights are kept."))
        images = self.images_seen - self._resumed_images
        result = TrainResult(reason, self.history, self.best_epoch, self.best_val_loss, seconds + self._seconds_before,
                             images / seconds if seconds > 0 else 0.0, message, self.epochs_run,
                             self.done_steps, self.cached, str(device),
                             self._runner.backend if self._runner is not None else "pytorch", self.checkpoint,
                             self.views, self.features_on_disk)
        self._emit(TrainFinished(reason, self.best_epoch, self.best_val_loss, message))
        if reason == "error":
            err = getattr(self, "_error", None)
            if err is not None and not isinstance(err, GraftError):
                raise err
            raise TrainingError(message, result) from err
        return result

    def _cleanup(self) -> None:
        model = self.session.model
        if getattr(self, "_flags_before", None):  # gradual unfreezing: the session's own freeze settings
            for name, p in model.named_parameters():
                if name in self._flags_before:
                    p.requires_grad_(self._flags_before[name])
        if getattr(self, "_moved", False):
            model.to("cpu")
            if self._channels_last:
                model.to(memory_format=torch.contiguous_format)
            _free_device_memory(self.device)
        model.eval()
        release_free_memory()

    def _frozen_trunk(self, images: int) -> TrunkRunner | None:
        """What runs the frozen trunk over ``images`` images (None: PyTorch); its note becomes a message."""
        runner, note = trunk_runner(self.session.model, self.device, images)
        if note:
            self._emit(MessageEvent(note[0].upper() + note[1:] + "."))
        self._runner = runner
        return runner

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

    # -- one optimisation step -----------------------------------------------------------------------
    def _step(self, outputs_fn: Callable[[], dict[str, torch.Tensor]], targets: dict[str, torch.Tensor]):
        with autocast_context(self.device, self.amp_dtype):
            outputs = outputs_fn()
        losses = compute_losses(self.heads, outputs, targets, self.scales)
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
            raise _NonFinite(bad, epoch, step)
        self._emit(StepEvent(step, epoch, total, per_head, lr))

    # -- training on images --------------------------------------------------------------------------
    def _image_dataset(self, samples: Sequence[Any], augment: bool):
        from engine.data.datasets import ImageDataset

        base = ImageDataset(samples, self.target_map.data_heads, self.session.input_spec, augment=augment)
        return MappedDataset(base, self.target_map)

    # -- small services for engine.training.features (which must not import this module) -------------
    def _note(self, text: str, level: str = "info") -> None:
        self._emit(MessageEvent(text, level))

    def _check_stop(self) -> None:
        if self._stop.is_set():
            raise _Stopped

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
        from engine.data.datasets import check_image

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
                    raise _Stopped
                images, targets = self._to(images, self._unreadable(targets, self.train_samples))
                yield forward(images), targets, images.shape[0] * world

        def validate() -> tuple[LossAccumulator, MetricSet]:
            acc, metrics = LossAccumulator(self.heads), MetricSet(self.heads)
            model.eval()
            with torch.no_grad(), autocast_context(self.device, self.amp_dtype):
                for images, targets in val_loader:
                    if self._stop.is_set():
                        raise _Stopped
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

    # -- training on cached features (engine.training.features) -------------------------------------
    def _train_cached(self) -> str:
        from engine.training.features import train_cached

        return train_cached(self)

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

    # -- gradual unfreezing ------------------------------------------------------------------------------
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
                    raise _Stopped
            self._report_step(pending, train_acc)
            if self._sharded:
                self._dist.reduce_accumulator(train_acc)
            train_loss, train_heads = train_acc.values()
            if train_loss is not None and not math.isfinite(train_loss):
                raise _NonFinite(None, epoch, self.done_steps)
            val_loss, val_heads, metrics = None, {}, {}
            if validate is not None:
                self._phase = ("validating", self._val_batch)
                val_acc, val_metrics = validate()
                val_loss, val_heads = val_acc.values()
                metrics = val_metrics.summary()
                if val_loss is not None and not math.isfinite(val_loss):
                    raise _NonFinite(next((n for n, v in val_heads.items() if not math.isfinite(v)), None),
                                     epoch, self.done_steps)
            self.epochs_run = epoch
            best = False
            if val_loss is not None and (self.best_val_loss is None or val_loss < self.best_val_loss):
                best = True
                self.best_val_loss, self.best_epoch = val_loss, epoch
                self._best_state = self._snapshot()
                self._has_validated_best = True
                self._best_steps = self.done_steps
                self._bad_epochs = 0
            elif val_loss is not None:
                self._bad_epochs += 1
            if validate is None:
                self.best_epoch = epoch
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
        return "completed"


def train(session: Any, data: Any, config: TrainConfig | None = None,
          on_event: Callable[[object], None] | None = None) -> TrainResult:
    """Shorthand for ``Trainer(session, data, config, on_event).run()``."""
    return Trainer(session, data, config, on_event).run()
