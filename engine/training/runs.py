"""The runs a project keeps, as a table, and a TensorBoard log of a run as it trains.

Every training run is a :class:`~engine.training.record.TrainingRecord` in the project's ``extra["runs"]``
(settings, data, per-epoch curves, final metrics per head, duration, device). :func:`runs_table` turns them
into the rows ``main.py runs`` prints and the window's Runs view shows; :class:`TensorBoardLog` is a
training callback that writes the same curves with ``torch.utils.tensorboard``.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.errors import GraftError
from engine.training.budget import clock_text
from engine.training.metrics import MAIN_METRIC
from engine.training.record import TrainingRecord
from engine.units import plural

SHORT = {"accuracy": "acc", "macro_f1": "F1", "mae": "MAE", "miou": "mIoU", "map_50": "mAP50"}


def runs_of(extra: Mapping[str, Any] | None) -> list[TrainingRecord]:
    """The project's runs in the order they ran. A project saved before runs were kept has at most its
    one latest run."""
    extra = extra if isinstance(extra, Mapping) else {}
    raw = extra.get("runs")
    if isinstance(raw, list) and raw:
        return [TrainingRecord.from_dict(r) for r in raw if isinstance(r, Mapping)]
    latest = extra.get("training")
    return [TrainingRecord.from_dict(latest)] if isinstance(latest, Mapping) and latest else []


def final_metrics(record: TrainingRecord) -> dict[str, dict[str, float]]:
    """Per head, the validation metrics of the epoch whose weights the run kept (the best epoch; else the
    last one)."""
    if not record.history:
        return {}
    chosen = next((h for h in record.history if h.get("epoch") == record.best_epoch), record.history[-1])
    metrics = chosen.get("metrics")
    return {k: dict(v) for k, v in metrics.items() if isinstance(v, Mapping)} if isinstance(metrics, Mapping) else {}


def _headline(summary: Mapping[str, float]) -> str:
    for key in MAIN_METRIC.values():  # whichever this head has
        if isinstance(summary.get(key), (int, float)):
            return f"{SHORT[key]} {summary[key]:.3f}"
    return "-"


@dataclass
class RunsTable:
    columns: list[str]
    rows: list[list[str]]

    def text(self) -> str:
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) if self.rows else len(c)
                  for i, c in enumerate(self.columns)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(self.columns, widths)).rstrip()]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in self.rows]
        return "\n".join(lines)


def runs_table(records: Sequence[TrainingRecord]) -> RunsTable:
    """One row per run, numbered 1, 2, … in order: when, data, settings, outcome and each head's metric."""
    heads = list(dict.fromkeys(h for r in records for h in final_metrics(r)))
    columns = ["run", "started", "data", "epochs", "batch", "lr heads", "lr trunk", "ended", "best",
               "val loss", *heads, "time", "device"]
    rows = []
    for i, r in enumerate(records, 1):
        c = r.config
        metrics = final_metrics(r)
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started)) if r.started else "-"
        rows.append([str(i), started, Path(r.data).name if r.data else "-",
                     _epochs_cell(r), str(c.get("batch_size", "-")),
                     _num(c.get("lr_heads")), _num(c.get("lr_trunk")), r.reason or "-",
                     str(r.best_epoch) if r.best_epoch is not None else "-",
                     f"{r.best_val_loss:.4f}" if isinstance(r.best_val_loss, (int, float)) else "-",
                     *(_headline(metrics.get(h, {})) for h in heads),
                     f"{r.seconds:.0f} s" if isinstance(r.seconds, (int, float)) else "-", r.device or "-"])
    return RunsTable(columns, rows)


def _epochs_cell(r: TrainingRecord) -> str:
    if r.plan:
        budget = r.plan.get("budget")
        when = f", budget {clock_text(budget)}" if isinstance(budget, (int, float)) else ""
        return f"{r.epochs_run} ({plural(len(r.stages), 'stage')}{when})"
    return f"{r.epochs_run}/{r.config.get('epochs', '-')}"


