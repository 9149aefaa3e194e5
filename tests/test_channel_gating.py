"""Data-driven channel gating as tf2onnx writes larq-zoo's Real-to-Binary blocks: the "scaling"
branch (AveragePool -> dense -> Relu -> dense -> Sigmoid, reshaped to one value per channel and
multiplied into a binary convolution's output) and Keras's PReLU (relu(x) + (-alpha) * relu(-x)).
Checked against onnxruntime within the stated error bound and the C backend bit for bit."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnnc import arith, driver, error_bounds, ir, targets
from bnnc.canonical import canonicalize
from bnnc.canonical.graph_edit import onnxruntime_session
from bnnc.canonical.keras_prelu import keras_prelu_to_prelu
from bnnc.errors import BnncError
from bnnc.original import OriginalModel
from bnnc.passes.quantize_input import InputAffine
from bnnc.pipeline import Options, compile_graph


def _model(nodes, inits, in_shape, out_shape):
    g = helper.make_graph(nodes, "gating", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _keras_prelu(x, alpha_neg, out, prefix="p"):
    """Keras's PReLU as tf2onnx writes it: Relu(x) + Mul(Relu(Neg(x)), -alpha)."""
    return [helper.make_node("Relu", [x], [f"{prefix}_pos"]),
            helper.make_node("Neg", [x], [f"{prefix}_neg"]),
            helper.make_node("Relu", [f"{prefix}_neg"], [f"{prefix}_negr"]),
            helper.make_node("Mul", [f"{prefix}_negr", alpha_neg], [f"{prefix}_mul"]),
            helper.make_node("Add", [f"{prefix}_pos", f"{prefix}_mul"], [out])]


# ----------------------------------------------------------------------------- Keras PReLU


def test_keras_prelu_is_rewritten_into_prelu_with_the_same_values():
    rng = np.random.default_rng(0)
    c = 6
    alpha_neg = -rng.uniform(0.0, 0.5, size=(1, 1, c)).astype(np.float32)  # NHWC: per channel, last axis
    model = _model(_keras_prelu("x", "an", "y"), {"an": alpha_neg}, (2, 4, 5, c), (2, 4, 5, c))
    out = keras_prelu_to_prelu(model)
    ops = [n.op_type for n in out.graph.node]
    assert ops == ["PRelu"]
    slope = numpy_helper.to_array(next(t for t in out.graph.initializer if t.name == out.graph.node[0].input[1]))
    assert np.array_equal(slope, -alpha_neg)
    x = rng.normal(size=(2, 4, 5, c)).astype(np.float32) * 10
    x[0, 0, 0] = 0.0
    x[0, 0, 1] = -0.0
    x[1, 1, 1, :2] = [np.inf, -np.inf]
    x[1, 2, 2, :3] = [1e-45, -1e-45, np.float32(-3.4e38)]  # subnormals, a product that stays finite
    a, b = (onnxruntime_session(m).run(None, {"x": x})[0] for m in (model, out))
    assert np.array_equal(a, b)


def test_keras_prelu_whose_parts_are_read_elsewhere_stays():
    alpha_neg = np.full((1, 1, 3), -0.25, np.float32)
    nodes = _keras_prelu("x", "an", "s") + [helper.make_node("Add", ["s", "p_negr"], ["y"])]
    model = _model(nodes, {"an": alpha_neg}, (1, 2, 2, 3), (1, 2, 2, 3))
    assert [n.op_type for n in keras_prelu_to_prelu(model).graph.node] == [n.op_type for n in model.graph.node]


