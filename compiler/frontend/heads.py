"""Classifier heads: TopK / ArgMax of the last (real-valued) layer become an ir.ArgMax, Softmax
and LogSoftmax an ir.Softmax (float32 probabilities or their logarithms, arith.softmax /
arith.log_softmax)."""

from __future__ import annotations

import numpy as np

from .. import ir
from ..errors import BnncError
from ..onnx_loader import int_range
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


_GRID_FORMS = (("QuantizeLinear",), ("QuantizeLinear", "DequantizeLinear"),
               ("QuantizeLinear", "DequantizeLinear", "QuantizeLinear"),
               ("QuantizeLinear", "DequantizeLinear", "QuantizeLinear", "DequantizeLinear"))


def _output_grid(ctx, node):
    """(grid, integers, requant) where the Softmax's values reach the model output through one
    reader after another, all QuantizeLinear / DequantizeLinear of one per-tensor scale, in one of
    _GRID_FORMS: grid = (scale, zero point, qmin, qmax) of the first QuantizeLinear (a full-integer
    TFLite classifier); integers: the output is a QuantizeLinear's integers (an int8 / uint8
    output), else the DequantizeLinear's reals; requant = (zero point, qmin, qmax) of a second
    QuantizeLinear (TFLite's int8 -> uint8 output requantization), else None. None otherwise."""
    chain, t = [], node.outputs[0]
    while t != ctx.lm.output_name:
        readers = ctx.consumers.get(t, [])
        if len(readers) != 1 or len(chain) == 4 or readers[0].op not in ("QuantizeLinear", "DequantizeLinear") \
                or len(readers[0].inputs) < 2 or readers[0].inputs[1] not in ctx.consts:
            return None
        chain.append(readers[0])
        t = readers[0].outputs[0]
    if tuple(n.op for n in chain) not in _GRID_FORMS:
        return None
    params = [linear_quant_params(ctx, n) for n in chain]
    if any(np.size(a) != 1 or a.dtype.kind not in "iuf" for sz in params for a in sz) \
            or any(zp.dtype.kind not in "iu" for _, zp in params):
        return None
    s = float(params[0][0].ravel()[0])
    zps = [int(zp.ravel()[0]) for _, zp in params]
    if any(float(sc.ravel()[0]) != s for sc, _ in params) or not s > 0 \
            or 1 / s + max(map(abs, zps)) >= ir.QUANT_ROUND_LIMIT:
        return None
    if len(chain) > 1 and (zps[1] != zps[0] or params[1][1].dtype != params[0][1].dtype):
        return None  # a DequantizeLinear that is not its QuantizeLinear's
    if len(chain) > 3 and (zps[3] != zps[2] or params[3][1].dtype != params[2][1].dtype):
        return None
    grid = (s, zps[0], *int_range(params[0][1].dtype))
    requant = (zps[2], *int_range(params[2][1].dtype)) if len(chain) > 2 else None
    return grid, chain[-1].op == "QuantizeLinear", requant


def _softmax(ctx, node, axis, log: bool):
    out = node.outputs[0]
    grid, integers, requant = (None if log else _output_grid(ctx, node)) or (None, False, None)
    readers = ctx.consumers.get(out, [])
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
    shape = ctx.graph.tensors[v.tensor].shape
    lo, hi = (requant or grid or (0, 0, 0, 0))[-2:]
    ctx.graph.add(ir.Softmax(name, [v.tensor], [tname], [node.name], log=log, out_grid=grid, requant=requant),
                  {tname: ir.Ints(shape, lo, hi, 1.0) if integers else ir.Reals(shape)})
    ctx.set(node, (IntsVal if integers else RealsVal)(v.shape, [node.name], tensor=tname))
    if grid is not None:  # the QuantizeLinear and DequantizeLinear after it: in the op (out_grid)
        ctx.gridded_outputs.add(node.outputs[0])
