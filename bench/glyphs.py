"""The cross-style glyph set of ``bench/cross_style.py``: letters rendered from open font families.

Why: Graft's demo data is drawn by one program, so it cannot show whether a model survives a change of
style. Here the training images come from families of one look (sans and serif text faces) and the test
images from families of another (handwriting and display faces): the same 26 letters, drawn differently.

Fonts are never committed and never fetched behind the user's back. They come from the npm registry's
``@expo-google-fonts/<family>`` packages (Google Fonts' open families as plain TTF files, versions pinned in
:data:`FAMILIES`), installed by one explicit step, ``bench/cross_style.py --fetch-fonts``: ``npm pack`` of the
pinned packages into a temporary folder, the family's regular TTF kept as ``<fonts dir>/<family>.ttf``
(:func:`fonts_dir`, under Graft's cache folder) and the tarballs removed. npm is the only registry with
hundreds of such packages (PyPI has a handful, Debian's ``fonts-*`` need root); without npm, copy the TTF
files there by hand under those names. A build names the families it lacks (:func:`find_fonts`).

The rendering has no augmentation pipeline: each image is one glyph with small random jitter (glyph height
50-75 % of the image, position, rotation up to ±12°, stroke weight, ink and background colours, a quarter
of them light on dark), seeded per image, so the set is the same on every machine with the same fonts.
The build is cached under ``cache_dir()/cross-style/glyphs-<key>``, the key hashing the parameters and the
font files' bytes; it is written to a temporary folder and renamed into place whole.

Layout (what ``main.py train`` and ``main.py evaluate`` read directly)::

    glyphs-<key>/trainval/train/<letter>/<family>-<n>.png   training families
    glyphs-<key>/trainval/val/<letter>/<family>-<n>.png     the same families, other renders
    glyphs-<key>/test/<letter>/<family>-<n>.png             the other-style families
    glyphs-<key>/build.json                                 parameters, families, counts
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# family -> (look, pinned @expo-google-fonts package version). Sans and serif train; the rest test.
FAMILIES: dict[str, tuple[str, str]] = {
    "roboto": ("sans", "0.4.3"), "open-sans": ("sans", "0.4.2"), "lato": ("sans", "0.4.1"),
    "montserrat": ("sans", "0.4.2"), "work-sans": ("sans", "0.4.2"),
    "merriweather": ("serif", "0.4.2"), "lora": ("serif", "0.4.2"), "pt-serif": ("serif", "0.4.1"),
    "libre-baskerville": ("serif", "0.4.3"), "eb-garamond": ("serif", "0.4.3"),
    "caveat": ("handwriting", "0.4.2"), "indie-flower": ("handwriting", "0.4.1"),
    "patrick-hand": ("handwriting", "0.4.1"), "kalam": ("handwriting", "0.4.1"),
    "dancing-script": ("handwriting", "0.4.2"), "permanent-marker": ("handwriting", "0.4.0"),
    "lobster": ("display", "0.4.1"), "bangers": ("display", "0.4.1"), "abril-fatface": ("display", "0.4.1"),
    "righteous": ("display", "0.4.1"), "press-start-2p": ("display", "0.4.1"), "special-elite": ("display", "0.4.1"),
}
TRAIN_LOOKS = ("sans", "serif")
TEST_LOOKS = ("handwriting", "display")
NPM_SCOPE = "@expo-google-fonts"
BUILD_VERSION = 1  # bump when the rendering changes: old builds are then not reused


def train_families() -> list[str]:
    return [f for f, (look, _) in FAMILIES.items() if look in TRAIN_LOOKS]


def test_families() -> list[str]:
    return [f for f, (look, _) in FAMILIES.items() if look in TEST_LOOKS]


def fonts_dir() -> Path:
    """Where ``--fetch-fonts`` puts the TTF files (``<family>.ttf``)."""
    from engine.files import cache_dir

    return cache_dir() / "cross-style" / "fonts"


def find_fonts(families: list[str], folder: Path | None = None) -> tuple[dict[str, Path], list[str]]:
    """``({family: ttf path}, [missing families])`` for the families whose file is in ``folder``."""
    folder = folder or fonts_dir()
    found = {f: folder / f"{f}.ttf" for f in families if (folder / f"{f}.ttf").is_file()}
    return found, [f for f in families if f not in found]


def _regular_member(names: list[str]) -> str | None:
    """The TTF of a package's regular weight (``400Regular/...``), else any upright regular, else the first."""
    ttfs = sorted(n for n in names if n.lower().endswith(".ttf"))
    for test in (lambda n: "/400Regular/" in n, lambda n: "Regular" in n and "Italic" not in n,
                 lambda n: "Italic" not in n):
        picked = [n for n in ttfs if test(n)]
        if picked:
            return picked[0]
    return None


