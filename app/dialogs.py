"""The window's own dialogs: opening a model (bundled, torchvision or timm, file) and the about box."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (QButtonGroup, QCheckBox, QComboBox, QCompleter, QDialog, QDialogButtonBox,
                               QFileDialog, QFormLayout, QHBoxLayout, QLabel, QLineEdit, QMessageBox,
                               QPushButton, QRadioButton, QTabWidget, QVBoxLayout, QWidget)

BUNDLED = (("efficientnet_lite0", "EfficientNet-Lite0", "4.7 M parameters, 224 px — fast, the default"),
           ("efficientnet_lite1", "EfficientNet-Lite1", "5.4 M parameters, 240 px"),
           ("efficientnet_lite2", "EfficientNet-Lite2", "6.1 M parameters, 260 px — most accurate"))
MODEL_FILTER = "Model files (*.pt *.pth *.bin *.ckpt *.safetensors *.torchscript *.ptl);;All files (*)"
WEIGHTS_FILTER = "Weights (*.pt *.pth *.bin *.ckpt *.safetensors);;All files (*)"
PAGES = ("bundled", "torchvision", "file")


def _hint(text: str) -> QLabel:
    label = QLabel(text)
    label.setWordWrap(True)
    label.setObjectName("hint")
    return label


class OpenModelDialog(QDialog):
    """Choose what to load. :meth:`request` gives the keyword arguments for ``engine.network.loading.load_network``.

    Pages: bundled EfficientNet-Lite 0/1/2 (pretrained, ships with Graft); a torchvision architecture, or a
    timm one as ``timm:NAME`` (a short list of popular ones, any other typed in), with a weights file, the
    torch hub / Hugging Face cache, or — only when ticked, and said plainly — random weights; a model
    file (TorchScript, state dict, safetensors, or a pickle when "I trust this file" is ticked).
    """

    def __init__(self, parent: QWidget | None = None, page: str = "bundled",
                 torchvision_names: list[str] | None = None, start_dir: str = "",
                 timm_names: list[str] | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Open model")
        self.setMinimumWidth(560)
        self._start_dir = start_dir
        self._tv_names = torchvision_names
        self._timm_names = timm_names
        self.tabs = QTabWidget()
        self.tabs.addTab(self._bundled_page(), "Bundled")
        self.tabs.addTab(self._torchvision_page(), "torchvision / timm")
        self.tabs.addTab(self._file_page(), "Model file")
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Open
                                        | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.tabs)
        layout.addWidget(self.buttons)
        self.tabs.currentChanged.connect(lambda _: self._validate())
        self.set_page(page)

    # -- pages ----------------------------------------------------------------------------------
    def _bundled_page(self) -> QWidget:
        page = QWidget()
        layout = QVBoxLayout(page)
        layout.addWidget(_hint("EfficientNet-Lite networks pretrained on ImageNet ship with Graft: "
                               "no download, no file to find."))
        self.bundled_group = QButtonGroup(self)
        self.bundled_buttons: dict[str, QRadioButton] = {}
        for i, (name, title, info) in enumerate(BUNDLED):
            button = QRadioButton(f"{title}   —   {info}")
            button.setObjectName(name)
            self.bundled_group.addButton(button, i)
            self.bundled_buttons[name] = button
            layout.addWidget(button)
        self.bundled_buttons[BUNDLED[0][0]].setChecked(True)
        self.bundled_random = QCheckBox("Random weights: start untrained (the network has learned nothing)")
        layout.addWidget(self.bundled_random)
        layout.addStretch(1)
        return page

    def _torchvision_page(self) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.tv_arch = QComboBox()
        self.tv_arch.setEditable(True)
        self.tv_arch.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.tv_arch.setMaxVisibleItems(20)
        names = self._tv_names
        if names is None:
            try:
                from engine.network.loading import torchvision_names

                names = torchvision_names()
            except Exception:  # noqa: BLE001 - torchvision missing: the page still lets a name be typed
                names = []
        timm_names = self._timm_names
        if timm_names is None:
            from engine.network.timm_models import popular_names  # a fixed list: timm itself is not imported

            timm_names = popular_names()
        names = list(names) + list(timm_names)
        self.tv_arch.addItems(names)
        completer = QCompleter(names, self.tv_arch)
        completer.setCaseSensitivity(Qt.CaseSensitivity.CaseInsensitive)
        completer.setFilterMode(Qt.MatchFlag.MatchContains)
        self.tv_arch.setCompleter(completer)
        if "resnet18" in names:
            self.tv_arch.setCurrentText("resnet18")
        self.tv_arch.currentTextChanged.connect(lambda _: self._validate())
        form.addRow("Architecture:", self.tv_arch)

        self.tv_weights = QLineEdit()
        self.tv_weights.setPlaceholderText("torch hub cache (if the weights are there)")
        self.tv_weights.setClearButtonEnabled(True)
        self.tv_weights_button = QPushButton("Weights file…")
        self.tv_weights_button.clicked.connect(self._choose_weights)
        row = QHBoxLayout()
        row.addWidget(self.tv_weights, 1)
        row.addWidget(self.tv_weights_button)
        form.addRow("Weights:", row)
        self.tv_random = QCheckBox("Random weights — no pretrained weights: the network starts knowing nothing")
        self.tv_random.setObjectName("randomWeights")
        self.tv_random.toggled.connect(self._random_toggled)
        form.addRow("", self.tv_random)
        self.tv_note = _hint("Graft never downloads. Without a weights file it uses the torch hub cache (timm: "
                             "the Hugging Face hub cache); if the weights are not there, loading fails unless you "
                             "ask for random weights. Any timm network can be typed in as timm:NAME.")
        form.addRow("", self.tv_note)
        return page

    def _file_page(self) -> QWidget:
        page = QWidget()
        form = QFormLayout(page)
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.file_path = QLineEdit()
        self.file_path.setPlaceholderText("TorchScript, state dict (.pt/.pth) or .safetensors")
        self.file_path.textChanged.connect(lambda _: self._validate())
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._choose_file)
        row = QHBoxLayout()
        row.addWidget(self.file_path, 1)
        row.addWidget(browse)
        form.addRow("File:", row)
        self.file_arch = QComboBox()
        self.file_arch.addItem("Recognise automatically", None)
        for name, title, _ in BUNDLED:
            self.file_arch.addItem(name, name)
        for name in ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "mobilenet_v3_small",
                     "mobilenet_v3_large", "efficientnet_b0", "convnext_tiny", "vit_b_16"):
            self.file_arch.addItem(name, name)
        form.addRow("Architecture:", self.file_arch)
        self.file_trust = QCheckBox("I trust this file (a pickled model can run code when it is loaded)")
        self.file_trust.setObjectName("trust")
        form.addRow("", self.file_trust)
        form.addRow("", _hint("Pickled files are refused unless you tick the box above: loading one can run "
                              "any code its author put in it."))
        return page

    # -- behaviour ------------------------------------------------------------------------------
    def set_page(self, page: str) -> None:
        self.tabs.setCurrentIndex(PAGES.index(page) if page in PAGES else 0)
        self._validate()

    def page(self) -> str:
        return PAGES[self.tabs.currentIndex()]

    def _random_toggled(self, on: bool) -> None:
        self.tv_weights.setEnabled(not on)
        self.tv_weights_button.setEnabled(not on)
        self._validate()

    def _choose_weights(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Weights file", self._start_dir, WEIGHTS_FILTER)
        if path:
            self.tv_weights.setText(path)
            self.tv_random.setChecked(False)

    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Model file", self._start_dir, MODEL_FILTER)
        if path:
            self.file_path.setText(path)

    def _validate(self) -> None:
        page = self.page()
        ok = True
        if page == "torchvision":
            ok = bool(self.tv_arch.currentText().strip())
        elif page == "file":
            ok = bool(self.file_path.text().strip())
        button = self.buttons.button(QDialogButtonBox.StandardButton.Open)
        if button is not None:
            button.setEnabled(ok)

    def request(self) -> dict[str, Any]:
        """``{"spec", "weights", "arch", "random_init", "trust"}`` for load_network."""
        page = self.page()
        if page == "bundled":
            button = self.bundled_group.checkedButton()
            name = button.objectName() if button else BUNDLED[0][0]
            return {"spec": name, "weights": None, "arch": None, "random_init": self.bundled_random.isChecked(),
                    "trust": False}
        if page == "torchvision":
            random_init = self.tv_random.isChecked()
            weights = self.tv_weights.text().strip() or None
            return {"spec": self.tv_arch.currentText().strip(), "weights": None if random_init else weights,
                    "arch": None, "random_init": random_init, "trust": False}
        return {"spec": self.file_path.text().strip(), "weights": None, "arch": self.file_arch.currentData(),
                "random_init": False, "trust": self.file_trust.isChecked()}


def describe_request(request: dict[str, Any]) -> str:
    """A short line for the busy indicator: "Loading resnet18 (random weights)…"."""
    spec = str(request.get("spec") or "default")
    name = Path(spec).name if ("/" in spec or "\\" in spec) else spec
    extra = " (random weights)" if request.get("random_init") else ""
    return f"Loading {name}{extra}…"


def about_box(parent: QWidget | None) -> None:
    import html

    from engine import __version__
    from engine.runtime.environment import describe_environment

    environment = html.escape(describe_environment())

    QMessageBox.about(
        parent, "About Graft",
        f"<h3>Graft {__version__}</h3>"
        "<p>Transfer learning with the mouse: load a pretrained network, delete its output layer or cut it, "
        "graft new heads, choose what trains, train with live curves, evaluate and export to ONNX.</p>"
        "<p>Every surgery can be undone. Projects (<code>.graft</code>) hold no pickles, so opening one "
        "never runs code.</p>"
        f"<pre style='font-size: small'>{environment}</pre>")
