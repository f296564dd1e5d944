"""Before and after: what surgery and training changed between two models.

Each side is a set of modules by path (a network's own module paths; heads as ``@heads.<name>…``, as in
the layer tree). A module only on one side was removed or added; one on both sides was replaced (another
type) or reshaped (other parameter shapes), or else its weights moved by the relative change
``‖W_after − W_before‖ / ‖W_before‖`` over its own parameters (a block's figure sums over the parameters
inside it). Buffers (BatchNorm's running statistics) are not weights and are not compared.

Weights are compared only when both sides' are known: a network with random weights cannot be rebuilt as
it was (another draw of random numbers), and a source whose weights file is gone is rebuilt with random
ones; such a comparison states the structure only (status ``kept``) and says why in its notes.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from engine.errors import GraftError
from engine.network.layer_tree import HEADS_KEY
from engine.units import human_count, plural

STATUSES = ("removed", "added", "replaced", "reshaped", "moved", "same", "kept")


@dataclass
class Side:
    """One side of a comparison: its modules by path (surgery's ``nn.Identity`` placeholders left out)."""

    label: str
    modules: dict[str, nn.Module]
    weights_known: bool = True
    why_unknown: str = ""


def _shape(shape: Iterable[int]) -> str:
    return "×".join(str(d) for d in shape) or "scalar"


def _own_params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in module.named_parameters(recurse=False)}


@dataclass
class LayerChange:
    """How one module differs. ``relative``: the weights' relative change (its own parameters, or for a
    module without any the parameters inside it), None when not compared; ``own``: it has parameters of
    its own (a layer, not a block or an activation)."""

    path: str
    status: str
    type_before: str | None = None
    type_after: str | None = None
    params_before: int = 0
    params_after: int = 0
    shapes_before: dict[str, tuple[int, ...]] = field(default_factory=dict)
    shapes_after: dict[str, tuple[int, ...]] = field(default_factory=dict)
    relative: float | None = None
    own: bool = False

    @property
    def type_name(self) -> str:
        if self.status == "replaced":
            return f"{self.type_before} → {self.type_after}"
        return self.type_after or self.type_before or ""

    @property
    def text(self) -> str:
        """What changed, in a few words: ``removed``, ``reshaped (weight 64×3×7×7 → 64×1×7×7)``,
        ``moved 3.2%``, ``unchanged`` …"""
        if self.status == "replaced":
            return f"replaced ({self.type_before} → {self.type_after})"
        if self.status == "reshaped":
            parts = [f"{n} {_shape(self.shapes_before[n]) if n in self.shapes_before else '-'} → "
                     f"{_shape(self.shapes_after[n]) if n in self.shapes_after else '-'}"
                     for n in dict.fromkeys([*self.shapes_before, *self.shapes_after])
                     if self.shapes_before.get(n) != self.shapes_after.get(n)]
            return "reshaped (" + ", ".join(parts) + ")"
        if self.status in ("moved", "same"):
            return f"moved {percent(self.relative)}" if self.status == "moved" else "unchanged"
        if self.status == "kept":
            return "kept (weights not compared)"
        return self.status

    @property
    def badge(self) -> str:
        """The short form a tree shows: ``moved 3.2%``, ``reshaped``, ``added`` …; empty when unchanged."""
        if self.status == "moved":
            return f"moved {percent(self.relative)}"
        return "" if self.status in ("same", "kept") else self.status

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "status": self.status, "type_before": self.type_before,
                "type_after": self.type_after, "params_before": self.params_before,
                "params_after": self.params_after, "relative": self.relative, "text": self.text,
                "shapes_before": {k: list(v) for k, v in self.shapes_before.items()},
                "shapes_after": {k: list(v) for k, v in self.shapes_after.items()}}


def percent(value: float | None) -> str:
    """A relative change for people: ``3.2%``, ``0.041%``, ``2e-07%``; ``inf`` for weights that were 0."""
    if value is None:
        return "-"
    if math.isinf(value):
        return "from zero"
    pct = value * 100
    if pct >= 10:
        return f"{pct:.0f}%"
    if pct >= 0.001:
        return f"{pct:#.2g}%"
    return f"{pct:.1g}%"


