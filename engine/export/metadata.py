"""What an exported ONNX file says about itself, and how raw outputs become predictions. Torch-free.

Graft writes everything a deployment needs to use an exported model correctly into the ONNX file's
``metadata_props``: one JSON blob under the key ``graft`` (the complete description, read back by
:func:`read_metadata`) plus flat keys for tools that only show strings (``input_size``, ``mean`` …).

This module also holds :func:`decode`, the one place where a head's raw output becomes class names and
probabilities, shared by Graft's own predictions (``engine.export.inference``) and ``main.py predict`` on an
ONNX file (:class:`OnnxPredictor`), so both give the same answer. Only NumPy, Pillow (through
``engine.network.preprocess``) and, lazily, onnxruntime are imported: never torch.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import __version__
from engine.errors import GraftError, not_a_file
from engine.units import quoted
from engine.network.heads import HeadSpec
from engine.network.preprocess import RESAMPLE, SIXTEEN_BIT_FORMULA, SIXTEEN_BIT_MODES, InputSpec, load_input

FORMAT = 1
KEY = "graft"
INPUT_NAME = "image"
FEATURES_OUTPUT = "output"
MULTI_THRESHOLD = 0.5
TOP_K = 5
# The numbers inside the file: fp32 as trained, fp16 weights and maths (inputs and outputs stay float32),
# int8 quantized weights and activations (inputs and outputs stay float32). Files from before the key: fp32.
PRECISIONS = ("fp32", "fp16", "int8")

ACTIVATION = {"single": "softmax", "multi": "sigmoid", "regression": "none", "features": "none",
              "segment": "argmax", "detect": "nms"}
MEANING = {
    "single": "logits, shape (batch, classes): apply softmax over the last axis for class probabilities",
    "multi": "logits, shape (batch, labels): apply a sigmoid to each for label probabilities "
             f"(Graft reports labels above {MULTI_THRESHOLD})",
    "regression": "raw values, shape (batch, targets): use as they are",
    "features": "pooled trunk features, shape (batch, features): no head was added before export",
    "segment": "logits, shape (batch, classes, size, size) over the input square: the arg-max over classes is "
               "each pixel's class",
    "detect": "shape (batch, points, 4 + classes): boxes x1, y1, x2, y2 in input-square pixels, then each class's "
              "score; keep (box, class) pairs above the head's score_threshold, apply class-wise non-maximum "
              "suppression at its nms_iou and keep its max_detections best (main.py predict does this)",
}
PILLOW_FILTERS = {name: f"PIL.Image.Resampling.{member.name}" for name, member in RESAMPLE.items()}
SIXTEEN_BIT = {
    "modes": list(SIXTEEN_BIT_MODES),
    "formula": SIXTEEN_BIT_FORMULA,
    "meaning": "v * 255 / 65535 rounded to the nearest integer (no ties occur), for every image whatever its "
               "brightness; 32-bit integer images (mode I) are treated as 16-bit",
}


# -- the metadata -------------------------------------------------------------------------------------

def preprocessing_steps(spec: InputSpec) -> list[str]:
    """The exact steps of :func:`engine.network.preprocess.preprocess`, in words, for the metadata."""
    bg = ", ".join(str(int(c)) for c in spec.alpha_background)
    return [
        "decode the image file with Pillow (palette images are expanded to RGBA; 16-bit RGB, RGBA and "
        "grey+alpha files come out as 8 bits from Pillow's decoders)",
        "apply the EXIF orientation tag (PIL.ImageOps.exif_transpose): a photo a phone stored sideways with "
        "an orientation tag is turned upright before anything else",
        f"16-bit greyscale (Pillow modes {', '.join(SIXTEEN_BIT_MODES)}): scale each value v to 8 bits as "
        f"{SIXTEEN_BIT_FORMULA}, i.e. round(v * 255 / 65535), whatever the image's brightness",
        _conversion_step(spec, bg),
        f"resize {'each band on its own (as an 8-bit greyscale image) ' if spec.channels > 3 else ''}"
        f"with {PILLOW_FILTERS.get(spec.interpolation, spec.interpolation)} so the shorter side is "
        f"{spec.resize} px: new (w, h) = (max({spec.size}, round(w * s)), max({spec.size}, round(h * s))) with "
        f"s = {spec.resize} / min(w, h) and Python's round (halves to even)",
        f"centre-crop {spec.size}x{spec.size} (offsets floor((w-{spec.size})/2), floor((h-{spec.size})/2))",
        "scale uint8 values to [0, 1] (divide by 255, float32)",
        f"per channel: (x - mean) / std with mean {list(spec.mean)} and std {list(spec.std)}",
        f"lay out as {spec.layout} float32 ({spec.channel_order} channel order), input named '{INPUT_NAME}', "
        "any batch size",
    ]


def _conversion_step(spec: InputSpec, bg: str) -> str:
    """How the decoded image becomes the input's channels: RGB, greyscale, or RGB plus more bands."""
    if spec.channels == 1:
        return ("convert to greyscale L: 8-bit grey as it is (16-bit grey scaled as above); anything else has "
                f"its alpha (RGBA, LA, PA, palette transparency) composited over the background colour ({bg}), "
                "then Pillow's Image.convert('L') (ITU-R 601-2 luma: L = R * 299/1000 + G * 587/1000 + "
                "B * 114/1000)")
    if spec.channels > 3:
        return (f"read the {spec.channels} bands as they are ({spec.channel_order}: R, G, B, then "
                f"{spec.channels - 3} more band(s) in file order): a TIFF's bands with tifffile (16-bit bands "
                "scaled as above, its orientation tag applied)" + (", or an RGBA image's, alpha kept as the "
                "4th band (not composited)" if spec.channels == 4 else "") + "; an image with another number "
                "of bands is refused")
    return (f"convert to {spec.channel_order}: alpha (RGBA, LA, PA, palette transparency) is composited over "
            f"the background colour ({bg}); greyscale is replicated to 3 channels")


