"""An image with what dense heads found on it: a segmentation mask (with an opacity) and boxes (above a
score threshold), plus the controls for both.

:class:`OverlayCanvas` paints the image scaled to fit (a dashed drop target when there is none), the
chosen :class:`~widgets.mask_overlay.MaskLayer` at the chosen opacity and every
:class:`~widgets.box_overlay.BoxLayer`. :class:`OverlayControls` is the row under it: the opacity slider
and legend when there is a mask, the score-threshold slider and how many boxes pass when there are boxes.
Moving a slider only repaints (the mask's picture is made once per mask; Qt folds repaint requests into
one per frame), so dragging stays smooth on big images.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PySide6.QtCore import QRectF, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPaintEvent, QPen, QPixmap
from PySide6.QtWidgets import QComboBox, QGridLayout, QLabel, QSizePolicy, QSlider, QWidget

from .box_overlay import BoxLayer
from .mask_overlay import MaskLayer
from .thumbnails import qimage_from_rgb

DEFAULT_OPACITY = 0.5
DEFAULT_THRESHOLD = 0.5


def pixmap_from(image) -> QPixmap:
    """A QPixmap from a QPixmap, a QImage or an H×W×3 uint8 array."""
    if isinstance(image, QPixmap):
        return image
    if isinstance(image, np.ndarray):
        return QPixmap.fromImage(qimage_from_rgb(image))
    return QPixmap.fromImage(image) if image is not None else QPixmap()


class OverlayCanvas(QWidget):
    """The image, scaled to fit and centred, with a mask and boxes over it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._pixmap = QPixmap()
        self._placeholder = "Drop an image here"
        self.dragging = False
        self._masks: list[MaskLayer] = []
        self._mask_index = 0
        self._boxes: list[BoxLayer] = []
        self._opacity = DEFAULT_OPACITY
        self._threshold = DEFAULT_THRESHOLD
        self.paints = 0  # how many times it painted: redraws are folded, tests count them
        self.setMinimumSize(200, 160)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)

    # -- the image ------------------------------------------------------------------------------------
    def set_pixmap(self, pixmap) -> None:
        self._pixmap = pixmap_from(pixmap)
        self.update()

    def pixmap(self) -> QPixmap:
        return self._pixmap

    def set_placeholder(self, text: str) -> None:
        self._placeholder = text
        self.update()

    # -- what is drawn over it --------------------------------------------------------------------------
    def set_masks(self, masks: Sequence[MaskLayer]) -> None:
        self._masks = list(masks)
        self._mask_index = 0
        self.update()

    def masks(self) -> list[MaskLayer]:
        return list(self._masks)

    def set_mask_index(self, index: int) -> None:
        self._mask_index = max(0, min(int(index), len(self._masks) - 1))
        self.update()

    def current_mask(self) -> MaskLayer | None:
        return self._masks[self._mask_index] if self._masks else None

    def set_boxes(self, layers: Sequence[BoxLayer]) -> None:
        self._boxes = list(layers)
        self.update()

    def box_layers(self) -> list[BoxLayer]:
        return list(self._boxes)

    def clear_layers(self) -> None:
        self._masks, self._boxes = [], []
        self.update()

    def set_opacity(self, opacity: float) -> None:
        self._opacity = max(0.0, min(1.0, float(opacity)))
        self.update()

    def opacity(self) -> float:
        return self._opacity

    def set_threshold(self, threshold: float) -> None:
        self._threshold = max(0.0, min(1.0, float(threshold)))
        self.update()

    def threshold(self) -> float:
        return self._threshold

    def shown_boxes(self) -> tuple[int, int]:
        """(predicted boxes drawn at the threshold, predicted boxes in all)."""
        predicted = [layer for layer in self._boxes if not layer.truth]
        return sum(len(layer.shown(self._threshold)) for layer in predicted), sum(len(layer) for layer in predicted)

    def captions(self) -> list[str]:
        """The captions of the predicted boxes drawn now, best first per layer."""
        return [c for layer in self._boxes if not layer.truth for c in layer.captions(self._threshold)]

    # -- painting -------------------------------------------------------------------------------------------
    def image_rect(self) -> QRectF:
        """Where the image is drawn (empty without one)."""
        if self._pixmap.isNull():
            return QRectF()
        size = self._pixmap.size().scaled(self.size() - QSize(8, 8), Qt.AspectRatioMode.KeepAspectRatio)
        return QRectF((self.width() - size.width()) / 2, (self.height() - size.height()) / 2,
                      size.width(), size.height())

    def sizeHint(self) -> QSize:
        return QSize(360, 300)

    def paintEvent(self, event: QPaintEvent) -> None:
        self.paints += 1
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        rect = QRectF(self.rect()).adjusted(1, 1, -1, -1)
        if self._pixmap.isNull() or self.dragging:
            colour = QColor("#1e88e5") if self.dragging else QColor("#b0bec5")
            p.setPen(QPen(colour, 2, Qt.PenStyle.DashLine))
            p.setBrush(Qt.BrushStyle.NoBrush)
            p.drawRoundedRect(rect, 8, 8)
        if self._pixmap.isNull():
            p.setPen(QColor("#607d8b"))
            p.drawText(rect, Qt.AlignmentFlag.AlignCenter, self._placeholder)
            p.end()
            return
        target = self.image_rect()
        p.drawPixmap(target, self._pixmap, QRectF(self._pixmap.rect()))
        mask = self.current_mask()
        paint_layers(p, target, (self._pixmap.width(), self._pixmap.height()), [mask] if mask else [], self._boxes,
                     self._opacity, self._threshold)
        p.end()


