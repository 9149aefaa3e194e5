"""A Pad node with constant zero padding of the spatial axes merged into the `pads` of the Conv or
AveragePool that alone reads it; a Pad with -inf into a MaxPool.

Conditions: Pad mode `constant`, constant non-negative pads, none on the batch and channel axes,
a pad value of 0 (absent means 0) for Conv and AveragePool and -inf for MaxPool, the Pad's
output read only by that one node, whose `auto_pad` is NOTSET. An AveragePool takes
`count_include_pad = 1`, and is merged only when it has no pads of its own or already counts them:
a window then divides by the full kernel size either way. A pool's merged pads must stay
smaller than its kernel (onnxruntime refuses larger ones).

Preserves exactly: a convolution's implicit padding is zeros, which onnxruntime materializes
the same way (im2col), so the products and their order are the same; padded zeros add +-0 to an
average pool's sum and a window's divisor stays the kernel size; a max pool ignores its implicit
padding, as it ignores -inf.
"""

from __future__ import annotations

import numpy as np
import onnx

from .graph_edit import attrs, consumers, constant_values, copy_model, default_opset, drop_unused, is_standard, \
    graph_outputs, set_attr


def _pad_spec(pad: onnx.NodeProto, values: dict, opset: int):
    """(pads, value) of a constant-mode Pad, or None."""
    a = attrs(pad)
    mode = a.get("mode", b"constant")
    if mode not in (b"constant", "constant"):
        return None
    if opset >= 11:
        if len(pad.input) < 2 or pad.input[1] not in values:
            return None
        if len(pad.input) > 3 and pad.input[3]:
            return None  # explicit axes
        pads = [int(v) for v in np.asarray(values[pad.input[1]]).reshape(-1)]
        value = 0.0
        if len(pad.input) > 2 and pad.input[2]:
            if pad.input[2] not in values:
                return None
            value = float(np.asarray(values[pad.input[2]]).reshape(-1)[0])
    else:
        pads = list(a.get("pads", []))
        value = float(a.get("value", 0.0))
    return pads, value


def merge_pads_into_windows(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    g = out.graph
    values = constant_values(g)
    opset = default_opset(out)
    readers = consumers(g)
    outs = graph_outputs(g)
    changed = False
    for pad in list(g.node):
        if pad.op_type != "Pad" or not is_standard(pad) or pad.output[0] in outs:
            continue
        spec = _pad_spec(pad, values, opset)
        users = readers.get(pad.output[0], [])
        if spec is None or len(users) != 1:
            continue
        pads, value = spec
        win = users[0]
        if win.op_type not in ("Conv", "AveragePool", "MaxPool") or not is_standard(win) or \
                win.input[0] != pad.output[0] or any(i == pad.output[0] for i in win.input[1:]):
            continue
        r = len(pads) // 2
        if r < 3 or any(p < 0 for p in pads) or pads[0] or pads[1] or pads[r] or pads[r + 1]:
            continue
        a = attrs(win)
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            continue
        if win.op_type == "MaxPool":
            if value != -np.inf or (len(win.output) > 1 and win.output[1]):
                continue  # indices would count the explicit padding
        elif value != 0.0:
            continue
        old = list(a.get("pads", [0] * (2 * (r - 2))))
        if win.op_type == "AveragePool" and any(old) and not a.get("count_include_pad", 0):
            continue
        if win.op_type == "MaxPool" and a.get("ceil_mode", 0):
            continue
        s = r - 2
        new = [old[i] + pads[2 + i] for i in range(s)] + [old[s + i] + pads[r + 2 + i] for i in range(s)]
        if win.op_type != "Conv":
            kernel = list(a.get("kernel_shape", []))
            if len(kernel) != s or any(new[i] >= kernel[i] or new[s + i] >= kernel[i] for i in range(s)):
                continue  # onnxruntime refuses pool pads as large as the kernel
        set_attr(win, "pads", new)
        if win.op_type == "AveragePool":
            set_attr(win, "count_include_pad", 1)
        win.input[0] = pad.input[0]
        changed = True
    if changed:
        drop_unused(out)
    return out