@dataclass
class ModelDiff:
    """The comparison of ``before`` with ``after``: one row per module path of either side (before's
    order, then what only after has)."""

    before: str
    after: str
    rows: list[LayerChange]
    weights_compared: bool
    notes: list[str] = field(default_factory=list)

    def changes(self) -> dict[str, LayerChange]:
        """Path -> change for every module of either side (what a layer tree's change column shows)."""
        return {r.path: r for r in self.rows}

    def row(self, path: str) -> LayerChange | None:
        return next((r for r in self.rows if r.path == path), None)

    def changed(self) -> list[LayerChange]:
        """The rows that changed: removed and added modules (once for a whole removed or added block:
        its topmost module), replaced and reshaped ones, and layers whose own weights moved."""
        tops: set[str] = set()
        out = []
        for r in self.rows:
            if r.status in ("removed", "added"):
                parent = r.path.rpartition(".")[0]
                while parent and parent not in tops:
                    parent = parent.rpartition(".")[0]
                if parent:
                    continue
                tops.add(r.path)
                out.append(r)
            elif r.status in ("replaced", "reshaped") or (r.status == "moved" and r.own):
                out.append(r)
        return out

    def counts(self) -> dict[str, int]:
        """Layers with weights of their own, by status."""
        counts = dict.fromkeys(STATUSES, 0)
        for r in self.rows:
            if r.own:
                counts[r.status] += 1
        return counts

    def summary(self) -> str:
        counts = self.counts()
        words = {"same": "unchanged", "kept": "kept (weights not compared)"}
        parts = [f"{n} {words.get(s, s)}" for s, n in counts.items() if n]
        return f"{plural(len(self.rows), 'module')} compared (layers with weights: " + ", ".join(parts) + ")"

    def format(self, all_rows: bool = False) -> str:
        """A table: only what changed (``all_rows``: every module), then a summary line."""
        rows = self.rows if all_rows else self.changed()
        lines = [f"before: {self.before}", f"after:  {self.after}"]
        lines += [f"note: {n}" for n in self.notes]
        if rows:
            cells = [(r.path, r.type_name, _params(r), r.text) for r in rows]
            header = ("layer", "type", "parameters", "change")
            widths = [max(len(c[i]) for c in cells + [header]) for i in range(3)]
            lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)) + "  " + header[3])
            lines += ["  ".join(c.ljust(w) for c, w in zip(cell, widths)) + "  " + cell[3] for cell in cells]
        else:
            lines.append("no layer changed")
        lines.append(self.summary())
        return "\n".join(lines)


def _params(r: LayerChange) -> str:
    if r.status in ("removed",):
        return human_count(r.params_before)
    if r.status in ("added", "moved", "same", "kept"):
        return human_count(r.params_after)
    return f"{human_count(r.params_before)} → {human_count(r.params_after)}"


def _modules(root: nn.Module, prefix: str = "") -> dict[str, nn.Module]:
    """Paths -> modules under ``root``, leaving out nn.Identity placeholders and what lies below them."""
    out: dict[str, nn.Module] = {}

    def walk(module: nn.Module, path: str) -> None:
        for name, child in module.named_children():
            child_path = f"{path}.{name}" if path else name
            if isinstance(child, nn.Identity):
                continue
            out[child_path] = child
            walk(child, child_path)

    walk(root, prefix)
    return out


def side_of_network(module: nn.Module, label: str, weights_known: bool = True, why: str = "") -> Side:
    return Side(label, _modules(module), weights_known, why)


def side_of_session(session, label: str) -> Side:
    """A session's model as it is now: its trunk's modules and its heads (``@heads.<name>…``)."""
    modules = _modules(session.model.trunk.body)
    for name, head in session.model.heads.items():
        modules[f"{HEADS_KEY}.{name}"] = head
        modules.update(_modules(head, f"{HEADS_KEY}.{name}"))
    return Side(label, modules, True)


def _random_weights_note(source) -> str:
    return f"{source.describe()} has random weights, which cannot be drawn again as they were"


def as_loaded(session, *, trust: bool = False) -> Side:
    """The session's network as it was loaded, rebuilt from its source (``engine.network.loading.rebuild``)."""
    from engine.network.loading import rebuild

    network, original = rebuild(session.source, trust=trust)
    why = ""
    if session.source.weights == "random":
        why = _random_weights_note(session.source)
    elif not original:
        why = f"the weights of {session.source.describe()} are no longer on this machine"
    return side_of_network(network.module, f"{session.describe()} as loaded", not why, why)


