"""The best model in the time you have: a training plan that fits a time budget (``main.py train --budget 10m``,
the Train tab's "Best model in N minutes").

This module is the plan alone, pure arithmetic on measured costs (:class:`Costs`, per image, timed on this
device by :mod:`engine.training.budget_probe`; tests inject them): which stages run, how many epochs and
cached views each gets, what is frozen, the rates. :mod:`engine.training.budget_run` runs it, holding every
stage to a deadline.

The plan (why: what wins in the literature and in the one-button tools, at a cost this device can pay):

1. **Rate finder** (Smith 2017) on the cached features of at most :data:`FINDER_IMAGES` training images: the
   heads' rate, when it costs under a tenth of the time (else :data:`DEFAULT_LR_HEADS`).
2. **Heads on cached features of augmented views** (the frozen trunk runs once per view: a cheap floor, and the
   warm start that gradual unfreezing needs, ULMFiT/fastai's first step): :data:`HEAD_EPOCHS` epochs; when a
   trunk stage follows, at most :data:`MAX_HEAD_VIEWS` views in about :data:`HEADS_SHARE` of the time (a
   view costs a trunk pass per image, an epoch on cached features next to nothing: the time buys more as
   trunk epochs), else up to :data:`MAX_HEAD_VIEWS_ALONE` views that end in time even at half the measured
   pace (:data:`FLOOR_PACE`: the views come before the first epoch, and a floor cut during them leaves no
   model; 8 views on the demo under load ran past a 2-minute budget's end with no epoch done).
3. **The top blocks train** (gradual unfreezing's second step) on the boundary cache (the frozen layers run
   once per augmented view): as many blocks from the top as leave room for :data:`MIN_TRUNK_EPOCHS` epochs, then
   as many epochs as fit (up to :data:`MAX_TRUNK_EPOCHS`); discriminative rates (each block down ×
   :data:`BLOCK_DECAY`), the heads at a third of their first rate; BatchNorm on its running statistics
   (``TrainConfig.batchnorm_eval``: the features the heads were trained on; with batch statistics the warm
   start was lost, the first step's loss 5.7 against the heads' 0.70 on the cross-style glyphs).

Every stage trains with label smoothing (:data:`LABEL_SMOOTHING`, single-label heads; the masked losses keep
blank labels out), an exponential moving average of the weights (validated and kept:
:mod:`engine.training.averaging`), stronger augmentation (``TrivialAugmentWide``) below
:data:`SMALL_DATA` training images, and keeps its best validation epoch; a later stage is kept only when it
validates better. ``refit``: the schedule chosen on validation is trained again from the start on every
labelled image (no validation, so nothing is selected then); the plan gives it the time it needs.

Times: the stages are planned into :func:`usable_seconds` of the budget (a margin for the load changing and
the save); a plan whose first stage cannot fit raises :class:`BudgetTooSmall` before anything trains.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.errors import GraftError
from engine.units import plural

FINDER_IMAGES = 256
FINDER_STEPS = 100
FINDER_SHARE = 0.1
DEFAULT_LR_HEADS = 3e-3
HEADS_SHARE = 0.3
MAX_HEAD_VIEWS = 2  # when a trunk stage follows
MAX_HEAD_VIEWS_ALONE = 8  # when the heads are all the plan trains ...
FLOOR_PACE = 2.0  # ... as many as end in time with the device at half its measured pace (the views come before
# the first epoch: a floor cut during them leaves no model at all)
HEAD_EPOCHS = 30
MIN_TRUNK_EPOCHS = 4
MAX_TRUNK_EPOCHS = 40
MAX_TRUNK_VIEWS = 4
LR_TRUNK = 3e-4
BLOCK_DECAY = 0.5
LABEL_SMOOTHING = 0.1
SMALL_DATA = 5000
STAGE_OVERHEAD = 3.0  # seconds a stage costs besides its images (setup, loaders, a conversion to onnxruntime)
MARGIN = 0.07  # share of the budget left for the load changing
SAVE_SECONDS = 3.0  # saving the project afterwards


class BudgetTooSmall(GraftError):
    """Not even the first stage fits the budget."""


def parse_budget(text: str | float | int) -> float:
    """Seconds from ``"90s"``, ``"10m"``, ``"1h"``, ``"1h30m"``, ``"2.5m"`` or a bare number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        raw = str(text).strip().lower().replace(" ", "")
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?:in)?)?(?:(\d+(?:\.\d+)?)s?)?", raw)
        if not raw or parts is None or not any(parts.groups()):
            raise GraftError(f"Budget {text!r}: write a time such as 90s, 10m, 1h or 1h30m.")
        h, m, s = (float(g) if g else 0.0 for g in parts.groups())
        seconds = h * 3600 + m * 60 + s
    if not math.isfinite(seconds) or seconds <= 0:
        raise GraftError(f"Budget {text!r}: the time must be more than zero.")
    return seconds


