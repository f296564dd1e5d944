"""Dense heads (segment, detect) on a session's trunk: the layers they read (named, or the defaults) checked
against the layer tree, and their modules built with those layers' channels."""
from __future__ import annotations

from typing import Any

from torch import nn

from engine.errors import GraftError
from engine.network.dense_heads import build_dense_head, default_layers, map_shape
from engine.network.heads import HeadSpec


def dense_layers(s: Any, spec: HeadSpec) -> list[tuple[str, int]]:
    """``[(layer, channels)]`` a dense head reads, in the order they run: ``spec.layers``, or the defaults
    (:func:`engine.network.dense_heads.default_layers`). GraftError naming a layer that is unknown, does not
    run, never finishes (the trunk is cut inside it) or gives no C×H×W map."""
    if s.dirty:
        s.probe_order()
    tree = s.tree
    if tree.shape_error is not None:
        raise GraftError(f"The network does not run on its input ({tree.shape_error}), so no dense head can read it.")
    layers = list(spec.layers) or default_layers(tree, s.model.input_spec.size)
    order = {path: i for i, path in enumerate(tree.order)}
    found = []
    for layer in layers:
        if layer not in order:
            raise GraftError(f"Head {spec.name!r}: layer {layer!r} does not run in the network's forward pass "
                             "(check its name in the layer tree).")
        ticks = tree.ticks.get(layer)
        if ticks is None or ticks[1] is None:
            raise GraftError(f"Head {spec.name!r}: layer {layer!r} never finishes (the trunk stops inside it).")
        shape = map_shape(tree.shapes.get(layer))
        if shape is None:
            raise GraftError(f"Head {spec.name!r}: layer {layer!r} gives no C×H×W feature map "
                             f"({tree.shapes.get(layer)}), which a {spec.kind} head reads.")
        found.append((layer, shape[0]))
    return sorted(found, key=lambda item: order[item[0]])


def build_dense(s: Any, spec: HeadSpec) -> nn.Module:
    """The head's module; ``spec.layers`` is filled in with the layers it reads (in the order they run)."""
    found = dense_layers(s, spec)
    spec.layers = [layer for layer, _ in found]
    return build_dense_head(spec, [channels for _, channels in found])
