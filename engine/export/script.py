"""A training script to take away: one readable Python file that trains what a project trains, without Graft.

:func:`training_script` writes the project's recipe as data (the network and its starting weights, the
layers surgery removed and the cut, the heads with their seeds, the frozen layers, the training
settings, the ONNX metadata) into ``train_script.py.tmpl``, together with the source of the Graft code
that decides the numbers: the EfficientNet-Lite architecture and its checkpoint key names, the trunk
with its cut, the heads, the image preprocessing and augmentation, the seeded split, the masked losses,
the batch order and the learning-rate schedule. Those are copied from the running Graft with
:func:`inspect.getsource`, so the script computes what Graft computes and cannot drift from it (the copies'
late ``from engine… import`` lines are dropped: the script defines those names itself).

Segment and detect heads bring their code along only where the project has one (the template's lines
between ``# <dense>`` and ``# </dense>``, and the dense sections): the pyramid heads and FCOS decoding, the
masks' and boxes' reading and checks (CSV columns, masks/ and labels/ beside an image folder, a COCO file),
their geometry through resize, crop and augmentation, the masked losses and the mIoU / mAP metrics.

The script imports torch, torchvision, NumPy and Pillow only (with a dense head also torchmetrics, for its
metrics, and trains without it); it writes ``DIR/model.onnx`` with the metadata keys of ``main.py export``
(added to the file as protobuf fields, without the onnx package) and ``DIR/metrics.json`` with the
validation metrics of the epoch it kept and each epoch's losses, head by head.
"""
from __future__ import annotations

import inspect
import pprint
import re
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


def _without_graft_imports(source: str) -> str:
    """``source`` without its ``from engine… import …`` statements (a function's late imports of Graft's
    modules): every name they bring is one the script defines itself."""
    import ast

    lines = source.splitlines(keepends=True)
    drop = {i for node in ast.walk(ast.parse(source)) if isinstance(node, ast.ImportFrom)
            and (node.module or "").split(".")[0] == "engine" for i in range(node.lineno - 1, node.end_lineno)}
    return "".join(line for i, line in enumerate(lines) if i not in drop)


def _sources(*objects: Any) -> str:
    return "\n\n".join(_without_graft_imports(textwrap.dedent(inspect.getsource(o))).rstrip() + "\n"
                         for o in objects)


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


# a dense head's settings the script's Head carries (written out where they differ from HeadSpec's defaults)
DENSE_FIELDS = ("ignore_index", "dice", "score_threshold", "nms_iou", "max_detections")


def _dense_words(h: Any) -> str:
    what = "FPN segment decoder" if h.kind == "segment" else "FCOS detector"
    extra = (f", ignore value {h.ignore_index}" + (f", Dice weight {h.dice:g}" if h.dice else "") if h.kind == "segment"
             else f", boxes scoring over {h.score_threshold:g}, NMS IoU {h.nms_iou:g}")
    return f"'{h.name}' ({h.kind}, {h.outputs} classes, {what} of {h.width} channels on {', '.join(h.layers)}{extra}"


