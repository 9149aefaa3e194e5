"""tf2onnx's 1-D layers (Keras Conv1D, MaxPooling1D, AveragePooling1D, larq's QuantConv1D) as the
ONNX 1-D ops they are, on (N, C, L) tensors: `lift_1d_to_2d` then runs the network as a 2-D one.

TensorFlow computes a 1-D layer on a channel-last (N, L, C) tensor as a 2-D one with a unit axis
added (ExpandDims, Squeeze); tf2onnx writes that with Unsqueeze, its NHWC -> NCHW Transposes and
Squeeze around an NCHW Conv / MaxPool / AveragePool. Rewritten, until none is left:
1. Unsqueeze(x, axis 1) -> Transpose(perm 0, 3, 1, 2), x of rank 3: Transpose(x, perm 0, 2, 1) ->
   Unsqueeze(axis 2) (both give y[n, c, 0, l] = x[n, l, c]);
2. Unsqueeze(x, axis 1) -> Reshape to (N, C, L, 1), x = (N, C, L): Unsqueeze(x, axis 3) (the same
   elements in the same order);
3. Unsqueeze(x, axis 2 or 3) -> Conv / MaxPool / AveragePool whose window along that axis is one
   element (kernel 1, stride 1, dilation 1, no padding) -> Squeeze of that axis: the 1-D op on x,
   the window's attributes along the other axis, a Conv's constant weights without the unit axis.
The NCL <-> NLC Transposes between layers then meet around elementwise ops and cancel
(`sink_layout_transposes`, run here on a rewritten model).

Preserves exactly: steps 1 and 2 move no element; step 3 computes each output from the same
elements with the same weights in the same order (a unit axis adds no tap).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..original import static_shapes
from .graph_edit import (Names, add_initializer, attrs, axes_node, constant_values, consumers, copy_model,
                         default_opset, drop_unused, graph_outputs, is_standard, node_axes, replace_nodes,
                         sole_reader)
from .layout_transposes import sink_layout_transposes

WINDOWED = ("Conv", "MaxPool", "AveragePool")


def unit_axis_windows_to_1d(model: onnx.ModelProto) -> onnx.ModelProto:
    if not any(n.op_type == "Unsqueeze" for n in model.graph.node):
        return model
    out = copy_model(model)
    changed = False
    while _rewrite_one(out):
        changed = True
    if not changed:
        return model
    drop_unused(out)
    return sink_layout_transposes(out)


def _rewrite_one(model: onnx.ModelProto) -> bool:
    """Apply the first rewrite (module docstring) that matches; False where none does."""
    g = model.graph
    opset = default_opset(model)
    shapes, values = static_shapes(model), constant_values(g)
    readers, outs = consumers(g), graph_outputs(g)
    names = Names(g)
    for u in [n for n in g.node if n.op_type == "Unsqueeze" and is_standard(n)]:
        x, xs = u.input[0], shapes.get(u.input[0])
        axes = node_axes(u, values)
        r = sole_reader(readers, outs, u.output[0])
        if xs is None or len(xs) != 3 or axes is None or len(axes) != 1 or r is None or not is_standard(r):
            continue
        axis = axes[0] % 4
        a = attrs(r)
        if axis == 1 and r.op_type == "Transpose" and list(a.get("perm", [])) == [0, 3, 1, 2]:
            ncl = names.fresh(x + "_ncl")
            replace_nodes(g, [u, r], [helper.make_node("Transpose", [x], [ncl], name=names.fresh(r.name or "Transpose"),
                                                  perm=[0, 2, 1]),
                                 axes_node("Unsqueeze", ncl, r.output[0], [2], g, names, opset)])
            return True
        if axis == 1 and r.op_type == "Reshape" and _target(r, values, xs) == (xs[1], xs[2], 1):
            replace_nodes(g, [u, r], [axes_node("Unsqueeze", x, r.output[0], [3], g, names, opset)])
            return True
        if axis in (2, 3) and r.op_type in WINDOWED and r.input[0] == u.output[0]:
            s = sole_reader(readers, outs, r.output[0])
            one_d = _one_d(x, r, axis, s, values, g, names)
            if one_d is not None:
                replace_nodes(g, [u, r, s], [one_d])
                return True
    return False


def _one_d(x: str, w, axis: int, s, values: dict, g, names):
    """The 1-D form on `x` of windowed node `w` whose unit axis is `axis`, read only by Squeeze `s`
    of that axis; None where the window is not one element along it or the weights not constant."""
    if s is None or s.op_type != "Squeeze" or not is_standard(s) \
            or [a % 4 for a in (node_axes(s, values) or [])] != [axis]:
        return None
    a = attrs(w)
    unit, keep = axis - 2, 3 - axis  # index of the unit axis and of the other one among the two spatial axes
    kernel = list(a.get("kernel_shape", []))
    if w.op_type == "Conv":
        wt = values.get(w.input[1])
        if wt is None or np.ndim(wt) != 4 or any(i not in values for i in w.input[2:] if i):
            return None
        kernel = kernel or list(np.shape(wt)[2:])
    pads = list(a.get("pads", [0, 0, 0, 0]))
    if len(kernel) != 2 or kernel[unit] != 1 or list(a.get("strides", [1, 1]))[unit] != 1 \
            or list(a.get("dilations", [1, 1]))[unit] != 1 or pads[unit] or pads[2 + unit]:
        return None  # (auto_pad pads nothing along a unit axis with a one-element window)
    new = {k: v for k, v in a.items() if k not in ("kernel_shape", "strides", "dilations", "pads")}
    new["kernel_shape"] = [kernel[keep]]
    for key in ("strides", "dilations"):
        if key in a:
            new[key] = [list(a[key])[keep]]
    if "pads" in a:
        new["pads"] = [pads[keep], pads[2 + keep]]
    inputs = [x] + list(w.input[1:])
    if w.op_type == "Conv":
        wt = np.asarray(values[w.input[1]])
        inputs[1] = add_initializer(g, names, np.squeeze(wt, axis=2 + unit), w.input[1])
    return helper.make_node(w.op_type, inputs, [s.output[0]], name=w.name, **new)


def _target(r, values: dict, xs: tuple):
    """The Reshape's target shape after the batch axis (0 copies the input's dimension, -1 is
    inferred), None where it is not constant."""
    t = values.get(r.input[1])
    if t is None:
        return None
    t = [int(v) for v in np.asarray(t).reshape(-1)]
    src = (xs[0], 1, xs[1], xs[2])
    t = [src[i] if v == 0 and i < 4 else v for i, v in enumerate(t)]
    if t.count(-1) == 1 and None not in xs[1:]:
        rest = int(np.prod([v for v in t if v != -1]))
        t[t.index(-1)] = (xs[1] * xs[2] * (xs[0] or 1)) // max(rest, 1)
    return tuple(t[1:]) if len(t) == 4 else None
