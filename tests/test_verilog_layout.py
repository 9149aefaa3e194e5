"""layout_folded_layers: the folded weight words and per-class tables, emulated exactly as the MVTU
uses them, give the reference executor's accumulators and bits on random graphs and foldings."""

import numpy as np
import pytest

from bnnc import folding, ir, reference, zoo
from bnnc.passes.layout_folded_layers import layout_folded_layers, signed_bits
from bnnc.pipeline import compile_graph
from bnnc.testing.random_models import random_inputs, random_model
from bnnc import driver


def _decode(word: int, n: int, width: int) -> list:
    return [(word >> (i * width)) & ((1 << width) - 1) for i in range(n)]


def _signed(v: int, width: int) -> int:
    return v - (1 << width) if v >> (width - 1) else v


def emulate(f, op: ir.Conv, a: np.ndarray) -> np.ndarray:
    """Bits (1 = -1) or accumulators (N, OH, OW, MH * act_planes) of the folded unit on input values a,
    decoding the weight and table words exactly as bnnc_mvtu does."""
    kh, kw = op.kernel
    bits_in = f.fold.in_bits == 1
    x = (a < 0).astype(np.int64) if bits_in else a.astype(np.int64)
    t, l, b, r = op.pads
    xp = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))  # padded taps read as 0
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(1, 2))[:, :: op.stride[0], :: op.stride[1]]
    win = win.transpose(0, 1, 2, 4, 5, 3)
    n, oh, ow = win.shape[:3]
    cols = np.zeros((n, oh, ow, f.fold.sf * f.fold.simd), np.int64)  # idle lanes hold 0
    cols[..., : f.fold.mw] = win.reshape(n, oh, ow, -1)
    arrays = f.weights.arrays
    s = np.zeros((f.weights.planes, n, oh, ow, f.fold.nf * f.fold.pe), np.int64)
    for nf in range(f.fold.nf):
        for sf in range(f.fold.sf):
            word = f.weights.words[nf * f.fold.sf + sf]
            wb = np.array(_decode(word, len(arrays) * f.fold.pe * f.fold.simd, 1))
            wb = wb.reshape(len(arrays), f.fold.pe, f.fold.simd)
            lanes = cols[..., sf * f.fold.simd:(sf + 1) * f.fold.simd]
            for j in range(f.weights.planes):
                bj = next((wb[i] for i, (pj, w) in enumerate(arrays) if pj == j and w == "b"), np.zeros_like(wb[0]))
                mj = next((wb[i] for i, (pj, w) in enumerate(arrays) if pj == j and w == "m"), np.ones_like(wb[0]))
                for p in range(f.fold.pe):
                    if bits_in:
                        part = ((lanes ^ bj[p]) & mj[p]).sum(axis=-1)
                    else:
                        part = (mj[p] * np.where(bj[p] == 1, -lanes, lanes)).sum(axis=-1)
                    s[j, ..., nf * f.fold.pe + p] += part
    s = s[..., : f.fold.mh]
    assert -(1 << (f.sums.plane_bits - 1)) <= s.min() and s.max() < (1 << (f.sums.plane_bits - 1))
    ew, k = f.entry_bits, f.table.values
    gw = f.weights.planes * f.weights.gain_bits if f.sums.gains_in_table else 0
    out = np.zeros((n, oh, ow, f.fold.mh * f.epilogue.act_planes), np.int64)
    for oy in range(oh):
        for ox in range(ow):
            cls = f.borders.rows[oy] * f.borders.nx + f.borders.cols[ox]
            for o in range(f.fold.mh):
                nf, p = divmod(o, f.fold.pe)
                entry = _decode(f.table.words[cls * f.fold.nf + nf], f.fold.pe, ew)[p]
                values = [_signed(v, f.table.value_bits) for v in _decode(entry, k, f.table.value_bits)]
                flags = _decode(entry >> (k * f.table.value_bits + gw), f.table.flags, 1)
                if f.sums.gains_in_table:
                    fields = _decode(entry >> (k * f.table.value_bits), f.weights.planes, f.weights.gain_bits)
                    gains = [_signed(g, f.weights.gain_bits) for g in fields]
                    sv = sum(g * s[j, :, oy, ox, o] for j, g in enumerate(gains))
                    assert f.sums.lo <= sv.min() and sv.max() <= f.sums.hi
                else:
                    sv = s[0, :, oy, ox, o]
                if f.epilogue.mode == "thresholds":
                    for j in range(f.epilogue.act_planes):
                        out[:, oy, ox, j * f.fold.mh + o] = (sv > values[j]).astype(np.int64) ^ flags[j]
                elif f.epilogue.mode == "levels":
                    count = sum((sv > v).astype(np.int64) ^ flags[0] for v in values)
                    out[:, oy, ox, o] = f.epilogue.level_base + f.epilogue.level_step * count
                else:
                    acc = values[0] + (sv if f.sums.gains_in_table else (f.epilogue.gain * sv if flags[0] else 0))
                    if f.epilogue.mode == "requant":
                        assert np.abs(acc * values[1]).max() + abs(values[2]) < 1 << (f.epilogue.requant.bits - 1)
                        acc = np.clip(acc, values[3], values[4])
                        rq = f.epilogue.requant
                        acc = np.clip((acc * values[1] + values[2]) >> rq.shift, rq.lo, rq.hi)
                    out[:, oy, ox, o] = acc
    return out


