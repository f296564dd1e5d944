"""The label audit: labels the model contradicts with high confidence (likely mislabelled) and the labels
it suggests for blank cells, in a table, with "Export suggestions as CSV…".

:meth:`LabelAuditView.show_suggestions` takes items shaped like
:class:`engine.explain.mistakes.Suggestion` (``image``, ``head``, ``column``, ``current``, ``suggested``,
``confidence``, ``reason``). The view writes nothing: ``exportRequested()`` asks the app to write a new
file, and a click on a row asks for its image to be tried (``imageActivated(path)``, and
``suggestionActivated(suggestion)``).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QPersistentModelIndex, Qt, Signal
from PySide6.QtGui import QBrush, QColor
from PySide6.QtWidgets import (QAbstractItemView, QHBoxLayout, QHeaderView, QLabel, QPushButton, QTableView,
                               QVBoxLayout, QWidget)

HEADERS = ("Image", "Head", "Column", "Label now", "Model says", "Confidence", "Why")
REASONS = {"contradicted": "likely mislabelled", "blank": "blank cell"}
CONTRADICTED = QColor("#fdecea")


class SuggestionModel(QAbstractTableModel):
    """One row per suggestion, in the order given (the audit's: contradicted first, most confident first)."""

    def __init__(self, parent: Any = None) -> None:
        super().__init__(parent)
        self._items: list[Any] = []

    def rowCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(self._items)

    def columnCount(self, parent: QModelIndex | QPersistentModelIndex = QModelIndex()) -> int:  # noqa: B008
        return 0 if parent.isValid() else len(HEADERS)

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal and section < len(HEADERS):
            return HEADERS[section]
        return None

    def data(self, index: QModelIndex | QPersistentModelIndex, role: int = Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid() or not 0 <= index.row() < len(self._items):
            return None
        s, column = self._items[index.row()], index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            confidence = "" if s.confidence is None else f"{s.confidence:.1%}"
            return (Path(str(s.image)).name, s.head, s.column, s.current or "(blank)", s.suggested, confidence,
                    REASONS.get(s.reason, s.reason))[column]
        if role == Qt.ItemDataRole.ToolTipRole:
            return str(s.image)
        if role == Qt.ItemDataRole.TextAlignmentRole and column == 5:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == Qt.ItemDataRole.BackgroundRole and s.reason == "contradicted":
            return QBrush(CONTRADICTED)
        return None

    def set_suggestions(self, items: Sequence[Any]) -> None:
        self.beginResetModel()
        self._items = list(items)
        self.endResetModel()

    def suggestion(self, row: int) -> Any:
        return self._items[row]

    def suggestions(self) -> list[Any]:
        return list(self._items)


class LabelAuditView(QWidget):
    """The audit's table, a one-line summary and the export button (enabled when there is something to export)."""

    exportRequested = Signal()
    imageActivated = Signal(str)
    suggestionActivated = Signal(object)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = SuggestionModel(self)
        self.summary_label = QLabel("", self)
        self.summary_label.setWordWrap(True)
        self.export_button = QPushButton("Export suggestions as CSV…", self)
        self.export_button.setToolTip("Write the suggestions to a new CSV file; your data is never changed")
        self.export_button.clicked.connect(self.exportRequested)
        self.table = QTableView(self)
        self.table.setModel(self.model)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setAlternatingRowColors(False)
        self.table.setShowGrid(False)
        self.table.setWordWrap(False)
        self.table.verticalHeader().hide()
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.Interactive)
        header.setStretchLastSection(True)
        header.setHighlightSections(False)
        self.table.clicked.connect(self._clicked)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.export_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 6, 6, 6)
        layout.addWidget(self.summary_label)
        layout.addWidget(self.table, 1)
        layout.addLayout(buttons)
        self.show_message("Evaluate (F6) to see which labels the model doubts.")

    def show_suggestions(self, suggestions: Sequence[Any], confidence: float) -> None:
        """The audit made at ``confidence`` (a label contradicted at least this confidently is listed)."""
        self.model.set_suggestions(suggestions)
        contradicted = sum(1 for s in suggestions if s.reason == "contradicted")
        blank = len(suggestions) - contradicted
        if suggestions:
            self.summary_label.setText(
                f"{contradicted} label{'s' if contradicted != 1 else ''} the model contradicts with at least "
                f"{confidence:.0%} confidence (likely mislabelled, shaded), and its labels for {blank} blank "
                f"cell{'s' if blank != 1 else ''}. Click a row to try its image.")
        else:
            self.summary_label.setText(f"The model contradicts no label with {confidence:.0%} confidence or more, "
                                       "and there are no blank cells to fill.")
        self.table.setVisible(bool(suggestions))
        self.export_button.setEnabled(bool(suggestions))
        self.table.resizeColumnsToContents()

    def show_message(self, text: str) -> None:
        """No audit: ``text`` says why."""
        self.model.set_suggestions([])
        self.summary_label.setText(text)
        self.table.hide()
        self.export_button.setEnabled(False)

    def suggestions(self) -> list[Any]:
        return self.model.suggestions()

    def _clicked(self, index: QModelIndex) -> None:
        if index.isValid():
            suggestion = self.model.suggestion(index.row())
            self.imageActivated.emit(str(suggestion.image))
            self.suggestionActivated.emit(suggestion)
