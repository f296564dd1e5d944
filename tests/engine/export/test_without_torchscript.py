"""Graft keeps exporting the day PyTorch drops its TorchScript-based ONNX exporter: with
``torch.jit.trace``, ``torch.jit.script`` and ``torch.onnx.export(dynamo=False)`` all raising, the default
export still succeeds through torch.export and verifies against PyTorch, and nothing on that path warns."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from engine.export.metadata import read_metadata
from engine.export.onnx_export import export_onnx
from engine.network.heads import HeadSpec
from engine.network.loading import LoadedNetwork, ModelSource
from engine.network.preprocess import InputSpec
from engine.surgery.operations import AddHead, CutAt, DeleteOutputLayer
from engine.surgery.session import Session

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Gone(RuntimeError):
    pass


@pytest.fixture
def no_torchscript(monkeypatch):
    """The TorchScript routes raise, as they will once removed; the dynamo route is left alone."""
    calls: list[str] = []
    real_export = torch.onnx.export

    def trace(*args, **kwargs):
        calls.append("trace")
        raise Gone("torch.jit.trace was removed")

    def script(*args, **kwargs):
        calls.append("script")
        raise Gone("torch.jit.script was removed")

    def export(*args, dynamo=True, **kwargs):
        if not dynamo:
            calls.append("dynamo=False")
            raise Gone("the TorchScript-based ONNX exporter was removed")
        return real_export(*args, dynamo=True, **kwargs)

    monkeypatch.setattr(torch.jit, "trace", trace)
    monkeypatch.setattr(torch.jit, "script", script)
    monkeypatch.setattr(torch.onnx, "export", export)
    return calls


def tiny_session() -> Session:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    return Session(LoadedNetwork(body.eval(), InputSpec(size=32, resize=36), ModelSource("file", "/x/tiny.pt", format="pickle")))


def parity(session: Session, path, names: list[str]) -> float:
    import onnxruntime as ort

    batch = np.random.default_rng(5).standard_normal((3, 3, 32, 32)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(names, {"image": batch})
    with torch.no_grad():
        out = session.model.eval()(torch.from_numpy(batch))
    want = [out[n] for n in names] if isinstance(out, dict) else [out]
    return max(float(np.abs(g - w.numpy()).max()) for g, w in zip(got, want))


def test_the_default_export_succeeds_and_verifies_without_torchscript(tmp_path, no_torchscript):
    session = tiny_session()
    session.do(DeleteOutputLayer())
    session.do(AddHead(HeadSpec("species", labels=["a", "b", "c"]), seed=0))
    report = export_onnx(session, tmp_path / "m.onnx")
    assert report.verified and report.exporter == "dynamo" and report.max_diff <= 1e-4
    assert read_metadata(tmp_path / "m.onnx").data["exporter"] == "dynamo"
    assert parity(session, tmp_path / "m.onnx", ["species"]) <= 1e-4


def test_an_early_exit_with_two_heads_exports_without_torchscript(tmp_path, no_torchscript):
    session = tiny_session()
    session.do(CutAt("2"))  # the trunk stops after the ReLU (its forward hook raises)
    session.do(AddHead(HeadSpec("species", labels=["a", "b", "c"]), seed=0))
    session.do(AddHead(HeadSpec("size", kind="regression", labels=["w"]), seed=1))
    report = export_onnx(session, tmp_path / "exit.onnx")
    assert report.verified and report.exporter == "dynamo" and report.max_diff <= 1e-4
    assert set(report.outputs) == {"species", "size"}


def test_the_default_path_prints_no_torchscript_deprecation_warning(tmp_path):
    session = tiny_session()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_onnx(session, tmp_path / "w.onnx")
    deprecations = [str(w.message) for w in caught
                    if issubclass(w.category, (FutureWarning, DeprecationWarning)) and "torch" in str(w.message).lower()]
    assert deprecations == []
