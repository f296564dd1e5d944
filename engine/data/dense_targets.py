"""Dense labels: segmentation masks and object boxes, checked when the data loads, and the tensors dense heads
train on.

Where they come from:

* masks — PNG files of one class index per pixel (greyscale 8/16-bit or palette PNGs; the palette index is
  the class), the same size as their image. A CSV names them in a column (``mask`` by default); beside an
  image folder, ``masks/`` mirrors the images' paths (``masks/<class>/<stem>.png``). Pixels equal to the
  head's ``ignore_index`` (255) are unlabelled; an image without a mask (blank cell, no file) is unlabelled
  everywhere. Class names: the head's labels, else ``classes.txt`` (one per line) in the first mask's folder or above it,
  else the indices.
* boxes — a CSV column (``boxes``) of JSON lists ``[[x1, y1, x2, y2, class], …]`` in the image's pixels
  (class a name or an index; ``[]``: labelled, no object; blank: not labelled), or naming a YOLO ``.txt``
  file; ``labels/`` mirroring an image folder's paths with YOLO ``.txt`` files (``class cx cy w h``,
  normalised to the image; a missing file: not labelled; an empty one: no object; class names from
  ``labels/classes.txt``); or a COCO JSON file given as the data (``load_data("instances.json")``).

Every problem is one :class:`GraftError` naming the file (and line or row): an unreadable mask, one of
another size than its image, a class index out of range, a malformed YOLO line or box.

Sample targets (:class:`engine.data.samples.Sample`): a segment head's is the mask's path (``str``) or None;
a detect head's a list of ``[x1, y1, x2, y2, class index]`` in the upright image's pixels, or None.
:class:`DenseItem` turns a sample into the network's input and ``{head: tensor}``: an int64 ``(S, S)`` mask
(``ignore_index`` where unlabelled) and float32 ``(MAX_BOXES, 5)`` boxes in input pixels (class -1: padding;
all NaN: not labelled), the mask and boxes following the image through the same resize and crop, or
through torchvision's transforms.v2 (``tv_tensors.Mask`` and ``BoundingBoxes``) when augmented.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from engine.errors import GraftError
from engine.network.heads import HeadSpec
from engine.network.preprocess import InputSpec, crop_geometry, open_image, preprocess, resize_and_crop
from engine.units import finite_number, quoted

MAX_BOXES = 100  # = engine.network.dense_heads.MAX_BOXES (that module needs torch; this one reads files first)
CLASSES_FILE = "classes.txt"
MASKS_FOLDER, LABELS_FOLDER = "masks", "labels"
DEFAULT_COLUMNS = {"segment": "mask", "detect": "boxes"}
_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height
PRESENT: dict[str, frozenset[int]] = {}  # mask file -> the classes in it, as last checked (for the data's counts)


# -- files -------------------------------------------------------------------------------------------------
def upright_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` of an image as Graft shows it (EXIF orientation applied), from its header."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise GraftError(f"{path}: not a readable image ({exc.__class__.__name__}).") from None
    return (h, w) if orientation in _ROTATED else (w, h)


def read_classes(folder: Path) -> list[str] | None:
    """The class names in ``folder/classes.txt`` (one per line, blank lines left out), or None."""
    path = folder / CLASSES_FILE
    if not path.is_file():
        return None
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise GraftError(f"{path}: cannot read the class names ({exc}).") from None
    if len(set(names)) != len(names):
        raise GraftError(f"{path}: a class name appears twice.")
    return names or None


def read_mask(path: str | Path) -> np.ndarray:
    """A mask file's class indices, ``(H, W)`` int64 (GraftError naming an unreadable or non-index file)."""
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
                raise GraftError(f"{path}: a mask holds one class index per pixel (a greyscale or palette PNG), "
                                 f"not {mode} colours.")
            values = np.asarray(img, dtype=np.int64)
    except FileNotFoundError:
        raise GraftError(f"{path}: mask file not found.") from None
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        raise GraftError(f"{path}: not a readable mask image ({exc.__class__.__name__}).") from None
    if values.ndim != 2:
        raise GraftError(f"{path}: a mask must be one plane of class indices.")
    return values


