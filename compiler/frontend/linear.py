"""Layers with weights: Conv, Gemm, MatMul. Each becomes an IR Conv (dense layers are convs whose
kernel covers the whole input) whose accumulator is a pending value (`AccVal`): the float32 ops
that follow join its epilogue."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional

import numpy as np

from .. import ir, weight_codes
from ..arith import eval_chain
from ..errors import BnncError
from ..passes.fold_batchnorm_into_thresholds import tap_range
from .context import conv_pads
from .registry import handler, where
from .streams import WIDE_STREAM_LIMIT, narrow, rounding_error, stream_of_intchain, to_stream
from .values import AccVal, BitsVal, InputVal, IntChainVal, IntsVal, PaddedBitsVal, RealsVal, Val, with_chain

REAL_ACC_LIMIT = 2**61  # accumulators of real-valued weights stay within this (the weights' bits are chosen
#                         for it): exact int64 sums; a requantization drops their low bits (Requantize.pre_shift)
TABLE_ELEMENTS = 1 << 24  # an input chain is evaluated at every grid value of every element below this
INPUT_FRAC_BITS = 24  # finest grid 2**-24 of a real-valued model input (a float32 near 1 has 24-bit steps)


@handler("Conv")
def conv(ctx, node, *, strides=(1, 1), pads=None, group=1, dilations=(1, 1), auto_pad="NOTSET",
         kernel_shape=None):
    v = ctx.val(node)
    w = ctx.const(node, 1, "weight")
    origin = node.inputs[1]
    if group != 1:
        if w.ndim != 4 or len(v.shape) != 4 or w.shape[1] * group != v.shape[1]:
            raise BnncError(f"{where(node)}: group={group} on an input of {v.shape[1] if len(v.shape) > 1 else '?'} "
                            f"channels needs weights of shape (O, C / {group}, kh, kw); they are {tuple(w.shape)}")
        if origin in ctx.origins:
            k, sc = ctx.origins[origin]
            sc = np.asarray(sc)
            ctx.origins[origin + "\0G"] = (ungroup(node, np.asarray(k), group),
                                            ungroup(node, sc, group) if sc.shape == np.shape(k) else sc)
        origin = origin + "\0G"
        w = ungroup(node, w, group)
    bias = ctx.consts.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if len(node.inputs) > 2 and node.inputs[2] and bias is None:
        raise BnncError(f"{where(node)}: its bias must be a constant")
    if getattr(v, "flat_from", None) is not None and w.ndim == 4 and w.shape[2:] == (1, 1) and group == 1 \
            and not any(pads or ()) and auto_pad in ("NOTSET", "VALID") and len(v.shape) == 4 and v.shape[2:] == (1, 1):
        # a 1 x 1 convolution of flattened features (larq's dense layers on Reshape((1, 1, -1))): a dense layer
        if origin in ctx.origins:
            k, sc = ctx.origins[origin]
            sc = np.asarray(sc)
            ctx.origins[origin + "\0D"] = (np.asarray(k).reshape(w.shape[:2]),
                                            sc.reshape(sc.shape[:2]) if sc.ndim == 4 else sc)
        _dense(ctx, node, replace(v, shape=v.shape[:2]), np.asarray(w, np.float64).reshape(w.shape[:2]),
               None if bias is None else np.asarray(bias, np.float32), 1.0, origin + "\0D")
        ctx.vals[node.outputs[0]] = replace(ctx.vals[node.outputs[0]], shape=(1, w.shape[0], 1, 1))
        return
    v = materialize(ctx, node, v, w, origin)
    if any(d != 1 for d in dilations):
        raise BnncError(f"{where(node)}: dilated convolution is not supported")
    if w.ndim != 4:
        raise BnncError(f"{where(node)}: only 2-D convolutions are supported (weight shape {w.shape})")
    if len(v.shape) != 4 or v.shape[1] != w.shape[1]:
        raise BnncError(f"{where(node)}: input shape {v.shape} does not match weights {w.shape}")
    kernel = tuple(int(k) for k in w.shape[2:])  # the weights' shape, which kernel_shape can only repeat
    stride = tuple(strides)
    pads = conv_pads(node, v.shape[2:], kernel, stride, auto_pad, pads)
    padded = None
    if isinstance(v, PaddedBitsVal):  # +-1 padding taken in: the conv's own pads must be 0
        if any(pads):
            raise BnncError(f"{where(node)}: a convolution with its own zero padding after a Pad with +-1 is "
                            "not supported")
        padded, pads = v, v.pads
        v = BitsVal((v.shape[0], v.shape[1], v.shape[2] - v.pads[0] - v.pads[2], v.shape[3] - v.pads[1] - v.pads[3]),
                    list(v.source_ops), tensor=v.tensor, scale=v.scale)
    dec = _decode_weights(ctx, node, w, origin, v)
    layout = lambda x: x.transpose(0, 2, 3, 1)  # noqa: E731  OIHW -> OHWC
    acc = _conv_common(ctx, node, v, dec, layout, kernel, stride, pads, bias, False)
    if padded is not None:
        _constant_padding(node, ctx.graph.op(acc.conv), v.shape[2:], padded.value)
    ctx.set(node, acc)


@handler("Gemm", ignores=("broadcast",))
def gemm(ctx, node, *, alpha=1.0, beta=1.0, transA=0, transB=0):
    v = ctx.val(node)
    if transA:
        raise BnncError(f"{where(node)}: transA=1 is not supported")
    w = np.asarray(ctx.const(node, 1, "weight"), dtype=np.float64)
    origin = node.inputs[1]
    if not transB:
        w = w.T
        if origin in ctx.origins:
            k, s = ctx.origins[origin]
            ctx.origins[origin + "\0T"] = (k.T, np.asarray(s).T)
            origin = origin + "\0T"
    bias = None
    if len(node.inputs) > 2 and node.inputs[2]:
        bias = np.asarray(ctx.const(node, 2, "bias"), dtype=np.float32) * np.float32(beta)
        bias = np.broadcast_to(bias, (1, w.shape[0])).reshape(-1)
    _dense(ctx, node, v, w, bias, float(alpha), origin)


@handler("MatMul")
def matmul(ctx, node):
    v = ctx.val(node)
    w = np.asarray(ctx.const(node, 1, "weight"), dtype=np.float64)
    if w.ndim != 2:
        raise BnncError(f"{where(node)}: weight must be 2-D (got {w.shape})")
    origin = node.inputs[1]
    if origin in ctx.origins:
        k, s = ctx.origins[origin]
        ctx.origins[origin + "\0T"] = (k.T, np.asarray(s).T)
    _dense(ctx, node, v, w.T, None, 1.0, origin + "\0T")


def _dense(ctx, node, v: Val, w_oi: np.ndarray, bias, scale_mult=1.0, origin_name=""):
    v = materialize(ctx, node, v, w_oi, origin_name)
    if len(v.shape) != 2:
        raise BnncError(f"{where(node)}: dense layer input must be 2-D (got {v.shape})")
    if w_oi.shape[1] != v.shape[1]:
        raise BnncError(f"{where(node)}: weight shape {w_oi.shape} does not match input {v.shape}")
    dec = _decode_weights(ctx, node, w_oi, origin_name, v)
    dec.unit = dec.unit * scale_mult
    if dec.scale_p is not None:
        dec.scale_p, dec.scale_n = dec.scale_p * scale_mult, dec.scale_n * scale_mult
    src = ctx.graph.tensors.get(v.tensor) if isinstance(v, (BitsVal, IntsVal)) else None
    o = w_oi.shape[0]
    if src is not None:
        h, w_, c = src.shape
        if v.flat_from is not None:  # stored (H, W, C), or as one vector in that order (ir.Flatten)
            cc, hh, ww = v.flat_from
            layout = lambda x: x.reshape(o, cc, hh, ww).transpose(0, 2, 3, 1).reshape(o, h, w_, c)  # noqa: E731
        else:
            layout = lambda x: x.reshape(o, h, w_, c)  # noqa: E731
        kernel = (h, w_)
    else:
        layout, kernel = (lambda x: x.reshape(o, 1, 1, -1)), (1, 1)
    val = _conv_common(ctx, node, v, dec, layout, kernel, (1, 1), (0, 0, 0, 0), bias, True)
    ctx.set(node, val)


def _decode_weights(ctx, node, w: np.ndarray, origin_name: str, v: Optional[Val] = None, max_int=None):
    """weight_codes.Decoded of a layer's weights (O, ...). Real-valued weights get as many bits
    as keep every accumulator of input `v` within REAL_ACC_LIMIT (or `max_int`)."""
    live = int(np.count_nonzero(np.reshape(w, (np.shape(w)[0], -1)), axis=1).max(initial=1))
    if max_int is None:
        max_int = weight_codes.REAL_MAX_INT
        if v is not None:
            max_int = max(1, min(max_int, REAL_ACC_LIMIT // (_input_magnitude(ctx, v) * max(live, 1))))
    bits = ctx.weight_bits.get(node.name, ctx.weight_bits.get("*"))
    if bits is not None:  # the user's width: a coarser grid, a larger stated bound
        max_int = min(max_int, 2 ** (int(bits) - 1) - 1)
        ctx.weight_bits_used.add(node.name)
    origin = None
    if origin_name in ctx.origins:
        k, s = ctx.origins[origin_name]
        o = k.shape[0]
        s2 = np.asarray(s, np.float64).reshape(o, -1)
        if k.shape == np.shape(w) and np.all(s2 == s2[:, :1]):
            origin = (k, s2[:, 0])
    return weight_codes.decode(where(node), w, origin, max_int)


def _input_magnitude(ctx, v: Val) -> int:
    """The largest |value| a layer input can hold (real-valued outputs become streams)."""
    if isinstance(v, (BitsVal, IntsVal)):
        lo, hi = tap_range(ctx.graph.tensors[v.tensor])
        return max(-int(lo), int(hi), 1)
    return WIDE_STREAM_LIMIT


def _input_error(ctx, v: Val) -> float:
    """Bound on |real value - represented value| per element of a layer input (real units)."""
    return rounding_error(ctx.graph, v.tensor) if isinstance(v, IntsVal) else 0.0


def materialize(ctx, node, v: Val, w=None, origin_name: str = "") -> Val:
    """The raw input read directly by a layer: integers on the declared grid, positive scalar
    scales folded into the layer; any other float32 ops on the way (per-channel normalisation,
    offsets such as (x + 1) / 2) make it a fixed-point input (`_fixed_point_input`). Integers
    beyond 32 bits (a large global sum of a stream) are first rounded to a coarser grid
    (`streams.narrow`): the layer kernels read 32-bit values."""
    if isinstance(v, IntsVal):
        return _within_32_bits(ctx, node, v)
    if not isinstance(v, InputVal):
        return v
    if ctx.grid["range"] is None:
        raise BnncError(f"{where(node)} reads the float model input directly; bnnc needs integers: add a "
                        "Quant/QuantizeLinear on the input, or declare the grid with --input-scale S "
                        "(or per channel: --input-scale, --input-offset, --input-mean, --input-std)")
    scale = 1.0
    for op in v.chain:
        c = float(op.const) if op.const is not None and op.const.size == 1 else None
        if op.op not in ("mul", "div") or c is None or not c > 0:
            break
        scale = scale * c if op.op == "mul" else scale / c
    else:  # the integers themselves, each reader folding its own scale
        return replace(_read_once(ctx, replace(v, chain=[]),
                                  lambda: ctx.finish_input(node, replace(v, chain=[]), None)), scale=scale)
    return _read_once(ctx, v, lambda: _fixed_point_input(ctx, node, v, w, origin_name))


def _within_32_bits(ctx, node, v: IntsVal) -> IntsVal:
    """`v`, or beyond 32 bits `v` rounded to a coarser grid (the layer kernels read 32-bit values)."""
    ty = ctx.graph.tensors[v.tensor]
    return narrow(ctx, node, v, WIDE_STREAM_LIMIT) if max(-ty.lo, ty.hi) > 2**31 - 1 else v


def _read_once(ctx, v: InputVal, quantize) -> Val:
    """The model input with pending ops `v.chain` as a tensor: quantized by the first layer that
    reads it that way (`quantize()`), shared by the others."""
    key = (v.shape, v.channels_last) + tuple(
        (op.op, None if op.const is None else (np.shape(op.const), np.asarray(op.const).tobytes())) for op in v.chain)
    if key not in ctx.read_inputs:
        ctx.read_inputs[key] = quantize()
    return ctx.read_inputs[key]


def _fixed_point_input(ctx, node, v: InputVal, w=None, origin_name: str = "") -> Val:
    """The model's float32 input x = chain(q), evaluated as the model (or the declared
    normalisation) computes it, as a fixed-point tensor round(x * 2**f) with |x| * 2**f < 2**30:
    on the coarsest grid that holds every value the grid of q can produce (exact), else rounded
    half to even (an error of at most 2**-(f + 1) per element) on the grid 2**-f, f between
    frac_bits and INPUT_FRAC_BITS, that gives the reading layer (weights `w`) the smallest
    error bound: a finer input leaves fewer bits to real-valued weights (REAL_ACC_LIMIT)."""
    lo, hi = ctx.grid["range"]
    values = ctx.grid.get("values")
    n_el = int(np.prod(v.shape[1:]))
    grid_size = len(values) if values else hi - lo + 1
    whole = grid_size * n_el <= TABLE_ELEMENTS
    q = np.array(values if values else (np.arange(lo, hi + 1) if whole else [lo, hi]), np.float32)
    with np.errstate(all="ignore"):
        x = eval_chain(v.chain, np.broadcast_to(q[:, None], (q.size, n_el)))
    if not np.all(np.isfinite(x)):
        raise BnncError(f"{where(node)}: the input's float32 operations give non-finite values on the "
                        f"declared grid [{lo}, {hi}]")
    mag = float(np.abs(x).max())
    fmax = INPUT_FRAC_BITS if mag == 0 else min(INPUT_FRAC_BITS, 30 - math.frexp(mag)[1])
    x64 = x.astype(np.float64)
    frac = next((k for k in range(fmax + 1) if np.all(x64 * 2.0**k == np.rint(x64 * 2.0**k))), None) \
        if whole else None
    exact = frac is not None
    if not exact:
        candidates = range(min(ctx.frac_bits, fmax), fmax + 1)
        frac = min(candidates, key=lambda f: (_input_bound(ctx, node, w, origin_name, mag, f), -f)) \
            if w is not None else min(ctx.frac_bits, fmax)
    ints = np.rint(x64 * 2.0**frac)
    term = ir.RoundClampTerminal(int(ints.min()), int(ints.max()), 0, "half_even", source=node.name)
    out = ctx.finish_input(node, with_chain(v, [ir.ChainOp("mul", np.float32(2.0**frac).reshape(()))]), term)
    op = ctx.graph.op(ctx.input_op_name)
    op.chain.terminal.out_scale = 2.0**-frac
    op.notes.append(f"fixed-point input 2^-{frac}: " + (
        "exact (every value the declared grid produces is on it)" if exact
        else f"rounded half to even, error <= 2^-{frac + 1} per element"))
    op.max_error = 0.0 if exact else 2.0**-(frac + 1)
    t = ctx.graph.tensors[out.tensor]
    ctx.graph.tensors[out.tensor] = ir.Ints(t.shape, t.lo, t.hi, 2.0**-frac)
    out.scale = 2.0**-frac
    return out


def _input_bound(ctx, node, w, origin_name: str, mag: float, frac: int) -> float:
    """The largest error bound (real units) of a layer's sums with weights `w` on an input of
    magnitude `mag` represented on the grid 2**-frac (see _conv_common's acc_error)."""
    w2 = np.reshape(w, (np.shape(w)[0], -1))
    qmag = int(mag * 2.0**frac) + 1
    live = int(np.count_nonzero(w2, axis=1).max(initial=1))
    max_int = max(1, min(weight_codes.REAL_MAX_INT, REAL_ACC_LIMIT // (qmag * live)))
    dec = _decode_weights(ctx, node, w, origin_name, max_int=max_int)
    k = np.abs(dec.int_w if dec.int_w is not None else dec.signs).reshape(w2.shape[0], -1).astype(np.float64)
    err_w = dec.error if dec.error is not None else np.zeros(w2.shape[0])
    taps = w2.shape[1]
    bound = dec.unit * (2.0**-frac * err_w * taps * qmag + (k.sum(axis=1) + err_w * taps) * 2.0**-(frac + 1))
    return float(np.max(np.abs(bound), initial=0.0))


def _conv_common(ctx, node, v: Val, dec, layout, kernel, stride, pads, bias, dense) -> AccVal:
    """The IR Conv of decoded weights `dec`; `layout` maps an (O, ...) array to (O, kh, kw, C)."""
    if isinstance(v, AccVal):  # real activations (EC2T, HBN real-input layers): the fixed-point stream
        v = to_stream(ctx, node, v)
    if isinstance(v, IntChainVal):
        v = stream_of_intchain(ctx, node, v)  # a pooled stream with BatchNorm / Relu after the pool
    if not isinstance(v, (BitsVal, IntsVal)):
        what = "real-valued activations" if isinstance(v, (AccVal, RealsVal)) else f"a {v.kind} tensor"
        if isinstance(v, IntChainVal):
            what = "a fixed-point tensor with pending elementwise ops"
        raise BnncError(f"{where(node)} receives {what}; bnnc needs binary or integer inputs here "
                        "(a quantizer on the input, or a sign activation before this layer)")
    src = ctx.graph.tensors[v.tensor]
    name = ctx.new_name("dense" if dense else "conv")
    tname = name + "_out"
    ih, iw = src.shape[0], src.shape[1]
    oh, ow = ir.out_shape((ih, iw), kernel, stride, pads)
    if oh < 1 or ow < 1:
        raise BnncError(f"{where(node)}: output would be empty for input {ih}x{iw}")
    signs = np.ascontiguousarray(layout(dec.signs))
    unit = np.asarray(dec.unit, np.float64)
    sp = dec.scale_p if dec.scale_p is not None else unit
    sn = dec.scale_n if dec.scale_n is not None else unit
    op = ir.Conv(name, [v.tensor], [tname], tuple(kernel), tuple(stride), tuple(pads), signs,
                 np.array(sp, np.float64), np.array(sn, np.float64), ir.Chain([], None), is_dense=dense,
                 source_ops=[node.name], original_params=int(dec.signs.size + (bias.size if bias is not None else 0)))
    if dec.code != "binary":
        op.code = dec.code
        op.int_w = np.ascontiguousarray(layout(dec.int_w)).astype(np.int64)
        op.bases = [ir.WeightBase(np.ascontiguousarray(layout(b.w)), b.mult_p, b.mult_n, b.scale_p, b.scale_n)
                    for b in dec.bases]
        op.unit = unit.copy()
    if dec.error is not None:
        op.weight_error = np.asarray(dec.error, np.float64)
    o = signs.shape[0]
    in_err = _input_error(ctx, v)
    if op.weight_error is not None and (op.weight_error.any() or in_err):
        # |sum w x - unit * scale * acc| <= unit * (scale * err_w * taps * max|q| + sum(|k| + err_w) * err_x)
        taps = int(np.prod(signs.shape[1:]))
        mag = _input_magnitude(ctx, v)
        wsum = np.abs(ir.int_weights(op).reshape(o, -1)).sum(axis=1) + op.weight_error * taps
        op.acc_error = unit * (v.scale * op.weight_error * taps * mag + wsum * in_err)
    ctx.graph.add(op, {tname: ir.Reals((oh, ow, o))})
    scale = (unit * v.scale).astype(np.float32)
    chain = [ir.ChainOp("mul", scale)]
    if bias is not None:
        chain.append(ir.ChainOp("add", np.asarray(bias, dtype=np.float32).reshape(-1)))
    shape = (1, o, oh, ow) if not dense else (1, o)
    return AccVal(shape, chain=chain, conv=name)


def identity_conv(ctx, node, v: Val, zeros_before: int = 0, zeros_after: int = 0) -> AccVal:
    """An identity 1x1 convolution of the bit or integer tensor `v` (whose pending ops, for an
    IntChainVal, become its chain): how a binary, fixed-point or integer tensor reaches a
    real-valued output, in the form every backend's layers have. With zeros_before / after, that
    many output channels of 0 come before / after `v`'s (a Pad of the channel axis with zeros)."""
    if isinstance(v, IntsVal):
        v = _within_32_bits(ctx, node, v)
    c = ctx.graph.tensors[v.tensor].shape[2]
    eye = np.zeros((zeros_before + c + zeros_after, 1, 1, c), np.int64)
    eye[zeros_before + np.arange(c), 0, 0, np.arange(c)] = 1
    dec = weight_codes.Decoded("int", eye.astype(np.int8), np.ones(eye.shape[0]), eye, what="identity")
    ints = v if isinstance(v, (BitsVal, IntsVal)) else IntsVal(v.shape, v.source_ops, tensor=v.tensor, scale=v.scale)
    acc = _conv_common(ctx, node, ints, dec, lambda x: x, (1, 1), (1, 1), (0, 0, 0, 0), None, False)
    if isinstance(v, IntChainVal):
        acc.chain = list(v.chain)
    acc.shape = (v.shape[0], eye.shape[0]) + tuple(v.shape[2:])
    return acc


def _constant_padding(node, op: ir.Conv, hw: tuple, value: int) -> None:
    """Padded taps of `op` hold `value` (+-1) instead of the IR's exact 0: they add value * W_t,
    W_t = sum_c int_w[o, t, c], over the padded taps t. As bias_kernel (summed over the valid
    taps) that is -value * W_t on every tap, plus value * sum_t W_t on one tap that is valid at
    every output position: sum over valid taps = value * (sum_t W_t - sum_valid W_t)."""
    wt = ir.int_weights(op).sum(axis=3)  # (O, kh, kw)
    oh, ow = ir.out_shape(hw, op.kernel, op.stride, op.pads)
    always = []
    for ax, n_out in ((0, oh), (1, ow)):
        first_ok = [k for k in range(op.kernel[ax])
                    if k - op.pads[ax] >= 0 and (n_out - 1) * op.stride[ax] + k - op.pads[ax] <= hw[ax] - 1]
        if not first_ok:
            raise BnncError(f"{where(node)}: no kernel tap is inside the input at every output position; padding "
                            f"{op.pads} with {value:+d} is not supported here")
        always.append(first_ok[0])
    bias = -value * wt.astype(np.int64)
    bias[:, always[0], always[1]] += value * wt.reshape(wt.shape[0], -1).sum(axis=1)
    op.bias_kernel = bias if op.bias_kernel is None else op.bias_kernel + bias


def ungroup(node, w: np.ndarray, group: int) -> np.ndarray:
    """Weights (O, C / group, kh, kw) of a grouped (depthwise: group = C) convolution as the dense
    (O, C, kh, kw) weights that are zero outside each output's group: the same sums exactly (a
    zero weight contributes 0); find_sparse_connectivity then lists each row's live channels."""
    o, cg = w.shape[0], w.shape[1]
    if group < 1 or o % group:
        raise BnncError(f"{where(node)}: group={group} does not divide the {o} output channels")
    dense = np.zeros((o, cg * group) + w.shape[2:], w.dtype)
    per = o // group
    for g in range(group):
        dense[g * per:(g + 1) * per, g * cg:(g + 1) * cg] = w[g * per:(g + 1) * per]
    return dense


def window_sum_conv(ctx, node, v: Val, kernel: tuple, stride: tuple, pads: tuple) -> AccVal:
    """AveragePool with zero padding counted in the divisor (count_include_pad = 1): a convolution
    with weight 1 from each channel to itself (the zero padding is an exact 0), the 1 / (kh * kw)
    entering the layer's chain like any scale."""
    c = v.shape[1]
    ones = ungroup(node, np.ones((c, 1) + kernel, np.int64), c)
    dec = weight_codes.Decoded("int", ones.astype(np.int8), np.full(c, 1.0 / (kernel[0] * kernel[1])), ones,
                               what="window sum (AveragePool)")
    out = _conv_common(ctx, node, v, dec, lambda x: x.transpose(0, 2, 3, 1), kernel, stride, pads, None, False)
    out.source_ops = []
    return out
