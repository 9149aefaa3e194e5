"""Many-level thresholds whose steps are those of an integer multiply-shift become `Requantize`.

An int8 layer boundary (QuantizeLinear -> DequantizeLinear, or a Quant with many levels) folds
into `LevelThresholds` with up to 255 thresholds per channel: exact, but large, and a search per
output. When, for a channel, every threshold T_b that lies inside the reachable range (on
x = direction * acc) is a step of one map
    count(x) = floor((x * M + C) / 2**S)
with integers M >= 0, C, the pass replaces the table by `ir.Requantize` with
    mult = direction * M,  add = C + base * 2**S,  shift = S,
and an accumulator clamp to [T_first - 1, T_last] (on x): there the map equals the threshold
count at every integer, below and above it the count is constant. M and C are not guessed: M
lies in the slope interval that every pair of steps allows at the precision 2**S, and C in the
intersection of the exact integer intervals every step imposes (x * M + C >= b * 2**S from T_b
on, < b * 2**S at T_b - 1); if no (M, C) exists for a channel, the layer keeps its thresholds.
Outputs are therefore unchanged at every reachable accumulator (exactly, not approximately).

Only levels of step 1 with at least MIN_LEVELS levels are considered (2-bit activations and
ternary signs keep their few thresholds).
"""

from __future__ import annotations

import numpy as np

from .. import ir
from .fold_batchnorm_into_thresholds import _epilogue_range

MIN_LEVELS = 16
ALL_PAIRS = 1024  # up to this many steps, every pair of steps bounds the slope
ANCHORS = 128  # beyond it, the first, last and evenly spaced ANCHORS steps, each paired with every step
PAIR_BLOCK = 1 << 22  # step pairs per block of the computation


def _channel_map(t: np.ndarray, xlo: int, xhi: int, shift: int):
    """(M, C, clamp_lo, clamp_hi) on x for one channel's thresholds t (non-decreasing), or None."""
    levels = np.arange(1, t.size + 1)
    inner = (t > xlo) & (t <= xhi)
    c0 = int(np.sum(t <= xlo))  # levels passed at every reachable x
    big = 1 << shift
    if not inner.any():
        return 0, c0 * big, xlo, xlo
    tb, bb = t[inner].astype(np.int64), levels[inner].astype(np.int64)
    if np.any(np.diff(tb) == 0):  # several levels at one x: a jump of more than one step
        return None
    first, last = int(tb[0]), int(tb[-1])
    # the slopes every pair of steps i < j allows (the C-interval of step i must meet that of j):
    # M (T_j - T_i + 1) >= (b_j - b_i) 2**S + 1 and M (T_j - T_i - 1) <= (b_j - b_i) 2**S - 1;
    # beyond ALL_PAIRS steps (16-bit levels) the pairs of anchor steps with every step: a wider slope
    # interval, whose candidates the exact check below still decides
    n = tb.size
    rows = np.arange(n) if n <= ALL_PAIRS else np.unique(np.concatenate(
        [np.arange(ANCHORS), np.arange(n - ANCHORS, n), np.linspace(0, n - 1, ANCHORS).astype(np.int64)]))
    m_lo, m_hi = 0, (t.size + 1) * big
    for block in np.array_split(rows, max(1, rows.size * n // PAIR_BLOCK)):
        dt = tb[None, :] - tb[block, None]
        db = (bb[None, :] - bb[block, None]) * big
        up = np.arange(n)[None, :] > block[:, None]
        m_lo = max(m_lo, int(np.max((-((-(db + 1)) // np.where(up, dt + 1, 1)))[up], initial=0)))
        wide = up & (dt > 1)
        m_hi = min(m_hi, int(np.min(((db - 1) // np.where(wide, dt - 1, 1))[wide], initial=m_hi)))
    for m in dict.fromkeys(((m_lo + m_hi) // 2, m_lo, m_hi)):
        if m < 0 or m_lo > m_hi:
            continue
        # x * m + c >= b * big from T_b on, < b * big at T_b - 1; c0 just below the first step and
        # the last level up to the last step (the accumulator is clamped to [first - 1, last])
        lo_c = max(int(np.max(bb * big - tb * m)), c0 * big - (first - 1) * m)
        hi_c = min(int(np.min(bb * big - (tb - 1) * m - 1)), (int(bb[-1]) + 1) * big - last * m - 1)
        if lo_c <= hi_c:
            return m, lo_c, first - 1, last
    return None


def requantize_level_steps(graph: ir.Graph) -> ir.Graph:
    """LevelThresholds -> Requantize where exactly equal (see module docstring)."""
    out = graph.copy()
    for op in out.ops():
        ep = getattr(op, "epilogue", None)
        if not isinstance(ep, ir.LevelThresholds) or ep.step != 1 or ep.planes != 1 \
                or ep.threshold.shape[1] < MIN_LEVELS:
            continue
        lo, hi = _epilogue_range(out, op)
        d = ep.direction.astype(np.int64)
        xlo, xhi = np.where(d > 0, lo, -hi), np.where(d > 0, hi, -lo)
        amax = int(max(np.abs(lo).max(), np.abs(hi).max(), 1))
        levels = ep.threshold.shape[1]
        # x * M stays below 2**61 with M <= (levels + 1) * 2**S
        shift = max(1, min(40, 61 - amax.bit_length() - (levels + 1).bit_length()))
        maps = [_channel_map(ep.threshold[o], int(xlo[o]), int(xhi[o]), shift) for o in range(d.size)]
        if any(m is None for m in maps):
            continue
        mult = np.array([d[o] * maps[o][0] for o in range(d.size)], np.int64)
        add = np.array([maps[o][1] + ep.base * (1 << shift) for o in range(d.size)], np.int64)
        # the clamp on x, as an accumulator range
        acc_lo = np.array([maps[o][2] if d[o] > 0 else -maps[o][3] for o in range(d.size)], np.int64)
        acc_hi = np.array([maps[o][3] if d[o] > 0 else -maps[o][2] for o in range(d.size)], np.int64)
        op.epilogue = ir.Requantize(mult, add, shift, ep.base, ep.base + levels, ep.out_scale,
                                    ep.notes + [f"{levels} thresholds per channel as an integer multiply-shift "
                                                "(checked equal at every step)"], acc_lo, acc_hi,
                                    near_ties=ep.near_ties)
        out.replace(op)
    return out
