"""Training on several processes with PyTorch's own distributed engine (``torch.distributed``).

The processes are started by ``torch.distributed.run`` (torchrun): ``main.py train --devices N`` starts
it itself (:mod:`commands.launch`), an external ``torchrun --nnodes M ...`` launch is joined as it is.
Each process finds its place in the environment torchrun sets (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``); :func:`setup` joins the process group (NCCL on GPUs, each process the GPU of its
``LOCAL_RANK``; gloo on CPUs) and the :class:`~engine.training.trainer.Trainer` finds it with
:func:`current`. Nothing here hand-writes a collective: it is DDP, ``DistributedSampler``,
``all_reduce``/``all_gather`` and ``SyncBatchNorm``.

How the two training paths split the work:

* **Images (the trunk trains, or augmented images through a frozen trunk):** DDP. The settings' batch
  size is the *global* batch: each process takes ``batch_size / N`` images of its shard
  (``DistributedSampler``, reshuffled every epoch by ``set_epoch`` from the seed), so one step is the
  same step as on one process and the learning rates need no change. The loss of every head is the
  global one: the numerators and denominators of every head's loss (labelled entries, see
  :mod:`engine.training.losses`) are summed over the processes each step (one small ``all_reduce``),
  so a masked multi-label or regression head weighs each labelled entry the same wherever it is, and
  DDP's gradient average is the gradient of the global loss. Validation is sharded too (no image twice)
  and its losses and metric counts are summed over the processes (so they equal one process's over
  all the data).
* **Cached features (a frozen trunk):** each process computes the features of its shard, then they are
  gathered (``all_gather``) so every process holds all of them, in the data's order, and the heads
  train on them exactly as one process would: same batches, same order, the same weights in every
  process with no communication per step. The heads are small (a step on features costs far less
  than an all-reduce of its gradients would), and it makes the result the one-process result.

Stop and pause requests are agreed on (one ``all_reduce`` of a flag per step, on a gloo group so a GPU
run never waits on the device for it), so every process stops at the same step. Every collective has a
timeout (``init_process_group(timeout=...)``, ``GRAFT_DIST_TIMEOUT`` seconds, default 300): a process
that dies or hangs makes the others fail within it instead of waiting for ever.

BatchNorm: with layers of the trunk training, PyTorch's ``SyncBatchNorm`` normalises over the global
batch (``TrainConfig.sync_batchnorm``: "auto" = on with several GPUs). It runs on GPUs only: on the CPU
"auto" leaves it off (each process normalises with its own shard's batch; DDP broadcasts process 0's
running statistics at every step, so all processes keep the same ones) and True is refused.
"""
from __future__ import annotations

import datetime
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from engine.errors import GraftError

TIMEOUT_ENV = "GRAFT_DIST_TIMEOUT"
DEFAULT_TIMEOUT = 300.0  # seconds any collective may wait for the other processes
DIE_ENV = "GRAFT_TEST_DIE_AT_STEP"