def test_keras_prelu_with_per_pixel_slopes_read_after_the_layout_transposes_sink():
    """tf2onnx writes a PReLU whose slopes have the map's shape (Keras's default, shared_axes=None)
    with layout Transposes around its Mul; once they sink away (NCHW in) the pattern is a PReLU.
    Slopes equal at every pixel (the default initialisation) are one per channel: the model
    compiles, C == reference, reference == onnxruntime."""
    rng = np.random.default_rng(5)
    c, h, w = 4, 5, 6
    inits = {"wc": rng.normal(size=(c, 3, 3, 3)).astype(np.float32),
             "an": np.broadcast_to(-rng.uniform(0.0, 0.5, size=(1, 1, 1, c)), (1, h, w, c)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "wc"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["p_pos"]), helper.make_node("Neg", ["a"], ["p_neg"]),
             helper.make_node("Relu", ["p_neg"], ["p_negr"]),
             helper.make_node("Transpose", ["p_negr"], ["t1"], perm=[0, 2, 3, 1]),
             helper.make_node("Mul", ["t1", "an"], ["p_mul"]),
             helper.make_node("Transpose", ["p_mul"], ["t2"], perm=[0, 3, 1, 2]),
             helper.make_node("Add", ["p_pos", "t2"], ["s"]), helper.make_node("GlobalAveragePool", ["s"], ["y"])]
    model = _model(nodes, inits, (1, 3, h, w), (1, c, 1, 1))
    assert "PRelu" in [n.op_type for n in canonicalize(model).graph.node]
    graph = compile_graph(model, Options(input_range=(-128, 127), input_scale=1 / 64))
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 6, 1))
    ref = driver.run_target(graph, "ref", inputs)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    assert np.abs(ref - orig).max() <= 1e-4 * max(1.0, np.abs(orig).max())
    assert np.array_equal(driver.run_target(graph, "c", inputs), ref)


# ----------------------------------------------------------------------------- sigmoid


@pytest.mark.parametrize("frac_bits,scale", [(30, 2.0**-20), (16, 2.0**-8), (30, 3e-3), (8, 1.0)])
def test_sigmoid_is_within_its_stated_bound(frac_bits, scale):
    rng = np.random.default_rng(frac_bits)
    q = np.concatenate([rng.integers(-2**30, 2**30, 4000), rng.integers(-4000, 4000, 4000), [0, 1, -1]])
    out = arith.sigmoid(q, scale, frac_bits)
    x = q.astype(np.float64) * scale
    true = np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))
    op = ir.Sigmoid("s", ["a"], ["b"], scale, frac_bits)
    err = np.abs(out * 2.0**-frac_bits - true)
    assert err.max() <= op.max_error
    assert err.max() > 2.0 ** -(frac_bits + 1) / 2  # the grid's rounding is what the bound is made of
    assert out.min() >= 0 and out.max() <= 2**frac_bits and np.all(np.diff(out[np.argsort(q)]) >= 0)


# ----------------------------------------------------------------------------- gated convolutions


def _scaling_branch(src, h):
    """Real-to-Binary's scaling branch of (N, C, h, h) `src` into `gate`: a global AveragePool, dense
    (d1), Relu, dense (d2), Sigmoid, reshaped to one value per channel (the `vec` shape)."""
    return [helper.make_node("AveragePool", [src], ["ap"], kernel_shape=[h, h], strides=[h, h]),
            helper.make_node("Reshape", ["ap", "flat"], ["f"]),
            helper.make_node("MatMul", ["f", "d1"], ["m1"]),
            helper.make_node("Relu", ["m1"], ["r1"]),
            helper.make_node("MatMul", ["r1", "d2"], ["m2"]),
            helper.make_node("Sigmoid", ["m2"], ["sg"]),
            helper.make_node("Reshape", ["sg", "vec"], ["gate"])]


def _gated_conv(seed, c=8, h=6):
    """x -> real conv a; gate = sigmoid(dense(relu(dense(avgpool(a))))) per channel; y = binconv(sign(a)) * gate."""
    rng = np.random.default_rng(seed)
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w1": rng.normal(size=(c, 4, 3, 3)).astype(np.float32) / 4, "b1": rng.normal(size=c).astype(np.float32),
             "d1": rng.normal(size=(c, 4)).astype(np.float32), "d2": rng.normal(size=(4, c)).astype(np.float32),
             "flat": np.array([-1, c], np.int64), "vec": np.array([-1, c, 1, 1], np.int64),
             "off": np.array(0.1, np.float32), "w2": rng.choice([-1.0, 1.0], size=(c, c, 3, 3)).astype(np.float32)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Conv", ["xd", "w1", "b1"], ["a"], pads=[1, 1, 1, 1]),
             *_scaling_branch("a", h),
             helper.make_node("Sign", ["a"], ["s1"]),  # larq's ste_sign: Sign(Sign(x) + 0.1)
             helper.make_node("Add", ["s1", "off"], ["s1o"]),
             helper.make_node("Sign", ["s1o"], ["b"]),
             helper.make_node("Conv", ["b", "w2"], ["bc"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["bc", "gate"], ["y"])]
    return _model(nodes, inits, (1, 4, h, h), (1, c, h, h))


