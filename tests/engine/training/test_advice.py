"""engine.training.advice: the freezing rule of thumb, and the trunk block it picks."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from engine.training.advice import LARGE, SMALL, freeze_advice, freeze_index, trunk_blocks
from engine.network.layer_tree import LayerNode
from engine.network.loading import load_network
from engine.surgery.operations import CutAt, DeleteOutputLayer, freeze_preset
from engine.surgery.session import Session


@pytest.fixture(scope="module")
def resnet() -> Session:
    """One resnet18 session for the module; a test that edits it undoes its edits."""
    torch.manual_seed(0)
    return Session(load_network("resnet18", random_init=True))


def test_little_data_trains_the_heads_only():
    advice = freeze_advice(1234 if SMALL > 1234 else 500)
    assert advice.preset == "heads-only" and advice.layer is None
    assert freeze_advice(1).text.startswith("1 labelled image:")
    assert "heads only" in freeze_advice(999).text
    assert freeze_advice(0).preset == "heads-only"


def test_lots_of_data_fine_tunes_everything():
    advice = freeze_advice(LARGE)
    assert advice.preset == "none"
    assert advice.text == f"{LARGE:,} labelled images: enough to fine-tune everything."


def test_some_data_unfreezes_the_last_resnet_block(resnet):
    resnet_session = resnet
    assert [b.path for b in trunk_blocks(resnet_session)] == ["layer1", "layer2", "layer3", "layer4"]
    advice = freeze_advice(5000, resnet_session)
    assert advice.preset == "up-to:layer3" and advice.layer == "layer3"
    assert advice.text.startswith("5,000 labelled images: unfreeze the last blocks")
    assert "layer4" in advice.text
    # the preset is one the engine understands, and it leaves layer4 and the heads training
    resnet_session.do(freeze_preset(advice.preset))
    tree = resnet_session.tree
    assert tree.node("layer3").frozen_state == "frozen"
    assert tree.node("layer4").frozen_state == "trainable"
    resnet_session.history.undo()


def test_some_data_without_a_session_still_gives_a_safe_preset():
    advice = freeze_advice(5000)
    assert advice.preset == "heads-only" and "unfreeze" in advice.text


def test_efficientnet_style_features_are_descended_into(mobilenet_session):
    session = mobilenet_session  # features.0 … features.12, avgpool, classifier: the EfficientNet layout
    blocks = [b.path for b in trunk_blocks(session)]
    assert blocks and all(b.startswith("features.") for b in blocks)
    advice = freeze_advice(3000, session)
    assert advice.preset.startswith("up-to:features.")
    layer = advice.layer
    assert blocks.index(layer) == freeze_index(len(blocks)) < len(blocks) - 1


def test_blocks_follow_surgery(mobilenet_session):
    session = mobilenet_session
    session.do(DeleteOutputLayer())
    before = [b.path for b in trunk_blocks(session)]
    assert before[-1] == "features.12"
    session.do(CutAt("features.8"))
    after = [b.path for b in trunk_blocks(session)]
    assert after and after[-1] == "features.8"
    assert freeze_advice(2000, session).layer in after[:-1]


def test_freeze_index_leaves_a_block_to_train():
    assert freeze_index(2) == 0
    assert freeze_index(3) == 1
    assert freeze_index(4) == 2
    assert freeze_index(9) == 5
    for n in range(2, 40):
        assert 0 <= freeze_index(n) <= n - 2


def _node(path: str, params: int, children=()) -> LayerNode:
    node = LayerNode(name=path.rsplit(".", 1)[-1], path=path, params=params)
    for child in children:
        child.parent = node
        node.children.append(child)
    return node


def test_a_trunk_with_no_blocks_falls_back_to_the_heads():
    root = _node("", 0, [_node("only", 100)])
    session = SimpleNamespace(tree=SimpleNamespace(root=root, order=["only"]), output_layer=None)
    advice = freeze_advice(5000, session)
    assert advice.preset == "heads-only" and advice.layer is None


@pytest.mark.parametrize("n, preset", [(SMALL - 1, "heads-only"), (LARGE - 1, "up-to:"), (LARGE, "none")])
def test_thresholds(resnet, n, preset):
    assert freeze_advice(n, resnet).preset.startswith(preset)
