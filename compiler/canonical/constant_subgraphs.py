"""Nodes whose inputs are all constants, replaced by initializers holding their values.

Exporters compute weights in the graph: Bi-Real's `mean|W| * sign(W)` from latent weights
(Abs / ReduceMean / Sign), Main/Subsidiary pruning masks `W * ((sign(m) - 1) / 2) + W`, the Clip
between QuantizeLinear and DequantizeLinear of a QCDQ weight, Constant nodes. Each such node is
evaluated by onnx's reference evaluator (`onnx.reference.ReferenceEvaluator`), in topological
order, and its outputs become initializers; Constant nodes become initializers too. A node
neither evaluator can run stays as it is (the loader folds it or names it).

Kept, so that the loader still sees a quantized weight as integers times a scale
(`onnx_loader.fold_with_origin`): DequantizeLinear (its integer input is folded, itself is not),
and every custom-domain node (QONNX / FINN Quant, BipolarQuant, ...), which the reference
evaluator cannot run; the loader folds those itself. Random generators are never folded.

Preserves exactly: the values onnxruntime computes for the original. Correctly rounded
arithmetic (+ - * / sqrt, comparisons, casts) and data movement give the same bits in the reference
evaluator. Ops whose result depends on the order of a sum (reductions, MatMul / Gemm / Conv,
Softmax, ...) can differ in the last bit between numpy and onnxruntime (numpy's pairwise summation
over axis 1 of a 4-D weight does), and so can transcendental functions (Exp, Pow, Tanh, ...);
those are evaluated by onnxruntime, the engine `bnnc verify` runs the original in, with its
settings (one thread, no graph optimizations), so the folded weights are the very values the
original model uses there.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ..original import MAX_IR_VERSION, static_shapes
from .graph_edit import constant_values, copy_model, default_opset, drop_unused, is_standard, onnxruntime_session

# DequantizeLinear stays: the loader reads a quantized weight's integers through it.
KEPT_OPS = {"DequantizeLinear", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
            "Multinomial", "Bernoulli"}


# Computed by onnxruntime, as the original runs there: results that depend on the order of a sum,
# and functions numpy and onnxruntime need not round alike (neither is correctly rounded).
ONNXRUNTIME_OPS = {"ReduceMean", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
                   "ReduceLogSumExp", "ReduceSumSquare", "MatMul", "Gemm", "Conv", "ConvTranspose",
                   "Softmax", "LogSoftmax", "AveragePool", "GlobalAveragePool", "LpNormalization",
                   "Einsum", "CumSum", "BatchNormalization", "InstanceNormalization", "LayerNormalization",
                   "Sum", "Mean",
                   "Exp", "Log", "Pow", "Tanh", "Sigmoid", "Erf", "Softplus", "Elu", "Selu", "Celu", "Gelu",
                   "Mish", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh",
                   "Atanh", "HardSwish"}


def _evaluate_onnxruntime(node: onnx.NodeProto, feeds: dict, opset: int) -> list:
    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
              for k, v in feeds.items()]
    probe = helper.make_model(helper.make_graph([node], "fold", inputs, []),
                              opset_imports=[helper.make_opsetid("", opset)])
    probe.ir_version = min(probe.ir_version, MAX_IR_VERSION)
    typed = onnx.shape_inference.infer_shapes(probe, strict_mode=True)
    types = {vi.name: vi for vi in typed.graph.value_info}
    probe.graph.output.extend(types[o] for o in node.output if o)
    session = onnxruntime_session(probe)
    got = dict(zip([o for o in node.output if o], session.run(None, feeds)))
    return [got.get(o) for o in node.output]


def evaluate_node(node: onnx.NodeProto, values: dict, opset: int):
    """The outputs of a standard-domain node on the constant `values` of its inputs, or None when
    neither evaluator runs it (the node then stays, and the loader folds it or names it)."""
    try:
        feeds = {i: np.asarray(values[i]) for i in node.input if i}
        if node.op_type in ONNXRUNTIME_OPS:
            return _evaluate_onnxruntime(node, feeds, opset)
        return ReferenceEvaluator(node, opsets={"": opset}).run(None, feeds)
    except Exception:
        return None


def _static_shape_values(model: onnx.ModelProto, values: dict) -> dict:
    """{output: value} of the Shape nodes of activations whose shape is static but for the batch
    axis, which bnnc compiles as 1 (the frontend reads Shape the same way): tf2onnx's
    `ones_like(x)`, ConstantOfShape(Shape(x)), then folds to a constant."""
    nodes = [n for n in model.graph.node if n.op_type == "Shape" and is_standard(n) and n.input[0] not in values]
    if not nodes:
        return {}
    shapes = static_shapes(model)
    found = {}
    for n in nodes:
        shape = shapes.get(n.input[0])
        if not shape or any(d is None for d in shape[1:]):
            continue
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        found[n.output[0]] = np.array((1, *shape[1:]), np.int64)[a.get("start", 0):a.get("end")]
    return found


def fold_constant_subgraphs(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    g = out.graph
    opset = default_opset(out)
    values = constant_values(g)
    initializer_names = {t.name for t in g.initializer}
    graph_inputs = {i.name for i in g.input} - initializer_names
    folded_nodes, new_values = [], {}
    values.update(_static_shape_values(out, values))
    pending = [n for n in g.node if is_standard(n) and n.op_type not in KEPT_OPS]
    progress = True
    while progress:  # repeated sweeps: the file's node order need not be topological
        progress, rest = False, []
        for n in pending:
            if n.op_type == "Constant":
                if n.output[0] in values:
                    folded_nodes.append(n)
                    new_values[n.output[0]] = values[n.output[0]]
                continue
            ins = [i for i in n.input if i]
            if not ins or any(i not in values or i in graph_inputs for i in ins) or \
                    any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
                rest.append(n)  # If / Loop / Scan on constants are rare: left to the loader
                continue
            results = evaluate_node(n, values, opset)
            if results is None:
                rest.append(n)
                continue
            for o, v in zip(n.output, results):
                if o:
                    values[o] = np.asarray(v)
                    new_values[o] = np.asarray(v)
            folded_nodes.append(n)
            progress = True
        pending = rest
    if not folded_nodes:
        return out
    for n in folded_nodes:
        g.node.remove(n)
    for name, v in new_values.items():
        g.initializer.append(numpy_helper.from_array(v, name))
    drop_unused(out)
    return out
