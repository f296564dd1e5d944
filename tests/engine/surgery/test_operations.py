"""Surgery operations: each does, undoes and refuses illegal input without changing the model."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.errors import GraftError
from engine.network.heads import HeadSpec
from engine.surgery.operations import (AddHead, CutAt, DeleteOutputLayer, RemoveHead, RenameHead, SetTrainable,
                               UpdateHead, freeze_preset)


def snapshot(session):
    """Everything an operation may change: weights, trainable flags, module structure, heads."""
    model = session.model
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        [(n, type(m).__name__) for n, m in model.named_modules()],
        [h.to_dict() for h in session.heads],
        model.trunk.cut_at,
        session.output_layer,
    )


def assert_same(a, b):
    sa, ga, ma, ha, ca, oa = a
    sb, gb, mb, hb, cb, ob = b
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert (ga, ma, ha, ca, oa) == (gb, mb, hb, cb, ob)


def features(session, batch=2):
    session.model.eval()
    torch.manual_seed(1)
    with torch.no_grad():
        return session.model(torch.randn(batch, 3, 224, 224))


def test_delete_output_layer_exposes_penultimate_features(resnet_session):
    s = resnet_session
    assert s.output_layer == "fc" and s.feature_dim == 1000
    s.do(DeleteOutputLayer())
    assert s.output_layer is None and s.feature_dim == 512
    assert "fc" not in s.tree and isinstance(s.model.trunk.body.fc, nn.Identity)
    assert features(s)["output"].shape == (2, 512)


def test_delete_output_twice_is_refused_and_changes_nothing(resnet_session):
    s = resnet_session
    s.do(DeleteOutputLayer())
    before = snapshot(s)
    with pytest.raises(GraftError, match="already been deleted"):
        s.do(DeleteOutputLayer())
    assert_same(before, snapshot(s))
    assert len(s.history.done) == 1


@pytest.mark.parametrize("arch,output", [("mobilenet_v3_small", "classifier.3"), ("efficientnet_b0", "classifier.1"),
                                         ("vit_b_16", "heads.head"), ("convnext_tiny", "classifier.2")])
@pytest.mark.slow
def test_output_layer_detected_on_torchvision_families(arch, output):
    from engine.network.loading import load_network
    from engine.surgery.session import Session

    s = Session(load_network(arch, random_init=True))
    assert s.output_layer == output
    assert s.tree.node(output).is_output
    s.do(DeleteOutputLayer())
    assert s.feature_dim not in (None, 1000)


def test_cut_removes_everything_after_the_layer(resnet_session):
    s = resnet_session
    body = s.model.trunk.body
    x = torch.randn(1, 3, 224, 224)
    s.model.eval()
    with torch.no_grad():  # what layer3 produces, pooled, computed by hand before the cut
        ref = body.layer3(body.layer2(body.layer1(body.maxpool(body.relu(body.bn1(body.conv1(x))))))).mean((2, 3))
    params_before = sum(p.numel() for p in s.model.parameters())
    s.do(CutAt("layer3"))
    assert s.feature_dim == 256
    assert [n.name for n in s.tree.root.children][:-1] == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2",
                                                            "layer3"]
    assert s.output_layer is None  # fc went with the cut
    assert sum(p.numel() for p in s.model.parameters()) < params_before
    with torch.no_grad():
        assert torch.allclose(s.model(x)["output"], ref, atol=1e-5)


@pytest.mark.slow
def test_cut_inside_a_block_and_on_a_transformer():
    from engine.network.loading import load_network
    from engine.surgery.session import Session

    s = Session(load_network("vit_b_16", random_init=True))
    s.do(CutAt("encoder.layers.encoder_layer_5"))
    assert s.feature_dim == 768
    assert "encoder.layers.encoder_layer_6" not in s.tree and "encoder.ln" not in s.tree
    assert "encoder.layers.encoder_layer_5" in s.tree
    s.history.undo()
    assert "encoder.layers.encoder_layer_11" in s.tree and s.output_layer == "heads.head"


@pytest.mark.parametrize("layer,message", [("nope", "no layer"), ("", "Name a layer")])
def test_cut_at_unknown_layer_is_refused(resnet_session, layer, message):
    before = snapshot(resnet_session)
    with pytest.raises(GraftError, match=message):
        resnet_session.do(CutAt(layer))
    assert_same(before, snapshot(resnet_session))


def test_cut_at_a_layer_an_earlier_cut_removed_is_refused(resnet_session):
    s = resnet_session
    s.do(CutAt("layer2"))
    before = snapshot(s)
    with pytest.raises(GraftError, match="removed"):
        s.do(CutAt("layer4"))
    assert_same(before, snapshot(s))


def test_heads_make_a_multi_task_model(resnet_session):
    s = resnet_session
    s.do(DeleteOutputLayer())
    s.do(AddHead(HeadSpec("shape", "single", labels=["circle", "square", "triangle"], hidden=[64], dropout=0.2)))
    s.do(AddHead(HeadSpec("tags", "multi", labels=["red", "striped"])))
    s.do(AddHead(HeadSpec("size", "regression", outputs=1)))
    out = features(s)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"shape": (2, 3), "tags": (2, 2), "size": (2, 1)}
    assert [n.name for n in s.tree.node("@heads").children] == ["shape", "tags", "size"]
    assert s.model.heads["shape"][0].in_features == 512


@pytest.mark.parametrize("spec,message", [
    (dict(name="bad", kind="single", outputs=0), "at least"),
    (dict(name="bad", kind="single", outputs=1), "at least 2"),
    (dict(name="", kind="single", outputs=3), "needs a name"),
    (dict(name="x", kind="ranking", outputs=3), "kind"),
])
def test_invalid_head_specs_are_refused(spec, message):
    with pytest.raises(GraftError, match=message):
        HeadSpec(**spec)


def test_duplicate_head_name_is_refused(resnet_session):
    s = resnet_session
    s.do(DeleteOutputLayer())
    s.do(AddHead(HeadSpec("a", "single", outputs=2)))
    before = snapshot(s)
    with pytest.raises(GraftError, match="already a head named 'a'"):
        s.do(AddHead(HeadSpec("a", "multi", outputs=4)))
    assert_same(before, snapshot(s))


def test_remove_rename_and_update_heads(resnet_session):
    s = resnet_session
    s.do(DeleteOutputLayer())
    s.do(AddHead(HeadSpec("a", "single", outputs=2)))
    s.do(AddHead(HeadSpec("b", "regression", outputs=1)))
    weight = s.model.heads["a"][-1].weight.clone()
    s.do(RenameHead("a", "animal"))
    assert [h.name for h in s.heads] == ["animal", "b"]
    assert torch.equal(s.model.heads["animal"][-1].weight, weight)  # renaming keeps the weights
    s.do(UpdateHead("animal", HeadSpec("animal", "single", labels=["cat", "dog"], loss_weight=2.0)))
    assert torch.equal(s.model.heads["animal"][-1].weight, weight)  # so do new names and weights
    s.do(UpdateHead("animal", HeadSpec("animal", "single", labels=["cat", "dog", "cow"])))
    assert s.model.heads["animal"][-1].out_features == 3
    s.do(RemoveHead("b"))
    assert list(features(s)) == ["animal"]
    for _ in range(4):
        s.history.undo()
    assert [h.name for h in s.heads] == ["a", "b"]
    assert torch.equal(s.model.heads["a"][-1].weight, weight)
    with pytest.raises(GraftError, match="no head named"):
        s.do(RemoveHead("zzz"))


def test_cut_after_heads_rebuilds_heads_that_no_longer_fit(resnet_session):
    s = resnet_session
    s.do(DeleteOutputLayer())
    s.do(AddHead(HeadSpec("a", "single", outputs=3)))
    old = s.model.heads["a"]
    s.do(CutAt("layer2"))
    assert s.model.heads["a"][0].in_features == 128
    assert features(s)["a"].shape == (2, 3)
    s.history.undo()
    assert s.model.heads["a"] is old


def trainable(s, prefix):
    return {n: p.requires_grad for n, p in s.model.named_parameters() if n.startswith(prefix)}


def test_freeze_layer_subtree_and_presets(resnet_session):
    s = resnet_session
    s.do(DeleteOutputLayer())
    s.do(AddHead(HeadSpec("a", "single", outputs=3)))
    s.do(SetTrainable("layers", ["layer1"], trainable=False))
    assert not any(trainable(s, "trunk.body.layer1.").values())
    assert all(trainable(s, "trunk.body.layer2.").values())
    assert s.tree.node("layer1").frozen_state == "frozen"
    assert s.tree.node("layer1.0.conv1").frozen_state == "frozen"
    s.do(SetTrainable("layers", ["layer2.0"], trainable=False))
    assert s.tree.node("layer2").frozen_state == "partial"

    s.do(freeze_preset("heads-only"))
    assert not any(trainable(s, "trunk.").values()) and all(trainable(s, "heads.").values())
    assert not s.model.trunk_trainable()

    s.do(freeze_preset("up-to:layer3"))
    assert not any(trainable(s, "trunk.body.layer3.").values())
    assert not any(trainable(s, "trunk.body.conv1").values())
    assert all(trainable(s, "trunk.body.layer4.").values())
    assert all(trainable(s, "heads.").values())

    s.do(freeze_preset("none"))
    assert all(p.requires_grad for p in s.model.parameters())
    for _ in range(4):
        s.history.undo()
    assert s.tree.node("layer1").frozen_state == "frozen" and s.tree.node("layer2").frozen_state == "trainable"


def test_frozen_batchnorm_stays_in_eval_mode_during_training(resnet_session):
    s = resnet_session
    s.do(SetTrainable("layers", ["bn1"], trainable=False))
    s.model.train()
    assert not s.model.trunk.body.bn1.training
    assert s.model.trunk.body.layer1[0].bn1.training


def test_undo_redo_round_trip_restores_everything(resnet_session):
    s = resnet_session
    states = [snapshot(s)]
    ops = [DeleteOutputLayer(), AddHead(HeadSpec("a", "single", outputs=3), seed=1),
           AddHead(HeadSpec("b", "multi", outputs=4, hidden=[32])), SetTrainable("heads_only"),
           CutAt("layer3"), RemoveHead("a"), SetTrainable("layers", ["layer2"], trainable=True)]
    for op in ops:
        s.do(op)
        states.append(snapshot(s))
    for i in range(len(ops), 0, -1):
        s.history.undo()
        assert_same(states[i - 1], snapshot(s))
    for i in range(1, len(ops) + 1):
        s.history.redo()
        assert_same(states[i], snapshot(s))
    with pytest.raises(GraftError, match="Nothing to redo"):
        s.history.redo()


def test_operation_texts_name_what_they_do(resnet_session):
    s = resnet_session
    assert s.do(DeleteOutputLayer()).text == "Delete output layer (fc)"
    assert s.do(CutAt("layer3")).text == "Cut at layer3"
    assert s.do(SetTrainable("up_to", ["layer2"])).text == "Freeze up to layer2"
    assert s.do(AddHead(HeadSpec("x", "single", outputs=2))).text == "Add head 'x'"


# -- a cut above an earlier cut; operations whose dry run fails -----------------------------------------

def cut_fresh(network_name, layer):
    from engine.network.loading import load_network
    from engine.surgery.session import Session

    torch.manual_seed(0)
    s = Session(load_network(network_name, random_init=network_name != "default"))
    s.do(CutAt(layer))
    return s


@pytest.mark.parametrize("network,first,second", [("default", "features.5.1.depthwise", "features.5"),
                                                  ("resnet18", "layer3.0.conv1", "layer3")])
@pytest.mark.slow
def test_a_cut_above_an_earlier_cut_puts_back_what_that_cut_removed(network, first, second, one_torch_thread):
    s = cut_fresh(network, first)
    reference = cut_fresh(network, second)  # the same weights: the same seed, or the bundled ones
    states = [None, snapshot(s)]
    s.do(CutAt(second))
    assert s.tree.shape_error is None
    assert s.feature_dim == reference.feature_dim is not None
    assert torch.allclose(features(s)["output"], features(reference)["output"], atol=1e-6)
    assert [n.path for n in s.tree] == [n.path for n in reference.tree]
    s.do(AddHead(HeadSpec("a", "single", outputs=3), seed=0))  # refused before: feature size unknown
    assert features(s)["a"].shape == (2, 3)
    states.append(snapshot(s))
    s.history.undo()
    s.history.undo()
    assert_same(states[1], snapshot(s))  # back to the first cut, its placeholders in place
    assert s.tree.shape_error is None and s.model.trunk.cut_at == first
    s.history.redo()
    s.history.redo()
    assert_same(states[2], snapshot(s))
    for _ in range(3):
        s.history.undo()
    assert s.model.trunk.cut_at is None and s.output_layer is not None and s.tree.shape_error is None


@pytest.mark.slow
def test_a_cut_at_an_earlier_layer_after_a_cut_and_a_delete_round_trips(resnet_session):
    s = resnet_session
    ops = [DeleteOutputLayer(), CutAt("layer3.1.conv2"), CutAt("layer2.0"), CutAt("layer2")]
    states = [snapshot(s)]
    for op in ops:
        s.do(op)
        states.append(snapshot(s))
        assert s.tree.shape_error is None
    assert s.feature_dim == 128  # and layer2.1, which the cut at layer2.0 removed, is back in layer2:
    assert torch.allclose(features(s)["output"], features(cut_fresh("resnet18", "layer2"))["output"], atol=1e-6)
    for i in range(len(ops), 0, -1):
        s.history.undo()
        assert_same(states[i - 1], snapshot(s))
    for i in range(1, len(ops) + 1):
        s.history.redo()
        assert_same(states[i], snapshot(s))


class Reshapes(nn.Module):
    """A network whose forward needs its output layer's shape: deleting that layer breaks it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=4)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 6)

    def forward(self, x):
        return self.fc(self.pool(self.conv(x)).flatten(1)).view(-1, 2, 3).sum(1)


