"""Decode a layer's weight tensor into bnnc's weight code (networks.md section 2, IR.md).

A compressed network arrives with its weights as float32 tensors (or as integers behind a
DequantizeLinear / QONNX Quant, whose integers the loader keeps). Every code bnnc executes is an
exact integer form: real weight[o, ...] = unit[o] * k[o, ...] with integer k, so the accumulator
of a layer is an exact integer and the real pre-activation is unit[o] * acc:

- binary:     k in {-1, +1} per filter (or an all-zero, pruned filter), unit = alpha_o;
- ternary:    k in {-mult_n, 0, +mult_p}: masks P, N and two scales (TWN/TTQ/EC2T; expander zeros);
- two_scale:  k in {-mult_n, +mult_p}, no zeros (DABN's +a_o / -b_o);
- multi_base: k = sum_m (mult_p[m] * [B_m == +1] - mult_n[m] * [B_m == -1]), binary bases B_m
              (ABC-Net / PaBT; a fused multi-level tensor is decoded back into its bases);
- int:        k integers on the quantizer's grid (int8 layers of hybrid networks), or real-valued
              (float) weights on a per-channel power-of-two grid: unit = 2**e_o, exactly when the
              row's float values all lie on a grid with |k| <= max_int (float32 rows whose
              exponents span less than the bits allowed), else rounded to nearest on the finest
              such grid (`Decoded.error` = 0.5: at most half a unit per weight).

Scales become integer multipliers exactly: a float is m * 2**e with an odd integer m, so a set of
positive scales shares the unit 2**min(e) and every scale is an integer multiple of it.
Only non-finite weights are refused (with the node named); nothing is approximated silently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import ir
from .errors import BnncError

WEIGHT_RTOL = 1e-3  # binary: |w| within this relative distance of alpha_o counts as alpha_o (foundation)
BASES_RTOL = 1e-6  # multi-level tensors: reconstruction within float32 rounding of the exporter's sum
MAX_BASES = 8
MAX_MULT = 2**40  # integer multipliers of scales
REAL_MAX_INT = 2**24  # real-valued weights: |k| <= this by default (a float32 mantissa's 24 bits)


@dataclass
class Decoded:
    code: str
    signs: np.ndarray  # int8 (O, ...): sign of the integer weight (binary: the +-1 code)
    unit: np.ndarray  # float64 (O,): real weight = unit * k
    int_w: Optional[np.ndarray] = None  # int64 (O, ...), None for binary
    bases: list = field(default_factory=list)  # [WeightBase] (arrays still in the ONNX layout)
    scale_p: Optional[np.ndarray] = None
    scale_n: Optional[np.ndarray] = None
    what: str = ""  # a short description for notes
    error: Optional[np.ndarray] = None  # real-valued rows: |w - unit * k| <= error * unit (0 exact, 0.5 rounded)


def dyadic(x: float) -> tuple:
    """(m, e) with x == m * 2**e exactly, m an odd integer (0, 0 for x == 0)."""
    if x == 0:
        return 0, 0
    f, e = math.frexp(float(x))
    m = int(f * (1 << 53))
    e -= 53
    while m % 2 == 0:
        m //= 2
        e += 1
    return m, e


def integer_multipliers(values) -> tuple:
    """(unit, [integers]) with values[i] == unit * k[i] exactly (unit a power of two times the
    gcd). Raises ValueError when the integers would exceed MAX_MULT."""
    vals = [float(v) for v in values]
    nz = [dyadic(v) for v in vals if v != 0]
    if not nz:
        return 1.0, [0] * len(vals)
    emin = min(e for _, e in nz)
    ks = []
    for v in vals:
        if v == 0:
            ks.append(0)
            continue
        m, e = dyadic(v)
        ks.append(m << (e - emin))
    g = 0
    for k in ks:
        g = math.gcd(g, abs(k))
    ks = [k // g for k in ks]
    if max(abs(k) for k in ks) > MAX_MULT:
        raise ValueError("scales too far apart")
    return math.ldexp(float(g), emin), ks


BINARY_TEST_ROWS = 256


def _binary(w2: np.ndarray):
    """The foundation's binary test: per row +-alpha within WEIGHT_RTOL, or all zero."""
    o = w2.shape[0]
    alpha = np.zeros(o)
    signs = np.zeros(w2.shape, np.int8)
    for first in range(0, o, BINARY_TEST_ROWS):  # rows a block at a time: most weights fail in the first
        rows = slice(first, first + BINARY_TEST_ROWS)
        mag = np.abs(w2[rows])
        nz = mag > 0
        used = nz.any(axis=1)  # all-zero rows (pruned channels) keep alpha 0 and signs 0
        if not np.all(nz.all(axis=1) | ~used):
            return None
        a = np.array([m.mean() if u else 0.0 for m, u in zip(mag, used)])
        if np.any(np.abs(mag - a[:, None]).max(axis=1, initial=0.0) > WEIGHT_RTOL * a):
            return None
        alpha[rows] = a
        signs[rows] = np.where(used[:, None], np.where(w2[rows] > 0, 1, -1), 0)
    return signs, alpha


