"""Matching a session's heads with the data's: :func:`bind_heads` checks kinds and labels and builds the
:class:`TargetMap` that renames/remaps the data's targets for the heads; :func:`target_statistics` gives a
regression head the mean and std it learns standardised targets with."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from engine.errors import GraftError
from engine.network.heads import KIND_TITLES, HeadSpec


@dataclass
class HeadBinding:
    """A session head and the data head that feeds it. ``lut`` (single): data class index + 1 → the
    head's class index (``lut[0] = -1`` keeps missing as missing). ``columns`` (multi/regression): for
    each head output, the index of the data column feeding it."""

    spec: HeadSpec
    data: HeadSpec
    lut: torch.Tensor | None = None
    columns: torch.Tensor | None = None

    def map(self, target: torch.Tensor) -> torch.Tensor:
        if self.lut is not None:
            return self.lut[target + 1]
        if self.columns is not None:
            return target[..., self.columns]
        return target


class TargetMap:
    """Turns the data's targets ``{data head: tensor}`` into the session's ``{head: tensor}``; works on
    one example or a batch. Picklable (it runs in DataLoader workers)."""

    def __init__(self, bindings: Sequence[HeadBinding]) -> None:
        self.bindings = list(bindings)

    def __call__(self, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {b.spec.name: b.map(targets[b.data.name]) for b in self.bindings}

    @property
    def data_heads(self) -> list[HeadSpec]:
        return [b.data for b in self.bindings]

    @property
    def heads(self) -> list[HeadSpec]:
        return [b.spec for b in self.bindings]


def _kind_title(kind: str) -> str:
    return KIND_TITLES.get(kind, kind)


def _bind(spec: HeadSpec, data: HeadSpec) -> HeadBinding:
    if spec.kind != data.kind:
        raise GraftError(f"Head {spec.name!r} is {_kind_title(spec.kind)} but the data's {data.name!r} is "
                         f"{_kind_title(data.kind)}.")
    head_names = spec.label_names
    data_names = data.label_names
    if spec.dense:  # masks and boxes carry class indices: the classes must be the data's, in its order
        if head_names[:len(data_names)] != data_names and (spec.labels or len(data_names) > spec.outputs):
            raise GraftError(f"Head {spec.name!r} has the classes {', '.join(head_names[:8])} but the data's "
                             f"{data.name!r} has {', '.join(data_names[:8])}: a {spec.kind} head learns the data's "
                             "classes in the data's order.")
        if spec.kind == "segment" and spec.ignore_index != data.ignore_index:
            raise GraftError(f"Head {spec.name!r} ignores pixels of value {spec.ignore_index} but the data's "
                             f"{data.name!r} marks unlabelled pixels with {data.ignore_index}.")
        return HeadBinding(spec, data)
    if spec.kind == "single":
        if all(n in head_names for n in data_names):
            index = [head_names.index(n) for n in data_names]
        elif not spec.labels and len(data_names) <= spec.outputs:
            index = list(range(len(data_names)))  # an unnamed head takes the data's classes in order
        else:
            unknown = [n for n in data_names if n not in head_names]
            raise GraftError(f"Head {spec.name!r} does not know the data's class(es) "
                             f"{', '.join(repr(n) for n in unknown[:5])}{' …' if len(unknown) > 5 else ''} "
                             f"(its classes: {', '.join(head_names[:8])}{' …' if len(head_names) > 8 else ''}).")
        identity = index == list(range(len(data_names)))
        lut = None if identity else torch.tensor([-1] + index, dtype=torch.int64)
        return HeadBinding(spec, data, lut=lut)
    if all(n in data_names for n in head_names):
        columns = [data_names.index(n) for n in head_names]
    elif not spec.labels and len(data_names) == spec.outputs:
        columns = list(range(spec.outputs))
    else:
        missing = [n for n in head_names if n not in data_names]
        what = "label" if spec.kind == "multi" else "target"
        raise GraftError(f"The data has no {what} {', '.join(repr(n) for n in missing[:5])} for head "
                         f"{spec.name!r} (the data's {data.name!r} has {', '.join(data_names[:8])}).")
    identity = columns == list(range(len(data_names)))
    return HeadBinding(spec, data, columns=None if identity else torch.tensor(columns, dtype=torch.int64))


def bind_heads(heads: Sequence[HeadSpec], data: Any, *, notes: list[str] | None = None) -> TargetMap:
    """Match every head with the data's head of the same name (kind and labels checked; a single-label
    head's classes are mapped by name). An image folder's one class head also feeds a session's one
    single-label head of another name. Raises GraftError when a head has no matching data."""
    heads = list(heads)
    if not heads:
        raise GraftError("The model has no head to train: add a head first.")
    data_heads = {h.name: h for h in data.heads}
    bindings: list[HeadBinding] = []
    for spec in heads:
        match = data_heads.get(spec.name)
        classes = [h for h in data_heads.values() if not h.dense]  # beside an image folder's masks/ and labels/
        if (match is None and spec.kind == "single" and sum(not h.dense for h in heads) == 1 and len(classes) == 1
                and getattr(data, "kind", "") == "folder"):
            only = classes[0]
            if only.kind == spec.kind == "single":
                match = only
                if notes is not None:
                    notes.append(f"Head {spec.name!r} learns the image folder's classes.")
        if match is None:
            have = ", ".join(repr(n) for n in data_heads) or "none"
            raise GraftError(f"Head {spec.name!r} has no data: the data's heads are {have}. "
                             "Name the head after a data head, or choose data with labels for it.")
        bindings.append(_bind(spec, match))
    unused = [n for n in data_heads if n not in {b.data.name for b in bindings}]
    if unused and notes is not None:
        notes.append(f"Not trained (no head for them): {', '.join(unused)}.")
    return TargetMap(bindings)


def labelled_count(samples: Sequence[Any], binding: HeadBinding) -> int:
    name = binding.data.name
    n = 0
    for s in samples:
        value = s.targets.get(name)
        if value is None:
            continue
        if binding.spec.dense:
            n += 1
        elif binding.spec.kind == "single":
            n += value >= 0
        else:
            cols = binding.columns.tolist() if binding.columns is not None else range(len(value))
            n += any(not math.isnan(value[j]) for j in cols)
    return n


STD_FLOOR = 1e-6  # a target std at most this share of its mean (or 1e-12) counts as constant: std 1


def target_statistics(samples: Sequence[Any], binding: HeadBinding) -> tuple[list[float], list[float], int]:
    """``(mean, std, n)`` of a regression head's labelled targets in ``samples`` (one mean/std per
    output, NaN left out; population std; n: the examples with at least one value). An output without
    values gets mean 0, a constant one (std <= STD_FLOOR * |mean|, or 1e-12) std 1. Rounded to
    float32, the precision the head's buffers keep them in."""
    import numpy as np

    spec = binding.spec
    columns = binding.columns.tolist() if binding.columns is not None else list(range(spec.outputs))
    values: list[list[float]] = []
    for s in samples:
        value = s.targets.get(binding.data.name)
        if value is not None:
            values.append([float(value[j]) for j in columns])
    table = np.asarray(values, dtype=np.float64).reshape(-1, len(columns))
    labelled = ~np.isnan(table)
    means, stds = [], []
    for j in range(len(columns)):
        column = table[labelled[:, j], j]
        mean = float(column.mean()) if column.size else 0.0
        std = float(column.std()) if column.size else 0.0
        if not math.isfinite(std) or std <= max(STD_FLOOR * abs(mean), 1e-12):
            std = 1.0
        means.append(float(np.float32(mean)))
        stds.append(float(np.float32(std)))
    return means, stds, int(labelled.any(axis=1).sum())
