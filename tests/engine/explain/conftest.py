"""Shared models: ``trained``, a head that has learned where a shape is (the bundled, pretrained
EfficientNet-Lite0, frozen, with a star-vs-circle head trained for seconds on shapes drawn anywhere on
plain canvases); ``evaluated``, a random-weights multi-task model evaluated on demo images with blank cells."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from explain_shapes import CROP, draw

from engine.data.loading import load_data
from engine.data.samples import DataSource
from engine.network.loading import load_network
from engine.network.preprocess import InputSpec
from engine.surgery.operations import AddHead, DeleteOutputLayer, freeze_preset
from engine.surgery.session import Session
from engine.training.config import TrainConfig
from engine.training.evaluation import evaluate
from engine.training.trainer import Trainer


@dataclass
class Trained:
    session: Session
    data: DataSource
    folder: Path


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Trained:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        folder = tmp_path_factory.mktemp("shapes")
        rng = np.random.default_rng(0)
        for shape in ("star", "circle"):
            (folder / shape).mkdir()
            for i in range(16):
                x, y = rng.uniform(CROP[0] + 40, CROP[0] + 184), rng.uniform(CROP[1] + 40, CROP[1] + 184)
                colour = tuple(int(c) for c in rng.integers(20, 235, 3))
                draw(shape, (x, y), radius=float(rng.uniform(26, 40)), colour=colour, grey=int(rng.integers(90, 200)),
                     angle=float(rng.uniform(0, 6.3))).save(folder / shape / f"{shape}_{i:02d}.png")
        data = load_data(folder, val_fraction=0.25, seed=0)
        torch.manual_seed(0)
        session = Session(load_network("default"))
        session.do(DeleteOutputLayer())
        for spec in data.heads:
            session.do(AddHead(spec, seed=0))
        session.do(freeze_preset("heads-only"))
        config = TrainConfig(epochs=40, batch_size=8, lr_heads=3e-3, patience=0, device="cpu", num_workers=0,
                             augment=False)
        result = Trainer(session, data, config).run()
        assert result.best_epoch is not None
    finally:
        torch.set_num_threads(before)  # the tests take one thread each with one_torch_thread
    return Trained(session, data, folder)


@pytest.fixture(scope="session")
def demo(demo_manifest):
    csv_path = demo_manifest()
    data = load_data(csv_path)
    return csv_path, replace(data, train=data.train[:30], val=data.val[:30])


@pytest.fixture(scope="session")
def evaluated(demo):
    """A random-weights multi-task model (many mistakes) evaluated on 60 demo images with blank cells."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _, data = demo
        torch.manual_seed(0)
        session = Session(load_network("mobilenet_v3_small", random_init=True))
        session.model.input_spec = InputSpec(size=64, resize=64)
        session.do(DeleteOutputLayer())
        for spec in data.heads:
            session.do(AddHead(spec, seed=1))
        session.do(freeze_preset("heads-only"))
        report = evaluate(session, data, batch_size=16, num_workers=0)
    finally:
        torch.set_num_threads(before)
    return session, data, report