def _single_base(node_desc, w2: np.ndarray, k2: np.ndarray, unit: np.ndarray, zeros: bool, what: str) -> Decoded:
    """A code with one masked base: k2 in {-mult_n[o], 0, +mult_p[o]} per row."""
    o = w2.shape[0]
    mp = np.zeros(o, np.int64)
    mn = np.zeros(o, np.int64)
    for i in range(o):
        pos, neg = k2[i][k2[i] > 0], k2[i][k2[i] < 0]
        mp[i] = pos[0] if pos.size else (-neg[0] if neg.size else 1)
        mn[i] = -neg[0] if neg.size else mp[i]
    signs = np.sign(k2).astype(np.int8)
    base = ir.WeightBase(signs, mp, mn, unit * mp, unit * mn)
    if zeros:
        code = "ternary"
    elif np.any(mp != mn):
        code = "two_scale"
    else:
        code = "ternary"  # equal scales with zeros only in pruned rows: still a masked code
    return Decoded(code, signs, unit, k2.astype(np.int64), [base], unit * mp, unit * mn, what)


def _two_level(node_desc, w2: np.ndarray):
    """Rows with at most one positive and one negative value (and zeros): ternary / two-scale."""
    o = w2.shape[0]
    unit = np.ones(o)
    k2 = np.zeros(w2.shape, np.int64)
    zeros_in_live_rows = False
    for i in range(o):
        row = w2[i]
        pos, neg = np.unique(row[row > 0]), np.unique(row[row < 0])
        if pos.size > 1 or neg.size > 1:
            return None
        if not pos.size and not neg.size:
            continue
        zeros_in_live_rows |= bool(np.any(row == 0))
        levels = [float(pos[0]) if pos.size else None, float(-neg[0]) if neg.size else None]
        present = [v for v in levels if v is not None]
        try:
            u, ks = integer_multipliers(present)
        except ValueError:
            raise BnncError(f"{node_desc}: output channel {i} has weight scales {present} too far apart "
                            "for exact integer multipliers") from None
        unit[i] = u
        kp = ks[0] if pos.size else 0
        kn = ks[-1] if neg.size else 0
        k2[i] = np.where(row > 0, kp, np.where(row < 0, -kn, 0))
    return _single_base(node_desc, w2, k2, unit, zeros_in_live_rows,
                        "ternary {-w_n, 0, +w_p}" if zeros_in_live_rows else "two-scale {+a, -b}")


def _integer_grid(w2: np.ndarray):
    """Rows that are small integer multiples (|k| <= 127) of one unit per row (int8 weights
    exported as floats): the unit is the smallest |w| of the row divided by some d <= 127."""
    o = w2.shape[0]
    unit = np.ones(o)
    k2 = np.zeros(w2.shape, np.int64)
    for i in range(o):
        row = w2[i].astype(np.float64)
        nz = np.abs(row[row != 0])
        if not nz.size:
            continue
        vmin = nz.min()
        for d in range(1, 128):
            k = row * d / vmin
            if np.abs(k).max() > 127.5:
                return None
            if np.max(np.abs(k - np.rint(k))) <= 1e-5:
                break
        else:
            return None
        k = np.rint(k).astype(np.int64)
        unit[i] = vmin / d
        k2[i] = k
    return k2, unit


