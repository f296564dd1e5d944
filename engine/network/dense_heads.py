"""Dense heads: a segmentation decoder and a box detector on feature maps of several trunk layers.

Both read the maps of ``HeadSpec.layers`` (finest first) through a torchvision
:class:`~torchvision.ops.FeaturePyramidNetwork` of ``HeadSpec.width`` channels:

* :class:`SegmentHead` sums the pyramid's levels at the finest one's resolution (as Panoptic FPN's semantic
  branch does), a 3×3 conv and a 1×1 conv give class logits, upsampled bilinearly to the input:
  ``(N, classes, H, W)``.
* :class:`DetectHead` is torchvision's FCOS head (:class:`~torchvision.models.detection.fcos.FCOSHead`, two
  convs per branch) on every level, with one point per map cell (torchvision's
  :class:`~torchvision.models.detection.anchor_utils.AnchorGenerator`, one square "anchor" of the level's
  stride per cell). Its forward returns the raw outputs side by side, ``(N, P, classes + 5)``: class logits,
  the box regression (FCOS's normalised left/top/right/bottom distances) and the centre-ness logit, P being
  the cells of all levels. :meth:`DetectHead.decode` turns them into ``(N, P, 4 + classes)``: boxes
  ``x1, y1, x2, y2`` in input pixels (clipped to the image) and per-class scores
  ``sqrt(sigmoid(class) * sigmoid(centre-ness))`` as torchvision's FCOS scores them. That decoded tensor is
  what exports and predictions carry; choosing the boxes (score threshold, class-wise NMS, at most
  ``max_detections``) is :func:`select_boxes` (PyTorch, torchvision's ``batched_nms``) or, without torch,
  :func:`engine.export.metadata.nms_boxes` (onnxruntime's NonMaxSuppression): the same rule.

The loss of a detect head is torchvision's FCOS loss (focal classification, GIoU boxes, centre-ness BCE;
matching with centre sampling) on the images that have box labels: :meth:`DetectHead.loss`.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import GraftError
from engine.network.heads import HeadSpec

DEFAULT_STRIDES = (8, 16, 32)  # the pyramid levels a dense head reads when no layers are named
MAX_BOXES = 100  # box labels per image (the padded target's rows): more is refused when the data loads


def map_shape(shape: tuple[int, ...] | None) -> tuple[int, int, int] | None:
    """``(channels, height, width)`` of a layer output that is a C×H×W map (one image), else None."""
    if shape is None or len(shape) != 3 or min(shape) < 1:
        return None
    return int(shape[0]), int(shape[1]), int(shape[2])


def default_layers(tree: Any, input_size: int, strides: Sequence[int] = DEFAULT_STRIDES) -> list[str]:
    """The layers a dense head reads when none are named: the trunk's blocks (the top-level layers with
    weights; while fewer than three give a feature map, the biggest one's children, as
    ``features`` -> ``features.0`` … ``features.8``), and of those the last to run at each of ``strides``
    (input size / map size). EfficientNet-Lite0 at 224: ``features.3`` (28×28), ``features.5`` (14×14),
    ``features.8`` (7×7); a ResNet: ``layer2``, ``layer3``, ``layer4``. GraftError when no block gives a map
    at any of those strides (a vision transformer's tokens): name the layers then."""
    order = {path: i for i, path in enumerate(getattr(tree, "order", []) or [])}
    nodes = [n for n in tree.root.children if n.kind == "layer"]

    def stride(node: Any) -> int | None:
        shape = map_shape(tree.shapes.get(node.path))
        if shape is None or shape[1] != shape[2] or input_size % shape[1]:
            return None
        return input_size // shape[1]

    while True:
        maps = [n for n in nodes if n.params > 0 and n.path in order and stride(n) is not None]
        if len({stride(n) for n in maps}) >= 3 or not nodes:
            break
        biggest = max(nodes, key=lambda n: n.params)
        if not biggest.children:
            break
        nodes = [n for n in biggest.children if n.kind == "layer"]
    chosen: list[str] = []
    for s in strides:
        at = [n for n in maps if stride(n) == s]
        if at:
            chosen.append(max(at, key=lambda n: order[n.path]).path)
    if not chosen:
        raise GraftError("No block of this trunk gives a feature map at stride 8, 16 or 32, so a dense head has "
                         "no default layers: name them (e.g. @features.3,features.5,features.8).")
    return chosen


def _pyramid(channels: Sequence[int], width: int):
    from torchvision.ops import FeaturePyramidNetwork

    return FeaturePyramidNetwork(list(channels), width)


class DenseHead(nn.Module):
    """What both dense heads share: the layers they read and the pyramid over them. ``forward(maps, size)``
    takes the layers' maps in :attr:`layers` order and the input's (height, width)."""

    def __init__(self, layers: Sequence[str], channels: Sequence[int], width: int) -> None:
        super().__init__()
        if len(layers) != len(channels) or not layers:
            raise GraftError("A dense head needs one channel count per layer it reads.")
        self.layers = list(layers)
        self.in_channels = [int(c) for c in channels]
        self.fpn = _pyramid(self.in_channels, width)

    def pyramid(self, maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        levels = self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))
        return list(levels.values())


