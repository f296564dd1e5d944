"""Preprocessing for 1- and 4+-channel inputs: greyscale, RGBA kept as four bands, multi-band TIFFs."""
from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from engine.errors import GraftError
from engine.network.preprocess import (InputSpec, band_count_problem, channel_order_for, preprocess_file,
                                       read_bands)

RGB = InputSpec(size=8, resize=8, mean=[0.5, 0.4, 0.3], std=[0.2, 0.25, 0.3])
GREY = RGB.with_channels(1)
FOUR = RGB.with_channels(4)


def pixels(h: int = 8, w: int = 8, bands: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, bands), dtype=np.uint8)


def normalised(values: np.ndarray, spec: InputSpec) -> np.ndarray:
    """HxWxC uint8 -> CHW as the spec normalises (no resize: the images here are already the input size)."""
    x = values.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return x.transpose(2, 0, 1)


def test_specs_for_other_channel_counts():
    assert GREY.mean == pytest.approx([0.4]) and GREY.std == pytest.approx([0.25]) and GREY.channel_order == "L"
    assert FOUR.mean == pytest.approx([0.5, 0.4, 0.3, 0.4]) and FOUR.channel_order == "RGB+1"
    assert channel_order_for(6) == "RGB+3"
    for spec in (GREY, FOUR, RGB.with_channels(6)):
        assert spec.problem() is None and InputSpec.from_dict(spec.to_dict()) == spec
    old = RGB.to_dict()
    del old["channels"]  # a project or export from before channels existed
    assert InputSpec.from_dict(old).channels == 3


@pytest.mark.parametrize("change, message", [
    ({"channels": 0}, "input channels"),
    ({"channels": 1}, "mean .* must be one number each"),
    ({"channels": 4, "mean": [0.5] * 4, "std": [0.2] * 4}, "unsupported input 'RGB' 'NCHW' for 4 channels"),
])
def test_inconsistent_specs_are_refused(change, message):
    import re

    problem = InputSpec(**{**RGB.to_dict(), **change}).problem()
    assert problem and re.search(message, problem)


def test_greyscale_reads_rgb_as_pillow_luma_and_grey_as_it_is(tmp_path):
    colour = pixels()
    Image.fromarray(colour).save(tmp_path / "c.png")
    luma = np.asarray(Image.fromarray(colour).convert("L"))[:, :, None]
    assert np.array_equal(preprocess_file(tmp_path / "c.png", GREY), normalised(luma, GREY))
    grey = pixels(bands=1)[:, :, 0]
    Image.fromarray(grey).save(tmp_path / "g.png")
    out = preprocess_file(tmp_path / "g.png", GREY)
    assert out.shape == (1, 8, 8) and np.array_equal(out, normalised(grey[:, :, None], GREY))
    sixteen = (grey.astype(np.uint16) * 257)
    Image.fromarray(sixteen).save(tmp_path / "g16.png")  # 16-bit grey: scaled back to the same 8 bits
    assert np.array_equal(preprocess_file(tmp_path / "g16.png", GREY), out)


def test_greyscale_composites_alpha_over_the_background(tmp_path):
    rgba = pixels(bands=4)
    rgba[..., 3] = 0  # fully transparent: the background (white) shows
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    assert np.allclose(preprocess_file(tmp_path / "t.png", GREY), (1.0 - 0.4) / 0.25)


def test_four_channels_keep_rgba_bands_as_they_are(tmp_path):
    rgba = pixels(bands=4)
    rgba[0, 0, 3] = 0  # an infrared value of 0 must not blank (or premultiply) the RGB of that pixel
    Image.fromarray(rgba, "RGBA").save(tmp_path / "x.png")
    out = preprocess_file(tmp_path / "x.png", FOUR)
    assert out.shape == (4, 8, 8) and np.array_equal(out, normalised(rgba, FOUR))


