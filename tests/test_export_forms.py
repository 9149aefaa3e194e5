"""Frontend forms of real exporters that the canonical stage leaves to the lowering: larq's +-1
padding of binary activations, tf2onnx's NHWC model input, a Relu on a fixed-point stream;
each checked against onnxruntime and the C backend bit for bit."""

import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper, numpy_helper

from bnnc import driver, error_bounds, ir, targets
from bnnc.original import OriginalModel
from bnnc.passes.quantize_input import InputAffine
from bnnc.pipeline import Options, compile_graph

IMAGENET = InputAffine((("div", (255.0,)), ("sub", (0.485, 0.456, 0.406)), ("div", (0.229, 0.224, 0.225))))


def _model(nodes, inits, in_shape, out_shape=(1, 10)):
    g = helper.make_graph(nodes, "forms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def _check(model, options, n=30, seed=0, exact=True):
    graph = compile_graph(model, options)
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, n, seed))
    ref = driver.run_target(graph, "ref", inputs)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    if exact:
        assert np.allclose(ref, orig, rtol=1e-5, atol=1e-5)
    else:
        assert (ref.argmax(1) == orig.argmax(1)).mean() >= 0.9
    y, _ = targets.run(graph, "c", inputs.grid, targets.TargetOptions())
    assert np.array_equal(y, ref)
    return graph


def _padded_binary_conv(seed, pads, value, stride, k):
    rng = np.random.default_rng(seed)
    c, o = 5, 7
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "t": rng.normal(size=(1, c, 1, 1)).astype(np.float32) / 4,
             "pads": np.array([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]], np.int64),
             "pv": np.array(value, np.float32), "one": np.array(1.0, np.float32),
             "w": rng.choice([-1.0, 1.0], size=(o, c, k, k)).astype(np.float32),
             "t2": (rng.integers(-3, 4, size=(1, o, 1, 1)) + 0.5).astype(np.float32),
             "shape": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Sub", ["xd", "t"], ["xs"]),
             helper.make_node("Sign", ["xs"], ["b"]),
             helper.make_node("Pad", ["b", "pads", "pv"], ["bp"], mode="constant"),
             helper.make_node("Conv", ["bp", "w"], ["a"], strides=[stride, stride]),
             helper.make_node("Sub", ["a", "t2"], ["a2"]),
             helper.make_node("Sign", ["a2"], ["s2"]),
             helper.make_node("Reshape", ["s2", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1)]
    h = 9
    oh = (h + pads[0] + pads[2] - k) // stride + 1
    ow = (h + pads[1] + pads[3] - k) // stride + 1
    inits["wf"] = np.round(rng.normal(size=(10, o * oh * ow)) * 64).astype(np.float32) / 64  # on a 2^-6 grid
    return _model(nodes, inits, (1, c, h, h))


@pytest.mark.parametrize("seed,pads,value,stride,k", [
    (0, (1, 1, 1, 1), 1.0, 1, 3), (1, (0, 0, 1, 1), 1.0, 2, 3), (2, (2, 2, 2, 2), -1.0, 1, 5),
    (3, (1, 1, 1, 1), -1.0, 2, 3)])
def test_binary_activations_padded_with_plus_minus_one(seed, pads, value, stride, k):
    model = _padded_binary_conv(seed, pads, value, stride, k)
    g = _check(model, Options())
    conv = next(op for op in g.ops() if isinstance(op, ir.Conv))
    assert conv.bias_kernel is not None and tuple(conv.pads) == tuple(pads)


def test_padding_without_an_always_valid_tap_is_refused():
    from bnnc.errors import BnncError

    with pytest.raises(BnncError, match="no kernel tap is inside the input at every output position"):
        compile_graph(_padded_binary_conv(4, (1, 0, 2, 1), 1.0, 1, 3))


def test_nhwc_model_input_is_read_in_its_own_order():
    rng = np.random.default_rng(5)
    inits = {"perm_w": rng.normal(size=(6, 3, 3, 3)).astype(np.float32),
             "wf": rng.normal(size=(10, 6)).astype(np.float32), "shape": np.array([1, 6], np.int64)}
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xt", "perm_w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Reshape", ["p", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1)]
    model = _model(nodes, inits, (1, 8, 8, 3))
    g = _check(model, Options(input_range=(0, 255), input_affine=IMAGENET), exact=False)
    inq = next(op for op in g.ops() if isinstance(op, ir.InputQuantize))
    assert inq.channels_last and tuple(inq.in_shape) == (8, 8, 3)


def test_single_channel_nhwc_input_written_as_a_reshape():
    """tf2onnx writes the NHWC -> NCHW Transpose of a one-channel input (MNIST) as a Reshape."""
    rng = np.random.default_rng(6)
    inits = {"w": rng.normal(size=(4, 1, 3, 3)).astype(np.float32), "nchw": np.array([1, 1, 7, 5], np.int64),
             "wf": rng.normal(size=(10, 4)).astype(np.float32), "shape": np.array([1, 4], np.int64)}
    nodes = [helper.make_node("Reshape", ["x", "nchw"], ["xt"]),
             helper.make_node("Conv", ["xt", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Reshape", ["p", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1)]
    g = _check(_model(nodes, inits, (1, 7, 5, 1)), Options(input_range=(0, 255), input_scale=1 / 255), exact=False)
    inq = next(op for op in g.ops() if isinstance(op, ir.InputQuantize))
    assert inq.channels_last and g.tensors[inq.outputs[0]].shape == (7, 5, 1)


def test_relu_of_a_residual_stream_before_a_max_pool():
    rng = np.random.default_rng(6)
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w": rng.choice([-1.0, 1.0], size=(4, 4, 3, 3)).astype(np.float32),
             "g": np.array(0.25, np.float32), "shape": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Sign", ["xd"], ["b"]),
             helper.make_node("Conv", ["b", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["a", "g"], ["m"]),
             helper.make_node("Add", ["m", "xd"], ["res"]),
             helper.make_node("Relu", ["res"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["p"], ["q"]),
             helper.make_node("Reshape", ["q", "shape"], ["y"])]
    _check(_model(nodes, inits, (1, 4, 6, 6), (1, 4)), Options())


INT_MAX = 2**63 - 1


def _option_a_shortcut_block(seed, opset, step=2, start=0, pad=(2, 2), slice_form="one"):
    """IR-Net / ResNet "option A" downsampling block as torch writes it: the main branch a strided
    binary convolution, the shortcut x[:, :, ::2, ::2] padded with zero channels, then Add."""
    rng = np.random.default_rng(seed)
    c, h = 4, 8
    o = c + pad[0] + pad[1]
    oh = -(-(h - start) // step)
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w": rng.choice([-1.0, 1.0], size=(o, c, 3, 3)).astype(np.float32),
             "g": np.array(0.125, np.float32), "w2": rng.choice([-1.0, 1.0], size=(5, o, 1, 1)).astype(np.float32),
             "shape": np.array([1, -1], np.int64)}
    if slice_form == "one":
        inits.update(st=np.array([start, start], np.int64), en=np.array([INT_MAX, INT_MAX], np.int64),
                     ax=np.array([2, 3], np.int64), sp=np.array([step, step], np.int64))
        sl = [helper.make_node("Slice", ["xd", "st", "en", "ax", "sp"], ["xs"])]
    else:  # the legacy exporter's one Slice per axis, the steps as inputs
        inits.update(st=np.array([start], np.int64), en=np.array([INT_MAX], np.int64), a2=np.array([2], np.int64),
                     a3=np.array([3], np.int64), sp=np.array([step], np.int64))
        sl = [helper.make_node("Slice", ["xd", "st", "en", "a2", "sp"], ["xh"]),
              helper.make_node("Slice", ["xh", "st", "en", "a3", "sp"], ["xs"])]
    inits["pads"] = np.array([0, pad[0], 0, 0, 0, pad[1], 0, 0], np.int64)
    inits["pv"] = np.array(0.0, np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Sign", ["xd"], ["b"]),
             helper.make_node("Conv", ["b", "w"], ["a"], pads=[1, 1, 1, 1], strides=[step, step]),
             helper.make_node("Mul", ["a", "g"], ["m"]), *sl,
             helper.make_node("Pad", ["xs", "pads", "pv"], ["xp"], mode="constant"),
             helper.make_node("Add", ["m", "xp"], ["res"]),
             helper.make_node("Sign", ["res"], ["b2"]),
             helper.make_node("Conv", ["b2", "w2"], ["a2c"]),
             helper.make_node("GlobalAveragePool", ["a2c"], ["q"]),
             helper.make_node("Reshape", ["q", "shape"], ["y"])]
    g = helper.make_graph(nodes, "forms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, h])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    assert oh >= 1
    return model


@pytest.mark.parametrize("seed,opset,step,pad,form", [
    (0, 13, 2, (2, 2), "one"), (1, 11, 2, (1, 3), "per_axis"), (2, 13, 3, (0, 4), "one"),
    (3, 13, 2, (4, 0), "per_axis")])
def test_strided_slice_and_channel_zero_padding_shortcut(seed, opset, step, pad, form):
    g = _check(_option_a_shortcut_block(seed, opset, step, 0, pad, form), Options())
    assert any(isinstance(op, ir.Add) for op in g.ops())
    assert any(isinstance(op, ir.MaxPool) and op.kernel == (1, 1) for op in g.ops())


def test_channel_padding_with_an_axes_input():
    """The opset-18 form of the zero-channel Pad: pads of the channel axis only, with `axes`."""
    model = _option_a_shortcut_block(5, 18, pad=(1, 3))
    for t in model.graph.initializer:
        if t.name == "pads":
            t.CopyFrom(numpy_helper.from_array(np.array([1, 3], np.int64), "pads"))
    model.graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "pad_axes"))
    for n in model.graph.node:
        if n.op_type == "Pad":
            n.input.append("pad_axes")
    _check(model, Options())


def test_strided_slice_from_another_start_is_a_gather():
    """x[:, :, 1::2, 1::2]: an ir.Gather of the kept rows and columns (no MaxPool), bit-exact in C."""
    g = _check(_option_a_shortcut_block(0, 13, start=1), Options(verify_ir=True))
    assert any(isinstance(op, ir.Gather) for op in g.ops()) and not any(isinstance(op, ir.MaxPool) for op in g.ops())


@pytest.mark.parametrize("where_", ["bits", "stream"])
def test_channel_slices(where_):
    """Slices of an activation's channels (a U-Net's cropped skip b[:, :4], every other channel
    b[:, 1::2], the channels reversed b[:, ::-1]) concatenated: ir.Gather ops, of the sign's bits
    or of the real-valued stream before it; bit-exact in C and on a Cortex-M0."""
    rng = np.random.default_rng(25)
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w": rng.choice([-1.0, 1.0], size=(8, 3, 3, 3)).astype(np.float32),
             "g": rng.uniform(0.05, 0.3, (1, 8, 1, 1)).astype(np.float32),
             "b": rng.uniform(-1, 1, (1, 8, 1, 1)).astype(np.float32),
             "w2": rng.choice([-1.0, 1.0], size=(5, 16, 3, 3)).astype(np.float32),
             "fc": rng.normal(size=(5, 4)).astype(np.float32), "shape": np.array([1, -1], np.int64),
             "s0": np.array([0], np.int64), "e4": np.array([4], np.int64), "ax1": np.array([1], np.int64),
             "s1": np.array([1], np.int64), "big": np.array([INT_MAX], np.int64), "k2": np.array([2], np.int64),
             "m1": np.array([-1], np.int64), "neg": np.array([-INT_MAX], np.int64)}
    src = "a2" if where_ == "stream" else "sb"
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Sign", ["xd"], ["xb"]),
             helper.make_node("Conv", ["xb", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["a", "g"], ["a1"]), helper.make_node("Add", ["a1", "b"], ["a2"]),
             helper.make_node("Sign", ["a2"], ["sb"]),
             helper.make_node("Slice", [src, "s0", "e4", "ax1"], ["c1"]),
             helper.make_node("Slice", [src, "s1", "big", "ax1", "k2"], ["c2"]),
             helper.make_node("Slice", [src, "m1", "neg", "ax1", "m1"], ["c3"]),
             helper.make_node("Concat", ["c1", "c2", "c3"], ["cat"], axis=1)]
    if where_ == "stream":
        nodes.append(helper.make_node("Sign", ["cat"], ["cb"]))
    else:
        nodes.append(helper.make_node("Identity", ["cat"], ["cb"]))
    nodes += [helper.make_node("Conv", ["cb", "w2"], ["c2c"], pads=[1, 1, 1, 1]),
              helper.make_node("GlobalAveragePool", ["c2c"], ["q"]), helper.make_node("Reshape", ["q", "shape"], ["f"]),
              helper.make_node("MatMul", ["f", "fc"], ["y"])]
    model = _model(nodes, inits, (1, 3, 5, 5), (1, 4))
    graph = _check(model, Options(verify_ir=True), exact=where_ == "bits")
    gathers = [op for op in graph.ops() if isinstance(op, ir.Gather)]
    assert sorted(op.channels for op in gathers) == sorted([(0, 1, 2, 3), (1, 3, 5, 7), tuple(range(7, -1, -1))])
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 3, 1))
    y, _ = targets.run(graph, "cortex-m0", inputs.grid, targets.TargetOptions())
    assert np.array_equal(y, driver.run_target(graph, "ref", inputs))


