"""The generated training script is complete: every name its code uses is defined in it (the Graft code it
carries is copied from the running Graft, so a helper Graft's code starts to call must come along too)."""
from __future__ import annotations

import builtins
import symtable
from dataclasses import replace

import pytest

from engine.errors import GraftError
from engine.export.script import training_script
from engine.network.heads import HeadSpec
from engine.network.loading import load_network
from engine.surgery.operations import AddHead, CutAt, DeleteOutputLayer, freeze_preset
from engine.surgery.session import Session


def undefined_names(text: str) -> set[str]:
    """Global names read anywhere in the module that it neither defines nor imports (nor are builtins)."""
    top = symtable.symtable(text, "train_model.py", "exec")
    defined = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    wanted: set[str] = set()

    def visit(table: symtable.SymbolTable) -> None:
        for s in table.get_symbols():
            if s.is_global() and s.is_referenced() or (table is top and s.is_referenced()):
                wanted.add(s.get_name())
        for child in table.get_children():
            visit(child)

    visit(top)
    return wanted - defined - set(dir(builtins))


@pytest.mark.parametrize("network", ["default", "resnet18"])
def test_the_script_defines_every_name_it_uses(network):
    session = Session(load_network(network, random_init=True))
    if network == "resnet18":
        session.do(CutAt("layer3"))
    else:
        session.do(DeleteOutputLayer())
    session.do(AddHead(HeadSpec("shape", labels=["a", "b"], columns=["shape"], hidden=[8], dropout=0.1), seed=2))
    session.do(AddHead(HeadSpec("size", kind="regression", labels=["size"], columns=["size"]), seed=3))
    session.do(freeze_preset("up-to:layer2" if network == "resnet18" else "heads-only"))
    text = training_script(session, "test.graft")
    compile(text, "train_model.py", "exec")
    assert undefined_names(text) == set()
    assert "Head('shape', 'single', labels=['a', 'b'], columns=['shape'], hidden=[8], dropout=0.1, seed=2)" in text
    if network == "resnet18":
        assert "'cut_at': 'layer3'" in text and "'trunk.body.layer2'" in text and "random weights" in text
    else:
        assert "class EfficientNetLite(nn.Module)" in text and "FROZEN = ['trunk']" in text


def test_what_a_script_cannot_rebuild_is_refused(tmp_path):
    session = Session(load_network("resnet18", random_init=True))
    with pytest.raises(GraftError, match="has no heads"):
        training_script(session)
    session.do(DeleteOutputLayer())
    session.do(AddHead(HeadSpec("shape", labels=["a", "b"]), seed=0))
    session.do(freeze_preset("heads-only"))
    for p in session.model.heads.parameters():
        p.requires_grad_(False)
    with pytest.raises(GraftError, match="nothing to train"):
        training_script(session)
    session.source = replace(session.source, kind="file", name=str(tmp_path / "m.pt"), format="torchscript")
    for p in session.model.heads.parameters():
        p.requires_grad_(True)
    with pytest.raises(GraftError, match="TorchScript model"):
        training_script(session)


def test_a_two_exit_network_is_rebuilt_with_each_head_on_its_layer(tmp_path):
    """Heads on layer2 and at the end: the script's model reads the same layers, takes the project's
    weights as they are and gives the same outputs."""
    import runpy

    import torch

    torch.manual_seed(0)
    session = Session(load_network("resnet18", random_init=True))
    session.model.input_spec = replace(session.input_spec, size=64, resize=64)
    session.do(DeleteOutputLayer())
    session.do(AddHead(HeadSpec("early", labels=["a", "b", "c"], layer="layer2"), seed=1))
    session.do(AddHead(HeadSpec("late", labels=["x", "y"]), seed=2))
    session.do(freeze_preset("heads-only"))
    text = training_script(session, "two-exit.graft")
    assert undefined_names(text) == set() and "layer='layer2'" in text and "reading layer layer2" in text
    script = tmp_path / "train_model.py"
    script.write_text(text)
    module = runpy.run_path(str(script), run_name="not_main")
    model = module["build_model"](None, 0)
    assert model.trunk.taps == session.model.trunk.taps
    assert model.heads["early"][-1].in_features == 128 and model.heads["late"][-1].in_features == 512
    model.load_state_dict(session.model.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    session.model.eval()
    with torch.no_grad():
        ours, theirs = session.model(x), model.eval()(x)
    for name in ("early", "late"):
        assert torch.allclose(ours[name], theirs[name], atol=1e-6)


def test_learning_rate_factors_are_refused_until_the_script_can_reproduce_them():
    from engine.surgery.operations import SetLrFactor

    session = Session(load_network("resnet18", random_init=True))
    session.do(DeleteOutputLayer())
    session.do(AddHead(HeadSpec("shape", labels=["a", "b"]), seed=0))
    session.do(SetLrFactor({"layer4": 0.1}))
    with pytest.raises(GraftError, match="learning-rate factors .*layer4=0.1"):
        training_script(session)
