"""Real-valued layer outputs as fixed-point `Ints` streams (ir.Requantize): residual shortcuts,
average pools, and tensors that several kinds of consumers read."""

from __future__ import annotations

import math
from dataclasses import replace
from fractions import Fraction

import numpy as np

from .. import ir
from ..arith import GELU_LIPSCHITZ
from ..errors import BnncError
from .registry import where
from .values import AccVal, InputVal, IntChainVal, IntsVal, Val, with_chain

STREAM_LIMIT = 2**23 - 1  # streams saturate at +-STREAM_LIMIT grid steps (+-128 at 2**-16). A global average
#                           pool of more than 256 such pixels sums beyond 32 bits: its output range says so and
#                           the backends store it (and accumulate it) in 64 bits, exactly (pack_bits.storage_dtype)
MAX_STREAM_FRAC_BITS = 24  # the finest grid of a real-valued stream
# a Tanh left pending for a quantizer (activations.tanh) whose value must first become a stream or
# a real output: the chain cannot carry it there (a Tanh whose values continue is a stream itself)
TANH_UNQUANTIZED = ("a Tanh pending before a quantizer or a sign reaches a fixed-point stream or the output through "
                    "other ops first, which is not supported")
WIDE_STREAM_LIMIT = 2**30 - 1  # a stream whose values can reach beyond STREAM_LIMIT (wide BatchNorm scales, sums
#                                of residual branches) widens up to this, still 32-bit, instead of saturating;
#                                beyond it saturation is reachable and stated (Requantize.reach, approximations)


def to_stream(ctx, node, v: Val) -> Val:
    """A real-valued layer output as a fixed-point Ints stream (ir.Requantize): the affine map
    relu?(a * acc + b) that the chain specifies, on the coarsest grid 2**-k (k <= frac_bits) that
    holds it exactly, else rounded half up on the finest grid 2**-k (frac_bits <= k <= 24) on
    which its worst case fits 31 bits; saturating beyond (stated: Requantize.reach). MaxPools on
    the way run on the stream (`_pooled_stream`), which may leave ops pending after them (an
    IntChainVal); a Relu followed by more arithmetic (BatchNorm after Relu) becomes two
    requantizations. Any other value is returned as it is."""
    if not isinstance(v, AccVal):
        return v
    conv = ctx.graph.op(v.conv)
    if v.pools:
        return _pooled_stream(ctx, node, v)
    cut = after_first_relu(v.chain)
    if cut < len(v.chain):
        first = to_stream(ctx, node, replace(v, chain=v.chain[:cut]))
        return stream_of_intchain(ctx, node, with_chain(IntChainVal.of(first), v.chain[cut:]))
    if conv.name in ctx.finished:
        raise BnncError(f"{where(node)}: layer '{conv.source_ops[0]}' output is used both as a residual "
                        "stream and as something else")
    from ..passes.fold_batchnorm_into_thresholds import acc_range
    from ..passes.merge_summed_convs import merged_conv

    acc = merged_conv(conv)  # a sum of convolutions: the Conv it becomes
    lo_acc, hi_acc = acc_range(acc, ctx.graph.tensors[conv.inputs[0]])
    ep, lo, hi = requantize(ctx, node, v.chain, acc.w.shape[0], lo_acc, hi_acc, conv.source_ops[0])
    ctx.finish(conv)
    conv.epilogue = ep
    conv.source_ops = conv.source_ops + v.source_ops
    oshape = ctx.graph.tensors[conv.outputs[0]].shape
    ctx.graph.tensors[conv.outputs[0]] = ir.Ints(oshape, lo, hi, ep.out_scale)
    return IntsVal(v.shape, tensor=conv.outputs[0], scale=ep.out_scale)