def _foldings(graph, kind: str, rng):
    layers = folding.foldable_layers(graph)
    if kind == "serial":
        return [folding.LayerFolding(L, 1, 1) for L in layers]
    if kind == "parallel":
        return [folding.LayerFolding(L, L.mh, L.mw) for L in layers]
    return [folding.LayerFolding(L, int(rng.integers(1, L.mh + 1)), int(rng.integers(1, L.mw + 1))) for L in layers]


VERILOG_FAMILIES = ("w1a2", "ternary-ttq", "ternary-qonnx", "xnet", "dabn", "abc-fused", "abc-explicit", "pabt",
                    "ternary-ec2t", "hbn")


def _case(seed):
    """Random models, and (string seeds "name:seed") zoo models of the families the verilog target holds."""
    if not isinstance(seed, str):
        model, _ = random_model(seed)
        graph = compile_graph(model)
        return graph, driver.prepare_inputs(graph, random_inputs(model, 6, seed)).grid
    name, zseed = seed.split(":")
    model = zoo.build(name, seed=int(zseed))
    graph = compile_graph(model)
    return graph, driver.prepare_inputs(graph, zoo.inputs(model, 6, seed=int(zseed))).grid


@pytest.mark.parametrize("seed", [f"{n}:{s}" for n in VERILOG_FAMILIES for s in (1, 2)] + list(range(20)))
def test_folded_tables_reproduce_the_reference(seed):
    graph, x = _case(seed)
    env = reference.intermediates(graph, x)
    rng = np.random.default_rng(abs(hash(seed)) % 2**32 if isinstance(seed, str) else seed)
    for kind in ("serial", "parallel", "random"):
        g = layout_folded_layers(graph, _foldings(graph, kind, rng))
        for op in g.ops():
            if not isinstance(op, ir.Conv):
                continue
            a = env[op.inputs[0]]
            got = emulate(op.folded, op, a)
            if op.folded.epilogue.mode == "thresholds":
                assert np.array_equal(got, (env[op.outputs[0]] < 0).astype(np.int64)), f"{op.name} ({kind})"
            elif op.folded.epilogue.mode in ("levels", "requant"):
                assert np.array_equal(got, env[op.outputs[0]]), f"{op.name} ({kind})"
            else:
                acc = reference.conv_accumulator(op, a.astype(np.int64))
                assert np.array_equal(got, acc), f"{op.name} ({kind})"
                assert op.folded.epilogue.acc_lo <= acc.min() and acc.max() <= op.folded.epilogue.acc_hi


def test_layout_is_pure_and_deterministic():
    model, _ = random_model(4)
    graph = compile_graph(model)
    fold = _foldings(graph, "random", np.random.default_rng(0))
    g1, g2 = layout_folded_layers(graph, fold), layout_folded_layers(graph, fold)
    assert not any(hasattr(op, "folded") for op in graph.ops())
    for a, b in zip(g1.ops(), g2.ops()):
        if isinstance(a, ir.Conv):
            assert a.folded.weights.words == b.folded.weights.words and a.folded.table.words == b.folded.table.words


def test_a_zero_inside_a_binary_filter_becomes_a_masked_plane():
    model, _ = random_model(2)
    graph = compile_graph(model)
    conv = next(op for op in graph.ops() if isinstance(op, ir.Conv))
    conv.w[0].flat[0] = 0
    x = driver.prepare_inputs(graph, random_inputs(model, 4, 2)).grid
    env = reference.intermediates(graph, x)
    g = layout_folded_layers(graph, _foldings(graph, "serial", None))
    op = g.op(conv.name)
    assert op.folded.weights.kinds == ("masked_xnor",)
    want = env[op.outputs[0]]
    got = emulate(op.folded, op, env[op.inputs[0]])
    assert np.array_equal(got, (want < 0).astype(np.int64) if op.folded.epilogue.mode == "thresholds" else want)


def test_signed_bits():
    assert [signed_bits(lo, hi) for lo, hi in [(0, 0), (-1, 0), (0, 1), (-128, 127), (-129, 0), (0, 128)]] == \
        [1, 1, 2, 8, 9, 9]
