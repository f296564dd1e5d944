"""The time-budgeted plan: it fits the budget (times injected, a fake clock: no sleeps), its stages reach the run
record, the refit keeps validation out of selection, and blank labels never reach a loss."""
from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from engine.errors import GraftError
from engine.network.heads import HeadSpec
from engine.training.budget import (MARGIN, MAX_HEAD_VIEWS, MAX_HEAD_VIEWS_ALONE, MIN_TRUNK_EPOCHS, SAVE_SECONDS,
                                    BudgetTooSmall, Costs, blocks_cost, heads_cost, make_plan, parse_budget,
                                    usable_seconds)
from engine.training.budget_run import BudgetTrainer, StageFinished, StageStarted
from engine.training.config import TrainConfig
from engine.training.events import EpochEvent, MessageEvent, ProgressEvent, StepEvent, TrainResult
from engine.training.losses import compute_losses
from engine.training.metrics import better_epoch
from engine.training.record import TrainingRecord
from engine.training.runs import runs_of, stage_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BLOCKS = ["layer1", "layer2", "layer3", "layer4"]


def costs(scale: float = 1.0) -> Costs:
    """Per-image costs of a Lite0-like trunk on a slow CPU (seconds)."""
    return Costs(decode=0.004 * scale, decode_plain=0.002 * scale, trunk=0.05 * scale, head_step=3e-5 * scale,
                 lower={1: 0.045 * scale, 2: 0.04 * scale, 3: 0.03 * scale},
                 upper_step={1: 0.01 * scale, 2: 0.03 * scale, 3: 0.1 * scale},
                 upper_eval={1: 0.003 * scale, 2: 0.008 * scale, 3: 0.02 * scale})


@pytest.mark.parametrize("text, seconds", [("90s", 90), ("10m", 600), ("1h", 3600), ("1h30m", 5400), ("2.5m", 150),
                                           ("45", 45), (" 2 m ", 120), ("10min", 600)])
def test_budget_times_read_as_people_write_them(text, seconds):
    assert parse_budget(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "ten minutes", "0s", "-5m", "5x", "m"])
def test_a_budget_that_is_no_time_says_so(text):
    with pytest.raises(GraftError):
        parse_budget(text)


@pytest.mark.parametrize("budget", [90, 120, 600, 3600])
@pytest.mark.parametrize("n_train", [100, 1200, 20000])
@pytest.mark.parametrize("refit", [False, True])
def test_the_plan_fits_the_budget_whatever_the_data_size(budget, n_train, refit):
    n_val = n_train // 4
    c = costs()
    try:
        plan = make_plan(budget, c, n_train, n_val, BLOCKS, refit=refit, spent=5.0)
    except BudgetTooSmall as exc:  # only when not even one epoch of the heads on one view fits
        select = usable_seconds(budget, 5.0) * (n_train / (2 * n_train + n_val) if refit else 1)
        assert heads_cost(c, n_train, n_val, 1, 1) > select
        assert "too short" in str(exc)
        return
    assert plan.estimate <= usable_seconds(budget, 5.0) + 1e-6
    if refit:  # room left for the refit on all images
        assert plan.estimate <= usable_seconds(budget, 5.0) * n_train / (2 * n_train + n_val) + 1e-6
    kinds = [s.kind for s in plan.stages]
    assert kinds[-1] in ("heads", "blocks") and "heads" in kinds
    assert kinds.index("heads") > kinds.index("finder") if "finder" in kinds else True
    for s in plan.stages:
        if s.kind == "blocks":  # the top blocks, frozen below the boundary, with rates falling down the trunk
            assert s.blocks == list(reversed(BLOCKS))[:len(s.blocks)]
            assert s.boundary == BLOCKS[len(BLOCKS) - len(s.blocks) - 1]
            assert list(s.block_factors.values()) == sorted(s.block_factors.values(), reverse=True)
            assert s.epochs >= MIN_TRUNK_EPOCHS and s.lr_trunk < s.lr_heads


def test_more_time_buys_deeper_and_longer_training():
    short = make_plan(180, costs(), 1200, 300, BLOCKS)
    long = make_plan(3600, costs(), 1200, 300, BLOCKS)
    deep = [s for s in long.stages if s.kind == "blocks"]
    assert deep and len(deep[0].blocks) == 3
    shallow = [s for s in short.stages if s.kind == "blocks"]
    assert not shallow or len(shallow[0].blocks) < 3 or shallow[0].epochs < deep[0].epochs
    text = long.describe()  # what the person sees before it runs
    for word in ("rate finder", "heads", "top 3 blocks", "the trunk up to layer1", "estimate"):
        assert word in text


