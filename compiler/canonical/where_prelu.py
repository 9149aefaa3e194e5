"""Piecewise-linear activations written with a Where around 0, as PyTorch code spells its own
(`torch.where(x > 0, x, a * x)`, `torch.where(x < 0, b * x, x)`, `torch.where(x > 0, x, 0.)`):
Where(cmp(u, 0), A, B) with cmp one of Greater / GreaterOrEqual / Less / LessOrEqual (or the
constant 0 first, mirrored) and each branch u, u * s or s * u (s a scalar constant) or the
constant 0, replaced by PRelu(u, q) (u >= 0: u, below: q u), times p where the branch above 0 is
p u with p = +-2^k other than 1; a branch of 0 above gives Mul(Relu(Neg(u)), -q) (0 above, q u
below). Other slopes above 0 are left alone.

Preserves every float32 value: both branches are 0 at u = 0 (so strict and non-strict comparisons
agree, and -0 only changes sign), q u is the product the model computes, and with p = 2^k, q / p
and p * (q / p) u are exact scalings (outside subnormals and overflow). A NaN u gives NaN in both.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .graph_edit import (Names, add_initializer, constant_values, copy_model, drop_unused, is_standard, producers,
                         replace_nodes, scalar_constant, scalar_operand)

_MIRRORED = {"Greater": "Less", "GreaterOrEqual": "LessOrEqual", "Less": "Greater", "LessOrEqual": "GreaterOrEqual"}


def _comparison_with_zero(node, values: dict):
    """(u, True where the condition is u above 0) of cmp(u, 0) / cmp(0, u), else None."""
    if node is None or not is_standard(node) or node.op_type not in _MIRRORED or len(node.input) != 2:
        return None
    for (u, zero), op in zip((node.input, node.input[::-1]), (node.op_type, _MIRRORED[node.op_type])):
        k = scalar_constant(values, zero, "f")
        if k is not None and float(k) == 0 and u not in values:
            return u, op in ("Greater", "GreaterOrEqual")
    return None


def _slope(branch: str, u: str, prods: dict, values: dict):
    """s where `branch` is u * s (s * u; u itself: 1; the constant 0: 0), else None."""
    if branch == u:
        return 1.0
    c = scalar_constant(values, branch, "f")
    if c is not None:
        return 0.0 if float(c) == 0 else None
    found = scalar_operand(prods.get(branch), values, "Mul")
    return float(found[1]) if found is not None and found[0] == u else None


def where_to_prelu(model: onnx.ModelProto) -> onnx.ModelProto:
    if not any(n.op_type == "Where" for n in model.graph.node):
        return model
    out = copy_model(model)
    g = out.graph
    values, prods = constant_values(g), producers(g)
    names = Names(g)
    changed = False
    for where in [n for n in g.node if is_standard(n) and n.op_type == "Where" and len(n.input) == 3]:
        cmp = _comparison_with_zero(prods.get(where.input[0]), values)
        if cmp is None:
            continue
        u, above_first = cmp
        a, b = where.input[1:] if above_first else where.input[:0:-1]
        p, q = _slope(a, u, prods, values), _slope(b, u, prods, values)
        if p is None or q is None or (p != 0.0 and np.frexp(abs(p))[0] != 0.5):
            continue  # (a slope above 0 that is no power of two: p * PRelu(u, q / p) would round twice)
        y = where.output[0]
        if p == 0.0:  # 0 above, q u below: -q relu(-u)
            neg, rel = names.fresh(u + "_neg"), names.fresh(u + "_relu_neg")
            new = [helper.make_node("Neg", [u], [neg], name=names.fresh("Neg")),
                   helper.make_node("Relu", [neg], [rel], name=names.fresh("Relu")),
                   helper.make_node("Mul", [rel, add_initializer(g, names, np.float32(-q), "slope")], [y],
                                    name=where.name or names.fresh("Mul"))]
        else:
            slope = add_initializer(g, names, np.float32(q / p), "slope")
            pre = y if p == 1.0 else names.fresh(y + "_prelu")
            new = [helper.make_node("PRelu", [u, slope], [pre], name=where.name or names.fresh("PRelu"))]
            if p != 1.0:
                new.append(helper.make_node("Mul", [pre, add_initializer(g, names, np.float32(p), "scale")], [y],
                                            name=names.fresh("Mul")))
        replace_nodes(g, [where], new)
        changed = True
    if changed:
        drop_unused(out)
    return out
