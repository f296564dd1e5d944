"""``.graft`` project files fuzzed (Hypothesis): whatever the bytes, opening one (what the window and the CLI
do: :func:`open_project`, then :func:`read_checkpoint` for the paused run, and :func:`read_recovery` as the
recovery prompt reads a recovery file) ends in a correct load or one readable GraftError that names the
file, within 30 s and 300 MB, writing nothing (tests/fuzz_support.py runs each open in a forked child that
checks all of it). The project fuzzed is a real one: shufflenet_v2_x0_5 (random weights, 64 px), its output
layer deleted, a classification and a regression head added, with a paused run (optimizer state, RNG).

Fuzzed: the zip (truncated at any byte, bytes flipped, not a zip at all), its members (missing, renamed,
duplicated with other contents, extra ones with hostile names: ``../``, absolute, Windows drive paths,
NUL bytes, folders, symlink entries pointing out), deflated or stored, declared sizes that lie (larger
or smaller than the data, in the central directory, the local header or both), the recipe JSON (broken,
truncated, not UTF-8, nested past the parser's depth, any value replaced by one of another type, huge
numbers, NaN, long text, keys deleted), the safetensors headers (a header length past the file or near
2**64, dtypes and shapes that do not match the data or the recipe's network, offsets out of range or
overlapping, tensors missing or renamed) and the paused run's JSON the same way.

Zip bombs: a member that inflates to 512 MB from 2 MB, and one whose entry declares 4 GB (or 2 GB) but holds 1 MB, are
refused within the same 300 MB. Sizes the recipe itself declares (a head's hidden layers) are drawn small
or impossible to allocate, not a few hundred MB: a recipe that names a big network builds it, as it says."""
from __future__ import annotations

import functools
import io
import json
import struct
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import given, strategies as st

from engine.network.heads import HeadSpec
from engine.network.loading import load_network
from engine.network.preprocess import InputSpec
from engine.project.project_file import (CHECKPOINT_JSON, CHECKPOINT_TENSORS, open_project, read_checkpoint,
                                         save_project)
from engine.project.recovery import read_recovery
from engine.surgery.operations import AddHead, DeleteOutputLayer
from engine.surgery.session import Session
from engine.training.checkpoint import TrainCheckpoint
import fuzz_support
from fuzz_support import Fuzzed, check, flip_bytes, readable

MEMORY_MB = 300
RECIPE, WEIGHTS = "recipe.json", "weights.safetensors"
HOSTILE_NAMES = ["../recipe.json", "../../evil.txt", "/etc/evil", "/tmp/evil.json", "C:\\evil.txt", "C:/evil",
                 "a/../../evil", "dir/", "recipe.json/", "./recipe.json", "RECIPE.JSON", "recipe.json\x00.txt",
                 "weights.safetensors ", "\\\\server\\share\\x", "é/ü.json", "", "recovery.json"]


class Parts(dict):
    """The real project's parts (shown short in a failure report)."""

    def __repr__(self) -> str:
        return f"<the project's members {[n for n, _ in self['members']]}>"


@pytest.fixture(scope="module")
def project(tmp_path_factory, one_torch_thread) -> dict:
    """The real project's parts: ``{"members": [(name, bytes)], "path": the saved file}``. Torch runs one
    thread in the test process (``one_torch_thread``): a child forked after OpenMP started its threads
    would hang in its first parallel loop."""
    torch.manual_seed(0)
    session = Session(load_network("shufflenet_v2_x0_5", random_init=True))
    session.model.input_spec = InputSpec(size=64, resize=73)
    session.do(DeleteOutputLayer())
    session.do(AddHead(HeadSpec("shape", "single", labels=["circle", "square"], hidden=[8])))
    session.do(AddHead(HeadSpec("size", "regression", outputs=1, columns=["size"])))
    params = [p for p in session.model.heads.parameters()]
    optimizer = torch.optim.SGD(params, lr=0.1, momentum=0.9)
    sum(p.sum() for p in params).backward()
    optimizer.step()
    checkpoint = TrainCheckpoint(config={"epochs": 3, "batch_size": 4}, epochs_run=1, done_steps=2, images_seen=8,
                                 seconds=1.5, n_train=8, n_val=2, cached=False, trunk_frozen=True,
                                 history=[{"epoch": 1, "train_loss": 0.7}], optimizer=optimizer.state_dict(),
                                 rng=torch.get_rng_state())
    folder = tmp_path_factory.mktemp("project")
    path = save_project(session, folder / "base.graft", checkpoint=checkpoint)
    with zipfile.ZipFile(path) as zf:
        members = [(name, zf.read(name)) for name in zf.namelist()]
    recovery = json.dumps({"format": 1, "saved_at": 1.0, "pid": 1, "project": str(path), "model": "x"}).encode()
    return Parts(members=members + [("recovery.json", recovery)], path=path)


