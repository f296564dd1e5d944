"""Segmentation masks drawn over an image: class colours, the mask as an RGBA picture, a legend.

Plain NumPy in, so any caller can use it: a mask is an H×W array of class indices (``ignore_index``
pixels and, by default, class 0 — the background — stay transparent). The picture is made once per mask
(:func:`mask_rgba`); the opacity is applied when painting, so moving the opacity slider only repaints.
"""
from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy as np
from PySide6.QtGui import QImage

from engine.explain.colours import CLASS_COLOURS, class_colours, mask_rgba  # noqa: F401 (part of this API)


def colour_hex(rgb: Sequence[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb[:3]))


def qimage_from_rgba(rgba: np.ndarray) -> QImage:
    """An H×W×4 uint8 array as a QImage that owns a copy of the pixels."""
    rgba = np.ascontiguousarray(rgba, dtype=np.uint8)
    h, w = rgba.shape[:2]
    return QImage(rgba.data, w, h, 4 * w, QImage.Format.Format_RGBA8888).copy()


def class_shares(mask: np.ndarray, names: Sequence[str], ignore_index: int | None = None) -> list[tuple[int, float]]:
    """``(class, share of the counted pixels)`` for every class present, largest first (ignored pixels
    and indices without a name are not counted)."""
    index = np.asarray(mask).astype(np.int64, copy=False).ravel()
    keep = (index >= 0) & (index < len(names))
    if ignore_index is not None:
        keep &= index != ignore_index
    index = index[keep]
    if index.size == 0:
        return []
    counts = np.bincount(index, minlength=len(names))
    present = [(c, counts[c] / index.size) for c in np.flatnonzero(counts)]
    return sorted(((int(c), float(s)) for c, s in present), key=lambda cs: (-cs[1], cs[0]))


def legend_html(mask: np.ndarray, names: Sequence[str], ignore_index: int | None = None,
                background: int | None = 0, limit: int = 6) -> str:
    """``■ circle 12.3% · ■ square 4.1%``: the classes the mask shows (not the background), with the
    share of the image each covers, in their overlay colours."""
    colours = class_colours(len(names), background)
    parts = [f"<span style='color:{colour_hex(colours[c])}'>■</span> {escape(str(names[c]))} {share:.1%}"
             for c, share in class_shares(mask, names, ignore_index) if c != background]
    if not parts:
        return "<span style='color:#607d8b'>no object pixels</span>"
    more = len(parts) - limit
    return " · ".join(parts[:limit]) + (f" · +{more} more" if more > 0 else "")


class MaskLayer:
    """One mask ready to paint: the picture (made once) and what the legend says. The mask is stretched
    over ``region`` of the image (all of it by default), whatever its own size."""

    def __init__(self, mask: np.ndarray, names: Sequence[str] = (), ignore_index: int | None = None,
                 background: int | None = 0, title: str = "",
                 region: tuple[float, float, float, float] | None = None) -> None:
        self.mask = np.asarray(mask)
        self.region = region  # the part of the image (x0, y0, x1, y1 pixels) the mask covers; None: all
        self.image_size: tuple[int, int] | None = None  # the image's pixels ``region`` counts in; None: as shown
        n = len(names) if names else int(self.mask.max(initial=-1)) + 1
        self.names = list(names) if names else [str(i) for i in range(n)]
        self.ignore_index = ignore_index
        self.background = background
        self.title = title
        self.image = qimage_from_rgba(mask_rgba(self.mask, n, ignore_index, background))

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.mask.shape[0]), int(self.mask.shape[1])

    def legend(self) -> str:
        return legend_html(self.mask, self.names, self.ignore_index, self.background)
