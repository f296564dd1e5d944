"""engine.training.record: the one record of a training run that the window, the CLI and projects share."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from engine.training.record import DEFAULT_SEED, DEFAULT_VAL_FRACTION, TrainingRecord


def _data(tmp_path: Path):
    return SimpleNamespace(path=tmp_path / "labels.csv", root=tmp_path, seed=7, val_fraction=0.25,
                           split_from="seed", train=[1, 2, 3], val=[4])


def test_begin_finish_store_and_read_back(tmp_path):
    config = SimpleNamespace(epochs=3, lr=1e-3)
    record = TrainingRecord.begin(_data(tmp_path), config)
    assert record.data == str((tmp_path / "labels.csv").resolve())
    assert (record.seed, record.val_fraction, record.n_train, record.n_val) == (7, 0.25, 3, 1)
    assert record.config == {"epochs": 3, "lr": 1e-3}
    record.finish({"reason": "completed", "best_epoch": 2, "best_val_loss": 0.5, "epochs_run": 3,
                   "history": [{"epoch": 1}], "device": "cpu", "unrelated": 1})
    extra = record.store({"data": "old"})
    assert extra["data"] == "old" and extra["training"]["reason"] == "completed"
    back = TrainingRecord.latest(extra)
    assert back == record
    # a second run is added to the runs, the latest is the one read back
    second = TrainingRecord.begin(_data(tmp_path), config).finish({"reason": "stopped"})
    extra = second.store(extra)
    assert [r["reason"] for r in extra["runs"]] == ["completed", "stopped"]
    assert TrainingRecord.latest(extra).reason == "stopped"


def test_window_projects_with_only_a_data_path_and_bad_values(tmp_path):
    assert TrainingRecord.latest({}) is None
    assert TrainingRecord.latest(None) is None
    legacy = TrainingRecord.latest({"data": str(tmp_path)})
    assert legacy.data == str(tmp_path) and legacy.seed == DEFAULT_SEED
    bad = TrainingRecord.latest({"training": {"data": "x.csv", "seed": "three", "val_fraction": 2.0,
                                              "config": {"seed": 5}}})
    assert (bad.seed, bad.val_fraction) == (5, DEFAULT_VAL_FRACTION)
    nan = TrainingRecord.latest({"training": {"data": "x.csv", "val_fraction": float("nan"), "config": []}})
    assert nan.val_fraction == DEFAULT_VAL_FRACTION and nan.config == {}