def test_a_budget_too_short_for_the_first_stage_is_refused_before_anything_runs():
    with pytest.raises(BudgetTooSmall, match="too short"):
        make_plan(20, costs(10.0), 2000, 500, BLOCKS)


# -- running the plan with fake trainers and a fake clock ------------------------------------------------

class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeTrainer:
    """Takes the time the costs say (times ``slow``) on the fake clock, step by step, and stops when asked."""

    runs: list[SimpleNamespace] = []
    # (stage kind, epoch) -> (validation loss, accuracy); None: the loss falls as 1/epoch, the accuracy is 1 - loss
    validation = None

    def __init__(self, clock: Clock, c: Costs, slow: float, session, data, config, on_event,
                 slow_views: float = 1.0) -> None:
        self.clock, self.c, self.slow, self.slow_views = clock, c, slow, slow_views
        self.session, self.data, self.config, self.on_event = session, data, config, on_event
        self.stopped = False
        trunk = [n for n, p in session.model.trunk.named_parameters() if p.requires_grad]
        FakeTrainer.runs.append(SimpleNamespace(train=list(data.train), val=list(data.val), config=config,
                                                trunk_training=trunk))

    def stop(self) -> None:
        self.stopped = True

    def _cost(self, epochs: int) -> float:
        n, v, cfg = len(self.data.train), len(self.data.val), self.config
        if cfg.cache_features:
            return heads_cost(self.c, n, v, max(1, cfg.augment_views), epochs)
        k = sum(1 for b in BLOCKS if any(p.requires_grad for p in
                                         dict(self.session.model.trunk.body.named_modules())[b].parameters()))
        return blocks_cost(self.c, k, n, v, cfg.boundary_views or 1, epochs)

    def _spend(self, seconds: float, steps: int, event) -> bool:
        for _ in range(steps):
            self.clock.now += seconds * self.slow / steps
            self.on_event(event)
            if self.stopped:
                return False
        return True

    def run(self) -> TrainResult:
        cfg = self.config
        start = self.clock.now
        history, best, best_loss, best_acc, reason = [], None, None, None, "completed"
        if not self._spend(self._cost(0) * self.slow_views, 10, ProgressEvent(0, 1, 0.0, None, "features")):
            reason = "stopped"
        for epoch in range(1, cfg.epochs + 1):
            if reason != "completed":
                break
            if not self._spend(self._cost(epoch) - self._cost(epoch - 1), 5, StepEvent(epoch, epoch, 1.0, {}, 1e-3)):
                reason = "stopped"
                break
            val = (1.0 if cfg.cache_features else 0.5) / epoch if self.data.val else None
            acc = 1 - (val or 0)
            if FakeTrainer.validation is not None and val is not None:
                val, acc = FakeTrainer.validation("heads" if cfg.cache_features else "blocks", epoch)
            if val is not None and better_epoch(acc, val, best_acc, best_loss):  # as Trainer keeps its best epoch
                best, best_loss, best_acc = epoch, val, acc
            history.append({"epoch": epoch, "val_loss": val, "metrics": {"shape": {"accuracy": acc}}})
            seconds = (self._cost(epoch) - self._cost(epoch - 1)) * self.slow
            self.on_event(EpochEvent(epoch, 1.0, val, {}, {}, {}, best == epoch, seconds))
            if self.stopped:
                reason = "stopped"
                break
        return TrainResult(reason, history, best if self.data.val else len(history), best_loss, self.clock.now - start,
                           0.0, "", len(history), 0, bool(cfg.cache_features), "cpu")


class FakeFinder:
    seen: list[list] = []

    def __init__(self, clock: Clock, session, data, config, on_event) -> None:
        self.clock, self.data = clock, data
        FakeFinder.seen.append(list(data.train) + list(data.val))

    def stop(self) -> None:
        pass

    def find(self):
        self.clock.now += 2.0
        return SimpleNamespace(suggestion=1e-2)


