"""The labelled data: where it comes from, how much there is per head and class, a few thumbnails, and
the rule-of-thumb freezing advice with an Apply button.

The panel asks for data (``dataRequested(path)``: buttons, or a folder / .csv dropped on it) and shows
what it is given (:meth:`DataPanel.set_data`); loading happens elsewhere. An error (:meth:`set_error`) is
shown above the previous data, which stays.
"""
from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PySide6.QtCore import QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QDragEnterEvent, QDropEvent, QImageReader, QPainter, QPixmap
from PySide6.QtWidgets import (QAbstractItemView, QFileDialog, QFrame, QHBoxLayout, QHeaderView,
                               QLabel, QListWidget, QPushButton, QScrollArea, QSizePolicy, QStyledItemDelegate,
                               QTableWidget, QTableWidgetItem, QTabWidget, QToolButton, QToolTip, QVBoxLayout,
                               QWidget)

from engine.training.advice import Advice, freeze_advice
from engine.data.manifests import MANIFEST_SUFFIXES

from .head_diagram import KIND_SHORT, head_colour

THUMBNAILS = 8
THUMB = 84
SHARE_ROLE = Qt.ItemDataRole.UserRole + 1  # 0..1: the bar's length
COLOUR_ROLE = Qt.ItemDataRole.UserRole + 2  # the bar's colour
ERROR_STYLE = ("QLabel { background: #fdecea; color: #b71c1c; border: 1px solid #f5c6c2; border-radius: 4px;"
               " padding: 6px 8px; }")
ADVICE_STYLE = ("QFrame#advice { background: #e8f1fb; border: 1px solid #c4daf2; border-radius: 6px; }"
                " QFrame#advice QLabel { background: transparent; border: none; }")
NOTES_STYLE = ("QLabel#dataNotes { background: #fafafa; border: 1px solid #e0e0e0; border-radius: 6px;"
               " padding: 6px 8px; }")
WARNING_COLOUR = "#bf360c"
NOTE_COLOUR = "#546e7a"
DROP_STYLE = ("QLabel#dropHint { border: 2px dashed #b0bec5; border-radius: 8px; color: #607d8b; padding: 28px; }"
              " QLabel#dropHint[dragging=\"true\"] { border-color: #1e88e5; color: #1e88e5; }")


def dropped_data_path(paths: Sequence[str]) -> str | None:
    """The first local folder or .csv/.tsv manifest among ``paths``."""
    for p in paths:
        path = Path(p)
        if path.is_dir() or path.suffix.lower() in MANIFEST_SUFFIXES:
            return str(path)
    return None