def launched_world() -> tuple[int, int, int] | None:
    """``(world_size, rank, local_rank)`` when torchrun started this process with more than one
    process in the job, else None."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return None
    if world < 2:
        return None
    return world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def timeout_seconds() -> float:
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        raise GraftError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds.") from None
    return value if value > 0 else DEFAULT_TIMEOUT


class ProcessLost(GraftError):
    """A collective failed: another process ended or stopped answering within the timeout."""


@dataclass
class Context:
    """This process's place in the job and the groups it talks through."""

    world_size: int
    rank: int
    local_rank: int
    device: torch.device
    backend: str
    timeout: float
    control: Any = None  # a gloo group for flags (None: the default group is gloo already)
    _restore_bn: list[Callable[[], None]] = field(default_factory=list)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def describe(self) -> str:
        return f"process {self.rank} of {self.world_size}"

    # -- collectives, each turning a failure into one message ------------------------------------
    def _run(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except GraftError:
            raise
        except Exception as exc:  # noqa: BLE001 - gloo/NCCL errors, timeouts, closed connections
            raise ProcessLost(lost_message(self, exc, what)) from exc

    def agree(self, flag: bool, step: int | None = None) -> bool:
        """True in every process when ``flag`` is True in any (stop and pause requests). ``step``: the
        optimizer steps done (tests: :data:`DIE_ENV` ``=STEP`` makes the last process exit there at once)."""
        if step is not None and self.rank == self.world_size - 1 and os.environ.get(DIE_ENV) == str(step):
            os._exit(3)  # a process that dies mid-run, without a word (tests of the others' reaction)
        t = torch.tensor([1.0 if flag else 0.0])
        self._run("agreeing on a stop request",
                  lambda: dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.control))
        return bool(t.item() > 0)

    def all_reduce_(self, tensor: torch.Tensor, what: str = "summing losses") -> torch.Tensor:
        """Sum ``tensor`` over the processes, in place (on the device for NCCL, on the CPU for gloo)."""
        if self.backend == "nccl" and tensor.device.type != "cuda":
            moved = tensor.to(self.device)
            self._run(what, lambda: dist.all_reduce(moved))
            tensor.copy_(moved.to(tensor.device))
        else:
            self._run(what, lambda: dist.all_reduce(tensor))
        return tensor

    def gather_rows(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """The rows every process computed for the same batch of its :meth:`extract_sampler` shard, all of
        them, in the data's order (a batch's rows of all processes are consecutive in the data): at most
        ``n`` (the sampler's padding, the data's last rows repeated, dropped)."""
        src = x.to(self.device) if self.backend == "nccl" else x.cpu()
        parts = [torch.empty_like(src) for _ in range(self.world_size)]
        self._run("gathering the features", lambda: dist.all_gather(parts, src.contiguous()))
        # DistributedSampler(shuffle=False) gives process r the positions r, r + N, r + 2N … of the data
        whole = torch.stack(parts, dim=1).reshape(-1, *src.shape[1:])[:n]
        return whole.to(x.device)

    def barrier(self, what: str = "finishing") -> None:
        """Wait for every process (e.g. before leaving, so no process tears down while another still runs)."""
        self._run(what, lambda: dist.barrier(group=self.control))

    def broadcast_state(self, module: nn.Module) -> None:
        """Process 0's weights and buffers in every process (e.g. random weights drawn per process)."""
        with torch.no_grad():
            for tensor in module.state_dict().values():  # they share storage with the module's own
                if self.backend == "nccl":
                    moved = tensor.to(self.device)
                    self._run("sharing the weights", lambda: dist.broadcast(moved, src=0))
                    tensor.copy_(moved)
                else:
                    self._run("sharing the weights", lambda: dist.broadcast(tensor, src=0))

    # -- data ---------------------------------------------------------------------------------
    def check_batch(self, batch_size: int) -> int:
        """The images per process of a global batch: it must split evenly."""
        if batch_size % self.world_size:
            raise GraftError(f"The batch size {batch_size} does not split evenly over {self.world_size} processes: "
                             f"use a multiple of {self.world_size} (it is the global batch, all processes together).")
        return batch_size // self.world_size

    def train_batches(self, n: int, batch_size: int, seed: int, epoch: int = 0) -> "ShardBatches":
        return ShardBatches(n, self.check_batch(batch_size), self.world_size, self.rank, seed, epoch)

    def extract_sampler(self, n: int, batch: int) -> torch.utils.data.BatchSampler:
        """Batches of this process's shard in order (padded so every process has as many rows)."""
        sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=self.world_size, rank=self.rank,
                                                      shuffle=False)
        return torch.utils.data.BatchSampler(sampler, batch, drop_last=False)

    def val_indices(self, n: int) -> list[int]:
        """This process's share of the validation images: every one exactly once over the processes."""
        return list(range(self.rank, n, self.world_size))

    # -- losses and metrics --------------------------------------------------------------------
    def step_losses(self, losses: Any, heads: Sequence[Any]) -> tuple[torch.Tensor, Any]:
        """``(objective, report)`` of one step. Every head's loss over the global batch is
        ``sum of its numerators / sum of its denominators`` over the processes; the objective is this
        process's part of it times N (DDP averages gradients over the N processes), ``report`` a
        LossResult with the global losses (for the step event; its sums and counts stay this process's,
        reduced at the epoch's end)."""
        from engine.training.losses import LossResult

        names = list(losses.sums)
        local = torch.stack([torch.stack([losses.sums[n].float(), losses.counts[n].float()]) for n in names])
        total_counts = self.all_reduce_(local.detach().clone(), "summing the step's losses")
        report = LossResult(total=torch.zeros(()), sums=losses.sums, counts=losses.counts)
        objective = None
        weights = {h.name: float(h.loss_weight) for h in heads}
        for i, name in enumerate(names):
            own = local[i, 1].clamp(min=1.0)
            every = total_counts[i, 1].clamp(min=1.0)
            part = losses.per_head[name] * own / every * self.world_size  # own numerator / global denominator
            term = part * weights.get(name, 1.0)
            objective = term if objective is None else objective + term
            report.per_head[name] = (total_counts[i, 0] / every).detach()
            shown = report.per_head[name] * weights.get(name, 1.0)
            report.total = shown if i == 0 else report.total + shown
        return objective if objective is not None else losses.total, report

    def reduce_accumulator(self, acc: Any) -> None:
        """Sum a LossAccumulator's numerators and denominators over the processes (in place; every head,
        also in a process whose share was empty, so that every process takes part)."""
        names = [h.name for h in acc.heads]
        zero = torch.zeros(())
        stacked = torch.stack([torch.stack([acc.sums.get(n, zero).float().to(self.device),
                                            acc.counts.get(n, zero).float().to(self.device)]) for n in names])
        self.all_reduce_(stacked, "summing the epoch's losses")
        for i, n in enumerate(names):
            acc.sums[n], acc.counts[n] = stacked[i, 0], stacked[i, 1]

    def reduce_metrics(self, metrics: Any) -> None:
        """Sum a MetricSet's counts (confusion matrices, true/false positives, errors) over the processes."""
        for m in metrics.heads.values():
            for attr in ("confusion", "counts"):
                value = getattr(m, attr, None)
                if isinstance(value, torch.Tensor):
                    self.all_reduce_(value, "summing the validation metrics")

    # -- the model -----------------------------------------------------------------------------
    def wrap(self, module: nn.Module) -> nn.parallel.DistributedDataParallel:
        """DDP over ``module``'s trainable parameters (gradients averaged in the backward pass)."""
        ids = [self.device.index] if self.device.type == "cuda" else None
        return self._run("starting DDP", lambda: nn.parallel.DistributedDataParallel(module, device_ids=ids))

    def sync_batchnorm(self, module: nn.Module, option: bool | str) -> int:
        """Replace ``module``'s BatchNorm layers with SyncBatchNorm (see the module docstring for
        ``option``); :meth:`restore_batchnorm` puts the originals back with the trained state. Returns
        how many were replaced."""
        if option is False or (option == "auto" and self.device.type != "cuda"):
            return 0
        if self.device.type != "cuda":
            raise GraftError("SyncBatchNorm needs GPUs (PyTorch's runs on CUDA only); on the CPU leave it on auto.")
        originals = [(parent, name, child) for parent in module.modules()
                     for name, child in parent.named_children()
                     if isinstance(child, nn.modules.batchnorm._BatchNorm)]
        for parent, name, child in originals:
            synced = nn.SyncBatchNorm.convert_sync_batchnorm(child)
            synced._forward_hooks, synced._forward_pre_hooks = child._forward_hooks, child._forward_pre_hooks
            setattr(parent, name, synced)

            def restore(parent=parent, name=name, child=child) -> None:
                current = getattr(parent, name)
                child.load_state_dict(current.state_dict())
                child.train(current.training)
                setattr(parent, name, child)

            self._restore_bn.append(restore)
        return len(originals)

    def restore_batchnorm(self) -> None:
        while self._restore_bn:
            self._restore_bn.pop()()


