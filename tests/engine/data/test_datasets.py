"""engine.data (loading, manifests, folders, decoding, splits, image_dataset, head_args): loading image folders and CSV manifests, checks, splits and the torch Dataset."""
from __future__ import annotations

import math
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from engine.data.decoding import check_image  # noqa: E402
from engine.data.head_args import parse_head_arg  # noqa: E402
from engine.data.image_dataset import ImageDataset  # noqa: E402
from engine.data.loading import load_data  # noqa: E402
from engine.data.manifests import suggest_heads  # noqa: E402
from engine.data.samples import DataSource, Sample  # noqa: E402
from engine.errors import GraftError  # noqa: E402
from engine.network.heads import HeadSpec  # noqa: E402
from engine.network.preprocess import InputSpec, preprocess_file  # noqa: E402

SPEC = InputSpec(size=32, resize=36)


def make_image(path: Path, seed: int = 0, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    img = Image.fromarray(arr[..., 0] if channels == 1 else arr, mode)
    img.save(path)
    return path


def make_folder(root: Path, counts: dict[str, int], ext: str = "png") -> Path:
    k = 0
    for cls, n in counts.items():
        for i in range(n):
            make_image(root / cls / f"{cls}_{i}.{ext}", seed=k)
            k += 1
    return root


def write_csv(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.strip() + "\n", encoding="utf-8")
    return path


def manifest(tmp_path: Path, n: int = 6) -> Path:
    """images img0..img{n-1}.png next to a CSV whose body the caller writes."""
    for i in range(n):
        make_image(tmp_path / "img" / f"{i}.png", seed=i)
    return tmp_path / "labels.csv"


def paths(samples: list[Sample]) -> list[str]:
    return [s.path.name for s in samples]


# -- folders ---------------------------------------------------------------------------------------
def test_folder_classes_and_targets(tmp_path):
    root = make_folder(tmp_path / "data", {"dog": 5, "cat": 4, "bird": 3})
    ds = load_data(root)
    assert ds.kind == "folder" and ds.root == root
    [head] = ds.heads
    assert head.name == "class" and head.kind == "single"
    assert head.labels == ["bird", "cat", "dog"] and head.outputs == 3
    assert len(ds.train) + len(ds.val) == 12 and not ds.skipped
    for s in ds.samples:
        assert head.labels[s.targets["class"]] == s.path.parent.name
    summary = ds.summary()
    assert summary["heads"]["class"]["counts"] == {"bird": 3, "cat": 4, "dog": 5}
    assert summary["n_train"] + summary["n_val"] == 12


def test_folder_uses_given_head(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 3, "b": 3})
    ds = load_data(root, [HeadSpec("animal", "single", labels=["b", "a"], hidden=[8])])
    [head] = ds.heads
    assert head.name == "animal" and head.labels == ["b", "a"] and head.hidden == [8]
    for s in ds.samples:
        assert head.labels[s.targets["animal"]] == s.path.parent.name
    with pytest.raises(GraftError, match="'c'"):
        load_data(make_folder(tmp_path / "more", {"a": 2, "b": 2, "c": 2}),
                  [HeadSpec("animal", "single", labels=["a", "b"])])
    with pytest.raises(GraftError, match="one single-label head"):
        load_data(root, [HeadSpec("t", "multi", labels=["x", "y"])])


def test_folder_needs_two_classes(tmp_path):
    root = make_folder(tmp_path / "data", {"only": 3})
    with pytest.raises(GraftError, match="at least 2 class"):
        load_data(root)


def test_folder_empty_class_refused(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 3, "b": 3})
    (root / "c").mkdir()
    (root / "c" / "notes.txt").write_text("hello")
    with pytest.raises(GraftError, match="'c' has no usable images"):
        load_data(root)


