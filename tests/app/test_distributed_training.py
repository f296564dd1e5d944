"""The window's "All N GPUs": the device choice, the JSON-line events, and a run in child processes
(two gloo CPU processes here) that streams its events back, stops on Stop and hands back its weights."""
from __future__ import annotations

import io
import sys

import pytest
import torch

from app.distributed import DistributedTrainWorker, event_from_json
from app.workers import start_worker
from engine.training.config import TrainConfig
from engine.training.events import EpochEvent, MessageEvent, StepEvent, TrainStarted
from widgets import training_panel
from widgets.training_panel import TrainingPanel


def test_all_gpus_is_offered_only_with_several(qtbot, monkeypatch):
    monkeypatch.setattr(training_panel, "_gpu_count", lambda: 1)
    one = TrainingPanel(cuda_available=True, mps_available=False)
    qtbot.addWidget(one)
    assert one.device_combo.findData(training_panel.ALL_GPUS) < 0
    assert one.config().devices == 1
    monkeypatch.setattr(training_panel, "_gpu_count", lambda: 4)
    panel = TrainingPanel(cuda_available=True, mps_available=False)
    qtbot.addWidget(panel)
    index = panel.device_combo.findData(training_panel.ALL_GPUS)
    assert index >= 0 and panel.device_combo.itemText(index) == "All 4 GPUs"
    panel.device_combo.setCurrentIndex(index)
    config = panel.config()
    assert (config.device, config.devices) == ("cuda", 4)
    panel.device_combo.setCurrentIndex(panel.device_combo.findData("cpu"))
    assert (panel.config().device, panel.config().devices) == ("cpu", 1)
    panel.set_config(config)
    assert panel.device_combo.currentData() == training_panel.ALL_GPUS


def test_a_run_on_all_gpus_offers_stop_not_pause(qtbot, monkeypatch):
    """Its processes cannot keep a paused run's state: Pause is disabled and says why; on one GPU it is not."""
    monkeypatch.setattr(training_panel, "_gpu_count", lambda: 2)
    panel = TrainingPanel(cuda_available=True, mps_available=False)
    qtbot.addWidget(panel)
    panel.device_combo.setCurrentIndex(panel.device_combo.findData(training_panel.ALL_GPUS))
    panel.set_running(True)
    assert panel.stop_button.isEnabled() and not panel.pause_button.isEnabled()
    assert "cannot pause" in panel.pause_button.toolTip()
    panel.set_running(False)
    panel.device_combo.setCurrentIndex(panel.device_combo.findData("cuda"))
    panel.set_running(True)
    assert panel.pause_button.isEnabled() and "Resume continues" in panel.pause_button.toolTip()


def test_the_child_command_line_carries_the_windows_settings(tmp_path):
    """What the window sets reaches the processes: the CLI's parser reads back each setting."""
    from types import SimpleNamespace

    from app.distributed import command_line
    from commands.cli import build_parser

    config = TrainConfig(epochs=7, batch_size=24, lr_heads=3e-3, lr_trunk=2e-4, augment=False, patience=3,
                         unfreeze_every=2, augment_views=4, telemetry=True, devices=2, num_workers=1)
    data = SimpleNamespace(path=tmp_path / "labels.csv", seed=5, val_fraction=0.25)
    args = build_parser().parse_args(command_line(config, data, tmp_path / "p.graft", tmp_path / "out.graft"))
    assert (args.epochs, args.batch_size, args.lr_heads, args.lr_trunk) == (7, 24, 3e-3, 2e-4)
    assert (args.augment, args.patience, args.unfreeze_every, args.augment_views) == ("off", 3, 2, 4)
    assert args.telemetry and args.devices == 2 and args.events == "jsonl" and args.workers == 1
    assert (args.seed, args.val_fraction, args.data) == (5, 0.25, str(tmp_path / "labels.csv"))
    plain = TrainConfig(devices=2)
    assert not build_parser().parse_args(command_line(plain, data, tmp_path / "p.graft", tmp_path / "o.graft")).telemetry


