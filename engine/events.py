"""Plain events for the engine's state (and the window's Qt-free workspace): the pure side announces its
changes as ``connect(event, callback)`` callbacks, and the Qt side adapts them (napari's way), so nothing
here needs Qt's signals."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Events:
    """``connect(event, callback)`` / ``disconnect`` / ``_emit``; a subclass names its events in ``EVENTS``.
    Callbacks run in the order they were connected; one connected while an event is being sent gets the
    next one."""

    EVENTS: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._listeners: dict[str, list[Callable[..., Any]]] = {e: [] for e in self.EVENTS}

    def _of(self, event: str) -> list[Callable[..., Any]]:
        try:
            return self._listeners[event]
        except KeyError:
            raise ValueError(f"{type(self).__name__} has no event {event!r} "
                             f"(it has {', '.join(self.EVENTS)}).") from None

    def connect(self, event: str, callback: Callable[..., Any]) -> None:
        self._of(event).append(callback)

    def disconnect(self, event: str, callback: Callable[..., Any]) -> None:
        listeners = self._of(event)
        if callback in listeners:
            listeners.remove(callback)

    def _emit(self, event: str, *args: Any) -> None:
        for cb in list(self._of(event)):
            cb(*args)
