"""Window defects found by driving it like a demo: each test fails without its fix."""
from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QRect
from PySide6.QtGui import QColor, QImage
from PySide6.QtWidgets import QMenu

from app.main_window import MainWindow

RESOURCES = Path(__file__).resolve().parents[2] / "resources"


def darkest(image: QImage, rect: QRect) -> int:
    """The lowest lightness (0 black .. 255 white) of the pixels in ``rect``."""
    low = 255
    for y in range(rect.top(), rect.bottom() + 1):
        for x in range(rect.left(), rect.right() + 1):
            low = min(low, QColor(image.pixel(x, y)).lightness())
    return low


def test_disabled_menu_items_look_disabled_under_the_style_sheet(qtbot):
    """The style sheet's ink colour for every widget made disabled menu items as dark as enabled ones."""
    menu = QMenu()
    qtbot.addWidget(menu)
    menu.setStyleSheet((RESOURCES / "style.qss").read_text(encoding="utf-8"))
    on = menu.addAction("Delete output layer")
    off = menu.addAction("Delete output layer")
    off.setEnabled(False)
    menu.adjustSize()
    image = menu.grab().toImage()
    scale = image.width() / menu.width()

    def text_area(action) -> QRect:
        r = menu.actionGeometry(action)
        return QRect(int(r.left() * scale) + 4, int(r.top() * scale) + 2, int(r.width() * scale) - 8,
                     int(r.height() * scale) - 4)

    assert darkest(image, text_area(on)) < 90  # ink
    assert darkest(image, text_area(off)) > 120, "a disabled menu item is drawn like an enabled one"


def test_the_window_can_be_made_900_pixels_wide(qtbot, window):
    """The layer tree asked for every column's width as its minimum: the window could not be narrower
    than ~1075 px, so on a small screen its right side (Train, Evaluate, Export ONNX) was cut off."""
    assert window.minimumSizeHint().width() <= 900
    window.resize(900, 600)
    qtbot.waitUntil(lambda: window.width() == 900, timeout=2000)


IMAGES = Path(__file__).resolve().parents[1] / "data" / "images"


def good_csv(folder: Path) -> Path:
    path = folder / "good.csv"
    rows = ["image,kind"] + [f"{IMAGES / name},{kind}" for name, kind in
                             (("cat.jpg", "animal"), ("grace_hopper.jpg", "person"), ("coffee.jpg", "thing"),
                              ("motorcycle.jpg", "thing"), ("palace.jpg", "thing"))]
    path.write_text("\n".join(rows) + "\n")
    return path


def test_data_that_fails_to_load_says_the_earlier_data_is_still_loaded(qtbot, window, boxes, tmp_path):
    """The panel showed the failed file's path above the earlier data's summary, as if that had loaded."""
    good = good_csv(tmp_path)
    with qtbot.waitSignal(window.dataLoaded, timeout=60_000):
        window.datasets.load_data(str(good))
    bad = tmp_path / "bad.csv"
    bad.write_text("filename,colour\na.jpg,red\n")
    with qtbot.waitSignal(window.errorShown, timeout=60_000) as shown:
        window.datasets.load_data(str(bad))
    assert window.data is not None and window.data_path == str(good)
    assert window.data_panel.path_label.text() == str(good)
    assert "good.csv is still loaded" in shown.args[0] and window.data_panel.error_text() == shown.args[0]


@pytest.fixture(scope="module")
def small_network():
    from engine.network.loading import load_network

    return load_network("resnet18", random_init=True)


def test_undo_and_redo_say_what_they_did(qtbot, window, small_network):
    """After Ctrl+Z the status line still named the step just undone ("Unfreeze features."), as if done."""
    from engine.surgery.operations import DeleteOutputLayer, SetTrainable
    from engine.surgery.session import Session

    window.workspace.set_session(Session(small_network), project_path=None)
    a = window.actions
    assert window.surgery.apply_op(DeleteOutputLayer())
    assert window.surgery.apply_op(SetTrainable("layers", ["layer4"], False))
    assert window.message_label.text() == "Freeze layer4."
    a.undo.trigger()
    assert window.message_label.text() == "Undid Freeze layer4."
    a.redo.trigger()
    assert window.message_label.text() == "Redid Freeze layer4."
    window.undo_stack.setIndex(0)  # a click on "Network as loaded" in the surgery history
    assert window.message_label.text() == "Undid 2 steps: back to the network as loaded."
    window.undo_stack.setIndex(2)
    assert window.message_label.text() == "Redid 2 steps, up to Freeze layer4."
    window.undo_stack.setIndex(1)
    assert window.message_label.text() == "Undid Freeze layer4."
    assert window.surgery.apply_op(SetTrainable("layers", ["layer3"], False))  # a new step replaces the redo
    assert window.message_label.text() == "Freeze layer3."
    window.workspace.set_session(Session(small_network), project_path=None)  # clearing the stack undoes nothing
    assert not window.message_label.text().startswith("Undid")


def test_the_first_split_shows_every_tree_column_when_the_window_is_wide_enough(qtbot):
    """With the smaller minimum, the first split no longer gave the tree room for all its columns."""
    w = MainWindow()
    qtbot.addWidget(w)
    w.resize(1400, 900)
    w.show()
    qtbot.waitExposed(w)
    header = w.tree_view.tree_view.header()
    columns = sum(header.sectionSize(c) for c in range(1, header.count()))
    assert w.tree_view.sizeHint().width() > columns + 60
    assert w.splitter.sizes()[0] >= w.tree_view.sizeHint().width()
    w.close()


def test_a_narrow_window_shows_the_toolbar_overflow_arrow(qtbot):
    """At 900 px Train, Stop, Evaluate and Export ONNX move to the toolbar's overflow button, whose arrow
    the style sheet's button padding left no room to draw: the button was there but blank."""
    from PySide6.QtWidgets import QToolButton

    w = MainWindow()
    qtbot.addWidget(w)
    w.setStyleSheet((RESOURCES / "style.qss").read_text(encoding="utf-8"))
    w.resize(900, 600)
    w.show()
    qtbot.waitExposed(w)
    button = w.toolbar.findChild(QToolButton, "qt_toolbar_ext_button")
    assert button is not None and button.isVisible()
    image = button.grab().toImage()
    assert darkest(image, image.rect()) < 150, "the overflow button draws no arrow"
    w.close()
