"""Heads on any layer: what a head at a layer reads, what the trunk no longer computes, and that undo,
redo, projects, training on cached features and the ONNX export treat such heads as they treat heads at
the end."""
from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from engine.errors import GraftError
from engine.network.graft_model import pool_layer, pooled_size
from engine.network.heads import HeadSpec
from engine.network.loading import LoadedNetwork, ModelSource
from engine.network.preprocess import InputSpec
from engine.surgery.operations import AddHead, CutAt, DeleteOutputLayer, RemoveHead, SetInputSize, UpdateHead
from engine.surgery.session import Session


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def _small(session: Session, *heads: HeadSpec) -> Session:
    """The session at a 64 px input (every test runs in a fraction of the time); with ``heads``, its output
    layer deleted and those heads added."""
    session.do(SetInputSize(64))
    if heads:
        session.do(DeleteOutputLayer())
    for seed, spec in enumerate(heads):
        session.do(AddHead(spec, seed=seed))
    return session


def _calls(module: nn.Module, counter: dict[str, int], name: str):
    def hook(*_):
        counter[name] = counter.get(name, 0) + 1
    return module.register_forward_pre_hook(hook)


def test_a_head_at_a_layer_reads_exactly_that_layers_pooled_output(resnet_session):
    s = _small(resnet_session, HeadSpec("early", "single", outputs=3, layer="layer2"),
               HeadSpec("late", "multi", outputs=2))
    assert s.head_input_sizes() == {"early": 128, "late": 512}
    seen = {}
    body = s.model.trunk.body
    handle = body.layer2.register_forward_hook(lambda m, a, out: seen.setdefault("layer2", out.detach().clone()))
    end = body.avgpool.register_forward_hook(lambda m, a, out: seen.setdefault("end", out.detach().clone()))
    s.model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = s.model.trunk(x)
        out = s.model(x)
    handle.remove()
    end.remove()
    pooled = seen["layer2"].mean(dim=(2, 3))
    assert features.shape == (2, 128 + 512)
    assert torch.equal(features[:, :128], pooled)
    assert torch.equal(features[:, 128:], seen["end"].flatten(1))
    with torch.no_grad():
        assert torch.equal(out["early"], s.model.heads["early"](pooled))
        assert torch.equal(out["late"], s.model.heads["late"](seen["end"].flatten(1)))


def test_later_layers_are_never_called_when_no_head_needs_them(resnet_session):
    s = _small(resnet_session, HeadSpec("a", "single", outputs=2, layer="layer2"),
               HeadSpec("b", "single", outputs=2, layer="layer1.1"))
    body = s.model.trunk.body
    counts: dict[str, int] = {}
    handles = [_calls(getattr(body, n), counts, n) for n in ("layer1", "layer2", "layer3", "layer4", "avgpool")]
    with torch.no_grad():
        s.model.eval()(torch.randn(2, 3, 64, 64))
    for h in handles:
        h.remove()
    assert counts == {"layer1": 1, "layer2": 1}
    unused = s.unused_layers()
    assert {"layer3", "layer3.0.conv1", "layer4", "avgpool"} <= unused and not unused & {"layer1", "layer2", "layer2.1"}
    assert s.tree.node("layer3").unused and s.tree.node("layer4.1.bn2").unused and not s.tree.node("layer2").unused
    assert s.tree.node("layer2").read_by == ("a",) and s.tree.node("@heads.a").read_by == ("layer2",)
    s.do(AddHead(HeadSpec("end", "single", outputs=2), seed=0))  # a head at the end needs every layer again
    assert not s.unused_layers() and not s.tree.node("layer4").unused


