"""The learning rate finder's curve: smoothed loss against the rate on a log axis, the suggestion marked,
and a "Use this rate" button that hands the suggested rate on (:class:`RateFinderDialog` shows it as a
window of its own from the Train tab).

Adapts :class:`engine.training.rate_finder.RateFinderResult` (:meth:`RateFinderView.set_result`); while the
test runs, :meth:`add_point` takes each step's (rate, loss) from the trainer's StepEvents.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Signal
from PySide6.QtWidgets import QDialog, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from engine.training.rate_finder import BETA, smooth


class RateFinderView(QWidget):
    """Plot + suggestion label + "Use this rate". ``applied(rate)`` is emitted when the user applies the
    suggestion; ``heads_rate`` says whose rate it is (the heads', else the network's)."""

    applied = Signal(float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.suggestion: float | None = None
        self.heads_rate = True
        self._lrs: list[float] = []
        self._losses: list[float] = []
        self.plot = pg.PlotWidget(background="w")
        self.plot.setLogMode(x=True, y=False)
        self.plot.getAxis("bottom").enableAutoSIPrefix(False)  # log ticks read as rates (1e-07 … 10), unscaled
        self.plot.showGrid(x=True, y=True, alpha=0.25)
        self.plot.setLabel("bottom", "learning rate")
        self.plot.setLabel("left", "training loss (smoothed)")
        self.raw = self.plot.plot(pen=None, symbol="o", symbolSize=3, symbolPen=None, symbolBrush=(160, 160, 160))
        self.curve = self.plot.plot(pen=pg.mkPen("#1f77b4", width=2))
        self.marker = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen("#d62728", width=2))
        self.marker.setVisible(False)
        self.plot.addItem(self.marker)
        self.label = QLabel("Run the finder to get a suggested learning rate.")
        self.label.setObjectName("hint")
        self.label.setWordWrap(True)
        self.apply_button = QPushButton("Use this rate")
        self.apply_button.setObjectName("applyRate")
        self.apply_button.setEnabled(False)
        self.apply_button.setToolTip("Use the suggested rate as the heads' learning rate")
        self.apply_button.clicked.connect(self._apply)
        bar = QHBoxLayout()
        bar.addWidget(self.label, 1)
        bar.addWidget(self.apply_button)
        layout = QVBoxLayout(self)
        layout.addWidget(self.plot, 1)
        layout.addLayout(bar)

    # -- data --------------------------------------------------------------------------------------------
    def clear(self) -> None:
        self._lrs, self._losses = [], []
        self.suggestion = None
        self.raw.setData([], [])
        self.curve.setData([], [])
        self.marker.setVisible(False)
        self.apply_button.setEnabled(False)
        self.apply_button.setText("Use this rate")
        self.label.setText("Running the learning rate finder…")

    def set_failed(self, message: str) -> None:
        """The test gave no suggestion (it diverged at once, the loss never fell …): say why."""
        self.suggestion = None
        self.marker.setVisible(False)
        self.apply_button.setEnabled(False)
        self.label.setText(message)

    def add_point(self, lr: float, loss: float) -> None:
        """One step of a running test (a StepEvent's ``lr`` and ``loss``)."""
        if not (lr > 0 and math.isfinite(loss)):
            return
        self._lrs.append(float(lr))
        self._losses.append(float(loss))
        self._draw(self._lrs, self._losses, smooth(self._losses, BETA))

    def set_result(self, result: Any) -> None:
        """Show a finished test: its curve and its suggestion, which Apply then emits."""
        self._lrs, self._losses = list(result.lrs), list(result.losses)
        self._draw(result.lrs, result.losses, result.smoothed)
        self.suggestion = float(result.suggestion)
        self.heads_rate = bool(getattr(result, "heads_rate", True))
        self.marker.setValue(math.log10(self.suggestion))  # the x axis is in log10 units
        self.marker.setVisible(True)
        self.apply_button.setEnabled(True)
        self.apply_button.setText(f"Use this rate ({self.suggestion:.2g})")
        self.apply_button.setToolTip(f"Use {self.suggestion:.3g} as the "
                                     + ("heads' learning rate" if self.heads_rate else "network's learning rate"))
        self.label.setText(result.describe())

    def _draw(self, lrs: list[float], losses: list[float], smoothed: list[float]) -> None:
        keep = [i for i, v in enumerate(smoothed) if math.isfinite(v)]
        x = np.asarray([lrs[i] for i in keep], dtype=float)
        self.curve.setData(x, np.asarray([smoothed[i] for i in keep], dtype=float))
        raw = [(lr, v) for lr, v in zip(lrs, losses) if math.isfinite(v)]
        self.raw.setData(np.asarray([r[0] for r in raw], dtype=float), np.asarray([r[1] for r in raw], dtype=float))
        if keep:  # leave out the divergence's spike so the descent is readable
            values = [smoothed[i] for i in keep]
            low, first = min(values), values[0]
            self.plot.setYRange(low - 0.05 * (first - low + 1e-9), max(first, low) + 0.5 * (first - low + 1e-9))

    def curve_data(self) -> tuple[np.ndarray, np.ndarray]:
        """The smoothed curve as plotted (empty arrays when there is none)."""
        xs, ys = self.curve.getData()
        return (np.asarray([]), np.asarray([])) if xs is None else (xs, ys)

    def _apply(self) -> None:
        if self.suggestion is not None:
            self.applied.emit(self.suggestion)


class RateFinderDialog(QDialog):
    """The finder's curve in a window of its own beside the Train tab (not modal: the window stays
    usable while the test runs in the background). ``view`` is the :class:`RateFinderView`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Learning rate finder")
        self.setModal(False)
        self.view = RateFinderView(self)
        self.close_button = QPushButton("Close", self)
        self.close_button.clicked.connect(self.close)
        self.view.layout().itemAt(1).layout().addWidget(self.close_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.addWidget(self.view)
        self.resize(640, 420)
