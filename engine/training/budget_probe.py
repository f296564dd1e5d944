"""Timing a few steps of each candidate stage on this device, for the budget's plan (:mod:`engine.training.budget`).

:func:`probe` decodes a few training images (augmented and plain), runs the frozen trunk once over a small
batch with a clock on every block's end (so one pass gives the cost of the frozen layers below each possible
boundary), then, for the top 1 … :data:`MAX_BLOCKS` blocks training, one training step and one validation pass
of the layers above the boundary on a batch of its cached output, and one heads-only step on features. A
warm-up pass comes first (the first call of a layer costs more than the rest), and each timing after it is the
median of :data:`REPEATS` (:func:`timed`: a shared CPU's spikes). Per-image seconds:
:class:`engine.training.budget.Costs`. The model's weights, buffers (BatchNorm's running statistics, which the
timed training steps move), modes and freeze settings are as before afterwards.

:func:`top_block_params` / :func:`train_top_blocks` are the freeze settings of a trunk stage (the top k block
groups of :func:`engine.training.schedule.block_groups`, as gradual unfreezing takes them).
"""
from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from engine.training.budget import Costs

MAX_BLOCKS = 3
BATCH = 4
DECODE_IMAGES = 4
REPEATS = 3  # each timing is the median of this many (see :func:`timed`)


def top_block_params(session: Any) -> list[tuple[str, list[str]]]:
    """``[(block, parameter names)]`` of the trunk's block groups, top first (groups with nothing that may
    train, learning-rate factor 0, left out); empty when the trunk has no separate blocks."""
    from engine.errors import GraftError
    from engine.training.schedule import UnfreezePlan

    try:
        plan = UnfreezePlan(session, 1, 1)
    except GraftError:
        return []
    return [(s.block, list(s.params)) for s in plan.stages]


@contextlib.contextmanager
def train_top_blocks(session: Any, k: int) -> Iterator[list[str]]:
    """The top ``k`` block groups train (the rest of the trunk frozen, the heads as they are) while the block
    runs; the freeze settings are put back afterwards. Yields the blocks, top first."""
    groups = top_block_params(session)[:k]
    names = {n for _, params in groups for n in params}
    model = session.model
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        for n, p in model.trunk.named_parameters(prefix="trunk"):
            p.requires_grad_(n in names)
        yield [b for b, _ in groups]
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(before[n])


def _per_image(seconds: float, n: int) -> float:
    return seconds / max(1, n)


_clock = time.perf_counter  # the tests' fake clock goes here


def timed(fn: Callable[[], Any], repeats: int = REPEATS) -> float:
    """The median seconds of ``repeats`` calls of ``fn`` (after the caller's warm-up): one timing of a few
    milliseconds on a shared CPU can be several times the cost (another job took the core then; measured on
    the demo under load 5-7, a heads step 0.6 ms once and 3.0 ms the next), and a plan made from it gives a
    third of the epochs that fit. The median of three passes over such spikes."""
    times = []
    for _ in range(max(1, repeats)):
        t = _clock()
        fn()
        times.append(_clock() - t)
    return statistics.median(times)


def _decode_cost(session: Any, samples: Sequence[Any], policy: str) -> tuple[float, float]:
    from engine.data.image_dataset import ImageDataset
    from engine.training.augment import apply_policy

    few = list(samples[:DECODE_IMAGES])
    if not few:
        return 0.0, 0.0
    out = []
    for augment in (True, False):
        dataset = ImageDataset(few, [], session.input_spec, augment=augment)
        if augment:
            apply_policy(dataset, policy)
        dataset[0]  # warm-up (the first decode opens libraries)
        out.append(_per_image(timed(lambda dataset=dataset: [dataset[i] for i in range(len(few))]), len(few)))
    return out[0], out[1]


