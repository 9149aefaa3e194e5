"""A tensor added to one part of a channel concatenation, written as an Add of the concatenation and
the tensor padded with zero channels, replaced by the Add of that part alone (MeliusNet's
"improvement" block in larq, as tf2onnx writes it):

    Add(Concat(x_1, ..., x_k, axis=1), Pad(c, zero channels before and after))
becomes
    Concat(x_1, ..., Add(x_j, c), ..., x_k, axis=1)

when the channels that c lands on are exactly those of one operand x_j (the Add's operands in
either order; the Concat stays where other nodes read it).

Preserves the float32 values: the channels of x_j get the same sum x_j + c, and every other
channel x + 0 = x (only a -0.0 becomes +0.0, which no later op tells apart from +0.0 in value).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..original import static_shapes
from .graph_edit import Names, attrs, constant_values, copy_model, default_opset, drop_unused, is_standard, producers


def _channel_pads(pad, values, opset, rank):
    """(before, after) zero channels that `pad` adds to its rank-`rank` input, or None for any
    other Pad."""
    a = attrs(pad)
    if a.get("mode", b"constant") not in (b"constant", "constant"):
        return None
    if opset >= 11:
        if len(pad.input) > 3 and pad.input[3]:
            return None  # explicit axes: not tf2onnx's form
        p = values.get(pad.input[1]) if len(pad.input) > 1 else None
        value = values.get(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else 0.0
        if p is None or value is None:
            return None
    else:
        p, value = a.get("pads"), a.get("value", 0.0)
    p = [int(v) for v in np.asarray(p).reshape(-1)]
    if len(p) != 2 * rank or np.asarray(value).size != 1 or float(np.asarray(value).reshape(-1)[0]) != 0.0:
        return None
    if any(p[i] for i in range(2 * rank) if i not in (1, rank + 1)) or p[1] < 0 or p[rank + 1] < 0:
        return None
    return p[1], p[rank + 1]


def add_into_concat_part(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    g = out.graph
    values = constant_values(g)
    opset = default_opset(out)
    names = Names(g)
    shapes = None
    for add in list(g.node):
        if add.op_type != "Add" or not is_standard(add) or len(add.input) != 2:
            continue
        prods = producers(g)
        for k in (0, 1):
            concat, pad = prods.get(add.input[k]), prods.get(add.input[1 - k])
            if concat is None or pad is None or concat.op_type != "Concat" or pad.op_type != "Pad" \
                    or not is_standard(concat) or not is_standard(pad):
                continue
            if shapes is None:
                shapes = static_shapes(out)
            c_shape, o_shape = shapes.get(pad.input[0]), shapes.get(add.output[0])
            parts = [shapes.get(i) for i in concat.input]
            if c_shape is None or o_shape is None or any(s is None for s in parts) or len(c_shape) < 2:
                continue
            rank = len(c_shape)
            if attrs(concat).get("axis", 0) % rank != 1 or any(len(s) != rank for s in parts):
                continue
            if tuple(shapes.get(concat.output[0]) or ()) != tuple(o_shape) or \
                    tuple(shapes.get(pad.output[0]) or ()) != tuple(o_shape):
                continue  # the Add broadcasts: not this form
            pads = _channel_pads(pad, values, opset, rank)
            if pads is None:
                continue
            start, j = 0, None
            for i, s in enumerate(parts):
                if start == pads[0] and s[1] == c_shape[1] and tuple(s) == tuple(c_shape):
                    j = i
                start += s[1]
            if j is None or concat.input[j] in values:
                continue
            part_sum = names.fresh(add.output[0].split("/")[-1] or "sum")
            inputs = list(concat.input)
            inputs[j] = part_sum
            idx = list(g.node).index(add)
            g.node.remove(add)
            g.node.insert(idx, helper.make_node("Add", [concat.input[j], pad.input[0]], [part_sum], name=add.name))
            g.node.insert(idx + 1, helper.make_node("Concat", inputs, [add.output[0]],
                                                    name=names.fresh(concat.name or "Concat"), axis=1))
            break
    drop_unused(out)
    return out
