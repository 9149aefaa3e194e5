"""Lay out each Conv's weights and epilogue for a PE x SIMD matrix-vector-threshold unit.

A Conv with MH output channels and MW = kh*kw*C inputs per output (index k = (ky*kw + kx)*C + c,
the order of `w[o, ky, kx, c]` and of the sliding window) runs folded: fold (nf, sf) puts rows
o = nf*PE + p on PE rows and columns k = sf*SIMD + s on SIMD lanes. Rows o >= MH and columns
k >= MW of the last folds are idle: weight and mask bits 0, input 0.

The weights are popcount planes (`weight_planes.popcount_planes`, one XNOR plane for binary
layers; masked XNOR for ternary and expander layers; an all-ones and an AND plane for two-scale
layers; two AND masks for two-scale ternary; one plane per base for multi-base; bit planes for
integer weights). Per output position and plane j the unit computes, with x the window (padded
taps read as 0: bit 0 for bit inputs, the integer 0 for integer inputs), b_j / m_j the plane's
XOR bits and lane mask (all 0 / all 1 where the plane has none):
  bit inputs:      s_j = popcount over all lanes of ((x XOR b_j) AND m_j)
  integer inputs:  s_j = sum over all lanes of m_j ? (b_j ? -x : x) : 0
Idle lanes add 0. With V the valid taps of the position, which depend on it only through its
border class (`pack_bits.classes`), the IR's accumulator is
  acc = A[class, o] + sum_j G_j[o] * s_j          (weight_planes.plane_offsets gives A)

One plane ("s-space", no multiplier in hardware): epilogues become per-(class, row) table
entries (value, flag), with s = s_0 and G = G_0[o]:
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
  entry value A, flag = (G != 0); acc = A + (flag ? GAIN * s : 0) (every live row has G = GAIN).
- `Requantize` (fixed-point outputs): entry values A, mult[o], add[o], acc_lo[o], acc_hi[o]; the
  unit outputs clamp((clamp(acc >> pre_shift, acc_lo, acc_hi) * mult + add) >> shift, lo, hi) in
  `requant.bits`-bit arithmetic (acc_lo / acc_hi within the reachable range, shifted: where the IR has
  no clamp, the range itself).
Several planes, or an accumulator output whose rows have different gains ("v-space"): the table
entry also holds the row's gains, the unit computes v = sum_j G_j[o] * s_j and uses the same
forms with v for s, G = 1 (so u = d): thr = T - A - 1 (d = +1) or -A - T (d = -1), and the
accumulator output is A + v.
Activation planes (`Thresholds.planes` = P, ABC-Net / PaBT activation bases): row o has P
thresholds, one per plane, each with its own flag, and output channel p * MH + o is plane p's bit.
The numbers of the reference executor are unchanged: the tests emulate these tables on random
graphs and compare with `reference.intermediates`.
"""

from __future__ import annotations

import numpy as np

from .. import ir
from ..backends import matrix_unit
from ..errors import BnncError
from ..weight_planes import lane_valid, plane_offsets, plane_ranges, popcount_planes
from .pack_bits import border_classes


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


