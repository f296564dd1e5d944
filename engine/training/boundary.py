"""The trunk split at the unfreeze boundary, so that frozen lower blocks run once per image, not every step.

When only the top blocks of a trunk train, every layer up to the last frozen block (the *boundary*)
computes the same output for the same image in every epoch (frozen weights, BatchNorm on its running
statistics: :meth:`engine.network.graft_model.GraftModel.train` keeps frozen BatchNorm in eval mode).
:class:`TrunkSplit` runs the trunk in two halves: :meth:`TrunkSplit.lower` (the image to the boundary's
output, computed once per image or augmented view and cached) and :meth:`TrunkSplit.upper` (the cached
output to the trunk's features, with gradients for the blocks that train). This is the same idea as the
heads-only cache (:mod:`engine.training.features`) one cut lower.

How it works for any network without rewriting its forward code: the upper half runs the trunk's own
forward with the lower modules replaced for the call (each module before the boundary passes its input
through untouched, the boundary module returns the cached tensor), so every layer after the boundary
runs exactly as it would. That is right only for networks whose lower modules feed the rest through the
boundary alone (a chain of blocks: EfficientNet, ResNet, MobileNet, ConvNeXt, VGG, RegNet …), so
:meth:`TrunkSplit.check` runs the whole trunk and the two halves on the same input once and refuses the
split (GraftError) when they differ or the halves do not run (a ViT reads its input's shape before its
blocks, for one).

Use: :func:`boundary_for` finds the boundary for a session's freeze settings (the last of the trunk's
blocks, :func:`engine.training.advice.trunk_blocks`, with every block up to it frozen and a later one
training), :func:`split_trunk` builds and checks the split.
"""
from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from engine.errors import GraftError
from engine.network.graft_model import END, Trunk


class _BoundaryReached(Exception):
    """Raised by the boundary's hook to end the lower half's forward pass."""


def _within(path: str, other: str) -> bool:
    return path == other or path.startswith(other + ".")


class TrunkSplit:
    """``trunk`` split after ``boundary`` (a layer path inside ``trunk.body``). ``lower_paths``: the
    modules that run before the boundary, replaced while the upper half runs (the boundary last).
    Build it with :func:`split_trunk`, which checks it."""

    def __init__(self, trunk: Trunk, boundary: str, lower_paths: list[str]) -> None:
        self.trunk, self.boundary = trunk, boundary
        self.lower_paths = list(lower_paths)
        modules = dict(trunk.body.named_modules())
        self._lower = [modules[p] for p in self.lower_paths]
        self._boundary = modules[boundary]

    # -- the two halves -----------------------------------------------------------------------------
    def lower(self, x: torch.Tensor) -> torch.Tensor:
        """The boundary's output for a batch of images (run it under ``torch.no_grad()`` in eval mode)."""
        captured: list[torch.Tensor] = []

        def stop(module: nn.Module, args: Any, output: Any) -> None:
            captured.append(output)
            raise _BoundaryReached

        handle = self._boundary.register_forward_hook(stop)
        try:
            self.trunk.body(x)
        except _BoundaryReached:
            pass
        finally:
            handle.remove()
        if not captured or not isinstance(captured[0], torch.Tensor):
            raise GraftError(f"Layer {self.boundary} gave no tensor: the trunk cannot be split there.")
        return captured[0]

    def upper(self, z: torch.Tensor) -> torch.Tensor:
        """The trunk's output (its taps, as :meth:`Trunk.forward`) from the boundary's output ``z``."""
        with self._replaced(z):
            return self.trunk(z)

    @contextlib.contextmanager
    def _replaced(self, z: torch.Tensor) -> Iterator[None]:
        def passthrough(*args: Any, **kwargs: Any) -> Any:
            return args[0] if args else next(iter(kwargs.values()))

        def cached(*args: Any, **kwargs: Any) -> torch.Tensor:
            return z

        for m in self._lower:
            m.forward = passthrough  # an instance attribute: nn.Module.__call__ uses it, hooks still run
        self._boundary.forward = cached
        try:
            yield
        finally:
            for m in self._lower + [self._boundary]:
                m.__dict__.pop("forward", None)

    def lower_eval(self) -> None:
        """The lower half in eval mode (frozen: BatchNorm on running statistics, no dropout), as cached."""
        for m in self._lower + [self._boundary]:
            m.eval()

    def lower_modules(self) -> list[nn.Module]:
        return self._lower + [self._boundary]

    def check(self, example: torch.Tensor, tolerance: float = 1e-4) -> None:
        """GraftError unless the two halves give the whole trunk's output for ``example`` (in eval mode,
        without gradients; the trunk's mode is put back). ``tolerance``: relative to the output's scale."""
        trunk = self.trunk
        was = trunk.training
        trunk.eval()
        try:
            with torch.no_grad():
                whole = trunk(example)
                try:
                    split = self.upper(self.lower(example))
                except GraftError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the network does not run in two halves
                    raise GraftError(f"The trunk does not run in two halves at {self.boundary} "
                                     f"({type(exc).__name__}: {exc}).") from None
        finally:
            trunk.train(was)
        if split.shape != whole.shape:
            raise GraftError(f"The trunk split at {self.boundary} gives features of shape {tuple(split.shape)}, "
                             f"not {tuple(whole.shape)}: its later layers read more than the boundary's output.")
        scale = float(whole.abs().max()) if whole.numel() else 0.0
        diff = float((split - whole).abs().max()) if whole.numel() else 0.0
        if not diff <= tolerance * max(1.0, scale):
            raise GraftError(f"The trunk split at {self.boundary} differs from the whole trunk (by {diff:.2g}): "
                             "its later layers read more than the boundary's output.")


