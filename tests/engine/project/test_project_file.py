"""``.graft`` project files: the whole state round-trips bit for bit, with no pickle inside."""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest
import torch

from engine.errors import GraftError
from engine.network.heads import HeadSpec
from engine.surgery.operations import AddHead, CutAt, DeleteOutputLayer, SetTrainable
from engine.files import check_target
from engine.project.project_file import open_project, save_project


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


def test_a_device_or_pipe_is_refused_not_replaced(edited, tmp_path):
    """Saving goes through a rename: onto /dev/null (or a named pipe) it would replace the device file."""
    fifo = tmp_path / "pipe.graft"
    os.mkfifo(fifo)
    with pytest.raises(GraftError, match="not a regular file"):
        save_project(edited, fifo)
    assert fifo.is_fifo()
    with pytest.raises(GraftError, match="not a regular file"):
        check_target("/dev/null")
    assert Path("/dev/null").is_char_device()


def test_saved_files_get_ordinary_permissions(edited, tmp_path):
    """Not mkstemp's 0600: a project or export handed to another user or a container must be readable."""
    umask = os.umask(0o022)
    os.umask(umask)
    path = save_project(edited, tmp_path / "x.graft")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    path.chmod(0o640)
    save_project(edited, path)  # overwriting keeps the file's own permissions
    assert path.stat().st_mode & 0o777 == 0o640


def test_saving_through_a_symbolic_link_keeps_the_link(edited, tmp_path):
    (tmp_path / "store").mkdir()
    real = tmp_path / "store" / "model.graft"
    real.write_bytes(b"old")
    link = tmp_path / "latest.graft"
    link.symlink_to(real)
    save_project(edited, link)
    assert link.is_symlink() and link.resolve() == real
    assert zipfile.is_zipfile(real) and real.stat().st_size > 3


def test_a_failed_save_keeps_the_previous_file(edited, tmp_path, monkeypatch):
    path = save_project(edited, tmp_path / "keep.graft")
    good = path.read_bytes()
    import engine.project.project_file as project

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


def test_a_folder_is_not_taken_for_a_missing_project(tmp_path):
    with pytest.raises(GraftError, match="a folder, not a file"):
        open_project(tmp_path)


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


def test_weights_of_another_shape_are_refused_in_one_line(edited, tmp_path):
    path = save_project(edited, tmp_path / "a.graft")
    with zipfile.ZipFile(path) as zf:
        recipe = json.loads(zf.read("recipe.json"))
        weights = zf.read("weights.safetensors")
    for op in recipe["operations"]:
        if op["op"] == "add_head" and op["spec"]["name"] == "shape":
            op["spec"]["hidden"] = [16]  # the saved head has 32 hidden units
    with zipfile.ZipFile(tmp_path / "b.graft", "w") as zf:
        zf.writestr("recipe.json", json.dumps(recipe))
        zf.writestr("weights.safetensors", weights)
    with pytest.raises(GraftError, match="do not fit") as info:
        open_project(tmp_path / "b.graft")
    assert "\n" not in str(info.value) and "heads.shape" in str(info.value)


# -- what reopening needs, and what it may run ------------------------------------------------------------

def write_project(path, recipe, weights_from):
    """A hand-made project: ``recipe`` with the weights of the project file ``weights_from``."""
    with zipfile.ZipFile(weights_from) as zf:
        weights = zf.read("weights.safetensors")
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("recipe.json", json.dumps(recipe))
        zf.writestr("weights.safetensors", weights)
    return path


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = "/tmp/graft-test-evil-project-marker"


@pytest.mark.slow
def test_a_project_file_cannot_grant_trust_to_a_pickle(resnet_session, tmp_path):
    os.makedirs(tmp_path, exist_ok=True)
    if os.path.exists(MARKER):
        os.unlink(MARKER)
    evil = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, evil)
    plain = save_project(resnet_session, tmp_path / "plain.graft")
    recipe = {"format": 1, "operations": [],
              "source": {"kind": "file", "name": str(evil), "format": "pickle", "trusted": True}}
    with pytest.raises(GraftError, match="trust"):
        open_project(write_project(tmp_path / "evil.graft", recipe, plain))
    # named as a state dict, it is read weights-only: refused, and the architecture is built instead
    recipe["source"].update(format="state_dict", arch="resnet18")
    session = open_project(write_project(tmp_path / "evil2.graft", recipe, plain))
    assert session.source.arch == "resnet18"
    assert not os.path.exists(MARKER)


