"""The window's training controls (issue 14): the learning rate finder from the Train tab, learning-rate
factors from the tree, the Discriminative rates preset and gradual unfreezing, live layer telemetry in the
tree, and Pause / Resume (also after saving and reopening the project). Small random-weight networks, a
tiny image folder."""
from __future__ import annotations

import time

import pytest
import torch
from PySide6.QtCore import Qt

from engine.network.layer_tree import HEADS_KEY
from engine.surgery.operations import AddHead, DeleteOutputLayer, freeze_preset
from widgets.layer_tree_model import COLUMNS, TELEMETRY, TRAINABLE, LayerTreeModel

TIMEOUT = 120_000


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def ready(qtbot, window, session, folder, *, epochs: int = 1):
    """``session`` open with one head for the folder's classes, heads-only; the panel set for a short run."""
    window.workspace.set_session(session, project_path=None)
    with qtbot.waitSignal(window.dataLoaded, timeout=TIMEOUT):
        window.datasets.load_data(str(folder))
    assert window.surgery.apply_op(DeleteOutputLayer())
    assert window.surgery.apply_op(AddHead(window.data.heads[0], seed=0))
    assert window.surgery.apply_op(freeze_preset("heads-only"))
    p = window.training_panel
    p.device_combo.setCurrentIndex(p.device_combo.findData("cpu"))
    p.epochs_spin.setValue(epochs)
    p.batch_spin.setValue(4)
    p.patience_spin.setValue(0)
    p.augment_combo.setCurrentIndex(p.augment_combo.findText("Off"))
    return session


def head_path(session) -> str:
    return f"{HEADS_KEY}.{session.heads[0].name}"


def trainable_text(window, path: str) -> str:
    return window.tree_model.index_for_path(path, TRAINABLE).data()


# -- the learning rate finder -------------------------------------------------------------------------------
def test_finder_from_the_train_tab_restores_the_weights_and_uses_its_rate(qtbot, window, mobilenet_session,
                                                                          tiny_folder):
    s = ready(qtbot, window, mobilenet_session, tiny_folder)
    before = {k: v.clone() for k, v in s.model.state_dict().items()}
    panel = window.training_panel
    assert panel.find_rate_button.isEnabled()
    with qtbot.waitSignal(window.training.rateFound, timeout=TIMEOUT) as found:
        panel.find_rate_button.click()
        # it runs the model like training: a run cannot start meanwhile, nor surgery
        assert "lr-find" in window.jobs.running and not panel.start_button.isEnabled()
        assert "learning rate finder" in window.training.why_not_start()
        assert not window.surgery.apply_op(freeze_preset("none"))
    result = found.args[0]
    after = s.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing was learnt
    view = window.training.finder_dialog.view
    assert window.training.finder_dialog.isVisible()
    xs, ys = view.curve_data()
    assert len(xs) == len(result.lrs) > 10 and view.marker.isVisible()
    assert view.marker.value() == pytest.approx(torch.log10(torch.tensor(result.suggestion)).item())
    assert result.lrs[0] < result.suggestion < result.lrs[-1]
    view.apply_button.click()  # Use this rate
    assert panel.config().lr_heads == pytest.approx(result.suggestion, rel=1e-2)
    assert "Heads learning rate set to" in window.message_label.text()
    assert panel.start_button.isEnabled()


def test_a_finder_that_diverges_at_once_says_so(qtbot, window, boxes, mobilenet_session, tiny_folder):
    s = ready(qtbot, window, mobilenet_session, tiny_folder)
    before = {k: v.clone() for k, v in s.model.state_dict().items()}
    with qtbot.waitSignal(window.training.rateFailed, timeout=TIMEOUT) as failed:
        assert window.training.find_rate(start_lr=1e3, end_lr=1e7, steps=20)
    assert "diverged at once" in failed.args[0]
    assert any("diverged at once" in t for t in boxes.texts("warning"))
    view = window.training.finder_dialog.view
    assert "diverged at once" in view.label.text() and not view.apply_button.isEnabled()
    assert all(torch.equal(before[k], v) for k, v in s.model.state_dict().items())


