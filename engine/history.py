"""Engine-side undo/redo over a session's operations (the GUI uses QUndoStack the same way)."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import GraftError
from .operations import Operation

if TYPE_CHECKING:
    from .session import Session


class History:
    def __init__(self, session: "Session") -> None:
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
        op = self.undone.pop()
        self.session.apply(op)
        self.done.append(op)
        self._changed()
        return op

    @property
    def can_undo(self) -> bool:
        return bool(self.done)

    @property
    def can_redo(self) -> bool:
        return bool(self.undone)

    def _changed(self) -> None:
        for cb in list(self.on_change):
            cb()