def test_corrupt_and_text_files_skipped(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 4, "b": 4}, ext="jpg")
    (root / "a" / "readme.txt").write_text("not an image")
    (root / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage" * 10)
    good = (root / "a" / "a_0.jpg").read_bytes()
    (root / "a" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "b" / ".DS_Store").write_bytes(b"\x00\x01")  # hidden: ignored silently
    ds = load_data(root)
    skipped = {Path(p).name: reason for p, reason in ds.skipped}
    assert set(skipped) == {"readme.txt", "broken.jpg", "truncated.jpg"}
    assert skipped["readme.txt"] == "not an image file"
    assert ds.summary()["n_skipped"] == 3
    assert len(ds.samples) == 8
    assert check_image(root / "a" / "a_0.jpg") is None


def test_no_usable_images(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "x.txt").write_text("x")
    with pytest.raises(GraftError, match="no usable images"):
        load_data(tmp_path)


def test_folder_train_val_layout(tmp_path):
    make_folder(tmp_path / "train", {"a": 3, "b": 3})
    make_folder(tmp_path / "val", {"a": 1, "b": 1})
    ds = load_data(tmp_path)
    assert ds.heads[0].labels == ["a", "b"]
    assert len(ds.train) == 6 and len(ds.val) == 2 and ds.split_from == "folders"
    assert all("val" in s.path.parts for s in ds.val)


# -- CSV -------------------------------------------------------------------------------------------
def three_heads_csv(tmp_path: Path) -> Path:
    csv = manifest(tmp_path, 6)
    return write_csv(csv, """
image,shape,red,striped,size,note
img/0.png,circle,1,0,0.5,x
img/1.png,square,0,true,0.25,y
img/2.png,,yes,no,,z
img/3.png,circle,,1,1.5,w
img/4.png,triangle,0,FALSE,0.75,v
img/5.png,square,1,,,u
""")


def test_csv_three_kinds_with_blanks(tmp_path):
    csv = three_heads_csv(tmp_path)
    heads = [HeadSpec("shape", "single", columns=["shape"]),
             HeadSpec("tags", "multi", columns=["red", "striped"]),
             HeadSpec("size", "regression", columns=["size"])]
    ds = load_data(csv, heads)
    assert ds.kind == "csv" and ds.root == tmp_path and ds.path == csv
    by = {s.path.name: s.targets for s in ds.samples}
    shape, tags, size = ds.heads
    assert shape.labels == ["circle", "square", "triangle"] and shape.outputs == 3
    assert tags.labels == ["red", "striped"] and tags.outputs == 2
    assert size.labels == ["size"] and size.outputs == 1
    assert by["0.png"]["shape"] == 0 and by["1.png"]["shape"] == 1 and by["4.png"]["shape"] == 2
    assert by["2.png"]["shape"] == -1
    assert by["0.png"]["tags"] == [1.0, 0.0]
    assert by["1.png"]["tags"] == [0.0, 1.0]
    assert by["2.png"]["tags"] == [1.0, 0.0]
    assert math.isnan(by["3.png"]["tags"][0]) and by["3.png"]["tags"][1] == 1.0
    assert by["4.png"]["tags"] == [0.0, 0.0]
    assert by["0.png"]["size"] == [0.5] and math.isnan(by["2.png"]["size"][0])


def test_suggest_heads(tmp_path):
    csv = three_heads_csv(tmp_path)
    heads = suggest_heads(csv)
    assert [(h.name, h.kind, h.columns) for h in heads] == [
        ("shape", "single", ["shape"]), ("note", "single", ["note"]),
        ("tags", "multi", ["red", "striped"]), ("size", "regression", ["size"])]
    write_csv(csv, """
image,split,kind,a,b,c,w,h
img/0.png,train,x,0,1,0,1.5,2
img/1.png,val,y,1,0,0,2.5,3
img/2.png,,x,,1,1,,1
""")
    heads = suggest_heads(csv)
    assert [(h.name, h.kind, h.columns) for h in heads] == [
        ("kind", "single", ["kind"]), ("tags", "multi", ["a", "b", "c"]), ("numbers", "regression", ["w", "h"])]
    ds = load_data(csv)  # heads=None: inferred the same way
    assert [h.name for h in ds.heads] == ["kind", "tags", "numbers"]


def test_suggested_heads_avoid_names_pytorch_reserves(tmp_path):
    """A column called 'type' or 'train' still makes a head: its name would clash with nn.ModuleDict."""
    csv = tmp_path / "labels.csv"
    write_csv(csv, """
image,type,train
img/0.png,cat,1.5
img/1.png,dog,2.5
img/2.png,cat,3
""")
    heads = suggest_heads(csv)
    assert [(h.name, h.columns) for h in heads] == [("type_head", ["type"]), ("train_head", ["train"])]


def test_csv_missing_columns_named(tmp_path):
    csv = three_heads_csv(tmp_path)
    with pytest.raises(GraftError, match=r"no column 'colour' \(head 'c'\), 'blue' \(head 't'\)"):
        load_data(csv, [HeadSpec("c", "single", columns=["colour"]),
                        HeadSpec("t", "multi", columns=["red", "blue"])])


def test_csv_without_image_column(tmp_path):
    csv = write_csv(tmp_path / "labels.csv", "file,label\na.png,x\nb.png,y\n")
    with pytest.raises(GraftError, match="no 'image' column"):
        load_data(csv)
    with pytest.raises(GraftError, match="no 'image' column"):
        suggest_heads(csv)


def test_unknown_class_names_row(tmp_path):
    csv = manifest(tmp_path, 3)
    write_csv(csv, "image,shape\nimg/0.png,circle\nimg/1.png,square\nimg/2.png,hexagon\n")
    with pytest.raises(GraftError, match=r"row 4.*'shape'.*'hexagon'"):
        load_data(csv, [HeadSpec("shape", "single", labels=["circle", "square"], columns=["shape"])])


def test_non_numeric_and_bad_bool_name_row(tmp_path):
    csv = manifest(tmp_path, 3)
    write_csv(csv, "image,size\nimg/0.png,0.5\nimg/1.png,big\nimg/2.png,0.1\n")
    with pytest.raises(GraftError, match=r"row 3, column 'size': 'big' is not a number"):
        load_data(csv, [HeadSpec("size", "regression", columns=["size"])])
    write_csv(csv, "image,red\nimg/0.png,1\nimg/1.png,0\nimg/2.png,maybe\n")
    with pytest.raises(GraftError, match=r"row 4, column 'red': 'maybe'"):
        load_data(csv, [HeadSpec("tags", "multi", columns=["red"])])


def test_empty_class_refused(tmp_path):
    csv = manifest(tmp_path, 3)
    write_csv(csv, "image,shape\nimg/0.png,circle\nimg/1.png,square\nimg/2.png,\n")
    with pytest.raises(GraftError, match="class 'star' has no example"):
        load_data(csv, [HeadSpec("shape", "single", labels=["circle", "square", "star"], columns=["shape"])])
    write_csv(csv, "image,red,blue\nimg/0.png,1,0\nimg/1.png,0,0\nimg/2.png,1,\n")
    with pytest.raises(GraftError, match="'blue'.*no positive example"):
        load_data(csv, [HeadSpec("tags", "multi", columns=["red", "blue"])])


def test_head_without_labelled_example_refused(tmp_path):
    csv = manifest(tmp_path, 3)
    write_csv(csv, "image,shape,size\nimg/0.png,circle,\nimg/1.png,square,\nimg/2.png,circle,\n")
    with pytest.raises(GraftError, match="'size' has no labelled example"):
        load_data(csv, [HeadSpec("shape", "single", columns=["shape"]),
                        HeadSpec("size", "regression", columns=["size"])])


def test_csv_missing_and_corrupt_files_skipped(tmp_path):
    csv = manifest(tmp_path, 4)
    (tmp_path / "img" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (tmp_path / "img" / "notes.txt").write_text("hi")
    write_csv(csv, """
image,shape
img/0.png,a
img/1.png,b
img/2.png,a
img/3.png,b
img/missing.png,a
img/bad.png,b
img/notes.txt,a
,b
""")
    ds = load_data(csv)
    reasons = {Path(p).name: r for p, r in ds.skipped}
    assert reasons["missing.png"] == "file not found"
    assert reasons["notes.txt"] == "not an image file"
    assert "bad.png" in reasons
    assert reasons["labels.csv row 9"] == "no image path"
    assert len(ds.samples) == 4 and ds.summary()["n_skipped"] == 4


def test_no_usable_images_in_csv(tmp_path):
    csv = write_csv(tmp_path / "labels.csv", "image,shape\nx.png,a\ny.png,b\n")
    with pytest.raises(GraftError, match="no usable images"):
        load_data(csv)


# -- splits ----------------------------------------------------------------------------------------
def test_split_reproducible(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 15, "b": 15})
    one, two = load_data(root, seed=1), load_data(root, seed=1)
    assert paths(one.val) == paths(two.val) and paths(one.train) == paths(two.train)
    other = load_data(root, seed=2)
    assert set(paths(other.val)) != set(paths(one.val))
    assert len(one.val) == 6 and len(one.train) == 24
    assert not set(paths(one.val)) & set(paths(one.train))


def test_split_stratified_keeps_every_class_in_train(tmp_path):
    root = make_folder(tmp_path / "data", {"big": 20, "one": 1, "two": 2, "three": 3})
    for seed in range(8):
        ds = load_data(root, seed=seed, val_fraction=0.5)
        counts = ds.summary()["heads"]["class"]["train_counts"]
        assert all(n >= 1 for n in counts.values()), counts
        assert ds.val
    big = load_data(root, seed=0, val_fraction=0.25).summary()["heads"]["class"]
    assert big["val_counts"]["big"] == 5


def test_split_at_least_one_each(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 1, "b": 1})
    ds = load_data(root, val_fraction=0.01)
    assert len(ds.train) == 1 and len(ds.val) == 1


