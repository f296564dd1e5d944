"""ONNX export that a deployment can trust.

:func:`export_onnx` writes one self-contained ONNX file (input ``image``, one named output per head,
any batch size) carrying the complete preprocessing and head description as metadata
(:mod:`engine.export.metadata`), and verifies every export: the same inputs (a random batch, plus real
images when given) go through PyTorch and onnxruntime, and a head whose outputs differ by more than the
tolerance makes the export fail. Nothing half-written is ever left behind: the file is written and
checked under a temporary name in the target folder and renamed only once it has passed.

Exporters: the TorchScript-based one (``dynamo=False``) first, the ``torch.export``-based one
(``dynamo=True``) when it cannot export a model or its file does not verify -- and, automatically, always
once PyTorch removes the TorchScript route (tests/engine/export/test_without_torchscript.py). Chosen from
``bench/exporters.py`` (docs/exporters.md), 8 architectures x fp32/fp16/int8: parity with PyTorch is the
same (max diffs within 2e-6 of each other), sizes within 6 %, onnxruntime runs both; but TorchScript exports
5-30x faster (0.3 s against 4.3 s for EfficientNet-Lite0), and OpenCV's DNN (4.12 and 5.1) loads the
dynamo file of MobileNetV3-Small and silently gets every answer wrong (top-1 agreement 0 %, TorchScript
100 %). The trunk of an early exit (a forward hook that raises) traces fine with both. The opset reported
and recorded is the one the saved file declares (the dynamo exporter writes at least opset 18, whatever was
asked for). A write that fails (a full disk) stops the export at once: no other exporter is tried.
"""
from __future__ import annotations

import contextlib
import copy
import errno
import os
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from engine.errors import GraftError
from engine.export.inference import eval_mode, head_specs
from engine.export.metadata import INPUT_NAME, build_metadata, load_batch, write_metadata
from engine.files import atomic_write, check_target
from engine.network.dense_heads import exported_form
from engine.runtime.onnx_convert import ANSI as _ANSI
from engine.runtime.onnx_convert import EXPORT_LOCK as _LOCK
from engine.runtime.onnx_convert import Captured as _Captured
from engine.runtime.onnx_convert import Rejected as _Rejected
from engine.runtime.onnx_convert import OPSET, allowed_diff, convert, ort_session, verify
from engine.runtime.onnx_convert import max_abs_diff, output_scale  # noqa: F401  (re-exported: the check's rule)
from engine.runtime.onnx_convert import captured_output as _captured_output
from engine.runtime.onnx_convert import first_line as _first_line
from engine.units import human_bytes, plural

if TYPE_CHECKING:
    from engine.surgery.session import Session

# The oldest opset Graft accepts: the dynamo exporter writes nothing below 18 (it silently writes 18), and
# below 13 only the TorchScript exporter's legacy conversions remain, which Graft does not test.
MIN_OPSET = 13
VERIFY_IMAGES = 4  # real images from the training data that ``main.py export`` verifies on by default
EXPORTERS = ("torchscript", "dynamo")
RANDOM_BATCH = 3  # differs from the traced batch (2), so the dynamic batch axis is exercised too
MAX_BYTES = 2 * 1024 ** 3 - 64 * 1024 ** 2  # protobuf's 2 GB limit, with room for the graph


@dataclass
class ExportReport:
    """What :func:`export_onnx` did. Differences are the largest absolute difference per output between
    PyTorch and onnxruntime (``random_diff``: a random batch; ``image_diff``: the real images); each was
    held to :meth:`allowed` (the tolerance, relative for outputs beyond ±1: ``output_scale``)."""

    path: Path
    seconds: float
    export_seconds: float
    verify_seconds: float
    exporter: str
    opset: int | None  # as declared in the saved file (not necessarily the opset asked for)
    size_bytes: int
    outputs: list[str]
    metadata: dict[str, Any]
    random_diff: dict[str, float] = field(default_factory=dict)
    image_diff: dict[str, float] = field(default_factory=dict)
    output_scale: dict[str, float] = field(default_factory=dict)
    images: int = 0
    tolerance: float = 1e-4
    verified: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def max_diff(self) -> float:
        values = list(self.random_diff.values()) + list(self.image_diff.values())
        return max(values) if values else float("nan")

    def allowed(self, output: str) -> float:
        return allowed_diff(self.tolerance, self.output_scale.get(output, 0.0))

    def format(self) -> str:
        timing = f"export {self.export_seconds:.2f} s" + (f", verification {self.verify_seconds:.2f} s" if self.verified else "")
        lines = [f"exported {self.path} ({human_bytes(self.size_bytes)}, opset {self.opset}, {self.exporter} exporter) "
                 f"in {self.seconds:.2f} s ({timing})"]
        lines += [f"note: {n}" for n in self.notes]
        if not self.verified:
            lines.append("not verified against PyTorch (verification was switched off)")
            return "\n".join(lines)
        what = f"a random batch of {RANDOM_BATCH}" + (f" and {plural(self.images, 'image')}" if self.images else "")
        lines.append(f"verified against PyTorch with onnxruntime on {what} (tolerance {self.tolerance:.0e}, "
                     "relative for outputs beyond ±1); largest absolute differences:")
        width = max(len(o) for o in self.outputs)
        for o in self.outputs:
            row = f"  {o.ljust(width)}  random {self.random_diff[o]:.2e}"
            if o in self.image_diff:
                row += f"  images {self.image_diff[o]:.2e}"
            if self.allowed(o) > self.tolerance:
                row += f"  (outputs up to {self.output_scale[o]:.3g}: allowed {self.allowed(o):.1e})"
            lines.append(row)
        return "\n".join(lines)