def test_token_sequences_give_the_class_token_or_the_mean():
    from torchvision.models import VisionTransformer

    vit = VisionTransformer(image_size=32, patch_size=16, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32)
    s = Session(LoadedNetwork(vit.eval(), InputSpec(size=32, resize=32), ModelSource("builtin", "tiny-vit")))
    s.do(AddHead(HeadSpec("cls", "single", outputs=2, layer="encoder.layers.encoder_layer_0"), seed=0))
    seen = {}
    vit.encoder.layers.encoder_layer_0.register_forward_hook(lambda m, a, out: seen.setdefault("tokens", out),
                                                             prepend=True)  # before the trunk's stop
    with torch.no_grad():
        features = s.model.trunk(torch.randn(1, 3, 32, 32))
    assert seen["tokens"].shape == (1, 5, 16)  # the class token, then 2×2 patches
    assert torch.equal(features, seen["tokens"][:, 0])
    nhwc = torch.randn(2, 7, 7, 96)  # torchvision's Swin lays its maps out channels-last
    assert pooled_size((7, 7, 96)) == 96 and torch.equal(pool_layer(nhwc), nhwc.mean(dim=(1, 2)))
    nchw = torch.randn(2, 7, 7, 7)
    assert pooled_size((7, 7, 7)) == 7 and torch.equal(pool_layer(nchw), nchw.mean(dim=(2, 3)))
    no_class_token = torch.randn(2, 7, 16)
    assert torch.equal(pool_layer(no_class_token, None), no_class_token.mean(dim=1))
    assert torch.equal(pool_layer(no_class_token, 5), no_class_token.mean(dim=1))  # another length: no class token


