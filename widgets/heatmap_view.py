"""Where a head looks, for try-an-image: the heatmap over the model's view of the image, with pickers
for the head, the class (or label / target) and the layer, and an opacity slider.

The view asks (``requested(head, target, layer)``: ``target`` "" for the head's own answer, ``layer`` ""
for the default layer); the app computes :func:`engine.explain.heatmap.explain` in a worker and calls
:meth:`HeatmapView.show_heatmap` with the result (or :meth:`set_status` with why it cannot). The
opacity slider redraws the overlay from the heatmap it holds, without asking again.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QPixmap
from PySide6.QtWidgets import QComboBox, QGridLayout, QLabel, QLayout, QSizePolicy, QSlider, QVBoxLayout, QWidget

from engine.explain.colours import overlay

from .thumbnails import qimage_from_pil
from .try_image_view import ImageArea, hint_label

ANSWER = ""  # the class picker's first entry: each head's own answer
DEFAULT_LAYER = ""
NARROW = 230  # the view's narrowest (the pickers one to a row); two to a row from twice that


class HeatmapView(QWidget):
    """The heatmap of one head at a time; pickers emit ``requested(head, target, layer)``."""

    requested = Signal(str, str, str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._heads: dict[str, list[str]] = {}
        self._heatmap: Any = None
        self.head_combo = QComboBox(self)
        self.target_combo = QComboBox(self)
        self.layer_combo = QComboBox(self)
        for combo in (self.head_combo, self.target_combo, self.layer_combo):  # long layer paths elide, not widen
            combo.setMinimumContentsLength(8)
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.opacity = QSlider(Qt.Orientation.Horizontal, self)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(60)
        self.opacity.setToolTip("How strongly the heatmap covers the image")
        self._pickers = [(QLabel(text, self), widget) for text, widget in (
            ("Head", self.head_combo), ("Evidence for", self.target_combo), ("At layer", self.layer_combo),
            ("Opacity", self.opacity))]
        self.pickers = QGridLayout()
        self.pickers.setHorizontalSpacing(8)
        self._columns = 0
        self._place_pickers(2)
        self.image = ImageArea(self)
        self.image.set_placeholder("Try an image to see where each head looks")
        self.caption_label = QLabel("", self)
        self.caption_label.setWordWrap(True)
        self.caption_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.status_label = hint_label(self)
        layout = QVBoxLayout(self)
        layout.setSizeConstraint(QLayout.SizeConstraint.SetNoConstraint)  # the minimum is minimumSizeHint's
        layout.setContentsMargins(10, 10, 10, 10)
        layout.addLayout(self.pickers)
        layout.addWidget(self.image, 1)
        layout.addWidget(self.caption_label)
        layout.addWidget(self.status_label)
        self.head_combo.currentIndexChanged.connect(self._head_changed)
        self.target_combo.currentIndexChanged.connect(self._ask)
        self.layer_combo.currentIndexChanged.connect(self._ask)
        self.opacity.valueChanged.connect(self._redraw)
        self.set_layers([], None)

    # -- layout: the pickers two to a row when there is room, else one --------------------------------
    def _place_pickers(self, columns: int) -> None:
        if columns == self._columns:
            return
        self._columns = columns
        for label, widget in self._pickers:
            self.pickers.removeWidget(label)
            self.pickers.removeWidget(widget)
        for i, (label, widget) in enumerate(self._pickers):
            self.pickers.addWidget(label, i // columns, (i % columns) * 2)
            self.pickers.addWidget(widget, i // columns, (i % columns) * 2 + 1)
        for column in range(4):
            self.pickers.setColumnStretch(column, 1 if column % 2 and column // 2 < columns else 0)

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        """As narrow as the pickers one to a row allow (they go two to a row when wider)."""
        hint = super().minimumSizeHint()
        return QSize(min(hint.width(), NARROW), hint.height())

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self._place_pickers(2 if event.size().width() >= 2 * NARROW else 1)
        super().resizeEvent(event)

    # -- choices ---------------------------------------------------------------------------------------
    def set_heads(self, heads: Mapping[str, Sequence[str]]) -> None:
        """The heads and the classes / labels / targets each can be asked about (no request is emitted)."""
        self._heads = {h: list(names) for h, names in heads.items()}
        current = self.current_head()
        self.head_combo.blockSignals(True)
        self.head_combo.clear()
        for name in self._heads:
            self.head_combo.addItem(name, name)
        index = self.head_combo.findData(current) if current else -1
        self.head_combo.setCurrentIndex(max(0, index) if self._heads else -1)
        self.head_combo.blockSignals(False)
        self._fill_targets()

    def set_layers(self, layers: Sequence[str], default: str | None) -> None:
        """The spatial layers to choose from (``default``: the one taken when none is chosen)."""
        current = self.current_layer()
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItem(f"default ({default})" if default else "default", DEFAULT_LAYER)
        for path in layers:
            self.layer_combo.addItem(path, path)
        index = self.layer_combo.findData(current)
        self.layer_combo.setCurrentIndex(max(0, index))
        self.layer_combo.blockSignals(False)

    def select(self, head: str | None = None, target: str | None = None, layer: str | None = None) -> None:
        """Pick without asking (the caller computes what it wants next)."""
        for combo, value in ((self.head_combo, head), (self.target_combo, target), (self.layer_combo, layer)):
            if value is None:
                continue
            combo.blockSignals(True)
            index = combo.findData(value)
            if index >= 0:
                combo.setCurrentIndex(index)
            combo.blockSignals(False)
            if combo is self.head_combo:
                self._fill_targets()

    def current_head(self) -> str:
        return self.head_combo.currentData() or ""

    def current_target(self) -> str:
        return self.target_combo.currentData() or ANSWER

    def current_layer(self) -> str:
        return self.layer_combo.currentData() or DEFAULT_LAYER

    def current_request(self) -> tuple[str, str, str]:
        return self.current_head(), self.current_target(), self.current_layer()

    # -- results ---------------------------------------------------------------------------------------
    def show_heatmap(self, heatmap: Any) -> None:
        """Show an :class:`engine.explain.heatmap.Heatmap` (its ``image``, ``values`` and ``describe()``)."""
        self._heatmap = heatmap
        self.status_label.hide()
        self.caption_label.setText(heatmap.describe())
        self.select(head=heatmap.head)
        self._redraw()

    def heatmap(self) -> Any:
        return self._heatmap

    def set_status(self, text: str) -> None:
        """A line under the image ("Computing…", or why there is no heatmap)."""
        self.status_label.setText(text)
        self.status_label.setVisible(bool(text))

    def show_problem(self, text: str) -> None:
        """No heatmap, and why (a TorchScript network, a layer without a spatial output …)."""
        self._heatmap = None
        self.image.set_pixmap(QPixmap())
        self.caption_label.clear()
        self.set_status(text)

    def clear(self) -> None:
        self._heatmap = None
        self.image.set_pixmap(QPixmap())
        self.caption_label.clear()
        self.set_status("")

    def pixmap(self) -> QPixmap:
        return self.image.pixmap()

    # -- internals -------------------------------------------------------------------------------------
    def _fill_targets(self) -> None:
        head = self.current_head()
        current = self.current_target()
        self.target_combo.blockSignals(True)
        self.target_combo.clear()
        self.target_combo.addItem("its answer", ANSWER)
        for name in self._heads.get(head, []):
            self.target_combo.addItem(name, name)
        index = self.target_combo.findData(current)
        self.target_combo.setCurrentIndex(max(0, index))
        self.target_combo.blockSignals(False)

    def _head_changed(self) -> None:
        self._fill_targets()
        self._ask()

    def _ask(self) -> None:
        if self.current_head():
            self.requested.emit(*self.current_request())

    def _redraw(self) -> None:
        if self._heatmap is None:
            return
        picture = overlay(self._heatmap.image, self._heatmap.values, self.opacity.value() / 100)
        self.image.set_pixmap(QPixmap.fromImage(qimage_from_pil(picture)))
