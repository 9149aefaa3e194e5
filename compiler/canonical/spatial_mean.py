"""ReduceMean over the spatial axes (2, 3) of a 4-D tensor (the dynamo exporter's and Brevitas'
global average pool) replaced by GlobalAveragePool, followed by a Flatten when keepdims = 0.

NOT bit-exact in onnxruntime: both compute the mean of the same H x W values, but onnxruntime's
ReduceMean and GlobalAveragePool sum them in different orders, so the float32 results can differ
in the last bits (about 1 ulp of the running sum; the tests bound it). bnnc's lowering computes a
global pool as an exact integer sum, so the deployed network is unaffected; `bnnc verify` compares
the original model within its tolerance.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .graph_edit import Names, attrs, constant_values, copy_model, is_standard, static_shapes


def _axes(node: onnx.NodeProto, values: dict):
    a = attrs(node)
    if len(node.input) > 1 and node.input[1]:
        v = values.get(node.input[1])
        return None if v is None else [int(x) for x in np.asarray(v).reshape(-1)]
    return list(a["axes"]) if "axes" in a else None


def spatial_mean_to_global_pool(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    g = out.graph
    values = constant_values(g)
    shapes = None
    names = Names(g)
    for n in list(g.node):
        if n.op_type != "ReduceMean" or not is_standard(n) or n.input[0] in values:
            continue
        axes = _axes(n, values)
        if axes is None:
            continue
        if shapes is None:
            shapes = static_shapes(out)
        shape = shapes.get(n.input[0])
        if shape is None or len(shape) != 4 or sorted(a % 4 for a in axes) != [2, 3]:
            continue
        keep = attrs(n).get("keepdims", 1)
        idx = list(g.node).index(n)
        g.node.remove(n)
        if keep:
            new = [helper.make_node("GlobalAveragePool", [n.input[0]], [n.output[0]], name=n.name)]
        else:
            pooled = names.fresh("pooled")
            new = [helper.make_node("GlobalAveragePool", [n.input[0]], [pooled], name=n.name),
                   helper.make_node("Flatten", [pooled], [n.output[0]], name=names.fresh("Flatten"), axis=1)]
        for k, m in enumerate(new):
            g.node.insert(idx + k, m)
    return out