def _run(model, options, n=40, seed=0):
    graph = compile_graph(model, options)
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, n, seed))
    ref = driver.run_target(graph, "ref", inputs)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    y, _ = targets.run(graph, "c", inputs.grid, targets.TargetOptions())
    assert np.array_equal(y, ref)  # C == reference, bit for bit
    return graph, ref, orig


@pytest.mark.parametrize("seed", [0, 1])
def test_gated_binary_conv_is_within_its_bound_and_c_is_exact(seed):
    model = _gated_conv(seed)
    graph, ref, orig = _run(model, Options(verify_ir=True))
    kinds = [type(op).__name__ for op in graph.ops()]
    assert "Sigmoid" in kinds and "Mul" in kinds
    mul = next(op for op in graph.ops() if isinstance(op, ir.Mul))
    assert graph.tensors[mul.inputs[1]].shape == (1, 1, 8)  # the gate: one value per channel
    bound = error_bounds.output_bound(graph)
    # a bound that says something: the worst case of the dense layers' weight grids (~3e-4 at the gate)
    # times the binary convolution's largest |value| (72)
    assert 0 < bound < 0.05
    f32 = 2.0**-22 * np.maximum(1.0, np.abs(orig))  # onnxruntime's own float32 rounding
    assert np.all(np.abs(ref - orig) <= bound + f32)
    assert np.abs(ref - orig).max() > 0  # the values are not exact: the bound is exercised


def _pooled_dense(pool: str, c=6, h=32, sign=False):
    """A real conv's stream (or, with `sign`, its signs), its mean over the whole h x h map (`pool`:
    tf2onnx's AveragePool with the map as its window, or GlobalAveragePool), then a dense layer: a
    sum of h^2 stream values does not fit 32 bits."""
    rng = np.random.default_rng(3)
    inits = {"s": np.array(1 / 64, np.float32), "z": np.array(0, np.int8),
             "w1": rng.normal(size=(c, 3, 3, 3)).astype(np.float32), "b1": rng.normal(size=c).astype(np.float32),
             "flat": np.array([-1, c], np.int64), "d1": rng.normal(size=(c, 5)).astype(np.float32)}
    attrs = {"kernel_shape": [h, h], "strides": [1, 1]} if pool == "AveragePool" else {}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Conv", ["xd", "w1", "b1"], ["a"], pads=[1, 1, 1, 1]),
             *([helper.make_node("Sign", ["a"], ["as"])] if sign else []),
             helper.make_node(pool, ["as" if sign else "a"], ["ap"], **attrs),
             helper.make_node("Reshape", ["ap", "flat"], ["f"]),
             helper.make_node("MatMul", ["f", "d1"], ["y"])]
    return _model(nodes, inits, (1, 3, h, h), (1, 5))


def test_average_pool_over_the_whole_map_sums_then_rounds():
    """An AveragePool whose window is the whole map is a global pool: the exact int64 sum, rounded
    once for the dense layer's 32-bit input, not every pixel rounded first so that the window sum fits
    32 bits (a bound h^2 / 2 times larger in the sum). Same graph and numbers as GlobalAveragePool."""
    graphs = {}
    for pool in ("AveragePool", "GlobalAveragePool"):
        graph, ref, orig = _run(_pooled_dense(pool), Options(verify_ir=True), n=20)
        kinds = [type(op).__name__ for op in graph.ops()]
        assert "GlobalSumPool" in kinds and "SumPool" not in kinds
        bound = error_bounds.output_bound(graph)
        assert np.all(np.abs(ref - orig) <= bound + 2.0**-22 * np.maximum(1.0, np.abs(orig)))
        # the one rounding between the pool and the dense layer: the sum's, 2^-25 in the mean here
        # (each pixel rounded so that the window sum fits 32 bits: 2^-16)
        narrow = next(op for op in graph.ops() if isinstance(op, ir.Activation))
        assert graph.ops().index(narrow) == kinds.index("GlobalSumPool") + 1
        assert error_bounds.local_bound(narrow) <= 2.0**-25
        graphs[pool] = (kinds, bound, ref)
    (ka, ba, ra), (kg, bg, rg) = graphs.values()
    assert ka == kg and ba == bg and np.array_equal(ra, rg)


