"""larq's SteSign as tf2onnx writes it, `Sign(Sign(x) + c)` with a constant 0 < c < 1 (larq adds
0.1 so that sign(0) = +1), replaced by QONNX `BipolarQuant(x, 1)`: +1 where x >= 0, else -1.

The math: sign(x) is -1, +-0 or +1; adding c in (0, 1) gives fl(-1 + c), c or fl(1 + c). The
first is negative: c <= 1 - 2^-24, so -1 + c <= -2^-24, a float, and rounding is monotone; the
last is positive. The outer Sign maps the three to -1, +1, +1, i.e. to -1 exactly when x < 0. -0
gives +1 in both (-0 >= 0). Exact for every non-NaN x; a NaN input gives NaN in the original and
-1 in BipolarQuant (NaN >= 0 is false).

The same sign written with a Where, as PyTorch code writes it (`torch.where(x >= 0, 1., -1.)`):
Where(GreaterOrEqual(x, 0), c, -c) and Where(Less(x, 0), -c, c), c > 0 a scalar, become
BipolarQuant(x, c). Exact for every non-NaN x (a NaN gives -c in the first form, c in the second,
-c in BipolarQuant).

QKeras's binary() as tf2onnx writes it, `s + (1 - |s|)` with s = Sign(x) (Add(s, Sub(1, Abs(s))),
either Add order): s = +-1 stays, s = 0 gives 1; -0 gives -0 + 1 = 1. BipolarQuant(x, 1), exact for
every non-NaN x (a NaN gives NaN in the original, -1 in BipolarQuant).

BipolarQuant is bnnc's (and QONNX's) bipolar sign with sign(0) = +1; `bnnc verify` and the tests
run it in onnxruntime through `original.rewrite_custom_ops` (Where(x >= 0, 1, -1) * scale).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .graph_edit import (QONNX_DOMAIN, Names, add_initializer, constant_values, copy_model, drop_unused,
                         is_standard, producers, replace_node, scalar_constant, scalar_operand, use_qonnx_domain)


def _bipolar(names: Names, node: onnx.NodeProto, x: str, scale: str) -> onnx.NodeProto:
    """BipolarQuant(x, scale) writing `node`'s output, under its name."""
    return helper.make_node("BipolarQuant", [x, scale], [node.output[0]], name=node.name or names.fresh("BipolarQuant"),
                            domain=QONNX_DOMAIN)


def _offset_sign_input(node, prods: dict, values: dict):
    """x of larq's Sign(Sign(x) + c), 0 < c < 1 (either Add order), else None."""
    add = prods.get(node.input[0]) if node.op_type == "Sign" and is_standard(node) else None
    if add is None or add.op_type != "Add" or not is_standard(add):
        return None
    found = scalar_operand(add, values)
    inner = prods.get(found[0]) if found is not None else None
    if inner is None or inner.op_type != "Sign" or not is_standard(inner) or not 0.0 < float(found[1]) < 1.0:
        return None
    return inner.input[0]


def _qkeras_binary_input(node, prods: dict, values: dict):
    """x of QKeras's binary(), Sign(x) + (1 - Abs(Sign(x))) (either Add order), else None."""
    if node.op_type != "Add" or not is_standard(node) or len(node.input) != 2:
        return None
    for s, d in (tuple(node.input), tuple(reversed(node.input))):
        sign, sub = prods.get(s), prods.get(d)
        if sign is None or sign.op_type != "Sign" or not is_standard(sign) or sub is None or \
                sub.op_type != "Sub" or not is_standard(sub) or scalar_constant(values, sub.input[0], "f") != 1.0:
            continue
        ab = prods.get(sub.input[1])
        if ab is not None and ab.op_type == "Abs" and is_standard(ab) and ab.input[0] == s:
            return sign.input[0]
    return None


def bipolar_sign_from_offset_sign(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    g = out.graph
    prods, values = producers(g), constant_values(g)
    names = Names(g)
    one = None
    changed = False
    for node in list(g.node):
        x = _offset_sign_input(node, prods, values) or _qkeras_binary_input(node, prods, values)
        if x is None:
            continue
        if one is None:
            one = add_initializer(g, names, np.array(1.0, np.float32), "bipolar_scale")
        replace_node(g, node, _bipolar(names, node, x, one))
        changed = True
    if changed:
        use_qonnx_domain(out)
        drop_unused(out)
    return out


def bipolar_sign_from_where(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    g = out.graph
    prods, values = producers(g), constant_values(g)
    names = Names(g)
    changed = False
    for where in list(g.node):
        if where.op_type != "Where" or not is_standard(where) or len(where.input) != 3:
            continue
        test = prods.get(where.input[0])
        if test is None or not is_standard(test) or test.op_type not in ("GreaterOrEqual", "Less"):
            continue
        zero = scalar_constant(values, test.input[1], "f")
        a, b = (scalar_constant(values, t, "f") for t in where.input[1:])
        if zero is None or float(zero) != 0.0 or a is None or b is None:
            continue
        c = float(a) if test.op_type == "GreaterOrEqual" else float(b)  # the value where x >= 0
        if not (c > 0 and float(a) + float(b) == 0.0):
            continue
        scale = add_initializer(g, names, np.array(c, np.float32), "bipolar_scale")
        replace_node(g, where, _bipolar(names, where, test.input[0], scale))
        changed = True
    if changed:
        use_qonnx_domain(out)
        drop_unused(out)
    return out
