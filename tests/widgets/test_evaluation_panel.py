"""EvaluationPanel: per head a confusion matrix, F1 bars or MAE, with a head selector."""
from __future__ import annotations

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QTableWidget

from engine.training.evaluation import EvalReport, HeadReport
from widgets.evaluation_panel import EvaluationPanel, headline

CLASSES = ["circle", "square", "star", "triangle"]
CONFUSION = [[14, 0, 0, 0], [1, 11, 1, 0], [0, 0, 10, 2], [0, 1, 0, 11]]


@pytest.fixture
def report() -> EvalReport:
    heads = {
        "shape": HeadReport("shape", "single", 0.31, 51, {"accuracy": 46 / 51},
                            {"kind": "single", "n": 51, "accuracy": 46 / 51, "confusion": CONFUSION,
                             "classes": CLASSES}),
        "tags": HeadReport("tags", "multi", 0.40, 70, {"macro_f1": 0.85},
                           {"kind": "multi", "labels": ["red", "striped", "outlined"], "f1": [0.92, 0.78, None],
                            "macro_f1": 0.85, "n": [50, 49, 51], "support": [20, 18, 0]}),
        "size": HeadReport("size", "regression", 0.003, 48, {"mae": 0.0421},
                           {"kind": "regression", "labels": ["size"], "mae_per_output": [0.0421], "mae": 0.0421,
                            "n": [48]}),
    }
    return EvalReport(heads, 72, 0.71, 2.3, "cpu")


@pytest.fixture
def panel(qtbot) -> EvaluationPanel:
    panel = EvaluationPanel()
    qtbot.addWidget(panel)
    panel.resize(640, 480)
    panel.show()
    return panel


def test_empty_until_a_report(panel):
    assert panel.empty_label.isVisible() and not panel.pages.isVisible() and not panel.head_combo.isEnabled()


def test_confusion_matrix_for_a_single_label_head(panel, report):
    panel.set_report(report)
    assert [panel.head_combo.itemData(i) for i in range(panel.head_combo.count())] == ["shape", "tags", "size"]
    assert panel.current_head() == "shape"
    assert "accuracy 90.2%" in panel.headline_label.text() and "51 labelled" in panel.headline_label.text()
    assert "72 images" in panel.info_label.text()
    table = panel.current_page().findChild(QTableWidget, "confusionMatrix")
    assert [table.horizontalHeaderItem(i).text() for i in range(4)] == CLASSES
    assert [table.verticalHeaderItem(i).text() for i in range(4)] == CLASSES
    assert [[table.item(r, c).text() for c in range(4)] for r in range(4)] == [[str(v) for v in row]
                                                                               for row in CONFUSION]
    right, wrong, none = (table.item(2, 2).background().color(), table.item(2, 3).background().color(),
                          table.item(2, 0).background().color())
    assert right.blue() > right.red() and wrong.red() > wrong.blue() and none.name() == "#ffffff"
    assert "true star → predicted triangle: 2" in table.item(2, 3).toolTip()


def test_f1_bars_for_a_multi_label_head_and_mae_for_regression(panel, report):
    panel.set_report(report)
    panel.select_head("tags")
    assert "macro F1 0.850" in panel.headline_label.text()
    table = panel.current_page().findChild(QTableWidget, "f1Table")
    assert [table.item(r, 0).text() for r in range(3)] == ["red", "striped", "outlined"]
    assert [table.item(r, 1).text() for r in range(3)] == ["0.920", "0.780", "–"]
    panel.select_head("size")
    assert "MAE 0.0421" in panel.headline_label.text()
    table = panel.current_page().findChild(QTableWidget, "maeTable")
    assert table.item(0, 0).text() == "size" and table.item(0, 1).text() == "0.0421"
    # a new report keeps the chosen head
    panel.set_report(report)
    assert panel.current_head() == "size"


def test_plain_dict_reports_and_clear(panel, report):
    panel.set_report(report.to_dict())
    assert panel.head_combo.count() == 3 and "accuracy 90.2%" in panel.headline_label.text()
    panel.clear()
    assert panel.head_combo.count() == 0 and panel.pages.count() == 0 and panel.empty_label.isVisible()
    assert panel.report() is None


