"""Lay out each Conv's weights and epilogue for a PE x SIMD matrix-vector-threshold unit.

A Conv with MH output channels and MW = kh*kw*C inputs per output (index k = (ky*kw + kx)*C + c,
the order of `w[o, ky, kx, c]` and of the sliding window) runs folded: fold (nf, sf) puts rows
o = nf*PE + p on PE rows and columns k = sf*SIMD + s on SIMD lanes. Rows o >= MH and columns
k >= MW of the last folds are idle: weight bit 0 and input 0.

What the unit computes per output position, with x the window (padded taps read as 0: bit 0 for
bit inputs, the integer 0 for integer inputs) and b[o, k] the weight bit (1 = -1):
  bit inputs:      s = popcount over all lanes of (x XOR b)
  integer inputs:  s = sum over all lanes of (b ? -x : x)
Idle lanes add 0 to both. Let V be the valid (non-padded) taps of the position, which depend on
it only through its border class (rows / columns with the same valid ky / kx set share a class;
`pack_bits.classes`). The IR's accumulator is
  acc = sum over V of w * a + sum over V of bias_kernel = A[class, o] + G[o] * s
with, for a row with +-1 weights,
  bit inputs:      G = -2, A = K + bias(V) - sum over padded taps of sum_c w[o, ky, kx, c],  K = MW
                   (a valid lane gives 1 - 2 (x XOR b); a padded lane reads +1, and counts b)
  integer inputs:  G = 1,  A = bias(V)
and for an all-zero row (a pruned filter kept in the last layer) G = 0, A = bias(V).

Epilogues become per-(class, row) table entries (value, flag):
- `Thresholds` (+1 iff d * acc >= T): with u = d * G, the output bit (1 = -1) is
  (s > thr) XOR flag, where u > 0: thr = ceil((T - d A) / u) - 1, flag = 1; u < 0:
  thr = floor((d A - T) / -u), flag = 0; u = 0 and constant channels: thr = s_max (bit 0, +1) or
  s_min - 1 (bit 1, -1), flag 0. Every thr is clamped to [s_min - 1, s_max], which keeps
  `s > thr` unchanged for every reachable s and bounds the table width.
- a `Chain` (the last layer's float32 epilogue, applied by the host): the unit outputs acc itself,
  entry value A, flag = (G != 0); acc = A + (flag ? G * s : 0).
The numbers of the reference executor are unchanged: the tests emulate these tables on random
graphs and compare with `reference.intermediates`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import ir
from ..errors import BnncError
from .pack_bits import classes


@dataclass
class FoldedConv:
    pe: int
    simd: int
    mh: int
    mw: int
    nf: int
    sf: int
    in_bits: int  # 1 for bit inputs, else the signed width of the integer inputs
    s_min: int
    s_max: int
    s_bits: int  # signed width holding [s_min - 1, s_max]
    gain: int  # G of the rows with weights: -2 (bit inputs) or 1 (integer inputs)
    mode: str  # "thresholds" (one output bit per row) | "acc" (the accumulator, for the host)
    table_bits: int  # signed width of the table values (thresholds or A)
    acc_lo: int  # "acc": range of the output accumulator
    acc_hi: int
    acc_bits: int
    ycls: np.ndarray  # (OH,) border class of each output row
    xcls: np.ndarray  # (OW,)
    ny: int
    nx: int
    weight_words: list  # NF*SF ints of PE*SIMD bits, address nf*SF + sf, row p lane s at bit p*SIMD + s
    table_value: np.ndarray  # int64 (ny*nx, MH): thr or A
    table_flag: np.ndarray  # int64 (ny*nx, MH): XOR flag or (G != 0)
    table_words: list  # ny*nx*NF ints of PE*(table_bits + 1) bits, address class*NF + nf

    @property
    def ncls(self) -> int:
        return self.ny * self.nx

    @property
    def entry_bits(self) -> int:
        return self.table_bits + 1


def signed_bits(lo: int, hi: int) -> int:
    """Smallest two's-complement width holding every integer in [lo, hi]."""
    n = 1
    while not (-(1 << (n - 1)) <= lo and hi <= (1 << (n - 1)) - 1):
        n += 1
    return n


def element_bits(ty) -> int:
    """Bits per element of a tensor on a stream: 1 for bits, the signed width of an Ints range."""
    if isinstance(ty, ir.Bits):
        return 1
    if isinstance(ty, ir.Ints):
        return signed_bits(min(ty.lo, 0), max(ty.hi, 0))
    raise BnncError(f"a {type(ty).__name__} tensor cannot travel on a hardware stream")


def _floordiv(a: np.ndarray, b: int) -> np.ndarray:
    return np.floor_divide(a, b)


