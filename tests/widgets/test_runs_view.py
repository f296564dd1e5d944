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
