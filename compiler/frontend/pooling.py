"""Pooling: MaxPool (of bits / integers, or commuting with a pending sign), AveragePool of a
fixed-point stream (a SumPool), GlobalAveragePool and an AveragePool whose window is the whole map
(a GlobalSumPool)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .. import ir
from ..errors import BnncError
from .context import conv_pads
from .linear import window_sum_conv
from .probe import run_alone
from .registry import handler, where
from .streams import narrow, stream_of_intchain, to_stream
from .values import AccVal, BitsVal, IntChainVal, IntsVal

SUM_LIMIT = 2**63 - 1  # the sums of pools are exact int64


@handler("MaxPool", ignores=("storage_order",))
def max_pool(ctx, node, *, kernel_shape=None, strides=(1, 1), pads=None, auto_pad="NOTSET", dilations=(1, 1),
             ceil_mode=0):
    v = no_pending_ops(ctx, node, ctx.val(node))
    if len(node.outputs) > 1 and node.outputs[1]:
        raise BnncError(f"{where(node)}: MaxPool indices output is not supported")
    if any(d != 1 for d in dilations):
        raise BnncError(f"{where(node)}: dilated MaxPool is not supported")
    kernel = tuple(kernel_shape)
    stride = tuple(strides)
    if len(v.shape) != 4:
        raise BnncError(f"{where(node)}: MaxPool needs a 4-D input")
    pads = conv_pads(node, v.shape[2:], kernel, stride, auto_pad, pads)
    oh, ow = ir.out_shape(v.shape[2:], kernel, stride, pads)
    if ceil_mode:  # the canonical stage turns ceil_mode into end padding (canonical/pool_ceil.py)
        ch = -(-(v.shape[2] + pads[0] + pads[2] - kernel[0]) // stride[0]) + 1
        cw = -(-(v.shape[3] + pads[1] + pads[3] - kernel[1]) // stride[1]) + 1
        if (ch, cw) != (oh, ow):
            raise BnncError(f"{where(node)}: ceil_mode=1 changes the output size here; not supported")
    params = (kernel, stride, pads, (oh, ow), node.name)
    if isinstance(v, AccVal):  # before the activation: it commutes with a sign (checked when it closes)
        ctx.set(node, replace(v, shape=(1, v.shape[1], oh, ow), pools=v.pools + [(params, len(v.chain))]))
        return
    if not isinstance(v, (BitsVal, IntsVal)):
        raise BnncError(f"{where(node)}: MaxPool on a {v.kind} tensor is not supported")
    ctx.set(node, ctx.emit_maxpool(params, v))


@handler("AveragePool")
def average_pool(ctx, node, *, kernel_shape=None, strides=(1, 1), pads=None, auto_pad="NOTSET", ceil_mode=0,
                 count_include_pad=0, dilations=(1, 1)):
    """AveragePool of a fixed-point stream (Bi-Real's downsample shortcut): a SumPool, with the
    1/(kh*kw) in the scale (exact), where every window has kh*kw taps; with zero padding that the
    divisor counts (count_include_pad = 1), a window-sum convolution (`window_sum_conv`); where the
    divisor changes near the border, a SumPool with multipliers (`_border_sum_pool`)."""
    v = no_pending_ops(ctx, node, ctx.val(node))
    if any(d != 1 for d in dilations):
        raise BnncError(f"{where(node)}: dilated AveragePool is not supported")
    if count_include_pad and not ceil_mode and len(v.shape) == 4 and any(
            conv_pads(node, v.shape[2:], tuple(kernel_shape), tuple(strides), auto_pad, pads)):
        ctx.set(node, window_sum_conv(ctx, node, v, tuple(kernel_shape), tuple(strides),
                                      conv_pads(node, v.shape[2:], tuple(kernel_shape), tuple(strides),
                                                auto_pad, pads)))
        return
    if isinstance(v, AccVal):
        v = no_pending_ops(ctx, node, to_stream(ctx, node, v))  # a BatchNorm after a MaxPool: pending
    kernel = tuple(kernel_shape)
    stride = tuple(strides)
    if isinstance(v, (BitsVal, IntsVal)) and len(v.shape) == 4 and kernel == tuple(v.shape[2:]) and \
            not any(conv_pads(node, v.shape[2:], kernel, stride, auto_pad, pads)):
        ctx.set(node, _global_sum(ctx, node, v))  # one window over the map: tf2onnx's global pool
        return
    if not isinstance(v, IntsVal) or len(v.shape) != 4:
        raise BnncError(f"{where(node)}: AveragePool of a {v.kind} tensor is not supported (of a fixed-point "
                        "stream it is, and of bits or integers over the whole map)")
    pads = conv_pads(node, v.shape[2:], kernel, stride, auto_pad, pads)
    if any(pads) or ceil_mode:
        ctx.set(node, _border_sum_pool(ctx, node, v, kernel, stride, pads))
        return
    n = kernel[0] * kernel[1]
    v = narrow(ctx, node, v, (2**31 - 1) // n)  # the window sums are 32-bit
    ty = ctx.graph.tensors[v.tensor]
    oh, ow = ir.out_shape(ty.shape[:2], kernel, stride, (0, 0, 0, 0))
    name = ctx.new_name("sumpool")
    tname = name + "_out"
    lo, hi = ty.lo * n, ty.hi * n
    oty = ir.Ints((oh, ow, ty.shape[2]), lo, hi, ty.scale / n)
    ctx.graph.add(ir.SumPool(name, [v.tensor], [tname], kernel, stride), {tname: oty})
    ctx.set(node, IntsVal((1, v.shape[1], oh, ow), [node.name], tensor=tname, scale=v.scale / n))


def _border_sum_pool(ctx, node, v: IntsVal, kernel: tuple, stride: tuple, pads: tuple) -> IntsVal:
    """An AveragePool whose divisor n[y, x] changes near the border (count_include_pad = 0 with
    padding, ceil_mode windows that overhang the input): the window sums times L / n[y, x], on the
    grid scale / L (L the lcm of the divisors), exact. The output size and the divisors are the
    runtime's own: the node run in onnxruntime on a map of ones gives taps[y, x] / n[y, x]."""
    h, w = v.shape[2:]
    ratio = run_alone(ctx, node, np.ones((1, 1, h, w), np.float32))[0, 0].astype(np.float64)
    oh, ow = ratio.shape
    ends = tuple(max(p, (o - 1) * s + k - n - b) for p, o, s, k, n, b in zip(pads[2:], (oh, ow), stride, kernel,
                                                                               (h, w), pads[:2]))
    window = pads[:2] + ends  # ceil_mode's overhanging windows as end padding
    if ir.out_shape((h, w), kernel, stride, window) != (oh, ow) or np.any(ratio <= 0):
        raise BnncError(f"{where(node)}: AveragePool gives a {oh}x{ow} output of a {h}x{w} map whose windows "
                        "bnnc cannot place")
    taps = ir.window_taps((h, w), kernel, stride, window)
    divisors = np.rint(taps / ratio).astype(np.int64)
    if np.any(divisors < 1) or np.any(divisors > kernel[0] * kernel[1]) or \
            np.max(np.abs(taps / divisors - ratio) / ratio) > 2**-20:
        raise BnncError(f"{where(node)}: AveragePool divides its windows by numbers bnnc cannot read off it")
    lcm = int(np.lcm.reduce(divisors.reshape(-1)))
    mult = lcm // divisors
    gains = np.unique(taps * mult)
    if gains.max() > 2**23:  # the window sums are 32-bit: the stream would keep fewer than 8 bits
        raise BnncError(f"{where(node)}: AveragePool divides its windows by {', '.join(map(str, np.unique(divisors)))}"
                        f" (lcm {lcm}): exact window sums on that grid do not fit 32 bits")
    v = narrow(ctx, node, v, (2**31 - 1) // int(gains.max()))  # the window sums are 32-bit
    ty = ctx.graph.tensors[v.tensor]
    name = ctx.new_name("sumpool")
    tname = name + "_out"
    lo, hi = min(ty.lo * int(g) for g in gains), max(ty.hi * int(g) for g in gains)
    oty = ir.Ints((oh, ow, ty.shape[2]), lo, hi, ty.scale / lcm)
    ctx.graph.add(ir.SumPool(name, [v.tensor], [tname], kernel, stride, window, mult), {tname: oty})
    return IntsVal((1, v.shape[1], oh, ow), [node.name], tensor=tname, scale=v.scale / lcm)


@handler("GlobalAveragePool")
def global_average_pool(ctx, node):
    v = no_pending_ops(ctx, node, ctx.val(node))
    if isinstance(v, AccVal):  # a real-valued layer output: through the fixed-point stream
        v = no_pending_ops(ctx, node, to_stream(ctx, node, v))  # a BatchNorm after a MaxPool: pending
    ctx.set(node, _global_sum(ctx, node, v))


def _global_sum(ctx, node, v) -> IntsVal:
    """The mean over the whole map as the exact int64 sum of its pixels, the 1 / (H W) in the scale:
    a reader that needs 32 bits rounds the sum, not each pixel (a far smaller error)."""
    if not isinstance(v, (BitsVal, IntsVal)):
        raise BnncError(f"{where(node)}: {node.op_type} of real-valued layer outputs is not supported "
                        "yet; place it after the sign activation")
    ty = ctx.graph.tensors[v.tensor]
    h, w, c = ty.shape
    name = ctx.new_name("gsum")
    tname = name + "_out"
    if isinstance(ty, ir.Bits):
        oty = ir.Ints((1, 1, c), -h * w, h * w, ty.scale / (h * w))
    else:
        oty = ir.Ints((1, 1, c), ty.lo * h * w, ty.hi * h * w, ty.scale / (h * w))
        if max(-oty.lo, oty.hi) > SUM_LIMIT:
            raise BnncError(f"{where(node)}: the sum over {h}x{w} pixels of values in [{ty.lo}, {ty.hi}] "
                            "needs more than 64 bits")
    ctx.graph.add(ir.GlobalSumPool(name, [v.tensor], [tname]), {tname: oty})
    # the value's own scale: a scale applied after the quantizer (Quant(x, 1) * 2^-f) is in it, not in the tensor's
    return IntsVal((1, c, 1, 1), tensor=tname, scale=v.scale / (h * w))


def no_pending_ops(ctx, node, v):
    """An integer tensor with pending ops (a Relu of a fixed-point stream) as a new stream."""
    if isinstance(v, IntChainVal) and v.flat_from is None:
        return stream_of_intchain(ctx, node, v)
    return v
