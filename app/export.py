"""File ▸ Export ONNX and File ▸ Export training script: the dialogs, the work in a worker, and what is
shown after.

The save dialog's file types are the precisions: fp32 exports and verifies as it always has and says so
in a message; fp16 and int8 first ask :class:`~widgets.precision_dialogs.PrecisionDialog` (the precision
again, and where int8's calibration images come from), run :func:`engine.export.precision.export_precision`
and show its table against fp32 in :class:`~widgets.precision_dialogs.PrecisionReportDialog`, which
offers to keep the most sensitive layers in float when int8 lost accuracy on a head.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QDialog, QFileDialog, QMessageBox

from engine.errors import GraftError
from engine.units import human_bytes, plural

if TYPE_CHECKING:
    from PySide6.QtWidgets import QWidget

    from widgets.precision_dialogs import CalibrationSource, PrecisionReportDialog

    from .jobs import Jobs
    from .messages import Messages
    from .settings import Settings
    from .workspace import Workspace

PRECISION_FILTERS = {  # the save dialog's file types: choosing one chooses the precision
    "fp32": "ONNX, fp32: full precision (*.onnx)",
    "fp16": "ONNX, fp16: half the size (*.onnx)",
    "int8": "ONNX, int8: about a quarter of the size, faster on CPUs (*.onnx)",
}
ONNX_FILTER = ";;".join(PRECISION_FILTERS.values()) + ";;All files (*)"
SCRIPT_FILTER = "Python scripts (*.py);;All files (*)"
SCRIPT_NAME = "train_model.py"
CALIBRATION_IMAGES = 64  # at most, spread over the training split or the folder
TIMED_RUNS = 10  # onnxruntime runs per batch size for the latency rows


def precision_of(chosen_filter: str) -> str:
    """The precision a save dialog's file type names (fp32 for "All files" or none)."""
    return next((p for p, f in PRECISION_FILTERS.items() if f == chosen_filter), "fp32")


@dataclass
class ReducedRequest:
    """What an fp16/int8 export needs, gathered in the GUI thread as plain values. ``calibration``: "data"
    (the loaded data's training split), "recorded" (the project's training data), "folder" or "none"
    (dynamic quantization); ``train``/``val``: the loaded data's image paths, used when its labels cannot
    be matched to the heads; ``verify``: images the fp32 graph is checked against PyTorch on (None: the
    project's recorded data)."""

    path: str
    precision: str
    calibration: str = "none"
    folder: str = ""
    data_path: str | None = None
    train: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    verify: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    keep_float: str | None = None


# -- work done in worker threads (plain functions: no Qt, no widgets) ---------------------------------
def _export(session, path: str, images: list[str] | None, extra: dict[str, Any], report_progress=None):
    from engine.export.onnx_export import export_onnx, training_images

    note = ""
    if images is None:  # no data loaded: the data the project records, as main.py export does
        found, where = training_images(extra)
        images = [str(p) for p in found] or None
        note = (f"Verified on {plural(len(found), 'image')} {where}." if found else
                f"Only random inputs were checked, no real images: {where}. Load data to verify the "
                "export on real pictures too.")
    report = export_onnx(session, path, verify=True, images=images, progress=report_progress)
    if note:
        report.notes.append(note)
    return report


def _loaded_images(session, request: ReducedRequest):
    """Calibration and validation images (with the heads' labels) from the loaded data, split as it was
    loaded; its plain image lists, compared by agreement only, when its labels do not fit the heads."""
    from engine.export.compare import ProjectImages, spread, validation_images

    try:
        return validation_images(session, request.data_path, calibration=CALIBRATION_IMAGES)
    except GraftError:  # e.g. a head whose column the data lacks: its images still calibrate and compare
        name = Path(request.data_path or "").name
        return ProjectImages(calibration=spread(request.train, CALIBRATION_IMAGES), validation=spread(request.val, 500),
                             where=f"from the validation split of {name} (agreement only: not every head's labels "
                                   "are in it)")


