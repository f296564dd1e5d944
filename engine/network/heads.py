"""Head specifications and the modules built from them.

A head is a small MLP on pooled features: the trunk's output, or (``layer``) the output of any layer of
the network, pooled to a vector. Dense heads (``segment``, ``detect``: :data:`DENSE_KINDS`) read whole
feature maps of several layers instead (``layers``) through a feature pyramid
(:mod:`engine.network.dense_heads`). Its spec is plain data so it can live in the project recipe (JSON)
and in the ONNX metadata.
"""
from __future__ import annotations

import numbers
from dataclasses import asdict, dataclass, field
from typing import Any

from engine.errors import GraftError
from engine.units import finite_number, quoted

KINDS = ("single", "multi", "regression", "segment", "detect")
DENSE_KINDS = frozenset({"segment", "detect"})  # heads on feature maps, not on pooled vectors
KIND_TITLES = {"single": "single-label (softmax)", "multi": "multi-label (sigmoid)", "regression": "regression",
               "segment": "segmentation (mask per pixel)", "detect": "object boxes (detection)"}
DENSE_WIDTH = 64  # a dense head's decoder channels when ``hidden`` does not say
DETECT_GROUPS = 32  # torchvision's FCOSHead normalises its convs with GroupNorm(32, width)

# Heads live in an nn.ModuleDict, which cannot hold a key that is one of its own attributes. Written
# out rather than read from torch: this module must import without torch (ONNX predictions). Names
# starting with "_" are refused too. tests/engine/test_operations.py checks this list against torch.
RESERVED_NAMES = frozenset((
    "T_destination", "add_module", "apply", "bfloat16", "buffers", "call_super_init", "children", "clear",
    "compile", "cpu", "cuda", "double", "dump_patches", "eval", "extra_repr", "float", "forward", "get_buffer",
    "get_extra_state", "get_parameter", "get_submodule", "half", "ipu", "items", "keys", "load_state_dict",
    "modules", "mtia", "named_buffers", "named_children", "named_modules", "named_parameters", "parameters",
    "pop", "register_backward_hook", "register_buffer", "register_forward_hook", "register_forward_pre_hook",
    "register_full_backward_hook", "register_full_backward_pre_hook", "register_load_state_dict_post_hook",
    "register_load_state_dict_pre_hook", "register_module", "register_parameter",
    "register_state_dict_post_hook", "register_state_dict_pre_hook", "requires_grad_", "set_extra_state",
    "set_submodule", "share_memory", "state_dict", "to", "to_empty", "train", "training", "type", "update",
    "values", "xpu", "zero_grad"))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