def test_average_pool_of_signs_over_the_whole_map_is_a_global_pool():
    """Of bits too, as GlobalAveragePool takes them (a window that is not the whole map is refused)."""
    outs = []
    for pool in ("AveragePool", "GlobalAveragePool"):
        graph, ref, orig = _run(_pooled_dense(pool, h=8, sign=True), Options(verify_ir=True), n=20)
        assert "GlobalSumPool" in [type(op).__name__ for op in graph.ops()]
        bound = error_bounds.output_bound(graph)
        assert np.all(np.abs(ref - orig) <= bound + 2.0**-22 * np.maximum(1.0, np.abs(orig)))
        outs.append(ref)
    assert np.array_equal(*outs)
    model = _pooled_dense("AveragePool", h=8, sign=True)
    next(a for a in model.graph.node[-3].attribute if a.name == "kernel_shape").ints[:] = [4, 4]
    with pytest.raises(BnncError, match="AveragePool of a bits tensor is not supported"):
        compile_graph(model)


def test_gate_and_product_refused_by_the_hardware_backends():
    graph = compile_graph(_gated_conv(0))
    for target in ("verilog", "hls"):
        with pytest.raises(BnncError, match="does not implement Sigmoid ops"):
            targets.compile_files(graph, target, targets.options_for(target, targets.TargetOptions()))


def test_ir_verify_checks_the_sigmoid_grid_and_the_gate_shape():
    graph = compile_graph(_gated_conv(0))
    sig = next(op for op in graph.ops() if isinstance(op, ir.Sigmoid))
    sig.frac_bits -= 1
    with pytest.raises(ir.IRError, match="Sigmoid"):
        ir.verify(graph)
    sig.frac_bits += 1
    mul = next(op for op in graph.ops() if isinstance(op, ir.Mul))
    mul.inputs = [mul.inputs[1], mul.inputs[0]]
    with pytest.raises(ir.IRError, match="Mul"):
        ir.verify(graph)


