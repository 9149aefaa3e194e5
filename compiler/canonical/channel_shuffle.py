"""ShuffleNet's channel shuffle as exporters write it, Reshape(x, [N, g, k, H, W]) ->
Transpose(perm [0, 2, 1, 3, 4]) -> Reshape(.., [N, g * k, H, W]), replaced by one ONNX Gather of
x's channels: output channel j * g + i is input channel i * k + j.

Preserves every value: the three ops only move elements, and the Gather moves them to the same
places. Rewritten only where x is (N, g * k, H, W) by shape inference, the final Reshape gives
that shape back, and the intermediate tensors have that one reader and are no graph outputs."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..original import static_shapes
from .graph_edit import (Names, add_initializer, attrs, constant_values, copy_model, drop_unused, replace_node,
                         reshape_transpose_reshape)


def channel_shuffle_to_gather(model: onnx.ModelProto) -> onnx.ModelProto:
    g0 = model.graph
    if not any(n.op_type == "Transpose" and list(attrs(n).get("perm", [])) == [0, 2, 1, 3, 4] for n in g0.node):
        return model
    out = copy_model(model)
    g = out.graph
    values = constant_values(g)
    shapes = static_shapes(out)  # None where a dimension is unknown: no match below
    names = Names(g)
    changed = False
    for first, trans, last in reshape_transpose_reshape(g, values):
        x, five = first.input[0], values.get(first.input[1])
        shape = shapes.get(x)
        if five is None or shape is None or len(shape) != 4 or np.size(five) != 5:
            continue
        n, c, h, w = shape
        gk = [int(v) for v in np.asarray(five).reshape(-1)]
        if gk[1] < 1 or gk[2] < 1 or gk[1] * gk[2] != c or shapes.get(first.output[0]) != (n, gk[1], gk[2], h, w):
            continue
        if list(attrs(trans).get("perm", [])) != [0, 2, 1, 3, 4] or shapes.get(last.output[0]) != shape:
            continue
        groups, k = gk[1], gk[2]
        order = np.array([i * k + j for j in range(k) for i in range(groups)], np.int64)
        idx = add_initializer(g, names, order, x + "_shuffle")
        gather = helper.make_node("Gather", [x, idx], [last.output[0]], name=last.name or names.fresh("Gather"), axis=1)
        replace_node(g, last, gather)
        g.node.remove(first)
        g.node.remove(trans)
        changed = True
    if not changed:
        return model
    drop_unused(out)
    return out
