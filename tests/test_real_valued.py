"""Real-valued (float) layers and declared sensor inputs: weights on a per-channel power-of-two
grid, the float input as a fixed-point tensor, grouped convolutions, and the error bounds."""

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnnc import driver, error_bounds, ir, targets
from bnnc.cli import main
from bnnc.errors import BnncError
from bnnc.original import OriginalModel
from bnnc.passes.quantize_input import InputAffine
from bnnc.pipeline import Options, compile_graph
from bnnc.testing import random_models
from bnnc.weight_codes import real_grid

IMAGENET = InputAffine((("div", (255.0,)), ("sub", (0.485, 0.456, 0.406)), ("div", (0.229, 0.224, 0.225))))


@pytest.mark.parametrize("seed", range(4))
def test_real_grid_bounds_and_exact_rows(seed):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(6, 40)).astype(np.float32) * np.float32(10.0 ** rng.integers(-4, 3))
    w[1] = 0  # a pruned row
    w[2] = np.float32(0.125) * rng.integers(-7, 8, size=40)  # already on a coarse grid: exact
    for max_int in (2**24, 2**12, 127):
        k, unit, err = real_grid(w, max_int)
        assert np.abs(k).max() <= max_int
        diff = np.abs(w.astype(np.float64) - k * unit[:, None])
        assert np.all(diff <= err[:, None] * unit[:, None])  # the stated bound holds
        assert err[1] == 0 and not k[1].any()
    k, unit, err = real_grid(w, 2**24)
    assert err[2] == 0 and np.array_equal(k[2] * unit[2], w[2].astype(np.float64))


