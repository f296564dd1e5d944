"""Add or edit a head: name, kind, the data columns it learns from, labels, widths, dropout, loss weight,
and the layer it reads (the trunk's end, or any layer: a multi-exit network).

Validation is the engine's (:class:`~engine.network.heads.HeadSpec` raises :class:`~engine.errors.GraftError`);
the message is shown inline and the dialog stays open until it is fixed or cancelled.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QComboBox, QCompleter, QDialog, QDialogButtonBox, QDoubleSpinBox, QFormLayout,
                               QHBoxLayout, QLabel, QLineEdit, QListWidget, QListWidgetItem, QPlainTextEdit,
                               QSpinBox, QVBoxLayout, QWidget)

from engine.errors import GraftError
from engine.network.heads import DENSE_KINDS, KIND_TITLES, KINDS, HeadSpec

from .head_diagram import OUTPUT_WORDS, outputs_text
from .head_dialog_dense import DenseFields, checked_names, set_checked_names

ERROR_STYLE = "color: #C62828;"
END_TEXT = "End of the trunk"


def parse_labels(text: str) -> list[str]:
    """One label per line, or comma separated; blanks dropped."""
    return [part.strip() for part in re.split(r"[\n,]", text) if part.strip()]


def parse_hidden(text: str) -> list[int]:
    """``"512, 128"`` -> ``[512, 128]``; empty -> ``[]``."""
    parts = [p for p in re.split(r"[,\s;x×]+", text.strip()) if p]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise GraftError("Hidden layer sizes: whole numbers such as 256, or 512, 128 for two layers "
                         "(leave empty for none).") from None


class HeadDialog(QDialog):
    """Build with :meth:`for_new` or :meth:`for_edit`; after ``accept`` read :meth:`spec`."""

    def __init__(self, spec: HeadSpec | None = None, existing_names: Iterable[str] = (),
                 suggestions: Sequence[HeadSpec] = (), parent: QWidget | None = None,
                 layers: Sequence[str] = (), layer: str | None = None, dense_layers: Sequence[str] | None = None,
                 default_dense_layers: Sequence[str] = ()) -> None:
        super().__init__(parent)
        self._original = spec
        self._layers = list(layers)
        self._here = layer  # "Add head here": a dense head reads this layer too
        self._existing = {n for n in existing_names if spec is None or n != spec.name}
        self._suggestions = list(suggestions)
        self._spec: HeadSpec | None = None
        self._filling = False
        self.setWindowTitle(f"Edit head ‘{spec.name}’" if spec is not None else "Add a head")

        self.suggestion_combo = QComboBox(self)
        self.suggestion_combo.addItem("Start from scratch", None)
        for i, s in enumerate(self._suggestions):
            self.suggestion_combo.addItem(f"{s.name} — {KIND_TITLES.get(s.kind, s.kind)}, {outputs_text(s, 4)}", i)
        self.suggestion_combo.setToolTip("Heads suggested by the loaded data: pick one to fill in the form")

        self.name_edit = QLineEdit(self)
        self.name_edit.setPlaceholderText("e.g. species")
        self.kind_combo = QComboBox(self)
        for kind in KINDS:
            self.kind_combo.addItem(KIND_TITLES[kind], kind)
        self.kind_combo.setToolTip("single-label: exactly one class per image (softmax)\n"
                                   "multi-label: any number of tags per image (one sigmoid each)\n"
                                   "regression: numbers (e.g. a size or an age)\n"
                                   "segmentation: a class for every pixel, learnt from PNG masks\n"
                                   "object boxes: where each object is, learnt from box files")
        self.dense_fields = DenseFields(self._layers if dense_layers is None else dense_layers,
                                        default_dense_layers, self)

        columns = list(dict.fromkeys(c for s in self._suggestions for c in s.columns))
        if spec is not None:
            columns += [c for c in spec.columns if c not in columns]
        self.columns_list = QListWidget(self)
        self.columns_list.setToolTip("The CSV columns this head learns from")
        for column in columns:
            item = QListWidgetItem(column, self.columns_list)
            item.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Unchecked)
        rows = min(max(len(columns), 2), 6)
        self.columns_list.setFixedHeight(rows * self.columns_list.sizeHintForRow(0) + 6 if columns else 0)

        self.labels_edit = QPlainTextEdit(self)
        self.labels_edit.setPlaceholderText("One per line, or separated by commas")
        self.labels_edit.setTabChangesFocus(True)
        self.labels_edit.setFixedHeight(self.fontMetrics().lineSpacing() * 5 + 12)
        self.outputs_spin = QSpinBox(self)
        self.outputs_spin.setRange(0, 100_000)
        self.outputs_spin.setValue(2)
        self.outputs_spin.setToolTip("Used when no names are given (they are then 0, 1, 2 …)")
        self.count_label = QLabel(self)
        self.count_label.setStyleSheet("color: palette(placeholder-text);")

        self.hidden_edit = QLineEdit(self)
        self.hidden_edit.setPlaceholderText("none, or e.g. 256  or  512, 128")
        self.hidden_edit.setToolTip("Sizes of hidden layers between the trunk's features and the outputs")
        self.dropout_spin = QDoubleSpinBox(self)
        self.dropout_spin.setRange(0.0, 0.95)
        self.dropout_spin.setSingleStep(0.05)
        self.dropout_spin.setDecimals(2)
        self.loss_weight_spin = QDoubleSpinBox(self)
        self.loss_weight_spin.setRange(0.0, 100.0)
        self.loss_weight_spin.setSingleStep(0.1)
        self.loss_weight_spin.setDecimals(2)
        self.loss_weight_spin.setValue(1.0)
        self.loss_weight_spin.setToolTip("How much this head's loss counts in the total (multi-task)")
        for spin in (self.outputs_spin, self.dropout_spin, self.loss_weight_spin):
            spin.setMinimumWidth(90)

        self.layer_combo = QComboBox(self)
        self.layer_combo.setEditable(True)
        self.layer_combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.layer_combo.addItem(END_TEXT, None)
        for path in self._layers:
            self.layer_combo.addItem(path, path)
        self.layer_combo.setToolTip("The layer whose output the head reads, pooled to a vector (feature maps "
                                    "averaged over space, a transformer's class token). The end of the trunk: "
                                    "its features, as for any head. Heads on earlier layers make a multi-exit "
                                    "network; the layers after the last one read are not computed.")
        completer = self.layer_combo.completer()  # typing part of a name finds the layer
        completer.setFilterMode(Qt.MatchFlag.MatchContains)
        completer.setCompletionMode(QCompleter.CompletionMode.PopupCompletion)
        self.set_layer(spec.layer if spec is not None else layer)

        self.error_label = QLabel(self)
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(ERROR_STYLE)
        self.error_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.error_label.hide()

        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel,
                                        self)
        self.ok_button = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        self.ok_button.setText("Save" if spec is not None else "Add head")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.ExpandingFieldsGrow)
        form.setHorizontalSpacing(12)
        form.setVerticalSpacing(8)
        if self._suggestions and spec is None:
            form.addRow("Suggested", self.suggestion_combo)
        else:
            self.suggestion_combo.hide()
        form.addRow("Name", self.name_edit)
        form.addRow("Kind", self.kind_combo)
        if columns:
            form.addRow("Data columns", self.columns_list)
        else:
            self.columns_list.hide()
        self.labels_row_label = QLabel("Labels", self)
        form.addRow(self.labels_row_label, self.labels_edit)
        outputs_row = QHBoxLayout()
        outputs_row.setSpacing(10)
        outputs_row.addWidget(self.outputs_spin)
        outputs_row.addWidget(self.count_label, 1)
        form.addRow("Outputs", outputs_row)
        form.addRow("Hidden layers", self.hidden_edit)
        form.addRow("Dropout", self.dropout_spin)
        form.addRow("Loss weight", self.loss_weight_spin)
        form.addRow("Reads", self.layer_combo)
        form.addRow(self.dense_fields)
        self.form = form
        layout = QVBoxLayout(self)
        layout.setContentsMargins(16, 16, 16, 12)
        layout.setSpacing(10)
        layout.addLayout(form)
        layout.addWidget(self.error_label)
        layout.addWidget(self.buttons)
        self.setMinimumWidth(440)

        self.suggestion_combo.currentIndexChanged.connect(self._suggestion_chosen)
        self.columns_list.itemChanged.connect(self._column_toggled)
        self.kind_combo.currentIndexChanged.connect(self._kind_changed)
        self.labels_edit.textChanged.connect(self._update_count)
        for signal in (self.name_edit.textChanged, self.labels_edit.textChanged, self.hidden_edit.textChanged,
                       self.outputs_spin.valueChanged, self.kind_combo.currentIndexChanged,
                       self.layer_combo.currentTextChanged, self.dense_fields.layers_list.itemChanged):
            signal.connect(self._clear_error)

        if spec is not None:
            self.fill(spec)
        else:
            unused = next((i for i, s in enumerate(self._suggestions) if s.name not in self._existing), None)
            if unused is not None:
                self.suggestion_combo.setCurrentIndex(unused + 1)
            else:
                self.name_edit.setText(self._free_name("head"))
        self._show_kind_rows()
        self._update_count()

    # -- construction helpers ------------------------------------------------------------------------
    @classmethod
    def for_new(cls, existing_names: Iterable[str] = (), suggestions: Sequence[HeadSpec] = (),
                parent: QWidget | None = None, layers: Sequence[str] = (), layer: str | None = None,
                dense_layers: Sequence[str] | None = None, default_dense_layers: Sequence[str] = ()) -> HeadDialog:
        """A dialog for a new head, pre-filled from the first suggested head not yet used. ``layers``: the
        layers a head may read (offered in the Reads field); ``layer``: the one chosen (None: the end; a
        dense head has it ticked). ``dense_layers``: the layers with feature maps a dense head may read
        (None: ``layers``); ``default_dense_layers``: what it reads when none is ticked."""
        return cls(None, existing_names, suggestions, parent, layers, layer, dense_layers, default_dense_layers)

    @classmethod
    def for_edit(cls, spec: HeadSpec, parent: QWidget | None = None, existing_names: Iterable[str] = (),
                 suggestions: Sequence[HeadSpec] = (), layers: Sequence[str] = (),
                 dense_layers: Sequence[str] | None = None, default_dense_layers: Sequence[str] = ()) -> HeadDialog:
        """A dialog editing ``spec`` (``existing_names``: the other heads, to refuse a clash)."""
        return cls(spec, existing_names, suggestions, parent, layers, None, dense_layers, default_dense_layers)

    def _free_name(self, base: str) -> str:
        name, k = base, 2
        while name in self._existing:
            name, k = f"{base}_{k}", k + 1
        return name

    # -- reading and writing the form ------------------------------------------------------------------
    def fill(self, spec: HeadSpec) -> None:
        """Put ``spec`` into the fields."""
        self._filling = True
        try:
            self.name_edit.setText(spec.name)
            self.kind_combo.setCurrentIndex(max(0, self.kind_combo.findData(spec.kind)))
            self._set_checked_columns(spec.columns)
            self.labels_edit.setPlainText("\n".join(spec.labels))
            self.outputs_spin.setValue(spec.outputs)
            self.hidden_edit.setText("" if spec.dense else ", ".join(str(h) for h in spec.hidden))
            self.dropout_spin.setValue(spec.dropout)
            self.loss_weight_spin.setValue(spec.loss_weight)
            if spec.dense:
                self.dense_fields.fill(spec)
                if spec is not self._original and self._here and not spec.layers:
                    self.dense_fields.set_checked_layers([self._here])  # "Add head here" on a feature map
            elif spec is self._original or spec.layer is not None:  # a suggestion keeps the layer chosen
                self.set_layer(spec.layer)
        finally:
            self._filling = False
        self._show_kind_rows()
        self._update_count()

    def set_layer(self, layer: str | None) -> None:
        """Choose the layer the head reads (None: the end of the trunk)."""
        index = self.layer_combo.findData(layer) if layer is not None else 0
        if index >= 0:
            self.layer_combo.setCurrentIndex(index)
        else:
            self.layer_combo.setEditText(layer)

    def layer(self) -> str | None:
        """The layer the Reads field names (None: the end); GraftError for a name that is no layer offered."""
        text = self.layer_combo.currentText().strip()
        if not text or text == END_TEXT:
            return None
        if self._layers and text not in self._layers:
            raise GraftError(f"A head cannot read {text!r}: choose one of the network's layers (type part of its "
                             "name to find it) or the end of the trunk.")
        return text

    def checked_columns(self) -> list[str]:
        return checked_names(self.columns_list)

    def _set_checked_columns(self, columns: Iterable[str]) -> None:
        set_checked_names(self.columns_list, columns)

    def kind(self) -> str:
        return self.kind_combo.currentData()

    def labels(self) -> list[str]:
        return parse_labels(self.labels_edit.toPlainText())

    def spec(self) -> HeadSpec:
        """The head as the form describes it; raises GraftError when it is not valid."""
        return self._build()

    def _build(self) -> HeadSpec:
        name = self.name_edit.text().strip()
        if name and name in self._existing:
            raise GraftError(f"There is already a head named {name!r}: choose another name.")
        labels = self.labels()
        if self.kind() in DENSE_KINDS:
            return self._build_dense(name, labels)
        spec = HeadSpec(name=name, kind=self.kind(), outputs=len(labels) or self.outputs_spin.value(),
                        labels=labels, columns=self.checked_columns(), hidden=parse_hidden(self.hidden_edit.text()),
                        dropout=round(self.dropout_spin.value(), 4),
                        loss_weight=round(self.loss_weight_spin.value(), 4), layer=self.layer())
        if spec.kind == "single" and len(spec.columns) > 1:
            raise GraftError(f"Single-label head {name!r} reads one column of class names; choose one column.")
        return spec

    def _build_dense(self, name: str, labels: list[str]) -> HeadSpec:
        values = self.dense_fields.values(self.kind())
        columns = self.checked_columns()
        if len(columns) > 1:
            what = "mask paths" if self.kind() == "segment" else "boxes"
            raise GraftError(f"Head {name!r} reads one column (its {what}); choose one column.")
        return HeadSpec(name=name, kind=self.kind(), outputs=len(labels) or self.outputs_spin.value(), labels=labels,
                        columns=columns, loss_weight=round(self.loss_weight_spin.value(), 4), **values)

    def error_text(self) -> str:
        return self.error_label.text()

    def show_error(self, message: str) -> None:
        self.error_label.setText(message)
        self.error_label.setVisible(bool(message))

    def accept(self) -> None:
        """Validate; on a problem show it and stay open."""
        try:
            self._spec = self._build()
        except GraftError as exc:
            self.show_error(str(exc))
            return
        self.show_error("")
        super().accept()

    # -- reactions ------------------------------------------------------------------------------------------
    def _clear_error(self, *args: object) -> None:
        if not self._filling and self.error_label.isVisible():
            self.show_error("")

    def _suggestion_chosen(self, index: int) -> None:
        i = self.suggestion_combo.itemData(index)
        if i is None:
            return
        spec = self._suggestions[i]
        self.fill(spec)
        if spec.name in self._existing:
            self.name_edit.setText(self._free_name(spec.name))

    def _column_toggled(self, item: QListWidgetItem) -> None:
        if self._filling:
            return
        checked = self.checked_columns()
        if self.kind() in {"single", *DENSE_KINDS} and item.checkState() == Qt.CheckState.Checked:
            checked = [item.text()]
            self._set_checked_columns(checked)
        if self.kind() in DENSE_KINDS:
            return  # the column names the masks or boxes: the classes stay as they are
        labels: list[str] = []
        if self.kind() == "single" and checked:
            source = next((s for s in self._suggestions if s.kind == "single" and s.columns == checked), None)
            labels = list(source.labels) if source else []
        elif checked:
            labels = checked
        self._filling = True
        self.labels_edit.setPlainText("\n".join(labels))
        self._filling = False
        self._update_count()

    def _kind_changed(self, index: int) -> None:
        if self.kind() in {"single", *DENSE_KINDS} and len(self.checked_columns()) > 1:
            self._set_checked_columns(self.checked_columns()[:1])
        if (self.kind() in DENSE_KINDS and self._here and not self._filling
                and not self.dense_fields.checked_layers()):
            self.dense_fields.set_checked_layers([self._here])
        self._show_kind_rows()
        self._update_count()

    def _show_kind_rows(self) -> None:
        """Dense heads read feature maps through a decoder: their own rows instead of hidden layers,
        dropout and the one pooled layer."""
        dense = self.kind() in DENSE_KINDS
        for field in (self.hidden_edit, self.dropout_spin, self.layer_combo):
            self.form.setRowVisible(field, not dense)
        self.form.setRowVisible(self.dense_fields, dense)
        if dense:
            self.dense_fields.set_kind(self.kind())
        self.adjustSize()

    def _update_count(self) -> None:
        labels = self.labels()
        one, many = OUTPUT_WORDS.get(self.kind(), ("output", "outputs"))
        self.labels_row_label.setText({"single": "Classes", "multi": "Labels", "regression": "Targets",
                                       "segment": "Classes", "detect": "Classes"}.get(self.kind(), "Labels"))
        self.outputs_spin.setEnabled(not labels)
        if labels:
            self.outputs_spin.blockSignals(True)
            self.outputs_spin.setValue(len(labels))
            self.outputs_spin.blockSignals(False)
            self.count_label.setText(f"{len(labels)} {one if len(labels) == 1 else many} → "
                                     f"{len(labels)} output{'s' if len(labels) != 1 else ''}")
        else:
            self.count_label.setText("No names: the outputs will be numbered 0, 1, 2 …")
