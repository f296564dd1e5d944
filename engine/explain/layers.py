"""Which layers have a spatial output, which one the heads read last, and how to see one as C×H×W.

Heatmaps and activation grids need a layer whose output is a map over the image: a conv map (C×H×W),
a channels-last map (H×W×C, torchvision's Swin) or a token sequence (T×C) whose last g×g tokens are the
patch grid (ViT: a class token first). :func:`spatial_form` reads which from the output shape the layer
tree recorded; :func:`grid_probe` routes the layer's output, while a forward pass runs, through a probe
module in N×C×H×W form (and back into the layer's own layout, unchanged), so that Captum attributes to
the probe whatever the layer's layout is.
"""
from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from engine.errors import GraftError

MAX_EXTRA_TOKENS = 8  # tokens before the patch grid: a class token, distillation or register tokens


@dataclass(frozen=True)
class SpatialForm:
    """How a layer's output (batch aside) lies over the image: ``layout`` "nchw", "nhwc" or "tokens"
    (``extra_tokens`` of them before the ``height`` x ``width`` patch grid)."""

    layout: str
    channels: int
    height: int
    width: int
    extra_tokens: int = 0

    def describe(self) -> str:
        where = f"{self.channels} channels on a {self.height}×{self.width} grid"
        if self.layout == "tokens":
            where += " of image tokens" + (f" (after {self.extra_tokens} other)" if self.extra_tokens else "")
        return where


def spatial_form(shape: tuple[int, ...] | None) -> SpatialForm | None:
    """The spatial form of an output of ``shape`` (without the batch), or None (a vector, a 1×1 map …).
    The input is square, so a conv map has H == W: (C, H, H) is NCHW, (H, H, C) channels-last."""
    if not shape:
        return None
    if len(shape) == 3:
        a, b, c = shape
        if b == c and b >= 2:
            return SpatialForm("nchw", a, b, c)
        if a == b and a >= 2:
            return SpatialForm("nhwc", c, a, b)
        return None
    if len(shape) == 2:
        tokens, channels = shape
        for extra in range(min(MAX_EXTRA_TOKENS, tokens) + 1):
            side = math.isqrt(tokens - extra)
            if side >= 2 and side * side == tokens - extra:
                return SpatialForm("tokens", channels, side, side, extra)
    return None


def shape_text(shape: tuple[int, ...] | None) -> str:
    return "×".join(str(v) for v in shape) if shape else "nothing"


def check_hookable(session: Any) -> nn.Module:
    """The network's body, or GraftError when it cannot be looked into (TorchScript has no layers to hook)."""
    body = session.model.trunk.body
    if isinstance(body, torch.jit.ScriptModule):
        raise GraftError("This network is TorchScript: its layers cannot be hooked, so Graft cannot draw heatmaps "
                         "or show activations for it. Open the original network (weights file or architecture) "
                         "instead.")
    return body


def _fresh(session: Any) -> None:
    if getattr(session, "dirty", False):
        session.probe_order()


def spatial_layers(session: Any) -> list[tuple[str, SpatialForm]]:
    """Every layer that runs when the model predicts and has a spatial output, in the order they start."""
    check_hookable(session)
    _fresh(session)
    shapes = session.tree.shapes
    found = []
    for path in session.tree.order:
        form = spatial_form(shapes.get(path))
        if form is not None:
            found.append((path, form))
    return found


def resolve_layer(session: Any, layer: str | None) -> tuple[str, SpatialForm]:
    """``layer`` (or, when None, :func:`default_layer`) with its spatial form; GraftError naming what is
    wrong with a layer that does not exist, does not run, or has no spatial output."""
    body = check_hookable(session)
    if layer is None or layer == "":
        layer = default_layer(session)
    _fresh(session)
    modules = dict(body.named_modules())
    if layer not in modules or not layer:
        raise GraftError(f"The network has no layer {layer!r} ('main.py layers' lists them).")
    shape = session.tree.shapes.get(layer)
    if shape is None:
        cut = session.model.trunk.cut_at
        why = f"the network is cut at {cut}" if cut else "the forward pass never calls it"
        raise GraftError(f"Layer {layer!r} does not run when the model predicts ({why}).")
    form = spatial_form(shape)
    if form is None:
        try:
            hint = f", such as {default_layer(session)}"
        except GraftError:
            hint = ""
        raise GraftError(f"Layer {layer!r} has no spatial output (it gives {shape_text(shape)}, not a map over the "
                         f"image): choose a layer before the pooling{hint}.")
    return layer, form


