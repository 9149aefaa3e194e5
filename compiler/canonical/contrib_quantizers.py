"""onnxruntime's com.microsoft QuantizeLinear / DequantizeLinear (what its quantizer writes for
4-bit and 16-bit QDQ below opset 21) as the standard operators.

What it preserves: the contrib operators are the standard ones, with the same inputs (x, scale,
zero point) and `axis`, extended to the int4 / uint4 / int16 / uint16 types that the standard
ones take from opset 21 on; the rewrite only moves them into the standard domain, so every value
is unchanged. bnnc reads the types from the zero point, whatever the model's opset."""

from __future__ import annotations

import onnx

from .graph_edit import copy_model
from .qoperator import MS_DOMAIN

_OPS = ("QuantizeLinear", "DequantizeLinear")


def contrib_quantizers_to_standard(model: onnx.ModelProto) -> onnx.ModelProto:
    if not any(n.domain == MS_DOMAIN and n.op_type in _OPS for n in model.graph.node):
        return model
    out = copy_model(model)
    for n in out.graph.node:
        if n.domain == MS_DOMAIN and n.op_type in _OPS:
            n.domain = ""
    if not any(n.domain == MS_DOMAIN for n in out.graph.node):
        keep = [o for o in out.opset_import if o.domain != MS_DOMAIN]
        del out.opset_import[:]
        out.opset_import.extend(keep)
    return out