def _float_cnn(seed: int, group: int = 1):
    """Float stem conv (+ BN folded by hand) -> Relu -> [grouped conv] -> Sign -> binary conv ->
    GAP -> float Gemm: the shape of most real networks' ends."""
    rng = np.random.default_rng(seed)
    c1, c2 = 8, 16
    inits = {
        "w1": rng.normal(size=(c1, 3, 3, 3)).astype(np.float32),
        "b1": rng.normal(size=c1).astype(np.float32),
        "wg": rng.normal(size=(c1, c1 // group, 3, 3)).astype(np.float32),
        "t": rng.normal(size=(1, c1, 1, 1)).astype(np.float32),
        "w2": rng.choice([-1.0, 1.0], size=(c2, c1, 3, 3)).astype(np.float32),
        "wf": rng.normal(size=(10, c2)).astype(np.float32),
        "bf": rng.normal(size=10).astype(np.float32),
        "shape": np.array([1, c2], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["a1"], name="stem", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["a1"], ["r1"], name="relu"),
        helper.make_node("Conv", ["r1", "wg"], ["g1"], name="dw", pads=[1, 1, 1, 1], group=group),
        helper.make_node("Sub", ["g1", "t"], ["s0"], name="shift"),
        helper.make_node("Sign", ["s0"], ["s1"], name="sign"),
        helper.make_node("Conv", ["s1", "w2"], ["a2"], name="bconv", pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["a2"], ["p"], name="gap"),
        helper.make_node("Reshape", ["p", "shape"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    g = helper.make_graph(nodes, "float_cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 12, 12])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("seed,group", [(0, 1), (1, 8), (2, 2)])
def test_float_layers_on_declared_pixels_match_onnxruntime_and_c(seed, group):
    model = _float_cnn(seed, group)
    graph = compile_graph(model, Options(input_range=(0, 255), input_affine=IMAGENET))
    stem = next(op for op in graph.ops() if isinstance(op, ir.Conv))
    assert stem.code == "int" and stem.weight_error is not None
    inq = next(op for op in graph.ops() if isinstance(op, ir.InputQuantize))
    assert inq.notes and "fixed-point input" in inq.notes[0]
    x = driver.random_samples(graph, 40, seed)
    inputs = driver.prepare_inputs(graph, x)
    ref = driver.run_target(graph, "ref", inputs)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    # the reference is exact arithmetic on the represented values: it agrees with float32 onnxruntime
    # except where a sign sits within float32 rounding of 0
    agree = (ref.argmax(1) == orig.argmax(1)) & (np.abs(ref - orig).max(1) <= 1e-4 * max(1.0, np.abs(orig).max()))
    assert agree.mean() >= 0.9
    y, _ = targets.run(graph, "c", inputs.grid, targets.TargetOptions())
    assert np.array_equal(y, ref)


def test_grouped_weights_are_block_diagonal():
    model = _float_cnn(3, group=4)
    graph = compile_graph(model, Options(input_range=(0, 255), input_affine=IMAGENET))
    dw = [op for op in graph.ops() if isinstance(op, ir.Conv)][1]
    w = ir.int_weights(dw)
    o, _, _, c = w.shape
    for i in range(o):
        live = np.flatnonzero(np.abs(w[i]).sum(axis=(0, 1)))
        assert np.all(live // (c // 4) == i // (o // 4))  # only the row's own group


def test_input_flags_parse_negative_ranges_and_per_channel_lists(tmp_path, capsys):
    model = _float_cnn(4)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    assert main(["report", str(path), "--input-range", "-128:127", "--input-scale", "0.01,0.02,0.03",
                 "--input-offset", "-0.5,0,0.5"]) == 0
    out = capsys.readouterr().out
    assert "L02_conv" in out and "real-valued" in out and "error bound" in out
    assert main(["report", str(path), "--input-scale", "1/255,0.5,0.5"]) == 2
    assert "every channel" in capsys.readouterr().err
    assert main(["report", str(path), "--input-range", "0:255", "--input-mean", "1,2"]) == 2
    assert "do not match the input shape" in capsys.readouterr().err


def _wide_residual(seed: int, gain: float):
    """Float stem conv * gain -> a; float conv of a -> b; a + b -> Relu -> AveragePool 2x2 ->
    float Gemm: streams whose worst case (set by `gain`) decides their grids."""
    rng = np.random.default_rng(seed)
    c = 4
    inits = {
        "w1": rng.normal(size=(c, 3, 3, 3)).astype(np.float32),
        "g": np.array(gain, np.float32),
        "w2": (rng.normal(size=(c, c, 1, 1)) * 0.5).astype(np.float32),
        "wf": rng.normal(size=(10, c * 4 * 4)).astype(np.float32),
        "shape": np.array([1, c * 4 * 4], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a0"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["a0", "g"], ["a"], name="gain"),
        helper.make_node("Conv", ["a", "w2"], ["b"], name="branch"),
        helper.make_node("Add", ["a", "b"], ["s"], name="residual"),
        helper.make_node("Relu", ["s"], ["r"], name="relu"),
        helper.make_node("AveragePool", ["r"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Reshape", ["p", "shape"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "wf"], ["y"], name="fc", transB=1),
    ]
    g = helper.make_graph(nodes, "wide_residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("seed", range(3))
def test_streams_take_the_finest_grid_their_worst_case_fits(seed):
    """Each stream gets the finest grid (up to 2^-24) on which every value it can reach fits 31
    bits; the residual sum of two such streams rounds to a coarser grid, the window sum reads a
    stream narrowed to fit 32 bits: nothing can saturate, C == reference, and the reference
    follows float32 onnxruntime within the stated rounding."""
    model = _wide_residual(seed, 10.0)
    graph = compile_graph(model, Options(input_range=(0, 255), input_affine=IMAGENET))
    rq = [op.epilogue for op in graph.ops() if isinstance(getattr(op, "epilogue", None), ir.Requantize)]
    assert rq and all(ep.reach <= max(ep.hi, -ep.lo) * ep.out_scale for ep in rq)
    assert all(2.0**-24 <= ep.out_scale <= 2.0**-16 for ep in rq)
    add = next(op for op in graph.ops() if isinstance(op, ir.Add))
    assert add.round_shift > 0
    assert any("residual Add" in a and "rounded" in a for a in driver.approximations(graph))
    assert not any("saturates" in a for a in driver.approximations(graph))
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 30, seed))
    ref = driver.run_target(graph, "ref", inputs)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    assert np.abs(ref - orig).max() <= 1e-5 * np.abs(orig).max()
    y, _ = targets.run(graph, "c", inputs.grid, targets.TargetOptions())
    assert np.array_equal(y, ref)


def test_reachable_saturation_is_stated():
    """A stream whose worst case exceeds 31 bits even on the coarsest grid allowed saturates there,
    and the approximations say so (with the value it can reach)."""
    model = _wide_residual(0, 3e6)
    graph = compile_graph(model, Options(input_range=(0, 255), input_affine=IMAGENET))
    stated = [a for a in driver.approximations(graph) if "saturates" in a]
    assert stated and "16384" in stated[0] and "worst case reaches" in stated[0]


@pytest.mark.parametrize("head", ["conv", "sign"])
def test_feature_map_outputs_are_in_the_models_order(head):
    """A model that ends in a feature map (a float conv, or a sign activation) outputs (C, H, W)
    as the ONNX model does, on the reference and in C, though bnnc's tensors are (H, W, C)."""
    rng = np.random.default_rng(5)
    inits = {"w": rng.normal(size=(5, 3, 3, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c" if head == "sign" else "y"], pads=[1, 1, 1, 1])]
    if head == "sign":
        nodes.append(helper.make_node("Sign", ["c"], ["y"]))
    g = helper.make_graph(nodes, "fmap", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 4, 6])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    graph = compile_graph(model, Options(input_range=(-128, 127), input_scale=1.0))
    assert graph.output_info["channels_first"]
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 6, 0))
    ref = driver.run_target(graph, "ref", inputs)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    assert ref.shape == (6, 5, 4, 6)
    assert np.abs(ref - orig).max() <= 1e-5 * np.abs(orig).max()
    assert np.array_equal(driver.run_target(graph, "c", inputs), ref)


@pytest.mark.parametrize("declared", ["imagenet", "scale"])
def test_an_input_read_by_two_layers_is_quantized_once(declared):
    """Two float convolutions reading the model input (an Inception / two-branch stem) share one
    quantization of it: on the fixed-point grid of a declared normalisation, or the integers
    themselves with each layer folding its own scale; C == reference, which follows onnxruntime."""
    rng = np.random.default_rng(7)
    inits = {"w1": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
             "w2": rng.normal(size=(4, 3, 1, 1)).astype(np.float32), "k": np.array(0.5, np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["x", "k"], ["xk"]),
             helper.make_node("Conv", ["xk" if declared == "scale" else "x", "w2"], ["b"]),
             helper.make_node("Add", ["a", "b"], ["s"]),
             helper.make_node("GlobalAveragePool", ["s"], ["y"])]
    g = helper.make_graph(nodes, "two_readers", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    opts = Options(input_range=(0, 255), input_affine=IMAGENET) if declared == "imagenet" else \
        Options(input_range=(-128, 127), input_scale=1.0)
    graph = compile_graph(model, opts)
    assert sum(isinstance(op, ir.InputQuantize) for op in graph.ops()) == 1
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 8, 1))
    ref = driver.run_target(graph, "ref", inputs)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    assert np.abs(ref - orig).max() <= 1e-4 * max(1.0, np.abs(orig).max())
    assert np.array_equal(driver.run_target(graph, "c", inputs), ref)


@pytest.mark.parametrize("pool", ["average", "max"])
def test_sign_after_a_pool_of_a_rounded_stream_stays_binary(pool):
    """Sign of a value bnnc rounds (a float conv's stream, then a padded average pool as a window
    sum, or a max pool before a negative BatchNorm scale) maps an exact 0 to +1 also behind the
    pool: the next layer reads bits (binary MACs), not a ternary activation."""
    rng = np.random.default_rng(3)
    inits = {"w1": rng.normal(size=(6, 3, 3, 3)).astype(np.float32),
             "g": (rng.normal(size=(1, 6, 1, 1)) * (-1 if pool == "max" else 1)).astype(np.float32),
             "t": rng.normal(size=(1, 6, 1, 1)).astype(np.float32),
             "w2": rng.choice([-1.0, 1.0], size=(8, 6, 3, 3)).astype(np.float32)}
    pool_node = helper.make_node("AveragePool", ["a"], ["p"], kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                                 count_include_pad=1) if pool == "average" else \
        helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[2, 2], strides=[2, 2])
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]), pool_node,
             helper.make_node("Mul", ["p", "g"], ["m"]), helper.make_node("Add", ["m", "t"], ["n"]),
             helper.make_node("Sign", ["n"], ["s"]), helper.make_node("Conv", ["s", "w2"], ["b"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["b"], ["y"])]
    g = helper.make_graph(nodes, "pool_sign", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 1, 1])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    graph = compile_graph(model, Options(input_range=(0, 255), input_affine=IMAGENET))
    last = [op for op in graph.ops() if isinstance(op, ir.Conv)][-2]  # the binary conv (the output's is after it)
    assert last.code == "binary" and isinstance(graph.tensors[last.inputs[0]], ir.Bits)
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 8, 2))
    ref = driver.run_target(graph, "ref", inputs)
    assert np.array_equal(driver.run_target(graph, "c", inputs), ref)


def _observed_and_bound(model, n: int, seed: int, tie_tensor: str = ""):
    """(largest |reference - float64 evaluation of the model| at the output, the stated end-to-end
    bound) over n samples; with `tie_tensor` (the value a sign reads), only samples where no value
    lies within the sign's stated margin of 0 (near ties: the bound after it assumes none)."""
    graph = compile_graph(model, Options(input_range=(0, 255), input_affine=IMAGENET))
    bounds = error_bounds.end_to_end(graph)
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, n, seed))
    ref = driver.run_target(graph, "ref", inputs)
    env = random_models.evaluate(model, inputs.model.astype(np.float64))
    real = env[model.graph.output[0].name].reshape(ref.shape)
    keep = np.ones(len(ref), bool)
    if tie_tensor:
        margin = max(b.tie_margin for b in bounds.layers.values())
        assert margin > 0
        keep = np.abs(env[tie_tensor]).reshape(len(ref), -1).min(axis=1) > margin
        assert keep.mean() >= 0.5
    return float(np.abs(ref - real)[keep].max()), error_bounds.output_bound(graph, bounds), graph, bounds