class ShareDelegate(QStyledItemDelegate):
    """A thin horizontal bar: length from SHARE_ROLE (0..1), colour from COLOUR_ROLE."""

    def paint(self, painter: QPainter, option, index) -> None:
        super().paint(painter, option, index)
        share = index.data(SHARE_ROLE)
        if share is None:
            return
        colour = QColor(index.data(COLOUR_ROLE) or "#4C72B0")
        rect = option.rect.adjusted(6, 0, -6, 0)
        height = 8
        bar = QRect(rect.left(), rect.center().y() - height // 2, max(2, int(rect.width() * share)), height)
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        track = QColor(colour)
        track.setAlphaF(0.15)
        painter.setPen(Qt.PenStyle.NoPen)
        painter.setBrush(track)
        painter.drawRoundedRect(QRect(rect.left(), bar.top(), rect.width(), height), 4, 4)
        painter.setBrush(colour)
        painter.drawRoundedRect(bar, 4, 4)
        painter.restore()


class ThumbnailStrip(QWidget):
    """Small images with a caption under each, as many as fit in one row (two when narrow); painted,
    no widget per image. Tooltips show each image's labels."""

    GAP = 8

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._items: list[tuple[QPixmap, str, str]] = []
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)

    def set_items(self, items: Sequence[tuple[QPixmap, str, str]]) -> None:
        """``[(pixmap, caption, tooltip), …]``."""
        self._items = list(items)
        self._fit()
        self.update()

    def count(self) -> int:
        """How many images there are (some may not fit)."""
        return len(self._items)

    def _cell(self) -> QSize:
        return QSize(THUMB, THUMB + self.fontMetrics().height() + 4)

    def _rects(self, width: int) -> list[QRect]:
        cell = self._cell()
        per_row = max(1, (width + self.GAP) // (cell.width() + self.GAP))
        shown = min(len(self._items), per_row if per_row >= 4 else 2 * per_row)  # no lonely last row
        return [QRect((i % per_row) * (cell.width() + self.GAP), (i // per_row) * (cell.height() + self.GAP),
                      cell.width(), cell.height()) for i in range(shown)]

    def hasHeightForWidth(self) -> bool:
        return True

    def heightForWidth(self, width: int) -> int:
        rects = self._rects(width)
        return rects[-1].bottom() + 1 if rects else 0

    def _fit(self) -> None:
        self.setFixedHeight(self.heightForWidth(max(self.width(), self._cell().width())))

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._fit()

    def sizeHint(self) -> QSize:
        return QSize(4 * (THUMB + self.GAP), self.heightForWidth(max(self.width(), THUMB)))

    def event(self, event) -> bool:
        if event.type() == event.Type.ToolTip:
            for rect, (_, _, tip) in zip(self._rects(self.width()), self._items):
                if rect.contains(event.pos()):
                    QToolTip.showText(event.globalPos(), tip, self)
                    return True
            QToolTip.hideText()
            return True
        return super().event(event)

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        muted = self.palette().color(self.palette().ColorRole.WindowText)
        muted.setAlphaF(0.65)
        for rect, (pixmap, caption, _) in zip(self._rects(self.width()), self._items):
            box = QRect(rect.left(), rect.top(), THUMB, THUMB)
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(QColor("#eceff1"))
            p.drawRoundedRect(box, 4, 4)
            if not pixmap.isNull():
                target = pixmap.size().scaled(box.size(), Qt.AspectRatioMode.KeepAspectRatio)
                x = box.left() + (box.width() - target.width()) // 2
                y = box.top() + (box.height() - target.height()) // 2
                p.drawPixmap(QRect(x, y, target.width(), target.height()), pixmap)
            p.setPen(muted)
            text = self.fontMetrics().elidedText(caption, Qt.TextElideMode.ElideRight, THUMB)
            p.drawText(QRect(rect.left(), box.bottom() + 2, THUMB, rect.height() - THUMB),
                       Qt.AlignmentFlag.AlignHCenter | Qt.AlignmentFlag.AlignTop, text)
        p.end()


class DataPanel(QWidget):
    """Data source, per-head summary, thumbnails and freezing advice."""

    dataRequested = Signal(str)
    adviceApplied = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAcceptDrops(True)
        self._session: Any = None
        self._source: Any = None
        self._labelled = 0  # the data's labelled images (its summary's), for the advice
        self._advice: Advice | None = None
        self._warnings: list[str] = []
        self._notes: list[str] = []
        self._start_dir = ""

        self.folder_button = QPushButton("Image folder…", self)
        self.folder_button.setToolTip("A folder with one subfolder of images per class (root/<class>/<image>)")
        self.csv_button = QPushButton("CSV manifest…", self)
        self.csv_button.setToolTip("A .csv with an 'image' column (paths relative to the CSV) and label columns")
        self.path_label = QLabel("", self)
        self.path_label.setObjectName("hint")
        self.path_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.path_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        top = QHBoxLayout()
        top.setSpacing(6)
        top.addWidget(self.folder_button)
        top.addWidget(self.csv_button)
        top.addSpacing(6)
        top.addWidget(self.path_label, 1)

        self.error_label = QLabel(self)
        self.error_label.setObjectName("dataError")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.hide()

        self.drop_hint = QLabel("<p style='font-size:12pt'><b>Drop an image folder or a CSV manifest here</b></p>"
                                "<p>or use the buttons above.</p>"
                                "<p>Folder: one subfolder of images per class.<br>"
                                "CSV: an ‘image’ column and one column per label.</p>", self)
        self.drop_hint.setObjectName("dropHint")
        self.drop_hint.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.drop_hint.setStyleSheet(DROP_STYLE)

        # -- the data display (inside a scroll area) --
        self.summary_label = QLabel(self)
        self.summary_label.setObjectName("dataSummary")
        self.summary_label.setTextFormat(Qt.TextFormat.RichText)
        self.summary_label.setWordWrap(True)
        self.skipped_button = QToolButton(self)
        self.skipped_button.setCheckable(True)
        self.skipped_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.skipped_button.setArrowType(Qt.ArrowType.RightArrow)
        self.skipped_button.setAutoRaise(True)
        self.skipped_list = QListWidget(self)
        self.skipped_list.setMaximumHeight(120)
        self.skipped_list.hide()
        self.skipped_button.toggled.connect(self._toggle_skipped)
        summary_row = QHBoxLayout()
        summary_row.addWidget(self.summary_label, 1)
        summary_row.addWidget(self.skipped_button, 0, Qt.AlignmentFlag.AlignTop)

        # How the data was read (notes) and what may spoil training (warnings), one line each.
        self.notes_label = QLabel(self)
        self.notes_label.setObjectName("dataNotes")
        self.notes_label.setTextFormat(Qt.TextFormat.RichText)
        self.notes_label.setWordWrap(True)
        self.notes_label.setStyleSheet(NOTES_STYLE)
        self.notes_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.notes_label.hide()

        self.advice_frame = QFrame(self)
        self.advice_frame.setObjectName("advice")
        self.advice_frame.setStyleSheet(ADVICE_STYLE)
        self.advice_label = QLabel(self.advice_frame)
        self.advice_label.setWordWrap(True)
        self.advice_title = QLabel("<b>Rule of thumb</b>", self.advice_frame)
        self.apply_button = QPushButton("Apply", self.advice_frame)
        self.apply_button.setToolTip("Freeze the layers as suggested (undoable)")
        self.apply_button.clicked.connect(self._apply_advice)
        advice_layout = QHBoxLayout(self.advice_frame)
        advice_layout.setContentsMargins(12, 8, 8, 8)
        advice_layout.setSpacing(10)
        text_column = QVBoxLayout()
        text_column.setSpacing(2)
        text_column.addWidget(self.advice_title)
        text_column.addWidget(self.advice_label)
        advice_layout.addLayout(text_column, 1)
        advice_layout.addWidget(self.apply_button, 0, Qt.AlignmentFlag.AlignVCenter)
        self.advice_frame.hide()

        self.thumbs_title = QLabel("<b>Examples</b>", self)
        self.thumbs = ThumbnailStrip(self)

        self.heads_title = QLabel("<b>Labels per head</b>", self)
        self.head_tabs = QTabWidget(self)
        self.head_tabs.setDocumentMode(True)

        content = QWidget(self)
        column = QVBoxLayout(content)
        column.setContentsMargins(0, 4, 4, 4)
        column.setSpacing(10)
        column.addLayout(summary_row)
        column.addWidget(self.skipped_list)
        column.addWidget(self.notes_label)
        column.addWidget(self.advice_frame)
        column.addWidget(self.thumbs_title)
        column.addWidget(self.thumbs)
        column.addWidget(self.heads_title)
        column.addWidget(self.head_tabs, 1)
        self.content = content
        self.scroll = QScrollArea(self)
        self.scroll.setWidget(content)
        self.scroll.setWidgetResizable(True)
        self.scroll.setFrameShape(QFrame.Shape.NoFrame)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(10, 10, 10, 10)
        layout.setSpacing(8)
        layout.addLayout(top)
        layout.addWidget(self.error_label)
        layout.addWidget(self.drop_hint, 1)
        layout.addWidget(self.scroll, 1)
        self.scroll.hide()

        self.folder_button.clicked.connect(self.choose_folder)
        self.csv_button.clicked.connect(self.choose_csv)

    # -- public API ----------------------------------------------------------------------------------------
    def set_session(self, session: Any) -> None:
        """The session the advice picks layers from (its trunk's blocks)."""
        self._session = session
        if self._source is not None:
            self.set_advice(freeze_advice(self._labelled, session))

    def set_path(self, path: str) -> None:
        """Show the source's path (e.g. while it loads)."""
        self.path_label.setText(str(path))
        self.path_label.setToolTip(str(path))

    def source(self) -> Any:
        return self._source

    def set_data(self, source: Any) -> None:
        """Show a DataSource: sizes, per-head label counts and missing shares, skipped files, thumbnails
        and the freezing advice. Clears an error shown before."""
        self._source = source
        summary = source.summary()
        self._labelled = summary["n_labelled_any"]
        self.set_error("")
        self.set_path(summary.get("path") or str(getattr(source, "path", "") or ""))
        self.drop_hint.hide()
        self.scroll.show()

        n, n_train, n_val = summary.get("n_samples", 0), summary.get("n_train", 0), summary.get("n_val", 0)
        kind = "image folder" if summary.get("kind") == "folder" else "CSV manifest"
        split = {"random": "random split (seeded)", "column": "split from the CSV's split column",
                 "folders": "split from the train/val folders"}.get(summary.get("split_from", ""), "")
        self.summary_label.setText(
            f"<span style='font-size:15pt; font-weight:600'>{n:,}</span> images &nbsp;·&nbsp; "
            f"<b>{n_train:,}</b> training &nbsp;·&nbsp; <b>{n_val:,}</b> validation"
            f"<br><span style='color:#607d8b'>{kind}, {split}</span>")
        self._show_skipped(list(getattr(source, "skipped", []) or []))
        self._show_notes(list(summary.get("warnings") or []), list(summary.get("notes") or []))
        self._show_thumbnails(source)
        self._show_heads(summary.get("heads", {}))
        self.set_advice(freeze_advice(self._labelled, self._session))

    def set_advice(self, advice: Advice | None) -> None:
        """Show a rule-of-thumb (None hides it); Apply emits ``adviceApplied(advice.preset)``."""
        self._advice = advice
        if advice is None:
            self.advice_frame.hide()
            return
        self.advice_label.setText(advice.text)
        self.apply_button.setToolTip(f"Freeze the layers as suggested ({advice.preset}); undoable")
        self.advice_frame.setVisible(self._source is not None)

    def advice(self) -> Advice | None:
        return self._advice

    def set_error(self, message: str) -> None:
        """Show ``message`` above the (unchanged) data display; empty clears it."""
        self.error_label.setText(message)
        self.error_label.setVisible(bool(message))

    def error_text(self) -> str:
        return self.error_label.text() if self.error_label.isVisibleTo(self) else ""

    def notes(self) -> tuple[list[str], list[str]]:
        """The warnings and notes shown for the current data."""
        return list(self._warnings), list(self._notes)

    def clear(self) -> None:
        self._source = None
        self._labelled = 0
        self._advice = None
        self.set_error("")
        self.path_label.clear()
        self.head_tabs.clear()
        self.thumbs.set_items([])
        self._show_notes([], [])
        self.advice_frame.hide()
        self.scroll.hide()
        self.drop_hint.show()

    def choose_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose an image folder (one subfolder per class)",
                                                self._start_dir)
        if path:
            self._request(path)

    def choose_csv(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Choose a CSV manifest", self._start_dir,
                                              "CSV manifests (*.csv *.tsv);;All files (*)")
        if path:
            self._request(path)

    # -- drag and drop -------------------------------------------------------------------------------------------
    def _urls(self, event: QDragEnterEvent | QDropEvent) -> list[str]:
        mime = event.mimeData()
        return [u.toLocalFile() for u in mime.urls() if u.isLocalFile()] if mime.hasUrls() else []

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if dropped_data_path(self._urls(event)):
            event.acceptProposedAction()
            self._set_dragging(True)
        else:
            event.ignore()

    def dragLeaveEvent(self, event) -> None:
        self._set_dragging(False)

    def dropEvent(self, event: QDropEvent) -> None:
        self._set_dragging(False)
        path = dropped_data_path(self._urls(event))
        if path:
            event.acceptProposedAction()
            self._request(path)

    def _set_dragging(self, on: bool) -> None:
        self.drop_hint.setProperty("dragging", "true" if on else "false")
        self.drop_hint.style().unpolish(self.drop_hint)
        self.drop_hint.style().polish(self.drop_hint)

    # -- internals ------------------------------------------------------------------------------------------------
    def _request(self, path: str) -> None:
        self._start_dir = str(Path(path).parent)
        self.dataRequested.emit(str(path))

    def _apply_advice(self) -> None:
        if self._advice is not None:
            self.adviceApplied.emit(self._advice.preset)

    def _toggle_skipped(self, on: bool) -> None:
        self.skipped_list.setVisible(on)
        self.skipped_button.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)

    def _show_skipped(self, skipped: list[tuple[str, str]]) -> None:
        self.skipped_list.clear()
        self.skipped_button.setChecked(False)
        self.skipped_button.setVisible(bool(skipped))
        if not skipped:
            return
        self.skipped_button.setText(f"{len(skipped):,} file{'s' if len(skipped) != 1 else ''} skipped")
        for path, reason in skipped:
            self.skipped_list.addItem(f"{Path(path).name}: {reason}")
            self.skipped_list.item(self.skipped_list.count() - 1).setToolTip(str(path))
        shown = [f"{Path(p).name}: {r}" for p, r in skipped[:15]]
        more = f"\n… and {len(skipped) - 15} more" if len(skipped) > 15 else ""
        self.skipped_button.setToolTip("Left out (click for the full list):\n" + "\n".join(shown) + more)

    def _show_notes(self, warnings: list[str], notes: list[str]) -> None:
        """Warnings first (they may spoil training), then notes on how the data was read."""
        self._warnings, self._notes = list(warnings), list(notes)
        lines = [f"<span style='color:{WARNING_COLOUR}'>⚠ {html.escape(w, quote=False)}</span>" for w in warnings]
        lines += [f"<span style='color:{NOTE_COLOUR}'>{html.escape(n, quote=False)}</span>" for n in notes]
        self.notes_label.setText("<br>".join(lines))
        self.notes_label.setVisible(bool(lines))

    @staticmethod
    def _pick_samples(source: Any, count: int) -> list[Any]:
        """Up to ``count`` samples, taking the classes of the first single-label head in turn."""
        samples = list(source.train) + list(source.val)
        if not samples:
            return []
        single = next((h for h in getattr(source, "heads", []) if h.kind == "single"), None)
        if single is None:
            step = max(1, len(samples) // count)
            return samples[::step][:count]
        groups: dict[int, list[Any]] = {}
        full, classes = 0, len(single.label_names)
        for s in samples:  # at most ``count`` of a class are shown: stop once every class has them
            group = groups.setdefault(s.targets.get(single.name, -1), [])
            if len(group) < count:
                group.append(s)
                if len(group) == count and s.targets.get(single.name, -1) >= 0:
                    full += 1
                    if full == classes:
                        break
        order = sorted(k for k in groups if k >= 0) + ([-1] if -1 in groups else [])
        picked: list[Any] = []
        depth = 0
        while len(picked) < count and any(depth < len(groups[k]) for k in order):
            for k in order:
                if depth < len(groups[k]) and len(picked) < count:
                    picked.append(groups[k][depth])
            depth += 1
        return picked

    @staticmethod
    def _caption(source: Any, sample: Any) -> tuple[str, str]:
        """A short caption (first single-label head's class) and a tooltip with every label."""
        lines, caption = [Path(sample.path).name], ""
        for spec in getattr(source, "heads", []):
            t = sample.targets.get(spec.name)
            names = spec.label_names
            if spec.kind == "single":
                text = names[t] if t is not None and t >= 0 else "unlabelled"
                caption = caption or text
            elif spec.kind == "multi":
                on = [n for n, v in zip(names, t or []) if not math.isnan(v) and v > 0.5]
                text = ", ".join(on) or "none"
            elif spec.kind == "segment":  # the mask file's name
                text = Path(t).name if t else "no mask"
            elif spec.kind == "detect":  # boxes [x1, y1, x2, y2, class]
                counts: dict[str, int] = {}
                for box in t or []:
                    c = int(box[4])
                    label = names[c] if 0 <= c < len(names) else str(c)
                    counts[label] = counts.get(label, 0) + 1
                text = ", ".join(f"{n} x{k}" if k > 1 else n for n, k in counts.items()) or "no boxes"
            else:
                text = ", ".join(f"{n} {v:.3g}" for n, v in zip(names, t or []) if not math.isnan(v)) or "–"
            lines.append(f"{spec.name}: {text}")
        return caption, "\n".join(lines)

    def _show_thumbnails(self, source: Any) -> None:
        items = []
        for sample in self._pick_samples(source, THUMBNAILS):
            caption, tooltip = self._caption(source, sample)
            items.append((self._thumbnail(sample.path), caption, tooltip))
        self.thumbs.set_items(items)
        self.thumbs_title.setVisible(bool(items))
        self.thumbs.setVisible(bool(items))

    @staticmethod
    def _thumbnail(path: Any) -> QPixmap:
        """Decode only at thumbnail size (JPEG decoders scale while reading)."""
        reader = QImageReader(str(path))
        reader.setAutoTransform(True)
        size = reader.size()
        if size.isValid() and size.width() > 0 and size.height() > 0:
            reader.setScaledSize(size.scaled(QSize(THUMB, THUMB), Qt.AspectRatioMode.KeepAspectRatio))
        image = reader.read()
        if image.isNull():
            return QPixmap()
        return QPixmap.fromImage(image)

    def _show_heads(self, heads: dict[str, dict[str, Any]]) -> None:
        current = self.head_tabs.currentIndex()
        self.head_tabs.clear()
        for i, (name, info) in enumerate(heads.items()):
            self.head_tabs.addTab(self._head_page(info, head_colour(i)), f"{name}")
            self.head_tabs.setTabToolTip(i, f"{name}: {KIND_SHORT.get(info.get('kind'), info.get('kind'))}")
        if 0 <= current < self.head_tabs.count():
            self.head_tabs.setCurrentIndex(current)
        has = bool(heads)
        self.heads_title.setVisible(has)
        self.head_tabs.setVisible(has)

    def _head_page(self, info: dict[str, Any], colour: str) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.setContentsMargins(0, 8, 0, 0)
        layout.setSpacing(6)
        kind = info.get("kind", "")
        labels = list(info.get("labels", []))
        missing = float(info.get("missing_fraction", 0.0) or 0.0)
        n_lab = int(info.get("n_labelled", 0) or 0)
        one, words = {"single": ("class", "classes"), "multi": ("label", "labels"),
                      "regression": ("target", "targets")}.get(kind, ("output", "outputs"))
        line = (f"<b>{KIND_SHORT.get(kind, kind)}</b> · {len(labels)} {one if len(labels) == 1 else words}"
                f" · {n_lab:,} labelled image{'' if n_lab == 1 else 's'}"
                f" · <span style='color:{'#bf360c' if missing >= 0.25 else '#607d8b'}'>"
                f"{missing:.0%} missing</span>")
        if kind != "single" and info.get("missing_entry_fraction"):
            line += f" <span style='color:#607d8b'>({info['missing_entry_fraction']:.0%} of the cells blank)</span>"
        columns = info.get("columns") or []
        if columns:
            line += f"<br><span style='color:#607d8b'>columns: {', '.join(columns[:8])}" \
                    f"{'…' if len(columns) > 8 else ''}</span>"
        header = QLabel(line, page)
        header.setWordWrap(True)
        layout.addWidget(header)
        counts = info.get("counts", {})
        train, val = info.get("train_counts", {}), info.get("val_counts", {})
        if kind == "regression":
            stats = info.get("stats", {})
            table = self._table(["Target", "Labelled", "Min", "Mean", "Max"])
            table.setRowCount(len(labels))
            for r, label in enumerate(labels):
                s = stats.get(label, {})
                values = [label, f"{counts.get(label, 0):,}", f"{s.get('min', 0):.4g}", f"{s.get('mean', 0):.4g}",
                          f"{s.get('max', 0):.4g}"]
                for c, v in enumerate(values):
                    table.setItem(r, c, self._item(v, numeric=c > 0))
            table.horizontalHeader().setStretchLastSection(False)
        else:
            first = "Class" if kind == "single" else "Label"
            table = self._table([first, "Images" if kind == "single" else "Positives", "Train", "Val", "Share"])
            table.setItemDelegateForColumn(4, ShareDelegate(table))
            table.setRowCount(len(labels))
            top = max([counts.get(lab, 0) for lab in labels] or [0]) or 1
            for r, label in enumerate(labels):
                table.setItem(r, 0, self._item(label))
                for c, source in ((1, counts), (2, train), (3, val)):
                    table.setItem(r, c, self._item(f"{source.get(label, 0):,}", numeric=True))
                bar = QTableWidgetItem("")
                bar.setData(SHARE_ROLE, counts.get(label, 0) / top)
                bar.setData(COLOUR_ROLE, colour)
                total = sum(counts.values()) or 1
                bar.setToolTip(f"{counts.get(label, 0) / total:.1%} of the {words}' examples")
                table.setItem(r, 4, bar)
            table.horizontalHeader().setSectionResizeMode(4, QHeaderView.ResizeMode.Stretch)
        rows = min(table.rowCount(), 12)
        table.setFixedHeight(table.horizontalHeader().sizeHint().height() + 2 * table.frameWidth() + 2
                             + sum(table.rowHeight(r) for r in range(rows)))
        layout.addWidget(table)
        layout.addStretch(1)
        return page

    @staticmethod
    def _table(headers: list[str]) -> QTableWidget:
        table = QTableWidget(0, len(headers))
        table.setHorizontalHeaderLabels(headers)
        table.verticalHeader().hide()
        table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        table.setFocusPolicy(Qt.FocusPolicy.NoFocus)
        table.setShowGrid(False)
        table.setAlternatingRowColors(True)
        header = table.horizontalHeader()
        header.setHighlightSections(False)
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setDefaultAlignment(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter)
        header.setStretchLastSection(True)
        return table

    @staticmethod
    def _item(text: str, numeric: bool = False) -> QTableWidgetItem:
        item = QTableWidgetItem(text)
        if numeric:
            item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return item
