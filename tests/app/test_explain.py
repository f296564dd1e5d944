"""The Evaluate tab's look inside the model, driven like a person would: a confusion-matrix cell opens a
gallery of exactly its images, a click tries one with its heatmap, each head's mistakes are listed, a
layer selected in the tree shows its channels, the label audit exports to a new CSV, and bad input
(an unreadable image, a TorchScript network, a layer without a spatial output) is said, not raised."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QFileDialog, QTableWidget
from torch import nn

from engine.explain.mistakes import (SUGGESTION_COLUMNS, confusion_members, label_audit, label_errors,
                                     largest_errors, mistakes)
from engine.network.heads import HeadSpec
from engine.network.loading import load_network
from engine.network.preprocess import InputSpec
from engine.surgery.operations import AddHead, DeleteOutputLayer
from engine.surgery.session import Session
from test_main_window import LOAD_TIMEOUT, first_image, give_session, load_data


def evaluated(qtbot, window, network, csv_path, heads: int = 1):
    """The bundled network with the data's first ``heads`` heads (untrained: plenty of mistakes), evaluated,
    its mistakes listed and its labels audited."""
    give_session(window, network)
    data = load_data(qtbot, window, csv_path)
    window.surgery.apply_op(DeleteOutputLayer())
    for spec in data.heads[:heads]:
        window.surgery.apply_op(AddHead(spec, seed=0))
    with qtbot.waitSignal(window.explain.listed, timeout=LOAD_TIMEOUT):
        window.evaluation.evaluate()
    return window.evaluation.last_report


def click_cell(qtbot, window, row: int, column: int) -> None:
    """A click on a confusion-matrix cell; back once the gallery shows its images (listed in a worker)."""
    table = window.evaluation_panel.current_page().findChild(QTableWidget, "confusionMatrix")
    with qtbot.waitSignal(window.explain.galleryShown, timeout=LOAD_TIMEOUT):
        qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton,
                         pos=table.visualItemRect(table.item(row, column)).center())


@pytest.mark.slow
def test_a_cell_lists_exactly_its_images_and_a_click_tries_one_with_its_heatmap(qtbot, window, default_network,
                                                                                 small_csv, boxes):
    report = evaluated(qtbot, window, default_network, small_csv)
    head = window.evaluation_panel.current_head()
    assert report.heads[head].kind == "single" and window.tabs.currentIndex() == 3
    confusion, members = report.heads[head].details["confusion"], confusion_members(report, head)
    gallery = window.gallery
    k = len(confusion)
    for t in range(k):
        for p in range(k):
            click_cell(qtbot, window, t, p)
            assert sorted(gallery.image_paths()) == sorted(report.images[i] for i in members[t][p])
            assert gallery.model.rowCount() == confusion[t][p] and gallery.view.isHidden() == (not confusion[t][p])
    t, p = max(((t, p) for t in range(k) for p in range(k)), key=lambda c: (c[0] != c[1], confusion[c[0]][c[1]]))
    click_cell(qtbot, window, t, p)
    classes = report.heads[head].classes
    assert gallery.model.index(0).data().startswith(f"{classes[t]} → {classes[p]}\n")
    assert window.image_lists.currentWidget() is gallery
    qtbot.waitUntil(lambda: all(gallery.model.has_thumbnail(r) for r in range(gallery.model.rowCount())),
                    timeout=LOAD_TIMEOUT)

    picked = gallery.image_paths()[0]
    with qtbot.waitSignal(window.explain.explained, timeout=LOAD_TIMEOUT) as explained:
        qtbot.mouseClick(gallery.view.viewport(), Qt.MouseButton.LeftButton,
                         pos=gallery.view.visualRect(gallery.model.index(0)).center())
    heatmap = explained.args[0]
    assert window.try_image.image_path() == picked and window.try_image.predictions_text()
    assert heatmap.head == head and heatmap.predicted and heatmap.layer == "features"
    assert heatmap.values.shape == (224, 224) and heatmap.values.dtype == np.float32
    view = window.heatmap_view
    assert view.heatmap() is heatmap and not view.pixmap().isNull() and view.caption_label.text() == heatmap.describe()
    assert view.layer_combo.itemText(0) == "default (features)" and view.layer_combo.findData("features.3") > 0
    assert f"Heatmap of {head}" in window.message_label.text()

    other = next(c for c in classes if c != heatmap.target)  # any class the user picks
    with qtbot.waitSignal(window.explain.explained, timeout=LOAD_TIMEOUT) as explained:
        view.target_combo.setCurrentIndex(view.target_combo.findData(other))
    assert explained.args[0].target == other and not explained.args[0].predicted
    with qtbot.waitSignal(window.explain.explained, timeout=LOAD_TIMEOUT) as explained:
        view.layer_combo.setCurrentIndex(view.layer_combo.findData("features.3"))
    assert explained.args[0].layer == "features.3" and explained.args[0].grid == (28, 28)
    with qtbot.waitSignal(window.explain.explained, timeout=1000) as explained:  # asked before: no new job
        view.layer_combo.setCurrentIndex(0)
        assert "explain" not in window.jobs.running
    assert explained.args[0].layer == "features" and explained.args[0].target == other
    assert boxes.calls == []


def test_each_heads_mistakes_are_listed_worst_first(qtbot, window, default_network, small_csv):
    report = evaluated(qtbot, window, default_network, small_csv, heads=3)
    gallery = window.gallery
    lists = dict(gallery.lists())
    kinds = {h: r.kind for h, r in report.heads.items()}
    assert sorted(kinds.values()) == ["multi", "regression", "single"]
    single, multi, regression = (next(h for h, k in kinds.items() if k == kind)
                                 for kind in ("single", "multi", "regression"))
    label = report.heads[multi].classes[0]
    fp, fn = label_errors(report, multi, label)
    expected = {f"{single}:mistakes": mistakes(report, single), f"{multi}:fp:{label}": fp,
                f"{multi}:fn:{label}": fn, f"{regression}:errors": largest_errors(report, regression)}
    for key, items in expected.items():
        assert key in lists
        with qtbot.waitSignal(gallery.listChosen, timeout=1000):
            gallery.list_combo.setCurrentIndex(gallery.list_combo.findData(key))
        assert gallery.image_paths() == [e.image for e in items]
        assert lists[key].endswith(f"({len(items)})")
    assert gallery.image_paths() and all(gallery.model.index(r).data().count("error") == 1
                                         for r in range(gallery.model.rowCount()))
    losses = [e.loss for e in expected[f"{single}:mistakes"]]
    assert losses == sorted(losses, reverse=True)

    key, wrong = next((k, v) for k, v in expected.items() if ":f" in k and v)  # a label wrongly seen or missed
    gallery.list_combo.setCurrentIndex(gallery.list_combo.findData(key))
    with qtbot.waitSignal(window.explain.explained, timeout=LOAD_TIMEOUT) as explained:
        qtbot.mouseClick(gallery.view.viewport(), Qt.MouseButton.LeftButton,
                         pos=gallery.view.visualRect(gallery.model.index(0)).center())
    assert window.try_image.image_path() == wrong[0].image
    assert (explained.args[0].head, explained.args[0].target) == (multi, wrong[0].label)  # the label in question


def test_a_layer_selected_in_the_tree_shows_its_strongest_channels(qtbot, window, default_network, small_csv, boxes):
    give_session(window, default_network)
    load_data(qtbot, window, small_csv)
    window.surgery.apply_op(DeleteOutputLayer())
    window.surgery.apply_op(AddHead(window.data.heads[0], seed=0))
    window.show_tab("evaluate")
    grid, explain = window.activation_grid, window.explain
    window.looks.setCurrentWidget(grid)
    assert window.tree_view.select_path("features.3")
    assert grid.message().startswith("Try an image to see the strongest channels of features.3")
    with qtbot.waitSignal(explain.activationsShown, timeout=LOAD_TIMEOUT) as shown:
        window.evaluation.predict_image(first_image(small_csv))
    activations = shown.args[0]
    assert activations.layer == "features.3" and grid.activations() is activations
    assert grid.tile_count() == 16 and activations.form.height == 28
    window.looks.setCurrentWidget(window.heatmap_view)
    with qtbot.waitSignal(explain.activationsShown, timeout=LOAD_TIMEOUT) as shown:
        assert window.tree_view.select_path("features.6")
    assert window.looks.currentWidget() is grid and shown.args[0].layer == "features.6"
    with qtbot.waitSignal(explain.activationsShown, timeout=LOAD_TIMEOUT) as shown:
        assert window.tree_view.select_path("avgpool")
    assert "'avgpool' has no spatial output" in shown.args[0] and grid.message() == shown.args[0]
    assert "has no spatial output" in window.message_label.text() and boxes.calls == []
    qtbot.waitUntil(lambda: not window.jobs.busy, timeout=LOAD_TIMEOUT)
    assert window.actions.add_head.isEnabled()  # surgery may go on once the grid is drawn


def test_the_label_audit_exports_to_a_new_csv_and_never_over_the_data(qtbot, window, monkeypatch, boxes, tmp_path,
                                                                     default_network, small_csv):
    report = evaluated(qtbot, window, default_network, small_csv, heads=3)
    audit = window.label_audit
    expected = label_audit(report)
    assert expected and audit.suggestions() == expected == window.explain.suggestions  # the demo has blank cells
    assert audit.export_button.isEnabled() and audit.model.rowCount() == len(expected)
    data_before = small_csv.read_bytes()
    target = tmp_path / "suggestions.csv"
    answer = [str(target)]
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (answer[0], "")))
    with qtbot.waitSignal(window.explain.suggestionsWritten, timeout=LOAD_TIMEOUT):
        audit.export_button.click()
    rows = list(csv.reader(target.open(newline="")))
    assert tuple(rows[0]) == SUGGESTION_COLUMNS and len(rows) == len(expected) + 1
    assert [(r[1], r[2], r[6]) for r in rows[1:]] == [(s.head, s.column, s.reason) for s in expected]
    assert str(target) in window.message_label.text()

    for where, says in ((small_csv, "part of the data"), (tmp_path / "missing" / "s.csv", "does not exist")):
        answer[0] = str(where)
        with qtbot.waitSignal(window.errorShown, timeout=LOAD_TIMEOUT) as shown:
            audit.export_button.click()
        assert says in shown.args[0] and not (tmp_path / "missing").exists()
    assert small_csv.read_bytes() == data_before


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_bad_input_is_said_in_the_view_not_raised(qtbot, window, boxes, tmp_path, default_network, small_csv):
    give_session(window, default_network)
    load_data(qtbot, window, small_csv)
    window.surgery.apply_op(DeleteOutputLayer())
    window.surgery.apply_op(AddHead(window.data.heads[0], seed=0))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    with qtbot.waitSignal(window.errorShown, timeout=LOAD_TIMEOUT) as shown:
        window.explain.open_image(str(broken))
    assert "broken.png" in shown.args[0]
    assert window.heatmap_view.status_label.text() == f"No heatmap: {shown.args[0]}"
    assert window.heatmap_view.heatmap() is None and window.explain.image is None

    net = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                         nn.Flatten()))
    net.save(str(tmp_path / "net.pt"))
    network = load_network(str(tmp_path / "net.pt"))
    network.input_spec = InputSpec(size=32, resize=32)
    session = Session(network)
    session.do(AddHead(HeadSpec("kind", labels=["a", "b"]), seed=0))
    window.workspace.set_session(session)
    boxes.calls.clear()
    window.show_tab("evaluate")
    with qtbot.waitSignal(window.predicted, timeout=LOAD_TIMEOUT):
        window.explain.open_image(first_image(small_csv))
    qtbot.waitUntil(lambda: "TorchScript" in window.heatmap_view.status_label.text(), timeout=LOAD_TIMEOUT)
    assert "its layers cannot be hooked" in window.message_label.text() and window.heatmap_view.heatmap() is None
    assert window.try_image.predictions_text()  # the prediction itself works
    window.looks.setCurrentWidget(window.activation_grid)
    with qtbot.waitSignal(window.explain.activationsShown, timeout=LOAD_TIMEOUT) as shown:
        assert window.tree_view.select_path("0")
    assert "TorchScript" in shown.args[0] and window.activation_grid.message() == shown.args[0]
    assert boxes.calls == []  # said where it is shown, without a box
