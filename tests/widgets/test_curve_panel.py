"""CurvePanel: one PlotDataItem per curve, redraws coalesced to one per REDRAW_MS, cheap pens for long curves,
bounded memory."""
from __future__ import annotations

import math
import time

import numpy as np
import pytest

from widgets.curve_panel import CurvePanel

HEADS = [("shape", "single"), ("tags", "multi"), ("size", "regression")]


@pytest.fixture
def panel(qtbot) -> CurvePanel:
    panel = CurvePanel()
    qtbot.addWidget(panel)
    panel.resize(900, 360)
    panel.show()
    panel.reset(HEADS)
    return panel


def steps(start: int, count: int) -> list[tuple[int, float, dict[str, float]]]:
    return [(s, 1.0 / s, {"shape": 0.5 / s, "tags": 0.3 / s, "size": 0.2 / s}) for s in range(start, start + count)]


def test_curves_are_made_once_in_reset(panel):
    names = set(panel.curve_names())
    assert {"train:total", "val:total", "metric:shape", "metric:tags", "metric:size"} <= names
    assert {f"{split}:{h}" for split in ("train", "val") for h, _ in HEADS} <= names
    items = {name: panel.curve(name) for name in names}
    panel.add_steps(steps(1, 10))
    panel.flush()
    assert all(panel.curve(name) is item for name, item in items.items())  # updated with setData, not remade
    assert panel.curve("nope") is None


def test_a_burst_of_batches_is_drawn_once(qtbot, panel):
    for i in range(200):  # far more calls than could be drawn in one redraw interval
        panel.add_steps(steps(1 + 5 * i, 5))
    assert panel.redraw_count == 0  # nothing is drawn synchronously
    qtbot.waitUntil(lambda: panel.redraw_count >= 1, timeout=2000)
    qtbot.wait(CurvePanel.REDRAW_MS + 100)  # let any further timer fire: there is nothing left to draw
    assert panel.redraw_count <= 2
    x, y = panel.curve("train:total").getData()
    assert len(x) == 1000 and x[0] == 1 and x[-1] == 1000
    assert y[-1] == pytest.approx(1 / 1000)
    assert len(panel.curve("train:tags").getData()[0]) == 1000


def test_a_steady_stream_is_drawn_a_few_times_a_second(qtbot, panel, monkeypatch):
    """Batches every 10 ms (a fast run's progress) for about a second: the curves' setData runs once per
    redraw interval at most, not once per batch."""
    assert CurvePanel.REDRAW_MS >= 100  # at most 10 redraws a second: each costs a repaint of both plots
    calls: list[str] = []
    for name in panel.curve_names():
        item = panel.curve(name)
        monkeypatch.setattr(item, "setData", lambda *a, _n=name, _f=item.setData, **k: (calls.append(_n), _f(*a, **k)))
    start, batches = time.monotonic(), 0
    while time.monotonic() - start < 1.0:
        panel.add_steps(steps(1 + 5 * batches, 5))
        batches += 1
        qtbot.wait(10)
    elapsed_ms = (time.monotonic() - start) * 1000
    panel.flush()
    most = int(elapsed_ms / CurvePanel.REDRAW_MS) + 2  # the intervals begun, and the final flush
    assert batches >= 20 and 1 <= panel.redraw_count <= most
    assert calls.count("train:total") == panel.redraw_count <= most
    assert len(calls) <= most * len(HEADS + [("total", "")])  # only the step curves changed: train:*
    assert len(panel.curve("train:total").getData()[0]) == 5 * batches  # every point is there


def test_long_curves_are_drawn_with_one_pixel_aliased_pens(panel):
    """Qt strokes wide or antialiased pens as filled outlines: for a noisy curve of thousands of steps that
    took 0.4-1.7 s a repaint on the GUI thread. Step curves are thin and aliased from the start; an
    epoch curve becomes so once it outgrows SMOOTH_POINTS."""
    for name in ("train:total", "train:shape"):
        item = panel.curve(name)
        assert not item.opts["antialias"] and item.opts["pen"].isCosmetic() and item.opts["pen"].widthF() <= 1
    val = panel.curve("val:total")
    assert val.opts["antialias"] and val.opts["pen"].widthF() == 2
    for epoch in range(1, CurvePanel.SMOOTH_POINTS + 1):
        panel.add_epoch(epoch, 10 * epoch, 1.0 / epoch, {}, {})
    panel.flush()
    assert val.opts["antialias"]  # short: smooth
    panel.add_epoch(CurvePanel.SMOOTH_POINTS + 1, 10_000, 0.01, {}, {})
    panel.flush()
    assert not val.opts["antialias"] and not val.curve.opts["antialias"] and val.opts["pen"].widthF() == 1
    assert val.opts["pen"].style() == panel._dashed(val.opts["pen"].color()).style()  # still dashed
    assert len(val.getData()[0]) == CurvePanel.SMOOTH_POINTS + 1


