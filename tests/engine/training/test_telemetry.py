"""Live layer telemetry: per block gradient norm and relative weight change, at a bounded rate."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

from engine.training.config import TrainConfig
from engine.training.events import StepEvent
from engine.training.telemetry import Telemetry, TelemetryEvent, telemetry_blocks
from engine.training.trainer import Trainer


@pytest.fixture(autouse=True, scope="module")
def one_thread(one_torch_thread):
    yield


def test_values_are_the_norms_they_claim():
    layer = nn.Linear(3, 2)
    telemetry = Telemetry({"a": list(layer.parameters())}, interval=0.0)
    w0 = torch.cat([p.detach().flatten().clone() for p in layer.parameters()])
    layer(torch.randn(4, 3)).sum().backward()
    with torch.no_grad():
        layer.weight.add_(0.1)
    grad, change = telemetry.sample(1, 1).blocks["a"]
    grads = torch.cat([p.grad.flatten() for p in layer.parameters()])
    w1 = torch.cat([p.detach().flatten() for p in layer.parameters()])
    assert grad == pytest.approx(grads.norm().item(), rel=1e-5)
    assert change == pytest.approx(((w1 - w0).norm() / w0.norm()).item(), rel=1e-5)
    assert telemetry.due()
    telemetry.interval = 60.0
    assert not telemetry.due()


@pytest.mark.slow
def test_training_reports_each_trainable_block(demo_data, small_session):
    data = replace(demo_data, train=demo_data.train[:32], val=demo_data.val[:8])
    session = small_session(data.heads, freeze="up-to:layer2")
    events = []
    config = TrainConfig(epochs=2, batch_size=8, augment=False, num_workers=0, patience=0, telemetry=True)
    Trainer(session, data, config, events.append).run()
    samples = [e for e in events if isinstance(e, TelemetryEvent)]
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert samples and samples[0].step == 1
    assert set(samples[0].blocks) == {"layer3", "layer4", "@heads.shape", "@heads.tags", "@heads.size"}
    for event in samples:
        for grad, change in event.blocks.values():
            assert grad > 0 and change >= 0
    assert samples[-1].blocks["layer4"][1] > samples[0].blocks["layer4"][1] > 0  # the weights move on
    # bounded: at most one sample per step, and (with steps faster than the interval) fewer
    assert len({e.step for e in samples}) == len(samples) <= len(steps)

    events.clear()
    Trainer(session, data, replace(config, telemetry=False), events.append).run()
    assert not any(isinstance(e, TelemetryEvent) for e in events)


def test_blocks_group_by_top_level_layer(resnet_session):
    model = resnet_session.model
    params = [p for n, p in model.named_parameters() if n.startswith("trunk.body.layer1.") or n == "trunk.body.conv1.weight"]
    blocks = telemetry_blocks(model, params)
    assert list(blocks) == ["conv1", "layer1"] and len(blocks["layer1"]) == len(list(model.trunk.body.layer1.parameters()))


def test_blocks_inside_one_container_are_rows_of_their_own():
    """EfficientNet-Lite keeps its blocks in ``features``: each block is a row, not ``features`` whole."""
    from engine.network.loading import load_network
    from engine.surgery.session import Session
    from engine.training.advice import trunk_blocks

    session = Session(load_network("default", random_init=True))
    blocks = [n.path for n in trunk_blocks(session)]
    assert "features.6" in blocks and "features" not in blocks
    model = session.model
    params = [p for n, p in model.named_parameters() if n.startswith(("trunk.body.features.6.", "trunk.body.features.7."))]
    grouped = telemetry_blocks(model, params, blocks)
    assert list(grouped) == ["features.6", "features.7"]
    assert len(grouped["features.6"]) == len(list(model.trunk.body.features[6].parameters()))