@pytest.mark.parametrize("lo,hi", [(-1.0, 1.0), (-2.5, 0.75)])
def test_hardtanh_before_sign(lo, hi):
    """XNOR-Net code's Hardtanh (Clip) between BatchNorm and the sign: it keeps every sign."""
    rng = np.random.default_rng(7)
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w": rng.choice([-1.0, 1.0], size=(6, 4, 3, 3)).astype(np.float32),
             "t": (rng.integers(-3, 4, size=(1, 6, 1, 1)) + 0.5).astype(np.float32),
             "lo": np.array(lo, np.float32), "hi": np.array(hi, np.float32),
             "wf": rng.choice([-1.0, 1.0], size=(10, 6 * 6 * 6)).astype(np.float32),
             "shape": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Clip", ["xd", "lo", "hi"], ["xc"]),
             helper.make_node("Sign", ["xc"], ["b"]),
             helper.make_node("Conv", ["b", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Sub", ["a", "t"], ["a2"]),
             helper.make_node("Clip", ["a2", "lo", "hi"], ["c2"]),
             helper.make_node("Sign", ["c2"], ["s2"]),
             helper.make_node("Reshape", ["s2", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1)]
    _check(_model(nodes, inits, (1, 4, 6, 6)), Options())


def _reactnet_block(seed, slope_scale=1.0, opset=13):
    """A ReActNet basic block as its PyTorch code writes it: RSign (x + b, sign), a binary 3x3
    convolution, BatchNorm, the residual Add, then RPReLU: (x - gamma), PRelu, (+ zeta)."""
    rng = np.random.default_rng(seed)
    c, h = 6, 6
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "b1": (rng.normal(size=(1, c, 1, 1)) / 8).astype(np.float32),
             "w": rng.choice([-1.0, 1.0], size=(c, c, 3, 3)).astype(np.float32),
             "bn_s": (rng.uniform(0.05, 0.2, size=c)).astype(np.float32), "bn_b": rng.normal(size=c).astype(np.float32),
             "bn_m": rng.normal(size=c).astype(np.float32), "bn_v": rng.uniform(0.5, 2, size=c).astype(np.float32),
             "gamma": (rng.normal(size=(1, c, 1, 1)) / 4).astype(np.float32),
             "slope": (np.abs(rng.normal(size=(c, 1, 1))) * 0.25 * slope_scale).astype(np.float32),
             "zeta": (rng.normal(size=(1, c, 1, 1)) / 4).astype(np.float32),
             "b2": (rng.normal(size=(1, c, 1, 1)) / 8).astype(np.float32),
             "w2": rng.choice([-1.0, 1.0], size=(5, c, 1, 1)).astype(np.float32),
             "shape": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Add", ["xd", "b1"], ["xb"]),
             helper.make_node("Sign", ["xb"], ["sb"]),
             helper.make_node("Conv", ["sb", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["a", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"]),
             helper.make_node("Add", ["bn", "xd"], ["res"]),
             helper.make_node("Sub", ["res", "gamma"], ["r1"]),
             helper.make_node("PRelu", ["r1", "slope"], ["r2"]),
             helper.make_node("Add", ["r2", "zeta"], ["r3"]),
             helper.make_node("Add", ["r3", "b2"], ["r4"]),
             helper.make_node("Sign", ["r4"], ["s2"]),
             helper.make_node("Conv", ["s2", "w2"], ["a2"]),
             helper.make_node("GlobalAveragePool", ["a2"], ["q"]),
             helper.make_node("Reshape", ["q", "shape"], ["y"])]
    g = helper.make_graph(nodes, "forms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, h, h])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("seed,slope_scale", [(0, 1.0), (1, 0.0), (2, 4.0), (3, 1.0)])
def test_reactnet_rprelu(seed, slope_scale):
    g = _check(_reactnet_block(seed, slope_scale), Options())
    rq = [op.epilogue for op in g.ops() if isinstance(op, ir.Activation) and isinstance(op.epilogue, ir.Requantize)]
    assert any(ep.hi == 0 for ep in rq) and any(ep.lo == 0 for ep in rq)  # the two parts of PRelu


@pytest.mark.parametrize("seed", [0, 1])
def test_prelu_with_negative_slopes(seed):
    model = _reactnet_block(seed)
    rng = np.random.default_rng(seed)
    for t in model.graph.initializer:
        if t.name == "slope":
            t.CopyFrom(numpy_helper.from_array(rng.normal(size=(6, 1, 1)).astype(np.float32), "slope"))
    _check(model, Options())


def test_leaky_relu_and_sub_of_two_streams():
    model = _reactnet_block(4)
    for n in model.graph.node:
        if n.op_type == "PRelu":
            n.CopyFrom(helper.make_node("LeakyRelu", ["r1"], ["r2"], alpha=0.1))
        elif n.op_type == "Add" and list(n.input) == ["bn", "xd"]:
            n.CopyFrom(helper.make_node("Sub", ["bn", "xd"], ["res"]))
    g = _check(model, Options())
    assert sum(isinstance(op, ir.Add) for op in g.ops()) == 2


@pytest.mark.parametrize("lo,hi,opset,relu_first", [(0.0, 6.0, 13, False), (-1.0, 1.0, 13, False),
                                                     (-0.5, 2.0, 10, False), (0.0, 0.3, 13, False),
                                                     (-0.5, 0.75, 13, True)])
def test_clip_of_a_real_valued_stream(lo, hi, opset, relu_first):
    """ReLU6 / Hardtanh on a residual stream: the stream clamped to the bounds on its grid."""
    rng = np.random.default_rng(8)
    c = 4
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w": rng.choice([-1.0, 1.0], size=(c, c, 3, 3)).astype(np.float32),
             "g": np.array(0.3, np.float32), "w2": rng.normal(size=(5, c, 1, 1)).astype(np.float32),
             "shape": np.array([1, -1], np.int64), "lo": np.array(lo, np.float32), "hi": np.array(hi, np.float32)}
    src = "res"
    pre = []
    if relu_first:  # a Relu with arithmetic after it: two requantizations, the clamp on the last
        inits["off"] = np.array(-0.25, np.float32)
        pre = [helper.make_node("Relu", ["res"], ["rl"]), helper.make_node("Add", ["rl", "off"], ["ro"])]
        src = "ro"
    clip = (helper.make_node("Clip", [src, "lo", "hi"], ["r"]) if opset >= 11 else
            helper.make_node("Clip", [src], ["r"], min=lo, max=hi))
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Sign", ["xd"], ["b"]),
             helper.make_node("Conv", ["b", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["a", "g"], ["m"]),
             helper.make_node("Add", ["m", "xd"], ["res"]), *pre, clip,
             helper.make_node("Conv", ["r", "w2"], ["a2"]),
             helper.make_node("GlobalAveragePool", ["a2"], ["q"]),
             helper.make_node("Reshape", ["q", "shape"], ["y"])]
    model = _model(nodes, inits, (1, c, 6, 6), (1, 5))
    model.opset_import[0].version = opset  # before 11, Clip's bounds are attributes
    g = _check(model, Options())
    clamped = [op.epilogue for op in g.ops() if isinstance(op, ir.Activation) and isinstance(op.epilogue, ir.Requantize)
               and abs(op.epilogue.hi * op.epilogue.out_scale - hi) <= op.epilogue.out_scale]
    assert clamped and abs(clamped[0].lo * clamped[0].out_scale - lo) <= clamped[0].out_scale


@pytest.mark.parametrize("build", [lambda: _option_a_shortcut_block(1, 11, 2, 0, (1, 3), "per_axis"),
                                   lambda: _reactnet_block(0)], ids=["option_a_shortcut", "reactnet_rprelu"])
def test_residual_forms_on_a_microcontroller(build):
    graph = compile_graph(build(), Options())
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 3, 1))
    ref = driver.run_target(graph, "ref", inputs)
    y, _ = targets.run(graph, "cortex-m4", inputs.grid, targets.TargetOptions())
    assert np.array_equal(y.reshape(ref.shape), ref)


@pytest.mark.parametrize("seed", range(3))
def test_residual_add_of_a_batchnormed_pooled_stream(seed):
    """larq's BinaryResNetE: the float stem's Relu -> MaxPool -> BatchNorm is both the sign's input
    and the shortcut of the residual Add (a stream with pending ops: its own requantization)."""
    rng = np.random.default_rng(seed)
    c = 4
    inits = {"w0": rng.normal(size=(c, 3, 3, 3)).astype(np.float32),
             "gm": rng.uniform(0.5, 1.5, c).astype(np.float32), "bt": rng.normal(0, 0.3, c).astype(np.float32),
             "mu": rng.normal(0, 0.5, c).astype(np.float32), "var": rng.uniform(0.5, 2.0, c).astype(np.float32),
             "w": rng.choice([-1.0, 1.0], size=(c, c, 3, 3)).astype(np.float32),
             "wf": rng.normal(size=(10, c)).astype(np.float32), "shape": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a0"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a0"], ["r0"]),
             helper.make_node("MaxPool", ["r0"], ["p0"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("BatchNormalization", ["p0", "gm", "bt", "mu", "var"], ["bn"]),
             helper.make_node("Sign", ["bn"], ["s"]),
             helper.make_node("Conv", ["s", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["a", "bn"], ["res"]),
             helper.make_node("GlobalAveragePool", ["res"], ["g"]),
             helper.make_node("Reshape", ["g", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1)]
    graph = _check(_model(nodes, inits, (1, 3, 8, 8)), Options(input_range=(0, 255), input_affine=IMAGENET),
                   exact=False)
    assert any(isinstance(op, ir.Add) for op in graph.ops())


def test_learnable_bias_expanded_to_a_runtime_shape():
    """ReActNet's LearnableBias as torch's legacy exporter writes `bias.expand_as(x)`: Expand of the
    constant bias to Shape(x) of a dynamic tensor, added before the sign and the PReLU."""
    rng = np.random.default_rng(8)
    c = 4
    inits = {"w0": rng.normal(size=(c, 3, 3, 3)).astype(np.float32),
             "bias": (rng.normal(size=(1, c, 1, 1)) * 0.1).astype(np.float32),
             "w": rng.choice([-1.0, 1.0], size=(c, c, 3, 3)).astype(np.float32),
             "slope": (rng.uniform(0, 0.5, size=(c, 1, 1))).astype(np.float32),
             "wf": rng.normal(size=(10, c)).astype(np.float32), "shape": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a0"], pads=[1, 1, 1, 1]),
             helper.make_node("Shape", ["a0"], ["sh"]),
             helper.make_node("Expand", ["bias", "sh"], ["be"]),
             helper.make_node("Add", ["a0", "be"], ["m"]),
             helper.make_node("Sign", ["m"], ["s"]),
             helper.make_node("Conv", ["s", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("PRelu", ["a", "slope"], ["p"]),
             helper.make_node("GlobalAveragePool", ["p"], ["g"]),
             helper.make_node("Reshape", ["g", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1)]
    _check(_model(nodes, inits, (1, 3, 8, 8)), Options(input_range=(0, 255), input_affine=IMAGENET), exact=False)


def _opset_model(nodes, inits, in_shape, out_shape, opset):
    g = helper.make_graph(nodes, "forms", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _keras_grouped_conv(seed, parts=4, real=False, split_form="none", bias=False, sizes=None, order=None):
    """Keras' Conv2D(groups=parts) as tf2onnx writes it (larq's MeliusNet stem): NHWC Split of the
    channels, a Transpose + Conv per part (written last part first), Concat of the parts' outputs
    on the channels. real: Relu stream and real-valued weights (on a 2^-3 grid, held exactly), else
    binary activations and +-1 weights."""
    rng = np.random.default_rng(seed)
    c, o, h = 8, 4 * parts, 6
    sizes = sizes or [c // parts] * parts
    order = order or list(range(parts))
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "t": (rng.integers(-3, 4, size=(1, c, 1, 1)) / 16 + 1 / 32).astype(np.float32),
             "t2": (rng.integers(-3, 4, size=(1, o, 1, 1)) + 0.5).astype(np.float32),
             "w2": rng.choice([-1.0, 1.0], size=(5, o, 1, 1)).astype(np.float32),
             "shape": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Sub", ["xd", "t"], ["xs"]),
             helper.make_node("Relu" if real else "Sign", ["xs"], ["act"]),
             helper.make_node("Transpose", ["act"], ["nhwc"], perm=[0, 2, 3, 1])]
    split_inputs, split_attrs, opset = ["nhwc"], {}, 13
    if split_form == "input":
        inits["split_sizes"] = np.array(sizes, np.int64)
        split_inputs.append("split_sizes")
    elif split_form == "attribute":
        split_attrs, opset = {"split": sizes}, 11
    nodes.append(helper.make_node("Split", split_inputs, [f"part{i}" for i in range(parts)], name="split", axis=-1,
                                  **split_attrs))
    for i in reversed(range(parts)):
        inits[f"gw{i}"] = (rng.integers(-8, 9, size=(o // parts, sizes[i], 3, 3)) / 8 if real else
                          rng.choice([-1.0, 1.0], size=(o // parts, sizes[i], 3, 3))).astype(np.float32)
        conv_inputs = [f"nchw{i}", f"gw{i}"]
        if bias:
            inits[f"gb{i}"] = (rng.integers(-8, 9, size=o // parts) / 8).astype(np.float32)
            conv_inputs.append(f"gb{i}")
        nodes.append(helper.make_node("Transpose", [f"part{i}"], [f"nchw{i}"], perm=[0, 3, 1, 2]))
        nodes.append(helper.make_node("Conv", conv_inputs, [f"conv{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                      strides=[1, 1], dilations=[1, 1], group=1))
    nodes += [helper.make_node("Concat", [f"conv{i}" for i in order], ["cat"], axis=1),
              helper.make_node("Sub", ["cat", "t2"], ["cs"]),
              helper.make_node("Sign", ["cs"], ["b2"]),
              helper.make_node("Conv", ["b2", "w2"], ["a2"]),
              helper.make_node("GlobalAveragePool", ["a2"], ["q"]),
              helper.make_node("Reshape", ["q", "shape"], ["y"])]
    return _opset_model(nodes, inits, (1, c, h, h), (1, 5), opset)


@pytest.mark.parametrize("seed,parts,real,split_form,bias", [
    (0, 4, False, "none", False), (1, 2, True, "input", True), (2, 8, True, "none", False),
    (3, 4, False, "attribute", False), (4, 4, True, "attribute", True)])
def test_keras_grouped_convolution_becomes_one_grouped_conv(seed, parts, real, split_form, bias):
    from bnnc.canonical import canonicalize

    model = _keras_grouped_conv(seed, parts, real, split_form, bias)
    canonical = canonicalize(model)
    ops = [n.op_type for n in canonical.graph.node]
    assert "Split" not in ops and "Transpose" not in ops and ops.count("Conv") == 2
    grouped = next(n for n in canonical.graph.node if n.op_type == "Conv")
    assert helper.get_attribute_value(next(a for a in grouped.attribute if a.name == "group")) == parts
    _check(model, Options())


@pytest.mark.parametrize("case", ["unequal_parts", "concat_out_of_order"])
def test_other_splits_of_activations_are_gathers(case):
    """A Split of the channels that is no grouped convolution: one ir.Gather per part, bit-exact
    in C."""
    model = {"unequal_parts": lambda: _keras_grouped_conv(0, 2, split_form="input", sizes=[2, 6]),
             "concat_out_of_order": lambda: _keras_grouped_conv(0, 4, order=[1, 0, 2, 3])}[case]()
    g = _check(model, Options(verify_ir=True), exact=False)
    assert sum(isinstance(op, ir.Gather) for op in g.ops()) >= 2


def _melius_improvement_block(seed, pads=(4, 0), padded_first=False):
    """larq MeliusNet's dense + improvement blocks as tf2onnx writes them after its stem (real-valued
    convolution, Relu, max pool: h):
    cat = Concat(h, binconv(h)),
    then cat + Pad(binconv(cat)) with zero channels before (the improvement lands on the last
    channels); `pads` other than (4, 0) put it across both parts of the Concat."""
    rng = np.random.default_rng(seed)
    c, h = 4, 6
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "t": (rng.integers(-3, 4, size=(1, c, 1, 1)) / 16 + 1 / 32).astype(np.float32),
             "wr": (rng.integers(-8, 9, size=(c, c, 1, 1)) / 8).astype(np.float32),
             "w1": rng.choice([-1.0, 1.0], size=(c, c, 3, 3)).astype(np.float32),
             "t1": (rng.integers(-3, 4, size=(1, 2 * c, 1, 1)) / 4 + 1 / 32).astype(np.float32),
             "w2": rng.choice([-1.0, 1.0], size=(c, 2 * c, 3, 3)).astype(np.float32),
             "pads": np.array([0, pads[0], 0, 0, 0, pads[1], 0, 0], np.int64),
             "t3": (rng.integers(-3, 4, size=(1, 2 * c, 1, 1)) + 0.5).astype(np.float32),
             "w3": rng.choice([-1.0, 1.0], size=(5, 2 * c, 1, 1)).astype(np.float32),
             "shape": np.array([1, -1], np.int64)}
    add_inputs = ["padded", "cat"] if padded_first else ["cat", "padded"]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Conv", ["xd", "wr"], ["r"]),
             helper.make_node("Relu", ["r"], ["rr"]),
             helper.make_node("MaxPool", ["rr"], ["h"], kernel_shape=[2, 2], strides=[1, 1], pads=[0, 0, 1, 1]),
             helper.make_node("Sub", ["h", "t"], ["hs"]),
             helper.make_node("Sign", ["hs"], ["b1"]),
             helper.make_node("Conv", ["b1", "w1"], ["d"], pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["h", "d"], ["cat"], axis=1),
             helper.make_node("Sub", ["cat", "t1"], ["cs"]),
             helper.make_node("Sign", ["cs"], ["b2"]),
             helper.make_node("Conv", ["b2", "w2"], ["i"], pads=[1, 1, 1, 1]),
             helper.make_node("Pad", ["i", "pads"], ["padded"], mode="constant"),
             helper.make_node("Add", add_inputs, ["sum"]),
             helper.make_node("Sub", ["sum", "t3"], ["ss"]),
             helper.make_node("Sign", ["ss"], ["b3"]),
             helper.make_node("Conv", ["b3", "w3"], ["a3"]),
             helper.make_node("GlobalAveragePool", ["a3"], ["q"]),
             helper.make_node("Reshape", ["q", "shape"], ["y"])]
    return _opset_model(nodes, inits, (1, c, h, h), (1, 5), 13)


@pytest.mark.parametrize("seed,pads,padded_first", [(0, (4, 0), False), (1, (4, 0), True), (2, (2, 2), False)])
def test_melius_improvement_add_into_a_concat_part(seed, pads, padded_first):
    from bnnc.canonical import canonicalize

    model = _melius_improvement_block(seed, pads, padded_first)
    ops = [n.op_type for n in canonicalize(model).graph.node]
    assert ("Pad" in ops) == (pads != (4, 0))  # only the aligned form becomes Concat(h, d + i)
    _check(model, Options())


def _dilated_conv(seed, d, real=False, stride=1):
    """Keras' Conv2D(dilation_rate=d) as tf2onnx writes it (larq's BinaryDenseNet37Dilated): a Conv
    with `dilations`, padded by d on each side."""
    rng = np.random.default_rng(seed)
    c, o, h = 4, 6, 9
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "t": (rng.integers(-3, 4, size=(1, c, 1, 1)) / 16 + 1 / 32).astype(np.float32),
             "w": (rng.integers(-8, 9, size=(o, c, 3, 3)) / 8 if real else
                   rng.choice([-1.0, 1.0], size=(o, c, 3, 3))).astype(np.float32),
             "t2": (rng.integers(-3, 4, size=(1, o, 1, 1)) + 0.5).astype(np.float32),
             "w2": rng.choice([-1.0, 1.0], size=(5, o, 1, 1)).astype(np.float32),
             "shape": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Sub", ["xd", "t"], ["xs"]),
             helper.make_node("Relu" if real else "Sign", ["xs"], ["act"]),
             helper.make_node("Conv", ["act", "w"], ["a"], kernel_shape=[3, 3], pads=[d, d, d, d],
                              strides=[stride, stride], dilations=[d, d]),
             helper.make_node("Sub", ["a", "t2"], ["as"]),
             helper.make_node("Sign", ["as"], ["b2"]),
             helper.make_node("Conv", ["b2", "w2"], ["a2"]),
             helper.make_node("GlobalAveragePool", ["a2"], ["q"]),
             helper.make_node("Reshape", ["q", "shape"], ["y"])]
    return _opset_model(nodes, inits, (1, c, h, h), (1, 5), 13)


@pytest.mark.parametrize("seed,d,real,stride", [(0, 2, False, 1), (1, 4, False, 1), (2, 2, True, 2), (3, 3, False, 2)])
def test_dilated_convolution(seed, d, real, stride):
    from bnnc.canonical import canonicalize

    model = _dilated_conv(seed, d, real, stride)
    conv = next(n for n in canonicalize(model).graph.node if n.op_type == "Conv")
    a = {x.name: helper.get_attribute_value(x) for x in conv.attribute}
    assert list(a["kernel_shape"]) == [2 * d + 1] * 2 and "dilations" not in a
    _check(model, Options())


@pytest.mark.parametrize("dilation", [2**40, 1000])
def test_an_absurd_dilation_is_refused_in_one_line(tmp_path, capsys, dilation):
    """A dilation no image could hold is not written out as a dense kernel (it would not fit in
    memory): the model is refused in one line naming the node."""
    from bnnc import cli
    import onnx

    model = _dilated_conv(0, 2, False, 1)
    for n in model.graph.node:
        if n.op_type == "Conv" and any(a.name == "dilations" for a in n.attribute):
            del n.attribute[:]
            n.attribute.extend([helper.make_attribute("dilations", [dilation, dilation])])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    rc = cli.main(["compile", str(path), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("bnnc: error: node '") and err.count("\n") == 1 and "(Conv)" in err


def _integer_input_model(seed, dtype, form, join):
    """An integer-typed model input (a camera's uint8 pixels, an int8 sensor) that the graph turns
    into float32 by Cast or DequantizeLinear (per tensor or per channel), read by a real-valued
    conv and, directly, by a Concat or a residual Add (`join`), then a binary layer and a float head."""
    rng = np.random.default_rng(seed)
    c, o, hw = 3, 4, 6
    elem = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8}[dtype]
    inits = {"w1": rng.normal(size=(o if join == "concat" else c, c, 3, 3)).astype(np.float32),
             "w2": np.sign(rng.normal(size=(5, o + c if join == "concat" else c, 3, 3))).astype(np.float32) + 0,
             "w3": rng.normal(size=(5 * hw * hw, 10)).astype(np.float32), "off": np.float32(0.3)}
    if form == "cast":
        nodes = [helper.make_node("Cast", ["x"], ["d"], to=TensorProto.FLOAT)]
    else:
        per_channel = form == "dequantize_per_channel"
        inits["s"] = (rng.uniform(0.01, 0.1, c) if per_channel else np.array(1 / 32)).astype(np.float32)
        inits["z"] = np.array(rng.integers(0, 10, c) if per_channel else 3).astype(dtype)
        nodes = [helper.make_node("DequantizeLinear", ["x", "s", "z"], ["d"], axis=1)]
    nodes.append(helper.make_node("Conv", ["d", "w1"], ["c"], pads=[1, 1, 1, 1]))
    nodes.append(helper.make_node("Concat", ["d", "c"], ["j"], axis=1) if join == "concat"
                 else helper.make_node("Add", ["c", "d"], ["j"]))
    nodes += [helper.make_node("Add", ["j", "off"], ["jo"]),  # no exact 0 for the sign (ONNX: Sign(0) = 0)
              helper.make_node("Sign", ["jo"], ["s1"]),
              helper.make_node("Conv", ["s1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
              helper.make_node("Sign", ["c2"], ["s2"]),
              helper.make_node("Flatten", ["s2"], ["f"]),
              helper.make_node("MatMul", ["f", "w3"], ["y"])]
    g = helper.make_graph(nodes, "forms", [helper.make_tensor_value_info("x", elem, [1, c, hw, hw])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("dtype", ["uint8", "int8"])
@pytest.mark.parametrize("form", ["cast", "dequantize", "dequantize_per_channel"])
@pytest.mark.parametrize("join", ["concat", "add"])
def test_integer_model_input_cast_or_dequantized(dtype, form, join):
    """The compiled code takes the integers the ONNX input type declares; Cast / DequantizeLinear
    of them are float32 ops on the input, and a Concat or Add reads the input as a stream."""
    graph = _check(_integer_input_model(0, dtype, form, join), Options())
    assert graph.input_info["dtype"] == dtype
    assert graph.input_info["grid"]["range"] == ((0, 255) if dtype == "uint8" else (-128, 127))


def test_integer_model_input_on_a_microcontroller():
    graph = compile_graph(_integer_input_model(1, "uint8", "dequantize", "concat"), Options())
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 3, 1))
    ref = driver.run_target(graph, "ref", inputs)
    y, _ = targets.run(graph, "cortex-m4", inputs.grid, targets.TargetOptions())
    assert np.array_equal(y.reshape(ref.shape), ref)


@pytest.mark.parametrize("case", ["cast_to_int", "cast_wide_input"])
def test_inexact_casts_are_refused(case):
    from bnnc.errors import BnncError

    to, elem = (TensorProto.INT32, TensorProto.FLOAT) if case == "cast_to_int" else (TensorProto.FLOAT, TensorProto.INT32)
    w = np.ones((2, 1, 1, 1), np.float32)
    nodes = [helper.make_node("Cast", ["x"], ["d"], to=to), helper.make_node("Conv", ["d", "w"], ["y"])]
    g = helper.make_graph(nodes, "forms", [helper.make_tensor_value_info("x", elem, [1, 1, 2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])],
                          [numpy_helper.from_array(w, "w")])
    with pytest.raises(BnncError, match="node 'Cast_0' .Cast.: Cast to "):
        compile_graph(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), Options())


def _keras_flatten_dense(seed, form):
    """Keras's Flatten -> Dense after NHWC feature maps, as tf2onnx / qonnx write it: Transpose to
    NHWC, Reshape to (N, H*W*C), then (`form`) larq's sign of the dense input with binary weights,
    a real-valued MatMul, a Gemm (transB) with a bias, or weights
    that a QONNX Quant / a DequantizeLinear produce from constants."""
    rng = np.random.default_rng(seed)
    c, h, w, k = 6, 3, 4, 10
    d = c * h * w
    inits = {"w1": rng.normal(size=(c, 3, 3, 3)).astype(np.float32),
             "g": rng.uniform(0.5, 2, c).astype(np.float32), "b": rng.normal(size=c).astype(np.float32),
             "m": rng.normal(size=c).astype(np.float32), "v": rng.uniform(0.5, 2, c).astype(np.float32),
             "shape": np.array([-1, d], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("BatchNormalization", ["p", "g", "b", "m", "v"], ["bn"]),
             helper.make_node("Transpose", ["bn"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["t", "shape"], ["f"])]
    if form == "sign_binary":
        inits["wd"] = np.where(rng.random((d, k)) < 0.5, -1, 1).astype(np.float32)
        nodes += [helper.make_node("Sign", ["f"], ["s"]), helper.make_node("MatMul", ["s", "wd"], ["y"])]
    elif form == "real":
        inits["wd"] = rng.normal(size=(d, k)).astype(np.float32)
        nodes.append(helper.make_node("MatMul", ["f", "wd"], ["y"]))
    elif form == "gemm":
        inits.update(wd=rng.normal(size=(k, d)).astype(np.float32), bias=rng.normal(size=k).astype(np.float32))
        nodes.append(helper.make_node("Gemm", ["f", "wd", "bias"], ["y"], transB=1))
    elif form == "quant_weights":
        inits.update(wq=rng.integers(-7, 8, (d, k)).astype(np.float32), ws=np.float32(0.125), wz=np.float32(0),
                     wb=np.float32(4))
        nodes += [helper.make_node("Quant", ["wq", "ws", "wz", "wb"], ["wd"], domain="qonnx.custom_op.general",
                                   signed=1, narrow=0, rounding_mode="ROUND"),
                  helper.make_node("MatMul", ["f", "wd"], ["y"])]
    elif form == "larq_conv1x1":  # Reshape((1, 1, -1)), the sign, a 1 x 1 QuantConv2D as the dense layer
        inits.update(wd=np.where(rng.random((k, d, 1, 1)) < 0.5, -1, 1).astype(np.float32),
                     shape=np.array([1, 1, 1, -1], np.int64), nchw=np.array([-1, d, 1, 1], np.int64),
                     out=np.array([-1, k], np.int64))
        nodes += [helper.make_node("Sign", ["f"], ["s"]), helper.make_node("Reshape", ["s", "nchw"], ["s4"]),
                  helper.make_node("Conv", ["s4", "wd"], ["c4"]), helper.make_node("Reshape", ["c4", "out"], ["y"])]
    else:  # dequantized int8 weights, one scale per output column
        inits.update(wq=rng.integers(-100, 100, (d, k)).astype(np.int8), ws=rng.uniform(0.01, 0.1, k).astype(np.float32),
                     wz=np.zeros(k, np.int8))
        nodes += [helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=1),
                  helper.make_node("MatMul", ["f", "wd"], ["y"])]
    model = _model(nodes, inits, (1, 3, 2 * h, 2 * w), (1, k))
    if form == "quant_weights":
        model.opset_import.append(helper.make_opsetid("qonnx.custom_op.general", 1))
    return model


@pytest.mark.parametrize("form", ["sign_binary", "real", "gemm", "quant_weights", "dequantize_weights",
                                  "larq_conv1x1"])
def test_keras_flatten_before_a_dense_layer(form):
    """The NHWC flatten's Transpose goes into the dense weights' rows (canonical/nhwc_flatten)."""
    model = _keras_flatten_dense(3, form)
    graph = compile_graph(model, Options(input_range=(0, 255), input_affine=IMAGENET))
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 30, 0))
    ref = driver.run_target(graph, "ref", inputs)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    bound = float(np.max(error_bounds.end_to_end(graph).tensors[graph.output]))
    assert np.all(np.abs(ref - orig) <= bound + 1e-5 * np.abs(orig).max())  # stated bound + float32's rounding
    y, _ = targets.run(graph, "c", inputs.grid, targets.TargetOptions())
    assert np.array_equal(y, ref)


def _float_cnn_for_ort(seed, head):
    """A float CNN as a user hands it to onnxruntime's quantizer: Conv + Relu, MaxPool, a residual
    Add, two 1 x 1 branches joined by a Concat, global average pool, then Gemm or MatMul + Add."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return (rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    inits = {"w1": w(8, 3, 3, 3), "b1": w(8) / 4, "w2": w(8, 8, 3, 3), "b2": w(8) / 4, "wa": w(4, 8, 1, 1),
             "wb": w(4, 8, 1, 1), "wf": w(10, 8), "bf": w(10) / 4, "shape": np.array([1, 8], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("Add", ["r2", "p1"], ["s"]),
             helper.make_node("Conv", ["s", "wa"], ["ba"]),
             helper.make_node("Conv", ["s", "wb"], ["bb"]),
             helper.make_node("Concat", ["ba", "bb"], ["cat"], axis=1),
             helper.make_node("GlobalAveragePool", ["cat"], ["g"]),
             helper.make_node("Reshape", ["g", "shape"], ["f"])]
    if head == "gemm":
        nodes.append(helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], transB=1))
    else:
        inits["wf"] = inits["wf"].T.copy()
        nodes += [helper.make_node("MatMul", ["f", "wf"], ["m"]), helper.make_node("Add", ["m", "bf"], ["y"])]
    return _model(nodes, inits, (1, 3, 12, 12))


@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("activations", ["uint8", "int8"])
@pytest.mark.parametrize("head", ["gemm", "matmul"])
def test_onnxruntime_qoperator_quantization(tmp_path, per_channel, activations, head):
    """onnxruntime.quantization.quantize_static in its QOperator format (QLinearConv, QLinearAdd,
    QLinearConcat, QLinearGlobalAveragePool, QGemm / QLinearMatMul, integer MaxPool and Reshape)
    compiles through canonical.qoperator: the reference equals onnxruntime running the quantized
    model, and C equals the reference."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    import onnx

    float_path, q_path = tmp_path / "float.onnx", tmp_path / "q.onnx"
    onnx.save(_float_cnn_for_ort(3, head), str(float_path))
    rng = np.random.default_rng(0)

    class Samples(quantization.CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": rng.random((1, 3, 12, 12), dtype=np.float32)} for _ in range(8)])

        def get_next(self):
            return next(self.it, None)

    a_type = quantization.QuantType.QUInt8 if activations == "uint8" else quantization.QuantType.QInt8
    quantization.quantize_static(str(float_path), str(q_path), Samples(), quant_format=quantization.QuantFormat.QOperator,
                                 per_channel=per_channel, activation_type=a_type,
                                 weight_type=quantization.QuantType.QInt8)
    model = onnx.load(str(q_path))
    kinds = {n.op_type for n in model.graph.node}
    assert {"QLinearConv", "QLinearAdd", "QLinearConcat", "QLinearGlobalAveragePool"} <= kinds
    assert ("QGemm" if head == "gemm" else "QLinearMatMul") in kinds
    _check(model, Options(input_scale=1 / 255, input_range=(0, 255)), n=50)


def test_a_malformed_qoperator_node_is_refused_in_one_line(tmp_path, capsys):
    """A QLinearConv without its output scale: one line naming the node, exit 2."""
    import onnx

    from bnnc.cli import main

    inits = {"s": np.array(0.02, np.float32), "z": np.array(0, np.uint8), "w": np.ones((4, 3, 3, 3), np.int8),
             "ws": np.array(0.01, np.float32), "wz": np.array(0, np.int8)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("QLinearConv", ["xq", "s", "z", "w", "ws", "wz"], ["yq"], name="conv_q"),
             helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["y"])]
    path = tmp_path / "m.onnx"
    onnx.save(_model(nodes, inits, (1, 3, 8, 8), (1, 4, 6, 6)), str(path))
    assert main(["compile", str(path), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bnnc: error: node 'conv_q' (QLinearConv)"), err


@pytest.mark.parametrize("form", ["ReduceMax", "GlobalMaxPool"])
@pytest.mark.parametrize("where", ["bits", "stream"])
def test_global_max_pool(form, where):
    """A global max pool as the dynamo exporter writes AdaptiveMaxPool2d(1) (ReduceMax over the
    spatial axes, keepdims) and as GlobalMaxPool: of a layer's output before its sign, or of a
    real-valued layer's output (a fixed-point stream) before a float head; bit-exact in C."""
    rng = np.random.default_rng(3)
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w": rng.choice([-1.0, 1.0], size=(6, 4, 3, 3)).astype(np.float32),
             "g": rng.uniform(0.5, 1.5, (1, 6, 1, 1)).astype(np.float32),
             "b": rng.uniform(-2, 2, (1, 6, 1, 1)).astype(np.float32),
             "fc": rng.standard_normal((6, 5)).astype(np.float32), "ax": np.array([2, 3], np.int64),
             "shape": np.array([1, -1], np.int64)}
    pool = helper.make_node("ReduceMax", ["a2", "ax"], ["p"], keepdims=1) if form == "ReduceMax" else \
        helper.make_node("GlobalMaxPool", ["a2"], ["p"])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Sign", ["xd"], ["xb"]),
             helper.make_node("Conv", ["xb", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["a", "g"], ["a1"]),
             helper.make_node("Add", ["a1", "b"], ["a2"]), pool]
    if where == "bits":
        nodes += [helper.make_node("Sign", ["p"], ["ps"]), helper.make_node("Reshape", ["ps", "shape"], ["f"])]
    else:
        nodes += [helper.make_node("Reshape", ["p", "shape"], ["f"])]
    nodes.append(helper.make_node("MatMul", ["f", "fc"], ["y"]))
    model = _model(nodes, inits, (1, 4, 6, 6), (1, 5))
    model.opset_import[0].version = 18
    _check(model, Options())


@pytest.mark.parametrize("form", ["detach", "where", "x_minus_x"])
def test_pytorch_straight_through_signs(form):
    """The STE signs of PyTorch code between binary convolutions: x + (sign(x) - x).detach(),
    the same with torch.where(x >= 0, 1., -1.), and x - x.detach() + sign(x).detach(); bit-exact
    in C, and bnnc report states the straight-through bound the layer's values stay within."""
    rng = np.random.default_rng(9)
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w1": rng.choice([-1.0, 1.0], size=(8, 4, 3, 3)).astype(np.float32),
             "w2": rng.choice([-1.0, 1.0], size=(6, 8, 3, 3)).astype(np.float32),
             "g": rng.uniform(0.5, 1.5, (1, 8, 1, 1)).astype(np.float32),
             "b": rng.uniform(-3, 3, (1, 8, 1, 1)).astype(np.float32),
             "zero": np.float32(0), "one": np.float32(1), "minus": np.float32(-1),
             "shape": np.array([1, -1], np.int64)}
    sign = [helper.make_node("Sign", ["a2"], ["sg"])] if form != "where" else \
        [helper.make_node("GreaterOrEqual", ["a2", "zero"], ["ge"]), helper.make_node("Where", ["ge", "one", "minus"], ["sg"])]
    ste = [helper.make_node("Sub", ["sg", "a2"], ["d"]), helper.make_node("Add", ["a2", "d"], ["st"])] \
        if form != "x_minus_x" else [helper.make_node("Sub", ["a2", "a2"], ["d"]), helper.make_node("Add", ["d", "sg"], ["st"])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Sign", ["xd"], ["xb"]),
             helper.make_node("Conv", ["xb", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["a", "g"], ["a1"]),
             helper.make_node("Add", ["a1", "b"], ["a2"]), *sign, *ste,
             helper.make_node("Conv", ["st", "w2"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["q"]),
             helper.make_node("Reshape", ["q", "shape"], ["y"])]
    graph = _check(_model(nodes, inits, (1, 4, 6, 6), (1, 6)), Options())
    notes = [n for op in graph.ops() for n in getattr(getattr(op, "epilogue", None), "notes", [])]
    assert any("straight-through" in n and ": exact" in n for n in notes) == (form != "x_minus_x")


def _flattened_batchnorm_model(seed, terminal, shared):
    """Conv -> BatchNorm -> MaxPool -> Flatten -> BatchNorm1d (per-element) -> sign or Quant ->
    dense, as XNOR-Net's AlexNet classifier reads its features; `shared`: the flattened features
    also feed a second (float) head, so the Flatten must copy."""
    rng = np.random.default_rng(seed)
    c, h, w, d = 6, 3, 4, 6 * 3 * 4
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w1": rng.choice([-1.0, 1.0], size=(c, 3, 3, 3)).astype(np.float32),
             "g": rng.uniform(0.5, 1.5, (1, c, 1, 1)).astype(np.float32),
             "b": rng.uniform(-2, 2, (1, c, 1, 1)).astype(np.float32),
             "gamma": rng.uniform(0.5, 1.5, d).astype(np.float32), "beta": rng.uniform(-1, 1, d).astype(np.float32),
             "mean": rng.uniform(-2, 2, d).astype(np.float32), "var": rng.uniform(0.5, 2, d).astype(np.float32),
             "fc": rng.choice([-1.0, 1.0], size=(d, 5)).astype(np.float32),
             "fc2": rng.standard_normal((d, 5)).astype(np.float32),
             "qs": np.float32(0.25), "qz": np.float32(0), "qb": np.float32(3)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Sign", ["xd"], ["xb"]),
             helper.make_node("Conv", ["xb", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["a", "g"], ["a1"]),
             helper.make_node("Add", ["a1", "b"], ["a2"]),
             helper.make_node("MaxPool", ["a2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], axis=1),
             helper.make_node("BatchNormalization", ["f", "gamma", "beta", "mean", "var"], ["fb"])]
    if terminal == "sign":
        nodes.append(helper.make_node("Sign", ["fb"], ["fs"]))
    else:
        nodes.append(helper.make_node("Quant", ["fb", "qs", "qz", "qb"], ["fs"], domain="qonnx.custom_op.general",
                                      signed=1, narrow=0, rounding_mode="ROUND"))
    if shared:
        nodes += [helper.make_node("MatMul", ["fs", "fc"], ["y1"]), helper.make_node("MatMul", ["f", "fc2"], ["y2"]),
                  helper.make_node("Add", ["y1", "y2"], ["y"])]
    else:
        nodes.append(helper.make_node("MatMul", ["fs", "fc"], ["y"]))
    model = _model(nodes, inits, (1, 3, 2 * h, 2 * w), (1, 5))
    if terminal == "quant":
        model.opset_import.append(helper.make_opsetid("qonnx.custom_op.general", 1))
    return model


@pytest.mark.parametrize("terminal", ["sign", "quant"])
@pytest.mark.parametrize("shared", [False, True])
def test_batchnorm_of_flattened_features(terminal, shared):
    """Per-element constants on flattened features: one Flatten op, then an activation whose
    channels are the elements (constants moved to the stored order); bit-exact in C."""
    graph = _check(_flattened_batchnorm_model(3, terminal, shared), Options(verify_ir=True))
    flat = [op for op in graph.ops() if isinstance(op, ir.Flatten)]
    assert len(flat) == 1
    broken = graph.copy()
    t = broken.tensors[flat[0].outputs[0]]
    broken.tensors[flat[0].outputs[0]] = ir.Ints(t.shape, t.lo, t.hi + 1, t.scale)
    with pytest.raises(ir.IRError, match="Flatten keeps the values"):
        ir.verify(broken)
    arena = driver.backend_graph(graph).arena
    aliased = arena["in_place"].get(flat[0].outputs[0]) == flat[0].inputs[0]
    assert aliased != shared  # its vector takes its input's buffer unless the input is read later


def test_batchnorm_of_flattened_features_on_a_microcontroller():
    graph = compile_graph(_flattened_batchnorm_model(4, "sign", False), Options())
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 3, 1))
    ref = driver.run_target(graph, "ref", inputs)
    y, _ = targets.run(graph, "cortex-m0", inputs.grid, targets.TargetOptions())
    assert np.array_equal(y.reshape(ref.shape), ref)


@pytest.mark.parametrize("scale,exact", [(1 / 64, True), (2.0**20, False)])
def test_straight_through_sign_of_the_model_input(scale, exact):
    """x + (where(x >= 0, 1, -1) - x) right at the model input: the report states whether the
    declared input grid stays below 2^24, where the model's form is the sign."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("GreaterOrEqual", ["x", "zero"], ["ge"]),
             helper.make_node("Where", ["ge", "one", "minus"], ["sg"]), helper.make_node("Sub", ["sg", "x"], ["d"]),
             helper.make_node("Add", ["x", "d"], ["st"]),
             helper.make_node("Conv", ["st", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["q"]),
             helper.make_node("Reshape", ["q", "shape"], ["y"])]
    inits = {"w": rng.choice([-1.0, 1.0], size=(4, 3, 3, 3)).astype(np.float32), "shape": np.array([1, -1], np.int64),
             "zero": np.float32(0), "one": np.float32(1), "minus": np.float32(-1)}
    graph = compile_graph(_model(nodes, inits, (1, 3, 5, 5), (1, 4)), Options(input_scale=scale, input_range=(-128, 127)))
    notes = [n for op in graph.ops() if isinstance(op, ir.InputQuantize) for n in op.notes]
    assert any("straight-through" in n and (": exact" in n) == exact for n in notes), notes


@pytest.mark.parametrize("heaviside", [False, True])
def test_global_average_pool_of_a_batchnormed_pooled_stream(heaviside):
    """Conv -> MaxPool -> BatchNorm -> GlobalAveragePool (larq's head after a standalone
    BatchNormalization), then a sign or larq's ste_heaviside, sign(relu(x)) in {0, 1}: its 0 is
    every x <= 0, not a rounded value near 0, though the pooled stream is rounded."""
    rng = np.random.default_rng(8)
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w": rng.choice([-1.0, 1.0], size=(8, 4, 3, 3)).astype(np.float32),
             "g": rng.uniform(-1.5, 1.5, (1, 8, 1, 1)).astype(np.float32) / 3,
             "b": rng.uniform(-2, 2, (1, 8, 1, 1)).astype(np.float32) / 3,
             "fc": rng.choice([-1.0, 1.0], size=(8, 5)).astype(np.float32), "shape": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Sign", ["xd"], ["xb"]),
             helper.make_node("Conv", ["xb", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Mul", ["p", "g"], ["p1"]), helper.make_node("Add", ["p1", "b"], ["p2"]),
             helper.make_node("GlobalAveragePool", ["p2"], ["q"]),
             helper.make_node("Reshape", ["q", "shape"], ["f"])]
    if heaviside:
        nodes += [helper.make_node("Relu", ["f"], ["fr"]), helper.make_node("Sign", ["fr"], ["fs"])]
    else:
        nodes.append(helper.make_node("Sign", ["f"], ["fs"]))
    nodes.append(helper.make_node("MatMul", ["fs", "fc"], ["y"]))
    _check(_model(nodes, inits, (1, 4, 6, 6), (1, 5)), Options())


def test_larq_ternary_activations():
    """larq's ste_tern activation (sign(sign(x + t) + sign(x - t))) between binary convolutions and
    before the dense head of NHWC-flattened features: ternary activations, bit-exact in C."""
    rng = np.random.default_rng(12)
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8), "t": np.float32(0.3),
             "w1": rng.choice([-1.0, 1.0], size=(6, 4, 3, 3)).astype(np.float32),
             "w2": rng.choice([-1.0, 1.0], size=(6, 6, 3, 3)).astype(np.float32),
             "g": rng.uniform(0.05, 0.2, (1, 6, 1, 1)).astype(np.float32),
             "b": rng.uniform(-0.5, 0.5, (1, 6, 1, 1)).astype(np.float32),
             "fc": rng.choice([-1.0, 1.0], size=(6 * 4 * 4, 5)).astype(np.float32),
             "flat": np.array([-1, 6 * 4 * 4], np.int64)}

    def tern(x, y):
        return [helper.make_node("Add", [x, "t"], [x + "a"]), helper.make_node("Sub", [x, "t"], [x + "s"]),
                helper.make_node("Sign", [x + "a"], [x + "sa"]), helper.make_node("Sign", [x + "s"], [x + "ss"]),
                helper.make_node("Add", [x + "sa", x + "ss"], [x + "2"]), helper.make_node("Sign", [x + "2"], [y])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Sign", ["xd"], ["xb"]),
             helper.make_node("Conv", ["xb", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["a", "g"], ["a1"]), helper.make_node("Add", ["a1", "b"], ["a2"]),
             *tern("a2", "at"),
             helper.make_node("Conv", ["at", "w2"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "g"], ["c1"]), helper.make_node("Add", ["c1", "b"], ["c2"]),
             helper.make_node("Transpose", ["c2"], ["cn"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", ["cn", "flat"], ["f"]),
             *tern("f", "ft"),
             helper.make_node("MatMul", ["ft", "fc"], ["y"])]
    _check(_model(nodes, inits, (1, 4, 4, 4), (1, 5)), Options())


def test_dorefa_straight_through_activations():
    """DoReFa's 2-bit activations as PyTorch code writes them, x + (round(clamp(x, 0, 1) * 3) / 3
    - x).detach(), between a real-valued first layer and a binary one: a 2-bit activation (not a
    fixed-point stream of the sum), bit-exact in C, the report stating the straight-through bound."""
    rng = np.random.default_rng(13)
    inits = {"w1": rng.standard_normal((6, 3, 3, 3)).astype(np.float32) * 0.3,
             "w2": rng.choice([-1.0, 1.0], size=(5, 6, 3, 3)).astype(np.float32),
             "lo": np.float32(0), "hi": np.float32(1), "k": np.float32(3), "shape": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Clip", ["a", "lo", "hi"], ["c"]), helper.make_node("Mul", ["c", "k"], ["ck"]),
             helper.make_node("Round", ["ck"], ["r"]), helper.make_node("Div", ["r", "k"], ["q"]),
             helper.make_node("Sub", ["q", "a"], ["d"]), helper.make_node("Add", ["a", "d"], ["ste"]),
             helper.make_node("Conv", ["ste", "w2"], ["b"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["b"], ["g"]),
             helper.make_node("Reshape", ["g", "shape"], ["y"])]
    graph = _check(_model(nodes, inits, (1, 3, 6, 6), (1, 5)), Options(input_scale=1 / 64, input_range=(-128, 127)))
    first = graph.ops()[1]  # the real-valued conv: its epilogue is the quantizer, levels 0..3
    assert (graph.tensors[first.outputs[0]].lo, graph.tensors[first.outputs[0]].hi) == (0, 3)
    assert not any(isinstance(op, ir.Add) for op in graph.ops())
    notes = [n for op in graph.ops() for n in getattr(getattr(op, "epilogue", None), "notes", [])]
    assert any("straight-through" in n and ": exact" in n for n in notes)


def test_exact_ties_of_an_average_pool_before_a_quantizer_are_stated():
    """An AveragePool of quantized values before a QuantizeLinear on the same grid (Brevitas QCDQ):
    every sum = 2 (mod 4) is an exact tie, which float32 runtimes decide by their summation order;
    bnnc's fold states the steps there (the verify criterion is then top-1), and a quantizer
    without ties states none."""
    rng = np.random.default_rng(14)

    def model(q_scale):
        inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8), "s2": np.array(q_scale, np.float32),
                 "w": rng.standard_normal((5, 3, 1, 1)).astype(np.float32), "shape": np.array([1, -1], np.int64)}
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
                 helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
                 helper.make_node("AveragePool", ["xd"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
                 helper.make_node("QuantizeLinear", ["p", "s2", "z"], ["pq"]),
                 helper.make_node("DequantizeLinear", ["pq", "s2", "z"], ["pd"]),
                 helper.make_node("Conv", ["pd", "w"], ["c"]),
                 helper.make_node("GlobalAveragePool", ["c"], ["g"]),
                 helper.make_node("Reshape", ["g", "shape"], ["y"])]
        return _model(nodes, inits, (1, 3, 4, 4), (1, 5))

    tied = _check(model(1 / 16), Options(), exact=False)
    assert any("level step(s) within float32 rounding" in a for a in driver.approximations(tied))
    untied = _check(model(0.085625), Options(), exact=False)  # S / 5.48: at least 1/50 from a half-integer
    assert not any("level step" in a for a in driver.approximations(untied))


@pytest.mark.parametrize("terminal", ["quant", "sign", "none", "output"])
def test_tanh_before_a_quantizer_or_continuing(terminal):
    """Brevitas' QuantTanh (BatchNorm -> Tanh -> Quant) and a tanh before a sign: monotone, folded
    into the terminal's thresholds exactly, bit-exact in C. A tanh whose values continue
    unquantized (into a pool and a dense layer; at the model output after a dense layer, a tanh
    head) is 2 sigmoid(2x) - 1 on a fixed-point stream: within its stated bound of onnxruntime,
    bit-exact in C."""
    rng = np.random.default_rng(15)
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w": rng.choice([-1.0, 1.0], size=(6, 4, 3, 3)).astype(np.float32),
             "g": rng.uniform(0.05, 0.3, (1, 6, 1, 1)).astype(np.float32),
             "b": rng.uniform(-1, 1, (1, 6, 1, 1)).astype(np.float32),
             "fc": rng.normal(size=(6, 5)).astype(np.float32), "shape": np.array([1, -1], np.int64),
             "qs": np.float32(0.25), "qz": np.float32(0), "qb": np.float32(3)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Sign", ["xd"], ["xb"]),
             helper.make_node("Conv", ["xb", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["a", "g"], ["a1"]), helper.make_node("Add", ["a1", "b"], ["a2"]),
             helper.make_node("Tanh", ["a2"], ["t"])]
    if terminal == "quant":
        nodes.append(helper.make_node("Quant", ["t", "qs", "qz", "qb"], ["tq"], domain="qonnx.custom_op.general",
                                      signed=1, narrow=0, rounding_mode="ROUND"))
    elif terminal == "sign":
        nodes.append(helper.make_node("Sign", ["t"], ["tq"]))
    elif terminal == "none":
        nodes.append(helper.make_node("Relu", ["t"], ["tq"]))
    else:
        nodes[-1] = helper.make_node("Identity", ["a2"], ["tq"])
    nodes += [helper.make_node("GlobalAveragePool", ["tq"], ["q"]), helper.make_node("Reshape", ["q", "shape"], ["f"]),
              helper.make_node("MatMul", ["f", "fc"], ["y" if terminal != "output" else "d"])]
    if terminal == "output":
        nodes.append(helper.make_node("Tanh", ["d"], ["y"]))
    model = _model(nodes, inits, (1, 4, 6, 6), (1, 5))
    if terminal == "quant":
        model.opset_import.append(helper.make_opsetid("qonnx.custom_op.general", 1))
    if terminal in ("quant", "sign"):
        _check(model, Options())
        return
    graph = compile_graph(model, Options(verify_ir=True))
    assert sum(isinstance(op, ir.Sigmoid) and op.in_scale == 2 * graph.tensors[op.inputs[0]].scale
               for op in graph.ops()) == 1
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 40, 0))
    ref = driver.run_target(graph, "ref", inputs)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    bound = error_bounds.output_bound(graph)
    assert 0 < bound < 1e-4  # the rounded BatchNorm stream's bound, carried through the tanh
    assert np.all(np.abs(ref - orig) <= bound + 2.0**-22 * np.maximum(1.0, np.abs(orig)))
    if terminal == "output":
        assert np.abs(orig).max() <= 1 and np.abs(orig).max() > 0.5  # the tanh's range, reached
    y, _ = targets.run(graph, "c", inputs.grid, targets.TargetOptions())
    assert np.array_equal(y, ref)


def test_half_precision_models_are_refused_in_one_line(tmp_path, capsys):
    """A float16 model (its roundings are not float32's): one line naming the tensor."""
    from bnnc.cli import main

    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float16), "w")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "half",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3, 2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 2, 2, 2])], [w])
    half = tmp_path / "half.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), half)
    assert main(["compile", str(half), "--input-scale", "1", "--input-range", "-8:7", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bnnc: error: ") and "16-bit floating point" in err[0], err


@pytest.mark.parametrize("zp_type,head", [(np.int8, "dense"), (np.uint8, "dense"), (np.int8, "map"),
                                          (np.int16, "dense")])
def test_quantize_linear_integers_as_the_model_output(zp_type, head, tmp_path, capsys):
    """A model whose output is a QuantizeLinear's integers with no DequantizeLinear after it (the
    int8 / uint8 logits of tf2onnx's full-integer TFLite models; a feature map): the compiled code
    outputs those integers in their own type, equal to onnxruntime's, bit-exact in C and on a
    Cortex-M0; `bnnc verify` compares them as values (top-1 is their largest)."""
    from bnnc.cli import main

    rng = np.random.default_rng(20)
    zo = {np.int8: 3, np.uint8: 128, np.int16: -7}[zp_type]
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8), "zo": np.array(zo, zp_type),
             "s2": np.array(0.05, np.float32),
             "w": rng.integers(-3, 4, (6, 4, 3, 3)).astype(np.float32) * np.float32(0.125),
             "fc": rng.standard_normal((6 * 16, 5)).astype(np.float32), "shape": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Conv", ["xd", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2])]
    if head == "map":
        nodes.append(helper.make_node("QuantizeLinear", ["p", "s2", "zo"], ["y"], name="out_q"))
        model = _model(nodes, inits, (1, 4, 8, 8), (1, 6, 4, 4))
    else:
        nodes += [helper.make_node("Reshape", ["p", "shape"], ["f"]), helper.make_node("MatMul", ["f", "fc"], ["l"]),
                  helper.make_node("QuantizeLinear", ["l", "s2", "zo"], ["y"], name="logits_q")]
        model = _model(nodes, inits, (1, 4, 8, 8), (1, 5))
    if zp_type == np.int16:
        model.opset_import[0].version = 21  # 16-bit QuantizeLinear
    model.graph.output[0].type.tensor_type.elem_type = helper.np_dtype_to_tensor_dtype(np.dtype(zp_type))
    graph = compile_graph(model, Options(verify_ir=True))
    assert graph.output_info["dtype"] == np.dtype(zp_type).name
    if zp_type == np.int16:  # 65535 steps, at float32's own roundings: no multiply-shift (requantize_level_steps
        # tries one over anchored pairs of steps, in bounded memory), the exact threshold table
        assert graph.producer(graph.output).epilogue.threshold.shape[1] == 65535
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 40, 0))
    ref = driver.run_target(graph, "ref", inputs)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    assert orig.dtype == zp_type and np.array_equal(ref, orig)
    for target in ("c", "cortex-m0"):
        y, _ = targets.run(graph, target, inputs.grid[:4] if target != "c" else inputs.grid, targets.TargetOptions())
        assert y.dtype == zp_type and np.array_equal(y, ref[: y.shape[0]])
    path = tmp_path / "q.onnx"
    onnx.save(model, path)
    assert main(["verify", str(path), "--input-scale", "1/16", "--input-range", "-128:127", "--samples", "30"]) == 0
    out = capsys.readouterr().out
    assert "reference top-1 == original         30/30" in out and "max abs diff  0 " in out, out


def test_tflite_int8_squeeze_between_quantize_and_dequantize():
    """tf2onnx's full-integer TFLite head: GlobalAveragePool -> QuantizeLinear -> Squeeze ->
    DequantizeLinear -> MatMul (the Squeeze on the int8 tensor); bit-exact in C."""
    rng = np.random.default_rng(16)
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w": rng.integers(-3, 4, (6, 4, 3, 3)).astype(np.float32) * np.float32(0.125),
             "s2": np.array(0.25, np.float32), "ax": np.array([2, 3], np.int64),
             "fc": rng.standard_normal((6, 5)).astype(np.float32)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Conv", ["xd", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("QuantizeLinear", ["g", "s2", "z"], ["gq"]),
             helper.make_node("Squeeze", ["gq", "ax"], ["sq"]),
             helper.make_node("DequantizeLinear", ["sq", "s2", "z"], ["gd"]),
             helper.make_node("MatMul", ["gd", "fc"], ["y"])]
    _check(_model(nodes, inits, (1, 4, 6, 6), (1, 5)), Options(), exact=False)


def _softmax_grid_model(seed, zp_type=np.uint8):
    rng = np.random.default_rng(seed)
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w": rng.choice([-1.0, 1.0], size=(6, 4, 3, 3)).astype(np.float32),
             "fc": (rng.standard_normal((6, 10)) * 0.05).astype(np.float32), "shape": np.array([1, -1], np.int64),
             "ps": np.array(1 / 256, np.float32), "pz": np.array(0 if zp_type == np.uint8 else -128, zp_type)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Sign", ["xd"], ["xb"]),
             helper.make_node("Conv", ["xb", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["a"], ["g"]),
             helper.make_node("Reshape", ["g", "shape"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["l"]),
             helper.make_node("Softmax", ["l"], ["p"], axis=-1),
             helper.make_node("QuantizeLinear", ["p", "ps", "pz"], ["pq"]),
             helper.make_node("DequantizeLinear", ["pq", "ps", "pz"], ["y"])]
    return _model(nodes, inits, (1, 4, 6, 6), (1, 10))


@pytest.mark.parametrize("zp_type", [np.uint8, np.int8])
def test_softmax_through_the_models_output_quantizer(zp_type):
    """A full-integer TFLite classifier's output: Softmax -> QuantizeLinear (steps of 1/256) ->
    DequantizeLinear. The quantizer is part of the Softmax op (out_grid); bit-exact in C and on a
    Cortex-M0 (soft float), and the reference's rounding is onnxruntime's."""
    graph = _check(_softmax_grid_model(17, zp_type), Options(), exact=False)
    assert [op.out_grid for op in graph.ops() if isinstance(op, ir.Softmax)][0][0] == np.float32(1 / 256)
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 3, 2))
    ref = driver.run_target(graph, "ref", inputs)
    y, _ = targets.run(graph, "cortex-m0", inputs.grid, targets.TargetOptions())
    assert np.array_equal(y.reshape(ref.shape), ref)


def test_quantize_dequantize_rounds_as_onnxruntime():
    """arith.quantize_linear -> dequantize_linear against onnxruntime's QuantizeLinear -> DequantizeLinear on
    probabilities, exact halves of a step included."""
    from bnnc.arith import dequantize_linear, quantize_linear
    from bnnc.original import OriginalModel

    rng = np.random.default_rng(18)
    p = np.concatenate([rng.random(4000), (np.arange(512) + 0.5) / 256, np.arange(257) / 256, [0.0, 1.0]])
    p = p.astype(np.float32).reshape(1, -1)
    for scale, zp, dtype, lo, hi in ((1 / 256, 0, np.uint8, 0, 255), (1 / 256, -128, np.int8, -128, 127),
                                     (0.0123, 3, np.uint8, 0, 255)):
        g = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                               helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "qdq",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(p.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(p.shape))],
                              [numpy_helper.from_array(np.array(scale, np.float32), "s"),
                               numpy_helper.from_array(np.array(zp, dtype), "z")])
        want = OriginalModel(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])).run(p)
        assert np.array_equal(dequantize_linear(quantize_linear(p, scale, zp, lo, hi), scale, zp), want.reshape(p.shape))


@pytest.mark.parametrize("integers", [True, False])
def test_softmax_requantized_to_uint8(integers):
    """TFLite's uint8-output classifier: Softmax -> QuantizeLinear (int8, 1/256, -128) ->
    DequantizeLinear -> QuantizeLinear (uint8, 1/256, 0) [-> DequantizeLinear]: the Softmax op's
    out_grid and requant, the uint8 integers (or their reals) equal to onnxruntime's, bit-exact in C
    and on a Cortex-M0."""
    model = _softmax_grid_model(26, np.int8)  # the int8 grid: zero point -128
    model.graph.initializer.append(numpy_helper.from_array(np.array(0, np.uint8), "uz"))
    model.graph.node[-1].output[0] = "pd"
    model.graph.node.append(helper.make_node("QuantizeLinear", ["pd", "ps", "uz"], ["y" if integers else "uq"]))
    if not integers:
        model.graph.node.append(helper.make_node("DequantizeLinear", ["uq", "ps", "uz"], ["y"]))
    else:
        model.graph.output[0].type.tensor_type.elem_type = TensorProto.UINT8
    graph = compile_graph(model, Options(verify_ir=True))
    sm = next(op for op in graph.ops() if isinstance(op, ir.Softmax))
    assert sm.requant == (0, 0, 255) and graph.output_info["dtype"] == ("uint8" if integers else "float32")
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 40, 0))
    ref = driver.run_target(graph, "ref", inputs)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    assert (ref == orig).mean() > 0.95 and (ref.argmax(1) == orig.argmax(1)).mean() >= 0.95
    for target in ("c", "cortex-m0"):
        y, _ = targets.run(graph, target, inputs.grid[:4] if target != "c" else inputs.grid, targets.TargetOptions())
        assert np.array_equal(y, ref[: y.shape[0]])


@pytest.mark.parametrize("zp_type", [np.uint8, np.int8])
def test_softmax_probabilities_as_the_models_integer_output(zp_type):
    """A full-integer TFLite classifier with an int8 / uint8 output (Softmax -> QuantizeLinear, no
    DequantizeLinear): the Softmax writes the QuantizeLinear's integers (an Ints output), equal to
    onnxruntime's wherever the probabilities are not within float32 rounding of a step's boundary
    (stated), bit-exact in C and on a Cortex-M0, and arith.quantize_linear is onnxruntime's rounding."""
    from bnnc.arith import quantize_linear

    model = _softmax_grid_model(19, zp_type)
    del model.graph.node[-1]
    model.graph.node[-1].output[0] = "y"
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.UINT8 if zp_type == np.uint8 else TensorProto.INT8
    graph = compile_graph(model, Options(verify_ir=True))
    assert graph.output_info["dtype"] == np.dtype(zp_type).name
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 40, 0))
    ref = driver.run_target(graph, "ref", inputs)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    assert orig.dtype == zp_type and np.abs(ref.astype(int) - orig.astype(int)).max() <= 1
    assert (ref == orig).mean() > 0.95 and (ref.argmax(1) == orig.argmax(1)).mean() >= 0.95
    for target in ("c", "cortex-m0"):
        y, _ = targets.run(graph, target, inputs.grid[:4] if target != "c" else inputs.grid, targets.TargetOptions())
        assert y.dtype == zp_type and np.array_equal(y, ref[: y.shape[0]])
    p = np.random.default_rng(3).random((1, 999)).astype(np.float32)
    p[0, :512] = (np.arange(512) + 0.5) / 256  # exact halves of a step
    zp = 0 if zp_type == np.uint8 else -128
    g = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])], "q",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(p.shape))],
                          [helper.make_tensor_value_info("q", TensorProto.UINT8 if zp == 0 else TensorProto.INT8,
                                                         list(p.shape))],
                          [numpy_helper.from_array(np.array(1 / 256, np.float32), "s"),
                           numpy_helper.from_array(np.array(zp, zp_type), "z")])
    want = OriginalModel(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])).run(p)
    info = np.iinfo(zp_type)
    assert np.array_equal(quantize_linear(p, 1 / 256, zp, info.min, info.max), want.reshape(p.shape))