def test_clear_after_a_report_without_heads_says_there_is_none_yet(panel, report):
    empty = panel.empty_label.text()
    assert empty.startswith("No evaluation yet")
    panel.set_report({"heads": {}, "n_images": 3})
    assert panel.empty_label.text() == "The evaluation has no heads to show."
    panel.clear()
    assert panel.empty_label.text() == empty and panel.empty_label.isVisible() and panel.report() is None


def test_headline():
    assert headline("single", {"accuracy": None}, {}) == "accuracy –"
    assert headline("multi", {}, {"macro_f1": 0.5}) == "macro F1 0.500"


def test_a_click_on_a_confusion_cell_names_the_head_and_the_cell(qtbot, panel, report):
    panel.set_report(report)
    table = panel.current_page().findChild(QTableWidget, "confusionMatrix")
    for row, column in ((2, 3), (0, 0)):
        with qtbot.waitSignal(panel.cellClicked, timeout=1000) as clicked:
            qtbot.mouseClick(table.viewport(), Qt.MouseButton.LeftButton,
                             pos=table.visualItemRect(table.item(row, column)).center())
        assert clicked.args == ["shape", row, column]
    assert "click to see them" in table.item(2, 3).toolTip()


def test_test_time_augmentation_choice_and_a_report_made_with_it(panel, report):
    assert panel.tta_combo.isVisible() and panel.tta() is None  # off until chosen, even before a report
    panel.tta_combo.setCurrentIndex(panel.tta_combo.findData("flip+crops"))
    assert panel.tta() == "flip+crops"
    report.tta = "flip"
    panel.set_report(report)
    assert "TTA flip" in panel.info_label.text()
    assert panel.tta() == "flip+crops"  # a report does not change the choice for the next evaluation


def test_dense_heads_show_iou_or_ap_per_class_and_their_examples(panel, tmp_path):
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image

    from widgets.dense_examples import DenseExamplesView

    report = {"n_images": 20, "heads": {
        "seg": {"kind": "segment", "loss": 0.2, "n": 20, "metrics": {"miou": 0.734},
                "details": {"classes": ["background", "circle", "square"], "iou": [0.95, 0.71, float("nan")]}},
        "boxes": {"kind": "detect", "loss": 0.9, "n": 18, "metrics": {"map50": 0.812, "map": 0.455},
                  "details": {"classes": ["circle", "square"], "ap50": [0.9, 0.72]}},
    }}
    panel.set_report(report)
    assert "mIoU 0.734" in panel.headline_label.text()
    table = panel.current_page().findChild(QTableWidget, "denseTable")
    assert [table.item(r, 1).text() for r in range(3)] == ["0.950", "0.710", "–"]  # square never seen: no IoU
    assert headline("detect", {}, {"map50": 0.812, "map": 0.455}) == "mAP@0.5 0.812 · mAP@0.5:0.95 0.455"
    panel.select_head("boxes")
    assert "mAP@0.5 0.812" in panel.headline_label.text() and "mAP@0.5:0.95 0.455" in panel.headline_label.text()
    table = panel.current_page().findChild(QTableWidget, "denseTable")
    assert table.horizontalHeaderItem(1).text() == "AP@0.5" and table.item(1, 1).text() == "0.720"
    assert panel.examples_view("shape") is None
    view = panel.examples_view("boxes")
    assert isinstance(view, DenseExamplesView) and panel.current_page().isAncestorOf(view)
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    panel.set_examples("boxes", [SimpleNamespace(image=str(path), head="boxes", caption="2 true boxes", prediction={
        "kind": "detect", "boxes": [[1, 1, 20, 20]], "scores": [0.8], "labels": [1], "names": ["circle", "square"],
        "truth_boxes": [[2, 2, 21, 21]], "truth_labels": [1]})])
    assert view.canvas.captions() == ["square 0.80"] and len(view.canvas.box_layers()) == 2
    assert view.controls.threshold_slider.isVisibleTo(panel)
    panel.set_examples("shape", [])  # not a dense head: nothing to show, no error
    # Without per-class AP (the engine's summary only), the table lists mAP at COCO's IoU thresholds.
    report["heads"]["boxes"]["details"] = {"classes": ["circle"], "map_50": 0.8, "map_75": 0.5, "map": 0.45}
    panel.set_report(report)
    panel.select_head("boxes")
    table = panel.current_page().findChild(QTableWidget, "denseTable")
    assert [(table.item(r, 0).text(), table.item(r, 1).text()) for r in range(3)] == [
        ("mAP@0.5", "0.800"), ("mAP@0.75", "0.500"), ("mAP@0.5:0.95", "0.450")]


