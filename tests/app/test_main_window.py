"""The whole window driven like a person would, checking the engine's state after every step.

The bundled EfficientNet-Lite0 is loaded through the window's worker once; later tests reuse a copy of
it (set as the window's session) to stay fast. Training runs on a small slice of the demo data.
"""
from __future__ import annotations

import copy
import csv
import json
import threading
import time
from pathlib import Path

import pytest
import torch
from PySide6.QtCore import QMimeData, QPointF, Qt, QTimer, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QFileDialog, QMessageBox, QToolButton

from app.main_window import MainWindow
from engine.network.heads import HeadSpec
from engine.network.layer_tree import HEADS_KEY
from engine.surgery.operations import AddHead, DeleteOutputLayer, freeze_preset
from engine.training.config import TrainConfig

LOAD_TIMEOUT = 60_000
TRAIN_TIMEOUT = 120_000


# -- fixtures -----------------------------------------------------------------------------------------
def give_session(window, network):
    """Set a fresh session on a copy of the loaded network (as a finished load would)."""
    from engine.surgery.session import Session

    net = copy.copy(network)
    net.module = copy.deepcopy(network.module)
    window.workspace.set_session(Session(net), project_path=None)
    return window.session


def load_data(qtbot, window, path):
    with qtbot.waitSignal(window.dataLoaded, timeout=LOAD_TIMEOUT):
        window.datasets.load_data(str(path))
    return window.data


def accept_head_dialog(monkeypatch, choose=None):
    """Make the Add head dialog accept itself as pre-filled (from the data's first unused suggestion)."""
    from widgets.head_dialog import HeadDialog

    seen = []

    def exec_(self):
        seen.append(self)
        if choose is not None:
            choose(self)
        self.accept()
        return self.result()

    monkeypatch.setattr(HeadDialog, "exec", exec_)
    return seen


def quick_config(**changes) -> TrainConfig:
    config = TrainConfig(epochs=1, batch_size=8, patience=None, num_workers=0, augment=False, warmup_epochs=0)
    for k, v in changes.items():
        setattr(config, k, v)
    return config


def forward(session):
    session.model.eval()
    torch.manual_seed(3)
    with torch.no_grad():
        return session.model(torch.randn(2, 3, 224, 224))


def requires_grad(session):
    return {n: p.requires_grad for n, p in session.model.named_parameters()}