def check_mask(path: Path, image: Path, classes: int | None, ignore: int) -> set[int]:
    """The class indices present in a mask, after checking it against its image: the same size, and every
    value a class (below ``classes`` when known) or the ignore value."""
    values = read_mask(path)
    w, h = upright_size(image)
    if values.shape != (h, w):
        raise GraftError(f"{path}: the mask is {values.shape[1]}x{values.shape[0]} but its image {image.name} is "
                         f"{w}x{h}; a mask must be the size of its image.")
    present = {int(v) for v in np.unique(values)} - {ignore}
    PRESENT[str(path)] = frozenset(present)
    if classes is not None:
        bad = sorted(v for v in present if not 0 <= v < classes)
        if bad:
            raise GraftError(f"{path}: class index {bad[0]} is out of range (the head has {classes} classes, "
                             f"0-{classes - 1}; {ignore} = unlabelled).")
    return present


def parse_yolo(path: Path, size: tuple[int, int], classes: int | None) -> list[list[float]]:
    """A YOLO label file -> ``[[x1, y1, x2, y2, class], …]`` in pixels of an image of ``size`` (w, h)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise GraftError(f"{path}: cannot read the box labels ({exc}).") from None
    w, h = size
    boxes: list[list[float]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 5:
                raise ValueError
            cls = int(parts[0])
            cx, cy, bw, bh = (float(p) for p in parts[1:])
            if not all(math.isfinite(v) for v in (cx, cy, bw, bh)):
                raise ValueError
        except ValueError:
            raise GraftError(f"{path} line {number}: expected 'class x_center y_center width height' (a class "
                             f"index and four numbers from 0 to 1), got {quoted(line.strip())}.") from None
        if cls < 0 or (classes is not None and cls >= classes):
            raise GraftError(f"{path} line {number}: class index {cls} is out of range"
                             + (f" (0-{classes - 1})." if classes is not None else "."))
        if not (0 <= cx <= 1 and 0 <= cy <= 1 and 0 < bw <= 1 and 0 < bh <= 1):
            raise GraftError(f"{path} line {number}: YOLO coordinates are fractions of the image (0-1) and the "
                             f"box needs a width and height, got {quoted(line.strip())}.")
        boxes.append([max(0.0, (cx - bw / 2) * w), max(0.0, (cy - bh / 2) * h),
                      min(float(w), (cx + bw / 2) * w), min(float(h), (cy + bh / 2) * h), float(cls)])
    _check_count(boxes, str(path))
    return boxes


def _check_count(boxes: Sequence[Any], where: str) -> None:
    if len(boxes) > MAX_BOXES:
        raise GraftError(f"{where}: {len(boxes)} boxes; Graft learns at most {MAX_BOXES} per image.")


def parse_box_cell(text: str, where: str) -> list[list[Any]]:
    """A CSV cell of boxes, JSON ``[[x1, y1, x2, y2, class], …]`` (class a name or an index) -> the list."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
        value = None
    ok = isinstance(value, list) and all(
        isinstance(b, list) and len(b) == 5 and all(finite_number(v) for v in b[:4])
        and isinstance(b[4], (str, int)) and not isinstance(b[4], bool) for b in value)
    if not ok:
        raise GraftError(f"{where}: boxes are written [[x1, y1, x2, y2, class], …] (pixels; class a name or an "
                         f"index), got {quoted(text)}.")
    for b in value:
        if not (b[0] < b[2] and b[1] < b[3]):
            raise GraftError(f"{where}: box {b} needs x1 < x2 and y1 < y2.")
    _check_count(value, where)
    return value


def check_inside(boxes: Sequence[Sequence[float]], size: tuple[int, int], where: str) -> None:
    w, h = size
    for b in boxes:
        if b[0] < 0 or b[1] < 0 or b[2] > w + 0.5 or b[3] > h + 0.5:
            raise GraftError(f"{where}: box {[round(float(v), 2) for v in b[:4]]} lies outside its {w}x{h} image.")


