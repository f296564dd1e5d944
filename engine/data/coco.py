"""A COCO detection file as the data: ``load_data("instances.json")`` gives one detect head (``boxes``, or the one
head asked for) whose classes are the file's categories; the images are named relative to the file's folder."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from engine.data import decoding
from engine.data.decoding import _check_all, _no_images_message, _quick_notes
from engine.data.dense_targets import read_coco
from engine.data.samples import DataSource, Sample
from engine.data.splits import _split_random
from engine.errors import GraftError
from engine.network.heads import HeadSpec


def _load_coco(path: Path, heads: list[HeadSpec] | None, val_fraction: float, seed: int,
               strict: bool = True) -> DataSource:
    if heads and (len(heads) != 1 or heads[0].kind != "detect"):
        raise GraftError(f"{path.name}: a COCO file gives one detect head (its boxes); name one detect head, or none.")
    names, images = read_coco(path)
    spec = heads[0] if heads else HeadSpec("boxes", "detect", outputs=len(names))
    if spec.labels and list(spec.labels) != names:
        raise GraftError(f"{path.name}: its categories are {', '.join(names[:8])}, not the head's "
                         f"{', '.join(spec.labels[:8])}.")
    spec = replace(spec, labels=names, outputs=len(names), columns=[])
    quick = len(images) > decoding.FULL_CHECK_LIMIT
    reasons = _check_all([p for p, _ in images], quick)
    skipped = [(str(p), r) for (p, _), r in zip(images, reasons) if r]
    samples = [Sample(p, {spec.name: boxes}, not quick) for (p, boxes), r in zip(images, reasons) if not r]
    if not samples:
        raise GraftError(_no_images_message(path, skipped))
    from engine.data.dense_targets import check_inside, upright_size

    if not quick:
        for s in samples:
            check_inside(s.targets[spec.name], upright_size(s.path), f"{path.name}, image {s.path.name}")
    train, val = _split_random(samples, None, val_fraction, seed)
    return DataSource("coco", path.parent, [spec], train, val, skipped, path=path, split_from="random",
                      notes=_quick_notes(quick, len(samples)))