# -- the flow -----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_open_default_model_surgery_heads_freezing_and_undo(qtbot, window, monkeypatch, boxes, small_csv):
    a = window.actions
    assert not a.export_onnx.isEnabled() and not a.delete_output.isEnabled()  # nothing loaded yet
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT):
        window.files.load_model({"spec": "default"})
        assert window.busy_bar.isVisible()  # the busy indicator shows while the worker loads
    s = window.session
    output = s.output_layer
    assert output and window.tree_model.index_for_path(output).isValid()
    assert "efficientnet_lite0" in window.model_label.text()
    assert window.features_label.text() == f"classifier outputs: {s.tree.feature_dim}"  # before the delete
    assert "parameters train" in window.params_label.text() and window.device_label.text()
    assert a.delete_output.isEnabled() and a.export_onnx.isEnabled() and not a.train_stop.isEnabled()

    # delete the output layer from the toolbar action
    a.delete_output.trigger()
    assert s.output_layer is None and s.output_deleted
    assert not window.tree_model.index_for_path(output).isValid()  # its row is gone
    assert a.undo.text() == f"&Undo Delete output layer ({output})"
    assert not a.delete_output.isEnabled()  # no second deletion
    assert window.isWindowModified()

    # two heads through the dialog, pre-filled from the data's suggestions
    data = load_data(qtbot, window, small_csv)
    suggested = [h.name for h in data.heads]
    assert len(suggested) >= 2
    dialogs = accept_head_dialog(monkeypatch)
    a.add_head.trigger()
    a.add_head.trigger()
    assert [h.name for h in s.heads] == suggested[:2]
    assert dialogs[0].suggestion_combo.count() == len(suggested) + 1
    out = forward(s)
    assert set(out) == set(suggested[:2])
    assert out[suggested[0]].shape == (2, s.heads[0].outputs)
    for name in suggested[:2]:
        assert window.tree_model.index_for_path(f"{HEADS_KEY}.{name}").isValid()
    assert a.undo.text() == f"&Undo Add head '{suggested[1]}'"

    # toggle freezing with the tree's checkbox: requires_grad flips, undo restores
    before = requires_grad(s)
    block = next(n.path for n in s.tree.root.children if n.kind == "layer" and n.params > 0)
    index = window.tree_model.index_for_path(block)
    assert index.data(Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Checked
    assert window.tree_model.setData(index, Qt.CheckState.Unchecked, Qt.ItemDataRole.CheckStateRole)
    frozen = {n for n, g in requires_grad(s).items() if not g}
    assert frozen and all(n.startswith(f"trunk.body.{block}.") for n in frozen)
    assert window.tree_model.index_for_path(block).data(Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Unchecked
    assert a.undo.text() == f"&Undo Freeze {block}"
    a.undo.trigger()
    assert requires_grad(s) == before
    a.redo.trigger()
    assert {n for n, g in requires_grad(s).items() if not g} == frozen
    a.undo.trigger()

    # undo everything, step by step, checking the engine each time; then redo it all
    a.undo.trigger()
    assert [h.name for h in s.heads] == suggested[:1]
    a.undo.trigger()
    assert s.heads == []
    a.undo.trigger()
    assert s.output_layer == output and window.tree_model.index_for_path(output).isValid()
    assert not a.undo.isEnabled() and not window.isWindowModified()
    for _ in range(3):
        a.redo.trigger()
    assert s.output_layer is None and [h.name for h in s.heads] == suggested[:2]
    assert set(forward(s)) == set(suggested[:2])


def test_first_head_offers_to_delete_the_output_layer(qtbot, window, monkeypatch, boxes, default_network):
    s = give_session(window, default_network)
    output = s.output_layer
    accept_head_dialog(monkeypatch, choose=lambda d: (d.name_edit.setText("kind"),
                                                      d.labels_edit.setPlainText("cat, dog")))
    boxes.answers = [QMessageBox.StandardButton.Yes]
    window.actions.add_head.trigger()
    assert any("Delete the output layer" in title for _, title, _ in boxes.calls)
    assert s.output_layer is None and [h.name for h in s.heads] == ["kind"]
    assert window.undo_stack.count() == 2
    assert window.undo_stack.text(0).startswith(f"Delete output layer ({output})")
    assert forward(s)["kind"].shape == (2, 2)


def test_surgery_errors_are_shown_and_change_nothing(qtbot, window, boxes, default_network):
    s = give_session(window, default_network)
    window.surgery.apply_op(DeleteOutputLayer())
    before = requires_grad(s)
    assert not window.surgery.apply_op(DeleteOutputLayer())
    assert boxes.texts("warning")[-1] == "The output layer has already been deleted."
    assert window.undo_stack.count() == 1 and requires_grad(s) == before
    assert "already been deleted" in window.message_label.text()


def test_cut_here_from_the_tree_selection_and_undo(qtbot, window, default_network):
    s = give_session(window, default_network)
    dim = s.feature_dim
    layer = "features.3"
    assert window.tree_view.select_path(layer)
    assert window.actions.cut_here.isEnabled()
    window.actions.cut_here.trigger()
    assert s.model.trunk.cut_at == layer and s.feature_dim != dim
    assert window.actions.undo.text() == f"&Undo Cut at {layer}"
    assert window.features_label.text() == f"features: {s.feature_dim}"
    window.actions.undo.trigger()
    assert s.model.trunk.cut_at is None and s.feature_dim == dim


def test_heads_panel_edits_and_removes_through_the_undo_stack(qtbot, window, monkeypatch, default_network):
    s = give_session(window, default_network)
    window.surgery.apply_op(DeleteOutputLayer())
    window.surgery.apply_op(AddHead(HeadSpec("shape", labels=["a", "b"]), seed=1))
    window.surgery.apply_op(AddHead(HeadSpec("size", kind="regression", outputs=1), seed=2))
    accept_head_dialog(monkeypatch, choose=lambda d: d.name_edit.setText("form"))
    window.heads_panel.editRequested.emit("shape")
    assert [h.name for h in s.heads] == ["form", "size"]
    assert window.undo_stack.undoText() == "Rename head 'shape' to 'form'"
    window.heads_panel.removeRequested.emit("size")
    assert [h.name for h in s.heads] == ["form"] and set(forward(s)) == {"form"}
    window.actions.undo.trigger()
    window.actions.undo.trigger()
    assert [h.name for h in s.heads] == ["shape", "size"] and set(forward(s)) == {"shape", "size"}


def test_data_that_cannot_be_read_is_explained(qtbot, window, boxes, tmp_path):
    bad = tmp_path / "labels.csv"
    bad.write_text("picture,label\na.jpg,cat\n")
    with qtbot.waitSignal(window.errorShown, timeout=LOAD_TIMEOUT) as shown:
        window.datasets.load_data(str(bad))
    assert "image" in shown.args[0] and "Traceback" not in shown.args[0]
    assert window.data_panel.error_text() == shown.args[0]
    assert boxes.calls[-1][1] == "Could not load the data" and window.data is None


# -- training -----------------------------------------------------------------------------------------
def ready_to_train(qtbot, window, network, csv_path, monkeypatch, config):
    s = give_session(window, network)
    data = load_data(qtbot, window, csv_path)
    window.surgery.apply_op(DeleteOutputLayer())
    for spec in data.heads[:2]:
        window.surgery.apply_op(AddHead(spec, seed=0))
    window.surgery.apply_op(freeze_preset("heads-only"))
    monkeypatch.setattr(window.training_panel, "config", lambda: config)
    return s


@pytest.mark.slow
def test_short_training_run_draws_curves_then_evaluates(qtbot, window, monkeypatch, default_network, small_csv):
    s = ready_to_train(qtbot, window, default_network, small_csv, monkeypatch, quick_config())
    a = window.actions
    assert a.train_start.isEnabled() and not a.train_stop.isEnabled()
    with qtbot.waitSignal(window.trainingStarted, timeout=5000):
        a.train_start.trigger()
    # while training: no surgery, no undo, Stop available
    assert window.jobs.training and a.train_stop.isEnabled()
    assert not any(x.isEnabled() for x in (a.train_start, a.add_head, a.heads_only, a.unfreeze_all, a.undo,
                                           a.export_onnx, a.save_project))
    assert not window.surgery.apply_op(freeze_preset("none"))
    head = window.tree_model.index_for_path(f"{HEADS_KEY}.{s.heads[0].name}")
    before = requires_grad(s)
    window.tree_model.setData(head, Qt.CheckState.Unchecked, Qt.ItemDataRole.CheckStateRole)
    assert requires_grad(s) == before and "training runs" in window.message_label.text()
    with qtbot.waitSignal(window.evaluated, timeout=TRAIN_TIMEOUT) as evaluated:
        pass
    result = window.training.last_result
    assert result["reason"] == "completed"
    record = s.project_extra["training"]  # as main.py train records it: evaluate/export read it back
    assert record["data"] == str(small_csv.resolve()) and record["reason"] == "completed"
    assert (record["seed"], record["val_fraction"]) == (window.data.seed, window.data.val_fraction)
    assert record["n_val"] == len(window.data.val) and record["epochs_run"] == result["epochs_run"]
    json.dumps(record)  # the project's recipe is JSON
    curves = window.curve_panel
    assert curves.redraw_count > 0
    xs, ys = curves.curve("train:total").getData()
    assert xs is not None and len(xs) > 0 and all(y == y for y in ys)
    report = evaluated.args[0]
    assert set(report.heads) == {h.name for h in s.heads} and report.n_images == len(window.data.val)
    assert window.tabs.currentIndex() == 3 and window.evaluation.last_report is report
    assert window.isWindowModified()  # trained weights are unsaved work
    assert a.train_start.isEnabled() and not a.train_stop.isEnabled() and a.undo.isEnabled()


@pytest.mark.slow
def test_stop_during_a_run_ends_within_a_batch(qtbot, window, monkeypatch, default_network, small_csv):
    config = quick_config(epochs=200, cache_features=False, batch_size=4)
    ready_to_train(qtbot, window, default_network, small_csv, monkeypatch, config)
    steps = []
    window.trainingStarted.connect(lambda: window.jobs.train_job.progress.connect(
        lambda b: steps.extend(b.get("steps", []))))
    window.training.start()
    qtbot.waitUntil(lambda: len(steps) >= 2, timeout=TRAIN_TIMEOUT)
    start = time.monotonic()
    with qtbot.waitSignal(window.trainingFinished, timeout=30_000) as finished:
        window.actions.train_stop.trigger()
        assert window.training_panel is not None and not window.actions.train_stop.isEnabled()
    assert finished.args[0]["reason"] == "stopped"
    assert time.monotonic() - start < 10  # a batch of 4 images, not an epoch
    assert not window.jobs.training and window.jobs.train_job is None


@pytest.mark.slow
def test_closing_during_training_asks_then_stops_cleanly(qtbot, monkeypatch, boxes, default_network, small_csv):
    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    config = quick_config(epochs=200, cache_features=False, batch_size=4)
    ready_to_train(qtbot, window, default_network, small_csv, monkeypatch, config)
    window.training.start()
    job = window.jobs.train_job
    qtbot.waitUntil(lambda: window.curve_panel.curve("train:total").getData()[0] is not None
                    and window.curve_panel.redraw_count > 0, timeout=TRAIN_TIMEOUT)

    boxes.answers = [QMessageBox.StandardButton.No]  # first: keep training
    assert not window.close()
    assert window.isVisible() and window.jobs.training
    boxes.answers = [QMessageBox.StandardButton.Yes, QMessageBox.StandardButton.Discard]
    assert window.close()
    titles = [t for k, t, _ in boxes.calls if k == "question"]
    assert titles == ["Training is running", "Training is running", "Unsaved changes"]
    assert job.thread.isFinished() and job.worker.done  # stopped by itself: no terminate
    assert not window.isVisible()


# -- projects, export, errors -------------------------------------------------------------------------
def test_save_and_reopen_a_project_gives_identical_outputs(qtbot, window, monkeypatch, tmp_path,
                                                           default_network):
    s = give_session(window, default_network)
    window.surgery.apply_op(DeleteOutputLayer())
    window.surgery.apply_op(AddHead(HeadSpec("shape", labels=["circle", "square", "star"]), seed=1))
    window.surgery.apply_op(AddHead(HeadSpec("size", kind="regression", outputs=1), seed=2))
    window.surgery.apply_op(freeze_preset("heads-only"))
    with torch.no_grad():  # trained-looking weights, not just the seeds
        s.model.heads["size"][-1].bias.fill_(0.25)
    window.workspace.weights_changed = True
    s.project_extra = {"training": {"data": "/data/labels.csv", "seed": 3, "val_fraction": 0.25}}  # main.py train's
    expected = forward(s)
    path = tmp_path / "mine.graft"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(path)[:-6], "")))
    with qtbot.waitSignal(window.saved, timeout=LOAD_TIMEOUT):
        window.actions.save_project.trigger()
    assert path.is_file() and not window.isWindowModified()
    assert window.windowTitle().startswith("mine.graft")
    assert window.settings.recent_files()[0] == {"kind": "project", "path": str(path.resolve())}

    other = MainWindow()
    qtbot.addWidget(other)
    with qtbot.waitSignal(other.modelLoaded, timeout=LOAD_TIMEOUT):
        other.files.open_project_file(str(path))
    got = forward(other.session)
    assert set(got) == set(expected) and all(torch.equal(got[k], expected[k]) for k in expected)
    assert [h.name for h in other.session.heads] == ["shape", "size"]
    assert requires_grad(other.session) == requires_grad(s)
    assert other.project_path == str(path) and not other.isWindowModified()
    assert other.session.project_extra["training"] == {"data": "/data/labels.csv", "seed": 3, "val_fraction": 0.25}
    # its steps are the surgery history, undoable (the source's weights are on this machine), and clean
    history = other.history_view.model()
    texts = [history.data(history.index(row, 0)) for row in range(history.rowCount())]
    assert texts == ["Network as loaded"] + [window.undo_stack.text(i) for i in range(4)], texts
    assert other.actions.undo.isEnabled() and other.undo_stack.isClean()
    other.actions.undo.trigger()  # the freeze preset
    assert other.isWindowModified() and requires_grad(other.session) != requires_grad(s)
    other.actions.redo.trigger()
    assert not other.isWindowModified() and requires_grad(other.session) == requires_grad(s)
    other.close()


