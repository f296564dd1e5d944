"""A reduced-precision export measured against its fp32 original, in one table.

:func:`compare_models` runs the fp32 file and each reduced one (fp16, int8) with onnxruntime on the CPU on
the same preprocessed images and reports, per head: top-1 agreement with fp32 and accuracy against the
labels (single-label), per-label agreement of the 0.5 decisions (multi-label), the mean absolute error
(regression, with labels) and the largest output difference (every head); per file: its size and its
median latency at batch 1 and 16. :meth:`ComparisonReport.table` prints it for the CLI and the window.

:func:`validation_images` finds the images to measure on (and to calibrate int8 with): the split a
project was trained on, read again from the data its training record names, with each head's labels.
Torch-free apart from that function, which reads the data with :mod:`engine.data.loading`.
"""
from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import GraftError
from engine.export.metadata import MULTI_THRESHOLD, OnnxPredictor, sigmoid
from engine.units import human_bytes, plural

if TYPE_CHECKING:
    from engine.surgery.session import Session

BATCH_SIZES = (1, 16)
CHUNK = 16  # images per onnxruntime run when computing the outputs


@dataclass
class HeadComparison:
    """One head of one reduced file against fp32 on the same images. Shares are in [0, 1].

    ``agreement``: single-label: the share of images whose top-1 class is fp32's; multi-label: the share
    of (image, label) decisions at 0.5 that are fp32's (``label_agreement`` per label). ``accuracy`` /
    ``reference_accuracy`` (single-label, labelled images only) and ``mae`` / ``reference_mae``
    (regression, labelled values only) are None without labels. ``max_diff``: the largest absolute
    difference of a raw output (logits, values), over every image and output."""

    name: str
    kind: str
    images: int
    max_diff: float
    agreement: float | None = None
    label_agreement: dict[str, float] = field(default_factory=dict)
    labelled: int = 0
    accuracy: float | None = None
    reference_accuracy: float | None = None
    mae: float | None = None
    reference_mae: float | None = None

    @property
    def loss_points(self) -> float | None:
        """Accuracy lost against fp32, in percentage points (negative: gained). Without labels, the share
        of images whose top-1 changed bounds it from above and stands in for it. None: not single-label."""
        if self.kind != "single":
            return None
        if self.accuracy is not None and self.reference_accuracy is not None:
            return 100.0 * (self.reference_accuracy - self.accuracy)
        return None if self.agreement is None else 100.0 * (1.0 - self.agreement)


@dataclass
class ModelTiming:
    """One file: its precision, size and median onnxruntime CPU latency (seconds) per batch size."""

    precision: str
    path: Path
    size_bytes: int
    latency: dict[int, float] = field(default_factory=dict)


