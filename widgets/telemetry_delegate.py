"""A small bar for the layer tree's Change column (live layer telemetry): the block's weight change as a
share of the largest one (``LayerTreeModel.BarRole``), under the change's text."""
from __future__ import annotations

from PySide6.QtCore import QModelIndex, QRectF, Qt
from PySide6.QtGui import QColor, QPainter
from PySide6.QtWidgets import QAbstractItemView, QApplication, QStyle, QStyledItemDelegate, QStyleOptionViewItem

from .layer_tree_model import TELEMETRY, LayerTreeModel

BAR_COLOUR = QColor(31, 119, 180, 150)


class TelemetryBarDelegate(QStyledItemDelegate):
    """Draws the item as usual (selection, text) with a bar of ``BarRole`` × the cell's width behind it."""

    def paint(self, painter: QPainter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        share = index.data(LayerTreeModel.BarRole)
        opt = QStyleOptionViewItem(option)
        self.initStyleOption(opt, index)
        style = opt.widget.style() if opt.widget is not None else QApplication.style()
        text, opt.text = opt.text, ""
        style.drawControl(QStyle.ControlElement.CE_ItemViewItem, opt, painter, opt.widget)
        rect = QRectF(opt.rect).adjusted(3, 4, -3, -4)
        if share is not None and rect.width() > 0:
            painter.save()
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            painter.setPen(Qt.PenStyle.NoPen)
            painter.setBrush(BAR_COLOUR)
            painter.drawRoundedRect(QRectF(rect.left(), rect.top(), max(1.0, rect.width() * min(1.0, share)),
                                           rect.height()), 2, 2)
            painter.restore()
        if text:
            painter.save()
            painter.setPen(opt.palette.color(opt.palette.ColorRole.Text))
            painter.drawText(rect.adjusted(0, -2, -2, 2), int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter),
                             text)
            painter.restore()


def install(view: QAbstractItemView) -> TelemetryBarDelegate:
    """Put the bar delegate on ``view``'s Change column (kept by the view as its child)."""
    delegate = TelemetryBarDelegate(view)
    view.setItemDelegateForColumn(TELEMETRY, delegate)
    return delegate
