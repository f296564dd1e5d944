"""engine.training.trainer: multi-task training, cached features, stop, NaN handling, data checks, quality.

Kept fast for a 2-core CPU: the demo images (96 px) at 64 px input for the mechanics, a small random
network, and the frozen-trunk cached path wherever the test is not about the image path itself.
"""
from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import torch

from engine.data.loading import load_data
from engine.data.samples import DataSource, Sample
from engine.errors import GraftError
from engine.network.heads import HeadSpec
from engine.network.loading import load_network
from engine.network.preprocess import InputSpec
from engine.surgery.operations import AddHead, DeleteOutputLayer, freeze_preset
from engine.surgery.session import Session
from engine.training.binding import bind_heads
from engine.training.config import TrainConfig
from engine.training.evaluation import evaluate
from engine.training.events import (EpochEvent, MessageEvent, ProgressEvent, StepEvent, TrainFinished, TrainingError,
                                    TrainStarted)
from engine.training.metrics import better_epoch, selection_score
from engine.training.setup import lr_lambda
from engine.training.trainer import Trainer

SMALL = InputSpec(size=64, resize=64)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small convolutions gain little from a second thread, and on a busy 2-core machine two OpenMP
    threads spin against each other (10x slower); restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def demo_csv(demo_manifest):
    return demo_manifest()


@pytest.fixture(scope="module")
def demo(demo_csv):
    return load_data(demo_csv)


def subset(data: DataSource, n_train: int, n_val: int) -> DataSource:
    return replace(data, train=data.train[:n_train], val=data.val[:n_val])


def make_session(heads, arch="mobilenet_v3_small", freeze="heads-only", spec=SMALL, random_init=True) -> Session:
    torch.manual_seed(0)
    session = Session(load_network(arch, random_init=random_init))
    if spec is not None:
        session.model.input_spec = spec
    session.do(DeleteOutputLayer())
    for h in heads:
        session.do(AddHead(h, seed=0))
    session.do(freeze_preset(freeze))
    return session


class Recorder:
    def __init__(self, then=None):
        self.events = []
        self.then = then

    def __call__(self, event):
        self.events.append(event)
        if self.then is not None:
            self.then(event)

    def of(self, kind):
        return [e for e in self.events if isinstance(e, kind)]


def heads_state(session):
    return {k: v.clone() for k, v in session.model.heads.state_dict().items()}


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- multi-task -------------------------------------------------------------------------------------

@pytest.mark.slow
def test_multitask_run_on_the_demo_trains_every_head(demo):
    assert {h.kind for h in demo.heads} == {"single", "multi", "regression"}
    session = make_session(demo.heads, freeze="none")
    rec = Recorder()
    config = TrainConfig(epochs=4, batch_size=32, lr_heads=3e-3, lr_trunk=2e-3, augment=False, warmup_epochs=0.5,
                         patience=0, num_workers=0)
    result = Trainer(session, demo, config, rec).run()
    assert result.reason == "completed" and result.epochs_run == 4 and not result.cached_features
    epochs = rec.of(EpochEvent)
    assert len(epochs) == 4 and len(result.history) == 4
    for h in demo.heads:
        first, last = epochs[0].train_head_losses[h.name], epochs[-1].train_head_losses[h.name]
        assert last < first * 0.9, (h.name, first, last)
        assert epochs[-1].metrics[h.name], h.name  # validation metrics for every head
    assert "accuracy" in epochs[-1].metrics["shape"]
    assert "macro_f1" in epochs[-1].metrics["tags"] and "mae" in epochs[-1].metrics["size"]
    steps = rec.of(StepEvent)
    assert len(steps) == 4 * 9 and [s.step for s in steps] == list(range(1, 37))
    assert set(steps[0].head_losses) == {"shape", "tags", "size"}
    assert isinstance(rec.events[0], TrainStarted) and isinstance(rec.events[-1], TrainFinished)
    progress = rec.of(ProgressEvent)
    assert progress[-1].fraction == pytest.approx(1.0) and progress[-1].done_steps == 36
    # the model is back on the CPU, in eval mode, with the best epoch's weights
    assert not session.model.training
    assert all(p.device.type == "cpu" for p in session.model.parameters())
    # the best epoch validates best by the heads' metrics (accuracy, macro F1, -MAE/std averaged), not by the loss
    scores = [selection_score(session.heads, e.metrics) for e in epochs]
    assert scores[result.best_epoch - 1] == max(scores)
    assert result.best_val_loss == epochs[result.best_epoch - 1].val_loss


