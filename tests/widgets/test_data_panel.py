"""DataPanel: asks for data (buttons, drops), shows the summary, thumbnails and advice, and errors."""
from __future__ import annotations

from pathlib import Path

import pytest
from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
from PySide6.QtGui import QDropEvent
from PySide6.QtWidgets import QFileDialog, QLabel, QTableWidget

from engine.data import demo_data
from engine.training.advice import Advice
from engine.data.datasets import load_data
from widgets.data_panel import DataPanel, dropped_data_path, n_labelled


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    csv_path = demo_data.ensure_demo_data(tmp_path_factory.mktemp("demo"))
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
    import widgets.data_panel as module

    counted = []
    monkeypatch.setattr(module, "n_labelled", lambda s: counted.append(s) or n_labelled(s))
    panel.set_data(source)
    advice = panel.advice()
    for _ in range(5):  # the window sets the session after every surgery step
        panel.set_session(None)
    assert counted == [source] and panel.advice() == advice
    panel.set_data(source)  # new data (here the same object, given again) is counted again
    assert counted == [source, source]


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
    panel.set_data(source)  # data without notes hides them
    assert not panel.notes_label.isVisible() and panel.notes() == ([], [])
    panel.set_data(noted)
    panel.clear()
    assert not panel.notes_label.isVisibleTo(panel) and panel.notes() == ([], [])
