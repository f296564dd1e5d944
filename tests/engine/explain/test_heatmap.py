"""engine.explain.heatmap / layers / activations: Grad-CAM where the evidence is, token grids, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from explain_shapes import CROP, draw, quadrant_centre
from PIL import Image
from torch import nn

from engine.errors import GraftError
from engine.explain.activations import activations
from engine.explain.heatmap import explain, save_heatmaps
from engine.explain.layers import default_layer, from_grid, resolve_layer, spatial_form, spatial_layers, to_grid
from engine.network.heads import HeadSpec
from engine.network.loading import LoadedNetwork, ModelSource, load_network
from engine.network.preprocess import InputSpec
from engine.surgery.operations import AddHead, CutAt, DeleteOutputLayer, freeze_preset
from engine.surgery.session import Session

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # 2 shared cores: one thread each


def quadrant_means(values: np.ndarray) -> list[float]:
    h, w = values.shape
    return [float(values[:h // 2, :w // 2].mean()), float(values[:h // 2, w // 2:].mean()),
            float(values[h // 2:, :w // 2].mean()), float(values[h // 2:, w // 2:].mean())]


@pytest.mark.parametrize("quadrant", [0, 1, 2, 3])
@pytest.mark.slow
def test_the_heatmap_peaks_where_the_shape_is(trained, quadrant):
    image = draw("star", quadrant_centre(quadrant), radius=36, colour=(220, 180, 30), grey=140)
    (hm,) = explain(trained.session, image, target="star")
    assert hm.head == "class" and hm.target == "star" and hm.layer == "features" and hm.grid == (7, 7)
    assert hm.values.dtype == np.float32 and hm.values.shape == (224, 224)
    assert 0.0 <= hm.values.min() and hm.values.max() == pytest.approx(1.0)
    y, x = np.unravel_index(int(np.argmax(hm.values)), hm.values.shape)
    assert (int(y >= 112) * 2 + int(x >= 112)) == quadrant, (x, y)
    means = quadrant_means(hm.values)
    assert means[quadrant] == max(means) and means[quadrant] > 2 * np.mean([m for i, m in enumerate(means)
                                                                            if i != quadrant])
    # The head answers star, and the overlay is drawn over the model's input (the resized, cropped canvas).
    assert hm.predicted and hm.score > 0.5
    assert hm.image.size == (224, 224)
    assert np.array_equal(np.asarray(hm.image), np.asarray(image.crop((CROP[0], CROP[1], CROP[0] + 224,
                                                                       CROP[1] + 224))))
    assert hm.overlay().size == (224, 224)


def test_a_named_class_and_the_answer(trained):
    image = draw("circle", quadrant_centre(3), colour=(40, 90, 220))
    answer, = explain(trained.session, image)
    assert answer.target == "circle" and answer.predicted
    other, = explain(trained.session, image, target="star")
    assert other.target == "star" and not other.predicted and other.answer.startswith("circle")
    assert other.score == pytest.approx(1 - answer.score, abs=1e-5)
    with pytest.raises(GraftError, match="no class 'dog'.*star"):
        explain(trained.session, image, target="dog")
    with pytest.raises(GraftError, match="no head 'colour'"):
        explain(trained.session, image, heads=["colour"])


def test_files_written_per_image_and_head(trained, tmp_path):
    path = tmp_path / "star in corner.png"
    draw("star", quadrant_centre(1)).save(path)
    heatmaps = explain(trained.session, path)
    written = save_heatmaps(heatmaps, path, tmp_path)
    assert [p.name for p in written] == ["star in corner.class.png", "star in corner.class.npy"]
    values = np.load(tmp_path / "star in corner.class.npy")
    assert values.dtype == np.float32 and values.shape == (224, 224) and np.array_equal(values, heatmaps[0].values)
    assert Image.open(tmp_path / "star in corner.class.png").size == (224, 224)


def test_activations_show_the_strongest_channels(trained):
    image = draw("star", quadrant_centre(0))
    act = activations(trained.session, image, count=9)
    assert act.layer == "features" and act.maps.shape == (9, 7, 7) and len(act.channels) == 9
    assert act.strengths == sorted(act.strengths, reverse=True)
    assert act.maps.min() >= 0 and act.maps.max() <= 1
    assert act.grid_image(columns=3, cell=20, gap=2).size == (64, 64)
    with pytest.raises(GraftError, match="'avgpool' has no spatial output.*1280×1×1.*features"):
        activations(trained.session, image, layer="avgpool")


def test_spatial_forms():
    assert spatial_form((512, 7, 7)).layout == "nchw"
    assert spatial_form((7, 7, 768)) == spatial_form((7, 7, 768)) and spatial_form((7, 7, 768)).layout == "nhwc"
    vit = spatial_form((197, 768))
    assert (vit.layout, vit.extra_tokens, vit.height, vit.channels) == ("tokens", 1, 14, 768)
    assert spatial_form((1280, 1, 1)) is None and spatial_form((1280,)) is None and spatial_form(None) is None
    for shape in ((2, 197, 768), (2, 7, 7, 768), (2, 512, 7, 7)):
        out = torch.randn(shape)
        form = spatial_form(shape[1:])
        grid = to_grid(out, form)
        assert grid.shape == (2, form.channels, form.height, form.width)
        assert torch.equal(from_grid(grid, out, form), out)


def _session(arch: str) -> Session:
    torch.manual_seed(0)
    session = Session(load_network(arch, random_init=True))
    session.do(DeleteOutputLayer())
    session.do(AddHead(HeadSpec("shape", labels=["circle", "star"]), seed=0))
    session.do(AddHead(HeadSpec("size", "regression", labels=["size"]), seed=0))
    session.do(freeze_preset("heads-only"))
    return session


@pytest.mark.slow
def test_vit_tokens_on_the_patch_grid():
    session = _session("vit_b_16")
    # The last block's patch tokens never reach the class token the heads read: its attention input does.
    assert default_layer(session) == "encoder.layers.encoder_layer_11.ln_1"
    image = draw("star", quadrant_centre(0))
    heatmaps = explain(session, image)
    assert [h.head for h in heatmaps] == ["shape", "size"]
    for hm in heatmaps:
        assert hm.grid == (14, 14) and hm.values.shape == (224, 224) and hm.values.dtype == np.float32
        assert 0 <= hm.values.min() and hm.values.max() <= 1 and not hm.empty
    act = activations(session, image, layer="encoder.layers.encoder_layer_5", count=4)
    assert act.maps.shape == (4, 14, 14) and act.form.extra_tokens == 1
    # At the encoder's last norm the patch tokens reach no head: the heatmap is empty, and says so.
    (late,) = explain(session, image, heads=["shape"], layer="encoder.ln")
    assert late.empty and "nothing there speaks for it" in late.describe()


def test_swin_channels_last():
    session = _session("swin_t")
    layer, form = resolve_layer(session, "features")
    assert form.layout == "nhwc" and (form.height, form.channels) == (7, 768)
    (hm,) = explain(session, draw("circle", quadrant_centre(2)), heads=["shape"], layer="features")
    assert hm.grid == (7, 7) and hm.values.shape == (224, 224) and not hm.empty


def test_a_cut_network_explains_at_its_cut(resnet_session):
    resnet_session.do(CutAt("layer3"))
    resnet_session.do(AddHead(HeadSpec("kind", labels=["a", "b"]), seed=0))
    resnet_session.model.input_spec = InputSpec(size=64, resize=64)
    resnet_session.probe_order()
    assert default_layer(resnet_session) == "layer3"
    names = [p for p, _ in spatial_layers(resnet_session)]
    assert "layer3" in names and "layer4" not in names
    with pytest.raises(GraftError, match="'layer4' does not run.*cut at layer3"):
        explain(resnet_session, draw("star", (100, 100)), layer="layer4")
    (hm,) = explain(resnet_session, draw("star", (100, 100)))
    assert hm.layer == "layer3" and hm.grid == (4, 4) and hm.values.shape == (64, 64)


def test_bad_input_gets_one_clear_message(trained, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    with pytest.raises(GraftError, match="broken.jpg: not a readable image"):
        explain(trained.session, broken)
    with pytest.raises(GraftError, match="no such file"):
        explain(trained.session, tmp_path / "missing.png")
    with pytest.raises(GraftError, match="has no layer 'nowhere'"):
        explain(trained.session, draw("star", (100, 100)), layer="nowhere")
    with pytest.raises(GraftError, match="'avgpool' has no spatial output"):
        explain(trained.session, draw("star", (100, 100)), layer="avgpool")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_has_no_layers_to_hook(tmp_path):
    net = torch.jit.script(nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                         nn.Flatten()))
    path = tmp_path / "net.pt"
    net.save(str(path))
    network = load_network(str(path))
    network.input_spec = InputSpec(size=32, resize=32)
    session = Session(network)
    session.do(AddHead(HeadSpec("kind", labels=["a", "b"]), seed=0))
    for call in (lambda: explain(session, draw("star", (100, 100))), lambda: activations(session, draw("star", (9, 9)))):
        with pytest.raises(GraftError, match="TorchScript: its layers cannot be hooked"):
            call()


def test_a_network_without_spatial_layers():
    body = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8), nn.ReLU())
    session = Session(LoadedNetwork(body, InputSpec(size=16, resize=16), ModelSource("builtin", "mlp")))
    session.do(AddHead(HeadSpec("kind", labels=["a", "b"]), seed=0))
    with pytest.raises(GraftError, match="No layer of this network gives the heads a map over the image"):
        explain(session, draw("star", (100, 100)))
    with pytest.raises(GraftError, match="'1' has no spatial output \\(it gives 8"):
        activations(session, draw("star", (100, 100)), layer="1")
