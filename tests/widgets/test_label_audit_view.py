"""LabelAuditView: the audit's suggestions in a table, export asked for (never written here), a click tries."""
from __future__ import annotations

from PySide6.QtCore import Qt

from engine.explain.mistakes import Suggestion
from widgets.label_audit_view import LabelAuditView


def suggestions(tmp_path) -> list[Suggestion]:
    return [Suggestion(str(tmp_path / "a.png"), 0, "shape", "shape", "star", "circle", 0.973, "contradicted"),
            Suggestion(str(tmp_path / "b.png"), 1, "tags", "red", "", "1", 0.81, "blank"),
            Suggestion(str(tmp_path / "c.png"), 2, "size", "size", "", "0.42", None, "blank")]


def test_suggestions_export_and_a_click(qtbot, tmp_path):
    view = LabelAuditView()
    qtbot.addWidget(view)
    view.resize(600, 400)
    view.show()
    assert not view.export_button.isEnabled() and view.table.isHidden()
    items = suggestions(tmp_path)
    view.show_suggestions(items, 0.9)
    assert view.suggestions() == items and view.export_button.isEnabled() and not view.table.isHidden()
    assert view.summary_label.text().startswith("1 label the model contradicts with at least 90% confidence")
    assert "2 blank cells" in view.summary_label.text()
    m = view.model
    assert [m.index(0, c).data() for c in range(7)] == ["a.png", "shape", "shape", "star", "circle", "97.3%",
                                                        "likely mislabelled"]
    assert [m.index(2, c).data() for c in (3, 4, 5, 6)] == ["(blank)", "0.42", "", "blank cell"]
    assert m.index(0, 0).data(Qt.ItemDataRole.ToolTipRole) == items[0].image
    assert m.index(0, 0).data(Qt.ItemDataRole.BackgroundRole) is not None and m.index(1, 0).data(
        Qt.ItemDataRole.BackgroundRole) is None  # the contradicted rows are shaded
    with qtbot.waitSignal(view.exportRequested, timeout=1000):
        view.export_button.click()
    with qtbot.waitSignal(view.suggestionActivated, timeout=1000) as chosen, \
            qtbot.waitSignal(view.imageActivated, timeout=1000) as opened:
        qtbot.mouseClick(view.table.viewport(), Qt.MouseButton.LeftButton,
                         pos=view.table.visualRect(m.index(1, 2)).center())
    assert chosen.args == [items[1]] and opened.args == [items[1].image]
    view.show_suggestions([], 0.9)
    assert not view.export_button.isEnabled() and "no blank cells" in view.summary_label.text()
    view.show_message("Evaluate first.")
    assert view.summary_label.text() == "Evaluate first." and view.model.rowCount() == 0