def test_opening_another_model_offers_to_save_first_then_opens_it(qtbot, window, monkeypatch, boxes, tmp_path,
                                                                  default_network):
    give_session(window, default_network)
    window.surgery.apply_op(DeleteOutputLayer())
    assert window.isWindowModified()
    path = tmp_path / "before.graft"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(path), "")))
    boxes.answers = [QMessageBox.StandardButton.Save]
    with qtbot.waitSignals([window.saved, window.modelLoaded], timeout=LOAD_TIMEOUT):
        window.files.load_model({"spec": "default"})
    assert boxes.calls[0][1] == "Unsaved changes" and path.is_file()
    assert window.session.output_layer is not None and not window.isWindowModified()
    assert window.project_path is None  # the new model is not the saved project


@pytest.mark.slow
def test_export_onnx_reports_the_largest_difference_per_head(qtbot, window, monkeypatch, boxes, tmp_path,
                                                             default_network):
    give_session(window, default_network)
    window.surgery.apply_op(DeleteOutputLayer())
    window.surgery.apply_op(AddHead(HeadSpec("shape", labels=["a", "b", "c"]), seed=1))
    window.surgery.apply_op(AddHead(HeadSpec("tags", kind="multi", labels=["red", "striped"]), seed=2))
    path = tmp_path / "model.onnx"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(path), "")))
    with qtbot.waitSignal(window.exported, timeout=LOAD_TIMEOUT) as exported:
        window.actions.export_onnx.trigger()
    report = exported.args[0]
    assert path.is_file() and report.verified
    assert max(report.random_diff.values()) < 1e-4
    text = boxes.texts("information")[-1]
    assert "model.onnx" in text and "shape:" in text and "tags:" in text and "Traceback" not in text


