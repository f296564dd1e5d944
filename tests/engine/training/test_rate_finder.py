"""The learning-rate range test: its suggestion trains well, and nothing is learnt from it."""
from __future__ import annotations

import csv
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from engine.data.loading import load_data
from engine.errors import GraftError
from engine.network.loading import LoadedNetwork, ModelSource
from engine.network.preprocess import InputSpec
from engine.surgery.operations import AddHead, freeze_preset
from engine.surgery.session import Session
from engine.training.config import TrainConfig
from engine.training.events import StepEvent
from engine.training.rate_finder import RateFinder, find_rate, smooth, suggest
from engine.training.trainer import Trainer


@pytest.fixture(autouse=True, scope="module")
def one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    """A linearly separable problem: three classes of 8-pixel images by their mean colour (noisy)."""
    root = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(0)
    for name, rgb in {"red": (200, 60, 60), "green": (60, 200, 60), "blue": (60, 60, 200)}.items():
        (root / name).mkdir()
        for i in range(40):
            pixels = np.array(rgb) + rng.normal(0, 40, (1, 1, 3)) + rng.normal(0, 30, (8, 8, 3))
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name / f"{i}.png")
    return load_data(root)


def colour_session(data) -> Session:
    """A fixed random 1x1-conv trunk whose pooled features are the images' mixed mean colours."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    session = Session(LoadedNetwork(body, InputSpec(size=8, resize=8), ModelSource("file", "colours.pt")))
    for h in data.heads:
        session.do(AddHead(h, seed=0))
    session.do(freeze_preset("heads-only"))
    return session


def test_suggestion_lies_where_short_runs_train_best(colours):
    config = TrainConfig(batch_size=16, weight_decay=0.0)
    events = []
    result = find_rate(colour_session(colours), colours, config, events.append)
    assert result.cached_features and result.rule == "steepest"
    assert result.lrs[0] == pytest.approx(1e-7) and len(result.lrs) <= 100
    assert all(b > a for a, b in zip(result.lrs, result.lrs[1:]))  # the rate grows every step
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert [e.lr for e in steps] == pytest.approx(result.lrs)
    sweep = {}
    for lr in (1e-4, 1e-3, 1e-2, 1e-1, 1.0):
        run = Trainer(colour_session(colours), colours, replace(config, epochs=2, lr_heads=lr, warmup_epochs=0,
                                                                patience=0)).run()
        sweep[lr] = run.history[-1]["val_loss"]
    best = min(sweep, key=sweep.get)
    assert best / 10 <= result.suggestion <= best * 10, (result.suggestion, sweep)
    at_suggestion = Trainer(colour_session(colours), colours, replace(config, epochs=2, lr_heads=result.suggestion,
                                                                      warmup_epochs=0, patience=0)).run()
    assert at_suggestion.history[-1]["val_loss"] < sweep[1e-3] / 2  # far better than the default rate


def test_nothing_is_learnt(demo_data, small_session):
    """Weights, buffers (BatchNorm statistics, regression target statistics), specs and the random
    state are as before, with the trunk training too (image path)."""
    data = replace(demo_data, train=demo_data.train[:16], val=demo_data.val[:4])
    session = small_session(data.heads, arch="mobilenet_v3_small", freeze="none")
    before = {k: v.clone() for k, v in session.model.state_dict().items()}
    specs = [h.to_dict() for h in session.heads]
    rng = torch.get_rng_state()
    moved = []  # during the test the weights do change

    def on_event(event):
        if isinstance(event, StepEvent):
            moved.append(not torch.equal(session.model.trunk.body.features[0][0].weight, before[
                "trunk.body.features.0.0.weight"]))

    finder = RateFinder(session, data, TrainConfig(batch_size=8, augment=False, num_workers=0), on_event, steps=12)
    try:
        result = finder.find()
        assert not result.cached_features and len(result.lrs) >= 3
    except GraftError as exc:  # a random network's loss may not fall in 12 steps: restored all the same
        assert "did not fall" in str(exc)
    assert len(moved) >= 3 and all(moved)
    after = session.model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [h.to_dict() for h in session.heads] == specs and specs[2]["target_mean"] is None
    assert torch.equal(torch.get_rng_state(), rng)


def test_diverging_at_once_is_a_clear_error(colours):
    session = colour_session(colours)
    before = {k: v.clone() for k, v in session.model.state_dict().items()}
    with pytest.raises(GraftError, match="diverged at once"):
        find_rate(session, colours, TrainConfig(batch_size=16), start_lr=1e4, end_lr=1e9)
    assert all(torch.equal(v, session.model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(GraftError, match="at least 10 steps"):
        RateFinder(session, colours, steps=3)
    with pytest.raises(GraftError, match="grow from a positive start"):
        RateFinder(session, colours, start_lr=1.0, end_lr=0.1)


def test_smoothing_and_the_rule():
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # bias correction: no pull towards 0
    lrs = list(np.logspace(-6, 0, 61))
    x = np.log10(lrs)
    loss = list(2 - np.tanh(2 * (x + 3)) + np.where(x > -1, 30 * (x + 1) ** 2, 0))  # falls fastest at 1e-3
    index, rule = suggest(lrs, smooth(loss, beta=0.0))
    assert rule == "steepest" and lrs[index] == pytest.approx(1e-3)


def test_curve_files(colours, tmp_path):
    result = find_rate(colour_session(colours), colours, TrainConfig(batch_size=16), steps=30)
    png = result.write_png(tmp_path / "curve.png")
    with Image.open(png) as image:
        assert image.size == (720, 440)
        red = np.asarray(image.convert("RGB"))
        assert ((red[..., 0] > 200) & (red[..., 1] < 60)).sum() > 100  # the suggestion's red line
    with result.write_csv(tmp_path / "c.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(result.lrs) and sum(int(r["suggested"]) for r in rows) == 1
    assert float(rows[result.suggestion_index]["lr"]) == pytest.approx(result.suggestion, rel=1e-4)
