"""CSV/TSV manifests: an ``image`` column (paths relative to the manifest's folder) and label columns read by heads
(:class:`~engine.network.heads.HeadSpec` ``columns``; a blank cell is a missing label), an optional ``split`` column;
heads suggested from the columns when none are given (:func:`suggest_heads`).

Every cell is parsed before any image is touched, so data errors are reported first, by row and column."""
from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import replace
from pathlib import Path, PureWindowsPath
from typing import Any

import numpy as np

from engine.data import decoding
from engine.data.decoding import _check_all, _no_images_message, _quick_notes
from engine.data.dense_targets import resolve_dense
from engine.data.samples import MAX_LISTED, DataSource, Sample, Target, _listing
from engine.data.splits import SPLIT_WORDS, _check_one_side, _split_fixed, _split_random
from engine.errors import GraftError
from engine.network.heads import RESERVED_NAMES, HeadSpec
from engine.units import plural, quoted

MANIFEST_SUFFIXES = (".csv", ".tsv")  # a .tsv is always tab-separated; a .csv may use , ; or tab

TRUE_WORDS = frozenset({"1", "1.0", "true", "yes"})
FALSE_WORDS = frozenset({"0", "0.0", "false", "no"})
MOSTLY = 0.9  # a column this much numeric (or 0/1) but not entirely is taken for a typo, not for text
FLOAT32_MAX = float(np.finfo(np.float32).max)
HEAD_NAME_LIMIT = 40


def _read_csv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]], str]:
    """Header, rows ``(row number, cells)`` and the delimiter; the header is row 1, as in a spreadsheet.
    Blank rows are dropped, short rows padded. Accepts UTF-8 (with or without BOM), UTF-16 with a BOM (a
    spreadsheet's "Unicode text") or Latin-1, and ``,`` ``;`` or tab (then numbers may use a decimal comma,
    as spreadsheets in many locales write them)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise GraftError(f"{path}: cannot read ({exc.strerror or exc}).") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):  # a BOM says UTF-16: a cut-off last character is no Latin-1
        text = raw.decode("utf-16", errors="replace")
    else:
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
    first = text.split("\n", 1)[0]
    delimiter = ("\t" if path.suffix.lower() == ".tsv" else
                 "," if "," in first else (";" if ";" in first else ("\t" if "\t" in first else ",")))
    try:
        records = list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
    except csv.Error as exc:
        if "field limit" in str(exc):
            raise GraftError(f"{path.name}: a cell holds more than {csv.field_size_limit():,} characters (often a "
                             'quote " that is never closed).') from None
        raise GraftError(f"{path.name}: not a valid CSV file ({exc}).") from None
    if not records or not any(c.strip() for c in records[0]):
        raise GraftError(f"{path.name}: the CSV is empty (it needs a header row with an 'image' column).")
    header = [c.strip() for c in records[0]]
    named = [c for c in header if c]
    dupes = sorted({c for c in named if named.count(c) > 1})
    if dupes:
        raise GraftError(f"{path.name}: column {_listing(dupes)} appears more than once in the header.")
    rows: list[tuple[int, list[str]]] = []
    for number, cells in enumerate(records[1:], start=2):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) > len(header):
            if any(c.strip() for c in cells[len(header):]):
                raise GraftError(f"{path.name} row {number}: {len(cells)} cells but the header has "
                                 f"{plural(len(header), 'column')}.")
            cells = cells[:len(header)]
        rows.append((number, [c.strip() for c in cells] + [""] * (len(header) - len(cells))))
    return header, rows, delimiter


def _find_column(header: list[str], name: str) -> int | None:
    if name in header:
        return header.index(name)
    lowered = [c.lower() for c in header]
    return lowered.index(name) if name in lowered else None


def _number(text: str, decimal_comma: bool = False) -> float | None:
    """``text`` as a number, or None. With ``decimal_comma`` (a ``;``- or tab-separated file) ``0,5``
    is 0.5 too (a comma and no point)."""
    try:
        return float(text)
    except ValueError:
        pass
    if decimal_comma and text.count(",") == 1 and "." not in text:
        try:
            return float(text.replace(",", "."))
        except ValueError:
            return None
    return None


def _head_name(column: str) -> str:
    """A legal head name for a column: 'type' or 'train' would clash with the heads' nn.ModuleDict. At most
    :data:`HEAD_NAME_LIMIT` characters: a column name can be a whole paragraph."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", column).strip("_-")[:HEAD_NAME_LIMIT].strip("_-")
    if name in RESERVED_NAMES:
        name += "_head"
    return name or "head"


