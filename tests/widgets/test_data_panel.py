"""DataPanel: asks for data (buttons, drops), shows the summary, thumbnails and advice, and errors."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QFileDialog, QLabel, QTableWidget

from engine.training.advice import Advice
from engine.data.loading import load_data
from widgets.data_panel import DataPanel, dropped_data_path


def n_labelled(source) -> int:
    """Images with at least one label (for any head), counted the long way, sample by sample."""
    heads = list(getattr(source, "heads", []))
    count = 0
    for sample in list(source.train) + list(source.val):
        for spec in heads:
            t = sample.targets.get(spec.name)
            if t is None:
                continue
            if spec.kind == "single":
                if t >= 0:
                    break
            elif any(not math.isnan(v) for v in t):
                break
        else:
            continue
        count += 1
    return count


@pytest.fixture(scope="module")
def source(demo_manifest):
    csv_path = demo_manifest()
    data = load_data(csv_path)
    data.skipped = [(str(csv_path.parent / "broken.jpg"), "corrupt or truncated image"),
                    (str(csv_path.parent / "notes.txt"), "not an image file")]
    return data


@pytest.fixture
def panel(qtbot) -> DataPanel:
    panel = DataPanel()
    qtbot.addWidget(panel)
    panel.resize(760, 640)
    panel.show()
    return panel


def table_rows(table) -> list[list[str]]:
    return [[table.item(r, c).text() for c in range(table.columnCount() - 1)] for r in range(table.rowCount())]


def test_shows_the_summary_per_head(panel, source):
    summary = source.summary()
    panel.set_data(source)
    text = panel.summary_label.text()
    for number in (summary["n_samples"], summary["n_train"], summary["n_val"]):
        assert f"{number:,}" in text
    assert panel.path_label.text().endswith("labels.csv")
    assert [panel.head_tabs.tabText(i) for i in range(panel.head_tabs.count())] == ["shape", "tags", "size"]
    heads = summary["heads"]
    tables = [panel.head_tabs.widget(i).findChild(QTableWidget) for i in range(3)]
    rows = table_rows(tables[0])
    assert [r[0] for r in rows] == heads["shape"]["labels"]
    assert [int(r[1]) for r in rows] == [heads["shape"]["counts"][c] for c in heads["shape"]["labels"]]
    assert [int(r[2]) for r in rows] == [heads["shape"]["train_counts"][c] for c in heads["shape"]["labels"]]
    page_text = panel.head_tabs.widget(0).findChildren(QLabel)
    assert any(f"{heads['shape']['missing_fraction']:.0%} missing" in label.text() for label in page_text)
    assert tables[2].item(0, 0).text() == "size" and tables[2].horizontalHeaderItem(2).text() == "Min"
    assert panel.thumbs.count() == 8


def test_skipped_files_are_counted_and_listed(panel, source):
    panel.set_data(source)
    assert panel.skipped_button.isVisible() and panel.skipped_button.text() == "2 files skipped"
    assert "broken.jpg: corrupt or truncated image" in panel.skipped_button.toolTip()
    assert not panel.skipped_list.isVisible()
    panel.skipped_button.click()
    assert panel.skipped_list.isVisible() and panel.skipped_list.count() == 2


def test_labelled_images_are_counted_once_per_source(panel, source, monkeypatch):
    """The data's summary (label counts, labelled images: 0.5 s for 200,000 images) is worked out once per
    data, not on every surgery step, and gives the panel the same count as counting the samples."""
    from dataclasses import replace

    from engine.data.samples import DataSource

    source = replace(source)  # a copy not summarised yet (the fixture's own was, by earlier tests)
    summarised = []
    real = DataSource._summarise
    monkeypatch.setattr(DataSource, "_summarise", lambda self: summarised.append(self) or real(self))
    panel.set_data(source)
    advice = panel.advice()
    for _ in range(5):  # the window sets the session after every surgery step
        panel.set_session(None)
    assert summarised == [source] and panel.advice() == advice
    assert source.summary()["n_labelled_any"] == n_labelled(source)
    panel.set_data(source)  # the same data given again: its summary is kept
    assert summarised == [source]
    fewer = replace(source, train=source.train[:-1])  # other data: summarised again
    panel.set_data(fewer)
    assert summarised == [source, fewer]
    assert panel.advice_label.text().startswith(f"{n_labelled(fewer):,} labelled images")


def test_advice_and_apply(qtbot, panel, source):
    panel.set_data(source)
    n = n_labelled(source)
    assert 0 < n <= len(source.train) + len(source.val)
    assert panel.advice_frame.isVisible()
    assert panel.advice_label.text().startswith(f"{n:,} labelled images: train the heads only")
    with qtbot.waitSignal(panel.adviceApplied, timeout=1000) as applied:
        qtbot.mouseClick(panel.apply_button, Qt.MouseButton.LeftButton)
    assert applied.args == ["heads-only"]
    panel.set_advice(Advice("up-to:layer3", "5,000 labelled images: unfreeze the last blocks.", "layer3"))
    with qtbot.waitSignal(panel.adviceApplied, timeout=1000) as applied:
        panel.apply_button.click()
    assert applied.args == ["up-to:layer3"] and "unfreeze" in panel.advice_label.text()


def test_an_error_leaves_the_previous_data_shown(panel, source):
    panel.set_data(source)
    panel.set_error("labels.csv row 7, column 'size': 'big' is not a number.")
    assert panel.error_label.isVisible() and "row 7" in panel.error_text()
    assert panel.head_tabs.count() == 3 and panel.scroll.isVisible() and panel.source() is source
    panel.set_data(source)
    assert not panel.error_label.isVisible()


def test_an_error_before_any_data(panel):
    panel.set_error("nothing here")
    assert panel.error_label.isVisible() and panel.drop_hint.isVisible() and not panel.scroll.isVisible()


def test_buttons_ask_through_the_file_dialog(qtbot, panel, monkeypatch, tmp_path):
    monkeypatch.setattr(QFileDialog, "getExistingDirectory", staticmethod(lambda *a, **k: str(tmp_path)))
    with qtbot.waitSignal(panel.dataRequested, timeout=1000) as folder:
        qtbot.mouseClick(panel.folder_button, Qt.MouseButton.LeftButton)
    assert folder.args == [str(tmp_path)]
    csv_path = str(tmp_path / "labels.csv")
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (csv_path, "")))
    with qtbot.waitSignal(panel.dataRequested, timeout=1000) as csv:
        qtbot.mouseClick(panel.csv_button, Qt.MouseButton.LeftButton)
    assert csv.args == [csv_path]
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: ("", "")))
    with qtbot.assertNotEmitted(panel.dataRequested):
        panel.csv_button.click()


def test_dropping_a_folder_or_csv(qtbot, panel, tmp_path):
    (tmp_path / "a.csv").write_text("image,label\n")
    (tmp_path / "photo.jpg").write_bytes(b"")
    assert dropped_data_path([str(tmp_path / "photo.jpg"), str(tmp_path / "a.csv")]) == str(tmp_path / "a.csv")
    assert dropped_data_path([str(tmp_path / "photo.jpg")]) is None
    assert dropped_data_path([str(tmp_path / "photo.jpg"), str(tmp_path / "b.TSV")]) == str(tmp_path / "b.TSV")

    def drop(path: Path) -> None:
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(str(path))])
        event = QDropEvent(QPointF(10, 10), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                           Qt.KeyboardModifier.NoModifier)
        panel.dropEvent(event)

    with qtbot.waitSignal(panel.dataRequested, timeout=1000) as dropped:
        drop(tmp_path)
    assert dropped.args == [str(tmp_path)]
    with qtbot.assertNotEmitted(panel.dataRequested):
        drop(tmp_path / "photo.jpg")


def test_notes_and_warnings_are_shown_warnings_first(panel, source):
    import copy

    noted = copy.copy(source)
    noted.notes = ["Column 'id' is not a head: it has a different value on every row."]
    noted.warnings = ["labels.csv row 7, column 'score': '<1..5>' is not a number, but 47 of the column's 48 "
                      "values are; the column is left out of the suggested heads."]
    panel.set_data(noted)
    assert panel.notes_label.isVisible()
    text = panel.notes_label.text()
    assert text.index("is not a number") < text.index("different value on every row")
    assert "&lt;1..5&gt;" in text and "<1..5>" not in text  # shown as written, not read as markup
    assert panel.notes() == (noted.warnings, noted.notes)
    assert panel.notes_label.height() >= 2 * panel.notes_label.fontMetrics().height()  # wrapped, not cut
    plain = copy.copy(source)
    plain.notes, plain.warnings = [], []
    panel.set_data(plain)  # data without notes hides them
    assert not panel.notes_label.isVisible() and panel.notes() == ([], [])
    panel.set_data(source)  # the demo's own notes (its mask and boxes columns are not classifier heads)
    assert panel.notes_label.isVisible() and panel.notes() == (source.warnings, source.notes)
    panel.set_data(noted)
    panel.clear()
    assert not panel.notes_label.isVisibleTo(panel) and panel.notes() == ([], [])


def _picks_by_grouping_everything(samples, name, count):
    """The thumbnails' choice worked out the long way: every sample grouped by class, then in turn."""
    groups = {}
    for s in samples:
        groups.setdefault(s.targets.get(name, -1), []).append(s)
    order = sorted(k for k in groups if k >= 0) + ([-1] if -1 in groups else [])
    picked, depth = [], 0
    while len(picked) < count and any(depth < len(groups[k]) for k in order):
        picked += [groups[k][depth] for k in order if depth < len(groups[k])]
        depth += 1
    return picked[:count]


