"""Accumulating per-head metrics, over labelled entries only.

* single-label: accuracy and the confusion matrix (rows: true class, columns: predicted class), from
  the arg-max of the logits; examples whose class is missing (``-1``) are left out.
* multi-label: per-label F1 with the prediction ``sigmoid(logit) >= 0.5``, over the labelled entries of
  that label (``NaN`` entries left out), and macro F1 = the mean of the per-label F1 values that are
  defined. A label's F1 is undefined (``None``) when it has no positive in its labelled entries and
  none was predicted (``2TP + FP + FN == 0``).
* regression: mean absolute error per output over its labelled entries, and the mean of those.
* segment and detect: mIoU and per-class IoU, mAP@0.5 and mAP@0.5:0.95 (:mod:`engine.training.dense_metrics`).

Counts are kept as tensors on the device while accumulating (no sync per batch); :meth:`summary` and
:meth:`details` return plain Python floats, ints and lists.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from engine.network.heads import HeadSpec
from engine.training.dense_metrics import DetectMetrics, SegmentMetrics


class HeadMetrics:
    """Base: ``update(output, target)`` per batch, then ``summary()`` (flat ``{name: float}`` with the
    metrics that are defined) and ``details()`` (everything, plain data)."""

    def __init__(self, spec: HeadSpec) -> None:
        self.spec = spec
        self.labels = spec.label_names

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        raise NotImplementedError

    def summary(self) -> dict[str, float]:
        raise NotImplementedError

    def details(self) -> dict[str, Any]:
        raise NotImplementedError


class SingleLabelMetrics(HeadMetrics):
    def __init__(self, spec: HeadSpec) -> None:
        super().__init__(spec)
        k = spec.outputs
        self.confusion = torch.zeros(k * k, dtype=torch.float64)

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        k = self.spec.outputs
        target = target.long()
        valid = target >= 0
        pred = output.detach().argmax(dim=1)
        index = target.clamp(min=0) * k + pred
        counts = torch.bincount(index, weights=valid.to(torch.float64), minlength=k * k)
        if self.confusion.device != counts.device:
            self.confusion = self.confusion.to(counts.device)
        self.confusion += counts[: k * k]

    def matrix(self) -> list[list[int]]:
        k = self.spec.outputs
        return self.confusion.cpu().round().long().reshape(k, k).tolist()

    def details(self) -> dict[str, Any]:
        m = self.matrix()
        n = sum(map(sum, m))
        correct = sum(m[i][i] for i in range(len(m)))
        return {"kind": "single", "n": n, "accuracy": correct / n if n else None,
                "confusion": m, "classes": list(self.labels)}

    def summary(self) -> dict[str, float]:
        acc = self.details()["accuracy"]
        return {} if acc is None else {"accuracy": float(acc)}


class MultiLabelMetrics(HeadMetrics):
    THRESHOLD = 0.5

    def __init__(self, spec: HeadSpec) -> None:
        super().__init__(spec)
        self.counts = torch.zeros(4, spec.outputs, dtype=torch.float64)  # tp, fp, fn, labelled

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        target = target.float()
        if target.dim() == 1:
            target = target.unsqueeze(1)
        valid = ~torch.isnan(target)
        truth = (target > 0.5) & valid
        pred = (torch.sigmoid(output.detach().float()) >= self.THRESHOLD) & valid
        batch = torch.stack([(pred & truth).sum(0), (pred & ~truth).sum(0), (~pred & truth).sum(0),
                             valid.sum(0)]).to(torch.float64)
        if self.counts.device != batch.device:
            self.counts = self.counts.to(batch.device)
        self.counts += batch

    def details(self) -> dict[str, Any]:
        tp, fp, fn, n = (row.tolist() for row in self.counts.cpu())
        f1: list[float | None] = []
        for t, p, f in zip(tp, fp, fn):
            den = 2 * t + p + f
            f1.append(2 * t / den if den > 0 else None)
        defined = [v for v in f1 if v is not None]
        return {"kind": "multi", "labels": list(self.labels), "f1": f1,
                "macro_f1": sum(defined) / len(defined) if defined else None,
                "n": [int(round(v)) for v in n], "support": [int(round(t + f)) for t, f in zip(tp, fn)],
                "tp": [int(round(v)) for v in tp], "fp": [int(round(v)) for v in fp],
                "fn": [int(round(v)) for v in fn]}

    def summary(self) -> dict[str, float]:
        d = self.details()
        out: dict[str, float] = {}
        if d["macro_f1"] is not None:
            out["macro_f1"] = float(d["macro_f1"])
        for label, value in zip(d["labels"], d["f1"]):
            if value is not None:
                out[f"f1/{label}"] = float(value)
        return out


class RegressionMetrics(HeadMetrics):
    def __init__(self, spec: HeadSpec) -> None:
        super().__init__(spec)
        self.counts = torch.zeros(2, spec.outputs, dtype=torch.float64)  # abs error sum, labelled

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        target = target.float()
        out = output.detach().float()
        if target.dim() == 1:
            target = target.unsqueeze(1)
        valid = ~torch.isnan(target)
        err = torch.where(valid, (out - torch.where(valid, target, torch.zeros_like(target))).abs(),
                          torch.zeros_like(out))
        batch = torch.stack([err.sum(0), valid.sum(0)]).to(torch.float64)
        if self.counts.device != batch.device:
            self.counts = self.counts.to(batch.device)
        self.counts += batch

    def details(self) -> dict[str, Any]:
        sums, n = (row.tolist() for row in self.counts.cpu())
        mae = [s / c if c > 0 else None for s, c in zip(sums, n)]
        defined = [v for v in mae if v is not None]
        return {"kind": "regression", "labels": list(self.labels), "mae_per_output": mae,
                "mae": sum(defined) / len(defined) if defined else None, "n": [int(round(v)) for v in n]}

    def summary(self) -> dict[str, float]:
        d = self.details()
        out: dict[str, float] = {}
        if d["mae"] is not None:
            out["mae"] = float(d["mae"])
        if len(d["labels"]) > 1:
            for label, value in zip(d["labels"], d["mae_per_output"]):
                if value is not None:
                    out[f"mae/{label}"] = float(value)
        return out


KIND_METRICS = {"single": SingleLabelMetrics, "multi": MultiLabelMetrics, "regression": RegressionMetrics,
                "segment": SegmentMetrics, "detect": DetectMetrics}


def head_metrics(spec: HeadSpec, module: Any = None) -> HeadMetrics:
    """The metrics of one head; ``module`` (a detect head's): what decodes its raw outputs."""
    if spec.kind == "detect":
        return DetectMetrics(spec, module)
    return KIND_METRICS[spec.kind](spec)


class MetricSet:
    """Metrics for several heads at once. ``modules``: the model's heads (``model.heads``), which detect
    heads' metrics need to decode their outputs."""

    def __init__(self, heads: Sequence[HeadSpec], modules: Mapping[str, Any] | None = None) -> None:
        modules = modules if modules is not None else {}
        self.heads = {h.name: head_metrics(h, modules[h.name] if h.name in modules else None) for h in heads}

    def update(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> None:
        for name, m in self.heads.items():
            m.update(outputs[name], targets[name])

    def summary(self) -> dict[str, dict[str, float]]:
        return {name: m.summary() for name, m in self.heads.items()}

    def details(self) -> dict[str, dict[str, Any]]:
        return {name: m.details() for name, m in self.heads.items()}


MAIN_METRIC = {"single": "accuracy", "multi": "macro_f1", "regression": "mae", "segment": "miou", "detect": "map_50"}


def headline(kind: str, summary: Mapping[str, float]) -> str:
    """``"acc 0.912"`` / ``"F1 0.701"`` / ``"MAE 0.123"`` (``-`` when undefined): one head in one word."""
    key = MAIN_METRIC[kind]
    short = {"accuracy": "acc", "macro_f1": "F1", "mae": "MAE", "miou": "mIoU", "map_50": "mAP50"}[key]
    value = summary.get(key)
    return f"{short} {value:.3f}" if value is not None else f"{short} -"


def selection_score(heads: Sequence[HeadSpec], summary: Mapping[str, Mapping[str, float]]) -> float | None:
    """The heads' validation metric as one number, higher better: what picks the best epoch and the best
    stage. Per head its :data:`MAIN_METRIC` (accuracy, macro F1, mIoU, mAP@0.5; for regression minus the MAE
    in units of the targets' std, so that heads in other units weigh alike), then the mean over the heads
    that have one; None when none has (ties and None are broken by the validation loss:
    :func:`better_epoch`). With a segment or detect head, None (the loss decides): mAP@0.5 and mIoU of a
    barely trained dense head on a small validation split swing from epoch to epoch, and their mean with the
    accuracy kept an early epoch whose boxes all scored below the threshold (tests/commands/test_cli_dense.py);
    the loss weighs every head as it trains."""
    if any(spec.dense for spec in heads):
        return None
    scores = []
    for spec in heads:
        value = (summary.get(spec.name) or {}).get(MAIN_METRIC.get(spec.kind, ""))
        if value is None or not math.isfinite(value):
            continue
        if spec.kind == "regression":
            std = [s for s in (spec.target_std or []) if s > 0]
            value = -value / (sum(std) / len(std) if std else 1.0)
        scores.append(float(value))
    return sum(scores) / len(scores) if scores else None


def better_epoch(score: float | None, loss: float | None, best_score: float | None, best_loss: float | None) -> bool:
    """Whether a validation result (``score``: :func:`selection_score`, ``loss``) beats the best so far: the
    higher score, and on a tie (or without scores) the lower loss. Label smoothing and weight averaging make
    the loss and the metric disagree (the loss rising while the accuracy still climbs); a person reading
    "the best validation epoch" means the metric."""
    if loss is None and score is None:
        return False
    if score is not None and best_score is not None and not math.isclose(score, best_score, rel_tol=0, abs_tol=1e-12):
        return score > best_score
    if best_loss is None:
        return best_score is None or (score is not None and score >= best_score)
    return loss is not None and loss < best_loss