def test_end_to_end_bounds_hold_and_are_not_absurdly_loose():
    """On random real-valued networks (every layer a float one, roundings carried through convs,
    BatchNorm, MaxPool, residual Adds and average pools) and on a float network with a sign in
    it, the reference stays within the stated end-to-end bound of float64 arithmetic on the
    original model, and the bound is within 1000x of what the samples show on some of them."""
    ratios = []
    cases = [(random_models.real_valued_model(seed), "") for seed in range(6)]
    cases += [(_wide_residual(seed, gain), "") for seed, gain in ((0, 1.0), (1, 100.0))]
    cases += [(_float_cnn(seed, group), "s0") for seed, group in ((0, 1), (1, 8))]
    for i, (model, tie) in enumerate(cases):
        observed, bound, graph, bounds = _observed_and_bound(model, 60, i, tie)
        assert observed <= bound, (model.graph.name, observed, bound)
        ratios.append(bound / max(observed, 1e-300))
        # end to end: the output's bound carries more than the last layer's own rounding
        last = bounds.layers[graph.producer(graph.output).name]
        assert last.end_to_end > last.local > 0
    assert min(ratios) < 1000 and sum(r < 1000 for r in ratios) >= 2, ratios


def test_local_bounds_understate_what_a_layer_inherits():
    """A stream read by the next float layer: its error reaches the layer's output, scaled by the
    layer's weights (the local acc_error counts only the input's own rounding)."""
    graph = compile_graph(_wide_residual(0, 100.0), Options(input_range=(0, 255), input_affine=IMAGENET))
    bounds = error_bounds.end_to_end(graph)
    convs = [op for op in graph.ops() if isinstance(op, ir.Conv)]
    stem, branch = convs[0], convs[1]
    assert bounds.layers[stem.name].end_to_end == pytest.approx(
        float(bounds.tensors[stem.outputs[0]].max()))
    inherited = bounds.tensors[stem.outputs[0]]
    w = np.abs(ir.int_weights(branch)).sum(axis=(1, 2)) * branch.unit[:, None]  # (O, C) sum of |weights|
    assert bounds.layers[branch.name].end_to_end >= float((w @ inherited).max()) > bounds.layers[branch.name].local


