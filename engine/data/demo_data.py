"""The offline demo dataset: small synthetic images generated deterministically from a JSON recipe.

Each image shows one object (circle, square, triangle, star) at a random position, size and rotation,
in a random colour, maybe striped and maybe outlined, on a gradient or textured background with noise.
``labels.csv`` holds ``image, shape, red, striped, outlined, size`` (a single-label, a multi-label and a
regression head for :func:`engine.data.manifests.suggest_heads`), with about 30 % of the label cells blank, and
``mask, boxes``: where the generator drew the object, as a PNG mask (``masks/``: 0 background, 1… the shapes in
recipe order as ``masks/classes.txt`` names them, 255 on the anti-aliased rim) and its box
``[[x1, y1, x2, y2, shape]]`` (pixels), each blank for about 30 % of the images too (drawn apart from the
other cells, which stay as they were).

Generation (NumPy + Pillow only, seeded per image) takes about a second and happens only when the data
is missing or was made from another recipe (a stamp file records which).
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from engine.errors import GraftError
from engine.files import cache_dir as user_cache_dir

RECIPE_PATH = Path(__file__).resolve().parents[2] / "resources" / "demo_recipe.json"
STAMP = ".graft-demo-stamp.json"
MANIFEST = "labels.csv"
SUPERSAMPLE = 3


def load_recipe(path: str | os.PathLike | None = None) -> dict[str, Any]:
    p = Path(path) if path is not None else RECIPE_PATH
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GraftError(f"The demo recipe {p} is missing; reinstall Graft.") from None
    except (OSError, ValueError) as exc:
        raise GraftError(f"The demo recipe {p} is unreadable ({exc}).") from None


def cache_dir() -> Path:
    """Where the demo data is built: :func:`engine.files.cache_dir` (``$GRAFT_CACHE_DIR`` or the system's
    cache folder)."""
    return user_cache_dir()


# --------------------------------------------------------------------------------------------------
# drawing
# --------------------------------------------------------------------------------------------------
def _outline_points(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        radii, n = [r], 4
    elif shape == "triangle":
        radii, n = [r], 3
    elif shape == "star":
        radii, n = [r, 0.45 * r], 10
    else:
        raise GraftError(f"Demo recipe: unknown shape {shape!r} (circle, square, triangle or star).")
    return [(cx + radii[k % len(radii)] * math.cos(angle + 2 * math.pi * k / n),
             cy + radii[k % len(radii)] * math.sin(angle + 2 * math.pi * k / n)) for k in range(n)]


def _masks(shape: str, size: int, cx: float, cy: float, r: float, angle: float,
           outline: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Anti-aliased coverage of the object, and of its outline ring (when ``outline`` > 0), in [0, 1]."""
    s = SUPERSAMPLE
    big = size * s
    fill = Image.new("L", (big, big), 0)
    ring = Image.new("L", (big, big), 0) if outline > 0 else None
    width = max(1, round(outline * s))
    if shape == "circle":
        box = [(cx - r) * s, (cy - r) * s, (cx + r) * s, (cy + r) * s]
        ImageDraw.Draw(fill).ellipse(box, fill=255)
        if ring is not None:
            ImageDraw.Draw(ring).ellipse(box, outline=255, width=width)
    else:
        pts = [(x * s, y * s) for x, y in _outline_points(shape, cx, cy, r, angle)]
        ImageDraw.Draw(fill).polygon(pts, fill=255)
        if ring is not None:
            ImageDraw.Draw(ring).polygon(pts, outline=255, width=width)
    down = lambda im: np.asarray(im.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255.0  # noqa: E731
    return down(fill), (down(ring) if ring is not None else None)


def shape_mask(shape: str, size: int, cx: float, cy: float, r: float, angle: float = 0.0) -> np.ndarray:
    """Anti-aliased coverage (``size`` x ``size`` float32 in [0, 1]) of one demo shape centred at
    (``cx``, ``cy``) with radius ``r``: for placing a shape exactly where a check expects it."""
    return _masks(shape, size, cx, cy, r, angle, 0.0)[0]


def _background(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, size: int) -> np.ndarray:
    def muted() -> np.ndarray:
        grey = rng.uniform(70, 200)
        return np.clip(grey + rng.uniform(-35, 35, 3), 0, 255).astype(np.float32)

    c1, c2 = muted(), muted()
    kind = int(rng.integers(0, 4))
    if kind == 0 or kind == 3:  # linear gradient (3: plus a texture below)
        a = rng.uniform(0, 2 * math.pi)
        t = ((xx - size / 2) * math.cos(a) + (yy - size / 2) * math.sin(a)) / size + 0.5
    elif kind == 1:  # radial gradient
        fx, fy = rng.uniform(0, size, 2)
        t = np.sqrt((xx - fx) ** 2 + (yy - fy) ** 2) / (size * 1.2)
    else:  # flat, textured below
        t = np.zeros_like(xx)
    t = np.clip(t, 0, 1)[..., None]
    img = c1 * (1 - t) + c2 * t
    if kind >= 2:
        b = rng.uniform(0, math.pi)
        freq = rng.uniform(0.15, 0.6)
        amp = rng.uniform(8, 20)
        u = xx * math.cos(b) + yy * math.sin(b)
        v = -xx * math.sin(b) + yy * math.cos(b)
        if rng.random() < 0.5:
            tex = np.sin(u * freq) * np.sin(v * freq * rng.uniform(0.5, 1.5))  # ripples
        else:
            cell = rng.uniform(6, 16)
            tex = ((np.floor(u / cell) + np.floor(v / cell)) % 2) * 2 - 1  # checks
        img = img + (amp * tex)[..., None]
    return img


def _colour(rng: np.random.Generator, palette: list[list[int]], jitter: float) -> np.ndarray:
    base = np.asarray(palette[int(rng.integers(0, len(palette)))], dtype=np.float32)
    return np.clip(base + rng.uniform(-jitter, jitter, 3), 0, 255).astype(np.float32)


def _render(recipe: dict[str, Any], rng: np.random.Generator, shape: str,
            attrs: dict[str, bool]) -> tuple[np.ndarray, float, np.ndarray]:
    """One image (HWC uint8), its object size (bounding-circle diameter / image width) and the object's
    coverage per pixel (``size`` x ``size`` float32 in [0, 1])."""
    size = int(recipe["image_size"])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    img = _background(rng, yy, xx, size)

    lo, hi = recipe["size_range"]
    frac = float(rng.uniform(lo, hi))
    r = frac * size / 2
    cx, cy = rng.uniform(r, size - r, 2)
    angle = rng.uniform(0, 2 * math.pi)
    outline = float(rng.uniform(*recipe["outline_width"])) if attrs.get("outlined") else 0.0
    fill, ring = _masks(shape, size, float(cx), float(cy), r, angle, outline)

    palette = recipe["red_colours"] if attrs.get("red") else recipe["other_colours"]
    colour = _colour(rng, palette, float(recipe["colour_jitter"]))
    shade_a = rng.uniform(0, 2 * math.pi)
    shade = 1.0 + 0.12 * (((xx - cx) * math.cos(shade_a) + (yy - cy) * math.sin(shade_a)) / max(r, 1.0))
    paint = colour * np.clip(shade, 0.75, 1.25)[..., None]
    if attrs.get("striped"):
        period = rng.uniform(*recipe["stripe_period"])
        b = rng.uniform(0, math.pi)
        phase = ((xx * math.cos(b) + yy * math.sin(b)) / period) % 1.0
        light = colour + (255.0 - colour) * 0.7
        paint = np.where((phase < 0.5)[..., None], paint, light)
    img = img * (1 - fill[..., None]) + paint * fill[..., None]
    if ring is not None:
        dark = rng.uniform(10, 45, 3).astype(np.float32)
        img = img * (1 - ring[..., None]) + dark * ring[..., None]

    sigma = rng.uniform(*recipe["noise_sigma"])
    img = img + rng.normal(0.0, sigma, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8), frac, fill


RIM_IGNORE = 255  # the demo masks' unlabelled value: pixels the object covers by a quarter to three quarters


def object_labels(fill: np.ndarray, index: int) -> tuple[np.ndarray, list[int]]:
    """The mask (uint8: ``index`` where the object covers at least 3/4 of a pixel, 0 below 1/4, the rim
    :data:`RIM_IGNORE`) and the box ``[x1, y1, x2, y2]`` (pixels, edges of the half-covered pixels)."""
    mask = np.where(fill >= 0.75, index, np.where(fill <= 0.25, 0, RIM_IGNORE)).astype(np.uint8)
    ys, xs = np.nonzero(fill >= 0.5)
    return mask, [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]


def _save(array: np.ndarray, path: Path, recipe: dict[str, Any], fmt: str) -> None:
    img = Image.fromarray(array, "RGB")
    if fmt in ("jpg", "jpeg"):
        img.save(path, "JPEG", quality=int(recipe.get("jpeg_quality", 92)))
    elif fmt == "png":
        img.save(path, "PNG", compress_level=1)
    else:
        raise GraftError(f"Demo recipe: format must be jpg or png, not {fmt!r}.")


def _shape_order(recipe: dict[str, Any], count: int, seed: int) -> list[str]:
    shapes = list(recipe["shapes"])
    order = [shapes[i % len(shapes)] for i in range(count)]  # balanced classes
    perm = np.random.default_rng([seed, 0]).permutation(count)
    return [order[i] for i in perm]


def generate_demo(out: Path, recipe: dict[str, Any]) -> Path:
    """Write the multi-task demo (``images/``, ``masks/`` + ``labels.csv``) into ``out``; returns the CSV path."""
    seed, count = int(recipe["seed"]), int(recipe["count"])
    fmt = str(recipe.get("format", "jpg")).lower()
    attributes = list(recipe["attributes"])
    p_attr, p_missing = float(recipe["attribute_probability"]), float(recipe["missing_fraction"])
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    shapes = list(recipe["shapes"])
    (out / "masks" / "classes.txt").write_text("\n".join(["background", *shapes]) + "\n", encoding="utf-8")
    width = max(3, len(str(count - 1)))
    rows = []
    for i, shape in enumerate(_shape_order(recipe, count, seed)):
        rng = np.random.default_rng([seed, 1, i])
        attrs = {a: bool(rng.random() < p_attr) for a in attributes}
        array, frac, fill = _render(recipe, rng, shape, attrs)
        rel = f"images/{i:0{width}d}.{'jpg' if fmt == 'jpeg' else fmt}"
        _save(array, out / rel, recipe, fmt)
        cells = [shape] + [str(int(attrs[a])) for a in attributes] + [f"{frac:.4f}"]
        blank = np.random.default_rng([seed, 2, i]).random(len(cells)) < p_missing
        mask, box = object_labels(fill, shapes.index(shape) + 1)
        mask_rel = f"masks/{i:0{width}d}.png"
        Image.fromarray(mask, "L").save(out / mask_rel, "PNG")
        dense = [mask_rel, json.dumps([[*box, shape]])]
        dense_blank = np.random.default_rng([seed, 3, i]).random(len(dense)) < p_missing
        rows.append([rel] + ["" if b else c for c, b in zip(cells, blank)]
                    + ["" if b else c for c, b in zip(dense, dense_blank)])
    csv_path = out / MANIFEST
    with csv_path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["image", "shape", *attributes, "size", "mask", "boxes"])
        writer.writerows(rows)
    return csv_path


