"""The layer tree's Change column (live telemetry) and its bar delegate; without telemetry, five columns."""
from __future__ import annotations

import pytest
from PySide6.QtCore import QModelIndex, QRect, Qt
from PySide6.QtGui import QColor, QImage, QPainter
from PySide6.QtWidgets import QStyleOptionViewItem, QTreeView

from widgets.layer_tree_model import COLUMNS, TELEMETRY, TELEMETRY_TITLE, LayerTreeModel
from widgets.telemetry_delegate import TelemetryBarDelegate, install

pytestmark = pytest.mark.qt_log_level_fail("WARNING")


def bar_pixels(delegate, index, width=200, height=24) -> int:
    image = QImage(width, height, QImage.Format.Format_ARGB32)
    image.fill(QColor("white"))
    painter = QPainter(image)
    option = QStyleOptionViewItem()
    option.rect = QRect(0, 0, width, height)
    delegate.paint(painter, option, index)
    painter.end()
    return sum(1 for x in range(width) if image.pixelColor(x, height // 2).blue() > image.pixelColor(x, height // 2).red() + 40)


def test_column_appears_shows_values_and_goes(qtbot, qtmodeltester, resnet_session):
    model = LayerTreeModel(resnet_session.tree)
    assert model.columnCount() == len(COLUMNS) and model.telemetry() is None
    view = QTreeView()
    qtbot.addWidget(view)
    view.setModel(model)
    delegate = install(view)
    assert isinstance(delegate, TelemetryBarDelegate) and view.itemDelegateForColumn(TELEMETRY) is delegate
    changed = []
    model.dataChanged.connect(lambda a, b, roles: changed.append(a.data(LayerTreeModel.PathRole)))
    model.set_telemetry({"layer3": (2.0, 0.01), "layer4": (4.0, 0.04)})
    assert model.columnCount() == len(COLUMNS) + 1 and model.headerData(TELEMETRY, Qt.Orientation.Horizontal) == TELEMETRY_TITLE
    qtmodeltester.check(model)
    layer4 = model.index_for_path("layer4", TELEMETRY)
    assert layer4.data() == "4 %" and layer4.data(LayerTreeModel.TelemetryRole) == (4.0, 0.04)
    assert model.index_for_path("layer3", TELEMETRY).data(LayerTreeModel.BarRole) == pytest.approx(0.25)
    assert "Gradient norm 4" in layer4.data(Qt.ItemDataRole.ToolTipRole)
    assert model.index_for_path("layer1", TELEMETRY).data() == ""
    assert model.index_for_path("layer4", 0).data(LayerTreeModel.TelemetryRole) == (4.0, 0.04)  # any column
    assert set(changed) == {"layer3", "layer4"}
    full, quarter = (bar_pixels(delegate, model.index_for_path(p, TELEMETRY)) for p in ("layer4", "layer3"))
    assert full > 150 and 30 < quarter < 70  # the bar's length follows the change
    assert bar_pixels(delegate, model.index_for_path("layer1", TELEMETRY)) == 0
    view.grab()  # paints through the delegate
    model.set_telemetry({"layer4": (1.0, 0.02)})  # rescaled: the largest is now this one
    assert model.index_for_path("layer3", TELEMETRY).data() == ""
    assert model.index_for_path("layer4", TELEMETRY).data(LayerTreeModel.BarRole) == pytest.approx(1.0)
    model.set_telemetry(None)
    assert model.columnCount() == len(COLUMNS) and not model.index(0, TELEMETRY).isValid()
    qtmodeltester.check(model)
    assert model.index(0, 0, QModelIndex()).isValid()


def test_the_layer_tree_view_shows_the_column_on_rows_below_other_rows(qtbot, resnet_session):
    """The filter proxy learns of the new column for every parent, not only the root: a child row's cell
    (layer3.1 under layer3) exists and shows its value, and the tree stays expanded."""
    from widgets.layer_tree_view import LayerTreeView

    model = LayerTreeModel(resnet_session.tree)
    view = LayerTreeView(model)
    qtbot.addWidget(view)
    assert view.select_path("layer3.1.conv1")

    def cell(path: str):
        index = view.proxy.mapFromSource(model.index_for_path(path))
        return view.proxy.index(index.row(), TELEMETRY, index.parent())

    model.set_telemetry({"layer3": (2.0, 0.01), "layer3.1": (1.0, 0.02)})
    assert cell("layer3.1").isValid() and cell("layer3.1").data() == "2 %" and cell("layer3").data() == "1 %"
    assert view.tree_view.isExpanded(view.proxy.mapFromSource(model.index_for_path("layer3")))
    assert view.tree_view.header().sectionSize(TELEMETRY) >= 90
    model.set_telemetry({"layer3": (2.0, 2.7)})
    assert cell("layer3").data() == "270 %"  # not 2.7e+02 %
    model.set_telemetry(None)
    assert view.proxy.columnCount(view.proxy.mapFromSource(model.index_for_path("layer3"))) == len(COLUMNS)
    assert not cell("layer3.1").isValid()