def open_everything(path: Path) -> str:
    """What the window does with a project file: open it, read its paused run, and read it as a recovery
    file (the recovery prompt reads those)."""
    from engine.errors import GraftError

    errors = []
    try:
        session = open_project(path)
        done = f"heads {[h.name for h in session.heads]}"
    except GraftError as exc:
        errors.append(str(exc))
        done = "refused"
    for read in (read_checkpoint, read_recovery):
        try:
            read(path)
        except GraftError as exc:
            errors.append(str(exc))
    for message in errors:  # each refusal is one readable line naming the file
        assert readable(message), message[:500]
        assert path.name in message, f"the message does not name {path.name}: {message[:300]}"
    if done == "refused":  # counted as a refusal (fuzz_support.COUNTS)
        raise GraftError(errors[0])
    return done


# -- mutating JSON ------------------------------------------------------------------------------------------
odd_values = st.one_of(
    st.sampled_from([None, True, False, 0, -1, 1, 2, 255, 2 ** 31, 2 ** 63, -2 ** 63, 10 ** 30, 1e308, -1e308,
                     float("nan"), float("inf"), 0.5, "", " ", "x" * 5000, "random", "pretrained", "single",
                     "regression", "segment", "detect", "multi", "torchvision", "file", "timm", "builtin",
                     "resnet18", "/etc/passwd", "../base.graft", "add_head", "cut", "delete_output", "set_trainable",
                     [], {}, [None], [0, 0], [-1], [2 ** 40], ["a", "a"], {"op": None}, {"": 1}]),
    st.text(max_size=10), st.integers(-3, 300), st.floats(allow_nan=True, allow_infinity=True),
)



def mutate_json(draw, value):
    """``value`` (a fresh copy) with a few places replaced, deleted, or given an extra key."""
    return fuzz_support.mutate_json(draw, value, odd_values, ["op", "spec", "name", "format", "extra", "zzz", ""])


def damage_text(draw, data: bytes) -> bytes:
    """Bytes of a JSON member broken at the text level."""
    how = draw(st.sampled_from(["truncate", "flip", "latin1", "utf16", "bom", "deep", "deep-object", "empty",
                                "junk", "duplicate-keys"]))
    if how == "truncate":
        return data[:draw(st.integers(0, max(0, len(data) - 1)))]
    if how == "flip":
        at = draw(st.integers(0, max(0, len(data) - 1)))
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:] if data else b"\xff"
    if how == "latin1":
        return data.replace(b'"', b'"\xe9', 1)
    if how == "utf16":
        return data.decode(errors="replace").encode("utf-16")  # an earlier step may have left it not UTF-8
    if how == "bom":
        return b"\xef\xbb\xbf" + data
    if how == "deep":
        depth = draw(st.sampled_from([100, 5000, 200_000]))
        return b"[" * depth + b"]" * depth
    if how == "deep-object":
        depth = draw(st.sampled_from([100, 100_000]))
        return b'{"operations":' * depth + b"[]" + b"}" * depth
    if how == "empty":
        return b""
    if how == "duplicate-keys":
        return data.rstrip()[:-1] + b', "format": "again", "source": null}'
    return data + draw(st.binary(min_size=1, max_size=32))


# -- mutating safetensors -----------------------------------------------------------------------------------
DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "U64",
          "C64", "X", "", 7, None]


