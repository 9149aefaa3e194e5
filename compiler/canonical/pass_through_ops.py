"""Identity, inference-mode Dropout, multiplication or division by a constant 1 (QKeras's
quantizers multiply their straight-through estimator by 1.0), and an Expand whose readers
broadcast its input to the same shape anyway (a Squeeze-and-Excitation gate's
`y.view(b, c, 1, 1).expand_as(x)` before `x * y`) removed: their readers read the input directly.

Preserves exactly: Identity(x) = x; Dropout(x) = x at inference (opset 12+: `training_mode`
absent, or a constant false; before 12: no `is_test`=0 training attribute matters, onnxruntime
runs Dropout as the identity); x * 1 = x / 1 = x in IEEE arithmetic for every x, zeros and
infinities included (the constant a single float 1.0 of rank 0 or 1, which broadcasts to x's own
shape); Expand(t, s) read only by binary elementwise ops whose other operand has shape s (s is
that operand's Shape, or both shapes are static and equal): ONNX's broadcasting of t against that
operand is the same as Expand's to s, so every element of the result reads the same element of
t. A Dropout whose mask output is read, or whose training_mode is not a known constant false,
stays.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..original import static_shapes
from .graph_edit import (bypass, constant_values, consumers, copy_model, drop_unused, graph_outputs, is_standard,
                         producers)


def _is_pass_through(node: onnx.NodeProto, values: dict) -> bool:
    if not is_standard(node) or not node.input or not node.input[0]:
        return False
    if node.op_type == "Identity":
        return True
    if node.op_type in ("Mul", "Div") and len(node.input) == 2:
        return _is_one(values.get(node.input[1])) and node.input[0] not in values
    if node.op_type != "Dropout":
        return False
    if len(node.output) > 1 and node.output[1]:
        return False  # the mask is read
    if len(node.input) > 2 and node.input[2]:
        mode = values.get(node.input[2])
        return mode is not None and not bool(np.asarray(mode).reshape(-1)[0])
    return True


def _is_one(v) -> bool:
    """Whether `v` is a single float 1.0 of rank 0 or 1."""
    return v is not None and np.asarray(v).dtype.kind == "f" and np.asarray(v).size == 1 \
        and np.asarray(v).ndim <= 1 and float(np.asarray(v).reshape(-1)[0]) == 1.0


BROADCASTING = {"Add", "Sub", "Mul", "Div", "Min", "Max", "Pow", "Less", "LessOrEqual", "Greater",
                "GreaterOrEqual", "Equal", "And", "Or", "Xor"}


def _broadcast_expands(model: onnx.ModelProto, values: dict, outputs: set) -> None:
    """Readers of an Expand that their own broadcasting makes redundant read its input instead."""
    g = model.graph
    prods, readers = producers(g), consumers(g)
    shapes = None
    for n in list(g.node):
        if n.op_type != "Expand" or not is_standard(n) or n.output[0] in outputs or n.input[0] in values:
            continue
        rs = readers.get(n.output[0], [])
        if not rs or not all(is_standard(r) and r.op_type in BROADCASTING and len(r.input) == 2
                             and list(r.input).count(n.output[0]) == 1 for r in rs):
            continue
        shape_of = prods.get(n.input[1])
        ok = True
        for r in rs:
            other = r.input[1] if r.input[0] == n.output[0] else r.input[0]
            if shape_of is not None and shape_of.op_type == "Shape" and is_standard(shape_of) \
                    and shape_of.input[0] == other and len(shape_of.attribute) == 0:
                continue
            if shapes is None:
                shapes = static_shapes(model)
            a, b = shapes.get(n.output[0]), shapes.get(other)
            if a is None or a != b or any(d is None for d in a[1:]):
                ok = False
        if ok:
            for r in rs:
                r.input[list(r.input).index(n.output[0])] = n.input[0]


def remove_pass_through_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    g = out.graph
    values = constant_values(g)
    outputs = graph_outputs(g)
    _broadcast_expands(out, values, outputs)
    for n in g.node:  # 1 * x as x * 1 (the same value): the input read through comes first
        if n.op_type == "Mul" and is_standard(n) and len(n.input) == 2 and _is_one(values.get(n.input[0])):
            n.input[0], n.input[1] = n.input[1], n.input[0]
    through = [n for n in g.node if _is_pass_through(n, values)]
    # readers of a pass-through output read its input: one alias map, resolved along chains, and
    # one pass over the graph (bypassing node by node rescans it: quadratic on long chains)
    alias = {n.output[0]: n.input[0] for n in through if n.output[0] not in outputs}

    def source(t: str) -> str:
        seen = []
        while t in alias:
            seen.append(t)
            t = alias[t]
        for s in seen:
            alias[s] = t
        return t

    removed = {id(n) for n in through if n.output[0] in alias}
    kept = [n for n in g.node if id(n) not in removed]
    for n in kept:
        for i, t in enumerate(n.input):
            if t in alias:
                n.input[i] = source(t)
    del g.node[:]
    g.node.extend(kept)
    for n in [n for n in g.node if _is_pass_through(n, values) and n.output[0] in outputs]:
        bypass(g, n)  # a graph output keeps its name: the producer of the input is renamed
    drop_unused(out)  # the Expands read through, and the Shapes they read
    return out
