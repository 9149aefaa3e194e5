"""Pack bits and derive the integer tables the generated kernels use.

Layout (the one documented in IR.md, LCE's convention): a bit tensor (H, W, C) is stored pixel by
pixel, each pixel's C channels in CW = ceil(C / WB) words of WB bits, channel c in word c // WB at
bit c % WB, bit 1 = -1, fill bits 0. Fill bits are 0 in both weights and activations, so XOR leaves
them 0 and they never count.

Weights of a Conv are packed per tap like activations (L = kh * kw * CW words per output channel,
or L = kh * kw * C integers when the input is integer) and stored in one of two layouts:
- "blocked" (host C): [O_pad / 32][L][32], output channels padded with zero filters to O_pad, a
  multiple of OBLOCK = 32, so that a kernel streams one contiguous block per 32 outputs and
  vectorizes across them;
- "rows" (MCU firmware): [O][L], one contiguous row per output channel, so that a scalar kernel
  walks one filter at a time with post-incremented loads (O_pad = O: no padded filters, and
  threshold rows of O entries). When C is not a multiple of WB, a binary layer's row is "dense":
  the filter's kh * kw * C bits back to back in (ky, kx, c) order, L = ceil(K / WB) words instead
  of kh * kw * CW, and the kernel builds each window the same way (fill bits only at the end).
  Integer-input rows whose inputs fit int16 are "pairs" (int16_pair_weights): int16 weight
  pairs, 8 (then 6, 4 or 2) output channels interleaved, for the dual 16-bit multiply-accumulate (SMLAD)
  of Cortex-M4/M7 on a band of the input rows converted to int16 (bnnc_int16_mac).
Integer-input layers that AVX-512 VNNI can run (`vnni_offset` is not None) also get
`weights_vnni` [O_pad / 32][kh][G][32][4]: each kernel row's kw * C weights padded with zeros to
G = ceil(kw * C / 4) groups of 4 for `vpdpbusd`, which multiplies 4 unsigned bytes
u = x - vnni_offset by 4 signed weights; then sum_l x_l * w_l = sum_l u_l * w_l + vnni_offset *
sum_l w_l, the second term being `vnni_corr` (the zero weights make whatever bytes follow a
window row irrelevant). `acc16` says the integer accumulator provably fits int16
(L * max|x| <= 32767, |w| <= 1).

Zero padding: a kernel reads a padded tap as a 0 word, i.e. as +1 values, then corrects exactly.
For output position (y, x) with valid-tap set V(y, x), and pc = popcount over the whole window,
    acc = sum over V of w * a + bias  =  K - 2 * pc - sum over padded taps of sum_c w  +  bias(V)
with K = kh * kw * C. V depends on y and x only through row and column *classes* (rows whose
valid ky-set is equal share a class), so the correction is a small table corr[class][o].

Epilogues become one comparison per output: bit = (s > thr[class][o]) XOR neg[o], where s is the
popcount (binary inputs) or the integer accumulator (integer inputs); constants are unconditional.
`thr` rows are padded to O_pad with a value s never exceeds and `neg_words` packs neg 32 outputs
per uint32 (0 in the padding), so padded outputs always give fill bits 0.
Real outputs keep acc = kmul[o] * (K - 2 * pc) + corr[class][o] (kmul 0 for all-zero filters).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .. import ir
from ..errors import BnncError
from .quantize_input import int_dtype_for

OBLOCK = 32  # output channels per kernel block; blocked weights are padded to a multiple of it
LAYOUTS = ("blocked", "rows")

INT32_MAX = 2**31 - 1
THR_NEVER = INT32_MAX // 2  # a threshold no popcount or accumulator exceeds (checked below)
INT16_MAX = 2**15 - 1


@dataclass
class PackedConv:
    """The packed tables of one convolution, every weight code (IR.md, "Packed convolutions"). Two
    kernel sets read it, told apart by `acc64`:
    - False (pack_conv: binary code, one bit-output plane or a float chain): the popcount or a
      32-bit sum is compared against thresholds per border class (thr (ny * nx, O_pad)), real
      outputs are kmul * (K - 2 pc) + corr;
    - True (pack_families.pack_family_conv: any code, every epilogue): a 64-bit accumulator per
      channel, A[class] + the planes' counts times their gains or the integer sum + corr, then the
      epilogue (thr, neg (planes * O + 8,) on the accumulator itself, levels, requant, reals).
    The fields after `planes` belong to the kernel set or kernels their comments name."""

    code: str  # the weight code (ir.Conv.code): "binary", "ternary", "two_scale", "multi_base", "int"
    acc64: bool  # see above
    in_kind: str  # "bits" | "ints"
    word_bits: int
    cw_in: int  # words per input pixel (bits) or channels (ints)
    taps: int  # L: words (bits) or values (ints) per window
    o: int
    o_pad: int  # output channels padded to the weight table's block (O itself in pack_conv's "rows" layout)
    k_full: int  # kh * kw * C
    ycls: np.ndarray  # (OH,) border class of each output row
    xcls: np.ndarray  # (OW,)
    ny: int
    nx: int
    corr: np.ndarray  # int64 (ny * nx, O) (acc64: (ny * nx, O rounded up to 8)): see the module docstrings
    weights: list = field(default_factory=list)  # the weight tables; not acc64: [one table], uint64 / uint32 /
    #   int8: (O_pad / 32, L, 32) "blocked" or (O, L) "rows"; acc64: see pack_families
    layout: str = "blocked"
    epilogue: str = ""  # "bits" | "levels" (acc64) | "requant" (acc64) | "reals"
    thr: Optional[np.ndarray] = None  # bit outputs: int64 (ny * nx, O_pad), THR_NEVER padding (acc64: (planes * O,))
    neg: Optional[np.ndarray] = None  # bit outputs: uint8 (O,) (acc64: (planes * O + 8,))
    cw_out: int = 0  # words per output pixel (bit outputs)
    planes: int = 1  # acc64 bit outputs: activation planes of the accumulator
    # not acc64
    kmul: Optional[np.ndarray] = None  # int8 (O,) for real outputs
    neg_words: Optional[np.ndarray] = None  # uint32 (O_pad / 32,): bit j of word b = neg[32 b + j]
    acc16: bool = False  # integer input: the accumulator provably fits int16
    dense: bool = False  # "rows" binary layers: the window's kh * kw * C bits packed back to back
    init: Optional[np.ndarray] = None  # pairs: int16_pair_init
    # integer inputs, both kernel sets
    vnni_offset: Optional[int] = None  # u = x - offset is a byte for every x (and 0): VNNI tables exist
    weights_vnni: Optional[np.ndarray] = None  # int8 (O_pad / 32, kh, G, 32, 4)
    vnni_corr: Optional[np.ndarray] = None  # (O_pad,): offset * sum of the filter's weights (acc64: int32)
    pairs: bool = False  # "rows" integer layers with int16 inputs: int16 pairs, see int16_pair_weights
    row_pairs: int = 0  # pairs: ceil(kh * kw * C / 2) weight words per window and channel
    # acc64 (pack_families): how the accumulator is built, its epilogue tables, its scratch
    method: str = ""  # "xnor" | "masks" | "int" | "sparse_int" | "ternary_sums"
    bit_planes: list = field(default_factory=list)  # bits: [pack_families.BitPlane]
    window_gain: Optional[np.ndarray] = None  # bits: int64 (O8,), the all-ones plane (None: absent)
    acc32: bool = False  # ints: the sum is exact in int32
    int8_weights: bool = False  # ints: weights fit int8 (bnnc_int_mac, VNNI)
    image: bool = False  # ints: windows read in place from the padded input image (int32; bytes on VNNI)
    # ints with int64 sums on the image: output pixels per kernel pass (bnnc_int_mac64 loads each
    # weight vector once for all of them), each with its own o_pad accumulators in the scratch
    windows: int = 1
    sparse: Optional[dict] = None  # listed sparse_int: {"start" (O+1,), "chan" (nnz,), "w" (nnz * kh * kw,)}
    # host sparse_int with one input channel per output (depthwise, pooling): bnnc_depthwise_mac32
    # on the image, {"chan" (o_pad,) int32, "w" (kh * kw, o_pad) int8, "gather" bool}; padded
    # outputs read channel 0 with zero weights. gather: the image holds channel chan[o] at place o
    # for o < O (copied once per pixel, so that the kernel reads each tap's values contiguously);
    # else chan is the identity and O == C (the image is the input's channels)
    depthwise: Optional[dict] = None
    tsums: Optional[dict] = None  # method "ternary_sums": pack_families.ternary_sums' tables
    direction: Optional[np.ndarray] = None  # levels: int8 (O + 8,)
    levels: Optional[np.ndarray] = None  # levels: int64 (B, O), level-major ((B + 2, O) for "guess")
    level_kernel: str = ""  # levels: "count" | "search" | "guess" (see pack_families._level_tables)
    level_guess: Optional[np.ndarray] = None  # "guess": int64 (4, O): a, b, M, K
    sums_offset: int = 0  # scratch: acc (int64 o_pad), int32 sums (o_pad per plane), then the window
    window_offset: int = 0
    scratch_bytes: int = 0


def words(c: int, word_bits: int) -> int:
    return max(1, -(-c // word_bits))


def pack_bit_rows(signs: np.ndarray, word_bits: int) -> np.ndarray:
    """(..., C) in {-1, +1, 0} -> (..., CW) words; bit 1 where the value is -1."""
    c = signs.shape[-1]
    cw = words(c, word_bits)
    bits = np.zeros(signs.shape[:-1] + (cw * word_bits,), dtype=np.uint64)
    bits[..., :c] = (signs < 0).astype(np.uint64)
    bits = bits.reshape(signs.shape[:-1] + (cw, word_bits))
    shifts = np.arange(word_bits, dtype=np.uint64)
    return np.bitwise_or.reduce(bits << shifts, axis=-1)


def unpack_bit_rows(packed: np.ndarray, c: int, word_bits: int) -> np.ndarray:
    """Inverse of pack_bit_rows for +-1 values."""
    shifts = np.arange(word_bits, dtype=np.uint64)
    bits = (packed[..., None] >> shifts) & np.uint64(1)
    bits = bits.reshape(packed.shape[:-1] + (-1,))[..., :c]
    return np.where(bits == 1, -1, 1).astype(np.int8)


def classes(n_out: int, n_in: int, k: int, stride: int, pad: int):
    """Class id per output row/col, and each class's valid-tap mask (n_cls, k)."""
    masks, ids = [], []
    for y in range(n_out):
        pos = y * stride - pad + np.arange(k)
        m = tuple(bool(v) for v in (pos >= 0) & (pos < n_in))
        if m not in masks:
            masks.append(m)
        ids.append(masks.index(m))
    return np.array(ids, dtype=np.int64), np.array(masks, dtype=bool)


