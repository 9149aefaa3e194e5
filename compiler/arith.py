"""The arithmetic every part of bnnc shares: float32 chains, rounding, bit-valued terminals.

The reference executor, the threshold folding and the backends' generated code all follow these
definitions operation by operation (IEEE float32, no fused multiply-add, round half to even).
"""

from __future__ import annotations

import numpy as np

from . import ir


def eval_chain(ops: list, v: np.ndarray) -> np.ndarray:
    """Apply chain ops to float32 `v` whose last axis is the channel (or element) axis."""
    v = np.asarray(v, dtype=np.float32)
    for op in ops:
        if op.op == "relu":
            v = np.maximum(v, np.float32(0))
            continue
        c = np.asarray(op.const, dtype=np.float32)
        if op.op == "mul":
            v = v * c
        elif op.op == "add":
            v = v + c
        elif op.op == "sub":
            v = v - c
        elif op.op == "div":
            v = v / c
        else:  # pragma: no cover - the IR never holds other ops
            raise ValueError(op.op)
        v = v.astype(np.float32, copy=False)
    return v


def acc_to_float(acc: np.ndarray) -> np.ndarray:
    """The accumulator enters its chain as float32 (exact: |acc| < 2**24 is checked at compile time)."""
    return np.asarray(acc).astype(np.float32)


def round_values(v: np.ndarray, mode: str) -> np.ndarray:
    if mode == "half_even":
        return np.rint(v)
    if mode == "half_away":
        return np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))
    if mode == "floor":
        return np.floor(v)
    if mode == "ceil":
        return np.ceil(v)
    if mode == "to_zero":
        return np.trunc(v)
    raise ValueError(mode)


def apply_terminal(term, v: np.ndarray) -> np.ndarray:
    """Terminal on float32 values (channel last). Bit terminals give int8 in {-1, 0, +1}
    (0 only for an exact zero under ONNX Sign); RoundClamp gives int64 q - zero_point."""
    if isinstance(term, ir.SignTerminal):
        out = np.where(v > 0, 1, np.where(v < 0, -1, term.zero_maps_to)).astype(np.int8)
        return out
    if isinstance(term, ir.ThresholdTerminal):
        t = np.asarray(term.thresholds, dtype=np.float32)[:, 0]
        return np.where(v >= t, 1, -1).astype(np.int8)
    if isinstance(term, ir.RoundClampTerminal):
        r = round_values(v.astype(np.float32), term.mode).astype(np.int64) + getattr(term, "add_after_round", 0)
        return np.clip(r, term.qmin, term.qmax) - term.zero_point
    if isinstance(term, ir.LevelTerminal):
        t = np.asarray(term.thresholds, dtype=np.float32)  # (C or 1, B)
        count = (v[..., None] >= t).sum(axis=-1).astype(np.int64)
        return term.base + term.step * count
    raise ValueError(term)


def requantize(rq, acc: np.ndarray) -> np.ndarray:
    """Requantize epilogue (ir.Requantize): clamp(floor((clamp(acc >> pre_shift) * mult + add) / 2**shift), lo, hi),
    exact in int64 (the accumulator clamp keeps |acc * mult + add| < 2**62)."""
    a = np.asarray(acc, np.int64) >> np.int64(rq.pre_shift)
    if rq.acc_lo is not None:
        a = np.clip(a, rq.acc_lo, rq.acc_hi)
    v = a * rq.mult.astype(np.int64) + rq.add.astype(np.int64)
    return np.clip(v >> np.int64(rq.shift), rq.lo, rq.hi)


def level_count(lt, acc: np.ndarray) -> np.ndarray:
    """LevelThresholds epilogue on accumulators (..., O): base + step * #levels passed."""
    d = lt.direction.astype(np.int64)
    t = lt.threshold.astype(np.int64)  # (O, B)
    passed = ((d * acc)[..., None] >= t).sum(axis=-1)
    return lt.base + lt.step * passed.astype(np.int64)
