"""engine.training.features: augmented views of the cached features, and the feature cache spilling to disk.

A small random resnet18 at 32 px on a few demo images (conftest), PyTorch running the trunk (onnxruntime
off) so that the features the heads see can be compared with the trunk's own.
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.data.image_dataset import ImageDataset
from engine.errors import GraftError
from engine.training.config import TrainConfig
from engine.training.events import EpochEvent, MessageEvent, TrainStarted
from engine.training.features import SPILL_FOLDER, AugmentedViews, ram_budget_mb, view_choice
from engine.training.trainer import Trainer


@pytest.fixture(autouse=True)
def setup(monkeypatch, tmp_path, one_torch_thread):
    monkeypatch.setenv("GRAFT_ONNXRUNTIME", "off")
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("GRAFT_FEATURE_RAM_MB", raising=False)


@pytest.fixture
def data(demo_data):
    return replace(demo_data, train=demo_data.train[:12], val=demo_data.val[:6])


def config(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=4, num_workers=0, patience=None, seed=3)
    return TrainConfig(**{**base, **kw})


def spill_files(tmp_path):
    folder = tmp_path / "cache" / SPILL_FOLDER
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_views_differ_from_each_other_and_the_plain_image_and_repeat_exactly(data, small_session):
    spec = small_session(data.heads).input_spec
    samples = data.train[:4]
    plain = ImageDataset(samples, data.heads, spec)
    views = AugmentedViews(ImageDataset(samples, data.heads, spec, augment=True), 3, seed=7)
    assert len(views) == 12
    state = torch.get_rng_state()
    for j in range(4):
        images = [views[v * 4 + j][0] for v in range(3)]
        for a in range(3):
            assert not torch.allclose(images[a], plain[j][0], atol=1e-3)
            for b in range(a):
                assert not torch.allclose(images[a], images[b], atol=1e-3)
        assert torch.equal(images[1], views[4 + j][0])  # the same view again: the same pixels
        assert torch.equal(views[8 + j][1]["shape"], plain[j][1]["shape"])  # and the image's own targets
    assert torch.equal(torch.get_rng_state(), state)  # the global random state is left alone
    other = AugmentedViews(ImageDataset(samples, data.heads, spec, augment=True), 3, seed=8)
    assert not torch.allclose(other[0][0], views[0][0], atol=1e-3)


def test_view_choice_is_seeded_per_epoch():
    first = view_choice(0, 1, 500, 4)
    assert first.shape == (500,) and int(first.min()) == 0 and int(first.max()) == 3
    assert torch.equal(first, view_choice(0, 1, 500, 4))
    assert not torch.equal(first, view_choice(0, 2, 500, 4))
    assert not torch.equal(first, view_choice(1, 1, 500, 4))


def test_each_epoch_trains_on_one_view_per_image_and_validates_on_the_plain_images(data, small_session):
    k = 3
    session = small_session(data.heads)
    model = session.model
    seen: list[tuple[bool, torch.Tensor]] = []
    forward_heads = model.forward_heads

    def recording(x):
        seen.append((model.heads.training, x.detach().clone()))
        return forward_heads(x)

    model.forward_heads = recording
    events = []
    cfg = config(augment_views=k)
    result = Trainer(session, data, cfg, events.append).run()
    started = next(e for e in events if isinstance(e, TrainStarted))
    assert started.cached_features and started.augmented and started.augment_views == k
    assert result.augment_views == k and result.epochs_run == 3 and not result.features_on_disk

    # what the trunk computes for every view and for the plain validation images
    model.forward_heads = forward_heads
    spec, n = session.input_spec, len(data.train)
    heads = session.heads
    views = AugmentedViews(ImageDataset(data.train, heads, spec, augment=True), k, cfg.seed)
    with torch.no_grad():
        table = model.trunk(torch.stack([views[i][0] for i in range(k * n)])).reshape(k, n, -1)
        val = model.trunk(torch.stack([img for img, _ in ImageDataset(data.val, heads, spec)]))
        plain = model.trunk(torch.stack([img for img, _ in ImageDataset(data.train, heads, spec)]))

    trained = [x for training, x in seen if training]
    validated = [x for training, x in seen if not training]
    per_epoch = n // cfg.batch_size
    assert len(trained) == 3 * per_epoch
    picks = []
    for epoch in range(1, 4):
        rows = torch.cat(trained[(epoch - 1) * per_epoch:epoch * per_epoch])
        distance = torch.cdist(rows, table.reshape(k * n, -1))
        match = distance.argmin(dim=1)
        # the same features up to batch-size rounding (0.004 at most, against 3+ between different views)
        assert float(distance.min(dim=1).values.max()) < 0.05
        view, image = match // n, match % n
        assert sorted(image.tolist()) == list(range(n))  # every training image once
        expected = view_choice(cfg.seed, epoch, n, k)
        assert torch.equal(view, expected[image])
        assert torch.cdist(rows, plain).min() > 0.5  # never the plain image
        picks.append(expected)
    assert not torch.equal(picks[0], picks[1]) or not torch.equal(picks[1], picks[2])
    for x in validated:
        assert torch.allclose(x, val, atol=1e-3)  # validation: the plain features, in order


def test_views_are_reproducible_and_change_what_is_learnt(data, small_session):
    weights = []
    for views in (2, 2, 0):
        session = small_session(data.heads)
        Trainer(session, data, config(augment_views=views)).run()
        weights.append(session.model.heads.state_dict())
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name])
    assert any(not torch.equal(v, weights[2][k]) for k, v in weights[0].items())


@pytest.mark.parametrize("views", [-1, True, 2.5, "4"])
def test_a_bad_number_of_views_is_refused_before_training(data, small_session, views):
    session = small_session(data.heads)
    before = {k: v.clone() for k, v in session.model.state_dict().items()}
    events = []
    with pytest.raises(GraftError, match="Augmented views must be a whole number"):
        Trainer(session, data, config(augment_views=views), events.append).run()
    assert not events
    assert all(torch.equal(v, session.model.state_dict()[k]) for k, v in before.items())


@pytest.mark.parametrize("freeze, kw, why", [
    ("none", {}, "part of the trunk trains"),
    ("heads-only", {"augment": False}, "augmentation is switched off"),
    ("heads-only", {"cache_features": False}, "feature caching is switched off"),
])
def test_views_that_do_not_apply_are_left_out_with_a_note(data, small_session, freeze, kw, why):
    session = small_session(data.heads, freeze=freeze)
    events = []
    result = Trainer(session, data, config(epochs=1, augment_views=4, **kw), events.append).run()
    notes = [e.text for e in events if isinstance(e, MessageEvent)]
    assert any("apply to a frozen trunk only" in t and why in t for t in notes), notes
    started = next(e for e in events if isinstance(e, TrainStarted))
    assert started.augment_views == 0 and result.augment_views == 0


# -- more features than memory ------------------------------------------------------------------------

@pytest.mark.parametrize("views", [0, 2])
def test_a_tiny_budget_spills_to_disk_and_trains_the_same_weights(data, small_session, tmp_path, views):
    weights, files_during = {}, []
    for budget in (None, 0.001):
        session = small_session(data.heads)
        events = []

        def on_event(event, events=events):
            events.append(event)
            if isinstance(event, EpochEvent):
                files_during.append(len(spill_files(tmp_path)))

        result = Trainer(session, data, config(augment_views=views, feature_ram_budget_mb=budget), on_event).run()
        assert result.features_on_disk is (budget is not None)
        weights[budget] = session.model.heads.state_dict()
        if budget is not None:
            assert any("memory-mapped file" in e.text for e in events if isinstance(e, MessageEvent))
    assert files_during == [0, 0, 0, 2, 2, 2]  # training and validation features, on disk while training runs
    assert spill_files(tmp_path) == []  # and removed at the end
    for name, value in weights[None].items():
        assert torch.equal(value, weights[0.001][name]), name


def test_the_spill_file_is_removed_after_an_error_and_a_stop(data, small_session, tmp_path):
    session = small_session(data.heads)

    def fail(event):
        if isinstance(event, EpochEvent):
            assert len(spill_files(tmp_path)) == 2
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        Trainer(session, data, config(feature_ram_budget_mb=0.001), fail).run()
    assert spill_files(tmp_path) == []

    trainer = Trainer(small_session(data.heads), data, config(feature_ram_budget_mb=0.001))
    trainer.on_event = lambda e: trainer.stop() if isinstance(e, EpochEvent) else None
    assert trainer.run().reason == "stopped"
    assert spill_files(tmp_path) == []


def test_a_file_left_by_a_dead_process_is_cleared(data, small_session, tmp_path):
    folder = tmp_path / "cache" / SPILL_FOLDER
    folder.mkdir(parents=True)
    stale = folder / "features-999999999-x.f32"
    stale.write_bytes(b"\0" * 64)
    Trainer(small_session(data.heads), data, config(epochs=1, feature_ram_budget_mb=0.001)).run()
    assert spill_files(tmp_path) == []


def test_the_budget_setting_and_its_environment_variable(monkeypatch, data, small_session):
    assert ram_budget_mb(None) == 1024.0 and ram_budget_mb(5) == 5.0
    monkeypatch.setenv("GRAFT_FEATURE_RAM_MB", "64")
    assert ram_budget_mb(None) == 64.0
    monkeypatch.setenv("GRAFT_FEATURE_RAM_MB", "lots")
    with pytest.raises(GraftError, match="GRAFT_FEATURE_RAM_MB='lots'"):
        ram_budget_mb(None)
    for bad in (0, -1.0, float("inf"), True):
        with pytest.raises(GraftError, match="RAM budget must be a positive number"):
            config(feature_ram_budget_mb=bad).validate()


def test_a_paused_run_with_views_resumes_to_the_uninterrupted_weights(data, small_session):
    whole = small_session(data.heads)
    Trainer(whole, data, config(augment_views=2)).run()
    part = small_session(data.heads)
    paused = Trainer(part, data, config(augment_views=2, pause_after=1)).run()
    assert paused.reason == "paused"
    with pytest.raises(GraftError, match="augment views"):
        Trainer(part, data, config(augment_views=3), resume=paused.checkpoint).run()
    Trainer(part, data, config(augment_views=2), resume=paused.checkpoint).run()
    for name, value in whole.model.heads.state_dict().items():
        assert torch.allclose(value, part.model.heads.state_dict()[name], atol=1e-6), name


def test_the_heads_epochs_on_a_cpu_run_on_one_thread_and_put_the_count_back(data, small_session):
    session = small_session(data.heads)
    threads = []
    torch.set_num_threads(2)  # one_torch_thread puts its own count back afterwards
    messages = []

    def on_event(event):
        if isinstance(event, EpochEvent):
            threads.append(torch.get_num_threads())
        elif isinstance(event, MessageEvent):
            messages.append(event.text)

    result = Trainer(session, data, config(augment_views=2), on_event).run()
    assert result.cached_features and threads == [1, 1, 1]
    assert torch.get_num_threads() == 2
    assert any("The heads train on 1 CPU thread" in m for m in messages)