def output_entry(name: str, spec: HeadSpec | None) -> dict[str, Any]:
    kind = spec.kind if spec is not None else "features"
    entry: dict[str, Any] = {"name": name, "kind": kind, "activation": ACTIVATION[kind], "meaning": MEANING[kind]}
    if spec is not None:
        entry.update(labels=spec.label_names, outputs=spec.outputs, spec=spec.to_dict())
        entry["reads"] = spec.layer if spec.layer is not None else "end"  # a multi-exit model's exit
        if name == FEATURES_OUTPUT:
            entry["meaning"] += " (the network's original classifier: no head was added before export)"
    return entry


def build_metadata(input_spec: InputSpec, heads: Sequence[HeadSpec], source: Mapping[str, Any] | None = None,
                   *, opset: int | None = None, exporter: str | None = None, precision: str = "fp32") -> dict[str, Any]:
    """The complete ``graft`` metadata blob for a model with these heads (none: one ``output``);
    ``precision``: one of :data:`PRECISIONS` (the file's inputs and outputs are float32 whatever it is)."""
    if precision not in PRECISIONS:
        raise GraftError(f"Unknown precision {precision!r}: use {', '.join(PRECISIONS)}.")
    outputs = [output_entry(h.name, h) for h in heads] or [output_entry(FEATURES_OUTPUT, None)]
    data: dict[str, Any] = {
        "format": FORMAT,
        "graft_version": __version__,
        "source": dict(source or {}),
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", input_spec.channels, input_spec.size, input_spec.size],
            "dtype": "float32",
            "layout": input_spec.layout,
            "channel_order": input_spec.channel_order,
            "value_range": "(x / 255 - mean) / std",
        },
        "input_spec": input_spec.to_dict(),
        "preprocessing": {
            "resize_shorter_side": input_spec.resize,
            "exif_orientation": True,
            "sixteen_bit": dict(SIXTEEN_BIT),
            "pillow_filter": PILLOW_FILTERS.get(input_spec.interpolation, input_spec.interpolation),
            "centre_crop": input_spec.size,
            "alpha_background": list(input_spec.alpha_background),
            "scale": "divide by 255 to [0, 1]",
            "mean": list(input_spec.mean),
            "std": list(input_spec.std),
            "steps": preprocessing_steps(input_spec),
        },
        "outputs": outputs,
        "precision": precision,
    }
    if opset is not None:
        data["opset"] = opset
    if exporter is not None:
        data["exporter"] = exporter
    return data


