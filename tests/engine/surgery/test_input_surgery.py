"""Input surgeries: the number of input channels (first convolution adapted from its RGB kernels) and the
input size, undoable, saved in projects, refused cleanly for bad input."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from engine.errors import GraftError
from engine.network.loading import LoadedNetwork, ModelSource, load_network
from engine.network.preprocess import InputSpec
from engine.project.project_file import open_project, save_project
from engine.surgery.operations import (AddHead, DeleteOutputLayer, Operation, SetInputChannels, SetInputSize,
                                       SetTrainable, adapt_kernels)
from engine.surgery.session import Session
from engine.network.heads import HeadSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_one_channel_sums_the_rgb_kernels_and_reads_grey(resnet_session):
    s = resnet_session
    conv = s.model.trunk.body.conv1
    rgb, spec = conv.weight, s.input_spec
    s.do(SetInputChannels(1))
    assert conv.in_channels == 1 and tuple(conv.weight.shape) == (64, 1, 7, 7)
    assert torch.allclose(conv.weight[:, 0], rgb.detach().sum(dim=1))
    new = s.input_spec
    assert (new.channels, new.channel_order) == (1, "L") and new.problem() is None
    assert new.mean == pytest.approx([sum(spec.mean) / 3]) and new.std == pytest.approx([sum(spec.std) / 3])
    assert s.model.dummy_input(2).shape == (2, 1, 224, 224)
    assert s.tree.node("conv1").out_shape == (64, 112, 112) and s.tree.shape_error is None
    # a grey image through the adapted conv gives what the replicated grey RGB image gave with equal stats
    grey = torch.rand(1, 1, 16, 16)
    assert torch.allclose(nn.functional.conv2d(grey, conv.weight), nn.functional.conv2d(grey.expand(1, 3, 16, 16), rgb),
                          atol=1e-5)


def test_extra_channels_keep_rgb_and_start_from_their_mean(mobilenet_session):
    s = mobilenet_session
    conv = s.model.trunk.body.features[0][0]
    rgb = conv.weight.detach().clone()
    s.do(SetInputChannels(5))
    w = conv.weight.detach()
    assert w.shape[1] == 5 and torch.equal(w[:, :3], rgb)
    assert torch.allclose(w[:, 3], rgb.mean(dim=1)) and torch.allclose(w[:, 4], rgb.mean(dim=1))
    spec = s.input_spec
    assert spec.channel_order == "RGB+2" and len(spec.mean) == len(spec.std) == 5
    assert spec.mean[:3] == [0.485, 0.456, 0.406] and spec.mean[3] == spec.mean[4] == pytest.approx(sum(spec.mean[:3]) / 3)
    out = s.model(torch.randn(2, 5, 64, 64))["output"]
    assert out.shape == (2, 1000) and torch.isfinite(out).all()


def test_undo_restores_the_first_conv_exactly_and_redo_brings_back_the_adapted_one(resnet_session):
    s = resnet_session
    conv = s.model.trunk.body.conv1
    before_param, before = conv.weight, state(s.model)
    spec = s.input_spec
    op = s.do(SetInputChannels(1))
    with torch.no_grad():
        conv.weight.add_(1.0)  # as if trained
    trained = conv.weight.detach().clone()
    s.history.undo()
    assert conv.weight is before_param and conv.in_channels == 3 and same_state(state(s.model), before)
    assert s.input_spec is spec and s.tree.node("conv1").out_shape == (64, 112, 112)
    s.history.redo()
    assert conv.weight is op.weight and torch.equal(conv.weight, trained) and s.input_spec.channels == 1


def test_a_second_change_adapts_from_the_original_rgb_kernels(resnet_session):
    s = resnet_session
    rgb = s.model.trunk.body.conv1.weight.detach().clone()
    rgb_spec = s.input_spec
    s.do(SetInputChannels(1))
    s.do(SetInputChannels(4))
    assert torch.equal(s.model.trunk.body.conv1.weight[:, :3], rgb)
    assert s.input_spec.mean[:3] == rgb_spec.mean
    s.do(SetInputChannels(3))
    assert torch.equal(s.model.trunk.body.conv1.weight, rgb) and s.input_spec.channel_order == "RGB"
    for _ in range(3):
        s.history.undo()
    assert torch.equal(s.model.trunk.body.conv1.weight, rgb) and s.input_spec is rgb_spec


def test_first_conv_is_found_in_forward_order_for_lite_and_vit():
    torch.manual_seed(0)
    lite = Session(load_network("efficientnet_lite0", random_init=True))
    lite.model.input_spec = InputSpec(size=64, resize=64, mean=lite.input_spec.mean, std=lite.input_spec.std)
    op = lite.do(SetInputChannels(1))
    assert op.layer == lite.tree.order[next(i for i, p in enumerate(lite.tree.order)
                                           if isinstance(lite.model.trunk.body.get_submodule(p), nn.Conv2d))]
    assert lite.model.trunk.body.get_submodule(op.layer).in_channels == 1
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                                               hidden_dim=16, mlp_dim=32, num_classes=3)
    s = Session(LoadedNetwork(vit.eval(), InputSpec(size=32, resize=32), ModelSource("file", "/x/vit.pt", format="pickle")))
    op = s.do(SetInputChannels(4))
    assert op.layer == "conv_proj" and s.model.trunk(torch.randn(1, 4, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("channels", [0, -1, 2, 65, True, 1.0, "1"])
def test_bad_channel_counts_are_refused(channels):
    with pytest.raises(GraftError, match="input channels"):
        SetInputChannels(channels)


class NoConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(x.flatten(1))


class FirstConvNotRgb(nn.Module):
    def __init__(self, groups: int = 1) -> None:
        super().__init__()
        self.squeeze = nn.Conv2d(3, 3, 1, groups=groups) if groups > 1 else nn.Identity()
        self.grey = nn.Conv2d(1, 4, 3) if groups == 1 else nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.grey(x.mean(dim=1, keepdim=True) if isinstance(self.squeeze, nn.Identity) else self.squeeze(x))


@pytest.mark.parametrize("body, message", [
    (NoConv(), "no convolution that reads the image"),
    (FirstConvNotRgb(), r"first convolution \(grey\) reads 1 channels"),
    (FirstConvNotRgb(groups=3), "grouped"),
])
def test_a_network_without_an_rgb_first_conv_is_refused_unchanged(body, message):
    s = Session(LoadedNetwork(body.eval(), InputSpec(size=8, resize=8), ModelSource("file", "/x/n.pt", format="pickle")))
    before, spec = state(s.model), s.input_spec
    with pytest.raises(GraftError, match=message):
        s.do(SetInputChannels(1))
    assert same_state(state(s.model), before) and s.input_spec is spec and not s.history.can_undo


def test_the_same_channel_count_is_refused(resnet_session):
    with pytest.raises(GraftError, match="already reads 3 input channels"):
        resnet_session.do(SetInputChannels(3))


def test_input_size_follows_in_preprocessing_tree_and_heads(resnet_session):
    s = resnet_session
    s.do(DeleteOutputLayer())
    s.do(AddHead(HeadSpec("kind", "single", labels=["a", "b"]), seed=0))
    head = s.model.heads["kind"]
    spec = s.input_spec
    s.do(SetInputSize(320))
    assert (s.input_spec.size, s.input_spec.resize) == (320, 366)  # the resize keeps its ratio (256/224)
    assert s.tree.node("layer4").out_shape == (512, 10, 10) and s.model.dummy_input().shape[-1] == 320
    assert s.model.heads["kind"] is head  # the pooled features keep their size: the head stays
    s.history.undo()
    assert s.input_spec is spec and s.tree.node("layer4").out_shape == (512, 7, 7)
    s.do(SetInputSize(96, resize=100))
    assert (s.input_spec.size, s.input_spec.resize) == (96, 100) and s.tree.node("layer4").out_shape == (512, 3, 3)


def test_an_input_too_small_for_the_strides_is_refused_unchanged(mobilenet_session):
    s = mobilenet_session
    before, spec, shapes = state(s.model), s.input_spec, dict(s.tree.shapes)
    with pytest.raises(GraftError, match=r"16×16 is too small.*shrinks its input 32×.*at least 32×32"):
        s.do(SetInputSize(16))
    assert s.input_spec is spec and s.tree.shapes == shapes and same_state(state(s.model), before)
    assert not s.history.can_undo and s.tree.shape_error is None
    s.do(SetInputSize(32))  # exactly the stride: each deepest map is one pixel
    assert s.tree.node("features.12").out_shape[1:] == (1, 1)


def test_a_network_of_fixed_input_size_refuses_another():
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=1, num_heads=2,
                                               hidden_dim=16, mlp_dim=32, num_classes=3)
    s = Session(LoadedNetwork(vit.eval(), InputSpec(size=32, resize=32), ModelSource("file", "/x/vit.pt", format="pickle")))
    spec = s.input_spec
    with pytest.raises(GraftError, match="was not done: the network would no longer run"):
        s.do(SetInputSize(48))
    assert s.input_spec is spec and s.tree.shape_error is None and s.tree.feature_dim == 3


@pytest.mark.parametrize("size", [0, -4, 1.5, True, 5000, "224"])
def test_bad_sizes_are_refused(size):
    with pytest.raises(GraftError, match="input size must be a whole number"):
        SetInputSize(size)


@pytest.mark.slow
def test_projects_save_and_reopen_the_input_surgeries(tmp_path):
    torch.manual_seed(0)
    s = Session(load_network("resnet18", random_init=True))
    s.model.input_spec = InputSpec(size=64, resize=72)
    s.do(DeleteOutputLayer())
    s.do(SetInputChannels(1))
    s.do(AddHead(HeadSpec("kind", "single", labels=["a", "b"]), seed=0))
    s.do(SetInputSize(96))
    s.do(SetTrainable("heads_only"))
    with torch.no_grad():
        s.model.trunk.body.conv1.weight.mul_(1.5)  # trained: the project keeps it
    x = torch.randn(2, 1, 96, 96)
    s.model.eval()
    expected = s.model(x)["kind"]
    path = save_project(s, tmp_path / "grey.graft")
    recipe_ops = [o["op"] for o in s.recipe()]
    assert "input_channels" in recipe_ops and "input_size" in recipe_ops

    r = open_project(path)
    assert r.input_spec == s.input_spec and r.input_spec.channels == 1
    assert r.tree.node("conv1").out_shape == (64, 48, 48)
    r.model.eval()
    assert torch.equal(r.model(x)["kind"], expected)
    assert [op.text for op in r.history.done][-4:] == ["Input channels: 1 (greyscale)", "Add head 'kind'",
                                                       "Input size: 96×96", "Train only the heads"]
    for _ in range(3):
        r.history.undo()
    assert r.input_spec.channels == 1 and r.input_spec.size == 224  # the source's own size, before the ops
    r.history.undo()
    assert r.model.trunk.body.conv1.in_channels == 3 and r.input_spec.channels == 3


def test_recipe_entries_round_trip_and_damaged_ones_are_refused():
    for op in (SetInputChannels(4), SetInputSize(320, resize=350)):
        again = Operation.from_dict(op.to_dict())
        assert type(again) is type(op) and again.to_dict() == op.to_dict()
    with pytest.raises(GraftError, match="input channels"):
        Operation.from_dict({"op": "input_channels", "channels": 0})
    with pytest.raises(GraftError, match="operation 'input_size'"):
        Operation.from_dict({"op": "input_size"})


def test_adapt_kernels_shapes():
    rgb = torch.randn(8, 3, 3, 3)
    assert adapt_kernels(rgb, 1).shape == (8, 1, 3, 3)
    assert torch.equal(adapt_kernels(rgb, 3), rgb)
    assert adapt_kernels(rgb, 7).shape == (8, 7, 3, 3)
