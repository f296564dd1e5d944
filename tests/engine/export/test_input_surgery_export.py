"""Input surgeries end to end: a 1-channel model trains on greyscale images, exports a 1-channel ONNX file
and predicts; a 4-channel model reads RGBA and refuses RGB; a new input size reaches the export."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from engine.data.decoding import check_image
from engine.data.image_dataset import ImageDataset
from engine.data.loading import load_data
from engine.errors import GraftError
from engine.export.inference import predict_files
from engine.export.metadata import OnnxPredictor, read_metadata
from engine.export.onnx_export import export_onnx
from engine.network.loading import load_network
from engine.network.preprocess import InputSpec
from engine.surgery.operations import AddHead, DeleteOutputLayer, SetInputChannels, SetInputSize, freeze_preset
from engine.surgery.session import Session
from engine.training.config import TrainConfig
from engine.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def grey_folder(demo_subset) -> Path:
    """Two demo classes, 8 images each, saved as 8-bit greyscale PNGs (as radiographs are)."""
    return demo_subset(8, mode="L")


def session_for(channels: int, size: int = 32) -> Session:
    torch.manual_seed(0)
    s = Session(load_network("mobilenet_v3_small", random_init=True))
    s.model.input_spec = InputSpec(size=size, resize=size)
    s.do(SetInputChannels(channels))
    s.do(DeleteOutputLayer())
    return s


def onnx_input_shape(path: Path) -> list:
    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_param or d.dim_value for d in dims]


def test_a_one_channel_model_trains_on_grey_images_exports_and_predicts(grey_folder, tmp_path):
    data = load_data(grey_folder)
    s = session_for(1)
    for spec in data.heads:
        s.do(AddHead(spec, seed=0))
    s.do(freeze_preset("none"))  # the adapted first convolution trains too
    conv = s.model.trunk.body.features[0][0]
    before = conv.weight.detach().clone()
    result = Trainer(s, data, TrainConfig(epochs=1, batch_size=8, augment=True, device="cpu", num_workers=0)).run()
    assert result.epochs_run == 1 and not torch.equal(conv.weight.detach(), before)
    images = sorted(grey_folder.glob("*/*.png"))[:3]
    report = export_onnx(s, tmp_path / "grey.onnx", images=images)
    assert report.verified and onnx_input_shape(report.path) == ["batch", 1, 32, 32]
    meta = read_metadata(report.path)
    assert meta.input_spec == s.input_spec and meta.input_spec.channel_order == "L"
    assert meta.data["input"]["shape"] == ["batch", 1, 32, 32]
    assert any("greyscale L" in step for step in meta.data["preprocessing"]["steps"])
    ours = predict_files(s, images)
    theirs = OnnxPredictor(report.path).predict_files(images)
    for a, b in zip(ours, theirs):
        assert a["class"].label == b["class"].label
        assert np.allclose(a["class"].values, b["class"].values, atol=1e-4)
    colour = tmp_path / "colour.png"  # a colour photo is read as grey by this model, not refused
    Image.new("RGB", (40, 30), (200, 40, 10)).save(colour)
    assert OnnxPredictor(report.path).predict_files([colour])[0]["class"].label in ("circle", "square")


def test_a_four_channel_model_reads_rgba_and_refuses_rgb(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (36, 36, 4), dtype=np.uint8), "RGBA").save(tmp_path / "data" / cls / f"{i}.png")
    data = load_data(tmp_path / "data")
    s = session_for(4)
    for spec in data.heads:
        s.do(AddHead(spec, seed=0))
    dataset = ImageDataset(data.samples, data.heads, s.input_spec, augment=True)
    image, _ = dataset[0]
    assert image.shape == (4, 32, 32) and torch.isfinite(image).all()
    report = export_onnx(s, tmp_path / "four.onnx", images=[data.samples[0].path])
    assert onnx_input_shape(report.path) == ["batch", 4, 32, 32]
    assert OnnxPredictor(report.path).predict_files([data.samples[0].path])[0]["class"].label in ("a", "b")

    Image.new("RGB", (36, 36), (1, 2, 3)).save(tmp_path / "data" / "a" / "photo.png")
    rgb = load_data(tmp_path / "data")
    with pytest.raises(GraftError, match=r"photo.png has 3 bands \(RGB\), but this model reads 4 channels"):
        ImageDataset(rgb.samples, rgb.heads, s.input_spec)
    with pytest.raises(GraftError, match="photo.png has 3 bands"):
        Trainer(s, rgb, TrainConfig(epochs=1, batch_size=4, device="cpu", num_workers=0)).run()
    with pytest.raises(GraftError, match="photo.png has 3 bands"):
        predict_files(s, [tmp_path / "data" / "a" / "photo.png"])
    preds = list(OnnxPredictor(report.path).predict_each([tmp_path / "data" / "a" / "photo.png"]))
    assert isinstance(preds[0][1], GraftError) and "3 bands" in str(preds[0][1])


def test_multi_band_tiffs_load_as_data(tmp_path):
    import tifffile

    path = tmp_path / "five.tif"
    tifffile.imwrite(path, np.zeros((9, 9, 5), np.uint8), photometric="minisblack", planarconfig="contig")
    assert check_image(path) is None  # Pillow cannot open it; the data check must not skip it
    (tmp_path / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 20)
    assert check_image(tmp_path / "broken.tif")


def test_a_new_input_size_reaches_the_export(tmp_path):
    torch.manual_seed(0)
    s = Session(load_network("mobilenet_v3_small", random_init=True))
    s.model.input_spec = InputSpec(size=32, resize=36)
    s.do(SetInputSize(48))
    assert (s.input_spec.size, s.input_spec.resize) == (48, 54)
    report = export_onnx(s, tmp_path / "big.onnx")
    assert onnx_input_shape(report.path) == ["batch", 3, 48, 48]
    meta = read_metadata(report.path)
    assert (meta.input_spec.size, meta.input_spec.resize) == (48, 54) and meta.data["input"]["shape"][2:] == [48, 48]
