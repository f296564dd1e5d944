"""A dense head's answer drawn on a picture with Pillow (the HTML report, headless): the predicted mask in
its class colours at an opacity, the true boxes in white and the predicted ones in their class colours with
``name 0.87`` captions. Same colours as the window's overlays (:mod:`engine.explain.colours`).
"""
from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from engine.explain.colours import class_colours, mask_rgba

MASK_OPACITY = 0.5


def _boxes(overlay: dict[str, Any], prefix: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    boxes = np.asarray(overlay.get(f"{prefix}boxes", np.zeros((0, 4))), dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(overlay.get(f"{prefix}labels", np.zeros(len(boxes))), dtype=np.int64).reshape(-1)
    scores = None if prefix else np.asarray(overlay.get("scores", np.ones(len(boxes))), dtype=np.float64).reshape(-1)
    return boxes, labels, scores


def draw_overlay(picture: Image.Image, overlay: dict[str, Any], opacity: float = MASK_OPACITY,
                 threshold: float | None = None) -> Image.Image:
    """``picture`` (what the network saw) with ``overlay`` drawn on it — an
    :attr:`engine.explain.mistakes.Example.overlay`: a mask stretched over the picture, or boxes in pixels
    of its ``frame`` (the picture's own size when none), predicted ones scoring below ``threshold`` (default
    the overlay's) left out."""
    out = picture.convert("RGB")
    names = list(overlay.get("names") or [])
    if overlay.get("kind") == "segment" and overlay.get("mask") is not None:
        mask = np.asarray(overlay["mask"])
        rgba = mask_rgba(mask, len(names) or None, overlay.get("ignore_index"))
        rgba[..., 3] = (rgba[..., 3].astype(np.float32) * opacity).astype(np.uint8)
        layer = Image.fromarray(rgba, "RGBA").resize(out.size, Image.Resampling.NEAREST)
        return Image.alpha_composite(out.convert("RGBA"), layer).convert("RGB")
    if overlay.get("kind") != "detect":
        return out
    frame = overlay.get("frame") or out.size
    sx, sy = out.width / frame[0], out.height / frame[1]
    draw = ImageDraw.Draw(out)
    t_boxes, _, _ = _boxes(overlay, "truth_")
    for x0, y0, x1, y1 in t_boxes:
        draw.rectangle([x0 * sx, y0 * sy, x1 * sx, y1 * sy], outline=(255, 255, 255), width=1)
    boxes, labels, scores = _boxes(overlay)
    cut = overlay.get("threshold", 0.0) if threshold is None else threshold
    colours = class_colours(max(len(names), int(labels.max(initial=-1)) + 1), background=None)
    for (x0, y0, x1, y1), label, score in zip(boxes, labels, scores):
        if score < cut:
            continue
        colour = tuple(int(c) for c in colours[label]) if 0 <= label < len(colours) else (255, 0, 0)
        rect = [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
        draw.rectangle(rect, outline=colour, width=2)
        text = f"{names[label] if 0 <= label < len(names) else label} {score:.2f}"
        left, top, right, bottom = draw.textbbox((0, 0), text)
        y = rect[1] - (bottom - top) - 3 if rect[1] - (bottom - top) - 3 >= 0 else rect[1]
        draw.rectangle([rect[0], y, rect[0] + right - left + 4, y + bottom - top + 3], fill=colour)
        ink = (0, 0, 0) if sum(colour) > 380 else (255, 255, 255)
        draw.text((rect[0] + 2, y + 1 - top), text, fill=ink)
    return out