@pytest.mark.parametrize("layout", ["even", "one rare class", "mostly unlabelled", "a class with none"])
def test_thumbnails_take_the_classes_in_turn_without_reading_every_sample(layout):
    from types import SimpleNamespace

    from engine.data.samples import Sample
    from engine.network.heads import HeadSpec

    head = HeadSpec("class", "single", labels=["a", "b", "c"])
    classes = {"even": [0, 1, 2] * 40, "one rare class": [0] * 50 + [1] * 2 + [2] * 50,
               "mostly unlabelled": [-1] * 60 + [0, 1, 2], "a class with none": [0, 2] * 30}[layout]
    samples = [Sample(Path(f"{i}.png"), {"class": c}) for i, c in enumerate(classes)]
    source = SimpleNamespace(train=samples[:-10], val=samples[-10:], heads=[head])
    for count in (1, 3, 8):
        picked = DataPanel._pick_samples(source, count)
        assert picked == _picks_by_grouping_everything(samples, "class", count), (layout, count)


def test_thumbnails_stop_reading_once_every_class_has_enough():
    from types import SimpleNamespace

    from engine.data.samples import Sample
    from engine.network.heads import HeadSpec

    class Unread:
        @property
        def targets(self):
            raise AssertionError("read a sample past the ones shown")

    head = HeadSpec("class", "single", labels=["a", "b"])
    samples = [Sample(Path(f"{i}.png"), {"class": i % 2}) for i in range(8)]
    source = SimpleNamespace(train=samples + [Unread()] * 1000, val=[], heads=[head])
    assert DataPanel._pick_samples(source, 4) == samples[:4]


def test_thumbnail_tooltips_say_each_images_mask_file_and_boxes_per_class():
    from types import SimpleNamespace

    from engine.network.heads import HeadSpec

    heads = [HeadSpec("shape", "single", labels=["circle", "square"]),
             HeadSpec("mask", "segment", labels=["background", "circle", "square"], columns=["mask"]),
             HeadSpec("boxes", "detect", labels=["circle", "square"], columns=["boxes"])]
    source = SimpleNamespace(heads=heads)
    boxed = SimpleNamespace(path="/d/images/001.jpg", targets={
        "shape": 1, "mask": "/d/masks/001.png",
        "boxes": [[1, 2, 30, 40, 1.0], [5, 5, 9, 9, 0.0], [50, 50, 60, 60, 1.0]]})
    assert DataPanel._caption(source, boxed) == ("square", "001.jpg\nshape: square\nmask: 001.png\n"
                                                           "boxes: square x2, circle")
    empty = SimpleNamespace(path="/d/images/002.jpg", targets={"shape": -1, "mask": None, "boxes": []})
    assert DataPanel._caption(source, empty)[1] == "002.jpg\nshape: unlabelled\nmask: no mask\nboxes: no boxes"