def fold_conv(op: ir.Conv, src, dst, pe: int, simd: int) -> FoldedConv:
    if getattr(op, "code", "binary") != "binary" or getattr(op, "in_lists", None) is not None:
        raise BnncError(f"layer '{op.name}' is not a binary layer ({getattr(op, 'code', 'binary')} weights); "
                        "the verilog target holds binary layers only")
    o, kh, kw, c = op.w.shape
    mw = kh * kw * c
    wflat = op.w.reshape(o, mw).astype(np.int64)
    zero_row = ~np.any(wflat != 0, axis=1)
    if np.any((wflat == 0) & ~zero_row[:, None]):
        raise BnncError(f"layer '{op.name}' has zero weights inside a filter (ternary); the verilog target "
                        "holds binary layers only")
    if op.pads[0] >= kh or op.pads[1] >= kw or op.pads[2] >= kh or op.pads[3] >= kw:
        raise BnncError(f"layer '{op.name}': padding {op.pads} is not smaller than its {kh}x{kw} kernel")
    ih, iw = src.shape[:2]
    oh, ow = dst.shape[:2]
    ycls, ymask = classes(oh, ih, kh, op.stride[0], op.pads[0])
    xcls, xmask = classes(ow, iw, kw, op.stride[1], op.pads[1])
    ny, nx = len(ymask), len(xmask)
    valid = (ymask[:, None, :, None] & xmask[None, :, None, :]).reshape(ny * nx, kh, kw)
    bias = np.zeros((ny * nx, o), np.int64)
    if op.bias_kernel is not None:
        bias = np.einsum("chw,ohw->co", valid.astype(np.int64), op.bias_kernel.astype(np.int64))
    bits_in = isinstance(src, ir.Bits)
    if bits_in:
        in_bits, gain = 1, -2
        s_min, s_max = 0, mw
        wsum = op.w.astype(np.int64).sum(axis=3)  # o, kh, kw
        a = mw + bias - np.einsum("chw,ohw->co", (~valid).astype(np.int64), wsum)
    else:
        in_bits, gain = element_bits(src), 1
        m = max(abs(src.lo), abs(src.hi))
        s_min, s_max = -mw * m, mw * m
        a = bias
    a = np.where(zero_row[None, :], bias, a)
    g = np.where(zero_row, 0, gain).astype(np.int64)
    s_bits = signed_bits(s_min - 1, s_max)

    ep = op.epilogue
    if isinstance(ep, ir.Thresholds):
        mode = "thresholds"
        if not isinstance(dst, ir.Bits):
            raise BnncError(f"layer '{op.name}': thresholds on a non-bit output")
        d = ep.direction.astype(np.int64)[None, :]
        t = ep.threshold.astype(np.int64)[None, :]
        u = d * g[None, :]
        da = d * a
        up = np.where(u > 0, -_floordiv(-(t - da), np.maximum(u, 1)) - 1, 0)  # ceil((T - dA) / u) - 1
        down = np.where(u < 0, _floordiv(da - t, np.maximum(-u, 1)), 0)  # floor((dA - T) / -u)
        const_bit = np.where(da >= t, s_max, s_min - 1)  # u == 0: +1 -> never s > thr
        value = np.where(u > 0, up, np.where(u < 0, down, const_bit))
        flag = np.where(u > 0, 1, 0)
        const = ep.constant != ir.Thresholds.NOT_CONSTANT
        if np.any(const & (ep.constant == 0)):
            raise BnncError(f"layer '{op.name}' has a channel that is constantly 0 (ONNX Sign of 0), which a bit "
                            "cannot hold")
        value = np.where(const[None, :], np.where(ep.constant[None, :] > 0, s_max, s_min - 1), value)
        flag = np.where(const[None, :], 0, flag)
        value = np.clip(value, s_min - 1, s_max)
        table_bits = s_bits
        acc_lo = acc_hi = 0
        acc_bits = 1
    else:
        mode = "acc"
        value = a
        flag = np.broadcast_to((g != 0).astype(np.int64)[None, :], a.shape)
        gs = np.stack([g * s_min, g * s_max])
        acc_lo = int((a + gs.min(axis=0)[None, :]).min())
        acc_hi = int((a + gs.max(axis=0)[None, :]).max())
        table_bits = signed_bits(int(a.min()), int(a.max()))
        acc_bits = signed_bits(acc_lo, acc_hi)
    value = np.ascontiguousarray(value, dtype=np.int64)
    flag = np.ascontiguousarray(flag, dtype=np.int64)

    nf, sf = -(-o // pe), -(-mw // simd)
    # weight words: bit p*SIMD + s of word nf*SF + sf holds b[nf*PE + p, sf*SIMD + s]
    bpad = np.zeros((nf * pe, sf * simd), np.int64)
    bpad[:o, :mw] = (wflat < 0)
    blocks = bpad.reshape(nf, pe, sf, simd).transpose(0, 2, 1, 3).reshape(nf * sf, pe * simd)
    weight_words = [_word(bits, 1) for bits in blocks]
    # table words: entry of row p at bit p*EW: value (table_bits, two's complement) then the flag
    ew = table_bits + 1
    entries = (value & ((1 << table_bits) - 1)) | (flag << table_bits)  # (ncls, o)
    epad = np.zeros((ny * nx, nf * pe), np.int64)
    epad[:, :o] = entries
    table_words = [_word(row, ew) for row in epad.reshape(ny * nx * nf, pe)]
    return FoldedConv(pe, simd, o, mw, nf, sf, in_bits, s_min, s_max, s_bits, gain, mode, table_bits, acc_lo,
                      acc_hi, acc_bits, ycls, xcls, ny, nx, weight_words, value, flag, table_words)


def _word(fields, width: int) -> int:
    w = 0
    for i, f in enumerate(fields):
        w |= int(f) << (i * width)
    return w


def layout_folded_layers(graph: ir.Graph, foldings: list) -> ir.Graph:
    """Attach `folded` (a FoldedConv) to every Conv, for the (pe, simd) of `foldings` (one
    `folding.LayerFolding` per Conv, in `folding.foldable_layers` order). Numbers are unchanged."""
    out = graph.copy()
    by_name = {f.layer.name: f for f in foldings}
    for op in out.ops():
        if isinstance(op, ir.Conv):
            f = by_name.get(op.name)
            if f is None:
                raise BnncError(f"no folding given for layer '{op.name}'")
            op.folded = fold_conv(op, out.tensors[op.inputs[0]], out.tensors[op.outputs[0]], f.pe, f.simd)
    return out
