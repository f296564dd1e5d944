"""A plain, evented tree over the network's modules: what the layer view shows.

The engine owns the tree; a view adapts it. After each operation the session calls :meth:`LayerTree.sync`,
which rebuilds the node data from the model and announces the difference through callbacks in the
napari style: ``about_to_insert(parent, start, end)`` / ``inserted(...)``, ``about_to_remove(...)`` /
``removed(...)`` and ``changed(node, fields)``. Views never need to rebuild from scratch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from engine.events import Events
from engine.network.graft_model import END, GraftModel
from engine.network.lr_factors import HEADS_KEY, effective_factor

DATA_FIELDS = ("type_name", "out_shape", "params", "trainable_params", "is_output", "extra", "unused", "read_by",
               "lr_factor")


# A dry run slower than this (the first one is real, in the loading worker) makes later ones run on
# fake tensors. A fake run costs per op, not per FLOP (2-core CPU: resnet50 0.30 s fake vs 0.08 s real,
# convnext_base 0.28 vs 0.25, vit_l_16 0.26 vs 1.0), so only heavy networks gain.
FAKE_RUN_AFTER_S = 0.5


def _shape_run(model: GraftModel) -> torch.Tensor:
    """The dry run on fake tensors: every op computes its output's shape and no numbers, so surgery on
    vit_l_16 (a real forward takes seconds, on the GUI thread when the window does surgery) takes a
    fraction of that. Any failure (an op without a shape rule, TorchScript, or a genuine shape error)
    makes the caller run the model for real, which gives the same answer or the real error."""
    if isinstance(model.trunk.body, torch.jit.ScriptModule):
        raise TypeError("TorchScript runs for real")
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad():
        features = model.trunk.run_all(model.dummy_input(1))
    if not isinstance(features, torch.Tensor) or features.dim() < 2:
        raise TypeError("unexpected features")
    return features


@dataclass(eq=False)
class LayerNode:
    """One module. ``path`` is its qualified name in the loaded network (``features.3.1``), or
    ``@heads`` / ``@heads.<name>`` for the heads group and the heads."""

    name: str
    path: str
    type_name: str = ""
    out_shape: tuple[int, ...] | None = None
    params: int = 0
    trainable_params: int = 0
    is_output: bool = False
    extra: str = ""
    unused: bool = False  # a layer no head needs: the trunk stops before it (every head reads an earlier one)
    read_by: tuple[str, ...] = ()  # a layer: the heads that read its output; a head: the layer it reads ("" = end)
    lr_factor: float = 1.0  # the learning-rate factor that holds here (own or inherited; see engine.network.lr_factors)
    kind: str = "layer"  # "layer" | "heads" | "head" | "root"
    parent: LayerNode | None = field(default=None, repr=False)
    children: list[LayerNode] = field(default_factory=list, repr=False)

    @property
    def trainable(self) -> bool | None:
        """True/False when all/none of its parameters train; None when partly (or no parameters)."""
        if self.params == 0:
            return None
        if self.trainable_params == self.params:
            return True
        if self.trainable_params == 0:
            return False
        return None

    @property
    def frozen_state(self) -> str:
        """"trainable", "frozen", "partial" or "none" (no parameters)."""
        if self.params == 0:
            return "none"
        if self.trainable_params == self.params:
            return "trainable"
        return "frozen" if self.trainable_params == 0 else "partial"

    def row(self) -> int:
        return self.parent.children.index(self) if self.parent else 0

    def walk(self):
        yield self
        for child in self.children:
            yield from child.walk()



class LayerTree(Events):
    """Node tree over a GraftModel plus change callbacks. Build with :meth:`sync`."""

    EVENTS = ("about_to_insert", "inserted", "about_to_remove", "removed", "changed", "reset")

    def __init__(self) -> None:
        super().__init__()
        self.root = LayerNode(name="", path="", kind="root")
        self._by_path: dict[str, LayerNode] = {"": self.root}
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.order: list[str] = []  # module paths in the order their forward starts
        self.ticks: dict[str, tuple[int, int | None]] = {}  # path -> (when it started, when it finished) in the dry run
        self.feature_dim: int | None = None
        self.build_seconds = 0.0  # how long the last full build (dry run, then the nodes) took
        self.shape_error: str | None = None
        self._probe_seconds: float | None = None  # a dry run not yet counted in build_seconds
        self.real_run_seconds: float | None = None  # the last real dry run: when slow, later ones go fake

    # -- queries --------------------------------------------------------------------------------
    def node(self, path: str) -> LayerNode | None:
        return self._by_path.get(path)

    def __contains__(self, path: str) -> bool:
        return path in self._by_path

    def __iter__(self):
        for child in self.root.children:
            yield from child.walk()

    def __len__(self) -> int:
        return len(self._by_path) - 1

    # -- building -------------------------------------------------------------------------------
    def probe(self, model: GraftModel) -> None:
        """One dry run on a dummy input: output shape of every module and the order they run in."""
        start = time.perf_counter()
        body = model.trunk.body
        names = {m: n for n, m in body.named_modules() if n}
        shapes: dict[str, tuple[int, ...]] = {}
        order: list[str] = []
        ticks: dict[str, list[int | None]] = {}
        clock = [0]
        handles = []

        def pre(module: nn.Module, args: Any) -> None:
            name = names.get(module)
            if name is not None and name not in ticks:
                order.append(name)
                clock[0] += 1
                ticks[name] = [clock[0], None]

        def post(module: nn.Module, args: Any, out: Any) -> None:
            name = names.get(module)
            if name is None or name not in ticks or ticks[name][1] is not None:
                return
            clock[0] += 1
            ticks[name][1] = clock[0]
            t = out[0] if isinstance(out, (tuple, list)) and out else out
            if isinstance(t, torch.Tensor):
                shapes[name] = tuple(t.shape[1:])

        if not isinstance(body, torch.jit.ScriptModule):
            for module in names:
                handles.append(module.register_forward_pre_hook(pre))
                handles.append(module.register_forward_hook(post, prepend=True))  # before a cut hook raises
        was_training = model.training
        model.eval()
        self.shape_error = None
        try:
            features = None
            if self.real_run_seconds is not None and self.real_run_seconds > FAKE_RUN_AFTER_S:
                try:
                    features = _shape_run(model)
                except Exception:  # noqa: BLE001 - no shape rule for an op, or a real error: run it for real
                    shapes.clear()
                    order.clear()
                    ticks.clear()
            if features is None:
                t0 = time.perf_counter()
                with torch.inference_mode():
                    features = model.trunk.run_all(model.dummy_input(1))
                self.real_run_seconds = time.perf_counter() - t0
            self.feature_dim = int(features.shape[1])
        except Exception as exc:  # a network that cannot run on its declared input: keep the tree
            self.shape_error = f"{exc.__class__.__name__}: {exc}"
            self.feature_dim = None
        finally:
            for h in handles:
                h.remove()
            model.train(was_training)
        self.shapes, self.order = shapes, order
        self.ticks = {n: (t[0], t[1]) for n, t in ticks.items()}
        self._probe_seconds = time.perf_counter() - start

    def unused_layers(self, taps: tuple[str | None, ...] | list[str | None]) -> set[str]:
        """The layers a forward pass that returns ``taps`` never calls: with no head on the end, those
        that start after the last tapped layer has finished (in the dry run's order)."""
        if END in taps or not taps:
            return set()
        ends = [self.ticks[t][1] for t in taps if t in self.ticks and self.ticks[t][1] is not None]
        if len(ends) < len(taps):
            return set()
        stop = max(ends)
        return {n for n, (start, _) in self.ticks.items() if start > stop}

    def sync(self, model: GraftModel, output_layer: str | None, probe: bool = True) -> None:
        """Bring the nodes in line with ``model``, announcing each difference."""
        if probe or not self.shapes:
            self.probe(model)
        start = time.perf_counter()
        fresh = self._build(model, output_layer)
        self._merge(self.root, fresh)
        if self._probe_seconds is not None:  # a sync without a new dry run keeps the last full build's time
            self.build_seconds = self._probe_seconds + time.perf_counter() - start
            self._probe_seconds = None

    def _build(self, model: GraftModel, output_layer: str | None) -> LayerNode:
        root = LayerNode(name="", path="", kind="root")
        unused = self.unused_layers(model.trunk.taps)
        readers: dict[str, list[str]] = {}
        for name, spec in model.head_specs.items():
            if spec.layer is not None:
                readers.setdefault(spec.layer, []).append(name)
        factors = getattr(model, "lr_factors", None) or {}

        def make(module: nn.Module, name: str, path: str, kind: str = "layer") -> LayerNode | None:
            if isinstance(module, nn.Identity) and kind == "layer":
                return None  # removed by surgery (or a no-op in the original): nothing to show
            node = LayerNode(name=name, path=path, kind=kind, type_name=type(module).__name__,
                             lr_factor=effective_factor(factors, path))
            own = list(module.parameters(recurse=False)) if not isinstance(module, torch.jit.ScriptModule) \
                else [p for n, p in module.named_parameters(recurse=False)]
            node.params = sum(p.numel() for p in own)
            node.trainable_params = sum(p.numel() for p in own if p.requires_grad)
            for child_name, child in module.named_children():
                child_path = f"{path}.{child_name}" if path else child_name
                child_node = make(child, child_name, child_path, "layer" if kind == "layer" else "head_part")
                if child_node is not None:
                    child_node.parent = node
                    node.children.append(child_node)
                    node.params += child_node.params
                    node.trainable_params += child_node.trainable_params
            node.out_shape = self.shapes.get(path) if kind == "layer" else None
            node.is_output = path == output_layer
            if kind == "layer":
                node.unused = path in unused
                node.read_by = tuple(readers.get(path, ()))
            return node

        for child_name, child in model.trunk.body.named_children():
            node = make(child, child_name, child_name)
            if node is not None:
                node.parent = root
                root.children.append(node)
        if model.trunk.cut_at:
            cut = self._find(root, model.trunk.cut_at)
            if cut is not None:
                cut.extra = "cut here: the trunk's features come from this layer"
        heads = LayerNode(name="grafted heads", path=HEADS_KEY, kind="heads", type_name="Heads",
                          lr_factor=effective_factor(factors, HEADS_KEY))
        heads.parent = root
        for name, module in model.heads.items():
            spec = model.head_specs[name]
            node = make(module, name, f"{HEADS_KEY}.{name}", "head")
            node.type_name = f"Head ({spec.kind})"
            node.read_by = (spec.layer or "",)
            node.out_shape = (spec.outputs,)
            node.extra = ", ".join(spec.label_names[:6]) + ("…" if spec.outputs > 6 else "")
            node.parent = heads
            heads.children.append(node)
            heads.params += node.params
            heads.trainable_params += node.trainable_params
        heads.out_shape = (self.feature_dim,) if self.feature_dim else None
        root.children.append(heads)
        return root

    @staticmethod
    def _find(root: LayerNode, path: str) -> LayerNode | None:
        for node in root.walk():
            if node.path == path:
                return node
        return None

    def _merge(self, old: LayerNode, new: LayerNode) -> None:
        """Make ``old``'s children equal ``new``'s: remove, insert, then update in place."""
        new_keys = [c.path for c in new.children]
        keep = set(new_keys)
        # removals, as contiguous runs from the end so row numbers stay valid
        i = len(old.children) - 1
        while i >= 0:
            if old.children[i].path in keep:
                i -= 1
                continue
            end = i
            while i - 1 >= 0 and old.children[i - 1].path not in keep:
                i -= 1
            self._emit("about_to_remove", old, i, end)
            for gone in old.children[i:end + 1]:
                for n in gone.walk():
                    self._by_path.pop(n.path, None)
            del old.children[i:end + 1]
            self._emit("removed", old, i, end)
            i -= 1
        # insertions, in order, as contiguous runs
        existing = {c.path: c for c in old.children}
        row = 0
        while row < len(new.children):
            if new.children[row].path in existing:
                row += 1
                continue
            start = row
            while row < len(new.children) and new.children[row].path not in existing:
                row += 1
            self._emit("about_to_insert", old, start, row - 1)
            for child in new.children[start:row]:
                child.parent = old
                for n in child.walk():
                    self._by_path[n.path] = n
            old.children[start:start] = new.children[start:row]
            self._emit("inserted", old, start, row - 1)
        # same children now; a child that kept its key but moved would need a move: rebuild order
        if [c.path for c in old.children] != new_keys:  # pragma: no cover - keys are unique per parent
            raise RuntimeError("layer tree merge lost order")
        for o, n in zip(old.children, new.children):
            if o is n:
                continue
            changed = {f for f in DATA_FIELDS if getattr(o, f) != getattr(n, f)}
            for f in changed:
                setattr(o, f, getattr(n, f))
            if changed:
                self._emit("changed", o, changed)
            self._merge(o, n)
