"""User data -> labelled samples: image folders and CSV manifests, checks, splits and a torch Dataset.

Two layouts are understood:

* an image folder ``root/<class>/<image>`` (optionally ``root/train/<class>/…`` + ``root/val/<class>/…``),
  giving one single-label head named ``class``;
* a CSV manifest with an ``image`` column (paths relative to the CSV's folder) and label columns read
  by heads (:class:`~engine.network.heads.HeadSpec` ``columns``). A blank cell is a missing label.

Everything a user can get wrong raises :class:`GraftError` before any training starts; unreadable
files are skipped and listed in :attr:`DataSource.skipped`. Up to :data:`FULL_CHECK_LIMIT` images are all
decoded (cheaply) up front; beyond that only what is cheap is checked up front (the file is there and not
empty, and one not named like an image starts like one: :func:`quick_check`), and each image is decoded
fully when first read:
one that fails then is left out of training with its labels counted as missing, and reported
(:data:`UNREADABLE` in :class:`ImageDataset`'s targets, ``Sample.checked``). Targets per sample and head: single-label
-> class index (``-1`` when missing); multi-label and regression -> list of floats (``NaN`` when missing).
"""
from __future__ import annotations

import copy
import csv
import functools
import io
import math
import os
import random
import re
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from engine.errors import GraftError
from engine.network.heads import KINDS, RESERVED_NAMES, HeadSpec
from engine.network.preprocess import (InputSpec, band_count_problem, is_tiff, normalise, open_image, preprocess_file,
                                       read_bands, read_tiff, to_grey, to_rgb)
from engine.units import plural

Target = int | list[float]

MANIFEST_SUFFIXES = (".csv", ".tsv")  # a .tsv is always tab-separated; a .csv may use , ; or tab

TRUE_WORDS = frozenset({"1", "1.0", "true", "yes"})
FALSE_WORDS = frozenset({"0", "0.0", "false", "no"})
SPLIT_WORDS = {"train": "train", "training": "train", "val": "val", "valid": "val",
               "validation": "val", "test": "val"}
IGNORED_FILES = frozenset({"thumbs.db", "desktop.ini"})
KIND_ALIASES = {"single": "single", "single-label": "single", "softmax": "single",
                "multi": "multi", "multi-label": "multi", "multilabel": "multi", "sigmoid": "multi",
                "regression": "regression", "reg": "regression", "numeric": "regression"}
MAX_LISTED = 5
MOSTLY = 0.9  # a column this much numeric (or 0/1) but not entirely is taken for a typo, not for text
FLOAT32_MAX = float(np.finfo(np.float32).max)
FULL_CHECK_LIMIT = 20_000  # more images than this: the quick check up front, the full decode when first read
UNREADABLE = "__unreadable__"  # ImageDataset's extra target: -1, or the index of an image that did not decode
# How image files start (what Pillow reads; TIFF and the rest get the full check up front).
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
# Names the quick check takes at their word (what the file holds is seen when it is first read).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})


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
            if spec.kind == "single":
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
    if value is None:
        return -1 if spec.kind == "single" else [math.nan] * spec.outputs
    return value


def _label_counts(spec: HeadSpec, samples: Sequence[Sample]) -> dict[str, int]:
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


# --------------------------------------------------------------------------------------------------
# image checks
# --------------------------------------------------------------------------------------------------
def check_image(path: str | Path) -> str | None:
    """``None`` when ``path`` decodes as an image, else a short reason. Cheap: JPEGs are decoded at
    1/8 scale (which still reads all their data), PNGs are checksummed, other formats fully decoded."""
    try:
        with Image.open(path) as img:
            if img.width < 1 or img.height < 1:
                return "empty image"
            if img.format == "JPEG":
                img.draft("RGB", (1, 1))
                img.load()
            elif img.format == "PNG":
                img.verify()
            else:
                img.load()
    except FileNotFoundError:
        return "file not found"
    except IsADirectoryError:
        return "a folder, not an image"
    except UnidentifiedImageError:
        if is_tiff(path):  # a TIFF of more bands than Pillow reads (RGB plus infrared, depth …)
            try:
                read_tiff(path)
            except GraftError as exc:
                return str(exc).partition(": ")[2].rstrip(".") or "not an image file"
            return None
        return "not an image file"
    except Image.DecompressionBombError:
        return "image too large"
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the file is unusable
        detail = str(exc).strip() or exc.__class__.__name__
        return f"corrupt or truncated image ({detail})"
    return None


