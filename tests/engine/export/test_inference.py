"""Graft's own predictions (engine.export.inference) and the torch-free decoding and metadata they share with
``main.py predict`` (engine.export.metadata)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.errors import GraftError
from engine.network.heads import HeadSpec
from engine.export.inference import decode, head_specs, predict_arrays, predict_files, predict_image
from engine.export.metadata import (KEY, build_metadata, from_props, softmax, to_props, validate)
from engine.surgery.operations import AddHead
from engine.network.preprocess import InputSpec, open_image, preprocess_file, to_rgb

ROOT = Path(__file__).resolve().parents[3]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- decode -------------------------------------------------------------------------------------------

def test_single_label_decodes_to_softmax_and_top_classes():
    spec = HeadSpec("species", labels=["cat", "dog", "bird"])
    p = decode(spec, np.array([2.0, 0.5, -1.0], dtype=np.float32))
    expected = np.exp([2.0, 0.5, -1.0]) / np.exp([2.0, 0.5, -1.0]).sum()
    assert np.allclose(p.values, expected)
    assert p.label == "cat" and p.score == pytest.approx(expected[0])
    assert [n for n, _ in p.top] == ["cat", "dog", "bird"]
    assert p.format() == f"species: cat {expected[0]:.1%} (dog {expected[1]:.1%}, bird {expected[2]:.1%})"
    assert p.to_dict()["label"] == "cat"


def test_multi_label_decodes_to_sigmoids_and_labels_above_half():
    spec = HeadSpec("tags", kind="multi", labels=["sunny", "indoor", "night"])
    p = decode(spec, np.array([[3.0, -2.0, 0.2]], dtype=np.float32))  # a (1, n) row is accepted too
    assert np.allclose(p.values, 1 / (1 + np.exp(-np.array([3.0, -2.0, 0.2]))))
    assert p.labels == ["sunny", "night"]
    assert p.format().startswith("tags: sunny 95.3%, night 55.0%")
    none = decode(spec, np.array([-3.0, -2.0, -1.0]))
    assert none.labels == [] and "none above 50%" in none.format() and "night" in none.format()


def test_regression_keeps_values_with_target_names():
    p = decode(HeadSpec("size", kind="regression", labels=["width", "height"]), np.array([1.5, -20.25]))
    assert p.top == [("width", 1.5), ("height", -20.25)]
    assert p.format() == "size: width 1.5, height -20.25"
    unnamed = decode(HeadSpec("score", kind="regression", outputs=1), np.array([0.125]))
    assert unnamed.format() == "score: 0 0.125"


def test_features_without_heads_and_a_wrong_size():
    p = decode(None, np.arange(4, dtype=np.float32), name="output")
    assert p.kind == "features" and p.format().startswith("output: 4 features")
    with pytest.raises(GraftError, match="gave 2 outputs where 3"):
        decode(HeadSpec("x", labels=["a", "b", "c"]), np.zeros(2))


def test_softmax_is_stable_for_huge_logits():
    assert np.allclose(softmax(np.array([1000.0, 0.0])), [1.0, 0.0])


# -- metadata -----------------------------------------------------------------------------------------

def heads3():
    return [HeadSpec("species", labels=["cat", "dog"]), HeadSpec("tags", kind="multi", outputs=3, hidden=[8], dropout=0.2),
            HeadSpec("size", kind="regression", labels=["w"])]


def test_metadata_round_trips_through_props():
    spec = InputSpec(size=200, resize=230, interpolation="bicubic", alpha_background=[0, 0, 0])
    data = build_metadata(spec, heads3(), {"description": "resnet18 (random weights)"}, opset=18)
    props = to_props(data)
    assert all(isinstance(v, str) for v in props.values())
    assert props["input_size"] == "200" and props["layout"] == "NCHW" and props["channel_order"] == "RGB"
    assert props["interpolation"] == "PIL.Image.Resampling.BICUBIC"
    assert json.loads(props["output.tags.labels"]) == ["0", "1", "2"]
    meta = from_props(props)
    assert meta.input_spec == spec and meta.heads == heads3() and meta.outputs == ["species", "tags", "size"]
    assert meta.spec_for("tags").hidden == [8]
    bare = from_props(to_props(build_metadata(spec, [], {})))
    assert bare.heads == [] and bare.outputs == ["output"] and bare.spec_for("output") is None


@pytest.mark.parametrize("damage, message", [
    (lambda d: d.pop("input_spec"), "'input_spec' is missing"),
    (lambda d: d["input_spec"].update(std=[0.2, 0, 0.2]), "std"),
    (lambda d: d["input_spec"].update(interpolation="magic"), "resize filter"),
    (lambda d: d["input_spec"].update(size="big"), "input size"),
    (lambda d: d.update(outputs=[]), "no outputs"),
    (lambda d: d["outputs"][0].update(labels=["x", "y", "z"]), "contradicts"),
    (lambda d: d.update(format=99), "newer Graft"),
    (lambda d: d.update(format="x"), r"metadata is invalid \(metadata format 'x'"),
    (lambda d: d.update(format=True), r"metadata is invalid \(metadata format True"),
    (lambda d: d.update(format=0), r"metadata is invalid \(metadata format 0"),
    (lambda d: d["preprocessing"].update(exif_orientation="yes"), "exif_orientation 'yes'"),
    (lambda d: d["preprocessing"]["sixteen_bit"].update(formula="v // 256"), "unsupported 16-bit scaling 'v // 256'"),
    (lambda d: d.update(preprocessing=[]), "'preprocessing' is not an object"),
])
def test_invalid_metadata_is_rejected_with_a_reason(damage, message):
    data = build_metadata(InputSpec(), heads3(), {})
    damage(data)
    with pytest.raises(GraftError, match=message):
        validate(json.loads(json.dumps(data)))


def test_metadata_written_before_the_exif_and_16_bit_keys_means_both_applied():
    data = build_metadata(InputSpec(), heads3(), {})
    assert data["preprocessing"]["exif_orientation"] is True
    for key in ("exif_orientation", "sixteen_bit"):
        del data["preprocessing"][key]
    assert validate(data).exif_orientation is True
    data["preprocessing"]["exif_orientation"] = False
    assert validate(data).exif_orientation is False


def test_the_steps_name_the_exif_orientation_and_the_16_bit_formula():
    data = build_metadata(InputSpec(size=32, resize=36), heads3(), {})
    steps = data["preprocessing"]["steps"]
    assert "EXIF orientation" in steps[1] and "exif_transpose" in steps[1]
    assert "floor((clip(v, 0, 65535) + 128) / 257)" in steps[2] and "round(v * 255 / 65535)" in steps[2]
    assert data["preprocessing"]["sixteen_bit"]["formula"] == "floor((clip(v, 0, 65535) + 128) / 257)"
    props = to_props(data)
    assert props["exif_orientation"] == "true" and "EXIF orientation" in props["preprocessing"]


# -- preprocessing, followed from the metadata alone -----------------------------------------------------

def exif_rotated(path: Path, orientation: int = 6) -> Path:
    """A 40x24 picture stored sideways with an EXIF orientation tag, as phones write them."""
    yy, xx = np.mgrid[0:24, 0:40]
    arr = np.stack([xx * 6, yy * 10, (xx * yy) % 256], -1).astype(np.uint8)
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = orientation
    img.save(path, exif=exif)
    return path


def by_the_metadata(path: Path, data: dict) -> np.ndarray:
    """An independent implementation of the preprocessing that reads only the metadata's fields, as a
    deployment would."""
    from PIL import ImageOps

    pre = data["preprocessing"]
    img = Image.open(path)
    img.load()
    if img.mode == "P":
        img = img.convert("RGBA")
    if pre["exif_orientation"]:
        img = ImageOps.exif_transpose(img)
    if img.mode in pre["sixteen_bit"]["modes"]:
        assert pre["sixteen_bit"]["formula"] == "floor((clip(v, 0, 65535) + 128) / 257)"
        v = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        img = Image.fromarray(np.floor((v + 128) / 257).astype(np.uint8))
    if img.mode in ("RGBA", "LA"):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", img.size, tuple(pre["alpha_background"]) + (255,)), rgba)
    img = img.convert("RGB")
    w, h = img.size
    s = pre["resize_shorter_side"] / min(w, h)
    crop = pre["centre_crop"]
    nw, nh = max(crop, round(w * s)), max(crop, round(h * s))
    filt = getattr(Image.Resampling, pre["pillow_filter"].rsplit(".", 1)[1])
    img = img.resize((nw, nh), filt)
    left, top = (nw - crop) // 2, (nh - crop) // 2
    arr = np.asarray(img.crop((left, top, left + crop, top + crop)), dtype=np.float32) / np.float32(255)
    arr = (arr - np.array(pre["mean"], np.float32)) / np.array(pre["std"], np.float32)
    return arr.transpose(2, 0, 1)


def test_a_deployment_following_the_metadata_gets_the_same_input(tmp_path):
    spec = InputSpec(size=16, resize=20, interpolation="bicubic")
    data = build_metadata(spec, heads3(), {})
    dark = np.arange(20 * 30, dtype=np.uint16).reshape(20, 30) % 256  # every value <= 255: still 16-bit
    bright = (np.arange(20 * 30, dtype=np.int64).reshape(20, 30) * 109) % 65536
    Image.fromarray(dark).save(tmp_path / "dark16.png")
    Image.fromarray(bright.astype(np.uint16)).save(tmp_path / "bright16.png")
    for path in (exif_rotated(tmp_path / "phone.jpg"), exif_rotated(tmp_path / "upside.png", 3),
                 tmp_path / "dark16.png", tmp_path / "bright16.png"):
        ours = preprocess_file(path, spec)
        assert np.abs(ours - by_the_metadata(path, data)).max() <= 1e-6, path.name


def test_exif_orientation_turns_the_picture_upright(tmp_path):
    path = exif_rotated(tmp_path / "phone.jpg")
    assert Image.open(path).size == (40, 24)
    assert open_image(path).size == (24, 40)  # orientation 6: rotated 90 degrees to stand upright
    assert open_image(path, exif=False).size == (40, 24)


def test_16_bit_images_are_scaled_the_same_whatever_their_brightness():
    dark = Image.fromarray(np.array([[0, 128, 129, 255]], dtype=np.uint16))
    assert dark.mode == "I;16"
    # v * 255 / 65535 rounded: a dark 16-bit image stays (nearly) black, it is not read as 8-bit
    assert np.asarray(to_rgb(dark))[0, :, 0].tolist() == [0, 0, 1, 1]
    bright = Image.fromarray(np.array([[51600, 65535, 257 * 200 + 128, 257 * 200 + 129]], dtype=np.uint16))
    assert np.asarray(to_rgb(bright))[0, :, 0].tolist() == [201, 255, 200, 201]  # rounded, not floored
    wide = Image.fromarray(np.array([[-5, 70000, 257 * 3]], dtype=np.int32))
    assert wide.mode == "I" and np.asarray(to_rgb(wide))[0, :, 0].tolist() == [0, 255, 3]


def test_files_without_or_with_broken_metadata():
    with pytest.raises(GraftError, match="not exported by Graft"):
        from_props({"producer": "someone"})
    with pytest.raises(GraftError, match="invalid"):
        from_props({KEY: "{not json"})


def test_the_torch_free_modules_stay_torch_free():
    code = ("import sys; import engine.export.metadata, engine.network.preprocess, commands.predict; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# -- predictions with the PyTorch model ---------------------------------------------------------------

@pytest.fixture
def headed(resnet_session):
    resnet_session.do(AddHead(HeadSpec("species", labels=["cat", "dog", "bird"]), seed=1))
    resnet_session.do(AddHead(HeadSpec("tags", kind="multi", labels=["a", "b"], hidden=[16], dropout=0.5), seed=2))
    return resnet_session


def test_predict_arrays_uses_eval_mode_and_restores_the_mode(headed):
    headed.model.train()
    x = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    a, b = predict_arrays(headed, x), predict_arrays(headed, x)
    assert headed.model.training  # restored
    assert set(a) == {"species", "tags"} and a["species"].shape == (2, 3) and a["tags"].shape == (2, 2)
    assert all(np.array_equal(a[k], b[k]) for k in a)  # no dropout: eval mode
    with torch.no_grad():
        ref = headed.model.eval()(torch.from_numpy(x))
    assert np.allclose(a["species"], ref["species"].numpy(), atol=1e-6)
    one = predict_arrays(headed, x[0])
    assert one["species"].shape == (1, 3)
    with pytest.raises(GraftError, match="shape"):
        predict_arrays(headed, np.zeros((2, 1, 8, 8)))


def test_predict_files_decodes_every_head(headed, tmp_path):
    paths = []
    for i, (mode, size) in enumerate([("RGB", (40, 90)), ("L", (300, 31)), ("RGBA", (64, 64))]):
        arr = (np.random.default_rng(i).random((size[1], size[0], len(mode))) * 255).astype(np.uint8)
        img = Image.fromarray(arr.squeeze() if mode == "L" else arr, mode)
        paths.append(tmp_path / f"{i}.png")
        img.save(paths[-1])
    preds = predict_files(headed, paths, batch_size=2)
    assert len(preds) == 3 and all(set(p) == {"species", "tags"} for p in preds)
    assert preds[0]["species"].label in ("cat", "dog", "bird")
    assert abs(preds[1]["species"].values.sum() - 1) < 1e-9
    raw = predict_arrays(headed, preprocess_file(paths[2], headed.input_spec))
    assert np.allclose(preds[2]["tags"].raw, raw["tags"][0])
    single = predict_image(headed, paths[2])
    assert np.allclose(single["species"].values, preds[2]["species"].values, atol=1e-6)
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    with pytest.raises(GraftError, match="bad.png: not a readable image"):
        predict_files(headed, [paths[0], bad])


def test_without_heads_the_output_is_the_features(mobilenet_session):
    assert head_specs(mobilenet_session) == {"output": None}
    out = predict_arrays(mobilenet_session, np.zeros((1, 3, 224, 224), dtype=np.float32))
    assert list(out) == ["output"]
