"""The arithmetic every part of bnnc shares: float32 chains, rounding, bit-valued terminals.

The reference executor, the threshold folding and the backends' generated code all follow these
definitions operation by operation (IEEE float32, no fused multiply-add, round half to even).
"""

from __future__ import annotations

import math

import numpy as np

from . import ir


def eval_chain(ops: list, v: np.ndarray) -> np.ndarray:
    """Apply chain ops to float32 `v` whose last axis is the channel (or element) axis."""
    v = np.asarray(v, dtype=np.float32)
    for op in ops:
        if op.op == "relu":
            v = np.maximum(v, np.float32(0))
            continue
        if op.op == "tanh":  # only before a terminal, whose thresholds the fold finds (never in C)
            v = np.tanh(v).astype(np.float32)
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


def invert_chain(ops: list, v: np.ndarray):
    """The inverse of an affine chain (mul / add / sub / div) applied to `v` in float64, or None
    where the chain is not invertible (relu, a zero factor)."""
    v = np.asarray(v, dtype=np.float64)
    for op in reversed(ops):
        if op.op in ("relu", "tanh"):
            return None
        c = np.asarray(op.const, dtype=np.float64)
        if op.op in ("mul", "div") and np.any(c == 0):
            return None
        v = {"mul": v / c, "div": v * c, "add": v - c, "sub": v + c}[op.op]
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


# ----------------------------------------------------------------------------- softmax
#
# Softmax has no exact integer form; bnnc defines it as this fixed sequence of IEEE float64
# operations (each one correctly rounded, none fused, no libm), which the reference (numpy, one
# ufunc per operation) and the generated C (-ffp-contract=off; soft-float double on Cortex-M is
# IEEE too) compute identically. For the C values x_0..x_{C-1} (float32) of one pixel:
#   m   = max_i x_i                                  (float32, exact)
#   d_i = (double)x_i - (double)m                    (<= 0)
#   e_i = 0 if d_i < SOFTMAX_CUTOFF, else exp_poly(d_i):
#         k = -(int)(0.5 - d_i * LOG2E)              (round d_i / ln 2 to an integer, k in [-185, 0])
#         r = (d_i - k * LN2_HI) - k * LN2_LO        (|r| <= ln2 / 2 + 2**-40; k * LN2_HI is exact)
#         p = Horner of sum_{n=0..12} r**n / n!      (p = c_12; p = p * r + c_n for n = 11..0)
#         e_i = p * 2**k                             (exact: a power of two, normal range)
#   s   = (...((0 + e_0) + e_1) + ...) + e_{C-1}     (channel order)
#   y_i = (float)(e_i / s)                           (round to nearest even)
# Error bound against the true softmax p_i = exp(x_i - m) / sum_j exp(x_j - m) of the float32
# inputs: where x_i - m >= SOFTMAX_CUTOFF,
#   |y_i - p_i| <= p_i * (2**-24 + 2**-42 + C * 2**-52) + 2**-150
# (2**-24: the final rounding to float32, which dominates, and 2**-150 the same rounding among
# float32's subnormals, below 2**-126; 2**-42 bounds d_i's rounding (|d_i| <=
# 128, so 2**-46), the range reduction and the polynomial, whose truncation error is below
# |r|**13 / 13! < 2**-52, with the Horner roundings; C * 2**-52 the sum and the division). Where
# x_i - m < SOFTMAX_CUTOFF, y_i = 0 and p_i < e**-128 < 2**-184, far below float32's smallest
# value, and the dropped terms change the sum by less than C * 2**-184 relatively.

SOFTMAX_CUTOFF = -128.0
LOG2E = 1.4426950408889634  # 0x1.71547652b82fep+0
LN2_HI = 6.93147180369123816490e-01  # 0x1.62e42feep-1: ln 2's leading 32 bits (k * LN2_HI is exact)
LN2_LO = 1.90821492927058770002e-10  # 0x1.a39ef35793c76p-33: ln 2 - LN2_HI
EXP_DEGREE = 12
EXP_COEFFS = tuple(1.0 / math.factorial(n) for n in range(EXP_DEGREE, -1, -1))  # c_12 .. c_0, Horner order


