"""strip_pruned_channels on the compressed families: constant channels of every weight
code and integer epilogue are removed and folded into the consumers, bit for bit.

Random IR graphs (every code, pruned filters, bits / planes / levels / Requantize epilogues,
MaxPool, SumPool, GlobalSumPool, Activation, residual Add, zero padding) check reference before ==
after on many seeds; zoo models with pruned filters check the counts, the report's storage and
agreement with onnxruntime and the C backend."""

import numpy as np
import pytest

from bnnc import driver, ir, reference, zoo
from bnnc.original import OriginalModel
from bnnc.passes.find_sparse_connectivity import find_sparse_connectivity
from bnnc.passes.fold_batchnorm_into_thresholds import acc_range
from bnnc.passes.strip_pruned_channels import strip_pruned_channels
from bnnc.pipeline import compile_graph, frontend
from bnnc.report import report

from .conftest import sweep_scale

CODES = ("binary", "ternary", "two_scale", "multi_base", "int")
N_GRAPHS = max(20, int(150 * sweep_scale()))

# ----------------------------------------------------------------------------------- random IR graphs


def _weights(rng, code: str, shape: tuple, pruned: np.ndarray):
    """(w, int_w, bases) of a weight code with the rows `pruned` all zero."""
    o = shape[0]
    rows = (~pruned).reshape((-1,) + (1,) * (len(shape) - 1))
    sign = rng.choice([-1, 1], shape) * rows
    if code == "binary":
        return sign.astype(np.int8), None, []
    if code == "int":
        iw = rng.integers(-5, 6, shape) * rows
        return np.sign(iw).astype(np.int8), iw.astype(np.int64), []
    if code == "multi_base":
        bases = []
        for m in range(int(rng.integers(2, 4))):
            mult = np.full(o, 1 << m, np.int64)
            bases.append(ir.WeightBase((rng.choice([-1, 1], shape) * rows).astype(np.int8), mult, mult.copy()))
    else:
        w = sign if code == "two_scale" else sign * (rng.random(shape) > 0.4)
        mp = rng.integers(1, 6, o).astype(np.int64)
        mn = mp + 1 if code == "two_scale" else rng.integers(1, 6, o).astype(np.int64)
        bases = [ir.WeightBase(w.astype(np.int8), mp, mn)]
    iw = ir.bases_weights(bases)
    return np.sign(iw).astype(np.int8), iw, bases


def _epilogue(rng, kind: str, lo: np.ndarray, hi: np.ndarray, planes: int = 1):
    """(epilogue, output type maker) whose steps lie inside each channel's accumulator range."""
    o = lo.size

    def inside(n):  # n sorted values per channel within [lo, hi + 1]
        return np.sort(rng.integers(lo[:, None], hi[:, None] + 2, (o, n)), axis=1)

    if kind == "bits":
        d = np.tile(rng.choice(np.array([-1, 1], np.int8), o), planes)
        t = np.concatenate([inside(1)[:, 0] for _ in range(planes)])
        t = np.where(d > 0, t, -t)
        const = np.full(o * planes, ir.Thresholds.NOT_CONSTANT, np.int8)
        forced = rng.random(o * planes) < 0.1  # a few constant channels the fold found (gamma = 0)
        const[forced] = rng.choice(np.array([-1, 1], np.int8), int(forced.sum()))
        return ir.Thresholds(d, t.astype(np.int64), const, planes=planes), lambda s: ir.Bits(s)
    if kind == "levels":
        b = int(rng.integers(1, 4))
        d = rng.choice(np.array([-1, 1], np.int8), o)
        t = np.where(d[:, None] > 0, inside(b), -inside(b)[:, ::-1])
        base, step = int(rng.integers(-2, 1)), int(rng.integers(1, 3))
        return ir.LevelThresholds(d, t.astype(np.int64), base, step), lambda s: ir.Ints(s, base, base + step * b)
    shift = int(rng.integers(0, 4))
    mult = rng.integers(-3, 4, o).astype(np.int64)
    add = rng.integers(-8, 9, o).astype(np.int64)
    lim = int(rng.integers(20, 200))
    return ir.Requantize(mult, add, shift, -lim, lim, 1.0), lambda s: ir.Ints(s, -lim, lim)


