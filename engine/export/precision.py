"""Smaller, faster exports: fp16 and int8 ONNX files, measured against fp32 before they are written.

:func:`export_precision` exports the session's model to fp32 and verifies it against PyTorch as
:func:`engine.export.onnx_export.export_onnx` does, then reduces that file:

* ``fp16``: onnxconverter-common's ``convert_float_to_float16`` with ``keep_io_types``, so the input
  and the outputs stay float32 and a consumer's code does not change.
* ``int8``: onnxruntime's static quantization in QDQ format with per-channel int8 weights and uint8
  activations, calibrated (min/max) on training images. Without images it says so and falls back to
  onnxruntime's dynamic quantization of the linear layers (their weights in int8, the convolutions
  stay float).

The reduced file is then compared with fp32 on the validation images (:mod:`engine.export.compare`).
When int8 loses more than :data:`MAX_LOSS_POINTS` of accuracy on a head, the report says so;
``keep_float`` ("auto" or a number of layers) runs a per-layer sensitivity pass (onnxruntime's
``qdq_loss_debug``: how much each quantized layer lowers the signal-to-quantization-noise ratio of the
activations against fp32) and keeps the most sensitive layers in float.

Nothing half-written is left: the work happens in a temporary folder and the finished file reaches
``path`` through :func:`engine.files.atomic_write`. The metadata says the precision (``precision``) and
how the file was reduced (``reduced``); ``main.py predict`` reads every precision alike.
"""
from __future__ import annotations

import contextlib
import math
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.errors import GraftError
from engine.export.compare import ComparisonReport, compare_models
from engine.export.metadata import INPUT_NAME, PRECISIONS, validate, write_metadata
from engine.export.onnx_export import ExportReport, export_onnx
from engine.files import atomic_write, check_target
from engine.network.preprocess import preprocess_file
from engine.units import human_bytes, plural

if TYPE_CHECKING:
    from engine.surgery.session import Session

MAX_LOSS_POINTS = 1.0  # accuracy a head may lose in int8 before the report says so
CALIBRATION_BATCH = 8
SENSITIVITY_IMAGES = 8  # images the sensitivity pass runs (it keeps every layer's activations)
KEEP_FLOAT_STEPS = (1, 2, 4, 8, 16, 32)  # "auto": layers kept in float, tried in turn
WEIGHT_OPS = ("Conv", "Gemm", "MatMul", "ConvTranspose")
STATIC_METHOD = "static quantization (QDQ, per-channel int8 weights, uint8 activations)"
DYNAMIC_METHOD = "dynamic quantization of the linear layers (int8 weights; convolutions stay float)"
FP16_METHOD = "float16 weights and maths (onnxconverter-common), float32 input and outputs"


@dataclass
class Reduction:
    """How a file was reduced: ``method`` in words, the calibration images used, the layers (ONNX
    node names) kept in float, and the weight layers that were quantized out of those there are."""

    precision: str
    method: str
    calibration_images: int = 0
    float_layers: list[str] = field(default_factory=list)
    quantized_layers: int = 0
    weight_layers: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"precision": self.precision, "method": self.method}
        if self.precision == "int8":
            out.update(calibration_images=self.calibration_images, float_layers=list(self.float_layers),
                       quantized_layers=self.quantized_layers, weight_layers=self.weight_layers)
        return out


