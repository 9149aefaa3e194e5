"""Fold scales, BatchNorm and the sign activation into exact integer thresholds.

For a Conv whose epilogue is `Chain(ops, bit terminal)`, the output of channel o is
    f_o(acc) = terminal(chain_o(float32(acc)))        (networks.md section 3)
evaluated exactly as the model specifies it, in float32. Every chain op is monotone in its input
(IEEE rounding is monotone), so f_o is a monotone step function of the integer accumulator over
its reachable range [lo_o, hi_o]. The pass finds, per channel, the integer step by evaluating f_o
(a full table when the range is small, bisection otherwise) and replaces the chain by
    out_o = +1  iff  direction_o * acc >= threshold_o
which equals f_o at every reachable accumulator value. It handles gamma < 0 (direction -1),
gamma = 0 and steps outside the reachable range (constant channels), and ties: where ONNX Sign
would output an exact 0 at a reachable value the model is refused, unless the channel is constant 0
(then strip_pruned_channels folds it away like a pruned filter).
"""

from __future__ import annotations

import numpy as np

from .. import ir
from ..arith import acc_to_float, apply_terminal, eval_chain
from ..errors import BnncError

TABLE_LIMIT = 1 << 24  # (range x channels) evaluated as a full table below this, bisection above
FLOAT_EXACT = 1 << 24  # accumulators enter float32 exactly below this magnitude


def tap_range(src_type) -> tuple:
    """Range of one input value, zero padding (0) included."""
    if isinstance(src_type, ir.Bits):
        return -1, 1
    return min(src_type.lo, 0), max(src_type.hi, 0)


def acc_range(conv: ir.Conv, src_type) -> tuple:
    """Per-channel (lo, hi) int64 arrays bounding the accumulator."""
    alo, ahi = tap_range(src_type)
    w = conv.w.reshape(conv.w.shape[0], -1).astype(np.int64)
    pos, neg = np.clip(w, 0, None), np.clip(w, None, 0)
    lo = (pos * alo).sum(1) + (neg * ahi).sum(1)
    hi = (pos * ahi).sum(1) + (neg * alo).sum(1)
    if conv.bias_kernel is not None:
        b = conv.bias_kernel.reshape(conv.bias_kernel.shape[0], -1)
        lo = lo + np.clip(b, None, 0).sum(1)
        hi = hi + np.clip(b, 0, None).sum(1)
    return lo, hi


def steps_from_table(bits: np.ndarray, values: np.ndarray, source: str, out_scale: float = 1.0,
                     allow_zero_constant: bool = False) -> ir.Thresholds:
    """Thresholds from a full table bits[value index, channel] in {-1, 0, +1} over sorted `values`.
    Values outside a channel's own range must already hold that channel's boundary value."""
    n = bits.shape[1]
    direction = np.ones(n, np.int8)
    threshold = np.zeros(n, np.int64)
    constant = np.full(n, ir.Thresholds.NOT_CONSTANT, np.int8)
    d = np.diff(bits.astype(np.int16), axis=0)
    notes = []
    for o in range(n):
        col = bits[:, o]
        if np.all(col == col[0]):
            constant[o] = col[0]
            if col[0] == 0 and not allow_zero_constant:
                raise BnncError(f"'{source}': channel {o} is always exactly 0, which a 1-bit tensor cannot hold")
            threshold[o] = values[0] if col[0] > 0 else values[-1] + 1
            continue
        up, down = np.any(d[:, o] > 0), np.any(d[:, o] < 0)
        if up and down:
            raise BnncError(f"'{source}': channel {o} is not a monotone function of its accumulator")
        zeros = values[col == 0]
        if zeros.size:
            raise BnncError(f"'{source}': channel {o} outputs an exact 0 (Sign of 0) at reachable accumulator "
                            f"value(s) {zeros.min()}..{zeros.max()}; a 1-bit tensor cannot hold it "
                            "(ternary activations are not supported)")
        if up:
            threshold[o] = values[np.argmax(col > 0)]
        else:
            direction[o] = -1
            threshold[o] = -values[len(col) - 1 - np.argmax(col[::-1] > 0)]
    return ir.Thresholds(direction, threshold, constant, out_scale, notes)


def _f(chain: ir.Chain, acc: np.ndarray) -> np.ndarray:
    """Bit value of every channel at accumulator values acc (values, channels)."""
    v = eval_chain(chain.ops, acc_to_float(acc))
    if np.any(np.isnan(v)):
        raise BnncError(f"'{getattr(chain.terminal, 'source', '?')}': the float chain gives NaN "
                        "(e.g. BatchNorm variance + epsilon = 0)")
    return apply_terminal(chain.terminal, v)