class _Odd(nn.Module):
    """A small network with layers no head can read: a 5-D volume and a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.volume = _Unsqueeze()
        self.flat = _Squeeze()
        self.named = _AsDict()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        x = self.flat(self.volume(self.conv(x)))
        x = self.named(x)["x"]
        return self.fc(self.pool(x).flatten(1))


class _Unsqueeze(nn.Module):
    def forward(self, x):
        return x.unsqueeze(2)


class _Squeeze(nn.Module):
    def forward(self, x):
        return x.squeeze(2)


class _AsDict(nn.Module):
    def forward(self, x):
        return {"x": x}


@pytest.mark.parametrize("layer, message", [
    ("volume", "cannot be pooled to a vector"),
    ("named", "gives no tensor"),
    ("nope", "no layer 'nope'"),
])
def test_a_layer_a_head_cannot_read_is_refused_and_nothing_changes(layer, message):
    s = Session(LoadedNetwork(_Odd().eval(), InputSpec(size=16, resize=16), ModelSource("builtin", "odd")))
    before = s.recipe(), s.model.trunk.taps
    with pytest.raises(GraftError, match=message):
        s.do(AddHead(HeadSpec("h", "single", outputs=2, layer=layer)))
    assert (s.recipe(), s.model.trunk.taps) == before and not s.heads and not len(s.model.heads)
    s.do(AddHead(HeadSpec("h", "single", outputs=2, layer="conv")))  # a map: fine
    assert s.head_input_sizes() == {"h": 4}


def test_a_cut_or_delete_that_would_remove_a_heads_layer_is_refused(resnet_session):
    s = _small(resnet_session)
    s.do(AddHead(HeadSpec("a", "single", outputs=2, layer="fc"), seed=0))
    with pytest.raises(GraftError, match="head 'a' reads"):
        s.do(DeleteOutputLayer())
    s.do(RemoveHead("a"))
    s.do(AddHead(HeadSpec("b", "single", outputs=2, layer="layer3.1"), seed=0))
    recipe = s.recipe()
    with pytest.raises(GraftError, match="head 'b' reads"):
        s.do(CutAt("layer2"))
    with pytest.raises(GraftError, match="inside layer 'layer3.1'"):
        s.do(CutAt("layer3.1.conv1"))
    assert s.recipe() == recipe and s.model.trunk.cut_at is None and s.head_input_sizes() == {"b": 256}
    s.do(CutAt("layer3.1"))  # the cut at the head's own layer keeps it
    assert s.head_input_sizes() == {"b": 256} and s.model.trunk.cut_at == "layer3.1"


def test_undo_redo_and_editing_a_heads_layer(resnet_session):
    s = _small(resnet_session, HeadSpec("a", "single", outputs=2, layer="layer2"))
    assert s.model.trunk.taps == ("layer2",) and s.applied[-1].text == "Add head 'a' at layer2"
    s.history.undo()
    assert s.model.trunk.taps == (None,) and not s.unused_layers()
    s.history.redo()
    assert s.model.trunk.taps == ("layer2",) and "layer4" in s.unused_layers()
    s.do(UpdateHead("a", HeadSpec("a", "single", outputs=2, layer="layer3")))
    assert s.head_input_sizes() == {"a": 256} and s.model.trunk.taps == ("layer3",)
    s.history.undo()
    assert s.head_input_sizes() == {"a": 128} and s.model.trunk.taps == ("layer2",)


def test_a_project_reopens_with_its_heads_on_their_layers(resnet_session, tmp_path):
    from engine.project.project_file import open_project, save_project

    s = _small(resnet_session, HeadSpec("a", "single", outputs=3, layer="layer2"),
               HeadSpec("b", "regression", outputs=1, layer="layer1.0"))
    path = save_project(s, tmp_path / "two-exit.graft")
    r = open_project(path)
    assert [(h.name, h.layer) for h in r.heads] == [("a", "layer2"), ("b", "layer1.0")]
    assert r.model.trunk.taps == ("layer2", "layer1.0") and r.unused_layers() == s.unused_layers()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        want, got = s.model.eval()(x), r.model.eval()(x)
    assert all(torch.equal(want[k], got[k]) for k in ("a", "b"))


def test_one_cached_pass_trains_heads_on_two_layers_without_the_later_ones(resnet_session, tiny_folder):
    from engine.data.loading import load_data
    from engine.surgery.operations import freeze_preset
    from engine.training.config import TrainConfig
    from engine.training.trainer import Trainer

    s = _small(resnet_session, HeadSpec("early", "single", labels=["circle", "square"], layer="layer1"),
               HeadSpec("class", "single", labels=["circle", "square"], layer="layer2"))
    s.do(freeze_preset("heads-only"))
    data = load_data(tiny_folder, [HeadSpec("class", "single")])
    data.heads.append(HeadSpec("early", "single", labels=data.heads[0].labels, columns=[]))
    for sample in data.train + data.val:
        sample.targets["early"] = sample.targets["class"]
    counts: dict[str, int] = {}
    body = s.model.trunk.body
    handles = [_calls(getattr(body, n), counts, n) for n in ("layer2", "layer3")]
    before = {k: v.clone() for k, v in s.model.heads.state_dict().items()}
    result = Trainer(s, data, TrainConfig(epochs=2, batch_size=8, augment=False, device="cpu")).run()
    for h in handles:
        h.remove()
    assert result.cached_features and result.reason == "completed"
    assert counts.get("layer3", 0) == 0
    assert counts["layer2"] == -(-len(data.train) // 16) + -(-len(data.val) // 16)  # one pass, batches of 16
    after = s.model.heads.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in ("early.0.weight", "class.0.weight"))


def test_the_export_gives_each_exit_its_own_output_and_leaves_later_layers_out(resnet_session, tmp_path):
    from engine.export.onnx_export import export_onnx

    s = _small(resnet_session, HeadSpec("shape", "single", outputs=4, layer="layer2"),
               HeadSpec("size", "regression", outputs=1, layer="layer1"))
    report = export_onnx(s, tmp_path / "two-exit.onnx")
    assert report.verified and report.outputs == ["shape", "size"]
    proto = onnx.load(str(tmp_path / "two-exit.onnx"))
    assert [o.name for o in proto.graph.output] == ["shape", "size"]
    kept = sum(int(torch.tensor(list(t.dims)).prod()) for t in proto.graph.initializer)
    up_to_layer2 = sum(p.numel() for n, p in s.model.named_parameters()
                       if not n.startswith(("trunk.body.layer3", "trunk.body.layer4", "trunk.body.fc")))
    assert kept <= up_to_layer2 + 1000  # layer3 and layer4 (10 M of resnet18's 11 M weights) are not in the file
    reads = {o["name"]: o["reads"] for o in report.metadata["outputs"]}
    assert reads == {"shape": "layer2", "size": "layer1"}
