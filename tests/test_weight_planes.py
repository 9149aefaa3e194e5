"""weight_planes: the popcount planes and their offsets give the reference accumulator exactly,
for every weight code of the zoo and of random graphs, on bit and integer inputs."""

import numpy as np
import pytest

from bnnc import ir, reference, zoo
from bnnc.pipeline import compile_graph
from bnnc.testing.random_models import random_inputs, random_model
from bnnc import driver
from bnnc.weight_planes import PopcountPlane, lane_valid, plane_offsets, plane_ranges, popcount_planes


def _windows(x, op):
    return reference._windows(x, op.kernel, op.stride, op.pads, 0)


def plane_accumulator(op: ir.Conv, a: np.ndarray, bits_in: bool, planes=None):
    """acc (N, OH, OW, O) from the planes' popcounts, as hardware computes them."""
    planes = planes or popcount_planes(op, bits_in)
    x = (a < 0).astype(np.int64) if bits_in else a.astype(np.int64)
    win = _windows(x, op)
    n, oh, ow = win.shape[:3]
    cols = win.reshape(n, oh, ow, -1)
    h, w = a.shape[1:3]
    valid_taps = _windows(np.ones((1, h, w, 1), np.int64), op)[0, ..., 0]  # OH, OW, kh, kw
    valid = lane_valid(valid_taps.reshape(oh * ow, *op.kernel), a.shape[3])
    bias = reference.bias_map(op, (h, w)).reshape(oh * ow, -1) if op.bias_kernel is not None \
        else np.zeros((oh * ow, op.w.shape[0]), np.int64)
    acc = plane_offsets(planes, bias, valid, bits_in).reshape(1, oh, ow, -1).repeat(n, 0)
    o, mw = op.w.shape[0], cols.shape[-1]
    lo, hi = (0, 1) if bits_in else (int(a.min()), int(a.max()))
    for p, (slo, shi) in zip(planes, plane_ranges(planes, mw, lo, hi, bits_in)):
        b = p.b.astype(np.int64) if p.b is not None else np.zeros((o, mw), np.int64)
        m = p.m.astype(np.int64) if p.m is not None else np.ones((o, mw), np.int64)
        if bits_in:
            s = np.einsum("nyxk,ok->nyxo", cols, m * (1 - 2 * b)) + (m * b).sum(axis=1)
        else:
            s = np.einsum("nyxk,ok->nyxo", cols, m * (1 - 2 * b))
        assert s.min() >= slo and s.max() <= shi
        acc = acc + p.gain * s
    return acc


def _convs(graph, x):
    env = reference.intermediates(graph, x)
    for op in graph.ops():
        if isinstance(op, ir.Conv):
            src = graph.tensors[op.inputs[0]]
            yield op, env[op.inputs[0]], isinstance(src, ir.Bits)


@pytest.mark.parametrize("name", zoo.FAMILIES)
@pytest.mark.parametrize("seed", [0, 1])
def test_planes_reproduce_zoo_accumulators(name, seed):
    model = zoo.build(name, seed)
    graph = compile_graph(model)
    x = driver.prepare_inputs(graph, zoo.inputs(model, 4, seed)).grid
    for op, a, bits_in in _convs(graph, x):
        want = reference.conv_accumulator(op, a.astype(np.int64))
        assert np.array_equal(plane_accumulator(op, a, bits_in), want), op.name


@pytest.mark.parametrize("seed", range(6))
def test_planes_reproduce_random_model_accumulators(seed):
    model, _ = random_model(seed)
    graph = compile_graph(model)
    x = driver.prepare_inputs(graph, random_inputs(model, 4, seed)).grid
    for op, a, bits_in in _convs(graph, x):
        assert np.array_equal(plane_accumulator(op, a, bits_in), reference.conv_accumulator(op, a.astype(np.int64)))


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("bits_in", [True, False])
def test_every_code_on_random_weights(seed, bits_in):
    """Random ternary / two-scale / multi-base / int layers with padding and pruned rows."""
    rng = np.random.default_rng(seed)
    o, kh, kw, c = 6, 3, 3, int(rng.integers(1, 5))
    code = ["ternary", "two_scale", "multi_base", "int"][seed % 4]
    bases = []
    if code == "int":
        int_w = rng.integers(-9, 10, (o, kh, kw, c))
    else:
        for _ in range(3 if code == "multi_base" else 1):
            w = rng.choice([-1, 1], (o, kh, kw, c)) if code != "ternary" else rng.choice([-1, 0, 1], (o, kh, kw, c))
            mp = rng.integers(1, 6, o)
            mn = rng.integers(1, 6, o) if code != "multi_base" or seed % 3 else mp
            bases.append(ir.WeightBase(w.astype(np.int8), mp, mn))
        int_w = ir.bases_weights(bases)
    int_w[0] = 0  # a pruned filter
    for b in bases:
        b.w[0] = 0
    op = ir.Conv("L", ["x"], ["y"], (kh, kw), (1, 1), (1, 1, 1, 1), np.sign(int_w).astype(np.int8), np.ones(o),
                 np.ones(o), None, code=code, int_w=int_w, bases=bases)
    a = rng.choice([-1, 1], (3, 5, 4, c)) if bits_in else rng.integers(-7, 8, (3, 5, 4, c))
    planes = popcount_planes(op, bits_in)
    assert np.array_equal(plane_accumulator(op, a, bits_in, planes), reference.conv_accumulator(op, a))


def test_plane_kinds_per_code():
    rng = np.random.default_rng(0)
    w = rng.choice([-1, 1], (4, 1, 1, 8)).astype(np.int8)
    def conv(bases, code):
        return ir.Conv("L", ["x"], ["y"], (1, 1), (1, 1), (0, 0, 0, 0), w, np.ones(4), np.ones(4), None,
                       code=code, int_w=ir.bases_weights(bases), bases=bases)
    one = np.ones(4, np.int64)
    assert [p.kind for p in popcount_planes(conv([ir.WeightBase(w, one, one)], "binary"), True)] == ["xnor"]
    assert [p.kind for p in popcount_planes(conv([ir.WeightBase(w, one, 2 * one)], "two_scale"), True)] == \
        ["ones", "and"]
    wz = w.copy()
    wz[:, 0, 0, :2] = 0
    assert [p.kind for p in popcount_planes(conv([ir.WeightBase(wz, one, one)], "ternary"), True)] == ["masked_xnor"]
    assert [p.kind for p in popcount_planes(conv([ir.WeightBase(wz, one, 3 * one)], "ternary"), False)] == \
        ["and", "and"]
    assert isinstance(popcount_planes(conv([ir.WeightBase(w, one, one)], "binary"), True)[0], PopcountPlane)
