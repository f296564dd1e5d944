"""The export's precision: the choice (fp32, fp16, int8, and where int8's calibration images come from)
and, after a reduced export, the table that measures the file against fp32.

Both are plain views: the window says which calibration sources exist and what the comparison runs on,
and reads back what was chosen; the report dialog shows text it is given and asks for a re-run with
``keepFloatRequested``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QFont, QFontDatabase, QFontInfo, QGuiApplication
from PySide6.QtWidgets import (QButtonGroup, QDialog, QDialogButtonBox, QFileDialog, QGroupBox, QHBoxLayout,
                               QLabel, QLineEdit, QPlainTextEdit, QPushButton, QRadioButton, QVBoxLayout, QWidget)

from .try_image_view import hint_label

PRECISION_CHOICES = (
    ("fp32", "fp32", "full precision: the numbers PyTorch computes"),
    ("fp16", "fp16", "half the size; the input and outputs stay float32, so code reading the file does not change"),
    ("int8", "int8", "about a quarter of the size and faster on CPUs: calibrated on training images"),
)
DYNAMIC_NOTE = ("Without calibration images int8 falls back to dynamic quantization of the linear layers: "
                "their weights become int8, the convolutions stay float, so the file shrinks less and runs "
                "about as fast as fp32.")


@dataclass
class CalibrationSource:
    """One place int8's calibration images may come from. ``key``: "data", "recorded", "folder" or
    "none"; ``available`` False greys it out, ``detail`` saying why (or where, as a tooltip)."""

    key: str
    text: str
    available: bool = True
    detail: str = ""


def fixed_font() -> QFont:
    """The system's fixed-width font, or the first font Qt knows to be fixed-width when the system's is
    not (fontconfig's "monospace" may be Noto Sans Mono, whose wide symbols make Qt call it proportional)."""
    font = QFontDatabase.systemFont(QFontDatabase.SystemFont.FixedFont)
    if not QFontInfo(font).fixedPitch():
        family = next((f for f in QFontDatabase.families() if QFontDatabase.isFixedPitch(f)), None)
        if family is not None:
            font.setFamily(family)
    return font


class PrecisionDialog(QDialog):
    """Choose the precision of the file and, for int8, the calibration images. After ``accept`` read
    :meth:`precision`, :meth:`calibration` and :meth:`folder`."""

    def __init__(self, parent: QWidget | None, file_name: str, precision: str,
                 sources: Sequence[CalibrationSource], comparison: str, start_dir: str = "") -> None:
        super().__init__(parent)
        self.setWindowTitle(f"Export {file_name}")
        self.setMinimumWidth(560)
        self._start_dir = start_dir
        layout = QVBoxLayout(self)

        box = QGroupBox("Precision")
        column = QVBoxLayout(box)
        self.precisions = QButtonGroup(self)
        self.precision_buttons: dict[str, QRadioButton] = {}
        for key, title, words in PRECISION_CHOICES:
            button = QRadioButton(f"{title}: {words}")
            button.setObjectName(f"precision_{key}")
            self.precisions.addButton(button)
            self.precision_buttons[key] = button
            column.addWidget(button)
        layout.addWidget(box)

        self.calibration_box = QGroupBox("int8 calibration images")
        column = QVBoxLayout(self.calibration_box)
        self.sources = QButtonGroup(self)
        self.source_buttons: dict[str, QRadioButton] = {}
        for source in sources:
            button = QRadioButton(source.text)
            button.setObjectName(f"calibration_{source.key}")
            button.setEnabled(source.available)
            button.setToolTip(source.detail)
            self.sources.addButton(button)
            self.source_buttons[source.key] = button
            if source.key == "folder":
                row = QHBoxLayout()
                row.addWidget(button)
                self.folder_edit = QLineEdit()
                self.folder_edit.setPlaceholderText("a folder of images (searched recursively)")
                self.browse = QPushButton("Browse…")
                self.browse.setAutoDefault(False)  # Enter exports
                self.browse.clicked.connect(self._browse)
                row.addWidget(self.folder_edit, 1)
                row.addWidget(self.browse)
                column.addLayout(row)
                self.folder_edit.textChanged.connect(lambda _: (button.setChecked(True), self._validate()))
            else:
                column.addWidget(button)
                if source.detail and not source.available:
                    column.addWidget(hint_label(self, "    " + source.detail))
        if not hasattr(self, "folder_edit"):
            self.folder_edit = QLineEdit()  # never shown: folder() reads it
        self.dynamic_note = hint_label(self, DYNAMIC_NOTE)
        column.addWidget(self.dynamic_note)
        layout.addWidget(self.calibration_box)
        self.comparison = hint_label(self, comparison)
        self.comparison.setObjectName("comparison")
        layout.addWidget(self.comparison)

        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Cancel)
        self.export_button = self.buttons.addButton("Export", QDialogButtonBox.ButtonRole.AcceptRole)
        self.export_button.setDefault(True)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)

        first = next((s.key for s in sources if s.available), None)
        if first is not None:
            self.source_buttons[first].setChecked(True)
        self.precision_buttons.get(precision, self.precision_buttons["fp32"]).setChecked(True)
        self.precisions.buttonToggled.connect(lambda *_: self._validate())
        self.sources.buttonToggled.connect(lambda *_: self._validate())
        self._validate()

    def precision(self) -> str:
        return next(k for k, b in self.precision_buttons.items() if b.isChecked())

    def calibration(self) -> str:
        """The chosen calibration source's key (int8 only; "none" otherwise)."""
        if self.precision() != "int8":
            return "none"
        return next((k for k, b in self.source_buttons.items() if b.isChecked()), "none")

    def folder(self) -> str:
        return self.folder_edit.text().strip()

    def choose(self, precision: str, calibration: str | None = None, folder: str | None = None) -> None:
        """Set the choices as a person would (tests and defaults)."""
        self.precision_buttons[precision].setChecked(True)
        if folder is not None:
            self.folder_edit.setText(folder)
        if calibration is not None:
            self.source_buttons[calibration].setChecked(True)
        self._validate()

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Calibration images", self.folder() or self._start_dir)
        if folder:
            self.folder_edit.setText(folder)

    def _validate(self) -> None:
        int8 = self.precision() == "int8"
        self.calibration_box.setEnabled(int8)
        self.dynamic_note.setVisible(int8 and self.calibration() == "none")
        ok = True
        if int8 and self.calibration() == "folder":
            ok = bool(self.folder()) and Path(self.folder()).expanduser().is_dir()
            self.export_button.setToolTip("" if ok else "Choose a folder of images")
        self.export_button.setEnabled(ok)


