"""Regression targets are standardised: the head predicts z, outputs z * std + mean (the user's units),
and the loss is the squared error on the standardised scale, with the statistics of the training split.

Fast on a CPU: a parameter-free trunk (the channel means of tiny grey images) trains on cached
features; the project round trip uses a random ResNet-18 at 32 px.
"""
from __future__ import annotations

import json
import math
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from engine.data.samples import DataSource, Sample
from engine.errors import GraftError
from engine.network.graft_model import RegressionHead
from engine.network.graft_model import build_head
from engine.network.heads import HeadSpec
from engine.network.loading import LoadedNetwork, ModelSource, load_network
from engine.network.preprocess import InputSpec
from engine.project.project_file import open_project, save_project
from engine.surgery.operations import AddHead, DeleteOutputLayer, UpdateHead, freeze_preset
from engine.surgery.session import Session
from engine.training.binding import bind_heads, target_statistics
from engine.training.config import TrainConfig
from engine.training.evaluation import evaluate
from engine.training.events import TrainingError
from engine.training.losses import compute_losses, head_loss, target_scales
from engine.training.trainer import Trainer

NAN = float("nan")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def grey_images(folder, n: int, seed: int = 0) -> list[tuple[object, float]]:
    """``n`` 12x12 grey images; returns (path, x) with x = grey level mapped to [-1, 1]."""
    rng = np.random.default_rng(seed)
    out = []
    for i, level in enumerate(rng.integers(0, 256, n)):
        path = folder / f"{i:03d}.png"
        Image.fromarray(np.full((12, 12, 3), level, dtype=np.uint8)).save(path)
        out.append((path, float(level) / 255.0 * 2.0 - 1.0))
    return out


def value_head() -> HeadSpec:
    return HeadSpec("value", "regression", labels=["value"], columns=["value"])


def source(train, val) -> DataSource:
    """``train``/``val``: (path, target) pairs (target NaN = missing)."""
    def samples(pairs):
        return [Sample(p, {"value": [float(np.float32(t))]}) for p, t in pairs]
    return DataSource("csv", train[0][0].parent, [value_head()], samples(train), samples(val))


def mean_channel_session() -> Session:
    """A trunk without parameters: its features are the normalised channel means (linear in the grey level)."""
    body = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    network = LoadedNetwork(body.eval(), InputSpec(size=12, resize=12),
                            ModelSource("file", "/x/means.pt", format="pickle"))
    session = Session(network)
    session.do(AddHead(value_head(), seed=0))
    return session


def constant_mean_mae(data: DataSource) -> float:
    train = [s.targets["value"][0] for s in data.train if not math.isnan(s.targets["value"][0])]
    val = [s.targets["value"][0] for s in data.val if not math.isnan(s.targets["value"][0])]
    mean = sum(train) / len(train)
    return sum(abs(v - mean) for v in val) / len(val)


# -- learning large-valued targets ------------------------------------------------------------------

def test_targets_in_the_thousands_beat_the_constant_mean(tmp_path):
    images = grey_images(tmp_path, 160)
    pairs = [(p, 1000.0 + 300.0 * x) for p, x in images]
    pairs = [(p, NAN if i % 7 == 3 else t) for i, (p, t) in enumerate(pairs)]  # some labels missing
    data = source(pairs[:128], pairs[128:])
    session = mean_channel_session()
    result = Trainer(session, data, TrainConfig(epochs=30, batch_size=16, lr_heads=1e-2, patience=0,
                                                warmup_epochs=1, augment=False, device="cpu")).run()
    assert result.reason == "completed" and result.cached_features
    baseline = constant_mean_mae(data)
    assert 100 < baseline < 200  # x is uniform on [-1, 1]: about 300 / 2
    mae = evaluate(session, data, split="val", device="cpu").heads["value"].mae[0]
    assert mae < 0.1 * baseline, (mae, baseline)
    # the loss was on the standardised scale: the last epoch's training loss is a small fraction of 1
    assert result.history[-1]["train_loss"] < 0.05
    spec = session.heads[0]
    assert spec.target_mean[0] == pytest.approx(1000, abs=60) and spec.target_std[0] == pytest.approx(173, rel=0.15)
    # outputs are in the user's units
    session.model.eval()
    with torch.no_grad():
        out = session.model(torch.zeros(2, 3, 12, 12))["value"]
    assert 500 < float(out[0, 0]) < 1500


