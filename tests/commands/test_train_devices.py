"""``main.py train --devices 2 --device cpu``: two gloo processes started through torchrun's launcher,
against one process on the same project and data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

from cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[2]


def graft(*args, cwd, env=None, timeout=240, child=True):
    """``main.py ARGS`` in a real process (its launcher starts torchrun's processes); ``child=False``: in
    this process (cli_runner), for the one-process reference runs and what is refused before anything
    starts."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRAFT_DIST_TIMEOUT": "30", **(env or {})}
    if not child:
        return run_cli(*args, cwd=cwd, env=env, timeout=timeout)
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout, env=env)


@pytest.fixture(scope="module")
def base_project(tmp_path_factory) -> Path:
    """A random resnet18 at 32 px saved as a project: both runs start from the same weights."""
    from engine.network.loading import load_network
    from engine.network.preprocess import InputSpec
    from engine.project.project_file import save_project
    from engine.surgery.operations import DeleteOutputLayer
    from engine.surgery.session import Session

    torch.manual_seed(0)
    session = Session(load_network("resnet18", random_init=True))
    session.model.input_spec = InputSpec(size=32, resize=32)
    session.do(DeleteOutputLayer())
    return save_project(session, tmp_path_factory.mktemp("base") / "base.graft")


def heads_state(path: Path) -> dict[str, torch.Tensor]:
    from engine.project.project_file import open_project

    return {k: v for k, v in open_project(path).model.state_dict().items() if k.startswith("heads.")}


def history(path: Path) -> list[dict]:
    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read("recipe.json"))["extra"]["training"]["history"]


@pytest.mark.spawn
@pytest.mark.slow
def test_heads_only_on_two_processes_ends_at_the_one_process_weights(tiny_folder, base_project, tmp_path):
    common = ["train", "--data", str(tiny_folder), "--model", str(base_project), "--freeze", "heads-only",
              "--epochs", "3", "--batch-size", "4", "--device", "cpu"]
    t0 = time.perf_counter()
    one = graft(*common, "--out", "one.graft", cwd=tmp_path, child=False)  # the reference: one process, this one
    t1 = time.perf_counter()
    two = graft(*common, "--devices", "2", "--events", "jsonl", "--out", "two.graft", cwd=tmp_path)
    t2 = time.perf_counter()
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    a, b = heads_state(tmp_path / "one.graft"), heads_state(tmp_path / "two.graft")
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print(f"heads-only: max weight difference {diff:.3g}; {t1 - t0:.1f} s on 1 process, {t2 - t1:.1f} s on 2")
    assert diff < 1e-5
    # --events jsonl: stdout is JSON lines alone, from process 0 alone
    events = [json.loads(line) for line in two.stdout.splitlines()]
    names = [e["event"] for e in events]
    assert names[0] == "TrainStarted" and names.count("TrainStarted") == 1 and names[-1] == "TrainResult"
    assert [e["epoch"] for e in events if e["event"] == "EpochEvent"] == [1, 2, 3]
    assert events[-1]["reason"] == "completed" and Path(events[-1]["saved"]) == (tmp_path / "two.graft").resolve()
    assert [e["val_loss"] for e in events if e["event"] == "EpochEvent"] == pytest.approx(
        [h["val_loss"] for h in history(tmp_path / "one.graft")], abs=1e-6)
    assert any(e["text"].startswith("Training on 2 processes (gloo)") for e in events if e["event"] == "MessageEvent")
    assert "Saved the trained model" in two.stderr  # the human lines went to stderr


@pytest.mark.spawn
@pytest.mark.slow
def test_fine_tuning_on_two_processes_reaches_the_one_process_loss(tiny_folder, base_project, tmp_path):
    common = ["train", "--data", str(tiny_folder), "--model", str(base_project), "--freeze", "none",
              "--epochs", "2", "--batch-size", "4", "--device", "cpu", "--no-augment", "--patience", "0"]
    one = graft(*common, "--out", "one.graft", cwd=tmp_path, child=False)  # the reference: one process, this one
    two = graft(*common, "--devices", "2", "--out", "two.graft", cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr
    assert "each takes its share of every batch (DDP)" in two.stdout
    assert two.stdout.count("epoch 2/2") == 1  # process 0 alone prints
    h1, h2 = history(tmp_path / "one.graft"), history(tmp_path / "two.graft")
    print("fine-tuning val loss 1 vs 2 processes:", [round(h["val_loss"], 4) for h in h1],
          [round(h["val_loss"], 4) for h in h2],
          "accuracy", [h["metrics"]["class"].get("accuracy") for h in h1],
          [h["metrics"]["class"].get("accuracy") for h in h2])
    # different batches (each process its shard, BatchNorm over each process's half on the CPU): the
    # same training within noise, not the same numbers
    assert abs(h1[-1]["val_loss"] - h2[-1]["val_loss"]) < 0.25
    assert abs(h1[-1]["train_loss"] - h2[-1]["train_loss"]) < 0.25


@pytest.mark.spawn
@pytest.mark.slow
def test_a_process_that_dies_ends_the_run_with_one_line_and_leaves_the_project(tiny_folder, base_project, tmp_path):
    out = tmp_path / "kept.graft"
    out.write_bytes(base_project.read_bytes())
    before = out.read_bytes()
    t0 = time.perf_counter()
    result = graft("train", "--data", str(tiny_folder), "--model", str(base_project), "--freeze", "none",
                   "--epochs", "3", "--batch-size", "4", "--device", "cpu", "--devices", "2", "--out", str(out),
                   cwd=tmp_path, env={"GRAFT_TEST_DIE_AT_STEP": "2", "GRAFT_DIST_TIMEOUT": "20"})
    seconds = time.perf_counter() - t0
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert errors == ["graft: error: Training process 1 of 2 ended unexpectedly (exit code 3); the run was stopped "
                      "and nothing was saved."], result.stderr
    assert out.read_bytes() == before
    assert seconds < 90, seconds  # the others end with it, well within start-up + the timeout


@pytest.mark.slow
def test_devices_refuses_what_cannot_run_before_starting(tiny_folder, tmp_path):
    result = graft("train", "--data", str(tiny_folder), "--device", "mps", "--devices", "2", cwd=tmp_path,
                   child=False)
    assert result.returncode == 1 and result.stderr.startswith("graft: error:") and "mps" in result.stderr
    if not torch.cuda.is_available():
        result = graft("train", "--data", str(tiny_folder), "--device", "cuda", "--devices", "2", cwd=tmp_path,
                       child=False)
        assert result.returncode == 1 and "GPU" in result.stderr and result.stderr.count("\n") == 1
