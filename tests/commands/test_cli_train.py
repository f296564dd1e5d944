"""``main.py train`` and ``main.py evaluate`` end to end on a tiny image folder."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from cli_runner import run_child, run_cli

ROOT = Path(__file__).resolve().parents[2]


def graft(*args, cwd=ROOT):
    """``main.py ARGS`` in this process (cli_runner: as a child gives it, without its 4 s of imports)."""
    # One compute thread: on a busy 2-core machine two OpenMP threads spin against each other.
    return run_cli(*args, cwd=cwd, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


def graft_child(*args, cwd=ROOT):
    """``main.py ARGS`` in a real process."""
    return run_child(*args, cwd=cwd, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
def test_train_writes_a_project_that_evaluate_reads(tiny_folder, tmp_path):
    result = graft("train", "--data", str(tiny_folder), "--epochs", "1", "--batch-size", "8", "--no-augment",
                   cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    out = tmp_path / "graft-model.graft"  # the default output
    assert out.is_file() and str(out) in result.stdout
    lines = result.stdout.splitlines()
    epoch = next(line for line in lines if line.startswith("epoch 1/1"))
    assert "class: acc" in epoch and "val" in epoch
    with zipfile.ZipFile(out) as zf:
        recipe = json.loads(zf.read("recipe.json"))
    assert [h["name"] for h in recipe["heads"]] == ["class"]
    assert recipe["heads"][0]["labels"] == ["circle", "square"]
    assert recipe["extra"]["training"]["epochs_run"] == 1

    evaluated = graft("evaluate", str(out), "--data", str(tiny_folder))
    assert evaluated.returncode == 0, evaluated.stderr
    assert "Evaluated 16 images" in evaluated.stdout
    assert "accuracy" in evaluated.stdout and "circle" in evaluated.stdout


@pytest.mark.slow
def test_train_continues_a_project_and_names_heads(tiny_folder, tmp_path):
    first = tmp_path / "a.graft"
    result = graft("train", "--data", str(tiny_folder), "--model", "mobilenet_v3_small", "--random-weights",
                   "--head", "kind:single", "--epochs", "1", "--no-augment", "--out", str(first))
    assert result.returncode == 0, result.stderr
    assert "Head kind: single, 2 outputs (circle, square)" in result.stdout
    second = tmp_path / "b"
    result = graft("train", "--data", str(tiny_folder), "--model", str(first), "--epochs", "1", "--freeze", "none",
                   "--batch-size", "4", "--out", str(second))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "b.graft").is_file()
    assert "on images" in result.stdout  # the trunk trains: no cached features


@pytest.mark.parametrize("args, message", [
    (["--head", "shape:nonsense"], "unknown kind"),
    (["--head", "shape"], "NAME:KIND"),
    (["--freeze", "sideways"], "Unknown freeze setting"),
    (["--epochs", "0"], "Epochs"),
    (["--augment-views", "-1"], "Augmented views must be a whole number"),
    (["--feature-ram-mb", "0"], "RAM budget must be a positive number"),
])
@pytest.mark.slow
def test_bad_arguments_exit_with_one_line(tiny_folder, tmp_path, args, message):
    result = graft("train", "--data", str(tiny_folder), *args, "--out", str(tmp_path / "x.graft"))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "x.graft").exists()


@pytest.mark.slow
def test_augmented_views_and_a_spilling_feature_cache(tiny_folder, tmp_path):
    """``--augment-views`` alone means 4 views; a tiny ``--feature-ram-mb`` puts the features on disk (removed after)."""
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GRAFT_CACHE_DIR": str(cache)}
    result = run_cli("train", "--data", str(tiny_folder), "--model", "mobilenet_v3_small", "--random-weights",
                     "--epochs", "1", "--batch-size", "8", "--augment-views", "--feature-ram-mb", "0.001",
                     "--out", str(tmp_path / "v.graft"), timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert "on cached trunk features of 4 augmented views per image" in result.stdout
    assert "4 augmented views of each of the" in result.stdout and "memory-mapped file" in result.stdout
    assert not list((cache / "features").iterdir())


@pytest.mark.slow
def test_unwritable_out_folder_is_refused_before_training(tiny_folder, tmp_path):
    """A folder that takes no files ends the run at once, not after training that would then be lost."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        # a read-only folder stops ordinary users; /proc stops root too
        target = locked / "x.graft" if not os.access(locked, os.W_OK) else Path("/proc/graft-test.graft")
        result = graft("train", "--data", str(tiny_folder), "--epochs", "1", "--no-augment", "--out", str(target))
        assert result.returncode == 1
        assert result.stderr.count("\n") == 1 and "Cannot write" in result.stderr, result.stderr
        assert "Training on" not in result.stdout and "epoch" not in result.stdout
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


@pytest.mark.slow
def test_evaluate_with_negative_workers_ends_with_one_line(seeded_project, tiny_folder):
    result = graft("evaluate", str(seeded_project), "--data", str(tiny_folder), "--workers", "-1")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "must not be negative" in result.stderr, result.stderr


