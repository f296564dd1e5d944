"""Shared engine fixtures: small torchvision networks with random weights (fast, offline)."""
from __future__ import annotations

import pytest
import torch

from engine.loading import load_network
from engine.session import Session


@pytest.fixture
def resnet_session() -> Session:
    torch.manual_seed(0)
    return Session(load_network("resnet18", random_init=True))


@pytest.fixture
def mobilenet_session() -> Session:
    torch.manual_seed(0)
    return Session(load_network("mobilenet_v3_small", random_init=True))
