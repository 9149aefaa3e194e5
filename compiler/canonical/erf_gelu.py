"""The exact GELU as the exporters spell it with Erf, x * (1 + erf(x / sqrt 2)) / 2 (PyTorch's
nn.GELU through the TorchScript exporter, Keras's gelu(approximate=False) through tf2onnx), merged
into one ONNX `Gelu(x)` (approximate "none", the op opset 20 added and the dynamo exporter writes).

Matched: Erf of `x / c` (Div) or `x * c` (Mul) with c within 1e-6 of sqrt 2 (resp. 1 / sqrt 2),
read only by an Add of the constant 1 (either order), whose sum s is read only by the product of
s, x and 0.5 in any of its three two-Mul groupings ((x * s) * 0.5, (s * 0.5) * x, s * (x * 0.5),
operands in either order); every inner tensor read only inside the pattern and no graph output.
Preserves the function x Phi(x), not the float32 roundings of its steps (the model's division by
float32(sqrt 2) is one of them): bnnc's Gelu states its own bound against the exact function.
"""

from __future__ import annotations

import math

import onnx
from onnx import helper

from .graph_edit import (Names, constant_values, consumers, copy_model, drop_unused, graph_outputs, is_standard,
                         producers, replace_nodes, scalar_operand, sole_reader)


def _scaled_input(node: onnx.NodeProto, values: dict):
    """x of a node computing x / sqrt 2 (Div) or x * (1 / sqrt 2) (Mul), else None."""
    div, mul = scalar_operand(node, values, "Div"), scalar_operand(node, values, "Mul")
    if div is not None and node.input[0] == div[0] and abs(float(div[1]) - math.sqrt(2)) < 1e-6:
        return div[0]
    if mul is not None and abs(float(mul[1]) - 1 / math.sqrt(2)) < 1e-6:
        return mul[0]
    return None


def _times(node, values: dict, k: float):
    """The dynamic operand of a Mul by the scalar constant k, else None."""
    found = scalar_operand(node, values, "Mul")
    return found[0] if found is not None and float(found[1]) == k else None


def _product(s: str, x: str, values: dict, prods: dict, readers: dict, outs: set):
    """(nodes, output) of the product s * x * 0.5 read from s, else None."""
    m1 = sole_reader(readers, outs, s)
    if m1 is None or not is_standard(m1) or m1.op_type != "Mul" or len(m1.input) != 2:
        return None
    other = m1.input[1] if m1.input[0] == s else m1.input[0]
    if other == x:  # (x * s) * 0.5
        m2 = sole_reader(readers, outs, m1.output[0])
        return ([m1, m2], m2.output[0]) if m2 is not None and _times(m2, values, 0.5) == m1.output[0] else None
    if _times(m1, values, 0.5) == s:  # (s * 0.5) * x
        m2 = sole_reader(readers, outs, m1.output[0])
        if m2 is not None and is_standard(m2) and m2.op_type == "Mul" and sorted(m2.input) == sorted([m1.output[0], x]):
            return [m1, m2], m2.output[0]
        return None
    half = prods.get(other)  # s * (x * 0.5)
    if half is not None and _times(half, values, 0.5) == x and sole_reader(readers, outs, other) is m1:
        return [half, m1], m1.output[0]
    return None


def erf_to_gelu(model: onnx.ModelProto) -> onnx.ModelProto:
    if not any(n.op_type == "Erf" for n in model.graph.node):
        return model
    out = copy_model(model)
    g = out.graph
    values = constant_values(g)
    prods, readers, outs = producers(g), consumers(g), graph_outputs(g)
    names = Names(g)
    changed = False
    for erf in [n for n in g.node if is_standard(n) and n.op_type == "Erf"]:
        scaled = prods.get(erf.input[0])
        x = _scaled_input(scaled, values) if scaled is not None else None
        if x is None or sole_reader(readers, outs, scaled.output[0]) is not erf:
            continue
        add = sole_reader(readers, outs, erf.output[0])
        found = scalar_operand(add, values, "Add")
        if found is None or found[0] != erf.output[0] or float(found[1]) != 1.0:
            continue
        product = _product(add.output[0], x, values, prods, readers, outs)
        if product is None:
            continue
        muls, y = product
        gelu = helper.make_node("Gelu", [x], [y], name=erf.name or names.fresh("Gelu"))
        matched = [scaled, erf, add] + muls
        replace_nodes(g, sorted(matched, key=list(g.node).index), [gelu])
        changed = True
    if not changed:
        return model
    drop_unused(out)
    return out
