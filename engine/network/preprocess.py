"""Exact, torch-free image preprocessing shared by training, Graft's predictions and ``predict`` on ONNX.

Deployments break when they preprocess differently from training, so there is one implementation,
described completely by :class:`InputSpec` (which is also written into the ONNX metadata). Only NumPy
and Pillow are imported here: ``main.py predict`` runs without torch.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import GraftError
from engine.units import finite_number, quoted

# Pillow modes of 16-bit greyscale (and 32-bit integer "I", treated as 16-bit); these are scaled by
# sixteen_to_eight. 16-bit RGB(A) and grey+alpha files are reduced to 8 bits by Pillow's own decoders.
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I")
SIXTEEN_BIT_FORMULA = "floor((clip(v, 0, 65535) + 128) / 257)"

RESAMPLE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
            "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}

# Extra bands (infrared, depth …) of a 4+-channel input are normalised with the mean of the RGB means and
# stds: the first convolution's kernels for them start as the mean of its RGB kernels (see
# engine.surgery.operations.SetInputChannels), so they see values on the scale those kernels learned.
TIFF_SIGNATURES = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF
MAX_CHANNELS = 64


def channel_order_for(channels: int) -> str:
    """``L`` (one grey channel), ``RGB``, or ``RGB+N``: red, green, blue, then N more bands in file order."""
    return {1: "L", 3: "RGB"}.get(channels, f"RGB+{channels - 3}")


FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_channels(channels: Any) -> str | None:
    """Why ``channels`` is no input channel count Graft reads (None when it is one)."""
    if isinstance(channels, bool) or not isinstance(channels, int):
        return f"the number of input channels must be a whole number, not {quoted(channels)}"
    if channels < 1 or channels == 2 or channels > MAX_CHANNELS:
        return (f"the number of input channels must be 1 (greyscale), 3 (RGB) or 4 to {MAX_CHANNELS} "
                f"(RGB plus extra bands), not {channels}")
    return None


def _numbers(count: int) -> str:
    return {1: "one number", 3: "three numbers"}.get(count, f"{count} numbers")


@dataclass
class InputSpec:
    """How an image file becomes the network's input tensor.

    Steps, in order: decode and apply the EXIF orientation; convert to RGB, compositing any alpha over
    ``alpha_background`` (16-bit greyscale is first scaled to 8 bits with :func:`sixteen_to_eight`); resize
    so the shorter side is ``resize`` pixels (Pillow, ``interpolation``); centre-crop ``size`` x ``size``;
    scale to [0, 1]; subtract ``mean`` and divide by ``std`` per channel; lay out as CHW float32.

    ``channels`` other than 3 (set by the input-channels surgery): 1 converts to greyscale (Pillow's "L",
    after the same alpha compositing) instead of RGB; 4 or more reads the file's bands as they are (an
    RGBA image keeps its alpha as the 4th band; a TIFF may hold any number of bands, read with tifffile)
    and resizes each band on its own. ``channel_order`` names them (:func:`channel_order_for`); ``mean``
    and ``std`` have one value per channel.
    """

    size: int = 224
    resize: int = 256
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    interpolation: str = "bilinear"
    channel_order: str = "RGB"
    layout: str = "NCHW"
    alpha_background: list[int] = field(default_factory=lambda: [255, 255, 255])
    channels: int = 3

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InputSpec":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def problem(self) -> str | None:
        """What makes this spec unusable (read from a file: a size that is not a positive whole number, a
        mean or std that is not three finite numbers, a zero std …), or None when it is sound."""
        def numbers(v: Any, count: int = 3) -> bool:
            return isinstance(v, (list, tuple)) and len(v) == count and all(
                finite_number(x) for x in v)

        for name in ("size", "resize"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                return f"the input {name} must be a positive whole number, not {quoted(value)}"
        channels = check_channels(self.channels)
        if channels:
            return channels
        n = self.channels
        if not numbers(self.mean, n) or not numbers(self.std, n) or any(v == 0 for v in self.std):
            return f"mean {quoted(self.mean)} / std {quoted(self.std)} must be {_numbers(n)} each (std not 0)"
        if any(max(abs(m), abs(1 - m)) / abs(s) > FLOAT32_MAX for m, s in zip(self.mean, self.std)):
            # e.g. std 5e-324: every pixel became inf, every prediction NaN (found by the ONNX metadata fuzz)
            return f"mean {quoted(self.mean)} / std {quoted(self.std)} scale pixels past float32's range"
        if not isinstance(self.interpolation, str) or self.interpolation not in RESAMPLE:
            return f"unknown resize filter {quoted(self.interpolation)}"
        if self.channel_order != channel_order_for(n) or self.layout != "NCHW":
            return f"unsupported input {quoted(self.channel_order)} {quoted(self.layout)} for {n} channels"
        if not numbers(self.alpha_background):
            return f"alpha background {quoted(self.alpha_background)} must be three numbers"
        return None

    def with_channels(self, channels: int, rgb_mean: list[float] | None = None,
                      rgb_std: list[float] | None = None) -> "InputSpec":
        """This spec for ``channels`` input channels, its statistics derived from the RGB ones (``rgb_*``,
        default this spec's own, which must then be RGB): one grey channel gets the mean of the RGB means
        and stds; extra bands get that mean too, after the RGB values."""
        rgb_mean = list(self.mean if rgb_mean is None else rgb_mean)
        rgb_std = list(self.std if rgb_std is None else rgb_std)
        grey_mean, grey_std = sum(rgb_mean) / len(rgb_mean), sum(rgb_std) / len(rgb_std)
        if channels == 1:
            mean, std = [grey_mean], [grey_std]
        else:
            mean, std = rgb_mean + [grey_mean] * (channels - 3), rgb_std + [grey_std] * (channels - 3)
        return replace(self, channels=channels, channel_order=channel_order_for(channels), mean=mean, std=std)

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
    except UnidentifiedImageError as exc:
        if is_tiff(path):  # one Pillow does not read (odd tags, more bands): the data check read it with tifffile
            return _tiff_image(path, exif)
        raise GraftError(f"{path}: not a readable image ({exc.__class__.__name__}).") from None
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise GraftError(f"{path}: not a readable image ({exc.__class__.__name__}).") from None


def _tiff_image(path: str | Path, exif: bool) -> Image.Image:
    """A TIFF that Pillow does not read, read by tifffile, as a greyscale or RGB image. Other band counts
    are refused: a 4th band of a TIFF is no alpha (infrared, depth …), and a network of that many channels
    reads them all (the input-channels surgery)."""
    arr = read_tiff(path, exif=exif)
    bands = arr.shape[2]
    if bands not in (1, 3):
        raise GraftError(f"{Path(path).name} has {bands} bands, but this model reads greyscale or RGB images; "
                         f"the input-channels surgery makes one that reads {bands}.")
    return Image.fromarray(arr[:, :, 0] if bands == 1 else arr)


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


def crop_geometry(width: int, height: int, spec: InputSpec) -> tuple[int, int, int, int]:
    """``(resized width, resized height, left, top)`` of :func:`resize_and_crop` on a ``width`` × ``height``
    image: where the input's square lies, for masks and boxes that must follow the image."""
    scale = spec.resize / min(width, height)
    nw, nh = max(spec.size, round(width * scale)), max(spec.size, round(height * scale))
    return nw, nh, (nw - spec.size) // 2, (nh - spec.size) // 2


def resize_and_crop(img: Image.Image, spec: InputSpec, resample: str | None = None) -> Image.Image:
    """Resize the shorter side to ``spec.resize`` and take the centre ``spec.size`` square (``resample``:
    another filter than the spec's, e.g. "nearest" for a mask of class indices)."""
    nw, nh, left, top = crop_geometry(*img.size, spec)
    img = img.resize((nw, nh), RESAMPLE[resample or spec.interpolation])
    return img.crop((left, top, left + spec.size, top + spec.size))


def normalise(img: Image.Image | np.ndarray, spec: InputSpec) -> np.ndarray:
    """HWC (or HW: one channel) uint8 image -> CHW float32, scaled and normalised."""
    arr = np.asarray(img, dtype=np.float32) / np.float32(255.0)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    arr = (arr - np.asarray(spec.mean, dtype=np.float32)) / np.asarray(spec.std, dtype=np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def to_grey(img: Image.Image, background: list[int] | tuple[int, ...] = (255, 255, 255)) -> Image.Image:
    """Greyscale ("L") view of any mode: 8-bit grey as it is, 16-bit grey scaled by :func:`sixteen_to_eight`,
    anything else through :func:`to_rgb` (alpha composited) and Pillow's ITU-R 601-2 luma
    (L = R * 299/1000 + G * 587/1000 + B * 114/1000)."""
    if img.mode == "L":
        return img
    if img.mode in SIXTEEN_BIT_MODES:
        return Image.fromarray(sixteen_to_eight(np.asarray(img)))
    return to_rgb(img, background).convert("L")


def _band_problem(name: str, bands: int, what: str, channels: int) -> GraftError:
    extra = channels - 3
    return GraftError(f"{name} has {bands} band{'' if bands == 1 else 's'} ({what}), but this model reads "
                      f"{channels} channels: RGB plus {extra} more band{'' if extra == 1 else 's'}, from "
                      + ("an RGBA image or " if channels == 4 else "") + f"a {channels}-band TIFF.")


def is_tiff(path: str | Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) in TIFF_SIGNATURES
    except OSError:
        return False


def _image_bands(img: Image.Image, name: str, channels: int) -> np.ndarray:
    """An RGBA (or RGBX) image's four bands, alpha kept as it is (HxWx4 uint8)."""
    if img.mode in ("RGBA", "RGBX", "RGBa") and channels == 4:
        return np.asarray(img.convert("RGBA") if img.mode == "RGBa" else img, dtype=np.uint8)
    raise _band_problem(name, len(img.getbands()), img.mode, channels)


_ORIENT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
           5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 1)[::-1],
           8: lambda a: np.rot90(a, 1)}


