"""``.graft`` project files: one zip holding ``recipe.json`` (source, operations, heads) and
``weights.safetensors``. No pickle anywhere, so opening a project can never run code."""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .errors import GraftError
from .loading import ModelSource, rebuild
from .operations import Operation
from .preprocess import InputSpec
from .session import Session

FORMAT = 1


def state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state as independent contiguous CPU tensors (safetensors refuses shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def check_target(path: str | Path) -> Path:
    """Fail fast (before any work) when ``path`` cannot be written: its folder is missing or is a file,
    or ``path`` is a folder."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise GraftError(f"Cannot write {path}: folder {folder} does not exist.")
    if path.is_dir():
        raise GraftError(f"Cannot write {path}: it is a folder.")
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


def atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, so a failure leaves nothing half-written."""
    path = check_target(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise GraftError(f"Cannot write to {folder}: {exc.strerror or exc}.") from None
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, _file_mode(path))  # mkstemp makes 0600: a server or container user could not read it
        os.replace(tmp, path)
    except OSError as exc:
        raise GraftError(f"Cannot write {path}: {exc.strerror or exc}.") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_project(session: Session, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    from safetensors.torch import save

    path = Path(path)
    recipe = {
        "format": FORMAT,
        "graft_version": __version__,
        "source": session.source.to_dict(),
        "operations": session.recipe(),
        "heads": [h.to_dict() for h in session.heads],
        "input_spec": session.input_spec.to_dict(),
        "extra": extra or {},
    }
    blob = save(state_tensors(session.model), metadata={"graft_format": str(FORMAT)})

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            zf.writestr("recipe.json", json.dumps(recipe, indent=2))
            zf.writestr("weights.safetensors", blob)

    atomic_write(path, write)
    return path


def read_project(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from safetensors.torch import load

    path = Path(path)
    if not path.is_file():
        raise GraftError(f"{path}: no such file.")
    try:
        with zipfile.ZipFile(path) as zf:
            recipe = json.loads(zf.read("recipe.json"))
            weights = load(zf.read("weights.safetensors"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError, OSError, ValueError) as exc:
        raise GraftError(f"{path.name} is not a Graft project file ({exc.__class__.__name__}).") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
        raise GraftError(f"{path.name}: the weights inside are damaged ({exc}).") from None
    if recipe.get("format", 0) > FORMAT:
        raise GraftError(f"{path.name} was saved by a newer Graft (format {recipe['format']}).")
    return recipe, weights


def open_project(path: str | os.PathLike) -> Session:
    """Rebuild the source architecture, replay the operations, then load the saved weights exactly."""
    recipe, weights = read_project(path)
    network = rebuild(ModelSource.from_dict(recipe["source"]))
    network.input_spec = InputSpec.from_dict(recipe.get("input_spec") or {}) if recipe.get("input_spec") \
        else network.input_spec
    session = Session(network)
    for data in recipe.get("operations", []):
        session.do(Operation.from_dict(data))
    try:
        missing, unexpected = session.model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:
        raise GraftError(f"{Path(path).name}: the saved weights do not fit the rebuilt network ({exc}).") from None
    if missing or unexpected:
        raise GraftError(f"{Path(path).name}: the saved weights do not fit the rebuilt network "
                         f"({len(missing)} missing, {len(unexpected)} unexpected).")
    session.project_extra = recipe.get("extra", {})
    return session
