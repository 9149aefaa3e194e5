"""Layout ops between a QuantizeLinear and its DequantizeLinear moved after the DequantizeLinear:
Q -> (Transpose | Reshape | Flatten | Squeeze | Unsqueeze)* -> DQ becomes Q -> DQ -> the same
layout ops, as tf2onnx writes a full-integer TFLite model (a Squeeze after the global pool, the
NHWC Transpose and Reshape of a Flatten, on the int8 tensor).

Preserves exactly: a per-tensor DequantizeLinear (scalar scale and zero point) maps every element
alike, y = (q - zp) * scale, and a layout op moves elements without changing them, so the two
commute; the layout ops now move float32 values that equal the dequantized integers. Matched only
where each tensor on the way has one reader and is no graph output; a per-axis DequantizeLinear
(whose axis a Transpose or Reshape would move) and the model input's own quantizer (its NHWC
Transpose is read as the input's layout) are left as they are.
"""

from __future__ import annotations

import numpy as np
import onnx

from .graph_edit import (Names, constant_values, consumers, copy_model, graph_outputs, is_standard, producers,
                         sole_reader)

LAYOUT = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}
INPUT_SIDE = {"Cast", "Sub", "Add", "Mul", "Div", "Identity", "QuantizeLinear", "DequantizeLinear"}


def _input_side(g) -> set:
    """The model input and what elementwise ops and casts compute from it alone (its
    normalisation), before any layer: a quantizer of these is the input's own."""
    side = {i.name for i in g.input}
    grew = True
    while grew:
        grew = False
        for n in g.node:
            if n.op_type in INPUT_SIDE and n.input and n.input[0] in side and n.output[0] not in side:
                side.add(n.output[0])
                grew = True
    return side


def dequantize_before_layout_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    g = out.graph
    prods, readers, values, outs = producers(g), consumers(g), constant_values(g), graph_outputs(g)
    names = Names(g)
    inputs = _input_side(g)
    changed = False
    for dq in list(g.node):
        if dq.op_type != "DequantizeLinear" or not is_standard(dq) or \
                any(np.size(values.get(i, np.zeros(2))) != 1 for i in dq.input[1:] if i):
            continue
        chain, t = [], dq.input[0]
        while True:
            n = prods.get(t)
            if n is None or not is_standard(n) or n.op_type not in LAYOUT or sole_reader(readers, outs, t) is None:
                break
            chain.append(n)
            t = n.input[0]
        q = prods.get(t)
        if not chain or q is None or q.op_type != "QuantizeLinear" or not is_standard(q) or \
                sole_reader(readers, outs, t) is None or q.input[0] in inputs:
            continue  # (the model input's own NHWC Transpose is read where it is)
        chain.reverse()  # from the QuantizeLinear's side
        moved = names.fresh(dq.output[0] + "_before_layout")
        final = dq.output[0]
        dq.input[0], dq.output[0] = t, moved
        chain[0].input[0] = moved
        chain[-1].output[0] = final
        # the nodes in data order: the DequantizeLinear right after the QuantizeLinear
        g.node.remove(dq)
        g.node.insert(list(g.node).index(q) + 1, dq)
        stale = {n.output[0] for n in chain}  # their element type changed (int8 -> float32)
        keep = [vi for vi in g.value_info if vi.name not in stale]
        del g.value_info[:]
        g.value_info.extend(keep)
        changed = True
        prods, readers = producers(g), consumers(g)
    return out if changed else model
