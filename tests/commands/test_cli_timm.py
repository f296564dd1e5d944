"""timm networks on the command line: ``--model timm:NAME``, a timm state dict with ``--arch timm:NAME``,
train -> export -> predict with the same answers, and one clear line when no weights are on the machine."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

timm = pytest.importorskip("timm")

import main  # noqa: E402
from cli_runner import run_child, run_cli  # noqa: E402
from engine.export.inference import predict_files  # noqa: E402
from engine.project.project_file import open_project  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOL = 1e-4

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def graft(*args: str) -> subprocess.CompletedProcess:
    """``main.py ARGS`` in this process (cli_runner: as a child gives it, without its 4 s of imports)."""
    return run_cli(*args, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def graft_child(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """``main.py ARGS`` in a real process, with these variables in its environment from its start."""
    return run_child(*args, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", **env})


def test_layers_of_a_timm_network_with_random_weights(capsys):
    assert main.main(["layers", "--model", "timm:resnet18", "--random-weights", "--depth", "1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("timm:resnet18 (random weights)  input RGB 224x224") and "bicubic" in out
    fc = next(line for line in out.splitlines() if line.startswith("fc "))
    assert "Linear" in fc and fc.endswith("<- output layer")


@pytest.mark.slow
def test_no_cached_weights_is_one_clear_line(tmp_path):
    """HF_HOME and TORCH_HOME point at empty folders: nothing is fetched, the user is told what to do. A real
    process: huggingface_hub reads HF_HOME once, as it is imported."""
    result = graft_child("layers", "--model", "timm:convnext_atto",
                   env={"HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "torch")})
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.startswith("graft: error: No pretrained weights for timm:convnext_atto")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "never downloads" in result.stderr and str(tmp_path / "hf") in result.stderr
    assert "timm/convnext_atto.d2_in1k" in result.stderr and "random weights" in result.stderr


@pytest.mark.slow
def test_a_timm_state_dict_trains_exports_and_predicts(tiny_folder, tmp_path, capsys):
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.safetensors"
    from safetensors.torch import save_file

    save_file(timm.create_model("resnet18", pretrained=False).state_dict(), str(weights))
    project = tmp_path / "r18.graft"
    trained = graft("train", "--data", tiny_folder, "--model", weights, "--arch", "timm:resnet18", "--epochs", "1",
                    "--batch-size", "4", "--no-augment", "--workers", "0", "--device", "cpu", "--out", project)
    assert trained.returncode == 0, trained.stderr
    assert "epoch 1/1" in trained.stdout and project.is_file()

    onnx_path = tmp_path / "r18.onnx"
    images = sorted(tiny_folder.glob("*/*"))[::4]
    assert main.main(["export", str(project), "--onnx", str(onnx_path), "--image", str(images[0])]) == 0
    assert "verified against PyTorch" in capsys.readouterr().out

    predicted = graft("predict", onnx_path, "--json", *images)
    assert predicted.returncode == 0, predicted.stderr
    from_onnx = [json.loads(line) for line in predicted.stdout.splitlines()]
    session = open_project(project)
    assert session.source.arch == "timm:resnet18" and session.input_spec.interpolation == "bicubic"
    worst = 0.0
    for theirs, mine in zip(from_onnx, predict_files(session, images), strict=True):
        values = theirs["outputs"]["class"]["values"]
        worst = max(worst, float(np.abs(np.array(list(values.values())) - mine["class"].values).max()))
    assert worst <= TOL
