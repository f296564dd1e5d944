"""Masks and box files fuzzed (Hypothesis): the readers of dense targets (engine/data/dense_targets.py) end
in their value or one readable GraftError naming the file, within 30 s and 300 MB, writing nothing (each
call in a forked child, tests/fuzz_support.py). Fuzzed: PNG/TIFF masks (any mode Pillow writes: 1, L, P,
I;16, I, RGB, RGBA, LA; sizes that match their image or not; class indices in and out of range; truncated
or with flipped bytes), YOLO label lines (malformed, NaN, inf, negative, out of [0, 1], huge integers,
other encodings, NUL bytes) and COCO JSON (valid, then keys deleted, values of other types, ids that do
not match, deep nesting, huge arrays)."""
from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, strategies as st
from PIL import Image

from engine.data.dense_targets import check_mask, parse_yolo, read_coco
from fuzz_support import check, paths_in, readable, short

MEMORY_MB = 300
IMAGE_SIZE = (12, 9)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dense")
    Image.new("RGB", IMAGE_SIZE, (9, 9, 9)).save(root / "img.png")
    Image.new("RGB", (5, 5)).save(root / "other.png")
    return root


def refused_or(fn, path):
    """``fn()``; a GraftError must be readable, short (whatever the file holds) and name the file."""
    from engine.errors import GraftError

    try:
        return fn()
    except GraftError as exc:
        assert readable(str(exc)), str(exc)[:500]
        assert short(str(exc), path), f"{len(str(exc))} characters: {str(exc)[:500]}"
        assert path.name in str(exc), f"the message does not name {path.name}: {str(exc)[:300]}"
        raise


# -- masks ------------------------------------------------------------------------------------------------
@st.composite
def masks(draw) -> tuple[str, bytes]:
    mode = draw(st.sampled_from(["1", "L", "P", "I;16", "I", "RGB", "RGBA", "LA", "F"]))
    size = IMAGE_SIZE if draw(st.integers(0, 2)) else (draw(st.integers(1, 40)), draw(st.integers(1, 40)))
    top = draw(st.sampled_from([1, 3, 4, 255, 256, 65535]))
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 16)))
    values = rng.integers(0, top + 1, (size[1], size[0]))
    if mode in ("RGB", "RGBA", "LA"):
        bands = {"RGB": 3, "RGBA": 4, "LA": 2}[mode]
        img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], bands), dtype=np.uint8), mode)
    elif mode == "I;16":
        img = Image.fromarray(values.astype(np.uint16))
    elif mode == "I":
        img = Image.fromarray(values.astype(np.int32) - draw(st.sampled_from([0, 0, 5])))
    elif mode == "F":
        img = Image.fromarray(values.astype(np.float32))
    else:
        img = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L")
        img = img.convert(mode) if mode != "L" else img
    fmt = draw(st.sampled_from(["PNG", "PNG", "TIFF"]))
    buffer = io.BytesIO()
    try:
        img.save(buffer, fmt)
    except OSError:
        img.save(buffer := io.BytesIO(), "TIFF")
        fmt = "TIFF"
    data = buffer.getvalue()
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip"]))
    if damage == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif damage == "flip":
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    return ("mask.png" if fmt == "PNG" else "mask.tif"), data


@given(mask=masks(), classes=st.sampled_from([None, 2, 4, 256]), ignore=st.sampled_from([255, 0, -1]))
def test_any_mask_is_read_or_refused_clearly(tmp_path_factory, folder, mask, classes, ignore):
    name, data = mask
    where = tmp_path_factory.mktemp("mask", numbered=True)
    path = where / name
    path.write_bytes(data)

    def read():
        present = refused_or(lambda: check_mask(path, folder / "img.png", classes, ignore), path)
        assert all(isinstance(v, int) for v in present)
        if classes is not None:
            assert all(0 <= v < classes for v in present), present
        return sorted(present)

    outcome = check(read, allowed=(where,), memory_mb=MEMORY_MB, label="mask file")
    if outcome.kind == "graft":
        assert readable(outcome.detail), outcome.detail[:500]


# -- YOLO labels ------------------------------------------------------------------------------------------
number = st.sampled_from(["0", "1", "0.5", "0.25", "-0.1", "1.5", "nan", "inf", "-inf", "1e309", "1e-320", "",
                          "0x1", "½", "٣", "1_0", "9" * 5000, "1,5", "+0.5", "0.5\x00"])
yolo_line = st.one_of(
    st.lists(number, min_size=0, max_size=7).map(" ".join),
    st.tuples(st.sampled_from(["0", "1", "2", "-1", "7", "1.0", "999999999999999999999", "a"]),
              st.lists(st.sampled_from(["0.5", "0.2", "0.9", "1", "0", "nan"]), min_size=4, max_size=4))
      .map(lambda t: " ".join([t[0], *t[1]])),
    st.text(max_size=30),
)