class _Builder:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        size, c = int(self.rng.integers(4, 8)), int(self.rng.integers(2, 5))
        self.g = ir.Graph("x", {"shape": (c, size, size)}, "", {})
        self.g.tensors["x"] = ir.Ints((size, size, c), -8, 7)
        self.t, self.n = "x", 0

    def _name(self, kind):
        self.n += 1
        return f"L{self.n:02d}_{kind}"

    def conv(self, kind: str, k=None, dense=False, planes=1, src=None, o=None, stride=None):
        rng, g = self.rng, self.g
        src = self.t if src is None else src
        h, w, c = g.tensors[src].shape
        if dense:
            k, stride, pads = (h, w), (1, 1), (0, 0, 0, 0)
        else:
            kk = (int(rng.choice([1, 3])) if min(h, w) >= 3 else 1) if k is None else k
            p = int(rng.integers(0, 2)) if kk == 3 else 0
            k, stride, pads = (kk, kk), (int(rng.integers(1, 3)) if stride is None else stride,) * 2, (p,) * 4
        o = int(rng.integers(3, 9)) if o is None else o
        pruned = rng.random(o) < 0.4
        code = str(rng.choice(CODES))
        wts, iw, bases = _weights(rng, code, (o,) + k + (c,), pruned)
        name = self._name("conv")
        ones = np.ones(o)
        op = ir.Conv(name, [src], [name + "_out"], k, stride, pads, wts, ones, ones.copy(), None, is_dense=dense,
                     source_ops=[name], code=code, int_w=iw, bases=bases, unit=ones.copy() if iw is not None else None)
        lo, hi = acc_range(op, g.tensors[src])
        op.epilogue, make = _epilogue(rng, kind, lo, hi, planes)
        oh, ow = ir.out_shape((h, w), k, stride, pads)
        g.add(op, {name + "_out": make((oh, ow, o * planes))})
        self.t = name + "_out"
        return op

    def between(self):
        """Zero or more ops between two convolutions (pools, activations, a residual Add)."""
        rng, g = self.rng, self.g
        ty = g.tensors[self.t]
        h, w, c = ty.shape
        choice = rng.integers(0, 6)
        name = self._name("op")
        if choice == 0 and min(h, w) >= 2:
            kp = int(rng.integers(2, 4)) if min(h, w) >= 3 else 2
            pad = int(rng.integers(0, 2)) if kp == 3 else 0
            oh, ow = ir.out_shape((h, w), (kp, kp), (2, 2), (pad,) * 4)
            g.add(ir.MaxPool(name, [self.t], [name + "_out"], (kp, kp), (2, 2), (pad,) * 4),
                  {name + "_out": ir.Bits((oh, ow, c)) if isinstance(ty, ir.Bits)
                   else ir.Ints((oh, ow, c), ty.lo, ty.hi)})
        elif choice == 1 and isinstance(ty, ir.Ints) and min(h, w) >= 2:
            oh, ow = ir.out_shape((h, w), (2, 2), (1, 1), (0, 0, 0, 0))
            g.add(ir.SumPool(name, [self.t], [name + "_out"], (2, 2), (1, 1)),
                  {name + "_out": ir.Ints((oh, ow, c), 4 * min(ty.lo, 0), 4 * max(ty.hi, 0))})
        elif choice == 2:
            lo, hi = (-h * w, h * w) if isinstance(ty, ir.Bits) else (ty.lo * h * w, ty.hi * h * w)
            g.add(ir.GlobalSumPool(name, [self.t], [name + "_out"]), {name + "_out": ir.Ints((1, 1, c), lo, hi)})
        elif choice == 3 and isinstance(ty, ir.Ints):
            kind = str(rng.choice(["bits", "levels", "stream"]))
            ep, make = _epilogue(rng, kind, np.full(c, ty.lo), np.full(c, ty.hi))
            g.add(ir.Activation(name, [self.t], [name + "_out"], ep), {name + "_out": make((h, w, c))})
        elif choice == 4 and isinstance(ty, ir.Ints):  # a residual Add with a parallel 1x1 layer
            a = self.t
            src = g.producer(a).inputs[0]
            prod = g.producer(a)
            if not isinstance(prod, ir.Conv) or prod.stride != (1, 1) or prod.kernel != (1, 1):
                return
            b = self.conv("stream", k=1, src=src, o=c, stride=1)
            g.add(ir.Add(name, [a, b.outputs[0]], [name + "_out"], (0, 0), -300, 300),
                  {name + "_out": ir.Ints((h, w, c), -300, 300)})
        else:
            return
        self.t = name + "_out"


