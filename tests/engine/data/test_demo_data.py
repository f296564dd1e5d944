"""engine.data.demo_data: the deterministic offline demo dataset."""
from __future__ import annotations

import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from engine.data import demo_data  # noqa: E402
from engine.data.loading import load_data  # noqa: E402
from engine.data.manifests import suggest_heads  # noqa: E402


@pytest.fixture(scope="module")
def demo_csv(tmp_path_factory) -> Path:
    return demo_data.ensure_demo_data(tmp_path_factory.mktemp("cache"))


def rows(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_layout_and_counts(demo_csv):
    recipe = demo_data.load_recipe()
    assert demo_csv.name == "labels.csv" and demo_csv.parent.name == f"demo-v{recipe['version']}"
    table = rows(demo_csv)
    assert len(table) == recipe["count"] == 360
    assert list(table[0]) == ["image", "shape", "red", "striped", "outlined", "size", "mask", "boxes"]
    shapes = {r["shape"] for r in table if r["shape"]}
    assert shapes == set(recipe["shapes"])
    with Image.open(demo_csv.parent / table[0]["image"]) as img:
        assert img.size == (96, 96) and img.mode == "RGB"
    sizes = [float(r["size"]) for r in table if r["size"]]
    assert 0.25 <= min(sizes) and max(sizes) <= 0.85


def test_suggest_heads_on_demo(demo_csv):
    heads = suggest_heads(demo_csv)
    assert [(h.name, h.kind) for h in heads] == [("shape", "single"), ("tags", "multi"), ("size", "regression")]
    assert heads[1].columns == ["red", "striped", "outlined"]
    assert heads[0].labels == ["circle", "square", "star", "triangle"]


def test_about_thirty_percent_missing(demo_csv):
    ds = load_data(demo_csv)
    s = ds.summary()
    assert s["n_samples"] == 360 and s["n_skipped"] == 0
    assert 0.24 <= s["heads"]["shape"]["missing_fraction"] <= 0.36
    assert 0.24 <= s["heads"]["tags"]["missing_entry_fraction"] <= 0.36
    assert 0.24 <= s["heads"]["size"]["missing_fraction"] <= 0.36
    for column in ("shape", "red", "striped", "outlined", "size"):
        blank = sum(1 for r in rows(demo_csv) if not r[column]) / 360
        assert 0.22 <= blank <= 0.38, (column, blank)
    counts = s["heads"]["shape"]["counts"]
    assert min(counts.values()) >= 45  # roughly balanced classes
    assert all(n >= 1 for n in s["heads"]["shape"]["train_counts"].values())
    assert all(n >= 40 for n in s["heads"]["tags"]["counts"].values())  # every attribute has positives


def test_deterministic(tmp_path, demo_csv):
    again = demo_data.ensure_demo_data(tmp_path / "other")
    assert again.read_bytes() == demo_csv.read_bytes()
    for r in rows(demo_csv)[::17]:
        assert (again.parent / r["image"]).read_bytes() == (demo_csv.parent / r["image"]).read_bytes()


def test_images_vary(demo_csv):
    table = rows(demo_csv)[:12]
    arrays = [np.asarray(Image.open(demo_csv.parent / r["image"]), dtype=np.float32) for r in table]
    assert all(a.std() > 10 for a in arrays)  # not flat
    assert min(np.abs(a - b).mean() for i, a in enumerate(arrays) for b in arrays[i + 1:]) > 5


@pytest.mark.slow
def test_generation_is_fast_and_skipped_when_present(tmp_path):
    start = time.perf_counter()
    csv_path = demo_data.ensure_demo_data(tmp_path)
    assert time.perf_counter() - start < 5.0
    image = csv_path.parent / rows(csv_path)[0]["image"]
    before = image.stat().st_mtime_ns
    start = time.perf_counter()
    assert demo_data.ensure_demo_data(tmp_path) == csv_path
    assert time.perf_counter() - start < 0.5
    assert image.stat().st_mtime_ns == before
    # A stale stamp (another recipe) or a missing image means regenerating.
    stamp = csv_path.parent / demo_data.STAMP
    stamp.write_text(json.dumps({"version": -1, "digest": "x"}))
    assert demo_data.ensure_demo_data(tmp_path) == csv_path
    assert json.loads(stamp.read_text())["version"] == demo_data.load_recipe()["version"]
    image.unlink()
    demo_data.ensure_demo_data(tmp_path)
    assert image.exists()


def test_new_version_goes_to_new_folder(tmp_path):
    recipe = dict(demo_data.load_recipe(), version=99, count=8)
    csv_path = demo_data.ensure_demo_data(tmp_path, recipe=recipe)
    assert csv_path.parent.name == "demo-v99" and len(rows(csv_path)) == 8


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "g"))
    assert demo_data.cache_dir() == tmp_path / "g"
    monkeypatch.delenv("GRAFT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert demo_data.cache_dir() == tmp_path / "x" / "graft"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert demo_data.cache_dir() == Path.home() / ".cache" / "graft"
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "g"))
    recipe = dict(demo_data.load_recipe(), count=4)
    assert demo_data.ensure_demo_data(recipe=recipe).parent.parent == tmp_path / "g"


def test_demo_folder(tmp_path):
    recipe = demo_data.load_recipe()
    folder = demo_data.ensure_demo_folder(tmp_path)
    assert folder == tmp_path / f"demo-folder-v{recipe['version']}"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == sorted(recipe["shapes"])
    assert all(p.suffix == ".png" for p in folder.glob("*/*"))
    ds = load_data(folder)
    assert ds.heads[0].labels == sorted(recipe["shapes"])
    assert len(ds.samples) == recipe["folder"]["count"] and not ds.skipped
    assert ds.summary()["heads"]["class"]["missing_fraction"] == 0.0
    mtime = os.stat(next(folder.glob("*/*.png"))).st_mtime_ns
    assert demo_data.ensure_demo_folder(tmp_path) == folder
    assert os.stat(next(folder.glob("*/*.png"))).st_mtime_ns == mtime


def test_masks_and_boxes_where_the_shape_was_drawn(demo_csv):
    """The mask covers the drawn object (its class index, 255 on the rim) and the box bounds it."""
    table = rows(demo_csv)
    classes = (demo_csv.parent / "masks" / "classes.txt").read_text().split()
    recipe = demo_data.load_recipe()
    assert classes == ["background", *recipe["shapes"]]
    both = [r for r in table if r["mask"] and r["boxes"] and r["shape"]]
    assert 0.25 * len(table) < len(both) and sum(1 for r in table if not r["mask"]) > 0.2 * len(table)
    for r in both[:20]:
        mask = np.asarray(Image.open(demo_csv.parent / r["mask"]))
        assert mask.shape == (96, 96)
        assert set(np.unique(mask)) <= {0, classes.index(r["shape"]), 255}
        (x1, y1, x2, y2, name), = json.loads(r["boxes"])
        assert name == r["shape"]
        inside = np.zeros_like(mask, dtype=bool)
        inside[y1:y2, x1:x2] = True
        assert (mask == classes.index(r["shape"]))[~inside].sum() == 0  # the object lies in its box
        assert (mask == classes.index(r["shape"]))[inside].mean() > 0.3