def test_epochs_fill_validation_and_metric_curves(qtbot, panel):
    panel.add_steps(steps(1, 40))
    panel.add_epoch(1, 40, 0.9, {"shape": 0.5, "tags": 0.3, "size": 0.1},
                    {"shape": {"accuracy": 0.6}, "tags": {"macro_f1": 0.5, "f1/red": 0.7}, "size": {"mae": 0.2}})
    # the worker's plain dicts are accepted too; the step defaults to the last training step
    panel.add_steps([{"step": s, "epoch": 2, "loss": 0.5, "head_losses": {"shape": 0.2}, "lr": 1e-3}
                     for s in range(41, 81)])
    panel.add_epoch({"epoch": 2, "train_loss": 0.5, "val_loss": 0.7, "val_head_losses": {"shape": 0.4},
                     "metrics": {"shape": {"accuracy": 0.75}, "size": {"mae": math.nan}}, "best": True})
    qtbot.waitUntil(lambda: panel.redraw_count >= 1, timeout=2000)
    x, y = panel.curve("val:total").getData()
    assert list(x) == [40, 80] and list(y) == pytest.approx([0.9, 0.7])
    assert list(panel.curve("metric:shape").getData()[1]) == pytest.approx([0.6, 0.75])
    assert list(panel.curve("metric:tags").getData()[1]) == pytest.approx([0.5])  # macro F1, not f1/red
    assert list(panel.curve("metric:size").getData()[0]) == [1]  # NaN skipped
    assert list(panel.curve("val:shape").getData()[0]) == [40, 80]


def test_mae_gets_its_own_axis_next_to_classification(panel):
    assert panel.curve("metric:size") in panel._mae_box.addedItems
    assert panel.curve("metric:shape") not in panel._mae_box.addedItems
    assert any("right axis" in label for label in panel.metric_legend.labels())
    panel.reset([("size", "regression")])
    assert panel.curve("metric:size") in panel.metric_plot.getPlotItem().items


def test_one_head_shows_only_the_totals(panel):
    panel.reset([("class", "single")])
    plotted = panel.loss_plot.getPlotItem().items
    assert panel.curve("train:total") in plotted and panel.curve("val:total") in plotted
    assert panel.curve("train:class") not in plotted  # identical to the total: not drawn twice
    assert panel.loss_legend.labels() == ["training loss (per step)", "validation loss (per epoch)"]


def test_bare_head_names_are_accepted(qtbot, panel):
    panel.reset(["shape", "size"])
    panel.add_epoch(1, 10, 0.5, {}, {"shape": {"accuracy": 0.8}, "size": {"mae": 0.3, "mae/a": 0.2}})
    panel.flush()
    assert list(panel.curve("metric:size").getData()[1]) == pytest.approx([0.3])


def test_memory_stays_bounded(panel, monkeypatch):
    monkeypatch.setattr(CurvePanel, "MAX_POINTS", 1000)
    panel.reset(HEADS)
    for i in range(50):
        panel.add_steps(steps(1 + 100 * i, 100))
    panel.flush()
    x, y = panel.curve("train:total").getData()
    assert len(x) <= 1000
    assert x[0] == 1 and x[-1] == 5000  # the whole run is still covered
    assert np.all(np.diff(x) > 0)


def test_dense_heads_plot_miou_and_map_per_epoch(qtbot, panel):
    """The demo task: the segment head's mIoU and the detect head's mAP@0.5 are drawn beside the accuracy
    (their legend entries had no curve: the metric was not recognised)."""
    panel.reset([("shape", "single"), ("mask", "segment"), ("boxes", "detect")])
    for epoch, (acc, miou, map50) in enumerate([(0.67, 0.31, 0.20), (0.92, 0.52, 0.55)], start=1):
        panel.add_epoch({"epoch": epoch, "val_loss": 3.0 - epoch, "metrics": {
            "shape": {"accuracy": acc}, "mask": {"miou": miou, "iou/circle": 0.9},
            "boxes": {"map_50": map50, "map": map50 / 2}}})
    panel.flush()
    assert list(panel.curve("metric:mask").getData()[1]) == pytest.approx([0.31, 0.52])
    assert list(panel.curve("metric:boxes").getData()[1]) == pytest.approx([0.20, 0.55])
    assert panel.metric_legend.labels() == ["shape · accuracy", "mask · mIoU", "boxes · mAP@0.5"]
    assert panel.metric_plot.getPlotItem().getAxis("left").labelText == "accuracy / F1 / mAP@0.5 / mIoU"