@dataclass
class HeadSpec:
    """What a head predicts and how it is shaped.

    kind: "single" (softmax over ``outputs`` classes), "multi" (one sigmoid per label) or "regression".
    labels: class names (single), label names (multi) or target names (regression); when given, their
    count is the number of outputs. columns: the CSV columns the head reads (image-folder data: empty).

    target_mean / target_std (regression only; one number per output, std > 0): the targets' scale. The
    head's last Linear predicts standardised values ``z`` and the head outputs ``z * std + mean``, so
    its output is in the user's units while the loss is computed on the standardised scale
    (:mod:`engine.training.losses`). ``None`` until the trainer computes them from the training split.

    layer: the network layer whose output the head reads, pooled to a vector (``features.4``); None (the
    default) for the trunk's end, as before heads could sit anywhere.

    Dense heads (kind ``segment`` or ``detect``):

    * ``segment``: ``outputs`` classes per pixel (class 0 is usually the background); labels from PNG
      masks of class indices, pixels equal to ``ignore_index`` (default 255) left out of loss and metrics.
      ``dice`` > 0 adds that weight times the soft Dice loss to the per-pixel cross-entropy.
    * ``detect``: ``outputs`` object classes (no background class); labels are boxes. Predictions keep
      boxes scoring above ``score_threshold`` after class-wise NMS at IoU ``nms_iou``, at most
      ``max_detections`` per image.
    * ``layers``: the trunk layers whose feature maps the head's pyramid reads, finest first (empty: the
      defaults, :func:`engine.network.dense_heads.default_layers`, e.g. ``features.3``, ``features.5``,
      ``features.8`` of EfficientNet-Lite0 at strides 8, 16, 32). ``layer`` stays None.
    * ``hidden``: ``[channels]`` of the pyramid and decoder (default :data:`DENSE_WIDTH`).
    * ``columns``: the CSV column holding the mask path / the boxes (default ``mask`` / ``boxes``).
    """

    name: str
    kind: str = "single"
    outputs: int = 2
    labels: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    hidden: list[int] = field(default_factory=list)
    dropout: float = 0.0
    loss_weight: float = 1.0
    target_mean: list[float] | None = None
    target_std: list[float] | None = None
    layer: str | None = None
    layers: list[str] = field(default_factory=list)
    ignore_index: int = 255
    dice: float = 0.0
    score_threshold: float = 0.3
    nms_iou: float = 0.5
    max_detections: int = 100

    def __post_init__(self) -> None:
        if self.labels and isinstance(self.labels, (list, tuple)):
            self.outputs = len(self.labels)
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.name, str):
            raise GraftError(f"A head's name must be text, not {quoted(self.name)}.")
        if not self.name or not self.name.strip():
            raise GraftError("A head needs a name.")
        if not self.name.replace("_", "a").replace("-", "a").isalnum():
            raise GraftError(f"Head name {quoted(self.name)}: use letters, digits, '_' or '-' only.")
        if self.name in RESERVED_NAMES or self.name.startswith("_"):
            raise GraftError(f"Head name {quoted(self.name)} is reserved (PyTorch uses it for the heads' container): "
                             "choose another name.")
        if not _is_count(self.outputs):
            raise GraftError(f"Head {quoted(self.name)}: the number of outputs must be a whole number, not {quoted(self.outputs)}.")
        for what, values in (("labels", self.labels), ("columns", self.columns)):
            if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) for v in values):
                raise GraftError(f"Head {quoted(self.name)}: {what} must be a list of names.")
        if not isinstance(self.hidden, (list, tuple)) or not all(_is_count(h) for h in self.hidden):
            raise GraftError(f"Head {quoted(self.name)}: hidden layer sizes must be whole numbers.")
        if not _is_number(self.dropout) or not _is_number(self.loss_weight):
            raise GraftError(f"Head {quoted(self.name)}: dropout and loss weight must be numbers.")
        if self.kind not in KINDS:
            raise GraftError(f"Head {quoted(self.name)}: kind must be one of {', '.join(KINDS)}, not {quoted(self.kind)}.")
        if self.outputs < 1:
            raise GraftError(f"Head {quoted(self.name)} needs at least one output (got {self.outputs}).")
        if self.kind == "single" and self.outputs < 2:
            raise GraftError(f"Single-label head {quoted(self.name)} needs at least 2 classes (got {self.outputs}).")
        if len(set(self.labels)) != len(self.labels):
            raise GraftError(f"Head {quoted(self.name)} has duplicate label names.")
        if any(h < 1 for h in self.hidden):
            raise GraftError(f"Head {quoted(self.name)}: hidden layer sizes must be positive.")
        if not 0.0 <= self.dropout < 1.0:
            raise GraftError(f"Head {quoted(self.name)}: dropout must be in [0, 1).")
        if self.loss_weight < 0:
            raise GraftError(f"Head {quoted(self.name)}: loss weight must not be negative.")
        if self.layer is not None and (not isinstance(self.layer, str) or not self.layer.strip()
                                       or self.layer.startswith("@")):
            raise GraftError(f"Head {quoted(self.name)}: the layer it reads must be a layer's name "
                             f"(e.g. features.4), not {quoted(self.layer)}.")
        self._validate_dense()
        self._validate_target_stats()

    @property
    def dense(self) -> bool:
        """A head on feature maps (segment, detect) rather than on a pooled vector."""
        return self.kind in DENSE_KINDS

    def _validate_dense(self) -> None:
        if not isinstance(self.layers, (list, tuple)) or not all(isinstance(v, str) and v.strip() and "@" not in v
                                                                   for v in self.layers):
            raise GraftError(f"Head {quoted(self.name)}: layers must be a list of layer names (e.g. features.3).")
        self.layers = list(self.layers)
        if len(set(self.layers)) != len(self.layers):
            raise GraftError(f"Head {quoted(self.name)}: a layer is listed twice.")
        if not self.dense:
            if self.layers:
                raise GraftError(f"Head {quoted(self.name)}: only segment and detect heads read several layers; a "
                                 f"{self.kind} head reads one (layer).")
            return
        if self.layer is not None:
            raise GraftError(f"Head {quoted(self.name)}: a {self.kind} head reads feature maps of layers (layers), not "
                             "one pooled layer.")
        if len(self.hidden) > 1:
            raise GraftError(f"Head {quoted(self.name)}: a {self.kind} head has one width (its decoder's channels).")
        if self.kind == "detect" and self.width % DETECT_GROUPS:
            raise GraftError(f"Head {quoted(self.name)}: a detect head's width ({self.width}) must be a multiple of "
                             f"{DETECT_GROUPS} (its FCOS convs normalise {DETECT_GROUPS} groups of channels).")
        if self.kind == "segment" and self.outputs < 2:
            raise GraftError(f"Segmentation head {quoted(self.name)} needs at least 2 classes (e.g. background and "
                             f"object), got {self.outputs}.")
        if not _is_count(self.ignore_index) or not 0 <= self.ignore_index <= 65535:
            raise GraftError(f"Head {quoted(self.name)}: the ignore value must be a whole number 0-65535.")
        if self.kind == "segment" and self.ignore_index < self.outputs:
            raise GraftError(f"Head {quoted(self.name)}: the ignore value ({self.ignore_index}) is one of its class "
                             f"indices (0-{self.outputs - 1}); choose one above them (e.g. 255).")
        for what, value in (("Dice weight", self.dice), ("score threshold", self.score_threshold),
                            ("NMS IoU", self.nms_iou)):
            if not finite_number(value) or value < 0:
                raise GraftError(f"Head {quoted(self.name)}: the {what} must be a number of at least 0.")
        if not 0 <= self.score_threshold < 1 or not 0 < self.nms_iou <= 1:
            raise GraftError(f"Head {quoted(self.name)}: the score threshold must be in [0, 1) and the NMS IoU in (0, 1].")
        if not _is_count(self.max_detections) or self.max_detections < 1:
            raise GraftError(f"Head {quoted(self.name)}: the number of boxes kept per image must be at least 1.")

    @property
    def read_layers(self) -> list[str]:
        """The trunk layers this head reads (a pooled head: its layer, none for the trunk's end; a dense head:
        its layers)."""
        if self.dense:
            return list(self.layers)
        return [self.layer] if self.layer is not None else []

    @property
    def width(self) -> int:
        """A dense head's decoder channels (``hidden[0]``, default :data:`DENSE_WIDTH`)."""
        return int(self.hidden[0]) if self.hidden else DENSE_WIDTH

    def _validate_target_stats(self) -> None:
        stats = {"target mean": self.target_mean, "target std": self.target_std}
        if all(v is None for v in stats.values()):
            return
        if self.kind != "regression":
            raise GraftError(f"Head {quoted(self.name)}: only regression heads have a target mean and std.")
        if any(v is None for v in stats.values()):
            raise GraftError(f"Head {quoted(self.name)}: give both the target mean and the target std, or neither.")
        for what, values in stats.items():
            if not isinstance(values, (list, tuple)) or not all(_is_number(v) for v in values):
                raise GraftError(f"Head {quoted(self.name)}: the {what} must be a list of numbers.")
            if len(values) != self.outputs:
                raise GraftError(f"Head {quoted(self.name)}: the {what} needs one number per output "
                                 f"({self.outputs}), not {len(values)}.")
            if not all(finite_number(v) for v in values):
                raise GraftError(f"Head {quoted(self.name)}: the {what} must be finite.")
        if not all(v > 0 for v in self.target_std):
            raise GraftError(f"Head {quoted(self.name)}: the target std must be positive.")
        self.target_mean = [float(v) for v in self.target_mean]
        self.target_std = [float(v) for v in self.target_std]

    @property
    def has_target_stats(self) -> bool:
        return self.target_mean is not None and self.target_std is not None

    def set_target_stats(self, mean: list[float] | None, std: list[float] | None) -> None:
        """Set (or with ``None, None`` clear) the target statistics; invalid ones change nothing."""
        before = self.target_mean, self.target_std
        self.target_mean = None if mean is None else list(mean)
        self.target_std = None if std is None else list(std)
        try:
            self._validate_target_stats()
        except GraftError:
            self.target_mean, self.target_std = before
            raise

    @property
    def reads(self) -> str:
        """Where the head reads, for people: the layer's name, or "the trunk's end"; a dense head's layers
        (or "the default layers")."""
        if self.dense:
            return ", ".join(self.layers) if self.layers else "the default layers"
        return self.layer if self.layer is not None else "the trunk's end"

    @property
    def label_names(self) -> list[str]:
        """Names for every output, invented (``0``, ``1`` …) where the user gave none."""
        return list(self.labels) if self.labels else [str(i) for i in range(self.outputs)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HeadSpec":
        if not isinstance(data, dict):
            raise GraftError(f"A head must be described by an object, not {type(data).__name__}.")
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)
