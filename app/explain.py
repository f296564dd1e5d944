"""Seeing inside the model, in the Evaluate tab: where each head looks in the tried image (a Grad-CAM
heatmap), a layer's strongest channels, the images behind a confusion-matrix cell, each head's worst
mistakes, and the label audit with "Export suggestions as CSV…".

Heatmaps and activations hook the model while they run, so they are one job, ``explain``, that waits
like a prediction does (and that surgery, training, evaluation, export and predictions wait for; see
:data:`app.jobs.WAITS_FOR`). Requests that come while one runs wait here, the latest of each kind winning;
an image asked to be tried meanwhile (a click in the gallery) is tried as soon as it ends. The mistakes
and the audit are read from the evaluation's per-image outputs in a worker; thumbnails are decoded by a
:class:`~widgets.thumbnails.ThumbnailLoader` on its thread pool. The GUI thread only shows results.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtWidgets import QFileDialog

from engine.network.layer_tree import HEADS_KEY
from engine.units import plural

from .jobs import UNTIL

if TYPE_CHECKING:
    from PySide6.QtWidgets import QTabWidget, QWidget

    from widgets.activation_grid import ActivationGridView
    from widgets.heatmap_view import HeatmapView
    from widgets.label_audit_view import LabelAuditView
    from widgets.mistakes_gallery import MistakesGallery

    from .jobs import Jobs
    from .messages import Messages
    from .workspace import Workspace

GALLERY_LIMIT = 500  # the worst this many of a longer list are shown
CACHED_HEATMAPS = 32
REFUSED_BY = ("train", "load", "evaluate", "export")  # long work: a heatmap asked for meanwhile is refused
SELECT_LAYER = "Select a layer in the tree to see its strongest channels for the tried image."


# -- work done in worker threads (plain functions: no Qt, no widgets) ---------------------------------
def _heatmap(session, image: str, head: str, target: str, layer: str, with_layers: bool):
    """The heatmap of one head (and, the first time for this model, the layers the picker offers)."""
    from engine.explain.heatmap import explain
    from engine.explain.layers import default_layer, spatial_layers

    layers = ([path for path, _ in spatial_layers(session)], default_layer(session)) if with_layers else None
    heatmap, = explain(session, image, heads=[head], target=target or None, layer=layer or None)
    return heatmap, layers


def _activations(session, image: str, layer: str):
    from engine.explain.activations import activations

    return activations(session, image, layer)


def _lists(report, spec=None):
    """The gallery's lists, ``(key, combo text, title, examples)`` each, and the label audit."""
    from engine.explain import mistakes as m

    lists = []
    for head, result in report.heads.items():
        if result.kind == "single":
            items = m.mistakes(report, head)
            lists.append((f"{head}:mistakes", f"{head} ▸ most confident mistakes ({len(items)})",
                          f"{head}: the wrong answers, highest loss first", items))
        elif result.kind == "multi":
            items = m.mistakes(report, head)
            lists.append((f"{head}:mistakes", f"{head} ▸ every wrong label ({len(items)})",
                          f"{head}: every wrong label, highest loss first", items))
            for label in result.classes:
                fp, fn = m.label_errors(report, head, label)
                lists.append((f"{head}:fp:{label}", f"{head} ▸ false positives: {label} ({len(fp)})",
                              f"{head}: {label} seen where it is not, most confident first", fp))
                lists.append((f"{head}:fn:{label}", f"{head} ▸ false negatives: {label} ({len(fn)})",
                              f"{head}: {label} missed, most confident first", fn))
        elif result.kind in ("segment", "detect"):
            items = m.worst_iou(report, head, spec=spec)
            what = "mask" if result.kind == "segment" else "boxes"
            lists.append((f"{head}:iou", f"{head} ▸ worst IoU ({len(items)})",
                          f"{head}: the images its {what} cover worst first (IoU with the truth)", items))
        else:
            items = m.largest_errors(report, head)
            lists.append((f"{head}:errors", f"{head} ▸ largest errors ({len(items)})",
                          f"{head}: the predictions furthest from the truth first", items))
    return report, lists, m.label_audit(report)