def test_an_operation_whose_dry_run_fails_is_undone_and_refused():
    from engine.network.loading import LoadedNetwork, ModelSource
    from engine.network.preprocess import InputSpec
    from engine.surgery.session import Session

    s = Session(LoadedNetwork(Reshapes().eval(), InputSpec(size=32, resize=36),
                              ModelSource("file", "/x/r.pt", format="pickle")))
    assert s.output_layer == "fc" and s.feature_dim == 3
    before = snapshot(s)
    with pytest.raises(GraftError, match="Delete output layer.*no longer run"):
        s.do(DeleteOutputLayer())
    assert_same(before, snapshot(s))
    assert s.feature_dim == 3 and s.tree.shape_error is None and not s.history.can_undo and not s.applied
    s.do(AddHead(HeadSpec("a", "single", outputs=2)))  # the model still works
    with torch.no_grad():
        assert s.model.eval()(s.model.dummy_input(2))["a"].shape == (2, 2)


# -- head names the heads' container cannot hold ---------------------------------------------------------

@pytest.mark.parametrize("name", ["train", "eval", "to", "forward", "training", "keys", "_private"])
@pytest.mark.slow
def test_head_names_that_are_attributes_of_the_container_are_refused(resnet_session, name):
    with pytest.raises(GraftError, match="reserved"):
        HeadSpec(name, "single", outputs=2)
    s = resnet_session
    s.do(AddHead(HeadSpec("ok", "single", outputs=2)))
    spec = HeadSpec("ok", "single", outputs=2)
    spec.name = name  # a spec changed after it was made is checked again when used
    with pytest.raises(GraftError, match="reserved"):
        s.do(AddHead(spec))
    with pytest.raises(GraftError, match="reserved"):
        s.do(UpdateHead("ok", spec))
    assert [h.name for h in s.heads] == ["ok"]


