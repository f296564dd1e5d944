"""ActivationGridView: a layer's strongest channels as tiles, or a message in their place."""
from __future__ import annotations

import numpy as np
from PIL import Image

from engine.explain.activations import Activations
from engine.explain.colours import COLOURS
from engine.explain.layers import SpatialForm
from widgets.activation_grid import TILE, ActivationGridView


def test_tiles_then_a_message(qtbot):
    view = ActivationGridView()
    qtbot.addWidget(view)
    view.resize(400, 300)
    view.show()
    maps = np.zeros((6, 7, 7), np.float32)
    maps[0] = 1.0  # the strongest channel: all at its maximum
    act = Activations("layer4", SpatialForm("nchw", 512, 7, 7), [12, 3, 7, 1, 0, 9], [6, 5, 4, 3, 2, 1], maps,
                      Image.new("RGB", (64, 64)))
    view.show_activations(act)
    assert view.tile_count() == 6 and view.message() == ""
    assert "layer4: the 6 strongest of 512 channels on a 7×7 grid" in view.title_label.text()
    assert view.tiles.captions[:2] == ["#12", "#3"]
    picture = view.tiles.grab().toImage()
    first, second = picture.pixelColor(TILE // 2, TILE // 2), view.tiles.tile_rect(1)
    assert (first.red(), first.green(), first.blue()) == tuple(int(v) for v in COLOURS[255])
    other = picture.pixelColor(second.center())
    assert (other.red(), other.green(), other.blue()) == tuple(int(v) for v in COLOURS[0])
    view.show_message("Layer 'avgpool' has no spatial output (it gives 512×1×1).")
    assert view.tile_count() == 0 and view.activations() is None
    assert view.message().startswith("Layer 'avgpool' has no spatial output")
