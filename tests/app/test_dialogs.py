"""The open-model dialog turns its pages into load_network's arguments; random weights and trust are
explicit choices."""
from __future__ import annotations

from PySide6.QtWidgets import QDialogButtonBox, QFileDialog

from app.dialogs import OpenModelDialog, describe_request


def test_bundled_page_is_the_default(qtbot):
    d = OpenModelDialog(torchvision_names=["resnet18", "vit_b_16"])
    qtbot.addWidget(d)
    assert d.request() == {"spec": "efficientnet_lite0", "weights": None, "arch": None, "random_init": False,
                           "trust": False}
    d.bundled_buttons["efficientnet_lite2"].setChecked(True)
    assert d.request()["spec"] == "efficientnet_lite2"


def test_torchvision_page_with_a_weights_file_or_random_weights(qtbot, monkeypatch, tmp_path):
    d = OpenModelDialog(page="torchvision", torchvision_names=["mobilenet_v3_small", "resnet18"])
    qtbot.addWidget(d)
    assert d.page() == "torchvision" and d.request()["spec"] == "resnet18"
    weights = tmp_path / "r18.pth"
    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (str(weights), "")))
    d.tv_weights_button.click()
    assert d.request() == {"spec": "resnet18", "weights": str(weights), "arch": None, "random_init": False,
                           "trust": False}
    d.tv_random.setChecked(True)
    assert "random" in d.tv_random.text().lower() and "knowing nothing" in d.tv_random.text()
    assert not d.tv_weights.isEnabled()
    assert d.request()["random_init"] is True and d.request()["weights"] is None
    assert describe_request(d.request()) == "Loading resnet18 (random weights)…"


def test_file_page_needs_a_path_and_trust_is_explicit(qtbot):
    d = OpenModelDialog(page="file", torchvision_names=[])
    qtbot.addWidget(d)
    open_button = d.buttons.button(QDialogButtonBox.StandardButton.Open)
    assert not open_button.isEnabled()
    d.file_path.setText("/models/net.pt")
    assert open_button.isEnabled()
    assert d.request()["trust"] is False
    d.file_trust.setChecked(True)
    assert "trust" in d.file_trust.text() and "run code" in d.file_trust.text()
    assert d.request() == {"spec": "/models/net.pt", "weights": None, "arch": None, "random_init": False,
                           "trust": True}
