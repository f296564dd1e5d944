"""fp16 and int8 exports: they answer as fp32 does, the report's numbers are what the files compute, and bad
input ends in one clear message with nothing left behind."""
from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from engine.data.demo_data import ensure_demo_data
from engine.errors import GraftError
from engine.export.compare import compare_models, head_comparison, run_outputs
from engine.export.metadata import OnnxPredictor, load_batch, read_metadata, sigmoid
from engine.export.precision import DYNAMIC_METHOD, STATIC_METHOD, export_precision
from engine.network.heads import HeadSpec
from engine.network.loading import load_network
from engine.network.preprocess import InputSpec
from engine.surgery.session import Session

PHOTOS = sorted((Path(__file__).resolve().parents[2] / "data" / "images").glob("*.jpg"))

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def demo_images(n: int) -> list[Path]:
    manifest = ensure_demo_data()
    with open(manifest, newline="") as f:
        return [manifest.parent / row["image"] for row in list(csv.DictReader(f))[:n]]


@pytest.fixture(scope="module")
def default_session() -> Session:
    return Session(load_network("default"))  # the ImageNet classifier: output 'output' with 1000 classes


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def outputs_of(path: Path, images: list[Path]) -> dict[str, np.ndarray]:
    predictor = OnnxPredictor(path)
    return run_outputs(predictor, load_batch(images, predictor.input_spec))


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.slow
def test_the_default_network_in_reduced_precision_names_the_same_imagenet_classes(default_session, tmp_path, precision):
    """Real photos through EfficientNet-Lite0's ImageNet classifier: the reduced file's top-1 class is
    fp32's for every photo, its file is smaller, its metadata says its precision, and each number of the
    report is what the two files compute on the same images (recomputed here)."""
    out = tmp_path / f"lite0_{precision}.onnx"
    calibration = demo_images(16) + PHOTOS
    images = PHOTOS + demo_images(24)[16:]
    fp32_top = outputs_of_session(default_session, images)
    labels = fp32_top.copy()
    labels[::3] = (labels[::3] + 1) % 1000  # a third of the "labels" wrong for fp32: accuracy below 100 %
    labels[1] = -1  # and one unlabelled
    fp32_file = tmp_path / "fp32.onnx"
    report = export_precision(default_session, out, precision, calibration=calibration, images=images,
                              targets={"output": labels}, runs=1, threads=1, keep_reference=fp32_file)
    assert leftovers(tmp_path) == sorted([out.name, fp32_file.name])
    assert read_metadata(out).precision == precision
    assert report.size_bytes == out.stat().st_size
    assert report.comparison.reference.size_bytes > out.stat().st_size * (1.8 if precision == "fp16" else 3.0)
    assert report.reduction.method == (STATIC_METHOD if precision == "int8" else report.reduction.method)

    # recompute the report from the files themselves
    ref, got = outputs_of(fp32_file, images)["output"], outputs_of(out, images)["output"]
    row = report.comparison.heads[precision][0]
    assert row.name == "output" and row.kind == "single" and row.images == len(images)
    assert row.max_diff == pytest.approx(float(np.abs(ref - got).max()), rel=1e-6)
    assert row.agreement == pytest.approx(float(np.mean(ref.argmax(1) == got.argmax(1))))
    known = labels >= 0
    assert row.labelled == int(known.sum()) == len(images) - 1
    assert row.reference_accuracy == pytest.approx(float(np.mean(ref.argmax(1)[known] == labels[known])))
    assert row.accuracy == pytest.approx(float(np.mean(got.argmax(1)[known] == labels[known])))
    assert 0.5 < row.reference_accuracy < 0.8
    assert set(report.comparison.reference.latency) == {1, 16} and all(v > 0 for v in report.comparison.reference.latency.values())

    photos = len(PHOTOS)
    assert (ref.argmax(1)[:photos] == got.argmax(1)[:photos]).all(), "a photo changed class"
    scale = float(np.abs(ref).max())
    assert row.max_diff < (0.01 if precision == "fp16" else 0.25) * scale
    table = report.table()
    assert f"{precision}" in table.splitlines()[1] and "top-1 agreement" in table and "latency, batch 16" in table
    assert f"{100 * row.accuracy:.1f} %" in table


