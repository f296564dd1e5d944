"""Images for views: Pillow / NumPy pictures as QImage, and thumbnails decoded off the GUI thread.

A QImage may be made in any thread (a QPixmap only in the GUI thread), so :func:`load_thumbnail` runs
in workers; :class:`ThumbnailLoader` runs it on a QThreadPool and hands each result back to the GUI
thread through a queued signal, tagged with the batch it belongs to so that stale results are dropped.
"""
from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
from PIL import Image
from PySide6.QtCore import QObject, QRunnable, QSize, Qt, QThread, QThreadPool, Signal
from PySide6.QtGui import QImage, QImageReader

THUMB_SIDE = 112


def qimage_from_rgb(array: np.ndarray) -> QImage:
    """An H×W×3 uint8 array as a QImage that owns a copy of the pixels."""
    rgb = np.ascontiguousarray(array, dtype=np.uint8)
    h, w = rgb.shape[:2]
    return QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()


def qimage_from_pil(image: Image.Image) -> QImage:
    return qimage_from_rgb(np.asarray(image.convert("RGB")))


def load_thumbnail(path: str, side: int = THUMB_SIDE) -> QImage:
    """``path`` decoded at about ``side`` pixels (JPEGs are decoded scaled down, not decoded then
    shrunk), EXIF rotation applied; a null QImage when it cannot be read. Safe in any thread."""
    reader = QImageReader(str(path))
    reader.setAutoTransform(True)
    size = reader.size()
    if size.isValid() and max(size.width(), size.height()) > side:
        reader.setScaledSize(size.scaled(QSize(side, side), Qt.AspectRatioMode.KeepAspectRatio))
    image = reader.read()
    if image.isNull():
        return QImage()
    if max(image.width(), image.height()) > side:  # a format without scaled decoding
        image = image.scaled(side, side, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)
    return image


class _Job(QRunnable):
    def __init__(self, loader: "ThumbnailLoader", batch: int, jobs: Sequence[tuple[int, str]], side: int) -> None:
        super().__init__()
        self.loader, self.batch, self.jobs, self.side = loader, batch, list(jobs), side

    def run(self) -> None:
        for key, path in self.jobs:
            if self.loader.current_batch() != self.batch:
                return  # superseded: a new set of images is being shown
            self.loader.loaded.emit(self.batch, key, load_thumbnail(path, self.side))


def decoding_threads() -> int:
    """One core fewer than the machine has (at least one): the GUI thread keeps a core to itself."""
    return max(1, QThread.idealThreadCount() - 1)


class ThumbnailLoader(QObject):
    """Decodes thumbnails on its own thread pool (:func:`decoding_threads` threads). :meth:`load` starts a
    new batch (older ones stop and their late results are ignored by checking the batch number);
    ``loaded(batch, key, QImage)`` arrives in the GUI thread for each image."""

    loaded = Signal(int, int, QImage)

    def __init__(self, parent: QObject | None = None, pool: QThreadPool | None = None, chunk: int = 8) -> None:
        super().__init__(parent)
        if pool is None:
            pool = QThreadPool(self)
            pool.setMaxThreadCount(decoding_threads())
        self.pool = pool
        self.chunk = max(1, int(chunk))
        self._batch = 0
        self._lock = threading.Lock()

    def current_batch(self) -> int:
        with self._lock:
            return self._batch

    def load(self, jobs: Sequence[tuple[int, str]], side: int = THUMB_SIDE) -> int:
        """Decode ``(key, path)`` pairs; returns the batch number their results carry."""
        with self._lock:
            self._batch += 1
            batch = self._batch
        jobs = list(jobs)
        for start in range(0, len(jobs), self.chunk):
            self.pool.start(_Job(self, batch, jobs[start:start + self.chunk], side))
        return batch

    def cancel(self) -> None:
        with self._lock:
            self._batch += 1
