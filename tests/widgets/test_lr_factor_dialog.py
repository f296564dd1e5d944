"""The learning-rate factor dialog, and how the layer tree shows factors (own and inherited)."""
from __future__ import annotations

from PySide6.QtCore import Qt

from engine.surgery.operations import SetLrFactor
from widgets.layer_tree_model import TRAINABLE, LayerTreeModel
from widgets.lr_factor_dialog import LrFactorDialog


def test_dialog_gives_the_factor_or_none_to_inherit(qtbot):
    dialog = LrFactorDialog("layer3", 0.5, own=True, source="layer3")
    qtbot.addWidget(dialog)
    assert dialog.spin.value() == 0.5 and dialog.inherit_button.isEnabled()
    assert "inherited by the layers below" in dialog.explanation.text() and "0 = frozen" in dialog.explanation.text()
    dialog.spin.setValue(0)
    assert dialog.spin.text() == "×0 (frozen)" and dialog.factor() == 0.0
    dialog.inherit_button.click()
    assert dialog.result() == LrFactorDialog.DialogCode.Accepted and dialog.factor() is None
    inherited = LrFactorDialog("layer3.1", 0.5, own=False, source="layer3", heads=False)
    qtbot.addWidget(inherited)
    assert not inherited.inherit_button.isEnabled()


def test_tree_shows_own_and_inherited_factors_and_follows_undo(resnet_session):
    s = resnet_session
    model = LayerTreeModel(s.tree)

    def text(path: str) -> str:
        return model.index_for_path(path, TRAINABLE).data()

    def tip(path: str) -> str:
        return model.index_for_path(path, 0).data(Qt.ItemDataRole.ToolTipRole)

    assert "×" not in text("layer3") and model.index_for_path("layer3").data(LayerTreeModel.FactorRole) is None
    op = s.do(SetLrFactor({"layer3": 0.1, "layer3.1": 0.5}))
    assert text("layer3").endswith("×0.1") and text("layer3.0").endswith("×0.1") and text("layer3.1").endswith("×0.5")
    assert model.index_for_path("layer3").data(LayerTreeModel.FactorRole) == (0.1, True)
    assert model.index_for_path("layer3.0.conv1").data(LayerTreeModel.FactorRole) == (0.1, False)
    assert "set here" in tip("layer3") and "inherited from layer3" in tip("layer3.0.conv1")
    assert "inherited from layer3.1" in tip("layer3.1.conv1")
    s.revert(op)
    assert "×" not in text("layer3") and "Learning-rate factor" not in tip("layer3.0")
