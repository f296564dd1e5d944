"""Autosave and crash recovery in the window (app/recovery.py): unsaved work and, while a run trains, its best
weights go to a recovery file; a save or a clean close removes it; after a window is killed with SIGKILL the
next one asks "Recover the work from HH:MM?" and Restore brings the work back, Discard deletes it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from engine.project.project_file import open_project
from engine.project.recovery import read_recovery, recovery_files
from test_training_control import ready

CHILD = Path(__file__).with_name("recovery_child.py")
TIMEOUT = 120_000


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_keeps_its_best_weights_and_a_save_or_a_clean_close_removes_the_file(qtbot, window,
                                                                                      mobilenet_session, tiny_folder,
                                                                                      tmp_path):
    recovery = window.recovery
    assert recovery.enabled and recovery.minutes() == 2.0  # the default: every 2 minutes
    s = ready(qtbot, window, mobilenet_session, tiny_folder, epochs=3)
    notes, threads = [], []
    real = recovery.writer.update

    def spy(weights=None, note=None, write=True):
        threads.append(threading.current_thread() is threading.main_thread())
        notes.append(note)
        real(weights, note, write)

    recovery.writer.update = spy
    with qtbot.waitSignal(window.trainingFinished, timeout=TIMEOUT) as finished:
        window.training_panel.start_button.click()
    result = finished.args[0]
    assert result["reason"] == "completed"
    assert notes[0] == "training; the weights before training" and not any(threads)  # the run's thread
    best_epochs = [h["epoch"] for h in result["history"] if h["best"]]
    assert [n for n in notes[1:]] == [f"training; training, epoch {e} of 3, the best so far, validation loss "
                                      f"{next(h['val_loss'] for h in result['history'] if h['epoch'] == e):.4f}"
                                      for e in best_epochs]
    # the copy after the run (retried once the best epoch's copy is written)
    qtbot.waitUntil(lambda: recovery.writer.idle and recovery.path.is_file()
                    and read_recovery(recovery.path).note == "3 surgery steps, trained weights", timeout=60_000)
    info = read_recovery(recovery.path)
    assert info.note == "3 surgery steps, trained weights" and info.data == window.data_path
    kept = open_project(recovery.path)
    assert same_weights(kept.model, s.model) and kept.recipe() == s.recipe()

    qtbot.waitUntil(lambda: not window.jobs.busy, timeout=TIMEOUT)  # the evaluation after the run
    with qtbot.waitSignal(window.saved, timeout=TIMEOUT):
        window.files.save_project_to(str(tmp_path / "saved.graft"))
    assert not recovery.path.exists()  # saved: nothing to recover
    assert not recovery.autosave(force=True)  # and nothing is written while nothing is unsaved
    window.undo_stack.undo()
    assert recovery.autosave() and recovery.writer.flush(60) and recovery.path.exists()
    window.undo_stack.redo()
    window.workspace.weights_changed = False
    window.undo_stack.setClean()
    path = recovery.path
    window.close()
    assert not path.exists() and not path.with_suffix(".lock").exists()


def test_the_interval_is_a_setting_and_zero_turns_autosave_off(window):
    recovery = window.recovery
    recovery.set_minutes(0.5)
    assert recovery.timer.interval() == 30_000 and recovery.minutes() == 0.5
    recovery.set_minutes(0)
    assert not recovery.enabled and recovery.minutes() == 0.0
    recovery.set_minutes(2)


def test_an_open_windows_file_is_never_offered(qtbot, window, mobilenet_session, tiny_folder):
    from app.main_window import MainWindow

    ready(qtbot, window, mobilenet_session, tiny_folder)
    assert window.recovery.autosave() and window.recovery.writer.flush(60)
    other = MainWindow()
    qtbot.addWidget(other)
    try:
        assert other.recovery.stale() == [] and other.recovery.offer() is None
    finally:
        other.close()


def _killed_window(tmp_path, project: str | None = None) -> Path:
    """A real window (another process) with unsaved surgery, killed with SIGKILL once its copy is written."""
    args = [sys.executable, str(CHILD), str(tmp_path / "child-settings")] + ([project] if project else [])
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1", "QT_QPA_PLATFORM": "offscreen"})
    try:
        line = child.stdout.readline()
        assert line.startswith("written "), line + child.stderr.read()
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(30)
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL
    path = Path(line.split(" ", 1)[1].strip())
    assert path.is_file() and path.with_suffix(".lock").is_file()  # what a crash leaves
    return path


@pytest.mark.slow
def test_after_a_kill_the_next_window_offers_the_work_and_restores_it(qtbot, tmp_path):
    from app.main_window import MainWindow

    left = _killed_window(tmp_path, project=str(tmp_path / "mine.graft"))
    info = read_recovery(left)
    window = MainWindow()
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.recovery.offered, timeout=10_000) as offered:
        window.show()
    box = window.recovery.prompt
    assert offered.args[0].path == left and box is not None and box.isVisible()
    assert box.text() == info.question() and box.text().startswith("Recover the work from ")
    assert "mine.graft" in box.informativeText() and "1 surgery step" not in box.informativeText()
    assert [b.text() for b in box.buttons()] == ["Restore", "Discard"]
    with qtbot.waitSignal(window.recovery.restored, timeout=TIMEOUT):
        next(b for b in box.buttons() if b.text() == "Restore").click()
    s = window.session
    assert [h.name for h in s.heads] == ["shape"] and [op["op"] for op in s.recipe()] == ["delete_output", "add_head"]
    assert window.project_path == str(tmp_path / "mine.graft") and window.isWindowModified()
    assert window.recovery.writer.flush(60)
    assert same_weights(s.model, open_project(window.recovery.path).model)  # this window keeps it now
    assert not left.exists() and not left.with_suffix(".lock").exists()
    assert window.recovery.prompt is None

    # the restored steps are the surgery history again, undoable as before the crash
    stack, history = window.undo_stack, window.history_view.model()
    texts = [history.data(history.index(row, 0)) for row in range(history.rowCount())]
    assert texts == ["Network as loaded", "Delete output layer (classifier.3)", "Add head 'shape'"], texts
    assert stack.index() == 2 and window.actions.undo.isEnabled() and not stack.isClean()  # in no saved file
    restored = {k: v.clone() for k, v in s.model.state_dict().items()}
    window.actions.undo.trigger()  # the head goes
    assert s.heads == [] and [op["op"] for op in s.recipe()] == ["delete_output"] and window.isWindowModified()
    assert window.message_label.text() == "Undid Add head 'shape'."
    window.actions.undo.trigger()  # the network as loaded: its classifier is back, the trunk as restored
    assert s.recipe() == [] and s.output_layer == "classifier.3" and "classifier.3" in s.tree
    trunk = {k: v for k, v in s.model.state_dict().items() if not k.startswith("trunk.body.classifier")}
    assert all(torch.equal(v, restored[k]) for k, v in trunk.items() if k in restored)
    assert not window.actions.undo.isEnabled() and window.actions.redo.isEnabled()
    window.actions.redo.trigger()
    window.actions.redo.trigger()
    assert [op["op"] for op in s.recipe()] == ["delete_output", "add_head"] and [h.name for h in s.heads] == ["shape"]
    now = s.model.state_dict()  # redo brings back the restored head, not a new one
    assert now.keys() == restored.keys() and all(torch.equal(now[k], restored[k]) for k in now)
    window.workspace.weights_changed = False
    window.undo_stack.setClean()
    window.close()
    assert recovery_files(window.recovery.folder) == []


def test_restored_work_keeps_its_history_as_its_window_grouped_it(qtbot, window, mobilenet_session, tmp_path):
    """A macro (the demo task's "Set up the demo task") is one step again after a restore, not its parts."""
    from app.main_window import MainWindow
    from engine.network.heads import HeadSpec
    from engine.surgery.operations import AddHead, DeleteOutputLayer, freeze_preset

    window.workspace.set_session(mobilenet_session, project_path=None)
    stack = window.undo_stack
    stack.beginMacro("Set up the task")
    assert window.surgery.apply_op(DeleteOutputLayer())
    assert window.surgery.apply_op(AddHead(HeadSpec("shape", labels=["a", "b", "c"]), seed=1))
    stack.endMacro()
    assert window.surgery.apply_op(freeze_preset("heads-only"))
    assert window.recovery.autosave() and window.recovery.writer.flush(60)
    left = tmp_path / "crashed" / window.recovery.path.name  # as a crashed window would leave it
    left.parent.mkdir()
    left.write_bytes(window.recovery.path.read_bytes())
    info = read_recovery(left)
    assert info.steps == [("Set up the task", 2), ("Train only the heads", 1)]

    other = MainWindow()
    qtbot.addWidget(other)
    with qtbot.waitSignal(other.recovery.restored, timeout=TIMEOUT):
        other.recovery.restore(info)
    history = other.history_view.model()
    assert [history.data(history.index(row, 0)) for row in range(history.rowCount())] == \
        ["Network as loaded", "Set up the task", "Train only the heads"]
    assert other.undo_stack.index() == 2 and not other.undo_stack.isClean() and other.isWindowModified()
    assert other.recovery.writer.flush(60)
    assert read_recovery(other.recovery.path).steps == info.steps  # kept grouped if this one crashes too
    other.undo_stack.undo()
    other.undo_stack.undo()  # the whole macro at once: the network as loaded
    assert other.session.recipe() == [] and other.session.heads == [] and not other.actions.undo.isEnabled()
    other.undo_stack.redo()
    assert [op["op"] for op in other.session.recipe()] == ["delete_output", "add_head"]
    other.workspace.weights_changed = False
    other.undo_stack.setClean()
    other.close()


@pytest.mark.slow
def test_discard_deletes_the_crashed_windows_work(qtbot, tmp_path):
    from app.main_window import MainWindow

    left = _killed_window(tmp_path)
    window = MainWindow()
    qtbot.addWidget(window)
    with qtbot.waitSignal(window.recovery.offered, timeout=10_000):
        window.show()
    assert "(never saved)" in window.recovery.prompt.informativeText()
    next(b for b in window.recovery.prompt.buttons() if b.text() == "Discard").click()
    qtbot.waitUntil(lambda: window.recovery.prompt is None)
    assert not left.exists() and not left.with_suffix(".lock").exists() and window.session is None
    window.close()
