"""Channel Concat (binary activations, fixed-point streams) and Softmax / LogSoftmax at the model output:
reference vs onnxruntime, generated C bit for bit vs the reference, one Cortex-M4 run, the
softmax's stated error bound, and the refusals."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnnc import arith, driver, error_bounds, ir, reference
from bnnc.errors import BnncError
from bnnc.original import OriginalModel
from bnnc.passes import plan_arena
from bnnc.pipeline import Options, compile_graph

OPTS = Options(input_scale=1 / 64, input_range=(-128, 127))


def _model(nodes, inits, in_shape, out_shape, opset=13, name="m"):
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def fire_model(seed: int, softmax: bool = True):
    """SqueezeNet's Fire module on real values: squeeze 1x1 -> Relu -> (expand 1x1, expand 3x3)
    -> Relu each -> Concat -> float conv -> GAP -> Gemm [-> Softmax]."""
    rng = np.random.default_rng(seed)
    f = lambda *s: (rng.normal(size=s) * 0.3).astype(np.float32)  # noqa: E731  (streams saturate at +-128)
    inits = {"w0": f(8, 3, 3, 3), "b0": f(8), "ws": f(6, 8, 1, 1), "bs": f(6), "we1": f(5, 6, 1, 1), "be1": f(5),
             "we3": f(7, 6, 3, 3), "be3": f(7), "wc": f(9, 12, 3, 3), "wf": f(10, 9) * 3, "bf": f(10),
             "shape": np.array([1, 9], np.int64)}
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["a0"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a0"], ["r0"], name="stem_relu"),
        helper.make_node("Conv", ["r0", "ws", "bs"], ["s"], name="squeeze"),
        helper.make_node("Relu", ["s"], ["rs"], name="squeeze_relu"),
        helper.make_node("Conv", ["rs", "we1", "be1"], ["e1"], name="expand1x1"),
        helper.make_node("Relu", ["e1"], ["re1"], name="expand1x1_relu"),
        helper.make_node("Conv", ["rs", "we3", "be3"], ["e3"], name="expand3x3", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["e3"], ["re3"], name="expand3x3_relu"),
        helper.make_node("Concat", ["re1", "re3"], ["cat"], name="fire_concat", axis=1),
        helper.make_node("Conv", ["cat", "wc"], ["c"], name="conv", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["c"], ["p"], name="gap"),
        helper.make_node("Reshape", ["p", "shape"], ["fl"], name="flat"),
        helper.make_node("Gemm", ["fl", "wf", "bf"], ["logits" if softmax else "y"], name="fc", transB=1),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1))
    return _model(nodes, inits, [1, 3, 8, 8], [1, 10])


def binary_concat_model(seed: int, c1: int = 37, c2: int = 45):
    """Binary activations concatenated (DenseNet / ReActNet style) with channel counts that leave
    the second input's bits off a word boundary: stem -> sign (c1) -> binary conv -> sign (c2) ->
    Concat(both) -> binary conv -> GAP -> Gemm -> Softmax."""
    rng = np.random.default_rng(seed)
    pm = lambda *s: rng.choice([-1.0, 1.0], size=s).astype(np.float32)  # noqa: E731
    # thresholds off the accumulators' grids: no Sign ties (a tied Sign is ternary, not a bit)
    inits = {"w0": pm(c1, 3, 3, 3), "t0": (rng.integers(-3, 3, size=(1, c1, 1, 1)) + 1 / 128).astype(np.float32),
             "w1": pm(c2, c1, 3, 3), "t1": (rng.integers(-5, 5, size=(1, c2, 1, 1)) + 0.5).astype(np.float32),
             "w2": pm(16, c1 + c2, 3, 3), "wf": rng.normal(size=(10, 16)).astype(np.float32) * 0.05,
             "bf": rng.normal(size=10).astype(np.float32), "shape": np.array([1, 16], np.int64)}
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["a0"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Sub", ["a0", "t0"], ["z0"], name="shift0"),
        helper.make_node("Sign", ["z0"], ["s0"], name="sign0"),
        helper.make_node("Conv", ["s0", "w1"], ["a1"], name="bconv1", pads=[1, 1, 1, 1]),
        helper.make_node("Sub", ["a1", "t1"], ["z1"], name="shift1"),
        helper.make_node("Sign", ["z1"], ["s1"], name="sign1"),
        helper.make_node("Concat", ["s0", "s1"], ["cat"], name="dense_concat", axis=-3),
        helper.make_node("Conv", ["cat", "w2"], ["a2"], name="bconv2", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["a2"], ["p"], name="gap"),
        helper.make_node("Reshape", ["p", "shape"], ["fl"], name="flat"),
        helper.make_node("Gemm", ["fl", "wf", "bf"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=1),
    ]
    return _model(nodes, inits, [1, 3, 6, 6], [1, 10], opset=11)


def qdq_concat_model(seed: int, scale_b: float = 1 / 32, softmax: bool = True):
    """Concat of integer (QuantizeLinear / DequantizeLinear) branches on grids 1/8 and `scale_b`
    (the finer grid holds both when the ratio is a power of two), then a Concat of two (N, C)
    vectors (global average pools of a stream and of a quantized branch), Gemm, Softmax."""
    rng = np.random.default_rng(seed)
    f = lambda *s: (rng.normal(size=s) * 0.3).astype(np.float32)  # noqa: E731
    inits = {"w0": f(6, 3, 3, 3), "wa": f(5, 6, 3, 3), "wb": f(4, 6, 1, 1), "wc": f(9, 9, 3, 3), "wf": f(10, 14) * 3, "bf": f(10),
             "sa": np.float32(1 / 8), "sb": np.float32(scale_b), "zp": np.uint8(0)}
    q = lambda a, s, out: [helper.make_node("QuantizeLinear", [a, s, "zp"], [out + "_q"], name=out + "_quant"),  # noqa: E731
                           helper.make_node("DequantizeLinear", [out + "_q", s, "zp"], [out], name=out + "_dequant")]
    nodes = [
        helper.make_node("Conv", ["x", "w0"], ["s"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["s"], ["rs"], name="stem_relu"),
        helper.make_node("Conv", ["rs", "wa"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ra"], name="relu_a"), *q("ra", "sa", "qa"),
        helper.make_node("Conv", ["rs", "wb"], ["b"], name="conv_b"),
        helper.make_node("Relu", ["b"], ["rb"], name="relu_b"), *q("rb", "sb", "qb"),
        helper.make_node("Concat", ["qa", "qb"], ["cat"], name="branch_concat", axis=1),
        helper.make_node("Conv", ["cat", "wc"], ["c"], name="conv_c", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["pc"], name="gap_c"),
        helper.make_node("Flatten", ["pc"], ["fc_in"], name="flat_c"),
        helper.make_node("GlobalAveragePool", ["qa"], ["pa"], name="gap_a"),
        helper.make_node("Flatten", ["pa"], ["fa_in"], name="flat_a"),
        helper.make_node("Concat", ["fc_in", "fa_in"], ["v"], name="vector_concat", axis=1),
        helper.make_node("Gemm", ["v", "wf", "bf"], ["logits" if softmax else "y"], name="fc", transB=1),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], ["y"], name="softmax"))
    return _model(nodes, inits, [1, 3, 6, 6], [1, 10])


def _check(model, opts, seed, targets=("c",), n=16, tol=1e-4):
    """Reference vs onnxruntime (top-1 identical, max abs difference <= tol), each target == the
    reference bit for bit; returns (graph, reference outputs, original outputs)."""
    graph = compile_graph(model, opts)
    x = driver.random_samples(graph, n, seed)
    inputs = driver.prepare_inputs(graph, x)
    ref = reference.run(graph, inputs.grid)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    assert np.array_equal(ref.argmax(-1), orig.argmax(-1))
    assert np.abs(ref - orig).max() <= tol
    for t in targets:
        y = driver.run_target(graph, t, inputs).reshape(ref.shape)
        assert y.dtype == ref.dtype and np.array_equal(y.view(np.uint32), ref.view(np.uint32)), t
    return graph, ref, orig


@pytest.mark.parametrize("seed", (0, 2, 3))
def test_fire_module_concat_of_real_valued_branches(seed):
    _check_through_logits(fire_model, seed)


def _check_through_logits(build, seed, logits_tol=0.05):
    """A real-valued model with and without its Softmax: the fixed-point streams approximate the
    logits (error bounds in `bnnc report`), and the softmax moves each probability by at most
    twice the logits' largest error; the Softmax op reads exactly the logits of the model without."""
    _, logits, orig_logits = _check(build(seed, softmax=False), OPTS, seed, tol=logits_tol)
    graph, ref, _ = _check(build(seed), OPTS, seed, tol=2 * float(np.abs(logits - orig_logits).max()))
    assert np.array_equal(ref, arith.softmax(logits))
    return graph
    cat = [op for op in graph.ops() if isinstance(op, ir.Concat)]
    assert len(cat) == 1 and isinstance(graph.tensors[cat[0].outputs[0]], ir.Ints)
    assert np.allclose(ref.sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize("seed,c1,c2", [(0, 37, 45), (1, 64, 30), (2, 70, 61), (3, 5, 3)])
def test_binary_concat_on_and_off_word_boundaries(seed, c1, c2):
    graph, _, _ = _check(binary_concat_model(seed, c1, c2), OPTS, seed)
    cat = next(op for op in graph.ops() if isinstance(op, ir.Concat))
    out = graph.tensors[cat.outputs[0]]
    assert isinstance(out, ir.Bits) and out.shape[2] == c1 + c2 and not cat.shifts


@pytest.mark.parametrize("seed", range(3))
def test_integer_concat_on_the_finer_grid_and_vector_concat(seed):
    graph = _check_through_logits(qdq_concat_model, seed)
    cats = [op for op in graph.ops() if isinstance(op, ir.Concat)]
    assert len(cats) == 2
    branch = next(op for op in cats if op.source_ops == ["branch_concat"])
    assert branch.shifts == (2, 0) and graph.tensors[branch.outputs[0]].scale == 1 / 32
    assert graph.tensors[next(op for op in cats if op.source_ops == ["vector_concat"]).outputs[0]].shape[:2] == (1, 1)


@pytest.mark.parametrize("seed", range(2))
def test_concat_of_grids_not_a_power_of_two_apart(seed):
    """Branches quantized with scales 1/8 and 1/10: the 1/10 one moves to a power-of-two grid of its
    own (streams.on_related_grids), rounded with its error stated, and the Concat joins them."""
    graph = _check_through_logits(lambda s, softmax=True: qdq_concat_model(s, scale_b=1 / 10, softmax=softmax), seed)
    branch = next(op for op in graph.ops() if isinstance(op, ir.Concat) and op.source_ops == ["branch_concat"])
    moved = graph.producer(branch.inputs[1])
    assert isinstance(moved, ir.Activation) and isinstance(moved.epilogue, ir.Requantize)
    assert 0 < moved.epilogue.max_error <= graph.tensors[moved.outputs[0]].scale / 2


# ----------------------------------------------------------------------------- softmax


def test_softmax_exp_is_within_its_bound_of_exp():
    rng = np.random.default_rng(0)
    d = np.concatenate([-rng.uniform(0, 128, 200000), -rng.uniform(0, 1e-3, 1000), [0.0, -1e-300, -128.0],
                        -np.log(2) * np.arange(0, 185) - np.log(2) / 2])
    d = d[d >= arith.SOFTMAX_CUTOFF]
    e = arith.softmax_exp(d)
    assert np.all(np.abs(e - np.exp(d)) <= np.exp(d) * 2.0**-45)
    assert arith.softmax_exp(np.array([0.0]))[0] == 1.0
    assert np.all(arith.softmax_exp(np.array([-128.001, -700.0, -1e300])) == 0.0)


@pytest.mark.parametrize("c,spread", [(10, 5.0), (10, 100.0), (1000, 30.0), (3, 300.0)])
def test_softmax_is_within_its_stated_bound(c, spread):
    rng = np.random.default_rng(c)
    x = (rng.normal(size=(500, c)) * spread).astype(np.float32)
    x[0, :2] = x[0, 2]  # ties
    y = arith.softmax(x)
    z = x.astype(np.float64) - x.max(-1, keepdims=True)
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    bound = p * (2.0**-24 + 2.0**-42 + c * 2.0**-52) + 2.0**-150
    live = z >= arith.SOFTMAX_CUTOFF
    assert np.all(np.abs(y - p)[live] <= bound[live])
    assert np.all(y[~live] == 0) and np.all(p[~live] < 2.0**-184)
    assert np.array_equal(y.argmax(-1), x.argmax(-1))


def logits_model(seed: int, c: int, gain: float, opset: int = 13, axis=None, op: str = "Softmax"):
    """(1, 16) fixed-point input -> Gemm with real weights times `gain` -> Softmax (or `op`):
    logits spread as widely as `gain` makes them (beyond the cutoff, for large gains)."""
    rng = np.random.default_rng(seed)
    inits = {"w": (rng.normal(size=(c, 16)) * gain).astype(np.float32), "b": rng.normal(size=c).astype(np.float32)}
    attrs = {} if axis is None else {"axis": axis}
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["logits"], name="fc", transB=1),
             helper.make_node(op, ["logits"], ["y"], name="softmax", **attrs)]
    return _model(nodes, inits, [1, 16], [1, c], opset=opset)


