"""HeadDiagram: the trunk and one box per head, sized to the heads."""
from __future__ import annotations

from PySide6.QtGui import QImage

from engine.network.heads import HeadSpec
from widgets.head_diagram import HEAD_COLOURS, HeadDiagram, head_colour, layers_text, outputs_text

HEADS = [HeadSpec("shape", "single", labels=["circle", "square", "star", "triangle"]),
         HeadSpec("tags", "multi", labels=["red", "striped", "outlined"], hidden=[256]),
         HeadSpec("size", "regression", labels=["size"])]


def test_texts():
    assert outputs_text(HEADS[0]) == "4 classes: circle, square, star, triangle"
    assert outputs_text(HEADS[2]) == "1 value: size"
    assert outputs_text(HeadSpec("n", "single", outputs=3)) == "3 classes"
    assert outputs_text(HeadSpec("many", "single", labels=[str(i) for i in range(10)]), 3) == "10 classes: 0, 1, 2…"
    assert layers_text(HEADS[1], 512) == "512 → 256 → 3"
    assert layers_text(HEADS[0], None) == "4"
    assert head_colour(0) == HEAD_COLOURS[0] and head_colour(len(HEAD_COLOURS)) == HEAD_COLOURS[0]


def test_paints_the_trunk_and_every_head(qtbot):
    diagram = HeadDiagram()
    qtbot.addWidget(diagram)
    empty_height = diagram.sizeHint().height()
    diagram.set_model("resnet18", 512, HEADS)
    assert diagram.heads() == HEADS
    assert diagram.sizeHint().height() > empty_height
    diagram.resize(diagram.sizeHint())
    image = diagram.grab().toImage().convertToFormat(QImage.Format.Format_RGB32)
    assert not image.isNull()
    # each head's colour strip is painted at the left of its box
    colours = {image.pixelColor(x, y).name() for x in range(image.width()) for y in range(0, image.height(), 2)}
    for i in range(len(HEADS)):
        assert head_colour(i).lower() in colours
    diagram.set_model("resnet18", None, [])  # no heads, unknown features: still paints
    assert not diagram.grab().isNull()


def test_a_narrow_diagram_never_draws_the_kind_over_the_widths(qtbot, monkeypatch):
    """At the diagram's minimum width (a 900 px window) 'single-label' ran into '1280 → 4'."""
    import widgets.head_diagram as hd
    from PySide6.QtGui import QFontMetrics

    drawn = []  # (left, right, text) of every text line in the head boxes' first row

    class Recording(hd.QPainter):
        def drawText(self, rect, flags, text):  # noqa: N802 - Qt's name
            fm = QFontMetrics(self.font())
            width = fm.horizontalAdvance(text)
            left = rect.right() - width if flags & hd.Qt.AlignmentFlag.AlignRight else rect.left()
            drawn.append((round(rect.top()), left, left + width, text))
            super().drawText(rect, flags, text)

    monkeypatch.setattr(hd, "QPainter", Recording)
    diagram = HeadDiagram()
    qtbot.addWidget(diagram)
    diagram.set_model("efficientnet_lite0", 1280, [HeadSpec("shape", "single", labels=list("abcd")),
                                                   HeadSpec("a_rather_long_head_name", "multi", labels=list("xyz"))])
    for width in (diagram.minimumSizeHint().width(), 420, 560):
        drawn.clear()
        diagram.resize(width, diagram.sizeHint().height())
        diagram.grab()
        for top in {t for t, *_ in drawn}:
            row = sorted((left, right, text) for t, left, right, text in drawn if t == top)
            for (_, right, text), (left, _, after) in zip(row, row[1:]):
                assert right <= left + 1, f"{text!r} overlaps {after!r} at width {width}"
        assert any("1280 → 4" == text for *_, text in drawn)


def test_a_multi_exit_model_shows_which_layer_feeds_each_head(qtbot, monkeypatch):
    import widgets.head_diagram as hd

    texts = []

    class Recording(hd.QPainter):
        def drawText(self, rect, flags, text):  # noqa: N802 - Qt's name
            texts.append(text)
            super().drawText(rect, flags, text)

    monkeypatch.setattr(hd, "QPainter", Recording)
    heads = [HeadSpec("late", "single", outputs=4), HeadSpec("early", "multi", labels=["a", "b"], layer="features.4"),
             HeadSpec("mid", "regression", outputs=1, layer="features.6")]
    order = ["features", "features.4", "features.6", "classifier"]
    assert hd.exits(heads, order) == ["features.4", "features.6", None]  # as the network runs them, end last
    diagram = HeadDiagram()
    qtbot.addWidget(diagram)
    diagram.set_model("efficientnet_lite0", 1280, heads, {"late": 1280, "early": 80, "mid": 192}, order)
    assert diagram.exit_labels() == ["features.4 · 80", "features.6 · 192", "end · 1280"]
    diagram.resize(diagram.sizeHint())
    diagram.grab()
    assert {"features.4 · 80", "end · 1280", "trunk · 3 exits", "80 → 2", "192 → 1", "1280 → 4"} <= set(texts)
    diagram.set_model("efficientnet_lite0", 1280, heads[:1])  # every head at the end: no ports
    assert diagram.exit_labels() == []
