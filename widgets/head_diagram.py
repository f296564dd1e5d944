"""A painted sketch of the model: the trunk, and an arrow branching to one box per grafted head.

Heads on layers inside the network (a multi-exit model) leave the trunk at a port of their own, labelled
with the layer and how many features it gives; heads at the end leave from the trunk's ``end`` port.

Also home of the head colour palette, shared by every widget that draws heads (the heads table, the
layer tree's head swatches, the training curves), so a head keeps its colour everywhere.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from PySide6.QtCore import QPointF, QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QFontMetrics, QPainter, QPainterPath, QPaintEvent, QPalette, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from engine.network.heads import HeadSpec

# Colour-blind-friendly, distinct on light and dark backgrounds (seaborn "deep").
HEAD_COLOURS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C",
                "#CCB974", "#64B5CD")
KIND_SHORT = {"single": "single-label", "multi": "multi-label", "regression": "regression",
              "segment": "segmentation", "detect": "detection"}
OUTPUT_WORDS = {"single": ("class", "classes"), "multi": ("label", "labels"), "regression": ("value", "values"),
                "segment": ("class", "classes"), "detect": ("class", "classes")}


def head_colour(index: int) -> str:
    """The colour of the ``index``-th head (cycling)."""
    return HEAD_COLOURS[index % len(HEAD_COLOURS)]


def outputs_text(spec: HeadSpec, limit: int = 6) -> str:
    """``"3 classes: cat, dog, bird"`` (the first ``limit`` names)."""
    one, many = OUTPUT_WORDS.get(spec.kind, ("output", "outputs"))
    text = f"{spec.outputs} {one if spec.outputs == 1 else many}"
    if spec.labels:
        names = ", ".join(spec.labels[:limit]) + ("…" if len(spec.labels) > limit else "")
        text += f": {names}"
    return text


def exits(heads: Sequence[HeadSpec], order: Sequence[str] = ()) -> list[str | None]:
    """The layers heads read (None: the end), as the network runs them (``order``), the end last."""
    rank = {layer: i for i, layer in enumerate(order)}
    layers = list(dict.fromkeys(h.layer for h in heads))
    return sorted(layers, key=lambda l: (l is None, rank.get(l, len(rank)) if l is not None else 0))


def exit_text(layer: str | None, size: int | None) -> str:
    """A port's label: ``"features.4 · 80"``, ``"end · 1280"``."""
    return f"{layer if layer is not None else 'end'}" + (f" · {size}" if size else "")


def layers_text(spec: HeadSpec, feature_dim: int | None) -> str:
    """The head's widths, ``"512 → 256 → 5"``."""
    sizes = ([str(feature_dim)] if feature_dim else []) + [str(h) for h in spec.hidden] + [str(spec.outputs)]
    return " → ".join(sizes)


def fit_title(fm_bold: QFontMetrics, fm_small: QFontMetrics, name: str, kind: str, room: float) -> tuple[str, str]:
    """A head box's first line left of its widths: the name (bold) and, 8 px after it, the kind (small),
    elided so that together they take at most ``room`` pixels; the kind is left out when not even a few
    letters of it fit (the name keeps at least 40 px)."""
    kind_w = fm_small.horizontalAdvance(kind)
    title = fm_bold.elidedText(name, Qt.TextElideMode.ElideRight, int(max(40, room - kind_w - 8)))
    left = room - fm_bold.horizontalAdvance(title) - 8
    kind = fm_small.elidedText(kind, Qt.TextElideMode.ElideRight, int(max(0, left)))
    if len(kind.rstrip("…")) < 3:
        kind = ""
    return title, kind