# -- learning-rate factors from the tree --------------------------------------------------------------------
def test_factor_dialog_sets_an_undoable_factor_shown_in_the_tree_and_saved(qtbot, window, monkeypatch,
                                                                           mobilenet_session, tiny_folder, tmp_path):
    from widgets.lr_factor_dialog import LrFactorDialog

    s = ready(qtbot, window, mobilenet_session, tiny_folder)
    values = iter([0.1, 0.0])

    def exec_(dialog):
        assert "inherited by the layers below" in dialog.explanation.text()
        dialog.spin.setValue(next(values))
        dialog.accept()
        return dialog.result()

    monkeypatch.setattr(LrFactorDialog, "exec", exec_)
    a = window.actions
    assert a.lr_factor in window.tree_view.context_menu().actions()
    assert window.tree_view.select_path("features.1")
    assert a.lr_factor.isEnabled()
    a.lr_factor.trigger()
    assert s.model.lr_factors == {"features.1": 0.1}
    assert trainable_text(window, "features.1").endswith("×0.1")
    child = next(n.path for n in s.tree if n.path.startswith("features.1.") and n.params)
    assert trainable_text(window, child).endswith("×0.1")  # inherited by the layers below
    tip = window.tree_model.index_for_path(child, 0).data(Qt.ItemDataRole.ToolTipRole)
    assert "inherited from features.1" in tip
    # a factor of 0 on the head freezes it; undo unfreezes it again
    assert window.tree_view.select_path(head_path(s))
    a.lr_factor.trigger()
    head = s.model.heads[s.heads[0].name]
    assert s.model.lr_factors[head_path(s)] == 0 and not any(p.requires_grad for p in head.parameters())
    window.undo_stack.undo()
    assert all(p.requires_grad for p in head.parameters()) and head_path(s) not in s.model.lr_factors
    # saved with the project and back after reopening it
    path = tmp_path / "factors.graft"
    with qtbot.waitSignal(window.saved, timeout=TIMEOUT):
        window.files.save_project_to(str(path))
    with qtbot.waitSignal(window.modelLoaded, timeout=TIMEOUT):
        window.files.open_project_file(str(path), ask=False)
    assert window.session is not s and window.session.model.lr_factors == {"features.1": 0.1}
    assert trainable_text(window, "features.1").endswith("×0.1")


def test_discriminative_preset_is_undoable_and_unfreezing_reaches_the_run(qtbot, window, monkeypatch,
                                                                          mobilenet_session, tiny_folder):
    from engine.training import telemetry

    monkeypatch.setattr(telemetry.Telemetry, "due", lambda self: True)  # a sample every step
    s = ready(qtbot, window, mobilenet_session, tiny_folder, epochs=2)
    panel = window.training_panel
    count = window.undo_stack.count()
    panel.low_factor_box.setValue(0.25)
    panel.discriminative_button.click()
    factors = s.model.lr_factors
    assert window.undo_stack.count() == count + 1 and min(factors.values()) == 0.25 and max(factors.values()) == 1
    assert "frozen" in window.message_label.text()  # heads-only: the factors wait for the layers to train
    window.undo_stack.undo()
    assert s.model.lr_factors == {}
    panel.unfreeze_spin.setValue(1)
    panel.telemetry_check.setChecked(True)
    assert panel.config().unfreeze_every == 1 and panel.config().telemetry
    messages = []
    window.messages.errorShown.connect(messages.append)
    t0 = time.monotonic()
    with qtbot.waitSignal(window.trainingStarted, timeout=5000):
        panel.start_button.click()
    assert window.tree_model.columnCount() == len(COLUMNS) + 1  # the Training column
    assert panel.pause_button.isEnabled() and not panel.unfreeze_spin.isEnabled()
    with qtbot.waitSignal(window.trainingFinished, timeout=TIMEOUT) as finished:
        pass
    seconds = time.monotonic() - t0
    assert finished.args[0]["reason"] == "completed" and not messages
    record = s.project_extra["training"]
    assert record["config"]["unfreeze_every"] == 1 and record["config"]["telemetry"] is True
    assert not s.model.trunk_trainable()  # the layers' freeze settings are put back after the run
    shown = window.tree_model.telemetry()
    assert shown is not None and shown[head_path(s)][1] > 0
    from engine.training.advice import trunk_blocks

    top = trunk_blocks(s)[-1].path  # the block gradual unfreezing let train in epoch 2: a row of its own
    assert shown[top][1] > 0, shown
    index = window.tree_model.index_for_path(top, TELEMETRY)
    assert index.data().endswith("%") and 0 < index.data(LayerTreeModel.BarRole) <= 1
    # a sample every step, but the tree is redrawn at most 4 times a second
    assert 1 <= window.training.telemetry_draws <= 4 * seconds + 2
    assert window.tree_model.columnCount() == len(COLUMNS) + 1  # stays until the next run


