"""MistakesGallery: a confusion cell's images, captions, thumbnails decoded off the GUI thread, one click."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QListView

import widgets.thumbnails as thumbnails
from engine.explain.mistakes import cell_examples, confusion_members
from engine.training.evaluation import EvalReport, HeadOutputs, HeadReport
from widgets.mistakes_gallery import MistakesGallery, PathRole
from widgets.thumbnails import ThumbnailLoader


@pytest.fixture
def report(tmp_path) -> EvalReport:
    """Eight images of a 3-class head, answers chosen so that each cell's members are known."""
    truth = np.array([0, 0, 1, 1, 2, 2, 0, -1])
    answer = np.array([0, 1, 1, 0, 2, 1, 1, 2])
    probs = np.full((8, 3), 0.1, np.float32)
    probs[np.arange(8), answer] = 0.8
    probs[0] = [0.328, 0.326, 0.346]  # an answer barely ahead: one precision for every number shown
    answer[0] = 2
    paths = []
    for i in range(8):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (300, 200), (30 * i, 100, 200)).save(path)
        paths.append(str(path))
    confusion = [[0] * 3 for _ in range(3)]
    for t, p in zip(truth, answer):
        if t >= 0:
            confusion[t][p] += 1
    losses = np.where(truth >= 0, -np.log(probs[np.arange(8), np.maximum(truth, 0)]), np.nan).astype(np.float32)
    head = HeadReport("shape", "single", 1.0, 7, {}, {"classes": ["circle", "square", "star"], "confusion": confusion})
    outputs = HeadOutputs("single", probs, answer, truth, losses, None, ["shape"])
    return EvalReport({"shape": head}, 8, 1.0, 0.1, images=paths, outputs={"shape": outputs})


@pytest.fixture
def gallery(qtbot) -> MistakesGallery:
    gallery = MistakesGallery()
    qtbot.addWidget(gallery)
    gallery.resize(600, 400)
    gallery.show()
    return gallery


def test_a_cell_shows_exactly_its_images(gallery, report):
    assert gallery.view.viewMode() == QListView.ViewMode.IconMode
    for t in range(3):
        for p in range(3):
            cell = cell_examples(report, "shape", t, p)
            gallery.show_items(cell, f"{len(cell)} images", "No images in this cell.")
            assert sorted(gallery.image_paths()) == sorted(report.images[i] for i in confusion_members(report, "shape")[t][p])
            assert gallery.model.rowCount() == report.heads["shape"].confusion[t][p]
            assert gallery.view.isHidden() == (not cell) and gallery.empty_label.isHidden() == bool(cell)
    cell = cell_examples(report, "shape", "circle", "square")
    gallery.show_items(cell)
    captions = [gallery.model.index(r).data(Qt.ItemDataRole.DisplayRole) for r in range(len(cell))]
    assert all(c.startswith("circle → square\n80.0% · loss") for c in captions)
    gallery.show_items(cell_examples(report, "shape", "circle", "star"))
    assert gallery.model.index(0).data().startswith("circle → star\n34.6%")


