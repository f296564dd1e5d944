"""SetLrFactor: per-layer learning-rate factors, inherited by the layers below; 0 freezes; undo is exact."""
from __future__ import annotations

import pytest

from engine.errors import GraftError
from engine.network.heads import HeadSpec
from engine.network.lr_factors import effective_factor, factor_path, param_factors
from engine.surgery.operations import AddHead, DeleteOutputLayer, Operation, SetLrFactor, freeze_preset


def flags(session):
    return {n: p.requires_grad for n, p in session.model.named_parameters()}


@pytest.fixture
def session(resnet_session):
    resnet_session.do(DeleteOutputLayer())
    resnet_session.do(AddHead(HeadSpec("shape", "single", labels=["a", "b"]), seed=0))
    return resnet_session


def test_paths_and_inheritance():
    assert factor_path("trunk.body.layer1.0.conv1.weight") == "layer1.0.conv1"
    assert factor_path("heads.shape.0.weight") == "@heads.shape.0"
    assert factor_path("trunk.body.class_token") == ""
    factors = {"layer1": 0.5, "layer1.0.conv1": 2.0, "@heads": 3.0}
    assert effective_factor(factors, "layer1.1.conv2") == 0.5
    assert effective_factor(factors, "layer1.0.conv1") == 2.0  # the deepest factor wins
    assert effective_factor(factors, "layer2.0") == 1.0
    assert effective_factor(factors, "@heads.shape.0") == 3.0
    assert effective_factor(factors, "layer10") == 1.0  # a prefix of the text is not an ancestor


def test_factor_is_inherited_shown_in_the_tree_and_undone(session):
    before_flags = flags(session)
    session.do(SetLrFactor({"layer3": 0.25}))
    session.do(SetLrFactor({"layer3.1": 4.0}))
    factors = param_factors(session.model)
    assert factors["trunk.body.layer3.0.conv1.weight"] == 0.25
    assert factors["trunk.body.layer3.1.bn2.bias"] == 4.0
    assert factors["trunk.body.layer2.0.conv1.weight"] == 1.0 and factors["heads.shape.0.weight"] == 1.0
    tree = session.tree
    assert tree.node("layer3").lr_factor == 0.25 and tree.node("layer3.0.conv1").lr_factor == 0.25
    assert tree.node("layer3.1.conv1").lr_factor == 4.0 and tree.node("layer4").lr_factor == 1.0
    assert flags(session) == before_flags  # positive factors do not touch the freeze settings
    session.history.undo()
    assert session.tree.node("layer3.1.conv1").lr_factor == 0.25
    session.history.undo()
    assert session.model.lr_factors == {} and session.tree.node("layer3").lr_factor == 1.0


def test_zero_freezes_and_undo_restores_exactly(session):
    session.do(freeze_preset("up-to:layer1"))  # a mixed freeze state to put back
    before = flags(session)
    changed = []
    session.tree.connect("changed", lambda node, fields: changed.append((node.path, set(fields))))
    op = session.do(SetLrFactor({"layer2": 0.0, "@heads.shape": 0}))
    now = flags(session)
    assert not any(v for n, v in now.items() if n.startswith("trunk.body.layer2.") or n.startswith("heads.shape."))
    assert all(now[n] == before[n] for n in now if not (n.startswith("trunk.body.layer2.") or n.startswith("heads.")))
    assert session.tree.node("layer2").frozen_state == "frozen"
    assert ("layer2", {"trainable_params", "lr_factor"}) in changed
    assert op.text == "Learning-rate factors on 2 layers"
    # lifting the 0 unfreezes what it froze; a finer factor inside a frozen layer lifts only that part
    session.do(SetLrFactor({"layer2.1": 0.5}))
    assert all(p.requires_grad == n.startswith("trunk.body.layer2.1.")
               for n, p in session.model.named_parameters() if n.startswith("trunk.body.layer2."))
    session.history.undo()
    session.history.undo()
    assert flags(session) == before and session.model.lr_factors == {}


def test_clearing_a_factor_and_the_recipe_round_trip(session):
    session.do(SetLrFactor({"layer1": 0.1, "layer4": 0.0}))
    op = session.do(SetLrFactor({"layer4": None}))
    assert op.text == "Clear the learning-rate factor of layer4"
    assert session.model.lr_factors == {"layer1": 0.1}
    assert all(p.requires_grad for n, p in session.model.named_parameters() if n.startswith("trunk.body.layer4."))
    again = Operation.from_dict(session.recipe()[-2])
    assert isinstance(again, SetLrFactor) and again.factors == {"layer1": 0.1, "layer4": 0.0}


def test_project_keeps_factors(session, tmp_path):
    from engine.project.project_file import open_project, save_project

    session.do(SetLrFactor({"layer2": 0.3, "layer3": 0.0}))
    reopened = open_project(save_project(session, tmp_path / "f.graft"))
    assert reopened.model.lr_factors == {"layer2": 0.3, "layer3": 0.0}
    assert flags(reopened) == flags(session)
    assert reopened.tree.node("layer2.0").lr_factor == 0.3


@pytest.mark.parametrize("factors, message", [
    ({"nolayer": 0.5}, "There is no layer 'nolayer'"),
    ({"@heads.nohead": 0.5}, "There is no head named 'nohead'"),
    ({"relu": 0.5}, "no weights"),
    ({"layer1": -0.1}, "must be 0 or more"),
    ({"layer1": float("nan")}, "must be 0 or more"),
    ({"layer1": "fast"}, "must be a number"),
    ({"layer1": True}, "must be a number"),
    ({}, "at least one layer"),
])
def test_bad_factors_are_refused_and_change_nothing(session, factors, message):
    before = (flags(session), dict(session.model.lr_factors), len(session.applied))
    with pytest.raises(GraftError, match=message):
        session.do(SetLrFactor(factors))
    assert (flags(session), dict(session.model.lr_factors), len(session.applied)) == before