def test_a_failed_run_leaves_the_head_without_statistics(tmp_path):
    pairs = [(p, 1000.0 + 300.0 * x) for p, x in grey_images(tmp_path, 24)]
    data = source(pairs[:16], pairs[16:])
    session = mean_channel_session()
    before = {k: v.clone() for k, v in session.model.heads.state_dict().items()}
    with pytest.raises(TrainingError, match="NaN or infinite"):
        Trainer(session, data, TrainConfig(epochs=3, batch_size=8, lr_heads=1e30, warmup_epochs=0,
                                           augment=False, device="cpu")).run()
    after = session.model.heads.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert session.heads[0].target_mean is None and session.heads[0].target_std is None


# -- statistics: training split only, saved and restored -------------------------------------------

def resnet_session(spec: HeadSpec) -> Session:
    torch.manual_seed(0)
    session = Session(load_network("resnet18", random_init=True))
    session.model.input_spec = InputSpec(size=32, resize=32)
    session.do(DeleteOutputLayer())
    session.do(AddHead(spec, seed=0))
    session.do(freeze_preset("heads-only"))
    return session


def test_statistics_come_from_the_training_split_and_survive_a_project(tmp_path):
    images = grey_images(tmp_path, 40, seed=1)
    train_targets = [10.0, 20.0, NAN, 40.0, 70.0, NAN, 15.0, 33.0] * 4
    train = [(p, t) for (p, _), t in zip(images[:32], train_targets)]
    val = [(p, 5000.0 + i) for i, (p, _) in enumerate(images[32:])]  # far off: must not count
    data = source(train, val)
    labelled = np.array([t for t in train_targets if not math.isnan(t)], dtype=np.float64)
    mean, std, n = target_statistics(data.train, bind_heads([value_head()], data).bindings[0])
    assert n == len(labelled) == 24
    assert mean == [float(np.float32(labelled.mean()))] and std == [float(np.float32(labelled.std()))]

    spec = value_head()
    session = resnet_session(spec)
    assert session.heads[0].target_mean is None  # a new head has none until it trains
    Trainer(session, data, TrainConfig(epochs=1, batch_size=8, augment=False, device="cpu")).run()
    head = session.heads[0]
    assert head.target_mean == mean and head.target_std == std
    assert spec.target_mean is None  # the caller's spec is not changed behind its back
    module = session.model.heads["value"]
    assert module.target_stats() == (mean, std)

    path = save_project(session, tmp_path / "scaled.graft")
    with zipfile.ZipFile(path) as zf:
        recipe = json.loads(zf.read("recipe.json"))
    assert recipe["heads"][0]["target_mean"] == mean and recipe["heads"][0]["target_std"] == std
    again = open_project(path)
    assert again.heads[0].to_dict() == head.to_dict()
    x = torch.randn(3, 3, 32, 32)
    session.model.eval()
    again.model.eval()
    with torch.no_grad():
        assert torch.equal(session.model(x)["value"], again.model(x)["value"])
    assert again.model.heads["value"].target_stats() == (mean, std)

    # training again, on other data, keeps the statistics the head was trained with
    doubled = source([(p, t * 2) for p, t in train], val)
    Trainer(again, doubled, TrainConfig(epochs=1, batch_size=8, augment=False, device="cpu")).run()
    assert again.heads[0].target_mean == mean and again.model.heads["value"].target_stats() == (mean, std)


