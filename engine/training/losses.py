"""Per-head training losses that leave missing labels out.

Targets come from :class:`engine.data.image_dataset.ImageDataset`: single-label heads get an int64 class index per
example (``-1`` = missing), multi-label and regression heads a float32 vector per example (``NaN`` =
missing entry). The losses, for a batch of ``N`` examples:

* **single** — cross-entropy averaged over the examples whose class is known:
  ``sum_i CE(logits_i, y_i) / n_labelled`` (``0`` when no example in the batch is labelled).
* **multi** — binary cross-entropy with logits summed over the *labelled entries only* and averaged
  over the examples of the batch: ``sum_{i,j labelled} BCE(z_ij, y_ij) / N``. An example contributes
  the sum over its labelled labels, so a fully labelled example with ``L`` labels weighs ``L`` entries
  and an example with every entry missing contributes ``0`` (but still counts in ``N``).
* **regression** — standardised squared error averaged over the labelled entries:
  ``sum_{i,j labelled} ((x_ij - y_ij) / s_j)^2 / n_labelled_entries`` (``0`` when none), where ``s_j`` is
  the target std of output ``j`` (``HeadSpec.target_std``, held by the head as its ``target_std`` buffer;
  1 while a head has none). The head outputs ``z * s + m`` in the user's units, so this is the squared
  error of the standardised prediction ``z`` against ``(y - m) / s``: the loss and its gradients do not
  depend on the targets' units (targets around 1000 train like targets around 1).

* **segment / detect** (dense heads) — see :mod:`engine.training.dense_losses` (per-pixel cross-entropy
  over labelled pixels, optional Dice; torchvision's FCOS loss over the images with box labels).

The total is ``sum_h loss_weight_h * loss_h``. An example with nothing labelled for a head adds nothing
to that head's loss (and no gradient through it) but still trains the other heads.

Everything stays on the device (no ``.item()``), so computing a loss never forces a GPU sync. Each
head also reports its numerator and denominator (``sums`` / ``counts``) so an epoch's loss can be
computed exactly over all its batches: ``sum(sums) / sum(counts)``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from engine.network.dense_heads import DetectHead
from engine.network.graft_model import RegressionHead
from engine.network.heads import HeadSpec
from engine.training.dense_losses import dense_loss_terms


@dataclass
class LossResult:
    """``total``: the weighted sum used for backward. ``per_head``: each head's unweighted loss.
    ``sums``/``counts``: per head numerator and denominator (tensors on the device)."""

    total: torch.Tensor
    per_head: dict[str, torch.Tensor] = field(default_factory=dict)
    sums: dict[str, torch.Tensor] = field(default_factory=dict)
    counts: dict[str, torch.Tensor] = field(default_factory=dict)


def target_scales(heads: Mapping[str, torch.nn.Module]) -> dict[str, Any]:
    """``{head: target_std buffer}`` of the regression heads among ``heads`` (e.g. ``model.heads``): the
    scales :func:`compute_losses` divides the errors by, on whatever device the heads are; and
    ``{head: module}`` of the detect heads, whose loss needs the module (its points)."""
    found: dict[str, Any] = {name: m.target_std for name, m in heads.items() if isinstance(m, RegressionHead)}
    found.update({name: m for name, m in heads.items() if isinstance(m, DetectHead)})
    return found


def _terms(kind: str, out: torch.Tensor, target: torch.Tensor,
           scale: torch.Tensor | None, smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unreduced loss terms of float32 ``out`` and where a label is given: single ``(N,)`` cross-entropy,
    multi ``(N, K)`` binary cross-entropy, regression ``(N, K)`` squared error over ``scale``. Terms of
    missing labels are computed on a stand-in (class 0, target 0) and must be masked by the caller."""
    if kind == "single":
        target = target.long()
        return (F.cross_entropy(out, target.clamp(min=0), reduction="none", label_smoothing=smoothing),
                target >= 0)
    target = target.to(out.dtype)
    if target.dim() == 1 and out.dim() == 2:
        target = target.unsqueeze(1)
    valid = ~torch.isnan(target)
    safe = torch.where(valid, target, torch.zeros_like(target))
    if kind == "multi":
        return F.binary_cross_entropy_with_logits(out, safe, reduction="none"), valid
    if kind == "regression":
        diff = out - safe
        if scale is not None:
            diff = diff / scale.to(device=out.device, dtype=out.dtype)
        return diff * diff, valid
    raise ValueError(f"unknown head kind {kind!r}")