def damage_tensors(draw, data: bytes) -> bytes:
    """A safetensors file with its header or data changed."""
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    body = data[8 + length:]
    how = draw(st.sampled_from(["length", "header", "header", "header", "truncate", "flip-body", "drop-body",
                                "text"]))
    if how == "length":
        new = draw(st.sampled_from([0, 1, 2, length - 1, length + 1, len(data), len(data) - 8, 2 ** 32,
                                    2 ** 63, 2 ** 64 - 1, 100_000_001]))
        return struct.pack("<Q", new) + data[8:]
    if how == "truncate":
        return data[:draw(st.integers(0, len(data) - 1))]
    if how == "flip-body" and body:
        at = draw(st.integers(0, len(body) - 1))
        return data[:8 + length + at] + bytes([body[at] ^ 0xFF]) + body[at + 1:]
    if how == "drop-body":
        return data[:8 + length]
    if how == "text":
        return b"not safetensors at all"
    names = [k for k in header if k != "__metadata__"]
    for _ in range(draw(st.integers(1, 3))):
        name = draw(st.sampled_from(names + ["__metadata__"]))
        what = draw(st.sampled_from(["dtype", "shape", "offsets", "delete", "rename", "metadata", "whole"]))
        if name == "__metadata__" or what == "metadata":
            header["__metadata__"] = draw(st.sampled_from([{"graft_format": 1}, None, [], "x", {"a": "b"},
                                                           {"graft_format": "99"}]))
            continue
        entry = header.get(name)
        if not isinstance(entry, dict):
            continue
        if what == "dtype":
            entry["dtype"] = draw(st.sampled_from(DTYPES))
        elif what == "shape":
            shape = list(entry["shape"])
            entry["shape"] = draw(st.sampled_from([shape[::-1], shape + [1], shape[:-1], [], [0], [-1],
                                                   [2 ** 40], [2 ** 62, 2 ** 62], [10 ** 30], "x", None,
                                                   [1.5]]))
        elif what == "offsets":
            a, b = entry["data_offsets"]
            entry["data_offsets"] = draw(st.sampled_from([[b, a], [a, b + 4], [a - 4, b - 4], [0, b - a],
                                                          [a, 2 ** 64 - 1], [-1, b], [a], None, [a, b, b]]))
        elif what == "delete":
            del header[name]
        elif what == "rename":
            header[draw(st.sampled_from(["x", name + ".", "trunk.body.conv1.0.weight", ""]))] = header.pop(name)
        else:
            header[name] = draw(odd_values)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