def test_json_lines_come_back_as_the_trainers_events():
    from commands.train import JsonLines

    stream = io.StringIO()
    lines = JsonLines(stream)
    sent = [TrainStarted(2, 3, 6, "cpu", True, 13, 3, ["class"], "CPU (1 threads, fp32)"),
            StepEvent(1, 1, 0.7, {"class": 0.7}, 1e-3), MessageEvent("hello", "warning"),
            EpochEvent(1, 0.7, 0.6, {"class": 0.7}, {"class": 0.6}, {"class": {"accuracy": 0.5}}, True, 0.1)]
    for event in sent:
        lines(event)
    lines.write("TrainResult", {"reason": "completed", "epochs_run": 1})
    back = [event_from_json(line) for line in stream.getvalue().splitlines()]
    assert back[:-1] == sent
    assert back[-1] == ("TrainResult", {"reason": "completed", "epochs_run": 1})
    assert event_from_json("Model: resnet18") is None and event_from_json("{not json") is None


@pytest.fixture
def session_and_data(tiny_folder):
    from engine.data.loading import load_data
    from engine.network.loading import load_network
    from engine.network.preprocess import InputSpec
    from engine.surgery.operations import AddHead, DeleteOutputLayer, freeze_preset
    from engine.surgery.session import Session

    data = load_data(tiny_folder)
    torch.manual_seed(0)
    session = Session(load_network("resnet18", random_init=True))
    session.model.input_spec = InputSpec(size=32, resize=32)
    session.do(DeleteOutputLayer())
    session.do(AddHead(data.heads[0], seed=0))
    session.do(freeze_preset("heads-only"))
    return session, data


def heads_of(session) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in session.model.heads.state_dict().items()}


def test_a_failed_run_says_why_and_keeps_the_weights(qtbot, session_and_data):
    session, data = session_and_data
    before = heads_of(session)
    worker = DistributedTrainWorker(session, data, TrainConfig(epochs=1, batch_size=4, devices=2))
    # the launcher's last word, as when a process died
    worker.launcher = [sys.executable, "-c", "import sys; print('graft: error: Training process 1 of 2 ended "
                       "unexpectedly (exit code 3); the run was stopped and nothing was saved.', file=sys.stderr); "
                       "sys.exit(1)"]
    errors = []
    job = start_worker(worker, name="train", errored=lambda message, details: errors.append(message))
    qtbot.waitUntil(lambda: job.ended, timeout=20000)
    assert errors == ["Training process 1 of 2 ended unexpectedly (exit code 3); the run was stopped and nothing "
                      "was saved. The session's weights are as they were."]
    assert all(torch.equal(v, heads_of(session)[k]) for k, v in before.items())


@pytest.mark.spawn
@pytest.mark.slow
def test_a_run_in_two_processes_streams_its_events_stops_and_hands_back_its_weights(qtbot, session_and_data):
    session, data = session_and_data
    before = heads_of(session)
    config = TrainConfig(epochs=400, batch_size=4, devices=2, patience=None)
    worker = DistributedTrainWorker(session, data, config, extra_args=["--device", "cpu"])
    batches, results, errors = [], [], []

    def progress(batch) -> None:
        batches.append(batch)
        if batch["epochs"] and not worker.stop_requested:
            worker.request_stop()  # Stop: every process stops after the same batch, process 0 saves

    job = start_worker(worker, name="train", progress=progress, finished=results.append,
                       errored=lambda message, details: errors.append(message))
    qtbot.waitUntil(lambda: job.ended, timeout=120000)
    assert not errors, errors
    started = [b["started"] for b in batches if b["started"]]
    assert len(started) == 1 and started[0]["cached_features"] and started[0]["n_train"] == len(data.train)
    assert any(b["steps"] for b in batches) and any(b["progress"] for b in batches)
    epochs = [e["epoch"] for b in batches for e in b["epochs"]]
    assert epochs and epochs == sorted(epochs)
    result = results[0]
    assert result["reason"] == "stopped" and 1 <= result["epochs_run"] < 400
    after = heads_of(session)
    assert any(not torch.equal(v, after[k]) for k, v in before.items())  # the trained weights came back