def _export_reduced(session, request: ReducedRequest, report_progress=None):
    """An fp16/int8 export measured against fp32: calibration images as the request chose them, the
    comparison on the loaded data's validation split, else the project's recorded one."""
    from engine.export.compare import spread, validation_images
    from engine.export.metadata import find_images
    from engine.export.onnx_export import training_images
    from engine.export.precision import export_precision

    loaded = _loaded_images(session, request) if request.data_path else None
    recorded = validation_images(session, calibration=CALIBRATION_IMAGES) \
        if loaded is None or request.calibration == "recorded" else None
    measured = loaded if loaded is not None else recorded
    calibration = None
    if request.precision == "int8" and request.calibration in ("data", "recorded"):
        source = loaded if request.calibration == "data" else recorded
        if source is None:
            raise GraftError("No data is loaded to calibrate int8 on. Nothing was written.")
        calibration = [str(p) for p in source.calibration]
        if not calibration:
            raise GraftError(f"No calibration images: {source.where}. Choose a folder of images, or none for "
                             "dynamic quantization of the linear layers. Nothing was written.")
    elif request.precision == "int8" and request.calibration == "folder":
        folder = Path(request.folder).expanduser()
        if not folder.is_dir():
            raise GraftError(f"The calibration folder {folder} does not exist. Nothing was written.")
        calibration = [str(p) for p in spread(find_images([folder]), CALIBRATION_IMAGES)]
        if not calibration:
            raise GraftError(f"No image files in {folder} to calibrate int8 on. Nothing was written.")
    verify = request.verify
    if verify is None:
        found, _ = training_images(request.extra)
        verify = [str(p) for p in found] or None
    images = [str(p) for p in measured.validation] if measured.validation else None
    return export_precision(session, request.path, request.precision, calibration=calibration, images=images,
                            targets=measured.targets or None, where=measured.where if images else "",
                            keep_float=request.keep_float, verify_images=verify, runs=TIMED_RUNS,
                            progress=report_progress)


def _write_script(session, path: str, project: str):
    from engine.export.script import write_training_script

    return write_training_script(session, path, project)


def export_summary(report, path: str) -> str:
    """The message after an export: where, how big, and the largest difference from PyTorch per head."""
    from engine.export.onnx_export import allowed_diff

    size = getattr(report, "size_bytes", 0) or 0
    lines = [f"Exported {Path(path).name} ({size / 1e6:.1f} MB)." if size else f"Exported {Path(path).name}."]
    random_diff = dict(getattr(report, "random_diff", {}) or {})
    image_diff = dict(getattr(report, "image_diff", {}) or {})
    heads = list(dict.fromkeys(list(random_diff) + list(image_diff)))
    if heads:
        images = getattr(report, "images", 0)
        where = f"a random batch and {images} real image{'s' if images != 1 else ''}" if image_diff \
            else "a random batch"
        lines.append(f"Largest difference between ONNX Runtime and PyTorch on {where}:")
        tolerance = getattr(report, "tolerance", 1e-4)
        scales = dict(getattr(report, "output_scale", {}) or {})
        within = True
        for head in heads:
            value = max(v for v in (random_diff.get(head), image_diff.get(head)) if v is not None)
            allowed = allowed_diff(tolerance, scales.get(head, 0.0))  # relative beyond ±1, as verified
            within = within and value <= allowed
            extra = f"  (outputs up to {scales[head]:.3g}: {allowed:.1e} allowed)" if allowed > tolerance else ""
            lines.append(f"    {head}: {value:.1e}{extra}")
        lines.append("Within the tolerance of {:.0e}.".format(tolerance) if within
                     else "Larger than the tolerance of {:.0e}!".format(tolerance))
    for note in getattr(report, "notes", []) or []:
        lines.append(note)
    return "\n".join(lines)


