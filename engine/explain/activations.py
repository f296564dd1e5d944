"""A layer's strongest channels for one image, as small maps over the image (Captum's LayerActivation).

Token sequences (ViT) are laid out on their patch grid; a layer without a spatial output gets a
GraftError saying so, which a view shows in place of the grid.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from engine.explain.colours import colourise
from engine.explain.heatmap import model_input
from engine.explain.layers import SpatialForm, check_hookable, grid_probe, resolve_layer

DEFAULT_COUNT = 16


@dataclass
class Activations:
    """``maps``: ``(k, H, W)`` float32, each channel scaled to [0, 1] on its own (its minimum 0, its
    maximum 1); ``channels``: their indices in the layer, strongest first; ``strengths``: their mean
    absolute activation, which orders them. ``image``: the model's input (RGB ``size × size``)."""

    layer: str
    form: SpatialForm
    channels: list[int]
    strengths: list[float]
    maps: np.ndarray
    image: Image.Image
    seconds: float = 0.0

    def describe(self) -> str:
        return f"{self.layer}: the {len(self.channels)} strongest of {self.form.describe()}"

    def grid_image(self, columns: int | None = None, cell: int = 64, gap: int = 2) -> Image.Image:
        """The maps side by side (colour-mapped, ``cell`` pixels square), strongest first, row by row."""
        k = len(self.channels)
        columns = columns or max(1, int(np.ceil(np.sqrt(k))))
        rows = max(1, int(np.ceil(k / columns)))
        sheet = Image.new("RGB", (columns * (cell + gap) - gap, rows * (cell + gap) - gap), (255, 255, 255))
        for i in range(k):
            tile = Image.fromarray(colourise(self.maps[i]), "RGB").resize((cell, cell), Image.Resampling.NEAREST)
            sheet.paste(tile, ((i % columns) * (cell + gap), (i // columns) * (cell + gap)))
        return sheet


def activations(session: Any, image: str | os.PathLike | Image.Image, layer: str | None = None,
                count: int = DEFAULT_COUNT) -> Activations:
    """The ``count`` strongest channels of ``layer`` (default: the last spatial layer the heads read) for
    ``image``. GraftError for an unreadable image, a TorchScript network, or a layer that does not run or
    has no spatial output."""
    from captum.attr import LayerActivation

    start = time.perf_counter()
    body = check_hookable(session)
    view, x = model_input(session, image)
    path, form = resolve_layer(session, layer)
    model = session.model
    x = x.to(next(iter(model.parameters()), torch.zeros(())).device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), grid_probe(body, path, form) as probe:
            # The forward may end early (a cut trunk); whatever it returns, the probe has seen the layer.
            grid = LayerActivation(lambda batch: _first_output(model(batch)), probe).attribute(x)
    finally:
        model.train(was_training)
    maps = grid[0].detach().float().cpu()
    strength = maps.abs().mean(dim=(1, 2))
    order = torch.argsort(strength, descending=True)[:max(1, int(count))]
    chosen = maps[order]
    low = chosen.flatten(1).amin(dim=1)[:, None, None]
    high = chosen.flatten(1).amax(dim=1)[:, None, None]
    scaled = torch.where(high > low, (chosen - low) / (high - low).clamp(min=1e-12), torch.zeros_like(chosen))
    return Activations(path, form, order.tolist(), strength[order].tolist(), scaled.numpy().astype(np.float32),
                       view, time.perf_counter() - start)


def _first_output(outputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return next(iter(outputs.values()))
