"""Dense heads' masked losses and their metrics against small cases worked out by hand."""
import math

import pytest
import torch
import torch.nn.functional as F

from engine.network.dense_heads import MAX_BOXES, build_dense_head
from engine.network.heads import HeadSpec
from engine.training.dense_losses import segment_image_losses, soft_dice_loss
from engine.training.dense_metrics import DetectMetrics, SegmentMetrics
from engine.training.losses import compute_losses, target_scales


def _boxes(*rows, missing=False):
    t = torch.zeros(MAX_BOXES, 5)
    t[:, 4] = -1
    if missing:
        return torch.full((MAX_BOXES, 5), math.nan)
    for i, r in enumerate(rows):
        t[i] = torch.tensor(r, dtype=torch.float32)
    return t


def test_segment_loss_leaves_out_ignored_pixels_and_unlabelled_images():
    torch.manual_seed(0)
    spec = HeadSpec("seg", "segment", outputs=3, ignore_index=255)
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    mask = torch.randint(0, 3, (2, 4, 4))
    mask[0, 0, :2] = 255  # two ignored pixels
    mask[1] = 255  # an image without a mask
    result = compute_losses([spec], {"seg": logits}, {"seg": mask})
    valid = mask != 255
    by_hand = F.cross_entropy(logits.permute(0, 2, 3, 1)[valid], mask[valid])
    assert float(result.per_head["seg"].detach()) == pytest.approx(float(by_hand), rel=1e-6)
    assert float(result.counts["seg"]) == 14
    result.total.backward()
    assert float(logits.grad[1].abs().sum()) == 0.0  # the unlabelled image teaches nothing
    assert float(logits.grad[0, :, 0, :2].abs().sum()) == 0.0
    per_image = segment_image_losses(spec, logits, mask)
    assert math.isnan(float(per_image[1])) and float(per_image[0]) == pytest.approx(float(by_hand), rel=1e-6)
    nothing = compute_losses([spec], {"seg": logits}, {"seg": torch.full_like(mask, 255)})
    assert float(nothing.total) == 0.0 and float(nothing.counts["seg"]) == 0


def test_dice_option():
    target = torch.tensor([[[0, 0], [1, 1]]])
    perfect = F.one_hot(target, 2).permute(0, 3, 1, 2).float() * 50
    assert float(soft_dice_loss(perfect, target, 255)) == pytest.approx(0.0, abs=1e-6)
    wrong = F.one_hot(1 - target, 2).permute(0, 3, 1, 2).float() * 50
    # each class: 2 labelled pixels, none predicted: Dice (0 + 1) / (2 + 2 + 1) = 0.2, loss 0.8
    assert float(soft_dice_loss(wrong, target, 255)) == pytest.approx(0.8, abs=1e-4)
    spec, plain = HeadSpec("s", "segment", outputs=2, dice=1.0), HeadSpec("s", "segment", outputs=2)
    with_dice = compute_losses([spec], {"s": wrong}, {"s": target}).per_head["s"]
    without = compute_losses([plain], {"s": wrong}, {"s": target}).per_head["s"]
    assert float(with_dice - without) == pytest.approx(0.8, abs=1e-4)


def test_detect_loss_skips_images_without_box_labels():
    torch.manual_seed(0)
    spec = HeadSpec("box", "detect", outputs=2, layers=["a", "b"])
    head = build_dense_head(spec, [8, 16])
    maps = [torch.randn(3, 8, 8, 8), torch.randn(3, 16, 4, 4)]
    raw = head(maps, (64, 64))
    raw.retain_grad()
    targets = torch.stack([_boxes([8, 8, 40, 40, 1]), _boxes(missing=True), _boxes()])  # the last: no objects
    result = compute_losses([spec], {"box": raw}, {"box": targets}, target_scales({"box": head}))
    assert float(result.counts["box"]) == 1 and float(result.total) > 0
    result.total.backward()
    assert float(raw.grad[1].abs().sum()) == 0.0  # unlabelled: left out
    assert float(raw.grad[2].abs().sum()) > 0.0  # labelled with no box: a negative example
    raw2 = head(maps, (64, 64))
    none = compute_losses([spec], {"box": raw2}, {"box": torch.stack([_boxes(missing=True)] * 3)},
                          target_scales({"box": head}))
    assert float(none.total) == 0.0 and float(none.counts["box"]) == 0


def test_segment_metrics_known_case():
    spec = HeadSpec("seg", "segment", labels=["bg", "fg", "other"])
    target = torch.tensor([[[0, 0], [1, 1]], [[255, 255], [255, 255]]])
    pred = torch.tensor([[[0, 1], [1, 1]], [[2, 2], [2, 2]]])  # the second image is all ignored
    m = SegmentMetrics(spec)
    m.update(F.one_hot(pred, 3).permute(0, 3, 1, 2).float(), target)
    d = m.details()
    assert d["iou"][0] == pytest.approx(0.5) and d["iou"][1] == pytest.approx(2 / 3)
    assert d["iou"][2] is None  # never labelled nor predicted on a labelled pixel
    assert d["miou"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert m.summary() == pytest.approx({"miou": (0.5 + 2 / 3) / 2, "iou/bg": 0.5, "iou/fg": 2 / 3})


def test_detect_metrics_known_case():
    spec = HeadSpec("box", "detect", labels=["a", "b"])
    decoded = torch.zeros(3, 4, 6)
    decoded[0, 0] = torch.tensor([10, 10, 50, 50, 0.9, 0.0])  # matches its label exactly
    decoded[1, 0] = torch.tensor([0, 0, 20, 20, 0.0, 0.8])  # IoU with its label (0,0,40,40) is 0.25
    targets = torch.stack([_boxes([10, 10, 50, 50, 0]), _boxes([0, 0, 40, 40, 1]), _boxes(missing=True)])
    m = DetectMetrics(spec)
    m.update(None, targets, decoded=decoded)
    d = m.details()
    assert d["n"] == 2
    assert d["map_50"] == pytest.approx(0.5)  # class a: AP 1, class b: AP 0
    assert 0.4 < d["map"] <= 0.5
    exact = DetectMetrics(spec)
    exact.update(None, targets[:1], decoded=decoded[:1])
    assert exact.summary()["map_50"] == pytest.approx(1.0) and exact.summary()["map"] == pytest.approx(1.0)
