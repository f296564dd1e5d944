"""Dense heads' mistakes: each image's IoU (masks, boxes) against hand-counted cases, worst first."""
from __future__ import annotations

import math

import numpy as np
import pytest

from engine.errors import GraftError
from engine.explain.mistakes import boxes_iou, label_audit, mistakes, worst_iou
from engine.training.evaluation import EvalReport, HeadOutputs, HeadReport


def test_box_iou_per_image_counts_missed_and_false_boxes():
    truth = np.array([[0, 0, 10, 10, 0], [20, 20, 30, 30, 1], [np.nan] * 5])  # the NaN row is padding
    exact = {"boxes": truth[:2, :4], "scores": np.array([0.9, 0.8]), "labels": np.array([0, 1])}
    assert boxes_iou(exact, truth) == 1.0
    half = {"boxes": np.array([[0, 0, 10, 5]]), "scores": np.array([0.9]), "labels": np.array([0])}
    assert boxes_iou(half, truth) == pytest.approx((0.5 + 0) / 2)  # the second object is missed
    wrong_class = {"boxes": truth[:1, :4], "scores": np.array([0.9]), "labels": np.array([1])}
    assert boxes_iou(wrong_class, truth) == 0.0  # found the place, called it the other class: a false box
    extra = {"boxes": np.vstack([truth[:2, :4], [[50, 50, 60, 60]]]), "scores": np.array([0.9, 0.8, 0.7]),
             "labels": np.array([0, 1, 0])}
    assert boxes_iou(extra, truth) == pytest.approx(2 / 3)  # two found exactly, one false box
    extra["scores"] = np.array([0.9, 0.8, 0.1])
    assert boxes_iou(extra, truth, threshold=0.3) == 1.0  # the false one scores below the threshold
    nothing = {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}
    assert boxes_iou(nothing, truth) == 0.0
    assert math.isnan(boxes_iou(nothing, np.zeros((0, 5))))


