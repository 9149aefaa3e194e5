"""Keras's PReLU as tf2onnx writes it, `Add(Relu(x), Mul(Relu(Neg(x)), c))` with a constant
c = -alpha (either operand order of the Mul and the Add), replaced by ONNX `PRelu(x, -c)`.

Preserves the float32 values on every input (up to the sign of a zero result): for x >= 0,
relu(-x) is a zero, c * 0 a zero and x + zero = x = PRelu(x); for x < 0, relu(x) = +0 and
fl(c * -x) = fl(-c * x) (negation is exact and round-to-nearest is symmetric), so the sum is
PRelu's slope * x; NaN stays NaN and +-inf gives the same value in both. The slope -c is c
negated, exactly. Rewritten only where every intermediate tensor has that one reader and is no
graph output, and c broadcasts to x as PRelu's slope must (its rank at most x's, when the
model states x's rank; a scalar or vector otherwise), so the output shape is x's in both.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .graph_edit import (Names, add_initializer, constant_values, consumers, copy_model, drop_unused,
                         graph_outputs, is_standard, producers)


def _ranks(model: onnx.ModelProto) -> dict:
    """tensor name -> rank, where shape inference states it."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a model shape inference cannot read: ranks unknown, the rewrite stays cautious
        return {}
    g = inferred.graph
    out = {}
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = len(t.shape.dim)
    return out


def keras_prelu_to_prelu(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    g = out.graph
    prods, readers, values, outputs = producers(g), consumers(g), constant_values(g), graph_outputs(g)
    names = Names(g)
    ranks = None
    changed = False

    def only_reader(tensor: str, node) -> bool:
        return tensor not in outputs and [id(r) for r in readers.get(tensor, [])] == [id(node)]

    def standard(tensor: str, op: str):
        p = prods.get(tensor)
        return p if p is not None and p.op_type == op and is_standard(p) else None

    for add in list(g.node):
        if add.op_type != "Add" or not is_standard(add) or len(add.input) != 2:
            continue
        for pos_t, mul_t in (tuple(add.input), tuple(reversed(add.input))):
            pos, mul = standard(pos_t, "Relu"), standard(mul_t, "Mul")
            if pos is None or mul is None or not only_reader(pos_t, add) or not only_reader(mul_t, add):
                continue
            for neg_relu_t, c_t in (tuple(mul.input), tuple(reversed(mul.input))):
                neg_relu, c = standard(neg_relu_t, "Relu"), values.get(c_t)
                neg = standard(neg_relu.input[0], "Neg") if neg_relu is not None else None
                if neg is None or c is None or neg.input[0] != pos.input[0] \
                        or not only_reader(neg_relu_t, mul) or not only_reader(neg_relu.input[0], neg_relu):
                    continue
                c = np.asarray(c)
                if c.dtype != np.float32:
                    continue
                if ranks is None:
                    ranks = _ranks(model)
                x_rank = ranks.get(pos.input[0])
                if c.ndim > (x_rank if x_rank is not None else 1):
                    continue
                slope = add_initializer(g, names, (-c).astype(np.float32), "prelu_slope")
                idx = list(g.node).index(add)
                g.node.remove(add)
                g.node.insert(idx, helper.make_node("PRelu", [pos.input[0], slope], [add.output[0]],
                                                    name=add.name or names.fresh("PRelu")))
                changed = True
                break
            else:
                continue
            break
    if changed:
        drop_unused(out)
    return out
