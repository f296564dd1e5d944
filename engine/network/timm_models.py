"""timm networks by name: ``timm:NAME`` (``timm:resnet18``, ``timm:convnext_small.fb_in22k``, …).

timm is imported only when a timm network is asked for: it takes seconds. Nothing downloads. Weights come
from a file the user names (read by :mod:`engine.network.loading` like any state dict), or from the
Hugging Face hub cache (or the torch hub cache, timm's older home) when they are already on this machine;
those cached files are loaded by timm itself from the local path, so its own checkpoint conversions apply.
How images are prepared (size, crop, mean/std, resize filter) comes from timm's pretrained configuration.
"""
from __future__ import annotations

import contextlib
import difflib
import math
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from engine.errors import GraftError
from engine.network.preprocess import RESAMPLE, InputSpec

PREFIX = "timm:"

# A short list for the model dialog: popular, small-to-medium ImageNet classifiers (any other timm name
# can be typed in). Each is a timm name with its default weights tag, or an explicit tag.
POPULAR = ("resnet18", "resnet50", "efficientnet_b0", "mobilenetv3_large_100", "mobilenetv4_conv_small",
           "convnext_atto", "convnext_tiny", "convnext_small.fb_in22k", "convnextv2_tiny", "regnety_016",
           "vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224", "deit_small_patch16_224",
           "swin_tiny_patch4_window7_224", "efficientvit_b1.r224_in1k")

# timm's resize filters that Graft's preprocessing does not have: the nearest one it has.
_INTERPOLATION = {"box": "bilinear", "hamming": "bilinear", "random": "bilinear"}


def is_timm(name: Any) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def popular_names() -> list[str]:
    return [PREFIX + n for n in POPULAR]


def _timm():
    try:
        import timm
    except ImportError:
        raise GraftError("timm networks need the timm package, which is not installed "
                         "(pip install timm).") from None
    return timm


def model_name(arch: str) -> str:
    """``timm:NAME`` -> NAME, checked against timm's registry (and the weights tag, when one is given)."""
    name = arch[len(PREFIX):].strip() if is_timm(arch) else arch
    if not name:
        raise GraftError("Name a timm architecture after 'timm:', e.g. timm:resnet18.")
    timm = _timm()
    from timm.models import split_model_name_tag

    base, tag = split_model_name_tag(name)
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(PREFIX + c for c in close)}?" if close else ""
        raise GraftError(f"timm has no architecture named {base!r}.{hint}")
    if tag and name not in timm.list_pretrained(f"{base}.*"):
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{base}.*")]
        known = f" Its tags: {', '.join(tags[:8])}{' …' if len(tags) > 8 else ''}." if tags else ""
        raise GraftError(f"timm's {base} has no weights tagged {tag!r}.{known}")
    return name


def build(arch: str, *, meta: bool = False,
          num_classes: int | None = None) -> tuple[nn.Module, InputSpec, list[str] | None]:
    """``timm:NAME`` with random weights (on the meta device: shapes only); ``num_classes``: an output
    layer of that many classes instead of the one the weights tag has."""
    name = model_name(arch)
    timm = _timm()
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        with torch.device("meta") if meta else contextlib.nullcontext():
            module = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, RuntimeError, AssertionError) as exc:
        raise GraftError(f"timm could not build {arch} ({exc}).") from None
    return module, input_spec(module), class_names(module)


def input_spec(module: nn.Module) -> InputSpec:
    """Graft's preprocessing from timm's evaluation transform for ``module``'s weights: resize the shorter
    side to floor(size / crop_pct), centre-crop, timm's mean/std and resize filter."""
    from timm.data import resolve_data_config

    config = resolve_data_config(model=module)
    _, height, width = config["input_size"]
    if height != width:
        raise GraftError(f"This timm network takes {height}x{width} images: Graft's input is square.")
    crop_pct = config.get("crop_pct") or 0.875  # timm's DEFAULT_CROP_PCT
    interpolation = config.get("interpolation") or "bilinear"
    return InputSpec(size=int(height), resize=max(int(height), math.floor(height / crop_pct)),
                     mean=[float(v) for v in config["mean"]], std=[float(v) for v in config["std"]],
                     interpolation=interpolation if interpolation in RESAMPLE else
                     _INTERPOLATION.get(interpolation, "bilinear"))