def test_report_shows_local_and_end_to_end_bounds(tmp_path, capsys):
    model = _wide_residual(2, 10.0)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    flags = ["--input-range", "0:255", "--input-scale", "1/255", "--input-mean", "0.485,0.456,0.406",
             "--input-std", "0.229,0.224,0.225"]
    assert main(["report", str(path), *flags, "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "end-to-end <=" in out and "output: end-to-end error bound" in out
    rep = json.loads((tmp_path / "r.json").read_text())
    rows = {r["name"]: r for r in rep["layers"]}
    dense = [r for r in rep["layers"] if r["op"] == "Dense"][-1]
    assert dense["end_to_end_error_bound"] > dense["error_bound"] > 0
    assert rep["totals"]["output_error_bound"] == pytest.approx(dense["end_to_end_error_bound"])
    assert all("end_to_end_error_bound" in r for r in rows.values())


def _summed_float_convs(seed: int, branches: tuple):
    """Float stem conv -> Relu -> the sum of the float convolutions named in `branches` ("a", "b";
    both read the stem's stream: one accumulator, ir.ConvSum) -> the output."""
    rng = np.random.default_rng(seed)
    c = 4
    inits = {"w1": rng.normal(size=(c, 3, 3, 3)).astype(np.float32),
             "wa": rng.normal(size=(c, c, 3, 3)).astype(np.float32),
             "wb": (rng.normal(size=(c, c, 3, 3)) * 3.0).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a0"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a0"], ["r"], name="relu")]
    nodes += [helper.make_node("Conv", ["r", "w" + b], [b], name="conv_" + b, pads=[1, 1, 1, 1]) for b in branches]
    out = branches[0]
    if len(branches) == 2:
        nodes.append(helper.make_node("Add", list(branches), ["y"], name="sum"))
        out = "y"
    g = helper.make_graph(nodes, "summed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, [1, c, 6, 6])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items() if k[1:] in ("1",) + branches])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("seed", range(3))
def test_a_sum_of_float_convolutions_states_every_terms_error(seed):
    """Two float convolutions of one stream, summed, become one Conv: its stated error is the sum of
    what each term states alone (not the first term's), and the end-to-end bound holds."""
    def last_conv(branches):
        graph = compile_graph(_summed_float_convs(seed, branches), Options(input_range=(0, 255),
                                                                          input_affine=IMAGENET))
        return [op for op in graph.ops() if isinstance(op, ir.Conv)][1]
    summed, a, b = last_conv(("a", "b")), last_conv(("a",)), last_conv(("b",))
    assert summed.source_ops[:2] == ["conv_a", "conv_b"]  # one accumulator for both
    assert a.acc_error.any() and b.acc_error.any()
    np.testing.assert_allclose(summed.acc_error, a.acc_error + b.acc_error, rtol=1e-6)
    assert np.all(summed.weight_error >= np.maximum(a.weight_error, b.weight_error))
    observed, bound, _, _ = _observed_and_bound(_summed_float_convs(seed, ("a", "b")), 40, seed)
    assert observed <= bound


def test_verify_holds_rounded_models_to_their_stated_bound(monkeypatch):
    """A model of real-valued layers only (no sign or quantizer step, so no near tie): its end-to-end
    bound holds on every input, and verify requires every sample within the tolerance plus that
    bound, not top-1 alone. With the bound (wrongly) stated as 0 and a tolerance below the
    weights' rounding, the same outputs fail."""
    import bnnc
    from bnnc import verify as verify_module

    rng = np.random.default_rng(5)
    inits = {"w": rng.normal(size=(6, 3, 3, 3)).astype(np.float32), "wf": rng.normal(size=(10, 6)).astype(np.float32),
             "shape": np.array([1, 6], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]), helper.make_node("Reshape", ["p", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "wf"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "real", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = bnnc.compile(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), "ref",
                     input_scale="1/64", input_range="-128:127")
    assert driver.output_bound_holds(m.graph) and driver.approximations(m.graph)
    result = m.verify(samples=10)
    assert result.passed and "the stated output bound" in result.text
    monkeypatch.setattr(verify_module.error_bounds, "output_bound", lambda graph: 0.0)
    assert not m.verify(samples=10, rtol=1e-12).passed


def test_verify_holds_most_samples_of_a_model_with_near_ties_to_its_bound(monkeypatch):
    """A float CNN with a sign whose steps lie within float32 rounding of their boundary: top-1 on
    the agreement fraction, and at least half the samples within the tolerance plus the stated
    bound. Outputs off by a uniform factor (the kind of error a lost scale makes) keep top-1 but
    fail."""
    import bnnc
    from bnnc import verify as verify_module

    m = bnnc.compile(_float_cnn(0), "ref", input_scale="1/64", input_range="-128:127")
    assert driver.output_bound_exceptions(m.graph) == {"near ties"}
    result = m.verify(samples=20)
    assert result.passed and "near ties: at least half required" in result.text
    original = verify_module.run_original
    monkeypatch.setattr(verify_module, "run_original", lambda model, x: original(model, x) * 1.25)
    result = m.verify(samples=20)
    assert not result.passed and result.agree == 20  # top-1 holds on every sample


@pytest.mark.parametrize("size,k,s,pads,ceil,include", [
    (7, 3, 2, [1, 1, 1, 1], 0, 0),          # count_include_pad=0: fewer taps at the border
    (8, 3, 1, "SAME_UPPER", 0, 0),           # Keras AveragePooling2D(padding='same')
    (7, 2, 2, [0, 0, 0, 0], 1, 0),           # Bi-Real's downsample with ceil_mode on an odd map
    (6, 3, 2, [1, 1, 1, 1], 1, 1),           # ceil_mode's overhang is not counted, the padding is
    (5, 3, 2, [0, 1, 0, 1], 1, 0)])
def test_average_pool_whose_divisor_changes_near_the_border(size, k, s, pads, ceil, include):
    """An AveragePool whose divisor n[y, x] differs near the border is a SumPool of the taps inside
    the input times lcm / n[y, x], on the grid scale / lcm: exact on an exact stream (integer
    weights on integer inputs), equal to onnxruntime's float32 average to its rounding; C == the
    reference bit for bit; the FPGA backends refuse it in one line."""
    rng = np.random.default_rng(size * 10 + k)
    pad_attr = {"auto_pad": pads} if isinstance(pads, str) else {"pads": pads}
    inits = {"w1": rng.integers(-3, 4, size=(4, 3, 3, 3)).astype(np.float32),
             "w2": rng.normal(size=(5, 4, 2, 2)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["a"], ["p"], kernel_shape=[k, k], strides=[s, s], ceil_mode=ceil,
                              count_include_pad=include, **pad_attr),
             helper.make_node("Conv", ["p", "w2"], ["y"])]
    g = helper.make_graph(nodes, "border_pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                               [1, 3, size, size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v, n) for n, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    graph = compile_graph(model, Options(input_range=(-128, 127), input_scale=1.0))
    ir.verify(graph)
    pool = next(op for op in graph.ops() if isinstance(op, ir.SumPool))
    assert pool.multipliers is not None and len(np.unique(pool.gains(graph.tensors[pool.inputs[0]].shape[:2]))) >= 1
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 8, 3))
    ref = driver.run_target(graph, "ref", inputs)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    assert np.abs(ref - orig).max() <= 1e-5 * np.abs(orig).max()
    assert np.array_equal(driver.run_target(graph, "c", inputs), ref)
    for target in ("hls", "verilog"):
        with pytest.raises(BnncError, match="divisor changes near the border"):
            targets.compile_files(graph, target, targets.options_for(target, targets.TargetOptions()))


@pytest.mark.parametrize("layout", ["nchw_view", "nhwc_reshape", "nhwc_batchnorm"])
def test_dense_output_reshaped_into_a_map(layout):
    """A dense layer's output reshaped into a feature map: PyTorch's Linear -> view(N, C, H, W) ->
    BatchNorm2d -> Relu, and Keras's Dense -> Reshape((H, W, C)) as tf2onnx writes it (Reshape to
    (N, H, W, C), Transpose to NCHW, the BatchNormalization before or after it) -> Conv. The vector
    becomes an (H, W, C) map (ir.Unflatten; PyTorch's (C, H, W) order moved by its table);
    C == reference; reference == onnxruntime to the stated roundings."""
    rng = np.random.default_rng(4)
    c, h, w, d_in = 3, 4, 5, 6
    inits = {"wd": rng.normal(size=(d_in, c * h * w)).astype(np.float32),
             "bd": rng.normal(size=(c * h * w,)).astype(np.float32),
             "wc": rng.normal(size=(4, c, 3, 3)).astype(np.float32),
             "g": rng.uniform(0.5, 2, size=(1, c, 1, 1)).astype(np.float32),
             "t": rng.normal(size=(1, c, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "wd"], ["m"]), helper.make_node("Add", ["m", "bd"], ["d"])]
    bn = [helper.make_node("Mul", ["map", "g"], ["s"]), helper.make_node("Add", ["s", "t"], ["n"]),
          helper.make_node("Relu", ["n"], ["r"])]
    if layout == "nchw_view":
        inits["shape"] = np.array([1, c, h, w], np.int64)
        nodes += [helper.make_node("Reshape", ["d", "shape"], ["map"])] + bn
    elif layout == "nhwc_reshape":
        inits["shape"] = np.array([-1, h, w, c], np.int64)
        nodes += [helper.make_node("Reshape", ["d", "shape"], ["nhwc"]),
                  helper.make_node("Transpose", ["nhwc"], ["map"], perm=[0, 3, 1, 2])] + bn
    else:  # Keras's BatchNormalization on the (N, H, W, C) map, before tf2onnx's Transpose to the Conv
        inits["shape"] = np.array([-1, h, w, c], np.int64)
        inits["g"], inits["t"] = inits["g"].reshape(c), inits["t"].reshape(1, 1, 1, c)
        nodes += [helper.make_node("Reshape", ["d", "shape"], ["map"])] + bn[:2] + [
            helper.make_node("Relu", ["n"], ["nr"]), helper.make_node("Transpose", ["nr"], ["r"], perm=[0, 3, 1, 2])]
    nodes += [helper.make_node("Conv", ["r", "wc"], ["y"], pads=[1, 1, 1, 1])]
    g = helper.make_graph(nodes, "dense_to_map", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, d_in])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, h, w])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    graph = compile_graph(model, Options(input_range=(-128, 127), input_scale=1 / 64))
    ir.verify(graph)
    unflat = next(op for op in graph.ops() if isinstance(op, ir.Unflatten))
    assert graph.tensors[unflat.outputs[0]].shape == (h, w, c)
    assert (unflat.order is None) == (layout != "nchw_view")
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 8, 5))
    ref = driver.run_target(graph, "ref", inputs)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    assert np.abs(ref - orig).max() <= 1e-4 * max(1.0, np.abs(orig).max())
    assert np.array_equal(driver.run_target(graph, "c", inputs), ref)
    for target in ("hls", "verilog"):
        with pytest.raises(BnncError, match="Unflatten|cannot hold"):
            targets.compile_files(graph, target, targets.options_for(target, targets.TargetOptions()))