def to_props(data: Mapping[str, Any]) -> dict[str, str]:
    """``metadata_props`` strings: the full JSON blob plus flat keys for quick inspection."""
    spec = data["input_spec"]
    props = {
        KEY: json.dumps(data, sort_keys=True),
        "graft_version": str(data.get("graft_version", "")),
        "input_name": data["input"]["name"],
        "input_size": str(spec["size"]),
        "layout": spec["layout"],
        "channel_order": spec["channel_order"],
        "mean": json.dumps(spec["mean"]),
        "std": json.dumps(spec["std"]),
        "resize": str(spec["resize"]),
        "interpolation": data["preprocessing"]["pillow_filter"],
        "alpha_background": json.dumps(spec["alpha_background"]),
        "exif_orientation": json.dumps(data["preprocessing"].get("exif_orientation", True)),
        "preprocessing": "; ".join(data["preprocessing"]["steps"]),
        "outputs": ",".join(o["name"] for o in data["outputs"]),
        "source": str(data.get("source", {}).get("description", "")),
        "precision": str(data.get("precision", "fp32")),
    }
    for o in data["outputs"]:
        props[f"output.{o['name']}.kind"] = o["kind"]
        props[f"output.{o['name']}.activation"] = o["activation"]
        if "reads" in o:
            props[f"output.{o['name']}.reads"] = str(o["reads"])
        if "labels" in o:
            props[f"output.{o['name']}.labels"] = json.dumps(o["labels"])
    return props


def describe(data: Mapping[str, Any]) -> str:
    """A readable summary for the ONNX ``doc_string``."""
    spec = InputSpec.from_dict(data["input_spec"])
    lines = [f"Exported by Graft {data.get('graft_version', '?')} from {data.get('source', {}).get('description', '?')}.",
             f"Input '{data['input']['name']}': float32 {spec.layout} {spec.describe()}.",
             "Preprocessing: " + "; ".join(data["preprocessing"]["steps"]) + "."]
    if data.get("precision", "fp32") != "fp32":
        lines.append(f"Precision: {data['precision']} inside; the input and the outputs are float32.")
    for o in data["outputs"]:
        labels = f" [{', '.join(o['labels'])}]" if o.get("labels") else ""
        reads = f", read from layer {o['reads']}" if o.get("reads") not in (None, "end") else ""
        lines.append(f"Output '{o['name']}' ({o['kind']}{reads}): {o['meaning']}{labels}.")
    return "\n".join(lines)


@dataclass
class GraftMetadata:
    """The validated ``graft`` blob: how to feed the model and what each output means."""

    input_spec: InputSpec
    heads: list[HeadSpec]
    outputs: list[str]
    input_name: str = INPUT_NAME
    exif_orientation: bool = True
    graft_version: str = ""
    source: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    precision: str = "fp32"  # one of PRECISIONS

    def spec_for(self, output: str) -> HeadSpec | None:
        """The head behind an output (None for the ``output`` features of a model without heads)."""
        return next((h for h in self.heads if h.name == output), None)


def _fail(where: str, why: str) -> GraftError:
    return GraftError(f"{where}: the Graft metadata is invalid ({why}).")


