"""TrainingPanel: the fields make the TrainConfig; running state, progress and status."""
from __future__ import annotations

from dataclasses import replace

import pytest
from PySide6.QtCore import Qt

from engine.training.config import TrainConfig
from widgets.training_panel import LearningRateBox, TrainingPanel, format_eta, progress_text


@pytest.fixture
def panel(qtbot) -> TrainingPanel:
    panel = TrainingPanel(cuda_available=False, mps_available=False)
    qtbot.addWidget(panel)
    panel.show()
    return panel


def test_defaults_are_the_engines(panel):
    assert panel.config() == TrainConfig()


def test_config_reflects_the_fields(panel):
    panel.device_combo.setCurrentIndex(panel.device_combo.findData("cpu"))
    panel.epochs_spin.setValue(25)
    panel.batch_spin.setValue(64)
    panel.lr_heads_box.setValue(3e-3)
    panel.lr_trunk_box.setValue(5e-5)
    panel.augment_combo.setCurrentIndex(panel.augment_combo.findText("Off"))
    panel.patience_spin.setValue(0)
    config = panel.config()
    assert isinstance(config, TrainConfig)
    assert (config.device, config.epochs, config.batch_size, config.augment, config.patience) == \
        ("cpu", 25, 64, False, None)
    assert config.lr_heads == pytest.approx(3e-3) and config.lr_trunk == pytest.approx(5e-5)
    config.validate()
    panel.patience_spin.setValue(3)
    assert panel.config().patience == 3


def test_set_config_round_trips_and_keeps_other_fields(panel):
    base = replace(TrainConfig(), epochs=7, lr_heads=2e-4, weight_decay=0.05, seed=42, augment=False, patience=None)
    panel.set_config(base)
    assert panel.epochs_spin.value() == 7 and panel.patience_spin.text() == "off"
    assert panel.augment_combo.currentText() == "Off"
    assert panel.lr_heads_box.text() == "0.0002"
    assert panel.config() == base


def test_the_features_memory_budget_is_the_engines_until_changed_and_is_not_the_projects(panel, monkeypatch):
    from engine.training.features import DEFAULT_RAM_BUDGET_MB

    assert panel.ram_spin.value() == DEFAULT_RAM_BUDGET_MB and panel.config().feature_ram_budget_mb is None
    panel.ram_spin.setValue(256)
    assert panel.config().feature_ram_budget_mb == 256.0
    panel.config().validate()
    panel.set_config(replace(TrainConfig(), epochs=3, feature_ram_budget_mb=4096.0))  # a project's saved run
    assert panel.ram_spin.value() == 256 and panel.config().feature_ram_budget_mb == 256.0
    panel.set_running(True)
    assert not panel.ram_spin.isEnabled()
    monkeypatch.setenv("GRAFT_FEATURE_RAM_MB", "300")
    fresh = TrainingPanel(cuda_available=False, mps_available=False)
    assert fresh.ram_spin.value() == 300 and fresh.config().feature_ram_budget_mb is None  # the engine reads it
    monkeypatch.setenv("GRAFT_FEATURE_RAM_MB", "lots")
    assert TrainingPanel(cuda_available=False, mps_available=False).ram_spin.value() == DEFAULT_RAM_BUDGET_MB


def test_augmentation_auto_on_off(panel):
    assert panel.config().augment == "auto" and panel.augment_combo.currentText() == "Auto"
    for value, text in ((True, "On"), (False, "Off"), ("auto", "Auto")):
        panel.set_config(replace(TrainConfig(), augment=value))
        assert panel.augment_combo.currentText() == text
        assert panel.config().augment is value or panel.config().augment == value == "auto"


