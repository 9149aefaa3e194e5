"""Each pass preserves the reference executor's numbers on random graphs; bit packing and the
arena planner keep their stated invariants."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bnnc import driver, ir, reference
from bnnc.passes.fold_batchnorm_into_thresholds import fold_batchnorm_into_thresholds
from bnnc.passes.merge_activation_planes import merge_activation_planes
from bnnc.passes.merge_summed_convs import merge_summed_convs
from bnnc.passes.pack_bits import pack_bit_rows, unpack_bit_rows
from bnnc.passes.plan_arena import plan_arena
from bnnc.passes.quantize_input import quantize_input
from bnnc.passes.strip_pruned_channels import strip_pruned_channels
from bnnc.pipeline import frontend
from bnnc.testing.random_models import mlp_model, random_inputs, random_model

from .helpers import assert_live_buffers_apart

SEEDS = range(40)


def _stages(model):
    g0 = frontend(model)
    g1 = quantize_input(merge_summed_convs(merge_activation_planes(g0)))
    g2 = fold_batchnorm_into_thresholds(g1)
    g3 = strip_pruned_channels(g2)
    return g0, g1, g2, g3


@pytest.mark.parametrize("seed", SEEDS)
def test_every_pass_preserves_the_reference(seed):
    model, _ = random_model(seed)
    stages = _stages(model)
    x = driver.prepare_inputs(stages[-1], random_inputs(model, 16, seed)).grid
    outs = [reference.run(g, x) for g in stages]
    names = ("merge_activation_planes + merge_summed_convs + quantize_input", "fold_batchnorm_into_thresholds", "strip_pruned_channels")
    for name, o in zip(names, outs[1:]):
        assert np.array_equal(o, outs[0]), f"{name} changed the numbers (seed {seed})"


def test_fold_removes_every_chain_with_a_bit_terminal():
    model, _ = random_model(3)
    g = _stages(model)[2]
    for op in g.ops():
        if isinstance(op, ir.Conv) and isinstance(g.tensors[op.outputs[0]], ir.Bits):
            assert isinstance(op.epilogue, ir.Thresholds)


def test_strip_removes_pruned_channels_and_keeps_the_numbers():
    model = mlp_model(seed=1, prune=0.3)
    g2, g3 = _stages(model)[2:]
    convs2 = [op for op in g2.ops() if isinstance(op, ir.Conv)]
    convs3 = [op for op in g3.ops() if isinstance(op, ir.Conv)]
    for a, b in zip(convs2[:-1], convs3[:-1]):  # hidden layers lose their pruned filters
        pruned = int(np.sum(~np.any(a.w.reshape(a.w.shape[0], -1) != 0, axis=1)))
        assert pruned > 0 and b.w.shape[0] <= a.w.shape[0] - pruned and b.removed_out >= pruned
    for b_next in convs3[1:]:
        assert b_next.bias_kernel is not None
    x = driver.prepare_inputs(g3, random_inputs(model, 32, 0)).grid
    assert np.array_equal(reference.run(g2, x), reference.run(g3, x))


def test_constant_channel_folding_is_exact_at_zero_padded_borders():
    # seeds whose models have padded convs after pruned filters: the border correction matters
    hits = 0
    for seed in range(60):
        model, spec = random_model(seed)
        convs = [layer for layer in spec.layers if layer.get("kind") == "conv"]
        if not any(c.get("pruned") for c in convs[:-1]) or not any(c.get("pad") for c in convs[1:]):
            continue
        hits += 1
        g2, g3 = _stages(model)[2:]
        x = driver.prepare_inputs(g3, random_inputs(model, 8, seed)).grid
        assert np.array_equal(reference.run(g2, x), reference.run(g3, x))
    assert hits >= 3


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 200), st.sampled_from([32, 64]), st.integers(0, 2**32 - 1))
def test_pack_unpack_roundtrip_and_zero_fill(c, wb, seed):
    rng = np.random.default_rng(seed)
    v = rng.choice(np.array([-1, 1], np.int8), size=(3, c))
    packed = pack_bit_rows(v, wb)
    assert packed.shape == (3, -(-c // wb))
    assert np.array_equal(unpack_bit_rows(packed, c, wb), v)
    fill = packed[:, -1] >> np.uint64(c % wb) if c % wb else np.zeros(3, np.uint64)
    assert not np.any(fill), "fill bits must be 0"


@pytest.mark.parametrize("seed", range(10))
def test_arena_buffers_never_overlap_while_live(seed):
    model, _ = random_model(seed)
    g = plan_arena(driver.backend_graph(_stages(model)[-1]))
    assert not g.arena["overlaps"]  # host plans: buffers apart
    assert_live_buffers_apart(g)
    assert g.arena["size"] >= g.arena["lower_bound"]


def test_generated_c_is_deterministic():
    model, _ = random_model(7)
    a = driver.render_c(_stages(model)[-1])
    b = driver.render_c(_stages(random_model(7)[0])[-1])
    assert a == b


FAMILY_MODELS = {name: kw for name, kw in (
    ("ternary-ttq", {}), ("dabn", {}), ("w1a2", {}), ("abc-fused", {}), ("pabt", {}), ("hbn", {}), ("xnet", {}),
    ("bireal", {}), ("bireal", {"sign": "Sign"}), ("ternary-ec2t", {}),
    ("resnet18-stq", {"widths": (8, 8, 16, 16), "size": 16}))}


@pytest.mark.parametrize("name", list(dict.fromkeys(FAMILY_MODELS)) + ["bireal-sign"])
def test_every_pass_preserves_the_reference_on_family_models(name):
    """The compressed-family forms (weight codes, levels, planes, streams, ternary signs) through every pass."""
    from bnnc import zoo
    from bnnc.passes.find_sparse_connectivity import find_sparse_connectivity

    kw = {"sign": "Sign"} if name == "bireal-sign" else FAMILY_MODELS[name]
    model = zoo.build(name.replace("-sign", ""), 3, **kw)
    g = _stages(model)
    from bnnc.passes.requantize_level_steps import requantize_level_steps

    stages = list(g) + [find_sparse_connectivity(g[-1])]
    stages.append(requantize_level_steps(stages[-1]))
    x = driver.prepare_inputs(stages[-1], zoo.inputs(model, 12, seed=3)).grid
    outs = [reference.run(s, x) for s in stages]
    for o in outs[1:]:
        assert np.array_equal(o, outs[0])


def test_sparse_connectivity_lists_exactly_the_nonzero_kernels():
    from bnnc import zoo
    from bnnc.passes.find_sparse_connectivity import find_sparse_connectivity

    g = find_sparse_connectivity(_stages(zoo.build("xnet", 1))[-1])
    for op in g.ops():
        if isinstance(op, ir.Conv) and op.in_lists is not None:
            nz = np.any(ir.int_weights(op) != 0, axis=(1, 2))
            assert [list(x) for x in op.in_lists] == [list(np.flatnonzero(r)) for r in nz]


@pytest.mark.parametrize("code", ["ternary", "two_scale", "multi_base", "int"])
def test_weight_decoding_is_exact(code):
    from bnnc import weight_codes

    rng = np.random.default_rng(7)
    s = rng.choice([-1, 1], (6, 40))
    if code == "ternary":
        w = np.where(rng.random(s.shape) < 0.4, 0, np.where(s > 0, 0.75, -0.3))
    elif code == "two_scale":
        w = np.where(s > 0, rng.uniform(0.1, 1, (6, 1)), -rng.uniform(0.1, 1, (6, 1)))
    elif code == "multi_base":
        w = 0.6 * s + 0.25 * rng.choice([-1, 1], s.shape) + 0.05 * rng.choice([-1, 1], s.shape)
    else:
        w = rng.integers(-100, 101, s.shape) * np.float32(0.013)
    w = w.astype(np.float32)
    d = weight_codes.decode("node 'w'", w)
    assert d.code == code
    real = d.int_w * d.unit[:, None]
    tol = 0 if code in ("ternary", "two_scale") else weight_codes.BASES_RTOL * np.abs(w).max() * 8
    assert np.abs(real - w).max() <= tol
    if d.bases:
        assert np.array_equal(ir.bases_weights(d.bases), d.int_w)


@pytest.mark.parametrize("seed", range(6))
def test_requantize_level_steps_is_exact_on_random_staircases(seed):
    """Thresholds of a random affine staircase (floor or half-even rounding, clamped to int8)
    become a multiply-shift only where it equals them at every reachable accumulator."""
    from bnnc.passes.requantize_level_steps import requantize_level_steps

    rng = np.random.default_rng(seed)
    c = 6
    g = ir.Graph("x", {"shape": (1, 1, c)}, "y", {"shape": (1, c)})
    lo, hi = -5000, 5000
    g.tensors["x"] = ir.Ints((1, 1, c), lo, hi)
    acc = np.arange(lo, hi + 1)
    thr = np.zeros((c, 255), np.int64)
    direction = rng.choice([-1, 1], c).astype(np.int8)
    for o in range(c):
        slope = rng.uniform(0.01, 0.5) * direction[o]
        v = acc * slope + rng.uniform(-20, 20)
        q = np.rint(v) if seed % 2 else np.floor(v + 0.5)  # half-even rounding has uneven steps
        count = np.clip(q, -128, 127) + 128
        x = direction[o] * acc
        order = np.argsort(x)
        for b in range(1, 256):
            hit = x[order][count[order] >= b]
            thr[o, b - 1] = hit.min() if hit.size else hi + 1
    ep = ir.LevelThresholds(direction, thr, -128, 1, 1.0)
    g.add(ir.Activation("act", ["x"], ["y"], ep), {"y": ir.Ints((1, 1, c), -128, 127)})
    out = requantize_level_steps(g)
    xs = acc.reshape(-1, 1, 1, 1) * np.ones((1, 1, 1, c), np.int64)
    assert np.array_equal(reference.apply_epilogue(ep, xs), reference.apply_epilogue(out.op("act").epilogue, xs))
    if seed % 2 == 0:  # floor(v + 1/2) is a multiply-shift: converted
        assert isinstance(out.op("act").epilogue, ir.Requantize)


# ----------------------------------------------------------------------------------- large global pools

def _large_pool_model(size):
    """Bi-Real Net on a 2**-16 stream: the global average pool sums (size / 2)**2 pixels of
    values proven only to lie within +-(2**23 - 1), more than 32 bits for more than 256 pixels."""
    from bnnc import zoo
    from bnnc.pipeline import compile_graph

    model = zoo.build("bireal", 0, size=size, frac=16)
    graph = compile_graph(model)
    pool = next(op for op in graph.ops() if isinstance(op, ir.GlobalSumPool))
    return model, graph, pool


def _saturate_last_branch(graph, pool):
    """The same graph with the last residual branch pinned at the top of the stream's range, so
    the pool's sums really exceed 32 bits (the reference defines the numbers for any values)."""
    g = graph.copy()
    add = g.producer(pool.inputs[0])
    conv = g.producer(add.inputs[0])
    ep = conv.epilogue
    ep.add = ep.add + (2 * ep.hi << ep.shift)  # far above: the branch saturates at ep.hi
    if ep.acc_lo is not None:
        ep.acc_lo, ep.acc_hi = ep.acc_lo * 0 - 1, ep.acc_hi * 0 + 1  # keep every product small
    for t in (conv.outputs[0], add.outputs[0]):
        ty = g.tensors[t]
        g.tensors[t] = ir.Ints(ty.shape, add.lo, add.hi, ty.scale)
    h, w, c = g.tensors[pool.inputs[0]].shape
    ty = g.tensors[pool.outputs[0]]
    g.tensors[pool.outputs[0]] = ir.Ints(ty.shape, add.lo * h * w, add.hi * h * w, ty.scale)
    return g


