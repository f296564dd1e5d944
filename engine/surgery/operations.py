"""Surgery operations: small objects that do and undo one change to a session's model.

The GUI wraps each in a QUndoCommand; the CLI and tests use :class:`engine.surgery.history.History`. Every
operation validates before it touches the model, so an illegal one raises GraftError and changes nothing.
Operations serialise to plain dicts: the project file's recipe is the list of applied operations.
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from engine.errors import GraftError
from engine.network.graft_model import GraftModel, build_head, head_in_features, pooled_size
from engine.network.heads import HeadSpec
from engine.network.graft_model import GraftModel
from engine.network.layer_tree import HEADS_KEY, LayerTree
from engine.network.lr_factors import param_factors
from engine.network.preprocess import check_channels
from engine.surgery.dense import build_dense, dense_layers


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


def _check_head_name(name: str) -> None:
    """A name the heads' nn.ModuleDict can hold (HeadSpec refuses the ones known when it was written)."""
    if hasattr(nn.ModuleDict(), name):
        raise GraftError(f"Head name {name!r} is reserved (PyTorch uses it for the heads' container): "
                         "choose another name.")


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


def _heads_reading(s: SurgeryState, removed: list[str]) -> list[tuple[str, str]]:
    """(head, layer) for each head that reads one of the ``removed`` layers or a layer inside one."""
    return [(name, layer) for name, spec in s.model.head_specs.items() for layer in spec.read_layers
            if any(is_within(layer, r) for r in removed)]


def _refuse_reading(found: list[tuple[str, str]], doing: str) -> None:
    if found:
        name, layer = found[0]
        more = f" (and {len(found) - 1} more head{'s' if len(found) > 2 else ''})" if len(found) > 1 else ""
        raise GraftError(f"{doing} would remove layer {layer!r}, which head {name!r} reads{more}: remove the "
                         "head, or move it to another layer, first.")


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


class DeleteOutputLayer(Operation, _ReattachesHeads):
    kind = "delete_output"
    touches_heads = True

    def __init__(self) -> None:
        self.layer: str | None = None
        self.old: nn.Module | None = None

    def apply(self, s: SurgeryState) -> None:
        if s.output_layer is None:
            raise GraftError("The output layer has already been deleted." if s.output_deleted
                             else "No output layer was found in this network; cut it at a layer instead.")
        self.layer = s.output_layer
        self.old = _trunk_layer(s, self.layer)
        _refuse_reading(_heads_reading(s, [self.layer]), "Deleting the output layer")
        set_module(s.model.trunk.body, self.layer, nn.Identity())
        s.output_layer, s.output_deleted = None, True
        s.mark_dirty()
        self._reattach(s)

    def lost_on_reopen(self, original_weights: bool) -> bool:
        return self._lost_on_reopen(original_weights)

    def undo(self, s: SurgeryState) -> None:
        set_module(s.model.trunk.body, self.layer, self.old)
        s.output_layer, s.output_deleted = self.layer, False
        s.mark_dirty()
        self._restore_heads(s)

    @property
    def text(self) -> str:
        return f"Delete output layer ({self.layer})" if self.layer else "Delete output layer"


