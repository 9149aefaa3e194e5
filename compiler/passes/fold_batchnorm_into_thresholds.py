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

The same evaluation covers the compressed families:
- multi-level terminals (MultiThreshold with several steps, Quant / QuantizeLinear inside the
  network) give `LevelThresholds`: out = base + step * #{b : direction * acc >= threshold[b]},
  level b's step found by bisection on the (monotone) count of the float32 chain;
- an ONNX Sign that outputs an exact 0 at a reachable accumulator is executed as a ternary
  activation (LevelThresholds with levels -1, 0, +1; the tensor becomes Ints) instead of refused;
- `Planes` (activation bases) fold plane by plane into `Thresholds(planes=P)`;
- `Activation` ops fold like Conv epilogues, their "accumulator" being the integer input value.
The folded integer comparison equals the chain's output at every reachable accumulator; it is
re-checked at the range ends, at every step and at random reachable values.
"""

from __future__ import annotations

import math

import numpy as np

from .. import ir
from ..arith import acc_to_float, apply_terminal, eval_chain
from ..errors import BnncError

TABLE_LIMIT = 1 << 24  # (range x channels) evaluated as a full table below this, bisection above
FLOAT_EXACT = 1 << 24  # accumulators enter float32 exactly below this magnitude


class SignTie(BnncError):
    """An ONNX Sign outputs an exact 0 at a reachable accumulator value."""


def tap_range(src_type) -> tuple:
    """Range of one input value, zero padding (0) included."""
    if isinstance(src_type, ir.Bits):
        return -1, 1
    return min(src_type.lo, 0), max(src_type.hi, 0)


def acc_range(conv: ir.Conv, src_type) -> tuple:
    """Per-channel (lo, hi) int64 arrays bounding the accumulator."""
    alo, ahi = tap_range(src_type)
    w = ir.int_weights(conv).reshape(conv.w.shape[0], -1).astype(np.int64, copy=False)
    # per channel, the sums of the positive and of the negative weights, from sum(w) and sum(|w|):
    # fewer passes over the weights (a large dense layer has tens of millions)
    total, size = w.sum(1), np.abs(w).sum(1)
    pos, neg = (size + total) // 2, (total - size) // 2
    lo = pos * alo + neg * ahi
    hi = pos * ahi + neg * alo
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
            raise SignTie(f"'{source}': channel {o} outputs an exact 0 (Sign of 0) at reachable accumulator "
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
            raise SignTie(f"'{source}': channel {o} outputs an exact 0 (Sign of 0) at a reachable accumulator "
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


def _level_params(term) -> tuple:
    """(base, step, levels) of a multi-level terminal's integer output."""
    if isinstance(term, ir.LevelTerminal):
        return term.base, term.step, int(term.thresholds.shape[1])
    if isinstance(term, ir.RoundClampTerminal):
        return term.qmin - term.zero_point, 1, term.qmax - term.qmin
    return -1, 1, 2  # a Sign that can output 0: levels -1, 0, +1


def fold_levels(chain: ir.Chain, lo: np.ndarray, hi: np.ndarray, source: str,
                out_scale: float) -> ir.LevelThresholds:
    """LevelThresholds equal to `chain` (multi-level terminal) at every accumulator in [lo, hi]."""
    base, step, levels = _level_params(chain.terminal)
    n = lo.size

    def count(acc):
        v = _f(chain, acc)
        return (v.astype(np.int64) - base) // step

    clo = count(lo[None, :])[0]
    chi = count(hi[None, :])[0]
    direction = np.where(chi >= clo, 1, -1).astype(np.int8)
    d = direction.astype(np.int64)
    # x = d * acc runs over [xlo, xhi]; count is non-decreasing in x
    xlo = np.where(d > 0, lo, -hi)
    xhi = np.where(d > 0, hi, -lo)
    b = np.arange(1, levels + 1, dtype=np.int64)[:, None]  # level b is passed when count >= b
    a = np.broadcast_to(xlo, (levels, n)).copy()
    z = np.broadcast_to(xhi + 1, (levels, n)).copy()
    while np.any(a < z):
        m = (a + z) // 2
        mm = np.minimum(m, np.broadcast_to(xhi, (levels, n)))
        passed = (count(d[None, :] * mm) >= b) & (m <= xhi[None, :])
        z = np.where(passed & (a < z), m, z)
        a = np.where(~passed & (a < z), m + 1, a)
    th = ir.LevelThresholds(direction, a.T.copy(), base, step, out_scale, [])
    _check_levels(chain, th, lo, hi, count, source)
    return th


