"""Helpers shared by the subcommands."""
from __future__ import annotations

import argparse
from pathlib import Path

DATA_HELP = ("an image folder (root/<class>/<image>), a CSV manifest with an 'image' column, "
             "or 'demo' for the bundled demo data (generated offline on first use; ./demo is a folder)")


def data_path(text: str) -> Path:
    """The data the user named; the bare word ``demo`` is the offline demo manifest (``./demo`` is a folder)."""
    if text == "demo":
        from engine.data.demo_data import ensure_demo_data

        return ensure_demo_data()
    return Path(text).expanduser()


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="default",
                        help="built-in or torchvision architecture name, timm:NAME (timm:convnext_tiny, "
                             "timm:vit_small_patch16_224.augreg_in21k …), or a model file "
                             "(default: efficientnet_lite0)")
    parser.add_argument("--weights", help="weights file for an architecture name (.pth/.safetensors); a timm:NAME "
                                          "without one uses the Hugging Face cache, never a download")
    parser.add_argument("--arch",
                        help="architecture of a state-dict file (guessed when left out; timm:NAME for timm's)")
    parser.add_argument("--random-weights", action="store_true", help="accept random weights when none are available")
    parser.add_argument("--trust", action="store_true",
                        help="allow a pickled model file, also as the source of a .graft project "
                             "(it can run code: only for files you trust)")


def load_session(args: argparse.Namespace):
    """A Session from --model/--weights/..., or from a .graft project."""
    from engine.network.loading import load_network
    from engine.surgery.session import Session

    model = str(args.model)
    if model.endswith(".graft"):
        from engine.project.project_file import open_project

        return open_project(model, trust=bool(getattr(args, "trust", False)))
    network = load_network(model, weights=args.weights, arch=args.arch, random_init=args.random_weights,
                           trust=args.trust)
    return Session(network)


def add_input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--channels", type=int, metavar="N",
                        help="input channels: 1 reads images as greyscale (the first convolution gets the sum of "
                             "its RGB kernels), 4 or more reads RGBA images or multi-band TIFFs (the extra bands' "
                             "kernels start as the mean of the RGB kernels), 3 is RGB")
    parser.add_argument("--input-size", type=int, metavar="PIXELS",
                        help="input size in pixels (the centre crop, e.g. 320 for small details; the resize before "
                             "it keeps its ratio)")


def apply_input_arguments(session, args: argparse.Namespace) -> None:
    """--channels / --input-size as surgeries on ``session`` (nothing when it already reads that input)."""
    from engine.surgery.operations import SetInputChannels, SetInputSize

    if args.channels is not None:
        op = SetInputChannels(args.channels)  # a bad count is refused here, whatever the model
        if args.channels != session.input_spec.channels:
            session.do(op)
    if args.input_size is not None:
        op = SetInputSize(args.input_size)
        if args.input_size != session.input_spec.size:
            session.do(op)
