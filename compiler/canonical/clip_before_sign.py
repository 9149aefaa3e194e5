"""Hardtanh (Clip) right before a sign removed: the Sign / BipolarQuant read the Clip's input.

XNOR-Net-style PyTorch code writes BatchNorm -> Hardtanh -> sign (often the STE sign forms that
simplify_ste_sign turns into Sign). Preserves exactly: for constant bounds lo < 0 < hi,
sign(clip(x, lo, hi)) = sign(x) for every float32 x (a positive x stays in (0, hi], a negative
one in [lo, 0), +-0 stays 0, NaN stays NaN), and BipolarQuant's x >= 0 test gives the same bit.
A Clip that anything else reads, whose bounds do not straddle 0, or that is a graph output stays.
"""

from __future__ import annotations

import numpy as np
import onnx

from .graph_edit import attrs, constant_values, consumers, copy_model, drop_unused, graph_outputs, is_standard

SIGNS = {("", "Sign"), ("ai.onnx", "Sign"), ("qonnx.custom_op.general", "BipolarQuant")}


def _bounds(node: onnx.NodeProto, values: dict):
    """(lo, hi) of a Clip with constant bounds (attributes before opset 11, inputs after), else None."""
    a = attrs(node)
    bounds = [a.get("min", -np.inf), a.get("max", np.inf)]
    for i in (1, 2):
        if len(node.input) > i and node.input[i]:
            v = values.get(node.input[i])
            if v is None or np.asarray(v).size != 1:
                return None
            bounds[i - 1] = np.asarray(v).reshape(())
    return float(bounds[0]), float(bounds[1])


def remove_clip_before_sign(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    g = out.graph
    values, readers, outputs = constant_values(g), consumers(g), graph_outputs(g)
    changed = False
    for node in list(g.node):
        if node.op_type != "Clip" or not is_standard(node) or node.output[0] in outputs:
            continue
        bounds = _bounds(node, values)
        reading = readers.get(node.output[0], [])
        if bounds is None or not bounds[0] < 0 < bounds[1] or not reading \
                or any((r.domain, r.op_type) not in SIGNS or r.input[0] != node.output[0] for r in reading):
            continue
        for r in reading:
            r.input[0] = node.input[0]
        g.node.remove(node)
        changed = True
    if changed:
        drop_unused(out)
    return out
