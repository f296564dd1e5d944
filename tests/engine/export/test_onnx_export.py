"""ONNX export: parity with PyTorch, metadata, and failures that leave nothing behind."""
from __future__ import annotations

import copy
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn

import engine
from engine.errors import GraftError
from engine.export.onnx_export import allowed_diff, export_onnx, max_abs_diff, output_scale
from engine.network.heads import HeadSpec
from engine.export.inference import original_classes, predict_arrays, predict_files
from engine.network.loading import LoadedNetwork, ModelSource, load_network
from engine.export.metadata import OnnxPredictor, read_metadata
from engine.surgery.operations import AddHead, CutAt, DeleteOutputLayer, set_module
from engine.network.preprocess import InputSpec
from engine.surgery.session import Session

TOL = 1e-4


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- helpers ------------------------------------------------------------------------------------------

def calibrate(module: nn.Module, size: int = 224) -> nn.Module:
    """Random-init BatchNorm statistics make activations vanish (outputs ~1e-9, so any parity test would
    pass trivially): set them from one random batch so outputs are of a realistic size."""
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    module.train()
    with torch.no_grad():
        module(torch.randn(4, 3, size, size, generator=torch.Generator().manual_seed(0)))
    for m in bns:
        m.momentum = 0.1
    return module.eval()


_DEFAULT: list[LoadedNetwork] = []


def default_network() -> LoadedNetwork:
    """The bundled EfficientNet-Lite0, loaded once per test run; each caller gets its own copy."""
    if not _DEFAULT:
        _DEFAULT.append(load_network("default"))
    return copy.deepcopy(_DEFAULT[0])


def make_images(folder: Path) -> list[Path]:
    """Small images of every mode that matters, at odd sizes."""
    rng = np.random.default_rng(7)
    folder.mkdir(parents=True, exist_ok=True)

    def pattern(h: int, w: int, c: int) -> np.ndarray:
        yy, xx = np.mgrid[0:h, 0:w]
        base = np.stack([(xx * 255 // max(w - 1, 1)), (yy * 255 // max(h - 1, 1)), ((xx + yy) * 7) % 256], -1)
        noise = rng.integers(0, 60, (h, w, 3))
        return np.clip(base + noise, 0, 255).astype(np.uint8)[..., :c]

    out = []

    def save(img: Image.Image, name: str, **kw) -> None:
        out.append(folder / name)
        img.save(out[-1], **kw)

    save(Image.fromarray(pattern(101, 37, 3)), "rgb_37x101.png")
    save(Image.fromarray(pattern(17, 300, 3)), "rgb_300x17.jpg", quality=90)
    rgba = pattern(61, 53, 3)
    alpha = (np.linspace(0, 255, 53)[None, :].repeat(61, 0)).astype(np.uint8)
    alpha[:10] = 0
    save(Image.fromarray(np.dstack([rgba, alpha])), "rgba_53x61.png")
    save(Image.fromarray(pattern(65, 64, 1)[..., 0]), "grey_64x65.png")
    save(Image.fromarray(np.dstack([pattern(80, 33, 1), np.linspace(255, 0, 80)[:, None].repeat(33, 1).astype(np.uint8)])), "la_33x80.png")
    pal = Image.fromarray(pattern(80, 50, 3)).quantize(16)
    save(pal, "palette_alpha_50x80.png", transparency=0)
    save(Image.fromarray(pattern(45, 45, 3)).quantize(8), "palette_45.png")
    save(Image.fromarray(pattern(30, 40, 1)[..., 0].astype(np.uint16) * 257), "deep_40x30.png")
    save(Image.fromarray(pattern(43, 41, 3)).convert("CMYK"), "cmyk_41x43.jpg")
    save(Image.fromarray(pattern(25, 20, 3)).convert("1"), "bits_20x25.png")
    # a phone photo stored sideways with an EXIF orientation tag; a tiny one; a very wide one; dark 16-bit
    phone = Image.fromarray(pattern(36, 70, 3))
    exif = phone.getexif()
    exif[0x0112] = 6
    save(phone, "exif_rotated_70x36.jpg", exif=exif, quality=92)
    save(Image.fromarray(pattern(7, 11, 3)), "tiny_11x7.png")
    save(Image.fromarray(pattern(50, 2000, 3)), "wide_2000x50.png")
    save(Image.fromarray(pattern(33, 29, 1)[..., 0].astype(np.uint16)), "dark16_29x33.png")
    return out


def ort_run(path: Path, batch: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, {"image": batch.astype(np.float32)})))


def assert_valid_file(path: Path, outputs: list[str], size: int) -> onnx.ModelProto:
    assert sorted(os.listdir(path.parent)) == [path.name], "no temp or external-data files beside the export"
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == outputs
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, size, size]
    assert all(init.data_location == onnx.TensorProto.DEFAULT for init in model.graph.initializer)
    return model


