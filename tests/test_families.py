"""Every compressed-network family end to end (zoo model -> IR -> reference -> C).

For each family of bnnc.zoo: C == reference bit for bit, reference == onnxruntime (identical
top-1, logits within tolerance), the IR holds the family's weight code, and `bnnc report`
accounts its storage and ops exactly. Unsupported forms are refused with the node named.
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnnc import driver, ir, reference, zoo
from bnnc.backends import c as c_backend
from bnnc.backends import c_build
from bnnc.errors import BnncError
from bnnc.original import OriginalModel
from bnnc.pipeline import compile_graph
from bnnc.report import layer_rows, report

from .conftest import sweep_scale

# Sizes that keep the whole file within a minute or two on a 2-core machine.
SMALL = {
    "resnet18-stq": {"widths": (8, 16, 16, 24), "size": 16},
    "cnv-stq40": {"widths": (10, 10, 20, 20, 40, 40), "dense": (40, 40)},
}
N_SEEDS = max(1, int(3 * sweep_scale()))
N_INPUTS = 20
SANITIZE = c_build.DEFAULT_FLAGS[:1] + ("-O1", "-g", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off",
                                         "-fsanitize=address,undefined", "-fno-sanitize-recover=all")


def build(name, seed=0, **kw):
    model = zoo.build(name, seed, **{**SMALL.get(name, {}), **kw})
    graph = compile_graph(model)
    inputs = driver.prepare_inputs(graph, zoo.inputs(model, N_INPUTS, seed=seed + 100))
    return model, graph, inputs


def convs(graph):
    return [op for op in graph.ops() if isinstance(op, ir.Conv)]


def rows_by_op(graph):
    return {r["name"]: r for r in report(driver.backend_graph(graph))["layers"]}


def check_against_onnxruntime(model, inputs, ref):
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    agree = (ref.argmax(axis=1) == orig.argmax(axis=1)).mean()
    assert agree >= 0.99, f"top-1 agrees on {agree:.0%} of the inputs"
    tol = 1e-4 * max(1.0, float(np.abs(orig).max()))
    assert np.abs(ref - orig).max() <= tol


# ----------------------------------------------------------------------------------- end to end


@pytest.mark.sweep
@pytest.mark.parametrize("seed", range(N_SEEDS))
@pytest.mark.parametrize("name", zoo.FAMILIES)
def test_family_c_equals_reference_equals_onnxruntime(name, seed):
    model, graph, inputs = build(name, seed)
    ref = driver.run_target(graph, "ref", inputs)
    c = driver.run_target(graph, "c", inputs)
    assert c.dtype == ref.dtype and np.array_equal(c, ref), f"{name} seed {seed}: C differs from the reference"
    check_against_onnxruntime(model, inputs, ref)


@pytest.mark.parametrize("name", ["ternary-ttq", "pabt", "bireal", "xnet", "w1a2", "hbn"])
def test_family_kernels_are_word_size_generic(name):
    """The same layers with 32-bit words (the Cortex-M layout) give the same numbers."""
    model, graph, inputs = build(name, 1)
    files = c_backend.render(driver.backend_graph(graph, 32), "bnnc")
    assert "#define BNNC_WORD_BITS 32" in files["model.c"]
    exe = c_build.build(files, c_build.DEFAULT_FLAGS)
    y = c_build.run(exe, inputs.grid, graph.input_info["dtype"], "float32", graph.output_info["elements"])
    assert np.array_equal(y.reshape(-1), reference.run(graph, inputs.grid).reshape(-1))


@pytest.mark.parametrize("native", [False, True], ids=["portable", "native"])
@pytest.mark.parametrize("name", ["abc-fused", "bireal", "xnet"])
def test_family_c_clean_under_sanitizers(name, native):
    """ASan + UBSan; native: the vector kernels too (-march=native), whose whole-vector reads of
    padded tables and accumulator rows must stay inside them."""
    model, graph, inputs = build(name, 2)
    flags = SANITIZE + (("-march=native",) if native else ())
    c = driver.run_target(graph, "c", driver.prepare_inputs(graph, zoo.inputs(model, 3, seed=0)), flags=flags)
    assert np.array_equal(c, driver.run_target(graph, "ref", driver.prepare_inputs(graph, zoo.inputs(model, 3, 0))))


def test_binary_models_generate_the_foundation_code():
    """Binary models use no family layer and no family header: their C is what it was."""
    model, graph, _ = build("cnv-stq40", 0)
    assert not ir.family_ops(graph)
    assert "bnnc_families.h" not in driver.render_c(graph)


# ----------------------------------------------------------------------------------- weight codes in the IR


def test_ternary_is_two_masks_and_two_scales():
    model, graph, _ = build("ternary-ttq", 0)
    rows = rows_by_op(graph)
    for op in convs(graph)[:-1]:
        assert op.code == "ternary" and len(op.bases) == 1
        b = op.bases[0]
        assert np.any(b.w == 0) and np.any(b.w > 0) and np.any(b.w < 0)
        assert np.array_equal(ir.int_weights(op), np.where(b.w > 0, b.mult_p[:, None, None, None], 0)
                              - np.where(b.w < 0, b.mult_n[:, None, None, None], 0))
        assert np.all(b.mult_p != b.mult_n)  # TTQ: w_p != w_n
        r = rows[op.name]
        o, kh, kw, c = op.w.shape
        assert r["weight_bits"] == 2 * o * kh * kw * c and r["scale_bits"] == 2 * 32 * o
        assert "2 masks" in r["storage"] and "2 scales" in r["storage"]


def test_ternary_from_qonnx_2bit_quant_uses_the_quantizer_integers():
    model, graph, _ = build("ternary-qonnx", 0)
    for op in convs(graph)[:-1]:
        assert op.code == "ternary"
        assert np.all(op.bases[0].mult_p == 1) and np.all(op.bases[0].mult_n == 1)
        assert set(np.unique(op.int_w)) <= {-1, 0, 1}
    first = convs(graph)[0]  # its 2-bit signed Quant activation: levels -2..1, exact thresholds
    assert isinstance(first.epilogue, ir.LevelThresholds) and first.epilogue.threshold.shape[1] == 3
    ty = graph.tensors[first.outputs[0]]
    assert (ty.lo, ty.hi, ty.scale) == (-2, 1, 0.25)


def test_dabn_is_two_scale():
    model, graph, _ = build("dabn", 0)
    for op in convs(graph)[:-1]:
        assert op.code == "two_scale"
        live = np.any(op.w.reshape(op.w.shape[0], -1) != 0, axis=1)
        assert np.all(op.w[live] != 0)
        assert np.any(op.bases[0].mult_p != op.bases[0].mult_n)
        assert np.allclose(op.scale_p / op.scale_n, op.bases[0].mult_p / op.bases[0].mult_n)


def test_multibit_activations_are_level_thresholds():
    model, graph, _ = build("w1a2", 0)
    levels = [op.epilogue for op in convs(graph) if isinstance(op.epilogue, ir.LevelThresholds)]
    assert len(levels) == 3 and all(ep.threshold.shape[1] == 3 for ep in levels)
    for op in convs(graph)[1:]:
        src = graph.tensors[op.inputs[0]]
        assert isinstance(src, ir.Ints) and src.hi - src.lo in (3, 6)  # 2-bit: 4 levels


def test_fused_multilevel_weights_decode_into_their_bases():
    model = zoo.build("abc-fused", 3)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    graph = compile_graph(model)
    for op in convs(graph)[:-1]:
        assert op.code == "multi_base" and len(op.bases) in (2, 3)
        onnx_w = inits[next(n for n in model.graph.node if n.name == op.source_ops[0]).input[1]]
        real = ir.int_weights(op) * op.unit[:, None, None, None]
        o, kh, kw, c = real.shape
        onnx_w = onnx_w.reshape(o, c, kh, kw).transpose(0, 2, 3, 1)  # OIHW (or a flattened CHW) -> OHWC
        assert np.array_equal(real.astype(np.float32), onnx_w)
        for b in op.bases:
            assert set(np.unique(b.w)) == {-1, 1}


def test_explicit_weight_bases_merge_into_one_layer():
    model, graph, _ = build("abc-explicit", 0)
    merged = [op for op in convs(graph) if op.code == "multi_base"]
    assert len(merged) == 1 and len(merged[0].bases) == 3
    assert sum(n.op_type == "Conv" for n in model.graph.node) == 4 and len(convs(graph)) == 3


def test_pabt_pruned_base_pairs_are_absent():
    model, graph, _ = build("pabt", 5)
    kept = [n for n in model.graph.node if n.op_type == "Conv" and n.name.startswith("conv1_m")]
    planes = [op for op in convs(graph) if isinstance(op.epilogue, ir.Thresholds) and op.epilogue.planes > 1]
    # the model computes 3 activation bases; one is read by no kept pair, and the canonical stage
    # drops it with its Sub and Sign
    assert len(planes) == 1 and planes[0].epilogue.planes == 2
    layer = next(op for op in convs(graph) if op.code == "multi_base")
    assert len(layer.bases) == len(kept)  # one base per surviving (m, n) pair
    o, kh, kw, c = layer.w.shape
    row = rows_by_op(graph)[layer.name]
    assert row["weight_bits"] == len(kept) * o * kh * kw * (c // 2)  # each pair covers one activation plane


def test_hybrid_int8_layers():
    model, graph, _ = build("hbn", 0)
    cs = convs(graph)
    assert cs[0].code == "int" and cs[-1].code == "int"
    assert isinstance(graph.tensors[cs[1].inputs[0]], ir.Ints) and cs[1].code == "binary"  # binary w, int8 x
    # int8 boundaries: 255 exact steps, whose thresholds are those of an integer multiply-shift
    qdq = [op.epilogue for op in cs if isinstance(op.epilogue, ir.Requantize)]
    assert len(qdq) == 2 and all("255 thresholds per channel as an integer multiply-shift" in ep.notes[-1]
                                 for ep in qdq)


def test_expander_connectivity_is_listed_and_reported():
    model, graph, _ = build("xnet", 0, degree=4)
    rows = rows_by_op(graph)
    sparse = [op for op in convs(graph) if op.in_lists is not None]
    assert len(sparse) == 3
    for op in sparse:
        expected = 2 if op is sparse[0] else 4
        assert all(len(x) == expected for x in op.in_lists)
        conn = rows[op.name]["connectivity"]
        assert conn["kernels_kept"] == expected * op.w.shape[0]
        assert rows[op.name]["index_bits"] > 0
    # the dense table unless under 1/8 of the kernels are kept
    assert driver.backend_graph(graph).op(sparse[0].name).packed.method == "int"


def test_residual_streams_are_exact_fixed_point():
    model, graph, _ = build("bireal", 0)
    kinds = {type(op).__name__ for op in graph.ops()}
    assert {"Add", "SumPool", "Activation"} <= kinds
    rq = [op.epilogue for op in convs(graph) if isinstance(op.epilogue, ir.Requantize)]
    assert rq and all("exactly" in ep.notes[0] for ep in rq)
    assert all(ep.out_scale == 2.0**-8 for ep in rq)


def test_onnx_sign_of_a_stream_that_can_be_zero_runs_as_ternary():
    model, graph, inputs = build("bireal", 1, sign="Sign")
    acts = [op for op in graph.ops() if isinstance(op, ir.Activation) and op.epilogue.threshold.shape[1] == 2]
    assert len(acts) == 4 and all(any("ternary" in n for n in op.epilogue.notes) for op in acts)
    for op in acts:
        ty = graph.tensors[op.outputs[0]]
        assert isinstance(ty, ir.Ints) and (ty.lo, ty.hi) == (-1, 1)
    ref = driver.run_target(graph, "ref", inputs)
    assert np.array_equal(driver.run_target(graph, "c", inputs), ref)
    check_against_onnxruntime(model, inputs, ref)


def test_structured_pruning_of_40_percent_reports_89x():
    model, graph, _ = build("cnv-stq40", 0)
    rows = report(driver.backend_graph(graph))["layers"]
    middle = [r for r in rows if r["op"] in ("Conv", "Dense")][1:-1]
    assert middle and all(r["compression"] == 88.89 for r in middle)  # 32 / (0.6 * 0.6)
    for r in middle:
        assert r["weight_bits"] * 100 == r["weight_bits_float32"] // 32 * 36


def test_resnet18_prunes_block_filters_and_matching_inputs():
    model, graph, _ = build("resnet18-stq", 0)
    firsts = [op for op in convs(graph) if ".conv1" in op.source_ops[0]]
    seconds = [op for op in convs(graph) if ".conv2" in op.source_ops[0]]
    assert len(firsts) == len(seconds) == 8
    for a, b in zip(firsts, seconds):
        assert a.removed_out >= round(0.4 * (a.w.shape[0] + a.removed_out))
        assert b.removed_in == a.removed_out


def test_report_counts_family_ops():
    model, graph, _ = build("dabn", 0)
    t = report(driver.backend_graph(graph))["totals"]
    assert t["binary_macs"] > 0 and t["popcounts"] > 0 and t["multiplies"] > 0


# ----------------------------------------------------------------------------------- refusals


def _tiny(nodes, inits, in_shape=(1, 2, 4, 4), out="y", out_shape=(1, 3), qonnx=False):
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, list(out_shape))],
                          initializer=[numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    ops = [helper.make_opsetid("", 13)] + ([helper.make_opsetid("qonnx.custom_op.general", 1)] if qonnx else [])
    m = helper.make_model(g, opset_imports=ops)
    m.ir_version = 8
    return m


def _qdq_inits():
    return {"s": np.array(1 / 64, np.float32), "z": np.array(0, np.int8)}


def _qdq_nodes():
    return [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq")]


def test_real_valued_weights_get_a_stated_grid_and_non_finite_ones_are_refused():
    rng = np.random.default_rng(0)
    inits = {**_qdq_inits(), "w": rng.normal(size=(3, 32)).astype(np.float32)}
    nodes = _qdq_nodes() + [helper.make_node("Flatten", ["xd"], ["f"], name="flat"),
                            helper.make_node("Gemm", ["f", "w"], ["y"], name="fc.real", transB=1)]
    g = compile_graph(_tiny(nodes, inits))
    fc = next(op for op in g.ops() if isinstance(op, ir.Conv))
    assert fc.code == "int" and fc.weight_error is not None and fc.acc_error is not None
    w = inits["w"].astype(np.float64)
    real = fc.unit[:, None] * ir.int_weights(fc).reshape(3, -1)  # (HWC order; rounding is monotone)
    assert np.all(np.abs(np.sort(real, 1) - np.sort(w, 1)) <= fc.weight_error[:, None] * fc.unit[:, None])
    inits["w"] = inits["w"].copy()
    inits["w"][1, 5] = np.nan
    with pytest.raises(BnncError, match=r"fc\.real.*NaN.*finite"):
        compile_graph(_tiny(nodes, inits))


def test_relu_then_scale_inside_a_residual_stream_runs_as_two_requantizations():
    rng = np.random.default_rng(0)
    w = rng.choice([-1.0, 1.0], (2, 2, 1, 1)).astype(np.float32)
    inits = {**_qdq_inits(), "w": w, "a": np.array(0.5, np.float32), "w2": np.ones((3, 32), np.float32)}
    nodes = _qdq_nodes() + [
        helper.make_node("Conv", ["xd", "w"], ["c"], name="conv", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Mul", ["r", "a"], ["m"], name="scale.after.relu"),
        helper.make_node("Add", ["m", "xd"], ["sum"], name="residual"),
        helper.make_node("Flatten", ["sum"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w2"], ["y"], name="fc", transB=1)]
    model = _tiny(nodes, inits)
    g = compile_graph(model)
    assert any(isinstance(op, ir.Activation) and isinstance(op.epilogue, ir.Requantize) for op in g.ops())
    x = np.random.default_rng(1).integers(-128, 128, size=(30, 2, 4, 4)).astype(np.float32) / 64
    inputs = driver.prepare_inputs(g, x)
    ref = driver.run_target(g, "ref", inputs)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    assert np.array_equal(ref, orig)  # every value is on the 2^-7 grid: exact
    assert np.array_equal(driver.run_target(g, "c", inputs), ref)


def test_padded_average_pool_divides_each_window_by_its_own_taps():
    """count_include_pad = 0: the 4, 6 and 9 taps of a padded 3x3 window on a 4x4 map, exactly (the
    window sums times 36 / n on the grid 1 / (64 * 36)); C == reference."""
    inits = {**_qdq_inits(), "w2": np.random.default_rng(2).normal(size=(3, 32)).astype(np.float32)}
    nodes = _qdq_nodes() + [
        helper.make_node("AveragePool", ["xd"], ["p"], name="avg.padded", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w2"], ["y"], name="fc", transB=1)]
    model = _tiny(nodes, inits)
    g = compile_graph(model)
    pool = next(op for op in g.ops() if isinstance(op, ir.SumPool))
    assert pool.multipliers.tolist() == [[9, 6, 6, 9], [6, 4, 4, 6], [6, 4, 4, 6], [9, 6, 6, 9]]
    assert g.tensors[pool.outputs[0]].scale == g.tensors[pool.inputs[0]].scale / 36
    x = np.random.default_rng(1).integers(-128, 128, size=(30, 2, 4, 4)).astype(np.float32) / 64
    inputs = driver.prepare_inputs(g, x)
    ref = driver.run_target(g, "ref", inputs)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    assert np.abs(ref - orig).max() <= 1e-5 * np.abs(orig).max()
    assert np.array_equal(driver.run_target(g, "c", inputs), ref)


def test_multithreshold_levels_off_any_integer_grid_are_refused():
    inits = {**_qdq_inits(), "w": np.ones((4, 32), np.float32), "t": np.array([[-1.0, 0.0, 1.0]] * 4, np.float32),
             "w2": np.ones((3, 4), np.float32)}
    nodes = _qdq_nodes() + [
        helper.make_node("Flatten", ["xd"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w"], ["h"], name="fc0", transB=1),
        helper.make_node("MultiThreshold", ["h", "t"], ["a"], name="act.third", domain="qonnx.custom_op.general",
                         out_scale=1.0, out_bias=float(np.float32(1 / 3))),
        helper.make_node("Gemm", ["a", "w2"], ["y"], name="fc1", transB=1)]
    with pytest.raises(BnncError, match="act.third.*not on an integer grid"):
        compile_graph(_tiny(nodes, inits, qonnx=True))


def test_adding_a_sign_output_is_refused():
    inits = {**_qdq_inits(), "w2": np.ones((3, 32), np.float32)}
    nodes = _qdq_nodes() + [
        helper.make_node("Sign", ["xd"], ["b"], name="sign"),
        helper.make_node("Add", ["b", "xd"], ["sum"], name="add.bits"),
        helper.make_node("Flatten", ["sum"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w2"], ["y"], name="fc", transB=1)]
    with pytest.raises(BnncError, match="add.bits.*binary"):
        compile_graph(_tiny(nodes, inits))


def test_model_is_valid_onnx():
    onnx.checker.check_model(zoo.build("pabt", 0), full_check=True)


@pytest.mark.parametrize("seed", range(3))
def test_residual_stream_with_float_batchnorm_agrees_on_top1(seed):
    """A Bi-Real model with trained-looking float BatchNorms in its branches is on no grid: its
    stream runs in fixed point (rounded half up) on the finest grid, at least 2^-16, that holds
    every value it can reach without saturating, C == reference exactly, and the top-1 of
    onnxruntime's float32 execution is the same on >= 99% of the inputs."""
    model = zoo.build("bireal", seed, branch="batchnorm")
    graph = compile_graph(model)
    rq = [op.epilogue for op in convs(graph) if isinstance(op.epilogue, ir.Requantize)]
    assert rq and all("rounded half up" in ep.notes[0] and ep.out_scale <= 2.0**-16 for ep in rq)
    assert all(0 < ep.reach <= ep.hi * ep.out_scale < 2 * ep.reach + 2**-16 for ep in rq)
    inputs = driver.prepare_inputs(graph, zoo.inputs(model, 100, seed=seed))
    ref = driver.run_target(graph, "ref", inputs)
    assert np.array_equal(driver.run_target(graph, "c", inputs), ref)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    assert (ref.argmax(axis=1) == orig.argmax(axis=1)).mean() >= 0.99


