"""Before/after comparison: layers removed, added, reshaped, and how far trained weights moved."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchvision

import main
from engine.data.loading import load_data
from engine.network.loading import load_network
from engine.network.preprocess import InputSpec
from engine.project.diff import compare, compare_with_loaded, load_side, percent, side_of_session
from engine.project.project_file import save_project
from engine.surgery.operations import AddHead, DeleteOutputLayer, SetInputChannels, freeze_preset
from engine.surgery.session import Session
from engine.training.config import TrainConfig
from engine.training.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
    """resnet18 weights in a file: a source whose weights can be rebuilt exactly."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


@pytest.fixture(scope="module")
def data(demo_subset):
    return load_data(demo_subset(6))


def trained(weights_file: Path, data, freeze: str) -> Session:
    torch.manual_seed(0)
    s = Session(load_network(weights_file))
    s.model.input_spec = InputSpec(size=32, resize=32)
    s.do(DeleteOutputLayer())
    for spec in data.heads:
        s.do(AddHead(spec, seed=0))
    s.do(freeze_preset(freeze))
    Trainer(s, data, TrainConfig(epochs=1, batch_size=4, augment=False, device="cpu", num_workers=0)).run()
    return s


def own_layers(diff, prefix: str = "") -> dict[str, object]:
    return {r.path: r for r in diff.rows if r.own and r.path.startswith(prefix)}


def test_heads_only_training_changes_only_the_heads(weights_file, data, tmp_path):
    s = trained(weights_file, data, "heads-only")
    diff = compare_with_loaded(s)
    assert diff.weights_compared and not diff.notes
    changed = {r.path: r.status for r in diff.changed()}
    assert changed == {"fc": "removed", "@heads.class": "added"}
    trunk = [r for r in diff.rows if r.own and not r.path.startswith("@heads") and r.path != "fc"]
    assert trunk and all(r.status == "same" and r.relative == 0.0 for r in trunk)
    assert diff.changes()["@heads.class.0"].status == "added"
    # the same comparison from the files: the project against its source weights
    project = save_project(s, tmp_path / "heads.graft")
    again = compare(load_side(weights_file), load_side(project))
    assert {r.path: r.status for r in again.changed()} == changed
    assert "1 removed, 1 added" in again.summary()


def test_fine_tuning_one_block_moves_only_that_block(weights_file, data):
    s = trained(weights_file, data, "up-to:layer3")
    diff = compare_with_loaded(s)
    moved = {p for p, r in own_layers(diff).items() if r.status == "moved"}
    in_layer4 = set(own_layers(diff, "layer4."))
    assert in_layer4 and moved == in_layer4
    assert all(0 < own_layers(diff)[p].relative < 1 for p in in_layer4)
    others = [r for p, r in own_layers(diff).items()
              if not p.startswith(("layer4.", "@heads", "fc"))]
    assert others and all(r.relative == 0.0 and r.status == "same" for r in others)
    block = diff.changes()["layer4"]  # a block's figure covers the weights inside it
    assert block.status == "moved" and not block.own and 0 < block.relative < 1
    table = diff.format()
    assert "layer4.0.conv1" in table and "layer3.0.conv1" not in table and "moved " in table
    assert len(diff.format(all_rows=True).splitlines()) > len(table.splitlines())


def test_structure_changes_are_named(weights_file):
    s = Session(load_network(weights_file))
    s.do(SetInputChannels(1))
    row = compare_with_loaded(s).changes()["conv1"]
    assert row.status == "reshaped" and row.text == "reshaped (weight 64×3×7×7 → 64×1×7×7)"
    assert (row.params_before, row.params_after) == (64 * 3 * 49, 64 * 49)


def test_random_weights_compare_the_structure_only():
    torch.manual_seed(0)
    s = Session(load_network("resnet18", random_init=True))
    s.do(DeleteOutputLayer())
    diff = compare_with_loaded(s)
    assert not diff.weights_compared and "random weights" in diff.notes[0]
    assert diff.changes()["fc"].status == "removed" and diff.changes()["conv1"].status == "kept"
    assert diff.changes()["conv1"].relative is None


def test_percent():
    assert [percent(v) for v in (0.0321, 0.5, 0.00041, 0.0, math.inf, None)] == \
        ["3.2%", "50%", "0.041%", "0%", "from zero", "-"]


@pytest.mark.slow
def test_the_command_line_prints_the_table(weights_file, data, tmp_path, capsys):
    s = trained(weights_file, data, "up-to:layer3")
    project = save_project(s, tmp_path / "tuned.graft")
    assert main.main(["diff", str(weights_file), str(project)]) == 0
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines()[3:-1]]
    assert rows[0] == "layer4.0.conv1" and "fc" in rows and "@heads.class" in rows
    assert all(r.startswith(("layer4.", "fc", "@heads")) for r in rows)
    assert main.main(["diff", str(weights_file), str(project), "--all"]) == 0
    assert "layer1.0.conv1" in capsys.readouterr().out
    assert main.main(["diff", str(project), str(project), "--json"]) == 0
    assert '"rows": []' in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["no-such-model-file.pth", "resnet18"], "no such file"),
    (["resnet18", "x.onnx"], None),
])
def test_bad_sides_end_in_one_line(args, message, tmp_path, capsys):
    if args[1] == "x.onnx":
        (tmp_path / "x.onnx").write_bytes(b"")
        args = ["resnet18", str(tmp_path / "x.onnx"), "--random-weights"]
        message = "ONNX files are not compared"
    assert main.main(["diff", *args]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("graft: error:") and message in err[0]


def test_side_of_a_session_lists_heads_under_the_tree_paths(resnet_session):
    from engine.network.heads import HeadSpec

    resnet_session.do(AddHead(HeadSpec("kind", "single", labels=["a", "b"]), seed=0))
    side = side_of_session(resnet_session, "now")
    assert "@heads.kind" in side.modules and "@heads.kind.0" in side.modules
    assert set(side.modules) - {"@heads.kind", "@heads.kind.0"} <= {n.path for n in resnet_session.tree}
