"""The layer tree: a filter field above a tree view of a :class:`LayerTreeModel`."""
from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import (QEvent, QModelIndex, QPersistentModelIndex, QPoint, QRectF, QSize,
                            QSortFilterProxyModel, Qt, QTimer, Signal)
from PySide6.QtGui import QAction, QColor, QFont, QFontMetrics, QPainter
from PySide6.QtWidgets import (QAbstractItemView, QHeaderView, QLabel, QLineEdit, QMenu, QStyle,
                               QStyledItemDelegate, QStyleOptionViewItem, QTreeView, QVBoxLayout, QWidget)

from engine.network.layer_tree import HEADS_KEY

from .layer_tree_model import CHANGE, LAYER, PARAMS, SHAPE, TELEMETRY, TRAINABLE, TYPE, LayerTreeModel
from .telemetry_delegate import install as install_telemetry_bars

BADGE_COLOURS = {"output": "#3B7DD8", "cut": "#D9822B"}
FILTER_DELAY_MS = 120


class LayerFilterProxy(QSortFilterProxyModel):
    """Keeps the layers whose name or type contains the text (or whose path does, for a dotted query
    such as ``layer3.1``), with their ancestors (recursive filtering)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setRecursiveFilteringEnabled(True)
        self._text = ""

    def filter_text(self) -> str:
        return self._text

    def set_filter_text(self, text: str) -> None:
        text = text.strip().lower()
        if text == self._text:
            return
        self.beginFilterChange()
        self._text = text
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def matches(self, source_index: QModelIndex) -> bool:
        node = source_index.internalPointer() if source_index.isValid() else None
        if node is None or not self._text:
            return True
        t = self._text
        if t in node.name.lower() or t in node.type_name.lower():
            return True
        return ("." in t or t.startswith("@")) and t in node.path.lower()

    def filterAcceptsRow(self, source_row: int, source_parent: QModelIndex | QPersistentModelIndex) -> bool:
        if not self._text:
            return True
        return self.matches(self.sourceModel().index(source_row, 0, source_parent))


class BadgeDelegate(QStyledItemDelegate):
    """Draws an "output" / "cut" / "→ head" pill after a layer's name; rows get a little air."""

    def sizeHint(self, option: QStyleOptionViewItem, index: QModelIndex) -> QSize:
        size = super().sizeHint(option, index)
        size.setHeight(max(size.height(), option.fontMetrics.height() + 8))
        return size

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        super().paint(painter, option, index)
        if index.column() != LAYER:
            return
        text = index.data(LayerTreeModel.BadgeRole)
        if not text:
            return
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        style = opt.widget.style() if opt.widget else None
        if style is None:
            return
        text_rect = style.subElementRect(QStyle.SubElement.SE_ItemViewItemText, opt, opt.widget)
        fm = QFontMetrics(opt.font)
        font = QFont(option.font)
        font.setPointSizeF(max(6.5, option.font.pointSizeF() * 0.82))
        font.setBold(True)
        bfm = QFontMetrics(font)
        w, h = bfm.horizontalAdvance(text) + 12, min(text_rect.height() - 2, bfm.height() + 2)
        x = text_rect.left() + fm.horizontalAdvance(opt.text) + 10
        if x + w > text_rect.right():
            return
        rect = QRectF(x, text_rect.center().y() - h / 2 + 0.5, w, h)
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(QColor(index.data(LayerTreeModel.BadgeColourRole) or BADGE_COLOURS.get(text, "#888888")))
        painter.drawRoundedRect(rect, h / 2, h / 2)
        painter.setPen(QColor("white"))
        painter.setFont(font)
        painter.drawText(rect, Qt.AlignmentFlag.AlignCenter, text)
        painter.restore()