MCU_FAMILIES = ["ternary-ttq", "dabn", "pabt", "hbn", "xnet", "bireal"]


@pytest.mark.sweep
@pytest.mark.parametrize("name", MCU_FAMILIES)
def test_family_firmware_equals_reference(name):
    """The family kernels are word-size generic and libc-free: the Cortex-M firmware built from
    the same templates (32-bit words, software popcount) gives the reference's numbers."""
    for mod in ("unicorn", "ziglang", "elftools"):
        pytest.importorskip(mod, reason="the Cortex-M targets need the mcu extra")
    from bnnc import targets
    from bnnc.targets import TargetOptions

    model, graph, inputs = build(name, 0)
    ref = driver.run_target(graph, "ref", inputs)
    for core in ("cortex-m4",) if name != "bireal" else ("cortex-m0", "cortex-m4"):
        y, stats = targets.run(graph, core, inputs.grid, TargetOptions())
        assert np.array_equal(y.reshape(ref.shape), ref), f"{name} on {core}"
        assert stats["instructions"] > 0


# ----------------------------------------------------------------------------------- kernel paths

NATIVE = ("-std=c99", "-O3", "-march=native", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror")
PORTABLE = NATIVE + ("-DBNNC_PORTABLE",)

# Between them, every path of runtime/bnnc_families.h and templates/c/families/layer.j2: AND planes
# (TTQ), masked XNOR planes and 2-bit level counts (ternary-qonnx), an AND plane plus the window's
# popcount (DABN), integer layers on 2-bit inputs (abc-fused), multi-base planes with several
# activation planes (PaBT), int8 requantization and XNOR planes on odd widths (hbn), expander lists
# (xnet), activations of 8k and of other channel counts with 255-level guesses (bireal).
KERNEL_CASES = [("ternary-ttq", 3, {}), ("ternary-qonnx", 4, {}), ("dabn", 5, {}), ("abc-fused", 6, {}),
                ("pabt", 7, {}), ("hbn", 8, {"widths": (12, 20, 13)}), ("xnet", 9, {"widths": (12, 20, 20)}),
                ("bireal", 10, {"widths": (12, 20)}), ("bireal", 11, {})]


def check_builds(graph, inputs, builds=((64, NATIVE), (64, PORTABLE), (32, NATIVE))):
    ref = reference.run(graph, inputs.grid).reshape(-1)
    odt = "float32" if graph.output_info["dtype"] == "float32" else "int32"
    for wb, flags in builds:
        exe = c_build.build(c_backend.render(driver.backend_graph(graph, wb), "bnnc"), flags)
        y = c_build.run(exe, inputs.grid, graph.input_info["dtype"], odt, graph.output_info["elements"])
        assert np.array_equal(y.reshape(-1), ref), f"{wb}-bit words, {' '.join(flags)}: C differs from the reference"


@pytest.mark.parametrize("name,seed,kw", KERNEL_CASES)
def test_family_kernel_paths_equal_the_reference(name, seed, kw):
    """Native (-march=native: AVX-512 VPOPCNTQ, VNNI and DQ kernels where the host has them),
    portable (-DBNNC_PORTABLE) and 32-bit-word builds of the same model give the reference's numbers."""
    _, graph, inputs = build(name, seed, **kw)
    check_builds(graph, inputs)


def test_integer_sums_beyond_int32_take_the_64_bit_kernels():
    """Integer layers whose sums may leave int32 (dense and expander lists) run in 64 bits."""
    for name, kw in (("hbn", {}), ("xnet", {"degree": 2})):
        _, graph, inputs = build(name, 12, **kw)
        op = next(o for o in convs(graph) if isinstance(graph.tensors[o.inputs[0]], ir.Ints))
        op.int_w = ir.int_weights(op) * 2**20  # the same IR for the reference and the C target
        packed = driver.backend_graph(graph).op(op.name).packed
        assert not packed.acc32 and packed.weights_vnni is None
        check_builds(graph, inputs, ((64, NATIVE), (64, PORTABLE)))


def _make_ternary(graph, rng, bound: int) -> list:
    """Give every stride-1 integer-input family convolution of `graph` ternary weights {-b_o, 0, +a_o}
    (3/4 zeros or so, b_o = a_o + 1) at the edge of a proof: max|x| * sum|w_o| just at or above
    2**31 (bound 2**31: beyond int32 sums) or just below 2**62 - |corr| (bound 2**62: ternary_sums'
    own limit, where the input range lets int32 weights reach it). Returns the convolutions changed."""
    changed = []
    family = {op.name for op in ir.family_ops(graph)}
    for op in convs(graph):
        src = graph.tensors[op.inputs[0]]
        if (op.name not in family or not isinstance(src, ir.Ints) or tuple(op.stride) != (1, 1)
                or op.w[0].size < 2):
            continue
        o = op.w.shape[0]
        codes = rng.choice([-1, 0, 0, 1], size=op.w.shape)
        codes.reshape(o, -1)[:, 1::2] = 0  # half the taps zero at least (ternary_sums wants a quarter)
        codes[:, 0, 0, 0] = 1  # every channel has weights
        mag = max(abs(src.lo), abs(src.hi))
        n = np.abs(codes).reshape(o, -1).sum(axis=1)
        if bound == 2**31:
            a = -(-bound // (mag * n)) + rng.integers(0, 2, o)
        else:
            corr = int(np.abs(op.bias_kernel).sum()) if op.bias_kernel is not None else 0
            a = np.minimum((bound - 1 - corr) // (mag * n), 2**31 - 1) - 1 - rng.integers(0, 2, o)  # int32 weights
        op.int_w = np.where(codes > 0, a[:, None, None, None], np.where(codes < 0, -(a + 1)[:, None, None, None], 0))
        op.int_w = op.int_w.astype(np.int64)
        changed.append(op)
    return changed


@pytest.mark.parametrize("seed", range(N_SEEDS))
@pytest.mark.parametrize("bound", [2**31, 2**62])
def test_ternary_int64_layers_add_over_their_nonzero_taps(seed, bound):
    """Ternary integer-input layers whose sums need 64 bits run ternary_sums (adds over the nonzero
    taps' lists, pack_families), at the edge of the int32 proof (2**31: just beyond it, so not
    bnnc_int_mac) and of its own (2**62), and give the reference's numbers in native, portable and
    sanitized builds."""
    from bnnc.passes.quantize_input import InputAffine
    from bnnc.pipeline import Options
    from bnnc.testing.random_models import real_valued_model
    rng = np.random.default_rng(seed)
    pixels = Options(input_range=(0, 255), input_affine=InputAffine((("div", (255.0,)), ("sub", (0.45,)),
                                                                    ("div", (0.225,)))))
    for model, options in ((zoo.build("hbn", seed, widths=(12, 20, 13)), None), (real_valued_model(seed), pixels),
                           (real_valued_model(seed + 10), pixels)):
        graph = compile_graph(model, options) if options else compile_graph(model)
        changed = _make_ternary(graph, rng, bound)
        if not changed:
            continue
        backend = driver.backend_graph(graph)
        for op in changed:
            p = backend.op(op.name).packed
            assert p.method == "ternary_sums" and p.tsums is not None, op.name
            mag = max(abs(graph.tensors[op.inputs[0]].lo), abs(graph.tensors[op.inputs[0]].hi))
            top = mag * int(np.abs(op.int_w).reshape(op.w.shape[0], -1).sum(axis=1).max())
            assert top >= bound if bound == 2**31 else top < bound  # beyond int32; within ternary_sums' bound
        rows = {r["name"]: r for r in layer_rows(backend)}
        for op in changed:  # two multiplies per output and position (a * S_A + b * S_B), the adds not counted
            oh, ow = graph.tensors[op.outputs[0]].shape[:2]
            requant = op.w.shape[0] if isinstance(op.epilogue, ir.Requantize) else 0
            assert rows[op.name]["multiplies"] == (2 * op.w.shape[0] + requant) * oh * ow
        inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 16, seed))
        check_builds(graph, inputs, ((64, NATIVE), (64, PORTABLE), (64, SANITIZE)))


def test_ternary_sums_is_picked_only_where_it_is_exact():
    """The selector's proof at its edge: max|x| * sum|w| + |corr| < 2**62 (int64 sums with room for
    a * S_A + b * S_B), stride 1, two nonzero values per output channel at most."""
    from bnnc.passes.pack_families import ternary_sums
    from bnnc.testing.random_models import random_model
    graph = compile_graph(random_model(1)[0])
    op = next(o for o in convs(graph) if isinstance(graph.tensors[o.inputs[0]], ir.Ints))
    o, kh, kw, c = op.w.shape
    w = np.zeros((o, kh, kw, c), np.int64)
    w[:, 0, 0, 0], w[:, -1, -1, -1] = 3, -5  # sum |w| = 8 per channel
    corr = np.zeros((1, o), np.int64)
    corr[0, 0] = -7
    shape = graph.tensors[op.inputs[0]].shape
    stride = op.stride
    op.stride = (1, 1)
    edge = (2**62 - 7) // 8  # 8 * edge + 7 < 2**62 <= 8 * (edge + 1) + 7
    assert ternary_sums(op, ir.Ints(shape, -edge, edge), w, corr) is not None
    assert ternary_sums(op, ir.Ints(shape, 0, edge + 1), w, corr) is None
    assert ternary_sums(op, ir.Ints(shape, -edge - 1, 0), w, corr) is None
    w3 = w.copy()
    w3[0, 0, 0, 1 % c if c > 1 else 0] = 4 if c > 1 else 3  # a third value in channel 0 (when it has room)
    assert (ternary_sums(op, ir.Ints(shape, 0, 1), w3, corr) is None) == (c > 1)
    t = ternary_sums(op, ir.Ints(shape, 0, 1), w, corr)
    assert sorted(t["a"][:o].tolist() + t["b"][:o].tolist()) == sorted([3] * o + [-5] * o)
    assert t["start"].size == 2 * (-(-o // 8) * 8) + 1 and t["off"].size == 2 * o
    dense = np.where(np.arange(kh * kw * c).reshape(kh, kw, c) % 2 == 0, 3, -5) + np.zeros_like(w)
    assert ternary_sums(op, ir.Ints(shape, 0, 1), dense, corr) is None  # no zeros to skip
    op.stride = (2, 2)
    assert ternary_sums(op, ir.Ints(shape, 0, 1), w, corr) is None
    op.stride = stride


@pytest.mark.parametrize("pads", [(1, 1, 1, 1), (0, 0, 1, 2), (2, 1, 0, 0), (0, 2, 0, 1), (0, 0, 0, 0)])
def test_ternary_sums_tables_are_the_convolution(pads):
    """The plane image with rows sharing their zero columns (pw = iw + max(left, right)), the tap
    offsets and the positions computed and dropped, as bnnc_ternary_sums64 and the layer walk them,
    in numpy: the zero-padded convolution, for symmetric and one-sided padding."""
    from bnnc.passes.pack_families import TSUM_POSITIONS, ternary_sums
    from bnnc.testing.random_models import random_model
    graph = compile_graph(random_model(1)[0])
    op = next(o for o in convs(graph) if isinstance(graph.tensors[o.inputs[0]], ir.Ints))
    rng = np.random.default_rng(sum(pads))
    o, kh, kw, c, ih, iw = 11, 3, 2, 3, 5, 6
    w = rng.choice([-1, 0, 0, 1], (o, kh, kw, c)) * np.where(rng.random((o, 1, 1, 1)) < 0.5, 7, 2)
    w = np.where(w < 0, w * 3, w)  # channel o's weights: +a, 0, -3a
    x = rng.integers(-2**31, 2**31, (ih, iw, c))
    saved = op.stride, op.pads
    op.stride, op.pads = (1, 1), pads
    t = ternary_sums(op, ir.Ints((ih, iw, c), -2**31, 2**31 - 1), w, np.zeros((1, o), np.int64))
    op.stride, op.pads = saved
    pt, pl, pb, pr = pads
    image = np.zeros(t["image"] + TSUM_POSITIONS, object)  # what the last pass may read
    for ch in range(c):  # bnnc_planes_image(..., pt, zeros, pb, 0, plen, ...)
        for y in range(ih):
            at = ch * t["plen"] + (y + pt) * t["pw"] + t["zeros"]
            image[at:at + iw] = x[y, :, ch]
    padded = np.pad(x, ((pt, pb), (pl, pr), (0, 0))).astype(object)
    oh, ow = ih + pt + pb - kh + 1, iw + pl + pr - kw + 1
    seen = 0
    for q in range(t["nq"]):
        oy, ox = divmod(q, t["pw"])
        if ox >= ow:
            continue
        seen += 1
        for i in range(o):
            st = t["start"]
            sa = sum(image[q + t["off"][e]] for e in range(st[2 * i], st[2 * i + 1]))
            sb = sum(image[q + t["off"][e]] for e in range(st[2 * i + 1], st[2 * i + 2]))
            want = int((padded[oy:oy + kh, ox:ox + kw, :] * w[i]).sum())
            assert int(t["a"][i]) * sa + int(t["b"][i]) * sb == want, (oy, ox, i)
    assert seen == oh * ow and t["pw"] == iw + max(pl, pr)


def _guess_count(t, xlo, xhi, guess):
    """bnnc_level_guess (runtime/bnnc_families.h) in numpy, for every x in [xlo, xhi]."""
    from bnnc.passes.pack_families import GUESS_SHIFT

    a, b, m, k = guess
    x = np.clip(np.arange(xlo, xhi + 1, dtype=np.int64), a, b)
    g = np.clip(((x - a) * m + k) >> GUESS_SHIFT, 0, t.size)
    padded = np.concatenate([[a], t, [b + 1]])
    return g - 1 + (x >= padded[g]) + (x >= padded[g + 1])


def test_level_guess_is_exact_or_refused():
    """The "guess" level kernel equals the threshold count at every reachable value whenever the
    pass offers it (random non-decreasing thresholds, saturated ends, repeated levels, rounding
    half to even), and the pass refuses maps that are not within one level."""
    from bnnc.passes.pack_families import _level_guess

    rng = np.random.default_rng(0)
    offered = [0, 0, 0]  # per kind of thresholds, of 100 each
    for trial in range(300):
        levels = int(rng.integers(9, 256))
        step = float(rng.uniform(0.3, 40))
        kind = trial % 3
        if kind == 0:  # an int8 quantizer: thresholds (b + 0.5) * step rounded half to even
            t = np.rint((np.arange(levels) + 0.5 - levels / 2) * step).astype(np.int64)
        elif kind == 1:  # irregular steps
            t = np.cumsum(rng.integers(0, int(2 * step) + 2, levels)).astype(np.int64) - int(levels * step / 2)
        else:  # saturated at both ends of the range
            t = np.sort(rng.integers(-int(levels * step), int(levels * step) + 1, levels)).astype(np.int64)
        xlo, xhi = sorted(int(v) for v in rng.integers(-int(levels * step) - 50, int(levels * step) + 50, 2))
        guess = _level_guess(t, xlo, xhi)
        want = np.searchsorted(t, np.arange(xlo, xhi + 1), side="right")
        if guess is not None:
            offered[kind] += 1
            assert np.array_equal(_guess_count(t, xlo, xhi, guess), want), trial
    assert offered[0] >= 90 and sum(offered) < 200  # quantizers are offered, most irregular steps refused