def random_family_graph(seed: int) -> ir.Graph:
    """A random chain of compressed-family layers (see the module docstring); output = the last layer's."""
    b = _Builder(seed)
    rng = b.rng
    for _ in range(int(rng.integers(2, 5))):
        kind = str(rng.choice(["bits", "levels", "stream"]))
        b.conv(kind, planes=int(rng.integers(2, 4)) if kind == "bits" and rng.random() < 0.25 else 1)
        for _ in range(int(rng.integers(0, 3))):
            b.between()
    b.conv(str(rng.choice(["levels", "stream"])), dense=bool(rng.random() < 0.5))
    b.g.output = b.t
    shape = b.g.tensors[b.t].shape
    b.g.output_info = {"shape": (1,) + tuple(shape), "elements": int(np.prod(shape)), "dtype": "int32"}
    return b.g


def _run(graph: ir.Graph, x: np.ndarray) -> np.ndarray:
    return reference.run_chunk(graph, x)[graph.output]


def _zero_rows(op: ir.Conv) -> np.ndarray:
    """Accumulators that are exactly 0 everywhere (all-zero filter, nothing folded into it)."""
    o = op.w.shape[0]
    zero = ~np.any(ir.int_weights(op).reshape(o, -1) != 0, axis=1)
    if op.bias_kernel is not None:
        zero &= ~np.any(op.bias_kernel.reshape(o, -1) != 0, axis=1)
    return zero


@pytest.mark.parametrize("chunk", range(5))
def test_strip_preserves_random_family_graphs_bit_for_bit(chunk):
    removed = kept = 0
    for seed in range(chunk, N_GRAPHS, 5):
        g = random_family_graph(seed)
        s = strip_pruned_channels(g)
        rng = np.random.default_rng(seed)
        x = rng.integers(-8, 8, (6,) + g.tensors["x"].shape)
        assert np.array_equal(_run(g, x), _run(s, x)), f"seed {seed}: the strip changed the numbers"
        for op in s.ops():
            if not isinstance(op, ir.Conv):
                continue
            removed += op.removed_out
            zero = _zero_rows(op)
            notes = getattr(op.epilogue, "notes", [])
            if zero.any() and op.w.shape[0] > 1:  # a pruned filter is left only with its reason
                assert any(n.startswith("kept") for n in notes), f"seed {seed}: {op.name} keeps pruned rows"
                kept += 1
            assert s.tensors[op.outputs[0]].shape[2] == op.w.shape[0] * getattr(op.epilogue, "planes", 1)
    assert removed > 0 and kept > 0  # both cases occur in every chunk of seeds


def test_folding_through_pools_and_activations_happens():
    """Over the seeds, constants travel through every kind of op between two convolutions."""
    through = set()
    for seed in range(60):
        g = random_family_graph(seed)
        s = strip_pruned_channels(g)
        for op in g.ops():
            if isinstance(op, (ir.MaxPool, ir.SumPool, ir.GlobalSumPool, ir.Activation)):
                if s.tensors[op.outputs[0]].shape[2] < g.tensors[op.outputs[0]].shape[2]:
                    through.add(type(op).__name__)
    assert through == {"MaxPool", "SumPool", "GlobalSumPool", "Activation"}


def test_expander_lists_are_renumbered():
    for seed in range(30):
        g = find_sparse_connectivity(random_family_graph(seed))
        s = strip_pruned_channels(g)
        x = np.random.default_rng(seed).integers(-8, 8, (4,) + g.tensors["x"].shape)
        assert np.array_equal(_run(g, x), _run(s, x))
        for op in s.ops():
            if isinstance(op, ir.Conv) and op.in_lists is not None:
                nz = np.any(ir.int_weights(op) != 0, axis=(1, 2))
                assert [list(v) for v in op.in_lists] == [list(np.flatnonzero(r)) for r in nz]


def test_a_constant_zero_bit_that_cannot_be_folded_is_refused():
    from bnnc.errors import BnncError

    g = ir.Graph("x", {"shape": (2, 3, 3)}, "L01_conv_out", {"shape": (1, 1, 1, 2), "elements": 2})
    g.tensors["x"] = ir.Ints((3, 3, 2), -4, 4)
    w = np.zeros((2, 3, 3, 2), np.int8)
    w[0] = 1
    th = ir.Thresholds(np.ones(2, np.int8), np.zeros(2, np.int64), np.array([2, 0], np.int8))
    g.add(ir.Conv("L01_conv", ["x"], ["L01_conv_out"], (3, 3), (1, 1), (0,) * 4, w, np.ones(2), np.ones(2), th,
                  source_ops=["conv"]), {"L01_conv_out": ir.Bits((1, 1, 2))})
    with pytest.raises(BnncError, match="constantly 0"):
        strip_pruned_channels(g)