def outputs_of_session(session: Session, images: list[Path]) -> np.ndarray:
    from engine.export.inference import predict_arrays

    return predict_arrays(session, load_batch(images, session.input_spec))["output"].argmax(1)


@pytest.mark.slow
def test_a_torchvision_network_with_three_heads_keeps_its_answers_in_int8_and_fp16(tmp_path, small_resnet):
    heads = [HeadSpec("shape", labels=["circle", "square", "star", "triangle"]),
             HeadSpec("tags", kind="multi", labels=["red", "striped", "outlined"], hidden=[16]),
             HeadSpec("size", kind="regression", labels=["size"])]
    session = small_resnet(heads)
    images = demo_images(48)
    targets = {"shape": np.array([i % 4 for i in range(24)]),
               "tags": np.where(np.arange(72).reshape(24, 3) % 5 == 0, np.nan, np.arange(72).reshape(24, 3) % 2),
               "size": np.linspace(0.2, 0.9, 24).reshape(24, 1)}
    targets["size"][::4] = np.nan
    for precision in ("fp16", "int8"):
        out = tmp_path / f"resnet_{precision}.onnx"
        fp32 = tmp_path / f"fp32_{precision}.onnx"
        report = export_precision(session, out, precision, calibration=images[:24], images=images[24:],
                                  targets=targets, timing=False, keep_reference=fp32)
        assert read_metadata(out).precision == precision and read_metadata(fp32).precision == "fp32"
        predictor = OnnxPredictor(out)
        assert predictor.predict_files(images[:2])[0]["shape"].label in heads[0].labels
        ref, got = outputs_of(fp32, images[24:]), outputs_of(out, images[24:])
        assert len(set(ref["shape"].argmax(1))) > 1, "the random network answers the same for every image"
        rows = {r.name: r for r in report.comparison.heads[precision]}
        for name in ("shape", "tags", "size"):
            assert rows[name].max_diff == pytest.approx(float(np.abs(ref[name] - got[name]).max()), rel=1e-6)
        a, b = sigmoid(ref["tags"]) > 0.5, sigmoid(got["tags"]) > 0.5
        assert rows["tags"].label_agreement == pytest.approx({l: float(np.mean(a[:, j] == b[:, j]))
                                                              for j, l in enumerate(heads[1].labels)})
        known = ~np.isnan(targets["size"][:, 0])
        assert rows["size"].mae == pytest.approx(float(np.abs(got["size"][known, 0] - targets["size"][known, 0]).mean()))
        assert rows["size"].reference_mae == pytest.approx(float(np.abs(ref["size"][known, 0] - targets["size"][known, 0]).mean()))
        assert rows["shape"].agreement >= (0.95 if precision == "fp16" else 0.8)
        assert rows["tags"].agreement >= (0.95 if precision == "fp16" else 0.8)
        for name in ("shape", "tags", "size"):
            scale = float(np.abs(ref[name]).max())
            assert rows[name].max_diff <= (0.01 if precision == "fp16" else 0.3) * max(scale, 1.0)


@pytest.mark.slow
def test_int8_without_images_quantizes_the_linear_layers_dynamically_and_says_so(tmp_path, small_resnet):
    session = small_resnet([HeadSpec("shape", labels=["a", "b", "c"], hidden=[32])])
    out = tmp_path / "dynamic.onnx"
    report = export_precision(session, out, "int8")
    assert report.reduction.method == DYNAMIC_METHOD and report.comparison is None
    assert any("no calibration images" in n for n in report.reduction.notes)
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops
    assert "Conv" in ops  # the convolutions stay float
    assert "no calibration images" in report.format()