def test_cuda_is_disabled_with_a_reason_when_missing(qtbot):
    panel = TrainingPanel(cuda_available=False, mps_available=False)
    qtbot.addWidget(panel)
    item = panel.device_combo.model().item(panel.device_combo.findData("cuda"))
    assert not item.isEnabled() and "No CUDA GPU" in item.toolTip()
    assert panel.device_combo.findData("mps") == -1
    panel.set_config(replace(TrainConfig(), device="cuda"))
    assert panel.config().device == "auto"
    with_gpu = TrainingPanel(cuda_available=True, mps_available=False)
    qtbot.addWidget(with_gpu)
    assert with_gpu.device_combo.model().item(with_gpu.device_combo.findData("cuda")).isEnabled()
    with_gpu.set_config(replace(TrainConfig(), device="cuda:0"))
    assert with_gpu.config().device == "cuda"


def test_start_stop_and_running_state(qtbot, panel):
    assert panel.start_button.isEnabled() and not panel.stop_button.isEnabled()
    with qtbot.waitSignal(panel.startRequested, timeout=1000):
        qtbot.mouseClick(panel.start_button, Qt.MouseButton.LeftButton)
    panel.set_running(True)
    assert panel.is_running() and not panel.start_button.isEnabled() and panel.stop_button.isEnabled()
    assert not panel.epochs_spin.isEnabled() and not panel.device_combo.isEnabled()
    with qtbot.waitSignal(panel.stopRequested, timeout=1000):
        qtbot.mouseClick(panel.stop_button, Qt.MouseButton.LeftButton)
    panel.set_progress(400, 1000, 42, 3, 10)
    assert panel.progress_label.text() == "epoch 3/10 · 40% · ETA 0:42"
    assert panel.progress_bar.value() == 400 and panel.progress_bar.maximum() == 1000
    panel.set_status("Stopping after this batch…")
    assert panel.status() == "Stopping after this batch…"
    panel.set_running(False)
    assert panel.progress_label.text() == "epoch 3/10 · 40%"  # a stopped run has no time left
    assert panel.start_button.isEnabled() and panel.epochs_spin.isEnabled()


def test_start_follows_the_window_and_stop_can_be_pressed_once(qtbot, panel):
    panel.set_can_start(False, "Training waits until the evaluation has finished")
    assert not panel.start_button.isEnabled() and "evaluation" in panel.start_button.toolTip()
    panel.set_running(True)
    panel.set_running(False)
    assert not panel.start_button.isEnabled()  # a run ending does not enable what the window disabled
    panel.set_can_start(True, "ignored while Start may be pressed")
    assert panel.start_button.isEnabled() and "evaluation" not in panel.start_button.toolTip()
    panel.set_running(True)
    panel.set_can_start(True)
    assert not panel.start_button.isEnabled() and panel.stop_button.isEnabled()
    panel.set_progress(300, 1000, 20, 2, 10)
    panel.set_stopping()
    assert not panel.stop_button.isEnabled()
    assert panel.progress_label.text() == "epoch 2/10 · 30% · ETA 0:20" and panel.progress_bar.value() == 300
    panel.set_running(False)
    assert panel.progress_label.text() == "epoch 2/10 · 30%" and panel.start_button.isEnabled()


def test_clear_progress_forgets_the_last_run(panel):
    panel.set_running(True)
    panel.set_progress(500, 1000, 10, 5, 10)
    panel.set_status("Epoch 5: train loss 0.3")
    panel.set_running(False)
    panel.clear_progress()
    assert panel.progress_label.text() == "" and panel.progress_bar.value() == 0
    assert panel.status() == "Ready when the data and heads are."
    panel.set_running(False)
    assert panel.progress_label.text() == ""  # nothing left over to show


def test_progress_and_eta_texts():
    assert format_eta(42) == "0:42" and format_eta(3725) == "1:02:05" and format_eta(None) == ""
    assert progress_text(10, 10, 0, 10, 10) == "epoch 10/10 · 100%"
    assert progress_text(0, 0, None, None, None) == ""


