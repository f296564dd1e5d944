"""widgets.runs_view: runs compared in a table, the checked ones overlaid."""
from __future__ import annotations

import pytest
from PySide6.QtCore import Qt

from engine.training.record import TrainingRecord
from widgets.runs_view import RunsView


def _run(vals: list[float], lr: float) -> TrainingRecord:
    history = [{"epoch": i + 1, "train_loss": 1.0, "val_loss": v, "metrics": {"shape": {"accuracy": 1 - v}}}
               for i, v in enumerate(vals)]
    return TrainingRecord(data="/d", config={"epochs": len(vals), "lr_heads": lr}, reason="completed",
                          best_epoch=len(vals), epochs_run=len(vals), history=history)


def test_two_runs_overlaid_and_a_third_checked_in(qtbot):
    view = RunsView()
    qtbot.addWidget(view)
    view.set_runs([_run([0.9, 0.5], 1e-3), _run([0.8, 0.4, 0.3], 3e-3), _run([1.0], 1e-2)], checked=[1, 2])
    assert view.model.rowCount() == 3
    assert [view.model.item(i, 0).text() for i in range(3)] == ["1", "2", "3"]
    assert view.curve_choice.currentData() == "val_loss"
    xs, ys = view.curve_data(2)
    assert list(xs) == [1, 2, 3] and list(ys) == [0.8, 0.4, 0.3]
    assert view.curve_data(3) is None
    with qtbot.waitSignal(view.checkedChanged) as seen:
        view.model.item(2, 0).setCheckState(Qt.CheckState.Checked)
    assert seen.args == [[1, 2, 3]] and view.curve_data(3) is not None
    view.curve_choice.setCurrentIndex(view.curve_choice.findData("shape accuracy"))
    xs, ys = view.curve_data(1)
    assert list(ys) == pytest.approx([0.1, 0.5])
    view.model.item(0, 0).setCheckState(Qt.CheckState.Unchecked)
    assert view.curve_data(1) is None and len(view.plot.listDataItems()) == 2


def test_empty(qtbot):
    view = RunsView()
    qtbot.addWidget(view)
    assert view.model.rowCount() == 0 and not view.empty.isHidden()


def test_the_table_shows_the_rows_it_holds(qtbot):
    """The table view itself has the rows (it hears the model), after a first set and after another."""
    view = RunsView()
    qtbot.addWidget(view)
    view.show()
    qtbot.wait(10)
    view.set_runs([_run([0.9, 0.5], 1e-3)])
    qtbot.wait(10)
    view.set_runs([_run([0.9, 0.5], 1e-3), _run([0.8, 0.4], 3e-3)])
    qtbot.wait(10)
    table = view.table
    assert table.verticalHeader().count() == 2 == view.model.rowCount()
    assert table.visualRect(view.model.index(1, 0)).height() > 0 and table.columnWidth(0) > 0
    assert view.checked_runs() == [1, 2] and view.curve_data(1) is not None


def test_a_budgeted_runs_stages_are_listed_with_their_time_and_validation(qtbot):
    view = RunsView()
    qtbot.addWidget(view)
    budgeted = _run([0.9, 0.5, 0.4], 3e-3)
    budgeted.plan = {"budget": 600.0, "stages": []}
    budgeted.seconds = 590.0
    budgeted.stages = [
        {"index": 1, "title": "heads", "kind": "heads", "epochs": 30, "epochs_run": 30, "views": 4, "seconds": 200.0,
         "estimate": 180.0, "val_loss": 0.5, "metrics": {"shape": {"accuracy": 0.8}}, "kept": False, "blocks": []},
        {"index": 2, "title": "top 2 blocks", "kind": "blocks", "epochs": 8, "epochs_run": 6, "views": 4,
         "seconds": 380.0, "estimate": 400.0, "val_loss": 0.4, "metrics": {"shape": {"accuracy": 0.9}}, "kept": True,
         "blocks": ["layer4", "layer3"], "note": ""}]
    view.set_runs([_run([0.9], 1e-3), budgeted])
    assert view.stages_shown == 2 and not view.stages_box.isHidden()
    rows = [[view.stage_model.item(r, c).text() for c in range(view.stage_model.columnCount())] for r in range(2)]
    header = [view.stage_model.horizontalHeaderItem(c).text() for c in range(view.stage_model.columnCount())]
    assert rows[1][header.index("time")] == "6:20" and rows[1][header.index("estimate")] == "6:40"
    assert rows[1][header.index("epochs")] == "6/8" and rows[1][header.index("shape")] == "acc 0.900"
    assert rows[1][header.index("kept")] == "yes" and rows[0][header.index("kept")] == ""
    assert "600 s budget" in view.stage_title.text()
    view.table.selectRow(0)  # a plain run: no stages to list
    assert view.stages_box.isHidden() and view.stages_shown is None
    view.table.selectRow(1)
    assert view.stages_shown == 2