@dataclass
class PrecisionReport:
    """What :func:`export_precision` did. ``export``: the fp32 export it started from (verified against
    PyTorch); ``comparison``: the reduced file against fp32 (None for fp32, or without images);
    ``sensitivity``: ``(layer, dB lost)`` most sensitive first, when the pass ran."""

    path: Path
    precision: str
    size_bytes: int
    seconds: float
    export: ExportReport
    reduction: Reduction | None = None
    comparison: ComparisonReport | None = None
    sensitivity: list[tuple[str, float]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def losses(self) -> list[tuple[str, float]]:
        """``(head, points)`` of the heads that lose more than :data:`MAX_LOSS_POINTS` of accuracy."""
        if self.comparison is None or self.precision == "fp32":
            return []
        return self.comparison.losses(self.precision, MAX_LOSS_POINTS)

    def table(self) -> str:
        """The size, latency and accuracy table (fp32 against this file)."""
        if self.comparison is None:
            return "not compared with fp32 (no images to compare on)" if self.precision != "fp32" else ""
        return self.comparison.table()

    def advice(self) -> str:
        """What to do about a head that lost accuracy (empty when none did)."""
        if not self.losses:
            return ""
        lost = ", ".join(f"{points:.1f} points on head '{head}'" for head, points in self.losses)
        if self.reduction is not None and self.reduction.float_layers:
            return (f"int8 still loses {lost} with {plural(len(self.reduction.float_layers), 'layer')} kept in "
                    "float: keep more (--keep-float N) or export fp16.")
        return (f"int8 loses {lost} (more than {MAX_LOSS_POINTS:g}): keeping the most sensitive layers in "
                "float usually wins it back (--keep-float auto runs a per-layer sensitivity pass), or export fp16.")

    def format(self) -> str:
        r = self.reduction
        how = f"; {r.method}" if r is not None else ""
        if r is not None and r.calibration_images:
            how += f", calibrated on {plural(r.calibration_images, 'image')}"
        if r is not None and r.float_layers:
            how += f"; {plural(len(r.float_layers), 'layer')} kept in float"
        lines = [f"exported {self.path} ({self.precision}, {human_bytes(self.size_bytes)}{how}) in {self.seconds:.1f} s"]
        e = self.export
        lines.append(f"from the fp32 graph ({human_bytes(e.size_bytes)}, opset {e.opset}, {e.exporter} exporter, "
                     f"{e.export_seconds:.1f} s)")
        lines += [line for line in e.format().splitlines()[1:]]
        lines += [f"note: {n}" for n in self.notes + (r.notes if r is not None else [])]
        if self.sensitivity:
            shown = ", ".join(f"{name} ({db:.1f} dB)" for name, db in self.sensitivity[:5])
            lines.append(f"most sensitive layers: {shown}")
        if r is not None and r.float_layers:
            lines.append("kept in float: " + ", ".join(r.float_layers))
        table = self.table()
        if table:
            lines.append(table)
        if self.advice():
            lines.append("warning: " + self.advice())
        return "\n".join(lines)


# -- the conversions ----------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The converters warn per constant they round (thousands of lines) and log per node: keep that for
    the report's own notes instead."""
    import logging

    root = logging.getLogger()
    level = root.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root.setLevel(logging.ERROR)
        try:
            yield
        finally:
            root.setLevel(level)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else exc.__class__.__name__)[:300]


def to_fp16(src: Path, dst: Path) -> Reduction:
    """``src`` with float16 weights and maths, the input and outputs kept float32."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    try:
        with _quiet():
            half = float16.convert_float_to_float16(model, keep_io_types=True)
    except Exception as exc:  # noqa: BLE001 - the converter raises plain exceptions for graphs it cannot handle
        raise GraftError(f"The model could not be converted to fp16 ({_first_line(exc)}); export fp32 instead.") from None
    onnx.save(half, str(dst))
    return Reduction("fp16", FP16_METHOD)


class _BatchReader:
    """onnxruntime's CalibrationDataReader over preprocessed images, a few at a time."""

    def __init__(self, batch: np.ndarray, size: int = CALIBRATION_BATCH) -> None:
        from onnxruntime.quantization import CalibrationDataReader

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.start = 0

            def get_next(self) -> dict[str, np.ndarray] | None:
                if self.start >= len(batch):
                    return None
                chunk = np.ascontiguousarray(batch[self.start:self.start + size])
                self.start += size
                return {INPUT_NAME: chunk}

            def rewind(self) -> None:
                self.start = 0

        self.reader = Reader()


