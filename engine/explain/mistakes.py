"""The evaluation's mistakes, image by image, and a label audit: built from the per-image outputs an
:class:`~engine.training.evaluation.EvalReport` keeps (``report.images`` / ``report.outputs``).

* :func:`cell_examples`: exactly the images a confusion-matrix cell counts (same arg-max, same labels).
* :func:`mistakes`: per head, worst first: single-label the wrong answers (highest loss first),
  multi-label each wrong label (a false positive or negative; :func:`label_errors` per label),
  regression the largest errors. :func:`errors_table` is every head's, for ``evaluate --errors``.
* :func:`label_audit`: labels the model contradicts with high confidence (likely mislabelled) and,
  for blank cells, the label it suggests; :func:`write_suggestions` writes them to a NEW CSV file and
  refuses to write over the data itself: Graft never changes the user's data.
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import GraftError
from engine.files import atomic_write

AUDIT_CONFIDENCE = 0.9  # a label contradicted at least this confidently is listed as likely wrong
ERROR_COLUMNS = ("image", "head", "truth", "prediction", "confidence", "loss")
SUGGESTION_COLUMNS = ("image", "head", "column", "current", "suggested", "confidence", "reason")


@dataclass
class Example:
    """One image's answer for one head (multi-label / regression: for one ``label``).

    ``confidence``: the probability of ``prediction`` (None for regression); ``loss``: the image's loss
    for the head (multi-label / regression with a label: that entry's); ``error``: regression only,
    prediction minus truth."""

    image: str
    index: int
    head: str
    truth: str
    prediction: str
    confidence: float | None
    loss: float
    label: str | None = None
    error: float | None = None

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
    """A head's mistakes, worst (highest loss) first: see the module docstring."""
    out = _outputs(report, head)
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