def test_evaluate_reports_every_head(demo):
    session = make_session(demo.heads)
    report = evaluate(session, subset(demo, 40, 20), batch_size=32, device="cpu")
    assert report.n_images == 60 and list(report.heads) == ["shape", "tags", "size"]
    shape = report.heads["shape"]
    assert shape.classes == ["circle", "square", "star", "triangle"]
    assert sum(map(sum, shape.confusion)) == shape.n and 0 < shape.n < 60  # missing labels left out
    assert len(report.heads["tags"].f1) == 3 and report.heads["size"].mae[0] is not None
    text = report.format()
    assert "shape" in text and "accuracy" in text and "macro F1" in text and "MAE" in text
    assert not session.model.training


# -- cached features ---------------------------------------------------------------------------------

@pytest.mark.parametrize("freeze, augment, cache, expected", [
    ("heads-only", "auto", "auto", (True, False)),
    ("none", "auto", "auto", (False, True)),
    ("heads-only", False, "auto", True),
    ("heads-only", True, "auto", False),
    ("none", False, "auto", False),
    ("heads-only", False, False, False),
    ("heads-only", True, True, True),
    ("none", False, True, False),
])
def test_cached_features_only_with_a_frozen_trunk(demo, freeze, augment, cache, expected):
    data = subset(demo, 8, 4)
    session = make_session(data.heads, freeze=freeze)
    rec = Recorder()
    config = TrainConfig(epochs=1, batch_size=8, augment=augment, cache_features=cache, num_workers=0)
    result = Trainer(session, data, config, rec).run()
    started = rec.of(TrainStarted)[0]
    if isinstance(expected, tuple):  # augment="auto": (features cached, images augmented)
        expected, augmented = expected
        assert started.augmented is augmented
    assert started.cached_features is expected and result.cached_features is expected


def test_cached_and_uncached_paths_agree(demo):
    data = subset(demo, 96, 48)
    results = {}
    for cache in ("auto", False):
        session = make_session(data.heads)
        config = TrainConfig(epochs=3, batch_size=16, augment=False, cache_features=cache, num_workers=0)
        results[cache] = Trainer(session, data, config).run()
    cached, plain = results["auto"], results[False]
    assert cached.cached_features and not plain.cached_features
    for a, b in zip(cached.history, plain.history):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3, abs=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-3, abs=1e-4)



def test_the_progress_bar_gives_the_caching_pass_its_share_of_many_epochs_then_goes_by_time(demo, monkeypatch):
    """Heads-only on cached features: the caching pass fills the bar only as far as its expected share of the
    whole run (many epochs: little of it), and once steps are timed the fraction is the time spent over the
    time spent plus the ETA, ending at 1."""
    monkeypatch.setattr(Trainer, "PROGRESS_INTERVAL", 0.0)
    data = subset(demo, 32, 16)
    session = make_session(data.heads)
    rec = Recorder()
    trainer = Trainer(session, data, TrainConfig(epochs=40, batch_size=16, augment=False, num_workers=0, patience=0), rec)
    result = trainer.run()
    assert result.cached_features
    progress = rec.of(ProgressEvent)
    caching = [p.fraction for p in progress if p.phase == "features"]
    share = 1.0 / (1.0 + Trainer.HEADS_EPOCH_COST * 40)
    assert caching and caching[-1] == pytest.approx(share) and share < 0.6  # not 0.9 of a 40-epoch run
    training = [p for p in progress if p.phase == "train" and p.done_steps > 0 and p.eta_seconds is not None]
    assert training and progress[-1].fraction == pytest.approx(1.0)
    midway = [p for p in training if p.done_steps < p.total_steps]
    assert midway and all(0.0 < p.fraction < 1.0 and p.eta_seconds > 0 for p in midway)
    # by time: the fraction left is the ETA over the time spent plus the ETA, so the two agree
    spent = [p.eta_seconds * p.fraction / (1.0 - p.fraction) for p in midway]  # the time spent they imply
    assert spent == sorted(spent)


# -- stop ---------------------------------------------------------------------------------------------

