"""``main.py lr-find`` and train's --lr-factor, --discriminative, --unfreeze-every, --pause-after, --resume."""
from __future__ import annotations

import json
import zipfile

import pytest

from test_cli_train import graft, graft_child

MODEL = ["--model", "resnet18", "--random-weights"]


@pytest.mark.slow
def test_lr_find_prints_a_suggestion_and_draws_the_curve(tiny_folder, tmp_path):
    result = graft("lr-find", "--data", str(tiny_folder), "--batch-size", "4", "--steps", "30",
                   "--plot", str(tmp_path / "curve"), "--csv", str(tmp_path / "curve.csv"))
    assert result.returncode == 0, result.stderr
    assert "Range test on CPU" in result.stdout and "cached trunk features" in result.stdout
    line = next(line for line in result.stdout.splitlines() if line.startswith("Suggested heads' learning rate: "))
    suggestion = float(line.split(": ")[1].split()[0])
    assert 1e-7 <= suggestion <= 10
    assert f"--lr-heads {suggestion:.2g}" in result.stdout
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = (tmp_path / "curve.csv").read_text().splitlines()
    assert rows[0] == "step,lr,loss,smoothed_loss,suggested" and 3 < len(rows) <= 31
    assert not list(tmp_path.glob("*.graft"))  # nothing is saved


@pytest.mark.slow
def test_lr_find_that_diverges_at_once(tiny_folder):
    """In a real process: one line, with nothing of the interpreter's after it."""
    result = graft_child("lr-find", "--data", str(tiny_folder), *MODEL, "--batch-size", "4", "--start-lr", "1e4",
                         "--end-lr", "1e9")
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "diverged at once" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--lr-factor", "nolayer=0.5"], "There is no layer 'nolayer'"),
    (["--lr-factor", "layer1=-2"], "must be 0 or more"),
    (["--lr-factor", "layer1=fast"], "is not a number"),
    (["--lr-factor", "layer1"], "LAYER=FACTOR"),
    (["--discriminative", "3"], "at most 1"),
    (["--unfreeze-every", "0"], "Unfreeze every"),
    (["--resume", "nowhere.graft"], "no such file"),
])
def test_bad_control_options_exit_with_one_line(tiny_folder, tmp_path, capsys, one_torch_thread, args, message):
    """In this process (main.main), like the command line: one line, exit code 1, nothing written."""
    import main

    data = [] if args[0] == "--resume" else ["--data", str(tiny_folder), *MODEL]
    assert main.main(["train", *data, *args, "--out", str(tmp_path / "x.graft")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("graft: error: ") and message in err, err
    assert not (tmp_path / "x.graft").exists()


@pytest.mark.slow
def test_factors_pause_and_resume(tiny_folder, tmp_path):
    out = tmp_path / "p.graft"
    result = graft("train", "--data", str(tiny_folder), *MODEL, "--freeze", "none", "--discriminative",
                   "--lr-factor", "layer4=0", "--epochs", "3", "--batch-size", "8", "--no-augment",
                   "--pause-after", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "Discriminative learning rates" in result.stdout and "layer1 x0.1" in result.stdout
    assert "Learning rates by factor: heads 0.001, trunk x0.464159" in result.stdout
    assert "Paused after epoch 1 of 3" in result.stdout and f"graft train --resume {out}" in result.stdout
    with zipfile.ZipFile(out) as zf:
        assert {"checkpoint.json", "checkpoint.safetensors"} <= set(zf.namelist())
        recipe = json.loads(zf.read("recipe.json"))
    factors = [op for op in recipe["operations"] if op["op"] == "lr_factor"]
    assert factors[0]["factors"]["layer1"] == 0.1 and factors[1]["factors"] == {"layer4": 0.0}
    assert recipe["extra"]["training"]["reason"] == "paused"

    refused = graft("train", "--resume", str(out), "--epochs", "5")
    assert refused.returncode == 1 and "leave out --epochs" in refused.stderr
    resumed = graft("train", "--resume", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming the run paused after epoch 1 of 3" in resumed.stdout
    assert [line.split()[1] for line in resumed.stdout.splitlines() if line.startswith("epoch")] == ["2/3", "3/3"]
    with zipfile.ZipFile(out) as zf:
        assert "checkpoint.json" not in zf.namelist()
        extra = json.loads(zf.read("recipe.json"))["extra"]
    assert len(extra["runs"]) == 1 and extra["runs"][0]["reason"] == "completed"
    assert [h["epoch"] for h in extra["runs"][0]["history"]] == [1, 2, 3]
    again = graft("train", "--resume", str(out))
    assert again.returncode == 1 and "holds no paused run" in again.stderr


@pytest.mark.slow
def test_gradual_unfreezing_from_the_command_line(tiny_folder, tmp_path):
    result = graft("train", "--data", str(tiny_folder), *MODEL, "--unfreeze-every", "1", "--epochs", "2",
                   "--batch-size", "8", "--no-augment", "--out", str(tmp_path / "u.graft"))
    assert result.returncode == 0, result.stderr
    assert "more as gradual unfreezing goes on" in result.stdout
    assert "Epoch 2: layer4 starts training (gradual unfreezing)." in result.stdout
    assert "freeze settings are put back after the run" in result.stdout
    from engine.project.project_file import open_project

    session = open_project(tmp_path / "u.graft")
    assert not any(p.requires_grad for p in session.model.trunk.parameters())  # heads-only, as set
