"""An NHWC flatten before a dense layer (Keras's Flatten -> Dense as tf2onnx and qonnx write it;
larq's Reshape((1, 1, -1)) -> 1 x 1 QuantConv2D): the layout Transpose moves into the dense layer's
weight rows.

The graph: x (N, C, H, W) -> Transpose(perm 0, 2, 3, 1) -> a chain of single-reader nodes: shape
ops (Reshape, whatever its target, Flatten, Squeeze, Unsqueeze, Transposes of unit axes) that keep
the elements in the order they are flattened in, elementwise ops (unary, or with constant
scalars; on an (N, d) tensor also one constant per element: larq's sign of the dense layer's
input, a QONNX quantizer) -> the dense layer: MatMul / Gemm of (N, d), or a 1 x 1 Conv of
(N, d, 1, 1), with constant weights B (an initializer, or a QONNX Quant / DequantizeLinear of
constants). The Transpose is what `sink_layout_transposes` cannot move (a flatten reorders the
elements). Rewritten: the chain reads x itself (its elements in C, H, W order), and each
per-element constant on the way and B's input rows are permuted the same way: element j of the
new order is element idx[j] of the old one, so the elementwise ops compute the same values at new
positions, and the dense layer sums the same products.

Preserves: every value up to the dense layer exactly; the dense layer's sums consist of the same
products, added in another order. bnnc computes a dense layer's sum exactly (integers, or
real-valued weights on their grid, summed in 64 bits), so its result does not depend on the order.
Anything else on the way (another reader, a graph output, a non-constant operand) leaves the graph
unchanged.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..original import static_shapes
from .graph_edit import Names, add_initializer, attrs, constant_values, consumers, copy_model, drop_unused, \
    graph_outputs, is_standard, producers, sole_reader
from .layout_transposes import BROADCAST, CUSTOM_ELEMENTWISE, UNARY, moves_only_unit_axes

NHWC = [0, 2, 3, 1]


def nhwc_flatten_into_dense(model: onnx.ModelProto) -> onnx.ModelProto:
    g = model.graph
    if not any(n.op_type == "Transpose" and list(attrs(n).get("perm", [])) == NHWC for n in g.node):
        return model
    out = copy_model(model)
    g = out.graph
    shapes = static_shapes(out)
    changed = False
    for t in [n for n in g.node if n.op_type == "Transpose" and is_standard(n)]:
        changed |= _absorb(g, t, shapes)
    if changed:
        drop_unused(out)
    return out if changed else model


def _absorb(g: onnx.GraphProto, t: onnx.NodeProto, shapes: dict) -> bool:
    """Rewrite the pattern at Transpose `t` (module docstring); False where it does not apply."""
    shape = shapes.get(t.input[0])
    if list(attrs(t).get("perm", [])) != NHWC or not shape or len(shape) != 4 or None in shape[1:]:
        return False
    _, c, h, w = shape
    d = c * h * w
    if h * w == 1:
        return False
    readers, values, outs, prods = consumers(g), constant_values(g), graph_outputs(g), producers(g)
    chain, cur, flat = [], t.output[0], False
    while True:
        n = sole_reader(readers, outs, cur)
        if n is None or n.input[0] != cur or (not is_standard(n) and n.op_type not in CUSTOM_ELEMENTWISE
                                              and not _uniform_thresholds(n, values)):
            return False
        if flat and _dense(n, values, d, readers, prods, shapes):
            dense = n
            break
        if n.op_type in ("Reshape", "Flatten", "Squeeze", "Unsqueeze"):
            flat = True  # from here on the elements are in the flattened order, whatever the shape
        elif n.op_type == "Transpose":
            if not flat or not moves_only_unit_axes(list(attrs(n).get("perm", [])), shapes.get(cur)):
                return False
        elif not _elementwise(n, values, d, shapes.get(cur)):
            return False
        chain.append(n)
        cur = n.output[0]
    # element j of the C, H, W order is element idx[j] of the H, W, C order
    idx = np.arange(d).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)
    names = Names(g)
    chain[0].input[0] = t.input[0]
    for n in chain:
        for k, i in enumerate(n.input[1:], 1):
            if i in values and np.size(values[i]) == d and n.op_type not in ("Reshape", "Transpose", "Squeeze",
                                                                              "Unsqueeze", "MultiThreshold"):
                v = np.asarray(values[i])
                n.input[k] = add_initializer(g, names, v.reshape(-1)[idx].reshape(v.shape), "nchw_" + i)
    row_axis = 1 if dense.op_type == "Conv" or (dense.op_type == "Gemm" and attrs(dense).get("transB", 0)) else 0
    weights = dense if dense.input[1] in values else prods[dense.input[1]]
    ndim = np.ndim(values[weights.input[0] if weights is not dense else dense.input[1]])
    for k, i in enumerate(list(weights.input) if weights is not dense else [dense.input[1]]):
        v = values.get(i)
        axis = _row_axis_of(weights, v, row_axis, d, ndim)
        if axis is not None:
            new = add_initializer(g, names, np.take(np.asarray(v), idx, axis=axis), "nchw_" + i)
            if weights is dense:
                dense.input[1] = new
            else:
                weights.input[k] = new
    return True


def _row_axis_of(node, v, row_axis: int, d: int, ndim: int):
    """The axis of an operand `v` of `node` (the weights' producer, or the dense layer; weights of
    `ndim` axes) that runs over the weights' input rows, or None (a scalar, or parameters per
    output channel)."""
    if v is None or np.size(v) <= 1:
        return None
    if np.ndim(v) == 1:  # DequantizeLinear's per-axis parameters
        return 0 if node.op_type == "DequantizeLinear" and attrs(node).get("axis", 1) % ndim == row_axis else None
    return row_axis if np.shape(v)[row_axis] == d else None


def _dense(n: onnx.NodeProto, values: dict, d: int, readers: dict, prods: dict, shapes: dict) -> bool:
    """Whether `n` is a dense layer of the d flattened elements with constant weights (an
    initializer, or a quantizer of constants, QONNX Quant or DequantizeLinear, read only by `n`):
    MatMul / Gemm of (N, d), or a 1 x 1 Conv of (N, d, 1, 1) (larq's dense layers)."""
    if n.op_type not in ("MatMul", "Gemm", "Conv") or len(n.input) < 2:
        return False
    b = values.get(n.input[1])
    q = prods.get(n.input[1])
    if b is None and q is not None and q.op_type in ("Quant", "DequantizeLinear") and len(readers[n.input[1]]) == 1 \
            and all(i in values for i in q.input if i):
        b = values[q.input[0]]
    if b is None:
        return False
    a = attrs(n)
    if n.op_type == "Conv":
        x = shapes.get(n.input[0])
        return np.ndim(b) == 4 and np.shape(b)[1:] == (d, 1, 1) and x is not None and tuple(x[1:]) == (d, 1, 1) \
            and a.get("group", 1) == 1 and not any(a.get("pads", [])) and a.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
    if np.ndim(b) != 2:
        return False
    if n.op_type == "Gemm":
        return not a.get("transA", 0) and np.shape(b)[1 if a.get("transB", 0) else 0] == d
    return np.shape(b)[0] == d


def _uniform_thresholds(n: onnx.NodeProto, values: dict) -> bool:
    """A QONNX MultiThreshold with one row of constant thresholds for every channel (larq's ste_tern,
    canonical/ternary_sign.py): elementwise, whatever the layout."""
    t = values.get(n.input[1]) if n.op_type == "MultiThreshold" and len(n.input) > 1 else None
    return not is_standard(n) and t is not None and np.ndim(t) == 2 and np.shape(t)[0] == 1


def _elementwise(n: onnx.NodeProto, values: dict, d: int, shape) -> bool:
    """Whether `n` acts element by element on its first input (of static shape `shape`, or None):
    a unary op, or one whose other operands are constant scalars, or one value per element of an
    (N, d) input (shape (d,) or (1, d)); QONNX quantizers with scalar parameters, and
    MultiThresholds with one row of thresholds."""
    if _uniform_thresholds(n, values):
        return True
    others = [i for i in n.input[1:] if i]
    if n.op_type in UNARY and n.op_type not in ("Clip",):
        return not others
    if n.op_type not in BROADCAST | CUSTOM_ELEMENTWISE | {"Clip"} or not all(i in values for i in others):
        return False
    per_element = shape is not None and len(shape) == 2 and shape[1] == d and n.op_type not in CUSTOM_ELEMENTWISE
    return all(np.size(values[i]) == 1 or (per_element and np.shape(values[i]) in ((d,), (1, d))) for i in others)
