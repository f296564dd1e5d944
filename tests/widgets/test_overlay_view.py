"""Masks and boxes over an image: the colours, the threshold, the opacity, and what is really painted."""
from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QWidget

from widgets.box_overlay import BoxLayer, above, as_boxes, box_caption
from widgets.mask_overlay import MaskLayer, class_colours, class_shares, legend_html, mask_rgba
from widgets.overlay_view import OverlayCanvas, OverlayControls

GREY = (90, 90, 90)


def grey_image(h: int = 100, w: int = 100) -> np.ndarray:
    return np.full((h, w, 3), GREY, np.uint8)


def test_mask_rgba_colours_each_class_and_leaves_background_and_ignored_clear():
    mask = np.array([[0, 1, 2], [255, 1, 7]])
    rgba = mask_rgba(mask, n_classes=3, ignore_index=255)
    colours = class_colours(3)
    assert rgba.shape == (2, 3, 4) and rgba.dtype == np.uint8
    assert rgba[0, 0, 3] == 0  # background
    assert rgba[1, 0, 3] == 0  # ignored
    assert rgba[1, 2, 3] == 0  # class 7 does not exist: not drawn rather than an error
    assert tuple(rgba[0, 1]) == (*colours[1], 255) and tuple(rgba[1, 1]) == (*colours[1], 255)
    assert tuple(rgba[0, 2]) == (*colours[2], 255)
    assert tuple(colours[1]) != tuple(colours[2])
    # Without a background class, class 0 is drawn too.
    assert mask_rgba(mask, 3, 255, background=None)[0, 0, 3] == 255
    with pytest.raises(ValueError, match="H×W"):
        mask_rgba(np.zeros((2, 2, 3)))


def test_class_shares_and_legend_count_only_named_unignored_pixels():
    mask = np.array([[0, 0, 1, 1], [2, 255, 255, 9]])
    shares = class_shares(mask, ["bg", "circle", "square"], ignore_index=255)
    assert shares == [(0, 0.4), (1, 0.4), (2, 0.2)]
    html = legend_html(mask, ["bg", "circle", "square"], ignore_index=255)
    assert "circle 40.0%" in html and "square 20.0%" in html and "bg" not in html
    assert "no object pixels" in legend_html(np.zeros((3, 3), int), ["bg", "circle"])


def test_boxes_above_a_threshold_best_first_and_captions():
    boxes, scores, labels = as_boxes([[0, 0, 1, 1]] * 4, [0.3, 0.9, 0.5, 0.7], [0, 1, 1, 0])
    assert above(scores, 0.5).tolist() == [1, 3, 2]
    assert above(scores, 0.95).tolist() == []
    assert box_caption(["circle", "square"], 1, 0.873) == "square 0.87"
    assert box_caption(["circle"], 3, None) == "3"
    with pytest.raises(ValueError, match="as many scores"):
        as_boxes([[0, 0, 1, 1]], [0.1, 0.2], [0])
    layer = BoxLayer(boxes, scores, labels, ["circle", "square"])
    assert layer.captions(0.6) == ["square 0.90", "circle 0.70"]
    truth = BoxLayer(boxes[:2], None, labels[:2], ["circle", "square"])
    assert truth.truth and truth.shown(0.99).tolist() == [0, 1]  # truth ignores the threshold


@pytest.fixture
def canvas(qtbot) -> OverlayCanvas:
    canvas = OverlayCanvas()
    qtbot.addWidget(canvas)
    canvas.resize(208, 208)  # the 100 px image is drawn at 200 px, from (4, 4)
    canvas.show()
    canvas.set_pixmap(grey_image())
    return canvas


def pixel(canvas: OverlayCanvas, x: float, y: float) -> tuple[int, int, int]:
    """The colour painted where image pixel (x, y) is shown."""
    r = canvas.image_rect()
    image = canvas.grab().toImage()
    c = QColor(image.pixel(QPoint(round(r.left() + x * r.width() / 100), round(r.top() + y * r.height() / 100))))
    return c.red(), c.green(), c.blue()


def close(a, b, tol=6) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b))


def test_the_mask_is_painted_over_its_pixels_at_the_chosen_opacity(canvas):
    mask = np.zeros((50, 50), np.int64)  # half the image's size: stretched over all of it
    mask[:, 25:] = 1
    canvas.set_masks([MaskLayer(mask, ["bg", "circle"])])
    red = class_colours(2)[1]
    canvas.set_opacity(1.0)
    assert close(pixel(canvas, 75, 50), red) and close(pixel(canvas, 25, 50), GREY)
    canvas.set_opacity(0.5)
    half = tuple((int(c) + g) / 2 for c, g in zip(red, GREY))
    assert close(pixel(canvas, 75, 50), half, tol=8)
    canvas.set_opacity(0.0)
    assert close(pixel(canvas, 75, 50), GREY)


