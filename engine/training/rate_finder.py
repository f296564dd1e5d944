"""Learning-rate range test (Smith 2017; fastai's ``lr_find``): which learning rate to train with.

A short run whose rate grows exponentially, step by step, from ``start_lr`` to ``end_lr`` (default 1e-7 to
10 over at most 100 steps), recording the training loss of every batch. It stops early once the smoothed
loss exceeds 4x its lowest value (checked from the 6th step on: the first batches' losses are too noisy) or a
loss is not finite: the rate has become too high. Stopping by the 6th step means it diverged at once. The loss is
smoothed with an exponential moving average with bias correction (``beta`` 0.98, as fastai).

The suggestion is the point of **steepest descent**: the rate where the smoothed loss falls fastest
against log(rate), searched between the first tenth of the curve and the lowest smoothed loss (fastai's
"steep" rule; the lowest point itself is left out). When that stretch is too short to have a slope, the suggestion is a tenth of the rate at
the lowest loss; a loss that never falls (lowest within the first steps) gives no suggestion (GraftError).

Nothing is learnt: :meth:`RateFinder.find` restores every weight and buffer (BatchNorm statistics, the
regression heads' target statistics), the heads' specs and the global random state afterwards. The
finder is a :class:`~engine.training.trainer.Trainer` that replaces only the epoch loop and the schedule,
so with a frozen trunk it runs on cached features (the trunk's features computed once), and it sweeps
what the session trains: the heads' rate, with trunk layers keeping their ratio to it
(``lr_trunk / lr_heads`` times their learning-rate factor).
"""
from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from engine.errors import GraftError
from engine.training.config import TrainConfig
from engine.training.events import StepEvent
from engine.training.trainer import Trainer

START_LR, END_LR, STEPS = 1e-7, 10.0, 100
DIVERGE = 4.0  # stop when the smoothed loss exceeds this many times its lowest
BETA = 0.98
AT_ONCE = 5  # the rise past DIVERGE x counts from this step on (one batch's loss is noisy); a stop then: "at once"


