"""Whether files are images that decode: the full check (:func:`check_image`), the quick one for large data
(:func:`quick_check`), both over many files at once, and the band count a 4+-channel input needs.

Up to :data:`FULL_CHECK_LIMIT` images are all decoded (cheaply) up front; beyond that only what is cheap is checked
up front (the file is there and not empty, and one not named like an image starts like one), and each image is
decoded fully when first read (:class:`engine.data.image_dataset.ImageDataset`).
"""
from __future__ import annotations

import math
import os
import stat
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from engine.errors import GraftError
from engine.network.preprocess import band_count_problem, is_tiff, read_tiff
from engine.units import plural

FULL_CHECK_LIMIT = 20_000  # more images than this: the quick check up front, the full decode when first read
# How image files start (what Pillow reads; TIFF and the rest get the full check up front).
SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
# Names the quick check takes at their word (what the file holds is seen when it is first read).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})


def check_image(path: str | Path) -> str | None:
    """``None`` when ``path`` decodes as an image, else a short reason. Cheap: JPEGs are decoded at
    1/8 scale (which still reads all their data), PNGs are checksummed, other formats fully decoded."""
    try:
        with Image.open(path) as img:
            if img.width < 1 or img.height < 1:
                return "empty image"
            if img.format == "JPEG":
                img.draft("RGB", (1, 1))
                img.load()
            elif img.format == "PNG":
                img.verify()
            else:
                img.load()
    except FileNotFoundError:
        return "file not found"
    except IsADirectoryError:
        return "a folder, not an image"
    except UnidentifiedImageError:
        if is_tiff(path):  # a TIFF of more bands than Pillow reads (RGB plus infrared, depth …)
            try:
                read_tiff(path)
            except GraftError as exc:
                return str(exc).partition(": ")[2].rstrip(".") or "not an image file"
            return None
        return "not an image file"
    except Image.DecompressionBombError:
        return "image too large"
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the file is unusable
        detail = str(exc).strip() or exc.__class__.__name__
        return f"corrupt or truncated image ({detail})"
    return None


def quick_check(path: str | Path) -> str | None:
    """``None`` when ``path`` is a non-empty file named like an image (:data:`IMAGE_SUFFIXES`), or one
    otherwise named that starts like a JPEG, PNG, GIF, BMP or WebP image; else a short reason (other formats
    get :func:`check_image`). A file named like an image is only stat'ed: reading the first bytes of 200,000
    files from a cold disk took 27 s here (a random read each, however many threads), their stat 3.3 s."""
    name = os.fspath(path)
    if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
        try:
            info = os.stat(name)
        except FileNotFoundError:
            return "file not found"
        except OSError as exc:
            return f"unreadable ({exc.strerror or exc})"
        if stat.S_ISDIR(info.st_mode):
            return "a folder, not an image"
        return None if info.st_size else "empty file"
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except FileNotFoundError:
        return "file not found"
    except IsADirectoryError:
        return "a folder, not an image"
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    if not head:
        return "empty file"
    if head.startswith(SIGNATURES) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return None
    return check_image(path)


def _check_all(paths: Sequence[Path], quick: bool = False) -> list[str | None]:
    check = quick_check if quick else check_image
    if len(paths) < 32:
        return [check(p) for p in paths]
    workers = max(1, min(8, os.cpu_count() or 1))
    # In chunks: a thread pool's map makes a future (and a lock) per file, which cost more than checking
    # a small image (measured: 20,000 PNGs, 2.3 s of 3.4 s in futures). Pillow releases the GIL decoding.
    size = max(64, math.ceil(len(paths) / (workers * 8)))
    chunks = [paths[i:i + size] for i in range(0, len(paths), size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return [r for part in pool.map(lambda chunk: [check(p) for p in chunk], chunks) for r in part]


def check_bands(paths: Sequence[Path], channels: int) -> None:
    """GraftError when any image lacks the ``channels`` bands a 4+-channel input reads (headers only)."""
    problems = [p for p in (band_count_problem(path, channels) for path in paths) if p]
    if problems:
        more = f" (and {plural(len(problems) - 1, 'more image')} like it)" if len(problems) > 1 else ""
        raise GraftError(problems[0].rstrip(".") + more + ".")


def _quick_notes(quick: bool, n: int) -> list[str]:
    if not quick:
        return []
    return [f"{n:,} images: each was checked to be there and not empty now (and, if not named like an image, to "
            f"start like one), and is decoded fully when first read; one that does not decode then is left out "
            f"and reported."]


def _no_images_message(where: Path, skipped: list[tuple[str, str]]) -> str:
    if not skipped:
        return f"{where}: no images found."
    examples = "; ".join(f"{Path(p).name}: {r}" for p, r in skipped[:3])
    return f"{where}: no usable images ({plural(len(skipped), 'file')} skipped, e.g. {examples})."