def _exact_model(nodes, inits, x_shape, name, input_range=(-128, 127)) -> ir.Graph:
    """The model of `nodes` on an integer input of `x_shape` (integer weights, dyadic constants:
    exact streams), compiled and checked: ir.verify, the reference equal to onnxruntime to the float32
    rounding of its last mean, C equal to the reference on 8 samples."""
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()
                           if any(k in n.input for n in nodes)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    graph = compile_graph(model, Options(input_range=input_range, input_scale=1.0))
    ir.verify(graph)
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 8, 6))
    ref = driver.run_target(graph, "ref", inputs)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    assert np.abs(ref - orig).max() <= 2**-20 * max(1.0, np.abs(orig).max())
    assert np.array_equal(driver.run_target(graph, "c", inputs), ref)
    return graph


@pytest.mark.parametrize("op,n_inputs", [("Max", 2), ("Min", 2), ("Max", 3)])
def test_maximum_and_minimum_of_streams(op, n_inputs):
    """Keras's Maximum / Minimum merges (ONNX Max / Min of activations) as a + relu(b - a) and
    a - relu(a - b) of fixed-point streams: exact on exact streams (integer weights on integer
    inputs, dyadic scales), C == reference, which is onnxruntime's to the float32 rounding of its
    mean."""
    rng = np.random.default_rng(n_inputs)
    inits = {f"w{i}": rng.integers(-3, 4, size=(4, 3, 3, 3)).astype(np.float32) for i in range(n_inputs)}
    inits["half"] = np.array(0.5, np.float32)
    nodes = [helper.make_node("Conv", ["x", f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]) for i in range(n_inputs)]
    nodes += [helper.make_node("Mul", ["c1", "half"], ["c1h"]),
              helper.make_node(op, ["c0", "c1h"] + [f"c{i}" for i in range(2, n_inputs)], ["m"]),
              helper.make_node("GlobalAveragePool", ["m"], ["y"])]
    _exact_model(nodes, inits, (1, 3, 6, 6), "extremum")


