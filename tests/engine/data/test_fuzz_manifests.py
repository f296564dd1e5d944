"""CSV/TSV manifests fuzzed (Hypothesis): whatever the bytes, loading one ends in a correct load or one
readable GraftError, within 30 s and 300 MB, writing nothing (tests/fuzz_support.py runs each load in a
forked child that checks all of it). Fuzzed: encodings (UTF-8 with and without BOM, UTF-16 LE/BE with BOM,
Latin-1, bytes that are none of them), delimiters, quoting (also broken: an unclosed quote), CRLF and lone
CR line ends, blank rows and cells, duplicate and blank column names, fields over the csv module's limit,
NUL bytes, truncation at any byte, and paths in cells (missing, folders, ``../``, absolute, Windows style).
A clean manifest in any of those encodings and dialects must load every row's label exactly as written."""
from __future__ import annotations

import ast
import csv
import io
from pathlib import Path

import pytest
from hypothesis import assume, given, strategies as st
from PIL import Image

from engine.data.loading import load_data
from engine.data.manifests import suggest_heads
from engine.network.heads import HeadSpec
from fuzz_support import check, readable

IMAGES = [f"img{i}.png" for i in range(8)]
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le-bom", "utf-16-be-bom", "latin-1"]
COLUMNS = ["image", "label", "split", "size", "tags", "Image", "IMAGE", "", " ", "label", "x,y", 'a"b', "é",
           "unnamed: 0", "type", "train"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Eight tiny PNGs, a corrupt one, an empty one and a subfolder, next to which manifests are written."""
    root = tmp_path_factory.mktemp("manifests")
    for i, name in enumerate(IMAGES):
        Image.new("RGB", (4 + i, 5), (30 * i, 0, 255 - 30 * i)).save(root / name)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    (root / "empty.jpg").write_bytes(b"")
    (root / "sub").mkdir()
    (root / "sub" / "deep.png").write_bytes((root / IMAGES[0]).read_bytes())
    return root


def encode(text: str, encoding: str) -> bytes:
    if encoding == "utf-16-le-bom":
        return b"\xff\xfe" + text.encode("utf-16-le")
    if encoding == "utf-16-be-bom":
        return b"\xfe\xff" + text.encode("utf-16-be")
    return text.encode(encoding, errors="replace")


def load_everything(path: Path) -> str:
    """What the window and the CLI do with a manifest: suggest heads (as the window does, not strictly),
    then load with them, and load with the heads suggested strictly."""
    try:
        heads = suggest_heads(path, strict=False)
    except Exception:
        heads = None
    data = load_data(path, heads, strict_suggestions=False) if heads else load_data(path)
    assert all(s.path.is_file() for s in data.samples), "a sample whose image is not a file"
    return f"{len(data.train)} train, {len(data.val)} val, heads {[h.name for h in data.heads]}"


cell_text = st.one_of(
    st.sampled_from(IMAGES + ["broken.png", "empty.jpg", "sub", "sub/deep.png", "sub\\deep.png", "missing.png",
                              "../img0.png", "/etc/passwd", "/", "~", "", " ", "0", "1", "yes", "no", "1.5", "0,5",
                              "nan", "inf", "-1e39", "1e400", "train", "val", "test", "Validation", "bogus",
                              "a", "b", "c", '"', '""', "\x00", "\r", "\n", "\t", ";", ",", "\ufeff"]),
    st.text(max_size=12),
)


@st.composite
def near_rows(draw) -> tuple[list[str], list[list[str]]]:
    """A manifest that is nearly right: real images, labels from a few classes, now and then an odd cell."""
    header = ["image", "label"] + draw(st.lists(st.sampled_from(["split", "size", "tags", "note"]), unique=True))
    pools = {"image": st.sampled_from(IMAGES), "label": st.sampled_from(["a", "b", "c", "a ", "b"]),
             "split": st.sampled_from(["train", "val", "", "test", "TRAIN"]),
             "size": st.sampled_from(["1", "2.5", "-3", "0,5", "1e3"]), "tags": st.sampled_from(["0", "1", "yes"]),
             "note": st.text(max_size=8)}
    odd = st.one_of(st.just(None), st.just(None), st.just(None), cell_text)
    rows = []
    for _ in range(draw(st.integers(3, 12))):
        row = [draw(pools[c]) for c in header]
        if (cell := draw(odd)) is not None:
            row[draw(st.integers(0, len(row) - 1))] = cell
        rows.append(row)
    return header, rows


@st.composite
def wild_rows(draw) -> tuple[list[str], list[list[str]]]:
    """Any header from a pool of awkward names (duplicates, blanks, delimiters inside) and cells of any text."""
    header = draw(st.lists(st.sampled_from(COLUMNS), min_size=1, max_size=6))
    if draw(st.booleans()):
        header = ["image"] + header
    return header, draw(st.lists(st.lists(cell_text, max_size=len(header) + 2), max_size=12))


@st.composite
def manifests(draw) -> tuple[str, bytes]:
    """``(suffix, bytes)``: a near or a wild manifest in any dialect and encoding, sometimes corrupted or cut."""
    header, rows = draw(st.one_of(near_rows(), near_rows(), wild_rows()))
    suffix = draw(st.sampled_from([".csv", ".tsv", ".CSV"]))
    delimiter = "\t" if suffix == ".tsv" and draw(st.integers(0, 4)) else draw(st.sampled_from([",", ";", "\t", "|"]))
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, quoting=draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL])),
                        lineterminator=draw(st.sampled_from(["\n", "\r\n", "\r"])))
    writer.writerow(header)
    writer.writerows(rows)
    text = buffer.getvalue()
    if draw(st.integers(0, 3)) == 0:  # a corruption at a random place
        at = draw(st.integers(0, len(text)))
        junk = draw(st.sampled_from(['"', "\x00", "\r", "\n\n\n", ",,,,", "x" * 140_000, '"' + "y" * 140_000,
                                     "\ufeff", "\u2028", "\\"]))
        text = text[:at] + junk + text[at:]
    data = encode(text, draw(st.sampled_from(ENCODINGS)))
    if draw(st.integers(0, 3)) == 0:
        data = data[:draw(st.integers(0, len(data)))]
    return suffix, data


@given(manifest=manifests())
@pytest.mark.slow
def test_any_manifest_loads_or_is_refused_clearly(folder, manifest):
    suffix, data = manifest
    path = folder / f"fuzzed{suffix}"
    path.write_bytes(data)
    outcome = check(load_everything, path, label="manifest (structured)")
    if outcome.kind == "graft":
        assert readable(outcome.detail), outcome.detail[:500]


@given(data=st.binary(max_size=3000))
@pytest.mark.slow
def test_any_bytes_as_a_manifest(folder, data):
    path = folder / "bytes.csv"
    path.write_bytes(b"image,label\n" + data if data[:1] == b"\x01" else data)
    outcome = check(load_everything, path, label="manifest (raw bytes)")
    if outcome.kind == "graft":
        assert readable(outcome.detail), outcome.detail[:500]


label_text = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=20).filter(lambda t: t.strip())


@given(labels=st.lists(label_text, min_size=2, max_size=len(IMAGES)), encoding=st.sampled_from(ENCODINGS),
       delimiter=st.sampled_from([",", ";", "\t"]), ending=st.sampled_from(["\n", "\r\n"]),
       quoting=st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]), blank_rows=st.booleans())
@pytest.mark.slow
def test_a_clean_manifest_loads_each_label_as_written(folder, labels, encoding, delimiter, ending, quoting, blank_rows):
    """The oracle: labels of any text (quotes, delimiters, line breaks, accents, emoji …) come back exactly
    (less surrounding spaces) from every encoding and dialect a spreadsheet writes."""
    stripped = [t.strip() for t in labels]
    assume(len(set(stripped)) >= 2)
    if encoding == "latin-1":
        assume(all(t.isascii() or _latin1_only(t) for t in labels))
    if any("\r" in t for t in labels):  # Python 3.11's writer leaves a lone CR unquoted: no spreadsheet would
        quoting = csv.QUOTE_ALL
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, quoting=quoting, lineterminator=ending)
    writer.writerow(["image", "label"])
    for name, label in zip(IMAGES, labels):
        writer.writerow([name, label])
        if blank_rows:
            writer.writerow([])
    path = folder / ("clean.tsv" if delimiter == "\t" else "clean.csv")
    path.write_bytes(encode(buffer.getvalue(), encoding))

    def load() -> dict[str, str]:
        data = load_data(path, [HeadSpec("label", "single", columns=["label"])], require_every_class=False)
        spec = data.head("label")
        return {s.path.name: spec.labels[s.targets["label"]] for s in data.samples}

    outcome = check(load, label="manifest (clean, label oracle)")
    assert outcome.kind == "ok", outcome.detail
    assert ast.literal_eval(outcome.detail) == dict(zip(IMAGES, stripped))


def _latin1_only(text: str) -> bool:
    """Encodable in Latin-1 and, so encoded, not also valid UTF-8 (those bytes are read as UTF-8 first)."""
    try:
        raw = text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False