def quick_check(path: str | Path) -> str | None:
    """``None`` when ``path`` is a non-empty file named like an image (:data:`IMAGE_SUFFIXES`), or one
    otherwise named that starts like a JPEG, PNG, GIF, BMP or WebP image; else a short reason (other formats
    get :func:`check_image`). A file named like an image is only stat'ed: reading the first bytes of 200,000
    files from a cold disk took 27 s here (a random read each, however many threads), their stat 3.3 s."""
    name = os.fspath(path)
    if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
        try:
            info = os.stat(name)
        except FileNotFoundError:
            return "file not found"
        except OSError as exc:
            return f"unreadable ({exc.strerror or exc})"
        if stat.S_ISDIR(info.st_mode):
            return "a folder, not an image"
        return None if info.st_size else "empty file"
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except FileNotFoundError:
        return "file not found"
    except IsADirectoryError:
        return "a folder, not an image"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if not head:
        return "empty file"
    if head.startswith(SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return None
    return check_image(path)


def _check_all(paths: Sequence[Path], quick: bool = False) -> list[str | None]:
    check = quick_check if quick else check_image
    if len(paths) < 32:
        return [check(p) for p in paths]
    workers = max(1, min(8, os.cpu_count() or 1))
    # In chunks: a thread pool's map makes a future (and a lock) per file, which cost more than checking
    # a small image (measured: 20,000 PNGs, 2.3 s of 3.4 s in futures). Pillow releases the GIL decoding.
    size = max(64, math.ceil(len(paths) / (workers * 8)))
    chunks = [paths[i:i + size] for i in range(0, len(paths), size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [r for part in pool.map(lambda chunk: [check(p) for p in chunk], chunks) for r in part]


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_FILES


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:MAX_LISTED])
    return shown + (f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else "")


# --------------------------------------------------------------------------------------------------
# loading
# --------------------------------------------------------------------------------------------------
def load_data(path: str | os.PathLike, heads: list[HeadSpec] | None = None, *, val_fraction: float = 0.2,
              seed: int = 0, require_every_class: bool = True, strict_suggestions: bool = True) -> DataSource:
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
        data = _load_csv(p, heads, val_fraction, seed, strict, strict_suggestions)
    else:
        raise GraftError(f"{p.name}: expected a folder of class subfolders (root/<class>/<image>) "
                         "or a .csv/.tsv manifest.")
    data.seed, data.val_fraction = seed, float(val_fraction)
    if strict:
        _check_training_side(data)
    return data


def _load_folder(root: Path, heads: list[HeadSpec] | None, val_fraction: float, seed: int,
                 strict: bool = True) -> DataSource:
    spec = None
    if heads:
        if len(heads) != 1 or heads[0].kind != "single" or heads[0].columns:
            raise GraftError("An image folder gives exactly one single-label head (its classes are the "
                             "subfolders); use a CSV manifest for other heads.")
        spec = heads[0]
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not _hidden(d.name))
    skipped: list[tuple[str, str]] = []
    for f in sorted(root.iterdir()):
        if f.is_file() and not _hidden(f.name):
            skipped.append((str(f), "not inside a class folder"))

    # root/train/<class>/… + root/val/<class>/… : the folders give the split.
    split_layout = bool(subdirs) and all(
        d.name.lower() in SPLIT_WORDS and any(c.is_dir() and not _hidden(c.name) for c in d.iterdir())
        for d in subdirs)
    class_dirs: list[tuple[str, Path, str | None]] = []  # (class, folder, split)
    if split_layout:
        for d in subdirs:
            for c in sorted(c for c in d.iterdir() if c.is_dir() and not _hidden(c.name)):
                class_dirs.append((c.name, c, SPLIT_WORDS[d.name.lower()]))
            for f in sorted(d.iterdir()):
                if f.is_file() and not _hidden(f.name):
                    skipped.append((str(f), "not inside a class folder"))
    else:
        class_dirs = [(d.name, d, None) for d in subdirs]
    folder_names = sorted({name for name, _, _ in class_dirs})

    if spec is not None and spec.labels:
        unknown = [n for n in folder_names if n not in spec.labels]
        if unknown:
            raise GraftError(f"{root.name}: class folder {_listing(unknown)} is not among the head's classes "
                             f"({_listing(spec.labels)}).")
        labels = list(spec.labels)
    else:
        labels = folder_names
        if len(labels) < 2:
            found = f"found only {labels[0]!r}" if labels else "found none"
            raise GraftError(f"{root}: an image folder needs at least 2 class subfolders "
                             f"(root/<class>/<image>); {found}. For a CSV manifest, choose the .csv file.")

    files: list[tuple[str, str, str, str | None]] = []  # (path, same-file key, class, split)
    for name, folder, split in class_dirs:
        files += [(path, key, name, split) for path, key in _files_under(os.fspath(folder))]
    quick = len(files) > FULL_CHECK_LIMIT
    reasons = _check_all([f for f, _, _, _ in files], quick)
    index = {name: i for i, name in enumerate(labels)}
    head_name = spec.name if spec is not None else "class"
    samples: list[Sample] = []
    splits: list[str | None] = []
    keys: list[str] = []
    for (f, key, name, split), reason in zip(files, reasons):
        if reason:
            skipped.append((f, reason))
        else:
            samples.append(Sample(Path(f), {head_name: index[name]}, not quick))
            splits.append(split)
            keys.append(key)
    if not samples:
        raise GraftError(_no_images_message(root, skipped))
    counts = [0] * len(labels)
    for s in samples:
        counts[s.targets[head_name]] += 1
    empty = [labels[i] for i, c in enumerate(counts) if c == 0]
    if empty and strict:
        missing = [n for n in empty if n not in folder_names]
        if missing:
            raise GraftError(f"{root.name}: class {_listing(missing)} has no folder, so no examples; "
                             "every class needs at least one image.")
        raise GraftError(f"{root.name}: class folder {_listing(empty)} has no usable images; "
                         "every class needs at least one.")
    head = replace(spec, labels=labels) if spec is not None else HeadSpec("class", "single", labels=labels)
    if split_layout:
        train, val = _split_fixed(samples, splits, root.name, "folders", strict)
    else:
        train, val = _split_random(samples, head, val_fraction, seed, keys)
    return DataSource("folder", root, [head], train, val, skipped, path=root,
                      split_from="folders" if split_layout else "random", notes=_quick_notes(quick, len(samples)))