def _prepared(src: Path, work: Path) -> Path:
    """The model after onnxruntime's quantization pre-processing (shape inference, graph optimisation):
    what its quantizer expects; ``src`` itself when pre-processing fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = work / "prepared.onnx"
    if out.exists():
        return out
    try:
        with _quiet():
            quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    except Exception:  # noqa: BLE001 - pre-processing is an optimisation; quantize the file as it is
        return src
    return out


def weight_layers(model: Any) -> list[Any]:
    """The nodes whose weights int8 quantizes (convolutions, linear layers) in an ``onnx.ModelProto``."""
    return [n for n in model.graph.node if n.op_type in WEIGHT_OPS]


def _quantized_count(model: Any, dynamic: bool) -> int:
    """Weight layers that came out quantized: a QDQ model feeds them a DequantizeLinear weight; a
    dynamic one replaces them with integer ops."""
    if dynamic:
        return sum(1 for n in model.graph.node if n.op_type in ("MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul"))
    produced = {o: n.op_type for n in model.graph.node for o in n.output}
    return sum(1 for n in model.graph.node
               if n.op_type in WEIGHT_OPS and len(n.input) > 1 and produced.get(n.input[1]) == "DequantizeLinear")


def _no_layers(model: Any) -> GraftError:
    ops = sorted({n.op_type for n in model.graph.node})
    shown = ", ".join(ops[:8]) + (" …" if len(ops) > 8 else "")
    return GraftError("None of the model's layers can be quantized to int8: it has no convolution or linear layer "
                      f"onnxruntime quantizes (its operators: {shown or 'none'}). Export it as fp16 or fp32.")


def float_gemm_biases(model: Any) -> int:
    """Give each Gemm (a linear layer: the heads) its bias as float32, the exact values its int32
    DequantizeLinear computed, instead of that DequantizeLinear. onnxruntime's numbers stay the same;
    OpenCV 5's DNN engine refuses a Gemm with a dequantized bias (``bufidx >= 0`` in ``argTensor`` when
    the Gemm's input has one consumer, as a single head's has; ``zpshape == scshape`` in 5.0 for a
    one-output head, whose bias zero point onnxruntime writes as a scalar), while OpenCV 4 runs both.
    Convolutions keep their int32 biases (onnxruntime runs them as integer convolutions). Returns the
    number of biases changed; ``model`` (an ``onnx.ModelProto``) is changed in place."""
    from onnx import numpy_helper

    graph = model.graph
    init = {i.name: i for i in graph.initializer}
    produced = {o: n for n in graph.node for o in n.output}
    changed = 0
    for node in graph.node:
        dq = produced.get(node.input[2]) if node.op_type == "Gemm" and len(node.input) > 2 else None
        if dq is None or dq.op_type != "DequantizeLinear" or not all(i in init for i in dq.input):
            continue
        q, scale = (numpy_helper.to_array(init[i]) for i in dq.input[:2])
        zero = numpy_helper.to_array(init[dq.input[2]]) if len(dq.input) > 2 else np.zeros((), q.dtype)
        bias = ((q.astype(np.int64) - zero.astype(np.int64)) * scale.astype(np.float32)).astype(np.float32)
        name = f"{dq.output[0]}_float"
        graph.initializer.append(numpy_helper.from_array(bias, name))
        node.input[2] = name
        changed += 1
    if changed:  # drop the DequantizeLinear nodes (and their initializers) nothing reads any more
        outputs = {o.name for o in graph.output}
        while True:
            used = {i for n in graph.node for i in n.input} | outputs
            dead = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.output[0] not in used]
            if not dead:
                break
            for n in dead:
                graph.node.remove(n)
        used = {i for n in graph.node for i in n.input}
        for i in [i for i in graph.initializer if i.name not in used]:
            graph.initializer.remove(i)
    return changed


def quantize_int8(src: Path, dst: Path, work: Path, calibration: np.ndarray | None,
                  float_layers: Sequence[str] = ()) -> Reduction:
    """``src`` quantized to int8: static (QDQ, per-channel) when ``calibration`` images are given, else
    dynamic quantization of the linear layers. ``float_layers``: node names to leave in float."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    prepared = _prepared(src, work)
    model = onnx.load(str(prepared), load_external_data=False)
    total = len(weight_layers(model))
    names = {n.name for n in model.graph.node}
    unknown = [n for n in float_layers if n not in names]
    if unknown:
        raise GraftError(f"There is no layer {unknown[0]!r} in the ONNX graph to keep in float.")
    if total == 0:
        raise _no_layers(model)
    static = calibration is not None and len(calibration) > 0
    try:
        with _quiet():
            if static:
                quantize_static(str(prepared), str(dst), _BatchReader(calibration).reader, quant_format=QuantFormat.QDQ,
                                per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                                calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=list(float_layers))
            else:
                quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                                 nodes_to_exclude=list(float_layers))
    except GraftError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - the quantizer raises plain exceptions naming what it met
        raise GraftError(f"int8 quantization failed ({_first_line(exc)}); export fp16 or fp32 instead.") from None
    out = onnx.load(str(dst), load_external_data=False)
    if static and float_gemm_biases(out):
        onnx.save(out, str(dst))
    done = _quantized_count(out, dynamic=not static)
    if done == 0:
        if static:
            raise _no_layers(model)
        raise GraftError("Without calibration images only linear layers can be quantized, and this model has none "
                         "onnxruntime can (its layers are convolutions): give calibration images (training data) "
                         "for a static int8 export, or export fp16.")
    reduction = Reduction("int8", STATIC_METHOD if static else DYNAMIC_METHOD, len(calibration) if static else 0,
                          list(float_layers), done, total)
    if not static:
        reduction.notes.append("no calibration images: only the linear layers were quantized (dynamic int8); the "
                               "convolutions stay float. Train on data, or give calibration images, for a full int8 model.")
    return reduction