class CutAt(Operation, _ReattachesHeads):
    """Keep everything up to and including ``layer``; the trunk's features come from its output.

    A cut on a network that is already cut first puts back what the earlier cuts replaced, then cuts
    the whole network: cutting at a block that an earlier cut went into (or at any earlier layer) gives
    the same network as cutting there in the first place.
    """

    kind = "cut"
    touches_heads = True

    def __init__(self, layer: str) -> None:
        if not isinstance(layer, str):
            raise GraftError(f"A cut names its layer as text, not {layer!r}.")
        self.layer = layer
        self.removed: list[tuple[str, nn.Module]] = []  # (path, original module), replaced by placeholders
        self.placeholders: list[nn.Module] = []  # the nn.Identity put at each removed path
        self.restored: list[tuple[str, nn.Module]] = []  # earlier cuts' placeholders this cut took out
        self.prev_cut: str | None = None
        self.prev_output: tuple[str | None, bool] = (None, False)
        self.took_output = False

    def _put_back_earlier_cuts(self, s: SurgeryState) -> None:
        """Put back what earlier cuts replaced (latest first), with the output layer they took."""
        body = s.model.trunk.body
        self.restored = []
        for op in reversed(s.applied):
            if not isinstance(op, CutAt):
                continue
            for (path, original), placeholder in zip(op.removed, op.placeholders):
                if _module_at(body, path) is placeholder:
                    set_module(body, path, original)
                    self.restored.append((path, placeholder))
            if op.took_output and s.output_layer is None:
                s.output_layer, s.output_deleted = op.prev_output
        s.model.trunk.set_cut(None)
        s.mark_dirty()

    def _take_back(self, s: SurgeryState) -> None:
        """Undo :meth:`_put_back_earlier_cuts` (and this cut's own removals)."""
        body = s.model.trunk.body
        for path, module in reversed(self.removed):
            set_module(body, path, module)
        for path, placeholder in reversed(self.restored):
            set_module(body, path, placeholder)
        s.model.trunk.set_cut(self.prev_cut)
        s.output_layer, s.output_deleted = self.prev_output
        s.mark_dirty()

    def apply(self, s: SurgeryState) -> None:
        _trunk_layer(s, self.layer)
        self.prev_cut = s.model.trunk.cut_at
        self.prev_output = (s.output_layer, s.output_deleted)
        self.removed, self.placeholders, self.restored = [], [], []
        if self.prev_cut is not None:
            self._put_back_earlier_cuts(s)
        order = s.tree.order if not s.dirty else s.probe_order()
        if self.layer not in order:
            self._take_back(s)
            raise GraftError(f"Layer {self.layer!r} does not run in the network's forward pass "
                             "(an earlier cut removed it?), so the network cannot be cut there.")
        start = order.index(self.layer)
        later = [m for m in order[start + 1:]
                 if not is_within(m, self.layer) and not is_within(self.layer, m)]
        later_set = set(later)
        top = [m for m in later if not any(is_within(m, a) and m != a for a in later_set)]
        inside = [(n, layer) for n, sp in s.model.head_specs.items() for layer in sp.read_layers
                  if is_within(self.layer, layer) and layer != self.layer]
        if _heads_reading(s, top) or inside:
            self._take_back(s)
            if inside:
                raise GraftError(f"A cut at {self.layer} would end the trunk inside layer {inside[0][1]!r}, which "
                                 f"head {inside[0][0]!r} reads: remove the head, or move it, first.")
            _refuse_reading(_heads_reading(s, top), f"A cut at {self.layer}")
        body = s.model.trunk.body
        self.removed = [(m, body.get_submodule(m)) for m in top]
        self.placeholders = [nn.Identity() for _ in top]
        for (path, _), placeholder in zip(self.removed, self.placeholders):
            set_module(body, path, placeholder)
        s.model.trunk.set_cut(self.layer)
        self.took_output = bool(s.output_layer and any(is_within(s.output_layer, m) for m in top))
        if self.took_output:
            s.output_layer, s.output_deleted = None, True
        s.mark_dirty()
        self._reattach(s)

    def undo(self, s: SurgeryState) -> None:
        self._take_back(s)
        self._restore_heads(s)

    def lost_on_reopen(self, original_weights: bool) -> bool:
        return self._lost_on_reopen(original_weights)

    @property
    def text(self) -> str:
        return f"Cut at {self.layer}"

    def args(self) -> dict[str, Any]:
        return {"layer": self.layer}


def _own_spec(spec: HeadSpec | dict[str, Any]) -> HeadSpec:
    """A copy the operation owns: training stores statistics in the session's spec (so the recipe saves
    them), which must not change the caller's object (e.g. a DataSource's suggested head)."""
    return HeadSpec.from_dict(spec.to_dict() if isinstance(spec, HeadSpec) else spec)


