"""The trunk split at the unfreeze boundary: the cached lower half gives the uncached step's loss and gradients."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from engine.errors import GraftError
from engine.network.heads import HeadSpec
from engine.network.loading import LoadedNetwork, ModelSource
from engine.network.preprocess import InputSpec
from engine.surgery.operations import AddHead, DeleteOutputLayer, freeze_preset
from engine.surgery.session import Session
from engine.training.boundary import boundary_for, split_trunk
from engine.training.losses import compute_losses

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HEADS = [HeadSpec("kind", labels=["a", "b", "c"]), HeadSpec("tags", kind="multi", labels=["x", "y"]),
         HeadSpec("size", kind="regression", labels=["w"])]


def block(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.BatchNorm2d(cout), nn.ReLU())


def tiny_session(body: nn.Module, freeze: str) -> Session:
    torch.manual_seed(0)
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        body.train()(torch.randn(16, 3, 32, 32) * 2 + 0.5)
    session = Session(LoadedNetwork(body.eval(), InputSpec(size=32, resize=32),
                                    ModelSource("file", "/x/tiny.pt", format="pickle")))
    session.do(DeleteOutputLayer())
    for h in HEADS:
        session.do(AddHead(h, seed=0))
    session.do(freeze_preset(freeze))
    return session


def chain() -> nn.Module:
    return nn.Sequential(nn.Sequential(block(3, 8, 1), block(8, 8, 2), block(8, 16, 2), block(16, 16, 1),
                                       block(16, 32, 2)), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 5))


def targets(n: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {"kind": torch.randint(3, (n,), generator=g), "tags": torch.randint(2, (n, 2), generator=g).float(),
            "size": torch.randn(n, 1, generator=g)}


def loss_and_grads(session: Session, forward) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = session.model
    model.zero_grad(set_to_none=True)
    total = compute_losses(session.heads, forward(), targets(6), {}).total
    total.backward()
    return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", ["chain", "resnet18"])
def test_cached_boundary_gives_the_uncached_loss_and_gradients(arch):
    if arch == "chain":
        session = tiny_session(chain(), "up-to:0.2")
    else:
        from torchvision.models import resnet18

        torch.manual_seed(0)
        session = tiny_session(resnet18(num_classes=5), "up-to:layer2")
    boundary = boundary_for(session)
    assert boundary == ("0.2" if arch == "chain" else "layer2")
    model = session.model
    split = split_trunk(model.trunk, boundary, torch.randn(2, 3, 32, 32))
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    model.train()  # frozen BatchNorm stays in eval mode (GraftModel.train); the trained blocks' BN use the batch
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plain_loss, plain_grads = loss_and_grads(session, lambda: model(x))
    model.load_state_dict(state)  # the trained blocks' BatchNorm running statistics as before
    with torch.no_grad():
        split.lower_eval()
        z = split.lower(x)
    model.train()
    split.lower_eval()
    cached_loss, cached_grads = loss_and_grads(session, lambda: model.forward_heads(split.upper(z)))
    assert torch.allclose(cached_loss, plain_loss, rtol=1e-5, atol=1e-6)
    assert set(cached_grads) == set(plain_grads) and any(n.startswith("trunk.") for n in plain_grads)
    for name, g in plain_grads.items():
        assert torch.allclose(cached_grads[name], g, rtol=1e-4, atol=1e-6), name
    # the running statistics of the trained blocks moved the same way; the frozen ones not at all
    after = model.state_dict()
    for k, v in state.items():
        if "running_mean" in k and k.startswith("trunk.body.0.0") and arch == "chain":
            assert torch.equal(after[k], v), k
    # nothing of the split is left on the modules
    assert all("forward" not in m.__dict__ for m in split.lower_modules())
    with torch.no_grad():
        model.eval()
        assert torch.allclose(model.trunk(x), split.upper(split.lower(x)), atol=1e-5)


class SkipOver(nn.Module):
    """Its last layer reads the first block's output as well as the boundary's: no clean cut there."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = block(3, 8, 1), block(8, 8, 1), block(8, 8, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        first = self.a(x)
        return self.fc(self.pool(self.c(self.b(first)) + first).flatten(1))


def test_a_network_whose_later_layers_read_past_the_boundary_is_refused():
    session = tiny_session(SkipOver(), "up-to:b")
    with pytest.raises(GraftError, match="read more than the boundary"):
        split_trunk(session.model.trunk, "b", torch.randn(2, 3, 32, 32))


def test_no_boundary_when_all_or_nothing_trains_and_heads_below_it_are_refused():
    assert boundary_for(tiny_session(chain(), "heads-only")) is None
    assert boundary_for(tiny_session(chain(), "none")) is None
    session = tiny_session(chain(), "up-to:0.2")
    session.do(AddHead(HeadSpec("early", labels=["p", "q"], layer="0.1"), seed=0))
    with pytest.raises(GraftError, match="reads layer 0.1"):
        split_trunk(session.model.trunk, "0.2", torch.randn(2, 3, 32, 32))