@pytest.mark.slow
def test_a_pickled_torchvision_model_reopens_without_unpickling(tmp_path):
    from engine.network.loading import load_network
    from engine.surgery.session import Session

    torch.manual_seed(0)
    reference = torchvision_model("mobilenet_v3_small")
    pickled = tmp_path / "whole.pt"
    torch.save(reference, pickled)
    s = Session(load_network(pickled, trust=True))
    assert s.source.arch == "mobilenet_v3_small"
    s.do(DeleteOutputLayer())
    s.do(AddHead(HeadSpec("a", "single", outputs=3), seed=0))
    path = save_project(s, tmp_path / "p.graft")
    x = torch.randn(2, 3, 224, 224)
    expected = run(s, x)["a"]

    trusted = open_project(path, trust=True)  # unpickled again: its original weights come back on undo
    assert torch.equal(run(trusted, x)["a"], expected)
    trusted.history.undo()
    trusted.history.undo()
    assert torch.equal(trusted.model.trunk.body.classifier[3].weight, reference.classifier[3].weight)

    pickled.unlink()  # no file to unpickle: the architecture is built; undo stops after the delete
    again = open_project(path)
    assert torch.equal(run(again, x)["a"], expected)
    assert [op.kind for op in again.history.done] == ["add_head"]
    assert any("not on this machine" in n for n in again.network.notes)


def torchvision_model(name, **kwargs):
    import torchvision

    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


@pytest.mark.slow
def test_a_project_from_an_unrecognised_pickle_reopens_only_with_trust(tmp_path):
    from engine.network.loading import load_network
    from engine.surgery.session import Session

    model = torchvision_model("mobilenet_v3_small")
    model.features[0][0].stride = (1, 1)  # not torchvision's mobilenet any more
    pickled = tmp_path / "custom.pt"
    torch.save(model, pickled)
    s = Session(load_network(pickled, trust=True))
    assert s.source.arch is None
    path = save_project(s, tmp_path / "c.graft")
    from engine.network.loading import NeedsTrust

    with pytest.raises(NeedsTrust, match="can run code.*trust"):  # a GraftError the window can ask about
        open_project(path)
    x = torch.randn(1, 3, 224, 224)
    assert torch.equal(run(open_project(path, trust=True), x)["output"], run(s, x)["output"])


def test_undo_after_reopening_brings_back_the_original_weights(tmp_path):
    from engine.network.loading import load_network
    from engine.surgery.session import Session

    s = Session(load_network("default"))
    original = {k: v.clone() for k, v in s.model.trunk.state_dict().items()}
    s.do(DeleteOutputLayer())
    s.do(CutAt("features.6"))
    s.do(AddHead(HeadSpec("a", "single", outputs=2), seed=0))
    again = open_project(save_project(s, tmp_path / "lite.graft"))
    assert again.network.notes == []
    for _ in range(3):
        again.history.undo()
    restored = again.model.trunk.state_dict()
    assert restored.keys() == original.keys() and all(torch.equal(restored[k], original[k]) for k in original)


@pytest.mark.slow
def test_undo_stops_at_the_reopen_point_when_the_source_weights_are_gone(tmp_path):
    from engine.network.loading import load_network
    from engine.surgery.session import Session

    torch.manual_seed(0)
    weights = tmp_path / "r18.pth"
    torch.save(torchvision_model("resnet18").state_dict(), weights)
    s = Session(load_network("resnet18", weights=weights))
    fc = s.model.trunk.body.fc.weight.clone()
    s.do(DeleteOutputLayer())
    s.do(AddHead(HeadSpec("a", "single", outputs=2), seed=0))
    path = save_project(s, tmp_path / "r.graft")
    x = torch.randn(1, 3, 224, 224)

    present = open_project(path)
    present.history.undo()
    present.history.undo()
    assert torch.equal(present.model.trunk.body.fc.weight, fc)

    weights.unlink()
    gone = open_project(path)
    assert torch.equal(run(gone, x)["a"], run(s, x)["a"])
    gone.history.undo()  # the head goes; undoing the delete would bring back a random output layer
    assert not gone.history.can_undo and "a" not in gone.model.heads
    assert any("not on this machine" in n and "r18.pth" in n for n in gone.network.notes)
    gone.do(SetTrainable("heads_only"))  # new work is undoable as usual
    gone.history.undo()