def load_side(spec: str | os.PathLike, *, random_init: bool = False, trust: bool = False,
              arch: str | None = None) -> Side:
    """A side named on the command line: a ``.graft`` project, a model name (``resnet18``, ``default``) or a
    model file."""
    from engine.network.loading import load_network
    from engine.project.project_file import open_project

    text = str(spec)
    if text.lower().endswith(".graft"):
        session = open_project(text, trust=trust)
        return side_of_session(session, f"{Path(text).name} (project from {session.describe()})")
    if text.lower().endswith(".onnx"):
        raise GraftError(f"{Path(text).name}: ONNX files are not compared; compare the project it was "
                         "exported from.")
    network = load_network(text, arch=arch, random_init=random_init, trust=trust)
    why = _random_weights_note(network.source) if network.source.weights == "random" else ""
    return side_of_network(network.module, network.source.describe(), not why, why)


def _norms(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> tuple[float, float]:
    """(‖ΔW‖², ‖W_before‖²) over parameters of the same name and shape on both sides (float64)."""
    delta = base = 0.0
    with torch.no_grad():
        for name, b in before.items():
            a = after.get(name)
            if a is None or a.shape != b.shape:
                continue
            b64 = b.detach().to("cpu", torch.float64)
            delta += float(torch.sum((a.detach().to("cpu", torch.float64) - b64) ** 2))
            base += float(torch.sum(b64 ** 2))
    return delta, base


def _relative(delta: float, base: float) -> float:
    if delta == 0:
        return 0.0
    return math.sqrt(delta / base) if base > 0 else math.inf


def compare(before: Side, after: Side) -> ModelDiff:
    """Compare two sides module by module (see the module docstring)."""
    weights = before.weights_known and after.weights_known
    notes = [f"weights not compared: {s.why_unknown}" for s in (before, after) if not s.weights_known]
    paths = list(before.modules) + [p for p in after.modules if p not in before.modules]
    rows: list[LayerChange] = []
    sums: dict[str, list[float]] = {}  # path -> [‖ΔW‖², ‖W‖²] of the comparable parameters inside it
    for path in paths:
        b, a = before.modules.get(path), after.modules.get(path)
        own_b = _own_params(b) if b is not None else {}
        own_a = _own_params(a) if a is not None else {}
        row = LayerChange(path, "same", type(b).__name__ if b is not None else None,
                          type(a).__name__ if a is not None else None,
                          sum(p.numel() for p in b.parameters()) if b is not None else 0,
                          sum(p.numel() for p in a.parameters()) if a is not None else 0,
                          {n: tuple(p.shape) for n, p in own_b.items()}, {n: tuple(p.shape) for n, p in own_a.items()},
                          own=bool(own_b or own_a))
        if a is None:
            row.status = "removed"
        elif b is None:
            row.status = "added"
        elif row.type_before != row.type_after:
            row.status = "replaced"
        elif row.shapes_before != row.shapes_after:
            row.status = "reshaped"
        elif weights and own_b:
            delta, base = _norms(own_b, own_a)
            row.relative = _relative(delta, base)
            row.status = "moved" if delta > 0 else "same"
            prefix = path
            while True:  # add to every enclosing module
                acc = sums.setdefault(prefix, [0.0, 0.0])
                acc[0] += delta
                acc[1] += base
                if "." not in prefix:
                    break
                prefix = prefix.rpartition(".")[0]
        elif not weights:
            row.status = "kept"
        rows.append(row)
    for row in rows:  # blocks and parameterless modules: the weights inside them
        if not row.own and row.status == "same" and row.path in sums:
            delta, base = sums[row.path]
            row.relative = _relative(delta, base)
            row.status = "moved" if delta > 0 else "same"
    return ModelDiff(before.label, after.label, rows, weights, notes)


def compare_with_loaded(session, *, trust: bool = False) -> ModelDiff:
    """The session now against its network as loaded ("Compare with the network as loaded")."""
    return compare(as_loaded(session, trust=trust), side_of_session(session, f"{session.describe()} now"))