def test_split_column_honoured(tmp_path):
    csv = manifest(tmp_path, 6)
    write_csv(csv, """
image,shape,split
img/0.png,a,train
img/1.png,b,Train
img/2.png,a,val
img/3.png,b,validation
img/4.png,a,test
img/5.png,b,
""")
    ds = load_data(csv)
    assert [h.name for h in ds.heads] == ["shape"]
    assert sorted(paths(ds.train)) == ["0.png", "1.png", "5.png"]
    assert sorted(paths(ds.val)) == ["2.png", "3.png", "4.png"]
    assert ds.split_from == "column"
    write_csv(csv, "image,shape,split\nimg/0.png,a,train\nimg/1.png,b,holdout\n")
    with pytest.raises(GraftError, match="row 3.*'holdout'"):
        load_data(csv)


def test_bad_val_fraction(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 2, "b": 2})
    with pytest.raises(GraftError, match="validation fraction"):
        load_data(root, val_fraction=1.0)


# -- summary ---------------------------------------------------------------------------------------
def test_summary_numbers(tmp_path):
    csv = manifest(tmp_path, 5)
    write_csv(csv, """
image,kind,red,round,size
img/0.png,a,1,0,0.5
img/1.png,b,1,,1.0
img/2.png,a,,,
img/3.png,,0,1,2.0
img/4.png,b,1,1,
""")
    s = load_data(csv).summary()
    assert s["kind"] == "csv" and s["n_samples"] == 5 and s["n_train"] + s["n_val"] == 5
    assert s["n_val"] == 1 and s["n_skipped"] == 0
    kind, tags, size = s["heads"]["kind"], s["heads"]["tags"], s["heads"]["size"]
    assert kind["kind"] == "single" and kind["counts"] == {"a": 2, "b": 2}
    assert kind["missing_fraction"] == pytest.approx(0.2)
    assert tags["kind"] == "multi" and tags["counts"] == {"red": 3, "round": 2}
    assert tags["missing_fraction"] == pytest.approx(0.2)  # img/2 has neither
    assert tags["missing_entry_fraction"] == pytest.approx(3 / 10)
    assert size["kind"] == "regression" and size["counts"] == {"size": 3}
    assert size["missing_fraction"] == pytest.approx(0.4)
    assert size["stats"]["size"] == {"min": 0.5, "max": 2.0, "mean": pytest.approx(7 / 6, abs=1e-5)}

    def plain(x):
        if isinstance(x, dict):
            return all(isinstance(k, str) and plain(v) for k, v in x.items())
        if isinstance(x, list):
            return all(plain(v) for v in x)
        return isinstance(x, (str, int, float))
    assert plain(s)


