"""QuantizeLinear -> Clip -> DequantizeLinear of an activation (Brevitas' QCDQ export of a
quantizer narrower than 8 bits) replaced by one QONNX `Quant(x, s, 0, b; signed, narrow)`.

Matched: zero point 0, one scalar scale s shared by both linear quantizers, a Clip to constant
integer bounds [lo, hi] that are a b-bit range: signed [-2^(b-1), 2^(b-1) - 1] (narrow 0) or
[-2^(b-1) + 1, 2^(b-1) - 1] (narrow 1) with b >= 2 (QONNX reads a 1-bit signed Quant as bipolar),
unsigned [0, 2^b - 1] or [0, 2^b - 2]; the intermediate tensors read by nothing else.

The math: the original computes y = s * clamp(clamp(round_half_even(x / s), int8 or uint8 range),
lo, hi); Quant computes y = s * round_half_even(clamp(x / s + 0, lo, hi)). [lo, hi] lies inside the
8-bit range, and for integer bounds rounding and clamping commute (rounding is monotone and keeps
integers), so both are s * clamp(round(x / s), lo, hi) with the same float32 division and product:
bit-identical for every non-NaN x (a NaN saturates to an integer in QuantizeLinear, and stays NaN
in Quant).
"""

from __future__ import annotations

import onnx

from .graph_edit import (Names, attrs, constant_values, consumers, copy_model, drop_unused, graph_outputs,
                         is_standard, producers, quant_bit_range, replace_with_quant, scalar_constant,
                         use_qonnx_domain)

def qcdq_clip_to_quant(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    g = out.graph
    values, prods, readers = constant_values(g), producers(g), consumers(g)
    outs = graph_outputs(g)
    names = Names(g)
    changed = False
    for dq in list(g.node):
        if dq.op_type != "DequantizeLinear" or not is_standard(dq) or _blocked(dq):
            continue
        clip = prods.get(dq.input[0])
        if clip is None or clip.op_type != "Clip" or not is_standard(clip) or len(clip.input) != 3:
            continue
        ql = prods.get(clip.input[0])
        if ql is None or ql.op_type != "QuantizeLinear" or not is_standard(ql) or _blocked(ql):
            continue
        if ql.input[0] in values:
            continue  # a weight: constant folding turns it into integers for the loader
        if len(readers.get(ql.output[0], [])) != 1 or len(readers.get(clip.output[0], [])) != 1 or \
                {ql.output[0], clip.output[0]} & outs:
            continue
        s_q, s_d = scalar_constant(values, ql.input[1], "f"), scalar_constant(values, dq.input[1], "f")
        zp_q = scalar_constant(values, ql.input[2] if len(ql.input) > 2 else "", "iu")
        zp_d = scalar_constant(values, dq.input[2] if len(dq.input) > 2 else "", "iu")
        lo, hi = scalar_constant(values, clip.input[1], "iu"), scalar_constant(values, clip.input[2], "iu")
        if s_q is None or s_d is None or float(s_q) != float(s_d) or not float(s_q) > 0:
            continue
        if zp_q is None or zp_d is None or int(zp_q) != 0 or int(zp_d) != 0 or lo is None or hi is None:
            continue
        signed = zp_q.dtype.kind == "i"
        spec = quant_bit_range(int(lo), int(hi), signed)
        if spec is None:
            continue
        bits, narrow = spec
        replace_with_quant(g, names, dq, ql.input[0], float(s_q), bits, signed, narrow)
        changed = True
    if changed:
        use_qonnx_domain(out)
        drop_unused(out)
    return out


def _blocked(node: onnx.NodeProto) -> bool:
    """True for a blocked quantizer (opset 21 block_size); scalar scales are checked separately."""
    a = attrs(node)
    return "block_size" in a and a["block_size"] != 0
