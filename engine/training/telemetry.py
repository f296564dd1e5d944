"""Live layer telemetry: where the network is changing while it trains.

Per trainable block (the trunk's blocks as :func:`engine.training.advice.trunk_blocks` finds them, e.g.
``features.0`` … ``features.8`` of an EfficientNet, other trunk weights by their top-level layer, and each
head as ``@heads.<name>``): the gradient norm of the last step and the weights' relative change since the run
started, ``||W - W0|| / ||W0||`` over the block's trainable weights. Sampled after an optimizer step at
most every :data:`INTERVAL` seconds, so the cost stays a small, bounded share of training (measured in
``bench/train_speed.py``): one fused norm per block and one device sync per sample. A resumed run measures
the change since it resumed.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from engine.network.lr_factors import factor_path

INTERVAL = 0.5  # seconds between samples, at most one per optimizer step


@dataclass
class TelemetryEvent:
    """``blocks``: ``{block path: (gradient norm, relative weight change)}``; a block whose weights had
    no gradient in this step (frozen by gradual unfreezing) reports a gradient norm of 0."""

    step: int
    epoch: int
    blocks: dict[str, tuple[float, float]]


def telemetry_blocks(model: nn.Module, params: Sequence[nn.Parameter],
                     blocks_at: Sequence[str] = ()) -> dict[str, list[nn.Parameter]]:
    """``params`` (those the optimizer trains) grouped by block, in the model's order: the deepest of
    ``blocks_at`` (trunk layer paths) holding the weight, else the first part of its trunk path
    (``layer3``), or ``@heads.<name>`` for a head. Without ``blocks_at`` a network whose blocks sit in one
    container (``features``) would be a single row."""
    wanted = {id(p) for p in params}
    known = sorted(blocks_at, key=len, reverse=True)
    blocks: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if id(p) not in wanted:
            continue
        path = factor_path(name)
        if path is None:
            continue
        if path.startswith("@heads."):
            block = ".".join(path.split(".")[:2])
        else:
            block = next((b for b in known if path == b or path.startswith(b + ".")), None)
            if block is None:
                block = path.split(".")[0] if path else "(trunk)"
        blocks.setdefault(block, []).append(p)
    return blocks


class Telemetry:
    """Samples ``blocks`` (``{path: parameters}``) against their weights when it was made."""

    def __init__(self, blocks: Mapping[str, Sequence[nn.Parameter]], interval: float = INTERVAL) -> None:
        self.blocks = {k: list(v) for k, v in blocks.items() if v}
        self.interval = interval
        self._last = -float("inf")
        with torch.no_grad():
            self.start = {k: [p.detach().clone() for p in ps] for k, ps in self.blocks.items()}
            norms = [torch.linalg.vector_norm(torch.stack(torch._foreach_norm(v))) for v in self.start.values()]
            self.start_norm = torch.stack(norms).tolist() if norms else []

    def due(self) -> bool:
        return time.perf_counter() - self._last >= self.interval

    def sample(self, step: int, epoch: int) -> TelemetryEvent:
        self._last = time.perf_counter()
        values = []
        with torch.no_grad():
            for key, params in self.blocks.items():
                grads = [p.grad for p in params if p.grad is not None]
                grad = (torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).float()
                        if grads else torch.zeros((), device=params[0].device))
                diff = torch._foreach_sub([p.detach() for p in params], self.start[key])
                change = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(diff))).float()
                values += [grad.to(change.device), change]
        numbers = torch.stack(values).tolist() if values else []  # one sync for every block
        out = {}
        for i, key in enumerate(self.blocks):
            norm0 = self.start_norm[i]
            change = numbers[2 * i + 1]
            out[key] = (numbers[2 * i], change / norm0 if norm0 > 0 else change)
        self._last = time.perf_counter()
        return TelemetryEvent(step, epoch, out)
