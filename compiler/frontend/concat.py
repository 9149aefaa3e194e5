"""Concat of activations along the channel axis (SqueezeNet's Fire modules, DenseNet / ReActNet
blocks): an ir.Concat of bit tensors, or of fixed-point streams put on one grid."""

from __future__ import annotations

from fractions import Fraction

from .. import ir
from ..errors import BnncError
from .registry import handler, where
from .streams import input_stream, log2_exact, on_related_grids, stream_of_intchain, to_stream
from .values import AccVal, BitsVal, InputVal, IntChainVal, IntsVal


@handler("Concat", listed_as="Concat (of activations, on the channel axis)")
def concat(ctx, node, *, axis=None):
    """Channel Concat: inputs of the same H x W, all binary (one scale) or all integer / fixed
    point; real-valued layer outputs and the model input first become fixed-point streams. Streams whose
    scales differ by a power of two go to the finer grid, exactly (as a residual Add); others to
    power-of-two grids first (streams.on_related_grids)."""
    if axis is None:
        raise BnncError(f"{where(node)}: Concat without an axis")
    if any(t not in ctx.vals for t in node.inputs):
        raise BnncError(f"{where(node)}: Concat of an activation with a constant is not supported")
    vals = []
    for i, t in enumerate(node.inputs):
        v = ctx.val(node, i)
        if isinstance(v, AccVal):
            v = to_stream(ctx, node, v)
        if isinstance(v, InputVal):
            v = input_stream(ctx, node, v)
        if isinstance(v, IntChainVal):
            v = stream_of_intchain(ctx, node, v)
        ctx.vals[t] = v  # a tensor read twice (or again later) is converted once
        vals.append(v)
    shape = vals[0].shape
    ax = axis % len(shape) if len(shape) else 0
    if len(shape) not in (2, 4) or ax != 1:
        raise BnncError(f"{where(node)}: Concat along axis {axis} of a rank-{len(shape)} tensor; bnnc concatenates "
                        "the channel axis (axis 1) of NCHW activations or (N, C) vectors")
    for v in vals:
        if not isinstance(v, (BitsVal, IntsVal)):
            raise BnncError(f"{where(node)}: Concat of a {v.kind} value is not supported (of binary activations "
                            "and fixed-point streams it is)")
        if v.flat_from is not None:
            raise BnncError(f"{where(node)}: Concat of a flattened tensor is not supported")
        if len(v.shape) != len(shape) or v.shape[2:] != shape[2:]:
            raise BnncError(f"{where(node)}: Concat of shapes {[v.shape for v in vals]} (the spatial sizes differ)")
    if len({type(v) for v in vals}) != 1:
        raise BnncError(f"{where(node)}: Concat of binary activations with integer / fixed-point tensors is not "
                        "supported; quantize the branches alike")
    if len(vals) == 1:
        ctx.set(node, vals[0])
        return
    types = [ctx.graph.tensors[v.tensor] for v in vals]
    h, w = types[0].shape[:2]
    channels = sum(ty.shape[2] for ty in types)
    name = ctx.new_name("concat")
    tname = name + "_out"
    if isinstance(vals[0], BitsVal):
        if len({v.scale for v in vals}) != 1:
            raise BnncError(f"{where(node)}: Concat of binary activations with different scales "
                            f"({', '.join(f'{v.scale:g}' for v in vals)}); a bit tensor has one scale")
        shifts, oty = (), ir.Bits((h, w, channels), types[0].scale)
        out = BitsVal
    else:
        vals = on_related_grids(ctx, node, vals)
        types = [ctx.graph.tensors[v.tensor] for v in vals]
        finest = min(Fraction(v.scale) for v in vals)
        shifts = tuple(log2_exact(Fraction(v.scale) / finest) for v in vals)
        oty = ir.Ints((h, w, channels), min(ty.lo << k for ty, k in zip(types, shifts)),
                      max(ty.hi << k for ty, k in zip(types, shifts)), float(finest))
        out = IntsVal
    ctx.graph.add(ir.Concat(name, [v.tensor for v in vals], [tname], shifts, [node.name]), {tname: oty})
    ctx.set(node, out((1, channels) + tuple(shape[2:]), [node.name], tensor=tname, scale=oty.scale))
