"""Shared by the training tests: the demo data and small random sessions at a tiny input size."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch

from engine.data.loading import load_data
from engine.data.samples import DataSource
from engine.network.heads import HeadSpec
from engine.network.loading import load_network
from engine.network.preprocess import InputSpec
from engine.surgery.operations import AddHead, DeleteOutputLayer, freeze_preset
from engine.surgery.session import Session


@pytest.fixture(scope="module")
def demo_data(demo_manifest) -> DataSource:
    return load_data(demo_manifest())


@pytest.fixture
def small_session() -> Callable[..., Session]:
    """``small_session(heads, arch="resnet18", freeze="heads-only", size=32)``: random weights, output
    layer deleted, the heads added (seed 0), frozen as asked."""

    def make(heads: Sequence[HeadSpec], arch: str = "resnet18", freeze: str = "heads-only", size: int = 32) -> Session:
        torch.manual_seed(0)
        session = Session(load_network(arch, random_init=True))
        session.model.input_spec = InputSpec(size=size, resize=size)
        session.do(DeleteOutputLayer())
        for h in heads:
            session.do(AddHead(h, seed=0))
        session.do(freeze_preset(freeze))
        return session

    return make