def clock_text(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


@dataclass
class Costs:
    """Seconds per image on this device (measured by :func:`engine.training.budget_probe.probe`).
    ``lower[k]``/``upper_step[k]``/``upper_eval[k]``: with the top ``k`` blocks training, the frozen layers'
    pass (once per cached view), the layers above's training step and their validation pass; keys as strings
    after a JSON round trip are accepted."""

    decode: float  # reading and augmenting one training image
    decode_plain: float  # reading one image as it is (validation, plain features)
    trunk: float  # the frozen trunk's forward pass
    head_step: float  # a heads-only training step on cached features
    lower: dict[int, float] = field(default_factory=dict)
    upper_step: dict[int, float] = field(default_factory=dict)
    upper_eval: dict[int, float] = field(default_factory=dict)
    seconds: float = 0.0  # what measuring took

    def __post_init__(self) -> None:
        for name in ("lower", "upper_step", "upper_eval"):
            setattr(self, name, {int(k): float(v) for k, v in getattr(self, name).items()})

    @property
    def trunk_blocks(self) -> list[int]:
        return sorted(k for k in self.lower if k in self.upper_step and k in self.upper_eval)


@dataclass
class Stage:
    """One stage of a plan. ``kind``: "finder" | "heads" | "blocks". ``blocks``: the trunk blocks that train
    (top first; empty for the heads), ``boundary``: the last frozen block below them."""

    kind: str
    title: str
    estimate: float
    epochs: int = 0
    views: int = 0
    blocks: list[str] = field(default_factory=list)
    boundary: str | None = None
    lr_heads: float = 0.0
    lr_trunk: float = 0.0
    block_factors: dict[str, float] = field(default_factory=dict)
    augment_policy: str = "standard"
    label_smoothing: float = LABEL_SMOOTHING
    ema: bool = True
    refit: bool = False  # a stage of the refit on every labelled image

    @property
    def frozen(self) -> str:
        if self.kind == "blocks":
            return f"the trunk up to {self.boundary}"
        return "the whole trunk"

    @property
    def trains(self) -> str:
        if self.kind == "finder":
            return "heads (rate sweep)"
        if self.kind == "heads":
            return "the heads"
        return f"{', '.join(self.blocks)} and the heads"

    def rates(self) -> str:
        if self.kind == "finder":
            return "1e-7 to 10"
        if self.kind == "heads":
            return f"heads {self.lr_heads:.2g}"
        factors = ", ".join(f"{b} x{f:g}" for b, f in self.block_factors.items())
        return f"heads {self.lr_heads:.2g}, trunk {self.lr_trunk:.2g} ({factors})"


@dataclass
class Plan:
    budget: float
    usable: float
    stages: list[Stage]
    n_train: int
    n_val: int
    refit: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def estimate(self) -> float:
        return sum(s.estimate for s in self.stages)

    def table(self) -> list[list[str]]:
        rows = [["stage", "trains", "frozen", "epochs", "views", "rates", "estimate"]]
        for i, s in enumerate(self.stages, 1):
            rows.append([f"{i}. {s.title}", s.trains, s.frozen, str(s.epochs) if s.epochs else "-",
                         str(s.views) if s.views else "-", s.rates(), clock_text(s.estimate)])
        return rows

    def describe(self, narrow: bool = False) -> str:
        """The plan as a person reads it before it runs: a table, or (``narrow``: for a side panel, lines that
        wrap) each stage's epochs, views and estimate on a line, then what trains, what is frozen, the rates."""
        if narrow:
            lines = [f"Plan for {clock_text(self.budget)}: {self.n_train} training, {self.n_val} validation images, "
                     f"estimated {clock_text(self.estimate)} of training."]
            for i, s in enumerate(self.stages, 1):
                what = [f"{plural(s.epochs, 'epoch')}" if s.epochs else "", plural(s.views, "view") if s.views else "",
                        f"estimated {clock_text(s.estimate)}"]
                lines.append(f"{i}. {s.title}: {', '.join(w for w in what if w)}")
                lines.append(f"    trains {s.trains}; frozen: {s.frozen}; rates {s.rates()}")
            return "\n".join(lines + self.notes)
        rows = self.table()
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [f"Plan for {clock_text(self.budget)} ({self.n_train} training, {self.n_val} validation images; "
                 f"estimated {clock_text(self.estimate)} of training):"]
        lines += ["  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
        lines += [f"  {note}" for note in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def usable_seconds(budget: float, spent: float = 0.0) -> float:
    """The seconds the stages may take: the budget less what was spent already (loading, measuring), a
    margin and the save."""
    return budget * (1 - MARGIN) - SAVE_SECONDS - spent


# -- what each stage costs ---------------------------------------------------------------------------------

def finder_cost(c: Costs, n_train: int, batch: int) -> float:
    return min(n_train, FINDER_IMAGES) * (c.decode_plain + c.trunk) + FINDER_STEPS * batch * c.head_step + STAGE_OVERHEAD


def heads_cost(c: Costs, n_train: int, n_val: int, views: int, epochs: int) -> float:
    return (views * n_train * (c.decode + c.trunk) + n_val * (c.decode_plain + c.trunk)
            + epochs * (n_train + n_val / 3) * c.head_step + STAGE_OVERHEAD)


def blocks_cost(c: Costs, k: int, n_train: int, n_val: int, views: int, epochs: int) -> float:
    return (views * n_train * (c.decode + c.lower[k]) + n_val * (c.decode_plain + c.lower[k])
            + epochs * (n_train * c.upper_step[k] + n_val * c.upper_eval[k]) + STAGE_OVERHEAD)


def trunk_views(epochs: int) -> int:
    """Augmented views cached for a trunk stage of ``epochs`` epochs: one per two epochs, from 2 up to
    :data:`MAX_TRUNK_VIEWS` (each view costs a pass of the frozen layers over every training image)."""
    return max(min(2, epochs), min(MAX_TRUNK_VIEWS, epochs // 2))


def most(cost, low: int, high: int, room: float) -> int | None:
    """The largest n in [low, high] with ``cost(n) <= room`` (costs grow with n), None when not even ``low``."""
    if cost(low) > room:
        return None
    best = low
    for n in range(low + 1, high + 1):
        if cost(n) > room:
            break
        best = n
    return best


# -- the plan ----------------------------------------------------------------------------------------------

def make_plan(budget: float, costs: Costs, n_train: int, n_val: int, blocks: list[str], *, batch_size: int = 32,
              refit: bool = False, spent: float = 0.0, single_label: bool = True) -> Plan:
    """The stages for ``budget`` seconds (``spent`` already gone) on ``n_train``/``n_val`` images with these
    per-image ``costs``. ``blocks``: the trunk's blocks in forward order (the top ones train in the trunk
    stage; ``costs.lower`` says which counts were measured). Raises :class:`BudgetTooSmall` when not even one
    epoch of the heads on one view fits."""
    usable = usable_seconds(budget, spent)
    notes: list[str] = []
    select = usable
    if refit:  # the refit trains on train + val without validating: about (n_train + n_val) / n_train again
        select = usable * n_train / (2 * n_train + n_val)
        notes.append("Then the refit: the chosen schedule again from the start, on all labelled images.")
    floor = heads_cost(costs, n_train, n_val, 1, 1)
    if floor > select:
        share = n_train / (2 * n_train + n_val) if refit else 1.0
        need = (floor / share + SAVE_SECONDS + spent) / (1 - MARGIN)
        raise BudgetTooSmall(f"The budget of {clock_text(budget)} is too short: even the first stage (the heads on "
                             f"one pass of cached features) needs about {clock_text(floor)} here"
                             + (" and the refit as long again" if refit else "")
                             + (f", after {clock_text(spent)} loading and measuring" if spent >= 1 else "")
                             + f"; give at least {clock_text(math.ceil(need))}.")
    stages: list[Stage] = []
    small = n_train < SMALL_DATA
    policy = "trivial" if small else "standard"
    if small:
        notes.append(f"Small data (under {SMALL_DATA} training images): TrivialAugmentWide on top of crops and flips.")
    smoothing = LABEL_SMOOTHING if single_label else 0.0
    finder = finder_cost(costs, n_train, batch_size)
    room = select
    if finder <= FINDER_SHARE * select and finder + floor <= select:
        stages.append(Stage("finder", "rate finder", finder, lr_heads=0.0, ema=False, label_smoothing=0.0))
        room -= finder
    else:
        notes.append(f"No time for the rate finder: the heads train at {DEFAULT_LR_HEADS:g}.")
    candidates = [k for k in costs.trunk_blocks if 0 < k < len(blocks)]

    def heads_stage(views: int, epochs: int) -> Stage:
        return Stage("heads", "heads", heads_cost(costs, n_train, n_val, views, epochs), epochs, views,
                     lr_heads=DEFAULT_LR_HEADS, augment_policy=policy, label_smoothing=smoothing)

    # heads first: a share of the time when a trunk stage can follow
    share = HEADS_SHARE * room
    views = most(lambda v: heads_cost(costs, n_train, n_val, v, HEAD_EPOCHS), 1, MAX_HEAD_VIEWS, share) or 1
    epochs = most(lambda e: heads_cost(costs, n_train, n_val, views, e), 1, HEAD_EPOCHS, room) or 1
    heads = heads_stage(views, epochs)
    rest = room - heads.estimate
    trunk = blocks_stage(costs, blocks, n_train, n_val, rest, policy, smoothing)
    if trunk is None:  # the heads take it all: more views, as many as end in time at half the measured pace
        views = most(lambda v: FLOOR_PACE * heads_cost(costs, n_train, n_val, v, epochs), 1, MAX_HEAD_VIEWS_ALONE,
                     room) or 1
        stages.append(heads_stage(views, epochs))
        if candidates:
            notes.append("No time to train trunk blocks: the heads alone.")
        return Plan(budget, usable, stages, n_train, n_val, refit, notes)
    stages += [heads, trunk]
    return Plan(budget, usable, stages, n_train, n_val, refit, notes)


def blocks_stage(costs: Costs, blocks: list[str], n_train: int, n_val: int, room: float, policy: str,
                 smoothing: float, load: float = 1.0, fewest: int = 1) -> Stage | None:
    """The trunk stage for ``room`` seconds at ``load`` times the measured costs: the most blocks from the top
    (at least ``fewest``) that leave room for :data:`MIN_TRUNK_EPOCHS` epochs, then as many epochs as fit;
    None when none fits."""
    def cost(k: int, e: int) -> float:
        return blocks_cost(costs, k, n_train, n_val, trunk_views(e), e) * load

    fits = [k for k in costs.trunk_blocks
            if max(1, fewest) <= k < len(blocks) and cost(k, MIN_TRUNK_EPOCHS) <= room]
    if not fits:
        return None
    k = max(fits)
    e = most(lambda n: cost(k, n), MIN_TRUNK_EPOCHS, MAX_TRUNK_EPOCHS, room)
    top = list(reversed(blocks))[:k]  # top first
    factors = {b: float(f"{BLOCK_DECAY ** i:.4g}") for i, b in enumerate(top)}
    return Stage("blocks", f"top {k} block{'s' if k > 1 else ''}", cost(k, e) / load, e, trunk_views(e), top,
                 blocks[len(blocks) - k - 1], DEFAULT_LR_HEADS / 3, LR_TRUNK, factors, policy, smoothing)


def refit_stages(chosen: list[Stage], n_train: int, n_all: int, costs: Costs | None) -> list[Stage]:
    """The refit: ``chosen`` (the stages kept, with the epochs that validated best) again on ``n_all``
    images, without validation."""
    out = []
    for s in chosen:
        if s.kind == "finder":
            continue
        scale = n_all / max(1, n_train)
        out.append(Stage(**{**asdict(s), "title": f"refit: {s.title}", "refit": True, "estimate": s.estimate * scale}))
    return out
