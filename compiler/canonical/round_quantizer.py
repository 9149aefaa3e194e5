"""A clamp, a positive scale and Round (DoReFa's activation quantizer as larq + tf2onnx write it:
`Min(x, hi)`, `Max(., lo)` (one `Clip` after clamps_to_clip), `Mul(k)`, `Round`) replaced by
`Mul(x, k)` and one QONNX `Quant(., 1, 0, b; signed, narrow, ROUND)`.

Matched: scalar float32 constants lo < hi and k > 0 whose products lo * k and hi * k are exact
float32 integers forming a b-bit Quant range (DoReFa: [0, 1] * (2^b - 1)); every intermediate
tensor read only by the next node and no graph output.

Preserves exactly: the original computes round_half_even(fl(clamp(x, lo, hi) * k)); the rewrite
round_half_even(clamp(fl(x * k), lo * k, hi * k)). Inside [lo, hi] both multiply the same x. Above
hi, fl(x * k) >= fl(hi * k) = hi * k (float32 multiplication by k > 0 is monotone and hi * k is
exact), so the clamp gives hi * k, the original's product; below lo likewise. Rounding an integer
keeps it, so every non-NaN x gives the same float32 value.
"""

from __future__ import annotations

import numpy as np
import onnx

from .clamps_to_clip import clamp_bounds
from .graph_edit import (Names, constant_values, consumers, copy_model, drop_unused, graph_outputs, is_standard,
                         producers, quant_bit_range, replace_with_quant, scalar_constant, sole_reader,
                         use_qonnx_domain)

def round_quantizer_to_quant(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    g = out.graph
    values, prods, readers = constant_values(g), producers(g), consumers(g)
    outs = graph_outputs(g)
    names = Names(g)
    changed = False

    for rnd in list(g.node):
        if rnd.op_type != "Round" or not is_standard(rnd):
            continue
        mul = prods.get(rnd.input[0])
        if mul is None or mul.op_type != "Mul" or not is_standard(mul) or \
                sole_reader(readers, outs, mul.output[0]) is None:
            continue
        operands = [(x, scalar_constant(values, c, "f")) for x, c in (tuple(mul.input), tuple(reversed(mul.input)))]
        x, k = next(((x, k) for x, k in operands if k is not None and x not in values), (None, None))
        if x is None or not float(k) > 0:
            continue
        clamp = clamp_bounds(prods[x], values) if x in prods and sole_reader(readers, outs, x) is not None else None
        if clamp is None:
            continue
        t, lo, hi = clamp
        if not lo < hi:
            continue
        k32, lo_k, hi_k = np.float32(k), np.float32(lo) * np.float32(k), np.float32(hi) * np.float32(k)
        if not (np.isfinite(lo_k) and np.isfinite(hi_k) and lo_k == np.round(lo_k) and hi_k == np.round(hi_k)
                and float(lo_k) == float(lo) * float(k32) and float(hi_k) == float(hi) * float(k32)):
            continue
        signed = lo_k < 0
        spec = quant_bit_range(int(lo_k), int(hi_k), bool(signed))
        if spec is None:
            continue
        bits, narrow = spec
        mul.input[list(mul.input).index(x)] = t
        replace_with_quant(g, names, rnd, mul.output[0], 1.0, bits, bool(signed), narrow)
        changed = True
    if changed:
        use_qonnx_domain(out)
        drop_unused(out)
    return out
