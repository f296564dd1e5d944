"""Demo shapes drawn where a check expects them (shared by the explain tests)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from engine.data.demo_data import shape_mask

CANVAS = (320, 256)  # wider than tall: the resize keeps 256 rows, the centre crop drops 48 columns each side
CROP = (48, 16)  # where the model's 224 x 224 input starts in the canvas (lite0: resize 256, crop 224)


def draw(shape: str, centre: tuple[float, float], radius: float = 34, colour=(200, 40, 40), grey: int = 150,
         canvas: tuple[int, int] = CANVAS, angle: float = 0.0) -> Image.Image:
    """One demo shape on a plain canvas; ``centre`` in canvas pixels."""
    w, h = canvas
    side = max(w, h)
    mask = shape_mask(shape, side, centre[0], centre[1], radius, angle)[:h, :w, None]
    img = np.full((h, w, 3), grey, np.float32) * (1 - mask) + np.asarray(colour, np.float32) * mask
    return Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8))


def quadrant_centre(quadrant: int, size: int = 224) -> tuple[float, float]:
    """The centre of quadrant 0 (top left), 1 (top right), 2 (bottom left), 3 (bottom right) of the
    model's input, in canvas pixels."""
    x = size * (0.25 if quadrant in (0, 2) else 0.75) + CROP[0]
    y = size * (0.25 if quadrant in (0, 1) else 0.75) + CROP[1]
    return x, y