# -- preparing the model ------------------------------------------------------------------------------

@contextlib.contextmanager
def _cpu_fp32_eval(model: nn.Module) -> Iterator[nn.Module]:
    """The model on CPU in float32 and eval mode. A model elsewhere (GPU, half precision) is copied so
    that the session's own model is left exactly as it was."""
    tensors = list(model.parameters()) + list(model.buffers())
    ready = all(t.device.type == "cpu" and (t.dtype == torch.float32 or not t.dtype.is_floating_point)
                for t in tensors)
    target = model if ready else copy.deepcopy(model).to("cpu", torch.float32)
    with eval_mode(target):
        yield target


def _source_info(session: "Session") -> dict[str, Any]:
    src = session.source
    name = Path(src.name).name if src.kind == "file" else src.name
    weights = src.weights if src.weights in (None, "pretrained", "random") else Path(src.weights).name
    return {"description": session.describe(), "kind": src.kind, "name": name, "arch": src.arch,
            "weights": weights, "format": src.format}


# -- running the exporters ----------------------------------------------------------------------------

def _export(kind: str, model: nn.Module, example: torch.Tensor, path: Path, names: list[str], opset: int) -> None:
    convert(kind, model, example, path, INPUT_NAME, names, opset)


# Most precise first: torch.export names the exact op it has no ONNX function for; the TorchScript
# exporter names the op it could not convert (misleading inside a custom autograd Function).
_OP_PATTERNS = (
    re.compile(r"No ONNX function found for <?OpOverload\(op='([\w.]+)'"),
    re.compile(r"Exporting the operator '([\w:.]+)'"),
    re.compile(r"Couldn't export operator ([\w:.]+)"),
    re.compile(r"operator '([\w:.]+)'"),
    re.compile(r"OpOverload\(op='([\w.]+)'"),
    re.compile(r"target=torch\.ops\.([\w.]+)"),
    re.compile(r"\b(aten::\w+)"),
    re.compile(r"\b(prims::\w+)"),
)
_PYTHON_OP = re.compile(r"(?:PythonOp:?|Python operator) (\w+)")


@dataclass
class _Failure:
    exporter: str
    error: BaseException
    printed: str = ""

    def texts(self) -> list[str]:
        out, seen, exc = [], set(), self.error
        while exc is not None and id(exc) not in seen:
            seen.add(id(exc))
            out.append(_ANSI.sub("", str(exc)))
            exc = exc.__cause__ or exc.__context__
        return out

    def op(self) -> tuple[int, str] | None:
        """(precision rank, op name) of the operator this failure names, if any."""
        for rank, pattern in enumerate(_OP_PATTERNS):
            for text in self.texts():
                m = pattern.search(text)
                if m:
                    op = m.group(1).removesuffix(".default")
                    return rank, (op.replace(".", "::", 1) if "::" not in op and "." in op else op)
        return None

    def python_op(self) -> str | None:
        m = _PYTHON_OP.search("\n".join(self.texts()) + "\n" + self.printed)
        return m.group(1) if m else None


def _norm(op: str) -> str:
    base = re.split(r"::|\.", op)
    name = base[1] if len(base) > 1 else base[0]
    return name.replace("_", "").lower()