def region_rect(target: QRectF, shown: tuple[int, int], region: tuple[float, float, float, float] | None,
                image_size: tuple[int, int] | None = None) -> QRectF:
    """Where ``region`` (pixels of the image at ``image_size``, else at ``shown``, the size of the picture
    drawn onto ``target``, which may be decoded smaller; None: all of it) lies inside ``target``."""
    if region is None:
        return target
    w, h = image_size or shown
    sx, sy = target.width() / w, target.height() / h
    x0, y0, x1, y1 = region
    return QRectF(target.left() + x0 * sx, target.top() + y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy)


def paint_layers(p: QPainter, target: QRectF, shown: tuple[int, int], masks: Sequence[MaskLayer],
                 boxes: Sequence[BoxLayer], opacity: float, threshold: float) -> None:
    """Masks at ``opacity``, then the true boxes, then the predicted ones scoring at least ``threshold``,
    over an image of ``shown`` pixels drawn onto ``target``."""
    for mask in masks:
        if opacity <= 0:
            break
        p.save()
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)  # class colours stay pure
        p.setOpacity(opacity)
        p.setClipRect(target)
        p.drawImage(region_rect(target, shown, mask.region, mask.image_size), mask.image, QRectF(mask.image.rect()))
        p.restore()
    for layer in sorted(boxes, key=lambda b: not b.truth):  # truth under the predictions
        w, h = layer.image_size or shown
        x0, y0, x1, y1 = layer.region or (0, 0, w, h)
        layer.paint(p, region_rect(target, shown, layer.region, layer.image_size), threshold,
                    (round(x1 - x0), round(y1 - y0)))


def with_overlay(image: QImage, prediction, opacity: float = DEFAULT_OPACITY,
                 threshold: float = DEFAULT_THRESHOLD) -> QImage:
    """A copy of ``image`` with a dense prediction (see :func:`dense_layers`) drawn on it: for thumbnails."""
    if image.isNull():
        return image
    masks, boxes = dense_layers("", prediction)
    out = image.convertToFormat(QImage.Format.Format_RGB32)
    p = QPainter(out)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    font = p.font()
    font.setPointSizeF(max(6.0, font.pointSizeF() * 0.8))
    p.setFont(font)
    paint_layers(p, QRectF(out.rect()), (out.width(), out.height()), masks[:1], boxes, opacity, threshold)
    p.end()
    return out