def test_resizing_bands_resizes_each_band_alone(tmp_path):
    rgba = pixels(16, 12, bands=4)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "x.png")
    spec = FOUR.__class__(**{**FOUR.to_dict(), "size": 6, "resize": 6})
    out = preprocess_file(tmp_path / "x.png", spec)
    band2 = Image.fromarray(rgba[:, :, 2]).resize((6, 8), Image.Resampling.BILINEAR).crop((0, 1, 6, 7))
    assert out.shape == (4, 6, 6)
    assert np.allclose(out[2], (np.asarray(band2, np.float32) / 255 - spec.mean[2]) / spec.std[2])


def test_four_band_tiffs_that_pillow_reads_as_rgb_keep_their_fourth_band(tmp_path):
    bands = pixels(bands=4)
    tifffile.imwrite(tmp_path / "nir.tif", bands, photometric="rgb", extrasamples=["unspecified"])
    assert Image.open(tmp_path / "nir.tif").mode == "RGB"  # what Pillow alone would give: the band lost
    assert np.array_equal(preprocess_file(tmp_path / "nir.tif", FOUR), normalised(bands, FOUR))


def test_many_band_tiffs_planar_and_sixteen_bit(tmp_path):
    six = RGB.with_channels(6)
    bands = pixels(bands=6)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(bands, -1, 0), photometric="minisblack",
                     planarconfig="separate")
    assert np.array_equal(read_bands(tmp_path / "planar.tif", 6), bands)
    tifffile.imwrite(tmp_path / "deep.tif", bands.astype(np.uint16) * 257, photometric="minisblack",
                     planarconfig="contig")
    assert np.array_equal(preprocess_file(tmp_path / "deep.tif", six), normalised(bands, six))
    tifffile.imwrite(tmp_path / "float.tif", bands.astype(np.float32), photometric="minisblack", planarconfig="contig")
    with pytest.raises(GraftError, match="float32; Graft reads 8- or 16-bit integer bands"):
        read_bands(tmp_path / "float.tif", 6)


def test_a_four_channel_model_refuses_three_band_images(tmp_path):
    Image.fromarray(pixels()).save(tmp_path / "rgb.png")
    Image.fromarray(pixels(bands=4), "RGBA").convert("CMYK").save(tmp_path / "print.jpg")
    tifffile.imwrite(tmp_path / "rgb.tif", pixels(), photometric="rgb")
    for name, what in (("rgb.png", r"3 bands \(RGB\)"), ("print.jpg", r"4 bands \(CMYK\)"),
                       ("rgb.tif", r"3 bands \(RGB\)")):
        with pytest.raises(GraftError, match=f"{name} has {what}, but this model reads 4 channels: RGB plus 1 "
                                             "more band, from an RGBA image or a 4-band TIFF"):
            preprocess_file(tmp_path / name, FOUR)
        assert what.replace("\\", "") in band_count_problem(tmp_path / name, 4)
    Image.fromarray(pixels(bands=4), "RGBA").save(tmp_path / "ok.png")
    assert band_count_problem(tmp_path / "ok.png", 4) is None
    with pytest.raises(GraftError, match="5 channels: RGB plus 2 more bands, from a 5-band TIFF"):
        preprocess_file(tmp_path / "ok.png", RGB.with_channels(5))


# -- found by the image fuzzing (tests/engine/data/test_fuzz_images.py) --------------------------------------

