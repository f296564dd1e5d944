"""Three timm networks, each from a weights file written here (random weights: no network), go the whole
way: loaded with ``timm:NAME`` + the file, tree, output layer found and deleted, a head added, trained
heads-only on tiny images, exported to ONNX (its own verification passing) and predicted through
onnxruntime the same as in PyTorch; the project reopens to the same predictions."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm")

from engine.data.loading import load_data  # noqa: E402
from engine.export.inference import predict_files  # noqa: E402
from engine.export.metadata import OnnxPredictor  # noqa: E402
from engine.export.onnx_export import export_onnx  # noqa: E402
from engine.network.heads import HeadSpec  # noqa: E402
from engine.network.loading import load_network  # noqa: E402
from engine.project.project_file import open_project, save_project  # noqa: E402
from engine.surgery.operations import AddHead, CutAt, DeleteOutputLayer, freeze_preset  # noqa: E402
from engine.surgery.session import Session  # noqa: E402
from engine.training.config import TrainConfig  # noqa: E402
from engine.training.trainer import train  # noqa: E402

TOL = 1e-4
CLASSES = ["circle", "square"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# (timm name, weights file format, marks): a ResNet (BatchNorm), a ConvNeXt (LayerNorm, depthwise
# convolutions) and a ViT (attention, class token).
NETWORKS = [
    pytest.param("resnet18", "pth", id="resnet18"),
    pytest.param("convnext_atto", "safetensors", id="convnext_atto"),
    pytest.param("vit_tiny_patch16_224", "safetensors", id="vit_tiny"),
]


def save_weights(name: str, fmt: str, folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A timm model with random weights saved the way a user's weights file would be."""
    torch.manual_seed(0)
    state = timm.create_model(name, pretrained=False).state_dict()
    path = folder / f"{name}.{fmt}"
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path, state


@pytest.mark.parametrize("name, fmt", NETWORKS)
@pytest.mark.slow
def test_a_timm_network_loads_trains_and_exports(name, fmt, tiny_folder, tmp_path):
    timings: dict[str, float] = {}
    start = time.perf_counter()
    weights, state = save_weights(name, fmt, tmp_path)
    network = load_network(f"timm:{name}", weights=weights)
    session = Session(network)
    timings["load"] = time.perf_counter() - start
    own = session.model.trunk.body.state_dict()
    assert set(own) == set(state) and all(torch.equal(own[k], state[k]) for k in state)
    assert session.source.kind == "timm" and session.source.name == f"timm:{name}"

    # preprocessing from timm's pretrained configuration
    config = timm.data.resolve_data_config(model=session.model.trunk.body)
    spec = session.input_spec
    assert spec.size == config["input_size"][-1] and spec.interpolation == config["interpolation"]
    assert spec.mean == pytest.approx(config["mean"]) and spec.std == pytest.approx(config["std"])

    # the output layer is timm's classifier; deleting it leaves timm's pooled features
    declared = session.model.trunk.body.pretrained_cfg["classifier"]
    assert session.output_layer == declared
    assert [n.path for n in session.tree if n.is_output] == [declared]
    session.do(DeleteOutputLayer())
    assert session.output_layer is None
    assert session.feature_dim == session.model.trunk.body.num_features
    session.do(AddHead(HeadSpec("shape", outputs=2, labels=CLASSES), seed=0))
    session.do(freeze_preset("heads-only"))

    data = load_data(tiny_folder, val_fraction=0.34, seed=0)
    trunk_before = {k: v.clone() for k, v in session.model.trunk.state_dict().items()}
    head_before = {k: v.clone() for k, v in session.model.heads.state_dict().items()}
    start = time.perf_counter()
    result = train(session, data, TrainConfig(epochs=2, batch_size=4, device="cpu", augment=False,
                                              num_workers=0, patience=0))
    timings["train"] = time.perf_counter() - start
    assert result.epochs_run == 2 and result.cached_features
    trunk_after = session.model.trunk.state_dict()
    assert all(torch.equal(trunk_before[k], trunk_after[k]) for k in trunk_before)  # heads only
    head_after = session.model.heads.state_dict()
    assert any(not torch.equal(head_before[k], head_after[k]) for k in head_before)

    images = sorted(tiny_folder.glob("*/*"))[::3]
    start = time.perf_counter()
    report = export_onnx(session, tmp_path / f"{name}.onnx", images=images)
    timings["export"] = time.perf_counter() - start
    assert report.verified and report.outputs == ["shape"]
    assert report.max_diff <= report.allowed("shape")
    ours = predict_files(session, images)
    theirs = OnnxPredictor(report.path).predict_files(images)
    worst = max(float(np.abs(a["shape"].values - b["shape"].values).max()) for a, b in zip(ours, theirs))
    assert worst <= TOL
    assert [a["shape"].top[0][0] for a in ours] == [b["shape"].top[0][0] for b in theirs]

    # the project reopens (timm:NAME rebuilt from the weights file) to the same predictions
    project = save_project(session, tmp_path / f"{name}.graft")
    reopened = open_project(project)
    assert reopened.source.kind == "timm" and reopened.output_deleted
    again = predict_files(reopened, images)
    assert max(float(np.abs(a["shape"].values - b["shape"].values).max()) for a, b in zip(ours, again)) <= 1e-5
    print(f"\n{name}: load {timings['load']:.1f} s, train {timings['train']:.1f} s, "
          f"export {timings['export']:.1f} s, export max diff {report.max_diff:.2e}, onnxruntime vs PyTorch {worst:.2e}")


@pytest.mark.slow
def test_a_cut_timm_network_exports_its_early_features(tmp_path, tiny_folder):
    """A cut inside a timm ConvNeXt: the features come from that stage, and the ONNX file agrees."""
    weights, _ = save_weights("convnext_atto", "safetensors", tmp_path)
    session = Session(load_network("timm:convnext_atto", weights=weights))
    session.do(CutAt("stages.2"))
    assert session.feature_dim == session.model.trunk.body.stages[2].blocks[-1].conv_dw.out_channels
    session.do(AddHead(HeadSpec("quality", kind="regression", outputs=1), seed=1))
    images = sorted(tiny_folder.glob("*/*"))[:2]
    report = export_onnx(session, tmp_path / "cut.onnx", images=images)
    assert report.verified and report.max_diff <= report.allowed("quality")
