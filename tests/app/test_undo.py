"""OperationCommand: apply first (errors change nothing), push without applying twice, undo/redo in order."""
from __future__ import annotations

import pytest
import torch
from PySide6.QtGui import QUndoStack

from app.undo import OperationCommand, push_operation
from engine.errors import GraftError
from engine.network.heads import HeadSpec
from engine.network.loading import load_network
from engine.surgery.operations import AddHead, CutAt, DeleteOutputLayer, SetTrainable
from engine.surgery.session import Session


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return load_network("mobilenet_v3_small", random_init=True)


@pytest.fixture
def session(network):
    import copy

    net = copy.copy(network)
    net.module = copy.deepcopy(network.module)
    return Session(net)


def test_push_applies_once_and_the_stack_names_the_operation(qapp, session):
    stack = QUndoStack()
    push_operation(stack, session, DeleteOutputLayer())
    assert session.output_layer is None and len(session.applied) == 1
    push_operation(stack, session, AddHead(HeadSpec("shape", labels=["a", "b", "c"]), seed=1))
    assert [h.name for h in session.heads] == ["shape"] and len(session.applied) == 2
    assert stack.undoText() == "Add head 'shape'"
    stack.undo()
    assert session.heads == [] and stack.undoText().startswith("Delete output layer (classifier.")
    stack.undo()
    assert session.output_layer is not None and session.applied == []
    stack.redo()
    stack.redo()
    assert [h.name for h in session.heads] == ["shape"] and session.output_layer is None
    out = session.model.eval()(torch.zeros(1, 3, 224, 224))
    assert out["shape"].shape == (1, 3)


def test_an_illegal_operation_raises_and_pushes_nothing(qapp, session):
    stack = QUndoStack()
    push_operation(stack, session, DeleteOutputLayer())
    with pytest.raises(GraftError, match="already been deleted"):
        push_operation(stack, session, DeleteOutputLayer())
    assert stack.count() == 1 and len(session.applied) == 1


def test_freeze_undo_restores_requires_grad(qapp, session):
    stack = QUndoStack()
    before = {n: p.requires_grad for n, p in session.model.named_parameters()}
    push_operation(stack, session, SetTrainable("layers", ["features.0"], False))
    frozen = {n for n, p in session.model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("trunk.body.features.0.") for n in frozen)
    assert stack.undoText() == "Freeze features.0"
    stack.undo()
    assert {n: p.requires_grad for n, p in session.model.named_parameters()} == before


def test_a_command_that_was_not_applied_applies_on_push(qapp, session):
    stack = QUndoStack()
    stack.push(OperationCommand(session, CutAt("features.6"), applied=False))
    assert session.model.trunk.cut_at == "features.6"
    stack.undo()
    assert session.model.trunk.cut_at is None
