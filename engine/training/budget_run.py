"""Running a budget's plan (:mod:`engine.training.budget`) inside its time: ``BudgetTrainer(...).run()``.

Each stage is an ordinary :class:`~engine.training.trainer.Trainer` run (the rate finder a
:class:`~engine.training.rate_finder.RateFinder`) whose events pass through to ``on_event``, framed by
:class:`PlanReady`, :class:`StageStarted` and :class:`StageFinished`, and ended by :class:`BudgetFinished`.

Keeping the time, whatever the load does:

* before a stage starts its epochs (and views) are planned again for the time left, at the pace the last
  stage actually ran (its measured time over its estimate: the *load*), leaving the later stages theirs;
  a stage that cannot fit even its smallest form is left out, with a note;
* while a stage runs, every event checks the clock: past the stage's deadline the trainer is stopped (after
  the current batch, keeping its best epoch), and after an epoch whose repeat would end past the deadline it
  is stopped at once (deadline-aware epochs, not only estimates), unless all its epochs left, at the pace
  of that epoch, take no more than a grace (:data:`GRACE_SHARE` of the time left when the stage began): then
  the overrun was the one-off work before the epochs (caching views) and the cheap epochs still run;
* the pace is learnt from every stage that ran, completed, stopped early or cut at its deadline: its seconds
  over the estimate of what it ran (its views and the epochs it finished);
* the last deadline is the budget less the time to save; a refit that cannot finish by then is given up and
  the model chosen on validation kept.

The best validation result is kept across stages, compared as epochs are (the heads' metric, a tie broken by
the loss: :func:`engine.training.metrics.better_epoch`): a stage whose best epoch validates worse than what
came before is undone. The session's freeze settings and learning-rate factors are put back afterwards; the
weights are the chosen stage's. ``clock`` and ``trainer_factory`` are injectable (the tests run the plan with
fake trainers and a fake clock: no sleeps).
"""
from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from engine.errors import GraftError
from engine.training.budget import (MIN_TRUNK_EPOCHS, SAVE_SECONDS, Costs, Plan, Stage, blocks_cost, clock_text,
                                    heads_cost, make_plan, most, refit_stages, trunk_views)
from engine.training.budget_probe import probe, top_block_params, train_top_blocks
from engine.training.config import TrainConfig
from engine.training.events import EpochEvent, MessageEvent, TrainingError
from engine.training.metrics import better_epoch, headline, selection_score
from engine.units import plural

FINDER_RANGE = (3e-4, 3e-2)  # the finder's suggestion is clamped into this range of heads' rates
PLAN_LEVEL = "plan"  # OneRun's MessageEvent level for the plan (a front end may show it apart; else as "info")
MIN_LOAD, MAX_LOAD = 0.5, 4.0  # the measured pace (seconds over estimate) is kept in this range
GRACE_SHARE = 0.03  # a stage past its deadline still finishes its epochs left when, at the pace of its last
# epoch, they take at most this share of the time left when it began (the heads' epochs on cached views: 0.1 s)


@dataclass
class PlanReady:
    plan: Plan


@dataclass
class StageStarted:
    index: int  # 1-based
    total: int
    stage: Stage
    deadline_seconds: float  # seconds this stage may take


@dataclass
class StageResult:
    """What a stage bought: its time against its estimate, and its best validation result."""

    index: int
    title: str
    kind: str
    estimate: float
    seconds: float = 0.0
    reason: str = "skipped"  # a TrainResult's reason, "skipped" or "finder"
    epochs: int = 0  # planned (after re-planning)
    epochs_run: int = 0
    best_epoch: int | None = None
    val_loss: float | None = None
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    score: float | None = None  # the best epoch's metrics.selection_score (what the stages are compared by)
    kept: bool = False  # the run's best so far after this stage
    led: bool = False  # the best so far when it finished: the stages after it started from its weights
    note: str = ""
    lr_heads: float = 0.0
    lr_trunk: float = 0.0
    blocks: list[str] = field(default_factory=list)
    views: int = 0
    refit: bool = False


@dataclass
class StageFinished:
    result: StageResult


