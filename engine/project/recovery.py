"""Recovery files: the window's unsaved work, written now and then to Graft's cache folder, so that a crash,
a logout that kills the process or a power cut loses at most the last few minutes of it.

A recovery file is a ``.graft`` project (recipe and weights, :mod:`engine.project.project_file`) with one more
member, ``recovery.json``: when it was written, by which process, the project and data that were open and
what was going on (``note``). Opening it as a project gives the work back. :class:`RecoveryWriter` writes
it on a thread of its own, through :func:`engine.files.atomic_write` (the file on disk is always a whole
one, the previous or the new), so the caller, the window's GUI thread, only hands over references: the
copy of the weights and the writing happen on the writer's thread. During training the trainer's thread
hands over the best weights so far (:meth:`RecoveryWriter.update`), copies it made itself.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from engine.errors import GraftError
from engine.files import cache_dir

RECOVERY_JSON = "recovery.json"
FORMAT = 1
PREFIX, SUFFIX = "recovery-", ".graft"


def recovery_folder() -> Path:
    """Where recovery files live: ``recovery`` in Graft's cache folder (:func:`engine.files.cache_dir`)."""
    return cache_dir() / "recovery"


def recovery_files(folder: str | os.PathLike | None = None) -> list[Path]:
    """The recovery files in ``folder`` (default :func:`recovery_folder`), newest first."""
    folder = Path(folder) if folder is not None else recovery_folder()
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(PREFIX) and p.name.endswith(SUFFIX) and p.is_file()]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


@dataclass
class RecoveryState:
    """What one recovery file holds: the project's recipe (:func:`engine.project.project_file.project_recipe`)
    and the model's weights (model-level keys; references are fine, they are copied when written; None:
    not known yet, nothing is written), with what the window had open."""

    recipe: dict[str, Any]
    weights: Mapping[str, torch.Tensor] | None
    project: str | None = None
    data: str | None = None
    model: str = ""
    note: str = ""
    steps: list[tuple[str, int]] | None = None  # the undo history's steps: (text, operations), in order


def capture(session: Any, extra: Mapping[str, Any] | None = None, project: str | None = None,
            data: str | None = None, note: str = "", steps: list[tuple[str, int]] | None = None) -> RecoveryState:
    """The session's work now, cheaply (for the GUI thread): its recipe as plain data and references to its
    weights, not copies. Call it while nothing trains the model (its weights then change only by surgery,
    which replaces tensors rather than writing into them). ``steps``: how the window's undo history groups
    the latest operations (one step can hold several), so that restored work shows the same history."""
    from engine.project.project_file import project_recipe

    weights = {k: v.detach() for k, v in session.model.state_dict().items()}
    return RecoveryState(project_recipe(session, dict(extra or {})), weights, project, data, session.describe(), note,
                         list(steps) if steps is not None else None)