def validate(data: Any, where: str = "ONNX file") -> GraftMetadata:
    """Check a ``graft`` blob completely; GraftError saying what is wrong, else the parsed metadata."""
    if not isinstance(data, dict):
        raise _fail(where, "not a JSON object")
    version = data.get("format")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _fail(where, f"metadata format {quoted(version)}, expected a whole number from 1 to {FORMAT}")
    if version > FORMAT:
        raise GraftError(f"{where} was exported by a newer Graft (metadata format {quoted(version)}).")
    for key in ("input", "input_spec", "outputs"):
        if key not in data:
            raise _fail(where, f"'{key}' is missing")
    raw = data["input_spec"]
    if not isinstance(raw, dict):
        raise _fail(where, "'input_spec' is not an object")
    spec = InputSpec.from_dict(raw)
    problem = spec.problem()  # size, channels, mean/std, filter, layout, alpha background (quoted short)
    if problem:
        raise _fail(where, problem)
    # Files written before these keys existed were preprocessed exactly so: EXIF applied, 16-bit scaled.
    pre = data.get("preprocessing", {})
    if not isinstance(pre, dict):
        raise _fail(where, "'preprocessing' is not an object")
    exif = pre.get("exif_orientation", True)
    if not isinstance(exif, bool):
        raise _fail(where, f"exif_orientation {quoted(exif)} is not true or false")
    sixteen = pre.get("sixteen_bit", SIXTEEN_BIT)
    if not isinstance(sixteen, dict) or sixteen.get("formula") != SIXTEEN_BIT_FORMULA:
        formula = sixteen.get("formula") if isinstance(sixteen, dict) else sixteen
        raise _fail(where, f"unsupported 16-bit scaling {quoted(formula)}; this Graft scales 16-bit images as "
                           f"{SIXTEEN_BIT_FORMULA}")
    outputs = data["outputs"]
    if not isinstance(outputs, list) or not outputs:
        raise _fail(where, "no outputs are described")
    heads: list[HeadSpec] = []
    names: list[str] = []
    for number, o in enumerate(outputs, start=1):
        if not isinstance(o, dict):
            raise _fail(where, f"output {number} is {quoted(o)}, not an object")
        if not isinstance(o.get("name"), str) or not o["name"]:
            raise _fail(where, f"output {number} has no name (text), only {quoted(o.get('name'))}")
        label = quoted(o["name"])
        if not isinstance(o.get("kind"), str) or o["kind"] not in ACTIVATION:
            raise _fail(where, f"output {label}: unknown kind {quoted(o.get('kind'))}")
        names.append(o["name"])
        if o["kind"] == "features":
            continue
        labels = o.get("labels")
        if labels is not None and not (isinstance(labels, list) and all(isinstance(v, str) for v in labels)):
            raise _fail(where, f"output {label}: labels {quoted(labels)} are not a list of names")
        try:
            head = HeadSpec.from_dict(o.get("spec") or {"name": o["name"], "kind": o["kind"], "labels": labels or []})
        except (GraftError, TypeError) as exc:
            raise _fail(where, f"output {label}: {str(exc).rstrip('.')}") from None
        if head.name != o["name"] or head.kind != o["kind"] or head.label_names != (labels or head.label_names):
            raise _fail(where, f"output {label} contradicts its head description")
        heads.append(head)
    if len(set(names)) != len(names):
        raise _fail(where, "duplicate output names")
    if heads and len(heads) != len(names):
        raise _fail(where, "head outputs mixed with raw features")
    precision = data.get("precision", "fp32")
    if precision not in PRECISIONS:
        raise _fail(where, f"precision {quoted(precision)}, expected one of {', '.join(PRECISIONS)}")
    name = data["input"].get("name", INPUT_NAME) if isinstance(data["input"], dict) else INPUT_NAME
    if not isinstance(name, str):
        raise _fail(where, f"input name {quoted(name)} is not text")
    source = data.get("source") or {}
    if not isinstance(source, dict):  # dict() of a list or text raised TypeError or ValueError (found by the fuzz)
        raise _fail(where, "'source' is not an object")
    return GraftMetadata(spec, heads, names, name, exif, str(data.get("graft_version", "")), dict(source), data,
                         precision)


def from_props(props: Mapping[str, str], where: str = "ONNX file") -> GraftMetadata:
    """Parse and validate the metadata from an ONNX file's ``metadata_props``."""
    if KEY not in props:
        raise GraftError(f"{where} was not exported by Graft: it carries no preprocessing metadata.")
    text = props[KEY]
    if not isinstance(text, str):  # onnx hands a value that is not UTF-8 over as bytes (found by the fuzz)
        raise _fail(where, "not UTF-8 text: the file is damaged")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(where, f"JSON: {exc}") from None
    except RecursionError:  # nested past the JSON parser's depth (found by the fuzz)
        raise _fail(where, "JSON nested too deeply to read") from None
    return validate(data, where)


def write_metadata(model: Any, data: Mapping[str, Any]) -> None:
    """Put the metadata into an ``onnx.ModelProto`` (replacing any earlier Graft keys)."""
    props = to_props(data)
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for key, value in keep + sorted(props.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "Graft"
    model.producer_version = str(data.get("graft_version", __version__))
    model.doc_string = describe(data)


def read_metadata(path: str | Path) -> GraftMetadata:
    """The Graft metadata of an ONNX file (weights are not loaded)."""
    path = Path(path)
    if not path.is_file():
        raise not_a_file(path)
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf decode errors have no common public type
        raise GraftError(f"{path.name} is not an ONNX model ({exc.__class__.__name__}).") from None
    return from_props({p.key: p.value for p in model.metadata_props}, path.name)


# -- predictions --------------------------------------------------------------------------------------

def softmax(x: np.ndarray) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64)
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def sigmoid(x: np.ndarray) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -z))