class OverlayControls(QWidget):
    """Opacity (with the mask's legend, and a choice of mask when several heads give one) and score
    threshold (with how many boxes pass) for an :class:`OverlayCanvas`; each row shows only when there
    is something for it. Call :meth:`refresh` after changing the canvas's layers."""

    opacityChanged = Signal(float)
    thresholdChanged = Signal(float)

    def __init__(self, canvas: OverlayCanvas, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.canvas = canvas
        self.mask_combo = QComboBox(self)
        self.mask_combo.setToolTip("Which head's mask is drawn")
        self.opacity_label = QLabel("Mask opacity", self)
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal, self)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(round(canvas.opacity() * 100))
        self.opacity_slider.setToolTip("How strongly the mask's colours cover the image (0: the image alone)")
        self.opacity_value = QLabel(self)
        self.legend_label = QLabel(self)
        self.legend_label.setObjectName("hint")
        self.legend_label.setWordWrap(True)
        self.threshold_label = QLabel("Score threshold", self)
        self.threshold_slider = QSlider(Qt.Orientation.Horizontal, self)
        self.threshold_slider.setRange(0, 100)
        self.threshold_slider.setValue(round(canvas.threshold() * 100))
        self.threshold_slider.setToolTip("Boxes scoring below this are hidden (dashed white: the true boxes)")
        self.threshold_value = QLabel(self)
        self.count_label = QLabel(self)
        self.count_label.setObjectName("hint")
        self.count_label.setWordWrap(True)  # "4 of 22 boxes shown" wraps in a narrow pane…
        for slider in (self.opacity_slider, self.threshold_slider):
            slider.setMinimumWidth(80)  # …rather than squeezing the slider to nothing (it looked like a checkbox)
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        grid.setHorizontalSpacing(8)
        grid.setVerticalSpacing(4)
        grid.addWidget(self.opacity_label, 0, 0)
        grid.addWidget(self.opacity_slider, 0, 1)
        grid.addWidget(self.opacity_value, 0, 2)
        grid.addWidget(self.mask_combo, 0, 3)
        grid.addWidget(self.legend_label, 1, 0, 1, 4)
        grid.addWidget(self.threshold_label, 2, 0)
        grid.addWidget(self.threshold_slider, 2, 1)
        grid.addWidget(self.threshold_value, 2, 2)
        grid.addWidget(self.count_label, 2, 3)
        grid.setColumnStretch(1, 1)
        self.opacity_slider.valueChanged.connect(self._opacity_moved)
        self.threshold_slider.valueChanged.connect(self._threshold_moved)
        self.mask_combo.currentIndexChanged.connect(self._mask_chosen)
        self.refresh()

    def refresh(self) -> None:
        """Show the rows the canvas's layers need and what they say."""
        masks = self.canvas.masks()
        self.mask_combo.blockSignals(True)
        self.mask_combo.clear()
        for layer in masks:
            self.mask_combo.addItem(layer.title or "mask")
        current = self.canvas.current_mask()
        self.mask_combo.setCurrentIndex(masks.index(current) if current in masks else -1)
        self.mask_combo.blockSignals(False)
        for w in (self.opacity_label, self.opacity_slider, self.opacity_value, self.legend_label):
            w.setVisible(bool(masks))
        self.mask_combo.setVisible(len(masks) > 1)
        has_boxes = any(not layer.truth for layer in self.canvas.box_layers())
        for w in (self.threshold_label, self.threshold_slider, self.threshold_value, self.count_label):
            w.setVisible(has_boxes)
        self.setVisible(bool(masks) or has_boxes)
        self._update_texts()

    def set_opacity(self, opacity: float) -> None:
        self.opacity_slider.setValue(round(max(0.0, min(1.0, opacity)) * 100))

    def set_threshold(self, threshold: float) -> None:
        self.threshold_slider.setValue(round(max(0.0, min(1.0, threshold)) * 100))

    def _update_texts(self) -> None:
        self.opacity_value.setText(f"{self.canvas.opacity():.0%}")
        mask = self.canvas.current_mask()
        self.legend_label.setText(mask.legend() if mask is not None else "")
        shown, total = self.canvas.shown_boxes()
        self.threshold_value.setText(f"{self.canvas.threshold():.2f}")
        self.count_label.setText(f"{shown} of {total} box{'es' if total != 1 else ''} shown")

    def _opacity_moved(self, value: int) -> None:
        self.canvas.set_opacity(value / 100)
        self._update_texts()
        self.opacityChanged.emit(value / 100)

    def _threshold_moved(self, value: int) -> None:
        self.canvas.set_threshold(value / 100)
        self._update_texts()
        self.thresholdChanged.emit(value / 100)

    def _mask_chosen(self, index: int) -> None:
        if index >= 0:
            self.canvas.set_mask_index(index)
            self._update_texts()


