"""Hardtanh (Clip) right before a sign removed: the Sign / BipolarQuant read the Clip's input.

XNOR-Net-style PyTorch code writes BatchNorm -> Hardtanh -> sign (often the STE sign forms that
simplify_ste_sign turns into Sign). Preserves exactly: for constant bounds lo < 0 < hi,
sign(clip(x, lo, hi)) = sign(x) for every float32 x (a positive x stays in (0, hi], a negative
one in [lo, 0), +-0 stays 0, NaN stays NaN), and BipolarQuant's x >= 0 test gives the same bit.
A Clip that anything else reads, whose bounds do not straddle 0, or that is a graph output stays.
"""

from __future__ import annotations

import onnx

from .clamps_to_clip import clamp_bounds
from .graph_edit import constant_values, consumers, copy_model, drop_unused, graph_outputs, is_standard

SIGNS = {("", "Sign"), ("ai.onnx", "Sign"), ("qonnx.custom_op.general", "BipolarQuant")}


def remove_clip_before_sign(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    g = out.graph
    values, readers, outputs = constant_values(g), consumers(g), graph_outputs(g)
    changed = False
    for node in list(g.node):
        if node.op_type != "Clip" or not is_standard(node) or node.output[0] in outputs:
            continue
        clamp = clamp_bounds(node, values)
        bounds = clamp[1:] if clamp is not None else None
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