def test_a_tiff_pillow_cannot_read_decodes_for_an_rgb_network_when_it_is_grey_or_rgb(tmp_path):
    """The data check reads TIFFs Pillow cannot identify with tifffile and passes them; decoding them for a
    greyscale or RGB network went through Pillow alone ("not a readable image"), so training stopped on a
    file the check had let through."""
    from engine.data.decoding import check_image
    from engine.network.preprocess import sixteen_to_eight

    values = np.random.default_rng(0).integers(0, 65536, (6, 6, 3)).astype(np.uint32)
    path = tmp_path / "rgb32.tif"  # 32-bit RGB: Pillow cannot identify it, tifffile reads it
    tifffile.imwrite(path, values, photometric="rgb")
    with pytest.raises(Exception):
        Image.open(path)
    assert check_image(path) is None
    spec = InputSpec(size=6, resize=6)
    png = tmp_path / "same.png"
    Image.fromarray(sixteen_to_eight(values)).save(png)  # the same pixels as Graft reads them, 8 bits
    assert np.array_equal(preprocess_file(path, spec), preprocess_file(png, spec))
    assert np.array_equal(preprocess_file(path, spec.with_channels(1)), preprocess_file(png, spec.with_channels(1)))


def test_a_tiff_of_other_bands_is_refused_for_an_rgb_network_naming_them(tmp_path):
    path = tmp_path / "rgbn.tif"
    tifffile.imwrite(path, pixels(8, 8, 4), photometric="minisblack", planarconfig="contig")
    with pytest.raises(GraftError, match="rgbn.tif has 4 bands, but this model reads greyscale or RGB"):
        preprocess_file(path, RGB)
    assert preprocess_file(path, FOUR).shape == (4, 8, 8)


def test_a_tiff_whose_header_claims_20000_by_20000_is_refused_before_allocating(tmp_path):
    """A few bytes of header said 20,000 x 20,000 x 5 and tifffile allocated (and the check decoded) 2 GB."""
    from engine.data.decoding import check_image
    from fuzz_support import bounded

    path = tmp_path / "bomb.tif"
    tifffile.imwrite(path, pixels(16, 16, 5), photometric="minisblack", planarconfig="contig")
    raw = bytearray(path.read_bytes())
    with tifffile.TiffFile(path) as tif:
        for code in (256, 257):
            tag = tif.pages[0].tags[code]
            size = 2 if int(tag.dtype) == 3 else 4
            raw[tag.valueoffset:tag.valueoffset + size] = (20_000).to_bytes(size, "little")
    path.write_bytes(bytes(raw))
    with pytest.raises(GraftError, match="image too large"):
        read_bands(path, 5)
    assert "too large" in check_image(path)
    outcome = bounded(read_bands, path, 5)
    assert outcome.kind == "graft" and outcome.peak_mb < 100, outcome


# A 1 x 1 TIFF without a BitsPerSample tag whose strip lies past the file's end (the image fuzzing's find):
# tifffile reads it as 1 x 0 pixels, which passed the data check and divided by zero when resized.
EMPTY_TIFF = (b"II*\x00\x08\x00\x00\x00\x08\x00\x01\x01\x04\x00\x01\x00\x00\x00\x01\x00\x00\x00\x01\x01\x04\x00\x01"
              b"\x00\x00\x00\x01\x00\x00\x00\x03\x01\x03\x00\x01\x00\x00\x00\x01\x00\x00\x00\x06\x01\x03\x00\x01\x00"
              b"\x00\x00\x01\x00\x00\x00\x11\x01\x04\x00\x01\x00\x00\x00n\x00\x00\x00\x16\x01\x04\x00\x01\x00\x00\x00"
              b"\x01\x00\x00\x00\x17\x01\x04\x00\x01\x00\x00\x00\x01\x00\x00\x00\x1c\x01\x03\x00\x01\x00\x00\x00\x01"
              b"\x00\x00\x00\x00\x00\x00\x00\x00")


def test_a_tiff_of_no_pixels_is_refused_by_the_check_and_the_decoder(tmp_path):
    from engine.data.decoding import check_image

    path = tmp_path / "empty.tif"
    path.write_bytes(EMPTY_TIFF)
    assert check_image(path) == "empty image (0 pixels wide or high)"
    for spec in (RGB, GREY, FOUR):
        with pytest.raises(GraftError, match="empty.tif: empty image"):
            preprocess_file(path, spec)
