"""Identity and inference-mode Dropout removed: their readers read the input directly.

Preserves exactly: Identity(x) = x; Dropout(x) = x at inference (opset 12+: `training_mode`
absent, or a constant false; before 12: no `is_test`=0 training attribute matters, onnxruntime
runs Dropout as the identity). A Dropout whose mask output is read, or whose training_mode is not
a known constant false, stays.
"""

from __future__ import annotations

import numpy as np
import onnx

from .graph_edit import bypass, constant_values, copy_model, is_standard


def _is_pass_through(node: onnx.NodeProto, values: dict) -> bool:
    if not is_standard(node) or not node.input or not node.input[0]:
        return False
    if node.op_type == "Identity":
        return True
    if node.op_type != "Dropout":
        return False
    if len(node.output) > 1 and node.output[1]:
        return False  # the mask is read
    if len(node.input) > 2 and node.input[2]:
        mode = values.get(node.input[2])
        return mode is not None and not bool(np.asarray(mode).reshape(-1)[0])
    return True


def remove_pass_through_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    g = out.graph
    values = constant_values(g)
    for n in [n for n in g.node if _is_pass_through(n, values)]:
        bypass(g, n)
    return out
