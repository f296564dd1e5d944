"""Learning-rate factors per layer (MATLAB's learn-rate factor): a multiplier on the learning rate of a
layer's weights, kept in ``GraftModel.lr_factors`` as ``{path: factor}``.

Paths are the layer tree's: a trunk layer by its name in the loaded network (``layer3.1``), a head as
``@heads.<name>`` (its parts ``@heads.<name>.0``), all heads as ``@heads``. A factor holds for the layer and
everything below it unless a deeper layer has its own: the deepest path with a factor wins. No factor
means 1. The trainer uses ``lr_trunk × factor`` for trunk weights and ``lr_heads × factor`` for heads;
a factor of 0 means the weights do not train (the surgery operation that sets it also freezes them).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import nn

HEADS_KEY = "@heads"  # the heads' group in the layer tree (engine.network.layer_tree re-exports it)
TRUNK_PREFIX = "trunk.body."
HEADS_PREFIX = "heads."


def factor_path(param_name: str) -> str | None:
    """The tree path of the module owning ``param_name`` (a GraftModel parameter name):
    ``trunk.body.layer1.0.conv1.weight`` -> ``layer1.0.conv1``, ``heads.shape.0.weight`` ->
    ``@heads.shape.0``; ``""`` for the trunk's root module's own parameters, None for others."""
    module = param_name.rpartition(".")[0]
    if param_name.startswith(TRUNK_PREFIX):
        return module[len(TRUNK_PREFIX):] if module != TRUNK_PREFIX[:-1] else ""
    if param_name.startswith(HEADS_PREFIX):
        return HEADS_KEY + "." + module[len(HEADS_PREFIX):]
    return None


def _ancestors(path: str) -> Iterable[str]:
    """``path`` and its ancestors, deepest first (``a.b.c``, ``a.b``, ``a``)."""
    while path:
        yield path
        path = path.rpartition(".")[0]


def effective_factor(factors: Mapping[str, float], path: str | None) -> float:
    """The factor that holds at ``path``: its own, else its deepest ancestor's, else 1."""
    if path is None or not factors:
        return 1.0
    for p in _ancestors(path):
        if p in factors:
            return float(factors[p])
    return 1.0


def factor_source(factors: Mapping[str, float], path: str | None) -> str | None:
    """The path whose factor holds at ``path`` (itself or an ancestor), or None when none is set."""
    if path is None:
        return None
    return next((p for p in _ancestors(path) if p in factors), None)


def model_factors(model: nn.Module) -> dict[str, float]:
    return dict(getattr(model, "lr_factors", None) or {})


def param_factors(model: nn.Module) -> dict[str, float]:
    """``{parameter name: effective factor}`` for every parameter of a GraftModel."""
    factors = model_factors(model)
    return {n: effective_factor(factors, factor_path(n)) for n, _ in model.named_parameters()}
