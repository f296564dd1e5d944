"""A layer's strongest channels for the tried image, as a grid of small colour-mapped maps.

:meth:`ActivationGridView.show_activations` takes an :class:`engine.explain.activations.Activations`
(``maps`` k×H×W in [0, 1], ``channels``, ``strengths``, ``describe()``); :meth:`show_message` says why
there is no grid (a layer without a spatial output, no image tried yet).
"""
from __future__ import annotations

import math
from typing import Any

from PySide6.QtCore import QRect, QSize, Qt
from PySide6.QtGui import QColor, QPainter, QPaintEvent, QPixmap
from PySide6.QtWidgets import QLabel, QScrollArea, QSizePolicy, QVBoxLayout, QWidget

from engine.explain.colours import colourise

from .thumbnails import qimage_from_rgb

TILE = 72
CAPTION = 16
GAP = 6


class _Tiles(QWidget):
    """The tiles, laid out in as many columns as the width allows."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.pixmaps: list[QPixmap] = []
        self.captions: list[str] = []
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def columns(self) -> int:
        return max(1, (self.width() + GAP) // (TILE + GAP))

    def set_tiles(self, pixmaps: list[QPixmap], captions: list[str]) -> None:
        self.pixmaps, self.captions = pixmaps, captions
        self.updateGeometry()
        self.setMinimumHeight(self.heightForWidth(max(self.width(), TILE)))
        self.update()

    def hasHeightForWidth(self) -> bool:
        return True

    def heightForWidth(self, width: int) -> int:
        columns = max(1, (width + GAP) // (TILE + GAP))
        rows = math.ceil(len(self.pixmaps) / columns) if self.pixmaps else 0
        return rows * (TILE + CAPTION + GAP)

    def sizeHint(self) -> QSize:
        return QSize(4 * (TILE + GAP), self.heightForWidth(4 * (TILE + GAP)))

    def resizeEvent(self, event) -> None:
        self.setMinimumHeight(self.heightForWidth(event.size().width()))
        super().resizeEvent(event)

    def tile_rect(self, i: int) -> QRect:
        columns = self.columns()
        return QRect((i % columns) * (TILE + GAP), (i // columns) * (TILE + CAPTION + GAP), TILE, TILE)

    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.setPen(QColor("#607d8b"))
        for i, (pixmap, text) in enumerate(zip(self.pixmaps, self.captions)):
            rect = self.tile_rect(i)
            p.drawPixmap(rect, pixmap)
            p.drawText(QRect(rect.left(), rect.bottom() + 1, TILE, CAPTION),
                       Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop, text)
        p.end()


class ActivationGridView(QWidget):
    """The grid of a layer's strongest channels, or a message in its place."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._activations: Any = None
        self.title_label = QLabel("", self)
        self.title_label.setWordWrap(True)
        self.tiles = _Tiles()
        self.scroll = QScrollArea(self)
        self.scroll.setWidgetResizable(True)
        self.scroll.setWidget(self.tiles)
        self.message_label = QLabel("", self)
        self.message_label.setObjectName("hint")
        self.message_label.setWordWrap(True)
        self.message_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.title_label)
        layout.addWidget(self.scroll, 1)
        layout.addWidget(self.message_label, 1)
        self.show_message("Select a layer with an image tried to see its strongest channels.")

    def show_activations(self, activations: Any) -> None:
        self._activations = activations
        pixmaps = [QPixmap.fromImage(qimage_from_rgb(colourise(m))) for m in activations.maps]
        captions = [f"#{c}" for c in activations.channels]
        self.tiles.set_tiles(pixmaps, captions)
        self.title_label.setText(activations.describe())
        self.title_label.show()
        self.scroll.show()
        self.message_label.hide()

    def show_message(self, text: str) -> None:
        """No grid: ``text`` says why (e.g. the GraftError of a layer without a spatial output)."""
        self._activations = None
        self.tiles.set_tiles([], [])
        self.title_label.hide()
        self.scroll.hide()
        self.message_label.setText(text)
        self.message_label.show()

    def activations(self) -> Any:
        return self._activations

    def tile_count(self) -> int:
        return len(self.tiles.pixmaps)

    def message(self) -> str:
        return "" if self.message_label.isHidden() else self.message_label.text()