def fold_conv(op: ir.Conv, src, dst, pe: int, simd: int) -> matrix_unit.MatrixUnit:
    """The unit's layout of `op`, which matrix_unit.supports accepts."""
    o, kh, kw, c = op.w.shape
    mw = kh * kw * c
    ycls, xcls, valid, bias = border_classes(op, src.shape[:2])
    ny, nx = valid.shape[:2]
    valid, bias = valid.reshape(ny * nx, kh, kw), bias.reshape(ny * nx, o)
    bits_in = isinstance(src, ir.Bits)
    if bits_in:
        in_bits, in_lo, in_hi = 1, 0, 1
    else:
        in_bits, in_lo, in_hi = element_bits(src), int(src.lo), int(src.hi)
    planes = popcount_planes(op, bits_in)
    a = plane_offsets(planes, bias, lane_valid(valid, c), bits_in)
    ranges = plane_ranges(planes, mw, in_lo, in_hi, bits_in)
    gains = np.stack([p.gain for p in planes]).astype(np.int64)  # (planes, o)
    s_bits = max(signed_bits(lo - 1, hi) for lo, hi in ranges)

    ep = op.epilogue
    is_acc = not isinstance(ep, (ir.Thresholds, ir.LevelThresholds))
    live_gains = set(gains[0][gains[0] != 0].tolist())
    v_space = len(planes) > 1 or (is_acc and len(live_gains) > 1)
    if v_space:  # the unit computes v = sum_j G_j s_j; thresholds and offsets apply to v
        parts = [np.stack([g * lo, g * hi]) for g, (lo, hi) in zip(gains, ranges)]
        s_min = int(sum(p.min(axis=0) for p in parts).min())
        s_max = int(sum(p.max(axis=0) for p in parts).max())
        g = np.ones(o, np.int64)
    else:
        s_min, s_max = ranges[0]
        g = gains[0]

    act_planes = getattr(ep, "planes", 1)
    nt, level_base, level_step = 1, 0, 1
    acc_lo = acc_hi = 0
    acc_bits = 1
    gain = 0
    if not is_acc:
        levels = isinstance(ep, ir.LevelThresholds)
        d = ep.direction.astype(np.int64).reshape(act_planes, o)  # (planes, o)
        ts = ep.threshold.astype(np.int64).reshape(o, -1) if levels else \
            ep.threshold.astype(np.int64).reshape(act_planes, o).T  # (o, nt)
        dd = d[0][:, None] if levels else d.T  # (o, nt): direction of each threshold
        u = (dd * g[:, None])[None]  # (1, o, nt)
        da = dd[None] * a[..., None]  # (ncls, o, nt)
        t = ts[None]
        up = -np.floor_divide(-(t - da), np.maximum(u, 1)) - 1  # ceil((T - dA) / u) - 1
        down = np.floor_divide(da - t, np.maximum(-u, 1))  # floor((dA - T) / -u)
        passed = da >= t
        if levels:
            mode, nt, level_base, level_step = "levels", ts.shape[1], int(ep.base), int(ep.step)
            if not isinstance(dst, ir.Ints):
                raise BnncError(f"layer '{op.name}': multi-level thresholds on a non-integer output")
            # a level counts when passed: u > 0: s > thr (flag 0); u < 0: !(s > thr) (flag 1);
            # u == 0: thr = s_min - 1 (always counts) when passed, else s_max (never)
            value = np.where(u > 0, up, np.where(u < 0, down, np.where(passed, s_min - 1, s_max)))
            flag = np.broadcast_to(np.where(u < 0, 1, 0), value.shape)[..., :1]
        else:
            mode, nt = "thresholds", act_planes
            if not isinstance(dst, ir.Bits):
                raise BnncError(f"layer '{op.name}': thresholds on a non-bit output")
            const_pl = ep.constant.reshape(act_planes, o).T  # (o, nt)
            const = const_pl != ir.Thresholds.NOT_CONSTANT
            value = np.where(u > 0, up, np.where(u < 0, down, np.where(passed, s_max, s_min - 1)))
            value = np.where(const[None], np.where(const_pl[None] > 0, s_max, s_min - 1), value)
            flag = np.broadcast_to(np.where(const[None], 0, np.where(u > 0, 1, 0)), value.shape)
            if act_planes == 1:
                flag = flag[..., :1]
        value = np.clip(value, s_min - 1, s_max)
        table_bits = signed_bits(s_min - 1, s_max)
    else:
        mode, nt = "acc", 0
        value = a[..., None]
        flag = np.broadcast_to((g != 0).astype(np.int64)[None, :, None], value.shape)
        if not v_space:
            gain = live_gains.pop() if live_gains else 0
        gs = np.stack([g * s_min, g * s_max])
        acc_lo = int((a + gs.min(axis=0)[None, :]).min())
        acc_hi = int((a + gs.max(axis=0)[None, :]).max())
        table_bits = signed_bits(int(a.min()), int(a.max()))
        acc_bits = signed_bits(acc_lo, acc_hi)
        if isinstance(ep, ir.Requantize):
            mode = "requant"
            mult = np.broadcast_to(ep.mult.astype(np.int64), (o,))
            ps = int(ep.pre_shift)
            add = np.broadcast_to(ep.add.astype(np.int64), (o,))
            reach_lo, reach_hi = acc_lo >> ps, acc_hi >> ps  # the clamp is in shifted units
            clo = np.full(o, reach_lo, np.int64) if ep.acc_lo is None else \
                np.maximum(ep.acc_lo.astype(np.int64), reach_lo)
            chi = np.full(o, reach_hi, np.int64) if ep.acc_hi is None else \
                np.minimum(ep.acc_hi.astype(np.int64), reach_hi)
            chi = np.maximum(chi, clo)  # an empty range: every reachable acc clamps to clo
            value = np.stack([a] + [np.broadcast_to(v, a.shape) for v in (mult, add, clo, chi)], axis=-1)
            table_bits = max(signed_bits(int(value.min()), int(value.max())), table_bits)
            # the clamped acc lies in [clo, chi] (which may lie outside the reachable range)
            big = int(np.abs(np.concatenate([clo, chi])).max()) * int(np.abs(mult).max()) + int(np.abs(add).max())
            rq = (int(ep.shift), int(ep.lo), int(ep.hi), signed_bits(-big, big), ps)
    value = np.ascontiguousarray(value, dtype=np.int64)
    flag = np.ascontiguousarray(flag, dtype=np.int64)
    gain_bits = signed_bits(int(gains.min()), int(gains.max())) if v_space else 1
    v_bits = signed_bits(s_min - 1, s_max) if v_space else 1

    nf, sf = -(-o // pe), -(-mw // simd)
    kinds = tuple(p.kind for p in planes)
    if mode != "requant":
        rq = (0, 0, 0, 1, 0)
    f = matrix_unit.MatrixUnit(
        matrix_unit.Fold(pe, simd, o, mw, nf, sf, in_bits),
        matrix_unit.Weights(kinds, gains, gain_bits, [], None),
        matrix_unit.Sums(s_min, s_max, s_bits, v_space, v_bits),
        matrix_unit.Epilogue(mode, nt, level_base, level_step, gain, act_planes if mode == "thresholds" else 1,
                             acc_lo, acc_hi, acc_bits,
                             element_bits(dst) if mode in ("levels", "requant") else 1 if mode == "thresholds"
                             else acc_bits, matrix_unit.Requant(*rq)),
        matrix_unit.Table(value, flag, table_bits, 5 if mode == "requant" else max(nt, 1), flag.shape[-1]),
        matrix_unit.Borders(ycls, xcls, ny, nx))
    # weight words: array i, row p, lane s of word nf*SF + sf at bit (i*PE + p)*SIMD + s
    blocks = []
    for j, which in f.weights.arrays:
        arr = planes[j].b if which == "b" else planes[j].m
        bpad = np.zeros((nf * pe, sf * simd), np.int64)
        bpad[:o, :mw] = arr
        blocks.append(bpad.reshape(nf, pe, sf, simd).transpose(0, 2, 1, 3).reshape(nf * sf, pe * simd))
    words_bits = np.concatenate(blocks, axis=1)
    f.weights.bits = words_bits.reshape(nf * sf, len(blocks), pe, simd).astype(bool)
    f.weights.words = [_word(bits, 1) for bits in words_bits]
    if matrix_unit.uses_mac(op, f):
        f.mac = matrix_unit.Mac(*matrix_unit.mac_weight_matrix(f))
    # table words: entry of row p at bit p*EW: values j at j*table_bits (two's complement), the gains
    # (v-space) at k*table_bits + j*gain_bits, then the flags
    k = f.table.values
    ew = f.entry_bits
    gfield = [_word((gains[:, r] & ((1 << gain_bits) - 1)).tolist(), gain_bits) for r in range(o)] if v_space \
        else [0] * o
    gwidth = f.weights.planes * gain_bits if v_space else 0
    entries = [[_word(flag[cl, r].tolist(), 1) << (k * table_bits + gwidth) | gfield[r] << (k * table_bits)
                | _word((value[cl, r] & ((1 << table_bits) - 1)).tolist(), table_bits) for r in range(o)]
               for cl in range(ny * nx)]
    for cl in range(ny * nx):
        for f_ in range(nf):
            f.table.words.append(_word([entries[cl][r] if r < o else 0 for r in range(f_ * pe, (f_ + 1) * pe)], ew))
    return f


def _word(fields, width: int) -> int:
    w = 0
    for i, f in enumerate(fields):
        w |= int(f) << (i * width)
    return w


def layout_folded_layers(graph: ir.Graph, foldings: list) -> ir.Graph:
    """Attach `folded` (a matrix_unit.MatrixUnit) to every Conv, for the (pe, simd) of `foldings` (one
    `folding.LayerFolding` per Conv, in `folding.foldable_layers` order). Numbers are unchanged."""
    out = graph.copy()
    by_name = {f.layer.name: f for f in foldings}
    for op in out.ops():
        if isinstance(op, ir.Conv):
            f = by_name.get(op.name)
            if f is None:
                raise BnncError(f"no folding given for layer '{op.name}'")
            reason = matrix_unit.supports(op, f)
            if reason:
                raise BnncError(f"layer '{op.name}': {reason}")
            op.folded = fold_conv(op, out.tensors[op.inputs[0]], out.tensors[op.outputs[0]], f.pe, f.simd)
    return out