def _hard_gated_sign(seed, c=8, h=6):
    """x -> real conv a; gate = relu6(dense(relu(dense(avgpool(a)))) + 3) / 6 per channel (MobileNetV3's
    hard sigmoid as PyTorch code writes it), closed (exactly 0) on half the channels;
    y = binconv(sign(a * gate)): ONNX's Sign gives 0 where the gate is 0."""
    rng = np.random.default_rng(seed)
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w1": rng.normal(size=(c, 4, 3, 3)).astype(np.float32) / 4, "b1": rng.normal(size=c).astype(np.float32),
             "d1": rng.normal(size=(c, 4)).astype(np.float32), "d2": rng.normal(size=(4, c)).astype(np.float32),
             "closed": np.where(np.arange(c) % 2 == 0, -100.0, 0.0).astype(np.float32),
             "three": np.array(3, np.float32), "zero": np.array(0, np.float32), "six": np.array(6, np.float32),
             "flat": np.array([-1, c], np.int64), "vec": np.array([-1, c, 1, 1], np.int64),
             "w2": rng.choice([-1.0, 1.0], size=(c, c, 3, 3)).astype(np.float32)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Conv", ["xd", "w1", "b1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["a"], ["ap"], kernel_shape=[h, h], strides=[h, h]),
             helper.make_node("Reshape", ["ap", "flat"], ["f"]),
             helper.make_node("MatMul", ["f", "d1"], ["m1"]),
             helper.make_node("Relu", ["m1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "d2"], ["m2"]),
             helper.make_node("Add", ["m2", "closed"], ["m3"]),
             helper.make_node("Add", ["m3", "three"], ["m4"]),
             helper.make_node("Clip", ["m4", "zero", "six"], ["m5"]),
             helper.make_node("Div", ["m5", "six"], ["g"]),
             helper.make_node("Reshape", ["g", "vec"], ["gate"]),
             helper.make_node("Mul", ["a", "gate"], ["p"]),
             helper.make_node("Sign", ["p"], ["b"]),
             helper.make_node("Conv", ["b", "w2"], ["y"], pads=[1, 1, 1, 1])]
    return _model(nodes, inits, (1, 4, h, h), (1, c, h, h))


def test_sign_of_a_product_with_a_closed_gate_keeps_its_zeros():
    """The 0 of a product whose gate a Relu / Clip closes is exact, not a rounded value near 0: the
    Sign after it is ternary, as ONNX's Sign(0) = 0 is, and the outputs stay within the bound."""
    model = _hard_gated_sign(0)
    graph, ref, orig = _run(model, Options(verify_ir=True))
    mul = next(op for op in graph.ops() if isinstance(op, ir.Mul))
    sign = next(op for op in graph.ops() if isinstance(op, ir.Activation) and op.inputs == mul.outputs)
    out = graph.tensors[sign.outputs[0]]
    assert isinstance(out, ir.Ints) and (out.lo, out.hi) == (-1, 1)
    f32 = 2.0**-22 * np.maximum(1.0, np.abs(orig))
    assert np.all(np.abs(ref - orig) <= error_bounds.output_bound(graph) + f32)


# ----------------------------------------------------------------------------- a whole block, tf2onnx's form


def _real_to_binary_block(seed, c=8, h=8):
    """An NHWC Real-to-Binary block as tf2onnx writes it: Transposes around each convolution,
    BatchNorm -> (scaling branch, ste_sign -> binary conv) -> gate Mul -> Keras PReLU -> residual Add,
    then a global average pool and a dense head."""
    rng = np.random.default_rng(seed)
    inits = {"w0": rng.normal(size=(c, 3, 3, 3)).astype(np.float32) / 2, "b0": rng.normal(size=c).astype(np.float32),
             "g": rng.uniform(0.5, 1.5, c).astype(np.float32), "be": rng.normal(0, 0.3, c).astype(np.float32),
             "mu": rng.normal(0, 0.5, c).astype(np.float32), "var": rng.uniform(0.5, 2.0, c).astype(np.float32),
             "d1": rng.normal(size=(c, 4)).astype(np.float32), "d2": rng.normal(size=(4, c)).astype(np.float32),
             "flat": np.array([-1, c], np.int64), "vec": np.array([-1, 1, 1, c], np.int64),
             "off": np.array(0.1, np.float32), "w2": rng.choice([-1.0, 1.0], size=(c, c, 3, 3)).astype(np.float32),
             "an": -rng.uniform(0.1, 0.4, size=(1, 1, c)).astype(np.float32),
             "axes": np.array([1, 2], np.int64), "wf": rng.normal(size=(c, 10)).astype(np.float32)}
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xt", "w0", "b0"], ["a0"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["a0"], ["a"], perm=[0, 2, 3, 1]),  # NHWC from here
             helper.make_node("Transpose", ["a"], ["an_t"], perm=[0, 3, 1, 2]),
             helper.make_node("BatchNormalization", ["an_t", "g", "be", "mu", "var"], ["bn_t"]),
             helper.make_node("Transpose", ["bn_t"], ["bn"], perm=[0, 2, 3, 1]),
             helper.make_node("Transpose", ["bn"], ["bn_p"], perm=[0, 3, 1, 2]),
             *_scaling_branch("bn_p", h),
             helper.make_node("Sign", ["bn"], ["s1"]),
             helper.make_node("Add", ["s1", "off"], ["s1o"]),
             helper.make_node("Sign", ["s1o"], ["b"]),
             helper.make_node("Transpose", ["b"], ["bt"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["bt", "w2"], ["bc"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["bc"], ["bcn"], perm=[0, 2, 3, 1]),
             helper.make_node("Mul", ["bcn", "gate"], ["gated"])] + _keras_prelu("gated", "an", "pr") + [
             helper.make_node("Transpose", ["pr"], ["pr_t"], perm=[0, 3, 1, 2]),
             helper.make_node("Add", ["pr_t", "an_t"], ["res"]),
             helper.make_node("AveragePool", ["res"], ["gp"], kernel_shape=[h, h], strides=[h, h]),
             helper.make_node("Reshape", ["gp", "flat"], ["gm"]),
             helper.make_node("MatMul", ["gm", "wf"], ["y"])]
    del inits["axes"]
    return _model(nodes, inits, (1, h, h, 3), (1, 10))


def test_real_to_binary_block_in_tf2onnx_form():
    model = _real_to_binary_block(3)
    canon = canonicalize(model)
    assert "Neg" not in {n.op_type for n in canon.graph.node}
    affine = InputAffine((("div", (255.0,)), ("sub", (0.485, 0.456, 0.406)), ("div", (0.229, 0.224, 0.225))))
    graph, ref, orig = _run(model, Options(input_range=(0, 255), input_affine=affine, verify_ir=True), n=60)
    assert {"Sigmoid", "Mul", "Add"} <= {type(op).__name__ for op in graph.ops()}
    assert (ref.argmax(1) == orig.argmax(1)).mean() >= 0.95
    bound = error_bounds.output_bound(graph)
    assert np.all(np.abs(ref - orig) <= bound + 2.0**-20 * np.maximum(1.0, np.abs(orig)))


def test_gated_block_on_a_cortex_m0_is_exact():
    """The MCU build shares the C templates: soft-float doubles on a core without an FPU give the
    sigmoid's bits too."""
    pytest.importorskip("unicorn", reason="the Cortex-M tests need the mcu extra (unicorn, ziglang, pyelftools)")
    pytest.importorskip("ziglang", reason="the Cortex-M tests need the mcu extra (unicorn, ziglang, pyelftools)")
    pytest.importorskip("elftools", reason="the Cortex-M tests need the mcu extra (unicorn, ziglang, pyelftools)")
    graph = compile_graph(_gated_conv(1))
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 6, 2))
    y, _ = targets.run(graph, "cortex-m0", inputs.grid, targets.TargetOptions())
    assert np.array_equal(y, driver.run_target(graph, "ref", inputs))


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_gated_block_c_is_clean_under_sanitizers(cc, monkeypatch):
    import shutil

    if shutil.which(cc) is None:
        pytest.skip(f"{cc} is not installed")
    monkeypatch.setenv("CC", cc)
    graph = compile_graph(_gated_conv(0))
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 3, 4))
    flags = ("-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off",
             "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g")
    assert np.array_equal(driver.run_target(graph, "c", inputs, flags=flags), driver.run_target(graph, "ref", inputs))


