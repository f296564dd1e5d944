"""Try the model on one image: drop it or choose it, see it, and read each head's prediction.

The view asks (``imageChosen(path)``, with the image already shown); the app runs the prediction off the
GUI thread, says so with :meth:`TryImageView.set_status` (or why it cannot), and calls
:meth:`TryImageView.show_predictions` with ``{head: HeadPrediction or text}``.
"""
from __future__ import annotations

from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent, QPixmap
from PySide6.QtWidgets import QFileDialog, QFrame, QHBoxLayout, QLabel, QPushButton, QSizePolicy, QVBoxLayout, QWidget

from .head_diagram import head_colour
from .overlay_view import OverlayCanvas, OverlayControls, dense_layers
from .thumbnails import load_thumbnail

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
MAX_SIDE = 1600  # larger images are decoded at this size: plenty for display


def is_image_path(path: str) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES and Path(path).is_file()


def load_pixmap(path: str) -> QPixmap:
    """Decode ``path`` for display (EXIF rotation applied, huge images decoded smaller)."""
    image = load_thumbnail(path, MAX_SIDE)
    return QPixmap.fromImage(image) if not image.isNull() else QPixmap()


def hint_label(parent: QWidget, text: str = "") -> QLabel:
    """A wrapped grey line under a view ("Predicting…", why something cannot be shown), hidden until set."""
    label = QLabel(text, parent)
    label.setWordWrap(True)
    label.setObjectName("hint")
    label.setVisible(bool(text))
    return label


def percent(p: float) -> str:
    """Every probability shown with one decimal, so a runner-up never reads as if it were ahead
    ("star 32.8%, then circle 32.6%", not "… circle 33%"), as in HeadPrediction.format()."""
    return f"{p:.1%}"


def prediction_html(head: str, prediction: Any) -> str:
    """Rich text for one head: the answer large, the runners-up small."""
    if isinstance(prediction, str):
        text = prediction[len(head) + 2:] if prediction.startswith(f"{head}: ") else prediction
        return f"<span style='font-size:12pt'>{escape(text)}</span>"
    kind = getattr(prediction, "kind", "")
    top = list(getattr(prediction, "top", []) or [])
    if kind == "single" and top:
        best, rest = top[0], top[1:3]
        tail = " · ".join(f"{escape(str(n))} {percent(p)}" for n, p in rest)
        return (f"<span style='font-size:13pt; font-weight:600'>{escape(str(best[0]))}</span> "
                f"<span style='font-size:12pt'>{percent(best[1])}</span>"
                + (f"<br><span style='color:#607d8b'>then {tail}</span>" if tail else ""))
    if kind == "multi":
        if top:
            return "<span style='font-size:12pt'>" + ", ".join(
                f"<b>{escape(str(n))}</b> {percent(p)}" for n, p in top) + "</span>"
        text = prediction.format() if hasattr(prediction, "format") else "none"
        text = text[len(head) + 2:] if text.startswith(f"{head}: ") else text
        return f"<span style='color:#607d8b'>{escape(text)}</span>"
    if kind == "regression" and top:
        return "<span style='font-size:12pt'>" + ", ".join(
            f"{escape(str(n))} <b>{v:.4g}</b>" for n, v in top) + "</span>"
    if kind == "segment" and getattr(prediction, "mask", None) is not None:
        masks, _ = dense_layers(head, prediction)
        return f"<span style='font-size:12pt'>{masks[0].legend()}</span>"
    if kind == "detect" and getattr(prediction, "boxes", None) is not None:
        return f"<span style='font-size:12pt'>{escape(boxes_text(prediction))}</span>"
    text = prediction.format() if hasattr(prediction, "format") else str(prediction)
    text = text[len(head) + 2:] if text.startswith(f"{head}: ") else text
    return f"<span style='font-size:12pt'>{escape(text)}</span>"


def boxes_text(prediction: Any, limit: int = 4) -> str:
    """``3 boxes: square 0.91, circle 0.88, star 0.42`` (best first)."""
    _, layers = dense_layers("", prediction)
    captions = layers[0].captions(0.0) if layers else []
    if not captions:
        return "no boxes"
    more = f", +{len(captions) - limit} more" if len(captions) > limit else ""
    return f"{len(captions)} box{'es' if len(captions) != 1 else ''}: " + ", ".join(captions[:limit]) + more


def prediction_text(head: str, prediction: Any) -> str:
    """One plain line (HeadPrediction.format() or the text given)."""
    if isinstance(prediction, str):
        return prediction
    return prediction.format() if hasattr(prediction, "format") else f"{head}: {prediction}"


class ImageArea(OverlayCanvas):
    """The image, scaled to fit and centred; a dashed drop target when empty; masks and boxes of dense
    heads drawn over it (:class:`~widgets.overlay_view.OverlayCanvas`)."""