def _locate(model: nn.Module, example: torch.Tensor, op: str) -> tuple[str, nn.Module] | None:
    """The innermost module whose forward runs ``op`` (found by running the model once)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    target = _norm(op)
    names = {id(m): n for n, m in model.named_modules()}
    stack: list[nn.Module] = []
    found: list[nn.Module] = []

    def pre(module: nn.Module, args: Any) -> None:
        stack.append(module)

    def post(module: nn.Module, args: Any, out: Any) -> None:
        while stack:  # a module that raised (the cut) never popped itself: pop through it
            if stack.pop() is module:
                break

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            if not found and stack:
                name = _norm(func.name())
                if name == target or name.startswith(target):  # linalg_inv -> linalg_inv_ex
                    found.append(stack[-1])
            return func(*args, **(kwargs or {}))

    handles = []
    try:
        for m in model.modules():
            if isinstance(m, torch.jit.ScriptModule):
                continue
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
        with torch.no_grad(), Spy():
            model(example)
    except Exception:  # noqa: BLE001 - locating is best effort
        pass
    finally:
        for h in handles:
            h.remove()
    if not found or id(found[0]) not in names:
        return None
    return names[id(found[0])], found[0]


def _where(path: str, module: nn.Module) -> str:
    kind = type(module).__name__
    if path.startswith("trunk.body."):
        return f"layer '{path[len('trunk.body.'):]}' ({kind})"
    if path.startswith("heads."):
        head, _, rest = path[len("heads."):].partition(".")
        return f"head '{head}'" + (f", layer {rest} ({kind})" if rest else "")
    return f"'{path}' ({kind})" if path else f"the network ({kind})"


def _explain(failures: list[_Failure], model: nn.Module, example: torch.Tensor, opset: int) -> GraftError:
    found = sorted(o for o in (f.op() for f in failures) if o)
    tried = " and ".join(f.exporter for f in failures) + (" exporters" if len(failures) > 1 else " exporter")
    function = next((p for p in (f.python_op() for f in failures) if p), None)
    inside = f" (inside the custom autograd function {function})" if function else ""
    if found:
        op = found[0][1]  # the most precise; but its aten:: name when both exporters agree (prims::erf_inv = aten::erfinv)
        op = next((o for _, o in found if o.startswith("aten::") and _norm(o) == _norm(op)), op)
        located = _locate(model, example, op)
        where = f"{_where(*located)} uses" if located else "the network uses"
        return GraftError(f"Cannot export to ONNX: {where} the operator {op}{inside}, which has no ONNX "
                          f"equivalent at opset {opset} (tried the {tried}).")
    return GraftError(f"Cannot export to ONNX ({tried}): {_first_line(failures[0].error)}{inside}")


# -- checking and verifying ---------------------------------------------------------------------------

def max_opset() -> int:
    """The newest opset the installed ``onnx`` package knows (newer ones cannot even be checked)."""
    import onnx.defs

    return int(onnx.defs.onnx_opset_version())


def check_opset(opset: Any) -> int:
    """``opset`` if both an exporter and ``onnx`` can handle it, else GraftError saying which ones can."""
    top = max_opset()
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= top:
        raise GraftError(f"ONNX opset {opset!r} is not supported: choose one from {MIN_OPSET} to {top} "
                         f"(default {OPSET}).")
    return opset


def check_tolerance(tolerance: Any) -> float:
    """``tolerance`` as a float when it is a number of at least 0, else GraftError."""
    try:
        value = float(tolerance)
    except (TypeError, ValueError):
        value = float("nan")
    if isinstance(tolerance, bool) or not 0.0 <= value < float("inf"):
        raise GraftError(f"The tolerance must be a number of at least 0 (got {tolerance!r}).")
    return value


def file_opset(proto: Any) -> int | None:
    """The standard ONNX opset a model declares in ``opset_import`` (None when it declares none)."""
    return next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _write_error(exc: BaseException) -> OSError | None:
    """The operating system's refusal to write (a full disk, a quota, a file too large, a read-only or
    failing disk) behind an exporter's exception, if that is what it is: no other exporter can do better."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _WRITE_ERRNOS:
            return e
        text = str(e)
        for code in _WRITE_ERRNOS:
            if os.strerror(code) in text:  # C++ code reports the errno as text inside a RuntimeError
                return OSError(code, os.strerror(code))
        e = e.__cause__ or e.__context__
    return None


_WRITE_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EFBIG", "EROFS", "EIO") if hasattr(errno, n))


