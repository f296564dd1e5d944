"""A training script to take away: one readable Python file that trains what a project trains, without Graft.

:func:`training_script` writes the project's recipe as data (the network and its starting weights, the
layers surgery removed and the cut, the heads with their seeds, the frozen layers, the training
settings, the ONNX metadata) into ``train_script.py.tmpl``, together with the source of the Graft code
that decides the numbers: the EfficientNet-Lite architecture and its checkpoint key names, the trunk
with its cut, the heads, the image preprocessing and augmentation, the seeded split, the masked losses,
the batch order and the learning-rate schedule. Those are copied from the running Graft with
:func:`inspect.getsource`, so the script computes what Graft computes and cannot drift from it.

The script imports torch, torchvision, NumPy and Pillow only; it writes ``DIR/model.onnx`` with the
metadata keys of ``main.py export`` (added to the file as protobuf fields, without the onnx package) and
``DIR/metrics.json`` with the validation metrics of the epoch it kept.
"""
from __future__ import annotations

import inspect
import pprint
import string
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from engine import __version__
from engine.errors import GraftError
from engine.files import atomic_write

if TYPE_CHECKING:
    from engine.surgery.session import Session

TEMPLATE = Path(__file__).with_name("train_script.py.tmpl")
OPSET = 18
TRAINING_KEYS = ("epochs", "batch_size", "lr_heads", "lr_trunk", "weight_decay", "warmup_epochs", "augment",
                 "patience", "seed", "cache_features")


# Graft reads multi-band TIFFs with tifffile; the script reads what Pillow reads (RGB projects only).
PILLOW_ONLY = '''def is_tiff(path) -> bool:
    """A TIFF Pillow cannot open (more bands than RGB) is not an image for this script, which reads images
    with Pillow alone."""
    return False


def read_tiff(path, exif=True):
    raise ValueError(f"{path}: a TIFF of more bands than RGB")


def _tiff_image(path, exif=True):
    return read_tiff(path, exif)'''


def _assignment(module: Any, name: str) -> str:
    """A module-level ``name = …`` statement as written in ``module`` (for values without a repr, such as
    a table of lambdas)."""
    import ast

    source = inspect.getsource(module)
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.get_source_segment(source, node)
    raise LookupError(f"{module.__name__} assigns no {name}")


def _sources(*objects: Any) -> str:
    return "\n\n".join(textwrap.dedent(inspect.getsource(o)).rstrip() + "\n" for o in objects)


def _constants(**values: Any) -> str:
    return "\n".join(f"{name} = {pprint.pformat(value, width=110, sort_dicts=False)}" for name, value in values.items())


# -- what the project is ------------------------------------------------------------------------------

