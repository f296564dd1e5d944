"""Live training curves: loss per step and per epoch, and each head's validation metric per epoch.

Every curve is one PlotDataItem made in :meth:`CurvePanel.reset` and fed with ``setData``; incoming
points only mark curves dirty, and a single-shot QTimer redraws at most every :attr:`CurvePanel.REDRAW_MS`
(5 times a second) however fast the worker's batches arrive. Step curves are decimated beyond
:attr:`CurvePanel.MAX_POINTS` points, so memory stays bounded on long runs.

What a redraw costs is the painting, on the GUI thread: Qt strokes a pen wider than one pixel, or an
antialiased one, as a filled outline, and a noisy per-step loss curve of a few thousand points then takes
0.4-1.7 s to paint (2000-20000 steps, two heads, measured offscreen on the 2-core box), the event loop
stalled throughout. The step curves are therefore drawn with one-pixel cosmetic pens, not antialiased
(12-15 ms for the same curves); the per-epoch curves (a point per epoch, dashed, with dots) keep their
width and antialiasing only while they are short (:attr:`CurvePanel.SMOOTH_POINTS`).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, QSize, Qt, QTimer
from PySide6.QtGui import QColor, QFontMetrics, QPainter, QPaintEvent, QPalette, QPen
from PySide6.QtWidgets import QSizePolicy, QSplitter, QVBoxLayout, QWidget

from .head_diagram import head_colour

# Each kind's validation metric per epoch (engine.training.metrics.MAIN_METRIC, without importing torch here).
MAIN_METRIC = {"single": "accuracy", "multi": "macro_f1", "regression": "mae", "segment": "miou", "detect": "map_50"}
METRIC_TITLES = {"accuracy": "accuracy", "macro_f1": "macro F1", "mae": "MAE", "miou": "mIoU", "map_50": "mAP@0.5"}


class _Series:
    """Points of one curve (Python lists, decimated in halves when they outgrow ``limit``)."""

    __slots__ = ("item", "xs", "ys", "limit")

    def __init__(self, item: pg.PlotDataItem, limit: int) -> None:
        self.item, self.xs, self.ys, self.limit = item, [], [], limit

    def add(self, x: float, y: float) -> None:
        self.xs.append(x)
        self.ys.append(y)
        if len(self.xs) > self.limit:
            n = len(self.xs) // 2 * 2
            xs, ys = np.asarray(self.xs[:n]), np.asarray(self.ys[:n])
            self.xs = xs[0::2].tolist() + self.xs[n:]
            self.ys = ((ys[0::2] + ys[1::2]) / 2).tolist() + self.ys[n:]

    def push(self) -> None:
        self.item.setData(np.asarray(self.xs, dtype=float), np.asarray(self.ys, dtype=float))


class IntegerAxis(pg.AxisItem):
    """An axis with ticks on whole numbers only (epochs)."""

    def tickSpacing(self, minVal: float, maxVal: float, size: float):
        levels = [(s, o) for s, o in super().tickSpacing(minVal, maxVal, size) if s >= 1]
        return levels or [(1.0, 0.0)]


class LegendStrip(QWidget):
    """A legend under a plot: a line sample (solid or dashed, with or without a dot) and a label per
    entry, wrapped over as many rows as the width needs. Kept out of the plot so it hides no data."""

    SAMPLE = 22
    SPACING = 14

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._entries: list[tuple[str, QColor, bool, bool]] = []
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)

    def set_entries(self, entries: Sequence[tuple[str, QColor, bool, bool]]) -> None:
        """``[(label, colour, dashed, dot), …]``."""
        self._entries = list(entries)
        self._fit()
        self.update()

    def _fit(self) -> None:
        height = self.heightForWidth(max(self.width(), 1))
        if height != self.height() or self.minimumHeight() != height:
            self.setFixedHeight(height)

    def labels(self) -> list[str]:
        return [e[0] for e in self._entries]

    def _layout(self, width: int) -> list[tuple[int, int, tuple[str, QColor, bool, bool]]]:
        fm = QFontMetrics(self.font())
        x, y, row_h, out = 8, 4, fm.height() + 4, []
        for entry in self._entries:
            w = self.SAMPLE + 6 + fm.horizontalAdvance(entry[0])
            if x > 8 and x + w > width - 8:
                x, y = 8, y + row_h
            out.append((x, y, entry))
            x += w + self.SPACING
        return out

    def hasHeightForWidth(self) -> bool:
        return True

    def heightForWidth(self, width: int) -> int:
        if not self._entries:
            return 0
        fm = QFontMetrics(self.font())
        last_y = self._layout(width)[-1][1]
        return last_y + fm.height() + 8

    def sizeHint(self) -> QSize:
        return QSize(300, self.heightForWidth(max(300, self.width())))

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit()

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        fm = QFontMetrics(self.font())
        text = self.palette().color(QPalette.ColorRole.WindowText)
        for x, y, (label, colour, dashed, dot) in self._layout(self.width()):
            mid = y + fm.height() / 2
            pen = QPen(colour, 2, Qt.PenStyle.DashLine if dashed else Qt.PenStyle.SolidLine)
            if dashed:
                pen.setDashPattern([3, 2])
            p.setPen(pen)
            p.drawLine(QPointF(x, mid), QPointF(x + self.SAMPLE, mid))
            if dot:
                p.setPen(Qt.PenStyle.NoPen)
                p.setBrush(colour)
                p.drawEllipse(QPointF(x + self.SAMPLE / 2, mid), 3, 3)
            p.setPen(text)
            p.drawText(QRectF(x + self.SAMPLE + 6, y, fm.horizontalAdvance(label) + 2, fm.height()),
                       Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, label)
        p.end()


def _name_kind(head: tuple[str, str] | str | Any) -> tuple[str, str]:
    if isinstance(head, str):
        return head, ""
    if isinstance(head, (tuple, list)):
        return str(head[0]), str(head[1])
    return str(head.name), str(head.kind)


def _finite(value: float | None) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


class CurvePanel(QWidget):
    """Two plots: "Loss" (training loss per step, solid; validation loss per epoch, dashed with dots, for
    the total and, with several heads, for each head) and "Validation metric" (accuracy, macro F1 or MAE
    per head and epoch; MAE on its own right-hand axis when classification heads share the plot). Curve
    names for :meth:`curve`: ``train:total``, ``val:total``, ``train:<head>``, ``val:<head>``,
    ``metric:<head>``."""

    MAX_POINTS = 20_000
    REDRAW_MS = 200
    SMOOTH_POINTS = 30  # an epoch curve longer than this is drawn like a step curve (one pixel, aliased)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.redraw_count = 0
        self._series: dict[str, _Series] = {}
        self._dirty: set[str] = set()
        self._heads: list[tuple[str, str]] = []
        self._metric_keys: dict[str, str] = {}
        self._last_step = 0.0
        self._mae_box: pg.ViewBox | None = None

        pal = self.palette()
        self._bg = pal.color(QPalette.ColorRole.Base)
        self._fg = pal.color(QPalette.ColorRole.Text)
        self.loss_plot, self.loss_legend, loss_box = self._make_plot("Loss", "step", "loss")
        self.metric_plot, self.metric_legend, metric_box = self._make_plot(
            "Validation metric", "epoch", "accuracy / F1", bottom=IntegerAxis("bottom"))
        self.splitter = QSplitter(Qt.Orientation.Horizontal, self)
        self.splitter.addWidget(loss_box)
        self.splitter.addWidget(metric_box)
        self.splitter.setChildrenCollapsible(False)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.splitter)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(self.REDRAW_MS)
        self._timer.timeout.connect(self.flush)
        self.reset([])

    def _make_plot(self, title: str, x_label: str, y_label: str,
                   bottom: pg.AxisItem | None = None) -> tuple[pg.PlotWidget, LegendStrip, QWidget]:
        plot = pg.PlotWidget(background=self._bg, axisItems={"bottom": bottom} if bottom else None)
        item = plot.getPlotItem()
        fg = self._fg.name()
        item.setTitle(title, color=fg, size="11pt")
        for side in ("left", "bottom", "right"):
            axis = item.getAxis(side)
            axis.setPen(pg.mkPen(QColor(self._fg.red(), self._fg.green(), self._fg.blue(), 110)))
            axis.setTextPen(pg.mkPen(fg))
            axis.enableAutoSIPrefix(False)
        item.setLabel("bottom", x_label, color=fg)
        item.setLabel("left", y_label, color=fg)
        item.showGrid(x=True, y=True, alpha=0.12)
        item.setClipToView(True)
        item.setDownsampling(auto=True, mode="peak")
        plot.setMinimumSize(260, 180)
        legend = LegendStrip()
        box = QWidget()
        box.setAutoFillBackground(True)
        pal = box.palette()
        pal.setColor(QPalette.ColorRole.Window, self._bg)
        box.setPalette(pal)
        column = QVBoxLayout(box)
        column.setContentsMargins(0, 0, 0, 4)
        column.setSpacing(0)
        column.addWidget(plot, 1)
        column.addWidget(legend)
        return plot, legend, box

    # -- public API ------------------------------------------------------------------------------------
    def set_orientation(self, orientation: Qt.Orientation) -> None:
        """Plots side by side (horizontal, the default) or stacked."""
        self.splitter.setOrientation(orientation)

    def reset(self, heads: Sequence[tuple[str, str] | str | Any]) -> None:
        """Clear everything and make the curves for ``heads``: ``[(name, kind), …]`` (HeadSpecs and bare
        names are accepted too; with a bare name the metric is recognised when it first arrives)."""
        self._timer.stop()
        self._dirty.clear()
        self._series.clear()
        self._heads = [_name_kind(h) for h in heads]
        self._metric_keys = {n: MAIN_METRIC.get(k, "") for n, k in self._heads}
        self._last_step = 0.0
        loss, metric = self.loss_plot.getPlotItem(), self.metric_plot.getPlotItem()
        loss.clear()
        metric.clear()
        if self._mae_box is not None:
            for item in list(self._mae_box.addedItems):
                self._mae_box.removeItem(item)

        several = len(self._heads) > 1
        fg, grey = self._fg, QColor(self._fg)
        grey.setAlphaF(0.55)
        self._add("train:total", loss, self._thin(fg))
        self._add("val:total", loss, self._dashed(fg), symbol=True)
        for i, (name, _) in enumerate(self._heads):
            colour = QColor(head_colour(i))
            self._add(f"train:{name}", loss if several else None, self._thin(colour))
            self._add(f"val:{name}", loss if several else None, self._dashed(colour), symbol=True)
        if several:
            entries = [("total", fg, False, False)]
            entries += [(name, QColor(head_colour(i)), False, False) for i, (name, _) in enumerate(self._heads)]
            entries += [("training (per step)", grey, False, False), ("validation (per epoch)", grey, True, True)]
        else:
            entries = [("training loss (per step)", fg, False, False), ("validation loss (per epoch)", fg, True, True)]
        self.loss_legend.set_entries(entries if self._heads else [])

        kinds = {k for _, k in self._heads}
        split = "regression" in kinds and len(kinds) > 1
        mae_box = self._mae_viewbox() if split else None
        if split:
            metric.showAxis("right")
        else:
            metric.hideAxis("right")
        entries = []
        for i, (name, kind) in enumerate(self._heads):
            key = self._metric_keys[name]
            colour = QColor(head_colour(i))
            on_right = split and kind == "regression"
            self._add(f"metric:{name}", mae_box if on_right else metric, pg.mkPen(colour, width=2), symbol=True)
            title = METRIC_TITLES.get(key, key)
            label = f"{name} · {title}" if title else name
            entries.append((label + (" (right axis)" if on_right else ""), colour, False, True))
        self.metric_legend.set_entries(entries)
        only_regression = kinds == {"regression"}
        dense = sorted({METRIC_TITLES[MAIN_METRIC[k]] for k in kinds & {"segment", "detect"}})
        metric.setLabel("left", "MAE (lower is better)" if only_regression else "metric" if "" in kinds else
                        " / ".join(["accuracy / F1", *dense]) if dense else "accuracy / F1", color=self._fg.name())
        metric.enableAutoRange(axis="y", enable=True)
        if self._heads and not only_regression and "" not in kinds:
            metric.setYRange(0, 1, padding=0.03)
            metric.enableAutoRange(axis="y", enable=False)
        self.redraw_count = 0

    def add_steps(self, points: Iterable[tuple[int, float, Mapping[str, float]] | Mapping[str, Any]]) -> None:
        """Training batches: ``(global step, total loss, {head: loss})`` each (or the worker's step dicts
        with ``step``, ``loss`` and ``head_losses``)."""
        for point in points:
            if isinstance(point, Mapping):
                step, total, per_head = point.get("step"), point.get("loss"), point.get("head_losses")
            else:
                step, total, per_head = point
            if step is None:
                continue
            self._last_step = max(self._last_step, float(step))
            if _finite(total):
                self._append("train:total", step, total)
            for name, value in (per_head or {}).items():
                if _finite(value):
                    self._append(f"train:{name}", step, value)
        self._schedule()

    def add_epoch(self, epoch: int | Mapping[str, Any], step: int | None = None, val_loss: float | None = None,
                  val_head_losses: Mapping[str, float] | None = None,
                  metrics: Mapping[str, Mapping[str, float]] | None = None) -> None:
        """One epoch's validation: the losses (at ``step`` on the loss plot; default: the last training
        step seen) and each head's metrics. ``epoch`` may also be the worker's epoch dict (``epoch``,
        ``val_loss``, ``val_head_losses``, ``metrics`` and optionally ``step``)."""
        if isinstance(epoch, Mapping):
            data = epoch
            epoch, step = data.get("epoch"), data.get("step", step)
            val_loss, val_head_losses = data.get("val_loss"), data.get("val_head_losses")
            metrics = data.get("metrics")
        x = float(step) if step is not None else self._last_step
        if _finite(val_loss):
            self._append("val:total", x, val_loss)
        for name, value in (val_head_losses or {}).items():
            if _finite(value):
                self._append(f"val:{name}", x, value)
        for name, values in (metrics or {}).items():
            key = self._metric_keys.get(name)
            if key == "" and values:  # kind unknown: recognise the main metric
                key = self._metric_keys[name] = next((k for k in MAIN_METRIC.values() if k in values), "")
            value = (values or {}).get(key) if key else None
            if _finite(value) and epoch is not None:
                self._append(f"metric:{name}", epoch, value)
        self._schedule()

    def curve(self, name: str) -> pg.PlotDataItem | None:
        """The PlotDataItem behind a curve (see the class docstring for names)."""
        series = self._series.get(name)
        return series.item if series is not None else None

    def curve_names(self) -> list[str]:
        return list(self._series)

    def flush(self) -> None:
        """Redraw the curves that changed (the timer does this; call it to draw at once)."""
        self._timer.stop()
        if not self._dirty:
            return
        for name in self._dirty:
            series = self._series[name]
            if len(series.xs) > self.SMOOTH_POINTS and series.item.opts.get("antialias"):
                self._coarsen(series.item)
            series.push()
        self._dirty.clear()
        self.redraw_count += 1

    # -- internals ---------------------------------------------------------------------------------------
    @staticmethod
    def _thin(colour: QColor) -> QPen:
        """A one-pixel cosmetic pen: the one Qt draws as lines, not as a filled outline."""
        pen = pg.mkPen(colour, width=1)
        pen.setCosmetic(True)
        return pen

    def _coarsen(self, item: pg.PlotDataItem) -> None:
        """An epoch curve grown long (a run of many short epochs): drawn with a one-pixel pen, aliased."""
        pen = QPen(item.opts["pen"])
        pen.setWidthF(1)
        pen.setCosmetic(True)
        item.opts["antialias"] = False  # handed to its line and dots by setPen's style update
        item.setPen(pen)

    @staticmethod
    def _dashed(colour: QColor) -> QPen:
        pen = pg.mkPen(colour, width=2, style=Qt.PenStyle.DashLine)
        pen.setDashPattern([4, 3])
        return pen

    def _add(self, name: str, target: pg.PlotItem | pg.ViewBox | None, pen: QPen, symbol: bool = False) -> None:
        kwargs = {"pen": pen, "antialias": not name.startswith("train:")}
        if symbol:
            colour = pen.color()
            kwargs.update(symbol="o", symbolSize=6, symbolPen=pg.mkPen(colour), symbolBrush=pg.mkBrush(colour))
        item = pg.PlotDataItem(**kwargs)
        if target is not None:
            target.addItem(item)
        self._series[name] = _Series(item, self.MAX_POINTS)

    def _append(self, name: str, x: float, y: float) -> None:
        series = self._series.get(name)
        if series is not None:
            series.add(float(x), float(y))
            self._dirty.add(name)

    def _schedule(self) -> None:
        if self._dirty and not self._timer.isActive():
            self._timer.start()

    def _mae_viewbox(self) -> pg.ViewBox:
        """A second view box sharing the metric plot's x axis, drawn against the right axis (MAE)."""
        item = self.metric_plot.getPlotItem()
        if self._mae_box is None:
            box = pg.ViewBox()
            item.scene().addItem(box)
            item.getAxis("right").linkToView(box)
            box.setXLink(item)

            def follow() -> None:
                box.setGeometry(item.vb.sceneBoundingRect())
                box.linkedViewChanged(item.vb, box.XAxis)

            item.vb.sigResized.connect(follow)
            follow()
            self._mae_box = box
        item.setLabel("right", "MAE (lower is better)", color=self._fg.name())
        return self._mae_box
