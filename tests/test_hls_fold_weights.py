"""fold_weights: the folded PE x SIMD layout reproduces every layer's reference numbers.

A numpy model of the matrix-vector-threshold unit the HLS backend generates (padded taps and idle
lanes read 0 / bit 0, tiles accumulated per PE row, comparisons from the folded tables) must give
each conv/dense layer's reference output exactly, for random models and random foldings,
PE and SIMD dividing nothing included."""

import numpy as np
import pytest

from bnnc import driver, folding, ir, reference
from bnnc.errors import BnncError
from bnnc.passes.fold_weights import fold_matrix, fold_rows, fold_weights
from bnnc.passes.pack_bits import pack_bits
from bnnc.pipeline import compile_graph
from bnnc.testing.random_models import random_inputs, random_model


def random_foldings(graph, rng):
    out = []
    for L in folding.foldable_layers(graph):
        style = rng.integers(4)
        pe = (1, L.mh, int(rng.integers(1, L.mh + 1)), max(1, L.mh // 2 + 1))[style]
        simd = (1, L.mw, int(rng.integers(1, L.mw + 1)), max(1, L.mw // 3 + 1))[3 - style]
        out.append(folding.LayerFolding(L, pe, simd))
    return out


def mvtu_model(op, src_ty, x):
    """Outputs of the folded unit for layer input x (N, H, W, C): +-1 bits, or integer accumulators
    (with the border correction and kmul of pack_bits) for a real-valued epilogue."""
    f, p = op.folded, op.packed
    win = reference._windows(x.astype(np.int64), op.kernel, op.stride, op.pads, 0)  # padded taps are 0
    n, oh, ow = win.shape[:3]
    vec = np.zeros((n, oh, ow, f.sf * f.simd), np.int64)
    vec[..., : f.mw] = win.reshape(n, oh, ow, -1)  # idle lanes are 0
    vec = vec.reshape(n, oh, ow, f.sf, f.simd)
    bits = isinstance(src_ty, ir.Bits)
    acc = np.zeros((n, oh, ow, f.nf * f.pe), np.int64)
    for nf in range(f.nf):
        for pe in range(f.pe):
            tiles = slice(nf * f.sf, (nf + 1) * f.sf)
            minus = f.minus[pe, tiles]  # (sf, simd)
            if bits:  # popcount of activation bit (value -1, padded 0 -> bit 0) XOR weight bit
                acc[..., nf * f.pe + pe] = np.sum((vec < 0) != minus, axis=(3, 4))
            else:
                w = f.plus[pe, tiles].astype(np.int64) - minus.astype(np.int64)
                acc[..., nf * f.pe + pe] = np.sum(vec * w, axis=(3, 4))
    cls = p.ycls[:, None] * p.nx + p.xcls[None, :]  # (oh, ow)
    if f.thr is not None:
        out = np.zeros((n, oh, ow, f.mh), np.int8)
        for o in range(f.mh):
            nf, pe = divmod(o, f.pe)
            bit = (acc[..., o] > f.thr[pe, nf][cls][None]) != f.neg[pe, nf]
            out[..., o] = np.where(bit, -1, 1)
        return out
    a = acc[..., : f.mh]
    if bits:
        a = (p.k_full - 2 * a) * p.kmul.astype(np.int64)
    return a + p.corr[cls]


@pytest.mark.parametrize("seed", range(30))
def test_folded_unit_reproduces_every_layer(seed):
    model, _ = random_model(seed)
    graph = compile_graph(model)
    rng = np.random.default_rng(seed)
    g = fold_weights(pack_bits(graph, 64), random_foldings(graph, rng))
    x = driver.prepare_inputs(graph, random_inputs(model, 6, seed)).grid
    env = reference.intermediates(graph, x)
    checked = 0
    for op in g.ops():
        if not isinstance(op, ir.Conv):
            continue
        src_ty = g.tensors[op.inputs[0]]
        got = mvtu_model(op, src_ty, env[op.inputs[0]])
        ref_op = graph.op(op.name)
        if op.folded.thr is not None:
            want = env[op.outputs[0]]
        else:
            want = reference.conv_accumulator(ref_op, env[op.inputs[0]].astype(np.int64))
        assert np.array_equal(got, want), f"seed {seed}: layer {op.name} differs"
        checked += 1
    assert checked >= 2


def test_layout_formula_and_idle_entries():
    rng = np.random.default_rng(1)
    m = rng.integers(-1, 2, size=(7, 11))
    for pe, simd in [(1, 1), (3, 4), (7, 11), (2, 5), (5, 3)]:
        W = fold_matrix(m, pe, simd)
        nf, sf = -(-7 // pe), -(-11 // simd)
        assert W.shape == (pe, nf * sf, simd)
        for p in range(pe):
            for t in range(nf * sf):
                for lane in range(simd):
                    o, k = (t // sf) * pe + p, (t % sf) * simd + lane
                    assert W[p, t, lane] == (m[o, k] if o < 7 and k < 11 else 0)
        t = rng.integers(0, 100, size=(3, 7))
        R = fold_rows(t, pe)
        for p in range(pe):
            for n in range(nf):
                o = n * pe + p
                assert np.array_equal(R[p, n], t[:, o] if o < 7 else np.zeros(3))


def test_pass_is_pure_and_needs_a_folding_for_every_layer():
    model, _ = random_model(4)
    graph = pack_bits(compile_graph(model), 64)
    fs = folding.choose_folding(graph, 10**9)
    g = fold_weights(graph, fs)
    assert all(not hasattr(op, "folded") for op in graph.ops())
    assert all(hasattr(op, "folded") for op in g.ops() if isinstance(op, ir.Conv))
    with pytest.raises(BnncError, match="no folding"):
        fold_weights(graph, fs[1:])
