"""``.graft`` project files: the whole state round-trips bit for bit, with no pickle inside."""
from __future__ import annotations

import json
import os
import zipfile

import pytest
import torch

from engine.errors import GraftError
from engine.heads import HeadSpec
from engine.operations import AddHead, CutAt, DeleteOutputLayer, SetTrainable
from engine.project import open_project, save_project


def run(session, x):
    session.model.eval()
    with torch.no_grad():
        return session.model(x)


@pytest.fixture
def edited(resnet_session):
    s = resnet_session
    s.do(DeleteOutputLayer())
    s.do(CutAt("layer3"))
    s.do(AddHead(HeadSpec("shape", "single", labels=["circle", "square", "star"], hidden=[32], dropout=0.1)))
    s.do(AddHead(HeadSpec("size", "regression", outputs=1, columns=["size"], loss_weight=0.5)))
    s.do(SetTrainable("up_to", ["layer2"]))
    with torch.no_grad():  # weights that differ from any fresh init, as after training
        for p in s.model.heads.parameters():
            p.add_(0.25)
        s.model.trunk.body.bn1.running_mean.add_(0.5)
    return s


def test_reopening_reproduces_outputs_bit_for_bit(edited, tmp_path):
    path = save_project(edited, tmp_path / "my.graft")
    x = torch.randn(3, 3, 224, 224)
    before = run(edited, x)
    again = open_project(path)
    after = run(again, x)
    assert before.keys() == after.keys() == {"shape", "size"}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [h.to_dict() for h in again.heads] == [h.to_dict() for h in edited.heads]
    assert {n: p.requires_grad for n, p in again.model.named_parameters()} == \
        {n: p.requires_grad for n, p in edited.model.named_parameters()}
    assert again.model.trunk.cut_at == "layer3" and again.output_layer is None
    assert [op.to_dict() for op in again.applied] == edited.recipe()
    again.history.undo()  # the replayed recipe stays undoable
    assert all(p.requires_grad for p in again.model.parameters())


def test_the_file_holds_json_and_safetensors_only(edited, tmp_path):
    path = save_project(edited, tmp_path / "my.graft")
    with zipfile.ZipFile(path) as zf:
        assert sorted(zf.namelist()) == ["recipe.json", "weights.safetensors"]
        recipe = json.loads(zf.read("recipe.json"))
        assert b"pickle" not in zf.read("weights.safetensors")[:200]
    assert recipe["source"]["name"] == "resnet18"
    assert [op["op"] for op in recipe["operations"]] == ["delete_output", "cut", "add_head", "add_head", "set_trainable"]
    assert recipe["heads"][0]["labels"] == ["circle", "square", "star"]


def test_unwritable_path_is_reported_and_leaves_nothing(edited, tmp_path):
    with pytest.raises(GraftError, match="does not exist"):
        save_project(edited, tmp_path / "missing" / "x.graft")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        # a read-only folder stops ordinary users; /proc stops root too
        target = locked / "x.graft" if not os.access(locked, os.W_OK) else "/proc/graft-test.graft"
        with pytest.raises(GraftError, match="Cannot write"):
            save_project(edited, target)
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_saved_files_get_ordinary_permissions(edited, tmp_path):
    """Not mkstemp's 0600: a project or export handed to another user or a container must be readable."""
    umask = os.umask(0o022)
    os.umask(umask)
    path = save_project(edited, tmp_path / "x.graft")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    path.chmod(0o640)
    save_project(edited, path)  # overwriting keeps the file's own permissions
    assert path.stat().st_mode & 0o777 == 0o640


def test_a_failed_save_keeps_the_previous_file(edited, tmp_path, monkeypatch):
    path = save_project(edited, tmp_path / "keep.graft")
    good = path.read_bytes()
    import engine.project as project

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(project.zipfile.ZipFile, "writestr", broken)
    with pytest.raises(GraftError, match="No space left"):
        save_project(edited, path)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.graft"]


@pytest.mark.parametrize("content", [b"not a zip", b""])
def test_a_damaged_project_gets_a_clear_message(tmp_path, content):
    path = tmp_path / "bad.graft"
    path.write_bytes(content)
    with pytest.raises(GraftError, match="not a Graft project"):
        open_project(path)


def test_weights_that_do_not_match_the_recipe_are_refused(edited, tmp_path):
    path = save_project(edited, tmp_path / "a.graft")
    with zipfile.ZipFile(path) as zf:
        recipe = json.loads(zf.read("recipe.json"))
        weights = zf.read("weights.safetensors")
    recipe["operations"] = recipe["operations"][:1]  # no cut: layer4 comes back, heads missing
    with zipfile.ZipFile(tmp_path / "b.graft", "w") as zf:
        zf.writestr("recipe.json", json.dumps(recipe))
        zf.writestr("weights.safetensors", weights)
    with pytest.raises(GraftError, match="do not fit"):
        open_project(tmp_path / "b.graft")
