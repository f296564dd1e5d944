"""Exact, torch-free image preprocessing shared by training, Graft's predictions and ``predict`` on ONNX.

Deployments break when they preprocess differently from training, so there is one implementation,
described completely by :class:`InputSpec` (which is also written into the ONNX metadata). Only NumPy
and Pillow are imported here: ``main.py predict`` runs without torch.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import GraftError

# Pillow modes of 16-bit greyscale (and 32-bit integer "I", treated as 16-bit); these are scaled by
# sixteen_to_eight. 16-bit RGB(A) and grey+alpha files are reduced to 8 bits by Pillow's own decoders.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")
SIXTEEN_BIT_FORMULA = "floor((clip(v, 0, 65535) + 128) / 257)"

RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


@dataclass
class InputSpec:
    """How an image file becomes the network's input tensor.

    Steps, in order: decode and apply the EXIF orientation; convert to RGB, compositing any alpha over
    ``alpha_background`` (16-bit greyscale is first scaled to 8 bits with :func:`sixteen_to_eight`); resize
    so the shorter side is ``resize`` pixels (Pillow, ``interpolation``); centre-crop ``size`` x ``size``;
    scale to [0, 1]; subtract ``mean`` and divide by ``std`` per channel; lay out as CHW float32.
    """

    size: int = 224
    resize: int = 256
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    interpolation: str = "bilinear"
    channel_order: str = "RGB"
    layout: str = "NCHW"
    alpha_background: list[int] = field(default_factory=lambda: [255, 255, 255])

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InputSpec":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def problem(self) -> str | None:
        """What makes this spec unusable (read from a file: a size that is not a positive whole number, a
        mean or std that is not three finite numbers, a zero std …), or None when it is sound."""
        def three(v: Any) -> bool:
            return isinstance(v, (list, tuple)) and len(v) == 3 and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in v)

        for name in ("size", "resize"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                return f"the input {name} must be a positive whole number, not {value!r}"
        if not three(self.mean) or not three(self.std) or any(v == 0 for v in self.std):
            return f"mean {self.mean!r} / std {self.std!r} must be three numbers each (std not 0)"
        if self.interpolation not in RESAMPLE:
            return f"unknown resize filter {self.interpolation!r}"
        if self.channel_order != "RGB" or self.layout != "NCHW":
            return f"unsupported input {self.channel_order!r} {self.layout!r}"
        if not three(self.alpha_background):
            return f"alpha background {self.alpha_background!r} must be three numbers"
        return None

    def describe(self) -> str:
        return (f"{self.channel_order} {self.size}x{self.size} (resize shorter side to {self.resize}, "
                f"{self.interpolation}, centre crop), mean {fmt(self.mean)}, std {fmt(self.std)}")


def fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


def open_image(path: str | Path, *, exif: bool = True) -> Image.Image:
    """Decode an image file fully, upright (EXIF orientation applied, as phones expect; ``exif=False``
    leaves the pixels as stored), or raise GraftError naming the file."""
    try:
        with Image.open(path) as img:
            img.load()
            upright = ImageOps.exif_transpose(img) if exif else img.copy()
            return upright if upright.mode != "P" else upright.convert("RGBA")
    except FileNotFoundError:
        raise GraftError(f"{path}: no such file.") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise GraftError(f"{path}: not a readable image ({exc.__class__.__name__}).") from None


def to_rgb(img: Image.Image, background: list[int] | tuple[int, ...] = (255, 255, 255)) -> Image.Image:
    """RGB view of any mode: alpha is composited over ``background``, grey is replicated."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        base = Image.new("RGBA", rgba.size, tuple(int(c) for c in background) + (255,))
        return Image.alpha_composite(base, rgba).convert("RGB")
    if img.mode in SIXTEEN_BIT_MODES:
        img = Image.fromarray(sixteen_to_eight(np.asarray(img)))
    return img.convert("RGB")


def sixteen_to_eight(values: np.ndarray) -> np.ndarray:
    """16-bit grey values -> uint8, the same for every image whatever its brightness (a dark 16-bit image
    stays dark): clip to [0, 65535], then ``floor((v + 128) / 257)``, which is ``round(v * 255 / 65535)``
    (v * 255 / 65535 is exactly v / 257, and no value lies halfway between two integers)."""
    v = np.clip(np.asarray(values, dtype=np.int64), 0, 65535)
    return ((v + 128) // 257).astype(np.uint8)


def resize_and_crop(img: Image.Image, spec: InputSpec) -> Image.Image:
    """Resize the shorter side to ``spec.resize`` and take the centre ``spec.size`` square."""
    w, h = img.size
    scale = spec.resize / min(w, h)
    nw, nh = max(spec.size, round(w * scale)), max(spec.size, round(h * scale))
    img = img.resize((nw, nh), RESAMPLE[spec.interpolation])
    left, top = (nw - spec.size) // 2, (nh - spec.size) // 2
    return img.crop((left, top, left + spec.size, top + spec.size))


def normalise(img: Image.Image, spec: InputSpec) -> np.ndarray:
    """HWC uint8 RGB image -> CHW float32, scaled and normalised."""
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    arr = (arr - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def preprocess(img: Image.Image, spec: InputSpec) -> np.ndarray:
    """A decoded image -> the network's CHW float32 input, exactly as documented on InputSpec."""
    return normalise(resize_and_crop(to_rgb(img, spec.alpha_background), spec), spec)


def preprocess_file(path: str | Path, spec: InputSpec, *, exif: bool = True) -> np.ndarray:
    """An image file -> the network's CHW float32 input (GraftError naming an unreadable file)."""
    return preprocess(open_image(path, exif=exif), spec)
