"""Turning a PyTorch module into an onnxruntime session that computes the same numbers.

The lower half of Graft's ONNX export (:mod:`engine.export.onnx_export` writes deployable files with
metadata on top of it), shared with :mod:`engine.runtime.onnx_trunk`, which runs a frozen trunk in
onnxruntime on a CPU: the two exporters, catching what they print, opening a file in onnxruntime and the
check against PyTorch (one rule for both: :func:`allowed_diff`).
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

OPSET = 18  # what both exporters handle best; onnxruntime 1.2x+ runs it fully optimised
EXPORT_LOCK = threading.Lock()  # the exporters keep global state: one export at a time
ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Rejected(Exception):
    """An exported file that is invalid or does not match PyTorch (the next exporter may do better)."""


def first_line(exc: BaseException) -> str:
    """An exception's first non-empty line without colour codes (at most 300 characters)."""
    text = ANSI.sub("", str(exc)).strip()
    line = next((l.strip() for l in text.splitlines() if l.strip()), "") or exc.__class__.__name__
    return line[:300]


def output_scale(ref: np.ndarray) -> float:
    """The largest finite magnitude in a PyTorch output: what float32 rounding is proportional to."""
    finite = np.abs(np.asarray(ref, dtype=np.float64))
    finite = finite[np.isfinite(finite)]
    return float(finite.max()) if finite.size else 0.0


def allowed_diff(tolerance: float, scale: float) -> float:
    """The tolerance for an output whose values reach ``scale``: absolute within ±1 (logits,
    probabilities), relative beyond. float32 keeps about 7 digits, so a regression head answering in
    the thousands differs by ~1e-4 between two correct runtimes from rounding alone."""
    return tolerance * max(1.0, scale)


def max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest absolute difference; a NaN or inf on one side only counts as infinite."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size == 0:
        return 0.0
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(invalid="ignore"):  # inf - inf: same sign is caught by ``same``, the rest is NaN → inf
        d = np.where(same, 0.0, np.abs(a - b))
    d[np.isnan(d)] = np.inf
    return float(d.max())


# -- running the exporters ----------------------------------------------------------------------------

class Captured:
    text = ""


@contextlib.contextmanager
def captured_output() -> Iterator[Captured]:
    """Catch what the exporters print on the way (C++ warnings with Python stack traces, graph dumps,
    progress lines) at the file-descriptor level, so users see Graft's one-line message instead. The
    text is kept: it sometimes names what failed."""
    captured = Captured()
    log = tempfile.TemporaryFile()
    saved: list[tuple[int, int]] = []
    streams = (sys.stdout, sys.stderr)
    for stream in streams:
        with contextlib.suppress(Exception):
            stream.flush()
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            saved.append((fd, os.dup(fd)))
    try:
        for fd, _ in saved:
            os.dup2(log.fileno(), fd)
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            try:
                yield captured
            finally:
                captured.text = buffer.getvalue()
    finally:
        for stream in streams:
            with contextlib.suppress(Exception):
                stream.flush()
        for fd, copy_fd in saved:
            os.dup2(copy_fd, fd)
            os.close(copy_fd)
        log.seek(0)
        captured.text += log.read().decode("utf-8", "replace")
        log.close()


@contextlib.contextmanager
def mha_fastpath(enabled: bool) -> Iterator[None]:
    """nn.MultiheadAttention's eval-mode fast path is one fused op the TorchScript exporter cannot
    export (aten::_native_multi_head_attention); without it the same maths exports op by op (ViTs)."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "get_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(enabled)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


class AsTuple(nn.Module):
    """The model's ``{name: tensor}`` outputs as a tuple in ``names`` order (TorchScript has no dict outputs)."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = list(names)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(x)
        return tuple(out[n] for n in self.names)


