"""A frozen trunk run by onnxruntime on a CPU: feature caching, evaluation and "try an image".

On a CPU onnxruntime computes the default trunk's features 2-7x faster than PyTorch (its kernels fuse
convolutions with their activations and reuse one memory arena). A trunk that does not train has the
same weights from one pass to the next, so it is worth converting: :func:`trunk_runner` converts it
(``GraftModel.trunk`` → ONNX with the TorchScript exporter, in memory) once per trunk state, checks it
against PyTorch on a random batch with the export check's rule
(:func:`engine.runtime.onnx_convert.allowed_diff`, tolerance :data:`TOLERANCE`) and keeps it until the
trunk changes. A trunk that does not convert or does not match runs in PyTorch, with a note saying why.

The trunk's state is a fingerprint (:func:`trunk_fingerprint`): its modules and every weight's storage
and version counter, which any surgery, ``load_state_dict`` or optimizer step changes. A conversion is
found again only for the same fingerprint, so nothing has to announce a change.

On a GPU, while the trunk trains, and with ``GRAFT_ONNXRUNTIME=off`` nothing changes (PyTorch runs it).
Converting costs a few seconds: below :data:`CONVERT_MIN_IMAGES` images a pass uses a conversion that
is ready and otherwise runs in PyTorch; :func:`prepare_trunk` converts in a background thread meanwhile
(the window calls it so that "try an image" is fast from the second image on).
"""
from __future__ import annotations

import copy
import os
import tempfile
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine.network.graft_model import GraftModel, Trunk
from engine.runtime.allocator import release_free_memory
from engine.runtime import trunk_store
from engine.runtime.batch_size import BatchSizeProbe
from engine.runtime.onnx_convert import (EXPORT_LOCK, OPSET, Rejected, captured_output, convert, first_line,
                                         ort_session, verify)

ENV = "GRAFT_ONNXRUNTIME"  # "auto" (default) or "off"
INPUT = "image"
OUTPUT = "features"
TOLERANCE = 1e-4  # the export check's default
CHECK_BATCH = 3  # random images checked against PyTorch (not the traced batch of 2: the batch axis is dynamic)
CONVERT_MIN_IMAGES = 128  # a pass over fewer images does not wait for a conversion


def enabled() -> bool:
    return os.environ.get(ENV, "auto").strip().lower() not in ("off", "0", "false", "no")


def trunk_fingerprint(trunk: Trunk) -> tuple:
    """What the trunk computes, cheaply: its cut, its modules (identity and type) and each parameter's
    and buffer's storage, shape, dtype and version counter (bumped by every in-place change)."""
    modules = tuple((name, id(m), type(m).__name__) for name, m in trunk.named_modules())
    tensors = tuple((name, t.data_ptr(), tuple(t.shape), str(t.dtype), str(t.device), t._version)
                    for name, t in [*trunk.named_parameters(), *trunk.named_buffers()])
    return trunk.cut_at, modules, tensors


