"""Losses of the dense heads, with missing labels left out as for the other heads (:mod:`engine.training.losses`).

Targets (:mod:`engine.data.dense_targets`): a segment head gets an int64 ``(N, H, W)`` mask of class indices at
the input's size, ``HeadSpec.ignore_index`` where a pixel is not labelled (every pixel of an image without a
mask); a detect head gets float32 ``(N, MAX_BOXES, 5)`` rows ``x1, y1, x2, y2, class`` in input pixels (class
-1: padding), all NaN for an image without box labels.

* **segment** — per-pixel cross-entropy over the labelled pixels of the batch,
  ``sum_{labelled px} CE / n_labelled_px``; with ``HeadSpec.dice`` = w > 0, plus ``w × (1 - mean soft Dice)``
  over the classes present in the batch's labelled pixels. As ``(num, den)``: ``den`` = labelled pixels,
  ``num`` = the CE sum plus ``w × Dice loss × den`` (0 / 0 for a batch with no labelled pixel).
* **detect** — torchvision's FCOS loss on the images with box labels
  (:meth:`engine.network.dense_heads.DetectHead.loss`): ``num`` that loss, ``den`` 1; a batch without any
  box label gives 0 / 0 (no gradient). An image labelled with zero boxes is a labelled negative.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from engine.network.heads import HeadSpec

DICE_EPS = 1.0  # the soft Dice's smoothing (a class with no pixel predicted or present scores 1, not 0/0)


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """``1 - mean_c Dice_c`` over the classes present among the labelled pixels, Dice_c being
    ``(2 Σ p_c y_c + eps) / (Σ p_c + Σ y_c + eps)`` with softmax probabilities p over labelled pixels only."""
    valid = target != ignore_index
    classes = logits.shape[1]
    probs = torch.softmax(logits.float(), dim=1) * valid.unsqueeze(1)
    onehot = F.one_hot(torch.where(valid, target, torch.zeros_like(target)), classes).permute(0, 3, 1, 2)
    onehot = onehot.to(probs.dtype) * valid.unsqueeze(1)
    dims = (0, 2, 3)
    inter, total = (probs * onehot).sum(dims), probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + DICE_EPS) / (total + DICE_EPS)
    present = onehot.sum(dims) > 0
    return torch.where(present, 1 - dice, torch.zeros_like(dice)).sum() / present.sum().clamp(min=1)


def segment_loss_terms(spec: HeadSpec, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out = output.float()
    target = target.long()
    n_valid = (target != spec.ignore_index).sum().to(out.dtype)
    ce = F.cross_entropy(out, target, ignore_index=spec.ignore_index, reduction="sum")
    if spec.dice > 0:
        ce = ce + float(spec.dice) * soft_dice_loss(out, target, spec.ignore_index) * n_valid
    return ce, n_valid


def dense_loss_terms(spec: HeadSpec, output: torch.Tensor, target: torch.Tensor,
                     module: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(numerator, denominator)`` of a dense head's loss on a batch (see the module docstring);
    ``module``: the detect head's module (it holds the points of the forward pass)."""
    if spec.kind == "segment":
        return segment_loss_terms(spec, output, target)
    if module is None:
        raise ValueError(f"the detect head {spec.name!r} needs its module for the loss")
    return module.loss(output, target)


def segment_image_losses(spec: HeadSpec, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each image's mean cross-entropy over its labelled pixels, ``(N,)`` (NaN: no labelled pixel)."""
    target = target.long()
    ce = F.cross_entropy(output.detach().float(), target, ignore_index=spec.ignore_index, reduction="none")
    valid = (target != spec.ignore_index).flatten(1).sum(1)
    sums = ce.flatten(1).sum(1)
    return torch.where(valid > 0, sums / valid.clamp(min=1), torch.full_like(sums, float("nan")))
