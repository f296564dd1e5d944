"""Pause a run, save it in the project, reopen and resume: the same weights as an uninterrupted run."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.errors import GraftError
from engine.project.project_file import open_project, read_checkpoint, save_project
from engine.surgery.operations import SetLrFactor, freeze_preset
from engine.surgery.session import Session
from engine.training.config import TrainConfig
from engine.training.events import EpochEvent, TrainFinished
from engine.training.trainer import Trainer


@pytest.fixture(autouse=True, scope="module")
def one_thread(one_torch_thread):
    yield


@pytest.fixture
def data(demo_data):
    return replace(demo_data, train=demo_data.train[:40], val=demo_data.val[:12])


@pytest.fixture
def make_session(small_session):
    def make(data, freeze: str) -> Session:
        # dropout in the heads: the random state must carry over
        session = small_session([replace(h, dropout=0.2) for h in data.heads], arch="mobilenet_v3_small",
                                freeze=freeze)
        if freeze == "none":
            session.do(SetLrFactor({"features.0": 0.1}))
        return session
    return make


def same_weights(a: Session, b: Session) -> bool:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("freeze, lr", [("heads-only", 3e-2), ("none", 1e-2)])
@pytest.mark.slow
def test_resumed_run_ends_at_the_uninterrupted_runs_weights(data, make_session, tmp_path, freeze, lr):
    """Cached features (frozen trunk) and images (the trunk trains, no workers, no augmentation). A high
    rate makes later epochs worse, so the best-epoch restore at the end is part of what must agree."""
    config = TrainConfig(epochs=3, batch_size=16, lr_heads=lr, lr_trunk=lr, warmup_epochs=0.5, augment=False,
                         num_workers=0, patience=0)
    whole = make_session(data, freeze)
    expected = Trainer(whole, data, config).run()

    paused_session = make_session(data, freeze)
    events = []
    paused = Trainer(paused_session, data, replace(config, pause_after=1), events.append).run()
    assert paused.reason == "paused" and paused.epochs_run == 1 and paused.checkpoint is not None
    assert "Paused after epoch 1 of 3" in paused.message
    assert [e.reason for e in events if isinstance(e, TrainFinished)] == ["paused"]
    path = save_project(paused_session, tmp_path / "paused.graft", checkpoint=paused.checkpoint)

    session = open_project(path)
    checkpoint = read_checkpoint(path)
    assert checkpoint.epochs_run == 1 and checkpoint.optimizer["state"]
    epochs = []
    resumed = Trainer(session, data, config, lambda e: epochs.append(e.epoch) if isinstance(e, EpochEvent) else None,
                      resume=checkpoint).run()
    assert epochs == [2, 3]
    assert resumed.reason == "completed" and resumed.epochs_run == 3 and resumed.steps == expected.steps
    assert resumed.best_epoch == expected.best_epoch
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in expected.history]
    assert same_weights(session, whole)
    # saving without a checkpoint drops it
    assert read_checkpoint(save_project(session, tmp_path / "done.graft")) is None


def test_pause_from_the_callback_and_stop_still_ends(data, make_session):
    session = make_session(data, "heads-only")
    trainer = None

    def on_event(event):
        if isinstance(event, EpochEvent) and event.epoch == 2:
            trainer.pause()

    trainer = Trainer(session, data, TrainConfig(epochs=5, batch_size=16, augment=False, patience=0), on_event)
    result = trainer.run()
    assert result.reason == "paused" and result.epochs_run == 2 and result.checkpoint.done_steps == result.steps

    stopping = Trainer(make_session(data, "heads-only"), data, TrainConfig(epochs=5, batch_size=16, augment=False))
    stopping.pause()
    stopping.stop()
    result = stopping.run()
    assert result.reason == "stopped" and result.checkpoint is None


def test_resume_refuses_other_settings_or_data(data, make_session, tmp_path):
    config = TrainConfig(epochs=3, batch_size=16, augment=False, patience=0)
    session = make_session(data, "heads-only")
    paused = Trainer(session, data, replace(config, pause_after=1)).run()
    checkpoint = paused.checkpoint
    with pytest.raises(GraftError, match="batch size 16, not 8"):
        Trainer(session, data, replace(config, batch_size=8), resume=checkpoint).run()
    with pytest.raises(GraftError, match="40 training and 12 validation images then, 39"):
        Trainer(session, replace(data, train=data.train[:39]), config, resume=checkpoint).run()
    session.do(freeze_preset("none"))
    with pytest.raises(GraftError, match="freeze settings differ"):
        Trainer(session, data, config, resume=checkpoint).run()
    session.history.undo()
    done = Trainer(session, data, config, resume=checkpoint).run()
    with pytest.raises(GraftError, match="already finished"):
        Trainer(session, data, config, resume=replace(checkpoint, epochs_run=3)).run()
    assert done.reason == "completed"