def preprocessing_notes(module: nn.Module) -> list[str]:
    """Where Graft's preprocessing can only approximate timm's for these weights."""
    from timm.data import resolve_data_config

    config = resolve_data_config(model=module)
    notes = []
    if config.get("crop_mode", "center") != "center":
        notes.append(f"timm prepares these weights' images with crop mode {config['crop_mode']!r}; Graft "
                     "resizes the shorter side and centre-crops.")
    if (config.get("interpolation") or "bilinear") not in RESAMPLE:
        notes.append(f"timm resizes with {config['interpolation']!r}, which Graft does not have: it uses "
                     f"{input_spec(module).interpolation}.")
    return notes


def class_names(module: nn.Module) -> list[str] | None:
    """The ImageNet class names of ``module``'s output layer, when its weights tag says which subset
    (1k, 22k …) and the output layer has that many classes."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(module)
    if not subset:
        return None
    info = ImageNetInfo(subset)
    if info.num_classes() != getattr(module, "num_classes", None):
        return None
    return [d.split(",")[0].strip() for d in info.label_descriptions()]


def _pretrained_cfg(arch: str) -> dict[str, Any]:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name(arch))
    return cfg.to_dict() if cfg is not None else {}


def cached_weights(arch: str) -> Path | None:
    """The file holding ``arch``'s pretrained weights on this machine, if there is one: the Hugging Face
    hub cache (looked up locally, never fetched), else timm's older torch hub cache."""
    from huggingface_hub import try_to_load_from_cache

    cfg = _pretrained_cfg(arch)
    repo = cfg.get("hf_hub_id")
    if repo:
        files = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
        for filename in files:
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    url = cfg.get("url")
    if url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)
        if path.is_file():
            return path
    return None


def load_cached(arch: str, path: Path) -> nn.Module:
    """``arch`` with the pretrained weights in ``path`` (found by :func:`cached_weights`), loaded by timm
    from that local file (weights only), with its own conversions for the checkpoint's format."""
    timm = _timm()
    try:
        return timm.create_model(model_name(arch), pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    except (RuntimeError, ValueError, KeyError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise GraftError(f"The cached weights for {arch} ({path}) could not be loaded: {first}") from None


def missing_weights_message(arch: str) -> str:
    """Why no pretrained weights loaded, and what the user can do (Graft never downloads)."""
    from huggingface_hub import constants

    repo = _pretrained_cfg(arch).get("hf_hub_id")
    where = f"{repo} is not in the Hugging Face hub cache ({constants.HF_HUB_CACHE})" if repo else \
        "timm names no hub weights for it"
    return (f"No pretrained weights for {arch} on this machine (Graft never downloads): {where}. Point to a "
            "weights file (a state dict or .safetensors of this timm model), put the weights in that cache, "
            "or ask for random weights.")


def describe_weights(path: str) -> str:
    """A weights file as the user knows it: the hub repository for a Hugging Face cache file
    (…/models--timm--resnet18.a1_in1k/snapshots/<rev>/model.safetensors), else the file name."""
    parts = Path(path).parts
    for part in parts:
        if part.startswith("models--"):
            return part[len("models--"):].replace("--", "/")
    return Path(path).name


def declared_classifier(module: nn.Module) -> tuple[str, ...] | None:
    """The classifier layers a timm network declares (``fc``, ``head.fc``, ``classifier``, ``head``;
    two for distilled ones), or None for a network that is not timm's."""
    cfg = getattr(module, "pretrained_cfg", None)
    if not isinstance(cfg, dict) or not type(module).__module__.startswith("timm."):
        return None
    names = cfg.get("classifier")
    if isinstance(names, str):
        return (names,)
    if isinstance(names, (tuple, list)) and all(isinstance(n, str) for n in names):
        return tuple(names)
    return None