class PrecisionReportDialog(QDialog):
    """A reduced export against fp32: what was written, the table (monospace, as the CLI prints it), and
    when int8 lost accuracy a warning and a button asking to keep the most sensitive layers in float."""

    keepFloatRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export")
        layout = QVBoxLayout(self)
        self.summary = QLabel("")
        self.summary.setObjectName("summary")
        self.summary.setWordWrap(True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.summary)
        self.table = QPlainTextEdit()
        self.table.setObjectName("precisionTable")
        self.table.setReadOnly(True)
        self.table.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.table.setFont(fixed_font())
        layout.addWidget(self.table, 1)
        self.warning = QLabel("")
        self.warning.setObjectName("warning")
        self.warning.setWordWrap(True)
        self.warning.hide()
        layout.addWidget(self.warning)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        self.keep_float = self.buttons.addButton("Keep the most sensitive layers in float",
                                                 QDialogButtonBox.ButtonRole.ActionRole)
        self.keep_float.setToolTip("Export int8 again: a per-layer sensitivity pass finds the layers int8 hurts "
                                   "most, and as few of them as win the accuracy back stay float")
        self.keep_float.hide()
        self.keep_float.clicked.connect(self.keepFloatRequested)
        self.buttons.rejected.connect(self.reject)
        layout.addWidget(self.buttons)

    def set_report(self, title: str, summary: str, table: str, warning: str = "", offer_keep_float: bool = False) -> None:
        self.setWindowTitle(title)
        self.summary.setText(summary)
        self.table.setPlainText(table)
        self.warning.setText(warning)
        self.warning.setVisible(bool(warning))
        self.keep_float.setVisible(offer_keep_float)
        self.keep_float.setEnabled(offer_keep_float)
        self._fit(table)

    def set_busy(self, text: str) -> None:
        """A re-run has started: say so, and let it not be asked twice."""
        self.summary.setText(text)
        self.keep_float.setEnabled(False)

    def _fit(self, table: str) -> None:
        """Wide and tall enough for the whole table, within the screen."""
        metrics = self.table.fontMetrics()
        lines = table.splitlines() or [""]
        width = max(metrics.horizontalAdvance(line) for line in lines) + 48
        height = metrics.lineSpacing() * (len(lines) + 1) + 24
        screen = QGuiApplication.primaryScreen()
        room = screen.availableGeometry() if screen is not None else None
        if room is not None:
            width, height = min(width, room.width() - 80), min(height, room.height() // 2)
        self.table.setMinimumSize(max(width, 360), max(height, 120))