def precision_summary(report) -> str:
    """What an fp16/int8 export wrote and how, above its table: the file and its size against fp32's, the
    method, the layers kept in float, the fp32 graph's verification, and the engine's notes."""
    from engine.export.precision import STATIC_METHOD

    r, e = report.reduction, report.export
    ratio = f", {report.size_bytes / e.size_bytes:.2f}x of fp32's {human_bytes(e.size_bytes)}" if e.size_bytes else ""
    lines = [f"Exported {Path(report.path).name}: {report.precision}, {human_bytes(report.size_bytes)}{ratio}, "
             f"in {report.seconds:.1f} s."]
    if r is not None:
        how = r.method[0].upper() + r.method[1:]
        if r.calibration_images:
            how += f", calibrated on {plural(r.calibration_images, 'training image')}"
        if r.precision == "int8":
            how += f"; {r.quantized_layers} of {plural(r.weight_layers, 'weight layer')} quantized"
        lines.append(how + ".")
        if r.float_layers:
            shown = ", ".join(r.float_layers[:6]) + (" …" if len(r.float_layers) > 6 else "")
            lines.append(f"Kept in float ({plural(len(r.float_layers), 'layer')} most sensitive to int8): {shown}.")
        elif r.method == STATIC_METHOD and report.sensitivity:
            lines.append("The sensitivity pass ran, and no layer needed to stay in float.")
    if e.verified:
        lines.append(f"The fp32 graph it was made from matches PyTorch (largest difference {e.max_diff:.1e}"
                     + (f", on a random batch and {plural(e.images, 'real image')})." if e.images else
                        ", on a random batch)."))
    for note in list(report.notes) + (list(r.notes) if r is not None else []):
        lines.append(note[0].upper() + note[1:] + ("" if note.endswith(".") else "."))
    return "\n".join(lines)


def precision_warning(report) -> tuple[str, bool]:
    """A head that lost more than the limit, in words, and whether keeping layers in float may help."""
    from engine.export.precision import MAX_LOSS_POINTS, STATIC_METHOD

    losses = report.losses
    if not losses:
        return "", False
    r = report.reduction
    lost = ", ".join(f"{points:.1f} points of accuracy on head '{head}'" for head, points in losses)
    said = f"{report.precision} loses {lost} against fp32 (more than {MAX_LOSS_POINTS:g})."
    if report.precision != "int8":
        return said + " Export fp32 for this model.", False
    if r is not None and r.float_layers:
        return (f"{said[:-1]}, even with {plural(len(r.float_layers), 'layer')} kept in float. Export fp16 "
                "instead: it keeps the answers closer."), False
    if r is None or r.method != STATIC_METHOD:
        return said + " Only a calibrated int8 export can keep layers in float: choose calibration images, " \
                      "or export fp16.", False
    return said + " Keeping the layers most sensitive to int8 in float usually wins it back.", True