class AddHead(Operation):
    kind = "add_head"
    structural = False
    touches_heads = True

    def __init__(self, spec: HeadSpec | dict[str, Any], seed: int | None = None) -> None:
        self.spec = _own_spec(spec)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise GraftError(f"A head's seed must be a whole number, not {seed!r}.")
        self.seed = seed
        self.module: nn.Module | None = None

    def apply(self, s: SurgeryState) -> None:
        self.spec.validate()
        if self.spec.name in s.model.heads:
            raise GraftError(f"There is already a head named {self.spec.name!r}.")
        _check_head_name(self.spec.name)
        if self.spec.dense:  # segment / detect: reads feature maps (engine.surgery.dense)
            dense_layers(s, self.spec)  # refused before anything changes (also on a redo)
            dim = None
        else:
            dim = head_input_size(s, self.spec.layer)
        if self.module is None or (dim is not None and _in_features(self.module) != dim):
            with torch.random.fork_rng(devices=[]):
                if self.seed is not None:
                    torch.manual_seed(self.seed)
                self.module = build_dense(s, self.spec) if self.spec.dense else build_head(self.spec, dim)
        s.insert_head(self.spec, self.module, len(s.model.heads))

    def undo(self, s: SurgeryState) -> None:
        s.take_head(self.spec.name)

    @property
    def text(self) -> str:
        where = f" at {self.spec.reads}" if self.spec.layer is not None or self.spec.layers else ""
        return f"Add head '{self.spec.name}'{where}"

    def args(self) -> dict[str, Any]:
        return {"spec": self.spec.to_dict(), "seed": self.seed}


class RemoveHead(Operation):
    kind = "remove_head"
    structural = False
    touches_heads = True

    def __init__(self, name: str) -> None:
        if not isinstance(name, str):
            raise GraftError(f"A head is named by text, not {name!r}.")
        self.name = name
        self.saved: tuple[HeadSpec, nn.Module, int] | None = None

    def apply(self, s: SurgeryState) -> None:
        if self.name not in s.model.heads:
            raise GraftError(f"There is no head named {self.name!r}.")
        self.saved = s.take_head(self.name)

    def lost_on_reopen(self, original_weights: bool) -> bool:
        return True  # the removed head's weights were never saved: a replay rebuilt it untrained

    def undo(self, s: SurgeryState) -> None:
        spec, module, index = self.saved
        s.insert_head(spec, module, index)

    @property
    def text(self) -> str:
        return f"Remove head '{self.name}'"

    def args(self) -> dict[str, Any]:
        return {"name": self.name}


STRUCTURE_FIELDS = ("kind", "outputs", "hidden", "dropout", "layer", "layers")


class UpdateHead(Operation):
    """Change a head's spec (name, labels, hidden layers, dropout, loss weight …). A change of shape
    gives the head fresh random weights; a change of names or loss weight keeps its weights."""

    kind = "update_head"
    structural = False
    touches_heads = True

    def __init__(self, name: str, spec: HeadSpec | dict[str, Any]) -> None:
        if not isinstance(name, str):
            raise GraftError(f"A head is named by text, not {name!r}.")
        self.name = name
        self.spec = _own_spec(spec)
        self.saved: tuple[HeadSpec, nn.Module, int] | None = None
        self.module: nn.Module | None = None

    def apply(self, s: SurgeryState) -> None:
        if self.name not in s.model.heads:
            raise GraftError(f"There is no head named {self.name!r}.")
        self.spec.validate()
        if self.spec.name != self.name and self.spec.name in s.model.heads:
            raise GraftError(f"There is already a head named {self.spec.name!r}.")
        _check_head_name(self.spec.name)
        old_spec = s.model.head_specs[self.name]
        reshaped = any(getattr(old_spec, f) != getattr(self.spec, f) for f in STRUCTURE_FIELDS)
        if self.spec.dense and reshaped:
            dense_layers(s, self.spec)
        dim = head_input_size(s, self.spec.layer) if reshaped and not self.spec.dense else None
        if not reshaped and old_spec.has_target_stats and not self.spec.has_target_stats:
            # the head keeps its weights, which were trained on targets scaled by these statistics
            self.spec.set_target_stats(old_spec.target_mean, old_spec.target_std)
        self.saved = s.take_head(self.name)
        if self.module is None:
            if reshaped:
                self.module = build_dense(s, self.spec) if self.spec.dense else build_head(self.spec, dim)
            else:
                self.module = self.saved[1]
        s.insert_head(self.spec, self.module, self.saved[2])

    def undo(self, s: SurgeryState) -> None:
        s.take_head(self.spec.name)
        spec, module, index = self.saved
        s.insert_head(spec, module, index)

    def lost_on_reopen(self, original_weights: bool) -> bool:
        # a reshaped head replaced the old one, whose weights were never saved
        return self.saved is not None and self.module is not self.saved[1]

    @property
    def text(self) -> str:
        if self.spec.name != self.name:
            return f"Rename head '{self.name}' to '{self.spec.name}'"
        return f"Edit head '{self.name}'"

    def args(self) -> dict[str, Any]:
        return {"name": self.name, "spec": self.spec.to_dict()}