def _check_tiff_shape(path: str | Path, shape: Sequence[int], axes: str) -> None:
    """Refuse a TIFF of no pixels, or one larger than Pillow decodes (twice ``Image.MAX_IMAGE_PIXELS``, as
    Pillow's own DecompressionBombError), before tifffile allocates what its header claims: a few bytes can
    say 20,000 x 20,000 x 5 (2 GB)."""
    pixels = math.prod(n for n, a in zip(shape, axes) if a in "YX")
    if not pixels:
        raise GraftError(f"{path}: empty image (0 pixels wide or high).")
    limit = Image.MAX_IMAGE_PIXELS
    if not limit:
        return
    if pixels > 2 * limit or math.prod(shape) > 8 * limit:  # 8: a 4-band image at the limit, 2x
        raise GraftError(f"{path}: image too large ({pixels:,} pixels in {math.prod(shape):,} values; Graft "
                         f"reads up to {2 * limit:,} pixels, as Pillow does).")


def read_tiff(path: str | Path, exif: bool = True) -> np.ndarray:
    """All bands of a TIFF's first image as HxWxC uint8 (16-bit bands scaled by :func:`sixteen_to_eight`),
    turned upright by its orientation tag as Pillow's exif_transpose would (``exif=False``: as stored)."""
    import tifffile

    name = Path(path).name
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            _check_tiff_shape(path, series.shape, series.axes)
            arr, axes = series.asarray(), series.axes
            orientation = int(getattr(tif.pages[0], "orientation", 1) or 1)
    except GraftError:
        raise
    except FileNotFoundError:
        raise GraftError(f"{path}: no such file.") from None
    except Exception as exc:  # noqa: BLE001 - tifffile's errors have no common base beyond these
        raise GraftError(f"{path}: not a readable image ({exc.__class__.__name__}).") from None
    keep = [i for i, a in enumerate(axes) if a in "YX" or arr.shape[i] > 1]
    arr = arr.reshape([arr.shape[i] for i in keep])
    axes = "".join(axes[i] for i in keep)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    elif arr.ndim != 3 or "Y" not in axes or "X" not in axes:
        raise GraftError(f"{name}: a TIFF of {arr.ndim} dimensions ({axes}); Graft reads one image of "
                         "height x width x bands.")
    else:
        band_axis = next(i for i, a in enumerate(axes) if a not in "YX")
        arr = np.moveaxis(arr, band_axis, -1)
        if axes.index("Y") > axes.index("X"):
            arr = arr.transpose(1, 0, 2)
    if arr.dtype == np.uint8:
        pass
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype in (np.uint16, np.int16, np.uint32, np.int32):
        arr = sixteen_to_eight(arr)
    else:
        raise GraftError(f"{name}: its bands are {arr.dtype}; Graft reads 8- or 16-bit integer bands.")
    if exif and orientation in _ORIENT:
        arr = _ORIENT[orientation](arr)
    return np.ascontiguousarray(arr)


