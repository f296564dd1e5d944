"""Surgery on the input: how many channels the network reads, and the size of the image it sees.

Both dialogs say what the surgery will do before it is done: how the first convolution is adapted from
its pretrained RGB kernels (1 channel: their sum; extra channels: their mean), and how preprocessing
follows. The engine validates (:class:`~engine.surgery.operations.SetInputChannels`,
:class:`~engine.surgery.operations.SetInputSize`); a refusal is shown by the caller.
"""
from __future__ import annotations

from PySide6.QtWidgets import QDialog, QDialogButtonBox, QFormLayout, QLabel, QSpinBox, QVBoxLayout, QWidget

from engine.network.preprocess import MAX_CHANNELS

MAX_SIZE = 2048  # engine.surgery.operations.MAX_INPUT_SIZE (widgets import no surgery)


def channels_text(channels: int, current: int, layer: str) -> str:
    """What changing the input to ``channels`` channels does to ``layer`` (the first convolution) and to
    the way images are read."""
    if channels == current:
        return f"The network reads {current} channel{'s' if current != 1 else ''} already."
    if channels == 1:
        return (f"{layer}'s kernels become the sum of its pretrained RGB kernels, so a grey image gives what "
                "the same grey image in RGB gave and the pretrained features survive. Images are read as "
                "greyscale (radiographs, microscopy).")
    if channels == 3:
        return f"{layer} gets its pretrained RGB kernels back. Images are read as RGB."
    if channels == 2:
        return "Two channels are not supported: choose 1 (greyscale), 3 (RGB) or 4 and more."
    extra = channels - 3
    return (f"{layer} keeps its pretrained RGB kernels for the first three channels; the other {extra} "
            f"start from the mean of the RGB kernels. Images are read with all their bands (an RGBA image, or "
            f"a TIFF with {channels} bands: RGB plus infrared, depth …); images with another number of bands "
            "are refused.")


def _dialog_frame(dialog: QDialog, form: QFormLayout, explanation: QLabel, ok_text: str) -> QDialogButtonBox:
    explanation.setWordWrap(True)
    explanation.setMinimumWidth(380)
    buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel, dialog)
    buttons.button(QDialogButtonBox.StandardButton.Ok).setText(ok_text)
    buttons.accepted.connect(dialog.accept)
    buttons.rejected.connect(dialog.reject)
    layout = QVBoxLayout(dialog)
    layout.setContentsMargins(16, 16, 16, 12)
    layout.setSpacing(10)
    layout.addLayout(form)
    layout.addWidget(explanation)
    layout.addWidget(buttons)
    return buttons


class InputChannelsDialog(QDialog):
    """Choose the number of input channels; the text below says how ``layer`` is adapted."""

    def __init__(self, current: int, layer: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Input channels")
        self._current, self._layer = current, layer
        self.spin = QSpinBox(self)
        self.spin.setRange(1, MAX_CHANNELS)
        self.spin.setValue(1 if current == 3 else 3)
        self.spin.setToolTip("1: greyscale; 3: RGB; 4 or more: RGB plus extra bands (infrared, depth …)")
        self.explanation = QLabel(self)
        form = QFormLayout()
        form.addRow("Now", QLabel(f"{current} channel{'s' if current != 1 else ''}, read by {layer}", self))
        form.addRow("Channels", self.spin)
        self.buttons = _dialog_frame(self, form, self.explanation, "Change input")
        self.ok_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.spin.valueChanged.connect(self._update)
        self._update()

    def channels(self) -> int:
        return self.spin.value()

    def _update(self) -> None:
        n = self.channels()
        self.explanation.setText(channels_text(n, self._current, self._layer))
        self.ok_button.setEnabled(n != self._current and n != 2)


class InputSizeDialog(QDialog):
    """Choose the input size (the centre crop); the resize before it keeps its ratio to the crop unless
    given (0 in the resize field: keep the ratio)."""

    def __init__(self, size: int, resize: int, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Input size")
        self._size, self._resize = size, resize
        self.size_spin = QSpinBox(self)
        self.size_spin.setRange(1, MAX_SIZE)
        self.size_spin.setValue(size)
        self.size_spin.setSuffix(" px")
        self.size_spin.setToolTip("The side of the square crop the network sees (e.g. 224 → 320 for small details)")
        self.resize_spin = QSpinBox(self)
        self.resize_spin.setRange(0, MAX_SIZE * 2)
        self.resize_spin.setSpecialValueText("keep the ratio")
        self.resize_spin.setSuffix(" px")
        self.resize_spin.setToolTip("The shorter side images are resized to before the crop")
        self.explanation = QLabel(self)
        form = QFormLayout()
        form.addRow("Now", QLabel(f"{size}×{size}, resized to {resize} first", self))
        form.addRow("Size", self.size_spin)
        form.addRow("Resize to", self.resize_spin)
        self.buttons = _dialog_frame(self, form, self.explanation, "Change size")
        self.ok_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.size_spin.valueChanged.connect(self._update)
        self.resize_spin.valueChanged.connect(self._update)
        self._update()

    def input_size(self) -> int:
        return self.size_spin.value()

    def resize_to(self) -> int | None:
        """The resize asked for, or None to keep the ratio."""
        return self.resize_spin.value() or None

    def _update(self) -> None:
        size = self.input_size()
        resize = self.resize_to() or max(1, round(size * self._resize / self._size))
        self.explanation.setText(
            f"Images are resized so their shorter side is {resize} px, then centre-cropped to {size}×{size}. "
            "The preprocessing, the layer shapes, heads that no longer fit, the metadata and the export follow; "
            "a size too small for the network's strides is refused.")
        self.ok_button.setEnabled((size, resize) != (self._size, self._resize))
