"""Reading members of a ``.graft`` zip (a project or a recovery file) that may be damaged or hostile, as
found by tests/engine/project/test_fuzz_projects.py. :mod:`zipfile` trusts the sizes an entry declares:
a member that says 4 GB makes ``zf.read`` ask for 4 GB before reading a byte, one that inflates 1000:1
fills memory, and a lying size ends in a bare ``EOFError``. Here each member Graft reads must appear
once, declare sizes that fit the file and a sane compression ratio, and is read in pieces, so whatever
the bytes, a read ends in its data or one :class:`GraftError` naming the file. Nothing is ever
extracted: member names (``../``, absolute, symlink entries) are only compared, never used as paths."""
from __future__ import annotations

import json
import lzma
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

from engine.errors import GraftError
from engine.units import human_bytes

JSON_LIMIT = 64 * 2 ** 20  # a recipe or a checkpoint's JSON is kilobytes; 64 MB is no JSON Graft writes
BOMB_RATIO = 200  # Graft stores members uncompressed; deflated float weights shrink by a few percent
BOMB_FLOOR = 64 * 2 ** 20  # below this, any ratio: a member this small inflates to nothing that matters
CHUNK = 16 * 2 ** 20
# What zipfile and its decompressors raise for a damaged archive or member (an encrypted one: RuntimeError;
# a compression method it does not know: NotImplementedError).
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, zlib.error, lzma.LZMAError,
              NotImplementedError, RuntimeError, ValueError, OverflowError)


def open_zip(path: str | os.PathLike, what: str) -> zipfile.ZipFile:
    """The zip at ``path``; GraftError("<file> is not a <what> (…)") when it is none."""
    path = Path(path)
    try:
        return zipfile.ZipFile(path)
    except ZIP_ERRORS as exc:
        raise GraftError(f"{path.name} is not a {what} ({_why(exc)}).") from None


def has_member(zf: zipfile.ZipFile, name: str) -> bool:
    return any(info.filename == name for info in zf.infolist())


def read_member(zf: zipfile.ZipFile, name: str, path: str | os.PathLike, limit: int | None = None) -> bytes:
    """The bytes of member ``name``: KeyError when the zip has none; GraftError naming the file when it has
    more than one, when its sizes cannot be true (past the file's end, over ``limit``, a zip bomb's ratio)
    or when its data is damaged."""
    path = Path(path)
    entries = [info for info in zf.infolist() if info.filename == name]
    if not entries:
        raise KeyError(name)
    if len(entries) > 1:
        raise GraftError(f"{path.name} holds {name} {len(entries)} times, so which one is meant is unclear: "
                         "the file is damaged.")
    info = entries[0]
    size, packed = info.file_size, info.compress_size
    try:
        on_disk = os.fstat(zf.fp.fileno()).st_size if zf.fp is not None else None
    except (OSError, AttributeError, ValueError):
        on_disk = None
    if (on_disk is not None and info.header_offset + packed > on_disk) or \
            (info.compress_type == zipfile.ZIP_STORED and size != packed):
        raise GraftError(f"{path.name} is damaged: its {name} says it is larger than the file holds.")
    if limit is not None and size > limit:
        raise GraftError(f"{path.name} is damaged: its {name} says it is {human_bytes(size)}, far more than Graft "
                         "writes.")
    if size > BOMB_FLOOR and size > packed * BOMB_RATIO:
        raise GraftError(f"{path.name} is refused: its {name} would inflate from {human_bytes(packed)} to "
                         f"{human_bytes(size)} (a zip bomb, or a damaged file).")
    try:
        parts = []
        with zf.open(info) as member:
            left = size
            while left > 0:  # in pieces: never more than the entry declares, never one huge allocation
                chunk = member.read(min(CHUNK, left))
                if not chunk:
                    break
                parts.append(chunk)
                left -= len(chunk)
        data = b"".join(parts)
    except ZIP_ERRORS as exc:
        raise GraftError(f"{path.name} is damaged: its {name} cannot be read ({_why(exc)}).") from None
    if len(data) != size:
        raise GraftError(f"{path.name} is damaged: its {name} is cut short.")
    return data


def read_json(zf: zipfile.ZipFile, name: str, path: str | os.PathLike) -> Any:
    """Member ``name`` parsed as JSON (KeyError when absent; GraftError naming the file when it is not JSON)."""
    data = read_member(zf, name, path, limit=JSON_LIMIT)
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise GraftError(f"{Path(path).name} is damaged: its {name} is not valid JSON ({_why(exc)}).") from None
    except RecursionError:
        raise GraftError(f"{Path(path).name} is damaged: its {name} is nested too deeply to read.") from None


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {text[:200]}" if text else exc.__class__.__name__