def test_stop_from_the_event_callback_keeps_the_best_weights(demo):
    data = subset(demo, 64, 32)
    session = make_session(data.heads)
    best = {}
    trainer = None

    def on_event(event):
        if isinstance(event, EpochEvent) and event.best:
            best["state"], best["epoch"] = heads_state(session), event.epoch
        if isinstance(event, StepEvent) and event.step == 10:  # epoch 3 (4 steps per epoch)
            trainer.stop()

    rec = Recorder(on_event)
    trainer = Trainer(session, data, TrainConfig(epochs=20, batch_size=16, augment=False, patience=0), rec)
    result = trainer.run()
    assert result.reason == "stopped"
    assert result.steps <= 11  # within one batch of the request
    assert result.epochs_run == 2 and result.best_epoch == best["epoch"]
    assert same_state(heads_state(session), best["state"])
    finished = rec.of(TrainFinished)[0]
    assert finished.reason == "stopped" and "epoch" in finished.message


def test_stop_from_another_thread(demo):
    data = subset(demo, 64, 16)
    session = make_session(data.heads, freeze="none")
    first_step = threading.Event()
    rec = Recorder(lambda e: first_step.set() if isinstance(e, StepEvent) else None)
    trainer = Trainer(session, data, TrainConfig(epochs=50, batch_size=8, num_workers=0), rec)
    out = {}
    thread = threading.Thread(target=lambda: out.setdefault("result", trainer.run()))
    thread.start()
    assert first_step.wait(60)
    trainer.stop()
    thread.join(60)
    assert not thread.is_alive()
    result = out["result"]
    assert result.reason == "stopped" and result.steps <= 4
    assert not session.model.training and all(p.device.type == "cpu" for p in session.model.parameters())


# -- failures -----------------------------------------------------------------------------------------

def test_nan_loss_stops_with_a_message_and_restores_the_best_weights(demo):
    data = subset(demo, 32, 16)
    session = make_session(data.heads)
    saved = {}

    def poison(event):
        if isinstance(event, EpochEvent) and event.epoch == 1:
            saved["state"] = heads_state(session)
            with torch.no_grad():
                session.model.heads["tags"][-1].weight.fill_(float("nan"))

    rec = Recorder(poison)
    with pytest.raises(TrainingError) as info:
        Trainer(session, data, TrainConfig(epochs=5, batch_size=16, augment=False), rec).run()
    message = str(info.value)
    assert "NaN" in message and "'tags'" in message and "learning rate" in message
    assert info.value.result.reason == "error" and info.value.result.best_epoch == 1
    assert isinstance(info.value, GraftError)
    finished = rec.of(TrainFinished)[0]
    assert finished.reason == "error" and finished.message == message
    assert same_state(heads_state(session), saved["state"])
    assert all(torch.isfinite(p).all() for p in session.model.parameters())


def test_divergence_with_a_huge_learning_rate_restores_the_weights_from_before(demo):
    data = subset(demo, 32, 8)
    heads = [h for h in data.heads if h.kind == "regression"]
    session = make_session(heads)
    before = heads_state(session)
    with pytest.raises(TrainingError, match="NaN or infinite"):
        Trainer(session, data, TrainConfig(epochs=3, batch_size=8, lr_heads=1e30, warmup_epochs=0,
                                           augment=False)).run()
    assert same_state(heads_state(session), before)


def test_out_of_memory_suggests_a_smaller_batch(demo, monkeypatch):
    data = subset(demo, 16, 4)
    session = make_session(data.heads)

    def boom(self, *args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "_step", boom)
    with pytest.raises(GraftError, match="smaller batch size"):
        Trainer(session, data, TrainConfig(epochs=1, batch_size=16, augment=False)).run()
    assert not session.model.training


