"""``main.py diff``: what changed between two models (surgery and training), as a table."""
from __future__ import annotations

import argparse

HELP = ("compare two models (each a .graft project, a model name or a model file): layers removed, added "
        "or reshaped, and how far each layer's weights moved (||W_after - W_before|| / ||W_before||)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("before", metavar="BEFORE", help="a .graft project, a model name (resnet18, default) or a model file")
    parser.add_argument("after", metavar="AFTER", help="the same kinds as BEFORE")
    parser.add_argument("--all", action="store_true", help="list every module, not only those that changed")
    parser.add_argument("--json", action="store_true", help="print the comparison as one JSON object")
    parser.add_argument("--arch", help="architecture of a state-dict file on either side (guessed when left out)")
    parser.add_argument("--random-weights", action="store_true",
                        help="accept random weights for a model name (its structure is compared, not its weights)")
    parser.add_argument("--trust", action="store_true",
                        help="allow pickled model files, also as the source of a project (they can run code)")


def run(args: argparse.Namespace) -> int:
    import json

    from engine.project.diff import compare, load_side

    sides = [load_side(s, random_init=args.random_weights, trust=args.trust, arch=args.arch)
             for s in (args.before, args.after)]
    result = compare(*sides)
    if args.json:
        rows = result.rows if args.all else result.changed()
        print(json.dumps({"before": result.before, "after": result.after, "weights_compared": result.weights_compared,
                          "notes": result.notes, "counts": result.counts(), "rows": [r.to_dict() for r in rows]}))
    else:
        print(result.format(all_rows=args.all))
    return 0
