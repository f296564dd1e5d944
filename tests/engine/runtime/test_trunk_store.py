"""engine.runtime.trunk_store: a trunk converted once is found again by an equal trunk in a later process,
never by a changed one, and a damaged file costs only a new conversion."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from engine.network.loading import load_network
from engine.runtime import onnx_convert, onnx_trunk, trunk_store
from engine.runtime.onnx_trunk import convert_trunk
from engine.surgery.operations import DeleteOutputLayer, freeze_preset
from engine.surgery.session import Session


@pytest.fixture
def store(tmp_path, monkeypatch, one_torch_thread):
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(trunk_store.ENV, "auto")
    return tmp_path / "trunks"


def small_trunk(scale: float = 1.0, arch: str = "mobilenet_v3_small"):
    """mobilenet_v3_small with random weights (seed 0: the same every time); ``scale`` multiplies the last
    convolution's weights (another trunk, the same graph)."""
    torch.manual_seed(0)
    session = Session(load_network(arch, random_init=True))
    session.do(DeleteOutputLayer())
    session.do(freeze_preset("heads-only"))
    trunk = session.model.trunk
    if scale != 1.0:
        last = [m for m in trunk.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        with torch.no_grad():
            last.weight.mul_(scale)
    return trunk


def count_conversions(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = onnx_trunk.convert

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_trunk, "convert", counted)
    return calls


def test_an_equal_trunk_uses_the_stored_graph_and_gives_the_same_features(store, monkeypatch):
    calls = count_conversions(monkeypatch)
    first = convert_trunk(copy.deepcopy(small_trunk()), 3, 64)
    assert first.onnx is not None and not first.from_store and len(calls) == 1
    assert len(list(store.glob("*.onnx"))) == 1
    again = convert_trunk(copy.deepcopy(small_trunk()), 3, 64)  # an equal trunk, as a new process builds it
    assert again.from_store and len(calls) == 1, "found, not converted again"
    assert again.onnx == first.onnx and "converted before on this machine" in again.note
    x = {"image": np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)}
    a = first.session(1).run(None, x)[0]
    b = again.session(1).run(None, x)[0]
    assert np.array_equal(a, b)


def test_other_weights_input_size_or_cut_are_other_keys(store, monkeypatch):
    base = small_trunk()
    key = trunk_store.trunk_key(base, 3, 64, 17)
    assert trunk_store.trunk_key(copy.deepcopy(base), 3, 64, 17) == key
    changed = copy.deepcopy(base)
    with torch.no_grad():
        next(changed.parameters()).view(-1)[0] += 1e-3
    assert trunk_store.trunk_key(changed, 3, 64, 17) != key
    assert trunk_store.trunk_key(base, 3, 96, 17) != key
    assert trunk_store.trunk_key(base, 1, 64, 17) != key
    assert trunk_store.trunk_key(base, 3, 64, 18) != key
    bn = dict(base.named_buffers())
    name = next(n for n in bn if n.endswith("running_mean"))
    stats = copy.deepcopy(base)
    dict(stats.named_buffers())[name].add_(0.5)  # BatchNorm statistics are part of what the graph computes
    assert trunk_store.trunk_key(stats, 3, 64, 17) != key


def test_a_damaged_file_is_converted_again_and_replaced(store, monkeypatch):
    calls = count_conversions(monkeypatch)
    convert_trunk(copy.deepcopy(small_trunk()), 3, 64)
    (path,) = store.glob("*.onnx")
    path.write_bytes(b"not an onnx graph")
    again = convert_trunk(copy.deepcopy(small_trunk()), 3, 64)
    assert again.onnx is not None and not again.from_store and len(calls) == 2
    assert path.read_bytes() == again.onnx


@pytest.mark.slow
def test_a_stored_graph_that_no_longer_matches_pytorch_is_not_used(store, monkeypatch):
    # resnet18: random mobilenet_v3 features are ~1e-9, within any tolerance of another trunk's
    convert_trunk(copy.deepcopy(small_trunk(arch="resnet18")), 3, 64)
    (path,) = store.glob("*.onnx")
    other = convert_trunk(copy.deepcopy(small_trunk(scale=3.0, arch="resnet18")), 3, 64)  # another trunk's graph …
    assert not other.from_store
    path.write_bytes(other.onnx)  # … put under the first one's key
    again = convert_trunk(copy.deepcopy(small_trunk(arch="resnet18")), 3, 64)
    assert not again.from_store and again.onnx != other.onnx


def test_off_keeps_nothing_and_an_unwritable_store_is_no_error(store, monkeypatch, tmp_path):
    monkeypatch.setenv(trunk_store.ENV, "off")
    assert convert_trunk(copy.deepcopy(small_trunk()), 3, 64).onnx is not None
    assert not store.exists()
    monkeypatch.setenv(trunk_store.ENV, "auto")
    blocked = tmp_path / "file"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("GRAFT_CACHE_DIR", str(blocked))
    conversion = convert_trunk(copy.deepcopy(small_trunk()), 3, 64)
    assert conversion.onnx is not None and not conversion.from_store


def test_the_store_can_live_in_a_folder_of_ones_choice(store, monkeypatch, tmp_path):
    monkeypatch.setenv(trunk_store.ENV, str(tmp_path / "elsewhere"))
    assert convert_trunk(copy.deepcopy(small_trunk()), 3, 64).onnx is not None
    assert len(list((tmp_path / "elsewhere").glob("*.onnx"))) == 1 and not store.exists()


def test_only_the_newest_files_are_kept(store, monkeypatch):
    monkeypatch.setattr(trunk_store, "KEEP", 2)
    for i in range(3):
        trunk_store.save(f"k{i}", b"x" * 10)
        path = store / f"k{i}.onnx"
        import os
        os.utime(path, (1000 + i, 1000 + i))
    trunk_store.save("k3", b"y")
    assert sorted(p.stem for p in store.glob("*.onnx")) == ["k2", "k3"]
