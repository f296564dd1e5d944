"""Dense heads exported: masks and decoded boxes as ONNX outputs, verified like every export, and the same
predictions from the file (onnxruntime, no torch) as from the project."""
import numpy as np
import pytest
import torch
from PIL import Image

from engine.export.dense_decode import nms_boxes, to_image_frame
from engine.export.inference import predict_files
from engine.export.metadata import OnnxPredictor, read_metadata
from engine.export.onnx_export import export_onnx
from engine.network.dense_heads import build_dense_head, default_layers, select_boxes
from engine.network.graft_model import build_head
from engine.network.heads import HeadSpec
from engine.network.preprocess import InputSpec
from engine.surgery.operations import DeleteOutputLayer


@pytest.fixture(scope="module")
def dense_session(one_torch_thread):
    from engine.network.loading import load_network
    from engine.surgery.session import Session

    torch.manual_seed(0)
    s = Session(load_network("resnet18", random_init=True))
    s.model.input_spec = InputSpec(size=64, resize=73)
    s.do(DeleteOutputLayer())
    s.probe_order()
    cls = HeadSpec("cls", "single", labels=["a", "b"])
    s.insert_head(cls, build_head(cls, s.feature_dim), 0)
    for spec in (HeadSpec("seg", "segment", labels=["bg", "x", "y"]),
                 HeadSpec("box", "detect", labels=["x", "y"], score_threshold=0.05, max_detections=20)):
        spec.layers = default_layers(s.tree, 64)
        s.insert_head(spec, build_dense_head(spec, [s.tree.shapes[layer][0] for layer in spec.layers]),
                      len(s.model.heads))
    return s


def test_export_verifies_and_predicts_the_same(dense_session, tmp_path):
    rng = np.random.default_rng(0)
    images = []
    for i, size in enumerate(((80, 90), (64, 64), (120, 70))):
        path = tmp_path / f"im{i}.png"
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        images.append(path)
    report = export_onnx(dense_session, tmp_path / "dense.onnx", images=images[:2])
    assert report.verified and report.outputs == ["cls", "seg", "box"]
    assert report.random_diff["box"] <= report.allowed("box") and report.random_diff["seg"] <= report.allowed("seg")
    meta = read_metadata(tmp_path / "dense.onnx")
    assert [h.kind for h in meta.heads] == ["single", "segment", "detect"] and meta.heads[1].layers == ["layer2", "layer3", "layer4"]
    predictor = OnnxPredictor(tmp_path / "dense.onnx")
    arrays = predictor.predict_arrays(np.zeros((2, 3, 64, 64), np.float32))
    assert arrays["seg"].shape == (2, 3, 64, 64) and arrays["box"].shape == (2, 8 * 8 + 4 * 4 + 2 * 2, 4 + 2)
    from_file = predictor.predict_files(images)
    from_project = predict_files(dense_session, images)
    for a, b in zip(from_file, from_project):
        # masks: the arg-max of logits that agree to 1e-4; boxes: the same boxes, within 1e-3 input pixels
        assert (a["seg"].mask != b["seg"].mask).mean() < 1e-3
        assert a["seg"].mask.shape == (64, 64)
        assert [x["class"] for x in a["box"].boxes] == [x["class"] for x in b["box"].boxes]
        assert len(a["box"].boxes) > 0
        np.testing.assert_allclose([x["box"] for x in a["box"].boxes], [x["box"] for x in b["box"].boxes], atol=1e-3)
        np.testing.assert_allclose([x["score"] for x in a["box"].boxes], [x["score"] for x in b["box"].boxes], atol=1e-4)
        assert a["cls"].label == b["cls"].label
    d = from_file[0]["box"].to_dict()  # boxes as [x1, y1, x2, y2, score, label], in the input square's pixels
    assert d["boxes_frame"] == "input square" and len(d["boxes"][0]) == 6 and d["boxes"][0][5] in ("x", "y")
    first = from_file[0]["box"].boxes[0]
    assert d["boxes"][0][:5] == pytest.approx([*first["box"], first["score"]], abs=1e-3)
    assert from_file[0]["box"].image_size == from_project[0]["box"].image_size == (80, 90)
    d = from_file[0]["box"].to_dict(predictor.input_spec)  # in the image's pixels
    assert d["boxes_frame"] == "image"
    assert d["boxes"][0][:4] == pytest.approx(to_image_frame([first], (80, 90), predictor.input_spec)[0]["box"], abs=1e-3)


def test_onnxruntime_nms_is_torchvision_rule():
    """The post-processing predict applies (onnxruntime's NonMaxSuppression) keeps what select_boxes
    (torchvision's batched_nms) keeps."""
    rng = np.random.default_rng(3)
    spec = HeadSpec("box", "detect", outputs=3, score_threshold=0.2, nms_iou=0.5, max_detections=15)
    xy = rng.uniform(0, 50, (200, 2))
    wh = rng.uniform(4, 20, (200, 2))
    decoded = np.concatenate([xy, xy + wh, rng.uniform(0, 1, (200, 3))], axis=1).astype(np.float32)
    ours = nms_boxes(decoded, spec)
    (theirs,) = select_boxes(torch.from_numpy(decoded)[None], spec)
    assert len(ours) == len(theirs["labels"]) == 15
    assert [b["class"] for b in ours] == theirs["labels"].tolist()
    np.testing.assert_allclose([b["score"] for b in ours], theirs["scores"].numpy(), rtol=1e-6)
    np.testing.assert_allclose([b["box"] for b in ours], theirs["boxes"].numpy(), rtol=1e-6)


def test_boxes_back_in_image_pixels():
    spec = InputSpec(size=64, resize=73)
    # a 146 x 100 image: resized to 107 x 73, the 64-square cropped at (21, 4)
    (b,) = to_image_frame([{"box": [0.0, 0.0, 64.0, 64.0], "label": "x", "class": 0, "score": 1.0}], (146, 100), spec)
    assert b["box"] == pytest.approx([21 * 146 / 107, 4 * 100 / 73, 85 * 146 / 107, 68 * 100 / 73])
