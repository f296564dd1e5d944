"""HeadDialog: pre-filled from the data's suggestions, validated by HeadSpec, open until valid."""
from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QDialog

from engine.errors import GraftError
from engine.network.heads import HeadSpec
from widgets.head_dialog import HeadDialog, parse_hidden, parse_labels

SUGGESTIONS = [HeadSpec("shape", "single", labels=["circle", "square", "star"], columns=["shape"]),
               HeadSpec("tags", "multi", labels=["red", "striped"], columns=["red", "striped"]),
               HeadSpec("size", "regression", labels=["size"], columns=["size"])]


@pytest.fixture
def new_dialog(qtbot):
    def make(existing=(), suggestions=SUGGESTIONS) -> HeadDialog:
        dialog = HeadDialog.for_new(existing, suggestions)
        qtbot.addWidget(dialog)
        dialog.show()
        return dialog
    return make


def click_ok(qtbot, dialog: HeadDialog) -> None:
    qtbot.mouseClick(dialog.ok_button, Qt.MouseButton.LeftButton)


def test_parsing():
    assert parse_labels("cat\ndog, bird\n\n") == ["cat", "dog", "bird"]
    assert parse_hidden("") == [] and parse_hidden("512, 128") == [512, 128] and parse_hidden("256") == [256]
    with pytest.raises(GraftError):
        parse_hidden("big")


def test_new_head_is_prefilled_from_the_first_unused_suggestion(qtbot, new_dialog):
    dialog = new_dialog(existing=["shape"])
    assert dialog.name_edit.text() == "tags" and dialog.kind() == "multi"
    assert dialog.checked_columns() == ["red", "striped"] and dialog.labels() == ["red", "striped"]
    with qtbot.waitSignal(dialog.accepted, timeout=1000):
        click_ok(qtbot, dialog)
    assert dialog.result() == QDialog.DialogCode.Accepted
    assert dialog.spec() == SUGGESTIONS[1]


def test_choosing_columns_fills_the_labels(new_dialog):
    dialog = new_dialog()
    assert dialog.name_edit.text() == "shape"
    dialog.kind_combo.setCurrentIndex(dialog.kind_combo.findData("regression"))
    for i in range(dialog.columns_list.count()):
        item = dialog.columns_list.item(i)
        item.setCheckState(Qt.CheckState.Checked if item.text() in ("size", "red") else Qt.CheckState.Unchecked)
    assert dialog.labels() == ["red", "size"]
    assert dialog.outputs_spin.value() == 2 and not dialog.outputs_spin.isEnabled()
    dialog.kind_combo.setCurrentIndex(dialog.kind_combo.findData("single"))
    assert len(dialog.checked_columns()) == 1  # a single-label head reads one column
    dialog.columns_list.item(0).setCheckState(Qt.CheckState.Checked)  # "shape": its classes come along
    assert dialog.checked_columns() == ["shape"] and dialog.labels() == ["circle", "square", "star"]


@pytest.mark.parametrize("name, labels, outputs, hidden, message", [
    ("shape", "a, b", 2, "", "already a head named 'shape'"),
    ("", "a, b", 2, "", "needs a name"),
    ("   ", "a, b", 2, "", "needs a name"),
    ("new", "", 0, "", "at least one output"),
    ("new", "only", 1, "", "at least 2 classes"),
    ("new", "a, a", 2, "", "duplicate label"),
    ("new", "a, b", 2, "lots", "Hidden layer sizes"),
    ("bad name!", "a, b", 2, "", "letters, digits"),
])
def test_invalid_input_keeps_the_dialog_open_with_the_message(qtbot, new_dialog, name, labels, outputs, hidden,
                                                              message):
    dialog = new_dialog(existing=["shape"], suggestions=[])
    dialog.kind_combo.setCurrentIndex(dialog.kind_combo.findData("single"))
    dialog.name_edit.setText(name)
    dialog.labels_edit.setPlainText(labels)
    dialog.outputs_spin.setValue(outputs)
    dialog.hidden_edit.setText(hidden)
    rejected = []
    dialog.accepted.connect(lambda: rejected.append("accepted"))
    click_ok(qtbot, dialog)
    assert dialog.isVisible() and not rejected
    assert message in dialog.error_text() and dialog.error_label.isVisible()
    assert dialog.error_label.styleSheet()  # shown in red
    dialog.name_edit.setText("fixed")  # editing clears the message
    assert not dialog.error_label.isVisible()


def test_count_without_names(qtbot, new_dialog):
    dialog = new_dialog(suggestions=[])
    assert dialog.name_edit.text() == "head"
    dialog.kind_combo.setCurrentIndex(dialog.kind_combo.findData("regression"))
    dialog.labels_edit.clear()
    dialog.outputs_spin.setValue(3)
    dialog.dropout_spin.setValue(0.25)
    dialog.loss_weight_spin.setValue(2.0)
    dialog.hidden_edit.setText("128")
    dialog.accept()
    assert dialog.result() == QDialog.DialogCode.Accepted
    assert dialog.spec() == HeadSpec("head", "regression", outputs=3, hidden=[128], dropout=0.25, loss_weight=2.0)


def test_edit_keeps_the_name_and_refuses_another_heads_name(qtbot):
    spec = HeadSpec("species", "single", labels=["cat", "dog", "bird"], hidden=[512, 128], dropout=0.2,
                    loss_weight=1.5)
    dialog = HeadDialog.for_edit(spec, existing_names=["species", "age"])
    qtbot.addWidget(dialog)
    dialog.show()
    assert dialog.windowTitle() == "Edit head ‘species’" and dialog.ok_button.text() == "Save"
    assert dialog.spec() == spec  # unchanged fields give the same spec back
    dialog.name_edit.setText("age")
    dialog.accept()
    assert dialog.isVisible() and "already a head named 'age'" in dialog.error_text()
    dialog.name_edit.setText("animal")
    dialog.accept()
    assert dialog.result() == QDialog.DialogCode.Accepted and dialog.spec().name == "animal"


def test_the_reads_field_chooses_the_layer_a_head_reads(qtbot):
    layers = ["layer1", "layer2", "layer2.1", "fc"]
    dialog = HeadDialog.for_new([], SUGGESTIONS, layers=layers, layer="layer2")
    qtbot.addWidget(dialog)
    dialog.show()
    assert dialog.name_edit.text() == "shape"  # the suggestion fills the form and keeps the layer
    assert dialog.spec().layer == "layer2"
    dialog.suggestion_combo.setCurrentIndex(2)
    assert dialog.spec().layer == "layer2" and dialog.spec().name == "tags"
    dialog.layer_combo.setCurrentIndex(0)
    assert dialog.spec().layer is None  # the end of the trunk
    dialog.layer_combo.setEditText("layer9")
    click_ok(qtbot, dialog)
    assert dialog.isVisible() and "cannot read 'layer9'" in dialog.error_text()
    dialog.layer_combo.setEditText("fc")
    click_ok(qtbot, dialog)
    assert dialog.result() == QDialog.DialogCode.Accepted and dialog.spec().layer == "fc"
    edit = HeadDialog.for_edit(HeadSpec("shape", "single", labels=["a", "b"], layer="layer2.1"), layers=layers)
    qtbot.addWidget(edit)
    assert edit.layer_combo.currentText() == "layer2.1" and edit.spec().layer == "layer2.1"