def border_classes(op: ir.Conv, in_hw: tuple):
    """(ycls (OH,), xcls (OW,), valid (ny, nx, kh, kw), bias (ny, nx, O)) of a Conv on an input of
    in_hw: the border class of every output row / column, each class's valid taps, and the sum of
    bias_kernel over them (bias(V) of the class)."""
    kh, kw = op.kernel
    oh, ow = ir.out_shape(tuple(in_hw), op.kernel, op.stride, op.pads)
    ycls, ymask = classes(oh, in_hw[0], kh, op.stride[0], op.pads[0])
    xcls, xmask = classes(ow, in_hw[1], kw, op.stride[1], op.pads[1])
    valid = ymask[:, None, :, None] & xmask[None, :, None, :]
    bias = np.zeros(valid.shape[:2] + (op.w.shape[0],), np.int64)
    if op.bias_kernel is not None:
        bias = np.einsum("yxhw,ohw->yxo", valid.astype(np.int64), op.bias_kernel.astype(np.int64))
    return ycls, xcls, valid, bias


def pack_conv(op: ir.Conv, src, word_bits: int, layout: str = "blocked") -> PackedConv:
    o, kh, kw, c = op.w.shape
    ycls, xcls, valid, bias = border_classes(op, src.shape[:2])
    ny, nx = valid.shape[:2]
    wsum = op.w.astype(np.int64).sum(axis=3)  # o, kh, kw: sum over channels per tap
    o_pad = -(-o // OBLOCK) * OBLOCK
    bits_in = isinstance(src, ir.Bits)
    if bits_in:
        cw = words(c, word_bits)
        # padded taps read as +1: subtract their contribution
        corr = bias - np.einsum("yxhw,ohw->yxo", (~valid).astype(np.int64), wsum)
        rows = pack_bit_rows(op.w, word_bits).reshape(o, -1)  # o, kh * kw * cw
        dense_rows = pack_bit_rows(op.w.reshape(o, -1), word_bits)  # o, ceil(K / WB): no fill between taps
        dense = layout == "rows" and dense_rows.shape[1] < rows.shape[1]
        if dense:
            rows = dense_rows
        zero_rows = ~np.any(op.w.reshape(o, -1) != 0, axis=1)
        wdtype = np.uint64 if word_bits == 64 else np.uint32
    else:
        cw = c
        corr = bias
        rows = op.w.reshape(o, -1).astype(np.int8)
        zero_rows = np.zeros(o, bool)
        wdtype = np.int8
        dense = False
    if layout == "rows":
        o_pad = o  # scalar kernels walk the real filters only
    taps = rows.shape[1]
    weights = rows.astype(wdtype) if layout == "rows" else blocked(rows, o_pad).astype(wdtype)
    pairs = layout == "rows" and not bits_in and -2**15 <= src.lo and src.hi < 2**15
    if pairs:  # windows in (kx, ky, c) order: the band's columns one after the other
        lanes = int16_pair_lanes(o, word_bits if isinstance(op.epilogue, ir.Thresholds) else 0)
        wl = np.zeros((o + o % 2, kh * kw * c), np.int64)
        wl[:o] = op.w.transpose(0, 2, 1, 3).reshape(o, -1)
        weights = int16_pair_weights(wl[lanes])
    corr = corr.reshape(ny * nx, o)
    k_full = kh * kw * c
    p = PackedConv(op.code, False, "bits" if bits_in else "ints", word_bits, cw, taps, o, o_pad, k_full,
                   ycls, xcls, ny, nx, corr, [weights], layout=layout, dense=dense, pairs=pairs)
    if not bits_in:
        xmax = max(abs(src.lo), abs(src.hi))
        p.acc16 = taps * xmax <= INT16_MAX
        off = min(src.lo, 0)  # padded taps read x = 0, which must map to a byte too
        if max(src.hi, 0) - off <= 255 and layout == "blocked":
            p.vnni_offset = int(off)
            p.weights_vnni, p.vnni_corr = vnni_weights(rows.reshape(o, kh, kw * c), o_pad, off)
    ep = op.epilogue
    if isinstance(ep, ir.Thresholds):
        thr, neg = comparison_tables(ep, corr, k_full if bits_in else None)
        p.epilogue = "bits"
        p.thr = np.full((ny * nx, o_pad), THR_NEVER, np.int64)
        p.thr[:, :o] = thr
        p.neg = neg
        p.neg_words = neg_words(neg, -(-o_pad // OBLOCK) * OBLOCK)
        p.cw_out = words(o, word_bits)
        # s > THR_NEVER must be impossible: s is at most K (popcount) or L * max|x| + max|corr|
        s_max = k_full if bits_in else taps * max(abs(src.lo), abs(src.hi))
        if s_max >= THR_NEVER:
            raise BnncError(f"layer '{op.source_ops[0] if op.source_ops else op.name}': accumulator range "
                            "exceeds the 32-bit threshold tables")
    else:
        p.epilogue = "reals"
        p.kmul = np.where(zero_rows, 0, 1).astype(np.int8)
    if pairs:
        p.row_pairs = -(-k_full // 2)
        p.init = int16_pair_init(p.corr, p.thr, o)[:, lanes]
    for name, arr in (("corr", p.corr), ("thr", p.thr)):
        if arr is not None and arr.size and np.abs(arr).max() > THR_NEVER:
            raise BnncError(f"layer '{op.source_ops[0]}': {name} table exceeds 32-bit range")
    return p


def pair_groups(o: int) -> tuple:
    """(groups of 8, size of the tail group: 0, 4 or 6, groups of 2: 0 or 1) output channels of the
    int16-pair kernel: O rounded up to even, in groups of 8; 4 or 6 channels left over form one
    group of their own, run like the groups of 8 (per pair of taps one load of the window, 2 loads
    of weights, 4 or 6 SMLADs: 7 or 9 instructions where groups of 2 take 8 or 12, and fewer
    around the call, measured on Cortex-M4 from windows of 1 pair on), 2 form a group of 2."""
    even = o + o % 2
    tail = even % 8
    return even // 8, tail if tail >= 4 else 0, 1 if tail == 2 else 0


def int16_pair_lanes(o: int, word_bits: int) -> np.ndarray:
    """The output channel each lane of the int16-pair kernel computes (lanes in kernel order: per
    output word groups of 8, then of 2; values >= O are padding). Bit outputs of 32-bit words
    (word_bits == 32) gather the sign bits of a group of 8 with bnnc_signs8 (lane 2j on bit
    15 - j, lane 2j + 1 on bit 31 - j) into b = (b >> 4) | signs; a word of g < 4 such groups then
    moves its two halves side by side, and the channels left over in a last partial word (a tail
    group of 4 or 6, groups of 2: pair_groups) follow them one bit at a time, in channel order.
    Other outputs keep channel order."""
    if word_bits != 32:
        return np.arange(o + o % 2)
    lanes = []
    for base in range(0, o, 32):
        even = min(32, o - base)
        even += even % 2
        g8 = even // 8
        for q in range(g8):
            for m in range(8):
                raw = (31 if m % 2 else 15) - m // 2 - 4 * (g8 - 1 - q)
                lanes.append(base + raw - (32 - 8 * g8 if m % 2 else 16 - 4 * g8))
        lanes += [base + 8 * g8 + i for i in range(even % 8)]
    return np.array(lanes, np.int64)


def int16_pair_weights(w: np.ndarray) -> np.ndarray:
    """Integer weights (O, K) of windows of K taps (|w| < 2**15) -> the uint32 table of the
    int16-pair kernel (bnnc_int16_mac): the output channels in groups of 8, then one tail group of
    4 or 6, then groups of 2 (pair_groups), each group (ceil(K / 2), G): per pair g of taps
    (2g, 2g + 1) the group's channels' int16 pairs (tap 2g in the low half). Padded taps and
    channels have zero weights."""
    o, k = w.shape
    n = -(-k // 2)
    g8, gt, g2 = pair_groups(o)
    padded = np.zeros((8 * g8 + gt + 2 * g2, 2 * n), np.int64)
    padded[:o, :k] = w
    half = (padded & 0xFFFF).astype(np.uint64).reshape(-1, n, 2)
    words = (half[..., 0] | (half[..., 1] << np.uint64(16))).astype(np.uint32)  # (O_even, n)
    parts, at = [], 0
    for size, count in ((8, g8), (gt, 1 if gt else 0), (2, g2)):
        parts.append(words[at:at + size * count].reshape(count, size, n).transpose(0, 2, 1).ravel())
        at += size * count
    return np.concatenate(parts)


def int16_pair_init(corr: np.ndarray, thr: Optional[np.ndarray], o: int) -> np.ndarray:
    """int32 (classes, O rounded up to even): the int16-pair kernel's accumulator start per border
    class and channel. Real outputs: corr (acc = s + corr). Bit outputs: -thr - 1, so that the sum
    r = s - thr - 1 is negative exactly when s <= thr: bit = sign(r) XOR NOT neg (no comparison);
    |s| and |thr| are below 2**30 (pack_conv checks), so every partial sum fits int32."""
    init = np.zeros((corr.shape[0], o + o % 2), np.int64)
    init[:, :o] = corr if thr is None else -thr[:, :o] - 1
    return init


def blocked(rows: np.ndarray, o_pad: int, block: int = OBLOCK) -> np.ndarray:
    """(O, L) -> (O_pad / block, L, block): one block of outputs after the other, tap-major inside,
    zero filters in the padding (the host kernels' weight layout, every weight code)."""
    o, taps = rows.shape
    padded = np.zeros((o_pad, taps), rows.dtype)
    padded[:o] = rows
    return np.ascontiguousarray(padded.reshape(o_pad // block, block, taps).transpose(0, 2, 1))


def vnni_weights(w: np.ndarray, o_pad: int, off: int):
    """The tables of bnnc_int_mac_vnni (module docstring) for integer weights w (O, kh, kw * C) in
    int8 range on inputs x with x - off a byte: int8 (O_pad / 32, kh, G, 32, 4), each kernel row
    zero-padded to G = ceil(kw * C / 4) groups of 4, and int64 (O_pad,) off * sum of each filter."""
    o, kh, row = w.shape
    g = -(-row // 4)
    padded = np.zeros((o_pad, kh, g * 4), np.int8)
    padded[:o, :, :row] = w
    tables = np.ascontiguousarray(padded.reshape(o_pad // OBLOCK, OBLOCK, kh, g, 4).transpose(0, 2, 3, 1, 4))
    return tables, off * padded.astype(np.int64).reshape(o_pad, -1).sum(axis=1)


def neg_words(neg: np.ndarray, o_pad: int) -> np.ndarray:
    """neg (O,) in {0, 1} -> uint32 (O_pad / 32,), bit j of word b = neg[32 b + j], 0 in the padding."""
    bits = np.zeros(o_pad, np.uint64)
    bits[: neg.size] = neg
    shifted = bits.reshape(-1, OBLOCK) << np.arange(OBLOCK, dtype=np.uint64)
    return np.bitwise_or.reduce(shifted, axis=1).astype(np.uint32)


def comparison_tables(th: ir.Thresholds, corr=0, k_full: Optional[int] = None, never: int = THR_NEVER):
    """(thr, neg) with bit(-1) = (s > thr) ^ neg for every weight code, s = popcount or accumulator;
    thr has corr's leading (class) axes, if any, then the output channels.

    +1 iff d * acc >= T. Integer input (k_full None): acc = s + corr. Binary input: acc = K - 2 s
    + corr. Constant channels compare against `never`, a value s never exceeds (THR_NEVER for the
    32-bit tables, larger for the 64-bit accumulators of pack_families)."""
    d = th.direction.astype(np.int64)
    t = th.threshold.astype(np.int64)
    if k_full is None:
        # d=+1: bit = s + corr < T  = !(s > T - corr - 1);  d=-1: bit = s + corr > -T
        thr = np.where(d > 0, t - corr - 1, -t - corr)
        neg = (th.direction > 0).astype(np.uint8)
    else:
        # d=+1: +1 iff s <= floor((K + corr - T) / 2): bit = s > that
        # d=-1: +1 iff s >= ceil((T + K + corr) / 2) =: Q: bit = s < Q = !(s > Q - 1)
        up = np.floor_divide(k_full + corr - t, 2)
        q = -np.floor_divide(-(t + k_full + corr), 2)
        thr = np.where(d > 0, up, q - 1)
        neg = (th.direction < 0).astype(np.uint8)
    const = th.constant != ir.Thresholds.NOT_CONSTANT
    # constant +1: bit 0 always (s > never is false, neg 0); constant -1: bit 1 always
    thr = np.where(const & (th.constant > 0), never, thr)
    thr = np.where(const & (th.constant < 0), -never, thr)
    neg = np.where(const, 0, neg).astype(np.uint8)
    return thr.astype(np.int64), neg


@dataclass
class PackedInput:
    mode: str  # "thresholds" | "copy" | "float"
    thr: Optional[np.ndarray] = None  # (n,) or () for integer thresholds
    neg: Optional[np.ndarray] = None
    cw_out: int = 0


def pack_input(op: ir.InputQuantize, oty) -> PackedInput:
    if op.int_thresholds is not None:
        th = op.int_thresholds
        thr, neg = comparison_tables(th, np.zeros((1, th.direction.size), np.int64))
        thr, neg = thr[0], neg
        if np.all(thr == thr[0]) and np.all(neg == neg[0]):
            thr, neg = thr[:1], neg[:1]
        return PackedInput("thresholds", thr, neg, words(oty.shape[2], 64))
    if op.chain.terminal is None:
        return PackedInput("copy")
    return PackedInput("float", cw_out=words(oty.shape[2], 64) if isinstance(oty, ir.Bits) else 0)


def storage_dtype(ty) -> str:
    """C storage of an integer tensor: the smallest type holding its proven range (int64 only
    beyond 32 bits, e.g. the global sum of a large fixed-point map)."""
    if ty.lo < -(2**31) or ty.hi > 2**31 - 1:
        return "int64"
    return int_dtype_for(ty.lo, ty.hi)


def pack_bits(graph: ir.Graph, word_bits: int = 64, layout: str = "blocked") -> ir.Graph:
    """Attach `packed` tables to every op (see module docstring); the math is unchanged."""
    if word_bits not in (32, 64) or layout not in LAYOUTS:
        raise ValueError(f"pack_bits: word_bits {word_bits}, layout {layout!r}")
    out = graph.copy()
    out.word_bits = word_bits
    out.weight_layout = layout
    family = {f.name for f in ir.family_ops(out)}
    for op in out.ops():
        if op.name in family:  # compressed-family layers: their tables come from pack_families
            from .pack_families import pack_family

            op.packed = pack_family(op, out, word_bits, layout)
        elif isinstance(op, ir.Conv):
            op.packed = pack_conv(op, out.tensors[op.inputs[0]], word_bits, layout)
        elif isinstance(op, ir.InputQuantize):
            op.packed = pack_input(op, out.tensors[op.outputs[0]])
            if op.packed.cw_out:
                op.packed.cw_out = words(out.tensors[op.outputs[0]].shape[2], word_bits)
    return out