def _network(session: "Session") -> tuple[dict[str, Any], str, str]:
    """``NETWORK`` (architecture, starting weights), the architecture's code and a sentence about it."""
    from engine.network.loading import LITE_NAMES

    src = session.source
    arch_name = src.arch if src.kind == "file" else src.name
    if src.kind == "timm" or str(arch_name or "").startswith("timm:"):
        raise GraftError(f"The project starts from the timm network {arch_name}: the standalone script builds "
                         "networks with torchvision only (or Graft's bundled EfficientNet-Lite).")
    if src.kind == "file":
        if src.format not in ("state_dict",) or not src.arch:
            what = {"torchscript": "a TorchScript model", "pickle": "a pickled model",
                    "safetensors": "a .safetensors file"}.get(src.format or "", "this model file")
            raise GraftError(f"The project starts from {what} ({Path(src.name).name}): a standalone script can "
                             "only rebuild a built-in or torchvision architecture from a .pt/.pth state dict.")
        arch, weights = src.arch, src.name
    else:
        arch = src.name
        weights = None if src.weights == "random" else src.weights
    naming = "state_dict"
    if arch in LITE_NAMES and weights == "pretrained":
        from engine.network.efficientnet_lite import checkpoint_path

        weights, naming = str(checkpoint_path(LITE_NAMES[arch])), "efficientnet-pytorch"
    elif weights == "pretrained":
        raise GraftError(f"The project's {arch} weights are not recorded as a file the script could load.")
    if weights is not None and Path(weights).suffix == ".safetensors":
        raise GraftError(f"The starting weights {Path(weights).name} are a .safetensors file; the script reads "
                         ".pt/.pth state dicts (torch.load): save them with torch.save and load that file instead.")
    network = {"architecture": arch, "num_classes": src.num_classes, "weights": weights, "weights_naming": naming}
    classes = f", num_classes={src.num_classes}" if src.num_classes else ""
    if arch in LITE_NAMES:
        from engine.network import efficientnet_lite as lite

        code = _constants(STEM_CHANNELS=lite.STEM_CHANNELS, HEAD_CHANNELS=lite.HEAD_CHANNELS,
                          NUM_CLASSES=lite.NUM_CLASSES, BASE_STAGES=lite.BASE_STAGES)
        code += "\n\n\n" + _sources(lite.LiteParams)
        code += "\n" + _constants(LITE_PARAMS=lite.LITE_PARAMS, _BN_KEYS=lite._BN_KEYS)
        code += "\n\n\n" + _sources(lite.round_filters, lite.round_repeats, lite.Conv2dSame, lite.ConvBNAct,
                                     lite.MBConv, lite.EfficientNetLite, lite.map_checkpoint_keys)
        code += (f"\n\ndef build_network() -> nn.Module:\n    \"\"\"{arch}, laid out as Graft lays it out.\"\"\"\n"
                 f"    return EfficientNetLite({LITE_NAMES[arch]}{classes})\n")
        code += ("\n\ndef checkpoint_names(body: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:\n"
                 "    \"\"\"The weights package's file names its tensors as EfficientNet-PyTorch does: rename them.\"\"\"\n"
                 "    if NETWORK[\"weights_naming\"] != \"efficientnet-pytorch\":\n        return state\n"
                 "    names = map_checkpoint_keys(body)\n    return {names[k]: v for k, v in state.items()}\n")
        what = f"EfficientNet-Lite{LITE_NAMES[arch]} (Graft's architecture, defined below)"
    else:
        code = (f"def build_network() -> nn.Module:\n    \"\"\"torchvision's {arch}.\"\"\"\n    import torchvision\n\n"
                f"    return torchvision.models.get_model({arch!r}, weights=None{classes})\n\n\n"
                "def checkpoint_names(body: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:\n"
                "    \"\"\"torchvision's own key names: nothing to rename.\"\"\"\n    return state\n")
        what = f"torchvision's {arch}"
    start = ("random weights" if weights is None else
             f"the weights in {Path(weights).name}" + (" (the efficientnet-lite pretrained package's file)"
                                                        if naming == "efficientnet-pytorch" else ""))
    return network, code, f"{what}{classes.replace(', ', ' with ').replace('=', ' ')}, starting from {start}"


def _surgery(session: "Session") -> dict[str, Any]:
    """The layers that are gone (an ``nn.Identity`` now: the deleted output layer, everything after a
    cut) and the cut layer. A layer that was an Identity already is listed too: replacing it again
    changes nothing."""
    body = session.model.trunk.body
    removed: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if isinstance(child, nn.Identity):
                removed.append(path)
            else:
                visit(path + ".", child)

    visit("", body)
    return {"removed": removed, "cut_at": session.model.trunk.cut_at}


def _head_seeds(session: "Session") -> dict[str, int | None]:
    """Each head's initial-weights seed: that of the operation that built its module (None: unseeded)."""
    from engine.surgery.operations import AddHead

    built = {id(op.module): op.seed for op in session.applied if isinstance(op, AddHead) and op.module is not None}
    return {name: built.get(id(module)) for name, module in session.model.heads.items()}


def _frozen(model: nn.Module) -> list[str]:
    """The frozen parameters as the fewest module paths (a parameter's name where its module is split)."""
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    out: list[str] = []

    def visit(prefix: str, module: nn.Module) -> None:
        names = [prefix + n for n, _ in module.named_parameters()]
        if not names:
            return
        if all(n in frozen for n in names):
            out.append(prefix.rstrip("."))
            return
        out.extend(prefix + n for n, _ in module.named_parameters(recurse=False) if prefix + n in frozen)
        for name, child in module.named_children():
            visit(f"{prefix}{name}.", child)

    visit("", model)
    return out