# -- building the zip ---------------------------------------------------------------------------------------
def build_zip(members: list[tuple[str, bytes, int, bool]]) -> bytes:
    """A zip of ``(name, data, compression, symlink)`` entries in order (duplicates and odd names kept)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns on duplicate names: wanted here
        with zipfile.ZipFile(buffer, "w") as zf:
            for name, data, compression, symlink in members:
                info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
                info.compress_type = compression
                if symlink:
                    info.external_attr = (0o120777 << 16)
                    info.create_system = 3
                zf.writestr(info, data)
    return buffer.getvalue()


def lie_about_sizes(draw, data: bytes) -> bytes:
    """Change the sizes one entry declares: in the central directory, the local header, or both."""
    data = bytearray(data)
    central = [i for i in range(len(data) - 4) if data[i:i + 4] == b"PK\x01\x02"]
    if not central:
        return bytes(data)
    at = draw(st.sampled_from(central))
    local = struct.unpack("<I", data[at + 42:at + 46])[0]
    size = draw(st.sampled_from([0, 1, 7, 2 ** 31, 2 ** 32 - 2, 0xFFFFFFFF, 1000]))
    field = draw(st.sampled_from(["file_size", "compress_size", "both"]))
    where = draw(st.sampled_from(["central", "local", "both"]))
    spots = []
    if where in ("central", "both"):
        spots += [(at + 24, "file_size"), (at + 20, "compress_size")]
    if where in ("local", "both") and data[local:local + 4] == b"PK\x03\x04":
        spots += [(local + 22, "file_size"), (local + 18, "compress_size")]
    for offset, kind in spots:
        if field in (kind, "both"):
            data[offset:offset + 4] = struct.pack("<I", size)
    return bytes(data)


@st.composite
def project_files(draw, base: list[tuple[str, bytes]]) -> Fuzzed:
    members = [(name, data, zipfile.ZIP_STORED, False) for name, data in base]
    steps = []
    for _ in range(draw(st.integers(0, 3))):
        which = draw(st.sampled_from(["recipe", "recipe", "recipe-text", "weights", "weights", "checkpoint",
                                      "checkpoint-text", "checkpoint-tensors", "recovery", "members", "members",
                                      "none"]))
        index = {"recipe": 0, "recipe-text": 0, "weights": 1, "checkpoint": 2, "checkpoint-text": 2,
                 "checkpoint-tensors": 3, "recovery": 4}.get(which)
        names = [m[0] for m in members]
        target = {0: RECIPE, 1: WEIGHTS, 2: CHECKPOINT_JSON, 3: CHECKPOINT_TENSORS, 4: "recovery.json"}.get(index)
        if target is not None and target not in names:
            continue
        if target is not None:
            i = names.index(target)
            name, data, compression, symlink = members[i]
            if which in ("recipe", "checkpoint", "recovery"):
                try:
                    value = json.loads(data)
                except (ValueError, RecursionError):  # already broken (or nested past the parser) by an earlier step
                    continue
                data = json.dumps(mutate_json(draw, value)).encode()
            elif which.endswith("-text"):
                data = damage_text(draw, data)
            else:
                try:
                    data = damage_tensors(draw, data)
                except (ValueError, struct.error):  # already broken by an earlier step
                    continue
            members[i] = (name, data, compression, symlink)
            steps.append(f"{which} changed")
        elif which == "members":
            members = damage_members(draw, members)
            steps.append(f"members now {[m[0] for m in members]}")
    if draw(st.integers(0, 3)) == 0:  # deflate some or all
        members = [(n, d, zipfile.ZIP_DEFLATED if draw(st.booleans()) else c, s) for n, d, c, s in members]
        steps.append("deflated")
    data = build_zip(members)
    damage = draw(st.sampled_from(["none", "none", "none", "sizes", "truncate", "flip", "prefix", "junk"]))
    if damage != "none":
        steps.append(f"zip {damage}")
    if damage == "sizes":
        data = lie_about_sizes(draw, data)
    elif damage == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif damage == "flip":
        data = flip_bytes(draw, data, most=6)
    elif damage == "prefix":  # a self-extracting stub before the zip: zipfile allows it
        data = draw(st.binary(min_size=1, max_size=64)) + data
    elif damage == "junk":
        data += draw(st.binary(min_size=1, max_size=64))
    fuzzed = Fuzzed(data)
    fuzzed.steps = steps
    return fuzzed


def damage_members(draw, members):
    how = draw(st.sampled_from(["drop", "rename", "duplicate", "hostile", "symlink", "reorder", "folder"]))
    members = list(members)
    i = draw(st.integers(0, len(members) - 1))
    name, data, compression, symlink = members[i]
    if how == "drop":
        del members[i]
    elif how == "rename":
        members[i] = (draw(st.sampled_from(HOSTILE_NAMES + [name.upper(), "x" + name])), data, compression, symlink)
    elif how == "duplicate":
        other = draw(st.sampled_from([b"", b"{}", b"[]", data[: len(data) // 2], members[-1][1]]))
        members.insert(draw(st.integers(0, len(members))), (name, other, compression, symlink))
    elif how == "hostile":
        members.append((draw(st.sampled_from(HOSTILE_NAMES)), draw(st.sampled_from([b"x", data])), compression,
                        False))
    elif how == "symlink":  # the member itself a symlink entry to a file outside
        members[i] = (name, draw(st.sampled_from([b"/etc/passwd", b"../../base.graft", b"/proc/self/mem"])),
                      compression, True)
    elif how == "reorder":
        members = members[::-1]
    else:
        members.append((name + "/", b"", compression, False))
    return members


@given(data=st.data())
def test_any_project_file_opens_or_is_refused_clearly(project, tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("fuzzed", numbered=True)
    path = folder / "fuzzed.graft"
    path.write_bytes(data.draw(project_files(project["members"])))
    check(open_everything, path, allowed=(folder,), memory_mb=MEMORY_MB, label="project file")


@given(data=st.binary(max_size=3000), zip_magic=st.booleans())
def test_any_bytes_as_a_project_file(tmp_path_factory, data, zip_magic):
    folder = tmp_path_factory.mktemp("bytes", numbered=True)
    path = folder / "bytes.graft"
    path.write_bytes((b"PK\x03\x04" if zip_magic else b"") + data)
    check(open_everything, path, allowed=(folder,), memory_mb=MEMORY_MB, label="project file (raw bytes)")


def test_the_unchanged_project_opens_with_its_weights_and_paused_run(project, tmp_path):
    """The oracle for the fuzzed ones: the real project, rezipped as the fuzzer does, loads exactly."""
    path = tmp_path / "same.graft"
    path.write_bytes(build_zip([(n, d, zipfile.ZIP_DEFLATED, False) for n, d in project["members"]]))

    def load() -> bool:
        a, b = open_project(project["path"]), open_project(path)
        x = torch.randn(2, 3, 64, 64)
        a.model.eval(), b.model.eval()
        with torch.no_grad():
            same = all(torch.equal(a.model(x)[k], b.model(x)[k]) for k in ("shape", "size"))
        return same and read_checkpoint(path).epochs_run == 1 and read_recovery(path).model == "x"

    outcome = check(load, allowed=(tmp_path,), memory_mb=MEMORY_MB, label="project file (oracle)")
    assert outcome.kind == "ok" and outcome.detail == "True", outcome.detail


# -- zip bombs ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def inflating_member(size: int) -> tuple[bytes, int]:
    """A raw deflate stream of ``size`` zero bytes (about 4 KB compressed per MB) and its CRC."""
    import zlib

    squash = zlib.compressobj(1, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    body = b"".join(squash.compress(chunk) for _ in range(size >> 20)) + squash.flush()
    return body, _zero_crc(size)


def _zero_crc(size: int) -> int:
    import zlib

    crc, chunk = 0, bytes(1 << 20)
    for _ in range(size >> 20):
        crc = zlib.crc32(chunk, crc)
    return crc


def zip_with_raw(members: list[tuple[str, bytes]], raw: tuple[str, bytes, int, int, int]) -> bytes:
    """A zip of ``members`` (stored) and one deflated member written by hand: ``(name, deflated bytes,
    declared size, crc, actual compressed size)``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    head = buffer.getvalue()
    end = head.rindex(b"PK\x05\x06")
    (cd_size, cd_offset) = struct.unpack("<II", head[end + 12:end + 20])
    locals_part, central = head[:cd_offset], head[cd_offset:cd_offset + cd_size]
    count = struct.unpack("<H", head[end + 10:end + 12])[0]
    name, body, declared, crc, _ = raw
    name_b = name.encode()
    offset = len(locals_part)
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, len(body), declared & 0xFFFFFFFF,
                        len(name_b), 0) + name_b
    entry = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, len(body),
                        declared & 0xFFFFFFFF, len(name_b), 0, 0, 0, 0, 0, offset) + name_b
    new_locals = locals_part + local + body
    new_central = central + entry
    eocd = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count + 1, count + 1, len(new_central), len(new_locals), 0)
    return new_locals + new_central + eocd


