"""The evaluation's mistakes, image by image, and a label audit: built from the per-image outputs an
:class:`~engine.training.evaluation.EvalReport` keeps (``report.images`` / ``report.outputs``).

* :func:`cell_examples`: exactly the images a confusion-matrix cell counts (same arg-max, same labels).
* :func:`mistakes`: per head, worst first: single-label the wrong answers (highest loss first),
  multi-label each wrong label (a false positive or negative; :func:`label_errors` per label),
  regression the largest errors. :func:`errors_table` is every head's, for ``evaluate --errors``.
* :func:`worst_iou`: a dense head's images (segment, detect) by how well its mask or boxes cover the
  truth, worst first (segment: the evaluation's per-image mean IoU; detect: :func:`boxes_iou`, which
  also counts false boxes).
* :func:`label_audit`: labels the model contradicts with high confidence (likely mislabelled) and,
  for blank cells, the label it suggests; :func:`write_suggestions` writes them to a NEW CSV file and
  refuses to write over the data itself: Graft never changes the user's data.
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import GraftError
from engine.files import atomic_write
from engine.network.heads import DENSE_KINDS

AUDIT_CONFIDENCE = 0.9  # a label contradicted at least this confidently is listed as likely wrong
ERROR_COLUMNS = ("image", "head", "truth", "prediction", "confidence", "loss")
SUGGESTION_COLUMNS = ("image", "head", "column", "current", "suggested", "confidence", "reason")


@dataclass
class Example:
    """One image's answer for one head (multi-label / regression: for one ``label``).

    ``confidence``: the probability of ``prediction`` (None for regression and dense heads); ``loss``: the
    image's loss for the head (multi-label / regression with a label: that entry's); ``error``: regression
    only, prediction minus truth; ``iou``: dense heads only, the image's IoU (:func:`worst_iou`), and
    ``overlay`` what to draw over the image: ``kind``, ``names`` and the predicted ``mask`` (H×W class
    indices, with ``truth_mask``) or ``boxes`` / ``scores`` / ``labels`` (with ``truth_boxes`` /
    ``truth_labels``) in pixels of ``frame`` (width, height: what the model saw)."""

    image: str
    index: int
    head: str
    truth: str
    prediction: str
    confidence: float | None
    loss: float
    label: str | None = None
    error: float | None = None
    iou: float | None = None
    overlay: dict[str, Any] | None = field(default=None, compare=False, repr=False)  # arrays: not compared

    def row(self) -> list[str]:
        confidence = "" if self.confidence is None else f"{self.confidence:.4f}"
        return [self.image, self.head, self.truth, self.prediction, confidence, f"{self.loss:.4f}"]


@dataclass
class Suggestion:
    """A label cell the model disagrees with (``reason`` "contradicted") or fills (``reason`` "blank"):
    ``column`` of the data for ``image``, as it is (``current``, "" when blank) and as the model says."""

    image: str
    index: int
    head: str
    column: str
    current: str
    suggested: str
    confidence: float | None
    reason: str


def _outputs(report: Any, head: str):
    if head not in report.heads:
        raise GraftError(f"The evaluation has no head {head!r} (its heads: {', '.join(report.heads)}).")
    outputs = getattr(report, "outputs", {}).get(head)
    if outputs is None or len(getattr(report, "images", [])) != len(outputs.losses):
        raise GraftError("This evaluation kept no per-image results: evaluate again to see its images.")
    return outputs


def _names(report: Any, head: str) -> list[str]:
    names = report.heads[head].classes
    k = _outputs(report, head).values.shape[1]
    return names if len(names) == k else [str(i) for i in range(k)]


def _class_index(names: list[str], value: int | str, what: str) -> int:
    if isinstance(value, str):
        if value not in names:
            raise GraftError(f"No {what} class {value!r} (classes: {', '.join(names)}).")
        return names.index(value)
    if not 0 <= int(value) < len(names):
        raise GraftError(f"No {what} class number {value} (there are {len(names)}).")
    return int(value)


def _single(report: Any, head: str, i: int) -> Example:
    out = _outputs(report, head)
    names = _names(report, head)
    t, p = int(out.targets[i]), int(out.predicted[i])
    return Example(report.images[i], i, head, names[t] if t >= 0 else "", names[p], float(out.values[i, p]),
                   float(out.losses[i]))


def _worst_first(items: Iterable[Example]) -> list[Example]:
    return sorted(items, key=lambda e: (-(e.loss if not math.isnan(e.loss) else -math.inf), e.index))


def confusion_members(report: Any, head: str) -> list[list[list[int]]]:
    """``members[t][p]``: the indices (into ``report.images``) of the images of true class ``t`` that a
    single-label head answered ``p``, the very images its confusion matrix counts."""
    out = _outputs(report, head)
    if out.kind != "single":
        raise GraftError(f"Head {head!r} is not single-label: it has no confusion matrix.")
    k = out.values.shape[1]
    members: list[list[list[int]]] = [[[] for _ in range(k)] for _ in range(k)]
    for i, (t, p) in enumerate(zip(out.targets.tolist(), out.predicted.tolist())):
        if t >= 0:
            members[t][p].append(i)
    return members


def cell_examples(report: Any, head: str, truth: int | str, prediction: int | str) -> list[Example]:
    """The images in one confusion-matrix cell (row ``truth``, column ``prediction``: an index or a class
    name), worst first."""
    names = _names(report, head)
    t, p = _class_index(names, truth, "true"), _class_index(names, prediction, "predicted")
    return _worst_first(_single(report, head, i) for i in confusion_members(report, head)[t][p])


def label_errors(report: Any, head: str, label: str | int) -> tuple[list[Example], list[Example]]:
    """A multi-label head's false positives and false negatives for ``label``, most confident first."""
    out = _outputs(report, head)
    if out.kind != "multi":
        raise GraftError(f"Head {head!r} is not multi-label.")
    names = _names(report, head)
    j = _class_index(names, label, "label") if isinstance(label, str) else int(label)
    positives, negatives = [], []
    for i in range(len(report.images)):
        truth = out.targets[i, j]
        if math.isnan(truth):
            continue
        said, p = bool(out.predicted[i, j]), float(out.values[i, j])
        if said == (truth > 0.5):
            continue
        example = Example(report.images[i], i, head, _yes_no(names[j], truth > 0.5), _yes_no(names[j], said),
                          p if said else 1 - p, float(out.entry_losses[i, j]), label=names[j])
        (positives if said else negatives).append(example)
    return _worst_first(positives), _worst_first(negatives)


