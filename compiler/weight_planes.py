"""A Conv's integer weights as popcount planes: the form XNOR-popcount arrays compute.

Hardware backends (the Verilog MVTU, the HLS matrix unit) compute, per output row o and plane j,
one masked popcount (bit inputs) or masked signed sum (integer inputs) over the lanes k of a window
(k = (ky * kw + kx) * C + c, the order of w[o, ky, kx, c]; padded taps read x = 0):

    bit inputs (x = 1 for -1):  s_j = sum_k m_j[o, k] * (x_k XOR b_j[o, k])
    integer inputs (x = a):     s_j = sum_k m_j[o, k] * (b_j[o, k] ? -x_k : x_k)

with b_j the XOR bits (absent: all 0) and m_j the lane mask (absent: all 1). For a window whose
valid taps are V, the IR's accumulator (reference.conv_accumulator) is then exactly

    acc[o] = A[V, o] + sum_j gain_j[o] * s_j[o]

where `plane_offsets` gives A. Over valid lanes a bit x is (1 - a) / 2, so
x XOR b = (1 - sgn_b * a) / 2 with sgn_b = 1 - 2b, and a plane is the affine function
s_j = sum_V alpha_j * a + beta_j(V) of the inputs:
    bit inputs:      alpha_j = -m_j * sgn_j / 2,  beta_j(V) = |m_j on V| / 2 + sum over padded lanes of m_j * b_j
    integer inputs:  alpha_j =  m_j * sgn_j,      beta_j = 0
The decomposition is correct iff sum_j gain_j * alpha_j == int_w for every (o, k) (checked on
construction), and then A = bias(V) - sum_j gain_j * beta_j(V).

The planes chosen per weight code (per base of a multi-base code; mult_p / mult_n its multipliers):
- +-1 weights with mult_p == mult_n (binary, one-scale multi-base): one XNOR plane, b = (w < 0),
  gain -2 mult (bits) / mult (ints);
- the same with zeros (ternary, expander kernels, pruned base pairs): one masked XNOR plane,
  b = (w < 0), m = (w != 0);
- +-1 weights with two scales (DABN): a plane of all ones (the input's own popcount, shared by
  every row) and an AND plane m = (w < 0): bits: gains -2 mult_p and 2 (mult_p + mult_n);
  ints: mult_p and -(mult_p + mult_n);
- ternary with two scales (TTQ, EC2T): AND planes m = P and m = N (two masks, two scales):
  bits: gains -2 mult_p and 2 mult_n; ints: mult_p and -mult_n;
- integer weights: two's-complement bit planes m_i = bit i of (w mod 2**B), gains 2**i and
  -2**(B-1) for the sign bit (times -2 for bit inputs).
All-ones planes of several bases merge into one. Every gain is an exact integer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import ir
from .errors import BnncError


@dataclass
class PopcountPlane:
    b: Optional[np.ndarray]  # bool (O, MW): XOR bits; None = all 0
    m: Optional[np.ndarray]  # bool (O, MW): lane mask; None = every lane
    gain: np.ndarray  # int64 (O,)

    @property
    def kind(self) -> str:
        """"xnor" (b only), "masked_xnor" (b and m), "and" (m only), "ones" (neither)."""
        return {(True, False): "xnor", (True, True): "masked_xnor", (False, True): "and",
                (False, False): "ones"}[(self.b is not None, self.m is not None)]

    @property
    def stored_arrays(self) -> int:
        """Bit arrays a backend stores for this plane (b and / or m)."""
        return int(self.b is not None) + int(self.m is not None)


def _base_planes(w: np.ndarray, mp: np.ndarray, mn: np.ndarray, bits_in: bool) -> list:
    """Planes of one masked binary base w (O, MW) in {-1, 0, +1} with multipliers mp, mn (O,)."""
    live = np.any(w != 0, axis=1)
    mp = np.where(live, mp, 0).astype(np.int64)
    mn = np.where(live, mn, 0).astype(np.int64)
    zeros = bool(np.any((w == 0) & live[:, None]))
    k = -2 if bits_in else 1  # bits: alpha = -m sgn / 2, so gain = -2 * (weight of sgn = +1)
    if np.array_equal(mp, mn):
        return [PopcountPlane(w < 0, (w != 0) if zeros else None, k * mp)]
    if not zeros:  # two scales: weight = mp - (mp + mn) [w < 0]
        return [PopcountPlane(None, None, k * mp), PopcountPlane(None, w < 0, -k * (mp + mn))]
    return [PopcountPlane(None, w > 0, k * mp), PopcountPlane(None, w < 0, -k * mn)]


def _int_planes(kw: np.ndarray, bits_in: bool) -> list:
    """Two's-complement bit planes of integer weights kw (O, MW)."""
    bmax = max(int(kw.max(initial=0)).bit_length() + 1, int(-kw.min(initial=0) - 1).bit_length() + 1, 2)
    u = np.where(kw < 0, kw + (1 << bmax), kw)
    k = -2 if bits_in else 1
    planes = []
    for i in range(bmax):
        m = ((u >> i) & 1).astype(bool)
        if not m.any():
            continue
        g = -(1 << i) if i == bmax - 1 else (1 << i)
        planes.append(PopcountPlane(None, m, np.full(kw.shape[0], k * g, np.int64)))
    return planes


