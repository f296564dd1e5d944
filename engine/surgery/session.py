"""A session: one loaded network with its surgery, heads, freeze state and layer tree."""
from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from engine.errors import GraftError
from engine.events import Events
from engine.network.graft_model import GraftModel, head_in_features, pooled_size
from engine.network.heads import HeadSpec
from engine.surgery.history import History
from engine.network.layer_tree import LayerTree
from engine.network.loading import LoadedNetwork, detect_output_layer
from engine.surgery.operations import Operation


class Session(Events):
    """Owns the GraftModel and announces changes.

    Events (plain callbacks, see :meth:`connect`): ``heads_changed()`` after any change to the heads,
    ``changed(op)`` after every applied or reverted operation. The layer tree has its own finer events.
    """

    EVENTS = ("heads_changed", "changed")

    def __init__(self, network: LoadedNetwork) -> None:
        super().__init__()
        self.network = network
        self.source = network.source
        self.model = GraftModel(network.module, network.input_spec)
        self.tree = LayerTree()
        self.applied: list[Operation] = []
        self.history = History(self)
        self.dirty = False
        self.project_extra: dict[str, Any] = {}
        start = time.perf_counter()
        self.tree.probe(self.model)
        self.output_layer: str | None = detect_output_layer(self.model.trunk.body, self.tree.order)
        self.output_deleted = False
        self.tree.sync(self.model, self.output_layer, probe=False)
        self.tree.build_seconds = time.perf_counter() - start

    # -- operations -----------------------------------------------------------------------------
    def do(self, op: Operation) -> Operation:
        """Apply through the engine history (undoable with ``session.history.undo()``)."""
        return self.history.do(op)

    def apply(self, op: Operation) -> None:
        """Apply ``op``; GraftError leaves the model as it was. An operation after which the network no
        longer runs on its dummy input (the dry run fails) is undone again and refused."""
        healthy = self.tree.shape_error is None
        op.apply(self)
        if healthy and (self.dirty or op.structural):
            if self.dirty:
                self.probe_order()
            if self.tree.shape_error is not None:
                error = self.tree.shape_error
                op.undo(self)
                self.probe_order()
                raise GraftError(f"{op.text} was not done: the network would no longer run ({error}).")
        self.applied.append(op)
        self._after(op)

    def revert(self, op: Operation) -> None:
        if not self.applied or self.applied[-1] is not op:
            raise RuntimeError("operations must be undone in reverse order")
        op.undo(self)
        self.applied.pop()
        self._after(op)

    def _after(self, op: Operation) -> None:
        self.tree.sync(self.model, self.output_layer, probe=self.dirty)
        self.dirty = False
        if op.touches_heads:
            self._emit("heads_changed")
        self._emit("changed", op)

    def mark_dirty(self) -> None:
        self.dirty = True

    def probe_order(self) -> list[str]:
        self.tree.probe(self.model)
        self.dirty = False
        return self.tree.order

    @property
    def feature_dim(self) -> int | None:
        if self.dirty:
            self.probe_order()
        return self.tree.feature_dim

    # -- heads (used by operations) -------------------------------------------------------------
    @property
    def heads(self) -> list[HeadSpec]:
        return list(self.model.head_specs.values())

    def head_input_sizes(self) -> dict[str, int]:
        """How many features each head reads (the pooled size of its layer, or the trunk's features)."""
        return {name: head_in_features(module) for name, module in self.model.heads.items()}

    def head_layers(self) -> list[str]:
        """The layers a head can read, in the order they run: those whose output pools to a vector
        (:func:`engine.network.graft_model.pooled_size`) and that finish before the trunk stops."""
        if self.dirty:
            self.probe_order()
        tree = self.tree
        if isinstance(self.model.trunk.body, torch.jit.ScriptModule) or tree.shape_error is not None:
            return []
        return [p for p in tree.order if p in tree and pooled_size(tree.shapes.get(p)) is not None
                and tree.ticks.get(p, (0, None))[1] is not None]

    def unused_layers(self) -> set[str]:
        """The layers the forward pass no longer computes: every head reads an earlier layer."""
        if self.dirty:
            self.probe_order()
        return self.tree.unused_layers(self.model.trunk.taps)

    def insert_head(self, spec: HeadSpec, module: nn.Module, index: int) -> None:
        items = list(self.model.heads.items())
        specs = list(self.model.head_specs.items())
        items.insert(index, (spec.name, module))
        specs.insert(index, (spec.name, spec))
        self.model.heads = nn.ModuleDict(items)
        self.model.head_specs = dict(specs)

    def take_head(self, name: str) -> tuple[HeadSpec, nn.Module, int]:
        names = list(self.model.heads.keys())
        index = names.index(name)
        module = self.model.heads[name]
        spec = self.model.head_specs[name]
        self.model.heads = nn.ModuleDict([(n, m) for n, m in self.model.heads.items() if n != name])
        self.model.head_specs = {n: s for n, s in self.model.head_specs.items() if n != name}
        return spec, module, index

    # -- queries --------------------------------------------------------------------------------
    @property
    def input_spec(self):
        return self.model.input_spec

    def set_input_spec(self, spec) -> None:
        """Replace the preprocessing outright (not a surgery: nothing to undo), e.g. a reopened project's
        saved spec after its input surgeries were replayed; the tree re-probes when the input's shape
        changes."""
        old = self.model.input_spec
        self.model.input_spec = spec
        if (old.channels, old.size) != (spec.channels, spec.size):
            self.tree.sync(self.model, self.output_layer, probe=True)
            self.dirty = False

    def recipe(self) -> list[dict[str, Any]]:
        return [op.to_dict() for op in self.applied]

    def describe(self) -> str:
        return self.source.describe()