def convert(kind: str, model: nn.Module, example: torch.Tensor, path: Path, input_name: str, names: list[str],
            opset: int) -> None:
    """Write ``model`` (outputs ``{name: tensor}``) to ``path`` with one exporter ("torchscript" or
    "dynamo"), any batch size. Exceptions are the exporter's own; callers hold :data:`EXPORT_LOCK`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "torchscript":
            axes = {input_name: {0: "batch"}, **{n: {0: "batch"} for n in names}}
            with torch.no_grad(), mha_fastpath(False):
                training = torch.onnx.TrainingMode.EVAL
                if any(isinstance(m, torch.jit.ScriptModule) for m in model.modules()):
                    # The exporter's own tracer refuses TorchScript submodules (pytorch#86261);
                    # torch.jit.trace takes them and the traced module exports as it is. The model is in
                    # eval mode already: EVAL would flip a scripted BatchNorm's flag and break the numbers.
                    model = torch.jit.trace(AsTuple(model, names), (example,), check_trace=False)
                    training = torch.onnx.TrainingMode.PRESERVE
                torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=[input_name],
                                  output_names=names, opset_version=opset, dynamic_axes=axes, training=training,
                                  do_constant_folding=True, export_params=True)
        else:
            batch = torch.export.Dim("batch", min=1, max=65536)
            program = torch.onnx.export(model, (example,), dynamo=True, input_names=[input_name],
                                        output_names=names, opset_version=opset, dynamic_shapes=({0: batch},),
                                        external_data=False, optimize=True, verbose=False)
            program.save(str(path), external_data=False)


# -- checking against PyTorch -------------------------------------------------------------------------

ORT_MAX_OPSET = re.compile(r"Opset (\d+) is under development.*?support for domain ai\.onnx is till opset (\d+)", re.S)


def ort_session(model: Path | bytes, threads: int = 0, spinning: bool = True) -> Any:
    """An onnxruntime CPU session for a file (or its bytes); ``threads`` 0: onnxruntime's default.
    ``spinning`` False: idle worker threads sleep instead of spinning (for work interleaved with PyTorch
    and image decoding: on 2 busy cores spinning doubled the CPU time per image). Rejected when
    onnxruntime cannot load it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        source = model if isinstance(model, bytes) else str(model)
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        m = ORT_MAX_OPSET.search(str(exc))
        if m:
            raise Rejected(f"onnxruntime {ort.__version__} cannot run opset {m.group(1)}: it supports up to "
                            f"opset {m.group(2)}") from None
        raise Rejected(f"onnxruntime cannot load the exported file ({first_line(exc)})") from None


def verify(model: nn.Module, sess: Any, input_name: str, names: list[str], inputs: dict[str, np.ndarray],
           tolerance: float) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Run every input set (``{label: batch}``) through ``model`` (outputs ``{name: tensor}``) and the
    onnxruntime session ``sess``: the largest absolute difference per input set and output, and each
    output's scale. Rejected (naming the output) when one differs by more than :func:`allowed_diff`."""
    got_in = [i.name for i in sess.get_inputs()]
    got_out = [o.name for o in sess.get_outputs()]
    if got_in != [input_name] or got_out != names:
        raise Rejected(f"the exported file has inputs {got_in} and outputs {got_out}, expected "
                        f"['{input_name}'] and {names}")
    diffs: dict[str, dict[str, float]] = {}
    scales = {n: 0.0 for n in names}
    for label, batch in inputs.items():
        diffs[label] = {n: 0.0 for n in names}
        for start in range(0, len(batch), 16):
            chunk = np.ascontiguousarray(batch[start:start + 16], dtype=np.float32)
            with torch.inference_mode():
                ref = model(torch.from_numpy(chunk.copy()))
            try:
                got = sess.run(names, {input_name: chunk})
            except Exception as exc:  # noqa: BLE001
                raise Rejected(f"onnxruntime failed on a batch of {len(chunk)} ({first_line(exc)})") from None
            for n, g in zip(names, got):
                r = ref[n].detach().numpy()
                if np.shape(g) != r.shape:
                    raise Rejected(f"output '{n}' has shape {np.shape(g)} in onnxruntime but {r.shape} in PyTorch")
                diffs[label][n] = max(diffs[label][n], max_abs_diff(r, g))
                scales[n] = max(scales[n], output_scale(r))
    what = {"random": "a random batch", "images": "the given images"}
    for label, per in diffs.items():
        for n, d in per.items():
            limit = allowed_diff(tolerance, scales[n])
            if not d <= limit:
                relative = f" for outputs up to {scales[n]:.3g}" if limit > tolerance else ""
                raise Rejected(f"output '{n}' differs from PyTorch by {d:.3g} on {what.get(label, label)} "
                                f"(tolerance {limit:g}{relative})")
    return diffs, scales
