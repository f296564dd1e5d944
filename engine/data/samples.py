"""What the readers produce: :class:`Sample` (an image and its targets) and :class:`DataSource` (labelled samples
split into train/val, with the heads they fill), and the wording their messages share.

Targets per sample and head: single-label -> class index (``-1`` when missing); multi-label and regression -> list
of floats (``NaN`` when missing).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.data.dense_targets import dense_counts
from engine.errors import GraftError
from engine.network.heads import HeadSpec
from engine.units import quoted

Target = int | list[float]

MAX_LISTED = 5


@dataclass
class Sample:
    """One image and its targets: ``{head: class index (-1 missing) | [float, …] (NaN missing)}``."""

    path: Path
    targets: dict[str, Target] = field(default_factory=dict)
    checked: bool = True  # decoded when the data was loaded (False: only the quick check; decoded when read)


@dataclass
class DataSource:
    """Labelled samples split into train/val, with the heads they fill (labels filled in)."""

    kind: str  # "folder" | "csv"
    root: Path  # the image folder, or the CSV's folder
    heads: list[HeadSpec]
    train: list[Sample]
    val: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    path: Path | None = None  # what the user gave: the folder or the .csv file
    split_from: str = "random"  # "random" (seeded, stratified), "column" (CSV split) or "folders"
    seed: int = 0  # the random split's seed and validation fraction (as asked; unused for other splits)
    val_fraction: float = 0.2
    notes: list[str] = field(default_factory=list)  # how the data was read (e.g. why a column is no head)
    warnings: list[str] = field(default_factory=list)  # things that may spoil training (shown before it)
    _summary: tuple[Any, dict[str, Any]] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def samples(self) -> list[Sample]:
        return self.train + self.val

    def head(self, name: str) -> HeadSpec:
        for spec in self.heads:
            if spec.name == name:
                return spec
        raise GraftError(f"The data has no head named {name!r}.")

    def summary(self) -> dict[str, Any]:
        """Plain data for display: sizes, and per head its kind, labels, label counts and missing rates.

        ``heads[name]``: ``kind``, ``labels``, ``columns``, ``counts`` / ``train_counts`` /
        ``val_counts`` (single: examples per class; multi: positives per label; regression: labelled
        values per target), ``n_labelled`` (samples with at least one label for the head),
        ``missing_fraction`` (samples with the head's label missing entirely), and for multi-label
        and regression heads ``missing_entry_fraction`` (missing cells / all cells); regression heads
        also have ``stats`` ``{target: {"min", "max", "mean"}}``.
        """
        key = (id(self.train), len(self.train), id(self.val), len(self.val), repr(self.heads), len(self.skipped),
               len(self.notes), len(self.warnings))
        if self._summary is None or self._summary[0] != key:  # 200,000 images: 0.5 s, so worked out once
            self._summary = (key, self._summarise())
        return copy.deepcopy(self._summary[1])

    def _summarise(self) -> dict[str, Any]:
        everything = self.samples
        n, n_train = len(everything), len(self.train)
        heads: dict[str, Any] = {}
        labelled_any = np.zeros(n, dtype=bool)
        for spec in self.heads:
            names = spec.label_names
            info: dict[str, Any] = {"kind": spec.kind, "labels": list(names), "columns": list(spec.columns)}
            if spec.dense:  # counts: images whose mask holds the class / boxes of the class
                values = [s.targets.get(spec.name) for s in everything]
                labelled = np.array([v is not None for v in values], dtype=bool).reshape(n)

                def counts(part: slice, values=values, spec=spec) -> dict[str, int]:
                    return dense_counts(spec, values[part])
            elif spec.kind == "single":
                classes = np.fromiter((_target(s, spec) for s in everything), dtype=np.int64, count=n)
                labelled = classes >= 0

                def counts(part: slice, classes=classes, labelled=labelled, names=names) -> dict[str, int]:
                    found = np.bincount(classes[part][labelled[part]], minlength=len(names))
                    return {name: int(c) for name, c in zip(names, found)}
            else:
                rows = np.array([_target(s, spec) for s in everything], dtype=np.float64).reshape(n, spec.outputs)
                absent = np.isnan(rows)
                labelled = ~absent.all(axis=1)
                counted = ~absent if spec.kind == "regression" else (~absent & (np.nan_to_num(rows) > 0.5))

                def counts(part: slice, counted=counted, names=names) -> dict[str, int]:
                    return {name: int(c) for name, c in zip(names, counted[part].sum(axis=0))}

                info["missing_entry_fraction"] = float(absent.mean()) if n else 0.0
                if spec.kind == "regression":
                    stats = {}
                    for j, label in enumerate(names):
                        col = rows[:, j][~absent[:, j]]
                        stats[label] = ({"min": _round(col.min()), "max": _round(col.max()), "mean": _round(col.mean())}
                                        if col.size else {"min": 0.0, "max": 0.0, "mean": 0.0})
                    info["stats"] = stats
            info["counts"], info["train_counts"] = counts(slice(None)), counts(slice(0, n_train))
            info["val_counts"] = counts(slice(n_train, None))
            labelled_any |= labelled
            missing = n - int(labelled.sum())
            info["n_labelled"] = n - missing
            info["missing_fraction"] = missing / n if n else 0.0
            heads[spec.name] = info
        return {"kind": self.kind, "root": str(self.root), "path": str(self.path or self.root),
                "split_from": self.split_from, "n_samples": len(everything), "n_train": len(self.train),
                "n_val": len(self.val), "n_skipped": len(self.skipped), "heads": heads,
                "n_labelled_any": int(labelled_any.sum()),  # images with a label for at least one head
                "notes": list(self.notes), "warnings": list(self.warnings)}


def _round(value: float) -> float:
    return float(f"{float(value):.6g}")


def _target(sample: Sample, spec: HeadSpec) -> Target:
    """The sample's target for ``spec``, or the "missing" target when it has none."""
    value = sample.targets.get(spec.name)
    if value is None and not spec.dense:  # a dense head's missing target stays None
        return -1 if spec.kind == "single" else [math.nan] * spec.outputs
    return value


def _label_counts(spec: HeadSpec, samples: Sequence[Sample]) -> dict[str, int]:
    if spec.dense:
        return dense_counts(spec, [s.targets.get(spec.name) for s in samples])
    names = spec.label_names
    counts = dict.fromkeys(names, 0)
    for s in samples:
        t = _target(s, spec)
        if spec.kind == "single":
            if t >= 0:
                counts[names[t]] += 1
        else:
            for name, v in zip(names, t):
                if not math.isnan(v) and (spec.kind == "regression" or v > 0.5):
                    counts[name] += 1
    return counts


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(quoted(n) for n in names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")