# -- torch dataset ---------------------------------------------------------------------------------
def test_image_dataset_matches_preprocess_exactly(tmp_path):
    csv = three_heads_csv(tmp_path)
    ds = load_data(csv, [HeadSpec("shape", "single", columns=["shape"]),
                         HeadSpec("tags", "multi", columns=["red", "striped"]),
                         HeadSpec("size", "regression", columns=["size"])])
    data = ImageDataset(ds.samples, ds.heads, SPEC)
    assert len(data) == 6
    for i, sample in enumerate(ds.samples):
        image, targets = data[i]
        assert image.dtype.is_floating_point and tuple(image.shape) == (3, 32, 32)
        assert np.array_equal(image.numpy(), preprocess_file(sample.path, SPEC))
        assert targets["shape"].dtype == torch.int64 and targets["shape"].ndim == 0
        assert int(targets["shape"]) == sample.targets["shape"]
        assert targets["tags"].shape == (2,) and str(targets["tags"].dtype) == "torch.float32"
        np.testing.assert_array_equal(targets["tags"].numpy(), np.array(sample.targets["tags"], np.float32))
        assert targets["size"].shape == (1,)
    missing = next(i for i, s in enumerate(ds.samples) if s.path.name == "2.png")
    _, targets = data[missing]
    assert int(targets["shape"]) == -1 and bool(targets["size"].isnan().all())


def test_image_dataset_augmentation_shape_and_pickle(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 2, "b": 2})
    ds = load_data(root)
    data = ImageDataset(ds.samples, ds.heads, SPEC, augment=True)
    for i in range(len(data)):
        image, targets = data[i]
        assert tuple(image.shape) == (3, 32, 32) and str(image.dtype) == "torch.float32"
        assert bool(image.isfinite().all())
    clone = pickle.loads(pickle.dumps(data))
    assert tuple(clone[0][0].shape) == (3, 32, 32)
    plain = pickle.loads(pickle.dumps(ImageDataset(ds.samples, ds.heads, SPEC)))
    assert np.array_equal(plain[0][0].numpy(), preprocess_file(ds.samples[0].path, SPEC))


@pytest.mark.parametrize("mode", ["RGBA", "L"])
def test_rgba_and_grayscale_inputs(tmp_path, mode):
    for cls in ("a", "b"):
        for i in range(2):
            make_image(tmp_path / cls / f"{i}.png", seed=i, mode=mode)
    ds = load_data(tmp_path)
    assert not ds.skipped
    for augment in (False, True):
        image, _ = ImageDataset(ds.samples, ds.heads, SPEC, augment=augment)[0]
        assert tuple(image.shape) == (3, 32, 32)
    image, _ = ImageDataset(ds.samples, ds.heads, SPEC)[0]
    assert np.array_equal(image.numpy(), preprocess_file(ds.samples[0].path, SPEC))


def test_dataloader_with_workers(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 3, "b": 3})
    ds = load_data(root)
    loader = torch.utils.data.DataLoader(ImageDataset(ds.samples, ds.heads, SPEC, augment=True),
                                         batch_size=3, num_workers=2)
    batches = list(loader)
    assert sum(b[0].shape[0] for b in batches) == 6
    assert batches[0][1]["class"].dtype == torch.int64


