"""Loading networks from names, weight files, TorchScript and pickles — and refusing what is not a model."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision

from engine.errors import GraftError
from engine.network.loading import load_network
from engine.surgery.operations import CutAt, DeleteOutputLayer
from engine.surgery.session import Session


def outputs(module, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        return module.eval()(x)


def test_torchvision_name_without_weights_is_refused_and_never_downloads(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(GraftError, match="never downloads"):
        load_network("resnet18")


def test_random_weights_only_when_asked_and_then_said(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    net = load_network("resnet18", random_init=True)
    assert net.source.weights == "random"
    assert any("random weights" in n for n in net.notes)
    assert "random weights" in net.source.describe()


def test_weights_from_a_file_and_from_the_hub_cache(tmp_path, monkeypatch):
    reference = torchvision.models.mobilenet_v3_small()
    path = tmp_path / "mine.pth"
    torch.save(reference.state_dict(), path)
    net = load_network("mobilenet_v3_small", weights=path)
    assert torch.equal(outputs(net.module), outputs(reference))
    assert net.input_spec.size == 224 and net.class_names and len(net.class_names) == 1000

    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    url = torchvision.models.MobileNet_V3_Small_Weights.DEFAULT.url
    torch.save(reference.state_dict(), cache / os.path.basename(url))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = load_network("mobilenet_v3_small")
    assert torch.equal(outputs(cached.module), outputs(reference))
    assert "hub cache" in cached.notes[0]


def test_input_spec_comes_from_the_weights_metadata():
    net = load_network("efficientnet_b1", random_init=True)
    t = torchvision.models.EfficientNet_B1_Weights.DEFAULT.transforms()
    assert (net.input_spec.size, net.input_spec.resize) == (240, 255) == (t.crop_size[0], t.resize_size[0])
    assert net.input_spec.interpolation == t.interpolation.value
    assert net.input_spec.mean == pytest.approx([0.485, 0.456, 0.406])


def test_weights_that_do_not_fit_are_refused_with_the_keys(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    with pytest.raises(GraftError, match="do not fit mobilenet_v3_small"):
        load_network("mobilenet_v3_small", weights=path)


def test_state_dict_file_architecture_is_recognised(tmp_path):
    reference = torchvision.models.mobilenet_v3_small()
    path = tmp_path / "model.pt"
    torch.save({"state_dict": reference.state_dict(), "epoch": 3}, path)
    net = load_network(path)
    assert net.source.arch == "mobilenet_v3_small"
    assert torch.equal(outputs(net.module), outputs(reference))


def test_safetensors_file(tmp_path):
    from safetensors.torch import save_file

    reference = torchvision.models.resnet18()
    path = tmp_path / "r18.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    net = load_network(path, arch="resnet18")
    assert torch.equal(outputs(net.module), outputs(reference))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(GraftError, match="not a valid safetensors"):
        load_network(tmp_path / "bad.safetensors", arch="resnet18")


def test_torchscript_file_loads_and_refuses_cutting(tmp_path):
    reference = torchvision.models.mobilenet_v3_small().eval()
    path = tmp_path / "scripted.pt"
    torch.jit.trace(reference, torch.randn(1, 3, 224, 224)).save(str(path))
    net = load_network(path)
    assert net.source.format == "torchscript"
    s = Session(net)
    assert s.feature_dim == 1000
    with pytest.raises(GraftError, match="TorchScript"):
        s.do(CutAt("features"))
    with pytest.raises(GraftError, match="No output layer"):
        s.do(DeleteOutputLayer())


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = Path("/tmp/graft-test-evil-marker")


def test_a_pickle_that_would_run_code_is_refused_unless_trusted(tmp_path):
    MARKER.unlink(missing_ok=True)
    path = tmp_path / "evil.pt"
    torch.save({"weights": Evil()}, path)
    with pytest.raises(GraftError, match="trust"):
        load_network(path)
    assert not MARKER.exists()


def test_a_full_pickled_module_needs_trust(tmp_path):
    path = tmp_path / "whole.pt"
    torch.save(torchvision.models.mobilenet_v3_small(), path)
    with pytest.raises(GraftError, match="trust"):
        load_network(path)
    net = load_network(path, trust=True)
    assert net.source.format == "pickle" and net.source.trusted
    assert Session(net).output_layer == "classifier.3"


def test_a_checkpoint_with_pickled_settings_for_a_named_architecture_loads_when_trusted(tmp_path):
    """--model NAME --weights ckpt.pth --trust: the refusal says to pass --trust, so --trust must work."""
    import argparse

    reference = torchvision.models.mobilenet_v3_small().eval()
    path = tmp_path / "ckpt.pth"
    torch.save({"model": reference.state_dict(), "args": argparse.Namespace(lr=0.1), "epoch": 3}, path)
    with pytest.raises(GraftError, match="trust"):
        load_network("mobilenet_v3_small", weights=path)
    net = load_network("mobilenet_v3_small", weights=path, trust=True)
    assert torch.equal(outputs(net.module), outputs(reference))


def test_a_torchscript_file_loads_without_deprecation_noise(tmp_path):
    import warnings

    path = tmp_path / "scripted.pt"
    torch.jit.trace(torch.nn.Conv2d(3, 4, 3), torch.randn(1, 3, 8, 8)).save(str(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_network(path)
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message) for w in caught]


@pytest.mark.parametrize("content, why", [
    (b"hello, I am a text file\n", "it is a text file starting 'hello, I am a text file'"),
    (b"\x00\xff" + os.urandom(2048), "its contents are not a format Graft knows"),
    (b"", "the file is empty"),
    (b"<!DOCTYPE html>\n<html><body>Sign in</body></html>", "it is a web page"),
    (b"PK\x03\x04" + b"\x00" * 40, "it is a zip archive without PyTorch weights"),
])
def test_a_file_that_is_not_a_model_gets_one_clear_message(tmp_path, content, why):
    path = tmp_path / "notes.pth"
    path.write_bytes(content)
    with pytest.raises(GraftError, match="not a model file") as caught:
        load_network(path)
    assert why in str(caught.value) and "\n" not in str(caught.value)


def test_missing_file_and_unknown_names(tmp_path):
    with pytest.raises(GraftError, match="no such file"):
        load_network(tmp_path / "nothing.pt")
    with pytest.raises(GraftError, match="Unknown architecture"):
        load_network("resnet1000", random_init=True)


def test_unrecognised_state_dict_asks_for_the_architecture(tmp_path):
    path = tmp_path / "odd.pt"
    torch.save(torch.nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(GraftError, match="--arch"):
        load_network(path)


# -- fine-tuned checkpoints, file recognition, assumed input ------------------------------------------

@pytest.mark.slow
def test_a_fine_tuned_checkpoint_with_another_class_count_loads(tmp_path):
    """A resnet18 fine-tuned to 10 classes: recognised (the output layer's shape aside) and rebuilt
    with 10 classes, so the user's head loads; with --arch too."""
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(num_classes=10)
    path = tmp_path / "ft10.pth"
    torch.save(reference.state_dict(), path)
    for arch in (None, "resnet18"):
        net = load_network(path, arch=arch)
        assert net.source.arch == "resnet18" and net.source.num_classes == 10
        assert net.class_names is None  # ImageNet's names do not apply to 10 classes
        assert any("10 classes" in n for n in net.notes)
        assert torch.equal(outputs(net.module), outputs(reference))
        assert Session(net).output_layer == "fc"
    weights = tmp_path / "ft10-weights.pth"
    torch.save(reference.state_dict(), weights)
    named = load_network("resnet18", weights=weights)
    assert named.source.num_classes == 10 and torch.equal(outputs(named.module), outputs(reference))


def test_a_checkpoint_that_differs_elsewhere_names_the_first_mismatched_key(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(128, 64, 5, 5)
    path = tmp_path / "odd18.pth"
    torch.save(state, path)
    with pytest.raises(GraftError, match=r"layer2\.0\.conv1\.weight has shape \(128, 64, 5, 5\) in the file "
                                         r"but \(128, 64, 3, 3\)"):
        load_network(path, arch="resnet18")


def test_a_module_saved_with_plain_pickle_loads_when_trusted(tmp_path):
    import pickle

    reference = torchvision.models.mobilenet_v3_small().eval()
    path = tmp_path / "plain.pt"
    with open(path, "wb") as f:
        pickle.dump(reference, f)
    with pytest.raises(GraftError, match="pickled Python objects.*trust"):
        load_network(path)
    net = load_network(path, trust=True)
    assert net.source.format == "pickle"
    assert torch.equal(outputs(net.module), outputs(reference))
    state = tmp_path / "plain-state.pt"  # a state dict written by pickle.dump: weights once trusted
    with open(state, "wb") as f:
        pickle.dump(reference.state_dict(), f)
    assert load_network(state, trust=True).source.arch == "mobilenet_v3_small"


def test_safetensors_is_recognised_by_its_header_not_its_name(tmp_path):
    from safetensors.torch import save_file

    reference = torchvision.models.resnet18()
    path = tmp_path / "r18.pt"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    net = load_network(path)
    assert net.source.format == "safetensors" and net.source.arch == "resnet18"
    assert torch.equal(outputs(net.module), outputs(reference))


@pytest.mark.slow
def test_torchscript_and_pickled_models_say_their_input_was_assumed(tmp_path):
    reference = torchvision.models.mobilenet_v3_small().eval()
    scripted = tmp_path / "scripted.pt"
    torch.jit.trace(reference, torch.randn(1, 3, 224, 224)).save(str(scripted))
    whole = tmp_path / "whole.pt"
    torch.save(reference, whole)
    for net in (load_network(scripted), load_network(whole, trust=True)):
        assert any("assumed" in n and "224x224" in n and "mean" in n for n in net.notes), net.notes
    state = tmp_path / "state.pt"  # an architecture's own input spec is known: nothing assumed
    torch.save(reference.state_dict(), state)
    assert not any("assumed" in n for n in load_network(state).notes)
