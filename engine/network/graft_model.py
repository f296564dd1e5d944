"""The network being operated on: a pretrained trunk that yields pooled features, plus named heads.

Heads read the trunk's end or any layer (a multi-exit network): the trunk returns the pooled output of
every layer a head reads, side by side in one (N, F1 + F2 + …) tensor, so that whatever runs the trunk
(training on cached features, a trunk exported on its own) handles one plain tensor, and
:meth:`GraftModel.forward_heads` hands each head its slice. When no head reads the end, the forward pass
stops as soon as the last layer a head reads has produced its output: later layers are never computed.
"""
from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from engine.network.heads import HeadSpec
from engine.network.preprocess import InputSpec

END = None  # the tap of heads that read the trunk's end


class _CutReached(Exception):
    """Raised by the cut hook to stop the trunk's forward right after the cut layer."""


def pool_features(out: Any) -> torch.Tensor:
    """Reduce a layer's output to (N, F): global-average conv maps, average tokens, keep vectors."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    elif not isinstance(out, torch.Tensor) and hasattr(out, "logits"):
        out = out.logits
    if out.dim() == 4:
        return out.mean(dim=(2, 3))
    if out.dim() == 3:
        return out.mean(dim=1)
    if out.dim() > 4:
        return out.flatten(1)
    return out


def first_tensor(out: Any) -> torch.Tensor | None:
    """A layer's output tensor: the output itself, or the first item of a tuple or list (as the layer
    tree records its shape)."""
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    return out if isinstance(out, torch.Tensor) else None


def _channels_last(shape: tuple[int, ...]) -> bool:
    """A map of one image laid out H×W×C (torchvision's Swin) rather than C×H×W: the input is square, so
    a C×H×W map has H == W, and an H×W×C one has its first two sides equal instead."""
    return len(shape) == 3 and shape[1] != shape[2] and shape[0] == shape[1]


def pooled_size(shape: tuple[int, ...] | None) -> int | None:
    """How many features a head at a layer with this output shape (one image: C×H×W or H×W×C, tokens×D
    or F) reads; None when the output cannot be pooled to a vector (no tensor, a scalar, a 4-D volume,
    empty)."""
    if shape is None or not 1 <= len(shape) <= 3:
        return None
    if len(shape) == 3:
        size = shape[2] if _channels_last(shape) else shape[0]
    else:
        size = shape[0] if len(shape) == 1 else shape[1]
    return int(size) if size > 0 else None


def pool_layer(out: Any, class_token_length: int | None = None) -> torch.Tensor:
    """A layer's output pooled to (N, F) for a head reading it: a C×H×W (or H×W×C) map averaged over
    space; a token sequence by its class token (token 0) when it is the sequence that carries one
    (``class_token_length`` tokens long), else the mean of its tokens; a vector as it is."""
    t = first_tensor(out)
    if t is None:
        raise RuntimeError("the layer gave no tensor")
    if t.dim() == 4:
        return t.mean(dim=(1, 2)) if _channels_last(tuple(t.shape[1:])) else t.mean(dim=(2, 3))
    if t.dim() == 3:
        if class_token_length is not None and t.shape[1] == class_token_length:
            return t[:, 0]
        return t.mean(dim=1)
    if t.dim() == 2:
        return t
    raise RuntimeError(f"a layer output of shape {tuple(t.shape)} cannot be pooled to a vector")


def class_token_length(body: nn.Module) -> int | None:
    """The length of the token sequences that carry a class token at position 0 (patches + prefix
    tokens), for the vision transformers that have one (torchvision's ``class_token``, timm's
    ``cls_token``); None for networks without one (their token sequences are averaged)."""
    seq_length = getattr(body, "seq_length", None)
    if isinstance(getattr(body, "class_token", None), torch.Tensor) and isinstance(seq_length, int):
        return seq_length  # torchvision VisionTransformer
    if isinstance(getattr(body, "cls_token", None), torch.Tensor):  # timm VisionTransformer and relatives
        patches = getattr(getattr(body, "patch_embed", None), "num_patches", None)
        prefix = getattr(body, "num_prefix_tokens", 1)
        if isinstance(patches, int) and isinstance(prefix, int):
            return patches + prefix
    return None


class Trunk(nn.Module):
    """The loaded network as surgery left it. Returns (N, F) features.

    A cut at layer X stops the forward pass as soon as X has produced its output (a forward hook raises),
    so it works for any architecture without rewriting its forward code; the layers after X are
    replaced by ``nn.Identity`` so that their weights are gone too.

    ``taps`` (set by :class:`GraftModel` from its heads): what the trunk returns, in order — ``END``
    for the trunk's end (the default, and all there is while every head reads the end), or a layer's
    path for its pooled output (:func:`pool_layer`); several taps come side by side in one tensor.
    Without ``END`` among them the forward stops once every tapped layer has given its output.
    :meth:`run_all` runs everything and returns the end's features (the layer tree's dry run).
    """

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.cut_at: str | None = None
        self._hook = None
        self._captured: Any = None
        self.taps: tuple[str | None, ...] = (END,)
        self.map_taps: tuple[str, ...] = ()  # layers whose whole output maps dense heads read
        self._tap_hooks: list[Any] = []
        self._taken: dict[str, Any] | None = None  # the tapped outputs of the forward pass under way
        self._stop_when_taken = False

    def set_cut(self, layer: str | None) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        self.cut_at = layer
        if layer is not None:
            self._hook = self.body.get_submodule(layer).register_forward_hook(self._capture)

    def _capture(self, module: nn.Module, args: Any, output: Any) -> None:
        self._captured = output
        raise _CutReached

    # -- taps -------------------------------------------------------------------------------------
    def set_taps(self, taps: tuple[str | None, ...] | list[str | None],
                 maps: tuple[str, ...] | list[str] = ()) -> None:
        """Return these taps from now on (see the class docstring); the same taps again change nothing.
        ``maps``: layers whose whole outputs :meth:`forward_maps` also returns (dense heads). With maps and
        no taps at all, the trunk returns no pooled features (``taps`` is empty)."""
        maps = tuple(dict.fromkeys(maps))
        taps = tuple(dict.fromkeys(taps)) or (() if maps else (END,))
        if taps == self.taps and maps == self.map_taps:
            return
        for handle in self._tap_hooks:
            handle.remove()
        self._tap_hooks = []
        self.taps, self.map_taps = taps, maps
        for layer in dict.fromkeys([*taps, *maps]):
            if layer is not END:  # before the cut's hook: a head may read the cut layer itself
                module = self.body.get_submodule(layer)
                self._tap_hooks.append(module.register_forward_hook(functools.partial(self._take, layer),
                                                                    prepend=True))

    @property
    def layer_taps(self) -> list[str]:
        return [t for t in self.taps if t is not END]

    @property
    def read_layers(self) -> tuple[str | None, ...]:
        """Every layer a head reads, pooled or whole (``END`` for the trunk's end): what the forward needs."""
        return tuple(dict.fromkeys([*self.taps, *self.map_taps]))

    def _take(self, layer: str, module: nn.Module, args: Any, output: Any) -> None:
        taken = self._taken
        if taken is None or layer in taken:  # not a tapped forward (run_all), or a reused module's next call
            return
        taken[layer] = output
        if self._stop_when_taken and len(taken) == len(self.read_layers):
            raise _CutReached

    def _end(self, x: torch.Tensor) -> torch.Tensor:
        if self.cut_at is None:
            return pool_features(self.body(x))
        try:
            self.body(x)
        except _CutReached:
            pass
        out, self._captured = self._captured, None
        return pool_features(out)

    def run_all(self, x: torch.Tensor) -> torch.Tensor:
        """Every layer up to the end (or the cut), whatever the heads read: the end's features."""
        return self._end(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_maps(x)[0]

    def forward_maps(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(features, {layer: map})``: the pooled features of :attr:`taps` (``(N, 0)`` when there are none)
        and the whole output of each of :attr:`map_taps`."""
        if self.taps == (END,) and not self.map_taps:
            return self._end(x), {}
        taken: dict[str, Any] = {}
        self._taken, self._stop_when_taken = taken, END not in self.taps
        try:
            if END in self.taps:
                end = self._end(x)
            else:
                try:
                    self.body(x)
                except _CutReached:
                    pass
                self._captured = None
        finally:
            self._taken = None
        missing = next((t for t in self.read_layers if t is not END and t not in taken), None)
        if missing is not None:
            raise RuntimeError(f"layer {missing!r}, which a head reads, did not run in the forward pass")
        maps = {layer: first_tensor(taken[layer]) for layer in self.map_taps}
        parts, tokens = [], class_token_length(self.body)
        for tap in self.taps:
            parts.append(end if tap is END else pool_layer(taken[tap], tokens))
        if not parts:
            return x.new_zeros((x.shape[0], 0)), maps
        return (torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]), maps


class RegressionHead(nn.Sequential):
    """A regression head (built by :func:`engine.network.heads.build_head`): its layers predict standardised
    targets ``z`` and ``forward`` returns ``z * target_std + target_mean``, i.e. values in the user's
    units. The statistics are buffers (one value per output; mean 0 / std 1 until set), so they are in
    the state dict and exported to ONNX as constants. Still an ``nn.Sequential`` of the same layers as
    any other head (``head[-1]`` is the last Linear)."""

    def __init__(self, layers: Any, mean: Any = None, std: Any = None) -> None:
        layers = list(layers)
        super().__init__(*layers)
        outputs = layers[-1].out_features
        self.register_buffer("target_mean", torch.zeros(outputs))
        self.register_buffer("target_std", torch.ones(outputs))
        if mean is not None and std is not None:
            self.set_target_stats(mean, std)

    def set_target_stats(self, mean: Any, std: Any) -> None:
        with torch.no_grad():
            self.target_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            self.target_std.copy_(torch.as_tensor(std, dtype=torch.float32))

    def target_stats(self) -> tuple[list[float], list[float]]:
        return self.target_mean.tolist(), self.target_std.tolist()

    def is_identity(self) -> bool:
        """Mean 0 and std 1: statistics never set (a new head, or one from before they existed)."""
        return bool((self.target_mean == 0).all() and (self.target_std == 1).all())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.target_std + self.target_mean

    def extra_repr(self) -> str:
        return f"target_mean={self.target_mean.tolist()}, target_std={self.target_std.tolist()}"


class GraftModel(nn.Module):
    """Trunk + heads. ``forward`` returns ``{head_name: raw output}`` (logits for classification heads);
    with no head yet it returns ``{"output": trunk features}``. Setting ``head_specs`` tells the trunk
    which layers the heads read (:meth:`Trunk.set_taps`)."""

    def __init__(self, body: nn.Module, input_spec: InputSpec) -> None:
        super().__init__()
        self.trunk = Trunk(body)
        self.heads = nn.ModuleDict()
        self.head_specs: dict[str, HeadSpec] = {}
        self.input_spec = input_spec
        self.lr_factors: dict[str, float] = {}  # learning-rate factor per layer path (engine.network.lr_factors)

    @property
    def head_specs(self) -> dict[str, HeadSpec]:
        return self._head_specs

    @head_specs.setter
    def head_specs(self, specs: dict[str, HeadSpec]) -> None:
        self._head_specs = specs
        dense = [layer for s in specs.values() if s.dense for layer in s.layers]
        self.trunk.set_taps([s.layer for s in specs.values() if not s.dense], dense)

    @property
    def has_dense_heads(self) -> bool:
        """A head reads whole feature maps (segment, detect): the model runs on images, never on cached
        pooled features or a trunk converted on its own."""
        return any(s.dense for s in self.head_specs.values())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{head: raw output}``: pooled heads' logits / values ``(N, K)``; a segment head's logits
        ``(N, classes, H, W)``; a detect head's raw ``(N, P, classes + 5)``
        (:class:`engine.network.dense_heads.DetectHead`; :func:`engine.network.dense_heads.decoded_outputs`
        gives the boxes and scores)."""
        if not self.has_dense_heads:
            features = self.trunk(x)
            if not len(self.heads):
                return {"output": features}
            return self.forward_heads(features)
        features, maps = self.trunk.forward_maps(x)
        return self.heads_on_maps(features, maps, tuple(x.shape[-2:]))

    def heads_on_maps(self, features: torch.Tensor, maps: dict[str, torch.Tensor],
                      size: tuple[int, int]) -> dict[str, torch.Tensor]:
        """Every head on what :meth:`Trunk.forward_maps` returned for inputs of ``size`` (H, W): a frozen
        trunk runs without gradients and the heads on its output with them."""
        pooled = self.forward_heads(features) if features.shape[1] else {}
        out = {}
        for name, spec in self.head_specs.items():  # in the heads' order
            if spec.dense:
                head = self.heads[name]
                out[name] = head([maps[layer] for layer in head.layers], size)
            else:
                out[name] = pooled[name]
        return out

    def _slices(self) -> dict[str, slice] | None:
        """Each pooled head's columns of the trunk's output (None: one tap, every head reads all of it)."""
        taps = self.trunk.taps
        if len(taps) == 1:
            return None
        width: dict[str | None, int] = {}
        for name, spec in self.head_specs.items():
            if not spec.dense:
                width.setdefault(spec.layer, head_in_features(self.heads[name]))
        start, where = 0, {}
        for tap in taps:
            where[tap] = slice(start, start + width[tap])
            start += width[tap]
        return {name: where[spec.layer] for name, spec in self.head_specs.items() if not spec.dense}

    def forward_heads(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Pooled heads on precomputed trunk features (used for training on cached features); dense heads
        need the maps, so :meth:`forward` runs them."""
        slices = self._slices()
        dense = {name for name, spec in self.head_specs.items() if spec.dense}
        if slices is None:
            return {name: head(features) for name, head in self.heads.items() if name not in dense}
        return {name: head(features[:, slices[name]]) for name, head in self.heads.items() if name not in dense}

    def train(self, mode: bool = True) -> "GraftModel":
        """Like nn.Module.train, but BatchNorm layers whose parameters are frozen stay in eval mode,
        so fine-tuning the heads does not drift the trunk's running statistics."""
        super().train(mode)
        if mode:
            for m in self.trunk.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    params = list(m.parameters(recurse=False))
                    if not params or not any(p.requires_grad for p in params):
                        m.eval()
        return self

    def trunk_trainable(self) -> bool:
        return any(p.requires_grad for p in self.trunk.parameters())

    def dummy_input(self, batch: int = 1) -> torch.Tensor:
        spec = self.input_spec
        return torch.zeros(batch, spec.channels, spec.size, spec.size)


def head_in_features(head: nn.Module) -> int:
    """How many features a head reads: its first Linear's inputs; a dense head (no Linear: it reads maps)
    the channels of all the maps it reads."""
    if hasattr(head, "in_channels") and hasattr(head, "layers"):
        return int(sum(head.in_channels))
    return next(m for m in head.modules() if isinstance(m, nn.Linear)).in_features


def build_head(spec: HeadSpec, in_features: int):
    """A randomly initialised head: [Linear, ReLU, Dropout]* then Linear to ``spec.outputs``; for a
    regression head an :class:`RegressionHead` of the same layers, which also scales
    its output by the spec's target statistics (mean 0 / std 1 while the spec has none)."""
    layers: list[nn.Module] = []
    width = in_features
    for size in spec.hidden:
        layers += [nn.Linear(width, size), nn.ReLU(inplace=True)]
        if spec.dropout > 0:
            layers.append(nn.Dropout(spec.dropout))
        width = size
    if not spec.hidden and spec.dropout > 0:
        layers.append(nn.Dropout(spec.dropout))
    layers.append(nn.Linear(width, spec.outputs))
    if spec.kind == "regression":
        return RegressionHead(layers, spec.target_mean, spec.target_std)
    return nn.Sequential(*layers)
