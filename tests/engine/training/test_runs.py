"""engine.training.runs: a project's runs as rows and curves."""
from __future__ import annotations

from engine.training.record import TrainingRecord
from engine.training.runs import curves, final_metrics, runs_of, runs_table


def _run(best: int, accs: list[float], lr: float) -> TrainingRecord:
    history = [{"epoch": i + 1, "train_loss": 1.0 / (i + 1), "val_loss": 2.0 - a,
                "metrics": {"shape": {"accuracy": a}, "size": {"mae": 0.5 - a / 10}}} for i, a in enumerate(accs)]
    return TrainingRecord(data="/d/labels.csv", config={"epochs": len(accs), "batch_size": 8, "lr_heads": lr},
                          reason="completed", best_epoch=best, best_val_loss=2.0 - accs[best - 1],
                          epochs_run=len(accs), history=history, seconds=12.4, device="cpu")


def test_rows_numbered_in_order_with_the_kept_epochs_metrics():
    extra = _run(2, [0.5, 0.8, 0.7], 1e-3).store({})
    extra = _run(1, [0.9], 3e-3).store(extra)
    records = runs_of(extra)
    assert [r.config["lr_heads"] for r in records] == [1e-3, 3e-3]
    assert final_metrics(records[0])["shape"]["accuracy"] == 0.8  # the best epoch, not the last
    table = runs_table(records)
    assert [row[0] for row in table.rows] == ["1", "2"]
    shape, size = table.columns.index("shape"), table.columns.index("size")
    assert table.rows[0][shape] == "acc 0.800" and table.rows[1][shape] == "acc 0.900"
    assert table.rows[0][size] == "MAE 0.420"
    assert table.rows[0][table.columns.index("epochs")] == "3/3"
    assert "labels.csv" in table.text().splitlines()[1]


def test_projects_with_only_the_latest_run_and_none():
    assert runs_of({}) == [] and runs_of(None) == []
    legacy = {"training": _run(1, [0.6], 1e-3).to_dict()}
    assert len(runs_of(legacy)) == 1


def test_curves_for_overlaying():
    c = curves(_run(2, [0.5, 0.8], 1e-3))
    assert c["val_loss"] == [(1, 1.5), (2, 1.2)]
    assert c["shape accuracy"] == [(1, 0.5), (2, 0.8)]
    assert [e for e, _ in c["size mae"]] == [1, 2]
