"""engine.training.distributed and engine.training.launch: shards, reductions across processes (two gloo
processes started by an external torchrun, as a cluster launch would), and how a failed run is told."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from engine.training.distributed import ShardBatches
from engine.training.launch import LOST_PREFIX, failure_message

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize("n, world, batch", [(19, 2, 4), (16, 2, 8), (7, 3, 3)])
def test_shards_cover_every_image_and_reshuffle_each_epoch(n, world, batch):
    shards = [ShardBatches(n, batch, world, rank, seed=5) for rank in range(world)]
    assert len({len(s) for s in shards}) == 1  # every process runs as many steps
    epochs = []
    for _ in range(2):
        seen = [i for s in shards for b in s for i in b]
        assert set(seen) == set(range(n))  # padding repeats a few, none is left out
        assert len(seen) - n < world * (1 + batch)
        epochs.append(seen)
    assert epochs[0] != epochs[1]  # set_epoch: another order in the next epoch
    again = [i for s in [ShardBatches(n, batch, world, r, seed=5) for r in range(world)] for b in s for i in b]
    assert again == epochs[0]  # the order comes from the seed


def test_no_process_gets_a_batch_of_one():
    """As on one process (BatchNorm cannot train on one image): 3 images a process, 2 a batch."""
    shard = ShardBatches(7, 2, 3, 0, seed=0)
    assert len(shard) == 1 and [len(b) for b in shard] == [2]


def _failure(exitcode: int, message: str = "", path: str = "<N/A>"):
    return SimpleNamespace(exitcode=exitcode, message={"message": message} if message else "", error_file=path,
                           signal_name=lambda: signal.Signals(-exitcode).name if exitcode < 0 else "<N/A>")


def test_the_cause_of_a_failed_run_is_told_in_one_line(tmp_path):
    recorded = tmp_path / "error.json"
    recorded.write_text("{}")
    own = _failure(1, "TrainingError: Head 'x' has no data.", str(recorded))
    lost = _failure(1, f"TrainingError: {LOST_PREFIX} ended or lost its connection (process 0 of 2)", str(recorded))
    died, ended = _failure(3), _failure(-signal.SIGTERM)
    assert failure_message({0: lost, 1: own}, 2) == "Head 'x' has no data."
    text = failure_message({0: lost, 1: died}, 2)
    assert text.startswith("Training process 1 of 2 ended unexpectedly (exit code 3)") and "\n" not in text
    assert "process 1 of 2 ended unexpectedly" in failure_message({0: ended, 1: died}, 2)  # not the one ended after
    assert "killed by signal SIGTERM" in failure_message({0: ended}, 2)
    # kill -9 of process 1 (or the OOM killer): the agent then ends process 0 with SIGTERM; it saw 1 first
    killed = _failure(-signal.SIGKILL)
    assert failure_message({1: killed, 0: ended}, 2).startswith("Training process 1 of 2 was killed by signal SIGKILL")
    assert failure_message({0: ended, 1: killed}, 2).startswith("Training process 1 of 2 was killed by signal SIGKILL")
    # the agent escalating to SIGKILL for a process slow to end comes after the first crash
    assert "process 1 of 2 ended unexpectedly" in failure_message({1: died, 0: killed}, 2)


SCRIPT = r'''
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
import torch
from engine.network.heads import HeadSpec
from engine.training import distributed
from engine.training.losses import LossAccumulator, compute_losses
from engine.training.metrics import MetricSet

ctx = distributed.setup("cpu", timeout=60)
heads = [HeadSpec("tags", "multi", labels=["a", "b", "c"]), HeadSpec("kind", "single", labels=["x", "y"], loss_weight=0.5)]
g = torch.Generator().manual_seed(0)
n = 10
feats = torch.randn(n, 4, generator=g)
tags = (torch.rand(n, 3, generator=g) > 0.5).float()
tags[torch.rand(n, 3, generator=g) > 0.6] = float("nan")  # masked entries, more in some rows than others
kind = torch.randint(0, 2, (n,), generator=g)
kind[::3] = -1
torch.manual_seed(0)


class Heads(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tags, self.kind = torch.nn.Linear(4, 3), torch.nn.Linear(4, 2)

    def forward(self, x):
        return {{"tags": self.tags(x), "kind": self.kind(x)}}


model = Heads()
forward = lambda m, x: m(x)


# one process: the whole batch
whole = compute_losses(heads, forward(model, feats), {{"tags": tags, "kind": kind}})
whole.total.backward()
expected = {{k: p.grad.clone() for k, p in model.named_parameters()}}
model.zero_grad()
# this process: rows 0-3 or 4-9 (uneven shares, unevenly labelled)
rows = slice(0, 4) if ctx.rank == 0 else slice(4, n)
ddp = ctx.wrap(model)
part = compute_losses(heads, ddp(feats[rows]), {{"tags": tags[rows], "kind": kind[rows]}})
objective, report = ctx.step_losses(part, heads)
objective.backward()
grads = max((p.grad - expected[k]).abs().max().item() for k, p in model.named_parameters())
loss = abs(report.total.item() - whole.total.item())
acc = LossAccumulator(heads)
acc.add(part)
ctx.reduce_accumulator(acc)
epoch = abs(acc.values()[0] - whole.total.item())
metrics, alone = MetricSet(heads), MetricSet(heads)
with torch.no_grad():
    metrics.update(forward(model, feats[rows]), {{"tags": tags[rows], "kind": kind[rows]}})
    alone.update(forward(model, feats), {{"tags": tags, "kind": kind}})
ctx.reduce_metrics(metrics)
same_metrics = metrics.details() == alone.details()
# gather: each process the rows of its DistributedSampler shard, all of them back in order
mine = [i for b in ctx.extract_sampler(7, 2) for i in b]
gathered = ctx.gather_rows(torch.tensor(mine, dtype=torch.float32).unsqueeze(1) * 10, 7)
order = gathered.squeeze(1).tolist() == [i * 10.0 for i in range(7)]
# each process writes its own file: print()s of two processes interleave on the shared pipe
Path({out!r}, f"rank{{ctx.rank}}.txt").write_text(
    f"rank {{ctx.rank}} grads {{grads:.2e}} loss {{loss:.2e}} epoch {{epoch:.2e}} metrics {{same_metrics}} order {{order}}")
distributed.teardown(clean=True)
'''


@pytest.mark.spawn
@pytest.mark.slow
def test_two_processes_reduce_to_the_one_process_loss_gradients_and_metrics(tmp_path):
    """The masked multi-label loss (labelled entries summed, divided over the whole batch) and the
    single-label one (over its labelled examples) on uneven shares: the step's loss, DDP's gradients,
    the epoch's loss and the metrics equal one process's over all the rows."""
    script = tmp_path / "reduce.py"
    script.write_text(SCRIPT.format(root=str(ROOT), out=str(tmp_path)), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(script)], capture_output=True, text=True, timeout=120, check=False,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "LOGLEVEL": "ERROR"})
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [(tmp_path / f"rank{rank}.txt").read_text(encoding="utf-8") for rank in (0, 1)]
    for line in lines:
        words = line.split()
        values = dict(zip(words[2::2], words[3::2]))
        assert float(values["grads"]) < 1e-6 and float(values["loss"]) < 1e-6 and float(values["epoch"]) < 1e-6, line
        assert values["metrics"] == "True" and values["order"] == "True", line