def _yes_no(label: str, on: bool) -> str:
    return label if on else f"not {label}"


def largest_errors(report: Any, head: str, limit: int | None = None) -> list[Example]:
    """A regression head's predictions by their error, largest first (one per labelled image and target)."""
    out = _outputs(report, head)
    if out.kind != "regression":
        raise GraftError(f"Head {head!r} is not a regression head.")
    names = _names(report, head)
    items = []
    for i in range(len(report.images)):
        for j, name in enumerate(names):
            truth = float(out.targets[i, j])
            if math.isnan(truth):
                continue
            value = float(out.values[i, j])
            items.append(Example(report.images[i], i, head, f"{truth:.4g}", f"{value:.4g}", None,
                                 float(out.entry_losses[i, j]), label=name if len(names) > 1 else None,
                                 error=value - truth))
    return _worst_first(items)[:limit]


def mistakes(report: Any, head: str, limit: int | None = None) -> list[Example]:
    """A head's mistakes, worst (highest loss) first; a dense head's images, lowest IoU first: see the
    module docstring."""
    out = _outputs(report, head)
    if out.kind in DENSE_KINDS:
        return worst_iou(report, head, limit)
    if out.kind == "single":
        wrong = [i for i, (t, p) in enumerate(zip(out.targets.tolist(), out.predicted.tolist())) if t >= 0 and t != p]
        return _worst_first(_single(report, head, i) for i in wrong)[:limit]
    if out.kind == "multi":
        items: list[Example] = []
        for j in range(out.values.shape[1]):
            fp, fn = label_errors(report, head, j)
            items += fp + fn
        return _worst_first(items)[:limit]
    return largest_errors(report, head, limit)


