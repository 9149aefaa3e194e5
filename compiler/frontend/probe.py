"""One model node run alone in onnxruntime, with its attributes and constant inputs, on a probe
input: how the frontend reads tables (a resize's pixel indices, an average pool's divisors) off
the runtime's own semantics instead of re-deriving every attribute's meaning."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import BnncError
from .registry import where


def run_alone(ctx, node, x: np.ndarray) -> np.ndarray:
    """The node's first output on float32 `x` (its first input); its other inputs must be constants."""
    import onnxruntime as ort

    consts = []
    for i, t in enumerate(node.inputs[1:], 1):
        if t and t not in ctx.consts:
            raise BnncError(f"{where(node)}: its input {i} ('{t}') is computed at run time; bnnc needs it constant "
                            f"for {node.op}")
        if t:
            consts.append(numpy_helper.from_array(np.asarray(ctx.consts[t]), t))
    probe = helper.make_node(node.op, ["x", *node.inputs[1:]], ["y"], **dict(node.attrs.items()))
    graph = helper.make_graph([probe], "probe", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT,
                                                                             list(x.shape))],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ctx.lm.opset or 13)])
    model.ir_version = min(model.ir_version, 8)
    try:
        so = ort.SessionOptions()
        so.log_severity_level = 4  # (fatal only: its refusal comes back as the one-line error below)
        sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return sess.run(None, {"x": np.ascontiguousarray(x, np.float32)})[0]
    except Exception as e:  # onnxruntime's own refusal of the attributes
        raise BnncError(f"{where(node)}: onnxruntime cannot run this {node.op}: "
                        f"{str(e).splitlines()[0][:200]}") from None