def _check_levels(chain, th: ir.LevelThresholds, lo, hi, count, source: str) -> None:
    """The folded form equals the chain at the range ends, around every step and at random points."""
    from ..arith import level_count

    n = lo.size
    rng = np.random.default_rng(0)
    pts = [lo, hi] + [np.clip(th.direction * (th.threshold[:, j] + k), lo, hi)
                      for j in range(min(th.threshold.shape[1], 64)) for k in (-1, 0)]
    span = (hi - lo).astype(np.float64)
    pts += [lo + np.floor(rng.random(n) * (span + 1)).astype(np.int64) for _ in range(16)]
    acc = np.stack(pts)
    want = th.base + th.step * count(acc)
    got = level_count(th, acc)
    if not np.array_equal(want, got):
        o = int(np.argwhere(want != got)[0][1])
        raise BnncError(f"'{source}': channel {o} is not a monotone function of its accumulator")


def _retype_to_ints(graph: ir.Graph, tensor: str, lo: int, hi: int) -> None:
    """A bit tensor that became a small-integer tensor (ternary sign), with the MaxPools after it."""
    ty = graph.tensors[tensor]
    graph.tensors[tensor] = ir.Ints(ty.shape, lo, hi, ty.scale)
    for c in graph.consumers(tensor):
        if isinstance(c, ir.MaxPool):
            _retype_to_ints(graph, c.outputs[0], lo, hi)
        elif isinstance(c, ir.Concat):  # its other inputs stay bits: one tensor cannot hold both
            raise BnncError(f"layer '{(c.source_ops or [c.name])[0]}': a Concat input is an ONNX Sign that outputs "
                            "an exact 0 at reachable values (a ternary activation) while other inputs are binary; "
                            "use BipolarQuant or a threshold that no value ties")


def _epilogue_range(graph: ir.Graph, op) -> tuple:
    src = graph.tensors[op.inputs[0]]
    if isinstance(op, ir.Activation):
        c = src.shape[2]
        lo, hi = (-1, 1) if isinstance(src, ir.Bits) else (src.lo, src.hi)
        return np.full(c, lo, np.int64), np.full(c, hi, np.int64)
    return acc_range(op, src)


NEAR_TIE = 2.0**-21  # |chain value| below this times its largest intermediate: within float32 rounding of 0


def _chain64(chain: ir.Chain, acc: np.ndarray, with_acc: bool = True) -> tuple:
    """(v, top): the chain evaluated in float64 on the same constants at accumulators `acc`, and
    the largest magnitude on the way (what float32 roundings are relative to; with_acc=False: of
    the ops' results only, in the model's units rather than the accumulator's grid steps)."""
    v = acc.astype(np.float64)
    top = np.abs(v) if with_acc else np.zeros_like(v)
    with np.errstate(all="ignore"):  # channels divided by 0 (gamma 0) are constant: not counted
        for op in chain.ops:
            if op.op == "relu":
                v = np.maximum(v, 0.0)
                continue
            if op.op == "tanh":
                v = np.tanh(v)
                top = np.maximum(top, np.abs(v))
                continue
            c = np.asarray(op.const, np.float64)
            v = {"mul": v * c, "div": v / c, "add": v + c, "sub": v - c}[op.op]
            top = np.maximum(top, np.abs(v))
    return v, top


def _near_ties(chain: ir.Chain, th: ir.Thresholds, lo: np.ndarray, hi: np.ndarray) -> int:
    """Channels whose step sits where the chain, evaluated in float64 on the same constants, is
    within a few float32 roundings of 0 on either side of it: there the sign depends on the
    order a runtime evaluates the model's float32 ops in."""
    live = (th.constant == ir.Thresholds.NOT_CONSTANT) & (th.threshold > lo) & (th.threshold <= hi)
    if not np.any(live) or th.planes != 1:
        return 0
    first = np.where(th.direction > 0, th.threshold, -th.threshold)  # the step's accumulator on the +1 side
    near = np.zeros(first.shape, bool)
    for acc in (first, first - th.direction.astype(np.int64)):
        v, top = _chain64(chain, np.clip(acc, lo, hi))
        near |= np.abs(v) <= NEAR_TIE * np.maximum(top, 1e-30)
    return int(np.sum(near & live))