def sensitivity(fp32: Path, int8: Path, work: Path, batch: np.ndarray) -> list[tuple[str, float]]:
    """Weight layers (ONNX node names) of a static int8 file, most sensitive first: how many dB of
    signal-to-quantization-noise ratio (against fp32, onnxruntime's ``qdq_loss_debug``) the layer's
    output has lost beyond its input's."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import (collect_activations, compute_activation_error,
                                                          create_activation_matching,
                                                          modify_model_output_intermediate_tensors)

    float_aug, quant_aug = work / "float_aug.onnx", work / "quant_aug.onnx"
    prepared = _prepared(fp32, work)
    images = np.ascontiguousarray(batch[:SENSITIVITY_IMAGES])
    with _quiet():
        modify_model_output_intermediate_tensors(str(prepared), str(float_aug))
        modify_model_output_intermediate_tensors(str(int8), str(quant_aug))
        float_acts = collect_activations(str(float_aug), _BatchReader(images, 4).reader)
        quant_acts = collect_activations(str(quant_aug), _BatchReader(images, 4).reader)
        errors = compute_activation_error(create_activation_matching(quant_acts, float_acts))
    del float_acts, quant_acts
    sqnr = {name: e["xmodel_err"] for name, e in errors.items() if "xmodel_err" in e and math.isfinite(e["xmodel_err"])}
    model = onnx.load(str(prepared), load_external_data=False)
    ranked = []
    for node in weight_layers(model):
        out = sqnr.get(node.output[0])
        if out is None:
            continue
        before = sqnr.get(node.input[0], out)
        ranked.append((node.name, before - out))
    ranked.sort(key=lambda item: -item[1])
    return ranked


# -- the entry point ----------------------------------------------------------------------------------

def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise GraftError(f"Unknown precision {precision!r}: use {', '.join(PRECISIONS)}.")
    return precision


def check_keep_float(keep_float: int | str | None) -> int | str | None:
    if keep_float is None or keep_float == "auto":
        return keep_float
    if isinstance(keep_float, str) and keep_float.strip().isdigit():
        keep_float = int(keep_float)
    if isinstance(keep_float, bool) or not isinstance(keep_float, int) or keep_float < 0:
        raise GraftError(f"Layers to keep in float: 'auto' or a whole number of at least 0, not {keep_float!r}.")
    return keep_float


def load_images(paths: Sequence[str | Path], spec: Any, what: str) -> np.ndarray:
    """Preprocessed images; GraftError naming every unreadable one (the user chose them all)."""
    arrays, bad = [], []
    for p in paths:
        try:
            arrays.append(preprocess_file(p, spec))
        except GraftError as exc:
            bad.append(str(exc).rstrip("."))
    if bad:
        more = f" (and {plural(len(bad) - 1, 'more')})" if len(bad) > 1 else ""
        raise GraftError(f"{plural(len(bad), what + ' image')} cannot be read: {bad[0]}{more}. Nothing was written.")
    return np.stack(arrays) if arrays else np.zeros((0, 3, spec.size, spec.size), dtype=np.float32)


def _stamp(path: Path, data: dict[str, Any], reduction: Reduction) -> None:
    """Write the precision and how the file was reduced into its metadata."""
    import onnx

    model = onnx.load(str(path))
    data = dict(data, precision=reduction.precision, reduced=reduction.to_dict())
    validate(data, path.name)
    write_metadata(model, data)
    onnx.checker.check_model(model, full_check=False)
    onnx.save(model, str(path))


def export_precision(session: "Session", path: str | Path, precision: str = "fp32", *,
                     calibration: Sequence[str | Path] | None = None, images: Sequence[str | Path] | None = None,
                     targets: dict[str, np.ndarray] | None = None, where: str = "",
                     keep_float: int | str | None = None, verify_images: Sequence[str | Path] | None = None,
                     timing: bool = True, runs: int = 10, threads: int = 0, opset: int | None = None,
                     tolerance: float = 1e-4, exporter: str = "auto", keep_reference: str | Path | None = None,
                     progress: Callable[[str], None] | None = None) -> PrecisionReport:
    """Export the session's model to ``path`` in ``precision`` ("fp32", "fp16" or "int8") and measure it.

    ``calibration``: training images for int8 (none: dynamic quantization of the linear layers);
    ``images`` and ``targets``: the images to compare the reduced file with fp32 on and their labels
    ``{head: labels}`` (see :func:`engine.export.compare.head_comparison`; None: agreement only);
    ``where`` says where they come from in the table. ``keep_float``: int8 only, "auto" (a sensitivity
    pass when a head loses more than :data:`MAX_LOSS_POINTS`, keeping as few layers in float as win it
    back) or a number of most sensitive layers to keep in float. ``verify_images``: real images the
    fp32 graph is verified against PyTorch on. ``timing``: measure latency (``runs`` per batch size).
    ``keep_reference``: also write the fp32 file the reduced one was made from and compared with there.
    GraftError for an unwritable path, unreadable images, a model that does not convert; nothing is
    left at ``path`` then.
    """
    from engine.export.onnx_export import OPSET

    start = time.perf_counter()
    precision = check_precision(precision)
    keep_float = check_keep_float(keep_float)
    path = check_target(path)
    if keep_reference is not None:
        keep_reference = check_target(keep_reference)
    note = progress or (lambda message: None)
    spec = session.input_spec
    if precision == "fp32":
        report = export_onnx(session, path, opset=opset or OPSET, images=verify_images, tolerance=tolerance,
                             exporter=exporter, progress=progress)
        return PrecisionReport(path, "fp32", report.size_bytes, time.perf_counter() - start, report)
    cal = load_images(list(calibration or []), spec, "calibration") if precision == "int8" and calibration else None
    image_list = list(images or [])
    compare_batch = load_images(image_list, spec, "comparison") if image_list else None
    notes: list[str] = []
    if compare_batch is None and cal is not None:
        compare_batch = cal
        targets = None
        where = "(the calibration images: no validation images)"
        notes.append("compared on the calibration images themselves: no validation images were given")

    with tempfile.TemporaryDirectory(prefix="graft-precision-") as tmp:
        work = Path(tmp)
        fp32 = work / "fp32.onnx"
        base = export_onnx(session, fp32, opset=opset or OPSET, images=verify_images, tolerance=tolerance,
                           exporter=exporter, progress=progress)
        reduced = work / f"{precision}.onnx"
        if precision == "fp16":
            note("converting to fp16")
            reduction = to_fp16(fp32, reduced)
        else:
            note("quantizing to int8" + (f" (calibrating on {len(cal)} images)" if cal is not None else ""))
            reduction = quantize_int8(fp32, reduced, work, cal)
        _stamp(reduced, base.metadata, reduction)
        comparison = None
        ranked: list[tuple[str, float]] = []
        if compare_batch is not None and len(compare_batch):
            note(f"comparing with fp32 on {len(compare_batch)} images")
            comparison = compare_models(fp32, [reduced], compare_batch, targets, timing=False)
            lost = comparison.losses(precision, MAX_LOSS_POINTS)
            wanted = keep_float == "auto" and lost or isinstance(keep_float, int) and keep_float > 0
            if precision == "int8" and wanted:
                if reduction.method != STATIC_METHOD:
                    notes.append("layers can be kept in float only in a static int8 export (it needs calibration images)")
                else:
                    note("measuring each layer's sensitivity to int8")
                    ranked = sensitivity(fp32, reduced, work, cal)
                    reduction, comparison = _keep_float(fp32, reduced, work, cal, compare_batch, targets, ranked,
                                                        keep_float, reduction, comparison, base.metadata, note)
            if timing:
                note("timing both files with onnxruntime")
                comparison = compare_models(fp32, [reduced], compare_batch, targets, timing=True, runs=runs,
                                            threads=threads, where=where)
            elif where:
                comparison.where = where
        elif precision == "int8" and keep_float:
            notes.append("no images to compare on, so no layers were kept in float")
        atomic_write(path, lambda target: shutil.copyfile(reduced, target))
        if keep_reference is not None:
            atomic_write(Path(keep_reference), lambda target: shutil.copyfile(fp32, target))
    return PrecisionReport(path, precision, path.stat().st_size, time.perf_counter() - start, base, reduction,
                           comparison, ranked, notes)


def _keep_float(fp32: Path, reduced: Path, work: Path, cal: np.ndarray, batch: np.ndarray,
                targets: dict[str, np.ndarray] | None, ranked: list[tuple[str, float]], keep_float: int | str,
                reduction: Reduction, comparison: ComparisonReport, metadata: dict[str, Any],
                note: Callable[[str], None]) -> tuple[Reduction, ComparisonReport]:
    """Re-quantize ``reduced`` keeping the most sensitive layers in float: ``keep_float`` of them, or
    ("auto") the fewest of :data:`KEEP_FLOAT_STEPS` with which no head loses more than the limit (the
    best try when none does). Returns the reduction and comparison of the file left at ``reduced``."""
    names = [n for n, _ in ranked]
    steps = [min(int(keep_float), len(names))] if isinstance(keep_float, int) else \
        sorted({min(k, len(names)) for k in KEEP_FLOAT_STEPS})
    best: tuple[float, Reduction, ComparisonReport, Path] | None = None
    for k in steps:
        trial = work / f"int8_keep{k}.onnx"
        note(f"int8 with the {plural(k, 'most sensitive layer')} in float")
        r = quantize_int8(fp32, trial, work, cal, names[:k])
        _stamp(trial, metadata, r)
        c = compare_models(fp32, [trial], batch, targets, timing=False)
        worst = max((p for _, p in c.losses("int8", -math.inf)), default=0.0)
        if best is None or worst < best[0] - 1e-9:
            best = (worst, r, c, trial)
        if not c.losses("int8", MAX_LOSS_POINTS):
            break
    if best is None:
        return reduction, comparison
    _, r, c, trial = best
    if isinstance(keep_float, str) and c.losses("int8", MAX_LOSS_POINTS):
        r.notes.append(f"even with {plural(len(r.float_layers), 'layer')} in float int8 loses more than "
                       f"{MAX_LOSS_POINTS:g} point")
    shutil.copyfile(trial, reduced)
    return r, c