def _heads(session: "Session") -> tuple[str, list[str]]:
    from engine.data.dense_targets import DEFAULT_COLUMNS
    from engine.network.heads import HeadSpec

    seeds = _head_seeds(session)
    defaults = HeadSpec("x", "segment")
    lines, words = [], []
    for h in session.heads:
        columns = h.columns or ([DEFAULT_COLUMNS[h.kind]] if h.dense else
                                [h.name] if h.kind == "single" else list(h.label_names))
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
        if h.dense:
            args.append(f"layers={list(h.layers)!r}")
            args += [f"{k}={getattr(h, k)!r}" for k in DENSE_FIELDS if getattr(h, k) != getattr(defaults, k)]
        lines.append(f"    Head({', '.join(args)}),")
        if h.dense:
            words.append(_dense_words(h) + (f", loss weight {h.loss_weight:g}" if h.loss_weight != 1.0 else "") + ")")
            continue
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
    regression: values in the data's units (it learns standardised targets). segment and detect (dense
    heads): a feature pyramid on the maps of several layers, a mask of classes per pixel or boxes."""

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
    ignore_index: int = 255  # segment: the mask value of unlabelled pixels
    dice: float = 0.0  # segment: the weight of the soft Dice loss beside the cross-entropy
    score_threshold: float = 0.3  # detect: the boxes it shows (mAP ranks every box over 0.05)
    nms_iou: float = 0.5
    max_detections: int = 100
    outputs: int = 0  # one per label

    def __post_init__(self) -> None:
        self.outputs = len(self.labels)

    @property
    def dense(self) -> bool:
        return self.kind in ("segment", "detect")

    @property
    def width(self) -> int:  # a dense head's pyramid and decoder channels
        return int(self.hidden[0]) if self.hidden else DENSE_WIDTH

    @property
    def label_names(self) -> list[str]:
        return list(self.labels)


HeadSpec = Head  # the name Graft's code (copied below) gives a head's settings
'''


def training_script(session: "Session", project: str = "the project", script_name: str = "train_model.py") -> str:
    """The text of a standalone training script for ``session`` (a project as Graft opened it)."""
    from engine.data import decoding, samples, splits, transforms
    from engine.export.metadata import KEY, build_metadata, to_props
    from engine.export.onnx_export import _source_info
    from engine.network import graft_model, heads, preprocess
    from engine.training import loaders, losses, metrics, setup
    from engine.training.config import TrainConfig
    from engine.training.record import TrainingRecord

    if not session.heads:
        raise GraftError("The project has no heads: add a head before exporting a training script.")
    dense = any(h.dense for h in session.heads)
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
        _constants(DENSE_WIDTH=heads.DENSE_WIDTH) + "  # a dense head's channels when its hidden does not say",
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
        "validation) unless the data has one."
        + (" Dense heads: masks are PNGs of class indices (the CSV's mask column, or masks/ beside an image "
           "folder; the ignore value and a blank cell are unlabelled pixels), boxes a CSV column of "
           "[[x1, y1, x2, y2, class], ...] in pixels or YOLO .txt files (or labels/ beside an image folder), or a "
           "COCO .json as the data; they follow the image through its resize, crop and augmentation. Losses: "
           "per-pixel cross-entropy over the labelled pixels (plus soft Dice where set), torchvision's FCOS loss "
           "over the images with box labels; metrics mIoU and mAP (torchmetrics)." if dense else ""),
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
        "training_code": _sources(losses._terms, losses.head_loss_terms, setup.lr_lambda, loaders.EpochBatchSampler)
        + "\n\n" + _constants(MAIN_METRIC=metrics.MAIN_METRIC) + "\n\n\n"
        + _sources(metrics.selection_score, metrics.better_epoch),
        "metadata_code": _constants(KEY=KEY) + "\n\n\n" + _sources(to_props),
        "needs": textwrap.fill(
            f"Generated by Graft {__version__} from {project}. It needs torch, torchvision, NumPy and Pillow"
            + (" (and torchmetrics with pycocotools for the segment and detect heads' mIoU and mAP: without them "
               "it trains and leaves those metrics out)" if dense else "")
            + ", and imports nothing else (torch's ONNX exporter needs the onnx package installed).", 104),
        "dense_model_code": _dense_model_code() if dense else "",
        "dense_data_code": _dense_data_code() if dense else "",
        "dense_training_code": _dense_training_code() if dense else "",
    }
    text = string.Template(TEMPLATE.read_text(encoding="utf-8")).substitute(values)
    return _dense_blocks(text, dense)


DENSE_BEGIN, DENSE_END = "# <dense>", "# </dense>"


def _dense_blocks(text: str, keep: bool) -> str:
    """The template's dense-head lines (between ``# <dense>`` and ``# </dense>`` lines, each block whole
    statements) kept for a project with a segment or detect head, dropped for one without; the marker lines
    go either way."""
    out, inside = [], False
    for line in text.splitlines(keepends=True):
        mark = line.strip()
        if mark in (DENSE_BEGIN, DENSE_END):
            inside = mark == DENSE_BEGIN
        elif keep or not inside:
            out.append(line)
    return re.sub(r"\n{4,}", "\n\n\n", "".join(out))  # no wider gap than two blank lines where code is left out


# -- the dense heads' code (segment, detect), copied from Graft ---------------------------------------

def _dense_model_code() -> str:
    """The pyramid heads, their boxes, their losses (engine.network.dense_heads, engine.training.dense_losses)."""
    from engine.network import dense_heads
    from engine.training import dense_losses

    return ("# Dense heads: a feature pyramid over the maps of several layers; a segment decoder, an FCOS detector.\n\n"
            + _constants(MAX_BOXES=dense_heads.MAX_BOXES) + "\n\n\n"
            + _sources(dense_heads._pyramid, dense_heads.DenseHead, dense_heads.SegmentHead, dense_heads.DetectHead,
                       dense_heads.select_boxes, dense_heads.build_dense_head, dense_heads.decoded_outputs,
                       dense_heads.DecodedModel, dense_heads.exported_form)
            + "\n\n" + _constants(DICE_EPS=dense_losses.DICE_EPS) + "\n\n\n"
            + _sources(dense_losses.soft_dice_loss, dense_losses.segment_loss_terms, dense_losses.dense_loss_terms)
            + "\n")


def _dense_data_code() -> str:
    """Masks and boxes: read, checked and carried through the image's geometry (engine.data.dense_targets)."""
    from engine import units
    from engine.data import dense_targets as dt
    from engine.network import preprocess

    return ("# Masks and boxes (segment and detect heads): read and checked when the data loads, then carried\n"
            "# through the image's resize and crop, or its augmentation, with it.\n\n"
            + _constants(CLASSES_FILE=dt.CLASSES_FILE, MASKS_FOLDER=dt.MASKS_FOLDER, LABELS_FOLDER=dt.LABELS_FOLDER,
                         DEFAULT_COLUMNS=dt.DEFAULT_COLUMNS, _ROTATED=dt._ROTATED, PRESENT={})
            + "  # mask file -> the classes in it\n\n\n"
            + _sources(units.quoted, units.finite_number, preprocess.to_grey, dt.upright_size, dt.read_classes,
                       dt.read_mask, dt.check_mask,
                       dt.parse_yolo, dt._check_count, dt.parse_box_cell, dt.check_inside, dt.read_coco,
                       dt.resolve_dense, dt._resolve_masks, dt._resolve_boxes, dt._classes_above, dt._path,
                       dt.folder_dense, dt.label_folders, dt.missing_target, dt.padded_boxes, dt.DenseItem, dt._clip)
            + "\n")


def _dense_training_code() -> str:
    """The dense heads' validation metrics (engine.training.dense_metrics: torchmetrics)."""
    from engine.training import dense_metrics

    return (_constants(MAP_SCORE_THRESHOLD=dense_metrics.MAP_SCORE_THRESHOLD) + "\n\n\n"
            + _sources(dense_metrics.SegmentMetrics, dense_metrics.DetectMetrics) + "\n")


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
