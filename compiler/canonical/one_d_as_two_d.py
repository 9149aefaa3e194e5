"""A 1-D network (Conv1d / MaxPool1d / AvgPool1d on (N, C, L) tensors: keyword spotting, ECG, radio
signals) as the 2-D network it is on (N, C, 1, L) tensors.

Every activation of rank 3 gets a unit axis at position 2: the model input through an Unsqueeze
right after it (an (N, L, C) input that is only read through a Transpose to (N, C, L), as
`unit_axis_windows_to_1d` leaves tf2onnx's Conv1D: that Transpose becomes an Unsqueeze to
(N, 1, L, C) and a Transpose to (N, C, 1, L), which the frontend reads as an NHWC input), a rank-3
model output through a Squeeze before it. Each node that reads or
writes such a tensor is rewritten for the added axis:
- Conv, MaxPool, AveragePool: kernel (1, k), strides (1, s), dilations (1, d), pads (0, b, 0, e);
  the weights (O, I, k) as (O, I, 1, k) (a constant reshaped; a quantizer's, as below);
- elementwise ops, BatchNormalization, Identity, Dropout, QONNX Quant / BipolarQuant,
  QuantizeLinear / DequantizeLinear (an axis 2 becomes 3): a constant operand of rank >= 2 (a
  per-channel (C, 1)) gets the unit axis before its last one; so do a quantizer's constant
  weights (O, I, k) and their per-channel scales (Brevitas's QuantConv1d), which the Conv then
  reads as they are;
- Concat, Softmax, LogSoftmax: an axis 2 (L) becomes 3;
- ReduceMean / ReduceMax / ReduceMin / ReduceSum over L: axis 3, and the unit axis 2 with it
  where the result drops its axes; Squeeze of axis 2 (L): axes 2 and 3;
- Pad: pads (b0, b1, b2, e0, e1, e2) as (b0, b1, 0, b2, e0, e1, 0, e2);
- Flatten (axis 1), Reshape to rank 2, GlobalAveragePool, GlobalMaxPool: as they are (the same
  elements in the same order); a Reshape to rank 3 (N, C, L): to (N, C, 1, L).
A model with any other node on a rank-3 activation is left as it is.

Preserves exactly: every element keeps its value and its place in memory order (a unit axis moves
nothing); each rewritten node computes the same sums, maxima and elementwise values over the same
elements, in the same order, as on the rank-3 tensor.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..original import static_shapes
from .graph_edit import (Names, add_initializer, attrs, axes_node, constant_values, consumers, copy_model,
                         default_opset, drop_unused, graph_outputs, is_standard, node_axes, rename_input, set_attr)
from .layout_transposes import BROADCAST, UNARY

WINDOWED = {"Conv", "MaxPool", "AveragePool"}
AXIS_OPS = {"Concat", "Softmax", "LogSoftmax"}
REDUCE = {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum"}
KEPT = {"Flatten", "GlobalAveragePool", "GlobalMaxPool"}
QUANTIZERS = {"Quant", "BipolarQuant"}
LINEAR_QUANTIZERS = {"QuantizeLinear", "DequantizeLinear"}


def lift_1d_to_2d(model: onnx.ModelProto) -> onnx.ModelProto:
    g = model.graph
    values = constant_values(g)
    if not any(n.op_type in WINDOWED and is_standard(n) and len(attrs(n).get("kernel_shape", [0, 0])) == 1
               or n.op_type == "Conv" and "kernel_shape" not in attrs(n) for n in g.node):
        return model
    shapes = static_shapes(model)
    lifted = {t for t, s in shapes.items() if s is not None and len(s) == 3 and t not in values}
    lifted -= _channel_last_inputs(g, lifted)
    if not lifted or not all(_handled(n, lifted, values, shapes) for n in g.node
                             if set(n.input) & lifted or set(n.output) & lifted):
        return model
    out = copy_model(model)
    g = out.graph
    names = Names(g)
    opset = default_opset(out)
    for n in list(g.node):
        if set(n.input) & lifted or set(n.output) & lifted:
            _lift(g, n, names, values, lifted, shapes, opset)
    for i in g.input:
        if i.name in lifted:
            moved = names.fresh(i.name)
            rename_input(g, i.name, moved)
            g.node.insert(0, axes_node("Unsqueeze", i.name, moved, [2], g, names, opset))
    outs = graph_outputs(g)
    for o in list(outs):
        if o in lifted:
            inner = names.fresh(o)
            for n in g.node:
                n.output[:] = [inner if t == o else t for t in n.output]
            rename_input(g, o, inner)
            g.node.append(axes_node("Squeeze", inner, o, [2], g, names, opset))
    keep = [v for v in g.value_info if v.name not in lifted]
    del g.value_info[:]
    g.value_info.extend(keep)
    drop_unused(out)
    return out


def _channel_last_inputs(g, lifted: set) -> set:
    """Rank-3 model inputs in (N, L, C) order: every reader a Transpose to (N, C, L) (tf2onnx's
    Conv1D, `unit_axis_windows_to_1d`)."""
    readers = consumers(g)
    return {i.name for i in g.input if i.name in lifted and readers.get(i.name)
            and all(_to_ncl(r) for r in readers[i.name])}


def _to_ncl(n) -> bool:
    return n.op_type == "Transpose" and is_standard(n) and list(attrs(n).get("perm", [])) == [0, 2, 1]


def _handled(n, lifted: set, values: dict, shapes: dict) -> bool:
    """Whether `_lift` can rewrite node `n` that reads or writes a rank-3 activation."""
    op = n.op_type
    if _to_ncl(n) and n.input[0] not in lifted and n.output[0] in lifted:  # of an (N, L, C) model input
        return True
    if not is_standard(n):
        return n.op_type in QUANTIZERS and all(i in lifted or i in values for i in n.input if i)
    dynamic = [i for i in n.input if i and i not in values]
    if op in WINDOWED:  # constant weights, or a quantizer's of constants (lifted with it)
        return n.input[0] in lifted and all(i in values or k == 1 and i in lifted
                                            for k, i in enumerate(n.input) if i and k)
    if op in LINEAR_QUANTIZERS:
        return all(i in lifted or i in values for i in n.input if i)
    if op in UNARY or op in BROADCAST or op in ("BatchNormalization", "Identity", "Dropout"):
        return all(i in lifted or len(shapes.get(i) or ()) <= 1 for i in dynamic)
    if op in AXIS_OPS or op in KEPT:
        return all(i in lifted for i in dynamic) and (op != "Flatten" or attrs(n).get("axis", 1) == 1)
    if op in REDUCE or op == "Squeeze" or op == "Pad":
        return n.input[0] in lifted and all(i in values for i in n.input[1:] if i)
    if op == "Reshape":
        return n.input[1] in values and len(shapes.get(n.output[0]) or ()) in (2, 3)
    return False


def _lift(g, n, names, values: dict, lifted: set, shapes: dict, opset: int) -> None:
    op = n.op_type
    a = attrs(n)
    if _to_ncl(n) and n.input[0] not in lifted:  # (N, L, C) -> (N, 1, L, C) -> (N, C, 1, L): an NHWC input
        nhwc = names.fresh(n.input[0] + "_nhwc")
        g.node.insert(list(g.node).index(n), axes_node("Unsqueeze", n.input[0], nhwc, [1], g, names, opset))
        n.input[0] = nhwc
        set_attr(n, "perm", [0, 3, 1, 2])
        return
    if op in WINDOWED:
        for key in ("kernel_shape", "strides", "dilations"):
            if key in a:
                set_attr(n, key, [1, *a[key]])
        if "pads" in a:
            set_attr(n, "pads", [0, a["pads"][0], 0, a["pads"][1]])
        if op == "Conv" and n.input[1] in values:
            w = np.asarray(values[n.input[1]])
            n.input[1] = add_initializer(g, names, w.reshape(w.shape[0], w.shape[1], 1, w.shape[2]), n.input[1])
        return
    if op in LINEAR_QUANTIZERS and a.get("axis", 1) % 3 == 2:
        set_attr(n, "axis", 3)
    if op in REDUCE:
        axes = node_axes(n, values)
        new = [3 if x % 3 == 2 else x % 3 for x in axes] if axes is not None else None
        if new is not None and not a.get("keepdims", 1):
            new = sorted(set(new) | {2})  # the result drops the unit axis too
        _set_axes(g, n, names, new, opset)
        return
    if op == "Squeeze":
        axes = node_axes(n, values)
        new = sorted({3 if x % 3 == 2 else x % 3 for x in axes} | {2}) if axes is not None else None
        _set_axes(g, n, names, new, opset)
        return
    if op in AXIS_OPS:
        if "axis" in a and a["axis"] % 3 == 2:
            set_attr(n, "axis", 3)
        elif op != "Concat" and "axis" not in a and opset >= 13:  # Softmax's default axis -1
            set_attr(n, "axis", 3)
        return
    if op == "Pad":
        if opset >= 11:
            p = [int(v) for v in np.asarray(values[n.input[1]]).reshape(-1)]
            n.input[1] = add_initializer(g, names, np.array([p[0], p[1], 0, p[2], p[3], p[4], 0, p[5]], np.int64),
                                         "pads")
        else:
            p = list(a["pads"])
            set_attr(n, "pads", [p[0], p[1], 0, p[2], p[3], p[4], 0, p[5]])
        return
    if op == "Reshape":
        target = [int(v) for v in np.asarray(values[n.input[1]]).reshape(-1)]
        if len(target) == 3:
            n.input[1] = add_initializer(g, names, np.array([target[0], target[1], 1, target[2]], np.int64), "shape")
        return
    if op in KEPT:
        return
    for k, i in enumerate(n.input):  # elementwise: constants of rank >= 2 get the unit axis
        if i in values and np.asarray(values[i]).ndim >= 2:
            v = np.asarray(values[i])
            n.input[k] = add_initializer(g, names, np.expand_dims(v, v.ndim - 1), i)


def _set_axes(g, n, names, axes, opset: int) -> None:
    if axes is None:
        return
    if len(n.input) > 1 and n.input[1]:
        n.input[1] = add_initializer(g, names, np.array(axes, np.int64), "axes")
    else:
        set_attr(n, "axes", axes)