def _resize_model(seed, where_, resize, opset=13):
    """Binary CNN with a nearest-neighbour resize `resize(src, dst)` (a list of nodes and initializers)
    of the sign's bits ("bits") or of the BatchNorm's real values before the sign ("stream")."""
    rng = np.random.default_rng(seed)
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w": rng.choice([-1.0, 1.0], size=(6, 4, 3, 3)).astype(np.float32),
             "g": rng.uniform(0.05, 0.3, (1, 6, 1, 1)).astype(np.float32),
             "b": rng.uniform(-1, 1, (1, 6, 1, 1)).astype(np.float32),
             "w2": rng.choice([-1.0, 1.0], size=(5, 6, 3, 3)).astype(np.float32),
             "fc": rng.normal(size=(5, 4)).astype(np.float32), "shape": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Sign", ["xd"], ["xb"]),
             helper.make_node("Conv", ["xb", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["a", "g"], ["a1"]), helper.make_node("Add", ["a1", "b"], ["a2"])]
    rnodes, rinits = resize("a2" if where_ == "stream" else "sb", "r")
    inits.update(rinits)
    if where_ == "stream":
        nodes += rnodes + [helper.make_node("Sign", ["r"], ["rb"])]
    else:
        nodes += [helper.make_node("Sign", ["a2"], ["sb"])] + rnodes + [helper.make_node("Identity", ["r"], ["rb"])]
    nodes += [helper.make_node("Conv", ["rb", "w2"], ["c2"], pads=[1, 1, 1, 1]),
              helper.make_node("GlobalAveragePool", ["c2"], ["q"]), helper.make_node("Reshape", ["q", "shape"], ["f"]),
              helper.make_node("MatMul", ["f", "fc"], ["y"])]
    if opset < 10:  # no QuantizeLinear yet: the input grid is declared (Options)
        nodes[:2] = [helper.make_node("Sub", ["x", "half"], ["xd"])]  # no grid value at the sign's 0
        inits["half"] = np.array(1 / 32, np.float32)
    model = _model(nodes, inits, (1, 4, 5, 5), (1, 4))
    model.opset_import[0].version = opset
    return model