def real_grid(w2: np.ndarray, max_int: int) -> tuple:
    """(k, unit, error) for real-valued rows w2 (O, N): per row the coarsest power-of-two unit on
    which every value is an integer with |k| <= max_int (error 0); where the row's values span
    more bits than that, the unit 2**e with max|w| / 2**e <= max_int and k rounded half to even
    (error 0.5: |w - unit * k| <= unit / 2)."""
    w2 = np.asarray(w2, np.float64)
    o = w2.shape[0]
    k2 = np.zeros(w2.shape, np.int64)
    unit = np.ones(o)
    error = np.zeros(o)
    mant, expo = np.frexp(w2)  # w = mant * 2**expo, 0.5 <= |mant| < 1
    m53 = np.abs(mant * 2.0**53).astype(np.int64)
    low = np.where(m53 != 0, m53 & -m53, 1)  # lowest set bit of each mantissa
    lsb = np.where(m53 != 0, expo - 53 + np.log2(low).astype(np.int64), np.iinfo(np.int64).max)
    for i in range(o):
        row = w2[i]
        if not np.any(row != 0):
            continue
        e = int(lsb[i].min())
        top = float(np.abs(row).max())
        if top / 2.0**e > max_int:
            e = math.frexp(top / max_int)[1]  # top / 2**e <= max_int; then the finest such e
            while top / 2.0**(e - 1) <= max_int:
                e -= 1
            error[i] = 0.5
        k2[i] = np.rint(row / 2.0**e).astype(np.int64)
        unit[i] = 2.0**e
    return k2, unit, error


def decode(node_desc: str, w: np.ndarray, origin=None, max_int: int = REAL_MAX_INT) -> Decoded:
    """Decode weights w (O, ...) of the node described by `node_desc` (see module docstring).
    `origin` = (k, unit) when the loader knows the integers (DequantizeLinear / Quant); real-valued
    weights become integers of magnitude at most `max_int` on a power-of-two grid per channel."""
    w = np.asarray(w)
    o = w.shape[0]
    w2 = w.reshape(o, -1)
    if not np.all(np.isfinite(w2)):
        row = int(np.argwhere(~np.isfinite(w2))[0][0])
        raise BnncError(f"{node_desc}: weights of output channel {row} are not finite (NaN or Inf); "
                        "the model's output is undefined")
    if origin is not None:
        k, unit = origin
        k2 = np.asarray(k, np.int64).reshape(o, -1)
        unit = np.broadcast_to(np.asarray(unit, np.float64).reshape(-1), (o,)).copy()
        if np.all(np.isin(k2, (-1, 0, 1))):
            if np.all((k2 != 0).all(axis=1) | (k2 == 0).all(axis=1)):
                return Decoded("binary", k2.astype(np.int8).reshape(w.shape), unit)
            d = _single_base(node_desc, w2, k2, unit, True, "ternary (quantizer integers)")
        else:
            d = Decoded("int", np.sign(k2).astype(np.int8), unit, k2, [], None, None,
                        f"int{_bits_for(k2)} (quantizer integers)")
        return _reshape(d, w.shape)
    b = _binary(w2.astype(np.float64))
    if b is not None:
        signs, alpha = b
        return Decoded("binary", signs.reshape(w.shape), alpha)
    d = _two_level(node_desc, w2.astype(np.float64))
    if d is not None:
        return _reshape(d, w.shape)
    d = _decode_bases(node_desc, w2, 4)
    if d is not None:
        return _reshape(d, w.shape)
    g = _integer_grid(w2)
    if g is not None:
        k2, unit = g
        return _reshape(Decoded("int", np.sign(k2).astype(np.int8), unit, k2, [], None, None,
                                f"int{_bits_for(k2)} grid"), w.shape)
    d = _decode_bases(node_desc, w2, MAX_BASES)
    if d is not None:
        return _reshape(d, w.shape)
    k2, unit, error = real_grid(w2, max_int)
    what = (f"real-valued, int{_bits_for(k2)} on 2^e per channel, "
            + ("exact" if not error.any() else "rounded to nearest (error <= unit / 2 per weight)"))
    return _reshape(Decoded("int", np.sign(k2).astype(np.int8), unit, k2, [], None, None, what, error), w.shape)


def _bits_for(k: np.ndarray) -> int:
    m = int(np.abs(k).max()) if k.size else 0
    return max(2, int(m).bit_length() + 1)