def test_boxes_are_drawn_where_they_are_and_the_threshold_hides_low_scores(canvas):
    boxes = np.array([[10, 10, 40, 40], [60, 60, 90, 90]], float)
    canvas.set_boxes([BoxLayer(boxes, [0.9, 0.3], [0, 1], ["circle", "square"], frame=(100, 100))])
    colours = class_colours(2, background=None)
    canvas.set_threshold(0.5)
    assert close(pixel(canvas, 40, 25), colours[0], tol=40)  # the right edge of the first box
    assert close(pixel(canvas, 90, 75), GREY)  # the second scores 0.3: hidden
    assert close(pixel(canvas, 25, 25), GREY)  # a box is an outline: its inside shows the image
    assert canvas.shown_boxes() == (1, 2) and canvas.captions() == ["circle 0.90"]
    canvas.set_threshold(0.2)
    assert close(pixel(canvas, 90, 75), colours[1], tol=40)
    assert canvas.shown_boxes() == (2, 2)


def test_boxes_in_another_frame_are_scaled_onto_the_image(canvas):
    # Found in a 200×200 version of the image: the box (120..180) is image pixels 60..90.
    canvas.set_boxes([BoxLayer([[120, 120, 180, 180]], [0.9], [0], ["circle"], frame=(200, 200))])
    colour = class_colours(1, background=None)[0]
    assert close(pixel(canvas, 90, 75), colour, tol=40) and close(pixel(canvas, 40, 25), GREY)


def test_controls_show_only_what_the_canvas_has_and_drive_it(qtbot, canvas):
    box = QWidget()
    qtbot.addWidget(box)
    controls = OverlayControls(canvas, box)
    box.show()
    assert not controls.isVisible()  # nothing to control yet
    mask = np.zeros((10, 10), int)
    mask[:5] = 1
    canvas.set_masks([MaskLayer(mask, ["bg", "circle"], title="seg"), MaskLayer(mask * 0, ["bg", "x"], title="b")])
    controls.refresh()
    assert controls.isVisible() and controls.opacity_slider.isVisible() and controls.mask_combo.isVisible()
    assert not controls.threshold_slider.isVisible()
    assert "circle 50.0%" in controls.legend_label.text()
    with qtbot.waitSignal(controls.opacityChanged) as moved:
        controls.opacity_slider.setValue(80)
    assert moved.args == [0.8] and canvas.opacity() == pytest.approx(0.8)
    assert controls.opacity_value.text() == "80%"
    controls.mask_combo.setCurrentIndex(1)
    assert canvas.current_mask().title == "b" and "no object pixels" in controls.legend_label.text()

    canvas.set_boxes([BoxLayer([[0, 0, 5, 5], [1, 1, 4, 4]], [0.9, 0.4], [0, 0], ["circle"]),
                      BoxLayer([[0, 0, 5, 5]], None, [0], ["circle"])])
    controls.refresh()
    assert controls.threshold_slider.isVisible()
    controls.set_threshold(0.5)
    assert canvas.threshold() == pytest.approx(0.5) and controls.count_label.text() == "1 of 2 boxes shown"
    controls.threshold_slider.setValue(30)
    assert controls.count_label.text() == "2 of 2 boxes shown"


def test_in_a_narrow_pane_the_sliders_keep_a_usable_width(qtbot, canvas):
    """The Evaluate tab's examples beside the per-class table: the box count wraps, the sliders stay sliders
    (they were squeezed to a few pixels and looked like checkboxes)."""
    box = QWidget()
    qtbot.addWidget(box)
    controls = OverlayControls(canvas, box)
    mask = np.zeros((10, 10), int)
    mask[:5] = 1
    canvas.set_masks([MaskLayer(mask, ["bg", "circle"], title="seg")])
    canvas.set_boxes([BoxLayer([[0, 0, 5, 5]] * 22, [0.9] * 4 + [0.1] * 18, [0] * 22, ["circle"])])
    controls.refresh()
    box.show()
    controls.resize(controls.minimumSizeHint().width(), controls.heightForWidth(controls.minimumSizeHint().width())
                    if controls.hasHeightForWidth() else controls.sizeHint().height())
    qtbot.wait(10)
    assert controls.count_label.text() == "4 of 22 boxes shown"
    assert controls.threshold_slider.width() >= 80 and controls.opacity_slider.width() >= 80
    assert controls.minimumSizeHint().width() < 300


