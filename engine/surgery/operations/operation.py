"""What every surgery operation shares: the :class:`Operation` base (do, undo, serialise, the registry a
recipe is read back by), :class:`SurgeryState` (the session as operations see it) and the helpers that find
layers and feature sizes. The operations themselves live by family in the sibling modules."""
from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from engine.errors import GraftError
from engine.network.graft_model import GraftModel, build_head, head_in_features, pooled_size
from engine.network.heads import HeadSpec
from engine.network.layer_tree import HEADS_KEY, LayerTree


class SurgeryState(Protocol):
    """What an operation changes: the session as operations see it. A protocol, so that this module needs
    nothing from :mod:`engine.surgery.session` (which applies operations) and no import circle forms."""

    model: GraftModel
    tree: LayerTree
    dirty: bool
    output_layer: str | None
    output_deleted: bool
    applied: list["Operation"]

    @property
    def feature_dim(self) -> int | None: ...

    def mark_dirty(self) -> None: ...

    def probe_order(self) -> list[str]: ...

    def insert_head(self, spec: HeadSpec, module: nn.Module, index: int) -> None: ...

    def take_head(self, name: str) -> tuple[HeadSpec, nn.Module, int]: ...

REGISTRY: dict[str, type["Operation"]] = {}


def set_module(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


def is_within(path: str, ancestor: str) -> bool:
    return path == ancestor or path.startswith(ancestor + ".")


class Operation:
    """Base class: subclasses set ``kind`` and implement ``apply``, ``undo`` and ``text``."""

    kind: ClassVar[str] = ""
    structural: ClassVar[bool] = True  # changes shapes or modules (the tree re-probes)
    touches_heads: ClassVar[bool] = False
    sets_input: ClassVar[bool] = False  # changes the input spec (a reopened project replays it from the source's)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            REGISTRY[cls.kind] = cls

    def apply(self, s: SurgeryState) -> None:
        raise NotImplementedError

    def undo(self, s: SurgeryState) -> None:
        raise NotImplementedError

    @property
    def text(self) -> str:
        return self.kind

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.kind, **self.args()}

    def args(self) -> dict[str, Any]:
        return {}

    def lost_on_reopen(self, original_weights: bool) -> bool:
        """For a project reopened by replaying its recipe: would undoing this operation bring back modules
        whose weights are in neither the project file nor (``original_weights``) the rebuilt source?"""
        return False

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "Operation":
        """The operation a recipe entry describes; GraftError for one that is damaged."""
        if not isinstance(data, dict):
            raise GraftError(f"an operation must be an object, not {type(data).__name__}")
        data = dict(data)
        kind = data.pop("op", None)
        if not isinstance(kind, str) or kind not in REGISTRY:
            raise GraftError(f"Unknown operation {kind!r} in the project recipe.")
        try:
            return REGISTRY[kind].from_args(data)
        except TypeError as exc:  # missing or unexpected arguments
            raise GraftError(f"operation {kind!r}: {exc}") from None

    @classmethod
    def from_args(cls, data: dict[str, Any]) -> "Operation":
        return cls(**data)


def _trunk_layer(s: SurgeryState, layer: str) -> nn.Module:
    body = s.model.trunk.body
    if isinstance(body, torch.jit.ScriptModule):
        raise GraftError("This is a TorchScript model: its layers cannot be changed, only heads added on its output.")
    if not isinstance(layer, str):
        raise GraftError(f"A layer is named by text, not {layer!r}.")
    if not layer:
        raise GraftError("Name a layer.")
    module = body
    parts = layer.split(".")
    for i, part in enumerate(parts):
        if isinstance(module, nn.Identity) and i:
            raise GraftError(f"Layer {layer!r} has been removed (its block {'.'.join(parts[:i])!r} was cut off "
                             "or deleted).")
        child = module._modules.get(part)
        if child is None:
            raise GraftError(f"There is no layer {layer!r} in this network.")
        module = child
    if isinstance(module, nn.Identity):
        raise GraftError(f"Layer {layer!r} has been removed.")
    return module


