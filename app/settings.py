"""What Graft remembers between runs (QSettings): window geometry and state, splitter sizes, recent
files and the last folders used. The organisation and application names are set in
:func:`app.application.configure_app`; tests point QSettings at a temporary folder."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PySide6.QtCore import QByteArray, QSettings

MAX_RECENT = 8
ORGANIZATION = "Graft"
APPLICATION = "Graft"


class Settings:
    def __init__(self, settings: QSettings | None = None) -> None:
        self.q = settings if settings is not None else QSettings()
        self._recent_listeners: list[Callable[[], Any]] = []

    def on_recent_changed(self, callback: Callable[[], Any]) -> None:
        """``callback()`` whenever this object changes the recent files (the File menu lists them)."""
        self._recent_listeners.append(callback)

    def _recent_changed(self) -> None:
        for cb in list(self._recent_listeners):
            cb()

    # -- recent files ---------------------------------------------------------------------------
    def recent_files(self) -> list[dict[str, str]]:
        """Most recent first: ``{"path", "kind"}`` with kind "model", "project" or "data"."""
        raw = self.q.value("recent/files", [])
        if isinstance(raw, str):
            raw = [raw]
        out: list[dict[str, str]] = []
        for item in raw or []:
            kind, _, path = str(item).partition("|")
            if path and kind in ("model", "project", "data"):
                out.append({"kind": kind, "path": path})
        return out

    def add_recent(self, path: str | os.PathLike, kind: str) -> list[dict[str, str]]:
        path = str(Path(path).expanduser().resolve()) if str(path) not in ("", "default") else str(path)
        items = [r for r in self.recent_files() if not (r["path"] == path and r["kind"] == kind)]
        items.insert(0, {"kind": kind, "path": path})
        items = items[:MAX_RECENT]
        self.q.setValue("recent/files", [f"{r['kind']}|{r['path']}" for r in items])
        self._recent_changed()
        return items

    def remove_recent(self, path: str) -> None:
        items = [r for r in self.recent_files() if r["path"] != path]
        self.q.setValue("recent/files", [f"{r['kind']}|{r['path']}" for r in items])
        self._recent_changed()

    def clear_recent(self) -> None:
        self.q.setValue("recent/files", [])
        self._recent_changed()

    # -- folders --------------------------------------------------------------------------------
    def last_dir(self, what: str) -> str:
        value = str(self.q.value(f"dirs/{what}", "") or "")
        return value if value and Path(value).is_dir() else str(Path.home())

    def set_last_dir(self, what: str, path: str | os.PathLike) -> None:
        p = Path(path)
        self.q.setValue(f"dirs/{what}", str(p if p.is_dir() else p.parent))

    # -- window ---------------------------------------------------------------------------------
    def window_state(self) -> tuple[QByteArray | None, QByteArray | None, list[int] | None]:
        geometry = self.q.value("window/geometry")
        state = self.q.value("window/state")
        sizes = self.q.value("window/splitter")
        try:
            sizes = [int(s) for s in sizes] if sizes else None
        except (TypeError, ValueError):
            sizes = None
        return (geometry if isinstance(geometry, QByteArray) else None,
                state if isinstance(state, QByteArray) else None, sizes)

    def save_window_state(self, geometry: QByteArray, state: QByteArray, splitter: list[int]) -> None:
        self.q.setValue("window/geometry", geometry)
        self.q.setValue("window/state", state)
        self.q.setValue("window/splitter", [int(s) for s in splitter])

    def tensorboard_dir(self) -> str:
        """The folder runs are also logged to as TensorBoard event files ("" when off)."""
        return str(self.q.value("training/tensorboard", "") or "")

    def set_tensorboard_dir(self, path: str | os.PathLike | None) -> None:
        self.q.setValue("training/tensorboard", str(path) if path else "")

    def value(self, key: str, default=None):
        return self.q.value(key, default)

    def set_value(self, key: str, value) -> None:
        self.q.setValue(key, value)

    def sync(self) -> None:
        self.q.sync()
