"""Backend tables of the compressed-family layers (ir.family_ops): weight codes, epilogues, new ops.

The math is unchanged; every table is derived from the IR exactly.

Family convolutions compute a 64-bit integer accumulator per output channel, then apply their
epilogue. Ways to accumulate:
- bit inputs ("xnor" for the binary code, "masks" for ternary, two-scale, multi-base and int
  codes): the weights as popcount planes (compiler/weight_planes.py, shared with the hardware
  backends), with x the window's words (bit 1 = -1, padded taps and fill bits 0):
      acc[o] = A[class][o] + window_gain[o] * popcount(x) + sum_j gain_j[o] * s_j[o]
      s_j = popcount(x XOR b_j)  ("xnor"),  popcount((x XOR b_j) AND m_j)  ("masked_xnor"),
            popcount(x AND m_j)  ("and"),   all sums over the window's words,
  where A (weight_planes.plane_offsets) holds the bias and what the padded taps and the planes'
  constant parts contribute. One popcount per plane and output: a ternary base with one scale
  is one masked XNOR plane (not two AND masks), a two-scale +-1 base one AND plane plus the
  window's own popcount, shared by every output. Plane tables are blocked
  [o_pad / BLOCK][taps][BLOCK] (BLOCK = 8 outputs, one 512-bit vector of 64-bit words);
- integer inputs ("int"): acc = sum int_w * x + corr. When max|x| * max_o sum|w[o]| < 2**31 the
  sum is exact in 32 bits ("acc32"); with int8 weights it then runs on bnnc_kernels.h's
  bnnc_int_mac (weights blocked [o_pad / 32][taps][32]); host builds (64-bit words) read each
  window in place from the input image with its zero padding materialized, and with AVX-512 VNNI
  run bnnc_int_mac_vnni on bytes u = x - off (off = min(lo, 0), so 0 <= u <= 255 also for the
  padding, where x = 0): sum w * x = sum w * u + off * sum w, the last term in vnni_corr (int32);
  its table is [o_pad / 32][kh][g][32][4], each window row's kw * c bytes in g groups of 4, zero
  weights after them. Otherwise int64 sums of int32 weights [taps][o_pad] (int8 where they
  fit), on hosts also read in place from the padded image (bnnc_int_mac64);
- "ternary_sums" (host builds, stride 1, where the int64 kernels would run, every output
  channel's nonzero weights two values at most: ternary {-w_n, 0, +w_p}): no multiplies,
      acc[o] = corr[class][o] + a[o] * sum over list A_o of x + b[o] * sum over list B_o of x,
  the lists naming only the nonzero taps (zero weights skipped, about 2/3 of a TTQ layer). The
  input becomes an image of C planes of int32 (channel after channel, the padded rows pw apart,
  sharing their zero columns), so that tap (c, ky, kx) of position q = oy * pw + ox is plane
  value q + c * plen + ky * pw + kx (+ a constant where the right padding is the wider):
  one list offset per tap, and 64 consecutive positions (the columns oy * pw + ow .. pw - 1 past
  a row's end are computed and dropped; the last pass as many as are left, in vectors of 8) are
  eight vector adds per tap (bnnc_ternary_sums64). The
  sums stay exact in int64: |a * S_A| + |b * S_B| <= max|x| * sum |w| < 2**62 is checked;
- "sparse_int" (expander lists): with 32-bit words (MCU firmware) only the listed (o, c) kernels
  are visited (int32 sums under the same bound); host builds multiply the dense table, zero
  kernels included, on the padded image as above, which with 8 to 64 lanes per vector is cheaper
  than walking lists (the same sums: the kernels not listed are zero).

Epilogues on acc: "bits" (bit = (acc > thr[j]) ^ neg[j], j = p * O + o for activation-base
planes), "levels" (base + step * #levels passed, thresholds level-major [B][O]: counted, or for
many levels searched, or guessed by an affine map proved within one level and settled by two
thresholds; see _level_tables), "requant" (ir.Requantize) and "reals" (the float32 chain on
(float)acc). Per-channel rows read by the vector epilogues are padded to whole groups of 8.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import ir
from ..errors import BnncError
from ..weight_planes import lane_valid, plane_offsets, popcount_planes
from .fold_batchnorm_into_thresholds import _epilogue_range
from .pack_bits import (OBLOCK, PackedConv, blocked, border_classes, comparison_tables, int16_pair_weights,
                        pack_bit_rows, vnni_weights, words)

BLOCK = 8  # BNNC_FAM_OBLOCK in runtime/bnnc_families.h: outputs per block of the plane tables
INT_BLOCK = OBLOCK  # BNNC_OBLOCK in runtime/bnnc_kernels.h: outputs per block of bnnc_int_mac(_vnni)
INT64_WINDOWS = 4  # output pixels per pass of bnnc_int_mac64 on the image (runtime/bnnc_families.h)
TSUM_POSITIONS = 64  # BNNC_TSUM_Q in runtime/bnnc_families.h: positions per pass of bnnc_ternary_sums64

BIG = 2**62  # a threshold no 64-bit accumulator of a real layer reaches


@dataclass
class BitPlane:
    kind: str  # "xnor" | "masked_xnor" | "and"
    tables: list  # indices into pack_bits.PackedConv.weights: [b] | [b, m] | [m]
    gain: np.ndarray  # int64 (O8,)


@dataclass
class PackedActivation:
    epilogue: str  # "bits" | "levels" | "requant"
    c: int
    thr: Optional[np.ndarray] = None
    neg: Optional[np.ndarray] = None
    cw_out: int = 0
    direction: Optional[np.ndarray] = None
    levels: Optional[np.ndarray] = None  # levels: int64 (B, C), level-major ((B + 2, C) for "guess")
    level_kernel: str = ""
    level_guess: Optional[np.ndarray] = None


def _align64(n: int) -> int:
    return -(-n // 64) * 64


def _threshold_tables(th: ir.Thresholds):
    """comparison_tables on the accumulator itself (64-bit, so constants compare against BIG); neg
    ends with 8 zero flags that no channel uses (the vector epilogue reads 8 flags at a time)."""
    thr, neg = comparison_tables(th, never=BIG)
    return thr, np.concatenate([neg, np.zeros(8, np.uint8)])


SEARCH_LEVELS = 8  # above this many levels per channel, a search beats counting them all
GUESS_SHIFT = 16  # fixed-point bits of the "guess" kernel's affine map


def _level_guess(t: np.ndarray, xlo: int, xhi: int):
    """(a, b, M, K) of the "guess" kernel for one channel's non-decreasing thresholds t and the
    reachable x = direction * acc in [xlo, xhi], or None. With x' = clamp(x, a, b) (the count
    #{t <= x} is constant outside [a, b]: a and b enclose the thresholds inside the range) and
        g = clamp(floor(((x' - a) * M + K) / 2**GUESS_SHIFT), 0, B),
    |g - count(x')| <= 1 for every x' in [a, b], so count = g - 1 + [x' >= t[g-1]] + [x' >= t[g]]
    (t[-1] = -inf, t[B] = +inf). Checked, not assumed: on an interval where the count is constant
    g - count is smallest at its first and largest at its last point (M >= 0), and those points
    are a, b, every threshold inside and every threshold - 1 inside."""
    inner = t[(t > xlo) & (t <= xhi)]
    a, b = (max(xlo, int(inner[0]) - 1), min(xhi, int(inner[-1]))) if inner.size else (xlo, xlo)
    one = 1 << GUESS_SHIFT
    c_a, c_b = np.searchsorted(t, [a, b], side="right")
    m = int(round(one * int(c_b - c_a) / max(b - a, 1)))
    if b - a >= 2**32 or m >= 2**32 or (b - a) * m >= 2**60:
        return None
    pts = np.unique(np.clip(np.concatenate([t, t - 1, [a, b]]), a, b)).astype(np.int64)
    count = np.searchsorted(t, pts, side="right").astype(np.int64)
    v = (pts - a) * m
    k_lo, k_hi = int(np.max((count - 1) * one - v)), int(np.min((count + 2) * one - v - 1))
    if k_lo > k_hi:
        return None
    return a, b, m, (k_lo + k_hi) // 2


def _level_tables(ep: ir.LevelThresholds, name: str, acc_lo: np.ndarray, acc_hi: np.ndarray):
    """direction (8 unused zero flags at the end, as neg), the thresholds level-major (B, O), the
    kernel and its guess table. "count" counts the levels passed, #{b : d * acc >= thr[b]} (the
    reference's definition, for any thresholds); when every row is non-decreasing (checked here)
    and there are many levels, "guess" (see _level_guess; its table has rows a, b, M, K and the
    thresholds get a first row a, never above x', and a last row b + 1, always above) or else
    "search" (a binary
    search for the first level not passed) give the same number."""
    if ep.planes != 1:
        raise BnncError(f"layer '{name}': multi-level outputs of several activation planes are not supported "
                        "by the C target")
    thr = ep.threshold.astype(np.int64)
    direction = np.concatenate([ep.direction.astype(np.int8).ravel(), np.zeros(8, np.int8)])
    if not (np.all(np.diff(thr, axis=1) >= 0) and thr.shape[1] > SEARCH_LEVELS):
        return direction, np.ascontiguousarray(thr.T), "count", None
    d = ep.direction.astype(np.int64)
    xlo, xhi = np.where(d > 0, acc_lo, -acc_hi), np.where(d > 0, acc_hi, -acc_lo)
    guesses = [_level_guess(thr[o], int(xlo[o]), int(xhi[o])) for o in range(thr.shape[0])]
    if any(g is None for g in guesses):
        return direction, np.ascontiguousarray(thr.T), "search", None
    guess = np.array(guesses, np.int64).T.copy()
    padded = np.concatenate([guess[:1], thr.T, guess[1:2] + 1])
    return direction, padded, "guess", guess


def _lanes8(v: np.ndarray, fill=None) -> np.ndarray:
    """A per-channel int64 row padded to a multiple of 8 channels (with `fill`, else its first
    value): the accumulator rows are computed in whole groups of 8, as the vector epilogues read
    them."""
    v = np.asarray(v, np.int64).ravel()
    pad = -v.size % 8
    return np.concatenate([v, np.full(pad, v[0] if fill is None else fill, np.int64)])


def _pack_bit_planes(p: PackedConv, op: ir.Conv, valid: np.ndarray, bias: np.ndarray) -> None:
    o, kh, kw, c = op.w.shape
    planes = popcount_planes(op, True)
    p.o_pad = -(-o // BLOCK) * BLOCK
    ncls = valid.shape[0] * valid.shape[1]
    p.corr = plane_offsets(planes, bias.reshape(ncls, o), lane_valid(valid.reshape(ncls, kh, kw), c), True)

    def table(bits: np.ndarray) -> int:  # bool (O, kh * kw * c) -> blocked words; its index
        signs = np.where(bits, -1, 1).reshape(o, kh * kw, c)
        p.weights.append(blocked(pack_bit_rows(signs, p.word_bits).reshape(o, -1), p.o_pad, BLOCK))
        return len(p.weights) - 1

    for pl in planes:
        if pl.kind == "ones":
            p.window_gain = _lanes8(pl.gain)
            continue
        idx = ([table(pl.b)] if pl.b is not None else []) + ([table(pl.m)] if pl.m is not None else [])
        p.bit_planes.append(BitPlane(pl.kind, idx, _lanes8(pl.gain)))


def _pack_int(p: PackedConv, op: ir.Conv, src: ir.Ints, int_w: np.ndarray) -> None:
    o, kh, kw, c = int_w.shape
    rows = int_w.reshape(o, -1).astype(np.int64)
    mag = max(abs(src.lo), abs(src.hi))
    p.acc32 = mag * int(np.abs(rows).sum(axis=1).max(initial=0)) < 2**31
    p.int8_weights = bool(np.all((rows >= -128) & (rows <= 127)))
    if p.acc32 and p.int8_weights:
        p.o_pad = -(-o // INT_BLOCK) * INT_BLOCK
        p.weights = [blocked(rows.astype(np.int8), p.o_pad, INT_BLOCK)]
        # host builds (64-bit words) read windows in place from the padded input image
        p.image = p.word_bits == 64
        off = min(src.lo, 0)
        g = -(-kw * c // 4)  # groups of 4 bytes per window row
        if p.word_bits == 64 and max(src.hi, 0) - off <= 255 and 255 * 128 * kh * 4 * g < 2**31:
            p.weights_vnni, corr = vnni_weights(int_w.reshape(o, kh, kw * c), p.o_pad, off)
            p.vnni_offset = off
            p.vnni_corr = corr.astype(np.int32)
    else:
        p.o_pad = -(-o // BLOCK) * BLOCK
        wt = np.zeros((p.taps, p.o_pad), np.int8 if p.int8_weights else np.int32)  # int8 where they fit
        wt[:, :o] = rows.T
        p.weights = [wt]


def ternary_sums(op: ir.Conv, src: ir.Ints, int_w: np.ndarray, corr: np.ndarray) -> Optional[dict]:
    """The tables of the "ternary_sums" method (module docstring) where it is exact, else None:
    {"a", "b": int64 (O8,) the two weights of each channel (0 where a list is empty), "start":
    int32 (2 * O8 + 1,) where each channel's lists A and B start in "off", "off": int32 (nnz,) the
    taps' plane offsets, ascending within a list, "plen": values per plane, "pw": values per row,
    "zeros": zero columns before each row's iw values, "nq": positions computed (the last output's
    + 1), "image": int32 values of the plane image (the planes, then zeros read by the last
    pass)}. The rows share their padding: the zero columns before a row are the left padding of
    its windows and the right padding of the row above's (pw = iw + max(left, right) instead of
    iw + left + right: fewer dropped positions). Only where the accumulator provably fits int64 with room to
    spare (|x| * sum |w| + |corr| < 2**62, the same bound for the dropped positions, which add
    as many input values as a real window), and where a quarter of the weights or more are zero
    (a dense layer's lists would save no work: the image and the epilogue's order cost more)."""
    if tuple(op.stride) != (1, 1):
        return None
    o, kh, kw, c = int_w.shape
    rows = int_w.reshape(o, -1).astype(np.int64)
    if 4 * np.count_nonzero(rows) > 3 * rows.size:  # lists pay where they skip zeros (dense layers: the MACs)
        return None
    mag = max(abs(src.lo), abs(src.hi))
    if mag * int(np.abs(rows).sum(axis=1).max(initial=0)) + int(np.abs(corr).max(initial=0)) >= 2**62:
        return None
    ih, iw = src.shape[:2]
    t, left, b, r = op.pads
    zeros = max(left, r)  # zero columns before each row: the left padding, and the right one of the row above
    ph, pw = ih + t + b, iw + zeros
    oh, ow = ph - kh + 1, iw + left + r - kw + 1
    plen = ph * pw
    ky, kx, ch = np.meshgrid(np.arange(kh), np.arange(kw), np.arange(c), indexing="ij")
    tap_off = (ch * plen + ky * pw + kx + zeros - left).reshape(-1)  # int_w's (ky, kx, c) order
    o8 = -(-o // BLOCK) * BLOCK
    wa, wb = np.zeros(o8, np.int64), np.zeros(o8, np.int64)
    start, off = [0], []
    for i in range(o8):
        vals = np.unique(rows[i][rows[i] != 0]) if i < o else np.zeros(0, np.int64)
        if vals.size > 2:
            return None
        for j, v in enumerate(vals):
            (wa if j == 0 else wb)[i] = v
            off.extend(sorted(tap_off[rows[i] == v].tolist()))
            start.append(len(off))
        start.extend([len(off)] * (2 - vals.size))
    nq = (oh - 1) * pw + ow
    last = (nq - 1) // TSUM_POSITIONS * TSUM_POSITIONS  # the last pass's first position
    image = max(c * plen, last + TSUM_POSITIONS + int(tap_off.max(initial=0)))
    return {"a": wa, "b": wb, "start": np.array(start, np.int32), "off": np.array(off or [0], np.int32),
            "plen": plen, "pw": pw, "zeros": zeros, "nq": nq, "image": image}


def pack_family_conv(op: ir.Conv, src, word_bits: int, acc_range=None, layout: str = "blocked") -> PackedConv:
    o, kh, kw, c = op.w.shape
    ycls, xcls, valid, bias = border_classes(op, src.shape[:2])
    ny, nx = valid.shape[:2]
    int_w = ir.int_weights(op)
    bits_in = isinstance(src, ir.Bits)
    p = PackedConv(op.code, True, "bits" if bits_in else "ints", word_bits, 0, 0, o, 0, kh * kw * c, ycls, xcls,
                   ny, nx, np.zeros(0), layout=layout)
    if bits_in:
        p.cw_in = words(c, word_bits)
        p.taps = kh * kw * p.cw_in
        p.method = "xnor" if op.code == "binary" else "masks"
        _pack_bit_planes(p, op, valid, bias)
        counts = 4 * p.o_pad * max(1, len(p.bit_planes))
        window = p.taps * word_bits // 8
    else:
        p.cw_in, p.taps = c, kh * kw * c
        p.corr = bias.reshape(ny * nx, o)
        if np.abs(int_w).max(initial=0) >= 2**31:
            raise BnncError(f"layer '{op.source_ops[0]}': integer weights beyond 32 bits on an integer input")
        _pack_int(p, op, src, int_w)
        # the dense table (vectors on hosts, int8 where the weights fit) unless most kernels are
        # zero (depthwise and pooling convolutions): lists of the kept kernels then
        kept = sum(len(x) for x in op.in_lists) if op.in_lists is not None else o * c
        p.method = "int" if op.in_lists is None or 8 * kept > o * c else "sparse_int"
        if p.method == "int" and p.word_bits == 64:  # int64 sums too: windows read in place on hosts
            p.image = True
        if p.method == "sparse_int" and p.image and all(len(x) == 1 for x in op.in_lists):
            # one channel per output: kh * kw multiplies per output instead of the dense row
            chan = np.zeros(p.o_pad, np.int32)
            chan[:o] = [int(x[0]) for x in op.in_lists]
            wd = np.zeros((kh * kw, p.o_pad), np.int8)
            wd[:, :o] = int_w[np.arange(o), :, :, chan[:o]].reshape(o, kh * kw).T
            p.depthwise = {"chan": chan, "w": wd, "gather": not (o == c and np.array_equal(chan[:o], np.arange(o)))}
            p.weights_vnni = p.vnni_offset = None  # the image stays int32
        # the layers the int64 kernels would run (int32 sums need int8 weights too): ternary lists?
        if p.word_bits == 64 and layout == "blocked" and not (p.acc32 and p.int8_weights) and p.depthwise is None:
            p.tsums = ternary_sums(op, src, int_w, p.corr)
            if p.tsums is not None:
                p.method, p.image, p.o_pad, p.sparse = "ternary_sums", False, -(-o // BLOCK) * BLOCK, None
                p.weights = [p.tsums["off"], p.tsums["start"]]
        if p.method == "sparse_int" and not p.image:
            start, chan, wts = [0], [], []
            for i in range(o):
                for ch in op.in_lists[i]:
                    chan.append(int(ch))
                    wts.append(int_w[i, :, :, ch].reshape(-1))
                start.append(len(chan))
            p.sparse = {"start": np.array(start, np.int32), "chan": np.array(chan or [0], np.int32),
                        "w": np.concatenate(wts).astype(np.int32) if wts else np.zeros(1, np.int32)}
        ih, iw = src.shape[:2]
        im_c = o if p.depthwise is not None and p.depthwise["gather"] else c  # values per pixel of the image
        pixels = (ih + op.pads[0] + op.pads[2]) * (iw + op.pads[1] + op.pads[3]) * im_c  # padded image
        window = max(4 * pixels if p.image else 4 * p.taps, pixels + 4 if p.weights_vnni is not None else 0)
        if p.tsums is not None:  # the plane image, int32
            window = 4 * p.tsums["image"]
        if (p.method == "int" and layout == "rows" and p.acc32 and -(2**15) <= src.lo and src.hi < 2**15
                and np.abs(int_w).max(initial=0) < 2**15):
            # MCU builds ("rows"): the int16-pair kernel (pack_bits.int16_pair_weights) on a band of kh input rows
            p.pairs, p.row_pairs = True, -(-kh * kw * c // 2)
            p.o_pad = -(-o // BLOCK) * BLOCK
            p.weights = [int16_pair_weights(int_w.transpose(0, 2, 1, 3).reshape(o, -1))]
            window = (kh * (iw + op.pads[1] + op.pads[3]) * c + 2) * 2
        counts = 4 * p.o_pad  # int32 sums
        if p.tsums is not None:  # the sums of one pass: O8 rows of TSUM_POSITIONS int64
            counts = 8 * p.o_pad * TSUM_POSITIONS
    p.corr = np.stack([_lanes8(row, 0) for row in p.corr.astype(np.int64)])
    if p.method == "int" and p.image and not p.acc32:
        ow = (src.shape[1] + op.pads[1] + op.pads[3] - kw) // op.stride[1] + 1
        p.windows = min(INT64_WINDOWS, ow)
    p.sums_offset = _align64(8 * p.o_pad * p.windows)
    p.window_offset = p.sums_offset + _align64(counts)
    p.scratch_bytes = p.window_offset + _align64(window)
    ep = op.epilogue
    if isinstance(ep, ir.Thresholds):
        p.epilogue = "bits"
        p.thr, p.neg = _threshold_tables(ep)
        p.planes = ep.planes
        p.cw_out = words(o * ep.planes, word_bits)
    elif isinstance(ep, ir.LevelThresholds):
        p.epilogue = "levels"
        p.direction, p.levels, p.level_kernel, p.level_guess = _level_tables(ep, op.source_ops[0], *acc_range)
    elif isinstance(ep, ir.Requantize):
        p.epilogue = "requant"
    else:
        p.epilogue = "reals"
    return p


def pack_activation(op: ir.Activation, src, word_bits: int, acc_range=None) -> PackedActivation:
    c = src.shape[2]
    ep = op.epilogue
    if isinstance(ep, ir.Thresholds):
        thr, neg = _threshold_tables(ep)
        return PackedActivation("bits", c, thr, neg, words(c, word_bits))
    if isinstance(ep, ir.LevelThresholds):
        direction, levels, kernel, guess = _level_tables(ep, op.name, *acc_range)
        return PackedActivation("levels", c, direction=direction, levels=levels, level_kernel=kernel,
                                level_guess=guess)
    if isinstance(ep, ir.Requantize):
        return PackedActivation("requant", c)
    raise BnncError(f"activation '{op.name}' has an unfolded epilogue")


def pack_family(op, graph: ir.Graph, word_bits: int, layout: str = "blocked"):
    """The `packed` tables of one family op (None for ops that need none); `layout` as pack_bits'
    ("rows": MCU builds, where integer layers may take the int16-pair kernel)."""
    src = graph.tensors.get(op.inputs[0])
    acc_range = _epilogue_range(graph, op) if isinstance(getattr(op, "epilogue", None), ir.LevelThresholds) else None
    if isinstance(op, ir.Conv):
        return pack_family_conv(op, src, word_bits, acc_range, layout)
    if isinstance(op, ir.Activation):
        return pack_activation(op, src, word_bits, acc_range)
    return None
