"""Verilator unit tests of the hw/ building blocks against Python models of what each computes.

Every block runs with random valid gaps and random back-pressure (the stream must come out the
same), and once with both held high to check its documented throughput."""

import numpy as np
import pytest

from bnnc.backends import matrix_unit
from bnnc.backends.verilog_sim import mem_image
from bnnc.hw.stream_driver import pack, run_block, unpack

STALLS = [(1.0, 1.0), (0.6, 0.5), (0.3, 0.9)]


def _clog2(n):
    return max(1, (n - 1).bit_length())


# ----------------------------------------------------------------------------- FIFO, AXI-Stream


@pytest.mark.parametrize("p_valid,p_ready", STALLS)
def test_fifo_keeps_order_under_back_pressure(p_valid, p_ready):
    rng = np.random.default_rng(0)
    recs = [int(v) for v in rng.integers(0, 1 << 13, 60)]
    r = run_block("bnnc_fifo", {"WIDTH": 13, "DEPTH": 3}, recs, 13, 13, 60, seed=3, p_valid=p_valid,
                  p_ready=p_ready)
    assert r.outputs == recs
    if p_valid == 1.0:
        assert np.all(np.diff(r.out_cycles) == 1)  # one record per cycle


def _axis_in_params():
    return {"EB": 8, "C": 5, "BE": 2, "PIXELS": 3, "TW": 16}


@pytest.mark.parametrize("p_valid,p_ready", STALLS)
def test_axis_in_assembles_pixels_and_checks_tlast(p_valid, p_ready):
    p = _axis_in_params()
    rng = np.random.default_rng(1)
    frames = rng.integers(-128, 128, (4, p["PIXELS"], p["C"]))
    beats = []
    for f in frames:
        for i, pix in enumerate(f):
            for b in range(0, p["C"], p["BE"]):
                last = i == p["PIXELS"] - 1 and b + p["BE"] >= p["C"]
                chunk = list(pix[b: b + p["BE"]]) + [0] * (p["BE"] - len(pix[b: b + p["BE"]]))
                beats.append(pack(chunk, 8) | (int(last) << p["TW"]))
    n = frames.shape[0] * p["PIXELS"]
    r = run_block("tb_axis_in", p, beats, p["TW"] + 1, p["C"] * 8 + 1, n, seed=5, p_valid=p_valid, p_ready=p_ready)
    got = [unpack(v, p["C"], 8) for v in r.outputs]
    assert got == frames.reshape(n, p["C"]).tolist()
    assert all(v >> (p["C"] * 8) == 0 for v in r.outputs)  # no frame error
    # a tlast on the wrong beat raises the sticky error flag
    beats[1] |= 1 << p["TW"]
    r = run_block("tb_axis_in", p, beats, p["TW"] + 1, p["C"] * 8 + 1, n, seed=5)
    assert [v >> (p["C"] * 8) for v in r.outputs][-1] == 1


