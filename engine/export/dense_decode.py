"""Dense heads' raw outputs -> predictions, without torch (``main.py predict`` runs on onnxruntime alone).

* segment — the output is ``(classes, S, S)`` logits over the network's input square (the centre crop of the
  image resized, as the metadata's preprocessing says): the mask is their arg-max per pixel, uint8 (uint16
  beyond 255 classes).
* detect — the output is ``(P, 4 + classes)``: boxes ``x1, y1, x2, y2`` in the input square's pixels and
  per-class scores (:meth:`engine.network.dense_heads.DetectHead.decode`, inside the exported graph). The
  post-processing step that chooses the boxes runs here, the same for the project and an exported file:
  every (box, class) scoring above ``HeadSpec.score_threshold``, class-wise non-maximum suppression at IoU
  ``nms_iou`` by onnxruntime's ``NonMaxSuppression`` operator (a two-node graph built once), then the
  ``max_detections`` best by score. It is the rule of :func:`engine.network.dense_heads.select_boxes`
  (torchvision's batched_nms), which Graft's metrics use.

:func:`to_image_frame` maps boxes back to the original image's pixels; :func:`write_mask` writes a mask as a PNG
of class indices (``main.py predict``).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from engine.network.heads import HeadSpec
from engine.network.preprocess import InputSpec, crop_geometry


def segment_mask(raw: np.ndarray) -> np.ndarray:
    """``(classes, H, W)`` logits -> ``(H, W)`` class indices (uint8, or uint16 for more than 256 classes)."""
    raw = np.asarray(raw)
    dtype = np.uint8 if raw.shape[0] <= 256 else np.uint16
    return raw.argmax(axis=0).astype(dtype)


@functools.lru_cache(maxsize=1)
def _nms_session() -> Any:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    node = helper.make_node("NonMaxSuppression", ["boxes", "scores", "limit", "iou", "threshold"], ["selected"],
                            center_point_box=0)
    graph = helper.make_graph(
        [node], "graft_nms",
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, "points", 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, "classes", "points"]),
         helper.make_tensor_value_info("limit", TensorProto.INT64, [1]),
         helper.make_tensor_value_info("iou", TensorProto.FLOAT, [1]),
         helper.make_tensor_value_info("threshold", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, ["selected", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def nms_boxes(decoded: np.ndarray, spec: HeadSpec) -> list[dict[str, Any]]:
    """One image's ``(P, 4 + classes)`` -> its boxes, best first: ``{"box": [x1, y1, x2, y2], "label": name,
    "class": index, "score": s}`` (input-square pixels; see the module docstring for the rule)."""
    decoded = np.asarray(decoded, dtype=np.float32)
    boxes, scores = decoded[:, :4], decoded[:, 4:]
    if not len(boxes):
        return []
    selected = _nms_session().run(None, {
        "boxes": np.ascontiguousarray(boxes[None]), "scores": np.ascontiguousarray(scores.T[None]),
        "limit": np.array([spec.max_detections], np.int64), "iou": np.array([spec.nms_iou], np.float32),
        "threshold": np.array([spec.score_threshold], np.float32)})[0]
    classes, points = selected[:, 1], selected[:, 2]
    chosen = scores[points, classes]
    order = np.argsort(-chosen, kind="stable")[:spec.max_detections]
    names = spec.label_names
    return [{"box": [float(v) for v in boxes[points[i]]], "label": names[int(classes[i])], "class": int(classes[i]),
             "score": float(chosen[i])} for i in order]


def to_image_frame(boxes: list[dict[str, Any]], size: tuple[int, int], spec: InputSpec) -> list[dict[str, Any]]:
    """The boxes (input-square pixels) in the pixels of the upright image of ``size`` (w, h) they came from."""
    w, h = size
    nw, nh, left, top = crop_geometry(w, h, spec)
    sx, sy = nw / w, nh / h
    out = []
    for b in boxes:
        x1, y1, x2, y2 = b["box"]
        out.append({**b, "box": [(x1 + left) / sx, (y1 + top) / sy, (x2 + left) / sx, (y2 + top) / sy]})
    return out


def voc_palette() -> np.ndarray:
    """The PASCAL VOC colour map (256×3 uint8): class 0 black, 1 dark red, 2 dark green, … — the palette
    segmentation data sets store their palette PNG masks with (the bits of the index spread over R, G, B)."""
    index = np.arange(256)
    colours = np.zeros((256, 3), np.int64)
    for shift in range(8):
        for channel in range(3):
            colours[:, channel] |= ((index >> (3 * shift + channel)) & 1) << (7 - shift)
    return colours.astype(np.uint8)


def write_mask(mask: np.ndarray, path: Path) -> Path:
    """A mask of class indices as a PNG file (atomically): for up to 256 classes a palette PNG, as
    PASCAL VOC's masks are (the pixel values are the class indices, ``numpy.asarray(PIL.Image.open(path))``,
    and an image viewer shows the classes in :func:`voc_palette`'s colours), else 16-bit greyscale."""
    from PIL import Image

    from engine.files import atomic_write

    mask = np.asarray(mask)
    if mask.dtype == np.uint8:
        img = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask).tobytes())
        img.putpalette(voc_palette().reshape(-1).tolist())
    else:
        img = Image.fromarray(mask.astype(np.uint16))
    atomic_write(Path(path), lambda tmp: img.save(tmp, format="PNG"))
    return Path(path)