@dataclass
class HeadPrediction:
    """One head's answer for one image.

    ``values``: probabilities (single: softmax, multi: sigmoid per label), regression values or raw
    features, one per name in ``names``. ``top``: single: the top-k classes with probabilities; multi: the
    labels above 0.5, most probable first; regression: every target with its value.
    """

    head: str
    kind: str
    names: list[str]
    values: np.ndarray
    raw: np.ndarray
    top: list[tuple[str, float]] = field(default_factory=list)
    mask: np.ndarray | None = None  # segment: (S, S) class per pixel of the input square
    boxes: list[dict[str, Any]] = field(default_factory=list)  # detect: engine.export.dense_decode.nms_boxes
    mask_file: str | None = None  # segment: where main.py predict wrote the mask (PNG of class indices)
    image_size: tuple[int, int] | None = None  # (width, height) of the upright image, when known

    @property
    def label(self) -> str | None:
        """The predicted class (single-label heads)."""
        return self.top[0][0] if self.kind == "single" and self.top else None

    @property
    def score(self) -> float | None:
        return self.top[0][1] if self.kind == "single" and self.top else None

    @property
    def labels(self) -> list[str]:
        """The labels above the threshold (multi-label heads)."""
        return [n for n, _ in self.top] if self.kind == "multi" else []

    def format(self) -> str:
        """One line of text, e.g. ``species: cat 91.2% (dog 6.1%, bird 2.7%)``: a label's newlines, escape
        sequences and other unprintable characters shown escaped (``cat\\ndog``), so a file's labels can
        neither break the one line per head nor drive the terminal (found by the ONNX metadata fuzz)."""
        line = self._format()
        return line if line.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in line)

    def _format(self) -> str:
        if self.kind == "single":
            best, rest = self.top[0], self.top[1:3]
            tail = f" ({', '.join(f'{n} {p:.1%}' for n, p in rest)})" if rest else ""
            return f"{self.head}: {best[0]} {best[1]:.1%}{tail}"
        if self.kind == "multi":
            if self.top:
                return f"{self.head}: " + ", ".join(f"{n} {p:.1%}" for n, p in self.top)
            i = int(np.argmax(self.values))
            return f"{self.head}: none above {MULTI_THRESHOLD:.0%} (best {self.names[i]} {self.values[i]:.1%})"
        if self.kind == "regression":
            return f"{self.head}: " + ", ".join(f"{n} {v:.4g}" for n, v in self.top)
        if self.kind == "segment":
            h, w = self.mask.shape
            return f"{self.head}: mask {w}x{h}, " + ", ".join(f"{n} {p:.1%}" for n, p in self.top[:4])
        if self.kind == "detect":
            shown = ", ".join(f"{b['label']} {b['score']:.2f} at [{', '.join(f'{v:.0f}' for v in b['box'])}]"
                              for b in self.boxes[:3])
            more = f" and {len(self.boxes) - 3} more" if len(self.boxes) > 3 else ""
            return f"{self.head}: {len(self.boxes)} box{'es' if len(self.boxes) != 1 else ''}" + (
                f": {shown}{more}" if self.boxes else "")
        v = self.values
        return (f"{self.head}: {v.size} features (min {v.min():.4g}, mean {v.mean():.4g}, max {v.max():.4g})"
                if v.size else f"{self.head}: no features")

    def to_dict(self, input_spec: InputSpec | None = None) -> dict[str, Any]:
        """The prediction as JSON values. Segment: ``mask`` the PNG file :attr:`mask_file` (one class index
        per pixel of the input square; None when none was written), ``mask_size`` its [width, height] and,
        with ``input_spec`` and :attr:`image_size`, ``mask_box``: where that square lies in the image
        ([x1, y1, x2, y2], image pixels). Detect: ``boxes``, best first, each ``[x1, y1, x2, y2, score,
        label]``, in the image's pixels with ``input_spec`` and :attr:`image_size`, else in the input
        square's (``boxes_frame`` says which)."""
        out: dict[str, Any] = {"head": self.head, "kind": self.kind, "text": self.format(),
                               "values": dict(zip(self.names, (float(v) for v in self.values)))}
        in_image = input_spec is not None and self.image_size is not None
        if self.kind == "single":
            out["label"], out["score"] = self.label, self.score
        elif self.kind == "multi":
            out["labels"] = self.labels
        elif self.kind == "segment":
            out["mask"] = self.mask_file
            out["mask_size"] = list(self.mask.shape[::-1])
            if in_image:
                from engine.export.dense_decode import to_image_frame

                h, w = self.mask.shape
                (square,) = to_image_frame([{"box": [0.0, 0.0, float(w), float(h)]}], self.image_size, input_spec)
                out["mask_box"] = [round(v, 3) for v in square["box"]]
        elif self.kind == "detect":
            boxes = self.boxes
            if in_image:
                from engine.export.dense_decode import to_image_frame

                boxes = to_image_frame(boxes, self.image_size, input_spec)
            out["boxes"] = [[*(round(v, 3) for v in b["box"]), round(b["score"], 6), b["label"]] for b in boxes]
            out["boxes_frame"] = "image" if in_image else "input square"
        return out