class _Features(nn.Module):
    """The trunk with one named output, as the converter and the check expect."""

    def __init__(self, trunk: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {OUTPUT: self.trunk(x)}


@dataclass
class Conversion:
    """One trunk state's conversion. ``onnx``: the model's bytes (None when it failed: ``note`` says why)."""

    onnx: bytes | None
    note: str
    seconds: float
    max_diff: float | None = None
    from_store: bool = False  # found in engine.runtime.trunk_store instead of converted
    probe: BatchSizeProbe = field(default_factory=BatchSizeProbe)
    _sessions: dict[int, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    _settled: bool = False

    def session(self, threads: int) -> Any:
        """The onnxruntime session for ``threads`` intra-op threads (made once per thread count)."""
        with self._lock:
            if threads not in self._sessions:
                self._sessions = {threads: ort_session(self.onnx, threads, spinning=False)}
            return self._sessions[threads]

    def settle(self) -> None:
        """Once the probe has chosen a batch size below the largest it tried, start a new session: the
        old one's memory arena grew to the largest batch and would hold that memory for good."""
        best = self.probe.best
        if self._settled or best is None:
            return
        self._settled = True
        if best < max(self.probe.candidates):
            with self._lock:
                self._sessions = {}
            release_free_memory()


def convert_trunk(trunk: Trunk, channels: int, size: int) -> Conversion:
    """Convert ``trunk`` (inputs ``channels`` x ``size`` x ``size``) and check it against PyTorch. It is
    put in eval mode and traced: pass a copy that nothing else runs meanwhile. A graph this machine
    converted before for the same trunk (:mod:`engine.runtime.trunk_store`) is checked and used instead
    of converting again."""
    start = time.perf_counter()
    model = _Features(trunk).eval()
    threads = torch.get_num_threads()
    rng = np.random.default_rng(0)
    example = torch.from_numpy(rng.standard_normal((2, channels, size, size)).astype(np.float32))
    check = {"random": rng.standard_normal((CHECK_BATCH, channels, size, size)).astype(np.float32)}
    key = trunk_store.trunk_key(trunk, channels, size, OPSET) if trunk_store.enabled() else None
    stored = trunk_store.load(key) if key is not None else None
    if stored is not None:
        try:
            sess = ort_session(stored, threads, spinning=False)
            diffs, _ = verify(model, sess, INPUT, [OUTPUT], check, TOLERANCE)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception:  # noqa: BLE001 - a stale or damaged file: convert afresh
            trunk_store.forget(key)
        else:
            seconds = time.perf_counter() - start
            diff = diffs["random"][OUTPUT]
            conversion = Conversion(stored, f"the frozen trunk runs in onnxruntime (converted before on this "
                                            f"machine, checked against PyTorch in {seconds:.1f} s; largest "
                                            f"difference {diff:.1e})", seconds, diff, from_store=True)
            conversion._sessions[threads] = sess
            return conversion
    try:
        with tempfile.TemporaryDirectory(prefix="graft-trunk-") as tmp:
            path = Path(tmp) / "trunk.onnx"
            with EXPORT_LOCK, captured_output():
                convert("torchscript", model, example, path, INPUT, [OUTPUT], OPSET)
            data = path.read_bytes()
        sess = ort_session(data, threads, spinning=False)
        diffs, _ = verify(model, sess, INPUT, [OUTPUT], check, TOLERANCE)
    except (MemoryError, KeyboardInterrupt):
        raise
    except Rejected as why:
        return Conversion(None, f"the trunk runs in PyTorch: its ONNX conversion was rejected ({why})",
                          time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - any exporter failure means PyTorch runs it
        return Conversion(None, f"the trunk runs in PyTorch: it does not convert to ONNX ({first_line(exc)})",
                          time.perf_counter() - start)
    if key is not None:
        trunk_store.save(key, data)
    seconds = time.perf_counter() - start
    diff = diffs["random"][OUTPUT]
    conversion = Conversion(data, f"the frozen trunk runs in onnxruntime (converted and checked against "
                                  f"PyTorch in {seconds:.1f} s; largest difference {diff:.1e})", seconds, diff)
    conversion._sessions[threads] = sess
    return conversion


@dataclass
class _Entry:
    fingerprint: tuple
    future: Future


_cache: "weakref.WeakKeyDictionary[Trunk, _Entry]" = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def _entry(trunk: Trunk, spec: Any, background: bool) -> _Entry:
    """The conversion of the trunk's current state: the one cached, else a new one (started in a
    daemon thread when ``background``, else done now)."""
    fp = trunk_fingerprint(trunk)
    with _cache_lock:
        entry = _cache.get(trunk)
        if entry is not None and entry.fingerprint == fp:
            return entry
        entry = _Entry(fp, Future())
        _cache[trunk] = entry  # the old state's conversion is dropped
        snapshot = copy.deepcopy(trunk)  # converted as it is now, whatever happens to the trunk meanwhile
    entry.future.set_running_or_notify_cancel()

    def work() -> None:
        try:
            entry.future.set_result(convert_trunk(snapshot, spec.channels, spec.size))
        except BaseException as exc:  # noqa: BLE001 - MemoryError: the waiting pass sees it
            entry.future.set_exception(exc)

    if background:
        threading.Thread(target=work, name="graft-trunk-onnx", daemon=True).start()
    else:
        work()
    return entry


def _applicable(model: GraftModel, device: torch.device | str | None) -> bool:
    if not enabled() or (device is not None and torch.device(device).type != "cpu"):
        return False
    if model.trunk_trainable() or getattr(model, "has_dense_heads", False):  # dense heads read maps, not features
        return False
    return all(t.device.type == "cpu" and (t.dtype == torch.float32 or not t.dtype.is_floating_point)
               for t in [*model.trunk.parameters(), *model.trunk.buffers()])


def prepare_trunk(model: GraftModel) -> None:
    """Start converting the frozen trunk in a background thread if it is not converted yet (no-op on a
    GPU, with a trainable trunk or ``GRAFT_ONNXRUNTIME=off``)."""
    if _applicable(model, "cpu"):
        _entry(model.trunk, model.input_spec, background=True)


def cached_conversion(model: GraftModel) -> Conversion | None:
    """The finished conversion of the trunk as it is now, if there is one (for tests and reports)."""
    with _cache_lock:
        entry = _cache.get(model.trunk)
    if entry is None or not entry.future.done() or entry.fingerprint != trunk_fingerprint(model.trunk):
        return None
    return entry.future.result()


class TrunkRunner:
    """Computes the frozen trunk's features ``(N, F)`` float32 on the CPU with onnxruntime, in chunks
    of the size its probe found fastest. ``note``: the sentence for the user."""

    backend = "onnxruntime"

    def __init__(self, conversion: Conversion) -> None:
        self.conversion = conversion
        self.note = conversion.note

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        sess = self.conversion.session(torch.get_num_threads())
        probe = self.conversion.probe
        parts = []
        for start, stop, timed in probe.chunks(len(x)):
            t0 = time.perf_counter()
            parts.append(sess.run([OUTPUT], {INPUT: x[start:stop]})[0])
            if timed:
                probe.record(stop - start, time.perf_counter() - t0)
        self.conversion.settle()
        return torch.from_numpy(np.concatenate(parts) if len(parts) > 1 else parts[0])


def trunk_runner(model: GraftModel, device: torch.device | str | None = "cpu", images: int = 0, *,
                 min_images: int | None = None) -> tuple[TrunkRunner | None, str | None]:
    """``(runner, note)`` for a frozen-trunk pass over ``images`` images on ``device``. ``runner`` is
    None when PyTorch runs the trunk: a GPU, a trunk that trains, onnxruntime switched off, a conversion
    that failed (``note`` says why) or is not worth waiting for (fewer than ``min_images``, default
    :data:`CONVERT_MIN_IMAGES`: then a finished conversion is used and none is waited for)."""
    if not _applicable(model, device):
        return None, None
    threshold = CONVERT_MIN_IMAGES if min_images is None else min_images
    if images < threshold:
        with _cache_lock:
            entry = _cache.get(model.trunk)
        ready = entry is not None and entry.future.done() and entry.fingerprint == trunk_fingerprint(model.trunk)
        if not ready:
            return None, None
    else:
        entry = _entry(model.trunk, model.input_spec, background=False)
    conversion = entry.future.result()  # waits for a conversion in flight
    if conversion.onnx is None:
        return None, conversion.note
    return TrunkRunner(conversion), conversion.note


def features_then_heads(model: GraftModel, runner: TrunkRunner | None,
                        images: torch.Tensor) -> dict[str, torch.Tensor]:
    """``model(images)`` with the trunk run by ``runner`` (PyTorch when None); call in no_grad/eval."""
    if runner is None:
        return model(images)
    features = runner(images)
    if not len(model.heads):
        return {"output": features}
    return model.forward_heads(features)