def requantize(ctx, node, chain: list, o: int, lo_acc, hi_acc, layer: str, clamp: tuple = (None, None)) -> tuple:
    """(ir.Requantize, lo, hi) of the affine map relu?(a * acc + b) that `chain` specifies per
    channel, for accumulators in [lo_acc, hi_acc] (see to_stream): on the coarsest grid 2**-k,
    k <= frac_bits, that holds it exactly, else rounded half up on the finest grid that holds its
    worst case (`_finest_grid`). `clamp` = (lo, hi) real bounds (None: open) clamps the map
    (Clip; PRelu's negative part min(map, 0)): rounding half up is monotone, so the rounded
    clamped map is the rounded map clamped to the rounded bounds, the output clamp [lo, hi].
    The largest multiplier has at least 20 significant bits (accumulators far finer than the grid
    are shifted right first)."""
    affine = _affine_chain(node, chain, o)
    finest = _finest_grid(affine, lo_acc, hi_acc, ctx.frac_bits, clamp)
    frac = next((k for k in range(min(ctx.frac_bits, finest) + 1)
                 if all((a * 2**k).denominator == 1 and (b * 2**k).denominator == 1 for a, b, _ in affine)), None)
    exact = frac is not None
    frac = finest if frac is None else frac
    shift = 1 if exact else 30
    pre = 0
    a_top = max((abs(a) for a, _, _ in affine), default=Fraction(0))
    if not exact and a_top:
        r = a_top * 2**frac  # output grid steps per accumulator unit
        while r * 2**pre < Fraction(1, 2**10):
            # accumulator units far finer than the output grid (wide real-valued layers): their low
            # bits are dropped first (a floor of under 2**-10 grid steps), so that the clamped
            # accumulator times a 20-bit multiplier stays within int64
            pre += 1
        lo_acc = np.asarray(lo_acc, np.int64) >> pre
        hi_acc = np.asarray(hi_acc, np.int64) >> pre
    big = Fraction(2 ** (frac + shift))
    mult = [_round_half_up(a * 2**pre * big) for a, _, _ in affine]
    add = [_round_half_up(b * big) + 2 ** (shift - 1) for _, b, _ in affine]
    relu = {r for _, _, r in affine}
    if len(relu) > 1:
        raise BnncError(f"{where(node)}: Relu on some channels only is not supported")
    ends = [(int(acc) * m + c) >> shift for m, c, lo, hi in zip(mult, add, np.broadcast_to(lo_acc, (o,)),
                                                                 np.broadcast_to(hi_acc, (o,))) for acc in (lo, hi)]
    c_lo, c_hi = (None if x is None else _round_half_up(Fraction(float(x)) * 2**frac) for x in clamp)
    if True in relu:
        c_lo = 0 if c_lo is None else max(c_lo, 0)
    bounded = [min(max(e, c_lo if c_lo is not None else e), c_hi if c_hi is not None else e) for e in ends]
    reach = max((abs(e) for e in bounded), default=0)  # grid steps the map can reach
    limit = stream_limit(reach)
    lo_out = -limit if c_lo is None else max(-limit, c_lo)
    hi_out = limit if c_hi is None else min(limit, c_hi)
    if lo_out > hi_out:
        raise BnncError(f"{where(node)}: clamp bounds {clamp} leave no value of the layer's fixed-point stream "
                        f"(+-{limit} steps of 2^-{frac})")
    acc_lo, acc_hi, ends = [], [], []
    for i in range(o):
        m, c = mult[i], add[i]
        if m == 0:
            acc_lo.append(0)
            acc_hi.append(0)
        else:  # beyond these accumulators the output saturates at -limit / +limit
            t_neg = ((-limit + 1) * 2**shift - 1 - c)
            t_pos = (limit * 2**shift - c)
            a_neg = t_neg // m if m > 0 else _ceil_div(t_neg, m)
            a_pos = _ceil_div(t_pos, m) if m > 0 else t_pos // m
            acc_lo.append(min(a_neg, a_pos))
            acc_hi.append(max(a_neg, a_pos))
        for acc in (int(lo_acc[i]), int(hi_acc[i])):
            a = min(max(acc, acc_lo[-1]), acc_hi[-1])
            ends.append(min(max((a * m + c) >> shift, lo_out), hi_out))
        if max(abs(acc_lo[-1]), abs(acc_hi[-1])) * abs(m) + abs(c) >= 2**62:
            raise BnncError(f"{where(node)}: the fixed-point requantization of layer '{layer}' "
                            "needs more than 64 bits (its scale is too small or too large for the grid)")
    floor_error = float(a_top) * (2**pre - 1)
    # the integer multiplier and offset are the map's own rounded to 2^-(frac + shift): their error
    # over the (shifted) accumulator range, in real units
    mult_error = float(max((abs(m - a * 2**pre * big) * max(abs(int(lo)), abs(int(hi))) + abs(c - b * big - 2 ** (shift - 1)))
                           / big for m, c, (a, b, _), lo, hi in zip(mult, add, affine, np.broadcast_to(lo_acc, (o,)),
                                                                   np.broadcast_to(hi_acc, (o,)))) * 2.0**-frac) \
        if not exact else 0.0
    acc_text = f"(acc >> {pre})" if pre else "acc"
    note = (f"fixed-point stream 2^-{frac}: out = floor(({acc_text} * mult + add) / 2^{shift}), the layer's affine map "
            + ("exactly (the model's scales are on the grid)" if exact else
               f"rounded half up (error <= 2^-{frac + 1}" + (f" + {floor_error:.3g}" if pre else "")
               + (f" + {mult_error:.3g} of the multiplier" if mult_error else "") + ")")
            + f", saturating at +-{limit} steps"
            + (f" (reachable: the layer's worst case is +-{reach} steps)" if reach > limit else ""))
    ep = ir.Requantize(np.array(mult, np.int64), np.array(add, np.int64), shift, lo_out, hi_out,
                       2.0**-frac, [note], np.array(acc_lo, np.int64), np.array(acc_hi, np.int64),
                       0.0 if exact else 2.0**-(frac + 1) + floor_error + mult_error, pre, reach * 2.0**-frac)
    return ep, min(ends), max(ends)