@pytest.mark.slow
def test_keep_float_leaves_the_most_sensitive_layers_unquantized(tmp_path, small_resnet):
    session = small_resnet([HeadSpec("shape", labels=["a", "b", "c"])])
    images = demo_images(24)
    out = tmp_path / "kept.onnx"
    report = export_precision(session, out, "int8", calibration=images[:16], images=images[16:], keep_float=2,
                              timing=False)
    ranked = [name for name, _ in report.sensitivity]
    assert len(ranked) >= 10 and report.reduction.float_layers == ranked[:2]
    model = onnx.load(str(out))
    produced = {o: n.op_type for n in model.graph.node for o in n.output}
    by_name = {n.name: n for n in model.graph.node}
    for name in ranked[:2]:
        node = by_name[name]
        assert produced.get(node.input[1]) != "DequantizeLinear", f"{name} was quantized"
    assert sum(1 for n in model.graph.node if n.op_type in ("Conv", "Gemm") and produced.get(n.input[1]) == "DequantizeLinear") \
        == report.reduction.quantized_layers >= len(ranked) - 2
    assert read_metadata(out).data["reduced"]["float_layers"] == ranked[:2]


def test_unreadable_calibration_images_leave_nothing(tmp_path, small_resnet):
    session = small_resnet([HeadSpec("shape", labels=["a", "b"])])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    target = tmp_path / "model.onnx"
    with pytest.raises(GraftError, match=r"1 calibration image cannot be read: .*broken.jpg: not a readable image.*"
                                         r"Nothing was written"):
        export_precision(session, target, "int8", calibration=[demo_images(1)[0], broken])
    assert leftovers(tmp_path) == ["broken.jpg"]


def test_an_unwritable_folder_is_refused_before_any_work(tmp_path, small_resnet):
    session = small_resnet([HeadSpec("shape", labels=["a", "b"])])
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    if root and not Path("/proc/self").is_dir():
        pytest.skip("root writes into read-only folders, and there is no /proc to try instead")
    folder = Path("/proc") if root else tmp_path / "locked"  # not even root may create files in /proc
    if not root:
        folder.mkdir()
        folder.chmod(0o500)
    try:
        with pytest.raises(GraftError, match="Cannot write to"):
            export_precision(session, folder / "m.onnx", "fp16")
    finally:
        if not root:
            folder.chmod(0o700)
    assert root or leftovers(folder) == []


def test_a_missing_folder_is_refused(tmp_path, small_resnet):
    session = small_resnet([HeadSpec("shape", labels=["a", "b"])])
    with pytest.raises(GraftError, match="does not exist"):
        export_precision(session, tmp_path / "nope" / "m.onnx", "int8")


def test_a_model_without_layers_to_quantize_is_refused_and_leaves_nothing(tmp_path):
    """A network of pooling only, without heads: nothing int8 could quantize."""
    class Pool(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)

    scripted = tmp_path / "pool.pt"
    with warnings.catch_warnings():  # torch.jit.script is deprecated; loading TorchScript files is not
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.script(Pool()).save(str(scripted))
    session = Session(load_network(str(scripted)))
    session.model.input_spec = InputSpec(size=32, resize=36)
    target = tmp_path / "pool.onnx"
    with pytest.raises(GraftError, match="None of the model's layers can be quantized to int8: it has no convolution"):
        export_precision(session, target, "int8", calibration=demo_images(4))
    assert not target.exists() and leftovers(tmp_path) == ["pool.pt"]


def test_bad_settings_are_refused(tmp_path, small_resnet):
    session = small_resnet([HeadSpec("shape", labels=["a", "b"])])
    with pytest.raises(GraftError, match="Unknown precision 'int4'"):
        export_precision(session, tmp_path / "m.onnx", "int4")
    with pytest.raises(GraftError, match="'auto' or a whole number"):
        export_precision(session, tmp_path / "m.onnx", "int8", keep_float=-1)
    assert leftovers(tmp_path) == []


def test_head_comparison_counts_what_it_says():
    ref = np.array([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0], [1.0, 0.0, 0.5], [0.1, 0.2, 0.3]])
    got = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 2.5], [1.0, 0.0, 0.4], [0.1, 0.2, 0.35]])
    single = head_comparison("s", "single", ["a", "b", "c"], ref, got, np.array([0, 2, -1, 1]))
    assert single.agreement == 0.75 and single.labelled == 3 and single.max_diff == 1.0
    assert single.reference_accuracy == pytest.approx(2 / 3) and single.accuracy == pytest.approx(1 / 3)
    assert single.loss_points == pytest.approx(100 / 3)
    multi = head_comparison("m", "multi", ["x", "y", "z"], ref, got - 1.5, None)
    # decisions (logit > 0): fp32 [TTF, FTT, TFT, TTT]; reduced [FTF, FFT, FFF, FFF]
    assert multi.label_agreement == {"x": 0.25, "y": 0.5, "z": 0.5} and multi.agreement == pytest.approx(5 / 12)
    unlabelled = head_comparison("s", "single", ["a", "b", "c"], ref, got, None)
    assert unlabelled.accuracy is None and unlabelled.loss_points == pytest.approx(25.0)
    reg = head_comparison("r", "regression", ["v", "w"], ref[:, :2], got[:, :2], np.array([[2.0, np.nan], [0.0, 0.0],
                                                                                         [np.nan, np.nan], [1.0, 1.0]]))
    assert reg.labelled == 3
    assert reg.reference_mae == pytest.approx(((0 + 0 + 0.9) / 3 + (1 + 0.8) / 2) / 2)