@dataclass
class ComparisonReport:
    """fp32 (``reference``) against each reduced file (``candidates``); ``heads[precision]`` holds one
    :class:`HeadComparison` per output, in output order."""

    reference: ModelTiming
    candidates: list[ModelTiming]
    heads: dict[str, list[HeadComparison]]
    images: int
    where: str = ""
    threads: int = 0
    runs: int = 0
    reference_accuracy: dict[str, float | None] = field(default_factory=dict)
    reference_mae: dict[str, float | None] = field(default_factory=dict)
    labelled: dict[str, int] = field(default_factory=dict)

    def candidate(self, precision: str) -> ModelTiming:
        return next(c for c in self.candidates if c.precision == precision)

    def losses(self, precision: str, limit: float = 1.0) -> list[tuple[str, float]]:
        """``(head, points)`` of each single-label head that loses more than ``limit`` points."""
        out = []
        for h in self.heads.get(precision, []):
            points = h.loss_points
            if points is not None and points > limit + 1e-9:
                out.append((h.name, points))
        return out

    def table(self) -> str:
        """The comparison as text: one column per file, one row per measure."""
        cols = [self.reference] + list(self.candidates)
        rows: list[list[str]] = [["", *[c.precision for c in cols]]]

        def ratio(value: float, base: float) -> str:
            return f" ({value / base:.2f}x)" if base > 0 else ""

        rows.append(["file size", human_bytes(self.reference.size_bytes)]
                    + [human_bytes(c.size_bytes) + ratio(c.size_bytes, self.reference.size_bytes) for c in self.candidates])
        for b in sorted(self.reference.latency):
            ref = self.reference.latency[b]
            rows.append([f"latency, batch {b}", _ms(ref)]
                        + [(_ms(c.latency[b]) + ratio(c.latency[b], ref)) if b in c.latency else "-"
                           for c in self.candidates])
        names = [h.name for h in self.heads[self.candidates[0].precision]] if self.candidates else []
        for i, name in enumerate(names):
            per = [self.heads[c.precision][i] for c in self.candidates]
            kind = per[0].kind
            n = self.labelled.get(name, 0)
            if kind == "single":
                if self.reference_accuracy.get(name) is not None:
                    rows.append([f"{name}: accuracy ({n} labelled)", _pct(self.reference_accuracy[name])]
                                + [_pct(h.accuracy) + f" ({_signed(100 * (h.accuracy - h.reference_accuracy))})"
                                   for h in per])
                rows.append([f"{name}: top-1 agreement", ""] + [_pct(h.agreement) for h in per])
            elif kind == "multi":
                rows.append([f"{name}: per-label agreement", ""] + [_pct(h.agreement) for h in per])
                for label in per[0].label_agreement:
                    rows.append([f"  {label}", ""] + [_pct(h.label_agreement[label]) for h in per])
            elif kind == "regression" and self.reference_mae.get(name) is not None:
                rows.append([f"{name}: MAE ({n} labelled)", f"{self.reference_mae[name]:.4g}"]
                            + [f"{h.mae:.4g}" for h in per])
            rows.append([f"{name}: largest difference", ""] + [f"{h.max_diff:.3g}" for h in per])
        widths = [max(len(r[i]) for r in rows) for i in range(len(cols) + 1)]
        lines = ["  ".join(cell.ljust(w) if j == 0 else cell.rjust(w) for j, (cell, w) in enumerate(zip(r, widths))).rstrip()
                 for r in rows]
        threads = f"{self.threads} threads" if self.threads else "all cores"
        head = (f"compared on {plural(self.images, 'image')}{' ' + self.where if self.where else ''}; "
                f"onnxruntime CPU ({threads}), median of {self.runs} runs")
        return "\n".join([head] + lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _pct(share: float | None) -> str:
    return "-" if share is None else f"{100 * share:.1f} %"


def _signed(points: float) -> str:
    return f"{points:+.1f}"


# -- measuring ----------------------------------------------------------------------------------------

def run_outputs(predictor: OnnxPredictor, batch: np.ndarray) -> dict[str, np.ndarray]:
    """Every output for the whole batch, computed ``CHUNK`` images at a time."""
    parts: dict[str, list[np.ndarray]] = {n: [] for n in predictor.outputs}
    for start in range(0, len(batch), CHUNK):
        for n, v in predictor.predict_arrays(batch[start:start + CHUNK]).items():
            parts[n].append(np.asarray(v, dtype=np.float32))
    return {n: np.concatenate(v) for n, v in parts.items()}


def _latencies(predictors: Sequence[OnnxPredictor], batch: np.ndarray, sizes: Sequence[int],
               runs: int) -> list[dict[int, float]]:
    """Median latency per predictor and batch size; the files take turns, so a machine that gets busier
    half-way slows them all alike."""
    out: list[dict[int, float]] = [{} for _ in predictors]
    for size in sizes:
        x = np.ascontiguousarray(np.resize(batch, (size, *batch.shape[1:])))  # repeats images when fewer
        times: list[list[float]] = [[] for _ in predictors]
        for p in predictors:  # warm-up: the first runs allocate
            p.predict_arrays(x)
            p.predict_arrays(x)
        for _ in range(runs):
            for i, p in enumerate(predictors):
                t = time.perf_counter()
                p.predict_arrays(x)
                times[i].append(time.perf_counter() - t)
        for i in range(len(predictors)):
            out[i][size] = statistics.median(times[i])
    return out


def _top1(raw: np.ndarray) -> np.ndarray:
    return np.argmax(raw, axis=1)


def head_comparison(name: str, kind: str, labels: Sequence[str], ref: np.ndarray, got: np.ndarray,
                    target: np.ndarray | None) -> HeadComparison:
    """One head's numbers from the raw outputs of fp32 (``ref``) and the reduced file (``got``), both
    (N, outputs); ``target``: single: (N,) class indices with -1 missing; multi/regression: (N, outputs)
    with NaN missing; None without labels."""
    ref = np.asarray(ref, dtype=np.float64).reshape(len(ref), -1)
    got = np.asarray(got, dtype=np.float64).reshape(len(got), -1)
    diff = np.abs(ref - got)
    result = HeadComparison(name, kind, len(ref), float(diff.max()) if diff.size else 0.0)
    if kind == "single":
        a, b = _top1(ref), _top1(got)
        result.agreement = float(np.mean(a == b)) if len(a) else None
        if target is not None:
            t = np.asarray(target).reshape(-1)
            known = t >= 0
            result.labelled = int(known.sum())
            if result.labelled:
                result.reference_accuracy = float(np.mean(a[known] == t[known]))
                result.accuracy = float(np.mean(b[known] == t[known]))
    elif kind == "multi":
        a, b = sigmoid(ref) > MULTI_THRESHOLD, sigmoid(got) > MULTI_THRESHOLD
        result.agreement = float(np.mean(a == b)) if a.size else None
        result.label_agreement = {str(label): float(np.mean(a[:, j] == b[:, j])) for j, label in enumerate(labels)}
        if target is not None:
            result.labelled = int((~np.isnan(np.asarray(target, dtype=np.float64))).any(axis=1).sum())
    elif kind == "regression" and target is not None:
        t = np.asarray(target, dtype=np.float64).reshape(len(ref), -1)
        known = ~np.isnan(t)
        result.labelled = int(known.any(axis=1).sum())
        if known.any():
            result.reference_mae = _mae(ref, t, known)
            result.mae = _mae(got, t, known)
    return result


def _mae(pred: np.ndarray, t: np.ndarray, known: np.ndarray) -> float:
    """The mean over outputs of each output's mean absolute error on its labelled values (as training reports it)."""
    per = [float(np.abs(pred[known[:, j], j] - t[known[:, j], j]).mean()) for j in range(t.shape[1]) if known[:, j].any()]
    return sum(per) / len(per)


def compare_models(reference: str | Path, candidates: Sequence[str | Path], batch: np.ndarray,
                   targets: Mapping[str, np.ndarray] | None = None, *, timing: bool = True, runs: int = 10,
                   threads: int = 0, where: str = "") -> ComparisonReport:
    """Measure each candidate file against the fp32 ``reference`` on ``batch`` (preprocessed images,
    (N, 3, S, S) float32); ``targets`` ``{output: labels}`` as :func:`head_comparison` takes them.
    ``timing``: also measure latency (``runs`` timed runs per batch size, after two warm-up runs)."""
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if batch.ndim != 4 or not len(batch):
        raise GraftError("There are no images to compare the exports on.")
    ref = OnnxPredictor(reference, threads=threads)
    others = [OnnxPredictor(p, threads=threads) for p in candidates]
    for p in others:
        if p.outputs != ref.outputs:
            raise GraftError(f"{p.path.name} has outputs {p.outputs}, but {ref.path.name} has {ref.outputs}.")
    targets = dict(targets or {})
    ref_out = run_outputs(ref, batch)
    precision = [p.metadata.precision for p in others]
    heads: dict[str, list[HeadComparison]] = {}
    for p, prec in zip(others, precision):
        out = run_outputs(p, batch)
        rows = []
        for name in ref.outputs:
            spec = ref.specs.get(name)
            kind = spec.kind if spec is not None else "features"
            labels = spec.label_names if spec is not None else []
            rows.append(head_comparison(name, kind, labels, ref_out[name], out[name], targets.get(name)))
        heads[prec] = rows
    latency: list[dict[int, float]] = [{} for _ in range(1 + len(others))]
    if timing:
        latency = _latencies([ref, *others], batch, BATCH_SIZES, runs)
    report = ComparisonReport(
        ModelTiming(ref.metadata.precision, ref.path, ref.path.stat().st_size, latency[0]),
        [ModelTiming(prec, p.path, p.path.stat().st_size, lat) for p, prec, lat in zip(others, precision, latency[1:])],
        heads, len(batch), where, threads, runs if timing else 0)
    first = next(iter(heads.values()), [])
    report.reference_accuracy = {h.name: h.reference_accuracy for h in first}
    report.reference_mae = {h.name: h.reference_mae for h in first}
    report.labelled = {h.name: h.labelled for h in first}
    return report


# -- the images to measure on -------------------------------------------------------------------------

@dataclass
class ProjectImages:
    """Images from the data a project was trained on: ``calibration`` (training split) and
    ``validation`` (validation split) paths; ``targets`` ``{head: labels}`` of the validation images in
    the form :func:`head_comparison` takes; ``where``: a phrase saying where they come from, or why
    there are none."""

    calibration: list[Path] = field(default_factory=list)
    validation: list[Path] = field(default_factory=list)
    targets: dict[str, np.ndarray] = field(default_factory=dict)
    where: str = ""


def spread(items: Sequence[Any], limit: int) -> list[Any]:
    """At most ``limit`` items taken evenly over the sequence (all of them when there are fewer)."""
    items = list(items)
    if len(items) <= limit:
        return items
    step = len(items) / limit
    return [items[int(i * step)] for i in range(limit)]


def validation_images(session: "Session", data: str | os.PathLike | None = None, *, calibration: int = 64,
                      validation: int = 500) -> ProjectImages:
    """Calibration and validation images from ``data`` (default: the data the project's training record
    names), split as training split it (its seed and validation fraction), with the validation images'
    labels for the session's heads. Empty lists and a reason in ``where`` when there is no such data."""
    from engine.data.loading import load_data
    from engine.training.record import DEFAULT_SEED, DEFAULT_VAL_FRACTION, TrainingRecord

    record = TrainingRecord.latest(getattr(session, "project_extra", None))
    seed, fraction = DEFAULT_SEED, DEFAULT_VAL_FRACTION
    recorded = data is None
    if data is None:
        if record is None or not record.data:
            return ProjectImages(where="the project does not record the data it was trained on")
        data = record.data
        seed, fraction = record.seed, float(record.val_fraction)
        if not Path(data).exists():
            return ProjectImages(where=f"its training data {data} no longer exists")
    elif record is not None and record.data and _same(record.data, data):
        seed, fraction = record.seed, float(record.val_fraction)
    heads = session.heads
    try:
        source = load_data(data, heads or None, seed=seed, val_fraction=fraction, require_every_class=False)
    except GraftError as exc:
        if not recorded:  # the user named this data: say what is wrong with it
            raise
        return ProjectImages(where=f"its training data {Path(data).name} cannot be read ({str(exc).rstrip('.')})")
    images = ProjectImages()
    train = spread(source.train, calibration)
    val = spread(source.val, validation) if source.val else []
    images.calibration = [s.path for s in train]
    images.validation = [s.path for s in val]
    if val and heads:
        images.targets = _head_targets(heads, source, val)
    images.where = (f"from the validation split of {Path(data).name}" if val else f"of {Path(data).name}")
    return images


def _same(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return False


def _head_targets(heads: Sequence[Any], source: Any, samples: Sequence[Any]) -> dict[str, np.ndarray]:
    """The samples' labels for the session's heads (the data's classes and columns mapped as training maps them)."""
    import torch

    from engine.training.binding import bind_heads

    target_map = bind_heads(heads, source)
    stacked: dict[str, torch.Tensor] = {}
    for spec in target_map.data_heads:
        values = []
        for s in samples:
            v = s.targets.get(spec.name)
            if v is None:
                v = -1 if spec.kind == "single" else [math.nan] * spec.outputs
            values.append(v)
        dtype = torch.int64 if spec.kind == "single" else torch.float32
        stacked[spec.name] = torch.tensor(values, dtype=dtype)
    return {name: t.numpy() for name, t in target_map(stacked).items()}
