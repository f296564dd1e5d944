"""Test-time augmentation inside the exported ONNX graph (``main.py export --tta flip``).

:class:`TTAModel` wraps the session's model: it makes the views of its input and averages the model's
answers per head (:mod:`engine.network.tta`: probabilities for single- and multi-label heads, values for
regression), so the file still has one input ``image`` and one output per head with the same meaning
(logits whose softmax / sigmoid is the averaged probability; regression values), and any runtime gets
the averaged answer from one call. The exporter (:func:`engine.export.onnx_export.export_onnx`) exports
the wrapper as it exports any model — through :func:`with_tta`, a view of the session whose ``model``
is the wrapper — and verifies it against PyTorch the same way (the same tolerance, random and real
images), so a TTA file passes the same parity check as every export. :func:`mark_tta` then records the
views in the file's ``graft`` metadata (``"tta"``: mode, number of views, how each head kind is averaged;
and a flat ``tta`` key), which ``main.py predict`` needs nothing from: the outputs mean what they meant.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import GraftError
from engine.export.inference import head_specs
from engine.export.metadata import KEY, write_metadata
from engine.files import atomic_write
from engine.network.tta import check_tta, combine, describe_views, make_views, view_count

AVERAGING = {"single": "mean of softmax probabilities (output: its log, as logits)",
             "multi": "mean of sigmoid probabilities (output: its logit)",
             "regression": "mean of the values", "features": "mean of the values"}


class TTAModel(nn.Module):
    """``model`` (outputs ``{name: tensor}``) on the views of its input, answers averaged per output:
    ``kinds`` ``{output name: head kind}`` ("single", "multi", "regression"; anything else: a mean)."""

    def __init__(self, model: nn.Module, tta: str, kinds: dict[str, str]) -> None:
        super().__init__()
        mode = check_tta(tta)
        if mode is None:
            raise GraftError("TTAModel needs a test-time augmentation (flip or flip+crops).")
        self.model, self.tta, self.kinds, self.views = model, mode, dict(kinds), view_count(mode)

    @property
    def trunk(self) -> nn.Module:  # what the exporter's checks read (a cut, the trunk's layers)
        return self.model.trunk

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.model(make_views(x, self.tta))
        return {name: combine(self.kinds.get(name, "features"), value, self.views) for name, value in out.items()}


class _TTASession:
    """The session as the exporter sees it, with the wrapped model (everything else is the session's)."""

    def __init__(self, session: Any, model: TTAModel) -> None:
        self._session, self.model = session, model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def describe(self) -> str:
        return f"{self._session.describe()}, with test-time augmentation ({self.model.tta})"


def output_kinds(session: Any) -> dict[str, str]:
    """Each exported output's head kind ("features" for plain features)."""
    return {name: spec.kind if spec is not None else "features" for name, spec in head_specs(session).items()}


def with_tta(session: Any, tta: str | None) -> Any:
    """The session to hand the exporter: itself without TTA, else a view whose model is :class:`TTAModel`."""
    mode = check_tta(tta)
    if mode is None:
        return session
    return _TTASession(session, TTAModel(session.model, mode, output_kinds(session)))


def tta_entry(tta: str, kinds: dict[str, str]) -> dict[str, Any]:
    """The metadata's ``tta`` entry."""
    mode = check_tta(tta)
    return {"mode": mode, "views": view_count(mode), "description": describe_views(mode),
            "averaging": {name: AVERAGING.get(kind, AVERAGING["features"]) for name, kind in kinds.items()}}


def mark_tta(path: str | Path, tta: str, kinds: dict[str, str]) -> dict[str, Any]:
    """Record the TTA in an exported file's ``graft`` metadata (rewritten safely: a temporary file
    renamed over it). Returns the new metadata."""
    import onnx

    path = Path(path)
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    if KEY not in props:
        raise GraftError(f"{path.name} carries no Graft metadata to record the test-time augmentation in.")
    data = json.loads(props[KEY])
    data["tta"] = tta_entry(tta, kinds)
    write_metadata(proto, data)
    entry = next((p for p in proto.metadata_props if p.key == "tta"), None) or proto.metadata_props.add()
    entry.key, entry.value = "tta", data["tta"]["mode"]
    proto.doc_string += f"\nTest-time augmentation inside: {data['tta']['description']} ({data['tta']['views']} views)."
    atomic_write(path, lambda tmp: onnx.save(proto, str(tmp)))
    return data
