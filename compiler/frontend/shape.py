"""Ops that only rename or reshape a value: Reshape, Flatten, Squeeze, Unsqueeze, Transpose (of
unit axes), Shape (of a static shape), Identity, Dropout, Cast (to float32, where it is exact)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from onnx import TensorProto

from .. import ir
from ..errors import BnncError
from .registry import handler, where
from .streams import stream_of_intchain, to_stream
from .values import AccVal, BitsVal, InputVal, IntChainVal, IntsVal, TensorVal, Val


@handler("Shape", listed_as="Shape/Gather/Concat (on static shapes)")
def shape(ctx, node, *, start=0, end=None):
    v = ctx.val(node)
    ctx.consts[node.outputs[0]] = np.array(v.shape, dtype=np.int64)[start:end]


@handler("Identity")
def identity(ctx, node):
    ctx.set(node, ctx.val(node))


@handler("Dropout", ignores=("ratio", "seed", "is_test", "consumed_inputs"))
def dropout(ctx, node):
    identity(ctx, node)


@handler("Cast", listed_as="Cast (to float32: of the integer model input, of float tensors)",
         ignores=("saturate",))
def cast(ctx, node, *, to=None):
    """Cast to float32 renames a value: a float32 tensor stays what it is, and the integer model
    input (an ONNX uint8 / int8 / int16 ... input, which the compiled code takes as it is) becomes
    float32 exactly while its declared range lies within +-2^24."""
    v = ctx.val(node)
    if to != TensorProto.FLOAT:
        name = TensorProto.DataType.Name(to) if to in TensorProto.DataType.values() else str(to)
        raise BnncError(f"{where(node)}: Cast to {name} of an activation is not supported (Cast to FLOAT of the "
                        "integer model input or of a float tensor is)")
    if ctx.integer_input(v):
        lo, hi = ctx.grid["range"]
        if max(-lo, hi) > 2**24:
            raise BnncError(f"{where(node)}: Cast to FLOAT of the {ctx.lm.input_dtype} model input with range "
                            f"[{lo}, {hi}] rounds values beyond 2^24; declare a narrower --input-range")
    ctx.set(node, v)


@handler("Reshape", ignores=("consumed_inputs",))
def reshape(ctx, node, *, allowzero=0):
    v = ctx.val(node)
    shape = [int(s) for s in ctx.const(node, 1, "shape")]
    shape = [v.shape[i] if (s == 0 and not allowzero) else s for i, s in enumerate(shape)]
    if -1 in shape:
        known = int(np.prod([s for s in shape if s != -1]))
        shape[shape.index(-1)] = int(np.prod(v.shape)) // max(known, 1)
    reshape_to(ctx, node, v, tuple(shape))


@handler("Flatten")
def flatten(ctx, node, *, axis=1):
    v = ctx.val(node)
    ax = axis % len(v.shape) if axis < 0 else axis
    reshape_to(ctx, node, v, (int(np.prod(v.shape[:ax])), int(np.prod(v.shape[ax:]))))


@handler("Squeeze")
def squeeze(ctx, node, *, axes=None):
    v = ctx.val(node)
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        axes = [int(a) for a in ctx.const(node, 1, "axes")]
    if axes is None:
        axes = [i for i, s in enumerate(v.shape) if s == 1 and i > 0]
    axes = [a % len(v.shape) for a in axes]
    reshape_to(ctx, node, v, tuple(s for i, s in enumerate(v.shape) if i not in axes))


@handler("Unsqueeze")
def unsqueeze(ctx, node, *, axes=None):
    v = ctx.val(node)
    if axes is None:
        axes = [int(a) for a in ctx.const(node, 1, "axes")]
    shape = list(v.shape)
    n = len(shape) + len(axes)
    for a in sorted(a % n for a in axes):
        shape.insert(a, 1)
    reshape_to(ctx, node, v, tuple(shape))


@handler("Transpose", listed_as="Transpose (of constants, of unit axes, of an NHWC model input)")
def transpose(ctx, node, *, perm=None):
    v = ctx.val(node)
    if getattr(v, "pending_map", False):  # Keras's Reshape to (N, H, W, C), then tf2onnx's Transpose to NCHW
        ctx.set(node, place_map(ctx, node, v, channels_last=True))
        return
    perm = perm if perm is not None else list(reversed(range(len(v.shape))))
    moved = [v.shape[p] for i, p in enumerate(perm) if p != i]
    if _nhwc_input_as_nchw(ctx, v, tuple(v.shape[p] for p in perm)):
        # an NHWC model input seen as NCHW: the compiled code reads it in its own (channel-last) order
        ctx.set(node, replace(v, shape=tuple(v.shape[p] for p in perm), channels_last=True))
        return
    if all(s == 1 for s in moved):
        reshape_to(ctx, node, v, tuple(v.shape[p] for p in perm))
        return
    raise BnncError(f"{where(node)}: transposing activations (perm {list(perm)}) is not supported; "
                    "only transposes of constant weights are folded")


def _nhwc_input_as_nchw(ctx, v: Val, new_shape: tuple) -> bool:
    """Whether `new_shape` is the model's 4-D input, as the ONNX input declares it, transposed
    from NHWC to NCHW (tf2onnx writes that Transpose as a Reshape when C = 1); a 1-D (N, L, C)
    input counts as (N, 1, L, C) (canonical/one_d_as_two_d.py)."""
    declared = tuple(ctx.lm.input_shape)
    nhwc = declared if len(declared) == 4 else declared[:1] + (1,) + declared[1:] if len(declared) == 3 else None
    return isinstance(v, InputVal) and len(v.shape) == 4 and not v.channels_last \
        and tuple(v.shape) == nhwc and tuple(new_shape) == tuple(v.shape[p] for p in (0, 3, 1, 2))


def reshape_to(ctx, node, v: Val, new_shape: tuple):
    """`v` with the logical shape `new_shape`: a flatten of an IR tensor, or unit axes added or
    removed."""
    new_shape = tuple(int(s) for s in new_shape)
    if int(np.prod(new_shape)) != int(np.prod(v.shape)):
        raise BnncError(f"{where(node)}: cannot reshape {v.shape} to {new_shape}")
    if new_shape[0] != 1:
        raise BnncError(f"{where(node)}: reshape to {new_shape} moves data into the batch axis")
    flattens = len(v.shape) == 4 and _flat(new_shape) and not _only_unit_dims_changed(v.shape, new_shape)
    if len(new_shape) == 4 and not _flat(new_shape) and _flat(v.shape) and not isinstance(v, InputVal) \
            and getattr(v, "flat_from", None) is None:
        ctx.set(node, _vector_to_map(ctx, node, v, new_shape))
        return
    if isinstance(v, AccVal) and flattens:
        # a layer's real values flattened (Keras's Flatten -> Dense): its fixed-point stream, whose
        # per-channel ops the flatten would mix
        v = to_stream(ctx, node, v)
    if isinstance(v, IntChainVal) and v.flat_from is None:
        v = stream_of_intchain(ctx, node, v)  # the pending ops first, per channel, on a new stream
    nv = replace(v, shape=new_shape)
    if isinstance(v, InputVal):
        if v.shape[3:] == (1,) and _nhwc_input_as_nchw(ctx, v, new_shape):  # the same bytes, read channel-last
            nv.channels_last = True
        ctx.set(node, nv)
        return
    if isinstance(v, (BitsVal, IntsVal)):
        if (v.flat_from is not None or _flat(v.shape)) and _flat(new_shape):
            pass  # already flat: (N, D) <-> (N, D, 1, 1) <-> (N, 1, 1, D) keep the elements' order
        elif len(v.shape) == 4 and (len(new_shape) == 2 or flattens):  # (N, D), or larq's (N, 1, 1, D)
            c, h, w = v.shape[1:]
            nv.flat_from = (c, h, w) if (h * w > 1) else None
        elif len(new_shape) != len(v.shape) or new_shape != v.shape:
            if not _only_unit_dims_changed(v.shape, new_shape):
                raise BnncError(f"{where(node)}: reshape {v.shape} -> {new_shape} is not a flatten")
        ctx.set(node, nv)
        return
    if isinstance(v, AccVal):
        if not _only_unit_dims_changed(v.shape, new_shape):
            raise BnncError(f"{where(node)}: reshape {v.shape} -> {new_shape} of a layer's output "
                            "before its activation is only supported when it adds or removes unit axes")
        ctx.set(node, nv)
        return
    raise BnncError(f"{where(node)}: reshape of a {v.kind} tensor is not supported")


def _vector_to_map(ctx, node, v: Val, new_shape: tuple) -> TensorVal:
    """A layer's output vector (a dense layer's) reshaped to a 4-D shape: its bits or its
    fixed-point stream, the map's layout left to the reader (`place_map`)."""
    if isinstance(v, AccVal):
        v = to_stream(ctx, node, v)
    if isinstance(v, IntChainVal):
        v = stream_of_intchain(ctx, node, v)
    if not isinstance(v, (BitsVal, IntsVal)) or ctx.graph.tensors[v.tensor].shape[:2] != (1, 1):
        raise BnncError(f"{where(node)}: reshape {v.shape} -> {new_shape} of a {v.kind} tensor into a map is not "
                        "supported (of a dense layer's output, binary or real-valued, it is)")
    return replace(v, shape=new_shape, pending_map=True)


