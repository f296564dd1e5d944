"""Window defects found by driving it like a demo: each test fails without its fix."""
from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QRect
from PySide6.QtGui import QColor, QImage
from PySide6.QtWidgets import QFileDialog, QMenu

from app.main_window import MainWindow

RESOURCES = Path(__file__).resolve().parents[2] / "resources"


@pytest.fixture(autouse=True)
def no_file_dialogs(monkeypatch):
    for name in ("getOpenFileName", "getSaveFileName"):
        monkeypatch.setattr(QFileDialog, name, staticmethod(lambda *a, **k: ("", "")))
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: ""))


@pytest.fixture
def window(qtbot):
    w = MainWindow()
    qtbot.addWidget(w)
    w.show()
    yield w
    for job in list(w._jobs.values()):
        job.stop_and_wait(20_000)
    w._weights_changed = False
    w.undo_stack.setClean()
    w.close()


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