def _files_under(folder: str) -> list[tuple[str, str]]:
    """``(path, key)`` of every file under ``folder`` in os.walk's order (a folder's files, sorted, then its
    subfolders'; hidden ones and links to folders left out), ``key`` being :func:`_same_file`'s: from one
    scandir per folder, whose entries say which are links without a system call per file."""
    real = os.path.normcase(os.path.realpath(folder))
    found: list[tuple[str, str]] = []
    subfolders: list[str] = []
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if _hidden(entry.name):
                continue
            link = entry.is_symlink()
            if entry.is_dir():
                if not link:
                    subfolders.append(entry.path)
            elif link:
                found.append((entry.path, os.path.normcase(os.path.realpath(entry.path))))
            else:
                found.append((entry.path, os.path.join(real, os.path.normcase(entry.name))))
    for sub in subfolders:
        found += _files_under(sub)
    return found


def _quick_notes(quick: bool, n: int) -> list[str]:
    if not quick:
        return []
    return [f"{n:,} images: each was checked to be there and not empty now (and, if not named like an image, to "
            f"start like one), and is decoded fully when first read; one that does not decode then is left out "
            f"and reported."]


def _no_images_message(where: Path, skipped: list[tuple[str, str]]) -> str:
    if not skipped:
        return f"{where}: no images found."
    examples = "; ".join(f"{Path(p).name}: {r}" for p, r in skipped[:3])
    return f"{where}: no usable images ({plural(len(skipped), 'file')} skipped, e.g. {examples})."


# -- CSV -------------------------------------------------------------------------------------------
def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]], str]:
    """Header, rows ``(row number, cells)`` and the delimiter; the header is row 1, as in a spreadsheet.
    Blank rows are dropped, short rows padded. Accepts UTF-8 (with or without BOM), UTF-16 with a BOM (a
    spreadsheet's "Unicode text") or Latin-1, and ``,`` ``;`` or tab (then numbers may use a decimal comma,
    as spreadsheets in many locales write them)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GraftError(f"{path}: cannot read ({exc.strerror or exc}).") from None
    try:
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
            text = raw.decode("utf-16")
        else:
            text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    first = text.split("\n", 1)[0]
    delimiter = ("\t" if path.suffix.lower() == ".tsv" else
                 "," if "," in first else (";" if ";" in first else ("\t" if "\t" in first else ",")))
    try:
        records = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as exc:
        raise GraftError(f"{path.name}: not a valid CSV file ({exc}).") from None
    if not records or not any(c.strip() for c in records[0]):
        raise GraftError(f"{path.name}: the CSV is empty (it needs a header row with an 'image' column).")
    header = [c.strip() for c in records[0]]
    named = [c for c in header if c]
    dupes = sorted({c for c in named if named.count(c) > 1})
    if dupes:
        raise GraftError(f"{path.name}: column {_listing(dupes)} appears more than once in the header.")
    rows: list[tuple[int, list[str]]] = []
    for number, cells in enumerate(records[1:], start=2):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(header):
            if any(c.strip() for c in cells[len(header):]):
                raise GraftError(f"{path.name} row {number}: {len(cells)} cells but the header has "
                                 f"{len(header)} columns.")
            cells = cells[:len(header)]
        rows.append((number, [c.strip() for c in cells] + [""] * (len(header) - len(cells))))
    return header, rows, delimiter


def _find_column(header: list[str], name: str) -> int | None:
    if name in header:
        return header.index(name)
    lowered = [c.lower() for c in header]
    return lowered.index(name) if name in lowered else None


def _number(text: str, decimal_comma: bool = False) -> float | None:
    """``text`` as a number, or None. With ``decimal_comma`` (a ``;``- or tab-separated file) ``0,5``
    is 0.5 too (a comma and no point)."""
    try:
        return float(text)
    except ValueError:
        pass
    if decimal_comma and text.count(",") == 1 and "." not in text:
        try:
            return float(text.replace(",", "."))
        except ValueError:
            return None
    return None


def _head_name(column: str) -> str:
    """A legal head name for a column: 'type' or 'train' would clash with the heads' nn.ModuleDict."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", column).strip("_-")
    if name in RESERVED_NAMES:
        name += "_head"
    return name or "head"