def to_grid(output: torch.Tensor, form: SpatialForm) -> torch.Tensor:
    """A layer's output (N, …) in N×C×H×W form."""
    if form.layout == "nchw":
        return output
    if form.layout == "nhwc":
        return output.permute(0, 3, 1, 2)
    n = output.shape[0]
    return output[:, form.extra_tokens:].transpose(1, 2).reshape(n, form.channels, form.height, form.width)


def from_grid(grid: torch.Tensor, output: torch.Tensor, form: SpatialForm) -> torch.Tensor:
    """:func:`to_grid` undone: ``grid`` back in the layer's layout (``output`` gives the other tokens)."""
    if form.layout == "nchw":
        return grid
    if form.layout == "nhwc":
        return grid.permute(0, 2, 3, 1)
    return torch.cat([output[:, :form.extra_tokens], grid.flatten(2).transpose(1, 2)], dim=1)


class GridProbe(nn.Module):
    """An identity in N×C×H×W form between a layer and the rest of the network: what Captum hooks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@contextmanager
def grid_probe(body: nn.Module, layer: str, form: SpatialForm) -> Iterator[GridProbe]:
    """While inside, ``layer``'s output passes through the yielded probe as N×C×H×W, then on unchanged.
    The hook goes first (before a cut's), so a cut at ``layer`` still ends the trunk there."""
    module = body.get_submodule(layer)
    probe = GridProbe()

    def hook(_module: nn.Module, _args: Any, out: Any) -> Any:
        first = out[0] if isinstance(out, (tuple, list)) else out
        if not isinstance(first, torch.Tensor) or spatial_form(tuple(first.shape[1:])) != form:
            return None  # another call of a reused module, with another shape: left alone
        rebuilt = from_grid(probe(to_grid(first, form)), first, form)
        if isinstance(out, tuple):
            return (rebuilt, *out[1:])
        if isinstance(out, list):
            return [rebuilt, *out[1:]]
        return rebuilt

    handle = module.register_forward_hook(hook, prepend=True)
    try:
        yield probe
    finally:
        handle.remove()


# The default layer of a model, for as long as its structure (what runs, where it is cut) is the same.
_DEFAULTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def default_layer(session: Any) -> str:
    """The last spatial layer the heads read: of the layers whose output is a map over the image, the one
    to finish last in the forward pass whose grid still reaches the heads' outputs.

    One forward and backward pass on a seeded random image tells: after a CNN's last map comes the
    pooling; in a ViT the last block's patch tokens never reach the class token the heads read, so its
    attention input is the last that does. Remembered while the model's structure stays the same."""
    body = check_hookable(session)
    _fresh(session)
    model = session.model
    key = (tuple(session.tree.order), model.trunk.cut_at, tuple(model.heads.keys()), model.trunk.taps)
    known = _DEFAULTS.get(model)
    if known is not None and known[0] == key:
        return known[1]
    names = {m: n for n, m in body.named_modules() if n}
    finished: list[tuple[str, SpatialForm, torch.Tensor]] = []

    def record(module: nn.Module, _args: Any, out: Any) -> None:
        first = out[0] if isinstance(out, (tuple, list)) and out else out
        if isinstance(first, torch.Tensor) and first.requires_grad:
            form = spatial_form(tuple(first.shape[1:]))
            if form is not None:
                finished.append((names[module], form, first))

    handles = [m.register_forward_hook(record, prepend=True) for m in names]
    was_training = model.training
    device = next(iter(model.parameters()), torch.zeros(())).device
    size = model.input_spec.size
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_(True)
    try:
        model.eval()
        with torch.enable_grad():
            outputs = model(x)
            score = sum(o.float().sum() for o in outputs.values())
            tensors = [t for _, _, t in finished]
            grads = torch.autograd.grad(score, tensors, allow_unused=True) if tensors else []
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    chosen = None
    for (name, form, _), grad in reversed(list(zip(finished, grads))):
        if grad is not None and bool(to_grid(grad, form).abs().amax() > 0):
            chosen = name
            break
    if chosen is None:
        raise GraftError("No layer of this network gives the heads a map over the image (a C×H×W map or a grid "
                         "of image tokens): there is nothing to draw a heatmap on.")
    _DEFAULTS[model] = (key, chosen)
    return chosen
