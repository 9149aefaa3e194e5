"""An NHWC flatten before a dense layer (Keras's Flatten -> Dense as tf2onnx and qonnx write it):
the layout Transpose moves into the dense layer's weight rows.

The graph: x (N, C, H, W) -> Transpose(perm 0, 2, 3, 1) -> Flatten / Reshape to (N, H*W*C) ->
elementwise ops (unary, or with constant operands that are scalars or one value per flattened
element; larq's sign of the dense layer's input, a QONNX quantizer) -> MatMul / Gemm with constant
weights B (an initializer, or a QONNX Quant / DequantizeLinear of constants). The Transpose is what `sink_layout_transposes` cannot move (a flatten reorders the
elements). Rewritten: the flatten reads x itself (the elements in C, H, W order), each
per-element constant on the way and B's input rows are permuted the same way: element j of the
new order is element idx[j] of the old one, so the elementwise ops compute the same values at
new positions, and the dense layer sums the same products.

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
    graph_outputs, is_standard, producers
from .layout_transposes import BROADCAST, CUSTOM_ELEMENTWISE, UNARY

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
    flat = _single_reader(readers, outs, t.output[0])
    if flat is None or not _flattens(flat, values, shapes, d):
        return False
    chain, cur = [], flat.output[0]
    while True:
        n = _single_reader(readers, outs, cur)
        if n is None:
            return False
        if n.op_type in ("MatMul", "Gemm") and is_standard(n) and n.input[0] == cur \
                and _dense_weights(n, values, d, readers, prods):
            dense = n
            break
        if not _elementwise(n, cur, values, d):
            return False
        chain.append(n)
        cur = n.output[0]
    # element j of the C, H, W order is element idx[j] of the H, W, C order
    idx = np.arange(d).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)
    names = Names(g)
    flat.input[0] = t.input[0]
    for n in chain:
        for k, i in enumerate(n.input):
            if i in values and np.size(values[i]) > 1:
                v = np.asarray(values[i])
                n.input[k] = add_initializer(g, names, v.reshape(v.shape[:-1] + (d,))[..., idx].reshape(v.shape),
                                             "nchw_" + i)
    row_axis = 1 if dense.op_type == "Gemm" and attrs(dense).get("transB", 0) else 0
    weights = dense if dense.input[1] in values else prods[dense.input[1]]
    for k, i in enumerate(weights.input if weights is not dense else [dense.input[1]]):
        v = values.get(i)
        axis = _row_axis_of(weights, k, v, row_axis, d)
        if axis is not None:
            new = add_initializer(g, names, np.take(np.asarray(v), idx, axis=axis), "nchw_" + i)
            if weights is dense:
                dense.input[1] = new
            else:
                weights.input[k] = new
    return True


def _row_axis_of(node, k: int, v, row_axis: int, d: int):
    """The axis of operand `k` of `node` (the weights' producer, or the dense layer) that runs over
    the weights' input rows, or None (a scalar, or parameters per output column)."""
    if v is None or np.ndim(v) == 0 or np.size(v) == 1:
        return None
    if np.ndim(v) == 1:  # DequantizeLinear's per-axis parameters
        return 0 if node.op_type == "DequantizeLinear" and attrs(node).get("axis", 1) % 2 == row_axis else None
    return row_axis if np.shape(v)[row_axis] == d and d > 1 else None


def _single_reader(readers: dict, outs: set, tensor: str):
    rs = readers.get(tensor, [])
    return rs[0] if len(rs) == 1 and tensor not in outs else None


def _flattens(n: onnx.NodeProto, values: dict, shapes: dict, d: int) -> bool:
    """Whether `n` flattens its 4-D input to (N, d)."""
    if not is_standard(n) or n.op_type not in ("Flatten", "Reshape"):
        return False
    if n.op_type == "Flatten":
        return attrs(n).get("axis", 1) == 1
    out = shapes.get(n.output[0])
    return n.input[1] in values and out is not None and len(out) == 2 and out[1] == d


def _dense_weights(n: onnx.NodeProto, values: dict, d: int, readers: dict, prods: dict) -> bool:
    """Whether `n` (MatMul / Gemm) multiplies its (N, d) input by constant weights: an initializer
    or the output of a quantizer of constants (QONNX Quant, DequantizeLinear) read only by `n`."""
    b = values.get(n.input[1]) if len(n.input) > 1 else None
    q = prods.get(n.input[1]) if len(n.input) > 1 else None
    if b is None and q is not None and q.op_type in ("Quant", "DequantizeLinear") and len(readers[n.input[1]]) == 1 \
            and all(i in values for i in q.input if i):
        b = values[q.input[0]]
    if b is None or np.ndim(b) != 2:
        return False
    if n.op_type == "Gemm":
        a = attrs(n)
        return not a.get("transA", 0) and np.shape(b)[1 if a.get("transB", 0) else 0] == d
    return np.shape(b)[0] == d


def _elementwise(n: onnx.NodeProto, x: str, values: dict, d: int) -> bool:
    """Whether `n` acts element by element on `x` of shape (N, d): a unary op, or one whose other
    operands are constants that are scalars or one value per element (shape (d,) or (1, d));
    QONNX quantizers with scalar parameters."""
    if n.input[0] != x or (not is_standard(n) and n.op_type not in CUSTOM_ELEMENTWISE):
        return False
    others = [i for i in n.input[1:] if i]
    if n.op_type in UNARY and n.op_type not in ("Clip",):
        return not others
    if n.op_type not in BROADCAST | CUSTOM_ELEMENTWISE | {"Clip"} or not all(i in values for i in others):
        return False
    if n.op_type in CUSTOM_ELEMENTWISE:
        return all(np.size(values[i]) == 1 for i in others)
    return all(np.size(values[i]) == 1 or np.shape(values[i]) in ((d,), (1, d)) for i in others)