def read_coco(path: Path) -> tuple[list[str], list[tuple[Path, list[list[float]]]]]:
    """A COCO detection file -> ``(class names, [(image path, boxes in pixels with class indices)])``: classes in
    category-id order, images relative to the file's folder, an image without annotations a labelled negative."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        categories = sorted(data["categories"], key=lambda c: c["id"])
        index = {c["id"]: i for i, c in enumerate(categories)}
        names = [str(c.get("name", c["id"])) for c in categories]
        images = {im["id"]: (path.parent / im["file_name"], im) for im in data["images"]}
        boxes: dict[Any, list[list[float]]] = {k: [] for k in images}
        for number, ann in enumerate(data.get("annotations", []), start=1):
            if ann.get("iscrowd"):
                continue
            bbox = ann["bbox"]
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(finite_number(v) for v in bbox)):
                # not float(v) for each: a string of 100,000 characters came back whole in float's message
                raise GraftError(f"{path}: annotation {number}: bbox must be [x, y, width, height], four numbers, "
                                 f"got {quoted(json.dumps(bbox))}.")
            x, y, bw, bh = (float(v) for v in bbox)
            if ann["image_id"] not in images:
                raise GraftError(f"{path}: annotation {number} names image id {quoted(ann['image_id'])}, which the "
                                 "file does not list.")
            if ann["category_id"] not in index:
                raise GraftError(f"{path}: annotation {number} has category {quoted(ann['category_id'])}, which "
                                 "the file does not list.")
            if bw > 0 and bh > 0:
                boxes[ann["image_id"]].append([x, y, x + bw, y + bh, float(index[ann["category_id"]])])
    except GraftError:
        raise
    except RecursionError:  # JSON nested past the parser's depth (found by test_fuzz_dense_targets.py)
        raise GraftError(f"{path}: not a COCO detection file (nested too deeply to read).") from None
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise GraftError(f"{path}: not a COCO detection file (images, annotations, categories): "
                         f"{exc.__class__.__name__}: {exc}.") from None
    if len(names) < 1:
        raise GraftError(f"{path}: the COCO file lists no category.")
    return names, [(images[k][0], boxes[k]) for k in images]


# -- heads read from the data ------------------------------------------------------------------------------
def resolve_dense(spec: HeadSpec, cells: Sequence[tuple[Path, str, str]], base: Path) -> tuple[HeadSpec, list[Any]]:
    """A dense head of a CSV: ``cells`` are ``(image path, cell text, where)`` for every usable row. Returns
    the head with its classes and each row's target (see the module docstring), checking every mask and box."""
    from dataclasses import replace

    if spec.kind == "segment":
        return _resolve_masks(spec, cells, base, replace)
    return _resolve_boxes(spec, cells, base, replace)


def _resolve_masks(spec, cells, base, replace):
    paths = [(image, _path(text, base) if text else None, where) for image, text, where in cells]
    named = next((m for _, m, _ in paths if m is not None), None)
    if named is None:
        raise GraftError(f"Head {spec.name!r} has no labelled example: no image has a mask.")
    labels = list(spec.labels) or (_classes_above(named, base) or [])
    known = len(labels) if labels else None
    targets, top = [], 1
    for image, mask, where in paths:
        if mask is None:
            targets.append(None)
            continue
        if not mask.is_file():
            raise GraftError(f"{where}: mask file {mask} not found.")
        present = check_mask(mask, image, known, spec.ignore_index)
        top = max([top, *present])
        targets.append(str(mask))
    if not labels:
        labels = [str(i) for i in range(max(2, top + 1))]
    return replace(spec, labels=labels, outputs=len(labels)), targets


