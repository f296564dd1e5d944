"""widgets.rate_finder_view: the finder's curve on a log axis, the suggestion marked, Apply emits it."""
from __future__ import annotations

import math

import numpy as np
import pytest

from engine.training.rate_finder import RateFinderResult, smooth
from widgets.rate_finder_view import RateFinderView


def _result() -> RateFinderResult:
    lrs = list(np.logspace(-6, 0, 40))
    losses = [2.0 - math.tanh(2 * (math.log10(lr) + 3)) for lr in lrs]
    return RateFinderResult(lrs, losses, smooth(losses), suggestion=lrs[20], suggestion_index=20,
                            reason="completed")


def test_result_is_drawn_and_applied(qtbot):
    view = RateFinderView()
    qtbot.addWidget(view)
    assert not view.apply_button.isEnabled()
    result = _result()
    view.set_result(result)
    assert view.plot.getPlotItem().ctrl.logXCheck.isChecked()  # a log-rate axis
    xs, ys = view.curve_data()
    assert len(xs) == 40 and np.allclose(ys, result.smoothed)
    assert np.allclose(xs, np.log10(result.lrs)) or np.allclose(xs, result.lrs)
    assert view.marker.isVisible() and view.marker.value() == pytest.approx(math.log10(result.suggestion))
    assert view.apply_button.isEnabled() and f"{result.suggestion:.2g}" in view.apply_button.text()
    assert "Suggested" in view.label.text()
    with qtbot.waitSignal(view.applied) as applied:
        view.apply_button.click()
    assert applied.args == [pytest.approx(result.suggestion)]


def test_live_points_then_clear(qtbot):
    view = RateFinderView()
    qtbot.addWidget(view)
    view.clear()
    for lr, loss in ((1e-5, 2.0), (1e-4, 1.8), (1e-3, float("nan")), (1e-2, 1.2)):
        view.add_point(lr, loss)
    xs, ys = view.curve_data()
    assert len(xs) == 3 and ys[0] == pytest.approx(2.0) and not view.apply_button.isEnabled()
    view.clear()
    assert len(view.curve_data()[0]) == 0 and not view.marker.isVisible()