def decode(spec: HeadSpec | None, raw: np.ndarray, *, name: str = FEATURES_OUTPUT, top_k: int = TOP_K) -> HeadPrediction:
    """One image's raw output of a head -> its prediction. ``spec`` None: the features of a model
    without heads (output ``name``)."""
    raw = np.asarray(raw, dtype=np.float32)
    if spec is not None and spec.dense:
        return _decode_dense(spec, raw)
    if raw.ndim > 1 and raw.shape[0] == 1:
        raw = raw.reshape(raw.shape[1:])
    raw = raw.reshape(-1)
    if spec is None:
        return HeadPrediction(name, "features", [str(i) for i in range(raw.size)], raw.astype(np.float64), raw)
    names = spec.label_names
    if raw.size != len(names):
        raise GraftError(f"Head {spec.name!r} gave {raw.size} outputs where {len(names)} were expected.")
    if spec.kind == "single":
        probs = softmax(raw)
        order = np.argsort(-probs, kind="stable")[:max(1, top_k)]
        return HeadPrediction(spec.name, "single", names, probs, raw, [(names[i], float(probs[i])) for i in order])
    if spec.kind == "multi":
        probs = sigmoid(raw)
        order = [i for i in np.argsort(-probs, kind="stable") if probs[i] > MULTI_THRESHOLD]
        return HeadPrediction(spec.name, "multi", names, probs, raw, [(names[i], float(probs[i])) for i in order])
    values = raw.astype(np.float64)
    return HeadPrediction(spec.name, "regression", names, values, raw, [(n, float(v)) for n, v in zip(names, values)])


def _decode_dense(spec: HeadSpec, raw: np.ndarray) -> HeadPrediction:
    """A segment head's mask (``values``: each class's share of the pixels) or a detect head's boxes
    (``values``: boxes per class), see :mod:`engine.export.dense_decode`."""
    from engine.export.dense_decode import nms_boxes, segment_mask

    names = spec.label_names
    expected = len(names) if spec.kind == "segment" else 4 + len(names)
    width = raw.shape[0] if spec.kind == "segment" else raw.shape[-1]
    if raw.ndim not in (2, 3) or width != expected:
        raise GraftError(f"Head {spec.name!r} gave outputs of shape {raw.shape} where {expected} "
                         f"{'classes' if spec.kind == 'segment' else 'box values and scores'} were expected.")
    if spec.kind == "segment":
        mask = segment_mask(raw)
        shares = np.bincount(mask.reshape(-1), minlength=len(names))[:len(names)] / max(1, mask.size)
        order = np.argsort(-shares, kind="stable")
        return HeadPrediction(spec.name, "segment", names, shares.astype(np.float64), raw,
                              [(names[i], float(shares[i])) for i in order if shares[i] > 0], mask=mask)
    boxes = nms_boxes(raw, spec)
    counts = np.bincount([b["class"] for b in boxes], minlength=len(names)).astype(np.float64)
    return HeadPrediction(spec.name, "detect", names, counts, raw,
                          [(b["label"], b["score"]) for b in boxes], boxes=boxes)