def _cell(report, head: str, truth: int, prediction: int):
    from engine.explain.mistakes import cell_examples

    return cell_examples(report, head, truth, prediction)


def _write_suggestions(path: str, suggestions, root, protected):
    from engine.explain.mistakes import write_suggestions

    return write_suggestions(path, suggestions, root=root, protected=protected)


class Explain(QObject):
    """The heatmap and activation views, the gallery and the label audit of the Evaluate tab.

    ``explained(heatmap)`` and ``activationsShown(activations or message)`` when one is shown;
    ``listed()`` when an evaluation's lists and audit are ready; ``galleryShown(title)``; ``tryRequested(path)``: try this image
    (the window hands it to the evaluation); ``suggestionsWritten(path)``."""

    explained = Signal(object)
    activationsShown = Signal(object)
    listed = Signal()
    galleryShown = Signal(str)  # the title of what the gallery shows now
    tryRequested = Signal(str)
    suggestionsWritten = Signal(str)

    def __init__(self, window: QWidget, workspace: Workspace, jobs: Jobs, messages: Messages,
                 heatmap: HeatmapView, grid: ActivationGridView, gallery: MistakesGallery, audit: LabelAuditView,
                 looks: QTabWidget, lists: QTabWidget) -> None:
        from widgets.thumbnails import ThumbnailLoader

        super().__init__(window)
        self._window, self._workspace, self._jobs, self._messages = window, workspace, jobs, messages
        self._heatmap, self._grid, self._gallery, self._audit = heatmap, grid, gallery, audit
        self._looks, self._lists_tabs = looks, lists  # heatmap | activations; gallery | audit
        self._loader = ThumbnailLoader(self)
        self._timer = QTimer(self)  # pending requests start from the event loop, after the job that ended
        self._timer.setSingleShot(True)
        self._timer.setInterval(0)
        self._timer.timeout.connect(self._pump)
        heatmap.requested.connect(self.request_heatmap)
        gallery.itemActivated.connect(self._open_item)
        gallery.listChosen.connect(self.show_list)
        audit.suggestionActivated.connect(self._open_item)
        audit.exportRequested.connect(self.export_suggestions)
        looks.currentChanged.connect(lambda _: self._want_activations())
        workspace.connect("session", self._new_session)
        workspace.connect("session_changed", self._model_changed)
        workspace.connect("modified", self._weights_changed)
        workspace.connect("closed", self._loader.cancel)
        jobs.connect("changed", self._timer.start)
        self._forget()

    def _forget(self) -> None:
        self.report: Any = None
        self._lists: dict[str, tuple[str, list[Any]]] = {}  # key -> (title, examples)
        self.suggestions: list[Any] = []
        self.image: str | None = None  # the image tried: its prediction is shown
        self._layer: str | None = None  # the layer selected in the tree
        self._open_for: tuple[str, str] | None = None  # (head, target) to explain for the image about to be tried
        self._cache: OrderedDict[tuple[str, str, str, str], Any] = OrderedDict()
        self._layers_fresh = False  # the heatmap's layer picker lists this model's spatial layers
        self._shown_activations: tuple[str, str] | None = None
        # "try": path; "heatmap", "activations": what to compute; "lists": a report; "cell": (report, head, t, p)
        self._pending: dict[str, Any] = {}

    # -- following the workspace ----------------------------------------------------------------
    def _new_session(self, session) -> None:
        self._loader.cancel()
        self._forget()
        self._heatmap.clear()
        self._heatmap.set_layers([], None)
        self._show_heads()
        self._grid.show_message(SELECT_LAYER)
        self._gallery.set_lists([])
        self._gallery.show_items([], "", "Evaluate (F6), then click a confusion-matrix cell or choose a list.")
        self._audit.show_message("Evaluate (F6) to see which labels the model doubts.")

    def _show_heads(self) -> None:
        self._heatmap.set_heads({h.name: h.label_names for h in self._session_heads()})

    def _model_changed(self, op=None) -> None:
        """Surgery: other heads or layers; nothing computed before holds."""
        self._layers_fresh = False
        self._weights_changed()
        self._show_heads()

    def _weights_changed(self) -> None:
        self._cache.clear()
        self._shown_activations = None

    # -- trying an image ------------------------------------------------------------------------
    def _open_item(self, item) -> None:
        """A gallery image or an audit row: its head's heatmap, for the label in question (a multi-label
        head's wrong label, a regression target; a single-label head: its answer)."""
        head = str(item.head)
        target = getattr(item, "label", None) or getattr(item, "column", None) or ""
        spec = next((h for h in self._session_heads() if h.name == head), None)
        names = spec.label_names if spec is not None else []
        self.open_image(str(item.image), head, target if spec is not None and spec.kind != "single"
                        and target in names else "")

    def _session_heads(self) -> list[Any]:
        s = self._workspace.session
        return list(s.heads) if s is not None else []

    def open_image(self, path: str, head: str | None = None, target: str = "") -> None:
        """Try ``path`` (from the gallery, the audit, the try-an-image view or a drop), and explain
        ``head`` for it (``target``: "" for its answer); after the work under way, if any."""
        self._open_for = (head, target) if head else None
        for kind in ("heatmap", "activations"):  # asked for the image shown until now
            self._pending.pop(kind, None)
        if "explain" in self._jobs.running:
            self._pending["try"] = str(path)
            self._heatmap.set_status(f"{Path(path).name} is tried when this is done…")
            return
        self.tryRequested.emit(str(path))

    def image_tried(self, path: str) -> None:
        """The prediction for ``path`` is shown: now where the heads look (and, shown, a layer's channels)."""
        self.image = str(path)
        self._heatmap.clear()
        if self._open_for is not None:
            head, target = self._open_for
            self._heatmap.select(head=head, target=target)
            self._open_for = None
        if not self._heatmap.current_head():
            self._heatmap.set_status("The model has no heads yet: add (and train) one to see where it looks.")
        self.request_heatmap(*self._heatmap.current_request())
        self._want_activations()

    def try_failed(self, path: str, message: str) -> None:
        self.image = None
        self._heatmap.show_problem(f"No heatmap: {message}")
        if self._grid.isVisible():
            self._grid.show_message(f"No activations: {message}")

    # -- heatmaps -------------------------------------------------------------------------------
    def request_heatmap(self, head: str, target: str, layer: str) -> None:
        if not head:
            return
        if self.image is None:
            self._heatmap.set_status("Try an image to see where each head looks.")
            return
        key = (self.image, head, target, layer)
        if key in self._cache:
            self._cache.move_to_end(key)
            self._show_heatmap(self._cache[key])
            return
        self._pending["heatmap"] = key
        self._heatmap.set_status(f"Finding where {head} looks…")
        self._timer.start()

    def _wanted(self) -> tuple[str | None, str, str, str]:
        return (self.image, *self._heatmap.current_request())

    def _show_heatmap(self, heatmap) -> None:
        self._heatmap.show_heatmap(heatmap)
        self._messages.show_message(f"Heatmap of {heatmap.head} for {Path(self.image or '').name} "
                                    f"in {heatmap.seconds:.2f} s.")
        self.explained.emit(heatmap)

    def _start_heatmap(self, key: tuple[str, str, str, str]) -> None:
        image, head, target, layer = key

        def done(result, key=key):
            heatmap, layers = result
            if layers is not None:
                self._layers_fresh = True
                self._heatmap.set_layers(*layers)
            self._cache[key] = heatmap
            while len(self._cache) > CACHED_HEATMAPS:
                self._cache.popitem(last=False)
            if key == self._wanted():
                self._show_heatmap(heatmap)

        def failed(message, details, key=key):
            self._say_problem(message, details, "Heatmap")
            if key == self._wanted():
                self._heatmap.show_problem(message)

        self._jobs.run("explain", f"Finding where {head} looks…", _heatmap, self._workspace.session, image, head,
                       target, layer, not self._layers_fresh, finished=done, errored=failed)

    def _say_problem(self, message: str, details: str, what: str) -> None:
        """Bad input (a GraftError: TorchScript, a layer without a spatial output) is said in the view and
        the status line; an unexpected failure also gets a box with its details."""
        if details:
            self._messages.show_error(message, details, f"{what} failed")
        else:
            self._messages.show_message(message, "warning")

    # -- activations ----------------------------------------------------------------------------
    def layer_selected(self, path: str) -> None:
        """The tree's current layer: its channels for the tried image, when the Evaluate tab shows."""
        self._layer = path if path and not path.startswith(HEADS_KEY) else None
        if self._layer is not None and self._looks.isVisible():
            self._looks.setCurrentWidget(self._grid)
        self._want_activations()

    def tab_shown(self) -> None:
        self._want_activations()

    def _want_activations(self) -> None:
        if not self._grid.isVisible():
            return  # computed when it shows
        if self._layer is None or self.image is None:
            self._shown_activations = None
            self._grid.show_message(SELECT_LAYER if self._layer is None else
                                    f"Try an image to see the strongest channels of {self._layer}.")
            return
        key = (self.image, self._layer)
        if key != self._shown_activations:
            self._pending["activations"] = key
            self._grid.show_message(f"Computing the channels of {self._layer}…")
            self._timer.start()

    def _start_activations(self, key: tuple[str, str]) -> None:
        image, layer = key

        def shown(what, key=key) -> bool:
            if key != (self.image, self._layer):
                return False
            self._shown_activations = key
            self.activationsShown.emit(what)
            return True

        def done(activations, key=key):
            if shown(activations, key):
                self._grid.show_activations(activations)

        def failed(message, details, key=key):
            self._say_problem(message, details, "Activations")
            if shown(message, key):
                self._grid.show_message(message)

        self._jobs.run("explain", f"Computing the channels of {layer}…", _activations, self._workspace.session,
                       image, layer, finished=done, errored=failed)

    # -- one job at a time ------------------------------------------------------------------------
    def _pump(self) -> None:
        """Start what waits, if it may start now: the image to try first, then a heatmap, then activations."""
        for kind, job, start in (("lists", "mistakes", self._start_lists), ("cell", "cell", self._start_cell)):
            if kind in self._pending and job not in self._jobs.running:
                start(self._pending.pop(kind))
        if "explain" in self._jobs.running:
            return  # its end brings us back
        if "try" in self._pending:
            self.tryRequested.emit(self._pending.pop("try"))
            return  # the heatmap follows the prediction
        if not self._pending.keys() & {"heatmap", "activations"}:
            return
        blocker = self._jobs.blocker("explain")
        if blocker is None:
            kind = "heatmap" if "heatmap" in self._pending else "activations"
            key = self._pending.pop(kind)
            (self._start_heatmap if kind == "heatmap" else self._start_activations)(key)
        elif blocker in REFUSED_BY:  # long work: asked again when it has finished
            text = f"Heatmaps and activations wait until {UNTIL[blocker]}."
            if self._pending.pop("heatmap", None) is not None:
                self._heatmap.set_status(text)
            if self._pending.pop("activations", None) is not None:
                self._grid.show_message(text)
            self._messages.show_message(text, "warning")

    # -- the gallery and the audit ----------------------------------------------------------------
    def set_report(self, report) -> None:
        """A new evaluation: its lists of mistakes and its label audit, read in a worker."""
        self.report, self._lists, self.suggestions = report, {}, []
        self._loader.cancel()
        self._gallery.set_lists([])
        self._gallery.show_items([], "", "Click a confusion-matrix cell, or choose a list of mistakes above.")
        self._audit.show_message("Auditing the labels…")
        self._pending["lists"] = report
        self._timer.start()

    def _start_lists(self, report) -> None:
        def done(result):
            listed, lists, audit = result
            if listed is not self.report:
                return  # a newer evaluation is being listed
            from engine.explain.mistakes import AUDIT_CONFIDENCE

            self._lists = {key: (title, items) for key, _, title, items in lists}
            self._gallery.set_lists([(key, text) for key, text, _, _ in lists])
            self.suggestions = audit
            self._audit.show_suggestions(audit, AUDIT_CONFIDENCE)
            self.listed.emit()

        def failed(message, details):
            self._gallery.show_items([], "", message)
            self._audit.show_message(message)
            self._say_problem(message, details, "Listing the mistakes")

        session = self._workspace.session
        self._jobs.run("mistakes", "Listing the mistakes…", _lists, report,
                       session.input_spec if session is not None else None, finished=done, errored=failed)

    def show_cell(self, head: str, truth: int, prediction: int) -> None:
        """A click on a confusion-matrix cell: exactly the validation images it counts (listed in a worker:
        a big data set's cell holds thousands)."""
        if self.report is None:
            return
        self._gallery.select_list(None)
        self._pending["cell"] = (self.report, head, truth, prediction)
        if "cell" not in self._jobs.running:
            self._start_cell(self._pending.pop("cell"))

    def _start_cell(self, key: tuple[Any, str, int, int]) -> None:
        report, head, truth, prediction = key

        def done(items):
            if report is self.report and "cell" not in self._pending:  # else a newer click is listed next
                names = report.heads[head].classes
                self._show_gallery(f"{head}: {plural(len(items), 'image')} of {names[truth]} answered "
                                   f"{names[prediction]}, highest loss first", items,
                                   "No validation image is in this cell.")

        def failed(message, details):
            self._gallery.show_items([], "", message)
            self._say_problem(message, details, "Listing the cell's images")

        self._jobs.run("cell", "Listing the cell's images…", _cell, report, head, truth, prediction,
                       finished=done, errored=failed)

    def show_list(self, key: str) -> None:
        if key in self._lists:
            title, items = self._lists[key]
            self._show_gallery(title, items, "None: nothing to show here.")

    def _show_gallery(self, title: str, items: list[Any], empty: str) -> None:
        if len(items) > GALLERY_LIMIT:
            title += f" (the first {GALLERY_LIMIT} of {len(items):,})"
            items = items[:GALLERY_LIMIT]
        self._gallery.show_items(items, title + ". Click one to try it.", empty)
        self._gallery.load_with(self._loader)
        self._lists_tabs.setCurrentWidget(self._gallery)
        self.galleryShown.emit(title)

    def export_suggestions(self) -> None:
        """The audit to a NEW CSV file (the engine refuses the data's own files): Graft never changes the data."""
        if not self.suggestions:
            self._messages.show_message("There are no label suggestions to export.", "warning")
            return
        ws = self._workspace
        folder = Path(ws.project_path).parent if ws.project_path else Path.home()
        path, _ = QFileDialog.getSaveFileName(self._window, "Export suggestions as CSV",
                                              str(folder / "label-suggestions.csv"), "CSV files (*.csv);;All files (*)")
        if not path:
            return
        protected = [ws.data_path] if ws.data_path and Path(ws.data_path).is_file() else []
        root = getattr(ws.data, "root", None)
        count = len(self.suggestions)

        def done(written):
            self._messages.show_message(f"Wrote {plural(count, 'label suggestion')} to {written}; "
                                        "the data itself is unchanged.")
            self.suggestionsWritten.emit(str(written))

        self._jobs.run("suggestions", "Writing the label suggestions…", _write_suggestions, path,
                       list(self.suggestions), root, protected, finished=done, bound=False,
                       errored=self._messages.errors_titled("Export suggestions"))
