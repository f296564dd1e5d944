"""Heatmap colours and the overlay on an image: NumPy and Pillow only, so views import it without torch."""
from __future__ import annotations

import numpy as np
from PIL import Image

# The "turbo" colour map sampled at 17 points (interpolated to 256 entries): blue for little evidence,
# red for the most. Written out, so no plotting library is imported for it.
_TURBO = np.array([(48, 18, 59), (64, 64, 162), (70, 107, 227), (66, 148, 255), (40, 188, 235), (24, 221, 194),
                   (50, 242, 152), (109, 254, 98), (164, 252, 60), (205, 236, 52), (238, 207, 58), (253, 172, 52),
                   (251, 126, 33), (235, 80, 14), (208, 47, 5), (169, 22, 1), (122, 4, 3)], dtype=np.float32)
COLOURS = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_TURBO)), _TURBO[:, c])
                    for c in range(3)], axis=1).round().astype(np.uint8)


def colourise(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (H×W) -> H×W×3 uint8 colours of :data:`COLOURS`."""
    index = np.clip(np.nan_to_num(values) * 255 + 0.5, 0, 255).astype(np.uint8)
    return COLOURS[index]


def overlay(image: Image.Image, values: np.ndarray, alpha: float = 0.6) -> Image.Image:
    """``values`` (H×W in [0, 1]) drawn over ``image`` (resized to match): the more evidence, the more
    colour, so the image stays readable where there is none. ``alpha`` 0 shows the image alone."""
    rgb = image.convert("RGB")
    h, w = values.shape
    if rgb.size != (w, h):
        rgb = rgb.resize((w, h), Image.Resampling.BILINEAR)
    base = np.asarray(rgb, dtype=np.float32)
    weight = (float(alpha) * (0.25 + 0.75 * np.clip(values, 0, 1)))[..., None]
    mixed = base * (1 - weight) + colourise(values).astype(np.float32) * weight
    return Image.fromarray(np.clip(mixed + 0.5, 0, 255).astype(np.uint8), "RGB")
