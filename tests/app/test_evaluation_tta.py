"""The Evaluate tab's test-time augmentation choice reaches the evaluation, and the result says so."""
from __future__ import annotations

import pytest

from engine.surgery.operations import AddHead, DeleteOutputLayer
from test_main_window import LOAD_TIMEOUT, give_session, load_data


@pytest.mark.slow
def test_evaluate_with_the_chosen_test_time_augmentation(qtbot, window, default_network, small_csv):
    give_session(window, default_network)
    data = load_data(qtbot, window, small_csv)
    window.surgery.apply_op(DeleteOutputLayer())
    window.surgery.apply_op(AddHead(data.heads[0], seed=0))
    panel = window.evaluation_panel
    panel.tta_combo.setCurrentIndex(panel.tta_combo.findData("flip"))
    with qtbot.waitSignal(window.evaluated, timeout=LOAD_TIMEOUT) as evaluated:
        window.evaluation.evaluate()
    report = evaluated.args[0]
    assert report.tta == "flip" and "TTA flip" in panel.info_label.text()
    assert "test-time augmentation flip" in window.message_label.text()
    panel.tta_combo.setCurrentIndex(panel.tta_combo.findData(None))
    with qtbot.waitSignal(window.evaluated, timeout=LOAD_TIMEOUT) as plain:
        window.evaluation.evaluate()
    assert plain.args[0].tta is None and "TTA" not in panel.info_label.text()