def test_thumbnails_load_in_a_worker(qtbot, gallery, report, monkeypatch):
    threads = []
    real = thumbnails.load_thumbnail
    monkeypatch.setattr(thumbnails, "load_thumbnail",
                        lambda path, side: threads.append(threading.current_thread()) or real(path, side))
    gallery.show_items(cell_examples(report, "shape", 0, 1) + cell_examples(report, "shape", 1, 1))
    placeholder = gallery.model.index(0).data(Qt.ItemDataRole.DecorationRole)
    assert placeholder.width() == gallery.side and len(gallery.pending_thumbnails()) == 3
    loader = ThumbnailLoader(chunk=2)
    batch = gallery.load_with(loader)
    qtbot.waitUntil(lambda: all(gallery.model.has_thumbnail(r) for r in range(3)), timeout=5000)
    assert gallery.pending_thumbnails() == []
    assert len(threads) == 3 and threading.main_thread() not in threads
    icon = gallery.model.index(0).data(Qt.ItemDataRole.DecorationRole)
    assert (icon.width(), icon.height()) == (gallery.side, gallery.side * 2 // 3)  # 300 x 200, scaled down
    # Results of an earlier list arriving late are dropped.
    gallery.show_items(cell_examples(report, "shape", 2, 2))
    loader.loaded.emit(batch, 0, QImage(8, 8, QImage.Format.Format_RGB888))
    assert gallery.pending_thumbnails() == [(0, gallery.image_paths()[0])]


def test_given_thumbnails_and_one_click(qtbot, gallery, report):
    cell = cell_examples(report, "shape", 1, 1)
    image = QImage(40, 30, QImage.Format.Format_RGB888)
    image.fill(Qt.GlobalColor.red)
    gallery.show_items(cell, thumbnails={0: image})
    assert gallery.pending_thumbnails() == [] and gallery.model.index(0).data(Qt.ItemDataRole.DecorationRole).width() == 40
    rect = gallery.view.visualRect(gallery.model.index(0))
    with qtbot.waitSignal(gallery.imageActivated, timeout=1000) as opened:
        qtbot.mouseClick(gallery.view.viewport(), Qt.MouseButton.LeftButton, pos=rect.center())
    assert opened.args == [gallery.model.index(0).data(PathRole)] == [cell[0].image]


def test_lists_to_choose_from(qtbot, gallery, report):
    assert gallery.list_combo.isHidden()
    gallery.set_lists([("shape:mistakes", "shape ▸ most confident mistakes (4)"), ("other", "other ▸ list")])
    assert not gallery.list_combo.isHidden() and gallery.current_list() is None
    assert gallery.lists() == [("shape:mistakes", "shape ▸ most confident mistakes (4)"), ("other", "other ▸ list")]
    with qtbot.waitSignal(gallery.listChosen, timeout=1000) as chosen:
        gallery.list_combo.setCurrentIndex(1)
    assert chosen.args == ["other"] and gallery.current_list() == "other"
    with qtbot.assertNotEmitted(gallery.listChosen):
        gallery.select_list("shape:mistakes")
        gallery.select_list(None)  # a confusion cell is shown instead: no list is chosen
    assert gallery.current_list() is None
    cell = cell_examples(report, "shape", 0, 1)
    gallery.show_items(cell)
    with qtbot.waitSignal(gallery.itemActivated, timeout=1000) as opened:
        qtbot.mouseClick(gallery.view.viewport(), Qt.MouseButton.LeftButton,
                         pos=gallery.view.visualRect(gallery.model.index(1)).center())
    assert opened.args == [cell[1]]
    gallery.set_lists([])
    assert gallery.list_combo.isHidden() and gallery.lists() == []


def test_dense_examples_show_their_iou_and_their_mask_on_the_thumbnail(qtbot, gallery, tmp_path):
    from engine.explain.mistakes import Example
    from widgets.mask_overlay import class_colours

    mask = np.zeros((20, 20), np.int64)
    mask[:, 10:] = 1
    overlay = {"kind": "segment", "mask": mask, "names": ["bg", "circle"], "frame": (20, 20)}
    item = Example("a.png", 0, "seg", "circle 50%", "circle 50%", None, float("nan"), iou=0.42, overlay=overlay)
    grey = QImage(40, 40, QImage.Format.Format_RGB32)
    grey.fill(0x808080)
    gallery.show_items([item], "seg: the worst IoU first", thumbnails={0: grey})
    index = gallery.model.index(0)
    assert index.data(Qt.ItemDataRole.DisplayRole) == "IoU 0.42\ncircle 50% → circle 50%"  # no "loss nan"
    shown = index.data(Qt.ItemDataRole.DecorationRole).toImage()
    red = [int(c) for c in class_colours(2)[1]]
    right, left = shown.pixelColor(30, 20), shown.pixelColor(5, 20)
    assert (left.red(), left.green(), left.blue()) == (128, 128, 128)
    assert abs(right.red() - (red[0] + 128) / 2) < 4 and abs(right.green() - (red[1] + 128) / 2) < 4
