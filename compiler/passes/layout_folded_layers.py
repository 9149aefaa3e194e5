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
- `LevelThresholds` (out = base + step * #{b : d * acc >= T[b]}, a multi-bit activation): one
  threshold per level, from the same formulas with the flag inverted, since a level counts when it
  is passed (u > 0: passed = s > thr, flag 0; u < 0: passed = !(s > thr), flag 1; u = 0:
  thr = s_min - 1 when passed, else s_max); the unit outputs base + step * (number of levels with
  (s > thr_b) XOR flag).
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
    mode: str  # "thresholds" (one output bit per row) | "levels" (multi-bit) | "acc" (the accumulator)
    nt: int  # thresholds per row: 1, the levels of LevelThresholds, 0 for "acc"
    level_base: int  # "levels": out = level_base + level_step * count
    level_step: int
    table_bits: int  # signed width of the table values (thresholds or A)
    acc_lo: int  # "acc": range of the output accumulator
    acc_hi: int
    acc_bits: int
    ycls: np.ndarray  # (OH,) border class of each output row
    xcls: np.ndarray  # (OW,)
    ny: int
    nx: int
    weight_words: list  # NF*SF ints of PE*SIMD bits, address nf*SF + sf, row p lane s at bit p*SIMD + s
    table_value: np.ndarray  # int64 (ny*nx, MH, max(nt, 1)): thresholds or A
    table_flag: np.ndarray  # int64 (ny*nx, MH): XOR flag or (G != 0)
    table_words: list  # ny*nx*NF ints of PE * entry_bits bits, address class*NF + nf

    @property
    def ncls(self) -> int:
        return self.ny * self.nx

    @property
    def entry_bits(self) -> int:
        """Bits of one row's table entry: max(nt, 1) values of table_bits, then the flag."""
        return max(self.nt, 1) * self.table_bits + 1


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
    nt, level_base, level_step = 1, 0, 1
    acc_lo = acc_hi = 0
    acc_bits = 1
    if isinstance(ep, (ir.Thresholds, ir.LevelThresholds)):
        if getattr(ep, "planes", 1) != 1:
            raise BnncError(f"layer '{op.name}': several activation planes are not supported by the verilog target")
        d = ep.direction.astype(np.int64)[None, :]
        u = d * g[None, :]
        da = d * a
        levels = isinstance(ep, ir.LevelThresholds)
        ts = ep.threshold.astype(np.int64).reshape(o, -1) if levels else ep.threshold.astype(np.int64)[:, None]
        values = []
        for b in range(ts.shape[1]):
            t = ts[None, :, b]
            up = -_floordiv(-(t - da), np.maximum(u, 1)) - 1  # ceil((T - dA) / u) - 1
            down = _floordiv(da - t, np.maximum(-u, 1))  # floor((dA - T) / -u)
            const_bit = np.where(da >= t, s_max, s_min - 1)  # u == 0: +1 -> never s > thr
            values.append(np.where(u > 0, up, np.where(u < 0, down, const_bit)))
        value = np.stack(values, axis=-1)  # (ncls, o, nt)
        flag = np.broadcast_to(np.where(u > 0, 1, 0), a.shape)
        if levels:
            mode, nt, level_base, level_step = "levels", ts.shape[1], int(ep.base), int(ep.step)
            if not isinstance(dst, ir.Ints):
                raise BnncError(f"layer '{op.name}': multi-level thresholds on a non-integer output")
            # a level counts when passed: u > 0: s > thr (flag 0); u < 0: !(s > thr) (flag 1);
            # u == 0: thr = s_min - 1 (always counts) when passed, else s_max (never)
            flag = np.broadcast_to(np.where(u < 0, 1, 0), a.shape)
            passed = da[..., None] >= ts[None, :, :]
            value = np.where((u == 0)[..., None], np.where(passed, s_min - 1, s_max), value)
        else:
            mode = "thresholds"
            if not isinstance(dst, ir.Bits):
                raise BnncError(f"layer '{op.name}': thresholds on a non-bit output")
            const = ep.constant != ir.Thresholds.NOT_CONSTANT
            if np.any(const & (ep.constant == 0)):
                raise BnncError(f"layer '{op.name}' has a channel that is constantly 0 (ONNX Sign of 0), which a bit "
                                "cannot hold")
            cv = np.where(ep.constant[None, :] > 0, s_max, s_min - 1)[..., None]
            value = np.where(const[None, :, None], cv, value)
            flag = np.where(const[None, :], 0, flag)
        value = np.clip(value, s_min - 1, s_max)
        table_bits = s_bits
    else:
        mode, nt = "acc", 0
        value = a[..., None]
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
    # table words: entry of row p at bit p*EW: values j at j*table_bits (two's complement), then the flag
    k = max(nt, 1)
    ew = k * table_bits + 1
    entries = [[int(flag[c, r]) << (k * table_bits) | _word((value[c, r] & ((1 << table_bits) - 1)).tolist(),
                                                            table_bits) for r in range(o)] for c in range(ny * nx)]
    table_words = []
    for c in range(ny * nx):
        for f_ in range(nf):
            table_words.append(_word([entries[c][r] if r < o else 0 for r in range(f_ * pe, (f_ + 1) * pe)], ew))
    return FoldedConv(pe, simd, o, mw, nf, sf, in_bits, s_min, s_max, s_bits, gain, mode, nt, level_base, level_step,
                      table_bits, acc_lo, acc_hi, acc_bits, ycls, xcls, ny, nx, weight_words, value, flag, table_words)


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
