"""Train/validation splits: the seeded, stratified random split (rows naming one image file stay on one side), a
fixed split (a CSV ``split`` column, ``train``/``val`` folders) and the checks that training sees every class."""
from __future__ import annotations

import functools
import math
import os
import random
from collections.abc import Sequence
from pathlib import Path

from engine.data.samples import DataSource, Sample, _label_counts, _target
from engine.errors import GraftError
from engine.network.heads import HeadSpec

SPLIT_WORDS = {"train": "train", "training": "train", "val": "val", "valid": "val",
               "validation": "val", "test": "val"}


def _split_fixed(samples: list[Sample], splits: list[str | None], where: str,
                 source: str, strict: bool = True) -> tuple[list[Sample], list[Sample]]:
    train = [s for s, t in zip(samples, splits) if t != "val"]
    val = [s for s, t in zip(samples, splits) if t == "val"]
    if strict and len(samples) >= 2 and not val:
        raise GraftError(f"{where}: {source} puts no usable image in validation; mark some as 'val' "
                         "(or remove the split to let Graft choose).")
    if strict and len(samples) >= 2 and not train:
        raise GraftError(f"{where}: {source} puts no usable image in training; mark some as 'train' "
                         "(or remove the split to let Graft choose).")
    return train, val


def _same_file(path: Path) -> str:
    """One key per image file, however the rows spell its path. The folder's real path is worked out once
    per folder (a realpath per file walks every component: 1.1 s for 20,000 files); only a file that is
    itself a link is resolved on its own."""
    p = os.fspath(path)
    if os.path.islink(p):
        return os.path.normcase(os.path.realpath(p))
    head, tail = os.path.split(os.path.abspath(p))
    return os.path.normcase(os.path.join(_real_folder(head), tail))


@functools.lru_cache(maxsize=4096)
def _real_folder(folder: str) -> str:
    return os.path.realpath(folder)


def _check_one_side(samples: list[Sample], splits: list[str | None], rows: list[int], where: str) -> None:
    """A CSV split column must not put one image file in training and in validation."""
    first: dict[str, tuple[str, int]] = {}
    for s, split, row in zip(samples, splits, rows):
        side = "val" if split == "val" else "train"
        seen = first.setdefault(_same_file(s.path), (side, row))
        if seen[0] != side:
            raise GraftError(f"{where} rows {seen[1]} and {row} name the same image ({s.path.name}) but put it in "
                             f"{'training' if seen[0] == 'train' else 'validation'} and in "
                             f"{'training' if side == 'train' else 'validation'}; an image must be on one side "
                             "only, or validation measures what training saw.")


def _split_random(samples: list[Sample], strat: HeadSpec | None, val_fraction: float,
                  seed: int, keys: Sequence[str] | None = None) -> tuple[list[Sample], list[Sample]]:
    """Seeded shuffle into train/val. Samples of the same image file (a CSV naming it twice) go to the
    same side. With a single-label head, each class is split in proportion and keeps at least one
    training example (samples missing that label form a group of their own). ``keys``: each sample's
    :func:`_same_file`, when the caller has it already."""
    units: dict[str, list[int]] = {}  # image file -> its samples
    for i, s in enumerate(samples):
        units.setdefault(keys[i] if keys is not None else _same_file(s.path), []).append(i)
    members = list(units.values())
    n = len(members)
    if n < 2:
        return list(samples), []
    n_val = min(n - 1, max(1, round(n * val_fraction)))
    groups: dict[int, list[int]] = {}
    for u, idx in enumerate(members):
        key = 0
        if strat is not None:
            keys = [_target(samples[i], strat) for i in idx]
            key = next((k for k in keys if k >= 0), -1)
        groups.setdefault(key, []).append(u)
    rng = random.Random(seed)
    keys = sorted(groups)
    for k in keys:
        rng.shuffle(groups[k])
    # A class must keep one training example; the "missing label" group (-1) need not.
    caps = {k: len(groups[k]) - (1 if (strat is not None and k >= 0) or strat is None else 0) for k in keys}
    exact = {k: len(groups[k]) * n_val / n for k in keys}
    quota = {k: min(caps[k], math.floor(exact[k])) for k in keys}
    left = n_val - sum(quota.values())
    for k in sorted(keys, key=lambda k: (-(exact[k] - math.floor(exact[k])), k)):
        if left <= 0:
            break
        if quota[k] < caps[k]:
            quota[k] += 1
            left -= 1
    if sum(quota.values()) == 0:  # every class has a single example: validation still gets one
        quota[max(keys, key=lambda k: (len(groups[k]), -k))] += 1
    chosen = {i for k in keys for u in groups[k][:quota[k]] for i in members[u]}
    train = [s for i, s in enumerate(samples) if i not in chosen]
    val = [s for i, s in enumerate(samples) if i in chosen]
    return train, val


def only_in_validation(heads: Sequence[HeadSpec], train: Sequence[Sample], val: Sequence[Sample]) -> list[str]:
    """The classes (single), labels (multi, positives), targets (regression, values) and classes of a dense
    head (segment: in a mask; detect: boxed) that have examples in ``val`` but none in ``train``, described
    for people; empty when there are none."""
    found: list[str] = []
    for spec in heads:
        in_train, in_val = _label_counts(spec, train), _label_counts(spec, val)
        for label in spec.label_names:
            if in_val[label] and not in_train[label]:
                what = {"single": f"class {label!r} of head {spec.name!r} has examples",
                        "multi": f"label {label!r} of head {spec.name!r} has positive examples",
                        "regression": f"target {label!r} of head {spec.name!r} has values",
                        "segment": f"class {label!r} of head {spec.name!r} is in masks",
                        "detect": f"class {label!r} of head {spec.name!r} has boxes"}[spec.kind]
                found.append(what + " only in validation")
    return found


def _check_training_side(data: DataSource) -> None:
    """Warn (``data.warnings``) about every class, label or target seen only in validation: training
    never sees it. With a fixed split (CSV column, folders) the trainer refuses such data; a random
    split only does this when a class has too few examples to share."""
    where = (data.path or data.root).name
    source = {"folders": "the train/val folders", "column": "the split column"}.get(
        data.split_from, "too few examples for the random split to share")
    data.warnings.extend(f"{where}: {f} ({source}); training never sees it."
                         for f in only_in_validation(data.heads, data.train, data.val))
