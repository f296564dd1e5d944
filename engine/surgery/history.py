"""Engine-side undo/redo over a session's operations (the GUI uses QUndoStack the same way)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from engine.errors import GraftError
from engine.surgery.operations import Operation


class Applies(Protocol):
    """What a history drives: anything that applies and reverts operations (a session)."""

    def apply(self, op: Operation) -> None: ...

    def revert(self, op: Operation) -> None: ...


class History:
    def __init__(self, session: Applies) -> None:
        self.session = session
        self.done: list[Operation] = []
        self.undone: list[Operation] = []
        self.on_change: list[Callable[[], None]] = []

    def do(self, op: Operation) -> Operation:
        self.session.apply(op)
        self.done.append(op)
        self.undone.clear()
        self._changed()
        return op

    def undo(self) -> Operation:
        if not self.done:
            raise GraftError("Nothing to undo.")
        op = self.done.pop()
        self.session.revert(op)
        self.undone.append(op)
        self._changed()
        return op

    def redo(self) -> Operation:
        if not self.undone:
            raise GraftError("Nothing to redo.")
        op = self.undone[-1]
        self.session.apply(op)  # a GraftError leaves it to redo
        self.undone.pop()
        self.done.append(op)
        self._changed()
        return op

    def reset(self, done: list[Operation] | None = None) -> None:
        """Start over with ``done`` (already applied, the latest last) as what can be undone; a reopened
        project passes the replayed operations that can be undone faithfully."""
        applied = self.session.applied
        done = list(done or [])
        if done and applied[len(applied) - len(done):] != done:
            raise ValueError("the undoable operations must be the latest applied ones, in order")
        self.done, self.undone = done, []
        self._changed()

    @property
    def can_undo(self) -> bool:
        return bool(self.done)

    @property
    def can_redo(self) -> bool:
        return bool(self.undone)

    def _changed(self) -> None:
        for cb in list(self.on_change):
            cb()