def decode_batch(specs: Mapping[str, HeadSpec | None], outputs: Mapping[str, np.ndarray],
                 sizes: Sequence[tuple[int, int]] | None = None) -> list[dict[str, HeadPrediction]]:
    """Per-image predictions from a batch of raw outputs ``{name: (N, ...)}`` (``sizes``: the images'
    (width, height), kept as each prediction's ``image_size``)."""
    n = len(next(iter(outputs.values()))) if outputs else 0
    out = [{name: decode(specs.get(name), outputs[name][i], name=name) for name in outputs} for i in range(n)]
    for preds, size in zip(out, sizes or ()):
        for p in preds.values():
            p.image_size = tuple(size)
    return out


def load_batch(paths: Iterable[str | Path], spec: InputSpec, *, exif: bool = True,
               sizes: list[tuple[int, int]] | None = None) -> np.ndarray:
    """Preprocess image files into one (N, C, S, S) float32 batch (GraftError naming a bad file);
    ``sizes``, when given, gets each upright image's (width, height)."""
    arrays = []
    for p in paths:
        array, size = load_input(p, spec, exif=exif)
        arrays.append(array)
        if sizes is not None:
            sizes.append(size)
    if not arrays:
        return np.zeros((0, spec.channels, spec.size, spec.size), dtype=np.float32)
    return np.stack(arrays)


def image_suffixes() -> set[str]:
    """File name endings Pillow can open (lower case, with the dot)."""
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def find_images(paths: Iterable[str | Path]) -> list[Path]:
    """The files named, and the image files found in the folders named (searched recursively, hidden
    files and folders left out, in sorted order). A named file is kept whatever its ending, and so is a
    path that does not exist: reading it says what is wrong with it, next to the images that are fine."""
    import os

    suffixes = image_suffixes()
    out: list[Path] = []
    for text in paths:
        p = Path(text).expanduser()
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                out += [Path(dirpath) / f for f in sorted(filenames)
                        if not f.startswith(".") and Path(f).suffix.lower() in suffixes]
        else:
            out.append(Path(text))
    return out


