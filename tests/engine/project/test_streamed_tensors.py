"""The safetensors file written a tensor at a time (engine/project/streamed_tensors.py) is one safetensors
reads back exactly, whatever the dtypes, shapes and sharing; a project written that way opens the same."""
from __future__ import annotations

import io
import zipfile

import pytest
import torch
from safetensors.torch import load, save

from engine.project.project_file import open_project, project_recipe, state_tensors, write_project
from engine.project.streamed_tensors import streamable, write_safetensors


def test_every_dtype_and_shape_reads_back_exactly():
    base = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    tensors = {
        "f32": torch.randn(5, 7), "f64": torch.randn(3, dtype=torch.float64), "f16": torch.randn(4, 2).half(),
        "bf16": torch.randn(6).to(torch.bfloat16), "i64": torch.arange(9), "i32": torch.arange(3, dtype=torch.int32),
        "i16": torch.arange(4, dtype=torch.int16), "i8": torch.tensor([-3, 4], dtype=torch.int8),
        "u8": torch.arange(255, dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(3.5), "step": torch.tensor(7), "empty": torch.zeros(0, 4),
        "view": base[:, 1],  # not contiguous, and sharing storage with the next
        "base": base, "channels_last": torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
    }
    assert streamable(tensors)
    out = io.BytesIO()
    write_safetensors(out, tensors, {"graft_format": "1"})
    back = load(out.getvalue())
    assert back.keys() == tensors.keys()
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape and torch.equal(back[k], v), k
    import json

    raw = out.getvalue()
    size = int.from_bytes(raw[:8], "little")
    assert size % 8 == 0  # the data starts 8-byte aligned, and each tensor at a multiple of its element size
    header = json.loads(raw[8:8 + size])
    assert header["__metadata__"] == {"graft_format": "1"}
    assert all(header[k]["data_offsets"][0] % tensors[k].element_size() == 0 for k in tensors)
    assert load(save({k: v.contiguous().clone() for k, v in tensors.items()})).keys() == back.keys()


def test_what_it_cannot_write_goes_to_safetensors_own_writer():
    assert not streamable({"fp8": torch.zeros(2).to(torch.float8_e4m3fn)})
    assert streamable({})


def test_a_streamed_project_opens_as_the_saved_one(resnet_session, tmp_path):
    weights = state_tensors(resnet_session.model)
    recipe = project_recipe(resnet_session)
    a = write_project(tmp_path / "a.graft", recipe, weights)
    b = write_project(tmp_path / "b.graft", recipe, dict(resnet_session.model.state_dict()), streamed=True)
    with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
        assert load(za.read("weights.safetensors")).keys() == load(zb.read("weights.safetensors")).keys()
        assert zb.testzip() is None
    sa, sb = open_project(a).model.state_dict(), open_project(b).model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("streamed", [False, True])
def test_streaming_or_not_the_recipe_is_the_same_json(resnet_session, tmp_path, streamed):
    import json

    path = write_project(tmp_path / "p.graft", project_recipe(resnet_session, {"x": 1}),
                         state_tensors(resnet_session.model), streamed=streamed)
    with zipfile.ZipFile(path) as zf:
        assert json.loads(zf.read("recipe.json")) == project_recipe(resnet_session, {"x": 1})
