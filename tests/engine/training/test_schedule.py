"""Learning-rate factors in training, the discriminative-rates preset and gradual unfreezing."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from engine.errors import GraftError
from engine.network.heads import HeadSpec
from engine.network.preprocess import InputSpec
from engine.surgery.operations import AddHead, DeleteOutputLayer, SetLrFactor
from engine.surgery.session import Session
from engine.training.config import TrainConfig
from engine.training.events import EpochEvent, MessageEvent
from engine.training.schedule import block_groups, discriminative_factors, discriminative_rates
from engine.training.trainer import Trainer


@pytest.fixture(autouse=True, scope="module")
def one_thread(one_torch_thread):
    yield


@pytest.fixture
def demo(demo_data):
    return demo_data


def test_factors_scale_each_layers_step(demo, small_session):
    """One AdamW step moves each weight by about its learning rate (the first step's update is
    lr * g / |g|): the measured steps stand in the ratios the factors set, and factor 0 does not move."""
    data = replace(demo, train=demo.train[:8], val=[])
    session = small_session(data.heads[:1], freeze="none")
    session.do(SetLrFactor({"layer1": 0.1, "layer3": 0.0, "layer4": 0.5, "@heads.shape": 3.0}))
    before = {n: p.detach().clone() for n, p in session.model.named_parameters()}
    config = TrainConfig(epochs=1, batch_size=8, lr_heads=1e-3, lr_trunk=1e-2, weight_decay=0.0, warmup_epochs=0,
                         augment=False, num_workers=0, patience=0)
    trainer = Trainer(session, data, config)
    trainer.run()
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert sorted(groups) == ["heads x3", "trunk", "trunk x0.1", "trunk x0.5"]
    assert groups["trunk x0.1"]["initial_lr"] == pytest.approx(1e-3)
    assert groups["heads x3"]["initial_lr"] == pytest.approx(3e-3)

    def step(prefix: str) -> float:  # the typical move of the weights that had a gradient
        moved = torch.cat([(p.detach() - before[n]).abs().flatten() for n, p in session.model.named_parameters()
                           if n.startswith(prefix) and n.endswith("weight")])
        return moved[moved > 0].median().item() if (moved > 0).any() else 0.0

    assert step("trunk.body.layer2.") == pytest.approx(1e-2, rel=0.05)
    assert step("trunk.body.layer1.") == pytest.approx(1e-3, rel=0.05)
    assert step("trunk.body.layer4.") == pytest.approx(5e-3, rel=0.05)
    assert step("heads.shape.") == pytest.approx(3e-3, rel=0.05)
    assert step("trunk.body.layer3.") == 0.0


def test_discriminative_preset_rises_from_low_to_one(resnet_session):
    s = resnet_session
    s.do(DeleteOutputLayer())
    s.do(AddHead(HeadSpec("shape", "single", labels=["a", "b"]), seed=0))
    assert [g.block for g in block_groups(s)] == ["layer1", "layer2", "layer3", "layer4"]
    s.do(SetLrFactor({"layer2.0": 7.0, "@heads": 2.0}))
    factors = discriminative_factors(s, 0.01)
    assert factors["layer1"] == factors["conv1"] == factors["bn1"] == pytest.approx(0.01)  # the stem goes with the bottom
    assert [factors[f"layer{i}"] for i in range(1, 5)] == pytest.approx([0.01, 0.01 ** (2 / 3), 0.01 ** (1 / 3), 1], rel=1e-5)
    op = s.do(discriminative_rates(s, 0.01))
    assert "Discriminative" in op.text
    assert "layer2.0" not in s.model.lr_factors and s.model.lr_factors["@heads"] == 2.0  # the trunk's replaced
    assert s.tree.node("layer3.1.conv1").lr_factor == pytest.approx(0.01 ** (1 / 3), rel=1e-5)
    s.history.undo()
    assert s.model.lr_factors == {"layer2.0": 7.0, "@heads": 2.0}
    with pytest.raises(GraftError, match="above 0 and at most 1"):
        discriminative_factors(s, 0)


def test_gradual_unfreezing_at_the_planned_epochs(demo, small_session):
    data = replace(demo, train=demo.train[:16], val=demo.val[:8])
    session = small_session(data.heads[:1], freeze="up-to:layer1")  # a freeze state of its own, put back after
    session.do(SetLrFactor({"layer2": 0.0}))  # factor 0: never trains, whatever the schedule
    before = {n: p.requires_grad for n, p in session.model.named_parameters()}
    trained: dict[int, set[str]] = {}
    messages = []

    def on_event(event):
        if isinstance(event, EpochEvent):  # which top-level blocks trained in this epoch
            trained[event.epoch] = {n.split(".")[2] for n, p in session.model.named_parameters()
                                    if n.startswith("trunk.") and p.requires_grad}
        elif isinstance(event, MessageEvent):
            messages.append(event.text)

    config = TrainConfig(epochs=7, batch_size=8, augment=False, num_workers=0, patience=0, unfreeze_every=2)
    result = Trainer(session, data, config, on_event).run()
    assert result.reason == "completed" and not result.cached_features
    assert trained == {1: set(), 2: set(), 3: {"layer4"}, 4: {"layer4"}, 5: {"layer3", "layer4"},
                       6: {"layer3", "layer4"}, 7: {"layer1", "bn1", "conv1", "layer3", "layer4"}}
    assert any("Gradual unfreezing" in m and "put back after the run" in m for m in messages)
    assert "Epoch 3: layer4 starts training (gradual unfreezing)." in messages
    assert {n: p.requires_grad for n, p in session.model.named_parameters()} == before


def test_unfreezing_needs_blocks(demo):
    from torch import nn

    from engine.network.loading import LoadedNetwork, ModelSource

    torch.manual_seed(0)
    net = LoadedNetwork(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                        InputSpec(size=32, resize=32), ModelSource("file", "tiny.pt"))
    session = Session(net)
    session.do(AddHead(demo.heads[0], seed=0))
    with pytest.raises(GraftError, match="no separate blocks"):
        Trainer(session, demo, TrainConfig(epochs=2, unfreeze_every=1)).run()
    with pytest.raises(GraftError, match="Unfreeze every must be a whole number"):
        Trainer(session, demo, TrainConfig(epochs=2, unfreeze_every=0)).run()