# ----------------------------------------------------------------------------------- zoo models

PRUNED = ("ternary-ttq", "dabn", "w1a2", "abc-fused", "ternary-ec2t", "hbn", "pabt")


@pytest.mark.parametrize("name", PRUNED)
def test_pruned_family_models_lose_their_filters_exactly(name):
    model = zoo.build(name, 2, prune=0.4)
    spec = zoo.build(name, 2, prune=0.4)  # deterministic: the same model twice
    assert model.SerializeToString() == spec.SerializeToString()
    graph = compile_graph(model)
    inputs = driver.prepare_inputs(graph, zoo.inputs(model, 16, seed=7))
    convs = [op for op in graph.ops() if isinstance(op, ir.Conv)]
    hidden = convs[:1] if name == "pabt" else convs[:-1]  # PaBT prunes its first layer only
    assert all(op.removed_out > 0 for op in hidden)
    for a, b in zip(convs, convs[1:]):  # a chain: each layer's removed outputs are the next one's inputs
        if name != "pabt":
            assert b.removed_in == a.removed_out * getattr(a.epilogue, "planes", 1)
    if name == "pabt":  # activation-base planes: 3 channels per stripped accumulator
        assert convs[1].removed_in == 3 * convs[0].removed_out > 0
    for op in hidden:
        assert not _zero_rows(op).any(), f"{name}: {op.name} keeps a pruned filter"
        assert any(n.startswith("stripped") for n in op.epilogue.notes)
    ref = driver.run_target(graph, "ref", inputs)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    assert np.array_equal(ref, orig), f"{name}: reference differs from onnxruntime"
    c = driver.run_target(graph, "c", inputs)
    assert np.array_equal(c, ref), f"{name}: C differs from the reference"


def _unstripped(model):
    """The pipeline without strip_pruned_channels (what the compiler did before it stripped)."""
    from bnnc import pipeline

    g = frontend(model)
    for p in pipeline.PASSES:
        if p is not strip_pruned_channels:
            g = p(g)
    return g


def test_report_storage_drops_with_the_stripped_channels():
    """A 40%-pruned ternary layer (12 of 20 filters kept) feeding another 40%-pruned one: the
    stored tables and the weight bits of the code shrink with the removed rows and inputs."""
    model = zoo.build("ternary-ttq", 0, widths=(20, 20), prune=0.4)
    before = {r["onnx_nodes"][0]: r for r in report(driver.backend_graph(_unstripped(model)))["layers"]
              if r["op"] in ("Conv", "Dense")}
    rows = report(driver.backend_graph(compile_graph(model)))["layers"]
    after = {r["onnx_nodes"][0]: r for r in rows if r["op"] in ("Conv", "Dense")}
    first, second = (after[k] for k in list(after)[:2])
    assert first["channels_removed"] == 8 and first["output_shape"][2] == 12
    assert second["input_channels_removed"] == 8 and second["channels_removed"] == 8
    b2 = before[list(after)[1]]
    # positions of the second layer: 12 live rows x 3 x 3 x 20 inputs -> 12 x 3 x 3 x 12 inputs
    assert second["weight_bits"] == b2["weight_bits"] * 12 // 20
    b1 = before[list(after)[0]]
    assert second["stored_bytes"] < b2["stored_bytes"] and first["stored_bytes"] < b1["stored_bytes"]
    assert second["thresholds"] == 12 and b2["thresholds"] == 20
    t_after = report(driver.backend_graph(compile_graph(model)))["totals"]
    t_before = report(driver.backend_graph(_unstripped(model)))["totals"]
    assert t_after["weight_bytes"] < t_before["weight_bytes"] and t_after["stored_bytes"] < t_before["stored_bytes"]
    assert t_after["channels_removed"] > 0 == t_before["channels_removed"]


def test_channels_kept_for_a_residual_stream_say_why():
    model = zoo.build("bireal", 0, prune=0.4)
    graph = compile_graph(model)
    rows = report(driver.backend_graph(graph))["layers"]
    kept = [n for r in rows for n in r.get("notes", []) if n.startswith("kept")]
    assert kept and all("residual Add" in n for n in kept)
    inputs = driver.prepare_inputs(graph, zoo.inputs(model, 12, seed=1))
    ref = driver.run_target(graph, "ref", inputs)
    assert np.array_equal(ref, OriginalModel(model).run(inputs.model).reshape(ref.shape))
