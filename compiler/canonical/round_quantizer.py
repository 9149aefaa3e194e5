"""A Round between a clamp and positive scales, as quantizers write it, replaced by one QONNX
`Quant(v, 1, 0, b; signed, narrow, ROUND)` of the Round's input v (the scales stay as they are):
- clamp, scale, Round: DoReFa's activation quantizer as larq + tf2onnx write it, `Min(x, hi)`,
  `Max(., lo)` (one `Clip` after clamps_to_clip), `Mul(k)`, `Round`: becomes `Mul(x, k)`, Quant;
- clamp, Round: LSQ's `round(clamp(x / s, lo, hi)) * s`;
- Round, clamp: QKeras's quantized_bits, `clip(round(x * 2^f), lo, hi) / 2^f`;
- Round, scale c > 0, clamp: QKeras's quantized_relu, `clip(round(x * 2^f) / 2^f, 0, hi)`: the
  Quant, then `Mul(c)`.

Matched: scalar float32 constants; the clamp's bounds, in units of the scale where one lies
between it and the Round (lo * k, hi / c), exact float32 integers forming a b-bit Quant range;
every intermediate tensor read only by the next node and no graph output.

Preserves exactly, for every non-NaN input (round is round half to even, which keeps integers and
is monotone; fl(x * k) is monotone in x for k > 0):
- clamp, scale, Round: the original computes round(fl(clamp(x, lo, hi) * k)); the rewrite
  round(clamp(fl(x * k), lo * k, hi * k)). Inside [lo, hi] both multiply the same x. Above hi,
  fl(x * k) >= fl(hi * k) = hi * k (exact), so the clamp gives hi * k, the original's product;
  below lo likewise.
- clamp to integers [a, b] and Round, in either order: round(clamp(v, a, b)) = clamp(round(v), a,
  b), the Quant of v.
- Round, scale, clamp to [a c, b c] (both exact): clamp(fl(n c), a c, b c) = fl(clamp(n, a, b) c)
  for the integer n = round(v), by monotonicity: the Quant of v, times c.
"""

from __future__ import annotations

import numpy as np
import onnx

from .clamps_to_clip import clamp_bounds
from .graph_edit import (Names, constant_values, consumers, copy_model, drop_unused, graph_outputs, is_standard,
                         producers, quant_bit_range, rename_input, replace_with_quant, scalar_operand, sole_reader,
                         use_qonnx_domain)

def round_quantizer_to_quant(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    g = out.graph
    values, prods, readers = constant_values(g), producers(g), consumers(g)
    outs = graph_outputs(g)
    names = Names(g)
    changed = False

    def sole(t):
        return sole_reader(readers, outs, t)

    def clamp_of(node):
        return clamp_bounds(node, values) if node is not None else None

    for rnd in list(g.node):
        if rnd.op_type != "Round" or not is_standard(rnd):
            continue
        v = rnd.input[0]
        before = prods.get(v) if sole(v) is not None else None
        if before is not None and before.op_type == "Mul" and is_standard(before):  # clamp, scale, Round
            x, k = scalar_operand(before, values) or (None, 0.0)
            clamp = clamp_of(prods.get(x)) if x is not None and sole(x) is not None else None
            if clamp is not None and float(k) > 0:
                t, lo, hi = clamp
                k32 = np.float32(k)
                lo_k, hi_k = np.float32(lo) * k32, np.float32(hi) * k32
                spec = _levels(lo_k, hi_k) if float(lo_k) == float(lo) * float(k32) \
                    and float(hi_k) == float(hi) * float(k32) else None
                if spec is not None:
                    before.input[list(before.input).index(x)] = t
                    replace_with_quant(g, names, rnd, v, 1.0, *spec)
                    changed = True
                    continue
        clamp = clamp_of(before)
        if clamp is not None:  # clamp, Round
            spec = _levels(np.float32(clamp[1]), np.float32(clamp[2]))
            if spec is not None:
                replace_with_quant(g, names, rnd, clamp[0], 1.0, *spec)
                changed = True
            continue
        # Round, scale c (optional), clamp
        end, c = rnd, np.float32(1)
        scale = sole(rnd.output[0])
        if scale is not None and scale.op_type == "Mul" and is_standard(scale):
            x, k = scalar_operand(scale, values) or (None, 0.0)
            if x != rnd.output[0] or not float(k) > 0:
                continue
            end, c = scale, np.float32(k)
        last = sole(end.output[0])
        clamp = clamp_of(last)
        if clamp is None or last.output[0] in outs:
            continue
        lo_c, hi_c = np.float32(clamp[1]) / c, np.float32(clamp[2]) / c
        if not (float(lo_c) * float(c) == clamp[1] and float(hi_c) * float(c) == clamp[2]):
            continue
        spec = _levels(lo_c, hi_c)
        if spec is None:
            continue
        rename_input(g, last.output[0], end.output[0])
        replace_with_quant(g, names, rnd, v, 1.0, *spec)
        changed = True
    if changed:
        use_qonnx_domain(out)
        drop_unused(out)
    return out


def _levels(lo, hi):
    """(bits, signed, narrow) of a Quant whose levels are the float32 integers lo..hi, else None."""
    if not (np.isfinite(lo) and np.isfinite(hi) and lo == np.round(lo) and hi == np.round(hi) and lo < hi):
        return None
    signed = bool(lo < 0)
    spec = quant_bit_range(int(lo), int(hi), signed)
    return None if spec is None else (spec[0], signed, spec[1])