def test_out_of_memory_names_the_phase_and_its_batch_size(demo, monkeypatch):
    """Feature caching and validation run in batches tied to --batch-size (twice it, no floor), so
    halving the setting is advice that works; the message says which phase failed at which batch."""
    from engine.training import image_training  # where the trainer makes its loaders

    data = subset(demo, 16, 8)
    sizes = []
    real_loader = image_training.make_loader
    monkeypatch.setattr(image_training, "make_loader", lambda *a, **k: sizes.append(k["batch_size"]) or real_loader(*a, **k))

    def boom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    session = make_session(data.heads)
    monkeypatch.setattr(session.model.trunk, "forward", boom)
    with pytest.raises(GraftError) as info:
        Trainer(session, data, TrainConfig(epochs=1, batch_size=4, augment=False)).run()
    assert sizes == [8]  # computing features: 2 x 4 (it used to be at least 64)
    assert "while computing features at batch size 8 (2x the batch size setting 4)" in str(info.value)
    assert "smaller batch size (e.g. 2)" in str(info.value)

    session = make_session(data.heads)
    real_heads = session.model.forward_heads

    def heads_fail_in_eval(features):
        if not session.model.heads.training:
            boom()
        return real_heads(features)

    monkeypatch.setattr(session.model, "forward_heads", heads_fail_in_eval)
    with pytest.raises(GraftError, match=r"while validating at batch size 32 \(8x the batch size setting 4\)"):
        Trainer(session, data, TrainConfig(epochs=1, batch_size=4, augment=False)).run()

    session = make_session(data.heads, freeze="none")
    real_forward = session.model.forward
    monkeypatch.setattr(session.model, "forward",
                        lambda images: boom() if not session.model.training else real_forward(images))
    with pytest.raises(GraftError, match=r"while validating at batch size 8 \(2x the batch size setting 4\)"):
        Trainer(session, data, TrainConfig(epochs=1, batch_size=4, augment=False, num_workers=0)).run()


# -- data checks before training ----------------------------------------------------------------------

def refused(session, data, match):
    before = {k: v.clone() for k, v in session.model.state_dict().items()}
    rec = Recorder()
    with pytest.raises(GraftError, match=match):
        Trainer(session, data, TrainConfig(epochs=1), rec).run()
    assert rec.events == []
    after = session.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bad_data_is_refused_before_training(demo):
    data = subset(demo, 16, 4)
    refused(make_session([]), data, "add a head first")
    refused(make_session([HeadSpec("colour", "single", labels=["a", "b"])]), data, "'colour' has no data")
    refused(make_session([HeadSpec("shape", "multi", labels=["circle", "square"])]), data, "single-label")
    refused(make_session([HeadSpec("shape", "single", labels=["circle", "square"])]), data, "star")
    refused(make_session([HeadSpec("tags", "multi", labels=["red", "blue"])]), data, "'blue'")
    # labelled in validation only
    unlabelled = [Sample(s.path, {**s.targets, "shape": -1}) for s in data.train]
    refused(make_session(data.heads), replace(data, train=unlabelled), "no labelled example")
    with pytest.raises(GraftError, match="CUDA"):
        if torch.cuda.is_available():
            raise GraftError("CUDA present: nothing to check")
        Trainer(make_session(data.heads), data, TrainConfig(epochs=1, device="cuda")).run()
    with pytest.raises(GraftError, match="Epochs"):
        Trainer(make_session(data.heads), data, TrainConfig(epochs=0)).run()


def test_a_class_only_in_validation(demo):
    """A fixed split (CSV column, folders) that leaves a class only in validation is refused before
    training; a random split that had to (too few examples) trains with a warning."""
    data = subset(demo, 24, 8)
    shape = data.head("shape")
    rare = next(s.targets["shape"] for s in data.val if s.targets["shape"] >= 0)
    leaky = replace(data, train=[s for s in data.train if s.targets["shape"] != rare], split_from="column")
    refused(make_session([shape]), leaky, f"class '{shape.labels[rare]}' of head 'shape' has examples only in "
                                           "validation \\(the split column\\)")
    refused(make_session([shape]), replace(leaky, split_from="folders"), "train/val folders")
    rec = Recorder()
    session = make_session([shape])
    random_split = replace(leaky, split_from="random", notes=["Column 'id' is not a head: it is blank."])
    result = Trainer(session, random_split, TrainConfig(epochs=1, batch_size=8, augment=False), rec).run()
    assert result.reason == "completed"
    messages = rec.of(MessageEvent)
    assert any(m.level == "warning" and f"'{shape.labels[rare]}'" in m.text and "never sees it" in m.text
               for m in messages), messages
    assert any(m.level == "info" and m.text == "Column 'id' is not a head: it is blank." for m in messages)


def test_class_names_are_mapped_to_the_heads_order(demo):
    head = HeadSpec("shape", "single", labels=["triangle", "star", "square", "circle", "hexagon"])
    tmap = bind_heads([head], demo)
    data_labels = demo.head("shape").labels  # circle, square, star, triangle
    mapped = tmap({"shape": torch.tensor([0, 1, 2, 3, -1])})["shape"].tolist()
    assert [head.labels[i] if i >= 0 else None for i in mapped] == data_labels + [None]
    tags = HeadSpec("tags", "multi", labels=["outlined", "red"])
    t = bind_heads([tags], demo)({"tags": torch.tensor([[1.0, 0.0, float("nan")]])})["tags"]
    assert torch.equal(torch.isnan(t), torch.tensor([[True, False]])) and t[0, 1] == 1.0
    # a reordered head still trains (on the cached path)
    data = subset(demo, 24, 8)
    session = make_session([head])
    result = Trainer(session, data, TrainConfig(epochs=1, batch_size=8, augment=False)).run()
    assert result.reason == "completed" and "accuracy" in result.history[0]["metrics"]["shape"]