def read_bands(path: str | Path, channels: int, *, exif: bool = True) -> np.ndarray:
    """The ``channels`` bands of an image file (HxWxC uint8) for a 4+-channel input: a TIFF's bands (any
    number) or an RGBA image's; GraftError naming the file when it has another number of bands."""
    if is_tiff(path):
        arr = read_tiff(path, exif=exif)
        if arr.shape[2] != channels:
            raise _band_problem(Path(path).name, arr.shape[2], _BAND_WORDS.get(arr.shape[2], "TIFF"), channels)
        return arr
    problem = _pillow_band_problem(path, channels)
    if problem:
        raise GraftError(problem)
    return _image_bands(open_image(path, exif=exif), Path(path).name, channels)


_BAND_WORDS = {1: "greyscale", 3: "RGB"}
FOUR_BAND_MODES = ("RGBA", "RGBX", "RGBa")  # RGB plus a 4th band; CMYK is print colour, not RGB + a band


def _pillow_band_problem(path: str | Path, channels: int) -> str | None:
    try:
        with Image.open(path) as img:
            mode = img.mode
            if mode == "P":  # a palette's transparency is a real 4th band; its colours are RGB
                mode = "RGBA" if "transparency" in img.info else "RGB (palette)"
            bands = len(img.getbands()) if mode == img.mode else (4 if mode == "RGBA" else 3)
    except Exception:  # noqa: BLE001 - decoding it will say what is wrong
        return None
    if channels == 4 and mode in FOUR_BAND_MODES:
        return None
    return str(_band_problem(Path(path).name, bands, mode, channels))


