"""Loading networks: the bundled EfficientNet-Lite, torchvision architectures, and the user's files.

Nothing here downloads: torchvision weights come from a file the user names or the torch hub cache.
Pickles are loaded with ``weights_only=True`` unless the user has said they trust the file.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import GraftError
from .preprocess import InputSpec

DEFAULT_MODEL = "efficientnet_lite0"
LITE_NAMES = {f"efficientnet_lite{i}": i for i in range(3)}
STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "weights")


@dataclass
class ModelSource:
    """Where a network came from: enough to rebuild its architecture when a project is reopened."""

    kind: str  # "builtin" | "torchvision" | "file"
    name: str  # builtin/torchvision name, or the file path
    arch: str | None = None  # architecture of a state-dict file
    weights: str | None = None  # "pretrained", "random", or a weights file path
    format: str | None = None  # file: "state_dict" | "safetensors" | "torchscript" | "pickle"
    trusted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSource":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def describe(self) -> str:
        if self.kind == "file":
            what = f"{self.arch} weights" if self.arch else (self.format or "model")
            return f"{Path(self.name).name} ({what})"
        if self.weights == "random":
            return f"{self.name} (random weights)"
        if self.weights and self.weights != "pretrained":
            return f"{self.name} ({Path(self.weights).name})"
        return f"{self.name} (ImageNet pretrained)"


@dataclass
class LoadedNetwork:
    module: nn.Module
    input_spec: InputSpec
    source: ModelSource
    notes: list[str] = field(default_factory=list)
    class_names: list[str] | None = None


# -- torchvision ------------------------------------------------------------------------------------

def torchvision_names() -> list[str]:
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def _tv_weights_enum(name: str):
    import torchvision

    try:
        return torchvision.models.get_model_weights(name)
    except (ValueError, KeyError):
        return None


def _spec_from_tv_weights(weights: Any) -> InputSpec:
    t = weights.transforms()
    interp = getattr(t, "interpolation", None)
    interp_name = getattr(interp, "value", "bilinear")
    return InputSpec(size=int(t.crop_size[0]), resize=int(t.resize_size[0]), mean=[float(v) for v in t.mean],
                     std=[float(v) for v in t.std], interpolation=interp_name if interp_name in
                     ("nearest", "bilinear", "bicubic") else "bilinear")


def hub_cache_file(name: str) -> Path | None:
    """The torch hub cache file holding ImageNet weights for ``name``, if one is there."""
    enum = _tv_weights_enum(name)
    if enum is None:
        return None
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    members = [enum.DEFAULT] + [w for w in enum if w is not enum.DEFAULT]
    for w in members:
        path = folder / os.path.basename(w.url)
        if path.is_file():
            return path
    return None


def _tv_spec(name: str) -> tuple[InputSpec, list[str] | None]:
    enum = _tv_weights_enum(name)
    if enum is None:
        return InputSpec(), None
    return _spec_from_tv_weights(enum.DEFAULT), list(enum.DEFAULT.meta.get("categories") or []) or None


def _build_tv(name: str) -> nn.Module:
    import torchvision

    return torchvision.models.get_model(name, weights=None)


# -- reading files ------------------------------------------------------------------------------------

def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in n or n.startswith("code/") for n in zf.namelist())


def read_weights_file(path: Path, trust: bool = False) -> tuple[str, Any]:
    """Return (format, payload): a state dict, a TorchScript module, or (trusted) a pickled module."""
    if not path.is_file():
        raise GraftError(f"{path}: no such file.")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return "safetensors", load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise GraftError(f"{path.name} is not a valid safetensors file ({exc}).") from None
    if _is_torchscript(path):
        try:
            return "torchscript", torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - any failure means: not a loadable TorchScript file
            raise GraftError(f"{path.name} looks like TorchScript but could not be loaded ({exc}).") from None
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # not a pickle of Python objects: just not a model
            raise GraftError(f"{path.name} is not a model file Graft can read.") from None
        if not trust:
            raise GraftError(
                f"{path.name} contains pickled Python objects, which can run code when loaded. "
                "Load it only if you trust where it came from (tick 'I trust this file' / pass --trust).") from None
        try:
            payload = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001
            raise GraftError(f"{path.name} could not be unpickled ({exc.__class__.__name__}: {exc}).") from None
        if isinstance(payload, nn.Module):
            return "pickle", payload
    except Exception as exc:  # noqa: BLE001 - text files, truncated archives, random bytes …
        raise GraftError(f"{path.name} is not a model file Graft can read "
                         f"(expected TorchScript, a state_dict .pt/.pth, or .safetensors; {exc.__class__.__name__}).") from None
    if isinstance(payload, nn.Module):
        return "pickle", payload
    return "state_dict", _unwrap_state_dict(payload, path)


def _unwrap_state_dict(payload: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(payload, dict):
        for key in STATE_DICT_WRAPPERS:
            if key in payload and isinstance(payload[key], dict):
                payload = payload[key]
                break
    if not isinstance(payload, dict) or not payload or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise GraftError(f"{path.name} holds no model weights (expected a state_dict of tensors).")
    if all(k.startswith("module.") for k in payload):
        payload = {k[len("module."):]: v for k, v in payload.items()}
    return payload


def _signature(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


GUESS_ARCHS = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
               "efficientnet_b0", "efficientnet_b1", "convnext_tiny", "densenet121", "regnet_y_400mf",
               "shufflenet_v2_x1_0", "vgg16", "vit_b_16", "swin_t")


def _build_arch(arch: str, meta: bool = False) -> tuple[nn.Module, InputSpec, list[str] | None]:
    if arch in LITE_NAMES:
        from .efficientnet_lite import IMAGENET_CLASSES, build_efficientnet_lite

        if meta:
            with torch.device("meta"):
                module, spec = build_efficientnet_lite(LITE_NAMES[arch], pretrained=False)
        else:
            module, spec = build_efficientnet_lite(LITE_NAMES[arch], pretrained=False)
        return module, spec, list(IMAGENET_CLASSES)
    if arch not in torchvision_names():
        raise GraftError(f"Unknown architecture {arch!r}. Known: efficientnet_lite0-2 and torchvision's "
                         "classification models (resnet18, mobilenet_v3_large, vit_b_16, …).")
    spec, classes = _tv_spec(arch)
    if meta:
        with torch.device("meta"):
            return _build_tv(arch), spec, classes
    return _build_tv(arch), spec, classes


def guess_arch(state: dict[str, torch.Tensor]) -> str | None:
    """The known architecture whose state_dict keys and shapes match exactly (built on the meta device)."""
    want = {k: tuple(v.shape) for k, v in state.items()}
    for arch in list(LITE_NAMES) + list(GUESS_ARCHS):
        try:
            module, _, _ = _build_arch(arch, meta=True)
        except Exception:  # noqa: BLE001 - an architecture that cannot build here is simply skipped
            continue
        if _signature(module) == want:
            return arch
    return None


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    result = module.load_state_dict(state, strict=False)
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise GraftError(f"The weights do not fit {what}: {'; '.join(parts)}.")


# -- the one entry point ------------------------------------------------------------------------------

def load_network(spec: str | os.PathLike = "default", *, weights: str | os.PathLike | None = None,
                 arch: str | None = None, random_init: bool = False, trust: bool = False) -> LoadedNetwork:
    """Load ``spec``: "default", a built-in or torchvision architecture name, or a model file.

    ``weights``: a weights file for an architecture name; ``arch``: the architecture of a state-dict
    file (guessed when left out); ``random_init``: accept random weights when no pretrained ones are
    available; ``trust``: allow a full pickled module (it can run code).
    """
    text = str(spec)
    if text in ("", "default"):
        text = DEFAULT_MODEL
    path = Path(text).expanduser()
    if text in LITE_NAMES or (text not in ("",) and not path.exists() and "/" not in text and "." not in text):
        return _load_named(text, weights, random_init)
    if not path.exists():
        raise GraftError(f"{text}: no such file or model name.")
    return load_file(path, arch=arch, trust=trust)


def _load_named(name: str, weights: str | os.PathLike | None, random_init: bool) -> LoadedNetwork:
    if name in LITE_NAMES and weights is None:
        from .efficientnet_lite import IMAGENET_CLASSES, build_efficientnet_lite

        module, spec = build_efficientnet_lite(LITE_NAMES[name], pretrained=not random_init)
        source = ModelSource("builtin", name, weights="random" if random_init else "pretrained")
        notes = [f"{name} has random weights, as asked: it has learned nothing yet."] if random_init else []
        return LoadedNetwork(module.eval(), spec, source, notes, list(IMAGENET_CLASSES))
    module, spec, classes = _build_arch(name)
    kind = "builtin" if name in LITE_NAMES else "torchvision"
    if weights is not None:
        fmt, state = read_weights_file(Path(weights))
        if fmt not in ("state_dict", "safetensors"):
            raise GraftError(f"{Path(weights).name} is a whole model, not weights for {name}: open it directly.")
        _load_state(module, state, name)
        return LoadedNetwork(module.eval(), spec, ModelSource(kind, name, weights=str(weights)), [], classes)
    cached = hub_cache_file(name)
    if cached is not None:
        _, state = read_weights_file(cached)
        _load_state(module, state, name)
        return LoadedNetwork(module.eval(), spec, ModelSource(kind, name, weights=str(cached)),
                             [f"Weights from the torch hub cache: {cached}"], classes)
    if not random_init:
        raise GraftError(f"No pretrained weights for {name} on this machine (Graft never downloads). "
                         f"Point to a weights file, put it in {Path(torch.hub.get_dir()) / 'checkpoints'}, "
                         "or ask for random weights.")
    return LoadedNetwork(module.eval(), spec, ModelSource(kind, name, weights="random"),
                         [f"{name} has random weights, as asked: it has learned nothing yet."], None)


def load_file(path: Path, *, arch: str | None = None, trust: bool = False) -> LoadedNetwork:
    fmt, payload = read_weights_file(path, trust=trust)
    source = ModelSource("file", str(path.resolve()), format=fmt, trusted=trust)
    if fmt in ("torchscript", "pickle"):
        notes = ["TorchScript model: heads attach to its output; its layers cannot be cut."] if fmt == "torchscript" else []
        return LoadedNetwork(payload.eval(), InputSpec(), source, notes, None)
    state = payload
    if any(k.startswith("_conv_stem.") for k in state) and arch is None:
        raise GraftError(f"{path.name} uses the original EfficientNet-PyTorch key names; "
                         "use the built-in efficientnet_lite models instead.")
    if arch is None:
        arch = guess_arch(state)
        if arch is None:
            raise GraftError(f"{path.name} holds weights for an architecture Graft does not recognise: "
                             "name the architecture (--arch NAME).")
    module, spec, classes = _build_arch(arch)
    _load_state(module, state, arch)
    source.arch = arch
    return LoadedNetwork(module.eval(), spec, source, [f"Recognised as {arch} weights."], classes)


def rebuild(source: ModelSource) -> LoadedNetwork:
    """The architecture of ``source`` (weights need not be right: a project loads its own)."""
    if source.kind in ("builtin", "torchvision"):
        module, spec, classes = _build_arch(source.name)
        return LoadedNetwork(module.eval(), spec, source, [], classes)
    if source.format in ("torchscript", "pickle"):
        path = Path(source.name)
        if not path.is_file():
            raise GraftError(f"This project was made from {path}, which is gone: TorchScript and pickled "
                             "models are rebuilt from their original file.")
        return load_file(path, trust=source.trusted)
    module, spec, classes = _build_arch(source.arch or "")
    return LoadedNetwork(module.eval(), spec, source, [], classes)


def detect_output_layer(body: nn.Module, order: list[str]) -> str | None:
    """The classifier's last layer: the last Linear to run (``fc``, ``classifier.1``, ``heads.head`` …),
    else a 1x1 conv inside a top-level ``classifier``/``fc``/``head`` (SqueezeNet-style)."""
    if isinstance(body, torch.jit.ScriptModule):
        return None
    modules = dict(body.named_modules())
    linears = [n for n in order if isinstance(modules.get(n), nn.Linear)]
    if linears:
        return linears[-1]
    for n in reversed(order):
        top = n.split(".")[0]
        if top in ("classifier", "fc", "head", "heads") and isinstance(modules.get(n), nn.Conv2d):
            return n
    return None