class OnnxPredictor:
    """An exported file run by onnxruntime (CPU), preprocessed from its own metadata. No torch."""

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        self.path = Path(path)
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
            raise GraftError(f"The number of threads must be a whole number of at least 0 (got {threads!r}).")
        if not self.path.is_file():
            raise not_a_file(self.path)
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        try:
            # no fallback: onnxruntime would print "EP Error …" banners to stdout and retry the same provider
            # (a damaged file's node names that are not UTF-8, found by the fuzz)
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"],
                                                enable_fallback=0)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind error types
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise GraftError(f"{self.path.name} is not an ONNX model onnxruntime can load ({reason[:200]}).") from None
        try:
            props = self.session.get_modelmeta().custom_metadata_map
        except UnicodeDecodeError:  # a metadata key or value that is not UTF-8 (found by the fuzz)
            raise GraftError(f"{self.path.name}: its metadata holds text that is not UTF-8: the file is damaged.") from None
        self.metadata = from_props(props, self.path.name)
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise GraftError(f"{self.path.name}: expected one input, found {len(inputs)}.")
        self.input_name = inputs[0].name
        self._check_input(inputs[0].shape)
        shapes = {o.name: o.shape for o in self.session.get_outputs()}
        missing = [o for o in self.metadata.outputs if o not in shapes]
        if missing:
            raise GraftError(f"{self.path.name}: output {quoted(missing[0])}"
                             + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                             + " described in the metadata not in the model.")
        self.outputs = list(self.metadata.outputs)
        self.specs = {o: self.metadata.spec_for(o) for o in self.outputs}
        for name in self.outputs:
            self._check_output(name, self.specs[name], shapes[name])

    def _check_input(self, shape: Any) -> None:
        """The model's input is the (batch, channels, size, size) the metadata preprocesses to, where its
        dimensions are fixed: a hand-edited size or channel count failed inside onnxruntime at the first
        prediction (found by the fuzz)."""
        spec = self.metadata.input_spec
        want = [None, spec.channels, spec.size, spec.size]
        if not isinstance(shape, list) or len(shape) != 4:
            return
        if any(isinstance(got, int) and w is not None and got != w for got, w in zip(shape, want)):
            dims = "x".join(str(d) if isinstance(d, int) else "?" for d in shape[1:])
            raise GraftError(f"{self.path.name}: the model takes {dims} inputs (channels x height x width), but its "
                             f"metadata says {spec.channels}x{spec.size}x{spec.size}: the metadata does not match the "
                             "model.")

    def _check_output(self, name: str, spec: HeadSpec | None, shape: Any) -> None:
        """Each head's output has the width its labels need (single, multi, regression: (batch, labels);
        segment: (batch, classes, h, w); detect: (batch, points, 4 + classes)), where the model fixes it:
        a label added or dropped by hand failed at the first prediction without naming the file (found by the
        fuzz)."""
        if spec is None or not isinstance(shape, list):
            return
        n = len(spec.label_names)
        rank, axis, width = {"segment": (4, 1, n), "detect": (3, 2, 4 + n)}.get(spec.kind, (2, 1, n))
        if len(shape) != rank:
            raise GraftError(f"{self.path.name}: output {quoted(name)} has {len(shape)} dimensions where a "
                             f"{spec.kind} head gives {rank}: the metadata does not match the model.")
        got = shape[axis]
        if isinstance(got, int) and got != width:
            need = f"4 + {n} classes" if spec.kind == "detect" else f"its {n} labels"
            raise GraftError(f"{self.path.name}: output {quoted(name)} gives {got} values where the metadata's "
                             f"{spec.kind} head needs {width} ({need}): the metadata does not match the model.")

    @property
    def input_spec(self) -> InputSpec:
        return self.metadata.input_spec

    def predict_arrays(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim == 3:
            batch = batch[None]
        try:
            results = self.session.run(self.outputs, {self.input_name: np.ascontiguousarray(batch)})
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own pybind error types
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
            raise GraftError(f"{self.path.name}: onnxruntime could not run the model ({reason[:200]}).") from None
        return dict(zip(self.outputs, results))

    def _decode(self, arrays: Mapping[str, np.ndarray], sizes: Sequence[tuple[int, int]]
                ) -> list[dict[str, HeadPrediction]]:
        """:func:`decode_batch`; an output its head cannot read (a dimension the model leaves open) is refused
        naming the file."""
        try:
            return decode_batch(self.specs, arrays, sizes)
        except GraftError as exc:
            raise GraftError(f"{self.path.name}: {exc} The metadata does not match the model.") from None

    def predict_files(self, paths: Sequence[str | Path], batch_size: int = 16) -> list[dict[str, HeadPrediction]]:
        """Predictions per image file, preprocessed exactly as the metadata says (GraftError on a bad file)."""
        out: list[dict[str, HeadPrediction]] = []
        paths = list(paths)
        for start in range(0, len(paths), batch_size):
            sizes: list[tuple[int, int]] = []
            batch = load_batch(paths[start:start + batch_size], self.input_spec,
                               exif=self.metadata.exif_orientation, sizes=sizes)
            out += self._decode(self.predict_arrays(batch), sizes)
        return out

    def predict_each(self, paths: Sequence[str | Path], batch_size: int = 16
                     ) -> Iterator[tuple[str | Path, dict[str, HeadPrediction] | GraftError]]:
        """``(path, predictions)`` per image file, in order, or ``(path, GraftError)`` for a file that cannot
        be read: each image is preprocessed on its own, so one bad file does not lose the others."""
        paths = list(paths)
        for start in range(0, len(paths), batch_size):
            chunk = paths[start:start + batch_size]
            results: list[dict[str, HeadPrediction] | GraftError] = []
            good: list[np.ndarray] = []
            for p in chunk:
                try:
                    array, size = load_input(p, self.input_spec, exif=self.metadata.exif_orientation)
                    good.append(array)
                    results.append(size)
                except GraftError as exc:
                    results.append(exc)
            sizes = [r for r in results if not isinstance(r, GraftError)]
            decoded = iter(self._decode(self.predict_arrays(np.stack(good)), sizes) if good else [])
            for p, r in zip(chunk, results):
                yield p, (r if isinstance(r, GraftError) else next(decoded))
