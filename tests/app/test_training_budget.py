"""The Train tab's "Best model in N minutes": the plan shown while it runs in the training worker, the curves
running on across its stages, the stages in the Runs tab and the project's record; a budget too short for the
first stage is one clear message."""
from __future__ import annotations

import numpy as np
import pytest

import engine.training.budget_run as budget_run
from engine.training.budget import Costs

from test_main_window import TRAIN_TIMEOUT, quick_config, ready_to_train

FAST = Costs(decode=0.002, decode_plain=0.001, trunk=0.01, head_step=1e-5, lower={1: 0.008, 2: 0.006},
             upper_step={1: 0.01, 2: 0.02}, upper_eval={1: 0.003, 2: 0.005})


@pytest.mark.slow
def test_best_model_in_minutes_shows_the_plan_trains_its_stages_and_lists_them(qtbot, window, monkeypatch,
                                                                           default_network, small_csv):
    monkeypatch.setattr(budget_run, "probe", lambda *a, **k: FAST)  # measured costs, injected: a steady plan
    s = ready_to_train(qtbot, window, default_network, small_csv, monkeypatch, quick_config(batch_size=8))
    panel = window.training_panel
    assert panel.budget_button.isEnabled() and panel.budget_spin.value() == 10
    monkeypatch.setattr(panel.budget_spin, "value", lambda: 0.75)  # 45 s: the test's budget
    with qtbot.waitSignal(window.training.finished, timeout=TRAIN_TIMEOUT) as done:
        panel.budget_button.click()
        qtbot.waitUntil(lambda: panel.plan_label.isVisible(), timeout=TRAIN_TIMEOUT)
        assert not panel.budget_button.isEnabled() and not panel.start_button.isEnabled()
        plan = panel.plan_label.text()
        assert "Plan for 0:45" in plan and "heads" in plan and "estimate" in plan and "frozen" in plan
    result = done.args[0]
    assert result["reason"] == "completed" and result["stages"], result.get("message")
    record = s.project_extra["training"]
    assert record["plan"]["budget"] == 45.0 and [st["title"] for st in record["stages"]]
    assert record["seconds"] <= 45.0 * 1.1
    runs = window.runs_view
    assert runs.stages_box.isVisibleTo(window) or runs.stages_shown == 1
    assert runs.stage_model.rowCount() == len(record["stages"])
    trained = [st for st in record["stages"] if st["epochs_run"]]
    xs, _ = window.curve_panel.curve("train:total").getData()
    assert xs is not None and np.all(np.diff(xs) > 0)  # steps count on across the stages
    assert sum(st["epochs_run"] for st in trained) == record["epochs_run"]
    assert not s.model.trunk_trainable()  # the session's freeze settings are put back


def test_a_budget_too_short_says_so_once(qtbot, window, monkeypatch, boxes, default_network, small_csv):
    monkeypatch.setattr(budget_run, "probe", lambda *a, **k: Costs(1.0, 1.0, 1.0, 1e-3))
    ready_to_train(qtbot, window, default_network, small_csv, monkeypatch, quick_config(batch_size=8))
    with qtbot.waitSignal(window.training.finished, timeout=TRAIN_TIMEOUT) as done:
        window.training.start_budget(60.0)
    assert done.args[0]["reason"] == "error" and "too short" in done.args[0]["message"]
    assert any("too short" in text for text in boxes.texts("critical")) or "too short" in \
        window.training_panel.status()
    assert window.training_panel.budget_button.isEnabled()