def _bisect(chain: ir.Chain, lo: np.ndarray, hi: np.ndarray, source: str, out_scale: float) -> ir.Thresholds:
    n = lo.size
    flo = _f(chain, np.stack([lo, lo]))[0]
    fhi = _f(chain, np.stack([hi, hi]))[0]
    direction = np.where(fhi >= flo, 1, -1).astype(np.int8)
    constant = np.where(flo == fhi, flo, ir.Thresholds.NOT_CONSTANT).astype(np.int8)

    def first_true(pred_up):
        # smallest a in [lo, hi+1] with pred(a), pred monotone increasing in a
        a, b = lo.copy(), hi + 1
        while np.any(a < b):
            m = (a + b) // 2
            mm = np.minimum(m, hi)
            p = pred_up(mm) & (m <= hi)
            b = np.where(p & (a < b), m, b)
            a = np.where(~p & (a < b), m + 1, a)
        return a

    col = lambda acc: _f(chain, acc[None, :])[0]
    up_pos = first_true(lambda a: col(a) > 0)  # increasing: first +1
    up_nonneg = first_true(lambda a: col(a) >= 0)
    dn_notpos = first_true(lambda a: col(a) <= 0)  # decreasing: first non-positive
    dn_neg = first_true(lambda a: col(a) < 0)
    threshold = np.where(direction > 0, up_pos, -(dn_notpos - 1)).astype(np.int64)
    for o in range(n):
        if constant[o] != ir.Thresholds.NOT_CONSTANT:
            if constant[o] == 0:
                continue
            threshold[o] = lo[o] if constant[o] > 0 else hi[o] + 1
            direction[o] = 1
            continue
        zero = (up_nonneg[o] < up_pos[o]) if direction[o] > 0 else (dn_notpos[o] < dn_neg[o])
        if zero:
            raise BnncError(f"'{source}': channel {o} outputs an exact 0 (Sign of 0) at a reachable accumulator "
                            "value; a 1-bit tensor cannot hold it (ternary activations are not supported)")
    return ir.Thresholds(direction, threshold, constant, out_scale, [])


def fold_thresholds_for(chain: ir.Chain, lo: np.ndarray, hi: np.ndarray, source: str) -> ir.Thresholds:
    out_scale = chain.terminal.out_scale if isinstance(chain.terminal, ir.SignTerminal) else \
        float(chain.terminal.out_bias + chain.terminal.out_scale)
    n = lo.size
    glo, ghi = int(lo.min()), int(hi.max())
    if (ghi - glo + 1) * n <= TABLE_LIMIT:
        values = np.arange(glo, ghi + 1, dtype=np.int64)
        acc = np.broadcast_to(values[:, None], (values.size, n))
        # clamp every channel to its own range, so out-of-range values repeat the boundary value
        acc = np.clip(acc, lo[None, :], hi[None, :])
        bits = _f(chain, acc)
        return steps_from_table(bits, values, source, out_scale, allow_zero_constant=True)
    return _bisect(chain, lo, hi, source, out_scale)


def fold_batchnorm_into_thresholds(graph: ir.Graph) -> ir.Graph:
    """Chain + bit terminal -> Thresholds on every Conv (see module docstring)."""
    out = graph.copy()
    for op in out.ops():
        if not isinstance(op, ir.Conv) or not isinstance(op.epilogue, ir.Chain):
            continue
        lo, hi = acc_range(op, out.tensors[op.inputs[0]])
        if max(int(-lo.min()), int(hi.max())) >= FLOAT_EXACT and isinstance(op.epilogue, ir.Chain):
            raise BnncError(f"layer '{op.source_ops[0]}': accumulator range [{lo.min()}, {hi.max()}] is too wide "
                            "for exact float32 evaluation")
        term = op.epilogue.terminal
        if term is None:
            continue
        source = getattr(term, "source", op.name)
        th = fold_thresholds_for(op.epilogue, lo, hi, source)
        consts = int(np.sum(th.constant != ir.Thresholds.NOT_CONSTANT))
        if consts:
            th.notes.append(f"{consts} constant output channel(s) (step outside the reachable range, "
                            "gamma = 0 or pruned filter)")
        th.notes.append(f"no reachable accumulator value ties (checked {lo.size} channels, "
                        f"accumulators in [{lo.min()}, {hi.max()}])" if isinstance(term, ir.SignTerminal)
                        and term.zero_maps_to == 0 else "ties: x = threshold maps to +1 by the op's definition")
        op.epilogue = th
        out.replace(op)
    return out