def test_border_average_pools_on_random_geometries():
    """40 random AveragePool geometries (kernel, stride, pads or auto_pad, ceil_mode,
    count_include_pad, rectangular maps) on an exact stream: the reference equals onnxruntime's
    float32 average to its rounding, and the divisors bnnc reads off onnxruntime are each window's
    own (taps inside the input, or with the counted padding); C == reference on a sample of them."""
    rng = np.random.default_rng(40)
    checked_c = 0
    for case in range(40):
        kh, kw = (int(k) for k in rng.integers(1, 5, 2))
        sh, sw = (int(s) for s in rng.integers(1, 4, 2))
        h, w = int(rng.integers(max(kh, 3), 10)), int(rng.integers(max(kw, 3), 10))
        attrs = {"kernel_shape": [kh, kw], "strides": [sh, sw], "ceil_mode": int(rng.integers(0, 2)),
                 "count_include_pad": int(rng.integers(0, 2))}
        if rng.random() < 0.25 and sh <= kh and sw <= kw:  # (onnxruntime refuses SAME with a stride beyond the kernel)
            attrs["auto_pad"] = "SAME_UPPER" if rng.random() < 0.5 else "SAME_LOWER"
        else:
            attrs["pads"] = [int(rng.integers(0, kh)), int(rng.integers(0, kw)), int(rng.integers(0, kh)),
                             int(rng.integers(0, kw))]
        inits = {"w1": rng.integers(-3, 4, size=(3, 2, 3, 3)).astype(np.float32)}
        nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
                 helper.make_node("AveragePool", ["a"], ["y"], **attrs)]
        g = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        graph = compile_graph(model, Options(input_range=(-128, 127), input_scale=1.0))
        ir.verify(graph)
        inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 4, case))
        ref = driver.run_target(graph, "ref", inputs)
        orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
        assert np.abs(ref - orig).max() <= 2**-20 * max(1.0, np.abs(orig).max()), (case, attrs, h, w)
        pool = [op for op in graph.ops() if isinstance(op, ir.SumPool)]
        if pool and pool[0].multipliers is not None and checked_c < 6:
            checked_c += 1
            assert np.array_equal(driver.run_target(graph, "c", inputs), ref), (case, attrs)
    assert checked_c == 6