def strip_statistics(path, out):
    """``path`` as a project saved before regression heads had target statistics."""
    from safetensors.torch import load, save

    with zipfile.ZipFile(path) as zf:
        recipe = json.loads(zf.read("recipe.json"))
        weights = load(zf.read("weights.safetensors"))
    for spec in recipe["heads"] + [op["spec"] for op in recipe["operations"] if "spec" in op]:
        spec.pop("target_mean", None)
        spec.pop("target_std", None)
    weights = {k: v for k, v in weights.items() if "target_" not in k}
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("recipe.json", json.dumps(recipe))
        zf.writestr("weights.safetensors", save(weights))
    return out


def test_a_project_from_before_statistics_opens_and_keeps_its_raw_scale(tmp_path):
    session = resnet_session(value_head())
    with torch.no_grad():  # weights of a head trained on raw targets
        session.model.heads["value"][-1].bias.fill_(55.0)
    old = strip_statistics(save_project(session, tmp_path / "new.graft"), tmp_path / "old.graft")
    with zipfile.ZipFile(old) as zf:
        assert "target_" not in zf.read("recipe.json").decode()
    again = open_project(old)
    x = torch.randn(2, 3, 32, 32)
    session.model.eval()
    again.model.eval()
    with torch.no_grad():
        assert torch.equal(session.model(x)["value"], again.model(x)["value"])
    # stated outright, so training again does not rescale weights that were trained on raw values
    assert again.heads[0].target_mean == [0.0] and again.heads[0].target_std == [1.0]
    pairs = [(p, 1000.0 + 300.0 * v) for p, v in grey_images(tmp_path, 16)]
    Trainer(again, source(pairs[:12], pairs[12:]), TrainConfig(epochs=1, batch_size=4, augment=False,
                                                               device="cpu")).run()
    assert again.model.heads["value"].target_stats() == ([0.0], [1.0])


def test_editing_a_head_keeps_its_statistics_with_its_weights(tmp_path):
    session = mean_channel_session()
    trained = HeadSpec("value", "regression", labels=["value"], target_mean=[1000.0], target_std=[300.0])
    session.do(UpdateHead("value", trained))
    session.model.heads["value"].set_target_stats([1000.0], [300.0])
    # a new loss weight keeps the weights, so the statistics too (the dialog's spec has none)
    session.do(UpdateHead("value", HeadSpec("value", "regression", labels=["value"], loss_weight=2.0)))
    assert session.heads[0].target_mean == [1000.0] and session.heads[0].target_std == [300.0]
    # a new shape means fresh weights: the statistics come from the next training
    session.do(UpdateHead("value", HeadSpec("value", "regression", labels=["value"], hidden=[8])))
    assert session.heads[0].target_mean is None
    assert session.model.heads["value"].is_identity()


# -- the head module and the loss -------------------------------------------------------------------

def test_the_head_outputs_z_times_std_plus_mean():
    spec = HeadSpec("size", "regression", labels=["w", "h"], target_mean=[1000.0, -5.0], target_std=[300.0, 0.5])
    torch.manual_seed(0)
    head = build_head(spec, 4)
    assert isinstance(head, RegressionHead) and isinstance(head[-1], nn.Linear)
    x = torch.randn(6, 4)
    z = head[-1](x)
    assert torch.allclose(head(x), z * torch.tensor([300.0, 0.5]) + torch.tensor([1000.0, -5.0]))
    assert set(head.state_dict()) == {"0.weight", "0.bias", "target_mean", "target_std"}
    plain = build_head(HeadSpec("size", "regression", outputs=2), 4)
    assert plain.is_identity()
    assert type(build_head(HeadSpec("kind", "single", outputs=3), 4)) is nn.Sequential  # others unchanged


