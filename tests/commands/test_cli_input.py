"""``--channels`` and ``--input-size`` on ``main.py train`` and ``main.py layers``."""
from __future__ import annotations

import json
import zipfile

import pytest

import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def grey_folder(demo_subset):
    return demo_subset(6, mode="L")


def test_train_a_greyscale_model_at_another_size(grey_folder, tmp_path, capsys):
    out = tmp_path / "grey.graft"
    code = main.main(["train", "--data", str(grey_folder), "--model", "mobilenet_v3_small", "--random-weights",
                      "--channels", "1", "--input-size", "48", "--epochs", "1", "--batch-size", "6",
                      "--no-augment", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    with zipfile.ZipFile(out) as zf:
        recipe = json.loads(zf.read("recipe.json"))
    assert [o for o in recipe["operations"] if o["op"].startswith("input_")] == [
        {"op": "input_channels", "channels": 1}, {"op": "input_size", "size": 48, "resize": None}]
    assert recipe["input_spec"]["channels"] == 1 and recipe["input_spec"]["size"] == 48
    capsys.readouterr()
    assert main.main(["layers", "--model", str(out), "--depth", "2"]) == 0
    text = capsys.readouterr().out
    assert "input L 48x48" in text and "16x24x24" in text  # features.0: the stem halves 48


@pytest.mark.parametrize("args, message", [
    (["--channels", "0"], "input channels must be 1 (greyscale), 3 (RGB) or 4"),
    (["--input-size", "8"], "8×8 is too small for this network"),
])
def test_bad_input_options_end_in_one_line(args, message, capsys):
    assert main.main(["layers", "--model", "mobilenet_v3_small", "--random-weights", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
