"""Exported ONNX files fuzzed (Hypothesis): whatever a file's metadata or bytes, reading it as ``main.py
predict`` does (:func:`read_metadata`; :class:`OnnxPredictor`, then a prediction of one image, each one's
text line and JSON) ends in a correct load or one short, readable GraftError that names the file, within
30 s and 300 MB, writing nothing (each call in a forked child, tests/fuzz_support.py).

The file fuzzed is a real export (a tiny network, 32 px, with a single-label, a multi-label and a regression
head). Fuzzed: its ``graft`` metadata JSON (any value replaced by one of another type, keys deleted or
added, huge numbers, NaN, long or hostile text: newlines, escape sequences, NUL, right-to-left marks, paths),
the changes a hand edit makes that still look valid (labels added or dropped so a head's class count
disagrees with its output, a head's kind changed, an output renamed, the input size or channels changed,
a newer format), the JSON itself (broken, truncated, nested past the parser's depth, megabytes long, not
UTF-8), the key missing or duplicated, the flat keys not UTF-8, and the file's bytes (truncated at any byte,
bytes flipped, empty, other formats)."""
from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from hypothesis import example, given, strategies as st
from PIL import Image
from torch import nn

import fuzz_support
from engine.export.metadata import KEY, OnnxPredictor, read_metadata
from engine.export.onnx_export import export_onnx
from engine.network.heads import HeadSpec
from engine.network.loading import LoadedNetwork, ModelSource
from engine.network.preprocess import InputSpec
from engine.surgery.operations import AddHead, DeleteOutputLayer
from engine.surgery.session import Session
from fuzz_support import Fuzzed, check, flip_bytes, readable, short

MEMORY_MB = 300
PLACEHOLDER = "\x07"  # a character no real metadata holds: where bytes that are not UTF-8 go in


@pytest.fixture(scope="module")
def base(tmp_path_factory, one_torch_thread) -> dict:
    """The real export: ``{"bytes", "graft" (its metadata JSON, parsed), "image" (a picture to predict)}``.
    Torch runs one thread (``one_torch_thread``): a child forked after OpenMP started its threads hangs."""
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))
    session = Session(LoadedNetwork(body.eval(), InputSpec(size=32, resize=36),
                                    ModelSource("file", "/x/tiny.pt", format="pickle")))
    session.do(DeleteOutputLayer())
    session.do(AddHead(HeadSpec("species", labels=["cat", "dog", "bird"])))
    session.do(AddHead(HeadSpec("tags", kind="multi", labels=["a", "b"])))
    session.do(AddHead(HeadSpec("size", kind="regression", outputs=1)))
    folder = tmp_path_factory.mktemp("onnx")
    export_onnx(session, folder / "base.onnx", verify=False)
    data = (folder / "base.onnx").read_bytes()
    props = {p.key: p.value for p in onnx.load_from_string(data).metadata_props}
    image = folder / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(image)
    return {"bytes": data, "graft": json.loads(props[KEY]), "image": image}


def with_props(data: bytes, props: list[tuple[str, str]], raw: dict[str, bytes] | None = None) -> bytes:
    """The model ``data`` with these ``metadata_props``; ``raw``: placeholders (runs of :data:`PLACEHOLDER`)
    replaced by these bytes of the same length after serialising (protobuf would refuse non-UTF-8 text)."""
    model = onnx.load_from_string(data)
    del model.metadata_props[:]
    for key, value in props:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    out = model.SerializeToString()
    for placeholder, replacement in (raw or {}).items():
        out = out.replace(placeholder.encode(), replacement)
    return out


# -- what gets fuzzed ---------------------------------------------------------------------------------------
HOSTILE_TEXT = ["", " ", "\n", "cat\ndog", "\x1b[2J\x1b[31mred", "\x00", "nul\x00byte", "\u202eevil", "../../etc/passwd",
                "/tmp/x", "C:\\x", "x" * 100_000, "é" * 5000, "😀", "\ud800", "%s%n", "{0}", "<script>", "'\"", "a,b"]
odd_values = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 1, 2, 3, 4, 5, 32, 2 ** 31, 2 ** 63, -2 ** 63, 10 ** 30, 10 ** 400,
                     1e308, -1e308, float("nan"), float("inf"), 0.5, "single", "multi", "regression", "features",
                     "segment", "detect", "fp16", "int8", "NCHW", "NHWC", "BGR", "RGB", "bilinear", "species", "tags",
                     "size", "output", "image", [], {}, [None], [0, 0, 0], [0.5, 0.5, 0.5], [0, 0, 0, 0], [1, 2],
                     ["a", "a"], ["cat", "dog"], [[]], {"name": "x"}, {"": 1}, ["x" * 100_000] * 3, list(range(5000))]),
    st.sampled_from(HOSTILE_TEXT), st.text(max_size=12), st.integers(-3, 300),
    st.floats(allow_nan=True, allow_infinity=True),
)
NEW_KEYS = ["format", "input_spec", "outputs", "labels", "spec", "kind", "name", "size", "channels", "precision",
            "extra", ""]