def band_count_problem(path: str | Path, channels: int) -> str | None:
    """Cheap check (headers only) that an image file has the ``channels`` bands a 4+-channel input reads:
    None when it has, else the reason; unreadable files are left to the decoder to report."""
    if not is_tiff(path):
        return _pillow_band_problem(path, channels)
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            others = [n for n, a in zip(series.shape, series.axes) if a not in "YX" and n > 1]
    except Exception:  # noqa: BLE001
        return None
    if len(others) > 1:
        return None  # decoding refuses it with the reason
    bands = others[0] if others else 1
    return None if bands == channels else str(_band_problem(Path(path).name, bands,
                                                            _BAND_WORDS.get(bands, "TIFF"), channels))


def preprocess_bands(bands: np.ndarray, spec: InputSpec) -> np.ndarray:
    """HxWxC uint8 bands -> the network's CHW float32 input: each band resized and cropped on its own
    (as an 8-bit greyscale image, so no band is weighted by another as Pillow does for RGBA's alpha)."""
    planes = [np.asarray(resize_and_crop(Image.fromarray(np.ascontiguousarray(bands[:, :, i])), spec))
              for i in range(bands.shape[2])]
    return normalise(np.stack(planes, axis=-1), spec)


def preprocess(img: Image.Image, spec: InputSpec) -> np.ndarray:
    """A decoded image -> the network's CHW float32 input, exactly as documented on InputSpec."""
    if spec.channels == 1:
        return normalise(resize_and_crop(to_grey(img, spec.alpha_background), spec), spec)
    if spec.channels > 3:
        return preprocess_bands(_image_bands(img, "the image", spec.channels), spec)
    return normalise(resize_and_crop(to_rgb(img, spec.alpha_background), spec), spec)


def preprocess_file(path: str | Path, spec: InputSpec, *, exif: bool = True) -> np.ndarray:
    """An image file -> the network's CHW float32 input (GraftError naming an unreadable file, or one
    without the bands a 4+-channel input reads)."""
    return load_input(path, spec, exif=exif)[0]


def load_input(path: str | Path, spec: InputSpec, *, exif: bool = True) -> tuple[np.ndarray, tuple[int, int]]:
    """:func:`preprocess_file` and the upright image's ``(width, height)`` (where masks and boxes of the
    input square lie in the image: :func:`crop_geometry`)."""
    if spec.channels > 3:
        bands = read_bands(path, spec.channels, exif=exif)
        return preprocess_bands(bands, spec), (int(bands.shape[1]), int(bands.shape[0]))
    img = open_image(path, exif=exif)
    return preprocess(img, spec), img.size
