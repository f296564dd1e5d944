"""Masks and boxes as data: where they come from, one clear message naming a bad file, and the tensors the dense
heads train on following the image's resize, crop and augmentation."""
import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from engine.data.dense_targets import MAX_BOXES, DenseItem, parse_yolo
from engine.data.head_args import parse_head_arg
from engine.data.image_dataset import ImageDataset
from engine.data.loading import load_data
from engine.errors import GraftError
from engine.network.heads import HeadSpec
from engine.network.preprocess import InputSpec

SPEC = InputSpec(size=32, resize=32)


def _image(path, w=40, h=32, box=(8, 6, 24, 22)):
    a = np.zeros((h, w, 3), np.uint8)
    a[box[1]:box[3], box[0]:box[2]] = 255
    Image.fromarray(a).save(path)


def _mask(path, w=40, h=32, box=(8, 6, 24, 22), cls=1, mode="L"):
    m = np.zeros((h, w), np.uint8)
    m[box[1]:box[3], box[0]:box[2]] = cls
    m[0, 0] = 255
    Image.fromarray(m, mode).save(path)


def _manifest(folder, n=6, mask=True, boxes=True, edit=None):
    (folder / "masks").mkdir(exist_ok=True)
    rows = []
    for i in range(n):
        _image(folder / f"{i}.png")
        if mask:
            _mask(folder / "masks" / f"{i}.png", cls=1 + i % 2)
        rows.append({"image": f"{i}.png", "kind": "ab"[i % 2], "mask": f"masks/{i}.png" if mask else "",
                     "boxes": json.dumps([[8, 6, 24, 22, "ab"[i % 2]]]) if boxes else ""})
    rows[-1]["mask"] = ""  # an image without a mask
    rows[-2]["boxes"] = ""  # one without box labels
    if edit:
        edit(rows)
    with open(folder / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return folder / "labels.csv"


HEADS = [parse_head_arg("kind:single"), parse_head_arg("seg:segment:mask"), parse_head_arg("box:detect:boxes")]


def test_csv_masks_and_boxes(tmp_path):
    data = load_data(_manifest(tmp_path), [HeadSpec.from_dict(h.to_dict()) for h in HEADS])
    seg, box = data.head("seg"), data.head("box")
    assert seg.kind == "segment" and seg.labels == ["0", "1", "2"]
    assert box.kind == "detect" and box.labels == ["a", "b"]
    summary = data.summary()["heads"]
    assert summary["seg"]["n_labelled"] == 5 and summary["box"]["n_labelled"] == 5
    assert summary["box"]["counts"] == {"a": 2, "b": 3} and summary["seg"]["counts"]["1"] == 3
    ds = ImageDataset(data.samples, data.heads, SPEC)
    sample = next(i for i, s in enumerate(data.samples) if s.path.name == "0.png")
    image, targets = ds[sample]
    # 40x32 -> 40x32 (shorter side 32), centre crop 32: 4 columns off the left
    assert targets["seg"].dtype == torch.int64 and targets["seg"].shape == (32, 32)
    assert int(targets["seg"][6, 4]) == 1 and int(targets["seg"][6, 3]) == 0 and int(targets["seg"][5, 4]) == 0
    assert targets["box"].shape == (MAX_BOXES, 5)
    assert targets["box"][0].tolist() == [4, 6, 20, 22, 0] and targets["box"][1, 4] == -1
    last = next(i for i, s in enumerate(data.samples) if s.path.name == "5.png")
    assert bool((ds[last][1]["seg"] == 255).all())  # no mask: every pixel unlabelled
    no_boxes = next(i for i, s in enumerate(data.samples) if s.path.name == "4.png")
    assert math.isnan(float(ds[no_boxes][1]["box"][0, 0]))


def test_dense_suggestions_add_a_head_per_mask_and_boxes_column(tmp_path):
    """The window's load (dense_suggestions=True): the suggested heads and a segment head per mask column, a
    detect head per boxes column, named after and bound to the column; main.py train's load leaves them out."""
    path = _manifest(tmp_path)
    data = load_data(path, dense_suggestions=True)
    assert [(h.name, h.kind, h.columns) for h in data.heads] == [
        ("kind", "single", ["kind"]), ("mask", "segment", ["mask"]), ("boxes", "detect", ["boxes"])]
    assert data.head("mask").labels == ["0", "1", "2"] and data.head("boxes").labels == ["a", "b"]
    assert data.summary()["heads"]["boxes"]["counts"] == {"a": 2, "b": 3}
    assert not any("'mask'" in n or "'boxes'" in n for n in data.notes)  # no "is not a head" for a head
    plain = load_data(path)
    assert [h.name for h in plain.heads] == ["kind"]
    assert any(n.startswith("Column 'mask' is not a head: it holds mask files") for n in plain.notes)
    assert [h.name for h in load_data(path, [parse_head_arg("kind:single")], dense_suggestions=True).heads] == ["kind"]


def test_a_suggested_dense_head_with_a_missing_mask_is_left_out_with_a_warning(tmp_path):
    """A manifest copied away from its masks still loads in the window: the suggested segment head is left out
    and a warning says why; a head the user names still refuses the file."""
    def gone(rows):
        rows[0]["mask"] = "masks/gone.png"

    path = _manifest(tmp_path, edit=gone)
    data = load_data(path, dense_suggestions=True)
    assert [h.name for h in data.heads] == ["kind", "boxes"]
    assert data.warnings == [f"labels.csv row 2, column 'mask': mask file {tmp_path / 'masks' / 'gone.png'} not "
                             "found. The column 'mask' is left out of the suggested heads (no segmentation head): "
                             "fix it and load the data again to learn it."]
    with pytest.raises(GraftError, match="gone.png not found"):
        load_data(path, [parse_head_arg("seg:segment:mask")], dense_suggestions=True)


def test_augmented_masks_and_boxes_stay_on_the_object(tmp_path):
    data = load_data(_manifest(tmp_path), [HeadSpec.from_dict(h.to_dict()) for h in HEADS])
    ds = ImageDataset(data.samples, data.heads, SPEC, augment=True)
    torch.manual_seed(0)
    for _ in range(8):
        image, targets = ds[0]
        white = image.mean(0) > 0  # the drawn square (normalised white)
        mask = targets["seg"]
        assert bool(((mask >= 1) & (mask != 255)).eq(white).float().mean() > 0.9)
        x1, y1, x2, y2, _ = targets["box"][0].tolist()
        ys, xs = torch.nonzero(white, as_tuple=True)
        assert abs(xs.min().item() - x1) <= 1.5 and abs(xs.max().item() + 1 - x2) <= 1.5
        assert abs(ys.min().item() - y1) <= 1.5 and abs(ys.max().item() + 1 - y2) <= 1.5


@pytest.mark.parametrize("problem, edit, message", [
    ("unreadable mask", lambda f, rows: (f / "masks" / "1.png").write_bytes(b"not a png"), "masks/1.png: not a readable mask"),
    ("wrong size", lambda f, rows: _mask(f / "masks" / "2.png", w=30), "masks/2.png: the mask is 30x32 but its image 2.png is 40x32"),
    ("class out of range", lambda f, rows: (
        (f / "masks" / "classes.txt").write_text("bg\nx\ny\n"), _mask(f / "masks" / "3.png", cls=7)),
     "masks/3.png: class index 7 is out of range"),
    ("rgb mask", lambda f, rows: Image.new("RGB", (40, 32)).save(f / "masks" / "0.png"), "masks/0.png: a mask holds one class index"),
    ("missing mask file", lambda f, rows: (f / "masks" / "1.png").unlink(), "mask file"),
])
def test_bad_masks_name_the_file(tmp_path, problem, edit, message):
    path = _manifest(tmp_path)
    edit(tmp_path, None)
    with pytest.raises(GraftError, match=message.replace("(", r"\(")) as info:
        load_data(path, [HeadSpec.from_dict(h.to_dict()) for h in HEADS])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("cell, message", [
    ("[[1, 2, 3]]", r"boxes are written \[\[x1, y1, x2, y2, class\]"),
    ("nonsense", "boxes are written"),
    ('[[20, 2, 10, 9, "a"]]', "needs x1 < x2"),
    ('[[0, 0, 90, 9, "a"]]', "lies outside its 40x32 image"),
])
def test_bad_box_cells_name_the_row(tmp_path, cell, message):
    def edit(rows):
        rows[1]["boxes"] = cell
    with pytest.raises(GraftError, match=message) as info:
        load_data(_manifest(tmp_path, edit=edit), [HeadSpec.from_dict(h.to_dict()) for h in HEADS])
    assert "labels.csv row 3" in str(info.value)


def test_yolo_files_and_their_mistakes(tmp_path):
    good = tmp_path / "a.txt"
    good.write_text("0 0.5 0.5 0.25 0.5\n\n1 0.1 0.2 0.2 0.2\n")
    assert parse_yolo(good, (40, 32), 2) == [[15.0, 8.0, 25.0, 24.0, 0.0], pytest.approx([0.0, 3.2, 8.0, 9.6, 1.0])]
    for text, message in (("0 0.5 0.5 0.2\n", "line 1: expected 'class x_center"), ("3 0.5 0.5 0.2 0.2\n", "class index 3 is out of range"),
                          ("0 0.5 0.5 0.2 0.2\nx 1 1 1 1\n", "line 2: expected"), ("0 1.5 0.5 0.2 0.2\n", "fractions of the image")):
        bad = tmp_path / "b.txt"
        bad.write_text(text)
        with pytest.raises(GraftError, match=message) as info:
            parse_yolo(bad, (40, 32), 2)
        assert str(bad) in str(info.value)


def test_image_folder_with_masks_and_yolo_labels(tmp_path):
    for cls in ("a", "b"):
        for folder in (tmp_path / cls, tmp_path / "masks" / cls, tmp_path / "labels" / cls):
            folder.mkdir(parents=True)
        for i in range(3):
            _image(tmp_path / cls / f"{i}.png")
            _mask(tmp_path / "masks" / cls / f"{i}.png", cls=1)
            if i:  # 0.png: no label file, so no box label
                (tmp_path / "labels" / cls / f"{i}.txt").write_text("0 0.4 0.4375 0.4 0.5\n" if cls == "a" else "")
    (tmp_path / "labels" / "classes.txt").write_text("square\n")
    data = load_data(tmp_path)
    assert [(h.name, h.kind) for h in data.heads] == [("class", "single"), ("mask", "segment"), ("boxes", "detect")]
    assert data.head("class").labels == ["a", "b"] and data.head("boxes").labels == ["square"]
    by_name = {(s.path.parent.name, s.path.name): s for s in data.samples}
    assert by_name[("a", "1.png")].targets["boxes"] == [pytest.approx([8, 6, 24, 22, 0])]
    assert by_name[("b", "1.png")].targets["boxes"] == []  # an empty file: labelled, no object
    assert "boxes" not in by_name[("a", "0.png")].targets  # no file: not labelled


def test_coco_file_as_data(tmp_path):
    for i in range(4):
        _image(tmp_path / f"{i}.png")
    coco = {"images": [{"id": i, "file_name": f"{i}.png", "width": 40, "height": 32} for i in range(4)],
            "categories": [{"id": 7, "name": "square"}, {"id": 3, "name": "dot"}],
            "annotations": [{"id": 1, "image_id": 0, "bbox": [8, 6, 16, 16], "category_id": 7},
                            {"id": 2, "image_id": 1, "bbox": [1, 1, 2, 2], "category_id": 3}]}
    (tmp_path / "instances.json").write_text(json.dumps(coco))
    data = load_data(tmp_path / "instances.json")
    assert data.heads[0].kind == "detect" and data.heads[0].labels == ["dot", "square"]
    targets = {s.path.name: s.targets["boxes"] for s in data.samples}
    assert targets["0.png"] == [[8.0, 6.0, 24.0, 22.0, 1.0]] and targets["2.png"] == []
    coco["annotations"][0]["category_id"] = 99
    (tmp_path / "bad.json").write_text(json.dumps(coco))
    with pytest.raises(GraftError, match="bad.json: annotation 1 has category 99"):
        load_data(tmp_path / "bad.json")


def test_head_argument_for_dense_heads():
    seg = parse_head_arg("seg:segment:mask@features.3,features.5,features.8")
    assert (seg.kind, seg.columns, seg.layers, seg.layer) == ("segment", ["mask"], ["features.3", "features.5", "features.8"], None)
    box = parse_head_arg("box:detect:boxes:0.5")
    assert (box.kind, box.columns, box.loss_weight, box.layers) == ("detect", ["boxes"], 0.5, [])
    assert parse_head_arg("mask:segment").columns == ["mask"]
    with pytest.raises(GraftError, match="reads one layer; only segment and detect"):
        parse_head_arg("shape:single@features.3,features.5")
    with pytest.raises(GraftError, match="empty layer name"):
        parse_head_arg("seg:segment@features.3,")


def test_dense_item_refuses_many_bands():
    with pytest.raises(GraftError, match="RGB or greyscale"):
        DenseItem([HeadSpec("s", "segment", outputs=2)], InputSpec(size=32, resize=32).with_channels(4))
