"""onnxruntime's QOperator form (QLinearConv, QLinearMatMul, and the com.microsoft QGemm,
QLinearAdd, QLinearMul, QLinearGlobalAveragePool, QLinearAveragePool, QLinearConcat,
QLinearSigmoid, QLinearLeakyRelu) written as the QDQ form bnnc reads: each operator becomes
DequantizeLinear of its integer operands, the float operator, and QuantizeLinear of its result
(where it has an output scale); the ops between them that move integers without arithmetic
(MaxPool, Reshape, Flatten, Transpose, Squeeze, Unsqueeze, Identity) read DequantizeLinear of
their input and write it quantized again with the same scale and zero point.

What it preserves: the real-number meaning the QOperator specification gives each operator,
y = Q(op(DQ(x), DQ(w), DQ(bias))) with bias scale x_scale * w_scale (float32), which is the QDQ
graph onnxruntime's own optimizer fuses back into these operators. MaxPool, reshapes and
transposes commute with DequantizeLinear (a positive scale is monotone; the others move
elements), and QuantizeLinear(DequantizeLinear(q)) = q for the same scale and zero point, so the
integer tensors between the operators are unchanged. onnxruntime's integer kernels round the
requantization multiplier x_scale * w_scale / y_scale to float32; where an exact result lies
within that rounding of a half step, its integer can differ from the real-number one by 1.
"""

from __future__ import annotations

import onnx
from onnx import helper

from ..errors import BnncError
from .graph_edit import Names, attrs, copy_model, drop_unused, is_standard

MS_DOMAIN = "com.microsoft"
# op type -> (float op type, the integer operands as (value, scale, zero point) input positions,
# the float op's other inputs (position, bias?), the output scale and zero point positions)
_SPEC = {
    ("", "QLinearConv"): ("Conv", [(0, 1, 2), (3, 4, 5)], [(8, True)], (6, 7)),
    ("", "QLinearMatMul"): ("MatMul", [(0, 1, 2), (3, 4, 5)], [], (6, 7)),
    (MS_DOMAIN, "QGemm"): ("Gemm", [(0, 1, 2), (3, 4, 5)], [(6, True)], (7, 8)),
    (MS_DOMAIN, "QLinearAdd"): ("Add", [(0, 1, 2), (3, 4, 5)], [], (6, 7)),
    (MS_DOMAIN, "QLinearMul"): ("Mul", [(0, 1, 2), (3, 4, 5)], [], (6, 7)),
    (MS_DOMAIN, "QLinearGlobalAveragePool"): ("GlobalAveragePool", [(0, 1, 2)], [], (3, 4)),
    (MS_DOMAIN, "QLinearAveragePool"): ("AveragePool", [(0, 1, 2)], [], (3, 4)),
    (MS_DOMAIN, "QLinearSigmoid"): ("Sigmoid", [(0, 1, 2)], [], (3, 4)),
    (MS_DOMAIN, "QLinearLeakyRelu"): ("LeakyRelu", [(0, 1, 2)], [], (3, 4)),
}
_MOVES = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"}
_DROPPED_ATTRS = {"channels_last"}  # the com.microsoft pools' layout flag (only its default, 0, is taken)


