"""``main.py train --budget 10m``: the best model in the time given (:mod:`engine.training.budget_run`).

Shows the plan before it runs (stages, estimated times, what is frozen, the rates), prints each stage's epochs
and what it bought, and saves the project with the plan and the stages in its run record. The time counts from
the start of the command (loading the model and the data included). A budget too short for even the first
stage: exit 1 with one line, before anything trains.
"""
from __future__ import annotations

import argparse
import sys
import time

FIXED = {"epochs": "--epochs", "patience": "--patience", "unfreeze_every": "--unfreeze-every",
         "augment_views": "--augment-views", "pause_after": "--pause-after", "resume": "--resume",
         "freeze": "--freeze", "lr_heads": "--lr-heads", "lr_trunk": "--lr-trunk", "discriminative": "--discriminative"}


def check_arguments(args: argparse.Namespace) -> None:
    """The plan chooses the epochs, freezing and rates: those options are refused with --budget."""
    from engine.errors import GraftError

    for name, option in FIXED.items():
        if getattr(args, name, None) not in (None, [], False):
            raise GraftError(f"--budget plans {option.lstrip('-').replace('-', ' ')} itself: leave out {option}.")
    if (args.devices or 1) > 1:
        raise GraftError("--budget trains in one process: leave out --devices.")
    if not args.data:
        raise GraftError("Name the training data with --data.")


class StagePrinter:
    """The trainer's lines (through ``inner``) plus the plan and one line per stage, before and after."""

    def __init__(self, inner, out=None, heads=()) -> None:
        self.inner, self.out, self.heads = inner, out or sys.stdout, list(heads)

    def __call__(self, event) -> None:
        from engine.training import budget_run as b
        from engine.training.budget import clock_text

        if isinstance(event, b.PlanReady):
            return  # printed before the run starts
        if isinstance(event, b.StageStarted):
            s = event.stage
            what = (f"{s.epochs} epochs, {s.views} view{'s' if s.views != 1 else ''}, rates {s.rates()}"
                    if s.kind != "finder" else "a sweep of the heads' rate")
            self.inner.line(f"-- Stage {event.index}/{event.total}: {s.title} ({s.trains}; frozen: {s.frozen}); {what}; "
                            f"estimated {clock_text(s.estimate)}, deadline in {clock_text(event.deadline_seconds)}")
            return
        if isinstance(event, b.StageFinished):
            r = event.result
            if r.kind == "finder" or r.reason == "skipped":
                return
            val = (f"best validation {b.validated_text(self.heads, r.metrics, r.val_loss)} (epoch {r.best_epoch})"
                   if r.val_loss is not None else "no validation")
            self.inner.line(f"-- Stage {r.index} ({r.title}): {clock_text(r.seconds)} (estimated "
                            f"{clock_text(r.estimate)}), {r.epochs_run}/{r.epochs} epochs, {val}"
                            + ("; kept" if r.kept else "") + (f"; {r.note}" if r.note else ""))
            return
        if isinstance(event, b.BudgetFinished):
            return
        self.inner(event)


def run_budget(args: argparse.Namespace, started: float) -> int:
    from engine.project.project_file import save_project
    from engine.training.budget import parse_budget
    from engine.training.budget_run import BudgetTrainer
    from engine.training.config import TrainConfig
    from engine.training.record import TrainingRecord
    from engine.training.runs import stage_table

    from .common import data_path
    from .train import DEFAULT_OUT, _ctrl_c_stops, _out_path, _Printer, prepare_session, setting

    check_arguments(args)
    budget = parse_budget(args.budget)
    data_file = data_path(args.data)
    out = _out_path(args.out or DEFAULT_OUT)
    base = TrainConfig(batch_size=setting(args, "batch_size"), device=args.device, num_workers=args.workers,
                       seed=args.seed, feature_ram_budget_mb=args.feature_ram_mb)
    base.validate()
    session, data = prepare_session(args, data_file)
    printer = StagePrinter(_Printer(session.heads), heads=session.heads)
    runner = BudgetTrainer(session, data, budget, base=base, refit=args.refit, on_event=printer, started=started)
    print(f"Measuring this device's speed for the plan ({len(data.train)} training images) …", flush=True)
    plan = runner.plan()  # BudgetTooSmall (a GraftError): one line, exit 1, nothing trained
    print(plan.describe(), flush=True)
    with _ctrl_c_stops(runner):  # Ctrl-C: the best stage so far is saved; twice: abort
        result = runner.run()
    print(result.message)
    record = TrainingRecord.begin(data, base, data_file)
    record.started = time.time() - (time.monotonic() - started)
    record.config = {**record.config, "budget": budget, "refit": bool(args.refit)}
    record.finish(result.record_fields())
    print(stage_table(record).text())
    extra = record.store(session.project_extra)
    saved = save_project(session, out, extra=extra)
    total = time.monotonic() - started
    print(f"Saved the trained model to {saved.resolve()} ({total:.0f} s of the {budget:.0f} s budget)")
    return 0