# -- CLI -------------------------------------------------------------------------------------------
def test_parse_head_arg():
    h = parse_head_arg("tags:multi:red,striped")
    assert (h.name, h.kind, h.columns, h.labels, h.outputs) == ("tags", "multi", ["red", "striped"],
                                                                 ["red", "striped"], 2)
    h = parse_head_arg("shape:single:shape_col")
    assert (h.name, h.kind, h.columns) == ("shape", "single", ["shape_col"])
    h = parse_head_arg("size:regression")
    assert (h.kind, h.columns, h.outputs) == ("regression", ["size"], 1)
    for bad in ("tags", "tags:bogus:a", "tags:multi:a,,b", "shape:single:a,b", "a:b:c:d", ":single:x",
                "bad name:single:x"):
        with pytest.raises(GraftError):
            parse_head_arg(bad)


def test_parse_head_arg_at_a_layer():
    h = parse_head_arg("shape:single@features.4")
    assert (h.name, h.kind, h.columns, h.layer) == ("shape", "single", ["shape"], "features.4")
    h = parse_head_arg("age:regression:age:0.5@layer3.1")
    assert (h.columns, h.loss_weight, h.layer) == (["age"], 0.5, "layer3.1")
    assert parse_head_arg("size:regression").layer is None
    for bad, message in (("shape:single@", "name the layer"), ("shape:single@a@b", "only one"),
                         ("shape:single@@heads.x", "only one")):
        with pytest.raises(GraftError, match=message):
            parse_head_arg(bad)


def test_parsed_heads_load(tmp_path):
    csv = three_heads_csv(tmp_path)
    ds = load_data(csv, [parse_head_arg("shape:single:shape"), parse_head_arg("tags:multi:red,striped"),
                         parse_head_arg("size:regression:size")])
    assert [h.outputs for h in ds.heads] == [3, 2, 1]


def test_datasource_is_plain(tmp_path):
    root = make_folder(tmp_path / "data", {"a": 2, "b": 2})
    ds = load_data(root)
    assert isinstance(ds, DataSource)
    assert pickle.loads(pickle.dumps(ds)).summary() == ds.summary()


def test_many_images_load_fast(tmp_path):
    import time

    img = tmp_path / "seed.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(img)
    data = img.read_bytes()
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(1000):
            (tmp_path / "data" / cls / f"{i}.jpg").write_bytes(data)
    start = time.perf_counter()
    ds = load_data(tmp_path / "data")
    assert time.perf_counter() - start < 5.0
    assert len(ds.samples) == 2000


# -- evaluation data (require_every_class=False) ---------------------------------------------------
def test_evaluation_data_may_lack_classes(tmp_path):
    csv = manifest(tmp_path, 3)
    write_csv(csv, "image,kind\nimg/0.png,cat\nimg/1.png,cat\nimg/2.png,\n")
    head = HeadSpec("kind", "single", labels=["cat", "dog"], columns=["kind"])
    with pytest.raises(GraftError, match="class 'dog' has no example"):
        load_data(csv, [head])  # training data: every class needs an example
    ds = load_data(csv, [head], require_every_class=False)
    assert ds.heads[0].labels == ["cat", "dog"] and len(ds.samples) == 3
    assert {s.targets["kind"] for s in ds.samples} == {0, -1}
    # unknown class names and a head with nothing labelled are still refused
    write_csv(csv, "image,kind,size\nimg/0.png,cat,\nimg/1.png,cow,\nimg/2.png,,\n")
    with pytest.raises(GraftError, match=r"row 3, column 'kind': unknown class 'cow'"):
        load_data(csv, [head], require_every_class=False)
    write_csv(csv, "image,kind,size\nimg/0.png,cat,\nimg/1.png,cat,\nimg/2.png,,\n")
    with pytest.raises(GraftError, match="'size' has no labelled example"):
        load_data(csv, [head, HeadSpec("size", "regression", columns=["size"])], require_every_class=False)
    # a multi-label head whose label has no positive, a split column that is all test
    write_csv(csv, "image,red,blue,split\nimg/0.png,1,0,test\nimg/1.png,0,0,test\nimg/2.png,1,,test\n")
    tags = HeadSpec("tags", "multi", labels=["red", "blue"], columns=["red", "blue"])
    with pytest.raises(GraftError, match="no positive example"):
        load_data(csv, [tags])
    ds = load_data(csv, [tags], require_every_class=False)
    assert not ds.train and len(ds.val) == 3


def test_evaluation_folder_may_lack_classes(tmp_path):
    root = make_folder(tmp_path / "holdout", {"a": 3})
    head = HeadSpec("class", "single", labels=["a", "b"])
    with pytest.raises(GraftError, match="class 'b' has no folder"):
        load_data(root, [head])
    ds = load_data(root, [head], require_every_class=False)
    assert ds.heads[0].labels == ["a", "b"] and len(ds.samples) == 3
    with pytest.raises(GraftError, match="'c'"):
        load_data(make_folder(tmp_path / "other", {"a": 1, "c": 1}), [head], require_every_class=False)
    make_folder(tmp_path / "split" / "test", {"b": 2})
    ds = load_data(tmp_path / "split", [head], require_every_class=False)
    assert not ds.train and len(ds.val) == 2


