"""The head dialog's fields for dense heads (segment, detect): the layers whose feature maps the head
reads, its decoder width, and per kind the ignore value and Dice weight (segment) or the score threshold
(detect). :class:`~widgets.head_dialog.HeadDialog` shows them instead of the pooled heads' fields.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QDoubleSpinBox, QFormLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem,
                               QSpinBox, QWidget)

from engine.network.heads import DENSE_WIDTH as DEFAULT_WIDTH


def checked_names(box: QListWidget) -> list[str]:
    """The texts of the ticked items of a list of check boxes, in order."""
    return [box.item(i).text() for i in range(box.count()) if box.item(i).checkState() == Qt.CheckState.Checked]


def set_checked_names(box: QListWidget, names: Iterable[str]) -> None:
    """Tick exactly the items named (without emitting itemChanged)."""
    wanted = set(names)
    box.blockSignals(True)
    for i in range(box.count()):
        item = box.item(i)
        item.setCheckState(Qt.CheckState.Checked if item.text() in wanted else Qt.CheckState.Unchecked)
    box.blockSignals(False)


class DenseFields(QWidget):
    """Layers (checkable, finest first as the network runs them), width, ignore value, Dice, threshold."""

    def __init__(self, layers: Sequence[str] = (), default_layers: Sequence[str] = (),
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._layers = list(layers)
        self.default_layers = list(default_layers)
        self.layer_filter = QLineEdit(self)
        self.layer_filter.setPlaceholderText("Filter layers…")
        self.layer_filter.setClearButtonEnabled(True)
        self.layers_list = QListWidget(self)
        self.layers_list.setToolTip("The layers whose feature maps the head's pyramid reads (tick several: "
                                    "fine layers give sharp edges, deep ones the meaning). None ticked: the "
                                    "default layers.")
        for path in self._layers:
            item = QListWidgetItem(path, self.layers_list)
            item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Unchecked)
        self.layers_list.setFixedHeight(6 * max(18, self.layers_list.sizeHintForRow(0)) + 6)
        self.layers_hint = QLabel(self)
        self.layers_hint.setObjectName("hint")
        self.layers_hint.setWordWrap(True)
        self.width_spin = QSpinBox(self)
        self.width_spin.setRange(8, 1024)
        self.width_spin.setSingleStep(8)
        self.width_spin.setValue(DEFAULT_WIDTH)
        self.width_spin.setToolTip("Channels of the head's feature pyramid and decoder")
        self.ignore_spin = QSpinBox(self)
        self.ignore_spin.setRange(0, 65535)
        self.ignore_spin.setValue(255)
        self.ignore_spin.setToolTip("Mask pixels with this value are left out of the loss and the IoU "
                                    "(outlines, unsure areas); it must not be a class index")
        self.dice_spin = QDoubleSpinBox(self)
        self.dice_spin.setRange(0.0, 10.0)
        self.dice_spin.setSingleStep(0.1)
        self.dice_spin.setDecimals(2)
        self.dice_spin.setToolTip("Weight of the soft Dice loss added to the per-pixel cross-entropy "
                                  "(0: cross-entropy alone); helps small objects")
        self.score_spin = QDoubleSpinBox(self)
        self.score_spin.setRange(0.0, 0.99)
        self.score_spin.setSingleStep(0.05)
        self.score_spin.setDecimals(2)
        self.score_spin.setValue(0.3)
        self.score_spin.setToolTip("Boxes scoring below this are dropped from the predictions and the export")
        for spin in (self.width_spin, self.ignore_spin, self.dice_spin, self.score_spin):
            spin.setMinimumWidth(90)
        self.form = QFormLayout(self)
        self.form.setContentsMargins(0, 0, 0, 0)
        self.form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
        self.form.setHorizontalSpacing(12)
        self.form.setVerticalSpacing(8)
        self.form.addRow("Reads layers", self.layer_filter)
        self.form.addRow("", self.layers_list)
        self.form.addRow("", self.layers_hint)
        self.form.addRow("Decoder width", self.width_spin)
        self.ignore_label = QLabel("Ignore value", self)
        self.form.addRow(self.ignore_label, self.ignore_spin)
        self.dice_label = QLabel("Dice weight", self)
        self.form.addRow(self.dice_label, self.dice_spin)
        self.score_label = QLabel("Score threshold", self)
        self.form.addRow(self.score_label, self.score_spin)
        self.layer_filter.textChanged.connect(self._filter)
        self.layers_list.itemChanged.connect(self._update_hint)
        self.set_kind("segment")

    def set_kind(self, kind: str) -> None:
        """Show the rows ``kind`` uses."""
        for label, field, kinds in ((self.ignore_label, self.ignore_spin, {"segment"}),
                                    (self.dice_label, self.dice_spin, {"segment"}),
                                    (self.score_label, self.score_spin, {"detect"})):
            label.setVisible(kind in kinds)
            field.setVisible(kind in kinds)
        self._update_hint()

    def checked_layers(self) -> list[str]:
        """The ticked layers, in the network's order."""
        return checked_names(self.layers_list)

    def set_checked_layers(self, layers: Iterable[str]) -> None:
        set_checked_names(self.layers_list, layers)
        self._update_hint()

    def fill(self, spec: Any) -> None:
        self.set_checked_layers(getattr(spec, "layers", []) or [])
        hidden = list(getattr(spec, "hidden", []) or [])
        self.width_spin.setValue(int(hidden[0]) if hidden else DEFAULT_WIDTH)
        self.ignore_spin.setValue(int(getattr(spec, "ignore_index", 255)))
        self.dice_spin.setValue(float(getattr(spec, "dice", 0.0)))
        self.score_spin.setValue(float(getattr(spec, "score_threshold", 0.3)))

    def values(self, kind: str) -> dict[str, Any]:
        """The HeadSpec fields these rows give for a ``kind`` head."""
        values: dict[str, Any] = {"layers": self.checked_layers(), "hidden": [self.width_spin.value()]}
        if kind == "segment":
            values.update(ignore_index=self.ignore_spin.value(), dice=round(self.dice_spin.value(), 4))
        else:
            values.update(score_threshold=round(self.score_spin.value(), 4))
        return values

    def _filter(self, text: str) -> None:
        text = text.strip().lower()
        for i in range(self.layers_list.count()):
            item = self.layers_list.item(i)
            item.setHidden(bool(text) and text not in item.text().lower())

    def _update_hint(self, *args: object) -> None:
        checked = self.checked_layers()
        if checked:
            self.layers_hint.setText(f"Reads {len(checked)} layer{'s' if len(checked) != 1 else ''}: "
                                     f"{', '.join(checked)}")
        elif self.default_layers:
            self.layers_hint.setText(f"None ticked: the default layers, {', '.join(self.default_layers)}")
        else:
            self.layers_hint.setText("None ticked: the trunk's default layers (three scales)")