# -- dense heads: the worst IoU first -----------------------------------------------------------------------
BOX_SCORE = 0.3  # boxes scoring below this do not count in an image's IoU (what a person would be shown)
MATCH_IOU = 0.5  # a predicted box overlapping no true box of its class this much is a false box


def _box_arrays(data: Any, threshold: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (M×4) and labels (M) of predictions (``{"boxes", "scores", "labels"}``, those scoring at least
    ``threshold``) or of the truth (an M×5 array, x0 y0 x1 y1 label; rows with a negative or NaN label are
    padding)."""
    if isinstance(data, dict):
        boxes = np.asarray(data.get("boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(data.get("labels", np.zeros(len(boxes))), dtype=np.int64).reshape(-1)
        scores = data.get("scores")
        if scores is not None and threshold is not None:
            keep = np.asarray(scores, dtype=np.float64).reshape(-1) >= threshold
            boxes, labels = boxes[keep], labels[keep]
        return boxes, labels
    rows = np.asarray(data if data is not None else np.zeros((0, 5)), dtype=np.float64).reshape(-1, 5)
    rows = rows[np.isfinite(rows[:, 4]) & (rows[:, 4] >= 0)]
    return rows[:, :4], rows[:, 4].astype(np.int64)


def boxes_iou(predicted: Any, truth: Any, threshold: float = BOX_SCORE) -> float:
    """One image's box IoU: every true box counts its best IoU with a predicted box of its class (0 when
    missed), every predicted box (scoring at least ``threshold``) that overlaps no true box of its class by
    :data:`MATCH_IOU` counts 0 (a false box); the mean of those. 1: each object found exactly, nothing
    else; NaN when there is neither a true nor a predicted box."""
    import torch
    from torchvision.ops import box_iou

    p_boxes, p_labels = _box_arrays(predicted, threshold)
    t_boxes, t_labels = _box_arrays(truth, None)
    if len(p_boxes) == 0 and len(t_boxes) == 0:
        return math.nan
    if len(p_boxes) == 0 or len(t_boxes) == 0:
        return 0.0
    iou = box_iou(torch.as_tensor(t_boxes), torch.as_tensor(p_boxes)).numpy()
    iou = np.where(t_labels[:, None] == p_labels[None, :], iou, 0.0)
    found = iou.max(axis=1)
    false = int((iou.max(axis=0) < MATCH_IOU).sum())
    return float(found.sum() / (len(found) + false))


def _dense_text(kind: str, data: Any, names: list[str], threshold: float | None,
                ignore_index: int | None = None) -> str:
    """``circle 23% · square 4%`` (a mask's classes by share) or ``2 boxes: circle, square``."""
    if kind == "segment":
        mask = np.asarray(data).ravel()
        if ignore_index is not None:
            mask = mask[mask != ignore_index]
        mask = mask[(mask > 0) & (mask < len(names))].astype(np.int64)  # class 0: the background
        if mask.size == 0:
            return "background only"
        counts = np.bincount(mask, minlength=len(names))
        total = np.asarray(data).size
        order = [c for c in np.argsort(-counts, kind="stable") if counts[c] > 0][:3]
        return " · ".join(f"{names[c]} {counts[c] / total:.0%}" for c in order)
    boxes, labels = _box_arrays(data, threshold)
    if len(boxes) == 0:
        return "no boxes"
    words = [names[k] if 0 <= k < len(names) else str(k) for k in labels.tolist()]
    shown = ", ".join(words[:3]) + ("…" if len(words) > 3 else "")
    return f"{len(words)} box{'es' if len(words) != 1 else ''}: {shown}"


def _labelled(kind: str, truth: Any, ignore_index: int | None) -> bool:
    if truth is None:
        return False
    if kind == "segment":
        truth = np.asarray(truth)
        return bool(truth.size) and bool((truth != ignore_index).any() if ignore_index is not None else True)
    rows = np.asarray(truth, dtype=np.float64).reshape(-1, 5) if not isinstance(truth, dict) else None
    return rows is None or not np.isnan(rows[:, 4]).all()


def _overlay(kind: str, predicted: Any, truth: Any, names: list[str], threshold: float, ignore: int | None,
             frame: tuple[int, int] | None) -> dict[str, Any]:
    """What :attr:`Example.overlay` holds (see there)."""
    if kind == "segment":
        mask = np.asarray(predicted)
        return {"kind": kind, "names": names, "mask": mask, "truth_mask": np.asarray(truth), "ignore_index": ignore,
                "frame": (int(mask.shape[1]), int(mask.shape[0]))}
    boxes, labels = _box_arrays(predicted, None)
    scores = np.asarray(predicted.get("scores", np.ones(len(boxes))), dtype=np.float64).reshape(-1)
    t_boxes, t_labels = _box_arrays(truth, None)
    return {"kind": kind, "names": names, "boxes": boxes, "scores": scores, "labels": labels,
            "truth_boxes": t_boxes, "truth_labels": t_labels, "threshold": threshold,
            "frame": tuple(frame) if frame is not None else None}


def input_square(path: str | os.PathLike, spec: Any) -> dict[str, Any]:
    """Where the network's input square lies in the image at ``path`` (its resize and centre crop undone):
    what a dense head's mask and boxes are drawn over. ``region`` in pixels of the upright image of
    ``image_size``; ``frame``: the square's own pixels."""
    from engine.data.dense_targets import upright_size
    from engine.network.preprocess import crop_geometry

    w, h = upright_size(path)
    nw, nh, left, top = crop_geometry(w, h, spec)
    sx, sy = nw / w, nh / h
    return {"region": (left / sx, top / sy, (left + spec.size) / sx, (top + spec.size) / sy), "image_size": (w, h),
            "frame": (spec.size, spec.size)}


def worst_iou(report: Any, head: str, limit: int | None = None, spec: Any = None) -> list[Example]:
    """A dense head's labelled images by their IoU, lowest first (segment: the evaluation's per-image mean
    IoU over the classes in the image, ``HeadOutputs.values``; detect: :func:`boxes_iou`, which unlike the
    evaluation's per-image figure counts false boxes — an image full of them is a mistake too);
    each :class:`Example` carries what to draw (:attr:`Example.overlay`; with the input ``spec``, also
    where over the image file: :func:`input_square`, for a window that shows the whole image). Images
    without a mask or box label for the head are left out."""
    out = _outputs(report, head)
    if out.kind not in DENSE_KINDS:
        raise GraftError(f"Head {head!r} is not a segmentation or box head.")
    names = list(report.heads[head].classes)
    ignore = getattr(out, "ignore_index", None)
    threshold = getattr(out, "score_threshold", None) or BOX_SCORE
    items = []
    for i, image in enumerate(report.images):
        truth, predicted = out.targets[i], out.predicted[i]
        if not _labelled(out.kind, truth, ignore):
            continue
        iou = float(out.values[i]) if out.kind == "segment" else boxes_iou(predicted, truth, threshold)
        if math.isnan(iou):
            continue
        items.append(Example(image, i, head, _dense_text(out.kind, truth, names, None, ignore),
                             _dense_text(out.kind, predicted, names, threshold, ignore), None,
                             float(out.losses[i]), iou=iou,
                             overlay=_overlay(out.kind, predicted, truth, names, threshold, ignore,
                                              getattr(out, "frame", None))))
    items.sort(key=lambda e: (e.iou, e.index))
    items = items[:limit]
    if spec is not None:
        for e in items:
            try:
                e.overlay.update(input_square(e.image, spec))
            except GraftError:
                pass  # the file went away: drawn over the whole picture
    return items


def errors_table(report: Any, limit: int | None = None) -> list[Example]:
    """Every head's mistakes (regression: every labelled prediction), worst first."""
    items: list[Example] = []
    for head in report.heads:
        items += mistakes(report, head)
    return _worst_first(items)[:limit]


def label_audit(report: Any, confidence: float = AUDIT_CONFIDENCE,
                heads: Sequence[str] | None = None) -> list[Suggestion]:
    """Likely wrong labels (contradicted with at least ``confidence``, most confident first), then the
    model's labels for blank cells (most confident first). Regression heads only fill blanks: a value
    has no confidence to contradict one with."""
    contradicted: list[Suggestion] = []
    blanks: list[Suggestion] = []
    for head in heads if heads is not None else list(report.heads):
        out = _outputs(report, head)
        if out.kind in DENSE_KINDS:
            continue  # a mask or boxes are no label cell to suggest
        names = _names(report, head)
        columns = list(out.columns)
        for i, image in enumerate(report.images):
            if out.kind == "single":
                column = columns[0] if columns else "class"
                t, p = int(out.targets[i]), int(out.predicted[i])
                conf = float(out.values[i, p])
                if t < 0:
                    blanks.append(Suggestion(image, i, head, column, "", names[p], conf, "blank"))
                elif t != p and conf >= confidence:
                    contradicted.append(Suggestion(image, i, head, column, names[t], names[p], conf, "contradicted"))
                continue
            for j, name in enumerate(names):
                column = columns[j] if j < len(columns) else name
                truth = float(out.targets[i, j])
                if out.kind == "multi":
                    said, p = bool(out.predicted[i, j]), float(out.values[i, j])
                    conf = p if said else 1 - p
                    if math.isnan(truth):
                        blanks.append(Suggestion(image, i, head, column, "", str(int(said)), conf, "blank"))
                    elif said != (truth > 0.5) and conf >= confidence:
                        contradicted.append(Suggestion(image, i, head, column, str(int(truth > 0.5)), str(int(said)),
                                                       conf, "contradicted"))
                elif math.isnan(truth):
                    blanks.append(Suggestion(image, i, head, column, "", f"{float(out.values[i, j]):.6g}", None, "blank"))

    def key(s: Suggestion) -> tuple[float, int]:
        return (-(s.confidence if s.confidence is not None else -1.0), s.index)

    return sorted(contradicted, key=key) + sorted(blanks, key=key)


def _display_path(image: str, root: Path | None) -> str:
    if root is not None:
        try:
            return Path(image).resolve().relative_to(Path(root).resolve()).as_posix()
        except (ValueError, OSError):
            pass
    return str(image)


def refuse_data(path: str | os.PathLike, protected: Iterable[str | os.PathLike]) -> None:
    """GraftError when ``path`` is one of the ``protected`` files (the user's data)."""
    path = Path(path)
    try:
        target = path.resolve()
    except OSError:
        return
    for p in protected:
        try:
            if Path(p).resolve() == target:
                raise GraftError(f"{path} is part of the data: Graft never changes the user's data. "
                                 "Choose a new file.")
        except OSError:
            continue


def _write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[str]],
               protected: Iterable[str | os.PathLike]) -> Path:
    path = Path(path).expanduser()
    refuse_data(path, protected)
    rows = list(rows)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)

    atomic_write(path, write)
    return path