@pytest.mark.parametrize("seed", [0, 1])
def test_hard_swish_of_a_stream_is_within_its_bound(seed):
    """ONNX HardSwish (MobileNetV3's nn.Hardswish as the torch exporter writes it from opset 14),
    x * max(0, min(1, x / 6 + 1/2)) of a real conv's output: the product of its fixed-point stream
    and that stream's HardSigmoid (ir.Mul), within the stated bound of onnxruntime, C exact."""
    rng = np.random.default_rng(seed)
    c = 6
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w1": rng.normal(size=(c, 3, 3, 3)).astype(np.float32), "b1": rng.normal(size=c).astype(np.float32)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Conv", ["xd", "w1", "b1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("HardSwish", ["a"], ["hs"]),
             helper.make_node("GlobalAveragePool", ["hs"], ["y"])]
    g = helper.make_graph(nodes, "hardswish", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 1, 1])],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
    graph, ref, orig = _run(model, Options(verify_ir=True))
    assert any(isinstance(op, ir.Mul) for op in graph.ops())
    f32 = 2.0**-22 * np.maximum(1.0, np.abs(orig))
    bound = error_bounds.output_bound(graph)
    assert 0 < bound < 0.01 and np.all(np.abs(ref - orig) <= bound + f32)
    assert np.abs(orig).max() > 0.5  # HardSwish's values, not all clamped to 0


# ----------------------------------------------------------------------------- GELU


@pytest.mark.parametrize("frac_bits,scale", [(24, 2.0**-16), (16, 2.0**-8), (20, 3e-3), (8, 1.0)])
def test_gelu_is_within_its_stated_bound(frac_bits, scale):
    """arith.gelu against x Phi(x) with the correctly rounded erf (math.erf) over the whole stream
    range and densely near 0: within half a step + the stated float64 error."""
    import math

    rng = np.random.default_rng(frac_bits)
    q = np.concatenate([rng.integers(-2**23, 2**23, 3000), rng.integers(-4000, 4000, 3000), [0, 1, -1]])
    out = arith.gelu(q, scale, frac_bits)
    x = q.astype(np.float64) * scale
    true = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x])
    op = ir.Gelu("g", ["a"], ["b"], scale, frac_bits, float(np.abs(x).max()))
    err = np.abs(out * 2.0**-frac_bits - true)
    assert err.max() <= op.max_error
    assert err.max() > 2.0 ** -(frac_bits + 1) / 2
    assert np.allclose(arith.erf_nonneg(np.linspace(0, 6, 2001)), [math.erf(z) for z in np.linspace(0, 6, 2001)],
                       rtol=0, atol=arith.GELU_EVAL_ERROR)