@pytest.mark.parametrize("member", [RECIPE, WEIGHTS, CHECKPOINT_TENSORS])
def test_a_zip_bomb_member_is_refused_within_the_memory_bound(project, tmp_path, member):
    """One member inflates to 512 MB (from 2 MB): refused before it is inflated."""
    size = 1 << 29
    body, crc = inflating_member(size)
    others = [(n, d) for n, d in project["members"] if n != member]
    path = tmp_path / "bomb.graft"
    path.write_bytes(zip_with_raw(others, (member, body, size, crc, len(body))))
    outcome = check(open_everything, path, allowed=(tmp_path,), memory_mb=MEMORY_MB, timeout=60,
                    label=f"project file (zip bomb, {member})")
    # the paused run's bomb: the project opens, its paused run is refused (open_everything checks that message)
    assert outcome.kind == ("ok" if member == CHECKPOINT_TENSORS else "graft"), outcome.detail


@pytest.mark.parametrize("declared", [2 ** 32 - 1, 2 ** 31])
def test_a_member_declaring_a_huge_size_is_refused_within_the_memory_bound(project, tmp_path, declared):
    """The weights' entry says 4 GB (or 2 GB) but holds a few KB of deflate: nothing allocates what it says."""
    body, crc = inflating_member(1 << 20)
    others = [(n, d) for n, d in project["members"] if n != WEIGHTS]
    path = tmp_path / "liar.graft"
    path.write_bytes(zip_with_raw(others, (WEIGHTS, body, declared, crc, len(body))))
    outcome = check(open_everything, path, allowed=(tmp_path,), memory_mb=MEMORY_MB, timeout=60,
                    label="project file (declared size)")
    assert outcome.kind == "graft", outcome.detail