# -- head suggestions that would misread a column --------------------------------------------------
def test_mostly_numeric_column_with_a_typo_is_refused(tmp_path):
    csv = manifest(tmp_path, 12)
    rows = [f"img/{i}.png,{1 + i % 5}" for i in range(12)]
    rows[6] = "img/6.png,1..5"
    write_csv(csv, "image,score\n" + "\n".join(rows))
    with pytest.raises(GraftError, match=r"labels.csv row 8, column 'score': '1..5' is not a number.*--head"):
        suggest_heads(csv)
    with pytest.raises(GraftError, match=r"row 8, column 'score'"):
        load_data(csv)
    # named explicitly, the user decides: a single-label head of the five values and the typo
    ds = load_data(csv, [HeadSpec("score", "single", columns=["score"])])
    assert "1..5" in ds.heads[0].labels


def test_mostly_binary_column_with_a_stray_value_is_refused(tmp_path):
    csv = manifest(tmp_path, 12)
    rows = [f"img/{i}.png,{i % 2}" for i in range(12)]
    rows[9] = "img/9.png,2"
    write_csv(csv, "image,red\n" + "\n".join(rows))
    with pytest.raises(GraftError, match=r"row 11, column 'red': '2' is not 0 or 1"):
        suggest_heads(csv)


def test_a_stray_cell_leaves_only_its_column_out_when_not_strict(tmp_path):
    """The window's mode: the rest of the CSV loads, and the refusal (row and column named) is a warning."""
    csv = manifest(tmp_path, 12)
    rows = [f"img/{i}.png,{'a' if i % 2 else 'b'},{1 + i % 5},{i % 2}" for i in range(12)]
    rows[6] = rows[6].rsplit(",", 2)[0] + ",1..5,0"
    rows[9] = rows[9].rsplit(",", 1)[0] + ",2"
    write_csv(csv, "image,kind,score,red\n" + "\n".join(rows))
    with pytest.raises(GraftError, match=r"row 8, column 'score': '1..5' is not a number"):
        suggest_heads(csv)  # strict by default, as for the command line
    with pytest.raises(GraftError, match=r"row 8, column 'score'"):
        load_data(csv)
    warnings: list[str] = []
    heads = suggest_heads(csv, strict=False, warnings=warnings)
    assert [(h.name, h.columns) for h in heads] == [("kind", ["kind"])]
    assert len(warnings) == 2 and "--head" not in " ".join(warnings)
    assert "row 8, column 'score': '1..5' is not a number" in warnings[0] and "left out" in warnings[0]
    assert "row 11, column 'red': '2' is not 0 or 1" in warnings[1] and "left out" in warnings[1]
    ds = load_data(csv, strict_suggestions=False)
    assert [h.name for h in ds.heads] == ["kind"] and len(ds.samples) == 12
    assert ds.warnings[:2] == warnings and ds.summary()["warnings"] == ds.warnings
    # with nothing else to learn, the column is refused as before
    write_csv(csv, "image,score\n" + "\n".join(f"img/{i}.png,{'1..5' if i == 6 else i % 5}" for i in range(12)))
    with pytest.raises(GraftError, match=r"row 8, column 'score': '1..5' is not a number.*--head"):
        load_data(csv, strict_suggestions=False)


def test_few_whole_numbers_are_a_number_with_a_note(tmp_path):
    csv = manifest(tmp_path, 12)
    write_csv(csv, "image,grade,id\n" + "\n".join(f"img/{i}.png,{i % 4},n{i}" for i in range(12)))
    notes: list[str] = []
    [head] = suggest_heads(csv, notes=notes)
    assert (head.name, head.kind) == ("grade", "regression")
    assert any("'grade' holds 4 whole numbers" in n and "single-label" in n for n in notes), notes
    assert any("'id'" in n and "different value on every row" in n for n in notes), notes
    ds = load_data(csv)
    assert any("'grade' holds 4 whole numbers" in n for n in ds.notes)
    assert ds.summary()["notes"] == ds.notes


def test_decimal_commas_in_a_semicolon_csv(tmp_path):
    csv = manifest(tmp_path, 12)
    rows = [f"img/{i}.png;{'a' if i % 2 else 'b'};{i},5" for i in range(12)]
    write_csv(csv, "image;kind;size\n" + "\n".join(rows))
    heads = suggest_heads(csv)
    assert [(h.name, h.kind) for h in heads] == [("kind", "single"), ("size", "regression")]
    ds = load_data(csv)
    by = {s.path.name: s.targets for s in ds.samples}
    assert by["3.png"]["size"] == [3.5]
    # in a comma-separated file a quoted "0,5" is not a number: the column is left out, and said so
    write_csv(csv, "image,kind,size\n" + "\n".join(f'img/{i}.png,{"a" if i % 2 else "b"},"{i},5"' for i in range(12)))
    notes: list[str] = []
    assert [h.name for h in suggest_heads(csv, notes=notes)] == ["kind"]
    assert any("'size'" in n and "decimal comma" in n for n in notes), notes