_RESIZES = {
    # torch's nn.Upsample(scale_factor=2, mode="nearest") (opset 11 on)
    "torch_scales": (13, lambda x, y: ([helper.make_node("Resize", [x, "", "rs"], [y], mode="nearest",
                                                         coordinate_transformation_mode="asymmetric",
                                                         nearest_mode="floor")],
                                       {"rs": np.array([1, 1, 2, 2], np.float32)})),
    # sizes to a size that no integer factor gives, half_pixel (the default) and its default rounding
    "sizes_half_pixel": (13, lambda x, y: ([helper.make_node("Resize", [x, "", "", "sz"], [y], mode="nearest")],
                                           {"sz": np.array([1, 6, 8, 7], np.int64)})),
    "align_corners_ceil": (13, lambda x, y: ([helper.make_node("Resize", [x, "", "rs"], [y], mode="nearest",
                                                               coordinate_transformation_mode="align_corners",
                                                               nearest_mode="ceil")],
                                             {"rs": np.array([1, 1, 3, 2], np.float32)})),
    "upsample_opset9": (9, lambda x, y: ([helper.make_node("Upsample", [x, "us"], [y], mode="nearest")],
                                         {"us": np.array([1, 1, 2, 3], np.float32)})),
    # pads that copy border pixels (nn.ReflectionPad2d, ReplicationPad2d, opset 19's wrap): moved too
    "pad_reflect": (13, lambda x, y: ([helper.make_node("Pad", [x, "pp"], [y], mode="reflect")],
                                      {"pp": np.array([0, 0, 2, 1, 0, 0, 1, 2], np.int64)})),
    "pad_edge": (13, lambda x, y: ([helper.make_node("Pad", [x, "pp"], [y], mode="edge")],
                                   {"pp": np.array([0, 0, 1, 0, 0, 0, 3, 2], np.int64)})),
    "pad_wrap": (19, lambda x, y: ([helper.make_node("Pad", [x, "pp"], [y], mode="wrap")],
                                   {"pp": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)})),
}


