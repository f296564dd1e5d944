"""Heads: add, remove, edit and rename the heads that read the trunk."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from engine.errors import GraftError
from engine.network.graft_model import build_head
from engine.network.heads import HeadSpec
from engine.surgery.dense import build_dense, dense_layers
from engine.surgery.operations.operation import Operation, SurgeryState, _in_features, head_input_size


def _check_head_name(name: str) -> None:
    """A name the heads' nn.ModuleDict can hold (HeadSpec refuses the ones known when it was written)."""
    if hasattr(nn.ModuleDict(), name):
        raise GraftError(f"Head name {name!r} is reserved (PyTorch uses it for the heads' container): "
                         "choose another name.")


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