class Export(QObject):
    """File ▸ Export ONNX and File ▸ Export training script. ``exported(report)`` after a successful
    export (an ExportReport for fp32, a PrecisionReport for fp16/int8); ``script_written(path)``."""

    exported = Signal(object)
    script_written = Signal(str)

    def __init__(self, window: QWidget, workspace: Workspace, jobs: Jobs, messages: Messages,
                 settings: Settings) -> None:
        super().__init__(window)
        self._window = window
        self._workspace, self._jobs, self._messages, self._settings = workspace, jobs, messages, settings
        self.report_dialog: PrecisionReportDialog | None = None  # the last fp16/int8 table, kept for a re-run
        self._request: ReducedRequest | None = None

    def export_onnx_dialog(self) -> None:
        if self._workspace.session is None:
            return
        project = self._workspace.project_path
        base = Path(project).with_suffix(".onnx").name if project else "model.onnx"
        start = str(Path(self._settings.last_dir("export")) / base)
        last = str(self._settings.value("export/precision", "fp32") or "fp32")
        path, chosen = QFileDialog.getSaveFileName(self._window, "Export ONNX", start, ONNX_FILTER,
                                                   PRECISION_FILTERS.get(last, PRECISION_FILTERS["fp32"]))
        if not path:
            return
        if not path.lower().endswith(".onnx"):
            path += ".onnx"
        precision = precision_of(chosen)
        if precision == "fp32":
            self._settings.set_value("export/precision", "fp32")
            self.export_onnx(path)
        else:
            self.export_reduced_dialog(path, precision)

    # -- fp16 and int8 ----------------------------------------------------------------------------
    def calibration_sources(self) -> list[CalibrationSource]:
        """Where int8's calibration images may come from, best first, each available or saying why not."""
        from engine.training.record import TrainingRecord
        from widgets.precision_dialogs import CalibrationSource

        ws = self._workspace
        if ws.data is not None:
            n = len(ws.data.train)
            data = CalibrationSource("data", f"Training images of the loaded data, {Path(ws.data_path or '').name} "
                                     f"({min(n, CALIBRATION_IMAGES)} of {n} used)", n > 0,
                                     "" if n else "The loaded data has no training images.")
        else:
            data = CalibrationSource("data", "Training images of the loaded data", False,
                                     "No data is loaded (File ▸ Open image folder or CSV manifest).")
        record = TrainingRecord.latest(getattr(ws.session, "project_extra", None))
        recorded = record.data if record is not None else None
        if recorded and Path(recorded).exists():
            project = CalibrationSource("recorded", f"The project's training data, {recorded}", True, str(recorded))
        else:
            project = CalibrationSource("recorded", "The project's training data", False,
                                        f"Its training data {recorded} no longer exists." if recorded else
                                        "The project does not record the data it was trained on.")
        return [data, project,
                CalibrationSource("folder", f"Images in a folder (up to {CALIBRATION_IMAGES} used):"),
                CalibrationSource("none", "None: dynamic quantization of the linear layers")]

    def _comparison_text(self) -> str:
        ws = self._workspace
        what = "The file is measured against fp32 (size, latency, agreement, accuracy) on"
        if ws.data is not None:
            return f"{what} the validation images of the loaded data, {Path(ws.data_path or '').name}."
        if any(s.key == "recorded" and s.available for s in self.calibration_sources()):
            return f"{what} the validation images of the project's training data."
        return ("No validation images to measure the file against fp32 on (load data to see the accuracy it "
                "keeps); int8 calibrated on a folder is compared on those images.")

    def export_reduced_dialog(self, path: str, precision: str) -> None:
        """Ask the precision and int8's calibration images, then export."""
        from widgets.precision_dialogs import PrecisionDialog

        if self._workspace.session is None:
            return
        dialog = PrecisionDialog(self._window, Path(path).name, precision, self.calibration_sources(),
                                 self._comparison_text(), self._settings.last_dir("data"))
        if dialog.exec() != QDialog.DialogCode.Accepted:
            return
        precision = dialog.precision()
        self._settings.set_value("export/precision", precision)
        if precision == "fp32":
            self.export_onnx(path)
        else:
            self.export_reduced(path, precision, dialog.calibration(), dialog.folder())

    def export_reduced(self, path: str, precision: str, calibration: str = "none", folder: str = "",
                       keep_float: str | None = None) -> None:
        """Export ``precision`` ("fp16", "int8") to ``path`` in a worker, then show the table against fp32."""
        from engine.files import check_target

        ws = self._workspace
        session, data = ws.session, ws.data
        if session is None or self._jobs.must_wait("export", "Exporting"):
            return
        try:
            check_target(Path(path).expanduser())  # an unwritable place: said now, before any work
        except GraftError as exc:
            self._messages.show_error(str(exc), title="Export ONNX")
            return
        self._run_reduced(ReducedRequest(
            str(Path(path).expanduser()), precision, calibration, folder, ws.data_path if data is not None else None,
            [str(s.path) for s in data.train] if data is not None else [],
            [str(s.path) for s in data.val] if data is not None else [],
            [str(s.path) for s in data.val[:4]] or None if data is not None else None,
            dict(session.project_extra or {}), keep_float))

    def _run_reduced(self, request: ReducedRequest) -> None:
        name = Path(request.path).name

        def done(report):
            self._settings.set_last_dir("export", request.path)
            self._request = request
            self._messages.show_message(precision_summary(report).splitlines()[0])
            self._show_report(report)
            self.exported.emit(report)

        def failed(message, details):
            if self.report_dialog is not None and request.keep_float:
                self.report_dialog.set_busy("The re-run failed: the file written before is unchanged.")
            self._messages.show_error(message, details, "Export failed")

        def stale(report):
            self._messages.show_message(f"Exported {name} (the model that was open when the export began).")

        self._jobs.run("export", f"Exporting {name} ({request.precision})…", _export_reduced, self._workspace.session,
                       request, finished=done, stale=stale, errored=failed, progress=self._jobs.show_text)

    def _show_report(self, report) -> None:
        from widgets.precision_dialogs import PrecisionReportDialog

        if self.report_dialog is None:
            self.report_dialog = PrecisionReportDialog(self._window)
            self.report_dialog.keepFloatRequested.connect(self.keep_float)
        warning, offer = precision_warning(report)
        self.report_dialog.set_report(f"Export {report.precision}: {Path(report.path).name}", precision_summary(report),
                                      report.table(), warning, offer)
        self.report_dialog.open()
        self.report_dialog.raise_()

    def keep_float(self) -> None:
        """Export the last int8 file again, keeping its most sensitive layers in float (as few as win the
        accuracy back: the engine's ``keep_float="auto"``)."""
        request = self._request
        if request is None or self._workspace.session is None or self._jobs.must_wait("export", "Exporting"):
            return
        if self.report_dialog is not None:
            self.report_dialog.set_busy("Measuring each layer's sensitivity to int8 and exporting again…")
        self._run_reduced(replace(request, keep_float="auto"))

    # -- the training script ----------------------------------------------------------------------
    def export_script_dialog(self) -> None:
        if self._workspace.session is None:
            return
        start = str(Path(self._settings.last_dir("script")) / SCRIPT_NAME)
        path, _ = QFileDialog.getSaveFileName(self._window, "Export training script", start, SCRIPT_FILTER)
        if path:
            if not path.lower().endswith(".py"):
                path += ".py"
            self.export_script(path)

    def export_script(self, path: str) -> None:
        """Write the standalone training script (torch, torchvision, NumPy, Pillow; no Graft) in a worker."""
        from engine.files import check_target

        ws = self._workspace
        session = ws.session
        if session is None or self._jobs.must_wait("export", "Writing the training script"):
            return
        try:
            target = check_target(Path(path).expanduser())
        except GraftError as exc:
            self._messages.show_error(str(exc), title="Export training script")
            return
        project = Path(ws.project_path).name if ws.project_path else f"an unsaved Graft project ({session.describe()})"

        def done(written, path=str(target)):
            self._settings.set_last_dir("script", path)
            name = Path(path).name
            from engine.training.record import TrainingRecord

            record = TrainingRecord.latest(session.project_extra)
            data = f"\n(--data defaults to the project's training data, {record.data}.)" \
                if record is not None and record.data else ""
            self._messages.show_message(f"Wrote {name}: run it with python {name} --data PATH --epochs N --out DIR")
            QMessageBox.information(
                self._window, "Export training script",
                f"Wrote {path}: one Python file that rebuilds and trains this project with torch, torchvision, "
                f"NumPy and Pillow only, no Graft.\n\nRun it with\n    python {name} --data PATH --epochs N --out DIR"
                f"{data}\n\nIt writes DIR/model.onnx (main.py predict reads it) and DIR/metrics.json.")
            self.script_written.emit(path)

        self._jobs.run("export", f"Writing {target.name}…", _write_script, session, str(target), project,
                       finished=done, errored=self._messages.errors_titled("Export training script failed"))

    # -- fp32 ---------------------------------------------------------------------------------------
    def export_onnx(self, path: str) -> None:
        session, data = self._workspace.session, self._workspace.data
        if session is None:
            return
        if self._jobs.must_wait("export", "Exporting"):
            return
        folder = Path(path).expanduser().parent
        if not folder.is_dir():
            self._messages.show_error(f"Cannot export to {path}: the folder {folder} does not exist.",
                                      title="Export ONNX")
            return
        images = [str(s.path) for s in (data.val[:4] if data is not None else [])] or None
        extra = dict(session.project_extra or {})  # its TrainingRecord says where the training data is

        def done(report, path=str(path)):
            self._settings.set_last_dir("export", path)
            text = export_summary(report, path)
            self._messages.show_message(text.splitlines()[0])
            QMessageBox.information(self._window, "Export ONNX", text)
            self.exported.emit(report)

        def stale(report, path=str(path)):
            self._messages.show_message(f"Exported {Path(path).name} (the model that was open when the export "
                                        "began).")

        self._jobs.run("export", f"Exporting {Path(path).name}…", _export, session, str(path), images, extra,
                       finished=done, stale=stale, errored=self._messages.errors_titled("Export failed"),
                       progress=self._jobs.show_text)
