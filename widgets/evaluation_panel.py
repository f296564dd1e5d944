"""Evaluation results per head: a confusion matrix (single-label), F1 bars per label (multi-label), the
mean absolute error per target (regression), IoU per class (segment: mIoU) or AP per class (detect: mAP),
with a head selector. A dense head's page also shows validation images with its masks or boxes drawn on
them (:meth:`EvaluationPanel.set_examples`; opacity and score-threshold sliders).

:meth:`EvaluationPanel.set_report` takes an :class:`engine.training.evaluation.EvalReport` (``heads`` maps a name
to a HeadReport with ``kind``, ``loss``, ``n``, ``metrics`` and ``details``); plain dicts of the same
shape (``EvalReport.to_dict()``) work too. A click on a confusion-matrix cell emits
``cellClicked(head, true index, predicted index)``: the app shows that cell's images.
The *Test-time augmentation* choice (:meth:`EvaluationPanel.tta`: None, "flip" or "flip+crops") is what
the next evaluation uses; a report made with TTA says so beside its image count.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QBrush, QColor, QFontMetrics
from PySide6.QtWidgets import (QAbstractItemView, QAbstractScrollArea, QComboBox, QHBoxLayout, QHeaderView, QLabel,
                               QSizePolicy, QStackedWidget, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from .data_panel import COLOUR_ROLE, SHARE_ROLE, ShareDelegate
from .dense_examples import DenseExamplesView
from .thumbnails import ThumbnailLoader
from .head_diagram import KIND_SHORT, head_colour

CORRECT = QColor("#1e88e5")
WRONG = QColor("#e53935")
MAX_CLASS_WIDTH = 110


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _blend(base: QColor, colour: QColor, t: float) -> QColor:
    t = max(0.0, min(1.0, t))
    return QColor(round(base.red() + (colour.red() - base.red()) * t),
                  round(base.green() + (colour.green() - base.green()) * t),
                  round(base.blue() + (colour.blue() - base.blue()) * t))


def headline(kind: str, details: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    """``accuracy 91.7%`` / ``macro F1 0.842`` / ``MAE 0.0521``."""
    if kind == "single":
        acc = details.get("accuracy", metrics.get("accuracy"))
        return f"accuracy {acc:.1%}" if acc is not None else "accuracy –"
    if kind == "multi":
        return f"macro F1 {_num(details.get('macro_f1', metrics.get('macro_f1')))}"
    if kind == "segment":
        return f"mIoU {_num(_first(details, metrics, 'miou', 'mIoU', 'mean_iou'))}"
    if kind == "detect":
        return (f"mAP@0.5 {_num(_first(details, metrics, 'map50', 'map_50', 'mAP50'))} · "
                f"mAP@0.5:0.95 {_num(_first(details, metrics, 'map', 'map_50_95', 'mAP'))}")
    return f"MAE {_num(details.get('mae', metrics.get('mae')), 4)}"


def _first(details: Mapping[str, Any], metrics: Mapping[str, Any], *keys: str) -> Any:
    """The first of ``keys`` found in the details, else in the metrics (None: none)."""
    for source in (details, metrics):
        for key in keys:
            if source.get(key) is not None:
                return source[key]
    return None


TTA_CHOICES = ((None, "none"), ("flip", "flip"), ("flip+crops", "flip + crops"))
TTA_TIP = ("Test-time augmentation: evaluate each image as the average of several views — flip: the image and its "
           "mirror image (2x the work); flip + crops: also its four corner crops (6x). Probabilities are averaged "
           "(values for regression). Leave it off for images whose left and right matter (text, arrows).")

EMPTY_TEXT = ("No evaluation yet.\nEvaluate (F6) shows how well each head does on the validation images; "
              "training ends with one.")


class EvaluationPanel(QWidget):
    """Per-head evaluation results, one page per head, chosen with a combo box."""

    cellClicked = Signal(str, int, int)  # head, row (true class), column (predicted class)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._report: Any = None
        self._examples: dict[str, DenseExamplesView] = {}
        # Decode the dense heads' example images off the GUI thread: a loader per head, owned by the panel (the
        # pages are rebuilt per report). One shared loader dropped the mask page's image when the boxes page
        # asked for its own (a new batch cancels the last): under Xvfb the mask page said "Loading…" for good.
        self._loaders: dict[str, ThumbnailLoader] = {}
        self.head_combo = QComboBox(self)
        self.head_combo.setMinimumContentsLength(16)
        # as wide as its longest "name — kind" (it is filled after it was first shown: it stayed clipped)
        self.head_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        self.head_combo.setMaximumWidth(300)
        self.info_label = QLabel(self)
        self.info_label.setObjectName("hint")
        self.info_label.setWordWrap(True)  # wraps rather than widening the Evaluate tab past the window
        self.head_label = QLabel("Head", self)
        top = QHBoxLayout()
        top.setSpacing(8)
        top.addWidget(self.head_label)
        top.addWidget(self.head_combo)
        top.addStretch(1)
        # The evaluation's summary and the next one's test-time augmentation on a line of their own: in one
        # line with the head they held the panel at 740 px, clipping the Try-an-image column beside it.
        second = QHBoxLayout()
        second.setSpacing(8)
        second.addWidget(self.info_label, 1)
        self.tta_label = QLabel("Test-time augmentation", self)
        self.tta_combo = QComboBox(self)
        for mode, text in TTA_CHOICES:
            self.tta_combo.addItem(text, mode)
        self.tta_combo.setToolTip(TTA_TIP)
        self.tta_label.setToolTip(TTA_TIP)
        second.addWidget(self.tta_label)
        second.addWidget(self.tta_combo)

        self.headline_label = QLabel(self)
        self.headline_label.setObjectName("evalHeadline")
        self.headline_label.setTextFormat(Qt.TextFormat.RichText)
        self.headline_label.setWordWrap(True)  # mAP@0.5 · mAP@0.5:0.95 and the counts: 650 px in one line
        self.pages = QStackedWidget(self)
        self.empty_label = QLabel(EMPTY_TEXT, self)
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_label.setWordWrap(True)
        self.empty_label.setObjectName("hint")

        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 10, 10, 10)
        layout.setSpacing(8)
        layout.addLayout(top)
        layout.addLayout(second)
        layout.addWidget(self.headline_label)
        layout.addWidget(self.pages, 1)
        layout.addWidget(self.empty_label, 1)
        self.head_combo.currentIndexChanged.connect(self._show_head)
        self.clear()

    # -- public API ------------------------------------------------------------------------------------
    def clear(self) -> None:
        """Back to the empty state."""
        self._report = None
        self._examples = {}
        self.head_combo.blockSignals(True)
        self.head_combo.clear()
        self.head_combo.blockSignals(False)
        while self.pages.count():
            page = self.pages.widget(0)
            self.pages.removeWidget(page)
            page.deleteLater()
        self.info_label.clear()
        self.headline_label.clear()
        self.head_combo.setEnabled(False)
        self.head_combo.hide()
        self.head_label.hide()
        self.pages.hide()
        self.headline_label.hide()
        self.empty_label.setText(EMPTY_TEXT)
        self.empty_label.show()

    def set_report(self, report: Any) -> None:
        """Show an EvalReport (or its ``to_dict()``)."""
        previous = self.current_head()
        self.clear()
        self._report = report
        heads: Mapping[str, Any] = _get(report, "heads", {}) or {}
        n_images, seconds, device = _get(report, "n_images"), _get(report, "seconds"), _get(report, "device")
        parts = []
        if n_images is not None:
            parts.append(f"{n_images:,} images")
        if _get(report, "loss") is not None:
            parts.append(f"total loss {_get(report, 'loss'):.4f}")
        if seconds is not None:
            parts.append(f"{seconds:.1f} s" + (f" on {device}" if device else ""))
        if _get(report, "tta"):
            parts.append(f"TTA {_get(report, 'tta')}")
        self.info_label.setText(" · ".join(parts))
        self.head_combo.blockSignals(True)
        for i, (name, head) in enumerate(heads.items()):
            kind = _get(head, "kind", "")
            self.head_combo.addItem(f"{name} — {KIND_SHORT.get(kind, kind)}", name)
            self.pages.addWidget(self._page(name, head, head_colour(i)))
        self.head_combo.blockSignals(False)
        has = bool(heads)
        self.head_combo.setEnabled(has)
        self.head_combo.setVisible(has)
        self.head_label.setVisible(has)
        self.pages.setVisible(has)
        self.headline_label.setVisible(has)
        self.empty_label.setVisible(not has)
        if not has:
            self.empty_label.setText("The evaluation has no heads to show.")
            return
        index = self.head_combo.findData(previous) if previous else -1
        self.head_combo.setCurrentIndex(max(0, index))
        self._show_head(self.head_combo.currentIndex())

    def report(self) -> Any:
        return self._report

    def tta(self) -> str | None:
        """The test-time augmentation chosen for the next evaluation (None: off)."""
        return self.tta_combo.currentData()

    def current_head(self) -> str | None:
        return self.head_combo.currentData()

    def select_head(self, name: str) -> None:
        index = self.head_combo.findData(name)
        if index >= 0:
            self.head_combo.setCurrentIndex(index)

    def current_page(self) -> QWidget | None:
        return self.pages.currentWidget()

    # -- pages -------------------------------------------------------------------------------------------
    def _show_head(self, index: int) -> None:
        if index < 0 or self._report is None:
            return
        self.pages.setCurrentIndex(index)
        head = (_get(self._report, "heads", {}) or {}).get(self.head_combo.itemData(index))
        if head is None:
            return
        kind = _get(head, "kind", "")
        details, metrics = _get(head, "details", {}) or {}, _get(head, "metrics", {}) or {}
        loss, n = _get(head, "loss"), _get(head, "n")
        sub = []
        if n is not None:
            sub.append(f"{n:,} labelled images")
        if loss is not None:
            sub.append(f"loss {loss:.4f}")
        self.headline_label.setText(f"<span style='font-size:16pt; font-weight:600'>{headline(kind, details, metrics)}"
                                    f"</span>&nbsp;&nbsp;<span style='color:#607d8b'>{' · '.join(sub)}</span>")

    def _page(self, name: str, head: Any, colour: str) -> QWidget:
        kind = _get(head, "kind", "")
        details = _get(head, "details", {}) or {}
        if kind == "single":
            return self._confusion_page(name, details)
        if kind == "multi":
            return self._f1_page(details, colour)
        if kind in ("segment", "detect"):
            return self._dense_page(name, kind, details, colour)
        return self._mae_page(details)

    @staticmethod
    def _table(rows: int, headers: list[str]) -> QTableWidget:
        table = QTableWidget(rows, len(headers))
        table.setHorizontalHeaderLabels(headers)
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        table.setShowGrid(False)
        table.verticalHeader().hide()
        header = table.horizontalHeader()
        header.setHighlightSections(False)
        header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        return table

    @staticmethod
    def _item(text: str, numeric: bool = False) -> QTableWidgetItem:
        item = QTableWidgetItem(text)
        if numeric:
            item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return item

    def _confusion_page(self, name: str, details: Mapping[str, Any]) -> QWidget:
        classes = list(details.get("classes") or [])
        matrix = [list(r) for r in (details.get("confusion") or [])]
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        legend = QLabel("Confusion matrix: rows are the true class, columns the predicted one. "
                        f"<span style='color:{CORRECT.name()}'>■</span> right, "
                        f"<span style='color:{WRONG.name()}'>■</span> mixed up; darker = more of the row. "
                        "Click a cell to see its images.", page)
        legend.setObjectName("hint")
        legend.setWordWrap(True)
        layout.addWidget(legend)
        table = QTableWidget(len(classes), len(classes), page)
        table.setObjectName("confusionMatrix")
        table.setHorizontalHeaderLabels(classes)
        table.setVerticalHeaderLabels(classes)
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        table.setAlternatingRowColors(False)
        table.setStyleSheet("QTableWidget#confusionMatrix { gridline-color: #ffffff; }")
        base = QColor("#ffffff")
        fm = table.fontMetrics()
        bold = table.horizontalHeader().font()
        bold.setBold(True)
        bfm = QFontMetrics(bold)
        cell = max(52, min(MAX_CLASS_WIDTH, max((bfm.horizontalAdvance(c) for c in classes), default=40) + 28))
        for r, row in enumerate(matrix[:len(classes)]):
            total = sum(row) or 1
            for c, value in enumerate(row[:len(classes)]):
                share = value / total
                strength = share if r == c else math.sqrt(share)  # make a few mistakes visible
                colour = _blend(base, CORRECT if r == c else WRONG, 0.85 * strength)
                item = QTableWidgetItem(str(value))
                item.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                item.setBackground(QBrush(colour))
                dark = colour.lightnessF() < 0.6
                item.setForeground(QBrush(QColor("#ffffff" if dark else "#263238")))
                item.setToolTip(f"true {classes[r]} → predicted {classes[c]}: {value} "
                                f"({share:.1%} of the {classes[r]} images); click to see them")
                table.setItem(r, c, item)
        for i in range(len(classes)):
            table.setColumnWidth(i, cell)
        table.horizontalHeader().setTextElideMode(Qt.TextElideMode.ElideRight)
        table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        table.verticalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Fixed)
        table.verticalHeader().setDefaultSectionSize(max(30, fm.height() + 14))
        for header in (table.horizontalHeader(), table.verticalHeader()):
            header.setHighlightSections(False)
        table.setSizeAdjustPolicy(QAbstractScrollArea.SizeAdjustPolicy.AdjustToContents)
        table.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Maximum)
        table.viewport().setCursor(Qt.CursorShape.PointingHandCursor)
        table.cellClicked.connect(lambda r, c, name=name: self.cellClicked.emit(name, r, c))
        layout.addWidget(table, 0, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
        layout.addStretch(1)
        return page

    def _f1_page(self, details: Mapping[str, Any], colour: str) -> QWidget:
        labels = list(details.get("labels") or [])
        f1 = list(details.get("f1") or [])
        support, n = list(details.get("support") or []), list(details.get("n") or [])
        table = self._table(len(labels), ["Label", "F1", "", "Positives", "Labelled"])
        table.setObjectName("f1Table")
        table.setItemDelegateForColumn(2, ShareDelegate(table))
        table.setAlternatingRowColors(True)
        for r, label in enumerate(labels):
            value = f1[r] if r < len(f1) else None
            table.setItem(r, 0, self._item(label))
            table.setItem(r, 1, self._item(_num(value), numeric=True))
            bar = QTableWidgetItem("")
            if value is not None:
                bar.setData(SHARE_ROLE, float(value))
                bar.setData(COLOUR_ROLE, colour)
            bar.setToolTip("F1: the balance of precision and recall, 1 is perfect" if value is not None
                           else "Undefined: no positive example and none predicted")
            table.setItem(r, 2, bar)
            table.setItem(r, 3, self._item(f"{support[r]:,}" if r < len(support) else "", numeric=True))
            table.setItem(r, 4, self._item(f"{n[r]:,}" if r < len(n) else "", numeric=True))
        table.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        return self._wrap(table, "F1 per label (threshold 0.5): 1 is perfect, 0 means it never gets that label right.")

    def _mae_page(self, details: Mapping[str, Any]) -> QWidget:
        labels = list(details.get("labels") or [])
        mae = list(details.get("mae_per_output") or [])
        n = list(details.get("n") or [])
        table = self._table(len(labels), ["Target", "Mean absolute error", "Labelled"])
        table.setObjectName("maeTable")
        table.setAlternatingRowColors(True)
        for r, label in enumerate(labels):
            table.setItem(r, 0, self._item(label))
            table.setItem(r, 1, self._item(_num(mae[r] if r < len(mae) else None, 4), numeric=True))
            table.setItem(r, 2, self._item(f"{n[r]:,}" if r < len(n) else "", numeric=True))
        table.horizontalHeader().setStretchLastSection(False)
        return self._wrap(table, "Mean absolute error: the average distance between prediction and truth, "
                                 "in the target's own units (lower is better).")

    def _dense_page(self, name: str, kind: str, details: Mapping[str, Any], colour: str) -> QWidget:
        """Per-class IoU (segment) or AP (detect) bars, and the examples view beside them."""
        classes = list(details.get("classes") or details.get("labels") or [])
        if kind == "segment":
            values = list(details.get("iou") or details.get("per_class_iou") or [])
            header, note = "IoU", ("Intersection over union per class on the validation masks (ignored pixels "
                                   "left out): 1 is a perfect outline, 0 none of it found.")
        else:
            values = list(details.get("ap50") or details.get("ap_50") or details.get("per_class_ap50") or [])
            header, note = "AP@0.5", ("Average precision per class at IoU 0.5 (a box counts when it overlaps "
                                      "a true box by half): 1 finds every object with no false boxes.")
            if not values:  # the summary only: mAP at the IoU thresholds COCO reports
                classes = ["mAP@0.5", "mAP@0.75", "mAP@0.5:0.95"]
                values = [details.get("map_50"), details.get("map_75"), details.get("map")]
                header, note = "", ("Mean average precision (COCO rules) over the validation images with box "
                                    "labels: at IoU 0.5 a box counts when it overlaps a true box by half; "
                                    "0.5:0.95 averages ever stricter overlaps. 1 finds every object, no false box.")
        table = self._table(len(classes), ["Class" if header else "Metric", header or "Value", ""])
        table.setObjectName("denseTable")
        table.setItemDelegateForColumn(2, ShareDelegate(table))
        table.setAlternatingRowColors(True)
        for r, cls in enumerate(classes):
            value = values[r] if r < len(values) else None
            value = None if value is not None and isinstance(value, float) and math.isnan(value) else value
            table.setItem(r, 0, self._item(str(cls)))
            table.setItem(r, 1, self._item(_num(value), numeric=True))
            bar = QTableWidgetItem("")
            if value is not None and value >= 0:
                bar.setData(SHARE_ROLE, float(value))
                bar.setData(COLOUR_ROLE, colour)
            table.setItem(r, 2, bar)
        table.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        page = QWidget()
        row = QHBoxLayout(page)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(12)
        row.addWidget(self._wrap(table, note), 2)
        if name not in self._loaders:
            self._loaders[name] = ThumbnailLoader(self)
        examples = DenseExamplesView(page, loader=self._loaders[name])
        examples.setObjectName("denseExamples")
        self._examples[name] = examples
        row.addWidget(examples, 3)
        return page

    def examples_view(self, head: str) -> DenseExamplesView | None:
        """The examples view of a dense head's page (None for other heads)."""
        return self._examples.get(head)

    def set_examples(self, head: str, items: Any) -> None:
        """The validation images a dense head's page shows, with its masks or boxes (see
        :class:`~widgets.dense_examples.DenseExamplesView`)."""
        view = self._examples.get(head)
        if view is not None:
            view.set_items(items)

    @staticmethod
    def _wrap(table: QTableWidget, text: str) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        note = QLabel(text, page)
        note.setObjectName("hint")
        note.setWordWrap(True)
        layout.addWidget(note)
        table.setSizeAdjustPolicy(QAbstractScrollArea.SizeAdjustPolicy.AdjustToContents)
        table.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Maximum)
        layout.addWidget(table)
        layout.addStretch(1)
        return page