def _finest_grid(affine: list, lo_acc, hi_acc, coarsest: int, clamp: tuple = (None, None)) -> int:
    """The finest grid 2**-k, k <= MAX_STREAM_FRAC_BITS, on which every value the affine map
    (clamped to `clamp`) can reach for accumulators in [lo_acc, hi_acc] fits WIDE_STREAM_LIMIT
    steps; never coarser than 2**-coarsest (a wider worst case then saturates, stated)."""
    o = len(affine)
    c_lo, c_hi = (None if x is None else Fraction(float(x)) for x in clamp)

    def bounded(y: Fraction, relu: bool) -> Fraction:
        y = max(y, Fraction(0)) if relu else y
        y = max(y, c_lo) if c_lo is not None else y
        return min(y, c_hi) if c_hi is not None else y

    worst = max((abs(bounded(y, relu))
                 for (a, b, relu), lo, hi in zip(affine, np.broadcast_to(lo_acc, (o,)), np.broadcast_to(hi_acc, (o,)))
                 for y in (a * int(lo) + b, a * int(hi) + b)), default=Fraction(0))
    k = max(MAX_STREAM_FRAC_BITS, coarsest)
    while k > coarsest and worst * 2**k + 1 > WIDE_STREAM_LIMIT:
        k -= 1
    return k


def stream_limit(reach: int) -> int:
    """The saturation bound of a stream whose values can reach +-`reach` grid steps."""
    return STREAM_LIMIT if reach <= STREAM_LIMIT else min(reach, WIDE_STREAM_LIMIT)


def narrow(ctx, node, v: IntsVal, limit: int) -> IntsVal:
    """`v` on the coarsest power-of-two multiple of its grid that holds its range within +-limit:
    an Activation rounding half up (for a consumer that reads 32-bit values); `v` itself if it fits."""
    ty = ctx.graph.tensors[v.tensor]
    s = 0
    while max(-((ty.lo + (1 << s >> 1)) >> s), (ty.hi + (1 << s >> 1)) >> s) > limit:
        s += 1
    if not s:
        return v
    c = ty.shape[2]
    lo, hi = (ty.lo + (1 << (s - 1))) >> s, (ty.hi + (1 << (s - 1))) >> s
    scale = v.scale * 2**s
    note = (f"fixed-point stream 2^{math.log2(scale):g}: out = floor((x + 2^{s - 1}) / 2^{s}), the input "
            f"rounded half up to a {2**s} times coarser grid (error <= {scale / 2:.3g}) to fit 32 bits")
    ep = ir.Requantize(np.ones(c, np.int64), np.full(c, 1 << (s - 1), np.int64), s, lo, hi, scale, [note],
                       max_error=scale / 2)
    name = ctx.new_name("act")
    tname = name + "_out"
    ctx.graph.add(ir.Activation(name, [v.tensor], [tname], ep), {tname: ir.Ints(ty.shape, lo, hi, scale)})
    return IntsVal(v.shape, [node.name], tensor=tname, scale=scale, flat_from=v.flat_from)