@pytest.mark.parametrize("where_", ["bits", "stream"])
@pytest.mark.parametrize("form", sorted(_RESIZES))
def test_nearest_resize(form, where_):
    """Nearest-neighbour Resize / Upsample in the forms the exporters write, and the pads that copy
    border pixels, of a sign's bits or of a real-valued tensor (its fixed-point stream): ir.Gather,
    bit-exact in C, the reference equal to onnxruntime."""
    opset, resize = _RESIZES[form]
    model = _resize_model(21, where_, resize, opset)
    grid = {"input_scale": 1 / 16, "input_range": (-128, 127)} if opset < 10 else {}
    graph = _check(model, Options(verify_ir=True, **grid), exact=where_ == "bits")
    assert sum(isinstance(op, ir.Gather) for op in graph.ops()) == 1
    if form == "torch_scales":  # on a Cortex-M0; the FPGA backends refuse it in one line
        from bnnc.errors import BnncError

        inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 3, 1))
        y, _ = targets.run(graph, "cortex-m0", inputs.grid, targets.TargetOptions())
        assert np.array_equal(y, driver.run_target(graph, "ref", inputs))
        for target in ("verilog", "hls"):
            with pytest.raises(BnncError, match="not implement Gather"):
                targets.compile_files(graph, target, targets.options_for(target, targets.TargetOptions()))


