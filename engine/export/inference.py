"""Graft's own predictions with the PyTorch model: the GUI's "try an image" view and the CLI use these.

Images go through :mod:`engine.network.preprocess` and raw outputs through :func:`engine.export.metadata.decode`,
exactly as ``main.py predict`` does for an exported ONNX file, so both give the same answer. On a CPU a
frozen trunk that is already converted (:mod:`engine.runtime.onnx_trunk`), or worth converting for the
images asked, runs in onnxruntime.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from engine.errors import GraftError
from engine.network.dense_heads import decoded_outputs
from engine.network.heads import HeadSpec
from engine.export.metadata import FEATURES_OUTPUT, HeadPrediction, decode, decode_batch, load_batch
from engine.runtime.onnx_trunk import TrunkRunner, features_then_heads, trunk_runner

if TYPE_CHECKING:
    from engine.surgery.session import Session

__all__ = ["HeadPrediction", "decode", "head_specs", "original_classes", "predict_arrays", "predict_files", "predict_image", "eval_mode"]


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """The model in eval mode for the block; its previous mode is restored afterwards."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def original_classes(session: "Session") -> list[str] | None:
    """The class names of the network's own classifier when its output is still the model's output
    (no head added, output layer intact, no cut, one score per class), else None."""
    names = getattr(session.network, "class_names", None)
    if session.heads or not names or session.output_layer is None or session.model.trunk.cut_at is not None:
        return None
    if session.feature_dim != len(names):
        return None
    return list(names)


def head_specs(session: "Session") -> dict[str, HeadSpec | None]:
    """Output name -> head spec, in output order. Before any head is added the one output is ``output``:
    the original classifier's scores (a single-label spec with its class names, e.g. ImageNet) when
    :func:`original_classes` knows them, else plain features (None)."""
    if session.heads:
        return {h.name: h for h in session.heads}
    classes = original_classes(session)
    if classes:
        try:
            return {FEATURES_OUTPUT: HeadSpec(FEATURES_OUTPUT, kind="single", labels=classes)}
        except GraftError:  # e.g. duplicate class names: report plain scores instead
            pass
    return {FEATURES_OUTPUT: None}


def _device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    for p in model.parameters():
        return p.device, p.dtype if p.dtype.is_floating_point else torch.float32
    for b in model.buffers():
        if b.dtype.is_floating_point:
            return b.device, b.dtype
    return torch.device("cpu"), torch.float32


def predict_arrays(session: "Session", batch: np.ndarray, runner: TrunkRunner | None = None) -> dict[str, np.ndarray]:
    """Raw outputs ``{head: (N, outputs) float32}`` (a detect head's decoded, as an export carries them:
    :func:`engine.network.dense_heads.decoded_outputs`) for a preprocessed (N, C, S, S) batch (or one CHW image),
    C the input spec's channels. ``runner``: what runs the trunk (default: onnxruntime when a frozen
    trunk's conversion is ready, or worth making for a batch this large; else PyTorch)."""
    batch = np.asarray(batch, dtype=np.float32)
    if batch.ndim == 3:
        batch = batch[None]
    channels = session.input_spec.channels
    if batch.ndim != 4 or batch.shape[1] != channels:
        raise GraftError(f"Expected a batch of shape (N, {channels}, H, W), got {tuple(batch.shape)}.")
    model = session.model
    device, dtype = _device_dtype(model)
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device=device, dtype=dtype)
    if runner is None:
        runner, _ = trunk_runner(model, device, len(batch))
    with eval_mode(model), torch.inference_mode():
        out = decoded_outputs(model, features_then_heads(model, runner, x), tuple(x.shape[-2:]))
    return {name: t.detach().to("cpu", torch.float32).numpy() for name, t in out.items()}


def predict_files(session: "Session", paths: Sequence[str | Path], batch_size: int = 16) -> list[dict[str, HeadPrediction]]:
    """One ``{head: HeadPrediction}`` per image file, in order. GraftError names an unreadable file."""
    specs = head_specs(session)
    out: list[dict[str, HeadPrediction]] = []
    paths = list(paths)
    model = session.model
    runner, _ = trunk_runner(model, _device_dtype(model)[0], len(paths))
    for start in range(0, len(paths), batch_size):
        sizes: list[tuple[int, int]] = []
        batch = load_batch(paths[start:start + batch_size], session.input_spec, sizes=sizes)
        out += decode_batch(specs, predict_arrays(session, batch, runner), sizes)
    return out


def predict_image(session: "Session", path: str | Path) -> dict[str, HeadPrediction]:
    """``{head: HeadPrediction}`` for one image file (the GUI's "try an image")."""
    return predict_files(session, [path])[0]
