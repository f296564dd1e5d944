"""Metrics of the dense heads, from maintained implementations (torchmetrics; pycocotools for mAP).

* segment — per-class IoU from torchmetrics' ``MulticlassJaccardIndex`` over the labelled pixels
  (``HeadSpec.ignore_index`` left out) and mIoU, the mean over the classes that occur (in the labels or the
  predictions; a class neither labelled nor predicted anywhere has no IoU). Summary ``miou`` and
  ``iou/<class>``.
* detect — ``MeanAveragePrecision`` (COCO rules, pycocotools backend) over the images with box labels, the
  boxes chosen with :func:`engine.network.dense_heads.select_boxes` at score threshold
  :data:`MAP_SCORE_THRESHOLD` (mAP ranks by score, so low-scoring boxes count too). Summary ``map_50``
  (IoU 0.5) and ``map`` (IoU 0.5:0.95).

Both keep their state on the CPU; :meth:`summary` and :meth:`details` return plain floats and lists.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from engine.network.dense_heads import DetectHead, select_boxes
from engine.network.heads import HeadSpec

MAP_SCORE_THRESHOLD = 0.05  # the boxes mAP ranks (torchvision's FCOS keeps those above 0.2 for display; COCO 0.05)


class SegmentMetrics:
    """``update(logits (N, K, H, W), mask (N, H, W))``; see the module docstring."""

    def __init__(self, spec: HeadSpec) -> None:
        from torchmetrics.classification import MulticlassJaccardIndex

        self.spec = spec
        self.labels = spec.label_names
        self.metric = MulticlassJaccardIndex(spec.outputs, average="none", ignore_index=spec.ignore_index,
                                             validate_args=False)
        self.pixels = 0

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        target = target.detach().long().cpu()
        pred = output.detach().argmax(dim=1).cpu()
        self.pixels += int((target != self.spec.ignore_index).sum())
        self.metric.update(pred, target)

    def details(self) -> dict[str, Any]:
        confusion = self.metric.confmat.double()
        occurs = (confusion.sum(0) + confusion.sum(1)) > 0
        iou: list[float | None] = [None] * self.spec.outputs
        if self.pixels:
            values = self.metric.compute().tolist()
            iou = [float(v) if occurs[i] else None for i, v in enumerate(values)]
        defined = [v for v in iou if v is not None]
        return {"kind": "segment", "classes": list(self.labels), "iou": iou,
                "miou": sum(defined) / len(defined) if defined else None, "pixels": self.pixels,
                "n": self.pixels}

    def summary(self) -> dict[str, float]:
        d = self.details()
        out: dict[str, float] = {} if d["miou"] is None else {"miou": float(d["miou"])}
        out.update({f"iou/{c}": float(v) for c, v in zip(d["classes"], d["iou"]) if v is not None})
        return out


class DetectMetrics:
    """``update(raw (N, P, K + 5), boxes (N, MAX_BOXES, 5))`` with the detect head's module (``module``) to
    decode the raw outputs; see the module docstring."""

    def __init__(self, spec: HeadSpec, module: DetectHead | None = None) -> None:
        from torchmetrics.detection import MeanAveragePrecision

        self.spec = spec
        self.labels = spec.label_names
        self.module = module
        self.metric = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
        self.images = 0

    def update(self, output: torch.Tensor, target: torch.Tensor, decoded: torch.Tensor | None = None) -> None:
        """``decoded``: the outputs already decoded (``(N, P, 4 + K)``); else the module decodes ``output``."""
        labelled = ~torch.isnan(target[:, 0, 0])
        if not bool(labelled.any()):
            return
        if decoded is None:
            if self.module is None:
                raise ValueError(f"detect head {self.spec.name!r}: its metrics need the module to decode")
            decoded = self.module.decode(output.detach().float(), self.module._last_grid[1])
        index = labelled.nonzero().flatten()
        chosen = select_boxes(decoded[index], self.spec, MAP_SCORE_THRESHOLD)
        truth = []
        for rows in target[index].detach().float().cpu():
            keep = rows[:, 4] >= 0
            truth.append({"boxes": rows[keep, :4], "labels": rows[keep, 4].long()})
        self.metric.update([{k: v.cpu() for k, v in p.items()} for p in chosen], truth)
        self.images += len(truth)

    def details(self) -> dict[str, Any]:
        values: dict[str, float | None] = {"map": None, "map_50": None, "map_75": None}
        if self.images:
            found = self.metric.compute()
            for key in values:
                v = float(found[key])
                values[key] = v if math.isfinite(v) and v >= 0 else None  # -1: no box labelled at all
        return {"kind": "detect", "classes": list(self.labels), **values, "n": self.images}

    def summary(self) -> dict[str, float]:
        d = self.details()
        return {k: float(d[k]) for k in ("map_50", "map") if d[k] is not None}


def segment_image_iou(pred: torch.Tensor, target: torch.Tensor, classes: int, ignore: int) -> torch.Tensor:
    """Each image's mean IoU over the classes that occur in it (labelled pixels only), ``(N,)``; NaN for an
    image without a labelled pixel. For ranking images (the worst first), not the reported mIoU."""
    valid = target != ignore
    n = pred.shape[0]
    index = (torch.arange(n, device=pred.device).view(n, 1, 1) * classes + target.clamp(0, classes - 1)) * classes
    index = (index + pred.clamp(0, classes - 1))[valid]
    confusion = torch.bincount(index, minlength=n * classes * classes).view(n, classes, classes).double()
    inter = confusion.diagonal(dim1=1, dim2=2)
    union = confusion.sum(1) + confusion.sum(2) - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))
    occurs = union > 0
    mean = iou.sum(1) / occurs.sum(1).clamp(min=1)
    return torch.where(occurs.any(1), mean, torch.full_like(mean, float("nan"))).float()


def detect_image_iou(chosen: list[dict[str, torch.Tensor]], target: torch.Tensor) -> torch.Tensor:
    """Each image's mean, over its labelled boxes, of the best IoU with a predicted box of the same class
    (``(N,)``; 1 for a labelled image without boxes and none predicted, 0 with some predicted; NaN unlabelled)."""
    from torchvision.ops import box_iou

    out = []
    for found, rows in zip(chosen, target.detach().float().cpu()):
        if torch.isnan(rows[0, 0]):
            out.append(float("nan"))
            continue
        truth = rows[rows[:, 4] >= 0]
        boxes, labels = found["boxes"].cpu(), found["labels"].cpu()
        if not len(truth):
            out.append(1.0 if not len(boxes) else 0.0)
            continue
        best = []
        for row in truth:
            same = labels == int(row[4])
            best.append(float(box_iou(row[None, :4], boxes[same]).max()) if bool(same.any()) else 0.0)
        out.append(sum(best) / len(best))
    return torch.tensor(out, dtype=torch.float32)
