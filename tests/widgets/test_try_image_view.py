"""TryImageView: choose or drop an image, then show each head's prediction."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QFileDialog, QLabel

from engine.network.heads import HeadSpec
from engine.export.metadata import decode
from widgets.try_image_view import TryImageView, is_image_path


@pytest.fixture
def image_path(tmp_path) -> str:
    path = tmp_path / "star.png"
    rgb = np.zeros((60, 80, 3), np.uint8)
    rgb[10:50, 20:60] = (220, 40, 40)
    Image.fromarray(rgb).save(path)
    return str(path)


@pytest.fixture
def view(qtbot) -> TryImageView:
    view = TryImageView()
    qtbot.addWidget(view)
    view.resize(420, 520)
    view.show()
    return view


def test_choose_image_asks_and_shows_it(qtbot, view, image_path, monkeypatch):
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (image_path, "")))
    with qtbot.waitSignal(view.imageChosen, timeout=1000) as chosen:
        qtbot.mouseClick(view.choose_button, Qt.MouseButton.LeftButton)
    assert chosen.args == [image_path]
    assert view.image_path() == image_path and view.image.pixmap().width() == 80
    assert view.name_label.text() == "star.png"
    # Whoever runs the prediction says when it starts, or why it cannot: the view does not promise one.
    assert view.status_label.text() == "" and not view.status_label.isVisible()


def test_choosing_decodes_the_image_once_and_clears_an_old_status(qtbot, view, image_path, monkeypatch):
    import widgets.try_image_view as module

    decoded = []
    real = module.load_pixmap
    monkeypatch.setattr(module, "load_pixmap", lambda path: decoded.append(path) or real(path))
    view.set_status("Predictions wait until training has finished.")
    with qtbot.waitSignal(view.imageChosen, timeout=1000):
        view._choose(image_path)
    assert decoded == [image_path] and not view.status_label.isVisible()
    view.show_predictions(image_path, {"x": "x: 1"})  # the same image: not decoded again
    assert decoded == [image_path] and view.predictions_text() == {"x": "x: 1"}


def test_shows_each_heads_prediction(view, image_path):
    predictions = {
        "shape": decode(HeadSpec("shape", "single", labels=["circle", "square", "star"]), np.array([0.1, 0.2, 3.0])),
        "tags": decode(HeadSpec("tags", "multi", labels=["red", "striped"]), np.array([2.0, -2.0])),
        "size": decode(HeadSpec("size", "regression", labels=["size"]), np.array([0.55])),
        "note": "note: looks like a star",
    }
    view.show_predictions(image_path, predictions)
    assert view.image_path() == image_path and not view.image.pixmap().isNull()
    texts = view.predictions_text()
    assert list(texts) == ["shape", "tags", "size", "note"]
    assert texts["shape"] == predictions["shape"].format() and texts["shape"].startswith("shape: star")
    assert texts["note"] == "note: looks like a star"
    shown = " ".join(label.text() for label in view.results.findChildren(QLabel))
    for word in ("shape", "star", "red", "size", "0.55", "looks like a star"):
        assert word in shown
    assert not view.status_label.isVisible()
    view.show_predictions(image_path, {"shape": predictions["shape"]})
    assert list(view.predictions_text()) == ["shape"]


def test_drop_an_image(qtbot, view, image_path, tmp_path):
    def drop(path: str) -> None:
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(path)])
        view.dropEvent(QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                                  Qt.KeyboardModifier.NoModifier))

    with qtbot.waitSignal(view.imageChosen, timeout=1000) as chosen:
        drop(image_path)
    assert chosen.args == [image_path]
    text = tmp_path / "notes.txt"
    text.write_text("hi")
    assert not is_image_path(str(text)) and is_image_path(image_path)
    with qtbot.assertNotEmitted(view.imageChosen):
        drop(str(text))


def test_clear(view, image_path):
    view.show_predictions(image_path, {"x": "x: 1"})
    view.clear()
    assert view.image_path() == "" and view.image.pixmap().isNull() and view.predictions_text() == {}


def test_one_precision_for_the_answer_and_the_runners_up(view, image_path):
    """A runner-up rounded to whole percent (33%) read as if it were ahead of the answer (32.8%)."""
    spec = HeadSpec("shape", "single", labels=["circle", "square", "star"])
    logits = np.log(np.array([0.326, 0.346, 0.328]))  # square 34.6%, then star 32.8%, then circle 32.6%
    tags = HeadSpec("tags", "multi", labels=["red", "striped"])
    view.show_predictions(image_path, {"shape": decode(spec, logits), "tags": decode(tags, np.array([2.0, 0.3]))})
    shown = " ".join(label.text() for label in view.results.findChildren(QLabel))
    assert "34.6%" in shown and "star 32.8%" in shown and "circle 32.6%" in shown
    assert "88.1%" in shown and "57.4%" in shown  # multi-label: sigmoid(2.0), sigmoid(0.3)
    assert "33%" not in shown and "88%" not in shown


def test_dense_predictions_draw_their_mask_and_boxes_with_controls(view, image_path):
    from types import SimpleNamespace

    mask = np.zeros((60, 80), np.int64)
    mask[10:50, 20:60] = 2
    seg = SimpleNamespace(kind="segment", mask=mask, names=["background", "circle", "square"], ignore_index=255)
    det = SimpleNamespace(kind="detect", boxes=np.array([[20, 10, 60, 50], [0, 0, 5, 5]], float),
                          scores=np.array([0.91, 0.2]), labels=np.array([1, 0]), names=["circle", "square"])
    view.show_predictions(image_path, {"seg": seg, "boxes": det, "shape": "shape: square"})
    assert [m.title for m in view.image.masks()] == ["seg"]
    assert [b.title for b in view.image.box_layers()] == ["boxes"]
    assert view.overlay_controls.isVisible() and view.overlay_controls.opacity_slider.isVisible()
    assert view.overlay_controls.threshold_slider.isVisible()
    shown = " ".join(label.text() for label in view.results.findChildren(QLabel))
    assert "square 33.3%" in shown  # the mask's share of the image, per class
    assert "2 boxes: square 0.91, circle 0.20" in shown
    view.overlay_controls.set_threshold(0.5)
    assert view.image.shown_boxes() == (1, 2) and view.image.captions() == ["square 0.91"]
    # Another image, or predictions without dense heads: nothing stays drawn over it.
    view.show_predictions(image_path, {"shape": "shape: square"})
    assert view.image.masks() == [] and view.image.box_layers() == []
    assert not view.overlay_controls.isVisible()


def close_to(a, b, tol) -> bool:
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def test_dense_predictions_of_the_input_square_are_drawn_over_that_square(view, image_path):
    from types import SimpleNamespace

    from widgets.mask_overlay import class_colours

    # The network saw the centre 60×60 of the 80×60 image (x 10..70): its 6×6 mask and boxes belong there.
    mask = np.ones((6, 6), np.int64)
    seg = SimpleNamespace(kind="segment", mask=mask, names=["bg", "thing"])
    det = SimpleNamespace(kind="detect", names=["thing"], boxes=[{"box": [0, 0, 3, 3], "label": "thing", "class": 0,
                                                                   "score": 0.8}])
    view.show_predictions(image_path, {"seg": seg, "det": det}, region=(10, 0, 70, 60), image_size=(80, 60),
                          frame=(6, 6))
    canvas = view.image
    canvas.set_opacity(1.0)
    target = canvas.image_rect()
    grab = canvas.grab().toImage()

    def at(x, y):  # image pixel -> painted colour
        c = grab.pixelColor(round(target.left() + x * target.width() / 80), round(target.top() + y * target.height() / 60))
        return c.red(), c.green(), c.blue()

    red = tuple(int(v) for v in class_colours(2)[1])
    assert at(40, 45) == red and at(5, 45) != red  # outside the square: the image as it is
    assert canvas.captions() == ["thing 0.80"]
    box = canvas.box_layers()[0]
    assert box.region == (10, 0, 70, 60) and box.frame == (6, 6) and box.image_size == (80, 60)
    canvas.set_opacity(0.0)  # the box alone: frame 0..3 of 6 over x 10..70 is x 10..40
    grab = canvas.grab().toImage()
    colour = tuple(int(v) for v in class_colours(1, background=None)[0])
    assert close_to(at(40, 5), colour, 60) and not close_to(at(55, 5), colour, 60)
