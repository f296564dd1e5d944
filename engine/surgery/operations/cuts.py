"""Cuts: operations that take layers off the trunk's end (the output layer, or everything after a layer)."""
from __future__ import annotations

from typing import Any

from torch import nn

from engine.errors import GraftError
from engine.surgery.operations.operation import (
    Operation, SurgeryState, _module_at, _ReattachesHeads, _trunk_layer, is_within, set_module,
)


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