def place_map(ctx, node, v: TensorVal, channels_last: bool) -> TensorVal:
    """The vector of a pending map (`_vector_to_map`) as an (H, W, C) IR tensor (ir.Unflatten): read
    as (N, H, W, C) by the Transpose to NCHW after it (Keras's Reshape, in tf2onnx's NHWC graph:
    the vector is in the map's storage order), else as (N, C, H, W) (PyTorch's view: element
    (c, h, w) moves to the map's position (h, w, c))."""
    _, a, b, c = v.shape
    if channels_last:
        (h, w, ch), order, shape = (a, b, c), None, (1, c, a, b)
    else:
        (h, w, ch), shape = (b, c, a), v.shape
        order = np.arange(a * b * c, dtype=np.int64).reshape(a, b, c).transpose(1, 2, 0).reshape(-1)
    src = ctx.graph.tensors[v.tensor]
    name = ctx.new_name("unflatten")
    tname = name + "_out"
    ctx.graph.add(ir.Unflatten(name, [v.tensor], [tname], order), {tname: replace(src, shape=(h, w, ch))})
    return type(v)(shape, v.source_ops + [node.name], tensor=tname, scale=v.scale)


def _flat(shape: tuple) -> bool:
    """Whether `shape` holds its elements along one axis after the batch: (N, D), (N, 1, 1, D), ..."""
    return len(shape) >= 2 and sum(1 for s in shape[1:] if s != 1) <= 1


def _only_unit_dims_changed(a: tuple, b: tuple) -> bool:
    return [s for s in a if s != 1] == [s for s in b if s != 1] and a[:2] == b[:2] if len(a) > 1 and len(b) > 1 \
        else [s for s in a if s != 1] == [s for s in b if s != 1]