def test_regression_loss_is_invariant_to_the_targets_units():
    torch.manual_seed(0)
    out = torch.randn(8, 2)
    target = torch.randn(8, 2)
    target[1, 0] = target[5, 1] = NAN  # missing entries stay out
    std = torch.tensor([2.0, 0.5])
    loss = head_loss("regression", out, target, std)
    scaled = head_loss("regression", out * 100, target * 100, std * 100)
    assert float(scaled) == pytest.approx(float(loss), rel=1e-5)
    valid = ~torch.isnan(target)
    expected = (((out - target) / std)[valid] ** 2).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    # without a scale the raw squared error grows with the units: 10^4 times here
    assert float(head_loss("regression", out * 100, target * 100)) == pytest.approx(1e4 * float(
        head_loss("regression", out, target)), rel=1e-4)
    # compute_losses takes the std from the head modules, else from the specs
    spec = HeadSpec("size", "regression", outputs=2, target_mean=[0.0, 0.0], target_std=[2.0, 0.5])
    from_spec = compute_losses([spec], {"size": out}, {"size": target}).per_head["size"]
    heads = nn.ModuleDict({"size": build_head(spec, 3)})
    from_module = compute_losses([spec], {"size": out}, {"size": target}, target_scales(heads)).per_head["size"]
    assert float(from_spec) == float(from_module) == pytest.approx(float(loss), rel=1e-6)


def test_target_statistics_are_validated():
    ok = HeadSpec("v", "regression", outputs=2, target_mean=[1, 2], target_std=[3, 4])
    assert ok.target_mean == [1.0, 2.0] and HeadSpec.from_dict(ok.to_dict()) == ok
    for mean, std, match in (([1.0], [1.0, 1.0], "one number per output"),
                             ([1.0, 2.0], [1.0, 0.0], "positive"),
                             ([1.0, 2.0], [1.0, -1.0], "positive"),
                             ([1.0, math.inf], [1.0, 1.0], "finite"),
                             ([1.0, 2.0], [1.0, math.nan], "finite"),
                             ([1.0, 2.0], None, "both"),
                             (["a", 2.0], [1.0, 1.0], "list of numbers")):
        with pytest.raises(GraftError, match=match):
            HeadSpec("v", "regression", outputs=2, target_mean=mean, target_std=std)
    with pytest.raises(GraftError, match="only regression"):
        HeadSpec("c", "single", outputs=2, target_mean=[0.0, 0.0], target_std=[1.0, 1.0])
    with pytest.raises(GraftError, match="positive"):
        ok.set_target_stats([0.0, 0.0], [1.0, 0.0])
    assert ok.target_std == [3.0, 4.0]  # a refused change changes nothing


def test_constant_and_unlabelled_targets_get_std_one(tmp_path):
    images = grey_images(tmp_path, 6)
    spec = HeadSpec("value", "regression", labels=["a", "b", "c"], columns=["a", "b", "c"])
    samples = [Sample(p, {"value": [7.0, NAN, float(i)]}) for i, (p, _) in enumerate(images)]
    data = DataSource("csv", tmp_path, [spec], samples, [])
    mean, std, n = target_statistics(samples, bind_heads([spec], data).bindings[0])
    assert mean[:2] == [7.0, 0.0] and std[:2] == [1.0, 1.0] and n == 6
    assert mean[2] == pytest.approx(2.5) and std[2] == pytest.approx(np.std(range(6)))


def test_exported_onnx_carries_the_scaling(tmp_path):
    pytest.importorskip("onnxruntime")
    from engine.export.onnx_export import export_onnx
    from engine.export.metadata import OnnxPredictor

    session = mean_channel_session()
    session.do(UpdateHead("value", HeadSpec("value", "regression", labels=["value"], target_mean=[1000.0],
                                            target_std=[300.0])))
    session.model.heads["value"].set_target_stats([1000.0], [300.0])
    report = export_onnx(session, tmp_path / "v.onnx")
    assert report.max_diff <= report.allowed("value")
    image = grey_images(tmp_path, 1)[0][0]
    got = OnnxPredictor(tmp_path / "v.onnx").predict_files([image])[0]["value"].values
    session.model.eval()
    from engine.export.inference import predict_files

    ours = predict_files(session, [image])[0]["value"].values
    assert 500 < float(ours[0]) < 1500 and np.abs(np.asarray(got) - np.asarray(ours)).max() < 1e-2