@pytest.fixture
def fake_run(small_session, demo_data):
    FakeTrainer.runs, FakeFinder.seen, FakeTrainer.validation = [], [], None

    def run(budget: float, slow: float = 1.0, refit: bool = False, c: Costs | None = None,
            slow_views: dict[str, float] | None = None):
        """``slow``: the device's pace against the costs; ``slow_views``: by stage kind ("heads", "blocks"),
        how much slower still the one-off work before the epochs (caching views) runs."""
        session = small_session([HeadSpec("shape", labels=["circle", "square", "star", "triangle"])])
        clock = Clock()
        c = c or costs()
        events = []

        def trainer(session, data, config, on_event):
            views = (slow_views or {}).get("heads" if config.cache_features else "blocks", 1.0)
            return FakeTrainer(clock, c, slow, session, data, config, on_event, slow_views=views)

        runner = BudgetTrainer(session, demo_data, budget, base=TrainConfig(batch_size=8), refit=refit,
                               on_event=events.append, costs=c, clock=clock, trainer_factory=trainer,
                               finder_factory=lambda *a: FakeFinder(clock, *a))
        flags = {n: p.requires_grad for n, p in session.model.named_parameters()}
        result = runner.run()
        assert {n: p.requires_grad for n, p in session.model.named_parameters()} == flags  # put back
        return SimpleNamespace(result=result, seconds=clock.now - 1000.0, events=events, session=session, data=demo_data)

    return run


@pytest.mark.parametrize("slow", [0.5, 1.0, 2.0, 4.0])
@pytest.mark.parametrize("budget", [60.0, 300.0])
@pytest.mark.slow
def test_the_run_ends_inside_the_budget_even_when_the_device_is_slower_than_measured(fake_run, slow, budget):
    out = fake_run(budget, slow=slow, c=costs(0.2))
    assert out.seconds <= budget + SAVE_SECONDS  # the command saves afterwards: still inside budget + 10 %
    assert out.seconds <= budget * 1.1
    kinds = [r.kind for r in out.result.stages]
    assert "heads" in kinds and out.result.best_val_loss is not None
    if slow <= 1.0:  # what was planned ran (a plan at its caps of views and epochs may end before the budget)
        assert out.seconds >= min(budget * (1 - MARGIN) * 0.5, out.result.plan.estimate * slow * 0.8)


def test_a_slow_stage_is_cut_at_its_deadline_keeping_its_best_epoch(fake_run):
    out = fake_run(300.0, slow=8.0, c=costs(0.2))
    assert out.seconds <= 300.0 * 1.1
    started = [e for e in out.events if isinstance(e, StageStarted)]
    finished = [e.result for e in out.events if isinstance(e, StageFinished)]
    assert started and any(r.reason == "stopped" or r.epochs_run < r.epochs for r in finished if r.kind != "finder")


def test_the_stages_reach_the_run_record_and_the_runs_table(fake_run, demo_data):
    out = fake_run(300.0, c=costs(0.2))
    record = TrainingRecord.begin(demo_data, TrainConfig())
    record.finish(out.result.record_fields())
    extra = record.store({})
    back = runs_of(extra)[0]
    assert [s["title"] for s in back.stages] == [r.title for r in out.result.stages]
    assert back.plan["budget"] == 300.0 and back.plan["stages"]
    kept = [s for s in back.stages if s["kept"]]
    assert len(kept) == 1 and kept[0]["kind"] == "blocks"  # the fake trunk stage validates better
    table = stage_table(back).text()
    assert "top " in table and "heads" in table and "acc" in table and "yes" in table
    assert back.best_epoch == next(h["epoch"] for h in back.history
                                   if h["stage"] == kept[0]["index"] and h["stage_epoch"] == kept[0]["best_epoch"])


def test_refit_never_shows_validation_to_selection_and_never_selects_during_refit(fake_run, demo_data):
    out = fake_run(900.0, refit=True, c=costs(0.2))
    val = {str(s.path) for s in demo_data.val}
    train = {str(s.path) for s in demo_data.train}
    runs = FakeTrainer.runs
    selection = [r for r in runs if r.val]
    refit = [r for r in runs if not r.val]
    assert selection and refit and out.result.refitted
    for r in selection:  # chosen on validation, trained on the training split alone
        assert {str(s.path) for s in r.train} == train
        assert {str(s.path) for s in r.val} == val
    for r in refit:  # the chosen schedule on every labelled image, nothing validated or selected
        assert {str(s.path) for s in r.train} == train | val
        assert r.config.patience == 0
    for seen in FakeFinder.seen:
        assert not ({str(s.path) for s in seen} & val)
    chosen = [r for r in out.result.stages if r.kept]
    assert chosen and all(r.refit for r in chosen)
    assert len(refit) == len([r for r in out.result.stages if r.refit])


