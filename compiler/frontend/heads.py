"""Classifier heads: TopK / ArgMax of the last (real-valued) layer become an ir.ArgMax, Softmax
and LogSoftmax an ir.Softmax (float32 probabilities or their logarithms, arith.softmax /
arith.log_softmax)."""

from __future__ import annotations

import numpy as np

from .. import ir
from ..errors import BnncError
from .activations import linear_quant_params
from .linear import identity_conv
from .registry import handler, where
from .values import AccVal, IndexVal, IntChainVal, IntsVal, RealsVal


@handler("TopK", ignores=("sorted",))
def top_k(ctx, node, *, axis=-1, largest=1, k=None):
    k = int(np.asarray(ctx.const(node, 1, "k")).ravel()[0]) if len(node.inputs) > 1 else int(k)
    if not largest:
        raise BnncError(f"{where(node)}: TopK with largest=0 is not supported")
    if node.outputs[0] and node.outputs[0] == ctx.lm.output_name:
        raise BnncError(f"{where(node)}: TopK values as the model output are not supported (indices are)")
    _head(ctx, node, k, axis, [node.outputs[1]])


@handler("ArgMax", ignores=("keepdims",))
def arg_max(ctx, node, *, axis=0, select_last_index=0):
    if select_last_index:
        raise BnncError(f"{where(node)}: select_last_index=1 is not supported")
    _head(ctx, node, 1, axis, [node.outputs[0]])


def _head(ctx, node, k: int, axis: int, outputs: list):
    v = ctx.val(node)
    if isinstance(v, AccVal):
        v = ctx.finish_acc(v, None, node)
    if not isinstance(v, RealsVal):
        raise BnncError(f"{where(node)} must follow the last (real-valued) layer")
    ax = axis % len(v.shape)
    if ax != 1 or any(s != 1 for i, s in enumerate(v.shape) if i not in (0, 1)):
        raise BnncError(f"{where(node)}: only the channel axis of a (1, C) tensor is supported")
    c = v.shape[1]
    if not 1 <= k <= c:
        raise BnncError(f"{where(node)}: k={k} outside 1..{c}")
    name = ctx.new_name("argmax")
    tname = name + "_out"
    ctx.graph.add(ir.ArgMax(name, [v.tensor], [tname], k), {tname: ir.Ints((1, 1, k), 0, c - 1)})
    for o in outputs:
        ctx.vals[o] = IndexVal((1, k) if outputs else (1,), tensor=tname)


@handler("Softmax")
def softmax(ctx, node, *, axis=None):
    """Softmax of the last layer's real values along the channel axis: of (N, C) logits, or per
    pixel of (N, C, H, W). Before opset 13 Softmax flattens the axes from `axis` on, so there the
    axes after the channel must have size 1."""
    _softmax(ctx, node, axis, log=False)


@handler("LogSoftmax")
def log_softmax(ctx, node, *, axis=None):
    """LogSoftmax (a torch classifier's `log_softmax` output), as Softmax."""
    _softmax(ctx, node, axis, log=True)


def _output_grid(ctx, node):
    """(scale, zero point, qmin, qmax) where the Softmax's only reader is a QuantizeLinear whose only
    reader is the DequantizeLinear (same scale and zero point) that makes the model output (a
    full-integer TFLite classifier), else None."""
    readers = ctx.consumers.get(node.outputs[0], [])
    if len(readers) != 1 or readers[0].op != "QuantizeLinear":
        return None
    q = readers[0]
    after = ctx.consumers.get(q.outputs[0], [])
    if len(after) != 1 or after[0].op != "DequantizeLinear" or after[0].outputs[0] != ctx.lm.output_name:
        return None
    if any(len(n.inputs) < 2 or n.inputs[1] not in ctx.consts for n in (q, after[0])):
        return None
    (scale, zp), (scale2, zp2) = linear_quant_params(ctx, q), linear_quant_params(ctx, after[0])
    if any(np.size(a) != 1 for a in (scale, zp, scale2, zp2)) or zp.dtype.kind not in "iu" or zp.dtype != zp2.dtype:
        return None
    s = float(scale.ravel()[0])
    if s != float(scale2.ravel()[0]) or int(zp) != int(zp2) or not s > 0:
        return None
    info = np.iinfo(zp.dtype)
    if 1 / s + abs(int(zp)) >= ir.QUANT_ROUND_LIMIT:
        return None
    return (s, int(zp), int(info.min), int(info.max))


def _softmax(ctx, node, axis, log: bool):
    out = node.outputs[0]
    grid = None if log else _output_grid(ctx, node)
    readers = ctx.consumers.get(out, [])
    if len(readers) == 1 and readers[0].op == "QuantizeLinear" and readers[0].outputs[0] == ctx.lm.output_name:
        raise BnncError(f"{where(node)}: the model output is its probabilities as the integers of QuantizeLinear "
                        f"'{readers[0].name}'; bnnc outputs real values: end the model with the DequantizeLinear "
                        "(then the quantizer is computed exactly)")
    if out != ctx.lm.output_name and grid is None and any(u.op not in ("ArgMax", "TopK") for u in readers):
        raise BnncError(f"{where(node)}: {node.op} inside the network is not supported; bnnc computes it on the "
                        "model output (the last layer's logits, or their QuantizeLinear -> DequantizeLinear)")
    v = ctx.val(node)
    if isinstance(v, (IntsVal, IntChainVal)) and v.flat_from is None:
        v = identity_conv(ctx, node, v)  # a fixed-point tensor reaches real values as the model output does
    if isinstance(v, AccVal):
        v = ctx.finish_acc(v, None, node)
    if not isinstance(v, RealsVal):
        raise BnncError(f"{where(node)} must follow the last (real-valued) layer, not a {v.kind} value")
    opset = ctx.lm.opset or 13
    rank = len(v.shape)
    if axis is None:
        axis = -1 if opset >= 13 else 1
    if not -rank <= axis < rank:
        raise BnncError(f"{where(node)}: axis {axis} of a rank-{rank} tensor")
    ax = axis % rank
    reduced = range(ax, rank) if opset < 13 else (ax,)
    c = ctx.graph.tensors[v.tensor].shape[2]
    if rank not in (2, 4) or [i for i in reduced if v.shape[i] != 1] != [1] or v.shape[1] != c:
        raise BnncError(f"{where(node)}: {node.op} over axis {axis} of shape {v.shape} (opset {opset}); bnnc "
                        "computes it over the channel axis of (N, C) logits or of each pixel of (N, C, H, W)")
    name = ctx.new_name("logsoftmax" if log else "softmax")
    tname = name + "_out"
    ctx.graph.add(ir.Softmax(name, [v.tensor], [tname], [node.name], log=log, out_grid=grid),
                  {tname: ir.Reals(ctx.graph.tensors[v.tensor].shape)})
    ctx.set(node, RealsVal(v.shape, [node.name], tensor=tname))
    if grid is not None:  # the QuantizeLinear and DequantizeLinear after it: in the op (out_grid)
        ctx.gridded_outputs.add(node.outputs[0])