# -- pause and resume -----------------------------------------------------------------------------------------
def test_pause_then_resume_after_reopening_the_project_ends_the_run(qtbot, window, mobilenet_session, tiny_folder,
                                                                    tmp_path):
    s = ready(qtbot, window, mobilenet_session, tiny_folder, epochs=3)
    panel = window.training_panel
    panel.telemetry_check.setChecked(False)
    with qtbot.waitSignal(window.trainingStarted, timeout=5000):
        panel.start_button.click()
    panel.pause_button.click()
    assert not panel.pause_button.isEnabled() and "Pausing" in panel.status()
    with qtbot.waitSignal(window.trainingFinished, timeout=TIMEOUT) as finished:
        pass
    assert finished.args[0]["reason"] == "paused" and "checkpoint" not in finished.args[0]
    paused = window.workspace.paused_run
    assert paused is not None and paused.epochs_run == 1
    assert panel.resume_button.isEnabled() and window.tree_model.columnCount() == len(COLUMNS)
    path = tmp_path / "paused.graft"
    with qtbot.waitSignal(window.saved, timeout=TIMEOUT):
        window.files.save_project_to(str(path))
    with qtbot.waitSignal(window.modelLoaded, timeout=TIMEOUT):
        window.files.open_project_file(str(path), ask=False)
    assert window.workspace.paused_run is not None and window.workspace.paused_run.epochs_run == 1
    assert panel.resume_button.isEnabled()
    panel.epochs_spin.setValue(7)  # Resume goes on with the paused run's own settings
    with qtbot.waitSignal(window.trainingFinished, timeout=TIMEOUT) as finished:
        panel.resume_button.click()
        window.curve_panel.flush()
        assert len(window.curve_panel.curve("val:total").getData()[0]) == 1  # the paused epoch, replayed
    result = finished.args[0]
    assert result["reason"] == "completed" and result["epochs_run"] == 3
    assert [h["epoch"] for h in result["history"]] == [1, 2, 3]
    assert window.workspace.paused_run is None and not panel.resume_button.isEnabled()
    runs = window.session.project_extra["runs"]
    assert len(runs) == 1 and runs[0]["reason"] == "completed"  # the resumed run replaced the paused one
    assert panel.epochs_spin.value() == 3


def test_the_features_memory_budget_is_kept_by_this_computer(qtbot, window):
    """Set once in the Train tab, it is in the next window too, and the run's settings carry it."""
    from app.main_window import MainWindow

    window.training_panel.ram_spin.setValue(512)
    assert window.training_panel.config().feature_ram_budget_mb == 512.0
    window.settings.sync()
    again = MainWindow()
    qtbot.addWidget(again)
    assert again.training_panel.ram_spin.value() == 512
    assert again.training_panel.config().feature_ram_budget_mb == 512.0
