"""The message after an export states each head's difference and judges it as the verification did."""
from __future__ import annotations

from types import SimpleNamespace

from app.export import export_summary


def report(diff: float, scale: float) -> SimpleNamespace:
    return SimpleNamespace(size_bytes=2_000_000, random_diff={"species": 3e-6, "price": diff}, image_diff={},
                           output_scale={"species": 0.9, "price": scale}, tolerance=1e-4, images=0, notes=[])


def test_a_regression_head_in_the_thousands_is_judged_relative_to_its_outputs():
    text = export_summary(report(2e-3, 4000.0), "/tmp/m.onnx")
    assert "price: 2.0e-03  (outputs up to 4e+03: 4.0e-01 allowed)" in text
    assert "species: 3.0e-06\n" in text  # small outputs: plain absolute rule, no remark
    assert "Within the tolerance of 1e-04." in text


def test_a_difference_beyond_the_allowed_one_is_called_out():
    assert "Larger than the tolerance of 1e-04!" in export_summary(report(2e-3, 0.5), "/tmp/m.onnx")