def popcount_planes(op: ir.Conv, bits_in: bool) -> list:
    """[PopcountPlane] with sum_j gain_j * alpha_j == int_w (see module docstring), for a Conv on
    bit inputs (`bits_in`) or integer inputs."""
    o = op.w.shape[0]
    kw = ir.int_weights(op).reshape(o, -1).astype(np.int64)
    if op.code == "binary":  # +-1 rows (zeros only in pruned rows, or in a hand-made IR: masked)
        ones = np.ones(o, np.int64)
        planes = _base_planes(kw, ones, ones, bits_in)
    elif op.bases:
        planes = []
        for base in op.bases:
            planes += _base_planes(base.w.reshape(o, -1), base.mult_p, base.mult_n, bits_in)
        ones = [p for p in planes if p.kind == "ones"]
        if len(ones) > 1:
            merged = PopcountPlane(None, None, sum(p.gain for p in ones))
            planes = [merged] + [p for p in planes if p.kind != "ones"]
    else:
        planes = _int_planes(kw, bits_in)
    planes = [p for p in planes if np.any(p.gain != 0)] or planes[:1]
    _check(op, planes, kw, bits_in)
    return planes


def _alpha2(p: PopcountPlane, shape, bits_in: bool) -> np.ndarray:
    """2 * alpha (bits) or alpha (ints) of a plane, int64 (O, MW)."""
    sgn = 1 - 2 * p.b.astype(np.int64) if p.b is not None else np.ones(shape, np.int64)
    m = p.m.astype(np.int64) if p.m is not None else np.ones(shape, np.int64)
    return -m * sgn if bits_in else m * sgn


def _check(op: ir.Conv, planes: list, kw: np.ndarray, bits_in: bool) -> None:
    total = sum(p.gain[:, None] * _alpha2(p, kw.shape, bits_in) for p in planes)
    want = 2 * kw if bits_in else kw
    if not np.array_equal(total, want):  # pragma: no cover - a bug in the decomposition above
        raise BnncError(f"layer '{op.name}': internal error: popcount planes do not reproduce the {op.code} weights")


def lane_valid(valid_taps: np.ndarray, channels: int) -> np.ndarray:
    """bool (ncls, MW) from valid taps (ncls, kh, kw): lane k = (ky * kw + kx) * C + c."""
    return np.repeat(valid_taps.reshape(valid_taps.shape[0], -1), channels, axis=1)


def plane_offsets(planes: list, bias: np.ndarray, valid: np.ndarray, bits_in: bool) -> np.ndarray:
    """A (ncls, O) with acc = A + sum_j gain_j * s_j, for lane validity `valid` (ncls, MW) per
    border class and bias(V) `bias` (ncls, O). On bit inputs every gain is even (a factor -2 of
    alpha), so A = bias - sum_j (gain_j / 2) * (2 beta_j) is an exact integer."""
    a = bias.astype(np.int64).copy()
    if not bits_in:
        return a
    v = valid.astype(np.int64)
    ncls, mw = v.shape
    for p in planes:
        o = p.gain.shape[0]
        m = p.m.astype(np.int64) if p.m is not None else np.ones((o, mw), np.int64)
        b = p.b.astype(np.int64) if p.b is not None else np.zeros((o, mw), np.int64)
        two_beta = v @ m.T + 2 * ((1 - v) @ (m * b).T)  # (ncls, O)
        a -= (p.gain // 2)[None, :] * two_beta
    return a


def plane_ranges(planes: list, mw: int, in_lo: int, in_hi: int, bits_in: bool) -> list:
    """[(lo, hi)] of each plane's s_j over every input and window."""
    out = []
    for p in planes:
        lanes = int(p.m.sum(axis=1).max()) if p.m is not None else mw
        if bits_in:
            out.append((0, lanes))
        else:
            mag = max(abs(in_lo), abs(in_hi))
            if p.b is None:  # sum of m * x: signs are the input's own
                out.append((lanes * min(in_lo, 0), lanes * max(in_hi, 0)))
            else:
                out.append((-lanes * mag, lanes * mag))
    return out