def _note_level_ties(lt: ir.LevelThresholds, chain: ir.Chain, lo: np.ndarray, hi: np.ndarray) -> None:
    """The notes of a folded level epilogue: the straight-through bound, then the steps at ties."""
    lt.notes += straight_through_notes(chain, lo, hi)
    lt.near_ties = _near_level_ties(chain, lt, lo, hi)
    if lt.near_ties:
        lt.notes.append(f"{lt.near_ties} step(s) where the float32 chain is within rounding of the level boundary: "
                        "another evaluation order of the same ops (e.g. a runtime's average pool) may decide the "
                        "other way there")


def _near_level_ties(chain: ir.Chain, th: ir.LevelThresholds, lo: np.ndarray, hi: np.ndarray) -> int:
    """Steps of a multi-level epilogue where the chain, in float64, is within a few float32 roundings
    of the boundary the terminal rounds or compares at (a half-integer for rounding to nearest, an
    integer for floor / ceil / truncation, a MultiThreshold's thresholds): there the level depends on
    the order a runtime evaluates the model's float32 ops in (an average pool's exact x.5 before
    a QuantizeLinear)."""
    term = chain.terminal
    d = th.direction.astype(np.int64)
    xlo, xhi = np.where(d > 0, lo, -hi), np.where(d > 0, hi, -lo)
    near_all = 0
    for j in range(th.threshold.shape[1]):
        a = th.threshold[:, j]
        live = (a > xlo) & (a <= xhi)  # both sides of the step reachable
        if not np.any(live):
            continue
        near = np.zeros(a.shape, bool)
        for x in (a, a - 1):
            v, top = _chain64(chain, np.clip(d * x, lo, hi), with_acc=False)
            if isinstance(term, ir.RoundClampTerminal):
                edge = np.floor(v) + 0.5 if term.mode.startswith("half") else np.round(v)
                dist = np.abs(v - edge)
            elif isinstance(term, ir.LevelTerminal):
                t = np.broadcast_to(term.thresholds.astype(np.float64), (a.size, term.thresholds.shape[1]))
                dist = np.abs(v[:, None] - t).min(axis=1)
            else:  # a sign with a reachable 0: its steps are at 0
                dist = np.abs(v)
            near |= dist <= NEAR_TIE * np.maximum(top, 1.0)
        near_all += int(np.sum(near & live))
    return near_all


def _fold_chain(graph: ir.Graph, op, chain: ir.Chain, lo, hi):
    """The folded epilogue of one chain (None: a real output, kept)."""
    term = chain.terminal
    if term is None:
        return None
    source = getattr(term, "source", op.name)
    if isinstance(term, (ir.LevelTerminal, ir.RoundClampTerminal)):
        lt = fold_levels(chain, lo, hi, source, getattr(term, "out_scale", 1.0))
        _note_level_ties(lt, chain, lo, hi)
        return lt
    if isinstance(term, ir.ThresholdTerminal) and term.thresholds.shape[1] != 1:
        raise BnncError(f"'{source}': a {term.thresholds.shape[1]}-step MultiThreshold with bit output")
    try:
        th = fold_thresholds_for(chain, lo, hi, source)
    except SignTie:
        if isinstance(op, ir.Conv) and isinstance(op.epilogue, ir.Planes):
            raise
        lt = fold_levels(chain, lo, hi, source, term.out_scale)
        lt.notes.append("ONNX Sign outputs an exact 0 at reachable values: executed as a ternary "
                        "activation {-1, 0, +1}")
        _note_level_ties(lt, chain, lo, hi)
        _retype_to_ints(graph, op.outputs[0], -1, 1)
        return lt
    th.notes += straight_through_notes(chain, lo, hi)
    th.near_ties = _near_ties(chain, th, lo, hi)
    if th.near_ties:
        th.notes.append(f"{th.near_ties} channel(s) step where the float32 chain is within rounding of 0: another "
                        "evaluation order of the same ops (e.g. a runtime's fused BatchNorm) may decide the other "
                        "way there")
    consts = int(np.sum(th.constant != ir.Thresholds.NOT_CONSTANT))
    if consts:
        th.notes.append(f"{consts} constant output channel(s) (step outside the reachable range, "
                        "gamma = 0 or pruned filter)")
    th.notes.append(f"no reachable accumulator value ties (checked {lo.size} channels, "
                    f"accumulators in [{lo.min()}, {hi.max()}])" if isinstance(term, ir.SignTerminal)
                    and term.zero_maps_to == 0 else
                    "Sign(0) of a rounded value maps to +1 (0 stands for either sign within the stated bound)"
                    if isinstance(term, ir.SignTerminal) and term.rounded_input
                    else "ties: x = threshold maps to +1 by the op's definition")
    return th


