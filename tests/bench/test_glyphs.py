"""The cross-style glyph builder (bench/glyphs.py) on tiny parameters, with the DejaVu fonts matplotlib
ships (or the system's): it renders, classes are balanced, train and test families never mix, the build
is cached by its key, and --fetch-fonts keeps the regular TTF of what npm packs (a fake npm, no network)."""
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import glyphs  # noqa: E402

from engine.data.loading import load_data  # noqa: E402

TINY = glyphs.GlyphParams(classes="ABC", train_per_family=4, test_per_family=2, val_fraction=0.25, side=32)


def _font_folders() -> list[Path]:
    folders = [Path("/usr/share/fonts/truetype/dejavu")]
    try:
        import matplotlib

        folders.insert(0, Path(matplotlib.get_data_path()) / "fonts" / "ttf")
    except ImportError:
        pass
    return folders


def _font(name: str) -> Path:
    for folder in _font_folders():
        if (folder / name).is_file():
            return folder / name
    pytest.skip(f"no {name} on this machine")


@pytest.fixture
def fonts() -> tuple[dict[str, Path], dict[str, Path]]:
    train = {"sans": _font("DejaVuSans.ttf"), "serif": _font("DejaVuSerif.ttf")}
    test = {"mono": _font("DejaVuSansMono.ttf"), "oblique": _font("DejaVuSans-Oblique.ttf")}
    return train, test


def _families(folder: Path) -> set[str]:
    return {p.stem.rsplit("-", 1)[0] for p in folder.rglob("*.png")}


def test_build_renders_balanced_classes_from_disjoint_families(fonts, tmp_path):
    train, test = fonts
    built = glyphs.build(TINY, train, test, cache=tmp_path, log=lambda _: None)
    assert built.counts == {"train": 2 * 3 * 3, "val": 2 * 3 * 1, "test": 2 * 3 * 2}
    for folder, per_class in ((built.trainval / "train", 6), (built.trainval / "val", 2), (built.test, 4)):
        assert Counter(p.parent.name for p in folder.rglob("*.png")) == {c: per_class for c in "ABC"}
    assert _families(built.trainval) == {"sans", "serif"}
    assert _families(built.test) == {"mono", "oblique"}
    image = np.asarray(Image.open(next(built.test.rglob("*.png"))))
    assert image.shape == (32, 32, 3)
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 2  # a glyph in ink on paper, antialiased
    # Graft reads it directly: the folders give the split, the class folders the classes.
    data = load_data(built.trainval)
    assert data.split_from == "folders" and (len(data.train), len(data.val)) == (18, 6)
    assert list(data.heads[0].labels) == ["A", "B", "C"]


def test_build_is_cached_by_its_key_and_the_same_seed_draws_the_same_pixels(fonts, tmp_path):
    train, test = fonts
    first = glyphs.build(TINY, train, test, cache=tmp_path / "one", log=lambda _: None)
    image = next(first.test.rglob("*.png"))
    stamp = image.stat().st_mtime_ns
    again = glyphs.build(TINY, train, test, cache=tmp_path / "one", log=lambda _: None)
    assert again.reused and not first.reused and again.root == first.root and again.counts == first.counts
    assert image.stat().st_mtime_ns == stamp  # not rendered again
    elsewhere = glyphs.build(TINY, train, test, cache=tmp_path / "two", log=lambda _: None)
    assert (elsewhere.root / image.relative_to(first.root)).read_bytes() == image.read_bytes()
    other_seed = glyphs.build(glyphs.GlyphParams(**{**TINY.__dict__, "seed": 1}), train, test,
                              cache=tmp_path / "one", log=lambda _: None)
    assert other_seed.root != first.root and not other_seed.reused
    assert (other_seed.root / image.relative_to(first.root)).read_bytes() != image.read_bytes()
    # the key follows the fonts' bytes, not only their names
    swapped = {"sans": train["serif"], "serif": train["sans"]}
    assert glyphs.build_key(TINY, swapped, test) != glyphs.build_key(TINY, train, test)


def test_build_refuses_a_family_on_both_sides_and_a_font_without_a_class_glyph(fonts, tmp_path):
    train, test = fonts
    with pytest.raises(ValueError, match="both sides"):
        glyphs.build(TINY, train, {"sans": train["sans"]}, cache=tmp_path)
    lacking = glyphs.GlyphParams(classes="A\u3042", train_per_family=1, test_per_family=1)  # hiragana
    with pytest.raises(RuntimeError, match="no glyph for \u3042"):
        glyphs.build(lacking, train, test, cache=tmp_path, log=lambda _: None)
    assert not list(tmp_path.glob("glyphs-*"))  # nothing half-built is left as a build


def _fake_npm(tmp_path: Path, ttf: bytes) -> Path:
    """A stand-in for npm: ``npm pack SPEC… --pack-destination DIR`` writes each package's tarball (a bold
    and a regular TTF) the way npm names it."""
    payload = tmp_path / "font.bin"
    payload.write_bytes(ttf)
    script = tmp_path / "npm"
    script.write_text(f"""#!{sys.executable}
import io, sys, tarfile
from pathlib import Path
args = sys.argv[2:]
dest = Path(args[args.index("--pack-destination") + 1])
data = Path({str(payload)!r}).read_bytes()
for spec in args[:args.index("--pack-destination")]:
    name, version = spec.split("/", 1)[1].rsplit("@", 1)
    with tarfile.open(dest / f"expo-google-fonts-{{name}}-{{version}}.tgz", "w:gz") as tar:
        for member, body in ((f"package/700Bold/X_700Bold.ttf", b"bold"), (f"package/400Regular/X_400Regular.ttf", data)):
            info = tarfile.TarInfo(member)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
""")
    script.chmod(0o755)
    return script


def test_fetch_fonts_keeps_each_packages_regular_ttf(fonts, tmp_path, monkeypatch):
    regular = fonts[0]["sans"].read_bytes()
    folder = tmp_path / "fonts"
    npm = _fake_npm(tmp_path, regular)
    fetched = glyphs.fetch_fonts(["caveat", "lobster"], folder, npm=str(npm), log=lambda _: None)
    assert fetched == ["caveat", "lobster"]
    assert (folder / "caveat.ttf").read_bytes() == regular
    assert sorted(p.name for p in folder.iterdir()) == ["caveat.ttf", "lobster.ttf"]  # no tarball left
    found, missing = glyphs.find_fonts(["caveat", "lobster", "lato"], folder)
    assert set(found) == {"caveat", "lobster"} and missing == ["lato"]
    assert glyphs.fetch_fonts(["caveat"], folder, npm=str(npm)) == []  # already there: npm not run
    monkeypatch.setattr(glyphs.shutil, "which", lambda _: None)
    with pytest.raises(RuntimeError, match="npm is not installed.*lato"):
        glyphs.fetch_fonts(["lato"], folder)


def test_regular_member_prefers_the_400_weight():
    names = ["package/700Bold/A_700Bold.ttf", "package/400Regular/A_400Regular.ttf",
             "package/400Regular/A_400Regular.ttf.png", "package/index.js"]
    assert glyphs._regular_member(names) == "package/400Regular/A_400Regular.ttf"
    assert glyphs._regular_member(["package/300Light_Italic/x.ttf", "package/300Light/x.ttf"]) == \
        "package/300Light/x.ttf"
    assert glyphs._regular_member(["package/index.js"]) is None
