"""Object boxes drawn over an image: which pass a score threshold, their captions, and the painting.

Plain NumPy in: ``boxes`` N×4 (x0, y0, x1, y1) in the pixels of a ``frame`` (width, height) — the image
the boxes were found in — ``scores`` N (None for ground truth, drawn dashed) and ``labels`` N class
indices. Boxes are mapped to wherever the image is shown, so they stay on their objects at any size.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QFontMetricsF, QPainter, QPen

from .mask_overlay import class_colours, colour_hex

TRUTH_COLOUR = QColor("#ffffff")


def as_boxes(boxes, scores=None, labels=None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Checked arrays: boxes N×4 float, scores N float (or None), labels N int (zeros when None)."""
    b = np.asarray(boxes if boxes is not None else np.zeros((0, 4)), dtype=np.float64).reshape(-1, 4)
    s = None if scores is None else np.asarray(scores, dtype=np.float64).reshape(-1)
    lab = (np.zeros(len(b), np.int64) if labels is None else np.asarray(labels).astype(np.int64).reshape(-1))
    if (s is not None and len(s) != len(b)) or len(lab) != len(b):
        raise ValueError(f"{len(b)} boxes need as many scores and labels "
                         f"(got {len(s) if s is not None else 'no'} scores, {len(lab)} labels).")
    return b, s, lab


def above(scores: np.ndarray | None, threshold: float) -> np.ndarray:
    """Indices of the boxes scoring at least ``threshold``, best first (every box, in order, for truth)."""
    if scores is None:
        return np.arange(0)
    keep = np.flatnonzero(np.asarray(scores) >= threshold)
    return keep[np.argsort(-np.asarray(scores)[keep], kind="stable")]


def box_caption(names: Sequence[str], label: int, score: float | None) -> str:
    """``square 0.87`` (truth: the class name alone)."""
    name = names[label] if 0 <= label < len(names) else str(label)
    return name if score is None else f"{name} {score:.2f}"


class BoxLayer:
    """Boxes of one head (or the truth) to paint, with their frame and class names."""

    def __init__(self, boxes, scores=None, labels=None, names: Sequence[str] = (),
                 frame: tuple[int, int] | None = None, truth: bool = False, title: str = "",
                 region: tuple[float, float, float, float] | None = None) -> None:
        self.boxes, self.scores, self.labels = as_boxes(boxes, scores, labels)
        self.truth = truth or self.scores is None
        n = max(len(names), int(self.labels.max(initial=-1)) + 1)
        self.names = list(names) + [str(i) for i in range(len(names), n)]
        self.frame = frame
        self.region = region  # the part of the image (x0, y0, x1, y1 pixels) the frame shows; None: all
        self.image_size: tuple[int, int] | None = None  # the image's pixels ``region`` counts in; None: as shown
        self.title = title
        self.colours = class_colours(len(self.names), background=None)

    def __len__(self) -> int:
        return len(self.boxes)

    def shown(self, threshold: float) -> np.ndarray:
        """Indices drawn at ``threshold``: truth boxes always, predictions scoring at least it."""
        return np.arange(len(self.boxes)) if self.truth else above(self.scores, threshold)

    def captions(self, threshold: float) -> list[str]:
        return [box_caption(self.names, int(self.labels[i]), None if self.truth else float(self.scores[i]))
                for i in self.shown(threshold)]

    def paint(self, p: QPainter, target: QRectF, threshold: float, image_size: tuple[int, int]) -> None:
        """Draw onto ``target`` (where the image's ``region`` is shown; ``image_size``: the pixels of
        that region, the frame when none was given). Truth: dashed white outlines; predictions: class
        colours with a caption."""
        fw, fh = self.frame or image_size
        if fw <= 0 or fh <= 0:
            return
        sx, sy = target.width() / fw, target.height() / fh
        fm = QFontMetricsF(p.font())
        for i in self.shown(threshold):
            x0, y0, x1, y1 = self.boxes[i]
            rect = QRectF(target.left() + x0 * sx, target.top() + y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy)
            colour = TRUTH_COLOUR if self.truth else QColor(colour_hex(self.colours[int(self.labels[i])]))
            pen = QPen(colour, 1.5 if self.truth else 2.0)
            if self.truth:
                pen.setStyle(Qt.PenStyle.DashLine)
                p.setPen(QPen(QColor(0, 0, 0, 160), 3.0))
                p.setBrush(Qt.BrushStyle.NoBrush)
                p.drawRect(rect)
            p.setPen(pen)
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawRect(rect)
            if self.truth:
                continue
            text = box_caption(self.names, int(self.labels[i]), float(self.scores[i]))
            w, h = fm.horizontalAdvance(text) + 6, fm.height() + 2
            top = rect.top() - h if rect.top() - h >= target.top() else rect.top()
            tag = QRectF(rect.left(), top, w, h)
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(QBrush(colour))
            p.drawRect(tag)
            p.setPen(QColor("#000000") if colour.lightnessF() > 0.55 else QColor("#ffffff"))
            p.drawText(QPointF(tag.left() + 3, tag.top() + fm.ascent() + 1), text)
