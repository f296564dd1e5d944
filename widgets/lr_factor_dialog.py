"""Learning-rate factor of one layer (MATLAB's learn-rate factor), asked from the layer tree.

The factor multiplies the learning rate of the layer's weights (the network's rate for a trunk layer, the
heads' for a head) and holds for every layer below it that has none of its own; 0 freezes the layer. The
dialog only asks: the window applies it as the undoable :class:`~engine.surgery.operations.SetLrFactor`,
whose checks refuse what makes no sense.
"""
from __future__ import annotations

from PySide6.QtWidgets import (QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout, QLabel, QPushButton,
                               QVBoxLayout, QWidget)

MAX_FACTOR = 1000.0


def factor_text(factor: float) -> str:
    """``0.1`` -> ``×0.1``; ``0`` -> ``×0 (frozen)``."""
    return f"×{factor:g}" + (" (frozen)" if factor == 0 else "")


class LrFactorDialog(QDialog):
    """A spin box for the factor of ``path`` (``current``: the factor holding there now, ``own``: whether
    the layer sets it itself, else it is inherited from ``source``). :meth:`factor` is the chosen factor,
    or None after "Inherit" (the layer's own factor is removed)."""

    def __init__(self, path: str, current: float, own: bool, source: str | None = None, heads: bool = False,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Learning-rate factor")
        self._inherit = False
        self.spin = QDoubleSpinBox(self)
        self.spin.setRange(0.0, MAX_FACTOR)
        self.spin.setDecimals(4)
        self.spin.setSingleStep(0.1)
        self.spin.setPrefix("×")
        self.spin.setSpecialValueText("×0 (frozen)")
        self.spin.setValue(float(current))
        self.spin.setToolTip("0 freezes the layer; 1 trains it at the full learning rate")
        rate = "the heads' learning rate" if heads else "the network's learning rate"
        now = factor_text(current) + ("" if own else f", inherited from {source}" if source else ", the default")
        self.explanation = QLabel(
            f"The factor multiplies {rate} for {path} and is inherited by the layers below it that have no "
            "factor of their own. 0 = frozen (its weights do not train). Saved with the project; undoable.", self)
        self.explanation.setWordWrap(True)
        self.explanation.setMinimumWidth(380)
        self.explanation.setObjectName("hint")
        form = QFormLayout()
        form.addRow("Layer", QLabel(path, self))
        form.addRow("Now", QLabel(now, self))
        form.addRow("Factor", self.spin)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel,
                                        self)
        self.buttons.button(QDialogButtonBox.StandardButton.Ok).setText("Set factor")
        self.inherit_button = QPushButton("Inherit", self)
        self.inherit_button.setToolTip("Remove this layer's own factor: it takes the one of the layer above again")
        self.inherit_button.setEnabled(own)
        self.buttons.addButton(self.inherit_button, QDialogButtonBox.ButtonRole.ResetRole)
        self.inherit_button.clicked.connect(self._inherit_clicked)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 16, 16, 12)
        layout.setSpacing(10)
        layout.addLayout(form)
        layout.addWidget(self.explanation)
        layout.addWidget(self.buttons)

    def _inherit_clicked(self) -> None:
        self._inherit = True
        self.accept()

    def factor(self) -> float | None:
        return None if self._inherit else float(self.spin.value())