def head_loss_terms(kind: str, output: torch.Tensor, target: torch.Tensor,
                    scale: torch.Tensor | None = None, smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(numerator, denominator)`` of one head's loss on a batch; the loss is ``num / max(den, 1)``.

    ``scale`` (regression): the target std per output; the errors are divided by it (None: 1).
    Computed in float32 (outputs under autocast are cast up) with masks instead of boolean indexing,
    so there is no host-device synchronisation. ``smoothing``: label smoothing of a single-label head's
    cross-entropy (the blank examples stay masked out).
    """
    out = output.float()
    terms, valid = _terms(kind, out, target, scale, smoothing if kind == "single" else 0.0)
    num = torch.where(valid, terms, torch.zeros_like(terms)).sum()
    if kind == "multi":
        return num, torch.tensor(float(out.shape[0]), device=out.device)
    return num, valid.sum().to(out.dtype)


def entry_losses(kind: str, output: torch.Tensor, target: torch.Tensor,
                 scale: torch.Tensor | None = None) -> torch.Tensor:
    """Each example's own loss terms, as in the module docstring but not reduced: single -> ``(N,)``
    cross-entropy; multi -> ``(N, K)`` binary cross-entropy per label; regression -> ``(N, K)``
    standardised squared error per target. Missing labels are ``NaN`` (float32, on the device), so the
    per-image loss of a multi-label head is the sum of its labelled entries, of a regression head their mean."""
    terms, valid = _terms(kind, output.detach().float(), target, scale)
    return torch.where(valid, terms, torch.full_like(terms, math.nan))


def head_loss(kind: str, output: torch.Tensor, target: torch.Tensor,
              scale: torch.Tensor | None = None) -> torch.Tensor:
    """One head's loss on a batch, as defined in the module docstring."""
    num, den = head_loss_terms(kind, output, target, scale)
    return num / den.clamp(min=1.0)


def compute_losses(heads: Sequence[HeadSpec], outputs: Mapping[str, torch.Tensor],
                   targets: Mapping[str, torch.Tensor],
                   scales: Mapping[str, torch.Tensor] | None = None, smoothing: float = 0.0) -> LossResult:
    """All heads' losses and their weighted total (``HeadSpec.loss_weight``).

    ``scales``: the regression heads' target stds (:func:`target_scales` of the model's heads, already
    on the device); a regression head missing from it uses its spec's ``target_std`` (else 1). ``smoothing``:
    label smoothing for the single-label heads (training only: ``TrainConfig.label_smoothing``)."""
    result = LossResult(total=torch.zeros(()))
    total: torch.Tensor | None = None
    for spec in heads:
        scale = None
        if spec.dense:
            num, den = dense_loss_terms(spec, outputs[spec.name], targets[spec.name], (scales or {}).get(spec.name))
            total = _add_head(result, spec, num, den, total)
            continue
        if spec.kind == "regression":
            scale = (scales or {}).get(spec.name)
            if scale is None and spec.target_std is not None:
                scale = torch.tensor(spec.target_std, dtype=torch.float32)
        num, den = head_loss_terms(spec.kind, outputs[spec.name], targets[spec.name], scale, smoothing)
        total = _add_head(result, spec, num, den, total)
    if total is not None:
        result.total = total
    return result


def _add_head(result: LossResult, spec: HeadSpec, num: torch.Tensor, den: torch.Tensor,
              total: torch.Tensor | None) -> torch.Tensor:
    loss = num / den.clamp(min=1.0)
    result.per_head[spec.name] = loss
    result.sums[spec.name] = num.detach()
    result.counts[spec.name] = den.detach()
    term = loss * float(spec.loss_weight)
    return term if total is None else total + term


class LossAccumulator:
    """Adds up per-head numerators/denominators over many batches on the device; :meth:`values`
    syncs once and returns plain floats."""

    def __init__(self, heads: Sequence[HeadSpec]) -> None:
        self.heads = list(heads)
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}

    def add(self, result: LossResult) -> None:
        for name, value in result.sums.items():
            if name in self.sums:
                self.sums[name] = self.sums[name] + value
                self.counts[name] = self.counts[name] + result.counts[name]
            else:
                self.sums[name] = value.clone()
                self.counts[name] = result.counts[name].clone()

    def values(self) -> tuple[float | None, dict[str, float]]:
        """``(weighted total, {head: loss})``; ``(None, {})`` when nothing was added."""
        if not self.sums:
            return None, {}
        names = list(self.sums)
        stacked = torch.stack([torch.stack([self.sums[n].float(), self.counts[n].float()]) for n in names]).cpu()
        per_head = {n: float(stacked[i, 0]) / max(float(stacked[i, 1]), 1.0) for i, n in enumerate(names)}
        weights = {h.name: float(h.loss_weight) for h in self.heads}
        total = sum(weights.get(n, 1.0) * v for n, v in per_head.items())
        return total, per_head
