"""File ▸ Export ONNX: the dialog, the export and its verification in a worker, and the summary after."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtWidgets import QFileDialog, QMessageBox

from engine.units import plural

if TYPE_CHECKING:
    from PySide6.QtWidgets import QWidget

    from .jobs import Jobs
    from .messages import Messages
    from .settings import Settings
    from .workspace import Workspace

ONNX_FILTER = "ONNX models (*.onnx);;All files (*)"


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


class Export(QObject):
    """File ▸ Export ONNX. ``exported(report)`` (an ExportReport) after a successful export."""

    exported = Signal(object)

    def __init__(self, window: QWidget, workspace: Workspace, jobs: Jobs, messages: Messages,
                 settings: Settings) -> None:
        super().__init__(window)
        self._window = window
        self._workspace, self._jobs, self._messages, self._settings = workspace, jobs, messages, settings

    def export_onnx_dialog(self) -> None:
        if self._workspace.session is None:
            return
        project = self._workspace.project_path
        base = Path(project).with_suffix(".onnx").name if project else "model.onnx"
        start = str(Path(self._settings.last_dir("export")) / base)
        path, _ = QFileDialog.getSaveFileName(self._window, "Export ONNX", start, ONNX_FILTER)
        if path:
            if not path.lower().endswith(".onnx"):
                path += ".onnx"
            self.export_onnx(path)

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