def test_utf16_unicode_text_from_a_spreadsheet(tmp_path):
    """A spreadsheet's "Unicode text" export is UTF-16 with a BOM and tabs: read as Latin-1 it lost every column."""
    csv = manifest(tmp_path, 12)
    rows = [f"img/{i}.png\t{'chat' if i % 2 else 'chién'}\t{i},5" for i in range(12)]
    csv.write_bytes(("image\tkind\tsize\r\n" + "\r\n".join(rows) + "\r\n").encode("utf-16"))
    assert [(h.name, h.kind) for h in suggest_heads(csv)] == [("kind", "single"), ("size", "regression")]
    ds = load_data(csv)
    assert ds.heads[0].labels == ["chat", "chién"]
    assert {s.path.name: s.targets for s in ds.samples}["3.png"]["size"] == [3.5]


def test_values_beyond_float32_are_refused(tmp_path):
    csv = manifest(tmp_path, 3)
    write_csv(csv, "image,size\nimg/0.png,0.5\nimg/1.png,1e39\nimg/2.png,-3e38\n")
    with pytest.raises(GraftError, match=r"row 3, column 'size': '1e39' is too large"):
        load_data(csv, [HeadSpec("size", "regression", columns=["size"])])
    with pytest.raises(GraftError, match=r"row 3, column 'size'"):
        load_data(csv)


# -- leakage between training and validation -------------------------------------------------------
def test_duplicate_images_stay_on_one_side_of_the_split(tmp_path):
    csv = manifest(tmp_path, 10)
    rows = [f"img/{i}.png,{'a' if i % 2 else 'b'}" for i in range(10)]
    rows += [f"img/../img/{i}.png,{'a' if i % 2 else 'b'}" for i in range(10)]  # every image twice
    write_csv(csv, "image,kind\n" + "\n".join(rows))
    for seed in range(6):
        ds = load_data(csv, seed=seed)
        train = {s.path.resolve() for s in ds.train}
        val = {s.path.resolve() for s in ds.val}
        assert train and val and not train & val, seed
        assert len(ds.train) + len(ds.val) == 20


def test_links_to_one_image_count_as_that_image(tmp_path):
    """A folder link and a file link naming an image are the same image (the folder's real path is
    resolved once per folder, a linked file on its own)."""
    csv = manifest(tmp_path, 10)
    (tmp_path / "again").symlink_to(tmp_path / "img", target_is_directory=True)
    (tmp_path / "one.png").symlink_to(tmp_path / "img" / "3.png")
    rows = [f"img/{i}.png,{'a' if i % 2 else 'b'}" for i in range(10)]
    rows += [f"again/{i}.png,{'a' if i % 2 else 'b'}" for i in range(10)] + ["one.png,a"]
    write_csv(csv, "image,kind,split\n" + "\n".join(f"{r},train" for r in rows[:10])
              + "\n" + "\n".join(f"{r},train" for r in rows[10:20]) + f"\n{rows[20]},val\n")
    with pytest.raises(GraftError, match=r"rows 5 and 22 .*training and in validation"):
        load_data(csv)


def test_split_column_leaks_and_classes_only_in_validation(tmp_path):
    csv = manifest(tmp_path, 6)
    write_csv(csv, "image,kind,split\nimg/0.png,a,train\nimg/1.png,b,train\nimg/2.png,a,val\n"
                   "img/0.png,a,val\n")
    with pytest.raises(GraftError, match=r"rows 2 and 5 .*0.png.*training and in validation"):
        load_data(csv)
    write_csv(csv, "image,kind,split\nimg/0.png,a,train\nimg/1.png,b,train\nimg/2.png,a,val\n"
                   "img/3.png,c,val\n")
    ds = load_data(csv)  # the trainer refuses it (tests/engine/test_training.py); here: a warning
    assert ds.warnings == ["labels.csv: class 'c' of head 'kind' has examples only in validation "
                           "(the split column); training never sees it."]
    head = HeadSpec("kind", "single", labels=["a", "b", "c"], columns=["kind"])
    ds = load_data(csv, [head], require_every_class=False)  # evaluation data: nothing to say
    assert len(ds.val) == 2 and not ds.warnings
    write_csv(csv, "image,red,blue,split\nimg/0.png,1,0,train\nimg/1.png,0,0,train\nimg/2.png,1,1,val\n")
    assert any("label 'blue' of head 'tags' has positive examples only in validation" in w
               for w in load_data(csv).warnings)


def test_random_split_warns_about_a_class_left_only_in_validation(tmp_path):
    csv = manifest(tmp_path, 6)
    # 'shape' stratifies the split; 'colour' has a class with one image, which may land in validation
    write_csv(csv, "image,shape,colour\n" + "\n".join(
        f"img/{i}.png,{'round' if i % 2 else 'square'},{'blue' if i == 0 else 'red'}" for i in range(6)))
    warned = 0
    for seed in range(10):
        ds = load_data(csv, seed=seed, val_fraction=0.5)
        in_val = any(s.targets["colour"] == 0 for s in ds.val)
        messages = [w for w in ds.warnings if "'blue'" in w and "'colour'" in w]
        assert bool(messages) == in_val, (seed, ds.warnings)
        warned += in_val
    assert warned