def write_errors(path: str | os.PathLike, examples: Sequence[Example], *, root: Path | None = None,
                 protected: Iterable[str | os.PathLike] = ()) -> Path:
    """``image, head, truth, prediction, confidence, loss`` per mistake, in the given order (worst first
    from :func:`errors_table`). ``root``: image paths are written relative to it where they can be;
    ``protected``: files (the data) that must not be written over."""
    rows = []
    for e in examples:
        row = e.row()
        row[0] = _display_path(e.image, root)
        rows.append(row)
    return _write_csv(path, ERROR_COLUMNS, rows, [*protected, *(e.image for e in examples)])


def write_suggestions(path: str | os.PathLike, suggestions: Sequence[Suggestion], *, root: Path | None = None,
                      protected: Iterable[str | os.PathLike] = ()) -> Path:
    """The label audit as a NEW CSV (``image, head, column, current, suggested, confidence, reason``),
    image paths as in the manifest (relative to ``root``) so each row names a cell of the data. Never
    written over ``protected`` files (the data's manifest) or an evaluated image."""
    rows = [[_display_path(s.image, root), s.head, s.column, s.current, s.suggested,
             "" if s.confidence is None else f"{s.confidence:.4f}", s.reason] for s in suggestions]
    return _write_csv(path, SUGGESTION_COLUMNS, rows, [*protected, *(s.image for s in suggestions)])

