"""The Runs tab and Train ▸ Log runs to TensorBoard: every run the window trains is kept, listed and
overlaid, and its curves also go to TensorBoard when asked."""
from __future__ import annotations

import pytest
from PySide6.QtWidgets import QFileDialog

from test_main_window import TRAIN_TIMEOUT, quick_config, ready_to_train


@pytest.mark.slow
def test_two_runs_are_listed_overlaid_and_logged_to_tensorboard(qtbot, window, monkeypatch, boxes,
                                                               default_network, small_csv, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(tmp_path)))
    window.actions.tensorboard.trigger()  # on: asks for the folder
    assert window.actions.tensorboard.isChecked() and window.settings.tensorboard_dir() == str(tmp_path)
    s = ready_to_train(qtbot, window, default_network, small_csv, monkeypatch, quick_config())
    for _ in range(2):
        with qtbot.waitSignal(window.evaluated, timeout=TRAIN_TIMEOUT):
            window.training.start()
    runs = window.runs_view
    assert runs.model.rowCount() == 2 == len(s.project_extra["runs"])
    assert [runs.model.item(i, 0).text() for i in range(2)] == ["1", "2"]
    assert runs.checked_runs() == [1, 2] and all(runs.curve_data(i) is not None for i in (1, 2))
    logs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(logs) == 2  # one folder per run
    acc = EventAccumulator(str(logs[-1]))
    acc.Reload()
    assert "loss/train" in acc.Tags()["scalars"]
    window.actions.tensorboard.trigger()  # off
    assert not window.actions.tensorboard.isChecked() and window.settings.tensorboard_dir() == ""