def _resolve_boxes(spec, cells, base, replace):
    raw: list[tuple[Path, list[list[Any]] | None, str]] = []
    names: set[str] = set()
    top = -1
    yolo_classes = None
    for image, text, where in cells:
        if not text:
            raw.append((image, None, where))
            continue
        if text.lower().endswith(".txt") and not text.lstrip().startswith("["):
            label = _path(text, base)
            if not label.is_file():
                raise GraftError(f"{where}: box file {label} not found.")
            yolo_classes = yolo_classes or _classes_above(label, base)
            limit = len(spec.labels or yolo_classes or []) or None
            boxes = parse_yolo(label, upright_size(image), limit)
        else:
            boxes = parse_box_cell(text, where)
            check_inside(boxes, upright_size(image), where)
        for b in boxes:
            if isinstance(b[4], str):
                names.add(b[4])
            else:
                top = max(top, int(b[4]))
        raw.append((image, boxes, where))
    if all(b is None for _, b, _ in raw):
        raise GraftError(f"Head {spec.name!r} has no labelled example: no image has box labels.")
    if names and top >= 0 and not spec.labels:
        raise GraftError(f"Head {spec.name!r}: the boxes name some classes and number others; use one or the other.")
    labels = list(spec.labels) or yolo_classes or (sorted(names) if names else [str(i) for i in range(max(1, top + 1))])
    targets = []
    for _, boxes, where in raw:
        if boxes is None:
            targets.append(None)
            continue
        rows = []
        for b in boxes:
            cls = b[4]
            if isinstance(cls, str):
                if cls not in labels:
                    raise GraftError(f"{where}: unknown class {cls!r} (head {spec.name!r} has {', '.join(labels[:8])}).")
                cls = labels.index(cls)
            elif not 0 <= int(cls) < len(labels):
                raise GraftError(f"{where}: class index {int(cls)} is out of range (0-{len(labels) - 1}).")
            rows.append([float(v) for v in b[:4]] + [float(cls)])
        targets.append(rows)
    return replace(spec, labels=labels, outputs=len(labels)), targets


def _classes_above(path: Path, base: Path) -> list[str] | None:
    """The ``classes.txt`` nearest above a label file, looking no higher than ``base`` (the data's folder)."""
    folder = path.parent
    while True:
        found = read_classes(folder)
        if found is not None or folder == base or folder.parent == folder or base not in folder.parents:
            return found
        folder = folder.parent


def _path(text: str, base: Path) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p


def folder_dense(root: Path, images: Sequence[Path], specs: Sequence[HeadSpec] | None = None
                 ) -> list[tuple[HeadSpec, list[Any]]]:
    """Dense heads of an image folder, each with every image's target: ``masks/`` (segment) and ``labels/``
    (YOLO files: detect) mirroring the images' paths below ``root``. ``specs``: the dense heads asked for
    (a segment head reads ``masks/``, a detect head ``labels/``); None: one per folder found, named
    ``mask`` and ``boxes``."""
    folders = {"segment": root / MASKS_FOLDER, "detect": root / LABELS_FOLDER}
    if specs is None:
        specs = [HeadSpec(DEFAULT_COLUMNS[kind], kind, outputs=2) for kind, f in folders.items() if f.is_dir()]
    found = []
    for spec in specs:
        folder = folders[spec.kind]
        if not folder.is_dir():
            raise GraftError(f"{root}: head {spec.name!r} ({spec.kind}) reads {folder.name}/ beside the class "
                             f"folders ({folder.name}/<class>/<image name>.{'png' if spec.kind == 'segment' else 'txt'}), "
                             "which is not there.")
        suffix = ".png" if spec.kind == "segment" else ".txt"
        cells = []
        for image in images:
            target = folder / Path(image).relative_to(root).with_suffix(suffix)
            cells.append((Path(image), str(target) if target.is_file() else "", str(image)))
        found.append(resolve_dense(spec, cells, root))
    return found


def label_folders(root: Path, class_folders: Sequence[str]) -> set[str]:
    """The folders of ``root`` that hold masks or box labels (``masks``, ``labels`` with a subfolder named like
    a class folder), not classes."""
    names = {MASKS_FOLDER, LABELS_FOLDER}
    return {n for n in names if n in class_folders and any((root / n / c).is_dir() for c in class_folders if c not in names)}


# -- what dense heads train on ------------------------------------------------------------------------------
def missing_target(spec: HeadSpec, size: int):
    import torch

    if spec.kind == "segment":
        return torch.full((size, size), spec.ignore_index, dtype=torch.int64)
    return torch.full((MAX_BOXES, 5), math.nan, dtype=torch.float32)


def padded_boxes(rows: np.ndarray):
    """``(M, 5)`` boxes -> float32 ``(MAX_BOXES, 5)``, class -1 in the padding rows."""
    import torch

    out = torch.zeros((MAX_BOXES, 5), dtype=torch.float32)
    out[:, 4] = -1
    if len(rows):
        out[:len(rows)] = torch.as_tensor(rows[:MAX_BOXES], dtype=torch.float32)
    return out