class LayerTreeView(QWidget):
    """Filter field + tree view. The context menu shows the actions given to :meth:`set_context_actions`
    (the same QActions as the window's menus); ``currentPathChanged(path)`` follows the current layer
    (``""`` for none)."""

    currentPathChanged = Signal(str)

    def __init__(self, model: LayerTreeModel | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model if model is not None else LayerTreeModel(parent=self)
        self.proxy = LayerFilterProxy(self)
        self.proxy.setSourceModel(self.model)
        self._actions: list[QAction | None] = []
        self._last_path = ""

        self.filter_edit = QLineEdit(self)
        self.filter_edit.setPlaceholderText("Filter layers by name, type or path")
        self.filter_edit.setClearButtonEnabled(True)
        self.filter_edit.setToolTip("Type part of a layer's name (conv), its type (BatchNorm) "
                                    "or a dotted path (layer3.1)")
        self.no_match = QLabel(self)
        self.no_match.setObjectName("noMatch")
        self.no_match.setStyleSheet("color: palette(placeholder-text); padding: 2px 4px;")
        self.no_match.hide()

        self.tree_view = QTreeView(self)
        self.tree_view.setModel(self.proxy)
        self.tree_view.setItemDelegate(BadgeDelegate(self.tree_view))
        self.tree_view.setUniformRowHeights(True)
        self.tree_view.setAlternatingRowColors(True)
        self.tree_view.setAllColumnsShowFocus(True)
        self.tree_view.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.tree_view.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.tree_view.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.tree_view.setAnimated(False)
        self.tree_view.setIndentation(16)
        self._setup_columns()
        install_telemetry_bars(self.tree_view)  # the Training column's bars, while training shows it

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addWidget(self.filter_edit)
        layout.addWidget(self.no_match)
        layout.addWidget(self.tree_view, 1)

        self._filter_timer = QTimer(self)
        self._filter_timer.setSingleShot(True)
        self._filter_timer.setInterval(FILTER_DELAY_MS)
        self._filter_timer.timeout.connect(lambda: self.set_filter(self.filter_edit.text()))
        self.filter_edit.textChanged.connect(self._filter_timer.start)
        self.tree_view.selectionModel().currentChanged.connect(self._current_changed)
        self.tree_view.customContextMenuRequested.connect(self._show_context_menu)
        self.model.modelReset.connect(self._after_reset)
        self.model.rowsInserted.connect(self._rows_inserted)
        self.model.headerDataChanged.connect(self._show_change_column)
        self.model.columnsInserted.connect(self._telemetry_shown)
        self.model.columnsRemoved.connect(self.proxy.invalidate)
        self._show_change_column()
        self._expand_heads()

    def _setup_columns(self) -> None:
        header = self.tree_view.header()
        header.setStretchLastSection(False)
        header.setMinimumSectionSize(40)
        header.setSectionResizeMode(LAYER, QHeaderView.ResizeMode.Stretch)
        fm = self.tree_view.fontMetrics()
        bold = header.font()
        bold.setBold(True)
        hfm = QFontMetrics(bold)
        samples = {TYPE: "AdaptiveAvgPool2d", SHAPE: "512×28×28", PARAMS: "11.7M", TRAINABLE: "11.7M / 11.7M",
                   CHANGE: "moved 0.13%"}
        widths = {c: max(fm.horizontalAdvance(text) + 24,
                         hfm.horizontalAdvance(str(self.model.headerData(c, Qt.Orientation.Horizontal))) + 22)
                  for c, text in samples.items()}
        for column, width in widths.items():
            header.setSectionResizeMode(column, QHeaderView.ResizeMode.Interactive)
            header.resizeSection(column, width)
        # Room for the name and type; the other columns scroll sideways in a narrow window rather than
        # forcing their width on it (all columns as a minimum made the window at least ~1075 px wide).
        self._layer_width = fm.horizontalAdvance("layer4.1.conv1") + 60  # a name, its checkbox and indentation
        self.tree_view.setMinimumWidth(self._layer_width + widths[TYPE])
        self._full_width = self._layer_width + sum(w for c, w in widths.items() if c != CHANGE)  # every column
        self._change_width = widths[CHANGE]
        self.tree_view.installEventFilter(self)

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt's name
        """Wide enough for every column shown (the window's first split gives the tree this when it can,
        and more room when a comparison adds the Change column)."""
        hint = super().sizeHint()
        full = self._full_width + (0 if self.tree_view.isColumnHidden(CHANGE) else self._change_width)
        return QSize(max(hint.width(), full + 2 * self.tree_view.frameWidth() + 2), hint.height())

    # -- public API --------------------------------------------------------------------------------
    def set_context_actions(self, actions: Sequence[QAction | None]) -> None:
        """Actions for the right-click menu (``None`` = separator)."""
        self._actions = list(actions)

    def context_menu(self) -> QMenu | None:
        """The context menu as it would show now (``None`` when there are no actions)."""
        if not self._actions:
            return None
        menu = QMenu(self)
        for action in self._actions:
            if action is None:
                menu.addSeparator()
            else:
                menu.addAction(action)
        return menu

    def current_path(self) -> str | None:
        """The current layer's path, or ``None``."""
        index = self.tree_view.currentIndex()
        if not index.isValid():
            return None
        return self.proxy.mapToSource(index).data(LayerTreeModel.PathRole)

    def select_path(self, path: str) -> bool:
        """Make ``path`` current, expanding its parents (and clearing a filter that hides it)."""
        source = self.model.index_for_path(path)
        if not source.isValid():
            return False
        index = self.proxy.mapFromSource(source)
        if not index.isValid():
            self.filter_edit.clear()
            self.set_filter("")
            index = self.proxy.mapFromSource(source)
        parent = index.parent()
        while parent.isValid():
            self.tree_view.expand(parent)
            parent = parent.parent()
        self.tree_view.setCurrentIndex(index)
        self.tree_view.scrollTo(index)
        return True

    def set_filter(self, text: str) -> None:
        """Filter now (typing in the field does this after a short pause)."""
        self._filter_timer.stop()
        if self.filter_edit.text() != text:
            self.filter_edit.blockSignals(True)
            self.filter_edit.setText(text)
            self.filter_edit.blockSignals(False)
        if text.strip().lower() == self.proxy.filter_text():
            return
        self.proxy.set_filter_text(text)
        if self.proxy.filter_text():
            self.tree_view.expandAll()
            empty = self.proxy.rowCount() == 0
            self.no_match.setText(f"No layer matches “{text.strip()}”")
            self.no_match.setVisible(empty)
        else:
            self.no_match.hide()
            self.tree_view.collapseAll()
            self._expand_heads()
            current = self.tree_view.currentIndex()
            if current.isValid():
                self.select_path(self.current_path() or "")
        self._emit_current()

    # -- internals -----------------------------------------------------------------------------------
    def _expand_heads(self) -> None:
        heads = self.proxy.mapFromSource(self.model.index_for_path(HEADS_KEY))
        if heads.isValid():
            self.tree_view.expand(heads)

    def _show_change_column(self, *args: object) -> None:
        """The Change column shows only while the model holds a comparison."""
        self.tree_view.setColumnHidden(CHANGE, not self.model.has_changes())
        self._fit_layer_column()
        self.updateGeometry()

    def _telemetry_shown(self, *args: object) -> None:
        """The live Training column came: wide enough for its bar and "12.3 %". The model announces the new
        column under the root only, so the proxy is rebuilt (keeping what is expanded) for the rows below
        other rows (a head under the heads' group) to have it too."""
        self.proxy.invalidate()
        if self.model.columnCount() > TELEMETRY:
            header = self.tree_view.header()
            header.setSectionResizeMode(TELEMETRY, QHeaderView.ResizeMode.Interactive)
            header.resizeSection(TELEMETRY, max(90, self.tree_view.fontMetrics().horizontalAdvance("Training") + 30))
            self._fit_layer_column()

    def _fit_layer_column(self) -> None:
        """The Layer column takes the room the others leave, but never less than a name needs: in a view
        too narrow for every column (the Change column shown, say) the columns scroll sideways instead of
        squeezing the names away."""
        view = self.tree_view
        header = view.header()
        others = sum(header.sectionSize(c) for c in range(1, self.model.columnCount()) if not view.isColumnHidden(c))
        bar = view.verticalScrollBar()
        room = view.width() - 2 * view.frameWidth() - (bar.sizeHint().width() if bar.isVisible() else 0) - others
        if room < self._layer_width:
            header.setSectionResizeMode(LAYER, QHeaderView.ResizeMode.Interactive)
            header.resizeSection(LAYER, self._layer_width)
        else:
            header.setSectionResizeMode(LAYER, QHeaderView.ResizeMode.Stretch)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 - Qt's name
        if watched is self.tree_view and event.type() == QEvent.Type.Resize:
            self._fit_layer_column()
        return super().eventFilter(watched, event)

    def _after_reset(self) -> None:
        self._show_change_column()
        self._expand_heads()
        self._emit_current()

    def _rows_inserted(self, parent: QModelIndex, first: int, last: int) -> None:
        if parent.isValid() and parent.data(LayerTreeModel.PathRole) == HEADS_KEY:
            self._expand_heads()
        elif not parent.isValid():
            self._expand_heads()

    def _current_changed(self, current: QModelIndex, previous: QModelIndex) -> None:
        self._emit_current()

    def _emit_current(self) -> None:
        path = self.current_path() or ""
        if path != self._last_path:
            self._last_path = path
            self.currentPathChanged.emit(path)

    def _show_context_menu(self, pos: QPoint) -> None:
        index = self.tree_view.indexAt(pos)
        if index.isValid():
            self.tree_view.setCurrentIndex(index)
        menu = self.context_menu()
        if menu is not None:
            menu.exec(self.tree_view.viewport().mapToGlobal(pos))
            menu.deleteLater()