def _heads(session: "Session") -> tuple[str, list[str]]:
    seeds = _head_seeds(session)
    lines, words = [], []
    for h in session.heads:
        columns = h.columns or ([h.name] if h.kind == "single" else list(h.label_names))
        args = [f"{h.name!r}", f"{h.kind!r}", f"labels={h.label_names!r}", f"columns={columns!r}"]
        if h.hidden:
            args.append(f"hidden={list(h.hidden)!r}")
        if h.dropout:
            args.append(f"dropout={h.dropout!r}")
        if h.loss_weight != 1.0:
            args.append(f"loss_weight={h.loss_weight!r}")
        args.append(f"seed={seeds.get(h.name)!r}")
        if h.layer is not None:
            args.append(f"layer={h.layer!r}")
        lines.append(f"    Head({', '.join(args)}),")
        layers = " -> ".join([*(f"Linear {n} + ReLU" for n in h.hidden), f"Linear {h.outputs}"])
        words.append(f"'{h.name}' ({h.kind}, {h.outputs} outputs, {layers}"
                     + (f", reading layer {h.layer}" if h.layer is not None else "")
                     + (f", dropout {h.dropout:g}" if h.dropout else "") + (f", loss weight {h.loss_weight:g}"
                                                                           if h.loss_weight != 1.0 else "") + ")")
    return "HEADS = [\n" + "\n".join(lines) + "\n]", words


HEAD_CLASS = '''@dataclass
class Head:
    """A head: a small MLP on the trunk's features ([Linear, ReLU, Dropout] per hidden layer, then a
    Linear to one output per label). single: softmax over classes; multi: a sigmoid per label;
    regression: values in the data's units (it learns standardised targets)."""

    name: str
    kind: str
    labels: list[str]
    columns: list[str]  # the CSV columns it reads
    hidden: list[int] = field(default_factory=list)
    dropout: float = 0.0
    loss_weight: float = 1.0
    seed: int | None = None  # of its initial weights
    layer: str | None = None  # the layer whose output it reads, pooled (None: the trunk's end)
    target_mean: list[float] | None = None  # regression: set from the training split
    target_std: list[float] | None = None
    layers: list[str] = field(default_factory=list)  # segment / detect: the layers whose maps it reads

    @property
    def dense(self) -> bool:
        return self.kind in ("segment", "detect")

    @property
    def outputs(self) -> int:
        return len(self.labels)

    @property
    def label_names(self) -> list[str]:
        return list(self.labels)
'''