@pytest.mark.parametrize("seed,c,gain,opset", [(0, 10, 1.0, 13), (1, 10, 40.0, 13), (2, 300, 3.0, 11),
                                               (3, 7, 0.01, 12)])
def test_softmax_of_logits_c_equals_reference(seed, c, gain, opset):
    graph, ref, orig = _check(logits_model(seed, c, gain, opset), OPTS, seed, n=64, tol=1e-5)
    assert isinstance(graph.op(next(op.name for op in graph.ops() if isinstance(op, ir.Softmax))), ir.Softmax)
    assert ref.dtype == np.float32


def test_softmax_per_pixel_on_the_channel_axis():
    rng = np.random.default_rng(5)
    inits = {"w": (rng.normal(size=(6, 3, 3, 3)) * 0.5).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["logits"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=1)]
    model = _model(nodes, inits, [1, 3, 4, 5], [1, 6, 4, 5])
    graph = compile_graph(model, OPTS)
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 8, 5))
    ref = reference.run(graph, inputs.grid)
    assert ref.shape == (8, 6, 4, 5)  # the model's (C, H, W) order
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    assert np.array_equal(ref.argmax(1), orig.argmax(1)) and np.abs(ref - orig).max() <= 1e-5
    assert np.allclose(ref.sum(1), 1.0, atol=1e-6)
    y = driver.run_target(graph, "c", inputs).reshape(ref.shape)
    assert np.array_equal(y.view(np.uint32), ref.view(np.uint32))


