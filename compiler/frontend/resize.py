"""Ops that move pixels without changing them: ONNX Resize (opset 10 on) and Upsample (opsets 7-9)
in nearest mode, and Pad in reflect / edge / wrap mode (frontend/padding.py), of a bit or integer
tensor, as ir.Gather with the input row and column of every output pixel; DepthToSpace
(PyTorch's PixelShuffle, either mode) and SpaceToDepth, whose moves mix channels and pixels, as
ir.Gather with the input element of every output element. The tables come from running the node
itself in onnxruntime on a tensor of pixel (element) indices, so every coordinate mode, rounding
mode, scale, size, pad, block size and channel order is taken exactly as the runtime takes it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .. import ir
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


@handler("DepthToSpace", listed_as="DepthToSpace / SpaceToDepth (PixelShuffle, of activations)",
         ignores=("blocksize", "mode"))  # (onnxruntime reads them: moved_elements)
def depth_to_space(ctx, node):
    ctx.set(node, moved_elements(ctx, node))


@handler("SpaceToDepth", listed_as=(), ignores=("blocksize",))
def space_to_depth(ctx, node):
    ctx.set(node, moved_elements(ctx, node))


def moved_elements(ctx, node):
    """The node's output where it moves the elements of a bit or integer activation (a real-valued
    one as its fixed-point stream) between pixels and channels without changing them: an ir.Gather
    with the input element (storage order) of each output element, read off the node run in
    onnxruntime on a tensor whose every value is its element's index (y * W + x) * C + c."""
    v = moved_operand(ctx, node, ctx.val(node))
    if len(v.shape) != 4 or v.shape[0] != 1:
        raise BnncError(f"{where(node)}: {node.op} of a tensor of shape {v.shape} is not supported (of (1, C, H, W) "
                        "activations it is)")
    _, c, h, w = v.shape
    if c * h * w >= 2**24:
        raise BnncError(f"{where(node)}: a {c}x{h}x{w} map is too large to move")
    index = np.arange(h * w * c, dtype=np.float32).reshape(1, h, w, c).transpose(0, 3, 1, 2)
    out = run_alone(ctx, node, np.ascontiguousarray(index))
    if out.ndim != 4 or out.shape[0] != 1 or out.size != index.size:
        raise BnncError(f"{where(node)}: {node.op} from {v.shape} to {out.shape}; bnnc moves the elements of one map")
    moved = out[0].transpose(1, 2, 0).astype(np.int64)  # (H', W', C'): storage order
    ty = ctx.graph.tensors[v.tensor]
    name = ctx.new_name("gather")
    tname = name + "_out"
    ctx.graph.add(ir.Gather(name, [v.tensor], [tname], source_ops=[node.name], index=moved),
                  {tname: replace(ty, shape=moved.shape)})
    return type(v)(tuple(out.shape), [node.name], tensor=tname, scale=v.scale)


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