def test_resize_refusals():
    """Interpolating modes and run-time sizes are refused in one line naming the node."""
    from bnnc.errors import BnncError

    lin = _resize_model(22, "bits", lambda x, y: ([helper.make_node("Resize", [x, "", "rs"], [y], name="up",
                                                                    mode="linear")],
                                                  {"rs": np.array([1, 1, 2, 2], np.float32)}))
    with pytest.raises(BnncError, match="node 'up' \\(Resize\\): Resize mode 'linear' interpolates"):
        compile_graph(lin, Options())
    chan = _resize_model(22, "bits", lambda x, y: ([helper.make_node("Resize", [x, "", "rs"], [y], name="up")],
                                                   {"rs": np.array([1, 2, 2, 2], np.float32)}))
    with pytest.raises(BnncError, match="node 'up' \\(Resize\\).*moves pixels along H and W only"):
        compile_graph(chan, Options())


@pytest.mark.parametrize("signed,contrib", [(True, False), (False, False), (True, True)])
def test_four_bit_quantize_dequantize(signed, contrib):
    """4-bit QDQ (opset 21's int4 / uint4 zero points, as onnxruntime's and other quantizers write
    w4a4 models; below opset 21 onnxruntime's quantizer writes them as com.microsoft operators,
    canonical/contrib_quantizers): int4 weights through DequantizeLinear, activations clamped to the
    4-bit levels (saturating here), the logits as the last QuantizeLinear's 4-bit integers; equal
    to onnxruntime and bit-exact in C."""
    rng = np.random.default_rng(23)
    t4 = TensorProto.INT4 if signed else TensorProto.UINT4
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8), "ws": np.float32(0.125),
             "s4": np.array(0.25, np.float32), "fc": rng.normal(size=(6, 5)).astype(np.float32),
             "so": np.array(0.5, np.float32), "shape": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w4", "ws"], ["w"]),
             helper.make_node("Conv", ["xd", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["a", "s4", "z4"], ["aq"]),
             helper.make_node("DequantizeLinear", ["aq", "s4", "z4"], ["ad"]),
             helper.make_node("GlobalAveragePool", ["ad"], ["g"]), helper.make_node("Reshape", ["g", "shape"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["l"]),
             helper.make_node("QuantizeLinear", ["l", "so", "z4"], ["y"])]
    model = _model(nodes, inits, (1, 4, 6, 6), (1, 5))
    model.graph.initializer.extend([
        helper.make_tensor("w4", TensorProto.INT4, [6, 4, 3, 3], rng.integers(-8, 8, 6 * 4 * 3 * 3).tolist()),
        helper.make_tensor("z4", t4, [], [0 if signed else 8])])
    model.graph.output[0].type.tensor_type.elem_type = t4
    model.opset_import[0].version = 13 if contrib else 21
    model.ir_version = 10
    if contrib:
        for n in model.graph.node:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
                n.domain = "com.microsoft"
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    graph = compile_graph(model, Options(verify_ir=True))
    assert graph.output_info["dtype"] == ("int8" if signed else "uint8")  # C has no 4-bit type
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 40, 0))
    ref = driver.run_target(graph, "ref", inputs)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape).astype(np.int64)
    assert np.array_equal(ref, orig) and orig.min() >= (-8 if signed else 0) and orig.max() <= (7 if signed else 15)
    conv = next(op for op in graph.ops() if isinstance(op, ir.Conv))
    out = graph.tensors[conv.outputs[0]]
    assert (out.hi - out.lo) == 15  # the 4-bit levels
    y, _ = targets.run(graph, "c", inputs.grid, targets.TargetOptions())
    assert np.array_equal(y, ref)


def test_input_shape_declared_where_the_model_leaves_it_open(tmp_path, capsys):
    """A fully convolutional export with open batch, H and W (dynamic axes): refused with the flag
    named; with --input-shape it compiles and verifies (the original runs at that shape too);
    a declared shape that contradicts the model or that its layers cannot take: one line each."""
    from bnnc.cli import main

    rng = np.random.default_rng(24)
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w": rng.choice([-1.0, 1.0], size=(6, 3, 3, 3)).astype(np.float32),
             "t": rng.normal(size=(1, 6, 1, 1)).astype(np.float32), "fc": rng.normal(size=(6, 5)).astype(np.float32),
             "shape": np.array([1, -1], np.int64), "fc2": rng.normal(size=(6 * 64, 5)).astype(np.float32)}
    for head in ("gap", "flatten"):
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
                 helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
                 helper.make_node("Sign", ["xd"], ["xb"]),
                 helper.make_node("Conv", ["xb", "w"], ["a"], pads=[1, 1, 1, 1]),
                 helper.make_node("Sub", ["a", "t"], ["a2"]), helper.make_node("Sign", ["a2"], ["b"])]
        nodes += [helper.make_node("GlobalAveragePool", ["b"], ["g"]), helper.make_node("Reshape", ["g", "shape"], ["f"]),
                  helper.make_node("MatMul", ["f", "fc"], ["y"])] if head == "gap" else \
            [helper.make_node("Reshape", ["b", "shape"], ["f"]), helper.make_node("MatMul", ["f", "fc2"], ["y"])]
        model = _model(nodes, inits, (1, 3, 8, 8), (1, 5))
        for i, name in ((0, "batch"), (2, "h"), (3, "w")):
            d = model.graph.input[0].type.tensor_type.shape.dim[i]
            d.Clear()
            d.dim_param = name
        onnx.save(model, tmp_path / f"{head}.onnx")
    gap, flat = str(tmp_path / "gap.onnx"), str(tmp_path / "flatten.onnx")
    cases = [([gap], 2, "declare them with --input-shape N,C,H,W"),
             ([gap, "--input-shape", "1,3,12,10", "--samples", "20"], 0, "PASS"),
             ([flat, "--input-shape", "1,3,8,8", "--samples", "20"], 0, "PASS"),
             ([gap, "--input-shape", "1,4,12,10"], 2, "dimension 1 of input 'x' is 3 in the model"),
             ([flat, "--input-shape", "1,3,12,10"], 2, "the model's shapes do not follow from it")]
    for args, rc, words in cases:
        assert main(["verify", *args]) == rc
        cap = capsys.readouterr()
        text = cap.out if rc == 0 else cap.err
        assert words in text, text
        if rc:
            assert len(cap.err.strip().splitlines()) == 1


