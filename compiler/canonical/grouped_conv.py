"""A channel Split whose parts each feed one convolution, concatenated back in part order, replaced
by one grouped convolution (Keras' and so tf2onnx's form of `Conv2D(groups=g)`).

    Split(x, axis=1, equal parts) -> Conv_i(part_i, W_i, B_i) -> Concat(axis=1, [Conv_0, ..., Conv_n-1])
becomes
    Conv(x, concat_i W_i, concat_i B_i, group = n * g)

where every Conv_i has the same kernel, strides, pads, dilations and group g, the same number of
output channels, constant weights, and all or none of them a constant bias; each part and each
convolution's output is read by nothing else. (tf2onnx's NHWC Transposes around the Split and the
convolutions are gone by then: the layout stage moves them through the Split.) Any other Split is
left alone; the lowering refuses it with the node named.

Preserves: every output element is the same sum of the same products (output channel o of the
grouped convolution reads exactly the input channels and weights that convolution o // (O / n)
read on its part). Not necessarily bit-exact in onnxruntime: a grouped convolution may add the
products of a dot product in another order than the separate convolutions did, so float32 results
can differ in the last bits; bnnc's lowering computes convolutions as exact integer sums, so the
deployed network is unaffected, and `bnnc verify` compares the original model within its
tolerance.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..original import static_shapes
from .graph_edit import (Names, add_initializer, attrs, constant_values, consumers, copy_model, drop_unused,
                         graph_outputs, is_standard)

_GEOMETRY = ("kernel_shape", "strides", "pads", "dilations", "auto_pad", "group")


def _part_sizes(split, values, n_parts, channels):
    """The channel count of each part, or None when unknown."""
    a = attrs(split)
    if len(split.input) > 1 and split.input[1]:
        v = values.get(split.input[1])
        return None if v is None else [int(s) for s in np.asarray(v).reshape(-1)]
    if "split" in a:
        return [int(s) for s in a["split"]]
    if channels is None or channels % n_parts:
        return None
    return [channels // n_parts] * n_parts


def _grouped(split, values, readers, outputs, shapes):
    """(Concat node, convolutions in part order) when `split` starts the grouped form, else None."""
    x = split.input[0]
    shape = shapes.get(x)
    if x in values or shape is None or len(shape) < 3 or attrs(split).get("axis", 0) % len(shape) != 1:
        return None
    parts = list(split.output)
    if not parts or any(not p or p in outputs for p in parts):
        return None
    sizes = _part_sizes(split, values, len(parts), shape[1])
    if sizes is None or len(sizes) != len(parts) or len(set(sizes)) != 1 or sum(sizes) != shape[1]:
        return None
    convs = []
    for p in parts:
        r = readers.get(p, [])
        if len(r) != 1 or r[0].op_type != "Conv" or not is_standard(r[0]) or list(r[0].input).count(p) != 1 \
                or r[0].input[0] != p:
            return None
        convs.append(r[0])
    first = attrs(convs[0])
    if any({k: attrs(c).get(k) for k in _GEOMETRY} != {k: first.get(k) for k in _GEOMETRY} for c in convs):
        return None
    weights = [values.get(c.input[1]) for c in convs]
    if any(w is None for w in weights) or len({np.asarray(w).shape for w in weights}) != 1:
        return None
    has_bias = [len(c.input) > 2 and bool(c.input[2]) for c in convs]
    if any(has_bias) and not all(b and c.input[2] in values for b, c in zip(has_bias, convs)):
        return None
    concat_readers = [readers.get(c.output[0], []) for c in convs]
    if any(len(r) != 1 or c.output[0] in outputs for r, c in zip(concat_readers, convs)):
        return None
    concat = concat_readers[0][0]
    if concat.op_type != "Concat" or not is_standard(concat) or list(concat.input) != [c.output[0] for c in convs]:
        return None
    if attrs(concat).get("axis") % len(shape) != 1:
        return None
    return concat, convs


def split_convs_to_grouped_conv(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    g = out.graph
    values = constant_values(g)
    outputs = graph_outputs(g)
    names = Names(g)
    shapes = None
    for split in list(g.node):
        if split.op_type != "Split" or not is_standard(split):
            continue
        if shapes is None:
            shapes = static_shapes(out)
        found = _grouped(split, values, consumers(g), outputs, shapes)
        if found is None:
            continue
        concat, convs = found
        a = attrs(convs[0])
        w = np.concatenate([np.asarray(values[c.input[1]]) for c in convs], axis=0)
        inputs = [split.input[0], add_initializer(g, names, w, convs[0].input[1])]
        if len(convs[0].input) > 2 and convs[0].input[2]:
            b = np.concatenate([np.asarray(values[c.input[2]]).reshape(-1) for c in convs])
            inputs.append(add_initializer(g, names, b, convs[0].input[2]))
        geometry = {k: a[k] for k in _GEOMETRY if k in a}
        geometry["group"] = len(convs) * int(a.get("group", 1))
        conv = helper.make_node("Conv", inputs, [concat.output[0]], name=concat.name, **geometry)
        idx = list(g.node).index(concat)
        g.node.insert(idx, conv)
        for n in (concat, *convs, split):
            g.node.remove(n)
    drop_unused(out)
    return out
