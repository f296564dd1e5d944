"""What trains: freezing and unfreezing layers, learning-rate factors, and the freezing presets."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine.errors import GraftError
from engine.network.layer_tree import HEADS_KEY
from engine.network.lr_factors import param_factors
from engine.surgery.operations.operation import Operation, SurgeryState, _tree_module, _trunk_layer, is_within


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