def _finish(path: Path, make_metadata: Callable[[int | None], dict[str, Any]]) -> tuple[int | None, dict[str, Any]]:
    """Add the metadata (made for the opset the file really declares), make sure the file is
    self-contained and valid ONNX. Returns that opset and the metadata."""
    import onnx

    try:
        proto = onnx.load(str(path))
    except OSError as exc:
        if exc.errno in _WRITE_ERRNOS:
            raise
        raise _Rejected(f"the exporter wrote no readable file ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001
        raise _Rejected(f"the exporter wrote an unreadable file ({_first_line(exc)})") from None
    opset = file_opset(proto)
    metadata = make_metadata(opset)
    write_metadata(proto, metadata)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # noqa: BLE001 - onnx raises ValidationError / InferenceError
        raise _Rejected(f"the exported file is not valid ONNX ({_first_line(exc)})") from None
    onnx.save(proto, str(path))
    return opset, metadata


def _verify(model: nn.Module, path: Path, names: list[str], inputs: dict[str, np.ndarray],
            tolerance: float) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Largest absolute difference per input set and output, and each output's scale (see allowed_diff)."""
    return verify(model, ort_session(path), INPUT_NAME, names, inputs, tolerance)


# -- the entry point ----------------------------------------------------------------------------------

def export_onnx(session: "Session", path: str | Path, *, opset: int = OPSET, verify: bool = True,
                images: Sequence[str | Path] | None = None, tolerance: float = 1e-4, exporter: str = "auto",
                progress: Callable[[str], None] | None = None) -> ExportReport:
    """Export the session's model (CPU, fp32, eval mode) to ``path`` and verify it.

    ``images``: real image files to verify on as well (preprocessed with the session's InputSpec);
    ``exporter``: "auto" (TorchScript, then torch.export), "torchscript" or "dynamo". Raises GraftError
    for a model that cannot be exported (naming the operator and, when found, the layer), an unwritable
    path, or a verification failure; in every case no file is left at ``path`` or beside it.
    """
    start = time.perf_counter()
    path = check_target(path)
    opset = check_opset(opset)
    tolerance = check_tolerance(tolerance)
    order = EXPORTERS if exporter == "auto" else (exporter,)
    if any(k not in EXPORTERS for k in order):
        raise GraftError(f"Unknown exporter {exporter!r}: use auto, torchscript or dynamo.")
    note = progress or (lambda message: None)
    spec = session.input_spec
    specs = head_specs(session)
    names = list(specs)
    if INPUT_NAME in names:
        raise GraftError(f"A head named '{INPUT_NAME}' would clash with the ONNX input of that name: rename the head.")
    image_paths = [Path(p) for p in images or []]
    inputs: dict[str, np.ndarray] = {}
    if verify:
        rng = np.random.default_rng(0)
        inputs["random"] = rng.standard_normal((RANDOM_BATCH, spec.channels, spec.size, spec.size)).astype(np.float32)
        if image_paths:
            inputs["images"] = load_batch(image_paths, spec)
    source = _source_info(session)
    result: dict[str, Any] = {}

    with _LOCK, _cpu_fp32_eval(session.model) as plain:
        model = exported_form(plain)  # detect heads: boxes and scores decoded inside the graph
        size = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
        if size > MAX_BYTES:
            raise GraftError(f"The model's weights take {human_bytes(size)}: a single-file ONNX export is "
                             "limited to 2 GB.")
        example = torch.from_numpy(np.random.default_rng(1).standard_normal(
            (2, spec.channels, spec.size, spec.size)).astype(np.float32))

        def write(tmp: Path) -> None:
            failures: list[_Failure] = []
            rejected: list[tuple[str, str]] = []
            for kind in order:
                note(f"exporting with the {kind} exporter")
                t0 = time.perf_counter()
                printed = _Captured()
                try:
                    with _captured_output() as printed:
                        _export(kind, model, example, tmp, names, opset)
                except (MemoryError, KeyboardInterrupt):
                    raise
                except Exception as exc:  # noqa: BLE001 - any exporter failure is explained below
                    refused = _write_error(exc)
                    if refused is not None:  # atomic_write: "Cannot write <path>: <reason>.", nothing left
                        raise refused from None
                    failures.append(_Failure(kind, exc, printed.text))
                    continue
                export_seconds = time.perf_counter() - t0

                def make_metadata(written: int | None, kind: str = kind) -> dict[str, Any]:
                    return build_metadata(spec, [h for h in specs.values() if h is not None], source,
                                          opset=written, exporter=kind)

                try:
                    written, metadata = _finish(tmp, make_metadata)
                    t1 = time.perf_counter()
                    diffs: dict[str, dict[str, float]] = {}
                    scales: dict[str, float] = {}
                    if verify:
                        note("verifying with onnxruntime")
                        diffs, scales = _verify(model, tmp, names, inputs, tolerance)
                except _Rejected as why:
                    rejected.append((kind, str(why)))
                    continue
                notes = [f"the {f.exporter} exporter failed ({_first_line(f.error)}); used {kind}" for f in failures]
                notes += [f"the {k} export was rejected ({w}); used {kind}" for k, w in rejected]
                if written != opset:
                    notes.append(f"opset {opset} was asked for; the {kind} exporter wrote opset {written}")
                result.update(exporter=kind, export_seconds=export_seconds, verify_seconds=time.perf_counter() - t1,
                              metadata=metadata, diffs=diffs, scales=scales, notes=notes, opset=written)
                return
            if rejected:
                kinds = " and ".join(k for k, _ in rejected) + (" exporters" if len(rejected) > 1 else " exporter")
                raise GraftError(f"ONNX export failed verification ({kinds}): {rejected[0][1]}. "
                                 f"Nothing was written to {path.name}.")
            raise _explain(failures, model, example, opset)

        atomic_write(path, write)

    diffs = result["diffs"]
    return ExportReport(path=path, seconds=time.perf_counter() - start, export_seconds=result["export_seconds"],
                        verify_seconds=result["verify_seconds"], exporter=result["exporter"], opset=result["opset"],
                        size_bytes=path.stat().st_size, outputs=names, metadata=result["metadata"],
                        random_diff=diffs.get("random", {}), image_diff=diffs.get("images", {}),
                        output_scale=result["scales"], images=len(image_paths) if verify else 0, tolerance=tolerance, verified=verify,
                        notes=result["notes"])


# -- real images to verify on -------------------------------------------------------------------------

def training_images(extra: Mapping[str, Any] | None, limit: int = VERIFY_IMAGES) -> tuple[list[Path], str]:
    """Up to ``limit`` readable images from the data a project was trained on (``main.py train`` records
    it in the project's :class:`~engine.training.record.TrainingRecord`: an image folder or a CSV manifest), spread over the
    class folders / manifest rows, for verifying an export on real pictures. Returns the images and a
    sentence saying where they come from, or, when there are none, why."""
    from engine.network.preprocess import open_image

    from engine.training.record import TrainingRecord

    record = TrainingRecord.latest(extra)
    data = record.data if record is not None else None
    if not data:
        return [], "the project does not record the data it was trained on"
    root = Path(data)
    if not root.exists():
        return [], f"its training data {root} no longer exists"
    try:
        candidates = _folder_candidates(root, limit) if root.is_dir() else _manifest_candidates(root, limit)
    except (OSError, UnicodeError, ValueError):
        candidates = []
    found: list[Path] = []
    for p in candidates:
        try:
            open_image(p)
        except GraftError:
            continue
        found.append(p)
        if len(found) == limit:
            break
    if not found:
        return [], f"no readable image was found in its training data {root}"
    return found, f"from its training data {root}"


def _image_suffixes() -> set[str]:
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def _folder_candidates(root: Path, limit: int) -> list[Path]:
    """A few image files from each class folder (root/<class>/… or root/<split>/<class>/…), taken in turn."""
    suffixes = _image_suffixes()
    per_folder: list[list[Path]] = []
    folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    for folder in folders[:64]:
        files: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            files += [Path(dirpath) / f for f in sorted(filenames)
                      if not f.startswith(".") and Path(f).suffix.lower() in suffixes]
            if len(files) >= 2 * limit:
                break
        per_folder.append(files[:2 * limit])
    picked = [p for row in _interleave(per_folder) for p in row]
    return picked[:4 * limit]


def _interleave(rows: list[list[Path]]) -> Iterator[list[Path]]:
    for i in range(max((len(r) for r in rows), default=0)):
        yield [r[i] for r in rows if i < len(r)]


def _manifest_candidates(csv_path: Path, limit: int) -> list[Path]:
    """The first image paths of a CSV manifest's ``image`` column (relative to the CSV's folder)."""
    import csv

    if csv_path.suffix.lower() != ".csv":
        return []
    raw = csv_path.read_bytes()[:1 << 20]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    lines = text.splitlines()[:1 + 4 * limit]
    if not lines:
        return []
    first = lines[0]
    delimiter = "," if "," in first else (";" if ";" in first else ("\t" if "\t" in first else ","))
    rows = list(csv.reader(lines, delimiter=delimiter))
    header = [c.strip().lower() for c in rows[0]]
    if "image" not in header:
        return []
    col = header.index("image")
    out = []
    for row in rows[1:]:
        if col < len(row) and row[col].strip():
            text = row[col].strip()
            p = Path(text).expanduser()
            p = p if p.is_absolute() else csv_path.parent / p
            if "\\" in text and os.sep != "\\" and not p.exists():  # a manifest written on Windows
                p = csv_path.parent / Path(*PureWindowsPath(text).parts)
            out.append(p)
    return out