class RenameHead(UpdateHead):
    kind = "rename_head"

    def __init__(self, name: str, new_name: str, spec: dict[str, Any] | None = None) -> None:
        if not isinstance(new_name, str):
            raise GraftError(f"A head is named by text, not {new_name!r}.")
        self.new_name = new_name
        super().__init__(name, HeadSpec(name=new_name) if spec is None else spec)

    def apply(self, s: SurgeryState) -> None:
        if self.name in s.model.head_specs:
            data = s.model.head_specs[self.name].to_dict()
            data["name"] = self.new_name
            self.spec = HeadSpec.from_dict(data)
        super().apply(s)

    def args(self) -> dict[str, Any]:
        return {"name": self.name, "new_name": self.new_name}


class SetTrainable(Operation):
    """Freeze or unfreeze. ``mode``: "layers" (the given layers/subtrees, heads as ``@heads.<name>``),
    "up_to" (freeze the trunk up to and including ``layers[0]``, train the rest), "heads_only"
    (train only the heads), "all" (train everything)."""

    kind = "set_trainable"
    structural = False
    MODES = ("layers", "up_to", "heads_only", "all")

    def __init__(self, mode: str = "layers", layers: list[str] | None = None, trainable: bool = True) -> None:
        if not isinstance(mode, str) or mode not in self.MODES:
            raise GraftError(f"Unknown freeze mode {mode!r}.")
        if not isinstance(layers, (list, tuple, type(None))) or not all(isinstance(l, str) for l in layers or []):
            raise GraftError(f"Freeze: layers must be a list of layer names, not {layers!r}.")
        if not isinstance(trainable, bool):
            raise GraftError(f"Freeze: trainable must be true or false, not {trainable!r}.")
        self.mode, self.layers, self.trainable = mode, list(layers or []), trainable
        self.before: dict[str, bool] = {}

    def _targets(self, s: SurgeryState) -> dict[str, bool]:
        model = s.model
        names = {p: n for n, p in model.named_parameters()}
        if self.mode == "all":
            return {n: True for n in names.values()}
        if self.mode == "heads_only":
            return {n: n.startswith("heads.") for n in names.values()}
        if self.mode == "layers":
            if not self.layers:
                raise GraftError("Choose at least one layer to freeze or unfreeze.")
            out: dict[str, bool] = {}
            for layer in self.layers:
                params = list(_tree_module(s, layer).parameters())
                if not params:
                    raise GraftError(f"Layer {layer!r} has no weights to freeze or unfreeze.")
                out.update({names[p]: self.trainable for p in params})
            return out
        # up_to
        if len(self.layers) != 1:
            raise GraftError("Freeze up to: name one layer.")
        layer = self.layers[0]
        _trunk_layer(s, layer)
        order = s.tree.order if not s.dirty else s.probe_order()
        if layer not in order:
            raise GraftError(f"Layer {layer!r} does not run in the network's forward pass.")
        rank = {m: i for i, m in enumerate(order)}
        limit = rank[layer]
        last = {m: i for i, m in enumerate(order)}  # the last module to start within each module
        for m, i in rank.items():
            parts = m.split(".")
            for k in range(1, len(parts)):
                parent = ".".join(parts[:k])
                if last.get(parent, -1) < i:
                    last[parent] = i
        out = {}
        enclosing: list[tuple[str, nn.Parameter]] = []  # own parameters of modules that hold the limit
        for owner, module in model.trunk.body.named_modules():
            for p in module.parameters(recurse=False):
                if is_within(owner, layer):
                    out[names[p]] = False
                elif owner and owner in rank and not is_within(layer, owner):
                    # a module's own parameters (a block's layer_scale …) may be used after its children
                    # run: they freeze only when all of the module runs before the limit
                    out[names[p]] = not last[owner] < limit
                elif owner == "" or is_within(layer, owner):
                    enclosing.append((names[p], p))
        if enclosing:  # the root's class token, an encoder's position embedding …: frozen when used before
            used_before = _used_before(s, layer, [p for _, p in enclosing])  # the limit has finished
            out.update({n: not used_before.get(p, False) for n, p in enclosing})  # unused: trainable
        out.update({n: True for n in names.values() if n.startswith("heads.")})
        return out

    def apply(self, s: SurgeryState) -> None:
        targets = self._targets(s)
        params = dict(s.model.named_parameters())
        self.before = {n: params[n].requires_grad for n in targets}
        for n, flag in targets.items():
            params[n].requires_grad_(flag)

    def undo(self, s: SurgeryState) -> None:
        params = dict(s.model.named_parameters())
        for n, flag in self.before.items():
            params[n].requires_grad_(flag)

    @property
    def text(self) -> str:
        if self.mode == "all":
            return "Unfreeze all"
        if self.mode == "heads_only":
            return "Train only the heads"
        if self.mode == "up_to":
            return f"Freeze up to {self.layers[0]}"
        what = ", ".join(l.replace(HEADS_KEY + ".", "head ") for l in self.layers[:3])
        what += "…" if len(self.layers) > 3 else ""
        return f"{'Unfreeze' if self.trainable else 'Freeze'} {what}"

    def args(self) -> dict[str, Any]:
        return {"mode": self.mode, "layers": self.layers, "trainable": self.trainable}


