"""Manifests the fuzzing (test_fuzz_manifests.py) found mishandled, each pinned by a plain test."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from engine.data.loading import load_data
from engine.data.manifests import suggest_heads
from engine.errors import GraftError
from engine.network.heads import HeadSpec


def images(folder: Path, n: int = 4) -> list[str]:
    names = [f"{i}.png" for i in range(n)]
    for i, name in enumerate(names):
        Image.new("RGB", (5, 4), (40 * i, 0, 0)).save(folder / name)
    return names


def test_a_huge_cell_or_column_name_is_quoted_short(tmp_path):
    """A 100,000-character column name or cell was quoted whole: a message of 100,000 characters."""
    names = images(tmp_path)
    huge = "x" * 100_000
    csv = tmp_path / "m.csv"
    csv.write_text(f'"{huge}",label\n' + "".join(f"{n},a\n" for n in names))
    with pytest.raises(GraftError) as info:
        load_data(csv)
    assert len(str(info.value)) < 400 and "100,000 characters" in str(info.value), str(info.value)[:500]
    csv.write_text("image,size\n" + "".join(f"{n},{i}\n" for i, n in enumerate(names)) + f'{names[0]},"{huge}"\n')
    with pytest.raises(GraftError, match=r"row 6, column 'size': 'x+'… \(100,000 characters\) is not a number") as info:
        load_data(csv, [HeadSpec("size", "regression", columns=["size"])])
    assert len(str(info.value)) < 400


def test_a_long_column_name_gives_a_short_head_name(tmp_path):
    names = images(tmp_path)
    column = "how round the shape looks " * 8
    csv = tmp_path / "m.csv"
    csv.write_text(f"image,{column}\n" + "".join(f"{n},{'ab'[i % 2]}\n" for i, n in enumerate(names)))
    (head,) = suggest_heads(csv)
    assert head.name == "how_round_the_shape_looks_how_round_the" and head.columns == [column.strip()]


def test_a_utf16_manifest_cut_off_mid_character_is_still_read_as_utf16(tmp_path):
    """An odd number of bytes after a UTF-16 BOM fell back to Latin-1: the header became 'ÿþi\\x00m\\x00…'."""
    names = images(tmp_path)
    csv = tmp_path / "m.csv"
    text = "image,label\r\n" + "".join(f"{n},{'ab'[i % 2]}\r\n" for i, n in enumerate(names))
    csv.write_bytes(text.encode("utf-16") + b"\x00")  # a stray last byte
    data = load_data(csv, [HeadSpec("label", "single", columns=["label"])], require_every_class=False)
    assert sorted(s.path.name for s in data.samples) == names and data.heads[0].labels == ["a", "b"]


def test_a_row_longer_than_a_one_column_header_says_one_column(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("image\n0.png,a\n")
    with pytest.raises(GraftError, match=r"row 2: 2 cells but the header has 1 column\."):
        load_data(csv)


def test_a_cell_past_the_csv_field_limit_is_refused_naming_the_likely_cause(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text('image,label\n0.png,"a\n' + "b" * 200_000 + "\n")
    with pytest.raises(GraftError, match=r'm.csv: a cell holds more than 131,072 characters \(often a quote " that is '
                                         r"never closed\)\."):
        load_data(csv)


def test_quoted_cuts_any_value_not_only_text():
    """engine.units.quoted on a value read from a file where text or a number belongs (the ONNX metadata
    fuzz: a list of 5,000 numbers, an int of 5,000 digits, quoted whole or not at all)."""
    from engine.units import quoted

    assert quoted("short") == "'short'" and quoted(3) == "3" and quoted(None) == "None"
    assert quoted("x" * 100) == repr("x" * 60) + "… (100 characters)"
    long_list = quoted(list(range(5000)))
    assert long_list.startswith("[0, 1, 2") and long_list.endswith("(list, 28,890 characters)") and len(long_list) < 100
    assert quoted(10 ** 5000) == "<int>"
