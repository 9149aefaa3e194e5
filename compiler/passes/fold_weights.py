"""Lay out each conv/dense layer's weights and comparison tables for a PE x SIMD matrix-vector unit.

A layer computes, for every output pixel, MH outputs from the MW-element window vector a[m],
m = (ky * kw + kx) * C + c (the order of w[o, ky, kx, c]). Folded onto PE rows and SIMD lanes,
output o = nf * PE + p is computed by row p during neuron fold nf, and the window arrives in
synapse folds s of SIMD lanes, lane l carrying element m = s * SIMD + l. With
NF = ceil(MH / PE), SF = ceil(MW / SIMD) and tile t = nf * SF + s:

    W[p, t, l] = w[nf * PE + p, s * SIMD + l]     (0 where o >= MH or m >= MW)

Rows o >= MH and lanes m >= MW exist only in the last neuron / synapse fold (folding.py allows
PE not dividing MH and SIMD not dividing MW). They hold weight 0 and the window generator feeds
idle lanes activation 0 (bit 0), so they are masked exactly:
- integer inputs: an idle lane adds 0 * 0 = 0 to the accumulator;
- binary inputs (bit 1 = -1, weight bit = w < 0): an idle lane adds popcount(0 XOR 0) = 0, so the
  popcount over the SF tiles of row o equals pack_bits' popcount s of output o, padded taps
  included (they read bit 0 on both sides of pack_bits' correction).
Idle rows compute a value nobody reads. The per-output comparison tables of pack_bits (bit =
(s > thr[class][o]) XOR neg[o]) therefore apply unchanged and are only re-indexed by (p, nf):

    thr_f[p, nf, k] = thr[k, nf * PE + p],   neg_f[p, nf] = neg[nf * PE + p]   (0 for idle rows)

Weight bit planes: `minus[p, t, l]` = (W = -1); integer-input layers add `plus[p, t, l]` = (W = +1),
so that acc = sum of the plus lanes' a - sum of the minus lanes' a. A binary-input layer must have
no zero weight outside all-zero (pruned) rows: XOR-popcount cannot skip a lane (the same
restriction as pack_bits' K - 2 * popcount).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .. import ir
from ..errors import BnncError


@dataclass
class FoldedConv:
    pe: int
    simd: int
    mh: int  # output channels
    mw: int  # window elements per output: kh * kw * C
    nf: int  # neuron folds: ceil(mh / pe)
    sf: int  # synapse folds: ceil(mw / simd)
    minus: np.ndarray  # bool (pe, nf * sf, simd): weight -1
    plus: Optional[np.ndarray]  # bool (pe, nf * sf, simd): weight +1 (integer inputs only)
    thr: Optional[np.ndarray]  # int64 (pe, nf, classes) for bit outputs
    neg: Optional[np.ndarray]  # bool (pe, nf) for bit outputs


def fold_matrix(m: np.ndarray, pe: int, simd: int) -> np.ndarray:
    """(MH, MW) -> (PE, NF * SF, SIMD) with W[p, nf * SF + s, l] = m[nf * PE + p, s * SIMD + l], 0 outside."""
    mh, mw = m.shape
    nf, sf = -(-mh // pe), -(-mw // simd)
    padded = np.zeros((nf * pe, sf * simd), m.dtype)
    padded[:mh, :mw] = m
    return padded.reshape(nf, pe, sf, simd).transpose(1, 0, 2, 3).reshape(pe, nf * sf, simd)


def fold_rows(t: np.ndarray, pe: int) -> np.ndarray:
    """(..., MH) -> (PE, NF, ...) with out[p, nf, ...] = t[..., nf * PE + p], 0 for idle rows."""
    mh = t.shape[-1]
    nf = -(-mh // pe)
    padded = np.zeros(t.shape[:-1] + (nf * pe,), t.dtype)
    padded[..., :mh] = t
    moved = np.moveaxis(padded, -1, 0).reshape((nf, pe) + t.shape[:-1])
    return np.swapaxes(moved, 0, 1)


def fold_conv(op: ir.Conv, src, f) -> FoldedConv:
    o = op.w.shape[0]
    w = op.w.reshape(o, -1).astype(np.int8)
    if (f.layer.mh, f.layer.mw) != w.shape:
        raise BnncError(f"layer {op.name}: folding is for a {f.layer.mh}x{f.layer.mw} layer, not {w.shape}")
    bits_in = isinstance(src, ir.Bits)
    if bits_in:
        zero = w == 0
        partial = np.any(zero, axis=1) & ~np.all(zero, axis=1)
        if np.any(partial):
            raise BnncError(f"layer '{(op.source_ops or [op.name])[0]}': zero weights on binary inputs outside "
                            "pruned filters are not supported")
    pe, simd = f.pe, f.simd
    nf, sf = -(-f.layer.mh // pe), -(-f.layer.mw // simd)
    p = op.packed
    thr = neg = None
    if p.thr is not None:
        thr = fold_rows(p.thr[:, : f.layer.mh], pe)  # (pe, nf, classes); pack_bits may pad thr's columns
        neg = fold_rows(p.neg.astype(bool), pe)  # (pe, nf)
    return FoldedConv(pe, simd, f.layer.mh, f.layer.mw, nf, sf, fold_matrix(w < 0, pe, simd),
                      None if bits_in else fold_matrix(w > 0, pe, simd), thr, neg)


def fold_weights(graph: ir.Graph, foldings: list) -> ir.Graph:
    """Attach `folded` (a FoldedConv) to every Conv; needs pack_bits' tables. Math unchanged."""
    by_name = {f.layer.name: f for f in foldings}
    out = graph.copy()
    for op in out.ops():
        if isinstance(op, ir.Conv):
            if op.name not in by_name:
                raise BnncError(f"no folding for layer {op.name}")
            op.folded = fold_conv(op, out.tensors[op.inputs[0]], by_name[op.name])
    return out
