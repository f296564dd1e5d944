"""A gallery of evaluated images (a confusion-matrix cell, a head's mistakes): thumbnail, truth,
prediction, confidence; one click asks for the image (``imageActivated(path)``) to be tried.

Model/view: :class:`GalleryModel` (a QAbstractListModel) over items shaped like
:class:`engine.explain.mistakes.Example` (``image``, ``truth``, ``prediction``, ``confidence``, ``loss``,
optionally ``label`` / ``error``; a dense head's ``iou`` and ``overlay``, the mask or boxes drawn on its
thumbnail), shown by a QListView in icon mode. Thumbnails are never decoded here:
the caller passes decoded QImages (:meth:`MistakesGallery.set_thumbnail`, e.g. from
:class:`widgets.thumbnails.ThumbnailLoader` in a thread pool, see :meth:`MistakesGallery.load_with`);
a grey tile stands in until each arrives. An optional combo box above offers named lists
(:meth:`MistakesGallery.set_lists`, e.g. a head's most confident mistakes); choosing one emits
``listChosen(key)`` and the caller shows its items.
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

from PySide6.QtCore import QAbstractListModel, QModelIndex, QPersistentModelIndex, QSize, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QImage, QPixmap
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QListView, QVBoxLayout, QWidget

from .overlay_view import with_overlay
from .thumbnails import THUMB_SIDE, ThumbnailLoader

FLUSH_MS = 40  # thumbnails that arrive within this long are shown together
ItemRole = Qt.ItemDataRole.UserRole + 1
PathRole = Qt.ItemDataRole.UserRole + 2


def caption(item: Any) -> str:
    """``truth → prediction`` and ``92.1% · loss 2.31`` (regression: the error), two lines; a dense head's
    ``IoU 0.42`` first (its truth and answer are long, and the caption is cut after a few lines)."""
    truth, prediction = getattr(item, "truth", ""), getattr(item, "prediction", "")
    label = getattr(item, "label", None)
    first = f"{truth or '(blank)'} → {prediction}"
    if label and getattr(item, "error", None) is not None:
        first += f" ({label})"
    confidence = getattr(item, "confidence", None)
    loss = getattr(item, "loss", None)
    iou = getattr(item, "iou", None)
    if iou is not None:
        second = f"IoU {iou:.2f}"
    elif confidence is not None:
        second = f"{confidence:.1%}"
    elif getattr(item, "error", None) is not None:
        second = f"error {item.error:+.3g}"
    else:
        second = ""
    if loss is not None and not math.isnan(loss):
        second += (" · " if second else "") + f"loss {loss:.3g}"
    if iou is not None:  # a dense head's truth and answer run to several lines: the IoU (the order) comes first
        return f"{second}\n{first}"
    return f"{first}\n{second}" if second else first


class GalleryModel(QAbstractListModel):
    """Items and their thumbnails (QImages made anywhere, turned into pixmaps here, in the GUI thread)."""

    def __init__(self, parent: Any = None, side: int = THUMB_SIDE) -> None:
        super().__init__(parent)
        self.side = side
        self._items: list[Any] = []
        self._images: dict[int, QImage] = {}
        self._pixmaps: dict[int, QPixmap] = {}
        self._placeholder = QPixmap(side, side)
        self._placeholder.fill(QColor("#eceff1"))

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._items)

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._items):
            return None
        row, item = index.row(), self._items[index.row()]
        if role == Qt.ItemDataRole.DisplayRole:
            return caption(item)
        if role == Qt.ItemDataRole.DecorationRole:
            return self._pixmap(row)
        if role == Qt.ItemDataRole.ToolTipRole:
            return f"{item.image}\n{caption(item)}"
        if role == ItemRole:
            return item
        if role == PathRole:
            return str(item.image)
        return None

    def _pixmap(self, row: int) -> QPixmap:
        if row in self._pixmaps:
            return self._pixmaps[row]
        image = self._images.pop(row, None)
        if image is None or image.isNull():
            return self._placeholder
        overlay = getattr(self._items[row], "overlay", None)
        if overlay is not None:  # a dense head's mask or boxes, drawn once per thumbnail
            image = with_overlay(image, overlay)
        self._pixmaps[row] = QPixmap.fromImage(image)
        return self._pixmaps[row]

    def set_items(self, items: Sequence[Any], thumbnails: Mapping[int, QImage] | None = None) -> None:
        self.beginResetModel()
        self._items = list(items)
        self._images = {k: v for k, v in (thumbnails or {}).items() if 0 <= k < len(self._items)}
        self._pixmaps = {}
        self.endResetModel()

    def set_thumbnail(self, row: int, image: QImage) -> None:
        self.set_thumbnails({row: image})

    def set_thumbnails(self, images: Mapping[int, QImage]) -> None:
        """Several at once: one dataChanged over the rows they span."""
        rows = [r for r, image in images.items() if 0 <= r < len(self._items) and not image.isNull()]
        for r in rows:
            self._pixmaps.pop(r, None)
            self._images[r] = images[r]
        if rows:
            self.dataChanged.emit(self.index(min(rows)), self.index(max(rows)), [Qt.ItemDataRole.DecorationRole])

    def has_thumbnail(self, row: int) -> bool:
        return row in self._pixmaps or row in self._images

    def items(self) -> list[Any]:
        return list(self._items)


class MistakesGallery(QWidget):
    """A titled icon-mode list of images; ``imageActivated(path)`` and ``itemActivated(item)`` when one is
    clicked or activated; ``listChosen(key)`` when one of the lists given to :meth:`set_lists` is chosen."""

    imageActivated = Signal(str)
    itemActivated = Signal(object)
    listChosen = Signal(str)

    def __init__(self, parent: QWidget | None = None, side: int = THUMB_SIDE) -> None:
        super().__init__(parent)
        self.side = side
        self.model = GalleryModel(self, side)
        self.list_label = QLabel("Show", self)
        self.list_combo = QComboBox(self)
        self.list_combo.setPlaceholderText("a list of mistakes…")
        self.list_combo.setMinimumContentsLength(12)
        self.list_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.list_combo.currentIndexChanged.connect(self._list_changed)
        self.title_label = QLabel("", self)
        self.title_label.setWordWrap(True)
        self.view = QListView(self)
        self.view.setViewMode(QListView.ViewMode.IconMode)
        self.view.setIconSize(QSize(side, side))
        self.view.setGridSize(QSize(side + 40, side + 46))
        self.view.setResizeMode(QListView.ResizeMode.Adjust)
        self.view.setMovement(QListView.Movement.Static)
        self.view.setUniformItemSizes(True)
        self.view.setWordWrap(True)
        self.view.setSpacing(4)
        self.view.setModel(self.model)
        self.empty_label = QLabel("", self)
        self.empty_label.setObjectName("hint")
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.empty_label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        lists = QHBoxLayout()
        lists.addWidget(self.list_label)
        lists.addWidget(self.list_combo, 1)
        layout.addLayout(lists)
        layout.addWidget(self.title_label)
        layout.addWidget(self.view, 1)
        layout.addWidget(self.empty_label, 1)
        self._loader: ThumbnailLoader | None = None
        self._batch = -1
        self._arrived: dict[int, QImage] = {}
        self._flush = QTimer(self)
        self._flush.setSingleShot(True)
        self._flush.setInterval(FLUSH_MS)
        self._flush.timeout.connect(self._flush_arrived)
        self._last: tuple[int, str] | None = None
        self._last_time = 0.0
        self.view.clicked.connect(self._activated)
        self.view.activated.connect(self._activated)
        self.set_lists([])
        self.show_items([], "", "Nothing to show yet.")

    def set_lists(self, lists: Sequence[tuple[str, str]]) -> None:
        """``(key, text)`` per list the combo box offers (none: it is hidden); nothing is chosen."""
        self.list_combo.blockSignals(True)
        self.list_combo.clear()
        for key, text in lists:
            self.list_combo.addItem(text, key)
        self.list_combo.setCurrentIndex(-1)
        self.list_combo.blockSignals(False)
        self.list_combo.setVisible(bool(lists))
        self.list_label.setVisible(bool(lists))

    def lists(self) -> list[tuple[str, str]]:
        return [(self.list_combo.itemData(i), self.list_combo.itemText(i)) for i in range(self.list_combo.count())]

    def select_list(self, key: str | None) -> None:
        """Show ``key`` as chosen (None: none is), without emitting ``listChosen``."""
        self.list_combo.blockSignals(True)
        self.list_combo.setCurrentIndex(self.list_combo.findData(key) if key is not None else -1)
        self.list_combo.blockSignals(False)

    def current_list(self) -> str | None:
        return self.list_combo.currentData()

    def _list_changed(self, index: int) -> None:
        if index >= 0:
            self.listChosen.emit(str(self.list_combo.itemData(index)))

    def show_items(self, items: Sequence[Any], title: str = "", empty_text: str = "No images here.",
                   thumbnails: Mapping[int, QImage] | None = None) -> None:
        """Show ``items`` (already-decoded ``thumbnails`` by row, if any); ``empty_text`` when there are none."""
        if self._loader is not None:
            self._loader.cancel()
        self._batch = -1
        self._arrived = {}
        self._flush.stop()
        self.model.set_items(items, thumbnails)
        self.title_label.setText(title)
        self.title_label.setVisible(bool(title))
        self.empty_label.setText(empty_text)
        self.view.setVisible(bool(items))
        self.empty_label.setVisible(not items)

    def set_thumbnail(self, row: int, image: QImage) -> None:
        self.model.set_thumbnail(row, image)

    def pending_thumbnails(self) -> list[tuple[int, str]]:
        """``(row, image path)`` of every item still without a thumbnail shown: what a loader should decode."""
        return [(row, str(item.image)) for row, item in enumerate(self.model.items())
                if not self.model.has_thumbnail(row) and row not in self._arrived]

    def load_with(self, loader: ThumbnailLoader) -> int:
        """Decode the missing thumbnails with ``loader`` (off the GUI thread); results of a previous list
        are ignored. Returns the batch number."""
        if self._loader is not loader:
            if self._loader is not None:
                self._loader.loaded.disconnect(self._loaded)
            self._loader = loader
            loader.loaded.connect(self._loaded)
        self._batch = loader.load(self.pending_thumbnails(), self.side)
        return self._batch

    def _loaded(self, batch: int, row: int, image: QImage) -> None:
        """Results are shown a few at a time (every FLUSH_MS), not one repaint per thumbnail."""
        if batch != self._batch:
            return
        self._arrived[row] = image
        if not self._flush.isActive():
            self._flush.start()

    def _flush_arrived(self) -> None:
        arrived, self._arrived = self._arrived, {}
        self.model.set_thumbnails(arrived)

    def items(self) -> list[Any]:
        return self.model.items()

    def image_paths(self) -> list[str]:
        return [str(item.image) for item in self.model.items()]

    def _activated(self, index: QModelIndex) -> None:
        """A click (or Enter): once, even where the style also activates items on a single click."""
        path = index.data(PathRole)
        now = time.monotonic()
        if not path or (self._last == (index.row(), path) and now - self._last_time < 0.3):
            return
        self._last, self._last_time = (index.row(), path), now
        self.imageActivated.emit(str(path))
        self.itemActivated.emit(index.data(ItemRole))
