"""Image files fuzzed (Hypothesis): every format Graft reads (PNG, JPEG, GIF, BMP, WebP, TIFF, multi-band
TIFF) in every mode Pillow writes there (1, L, LA, P with and without transparency, RGB, RGBA, CMYK, I;16,
I, F), 1x1 to 64x64, animated (GIF, APNG, WebP), EXIF orientations 1-8, then truncated at any byte, bytes
flipped, or named with the wrong extension. Property: the data checks (check_image, quick_check,
band_count_problem) return a reason and never raise; decoding (open_image, preprocess_file for 1, 3, 4 and 5
channels) returns the network's input (finite float32, channels x size x size) or raises one readable
GraftError; an image the full check passes must decode for an RGB network (else training stops on a file the
check let through). Each call runs in a forked child: 30 s, 300 MB at most, nothing written.

Decompression bombs: 20,000 x 20,000 files (a real PNG; JPEG, GIF, BMP and TIFF headers that say so; a
5-band TIFF that Pillow does not read, so tifffile does) are refused with a GraftError, or a reason from the
checks, within the same 300 MB."""
from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st
from PIL import Image

from engine.data.decoding import check_image, quick_check
from engine.network.preprocess import InputSpec, band_count_problem, open_image, preprocess_file
from fuzz_support import check, flip_bytes, readable

MEMORY_MB = 300
SPECS = {1: InputSpec(size=16, resize=18).with_channels(1), 3: InputSpec(size=16, resize=18),
         4: InputSpec(size=16, resize=18).with_channels(4), 5: InputSpec(size=16, resize=18).with_channels(5)}
