"""``main.py script``: the generated training script runs without Graft, trains to Graft's own validation
metrics for the same settings and seed, and writes a model.onnx that ``main.py predict`` reads."""
from __future__ import annotations

import ast
import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
import torch
import torchvision

from engine.data.loading import load_data
from engine.data.demo_data import ensure_demo_data, load_recipe
from engine.export.metadata import read_metadata
from engine.export.onnx_export import export_onnx
from engine.export.script import write_training_script
from engine.network.heads import HeadSpec
from engine.network.loading import load_network
from engine.project.project_file import open_project, save_project
from engine.surgery.operations import AddHead, CutAt, DeleteOutputLayer, freeze_preset
from engine.surgery.session import Session
from engine.training.config import TrainConfig
from engine.training.record import TrainingRecord
from engine.training.trainer import Trainer

from main import main
from test_cli_export import ENV, graft, predict

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ALLOWED = {"torch", "torchvision", "numpy", "PIL"}
# Runs the script with Graft (and onnxruntime) impossible to import, from another folder.
NO_GRAFT = ("import runpy, sys\n"
            "for name in ('engine', 'commands', 'widgets', 'app', 'onnxruntime', 'onnxconverter_common'):\n"
            "    sys.modules[name] = None\n"
            "sys.argv = sys.argv[1:]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")


def train_like_main_py(session: Session, out: Path, data_file: Path, config: TrainConfig, freeze: str,
                       heads: list[HeadSpec] | None = None) -> Path:
    """What ``main.py train`` does, for a session prepared here (a smaller input, a cut)."""
    data = load_data(data_file, heads, seed=config.seed)
    if session.output_layer is not None:
        session.do(DeleteOutputLayer())
    for spec in data.heads:
        session.do(AddHead(spec, seed=config.seed))
    session.do(freeze_preset(freeze))
    result = Trainer(session, data, config).run()
    extra = TrainingRecord.begin(data, config, data_file).finish(result).store(session.project_extra)
    return save_project(session, out, extra=extra)