def test_softmax_and_concat_on_cortex_m4():
    _check(binary_concat_model(4, 37, 45), OPTS, 4, targets=("c", "cortex-m4"), n=8)
    _check(logits_model(1, 10, 40.0), OPTS, 1, targets=("cortex-m4",), n=32, tol=1e-5)


def test_softmax_on_cortex_m0_soft_float():
    _check(logits_model(2, 300, 3.0, 11), OPTS, 2, targets=("cortex-m0",), n=8, tol=1e-5)


def test_log_poly_is_within_its_bound_of_log():
    rng = np.random.default_rng(0)
    s = np.concatenate([1 + rng.random(100000) * 2000, [1.0, 2.0, arith.SQRT2, np.nextafter(arith.SQRT2, 2), 1e300]])
    assert np.all(np.abs(arith.log_poly(s) - np.log(s)) <= np.log(s) * 2.0**-50 + 2.0**-60)
    assert arith.log_poly(np.array([1.0]))[0] == 0.0


@pytest.mark.parametrize("c,spread", [(10, 5.0), (10, 100.0), (1000, 30.0), (3, 300.0)])
def test_log_softmax_is_within_its_stated_bound(c, spread):
    rng = np.random.default_rng(c)
    x = (rng.normal(size=(500, c)) * spread).astype(np.float32)
    x[0, :2] = x[0, 2]  # ties
    y = arith.log_softmax(x).astype(np.float64)
    z = x.astype(np.float64) - x.max(-1, keepdims=True)
    ln = z - np.log(np.exp(z).sum(-1, keepdims=True))
    assert np.all(np.abs(y - ln) <= np.abs(ln) * 2.0**-24 + arith.LOG_SOFTMAX_EVAL_ERROR)
    assert np.array_equal(y.argmax(-1), x.argmax(-1))


