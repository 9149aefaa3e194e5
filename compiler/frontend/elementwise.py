"""Elementwise arithmetic: Mul / Add / Sub / Div with a constant operand and BatchNormalization
join a pending float32 chain (or rescale an IR tensor); Add / Sub of two activations merge
convolutions or become a residual fixed-point ir.Add; PRelu of a real-valued tensor is the sum of
two fixed-point streams."""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction

import numpy as np

from .. import arith, ir, weight_codes
from ..errors import BnncError
from ..passes.merge_summed_convs import merged_conv
from .linear import identity_conv
from .registry import handler, where
from .streams import (MAX_STREAM_FRAC_BITS, STREAM_LIMIT, WIDE_STREAM_LIMIT, input_stream, log2_exact, on_related_grids,
                      stream_limit, stream_of_intchain, to_stream)
from .values import AccVal, BitsVal, InputVal, IntChainVal, IntsVal, PendingVal, with_chain

# ONNX before opset 7 broadcast through attributes; bnnc broadcasts as numpy does
_LEGACY_BROADCAST = ("broadcast", "axis", "consumed_inputs")


@handler("Mul", ignores=_LEGACY_BROADCAST)
def mul(ctx, node):
    _binary(ctx, node, "mul")


@handler("Add", listed_as=("Add", "Add of two activations (residual streams, sums of convolutions)"),
         ignores=_LEGACY_BROADCAST)
def add(ctx, node):
    _binary(ctx, node, "add")


@handler("Sub", ignores=_LEGACY_BROADCAST)
def sub(ctx, node):
    _binary(ctx, node, "sub")


@handler("Div", ignores=_LEGACY_BROADCAST)
def div(ctx, node):
    _binary(ctx, node, "div")


@handler("BatchNormalization", ignores=("momentum", "training_mode", "spatial", "is_test", "consumed_inputs"))
def batch_normalization(ctx, node, *, epsilon=1e-5):
    v = ctx.val(node)
    if isinstance(v, IntsVal):
        v = IntChainVal.of(v)
    if not isinstance(v, PendingVal):
        raise BnncError(f"{where(node)}: BatchNormalization on a {v.kind} tensor is not supported")
    if len(node.outputs) > 1 and any(node.outputs[1:]):
        raise BnncError(f"{where(node)}: training-mode BatchNormalization is not supported")
    gamma, beta, mean, var = (np.asarray(ctx.const(node, i, "parameter"), dtype=np.float32)
                              for i in range(1, 5))
    eps = np.float32(epsilon)
    denom = np.sqrt(var + eps).astype(np.float32)  # as the ONNX reference formula evaluates it
    c = lambda x: ctx.const_of(node, v, x.reshape(-1, *([1] * (len(v.shape) - 2))))  # noqa: E731
    ops = [ir.ChainOp("sub", c(mean)), ir.ChainOp("div", c(denom)), ir.ChainOp("mul", c(gamma)),
           ir.ChainOp("add", c(beta))]
    ctx.set(node, with_chain(v, ops, source_ops=v.source_ops + [node.name]))


def _binary(ctx, node, op):
    a, b = node.inputs[0], node.inputs[1]
    if a in ctx.consts and b in ctx.vals:
        return _with_constant(ctx, node, op, 0)
    if b in ctx.consts and a in ctx.vals:
        return _with_constant(ctx, node, op, 1)
    if a in ctx.vals and b in ctx.vals:
        return _of_two_activations(ctx, node, op)
    raise BnncError(f"{where(node)}: both operands are activations (e.g. a residual shortcut); "
                    "bnnc supports elementwise ops with a constant operand here")


