"""Training on all the GPUs of this machine from the window: the run goes in child processes.

:class:`DistributedTrainWorker` is a :class:`~app.workers.TrainWorker` whose run is the command line's
``train --devices N --events jsonl`` (:mod:`engine.training.launch`: torchrun's launcher, DDP, NCCL) on
the session saved to a temporary project. Process 0 writes every trainer event as a JSON line on its
stdout; this worker reads them in its thread, rebuilds the engine's event dataclasses and hands them
to TrainWorker's own batching, so the curves, the progress bar and the messages are those of a run in
the window. At the end the trained weights are read back from the project the child saved.

* Stop: the stop file (:data:`engine.training.launch.STOP_FILE_ENV`): every process stops after the
  same batch and process 0 saves the best weights, which come back as after an in-window Stop. A run
  that has not ended :attr:`KILL_AFTER` seconds after Stop is terminated (torch's agent then ends every
  process; the session keeps its weights).
* A process that dies: the launcher's one line (``graft: error: …``) is the message; the session's
  weights are left as they were (nothing is read back).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import Any

from engine.errors import GraftError

from .workers import TrainWorker


def event_from_json(line: str) -> Any | None:
    """A trainer event (or ``("TrainResult", dict)``) from one ``--events jsonl`` line; None for other lines."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    name = data.pop("event", None)
    if name == "TrainResult":
        return name, data
    from engine.training import events
    from engine.training.telemetry import TelemetryEvent

    kinds = {cls.__name__: cls for cls in (events.TrainStarted, events.StepEvent, events.EpochEvent,
                                           events.ProgressEvent, events.MessageEvent, events.TrainFinished,
                                           TelemetryEvent)}
    cls = kinds.get(name)
    if cls is None:
        return None
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


def command_line(config: Any, data: Any, project: Path, out: Path) -> list[str]:
    """The ``train`` arguments that run ``config`` on ``data`` from the saved ``project``."""
    where = getattr(data, "path", None) or getattr(data, "root", None)
    if where is None:
        raise GraftError("Training on several GPUs needs data loaded from a folder or CSV file.")
    augment = {True: "on", False: "off"}.get(config.augment, "auto")
    args = ["train", "--model", str(project), "--data", str(where), "--out", str(out),
            "--devices", str(int(config.devices)), "--device", "cuda", "--events", "jsonl",
            "--epochs", str(config.epochs), "--batch-size", str(config.batch_size),
            "--lr-heads", repr(float(config.lr_heads)), "--lr-trunk", repr(float(config.lr_trunk)),
            "--patience", str(config.patience or 0), "--augment", augment,
            "--seed", str(int(getattr(data, "seed", config.seed))),
            "--val-fraction", repr(float(getattr(data, "val_fraction", 0.2))),
            "--sync-batchnorm", {True: "on", False: "off"}.get(config.sync_batchnorm, "auto")]
    if config.num_workers is not None:
        args += ["--workers", str(config.num_workers)]
    if config.unfreeze_every:
        args += ["--unfreeze-every", str(config.unfreeze_every)]
    if getattr(config, "telemetry", False):
        args += ["--telemetry"]
    if getattr(config, "augment_views", 0):
        args += ["--augment-views", str(config.augment_views)]
    if getattr(config, "feature_ram_budget_mb", None):
        args += ["--feature-ram-mb", repr(float(config.feature_ram_budget_mb))]
    return args


class DistributedTrainWorker(TrainWorker):
    """TrainWorker's signals and batches, the run in ``config.devices`` child processes."""

    KILL_AFTER = 60.0  # seconds after Stop before the processes are terminated

    def __init__(self, session: Any, data: Any, config: Any, interval: float = 0.05,
                 tensorboard: str | None = None, extra_args: list[str] | None = None) -> None:
        """``extra_args``: appended to the command line (tests run ``--device cpu`` processes)."""
        super().__init__(session, data, config, interval=interval, tensorboard=tensorboard)
        package = __package__.rsplit(".", 1)[0] + "." if "." in __package__ else ""
        self.launcher = [sys.executable, "-m", f"{package}commands.cli"]
        self.extra_args = list(extra_args or [])
        self.root = Path(__file__).resolve().parents[1 + package.count(".")]
        self.process: subprocess.Popen | None = None
        self._stop_file: Path | None = None
        self.stderr_tail: deque[str] = deque(maxlen=40)

    def request_stop(self) -> None:
        super().request_stop()
        if self._stop_file is not None:
            self._stop_file.touch()
            timer = threading.Timer(self.KILL_AFTER, self.kill)
            timer.daemon = True
            timer.start()

    def kill(self) -> None:
        """End every process now (SIGTERM to the launcher; torch's agent ends the others)."""
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()

    def _train(self) -> Any:
        from engine.project.project_file import open_project, save_project

        with tempfile.TemporaryDirectory(prefix="graft-gpus-") as tmp:
            folder = Path(tmp)
            project, out = folder / "session.graft", folder / "trained.graft"
            save_project(self.session, project)
            self._stop_file = folder / "stop"
            args = self.launcher + command_line(self.config, self.data, project, out) + self.extra_args
            env = {**os.environ, "GRAFT_STOP_FILE": str(self._stop_file),
                   "PYTHONPATH": os.pathsep.join(p for p in (str(self.root), os.environ.get("PYTHONPATH", "")) if p)}
            if self.stop_requested:
                self._stop_file.touch()
            result = self._follow(args, env)
            if result is None or not out.is_file():
                raise GraftError("The training processes ended without a result; the weights are as they were.")
            trained = open_project(out)
            self._take_weights(trained)
        result.pop("saved", None)
        return result

    def _follow(self, args: list[str], env: dict[str, str]) -> dict[str, Any] | None:
        """Run the child, turning its JSON lines into events; the TrainResult's fields at the end."""
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                        cwd=str(self.root), bufsize=1)
        reader = threading.Thread(target=self._read_stderr, daemon=True)
        reader.start()
        result = None
        try:
            for line in self.process.stdout:
                event = event_from_json(line)
                if isinstance(event, tuple):
                    result = event[1]
                elif event is not None:
                    self._on_event(event)
        finally:
            code = self.process.wait()
            reader.join(timeout=5)
            self._flush()
        if code != 0:
            errors = [line for line in self.stderr_tail if line.startswith("graft: error: ")]
            if errors:
                raise GraftError(errors[-1][len("graft: error: "):] + " The session's weights are as they were.")
            if self.stop_requested:
                raise GraftError("Training was ended before it could save; the session's weights are as they were.")
            raise GraftError(f"The training processes ended with exit code {code}"
                             + (f": {self.stderr_tail[-1]}" if self.stderr_tail else "")
                             + "; the session's weights are as they were.")
        return result

    def _read_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr_tail.append(line.rstrip("\n"))

    def _take_weights(self, trained: Any) -> None:
        """The trained weights (and regression heads' target statistics) into the window's session."""
        import torch

        model = self.session.model
        state = trained.model.state_dict()
        with torch.no_grad():
            for key, value in model.state_dict().items():
                if key in state and state[key].shape == value.shape:
                    value.copy_(state[key])
        specs = {h.name: h for h in trained.heads}
        for head in self.session.heads:
            other = specs.get(head.name)
            if other is not None and head.kind == "regression" and other.has_target_stats:
                head.set_target_stats(list(other.target_mean), list(other.target_std))
