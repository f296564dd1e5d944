"""Dense heads (segment, detect): their specs, default layers, the model's forward with maps, box selection."""
import pytest
import torch

from engine.errors import GraftError
from engine.network.dense_heads import (DetectHead, SegmentHead, build_dense_head, decoded_outputs, default_layers,
                                        select_boxes)
from engine.network.heads import HeadSpec
from engine.network.loading import load_network
from engine.network.preprocess import InputSpec
from engine.surgery.session import Session


@pytest.fixture(scope="module")
def resnet64():
    torch.manual_seed(0)
    session = Session(load_network("resnet18", random_init=True))
    session.model.input_spec = InputSpec(size=64, resize=73)
    session.probe_order()
    return session


def _add(session, spec):
    tree = session.tree
    spec.layers = spec.layers or default_layers(tree, session.model.input_spec.size)
    module = build_dense_head(spec, [tree.shapes[layer][0] for layer in spec.layers])
    session.insert_head(spec, module, len(session.model.heads))
    return module


def test_spec_rules():
    seg = HeadSpec("seg", "segment", labels=["bg", "a", "b"])
    assert seg.dense and seg.outputs == 3 and seg.ignore_index == 255 and seg.reads == "the default layers"
    assert HeadSpec.from_dict(HeadSpec("s", "segment", outputs=2, layers=["x.1", "x.2"], dice=0.5).to_dict()).layers == ["x.1", "x.2"]
    with pytest.raises(GraftError, match="at least 2 classes"):
        HeadSpec("s", "segment", outputs=1)
    with pytest.raises(GraftError, match="ignore value"):
        HeadSpec("s", "segment", outputs=4, ignore_index=2)
    with pytest.raises(GraftError, match="feature maps of layers"):
        HeadSpec("s", "detect", outputs=1, layer="features.3")
    with pytest.raises(GraftError, match="only segment and detect"):
        HeadSpec("c", "single", outputs=2, layers=["features.3"])
    with pytest.raises(GraftError, match="listed twice"):
        HeadSpec("d", "detect", outputs=1, layers=["a", "a"])
    with pytest.raises(GraftError, match=r"width \(16\) must be a multiple of 32"):  # was GroupNorm's ValueError
        HeadSpec("d", "detect", outputs=1, hidden=[16])
    assert HeadSpec("d", "detect", outputs=1, hidden=[96]).width == 96 and HeadSpec("s", "segment", hidden=[16]).width == 16
    assert HeadSpec("d", "detect", outputs=1).outputs == 1  # one object class is enough (no background)
    assert HeadSpec("c", "single", outputs=2, layer="layer3").read_layers == ["layer3"]


def test_default_layers_lite0_and_resnet(resnet64):
    assert default_layers(resnet64.tree, 64) == ["layer2", "layer3", "layer4"]
    lite = Session(load_network("efficientnet_lite0", random_init=True))
    assert default_layers(lite.tree, 224) == ["features.3", "features.5", "features.8"]


def test_forward_shapes_and_pooled_heads_unchanged(resnet64):
    from engine.network.graft_model import build_head

    torch.manual_seed(1)
    session = resnet64
    x = torch.randn(2, 3, 64, 64)
    cls = HeadSpec("cls", "single", outputs=2, layer="layer3")
    session.insert_head(cls, build_head(cls, 256), 0)
    with torch.no_grad():
        alone = session.model(x)["cls"]
    seg = HeadSpec("seg", "segment", outputs=3)
    box = HeadSpec("box", "detect", outputs=2, layers=["layer3", "layer4"])
    assert isinstance(_add(session, seg), SegmentHead) and isinstance(_add(session, box), DetectHead)
    assert session.model.has_dense_heads and session.model.trunk.taps == ("layer3",)
    assert session.model.trunk.map_taps == ("layer2", "layer3", "layer4")
    with torch.no_grad():
        out = session.model(x)
    assert list(out) == ["cls", "seg", "box"]
    assert torch.equal(out["cls"], alone)
    assert out["seg"].shape == (2, 3, 64, 64)
    assert out["box"].shape == (2, 4 * 4 + 2 * 2, 2 + 5)  # layer3 4x4 and layer4 2x2 cells, 2 classes + 5
    decoded = decoded_outputs(session.model, out, (64, 64))
    assert decoded["box"].shape == (2, 20, 4 + 2) and torch.equal(decoded["seg"], out["seg"])
    assert float(decoded["box"][..., :4].min()) >= 0 and float(decoded["box"][..., :4].max()) <= 64
    assert 0 <= float(decoded["box"][..., 4:].min()) and float(decoded["box"][..., 4:].max()) <= 1
    for name in ("cls", "seg", "box"):
        session.take_head(name)


def test_maps_only_stop_early(resnet64):
    """Dense heads alone on early layers: the layers after them never run."""
    session = resnet64
    _add(session, HeadSpec("seg", "segment", outputs=2, layers=["layer1", "layer2"]))
    ran = []
    handle = session.model.trunk.body.layer4.register_forward_hook(lambda *a: ran.append(1))
    try:
        assert session.model.trunk.taps == ()
        with torch.no_grad():
            out = session.model(torch.randn(1, 3, 64, 64))
        assert out["seg"].shape == (1, 2, 64, 64) and not ran
    finally:
        handle.remove()
        session.take_head("seg")


def test_default_layers_refused_without_maps():
    vit = Session(load_network("vit_b_16", random_init=True))
    with pytest.raises(GraftError, match="name them"):
        default_layers(vit.tree, 224)


def test_select_boxes_nms_per_class():
    spec = HeadSpec("box", "detect", outputs=2, score_threshold=0.3, nms_iou=0.5)
    decoded = torch.tensor([[[0, 0, 10, 10, 0.9, 0.0],   # class 0, best
                             [1, 1, 10, 10, 0.8, 0.0],   # overlaps it (IoU 0.81): suppressed
                             [1, 1, 10, 10, 0.0, 0.7],   # the same place, class 1: kept
                             [20, 20, 30, 30, 0.2, 0.1],  # below the threshold
                             ]])
    (found,) = select_boxes(decoded, spec)
    assert found["labels"].tolist() == [0, 1]
    assert found["scores"].tolist() == pytest.approx([0.9, 0.7])
    assert found["boxes"].tolist() == [[0, 0, 10, 10], [1, 1, 10, 10]]
    assert len(select_boxes(decoded, HeadSpec("box", "detect", outputs=2, max_detections=1))[0]["labels"]) == 1
