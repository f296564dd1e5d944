"""Measuring the plan's costs on this device: each timing is the median of a few (a shared CPU's spikes do
not make the plan), and the model is as before afterwards."""
from __future__ import annotations

import pytest
import torch

from engine.network.heads import HeadSpec
from engine.training import budget_probe

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_timing_is_the_median_of_its_repeats_so_one_spike_does_not_count(monkeypatch):
    ticks = iter([0.0, 0.001, 1.0, 1.005, 2.0, 2.0012])  # 1 ms, a 5 ms spike (another job), 1.2 ms
    monkeypatch.setattr(budget_probe, "_clock", lambda: next(ticks))
    calls = []
    assert budget_probe.timed(lambda: calls.append(1), repeats=3) == pytest.approx(0.0012)
    assert len(calls) == 3


@pytest.mark.slow
def test_the_probe_measures_every_candidate_stage_and_leaves_the_model_as_it_was(small_session, demo_data):
    session = small_session([HeadSpec("shape", labels=["circle", "square", "star", "triangle"])])
    model = session.model
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.train()
    costs = budget_probe.probe(session, demo_data.train)
    assert costs.trunk > 0 and costs.head_step > 0 and costs.decode > 0 and costs.decode_plain > 0
    assert costs.trunk_blocks == [1, 2, 3]
    assert all(costs.upper_step[k] > 0 and costs.upper_eval[k] > 0 for k in costs.trunk_blocks)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags and model.training
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, state[k])]
    assert not changed, changed[:8]
    assert all(p.grad is None for p in model.parameters())