def run_script(script: Path, *args: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", NO_GRAFT, str(script), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=600, env=env)


def check_script(project: Path, tmp_path: Path, data: Path | None = None,
                 allowed: set[str] = ALLOWED) -> tuple[dict, dict, Path]:
    """Generate and run the script (on ``data``, default the demo); return Graft's metrics at its kept epoch, the
    script's, and its model."""
    script = tmp_path / "train_model.py"
    made = graft("script", project, "--out", script)
    assert made.returncode == 0, made.stderr
    assert str(script) in made.stdout and os.access(script, os.X_OK)
    tree = ast.parse(script.read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported - sys.stdlib_module_names - {"__future__"} <= allowed, imported

    out = tmp_path / "run"
    ran = run_script(script, "--data", data or ensure_demo_data(), "--out", out, cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert (out / "model.onnx").is_file() and (out / "metrics.json").is_file()
    mine = json.loads((out / "metrics.json").read_text())
    record = TrainingRecord.latest(open_project(project).project_extra)
    theirs = record.history[record.best_epoch - 1]["metrics"]
    assert mine["best_epoch"] == record.best_epoch
    assert mine["n_train"] == record.n_train and mine["n_val"] == record.n_val
    for head, metrics in theirs.items():
        for key in ("accuracy", "macro_f1"):
            if key in metrics:
                assert abs(mine["metrics"][head][key] - metrics[key]) <= 0.02, (head, key, mine["metrics"], theirs)
        if "mae" in metrics:
            assert mine["metrics"][head]["mae"] == pytest.approx(metrics["mae"], rel=0.02)
        for key in ("miou", "map_50"):
            if key in metrics:
                assert abs(mine["metrics"][head][key] - metrics[key]) <= 0.02, (head, key, mine["metrics"], theirs)
    return theirs, mine["metrics"], out / "model.onnx"


def same_metadata_as_export(project: Path, model: Path, tmp_path: Path) -> None:
    """The script's file carries the keys ``main.py export`` writes, and describes the same outputs."""
    session = open_project(project)
    exported = tmp_path / "exported.onnx"
    export_onnx(session, exported, verify=False)
    keys = lambda path: {p.key for p in onnx.load(str(path), load_external_data=False).metadata_props}  # noqa: E731
    assert keys(model) == keys(exported)
    ours, theirs = read_metadata(model), read_metadata(exported)
    assert ours.outputs == theirs.outputs and ours.input_spec == theirs.input_spec
    for a, b in zip(ours.heads, theirs.heads):
        assert (a.name, a.kind, a.labels) == (b.name, b.kind, b.labels)
        if a.kind == "regression":
            assert a.target_mean == pytest.approx(b.target_mean) and a.target_std == pytest.approx(b.target_std)
    onnx.checker.check_model(onnx.load(str(model)), full_check=True)


@pytest.mark.slow
def test_a_resnet_with_a_cut_and_a_training_block_trains_the_same_in_the_script(tmp_path):
    """resnet18 from a weights file, cut after layer3, layer3 and the heads training on images (no cache)."""
    torch.manual_seed(3)
    weights = tmp_path / "resnet18-start.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    session = Session(load_network("resnet18", weights=str(weights)))
    session.model.input_spec = replace(session.input_spec, size=64, resize=73)
    session.do(CutAt("layer3"))
    config = TrainConfig(epochs=1, batch_size=32, augment=False, seed=1, num_workers=0)
    project = train_like_main_py(session, tmp_path / "resnet.graft", ensure_demo_data(), config, "up-to:layer2")
    theirs, mine, model = check_script(project, tmp_path)
    recipe = (tmp_path / "train_model.py").read_text()
    assert "'cut_at': 'layer3'" in recipe and "'trunk.body.layer2'" in recipe and "resnet18-start.pth" in recipe
    assert set(theirs) == {"shape", "tags", "size"}
    predicted = predict(model, *sorted(ensure_demo_data().parent.glob("images/*.jpg"))[:2])
    assert predicted.returncode == 0 and "shape: " in predicted.stdout
    same_metadata_as_export(project, model, tmp_path)


@pytest.mark.slow
def test_the_default_network_trains_the_same_in_the_script(tmp_path):
    """EfficientNet-Lite0 from the weights package (its architecture carried in the script), heads only."""
    session = Session(load_network("default"))
    session.model.input_spec = replace(session.input_spec, size=96, resize=110)  # fast; the script reads it
    config = TrainConfig(epochs=2, batch_size=32, seed=0)
    project = train_like_main_py(session, tmp_path / "lite.graft", ensure_demo_data(), config, "heads-only")
    theirs, mine, model = check_script(project, tmp_path)
    assert theirs["shape"]["accuracy"] > 0.5  # pretrained features: the shapes are learnt
    same_metadata_as_export(project, model, tmp_path)


DENSE_HEADS = [HeadSpec("shape", columns=["shape"]),
               HeadSpec("seg", "segment", columns=["mask"], layers=["layer2", "layer3", "layer4"], hidden=[32]),
               HeadSpec("boxes", "detect", columns=["boxes"], layers=["layer2", "layer3", "layer4"], hidden=[32])]


def test_the_script_trains_segment_and_detect_heads_for_an_epoch_without_graft(tmp_path, small_resnet):
    """16 demo images at 64 px, the whole resnet18 training (so on augmented images: masks and boxes through the
    image's crop and flip), one epoch: every head's loss is computed, finite and above 0, mIoU and mAP are
    reported, and the model and metrics are written."""
    manifest = ensure_demo_data(tmp_path / "data", recipe={**load_recipe(), "count": 16})
    script = write_training_script(small_resnet(load_data(manifest, DENSE_HEADS, seed=0).heads), tmp_path / "t.py")
    ran = run_script(script, "--data", manifest, "--epochs", 1, "--out", tmp_path / "run", cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "on augmented images" in ran.stdout and "seg: mIoU " in ran.stdout and "boxes: mAP50 " in ran.stdout
    assert (tmp_path / "run" / "model.onnx").stat().st_size > 1e6
    epoch = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"][0]
    for key in ("train_head_losses", "val_head_losses"):
        assert set(epoch[key]) == {"shape", "seg", "boxes"}
        assert all(v > 0 and math.isfinite(v) for v in epoch[key].values()), epoch[key]
    assert "miou" in epoch["metrics"]["seg"] and "map_50" in epoch["metrics"]["boxes"]


@pytest.mark.slow
def test_segment_and_detect_heads_train_the_same_in_the_script(tmp_path):
    """A shape classifier, a segment head and a detect head on resnet18 (from a weights file, 64 px, layer3 and
    layer4 training), 24 demo images with a third of their masks and boxes blank, 2 epochs: the script,
    without Graft, gives Graft's losses head by head and its mIoU and mAP, and a model.onnx that
    ``main.py predict`` reads."""
    torch.manual_seed(3)
    weights = tmp_path / "resnet18-start.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    session = Session(load_network("resnet18", weights=str(weights)))
    session.model.input_spec = replace(session.input_spec, size=64, resize=64)
    manifest = ensure_demo_data(tmp_path / "data", recipe={**load_recipe(), "count": 24})
    config = TrainConfig(epochs=2, batch_size=8, augment=False, seed=1, num_workers=0)
    project = train_like_main_py(session, tmp_path / "dense.graft", manifest, config, "up-to:layer2", DENSE_HEADS)
    theirs, mine, model = check_script(project, tmp_path, manifest, ALLOWED | {"torchmetrics"})
    assert {"miou", "iou/background", "map_50", "map"} <= set(mine["seg"]) | set(mine["boxes"])
    record = TrainingRecord.latest(open_project(project).project_extra)
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    for ours, graft_epoch in zip(history, record.history, strict=True):
        for key in ("train_loss", "val_loss"):
            assert ours[key] == pytest.approx(graft_epoch[key], rel=1e-4)
        for key in ("train_head_losses", "val_head_losses"):
            assert ours[key] == pytest.approx(graft_epoch[key], rel=1e-4)
            assert all(v > 0 and math.isfinite(v) for v in ours[key].values())
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    predicted = predict(model, *sorted(manifest.parent.glob("images/*.jpg"))[:2])
    assert predicted.returncode == 0 and "seg: mask 64x64" in predicted.stdout and "boxes: " in predicted.stdout
    same_metadata_as_export(project, model, tmp_path)


def test_script_refuses_what_it_cannot_write(tmp_path, capsys):
    session = Session(load_network("resnet18", random_init=True))
    save_project(session, tmp_path / "no_heads.graft")
    assert main(["script", str(tmp_path / "no_heads.graft"), "--out", str(tmp_path / "s.py")]) == 1
    assert "has no heads" in capsys.readouterr().err and not (tmp_path / "s.py").exists()
    assert main(["script", str(tmp_path / "no_heads.graft"), "--out", str(tmp_path / "gone" / "s.py")]) == 1
    assert "does not exist" in capsys.readouterr().err
