"""Pad with a constant (reflect, edge and wrap pads move pixels: frontend/resize.py). Zero pads of
the spatial axes merge into the following window op in the canonical stage
(canonical/pad_into_window.py); what reaches the frontend is larq's padding of
binary activations with +1 (or -1) before a valid convolution, a pending `PaddedBitsVal` that the
convolution takes in exactly (frontend/linear.py), and zero channels added to an activation (the
downsampling shortcuts of ResNet "option A": F.pad(x, (0, 0, 0, 0, p, p))), an identity
convolution with zero output channels (linear.identity_conv)."""

from __future__ import annotations

import numpy as np

from ..errors import BnncError
from .linear import identity_conv
from .registry import handler, where
from .resize import moved_pixels
from .streams import to_stream
from .values import AccVal, BitsVal, InputVal, PaddedBitsVal


@handler("Pad", ignores=("paddings",))
def pad(ctx, node, *, mode="constant", pads=None, value=0.0):
    v = ctx.val(node)
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    if mode in ("reflect", "edge", "wrap"):  # border pixels copied: values moved, not changed
        ctx.set(node, moved_pixels(ctx, node))
        return
    if mode != "constant":
        raise BnncError(f"{where(node)}: Pad mode '{mode}' is not supported (constant, reflect, edge and wrap are)")
    if len(node.inputs) > 1 and node.inputs[1]:  # opset >= 11: pads and the value are inputs
        pads = ctx.const(node, 1, "pads")
        value = ctx.const(node, 2, "constant value") if len(node.inputs) > 2 and node.inputs[2] else 0.0
        if len(node.inputs) > 3 and node.inputs[3]:  # opset >= 18: pads of the listed axes only
            rank = len(v.shape)
            axes = [int(a) + rank if int(a) < 0 else int(a) for a in np.asarray(ctx.const(node, 3, "axes")).reshape(-1)]
            given = [int(x) for x in np.asarray(pads).reshape(-1)]
            if len(given) != 2 * len(axes) or len(set(axes)) != len(axes) or not all(0 <= a < rank for a in axes):
                raise BnncError(f"{where(node)}: pads {given} do not match axes {axes} of a rank-{rank} tensor")
            full = [0] * (2 * rank)
            for i, a in enumerate(axes):
                full[a], full[rank + a] = given[i], given[len(axes) + i]
            pads = full
    p = [int(x) for x in np.asarray(pads if pads is not None else [], np.int64).reshape(-1)]
    value = float(np.asarray(value, np.float64).reshape(-1)[0]) if np.size(value) else 0.0
    if len(v.shape) == 4 and len(p) == 8 and value == 0 and min(p) >= 0 and not any(p[i] for i in (0, 2, 3, 4, 6, 7)) \
            and not isinstance(v, InputVal):
        if isinstance(v, AccVal):  # a layer output before its activation: its fixed-point stream
            v = to_stream(ctx, node, v)
        if v.flat_from is not None:
            raise BnncError(f"{where(node)}: Pad of the channels of a flattened tensor is not "
                            "supported")
        ctx.set(node, identity_conv(ctx, node, v, p[1], p[5]))
        return
    if len(v.shape) != 4 or len(p) != 8 or p[0] or p[1] or p[4] or p[5] or min(p) < 0:
        raise BnncError(f"{where(node)}: bnnc supports Pad of the two spatial axes of an NCHW tensor by "
                        f"non-negative amounts, or of its channels with zeros (got pads {p} on a tensor of "
                        f"shape {v.shape})")
    if not isinstance(v, BitsVal) or value not in (v.scale, -v.scale):
        raise BnncError(f"{where(node)}: Pad with the value {value:g} of a {v.kind} tensor is not supported; "
                        "zero padding merges into the next convolution or pool, and binary activations "
                        "can be padded with +-their scale")
    if v.flat_from is not None:
        raise BnncError(f"{where(node)}: Pad of a flattened tensor is not supported")
    n, c, h, w = v.shape
    padded = (n, c, h + p[2] + p[6], w + p[3] + p[7])
    ctx.set(node, PaddedBitsVal(padded, list(v.source_ops), tensor=v.tensor, scale=v.scale,
                                pads=(p[2], p[3], p[6], p[7]), value=1 if value > 0 else -1))