@dataclass
class BudgetResult:
    plan: Plan
    stages: list[StageResult]
    reason: str  # "completed" | "stopped"
    best_epoch: int | None
    best_val_loss: float | None
    epochs_run: int
    history: list[dict[str, Any]]
    seconds: float
    device: str
    message: str
    refitted: bool = False

    def record_fields(self) -> dict[str, Any]:
        """What the run record keeps (:class:`engine.training.record.TrainingRecord`)."""
        return {"reason": self.reason, "best_epoch": self.best_epoch, "best_val_loss": self.best_val_loss,
                "epochs_run": self.epochs_run, "history": self.history, "seconds": self.seconds,
                "device": self.device, "plan": self.plan.to_dict(), "stages": [asdict(s) for s in self.stages]}


@dataclass
class BudgetFinished:
    result: BudgetResult


def validated_text(heads: Any, metrics: dict[str, dict[str, float]], loss: float | None) -> str:
    """``"acc 0.991, loss 0.0913"``: a stage's best validation result in words (``heads``: HeadSpecs)."""
    words = [headline(h.kind, metrics[h.name]) for h in heads if metrics.get(h.name)]
    return ", ".join(words + ([f"loss {loss:.4f}"] if loss is not None else []))


def with_samples(data: Any, train: list[Any], val: list[Any]) -> Any:
    """A shallow copy of ``data`` (a DataSource) with other training and validation samples."""
    out = copy.copy(data)
    out.train, out.val = list(train), list(val)
    if hasattr(out, "_summary"):
        out._summary = None
    return out