def softmax_exp(d: np.ndarray) -> np.ndarray:
    """exp(d) for float64 d <= 0, by the operations above (0 below SOFTMAX_CUTOFF)."""
    d = np.asarray(d, dtype=np.float64)
    live = d >= SOFTMAX_CUTOFF
    dl = np.where(live, d, 0.0)
    k = -((0.5 - dl * LOG2E).astype(np.int64))  # truncation of a positive value: C's (int) cast
    kd = k.astype(np.float64)
    r = (dl - kd * LN2_HI) - kd * LN2_LO
    p = np.full_like(r, EXP_COEFFS[0])
    for c in EXP_COEFFS[1:]:
        p = p * r + c
    pow2 = ((k + 1023) << 52).astype(np.uint64).view(np.float64)  # 2**k, exactly
    return np.where(live, p * pow2, 0.0)


def quantize_linear(p: np.ndarray, scale: float, zp: int, qmin: int, qmax: int) -> np.ndarray:
    """ONNX QuantizeLinear of float32 `p` in float32 operations, as onnxruntime computes it:
    q = clamp(rint(p / scale) + zp, qmin, qmax) (round half to even), integers held in float32.
    The generated C rounds with the 1.5 * 2^23 trick, exact for |p / scale| below
    ir.QUANT_ROUND_LIMIT (ir.Softmax.out_grid checks it for probabilities p <= 1)."""
    s = np.float32(scale)
    return np.clip(np.rint(np.asarray(p, np.float32) / s) + np.float32(zp), qmin, qmax).astype(np.float32)


def dequantize_linear(q: np.ndarray, scale: float, zp: int) -> np.ndarray:
    """ONNX DequantizeLinear of integers q (held in float32) in float32, as onnxruntime computes
    it: (q - zp) * scale."""
    return ((np.asarray(q, np.float32) - np.float32(zp)) * np.float32(scale)).astype(np.float32)


def softmax(x: np.ndarray) -> np.ndarray:
    """float32 softmax over the last axis of float32 `x`, by the operations above."""
    x = np.asarray(x, dtype=np.float32)
    m = x.max(axis=-1, keepdims=True)
    e = softmax_exp(x.astype(np.float64) - m.astype(np.float64))
    s = np.add.accumulate(e, axis=-1)[..., -1:]  # sequential, in channel order (np.sum is pairwise)
    return (e / s).astype(np.float32)


# ----------------------------------------------------------------------------- log-softmax
#
# LogSoftmax, the same way: with m, d_i, e_i and s as softmax computes them (s >= 1: the largest
# value contributes e = 1),
#   L   = log_poly(s):
#         k = exponent of s, f = s / 2**k in [1, 2) (both from its bits, exactly);
#         if f > SQRT2: f = f / 2, k = k + 1                (f in [0.707, 1.415), exact)
#         z = (f - 1) / (f + 1)                             (|z| < 0.1716; f - 1 is exact)
#         w = z * z
#         P = Horner of sum_{n=0..11} 2 / (2n + 1) * w**n    (P = c_11; P = P * w + c_n for n = 10..0)
#         L = k * LN2_HI + (z * P + k * LN2_LO)            (log f = 2 atanh z = z * P(w))
#   y_i = (float)(d_i - L)                                  (round to nearest even)
# Error bound against the true log-softmax l_i = x_i - m - log(sum_j exp(x_j - m)) of the float32
# inputs: |y_i - l_i| <= |l_i| * 2**-24 + LOG_SOFTMAX_EVAL_ERROR. The float64 terms: s is the true sum
# within a relative 2**-42 + C * 2**-52 (softmax's analysis; terms below the cutoff are below
# C * e**-128 relatively), so log s within that absolutely; log_poly's truncation is below
# 2 |z|**25 / 25 < 2**-65, z's two roundings move log f by 2**-51 at most, and the sums by a few
# 2**-53 relative to L <= log C + 1; d_i itself is exact up to 2**-46 (|d_i| <= 2**8 in float32's
# range that matters, larger values are exact differences of floats up to 2**-24 relative). With
# C <= 2**20, all of it stays below LOG_SOFTMAX_EVAL_ERROR; the rounding to float32 adds
# |l_i| * 2**-24 (and 2**-150 among subnormals, inside the constant).