@given(lines=st.lists(yolo_line, max_size=20), encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]),
       classes=st.sampled_from([None, 1, 3]), ending=st.sampled_from(["\n", "\r\n", "\r"]))
@example(lines=["0 0.5 0.5 0.5 0.5", " ".join(["9" * 5000] * 5)], encoding="utf-8", classes=None, ending="\n")
@example(lines=["0 0.5 0.5 1.5 " + "0" * 40_000 + "1"], encoding="utf-8", classes=None, ending="\n")
def test_any_yolo_file_is_read_or_refused_clearly(tmp_path_factory, lines, encoding, classes, ending):
    where = tmp_path_factory.mktemp("yolo", numbered=True)
    path = where / "img.txt"
    path.write_bytes(ending.join(lines).encode(encoding, errors="replace"))

    def read():
        boxes = refused_or(lambda: parse_yolo(path, IMAGE_SIZE, classes), path)
        for x1, y1, x2, y2, cls in boxes:
            assert 0 <= x1 <= x2 <= IMAGE_SIZE[0] and 0 <= y1 <= y2 <= IMAGE_SIZE[1], (x1, y1, x2, y2)
            assert cls == int(cls) >= 0 and (classes is None or cls < classes)
        return len(boxes)

    check(read, allowed=(where,), memory_mb=MEMORY_MB, label="YOLO label file")


# -- COCO JSON --------------------------------------------------------------------------------------------
COCO = {"images": [{"id": 1, "file_name": "img.png", "width": 12, "height": 9},
                   {"id": 2, "file_name": "other.png", "width": 5, "height": 5}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 1, 4, 5], "iscrowd": 0},
                        {"id": 2, "image_id": 2, "category_id": 7, "bbox": [0, 0, 2.5, 2.5]}],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]}
odd = st.sampled_from([None, True, 0, -1, 2 ** 63, 1e308, float("nan"), float("inf"), "", "x", "../../etc/passwd",
                       "/", [], {}, [1, 2], [0, 0, 0, 0], [1, 1, -4, 5], [1, 1, 1e308, 1e308], ["a", "b", "c", "d"],
                       {"id": 3}, [{"id": 1}], 3, 7, 1, 2, "x" * 100_000, "1" * 5000, 10 ** 400, ["x" * 100_000] * 4])


@st.composite
def coco_files(draw) -> bytes:
    how = draw(st.sampled_from(["mutate", "mutate", "mutate", "deep", "huge", "truncate", "bytes"]))
    if how == "deep":
        depth = draw(st.sampled_from([50, 100_000]))
        return ('{"images": ' + "[" * depth + "]" * depth + ', "annotations": [], "categories": []}').encode()
    if how == "huge":
        n = draw(st.sampled_from([10_000, 200_000]))
        data = copy.deepcopy(COCO)
        data["annotations"] = [{"image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 2]}] * n
        return json.dumps(data).encode()
    if how == "bytes":
        return draw(st.binary(max_size=200))
    data = copy.deepcopy(COCO)
    for _ in range(draw(st.integers(1, 4))):
        places = [p for p in paths_in(data) if p]
        if not places:
            break
        place = draw(st.sampled_from(places))
        parent = data
        for key in place[:-1]:
            parent = parent[key]
        if draw(st.integers(0, 3)) == 0:
            del parent[place[-1]]
        else:
            # a copy: sampled_from hands every example the same list or dict, and a later mutation in this
            # loop may land inside it (that changed the strategy's own values for the examples after)
            parent[place[-1]] = copy.deepcopy(draw(odd))
    text = json.dumps(data).encode()
    if how == "truncate":
        text = text[:draw(st.integers(0, len(text) - 1))]
    return text


def coco_with(**annotation) -> bytes:
    data = copy.deepcopy(COCO)
    data["annotations"][0].update(annotation)
    return json.dumps(data).encode()


@given(data=coco_files())
@example(data=coco_with(bbox=["x" * 100_000] * 4))  # float()'s message quoted the string whole
@example(data=coco_with(image_id="y" * 100_000))
@example(data=coco_with(category_id="z" * 100_000))
@example(data=coco_with(bbox=[1, 1, float("inf"), 2]))
@example(data=coco_with(bbox=[10 ** 400, 1, 2, 2]))  # math.isfinite raised OverflowError
def test_any_coco_file_is_read_or_refused_clearly(folder, tmp_path_factory, data):
    where = tmp_path_factory.mktemp("coco", numbered=True)
    path = where / "instances.json"
    path.write_bytes(data)

    def read():
        names, images = refused_or(lambda: read_coco(path), path)
        assert names and all(isinstance(n, str) for n in names)
        for _, boxes in images:
            for b in boxes:
                assert len(b) == 5 and 0 <= b[4] < len(names)
        return len(images)

    check(read, allowed=(where,), memory_mb=MEMORY_MB, label="COCO file")