def _field(obj, name: str, default=None):
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def class_indices(labels, names: Sequence[str]) -> np.ndarray:
    """Box labels as class indices, whether given as indices or as class names."""
    values = list(labels if labels is not None else [])
    if values and isinstance(values[0], str):
        lookup = {n: i for i, n in enumerate(names)}
        return np.array([lookup.get(v, -1) for v in values], np.int64)
    return np.asarray(values, np.int64).reshape(-1)


def box_arrays(boxes, scores=None, labels=None, names: Sequence[str] = ()):
    """Boxes as arrays whether given as arrays or as a list of ``{"box", "score", "class" or "label"}``
    (the engine's :class:`~engine.export.metadata.HeadPrediction`)."""
    items = list(boxes) if boxes is not None and not isinstance(boxes, np.ndarray) else None
    if items and isinstance(items[0], dict):
        lookup = {n: i for i, n in enumerate(names)}
        return (np.array([b["box"] for b in items], np.float64).reshape(-1, 4),
                np.array([b.get("score", 1.0) for b in items], np.float64),
                np.array([b["class"] if "class" in b else lookup.get(b.get("label"), -1) for b in items], np.int64))
    if items is not None and not items:
        return np.zeros((0, 4)), (None if scores is None else np.zeros(0)), np.zeros(0, np.int64)
    return boxes, scores, class_indices(labels, names) if labels is not None else None


def dense_layers(head: str, prediction) -> tuple[list[MaskLayer], list[BoxLayer]]:
    """What a dense head's prediction draws (an object or dict with ``kind`` "segment" and ``mask``
    (H×W class indices), or "detect" and ``boxes`` (N×4 with ``scores`` and ``labels``, or a list of
    ``{"box", "score", "class"}``); ``names``: the classes; optional ``ignore_index``, ``frame`` (the
    boxes' pixel frame), ``region`` (the part of the image the mask or frame covers, in pixels of the
    image at ``image_size``: width, height), ``truth_boxes`` / ``truth_labels``). Other predictions draw
    nothing."""
    kind = _field(prediction, "kind", "")
    names = list(_field(prediction, "names", None) or [])
    region = _field(prediction, "region", None)
    size = _field(prediction, "image_size", None)
    size = tuple(size) if size is not None else None
    if kind == "segment" and _field(prediction, "mask", None) is not None:
        ignore = _field(prediction, "ignore_index", None)
        layer = MaskLayer(np.asarray(_field(prediction, "mask")), names, ignore, title=head, region=region)
        layer.image_size = size
        return [layer], []
    if kind == "detect" and _field(prediction, "boxes", None) is not None:
        frame = _field(prediction, "frame", None)
        frame = tuple(frame) if frame is not None else None
        boxes, scores, labels = box_arrays(_field(prediction, "boxes"), _field(prediction, "scores"),
                                           _field(prediction, "labels"), names)
        layers = [BoxLayer(boxes, scores if scores is not None else np.ones(len(boxes)), labels, names, frame=frame,
                           title=head, region=region)]
        truth = _field(prediction, "truth_boxes", None)
        if truth is not None:
            t_boxes, _, t_labels = box_arrays(truth, None, _field(prediction, "truth_labels"), names)
            layers.append(BoxLayer(t_boxes, None, t_labels, names, frame=frame, truth=True,
                                   title=f"{head} (truth)", region=region))
        for layer in layers:
            layer.image_size = size
        return [], layers
    return [], []