def qoperator_to_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    if not any(_kind(n) in _SPEC or n.op_type == "QLinearConcat" for n in model.graph.node):
        return model
    out = copy_model(model)
    g = out.graph
    names = Names(g)
    quant = {}  # integer tensor -> (scale, zero point) names
    nodes = []

    def dq(x: str, scale: str, zp: str, axis=None) -> str:
        y = names.fresh(x + "_dq")
        node = helper.make_node("DequantizeLinear", [x, scale, zp] if zp else [x, scale], [y], name=names.fresh(y))
        if axis is not None:
            node.attribute.append(helper.make_attribute("axis", axis))
        nodes.append(node)
        return y

    def q(y: str, out_name: str, scale: str, zp: str) -> None:
        nodes.append(helper.make_node("QuantizeLinear", [y, scale, zp] if zp else [y, scale], [out_name],
                                      name=names.fresh(out_name + "_q")))
        quant[out_name] = (scale, zp)

    for n in g.node:
        a = attrs(n)
        if _kind(n) in _SPEC:
            op, operands, others, (ys, yz) = _SPEC[_kind(n)]
            need = ys if op == "Gemm" else ys + 1  # QGemm's output scale is optional (a float output)
            if len(n.input) < need or not all(n.input[k] for t in operands for k in t[:2]):
                raise BnncError(f"node '{n.name}' ({n.op_type}): needs at least {need} inputs (each operand with its "
                                "scale and zero point, then the output's), as onnxruntime defines it")
            if a.get("channels_last", 0):
                nodes.append(n)  # NHWC pools: left for the loader to refuse, naming the node
                continue
            ins = []
            for k, (v, s, z) in enumerate(operands):
                # per-channel weight scales: a Conv's output channels, a Gemm's or MatMul's columns
                weight_axis = None if k != 1 else {"Conv": 0, "Gemm": 0 if a.get("transB", 0) else 1,
                                                   "MatMul": -1}.get(op)
                ins.append(dq(n.input[v], n.input[s], _get(n, z), weight_axis))
            for pos, is_bias in others:
                b = _get(n, pos)
                if not b:
                    continue
                if is_bias:  # int32 with scale x_scale * w_scale, zero point 0
                    bs = names.fresh(n.name + "_bias_scale")
                    nodes.append(helper.make_node("Mul", [n.input[operands[0][1]], n.input[operands[1][1]]], [bs],
                                                  name=names.fresh(bs)))
                    b = dq(b, bs, "", 0)
                ins.append(b)
            y = n.output[0] if not _get(n, ys) else names.fresh(n.output[0] + "_real")
            kept = {k: v for k, v in a.items() if k not in _DROPPED_ATTRS}
            nodes.append(helper.make_node(op, ins, [y], name=n.name, **kept))
            if _get(n, ys):
                q(y, n.output[0], n.input[ys], _get(n, yz))
        elif n.domain == MS_DOMAIN and n.op_type == "QLinearConcat":
            if len(n.input) < 5 or (len(n.input) - 2) % 3 or "axis" not in a:
                raise BnncError(f"node '{n.name}' (QLinearConcat): needs an axis, the output's scale and zero "
                                "point, then a value, scale and zero point per operand")
            ins = [dq(n.input[k], n.input[k + 1], _get(n, k + 2)) for k in range(2, len(n.input), 3)]
            y = names.fresh(n.output[0] + "_real")
            nodes.append(helper.make_node("Concat", ins, [y], name=n.name, axis=a["axis"]))
            q(y, n.output[0], n.input[0], _get(n, 1))
        elif n.op_type in _MOVES and n.input and n.input[0] in quant and is_standard(n):
            scale, zp = quant[n.input[0]]
            y = names.fresh(n.output[0] + "_real")
            moved = onnx.NodeProto()
            moved.CopyFrom(n)
            moved.input[0] = dq(n.input[0], scale, zp)
            moved.output[0] = y
            nodes.append(moved)
            q(y, n.output[0], scale, zp)
        else:
            if n.op_type == "QuantizeLinear" and is_standard(n) and len(n.input) > 1:
                quant[n.output[0]] = (n.input[1], _get(n, 2))
            nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    drop_unused(out)
    if not any(n.domain == MS_DOMAIN for n in g.node):
        keep = [o for o in out.opset_import if o.domain != MS_DOMAIN]
        del out.opset_import[:]
        out.opset_import.extend(keep)
    return out


def _kind(node: onnx.NodeProto) -> tuple:
    """(domain, op type), the standard domain as "" (the key of _SPEC)."""
    return ("" if is_standard(node) else node.domain), node.op_type


def _get(node: onnx.NodeProto, k: int) -> str:
    return node.input[k] if k < len(node.input) else ""
