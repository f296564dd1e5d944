"""HeatmapView: pickers ask for a heatmap; the overlay is drawn from the heatmap it is given."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from engine.explain.heatmap import Heatmap
from widgets.heatmap_view import HeatmapView


def make_heatmap(head: str = "shape", peak: tuple[int, int] = (0, 0)) -> Heatmap:
    """A 64 x 64 grey image with all its evidence in one 32 x 32 quadrant (row, column)."""
    values = np.zeros((64, 64), np.float32)
    r, c = peak
    values[r * 32:(r + 1) * 32, c * 32:(c + 1) * 32] = 1.0
    image = Image.new("RGB", (64, 64), (128, 128, 128))
    return Heatmap(head, "single", "star", 1, True, 0.912, "star 91.2%", "features", (7, 7), values, image, 0.01)


@pytest.fixture
def view(qtbot) -> HeatmapView:
    view = HeatmapView()
    qtbot.addWidget(view)
    view.resize(420, 460)
    view.show()
    view.set_heads({"shape": ["circle", "star"], "size": ["size"]})
    view.set_layers(["features.7", "features"], "features")
    return view


def test_pickers_ask_for_a_heatmap(qtbot, view):
    assert view.current_request() == ("shape", "", "")
    assert [view.target_combo.itemText(i) for i in range(view.target_combo.count())] == ["its answer", "circle", "star"]
    assert view.layer_combo.itemText(0) == "default (features)"
    with qtbot.waitSignal(view.requested, timeout=1000) as asked:
        view.target_combo.setCurrentIndex(2)
    assert asked.args == ["shape", "star", ""]
    with qtbot.waitSignal(view.requested, timeout=1000) as asked:
        view.layer_combo.setCurrentIndex(1)
    assert asked.args == ["shape", "star", "features.7"]
    with qtbot.waitSignal(view.requested, timeout=1000) as asked:
        view.head_combo.setCurrentIndex(1)
    assert asked.args == ["size", "", "features.7"]  # the new head's targets: back to its answer
    with qtbot.assertNotEmitted(view.requested):
        view.set_heads({"shape": ["circle", "star"], "size": ["size"]})
        view.select(head="shape", target="circle")
    assert view.current_request() == ("shape", "circle", "features.7")


def test_shows_the_overlay_where_the_evidence_is(view):
    view.show_heatmap(make_heatmap(peak=(0, 0)))
    assert "evidence for 'star'" in view.caption_label.text() and "91.2%" in view.caption_label.text()
    image = view.pixmap().toImage()
    assert (image.width(), image.height()) == (64, 64)
    hot, cold = image.pixelColor(10, 10), image.pixelColor(50, 50)
    assert hot.red() > 2 * hot.blue() and hot.red() > 2 * hot.green()  # turbo's red over the evidence
    assert max(abs(v - 128) for v in (cold.red(), cold.green(), cold.blue())) < 20  # the image, lightly tinted
    view.opacity.setValue(0)  # the image alone, redrawn without asking again
    plain = view.pixmap().toImage().pixelColor(10, 10)
    assert (plain.red(), plain.green(), plain.blue()) == (128, 128, 128)


def test_a_problem_replaces_the_heatmap(view):
    view.show_heatmap(make_heatmap())
    view.show_problem("Layer 'avgpool' has no spatial output")
    assert view.pixmap().isNull() and view.heatmap() is None
    assert not view.status_label.isHidden() and "no spatial output" in view.status_label.text()


def test_the_pickers_go_one_to_a_row_when_narrow(qtbot, view):
    from widgets.heatmap_view import NARROW

    def rows() -> int:
        return len({view.pickers.getItemPosition(view.pickers.indexOf(w))[0]
                    for w in (view.head_combo, view.target_combo, view.layer_combo, view.opacity)})

    assert view.minimumSizeHint().width() <= NARROW
    view.resize(2 * NARROW + 20, 460)
    qtbot.waitUntil(lambda: rows() == 2, timeout=1000)
    view.resize(NARROW + 10, 460)
    qtbot.waitUntil(lambda: rows() == 4, timeout=1000)
    assert view.head_combo.width() + view.pickers.itemAtPosition(0, 0).widget().width() <= NARROW + 10