class HeadsOnFeatures(nn.Module):
    """The heads of a GraftModel as one module taking trunk features, for DDP with a frozen trunk
    (only the heads' parameters are registered here)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.heads = model.heads
        object.__setattr__(self, "_model", model)  # not a submodule: DDP must not see the trunk

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return self._model.forward_heads(features)


class ShardBatches(torch.utils.data.Sampler):
    """This process's training batches: a ``DistributedSampler`` (shuffled from ``seed``, padded so every
    process has as many batches) cut into batches of ``batch`` images; every iteration is the next epoch
    (``set_epoch``), from ``epoch`` (a resumed run's epochs so far)."""

    def __init__(self, n: int, batch: int, world: int, rank: int, seed: int, epoch: int = 0) -> None:
        self.sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True,
                                                           seed=seed)
        self.batch = batch
        per = self.sampler.num_samples
        self.drop_last = per > batch and per % batch == 1  # no batch of one (BatchNorm)
        self.epoch = epoch

    def __len__(self) -> int:
        per = self.sampler.num_samples
        return per // self.batch if self.drop_last else math.ceil(per / self.batch)

    def __iter__(self) -> Iterator[list[int]]:
        self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        return iter(torch.utils.data.BatchSampler(self.sampler, self.batch, self.drop_last))