def test_the_reserved_head_names_cover_torchs_container():
    from engine.network.heads import RESERVED_NAMES

    public = {n for n in dir(nn.ModuleDict()) if not n.startswith("_")}
    assert public <= RESERVED_NAMES


# -- freezing up to a layer: parameters owned by enclosing modules -------------------------------------

def test_freeze_up_to_keeps_a_blocks_own_parameters_used_after_the_layer_trainable(one_torch_thread):
    from engine.network.loading import load_network
    from engine.surgery.session import Session

    s = Session(load_network("convnext_tiny", random_init=True))
    s.do(SetTrainable("up_to", ["features.1.0.block.0"]))
    grad = trainable(s, "trunk.body.")
    assert not grad["trunk.body.features.1.0.block.0.weight"] and not grad["trunk.body.features.0.0.weight"]
    assert grad["trunk.body.features.1.0.layer_scale"]  # applied after the whole block ran
    assert grad["trunk.body.features.1.0.block.3.weight"] and grad["trunk.body.features.2.0.weight"]
    s.do(SetTrainable("up_to", ["features.1.0"]))  # all of that block before the limit: frozen
    assert not trainable(s, "trunk.body.features.1.0.layer_scale")["trunk.body.features.1.0.layer_scale"]


@pytest.mark.slow
def test_freeze_up_to_freezes_an_enclosing_modules_parameters_used_before_the_layer(one_torch_thread):
    from engine.network.loading import load_network
    from engine.surgery.session import Session

    s = Session(load_network("vit_b_16", random_init=True))
    s.do(SetTrainable("up_to", ["encoder.layers.encoder_layer_5"]))
    grad = trainable(s, "trunk.body.")
    # the class token (the root's) and the position embedding (the encoder's) are used before layer 5
    assert not grad["trunk.body.class_token"] and not grad["trunk.body.encoder.pos_embedding"]
    assert not grad["trunk.body.conv_proj.weight"]
    assert grad["trunk.body.encoder.layers.encoder_layer_6.mlp.0.weight"] and grad["trunk.body.encoder.ln.weight"]