@pytest.mark.parametrize("p_valid,p_ready", STALLS)
def test_axis_out_splits_pixels_into_beats_with_tlast(p_valid, p_ready):
    p = {"EB": 5, "C": 7, "BE": 3, "PIXELS": 2, "TW": 16}
    rng = np.random.default_rng(2)
    pixels = rng.integers(-16, 16, (6, p["C"]))
    recs = [pack(px, 5) for px in pixels]
    bpp = -(-p["C"] // p["BE"])
    r = run_block("tb_axis_out", p, recs, p["C"] * 5, p["TW"] + 1, len(recs) * bpp, seed=7, p_valid=p_valid,
                  p_ready=p_ready)
    expect = []
    for i, px in enumerate(pixels):
        for b in range(bpp):
            chunk = list(px[b * p["BE"]: (b + 1) * p["BE"]])
            last = b == bpp - 1 and i % p["PIXELS"] == p["PIXELS"] - 1
            expect.append(pack(chunk, 5) | (int(last) << p["TW"]))
    assert r.outputs == expect
    if p_valid == 1.0 and p_ready == 1.0:
        assert np.all(np.diff(r.out_cycles) == 1)  # beats leave back to back


# ----------------------------------------------------------------------------- sliding windows


def swg_model(frames, kh, kw, sh, sw, pt, pl, oh, ow):
    """[(row, col, mask bits, taps)] per window: taps (kh*kw, C), 0 outside the frame."""
    out = []
    n, ih, iw, c = frames.shape
    for f in frames:
        for oy in range(oh):
            for ox in range(ow):
                taps, mask = [], []
                for ky in range(kh):
                    for kx in range(kw):
                        y, x = oy * sh - pt + ky, ox * sw - pl + kx
                        ok = 0 <= y < ih and 0 <= x < iw
                        mask.append(int(ok))
                        taps.append(f[y, x] if ok else np.zeros(c, np.int64))
                out.append((oy, ox, mask, np.array(taps)))
    return out


SWG_CASES = [
    # ih, iw, c, eb, kh, kw, sh, sw, pt, pl, pb, pr
    (5, 6, 2, 3, 3, 3, 1, 1, 1, 1, 1, 1),  # "same" padding
    (7, 5, 1, 1, 2, 3, 2, 1, 0, 1, 0, 1),  # stride 2 rows, asymmetric kernel, padding left/right
    (7, 7, 3, 2, 1, 1, 2, 2, 0, 0, 0, 0),  # 1x1 stride 2: rows and columns never used
    (4, 3, 2, 1, 4, 3, 1, 1, 0, 0, 0, 0),  # a dense layer: the window is the whole frame
    (9, 4, 1, 4, 3, 2, 2, 2, 1, 1, 0, 0),  # padding top/left only, stride 2, rows left over
]


def _swg_params(case):
    ih, iw, c, eb, kh, kw, sh, sw, pt, pl, pb, pr = case
    oh, ow = (ih + pt + pb - kh) // sh + 1, (iw + pl + pr - kw) // sw + 1
    return {"IH": ih, "IW": iw, "C": c, "EB": eb, "KH": kh, "KW": kw, "SH": sh, "SW": sw, "PT": pt, "PL": pl,
            "OH": oh, "OW": ow}


@pytest.mark.parametrize("case", SWG_CASES)
@pytest.mark.parametrize("p_valid,p_ready", STALLS[:2])
def test_sliding_window_generator_matches_model(case, p_valid, p_ready):
    p = _swg_params(case)
    rng = np.random.default_rng(sum(case))
    lo = -(1 << (p["EB"] - 1)) if p["EB"] > 1 else 0
    frames = rng.integers(lo, 1 << (p["EB"] - 1) if p["EB"] > 1 else 2, (3, p["IH"], p["IW"], p["C"]))
    recs = [pack(px, p["EB"]) for px in frames.reshape(-1, p["C"])]
    t = p["KH"] * p["KW"]
    rb, cb = _clog2(p["OH"]), _clog2(p["OW"])
    pw = p["C"] * p["EB"]
    expect = swg_model(frames, p["KH"], p["KW"], p["SH"], p["SW"], p["PT"], p["PL"], p["OH"], p["OW"])
    r = run_block("tb_swg", p, recs, pw, rb + cb + t + t * pw, len(expect), seed=11, p_valid=p_valid,
                  p_ready=p_ready)
    for i, (v, (oy, ox, mask, taps)) in enumerate(zip(r.outputs, expect)):
        window = unpack(v, t * p["C"], p["EB"], signed=p["EB"] > 1)
        got_mask = [(v >> (t * pw + j)) & 1 for j in range(t)]
        got_col = (v >> (t * pw + t)) & ((1 << cb) - 1)
        got_row = v >> (t * pw + t + cb)
        assert (got_row, got_col) == (oy, ox), f"window {i}"
        assert got_mask == mask, f"window {i}"
        assert window == taps.reshape(-1).tolist(), f"window {i}"
    if p_valid == 1.0 and p["OH"] * p["OW"] > 1:
        # documented cost: KH*KW + 4 cycles per window once the rows are there
        gaps = np.diff(r.out_cycles)
        assert np.min(gaps) == t + 4


# ----------------------------------------------------------------------------- pools


@pytest.mark.parametrize("eb,k,s,pad", [(1, 3, 2, 1), (1, 2, 2, 0), (6, 3, 2, 1), (6, 2, 1, 0)])
def test_maxpool_ignores_padding(eb, k, s, pad):
    ih, iw, c = 6, 5, 3
    oh, ow = (ih + 2 * pad - k) // s + 1, (iw + 2 * pad - k) // s + 1
    p = {"IH": ih, "IW": iw, "C": c, "EB": eb, "KH": k, "KW": k, "SH": s, "SW": s, "PT": pad, "PL": pad,
         "OH": oh, "OW": ow}
    rng = np.random.default_rng(eb * 7 + k)
    if eb == 1:
        vals = rng.choice([-1, 1], (2, ih, iw, c), p=[0.7, 0.3])  # mostly -1: the AND is exercised
        recs = [pack((px < 0).astype(int), 1) for px in vals.reshape(-1, c)]
    else:
        vals = rng.integers(-32, 32, (2, ih, iw, c))
        recs = [pack(px, eb) for px in vals.reshape(-1, c)]
    xp = np.pad(vals, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-1000)
    expect = []
    for f in xp:
        for oy in range(oh):
            for ox in range(ow):
                expect.append(f[oy * s: oy * s + k, ox * s: ox * s + k].max(axis=(0, 1)))
    r = run_block("bnnc_maxpool", p, recs, c * eb, c * eb, len(expect), seed=4, p_valid=0.7, p_ready=0.6)
    for v, e in zip(r.outputs, expect):
        got = unpack(v, c, eb)
        if eb == 1:
            got = [-1 if b else 1 for b in got]
        assert got == e.tolist()


@pytest.mark.parametrize("eb", [1, 7])
@pytest.mark.parametrize("p_valid,p_ready", STALLS)
def test_global_sum_pool(eb, p_valid, p_ready):
    npix, c = 6, 4
    ob = 12
    rng = np.random.default_rng(eb)
    if eb == 1:
        vals = rng.choice([-1, 1], (3, npix, c))
        recs = [pack((px < 0).astype(int), 1) for px in vals.reshape(-1, c)]
    else:
        vals = rng.integers(-64, 64, (3, npix, c))
        recs = [pack(px, eb) for px in vals.reshape(-1, c)]
    r = run_block("bnnc_gsum", {"NPIX": npix, "C": c, "EB": eb, "OB": ob}, recs, c * eb, c * ob, 3, seed=9,
                  p_valid=p_valid, p_ready=p_ready)
    assert [unpack(v, c, ob) for v in r.outputs] == vals.sum(axis=1).tolist()


@pytest.mark.parametrize("k,s", [(2, 2), (3, 1)])
@pytest.mark.parametrize("p_valid,p_ready", STALLS)
def test_sum_pool(k, s, p_valid, p_ready):
    ih, iw, c, eb, ob = 6, 5, 3, 7, 11
    oh, ow = (ih - k) // s + 1, (iw - k) // s + 1
    p = {"IH": ih, "IW": iw, "C": c, "EB": eb, "OB": ob, "KH": k, "KW": k, "SH": s, "SW": s, "OH": oh, "OW": ow}
    rng = np.random.default_rng(k * 10 + s)
    vals = rng.integers(-64, 64, (2, ih, iw, c))
    recs = [pack(px, eb) for px in vals.reshape(-1, c)]
    expect = [f[oy * s: oy * s + k, ox * s: ox * s + k].sum(axis=(0, 1)).tolist()
              for f in vals for oy in range(oh) for ox in range(ow)]
    r = run_block("bnnc_sumpool", p, recs, c * eb, c * ob, len(expect), seed=6, p_valid=p_valid, p_ready=p_ready)
    assert [unpack(v, c, ob) for v in r.outputs] == expect
    if p_valid == 1.0 and p_ready == 1.0:
        assert np.min(np.diff(r.out_cycles)) == k * k + 4  # documented cost per window


def _residual_model(a, b, sa, sb, rs, lo, hi):
    half = (1 << (rs - 1)) if rs else 0
    return np.clip((a * (1 << sa) + b * (1 << sb) + half) >> rs, lo, hi)


@pytest.mark.parametrize("sa,sb,rs,lo,hi,depths", [(0, 0, 0, -300, 300, (1, 3)), (2, 0, 1, -200, 150, (4, 1)),
                                                   (0, 3, 2, -(1 << 30) + 1, (1 << 30) - 1, (2, 2))])
@pytest.mark.parametrize("p_valid,p_ready", STALLS)
def test_fork_and_add_join_branches(sa, sb, rs, lo, hi, depths, p_valid, p_ready):
    """bnnc_fork feeds two FIFOs of different depths whose halves bnnc_add joins: every pair arrives,
    in order, with the add's rounding and clamp, at one pixel per cycle without stalls."""
    c, ab, bb, ob = 3, 9, 6, 12 if hi < 1 << 20 else 31
    p = {"C": c, "A_BITS": ab, "B_BITS": bb, "OUT_BITS": ob, "SHIFT_A": sa, "SHIFT_B": sb, "ROUND_SHIFT": rs,
         "OUT_MIN": lo, "OUT_MAX": hi, "A_DEPTH": depths[0], "B_DEPTH": depths[1]}
    rng = np.random.default_rng(sa + 3 * sb + 7 * rs)
    a = rng.integers(-(1 << (ab - 1)), 1 << (ab - 1), (70, c))
    b = rng.integers(-(1 << (bb - 1)), 1 << (bb - 1), (70, c))
    recs = [pack(x, ab) | (pack(y, bb) << (c * ab)) for x, y in zip(a, b)]
    r = run_block("tb_residual", p, recs, c * (ab + bb), c * ob, len(recs), seed=11, p_valid=p_valid,
                  p_ready=p_ready)
    assert [unpack(v, c, ob) for v in r.outputs] == _residual_model(a, b, sa, sb, rs, lo, hi).tolist()
    if p_valid == 1.0 and p_ready == 1.0 and min(depths) >= 2:  # a 1-entry FIFO takes every other cycle
        assert np.all(np.diff(r.out_cycles) == 1)


# ----------------------------------------------------------------------------- MVTU


def _weight_words(w, pe, simd, bits=1):
    """bnnc_mvtu's weight memory for the MH x MW matrix w, PE rows x SIMD lanes per fold: fold
    (f, s) is one word, weight (f * PE + r, s * SIMD + j) at bits (r * SIMD + j) * bits (two's
    complement; 1-bit weights: the bit itself)."""
    mh, mw = w.shape
    words = []
    for f in range(-(-mh // pe)):
        for s in range(-(-mw // simd)):
            word = 0
            for r in range(pe):
                for j in range(simd):
                    o, k = f * pe + r, s * simd + j
                    if o < mh and k < mw:
                        word |= (int(w[o, k]) & ((1 << bits) - 1)) << ((r * simd + j) * bits)
            words.append(word)
    return words


def mvtu_case(rng, mh, mw, pe, simd, ib, nt, ncls=1, gain=-2, lb=0, ls=1):
    """Random weights / tables, their memory images and a Python model of the unit."""
    nf, sf = -(-mh // pe), -(-mw // simd)
    wbits = rng.integers(0, 2, (mh, mw))
    if ib == 1:
        smin, smax = 0, mw
    else:
        m = 1 << (ib - 1)
        smin, smax = -mw * m, mw * m
    sb = max(smin.bit_length(), smax.bit_length(), (-smin).bit_length()) + 2
    tb = sb + 1
    ntab = max(nt, 1)
    thr = rng.integers(smin - 1, smax + 1, (ncls, mh, ntab))
    flag = rng.integers(0, 2, (ncls, mh))
    flag[:] = flag[0]  # flags are per row
    ab = tb + 3
    ew = ntab * tb + 1
    wmem = _weight_words(wbits, pe, simd)
    tmem = []
    for cl in range(ncls):
        for f in range(nf):
            word = 0
            for p in range(pe):
                o = f * pe + p
                if o >= mh:
                    continue
                entry = pack(thr[cl, o], tb) | (int(flag[cl, o]) << (ntab * tb))
                word |= entry << (p * ew)
            tmem.append(word)
    mems = {"w.mem": mem_image(wmem, pe * simd), "t.mem": mem_image(tmem, pe * ew)}

    def model(x, cls):
        if ib == 1:
            s = (x[None, :] ^ wbits).sum(axis=1)
        else:
            s = np.where(wbits == 1, -x[None, :], x[None, :]).sum(axis=1)
        if nt == 0:
            return np.where(flag[cls] == 1, thr[cls, :, 0] + gain * s, thr[cls, :, 0])
        return lb + ls * ((s[:, None] > thr[cls]) ^ flag[cls][:, None]).sum(axis=1)

    params = {"MATRIX_ROWS": mh, "MATRIX_COLS": mw, "PE": pe, "SIMD": simd, "INPUT_BITS": ib, "SUM_BITS": sb,
              "THRESHOLDS": nt, "TABLE_BITS": tb, "ACC_BITS": ab,
              "GAIN": gain}
    if (lb, ls) != (0, 1):
        params.update(LEVEL_BASE=lb, LEVEL_STEP=ls,
                      OUT_BITS=max((lb + ls * nt).bit_length(), (-lb).bit_length(), lb.bit_length()) + 1)
    return params, mems, model, (nf, sf)


MVTU_CASES = [
    # mh, mw, pe, simd, ib, nt
    (5, 11, 2, 4, 1, 1),  # PE does not divide MH, SIMD does not divide MW
    (6, 9, 1, 1, 1, 1),  # fully folded
    (4, 7, 4, 7, 1, 1),  # fully parallel
    (7, 10, 3, 3, 6, 0),  # integer inputs, accumulator output, gain 1
    (5, 12, 5, 5, 1, 0),  # binary inputs, accumulator output, gain -2
    (3, 8, 2, 3, 1, 3),  # three thresholds per row (a 2-bit activation)
    (6, 70, 2, 70, 1, 1),  # a popcount tree: 5 lane groups, 3 adder levels
    (3, 40, 1, 20, 1, 1),  # 2 lane groups, 1 adder level, 2 synapse folds
    (4, 30, 2, 30, 4, 0),  # integer lanes: 15 groups, 4 adder levels
    # the pipelined threshold count (random, unsorted thresholds): compare bits, groups of 16, adder levels
    (3, 6, 3, 2, 1, 2),  # two thresholds: one group, no adder level
    (4, 40, 2, 8, 1, 17),  # one threshold past a group: two groups, one level
    (3, 50, 1, 10, 3, 100),  # integer inputs, 7 groups (the last of 4), three levels
    (2, 90, 2, 30, 4, 255),  # an 8-bit activation: 16 groups, four levels
]


@pytest.mark.parametrize("case", MVTU_CASES)
@pytest.mark.parametrize("p_valid,p_ready", STALLS)
def test_mvtu_matches_model(case, p_valid, p_ready):
    mh, mw, pe, simd, ib, nt = case
    rng = np.random.default_rng(sum(case))
    gain = 1 if ib > 1 else -2
    params, mems, model, (nf, sf) = mvtu_case(rng, mh, mw, pe, simd, ib, nt, gain=gain)
    n = 12
    if ib == 1:
        xs = rng.integers(0, 2, (n, mw))
    else:
        xs = rng.integers(-(1 << (ib - 1)), 1 << (ib - 1), (n, mw))
    recs = [pack(x, ib) for x in xs]
    ob = params["ACC_BITS"] if nt == 0 else _clog2(nt + 1)
    r = run_block("tb_mvtu", params, recs, 2 + mw * ib, mh * ob, n, seed=13, p_valid=p_valid, p_ready=p_ready,
                  mem_files=mems)
    for i, (v, x) in enumerate(zip(r.outputs, xs)):
        assert unpack(v, mh, ob, signed=nt == 0) == model(x, 0).tolist(), f"vector {i}"
    if p_valid == 1.0 and p_ready == 1.0:
        assert np.all(np.diff(r.out_cycles) == nf * sf)  # back to back: no bubble between vectors
        # the performance model's latency: folds plus the unit's register stages
        assert r.out_cycles[0] - r.in_cycles[0] == matrix_unit.latency(nf, sf, simd, ib, thresholds=nt)


@pytest.mark.parametrize("bank_depth", [2, 4, 8])
@pytest.mark.parametrize("p_valid,p_ready", STALLS[:2])
def test_mvtu_banked_weight_memory(bank_depth, p_valid, p_ready):
    """A weight memory deeper than WEIGHT_BANK_DEPTH (here 2..8 words of 15 or 35 folds) is stored as banks
    side by side (matrix_unit.banked_words): same outputs, same latency as one bank."""
    for case in [(5, 11, 2, 4, 1, 1), (7, 10, 3, 2, 6, 0)]:
        mh, mw, pe, simd, ib, nt = case
        rng = np.random.default_rng(sum(case) + bank_depth)
        params, mems, model, (nf, sf) = mvtu_case(rng, mh, mw, pe, simd, ib, nt, gain=1 if ib > 1 else -2)
        assert nf * sf > bank_depth
        words = [int(x, 16) for x in mems["w.mem"].split()]
        mems["w.mem"] = mem_image(*matrix_unit.banked_words(words, pe * simd, bank_depth))
        assert matrix_unit.unbanked_words([int(x, 16) for x in mems["w.mem"].split()], pe * simd, nf * sf,
                                          bank_depth) == words
        params["WEIGHT_BANK_DEPTH"] = bank_depth
        n = 8
        if ib == 1:
            xs = rng.integers(0, 2, (n, mw))
        else:
            xs = rng.integers(-(1 << (ib - 1)), 1 << (ib - 1), (n, mw))
        ob = params["ACC_BITS"] if nt == 0 else _clog2(nt + 1)
        r = run_block("tb_mvtu", params, [pack(x, ib) for x in xs], 2 + mw * ib, mh * ob, n, seed=19,
                      p_valid=p_valid, p_ready=p_ready, mem_files=mems)
        for i, (v, x) in enumerate(zip(r.outputs, xs)):
            assert unpack(v, mh, ob, signed=nt == 0) == model(x, 0).tolist(), f"{case} vector {i}"
        if p_valid == 1.0 and p_ready == 1.0:
            assert np.all(np.diff(r.out_cycles) == nf * sf)
            assert r.out_cycles[0] - r.in_cycles[0] == matrix_unit.latency(nf, sf, simd, ib)


@pytest.mark.parametrize("mh,mw,pe,simd,ib,wb", [(5, 11, 2, 4, 8, 3), (3, 6, 3, 6, 12, 25), (4, 9, 1, 1, 5, 2)])
@pytest.mark.parametrize("p_valid,p_ready", STALLS[:2])
def test_mvtu_multiply_accumulate(mh, mw, pe, simd, ib, wb, p_valid, p_ready):
    """MAC = 1 (real-valued layers): one signed WEIGHT_BITS-bit weight per row and lane, out = off + sum x * w,
    at the popcount unit's speed and latency."""
    rng = np.random.default_rng(mh * mw + wb)
    nf, sf = -(-mh // pe), -(-mw // simd)
    w = rng.integers(-(1 << (wb - 1)), 1 << (wb - 1), (mh, mw))
    off = rng.integers(-1000, 1000, mh)
    vmax = mw * (1 << (ib - 1)) * (1 << (wb - 1))
    vb = (2 * vmax).bit_length() + 1
    tb, gb = 12, 2
    ab = max(vb, tb) + 1
    ew = tb + gb + 1
    wmem = _weight_words(w, pe, simd, wb)
    tmem = []
    for f in range(nf):
        word = 0
        for r in range(pe):
            o = f * pe + r
            if o < mh:  # offset, a gain the MAC unit ignores, flag
                word |= (pack([off[o]], tb) | (1 << tb) | (1 << (ew - 1))) << (r * ew)
        tmem.append(word)
    mems = {"w.mem": mem_image(wmem, pe * simd * wb), "t.mem": mem_image(tmem, pe * ew)}
    params = {"MATRIX_ROWS": mh, "MATRIX_COLS": mw, "PE": pe, "SIMD": simd, "INPUT_BITS": ib, "SUM_BITS": vb,
              "THRESHOLDS": 0, "TABLE_BITS": tb, "ACC_BITS": ab, "GAIN": 1, "GAINS_IN_TABLE": 1, "GAIN_BITS": gb,
              "VALUE_BITS": vb, "MAC": 1, "WEIGHT_BITS": wb}
    n = 10
    xs = rng.integers(-(1 << (ib - 1)), 1 << (ib - 1), (n, mw))
    r = run_block("tb_mvtu", params, [pack(x, ib) for x in xs], 2 + mw * ib, mh * ab, n, seed=17, p_valid=p_valid,
                  p_ready=p_ready, mem_files=mems)
    for v, x in zip(r.outputs, xs):
        assert unpack(v, mh, ab) == (off + w @ x).tolist()
    if p_valid == 1.0 and p_ready == 1.0:
        assert np.all(np.diff(r.out_cycles) == nf * sf)
        assert r.out_cycles[0] - r.in_cycles[0] == matrix_unit.latency(nf, sf, simd, ib, mac=True)


@pytest.mark.parametrize("pre_shift,shift", [(0, 3), (2, 5)])
@pytest.mark.parametrize("p_valid,p_ready", STALLS[:2])
def test_mvtu_requantization(pre_shift, shift, p_valid, p_ready):
    """REQUANTIZE = 1: out = clamp(floor((clamp((off + s) >> PRE_SHIFT, lo, hi) * mult + add) / 2**SHIFT), OUT_MIN,
    OUT_MAX) per row, one operation per register, at the latency the performance model counts."""
    mh, mw, pe, simd, ib = 5, 12, 2, 5, 6
    rng = np.random.default_rng(pre_shift * 7 + shift)
    nf, sf = -(-mh // pe), -(-mw // simd)
    wbits = rng.integers(0, 2, (mh, mw))
    sb, tb, ab, pw, omin, omax = 12, 12, 14, 26, -8, 7
    off = rng.integers(-200, 200, mh)
    mult = rng.integers(-300, 300, mh)
    add = rng.integers(-900, 900, mh)
    lo = rng.integers(-400, 0, mh) >> pre_shift
    hi = rng.integers(0, 400, mh) >> pre_shift
    ew = 5 * tb + 1
    wmem = _weight_words(wbits, pe, simd)
    tmem = []
    for f in range(nf):
        word = 0
        for r in range(pe):
            o = f * pe + r
            if o < mh:  # off, mult, add, lo, hi, flag
                word |= (pack([off[o], mult[o], add[o], lo[o], hi[o]], tb) | (1 << (ew - 1))) << (r * ew)
        tmem.append(word)
    mems = {"w.mem": mem_image(wmem, pe * simd), "t.mem": mem_image(tmem, pe * ew)}
    ob = 4
    params = {"MATRIX_ROWS": mh, "MATRIX_COLS": mw, "PE": pe, "SIMD": simd, "INPUT_BITS": ib, "SUM_BITS": sb,
              "THRESHOLDS": 0, "TABLE_BITS": tb, "ACC_BITS": ab, "GAIN": 1, "REQUANTIZE": 1, "SHIFT": shift,
              "PRE_SHIFT": pre_shift, "OUT_MIN": omin, "OUT_MAX": omax, "PRODUCT_BITS": pw, "OUT_BITS": ob}
    n = 10
    xs = rng.integers(-(1 << (ib - 1)), 1 << (ib - 1), (n, mw))
    r = run_block("tb_mvtu", params, [pack(x, ib) for x in xs], 2 + mw * ib, mh * ob, n, seed=23, p_valid=p_valid,
                  p_ready=p_ready, mem_files=mems)
    for v, x in zip(r.outputs, xs):
        acc = off + np.where(wbits == 1, -x[None, :], x[None, :]).sum(axis=1)
        a = np.clip(acc >> pre_shift, lo, hi)
        assert unpack(v, mh, ob) == np.clip((a * mult + add) >> shift, omin, omax).tolist()
    if p_valid == 1.0 and p_ready == 1.0:
        assert np.all(np.diff(r.out_cycles) == nf * sf)
        assert r.out_cycles[0] - r.in_cycles[0] == matrix_unit.latency(nf, sf, simd, ib, requantize=True)


@pytest.mark.parametrize("nt,lb,ls", [(3, -3, 2), (255, -128, 1)])
def test_mvtu_levels_give_base_plus_step_times_count(nt, lb, ls):
    """out = LEVEL_BASE + LEVEL_STEP * count: three thresholds and -3 + 2 * count, a 2-bit activation in
    {-3, -1, 1, 3}; 255 thresholds and -128 + count, a signed 8-bit activation (bireal's), its count pipelined."""
    rng = np.random.default_rng(8 + nt)
    mw = 9 if nt < 16 else 300
    params, mems, model, _ = mvtu_case(rng, 5, mw, 2, 4 if nt < 16 else 30, 1, nt, lb=lb, ls=ls)
    ob = params["OUT_BITS"]
    xs = rng.integers(0, 2, (10, mw))
    r = run_block("tb_mvtu", params, [pack(x, 1) for x in xs], 2 + mw, 5 * ob, 10, mem_files=mems, p_ready=0.8)
    for v, x in zip(r.outputs, xs):
        assert unpack(v, 5, ob) == model(x, 0).tolist()


def test_mvtu_border_classes_select_their_tables():
    rng = np.random.default_rng(5)
    ohr, owc, ny, nx = 3, 4, 3, 2
    ycls, xcls = [0, 1, 2], [0, 1, 1, 0]
    params, mems, model, _ = mvtu_case(rng, 6, 10, 3, 4, 1, 1, ncls=ny * nx)
    yb, xb = _clog2(ny), _clog2(nx)
    params.update({"BORDER_CLASSES": ny * nx, "COL_CLASS_COUNT": nx, "OUT_ROWS": ohr, "OUT_COLS": owc,
                   "ROW_CLASS_BITS": yb, "COL_CLASS_BITS": xb,
                   "ROW_CLASSES": f"{ohr * yb}'h{pack(ycls, yb):x}", "COL_CLASSES": f"{owc * xb}'h{pack(xcls, xb):x}"})
    rb, cb = _clog2(ohr), _clog2(owc)
    xs = rng.integers(0, 2, (ohr * owc, 10))
    recs = [pack(x, 1) | (((oy << cb) | ox) << 10) for (oy, ox), x in
            zip([(y, c) for y in range(ohr) for c in range(owc)], xs)]
    r = run_block("tb_mvtu", params, recs, rb + cb + 10, 6, len(recs), mem_files=mems, p_ready=0.7)
    for i, v in enumerate(r.outputs):
        oy, ox = divmod(i, owc)
        assert unpack(v, 6, 1, signed=False) == model(xs[i], ycls[oy] * nx + xcls[ox]).tolist()