SQRT2 = 1.4142135623730951  # 0x1.6a09e667f3bcdp+0
LOG_DEGREE = 11
LOG_COEFFS = tuple(2.0 / (2 * n + 1) for n in range(LOG_DEGREE, -1, -1))  # c_11 .. c_0, Horner order
LOG_SOFTMAX_EVAL_ERROR = 2.0**-30


def log_poly(s: np.ndarray) -> np.ndarray:
    """log(s) for finite float64 s >= 1, by the operations above."""
    s = np.ascontiguousarray(s, dtype=np.float64)
    bits = s.view(np.uint64)
    k = ((bits >> np.uint64(52)) & np.uint64(0x7FF)).astype(np.int64) - 1023
    f = ((bits & np.uint64((1 << 52) - 1)) | np.uint64(1023 << 52)).view(np.float64)
    big = f > SQRT2
    f = np.where(big, f * 0.5, f)
    k = k + big
    z = (f - 1.0) / (f + 1.0)
    w = z * z
    p = np.full_like(w, LOG_COEFFS[0])
    for c in LOG_COEFFS[1:]:
        p = p * w + c
    kd = k.astype(np.float64)
    return kd * LN2_HI + (z * p + kd * LN2_LO)


def log_softmax(x: np.ndarray) -> np.ndarray:
    """float32 log-softmax over the last axis of float32 `x`, by the operations above."""
    x = np.asarray(x, dtype=np.float32)
    m = x.max(axis=-1, keepdims=True)
    d = x.astype(np.float64) - m.astype(np.float64)
    s = np.add.accumulate(softmax_exp(d), axis=-1)[..., -1:]  # sequential, in channel order
    return (d - log_poly(s)).astype(np.float32)


# ----------------------------------------------------------------------------- sigmoid
#
# Sigmoid has no exact integer form either; bnnc defines it with the exp above, as IEEE float64
# operations, each rounded on its own: for x = (double)q * in_scale,
#   e = exp_poly(-|x|)                                   (softmax_exp; 0 where -|x| < SOFTMAX_CUTOFF)
#   p = x >= 0 ? 1 / (1 + e) : e / (1 + e)
#   out = floor(p * 2**f + 1/2)                           (p * 2**f exact; the sum rounds once)
# Error of p against the true sigmoid of x: e is exp(-|x|) within a relative 2**-42 (softmax's
# analysis; x's own rounding, where in_scale is not a power of two, moves -|x| by |x| * 2**-53 and
# e by that relatively, below 2**-46 for |x| <= 128, and beyond, e = 0 while the true value is
# below e**-128); 1 / (1 + e) and e / (1 + e) change by at most e / (1 + e)**2 <= 1/4 of that
# relative error, plus two roundings of 2**-53: |p - sigmoid(x)| < 2**-43. The rounding to the
# grid adds half a step, and the rounding of p * 2**f + 1/2 (f <= 30: below 2**-22 steps) can only
# move a value at a half step: SIGMOID_EVAL_ERROR covers both float64 terms generously.

SIGMOID_EVAL_ERROR = 2.0**-40


def sigmoid(q: np.ndarray, in_scale: float, frac_bits: int) -> np.ndarray:
    """int64 floor(sigmoid(q * in_scale) * 2**frac_bits + 1/2) of integers q, by the operations above."""
    x = np.asarray(q, np.int64).astype(np.float64) * np.float64(in_scale)
    e = softmax_exp(-np.abs(x))
    one_e = 1.0 + e
    p = np.where(x >= 0, 1.0 / one_e, e / one_e)
    return np.floor(p * np.float64(2.0**frac_bits) + 0.5).astype(np.int64)


