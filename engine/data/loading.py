"""User data -> labelled samples: :func:`load_data` reads an image folder (:mod:`engine.data.folders`) or a CSV/TSV
manifest (:mod:`engine.data.manifests`), checks it and splits it (:mod:`engine.data.splits`).

Everything a user can get wrong raises :class:`GraftError` before any training starts; unreadable files are skipped
and listed in :attr:`DataSource.skipped`. Large data is only quick-checked up front and decoded when first read
(:mod:`engine.data.decoding`); the torch side is :class:`engine.data.image_dataset.ImageDataset`.

A new data format: a ``_load_<format>(path, heads, val_fraction, seed, strict) -> DataSource`` in a module of its own,
dispatched to from :func:`load_data`.
"""
from __future__ import annotations

import os
from pathlib import Path

from engine.data.coco import _load_coco
from engine.data.folders import _load_folder
from engine.data.manifests import MANIFEST_SUFFIXES, _load_csv
from engine.data.samples import DataSource
from engine.data.splits import _check_training_side, _real_folder
from engine.errors import GraftError
from engine.network.heads import HeadSpec


def load_data(path: str | os.PathLike, heads: list[HeadSpec] | None = None, *, val_fraction: float = 0.2,
              seed: int = 0, require_every_class: bool = True, strict_suggestions: bool = True,
              dense_suggestions: bool = False) -> DataSource:
    """Read an image folder or a CSV manifest, check it, and split it into train/val.

    ``heads``: for a folder, optionally one single-label head (its name, and its labels if given,
    are used); for a CSV, the heads and the columns they read (``None``: :func:`suggest_heads`).
    The split is seeded and stratified by the first single-label head, and rows naming the same image
    file stay on the same side; a CSV ``split`` column (train / val / valid / validation / test, the
    last three all meaning validation; blank = train) or ``train``/``val`` folders replace it.

    ``require_every_class`` (training data, the default): every class of a single-label head needs an
    example, every label of a multi-label head a positive, every regression target a value; with a
    fixed split, each of them needs one in training, and no image may be on both sides. With
    ``False`` (evaluation data, heads given with their labels) those checks are skipped and either
    side of a fixed split may be empty; unknown class names and a head with no labelled example at
    all are still refused. Warnings (e.g. a class the random split left only in validation) are in
    :attr:`DataSource.warnings`.

    ``strict_suggestions=False`` (the window): when heads are suggested from a CSV, a column the
    suggestion refuses for a stray cell is left out and the refusal becomes a warning
    (see :func:`suggest_heads`), so the rest of the data still loads.

    ``dense_suggestions`` (the window): heads suggested from a CSV include a segment head per ``mask``
    column and a detect head per ``boxes`` column (named after the column,
    :func:`engine.data.manifests.dense_heads_for`), so a dense head added later (the demo task) has its
    masks and boxes; ``main.py train`` leaves them out unless ``--head`` names them.
    """
    _real_folder.cache_clear()  # folders may have moved since the last load
    if not isinstance(val_fraction, (int, float)) or not 0.0 < val_fraction < 1.0:
        raise GraftError(f"The validation fraction must be between 0 and 1 (got {val_fraction!r}).")
    p = Path(path).expanduser()
    if not p.exists():
        raise GraftError(f"{p}: no such file or folder.")
    strict = bool(require_every_class) or not heads
    if p.is_dir():
        data = _load_folder(p, heads, val_fraction, seed, strict)
    elif p.suffix.lower() in MANIFEST_SUFFIXES:
        data = _load_csv(p, heads, val_fraction, seed, strict, strict_suggestions, dense_suggestions)
    elif p.suffix.lower() == ".json":
        data = _load_coco(p, heads, val_fraction, seed, strict)
    else:
        raise GraftError(f"{p.name}: expected a folder of class subfolders (root/<class>/<image>), "
                         "a .csv/.tsv manifest or a COCO .json file of boxes.")
    data.seed, data.val_fraction = seed, float(val_fraction)
    if strict:
        _check_training_side(data)
    return data
