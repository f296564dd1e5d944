"""``main.py train --out X.graft`` keeps a checkpoint at each finished epoch, so that ``--resume X.graft``
continues a run killed with SIGKILL from its last finished epoch and ends where an uninterrupted run ends."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import pytest
import torch

from test_cli_train import ROOT, graft

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL")

EPOCHS = 5
SETTINGS = ["--freeze", "none", "--epochs", str(EPOCHS), "--batch-size", "8", "--no-augment", "--workers", "0"]


@pytest.fixture
def start(small_resnet, tmp_path):
    """The network both runs start from (resnet18, random weights of seed 0, 64 px), as a project."""
    from engine.project.project_file import save_project

    return ["--model", str(save_project(small_resnet([]), tmp_path / "start.graft"))]


def _checkpoint_epoch(path) -> int | None:
    """The finished epoch the file's checkpoint holds (None: no whole file with a checkpoint yet)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read("checkpoint.json"))["epochs_run"]
    except (OSError, KeyError, zipfile.BadZipFile, ValueError):
        return None


def _weights(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    with zipfile.ZipFile(path) as zf:
        return load(zf.read("weights.safetensors"))


@pytest.mark.slow
def test_a_run_killed_after_an_epoch_resumes_from_it(tiny_folder, tmp_path, start):
    out = tmp_path / "run.graft"
    child = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "train", "--data", str(tiny_folder), *start,
                              *SETTINGS, "--out", str(out)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        end = time.monotonic() + 240
        while _checkpoint_epoch(out) is None:  # the first epoch's checkpoint is on disk: kill now
            assert child.poll() is None, child.stderr.read().decode()
            assert time.monotonic() < end, "no checkpoint was written"
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(30)
        stdout = child.stdout.read().decode()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    killed_after = _checkpoint_epoch(out)  # the file is whole: a zip with its checkpoint, read again
    assert killed_after is not None and 1 <= killed_after < EPOCHS, stdout
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        record = json.loads(zf.read("recipe.json"))["extra"]["training"]
    assert record["reason"] == "running" and record["epochs_run"] == killed_after
    assert len(record["history"]) == killed_after

    resumed = graft("train", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert (f"run.graft: its run was cut off after epoch {killed_after} of {EPOCHS} (killed or crashed); "
            "continuing from that epoch") in resumed.stdout
    epochs = [line.split()[1] for line in resumed.stdout.splitlines() if line.startswith("epoch")]
    assert epochs == [f"{e}/{EPOCHS}" for e in range(killed_after + 1, EPOCHS + 1)]
    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        assert "checkpoint.json" not in zf.namelist()  # the run ended: nothing left to resume
        extra = json.loads(zf.read("recipe.json"))["extra"]
    assert extra["training"]["reason"] == "completed" and extra["training"]["epochs_run"] == EPOCHS
    assert [h["epoch"] for h in extra["training"]["history"]] == list(range(1, EPOCHS + 1))
    assert len(extra["runs"]) == 1  # the resumed run replaced the record of the run it continued

    # the same run, never interrupted, ends at the same weights and the same best epoch
    whole = tmp_path / "whole.graft"
    straight = graft("train", "--data", str(tiny_folder), *start, *SETTINGS, "--out", str(whole))
    assert straight.returncode == 0, straight.stderr
    with zipfile.ZipFile(whole) as zf:
        reference = json.loads(zf.read("recipe.json"))["extra"]["training"]
    assert reference["best_epoch"] == extra["training"]["best_epoch"]
    mine, theirs = _weights(out), _weights(whole)
    assert mine.keys() == theirs.keys()
    for key in theirs:
        torch.testing.assert_close(mine[key], theirs[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_every_finished_epoch_but_the_last_leaves_a_checkpoint(tiny_folder, tmp_path, monkeypatch, capsys,
                                                               one_torch_thread, start):
    """In this process: the file after each epoch holds that epoch's checkpoint; the finished run's has none."""
    import main
    from engine.project import project_file

    seen = []
    real = project_file.save_project

    def spy(session, path, extra=None, checkpoint=None):
        saved = real(session, path, extra=extra, checkpoint=checkpoint)
        ck = project_file.read_checkpoint(saved)
        seen.append((ck.epochs_run if ck is not None else None, extra["training"]["reason"]))
        return saved

    monkeypatch.setattr(project_file, "save_project", spy)
    out = tmp_path / "x.graft"
    args = [a if a != str(EPOCHS) else "3" for a in SETTINGS]
    assert main.main(["train", "--data", str(tiny_folder), *start, *args, "--out", str(out)]) == 0, \
        capsys.readouterr().err
    assert seen == [(1, "running"), (2, "running"), (None, "completed")]
