"""Heatmap colours and the overlay on an image, and the colours of classes in masks and boxes: NumPy and
Pillow only, so views import it without torch."""
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


# Distinct, saturated colours (Glasbey-like) readable over photographs; class k takes entry k - 1 when
# class 0 is the background, so the first object class is always the same strong red.
CLASS_COLOURS = np.array([(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                          (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
                          (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
                          (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128)],
                         dtype=np.uint8)


def class_colours(n: int, background: int | None = 0) -> np.ndarray:
    """``n`` RGB colours (n×3 uint8), one per class; ``background`` (if any) gets grey, the others
    cycle through :data:`CLASS_COLOURS` in order."""
    colours = np.zeros((max(0, n), 3), np.uint8)
    k = 0
    for c in range(max(0, n)):
        if c == background:
            colours[c] = (128, 128, 128)
            continue
        colours[c] = CLASS_COLOURS[k % len(CLASS_COLOURS)]
        k += 1
    return colours


def mask_rgba(mask: np.ndarray, n_classes: int | None = None, ignore_index: int | None = None,
              background: int | None = 0) -> np.ndarray:
    """``mask`` (H×W class indices) as H×W×4 uint8: each class its colour, opaque; the ``background``
    class, ``ignore_index`` pixels and indices outside ``[0, n_classes)`` transparent."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"A mask is an H×W array of class indices, not an array of shape {mask.shape}.")
    index = mask.astype(np.int64, copy=False)
    n = int(n_classes) if n_classes is not None else int(index.max(initial=-1)) + 1
    colours = class_colours(n, background)
    valid = (index >= 0) & (index < n)
    if ignore_index is not None:
        valid &= index != ignore_index
    if background is not None:
        valid &= index != background
    rgba = np.zeros(index.shape + (4,), np.uint8)
    rgba[valid, :3] = colours[index[valid]]
    rgba[valid, 3] = 255
    return rgba