def generate_demo_folder(out: Path, recipe: dict[str, Any]) -> Path:
    """Write the image-folder variant ``out/<shape>/*.png`` (shape only, nothing missing); returns ``out``."""
    folder = recipe.get("folder", {})
    seed, count = int(folder.get("seed", int(recipe["seed"]) + 1)), int(folder.get("count", 120))
    fmt = str(folder.get("format", "png")).lower()
    attributes = list(recipe["attributes"])
    p_attr = float(recipe["attribute_probability"])
    for shape in recipe["shapes"]:
        (out / shape).mkdir(parents=True, exist_ok=True)
    for i, shape in enumerate(_shape_order(recipe, count, seed)):
        rng = np.random.default_rng([seed, 1, i])
        attrs = {a: bool(rng.random() < p_attr) for a in attributes}
        array, _, _ = _render(recipe, rng, shape, attrs)
        _save(array, out / shape / f"{shape}_{i:03d}.{fmt}", recipe, fmt)
    return out


# --------------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------------
def _digest(recipe: dict[str, Any], variant: str) -> str:
    text = json.dumps({"variant": variant, "recipe": recipe}, sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _stamp_ok(folder: Path, recipe: dict[str, Any], variant: str, expected_files: int, marker: str) -> bool:
    try:
        stamp = json.loads((folder / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if stamp.get("version") != recipe.get("version") or stamp.get("digest") != _digest(recipe, variant):
        return False
    if not (folder / marker).exists():
        return False
    n = sum(1 for _, _, files in os.walk(folder) for f in files if f.lower().endswith((".png", ".jpg")))
    return n == expected_files


def _ensure(base: Path, name: str, recipe: dict[str, Any], variant: str, expected: int, marker: str,
            generate) -> Path:
    final = base / name
    if _stamp_ok(final, recipe, variant, expected, marker):
        return final
    try:
        base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=base))
    except OSError as exc:
        raise GraftError(f"Cannot write the demo data under {base} ({exc.strerror or exc}); "
                         "set GRAFT_CACHE_DIR to a writable folder.") from None
    try:
        generate(tmp, recipe)
        (tmp / STAMP).write_text(json.dumps({"version": recipe.get("version"),
                                             "digest": _digest(recipe, variant)}), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not _stamp_ok(final, recipe, variant, expected, marker):  # not another process's copy
                raise
    except OSError as exc:
        raise GraftError(f"Cannot write the demo data to {final} ({exc.strerror or exc}).") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def ensure_demo_data(dest: str | os.PathLike | None = None, *, recipe: dict[str, Any] | None = None) -> Path:
    """The demo manifest ``<dest>/demo-v<version>/labels.csv``, generated if missing or stale.

    ``dest`` defaults to :func:`cache_dir`; ``recipe`` to ``resources/demo_recipe.json``."""
    recipe = recipe if recipe is not None else load_recipe()
    base = Path(dest).expanduser() if dest is not None else cache_dir()
    folder = _ensure(base, f"demo-v{recipe['version']}", recipe, "csv", 2 * int(recipe["count"]), MANIFEST,
                     generate_demo)  # an image and a mask each
    return folder / MANIFEST


def ensure_demo_folder(dest: str | os.PathLike | None = None, *, recipe: dict[str, Any] | None = None) -> Path:
    """The image-folder demo ``<dest>/demo-folder-v<version>/<shape>/*.png`` (shape only), generated if
    missing or stale; returns the folder."""
    recipe = recipe if recipe is not None else load_recipe()
    base = Path(dest).expanduser() if dest is not None else cache_dir()
    count = int(recipe.get("folder", {}).get("count", 120))
    return _ensure(base, f"demo-folder-v{recipe['version']}", recipe, "folder", count, STAMP,
                   generate_demo_folder)