def _reshape(d: Decoded, shape) -> Decoded:
    d.signs = d.signs.reshape(shape)
    if d.int_w is not None:
        d.int_w = d.int_w.reshape(shape)
    for b in d.bases:
        b.w = b.w.reshape(shape)
    return d


def _decode_bases(node_desc: str, w2: np.ndarray, max_bases: int) -> Optional[Decoded]:
    """Multi-level rows as sums of binary bases sharing per-layer (else per-row) coefficients."""
    for per_row in (False, True):
        r = _subset_decode(w2.astype(np.float64), per_row, max_bases)
        if r is not None:
            return _bases_code(node_desc, w2, *r)
    return None


def _subset_decode(w2: np.ndarray, per_row: bool, max_bases: int):
    """(alphas per row [list], sign choices (O, n, M) in {-1, +1}) or None.

    Values are sum_m s_m * a_m with a_m > 0. With hi = sum a_m, (hi - v) / 2 is the sum of the
    a_m with s_m = -1, so the coefficients are the subset sums the smaller ones do not generate.
    The largest value of a group must be the all-(+1) pattern and the smallest its negation."""
    o = w2.shape[0]
    groups = [np.arange(o)] if not per_row else [np.array([i]) for i in range(o)]
    alphas_of: list = [None] * o
    signs = [None] * o
    for rows in groups:
        vals = w2[rows]
        live = np.any(vals != 0, axis=1)
        if not live.any():
            continue
        v = vals[live]
        hi, lo = float(v.max()), float(v.min())
        scale = max(abs(hi), abs(lo))
        tol = BASES_RTOL * scale
        if hi <= 0 or abs(hi + lo) > 8 * tol:
            return None
        subset = np.unique((hi - v.ravel()) / 2)
        alphas: list = []
        gen = np.array([0.0])
        for s in subset:
            if np.min(np.abs(gen - s)) <= 8 * tol * (len(alphas) + 1):
                continue
            alphas.append(float(s))
            if len(alphas) > max_bases:
                return None
            gen = np.concatenate([gen, gen + s])
        rest = hi - sum(alphas)
        if rest > 8 * tol * (len(alphas) + 1):
            alphas.append(rest)
            gen = np.concatenate([gen, gen + rest])
        if not alphas or len(alphas) > max_bases or abs(sum(alphas) - hi) > 8 * tol * len(alphas):
            return None
        # the exporter's coefficients were float32: take those where they explain the values
        alphas = [float(np.float32(a)) if abs(float(np.float32(a)) - a) <= tol else a for a in alphas]
        m = len(alphas)
        combos = ((np.arange(1 << m)[:, None] >> np.arange(m)[None, :]) & 1).astype(np.int64)
        csum = combos @ np.array(alphas)
        target = (hi - v) / 2
        idx = np.abs(target[..., None] - csum).argmin(axis=-1)
        if np.max(np.abs(csum[idx] - target)) > 8 * tol * m:
            return None
        for j, r in enumerate(rows[live]):
            alphas_of[int(r)] = alphas
            signs[int(r)] = 1 - 2 * combos[idx[j]]  # (n, M): chosen -> -1
    return alphas_of, signs


def _bases_code(node_desc, w2, alphas_of, signs) -> Decoded:
    o, n = w2.shape
    m = max((len(a) for a in alphas_of if a is not None), default=0)
    if m < 2:
        return None
    unit = np.ones(o)
    mults = np.zeros((m, o), np.int64)
    bw = np.zeros((m, o, n), np.int8)
    for i in range(o):
        a = alphas_of[i]
        if a is None:
            continue
        try:
            u, ks = integer_multipliers(a)
        except ValueError:
            raise BnncError(f"{node_desc}: base coefficients {a} of output channel {i} are too far apart "
                            "for exact integer multipliers") from None
        unit[i] = u
        for j, k in enumerate(ks):
            mults[j, i] = k
            bw[j, i] = signs[i][:, j]
    bases = [ir.WeightBase(bw[j], mults[j].copy(), mults[j].copy(), unit * mults[j], unit * mults[j])
             for j in range(m) if np.any(mults[j])]
    k2 = ir.bases_weights(bases)
    signs_all = np.sign(k2).astype(np.int8)
    return Decoded("multi_base", signs_all, unit, k2, bases, None, None,
                   f"{len(bases)} binary bases (decoded from a multi-level tensor)")