def multiply_streams(a: np.ndarray, b: np.ndarray, round_shift: int, lo: int, hi: int) -> np.ndarray:
    """ir.Mul: clamp(floor((a * b + half) / 2**round_shift), lo, hi), exact in int64 (b broadcasts)."""
    p = np.asarray(a, np.int64) * np.asarray(b, np.int64)
    if round_shift:
        p = (p + (1 << (round_shift - 1))) >> round_shift
    return np.clip(p, lo, hi)


# ----------------------------------------------------------------------------- GELU
#
# GELU, x Phi(x) = x (1 + erf(x / sqrt 2)) / 2 (the exact form, ONNX Gelu with approximate "none"),
# has no exact integer form either; bnnc defines it as IEEE float64 operations, each rounded on its
# own (no FMA, no libm): for x = (double)q * in_scale,
#   z = min(|x| * GELU_INV_SQRT2, GELU_Z_MAX)
#   erf(z) = GELU_TWO_OVER_SQRT_PI * exp_poly(-(z * z)) * (t_0 + t_1 + ... + t_{GELU_TERMS - 1}),
#            t_0 = z, t_n = t_{n-1} * (2 (z * z)) / (2n + 1)   (summed in order)
#   phi = x >= 0 ? 0.5 * (1 + erf) : 0.5 * (1 - erf);   out = floor(x * phi * 2**f + 1/2)
# The series' terms are all positive (no cancellation); beyond z = 6, 1 - erf(z) < 2**-55, and at
# z = 6 the terms after the 100th are below 2**-60 of the sum. Error of erf: z is within 3 * 2**-53
# relatively, which moves exp(-z^2) by at most 2 z^2 * 3 * 2**-53 < 2**-44 relatively; exp_poly is
# within 2**-42 (softmax's analysis); each term carries at most 2n + 2 roundings of 2**-53 and the
# sum another per term, < 2**-44 relatively for the at most ~120 terms that matter: |erf error| <
# 2**-41 (measured over [0, 8] against the correctly rounded erf: 2.4e-15). x phi is then within
# |x| (2**-42 + 3 * 2**-53) of GELU(x): GELU_EVAL_ERROR per unit of max(1, |x|), besides the grid's
# half step (the final rounding of x * phi * 2**f + 1/2, f <= 30, can only move a value at a half
# step, as for the sigmoid).

GELU_INV_SQRT2 = 0.7071067811865476  # 0x1.6a09e667f3bcdp-1
GELU_TWO_OVER_SQRT_PI = 1.1283791670955126  # 0x1.20dd750429b6dp+0
GELU_Z_MAX = 6.0
GELU_TERMS = 100
GELU_EVAL_ERROR = 2.0**-41
GELU_LIPSCHITZ = 1.13  # max over x of |d(x Phi(x)) / dx| = 1.1289 (at x = sqrt 2)


def erf_nonneg(z: np.ndarray) -> np.ndarray:
    """erf(z) of float64 z in [0, GELU_Z_MAX] by the series above."""
    z = np.asarray(z, np.float64)
    w = 2.0 * (z * z)
    t = z.copy()
    s = z.copy()
    for n in range(1, GELU_TERMS):
        t = t * w / np.float64(2 * n + 1)
        s = s + t
    return GELU_TWO_OVER_SQRT_PI * softmax_exp(-(z * z)) * s


def gelu(q: np.ndarray, in_scale: float, frac_bits: int) -> np.ndarray:
    """int64 floor(GELU(q * in_scale) * 2**frac_bits + 1/2) of integers q, by the operations above."""
    x = np.asarray(q, np.int64).astype(np.float64) * np.float64(in_scale)
    e = erf_nonneg(np.minimum(np.abs(x) * GELU_INV_SQRT2, GELU_Z_MAX))
    phi = np.where(x >= 0, 0.5 * (1.0 + e), 0.5 * (1.0 - e))
    return np.floor(x * phi * np.float64(2.0**frac_bits) + 0.5).astype(np.int64)
