"""A safetensors file written in pieces, for writing on a thread beside the GUI's: ``safetensors.torch.save``
builds the whole file in one native call that holds Python's GIL throughout (about 60 ms for EfficientNet-Lite0's
13 MB on a loaded CPU, a frame's worth of stall and more for the window's event loop); here the same format
(an 8-byte little-endian header length, the JSON header, then each tensor's bytes in order) goes to a file
object a tensor at a time, and the file writes release the GIL. ``safetensors`` reads it as its own
(tests/engine/project/test_streamed_tensors.py)."""
from __future__ import annotations

import json
import struct
import sys
from collections.abc import Mapping
from typing import BinaryIO

import torch

DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}


def streamable(tensors: Mapping[str, torch.Tensor]) -> bool:
    """Whether :func:`write_safetensors` can write these (else use ``safetensors.torch.save``)."""
    return sys.byteorder == "little" and all(t.dtype in DTYPES and t.device.type == "cpu" for t in tensors.values())


def write_safetensors(out: BinaryIO, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (on the CPU; views and shared storage are fine: they are copied) to ``out`` in the
    safetensors format."""
    # larger elements first (as safetensors orders them): every tensor's data then starts aligned to its dtype
    names = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name in names:
        t = tensors[name]
        size = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors pads it
    out.write(struct.pack("<Q", len(text)))
    out.write(text)
    # One copy of every tensor into one buffer (a single torch op: the GIL is released while it copies),
    # then one write (the file and the zip's checksum release it too): Python runs for microseconds a tensor.
    parts = [tensors[name].detach().contiguous().reshape(-1).view(torch.uint8) for name in names]
    if parts:
        out.write(memoryview(torch.cat(parts).numpy()))