def _tree_module(s: SurgeryState, layer: str) -> nn.Module:
    """The module at a layer-tree path: a trunk layer, ``@heads`` or ``@heads.<name>[.<part>]``."""
    model = s.model
    if layer == HEADS_KEY:
        return model.heads
    if isinstance(layer, str) and layer.startswith(HEADS_KEY + "."):
        head, _, rest = layer[len(HEADS_KEY) + 1:].partition(".")
        if head not in model.heads:
            raise GraftError(f"There is no head named {head!r}.")
        part = _module_at(model.heads[head], rest) if rest else model.heads[head]
        if part is None:
            raise GraftError(f"Head {head!r} has no part {rest!r}.")
        return part
    return _trunk_layer(s, layer)


def _module_at(root: nn.Module, path: str) -> nn.Module | None:
    """The module at ``path`` now, or None when the path does not resolve (a parent was replaced)."""
    module = root
    for part in path.split("."):
        module = module._modules.get(part) if isinstance(module, nn.Module) else None
        if module is None:
            return None
    return module


_in_features = head_in_features


def _shape_words(shape: tuple[int, ...] | None) -> str:
    return "×".join(str(d) for d in shape) if shape else "a scalar"


def head_input_size(s: SurgeryState, layer: str | None) -> int:
    """How many features a head reading ``layer`` (None: the trunk's end) gets: the layer's output
    pooled to a vector (:func:`engine.network.graft_model.pooled_size`). GraftError, naming the reason,
    for a layer a head cannot read: unknown or removed, not run in the forward pass, ending after the
    trunk has stopped (it holds the cut), or with an output that is no map, token sequence or vector."""
    if layer is None:
        dim = s.feature_dim
        if dim is None:
            raise GraftError("The trunk's feature size is unknown (the network did not run on a dummy input).")
        return dim
    if isinstance(s.model.trunk.body, torch.jit.ScriptModule):
        raise GraftError("This is a TorchScript model: heads read its output only, not one of its layers.")
    _trunk_layer(s, layer)
    if s.dirty:
        s.probe_order()
    tree = s.tree
    if tree.shape_error is not None:
        raise GraftError(f"The network does not run on its input ({tree.shape_error}), so no head can read "
                         f"layer {layer!r}.")
    if layer not in tree.order:
        raise GraftError(f"Layer {layer!r} does not run in the network's forward pass, so a head cannot read it.")
    ticks = tree.ticks.get(layer)
    if ticks is None or ticks[1] is None:
        cut = s.model.trunk.cut_at
        raise GraftError(f"Layer {layer!r} never finishes: the trunk stops inside it"
                         + (f" (it is cut at {cut})" if cut else "") + ", so a head cannot read its output.")
    shape = tree.shapes.get(layer)
    if shape is None:
        raise GraftError(f"Layer {layer!r} gives no tensor, so a head cannot read it: choose a layer whose "
                         "output is a feature map, a token sequence or a vector.")
    dim = pooled_size(shape)
    if dim is None:
        raise GraftError(f"The output of layer {layer!r} ({_shape_words(shape)} per image) cannot be pooled to a "
                         "vector: a head reads a C×H×W map (averaged over space), a token sequence (its class "
                         "token, or the mean) or a vector.")
    return dim


class _ReattachesHeads:
    """Mixin: after the trunk's feature size changes, heads that no longer fit are rebuilt fresh."""

    _old_heads: dict[str, nn.Module]
    _new_heads: dict[str, nn.Module]

    def _reattach(self, s: SurgeryState) -> None:
        self._old_heads = {}
        fresh = getattr(self, "_new_heads", {})  # a redo reuses the heads the first apply built
        self._new_heads = {}
        for name, head in list(s.model.heads.items()):
            if s.model.head_specs[name].dense:  # reads maps of its layers, which a cut keeps (checked before)
                continue
            try:
                dim = head_input_size(s, s.model.head_specs[name].layer)
            except GraftError:
                dim = None
            if dim is not None and _in_features(head) != dim:
                self._old_heads[name] = head
                new = fresh.get(name)
                if new is None or _in_features(new) != dim:
                    new = build_head(s.model.head_specs[name], dim)
                self._new_heads[name] = s.model.heads[name] = new

    def _restore_heads(self, s: SurgeryState) -> None:
        for name, head in self._old_heads.items():
            s.model.heads[name] = head

    def _lost_on_reopen(self, original_weights: bool) -> bool:
        # undo brings back trunk layers (the source's weights) and any heads this replaced (never saved)
        return not original_weights or bool(getattr(self, "_old_heads", None))