def _suggest(header: list[str], rows: list[tuple[int, list[str]]], csv_name: str, decimal_comma: bool = False,
             notes: list[str] | None = None, *, strict: bool = True,
             warnings: list[str] | None = None) -> list[HeadSpec]:
    image_col = _find_column(header, "image")
    split_col = _find_column(header, "split")
    text_cols: list[tuple[str, list[str]]] = []
    bin_cols: list[str] = []
    num_cols: list[str] = []
    left_out: list[tuple[str, str]] = []  # (column, why)
    found: list[str] = []
    refused: list[tuple[str, str]] = []  # strict=False: (the refusal, the column left out because of it)

    def stray(what: str, col: str, kind: str) -> None:
        refusal = (f"{what}; fix the cell (blank = missing label), or name the head yourself "
                   f"(e.g. --head {_head_name(col)}:{kind}:{col}) to read it otherwise.")
        if strict:
            raise GraftError(refusal)
        refused.append((refusal, f"{what}; the column is left out of the suggested heads: fix the cell "
                                 "(blank = missing label) and load the data again to learn it."))

    for i, col in enumerate(header):
        if i in (image_col, split_col) or not col or col.lower().startswith("unnamed:"):
            continue
        cells = [(number, cells[i]) for number, cells in rows if cells[i]]
        values = [v for _, v in cells]
        if not values:
            left_out.append((col, "is blank"))
            continue
        n = len(values)
        binary = [v.lower() in TRUE_WORDS | FALSE_WORDS for v in values]
        numbers = [_number(v, decimal_comma) for v in values]
        n_binary, n_numbers = sum(binary), sum(x is not None for x in numbers)
        if n_binary == n:
            bin_cols.append(col)
            continue
        if n_binary >= MOSTLY * n:  # a 0/1 column with a stray value: a typo, not a number or a class
            row, text = next(c for c, ok in zip(cells, binary) if not ok)
            stray(f"{csv_name} row {row}, column {col!r}: {text!r} is not 0 or 1, but {n_binary} of the "
                  f"column's {n} values are", col, "regression")
            continue
        if n_numbers == n:
            num_cols.append(col)
            distinct = {x for x in numbers if x is not None}
            if 3 <= len(distinct) <= 10 and all(math.isfinite(x) and x.is_integer() for x in distinct):
                found.append(f"Column {col!r} holds {len(distinct)} whole numbers: treated as a number; name it "
                             f"as a single-label head (e.g. --head {_head_name(col)}:single:{col}) to treat them "
                             "as classes.")
            continue
        if n_numbers >= MOSTLY * n:  # a numeric column with a typo
            row, text = next(c for c, x in zip(cells, numbers) if x is None)
            stray(f"{csv_name} row {row}, column {col!r}: {text!r} is not a number, but {n_numbers} of "
                  f"the column's {n} values are", col, "single")
            continue
        if not decimal_comma and all(_number(v, True) is not None for v in values):
            left_out.append((col, f"holds numbers with a decimal comma (e.g. {values[0]!r}) in a "
                                  "comma-separated file; write them with a decimal point, or separate the "
                                  "columns with ';'"))
            continue
        distinct_text = sorted(set(values))
        if len(distinct_text) < 2:  # one class: nothing to learn
            left_out.append((col, f"has a single value ({distinct_text[0]!r})"))
            continue
        if len(distinct_text) == len(values) > 10:  # every value different: an identifier, not a class
            left_out.append((col, "has a different value on every row"))
            continue
        text_cols.append((col, distinct_text))
    heads: list[HeadSpec] = []
    used: set[str] = set()

    def unique(name: str) -> str:
        base, k = name, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        return name

    for col, distinct in text_cols:
        heads.append(HeadSpec(unique(_head_name(col)), "single", labels=distinct, columns=[col]))
    if bin_cols:
        name = _head_name(bin_cols[0]) if len(bin_cols) == 1 else "tags"
        heads.append(HeadSpec(unique(name), "multi", labels=list(bin_cols), columns=list(bin_cols)))
    if num_cols:
        name = _head_name(num_cols[0]) if len(num_cols) == 1 else "numbers"
        heads.append(HeadSpec(unique(name), "regression", labels=list(num_cols), columns=list(num_cols)))
    if not heads and refused:  # nothing else to learn: refused as with strict
        raise GraftError(refused[0][0])
    if not heads:
        why = (f" ({'; '.join(f'{c!r} {w}' for c, w in left_out[:MAX_LISTED])})" if left_out
               else " (it has no columns besides 'image')")
        raise GraftError(f"{csv_name}: found no label columns to learn{why}.")
    if notes is not None:
        notes.extend(found)
        notes.extend(f"Column {col!r} is not a head: it {why}." for col, why in left_out)
    if warnings is not None:
        warnings.extend(message for _, message in refused)
    return heads