def test_a_trained_layer_below_the_boundary_is_refused():
    session = tiny_session(chain(), "up-to:0.2")
    for p in session.model.trunk.body[0][0].parameters():  # the stem trains although blocks above it do not
        p.requires_grad_(True)
    with pytest.raises(GraftError, match="Layer 0.0, before the boundary 0.2, trains"):
        split_trunk(session.model.trunk, "0.2", torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("said, says", [
    ("the frozen trunk runs in onnxruntime (converted and checked against PyTorch in 0.5 s)",
     "the frozen layers up to 0.2 run in onnxruntime (converted and checked against PyTorch in 0.5 s)"),
    ("the trunk runs in PyTorch: it does not convert to ONNX (no)", "the layers up to 0.2 run in PyTorch: it does")])
def test_the_lower_half_s_conversion_note_names_its_layers_in_plural(monkeypatch, said, says):
    from types import SimpleNamespace

    from engine.runtime import onnx_trunk
    from engine.training.boundary import lower_runner

    session = tiny_session(chain(), "up-to:0.2")
    split = split_trunk(session.model.trunk, "0.2", torch.randn(2, 3, 32, 32))
    monkeypatch.setattr(onnx_trunk, "enabled", lambda: True)
    monkeypatch.setattr(onnx_trunk, "convert_trunk", lambda *a, **k: SimpleNamespace(onnx=None, note=said))
    runner, note = lower_runner(split, session.input_spec, 10_000, torch.device("cpu"))
    assert runner is None and note.startswith(says)


# -- in the trainer ----------------------------------------------------------------------------------

def run(session, data, **config):
    from engine.training.trainer import MessageEvent, TrainConfig, Trainer

    messages = []
    cfg = TrainConfig(epochs=2, batch_size=8, device="cpu", patience=0, seed=0, **config)
    result = Trainer(session, data, cfg, lambda e: messages.append(e.text) if isinstance(e, MessageEvent) else None).run()
    return result, messages


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.slow
def test_the_trainer_with_the_boundary_cache_trains_as_without_it(demo_data, small_session, monkeypatch,
                                                                  channels_last):
    from dataclasses import replace

    from engine.training import features, setup

    monkeypatch.setattr(features, "CHANNELS_LAST_ON_CPU", channels_last)  # the cached run's top layers
    monkeypatch.setattr(setup, "CHANNELS_LAST_ON_CPU", False)  # the uncached run as the reference: contiguous
    data = replace(demo_data, train=demo_data.train[:24], val=demo_data.val[:8])
    runs = {}
    for cache in (False, "auto"):
        session = small_session(demo_data.heads, arch="resnet18", freeze="up-to:layer3", size=32)
        start = {k: v.clone() for k, v in session.model.state_dict().items()}
        result, messages = run(session, data, augment=False, boundary_cache=cache)
        runs[cache] = (result, messages, {k: v.clone() for k, v in session.model.state_dict().items()})
    (plain, _, plain_state), (cached, notes, cached_state) = runs[False], runs["auto"]
    assert not plain.boundary_cached and cached.boundary_cached and not cached.cached_features
    assert any("Only the layers after layer3 train" in m for m in notes)
    assert [e["train_loss"] for e in cached.history] == pytest.approx([e["train_loss"] for e in plain.history], rel=1e-4)
    assert [e["val_loss"] for e in cached.history] == pytest.approx([e["val_loss"] for e in plain.history], rel=1e-4)
    # AdamW's steps: the same to within float rounding, against how far training moved each weight. In
    # channels-last the convolutions round differently, and AdamW's first steps (about lr x the gradient's
    # sign) turn that into up to 2 lr for weights whose gradient is near 0: compared on average there.
    for k, v in plain_state.items():
        if v.is_floating_point() and not torch.equal(v, start[k]):
            moved, diff = (v - start[k]).abs(), (cached_state[k] - v).abs()
            if channels_last:
                assert float(diff.mean()) <= 0.05 * float(moved.mean()), k
            else:
                assert float(diff.max()) <= 0.02 * float(moved.max()), k
    changed = [k for k, v in plain_state.items() if k.startswith("trunk.body.layer4") and v.is_floating_point()]
    assert changed and all(cached_state[k].is_contiguous() for k in changed)  # channels-last is undone


def test_augmented_views_are_cached_at_the_boundary(demo_data, small_session):
    from dataclasses import replace

    data = replace(demo_data, train=demo_data.train[:16], val=demo_data.val[:4])
    session = small_session(demo_data.heads, arch="resnet18", freeze="up-to:layer3", size=32)
    result, messages = run(session, data, augment=True, boundary_views=3)
    assert result.boundary_cached and result.reason == "completed" and result.epochs_run == 2
    assert any("3 augmented views of each of the 16 training images" in m for m in messages)
    session = small_session(demo_data.heads, arch="resnet18", freeze="up-to:layer3", size=32)
    result, messages = run(session, data, augment=True, boundary_cache=True, unfreeze_every=1)
    assert not result.boundary_cached
    assert any("not cached: gradual unfreezing" in m for m in messages)


def test_a_trunk_training_on_a_cpu_runs_channels_last_and_ends_contiguous(demo_data, small_session):
    from dataclasses import replace

    data = replace(demo_data, train=demo_data.train[:8], val=demo_data.val[:4])
    session = small_session(demo_data.heads, arch="resnet18", freeze="none", size=32)
    seen = []
    conv = session.model.trunk.body.layer1[0].conv1
    handle = conv.register_forward_pre_hook(
        lambda m, args: seen.append((m.training, args[0].is_contiguous(memory_format=torch.channels_last))))
    try:
        result, _ = run(session, data, augment=True)
    finally:
        handle.remove()
    assert result.reason == "completed" and not result.boundary_cached
    assert seen and all(cl for training, cl in seen if training)
    assert all(p.is_contiguous() for p in session.model.parameters())
