"""Dense heads trained with a classifier in the trainer (multi-task, masked losses), evaluated, saved and reopened."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data.head_args import parse_head_arg
from engine.data.loading import load_data
from engine.network.loading import load_network
from engine.network.preprocess import InputSpec
from engine.surgery.operations import AddHead, DeleteOutputLayer, freeze_preset
from engine.surgery.session import Session
from engine.training.config import TrainConfig
from engine.training.evaluation import evaluate
from engine.training.trainer import Trainer


def _shapes(folder, n=24):
    """Squares and discs on grey: class, mask and box of each."""
    rng = np.random.default_rng(0)
    (folder / "masks").mkdir()
    rows = ["image,kind,mask,boxes"]
    for i in range(n):
        kind = "ab"[i % 2]
        a = np.full((40, 40, 3), 90, np.uint8)
        m = np.zeros((40, 40), np.uint8)
        x, y, r = (int(v) for v in rng.integers(8, 24, 3)) if False else (int(rng.integers(6, 22)), int(rng.integers(6, 22)), 8)
        yy, xx = np.mgrid[0:40, 0:40]
        inside = (np.abs(xx - x - r) < r) & (np.abs(yy - y - r) < r) if kind == "a" else (xx - x - r) ** 2 + (yy - y - r) ** 2 < r * r
        a[inside] = (220, 40, 40) if kind == "a" else (40, 40, 220)
        m[inside] = 1 + i % 2
        Image.fromarray(a).save(folder / f"{i}.png")
        Image.fromarray(m).save(folder / "masks" / f"{i}.png")
        ys, xs = np.nonzero(inside)
        box = json.dumps([[int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1, kind]])
        rows.append(f"{i}.png,{kind},masks/{i}.png,\"{box.replace(chr(34), chr(34) * 2)}\"" if i % 5 else f"{i}.png,{kind},,")
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return folder / "labels.csv"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_torch_thread):
    folder = tmp_path_factory.mktemp("shapes")
    heads = [parse_head_arg("kind:single"), parse_head_arg("seg:segment:mask"), parse_head_arg("box:detect:boxes")]
    data = load_data(_shapes(folder), heads)
    torch.manual_seed(0)
    session = Session(load_network("resnet18", random_init=True))
    session.model.input_spec = InputSpec(size=32, resize=32)
    session.do(DeleteOutputLayer())
    for h in data.heads:
        session.do(AddHead(h, seed=0))
    session.do(freeze_preset("none"))
    events = []
    result = Trainer(session, data, TrainConfig(epochs=2, batch_size=8, lr_heads=3e-3, patience=0),
                     events.append).run()
    return session, data, result, events


@pytest.mark.slow
def test_three_kinds_train_together(trained):
    session, data, result, events = trained
    assert session.model.heads["seg"].layers == ["layer2", "layer3", "layer4"]  # the default layers at 32 px
    assert result.reason == "completed" and not result.cached_features
    last = result.history[-1]
    assert set(last["train_head_losses"]) == {"kind", "seg", "box"}
    assert all(math.isfinite(v) for v in last["train_head_losses"].values())
    assert {"accuracy"} <= set(last["metrics"]["kind"]) and "miou" in last["metrics"]["seg"]
    assert "map_50" in last["metrics"]["box"] and "map" in last["metrics"]["box"]
    assert not result.boundary_cached


def test_evaluation_report(trained):
    session, data, _, _ = trained
    report = evaluate(session, data, split="val")
    text = report.format()
    assert "mIoU" in text and "mAP@0.5" in text
    seg, box = report.outputs["seg"], report.outputs["box"]
    assert seg.predicted.shape == (len(report.images), 32, 32) and seg.ignore_index == 255
    assert len(box.predicted) == len(report.images) and box.targets.shape[1:] == (100, 5)
    labelled = [i for i, p in enumerate(report.images) if not p.endswith(("0.png", "5.png"))]
    assert all(not math.isnan(seg.values[i]) for i in labelled)
    with pytest.raises(Exception, match="Test-time augmentation"):
        evaluate(session, data, split="val", tta="flip")


def test_saved_and_reopened(trained, tmp_path):
    from engine.project.project_file import open_project, save_project

    session, data, _, _ = trained
    save_project(session, tmp_path / "p.graft")
    again = open_project(tmp_path / "p.graft")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, b = session.model.eval()(x), again.model.eval()(x)
    for name in ("kind", "seg", "box"):
        torch.testing.assert_close(a[name], b[name])
    assert again.model.head_specs["box"].kind == "detect" and again.model.head_specs["box"].layers == ["layer2", "layer3", "layer4"]


def test_frozen_trunk_bypasses_the_feature_cache(trained):
    """A frozen trunk would train the heads on cached pooled features: dense heads read maps, so images run."""
    from engine.training.events import MessageEvent

    session, data, _, _ = trained
    session.do(freeze_preset("heads-only"))
    before = {k: v.clone() for k, v in session.model.trunk.state_dict().items()}
    events = []
    result = Trainer(session, data, TrainConfig(epochs=1, batch_size=8, patience=0), events.append).run()
    assert not result.cached_features and result.trunk_backend == "pytorch"
    assert any(isinstance(e, MessageEvent) and "dense heads" in e.text for e in events)
    after = session.model.trunk.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the trunk did not change
    assert math.isfinite(result.history[-1]["train_loss"])