def edited(draw, graft: dict) -> dict:
    """A hand edit that still looks valid: the metadata disagrees with the model it describes."""
    import copy

    g = copy.deepcopy(graft)
    out = draw(st.sampled_from(g["outputs"]))
    how = draw(st.sampled_from(["labels", "labels", "kind", "rename", "size", "channels", "format", "hostile",
                                "duplicate", "drop", "features"]))
    if how == "labels":  # the class count disagrees with the output's width
        labels = draw(st.lists(st.sampled_from(["cat", "dog", "bird", "fish", "x", "y", "z", "w"]), unique=True,
                               min_size=1, max_size=8))
        out["labels"] = labels
        out["outputs"] = len(labels)
        out["spec"].update(labels=labels, outputs=len(labels))
    elif how == "kind":
        kind = draw(st.sampled_from(["single", "multi", "regression", "segment", "detect"]))
        out["kind"] = out["spec"]["kind"] = kind
    elif how == "rename":
        name = draw(st.sampled_from(["other", "output", "image", "species", "tags", "size"]))
        out["name"] = out["spec"]["name"] = name
    elif how == "size":
        size = draw(st.sampled_from([1, 16, 31, 33, 64, 224, 4096, 100_000]))
        g["input_spec"]["size"] = size
        g["input_spec"]["resize"] = max(size, draw(st.sampled_from([size, size + 4, 100_000])))
    elif how == "channels":
        channels = draw(st.sampled_from([1, 4, 5]))
        spec = g["input_spec"]
        spec.update(channels=channels, mean=[0.5] * channels, std=[0.25] * channels,
                    channel_order="L" if channels == 1 else f"RGB+{channels - 3}")
    elif how == "format":
        g["format"] = draw(st.sampled_from([0, 2, 99, "1", 1.0, None]))
    elif how == "hostile":  # label strings that are no names
        labels = draw(st.lists(st.sampled_from(HOSTILE_TEXT), min_size=1, max_size=3, unique=True))
        labels = (labels + ["l1", "l2", "l3"])[:len(out["spec"]["labels"]) or 1]
        out["labels"] = out["spec"]["labels"] = labels
    elif how == "duplicate":
        g["outputs"].append(copy.deepcopy(out))
    elif how == "drop":
        g["outputs"].remove(out)
    else:
        g["outputs"] = [{"name": o["name"], "kind": "features", "activation": "none", "meaning": ""}
                        for o in g["outputs"]]
    return g


