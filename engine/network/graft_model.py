"""The network being operated on: a pretrained trunk that yields pooled features, plus named heads."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine.network.heads import HeadSpec
from engine.network.preprocess import InputSpec


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


class Trunk(nn.Module):
    """The loaded network as surgery left it. Returns (N, F) features.

    A cut at layer X stops the forward pass as soon as X has produced its output (a forward hook raises),
    so it works for any architecture without rewriting its forward code; the layers after X are
    replaced by ``nn.Identity`` so that their weights are gone too.
    """

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body
        self.cut_at: str | None = None
        self._hook = None
        self._captured: Any = None

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cut_at is None:
            return pool_features(self.body(x))
        try:
            self.body(x)
        except _CutReached:
            pass
        out, self._captured = self._captured, None
        return pool_features(out)


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
    with no head yet it returns ``{"output": trunk features}``."""

    def __init__(self, body: nn.Module, input_spec: InputSpec) -> None:
        super().__init__()
        self.trunk = Trunk(body)
        self.heads = nn.ModuleDict()
        self.head_specs: dict[str, HeadSpec] = {}
        self.input_spec = input_spec
        self.lr_factors: dict[str, float] = {}  # learning-rate factor per layer path (engine.network.lr_factors)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.trunk(x)
        if not len(self.heads):
            return {"output": features}
        return {name: head(features) for name, head in self.heads.items()}

    def forward_heads(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Heads on precomputed trunk features (used for training on cached features)."""
        return {name: head(features) for name, head in self.heads.items()}

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
        size = self.input_spec.size
        return torch.zeros(batch, 3, size, size)


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
