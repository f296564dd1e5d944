"""Evaluating every head on the validation data, and trying the model on one image — the Evaluate tab."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, Signal

from .jobs import UNTIL
from .workers import Cancelled

if TYPE_CHECKING:
    from PySide6.QtWidgets import QWidget

    from widgets.evaluation_panel import EvaluationPanel
    from widgets.try_image_view import TryImageView

    from .jobs import Jobs
    from .messages import Messages
    from .workspace import Workspace


# -- work done in worker threads (plain functions: no Qt, no widgets) ---------------------------------
def _evaluate(session, data, split: str, tta: str | None = None, report_progress=None, should_stop=None):
    from engine.training.evaluation import evaluate

    def progress(done, total):
        if should_stop is not None and should_stop():
            raise Cancelled  # the window is closing: stop after this batch
        if report_progress is not None:
            report_progress((done, total))

    report = evaluate(session, data, split=split, on_progress=progress, tta=tta)
    return report, _dense_examples(report, session.input_spec)


def _dense_examples(report, spec) -> dict[str, list]:
    """Each dense head's evaluated images, worst IoU first, with what to draw (the Evaluate tab's examples)."""
    from engine.explain.mistakes import worst_iou

    return {name: worst_iou(report, name, spec=spec) for name, head in report.heads.items()
            if head.kind in ("segment", "detect") and name in getattr(report, "outputs", {})}


def _predict(session, path: str):
    from engine.export.inference import predict_files
    from engine.runtime.onnx_trunk import prepare_trunk

    predictions = predict_files(session, [path])
    # On a CPU, convert the frozen trunk for onnxruntime now (its snapshot is taken here, in the worker, while
    # surgery waits for this prediction; the conversion runs in the background), so the next images tried run
    # at onnxruntime's speed.
    prepare_trunk(session.model)
    dense = any(getattr(p, "kind", "") in ("segment", "detect") for p in (predictions[0] if predictions else {}).values())
    if not dense:
        return predictions, None
    from engine.explain.mistakes import input_square

    return predictions, input_square(path, session.input_spec)


class Evaluation(QObject):
    """Train ▸ Evaluate and the Evaluate tab. ``evaluated(report)`` (an EvalReport); ``predicted(result)``
    (one image's predictions); ``tried(path)`` once they are shown, or ``tryFailed(path, message)``."""

    evaluated = Signal(object)
    predicted = Signal(object)
    tried = Signal(str)
    tryFailed = Signal(str, str)

    def __init__(self, window: QWidget, workspace: Workspace, jobs: Jobs, messages: Messages,
                 panel: EvaluationPanel, try_image: TryImageView, show_tab: Callable[[str], Any]) -> None:
        super().__init__(window)
        self._workspace, self._jobs, self._messages = workspace, jobs, messages
        self._panel, self._try_image = panel, try_image
        self._show_tab = show_tab
        self.last_report = None
        workspace.connect("session", self._new_session)

    def _new_session(self, session) -> None:
        self.last_report = None  # nothing the previous model produced stays on screen
        self._panel.clear()
        self._try_image.clear()

    def evaluate(self) -> None:
        session, data = self._workspace.session, self._workspace.data
        if session is None or data is None:
            self._messages.show_message("Evaluating needs a model with heads and loaded data.", "warning")
            return
        if self._jobs.must_wait("evaluate", "Evaluating"):
            return
        split = "val" if data.val else "all"
        tta = self._panel.tta()

        def done(result):
            if result is None:
                return
            report, examples = result
            self.last_report = report
            self._panel.set_report(report)
            for head, items in examples.items():
                self._panel.set_examples(head, items)
            self._show_tab("evaluate")
            where = "validation" if split == "val" else "all the"
            with_tta = f", test-time augmentation {tta}" if tta else ""
            self._messages.show_message(f"Evaluated on {where} data: {report.n_images} images{with_tta} "
                                        "(Evaluate tab).")
            self.evaluated.emit(report)

        self._jobs.run("evaluate", "Evaluating on the validation data…", _evaluate, session, data, split, tta,
                       finished=done, errored=self._messages.errors_titled("Evaluation failed"),
                       progress=self._jobs.show_progress)

    def predict_image(self, path: str) -> None:
        path = str(path)
        view = self._try_image
        refusal = "Open a model first." if self._workspace.session is None else None
        blocker = self._jobs.blocker("predict") if refusal is None else None
        if blocker is not None:
            refusal = f"Predictions wait until {UNTIL[blocker]}."
        if refusal is not None:  # say so where the image is shown, too
            if view.image_path() != path:
                view.set_image(path)
            view.set_status(refusal)
            self._messages.show_message(refusal, "warning")
            return

        def done(result, path=path):
            preds, square = result
            first = preds[0] if isinstance(preds, list) and preds else preds
            view.show_predictions(path, first, **(square or {}))
            self._messages.show_message(f"Predicted {Path(path).name}.")
            self.predicted.emit(first)
            self.tried.emit(path)

        def failed(message, details, path=path):
            view.set_status(message)
            self._messages.show_error(message, details, "Prediction failed")
            self.tryFailed.emit(path, message)

        if self._jobs.run("predict", f"Predicting {Path(path).name}…", _predict, self._workspace.session, path,
                          finished=done, errored=failed) is not None:
            if view.image_path() != path:  # chosen in the view: it is shown (decoded) already
                view.set_image(path)
            view.set_status("Predicting…")
