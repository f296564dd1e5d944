"""timm networks by name (``timm:NAME``): preprocessing from timm's configuration, the classifier timm
declares, weights from a file or a Hugging Face cache on disk (never the network), clear errors."""
from __future__ import annotations

import socket

import pytest
import torch

timm = pytest.importorskip("timm")

from engine.errors import GraftError  # noqa: E402
from engine.network import timm_models  # noqa: E402
from engine.network.loading import ModelSource, load_network, rebuild  # noqa: E402
from engine.surgery.session import Session  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face hub cache and torch hub folder of this test's own."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch-hub"))
    return cache


def put_in_cache(cache, repo: str, state: dict[str, torch.Tensor]):
    """Lay out ``repo``'s model.safetensors as huggingface_hub's own downloads do."""
    from safetensors.torch import save_file

    revision = "0123456789abcdef0123456789abcdef01234567"
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / "model.safetensors"))
    return snapshot / "model.safetensors"


@pytest.mark.parametrize("name", ["timm:resnet18", "timm:resnet50.tv_in1k", "timm:vit_tiny_patch16_224",
                                  "timm:convnext_small.fb_in22k"])
def test_input_spec_is_timms_evaluation_transform(name):
    """Size, resize, filter, mean and std as timm's own eval transform for those weights has them."""
    _, spec, _ = timm_models.build(name, meta=True)
    module = timm.create_model(name[len("timm:"):], pretrained=False, num_classes=0)
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=module))
    steps = {type(t).__name__: t for t in transform.transforms}
    resize, crop, norm = steps["Resize"], steps["CenterCrop"], steps["Normalize"]
    assert spec.resize == (resize.size if isinstance(resize.size, int) else resize.size[0])
    assert [spec.size, spec.size] == list(crop.size)
    assert spec.interpolation == resize.interpolation.value
    assert spec.mean == pytest.approx([float(v) for v in norm.mean])
    assert spec.std == pytest.approx([float(v) for v in norm.std])
    assert spec.problem() is None


@pytest.mark.slow
def test_every_listed_architecture_builds():
    for name in timm_models.popular_names():
        module, spec, _ = timm_models.build(name, meta=True)
        assert spec.problem() is None, name
        classifier = timm_models.declared_classifier(module)
        assert len(classifier) == 1 and isinstance(module.get_submodule(classifier[0]), torch.nn.Linear), name


def test_class_names_follow_the_weights_tag():
    _, _, classes = timm_models.build("timm:resnet18", meta=True)
    assert len(classes) == 1000 and classes[0] == "tench"
    _, _, classes = timm_models.build("timm:convnext_small.fb_in22k", meta=True)
    assert len(classes) == 21841
    _, _, classes = timm_models.build("timm:resnet18", meta=True, num_classes=5)
    assert classes is None


def test_unknown_names_and_tags_say_what_exists():
    with pytest.raises(GraftError, match="Did you mean timm:resnet18"):
        load_network("timm:resnet19", random_init=True)
    with pytest.raises(GraftError, match="no weights tagged 'nope'.*a1_in1k"):
        load_network("timm:resnet18.nope", random_init=True)
    with pytest.raises(GraftError, match="after 'timm:'"):
        load_network("timm:", random_init=True)
    with pytest.raises(GraftError, match="timm:NAME"):  # a torchvision-style name timm does not mean
        load_network("no_such_net", random_init=True)


def test_no_weights_anywhere_is_a_clear_offline_error(hf_cache, no_network):
    with pytest.raises(GraftError) as caught:
        load_network("timm:resnet18")
    message = str(caught.value)
    assert "never downloads" in message and "timm/resnet18.a1_in1k" in message and str(hf_cache) in message
    assert "random weights" in message and "\n" not in message
    network = load_network("timm:resnet18", random_init=True)  # only when asked for
    assert network.source.weights == "random" and network.class_names is None


def test_weights_already_in_the_hugging_face_cache_load_offline(hf_cache, no_network):
    torch.manual_seed(3)
    state = timm.create_model("resnet18", pretrained=False).state_dict()
    path = put_in_cache(hf_cache, "timm/resnet18.a1_in1k", state)
    assert timm_models.cached_weights("timm:resnet18") == path
    network = load_network("timm:resnet18")
    own = network.module.state_dict()
    assert all(torch.equal(own[k], state[k]) for k in state)
    assert network.source == ModelSource("timm", "timm:resnet18", weights="pretrained")
    assert network.class_names[0] == "tench" and any(str(path) in n for n in network.notes)
    assert network.source.describe() == "timm:resnet18 (pretrained)"
    # reopening a project made from it finds the same weights again
    again, original = rebuild(ModelSource.from_dict(network.source.to_dict()))
    assert original and all(torch.equal(again.module.state_dict()[k], state[k]) for k in state)


def test_a_fine_tuned_timm_state_dict_loads_with_arch(tmp_path):
    """A timm model fine-tuned to 3 classes, saved as a state dict: ``--arch timm:NAME`` reads it, the
    class count from the file."""
    torch.manual_seed(1)
    model = timm.create_model("resnet18", pretrained=False, num_classes=3)
    path = tmp_path / "finetuned.pth"
    torch.save({"state_dict": model.state_dict()}, path)
    network = load_network(path, arch="timm:resnet18")
    assert network.source.kind == "file" and network.source.arch == "timm:resnet18"
    assert network.source.num_classes == 3 and network.class_names is None
    assert torch.equal(network.module.fc.weight, model.fc.weight)
    again, original = rebuild(network.source)
    assert original and torch.equal(again.module.fc.weight, model.fc.weight)
    with pytest.raises(GraftError, match="do not fit timm:convnext_atto"):
        load_network(path, arch="timm:convnext_atto")


def test_a_distilled_network_has_no_single_output_layer():
    """DeiT-distilled averages two classifiers: deleting one would not leave features, so there is no
    output layer to delete (a cut still works)."""
    session = Session(load_network("timm:deit_tiny_distilled_patch16_224", random_init=True))
    assert session.output_layer is None
    assert timm_models.declared_classifier(session.model.trunk.body) == ("head", "head_dist")


def test_a_timm_network_without_a_classifier_has_no_output_layer(tmp_path):
    """num_classes=0 leaves Identity as the classifier: no Linear inside a block is taken for it."""
    torch.manual_seed(0)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    path = tmp_path / "features.pt"
    torch.save(model, path)
    network = load_network(path, trust=True)
    assert network.input_spec == timm_models.input_spec(model)  # a pickled timm model keeps timm's preprocessing
    session = Session(network)
    assert session.output_layer is None and session.feature_dim == 192