DENSE_COLUMNS = {"mask": "segment", "boxes": "detect"}  # columns that suggest a segment / detect head


def _suggest(header: list[str], rows: list[tuple[int, list[str]]], csv_name: str, decimal_comma: bool = False,
             notes: list[str] | None = None, *, strict: bool = True,
             warnings: list[str] | None = None, dense: bool = False) -> list[HeadSpec]:
    image_col = _find_column(header, "image")
    split_col = _find_column(header, "split")
    text_cols: list[tuple[str, list[str]]] = []
    bin_cols: list[str] = []
    num_cols: list[str] = []
    left_out: list[tuple[str, str]] = []  # (column, why)
    found: list[str] = []
    refused: list[tuple[str, str]] = []  # strict=False: (the refusal, the column left out because of it)

    def stray(what: str, col: str, kind: str) -> None:
        refusal = (f"{what}; fix the cell (blank = missing label), or name the head yourself "
                   f"(e.g. --head {_head_name(col)}:{kind}:{col}) to read it otherwise.")
        if strict:
            raise GraftError(refusal)
        refused.append((refusal, f"{what}; the column is left out of the suggested heads: fix the cell "
                                 "(blank = missing label) and load the data again to learn it."))

    for i, col in enumerate(header):
        if i in (image_col, split_col) or not col or col.lower().startswith("unnamed:"):
            continue
        if col.lower() in DENSE_COLUMNS:  # mask files / boxes: a segment / detect head reads them when asked
            if dense:  # the caller adds that head itself (_load_csv's dense suggestions): no note
                continue
            kind = DENSE_COLUMNS[col.lower()]
            left_out.append((col, f"holds {'mask files' if kind == 'segment' else 'boxes'}: a {kind} head reads it "
                                  f"when added (e.g. --head {_head_name(col)}:{kind}:{col})"))
            continue
        cells = [(number, cells[i]) for number, cells in rows if cells[i]]
        values = [v for _, v in cells]
        if not values:
            left_out.append((col, "is blank"))
            continue
        n = len(values)
        binary = [v.lower() in TRUE_WORDS | FALSE_WORDS for v in values]
        numbers = [_number(v, decimal_comma) for v in values]
        n_binary, n_numbers = sum(binary), sum(x is not None for x in numbers)
        if n_binary == n:
            bin_cols.append(col)
            continue
        if n_binary >= MOSTLY * n:  # a 0/1 column with a stray value: a typo, not a number or a class
            row, text = next(c for c, ok in zip(cells, binary) if not ok)
            stray(f"{csv_name} row {row}, column {quoted(col)}: {quoted(text)} is not 0 or 1, but {n_binary} of the "
                  f"column's {n} values are", col, "regression")
            continue
        if n_numbers == n:
            num_cols.append(col)
            distinct = {x for x in numbers if x is not None}
            if 3 <= len(distinct) <= 10 and all(math.isfinite(x) and x.is_integer() for x in distinct):
                found.append(f"Column {quoted(col)} holds {len(distinct)} whole numbers: treated as a number; name it "
                             f"as a single-label head (e.g. --head {_head_name(col)}:single:{col}) to treat them "
                             "as classes.")
            continue
        if n_numbers >= MOSTLY * n:  # a numeric column with a typo
            row, text = next(c for c, x in zip(cells, numbers) if x is None)
            stray(f"{csv_name} row {row}, column {quoted(col)}: {quoted(text)} is not a number, but {n_numbers} of "
                  f"the column's {n} values are", col, "single")
            continue
        if not decimal_comma and all(_number(v, True) is not None for v in values):
            left_out.append((col, f"holds numbers with a decimal comma (e.g. {quoted(values[0])}) in a "
                                  "comma-separated file; write them with a decimal point, or separate the "
                                  "columns with ';'"))
            continue
        distinct_text = sorted(set(values))
        if len(distinct_text) < 2:  # one class: nothing to learn
            left_out.append((col, f"has a single value ({quoted(distinct_text[0])})"))
            continue
        if len(distinct_text) == len(values) > 10:  # every value different: an identifier, not a class
            left_out.append((col, "has a different value on every row"))
            continue
        text_cols.append((col, distinct_text))
    heads: list[HeadSpec] = []
    used: set[str] = set()

    def unique(name: str) -> str:
        base, k = name, 2
        while name in used:
            name, k = f"{base}_{k}", k + 1
        used.add(name)
        return name

    for col, distinct in text_cols:
        heads.append(HeadSpec(unique(_head_name(col)), "single", labels=distinct, columns=[col]))
    if bin_cols:
        name = _head_name(bin_cols[0]) if len(bin_cols) == 1 else "tags"
        heads.append(HeadSpec(unique(name), "multi", labels=list(bin_cols), columns=list(bin_cols)))
    if num_cols:
        name = _head_name(num_cols[0]) if len(num_cols) == 1 else "numbers"
        heads.append(HeadSpec(unique(name), "regression", labels=list(num_cols), columns=list(num_cols)))
    if not heads and refused:  # nothing else to learn: refused as with strict
        raise GraftError(refused[0][0])
    if not heads:
        why = (f" ({'; '.join(f'{quoted(c)} {w}' for c, w in left_out[:MAX_LISTED])})" if left_out
               else " (it has no columns besides 'image')")
        raise GraftError(f"{csv_name}: found no label columns to learn{why}.")
    if notes is not None:
        notes.extend(found)
        notes.extend(f"Column {quoted(col)} is not a head: it {why}." for col, why in left_out)
    if warnings is not None:
        warnings.extend(message for _, message in refused)
    return heads