@dataclass
class RateFinderResult:
    lrs: list[float]
    losses: list[float]  # the raw loss of each step's batch
    smoothed: list[float]
    suggestion: float
    suggestion_index: int
    reason: str  # "completed" (reached end_lr), "diverged" (stopped early) or "stopped" (asked to)
    rule: str = "steepest"  # "steepest" | "minimum/10"
    cached_features: bool = False
    seconds: float = 0.0
    heads_rate: bool = True  # the swept rate is the heads' (False: only trunk layers train)
    notes: list[str] = field(default_factory=list)

    @property
    def min_index(self) -> int:
        return min(range(len(self.smoothed)), key=self.smoothed.__getitem__)

    def describe(self) -> str:
        what = "heads' learning rate" if self.heads_rate else "trunk's learning rate"
        how = ("steepest descent of the smoothed loss" if self.rule == "steepest"
               else "a tenth of the rate at the lowest loss")
        end = {"diverged": f"stopped at {self.lrs[-1]:.2g} where the loss rose past {DIVERGE:g}x its lowest",
               "completed": f"reached {self.lrs[-1]:.2g}", "stopped": "stopped early"}[self.reason]
        return (f"Suggested {what}: {self.suggestion:.2g} ({how}; {len(self.lrs)} steps from {self.lrs[0]:.2g}, "
                f"{end}; lowest smoothed loss {self.smoothed[self.min_index]:.4g} at {self.lrs[self.min_index]:.2g}).")

    def write_csv(self, path: str | Path) -> Path:
        path = Path(path)
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "lr", "loss", "smoothed_loss", "suggested"])
            for i, (lr, loss, sm) in enumerate(zip(self.lrs, self.losses, self.smoothed)):
                writer.writerow([i + 1, f"{lr:.6g}", f"{loss:.6g}", f"{sm:.6g}", int(i == self.suggestion_index)])
        return path

    def write_png(self, path: str | Path, size: tuple[int, int] = (720, 440)) -> Path:
        """The curve on a log-rate axis, drawn with PIL (no Qt): raw losses as grey dots, the smoothed
        loss as a line, the suggestion as a red line."""
        from PIL import Image, ImageDraw, ImageFont

        width, height = size
        left, right, top, bottom = 70, 20, 30, 50
        image = Image.new("RGB", size, "white")
        draw = ImageDraw.Draw(image)
        font = ImageFont.load_default()
        x_lo, x_hi = math.log10(self.lrs[0]), math.log10(self.lrs[-1])
        x_hi = x_hi if x_hi > x_lo else x_lo + 1
        finite = [v for v in self.smoothed if math.isfinite(v)]
        y_lo = min(finite + [v for v in self.losses if math.isfinite(v)])
        y_hi = min(max(finite), finite[0] + (finite[0] - y_lo)) if finite[0] > y_lo else max(finite)
        y_hi = y_hi if y_hi > y_lo else y_lo + 1
        pad = (y_hi - y_lo) * 0.05
        y_lo, y_hi = y_lo - pad, y_hi + pad

        def xy(lr: float, loss: float) -> tuple[float, float]:
            x = left + (math.log10(lr) - x_lo) / (x_hi - x_lo) * (width - left - right)
            y = top + (y_hi - min(max(loss, y_lo), y_hi)) / (y_hi - y_lo) * (height - top - bottom)
            return x, y

        draw.rectangle([left, top, width - right, height - bottom], outline="black")
        for decade in range(math.ceil(x_lo), math.floor(x_hi) + 1):
            x, _ = xy(10.0 ** decade, y_lo)
            draw.line([x, top, x, height - bottom], fill=(225, 225, 225))
            draw.text((x - 12, height - bottom + 6), f"1e{decade}", fill="black", font=font)
        for k in range(5):
            value = y_lo + (y_hi - y_lo) * k / 4
            _, y = xy(self.lrs[0], value)
            draw.text((6, y - 6), f"{value:.3g}", fill="black", font=font)
        for lr, loss in zip(self.lrs, self.losses):
            if math.isfinite(loss) and y_lo <= loss <= y_hi:
                x, y = xy(lr, loss)
                draw.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=(170, 170, 170))
        points = [xy(lr, v) for lr, v in zip(self.lrs, self.smoothed) if math.isfinite(v)]
        if len(points) > 1:
            draw.line(points, fill=(31, 119, 180), width=2)
        sx, _ = xy(self.suggestion, y_lo)
        draw.line([sx, top, sx, height - bottom], fill=(214, 39, 40), width=2)
        draw.text((min(sx + 4, width - right - 110), top + 4), f"suggested {self.suggestion:.2g}", fill=(214, 39, 40),
                  font=font)
        draw.text((left, 8), "learning rate finder: smoothed training loss", fill="black", font=font)
        draw.text(((width - left) // 2, height - 18), "learning rate (log scale)", fill="black", font=font)
        path = Path(path)
        image.save(path, format="PNG")
        return path


def smooth(losses: list[float], beta: float = BETA) -> list[float]:
    """Exponential moving average with bias correction (the first value is the first loss)."""
    out, avg = [], 0.0
    for i, loss in enumerate(losses, 1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** i))
    return out


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[int, str]:
    """``(index, rule)`` of the suggested rate: steepest descent of ``smoothed`` against log(lr) between
    the first tenth of the curve and the lowest loss; else a tenth of the rate at the lowest loss
    (index -1: the caller divides)."""
    import numpy as np

    lowest = int(np.argmin(smoothed))
    skip = max(1, len(smoothed) // 10)
    if lowest - skip >= 2:
        slope = np.gradient(np.asarray(smoothed), np.log10(np.asarray(lrs)))  # central differences inside
        return skip + int(np.argmin(slope[skip:lowest])), "steepest"  # before the lowest point, not at it
    return -1, "minimum/10"


class RateFinder(Trainer):
    """``RateFinder(session, data, config, on_event).find()`` -> :class:`RateFinderResult`. ``config``:
    the batch size, device, augmentation and weight decay to test with (epochs, warm-up, patience and
    schedule are the finder's own). Emits the Trainer's events (a StepEvent per step with its rate)."""

    WARN_NO_VALIDATION = False

    def __init__(self, session: Any, data: Any, config: TrainConfig | None = None,
                 on_event: Callable[[object], None] | None = None, *, start_lr: float = START_LR,
                 end_lr: float = END_LR, steps: int = STEPS, diverge: float = DIVERGE, beta: float = BETA) -> None:
        if not (isinstance(start_lr, (int, float)) and isinstance(end_lr, (int, float)) and 0 < start_lr < end_lr
                and math.isfinite(end_lr)):
            raise GraftError(f"The finder's rates must grow from a positive start to a larger end "
                             f"(got {start_lr!r} to {end_lr!r}).")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 10:
            raise GraftError(f"The finder needs at least 10 steps (got {steps!r}).")
        base = config or TrainConfig()
        config = replace(base, warmup_epochs=0.0, patience=0, unfreeze_every=None, pause_after=None, telemetry=False)
        super().__init__(session, data, config, on_event)
        self.start_lr, self.end_lr, self.steps, self.diverge, self.beta = float(start_lr), float(end_lr), steps, \
            diverge, beta

    # -- the Trainer's hooks ------------------------------------------------------------------------------
    def _prepare(self) -> None:
        super()._prepare()
        self.val_samples = []  # nothing is validated (and no validation features are computed)
        self.config.epochs = math.ceil(self.steps / self.steps_per_epoch)
        self.total_steps = self.steps

    def _schedule(self, warmup_steps: int) -> Callable[[int], float]:
        base = self.config.lr_heads if self.head_params else self.config.lr_trunk
        growth = (self.end_lr / self.start_lr) ** (1 / (self.steps - 1))
        return lambda step: self.start_lr / base * growth ** min(step, self.steps - 1)

    def _epochs(self, train_batches: Callable[[], Iterator], validate: Callable | None,
                set_train_mode: Callable[[], None]) -> str:
        set_train_mode()
        self._phase = ("training", self.config.batch_size)
        self._progress(0, force=True)
        avg, lowest, epoch = 0.0, math.inf, 0
        self.curve: tuple[list[float], list[float], list[float]] = ([], [], [])
        lrs, losses, smoothed = self.curve
        self.ending = "completed"
        while len(lrs) < self.steps:
            epoch += 1
            for outputs_fn, targets, n in train_batches():
                out, lr = self._step(outputs_fn, targets)
                loss = float(out.total.detach())
                self.done_steps += 1
                self.images_seen += n
                lrs.append(lr)
                losses.append(loss)
                if not math.isfinite(loss):
                    smoothed.append(math.inf)
                    self.ending = "diverged"
                    return "completed"
                avg = self.beta * avg + (1 - self.beta) * loss
                smoothed.append(avg / (1 - self.beta ** len(lrs)))
                self._emit(StepEvent(self.done_steps, epoch, loss, {}, lr))
                self._progress(self.done_steps)
                if len(lrs) > AT_ONCE and smoothed[-1] > self.diverge * lowest:
                    self.ending = "diverged"
                    return "completed"
                lowest = min(lowest, smoothed[-1])
                if len(lrs) >= self.steps:
                    break
        self.epochs_run = epoch
        return "completed"

    # -- the test -----------------------------------------------------------------------------------------
    def find(self) -> RateFinderResult:
        """Run the range test and put everything back as it was. GraftError when the loss diverges at
        once (within the first few steps), which no rate in the range can train with."""
        model = self.session.model
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        stats = [(spec, spec.target_mean, spec.target_std) for spec in self.session.heads]
        rng = torch.get_rng_state()
        t0 = time.perf_counter()
        try:
            result = self.run()
        finally:
            with torch.no_grad():
                model.load_state_dict(state)
            for spec, mean, std in stats:
                spec.set_target_stats(mean, std)
            torch.set_rng_state(rng)
        lrs, losses, smoothed = getattr(self, "curve", ([], [], []))
        ending = "stopped" if result.reason == "stopped" else self.ending
        if ending == "diverged" and len(lrs) <= AT_ONCE + 1:
            what = "became NaN or infinite" if not math.isfinite(losses[-1]) else f"grew past {self.diverge:g}x its lowest"
            raise GraftError(f"The learning rate finder diverged at once: the loss {what} within {len(lrs)} steps, "
                             f"at a rate of {lrs[-1]:.2g}. Check the data and its labels, or start lower "
                             "(a smaller start rate).")
        good = [v for v in smoothed if math.isfinite(v)]
        if len(good) < 3:
            raise GraftError("The learning rate finder stopped before it had a curve to read (fewer than 3 steps).")
        index, rule = suggest(lrs[:len(good)], good)
        lowest = min(range(len(good)), key=good.__getitem__)
        if index < 0 and lowest < max(1, len(good) // 10) + 2:
            raise GraftError(f"The loss did not fall at any rate from {lrs[0]:.2g} to {lrs[len(good) - 1]:.2g} "
                             f"(lowest within the first steps): no rate to suggest. Check that the heads can learn "
                             "from this data, or test with more steps or a larger batch.")
        if index < 0:
            lowest = min(range(len(good)), key=good.__getitem__)
            suggestion = lrs[lowest] / 10
            index = min(range(len(good)), key=lambda i: abs(math.log(lrs[i] / suggestion)))
        else:
            suggestion = lrs[index]
        return RateFinderResult(list(lrs), list(losses), list(smoothed), suggestion, index, ending, rule,
                                self.cached, time.perf_counter() - t0, bool(self.head_params), list(self.notes))


def find_rate(session: Any, data: Any, config: TrainConfig | None = None,
              on_event: Callable[[object], None] | None = None, **kwargs: Any) -> RateFinderResult:
    """Shorthand for ``RateFinder(session, data, config, on_event, **kwargs).find()``."""
    return RateFinder(session, data, config, on_event, **kwargs).find()
