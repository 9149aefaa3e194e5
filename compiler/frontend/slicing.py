"""Slice of an activation: every k-th row / column from the first, the x[:, :, ::2, ::2] of ResNet
"option A" downsampling shortcuts (IR-Net and other CIFAR ResNets), as a MaxPool of one tap with
stride k (the max of one value is that value: exact on bits and integers). A Split that reaches the
lowering is refused: its one supported form, a grouped convolution, is one Conv by then
(canonical/grouped_conv.py)."""

from __future__ import annotations

import numpy as np

from ..errors import BnncError
from .pooling import no_pending_ops
from .registry import handler, where
from .streams import to_stream
from .values import AccVal, BitsVal, IntsVal


def _ints(ctx, node, i: int, what: str, default=None):
    if len(node.inputs) <= i or not node.inputs[i]:
        return default
    return [int(x) for x in np.asarray(ctx.const(node, i, what)).reshape(-1)]


@handler("Slice", listed_as="Slice (every k-th row / column of an activation)")
def slice_(ctx, node, *, starts=None, ends=None, axes=None):
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
    if rank != 4 or not len(starts) == len(ends) == len(axes) == len(steps):
        raise BnncError(f"{where(node)}: bnnc supports Slice of an NCHW activation (shape {v.shape}, axes {axes})")
    stride = [1, 1]
    for ax, s, e, k in zip(axes, starts, ends, steps):
        dim = v.shape[ax]
        s, e = (min(max(x + dim if x < 0 else x, 0), dim) for x in (s, e))
        keep = range(s, e, k) if k > 0 else None
        if keep is not None and list(keep) == list(range(dim)):
            continue  # the whole axis
        if ax < 2 or keep is None or s != 0 or len(keep) != -(-dim // k):
            raise BnncError(f"{where(node)}: bnnc supports Slice of the spatial axes that keeps every k-th row or "
                            f"column from the first (x[:, :, ::k, ::k]); here axis {ax} keeps "
                            f"{'a reversed range' if keep is None else f'{s}:{e}:{k}'} of {dim}")
        stride[ax - 2] = k
    if stride == [1, 1]:
        ctx.set(node, v)
        return
    v = no_pending_ops(ctx, node, v)
    if isinstance(v, AccVal):  # a layer output before its activation: its fixed-point stream
        v = to_stream(ctx, node, v)
    if not isinstance(v, (BitsVal, IntsVal)) or v.flat_from is not None:
        raise BnncError(f"{where(node)}: Slice of a {v.kind} tensor is not supported (bits and fixed-point "
                        "streams are)")
    h, w = v.shape[2:]
    oh, ow = -(-h // stride[0]), -(-w // stride[1])
    ctx.set(node, ctx.emit_maxpool(((1, 1), tuple(stride), (0, 0, 0, 0), (oh, ow), node.name), v))


@handler("Split", listed_as="Split (of the channels, as a grouped Conv)")
def split(ctx, node, *, axis=0, split=None, num_outputs=None):
    # the grouped-convolution form became one Conv in the canonical stage; what reaches here is not it
    raise BnncError(f"{where(node)}: bnnc supports Split of an activation only as a grouped convolution: the "
                    "channels split in equal parts, each part read by one Conv (all of the same kernel, strides, "
                    "pads, dilations and output channels, constant weights), their outputs concatenated on the "
                    "channels in part order and read only there")