def assert_parity(session: Session, path: Path, batch: np.ndarray) -> dict[str, float]:
    ref = predict_arrays(session, batch)
    got = ort_run(path, batch)
    assert list(got) == list(ref)
    diffs = {k: max_abs_diff(ref[k], got[k]) for k in ref}
    assert all(d <= TOL for d in diffs.values()), diffs
    return diffs


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    return make_images(tmp_path_factory.mktemp("images"))


def tiny_session(middle: nn.Module) -> Session:
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), middle, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))
    return Session(LoadedNetwork(body.eval(), InputSpec(size=32, resize=36), ModelSource("file", "/x/tiny.pt", format="pickle")))


# -- parity -------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_default_model_with_one_head_exports_verified(tmp_path, images):
    session = Session(default_network())
    session.do(DeleteOutputLayer())
    session.do(AddHead(HeadSpec("species", labels=["cat", "dog", "bird", "fish"]), seed=0))
    out = tmp_path / "out" / "default.onnx"
    out.parent.mkdir()
    report = export_onnx(session, out, images=images[:4])
    assert report.path == out and report.size_bytes == out.stat().st_size > 100_000
    assert report.exporter == "torchscript" and report.opset == 18 and report.verified
    assert set(report.random_diff) == set(report.image_diff) == {"species"}
    assert report.max_diff <= TOL and report.images == 4
    assert "species" in report.format() and "random" in report.format() and ", opset 18," in report.format()
    model = assert_valid_file(out, ["species"], session.input_spec.size)
    assert [(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")] == [("", 18)]
    assert read_metadata(out).data["opset"] == 18
    rng = np.random.default_rng(3)
    assert_parity(session, out, rng.standard_normal((5, 3, session.input_spec.size, session.input_spec.size)))


@pytest.mark.slow
def test_three_heads_of_every_kind(tmp_path, images):
    session = Session(default_network())
    session.do(DeleteOutputLayer())
    session.do(AddHead(HeadSpec("species", labels=["cat", "dog", "bird"]), seed=1))
    session.do(AddHead(HeadSpec("tags", kind="multi", labels=["sunny", "indoor"], hidden=[32], dropout=0.5), seed=2))
    session.do(AddHead(HeadSpec("size", kind="regression", labels=["width", "height"]), seed=3))
    session.model.train()  # export must use eval mode (dropout off) and leave the mode as it was
    out = tmp_path / "three.onnx"
    report = export_onnx(session, out, images=images[2:7])
    assert session.model.training
    assert report.outputs == ["species", "tags", "size"] and report.max_diff <= TOL
    model = assert_valid_file(out, ["species", "tags", "size"], session.input_spec.size)
    assert not any(n.op_type == "Dropout" for n in model.graph.node)
    from engine.export.metadata import load_batch

    assert_parity(session, out, load_batch(images[2:7], session.input_spec))
    # every test image, the EXIF-rotated, tiny, very wide and dark 16-bit ones included: Graft's own
    # prediction and the ONNX file's, preprocessed from its metadata, agree
    ours = predict_files(session, images)
    theirs = OnnxPredictor(out).predict_files(images)
    assert len(ours) == len(theirs) == len(images)
    for path, a, b in zip(images, ours, theirs):
        for head in ("species", "tags", "size"):
            assert np.abs(a[head].values - b[head].values).max() <= TOL, (path.name, head)


@pytest.mark.slow
def test_resnet_cut_at_layer3_exports_the_early_exit_trunk(tmp_path, images):
    torch.manual_seed(0)
    network = load_network("resnet18", random_init=True)
    calibrate(network.module)
    session = Session(network)
    session.do(CutAt("layer3"))
    session.do(AddHead(HeadSpec("quality", kind="regression", outputs=1), seed=4))
    out = tmp_path / "resnet.onnx"
    report = export_onnx(session, out, images=images[:2])
    assert report.max_diff <= TOL
    model = assert_valid_file(out, ["quality"], 224)
    # layer4's weights are gone from the file: 256 input features into the head
    shapes = {tuple(i.dims) for i in model.graph.initializer}
    assert (1, 256) in shapes and not any(512 in s for s in shapes)
    diffs = assert_parity(session, out, np.random.default_rng(5).standard_normal((4, 3, 224, 224)))
    assert diffs["quality"] <= TOL


@pytest.mark.slow
def test_export_before_any_surgery_has_one_output(tmp_path, images):
    session = Session(default_network())
    out = tmp_path / "plain.onnx"
    report = export_onnx(session, out, images=images[:2])
    assert report.outputs == ["output"] and report.max_diff <= TOL
    assert_valid_file(out, ["output"], session.input_spec.size)
    meta = read_metadata(out)
    assert meta.outputs == ["output"]
    classes = original_classes(session)  # the bundled model's ImageNet classes (the stand-in has none)
    if classes:
        assert meta.data["outputs"][0]["kind"] == "single" and meta.heads[0].labels == classes
        assert "original classifier" in meta.data["outputs"][0]["meaning"]
    else:
        assert meta.heads == [] and meta.data["outputs"][0]["kind"] == "features"
    ours = predict_files(session, images[:2])
    theirs = OnnxPredictor(out).predict_files(images[:2])
    for a, b in zip(ours, theirs):
        assert a["output"].kind == b["output"].kind and a["output"].names == b["output"].names
        assert np.abs(a["output"].values - b["output"].values).max() <= TOL


def test_without_heads_the_original_classifier_keeps_its_class_names(tmp_path, images):
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    network = LoadedNetwork(body.eval(), InputSpec(size=32, resize=36), ModelSource("builtin", "tiny"),
                            class_names=["cat", "dog", "bird", "fish"])
    session = Session(network)
    assert original_classes(session) == ["cat", "dog", "bird", "fish"]
    export_onnx(session, tmp_path / "classes.onnx")
    meta = read_metadata(tmp_path / "classes.onnx")
    assert meta.heads == [HeadSpec("output", kind="single", labels=["cat", "dog", "bird", "fish"])]
    ours = predict_files(session, images[:3])
    theirs = OnnxPredictor(tmp_path / "classes.onnx").predict_files(images[:3])
    assert [p["output"].label for p in ours] == [p["output"].label for p in theirs]
    assert all(p["output"].format().startswith("output: ") and "%" in p["output"].format() for p in theirs)
    session.do(DeleteOutputLayer())  # once the classifier is gone, the output is plain features
    assert original_classes(session) is None
    export_onnx(session, tmp_path / "features.onnx")
    assert read_metadata(tmp_path / "features.onnx").data["outputs"][0]["kind"] == "features"


def test_metadata_round_trip_equals_the_session(tmp_path):
    session = tiny_session(nn.Identity())
    session.model.input_spec = InputSpec(size=32, resize=40, interpolation="bicubic",
                                         alpha_background=[10, 20, 30])
    session.do(DeleteOutputLayer())
    session.do(AddHead(HeadSpec("species", labels=["cat", "dog"])))
    session.do(AddHead(HeadSpec("tags", kind="multi", outputs=3, hidden=[8], dropout=0.1, loss_weight=2.0)))
    out = tmp_path / "meta.onnx"
    export_onnx(session, out, verify=False)
    meta = read_metadata(out)
    assert meta.input_spec == session.input_spec
    assert meta.heads == session.heads
    assert meta.graft_version == engine.__version__
    assert meta.source["description"] == session.describe()
    model = onnx.load(str(out))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["layout"] == "NCHW" and props["channel_order"] == "RGB" and props["resize"] == "40"
    assert props["mean"] == "[0.485, 0.456, 0.406]" and props["alpha_background"] == "[10, 20, 30]"
    assert "BICUBIC" in props["interpolation"] and "centre-crop 32x32" in props["preprocessing"]
    assert props["output.tags.activation"] == "sigmoid" and props["output.species.activation"] == "softmax"
    assert model.producer_name == "Graft" and "softmax" in model.doc_string
    predictor = OnnxPredictor(out)
    assert predictor.input_spec == session.input_spec and predictor.outputs == ["species", "tags"]


# -- failures -----------------------------------------------------------------------------------------

def test_missing_folder_gives_graft_error_and_no_file(tmp_path):
    session = tiny_session(nn.Identity())
    with pytest.raises(GraftError, match="does not exist"):
        export_onnx(session, tmp_path / "nowhere" / "x.onnx")
    assert os.listdir(tmp_path) == []


def test_read_only_folder_gives_graft_error_and_no_file(tmp_path, monkeypatch):
    session = tiny_session(nn.Identity())
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        if os.access(folder, os.W_OK):  # root ignores the mode bits: make the folder refuse anyway
            def refuse(*args, **kwargs):
                raise PermissionError(13, "Permission denied")

            monkeypatch.setattr(tempfile, "mkstemp", refuse)
        with pytest.raises(GraftError, match="Permission denied"):
            export_onnx(session, folder / "x.onnx")
        assert os.listdir(folder) == []
    finally:
        folder.chmod(0o700)


def test_failure_at_the_final_rename_leaves_nothing(tmp_path, monkeypatch):
    session = tiny_session(nn.Identity())

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(GraftError, match="Cannot write"):
        export_onnx(session, tmp_path / "x.onnx")
    assert os.listdir(tmp_path) == []


class ErfGate(nn.Module):
    """A custom layer using an op neither ONNX exporter supports (aten::erfinv)."""

    def forward(self, x):
        return x * torch.special.erfinv(torch.sigmoid(x) * 0.5)


class Spectrum(nn.Module):
    """rfft: the TorchScript exporter cannot export it, torch.export can."""

    def forward(self, x):
        return torch.fft.rfft(x, dim=-1).abs()[..., : x.shape[-1] // 2]


@pytest.mark.slow
def test_an_unexportable_layer_is_named(tmp_path, capfd):
    session = tiny_session(ErfGate())
    session.do(AddHead(HeadSpec("species", labels=["a", "b"])))
    previous = tmp_path / "model.onnx"
    previous.write_bytes(b"the previous export")
    with pytest.raises(GraftError) as info:
        export_onnx(session, previous)
    message = str(info.value)
    assert "erfinv" in message and "layer '2' (ErfGate)" in message
    assert "Traceback" not in message and "\n" not in message
    assert previous.read_bytes() == b"the previous export" and os.listdir(tmp_path) == ["model.onnx"]
    printed = capfd.readouterr()
    assert printed.out == printed.err == "", "the exporters' own output (C++ warnings, graph dumps) is kept quiet"


class _Erfinv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.special.erfinv(x.clamp(-0.5, 0.5))

    @staticmethod
    def backward(ctx, grad):
        return grad


class CustomFunction(nn.Module):
    def forward(self, x):
        return _Erfinv.apply(x)


@pytest.mark.slow
def test_an_unexportable_custom_autograd_function_is_named(tmp_path):
    with pytest.raises(GraftError, match=r"layer '2' \(CustomFunction\) uses the operator \S*erf_?inv "
                                         r"\(inside the custom autograd function _Erfinv\)"):
        export_onnx(tiny_session(CustomFunction()), tmp_path / "x.onnx")
    assert os.listdir(tmp_path) == []


def test_an_unexportable_layer_inside_a_real_network_is_named(tmp_path, resnet_session):
    set_module(resnet_session.model.trunk.body, "layer2.0.relu", ErfGate())
    with pytest.raises(GraftError, match=r"layer 'layer2\.0\.relu' \(ErfGate\) uses the operator aten::erfinv"):
        export_onnx(resnet_session, tmp_path / "x.onnx", exporter="torchscript")
    assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_falls_back_to_the_dynamo_exporter(tmp_path):
    session = tiny_session(Spectrum())
    report = export_onnx(session, tmp_path / "fft.onnx")
    assert report.exporter == "dynamo" and report.max_diff <= TOL
    assert "fft_rfft" in report.notes[0]
    assert_valid_file(tmp_path / "fft.onnx", ["output"], 32)
    assert read_metadata(tmp_path / "fft.onnx").data["exporter"] == "dynamo"


@pytest.mark.slow
def test_broken_verification_fails_loudly_and_removes_the_file(tmp_path, monkeypatch):
    session = tiny_session(nn.Identity())
    session.do(AddHead(HeadSpec("species", labels=["a", "b"])))
    session.do(AddHead(HeadSpec("size", kind="regression", outputs=1)))
    real_run = ort.InferenceSession.run

    def skewed(self, names, feed, *args, **kwargs):
        outs = real_run(self, names, feed, *args, **kwargs)
        return [o + 0.01 if n == "size" else o for n, o in zip(names, outs)]

    monkeypatch.setattr(ort.InferenceSession, "run", skewed)
    with pytest.raises(GraftError, match=r"output 'size' differs from PyTorch by 0\.01 .*tolerance 0\.0001"):
        export_onnx(session, tmp_path / "x.onnx")
    assert os.listdir(tmp_path) == []
    # a looser tolerance accepts the same difference
    report = export_onnx(session, tmp_path / "x.onnx", tolerance=0.05, exporter="torchscript")
    assert 0.009 < report.random_diff["size"] < 0.011 and report.random_diff["species"] < TOL


def test_a_nan_difference_is_never_within_tolerance():
    assert max_abs_diff(np.array([1.0, np.nan]), np.array([1.0, 2.0])) == float("inf")
    assert max_abs_diff(np.array([np.nan]), np.array([np.nan])) == 0.0


def test_a_model_elsewhere_is_exported_from_a_copy(tmp_path):
    session = tiny_session(nn.Identity())
    session.model.double()
    report = export_onnx(session, tmp_path / "x.onnx")
    assert report.max_diff <= TOL
    assert next(session.model.parameters()).dtype == torch.float64  # the session's model is untouched
    model = onnx.load(str(tmp_path / "x.onnx"))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_a_bad_verification_image_is_reported_before_exporting(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("no")
    with pytest.raises(GraftError, match="bad.jpg: not a readable image"):
        export_onnx(tiny_session(nn.Identity()), tmp_path / "x.onnx", images=[bad])
    assert os.listdir(tmp_path) == ["bad.jpg"]


@pytest.mark.slow
def test_the_dynamo_exporter_handles_the_early_exit_trunk(tmp_path):
    session = tiny_session(nn.Identity())
    session.do(CutAt("1"))  # the trunk stops right after the ReLU (its hook raises)
    session.do(AddHead(HeadSpec("species", labels=["a", "b", "c"]), seed=0))
    report = export_onnx(session, tmp_path / "dyn.onnx", exporter="dynamo")
    assert report.exporter == "dynamo" and report.max_diff <= TOL
    assert_valid_file(tmp_path / "dyn.onnx", ["species"], 32)
    assert_parity(session, tmp_path / "dyn.onnx", np.random.default_rng(0).standard_normal((7, 3, 32, 32)))


def test_a_head_named_like_the_input_is_refused(tmp_path):
    session = tiny_session(nn.Identity())
    session.do(AddHead(HeadSpec("image", labels=["a", "b"])))
    with pytest.raises(GraftError, match="clash"):
        export_onnx(session, tmp_path / "x.onnx")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("compile_with", ["script", "trace"])
def test_a_torchscript_model_file_exports(tmp_path, compile_with):
    """The exporter's tracer refuses TorchScript submodules (pytorch#86261): they are traced first, and a
    scripted BatchNorm keeps its eval-mode numbers."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=4), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 5)).eval()
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = torch.jit.script(net) if compile_with == "script" else torch.jit.trace(net, torch.randn(1, 3, 64, 64))
        compiled.save(str(tmp_path / "model.pt"))
        session = Session(load_network(tmp_path / "model.pt"))
    session.do(AddHead(HeadSpec("species", labels=["a", "b", "c"]), seed=0))
    out = tmp_path / "out"
    out.mkdir()
    report = export_onnx(session, out / "ts.onnx")
    assert report.exporter == "torchscript" and report.max_diff <= TOL
    assert_valid_file(out / "ts.onnx", ["species"], session.input_spec.size)


class Tokens(nn.Module):
    """A transformer block on the feature map: in eval mode PyTorch runs it as one fused fast-path op."""

    def __init__(self):
        super().__init__()
        self.block = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True, dropout=0.0)

    def forward(self, x):
        n, c, h, w = x.shape
        return self.block(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(n, c, h, w)


def test_attention_exports_with_the_fast_torchscript_exporter(tmp_path):
    report = export_onnx(tiny_session(Tokens()), tmp_path / "attention.onnx")
    assert report.exporter == "torchscript" and report.notes == [] and report.max_diff <= TOL
    assert torch.backends.mha.get_fastpath_enabled()  # switched off for the export only


# -- the opset, full disks, EXIF in predict, training images ------------------------------------------

def file_opset(path: Path) -> int:
    return next(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))


@pytest.mark.slow
def test_the_recorded_opset_is_the_one_in_the_file(tmp_path):
    session = tiny_session(nn.Identity())
    report = export_onnx(session, tmp_path / "ts.onnx", opset=13)
    assert report.exporter == "torchscript" and report.opset == 13 == file_opset(tmp_path / "ts.onnx")
    assert read_metadata(tmp_path / "ts.onnx").data["opset"] == 13 and report.notes == []
    # the dynamo exporter writes no opset below 18: the report and the metadata say what the file holds
    report = export_onnx(session, tmp_path / "dyn.onnx", opset=13, exporter="dynamo")
    assert report.opset == 18 == file_opset(tmp_path / "dyn.onnx") == read_metadata(tmp_path / "dyn.onnx").data["opset"]
    assert "opset 13 was asked for; the dynamo exporter wrote opset 18" in report.notes
    assert "opset 18, dynamo exporter" in report.format()


@pytest.mark.parametrize("opset", [12, 7, 30, 1000, "18", True])
def test_an_opset_the_exporters_cannot_write_is_refused(tmp_path, opset):
    with pytest.raises(GraftError, match=rf"ONNX opset {opset!r} is not supported: choose one from 13 to \d+ "
                                         r"\(default 18\)"):
        export_onnx(tiny_session(nn.Identity()), tmp_path / "x.onnx", opset=opset)
    assert os.listdir(tmp_path) == []


def count_exports(monkeypatch) -> list[str]:
    import engine.export.onnx_export

    calls: list[str] = []
    real = engine.export.onnx_export._export

    def spy(kind, *args, **kwargs):
        calls.append(kind)
        return real(kind, *args, **kwargs)

    monkeypatch.setattr(engine.export.onnx_export, "_export", spy)
    return calls


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGXFSZ"), reason="needs POSIX file size limits")
@pytest.mark.parametrize("exporter", ["auto", "dynamo"])
@pytest.mark.slow
def test_a_write_the_system_refuses_stops_at_once(tmp_path, monkeypatch, exporter):
    """A real refusal by the operating system (the file size limit: EFBIG, as a full disk gives ENOSPC) is
    reported as a write error on the spot, not blamed on the exporters after trying the other one."""
    import resource
    import signal

    calls = count_exports(monkeypatch)
    session = tiny_session(nn.Identity())
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (600, hard))  # the tiny model's file needs a few kB
    try:
        with pytest.raises(GraftError) as info:
            export_onnx(session, tmp_path / "x.onnx", exporter=exporter)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert str(info.value) == f"Cannot write {tmp_path / 'x.onnx'}: File too large."
    assert calls == [exporter if exporter != "auto" else "torchscript"]
    assert os.listdir(tmp_path) == []


def test_a_full_disk_is_not_blamed_on_the_exporters(tmp_path, monkeypatch):
    import errno

    import engine.export.onnx_export

    calls: list[str] = []

    def full(kind, model, example, path, *args):
        calls.append(kind)
        path.write_bytes(b"half a fi")
        raise RuntimeError("serialising failed") from OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(engine.export.onnx_export, "_export", full)
    with pytest.raises(GraftError) as info:
        export_onnx(tiny_session(nn.Identity()), tmp_path / "x.onnx")
    assert str(info.value).startswith(f"Cannot write {tmp_path / 'x.onnx'}: the disk holding {tmp_path} is full (")
    assert str(info.value).endswith("; No space left on device). The previous file, if any, is unchanged.")
    assert calls == ["torchscript"] and os.listdir(tmp_path) == []


def rotated_photo(path: Path) -> Path:
    yy, xx = np.mgrid[0:30, 0:50]
    img = Image.fromarray(np.stack([xx * 5, yy * 8, (xx * yy) % 256], -1).astype(np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6
    img.save(path, exif=exif)
    return path


def test_predict_follows_the_exif_orientation_the_metadata_states(tmp_path):
    import json

    from engine.network.preprocess import preprocess_file

    session = tiny_session(nn.Identity())
    out = tmp_path / "m.onnx"
    export_onnx(session, out)
    photo = rotated_photo(tmp_path / "phone.png")
    assert read_metadata(out).data["preprocessing"]["exif_orientation"] is True
    spec = session.input_spec
    upright, sideways = preprocess_file(photo, spec), preprocess_file(photo, spec, exif=False)
    assert np.abs(upright - sideways).max() > 0.1, "the test image must look different when turned"
    got = OnnxPredictor(out).predict_files([photo])[0]["output"].raw
    assert np.abs(got - ort_run(out, upright[None])["output"][0]).max() == 0
    assert np.abs(got - predict_files(session, [photo])[0]["output"].raw).max() <= TOL
    # a file whose metadata says not to apply it: predict leaves the pixels as stored
    model = onnx.load(str(out))
    entry = next(p for p in model.metadata_props if p.key == "graft")
    data = json.loads(entry.value)
    data["preprocessing"]["exif_orientation"] = False
    entry.value = json.dumps(data)
    onnx.save(model, str(tmp_path / "as_stored.onnx"))
    got = OnnxPredictor(tmp_path / "as_stored.onnx").predict_files([photo])[0]["output"].raw
    assert np.abs(got - ort_run(out, sideways[None])["output"][0]).max() == 0


def test_predict_each_keeps_the_good_images_when_one_is_bad(tmp_path, images):
    session = tiny_session(nn.Identity())
    out = tmp_path / "m.onnx"
    export_onnx(session, out, verify=False)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    predictor = OnnxPredictor(out)
    results = list(predictor.predict_each([images[0], bad, tmp_path / "gone.png", images[1]], batch_size=3))
    assert [p for p, _ in results] == [images[0], bad, tmp_path / "gone.png", images[1]]
    assert isinstance(results[1][1], GraftError) and "bad.png: not a readable image" in str(results[1][1])
    assert isinstance(results[2][1], GraftError) and "gone.png: no such file" in str(results[2][1])
    expected = predictor.predict_files([images[0], images[1]])
    for (_, got), want in zip([results[0], results[3]], expected):
        assert np.array_equal(got["output"].raw, want["output"].raw)


def test_training_images_come_from_the_recorded_data(tmp_path):
    from engine.export.onnx_export import training_images

    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for cls in ("cat", "dog", "eel"):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")
    (root / "cat" / "0.png").write_text("broken")  # skipped: unreadable
    (root / "dog" / "notes.txt").write_text("not an image")
    found, where = training_images({"training": {"data": str(root)}})
    # one image of each class in turn, the unreadable cat/0.png left out
    assert found == [root / "dog/0.png", root / "eel/0.png", root / "cat/1.png", root / "dog/1.png"]
    assert where == f"from its training data {root}"
    assert training_images({"training": {"data": str(root)}}, limit=2)[0] == found[:2]

    manifest = tmp_path / "labels.csv"
    manifest.write_text("image;size\nphotos/dog/2.png;1,5\n\nphotos/missing.png;2\n" + str(root / "eel/1.png") + ";3\n")
    found, _ = training_images({"training": {"data": str(manifest)}})
    assert found == [tmp_path / "photos/dog/2.png", root / "eel/1.png"]

    broken = tmp_path / "broken"
    (broken / "cat").mkdir(parents=True)
    (broken / "cat" / "1.jpg").write_bytes(b"\xff\xd8 cut short")
    for extra, why in [(None, "does not record the data"), ({}, "does not record the data"),
                       ({"training": "?"}, "does not record the data"),
                       ({"training": {"data": str(tmp_path / "gone")}},
                        f"training data {tmp_path / 'gone'} no longer exists"),
                       ({"training": {"data": str(broken)}},
                        f"no readable image was found in its training data {broken}")]:
        found, message = training_images(extra)
        assert found == [] and why in message, message


def test_the_tolerance_is_relative_only_for_outputs_beyond_one():
    """Logits near 0 are held to the absolute tolerance; outputs in the thousands to float32's precision."""
    assert output_scale(np.array([0.5, -0.25])) == 0.5
    assert allowed_diff(1e-4, 0.5) == 1e-4  # not divided by 0.5: small outputs keep the absolute rule
    assert allowed_diff(1e-4, 3000.0) == pytest.approx(0.3)
    assert output_scale(np.array([np.inf, -2.0, np.nan])) == 2.0
    assert output_scale(np.array([np.nan])) == 0.0


@pytest.mark.slow
def test_a_regression_head_in_the_thousands_verifies_and_a_real_error_still_fails(tmp_path, monkeypatch):
    session = tiny_session(nn.Identity())
    session.do(AddHead(HeadSpec("price", kind="regression", outputs=1), seed=0))
    with torch.no_grad():
        for p in session.model.heads["price"].parameters():
            p.mul_(1e4)  # outputs in the hundreds to thousands
    report = export_onnx(session, tmp_path / "a.onnx")
    assert report.output_scale["price"] > 100 and report.allowed("price") > report.tolerance
    assert report.random_diff["price"] <= report.allowed("price")
    assert "allowed" in report.format()
    real_run = ort.InferenceSession.run

    def skewed(self, names, feed, *args, **kwargs):  # a 1 % error is no rounding
        return [o * 1.01 for o in real_run(self, names, feed, *args, **kwargs)]

    monkeypatch.setattr(ort.InferenceSession, "run", skewed)
    with pytest.raises(GraftError, match=r"output 'price' differs from PyTorch by .* for outputs up to"):
        export_onnx(session, tmp_path / "b.onnx")
    assert not (tmp_path / "b.onnx").exists()
