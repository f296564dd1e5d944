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