def test_compare_models_refuses_files_with_other_outputs(tmp_path, small_resnet):
    a = small_resnet([HeadSpec("shape", labels=["a", "b"])])
    b = small_resnet([HeadSpec("kind", labels=["a", "b"])])
    export_precision(a, tmp_path / "a.onnx", "fp32")
    export_precision(b, tmp_path / "b.onnx", "fp32")
    batch = load_batch(demo_images(2), a.input_spec)
    with pytest.raises(GraftError, match="has outputs"):
        compare_models(tmp_path / "a.onnx", [tmp_path / "b.onnx"], batch)


def dequantized_biases(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Op type -> names of the nodes whose bias (third input) an int32 DequantizeLinear computes."""
    produced = {o: n.op_type for n in model.graph.node for o in n.output}
    out: dict[str, list[str]] = {}
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and produced.get(n.input[2]) == "DequantizeLinear":
            out.setdefault(n.op_type, []).append(n.name)
    return out


@pytest.mark.parametrize("head", [HeadSpec("shape", labels=["a", "b", "c"]),
                                  HeadSpec("size", kind="regression", labels=["size"])])
@pytest.mark.slow
def test_static_int8_gives_linear_layers_float_biases_and_keeps_the_numbers(tmp_path, small_resnet, monkeypatch, head):
    """The form OpenCV 5's DNN engine refuses (a Gemm whose bias is an int32 DequantizeLinear; for a
    one-output head also a scalar zero point beside a per-channel scale) is rewritten to the exact float
    bias; onnxruntime computes the same numbers, and the convolutions keep their integer biases."""
    import engine.export.precision as precision
    from engine.export.onnx_export import export_onnx

    session = small_resnet([head])
    fp32 = tmp_path / "fp32.onnx"
    export_onnx(session, fp32)
    batch = precision.load_images(demo_images(16), session.input_spec, "calibration")
    (tmp_path / "w1").mkdir()
    (tmp_path / "w2").mkdir()
    with monkeypatch.context() as m:
        m.setattr(precision, "float_gemm_biases", lambda model: 0)
        precision.quantize_int8(fp32, tmp_path / "raw.onnx", tmp_path / "w1", batch)
    report = precision.quantize_int8(fp32, tmp_path / "int8.onnx", tmp_path / "w2", batch)
    raw, fixed = onnx.load(str(tmp_path / "raw.onnx")), onnx.load(str(tmp_path / "int8.onnx"))
    assert dequantized_biases(raw)["Gemm"] == [n.name for n in raw.graph.node if n.op_type == "Gemm"]
    assert "Gemm" not in dequantized_biases(fixed)
    assert dequantized_biases(fixed)["Conv"] == dequantized_biases(raw)["Conv"] != []
    init = {i.name: onnx.numpy_helper.to_array(i) for i in fixed.graph.initializer}
    for n in fixed.graph.node:
        if n.op_type == "DequantizeLinear" and len(n.input) > 2 and n.input[2] in init:
            assert init[n.input[1]].shape == init[n.input[2]].shape, n.name
    assert report.quantized_layers == report.weight_layers == len(precision.weight_layers(fixed))
    onnx.checker.check_model(fixed, full_check=True)
    import onnxruntime as ort

    def run(path):
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": batch})[0]

    np.testing.assert_allclose(run(tmp_path / "int8.onnx"), run(tmp_path / "raw.onnx"), rtol=0, atol=1e-5)