def suggest_heads(csv_path: str | os.PathLike, notes: list[str] | None = None, *, strict: bool = True,
                  warnings: list[str] | None = None) -> list[HeadSpec]:
    """Heads inferred from a manifest: each text column -> a single-label head named after it; all
    0/1 (true/false, yes/no) columns -> one multi-label head ``tags``; the other numeric columns -> one
    regression head ``values``. A lone 0/1 or numeric column gives a head named after the column. A
    ``mask`` column (mask files) and a ``boxes`` column are no suggested heads (a note says which dense head
    reads them: :func:`dense_heads_for`). ``image`` and ``split`` are never labels; blank columns, text columns with a single value and
    text columns whose values are all different (identifiers) are left out. A column that is mostly
    (90 %) numbers or 0/1 but not entirely is refused, naming the first odd cell: a typo would
    otherwise turn it into classes. ``notes`` (a list) receives why columns were left out and which
    numeric columns might be classes. With ``strict=False`` (the window) such a column is left out
    instead and the refusal goes into ``warnings`` (a list), so the other columns still load; it is
    still refused when no other column makes a head."""
    path = Path(csv_path).expanduser()
    header, rows, delimiter = _read_csv(path)
    if _find_column(header, "image") is None:
        raise GraftError(_no_image_column(path, header))
    return _suggest(header, rows, path.name, delimiter != ",", notes, strict=strict, warnings=warnings)


def dense_heads_for(csv_path: str | os.PathLike) -> list[HeadSpec]:
    """The dense heads a manifest's ``mask`` and ``boxes`` columns can feed (a segment head ``mask``, a detect
    head ``boxes``; their classes come from the data when it loads), for offering them beside the
    suggested heads (the demo has both)."""
    header, _, _ = _read_csv(Path(csv_path).expanduser())
    return _dense_heads(header)


def _dense_heads(header: list[str]) -> list[HeadSpec]:
    return [HeadSpec(_head_name(col), DENSE_COLUMNS[col.lower()], outputs=2, columns=[col])
            for col in header if col.lower() in DENSE_COLUMNS]


def _no_image_column(path: Path, header: list[str]) -> str:
    return (f"{path.name} has no 'image' column (the image paths, relative to the CSV's folder). "
            f"Columns found: {_listing([c for c in header if c]) or 'none'}.")


def _resolve_columns(spec: HeadSpec, header: list[str]) -> list[str]:
    """The columns a head reads, defaulting to its labels (multi/regression) or its own name."""
    if spec.columns:
        return list(spec.columns)
    if spec.kind != "single" and spec.labels and all(lab in header for lab in spec.labels):
        return list(spec.labels)
    return [spec.name]


def _image_path(text: str, base: Path) -> Path:
    p = Path(text).expanduser()
    if not p.is_absolute():
        p = base / p
    if "\\" in text and os.sep != "\\" and not p.exists():  # a manifest written on Windows
        p = base / Path(*PureWindowsPath(text).parts)
    return p