def rounding_error(graph: ir.Graph, tensor: str) -> float:
    """Bound (real units) on the rounding bnnc's fixed-point representation adds to an integer
    tensor's values: a rounded input or requantization, carried through residual Adds (summed),
    pools and Concat (the largest); 0 for exact tensors."""
    op = graph.producer(tensor)
    if isinstance(op, ir.InputQuantize):
        return op.max_error
    ep = getattr(op, "epilogue", None)
    if isinstance(ep, ir.Requantize):
        return ep.max_error
    if isinstance(op, ir.Add):
        rounded = graph.tensors[tensor].scale / 2 if op.round_shift else 0.0
        return sum(rounding_error(graph, t) for t in op.inputs) + rounded
    if isinstance(op, (ir.MaxPool, ir.SumPool, ir.GlobalSumPool, ir.Concat, ir.Flatten, ir.Unflatten, ir.Gather)):
        return max(rounding_error(graph, t) for t in op.inputs)
    if isinstance(op, ir.Sigmoid):  # 1/4-Lipschitz
        return rounding_error(graph, op.inputs[0]) / 4 + op.max_error
    if isinstance(op, ir.Gelu):
        return rounding_error(graph, op.inputs[0]) * GELU_LIPSCHITZ + op.max_error
    if isinstance(op, ir.Mul):  # |a b - a' b'| <= (A + E_a) E_b + B E_a
        (ta, tb), (ea, eb) = ((graph.tensors[t] for t in op.inputs), (rounding_error(graph, t) for t in op.inputs))
        big_a, big_b = (max(-t.lo, t.hi) * t.scale for t in (ta, tb))
        rounded = graph.tensors[tensor].scale / 2 if op.round_shift else 0.0
        return (big_a + ea) * eb + big_b * ea + rounded
    return 0.0


def stream_of_intchain(ctx, node, v: IntChainVal, clamp: tuple = (None, None)) -> Val:
    """Integers with pending float32 ops (after a MaxPool of a stream, or a Relu) as a new
    fixed-point stream: an Activation whose Requantize applies the ops' affine map per channel
    (up to the first Relu; what follows it, the same way again), the last of them clamped to
    `clamp` (real bounds). Flattened features with per-element ops: per element (flat_channels).
    A map in element form (`element_form`): per element, the stream then unflattened into the map."""
    if v.map_from is None:
        return _stream_of_chain(ctx, node, v, clamp)
    flat = _stream_of_chain(ctx, node, replace(v, map_from=None), clamp)
    c, h, w = v.map_from
    src = ctx.graph.tensors[flat.tensor]
    name = ctx.new_name("unflatten")
    tname = name + "_out"
    ctx.graph.add(ir.Unflatten(name, [flat.tensor], [tname]), {tname: replace(src, shape=(h, w, c))})
    return IntsVal(v.shape, [node.name], tensor=tname, scale=flat.scale)


def element_form(ctx, node, v: Val) -> IntChainVal:
    """A real-valued feature map (a layer output, a fixed-point stream, either with pending ops)
    for pending ops whose constants vary within a channel (XNOR-Net++'s factorised scales, a
    Keras PReLU's per-element slopes): the integers of its fixed-point stream (its ops so far,
    per channel) as one vector (ir.Flatten) whose channels are the map's elements in storage
    order. The ops after it are then per channel of the vector, and its stream
    (stream_of_intchain) is one requantization per element, unflattened back into the map."""
    if isinstance(v, IntChainVal) and v.map_from is not None:
        return v
    if isinstance(v, AccVal):
        v = to_stream(ctx, node, v)
    if isinstance(v, IntChainVal) and len(v.chain) == 1 and v.chain[0].op == "mul" and \
            np.size(v.chain[0].const) == 1 and float(v.chain[0].const) == np.float32(v.scale):
        v = IntsVal(v.shape, v.source_ops, tensor=v.tensor, scale=v.scale, flat_from=v.flat_from)  # a stream as it is
    if isinstance(v, IntChainVal):
        v = stream_of_intchain(ctx, node, v)
    if not isinstance(v, IntsVal) or len(v.shape) != 4 or v.flat_from is not None:
        raise BnncError(f"{where(node)}: constant varies within a channel of a {v.kind} tensor; bnnc supports "
                        "per-element constants on real-valued feature maps, per-channel or scalar ones elsewhere")
    _, c, h, w = v.shape
    flat = IntsVal(v.shape, v.source_ops, tensor=_flattened(ctx, v.tensor), scale=v.scale)
    return replace(IntChainVal.of(flat), map_from=(c, h, w))


