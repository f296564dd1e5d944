"""engine.runtime.onnx_trunk: a frozen trunk in onnxruntime gives PyTorch's features, falls back to PyTorch
with a note when it does not convert or match, and is converted again after any change to the trunk."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from engine.data.loading import load_data
from engine.export.inference import predict_arrays, predict_files
from engine.network.heads import HeadSpec
from engine.network.loading import LoadedNetwork, ModelSource, load_network
from engine.network.preprocess import InputSpec
from engine.runtime import onnx_trunk
from engine.runtime.onnx_convert import allowed_diff, max_abs_diff, output_scale
from engine.runtime.onnx_trunk import cached_conversion, trunk_fingerprint, trunk_runner
from engine.surgery.operations import AddHead, CutAt, DeleteOutputLayer, freeze_preset
from engine.surgery.session import Session
from engine.training.config import TrainConfig
from engine.training.evaluation import evaluate
from engine.training.trainer import Trainer

TOL = 1e-5  # the bar for features (relative beyond ±1, as the export check's rule)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def frozen(network: LoadedNetwork, size: int | None = None, delete_output: bool = True) -> Session:
    session = Session(network)
    if size is not None:
        session.model.input_spec = InputSpec(size=size, resize=size)
    if delete_output:
        session.do(DeleteOutputLayer())
    session.do(freeze_preset("heads-only"))
    return session


def assert_same_features(session: Session, batch: torch.Tensor) -> float:
    runner, note = trunk_runner(session.model, "cpu", min_images=0)
    assert runner is not None, note
    assert runner.backend == "onnxruntime" and "runs in onnxruntime" in note
    session.model.eval()
    with torch.inference_mode():
        ref = session.model.trunk(batch).numpy()
    got = runner(batch).numpy()
    assert got.shape == ref.shape and got.dtype == np.float32
    diff = max_abs_diff(ref, got)
    assert diff <= allowed_diff(TOL, output_scale(ref)), (diff, output_scale(ref))
    return diff


def random_batch(n: int, size: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32))


@pytest.mark.parametrize("arch", ["default", "mobilenet_v3_small", "resnet18"])
@pytest.mark.slow
def test_features_from_onnxruntime_equal_pytorchs(arch):
    torch.manual_seed(0)
    session = frozen(load_network(arch, random_init=arch != "default"), size=None if arch == "default" else 96)
    assert_same_features(session, random_batch(5, session.input_spec.size))


def test_a_cut_trunk_converts_too(mobilenet_session):
    session = mobilenet_session
    session.model.input_spec = InputSpec(size=64, resize=64)
    session.do(CutAt("features.6"))
    session.do(freeze_preset("heads-only"))
    assert_same_features(session, random_batch(3, 64))


class ErfGate(nn.Module):
    """An op the TorchScript exporter cannot convert (aten::erfinv)."""

    def forward(self, x):
        return x * torch.special.erfinv(torch.sigmoid(x) * 0.5)


def tiny(middle: nn.Module) -> Session:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), middle, nn.AdaptiveAvgPool2d(1), nn.Flatten())
    return frozen(LoadedNetwork(body.eval(), InputSpec(size=32, resize=32), ModelSource("file", "/x/tiny.pt",
                                                                                         format="pickle")),
                  delete_output=False)


def test_a_trunk_that_does_not_convert_runs_in_pytorch_with_a_note(capfd):
    session = tiny(ErfGate())
    runner, note = trunk_runner(session.model, "cpu", min_images=0)
    assert runner is None
    assert note.startswith("the trunk runs in PyTorch: it does not convert to ONNX") and "erfinv" in note
    printed = capfd.readouterr()
    assert printed.out == printed.err == "", "the exporter's own output is kept quiet"
    # training still works, through PyTorch, and says why
    session.do(AddHead(HeadSpec("shape", labels=["a", "b"]), seed=0))
    rng = np.random.default_rng(0)
    batch = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    session.model.eval()
    with torch.inference_mode():
        expected = session.model(torch.from_numpy(batch))["shape"].numpy()
    assert np.array_equal(predict_arrays(session, batch)["shape"], expected)
    assert trunk_runner(session.model, "cpu", min_images=0) == (None, note), "a failed state is not retried"


def test_a_conversion_that_does_not_match_pytorch_is_rejected(monkeypatch):
    import onnxruntime as ort

    real = ort.InferenceSession.run

    def skewed(self, names, feeds, *args, **kwargs):
        return [o + 0.01 for o in real(self, names, feeds, *args, **kwargs)]

    monkeypatch.setattr(ort.InferenceSession, "run", skewed)
    runner, note = trunk_runner(tiny(nn.Identity()).model, "cpu", min_images=0)
    assert runner is None
    assert note.startswith("the trunk runs in PyTorch: its ONNX conversion was rejected (output 'features' "
                           "differs from PyTorch by 0.01")


def test_surgery_or_new_weights_after_caching_convert_again(mobilenet_session):
    session = mobilenet_session
    session.model.input_spec = InputSpec(size=64, resize=64)
    session.do(DeleteOutputLayer())
    session.do(freeze_preset("heads-only"))
    batch = random_batch(3, 64)
    first, _ = trunk_runner(session.model, "cpu", min_images=0)
    before = first(batch)
    assert cached_conversion(session.model) is first.conversion
    again, _ = trunk_runner(session.model, "cpu", images=1)
    assert again.conversion is first.conversion, "the same state is converted once (and used for one image)"

    session.do(CutAt("features.8"))
    assert cached_conversion(session.model) is None, "a surgery invalidates the converted trunk"
    assert trunk_runner(session.model, "cpu", images=1) == (None, None), "a single image does not wait for it"
    assert_same_features(session, batch)
    after = cached_conversion(session.model)
    assert after is not None and after is not first.conversion
    assert trunk_runner(session.model, "cpu", images=1)[0](batch).shape != before.shape, "the cut trunk's features"

    session.history.undo()
    assert cached_conversion(session.model) is None, "the cache keeps the latest state only"
    assert_same_features(session, batch)

    with torch.no_grad():  # what an optimizer step or load_state_dict does to a weight
        next(session.model.trunk.parameters()).mul_(1.5)
    assert cached_conversion(session.model) is None
    assert_same_features(session, batch)


def test_fingerprint_changes_with_weights_and_structure_not_with_freezing(mobilenet_session):
    trunk = mobilenet_session.model.trunk
    fp = trunk_fingerprint(trunk)
    for p in trunk.parameters():
        p.requires_grad_(False)
    assert trunk_fingerprint(trunk) == fp
    with torch.no_grad():
        trunk.body.features[0][0].weight.copy_(trunk.body.features[0][0].weight)
    assert trunk_fingerprint(trunk) != fp, "an in-place write bumps the version counter"
    fp = trunk_fingerprint(trunk)
    trunk.body.features[1] = nn.Identity()
    assert trunk_fingerprint(trunk) != fp


def test_not_on_a_gpu_with_a_trainable_trunk_or_when_switched_off(mobilenet_session, monkeypatch):
    session = mobilenet_session
    assert trunk_runner(session.model, "cpu", min_images=0) == (None, None), "the whole trunk trains"
    session.do(freeze_preset("heads-only"))
    assert trunk_runner(session.model, "cuda", min_images=0) == (None, None)
    monkeypatch.setenv(onnx_trunk.ENV, "off")
    assert trunk_runner(session.model, "cpu", min_images=0) == (None, None)


def test_a_background_conversion_is_used_once_ready(mobilenet_session):
    session = mobilenet_session
    session.model.input_spec = InputSpec(size=64, resize=64)
    session.do(DeleteOutputLayer())
    session.do(freeze_preset("heads-only"))
    session.do(AddHead(HeadSpec("shape", labels=["a", "b", "c"]), seed=0))
    onnx_trunk.prepare_trunk(session.model)
    with onnx_trunk._cache_lock:
        entry = onnx_trunk._cache[session.model.trunk]
    entry.future.result(timeout=120)
    conversion = cached_conversion(session.model)
    assert conversion is not None and conversion.onnx is not None
    batch = random_batch(2, 64).numpy()
    session.model.eval()
    with torch.inference_mode():
        expected = session.model(torch.from_numpy(batch))["shape"].numpy()
    got = predict_arrays(session, batch)["shape"]  # two images: only a ready conversion is used
    assert max_abs_diff(expected, got) <= allowed_diff(TOL, output_scale(expected))
    assert conversion.probe.per_image(), "the onnxruntime path ran (and timed its chunks)"


# -- the passes that use it ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(demo_manifest):
    data = load_data(demo_manifest())
    return replace(data, train=data.train[:24], val=data.val[:8])


def demo_session(demo) -> Session:
    torch.manual_seed(0)
    session = frozen(load_network("mobilenet_v3_small", random_init=True), size=64)
    for h in demo.heads:
        session.do(AddHead(h, seed=0))
    session.do(freeze_preset("heads-only"))
    return session


@pytest.mark.slow
def test_feature_caching_evaluation_and_try_an_image_use_onnxruntime(demo, monkeypatch):
    runs = {}
    for backend in ("pytorch", "onnxruntime"):
        monkeypatch.setenv(onnx_trunk.ENV, "auto" if backend == "onnxruntime" else "off")
        monkeypatch.setattr(onnx_trunk, "CONVERT_MIN_IMAGES", 0)
        session = demo_session(demo)
        messages = []
        result = Trainer(session, demo, TrainConfig(epochs=2, batch_size=8, patience=0, device="cpu"),
                         on_event=messages.append).run()
        assert result.cached_features and result.trunk_backend == backend
        texts = [getattr(m, "text", "") for m in messages]
        assert any(t.startswith("The frozen trunk runs in onnxruntime") for t in texts) == (backend == "onnxruntime")
        report = evaluate(session, demo, batch_size=16, device="cpu")
        assert report.trunk_backend == backend
        assert ("(trunk in onnxruntime)" in report.format()) == (backend == "onnxruntime")
        paths = [s.path for s in demo.val[:3]]
        runs[backend] = (result.history, report, predict_files(session, paths))
    (h_pt, r_pt, p_pt), (h_ort, r_ort, p_ort) = runs["pytorch"], runs["onnxruntime"]
    assert [e["train_loss"] for e in h_ort] == pytest.approx([e["train_loss"] for e in h_pt], rel=1e-4)
    assert [e["val_loss"] for e in h_ort] == pytest.approx([e["val_loss"] for e in h_pt], rel=1e-4)
    assert r_ort.loss == pytest.approx(r_pt.loss, rel=1e-4)
    for a, b in zip(p_pt, p_ort):
        assert a.keys() == b.keys()
        assert a["shape"].top[0][0] == b["shape"].top[0][0]
        assert np.allclose(a["shape"].values, b["shape"].values, atol=1e-5)