@pytest.mark.slow
def test_missing_data_and_bad_project(tmp_path):
    """In real processes: train's and evaluate's one line, with nothing of the interpreter's after it."""
    result = graft_child("train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.graft"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "no such file" in result.stderr
    bogus = tmp_path / "bogus.graft"
    bogus.write_text("not a zip")
    result = graft_child("evaluate", str(bogus), "--data", str(tmp_path))
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "not a Graft project" in result.stderr


class FakeStream:
    def __init__(self, tty):
        self.text, self.tty = "", tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass

    def isatty(self):
        return self.tty


@pytest.mark.parametrize("tty", [True, False])
def test_progress_bar_only_on_a_terminal(tty):
    from commands.train import _Printer
    from engine.network.heads import HeadSpec
    from engine.training.events import EpochEvent, ProgressEvent, StepEvent, TrainFinished, TrainStarted

    out, err = FakeStream(False), FakeStream(tty)
    printer = _Printer([HeadSpec("shape", "single", outputs=3), HeadSpec("size", "regression", outputs=1)], out, err)
    printer(TrainStarted(2, 5, 10, "cpu", False, 40, 10, ["shape", "size"], "CPU (2 threads, fp32)"))
    printer(StepEvent(5, 1, 0.75, {"shape": 0.5, "size": 0.25}, 1e-3))
    printer(ProgressEvent(5, 10, 0.5, 12.0))
    printer(EpochEvent(1, 0.8, 0.7, {}, {}, {"shape": {"accuracy": 0.9}, "size": {"mae": 0.05}}, True, 3.2))
    printer(TrainFinished("completed", 1, 0.7, "done"))
    lines = out.text.splitlines()
    assert lines[0].startswith("Training on CPU") and "40 train / 10 validation" in lines[0]
    assert lines[1] == "epoch 1/2  train 0.8000  val 0.7000 *  shape: acc 0.900  size: MAE 0.050  (3.2 s)"
    if tty:
        assert "\r\x1b[K[" in err.text and " 50%" in err.text and "ETA 0:12" in err.text and "loss 0.7500" in err.text
    else:
        assert err.text == ""


@pytest.mark.slow
def test_data_demo_trains_the_multi_task_demo(tmp_path):
    """``--data demo`` generates the offline demo (here into a fresh cache) and makes its three heads.
    Run through the README's ``./graft cli`` wrapper: a relative ``--out`` lands in the caller's folder."""
    env_cache = tmp_path / "cache"
    (tmp_path / "demo").mkdir()  # a folder named demo in the working directory must not shadow the keyword
    result = subprocess.run([str(ROOT / "graft"), "cli", "train", "--data", "demo", "--epochs", "1",
                             "--no-augment", "--out", "d.graft"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "GRAFT_CACHE_DIR": str(env_cache)})
    assert result.returncode == 0, result.stderr
    assert (env_cache / "demo-v2" / "labels.csv").is_file()
    assert "288 training and 72 validation images" in result.stdout
    epoch = next(line for line in result.stdout.splitlines() if line.startswith("epoch 1/1"))
    assert "shape: acc" in epoch and "tags: F1" in epoch and "size: MAE" in epoch
    with zipfile.ZipFile(tmp_path / "d.graft") as zf:
        recipe = json.loads(zf.read("recipe.json"))
    assert [h["name"] for h in recipe["heads"]] == ["shape", "tags", "size"]


@pytest.mark.slow
def test_ctrl_c_stops_after_the_batch_and_saves_the_best_weights(tiny_folder, tmp_path):
    import signal

    out = tmp_path / "stopped.graft"
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "train", "--data", str(tiny_folder),
                             "--model", "mobilenet_v3_small", "--random-weights", "--freeze", "none",
                             "--epochs", "200", "--batch-size", "4", "--patience", "0", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    try:
        for line in proc.stdout:
            if line.split()[:2] == ["epoch", "1/200"]:
                break
        else:
            pytest.fail("training ended before the first epoch was reported")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert "Stopping after this batch" in stderr and "Traceback" not in stderr
    assert "Saved the trained model" in stdout
    with zipfile.ZipFile(out) as zf:
        training = json.loads(zf.read("recipe.json"))["extra"]["training"]
    assert training["reason"] == "stopped" and 1 <= training["epochs_run"] < 200


@pytest.fixture(scope="module")
def seeded_project(tiny_folder, tmp_path_factory):
    """Trained with a seed, a validation fraction and a weighted head named on the command line."""
    out = tmp_path_factory.mktemp("seeded") / "seeded.graft"
    result = graft("train", "--data", str(tiny_folder), "--head", "kind:single::0.5", "--seed", "3",
                   "--val-fraction", "0.25", "--epochs", "1", "--batch-size", "8", "--no-augment", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "12 training and 4 validation images" in result.stdout
    return out


@pytest.mark.slow
def test_train_records_its_split_and_head_weight(seeded_project, tiny_folder):
    with zipfile.ZipFile(seeded_project) as zf:
        recipe = json.loads(zf.read("recipe.json"))
    training = recipe["extra"]["training"]
    assert (training["seed"], training["val_fraction"], training["split"]) == (3, 0.25, "random")
    assert training["data"] == str(tiny_folder.resolve()) and (training["n_train"], training["n_val"]) == (12, 4)
    [head] = recipe["heads"]
    assert (head["name"], head["loss_weight"]) == ("kind", 0.5)


@pytest.mark.slow
def test_evaluate_uses_the_training_split_and_says_what_it_evaluates(seeded_project, tiny_folder, tmp_path):
    from commands.evaluate import training_split
    from engine.data.loading import load_data
    from engine.project.project_file import open_project

    session = open_project(seeded_project)
    assert training_split(session.project_extra, tiny_folder) == (3, 0.25, True)
    assert training_split(session.project_extra, tmp_path) == (0, 0.2, False)
    assert training_split({}, tiny_folder) == (0, 0.2, None)
    # the seed matters: the default split would evaluate other images than training held out
    assert ({s.path for s in load_data(tiny_folder, seed=3, val_fraction=0.25).val}
            != {s.path for s in load_data(tiny_folder).val})

    result = graft("evaluate", str(seeded_project), "--data", str(tiny_folder), "--split", "val")
    assert result.returncode == 0, result.stderr
    assert (f"Evaluating the validation split of {tiny_folder.name} (seed 3, 25 %, as in training): 4 images"
            in result.stdout), result.stdout
    assert "Evaluated 4 images" in result.stdout
    result = graft("evaluate", str(seeded_project), "--data", str(tiny_folder))
    assert result.returncode == 0, result.stderr
    assert (f"Evaluating all 16 images of {tiny_folder.name}, including the 12 training images" in result.stdout)


@pytest.mark.slow
def test_evaluate_accepts_test_data_lacking_a_class(seeded_project, tiny_folder, tmp_path):
    holdout = tmp_path / "holdout"
    shutil.copytree(tiny_folder / "circle", holdout / "circle")
    result = graft("evaluate", str(seeded_project), "--data", str(holdout))
    assert result.returncode == 0, result.stderr
    assert "Evaluating all 8 images of holdout" in result.stdout and "not the data" not in result.stdout
    assert "Evaluated 8 images" in result.stdout
    csv = holdout / "test.csv"
    csv.write_text("image,kind\n" + "".join(f"circle/{f.name},circle\n" for f in sorted((holdout / "circle").iterdir())))
    result = graft("evaluate", str(seeded_project), "--data", str(csv))
    assert result.returncode == 0, result.stderr
    assert "Evaluated 8 images" in result.stdout
    csv.write_text("image,kind\ncircle/" + next((holdout / "circle").iterdir()).name + ",hexagon\n")
    result = graft("evaluate", str(seeded_project), "--data", str(csv))
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "row 2, column 'kind': unknown class 'hexagon'" in result.stderr


@pytest.mark.slow
def test_evaluate_opens_a_project_made_from_a_pickle_only_with_trust(tiny_folder, tmp_path):
    import torch
    import torchvision

    from engine.network.heads import HeadSpec
    from engine.network.loading import load_network
    from engine.surgery.operations import AddHead, DeleteOutputLayer
    from engine.project.project_file import save_project
    from engine.surgery.session import Session

    model = torchvision.models.mobilenet_v3_small()
    model.features[0][0].stride = (1, 1)  # no longer exactly torchvision's: only the pickle rebuilds it
    torch.save(model, tmp_path / "custom.pt")
    s = Session(load_network(tmp_path / "custom.pt", trust=True))
    s.do(DeleteOutputLayer())
    s.do(AddHead(HeadSpec("class", "single", labels=["circle", "square"]), seed=0))
    project = save_project(s, tmp_path / "c.graft")
    result = graft("evaluate", str(project), "--data", str(tiny_folder))
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "custom.pt" in result.stderr and "trust" in result.stderr and "Traceback" not in result.stderr
    assert "Evaluated" not in result.stdout
    result = graft("evaluate", str(project), "--data", str(tiny_folder), "--trust", "--batch-size", "8")
    assert result.returncode == 0, result.stderr
    assert "Evaluated 16 images" in result.stdout


@pytest.mark.slow
def test_a_head_at_a_layer_trains_and_the_layers_after_it_are_not_computed(tiny_folder, tmp_path):
    out = tmp_path / "exit.graft"
    common = ("--data", str(tiny_folder), "--model", "resnet18", "--random-weights", "--input-size", "64",
              "--epochs", "1", "--no-augment")
    result = graft("train", *common, "--head", "class:single@layer2", "--out", str(out))
    assert result.returncode == 0, result.stderr
    with zipfile.ZipFile(out) as zf:
        recipe = json.loads(zf.read("recipe.json"))
    assert [(h["name"], h["layer"]) for h in recipe["heads"]] == [("class", "layer2")]
    layers = graft("layers", "--model", str(out))
    assert layers.returncode == 0, layers.stderr
    line = {row.split()[0]: row for row in layers.stdout.splitlines() if row.strip()}
    assert "<- head class" in line["layer2"] and "not computed" in line["layer3"] and "not computed" not in line["layer1"]
    bad = graft("train", *common, "--head", "class:single@layer9", "--out", str(tmp_path / "bad.graft"))
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == ["graft: error: There is no layer 'layer9' in this network."]
