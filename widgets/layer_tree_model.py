"""Qt item model over the engine's :class:`~engine.network.layer_tree.LayerTree` (napari's ``qt_tree_model`` pattern).

The engine owns the nodes; this adapter replays the tree's callbacks as ``beginInsertRows``/``endInsertRows``,
``beginRemoveRows``/``endRemoveRows`` and ``dataChanged`` with the roles that changed, and only resets when
a different tree is set. The freeze toggle is ``CheckStateRole`` on column 0: :meth:`setData` hands the
request to a handler (the app pushes an undoable ``SetTrainable``); the engine's ``changed`` event then
updates the check boxes and the Trainable column.

Live layer telemetry (:mod:`engine.training.telemetry`): :meth:`LayerTreeModel.set_telemetry` takes a plain
``{path: (gradient norm, relative weight change)}`` and shows a sixth column, Change, on those rows (its
``BarRole`` is the change as a share of the largest, for :class:`widgets.telemetry_delegate.TelemetryBarDelegate`);
``set_telemetry(None)`` takes the column away again. Without telemetry the model has its five columns.

Learning-rate factors (:mod:`engine.network.lr_factors`): a layer whose factor is not 1 (its own or
inherited) says ``×0.1`` after its trainable count, and its tooltip says where the factor comes from
(``FactorRole``: the factor and whether the layer sets it itself).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from PySide6.QtCore import QAbstractItemModel, QModelIndex, QObject, QPersistentModelIndex, Qt
from PySide6.QtGui import QBrush, QColor, QFont, QGuiApplication, QIcon, QPainter, QPalette, QPixmap

from engine.network.layer_tree import HEADS_KEY, LayerNode, LayerTree
from engine.units import human_count as human

from .head_diagram import head_colour

Index = QModelIndex | QPersistentModelIndex
ToggleHandler = Callable[[str, bool], Any]

COLUMNS = ("Layer", "Type", "Output shape", "Parameters", "Trainable", "Change")
LAYER, TYPE, SHAPE, PARAMS, TRAINABLE, CHANGE = range(len(COLUMNS))
TELEMETRY = len(COLUMNS)  # the live telemetry column, while training shows it
TELEMETRY_TITLE = "Training"

CHECK = {"trainable": Qt.CheckState.Checked, "frozen": Qt.CheckState.Unchecked,
         "partial": Qt.CheckState.PartiallyChecked}
STATE_WORDS = {"trainable": "trains", "frozen": "frozen", "partial": "partly frozen", "none": "no weights"}

_ROLE = Qt.ItemDataRole
DISPLAY, CHECK_ROLE = _ROLE.DisplayRole, _ROLE.CheckStateRole




def shape_text(shape: tuple[int, ...] | None) -> str:
    """``(64, 56, 56)`` -> ``64×56×56``."""
    return "×".join(str(d) for d in shape) if shape else ""


class Change(Protocol):
    """What the change column shows for a layer: an :class:`engine.project.diff.LayerChange` or alike."""

    status: str  # "removed" | "added" | "replaced" | "reshaped" | "moved" | "same" | "kept"

    @property
    def badge(self) -> str: ...  # "moved 3.2%", "reshaped", "" when unchanged

    @property
    def text(self) -> str: ...


CHANGE_COLOURS = {"added": "#2e7d32", "replaced": "#c62828", "reshaped": "#c62828", "moved": "#1565c0"}


def badge(node: LayerNode) -> str:
    """``"output"`` for the classifier layer, ``"→ shape"`` on a layer heads read (their names), ``"cut"``
    where the trunk was cut, else ``""``."""
    if node.is_output:
        return "output"
    if node.kind == "layer" and node.read_by:
        return "→ " + ", ".join(node.read_by)
    if node.kind == "layer" and node.extra.startswith("cut"):
        return "cut"
    return ""


UNUSED_TEXT = "Not computed: every head reads an earlier layer, so the trunk stops before this one"


class LayerTreeModel(QAbstractItemModel):
    """Five columns over a LayerTree: Layer (checkable: trains or frozen), Type, Output shape, Parameters,
    Trainable. Custom roles give plain values (path, node, shape tuple, parameter counts, kind, is-output)."""

    PathRole = _ROLE.UserRole + 1
    NodeRole = _ROLE.UserRole + 2
    ShapeRole = _ROLE.UserRole + 3
    ParamsRole = _ROLE.UserRole + 4  # (params, trainable_params)
    KindRole = _ROLE.UserRole + 5
    IsOutputRole = _ROLE.UserRole + 6
    BadgeRole = _ROLE.UserRole + 7  # "output" | "cut" | ""
    TypeRole = _ROLE.UserRole + 8
    ChangeRole = _ROLE.UserRole + 9  # the layer's change status ("moved", "added" …), None without a comparison
    UnusedRole = _ROLE.UserRole + 10  # True for a layer the forward pass no longer computes
    BadgeColourRole = _ROLE.UserRole + 11  # the badge's colour (a head's, for a layer heads read), or None
    ReadsRole = _ROLE.UserRole + 12  # a head: the layer it reads ("" = the end); a layer: the heads reading it
    TelemetryRole = _ROLE.UserRole + 13  # (gradient norm, relative weight change) or None
    BarRole = _ROLE.UserRole + 14  # the change as a share (0..1) of the largest one shown, or None
    FactorRole = _ROLE.UserRole + 15  # (learning-rate factor, set on this node itself) or None for a factor of 1

    def __init__(self, tree: LayerTree | None = None, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._tree: LayerTree | None = None
        self._toggle: ToggleHandler | None = None
        self._rows: dict[int, dict[int, int]] = {}  # id(parent) -> {id(child): row}
        self._dots: dict[str, QIcon] = {}
        self._changes: dict[str, Change] = {}
        self._bold = QFont()
        self._bold.setBold(True)
        self._italic = QFont()
        self._italic.setItalic(True)
        self._dim = QBrush(QGuiApplication.palette().color(QPalette.ColorGroup.Disabled,
                                                          QPalette.ColorRole.Text))
        self._telemetry: dict[str, tuple[float, float]] | None = None
        self._largest_change = 0.0
        if tree is not None:
            self.set_tree(tree)

    # -- tree ------------------------------------------------------------------------------------
    def tree(self) -> LayerTree | None:
        return self._tree

    def set_tree(self, tree: LayerTree | None) -> None:
        """Show ``tree`` (a model reset), disconnecting from the previous one."""
        self.beginResetModel()
        if self._tree is not None:
            for event, slot in self._slots():
                self._tree.disconnect(event, slot)
        self._tree = tree
        self._rows.clear()
        if tree is not None:
            for event, slot in self._slots():
                tree.connect(event, slot)
        self.endResetModel()

    def _slots(self) -> Iterable[tuple[str, Callable[..., None]]]:
        return (("about_to_insert", self._on_about_to_insert), ("inserted", self._on_inserted),
                ("about_to_remove", self._on_about_to_remove), ("removed", self._on_removed),
                ("changed", self._on_changed), ("reset", self._on_reset))

    # -- freeze toggle ---------------------------------------------------------------------------
    def set_toggle_handler(self, handler: ToggleHandler | None) -> None:
        """``handler(path, trainable)`` is called when the user ticks or unticks a layer."""
        self._toggle = handler

    def apply_directly(self, session: Any) -> None:
        """Fallback handler (tests, the CLI-less demo): apply ``SetTrainable`` through the engine history."""
        from engine.surgery.operations import SetTrainable

        if session.tree is not self._tree:
            self.set_tree(session.tree)
        self.set_toggle_handler(lambda path, trainable: session.do(SetTrainable("layers", [path], trainable)))

    # -- before/after comparison ----------------------------------------------------------------
    def set_changes(self, changes: Mapping[str, Change] | None) -> None:
        """Show a comparison in the Change column: path -> change (a ModelDiff's ``changes()``); None or
        empty clears it. The header's tooltip and every row's change cell are announced as changed."""
        self._changes = dict(changes or {})
        self.headerDataChanged.emit(Qt.Orientation.Horizontal, CHANGE, CHANGE)
        if self._tree is not None:
            for node in self._tree:
                if node.parent is not None:
                    index = self.createIndex(self._row(node), CHANGE, node)
                    self.dataChanged.emit(index, index, [DISPLAY, _ROLE.ForegroundRole, _ROLE.ToolTipRole,
                                                         self.ChangeRole])

    def changes(self) -> dict[str, Change]:
        return dict(self._changes)

    def has_changes(self) -> bool:
        return bool(self._changes)

    def change(self, path: str) -> Change | None:
        return self._changes.get(path)

    # -- live telemetry --------------------------------------------------------------------------
    def set_telemetry(self, values: dict[str, tuple[float, float]] | None) -> None:
        """Show ``{path: (gradient norm, relative change)}`` in the Change column (added on the first
        call); None removes the column."""
        if values is None:
            if self._telemetry is not None:
                self.beginRemoveColumns(QModelIndex(), TELEMETRY, TELEMETRY)
                self._telemetry = None
                self.endRemoveColumns()
            return
        if self._telemetry is None:
            self.beginInsertColumns(QModelIndex(), TELEMETRY, TELEMETRY)
            self._telemetry = {}
            self.endInsertColumns()
        touched = set(self._telemetry) | set(values)
        self._telemetry = {k: (float(v[0]), float(v[1])) for k, v in values.items()}
        self._largest_change = max((v[1] for v in self._telemetry.values()), default=0.0)
        for path in touched:
            index = self.index_for_path(path, TELEMETRY)
            if index.isValid():
                self.dataChanged.emit(index, index, [DISPLAY, self.TelemetryRole, self.BarRole, _ROLE.ToolTipRole])

    def telemetry(self) -> dict[str, tuple[float, float]] | None:
        return None if self._telemetry is None else dict(self._telemetry)

    def _columns(self) -> int:
        return len(COLUMNS) + (self._telemetry is not None)

    # -- lookups ---------------------------------------------------------------------------------
    def node(self, index: Index) -> LayerNode | None:
        return index.internalPointer() if index.isValid() else None

    def index_for_path(self, path: str, column: int = 0) -> QModelIndex:
        """The index of the node at ``path`` (invalid when there is none)."""
        node = self._tree.node(path) if self._tree is not None and path else None
        if node is None or node.parent is None:
            return QModelIndex()
        return self.createIndex(self._row(node), column, node)

    def _index(self, node: LayerNode | None, column: int = 0) -> QModelIndex:
        if node is None or node.parent is None:  # the invisible root
            return QModelIndex()
        return self.createIndex(self._row(node), column, node)

    def _row(self, node: LayerNode) -> int:
        parent = node.parent
        rows = self._rows.get(id(parent))
        if rows is None:
            rows = self._rows[id(parent)] = {id(c): i for i, c in enumerate(parent.children)}
        row = rows.get(id(node))
        return row if row is not None else node.row()

    # -- QAbstractItemModel ----------------------------------------------------------------------
    def index(self, row: int, column: int, parent: Index = QModelIndex()) -> QModelIndex:
        if self._tree is None or not 0 <= column < self._columns() or row < 0:
            return QModelIndex()
        if parent.isValid() and parent.column() != 0:
            return QModelIndex()
        node = parent.internalPointer() if parent.isValid() else self._tree.root
        if row >= len(node.children):
            return QModelIndex()
        return self.createIndex(row, column, node.children[row])

    def parent(self, index: Index | None = None) -> QModelIndex | QObject | None:  # type: ignore[override]
        if index is None:  # QObject.parent()
            return QObject.parent(self)
        if not index.isValid():
            return QModelIndex()
        return self._index(index.internalPointer().parent)

    def sibling(self, row: int, column: int, index: Index) -> QModelIndex:
        if index.isValid() and row == index.row() and 0 <= column < self._columns():
            return self.createIndex(row, column, index.internalPointer())
        return super().sibling(row, column, index)

    def rowCount(self, parent: Index = QModelIndex()) -> int:
        if self._tree is None:
            return 0
        if not parent.isValid():
            return len(self._tree.root.children)
        return len(parent.internalPointer().children) if parent.column() == 0 else 0

    def columnCount(self, parent: Index = QModelIndex()) -> int:
        return self._columns()

    def hasChildren(self, parent: Index = QModelIndex()) -> bool:
        return self.rowCount(parent) > 0

    def headerData(self, section: int, orientation: Qt.Orientation, role: int = DISPLAY) -> Any:
        if orientation != Qt.Orientation.Horizontal or not 0 <= section < self._columns():
            return None
        if section == TELEMETRY:
            if role == DISPLAY:
                return TELEMETRY_TITLE
            if role == _ROLE.ToolTipRole:
                return "How much each trainable block's weights changed since training started (bar), and its gradient"
            return None
        if role == DISPLAY:
            return COLUMNS[section]
        if role == _ROLE.TextAlignmentRole and section in (PARAMS, TRAINABLE):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == _ROLE.ToolTipRole:
            return ("Tick a layer to train it, untick to freeze it", "Module class",
                    "Shape of the layer's output for one image (channels×height×width)",
                    "Number of weights", "Weights that train / all weights",
                    "What changed since the compared model: added, reshaped, or how far the weights moved "
                    "(‖ΔW‖ / ‖W‖)")[section]
        return None

    def flags(self, index: Index) -> Qt.ItemFlag:
        if not index.isValid():
            return Qt.ItemFlag.NoItemFlags
        flags = Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable
        if index.column() == LAYER and index.internalPointer().params > 0:
            flags |= Qt.ItemFlag.ItemIsUserCheckable
        return flags

    def data(self, index: Index, role: int = DISPLAY) -> Any:
        if not index.isValid():
            return None
        node: LayerNode = index.internalPointer()
        column = index.column()
        if role in (self.TelemetryRole, self.BarRole) or (
                column == TELEMETRY and role in (DISPLAY, _ROLE.TextAlignmentRole, _ROLE.ToolTipRole)):
            return self._telemetry_data(node, column, role)
        if role == DISPLAY:
            if column == LAYER:
                return node.name
            if column == TYPE:
                if node.kind == "head" and node.read_by and node.read_by[0]:
                    return f"{node.type_name} ← {node.read_by[0]}"
                return node.type_name
            if column == SHAPE:
                return "" if node.kind == "heads" else shape_text(node.out_shape)
            if column == PARAMS:
                return human(node.params) if node.params else ""
            if column == TRAINABLE:
                if not node.params:
                    return ""
                factor = f"  ×{node.lr_factor:g}" if node.lr_factor != 1 else ""
                return f"{human(node.trainable_params)} / {human(node.params)}{factor}"
            if column == CHANGE:
                change = self._changes.get(node.path)
                return change.badge if change is not None else ""
            return None
        if role == CHECK_ROLE:
            if column == LAYER and node.params > 0:
                return CHECK[node.frozen_state]
            return None
        if role == _ROLE.TextAlignmentRole:
            if column in (PARAMS, TRAINABLE):
                return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            return None
        if role == _ROLE.FontRole:
            if node.unused:
                return self._italic
            return self._bold if column == LAYER and node.is_output else None
        if role == _ROLE.ForegroundRole:
            if column == CHANGE and node.path in self._changes:
                colour = CHANGE_COLOURS.get(self._changes[node.path].status)
                return QBrush(QColor(colour)) if colour else self._dim
            if node.unused or (column == TRAINABLE and node.params and node.trainable_params == 0):
                return self._dim
            return None
        if role == _ROLE.DecorationRole:
            if column == LAYER and node.kind == "head":
                return self._dot(head_colour(self._row(node)))
            return None
        if role == _ROLE.ToolTipRole:
            if column == CHANGE and node.path in self._changes:
                return self._changes[node.path].text
            return self._tooltip(node)
        if role == self.ChangeRole:
            change = self._changes.get(node.path)
            return change.status if change is not None else None
        if role == self.PathRole:
            return node.path
        if role == self.NodeRole:
            return node
        if role == self.ShapeRole:
            return node.out_shape
        if role == self.ParamsRole:
            return (node.params, node.trainable_params)
        if role == self.KindRole:
            return node.kind
        if role == self.IsOutputRole:
            return node.is_output
        if role == self.BadgeRole:
            return badge(node)
        if role == self.TypeRole:
            return node.type_name
        if role == self.UnusedRole:
            return node.unused
        if role == self.BadgeColourRole:
            return self._reader_colour(node)
        if role == self.ReadsRole:
            return node.read_by
        if role == self.FactorRole:
            return self._factor(node)
        return None

    @staticmethod
    def _factor(node: LayerNode) -> tuple[float, bool] | None:
        """(factor, own) where the factor is not 1: own when the layer above holds another factor."""
        if node.lr_factor == 1 or not node.params:
            return None
        parent = node.parent
        above = parent.lr_factor if parent is not None and parent.kind != "root" else 1.0
        return node.lr_factor, above != node.lr_factor

    @staticmethod
    def _factor_source(node: LayerNode) -> str:
        """The path of the highest layer above ``node`` (or itself) that shares its factor: where it is set."""
        source = node
        while source.parent is not None and source.parent.kind != "root" and source.parent.lr_factor == node.lr_factor:
            source = source.parent
        return source.path

    def _reader_colour(self, node: LayerNode) -> str | None:
        """The colour of the first head that reads ``node`` (the heads group's order gives the colours)."""
        if node.kind != "layer" or not node.read_by or node.is_output or self._tree is None:
            return None
        heads = self._tree.node(HEADS_KEY)
        names = [c.name for c in heads.children] if heads is not None else []
        return head_colour(names.index(node.read_by[0])) if node.read_by[0] in names else None

    def _telemetry_data(self, node: LayerNode, column: int, role: int) -> Any:
        value = self._telemetry.get(node.path) if self._telemetry is not None else None
        if role == self.TelemetryRole:
            return value
        if role == self.BarRole:
            if value is None:
                return None
            return value[1] / self._largest_change if self._largest_change > 0 else 0.0
        if column != TELEMETRY:
            return None
        if role == DISPLAY:
            if value is None:
                return ""
            percent = value[1] * 100  # "0.026 %", "24 %", "270 %" (a new head moves far from its start)
            return f"{percent:.2g} %" if percent < 100 else f"{percent:.0f} %"
        if role == _ROLE.TextAlignmentRole:
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        if role == _ROLE.ToolTipRole and value is not None:
            return (f"<b>{node.path}</b><br>Weights changed {value[1] * 100:.3g} % since training started "
                    f"(‖W − W₀‖ / ‖W₀‖)<br>Gradient norm {value[0]:.3g}")
        return None

    def _dot(self, colour: str) -> QIcon:
        """A small filled circle in a head's colour (cached)."""
        icon = self._dots.get(colour)
        if icon is None:
            pixmap = QPixmap(16, 16)
            pixmap.fill(Qt.GlobalColor.transparent)
            painter = QPainter(pixmap)
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(QColor(colour))
            painter.drawEllipse(3, 3, 10, 10)
            painter.end()
            icon = self._dots[colour] = QIcon(pixmap)
        return icon

    def _tooltip(self, node: LayerNode) -> str:
        lines = [f"<b>{node.path}</b>" if node.kind == "layer" else f"<b>{node.name}</b>"]
        if node.kind == "heads":
            dim = node.out_shape[0] if node.out_shape else None
            lines.append(f"Heads grafted on the trunk's {dim} features" if dim else "Heads grafted on the trunk")
        else:
            lines.append(node.type_name + (f" → {shape_text(node.out_shape)}" if node.out_shape else ""))
        if node.params:
            lines.append(f"{node.params:,} weights, {node.trainable_params:,} training "
                         f"({STATE_WORDS[node.frozen_state]})")
        if node.is_output:
            lines.append("The network's output (classifier) layer")
        if node.extra:
            lines.append(("Labels: " if node.kind == "head" else "") + node.extra)
        if node.kind == "head" and node.read_by:
            lines.append(f"Reads layer {node.read_by[0]}'s output, pooled to a vector" if node.read_by[0]
                         else "Reads the trunk's features (its end)")
        elif node.kind == "layer" and node.read_by:
            lines.append(f"Read by head{'s' if len(node.read_by) > 1 else ''} {', '.join(node.read_by)} "
                         "(its output pooled to a vector)")
        if node.unused:
            lines.append(UNUSED_TEXT)
        factor = self._factor(node)
        if factor is not None:
            value, own = factor
            frozen = " (frozen)" if value == 0 else ""
            lines.append(f"Learning-rate factor ×{value:g}{frozen}, " + (
                "set here and inherited by the layers below" if own else f"inherited from {self._factor_source(node)}"))
        return "<br>".join(lines)

    def setData(self, index: Index, value: Any, role: int = _ROLE.EditRole) -> bool:
        """A tick on column 0 asks the toggle handler to (un)freeze the layer; the model itself changes
        only when the engine announces it."""
        if role != CHECK_ROLE or not index.isValid() or index.column() != LAYER or self._toggle is None:
            return False
        node: LayerNode = index.internalPointer()
        if node.params == 0:
            return False
        state = value.value if isinstance(value, Qt.CheckState) else int(value)
        self._toggle(node.path, state != Qt.CheckState.Unchecked.value)
        return True

    # -- engine events -> Qt signals -------------------------------------------------------------
    def _on_about_to_insert(self, parent: LayerNode, start: int, end: int) -> None:
        self._rows.clear()
        self.beginInsertRows(self._index(parent), start, end)

    def _on_inserted(self, parent: LayerNode, start: int, end: int) -> None:
        self._rows.clear()
        self.endInsertRows()

    def _on_about_to_remove(self, parent: LayerNode, start: int, end: int) -> None:
        self._rows.clear()
        self.beginRemoveRows(self._index(parent), start, end)

    def _on_removed(self, parent: LayerNode, start: int, end: int) -> None:
        self._rows.clear()
        self.endRemoveRows()

    def _on_reset(self, *args: Any) -> None:
        self.beginResetModel()
        self._rows.clear()
        self.endResetModel()

    def _on_changed(self, node: LayerNode, fields: Iterable[str]) -> None:
        fields = set(fields)
        if node.parent is None:
            return
        row = self._row(node)

        def changed(column: int, roles: list[int]) -> None:
            index = self.createIndex(row, column, node)
            self.dataChanged.emit(index, index, roles)

        trainable_roles = [DISPLAY, _ROLE.ForegroundRole, self.ParamsRole]
        if fields & {"params", "trainable_params"}:
            changed(LAYER, [CHECK_ROLE])
            changed(TRAINABLE, trainable_roles)
        if "lr_factor" in fields:
            changed(LAYER, [_ROLE.ToolTipRole, self.FactorRole])
            changed(TRAINABLE, [DISPLAY, _ROLE.ToolTipRole, self.FactorRole])
        if "params" in fields:
            changed(PARAMS, [DISPLAY, self.ParamsRole])
        if fields & {"is_output", "extra", "read_by"}:
            changed(LAYER, [DISPLAY, _ROLE.FontRole, self.IsOutputRole, self.BadgeRole, self.BadgeColourRole,
                            self.ReadsRole])
        if "read_by" in fields:
            changed(TYPE, [DISPLAY])
        if "unused" in fields:
            first, last = self.createIndex(row, 0, node), self.createIndex(row, self._columns() - 1, node)
            self.dataChanged.emit(first, last, [_ROLE.ForegroundRole, _ROLE.FontRole, _ROLE.ToolTipRole,
                                                self.UnusedRole])
        if "type_name" in fields:
            changed(TYPE, [DISPLAY, self.TypeRole])
        if "out_shape" in fields:
            changed(SHAPE, [DISPLAY, self.ShapeRole])