@pytest.mark.parametrize("size", [34, 64])
def test_global_pool_beyond_256_stream_pixels_is_exact(size):
    """17x17 and 32x32 pools of a saturating stream: int64 sums, reference == onnxruntime and
    C == reference, also where the sums really exceed 32 bits."""
    from bnnc import zoo
    from bnnc.original import OriginalModel
    from bnnc.passes.pack_bits import storage_dtype

    model, graph, pool = _large_pool_model(size)
    h, w, _ = graph.tensors[pool.inputs[0]].shape
    assert h * w > 256 and storage_dtype(graph.tensors[pool.outputs[0]]) == "int64"
    inputs = driver.prepare_inputs(graph, zoo.inputs(model, 8, seed=5))
    ref = driver.run_target(graph, "ref", inputs)
    assert np.array_equal(ref, OriginalModel(model).run(inputs.model).reshape(ref.shape))
    assert np.array_equal(driver.run_target(graph, "c", inputs), ref)
    assert "int64_t s = 0;" in driver.render_c(graph)["model.c"]
    big = _saturate_last_branch(graph, pool)
    sums = reference.intermediates(big, inputs.grid)[pool.outputs[0]]
    assert np.abs(sums).max() > 2**31
    assert np.array_equal(driver.run_target(big, "c", inputs), driver.run_target(big, "ref", inputs))