def fold_batchnorm_into_thresholds(graph: ir.Graph) -> ir.Graph:
    """Chain + bit / multi-level terminal -> Thresholds / LevelThresholds on every Conv and
    Activation (see module docstring)."""
    out = graph.copy()
    for op in out.ops():
        if not isinstance(op, (ir.Conv, ir.Activation)) or not isinstance(op.epilogue, (ir.Chain, ir.Planes)):
            continue
        lo, hi = _epilogue_range(out, op)
        if isinstance(op, ir.Conv) and max(int(-lo.min()), int(hi.max())) >= FLOAT_EXACT:
            # an exact int64 accumulator; backends with 32-bit accumulators must widen it
            op.wide_acc = True
        for chain in op.epilogue.chains if isinstance(op.epilogue, ir.Planes) else [op.epilogue]:
            _check_chain_finite(op, chain, lo, hi)
        if isinstance(op.epilogue, ir.Planes):
            parts = [_fold_chain(out, op, c, lo, hi) for c in op.epilogue.chains]
            if not all(isinstance(p, ir.Thresholds) for p in parts):
                raise BnncError(f"layer '{op.source_ops[0]}': activation bases must all be sign activations")
            op.epilogue = ir.Thresholds(np.concatenate([p.direction for p in parts]),
                                        np.concatenate([p.threshold for p in parts]),
                                        np.concatenate([p.constant for p in parts]), parts[0].out_scale,
                                        [f"{len(parts)} activation bases (planes) of one accumulator"]
                                        + parts[0].notes, planes=len(parts))
            out.replace(op)
            continue
        folded = _fold_chain(out, op, op.epilogue, lo, hi)
        if folded is not None:
            op.epilogue = folded
            out.replace(op)
    return out


def straight_through_notes(chain: ir.Chain, lo: np.ndarray, hi: np.ndarray) -> list:
    """What a straight-through form read as its terminal (`exact_below` of the terminal:
    x + (f(x) - x) is f(x) in float32 only where |x| < R) means for a chain whose inputs lie in
    [lo, hi] (per channel, or one range): exact where the chain's values stay below R (every op
    is monotone: the range ends bound them), else where the model's float32 form gives other
    values."""
    term = chain.terminal
    if getattr(term, "exact_below", None) is None:
        return []
    ops = [ir.ChainOp(op.op, None if op.const is None else np.asarray(op.const).reshape(-1)) for op in chain.ops]
    with np.errstate(all="ignore"):
        ends = acc_to_float(np.stack([np.atleast_1d(lo), np.atleast_1d(hi)]))
        reach = float(np.nanmax(np.abs(eval_chain(ops, ends))))
    bound = f"2^{math.log2(term.exact_below):g}"
    form = f"the model's straight-through form x + (f(x) - x) (float32) is f(x), this activation, where |x| < {bound}"
    if reach < term.exact_below:
        return [f"{form}, and the values here stay within +-{reach:.3g}: exact"]
    return [f"{form}, and the values here can reach +-{reach:.3g}: beyond {bound} the model gives other values "
            "(float32 cancellation), bnnc f(x)"]


def _check_chain_finite(op, chain: ir.Chain, lo: np.ndarray, hi: np.ndarray) -> None:
    """Every value of the float32 chain must be finite at every reachable accumulator: past an
    overflow the model's answer depends on how its runtime orders the arithmetic. Every chain op
    is monotone, so the values at the range ends bound all others, step by step."""
    v = acc_to_float(np.stack([lo, hi]))
    for k in range(len(chain.ops)):
        v = eval_chain(chain.ops[k:k + 1], v)
        bad = ~np.isfinite(v)
        if np.any(bad):
            channel = int(np.flatnonzero(bad.any(axis=0))[0])
            layer = op.source_ops[0] if getattr(op, "source_ops", None) else op.name
            value = float(v[:, channel][bad[:, channel]][0])
            raise BnncError(f"layer '{layer}': channel {channel} reaches {value} in float32 (after its "
                            f"{chain.ops[k].op} #{k + 1}) for accumulators in [{int(lo[channel])}, {int(hi[channel])}];"
                            " its weights or scales are too large for a finite answer")