def test_export_to_an_unwritable_place_says_so(qtbot, window, boxes, tmp_path, default_network):
    give_session(window, default_network)
    window.surgery.apply_op(DeleteOutputLayer())
    window.surgery.apply_op(AddHead(HeadSpec("shape", labels=["a", "b"]), seed=1))
    window.export.export_onnx(str(tmp_path / "no" / "such" / "folder" / "m.onnx"))
    assert "does not exist" in boxes.texts("warning")[-1]
    if Path("/proc/self").is_dir():  # a folder nobody, not even root, can create files in
        with qtbot.waitSignal(window.errorShown, timeout=LOAD_TIMEOUT) as shown:
            window.export.export_onnx("/proc/graft-test.onnx")
        assert "graft-test.onnx" in shown.args[0] or "/proc" in shown.args[0]
        assert "Traceback" not in boxes.texts("warning")[-1]


def test_a_bad_model_file_gives_a_message_not_a_traceback(qtbot, window, boxes, tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"this is not a model\n" * 10)
    with qtbot.waitSignal(window.errorShown, timeout=LOAD_TIMEOUT) as shown:
        window.files.load_model({"spec": str(bad)})
    assert "broken.pt" in shown.args[0] and "Traceback" not in shown.args[0]
    kind, title, text = boxes.calls[-1]
    assert kind == "warning" and title == "Could not open the model" and "not a model file" in text
    assert "Traceback" not in text and window.session is None
    assert not window.busy_bar.isVisible()


def test_dropping_data_on_the_window_loads_it(qtbot, window, default_network, small_csv):
    give_session(window, default_network)
    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(small_csv))])
    event = QDropEvent(QPointF(50, 50), Qt.DropAction.CopyAction, mime, Qt.MouseButton.NoButton,
                       Qt.KeyboardModifier.NoModifier)
    with qtbot.waitSignal(window.dataLoaded, timeout=LOAD_TIMEOUT):
        window.dropEvent(event)
    assert window.data is not None and window.data_path == str(small_csv)
    assert window.tabs.currentIndex() == 1


def test_geometry_and_recent_files_are_kept_between_runs(qtbot, tmp_path):
    first = MainWindow()
    qtbot.addWidget(first)
    first.show()
    first.resize(first.width(), 503)
    first.splitter.setSizes([650, 700])
    sizes = first.splitter.sizes()
    first.settings.add_recent(tmp_path, "data")
    first.close()
    second = MainWindow()
    qtbot.addWidget(second)
    second.show()
    qtbot.waitExposed(second)
    assert second.height() == 503
    assert second.splitter.sizes() == sizes
    labels = [a.text() for a in second.actions.recent_menu.actions() if not a.isSeparator()]
    assert any(tmp_path.name in t for t in labels)
    second.close()