@pytest.mark.parametrize("trunk_better", [True, False])
def test_stages_are_kept_by_the_heads_metric_not_the_validation_loss(fake_run, trunk_better):
    """Label smoothing and weight averaging make the validation loss and the accuracy disagree: the stage
    (and the epoch) with the higher validation accuracy is kept even where its loss is higher."""
    def validation(kind: str, epoch: int) -> tuple[float, float]:
        if kind == "heads":  # the heads' accuracy peaks at epoch 3 while the loss still falls
            return 0.2 - 0.01 * epoch, (0.9, 0.95, 0.97, 0.96)[min(epoch, 4) - 1] if epoch <= 4 else 0.96
        if trunk_better:  # the trunk stage: a higher accuracy at a higher loss than the heads
            return 0.25 + 0.01 * epoch, 0.98 + 0.001 * min(epoch, 5)
        return 0.01, 0.9  # a lower loss at a lower accuracy
    FakeTrainer.validation = validation
    out = fake_run(300.0, c=costs(0.2))
    heads = next(r for r in out.result.stages if r.kind == "heads")
    trunk = next(r for r in out.result.stages if r.kind == "blocks" and r.epochs_run)
    assert heads.best_epoch == 3 and heads.metrics["shape"]["accuracy"] == 0.97
    assert trunk.kept is trunk_better and heads.kept is not trunk_better
    if trunk_better:
        assert trunk.best_epoch == min(trunk.epochs_run, 5)  # the accuracy's top, the loss rising meanwhile
        assert out.result.best_val_loss == trunk.val_loss
    else:
        assert "undone" in trunk.note and out.result.best_val_loss == heads.val_loss


def test_a_refit_that_cannot_finish_keeps_the_model_chosen_on_validation(fake_run):
    out = fake_run(300.0, slow=3.0, refit=True, c=costs(0.2))
    assert out.seconds <= 300.0 * 1.1
    if not out.result.refitted:
        assert any(r.kept and not r.refit for r in out.result.stages)


def test_time_left_after_the_last_stage_trains_the_kept_blocks_on_inside_the_budget(fake_run):
    # the device runs at twice the measured pace: the planned trunk stage ends at half its estimate
    out = fake_run(600.0, slow=0.5, c=costs(0.2))
    titles = [r.title for r in out.result.stages]
    assert titles[:3] == ["rate finder", "heads", "top 3 blocks"] and "top 3 blocks, again" in titles
    again = next(r for r in out.result.stages if r.title == "top 3 blocks, again")
    assert again.epochs_run >= MIN_TRUNK_EPOCHS and again.blocks == out.result.stages[2].blocks
    assert out.seconds <= 600.0 * 1.1
    assert any("left after the last stage" in e.text for e in out.events if isinstance(e, MessageEvent))
    assert sum(r.led for r in out.result.stages) >= 2  # the heads fed the trunk stage


def test_blocks_that_were_undone_are_not_trained_again_from_the_same_weights(fake_run):
    FakeTrainer.validation = lambda kind, epoch: (0.1, 0.99) if kind == "heads" else (0.2, 0.9)
    out = fake_run(600.0, slow=0.5, c=costs(0.2))
    trunk = [r for r in out.result.stages if r.kind == "blocks"]
    assert len(trunk) == 1 and "undone" in trunk[0].note  # top 3 is as deep as was measured: nothing to add


def test_trunk_stages_keep_batchnorm_on_its_running_statistics(fake_run):
    """The heads were trained on the frozen trunk's features (running statistics): a trunk stage that switched
    its BatchNorm to batch statistics would start far from that warm start."""
    fake_run(300.0, c=costs(0.2))
    configs = {("heads" if r.config.cache_features else "blocks"): r.config for r in FakeTrainer.runs}
    assert configs["blocks"].batchnorm_eval and not configs["heads"].batchnorm_eval


# -- the real trainer on a tiny model ------------------------------------------------------------------------

