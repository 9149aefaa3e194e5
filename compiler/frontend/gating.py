"""Data-driven channel gating (Squeeze-and-Excitation, Real-to-Binary's scaling branch): Sigmoid
of a real-valued tensor (ir.Sigmoid, on a fixed-point grid with a stated bound) and the Mul of two
activations (ir.Mul of two fixed-point streams, one of them possibly a per-channel vector)."""

from __future__ import annotations

import math

import numpy as np

from .. import arith, ir
from ..errors import BnncError
from .registry import handler, where
from .streams import WIDE_STREAM_LIMIT, stream_limit, stream_of_intchain, to_stream
from .values import IntChainVal, IntsVal

# the sigmoid's grid: the finest on which [0, 1] fits 31 bits (a gate multiplies a whole layer's
# values, so its rounding is worth keeping far below float32's own); ir.Mul's int64 product of it
# and a 31-bit stream stays below 2**62
SIGMOID_FRAC_BITS = 30


def stream_operand(ctx, node, v) -> IntsVal:
    """A real-valued activation as a fixed-point stream (its pending ops applied)."""
    v = to_stream(ctx, node, v)
    if isinstance(v, IntChainVal):
        v = stream_of_intchain(ctx, node, v)
    if not isinstance(v, IntsVal):
        raise BnncError(f"{where(node)}: {node.op} of a {v.kind} tensor is not supported (of real-valued "
                        "fixed-point streams it is)")
    return v


@handler("Sigmoid")
def sigmoid(ctx, node):
    """Sigmoid of a real-valued tensor: ir.Sigmoid of its fixed-point stream, on the grid
    2**-SIGMOID_FRAC_BITS (error <= half a step + arith.SIGMOID_EVAL_ERROR)."""
    v = stream_operand(ctx, node, ctx.val(node))
    ctx.set(node, _sigmoid_of(ctx, node, v, v.scale))


def tanh_stream(ctx, node, v) -> IntsVal:
    """Tanh of a real-valued tensor whose values continue unquantized, as tanh(x) = 2 sigmoid(2x) - 1:
    ir.Sigmoid of the stream read with twice its scale (exact: a power of two), then an
    ir.Activation that maps its integers s to s - 2**(f - 1) on the grid 2**-(f - 1), exactly. The
    bound is twice the sigmoid's: one step of 2**-f + 2 arith.SIGMOID_EVAL_ERROR."""
    v = stream_operand(ctx, node, v)
    s = _sigmoid_of(ctx, node, v, 2 * v.scale)
    src = ctx.graph.tensors[s.tensor]
    f, c = SIGMOID_FRAC_BITS, src.shape[2]
    half = 1 << (f - 1)
    note = (f"tanh(x) = 2 sigmoid(2x) - 1 on the grid 2^-{f - 1}: out = s - 2^{f - 1} of the sigmoid's integers s "
            "(exact)")
    ep = ir.Requantize(np.full(c, 2, np.int64), np.full(c, -2 * half, np.int64), 1, src.lo - half, src.hi - half,
                       2.0 ** -(f - 1), [note])
    name = ctx.new_name("tanh")
    tname = name + "_out"
    ctx.graph.add(ir.Activation(name, [s.tensor], [tname], ep),
                  {tname: ir.Ints(src.shape, src.lo - half, src.hi - half, ep.out_scale)})
    return IntsVal(v.shape, [node.name], tensor=tname, scale=ep.out_scale, flat_from=v.flat_from)


def _sigmoid_of(ctx, node, v: IntsVal, in_scale: float) -> IntsVal:
    """ir.Sigmoid of the stream `v`, its integers q read as the reals q * in_scale."""
    src = ctx.graph.tensors[v.tensor]
    f = SIGMOID_FRAC_BITS
    # the range: sigmoid is increasing and every computed value lies within 2**-43 of it, so a value
    # of the range's inside is at most one step beyond its ends' (and always within [0, 2**f])
    lo, hi = (int(x) for x in arith.sigmoid(np.array([src.lo, src.hi]), in_scale, f))
    lo, hi = max(lo - 1, 0), min(hi + 1, 2**f)
    name = ctx.new_name("sigmoid")
    tname = name + "_out"
    ctx.graph.add(ir.Sigmoid(name, [v.tensor], [tname], float(in_scale), f, [node.name]),
                  {tname: ir.Ints(src.shape, lo, hi, 2.0**-f)})
    return IntsVal(v.shape, [node.name], tensor=tname, scale=2.0**-f, flat_from=v.flat_from)


def multiply_activations(ctx, node) -> None:
    """Mul of two real-valued activations: ir.Mul of their fixed-point streams, elementwise or by a
    per-channel vector ((N, C, 1, 1) against (N, C, H, W), either operand), exact in int64 and
    rounded half up to a coarser grid only where the product could leave the widest stream."""
    ctx.set(node, multiply_streams(ctx, node, *(stream_operand(ctx, node, ctx.val(node, i)) for i in (0, 1))))


def multiply_streams(ctx, node, a: IntsVal, b: IntsVal) -> IntsVal:
    """The ir.Mul of two fixed-point streams (see multiply_activations)."""
    ta, tb = ctx.graph.tensors[a.tensor], ctx.graph.tensors[b.tensor]
    if tb.shape != ta.shape and ta.shape[:2] == (1, 1):  # the vector second
        a, b, ta, tb = b, a, tb, ta
    per_channel = tb.shape == (1, 1, ta.shape[2]) and len(b.shape) == len(a.shape) and \
        all(s == 1 for s in b.shape[2:]) and b.shape[1] == a.shape[1]
    if (tb.shape != ta.shape or b.shape != a.shape) and not per_channel:
        raise BnncError(f"{where(node)}: Mul of activations of shapes {a.shape} and {b.shape}; bnnc multiplies "
                        "equal shapes or (N, C, H, W) by one value per channel (N, C, 1, 1)")
    if a.flat_from != b.flat_from and not per_channel:
        raise BnncError(f"{where(node)}: Mul of activations flattened in different orders")
    ends = [x * y for x in (ta.lo, ta.hi) for y in (tb.lo, tb.hi)]
    lo_p, hi_p = min(ends), max(ends)
    scale = a.scale * b.scale
    lo, hi, r = lo_p, hi_p, 0
    while max(-lo, hi) > WIDE_STREAM_LIMIT and math.log2(scale) + r < -ctx.frac_bits:
        r += 1  # a product that could leave the widest stream: a coarser grid, down to 2**-frac_bits
        lo, hi = (lo_p + 2 ** (r - 1)) >> r, (hi_p + 2 ** (r - 1)) >> r
    limit = stream_limit(max(-lo, hi))
    name = ctx.new_name("mul")
    tname = name + "_out"
    ctx.graph.add(ir.Mul(name, [a.tensor, b.tensor], [tname], -limit, limit, r, [node.name]),
                  {tname: ir.Ints(ta.shape, max(lo, -limit), min(hi, limit), scale * 2**r)})
    return IntsVal(a.shape, [node.name], tensor=tname, scale=scale * 2**r, flat_from=a.flat_from)