def _flattened(ctx, tensor: str) -> str:
    """An (H, W, C) integer tensor as its (1, 1, H * W * C) vector (ir.Flatten); a vector as it is."""
    src = ctx.graph.tensors[tensor]
    if src.shape[:2] == (1, 1):
        return tensor
    name = ctx.new_name("flatten")
    tname = name + "_out"
    ctx.graph.add(ir.Flatten(name, [tensor], [tname]),
                  {tname: ir.Ints((1, 1, int(np.prod(src.shape))), src.lo, src.hi, src.scale)})
    return tname


def _stream_of_chain(ctx, node, v: IntChainVal, clamp: tuple) -> Val:
    """stream_of_intchain of a value that is not in element form."""
    if v.flat_from is not None and not uniform(v.chain, None):
        v, chain, _ = flat_channels(ctx, v, v.chain, None)
        v = replace(v, chain=chain)
    cut = after_first_relu(v.chain)
    src = ctx.graph.tensors[v.tensor]
    c = src.shape[2]
    name = ctx.new_name("act")
    tname = name + "_out"
    ep, lo, hi = requantize(ctx, node, v.chain[:cut], c, np.full(c, src.lo, np.int64),
                            np.full(c, src.hi, np.int64), node.name, clamp if cut == len(v.chain) else (None, None))
    ctx.graph.add(ir.Activation(name, [v.tensor], [tname], ep), {tname: ir.Ints(src.shape, lo, hi, ep.out_scale)})
    out = IntsVal(v.shape, [node.name], tensor=tname, scale=ep.out_scale, flat_from=v.flat_from)
    if cut == len(v.chain):
        return out
    return _stream_of_chain(ctx, node, with_chain(IntChainVal.of(out), v.chain[cut:]), clamp)


def on_related_grids(ctx, node, vals: list) -> list:
    """Fixed-point streams (IntsVal) to be joined (a residual Add, a Concat): as they are where
    their scales differ by powers of two; else each whose scale is not a power of two moved to a
    power-of-two grid of its own (as onnxruntime's quantizer writes them, every tensor has a scale
    of its own): exact where its values fit the widest stream there, else rounded half up with
    the error stated (stream_of_intchain)."""
    first = Fraction(vals[0].scale)
    if all(log2_exact(Fraction(v.scale) / first) is not None for v in vals):
        return vals
    return [v if log2_exact(Fraction(v.scale)) is not None else stream_of_intchain(ctx, node, IntChainVal.of(v))
            for v in vals]


def log2_exact(r: Fraction):
    """k with r == 2**k (k of either sign), else None."""
    n, d = r.numerator, r.denominator
    if n < 1 or n & (n - 1) or d & (d - 1):
        return None
    return n.bit_length() - d.bit_length()


def input_stream(ctx, node, v: InputVal) -> IntsVal:
    """The model input with its pending float32 ops as a fixed-point stream (for a Concat or a
    residual Add that reads it): the integers layers read (`linear.materialize`), put on a grid of
    their own where that reading leaves a scale for the reader to fold (an ir.Activation,
    exact when the scale is a power of two, else rounded half up with the error stated)."""
    from .linear import materialize

    out = materialize(ctx, node, v)
    if out.scale != ctx.graph.tensors[out.tensor].scale:
        out = stream_of_intchain(ctx, node, IntChainVal.of(out))
    return out