class HeadDiagram(QWidget):
    """Trunk box (model name, feature size) -> one box per head (name, kind, outputs, widths)."""

    MARGIN = 14
    TRUNK_W = 170
    TRUNK_H = 66
    HEAD_H = 50
    GAP = 10
    BRANCH = 54

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._name = ""
        self._dim: int | None = None
        self._heads: list[HeadSpec] = []
        self._inputs: dict[str, int] = {}
        self._exits: list[str | None] = []
        self._output_layer: str | None = None
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def set_model(self, name: str, feature_dim: int | None, heads: Sequence[HeadSpec],
                  inputs: Mapping[str, int] | None = None, order: Sequence[str] = (),
                  output_layer: str | None = None) -> None:
        """Show the trunk ``name`` with ``feature_dim`` features and ``heads``; ``inputs``: how many features
        each head reads (heads on layers read their layer's pooled size); ``order``: the network's layers
        in the order they run, to stack the exits from the first to the end; ``output_layer``: the
        pretrained classifier still at the end, whose outputs ``feature_dim`` then counts (not the trunk's
        width, as a newcomer would read "1000 features")."""
        self._name, self._dim, self._heads = name, feature_dim, list(heads)
        self._output_layer = output_layer
        self._inputs = dict(inputs or {})
        self._exits = exits(self._heads, order)
        self.updateGeometry()
        self.update()

    def trunk_text(self) -> str:
        """The line under the trunk's name: what the heads at its end read."""
        if not self._dim:
            return "trunk · features unknown"
        if self._output_layer:
            return f"{self._dim} classifier outputs"
        return f"trunk · {self._dim} features"

    def heads(self) -> list[HeadSpec]:
        return list(self._heads)

    def exit_labels(self) -> list[str]:
        """The ports the trunk shows (none while every head reads the end): ``["features.4 · 80", "end · 1280"]``."""
        if not self._multi_exit():
            return []
        return [exit_text(layer, self._exit_size(layer)) for layer in self._exits]

    def _multi_exit(self) -> bool:
        return any(layer is not None for layer in self._exits)

    def _exit_size(self, layer: str | None) -> int | None:
        size = next((self._inputs[h.name] for h in self._heads if h.layer == layer and h.name in self._inputs), None)
        return size if size is not None else (self._dim if layer is None else None)

    def _head_dim(self, spec: HeadSpec) -> int | None:
        return self._inputs.get(spec.name, self._dim if spec.layer is None else None)

    # -- geometry ----------------------------------------------------------------------------------
    def _stack_height(self) -> int:
        n = max(1, len(self._heads))
        return n * self.HEAD_H + (n - 1) * self.GAP

    PORT_H = 20

    def _trunk_height(self) -> int:
        return self.TRUNK_H + (len(self._exits) * self.PORT_H if self._multi_exit() else 0)

    def sizeHint(self) -> QSize:
        return QSize(560, 2 * self.MARGIN + max(self._trunk_height(), self._stack_height()))

    def minimumSizeHint(self) -> QSize:
        return QSize(380, 2 * self.MARGIN + max(self._trunk_height(), self._stack_height()))

    # -- painting ------------------------------------------------------------------------------------
    def paintEvent(self, event: QPaintEvent) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        pal = self.palette()
        text = pal.color(QPalette.ColorRole.WindowText)
        muted = QColor(text)
        muted.setAlphaF(0.6)
        line = QColor(text)
        line.setAlphaF(0.45)
        base = pal.color(QPalette.ColorRole.Base)

        m = self.MARGIN
        trunk_h = self._trunk_height()
        content_h = max(trunk_h, self._stack_height())
        top = m + max(0, (self.height() - 2 * m - content_h) / 2)
        trunk = QRectF(m, top + (content_h - trunk_h) / 2, self.TRUNK_W, trunk_h)
        heads_x = trunk.right() + self.BRANCH
        heads_w = max(160.0, self.width() - m - heads_x)
        heads_top = top + (content_h - self._stack_height()) / 2

        # trunk
        fill = QColor(text)
        fill.setAlphaF(0.07)
        p.setPen(QPen(line, 1.2))
        p.setBrush(base)
        p.drawRoundedRect(trunk, 8, 8)
        p.setBrush(fill)
        p.drawRoundedRect(trunk, 8, 8)
        bold = QFont(self.font())
        bold.setBold(True)
        small = QFont(self.font())
        small.setPointSizeF(max(7.0, self.font().pointSizeF() * 0.9))
        inner = trunk.adjusted(12, 10, -12, -10)
        title = QRectF(inner.left(), inner.top(), inner.width(), (self.TRUNK_H - 20) / 2)
        p.setFont(bold)
        p.setPen(text)
        name = QFontMetrics(bold).elidedText(self._name or "no network", Qt.TextElideMode.ElideMiddle,
                                             int(inner.width()))
        p.drawText(title, Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, name)
        p.setFont(small)
        p.setPen(muted)
        if self._multi_exit():
            n = len(self._exits)
            features = f"trunk · {n} exit{'s' if n != 1 else ''}"
        else:
            features = self.trunk_text()
        p.drawText(title.translated(0, title.height()), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                   features)

        # exits: one port per layer the heads read, from the first to run down to the end
        ports: dict[str | None, float] = {}
        if self._multi_exit():
            fm_port = QFontMetrics(small)
            first = trunk.top() + self.TRUNK_H - 8
            for i, layer in enumerate(self._exits):
                y = first + i * self.PORT_H + self.PORT_H / 2
                ports[layer] = y
                label = fm_port.elidedText(exit_text(layer, self._exit_size(layer)), Qt.TextElideMode.ElideMiddle,
                                           int(inner.width()))
                p.setPen(text if layer is not None else muted)
                p.drawText(QRectF(inner.left(), y - self.PORT_H / 2, inner.width(), self.PORT_H),
                           Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, label)
                p.setPen(Qt.PenStyle.NoPen)
                p.setBrush(line)
                p.drawEllipse(QPointF(trunk.right(), y), 3.0, 3.0)

        # branches
        centres = [heads_top + i * (self.HEAD_H + self.GAP) + self.HEAD_H / 2 for i in range(len(self._heads))] \
            or [heads_top + self.HEAD_H / 2]
        split_x = trunk.right() + self.BRANCH / 2
        p.setPen(QPen(line, 1.6))
        p.setBrush(Qt.BrushStyle.NoBrush)
        if ports:
            for spec, y in zip(self._heads, centres):  # each head from its own exit
                start = QPointF(trunk.right(), ports.get(spec.layer, trunk.center().y()))
                curve = QPainterPath(start)
                curve.cubicTo(QPointF(split_x, start.y()), QPointF(split_x, y), QPointF(heads_x - 2, y))
                p.setPen(QPen(QColor(head_colour(self._heads.index(spec))), 1.6))
                p.drawPath(curve)
            p.setPen(QPen(line, 1.6))
        else:
            p.drawLine(QPointF(trunk.right(), trunk.center().y()), QPointF(split_x, trunk.center().y()))
            if len(centres) > 1:
                p.drawLine(QPointF(split_x, min(centres)), QPointF(split_x, max(centres)))
        for y in centres:
            if not ports:
                p.drawLine(QPointF(split_x, y), QPointF(heads_x - 2, y))
            arrow = QPainterPath(QPointF(heads_x - 1, y))
            arrow.lineTo(heads_x - 8, y - 4)
            arrow.lineTo(heads_x - 8, y + 4)
            arrow.closeSubpath()
            p.fillPath(arrow, line)

        # heads
        if not self._heads:
            box = QRectF(heads_x, centres[0] - self.HEAD_H / 2, heads_w, self.HEAD_H)
            pen = QPen(line, 1.2, Qt.PenStyle.DashLine)
            p.setPen(pen)
            p.drawRoundedRect(box, 8, 8)
            p.setPen(muted)
            p.setFont(self.font())
            p.drawText(box.adjusted(12, 0, -12, 0), Qt.AlignmentFlag.AlignVCenter | Qt.AlignmentFlag.AlignLeft,
                       "No heads yet: add one to predict something")
            p.end()
            return
        fm_bold, fm_small = QFontMetrics(bold), QFontMetrics(small)
        for i, (spec, y) in enumerate(zip(self._heads, centres)):
            colour = QColor(head_colour(i))
            box = QRectF(heads_x, y - self.HEAD_H / 2, heads_w, self.HEAD_H)
            tint = QColor(colour)
            tint.setAlphaF(0.14)
            p.setPen(Qt.PenStyle.NoPen)
            p.setBrush(base)
            p.drawRoundedRect(box, 8, 8)
            p.setBrush(tint)
            p.setPen(QPen(colour, 1.2))
            p.drawRoundedRect(box, 8, 8)
            strip = QPainterPath()
            strip.addRoundedRect(QRectF(box.left(), box.top(), 12, box.height()), 6, 6)
            clip = QPainterPath()
            clip.addRect(QRectF(box.left(), box.top(), 6, box.height()))
            p.fillPath(strip.intersected(clip), colour)

            inner = box.adjusted(16, 6, -12, -6)
            half = inner.height() / 2
            widths = layers_text(spec, self._head_dim(spec))
            widths_w = fm_small.horizontalAdvance(widths) + 8
            p.setFont(bold)
            p.setPen(text)
            title, kind = fit_title(fm_bold, fm_small, spec.name, KIND_SHORT.get(spec.kind, spec.kind),
                                    inner.width() - widths_w)
            p.drawText(QRectF(inner.left(), inner.top(), inner.width(), half),
                       Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, title)
            title_w = fm_bold.horizontalAdvance(title)
            p.setFont(small)
            p.setPen(muted)
            if kind:
                p.drawText(QRectF(inner.left() + title_w + 8, inner.top(), inner.width(), half),
                           Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, kind)
            p.drawText(QRectF(inner.left(), inner.top(), inner.width(), half),
                       Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, widths)
            outputs = fm_small.elidedText(outputs_text(spec, 12), Qt.TextElideMode.ElideRight, int(inner.width()))
            p.drawText(QRectF(inner.left(), inner.top() + half, inner.width(), half),
                       Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter, outputs)
        p.end()