def test_global_pool_beyond_32_bits_on_the_cortex_m():
    for mod in ("unicorn", "ziglang", "elftools"):
        pytest.importorskip(mod, reason="the Cortex-M targets need the mcu extra")
    from bnnc import targets, zoo
    from bnnc.targets import TargetOptions

    model, graph, pool = _large_pool_model(34)
    big = _saturate_last_branch(graph, pool)
    inputs = driver.prepare_inputs(big, zoo.inputs(model, 3, seed=5))
    ref = driver.run_target(big, "ref", inputs)
    y, _ = targets.run(big, "cortex-m0", inputs.grid, TargetOptions())  # no 64-bit multiply-accumulate
    assert np.array_equal(y.reshape(ref.shape), ref)


def test_a_layer_reading_64_bit_sums_is_refused_by_c():
    from bnnc.errors import BnncError

    model, graph, pool = _large_pool_model(34)
    g = graph.copy()
    act = g.consumers(pool.outputs[0])[0]
    dense = g.consumers(act.outputs[0])[0]
    dense.inputs = [pool.outputs[0]]  # the dense layer straight on the pool (its weights fit the channels)
    g.remove(act.name)
    g.replace(dense)
    g = fold_batchnorm_into_thresholds(g)  # marks the 64-bit accumulator
    with pytest.raises(BnncError, match="beyond 32 bits"):
        driver.render_c(g)


