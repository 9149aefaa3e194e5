"""Slice and Split of an activation. Every k-th row / column from the first, the x[:, :, ::2, ::2]
of ResNet "option A" downsampling shortcuts (IR-Net and other CIFAR ResNets), is a MaxPool of one
tap with stride k (the max of one value is that value: exact on bits and integers); other slices
of the channels, rows or columns, and the parts of a Split of the channels, are ir.Gather ops (a
U-Net's cropped skip connection, ShuffleNet's channel split). A grouped convolution's Split is one
Conv by then (canonical/grouped_conv.py)."""

from __future__ import annotations

import numpy as np

from .. import ir
from ..errors import BnncError
from .pooling import no_pending_ops
from .registry import handler, where
from .streams import input_stream, to_stream
from .values import AccVal, BitsVal, InputVal, IntsVal, Val


def _ints(ctx, node, i: int, what: str, default=None):
    if len(node.inputs) <= i or not node.inputs[i]:
        return default
    return [int(x) for x in np.asarray(ctx.const(node, i, what)).reshape(-1)]


@handler("Slice", listed_as="Slice (of an activation's channels, rows or columns)")
def slice_(ctx, node, *, starts=None, ends=None, axes=None):
    """Slice of an activation. Every k-th row / column from the first (x[:, :, ::2, ::2]) is a
    MaxPool of one tap with stride k; any other slice of the channels, rows or columns (steps of
    either sign) an ir.Gather of the kept ones."""
    v = ctx.val(node)
    if len(node.inputs) > 1:  # opset >= 10: starts, ends, axes and steps are inputs
        starts, ends = _ints(ctx, node, 1, "starts"), _ints(ctx, node, 2, "ends")
        axes, steps = _ints(ctx, node, 3, "axes", axes), _ints(ctx, node, 4, "steps")
    else:
        steps = None
    starts, ends = [int(x) for x in starts], [int(x) for x in ends]
    rank = len(v.shape)
    axes = [int(a) + rank if int(a) < 0 else int(a) for a in (axes if axes is not None else range(len(starts)))]
    steps = [int(s) for s in steps] if steps is not None else [1] * len(axes)
    if rank != 4 or not len(starts) == len(ends) == len(axes) == len(steps) or 0 in steps:
        raise BnncError(f"{where(node)}: bnnc supports Slice of an NCHW activation with nonzero steps (shape "
                        f"{v.shape}, axes {axes}, steps {steps})")
    keep = [range(d) for d in v.shape]
    for ax, s, e, k in zip(axes, starts, ends, steps):
        keep[ax] = _kept(v.shape[ax], s, e, k)
        if ax == 0 and list(keep[0]) != [0]:
            raise BnncError(f"{where(node)}: Slice of the batch axis is not supported")
        if not keep[ax]:
            raise BnncError(f"{where(node)}: Slice keeps nothing of axis {ax} ({s}:{e}:{k} of {v.shape[ax]})")
    if all(list(keep[i]) == list(range(v.shape[i])) for i in range(4)):
        ctx.set(node, v)
        return
    v = moved_operand(ctx, node, v)
    strided = [keep[i].start == 0 and keep[i].step > 0 and len(keep[i]) == -(-v.shape[i] // keep[i].step)
               for i in (2, 3)]
    if list(keep[1]) == list(range(v.shape[1])) and all(strided):
        stride = (keep[2].step, keep[3].step)
        params = ((1, 1), stride, (0, 0, 0, 0), (len(keep[2]), len(keep[3])), node.name)
        ctx.set(node, ctx.emit_maxpool(params, v))
        return
    ctx.set(node, gather(ctx, node, v, keep[2], keep[3], keep[1]))


@handler("Split", listed_as="Split (of an activation's channels)")
def split(ctx, node, *, axis=0, split=None, num_outputs=None):
    """Split of an activation's channels: one ir.Gather per part. (A grouped convolution's Split
    became one Conv in the canonical stage, canonical/grouped_conv.py.)"""
    v = ctx.val(node)
    rank = len(v.shape)
    axis = axis + rank if axis < 0 else axis
    if len(node.inputs) > 1 and node.inputs[1]:
        split = _ints(ctx, node, 1, "split")
    c = v.shape[axis] if 0 <= axis < rank else 0
    n = len(node.outputs)
    if split is None:  # equal parts, the last one smaller (opset 18's num_outputs)
        part = -(-c // n)
        split = [min(part, c - i * part) for i in range(n)]
    split = [int(x) for x in split]
    if rank != 4 or axis != 1 or len(split) != n or sum(split) != c or min(split) < 1:
        raise BnncError(f"{where(node)}: bnnc supports Split of an NCHW activation's channels (axis 1) into parts "
                        f"of at least one channel; here axis {axis} of shape {v.shape} into {split}")
    v = moved_operand(ctx, node, v)
    h, w = v.shape[2:]
    for i, first in enumerate(np.cumsum([0] + split[:-1])):
        ctx.set(node, gather(ctx, node, v, range(h), range(w), range(int(first), int(first) + split[i])), i)


@handler("Gather", listed_as="Gather (of an activation's channels, rows or columns, constant indices)")
def gather_(ctx, node, *, axis=0):
    """x[:, idx] and index_select of an activation's channels (or rows, columns) by constant indices
    (a 1-D list, negative ones from the end): an ir.Gather."""
    v = ctx.val(node)
    rank = len(v.shape)
    axis = axis + rank if axis < 0 else axis
    idx = ctx.consts.get(node.inputs[1]) if len(node.inputs) > 1 else None
    if rank != 4 or axis not in (1, 2, 3) or idx is None or np.ndim(idx) != 1 or np.size(idx) == 0 \
            or np.asarray(idx).dtype.kind not in "iu":
        raise BnncError(f"{where(node)}: bnnc supports Gather of an NCHW activation's channels, rows or columns by "
                        f"a constant list of indices (here axis {axis} of shape {v.shape})")
    dim = v.shape[axis]
    picked = [int(i) + dim if int(i) < 0 else int(i) for i in np.asarray(idx)]
    if not all(0 <= i < dim for i in picked):
        raise BnncError(f"{where(node)}: indices {picked[:8]} beyond axis {axis} of size {dim}")
    v = moved_operand(ctx, node, v)
    keep = [range(d) for d in v.shape]
    keep[axis] = picked
    ctx.set(node, gather(ctx, node, v, keep[2], keep[3], keep[1]))


def moved_operand(ctx, node, v) -> Val:
    """The bit or integer activation an op that moves values reads (a real-valued one as its
    fixed-point stream, its pending ops applied)."""
    v = no_pending_ops(ctx, node, v)
    if isinstance(v, InputVal):  # the model input: the integers layers read, on a grid of their own
        v = input_stream(ctx, node, v)
    if isinstance(v, AccVal):  # a layer output before its activation: its fixed-point stream
        v = no_pending_ops(ctx, node, to_stream(ctx, node, v))
    if not isinstance(v, (BitsVal, IntsVal)) or v.flat_from is not None:
        raise BnncError(f"{where(node)}: {node.op} of a {v.kind} tensor is not supported (bits and fixed-point "
                        "streams are)")
    return v


def gather(ctx, node, v, rows, cols, channels) -> Val:
    """The rows, columns and channels of the bit or integer activation `v` that these index lists
    (ranges) keep, in their order: an ir.Gather (its channel table left out where all are kept in
    order)."""
    ty = ctx.graph.tensors[v.tensor]
    name = ctx.new_name("gather")
    tname = name + "_out"
    shape = (len(rows), len(cols), len(channels))
    oty = ir.Bits(shape, ty.scale) if isinstance(ty, ir.Bits) else ir.Ints(shape, ty.lo, ty.hi, ty.scale)
    order = None if list(channels) == list(range(ty.shape[2])) else tuple(int(c) for c in channels)
    ctx.graph.add(ir.Gather(name, [v.tensor], [tname], tuple(int(r) for r in rows), tuple(int(x) for x in cols),
                            order, [node.name]), {tname: oty})
    return type(v)((1, len(channels), len(rows), len(cols)), [node.name], tensor=tname, scale=v.scale)


def _kept(dim: int, start: int, end: int, step: int) -> range:
    """The indices ONNX Slice keeps of an axis of `dim` (negative starts and ends count from the
    end, then are clamped: to [0, dim] for a positive step, to [0, dim - 1] and [-1, dim - 1] for
    a negative one)."""
    start, end = (x + dim if x < 0 else x for x in (start, end))
    if step > 0:
        return range(min(max(start, 0), dim), min(max(end, 0), dim), step)
    return range(min(max(start, 0), dim - 1), min(max(end, -1), dim - 1), step)
