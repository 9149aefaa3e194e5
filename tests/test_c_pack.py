"""pack_bits on random graphs: both weight layouts hold the same filters, the VNNI tables satisfy
their identity, and padded outputs can never produce a bit (the math the kernels rely on)."""

import re

import numpy as np
import pytest

from bnnc import ir
from bnnc.passes.pack_bits import (OBLOCK, THR_NEVER, int16_pair_lanes, int16_pair_weights, pack_bit_rows, pack_bits,
                                   pair_groups, unpack_bit_rows)
from bnnc.passes.plan_arena import plan_arena

from .helpers import assert_live_buffers_apart, random_case

SEEDS = range(30)


def _convs(graph, **kw):
    g = pack_bits(graph, **kw)
    return [(op, g.tensors[op.inputs[0]]) for op in g.ops() if isinstance(op, ir.Conv)]


def _unpack_int16_pairs(words, o, k, strict=True):
    """Inverse of int16_pair_weights: (O, K) int64; checks that padded taps (and, strict,
    channels) are 0."""
    n = -(-k // 2)
    g8, gt, g2 = pair_groups(o)
    w = np.asarray(words, np.int64)
    halves = np.stack([w & 0xFFFF, w >> 16], axis=-1)
    halves = np.where(halves >= 2**15, halves - 2**16, halves)
    parts, at = [], 0
    for size, count in ((8, g8), (gt, 1 if gt else 0), (2, g2)):  # per group (pairs, channels, 2)
        group = halves[at:at + count * n * size].reshape(count, n, size, 2)
        parts.append(group.transpose(0, 2, 1, 3).reshape(count * size, 2 * n))
        at += count * n * size
    full = np.concatenate(parts)
    assert w.size == (8 * g8 + gt + 2 * g2) * n and not np.any(full[:, k:]) and not (strict and np.any(full[o:]))
    return full[:o, :k]


@pytest.mark.parametrize("word_bits", [0, 32, 64])
def test_int16_pair_lanes_put_every_channel_on_its_own_bit(word_bits):
    """Simulate the bit-output epilogue of model.c.j2 on the lane order: bit c of the output is
    channel c's sign, for every channel count."""
    for o in range(1, 100):
        lanes = int16_pair_lanes(o, word_bits)
        assert sorted(lanes) == list(range(o + o % 2))
        if word_bits != 32:
            assert np.array_equal(lanes, np.arange(o + o % 2))
            continue
        at = 0
        for base in range(0, o, 32):
            even = min(32, o - base) + min(32, o - base) % 2
            g8, g2 = even // 8, even % 8 // 2
            for c in range(base, min(base + 32, o)):  # one channel negative at a time
                b = 0
                for q in range(g8):
                    r = [-1 if lanes[at + 8 * q + m] == c else 1 for m in range(8)]
                    s = sum(((r[2 * j] < 0) << (15 - j)) | ((r[2 * j + 1] < 0) << (31 - j)) for j in range(4))
                    b = (b >> 4) | s
                if g8 < 4:
                    lo, hi = 2 ** (4 * g8) - 1, 2 ** (8 * g8) - 2 ** (4 * g8)
                    b = ((b >> (16 - 4 * g8)) & lo) | ((b >> (32 - 8 * g8)) & hi)
                cc = 0
                for i in range(2 * g2):
                    cc = (cc >> 1) | ((lanes[at + 8 * g8 + i] == c) << 31)
                if g2:
                    b |= cc >> (32 - 8 * g8 - 2 * g2)
                assert b == 1 << (c - base), (o, c)
            at += 8 * g8 + 2 * g2


def test_int16_pair_groups_leave_4_or_6_channels_to_one_group():
    """Groups of 8, then the 4 or 6 channels left over as one group (4 or 6 SMLADs per load of the
    window), 2 as a group of 2: every channel (O rounded up to even) in exactly one group."""
    for o in range(1, 70):
        g8, gt, g2 = pair_groups(o)
        tail = (o + o % 2) % 8
        assert 8 * g8 + gt + 2 * g2 == o + o % 2
        assert (gt, g2) == {0: (0, 0), 2: (0, 1), 4: (4, 0), 6: (6, 0)}[tail]


def test_int16_pairs_round_trip_on_every_group_split():
    rng = np.random.default_rng(0)
    for o in range(1, 20):
        for k in (1, 2, 5, 27):
            w = rng.integers(-(2**15), 2**15, size=(o, k))
            assert np.array_equal(_unpack_int16_pairs(int16_pair_weights(w), o, k), w)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("word_bits", [32, 64])
def test_blocked_and_row_layouts_hold_the_same_filters(seed, word_bits):
    graph = random_case(seed, 1)[2]
    blocked = _convs(graph, word_bits=word_bits)
    rows = _convs(graph, word_bits=word_bits, layout="rows")
    for (op, src), (op_r, _) in zip(blocked, rows):
        p, pr = op.packed, op_r.packed
        o = op.w.shape[0]
        expect = (pack_bit_rows(op.w, word_bits).reshape(o, -1) if isinstance(src, ir.Bits)
                  else op.w.reshape(o, -1))
        if pr.pairs:  # int16 pairs, channels in groups of 8 then 6, 4 or 2, windows in (kx, ky, c) order
            lanes = int16_pair_lanes(o, word_bits if pr.thr is not None else 0)
            assert sorted(lanes) == list(range(o + o % 2))  # every channel once (o: padding)
            by_lane = _unpack_int16_pairs(pr.weights[0], o + o % 2, op.w[0].size, strict=False)
            unpermuted = np.zeros_like(by_lane)
            unpermuted[lanes] = by_lane
            assert np.array_equal(unpermuted[:o], op.w.transpose(0, 2, 1, 3).reshape(o, -1))
            assert not np.any(unpermuted[o:])
            assert -(2**15) <= src.lo and src.hi < 2**15
        elif pr.dense:  # the filter's kh * kw * C bits back to back, fewer words than tap by tap
            dense = pack_bit_rows(op.w.reshape(o, -1), word_bits)
            assert np.array_equal(pr.weights[0], dense) and dense.shape[1] < expect.shape[1]
            assert np.array_equal(unpack_bit_rows(pr.weights[0], op.w[0].size, word_bits), op.w.reshape(o, -1))
        else:
            assert np.array_equal(pr.weights[0], expect)
        assert pr.o_pad == o and (pr.thr is None or pr.thr.shape[1] == o)
        unblocked = p.weights[0].transpose(0, 2, 1).reshape(p.o_pad, p.taps)
        assert np.array_equal(unblocked[:o], expect) and not np.any(unblocked[o:])
        assert p.o_pad % OBLOCK == 0 and p.o_pad - o < OBLOCK


@pytest.mark.parametrize("seed", SEEDS)
def test_vnni_tables_reproduce_the_integer_accumulator(seed):
    rng = np.random.default_rng(seed)
    graph = random_case(seed, 1)[2]
    for op, src in _convs(graph):
        p = op.packed
        if p.in_kind != "ints":
            continue
        kh, kw = op.kernel
        c = src.shape[2]
        assert p.acc16 == (p.taps * max(abs(src.lo), abs(src.hi)) <= 32767)
        if p.vnni_offset is None:
            assert max(src.hi, 0) - min(src.lo, 0) > 255
            continue
        x = rng.integers(src.lo, src.hi + 1, size=(5, kh, kw * c))
        x[0] = 0  # a window of zero padding
        u = x - p.vnni_offset
        assert u.min() >= 0 and u.max() <= 255
        nb, _, g, _, _ = p.weights_vnni.shape
        wv = p.weights_vnni.transpose(0, 3, 1, 2, 4).reshape(nb * OBLOCK, kh, g * 4).astype(np.int64)
        assert not np.any(wv[:, :, kw * c:]), "row padding must have zero weights"
        up = np.zeros((5, kh, g * 4), np.int64)
        up[:, :, : kw * c] = u
        up[:, :, kw * c:] = rng.integers(0, 256, size=(5, kh, g * 4 - kw * c))  # whatever follows a row
        got = np.einsum("nhk,ohk->no", up, wv) + p.vnni_corr[None, :]
        want = x.reshape(5, -1) @ op.w.reshape(op.w.shape[0], -1).T.astype(np.int64)
        assert np.array_equal(got[:, : op.w.shape[0]], want)


@pytest.mark.parametrize("seed", SEEDS)
def test_padded_outputs_never_set_a_bit(seed):
    graph = random_case(seed, 1)[2]
    for op, src in _convs(graph):
        p = op.packed
        if p.thr is None:
            continue
        s_max = p.k_full if p.in_kind == "bits" else p.taps * max(abs(src.lo), abs(src.hi))
        assert s_max < THR_NEVER and np.all(p.thr[:, p.o:] == THR_NEVER)
        bits = (p.neg_words[:, None] >> np.arange(OBLOCK, dtype=np.uint32)) & 1
        assert np.array_equal(bits.ravel()[: p.o], p.neg) and not np.any(bits.ravel()[p.o:])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("layout,word_bits", [("blocked", 64), ("rows", 32)])
def test_arena_is_within_5_percent_of_its_lower_bound_and_never_overlaps_live_buffers(seed, layout, word_bits):
    g = plan_arena(pack_bits(random_case(seed, 1)[2], word_bits, layout))
    a = g.arena
    # the MCU plan ("rows") may put an output over its input: below the disjoint buffers' bound
    assert a["overlap_bound"] <= a["size"] <= 1.05 * a["lower_bound"]
    assert a["overlap_bound"] <= a["lower_bound"] and (a["overlaps"] or a["overlap_bound"] == a["lower_bound"])
    assert layout == "rows" or (not a["overlaps"] and a["overlap_bound"] == a["lower_bound"])
    assert_live_buffers_apart(g)


@pytest.mark.parametrize("model", ["tfc", "cnv", "w1a2", "ternary-ec2t", "abc-fused", "hbn", "resnet18-stq"])
def test_conv_kernel_names_the_kernel_each_layer_calls(model):
    """c.conv_kernel, the one kernel selection of every weight code, agrees with the generated C:
    each convolution of the host and the MCU build calls the kernel it names (or, for the kernels
    generated per layer, defines it), and the runtime headers have it."""
    from bnnc import driver, zoo
    from bnnc.backends import c as cb
    from bnnc.backends import mcu
    from bnnc.pipeline import compile_graph
    from bnnc.resources import resource_dir

    runtime = "".join((resource_dir("runtime") / h).read_text() for h in ("bnnc_kernels.h", "bnnc_families.h"))
    graph = compile_graph(zoo.build(model))
    seen = set()
    for bg in (driver.backend_graph(graph), mcu.backend_graph(graph)):
        text = cb.render(bg, "bnnc")["model.c"]
        for op in bg.ops():
            if not isinstance(op, ir.Conv):
                continue
            kernel = cb.conv_kernel(op.packed)
            seen.add((bg.weight_layout, kernel))
            symbol = {"int16_pairs": "BNNC_INT16_BAND", "xnor_rows": f"{op.name}_row"}.get(kernel, f"bnnc_{kernel}")
            starts = [m.end() for m in re.finditer(rf"\bvoid {op.name}(_portable|_avx2|_avx512)?\(", text)]
            assert starts, op.name
            for at in starts:  # the layer in each kernel variant
                assert symbol in text[at:text.index("\n}\n", at)], (bg.weight_layout, op.name, kernel)
            if kernel != "xnor_rows":
                assert symbol in runtime
    assert {layout for layout, _ in seen} == {"blocked", "rows"}


@pytest.mark.parametrize("seed", range(4))
def test_comparison_tables_give_the_sign_of_every_accumulator(seed):
    """pack_bits.comparison_tables, the threshold tables of both kernel sets: (s > thr) ^ neg is the
    bit of -1, i.e. NOT (d * acc >= T), for every reachable s (popcount with acc = K - 2 s + corr,
    or accumulator acc = s + corr), per border class; constant channels ignore s under any bound."""
    from bnnc.passes.pack_bits import comparison_tables

    rng = np.random.default_rng(seed)
    o, k = 12, 40
    th = ir.Thresholds(direction=rng.choice([-1, 1], o).astype(np.int8), threshold=rng.integers(-50, 50, o),
                       constant=np.where(rng.random(o) < 0.25, rng.choice([-1, 1], o), 2).astype(np.int8))
    corr = rng.integers(-9, 9, (3, o))
    const = th.constant != ir.Thresholds.NOT_CONSTANT
    for k_full, never in ((k, THR_NEVER), (None, THR_NEVER), (None, 2**62)):
        thr, neg = comparison_tables(th, corr, k_full, never)
        assert thr.shape == corr.shape and neg.shape == (o,)
        s = np.arange(0, k + 1) if k_full else np.arange(-80, 80)
        acc = (k - 2 * s if k_full else s)[:, None, None] + corr[None]
        bit = (s[:, None, None] > thr[None]) ^ neg.astype(bool)
        expect = np.where(const, th.constant < 0, ~(th.direction * acc >= th.threshold))
        assert np.array_equal(bit, np.broadcast_to(expect, bit.shape))
        assert np.all(np.abs(thr[:, const]) == never)
