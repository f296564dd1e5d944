"""Training settings: :class:`TrainConfig` (what ``main.py train``'s options and the Train tab set), checked
by :meth:`TrainConfig.validate` before anything trains."""
from __future__ import annotations

import math
from dataclasses import dataclass

from engine.errors import GraftError

DEVICES = ("auto", "cuda", "mps", "cpu")


@dataclass
class TrainConfig:
    """Training settings. ``patience``: epochs without a better validation result (the heads' metric, a tie
    broken by the loss) before stopping early (0 or None: never). ``num_workers``: DataLoader decoding
    processes (None: automatic).
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
    1024).

    ``boundary_cache``: where only the top blocks train (the blocks up to a *boundary* frozen, later ones
    training), the frozen layers run once per training image and augmented view and once per validation
    image, and each step runs only the layers after the boundary, on their cached output
    (:func:`engine.training.features.train_boundary_cached`, :mod:`engine.training.boundary`; the same loss
    and gradients as without it). "auto" (default): on a CPU, in one process, without gradual unfreezing,
    when the trunk splits cleanly at the boundary (checked on a dry run; else the run trains as before, with a
    note); True: also on a GPU; False: never. ``boundary_views``: augmented views cached per training image
    (None: as many as epochs, up to 4; each epoch draws one view per image); without augmentation one plain
    pass. What a run did: ``TrainResult.boundary_cached``.

    ``label_smoothing``: the share of a single-label head's target spread over its classes in the training
    loss (0: off; validation losses are never smoothed, so runs stay comparable). ``ema``: validate, keep and
    end with an exponential moving average of the trained weights (``torch.optim.swa_utils.AveragedModel``,
    :mod:`engine.training.averaging`) instead of the raw ones. ``augment_policy``: the augmentation of the
    training images when they are augmented: "standard" (crop, flip, light colour), "trivial" (the same plus
    torchvision's ``TrivialAugmentWide``) or "augmix" (plus ``AugMix``): :mod:`engine.training.augment`.
    ``batchnorm_eval``: the trunk's BatchNorm layers that train normalise with their running statistics
    (eval mode) instead of each batch's; their scale and shift still train. The standard setting for
    fine-tuning a pretrained trunk on little data (the batch statistics of a few dozen images of another
    domain are far from the pretraining ones), and what keeps the warm start of heads trained on the frozen
    trunk's features: on the cross-style glyphs, top 3 Lite0 blocks after the heads, the first step's loss
    was 5.7 with batch statistics against the heads' 0.70, and 0.78 with running ones."""

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
    boundary_cache: bool | str = "auto"
    boundary_views: int | None = None
    label_smoothing: float = 0.0
    ema: bool = False
    augment_policy: str = "standard"
    batchnorm_eval: bool = False

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
        if self.boundary_cache not in ("auto", True, False):
            raise GraftError(f"boundary_cache must be 'auto', True or False (got {self.boundary_cache!r}).")
        bviews = self.boundary_views
        if bviews is not None and (isinstance(bviews, bool) or not isinstance(bviews, int) or bviews < 1):
            raise GraftError(f"Boundary views must be a whole number, at least 1 (got {bviews!r}).")
        smoothing = self.label_smoothing
        if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float)) or not 0 <= smoothing < 1:
            raise GraftError(f"Label smoothing must be a number from 0 up to (not including) 1 (got {smoothing!r}).")
        from engine.training.augment import POLICIES

        if self.augment_policy not in POLICIES:
            raise GraftError(f"Unknown augmentation policy {self.augment_policy!r}: use {', '.join(POLICIES)}.")
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