def suggest_heads(csv_path: str | os.PathLike, notes: list[str] | None = None, *, strict: bool = True,
                  warnings: list[str] | None = None) -> list[HeadSpec]:
    """Heads inferred from a manifest: each text column -> a single-label head named after it; all
    0/1 (true/false, yes/no) columns -> one multi-label head ``tags``; the other numeric columns -> one
    regression head ``values``. A lone 0/1 or numeric column gives a head named after the column.
    ``image`` and ``split`` are never labels; blank columns, text columns with a single value and
    text columns whose values are all different (identifiers) are left out. A column that is mostly
    (90 %) numbers or 0/1 but not entirely is refused, naming the first odd cell: a typo would
    otherwise turn it into classes. ``notes`` (a list) receives why columns were left out and which
    numeric columns might be classes. With ``strict=False`` (the window) such a column is left out
    instead and the refusal goes into ``warnings`` (a list), so the other columns still load; it is
    still refused when no other column makes a head."""
    path = Path(csv_path).expanduser()
    header, rows, delimiter = _read_csv(path)
    if _find_column(header, "image") is None:
        raise GraftError(_no_image_column(path, header))
    return _suggest(header, rows, path.name, delimiter != ",", notes, strict=strict, warnings=warnings)


def _no_image_column(path: Path, header: list[str]) -> str:
    return (f"{path.name} has no 'image' column (the image paths, relative to the CSV's folder). "
            f"Columns found: {_listing([c for c in header if c]) or 'none'}.")


def _resolve_columns(spec: HeadSpec, header: list[str]) -> list[str]:
    """The columns a head reads, defaulting to its labels (multi/regression) or its own name."""
    if spec.columns:
        return list(spec.columns)
    if spec.kind != "single" and spec.labels and all(lab in header for lab in spec.labels):
        return list(spec.labels)
    return [spec.name]


def _image_path(text: str, base: Path) -> Path:
    p = Path(text).expanduser()
    if not p.is_absolute():
        p = base / p
    if "\\" in text and os.sep != "\\" and not p.exists():  # a manifest written on Windows
        p = base / Path(*PureWindowsPath(text).parts)
    return p


