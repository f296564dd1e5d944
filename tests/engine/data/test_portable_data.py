"""Data made on another system loads everywhere: a manifest written on Windows (backslash paths, CRLF line
ends, a byte-order mark), and folders and files whose names have spaces and non-ASCII letters."""
from __future__ import annotations

from pathlib import Path

from PIL import Image

from engine.data.loading import load_data
from engine.files import cache_dir


def _image(path: Path, shade: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), (shade, 255 - shade, 40)).save(path)


def test_a_manifest_written_on_windows(tmp_path):
    root = tmp_path / "Données d'été"
    rows = []
    for i in range(8):
        _image(root / "img" / f"{i:03d} é.png", 30 * i)
        rows.append(f"img\\{i:03d} é.png,{'cat' if i % 2 else 'dog'},{'' if i == 3 else i / 10}")
    text = "image,animal,size\r\n" + "\r\n".join(rows) + "\r\n"
    csv = root / "labels.csv"
    csv.write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    data = load_data(csv, val_fraction=0.25)
    assert not data.skipped
    assert len(data.samples) == 8
    assert {s.path.name for s in data.samples} == {f"{i:03d} é.png" for i in range(8)}
    assert all(s.path.exists() for s in data.samples)
    names = {h.name: h for h in data.heads}
    assert set(names) == {"animal", "size"}  # the BOM did not stick to the first column's name
    assert sorted(names["animal"].label_names) == ["cat", "dog"]


def test_an_image_folder_with_spaces_and_accents(tmp_path):
    root = tmp_path / "my photos ü"
    for cls in ("chat noir", "chien ß"):
        for i in range(3):
            _image(root / cls / f"photo {i} ñ.jpg", 60 * i + (0 if cls.startswith("chat") else 20))
    data = load_data(root)
    assert sorted(data.heads[0].label_names) == ["chat noir", "chien ß"]
    assert len(data.samples) == 6 and not data.skipped


def test_cache_dir_follows_the_system(monkeypatch, tmp_path):
    import engine.files as files

    monkeypatch.delenv("GRAFT_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(files.sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "Local"))
    assert cache_dir() == tmp_path / "Local" / "Graft" / "cache"
    monkeypatch.setattr(files.sys, "platform", "darwin")
    assert cache_dir() == Path.home() / "Library" / "Caches" / "Graft"
    monkeypatch.setattr(files.sys, "platform", "linux")
    assert cache_dir() == Path.home() / ".cache" / "graft"
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path / "mine é"))
    assert cache_dir() == tmp_path / "mine é"