class TryImageView(QWidget):
    """Choose or drop an image (``imageChosen(path)``); :meth:`show_predictions` shows each head's answer."""

    imageChosen = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAcceptDrops(True)
        self._path = ""
        self._start_dir = ""
        self._texts: dict[str, str] = {}

        self.choose_button = QPushButton("Choose image…", self)
        self.choose_button.setToolTip("Pick an image to run the model on (or drop one here)")
        self.name_label = QLabel("", self)
        self.name_label.setObjectName("hint")
        self.name_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        top = QHBoxLayout()
        top.addWidget(self.choose_button)
        top.addSpacing(6)
        top.addWidget(self.name_label, 1)

        self.image = ImageArea(self)
        self.overlay_controls = OverlayControls(self.image, self)
        self.results = QFrame(self)
        self.results.setObjectName("predictions")
        self.results_layout = QVBoxLayout(self.results)
        self.results_layout.setContentsMargins(2, 4, 2, 2)
        self.results_layout.setSpacing(8)
        self.status_label = hint_label(self)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 10, 10, 10)
        layout.setSpacing(8)
        layout.addLayout(top)
        layout.addWidget(self.image, 1)
        layout.addWidget(self.overlay_controls)
        layout.addWidget(self.status_label)
        layout.addWidget(self.results)
        self.choose_button.clicked.connect(self.choose_image)

    # -- public API ------------------------------------------------------------------------------------
    def set_image(self, path: str) -> None:
        """Show the image at ``path`` (predictions cleared until :meth:`show_predictions`)."""
        self._path = str(path)
        pixmap = load_pixmap(self._path)
        self.image.set_pixmap(pixmap)
        self.image.set_placeholder("This file could not be shown as an image" if pixmap.isNull()
                                   else "Drop an image here")
        self.name_label.setText(Path(self._path).name)
        self.name_label.setToolTip(self._path)
        self._clear_results()
        self._set_layers({})

    def image_path(self) -> str:
        return self._path

    def show_predictions(self, path: str, predictions: Mapping[str, Any],
                         region: tuple[float, float, float, float] | None = None,
                         image_size: tuple[int, int] | None = None, frame: tuple[int, int] | None = None) -> None:
        """Each head's prediction for ``path`` (HeadPrediction objects or plain text). Dense heads' masks
        and boxes are drawn over the image: over ``region`` of it (pixels of the image at ``image_size``:
        the square the network saw) when given, else over all of it; ``frame``: the pixels the boxes are
        counted in (the network's input, width and height)."""
        if str(path) != self._path:
            self.set_image(path)
        self._clear_results()
        self.status_label.hide()
        for i, (head, prediction) in enumerate((predictions or {}).items()):
            self._texts[head] = prediction_text(head, prediction)
            row = QWidget(self.results)
            row_layout = QHBoxLayout(row)
            row_layout.setContentsMargins(0, 0, 0, 0)
            row_layout.setSpacing(10)
            name = QLabel(f"<span style='color:{head_colour(i)}; font-size:13pt'>●</span> <b>{escape(head)}</b>", row)
            name.setMinimumWidth(90)
            name.setAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop)
            answer = QLabel(prediction_html(head, prediction), row)
            answer.setWordWrap(True)
            answer.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
            answer.setToolTip(self._texts[head])
            row_layout.addWidget(name, 0, Qt.AlignmentFlag.AlignTop)
            row_layout.addWidget(answer, 1)
            self.results_layout.addWidget(row)
        if not predictions:
            self.set_status("The model has no heads to predict with.")
        self._set_layers(predictions or {}, region, image_size, frame)

    def predictions_text(self) -> dict[str, str]:
        """The shown predictions as plain lines, by head."""
        return dict(self._texts)

    def set_status(self, text: str) -> None:
        """A line under the image ("Predicting…", an error)."""
        self.status_label.setText(text)
        self.status_label.setVisible(bool(text))

    def clear(self) -> None:
        self._path = ""
        self._set_layers({})
        self.image.set_pixmap(QPixmap())
        self.image.set_placeholder("Drop an image here")
        self.name_label.clear()
        self._clear_results()
        self.set_status("")

    def choose_image(self) -> None:
        formats = " ".join(f"*{s}" for s in sorted(IMAGE_SUFFIXES))
        path, _ = QFileDialog.getOpenFileName(self, "Choose an image", self._start_dir,
                                              f"Images ({formats});;All files (*)")
        if path:
            self._choose(path)

    # -- drag and drop ---------------------------------------------------------------------------------
    @staticmethod
    def _dropped(event: QDragEnterEvent | QDropEvent) -> str | None:
        mime = event.mimeData()
        if not mime.hasUrls():
            return None
        for url in mime.urls():
            if url.isLocalFile() and is_image_path(url.toLocalFile()):
                return url.toLocalFile()
        return None

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if self._dropped(event):
            event.acceptProposedAction()
            self.image.dragging = True
            self.image.update()
        else:
            event.ignore()

    def dragLeaveEvent(self, event) -> None:
        self.image.dragging = False
        self.image.update()

    def dropEvent(self, event: QDropEvent) -> None:
        self.image.dragging = False
        path = self._dropped(event)
        if path:
            event.acceptProposedAction()
            self._choose(path)
        self.image.update()

    # -- internals ---------------------------------------------------------------------------------------
    def _set_layers(self, predictions: Mapping[str, Any], region=None, image_size=None, frame=None) -> None:
        """Masks and boxes of the dense heads' predictions over the image (none: the image alone)."""
        masks, boxes = [], []
        for head, prediction in predictions.items():
            m, b = dense_layers(head, prediction)
            masks += m
            boxes += b
        for layer in masks + boxes:
            if region is not None:
                layer.region, layer.image_size = region, image_size
        for layer in boxes:
            if frame is not None and layer.frame is None:
                layer.frame = tuple(frame)
        self.image.set_masks(masks)
        self.image.set_boxes(boxes)
        self.overlay_controls.refresh()

    def _choose(self, path: str) -> None:
        self._start_dir = str(Path(path).parent)
        self.set_image(path)
        self.set_status("")  # whoever runs the prediction says when it starts (or why it cannot)
        self.imageChosen.emit(str(path))

    def _clear_results(self) -> None:
        self._texts.clear()
        while self.results_layout.count():
            item = self.results_layout.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
