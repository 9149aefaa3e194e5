"""Strip constant output channels (pruned filters, gamma = 0, unreachable steps) for real.

Which channels are constant. A Conv's accumulator o lies in the proven range [lo_o, hi_o]
(`acc_range`: weights times the input type's range, zero padding and `bias_kernel` included).
Every integer epilogue is a monotone function of the accumulator (Thresholds and
LevelThresholds count passed steps, Requantize is a clamped non-decreasing or non-increasing
multiply-shift), so output channel o is constant exactly when the epilogue gives the same value
v_o at lo_o and at hi_o; `Thresholds.constant` also marks them (a Sign of 0 is the value 0). An
all-zero filter (int_w row zero: every base zero, nothing folded into it) has lo = hi = 0 and is
always constant, whatever its code (binary, ternary, two-scale, multi-base, int) and epilogue
(bits, activation-base planes, multi-bit levels, fixed-point Requantize). With P activation-base
planes, accumulator o is removed only when its P output channels p * O + o are all constant.

Where the value goes. A removed channel c with value v_c is taken out of the producer (rows of
every array of its weight code and epilogue) and out of every tensor on the way to the consuming
Convs, transforming v_c op by op:
- MaxPool: the max of a constant is that constant (padded taps are ignored) -> v_c;
- GlobalSumPool over H x W -> v_c * H * W; SumPool over kh x kw (no padding) -> v_c * kh * kw;
- Activation (elementwise epilogue, input value of channel c = its "accumulator")
  -> epilogue_c(v_c), a constant again (bits, levels or a fixed-point value);
and folded into each consuming Conv's `bias_kernel`:
    bias_kernel[o, ky, kx] += v_c * int_w[o, ky, kx, c]        (binary: int_w = w)
which the IR sums over the *valid* taps of each output position, so the fold stays exact at
zero-padded borders, where the constant channel's contribution is smaller (networks.md section 5).
Every array of the consumer's code loses input channel c (w, int_w, each base's masks, in_lists).
The accumulator of every consumer, and so every output, is unchanged, bit for bit.

Where constant channels stay. A tensor that reaches a residual `Add` (the stream must carry every
channel), the network output, an `ArgMax` or a real-valued (Chain) Activation keeps them; the
producer's epilogue notes say which channels and why (`bnnc report` shows them). A 1-bit tensor
cannot hold a constant 0 (Sign of 0), so such a channel that cannot be folded away is an error.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from .. import ir
from ..errors import BnncError
from ..reference import apply_epilogue
from .fold_batchnorm_into_thresholds import acc_range

_INT_EPILOGUES = (ir.Thresholds, ir.LevelThresholds, ir.Requantize)


def strip_pruned_channels(graph: ir.Graph) -> ir.Graph:
    """Remove constant channels and fold their values forward (see module docstring)."""
    out = graph.copy()
    for prod in out.ops():
        if not isinstance(prod, ir.Conv) or not isinstance(prod.epilogue, _INT_EPILOGUES):
            continue
        values, const = _constant_outputs(out, prod)
        planes = getattr(prod.epilogue, "planes", 1)
        o = prod.w.shape[0]
        rows = const.reshape(planes, o).all(axis=0)  # accumulators whose every plane is constant
        if not rows.any():
            continue
        bits = isinstance(out.tensors[prod.outputs[0]], ir.Bits)
        reason = _unfoldable(out, prod.outputs[0])
        where = prod.source_ops[0] if prod.source_ops else prod.name
        if reason is not None:
            if bits and np.any(values[const] == 0):
                raise BnncError(f"layer '{where}': a channel is constantly 0 (Sign of 0) and its output "
                                f"{reason}, so it cannot be folded away")
            idx = np.flatnonzero(np.tile(rows, planes))
            prod.epilogue.notes = list(prod.epilogue.notes) + [
                f"kept {idx.size} constant channel(s) ({_ranges(idx)}): the output {reason}"]
            continue
        keep_rows = ~rows
        if not keep_rows.any():  # a layer keeps at least one channel (one a 1-bit tensor can hold)
            ok = np.flatnonzero((values.reshape(planes, o) != 0).all(axis=0)) if bits else np.arange(o)
            if ok.size == 0:
                raise BnncError(f"layer '{where}': every output channel is constantly 0")
            keep_rows[ok[0]] = True
        keep = np.tile(keep_rows, planes)  # output channels
        removed = np.flatnonzero(~keep)
        _keep_outputs(prod, keep_rows)
        prod.epilogue = _slice_epilogue(prod.epilogue, keep)
        prod.epilogue.notes = list(prod.epilogue.notes) + [
            f"stripped {removed.size} constant channel(s): {_ranges(removed)}"]
        prod.removed_out += int((~keep_rows).sum())
        _forward(out, prod.outputs[0], keep, values[removed])
    return out


def _constant_outputs(graph: ir.Graph, conv: ir.Conv) -> tuple:
    """(value at the low end of the accumulator range, constant?) per output channel."""
    lo, hi = acc_range(conv, graph.tensors[conv.inputs[0]])
    at_lo = np.asarray(apply_epilogue(conv.epilogue, lo.astype(np.int64)[None]))[0].astype(np.int64)
    at_hi = np.asarray(apply_epilogue(conv.epilogue, hi.astype(np.int64)[None]))[0].astype(np.int64)
    const = at_lo == at_hi
    if isinstance(conv.epilogue, ir.Thresholds):
        const |= conv.epilogue.constant != ir.Thresholds.NOT_CONSTANT
    return at_lo, const


def _unfoldable(graph: ir.Graph, tensor: str):
    """Why constant channels of `tensor` cannot be folded into consuming Convs, or None."""
    if tensor == graph.output:
        return "is the network output"
    users = graph.consumers(tensor)
    if not users:
        return "has no consumer"
    for c in users:
        if isinstance(c, ir.Conv):
            continue
        if isinstance(c, ir.SumPool) and len(np.unique(c.gains(graph.tensors[c.inputs[0]].shape[:2]))) > 1:
            return f"is averaged by '{c.name}' with a divisor that changes near the border"
        if isinstance(c, (ir.MaxPool, ir.GlobalSumPool, ir.SumPool)) or \
                (isinstance(c, ir.Activation) and isinstance(c.epilogue, _INT_EPILOGUES)):
            if isinstance(c, ir.Activation) and getattr(c.epilogue, "planes", 1) != 1:
                return f"feeds the activation-base Activation '{c.name}'"
            reason = _unfoldable(graph, c.outputs[0])
            if reason is not None:
                return f"reaches {type(c).__name__} '{c.name}', whose output {reason}"
            continue
        if isinstance(c, ir.Add):
            return f"feeds the residual Add '{c.name}' (a fixed-point stream carries every channel)"
        return f"feeds {type(c).__name__} '{c.name}'"
    return None


def _forward(graph: ir.Graph, tensor: str, keep: np.ndarray, values: np.ndarray) -> None:
    """Remove channels ~keep (constant `values`) from `tensor` and fold them into its consumers."""
    _reshape_tensor(graph, tensor, int(keep.sum()))
    for c in graph.consumers(tensor):
        if isinstance(c, ir.Conv):
            _fold_into_consumer(c, keep, np.flatnonzero(~keep), values)
        elif isinstance(c, ir.MaxPool):
            _forward(graph, c.outputs[0], keep, values)
        elif isinstance(c, ir.GlobalSumPool):
            h, w = graph.tensors[c.inputs[0]].shape[:2]
            _forward(graph, c.outputs[0], keep, values * h * w)
        elif isinstance(c, ir.SumPool):  # _unfoldable: one gain at every pixel
            _forward(graph, c.outputs[0], keep, values * c.gains(graph.tensors[c.inputs[0]].shape[:2]).flat[0])
        elif isinstance(c, ir.Activation):
            full = np.zeros(keep.size, np.int64)
            full[~keep] = values
            after = np.asarray(apply_epilogue(c.epilogue, full[None]))[0].astype(np.int64)[~keep]
            c.epilogue = _slice_epilogue(c.epilogue, keep)
            _forward(graph, c.outputs[0], keep, after)
        else:  # pragma: no cover - _unfoldable admits only the kinds above
            raise AssertionError(f"{c.name}: cannot fold constant channels through {type(c).__name__}")


def _slice_epilogue(ep, keep: np.ndarray):
    """The epilogue restricted to output channels `keep` (planes * O entries, plane after plane)."""
    if isinstance(ep, ir.Thresholds):
        return replace(ep, direction=ep.direction[keep], threshold=ep.threshold[keep], constant=ep.constant[keep],
                       notes=list(ep.notes))
    if isinstance(ep, ir.LevelThresholds):
        return replace(ep, direction=ep.direction[keep], threshold=ep.threshold[keep], notes=list(ep.notes))
    if isinstance(ep, ir.Requantize):
        return replace(ep, mult=ep.mult[keep], add=ep.add[keep], notes=list(ep.notes),
                       acc_lo=None if ep.acc_lo is None else ep.acc_lo[keep],
                       acc_hi=None if ep.acc_hi is None else ep.acc_hi[keep])
    raise AssertionError(type(ep).__name__)


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
    if conv.weight_error is not None:
        conv.weight_error = conv.weight_error[keep]
    if conv.acc_error is not None:
        conv.acc_error = conv.acc_error[keep]
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
    contrib = np.einsum("okhc,c->okh", ir.int_weights(conv)[..., removed].astype(np.int64), values.astype(np.int64))
    conv.bias_kernel = contrib if conv.bias_kernel is None else conv.bias_kernel + contrib
    conv.w = np.ascontiguousarray(conv.w[..., keep])
    if conv.int_w is not None:
        conv.int_w = np.ascontiguousarray(conv.int_w[..., keep])
    for b in conv.bases:
        b.w = np.ascontiguousarray(b.w[..., keep])
    if conv.in_lists is not None:  # renumber the listed input channels
        new_index = np.cumsum(keep) - 1
        conv.in_lists = [np.asarray([new_index[i] for i in x if keep[i]], np.int32) for x in conv.in_lists]
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