def write_recovery(path: str | os.PathLike, state: RecoveryState) -> Path:
    """Write ``state`` to ``path`` (atomically); GraftError when the disk refuses (full, read-only)."""
    from engine.project.project_file import write_project

    if state.weights is None:
        raise GraftError("The work's weights are not known yet: nothing to recover from.")
    from engine.project.streamed_tensors import streamable

    weights = {k: v.detach().cpu() for k, v in state.weights.items()}  # copied once, as they are written
    if not streamable(weights):  # safetensors' own writer wants independent tensors
        weights = {k: v.contiguous().clone() for k, v in weights.items()}
    meta = {"format": FORMAT, "saved_at": time.time(), "pid": os.getpid(), "project": state.project,
            "data": state.data, "model": state.model, "note": state.note,
            "steps": [[text, count] for text, count in state.steps or []]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_project(path, state.recipe, weights, members={RECOVERY_JSON: json.dumps(meta)}, streamed=True)


@dataclass
class RecoveryInfo:
    """What a recovery file says about itself (:func:`read_recovery`)."""

    path: Path
    saved_at: float  # time.time() when it was written
    pid: int
    project: str | None
    data: str | None
    model: str
    note: str
    steps: list[tuple[str, int]] = field(default_factory=list)  # the undo history's (text, operations)

    def clock(self, now: float | None = None) -> str:
        """When it was written, as a person says it: ``10:42`` today, else ``Mon 7 Dec, 10:42``."""
        then, today = time.localtime(self.saved_at), time.localtime(time.time() if now is None else now)
        hm = time.strftime("%H:%M", then)
        if then[:3] == today[:3]:
            return hm
        return f"{time.strftime('%a', then)} {then.tm_mday} {time.strftime('%b', then)}, {hm}"

    def question(self, now: float | None = None) -> str:
        return f"Recover the work from {self.clock(now)}?"

    def details(self) -> str:
        """What the work was, in a sentence or two."""
        what = Path(self.project).name if self.project else f"{self.model or 'a model'} (never saved)"
        text = f"Graft ended without saving {what}."
        if self.note:
            text += f" The last copy kept: {self.note}."
        if self.data:
            text += f" Data: {self.data}."
        return text


def read_recovery(path: str | os.PathLike) -> RecoveryInfo:
    """The ``recovery.json`` of a recovery file; GraftError when it is not one (or is damaged)."""
    path = Path(path)
    from engine.project.archive import open_zip, read_json

    try:
        with open_zip(path, "Graft recovery file") as zf:
            meta = read_json(zf, RECOVERY_JSON, path)
            names = set(zf.namelist())
    except KeyError:
        raise GraftError(f"{path.name} is not a Graft recovery file (it holds no {RECOVERY_JSON}).") from None
    if not isinstance(meta, dict) or not {"recipe.json", "weights.safetensors"} <= names:
        raise GraftError(f"{path.name} is not a Graft recovery file (parts are missing).")
    if isinstance(meta.get("format"), int) and meta["format"] > FORMAT:
        raise GraftError(f"{path.name} was written by a newer Graft.")

    def text(key: str) -> str | None:
        value = meta.get(key)
        return value if isinstance(value, str) and value else None

    saved = meta.get("saved_at")
    saved = float(saved) if isinstance(saved, (int, float)) and not isinstance(saved, bool) else path.stat().st_mtime
    pid = meta.get("pid") if isinstance(meta.get("pid"), int) else 0
    steps = meta.get("steps")
    steps = [(s[0], s[1]) for s in steps if isinstance(s, list) and len(s) == 2 and isinstance(s[0], str)
             and isinstance(s[1], int) and not isinstance(s[1], bool) and s[1] >= 1] \
        if isinstance(steps, list) else []
    return RecoveryInfo(path, saved, pid, text("project"), text("data"), text("model") or "", text("note") or "",
                        steps)


class RecoveryWriter:
    """Writes the latest :class:`RecoveryState` to ``path`` on its own thread. :meth:`submit` and
    :meth:`update` never wait for the disk: the newest state wins, states handed over while a write runs
    are written once after it. ``on_written(path)`` / ``on_failed(message)`` are called on the writer's
    thread."""

    def __init__(self, path: str | os.PathLike, on_written: Callable[[Path], Any] | None = None,
                 on_failed: Callable[[str], Any] | None = None) -> None:
        self.path = Path(path)
        self.on_written, self.on_failed = on_written, on_failed
        self.state: RecoveryState | None = None
        self.writes = 0
        self.last_error: str | None = None
        self.seconds: list[float] = []  # how long each write took (its thread's time, not the caller's)
        self._cond = threading.Condition()
        self._pending = self._busy = self._closed = False
        self._thread = threading.Thread(target=self._loop, name="graft-recovery", daemon=True)
        self._thread.start()

    # -- handing over ------------------------------------------------------------------------------
    def submit(self, state: RecoveryState, write: bool = True) -> None:
        """Make ``state`` the work to keep; ``write``: write it now (else with the next write)."""
        with self._cond:
            self.state = state
            if write and state.weights is not None and not self._closed:
                self._pending = True
                self._cond.notify_all()

    def update(self, weights: Mapping[str, torch.Tensor] | None = None, note: str | None = None,
               write: bool = True) -> None:
        """Change the kept work: ``weights`` replace those of the same names (a trainer's best weights: all
        of them, or the heads' alone when only they train); ``note`` says what is going on. Thread-safe."""
        with self._cond:
            if self.state is None:
                return
            merged = self.state.weights if weights is None else (
                {**self.state.weights, **weights} if self.state.weights is not None else dict(weights))
            self.state = replace(self.state, weights=merged, note=self.state.note if note is None else note)
        if write:
            self.submit(self.state)

    # -- waiting and ending ------------------------------------------------------------------------
    @property
    def idle(self) -> bool:
        with self._cond:
            return not (self._pending or self._busy)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until what was handed over is written (True), or ``timeout`` seconds have passed."""
        with self._cond:
            return self._cond.wait_for(lambda: not (self._pending or self._busy), timeout)

    def discard(self, timeout: float | None = 30.0) -> None:
        """Remove the file (a clean close, a save, the user said discard): a write not begun is dropped,
        one under way is waited for and then removed too. Later states are written again."""
        with self._cond:
            self._pending = False
            self._cond.wait_for(lambda: not self._busy, timeout)
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass

    def close(self, remove: bool = True, timeout: float | None = 30.0) -> None:
        """End the thread (after a write under way); ``remove``: the file goes too, else what is pending is
        written first."""
        if remove:
            self.discard(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)

    # -- the thread --------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._closed)
                if not self._pending:
                    return
                state, self._pending, self._busy = self.state, False, True
            start = time.perf_counter()
            try:
                write_recovery(self.path, state)
            except Exception as exc:  # noqa: BLE001 - a recovery copy that fails must not end the thread
                self.last_error = str(exc) if isinstance(exc, GraftError) else f"{exc.__class__.__name__}: {exc}"
                if self.on_failed is not None:
                    self.on_failed(self.last_error)
            else:
                self.writes += 1
                self.last_error = None
                self.seconds.append(time.perf_counter() - start)
                if self.on_written is not None:
                    self.on_written(self.path)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()