def test_undo_stops_before_removed_heads_whose_weights_were_not_saved(resnet_session, tmp_path):
    from engine.surgery.operations import RemoveHead

    s = resnet_session
    s.do(DeleteOutputLayer())
    s.do(AddHead(HeadSpec("a", "single", outputs=2)))
    s.do(RemoveHead("a"))
    s.do(SetTrainable("heads_only"))
    again = open_project(save_project(s, tmp_path / "h.graft"))
    assert [op.kind for op in again.history.done] == ["set_trainable"]
    assert any("were not saved" in n for n in again.network.notes)

    again.do(AddHead(HeadSpec("b", "single", outputs=2)))
    again.do(CutAt("layer2"))  # head b no longer fits: rebuilt, the old one kept only in memory
    again.do(SetTrainable("all"))
    third = open_project(save_project(again, tmp_path / "h2.graft"))
    assert [op.kind for op in third.history.done] == ["set_trainable"]


@pytest.mark.slow
def test_a_fine_tuned_source_reopens_with_its_class_count(tmp_path):
    from engine.network.loading import load_network
    from engine.surgery.session import Session

    torch.manual_seed(0)
    checkpoint = tmp_path / "ft10.pth"
    torch.save(torchvision_model("resnet18", num_classes=10).state_dict(), checkpoint)
    s = Session(load_network(checkpoint))
    s.do(SetTrainable("heads_only"))
    path = save_project(s, tmp_path / "ft.graft")
    x = torch.randn(1, 3, 224, 224)
    checkpoint.unlink()
    again = open_project(path)
    assert torch.equal(run(again, x)["output"], run(s, x)["output"])
    assert again.model.trunk.body.fc.out_features == 10


@pytest.mark.parametrize("change,message", [
    (lambda r: r.pop("source"), "'source' is missing"),
    (lambda r: r.update(operations=[{"op": "cut"}]), "operation 1.*layer"),
    (lambda r: r.update(format="1"), "format must be a whole number"),
    (lambda r: r.update(operations={"op": "cut"}), "not a list"),
    (lambda r: r.update(operations=[{"op": "cut", "layer": 5}]), "operation 1"),
    (lambda r: r.update(operations=[{"op": "add_head", "spec": {"name": "a", "outputs": "2"}}]), "whole number"),
    (lambda r: r.update(operations=[{"op": "cut", "layer": "nope"}]), "operation 1 .*no layer 'nope'"),
    (lambda r: r["source"].update(kind="magic"), "unknown source kind"),
    (lambda r: r["source"].update(name=None), "name must be text"),
    (lambda r: r.update(input_spec={"size": "big"}), "input size"),
    (lambda r: r.update(input_spec={"mean": "x"}), "mean 'x'"),
    (lambda r: r.update(input_spec={"std": [0, 0, 0]}), r"std \[0, 0, 0\]"),
    (lambda r: r.update(input_spec={"interpolation": "magic"}), "resize filter"),
    (lambda r: r.update(operations=r["operations"] + [{"op": "add_head", "spec": {
        "name": "huge", "labels": ["a", "b"], "hidden": [10 ** 12]}}]), r"Add head 'huge'\) cannot be redone"),
    (lambda r: r.update(extra=[1]), "extra"),
])
@pytest.mark.slow
def test_a_damaged_recipe_gets_a_clear_message(resnet_session, tmp_path, change, message):
    plain = save_project(resnet_session, tmp_path / "plain.graft")
    with zipfile.ZipFile(plain) as zf:
        recipe = json.loads(zf.read("recipe.json"))
    change(recipe)
    with pytest.raises(GraftError, match=f"bad.graft is not a valid Graft project: .*{message}"):
        open_project(write_project(tmp_path / "bad.graft", recipe, plain))


def test_a_network_whose_layers_read_a_state_dict_version_reopens(tmp_path):
    """torchvision's MNASNet reads its version from the state dict's metadata, which safetensors does not keep:
    a saved MNASNet project reopened with a ValueError traceback (found by tests/engine/project/test_fuzz_project_files.py)."""
    from engine.network.loading import load_network
    from engine.surgery.session import Session

    torch.manual_seed(0)
    s = Session(load_network("mnasnet0_5", random_init=True))
    s.do(DeleteOutputLayer())
    s.do(AddHead(HeadSpec("shape", "single", labels=["a", "b"]), seed=0))
    again = open_project(save_project(s, tmp_path / "mnas.graft"))
    x = torch.randn(2, 3, 96, 96)
    assert torch.equal(run(again, x)["shape"], run(s, x)["shape"])
