"""The input: how many channels the network reads (the first convolution's kernels adapted) and its size."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from engine.errors import GraftError
from engine.network.preprocess import check_channels
from engine.surgery.operations.operation import Operation, SurgeryState, _ReattachesHeads


MAX_INPUT_SIZE = 2048


def first_conv(s: SurgeryState) -> tuple[str, nn.Conv2d]:
    """The convolution that reads the image: the first ``nn.Conv2d`` to run in the forward pass (the
    session's dry run gives the order), which must take as many channels as the input has. Works for
    torchvision's CNNs, EfficientNet-Lite's stem and a ViT's ``conv_proj`` alike."""
    body = s.model.trunk.body
    if isinstance(body, torch.jit.ScriptModule):
        raise GraftError("This is a TorchScript model: its input layer cannot be changed.")
    order = s.tree.order if not s.dirty else s.probe_order()
    modules = dict(body.named_modules())
    path = next((p for p in order if isinstance(modules.get(p), nn.Conv2d)), None)
    if path is None:
        raise GraftError("This network has no convolution that reads the image, so its input channels "
                         "cannot be adapted.")
    conv = modules[path]
    channels = s.model.input_spec.channels
    if conv.in_channels != channels:
        raise GraftError(f"The network's first convolution ({path}) reads {conv.in_channels} channels, not the "
                         f"input's {channels}: it is not the layer that reads the image, so the input channels "
                         "cannot be adapted.")
    if conv.groups != 1:
        raise GraftError(f"The network's first convolution ({path}) is grouped ({conv.groups} groups): its "
                         "kernels cannot be adapted to another number of input channels.")
    return path, conv


def adapt_kernels(rgb: torch.Tensor, channels: int) -> torch.Tensor:
    """A first convolution's weight for ``channels`` inputs from its RGB one (out, 3, kh, kw): one channel
    gets the sum of the RGB kernels (a grey image then gives what the RGB image of the same grey gave);
    extra channels start as the mean of the RGB kernels, after the RGB kernels themselves."""
    rgb = rgb.detach()
    if channels == 1:
        return rgb.sum(dim=1, keepdim=True)
    if channels == 3:
        return rgb.clone()
    mean = rgb.mean(dim=1, keepdim=True)
    return torch.cat([rgb, mean.expand(-1, channels - 3, -1, -1)], dim=1).contiguous()


class SetInputChannels(Operation):
    """Change how many channels the network reads: 1 (greyscale), 3 (RGB again) or 4 and more (RGB plus
    infrared, depth …). The first convolution's kernels are adapted from its pretrained RGB ones (see
    :func:`adapt_kernels`; always from the original RGB kernels, also after an earlier change) and the
    input spec follows (:meth:`~engine.network.preprocess.InputSpec.with_channels`), so the data pipeline
    reads greyscale or all the file's bands. Undo puts back the convolution's own weight tensor."""

    kind = "input_channels"
    sets_input = True

    def __init__(self, channels: int) -> None:
        problem = check_channels(channels)
        if problem:
            raise GraftError(problem[0].upper() + problem[1:] + ".")
        self.channels = channels
        self.layer: str | None = None
        self.before: tuple[nn.Parameter, int, Any] | None = None  # the conv's weight, in_channels; the spec
        self.weight: nn.Parameter | None = None  # the adapted weight (a redo brings back what trained)

    def _origin(self, s: SurgeryState, conv: nn.Conv2d) -> tuple[torch.Tensor, Any]:
        """The RGB kernels and RGB input spec this network had before any channel change."""
        for op in s.applied:
            if isinstance(op, SetInputChannels) and op.before is not None:
                return op.before[0], op.before[2]
        return conv.weight, s.model.input_spec

    def apply(self, s: SurgeryState) -> None:
        spec = s.model.input_spec
        if self.channels == spec.channels:
            raise GraftError(f"The network already reads {self.channels} input channel"
                             f"{'' if self.channels == 1 else 's'}.")
        path, conv = first_conv(s)
        rgb, rgb_spec = self._origin(s, conv)
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise GraftError(f"The network's first convolution ({path}) has no RGB kernels to adapt.")
        self.layer = path
        self.before = (conv.weight, conv.in_channels, spec)
        if self.weight is None or tuple(self.weight.shape) != (rgb.shape[0], self.channels, *rgb.shape[2:]):
            self.weight = nn.Parameter(adapt_kernels(rgb, self.channels))
        self.weight.requires_grad_(conv.weight.requires_grad)
        conv.weight = self.weight
        conv.in_channels = self.channels
        s.model.input_spec = spec.with_channels(self.channels, rgb_spec.mean, rgb_spec.std)
        s.mark_dirty()

    def undo(self, s: SurgeryState) -> None:
        weight, in_channels, spec = self.before
        conv = s.model.trunk.body.get_submodule(self.layer)
        conv.weight = weight
        conv.in_channels = in_channels
        s.model.input_spec = spec
        s.mark_dirty()

    def lost_on_reopen(self, original_weights: bool) -> bool:
        return not original_weights  # undo brings back the source's RGB kernels

    @property
    def text(self) -> str:
        what = {1: "1 (greyscale)", 3: "3 (RGB)"}.get(self.channels, f"{self.channels} (RGB + {self.channels - 3})")
        return f"Input channels: {what}"

    def args(self) -> dict[str, Any]:
        return {"channels": self.channels}


def _stride(before: dict[str, tuple[int, ...]], after: dict[str, tuple[int, ...]],
            size: int) -> tuple[float, str, int] | None:
    """How many times the network shrinks an input of ``size`` (whose layer shapes are ``before``): the
    largest ``size / side`` over the C×H×W maps that follow the input size (their side differs at the
    other size, ``after``); pooled maps of a fixed size (global pooling, squeeze-excitation) do not.
    Returns (stride, layer, side) or None when no map follows the size."""
    found = None
    for path, shape in before.items():
        other = after.get(path)
        if len(shape) != 3 or other is None or len(other) != 3 or other[1:] == shape[1:]:
            continue
        side = min(shape[1:])
        if found is None or size / side > found[0]:
            found = (size / side, path, side)
    return found


class SetInputSize(Operation, _ReattachesHeads):
    """Change the input size (the centre crop, e.g. 224 → 320 for small details). The resize before the
    crop keeps its ratio to the crop unless given. Refused when the size is smaller than the network
    shrinks its input by (its deepest maps would be less than a pixel) or when the network cannot run at
    it (a ViT's fixed patch grid): the dry run then undoes it."""

    kind = "input_size"
    touches_heads = True
    sets_input = True

    def __init__(self, size: int, resize: int | None = None) -> None:
        for name, value in (("size", size), ("resize", resize)):
            if value is None and name == "resize":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_INPUT_SIZE * 2:
                raise GraftError(f"The input {name} must be a whole number of pixels from 1 to "
                                 f"{MAX_INPUT_SIZE if name == 'size' else MAX_INPUT_SIZE * 2}, not {value!r}.")
        if size > MAX_INPUT_SIZE:
            raise GraftError(f"The input size must be a whole number of pixels from 1 to {MAX_INPUT_SIZE}, "
                             f"not {size!r}.")
        self.size, self.resize = size, resize
        self.before: Any = None

    def apply(self, s: SurgeryState) -> None:
        spec = s.model.input_spec
        resize = self.resize if self.resize is not None else max(1, round(self.size * spec.resize / spec.size))
        if (self.size, resize) == (spec.size, spec.resize):
            raise GraftError(f"The input is already {self.size}×{self.size} (resized to {resize}).")
        if s.dirty:
            s.probe_order()
        before = dict(s.tree.shapes) if s.tree.shape_error is None else {}
        self.before = spec
        s.model.input_spec = replace(spec, size=self.size, resize=resize)
        s.mark_dirty()
        if before and self.size < spec.size:  # one dry run at the new size: which maps follow the size
            s.probe_order()
            stride = _stride(before, s.tree.shapes, spec.size) if s.tree.shape_error is None else None
            if stride is not None and self.size < stride[0]:
                factor, path, side = stride
                s.model.input_spec = spec
                s.probe_order()
                need = math.ceil(factor)
                raise GraftError(f"An input of {self.size}×{self.size} is too small for this network: it "
                                 f"shrinks its input {factor:g}× (to {side}×{side} at {path} for "
                                 f"{spec.size}×{spec.size}), so it needs at least {need}×{need} pixels.")
        self._reattach(s)

    def undo(self, s: SurgeryState) -> None:
        s.model.input_spec = self.before
        s.mark_dirty()
        self._restore_heads(s)

    def lost_on_reopen(self, original_weights: bool) -> bool:
        return bool(getattr(self, "_old_heads", None))  # heads it rebuilt for a new feature size

    @property
    def text(self) -> str:
        return f"Input size: {self.size}×{self.size}"

    def args(self) -> dict[str, Any]:
        return {"size": self.size, "resize": self.resize}
