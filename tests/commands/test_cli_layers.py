"""``main.py layers`` prints the tree; bad input ends with one line and a non-zero exit."""
from __future__ import annotations

import pytest

from cli_runner import run_child, run_cli


def graft(*args):
    """``main.py ARGS`` in this process (cli_runner: as a child gives it, without its 4 s of imports)."""
    return run_cli(*args, timeout=300)


def graft_child(*args):
    """``main.py ARGS`` in a real process."""
    return run_child(*args, timeout=300)


@pytest.mark.slow
def test_layers_prints_the_tree_with_the_output_layer_marked():
    result = graft("layers", "--model", "resnet18", "--random-weights")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "random weights" in lines[0]
    fc = next(l for l in lines if l.startswith("fc "))
    assert "Linear" in fc and "513K" in fc and "output layer" in fc
    assert any(l.strip().startswith("conv1") and "64x112x112" in l for l in lines)
    assert "11.7M parameters" in lines[-1]


@pytest.mark.slow
def test_layers_defaults_to_the_bundled_network():
    result = graft("layers", "--depth", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("efficientnet_lite0 (ImageNet pretrained)")
    assert "output layer" in result.stdout


@pytest.mark.slow
def test_a_file_that_is_not_a_model_exits_with_one_line(tmp_path):
    """In a real process: one line, with nothing of the interpreter's after it."""
    bad = tmp_path / "cat.jpg.pt"
    bad.write_text("meow")
    result = graft_child("layers", "--model", str(bad))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "not a model file" in result.stderr
    assert "Traceback" not in result.stderr


def one_line_error(result, *words):
    assert result.returncode == 1, result.stdout
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in result.stderr, result.stderr


@pytest.mark.slow
def test_a_fine_tuned_checkpoint_prints_its_own_head(tmp_path):
    import torch
    import torchvision

    state = torchvision.models.resnet18(num_classes=10).state_dict()
    torch.save(state, tmp_path / "ft10.pth")
    for extra in ([], ["--arch", "resnet18"]):
        result = graft("layers", "--model", str(tmp_path / "ft10.pth"), "--depth", "1", *extra)
        assert result.returncode == 0, result.stderr
        assert "10 classes" in result.stdout
        fc = next(l for l in result.stdout.splitlines() if l.startswith("fc "))
        assert "5.1K" in fc and "output layer" in fc  # 512 x 10 + 10
    state["conv1.weight"] = torch.zeros(64, 3, 3, 3)
    torch.save(state, tmp_path / "odd.pth")
    one_line_error(graft("layers", "--model", str(tmp_path / "odd.pth"), "--arch", "resnet18"),
                   "conv1.weight", "(64, 3, 3, 3)", "(64, 3, 7, 7)")


@pytest.mark.slow
def test_a_project_made_from_a_pickle_opens_only_with_trust(tmp_path):
    import torch
    import torchvision

    from engine.network.loading import load_network
    from engine.project.project_file import save_project
    from engine.surgery.session import Session

    model = torchvision.models.mobilenet_v3_small()
    model.features[0][0].stride = (1, 1)  # no longer exactly torchvision's: only the pickle rebuilds it
    torch.save(model, tmp_path / "custom.pt")
    project = save_project(Session(load_network(tmp_path / "custom.pt", trust=True)), tmp_path / "c.graft")
    one_line_error(graft("layers", "--model", str(project)), "trust")
    result = graft("layers", "--model", str(project), "--trust", "--depth", "1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("custom.pt (pickle)")


@pytest.mark.slow
def test_a_damaged_project_exits_with_one_line(tmp_path):
    import json
    import zipfile

    path = tmp_path / "bad.graft"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("recipe.json", json.dumps({"format": 1, "operations": [{"op": "cut"}]}))
        zf.writestr("weights.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    one_line_error(graft("layers", "--model", str(path)), "bad.graft is not a valid Graft project")


@pytest.mark.slow
def test_a_torchscript_model_says_its_input_was_assumed(tmp_path):
    import torch

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    torch.jit.script(net).save(str(tmp_path / "tiny.pt"))
    result = graft("layers", "--model", str(tmp_path / "tiny.pt"))
    assert result.returncode == 0, result.stderr
    assert any(l.startswith("note:") and "assumed" in l and "224x224" in l for l in result.stdout.splitlines())


def test_a_negative_depth_exits_with_one_line():
    result = graft_child("layers", "--depth", "-1")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "depth" in result.stderr, result.stderr


@pytest.mark.slow
def test_a_folder_as_the_model_is_named_a_folder(tmp_path):
    result = graft("layers", "--model", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr == f"graft: error: {tmp_path}: a folder, not a file.\n"