def _gelu_model(form: str, seed: int):
    """A float conv, GELU and GlobalAveragePool: the GELU as ONNX Gelu (opset 20) or in one of the
    Erf forms the exporters write (x / sqrt 2 -> Erf -> + 1, then the product with x and 0.5 grouped
    as (x * s) * 0.5, (s * 0.5) * x or s * (x * 0.5))."""
    rng = np.random.default_rng(seed)
    c = 6
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w1": rng.normal(size=(c, 3, 3, 3)).astype(np.float32), "b1": rng.normal(size=c).astype(np.float32),
             "r2": np.array(np.sqrt(2), np.float32), "r2i": np.array(1 / np.sqrt(2), np.float32),
             "one": np.array(1, np.float32), "half": np.array(0.5, np.float32)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Conv", ["xd", "w1", "b1"], ["a"], pads=[1, 1, 1, 1])]
    if form == "Gelu":
        nodes += [helper.make_node("Gelu", ["a"], ["g"])]
    else:
        scaled = helper.make_node("Div", ["a", "r2"], ["u"]) if form != "s*(x*0.5)" else \
            helper.make_node("Mul", ["r2i", "a"], ["u"])
        nodes += [scaled, helper.make_node("Erf", ["u"], ["e"], name="act.erf"),
                  helper.make_node("Add", ["one", "e"], ["sum"])]
        nodes += {"(x*s)*0.5": [helper.make_node("Mul", ["a", "sum"], ["m"]),
                                helper.make_node("Mul", ["m", "half"], ["g"])],
                  "(s*0.5)*x": [helper.make_node("Mul", ["sum", "half"], ["m"]),
                                helper.make_node("Mul", ["a", "m"], ["g"])],
                  "s*(x*0.5)": [helper.make_node("Mul", ["half", "a"], ["m"]),
                                helper.make_node("Mul", ["sum", "m"], ["g"])]}[form]
    nodes += [helper.make_node("GlobalAveragePool", ["g"], ["y"])]
    g = helper.make_graph(nodes, "gelu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 1, 1])],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()
                           if any(k in n.input for n in nodes)])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 20 if form == "Gelu" else 13)])


@pytest.mark.parametrize("form", ["Gelu", "(x*s)*0.5", "(s*0.5)*x", "s*(x*0.5)"])
def test_gelu_of_a_stream_is_within_its_bound(form):
    """nn.GELU as both torch exporters write it (ONNX Gelu; the Erf form, canonical/erf_gelu.py)
    on a real conv's output: ir.Gelu of its fixed-point stream, within the stated bound of
    onnxruntime, C exact; no Erf is left after the canonical stage."""
    model = _gelu_model(form, 1)
    assert not any(n.op_type == "Erf" for n in canonicalize(model).graph.node)
    graph, ref, orig = _run(model, Options(verify_ir=True))
    gelu = [op for op in graph.ops() if isinstance(op, ir.Gelu)]
    assert len(gelu) == 1 and gelu[0].source_ops == ["act.erf" if form != "Gelu" else gelu[0].source_ops[0]]
    f32 = 2.0**-22 * np.maximum(1.0, np.abs(orig))
    bound = error_bounds.output_bound(graph)
    assert 0 < bound < 0.01 and np.all(np.abs(ref - orig) <= bound + f32)


def test_ir_verify_checks_the_gelu_grid_and_its_reach():
    graph = compile_graph(_gelu_model("Gelu", 0))
    gelu = next(op for op in graph.ops() if isinstance(op, ir.Gelu))
    gelu.x_max /= 2  # a bound stated for half the input's reach
    with pytest.raises(ir.IRError, match="Gelu"):
        ir.verify(graph)
    gelu.x_max *= 2
    gelu.frac_bits -= 1
    with pytest.raises(ir.IRError, match="Gelu"):
        ir.verify(graph)


def test_gelu_with_the_tanh_approximation_is_refused():
    model = _gelu_model("Gelu", 0)
    model.graph.node[3].attribute.append(helper.make_attribute("approximate", "tanh"))
    with pytest.raises(BnncError, match="Gelu.*approximate='tanh'"):
        compile_graph(model)
    graph = compile_graph(_gelu_model("Gelu", 0))
    with pytest.raises(BnncError, match="Gelu"):
        targets.compile_files(graph, "verilog", targets.options_for("verilog", targets.TargetOptions()))