def stage_table(record: TrainingRecord) -> RunsTable:
    """A time-budgeted run's stages, one row each: what trained, for how long against the estimate, and the
    best validation result it reached (the table that says what the minutes bought)."""
    heads = list(dict.fromkeys(h for st in record.stages for h in (st.get("metrics") or {})))
    columns = ["stage", "trains", "epochs", "views", "time", "estimate", "val loss", *heads, "kept", "note"]
    rows = []
    for st in record.stages:
        blocks = st.get("blocks") or []
        kind = st.get("kind")
        trains = ("rate sweep" if kind == "finder" else "heads" if not blocks
                  else f"heads + {len(blocks)} block{'s' if len(blocks) > 1 else ''}")
        metrics = st.get("metrics") or {}
        ran = st.get("epochs_run") or 0
        planned = st.get("epochs") or 0
        val = st.get("val_loss")
        rows.append([f"{st.get('index', '?')}. {st.get('title', '?')}", trains,
                     f"{ran}/{planned}" if kind != "finder" else "-", str(st.get("views") or "-"),
                     clock_text(st.get("seconds") or 0.0), clock_text(st.get("estimate") or 0.0),
                     f"{val:.4f}" if isinstance(val, (int, float)) else "-",
                     *(_headline(metrics.get(h, {})) if isinstance(metrics.get(h), Mapping) else "-" for h in heads),
                     "yes" if st.get("kept") else "", str(st.get("note") or "")[:60]])
    return RunsTable(columns, rows)


def _num(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else "-"


def curves(record: TrainingRecord) -> dict[str, list[tuple[int, float]]]:
    """A run's per-epoch curves: ``train_loss``, ``val_loss`` and each head's main validation metric
    (``"<head> <metric>"``), as (epoch, value) pairs, for overlaying runs."""
    out: dict[str, list[tuple[int, float]]] = {}
    for h in record.history:
        epoch = h.get("epoch")
        if not isinstance(epoch, int):
            continue
        for key in ("train_loss", "val_loss"):
            if isinstance(h.get(key), (int, float)):
                out.setdefault(key, []).append((epoch, float(h[key])))
        for head, summary in (h.get("metrics") or {}).items():
            for key in MAIN_METRIC.values():
                if isinstance(summary, Mapping) and isinstance(summary.get(key), (int, float)):
                    out.setdefault(f"{head} {key}", []).append((epoch, float(summary[key])))
    return out


class TensorBoardLog:
    """A training callback that also writes the run's curves as TensorBoard event files in ``folder``
    (one sub-folder per run, named by its start time): the loss and learning rate every step, and per
    epoch the training and validation losses, per-head losses and validation metrics. Pass ``then``
    to keep the caller's own callback."""

    def __init__(self, folder: str | Path, then: Callable[[Any], None] | None = None, run_name: str | None = None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # the tensorboard package is a dependency; a broken install says so
            raise GraftError(f"TensorBoard logging needs the tensorboard package ({exc}).") from None
        folder = Path(folder).expanduser()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GraftError(f"Cannot write TensorBoard logs to {folder}: {exc.strerror or exc}.") from None
        name = run_name or time.strftime("run-%Y%m%d-%H%M%S")
        self.folder, n = folder / name, 1
        while self.folder.exists():  # two runs in the same second get folders of their own
            n += 1
            self.folder = folder / f"{name}-{n}"
        self.writer = SummaryWriter(str(self.folder))
        self.then = then

    def __call__(self, event: Any) -> None:
        name = type(event).__name__
        if name == "StepEvent":
            self.writer.add_scalar("loss/step", event.loss, event.step)
            self.writer.add_scalar("lr", event.lr, event.step)
            for head, value in event.head_losses.items():
                self.writer.add_scalar(f"loss_step/{head}", value, event.step)
        elif name == "EpochEvent":
            for key, value in (("loss/train", event.train_loss), ("loss/val", event.val_loss)):
                if value is not None:
                    self.writer.add_scalar(key, value, event.epoch)
            for split, losses in (("train", event.train_head_losses), ("val", event.val_head_losses)):
                for head, value in losses.items():
                    self.writer.add_scalar(f"{head}/loss_{split}", value, event.epoch)
            for head, summary in event.metrics.items():
                for key, value in summary.items():
                    if isinstance(value, (int, float)):
                        self.writer.add_scalar(f"{head}/{key}", value, event.epoch)
            self.writer.flush()
        elif name == "TrainFinished":
            self.close()
        if self.then is not None:
            self.then(event)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
