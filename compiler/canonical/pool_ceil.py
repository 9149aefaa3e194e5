"""MaxPool with ceil_mode = 1 rewritten as ceil_mode = 0 with extra end padding; AveragePool with
ceil_mode = 1 as ceil_mode = 0 where that needs no extra padding (the timm / mmcls ResNet-D
shortcut, `AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False)` on an even map).

With ceil_mode the output has o = ceil((L + pb + pe - K) / s) + 1 positions per spatial axis
(K = (k - 1) * d + 1), less one when the last window would start beyond the input and its begin
padding ((o - 1) * s >= L + pb: onnxruntime, like PyTorch, drops it). The rewrite pads the end
by e = (o - 1) * s + K - (L + pb + pe) more, so that floor mode gives the same o windows at the
same positions.

Preserves exactly: a max pool ignores its padding in both forms, every window keeps at least one
input element (the dropped case above), so each output is the max of the same elements. An
average pool whose e is 0 on every axis has the same windows over the same elements in both
modes, so the same divisors (an extra window's divisor differs: those stay ceil_mode, and the
frontend reads their divisors off onnxruntime, frontend/pooling.py). Needs the
spatial input size statically; MaxPools with an indices output are left alone.
"""

from __future__ import annotations

import onnx

from ..original import static_shapes
from .graph_edit import attrs, copy_model, is_standard, set_attr


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def pool_ceil_to_floor(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    shapes = None
    for n in out.graph.node:
        if n.op_type not in ("MaxPool", "AveragePool") or not is_standard(n):
            continue
        a = attrs(n)
        if not a.get("ceil_mode", 0) or (len(n.output) > 1 and n.output[1]):
            continue
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        if shapes is None:
            shapes = static_shapes(out)
        shape = shapes.get(n.input[0])
        kernel = list(a["kernel_shape"])
        s = len(kernel)
        if shape is None or len(shape) != s + 2 or any(d is None for d in shape[2:]):
            continue
        strides = list(a.get("strides", [1] * s))
        dil = list(a.get("dilations", [1] * s))
        pads = list(a.get("pads", [0] * (2 * s)))
        new = list(pads)
        for i in range(s):
            length, k_eff = shape[2 + i], (kernel[i] - 1) * dil[i] + 1
            span = length + pads[i] + pads[s + i] - k_eff
            o = _ceil_div(span, strides[i]) + 1
            if (o - 1) * strides[i] >= length + pads[i]:
                o -= 1
            new[s + i] += max(0, (o - 1) * strides[i] + k_eff - (length + pads[i] + pads[s + i]))
        if n.op_type == "AveragePool" and new != pads:
            continue
        set_attr(n, "pads", new)
        set_attr(n, "ceil_mode", 0)
    return out
