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


def push_history(stack: QUndoStack, session: Any, steps: list[tuple[str, int]] | None = None,
                 on_error: Callable[[str], Any] | None = None) -> None:
    """Push the operations ``session.history`` can undo (already applied: a reopened project's, restored
    work's) as the stack's commands. ``steps``: how the stack had grouped them, ``(text, operations)`` per
    command in order (a macro such as "Set up the demo task" holds several); it matches the latest
    operations, so where the engine's history reaches back less far the earlier steps are left out, and
    operations it does not cover are pushed one command each."""
    ops = list(session.history.done)
    groups: list[tuple[str | None, list[Any]]] = []
    rest = len(ops)
    for text, count in reversed(steps or []):
        if count < 1 or count > rest or (count == 1 and ops[rest - 1].text != text):
            break
        groups.append((text if count > 1 else None, ops[rest - count:rest]))
        rest -= count
    groups.extend((None, [op]) for op in reversed(ops[:rest]))
    for text, group in reversed(groups):
        if text is not None:
            stack.beginMacro(text)
        for op in group:
            stack.push(OperationCommand(session, op, applied=True, on_error=on_error))
        if text is not None:
            stack.endMacro()


def history_steps(stack: QUndoStack) -> list[tuple[str, int]]:
    """The commands up to the stack's index as :func:`push_history` takes them: (text, operations)."""
    return [(stack.text(i), max(1, stack.command(i).childCount())) for i in range(stack.index())]


def push_operation(stack: QUndoStack, session: Any, op: Any,
                   on_error: Callable[[str], Any] | None = None) -> OperationCommand:
    """Apply ``op`` (GraftError propagates, nothing changed) and push it as an undoable command."""
    session.apply(op)
    command = OperationCommand(session, op, applied=True, on_error=on_error)
    stack.push(command)
    return command