def _with_constant(ctx, node, op: str, const_index: int):
    v = ctx.val(node, 1 - const_index)
    c = ctx.const(node, const_index)
    if isinstance(v, (BitsVal, IntsVal)):
        if op == "mul" and c.size == 1 and float(c.ravel()[0]) > 0:
            ctx.set(node, replace(v, scale=v.scale * float(c.ravel()[0])))
            return
        if op == "div" and c.size == 1 and float(c.ravel()[0]) > 0:
            ctx.set(node, replace(v, scale=v.scale / float(c.ravel()[0])))
            return
        if isinstance(v, IntsVal):  # e.g. a shifted sign of a fixed-point stream: an activation follows
            v = IntChainVal.of(v)
        else:  # signs scaled per channel or shifted (AdaBin's alpha sign(x - beta) + gamma): real values,
            v = identity_conv(ctx, node, v)  # with an identity layer's accumulator (its stream, for a conv)
    if not isinstance(v, PendingVal):
        raise BnncError(f"{where(node)}: {node.op} on a {v.kind} tensor is not supported")
    v, conv = ctx.const_operand(node, v, c)
    ops = []
    if const_index == 0 and op in ("sub", "div"):
        if op == "div":
            raise BnncError(f"{where(node)}: dividing a constant by an activation is not supported")
        ops = [ir.ChainOp("mul", np.float32(-1.0).reshape(())), ir.ChainOp("add", conv)]
    else:
        ops = [ir.ChainOp(op, conv)]
    ctx.set(node, with_chain(v, ops))


@handler("PRelu")
def prelu(ctx, node):
    """PReLU (ReActNet's RPReLU between (x - gamma) and (+ zeta)): x where x >= 0, slope * x below,
    per channel, on a real-valued tensor (see piecewise_linear)."""
    piecewise_linear(ctx, node, ctx.val(node), np.asarray(ctx.const(node, 1, "slope"), np.float32))


@handler("LeakyRelu")
def leaky_relu(ctx, node, *, alpha=0.01):
    piecewise_linear(ctx, node, ctx.val(node), np.float32(alpha).reshape(()))


def piecewise_linear(ctx, node, v, slope: np.ndarray) -> None:
    """x for x >= 0, slope * x below (scalar, per channel or per element slope), on a real-valued
    tensor, as relu(x) + min(max(slope, 0) * x, 0) + max(min(slope, 0) * x, 0): fixed-point
    streams of x (ir.Requantize clamped at 0 from below, from above; per element where the slopes
    vary within a channel, streams.element_form) summed by residual Adds; the third only where a
    slope is negative. At any x at most one of them is nonzero, so the sum has the rounding of one
    requantization."""
    if not np.all(np.isfinite(slope)):
        raise BnncError(f"{where(node)}: {node.op} slopes must be finite")
    v = _stream_operand(ctx, node, v)
    if any(op.op == "relu" for op in v.chain):  # its stream first: the parts below all read it
        v = IntChainVal.of(stream_of_intchain(ctx, node, v))
    out = stream_of_intchain(ctx, node, with_chain(v, [ir.ChainOp("relu")]))
    for part, clamp in ((np.maximum(slope, 0), (None, 0.0)), (np.minimum(slope, 0), (0.0, None))):
        if np.any(part != 0) or clamp[0] is None:
            v, c = ctx.const_operand(node, v, part)  # (the element form, once, where a part varies in a channel)
            out = add_streams(ctx, node, out, stream_of_intchain(ctx, node, with_chain(v, [ir.ChainOp("mul", c)]),
                                                                 clamp=clamp))
    ctx.set(node, out)


@handler("Clip")
def clip(ctx, node, *, min=None, max=None):  # noqa: A002  (the ONNX attribute names before opset 11)
    """Clip (Hardtanh, ReLU6) of a real-valued tensor: its fixed-point stream clamped to the
    bounds rounded to the grid (exact: rounding is monotone). A Clip right before a sign is gone
    already (canonical/clip_before_sign.py)."""
    lo, hi = min, max
    for i in (1, 2):
        if len(node.inputs) > i and node.inputs[i]:
            c = np.asarray(ctx.const(node, i, "bound"), np.float64)
            if c.size != 1:
                raise BnncError(f"{where(node)}: Clip bounds must be scalars")
            lo, hi = (float(c.reshape(())), hi) if i == 1 else (lo, float(c.reshape(())))
    lo, hi = (None if x is None or not np.isfinite(x) else float(x) for x in (lo, hi))
    v = ctx.val(node)
    if lo is None and hi is None:
        ctx.set(node, v)
        return
    if lo is not None and hi is not None and lo > hi:
        raise BnncError(f"{where(node)}: Clip with min {lo:g} > max {hi:g}")
    ctx.set(node, stream_of_intchain(ctx, node, _stream_operand(ctx, node, v), clamp=(lo, hi)))