def _call_order(body: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Each module's rank in the order of first calls in one forward pass (eval, no gradients)."""
    order: dict[str, int] = {}

    def seen(path: str, module: nn.Module, args: Any) -> None:  # returns None: the input stays as it is
        order.setdefault(path, len(order))

    handles = [m.register_forward_pre_hook(functools.partial(seen, p)) for p, m in body.named_modules()]
    try:
        with torch.no_grad():
            body(example)
    except Exception:  # noqa: BLE001 - a cut stops the pass early: the order up to it is what counts
        pass
    finally:
        for h in handles:
            h.remove()
    return order


def lower_paths(body: nn.Module, boundary: str, order: dict[str, int]) -> list[str]:
    """The modules that run before ``boundary`` and hold none of it: along the path from the body to the
    boundary, each parent's children called before the child on the path (the boundary last)."""
    if boundary not in order:
        raise GraftError(f"Layer {boundary} does not run in the trunk's forward pass: it cannot be the boundary.")
    out: list[str] = []
    parts = boundary.split(".")
    modules = dict(body.named_modules())
    for depth in range(len(parts)):
        parent = ".".join(parts[:depth])
        child = ".".join(parts[:depth + 1])
        for name, _ in modules[parent].named_children():
            path = f"{parent}.{name}" if parent else name
            if path != child and order.get(path, -1) >= 0 and order[path] < order[child]:
                out.append(path)
    return out + [boundary]


def split_trunk(trunk: Trunk, boundary: str, example: torch.Tensor) -> TrunkSplit:
    """The trunk split after ``boundary``, checked on ``example`` (a batch of at least two images, so that
    BatchNorm sees a batch; eval mode). GraftError when it cannot be split there: a layer up to it that
    trains, the boundary at or after the trunk's cut, a head reading a layer below it, or later layers that
    read more than its output."""
    body = trunk.body
    if isinstance(body, torch.jit.ScriptModule):
        raise GraftError("A TorchScript trunk cannot be split into halves.")
    if boundary not in dict(body.named_modules()) or not boundary:
        raise GraftError(f"There is no layer {boundary!r} in the trunk.")
    was = trunk.training
    trunk.eval()
    try:
        order = _call_order(body, example)
    finally:
        trunk.train(was)
    paths = lower_paths(body, boundary, order)
    if trunk.cut_at is not None and any(_within(trunk.cut_at, p) for p in paths):
        raise GraftError(f"The trunk is cut at {trunk.cut_at}: nothing after {boundary} runs.")
    modules = dict(body.named_modules())
    training = next((p for p in paths if any(q.requires_grad for q in modules[p].parameters())), None)
    if training is not None:
        raise GraftError(f"Layer {training}, before the boundary {boundary}, trains: the layers up to the boundary "
                         "must all be frozen for their output to be cached.")
    below = [t for t in trunk.taps if t is not END and any(_within(t, p) for p in paths)]
    if below:
        raise GraftError(f"A head reads layer {below[0]}, below the boundary {boundary}: split above it.")
    split = TrunkSplit(trunk, boundary, paths)
    split.check(example)
    return split


def boundary_for(session: Any) -> str | None:
    """The unfreeze boundary for the session's freeze settings: the last of the trunk's blocks
    (:func:`engine.training.advice.trunk_blocks`) with it and every block before it frozen, when a later
    block trains; None when the trunk is all frozen, all training, or has no blocks."""
    from engine.training.advice import trunk_blocks

    model = session.model
    modules = dict(model.trunk.body.named_modules())
    blocks = [n.path for n in trunk_blocks(session) if n.path in modules]

    def trains(path: str) -> bool:
        return any(p.requires_grad for p in modules[path].parameters())

    training = [i for i, b in enumerate(blocks) if trains(b)]
    if not training or training[0] == 0:
        return None
    return blocks[training[0] - 1]


class LowerHalf(nn.Module):
    """The lower half as a module of its own (image → the boundary's output), for converting it to ONNX:
    ``cut_at`` and ``taps`` tell :func:`engine.runtime.trunk_store.trunk_key` that it is not the whole trunk."""

    def __init__(self, split: TrunkSplit) -> None:
        super().__init__()
        self.trunk = split.trunk
        self.split = split
        self.cut_at = f"boundary:{split.boundary}"
        self.taps = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.split.lower(x)


def lower_runner(split: TrunkSplit, spec: Any, images: int, device: torch.device) -> tuple[Any, str | None]:
    """``(runner, note)``: onnxruntime for the lower half on a CPU when it converts and matches PyTorch
    (checked as every conversion is: :func:`engine.runtime.onnx_trunk.convert_trunk`) and the pass is
    long enough to be worth converting; else ``(None, note or None)``: PyTorch runs it."""
    import copy

    from engine.runtime.onnx_trunk import CONVERT_MIN_IMAGES, TrunkRunner, convert_trunk, enabled

    if device.type != "cpu" or not enabled() or images < CONVERT_MIN_IMAGES:
        return None, None
    tensors = [*split.trunk.parameters(), *split.trunk.buffers()]
    if not all(t.device.type == "cpu" and (t.dtype == torch.float32 or not t.dtype.is_floating_point) for t in tensors):
        return None, None
    trunk = copy.deepcopy(split.trunk)  # converted as it is now; the trunk itself trains meanwhile
    copied = TrunkSplit(trunk, split.boundary, split.lower_paths)
    conversion = convert_trunk(LowerHalf(copied).eval(), spec.channels, spec.size)
    note = conversion.note.replace("the frozen trunk runs", f"the frozen layers up to {split.boundary} run", 1)
    note = note.replace("the trunk runs", f"the layers up to {split.boundary} run", 1)
    if conversion.onnx is None:
        return None, note
    runner = TrunkRunner(conversion)
    runner.note = note
    return runner, note
