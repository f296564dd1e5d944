"""Large data: the quick check up front, the full decode when an image is first read, and bad files found
then left out and reported (engine.data.decoding.FULL_CHECK_LIMIT lowered to a handful of images)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data import decoding
from engine.data.decoding import quick_check
from engine.data.image_dataset import UNREADABLE, ImageDataset
from engine.data.loading import load_data
from engine.network.heads import HeadSpec
from engine.network.loading import load_network
from engine.network.preprocess import InputSpec
from engine.surgery.operations import AddHead, DeleteOutputLayer, freeze_preset
from engine.surgery.session import Session
from engine.training.config import TrainConfig
from engine.training.events import MessageEvent
from engine.training.trainer import Trainer


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(6):
            Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(tmp_path / c / f"{i}.jpg")
    good = (tmp_path / "a" / "0.jpg").read_bytes()
    (tmp_path / "a" / "truncated.jpg").write_bytes(good[:len(good) // 2])  # starts like a JPEG, does not decode
    (tmp_path / "b" / "notes.jpg").write_text("not an image")
    (tmp_path / "b" / "empty.png").write_bytes(b"")
    (tmp_path / "b" / "scan.dat").write_bytes(good)  # a JPEG by its bytes, not by its name
    (tmp_path / "b" / "notes.txt").write_text("not an image")
    return tmp_path


def test_quick_check_trusts_an_image_name_and_reads_the_start_of_other_files(folder):
    assert quick_check(folder / "a" / "1.jpg") is None
    assert quick_check(folder / "a" / "truncated.jpg") is None  # left for the full decode
    assert quick_check(folder / "b" / "notes.jpg") is None  # named like an image: its bytes are read later
    assert quick_check(folder / "b" / "empty.png") == "empty file"
    assert quick_check(folder / "missing.jpg") == "file not found"
    assert quick_check(folder / "a") == "a folder, not an image"
    assert quick_check(folder / "b" / "scan.dat") is None  # its first bytes say JPEG
    assert quick_check(folder / "b" / "notes.txt") == "not an image file"


def test_small_data_is_decoded_up_front(folder):
    data = load_data(folder)
    skipped = {p.rsplit("/", 1)[-1]: r for p, r in data.skipped}
    assert set(skipped) == {"truncated.jpg", "notes.jpg", "empty.png", "notes.txt"}
    assert all(s.checked for s in data.samples) and not data.notes


def test_large_data_is_quick_checked_and_a_bad_image_is_found_when_read(folder, monkeypatch):
    monkeypatch.setattr(decoding, "FULL_CHECK_LIMIT", 4)
    data = load_data(folder, val_fraction=0.25)
    skipped = {p.rsplit("/", 1)[-1] for p, _ in data.skipped}
    assert skipped == {"empty.png", "notes.txt"}  # what the quick check sees
    assert len(data.samples) == 15 and not any(s.checked for s in data.samples)
    assert "decoded fully when first read" in data.notes[0]
    samples = data.samples
    spec = InputSpec(size=16, resize=16)
    dataset = ImageDataset(samples, data.heads, spec)
    for name in ("truncated.jpg", "notes.jpg"):  # found when read
        bad = next(i for i, s in enumerate(samples) if s.path.name == name)
        image, targets = dataset[bad]
        assert image.shape == (3, 16, 16) and not image.any()
        assert int(targets["class"]) == -1 and int(targets[UNREADABLE]) == bad  # no label: it teaches nothing
    scan = next(i for i, s in enumerate(samples) if s.path.name == "scan.dat")
    assert dataset[scan][0].any() and int(dataset[scan][1][UNREADABLE]) == -1
    good, targets = dataset[(bad + 1) % len(samples)]
    assert good.any() and int(targets[UNREADABLE]) == -1 and int(targets["class"]) >= 0


@pytest.mark.parametrize("freeze", ["heads-only", "none"])
def test_training_leaves_out_and_reports_an_image_that_does_not_decode(folder, monkeypatch, one_torch_thread, freeze):
    monkeypatch.setattr(decoding, "FULL_CHECK_LIMIT", 4)
    monkeypatch.setenv("GRAFT_ONNXRUNTIME", "off")
    data = load_data(folder, val_fraction=0.25)
    torch.manual_seed(0)
    session = Session(load_network("resnet18", random_init=True))
    session.model.input_spec = InputSpec(size=16, resize=16)
    session.do(DeleteOutputLayer())
    session.do(AddHead(HeadSpec("class", "single", labels=["a", "b"]), seed=0))
    session.do(freeze_preset(freeze))
    events = []
    result = Trainer(session, data, TrainConfig(epochs=2, batch_size=4, num_workers=0, augment=False),
                     events.append).run()
    assert result.reason == "completed" and result.epochs_run == 2
    warnings = [e.text for e in events if isinstance(e, MessageEvent) and e.level == "warning"]
    reported = [t for t in warnings if "did not decode" in t]
    # each bad file once, however often it is read
    assert len(reported) == 2 and sum("truncated.jpg" in t for t in reported) == 1
    assert sum("notes.jpg: not an image file" in t for t in reported) == 1
    assert any(p.endswith("truncated.jpg") and "truncated" in r for p, r in data.skipped)
    assert any(p.endswith("notes.jpg") and r == "not an image file" for p, r in data.skipped)
