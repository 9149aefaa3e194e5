"""Backend tables of the issue-5 layers (ir.family_ops): weight codes, epilogues, new ops.

The math is unchanged; every table is derived from the IR exactly.

Family convolutions compute a 64-bit integer accumulator per output channel, then apply their
epilogue. Three ways to accumulate:
- "xnor" (binary code on bits): pc = sum popcount(x XOR w); acc = kmul[o] * (K - 2 pc) + corr;
- "masks" (ternary, two-scale, multi-base, int on bits): every base m has masks P_m, N_m
  (bit 1 where the weight is +1 / -1) and multipliers; with bit 1 = -1 in x and padded taps read
  as 0 words (+1 values),
      acc = corr'[class][o] - 2 * sum_m (mult_p[m][o] * popcount(x & P_m) - mult_n[m][o] * popcount(x & N_m))
  where corr' = sum of all int weights (the all-(+1) input) + bias(V) - the padded taps' weights
  (networks.md section 2: sum over P of a = |P| - 2 popcount(P & a)). Integer codes on bits use
  sign-magnitude bit planes as bases: k = sum_j 2**j ([bit j of |k|, k > 0] - [bit j of |k|, k < 0]);
- "int" (any code on integer inputs): acc = sum int_w * x + corr (int32 weights, int64 sums),
  or "sparse_int" when the layer has expander lists: only the listed (o, c) kernels are visited.

Epilogues on acc: "bits" (bit = (acc > thr[j]) ^ neg[j], j = p * O + o for activation-base
planes), "levels" (base + step * #levels passed), "requant" (ir.Requantize) and "reals" (the
float32 chain on (float)acc).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .. import ir
from ..errors import BnncError
from .pack_bits import classes, pack_bit_rows, words

OBLOCK = 32  # BNNC_FAM_OBLOCK in runtime/bnnc_families.h: output channels per weight-table block

BIG = 2**62  # a threshold no 64-bit accumulator of a real layer reaches


@dataclass
class PackedFamilyConv:
    in_kind: str  # "bits" | "ints"
    method: str  # "xnor" | "masks" | "int" | "sparse_int"
    word_bits: int
    cw_in: int  # words per input pixel (bits) or channels (ints)
    taps: int  # words (bits) or values (ints) per window
    o: int
    o_blk: int  # output channels padded to OBLOCK
    k_full: int
    ycls: np.ndarray
    xcls: np.ndarray
    ny: int
    nx: int
    corr: np.ndarray  # int64 (ny * nx, O), added to the accumulator
    weights: list = field(default_factory=list)  # xnor: [uint64 (L, o_blk)]; masks: [P, N per base]; int: [int32]
    mult_p: Optional[np.ndarray] = None  # int64 (bases, O)
    mult_n: Optional[np.ndarray] = None
    kmul: Optional[np.ndarray] = None  # xnor: int8 (O,)
    sparse: Optional[dict] = None  # sparse_int: {"start" (O+1,), "chan" (nnz,), "w" (nnz * kh * kw,)}
    epilogue: str = ""  # "bits" | "levels" | "requant" | "reals"
    thr: Optional[np.ndarray] = None  # bits: int64 (planes * O,)
    neg: Optional[np.ndarray] = None  # bits: uint8 (planes * O,)
    planes: int = 1
    cw_out: int = 0
    direction: Optional[np.ndarray] = None  # levels: int8 (O,)
    levels: Optional[np.ndarray] = None  # levels: int64 (O, B)
    scratch_bytes: int = 0  # plan_arena: int64 acc + 2 int32 popcount rows (16 * o_blk bytes), then the window


@dataclass
class PackedActivation:
    epilogue: str  # "bits" | "levels" | "requant"
    c: int
    thr: Optional[np.ndarray] = None
    neg: Optional[np.ndarray] = None
    cw_out: int = 0
    direction: Optional[np.ndarray] = None
    levels: Optional[np.ndarray] = None


def bit_planes(int_w: np.ndarray) -> list:
    """Sign-magnitude bit planes of integer weights as masked bases (see module docstring)."""
    mag = np.abs(int_w)
    o = int_w.shape[0]
    out = []
    for j in range(max(1, int(mag.max()).bit_length())):
        bit = (mag >> j) & 1
        w = np.where(bit == 1, np.sign(int_w), 0).astype(np.int8)
        if np.any(w):
            m = np.full(o, 1 << j, np.int64)
            out.append(ir.WeightBase(w, m, m.copy()))
    return out


def _bases(op: ir.Conv) -> list:
    if op.code == "binary":
        o = op.w.shape[0]
        return [ir.WeightBase(op.w, np.ones(o, np.int64), np.ones(o, np.int64))]
    if op.code == "int" or not op.bases:
        return bit_planes(ir.int_weights(op))
    return op.bases


def _threshold_tables(th: ir.Thresholds):
    """bit(-1) = (acc > thr) ^ neg on the accumulator itself: +1 iff d * acc >= T."""
    d = th.direction.astype(np.int64)
    t = th.threshold.astype(np.int64)
    thr = np.where(d > 0, t - 1, -t)
    neg = (d > 0).astype(np.uint8)
    const = th.constant != ir.Thresholds.NOT_CONSTANT
    thr = np.where(const & (th.constant > 0), BIG, thr)  # always +1: bit 0
    thr = np.where(const & (th.constant < 0), -BIG, thr)  # always -1: bit 1
    neg = np.where(const, 0, neg).astype(np.uint8)
    return thr, neg


def pack_family_conv(op: ir.Conv, src, word_bits: int) -> PackedFamilyConv:
    o, kh, kw, c = op.w.shape
    ih, iw = src.shape[:2]
    oh, ow = ir.out_shape((ih, iw), op.kernel, op.stride, op.pads)
    ycls, ymask = classes(oh, ih, kh, op.stride[0], op.pads[0])
    xcls, xmask = classes(ow, iw, kw, op.stride[1], op.pads[1])
    ny, nx = len(ymask), len(xmask)
    valid = ymask[:, None, :, None] & xmask[None, :, None, :]
    int_w = ir.int_weights(op)
    bias = np.zeros((ny, nx, o), np.int64)
    if op.bias_kernel is not None:
        bias = np.einsum("yxhw,ohw->yxo", valid.astype(np.int64), op.bias_kernel)
    o_blk = -(-o // OBLOCK) * OBLOCK
    bits_in = isinstance(src, ir.Bits)
    wsum = int_w.sum(axis=3)  # o, kh, kw
    p = PackedFamilyConv("bits" if bits_in else "ints", "", word_bits, 0, 0, o, o_blk,
                         kh * kw * c, ycls, xcls, ny, nx, np.zeros(0))
    if bits_in:
        cw = words(c, word_bits)
        p.cw_in, p.taps = cw, kh * kw * cw
        corr = bias - np.einsum("yxhw,ohw->yxo", (~valid).astype(np.int64), wsum)
        if op.code == "binary":
            p.method = "xnor"
            wt = np.zeros((p.taps, o_blk), np.uint64)
            wt[:, :o] = pack_bit_rows(op.w, word_bits).reshape(o, -1).T
            p.weights = [wt]
            p.kmul = np.where(np.any(op.w.reshape(o, -1) != 0, axis=1), 1, 0).astype(np.int8)
        else:
            p.method = "masks"
            bases = _bases(op)
            p.mult_p = np.stack([b.mult_p for b in bases]).astype(np.int64)
            p.mult_n = np.stack([b.mult_n for b in bases]).astype(np.int64)
            for b in bases:
                for mask in (b.w > 0, b.w < 0):
                    wt = np.zeros((p.taps, o_blk), np.uint64)
                    wt[:, :o] = pack_bit_rows(np.where(mask, -1, 1), word_bits).reshape(o, -1).T
                    p.weights.append(wt)
            corr = corr + int_w.reshape(o, -1).sum(axis=1)[None, None, :]
    else:
        p.cw_in, p.taps = c, kh * kw * c
        corr = bias
        if np.abs(int_w).max(initial=0) >= 2**31:
            raise BnncError(f"layer '{op.source_ops[0]}': integer weights beyond 32 bits on an integer input")
        if op.in_lists is not None:
            p.method = "sparse_int"
            start, chan, wts = [0], [], []
            for i in range(o):
                for ch in op.in_lists[i]:
                    chan.append(int(ch))
                    wts.append(int_w[i, :, :, ch].reshape(-1))
                start.append(len(chan))
            p.sparse = {"start": np.array(start, np.int32), "chan": np.array(chan or [0], np.int32),
                        "w": np.concatenate(wts).astype(np.int32) if wts else np.zeros(1, np.int32)}
        else:
            p.method = "int"
            wt = np.zeros((p.taps, o_blk), np.int32)
            wt[:, :o] = int_w.reshape(o, -1).T
            p.weights = [wt]
    p.corr = corr.reshape(ny * nx, o).astype(np.int64)
    window = p.taps * (word_bits // 8 if bits_in else 4)
    p.scratch_bytes = 16 * o_blk + -(-window // 64) * 64
    ep = op.epilogue
    if isinstance(ep, ir.Thresholds):
        p.epilogue = "bits"
        p.thr, p.neg = _threshold_tables(ep)
        p.planes = ep.planes
        p.cw_out = words(o * ep.planes, word_bits)
    elif isinstance(ep, ir.LevelThresholds):
        p.epilogue = "levels"
        p.direction, p.levels = ep.direction.astype(np.int8), ep.threshold.astype(np.int64)
    elif isinstance(ep, ir.Requantize):
        p.epilogue = "requant"
    else:
        p.epilogue = "reals"
    return p


def pack_activation(op: ir.Activation, src, word_bits: int) -> PackedActivation:
    c = src.shape[2]
    ep = op.epilogue
    if isinstance(ep, ir.Thresholds):
        thr, neg = _threshold_tables(ep)
        return PackedActivation("bits", c, thr, neg, words(c, word_bits))
    if isinstance(ep, ir.LevelThresholds):
        return PackedActivation("levels", c, direction=ep.direction.astype(np.int8),
                                levels=ep.threshold.astype(np.int64))
    if isinstance(ep, ir.Requantize):
        return PackedActivation("requant", c)
    raise BnncError(f"activation '{op.name}' has an unfolded epilogue")


def pack_family(op, graph: ir.Graph, word_bits: int):
    """The `packed` tables of one family op (None for ops that need none)."""
    src = graph.tensors.get(op.inputs[0])
    if isinstance(op, ir.Conv):
        return pack_family_conv(op, src, word_bits)
    if isinstance(op, ir.Activation):
        return pack_activation(op, src, word_bits)
    return None
