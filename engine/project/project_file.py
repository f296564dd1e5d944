"""``.graft`` project files: one zip holding ``recipe.json`` (source, operations, heads) and
``weights.safetensors``, and for a paused training run ``checkpoint.json`` + ``checkpoint.safetensors``
(:class:`engine.training.checkpoint.TrainCheckpoint`). No pickle anywhere, so opening a project can never
run code."""
from __future__ import annotations

import json
import os
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from engine import __version__
from engine.errors import GraftError, not_a_file
from engine.files import atomic_write
from engine.project.archive import has_member, open_zip, read_json, read_member
from engine.network.graft_model import RegressionHead
from engine.network.loading import ModelSource, rebuild
from engine.surgery.operations import Operation
from engine.network.preprocess import InputSpec
from engine.surgery.session import Session
from engine.training.checkpoint import TrainCheckpoint

FORMAT = 1
CHECKPOINT_JSON, CHECKPOINT_TENSORS = "checkpoint.json", "checkpoint.safetensors"


def state_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state as independent contiguous CPU tensors (safetensors refuses shared storage)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}


def project_recipe(session: Session, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The project's ``recipe.json``: the source, the operations, the heads and the input (plain data)."""
    return {
        "format": FORMAT,
        "graft_version": __version__,
        "source": session.source.to_dict(),
        "operations": session.recipe(),
        "heads": [h.to_dict() for h in session.heads],
        "input_spec": session.input_spec.to_dict(),
        "extra": extra or {},
    }


def save_project(session: Session, path: str | os.PathLike, extra: dict[str, Any] | None = None,
                 checkpoint: TrainCheckpoint | None = None) -> Path:
    """Write the project; ``checkpoint``: a paused run to keep with it (saving without one drops it)."""
    return write_project(path, project_recipe(session, extra), state_tensors(session.model), checkpoint)


def write_project(path: str | os.PathLike, recipe: dict[str, Any], weights: dict[str, torch.Tensor],
                  checkpoint: TrainCheckpoint | None = None, members: dict[str, str] | None = None,
                  streamed: bool = False) -> Path:
    """Write a project file from its parts (atomically): ``recipe`` (:func:`project_recipe`), the model's
    ``weights`` (independent contiguous CPU tensors: :func:`state_tensors`), a paused run, and ``members``,
    more JSON text files by name (a recovery file's ``recovery.json``). ``streamed``: the weights go into
    the file a tensor at a time (:mod:`engine.project.streamed_tensors`), never holding the GIL for long."""
    from safetensors.torch import save

    from engine.project.streamed_tensors import streamable, write_safetensors

    path = Path(path)
    streamed = streamed and streamable(weights)
    blob = None if streamed else save(weights, metadata={"graft_format": str(FORMAT)})
    paused = None
    if checkpoint is not None:
        meta, tensors = checkpoint.to_parts()
        paused = (json.dumps(meta), save(tensors, metadata={"graft_format": str(FORMAT)}))

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
            # indented JSON is encoded in Python, compact JSON in C (the GIL is held for less of the write)
            zf.writestr("recipe.json", json.dumps(recipe) if streamed else json.dumps(recipe, indent=2))
            if blob is None:
                with zf.open("weights.safetensors", "w", force_zip64=True) as member:
                    write_safetensors(member, weights, {"graft_format": str(FORMAT)})
            else:
                zf.writestr("weights.safetensors", blob)
            if paused is not None:
                zf.writestr(CHECKPOINT_JSON, paused[0])
                zf.writestr(CHECKPOINT_TENSORS, paused[1])
            for name, text in (members or {}).items():
                zf.writestr(name, text)

    atomic_write(path, write)
    return path


def read_project(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    path = Path(path)
    if not path.is_file():
        raise not_a_file(path)
    try:
        with open_zip(path, "Graft project file") as zf:
            recipe = read_json(zf, "recipe.json", path)
            blob = read_member(zf, "weights.safetensors", path)
    except KeyError as exc:
        raise GraftError(f"{path.name} is not a Graft project file (it holds no {exc.args[0]}).") from None
    weights = _tensors(blob, path, "the weights inside are damaged")
    if not isinstance(recipe, dict):
        raise _invalid(path, f"its recipe is {type(recipe).__name__}, not an object")
    version = recipe.get("format", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise _invalid(path, f"its format must be a whole number, not {version!r}")
    if version > FORMAT:
        raise GraftError(f"{path.name} was saved by a newer Graft (format {recipe['format']}).")
    return recipe, weights


def read_checkpoint(path: str | os.PathLike) -> TrainCheckpoint | None:
    """The paused training run a project keeps, or None when it keeps none."""
    path = Path(path)
    if not path.is_file():
        raise not_a_file(path)
    try:
        with open_zip(path, "Graft project file") as zf:
            if not has_member(zf, CHECKPOINT_JSON):
                return None
            meta = read_json(zf, CHECKPOINT_JSON, path)
            blob = read_member(zf, CHECKPOINT_TENSORS, path)
    except KeyError as exc:
        raise GraftError(f"{path.name}: the paused run inside is damaged ({exc.args[0]} is missing).") from None
    tensors = _tensors(blob, path, "the paused run inside is damaged")
    if not isinstance(meta, dict):
        raise GraftError(f"{path.name}: the paused run inside is damaged (not an object).")
    try:
        return TrainCheckpoint.from_parts(meta, tensors)
    except GraftError as exc:
        raise GraftError(f"{path.name}: {exc}") from None


def _tensors(blob: bytes, path: Path, what: str) -> dict[str, torch.Tensor]:
    """A safetensors member's tensors; GraftError("<file>: <what> (…)") when its header or data is damaged."""
    from safetensors.torch import load

    try:
        return load(blob)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types (and torch's for dtypes)
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        raise GraftError(f"{path.name}: {what} ({detail}).") from None


def _invalid(path: str | os.PathLike, what: str) -> GraftError:
    return GraftError(f"{Path(path).name} is not a valid Graft project: {what}.")


def _what(exc: Exception) -> str:
    if isinstance(exc, KeyError):
        return f"{exc.args[0]!r} is missing" if exc.args else "an entry is missing"
    return str(exc).rstrip(".") or exc.__class__.__name__


def _with_target_stats(session: Session, weights: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Projects saved before regression heads had target statistics lack their ``target_mean`` /
    ``target_std`` buffers: fill in the rebuilt head's own (mean 0 / std 1 unless the recipe gave
    statistics), so such a head computes exactly what it did. Returns the weights and those heads' names."""
    legacy: set[str] = set()
    weights = dict(weights)
    for head, module in session.model.heads.items():
        if not isinstance(module, RegressionHead):
            continue
        for buffer in ("target_mean", "target_std"):
            key = f"heads.{head}.{buffer}"
            if key not in weights:
                weights[key] = getattr(module, buffer).detach().clone()
                legacy.add(head)
    return weights, legacy


def _sync_target_stats(session: Session, legacy: set[str], saved_heads: Any, path: str | os.PathLike) -> None:
    """Make each regression head's spec state the statistics its loaded buffers hold. A head of an older
    project (``legacy``) states mean 0 / std 1 outright: it was trained on raw targets, so training it
    again keeps that scale instead of computing statistics its weights were not trained with. A head
    that never had statistics (buffers 0 / 1, none saved in the recipe) keeps none."""
    saved = {}
    if isinstance(saved_heads, list):
        saved = {h.get("name"): h for h in saved_heads if isinstance(h, dict)}
    for head, module in session.model.heads.items():
        spec = session.model.head_specs[head]
        if not isinstance(module, RegressionHead):
            continue
        recorded = (saved.get(head) or {}).get("target_std") is not None
        if head in legacy or recorded or spec.has_target_stats or not module.is_identity():
            try:
                spec.set_target_stats(*module.target_stats())
            except GraftError as exc:
                raise _invalid(path, f"the target statistics of head {head!r} are unusable: {str(exc).rstrip('.')}") \
                    from None


def open_project(path: str | os.PathLike, trust: bool = False) -> Session:
    """Rebuild the source network, replay the operations, then load the saved weights exactly.

    ``trust``: the caller (the user) trusts the source model file, so a pickled one may be unpickled
    again; a project file can never grant that itself. The rebuilt network carries the source's own
    weights where they are still on this machine, so undoing a replayed delete or cut brings back what
    was there; where they are not, the history starts at the reopened state and ``network.notes`` says
    why. Damaged recipes end in GraftError("<file> is not a valid Graft project: …").
    """
    recipe, weights = read_project(path)
    name = Path(path).name
    try:
        source = ModelSource.from_dict(recipe["source"])
        entries = recipe.get("operations", [])
        if not isinstance(entries, list):
            raise TypeError(f"its operations are {type(entries).__name__}, not a list")
        ops = []
        for i, data in enumerate(entries, 1):
            try:
                ops.append(Operation.from_dict(data))
            except GraftError as exc:
                raise ValueError(f"operation {i}: {exc}") from None
        spec_data = recipe.get("input_spec")
        if spec_data is not None and not isinstance(spec_data, dict):
            raise TypeError(f"its input_spec is {type(spec_data).__name__}, not an object")
        input_spec = InputSpec.from_dict(spec_data) if spec_data else None
        problem = input_spec.problem() if input_spec is not None else None
        if problem:
            raise ValueError(problem)
        extra = recipe.get("extra") or {}
        if not isinstance(extra, dict):
            raise TypeError(f"its extra is {type(extra).__name__}, not an object")
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise _invalid(path, _what(exc)) from None

    network, original = rebuild(source, trust=trust)
    # Input surgeries (channels, size) replay from the source's own input; the saved spec follows them.
    replays_input = any(op.sets_input for op in ops)
    if input_spec is not None and not replays_input:
        network.input_spec = input_spec
    session = Session(network)
    for i, op in enumerate(ops, 1):
        try:
            session.apply(op)
        except GraftError as exc:
            raise _invalid(path, f"operation {i} ({op.text}) cannot be redone on {source.describe()}: {exc}") \
                from None
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            raise _invalid(path, f"operation {i} ({op.text}): {_what(exc)}") from None
        except RuntimeError as exc:  # torch: a layer too large to allocate, shapes that do not fit …
            raise _invalid(path, f"operation {i} ({op.text}) cannot be redone: "
                                 f"{str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else 'RuntimeError'}") \
                from None
    if input_spec is not None and replays_input:
        session.set_input_spec(input_spec)
    weights, legacy = _with_target_stats(session, weights)
    # safetensors keeps no state-dict metadata, but some modules read their version from it (torchvision's
    # MNASNet refuses to load without one): the rebuilt network's own versions are the saved network's.
    weights = OrderedDict(weights)
    weights._metadata = getattr(session.model.state_dict(), "_metadata", None)  # type: ignore[attr-defined]
    try:
        missing, unexpected = session.model.load_state_dict(weights, strict=False)
    except (RuntimeError, ValueError) as exc:  # torch's message spans lines: its last one names the first mismatch
        detail = " ".join(line.strip() for line in str(exc).strip().splitlines()[1:2]) or exc.__class__.__name__
        raise GraftError(f"{name}: the saved weights do not fit the rebuilt network ({detail.rstrip('.')}).") \
            from None
    if missing or unexpected:
        raise GraftError(f"{name}: the saved weights do not fit the rebuilt network "
                         f"({len(missing)} missing, {len(unexpected)} unexpected).")
    _sync_target_stats(session, legacy, recipe.get("heads"), path)
    # Undo reaches back only over operations whose undo brings back the weights that were there.
    keep = len(ops)
    while keep and not ops[keep - 1].lost_on_reopen(original):
        keep -= 1
    session.history.reset(ops[keep:])
    if keep:
        why = (f"the original weights of {source.describe()} are not on this machine" if not original
               else "the weights of the layers or heads it would bring back were not saved in the project")
        session.network.notes.append(
            f"Undo reaches back {len(ops) - keep} of the project's {len(ops)} steps: {why}, so undoing "
            f"'{ops[keep - 1].text}' would bring back random weights.")
    session.project_extra = extra
    return session
