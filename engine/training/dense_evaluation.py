"""What an evaluation keeps per image for a dense head (:class:`engine.training.evaluation.HeadOutputs`), compact
enough for thousands of images: segment heads their predicted and labelled masks (uint8 / int16), detect heads
the boxes chosen as predictions show them; both each image's IoU, for ranking the worst images first.

* segment — ``values`` ``(N,)`` the image's mean IoU over the classes in it (NaN: no labelled pixel),
  ``predicted`` ``(N, S, S)`` uint8 arg-max classes, ``targets`` ``(N, S, S)`` int16 labels (ignore value kept),
  ``losses`` ``(N,)`` mean cross-entropy over its labelled pixels.
* detect — ``values`` ``(N,)`` mean best IoU of its labelled boxes with predicted boxes of their class
  (NaN: no box labels), ``predicted`` a list of ``{"boxes", "scores", "labels"}`` NumPy arrays per image (the
  head's score threshold, NMS and box limit), ``targets`` ``(N, MAX_BOXES, 5)``, ``losses`` ``1 - values``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from engine.network.dense_heads import select_boxes
from engine.network.heads import HeadSpec
from engine.training.dense_losses import segment_image_losses
from engine.training.dense_metrics import detect_image_iou, segment_image_iou


def dense_image_outputs(spec: HeadSpec, raw: torch.Tensor, target: torch.Tensor, module: Any) -> tuple[Any, ...]:
    """One batch's ``(values, predicted, targets, losses)`` on the CPU (see the module docstring)."""
    if spec.kind == "segment":
        pred = raw.detach().argmax(dim=1)
        iou = segment_image_iou(pred, target.long(), spec.outputs, spec.ignore_index).cpu()
        losses = segment_image_losses(spec, raw, target).cpu()
        return iou, pred.to(torch.uint8).cpu(), target.to(torch.int16).cpu(), losses
    decoded = module.decode(raw.detach().float(), module._last_grid[1])
    chosen = select_boxes(decoded, spec)
    iou = detect_image_iou(chosen, target)
    found = [{k: v.cpu().numpy() for k, v in c.items()} for c in chosen]
    return iou, found, target.float().cpu(), 1.0 - iou


def collect_dense(spec: HeadSpec, parts: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
    """The batches' parts joined: the fields of a HeadOutputs (kind, values, predicted, targets, losses)."""
    values = torch.cat([p[0] for p in parts]).numpy().astype(np.float32)
    targets = torch.cat([p[2] for p in parts]).numpy()
    losses = torch.cat([p[3] for p in parts]).numpy().astype(np.float32)
    if spec.kind == "segment":
        predicted: Any = torch.cat([p[1] for p in parts]).numpy()
    else:
        predicted = [image for p in parts for image in p[1]]
    extra = {"ignore_index": spec.ignore_index} if spec.kind == "segment" else {"score_threshold": spec.score_threshold}
    return {"kind": spec.kind, "values": values, "predicted": predicted, "targets": targets, "losses": losses, **extra}