def test_border_average_pool_whose_divisors_need_too_fine_a_grid_is_refused():
    """A 13 x 13 AveragePool with count_include_pad = 0: its border divisors' lcm is about 1.3e11, so
    exact window sums on that grid would not fit 32 bits: one line naming the node, no rounding."""
    inits = {"w1": np.ones((3, 2, 3, 3), np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("AveragePool", ["a"], ["y"], name="wide.pool", kernel_shape=[13, 13], pads=[6] * 4)]
    g = helper.make_graph(nodes, "p", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 20, 20])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v, n) for n, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(BnncError, match="wide.pool.*AveragePool.*lcm 129859329600.*32 bits"):
        compile_graph(model, Options(input_range=(-128, 127), input_scale=1.0))


@pytest.mark.parametrize("layout", ["nchw_view", "nhwc_reshape"])
def test_binary_dense_output_reshaped_into_a_map(layout):
    """A binary dense layer's output (Sign after a Linear) reshaped into a map for a binary Conv:
    the bits are repacked per pixel of the map (ir.Unflatten of Bits; PyTorch's order by its
    table). Integer weights and inputs with half-integer biases: no value is near 0, so
    reference == onnxruntime exactly; C == reference."""
    rng = np.random.default_rng(9)
    c, h, w, d_in = 70, 2, 3, 5  # 70 channels: more than one word per pixel
    inits = {"wd": rng.integers(-3, 4, size=(d_in, c * h * w)).astype(np.float32),
             "bd": (rng.integers(-3, 3, size=(c * h * w,)) + 0.5).astype(np.float32),
             "wc": rng.choice([-1.0, 1.0], size=(4, c, 3, 3)).astype(np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "wd"], ["m"]), helper.make_node("Add", ["m", "bd"], ["d"]),
             helper.make_node("Sign", ["d"], ["s"])]
    if layout == "nchw_view":
        inits["shape"] = np.array([1, c, h, w], np.int64)
        nodes.append(helper.make_node("Reshape", ["s", "shape"], ["map"]))
    else:
        inits["shape"] = np.array([-1, h, w, c], np.int64)
        nodes += [helper.make_node("Reshape", ["s", "shape"], ["nhwc"]),
                  helper.make_node("Transpose", ["nhwc"], ["map"], perm=[0, 3, 1, 2])]
    nodes.append(helper.make_node("Conv", ["map", "wc"], ["y"], pads=[1, 1, 1, 1]))
    g = helper.make_graph(nodes, "binary_dense_to_map",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, d_in])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, h, w])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    graph = compile_graph(model, Options(input_range=(-128, 127), input_scale=1.0))
    ir.verify(graph)
    unflat = next(op for op in graph.ops() if isinstance(op, ir.Unflatten))
    assert isinstance(graph.tensors[unflat.outputs[0]], ir.Bits) and graph.tensors[unflat.outputs[0]].shape == (h, w, c)
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 8, 2))
    ref = driver.run_target(graph, "ref", inputs)
    assert np.array_equal(ref, OriginalModel(model).run(inputs.model).reshape(ref.shape))
    assert np.array_equal(driver.run_target(graph, "c", inputs), ref)


