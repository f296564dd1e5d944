"""The runs a project keeps: a table comparing them and their curves overlaid.

Adapts :mod:`engine.training.runs`: :meth:`RunsView.set_runs` takes the project's TrainingRecords; the table
is a QStandardItemModel with a check box per run (checked runs are overlaid), and the plot holds one
PlotDataItem per checked run for the chosen curve (validation loss, training loss, or a head's metric),
updated with ``setData``. A time-budgeted run's stages (:func:`engine.training.runs.stage_table`: each stage's
time against its estimate and its best validation result) are listed under the table for the selected run
(at first the last one that has stages).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QStandardItem, QStandardItemModel
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QHeaderView, QLabel, QSplitter, QTableView, QVBoxLayout, QWidget

from engine.training.runs import curves, runs_table, stage_table

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
CURVE_TITLES = {"val_loss": "validation loss", "train_loss": "training loss"}


class RunsView(QWidget):
    """Table of runs (numbered 1, 2, … in order) above an overlay of the checked runs' curves."""

    checkedChanged = Signal(list)  # the run numbers (1-based) overlaid

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.records: list[Any] = []
        self._filling = False
        self._curves: list[dict[str, list[tuple[int, float]]]] = []
        self.items: dict[int, pg.PlotDataItem] = {}  # run index -> its curve in the plot
        self.model, self.table = self._table("runsTable")
        self.table.setSelectionBehavior(QTableView.SelectionBehavior.SelectRows)
        self.curve_choice = QComboBox()
        self.curve_choice.setObjectName("runsCurve")
        self.plot = pg.PlotWidget(background="w")
        self.plot.showGrid(x=True, y=True, alpha=0.25)
        self.plot.setLabel("bottom", "epoch")
        self.legend = self.plot.addLegend(offset=(-10, 10))
        self.stage_model, self.stage_table = self._table("stagesTable")
        self.stage_title = QLabel("")
        self.stage_title.setObjectName("hint")
        self.stages_shown: int | None = None  # the run (1-based) whose stages are listed
        self.empty = QLabel("No training run yet: every run you train is kept here, to compare.")
        self.empty.setObjectName("hint")
        self.empty.setWordWrap(True)

        bar = QHBoxLayout()
        bar.addWidget(QLabel("Overlay"))
        bar.addWidget(self.curve_choice, 1)
        lower = QWidget()
        column = QVBoxLayout(lower)
        column.setContentsMargins(0, 0, 0, 0)
        column.addLayout(bar)
        column.addWidget(self.plot, 1)
        stages = QWidget()
        stage_column = QVBoxLayout(stages)
        stage_column.setContentsMargins(0, 0, 0, 0)
        stage_column.addWidget(self.stage_title)
        stage_column.addWidget(self.stage_table, 1)
        self.stages_box = stages
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.table)
        split.addWidget(stages)
        split.addWidget(lower)
        split.setChildrenCollapsible(False)
        layout = QVBoxLayout(self)
        layout.addWidget(self.empty)
        layout.addWidget(split, 1)
        self.model.itemChanged.connect(self._on_item_changed)
        self.table.selectionModel().currentRowChanged.connect(lambda current, _: self.show_stages(current.row() + 1))
        self.curve_choice.currentIndexChanged.connect(lambda _: self._redraw())
        self.set_runs([])

    def _table(self, name: str) -> tuple[QStandardItemModel, QTableView]:
        model = QStandardItemModel(self)
        table = QTableView()
        table.setModel(model)
        table.setObjectName(name)
        table.verticalHeader().hide()
        table.setAlternatingRowColors(True)
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        return model, table

    def set_runs(self, records: Sequence[Any], checked: Sequence[int] | None = None) -> None:
        """Show ``records`` (TrainingRecords, in the order they ran); ``checked``: the run numbers to
        overlay (default: the last two)."""
        self.records = list(records)
        self._curves = [curves(r) for r in self.records]
        table = runs_table(self.records)
        # The model's signals must reach the table (blocked, the view never learnt of the new rows and
        # stayed empty): ``_filling`` keeps the check boxes being set from redrawing once per row instead.
        self._filling = True
        self.model.clear()
        self.model.setHorizontalHeaderLabels(table.columns)
        wanted = set(checked) if checked is not None else set(range(max(1, len(table.rows) - 1), len(table.rows) + 1))
        for i, row in enumerate(table.rows, 1):
            items = [QStandardItem(v) for v in row]
            for item in items:
                item.setEditable(False)
            items[0].setCheckable(True)
            items[0].setCheckState(Qt.CheckState.Checked if i in wanted else Qt.CheckState.Unchecked)
            items[0].setForeground(QColor(PALETTE[(i - 1) % len(PALETTE)]))
            self.model.appendRow(items)
        self._filling = False
        keys = list(dict.fromkeys(k for c in self._curves for k in c))
        keys.sort(key=lambda k: (k not in ("val_loss", "train_loss"), k != "val_loss", k))
        current = self.curve_choice.currentData()
        self.curve_choice.blockSignals(True)
        self.curve_choice.clear()
        for key in keys:
            self.curve_choice.addItem(CURVE_TITLES.get(key, key), key)
        if current in keys:
            self.curve_choice.setCurrentIndex(keys.index(current))
        self.curve_choice.blockSignals(False)
        self.empty.setVisible(not self.records)
        budgeted = [i for i, r in enumerate(self.records, 1) if r.stages]
        self.show_stages(budgeted[-1] if budgeted else None)
        self._redraw()

    def show_stages(self, run: int | None) -> None:
        """List the stages of run ``run`` (1-based) when it was a time-budgeted run; else hide the list."""
        record = self.records[run - 1] if run is not None and 0 < run <= len(self.records) else None
        if record is None or not record.stages:
            self.stages_box.setVisible(False)
            self.stages_shown = None
            return
        table = stage_table(record)
        self.stage_model.clear()
        self.stage_model.setHorizontalHeaderLabels(table.columns)
        for row in table.rows:
            items = [QStandardItem(v) for v in row]
            for item in items:
                item.setEditable(False)
                item.setToolTip(item.text())
            self.stage_model.appendRow(items)
        header = self.stage_table.horizontalHeader()  # the last column (the note) takes the width left, elided,
        header.setSectionResizeMode(len(table.columns) - 1, QHeaderView.ResizeMode.Stretch)  # whole in its tip
        budget = (record.plan or {}).get("budget")
        used = f"{record.seconds:.0f} s" if isinstance(record.seconds, (int, float)) else "?"
        self.stage_title.setText(f"Run {run}, by stage: what the time bought ({used} of a "
                                 f"{budget:.0f} s budget)" if isinstance(budget, (int, float)) else f"Run {run}, by stage")
        self.stages_box.setVisible(True)
        self.stages_shown = run

    def checked_runs(self) -> list[int]:
        return [i + 1 for i in range(self.model.rowCount())
                if self.model.item(i, 0).checkState() == Qt.CheckState.Checked]

    def _on_item_changed(self, item: QStandardItem) -> None:
        if item.column() == 0 and not self._filling:
            self._redraw()
            self.checkedChanged.emit(self.checked_runs())

    def _redraw(self) -> None:
        key = self.curve_choice.currentData()
        checked = set(self.checked_runs())
        for index in [i for i in self.items if i + 1 not in checked or key is None]:
            self.plot.removeItem(self.items.pop(index))
        self.legend.clear()
        if key is None:
            return
        self.plot.setLabel("left", CURVE_TITLES.get(key, key))
        for index in sorted(i - 1 for i in checked):
            points = self._curves[index].get(key, [])
            item = self.items.get(index)
            if item is None:
                pen = pg.mkPen(PALETTE[index % len(PALETTE)], width=2)
                item = self.items[index] = self.plot.plot(pen=pen, symbol="o", symbolSize=5,
                                                          symbolBrush=PALETTE[index % len(PALETTE)])
            xs = np.array([p[0] for p in points], dtype=float)
            ys = np.array([p[1] for p in points], dtype=float)
            item.setData(xs, ys)
            self.legend.addItem(item, f"run {index + 1}")

    def curve_data(self, run: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The plotted points of run ``run`` (1-based), or None when it is not overlaid."""
        item = self.items.get(run - 1)
        return None if item is None else item.getData()