def _load_csv(csv_path: Path, heads: list[HeadSpec] | None, val_fraction: float, seed: int,
              strict: bool = True, strict_suggestions: bool = True) -> DataSource:
    name = csv_path.name
    base = csv_path.parent
    header, rows, delimiter = _read_csv(csv_path)
    decimal_comma = delimiter != ","
    notes: list[str] = []
    warnings: list[str] = []
    image_col = _find_column(header, "image")
    if image_col is None:
        raise GraftError(_no_image_column(csv_path, header))
    split_col = _find_column(header, "split")

    if heads is None:
        # Classes come from the usable rows, not from rows whose image is unreadable.
        heads = [replace(h, labels=[]) if h.kind == "single" else h
                 for h in _suggest(header, rows, name, decimal_comma, notes, strict=strict_suggestions,
                                   warnings=warnings)]
    if not heads:
        raise GraftError("No heads given: say which CSV columns to learn.")
    names = [h.name for h in heads]
    if len(set(names)) != len(names):
        raise GraftError(f"Two heads share the name {_listing(sorted({n for n in names if names.count(n) > 1}))}.")

    columns: dict[str, list[str]] = {}
    missing: list[str] = []
    for spec in heads:
        cols = _resolve_columns(spec, header)
        for c in cols:
            if c not in header:
                missing.append(f"{c!r} (head {spec.name!r})")
        columns[spec.name] = cols
    if missing:
        shown = ", ".join(missing[:MAX_LISTED]) + (f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else "")
        raise GraftError(f"{name} has no column {shown}. Columns found: {_listing([c for c in header if c])}.")
    for spec in heads:
        cols = columns[spec.name]
        if spec.kind == "single" and len(cols) != 1:
            raise GraftError(f"Single-label head {spec.name!r} reads one column of class names, not {len(cols)}.")
        if spec.kind != "single" and spec.labels and len(spec.labels) != len(cols):
            raise GraftError(f"Head {spec.name!r} names {len(spec.labels)} labels but reads {len(cols)} columns.")

    # Parse every row before touching any image: data errors are reported first, by row and column.
    errors: list[str] = []
    parsed: list[tuple[int, str, str | None, dict[str, Any]]] = []
    for number, cells in rows:
        where = f"{name} row {number}"
        split = None
        if split_col is not None and cells[split_col]:
            split = SPLIT_WORDS.get(cells[split_col].lower())
            if split is None:
                errors.append(f"{where}, column {header[split_col]!r}: {cells[split_col]!r} is not "
                              "train, val, valid, validation or test.")
        raw: dict[str, Any] = {}
        for spec in heads:
            cols = columns[spec.name]
            if spec.kind == "single":
                value = cells[header.index(cols[0])] or None
                if value is not None and spec.labels and value not in spec.labels:
                    errors.append(f"{where}, column {cols[0]!r}: unknown class {value!r} "
                                  f"(head {spec.name!r} has {_listing(spec.labels)}).")
                raw[spec.name] = value
            else:
                vec: list[float] = []
                for c in cols:
                    text = cells[header.index(c)]
                    if not text:
                        vec.append(math.nan)
                    elif spec.kind == "multi":
                        low = text.lower()
                        if low in TRUE_WORDS:
                            vec.append(1.0)
                        elif low in FALSE_WORDS:
                            vec.append(0.0)
                        else:
                            errors.append(f"{where}, column {c!r}: {text!r} is not 0/1, true/false or yes/no "
                                          f"(multi-label head {spec.name!r}).")
                            vec.append(math.nan)
                    else:
                        v = _number(text, decimal_comma)
                        if v is None or math.isinf(v):
                            errors.append(f"{where}, column {c!r}: {text!r} is not a number "
                                          f"(regression head {spec.name!r}).")
                            v = math.nan
                        elif abs(v) > FLOAT32_MAX:  # would become infinite in training (float32)
                            errors.append(f"{where}, column {c!r}: {text!r} is too large (the limit is about "
                                          f"±3.4e38; regression head {spec.name!r}).")
                            v = math.nan
                        vec.append(v)
                raw[spec.name] = vec
        parsed.append((number, cells[image_col], split, raw))
    if errors:
        more = f" ({plural(len(errors) - 1, 'more problem')} like it)" if len(errors) > 1 else ""
        raise GraftError(errors[0] + more)

    skipped: list[tuple[str, str]] = []
    located: list[tuple[Path, str | None, dict[str, Any], int]] = []
    for number, text, split, raw in parsed:
        if not text:
            skipped.append((f"{name} row {number}", "no image path"))
        else:
            located.append((_image_path(text, base), split, raw, number))
    unique_paths = list(dict.fromkeys(p for p, _, _, _ in located))
    quick = len(unique_paths) > FULL_CHECK_LIMIT
    verdict = dict(zip(unique_paths, _check_all(unique_paths, quick)))
    usable: list[tuple[Path, str | None, dict[str, Any]]] = []
    numbers: list[int] = []
    for p, split, raw, number in located:
        if verdict[p]:
            skipped.append((str(p), verdict[p]))
        else:
            usable.append((p, split, raw))
            numbers.append(number)
    if not usable:
        raise GraftError(_no_images_message(csv_path, skipped))

    final_heads: list[HeadSpec] = []
    for spec in heads:
        cols = columns[spec.name]
        if spec.kind == "single":
            values = [raw[spec.name] for _, _, raw in usable if raw[spec.name] is not None]
            if not values:
                raise GraftError(f"Head {spec.name!r} has no labelled example: column {cols[0]!r} is blank "
                                 "for every usable image.")
            if spec.labels:
                labels = list(spec.labels)
                present = set(values)
                empty = [lab for lab in labels if lab not in present]
                if empty and strict:
                    raise GraftError(f"Head {spec.name!r}: class {_listing(empty)} has no example "
                                     f"(column {cols[0]!r}); every class needs at least one.")
            else:
                labels = sorted(set(values))
                if len(labels) < 2:
                    raise GraftError(f"Head {spec.name!r}: column {cols[0]!r} has only one class ({labels[0]!r}); "
                                     "a single-label head needs at least two.")
            final_heads.append(replace(spec, labels=labels, columns=list(cols)))
        else:
            matrix = np.array([raw[spec.name] for _, _, raw in usable], dtype=np.float64).reshape(len(usable), len(cols))
            labelled = ~np.isnan(matrix)
            if not labelled.any():
                raise GraftError(f"Head {spec.name!r} has no labelled example: column(s) {_listing(cols)} "
                                 "are blank for every usable image.")
            labels = list(spec.labels) if spec.labels else list(cols)
            for j, c in enumerate(cols if strict else ()):
                if not labelled[:, j].any():
                    raise GraftError(f"Head {spec.name!r}: column {c!r} has no value for any usable image.")
                if spec.kind == "multi" and not (matrix[labelled[:, j], j] > 0.5).any():
                    raise GraftError(f"Head {spec.name!r}: label {labels[j]!r} (column {c!r}) has no positive "
                                     "example; every label needs at least one 1.")
            final_heads.append(replace(spec, labels=labels, columns=list(cols)))

    samples: list[Sample] = []
    splits: list[str | None] = []
    for p, split, raw in usable:
        targets: dict[str, Target] = {}
        for spec in final_heads:
            value = raw[spec.name]
            if spec.kind == "single":
                targets[spec.name] = -1 if value is None else spec.labels.index(value)
            else:
                targets[spec.name] = [float(np.float32(v)) for v in value]
        samples.append(Sample(p, targets, not quick))
        splits.append(split)

    if split_col is not None and any(s is not None for s in splits):
        if strict:
            _check_one_side(samples, splits, numbers, name)
        train, val = _split_fixed(samples, splits, name, f"the {header[split_col]!r} column", strict)
        split_from = "column"
    else:
        strat = next((h for h in final_heads if h.kind == "single"), None)
        train, val = _split_random(samples, strat, val_fraction, seed)
        split_from = "random"
    return DataSource("csv", base, final_heads, train, val, skipped, path=csv_path, split_from=split_from,
                      notes=notes + _quick_notes(quick, len(samples)), warnings=warnings)