class SetLrFactor(Operation):
    """Learning-rate factors (MATLAB's learn-rate factor): ``factors`` maps layer-tree paths (trunk layers,
    ``@heads``, ``@heads.<name>``) to a factor (a number >= 0), or to None to remove a layer's own factor
    so it inherits again. A factor holds for the layer and the layers below it unless they have their own
    (see :mod:`engine.network.lr_factors`); the trainer multiplies the trunk's or the heads' learning rate
    by it. Factor 0 is frozen: weights whose factor becomes 0 are frozen, and weights whose factor was 0
    and no longer is are unfrozen again (lifting the freeze the factor made). Undo puts back the factors
    and every trainable flag exactly. ``title``: the text of a preset (e.g. discriminative rates)."""

    kind = "lr_factor"
    structural = False

    def __init__(self, factors: dict[str, float | None], title: str = "") -> None:
        if not isinstance(factors, dict) or not factors:
            raise GraftError("Name at least one layer and its learning-rate factor.")
        clean: dict[str, float | None] = {}
        for layer, factor in factors.items():
            if not isinstance(layer, str) or not layer:
                raise GraftError(f"A learning-rate factor names its layer as text, not {layer!r}.")
            if factor is not None:
                if isinstance(factor, bool) or not isinstance(factor, (int, float)):
                    raise GraftError(f"The learning-rate factor of {layer!r} must be a number, not {factor!r}.")
                if not factor >= 0 or factor == float("inf"):
                    raise GraftError(f"The learning-rate factor of {layer!r} must be 0 or more (0 freezes the layer), "
                                     f"not {factor!r}.")
                factor = float(factor)
            clean[layer] = factor
        if not isinstance(title, str):
            raise GraftError(f"A learning-rate preset's title is text, not {title!r}.")
        self.factors, self.title = clean, title
        self.before_factors: dict[str, float] = {}
        self.before_flags: dict[str, bool] = {}

    def apply(self, s: SurgeryState) -> None:
        for layer in self.factors:
            if layer == "":
                raise GraftError("Name a layer.")
            if not any(True for _ in _tree_module(s, layer).parameters()):
                raise GraftError(f"Layer {layer!r} has no weights: a learning-rate factor would change nothing.")
        model = s.model
        old = dict(model.lr_factors)
        new = dict(old)
        for layer, factor in self.factors.items():
            if factor is None:
                new.pop(layer, None)
            else:
                new[layer] = factor
        before = param_factors(model)
        model.lr_factors = new
        after = param_factors(model)
        self.before_factors = old
        self.before_flags = {}
        for name, p in model.named_parameters():
            if after[name] == 0 and before[name] != 0 and p.requires_grad:
                self.before_flags[name] = True
                p.requires_grad_(False)
            elif before[name] == 0 and after[name] != 0 and not p.requires_grad:
                self.before_flags[name] = False
                p.requires_grad_(True)

    def undo(self, s: SurgeryState) -> None:
        s.model.lr_factors = dict(self.before_factors)
        params = dict(s.model.named_parameters())
        for name, flag in self.before_flags.items():
            params[name].requires_grad_(flag)

    @property
    def text(self) -> str:
        if self.title:
            return self.title
        if len(self.factors) == 1:
            layer, factor = next(iter(self.factors.items()))
            layer = layer.replace(HEADS_KEY + ".", "head ") if layer != HEADS_KEY else "the heads"
            if factor is None:
                return f"Clear the learning-rate factor of {layer}"
            return f"Learning-rate factor ×{factor:g} on {layer}" + (" (frozen)" if factor == 0 else "")
        return f"Learning-rate factors on {len(self.factors)} layers"

    def args(self) -> dict[str, Any]:
        return {"factors": dict(self.factors), "title": self.title}