def test_dragging_a_slider_folds_repaints(qtbot, canvas):
    canvas.set_masks([MaskLayer(np.ones((10, 10), int), ["bg", "circle"])])
    controls = OverlayControls(canvas)
    qtbot.addWidget(controls)
    qtbot.waitExposed(canvas)
    qtbot.wait(20)
    before = canvas.paints
    for value in range(0, 101):
        controls.opacity_slider.setValue(value)
    qtbot.wait(50)
    assert canvas.paints - before <= 3  # one repaint per frame, not one per step
    assert canvas.opacity() == 1.0


def test_a_mask_and_boxes_of_a_crop_are_drawn_over_that_part_of_the_image(canvas):
    # The model saw the centre crop (25..75) at 10×10: its mask and boxes belong there, not stretched.
    mask = np.ones((10, 10), int)
    canvas.set_masks([MaskLayer(mask, ["bg", "circle"], region=(25, 25, 75, 75))])
    canvas.set_opacity(1.0)
    red = class_colours(2)[1]
    assert close(pixel(canvas, 50, 50), red) and close(pixel(canvas, 10, 10), GREY)
    assert close(pixel(canvas, 80, 50), GREY)
    canvas.set_masks([])
    canvas.set_boxes([BoxLayer([[0, 0, 5, 5]], [0.9], [0], ["circle"], frame=(10, 10), region=(25, 25, 75, 75))])
    colour = class_colours(1, background=None)[0]
    assert close(pixel(canvas, 50, 40), colour, tol=40)  # the box's right edge: 25 + 5 * 5 = 50
    assert close(pixel(canvas, 90, 40), GREY)


def test_regions_count_in_the_full_images_pixels_when_it_is_shown_smaller(canvas):
    # The canvas shows a 100 px decode of a 1000 px image; the region is in the 1000 px image's pixels.
    layer = MaskLayer(np.ones((4, 4), int), ["bg", "circle"], region=(250, 250, 750, 750))
    layer.image_size = (1000, 1000)
    canvas.set_masks([layer])
    canvas.set_opacity(1.0)
    red = class_colours(2)[1]
    assert close(pixel(canvas, 50, 50), red) and close(pixel(canvas, 10, 10), GREY)


def test_dense_examples_browse_images_decoded_off_the_gui_thread(qtbot, tmp_path):
    from types import SimpleNamespace

    from PIL import Image

    from widgets.dense_examples import DenseExamplesView

    items = []
    for i in range(3):
        path = tmp_path / f"im{i}.png"
        Image.fromarray(grey_image(40, 60)).save(path)
        mask = np.zeros((40, 60), int)
        mask[:, : 10 * (i + 1)] = 1
        items.append(SimpleNamespace(image=str(path), head="seg", caption=f"IoU 0.{i}",
                                     prediction={"kind": "segment", "mask": mask, "names": ["bg", "circle"]}))
    view = DenseExamplesView()
    qtbot.addWidget(view)
    view.resize(400, 400)
    view.show()
    view.set_items(items)
    qtbot.waitUntil(lambda: not view.canvas.pixmap().isNull(), timeout=3000)
    assert view.canvas.pixmap().width() == 60 and view.caption_label.text() == "IoU 0.0"
    assert not view.previous_button.isEnabled() and view.next_button.isEnabled()
    view.controls.set_opacity(0.3)
    qtbot.mouseClick(view.next_button, Qt.MouseButton.LeftButton)
    assert view.current_index() == 1 and view.caption_label.text() == "IoU 0.1"
    assert view.canvas.current_mask().mask[:, :20].all() and view.canvas.opacity() == pytest.approx(0.3)
    qtbot.waitUntil(lambda: not view.canvas.pixmap().isNull(), timeout=3000)
    view.image_combo.setCurrentIndex(2)
    assert view.current_index() == 2 and not view.next_button.isEnabled()
    view.set_items([])
    assert view.current_index() == -1 and view.canvas.masks() == []


def test_dense_examples_read_the_engines_examples(qtbot):
    from engine.explain.mistakes import Example
    from widgets.dense_examples import DenseExamplesView, item_caption

    overlay = {"kind": "detect", "names": ["circle"], "boxes": np.array([[0, 0, 5, 5]]), "scores": np.array([0.7]),
               "labels": np.array([0]), "truth_boxes": np.array([[1, 1, 5, 5]]), "truth_labels": np.array([0])}
    item = Example("nowhere.png", 3, "boxes", "1 box: circle", "1 box: circle", None, 0.4, iou=0.64, overlay=overlay)
    assert item_caption(item) == "IoU 0.64 · truth 1 box: circle · predicted 1 box: circle"
    view = DenseExamplesView()
    qtbot.addWidget(view)
    view.set_items([item])
    assert view.canvas.captions() == ["circle 0.70"] and len(view.canvas.box_layers()) == 2
    qtbot.waitUntil(lambda: "could not be read" in view.canvas._placeholder, timeout=3000)
