"""Strip constant output channels (pruned filters, gamma = 0, unreachable steps) for real.

A Conv output channel whose Thresholds are constant (value v in {-1, 0, +1}) carries no
information: the channel is removed from the producer (weights, thresholds), from every MaxPool
on the way (max of a constant is that constant; padded taps are ignored) and from a GlobalSumPool
(which turns it into the constant v * H * W), and its contribution is folded into each consuming
Conv's `bias_kernel`:
    bias_kernel[o, ky, kx] += v_c * w[o, ky, kx, c]      for every removed input channel c,
which the IR sums over the *valid* taps of each output position, so the fold stays exact at
zero-padded borders, where the constant channel's contribution is smaller (networks.md section 5).
The accumulator of every consumer, and so every output, is unchanged. For the weight codes of
issue 5 the same holds with the integer weights (`ir.int_weights`): bias_kernel gains
v_c * int_w[o, ky, kx, c], and every array of the code (int_w, each base's masks) loses the
channel. Layers whose output holds activation-base planes are left as they are.
"""

from __future__ import annotations

import numpy as np

from .. import ir
from ..errors import BnncError


def _path_to_convs(graph: ir.Graph, tensor: str):
    """[(pools on the way, consumer Conv)] when every use of `tensor` ends in a Conv, else None."""
    if tensor == graph.output:
        return None
    found = []
    for c in graph.consumers(tensor):
        if isinstance(c, ir.Conv):
            found.append(([], c))
        elif isinstance(c, (ir.MaxPool, ir.GlobalSumPool)):
            rest = _path_to_convs(graph, c.outputs[0])
            if rest is None:
                return None
            found += [([c] + pools, conv) for pools, conv in rest]
        else:
            return None
    return found or None


def strip_pruned_channels(graph: ir.Graph) -> ir.Graph:
    """Remove constant channels and fold their values forward (see module docstring)."""
    out = graph.copy()
    for prod in out.ops():
        if not isinstance(prod, ir.Conv) or not isinstance(prod.epilogue, ir.Thresholds) \
                or prod.epilogue.planes != 1:
            continue
        th = prod.epilogue
        const = th.constant != ir.Thresholds.NOT_CONSTANT
        if not const.any():
            continue
        paths = _path_to_convs(out, prod.outputs[0])
        if paths is None:
            if np.any(th.constant == 0):
                raise BnncError(f"layer '{prod.source_ops[0]}': a channel is constantly 0 (Sign of 0) and its "
                                "output is not consumed by a layer it could be folded into")
            continue
        keep = ~const
        if not keep.any():
            nonzero = np.flatnonzero(th.constant != 0)
            if nonzero.size == 0:
                raise BnncError(f"layer '{prod.source_ops[0]}': every output channel is constantly 0")
            keep[nonzero[0]] = True  # a layer keeps at least one channel
        removed = np.flatnonzero(~keep)
        values = th.constant[removed].astype(np.int64)
        # producer
        _keep_outputs(prod, keep)
        prod.epilogue = ir.Thresholds(th.direction[keep], th.threshold[keep], th.constant[keep], th.out_scale,
                                      th.notes + [f"stripped {removed.size} constant channel(s): "
                                                  f"{_ranges(removed)}"])
        prod.removed_out += int(removed.size)
        _reshape_tensor(out, prod.outputs[0], int(keep.sum()))
        done_pools = set()
        for pools, conv in paths:
            v = values.copy()
            for p in pools:
                if p.name not in done_pools:
                    _reshape_tensor(out, p.outputs[0], int(keep.sum()))
                    done_pools.add(p.name)
                if isinstance(p, ir.GlobalSumPool):
                    h, w, _ = out.tensors[p.inputs[0]].shape
                    v = v * h * w
            _fold_into_consumer(conv, keep, removed, v)
    return out


def _keep_outputs(conv: ir.Conv, keep: np.ndarray) -> None:
    """Drop the output channels (rows) of every array of the conv's weight code."""
    conv.w = conv.w[keep]
    conv.scale_p, conv.scale_n = conv.scale_p[keep], conv.scale_n[keep]
    if conv.bias_kernel is not None:
        conv.bias_kernel = conv.bias_kernel[keep]
    if conv.int_w is not None:
        conv.int_w = conv.int_w[keep]
    if conv.unit is not None:
        conv.unit = conv.unit[keep]
    for b in conv.bases:
        b.w, b.mult_p, b.mult_n = b.w[keep], b.mult_p[keep], b.mult_n[keep]
        b.scale_p = None if b.scale_p is None else b.scale_p[keep]
        b.scale_n = None if b.scale_n is None else b.scale_n[keep]
    if conv.in_lists is not None:
        conv.in_lists = [x for x, k in zip(conv.in_lists, keep) if k]


def _fold_into_consumer(conv: ir.Conv, keep: np.ndarray, removed: np.ndarray, values: np.ndarray) -> None:
    o, kh, kw, c = conv.w.shape
    if c != keep.size:
        raise AssertionError(f"{conv.name}: {c} input channels vs {keep.size}")
    contrib = np.einsum("okhc,c->okh", ir.int_weights(conv)[..., removed].astype(np.int64), values)
    conv.bias_kernel = contrib if conv.bias_kernel is None else conv.bias_kernel + contrib
    conv.w = np.ascontiguousarray(conv.w[..., keep])
    if conv.int_w is not None:
        conv.int_w = np.ascontiguousarray(conv.int_w[..., keep])
    for b in conv.bases:
        b.w = np.ascontiguousarray(b.w[..., keep])
    conv.removed_in += int(removed.size)


def _reshape_tensor(graph: ir.Graph, name: str, channels: int) -> None:
    ty = graph.tensors[name]
    shape = tuple(ty.shape[:2]) + (channels,)
    if isinstance(ty, ir.Bits):
        graph.tensors[name] = ir.Bits(shape, ty.scale)
    else:
        graph.tensors[name] = ir.Ints(shape, ty.lo, ty.hi, ty.scale)


def _ranges(idx: np.ndarray) -> str:
    idx = [int(i) for i in idx]
    parts, start = [], idx[0]
    for a, b in zip(idx, idx[1:] + [None]):
        if b != a + 1:
            parts.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ", ".join(parts)
