"""How much of the trunk trains, and how fast, block by block: discriminative learning rates and gradual
unfreezing (fastai's recipe for fine-tuning), both built on :func:`engine.training.advice.trunk_blocks`.

Every trunk weight belongs to one block group: the block that holds it, or, for weights outside every
block (a stem conv before the first block, a final norm after the last, a ViT's position embedding), the
block that runs just before it in the forward pass (the first block for weights that run before any).

* :func:`discriminative_rates` is one undoable surgery operation setting learning-rate factors from
  ``low`` on the bottom block rising geometrically to ×1 on the top block.
* :class:`UnfreezePlan` is a training setting (``TrainConfig.unfreeze_every``): the heads train alone for
  N epochs, then one more block group from the top joins every N epochs. The trainer puts the session's
  own freeze settings back after the run: the schedule is not a surgery.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.errors import GraftError
from engine.network.lr_factors import factor_path, model_factors, effective_factor
from engine.surgery.operations import SetLrFactor, is_within
from engine.training.advice import trunk_blocks

DEFAULT_LOW = 0.1


@dataclass
class BlockGroup:
    """A trunk block and the layers outside every block that go with it (``members``, the block first)."""

    block: str
    members: list[str] = field(default_factory=list)


def block_groups(session: Any) -> list[BlockGroup]:
    """The trunk's blocks in forward order, each with the layers outside every block that follow it.
    Raises GraftError when the trunk has fewer than two blocks."""
    blocks = [n.path for n in trunk_blocks(session)]
    if len(blocks) < 2:
        raise GraftError("This network has no separate blocks for per-block learning rates or unfreezing.")
    rank = {path: i for i, path in enumerate(session.tree.order)}
    groups = [BlockGroup(b, [b]) for b in blocks]
    seen: set[str] = set()
    body = session.model.trunk.body
    for owner, module in body.named_modules():
        if not owner or not any(True for _ in module.parameters(recurse=False)):
            continue
        if any(is_within(owner, b) for b in blocks):
            continue
        # the highest layer holding this one that holds no block (or this one, when it holds a block)
        entry = owner
        if not any(is_within(b, owner) for b in blocks):
            parts = owner.split(".")
            for k in range(1, len(parts) + 1):
                candidate = ".".join(parts[:k])
                if not any(is_within(b, candidate) for b in blocks):
                    entry = candidate
                    break
        if entry in seen or entry not in rank:
            continue
        seen.add(entry)
        before = [i for i, b in enumerate(blocks) if rank.get(b, -1) <= rank[entry]]
        groups[before[-1] if before else 0].members.append(entry)
    return groups


def _group_of_params(session: Any, groups: list[BlockGroup]) -> dict[str, int]:
    """``{trunk parameter name: group index}``: the group of the deepest member path holding it (the
    trunk's root module's own weights, such as a class token, go with the bottom group)."""
    owners = {m: i for i, g in enumerate(groups) for m in g.members}
    out = {}
    for name, _ in session.model.trunk.named_parameters(prefix="trunk"):
        path = factor_path(name)
        index = 0
        while path:
            if path in owners:
                index = owners[path]
                break
            path = path.rpartition(".")[0]
        out[name] = index
    return out


def discriminative_factors(session: Any, low: float = DEFAULT_LOW) -> dict[str, float]:
    """Factors from ``low`` on the bottom block group to 1 on the top one, geometric in between."""
    if isinstance(low, bool) or not isinstance(low, (int, float)) or not 0 < low <= 1:
        raise GraftError(f"The lowest discriminative factor must be a number above 0 and at most 1 (got {low!r}).")
    groups = block_groups(session)
    n = len(groups)
    out = {}
    for i, g in enumerate(groups):
        factor = float(low) ** ((n - 1 - i) / (n - 1))
        for m in g.members:
            out[m] = float(f"{factor:.6g}")  # six significant digits: a readable recipe
    return out


def discriminative_rates(session: Any, low: float = DEFAULT_LOW) -> SetLrFactor:
    """The preset as one undoable operation (apply it with ``session.do``). It replaces the trunk's
    learning-rate factors (the heads' are kept); the recipe records the factors themselves, so a
    project reopens with exactly these."""
    factors: dict[str, float | None] = {p: None for p in model_factors(session.model) if not p.startswith("@")}
    factors.update(discriminative_factors(session, low))
    return SetLrFactor(factors, title=f"Discriminative learning rates (×{low:g} at the bottom to ×1 at the top)")


@dataclass
class UnfreezeStage:
    epoch: int  # the first epoch this block group trains in
    block: str
    params: list[str]  # GraftModel parameter names that start training then


class UnfreezePlan:
    """Gradual unfreezing: the heads alone for ``every`` epochs, then one more block group from the top
    every ``every`` epochs (block k from the top, 0-based, from epoch ``(k + 1) * every + 1``). Weights
    with learning-rate factor 0 never train, and a block with nothing else takes no turn."""

    def __init__(self, session: Any, every: int, epochs: int) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise GraftError(f"Unfreeze every: a whole number of epochs, at least 1 (got {every!r}).")
        groups = block_groups(session)
        members = _group_of_params(session, groups)
        factors = model_factors(session.model)
        trainable = {n for n in members if effective_factor(factors, factor_path(n)) > 0}
        self.every, self.epochs = every, epochs
        self.stages: list[UnfreezeStage] = []
        for index in reversed(range(len(groups))):  # a group with nothing to train (factor 0) takes no turn
            names = [n for n, i in members.items() if i == index and n in trainable]
            if names:
                self.stages.append(UnfreezeStage((len(self.stages) + 1) * every + 1, groups[index].block, names))
        self.params = [n for stage in self.stages for n in stage.params]

    def trainable_at(self, epoch: int) -> set[str]:
        """The trunk parameters that train in ``epoch`` (1-based)."""
        return {n for s in self.stages if s.epoch <= epoch for n in s.params}

    def starting_at(self, epoch: int) -> list[str]:
        """The blocks that join in ``epoch``."""
        return [s.block for s in self.stages if s.epoch == epoch]

    def describe(self) -> str:
        planned = [s for s in self.stages if s.epoch <= self.epochs]
        text = f"Gradual unfreezing: the heads train alone for {self.every} epoch{'s' if self.every != 1 else ''}"
        if planned:
            steps = ", ".join(f"{s.block} from epoch {s.epoch}" for s in planned[:4])
            text += f", then one more block every {self.every}: {steps}{' …' if len(planned) > 4 else ''}"
        else:
            text += f"; with {self.epochs} epochs no block is unfrozen"
        return text + ". The layers' own freeze settings are put back after the run."
