"""Ops that move pixels without changing them: ONNX Resize (opset 10 on) and Upsample (opsets 7-9)
in nearest mode, and Pad in reflect / edge / wrap mode (frontend/padding.py), of a bit or integer
tensor, as ir.Gather with the input row and column of every output pixel. The tables come from
running the node itself in onnxruntime on a tensor of pixel indices, so every coordinate mode,
rounding mode, scale, size and pad is taken exactly as the runtime takes it."""

from __future__ import annotations

import numpy as np

from ..errors import BnncError
from .probe import run_alone
from .registry import handler, where
from .slicing import gather, moved_operand


@handler("Resize", listed_as="Resize / Upsample (nearest, of activations)",
         ignores=("antialias", "axes", "coordinate_transformation_mode", "cubic_coeff_a", "exclude_outside",
                  "extrapolation_value", "keep_aspect_ratio_policy", "nearest_mode"))
def resize(ctx, node, *, mode="nearest"):
    _nearest(ctx, node, mode)


@handler("Upsample", listed_as=(), ignores=("scales",))
def upsample(ctx, node, *, mode="nearest"):
    _nearest(ctx, node, mode)


def _nearest(ctx, node, mode: str) -> None:
    """The node's nearest-neighbour resize (`moved_pixels`); interpolating modes are refused."""
    if mode != "nearest":
        raise BnncError(f"{where(node)}: {node.op} mode '{mode}' interpolates between pixels, which is not supported; "
                        "mode 'nearest' is")
    ctx.set(node, moved_pixels(ctx, node))


def moved_pixels(ctx, node):
    """The node's output where it moves the pixels of a bit or integer activation (a real-valued one
    as its fixed-point stream) without changing them: an ir.Gather (see `_index_tables`)."""
    v = moved_operand(ctx, node, ctx.val(node))
    if len(v.shape) != 4:
        raise BnncError(f"{where(node)}: {node.op} of a tensor of shape {v.shape} is not supported (of (N, C, H, W) "
                        "activations it is)")
    rows, cols = _index_tables(ctx, node, v.shape)
    return gather(ctx, node, v, rows, cols, range(v.shape[1]))


def _index_tables(ctx, node, shape: tuple) -> tuple:
    """(rows, cols): the input row and column of each output pixel, read off the node run in
    onnxruntime (with its attributes and constant inputs) on a tensor whose every value is its
    pixel's index y * W + x. Refused where the batch or channel axis is resized or the pixels do
    not come row by row and column by column."""
    n, c, h, w = shape
    if h * w >= 2**24:
        raise BnncError(f"{where(node)}: a {h}x{w} map is too large to resize")
    index = np.broadcast_to(np.arange(h * w, dtype=np.float32).reshape(1, 1, h, w), shape)
    out = run_alone(ctx, node, index)
    if out.ndim != 4 or out.shape[:2] != (n, c) or 0 in out.shape:
        raise BnncError(f"{where(node)}: {node.op} from {shape} to {out.shape}; bnnc moves pixels along H and W only")
    rows, cols = out[0, 0, :, 0] // w, out[0, 0, 0, :] % w
    want = (rows[:, None] * w + cols[None, :]).astype(np.float32)
    if not np.array_equal(out, np.broadcast_to(want, out.shape)):
        raise BnncError(f"{where(node)}: {node.op} does not take its pixels row by row and column by column")
    return tuple(int(r) for r in rows), tuple(int(x) for x in cols)