def fetch_fonts(families: list[str] | None = None, folder: Path | None = None,
                npm: str | None = None, log=print) -> list[str]:
    """Install the missing families' regular TTF into ``folder`` with ``npm pack`` (the pinned versions of
    :data:`FAMILIES`). Returns the families fetched; RuntimeError with one line when npm is missing or fails."""
    folder = folder or fonts_dir()
    families = list(FAMILIES) if families is None else families
    _, missing = find_fonts(families, folder)
    if not missing:
        return []
    npm = npm or shutil.which("npm")
    if not npm:
        raise RuntimeError(f"npm is not installed: install Node.js's npm, or copy the TTF files of "
                           f"{', '.join(missing)} into {folder} as <family>.ttf")
    folder.mkdir(parents=True, exist_ok=True)
    specs = [f"{NPM_SCOPE}/{f}@{FAMILIES[f][1]}" for f in missing]
    log(f"npm pack {' '.join(specs)}")
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        done = subprocess.run([npm, "pack", *specs, "--pack-destination", tmp, "--silent"], cwd=tmp,
                              capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise RuntimeError(f"npm pack failed: {last}")
        fetched = []
        for family in missing:
            tarball = Path(tmp) / f"expo-google-fonts-{family}-{FAMILIES[family][1]}.tgz"
            if not tarball.is_file():
                log(f"warning: npm gave no package for {family}")
                continue
            with tarfile.open(tarball) as tar:
                member = _regular_member(tar.getnames())
                if member is None:
                    log(f"warning: {tarball.name} holds no TTF file")
                    continue
                data = tar.extractfile(member).read()
            target = folder / f"{family}.ttf"
            partial = target.with_suffix(".ttf.part")
            partial.write_bytes(data)
            os.replace(partial, target)
            fetched.append(family)
    return fetched


@dataclass(frozen=True)
class GlyphParams:
    """What a build renders: ``train_per_family`` images per class and training family (``val_fraction`` of
    them held out as validation), ``test_per_family`` per class and test family, ``side`` pixels square."""

    classes: str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    train_per_family: int = 8
    test_per_family: int = 3
    val_fraction: float = 0.25
    side: int = 64
    seed: int = 0


@dataclass
class GlyphSet:
    root: Path
    trainval: Path
    test: Path
    counts: dict[str, int] = field(default_factory=dict)  # train / val / test images
    seconds: float = 0.0  # the time spent rendering (0 when the cached build was reused)
    reused: bool = False


def build_key(params: GlyphParams, train_fonts: dict[str, Path], test_fonts: dict[str, Path]) -> str:
    """A short hash of the parameters, the families on each side and their font files' bytes."""
    h = hashlib.sha256(json.dumps({"v": BUILD_VERSION, **asdict(params)}, sort_keys=True).encode())
    for side, fonts in (("train", train_fonts), ("test", test_fonts)):
        for name in sorted(fonts):
            h.update(f"{side}:{name}:".encode())
            h.update(hashlib.sha256(Path(fonts[name]).read_bytes()).digest())
    return h.hexdigest()[:16]


def _missing_glyph(font, char: str) -> bool:
    """True when ``font`` draws ``char`` as nothing or as its missing-glyph box (a private-use code point)."""
    mask = font.getmask(char)
    return mask.getbbox() is None or bytes(mask) == bytes(font.getmask("\ue000"))


def render_glyph(font, char: str, rng, side: int):
    """One ``side`` x ``side`` RGB image of ``char`` in ``font`` (a 96-px FreeTypeFont), jittered by ``rng``."""
    from PIL import Image, ImageDraw

    big = font.size * 3
    mask = Image.new("L", (big, big), 0)
    ImageDraw.Draw(mask).text((big / 2, big / 2), char, font=font, fill=255, anchor="mm",
                              stroke_width=int(rng.integers(0, 3)), stroke_fill=255)
    glyph = mask.crop(mask.getbbox())
    scale = side * rng.uniform(0.5, 0.75) / max(glyph.size)
    glyph = glyph.resize((max(1, round(glyph.width * scale)), max(1, round(glyph.height * scale))),
                         Image.Resampling.LANCZOS)
    glyph = glyph.rotate(rng.uniform(-12, 12), resample=Image.Resampling.BICUBIC, expand=True)
    paper = tuple(int(v) for v in rng.integers(190, 256, size=3))
    ink = tuple(int(v) for v in rng.integers(0, 90, size=3))
    if rng.random() < 0.25:
        paper, ink = ink, paper
    image = Image.new("RGB", (side, side), paper)
    room_x, room_y = max(0, side - glyph.width), max(0, side - glyph.height)
    x = int(round(room_x / 2 + rng.uniform(-0.4, 0.4) * room_x))
    y = int(round(room_y / 2 + rng.uniform(-0.4, 0.4) * room_y))
    image.paste(Image.new("RGB", glyph.size, ink), (x, y), glyph)  # 75 % turned by 12° still fits
    return image


def _render_side(out: Path, fonts: dict[str, Path], params: GlyphParams, per_family: int, salt: int,
                 val_folder: Path | None) -> tuple[int, int]:
    """Render ``per_family`` images of each class for each family into ``out/<class>/`` (the last
    ``val_fraction`` of them into ``val_folder/<class>/`` when given). Returns (images in out, in val)."""
    import numpy as np
    from PIL import ImageFont

    n_val = 0 if val_folder is None else min(per_family - 1, max(1, round(per_family * params.val_fraction)))
    counts = [0, 0]
    for f_index, family in enumerate(sorted(fonts)):
        font = ImageFont.truetype(str(fonts[family]), 96)
        lacking = [c for c in params.classes if _missing_glyph(font, c)]
        if lacking:
            raise RuntimeError(f"{fonts[family]} has no glyph for {''.join(lacking)}: choose another family")
        for c_index, char in enumerate(params.classes):
            for n in range(per_family):
                rng = np.random.default_rng([params.seed, salt, f_index, c_index, n])
                held_out = n >= per_family - n_val
                folder = (val_folder if held_out else out) / char
                folder.mkdir(parents=True, exist_ok=True)
                render_glyph(font, char, rng, params.side).save(folder / f"{family}-{n:03d}.png", optimize=False)
                counts[held_out] += 1
    return counts[0], counts[1]


def build(params: GlyphParams, train_fonts: dict[str, Path], test_fonts: dict[str, Path],
          cache: Path | None = None, log=print) -> GlyphSet:
    """The glyph set for ``params`` (rendered now unless a complete build with the same key is cached)."""
    import time

    if set(train_fonts) & set(test_fonts):
        raise ValueError(f"families on both sides: {sorted(set(train_fonts) & set(test_fonts))}")
    if not train_fonts or not test_fonts:
        raise ValueError("the build needs at least one training family and one test family")
    if cache is None:
        from engine.files import cache_dir

        cache = cache_dir() / "cross-style"
    root = cache / f"glyphs-{build_key(params, train_fonts, test_fonts)}"
    info = root / "build.json"
    if info.is_file():
        counts = json.loads(info.read_text())["counts"]
        return GlyphSet(root, root / "trainval", root / "test", counts, 0.0, True)
    cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f"{root.name}.", dir=cache))
    try:
        n_train, n_val = _render_side(tmp / "trainval" / "train", train_fonts, params, params.train_per_family,
                                      1, tmp / "trainval" / "val")
        n_test, _ = _render_side(tmp / "test", test_fonts, params, params.test_per_family, 2, None)
        counts = {"train": n_train, "val": n_val, "test": n_test}
        (tmp / "build.json").write_text(json.dumps(
            {"params": asdict(params), "counts": counts,
             "train_families": {f: FAMILIES.get(f, ("?", ""))[0] for f in sorted(train_fonts)},
             "test_families": {f: FAMILIES.get(f, ("?", ""))[0] for f in sorted(test_fonts)}}, indent=1))
        try:
            os.replace(tmp, root)
        except OSError:  # another process finished the same build first
            if not info.is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - start
    log(f"Rendered {sum(counts.values())} glyph images in {seconds:.1f} s into {root}")
    return GlyphSet(root, root / "trainval", root / "test", counts, seconds, False)