class SegmentHead(DenseHead):
    """Per-pixel class logits ``(N, classes, H, W)`` at the input's size (see the module docstring)."""

    def __init__(self, layers: Sequence[str], channels: Sequence[int], classes: int, width: int) -> None:
        super().__init__(layers, channels, width)
        self.decoder = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                     nn.ReLU(inplace=True), nn.Conv2d(width, classes, 1))

    def forward(self, maps: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        levels = self.pyramid(maps)
        finest = max(levels, key=lambda t: t.shape[-1] * t.shape[-2])
        fused = finest
        for level in levels:
            if level is not finest:
                fused = fused + F.interpolate(level, size=finest.shape[-2:], mode="bilinear", align_corners=False)
        logits = self.decoder(fused)
        return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


class DetectHead(DenseHead):
    """FCOS on the pyramid: raw ``(N, P, classes + 5)`` from forward, :meth:`decode`, :meth:`loss`."""

    CENTER_SAMPLING_RADIUS = 1.5  # torchvision FCOS's default (used by its matching, see loss)

    def __init__(self, layers: Sequence[str], channels: Sequence[int], classes: int, width: int) -> None:
        super().__init__(layers, channels, width)
        from torchvision.models.detection import _utils as det_utils
        from torchvision.models.detection.fcos import FCOSHead

        self.classes = int(classes)
        self.head = FCOSHead(width, num_anchors=1, num_classes=self.classes, num_convs=2)
        self.box_coder = det_utils.BoxLinearCoder(normalize_by_size=True)
        self.center_sampling_radius = self.CENTER_SAMPLING_RADIUS
        self._anchors: dict[Any, tuple[torch.Tensor, list[int]]] = {}
        self._last_grid: Any = None

    # -- forward -------------------------------------------------------------------------------------------
    def forward(self, maps: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        levels = self.pyramid(maps)
        out = self.head(levels)
        self._last_grid = (tuple(tuple(t.shape[-2:]) for t in levels), tuple(size))
        return torch.cat([out["cls_logits"], out["bbox_regression"], out["bbox_ctrness"]], dim=2)

    def anchors(self, grids: Sequence[tuple[int, int]], size: tuple[int, int], device: torch.device,
                dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, list[int]]:
        """``((P, 4) anchors, points per level)`` for maps of these sizes on an input of ``size``: one square
        of the level's stride per cell, from torchvision's AnchorGenerator (cached: constants)."""
        key = (tuple(tuple(int(v) for v in g) for g in grids), tuple(int(v) for v in size), str(device), dtype)
        found = self._anchors.get(key)
        if found is None:
            from torchvision.models.detection.anchor_utils import AnchorGenerator
            from torchvision.models.detection.image_list import ImageList

            strides = [int(size[0]) // int(g[0]) for g in grids]
            generator = AnchorGenerator(tuple((s,) for s in strides), tuple((1.0,) for _ in strides))
            image = torch.zeros(1, 1, *key[1], device=device, dtype=dtype)
            fakes = [torch.zeros(1, 1, *g, device=device, dtype=dtype) for g in key[0]]
            anchors = generator(ImageList(image, [key[1]]), fakes)[0]
            found = self._anchors[key] = (anchors, [g[0] * g[1] for g in key[0]])
        return found

    def grid(self, size: tuple[int, int]) -> list[tuple[int, int]]:
        """The pyramid's map sizes for an input of ``size`` (from the last forward pass)."""
        last = self._last_grid
        if last is None or last[1] != tuple(size):
            raise RuntimeError("the detect head has not run on an input of this size")
        return list(last[0])

    def split(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        k = self.classes
        return {"cls_logits": raw[..., :k], "bbox_regression": raw[..., k:k + 4], "bbox_ctrness": raw[..., k + 4:k + 5]}

    # -- decoding ------------------------------------------------------------------------------------------
    def decode(self, raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """Raw outputs -> ``(N, P, 4 + classes)``: boxes in input pixels (clipped) and per-class scores."""
        parts = self.split(raw)
        anchors, _ = self.anchors(self.grid(size), size, raw.device, raw.dtype)
        boxes = self.box_coder.decode(parts["bbox_regression"], anchors.unsqueeze(0).expand(raw.shape[0], -1, -1))
        h, w = float(size[0]), float(size[1])
        limit = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
        boxes = torch.minimum(boxes.clamp(min=0), limit)
        scores = torch.sqrt(torch.sigmoid(parts["cls_logits"]) * torch.sigmoid(parts["bbox_ctrness"]))
        return torch.cat([boxes, scores], dim=2)

    # -- loss ----------------------------------------------------------------------------------------------
    def loss(self, raw: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, labelled images)`` of a batch: torchvision's FCOS matching and loss (classification +
        box GIoU + centre-ness, each over the batch's matched points) on the images with box labels.
        ``targets``: ``(N, MAX_BOXES, 5)`` rows ``x1, y1, x2, y2, class`` (class -1: padding); an image whose
        rows are all NaN has no box label and is left out (it adds nothing, no gradient). The points are those
        of the forward pass that gave ``raw``."""
        from torchvision.models.detection.fcos import FCOS

        raw = raw.float()
        labelled = ~torch.isnan(targets[:, 0, 0])
        n = labelled.sum()
        if not bool(n):
            return raw.sum() * 0.0, n.to(raw.dtype)
        index = labelled.nonzero().flatten()
        raw, targets = raw[index], targets[index].float()
        grids, size = self._last_grid
        anchors, per_level = self.anchors(grids, size, raw.device, raw.dtype)
        listed = []
        for rows in targets:
            keep = rows[:, 4] >= 0
            listed.append({"boxes": rows[keep, :4], "labels": rows[keep, 4].long()})
        losses = FCOS.compute_loss(self, listed, self.split(raw), [anchors] * len(listed), per_level)
        return sum(losses.values()), torch.ones((), device=raw.device)


def select_boxes(decoded: torch.Tensor, spec: HeadSpec, score_threshold: float | None = None
                 ) -> list[dict[str, torch.Tensor]]:
    """Each image's boxes from decoded ``(N, P, 4 + classes)``: every (point, class) scoring above the
    threshold (default the spec's), class-wise NMS at ``spec.nms_iou`` (torchvision's batched_nms), the
    ``spec.max_detections`` best. ``{"boxes": (M, 4), "scores": (M,), "labels": (M,) int64}``, best first."""
    from torchvision.ops import batched_nms

    threshold = spec.score_threshold if score_threshold is None else score_threshold
    out = []
    for row in decoded.detach().float():
        boxes, scores = row[:, :4], row[:, 4:]
        point, label = (scores > threshold).nonzero(as_tuple=True)
        chosen_scores = scores[point, label]
        keep = batched_nms(boxes[point], chosen_scores, label, spec.nms_iou)[:spec.max_detections]
        out.append({"boxes": boxes[point][keep], "scores": chosen_scores[keep], "labels": label[keep]})
    return out


def build_dense_head(spec: HeadSpec, channels: Sequence[int]) -> DenseHead:
    """A randomly initialised dense head for ``spec`` reading ``spec.layers`` with these channel counts."""
    if not spec.layers:
        raise GraftError(f"Head {spec.name!r}: a {spec.kind} head needs the layers it reads.")
    if spec.kind == "segment":
        return SegmentHead(spec.layers, channels, spec.outputs, spec.width)
    if spec.kind == "detect":
        return DetectHead(spec.layers, channels, spec.outputs, spec.width)
    raise GraftError(f"Head {spec.name!r} is not a dense head ({spec.kind}).")


def decoded_outputs(model: nn.Module, outputs: dict[str, torch.Tensor], size: tuple[int, int]) -> dict[str, torch.Tensor]:
    """The model's outputs as exports and predictions carry them: a detect head's raw outputs decoded
    (:meth:`DetectHead.decode`), everything else as it is."""
    heads = getattr(model, "heads", {})
    return {name: heads[name].decode(t, size) if name in heads and isinstance(heads[name], DetectHead) else t
            for name, t in outputs.items()}


class DecodedModel(nn.Module):
    """A model whose detect heads' outputs come decoded (:func:`decoded_outputs`): what an ONNX export holds.
    It shares the model's trunk and heads (registered first, so layer names stay ``trunk.…`` / ``heads.…``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.trunk, self.heads, self.model = model.trunk, model.heads, model
        self.train(model.training)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return decoded_outputs(self.model, self.model(x), tuple(x.shape[-2:]))


def exported_form(model: nn.Module) -> nn.Module:
    """The model as an export carries it: :class:`DecodedModel` when it has a detect head, else itself."""
    heads = getattr(model, "heads", None)
    if heads is not None and any(isinstance(h, DetectHead) for h in heads.values()):
        return DecodedModel(model)
    return model