@handler("HardSigmoid")
def hard_sigmoid(ctx, node, *, alpha=0.2, beta=0.5):
    """HardSigmoid (PyTorch's nn.Hardsigmoid: alpha 1/6, beta 1/2), max(0, min(1, alpha x + beta)),
    of a real-valued tensor: its fixed-point stream times alpha plus beta (float32 ops, as the
    runtime computes them) clamped to [0, 1], as Clip is."""
    v = _stream_operand(ctx, node, ctx.val(node))
    ops = [ir.ChainOp("mul", np.float32(alpha).reshape(())), ir.ChainOp("add", np.float32(beta).reshape(()))]
    ctx.set(node, stream_of_intchain(ctx, node, with_chain(v, ops), clamp=(0.0, 1.0)))


@handler("HardSwish")
def hard_swish(ctx, node):
    """HardSwish (MobileNetV3's nn.Hardswish), x * max(0, min(1, x / 6 + 1/2)), of a real-valued
    tensor: the product (ir.Mul) of its fixed-point stream and that stream's HardSigmoid."""
    from .gating import multiply_streams

    x = stream_of_intchain(ctx, node, _stream_operand(ctx, node, ctx.val(node)))
    ops = [ir.ChainOp("mul", np.float32(1 / 6).reshape(())), ir.ChainOp("add", np.float32(0.5).reshape(()))]
    gate = stream_of_intchain(ctx, node, with_chain(IntChainVal.of(x), ops), clamp=(0.0, 1.0))
    ctx.set(node, multiply_streams(ctx, node, x, gate))


@handler("Gelu")
def gelu(ctx, node, *, approximate="none"):
    """GELU, x Phi(x) (nn.GELU: ONNX Gelu from opset 20, or the Erf form canonical/erf_gelu.py
    reads), of a real-valued tensor: ir.Gelu of its fixed-point stream, on the finest grid
    2**-f (f <= 24) on which its values fit the stream's 24 bits (error <= half a step +
    arith.GELU_EVAL_ERROR per unit of the input's reach)."""
    if approximate != "none":
        raise BnncError(f"{where(node)}: Gelu with approximate='{approximate}' is not supported (the exact "
                        "GELU, approximate='none', is)")
    from .gating import stream_operand

    x = stream_operand(ctx, node, ctx.val(node))
    src = ctx.graph.tensors[x.tensor]
    x_max = max(-src.lo, src.hi) * x.scale
    f = next((k for k in range(MAX_STREAM_FRAC_BITS, ctx.frac_bits - 1, -1)
              if (max(x_max, 1.0) * 2**k + 2) <= STREAM_LIMIT), ctx.frac_bits)
    # x Phi(x) falls to its minimum at x = -0.7518 and rises on either side; the computed values lie
    # within GELU_EVAL_ERROR of it, so one step beyond the extremes found holds every one of them
    at_min = -0.7517915246935 / x.scale
    q = np.array([src.lo, src.hi] + [int(k) for k in (math.floor(at_min), math.ceil(at_min)) if src.lo <= k <= src.hi])
    vals = arith.gelu(q, x.scale, f)
    lo, hi = int(vals.min()) - 1, int(vals.max()) + 1
    name = ctx.new_name("gelu")
    tname = name + "_out"
    ctx.graph.add(ir.Gelu(name, [x.tensor], [tname], float(x.scale), f, float(x_max), [node.name]),
                  {tname: ir.Ints(src.shape, lo, hi, 2.0**-f)})
    ctx.set(node, IntsVal(x.shape, [node.name], tensor=tname, scale=2.0**-f, flat_from=x.flat_from))


def _stream_operand(ctx, node, v) -> IntChainVal:
    """A real-valued tensor as the integers of a fixed-point stream with its pending ops, for an
    op that clamps their map (PRelu, Clip)."""
    if isinstance(v, AccVal):  # a layer output before its activation: its fixed-point stream
        v = to_stream(ctx, node, v)
    if isinstance(v, IntsVal):
        v = IntChainVal.of(v)
    if not isinstance(v, IntChainVal):
        raise BnncError(f"{where(node)}: {node.op} of a {v.kind} tensor is not supported (of real-valued "
                        "streams it is)")
    return v


# ----------------------------------------------------------------------------- two activations


