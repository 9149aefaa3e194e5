"""Pooling: MaxPool (of bits / integers, or commuting with a pending sign), AveragePool of a
fixed-point stream (a SumPool), GlobalAveragePool (a GlobalSumPool)."""

from __future__ import annotations

from dataclasses import replace

from .. import ir
from ..errors import BnncError
from .context import conv_pads
from .linear import window_sum_conv
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


@handler("AveragePool", ignores=("dilations",))
def average_pool(ctx, node, *, kernel_shape=None, strides=(1, 1), pads=None, auto_pad="NOTSET", ceil_mode=0,
                 count_include_pad=0):
    """AveragePool of a fixed-point stream (Bi-Real's downsample shortcut): a SumPool, with the
    1/(kh*kw) in the scale (exact), where every window has kh*kw taps; with zero padding that the
    divisor counts (count_include_pad = 1), a window-sum convolution (`window_sum_conv`)."""
    v = no_pending_ops(ctx, node, ctx.val(node))
    if count_include_pad and not ceil_mode and len(v.shape) == 4 and any(
            conv_pads(node, v.shape[2:], tuple(kernel_shape), tuple(strides), auto_pad, pads)):
        ctx.set(node, window_sum_conv(ctx, node, v, tuple(kernel_shape), tuple(strides),
                                      conv_pads(node, v.shape[2:], tuple(kernel_shape), tuple(strides),
                                                auto_pad, pads)))
        return
    if isinstance(v, AccVal):
        v = no_pending_ops(ctx, node, to_stream(ctx, node, v))  # a BatchNorm after a MaxPool: pending
    if not isinstance(v, IntsVal) or len(v.shape) != 4:
        raise BnncError(f"{where(node)}: AveragePool of a {v.kind} tensor is not supported (of a fixed-point "
                        "stream it is)")
    kernel = tuple(kernel_shape)
    stride = tuple(strides)
    pads = conv_pads(node, v.shape[2:], kernel, stride, auto_pad, pads)
    if any(pads) or ceil_mode:
        raise BnncError(f"{where(node)}: AveragePool with padding and count_include_pad=0, or with ceil_mode, "
                        "is not supported (the divisor would change near the border)")
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


@handler("GlobalAveragePool")
def global_average_pool(ctx, node):
    v = no_pending_ops(ctx, node, ctx.val(node))
    if isinstance(v, AccVal):  # a real-valued layer output: through the fixed-point stream
        v = no_pending_ops(ctx, node, to_stream(ctx, node, v))  # a BatchNorm after a MaxPool: pending
    if not isinstance(v, (BitsVal, IntsVal)):
        raise BnncError(f"{where(node)}: GlobalAveragePool of real-valued layer outputs is not supported "
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
    ctx.set(node, IntsVal((1, c, 1, 1), tensor=tname, scale=v.scale / (h * w)))


def no_pending_ops(ctx, node, v):
    """An integer tensor with pending ops (a Relu of a fixed-point stream) as a new stream."""
    if isinstance(v, IntChainVal) and v.flat_from is None:
        return stream_of_intchain(ctx, node, v)
    return v