@pytest.mark.parametrize("batchnorm_eval", [True, False])
def test_batchnorm_eval_trains_the_layers_scale_and_shift_but_not_their_statistics(small_session, demo_data,
                                                                                    batchnorm_eval):
    from engine.training.trainer import Trainer

    data = replace(demo_data, train=demo_data.train[:16], val=demo_data.val[:4])
    session = small_session([HeadSpec("shape", labels=["circle", "square", "star", "triangle"])], freeze="none")
    bns = [m for m in session.model.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    stats = [m.running_mean.clone() for m in bns]
    weights = [m.weight.detach().clone() for m in bns]
    config = TrainConfig(epochs=1, batch_size=8, lr_trunk=1e-2, augment=False, num_workers=0, patience=0,
                         batchnorm_eval=batchnorm_eval)
    Trainer(session, data, config).run()
    assert any(not torch.equal(w, m.weight) for w, m in zip(weights, bns))  # scale and shift train either way
    assert all(torch.equal(s, m.running_mean) for s, m in zip(stats, bns)) is batchnorm_eval


@pytest.mark.slow
def test_a_budget_on_a_tiny_model_trains_its_stages_inside_the_time(small_session, demo_data):
    import time

    session = small_session([HeadSpec("shape", labels=["circle", "square", "star", "triangle"])])
    before = {k: v.clone() for k, v in session.model.heads.state_dict().items()}
    tiny = Costs(decode=0.001, decode_plain=0.001, trunk=0.002, head_step=1e-5, lower={1: 0.002, 2: 0.0015},
                 upper_step={1: 0.004, 2: 0.006}, upper_eval={1: 0.001, 2: 0.002})
    budget = 30.0
    events = []
    t0 = time.monotonic()
    runner = BudgetTrainer(session, demo_data, budget, base=TrainConfig(batch_size=16), costs=tiny,
                           on_event=events.append)
    result = runner.run()
    wall = time.monotonic() - t0
    assert wall <= budget * 1.1
    kinds = [r.kind for r in result.stages]
    assert kinds == ["heads", "blocks"]  # the finder's fixed cost is over a tenth of so short a budget
    trained = [r for r in result.stages if r.kind != "finder" and r.epochs_run > 0]
    assert trained and all(r.val_loss is not None and "shape" in r.metrics for r in trained)
    assert any(not torch.equal(before[k], v) for k, v in session.model.heads.state_dict().items())
    assert not session.model.trunk_trainable()  # the freeze settings are the session's again
    assert not session.model.lr_factors
    assert any(isinstance(e, EpochEvent) for e in events)


# -- blank labels and label smoothing -------------------------------------------------------------------------

def test_blank_labels_never_reach_a_loss_with_label_smoothing():
    heads = [HeadSpec("kind", labels=["a", "b", "c"]), HeadSpec("tags", kind="multi", labels=["x", "y"])]
    g = torch.Generator().manual_seed(0)
    kind = torch.randn(6, 3, generator=g, requires_grad=True)
    tags = torch.randn(6, 2, generator=g, requires_grad=True)
    targets = {"kind": torch.tensor([0, -1, 2, -1, 1, 0]),
               "tags": torch.tensor([[1, math.nan], [math.nan, math.nan], [0, 1], [1, 0], [math.nan, 1], [0, 0]])}
    loss = compute_losses(heads, {"kind": kind, "tags": tags}, targets, {}, smoothing=0.1)
    loss.total.backward()
    assert torch.all(kind.grad[[1, 3]] == 0)  # blank single labels: no gradient at all
    assert torch.all(tags.grad[1] == 0) and tags.grad[0, 1] == 0 and tags.grad[4, 0] == 0
    labelled = [0, 2, 4, 5]
    plain = torch.nn.functional.cross_entropy(kind[labelled].detach(), targets["kind"][labelled], label_smoothing=0.1)
    assert float(loss.per_head["kind"].detach()) == pytest.approx(float(plain), rel=1e-6)
    unsmoothed = compute_losses(heads, {"kind": kind.detach(), "tags": tags.detach()}, targets, {})
    assert float(unsmoothed.per_head["tags"]) == pytest.approx(float(loss.per_head["tags"]))  # multi: no smoothing
    assert float(unsmoothed.per_head["kind"]) != pytest.approx(float(loss.per_head["kind"]))


def test_settings_of_the_plan_are_checked():
    with pytest.raises(GraftError, match="smoothing"):
        TrainConfig(label_smoothing=1.0).validate()
    with pytest.raises(GraftError, match="augmentation policy"):
        TrainConfig(augment_policy="wild").validate()


# -- keeping the time when the views overrun ------------------------------------------------------------------

def test_with_a_trunk_stage_to_follow_the_heads_get_two_views_at_most_and_alone_more():
    plan = make_plan(600, costs(0.2), 1200, 300, BLOCKS)
    heads = next(s for s in plan.stages if s.kind == "heads")
    assert [s.kind for s in plan.stages][-1] == "blocks" and heads.views <= MAX_HEAD_VIEWS == 2
    alone = make_plan(600, costs(0.2), 1200, 300, [])  # a trunk without blocks: the heads are the plan
    assert [s.kind for s in alone.stages if s.kind != "finder"] == ["heads"]
    assert MAX_HEAD_VIEWS < alone.stages[-1].views <= MAX_HEAD_VIEWS_ALONE


def test_a_stage_whose_views_overran_still_runs_its_cheap_epochs_left(fake_run):
    out = fake_run(120.0, c=costs(0.2), slow_views={"heads": 4.0})
    heads = next(r for r in out.result.stages if r.kind == "heads")
    assert heads.seconds > heads.estimate * 2  # the views overran the stage's deadline
    assert heads.epochs_run == heads.epochs > 1  # the cheap epochs after them still ran
    texts = [e.text for e in out.events if isinstance(e, MessageEvent)]
    assert any("runs on past its deadline" in t for t in texts)
    assert out.seconds <= 120.0 * 1.1


def test_epochs_left_that_cost_more_than_the_grace_still_end_the_stage(fake_run):
    c = replace(costs(0.2), head_step=0.01)  # heads epochs of about a second each
    out = fake_run(120.0, c=c, slow_views={"heads": 4.0})
    heads = next(r for r in out.result.stages if r.kind == "heads")
    assert 1 <= heads.epochs_run < heads.epochs
    texts = [e.text for e in out.events if isinstance(e, MessageEvent)]
    assert not any("runs on past its deadline" in t for t in texts)


def test_a_stage_cut_at_its_deadline_corrects_the_pace_of_the_later_stages(fake_run):
    c = replace(costs(0.2), trunk=0.1, head_step=0.002)  # views dear, heads epochs dearer than the grace
    out = fake_run(300.0, c=c, slow_views={"heads": 3.0})
    n, v = len(out.data.train), len(out.data.val)
    heads = next(r for r in out.result.stages if r.kind == "heads")
    assert heads.reason == "stopped" and heads.epochs_run < heads.epochs
    pace = heads.seconds / heads_cost(c, n, v, heads.views, heads.epochs_run)
    assert pace > 1.5  # the stage ran slower than measured ...
    trunk = next(e.stage for e in out.events if isinstance(e, StageStarted) and e.stage.kind == "blocks")
    planned = blocks_cost(c, len(trunk.blocks), n, v, trunk.views, trunk.epochs)
    assert trunk.estimate == pytest.approx(planned * pace)  # ... and the trunk stage is planned at that pace


def test_the_plan_s_notes_come_once_with_the_plan_not_again_as_messages(fake_run):
    out = fake_run(300.0, c=costs(0.2))
    notes = out.result.plan.notes
    assert notes and all(n in out.result.plan.describe() for n in notes)  # shown before it runs
    texts = [e.text for e in out.events if isinstance(e, MessageEvent)]
    assert not any(n in t for n in notes for t in texts)


def test_heads_alone_take_only_the_views_that_end_in_time_at_half_the_measured_pace(fake_run):
    c = replace(costs(0.2), trunk=0.05, lower={}, upper_step={}, upper_eval={})  # no trunk stage to plan
    plan = make_plan(120.0, c, 288, 72, BLOCKS, spent=5.0)
    heads = plan.stages[-1]
    assert [s.kind for s in plan.stages if s.kind != "finder"] == ["heads"] and heads.views > 1
    assert 2 * heads.estimate <= usable_seconds(120.0, 5.0)
    out = fake_run(120.0, slow=2.0, c=c)  # the device at half the pace measured: the floor still trains
    trained = next(r for r in out.result.stages if r.kind == "heads")
    assert trained.epochs_run >= 1 and out.result.best_val_loss is not None


def test_dense_heads_are_refused_before_anything_is_measured_or_trained(small_session, demo_data):
    session = small_session([HeadSpec("shape", labels=["circle", "square", "star", "triangle"]),
                             HeadSpec("mask", "segment", labels=["bg", "fg"])])
    measured = []
    runner = BudgetTrainer(session, demo_data, 600.0, costs=None, trainer_factory=lambda *a: measured.append(a))
    with pytest.raises(GraftError, match="dense heads \\('mask'\\).*Start training"):
        runner.plan()
    assert runner.costs is None and not measured  # refused before the probe ran