def _load_csv(csv_path: Path, heads: list[HeadSpec] | None, val_fraction: float, seed: int,
              strict: bool = True, strict_suggestions: bool = True, dense: bool = False) -> DataSource:
    name = csv_path.name
    base = csv_path.parent
    header, rows, delimiter = _read_csv(csv_path)
    decimal_comma = delimiter != ","
    notes: list[str] = []
    warnings: list[str] = []
    image_col = _find_column(header, "image")
    if image_col is None:
        raise GraftError(_no_image_column(csv_path, header))
    split_col = _find_column(header, "split")

    offered: set[str] = set()  # dense heads added as suggestions: a bad mask or box leaves them out, with a warning
    if heads is None:
        # Classes come from the usable rows, not from rows whose image is unreadable.
        heads = [replace(h, labels=[]) if h.kind == "single" else h
                 for h in _suggest(header, rows, name, decimal_comma, notes, strict=strict_suggestions,
                                   warnings=warnings, dense=dense)]
        if dense:  # and the dense heads its mask / boxes columns feed (the window: a head added later has data)
            taken = {h.name for h in heads}
            extra = [h for h in _dense_heads(header) if h.name not in taken]
            offered = {h.name for h in extra}
            heads += extra
    if not heads:
        raise GraftError("No heads given: say which CSV columns to learn.")
    names = [h.name for h in heads]
    if len(set(names)) != len(names):
        raise GraftError(f"Two heads share the name {_listing(sorted({n for n in names if names.count(n) > 1}))}.")

    columns: dict[str, list[str]] = {}
    missing: list[str] = []
    for spec in heads:
        cols = _resolve_columns(spec, header)
        for c in cols:
            if c not in header:
                missing.append(f"{quoted(c)} (head {spec.name!r})")
        columns[spec.name] = cols
    if missing:
        shown = ", ".join(missing[:MAX_LISTED]) + (f" and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else "")
        raise GraftError(f"{name} has no column {shown}. Columns found: {_listing([c for c in header if c])}.")
    for spec in heads:
        cols = columns[spec.name]
        if spec.dense and len(cols) != 1:
            raise GraftError(f"Head {spec.name!r} ({spec.kind}) reads one column, not {len(cols)}.")
        if spec.kind == "single" and len(cols) != 1:
            raise GraftError(f"Single-label head {spec.name!r} reads one column of class names, not {len(cols)}.")
        if spec.kind not in ("single", "segment", "detect") and spec.labels and len(spec.labels) != len(cols):
            raise GraftError(f"Head {spec.name!r} names {len(spec.labels)} labels but reads {len(cols)} columns.")

    # Parse every row before touching any image: data errors are reported first, by row and column.
    errors: list[str] = []
    parsed: list[tuple[int, str, str | None, dict[str, Any]]] = []
    for number, cells in rows:
        where = f"{name} row {number}"
        split = None
        if split_col is not None and cells[split_col]:
            split = SPLIT_WORDS.get(cells[split_col].lower())
            if split is None:
                errors.append(f"{where}, column {quoted(header[split_col])}: {quoted(cells[split_col])} is not "
                              "train, val, valid, validation or test.")
        raw: dict[str, Any] = {}
        for spec in heads:
            cols = columns[spec.name]
            if spec.dense:  # a mask file or boxes: read once the image is known to be usable
                raw[spec.name] = (cells[header.index(cols[0])], f"{where}, column {cols[0]!r}")
            elif spec.kind == "single":
                value = cells[header.index(cols[0])] or None
                if value is not None and spec.labels and value not in spec.labels:
                    errors.append(f"{where}, column {quoted(cols[0])}: unknown class {quoted(value)} "
                                  f"(head {spec.name!r} has {_listing(spec.labels)}).")
                raw[spec.name] = value
            else:
                vec: list[float] = []
                for c in cols:
                    text = cells[header.index(c)]
                    if not text:
                        vec.append(math.nan)
                    elif spec.kind == "multi":
                        low = text.lower()
                        if low in TRUE_WORDS:
                            vec.append(1.0)
                        elif low in FALSE_WORDS:
                            vec.append(0.0)
                        else:
                            errors.append(f"{where}, column {quoted(c)}: {quoted(text)} is not 0/1, true/false or "
                                          "yes/no "
                                          f"(multi-label head {spec.name!r}).")
                            vec.append(math.nan)
                    else:
                        v = _number(text, decimal_comma)
                        if v is None or math.isinf(v):
                            errors.append(f"{where}, column {quoted(c)}: {quoted(text)} is not a number "
                                          f"(regression head {spec.name!r}).")
                            v = math.nan
                        elif abs(v) > FLOAT32_MAX:  # would become infinite in training (float32)
                            errors.append(f"{where}, column {quoted(c)}: {quoted(text)} is too large (the limit "
                                          "is about "
                                          f"±3.4e38; regression head {spec.name!r}).")
                            v = math.nan
                        vec.append(v)
                raw[spec.name] = vec
        parsed.append((number, cells[image_col], split, raw))
    if errors:
        more = f" ({plural(len(errors) - 1, 'more problem')} like it)" if len(errors) > 1 else ""
        raise GraftError(errors[0] + more)

    skipped: list[tuple[str, str]] = []
    located: list[tuple[Path, str | None, dict[str, Any], int]] = []
    for number, text, split, raw in parsed:
        if not text:
            skipped.append((f"{name} row {number}", "no image path"))
        else:
            located.append((_image_path(text, base), split, raw, number))
    unique_paths = list(dict.fromkeys(p for p, _, _, _ in located))
    quick = len(unique_paths) > decoding.FULL_CHECK_LIMIT
    verdict = dict(zip(unique_paths, _check_all(unique_paths, quick)))
    usable: list[tuple[Path, str | None, dict[str, Any]]] = []
    numbers: list[int] = []
    for p, split, raw, number in located:
        if verdict[p]:
            skipped.append((str(p), verdict[p]))
        else:
            usable.append((p, split, raw))
            numbers.append(number)
    if not usable:
        raise GraftError(_no_images_message(csv_path, skipped))

    final_heads: list[HeadSpec] = []
    dense_targets: dict[str, list[Any]] = {}
    for spec in heads:
        cols = columns[spec.name]
        if spec.dense:  # every mask and box checked now: one clear message naming the file
            try:
                found, dense_targets[spec.name] = resolve_dense(
                    spec, [(p, *raw[spec.name]) for p, _, raw in usable], base)
            except GraftError as exc:
                if spec.name not in offered:
                    raise
                warnings.append(f"{exc} The column {quoted(cols[0])} is left out of the suggested heads (no "
                                f"{'segmentation' if spec.kind == 'segment' else 'detection'} head): fix it and "
                                "load the data again to learn it.")
                continue
            final_heads.append(replace(found, columns=list(cols)))
        elif spec.kind == "single":
            values = [raw[spec.name] for _, _, raw in usable if raw[spec.name] is not None]
            if not values:
                raise GraftError(f"Head {spec.name!r} has no labelled example: column {quoted(cols[0])} is blank "
                                 "for every usable image.")
            if spec.labels:
                labels = list(spec.labels)
                present = set(values)
                empty = [lab for lab in labels if lab not in present]
                if empty and strict:
                    raise GraftError(f"Head {spec.name!r}: class {_listing(empty)} has no example "
                                     f"(column {quoted(cols[0])}); every class needs at least one.")
            else:
                labels = sorted(set(values))
                if len(labels) < 2:
                    raise GraftError(f"Head {spec.name!r}: column {quoted(cols[0])} has only one class "
                                     f"({quoted(labels[0])}); "
                                     "a single-label head needs at least two.")
            final_heads.append(replace(spec, labels=labels, columns=list(cols)))
        else:
            matrix = np.array([raw[spec.name] for _, _, raw in usable], dtype=np.float64).reshape(len(usable), len(cols))
            labelled = ~np.isnan(matrix)
            if not labelled.any():
                raise GraftError(f"Head {spec.name!r} has no labelled example: column(s) {_listing(cols)} "
                                 "are blank for every usable image.")
            labels = list(spec.labels) if spec.labels else list(cols)
            for j, c in enumerate(cols if strict else ()):
                if not labelled[:, j].any():
                    raise GraftError(f"Head {spec.name!r}: column {quoted(c)} has no value for any usable image.")
                if spec.kind == "multi" and not (matrix[labelled[:, j], j] > 0.5).any():
                    raise GraftError(f"Head {spec.name!r}: label {quoted(labels[j])} (column {quoted(c)}) has no "
                                     "positive "
                                     "example; every label needs at least one 1.")
            final_heads.append(replace(spec, labels=labels, columns=list(cols)))

    samples: list[Sample] = []
    splits: list[str | None] = []
    for row, (p, split, raw) in enumerate(usable):
        targets: dict[str, Target] = {}
        for spec in final_heads:
            value = raw[spec.name]
            if spec.dense:
                if dense_targets[spec.name][row] is not None:
                    targets[spec.name] = dense_targets[spec.name][row]
            elif spec.kind == "single":
                targets[spec.name] = -1 if value is None else spec.labels.index(value)
            else:
                targets[spec.name] = [float(np.float32(v)) for v in value]
        samples.append(Sample(p, targets, not quick))
        splits.append(split)

    if split_col is not None and any(s is not None for s in splits):
        if strict:
            _check_one_side(samples, splits, numbers, name)
        train, val = _split_fixed(samples, splits, name, f"the {quoted(header[split_col])} column", strict)
        split_from = "column"
    else:
        strat = next((h for h in final_heads if h.kind == "single"), None)
        train, val = _split_random(samples, strat, val_fraction, seed)
        split_from = "random"
    return DataSource("csv", base, final_heads, train, val, skipped, path=csv_path, split_from=split_from,
                      notes=notes + _quick_notes(quick, len(samples)), warnings=warnings)