def test_learning_rate_box_steps_along_1_2_5(qtbot):
    box = LearningRateBox()
    qtbot.addWidget(box)
    box.setValue(1e-3)
    box.stepBy(1)
    assert box.value() == pytest.approx(2e-3)
    box.stepBy(2)
    assert box.value() == pytest.approx(1e-2)
    box.stepBy(-4)
    assert box.value() == pytest.approx(5e-4)
    box.lineEdit().setText("3e-4")
    box.interpretText()
    assert box.value() == pytest.approx(3e-4) and box.text() == "0.0003"


def test_the_status_line_says_whether_a_run_can_start_until_a_run_reports(panel):
    """It always read 'Ready when the data and heads are.', even with both there (and Start enabled)."""
    panel.set_can_start(False, "Add a head first (Surgery ▸ Add head)")
    assert panel.status() == "Add a head first (Surgery ▸ Add head)."
    panel.set_can_start(True)
    assert panel.status() == "Ready to train on the loaded data." and panel.start_button.isEnabled()
    panel.set_running(True)
    panel.set_status("Epoch 1: train loss 0.3")
    panel.set_running(False)
    panel.set_status("Finished 1 epoch; kept epoch 1.")
    panel.set_can_start(True)
    assert panel.status() == "Finished 1 epoch; kept epoch 1."  # the run's outcome stays
    panel.clear_progress()
    panel.set_can_start(False, "Load data first (drop a folder or CSV on the window)")
    assert panel.status() == "Load data first (drop a folder or CSV on the window)."


def test_unfreezing_and_telemetry_reach_the_config_and_lock_while_running(panel, qtbot):
    assert panel.unfreeze_spin.text() == "off" and panel.config().unfreeze_every is None
    panel.unfreeze_spin.setValue(3)
    panel.telemetry_check.setChecked(True)
    config = panel.config()
    assert config.unfreeze_every == 3 and config.telemetry is True
    config.validate()
    panel.set_config(replace(TrainConfig(), unfreeze_every=2, telemetry=False))
    assert panel.unfreeze_spin.value() == 2 and not panel.telemetry_check.isChecked()
    panel.set_running(True)
    assert not panel.unfreeze_spin.isEnabled() and not panel.discriminative_button.isEnabled()
    assert panel.pause_button.isEnabled() and not panel.resume_button.isEnabled()
    assert not panel.find_rate_button.isEnabled()
    panel.set_pausing()
    assert not panel.pause_button.isEnabled() and panel.stop_button.isEnabled()
    panel.set_running(False)
    panel.set_can_resume(True, "Continue the run paused after epoch 1 of 3")
    assert panel.resume_button.isEnabled() and not panel.pause_button.isEnabled()
    with qtbot.waitSignal(panel.resumeRequested, timeout=1000):
        panel.resume_button.click()


def test_discriminative_button_sends_the_lowest_factor_and_rates_apply(panel, qtbot):
    panel.low_factor_box.setValue(0.2)
    with qtbot.waitSignal(panel.discriminativeRequested, timeout=1000) as sent:
        panel.discriminative_button.click()
    assert sent.args == [pytest.approx(0.2)]
    panel.set_config(replace(TrainConfig(), lr_heads=1e-3, lr_trunk=1e-4))
    panel.apply_rate(0.0123456, heads=True, keep_ratio=True)  # the network's rate keeps its ratio (1/10)
    assert panel.config().lr_heads == pytest.approx(0.0123) and panel.config().lr_trunk == pytest.approx(0.00123)
    panel.apply_rate(3e-5, heads=False)
    assert panel.config().lr_trunk == pytest.approx(3e-5) and panel.config().lr_heads == pytest.approx(0.0123)


def test_augmented_views_reach_the_config_and_lock_while_running(panel):
    assert panel.views_spin.text() == "off" and panel.config().augment_views == 0
    panel.views_spin.setValue(4)
    config = panel.config()
    assert config.augment_views == 4
    config.validate()
    panel.set_config(replace(TrainConfig(), augment_views=2))
    assert panel.views_spin.value() == 2
    panel.set_running(True)
    assert not panel.views_spin.isEnabled()
    panel.set_running(False)
    assert panel.views_spin.isEnabled()
