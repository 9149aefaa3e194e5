"""Tensors stored in external files, read into the model.

ONNX may keep a tensor's bytes outside the protobuf (`data_location = EXTERNAL`, with `location`,
`offset`, `length` entries): torch's dynamo exporter does so by default. The rewrite reads those
bytes, relative to the folder of the model file (never the working directory), into `raw_data`.

Preserves exactly: every tensor's bytes, dims and type; nothing else in the model changes.

Refused with a one-line `BnncError` naming the tensor: no model folder known, a location that is
empty, absolute, or resolves (through `..` or symbolic links) outside the model's folder, a file
that is missing or not a regular file, an offset or length that is not a non-negative integer or
reaches beyond the end of the file, and a byte count that does not match the tensor's dims.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import BnncError
from .graph_edit import copy_model


def _tensors(model: onnx.ModelProto):
    """Every TensorProto of the main graph and its subgraphs: initializers and tensor attributes."""
    def walk(graph):
        yield from graph.initializer
        for n in graph.node:
            for a in n.attribute:
                if a.type == onnx.AttributeProto.TENSOR:
                    yield a.t
                elif a.type == onnx.AttributeProto.TENSORS:
                    yield from a.tensors
                elif a.type == onnx.AttributeProto.GRAPH:
                    yield from walk(a.g)
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for g in a.graphs:
                        yield from walk(g)
    yield from walk(model.graph)


def has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == TensorProto.EXTERNAL for t in _tensors(model))


def _byte_size(t: TensorProto):
    """Bytes a fixed-size tensor of these dims and type holds, or None for strings / sub-byte types."""
    if t.data_type in (TensorProto.STRING, TensorProto.UNDEFINED):
        return None
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except Exception:
        return None
    if t.data_type in (TensorProto.INT4, TensorProto.UINT4):  # two per byte
        return None
    return int(np.prod(t.dims, dtype=np.int64)) * itemsize


def _integer_entry(t: TensorProto, info: dict, key: str):
    if key not in info:
        return None
    try:
        v = int(info[key])
    except ValueError:
        v = -1
    if v < 0:
        raise BnncError(f"initializer '{t.name}': external data {key} '{info[key]}' is not a non-negative integer")
    return v


def _read(t: TensorProto, model_dir: Path) -> bytes:
    info = {e.key: e.value for e in t.external_data}
    location = info.get("location", "")
    if not location:
        raise BnncError(f"initializer '{t.name}' uses external data but names no file")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        raise BnncError(f"initializer '{t.name}': external data location '{location}' is absolute; "
                        "bnnc reads external data only from the model's folder")
    root = model_dir.resolve()
    path = (root / location).resolve()  # follows symbolic links and '..'
    if path != root and root not in path.parents:
        raise BnncError(f"initializer '{t.name}': external data location '{location}' resolves outside the "
                        "model's folder")
    if not path.is_file():
        raise BnncError(f"initializer '{t.name}': external data file '{location}' does not exist beside the model")
    size = path.stat().st_size
    offset = _integer_entry(t, info, "offset") or 0
    length = _integer_entry(t, info, "length")
    if length is None:
        length = size - offset
    if offset + length > size or offset > size:
        raise BnncError(f"initializer '{t.name}': external data offset {offset} + length {length} is beyond the "
                        f"end of '{location}' ({size} bytes)")
    expected = _byte_size(t)
    if expected is not None and expected != length:
        raise BnncError(f"initializer '{t.name}': external data holds {length} bytes but dims "
                        f"{list(t.dims)} need {expected}")
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise BnncError(f"initializer '{t.name}': external data file '{location}' ended early")
    return data


def load_external_data(model: onnx.ModelProto, model_dir) -> onnx.ModelProto:
    """The model with every external tensor's bytes read from `model_dir` into the model."""
    if not has_external_data(model):
        return model
    out = copy_model(model)
    for t in _tensors(out):
        if t.data_location != TensorProto.EXTERNAL:
            continue
        if model_dir is None:
            raise BnncError(f"initializer '{t.name}' uses external data, and the model's folder is not known")
        data = _read(t, Path(model_dir))
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT
        t.raw_data = data
    return out