def probe(session: Any, samples: Sequence[Any], *, policy: str = "standard", max_blocks: int = MAX_BLOCKS,
          device: torch.device | None = None, images: int = 0) -> Costs:
    """Per-image costs of each candidate stage, measured on ``device`` (the CPU by default) with the session's
    model; ``samples``: training samples to time decoding on; ``images``: how many images the frozen passes
    will see (onnxruntime runs them only past its threshold, and is then what is timed)."""
    t_start = time.perf_counter()
    device = device or torch.device("cpu")
    model = session.model
    decode, decode_plain = _decode_cost(session, samples, policy)
    groups = top_block_params(session)
    blocks = [b for b, _ in reversed(groups)]  # forward order
    modules = dict(model.trunk.body.named_modules())
    was_training = model.training
    model.to(device)
    model.eval()
    x = model.dummy_input(BATCH).to(device)
    ends: dict[str, float] = {}
    handles = [modules[b].register_forward_hook(lambda m, a, o, b=b: ends.__setitem__(b, time.perf_counter()))
               for b in blocks if b in modules]
    try:
        with torch.no_grad():
            model.trunk(x[:2])  # warm-up
            ends.clear()
            t0 = time.perf_counter()
            features = model.trunk(x)
            trunk = _per_image(time.perf_counter() - t0, BATCH)
    finally:
        for h in handles:
            h.remove()
    lower = {}
    for k in range(1, min(max_blocks, len(blocks) - 1) + 1):
        boundary = blocks[len(blocks) - k - 1]
        if boundary in ends:
            lower[k] = _per_image(ends[boundary] - t0, BATCH)
    fast = _runner_cost(model, x, device, images)  # the frozen passes run in onnxruntime on a CPU: at its pace
    if fast is not None and fast < trunk:
        lower = {k: v * fast / trunk for k, v in lower.items()}
        trunk = fast
    head_step = _heads_step(model, features)
    upper_step, upper_eval = {}, {}
    # the timed training steps run BatchNorm in training mode on the dummy batch: its running statistics
    # would move towards that batch's (about half-way after the steps of three block counts), and the heads'
    # features be computed with them; they are put back
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    try:
        for k in sorted(lower):
            measured = _upper_costs(session, k, x)
            if measured is not None:
                upper_step[k], upper_eval[k] = measured
    finally:
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
        model.train(was_training)
    return Costs(decode, decode_plain, trunk, head_step, {k: lower[k] for k in upper_step}, upper_step, upper_eval,
                 time.perf_counter() - t_start)


def _runner_cost(model: Any, x: torch.Tensor, device: torch.device, images: int) -> float | None:
    """Per image, the frozen trunk in onnxruntime as the cached-features pass runs it (converting it now, once
    per trunk: the first stage reuses the conversion); None where PyTorch runs it."""
    from engine.runtime.onnx_trunk import trunk_runner

    runner, _ = trunk_runner(model, device, images)
    if runner is None:
        return None
    batch = x.repeat(2, 1, 1, 1)
    runner(batch[:2])
    return _per_image(timed(lambda: runner(batch)), batch.shape[0])


def _heads_step(model: Any, features: torch.Tensor) -> float:
    heads = [p for p in model.heads.parameters()]
    batch = features.detach().repeat(4, *([1] * (features.dim() - 1)))
    for p in heads:
        p.grad = None

    def step() -> None:
        out = model.forward_heads(batch)
        sum(v.float().sum() for v in out.values()).backward()

    from engine.training.features import heads_threads

    with heads_threads(device=features.device):  # as the heads' epochs run
        step()  # warm-up (autograd's first backward starts its threads)
        seconds = _per_image(timed(step), batch.shape[0])
    for p in heads:
        p.grad = None
    return seconds


def _upper_costs(session: Any, k: int, x: torch.Tensor) -> tuple[float, float] | None:
    """(training step, validation pass) per image of the layers above the boundary with the top ``k`` blocks
    training; None when the trunk does not split there."""
    from engine.errors import GraftError
    from engine.training.boundary import boundary_for, split_trunk

    model = session.model
    with train_top_blocks(session, k):
        boundary = boundary_for(session)
        if boundary is None:
            return None
        try:
            split = split_trunk(model.trunk, boundary, x[:2])
        except GraftError:
            return None
        with torch.no_grad():
            z = split.lower(x)
        channels_last = x.device.type == "cpu" and z.dim() == 4
        if channels_last:
            model.to(memory_format=torch.channels_last)
            z = z.contiguous(memory_format=torch.channels_last)
        trained = [p for p in model.parameters() if p.requires_grad]
        try:
            model.train()
            split.lower_eval()
            def train_step(n: int) -> None:
                out = model.forward_heads(split.upper(z[:n]))
                sum(v.float().sum() for v in out.values()).backward()

            train_step(2)  # a warm-up step on two, then the timed ones
            step = _per_image(timed(lambda: train_step(z.shape[0])), z.shape[0])
            model.eval()
            with torch.no_grad():
                evaluate = _per_image(timed(lambda: model.forward_heads(split.upper(z))), z.shape[0])
        finally:
            for p in trained:
                p.grad = None
            if channels_last:
                model.to(memory_format=torch.contiguous_format)
            model.eval()
    return step, evaluate