def test_a_dense_report_fits_half_of_a_1600_px_window(panel):
    """The headline (mAP@0.5 · mAP@0.5:0.95 in 16 pt) and the evaluation's summary wrap instead of holding
    the panel at 760 px (the Try-an-image column beside it was then clipped), and the head selector shows
    each head's name and kind in full."""
    report = {"n_images": 72, "loss": 2.8411, "seconds": 9.0, "device": "cpu", "heads": {
        "shape": {"kind": "single", "loss": 0.5, "n": 51, "metrics": {"accuracy": 0.902},
                  "details": {"classes": CLASSES, "confusion": CONFUSION, "accuracy": 0.902}},
        "mask": {"kind": "segment", "loss": 0.8, "n": 51, "metrics": {"miou": 0.507},
                 "details": {"classes": ["background", *CLASSES], "iou": [0.91, 0.71, 0.45, 0.25, 0.22]}},
        "boxes": {"kind": "detect", "loss": 1.24, "n": 49, "metrics": {"map_50": 0.606, "map": 0.243},
                  "details": {"classes": CLASSES, "map_50": 0.606, "map_75": 0.118, "map": 0.243}},
    }}
    panel.set_report(report)
    for head in ("shape", "mask", "boxes"):
        panel.select_head(head)
        assert panel.minimumSizeHint().width() <= 400, head
    panel.resize(470, 480)
    panel.select_head("boxes")
    assert "mAP@0.5:0.95 0.243" in panel.headline_label.text() and panel.headline_label.width() <= 470
    metrics = panel.head_combo.fontMetrics()
    longest = max(metrics.horizontalAdvance(panel.head_combo.itemText(i)) for i in range(panel.head_combo.count()))
    assert panel.head_combo.width() > longest + 20  # the text and the arrow


def test_every_dense_page_gets_its_example_image(qtbot, panel, tmp_path):
    """The window fills the mask page and then the boxes page: both images are decoded (one shared loader
    cancelled the first when the second asked, and the mask page stayed 'Loading…')."""
    from types import SimpleNamespace

    import numpy as np
    from PIL import Image

    report = {"n_images": 2, "heads": {
        "mask": {"kind": "segment", "loss": 0.2, "n": 2, "metrics": {"miou": 0.5},
                 "details": {"classes": ["background", "circle"], "iou": [0.9, 0.1]}},
        "boxes": {"kind": "detect", "loss": 0.9, "n": 2, "metrics": {"map_50": 0.6, "map": 0.2},
                  "details": {"classes": ["circle"], "map_50": 0.6, "map_75": 0.1, "map": 0.2}}}}
    panel.set_report(report)
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(path)
    panel.set_examples("mask", [SimpleNamespace(image=str(path), head="mask", caption="IoU 0.10", prediction={
        "kind": "segment", "mask": np.zeros((32, 32), np.int64), "names": ["background", "circle"]})])
    panel.set_examples("boxes", [SimpleNamespace(image=str(path), head="boxes", caption="IoU 0.20", prediction={
        "kind": "detect", "boxes": [[1, 1, 20, 20]], "scores": [0.8], "labels": [0], "names": ["circle"]})])
    for head in ("mask", "boxes"):
        view = panel.examples_view(head)
        qtbot.waitUntil(lambda view=view: not view.canvas.pixmap().isNull(), timeout=5000)