def test_a_dense_class_only_in_validation_is_named(tmp_path):
    """Boxes of a class only validation images hold, or a class only their masks hold, are named as the
    other heads' classes are (an image folder's masks/ and labels/ split at random raised KeyError)."""
    from engine.data.dense_targets import PRESENT
    from engine.data.splits import only_in_validation

    boxes = HeadSpec("boxes", "detect", labels=["cat", "dog"])
    seg = HeadSpec("seg", "segment", labels=["bg", "cat", "dog"])
    PRESENT[str(tmp_path / "a.png")], PRESENT[str(tmp_path / "b.png")] = frozenset({0, 1}), frozenset({0, 2})
    train = [Sample(tmp_path / "a.jpg", {"boxes": [[0, 0, 5, 5, 0.0]], "seg": str(tmp_path / "a.png")})]
    val = [Sample(tmp_path / "b.jpg", {"boxes": [[0, 0, 5, 5, 1.0]], "seg": str(tmp_path / "b.png")}),
           Sample(tmp_path / "c.jpg", {})]
    assert only_in_validation([boxes, seg], train, val) == [
        "class 'dog' of head 'boxes' has boxes only in validation", "class 'dog' of head 'seg' is in masks only in validation"]


def test_parse_head_arg_with_a_loss_weight(tmp_path):
    h = parse_head_arg("age:regression:age:0.5")
    assert (h.name, h.kind, h.columns, h.loss_weight) == ("age", "regression", ["age"], 0.5)
    h = parse_head_arg("tags:multi:red,striped:2")
    assert (h.columns, h.loss_weight) == (["red", "striped"], 2.0)
    h = parse_head_arg("size:regression::0.25")  # no columns: the column named after the head
    assert (h.columns, h.loss_weight) == (["size"], 0.25)
    assert parse_head_arg("shape:single:shape").loss_weight == 1.0
    for bad in ("age:regression:age:heavy", "age:regression:age:-1", "age:regression:age:nan",
                "age:regression:age:inf", "age:regression:age:1:2", "age:regression:age:"):
        with pytest.raises(GraftError, match="age"):
            parse_head_arg(bad)
    csv = three_heads_csv(tmp_path)
    ds = load_data(csv, [parse_head_arg("size:regression:size:0.5")])
    assert ds.heads[0].loss_weight == 0.5


def test_a_tsv_manifest_is_read_as_tab_separated(tmp_path):
    """A .tsv is tab-separated even when a header cell holds a comma (sniffing would pick ',')."""
    csv = manifest(tmp_path, 12)
    tsv = csv.with_suffix(".tsv")
    rows = [f"img/{i}.png\t{'a' if i % 2 else 'b'}\t{i}.5" for i in range(12)]
    write_csv(tsv, "image\tkind, coarse\tsize\n" + "\n".join(rows))
    ds = load_data(tsv)
    assert [(h.name, h.kind, h.columns) for h in ds.heads] == [("kind_coarse", "single", ["kind, coarse"]),
                                                               ("size", "regression", ["size"])]
    assert {s.path.name: s.targets["size"] for s in ds.samples}["3.png"] == [3.5]
    with pytest.raises(GraftError, match=r"\.csv/\.tsv manifest"):
        load_data(write_csv(tmp_path / "labels.txt", "image,kind\n"))


def test_folder_listing_walks_like_os_walk_and_keys_files_like_same_file(tmp_path):
    """The folder listing's one scandir per folder gives os.walk's files in os.walk's order (a folder's
    sorted files, then its subfolders'; hidden ones and links to folders left out), each keyed as
    _same_file keys it (a link to a file by what it points to)."""
    from engine.data.folders import _files_under, _hidden
    from engine.data.splits import _same_file

    root = tmp_path / "cat"
    (root / "b" / "deep").mkdir(parents=True)
    (root / "a").mkdir()
    for name in ("2.png", "10.png", ".hidden.png", "Thumbs.db"):
        (root / name).write_bytes(b"x")
    (root / "b" / "1.png").write_bytes(b"x")
    (root / "b" / "deep" / "0.png").write_bytes(b"x")
    (root / "a" / "z.png").write_bytes(b"x")
    (root / "linked.png").symlink_to(root / "b" / "1.png")
    (root / "dirlink").symlink_to(root / "b", target_is_directory=True)
    (root / "broken.png").symlink_to(tmp_path / "nowhere.png")
    expected = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        expected += [os.path.join(dirpath, f) for f in sorted(filenames) if not _hidden(f)]
    listed = _files_under(str(root))
    assert [p for p, _ in listed] == expected
    assert [k for _, k in listed] == [_same_file(Path(p)) for p in expected]
    keys = dict(listed)
    assert keys[str(root / "linked.png")] == keys[str(root / "b" / "1.png")]