# ----------------------------------------------------------------------------- activation-base planes


def _int8_binary_layer(rng, channels: int, out: str) -> tuple:
    """(initializers, const(name, value) adding a float32 one, nodes): an int8 input on the grid
    2**-5 and a binary 3x3 layer of `channels` filters writing `out`, where the models here start."""
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.array(0, np.int8), "zp")]

    def const(name, value):
        inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    nodes = [helper.make_node("QuantizeLinear", ["x", const("s_in", 2.0**-5), "zp"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s_in", "zp"], ["xd"]),
             helper.make_node("Conv", ["xd", const(f"w_{out}", rng.choice([-1.0, 1.0], (channels, 3, 3, 3)))],
                              [out], pads=[1] * 4)]
    return inits, const, nodes


def _activation_planes_model(seed: int):
    """An int8 input, a binary layer whose accumulator 2 to 4 Sub + Sign nodes binarize (activation
    bases, in a random order), all of them MaxPooled or none, then 1 to 5 convolutions of random
    planes (several may read one) with dyadic scales, summed by a chain of Adds when there are
    several (PaBT's pairs), a BatchNorm-like Sign and a dense layer. Also the number of planes read
    (the canonical stage removes the others)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    size, c1, o = int(rng.integers(4, 9)), int(rng.integers(2, 9)), int(rng.integers(2, 7))
    inits, const, nodes = _int8_binary_layer(rng, c1, "a1")
    n = int(rng.integers(2, 5))
    pool = rng.random() < 0.5
    planes = []
    for p in rng.permutation(n):  # accumulators are multiples of 2**-5: thresholds between them, no ties
        t = (rng.integers(-40, 40, (1, c1, 1, 1)) + 0.5) * 2.0**-5
        nodes += [helper.make_node("Sub", ["a1", const(f"t{p}", t)], [f"d{p}"]),
                  helper.make_node("Sign", [f"d{p}"], [f"s{p}"])]
        if pool:
            nodes.append(helper.make_node("MaxPool", [f"s{p}"], [f"p{p}"], kernel_shape=[2, 2], strides=[2, 2]))
        planes.append(f"p{p}" if pool else f"s{p}")
    terms = []
    read = rng.integers(0, n, int(rng.integers(1, 6)))  # the plane each convolution reads
    for i, p in enumerate(read):
        w = rng.choice([-1.0, 1.0], (o, c1, 3, 3))
        nodes += [helper.make_node("Conv", [planes[int(p)], const(f"w{i + 2}", w)], [f"c{i}"],
                                   pads=[1] * 4),
                  helper.make_node("Mul", [f"c{i}", const(f"k{i}", rng.choice([0.25, 0.5, 1.0, 1.5, 3.0]))],
                                   [f"m{i}"])]
        terms.append(f"m{i}")
    y = terms[0]
    for i, t in enumerate(terms[1:]):
        nodes.append(helper.make_node("Add", [y, t], [f"sum{i}"]))
        y = f"sum{i}"
    side = size // 2 if pool else size
    bias = (rng.integers(-20, 20, (o, 1, 1)) + 0.5) * 2.0**-7  # the sums are multiples of 2**-7 * 2**-5 ... 0.25
    nodes += [helper.make_node("Add", [y, const("bias", bias)], ["biased"]),
              helper.make_node("Sign", ["biased"], ["act"]),
              helper.make_node("Flatten", ["act"], ["flat"]),
              helper.make_node("Gemm", ["flat", const("wd", rng.choice([-1.0, 1.0], (3, o * side * side)))],
                               ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "activation_planes",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), len(set(read.tolist()))


@pytest.mark.parametrize("seed", range(16))
def test_merge_activation_planes_preserves_the_reference(seed):
    """The frontend's copies of a layer, one per activation base, become one Conv with a Planes
    epilogue whose readers (convolutions, sums of them over several planes, MaxPools) read their
    plane's channels of its wide output: the reference's numbers stay, the graph stays valid."""
    model, read = _activation_planes_model(seed)
    g0 = frontend(model)
    ir.verify(g0)
    copies = [op.name for op in g0.ops() if isinstance(op, ir.Conv) and op.name.endswith(tuple(
        f"_plane{k}" for k in range(1, read)))]
    assert len(copies) == read - 1, "one copy of the layer per activation after the first"
    x = driver.prepare_inputs(g0, driver.random_samples(g0, 24, seed)).grid
    y0 = reference.run(g0, x)
    g1 = merge_activation_planes(g0)
    ir.verify(g1)
    assert np.array_equal(reference.run(g0, x), y0), "the pass changed its input"
    planed = [op for op in g1.ops() if isinstance(op, ir.Conv) and isinstance(op.epilogue, ir.Planes)]
    assert len(planed) == (read > 1) and not set(copies) & {op.name for op in g1.ops()}
    if planed:
        assert len(planed[0].epilogue.chains) == read
        assert g1.tensors[planed[0].outputs[0]].shape[2] == read * g0.tensors[planed[0].outputs[0]].shape[2]
    assert all(len(op.inputs) == 1 for op in g1.ops() if isinstance(op, ir.ConvSum))
    assert np.array_equal(reference.run(g1, x), y0)
    assert np.array_equal(reference.run(merge_summed_convs(g1), x), y0)


# ----------------------------------------------------------------------------- sums of convolutions


def _summed_convs_model(seed: int):
    """An int8 input, a binary layer and Sign, then 2 to 4 convolutions of that sign output (binary,
    ternary or integer weights; per-channel scales, dyadic or not, some negative) summed by a random
    tree of Add / Sub, then either BatchNorm-like ops and a Sign or a real-valued (fixed-point)
    tensor, and a dense layer: the forms the frontend writes as ir.ConvSum."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    size, c0, o = int(rng.integers(4, 8)), int(rng.integers(3, 9)), int(rng.integers(2, 7))
    k, pad = (3, 1) if rng.random() < 0.7 else (1, 0)
    inits, const, nodes = _int8_binary_layer(rng, c0, "c0")
    nodes.append(helper.make_node("Sign", ["c0"], ["a0"]))
    terms = []
    for i in range(int(rng.integers(2, 5))):
        code = rng.choice(["binary", "ternary", "int"])
        w = {"binary": lambda: rng.choice([-1.0, 1.0], (o, c0, k, k)),
             "ternary": lambda: rng.choice([-1.0, 0.0, 1.0], (o, c0, k, k)),
             "int": lambda: rng.integers(-3, 4, (o, c0, k, k)).astype(np.float64)}[code]()
        scale = rng.choice([0.25, 0.5, 1.0, 0.75, 1.5, 0.3], o) * rng.choice([-1.0, 1.0], o)
        nodes += [helper.make_node("Conv", ["a0", const(f"w{i + 1}", w)], [f"t{i}"], pads=[pad] * 4),
                  helper.make_node("Mul", [f"t{i}", const(f"s{i}", scale.reshape(o, 1, 1))], [f"m{i}"])]
        terms.append(f"m{i}")
    while len(terms) > 1:  # a random tree of sums and differences
        j = int(rng.integers(0, len(terms) - 1))
        out = f"sum{len(nodes)}"
        nodes.append(helper.make_node(str(rng.choice(["Add", "Sub"])), [terms[j], terms[j + 1]], [out]))
        terms[j:j + 2] = [out]
    y = terms[0]
    if rng.random() < 0.5:
        nodes += [helper.make_node("Add", [y, const("bias", rng.normal(0, 1, (o, 1, 1)))], ["biased"]),
                  helper.make_node("Sign", ["biased"], ["act"])]
        y, features = "act", o * size * size
    else:  # real-valued: a fixed-point stream, averaged
        nodes.append(helper.make_node("GlobalAveragePool", [y], ["pooled"]))
        y, features = "pooled", o
    classes = 3
    nodes += [helper.make_node("Flatten", [y], ["flat"]),
              helper.make_node("Gemm", ["flat", const("wd", rng.choice([-1.0, 1.0], (classes, features)))],
                               ["logits"], transB=1)]
    graph = helper.make_graph(nodes, "summed_convs",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, classes])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("seed", range(16))
def test_merge_summed_convs_preserves_the_reference(seed):
    """Summed convolutions (ir.ConvSum, nested for sums of sums, Sub as a negative factor) give the
    reference's numbers as the one Conv the pass makes of them, and the graph stays valid."""
    model = _summed_convs_model(seed)
    g0 = frontend(model)
    ir.verify(g0)
    assert any(isinstance(op, ir.ConvSum) for op in g0.ops()), "the model's sums should be a ConvSum"
    g1 = merge_summed_convs(g0)
    ir.verify(g1)
    assert not any(isinstance(op, ir.ConvSum) for op in g1.ops())
    assert any(isinstance(op, ir.ConvSum) for op in g0.ops()), "the pass must not change its input"
    x = driver.prepare_inputs(g1, driver.random_samples(g0, 24, seed)).grid
    assert np.array_equal(reference.run(g1, x), reference.run(g0, x))


@pytest.mark.parametrize("seed", range(12))
def test_merge_summed_convs_is_the_identity_without_sums(seed):
    """On random graphs without sums of convolutions the pass changes nothing the reference sees."""
    model, _ = random_model(seed)
    g0 = frontend(model)
    g1 = merge_summed_convs(g0)
    ir.verify(g1)
    assert [op.name for op in g1.ops()] == [op.name for op in g0.ops()]
    x = driver.prepare_inputs(g1, random_inputs(model, 8, seed)).grid
    assert np.array_equal(reference.run(g1, x), reference.run(g0, x))


def test_conv_sum_breaking_its_rules_is_refused_by_verify():
    """A ConvSum whose term carries a terminal (not a pure scale) is no valid IR."""
    g = frontend(_summed_convs_model(1))
    op = next(o for o in g.ops() if isinstance(o, ir.ConvSum))
    op.terms[0].epilogue = ir.Chain(list(op.terms[0].epilogue.ops) + [ir.ChainOp("relu")])
    with pytest.raises(ir.IRError, match="mul / div only"):
        ir.verify(g)
