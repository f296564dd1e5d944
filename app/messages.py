"""What the window says: one line in the status bar, a message box for errors, the strip of notes
above the tree and tabs, and the hint what to do next. Every concern says things through one
:class:`Messages`."""
from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import QObject, QSize, Qt, Signal
from PySide6.QtGui import QPainter, QUndoStack
from PySide6.QtWidgets import QFrame, QHBoxLayout, QLabel, QMessageBox, QSizePolicy, QToolButton, QVBoxLayout, QWidget

from .workspace import Workspace

NOTES_STYLE = {  # the strip above the tree and tabs with what loading a model or project noted
    "info": "QFrame#loadNotes { background: #e8f1fb; border: 1px solid #c4daf2; border-radius: 6px; }",
    "warning": "QFrame#loadNotes { background: #fff4e5; border: 1px solid #f3c58a; border-radius: 6px; }",
}


class ElidedLabel(QLabel):
    """A status-bar label that shrinks with an ellipsis instead of pushing its neighbours out."""

    def __init__(self, text: str = "", parent: QWidget | None = None, max_width: int = 520) -> None:
        super().__init__(text, parent)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        self.setMinimumWidth(60)
        self._max_width = max_width

    def setText(self, text: str) -> None:  # noqa: N802 - Qt's name
        super().setText(text)
        self.setToolTip(text if self.fontMetrics().horizontalAdvance(text) + 16 > self.width() else "")
        self.updateGeometry()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        text = self.text()
        self.setToolTip(text if self.fontMetrics().horizontalAdvance(text) + 16 > self.width() else "")

    def sizeHint(self) -> QSize:
        hint = super().sizeHint()
        return QSize(min(hint.width() + 16, self._max_width), hint.height())

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        painter = QPainter(self)
        rect = self.contentsRect().adjusted(self.margin() + 8, 0, -self.margin() - 8, 0)
        text = self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight, rect.width())
        painter.setPen(self.palette().color(self.foregroundRole()))
        painter.drawText(rect, int(Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft), text)


class NotesStrip(QWidget):
    """What loading a model or project noted (weights assumed or missing, how far undo reaches), in
    full: the status line has room for one short message. Hidden until there are notes."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.frame = QFrame(self)
        self.frame.setObjectName("loadNotes")
        self.label = QLabel()
        self.label.setObjectName("loadNotesText")
        self.label.setTextFormat(Qt.TextFormat.RichText)
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.label.setStyleSheet("background: transparent; border: none;")
        close = QToolButton()
        close.setObjectName("loadNotesClose")
        close.setText("✕")
        close.setAutoRaise(True)
        close.setToolTip("Hide these notes")
        close.clicked.connect(self.hide)
        layout = QHBoxLayout(self.frame)
        layout.setContentsMargins(10, 6, 4, 6)
        layout.addWidget(self.label, 1)
        layout.addWidget(close, 0, Qt.AlignmentFlag.AlignTop)
        margins = QVBoxLayout(self)
        margins.setContentsMargins(6, 6, 6, 2)
        margins.addWidget(self.frame)
        self.hide()

    def show_notes(self, title: str, notes: list[str], level: str) -> None:
        lines = [f"<b>{html.escape(title, quote=False)}</b>"] + [html.escape(n, quote=False) for n in notes]
        self.label.setText("<br>".join(lines))
        self.frame.setStyleSheet(NOTES_STYLE[level])
        self.show()


class Messages(QObject):
    """The status line and error boxes. ``errorShown(message)`` announces every error shown."""

    errorShown = Signal(str)

    def __init__(self, label: QLabel, parent: QWidget, workspace: Workspace, undo_stack: QUndoStack) -> None:
        super().__init__(parent)
        self._label = label
        self._parent = parent
        self._workspace = workspace
        self._undo_stack = undo_stack

    def show_message(self, text: str, level: str = "info") -> None:
        """The last message, in the status line (errors also get a message box: :meth:`show_error`)."""
        self._label.setText(text)
        self._label.setToolTip(text)
        color = {"error": "#c62828", "warning": "#bf360c"}.get(level, "#455a64")
        self._label.setStyleSheet(f"color: {color};")

    def show_error(self, message: str, details: str = "", title: str = "Graft") -> None:
        self.show_message(message, "error")
        self.errorShown.emit(message)
        if details:
            box = QMessageBox(QMessageBox.Icon.Warning, title, message, QMessageBox.StandardButton.Ok, self._parent)
            box.setDetailedText(details)
            box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
            box.open()
        else:
            QMessageBox.warning(self._parent, title, message)

    def errors_titled(self, title: str) -> Any:
        """``errored(message, details)`` for a job: the error in a box titled ``title``."""
        return lambda message, details: self.show_error(message, details, title)

    def suggest_next(self) -> None:
        """With a fresh model and data, say what to do next."""
        s, data = self._workspace.session, self._workspace.data
        if s is None or data is None or s.heads or s.network.notes or self._undo_stack.count():
            return
        names = ", ".join(h.name for h in data.heads[:4])
        first = "delete the output layer (or cut at a layer), then " if s.output_layer else ""
        # The model's name is beside it in the status bar and in the title: the line keeps room for the hint.
        self.show_message(f"{len(data.samples):,} images ready. Next: {first}add heads for {names}.")
