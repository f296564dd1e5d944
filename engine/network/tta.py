"""Test-time augmentation: several views of each image through the model, their answers averaged.

One definition serves evaluation (:func:`engine.training.evaluation.evaluate` with ``tta=``) and the
export (:mod:`engine.export.tta`, the averaging inside the ONNX graph), so both give the same answer.
The views are made from the preprocessed input (N×C×S×S), so they need nothing but the tensor:

* ``"flip"`` — the image and its mirror image (left-right): 2 views.
* ``"flip+crops"`` — those two plus the four corner crops of 7/8 of the side, scaled back to S×S
  (bilinear): small shifts and a slight zoom-in, as random crops do in training: 6 views.

How the answers are averaged, by head kind (:func:`combine`), so that every output keeps its meaning:

* single-label: the mean of the views' **softmax probabilities**; the output is its logarithm, so the
  output stays logits whose softmax is exactly that mean (computed as a log-sum-exp of log-softmaxes);
* multi-label: the mean of each label's **sigmoid probability**; the output is that mean's logit, so a
  sigmoid gives the mean back (a difference of log-sum-exps of log-sigmoids, stable for large logits);
* regression and plain features: the mean of the values.

Averaging probabilities rather than logits is the usual choice for classifiers (a confident view does
not outvote the others by the size of its logits) and it keeps the outputs' meaning for
:func:`engine.export.metadata.decode`. A mirror image is only a fair view for images whose classes do not
depend on left and right (text, arrows, road signs do): TTA is a choice, off by default.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from engine.errors import GraftError

TTA_MODES = ("flip", "flip+crops")
CROP = 7 / 8  # the corner crops' share of the side


def check_tta(tta: str | None) -> str | None:
    """``tta`` when it is a mode of :data:`TTA_MODES`; None for None or "none"; else GraftError."""
    if tta in (None, "", "none", "off"):
        return None
    if tta not in TTA_MODES:
        raise GraftError(f"Unknown test-time augmentation {tta!r}: use none, " + " or ".join(TTA_MODES) + ".")
    return tta


def view_count(tta: str | None) -> int:
    return {None: 1, "flip": 2, "flip+crops": 6}[check_tta(tta)]


def describe_views(tta: str | None) -> str:
    tta = check_tta(tta)
    if tta is None:
        return "the image as it is"
    if tta == "flip":
        return "the image and its mirror image, averaged"
    return ("the image, its mirror image and its four corner crops of 7/8 of the side scaled back up, "
            "averaged")


def make_views(x: torch.Tensor, tta: str | None) -> torch.Tensor:
    """The views of a batch ``x`` (N, C, H, W), view-major: ``(V * N, C, H, W)``, rows ``v * N + i``."""
    tta = check_tta(tta)
    if tta is None:
        return x
    views = [x, torch.flip(x, dims=[3])]
    if tta == "flip+crops":
        h, w = int(x.shape[2]), int(x.shape[3])
        ch, cw = max(1, round(h * CROP)), max(1, round(w * CROP))
        for top, left in ((0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw)):
            crop = x[:, :, top:top + ch, left:left + cw]
            views.append(F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False))
    return torch.cat(views, dim=0)


def combine(kind: str, out: torch.Tensor, views: int) -> torch.Tensor:
    """The views' outputs ``(V * N, …)`` (view-major, as :func:`make_views`) averaged to ``(N, …)`` as
    the module docstring says for the head ``kind`` ("single", "multi", "regression", else features)."""
    if views == 1:
        return out
    stacked = out.reshape(views, -1, *out.shape[1:])
    if kind == "single":
        return torch.logsumexp(torch.log_softmax(stacked.float(), dim=-1), dim=0) - math.log(views)
    if kind == "multi":
        z = stacked.float()  # log(mean p) - log(1 - mean p), with log(sigmoid(z)) = -softplus(-z)
        return torch.logsumexp(-F.softplus(-z), dim=0) - torch.logsumexp(-F.softplus(z), dim=0)
    return stacked.mean(dim=0)


def probabilities(kind: str, out: torch.Tensor) -> torch.Tensor:
    """What :func:`combine` averages: softmax (single), sigmoid (multi) or the values themselves."""
    if kind == "single":
        return torch.softmax(out.float(), dim=-1)
    if kind == "multi":
        return torch.sigmoid(out.float())
    return out