@pytest.mark.parametrize("seed,c,gain,opset,targets", [(0, 10, 1.0, 13, ("c",)), (1, 10, 40.0, 13, ("c", "cortex-m4")),
                                                       (2, 300, 3.0, 11, ("c", "cortex-m0")), (3, 7, 0.01, 12, ("c",))])
def test_log_softmax_of_logits_targets_equal_reference(seed, c, gain, opset, targets):
    """A torch classifier's `log_softmax` output: within its stated bound of onnxruntime, every
    target bit for bit (soft-float double on Cortex-M0); no scratch buffer."""
    graph, ref, orig = _check(logits_model(seed, c, gain, opset, op="LogSoftmax"), OPTS, seed, n=32,
                              targets=targets, tol=np.inf)
    op = next(op for op in graph.ops() if isinstance(op, ir.Softmax))
    # the stated bound (the logits' real-valued weights, twice) + float32 roundings, relative
    bound = error_bounds.end_to_end(graph).layers[op.name].end_to_end
    assert np.all(np.abs(ref - orig) <= bound + np.abs(orig) * 2.0**-22)
    assert op.log and plan_arena.scratch_bytes(op, graph.tensors[op.inputs[0]], 32) == 0
    assert np.allclose(np.exp(ref.astype(np.float64)).sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("axis,opset", [(0, 13), (-1, 11)])
def test_softmax_off_the_channel_axis_is_refused(axis, opset):
    rng = np.random.default_rng(0)
    inits = {"w": rng.normal(size=(6, 3, 3, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["logits"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=axis)]
    with pytest.raises(BnncError, match="node 'softmax'.*channel axis"):
        compile_graph(_model(nodes, inits, [1, 3, 4, 5], [1, 6, 4, 5], opset=opset), OPTS)


def test_softmax_inside_the_network_is_refused():
    m = fire_model(0, softmax=False)
    relu = next(n for n in m.graph.node if n.name == "squeeze_relu")
    relu.op_type, relu.name = "Softmax", "mid_softmax"
    with pytest.raises(BnncError, match="node 'mid_softmax'.*inside the network"):
        compile_graph(m, OPTS)


@pytest.mark.parametrize("target", ["hls", "verilog"])
@pytest.mark.parametrize("build,layer", [(lambda: binary_concat_model(0), "dense_concat"),
                                         (lambda: logits_model(0, 10, 1.0), "softmax")])
def test_hls_and_verilog_refuse_with_the_layer_named(target, build, layer):
    from bnnc import targets

    graph = compile_graph(build(), OPTS)
    x = driver.prepare_inputs(graph, driver.random_samples(graph, 1, 0))
    with pytest.raises(BnncError, match=f"layer '{layer}'.*use --target c"):
        targets.run(graph, target, x.grid, targets.TargetOptions())
