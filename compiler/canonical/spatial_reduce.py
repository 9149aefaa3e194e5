"""Global pools written as reductions over the spatial axes, replaced by pools. ReduceMean over the
axes (2, 3) of a 4-D tensor (the dynamo exporter's and Brevitas' global average pool) becomes
GlobalAveragePool; ReduceMax over them (the dynamo exporter's AdaptiveMaxPool2d(1)), and
GlobalMaxPool, become a MaxPool whose window and stride are the whole H x W map. A Flatten follows
where keepdims = 0. tf2onnx's form, the reduction over axes (1, 2) of Transpose(x, [0, 2, 3, 1])
(NHWC), becomes the pool of x, then a Flatten (keepdims = 0) or Transpose(., [0, 2, 3, 1]) of the
(N, C, 1, 1) result (keepdims = 1; it moves only unit axes, and the layout stage removes it).

The maximum is exact in float32: the max pools give onnxruntime's values bit for bit.

The mean is NOT bit-exact in onnxruntime: both compute the mean of the same H x W values, but onnxruntime's
ReduceMean and GlobalAveragePool sum them in different orders, so the float32 results can differ
in the last bits (about 1 ulp of the running sum; the tests bound it). bnnc's lowering computes a
global pool as an exact integer sum, so the deployed network is unaffected; `bnnc verify` compares
the original model within its tolerance.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..original import static_shapes
from .graph_edit import Names, attrs, constant_values, copy_model, drop_unused, is_standard, node_axes, producers


def spatial_reduce_to_global_pool(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    g = out.graph
    values = constant_values(g)
    shapes = None
    names = Names(g)
    prods = producers(g)
    for n in list(g.node):
        if n.op_type not in ("ReduceMean", "ReduceMax", "GlobalMaxPool") or not is_standard(n) or n.input[0] in values:
            continue
        axes = [2, 3] if n.op_type == "GlobalMaxPool" else node_axes(n, values)
        if axes is None:
            continue
        if shapes is None:
            shapes = static_shapes(out)
        x = n.input[0]
        shape = shapes.get(x)
        if shape is None or len(shape) != 4:
            continue
        axes = sorted(a % 4 for a in axes)
        nhwc = None
        if axes == [1, 2]:
            t = prods.get(x)
            if t is None or t.op_type != "Transpose" or not is_standard(t) or \
                    list(attrs(t).get("perm", [])) != [0, 2, 3, 1]:
                continue
            x, nhwc = t.input[0], t
        elif axes != [2, 3]:
            continue
        hw = list(shape[1:3] if nhwc is not None else shape[2:])
        if n.op_type != "ReduceMean":  # a max pool needs the map's size
            if not all(isinstance(d, (int, np.integer)) and d > 0 for d in hw):
                continue
            hw = [int(d) for d in hw]

        def pool(dst: str) -> onnx.NodeProto:
            if n.op_type == "ReduceMean":
                return helper.make_node("GlobalAveragePool", [x], [dst], name=n.name)
            return helper.make_node("MaxPool", [x], [dst], name=n.name, kernel_shape=hw, strides=hw)

        keep = attrs(n).get("keepdims", 1)
        idx = list(g.node).index(n)
        g.node.remove(n)
        if keep and nhwc is None:
            new = [pool(n.output[0])]
        else:
            pooled = names.fresh("pooled")
            tail = helper.make_node("Flatten", [pooled], [n.output[0]], name=names.fresh("Flatten"), axis=1) \
                if not keep else helper.make_node("Transpose", [pooled], [n.output[0]], name=names.fresh("Transpose"),
                                                  perm=[0, 2, 3, 1])
            new = [pool(pooled), tail]
        for k, m in enumerate(new):
            g.node.insert(idx + k, m)
    drop_unused(out)  # the NHWC Transposes nothing reads any more
    return out
