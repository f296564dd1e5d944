"""``main.py runs`` and ``main.py train --tensorboard``: every run is kept in the project and listed."""
from __future__ import annotations

import shutil

import pytest

from engine.data.demo_data import ensure_demo_folder
from test_cli_train import graft, graft_child


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    demo = ensure_demo_folder(tmp_path_factory.mktemp("demo"))
    root = tmp_path_factory.mktemp("tiny")
    for cls in ("circle", "star"):
        (root / cls).mkdir()
        for f in sorted((demo / cls).iterdir())[:8]:
            shutil.copy(f, root / cls / f.name)
    work = tmp_path_factory.mktemp("runs")
    first, second = work / "first.graft", work / "second.graft"
    done = graft("train", "--data", str(root), "--epochs", "1", "--batch-size", "8", "--no-augment",
                 "--out", str(first))
    assert done.returncode == 0, done.stderr
    done = graft("train", "--model", str(first), "--data", str(root), "--epochs", "2", "--batch-size", "8",
                 "--no-augment", "--lr-heads", "0.003", "--tensorboard", str(work / "tb"), "--out", str(second))
    assert done.returncode == 0, done.stderr
    return first, second, work / "tb"


@pytest.mark.slow
def test_training_again_adds_a_run_and_runs_lists_them_in_order(two_runs):
    first, second, _ = two_runs
    one = graft("runs", str(first))
    assert one.returncode == 0, one.stderr
    assert len(one.stdout.strip().splitlines()) == 2  # header + run 1
    out = graft("runs", str(second))
    assert out.returncode == 0, out.stderr
    header, *rows = out.stdout.strip().splitlines()
    assert header.split()[:3] == ["run", "started", "data"] and "class" in header
    assert [r.split()[0] for r in rows] == ["1", "2"]
    assert "1/1" in rows[0] and "2/2" in rows[1]  # epochs run / planned
    assert "0.001" in rows[0] and "0.003" in rows[1]  # each run's own heads' learning rate
    assert all("acc " in r for r in rows)


def test_tensorboard_event_files_hold_the_curves(two_runs):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [run] = list(two_runs[2].iterdir())
    acc = EventAccumulator(str(run))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/step", "lr", "loss/train", "loss/val", "class/accuracy"} <= tags
    assert [e.step for e in acc.Scalars("loss/val")] == [1, 2]


@pytest.mark.slow
def test_runs_of_something_that_is_not_a_project(tmp_path):
    bad = tmp_path / "x.graft"
    bad.write_text("not a zip")
    out = graft_child("runs", str(bad))  # a real process: one line, nothing of the interpreter's after it
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "graft: error:" in out.stderr
