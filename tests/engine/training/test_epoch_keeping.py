"""What a run hands out for keeping its work while it goes on: the best weights so far (the window's
recovery file) and a checkpoint after each finished epoch (``main.py train --out``)."""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from engine.training.config import TrainConfig
from engine.network.heads import HeadSpec
from engine.training.events import EpochEvent
from engine.training.run_state import RunState
from engine.training.trainer import Trainer


@pytest.fixture(autouse=True, scope="module")
def one_thread(one_torch_thread):
    yield


@pytest.fixture
def data(demo_data):
    return replace(demo_data, train=demo_data.train[:32], val=demo_data.val[:8])


@pytest.mark.parametrize("freeze", ["heads-only", "none"])
@pytest.mark.slow
def test_best_weights_are_model_keyed_copies_of_the_best_epoch(data, small_session, freeze):
    session = small_session(data.heads, freeze=freeze)
    model_keys = set(session.model.state_dict())
    kept, trainer = {}, None

    def on_event(event):
        if isinstance(event, EpochEvent) and event.best:
            kept[event.epoch] = trainer.best_weights()

    config = TrainConfig(epochs=3, batch_size=16, lr_heads=3e-2, lr_trunk=1e-2, augment=False, num_workers=0,
                         patience=0)
    trainer = Trainer(session, data, config, on_event)
    result = trainer.run()
    assert kept and result.best_epoch == max(kept)
    weights = kept[result.best_epoch]
    assert set(weights) <= model_keys
    heads = {k for k in model_keys if k.startswith("heads.")}
    assert set(weights) == (heads if freeze == "heads-only" else model_keys)
    final = session.model.state_dict()  # the run ends restoring the best epoch's weights
    assert all(torch.equal(final[k], v) for k, v in weights.items())
    assert all(v.device.type == "cpu" for v in weights.values())


def test_a_checkpoint_after_every_epoch_the_run_goes_on_from(data, small_session):
    session = small_session(data.heads)
    seen = []
    config = TrainConfig(epochs=4, batch_size=16, augment=False, num_workers=0, patience=0)
    result = Trainer(session, data, config, on_checkpoint=seen.append).run()
    assert result.reason == "completed" and result.checkpoint is None
    assert [c.epochs_run for c in seen] == [1, 2, 3]
    assert [len(c.history) for c in seen] == [1, 2, 3] and seen[-1].optimizer["state"]
    # one of them resumes like a pause there would: to the same end
    resumed_session = small_session(data.heads)
    early = Trainer(resumed_session, data, replace(config, pause_after=2)).run()
    def untimed(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]

    assert early.checkpoint.done_steps == seen[1].done_steps
    assert untimed(early.checkpoint.history) == untimed(seen[1].history)
    assert early.checkpoint.best_epoch == seen[1].best_epoch


class Keeper(RunState):
    """RunState's epoch keeping alone, fed injected validation results."""

    def __init__(self) -> None:
        self.heads = [HeadSpec("kind", labels=["a", "b"])]
        self.session = SimpleNamespace(model=SimpleNamespace(heads=torch.nn.Linear(2, 2)))
        self.trunk_frozen = True
        self.best_val_loss = self.best_score = self.best_epoch = None
        self._bad_epochs = self.done_steps = 0

    def epochs(self, results):
        kept = []
        for epoch, (loss, acc) in enumerate(results, 1):
            self.done_steps += 1
            self.session.model.heads.weight.data.fill_(epoch)
            if self._keep_best(epoch, loss, True, {"kind": {"accuracy": acc}}):
                kept.append(epoch)
        return kept


def test_the_best_epoch_is_the_best_validation_accuracy_not_the_lowest_loss():
    # the quiet 10-minute run's trunk stage: loss lowest at epoch 2 (97.1 %), accuracy 99.0 % by epoch 10
    keeper = Keeper()
    kept = keeper.epochs([(0.0950, 0.960), (0.0913, 0.971), (0.0950, 0.980), (0.1000, 0.990), (0.0990, 0.990),
                          (0.1100, 0.985)])
    assert kept == [1, 2, 3, 4, 5]  # epoch 5 ties epoch 4's accuracy at a lower loss
    assert keeper.best_epoch == 5 and keeper.best_val_loss == 0.0990 and keeper.best_score == pytest.approx(0.990)
    assert torch.all(keeper.best_weights()["heads.weight"] == 5)
    assert keeper._bad_epochs == 1  # early stopping counts the epochs without a better accuracy


def test_early_stopping_waits_while_the_accuracy_climbs_though_the_loss_rises():
    keeper = Keeper()
    keeper.epochs([(0.09 + 0.01 * e, 0.95 + 0.005 * e) for e in range(6)])
    assert keeper._bad_epochs == 0 and keeper.best_epoch == 6
    keeper.epochs([(0.05, 0.90), (0.04, 0.91)])  # lower loss, lower accuracy: no better
    assert keeper._bad_epochs == 2 and keeper.best_epoch == 6