@st.composite
def onnx_files(draw, base: dict) -> Fuzzed:
    data = base["bytes"]
    props = [(p.key, p.value) for p in onnx.load_from_string(data).metadata_props]
    steps: list[str] = []
    how = draw(st.sampled_from(["mutate", "mutate", "mutate", "edit", "edit", "edit", "text", "props",
                                "file", "file"]))
    steps.append(how)
    raw: dict[str, bytes] = {}
    blob: str | None = json.dumps(base["graft"], sort_keys=True)
    if how == "mutate":
        blob = json.dumps(fuzz_support.mutate_json(draw, base["graft"], odd_values, NEW_KEYS))
    elif how == "edit":
        blob = json.dumps(edited(draw, base["graft"]))
    elif how == "text":
        kind = draw(st.sampled_from(["truncate", "junk", "deep", "deep-object", "huge", "not-utf8", "empty",
                                     "not-json", "bom"]))
        steps.append(kind)
        if kind == "truncate":
            blob = blob[:draw(st.integers(0, len(blob) - 1))]
        elif kind == "junk":
            blob = draw(st.text(max_size=50))
        elif kind == "deep":
            depth = draw(st.sampled_from([100, 5000, 200_000]))
            blob = "[" * depth + "]" * depth
        elif kind == "deep-object":
            depth = draw(st.sampled_from([100, 100_000]))
            blob = '{"format":' * depth + "1" + "}" * depth
        elif kind == "huge":
            g = json.loads(blob)
            g["source"] = {"description": "x" * draw(st.sampled_from([1_000_000, 20_000_000]))}
            blob = json.dumps(g)
        elif kind == "not-utf8":
            at = draw(st.integers(0, len(blob) - 1))
            n = draw(st.integers(1, 4))
            raw[PLACEHOLDER * n] = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80"])) * n
            blob = blob[:at] + PLACEHOLDER * n + blob[at:]
        elif kind == "empty":
            blob = ""
        elif kind == "not-json":
            blob = draw(st.sampled_from(["NaN", "null", "1", '"graft"', "[]", "{}", "true", "Infinity"]))
        else:
            blob = "\ufeff" + blob
    elif how == "props":
        kind = draw(st.sampled_from(["missing", "duplicate", "flat-not-utf8", "key-not-utf8", "many"]))
        steps.append(kind)
        if kind == "missing":
            blob = None
        elif kind == "duplicate":
            props.append((KEY, draw(st.sampled_from(["{}", "junk", blob]))))
        elif kind == "flat-not-utf8":
            i = draw(st.integers(0, len(props) - 1))
            props[i] = (props[i][0], PLACEHOLDER * 3)
            raw[PLACEHOLDER * 3] = b"\xff\xfe\x80"
        elif kind == "key-not-utf8":
            props.append((PLACEHOLDER * 2, "value"))
            raw[PLACEHOLDER * 2] = b"\xc3\x28"
        else:
            props += [(f"k{i}", "v" * 100) for i in range(draw(st.sampled_from([1000, 20_000])))]
    props = [(k, v) for k, v in props if k != KEY or how == "props"] + ([(KEY, blob)] if blob is not None else [])
    out = with_props(data, props, raw)
    if how == "file":
        kind = draw(st.sampled_from(["truncate", "truncate", "flip", "flip", "empty", "junk", "zip", "json",
                                     "doubled"]))
        steps.append(kind)
        if kind == "truncate":
            out = out[:draw(st.integers(0, len(out) - 1))]
        elif kind == "flip":
            out = flip_bytes(draw, out)
        elif kind == "empty":
            out = b""
        elif kind == "junk":
            out = draw(st.binary(max_size=300))
        elif kind == "zip":
            out = b"PK\x03\x04" + out
        elif kind == "json":
            out = json.dumps(base["graft"]).encode()
        else:
            out = out + out
    fuzzed = Fuzzed(out)
    fuzzed.steps = steps
    return fuzzed


# -- the property --------------------------------------------------------------------------------------------
def refused_or(fn, path: Path):
    """``fn()``; a GraftError must be readable, short and name the file."""
    from engine.errors import GraftError

    try:
        return fn()
    except GraftError as exc:
        message = str(exc)
        assert readable(message), message[:500]
        assert short(message, path), f"{len(message)} characters: {message[:500]}"
        assert path.name in message, f"the message does not name {path.name}: {message[:300]}"
        raise


def predict_one(path: Path, image: Path) -> str:
    """What ``main.py predict`` does with a file: load it, predict an image, print each head's line and JSON."""
    predictor = OnnxPredictor(path, threads=1)
    (_, preds), = predictor.predict_each([image])
    if not isinstance(preds, dict):
        raise AssertionError(f"the good image was refused: {preds}")
    lines = []
    for name, p in preds.items():
        spec = predictor.specs[name]
        if spec is not None:
            assert p.names == spec.label_names and p.kind == spec.kind
        if p.kind in ("single", "multi"):
            # probabilities (NaN only where the model's own numbers are: a flipped byte in a weight)
            assert all(0 <= v <= 1 or math.isnan(v) for v in p.values) and all(n in p.names for n, _ in p.top)
        line = p.format()
        assert isinstance(line, str) and line.startswith(name), line[:300]
        assert line.isprintable(), f"a line that is not one printable line: {line[:300]!r}"
        json.dumps(p.to_dict(predictor.input_spec))
        lines.append(line[:80])
    return "; ".join(lines)


def read_both(path: Path, image: Path) -> str:
    """Both readers, printing nothing (``main.py predict`` prints one line per head, and errors on stderr)."""
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            metadata = refused_or(lambda: read_metadata(path), path)
            assert metadata.outputs and metadata.input_spec.size > 0
            assert all(isinstance(h.label_names, list) for h in metadata.heads)
            return refused_or(lambda: predict_one(path, image), path)
    finally:
        assert not printed.getvalue(), f"printed: {printed.getvalue()[:300]!r}"


def _relabel(g: dict) -> dict:
    first = {**g["outputs"][0], "labels": ["a", "b"]}
    first["spec"] = {**first["spec"], "labels": ["a", "b"], "outputs": 2}
    return {**g, "outputs": [first, *g["outputs"][1:]]}


