"""``main.py explain``: where each head of a project finds its evidence in an image (Grad-CAM heatmaps)."""
from __future__ import annotations

import argparse

HELP = "write each head's heatmap (Grad-CAM) for images: DIR/<image>.<head>.png (overlay) and .npy (float32 [0, 1])"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", metavar="FILE.graft", help="a project saved by Graft (e.g. by 'train')")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="the images to explain")
    parser.add_argument("--head", action="append", default=[], metavar="NAME",
                        help="only this head (repeatable; default: every head, or with --class the heads that have it)")
    parser.add_argument("--class", dest="target", metavar="NAME",
                        help="explain this class, label or target instead of each head's own answer")
    parser.add_argument("--layer", metavar="PATH",
                        help="the layer to take the heatmap at (a module path, as 'main.py layers' lists them; "
                             "default: the last spatial layer the heads read)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the folder to write into (made if missing)")
    parser.add_argument("--trust", action="store_true",
                        help="the project was made from a pickled model file: allow loading that file again "
                             "(it can run code: only for files you trust)")


def run(args: argparse.Namespace) -> int:
    """Heatmaps for every readable image; an unreadable one gets its own error line on stderr, the
    others are still written, and the exit code is then 1."""
    import sys
    from pathlib import Path

    import numpy as np

    from engine.errors import GraftError
    from engine.explain.heatmap import explain, save_heatmaps, target_index
    from engine.explain.layers import resolve_layer
    from engine.project.project_file import open_project

    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise GraftError(f"--out {out}: a file, not a folder.")
    session = open_project(Path(args.project).expanduser(), trust=args.trust)
    specs = {h.name: h for h in session.heads}
    if not specs:
        raise GraftError(f"{Path(args.project).name} has no heads to explain.")
    heads = list(dict.fromkeys(args.head)) or None
    if args.target and heads is None:
        heads = [n for n, s in specs.items() if args.target in s.label_names]
        if not heads:
            raise GraftError(f"No head has a class, label or target {args.target!r}.")
    for name in heads or []:
        if name not in specs:
            raise GraftError(f"The project has no head {name!r} (its heads: {', '.join(specs)}).")
    for name in heads or list(specs):  # a bad class or layer is one message, before any image
        if args.target:
            target_index(specs[name], args.target, np.zeros(specs[name].outputs))
    layer, _ = resolve_layer(session, args.layer)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GraftError(f"Cannot make the folder {out}: {exc.strerror or exc}.") from None
    failed = 0
    for image in args.images:
        try:
            heatmaps = explain(session, image, heads=heads, target=args.target, layer=layer)
            save_heatmaps(heatmaps, image, out)
        except GraftError as exc:
            failed += 1
            sys.stdout.flush()
            print(f"graft: error: {exc}", file=sys.stderr, flush=True)
            continue
        print(image)
        for hm in heatmaps:
            print(f"  {hm.describe()} -> {out / f'{Path(image).stem}.{hm.head}.png'}")
    return 1 if failed else 0
