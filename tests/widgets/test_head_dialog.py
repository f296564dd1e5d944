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


DENSE_SUGGESTIONS = [HeadSpec("shape", "single", labels=["circle", "square"], columns=["shape"]),
                     HeadSpec("seg", "segment", labels=["background", "circle", "square"], columns=["mask"]),
                     HeadSpec("boxes", "detect", labels=["circle", "square"], columns=["boxes"])]
MAPS = ["features.1", "features.3", "features.5", "features.8"]


def dense_dialog(qtbot, layer=None, existing=("shape",)) -> HeadDialog:
    dialog = HeadDialog.for_new(existing, DENSE_SUGGESTIONS, layers=MAPS + ["head"], layer=layer, dense_layers=MAPS,
                                default_dense_layers=["features.3", "features.5", "features.8"])
    qtbot.addWidget(dialog)
    dialog.show()
    return dialog


def test_a_segmentation_head_from_a_suggestion_with_chosen_layers_and_ignore_value(qtbot):
    dialog = dense_dialog(qtbot)
    assert dialog.kind() == "segment" and dialog.checked_columns() == ["mask"]
    fields = dialog.dense_fields
    # Dense heads read feature maps through a decoder: no hidden layers, dropout or one pooled layer.
    assert fields.isVisible() and not dialog.hidden_edit.isVisible() and not dialog.layer_combo.isVisible()
    assert fields.ignore_spin.isVisible() and not fields.score_spin.isVisible()
    assert "default layers, features.3, features.5, features.8" in fields.layers_hint.text()
    assert dialog.labels_row_label.text() == "Classes"
    for i in range(fields.layers_list.count()):
        item = fields.layers_list.item(i)
        item.setCheckState(Qt.CheckState.Checked if item.text() in ("features.5", "features.1") else
                           Qt.CheckState.Unchecked)
    assert fields.layers_hint.text() == "Reads 2 layers: features.1, features.5"
    fields.ignore_spin.setValue(254)
    fields.dice_spin.setValue(0.5)
    fields.width_spin.setValue(96)
    with qtbot.waitSignal(dialog.accepted, timeout=1000):
        click_ok(qtbot, dialog)
    spec = dialog.spec()
    assert (spec.kind, spec.layers, spec.ignore_index, spec.dice, spec.hidden, spec.columns, spec.labels) == (
        "segment", ["features.1", "features.5"], 254, 0.5, [96], ["mask"], ["background", "circle", "square"])
    assert spec.layer is None


def test_an_ignore_value_that_is_a_class_keeps_the_dialog_open_and_says_why(qtbot):
    dialog = dense_dialog(qtbot)
    dialog.dense_fields.ignore_spin.setValue(1)
    click_ok(qtbot, dialog)
    assert dialog.isVisible() and "ignore value (1) is one of its class indices" in dialog.error_text()


def test_a_box_head_with_its_score_threshold_and_add_head_here_ticks_that_layer(qtbot):
    dialog = dense_dialog(qtbot, layer="features.5", existing=("shape", "seg"))
    assert dialog.kind() == "detect" and dialog.checked_columns() == ["boxes"]
    fields = dialog.dense_fields
    assert fields.score_spin.isVisible() and not fields.ignore_spin.isVisible()
    assert fields.checked_layers() == ["features.5"]  # "Add head here" on features.5
    fields.score_spin.setValue(0.45)
    fields.layer_filter.setText("8")
    assert [fields.layers_list.item(i).isHidden() for i in range(4)] == [True, True, True, False]
    with qtbot.waitSignal(dialog.accepted, timeout=1000):
        click_ok(qtbot, dialog)
    spec = dialog.spec()
    assert (spec.kind, spec.layers, spec.score_threshold, spec.labels) == (
        "detect", ["features.5"], 0.45, ["circle", "square"])


def test_switching_to_a_dense_kind_and_back(qtbot):
    dialog = dense_dialog(qtbot, layer="features.3", existing=())
    assert dialog.kind() == "single" and dialog.layer() == "features.3" and not dialog.dense_fields.isVisible()
    dialog.kind_combo.setCurrentIndex(dialog.kind_combo.findData("segment"))
    assert dialog.dense_fields.isVisible() and dialog.dense_fields.checked_layers() == ["features.3"]
    dialog.labels_edit.setPlainText("background, thing")
    assert dialog.spec().kind == "segment" and dialog.spec().layers == ["features.3"]
    dialog.kind_combo.setCurrentIndex(dialog.kind_combo.findData("single"))
    assert not dialog.dense_fields.isVisible() and dialog.hidden_edit.isVisible()
    assert dialog.spec().layer == "features.3" and dialog.spec().layers == []


def test_editing_a_dense_head_fills_its_fields(qtbot):
    spec = HeadSpec("seg", "segment", labels=["bg", "fg"], columns=["mask"], layers=["features.3", "features.8"],
                    ignore_index=200, dice=1.0, hidden=[32])
    dialog = HeadDialog.for_edit(spec, layers=MAPS, dense_layers=MAPS)
    qtbot.addWidget(dialog)
    assert dialog.dense_fields.checked_layers() == ["features.3", "features.8"]
    assert dialog.dense_fields.ignore_spin.value() == 200 and dialog.dense_fields.width_spin.value() == 32
    assert dialog.hidden_edit.text() == "" and dialog.spec() == spec
    gone = HeadSpec("seg", "segment", labels=["bg", "fg"], layers=["features.9"])
    dialog = HeadDialog.for_edit(gone, layers=MAPS, dense_layers=MAPS)
    qtbot.addWidget(dialog)
    assert dialog.dense_fields.checked_layers() == []  # features.9 is no longer offered