KNOWN = {  # name: the file's bytes from the base's (bytes, metadata)
    "nested past the JSON parser's depth": lambda b, g: with_props(b, [(KEY, "[" * 200_000 + "]" * 200_000)]),
    "input size not the model's": lambda b, g: with_props(
        b, [(KEY, json.dumps({**g, "input_spec": {**g["input_spec"], "size": 64, "resize": 64}}))]),
    "2 labels for an output of 3": lambda b, g: with_props(b, [(KEY, json.dumps(_relabel(g)))]),
    "flat key not UTF-8": lambda b, g: with_props(b, [(KEY, json.dumps(g)), ("source", PLACEHOLDER * 3)],
                                                  {PLACEHOLDER * 3: b"\xff\xfe\x80"}),
    "graft key not UTF-8": lambda b, g: with_props(b, [(KEY, PLACEHOLDER * 2 + json.dumps(g))],
                                                   {PLACEHOLDER * 2: b"\xc3\x28"}),
    # onnxruntime printed an "EP Error" banner to stdout and retried before it raised
    "a node's input name not UTF-8": lambda b, g: b.replace(b"\n\x05image\n", b"\n\x05\xffmage\n", 1),
    "std past float32's range": lambda b, g: with_props(
        b, [(KEY, json.dumps({**g, "input_spec": {**g["input_spec"], "std": [5e-324, 1, 1]}}))]),
    "an output entry of 5,000 numbers": lambda b, g: with_props(
        b, [(KEY, json.dumps({**g, "outputs": [list(range(5000)), *g["outputs"][1:]]}))]),
    "a format of 400 digits": lambda b, g: with_props(b, [(KEY, json.dumps({**g, "format": 10 ** 400}))]),
    # math.isfinite raised OverflowError on it (the thorough profile found it)
    "an alpha background int of 400 digits": lambda b, g: with_props(b, [(KEY, json.dumps(
        {**g, "input_spec": {**g["input_spec"], "alpha_background": [10 ** 400, 0, 0]}}))]),
    "a score threshold of 400 digits": lambda b, g: with_props(b, [(KEY, json.dumps(
        {**g, "outputs": [{**g["outputs"][0], "spec": {**g["outputs"][0]["spec"], "kind": "detect",
                                                        "score_threshold": 10 ** 400}}, *g["outputs"][1:]]}))]),
    "a source that is a list": lambda b, g: with_props(b, [(KEY, json.dumps({**g, "source": [1, 2]}))]),
    "labels with a newline and an escape sequence": lambda b, g: with_props(b, [(KEY, json.dumps(
        {**g, "outputs": [{**g["outputs"][0], "labels": (labels := ["cat\ndog", "\x1b[2Jred", "\u202eevil"]),
                           "spec": {**g["outputs"][0]["spec"], "labels": labels}}, *g["outputs"][1:]]}))]),
    "labels that are a number": lambda b, g: with_props(
        b, [(KEY, json.dumps({**g, "outputs": [{**g["outputs"][0], "labels": 3}, *g["outputs"][1:]]}))]),
}


@pytest.mark.parametrize("case", sorted(KNOWN))
def test_damage_the_fuzz_found_is_refused_clearly(base, tmp_path, case):
    path = tmp_path / "model.onnx"
    path.write_bytes(KNOWN[case](base["bytes"], base["graft"]))
    outcome = check(read_both, path, base["image"], memory_mb=MEMORY_MB, label="ONNX file (found)")
    assert outcome.kind == ("ok" if case.startswith("labels with") else "graft"), outcome.detail[:500]


@given(data=st.data())
def test_any_onnx_file_is_read_or_refused_clearly(base, tmp_path_factory, data):
    where = tmp_path_factory.mktemp("onnx", numbered=True)
    path = where / "model.onnx"
    path.write_bytes(data.draw(onnx_files(base), label="file"))
    check(read_both, path, base["image"], memory_mb=MEMORY_MB, label="ONNX file")


def test_the_unchanged_export_predicts(base, tmp_path):
    """The fuzz's base: the file as exported loads and predicts (so a refusal above is the damage's)."""
    path = tmp_path / "model.onnx"
    path.write_bytes(base["bytes"])
    outcome = check(read_both, path, base["image"], memory_mb=MEMORY_MB)
    assert outcome.kind == "ok", outcome.detail
    assert "species:" in outcome.detail and "tags:" in outcome.detail and "size:" in outcome.detail
