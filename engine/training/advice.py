"""Rules of thumb for how much of a pretrained network to train, given how much labelled data there is.

Pure Python: it reads a session's layer tree (plain nodes) and never imports torch or Qt.

* little data (fewer than :data:`SMALL` labelled images): train the heads only (preset ``heads-only``);
* some (fewer than :data:`LARGE`): unfreeze the last blocks (preset ``up-to:LAYER``, freezing the trunk up
  to and including ``LAYER``, a top-level block about two thirds of the way through);
* a lot: fine-tune everything (preset ``none``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from engine.network.layer_tree import LayerNode
    from engine.surgery.session import Session

SMALL = 1_000
LARGE = 10_000
FRACTION = 2 / 3  # where, through the trunk's blocks, freezing stops
TINY = 0.01  # blocks with less than this share of the candidates' weights (stems, norms) do not count


@dataclass(frozen=True)
class Advice:
    """A freezing preset (for :func:`engine.surgery.operations.freeze_preset`) and a short sentence saying why."""

    preset: str
    text: str
    layer: str | None = None


def _images(n: int) -> str:
    return f"{n:,} labelled image" + ("" if n == 1 else "s")


def freeze_advice(n_labelled: int, session: Session | Any | None = None) -> Advice:
    """The rule of thumb for ``n_labelled`` images. Without a session (or with a trunk that has no
    blocks to choose from) the middle case falls back to training the heads only."""
    n = max(0, int(n_labelled))
    if n == 0:
        return Advice("heads-only", "No labelled images yet: start by training the heads only.")
    if n < SMALL:
        return Advice("heads-only", f"{_images(n)}: train the heads only. With this little data the "
                                    "pretrained layers are best left as they are.")
    if n >= LARGE:
        return Advice("none", f"{_images(n)}: enough to fine-tune everything.")
    if session is None:
        return Advice("heads-only", f"{_images(n)}: train the heads first, then unfreeze the network's "
                                    "last blocks.")
    blocks = trunk_blocks(session)
    if len(blocks) < 2:
        return Advice("heads-only", f"{_images(n)}: train the heads first; this network has no separate "
                                    "blocks to unfreeze.")
    i = freeze_index(len(blocks))
    layer, first_trained = blocks[i].path, blocks[i + 1].path
    return Advice(f"up-to:{layer}", f"{_images(n)}: unfreeze the last blocks. Freeze up to {layer} "
                                    f"and train from {first_trained} on, with the heads.", layer)


def freeze_index(n_blocks: int) -> int:
    """The block to freeze up to: the one whose end is closest to two thirds of the way through,
    leaving at least one block to train."""
    best = min(range(n_blocks), key=lambda i: (abs((i + 1) / n_blocks - FRACTION), -i))
    return min(best, n_blocks - 2)


def _holds(node: LayerNode, path: str | None) -> bool:
    return bool(path) and (path == node.path or path.startswith(node.path + "."))


def trunk_blocks(session: Session | Any) -> list[LayerNode]:
    """The trunk's blocks in forward order: the top-level layers with weights, leaving out the one
    holding the classifier (output) layer and tiny ones (stem convs, norms). While fewer than three
    remain, descend into the biggest (``features`` -> ``features.0`` … ``features.8``)."""
    tree = session.tree
    rank = {path: i for i, path in enumerate(getattr(tree, "order", []) or [])}
    output = getattr(session, "output_layer", None)
    nodes = [n for n in tree.root.children if n.kind == "layer"]
    while True:
        candidates = [n for n in nodes if n.params > 0 and not _holds(n, output) and (not rank or n.path in rank)]
        total = sum(n.params for n in candidates)
        candidates = [n for n in candidates if n.params >= TINY * total]
        candidates.sort(key=lambda n: rank.get(n.path, 0))
        if len(candidates) >= 3 or not candidates:
            return candidates
        biggest = max(candidates, key=lambda n: n.params)
        if not biggest.children:
            return candidates
        nodes = list(biggest.children)