def test_model_output_chosen_among_several(tmp_path, capsys):
    """A model with two outputs (logits beside pooled features) is refused with --model-output
    named; with it, either output (or a tensor inside the graph: here the real-valued feature map
    of a padded convolution, whose C once kept unused border tables) compiles and verifies; an
    unknown name is refused in one line."""
    from bnnc.cli import main

    rng = np.random.default_rng(27)
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w": rng.choice([-1.0, 1.0], size=(6, 3, 3, 3)).astype(np.float32),
             "t": rng.normal(size=(1, 6, 1, 1)).astype(np.float32), "fc": rng.normal(size=(6, 5)).astype(np.float32),
             "shape": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Sign", ["xd"], ["xb"]),
             helper.make_node("Conv", ["xb", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Sub", ["a", "t"], ["a2"]), helper.make_node("Sign", ["a2"], ["b"]),
             helper.make_node("GlobalAveragePool", ["b"], ["g"]), helper.make_node("Reshape", ["g", "shape"], ["f"]),
             helper.make_node("MatMul", ["f", "fc"], ["y"])]
    model = _model(nodes, inits, (1, 3, 6, 6), (1, 5))
    model.graph.output.append(helper.make_tensor_value_info("g", TensorProto.FLOAT, [1, 6, 1, 1]))
    path = str(tmp_path / "two.onnx")
    onnx.save(model, path)
    cases = [([], 2, "this one has 2 (y, g): choose one with --model-output NAME"),
             (["--model-output", "y"], 0, "PASS"), (["--model-output", "g"], 0, "PASS"),
             (["--model-output", "a2"], 0, "PASS"),
             (["--model-output", "nope"], 2, "--model-output 'nope' is no tensor a node of the model computes")]
    for args, rc, words in cases:
        assert main(["verify", path, "--samples", "10", *args]) == rc
        cap = capsys.readouterr()
        assert words in (cap.out if rc == 0 else cap.err), (cap.out, cap.err)


@pytest.mark.parametrize("axis,idx", [(1, [5, 0, -1, 2]), (2, [0, 0, 4, 1]), (3, [3, 1])])
def test_gather_of_activations(axis, idx):
    """x[:, [5, 0, -1, 2]] / index_select (ONNX Gather with constant indices) of a sign's bits:
    an ir.Gather, bit-exact in C, equal to onnxruntime."""
    rng = np.random.default_rng(28)
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w": rng.choice([-1.0, 1.0], size=(8, 3, 3, 3)).astype(np.float32),
             "t": rng.normal(size=(1, 8, 1, 1)).astype(np.float32), "idx": np.array(idx, np.int64),
             "shape": np.array([1, -1], np.int64)}
    n = {1: len(idx), 2: 8, 3: 8}[axis]
    out = {1: (n, 5, 5), 2: (8, len(idx), 5), 3: (8, 5, len(idx))}[axis]
    inits["w2"] = rng.choice([-1.0, 1.0], size=(4, out[0], 3, 3)).astype(np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Sign", ["xd"], ["xb"]),
             helper.make_node("Conv", ["xb", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Sub", ["a", "t"], ["a2"]), helper.make_node("Sign", ["a2"], ["b"]),
             helper.make_node("Gather", ["b", "idx"], ["gb"], axis=axis),
             helper.make_node("Conv", ["gb", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c2"], ["q"]), helper.make_node("Reshape", ["q", "shape"], ["y"])]
    graph = _check(_model(nodes, inits, (1, 3, 5, 5), (1, 4)), Options(verify_ir=True))
    assert any(isinstance(op, ir.Gather) for op in graph.ops())


@pytest.mark.parametrize("groups,batch", [(2, 1), (4, -1)])
def test_channel_shuffle(groups, batch):
    """ShuffleNet's channel shuffle as torch writes it (Reshape to (N, g, C/g, H, W), Transpose
    (0, 2, 1, 3, 4), Reshape back) becomes one Gather of the channels (canonical/channel_shuffle),
    then an ir.Gather; bit-exact in C, equal to onnxruntime."""
    from bnnc.canonical import canonicalize

    rng = np.random.default_rng(29)
    c, h = 8, 5
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w": rng.choice([-1.0, 1.0], size=(c, 3, 3, 3)).astype(np.float32),
             "t": rng.normal(size=(1, c, 1, 1)).astype(np.float32),
             "w2": rng.choice([-1.0, 1.0], size=(4, c, 3, 3)).astype(np.float32),
             "five": np.array([batch, groups, c // groups, h, h], np.int64),
             "four": np.array([batch, c, h, h], np.int64), "shape": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Sign", ["xd"], ["xb"]),
             helper.make_node("Conv", ["xb", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Sub", ["a", "t"], ["a2"]), helper.make_node("Sign", ["a2"], ["b"]),
             helper.make_node("Reshape", ["b", "five"], ["r5"]),
             helper.make_node("Transpose", ["r5"], ["t5"], perm=[0, 2, 1, 3, 4]),
             helper.make_node("Reshape", ["t5", "four"], ["sh"]),
             helper.make_node("Conv", ["sh", "w2"], ["c2"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c2"], ["q"]), helper.make_node("Reshape", ["q", "shape"], ["y"])]
    model = _model(nodes, inits, (1, 3, h, h), (1, 4))
    ops = [n.op_type for n in canonicalize(model).graph.node]
    assert "Transpose" not in ops and ops.count("Gather") == 1
    graph = _check(model, Options(verify_ir=True))
    g = next(op for op in graph.ops() if isinstance(op, ir.Gather))
    k = c // groups
    assert g.channels == tuple(i * k + j for j in range(k) for i in range(groups))


def _moved_model(move: str, kind: str, r: int = 2):
    """A binary (kind "bits": Sign outputs) or fixed-point (kind "ints": a conv's stream) map moved
    between channels and pixels, then a binary conv and a mean: `move` is an ONNX DepthToSpace
    (mode DCR or CRD) or SpaceToDepth, or PyTorch's pixel_shuffle / pixel_unshuffle as the
    exporters write them through 6-D shapes (Reshape -> Transpose -> Reshape)."""
    rng = np.random.default_rng(31)
    c, h = 8, 6
    down = move in ("SpaceToDepth", "unshuffle")
    c2, h2 = (c * r * r, h // r) if down else (c // (r * r), h * r)
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w": rng.choice([-1.0, 1.0], size=(c, 3, 3, 3)).astype(np.float32),
             "t": (rng.integers(-8, 8, size=(1, c, 1, 1)) + 0.5).astype(np.float32),
             "w2": rng.choice([-1.0, 1.0], size=(4, c2, 3, 3)).astype(np.float32),
             "six": np.array([1, c, h // r, r, h // r, r] if down else [1, c2, r, r, h, h], np.int64),
             "four": np.array([1, c2, h2, h2], np.int64), "shape": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Sign", ["xd"], ["xb"]),
             helper.make_node("Conv", ["xb", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Sub", ["a", "t"], ["a2"])]
    nodes += [helper.make_node("Sign", ["a2"], ["b"])] if kind == "bits" else \
        [helper.make_node("Relu", ["a2"], ["b"])]
    if move in ("DCR", "CRD"):
        nodes += [helper.make_node("DepthToSpace", ["b"], ["m"], blocksize=r, mode=move)]
    elif move == "SpaceToDepth":
        nodes += [helper.make_node("SpaceToDepth", ["b"], ["m"], blocksize=r)]
    else:
        perm = [0, 1, 3, 5, 2, 4] if down else [0, 1, 4, 2, 5, 3]
        nodes += [helper.make_node("Reshape", ["b", "six"], ["r6"]),
                  helper.make_node("Transpose", ["r6"], ["t6"], perm=perm),
                  helper.make_node("Reshape", ["t6", "four"], ["m"])]
    nodes += [helper.make_node("Conv", ["m", "w2"], ["c2"], pads=[1, 1, 1, 1]),
              helper.make_node("GlobalAveragePool", ["c2"], ["q"]), helper.make_node("Reshape", ["q", "shape"], ["y"])]
    return _model(nodes, inits, (1, 3, h, h), (1, 4))


@pytest.mark.parametrize("move", ["DCR", "CRD", "SpaceToDepth", "shuffle", "unshuffle"])
@pytest.mark.parametrize("kind", ["bits", "ints"])
def test_moves_between_channels_and_pixels(move, kind):
    """DepthToSpace (PixelShuffle; both modes), SpaceToDepth, and pixel_shuffle / pixel_unshuffle
    through 6-D Reshape -> Transpose -> Reshape (canonical/pixel_moves: one of those ops, then a
    Gather of the channels where the orders differ) of bits or of a fixed-point stream: an
    ir.Gather by element index, values moved exactly (equal to onnxruntime), C bit-exact."""
    from bnnc.canonical import canonicalize

    model = _moved_model(move, kind)
    assert "Transpose" not in [n.op_type for n in canonicalize(model).graph.node]
    graph = _check(model, Options(verify_ir=True))
    g = next(op for op in graph.ops() if isinstance(op, ir.Gather) and op.index is not None)
    assert sorted(g.index.reshape(-1)) == list(range(g.index.size))  # a permutation of the elements
    g.index = g.index.copy()
    g.index.flat[0] = g.index.size  # an element the input does not have
    with pytest.raises(ir.IRError, match="Gather"):
        ir.verify(graph)


def test_a_space_to_depth_onnxruntime_refuses_is_one_line(capfd):
    """A SpaceToDepth whose block does not divide the map: onnxruntime's refusal, in bnnc's one
    line naming the node, and nothing else on stderr."""
    from bnnc.errors import BnncError

    model = _moved_model("SpaceToDepth", "ints", r=4)
    with pytest.raises(BnncError, match="SpaceToDepth.*onnxruntime cannot run.*multiple of block_size"):
        compile_graph(model)
    assert capfd.readouterr().err == ""


def test_a_reshape_transpose_chain_that_is_no_space_depth_move_stays():
    """A 6-D Transpose whose element map is no DepthToSpace / SpaceToDepth (with any channel order)
    is left to the frontend, which refuses its 6-D Reshape, naming the node."""
    from bnnc.canonical import canonicalize
    from bnnc.errors import BnncError

    model = _moved_model("unshuffle", "ints")
    trans = next(n for n in model.graph.node if n.op_type == "Transpose")
    del trans.attribute[:]
    trans.attribute.append(helper.make_attribute("perm", [0, 1, 3, 5, 4, 2]))  # the blocks transposed
    assert "Transpose" in [n.op_type for n in canonicalize(model).graph.node]
    with pytest.raises(BnncError, match="Reshape.*1, 8, 3, 2, 3, 2"):
        compile_graph(model)


def test_where_activation_of_a_stream():
    """torch.where(d > 0, d, 0.25 * d) on a real conv's output (canonical/where_prelu: a PRelu of
    its fixed-point stream): equal to onnxruntime, C bit-exact."""
    rng = np.random.default_rng(37)
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8), "zero": np.array(0, np.float32),
             "w": rng.integers(-3, 4, size=(4, 3, 3, 3)).astype(np.float32), "a": np.array(0.25, np.float32),
             "eta": np.array(0.5, np.float32), "shape": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Conv", ["xd", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Sub", ["c", "eta"], ["d"]),
             helper.make_node("Greater", ["d", "zero"], ["g"]), helper.make_node("Mul", ["d", "a"], ["ad"]),
             helper.make_node("Where", ["g", "d", "ad"], ["wv"]), helper.make_node("GlobalAveragePool", ["wv"], ["q"]),
             helper.make_node("Reshape", ["q", "shape"], ["y"])]
    from bnnc.canonical import canonicalize

    model = _model(nodes, inits, (1, 3, 6, 6), (1, 4))
    ops = [n.op_type for n in canonicalize(model).graph.node]
    assert "PRelu" in ops and "Where" not in ops
    _check(model, Options(verify_ir=True))


# ----------------------------------------------------------------------------- QKeras and LSQ quantizers


def _qkeras_bits(x, prefix, bits=4, frac=2):
    """QKeras's quantized_bits(bits, bits - frac - 1) of `x` as tf2onnx writes it: the rounding's and
    the whole quantizer's straight-through estimators `v + (-v + round(v))`, `x + 1.0 * (-x + q)`."""
    p = prefix
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    inits = {f"{p}_k": np.array(2.0**frac, np.float32), f"{p}_lo": np.array(lo, np.float32),
             f"{p}_hi": np.array(hi, np.float32), f"{p}_c": np.array(2.0**-frac, np.float32),
             f"{p}_one": np.array(1.0, np.float32)}
    nodes = [helper.make_node("Mul", [x, f"{p}_k"], [f"{p}_v"]),
             helper.make_node("Round", [f"{p}_v"], [f"{p}_r"]),
             helper.make_node("Neg", [f"{p}_v"], [f"{p}_nv"]),
             helper.make_node("Add", [f"{p}_nv", f"{p}_r"], [f"{p}_d"]),
             helper.make_node("Add", [f"{p}_v", f"{p}_d"], [f"{p}_ste"]),
             helper.make_node("Min", [f"{p}_ste", f"{p}_hi"], [f"{p}_min"]),
             helper.make_node("Max", [f"{p}_min", f"{p}_lo"], [f"{p}_cl"]),
             helper.make_node("Mul", [f"{p}_cl", f"{p}_c"], [f"{p}_q"]),
             helper.make_node("Neg", [x], [f"{p}_nx"]),
             helper.make_node("Add", [f"{p}_nx", f"{p}_q"], [f"{p}_dq"]),
             helper.make_node("Mul", [f"{p}_one", f"{p}_dq"], [f"{p}_dq1"]),
             helper.make_node("Add", [x, f"{p}_dq1"], [f"{p}_out"])]
    return nodes, inits, f"{p}_out"


def _qkeras_relu(x, prefix, bits=4):
    """QKeras's quantized_relu(bits, 0) as tf2onnx writes it: the estimator's identity part is the
    clipped relu where(x <= hi, relu(x), hi) built from LessOrEqual / Not / Cast masks and a
    ones_like (Shape -> ConstantOfShape), the quantized part clip(round(x * 2^b) / 2^b, 0, hi)."""
    p = prefix
    top = 1 - 2.0**-bits
    inits = {f"{p}_k": np.array(2.0**bits, np.float32), f"{p}_c": np.array(2.0**-bits, np.float32),
             f"{p}_top": np.array(top, np.float32), f"{p}_zero": np.array(0.0, np.float32)}
    nodes = [helper.make_node("Mul", [x, f"{p}_k"], [f"{p}_v"]),
             helper.make_node("Round", [f"{p}_v"], [f"{p}_r"]),
             helper.make_node("Neg", [f"{p}_v"], [f"{p}_nv"]),
             helper.make_node("Add", [f"{p}_nv", f"{p}_r"], [f"{p}_d"]),
             helper.make_node("Add", [f"{p}_v", f"{p}_d"], [f"{p}_ste"]),
             helper.make_node("Relu", [x], [f"{p}_relu"]),
             helper.make_node("LessOrEqual", [x, f"{p}_top"], [f"{p}_le"]),
             helper.make_node("Cast", [f"{p}_le"], [f"{p}_lef"], to=TensorProto.FLOAT),
             helper.make_node("Mul", [f"{p}_lef", f"{p}_relu"], [f"{p}_keep"]),
             helper.make_node("Not", [f"{p}_le"], [f"{p}_gt"]),
             helper.make_node("Cast", [f"{p}_gt"], [f"{p}_gtf"], to=TensorProto.FLOAT),
             helper.make_node("Shape", [x], [f"{p}_shape"]),
             helper.make_node("ConstantOfShape", [f"{p}_shape"], [f"{p}_ones"],
                              value=numpy_helper.from_array(np.array([1.0], np.float32))),
             helper.make_node("Mul", [f"{p}_ones", f"{p}_top"], [f"{p}_tops"]),
             helper.make_node("Mul", [f"{p}_tops", f"{p}_gtf"], [f"{p}_sat"]),
             helper.make_node("Add", [f"{p}_keep", f"{p}_sat"], [f"{p}_sel"]),
             helper.make_node("Mul", [f"{p}_ste", f"{p}_c"], [f"{p}_sc"]),
             helper.make_node("Min", [f"{p}_sc", f"{p}_top"], [f"{p}_min"]),
             helper.make_node("Max", [f"{p}_min", f"{p}_zero"], [f"{p}_q"]),
             helper.make_node("Neg", [f"{p}_sel"], [f"{p}_nsel"]),
             helper.make_node("Add", [f"{p}_nsel", f"{p}_q"], [f"{p}_dq"]),
             helper.make_node("Add", [f"{p}_sel", f"{p}_dq"], [f"{p}_out"])]
    return nodes, inits, f"{p}_out"


def _lsq(x, prefix, s, lo, hi):
    """LSQ's activation quantizer in PyTorch code: x + (round(clamp(x / s, lo, hi)) * s - x).detach()."""
    p = prefix
    inits = {f"{p}_s": np.array(s, np.float32), f"{p}_lo": np.array(lo, np.float32),
             f"{p}_hi": np.array(hi, np.float32)}
    nodes = [helper.make_node("Div", [x, f"{p}_s"], [f"{p}_d"]),
             helper.make_node("Clip", [f"{p}_d", f"{p}_lo", f"{p}_hi"], [f"{p}_cl"]),
             helper.make_node("Round", [f"{p}_cl"], [f"{p}_r"]),
             helper.make_node("Mul", [f"{p}_r", f"{p}_s"], [f"{p}_q"]),
             helper.make_node("Sub", [f"{p}_q", x], [f"{p}_dq"]),
             helper.make_node("Add", [x, f"{p}_dq"], [f"{p}_out"])]
    return nodes, inits, f"{p}_out"


@pytest.mark.parametrize("form", ["bits", "relu", "lsq"])
def test_qkeras_and_lsq_activation_quantizers(form):
    """A dense MLP with each quantizer between its layers (2-bit ternary-like weights, exact): the
    quantizer becomes one multi-level activation, C and the reference equal, the reference equal
    to onnxruntime on the model."""
    rng = np.random.default_rng({"bits": 0, "relu": 1, "lsq": 2}[form])
    inits = {"w1": rng.integers(-1, 2, size=(16, 24)).astype(np.float32) / 8,
             "b1": rng.integers(-8, 8, size=24).astype(np.float32) / 16,
             "w2": rng.integers(-2, 2, size=(24, 10)).astype(np.float32)}
    build = {"bits": lambda t: _qkeras_bits(t, "q"), "relu": lambda t: _qkeras_relu(t, "q"),
             "lsq": lambda t: _lsq(t, "q", 0.375, 0, 3)}[form]
    qnodes, qinits, q = build("h")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m"]), helper.make_node("Add", ["m", "b1"], ["h"]),
             *qnodes, helper.make_node("MatMul", [q, "w2"], ["y"])]
    g = _check(_model(nodes, {**inits, **qinits}, (1, 16)), Options(input_range=(-128, 127), input_scale=1 / 64))
    kinds = [type(op).__name__ for op in g.ops()]
    assert "Activation" not in kinds  # the quantizer is the first layer's epilogue
    first = next(op for op in g.ops() if isinstance(op, ir.Conv))
    levels = {"bits": (-8, 7), "relu": (0, 15), "lsq": (0, 3)}[form]
    assert (g.tensors[first.outputs[0]].lo, g.tensors[first.outputs[0]].hi) == levels


def test_qkeras_quantizers_of_an_nhwc_input_and_conv_outputs():
    """tf2onnx's NHWC QKeras CNN: quantized_bits on the raw (N, H, W, C) input before the layout
    Transpose (moved to the input), quantized_relu of a convolution (its masks in NHWC, between
    Transposes), then GlobalAveragePooling2D of the quantized values times 2^-4 (the pool keeps
    that scale) and a dense head."""
    rng = np.random.default_rng(3)
    inits = {"w": rng.integers(-1, 2, size=(8, 3, 3, 3)).astype(np.float32) / 4,
             "b": rng.integers(-4, 4, size=8).astype(np.float32) / 8,
             "wd": rng.integers(-2, 2, size=(8, 10)).astype(np.float32), "sq": np.array([2, 3], np.int64)}
    qin, qin_inits, xq = _qkeras_bits("x", "inq", bits=8, frac=5)
    nhwc = [helper.make_node("Transpose", ["a"], ["a_nhwc"], perm=[0, 2, 3, 1])]
    qa, qa_inits, aq = _qkeras_relu("a_nhwc", "qa")
    nodes = [*qin, helper.make_node("Transpose", [xq], ["xt"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["xt", "w", "b"], ["a"], pads=[1, 1, 1, 1]), *nhwc, *qa,
             helper.make_node("Transpose", [aq], ["aq"], perm=[0, 3, 1, 2]),
             helper.make_node("GlobalAveragePool", ["aq"], ["p"]),
             helper.make_node("Squeeze", ["p", "sq"], ["f"]),
             helper.make_node("MatMul", ["f", "wd"], ["y"])]
    g = _check(_model(nodes, {**inits, **qin_inits, **qa_inits}, (1, 6, 6, 3)),
               Options(input_range=(-128, 127), input_scale=1 / 64))
    inq = next(op for op in g.ops() if isinstance(op, ir.InputQuantize))
    assert inq.channels_last


@pytest.mark.parametrize("alpha,beta", [(1 / 6, 0.5), (0.2, 0.5)])
def test_hard_sigmoid_of_a_stream(alpha, beta):
    """PyTorch's nn.Hardsigmoid (ONNX HardSigmoid, alpha 1/6) and ONNX's default (0.2) of a real-valued
    convolution: the fixed-point stream clamped to [0, 1], within float32 rounding of the model."""
    rng = np.random.default_rng(4)
    inits = {"s": np.array(1 / 16, np.float32), "z": np.array(0, np.int8),
             "w1": rng.normal(size=(6, 3, 3, 3)).astype(np.float32),
             "w2": rng.normal(size=(5, 6, 1, 1)).astype(np.float32),
             "wf": rng.normal(size=(10, 5)).astype(np.float32), "shape": np.array([1, 5], np.int64)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Conv", ["xd", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("HardSigmoid", ["a"], ["h"], alpha=alpha, beta=beta),
             helper.make_node("Conv", ["h", "w2"], ["b"]),
             helper.make_node("GlobalAveragePool", ["b"], ["p"]),
             helper.make_node("Reshape", ["p", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1)]
    g = _check(_model(nodes, inits, (1, 3, 6, 6)), Options())
    outs = [g.tensors[op.outputs[0]] for op in g.ops() if isinstance(op, ir.Activation)]
    ranges = [(t.lo, t.hi * t.scale) for t in outs]
    assert (0, 1.0) in ranges  # the clamp to [0, 1] on the stream's grid


def test_one_d_binary_network():
    """A 1-D BNN as PyTorch exports it (Conv1d, BatchNorm1d, sign, binary Conv1d with stride 2,
    MaxPool1d, Flatten, Linear) runs as the 2-D network on (N, C, 1, L)."""
    rng = np.random.default_rng(7)
    c = 8
    inits = {"w1": rng.normal(size=(c, 2, 5)).astype(np.float32),
             "w2": rng.choice([-1.0, 1.0], (c, c, 3)).astype(np.float32),
             "wf": rng.normal(size=(10, c * 8)).astype(np.float32)}
    for k in (1, 2):
        inits.update({f"g{k}": rng.uniform(0.5, 1.5, c).astype(np.float32),
                      f"b{k}": rng.normal(size=c).astype(np.float32),
                      f"m{k}": rng.normal(size=c).astype(np.float32),
                      f"v{k}": rng.uniform(0.5, 2, c).astype(np.float32)})
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[2, 2]),
             helper.make_node("BatchNormalization", ["a", "g1", "b1", "m1", "v1"], ["an"]),
             helper.make_node("Sign", ["an"], ["s1"]),
             helper.make_node("Conv", ["s1", "w2"], ["b"], pads=[1, 1], strides=[2]),
             helper.make_node("BatchNormalization", ["b", "g2", "b2", "m2", "v2"], ["bn"]),
             helper.make_node("MaxPool", ["bn"], ["p"], kernel_shape=[2], strides=[2]),
             helper.make_node("Sign", ["p"], ["s2"]),
             helper.make_node("Flatten", ["s2"], ["f"]),
             helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1)]
    g = _check(_model(nodes, inits, (1, 2, 32)), Options(input_range=(-128, 127), input_scale=1 / 64), exact=False)
    convs = [op for op in g.ops() if isinstance(op, ir.Conv)]
    assert [op.w.shape[1:3] for op in convs[:2]] == [(1, 5), (1, 3)]  # (O, kh, kw, I)


def test_keras_conv1d_as_tf2onnx_writes_it():
    """Keras / larq Conv1D, MaxPooling1D on a channel-last (N, L, C) input as tf2onnx writes them
    (Unsqueeze, NHWC -> NCHW Transpose, a 2-D Conv / MaxPool with a unit axis, Squeeze, and
    NCL <-> NLC Transposes between layers): the canonical stage reads back the 1-D layers (no
    Unsqueeze or Squeeze left, the float32 values unchanged) and the network runs as the 2-D one
    on (N, C, 1, L), the input read channel-last."""
    from bnnc.canonical import canonicalize
    from bnnc.canonical.unit_axis_windows import unit_axis_windows_to_1d

    rng = np.random.default_rng(17)
    length, c, o = 16, 3, 8
    inits = {"ax1": np.array([-3], np.int64), "ax2": np.array([2], np.int64), "ax3": np.array([3], np.int64),
             "one": np.array([1], np.int64), "to_pool": np.array([-1, o, length, 1], np.int64),
             "w1": rng.normal(size=(o, c, 1, 3)).astype(np.float32),
             "w2": rng.choice([-1.0, 1.0], (o, o, 1, 3)).astype(np.float32),
             "t1": rng.normal(size=(o, 1)).astype(np.float32), "g2": rng.uniform(0.5, 2, (o, 1)).astype(np.float32),
             "wf": rng.normal(size=(o, 4)).astype(np.float32)}
    nodes = [helper.make_node("Unsqueeze", ["x", "ax1"], ["x4"]),
             helper.make_node("Transpose", ["x4"], ["x4t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["x4t", "w1"], ["c1"], pads=[0, 1, 0, 1]),
             helper.make_node("Squeeze", ["c1", "ax2"], ["c1s"]),
             helper.make_node("Add", ["c1s", "t1"], ["a1"]), helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("Transpose", ["r1"], ["r1t"], perm=[0, 2, 1]),
             helper.make_node("Sign", ["r1t"], ["s1"]),
             helper.make_node("Unsqueeze", ["s1", "ax1"], ["s4"]),
             helper.make_node("Transpose", ["s4"], ["s4t"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["s4t", "w2"], ["c2"], pads=[0, 1, 0, 1]),
             helper.make_node("Squeeze", ["c2", "ax2"], ["c2s"]),
             helper.make_node("Mul", ["c2s", "g2"], ["m2"]),
             helper.make_node("Unsqueeze", ["m2", "one"], ["m4"]),
             helper.make_node("Reshape", ["m4", "to_pool"], ["m4r"]),
             helper.make_node("MaxPool", ["m4r"], ["p"], kernel_shape=[2, 1], strides=[2, 1]),
             helper.make_node("Squeeze", ["p", "ax3"], ["ps"]),
             helper.make_node("GlobalAveragePool", ["ps"], ["gp"]),
             helper.make_node("Squeeze", ["gp", "ax2"], ["f"]),
             helper.make_node("MatMul", ["f", "wf"], ["y"])]
    model = _model(nodes, inits, (1, length, c), (1, 4))
    one_d = unit_axis_windows_to_1d(model)
    assert "Unsqueeze" not in [n.op_type for n in one_d.graph.node]
    assert [n.output[0] for n in one_d.graph.node if n.op_type == "Squeeze"] == ["f"]  # the GAP's, as it was
    assert [n.op_type for n in one_d.graph.node].count("Transpose") == 1  # at the input
    x = rng.normal(size=(1, length, c)).astype(np.float32)
    assert np.array_equal(OriginalModel(model).run(x), OriginalModel(one_d).run(x))
    assert np.array_equal(OriginalModel(model).run(x), OriginalModel(canonicalize(model)).run(x))
    g = _check(model, Options(input_range=(-128, 127), input_scale=1 / 64), exact=False)
    q = next(op for op in g.ops() if isinstance(op, ir.InputQuantize))
    assert q.channels_last and [op.w.shape[1:3] for op in g.ops() if isinstance(op, ir.Conv)][:2] == [(1, 3), (1, 3)]


@pytest.mark.parametrize("form", ["qonnx", "qcdq"])
def test_one_d_network_with_quantized_weights(form):
    """Brevitas's QuantConv1d: the weights (O, I, k) reach the Conv through a quantizer (QONNX Quant
    with per-channel scales (O, 1, 1), or QCDQ's DequantizeLinear with per-axis scales); the 1-D
    network is lifted with them, and the Conv reads them as 2-D weights."""
    rng = np.random.default_rng(3)
    c, o, k = 4, 6, 5
    w = rng.integers(-7, 8, size=(o, c, k)).astype(np.float32)
    s = rng.uniform(0.01, 0.1, size=(o, 1, 1)).astype(np.float32)
    inits = {"w": w, "s": s, "zp": np.float32(0), "bw": np.float32(4), "xs": np.float32(1 / 64),
             "wf": rng.normal(size=(10, o * 16)).astype(np.float32), "t": rng.normal(size=(o, 1)).astype(np.float32)}
    if form == "qonnx":
        weights = [helper.make_node("Quant", ["w", "s", "zp", "bw"], ["wq"], domain="qonnx.custom_op.general",
                                    signed=1, narrow=0, rounding_mode="ROUND")]
    else:
        inits.update(w=w.astype(np.int8), s=s.reshape(o), zp8=np.zeros(o, np.int8))
        weights = [helper.make_node("DequantizeLinear", ["w", "s", "zp8"], ["wq"], axis=0)]
    nodes = [helper.make_node("Quant", ["x", "xs", "zp", "bw"], ["xq"], domain="qonnx.custom_op.general",
                              signed=1, narrow=0, rounding_mode="ROUND"), *weights,
             helper.make_node("Conv", ["xq", "wq"], ["a"], pads=[2, 2]),
             helper.make_node("Add", ["a", "t"], ["b"]), helper.make_node("Relu", ["b"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "q1d", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                          [numpy_helper.from_array(np.asarray(v), n) for n, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13),
                                                helper.make_opsetid("qonnx.custom_op.general", 1)])
    graph = _check(model, Options(), exact=False)
    conv = next(op for op in graph.ops() if isinstance(op, ir.Conv))
    assert conv.w.shape[1:3] == (1, k)
