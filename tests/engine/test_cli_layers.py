"""``main.py layers`` prints the tree; bad input ends with one line and a non-zero exit."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def graft(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def test_layers_prints_the_tree_with_the_output_layer_marked():
    result = graft("layers", "--model", "resnet18", "--random-weights")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "random weights" in lines[0]
    fc = next(l for l in lines if l.startswith("fc "))
    assert "Linear" in fc and "513K" in fc and "output layer" in fc
    assert any(l.strip().startswith("conv1") and "64x112x112" in l for l in lines)
    assert "11.7M parameters" in lines[-1]


def test_layers_defaults_to_the_bundled_network():
    result = graft("layers", "--depth", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("efficientnet_lite0 (ImageNet pretrained)")
    assert "output layer" in result.stdout


def test_a_file_that_is_not_a_model_exits_with_one_line(tmp_path):
    bad = tmp_path / "cat.jpg.pt"
    bad.write_text("meow")
    result = graft("layers", "--model", str(bad))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "not a model file" in result.stderr
    assert "Traceback" not in result.stderr
