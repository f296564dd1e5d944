"""Validation images with a dense head's answers drawn on them: one image at a time (previous / next, or
a list), its predicted mask or boxes over it (and the true boxes, dashed), the opacity and threshold
controls, and a caption (the image's IoU, its boxes).

Items are plain: anything with ``image`` (a path), ``overlay`` or ``prediction`` (what
:func:`widgets.overlay_view.dense_layers` draws: ``kind`` "segment" with ``mask``, or "detect" with
``boxes`` / ``scores`` / ``labels``) and optionally ``caption`` (else one is made of ``iou``, ``truth``
and ``prediction`` text, as :class:`engine.explain.mistakes.Example` has them). Images are decoded off the GUI thread
(a :class:`~widgets.thumbnails.ThumbnailLoader`); the opacity and threshold stay as chosen from image
to image.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtGui import QImage
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QPushButton, QVBoxLayout, QWidget

from .overlay_view import OverlayCanvas, OverlayControls, _field, dense_layers
from .thumbnails import ThumbnailLoader

VIEW_SIDE = 640  # images are decoded at about this size: sharp in the Evaluate tab


def item_caption(item: Any) -> str:
    """The item's ``caption``, else ``IoU 0.42 · truth circle 23% · predicted circle 20%``."""
    text = _field(item, "caption", None)
    if text:
        return str(text)
    parts = []
    iou = _field(item, "iou", None)
    if iou is not None:
        parts.append(f"IoU {iou:.2f}")
    for word, name in (("truth", "truth"), ("predicted", "prediction")):
        value = _field(item, name, None)
        if isinstance(value, str) and value:
            parts.append(f"{word} {value}")
    return " · ".join(parts)


class DenseExamplesView(QWidget):
    """Browse ``items`` (see the module docstring), one image at a time."""

    def __init__(self, parent: QWidget | None = None, loader: ThumbnailLoader | None = None,
                 side: int = VIEW_SIDE) -> None:
        super().__init__(parent)
        self.side = side
        self._items: list[Any] = []
        self._index = -1
        self._batch = -1
        self._loader = loader if loader is not None else ThumbnailLoader(self)
        self._loader.loaded.connect(self._loaded)
        self.previous_button = QPushButton("◀", self)
        self.previous_button.setToolTip("The previous image")
        self.next_button = QPushButton("▶", self)
        self.next_button.setToolTip("The next image")
        for button in (self.previous_button, self.next_button):
            button.setFixedWidth(36)
        self.image_combo = QComboBox(self)
        self.image_combo.setMinimumContentsLength(18)
        self.image_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.caption_label = QLabel(self)
        self.caption_label.setObjectName("hint")
        self.caption_label.setWordWrap(True)
        self.canvas = OverlayCanvas(self)
        self.canvas.set_placeholder("No images to show")
        self.controls = OverlayControls(self.canvas, self)
        top = QHBoxLayout()
        top.setSpacing(6)
        top.addWidget(self.previous_button)
        top.addWidget(self.image_combo, 1)
        top.addWidget(self.next_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addLayout(top)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(self.controls)
        layout.addWidget(self.caption_label)
        self.previous_button.clicked.connect(lambda: self.show_index(self._index - 1))
        self.next_button.clicked.connect(lambda: self.show_index(self._index + 1))
        self.image_combo.currentIndexChanged.connect(self.show_index)
        self.set_items([])

    def set_items(self, items: Sequence[Any]) -> None:
        """The images to browse; the first is shown."""
        self._items = list(items)
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        for item in self._items:
            self.image_combo.addItem(Path(str(_field(item, "image", ""))).name)
        self.image_combo.blockSignals(False)
        self._index = -1
        self.show_index(0)

    def items(self) -> list[Any]:
        return list(self._items)

    def current_index(self) -> int:
        return self._index

    def show_index(self, index: int) -> None:
        """Show item ``index`` (clamped): its layers at once, its image when decoded."""
        if not self._items:
            self._index = -1
            self._loader.cancel()
            self.canvas.set_pixmap(QImage())
            self.canvas.clear_layers()
            self.controls.refresh()
            self.caption_label.clear()
            self._update_buttons()
            return
        index = max(0, min(int(index), len(self._items) - 1))
        if index == self._index:
            return
        self._index = index
        item = self._items[index]
        self.image_combo.blockSignals(True)
        self.image_combo.setCurrentIndex(index)
        self.image_combo.blockSignals(False)
        drawn = _field(item, "overlay", None)
        masks, boxes = dense_layers(str(_field(item, "head", "") or ""),
                                    drawn if drawn is not None else _field(item, "prediction"))
        self.canvas.set_pixmap(QImage())
        self.canvas.set_placeholder("Loading…")
        self.canvas.set_masks(masks)
        self.canvas.set_boxes(boxes)
        self.controls.refresh()
        self.caption_label.setText(item_caption(item))
        self.caption_label.setToolTip(str(_field(item, "image", "")))
        self._batch = self._loader.load([(index, str(_field(item, "image", "")))], self.side)
        self._update_buttons()

    def _loaded(self, batch: int, index: int, image: QImage) -> None:
        if batch != self._batch or index != self._index:
            return
        if image.isNull():
            self.canvas.set_placeholder("This image could not be read")
        self.canvas.set_pixmap(image)

    def _update_buttons(self) -> None:
        self.previous_button.setEnabled(self._index > 0)
        self.next_button.setEnabled(0 <= self._index < len(self._items) - 1)
        self.image_combo.setEnabled(bool(self._items))
