"""The grafted heads of a session: a table, the trunk-and-heads diagram, and Add / Edit / Remove buttons.

The panel only asks (``addRequested``, ``editRequested(name)``, ``removeRequested(name)``); the app opens
the dialog and pushes the undoable operation, and the session's ``heads_changed`` callback refreshes it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QHBoxLayout, QHeaderView, QLabel, QPushButton, QTableWidget,
                               QTableWidgetItem, QVBoxLayout, QWidget)

from engine.network.heads import HeadSpec

from .head_diagram import KIND_SHORT, HeadDiagram, head_colour, outputs_text

COLUMNS = ("Name", "Kind", "Outputs", "Hidden", "Dropout", "Loss weight", "Reads")


def _swatch(colour: str, size: int = 12) -> QIcon:
    pixmap = QPixmap(size, size)
    pixmap.fill(QColor(colour))
    icon = QIcon()
    for mode in (QIcon.Mode.Normal, QIcon.Mode.Selected, QIcon.Mode.Active):
        icon.addPixmap(pixmap, mode)
    return icon


def model_name(session: Any) -> str:
    """A short name for the trunk: the architecture, or the model file's name."""
    source = getattr(session, "source", None)
    if source is None:
        return ""
    if getattr(source, "kind", "") == "file":
        return getattr(source, "arch", None) or Path(source.name).name
    return source.name


class HeadsPanel(QWidget):
    """Adapts a session's heads: refreshed on its ``heads_changed`` callback."""

    addRequested = Signal()
    editRequested = Signal(str)
    removeRequested = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._session: Any = None

        self.table = QTableWidget(0, len(COLUMNS), self)
        self.table.setHorizontalHeaderLabels(COLUMNS)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().hide()
        self.table.setAlternatingRowColors(True)
        self.table.setShowGrid(False)
        self.table.setWordWrap(False)
        header = self.table.horizontalHeader()
        header.setHighlightSections(False)
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.table.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)

        self.empty = QLabel("No heads yet. A head turns the trunk's features into predictions: add one "
                            "for each thing to predict (a class, tags, a number).", self)
        self.empty.setWordWrap(True)
        self.empty.setStyleSheet("color: palette(placeholder-text);")

        self.diagram = HeadDiagram(self)
        self.add_button = QPushButton("Add head…", self)
        self.edit_button = QPushButton("Edit…", self)
        self.remove_button = QPushButton("Remove", self)
        self.add_button.setToolTip("Graft a new head on the trunk")
        self.edit_button.setToolTip("Change the selected head (double-click a row does the same)")
        self.remove_button.setToolTip("Remove the selected head")

        buttons = QHBoxLayout()
        buttons.setSpacing(6)
        buttons.addWidget(self.add_button)
        buttons.addWidget(self.edit_button)
        buttons.addWidget(self.remove_button)
        buttons.addStretch(1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(8, 8, 8, 8)
        layout.setSpacing(8)
        layout.addLayout(buttons)
        layout.addWidget(self.empty)
        layout.addWidget(self.table)
        layout.addWidget(self.diagram)
        layout.addStretch(1)

        self.add_button.clicked.connect(self.addRequested)
        self.edit_button.clicked.connect(self._edit)
        self.remove_button.clicked.connect(self._remove)
        self.table.cellDoubleClicked.connect(lambda row, column: self._edit())
        self.table.itemSelectionChanged.connect(self._update_buttons)
        self.refresh()

    # -- public API -------------------------------------------------------------------------------------
    def set_session(self, session: Any) -> None:
        """Show ``session``'s heads (``None`` to clear), following its ``heads_changed`` callback."""
        if self._session is not None:
            self._session.disconnect("heads_changed", self.refresh)
        self._session = session
        if session is not None:
            session.connect("heads_changed", self.refresh)
        self.refresh()

    def session(self) -> Any:
        return self._session

    def set_diagram_visible(self, visible: bool) -> None:
        """Hide the built-in diagram when the window shows a HeadDiagram of its own."""
        self.diagram.setVisible(visible)

    def current_head(self) -> str | None:
        """The selected head's name."""
        rows = self.table.selectionModel().selectedRows()
        if not rows:
            return None
        item = self.table.item(rows[0].row(), 0)
        return item.data(Qt.ItemDataRole.UserRole) if item else None

    def select_head(self, name: str) -> None:
        for row in range(self.table.rowCount()):
            if self.table.item(row, 0).data(Qt.ItemDataRole.UserRole) == name:
                self.table.selectRow(row)
                return

    def refresh(self) -> None:
        """Rebuild from the session (a handful of rows: cheap)."""
        selected = self.current_head()
        heads: list[HeadSpec] = list(self._session.heads) if self._session is not None else []
        self.table.blockSignals(True)
        self.table.setRowCount(len(heads))
        for row, spec in enumerate(heads):
            values = (spec.name, KIND_SHORT.get(spec.kind, spec.kind), outputs_text(spec),
                      ", ".join(str(h) for h in spec.hidden) or "–", f"{spec.dropout:g}", f"{spec.loss_weight:g}",
                      spec.layer if spec.layer is not None else "end")
            for column, value in enumerate(values):
                item = QTableWidgetItem(value)
                if column == 0:
                    item.setData(Qt.ItemDataRole.UserRole, spec.name)
                    item.setIcon(_swatch(head_colour(row)))
                if column == 2:
                    item.setToolTip("\n".join(spec.label_names))
                if column == 6:
                    item.setToolTip(f"The head reads layer {spec.layer}'s output, pooled to a vector"
                                    if spec.layer is not None else "The head reads the trunk's features (its end)")
                if 4 <= column <= 5:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(row, column, item)
        self.table.setVisible(bool(heads))
        self._fit_table()
        self.empty.setVisible(not heads and self._session is not None)
        self.table.selectionModel().clear()  # a removed head leaves nothing selected (no surprise second Remove)
        if selected:
            self.select_head(selected)
        self.table.blockSignals(False)
        if self._session is not None:
            sizes = getattr(self._session, "head_input_sizes", None)
            tree = getattr(self._session, "tree", None)
            self.diagram.set_model(model_name(self._session), self._session.feature_dim, heads,
                                   sizes() if sizes is not None else None, getattr(tree, "order", ()),
                                   getattr(self._session, "output_layer", None))
        else:
            self.diagram.set_model("", None, [])
        self.add_button.setEnabled(self._session is not None)
        self._update_buttons()

    # -- internals ----------------------------------------------------------------------------------------
    MAX_ROWS = 8

    def _fit_table(self) -> None:
        """As tall as its rows (up to MAX_ROWS, then it scrolls): no empty grey area under a few heads."""
        rows = min(self.table.rowCount(), self.MAX_ROWS)
        height = self.table.horizontalHeader().sizeHint().height() + 2 * self.table.frameWidth()
        height += sum(self.table.rowHeight(r) for r in range(rows)) if rows else 0
        self.table.setFixedHeight(height + 2)

    def _update_buttons(self) -> None:
        has = self.current_head() is not None
        self.edit_button.setEnabled(has)
        self.remove_button.setEnabled(has)

    def _edit(self) -> None:
        name = self.current_head()
        if name:
            self.editRequested.emit(name)

    def _remove(self) -> None:
        name = self.current_head()
        if name:
            self.removeRequested.emit(name)
