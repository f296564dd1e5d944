"""``main.py evaluate --tta`` and ``main.py export --tta`` (in-process, main.main)."""
from __future__ import annotations

import numpy as np

import main
from engine.export.metadata import OnnxPredictor, read_metadata
from test_cli_explain import demo_csv, one_thread, project  # noqa: F401 (fixtures: the demo's three heads, 64 px)


def test_evaluate_with_flip_says_so(project, demo_csv, capsys):
    assert main.main(["evaluate", str(project), "--data", str(demo_csv), "--split", "val", "--workers", "0",
                      "--tta", "flip"]) == 0
    out = capsys.readouterr().out
    assert "test-time augmentation: the image and its mirror image, averaged (2 views per image)" in out


def test_export_with_tta_verifies_and_records_it(project, demo_csv, tmp_path, capsys):
    out_file = tmp_path / "tta.onnx"
    image = str(sorted((demo_csv.parent / "images").iterdir())[0])
    assert main.main(["export", str(project), "--onnx", str(out_file), "--tta", "flip+crops", "--image", image]) == 0
    out = capsys.readouterr().out
    assert "verified against PyTorch" in out and "6 views per image" in out
    meta = read_metadata(out_file)
    assert meta.data["tta"]["mode"] == "flip+crops" and meta.outputs == ["shape", "tags", "size"]
    plain_file = tmp_path / "plain.onnx"
    assert main.main(["export", str(project), "--onnx", str(plain_file), "--image", image]) == 0
    assert "tta" not in read_metadata(plain_file).data
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with_tta, plain = OnnxPredictor(out_file).predict_arrays(x), OnnxPredictor(plain_file).predict_arrays(x)
    assert np.abs(with_tta["shape"] - plain["shape"]).max() > 1e-6  # the views are inside the graph


def test_tta_with_a_reduced_precision_ends_with_one_line(project, tmp_path, capsys):
    assert main.main(["export", str(project), "--onnx", str(tmp_path / "x.onnx"), "--tta", "flip",
                      "--precision", "int8"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tta is for fp32 exports" in err[0]
    assert not (tmp_path / "x.onnx").exists()
