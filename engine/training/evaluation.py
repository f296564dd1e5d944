"""Evaluating a session's heads on labelled data: per-head loss and metrics, and a text report.

``evaluate(session, data)`` accepts a :class:`~engine.data.samples.DataSource` (its heads are matched with
the session's as in training; ``split`` picks "all" (default), "train" or "val" samples) or a list of
samples whose targets are already in the session heads' terms. The model is left on the CPU in eval mode.
The report also keeps each image's outputs, targets and losses per head (:class:`HeadOutputs`), which
``engine.explain.mistakes`` turns into confusion-cell galleries, mistakes and a label audit.
On a CPU a frozen trunk runs in onnxruntime (:func:`engine.runtime.onnx_trunk.trunk_runner`).
``tta`` ("flip" or "flip+crops", :mod:`engine.network.tta`) evaluates every image as the average of several
views (probabilities for single- and multi-label heads, values for regression): the same averaging that
``main.py export --tta`` puts inside an ONNX file, so both agree.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from engine.data.image_dataset import UNREADABLE
from engine.errors import GraftError
from engine.network.heads import KIND_TITLES, HeadSpec
from engine.network.tta import check_tta, combine, describe_views, make_views, view_count
from engine.runtime.allocator import release_free_memory
from engine.runtime.onnx_trunk import features_then_heads, trunk_runner
from engine.training.binding import bind_heads
from engine.training.device import (autocast_context, autocast_dtype, clean_loader_error, is_out_of_memory,
                                    out_of_memory_message, resolve_device)
from engine.training.loaders import MappedDataset, auto_num_workers, make_loader
from engine.training.losses import LossAccumulator, compute_losses, entry_losses, target_scales
from engine.training.dense_evaluation import collect_dense, dense_image_outputs
from engine.training.metrics import MetricSet
from engine.units import plural


@dataclass
class HeadReport:
    """One head's results. ``n``: examples with at least one label for this head. ``metrics``: the flat
    summary (``accuracy`` / ``macro_f1`` + ``f1/<label>`` / ``mae`` + ``mae/<target>``); ``details``: the
    full metrics (confusion matrix and class names, per-label F1, per-output MAE; see engine.training.metrics)."""

    name: str
    kind: str
    loss: float | None
    n: int
    metrics: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return list(self.details.get("classes") or self.details.get("labels") or [])

    @property
    def confusion(self) -> list[list[int]] | None:
        return self.details.get("confusion")

    @property
    def f1(self) -> list[float | None] | None:
        return self.details.get("f1")

    @property
    def mae(self) -> list[float | None] | None:
        return self.details.get("mae_per_output")


@dataclass
class HeadOutputs:
    """One head's answer for every evaluated image, in the order of :attr:`EvalReport.images`, so that a
    confusion cell, a mistake or a blank label can be traced back to its image.

    ``values``: ``(N, K)`` probabilities (single: softmax, multi: sigmoid) or predicted values
    (regression). ``predicted``: single ``(N,)`` arg-max class, multi ``(N, K)`` bool (``>= 0.5``), exactly
    what the metrics count; regression: the values. ``targets``: single ``(N,)`` class (-1 blank), else
    ``(N, K)`` (NaN blank), in the head's terms. ``losses``: ``(N,)`` each image's own loss (NaN when it
    has no label for the head); ``entry_losses``: ``(N, K)`` per label / target (multi, regression).
    ``columns``: the data column that feeds each output (single: one; an image folder's: none).
    Segment and detect heads keep per-image IoUs, masks and boxes instead: :mod:`engine.training.dense_evaluation`."""

    kind: str
    values: np.ndarray
    predicted: np.ndarray
    targets: np.ndarray
    losses: np.ndarray
    entry_losses: np.ndarray | None = None
    columns: list[str] = field(default_factory=list)
    ignore_index: int | None = None  # segment: the mask value of unlabelled pixels
    score_threshold: float | None = None  # detect: the head's threshold for the boxes it shows


@dataclass
class EvalReport:
    heads: dict[str, HeadReport]
    n_images: int
    loss: float | None  # weighted total over the heads (HeadSpec.loss_weight)
    seconds: float
    device: str = "cpu"
    images: list[str] = field(default_factory=list)  # the evaluated image files, in order
    outputs: dict[str, HeadOutputs] = field(default_factory=dict)  # per head, per image (not in to_dict)
    trunk_backend: str = "pytorch"  # what ran the trunk: "pytorch" | "onnxruntime"
    notes: list[str] = field(default_factory=list)
    tta: str | None = None  # test-time augmentation (engine.network.tta), None: the images as they are

    def to_dict(self) -> dict[str, Any]:
        return {"n_images": self.n_images, "loss": self.loss, "seconds": self.seconds, "device": self.device,
                "trunk_backend": self.trunk_backend, "notes": list(self.notes), "tta": self.tta,
                "heads": {n: h.__dict__.copy() for n, h in self.heads.items()}}

    def format(self) -> str:
        """A plain-text report for the terminal."""
        lines = [f"Evaluated {plural(self.n_images, 'image')} in {self.seconds:.1f} s on {self.device}"
                 + (" (trunk in onnxruntime)" if self.trunk_backend == "onnxruntime" else "")
                 + (f"; total loss {self.loss:.4f}" if self.loss is not None else "")]
        if self.tta:
            lines.append(f"test-time augmentation: {describe_views(self.tta)} ({view_count(self.tta)} views per image)")
        lines += [f"note: {n}" for n in self.notes]
        for h in self.heads.values():
            loss = f"loss {h.loss:.4f}" if h.loss is not None else "loss -"
            lines.append(f"{h.name} ({KIND_TITLES.get(h.kind, h.kind)}, {h.n} labelled): {loss}")
            d = h.details
            if h.kind == "single":
                acc = d.get("accuracy")
                lines.append(f"  accuracy {_num(acc)}")
                lines += _confusion_lines(d.get("classes") or [], d.get("confusion") or [])
            elif h.kind == "multi":
                lines.append(f"  macro F1 {_num(d.get('macro_f1'))}")
                width = max((len(x) for x in d.get("labels", [])), default=5)
                lines.append(f"  {'label'.ljust(width)}  {'F1':>6}  {'pos':>5}  {'n':>5}")
                for label, f1, pos, n in zip(d.get("labels", []), d.get("f1", []), d.get("support", []),
                                             d.get("n", [])):
                    lines.append(f"  {label.ljust(width)}  {_num(f1):>6}  {pos:>5}  {n:>5}")
            elif h.kind == "segment":
                lines.append(f"  mIoU {_num(d.get('miou'))}")
                lines += [f"  {c}: IoU {_num(v)}" for c, v in zip(d.get("classes", []), d.get("iou", []))]
            elif h.kind == "detect":
                lines.append(f"  mAP@0.5 {_num(d.get('map_50'))}  mAP@0.5:0.95 {_num(d.get('map'))}")
            else:
                lines.append(f"  MAE {_num(d.get('mae'), 4)}")
                if len(d.get("labels", [])) > 1:
                    for label, mae, n in zip(d["labels"], d.get("mae_per_output", []), d.get("n", [])):
                        lines.append(f"  {label}: MAE {_num(mae, 4)} ({n} labelled)")
        return "\n".join(lines)


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _confusion_lines(classes: list[str], matrix: list[list[int]]) -> list[str]:
    if not classes or not matrix:
        return []
    width = max(max(len(c) for c in classes), max(len(str(v)) for row in matrix for v in row), 4)
    out = ["  confusion (rows: true class, columns: predicted):",
           "  " + " " * width + "  " + "  ".join(c[:width].rjust(width) for c in classes)]
    for name, row in zip(classes, matrix):
        out.append("  " + name[:width].ljust(width) + "  " + "  ".join(str(v).rjust(width) for v in row))
    return out


def _labelled_examples(spec: HeadSpec, target: torch.Tensor) -> torch.Tensor:
    kind = spec.kind
    if kind == "segment":
        return (target != spec.ignore_index).flatten(1).any(dim=1).sum()
    if kind == "detect":
        return (~torch.isnan(target[:, 0, 0])).sum()
    if kind == "single":
        return (target >= 0).sum()
    t = target if target.dim() > 1 else target.unsqueeze(1)
    return (~torch.isnan(t)).any(dim=1).sum()


class _OutputCollector:
    """Keeps each batch's per-image outputs on the CPU (one copy per batch) for :class:`HeadOutputs`."""

    def __init__(self, specs: Sequence[HeadSpec], target_map: Any, modules: Any = None) -> None:
        self.specs = list(specs)
        self.modules = modules if modules is not None else {}
        self.parts: dict[str, list[tuple[torch.Tensor, ...]]] = {s.name: [] for s in self.specs}
        self.columns = {b.spec.name: _output_columns(b) for b in target_map.bindings}

    def add(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
            scales: dict[str, torch.Tensor]) -> None:
        for spec in self.specs:
            raw, target = outputs[spec.name], targets[spec.name]
            if spec.dense:
                self.parts[spec.name].append(dense_image_outputs(spec, raw, target, self.modules[spec.name]))
                continue
            out = raw.detach().float()
            if spec.kind == "single":
                values, predicted = torch.softmax(out, dim=1), raw.detach().argmax(dim=1)
            elif spec.kind == "multi":
                values = torch.sigmoid(out)
                predicted = values >= 0.5
            else:
                values = predicted = out
            terms = entry_losses(spec.kind, raw, target, scales.get(spec.name))
            self.parts[spec.name].append(tuple(t.cpu() for t in (values, predicted, target, terms)))

    def result(self) -> dict[str, HeadOutputs]:
        out = {}
        for spec in self.specs:
            if spec.dense:
                out[spec.name] = HeadOutputs(**collect_dense(spec, self.parts[spec.name]),
                                             columns=self.columns.get(spec.name, []))
                continue
            values, predicted, targets, terms = (torch.cat(p).numpy() for p in zip(*self.parts[spec.name]))
            if spec.kind == "single":
                losses, per_entry = terms.astype(np.float32), None
            else:
                targets = targets.reshape(len(targets), -1).astype(np.float32)
                per_entry = terms.astype(np.float32)
                labelled = ~np.isnan(per_entry)
                totals = np.where(labelled, per_entry, 0).sum(axis=1)
                if spec.kind == "regression":
                    totals = totals / np.maximum(labelled.sum(axis=1), 1)
                losses = np.where(labelled.any(axis=1), totals, np.nan).astype(np.float32)
            out[spec.name] = HeadOutputs(spec.kind, values.astype(np.float32), predicted, targets, losses, per_entry,
                                         self.columns.get(spec.name, []))
        return out


def _output_columns(binding: Any) -> list[str]:
    """The data column behind each of a head's outputs (a single-label head reads one column)."""
    columns = list(binding.data.columns)
    if binding.spec.kind == "single" or binding.spec.dense or not columns:
        return columns[:1]
    index = binding.columns.tolist() if binding.columns is not None else range(binding.spec.outputs)
    return [columns[j] for j in index]


def evaluate(session: Any, data: Any, batch_size: int = 64, device: str = "auto", *, split: str = "all",
             heads: Sequence[HeadSpec] | None = None, num_workers: int | None = None, amp: bool = True,
             on_progress: Callable[[int, int], None] | None = None, tta: str | None = None) -> EvalReport:
    """Loss and metrics of every session head on ``data``.

    ``data``: a DataSource (heads matched by name, labels mapped by name) or a list of samples; for a
    list, ``heads`` are the data's head specs (default: the session's own). ``on_progress(done, total)``
    is called after every batch. ``tta``: None (the images as they are), "flip" or "flip+crops" (see
    :mod:`engine.network.tta`; the views of a batch go through the model together, so a batch holds
    ``batch_size`` images times the number of views).
    """
    from engine.data.image_dataset import ImageDataset

    if split not in ("all", "train", "val"):
        raise GraftError(f"Unknown split {split!r}: use all, train or val.")
    if num_workers is not None and num_workers < 0:
        raise GraftError(f"The number of loader workers must not be negative (got {num_workers!r}).")
    tta = check_tta(tta)
    views = view_count(tta)
    if hasattr(data, "heads") and hasattr(data, "train"):
        source = data
        samples = {"all": list(data.train) + list(data.val), "train": list(data.train), "val": list(data.val)}[split]
    else:
        samples = list(data)
        source = SimpleNamespace(heads=list(heads) if heads is not None else session.heads, kind="")
    if not samples:
        raise GraftError("There are no images to evaluate.")
    target_map = bind_heads(session.heads, source)
    specs = target_map.heads
    dev = resolve_device(device)
    dtype = autocast_dtype(dev, amp)
    workers = auto_num_workers(len(samples), batch_size, num_workers, dev)
    dataset = MappedDataset(ImageDataset(samples, target_map.data_heads, session.input_spec, augment=False),
                            target_map)
    loader = make_loader(dataset, batch_size=batch_size, device=dev, num_workers=workers)
    model = session.model
    if tta is not None and any(s.dense for s in specs):
        raise GraftError("Test-time augmentation averages classification and regression heads; this model has "
                         "segment or detect heads: evaluate without it.")
    acc, metrics = LossAccumulator(specs), MetricSet(specs, model.heads)
    collected = _OutputCollector(specs, target_map, model.heads)
    counts: dict[str, torch.Tensor] = {}
    start = time.perf_counter()
    runner, note = trunk_runner(model, dev, len(samples) * views)  # converting it counts in the time taken
    done = 0
    try:
        model.to(dev)
        model.eval()
        scales = target_scales(model.heads)  # regression losses on the standardised scale, as in training
        nb = dev.type == "cuda"
        with torch.no_grad(), autocast_context(dev, dtype):
            for images, targets in loader:
                targets.pop(UNREADABLE, None)  # an image that did not decode has no labels: counted as unlabelled
                if dev.type != "cpu":
                    images = images.to(dev, non_blocking=nb)
                    targets = {k: v.to(dev, non_blocking=nb) for k, v in targets.items()}
                outputs = _outputs(model, runner, images, specs, tta)
                acc.add(compute_losses(specs, outputs, targets, scales))
                metrics.update(outputs, targets)
                collected.add(outputs, targets, scales)
                for spec in specs:
                    c = _labelled_examples(spec, targets[spec.name])
                    counts[spec.name] = counts[spec.name] + c if spec.name in counts else c
                done += images.shape[0]
                if on_progress is not None:
                    on_progress(done, len(samples))
    except GraftError as exc:
        raise clean_loader_error(exc) from None
    except RuntimeError as exc:
        if is_out_of_memory(exc):
            raise GraftError(out_of_memory_message(dev, batch_size, "evaluating")) from None
        raise
    finally:
        del loader
        if dev.type != "cpu":
            model.to("cpu")
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        model.eval()
        release_free_memory()
    total, per_head = acc.values()
    summaries, details = metrics.summary(), metrics.details()
    reports = {}
    for spec in specs:
        n = int(counts[spec.name].item()) if spec.name in counts else 0
        reports[spec.name] = HeadReport(spec.name, spec.kind, per_head.get(spec.name) if n else None, n,
                                        summaries[spec.name], details[spec.name])
    return EvalReport(reports, len(samples), total, time.perf_counter() - start, str(dev),
                      images=[str(s.path) for s in samples], outputs=collected.result(),
                      trunk_backend="onnxruntime" if runner is not None else "pytorch",
                      notes=[note] if note and runner is None else [], tta=tta)


def _outputs(model: Any, runner: Any, images: torch.Tensor, specs: Sequence[HeadSpec],
             tta: str | None) -> dict[str, torch.Tensor]:
    """The heads' outputs for a batch; with TTA the views' outputs averaged per head kind."""
    if tta is None:
        return features_then_heads(model, runner, images)
    views = view_count(tta)
    outputs = features_then_heads(model, runner, make_views(images, tta))
    kinds = {s.name: s.kind for s in specs}
    return {name: combine(kinds.get(name, "features"), out, views) for name, out in outputs.items()}