def test_early_stopping_and_schedule():
    f = lr_lambda(4, 20)
    assert f(0) == pytest.approx(0.25) and f(3) == pytest.approx(1.0)
    assert f(4) == pytest.approx(1.0) and f(12) == pytest.approx(0.5) and f(19) < 0.02


def test_early_stopping_on_the_validation_result(demo):
    data = subset(demo, 32, 16)
    session = make_session(data.heads)
    # a learning rate this large makes the validation loss go up after the first epochs
    result = Trainer(session, data, TrainConfig(epochs=30, batch_size=8, lr_heads=0.5, warmup_epochs=0,
                                                augment=False, patience=2)).run()
    assert result.reason == "early_stopping"
    assert result.epochs_run == result.best_epoch + 2 < 30
    kept = result.history[result.best_epoch - 1]
    assert result.best_val_loss == kept["val_loss"]
    scores = [selection_score(session.heads, h["metrics"]) for h in result.history]
    for h, score in zip(result.history, scores):  # no epoch validates better by the metric, then the loss
        assert not better_epoch(score, h["val_loss"], scores[result.best_epoch - 1], kept["val_loss"])


def test_messages_for_unused_data_heads(demo):
    data = subset(demo, 16, 4)
    session = make_session([data.head("shape")])
    rec = Recorder()
    Trainer(session, data, TrainConfig(epochs=1, batch_size=8, augment=False), rec).run()
    assert any("tags" in m.text and "size" in m.text for m in rec.of(MessageEvent))


def test_without_validation_data_with_loader_workers(demo):
    data = replace(subset(demo, 24, 0), val=[])
    session = make_session(data.heads)
    rec = Recorder()
    result = Trainer(session, data, TrainConfig(epochs=2, batch_size=8, num_workers=1, augment=True), rec).run()
    assert result.reason == "completed" and result.best_val_loss is None and result.epochs_run == 2
    assert rec.of(TrainStarted)[0].num_workers == 1 and not result.cached_features
    assert any(m.level == "warning" and "No validation data" in m.text for m in rec.of(MessageEvent))
    assert "final weights" in result.message and rec.of(EpochEvent)[-1].val_loss is None


# -- quality --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_pretrained_trunk_beats_a_random_one(demo):
    """The bundled ImageNet weights carry over: the same frozen-trunk head on the demo shapes (at their
    own 96 px) learns far better on the pretrained EfficientNet-Lite0 than on a random one."""
    shape = demo.head("shape")
    accuracy = {}
    for random_init in (False, True):
        session = make_session([shape], arch="default", random_init=random_init, spec=None)
        session.model.input_spec = replace(session.input_spec, size=96, resize=96)
        config = TrainConfig(epochs=15, lr_heads=3e-3, augment=False, patience=0)
        result = Trainer(session, demo, config).run()
        assert result.cached_features
        accuracy[random_init] = result.history[result.best_epoch - 1]["metrics"]["shape"]["accuracy"]
    assert accuracy[False] >= 0.8, accuracy
    assert accuracy[False] >= accuracy[True] + 0.3, accuracy


def test_automatic_loader_workers(monkeypatch):
    from engine.training import loaders as training

    monkeypatch.setattr(training.os, "sched_getaffinity", lambda _: set(range(2)), raising=False)
    assert training.auto_num_workers(1000, 32, device="cuda") == 1
    assert training.auto_num_workers(1000, 32, device="cpu") == 0  # would compete with torch's threads
    assert training.auto_num_workers(40, 32, device="cuda") == 0  # tiny: not worth starting processes
    assert training.auto_num_workers(1000, 32, requested=3, device="cpu") == 3
    monkeypatch.setattr(training.os, "sched_getaffinity", lambda _: set(range(16)), raising=False)
    assert training.auto_num_workers(1000, 32, device="cuda") == 4
    assert training.auto_num_workers(1000, 32, device="cpu") == 2