# Which modes each format writes (what Pillow can save there).
MODES = {"PNG": ["1", "L", "LA", "P", "PT", "RGB", "RGBA", "I;16"], "JPEG": ["L", "RGB", "CMYK"],
         "GIF": ["L", "P", "PT", "RGB"], "BMP": ["1", "L", "P", "RGB", "RGBA"], "WEBP": ["RGB", "RGBA"],
         "TIFF": ["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]}
MORE_BANDS = re.compile(r"has \d+ bands")  # a TIFF of other bands than grey or RGB: read by a network of as many
SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif"}


def make(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    if mode in ("P", "PT"):
        img = Image.fromarray(rng.integers(0, 16, (h, w), dtype=np.uint8), "L").convert("P")
        img.putpalette(list(rng.integers(0, 256, 768, dtype=np.uint8)))
        if mode == "PT":
            img.info["transparency"] = 3
        return img
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(-2 ** 31, 2 ** 31 - 1, (h, w), dtype=np.int32))
    if mode == "F":
        return Image.fromarray(rng.normal(0, 1000, (h, w)).astype(np.float32))
    bands = {"1": 1, "L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "CMYK": 4}[mode]
    arr = rng.integers(0, 256, (h, w, bands) if bands > 1 else (h, w), dtype=np.uint8)
    return Image.fromarray(arr, "L").convert("1") if mode == "1" else Image.fromarray(arr, mode)


@st.composite
def image_files(draw) -> tuple[str, bytes]:
    """``(file name, bytes)``: an image in any format, mode and size, maybe animated or rotated by EXIF,
    maybe truncated, with flipped bytes or the wrong extension."""
    fmt = draw(st.sampled_from(sorted(MODES) + ["TIFF-bands"]))
    size = (draw(st.integers(1, 64)), draw(st.integers(1, 64)))
    seed = draw(st.integers(0, 2 ** 16))
    buffer = io.BytesIO()
    if fmt == "TIFF-bands":
        import tifffile

        bands = draw(st.sampled_from([2, 4, 5, 7]))
        dtype = draw(st.sampled_from([np.uint8, np.uint16, np.float32, np.int8, np.bool_]))
        arr = np.random.default_rng(seed).integers(0, 200, (size[1], size[0], bands)).astype(dtype)
        planar = draw(st.sampled_from(["contig", "separate"]))
        if planar == "separate":
            arr = np.ascontiguousarray(np.moveaxis(arr, -1, 0))
        tifffile.imwrite(buffer, arr, photometric="minisblack", planarconfig=planar)
        fmt = "TIFF"
    else:
        mode = draw(st.sampled_from(MODES[fmt]))
        img = make(mode, size, seed)
        options = {}
        if fmt in ("GIF", "PNG", "WEBP") and draw(st.booleans()):  # animated: GIF, APNG, WebP
            frames = [make(mode, size, seed + k) for k in range(1, draw(st.integers(2, 4)))]
            options.update(save_all=True, append_images=frames, duration=40, loop=0)
        if fmt in ("JPEG", "PNG", "WEBP", "TIFF") and draw(st.booleans()):
            exif = Image.Exif()
            exif[0x0112] = draw(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 0, 9, 65535]))  # orientation
            options["exif"] = exif.tobytes()
        if mode == "PT" and fmt == "PNG":
            options["transparency"] = 3
        img.save(buffer, fmt, **options)
    data = buffer.getvalue()
    damage = draw(st.sampled_from(["none", "none", "truncate", "flip", "junk"]))
    if damage == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif damage == "flip":
        data = flip_bytes(draw, data)
    elif damage == "junk":
        data += draw(st.binary(min_size=1, max_size=64))
    suffix = SUFFIX[fmt] if draw(st.integers(0, 3)) else draw(st.sampled_from(list(SUFFIX.values()) + ["", ".txt"]))
    return f"fuzzed{suffix}", data


def decode_each(path: Path) -> str:
    """As :func:`decode_all`, but a GraftError for one channel count does not hide the others."""
    from engine.errors import GraftError

    reasons = [check_image(path), quick_check(path), band_count_problem(path, 4), band_count_problem(path, 5)]
    assert all(r is None or (isinstance(r, str) and r) for r in reasons), reasons
    results = []
    for channels, spec in SPECS.items():
        try:
            x = preprocess_file(path, spec)
        except GraftError as exc:
            assert readable(str(exc)), str(exc)[:500]
            if channels == 3 and reasons[0] is None and not MORE_BANDS.search(str(exc)):
                raise AssertionError(f"check_image passed it, yet an RGB network cannot read it: {exc}") from None
            results.append(f"{channels}: refused")
            continue
        assert x.dtype == np.float32 and x.shape == (channels, spec.size, spec.size), (x.dtype, x.shape)
        assert np.isfinite(x).all(), "non-finite input"
        results.append(f"{channels}: ok")
    return f"check {reasons[0]!r}; " + ", ".join(results)


@given(image=image_files())
@pytest.mark.slow
def test_any_image_file_decodes_or_is_refused_clearly(tmp_path_factory, image):
    name, data = image
    folder = tmp_path_factory.mktemp("img", numbered=True)
    path = folder / name
    path.write_bytes(data)
    check(decode_each, path, memory_mb=MEMORY_MB, label="image file")


@given(data=st.binary(max_size=2000), suffix=st.sampled_from([".png", ".jpg", ".tif", ".gif", ".bin"]))
@pytest.mark.slow
def test_any_bytes_as_an_image(tmp_path_factory, data, suffix):
    path = tmp_path_factory.mktemp("bytes", numbered=True) / f"x{suffix}"
    path.write_bytes(data)
    check(decode_each, path, memory_mb=MEMORY_MB, label="image file (raw bytes)")


# -- decompression bombs -----------------------------------------------------------------------------------
BOMB = 20_000


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def bomb_png() -> bytes:
    """A real, valid 20,000 x 20,000 black-and-white PNG (1 bit a pixel: 400 million pixels, 50 MB of rows,
    a few hundred KB compressed; Pillow would decode it to 400 MB)."""
    squash = zlib.compressobj(9)
    rows = (b"\x00" * (BOMB // 8 + 1)) * 100
    body = b"".join(squash.compress(rows) for _ in range(BOMB // 100)) + squash.flush()
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", BOMB, BOMB, 1, 0, 0, 0, 0))
            + png_chunk(b"IDAT", body) + png_chunk(b"IEND", b""))


def patched_jpeg() -> bytes:
    """A small JPEG whose frame header (SOF0) says 20,000 x 20,000."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (9, 9, 9)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    at = data.index(b"\xff\xc0")
    data[at + 5:at + 9] = struct.pack(">HH", BOMB, BOMB)
    return bytes(data)


def patched_gif() -> bytes:
    buffer = io.BytesIO()
    Image.new("P", (16, 16)).save(buffer, "GIF")
    data = bytearray(buffer.getvalue())
    data[6:10] = struct.pack("<HH", BOMB, BOMB)
    at = data.index(b"\x2c")  # the image descriptor's size too
    data[at + 5:at + 9] = struct.pack("<HH", BOMB, BOMB)
    return bytes(data)


def patched_bmp() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, "BMP")
    data = bytearray(buffer.getvalue())
    data[18:26] = struct.pack("<ii", BOMB, BOMB)
    return bytes(data)


def tiff_bomb(bands: int) -> bytes:
    """A small TIFF of ``bands`` bands whose width and length tags say 20,000 x 20,000 (a real one takes
    minutes to write here; what matters is that nothing allocates what the header says)."""
    import tifffile

    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros((16, 16, bands), np.uint8), photometric="rgb" if bands == 3 else "minisblack",
                     planarconfig="contig")
    data = bytearray(buffer.getvalue())
    with tifffile.TiffFile(io.BytesIO(bytes(data))) as tif:
        for code in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4), kept in the entry
            tag = tif.pages[0].tags[code]
            fmt = "<H" if int(tag.dtype) == 3 else "<I"
            data[tag.valueoffset:tag.valueoffset + struct.calcsize(fmt)] = struct.pack(fmt, BOMB)
    return bytes(data)


BOMBS = {"png": (bomb_png, ".png"), "jpeg": (patched_jpeg, ".jpg"), "gif": (patched_gif, ".gif"),
         "bmp": (patched_bmp, ".bmp"), "tiff-rgb": (lambda: tiff_bomb(3), ".tif"),
         "tiff-5-bands": (lambda: tiff_bomb(5), ".tif")}


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_a_decompression_bomb_is_refused_within_the_memory_bound(tmp_path, kind):
    make_bytes, suffix = BOMBS[kind]
    path = tmp_path / f"bomb{suffix}"
    path.write_bytes(make_bytes())

    def load() -> str:
        from engine.errors import GraftError

        reason = check_image(path)
        assert reason, "a 20,000 x 20,000 image passed the check"
        refused = []
        for channels, spec in SPECS.items():
            try:
                preprocess_file(path, spec)
            except GraftError as exc:
                refused.append(f"{channels}: {exc}")
        assert len(refused) == len(SPECS), f"decoded a bomb for some channel counts: {refused}"
        return reason

    outcome = check(load, memory_mb=MEMORY_MB, timeout=60, label=f"image bomb ({kind})")
    assert outcome.kind == "ok", outcome.detail