# -- work that overlaps: what waits for what, and results that belong to another session ---------------
class Gate:
    """Holds a worker inside a patched function until the test opens it (or 30 s have passed)."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def wrap(self, fn):
        def held(*args, **kwargs):
            self.entered.set()
            self.opened.wait(30)
            return fn(*args, **kwargs)
        return held


@pytest.fixture
def gates():
    """A new Gate per call; all are opened when the test ends (before the window fixture waits for its jobs)."""
    made: list[Gate] = []

    def make() -> Gate:
        made.append(Gate())
        return made[-1]

    yield make
    for gate in made:
        gate.opened.set()


def first_image(csv_path) -> str:
    with Path(csv_path).open(newline="") as f:
        return next(csv.DictReader(f))["image"]


def with_a_head(qtbot, window, network, csv_path):
    s = give_session(window, network)
    data = load_data(qtbot, window, csv_path)
    window.surgery.apply_op(DeleteOutputLayer())
    window.surgery.apply_op(AddHead(data.heads[0], seed=0))
    return s


def hold_evaluation(window, monkeypatch, gate) -> None:
    """Start an evaluation that runs until the gate opens."""
    import engine.training.evaluation

    monkeypatch.setattr(engine.training.evaluation, "evaluate", gate.wrap(engine.training.evaluation.evaluate))
    window.evaluation.evaluate()
    assert "evaluate" in window.jobs.running


@pytest.mark.slow
def test_cancelling_the_close_after_training_stopped_leaves_a_usable_window(qtbot, window, monkeypatch, boxes,
                                                                          default_network, small_csv):
    config = quick_config(epochs=200, cache_features=False, batch_size=4)
    s = ready_to_train(qtbot, window, default_network, small_csv, monkeypatch, config)
    before = {n: p.detach().clone() for n, p in s.model.heads.named_parameters()}
    epochs = []
    window.training.start()
    window.jobs.train_job.progress.connect(lambda b: epochs.extend(b.get("epochs", [])))
    qtbot.waitUntil(lambda: len(epochs) >= 1, timeout=TRAIN_TIMEOUT)

    boxes.answers = [QMessageBox.StandardButton.Yes, QMessageBox.StandardButton.Cancel]
    with qtbot.waitSignal(window.evaluated, timeout=TRAIN_TIMEOUT) as evaluated:
        assert not window.close()
        # the run ended as a stopped run does, and the window knows it
        assert window.isVisible() and not window.jobs.training and window.jobs.train_job is None
        assert window.training.last_result["reason"] == "stopped"
        assert not window.training_panel.is_running() and not window.training_panel.stop_button.isEnabled()
        assert not window.actions.train_stop.isEnabled()
        assert window.isWindowModified() and "evaluate" in window.jobs.running  # the evaluation a finished run gets
    assert [t for k, t, _ in boxes.calls if k == "question"] == ["Training is running", "Unsaved changes"]
    after = dict(s.model.heads.named_parameters())
    assert any(not torch.equal(before[n], after[n].detach()) for n in before)  # the learned weights stayed
    assert window.evaluation.last_report is evaluated.args[0] and window.evaluation_panel.report() is evaluated.args[0]
    a = window.actions
    assert a.train_start.isEnabled() and window.training_panel.start_button.isEnabled()
    assert a.save_project.isEnabled() and a.undo.isEnabled() and window.isWindowModified()


def test_opening_while_saving_waits_and_a_late_save_leaves_the_next_session_alone(qtbot, window, monkeypatch, boxes,
                                                                                tmp_path, default_network, gates):
    import engine.project.project_file

    give_session(window, default_network)
    window.surgery.apply_op(DeleteOutputLayer())
    gate = gates()
    monkeypatch.setattr(engine.project.project_file, "save_project", gate.wrap(engine.project.project_file.save_project))
    saved = tmp_path / "a.graft"
    assert window.files.save_project_to(str(saved))
    for dropped in ("b.graft", "other.pt"):  # dropped on the window while the save runs
        window.files.open_path(str(tmp_path / dropped))
        assert "load" not in window.jobs.running
        assert window.message_label.text().endswith("waits until the project has been saved.")
    assert boxes.calls == []  # refused before offering to save anything
    assert not window.actions.open_model.isEnabled() and not window.actions.open_project.isEnabled()

    new = give_session(window, default_network)  # another session all the same (as a finished load sets it)
    with qtbot.assertNotEmitted(window.saved):
        gate.opened.set()
        qtbot.waitUntil(lambda: not window.jobs.busy, timeout=LOAD_TIMEOUT)
    assert saved.is_file()  # the first session was saved where it was asked to be
    assert window.session is new and window.project_path is None
    assert not window.windowTitle().startswith("a.graft") and not window.isWindowModified()
    assert "a.graft" in window.message_label.text()


def test_a_late_evaluation_or_prediction_does_not_reach_the_next_session(qtbot, window, monkeypatch, tmp_path,
                                                                       default_network, small_csv, gates):
    import engine.export.inference

    with_a_head(qtbot, window, default_network, small_csv)
    hold_evaluation(window, monkeypatch, evaluation := gates())
    window.files.open_path(str(tmp_path / "b.graft"))
    assert "load" not in window.jobs.running
    assert window.message_label.text() == "Opening a project waits until the evaluation has finished."
    give_session(window, default_network)
    with qtbot.assertNotEmitted(window.evaluated):
        evaluation.opened.set()
        qtbot.waitUntil(lambda: not window.jobs.busy, timeout=LOAD_TIMEOUT)
    assert window.evaluation.last_report is None and window.evaluation_panel.report() is None

    with_a_head(qtbot, window, default_network, small_csv)
    prediction = gates()
    monkeypatch.setattr(engine.export.inference, "predict_files", prediction.wrap(engine.export.inference.predict_files))
    window.evaluation.predict_image(first_image(small_csv))
    assert window.try_image.status_label.text() == "Predicting…"
    give_session(window, default_network)
    with qtbot.assertNotEmitted(window.predicted):
        prediction.opened.set()
        qtbot.waitUntil(lambda: not window.jobs.busy, timeout=LOAD_TIMEOUT)
    assert window.try_image.predictions_text() == {} and window.try_image.image_path() == ""


def test_a_new_model_clears_what_the_previous_one_showed(qtbot, window, default_network, small_csv):
    with_a_head(qtbot, window, default_network, small_csv)
    with qtbot.waitSignal(window.evaluated, timeout=LOAD_TIMEOUT):
        window.evaluation.evaluate()
    with qtbot.waitSignal(window.predicted, timeout=LOAD_TIMEOUT):
        window.evaluation.predict_image(first_image(small_csv))
    window.curve_panel.add_steps([(1, 0.9, {}), (2, 0.7, {})])
    window.curve_panel.flush()
    window.training_panel.set_progress(5, 10, 3, 1, 2)
    window.training_panel.set_status("Training ended (completed).")
    assert window.evaluation.last_report is not None and window.evaluation_panel.report() is window.evaluation.last_report
    assert window.try_image.predictions_text() and len(window.curve_panel.curve("train:total").getData()[0]) == 2

    give_session(window, default_network)
    assert window.evaluation.last_report is None and window.evaluation_panel.report() is None
    assert window.evaluation_panel.empty_label.isVisibleTo(window.evaluation_panel)
    assert window.try_image.predictions_text() == {} and window.try_image.image_path() == ""
    xs, _ = window.curve_panel.curve("train:total").getData()
    assert xs is None or len(xs) == 0
    assert window.training_panel.progress_label.text() == "" and "Training ended" not in window.training_panel.status()


def test_start_and_predictions_say_what_they_wait_for(qtbot, window, monkeypatch, boxes, default_network, small_csv,
                                                     gates):
    import widgets.try_image_view

    config = quick_config()
    ready_to_train(qtbot, window, default_network, small_csv, monkeypatch, config)
    panel, start = window.training_panel, window.actions.train_start
    assert start.isEnabled() and panel.start_button.isEnabled()
    hold_evaluation(window, monkeypatch, evaluation := gates())
    assert not start.isEnabled() and not panel.start_button.isEnabled()  # in step with the action
    assert "evaluation" in panel.start_button.toolTip()
    assert not window.training.start() and not window.jobs.training
    assert window.message_label.text() == "Training waits until the evaluation has finished."

    image = first_image(small_csv)
    window.try_image._choose(image)  # chosen in the Evaluate tab
    refusal = "Predictions wait until the evaluation has finished."
    assert "predict" not in window.jobs.running and window.message_label.text() == refusal
    assert window.try_image.status_label.text() == refusal
    assert window.try_image.status_label.isVisibleTo(window.try_image)
    assert boxes.calls == []

    with qtbot.waitSignal(window.evaluated, timeout=LOAD_TIMEOUT):
        evaluation.opened.set()
    assert start.isEnabled() and panel.start_button.isEnabled()
    decoded = []
    real = widgets.try_image_view.load_pixmap
    monkeypatch.setattr(widgets.try_image_view, "load_pixmap", lambda p: decoded.append(p) or real(p))
    with qtbot.waitSignal(window.predicted, timeout=LOAD_TIMEOUT):
        window.try_image._choose(image)
        assert "predict" in window.jobs.running and window.try_image.status_label.text() == "Predicting…"
    assert decoded == [image]  # shown once, not decoded again by the window
    assert window.try_image.predictions_text() and not window.try_image.status_label.isVisibleTo(window.try_image)


@pytest.mark.slow
def test_during_training_drops_are_refused_aloud_and_clicks_keep_the_progress(qtbot, window, monkeypatch, boxes,
                                                                            tmp_path, default_network, small_csv):
    config = quick_config(epochs=200, cache_features=False, batch_size=4)
    s = ready_to_train(qtbot, window, default_network, small_csv, monkeypatch, config)
    panel, a = window.training_panel, window.actions
    window.training.start()
    qtbot.waitUntil(lambda: bool(panel.progress_label.text()), timeout=TRAIN_TIMEOUT)
    for dropped in ("b.graft", "other.pt"):
        window.files.open_path(str(tmp_path / dropped))
        assert "load" not in window.jobs.running
        assert window.message_label.text().startswith("Opening a ") and "until training has finished" in \
            window.message_label.text()
    assert boxes.calls == []

    layers = [n.path for n in s.tree.root.children if n.kind == "layer"]
    shown = panel.progress_label.text()
    window.tree_view.select_path(layers[0])
    window.heads_panel.select_head(s.heads[1].name)
    assert panel.progress_label.text() == shown and panel.progress_bar.maximum() == 1000
    with qtbot.waitSignal(window.trainingFinished, timeout=30_000):
        a.train_stop.trigger()
        assert not a.train_stop.isEnabled() and not panel.stop_button.isEnabled()
        window.tree_view.select_path(layers[1])
        window.tree_view.select_path(f"{HEADS_KEY}.{s.heads[0].name}")
        assert not a.train_stop.isEnabled() and not panel.stop_button.isEnabled()
        assert panel.status() == "Stopping after this batch…"


def test_closing_during_a_load_waits_with_a_note_and_keeps_handling_events(qtbot, monkeypatch, gates):
    import app.files

    window = MainWindow()
    qtbot.addWidget(window)
    window.show()
    gate = gates()
    monkeypatch.setattr(app.files, "_load_session", gate.wrap(lambda request: None))
    window.files.load_model({"spec": "default"})
    assert gate.entered.wait(10)
    seen = []

    def meanwhile():  # a timer firing while close() waits: the GUI thread is not blocked
        dialog = window.files.wait_dialog
        seen.append((dialog is not None and dialog.isVisible(), dialog.labelText() if dialog else ""))
        gate.opened.set()

    QTimer.singleShot(500, meanwhile)
    assert window.close()
    assert seen == [(True, "Closing Graft: waiting for the model to load…")]
    assert not window.isVisible() and window.session is None and not window.jobs.running and window.files.wait_dialog is None


def test_data_loading_and_predictions_block_only_what_they_touch(qtbot, window, monkeypatch, boxes, default_network,
                                                                small_csv, gates):
    import app.data
    import engine.export.inference

    s = give_session(window, default_network)
    a = window.actions
    data_gate = gates()
    monkeypatch.setattr(app.data, "_load_data", data_gate.wrap(app.data._load_data))
    window.datasets.load_data(str(small_csv))
    assert "data" in window.jobs.running
    assert a.delete_output.isEnabled() and a.unfreeze_all.isEnabled() and a.save_project.isEnabled()
    assert a.open_model.isEnabled() and window.history_view.isEnabled()
    block = next(n.path for n in s.tree.root.children if n.kind == "layer" and n.params > 0)
    index = window.tree_model.index_for_path(block)
    assert window.tree_model.setData(index, Qt.CheckState.Unchecked, Qt.ItemDataRole.CheckStateRole)
    assert not any(p.requires_grad for n, p in s.model.named_parameters() if n.startswith(f"trunk.body.{block}."))
    assert boxes.calls == []
    with qtbot.waitSignal(window.dataLoaded, timeout=LOAD_TIMEOUT):
        data_gate.opened.set()

    # a prediction runs the model: saving (which only reads it too) goes on, surgery waits, without a box
    prediction = gates()
    monkeypatch.setattr(engine.export.inference, "predict_files", prediction.wrap(engine.export.inference.predict_files))
    window.evaluation.predict_image(first_image(small_csv))
    assert a.save_project.isEnabled() and not a.delete_output.isEnabled() and not a.undo.isEnabled()
    frozen = requires_grad(s)
    index = window.tree_model.index_for_path(block)
    window.tree_model.setData(index, Qt.CheckState.Checked, Qt.ItemDataRole.CheckStateRole)
    assert requires_grad(s) == frozen and index.data(Qt.ItemDataRole.CheckStateRole) == Qt.CheckState.Unchecked
    assert window.message_label.text() == "Surgery waits until the prediction has finished."
    assert boxes.calls == [] and window.undo_stack.count() == 1
    with qtbot.waitSignal(window.predicted, timeout=LOAD_TIMEOUT):
        prediction.opened.set()
    assert a.delete_output.isEnabled() and window.surgery.apply_op(DeleteOutputLayer())


# -- projects that need trust or come with notes; export and data without surprises ------------------
def pickled_project(tmp_path) -> tuple[Path, Path]:
    """A project made from a pickled model only the pickle can rebuild (reopening it unpickles the file)."""
    import torchvision

    from engine.network.loading import load_network
    from engine.project.project_file import save_project
    from engine.surgery.session import Session

    model = torchvision.models.mobilenet_v3_small()
    model.features[0][0].stride = (1, 1)  # not torchvision's mobilenet any more
    pickled = tmp_path / "custom.pt"
    torch.save(model, pickled)
    return save_project(Session(load_network(pickled, trust=True)), tmp_path / "c.graft"), pickled


@pytest.mark.slow
def test_a_project_from_a_pickle_opens_only_when_the_user_trusts_the_file(qtbot, window, boxes, tmp_path,
                                                                         default_network):
    project, pickled = pickled_project(tmp_path)
    before = give_session(window, default_network)
    boxes.answers = [QMessageBox.StandardButton.No]
    window.files.open_project_file(str(project))
    qtbot.waitUntil(lambda: bool(boxes.calls) and not window.jobs.busy, timeout=LOAD_TIMEOUT)
    kind, title, text = boxes.calls[-1]
    assert kind == "question" and title == "Trust this model file?"
    assert "c.graft" in text and str(pickled) in text and "run any code" in text, text
    assert window.session is before and window.project_path is None  # nothing changed
    assert "c.graft was not opened" in window.message_label.text() and "custom.pt" in window.message_label.text()
    assert not [c for c in boxes.calls if c[0] == "warning"]  # refusing is not an error

    boxes.answers = [QMessageBox.StandardButton.Yes]
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT):
        window.files.open_project_file(str(project))
    assert [c[0] for c in boxes.calls] == ["question", "question"]
    assert window.project_path == str(project) and window.session is not before
    assert window.session.source.name == str(pickled)
    assert window.message_label.text().startswith("Opened c.graft")


def test_a_reopened_project_shows_its_notes(qtbot, window, tmp_path):
    import torchvision

    from engine.network.loading import load_network
    from engine.project.project_file import save_project
    from engine.surgery.session import Session

    weights = tmp_path / "mine.pth"
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), weights)
    s = Session(load_network(weights, arch="mobilenet_v3_small"))
    s.do(DeleteOutputLayer())
    project = save_project(s, tmp_path / "notes.graft")
    weights.unlink()  # undo cannot bring back the original output layer any more
    with qtbot.waitSignal(window.modelLoaded, timeout=LOAD_TIMEOUT):
        window.files.open_project_file(str(project))
    [note] = window.session.network.notes
    assert "Undo reaches back 0" in note
    assert window.message_label.text() == note and "#bf360c" in window.message_label.styleSheet()
    # the status line has room for a short message only: the strip above the tabs shows the note in full
    assert window.notes.frame.isVisible() and note in window.notes.label.text()
    assert window.notes.label.text().startswith("<b>Opened notes.graft")
    assert window.notes.label.height() >= 2 * window.notes.label.fontMetrics().height()  # wrapped, not cut
    window.notes.frame.findChild(QToolButton, "loadNotesClose").click()
    assert not window.notes.frame.isVisible()
    window.files.open_project_file(str(project))
    qtbot.waitUntil(lambda: window.notes.frame.isVisible(), timeout=LOAD_TIMEOUT)
    give_session(window, window.session.network)  # another model: its notes (none) replace these
    assert not window.notes.frame.isVisible()


@pytest.mark.slow
def test_export_without_data_verifies_on_the_images_the_project_records(qtbot, window, monkeypatch, boxes,
                                                                        tmp_path, default_network, small_csv):
    s = give_session(window, default_network)
    window.surgery.apply_op(DeleteOutputLayer())
    window.surgery.apply_op(AddHead(HeadSpec("shape", labels=["a", "b", "c"]), seed=1))
    s.project_extra = {"data": str(small_csv)}  # as the window saves it
    assert window.data is None
    with qtbot.waitSignal(window.exported, timeout=LOAD_TIMEOUT) as exported:
        window.export.export_onnx(str(tmp_path / "m.onnx"))
    report = exported.args[0]
    assert report.verified and report.images == 4 and report.image_diff
    text = boxes.texts("information")[-1]
    assert "4 real images" in text and f"Verified on 4 images from its training data {small_csv}" in text, text

    s.project_extra = {}
    with qtbot.waitSignal(window.exported, timeout=LOAD_TIMEOUT) as exported:
        window.export.export_onnx(str(tmp_path / "r.onnx"))
    assert exported.args[0].images == 0
    text = boxes.texts("information")[-1]
    assert "Only random inputs were checked" in text and "does not record" in text, text


def test_a_csv_column_with_a_stray_cell_is_left_out_with_a_warning(qtbot, window, small_csv, tmp_path):
    rows = list(csv.reader(small_csv.open(newline="")))
    header, body = rows[0], rows[1:]
    path = tmp_path / "typo.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header + ["score"])
        for i, row in enumerate(body):
            writer.writerow(row + ["1..5" if i == 5 else str(1 + i % 5)])
    data = load_data(qtbot, window, path)
    assert [h.name for h in data.heads] == ["shape", "tags", "size", "mask", "boxes"]  # the demo's heads, not 'score'
    [warning] = data.warnings
    assert "row 7, column 'score': '1..5' is not a number" in warning
    shown = window.data_panel.notes_label
    assert shown.isVisibleTo(window.data_panel) and "row 7" in shown.text() and "1..5" in shown.text()
    assert window.data_panel.notes()[0] == [warning]
    assert "1 warning: see the Data tab" in window.message_label.text()
    assert not window.data_panel.error_text()


def test_the_toolbar_names_the_freezing_presets_and_fits_the_default_window(qtbot, window):
    """The rule of thumb's three choices are labelled buttons, and nothing falls into the overflow menu."""
    from PySide6.QtWidgets import QToolButton

    a = window.actions
    window.resize(1480, 940)
    qtbot.wait(50)
    for action, text in ((a.freeze_up_to, "Freeze to here"), (a.heads_only, "Heads only"),
                         (a.unfreeze_all, "Unfreeze all"), (a.train_start, "Train"), (a.export_onnx, "Export ONNX")):
        button = window.toolbar.widgetForAction(action)
        assert isinstance(button, QToolButton) and button.text() == text
        assert button.toolButtonStyle() == Qt.ToolButtonStyle.ToolButtonTextBesideIcon
    assert a.train_start.text() == "&Start training"  # the menu keeps the full name
    for action in window.toolbar.actions():
        button = window.toolbar.widgetForAction(action)
        if button is not None and not action.isSeparator():
            assert button.isVisible(), f"{action.iconText()} is hidden in the toolbar's overflow"