def _of_two_activations(ctx, node, op):
    """Add / Sub of two activations: merged convolutions, or a residual fixed-point Add; Mul: an
    ir.Mul of two fixed-point streams (frontend/gating.py)."""
    if op == "mul":
        from .gating import multiply_activations

        return multiply_activations(ctx, node)
    if op not in ("add", "sub"):
        raise BnncError(f"{where(node)}: {node.op} of two activations is not supported (Add of "
                        "residual streams, sums of convolutions and Mul of streams are)")
    a, b = ctx.val(node, 0), ctx.val(node, 1)
    if isinstance(a, BitsVal) or isinstance(b, BitsVal):
        raise BnncError(f"{where(node)}: both operands are activations and one is a binary (sign) "
                        "output; a residual Add sums real-valued (fixed-point) streams")
    sign = 1 if op == "add" else -1
    if isinstance(a, AccVal) and isinstance(b, AccVal):
        merged = _merge_accs(ctx, node, a, b, sign)
        if merged is not None:
            ctx.set(node, merged)
            return
    ctx.set(node, add_streams(ctx, node, *_streams(ctx, node, a, b, sign)))


def _streams(ctx, node, a, b, sign: int = 1) -> tuple:
    """Two activations as fixed-point streams (IntsVal), b negated where sign < 0 (exact on its grid)."""
    a, b = (input_stream(ctx, node, v) if isinstance(v, InputVal) else to_stream(ctx, node, v) for v in (a, b))
    if sign < 0 and isinstance(b, (IntsVal, IntChainVal)):  # a - b = a + (-b), -b exact on b's grid
        b = stream_of_intchain(ctx, node, with_chain(IntChainVal.of(b) if isinstance(b, IntsVal) else b,
                                                      [ir.ChainOp("mul", np.float32(-1.0).reshape(()))]))
    # a stream with pending ops (BatchNorm after a MaxPool, larq's ResNetE shortcut): its own stream
    return tuple(stream_of_intchain(ctx, node, v) if isinstance(v, IntChainVal) else v for v in (a, b))


@handler("Max", listed_as="Max / Min (of activations: Keras's Maximum / Minimum)")
def maximum(ctx, node):
    _extremum(ctx, node, 1)


@handler("Min", listed_as=())
def minimum(ctx, node):
    _extremum(ctx, node, -1)


def _extremum(ctx, node, sign: int) -> None:
    """max(a, b) = a + relu(b - a), min(a, b) = a - relu(a - b) of fixed-point streams: residual
    Adds and a Relu requantization, exact on the finer grid (each step's rounding, where a sum
    could leave the widest stream, stated as an Add's). A constant operand was made a Clip by the
    canonical stage (clamps_to_clip)."""
    if any(t in ctx.consts for t in node.inputs):
        raise BnncError(f"{where(node)}: {node.op} of an activation and a constant that is not one value per "
                        "tensor is not supported (of activations, or with a scalar: a Clip, it is)")
    acc = ctx.val(node, 0)  # one operand: itself
    for i in range(1, len(node.inputs)):
        a, b = _streams(ctx, node, acc, ctx.val(node, i))
        gap = add_streams(ctx, node, *(_streams(ctx, node, b, a, -1) if sign > 0 else _streams(ctx, node, a, b, -1)))
        part = stream_of_intchain(ctx, node, with_chain(IntChainVal.of(gap), [ir.ChainOp("relu")]))
        acc = add_streams(ctx, node, *_streams(ctx, node, a, part, sign))
    ctx.set(node, acc)