def _element_model(tail: str, seed: int) -> tuple:
    """(nodes, initializers) of Conv -> per-element op -> ...: `tail` "scales" (XNOR-Net++'s
    factorised scales alpha(C) beta(H) gamma(W) as one Mul, a per-channel Add, a residual Add,
    GlobalAveragePool), "sign" (the same Mul and Add, then Sign and a binary Conv) or "prelu" (PRelu
    with one slope per element, some negative), on a (1, 3, 6, 5) input. Integer weights and inputs,
    dyadic constants: every stream is exact."""
    rng = np.random.default_rng(seed)
    c, h, w = 4, 6, 5
    alpha, beta, gamma = (rng.integers(1, 5, size=n) / 4 for n in (c, h, w))
    inits = {"w0": rng.integers(-3, 4, size=(c, 3, 3, 3)).astype(np.float32),
             "w1": rng.integers(-3, 4, size=(c, 3, 3, 3)).astype(np.float32),
             "s": (alpha[:, None, None] * beta[None, :, None] * gamma[None, None, :]).astype(np.float32)[None],
             "b": (rng.integers(-8, 9, size=(1, c, 1, 1)) / 8 + 1 / 128).astype(np.float32),  # never a 0 to sign
             "wb": np.sign(rng.standard_normal((3, c, 3, 3))).astype(np.float32),
             "slope": (rng.integers(-4, 9, size=(c, h, w)) / 8).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1])]
    if tail == "prelu":
        nodes += [helper.make_node("PRelu", ["c1", "slope"], ["y"])]
    else:
        nodes += [helper.make_node("Mul", ["c1", "s"], ["m"]), helper.make_node("Add", ["m", "b"], ["mb"])]
    if tail == "scales":
        nodes += [helper.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1]),
                  helper.make_node("Add", ["mb", "c0"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["y"])]
    elif tail == "sign":
        nodes += [helper.make_node("Sign", ["mb"], ["sg"]), helper.make_node("Conv", ["sg", "wb"], ["y"])]
    return nodes, inits


@pytest.mark.parametrize("tail", ["scales", "sign", "prelu"])
def test_constants_that_vary_within_a_channel_of_a_real_valued_map(tail):
    """Per-element constants on a real-valued map (XNOR-Net++ / ReCU's factorised scales, a Keras
    PReLU's per-element slopes): the map's stream as one vector whose channels are its elements
    (ir.Flatten), the ops as one requantization per element, unflattened into the map for the
    layers after it. Exact here (dyadic constants): the reference equals onnxruntime to the
    float32 rounding of its mean, C equals the reference."""
    graph = _exact_model(*_element_model(tail, 3), (1, 3, 6, 5), tail, (-16, 15))
    flat = [op for op in graph.ops() if isinstance(op, ir.Flatten)]
    assert flat and graph.tensors[flat[0].outputs[0]].shape == (1, 1, 6 * 5 * 4)
    assert any(isinstance(op, ir.Unflatten) for op in graph.ops())


@pytest.mark.parametrize("form", ["adabin", "per_element"])
def test_signs_scaled_per_channel_or_shifted(form):
    """Sign outputs times a per-channel (or per-element: XNOR-Net's K on the binary input) constant
    plus an offset, as AdaBin's activation alpha sign(x - beta) + gamma is written: real values,
    which an identity layer's accumulator carries into the next (real-weight) conv's stream. Exact
    here (dyadic constants, integer weights): the reference equals onnxruntime to the float32
    rounding of the mean, C equals the reference."""
    rng = np.random.default_rng(5)
    c, h, w = 4, 5, 5
    shape = (1, c, 1, 1) if form == "adabin" else (1, c, h, w)
    inits = {"w0": rng.integers(-3, 4, size=(c, 3, 3, 3)).astype(np.float32),
             "beta": np.array(0.5, np.float32),
             "alpha": (rng.integers(-8, 9, size=shape) / 8).astype(np.float32),
             "gamma": (rng.integers(-8, 9, size=(1, c, 1, 1)) / 16).astype(np.float32),
             "w1": rng.integers(-2, 3, size=(3, c, 3, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Sub", ["a", "beta"], ["ab"]), helper.make_node("Sign", ["ab"], ["s"]),
             helper.make_node("Mul", ["s", "alpha"], ["sa"]), helper.make_node("Add", ["sa", "gamma"], ["q"]),
             helper.make_node("Conv", ["q", "w1"], ["b"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["b"], ["y"])]
    _exact_model(nodes, inits, (1, 3, h, w), form, (-16, 15))


def test_reference_convolutions_in_blocks_give_the_same_accumulators(monkeypatch):
    """reference.conv_accumulator gathers its windows a block at a time (of samples, or of one
    sample's output rows when one sample is larger than the block): any block size gives the same
    integers, on the float64 path (binary and integer layers) and on the wide int64 one (float
    convolutions reading fixed-point streams)."""
    from bnnc import reference, zoo
    from bnnc.testing.random_models import cnv_model

    cases, wide = [], []
    for model, opts in ((_wide_residual(0, 10.0), Options(input_range=(0, 255), input_affine=IMAGENET)),
                        (cnv_model(1), Options()), (zoo.build("bireal", 0), Options())):
        graph = compile_graph(model, opts)
        cases.append((graph, driver.prepare_inputs(graph, driver.random_samples(graph, 5, 4))))
    conv = reference.conv_accumulator

    def spy(op, x):
        w = ir.int_weights(op).reshape(op.w.shape[0], -1)
        wide.append(float(np.abs(x).max()) * float(np.abs(w).sum(axis=1).max()) >= 2.0**52)
        return conv(op, x)

    for graph, inputs in cases:
        monkeypatch.setattr(reference, "conv_accumulator", spy)
        whole = reference.run(graph, inputs.grid)
        for block in (5000, 7):  # several samples, then rows of one sample, per block
            monkeypatch.setattr(reference, "COLS_BLOCK", block)
            assert np.array_equal(reference.run(graph, inputs.grid), whole)
        monkeypatch.undo()
    assert any(wide) and not all(wide)
