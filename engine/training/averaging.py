"""Weight averaging for a run (``TrainConfig.ema``): an exponential moving average of the weights that train,
kept by ``torch.optim.swa_utils.AveragedModel`` with ``get_ema_multi_avg_fn``.

The trainer updates the average after every optimiser step and validates the averaged weights, not the raw
ones: :meth:`WeightAverage.swapped_in` puts them into the model for the validation pass (and for the best
epoch's snapshot, taken inside it), then puts the raw weights back so that training goes on from them. A run
without validation ends with the averaged weights (:meth:`WeightAverage.keep`). Buffers (BatchNorm's running
statistics) are the model's own: only parameters are averaged.

The average spans about ``horizon`` steps (decay ``1 - 1/horizon``): about an epoch's steps, at least
:data:`MIN_HORIZON`, so that a short run still averages over more than a handful of noisy steps.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

MIN_HORIZON = 5
MAX_HORIZON = 2000


class WeightAverage:
    """The EMA of ``model``'s parameters named in ``names`` (those that train)."""

    def __init__(self, model: nn.Module, names: list[str], horizon: int) -> None:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        horizon = max(MIN_HORIZON, min(MAX_HORIZON, int(horizon)))
        self.decay = 1.0 - 1.0 / horizon
        self.names = list(names)
        self.model = model
        params = dict(model.named_parameters())
        self._live = [params[n] for n in self.names]
        holder = nn.ParameterList([nn.Parameter(p.detach().clone(), requires_grad=False) for p in self._live])
        self.averaged = AveragedModel(holder, multi_avg_fn=get_ema_multi_avg_fn(self.decay))
        self._holder = holder
        self.updates = 0

    def update(self) -> None:
        """After an optimiser step: fold the current weights into the average."""
        with torch.no_grad():
            for mine, live in zip(self._holder, self._live):
                mine.copy_(live)
        self.averaged.update_parameters(self._holder)
        self.updates += 1

    def _averaged(self) -> list[torch.Tensor]:
        return list(self.averaged.module.parameters())

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The averaged weights in the model while the block runs; the raw ones afterwards."""
        if not self.updates:
            yield
            return
        raw = [p.detach().clone() for p in self._live]
        with torch.no_grad():
            for live, avg in zip(self._live, self._averaged()):
                live.copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for live, keep in zip(self._live, raw):
                    live.copy_(keep)

    def keep(self) -> None:
        """End with the averaged weights in the model."""
        if not self.updates:
            return
        with torch.no_grad():
            for live, avg in zip(self._live, self._averaged()):
                live.copy_(avg)
