"""larq's ste_tern activation as tf2onnx writes it, `Sign(Sign(x + t) + Sign(x - t))` with a
constant t > 0, replaced by one QONNX `MultiThreshold(x, [[t', t]], out_bias=-1)`, t' the float32
after -t: -1 where x <= -t, 0 where -t < x < t, +1 where x >= t.

The math: x + t and x - t are exact to their sign (a float32 sum rounds to 0 only when it is 0),
so the inner signs are sign(x + t) and sign(x - t); their sum is -2, -1, 0, 1 or 2 exactly, and
the outer sign gives -1 for x <= -t (x = -t: 0 + -1), 0 strictly between, +1 for x >= t (x = t:
1 + 0). MultiThreshold counts the thresholds x reaches, x >= T_j, so -1 + [x >= t'] + [x >= t] with
t' = nextafter(-t, +inf): for float32 x, x > -t is x >= t'. Exact for every non-NaN x; a NaN gives
NaN in the original and -1 in MultiThreshold.

QKeras's ternary(alpha=1) as tf2onnx writes it, `Sign(x) * Cast(|x| >= t)` (Mul in either order,
the Cast to float): -1 where x <= -t, 0 where |x| < t, +1 where x >= t, the same map, exact for every
non-NaN x (|x| is exact, and x <= -t is |x| >= t for negative x).

Matched: the outer Add of the two inner Signs in either order, x + t as Add(x, t) or Add(t, x),
x - t as Sub(x, t), t the same positive scalar constant value in both; each intermediate read only
by the next node and no graph output.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .graph_edit import (QONNX_DOMAIN, Names, add_initializer, attrs, constant_values, consumers, copy_model,
                         drop_unused, graph_outputs, is_standard, producers, replace_node, scalar_constant,
                         sole_reader, use_qonnx_domain)


def _shifted(node, values: dict):
    """(x, t, sign of the shift) of Add(x, t) / Add(t, x) / Sub(x, t) with a scalar float constant t."""
    if node is None or not is_standard(node) or node.op_type not in ("Add", "Sub"):
        return None
    a, b = node.input
    if node.op_type == "Add" and scalar_constant(values, a, "f") is not None:
        a, b = b, a
    t = scalar_constant(values, b, "f")
    if t is None or a in values:
        return None
    return a, float(t), 1 if node.op_type == "Add" else -1


def ternary_sign_to_threshold(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    g = out.graph
    prods, values, readers, outs = producers(g), constant_values(g), consumers(g), graph_outputs(g)
    names = Names(g)
    changed = False

    def only_reader(t: str) -> bool:
        return sole_reader(readers, outs, t) is not None

    for outer in list(g.node):
        if outer.op_type != "Sign" or not is_standard(outer):
            continue
        add = prods.get(outer.input[0])
        if add is None or add.op_type != "Add" or not is_standard(add) or not only_reader(add.output[0]):
            continue
        inner = [prods.get(i) for i in add.input]
        if any(s is None or s.op_type != "Sign" or not is_standard(s) or not only_reader(s.output[0]) for s in inner):
            continue
        shifts = [_shifted(prods.get(s.input[0]), values) for s in inner]
        if any(sh is None for sh in shifts) or not all(only_reader(s.input[0]) for s in inner):
            continue
        (x1, t1, d1), (x2, t2, d2) = shifts
        if x1 != x2 or t1 != t2 or not t1 > 0 or {d1, d2} != {1, -1}:
            continue
        replace_node(g, outer, _ternary(g, names, outer, x1, np.float32(t1)))
        changed = True
    for mul in list(g.node):  # QKeras's ternary(): Sign(x) * Cast(Abs(x) >= t)
        if mul.op_type != "Mul" or not is_standard(mul) or len(mul.input) != 2:
            continue
        for s, m in (tuple(mul.input), tuple(reversed(mul.input))):
            sign, cast = prods.get(s), prods.get(m)
            if sign is None or sign.op_type != "Sign" or not is_standard(sign) or cast is None or \
                    cast.op_type != "Cast" or not is_standard(cast) or attrs(cast).get("to") != onnx.TensorProto.FLOAT:
                continue
            ge = prods.get(cast.input[0])
            if ge is None or ge.op_type != "GreaterOrEqual" or not is_standard(ge):
                continue
            ab, t = prods.get(ge.input[0]), scalar_constant(values, ge.input[1], "f")
            if ab is None or ab.op_type != "Abs" or not is_standard(ab) or ab.input[0] != sign.input[0] or \
                    t is None or not float(t) > 0:
                continue
            replace_node(g, mul, _ternary(g, names, mul, sign.input[0], np.float32(t)))
            changed = True
            break
    if changed:
        use_qonnx_domain(out)
        drop_unused(out)
    return out


def _ternary(g, names: Names, node, x: str, t: np.float32):
    """MultiThreshold(x, [[t', t]], out_bias=-1) writing `node`'s output: -1, 0, +1 at -t < x, x >= t."""
    thresholds = np.array([[np.nextafter(-t, np.float32(np.inf)), t]], np.float32)
    thr = add_initializer(g, names, thresholds, "ternary_thresholds")
    return helper.make_node("MultiThreshold", [x, thr], [node.output[0]],
                            name=node.name or names.fresh("MultiThreshold"), domain=QONNX_DOMAIN, out_scale=1.0,
                            out_bias=-1.0)
