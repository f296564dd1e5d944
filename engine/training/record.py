"""What a training run records: the data and its split, the settings, and the outcome.

The window and ``main.py train`` build the same :class:`TrainingRecord`, and the project saves it in its
``extra`` under ``"training"`` (the latest run), which evaluation and export read back to find the training
data and its validation split. Later runs keep the earlier ones: :meth:`TrainingRecord.store` appends to
``extra["runs"]`` too. A time-budgeted run also keeps its plan and one entry per stage (``stages``: time,
estimate, epochs, best validation loss and metrics, whether it was kept).
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_SEED = 0
DEFAULT_VAL_FRACTION = 0.2
OUTCOME = ("reason", "best_epoch", "best_val_loss", "epochs_run", "history", "seconds", "device", "plan", "stages")


@dataclass
class TrainingRecord:
    data: str | None  # the image folder or CSV manifest, resolved
    seed: int = DEFAULT_SEED
    val_fraction: float = DEFAULT_VAL_FRACTION
    split: str | None = None  # how the validation split was made: "seed", "column" or "folders"
    n_train: int = 0
    n_val: int = 0
    config: dict[str, Any] = field(default_factory=dict)  # the TrainConfig's fields
    started: float = 0.0  # time.time() when the run started
    # the outcome, once the run has ended
    reason: str | None = None
    best_epoch: int | None = None
    best_val_loss: float | None = None
    epochs_run: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float | None = None
    device: str | None = None
    # a time-budgeted run (engine.training.budget_run): its plan and what each stage did (StageResult fields)
    plan: dict[str, Any] | None = None
    stages: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def begin(cls, data: Any, config: Any, data_path: str | Path | None = None) -> "TrainingRecord":
        """The record of a run about to start on ``data`` (a DataSource) with ``config`` (a TrainConfig)."""
        where = data_path or getattr(data, "path", None) or getattr(data, "root", None)
        return cls(data=str(Path(where).resolve()) if where else None, seed=int(data.seed),
                   val_fraction=float(data.val_fraction), split=data.split_from, n_train=len(data.train),
                   n_val=len(data.val), config=dict(vars(config)), started=time.time())

    def finish(self, result: Any) -> "TrainingRecord":
        """Take the outcome from a TrainResult (or its dict, as a worker hands it back)."""
        get = result.get if isinstance(result, Mapping) else (lambda k, d=None: getattr(result, k, d))
        for key in OUTCOME:
            value = get(key, None)
            if value is not None:
                setattr(self, key, value)
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, info: Mapping[str, Any]) -> "TrainingRecord":
        """A record read from a project; values of the wrong type fall back to the defaults."""
        known = {k: info[k] for k in cls.__dataclass_fields__ if k in info}
        record = cls(data=None)
        for key, value in known.items():
            setattr(record, key, value)
        record.data = record.data if isinstance(record.data, str) and record.data else None
        if not isinstance(record.config, dict):
            record.config = {}
        if not isinstance(record.plan, dict):
            record.plan = None
        record.stages = ([st for st in record.stages if isinstance(st, dict)] if isinstance(record.stages, list)
                         else [])
        if not isinstance(record.seed, int) or isinstance(record.seed, bool):
            seed = record.config.get("seed", DEFAULT_SEED)
            record.seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else DEFAULT_SEED
        fraction = record.val_fraction
        if not isinstance(fraction, (int, float)) or isinstance(fraction, bool) or math.isnan(fraction) \
                or not 0.0 < fraction < 1.0:
            record.val_fraction = DEFAULT_VAL_FRACTION
        return record

    @classmethod
    def latest(cls, extra: Mapping[str, Any] | None) -> "TrainingRecord | None":
        """The last run a project records, or None. Projects saved from the window before runs were
        recorded carry only ``{"data": path}``: that reads as a record with the data alone."""
        extra = extra if isinstance(extra, Mapping) else {}
        info = extra.get("training")
        info = info if isinstance(info, Mapping) else {}
        record = cls.from_dict(info) if info else None
        if (record is None or record.data is None) and isinstance(extra.get("data"), str) and extra["data"]:
            record = record or cls(data=None)
            record.data = extra["data"]
        return record

    def store(self, extra: Mapping[str, Any] | None, replace_latest: bool = False) -> dict[str, Any]:
        """``extra`` with this record as the latest run, added to the project's list of runs.
        ``replace_latest``: this run continues the latest one (a paused run resumed), which it replaces."""
        out = dict(extra or {})
        entry = self.to_dict()
        out["training"] = entry
        runs = [r for r in out.get("runs", []) if isinstance(r, Mapping)] if isinstance(out.get("runs"), list) else []
        if replace_latest and runs:
            runs = runs[:-1]
        out["runs"] = [*runs, entry]
        return out
