"""Image folders: ``root/<class>/<image>`` (optionally ``root/train/<class>/…`` + ``root/val/<class>/…``), giving one
single-label head named ``class`` (and, from ``masks/`` and ``labels/`` mirroring the images, segment and detect
heads: :func:`engine.data.dense_targets.folder_dense`); listed with one scandir per folder so that 200,000 files list quickly."""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from engine.data import decoding
from engine.data.decoding import _check_all, _no_images_message, _quick_notes
from engine.data.dense_targets import folder_dense, label_folders
from engine.data.samples import DataSource, Sample, _listing
from engine.data.splits import SPLIT_WORDS, _split_fixed, _split_random
from engine.errors import GraftError
from engine.network.heads import HeadSpec

IGNORED_FILES = frozenset({"thumbs.db", "desktop.ini"})


def _hidden(name: str) -> bool:
    return name.startswith(".") or name.lower() in IGNORED_FILES


def _load_folder(root: Path, heads: list[HeadSpec] | None, val_fraction: float, seed: int,
                 strict: bool = True) -> DataSource:
    spec = None
    dense = [h for h in heads or [] if h.dense] if heads else None  # None: the masks/ and labels/ found
    if heads:
        plain = [h for h in heads if not h.dense]
        if len(plain) != 1 or plain[0].kind != "single" or plain[0].columns:
            raise GraftError("An image folder gives exactly one single-label head (its classes are the "
                             "subfolders), and segment / detect heads from masks/ and labels/ beside them; use a "
                             "CSV manifest for other heads.")
        spec = plain[0]
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not _hidden(d.name))
    beside = label_folders(root, [d.name for d in subdirs])  # masks/, labels/: dense labels, not classes
    subdirs = [d for d in subdirs if d.name not in beside]
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
    quick = len(files) > decoding.FULL_CHECK_LIMIT
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
    dense_heads = []
    for found, targets in folder_dense(root, [s.path for s in samples], dense):
        dense_heads.append(found)
        for sample, target in zip(samples, targets):
            if target is not None:
                sample.targets[found.name] = target
    if split_layout:
        train, val = _split_fixed(samples, splits, root.name, "folders", strict)
    else:
        train, val = _split_random(samples, head, val_fraction, seed, keys)
    return DataSource("folder", root, [head, *dense_heads], train, val, skipped, path=root,
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