def test_ok_on_a_trained_regression_head_without_changes_records_no_edit(qtbot, window, monkeypatch,
                                                                          default_network):
    s = give_session(window, default_network)
    window.surgery.apply_op(DeleteOutputLayer())
    window.surgery.apply_op(AddHead(HeadSpec("size", kind="regression", outputs=1), seed=2))
    s.heads[0].set_target_stats([55.0], [14.0])  # what training sets
    steps = window.undo_stack.count()
    accept_head_dialog(monkeypatch, choose=lambda d: None)
    window.heads_panel.editRequested.emit("size")
    assert window.undo_stack.count() == steps and s.heads[0].target_mean == [55.0]
    accept_head_dialog(monkeypatch, choose=lambda d: d.name_edit.setText("length"))
    window.heads_panel.editRequested.emit("size")
    assert window.undo_stack.count() == steps + 1 and s.heads[0].name == "length"
    assert s.heads[0].target_std == [14.0]  # a rename keeps the weights and the scale they were trained on


def test_the_file_menu_opens_an_image_folder_too(qtbot, window, monkeypatch, default_network, tmp_path):
    from PIL import Image

    for cls, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (tmp_path / "pics" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (24, 24), colour).save(tmp_path / "pics" / cls / f"{i}.png")
    give_session(window, default_network)
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(tmp_path / "pics")))
    assert window.actions.open_data_folder in window.menuBar().actions()[0].menu().actions()
    with qtbot.waitSignal(window.dataLoaded, timeout=LOAD_TIMEOUT):
        window.actions.open_data_folder.trigger()
    assert len(window.data.samples) == 6
    assert [h.labels for h in window.data.heads] == [["blue", "red"]]