# --------------------------------------------------------------------------------------------------
# splits
# --------------------------------------------------------------------------------------------------
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
    """The classes (single), labels (multi, positives) and targets (regression, values) that have
    examples in ``val`` but none in ``train``, described for people; empty when there are none."""
    found: list[str] = []
    for spec in heads:
        in_train, in_val = _label_counts(spec, train), _label_counts(spec, val)
        for label in spec.label_names:
            if in_val[label] and not in_train[label]:
                what = {"single": f"class {label!r} of head {spec.name!r} has examples",
                        "multi": f"label {label!r} of head {spec.name!r} has positive examples",
                        "regression": f"target {label!r} of head {spec.name!r} has values"}[spec.kind]
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


# --------------------------------------------------------------------------------------------------
# torch dataset
# --------------------------------------------------------------------------------------------------
class ImageDataset(torch.utils.data.Dataset):
    """``(CHW float32 image, {head: target})`` per sample; decoding happens in ``__getitem__`` (so in
    DataLoader workers). Without augmentation the image is exactly :func:`engine.network.preprocess.preprocess_file`;
    with it: RandomResizedCrop(size, scale 0.6–1), horizontal flip and light colour jitter on the RGB
    (or greyscale) image, then the same normalisation; a 4+-channel input gets the crop and flip on all
    its bands alike, and no colour jitter. Targets: single -> int64 scalar (-1 missing); multi and
    regression -> float32 vector (NaN missing).

    A 4+-channel input checks every image's band count up front (headers only), so an RGB image in the
    data stops training before it starts, with the files named.

    Samples only quick-checked when the data was loaded (``Sample.checked`` False) are decoded here: one that
    fails gives a blank image with every label missing (so it teaches nothing), and the targets of such a
    dataset carry :data:`UNREADABLE` (int64: -1, or the failed sample's index) for the trainer to report."""

    def __init__(self, samples: Sequence[Sample], heads: Sequence[HeadSpec], spec: InputSpec,
                 augment: bool = False) -> None:
        self.samples = list(samples)
        self.heads = list(heads)
        self.spec = spec
        self.augment = bool(augment)
        self._transform = _augmentation(spec) if self.augment else None
        self.lazy = not all(s.checked for s in self.samples)
        if spec.channels > 3:
            check_bands([s.path for s in self.samples], spec.channels)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        sample = self.samples[index]
        failed = -1
        try:
            array = self._pixels(sample)
        except GraftError:
            if sample.checked:
                raise
            spec = self.spec
            array, failed, sample = np.zeros((spec.channels, spec.size, spec.size), np.float32), index, Sample(sample.path)
        targets: dict[str, torch.Tensor] = {}
        for head in self.heads:
            value = _target(sample, head)
            if head.kind == "single":
                targets[head.name] = torch.tensor(value, dtype=torch.int64)
            else:
                targets[head.name] = torch.tensor(value, dtype=torch.float32)
        if self.lazy:
            targets[UNREADABLE] = torch.tensor(failed, dtype=torch.int64)
        return torch.from_numpy(array), targets

    def _pixels(self, sample: Sample) -> np.ndarray:
        spec = self.spec
        if self._transform is None:
            array = preprocess_file(sample.path, spec)
        elif spec.channels > 3:
            bands = torch.from_numpy(np.array(read_bands(sample.path, spec.channels))).permute(2, 0, 1)
            array = normalise(self._transform(bands).permute(1, 2, 0).numpy(), spec)
        else:
            image = open_image(sample.path)
            image = to_grey(image, spec.alpha_background) if spec.channels == 1 else to_rgb(image, spec.alpha_background)
            array = normalise(self._transform(image), spec)
        return array

    def __repr__(self) -> str:
        return (f"ImageDataset({len(self.samples)} samples, heads={[h.name for h in self.heads]}, "
                f"augment={self.augment})")