class BudgetTrainer:
    """Plans and trains ``session`` on ``data`` within ``budget`` seconds (see the module docstring).
    ``base``: the TrainConfig whose batch size, device, seed, workers and feature RAM budget every stage
    uses. ``costs``: per-image costs (None: measured by :func:`engine.training.budget_probe.probe`).
    ``started``: the clock's time when the budget began (default: when this object was made), so that
    loading counts against it."""

    def __init__(self, session: Any, data: Any, budget: float, *, base: TrainConfig | None = None, refit: bool = False,
                 on_event: Callable[[object], None] | None = None, costs: Costs | None = None,
                 clock: Callable[[], float] = time.monotonic, started: float | None = None,
                 trainer_factory: Callable[..., Any] | None = None, finder_factory: Callable[..., Any] | None = None):
        self.session, self.data, self.budget, self.refit = session, data, float(budget), bool(refit)
        self.base = base or TrainConfig()
        self.on_event, self.costs, self.clock = on_event, costs, clock
        self.started = clock() if started is None else started
        self.trainer_factory = trainer_factory
        self.finder_factory = finder_factory
        self.plan_: Plan | None = None
        self._stop = threading.Event()
        self._current: Any = None

    # -- control ------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """End after the current batch (thread-safe): the best stage so far is kept."""
        self._stop.set()
        current = self._current
        if current is not None:
            current.stop()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    def _emit(self, event: object) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def _note(self, text: str, level: str = "info") -> None:
        self._emit(MessageEvent(text, level))

    # -- the plan ---------------------------------------------------------------------------------------------
    def _single_label(self) -> bool:
        return any(h.kind == "single" for h in self.session.heads)

    def plan(self) -> Plan:
        """The plan (measuring the costs first when none were given); BudgetTooSmall when nothing fits."""
        if self.plan_ is not None:
            return self.plan_
        from engine.training.budget import SMALL_DATA
        from engine.training.device import resolve_device

        data = self.data
        dense = [h.name for h in self.session.heads if h.dense]
        if dense or getattr(self.session.model, "has_dense_heads", False):
            names = ", ".join(repr(n) for n in dense) or "segment or detect"
            raise GraftError(f"The time-budgeted plan trains classification and regression heads on cached "
                             f"features; the dense heads ({names}) read whole feature maps, so no stage of it "
                             "would be timed right. Remove them, or train them with Start training "
                             "(main.py train without --budget).")
        if self.costs is None:
            policy = "trivial" if len(data.train) < SMALL_DATA else "standard"
            self.costs = probe(self.session, data.train, policy=policy, device=resolve_device(self.base.device),
                               images=2 * len(data.train) + len(data.val))
        blocks = [b for b, _ in reversed(top_block_params(self.session))]
        spent = self.clock() - self.started
        self.plan_ = make_plan(self.budget, self.costs, len(data.train), len(data.val), blocks,
                               batch_size=self.base.batch_size, refit=self.refit, spent=spent,
                               single_label=self._single_label())
        return self.plan_

    # -- the run ----------------------------------------------------------------------------------------------
    def run(self) -> BudgetResult:
        plan = self.plan()
        self._emit(PlanReady(plan))  # the plan's notes are part of it (Plan.describe), not messages of their own
        model = self.session.model
        factors_before = dict(getattr(model, "lr_factors", {}) or {})
        flags_before = {n: p.requires_grad for n, p in model.named_parameters()}
        try:
            return self._run(plan)
        finally:
            for n, p in model.named_parameters():
                p.requires_grad_(flags_before[n])
            if hasattr(model, "lr_factors"):
                model.lr_factors = factors_before
            self._current = None

    def _run(self, plan: Plan) -> BudgetResult:
        clock = self.clock
        end = self.started + self.budget - SAVE_SECONDS  # the last deadline
        now = clock()
        n_train, n_val = len(self.data.train), len(self.data.val)
        select_end = end
        if self.refit:
            select_end = now + (end - now) * n_train / (2 * n_train + n_val)
        initial = self._state()
        self.load = 1.0
        self.lr = None
        results: list[StageResult] = []
        self._results = results
        history: list[dict[str, Any]] = []
        # (val loss, state, stage index, score): stages compared as epochs are (metrics.better_epoch)
        best: tuple[float | None, dict[str, torch.Tensor], int, float | None] | None = None
        stages = plan.stages
        for i, stage in enumerate(stages, 1):
            if self._stop.is_set():
                break
            later = sum(s.estimate for s in stages[i:]) * self.load
            result = self._run_stage(i, len(stages), stage, self.data, select_end, later, history)
            results.append(result)
            if result.reason in ("skipped", "finder", "error") or result.epochs_run == 0:
                if best is not None and result.kind != "finder":
                    self._load(best[1])
                continue
            val = result.val_loss
            if best is None or better_epoch(result.score, val, best[3], best[0]):
                best = (val, self._state(), i, result.score)
                result.kept = result.led = True
                for r in results[:-1]:
                    r.kept = False
            else:
                self._load(best[1])
                result.note = (result.note + " " if result.note else "") + "Validated worse than before: undone."
            self._emit(StageFinished(result))
            if i == len(stages) and not self._stop.is_set():
                self._more(plan, select_end, result.kept)  # time left (ran faster than measured, stopped early)
        refitted = False
        if self.refit and best is not None and not self._stop.is_set():
            refitted = self._refit(plan, results, best, end, initial, history)
        seconds = clock() - self.started
        chosen = next((r for r in results if r.kept), None)
        best_epoch = None
        if chosen is not None and chosen.best_epoch is not None:
            best_epoch = next((h["epoch"] for h in history if h.get("stage") == chosen.index
                               and h.get("stage_epoch") == chosen.best_epoch), None)
        reason = "stopped" if self._stop.is_set() else "completed"
        what = (f"kept stage {chosen.index} ({chosen.title})" if chosen is not None else "no stage finished an epoch")
        message = (f"Budget {clock_text(self.budget)}: {clock_text(seconds)} used, {what}"
                   + (f", validation {validated_text(self.session.heads, chosen.metrics, best[0])}"
                      if best is not None and chosen is not None and best[0] is not None else "")
                   + ("; then refitted on all labelled images" if refitted else "") + ".")
        device = str(getattr(self, "_device", "cpu"))
        result = BudgetResult(plan, results, reason, best_epoch, best[0] if best else None, len(history), history,
                              seconds, device, message, refitted)
        self._emit(BudgetFinished(result))
        return result

    def _more(self, plan: Plan, select_end: float, kept: bool = True) -> None:
        """Spend the time left after the last stage (it ran faster than measured, or stopped early): add a
        trunk stage when one fits at the pace measured so far, from the best weights so far. After the
        heads, the most blocks that fit; after a trunk stage, as many blocks or more (gradual unfreezing
        goes on down as far as the probe measured, else the same blocks train on, a new warm-up and cosine
        cycle from the kept weights; not after the same blocks were undone, ``kept`` False: the same run again).
        Kept, as every stage, only when it validates better."""
        from engine.training.budget import blocks_stage

        last = plan.stages[-1]
        if last.kind not in ("heads", "blocks") or last.refit:
            return
        blocks = [b for b, _ in reversed(top_block_params(self.session))]
        room = select_end - self.clock()
        stage = blocks_stage(self.costs, blocks, len(self.data.train), len(self.data.val), room,
                             last.augment_policy, last.label_smoothing, self.load, fewest=len(last.blocks))
        if stage is None:
            return
        if stage.blocks == last.blocks:
            if not kept:
                return
            stage = replace(stage, title=f"{stage.title}, again")
        plan.stages.append(stage)
        self._note(f"{clock_text(room)} left after the last stage: {stage.title} added "
                   f"({clock_text(stage.estimate * self.load)}).")

    # -- one stage ----------------------------------------------------------------------------------------------
    def _replanned(self, stage: Stage, room: float) -> Stage | None:
        """``stage`` with the epochs (and views) that fit ``room`` seconds at the current load; None when not
        even the smallest form fits."""
        c, load = self.costs, self.load
        n_train, n_val = len(self.data.train), len(self.data.val)
        if stage.refit:
            n_train, n_val = n_train + n_val, 0
        if stage.kind == "finder":
            return stage if stage.estimate * load <= room else None
        if stage.kind == "heads":
            def cost(e: int) -> float:
                return heads_cost(c, n_train, n_val, stage.views, e) * load
            low = 1
        else:
            k = len(stage.blocks)

            def cost(e: int) -> float:
                return blocks_cost(c, k, n_train, n_val, trunk_views(e) if not stage.refit else stage.views, e) * load
            low = 1 if stage.refit else min(MIN_TRUNK_EPOCHS, stage.epochs)
        epochs = most(cost, low, stage.epochs, room)
        if epochs is None:
            return None
        views = stage.views if stage.kind == "heads" or stage.refit else trunk_views(epochs)
        return replace(stage, epochs=epochs, views=views, estimate=cost(epochs))

    def _config(self, stage: Stage) -> TrainConfig:
        base = self.base
        common = dict(epochs=stage.epochs, augment=True, augment_policy=stage.augment_policy,
                      label_smoothing=stage.label_smoothing, ema=stage.ema, warmup_epochs=1.0 if stage.epochs > 2 else 0.0,
                      unfreeze_every=None, pause_after=None, devices=1, telemetry=False,
                      batchnorm_eval=stage.kind == "blocks",
                      patience=0 if stage.refit else (8 if stage.kind == "heads" else 0))
        if stage.kind == "heads":
            return replace(base, lr_heads=stage.lr_heads, cache_features=True, augment_views=stage.views,
                           boundary_cache=False, **common)
        return replace(base, lr_heads=stage.lr_heads, lr_trunk=stage.lr_trunk, cache_features=False, augment_views=0,
                       boundary_cache=True, boundary_views=stage.views, **common)

    def _run_stage(self, index: int, total: int, stage: Stage, data: Any, stage_end: float, later: float,
                   history: list[dict[str, Any]]) -> StageResult:
        clock = self.clock
        now = clock()
        room = max(0.0, stage_end - now - later) if stage.kind != "finder" else max(0.0, stage_end - now)
        result = StageResult(index, stage.title, stage.kind, stage.estimate, blocks=list(stage.blocks),
                             refit=stage.refit)
        if stage.kind != "finder" and self.lr is not None:
            stage = replace(stage, lr_heads=self.lr / (3 if stage.kind == "blocks" else 1))
        planned = self._replanned(stage, room)
        if planned is None:
            result.note = f"No time left for it ({clock_text(room)} of {clock_text(stage.estimate * self.load)})."
            self._note(f"Stage {index} ({stage.title}) left out: {result.note}")
            self._emit(StageFinished(result))
            return result
        stage = planned
        result.epochs, result.views, result.lr_heads, result.lr_trunk = stage.epochs, stage.views, stage.lr_heads, \
            stage.lr_trunk
        deadline = min(stage_end, now + max(room, stage.estimate))
        # the floor (the first stage that trains) may run on to the stages' end for its first epoch
        hard = stage_end if not any(r.epochs_run for r in self._results) else deadline
        self._emit(StageStarted(index, total, stage, deadline - now))
        if stage.kind == "finder":
            return self._finder(result, stage, data, deadline)
        config = self._config(stage)
        model = self.session.model
        k = len(stage.blocks)
        factors = dict(getattr(model, "lr_factors", {}) or {})
        offset = len(history)
        with train_top_blocks(self.session, k):
            if k:
                model.lr_factors = {**factors, **stage.block_factors}
            trainer = self._trainer(data, config, deadline, hard, GRACE_SHARE * max(0.0, stage_end - now), stage_end)
            try:
                out = trainer.run()
            except TrainingError as exc:
                out = exc.result
                result.note = str(exc)
                self._note(f"Stage {index} ({stage.title}) failed: {exc}", "warning")
            finally:
                model.lr_factors = factors
                self._current = None
        seconds = clock() - now
        result.seconds = seconds
        if out is None:
            result.reason = "error"
            return result
        self._device = out.device
        result.reason = out.reason if not result.note else "error"
        result.epochs_run, result.best_epoch, result.val_loss = out.epochs_run, out.best_epoch, out.best_val_loss
        chosen = next((h for h in out.history if h.get("epoch") == out.best_epoch), None)
        result.metrics = dict(chosen.get("metrics") or {}) if chosen else {}
        result.score = selection_score(self.session.heads, result.metrics) if out.best_val_loss is not None else None
        for h in out.history:
            history.append({**h, "epoch": offset + h["epoch"], "stage": index, "stage_epoch": h["epoch"]})
        self._learn_pace(stage, out.epochs_run, seconds)
        return result

    def _learn_pace(self, stage: Stage, epochs_run: int, seconds: float) -> None:
        """The pace of this device now, for the later stages' plans: the stage's seconds over the estimate (at
        the measured costs) of what it ran, its views and the epochs it finished, whether it completed, stopped
        early or was cut at its deadline. A stage cut before its first epoch ended gives a lower bound only (its
        views were not all cached): the pace rises to it, never falls."""
        if self._stop.is_set() or stage.kind == "finder":
            return
        c = self.costs
        n_train, n_val = len(self.data.train), len(self.data.val)
        if stage.refit:
            n_train, n_val = n_train + n_val, 0
        if stage.kind == "heads":
            ran = heads_cost(c, n_train, n_val, stage.views, epochs_run)
        else:
            ran = blocks_cost(c, len(stage.blocks), n_train, n_val, stage.views, epochs_run)
        if ran <= 0:
            return
        pace = min(MAX_LOAD, max(MIN_LOAD, seconds / ran))
        self.load = pace if epochs_run else max(self.load, pace)

    def _trainer(self, data: Any, config: TrainConfig, deadline: float, hard: float | None = None,
                 grace: float = 0.0, cap: float | None = None) -> Any:
        """The stage's trainer, stopped past ``deadline`` once an epoch has finished, past ``hard`` (default:
        the deadline) in any case, and after an epoch whose repeat would end past the deadline. ``grace``
        (seconds): once, after an epoch that ends past the deadline or whose repeat would, when all the epochs
        left at that epoch's pace take no more than that (and end by ``cap``, default ``hard``), the stage runs
        on to finish them instead of ending: what overran was the one-off work before the epochs (caching
        views), and the later stages are planned again for the time then left."""
        from engine.training.trainer import Trainer

        factory = self.trainer_factory or Trainer
        holder: dict[str, Any] = {}
        hard = deadline if hard is None else max(hard, deadline)
        cap = hard if cap is None else cap
        limit = {"deadline": deadline, "grace": grace}
        epochs = [0]

        def on_event(event: object) -> None:
            self._emit(event)
            trainer = holder.get("trainer")
            if trainer is None:
                return
            now = self.clock()
            if isinstance(event, EpochEvent):
                epochs[0] = event.epoch
                left = config.epochs - event.epoch
                if left > 0 and now + event.seconds > limit["deadline"] and limit["grace"] > 0:
                    more = left * event.seconds
                    if more <= limit["grace"] and now + more <= cap:
                        self._note(f"The {plural(left, 'epoch')} left take about {more:.0f} s at this pace: the stage "
                                   f"runs on past its deadline to finish {'it' if left == 1 else 'them'}.")
                        limit["deadline"] = min(cap, now + max(2 * more, more + 1.0))
                        limit["grace"] = 0.0  # once
                        return
            deadline_now = limit["deadline"]
            if now >= max(hard, deadline_now) or (now >= deadline_now and epochs[0]):
                trainer.stop()
            elif isinstance(event, EpochEvent):
                if event.epoch < config.epochs and now + event.seconds > deadline_now:
                    self._note(f"Epoch {event.epoch + 1} would end past the stage's deadline: the stage ends here.")
                    trainer.stop()

        trainer = factory(self.session, data, config, on_event)
        holder["trainer"] = trainer
        self._current = trainer
        if self._stop.is_set():
            trainer.stop()
        return trainer

    def _finder(self, result: StageResult, stage: Stage, data: Any, deadline: float) -> StageResult:
        from engine.training.budget import FINDER_IMAGES
        from engine.training.rate_finder import RateFinder

        now = self.clock()
        generator = torch.Generator().manual_seed(self.base.seed)
        order = torch.randperm(len(data.train), generator=generator)[:FINDER_IMAGES].tolist()
        subset = with_samples(data, [data.train[i] for i in order], [])
        config = replace(self.base, cache_features=True, augment=False, augment_views=0, ema=False,
                         label_smoothing=0.0, devices=1)
        factory = self.finder_factory or RateFinder
        finder = self._trainer_like(factory, subset, config, deadline)
        with train_top_blocks(self.session, 0):
            try:
                found = finder.find()
                low, high = FINDER_RANGE
                self.lr = min(high, max(low, found.suggestion))
                result.note = f"suggested {found.suggestion:.2g}" + (
                    f", used {self.lr:.2g}" if not math.isclose(self.lr, found.suggestion) else "")
            except GraftError as exc:
                result.note = f"no suggestion ({exc}); the default rate"
            finally:
                self._current = None
        result.reason, result.seconds = "finder", self.clock() - now
        result.lr_heads = self.lr or 0.0
        self._note(f"Rate finder: {result.note}.")
        self._emit(StageFinished(result))
        return result

    def _trainer_like(self, factory: Callable[..., Any], data: Any, config: TrainConfig, deadline: float) -> Any:
        saved = self.trainer_factory
        self.trainer_factory = factory
        try:
            return self._trainer(data, config, deadline)
        finally:
            self.trainer_factory = saved

    # -- the refit --------------------------------------------------------------------------------------------
    def _refit(self, plan: Plan, results: list[StageResult], best: tuple, end: float,
               initial: dict[str, torch.Tensor], history: list[dict[str, Any]]) -> bool:
        """Train the chosen schedule again from the start on every labelled image; True when it finished. No
        validation: each stage runs the epochs that validated best in the selection."""
        chosen_index = best[2]
        chosen: list[Stage] = []
        for r, s in zip(results, plan.stages):
            if r.index > chosen_index or r.kind == "finder" or r.epochs_run == 0 or r.reason == "error":
                continue
            if r.index != chosen_index and not self._fed_into(r, results, chosen_index):
                continue
            chosen.append(replace(s, epochs=max(1, r.best_epoch or r.epochs_run), views=r.views or s.views,
                                  lr_heads=r.lr_heads, lr_trunk=r.lr_trunk or s.lr_trunk))
        n_all = len(self.data.train) + len(self.data.val)
        stages = refit_stages(chosen, len(self.data.train), n_all, self.costs)
        need = sum(s.estimate for s in stages) * self.load
        if need > end - self.clock():
            self._note(f"No time for the refit ({clock_text(need)} needed): the model chosen on validation is kept.")
            return False
        selected = best[1]
        everything = with_samples(self.data, list(self.data.train) + list(self.data.val), [])
        self._load(initial)
        done = True
        saved_lr, self.lr = self.lr, None  # the refit's stages keep the rates they ran with
        for j, stage in enumerate(stages):
            later = sum(s.estimate for s in stages[j + 1:]) * self.load
            r = self._run_stage(len(results) + 1, len(plan.stages) + len(stages), stage, everything, end, later, history)
            results.append(r)
            self._emit(StageFinished(r))
            if r.reason != "completed" or r.epochs_run < stage.epochs:
                done = False
                break
        self.lr = saved_lr
        if not done:
            self._load(selected)
            self._note("The refit did not finish within the budget: the model chosen on validation is kept.", "warning")
            return False
        for r in results:
            r.kept = r.refit
        return True

    @staticmethod
    def _fed_into(r: StageResult, results: list[StageResult], chosen_index: int) -> bool:
        """A stage before the chosen one whose weights the chosen one started from (it was kept then)."""
        return r.index < chosen_index and r.led

    # -- weights ------------------------------------------------------------------------------------------------
    def _state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().to("cpu", copy=True) for k, v in self.session.model.state_dict().items()}

    def _load(self, state: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            current = self.session.model.state_dict()
            for k, v in state.items():
                current[k].copy_(v)


class OneRun:
    """The budget's events as one ordinary run's, for a front end made for a Trainer (the window's training
    worker and curves): ``OneRun(session, data, budget, on_event, **kwargs)`` has a Trainer's ``run``,
    ``stop`` and ``pause``. Steps and epochs count on across the stages; the first stage's ``TrainStarted``
    stands for the run (later ones are dropped); the plan and each stage's start and end become
    ``MessageEvent`` lines (the plan's with level :data:`PLAN_LEVEL`); progress and the time left go by the budget's clock. ``run`` returns the
    :class:`BudgetResult`."""

    def __init__(self, session: Any, data: Any, budget: float, on_event: Callable[[object], None] | None = None,
                 **kwargs: Any) -> None:
        self.on_event = on_event
        self.runner = BudgetTrainer(session, data, budget, on_event=self._translate, **kwargs)
        self._steps = self._epochs = 0  # those of the stages before this one
        self._last_step = self._last_epoch = 0
        self._started = self._finding = False

    def plan(self) -> Plan:
        return self.runner.plan()

    def stop(self) -> None:
        self.runner.stop()

    def pause(self) -> None:  # a budget cannot pause (its time runs on): Pause stops, keeping the best stage
        self.runner.stop()

    def run(self) -> BudgetResult:
        return self.runner.run()

    def _send(self, event: object) -> None:
        if self.on_event is not None:
            self.on_event(event)

    def _translate(self, event: object) -> None:
        from engine.training.events import ProgressEvent, StepEvent, TrainFinished, TrainStarted

        runner = self.runner
        if self._finding and isinstance(event, (TrainStarted, StepEvent, EpochEvent, ProgressEvent, TrainFinished)):
            return  # the rate finder's sweep is no part of the run's curves
        if isinstance(event, PlanReady):
            self._send(MessageEvent(event.plan.describe(narrow=True), PLAN_LEVEL))
        elif isinstance(event, StageStarted):
            s = event.stage
            self._steps, self._epochs = self._last_step, self._last_epoch
            self._finding = s.kind == "finder"
            self._send(MessageEvent(f"Stage {event.index}/{event.total}: {s.title} ({s.trains}; frozen: {s.frozen}; "
                                    f"{s.rates()}), estimated {clock_text(s.estimate)}."))
        elif isinstance(event, StageFinished):
            r = event.result
            self._finding = False
            if r.kind != "finder" and r.reason != "skipped":
                val = (f"best validation {validated_text(runner.session.heads, r.metrics, r.val_loss)}"
                       if r.val_loss is not None else "no validation")
                self._send(MessageEvent(f"Stage {r.index} ({r.title}) took {clock_text(r.seconds)}: {val}"
                                        + ("; kept." if r.kept else ".")))
        elif isinstance(event, TrainStarted):
            if not self._started:
                self._started = True
                self._send(replace(event, epochs=sum(s.epochs for s in runner.plan().stages)))
        elif isinstance(event, StepEvent):
            self._last_step = self._steps + event.step
            self._last_epoch = max(self._last_epoch, self._epochs + event.epoch)
            self._send(replace(event, step=self._last_step, epoch=self._epochs + event.epoch))
        elif isinstance(event, EpochEvent):
            self._last_epoch = self._epochs + event.epoch
            self._send(replace(event, epoch=self._last_epoch))
        elif isinstance(event, ProgressEvent):
            spent = runner.clock() - runner.started
            left = max(0.0, runner.budget - spent)
            self._send(ProgressEvent(self._last_step, event.total_steps, min(1.0, spent / runner.budget), left,
                                     event.phase))
        elif isinstance(event, (TrainFinished, BudgetFinished)):
            return  # the result arrives as run's return value
        else:
            self._send(event)
