"""``main.py layers``: print the layer tree."""
from __future__ import annotations

import argparse

from engine.units import human_count as human

from .common import add_input_arguments, add_model_arguments, apply_input_arguments, load_session

HELP = "print the layer tree (name, type, output shape, parameters, trainable)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    add_input_arguments(parser)
    parser.add_argument("--depth", type=int, default=0,
                        help="only show layers this deep, plus the output layer (0: all)")


def run(args: argparse.Namespace) -> int:
    from engine.errors import GraftError

    if args.depth < 0:
        raise GraftError(f"The depth must be 0 (all layers) or more (got {args.depth}).")
    session = load_session(args)
    apply_input_arguments(session, args)
    tree = session.tree
    print(f"{session.describe()}  input {session.input_spec.describe()}")
    for note in session.network.notes:
        print(f"note: {note}")
    rows = []
    for node in tree:
        depth = node.path.count(".")
        if args.depth and depth >= args.depth and not node.is_output:
            continue  # the output layer always shows: it is what the user came to replace
        shape = "x".join(str(d) for d in node.out_shape) if node.out_shape else "-"
        flag = {"trainable": "yes", "frozen": "no", "partial": "partly", "none": ""}[node.frozen_state]
        mark = "  <- output layer" if node.is_output else ""
        if node.kind == "head" and node.read_by and node.read_by[0]:
            mark += f"  reads {node.read_by[0]}"
        elif node.kind == "layer" and node.read_by:
            mark += f"  <- head{'s' if len(node.read_by) > 1 else ''} {', '.join(node.read_by)}"
        if node.unused:
            mark += "  (not computed: every head reads an earlier layer)"
        rows.append(("  " * depth + node.name, node.type_name, shape, human(node.params) if node.params else "0", flag, mark))
    widths = [max(len(r[i]) for r in rows + [("layer", "type", "output", "params", "trainable", "")]) for i in range(5)]
    header = ("layer", "type", "output", "params", "trainable")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + r[5])
    total = sum(p.numel() for p in session.model.parameters())
    trainable = sum(p.numel() for p in session.model.parameters() if p.requires_grad)
    print(f"{len(tree)} layers, {human(total)} parameters ({human(trainable)} trainable), "
          f"features {tree.feature_dim}, tree built in {tree.build_seconds * 1000:.0f} ms")
    unused = session.unused_layers()
    if unused:
        print(f"{len(unused)} layers are not computed: every head reads an earlier layer "
              f"({', '.join(session.model.trunk.layer_taps)}).")
    return 0