def _augmentation(spec: InputSpec):
    from torchvision.transforms import v2

    modes = {"nearest": v2.InterpolationMode.NEAREST, "bilinear": v2.InterpolationMode.BILINEAR,
             "bicubic": v2.InterpolationMode.BICUBIC, "lanczos": v2.InterpolationMode.LANCZOS}
    steps = [
        v2.RandomResizedCrop(spec.size, scale=(0.6, 1.0),
                             interpolation=modes.get(spec.interpolation, v2.InterpolationMode.BILINEAR),
                             antialias=True),
        v2.RandomHorizontalFlip(),
    ]
    if spec.channels <= 3:  # colour jitter knows grey and RGB only: extra bands are not colours
        steps.append(v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02))
    return v2.Compose(steps)


def check_bands(paths: Sequence[Path], channels: int) -> None:
    """GraftError when any image lacks the ``channels`` bands a 4+-channel input reads (headers only)."""
    problems = [p for p in (band_count_problem(path, channels) for path in paths) if p]
    if problems:
        more = f" (and {plural(len(problems) - 1, 'more image')} like it)" if len(problems) > 1 else ""
        raise GraftError(problems[0].rstrip(".") + more + ".")


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------
def parse_head_arg(text: str) -> HeadSpec:
    """``NAME:KIND[:COL1,COL2[:WEIGHT]][@LAYER]`` (KIND single|multi|regression; without columns, or with an
    empty COLUMNS field as in ``NAME:KIND::WEIGHT``, the head reads the column NAME). WEIGHT, the
    fourth field, is the head's loss weight (default 1): a number of at least 0. ``@LAYER``: the head
    reads that layer's pooled output (``shape:single@features.4``) instead of the trunk's end."""
    usage = ("use NAME:KIND:COLUMN[,COLUMN…][:WEIGHT][@LAYER] with KIND single, multi or regression, "
             "e.g. tags:multi:red,striped, age:regression:age:0.5 or shape:single@features.4")
    body, at, layer_text = str(text).partition("@")
    layer = layer_text.strip() or None
    if at and layer is None:
        raise GraftError(f"--head {text!r}: name the layer after '@' (e.g. @features.4); {usage}.")
    if layer is not None and "@" in layer:
        raise GraftError(f"--head {text!r}: only one '@LAYER'; {usage}.")
    parts = [p.strip() for p in body.split(":")]
    if len(parts) not in (2, 3, 4) or not parts[0] or not parts[1]:
        raise GraftError(f"--head {text!r}: {usage}.")
    name, kind_text = parts[0], parts[1]
    kind = KIND_ALIASES.get(kind_text.lower())
    if kind is None:
        raise GraftError(f"--head {text!r}: unknown kind {kind_text!r}; kind is one of {', '.join(KINDS)}.")
    weight = 1.0
    if len(parts) == 4:
        try:
            weight = float(parts[3])
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight) or weight < 0:
            raise GraftError(f"--head {text!r}: the loss weight (after the third ':') must be a number of at "
                             f"least 0, not {parts[3]!r}; {usage}.")
    columns: list[str] = []
    if len(parts) == 3 or (len(parts) == 4 and parts[2]):
        columns = [c.strip() for c in parts[2].split(",")]
        if not parts[2] or any(not c for c in columns):
            raise GraftError(f"--head {text!r}: empty column name; {usage}.")
        if len(set(columns)) != len(columns):
            raise GraftError(f"--head {text!r}: a column is listed twice.")
    if kind == "single" and len(columns) > 1:
        raise GraftError(f"--head {text!r}: a single-label head reads one column of class names, "
                         f"not {len(columns)}.")
    labels = list(columns) if kind != "single" else []
    if kind != "single" and not labels:
        labels = [name]
    return HeadSpec(name, kind, labels=labels, columns=columns or [name], loss_weight=weight, layer=layer)