def add_streams(ctx, node, a, b) -> IntsVal:
    """The residual Add of two fixed-point streams (ir.Add): exact on the finer grid, rounded
    half up to a coarser one where the sum could leave the widest stream; streams whose scales do
    not differ by a power of two go to power-of-two grids first (streams.on_related_grids)."""
    for v in (a, b):
        if not isinstance(v, IntsVal):
            raise BnncError(f"{where(node)}: a residual Add needs real-valued (fixed-point) operands; one is a "
                            f"{v.kind} value")
    ta, tb = ctx.graph.tensors[a.tensor], ctx.graph.tensors[b.tensor]
    if ta.shape != tb.shape or a.shape != b.shape:
        raise BnncError(f"{where(node)}: residual Add of shapes {a.shape} and {b.shape} (broadcasting "
                        "is not supported)")
    a, b = on_related_grids(ctx, node, [a, b])
    ta, tb = ctx.graph.tensors[a.tensor], ctx.graph.tensors[b.tensor]
    ratio = Fraction(a.scale) / Fraction(b.scale)
    shifts = [0, 0]
    k = log2_exact(ratio if ratio >= 1 else 1 / ratio)
    shifts[0 if ratio >= 1 else 1] = k
    scale = min(a.scale, b.scale)
    lo_sum, hi_sum = (ta.lo << shifts[0]) + (tb.lo << shifts[1]), (ta.hi << shifts[0]) + (tb.hi << shifts[1])
    lo, hi, r = lo_sum, hi_sum, 0
    while max(-lo, hi) > WIDE_STREAM_LIMIT and math.log2(scale) + r < -ctx.frac_bits:
        # a sum that could leave the widest stream: a coarser grid, rounded half up, down to 2**-frac_bits
        r += 1
        lo, hi = (lo_sum + 2 ** (r - 1)) >> r, (hi_sum + 2 ** (r - 1)) >> r
    limit = stream_limit(max(-lo, hi))
    name = ctx.new_name("add")
    tname = name + "_out"
    ctx.graph.add(ir.Add(name, [a.tensor, b.tensor], [tname], tuple(shifts), -limit, limit, r),
                  {tname: ir.Ints(ta.shape, max(lo, -limit), min(hi, limit), scale * 2**r)})
    return IntsVal(a.shape, [node.name], tensor=tname, scale=scale * 2**r)


def _merge_accs(ctx, node, a: AccVal, b: AccVal, sign: int):
    """conv_a * u_a + sign * conv_b * u_b as one accumulator (ir.ConvSum, one Conv after
    passes/merge_summed_convs) when both read the same tensor, or bit activation planes of one
    layer (`LoweringContext.planes`) of one type, with the same geometry and their
    pending chains are per-channel scales (weight bases written as separate convolutions, PaBT base
    pairs): acc = k_a * acc_a + k_b * acc_b with u_a = unit * k_a, sign * u_b = unit * k_b exactly
    (dyadic scales), its chain starting with the unit; None when not mergeable."""
    if a.conv == b.conv or a.pools or b.pools or a.shape != b.shape:
        return None
    ca, cb = ctx.graph.op(a.conv), ctx.graph.op(b.conv)
    inputs = set(ca.inputs + cb.inputs)  # one tensor, or bit planes of one layer (merge_activation_planes)
    groups = {ctx.planes.get(t, ((t,), 0))[0] for t in inputs}
    types = [ctx.graph.tensors[t] for t in inputs]
    if ca.name in ctx.finished or cb.name in ctx.finished or len(groups) != 1 \
            or (len(inputs) > 1 and not all(isinstance(t, ir.Bits) and t == types[0] for t in types)) \
            or (ca.kernel, ca.stride, ca.pads, ca.is_dense) != (cb.kernel, cb.stride, cb.pads, cb.is_dense):
        return None
    o = merged_conv(ca).w.shape[0]
    fa, fb = ir.chain_factors(a.chain, o), ir.chain_factors(b.chain, merged_conv(cb).w.shape[0])
    if fa is None or fb is None:
        return None
    for i in range(o):
        _, ks = ir.exact_multipliers([fa[i], sign * fb[i]])
        if max(abs(k) for k in ks) > weight_codes.MAX_MULT:
            raise BnncError(f"{where(node)}: the scales of the summed layers ({float(fa[i]):g}, {float(fb[i]):g}) "
                            "are too far apart for exact integer multipliers")
    ca.epilogue = ir.Chain(list(a.chain))
    cb.epilogue = ir.Chain(list(b.chain) + ([ir.ChainOp("mul", np.float32(-1.0).reshape(()))] if sign < 0 else []))
    total = ir.ConvSum(ca.name, list(dict.fromkeys(ca.inputs + cb.inputs)), list(ca.outputs), [ca, cb], ir.Chain([], None),
                       ca.source_ops + cb.source_ops + [node.name])
    ctx.graph.replace(total)
    ctx.graph.remove(cb.name)
    ctx.graph.tensors.pop(cb.outputs[0], None)
    unit, _ = ir.conv_sum_multipliers(total)
    return AccVal(a.shape, a.source_ops + b.source_ops, [ir.ChainOp("mul", unit.astype(np.float32))], conv=ca.name)

