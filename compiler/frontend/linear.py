"""Layers with weights: Conv, Gemm, MatMul. Each becomes an IR Conv (dense layers are convs whose
kernel covers the whole input) whose accumulator is a pending value (`AccVal`): the float32 ops
that follow join its epilogue."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .. import ir, weight_codes
from ..errors import BnncError
from .context import conv_pads, widen
from .registry import handler, where
from .streams import to_stream
from .values import AccVal, BitsVal, InputVal, IntChainVal, IntsVal, RealsVal, Val


@handler("Conv")
def conv(ctx, node, *, strides=(1, 1), pads=None, group=1, dilations=(1, 1), auto_pad="NOTSET",
         kernel_shape=None):
    v = _materialize(ctx, node, ctx.val(node))
    w = ctx.const(node, 1, "weight")
    if group != 1:
        raise BnncError(f"{where(node)}: grouped convolution (group={group}) is not supported")
    if any(d != 1 for d in dilations):
        raise BnncError(f"{where(node)}: dilated convolution is not supported")
    if w.ndim != 4:
        raise BnncError(f"{where(node)}: only 2-D convolutions are supported (weight shape {w.shape})")
    if len(v.shape) != 4 or v.shape[1] != w.shape[1]:
        raise BnncError(f"{where(node)}: input shape {v.shape} does not match weights {w.shape}")
    kernel = tuple(int(k) for k in w.shape[2:])  # the weights' shape, which kernel_shape can only repeat
    stride = tuple(strides)
    pads = conv_pads(node, v.shape[2:], kernel, stride, auto_pad, pads)
    dec = _decode_weights(ctx, node, w, node.inputs[1])
    bias = ctx.consts.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    if len(node.inputs) > 2 and node.inputs[2] and bias is None:
        raise BnncError(f"{where(node)}: its bias must be a constant")
    layout = lambda x: x.transpose(0, 2, 3, 1)  # noqa: E731  OIHW -> OHWC
    ctx.set(node, _conv_common(ctx, node, v, dec, layout, kernel, stride, pads, bias, False))


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
    v = _materialize(ctx, node, v)
    if len(v.shape) != 2:
        raise BnncError(f"{where(node)}: dense layer input must be 2-D (got {v.shape})")
    if w_oi.shape[1] != v.shape[1]:
        raise BnncError(f"{where(node)}: weight shape {w_oi.shape} does not match input {v.shape}")
    dec = _decode_weights(ctx, node, w_oi, origin_name)
    dec.unit = dec.unit * scale_mult
    if dec.scale_p is not None:
        dec.scale_p, dec.scale_n = dec.scale_p * scale_mult, dec.scale_n * scale_mult
    src = ctx.graph.tensors.get(v.tensor) if isinstance(v, (BitsVal, IntsVal)) else None
    o = w_oi.shape[0]
    if src is not None:
        h, w_, c = src.shape
        if v.block is not None:
            if h * w_ != 1:
                raise BnncError(f"{where(node)}: flattened activation bases are not supported")
            layout = lambda x: x.reshape(o, 1, 1, -1)  # noqa: E731
        elif v.flat_from is not None:
            cc, hh, ww = v.flat_from
            layout = lambda x: x.reshape(o, cc, hh, ww).transpose(0, 2, 3, 1)  # noqa: E731
        else:
            layout = lambda x: x.reshape(o, h, w_, c)  # noqa: E731
        kernel = (h, w_)
    else:
        layout, kernel = (lambda x: x.reshape(o, 1, 1, -1)), (1, 1)
    val = _conv_common(ctx, node, v, dec, layout, kernel, (1, 1), (0, 0, 0, 0), bias, True)
    ctx.set(node, val)


def _decode_weights(ctx, node, w: np.ndarray, origin_name: str):
    """weight_codes.Decoded of a layer's weights (O, ...)."""
    origin = None
    if origin_name in ctx.origins:
        k, s = ctx.origins[origin_name]
        o = k.shape[0]
        s2 = np.asarray(s, np.float64).reshape(o, -1)
        if k.shape == np.shape(w) and np.all(s2 == s2[:, :1]):
            origin = (k, s2[:, 0])
    return weight_codes.decode(where(node), w, origin)


def _materialize(ctx, node, v: Val) -> Val:
    """The raw input read directly by a layer: integers on the declared grid, scales folded."""
    if not isinstance(v, InputVal):
        return v
    if ctx.grid["range"] is None:
        raise BnncError(f"{where(node)} reads the float model input directly; bnnc needs integers: add a "
                        "Quant/QuantizeLinear on the input, or declare the grid with --input-scale S")
    scale = 1.0
    for op in v.chain:
        c = float(op.const) if op.const is not None and op.const.size == 1 else None
        if op.op not in ("mul", "div") or c is None or not c > 0:
            raise BnncError(f"{where(node)}: the input reaches this layer through a {op.op} by a non-scalar "
                            "or non-positive constant; only positive scalar scales are supported")
        scale = scale * c if op.op == "mul" else scale / c
    out = ctx.finish_input(node, replace(v, chain=[]), None)
    out.scale = scale
    return out


def _conv_common(ctx, node, v: Val, dec, layout, kernel, stride, pads, bias, dense) -> AccVal:
    """The IR Conv of decoded weights `dec`; `layout` maps an (O, ...) array to (O, kh, kw, C)."""
    if isinstance(v, AccVal):  # real activations (EC2T, HBN real-input layers): the fixed-point stream
        v = to_stream(ctx, node, v)
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
    if v.block is not None:  # a conv built for one activation-base plane reads its block of a wider tensor
        widen(op, src.shape[2], v.block[0])
    o = signs.shape[0]
    ctx.graph.add(op, {tname: ir.Reals((oh, ow, o))})
    scale = (unit * v.scale).astype(np.float32)
    chain = [ir.ChainOp("mul", scale)]
    if bias is not None:
        chain.append(ir.ChainOp("add", np.asarray(bias, dtype=np.float32).reshape(-1)))
    shape = (1, o, oh, ow) if not dense else (1, o)
    return AccVal(shape, chain=chain, conv=name)