def lost_message(ctx: Context, exc: BaseException, what: str = "") -> str:
    """What to tell the user when a collective failed."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    timed_out = "timeout" in text.lower() or "timed out" in text.lower()
    why = (f"did not answer within {ctx.timeout:g} s" if timed_out else "ended or lost its connection")
    return (f"Another training process {why} ({ctx.describe()}, {what or 'training'}: {text[:160]}); "
            "the run was stopped.")


_current: Context | None = None


def current() -> Context | None:
    """The process group this process joined with :func:`setup` (None: training on one process)."""
    return _current if _current is not None and dist.is_initialized() else None


def resolve(device: str, local_rank: int) -> tuple[torch.device, str]:
    """This process's device and backend for the setting ``device``: each process the GPU of its
    ``LOCAL_RANK`` with NCCL, or the CPU with gloo."""
    base = str(device or "auto").split(":")[0].lower()
    if base == "auto":
        base = "cuda" if torch.cuda.is_available() else "cpu"
    if base == "cuda":
        if not torch.cuda.is_available():
            raise GraftError("No CUDA GPU is available here; train on several processes with --device cpu.")
        if local_rank >= torch.cuda.device_count():
            raise GraftError(f"Process {local_rank} of this machine has no GPU (it has {torch.cuda.device_count()}): "
                             "start at most one process per GPU.")
        return torch.device("cuda", local_rank), "nccl"
    if base == "cpu":
        return torch.device("cpu"), "gloo"
    raise GraftError(f"Training on several processes runs on CUDA GPUs or the CPU, not on {device!r}.")


def setup(device: str = "auto", timeout: float | None = None) -> Context | None:
    """Join the job torchrun started (None, doing nothing, when this process runs alone)."""
    global _current
    world = launched_world()
    if world is None:
        return None
    if _current is not None and dist.is_initialized():
        return _current
    world_size, rank, local_rank = world
    dev, backend = resolve(device, local_rank)
    seconds = timeout or timeout_seconds()
    span = datetime.timedelta(seconds=seconds)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    try:
        dist.init_process_group(backend, timeout=span)
        control = dist.new_group(backend="gloo", timeout=span) if backend != "gloo" else None
    except Exception as exc:  # noqa: BLE001 - a rendezvous that fails or times out
        raise GraftError(f"Could not join the other training processes ({backend}, rank {rank} of {world_size}): "
                         f"{str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__}") from exc
    _current = Context(world_size, rank, local_rank, dev, backend, seconds, control)
    return _current


def teardown(clean: bool = False) -> None:
    """Leave the process group (safe to call when none was joined). ``clean``: this process finished its
    work, as every other does: wait for them first (never after an error, where a peer may be mid-step)."""
    global _current
    _current = None
    if dist.is_available() and dist.is_initialized():
        try:
            # All processes leave together: one that destroys its group while a peer's last collective is
            # still in flight aborts that peer at exit ("terminate called without an active exception",
            # SIGABRT), and torchrun then reports a finished run as failed.
            if clean:
                dist.barrier()
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - the others may be gone already
            pass