def _used_before(s: SurgeryState, layer: str, params: list[nn.Parameter]) -> dict[Any, bool]:
    """One dry run: for each of ``params``, whether its first use comes before ``layer`` finishes.
    Parameters the dry run never uses are left out."""
    from torch.overrides import TorchFunctionMode

    wanted = {id(p): p for p in params}
    seen: dict[int, bool] = {}  # by id: tensors compare element-wise
    finished = [False]

    def look(value: Any) -> None:
        if isinstance(value, (list, tuple)):
            for v in value:
                look(v)
        elif id(value) in wanted and value is wanted[id(value)] and id(value) not in seen:
            seen[id(value)] = not finished[0]

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            look(args)
            look(list((kwargs or {}).values()))
            return func(*args, **(kwargs or {}))

    def done(module: nn.Module, args: Any, out: Any) -> None:
        finished[0] = True

    model = s.model
    handle = model.trunk.body.get_submodule(layer).register_forward_hook(done, prepend=True)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), Watch():
            model.trunk.run_all(model.dummy_input(1))
    except Exception:  # noqa: BLE001 - a network that does not run: decide without the dry run
        pass
    finally:
        handle.remove()
        model.train(was_training)
    return {wanted[i]: before for i, before in seen.items()}


def freeze_preset(preset: str, layer: str | None = None) -> SetTrainable:
    """CLI/GUI presets: "heads-only", "none" (train all), "up-to:LAYER" or ("up_to", layer)."""
    if preset in ("heads-only", "heads_only"):
        return SetTrainable("heads_only")
    if preset in ("none", "all"):
        return SetTrainable("all")
    if preset.startswith("up-to:"):
        return SetTrainable("up_to", [preset.split(":", 1)[1]])
    if preset == "up_to" and layer:
        return SetTrainable("up_to", [layer])
    raise GraftError(f"Unknown freeze setting {preset!r}: use heads-only, none or up-to:LAYER.")


# -- the input: channels and size --------------------------------------------------------------------

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