def _pooled_stream(ctx, node, v: AccVal) -> Val:
    """A real-valued layer output with MaxPools on the way: the chain up to the pools becomes the
    fixed-point stream, the pools run on its integers (rounding to the grid is monotone, so the
    max of the rounded values is the rounded max), and the ops after the pools stay pending on
    the pooled integers (an IntChainVal)."""
    at = v.pools[0][1]
    if any(p_at != at for _, p_at in v.pools):
        raise BnncError(f"{where(node)}: MaxPools separated by arithmetic on a real-valued stream are "
                        "not supported")
    h, w, c = ctx.graph.tensors[ctx.graph.op(v.conv).outputs[0]].shape
    out = to_stream(ctx, node, replace(v, chain=v.chain[:at], pools=[], shape=(1, c, h, w)))
    for params, _ in v.pools:
        out = ctx.emit_maxpool(params, out)
    if at == len(v.chain):
        return out
    return with_chain(IntChainVal.of(out), v.chain[at:], shape=v.shape)


def after_first_relu(chain: list) -> int:
    """Length of the chain up to and including its first relu (the whole chain without one)."""
    return next((i + 1 for i, op in enumerate(chain) if op.op == "relu"), len(chain))


def pools_commute(v: AccVal) -> bool:
    """Whether the MaxPools of an accumulator commute with the chain after them (no negative scale)."""
    return not any(op.op in ("mul", "div") and np.any(op.const < 0) for _, at in v.pools for op in v.chain[at:])


def _affine_chain(node, chain: list, o: int) -> list:
    """[(a, b, relu)] per channel, exact rationals: the chain is relu?(a * acc + b)."""
    a = [Fraction(1)] * o
    b = [Fraction(0)] * o
    relu = False
    for op in chain:
        if relu:
            raise BnncError(f"{where(node)}: a Relu followed by more arithmetic on a real-valued stream is not "
                            "supported (no single fixed-point requantization)")
        if op.op == "relu":
            relu = True
            continue
        if op.op == "tanh":
            raise BnncError(f"{where(node)}: {TANH_UNQUANTIZED}")
        c = [Fraction(float(x)) for x in np.broadcast_to(np.asarray(op.const, np.float32), (o,))]
        if op.op == "mul":
            a = [x * y for x, y in zip(a, c)]
            b = [x * y for x, y in zip(b, c)]
        elif op.op == "div":
            if any(y == 0 for y in c):
                raise BnncError(f"{where(node)}: division by zero in a real-valued stream (BatchNorm variance?)")
            a = [x / y for x, y in zip(a, c)]
            b = [x / y for x, y in zip(b, c)]
        elif op.op == "add":
            b = [x + y for x, y in zip(b, c)]
        else:
            b = [x - y for x, y in zip(b, c)]
    return [(x, y, relu) for x, y in zip(a, b)]


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def _round_half_up(x: Fraction) -> int:
    return int((x + Fraction(1, 2)).__floor__())


def uniform(chain: list, term) -> bool:
    """Whether the chain and its terminal apply one map to every element (scalar constants)."""
    return all(op.const is None or np.size(op.const) == 1 for op in chain) \
        and (not isinstance(term, (ir.ThresholdTerminal, ir.LevelTerminal)) or term.thresholds.shape[0] == 1)


def flat_channels(ctx, v, chain: list, term) -> tuple:
    """(v, chain, terminal) for per-element ops on flattened features (a BatchNorm1d after a
    Flatten): the stored (H, W, C) tensor as one vector (ir.Flatten), whose channels are the
    elements in storage order, and the constants, given in the model's (C, H, W) order, moved into
    that order. The value keeps `flat_from`, so a dense layer after it reads its columns the same
    way."""
    c, h, w = v.flat_from
    n = c * h * w
    v = replace(v, tensor=_flattened(ctx, v.tensor))
    order = np.arange(n).reshape(c, h, w).transpose(1, 2, 0).reshape(-1)  # storage position -> model index
    chain = [ir.ChainOp(op.op, np.asarray(op.const).reshape(-1)[order]) if np.size(op.const) == n else op
             for op in chain]
    if isinstance(term, (ir.ThresholdTerminal, ir.LevelTerminal)) and term.thresholds.shape[0] == n:
        term = replace(term, thresholds=term.thresholds[order])
    return v, chain, term
