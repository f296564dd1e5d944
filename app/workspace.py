"""What the window has open — a session, its data, the project file — and plain events that tell the
window's concerns (:mod:`app.files`, :mod:`app.data`, :mod:`app.surgery`, …) when it changes, so that
none of them reaches into another's widgets. Qt-free (an import contract keeps it so), with the engine's
events (:class:`engine.events.Events`, as :class:`engine.surgery.session.Session`'s)."""
from __future__ import annotations

from typing import Any

from engine.events import Events


class Workspace(Events):
    """The open session, data and project path, and a paused training run (``paused_run``: the
    :class:`~engine.training.checkpoint.TrainCheckpoint` a save keeps in the project, to resume later).

    Events (plain callbacks, see :meth:`connect`), in the order they were connected:

    * ``session(session)`` — another session (a network loaded or a project opened) replaced the last;
    * ``session_changed(op)`` — the open session's own ``changed`` event (an operation applied or
      reverted), so listeners need not reconnect to each new session;
    * ``data(source)`` — data has loaded;
    * ``modified()`` — the project path or the trained-weights flag changed (unsaved work or not);
    * ``closing(bool)`` — the window has begun closing (True), or the close was cancelled (False);
    * ``closed()`` — the window has closed: let go of the session and its views (once).
    """

    EVENTS = ("session", "session_changed", "data", "modified", "closing", "closed")

    def __init__(self) -> None:
        super().__init__()
        self.session: Any = None
        self.data: Any = None
        self.data_path: str | None = None
        self.project_path: str | None = None
        self.paused_run: Any = None
        self.history_steps: list[tuple[str, int]] | None = None  # restored work's undo steps, as grouped there
        self._weights_changed = False  # training changes weights outside the undo stack
        self._closing = False
        self._closed = False

    def _forward(self, op: Any) -> None:
        self._emit("session_changed", op)

    # -- state ----------------------------------------------------------------------------------
    def set_session(self, session: Any, project_path: str | None = None, paused_run: Any = None,
                    steps: list[tuple[str, int]] | None = None) -> None:
        """Open ``session`` (from ``project_path``, or a fresh network when None): nothing is unsaved.
        ``paused_run``: the paused training run the project keeps, if any. ``steps``: how the window that
        made restored work grouped its history, ``(text, operations)`` per undo step (a macro is one)."""
        if self.session is not None:
            self.session.disconnect("changed", self._forward)
        self.session = session
        self.project_path = project_path
        self.paused_run = paused_run
        self.history_steps = steps
        self._weights_changed = False
        session.connect("changed", self._forward)
        self._emit("session", session)

    def set_data(self, source: Any, path: str) -> None:
        self.data = source
        self.data_path = path
        self._emit("data", source)

    def saved(self, path: str, clean: bool) -> None:
        """The project was saved to ``path``; ``clean``: nothing changed since the save began."""
        self.project_path = path
        if clean:
            self._weights_changed = False
        self._emit("modified")

    @property
    def weights_changed(self) -> bool:
        return self._weights_changed

    @weights_changed.setter
    def weights_changed(self, value: bool) -> None:
        self._weights_changed = bool(value)
        self._emit("modified")

    @property
    def closing(self) -> bool:
        return self._closing

    @closing.setter
    def closing(self, value: bool) -> None:
        if bool(value) != self._closing:
            self._closing = bool(value)
            self._emit("closing", self._closing)

    def close(self) -> None:
        """The window has closed: stop following the session and tell the concerns, once."""
        if not self._closed:
            self._closed = True
            if self.session is not None:
                self.session.disconnect("changed", self._forward)
            self._emit("closed")