class DenseItem:
    """One sample -> ``(CHW float32 image, {dense head: target})`` for the dense heads among ``heads``. Without
    ``transform`` the image is exactly :func:`engine.network.preprocess.preprocess` (resize, centre crop) and
    masks (nearest) and boxes follow that geometry; with one (transforms.v2, e.g. random resized crop and
    flip) image, masks and boxes go through it together. Picklable (it runs in DataLoader workers)."""

    def __init__(self, heads: Sequence[HeadSpec], spec: InputSpec, transform: Any = None) -> None:
        if spec.channels > 3:
            raise GraftError("Dense heads (segment, detect) read RGB or greyscale inputs, not "
                             f"{spec.channels}-band images.")
        self.heads = [h for h in heads if h.dense]
        self.spec = spec
        self.transform = transform

    def __call__(self, path: Path, targets: dict[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
        import torch

        from engine.network.preprocess import normalise, to_grey, to_rgb

        spec = self.spec
        image = open_image(path)
        image = to_grey(image, spec.alpha_background) if spec.channels == 1 else to_rgb(image, spec.alpha_background)
        w, h = image.size
        masks = {hd.name: read_mask(targets[hd.name]) for hd in self.heads
                 if hd.kind == "segment" and targets.get(hd.name) is not None}
        boxes = {hd.name: np.asarray(targets[hd.name], dtype=np.float32).reshape(-1, 5) for hd in self.heads
                 if hd.kind == "detect" and targets.get(hd.name) is not None}
        if self.transform is None:
            array = preprocess(image, spec)
            out_masks = {k: torch.from_numpy(np.asarray(resize_and_crop(Image.fromarray(m.astype(np.int32)), spec,
                                                                        "nearest"), dtype=np.int64))
                         for k, m in masks.items()}
            nw, nh, left, top = crop_geometry(w, h, spec)
            scale = np.array([nw / w, nh / h, nw / w, nh / h], dtype=np.float32)
            shift = np.array([left, top, left, top], dtype=np.float32)
            out_boxes = {k: _clip(np.concatenate([b[:, :4] * scale - shift, b[:, 4:]], axis=1), spec.size)
                         for k, b in boxes.items()}
        else:
            from torchvision import tv_tensors

            extra = {f"m:{k}": tv_tensors.Mask(torch.from_numpy(m)) for k, m in masks.items()}
            extra.update({f"b:{k}": tv_tensors.BoundingBoxes(torch.from_numpy(b[:, :4].copy()), format="XYXY",
                                                              canvas_size=(h, w)) for k, b in boxes.items()})
            image, moved = self.transform(image, extra)
            array = normalise(image, spec)
            out_masks = {k: moved[f"m:{k}"].as_subclass(torch.Tensor).long() for k in masks}
            out_boxes = {k: _clip(np.concatenate([moved[f"b:{k}"].as_subclass(torch.Tensor).numpy(), b[:, 4:]], axis=1),
                                  spec.size) for k, b in boxes.items()}
        result: dict[str, Any] = {}
        for hd in self.heads:
            if hd.name in out_masks:
                result[hd.name] = out_masks[hd.name]
            elif hd.name in out_boxes:
                result[hd.name] = padded_boxes(out_boxes[hd.name])
            else:
                result[hd.name] = missing_target(hd, spec.size)
        return array, result


def _clip(rows: np.ndarray, size: int) -> np.ndarray:
    """Boxes clipped to the input square; those left with less than a pixel of width or height dropped."""
    rows = rows.copy()
    rows[:, :4] = np.clip(rows[:, :4], 0, size)
    keep = (rows[:, 2] - rows[:, 0] >= 1) & (rows[:, 3] - rows[:, 1] >= 1)
    return rows[keep]


def dense_counts(spec: HeadSpec, targets: Sequence[Any]) -> dict[str, int]:
    """Per class: boxes (detect) or images whose mask holds the class (segment, as the mask was checked
    when the data loaded)."""
    names = spec.label_names
    counts = dict.fromkeys(names, 0)
    for t in targets:
        if t is None:
            continue
        if spec.kind == "segment":
            for c in PRESENT.get(str(t), ()):
                if 0 <= c < len(names):
                    counts[names[c]] += 1
        else:
            for row in t:
                counts[names[int(row[4])]] += 1
    return counts
