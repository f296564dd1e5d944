"""Writing files safely: fail before any work when a target cannot be written, and replace a file only
once its new content is complete (a temporary file and a rename), so nothing half-written is left."""
from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from engine.errors import GraftError
from engine.units import human_bytes


def check_target(path: str | Path) -> Path:
    """Fail fast (before any work) when ``path`` cannot be written: its folder is missing, is a file or
    takes no new files (read-only, no permission), or ``path`` is a folder or a device, pipe or socket
    (written through a temporary file and a rename, it would be replaced, not written to)."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise GraftError(f"Cannot write {path}: folder {folder} does not exist.")
    if path.is_dir():
        raise GraftError(f"Cannot write {path}: it is a folder.")
    if path.exists() and not path.is_file():
        raise GraftError(f"Cannot write {path}: it is not a regular file.")
    try:  # the file goes through a temporary one in the same folder: that must be possible
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise refusal(exc, folder, into=True) from None
    os.close(fd)
    os.unlink(probe)
    return path


def _read_umask() -> int:
    umask = os.umask(0o022)  # reading it means setting it: done once, at import, before any worker thread
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _file_mode(path: Path) -> int:
    """The permissions a plain ``open(path, "w")`` would give: the replaced file's, else 0666 less the umask."""
    try:
        return path.stat().st_mode & 0o777
    except OSError:
        return 0o666 & ~_UMASK


def _fsync(path: str | Path, folder: bool = False) -> None:
    """Ask the system to put ``path`` on the disk now: a rename that reaches the disk before the file's
    content would, after a power cut, leave an empty or partial file under the final name."""
    if folder and sys.platform == "win32":  # a folder cannot be opened for fsync there; NTFS journals renames
        return
    fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if folder else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_FULL = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT") if hasattr(errno, n))


def refusal(exc: OSError, path: Path, into: bool = False) -> GraftError:
    """The message for the system refusing to write ``path`` (``into``: a file into the folder ``path``);
    a full disk (or quota) says so and names the disk, since that is what the user has to act on."""
    folder = path if into else (path.parent if str(path.parent) else Path("."))
    if exc.errno in _FULL:
        try:
            free = human_bytes(shutil.disk_usage(folder).free)
        except OSError:
            free = "too little"
        return GraftError(f"Cannot write {path}: the disk holding {folder.resolve()} is full ({free} free; "
                          f"{exc.strerror or 'No space left on device'}). The previous file, if any, is unchanged.")
    return GraftError(f"Cannot write {'to ' if into else ''}{path}: {exc.strerror or exc}.")


def atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, then fsync it, rename it over ``path`` and fsync
    the folder: a failure, a kill or a power cut at any moment leaves either the old file or the new one,
    whole, never a mix. A symbolic link is written through: the file it points to is replaced and the link
    stays."""
    if Path(path).is_symlink():
        path = Path(os.path.realpath(path))
    path = check_target(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise refusal(exc, folder, into=True) from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _file_mode(path))  # mkstemp makes 0600: a server or container user could not read it
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(folder, folder=True)
    except OSError as exc:
        raise refusal(exc, path) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def cache_dir() -> Path:
    """Graft's cache folder where each system keeps caches (the folders Qt's QStandardPaths.CacheLocation
    names): ``$GRAFT_CACHE_DIR`` if set; on Windows ``%LOCALAPPDATA%\\Graft\\cache``; on macOS
    ``~/Library/Caches/Graft``; elsewhere ``$XDG_CACHE_HOME/graft`` or ``~/.cache/graft``."""
    if os.environ.get("GRAFT_CACHE_DIR"):
        return Path(os.environ["GRAFT_CACHE_DIR"]).expanduser()
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "Graft" / "cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "Graft"
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "graft"
    return Path.home() / ".cache" / "graft"
