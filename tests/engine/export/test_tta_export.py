"""Test-time augmentation inside the ONNX graph: verified parity, the averaging per head kind, metadata."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from engine.errors import GraftError
from engine.export.metadata import OnnxPredictor, read_metadata
from engine.export.onnx_export import export_onnx
from engine.export.tta import TTAModel, mark_tta, output_kinds, with_tta
from engine.network.heads import HeadSpec
from engine.network.loading import LoadedNetwork, ModelSource
from engine.network.preprocess import InputSpec
from engine.network.tta import make_views, probabilities, view_count
from engine.surgery.operations import AddHead, DeleteOutputLayer
from engine.surgery.session import Session

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def three_head_session() -> Session:
    """A tiny CNN (BatchNorm with real statistics, so outputs are not vanishingly small) with a
    single-label, a multi-label and a regression head."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    with torch.no_grad():
        body.train()(torch.randn(8, 3, 32, 32))
    session = Session(LoadedNetwork(body.eval(), InputSpec(size=32, resize=36),
                                    ModelSource("file", "/x/tiny.pt", format="pickle")))
    session.do(DeleteOutputLayer())
    session.do(AddHead(HeadSpec("shape", labels=["a", "b", "c"]), seed=1))
    session.do(AddHead(HeadSpec("tags", kind="multi", labels=["x", "y"]), seed=2))
    session.do(AddHead(HeadSpec("size", kind="regression", labels=["w"]), seed=3))
    with torch.no_grad():  # larger weights: confident, asymmetric answers that flipping changes
        for head in session.model.heads.values():
            head[-1].weight.mul_(20)
    return session


@pytest.mark.parametrize("tta", ["flip", "flip+crops"])
def test_tta_export_passes_the_parity_check_and_averages_per_head_kind(tmp_path, tta):
    session = three_head_session()
    out = tmp_path / "tta.onnx"
    report = export_onnx(with_tta(session, tta), out)
    data = mark_tta(out, tta, output_kinds(session))
    assert report.verified and report.max_diff <= 1e-4
    meta = read_metadata(out)
    assert meta.data["tta"] == data["tta"] and meta.data["tta"]["mode"] == tta
    assert meta.data["tta"]["views"] == view_count(tta)
    assert "softmax" in meta.data["tta"]["averaging"]["shape"] and "sigmoid" in meta.data["tta"]["averaging"]["tags"]
    assert meta.outputs == ["shape", "tags", "size"]
    x = np.random.default_rng(5).standard_normal((4, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = dict(zip(["shape", "tags", "size"], sess.run(["shape", "tags", "size"], {"image": x})))
    # the file's answer is the mean over the views of the plain model's probabilities / values
    model = session.model.eval()
    with torch.no_grad():
        views = make_views(torch.from_numpy(x), tta)
        each = model(views)
    v = view_count(tta)
    for name, kind in (("shape", "single"), ("tags", "multi"), ("size", "regression")):
        mean = probabilities(kind, each[name]).reshape(v, 4, -1).mean(dim=0).numpy()
        assert np.abs(probabilities(kind, torch.from_numpy(got[name])).numpy() - mean).max() <= 1e-5, name
        plain = probabilities(kind, each[name][:4]).numpy()
        assert np.abs(mean - plain).max() > 1e-3, f"{name}: the views must change the answer"
    # a runtime reading the file as any Graft export gets those averaged probabilities
    probs = OnnxPredictor(out).predict_arrays(x)
    assert np.allclose(probs["shape"], got["shape"], atol=1e-6)


def test_tta_flip_on_the_default_network_verifies(tmp_path):
    from engine.network.loading import load_network

    session = Session(load_network("default"))
    session.do(DeleteOutputLayer())
    session.do(AddHead(HeadSpec("species", labels=["cat", "dog", "bird"]), seed=0))
    report = export_onnx(with_tta(session, "flip"), tmp_path / "lite0.onnx")
    assert report.verified and report.max_diff <= 1e-4


def test_extreme_logits_stay_finite():
    """Log-sum-exp averaging: probabilities of 1 - 1e-40 keep finite logits (no log(0))."""
    from engine.network.tta import combine

    z = torch.tensor([[200.0, -200.0, 0.0], [150.0, -300.0, 0.0]])
    assert torch.isfinite(combine("single", z, 2)).all() and torch.isfinite(combine("multi", z, 2)).all()
    assert combine("multi", z, 2)[0, 0] > 100 and combine("multi", z, 2)[0, 1] < -100


def test_unknown_tta_is_refused():
    with pytest.raises(GraftError, match="flip"):
        TTAModel(nn.Identity(), "rotate", {})
    session = three_head_session()
    assert with_tta(session, None) is session and with_tta(session, "none") is session