def training_script(session: "Session", project: str = "the project", script_name: str = "train_model.py") -> str:
    """The text of a standalone training script for ``session`` (a project as Graft opened it)."""
    from engine.data import decoding, samples, splits, transforms
    from engine.export.metadata import KEY, build_metadata, to_props
    from engine.export.onnx_export import _source_info
    from engine.network import graft_model, preprocess
    from engine.training import loaders, losses, setup
    from engine.training.config import TrainConfig
    from engine.training.record import TrainingRecord

    if not session.heads:
        raise GraftError("The project has no heads: add a head before exporting a training script.")
    dense = [h.name for h in session.heads if h.dense]
    if dense:
        raise GraftError(f"Head {dense[0]!r} is a segment or detect head: the standalone script trains "
                         "classification and regression heads only so far.")
    channels = getattr(session.input_spec, "channels", 3)
    if channels != 3:
        raise GraftError(f"The project's input has {channels} channels: the standalone script reads RGB images "
                         "with Pillow only, so it rebuilds 3-channel projects.")
    if not any(p.requires_grad for p in session.model.parameters()):
        raise GraftError("Every layer and head of the project is frozen: there is nothing to train.")
    factors = {k: v for k, v in (getattr(session.model, "lr_factors", None) or {}).items() if v != 1.0}
    if factors:
        raise GraftError(f"The project sets learning-rate factors ({', '.join(f'{k}={v:g}' for k, v in factors.items())}): "
                         "the standalone script does not reproduce them yet. Remove them (factor 1) to export a script.")
    network, architecture, network_words = _network(session)
    surgery = _surgery(session)
    heads_code, head_words = _heads(session)
    frozen = _frozen(session.model)
    record = TrainingRecord.latest(session.project_extra)
    config = dict(vars(TrainConfig()))
    if record is not None and record.config:
        config.update({k: v for k, v in record.config.items() if k in config})
    training = {k: config[k] for k in TRAINING_KEYS}
    training["val_fraction"] = float(record.val_fraction) if record is not None else 0.2
    if record is not None:
        training["seed"] = record.seed
    data = record.data if record is not None and record.data else None
    metadata = build_metadata(session.input_spec, session.heads, _source_info(session), opset=OPSET,
                              exporter="torchscript")

    recipe = "\n\n".join([
        _constants(NETWORK=network, INPUT=session.input_spec.to_dict(), SURGERY=surgery),
        HEAD_CLASS,
        heads_code,
        "# parameters (and the modules holding them) that do not train\n" + _constants(FROZEN=frozen),
        "# Graft's training settings for the project (TrainConfig), its split seed and validation share\n"
        + _constants(TRAINING=training, DATA=data),
        "# what `main.py export` writes into the ONNX file's metadata (the regression heads' statistics are\n"
        "# replaced by those this run computes)\n" + _constants(METADATA=metadata),
    ])
    trunk_words = "the whole trunk is frozen" if "trunk" in frozen or "" in frozen else (
        f"frozen: {', '.join(frozen[:6])}{' …' if len(frozen) > 6 else ''}" if frozen else "every layer trains")
    cut = surgery["cut_at"]
    steps = [
        f"1. network: {network_words}.",
        "2. surgery: " + (f"cut after layer {cut}; " if cut else "")
        + (f"removed (replaced by nn.Identity): {', '.join(surgery['removed'][:4])}"
           + (" …" if len(surgery["removed"]) > 4 else "") if surgery["removed"] else "no layer removed")
        + "; the last layer's output is averaged into one feature vector per image.",
        "3. heads: " + "; ".join(head_words) + ".",
        f"4. freezing: {trunk_words}; frozen BatchNorm layers keep their statistics.",
        "5. data: the image folder's classes or the CSV's columns; blank cells are missing labels, masked "
        f"out of the losses; a seeded stratified split (seed {training['seed']}, {training['val_fraction']:g} "
        "validation) unless the data has one.",
        f"6. training: AdamW (heads lr {training['lr_heads']:g}, trunk lr {training['lr_trunk']:g}, weight decay "
        f"{training['weight_decay']:g}), {training['warmup_epochs']:g} warm-up epoch(s) then cosine decay, batch "
        f"{training['batch_size']}, {training['epochs']} epochs, augmentation {training['augment']}, early stopping "
        f"after {training['patience']} epochs without a lower validation loss; the best epoch is kept.",
        f"7. export: ONNX opset {OPSET}, input 'image' (any batch size), one output per head, Graft's metadata.",
    ]
    resample = ", ".join(f"{k!r}: Image.Resampling.{v.name}" for k, v in preprocess.RESAMPLE.items())
    preprocessing = (_constants(SIXTEEN_BIT_MODES=preprocess.SIXTEEN_BIT_MODES) + f"\nRESAMPLE = {{{resample}}}\n\n\n"
                     + _sources(preprocess.open_image, preprocess.to_rgb, preprocess.sixteen_to_eight,
                                preprocess.crop_geometry, preprocess.resize_and_crop, preprocess.normalise,
                                transforms._augmentation))
    values = {
        "title": f"Train {session.describe()} with heads {', '.join(h.name for h in session.heads)}, as {project} does.",
        "graft_version": __version__,
        "project": project,
        "script_name": script_name,
        "steps": "\n".join(textwrap.fill(s, 104, subsequent_indent="   ") for s in steps),
        "recipe": recipe,
        "architecture": architecture,
        "model_code": _constants(END=graft_model.END) + "\n\n\n" + _sources(
            graft_model.pool_features, graft_model._CutReached, graft_model.first_tensor,
            graft_model._channels_last, graft_model.pool_layer, graft_model.class_token_length, graft_model.Trunk,
            graft_model.RegressionHead, graft_model.GraftModel, graft_model.head_in_features,
            graft_model.build_head),
        "preprocessing_code": preprocessing,
        "data_code": PILLOW_ONLY + "\n\n\n" + _sources(decoding.check_image, splits._same_file, splits._real_folder,
                                                        samples._target, splits._split_random),
        "training_code": _sources(losses._terms, losses.head_loss_terms, setup.lr_lambda, loaders.EpochBatchSampler),
        "metadata_code": _constants(KEY=KEY) + "\n\n\n" + _sources(to_props),
    }
    return string.Template(TEMPLATE.read_text(encoding="utf-8")).substitute(values)


def write_training_script(session: "Session", path: str | Path, project: str = "the project") -> Path:
    """Write :func:`training_script` to ``path`` (atomically; executable like any script)."""
    path = Path(path)
    text = training_script(session, project, path.name)
    compile(text, str(path), "exec")  # a broken template must fail here, not in the user's hands

    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    atomic_write(path, write)
    path.chmod(path.stat().st_mode | 0o111)
    return path
