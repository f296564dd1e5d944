"""Surgery on the QUndoStack: one QUndoCommand per engine operation.

The window validates by applying first (``session.apply`` raises GraftError and leaves the model as it
was), then pushes the already-applied command: its first ``redo()`` — the one QUndoStack.push makes —
does nothing. Later redos apply again and undos revert, in stack order, as the engine requires.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from PySide6.QtGui import QUndoCommand, QUndoStack

from engine.errors import GraftError

log = logging.getLogger(__name__)


class OperationCommand(QUndoCommand):
    """Wraps one engine operation. ``applied``: the operation has already been applied (apply-then-push)."""

    def __init__(self, session: Any, op: Any, applied: bool = True,
                 on_error: Callable[[str], Any] | None = None) -> None:
        super().__init__(op.text)
        self.session, self.op = session, op
        self._skip_redo = applied
        self._on_error = on_error

    def redo(self) -> None:
        if self._skip_redo:
            self._skip_redo = False
            return
        try:
            self.session.apply(self.op)
        except GraftError as exc:  # the state differs from when it was done (should not happen)
            self._failed(f"Could not redo {self.op.text}: {exc}")
        self.setText(self.op.text)

    def undo(self) -> None:
        try:
            self.session.revert(self.op)
        except (GraftError, RuntimeError) as exc:
            self._failed(f"Could not undo {self.op.text}: {exc}")

    def _failed(self, message: str) -> None:
        log.error(message)
        if self._on_error is not None:
            self._on_error(message)


def push_operation(stack: QUndoStack, session: Any, op: Any,
                   on_error: Callable[[str], Any] | None = None) -> OperationCommand:
    """Apply ``op`` (GraftError propagates, nothing changed) and push it as an undoable command."""
    session.apply(op)
    command = OperationCommand(session, op, applied=True, on_error=on_error)
    stack.push(command)
    return command