@pytest.fixture
def report() -> EvalReport:
    seg_truth = np.zeros((3, 4, 4), np.int64)
    seg_truth[:, :2, :2] = 1
    seg_truth[2] = 255  # no mask for the third image
    seg_pred = seg_truth.copy()
    seg_pred[1] = 0  # the second misses its object
    seg_pred[2] = 0
    box_truth = np.full((3, 2, 5), np.nan)
    box_truth[0, 0] = [0, 0, 10, 10, 0]
    box_truth[1, 0] = [0, 0, 10, 10, 1]
    box_pred = [{"boxes": np.array([[0, 0, 10, 10]]), "scores": np.array([0.9]), "labels": np.array([0])},
                {"boxes": np.array([[0, 0, 10, 5]]), "scores": np.array([0.8]), "labels": np.array([1])},
                {"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)}]
    heads = {"seg": HeadReport("seg", "segment", 0.3, 2, {"miou": 0.6}, {"classes": ["bg", "circle"]}),
             "boxes": HeadReport("boxes", "detect", 0.5, 2, {"map_50": 0.5}, {"classes": ["circle", "square"]}),
             "shape": HeadReport("shape", "single", 0.1, 3, {}, {"classes": ["circle", "square"]})}
    outputs = {
        "seg": HeadOutputs("segment", np.array([1.0, (12 / 16 + 0) / 2, np.nan]), seg_pred, seg_truth,
                           np.array([0.1, 0.9, np.nan])),
        "boxes": HeadOutputs("detect", np.zeros(3), box_pred, box_truth, np.array([0.2, 0.7, np.nan])),
        "shape": HeadOutputs("single", np.array([[0.9, 0.1]] * 3), np.zeros(3, int), np.zeros(3, int),
                             np.full(3, 0.1), columns=["shape"]),
    }
    outputs["seg"].ignore_index = 255
    return EvalReport(heads, 3, 0.5, 1.0, images=["a.png", "b.png", "c.png"], outputs=outputs)


def test_worst_iou_lists_labelled_images_lowest_first_with_what_to_draw(report):
    seg = worst_iou(report, "seg")
    assert [e.image for e in seg] == ["b.png", "a.png"]  # c.png has no mask
    assert seg[0].iou == pytest.approx((12 / 16 + 0) / 2) and seg[1].iou == 1.0
    assert seg[0].truth == "circle 25%" and seg[0].prediction == "background only"
    assert seg[0].loss == pytest.approx(0.9) and (seg[0].overlay["mask"] == 0).all()
    assert seg[0].overlay["kind"] == "segment" and seg[0].overlay["frame"] == (4, 4)
    assert (seg[0].overlay["truth_mask"] == report.outputs["seg"].targets[1]).all()
    assert mistakes(report, "seg", limit=1) == seg[:1]
    boxes = worst_iou(report, "boxes")
    assert [(e.image, round(e.iou, 3)) for e in boxes] == [("b.png", 0.5), ("a.png", 1.0)]
    assert boxes[0].truth == "1 box: square" and boxes[0].prediction == "1 box: square"
    drawn = boxes[0].overlay
    assert drawn["boxes"].tolist() == [[0, 0, 10, 5]] and drawn["labels"].tolist() == [1]
    assert drawn["truth_boxes"].tolist() == [[0, 0, 10, 10]] and drawn["names"] == ["circle", "square"]
    with pytest.raises(GraftError, match="not a segmentation or box head"):
        worst_iou(report, "shape")


def test_the_label_audit_leaves_dense_heads_out(report):
    assert {s.head for s in label_audit(report, confidence=0.5)} <= {"shape"}


def test_dense_pictures_draw_the_mask_and_the_boxes():
    from PIL import Image

    from engine.explain.colours import class_colours
    from engine.explain.dense_pictures import draw_overlay

    grey = Image.new("RGB", (40, 40), (100, 100, 100))
    mask = np.zeros((4, 4), np.int64)
    mask[:, 2:] = 1
    out = np.asarray(draw_overlay(grey, {"kind": "segment", "mask": mask, "names": ["bg", "thing"]}, opacity=1.0))
    assert tuple(out[20, 30]) == tuple(class_colours(2)[1]) and tuple(out[20, 5]) == (100, 100, 100)
    boxes = {"kind": "detect", "names": ["thing"], "boxes": np.array([[2, 2, 6, 6], [0, 0, 1, 1]]),
             "scores": np.array([0.9, 0.1]), "labels": np.array([0, 0]), "truth_boxes": np.array([[1, 1, 9, 9]]),
             "truth_labels": np.array([0]), "frame": (10, 10), "threshold": 0.3}
    out = np.asarray(draw_overlay(Image.new("RGB", (200, 200), (100, 100, 100)), boxes))  # 20 px per frame pixel
    assert tuple(out[100, 119]) == tuple(class_colours(1, background=None)[0])  # the 0.9 box's right edge
    assert tuple(out[100, 180]) == (255, 255, 255)  # the true box's right edge, x = 9 * 20
    assert tuple(out[100, 80]) == (100, 100, 100)  # boxes are outlines
    assert tuple(out[19, 19]) == (100, 100, 100)  # the 0.1 box is below the threshold


def test_the_report_shows_miou_map_and_the_worst_iou_pictures(report, tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from engine.explain.report import build_report
    from engine.network.preprocess import InputSpec

    for name in report.images:
        Image.new("RGB", (64, 64), (90, 90, 90)).save(tmp_path / name)
    report.images = [str(tmp_path / n) for n in report.images]
    report.heads["seg"].details.update(miou=0.6, iou=[0.9, 0.3])
    report.heads["boxes"].details.update(map_50=0.5, map=0.25, map_75=0.2, n=2)
    del report.heads["shape"], report.outputs["shape"]
    session = SimpleNamespace(input_spec=InputSpec(size=32, resize=32), describe=lambda: "a test model")
    html = build_report(session, report)
    assert "mIoU 0.600" in html and "mAP@0.5 0.500 · mAP@0.5:0.95 0.250" in html
    assert "<td class='name'>circle</td><td>0.300</td>" in html
    assert html.count("IoU 0.") >= 4 and "Worst IoU" in html and "data:image/jpeg;base64," in html
    assert html.index("b.png") < html.index("a.png")  # the worst first


def test_input_square_undoes_the_resize_and_centre_crop(report, tmp_path):
    from PIL import Image

    from engine.explain.mistakes import input_square
    from engine.network.preprocess import InputSpec

    path = tmp_path / "wide.png"
    Image.new("RGB", (80, 60)).save(path)
    spec = InputSpec(size=32, resize=32)
    square = input_square(path, spec)  # resized to 43×32, the 32 px square from x = 5: x 9.3..68.8 of 80
    assert square["image_size"] == (80, 60) and square["frame"] == (32, 32)
    assert square["region"] == pytest.approx((5 * 80 / 43, 0, 37 * 80 / 43, 60))
    report.images = [str(path)] * 3
    seg = worst_iou(report, "seg", spec=spec)
    assert seg[0].overlay["region"] == pytest.approx(square["region"]) and seg[0].overlay["frame"] == (32, 32)
