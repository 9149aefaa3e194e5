"""HLS C++ backend: its g++ C simulation equals the reference bit for bit (shared models, random
models under serial / fully parallel / odd / budgeted foldings, the compressed zoo families of
the compressed families, the fixed-point EC2T / HBN families with Activations, the residual Bi-Real and
ResNet-18 families (forks, skip FIFOs, Adds, SumPools), and random models recoded to every
weight code), the refusals, the CLI flows, the self-checking testbench, determinism, and the same
sources under the vendor ap_int.h / hls_stream.h.

CI runs the sweeps at the size issues #5 / #6 ask for (50 random models x 20 inputs, several
foldings; the 8 families x 2 seeds x 20 inputs x 3 foldings); BNNC_SWEEP_SCALE=N runs N times as
many."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bnnc import driver, folding, ir, targets
from bnnc.backends import c_build, hls
from bnnc.cli import main
from bnnc.passes.activations_as_convs import activations_as_convs
from bnnc.pipeline import compile_file
from bnnc.targets import TargetOptions
from bnnc.testing.random_models import save, tfc_model

from .conftest import sweep_scale
from .helpers import random_case

STYLES = ("default", "serial", "parallel", "odd", "budget")
N_SWEEP = int(50 * sweep_scale())


def folding_options(graph, style: str, seed: int) -> dict:
    """TargetOptions fields (folding / target_cycles) for a folding `style` on `graph`:
    serial (PE = SIMD = 1), parallel (PE = MH, SIMD = MW), odd (widths dividing neither MH nor MW
    wherever one exists: idle rows and lanes in the last folds), budget (a random --target-cycles).
    Activations count as layers: the backend runs them as identity 1x1 convs."""
    layers = folding.foldable_layers(activations_as_convs(graph))
    rng = np.random.default_rng(seed)
    if style == "default":
        return {}
    if style == "serial":
        return {"folding": {"layers": [{"pe": 1, "simd": 1} for _ in layers]}}
    if style == "parallel":
        return {"folding": {"layers": [{"pe": L.mh, "simd": L.mw} for L in layers]}}
    if style == "odd":
        def odd(n):
            return int(rng.choice([w for w in range(2, n) if n % w] or [n]))
        return {"folding": {"layers": [{"name": L.name, "pe": odd(L.mh), "simd": odd(L.mw)} for L in layers]}}
    if style == "budget":
        lo, hi = max(L.pixels for L in layers), max(L.macs for L in layers)
        return {"target_cycles": int(np.exp(rng.uniform(np.log(lo), np.log(max(lo + 1, hi // 4)))))}
    raise ValueError(style)


def hls_equals_reference(seed: int, style: str, n_inputs: int) -> dict:
    model, spec, graph, inputs = random_case(seed, n_inputs)
    ref = driver.run_target(graph, "ref", inputs)
    y, stats = targets.run(graph, "hls", inputs.grid, TargetOptions(**folding_options(graph, style, seed)))
    assert y.dtype == ref.dtype and np.array_equal(y, ref), f"seed {seed}, {style} folding: HLS differs from reference"
    return stats


def test_finn_tfc_w1a1_gives_7_2_1_0(shared_models):
    d = shared_models / "finn-tfc-w1a1"
    _, graph = compile_file(d / "model.onnx")
    inputs = driver.prepare_inputs(graph, np.load(d / "input.npy"))
    y, stats = targets.run(graph, "hls", inputs.grid, TargetOptions())
    assert y.ravel().tolist() == [7, 2, 1, 0]
    assert np.array_equal(y, driver.run_target(graph, "ref", inputs))
    assert np.array_equal(y.ravel(), np.load(d / "expected_output.npy").ravel())
    assert stats["mvtu_ii_cycles"] == folding.analytic_ii(hls.foldings_for(graph, TargetOptions()))
    # the 784 input elements arrive several per beat, so the input side keeps up with the MVTUs
    assert stats["input_elements_per_beat"] > 1 and stats["dataflow_ii_cycles"] == stats["mvtu_ii_cycles"]


def test_brevitas_cnv_equals_reference(shared_models):
    d = shared_models / "brevitas-cnv-1w1a"
    _, graph = compile_file(d / "cnv_1w1a.onnx")
    inputs = driver.prepare_inputs(graph, np.load(d / "input.npy")[:3])
    y, _ = targets.run(graph, "hls", inputs.grid, TargetOptions())
    assert np.array_equal(y, driver.run_target(graph, "ref", inputs))


def test_qonnx_tfc_float_input_equals_reference(shared_models):
    _, graph = compile_file(shared_models / "qonnx-tfc-1w1a" / "TFC_1W1A.onnx")
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 10, 3))
    y, _ = targets.run(graph, "hls", inputs.grid, TargetOptions(folding={"layers": [
        {"pe": 7, "simd": 100}, {"pe": 64, "simd": 64}, {"pe": 3, "simd": 5}, {"pe": 10, "simd": 1}]}))
    assert np.array_equal(y, driver.run_target(graph, "ref", inputs))


@pytest.mark.parametrize("seed, style", [(s, STYLES[1 + s % 4]) for s in range(8)])
def test_random_model_under_each_folding_style(seed, style):
    hls_equals_reference(seed, style, 8)


@pytest.mark.parametrize("seed", [0, 3])
def test_wide_input_stream_into_a_conv_window(seed):
    """A budget below the input's element count: the input stream carries several values per beat
    (integers straight into the first conv's window generator, a beat never crossing an image row)."""
    model, spec, graph, inputs = random_case(seed, 6)
    budget = max(L.pixels for L in folding.foldable_layers(graph))
    assert graph.input_info["shape"] and int(np.prod(graph.input_info["shape"])) > budget
    y, stats = targets.run(graph, "hls", inputs.grid, TargetOptions(target_cycles=budget))
    assert stats["input_elements_per_beat"] > 1
    assert np.array_equal(y, driver.run_target(graph, "ref", inputs))


def test_pruned_cnv_from_the_zoo_equals_reference():
    from bnnc import zoo
    from bnnc.pipeline import compile_graph

    model = zoo.build("cnv-stq40", 1, widths=(20, 20, 30, 30, 40, 40), dense=(50, 50))
    graph = compile_graph(model)
    inputs = driver.prepare_inputs(graph, zoo.inputs(model, 3, 0))
    y, _ = targets.run(graph, "hls", inputs.grid, TargetOptions(**folding_options(graph, "odd", 1)))
    assert np.array_equal(y, driver.run_target(graph, "ref", inputs))


# the zoo families that are plain chains of conv / pool layers: every weight code
# (ternary, two-scale, multi-base, expander), multi-level and activation-plane outputs
FAMILIES = ("w1a2", "ternary-ttq", "ternary-qonnx", "xnet", "dabn", "abc-fused", "abc-explicit", "pabt")
FAMILY_STYLES = ("serial", "parallel", "odd")
FAMILY_SEEDS = tuple(range(1, 1 + max(2, int(2 * sweep_scale()))))


def family_equals_reference(name: str, seed: int, style: str, n_inputs: int = 20) -> dict:
    from bnnc import zoo
    from bnnc.pipeline import compile_graph

    model = zoo.build(name, seed=seed)
    graph = compile_graph(model)
    inputs = driver.prepare_inputs(graph, zoo.inputs(model, n_inputs, seed=seed))
    ref = driver.run_target(graph, "ref", inputs)
    y, stats = targets.run(graph, "hls", inputs.grid, TargetOptions(**folding_options(graph, style, seed)))
    assert y.dtype == ref.dtype and np.array_equal(y, ref), f"{name} seed {seed}, {style} folding: HLS differs"
    return stats


@pytest.mark.parametrize("i, name", list(enumerate(FAMILIES)))
def test_family_model_equals_reference(i, name):
    stats = family_equals_reference(name, 1, FAMILY_STYLES[i % 3])
    # each family reaches past a binary layer's single XNOR plane and one bit per row
    assert any(L["planes"] != ["xnor"] or L["mode"] == "levels" or L["act_planes"] > 1 for L in stats["layers"])


# fixed-point families: Requantize epilogues on integer convs, then GlobalSumPool -> Activation
# (LevelThresholds, an identity 1x1 MVTU) -> dense
FIXED_POINT_FAMILIES = ("ternary-ec2t", "hbn")


@pytest.mark.parametrize("seed", (1, 2))
@pytest.mark.parametrize("name", FIXED_POINT_FAMILIES)
def test_fixed_point_family_equals_reference(name, seed):
    """2 seeds x 20 inputs, serial / default / odd (non-dividing) foldings."""
    for style in ("serial", "default", "odd"):
        stats = family_equals_reference(name, seed, style)
        modes = [L["mode"] for L in stats["layers"]]
        assert "requant" in modes and "levels" in modes, modes
        # the Activation became a matrix unit with the folding the style gave it
        assert len(stats["folding"]) == len(folding.foldable_layers(compile_zoo(name, seed))) + 1


def compile_zoo(name: str, seed: int):
    from bnnc import zoo
    from bnnc.pipeline import compile_graph

    return compile_graph(zoo.build(name, seed=seed))


def test_requantization_beyond_64_bits_is_refused():
    from bnnc import ir
    from bnnc.errors import BnncError

    g = compile_zoo("ternary-ec2t", 1)
    conv = next(op for op in g.ops() if isinstance(op, ir.Conv) and isinstance(op.epilogue, ir.Requantize))
    conv.epilogue.mult = np.full_like(conv.epilogue.mult, 1 << 60)
    with pytest.raises(BnncError, match=rf"layer '{conv.source_ops[0]}[^']*': its fixed-point requantization needs \d+-bit"):
        hls.files(g, TargetOptions())


@pytest.mark.sweep
@pytest.mark.parametrize("style", FAMILY_STYLES)
@pytest.mark.parametrize("seed", FAMILY_SEEDS)
@pytest.mark.parametrize("name", FAMILIES)
def test_sweep_family_models_equal_reference(name, seed, style):
    """Each family, FAMILY_SEEDS (2 at scale 1) x 20 inputs, serial / fully parallel / odd foldings."""
    family_equals_reference(name, seed, style)


def recoded(graph, code: str, seed: int):
    """`graph` with every Conv's weights replaced by random weights of `code` ("int": integers in
    [-5, 5]; "ternary", "two_scale", "multi_base": masked binary bases with multipliers), pruned
    rows kept. The epilogues are unchanged, so the graph is a valid IR whose numbers the reference
    defines: random models then exercise every weight code on bit and integer inputs, after pools,
    with borders and idle rows / lanes."""
    from bnnc import ir

    rng = np.random.default_rng(seed)
    g = graph.copy()
    for op in g.ops():
        if not isinstance(op, ir.Conv):
            continue
        live = np.any(ir.int_weights(op) != 0, axis=(1, 2, 3))[:, None, None, None]
        o = op.w.shape[0]
        bases = []
        if code == "int":
            int_w = rng.integers(-5, 6, op.w.shape) * live
        else:
            for _ in range(3 if code == "multi_base" else 1):
                w = rng.choice([-1, 0, 1] if code == "ternary" else [-1, 1], op.w.shape) * live
                mp = rng.integers(1, 5, o)
                mn = mp if code == "multi_base" and seed % 2 else rng.integers(1, 5, o)
                bases.append(ir.WeightBase(w.astype(np.int8), mp, mn))
            int_w = ir.bases_weights(bases)
        op.code, op.int_w, op.bases = code, int_w.astype(np.int64), bases
        op.w = np.sign(int_w).astype(np.int8)
    return g


@pytest.mark.parametrize("code, seed", [("int", 2), ("ternary", 5), ("two_scale", 6), ("multi_base", 13)])
def test_random_models_with_every_weight_code(code, seed):
    model, spec, graph, inputs = random_case(seed, 20)
    g = recoded(graph, code, seed)
    ref = driver.run_target(g, "ref", inputs)
    for style in ("odd", "parallel"):
        y, stats = targets.run(g, "hls", inputs.grid, TargetOptions(**folding_options(g, style, seed)))
        assert np.array_equal(y, ref), f"{code} seed {seed}, {style} folding: HLS differs from reference"
    assert any(len(L["planes"]) > 1 or L["planes"] != ["xnor"] for L in stats["layers"])


def leveled(graph, seed: int):
    """`graph` with every single-plane bit threshold replaced by 2-bit levels {-3, -1, 1, 3} around
    it (LevelThresholds), the tensor types after it updated: integer pixels then flow into max
    pools, global sum pools and integer-input convs of random shapes."""
    from bnnc import ir

    rng = np.random.default_rng(seed)
    g = graph.copy()
    for op in g.ops()[1:]:  # after the input quantizer
        src = g.tensors[op.inputs[0]]
        out = op.outputs[0]
        if isinstance(op, ir.Conv) and isinstance(op.epilogue, ir.Thresholds) and op.epilogue.planes == 1:
            ep = op.epilogue
            step = rng.integers(1, 4, (ep.threshold.size, 1))
            op.epilogue = ir.LevelThresholds(ep.direction, ep.threshold[:, None] + step * np.array([-1, 0, 1]), -3, 2)
            g.tensors[out] = ir.Ints(g.tensors[out].shape, -3, 3)
        elif isinstance(op, ir.MaxPool) and isinstance(src, ir.Ints):
            g.tensors[out] = ir.Ints(g.tensors[out].shape, src.lo, src.hi)
        elif isinstance(op, ir.GlobalSumPool) and isinstance(src, ir.Ints):
            hw = src.shape[0] * src.shape[1]
            g.tensors[out] = ir.Ints(g.tensors[out].shape, hw * src.lo, hw * src.hi)
    return g


@pytest.mark.parametrize("seed", [5, 7, 15])  # integer pixels into max pools and global sum pools
def test_random_models_with_multi_level_outputs(seed):
    model, spec, graph, inputs = random_case(seed, 20)
    g = leveled(graph, seed)
    ref = driver.run_target(g, "ref", inputs)
    y, stats = targets.run(g, "hls", inputs.grid, TargetOptions(**folding_options(g, STYLES[1 + seed % 4], seed)))
    assert np.array_equal(y, ref), f"seed {seed}: HLS differs from reference"
    assert any(L["mode"] == "levels" for L in stats["layers"])


# residual families: stream forks, skip FIFOs, fixed-point Adds, SumPool + 1x1 conv shortcuts
RESIDUAL_FAMILIES = ("bireal", "resnet18-stq")


@pytest.mark.parametrize("name", RESIDUAL_FAMILIES)
def test_residual_family_equals_reference(name):
    """20 inputs through every residual block; bireal also under serial and odd foldings."""
    for style in ("default", "serial", "odd") if name == "bireal" else ("default",):
        stats = family_equals_reference(name, 1, style)
        assert any(L["mode"] == "requant" for L in stats["layers"])


@pytest.mark.parametrize("name, side", [("bireal", 16), ("resnet18-stq", 32)])
def test_skip_fifo_depth_is_the_main_branch_read_ahead(name, side):
    """The first block's skip path waits while its main branch reads ahead: 1x1 sign activation
    then one (bireal) or two (resnet18) 3x3 pad-1 convs need 2 or 3 input rows of `side` pixels
    before the Add's first pixel; the skip stream holds all but the one beat the fork has not
    written yet. In the first downsampling block the SumPool shortcut reads 2 input rows for its
    first pixel; the main branch 2 (bireal: one stride-2 conv) or 4 (resnet18: the stride-2 conv's
    second output row, for the second conv's first pixel)."""
    g = compile_zoo(name, 1)
    depths = hls.stats(g, hls.foldings_for(g, TargetOptions()))["skip_fifo_depths"]
    add = next(op for op in g.ops() if isinstance(op, ir.Add))
    skip = f"{g.producer(add.inputs[1]).name}_to_{add.name}"
    rows = 2 if name == "bireal" else 3
    assert depths[skip] == rows * side - 1, depths
    pool = next(op for op in g.ops() if isinstance(op, ir.SumPool))
    main_rows = 2 if name == "bireal" else 4
    assert depths[f"{g.producer(pool.inputs[0]).name}_to_{pool.name}"] == \
        max(hls.STREAM_DEPTH, (main_rows - 2) * side - 1)
    assert all(d >= hls.STREAM_DEPTH for d in depths.values())


def concurrent_sources(files: dict, prefix: str = "bnnc", depths: dict | None = None) -> dict:
    """The project with its top function run as hardware runs it: every process in its own thread
    (bnnc_hls.h's BNNC_HLS_CONCURRENT_CSIM), every internal stream bounded by its STREAM pragma's
    depth (or `depths`[stream]) with blocking reads and writes."""
    model = files["model.cpp"]
    start = model.index(f"void {prefix}_top(")
    top = re.sub(r"BNNC_HLS\(STREAM variable=(\w+) depth=(\d+)\)",
                 lambda m: f"{m[1]}.set_depth({(depths or {}).get(m[1], m[2])});", model[start:])
    top = re.sub(r"^  (\w+\([\w, ]*\);)$", r"  bnnc_hls_concurrent::spawn([&] { \1 });", top, flags=re.M)
    assert top.endswith("}\n") and "spawn" in top
    return {**files, "model.cpp": model[:start] + top[:-2] + "  bnnc_hls_concurrent::join_all();\n}\n"}


CONCURRENT_FLAGS = hls.CXX_FLAGS + ("-DBNNC_HLS_CONCURRENT_CSIM", "-pthread")


@pytest.mark.parametrize("name", RESIDUAL_FAMILIES)
def test_residual_blocks_run_concurrently_at_the_computed_depths(name):
    """Processes as threads on streams of the stated depths give the reference's outputs (no
    deadlock whatever the interleaving); the first skip stream one beat shallower deadlocks."""
    from bnnc import zoo
    from bnnc.pipeline import compile_graph

    model = zoo.build(name, seed=1)
    graph = compile_graph(model)
    n = 20 if name == "bireal" else 2
    inputs = driver.prepare_inputs(graph, zoo.inputs(model, n, seed=1))
    ref = driver.run_target(graph, "ref", inputs)
    files = hls.files(graph, TargetOptions())
    exe = hls.build(concurrent_sources(files), CONCURRENT_FLAGS)
    odt = "float32" if graph.output_info["dtype"] == "float32" else "int32"
    for jitter in ("", "1", "2")[: 3 if name == "bireal" else 2]:  # free-running, then seeded patterns of pauses
        y = c_build.run(exe, inputs.grid, graph.input_info["dtype"], odt, graph.output_info["elements"],
                        env={"BNNC_HLS_JITTER": jitter} if jitter else None)
        assert np.array_equal(ir.output_in_model_order(graph, y).reshape(ref.shape), ref), jitter
    if name == "bireal":
        depths = hls.stats(graph, hls.foldings_for(graph, TargetOptions()))["skip_fifo_depths"]
        add = next(op for op in graph.ops() if isinstance(op, ir.Add))
        skip = f"{graph.producer(add.inputs[1]).name}_to_{add.name}"
        short = hls.build(concurrent_sources(files, depths={skip: depths[skip] - 1}), CONCURRENT_FLAGS)
        r = subprocess.run([str(short)], capture_output=True, text=True, timeout=300)
        assert r.returncode != 0 and "deadlock" in r.stderr, r.stderr


# the users' wild residual models: real-valued first / shortcut / last layers as multiply-accumulate
# units (24-bit weights, requantization pre-shift of their wide accumulators), Bi-Real's residual stream
WILD_INPUTS = 20


def compile_wild(name: str, *flags):
    import onnx

    from bnnc.pipeline import compile_graph
    from bnnc.testing.wild import WILD_MODELS, options_of, wild_dir

    if not wild_dir().is_dir():
        pytest.skip("../shared/models/wild is not present")
    return compile_graph(onnx.load(str(wild_dir() / f"{name}.onnx")), options_of(WILD_MODELS[name] + flags))


def wild_inputs(graph, n: int) -> np.ndarray:
    return driver.prepare_inputs(graph, driver.random_samples(graph, n, 0)).grid


@pytest.mark.parametrize("name", ["mainsub_nin", "birealnet18"])
def test_wild_model_bit_exact(name):
    """20 inputs bit-exact; the real-valued layers run as multiply-accumulate units, and some of them
    pre-shift their accumulators."""
    from bnnc import reference

    graph = compile_wild(name)
    assert any(isinstance(op, ir.Conv) and isinstance(op.epilogue, ir.Requantize) and op.epilogue.pre_shift
               for op in graph.ops())
    x = wild_inputs(graph, WILD_INPUTS)
    y, stats = hls.run(graph, x, TargetOptions())
    assert np.array_equal(y, reference.run(graph, x).reshape(WILD_INPUTS, -1))
    macs = [L for L in stats["layers"] if L["mac_weight_bits"]]
    assert macs and all(L["mac_weight_bits"] >= 24 and L["pre_activation_error"] > 0 for L in macs), macs
    assert bool(stats["skip_fifo_depths"]) == (name == "birealnet18")


@pytest.mark.sweep
def test_wild_residual_model_runs_concurrently_at_the_computed_depths():
    """birealnet18 with its processes as threads on streams of the stated depths, free-running and
    with a seeded pattern of pauses: the reference's outputs, no deadlock."""
    from bnnc import reference

    graph = compile_wild("birealnet18")
    x = wild_inputs(graph, WILD_INPUTS if sweep_scale() > 1 else 3)
    ref = reference.run(graph, x).reshape(len(x), -1)
    exe = hls.build(concurrent_sources(hls.files(graph, TargetOptions())), CONCURRENT_FLAGS)
    for jitter in ("", "1"):
        y = c_build.run(exe, x, graph.input_info["dtype"], "float32", graph.output_info["elements"],
                        env={"BNNC_HLS_JITTER": jitter} if jitter else None)
        assert np.array_equal(ir.output_in_model_order(graph, y.reshape(len(x), -1)), ref), jitter


def test_weight_bits_set_the_multiply_accumulate_width():
    """--weight-bits NODE=B: that layer's weights become ap_int<B> (narrower multipliers, less weight
    memory), its stated error bound grows, the other real-valued layers keep theirs, and the outputs
    stay bit-exact."""
    from bnnc import reference

    def macs(graph):
        return {L["node"]: (L["mac_weight_bits"], L["pre_activation_error"], L["weight_bits"])
                for L in hls.stats(graph, hls.foldings_for(graph, TargetOptions()))["layers"] if L["mac_weight_bits"]}

    full = macs(compile_wild("mainsub_nin"))
    first = next(iter(full))
    graph = compile_wild("mainsub_nin", "--weight-bits", f"{first}=8")
    narrow = macs(graph)
    assert narrow[first][0] == 8 < full[first][0] and narrow[first][1] > full[first][1]
    assert narrow[first][2] * full[first][0] == full[first][2] * 8
    assert all(narrow[k] == full[k] for k in full if k != first)
    layer = next(op.name for op in graph.ops() if isinstance(op, ir.Conv) and op.source_ops[0] == first)
    assert re.search(rf"static const ap_int<8> {layer}_w\[", hls.files(graph, TargetOptions())["model.cpp"])
    x = wild_inputs(graph, 3)
    y, _ = hls.run(graph, x, TargetOptions())
    assert np.array_equal(y, reference.run(graph, x).reshape(3, -1))


def _beats_of(values: np.ndarray, axis: dict) -> np.ndarray:
    """The beats the Verilog target's encoder (verilog.encode_frames, which drives its simulation)
    makes of (N, elements) values in stream order: floats as their IEEE bits."""
    from bnnc.backends import verilog

    v = np.ascontiguousarray(values)
    v = v.view(np.uint32).astype(np.int64) if v.dtype == np.float32 else v.astype(np.int64)
    return verilog.encode_frames(v.reshape(len(v), *axis["shape"]), axis)


@pytest.mark.parametrize("case", ["tfc", "cnv", "bireal", "random-argmax"])
def test_stream_beats_are_the_verilog_format(case, tmp_path):
    """The testbench's AXI4-Stream beats, both ports, word for word (TDATA and TLAST) against the
    Verilog target's encoder for the same tensors: TFC (dense first layer: one pixel), CNV and
    bireal ((H, W, C) pixels of float32 elements, 2 per 64-bit beat, a pixel of 3 in 2 beats), a
    random model with ArgMax / TopK int32 output."""
    from bnnc import zoo
    from bnnc.pipeline import compile_graph
    from bnnc.testing.random_models import random_inputs, random_model

    if case == "random-argmax":
        seed = next(s for s in range(100) if random_model(s)[1].output != "logits")
        model = random_model(seed)[0]
        graph = compile_graph(model)
        inputs = driver.prepare_inputs(graph, random_inputs(model, 3, seed))
    else:
        model = zoo.build(case, seed=1)
        graph = compile_graph(model)
        inputs = driver.prepare_inputs(graph, zoo.inputs(model, 3, seed=1))
    ref = driver.run_target(graph, "ref", inputs)
    files = hls.files(graph, TargetOptions())
    exe = hls.build(files)
    fi, fo, fw = tmp_path / "in.bin", tmp_path / "out.bin", tmp_path / "words.txt"
    grid = inputs.grid.astype(graph.input_info["dtype"])
    grid.reshape(len(grid), -1).tofile(fi)
    subprocess.run([str(exe), str(fi), str(fo), str(fw)], check=True)
    lines = [ln.split() for ln in fw.read_text().splitlines()]
    ctx, _ = hls.build_context(graph, hls.foldings_for(graph, TargetOptions()))
    in_axis, out_axis = ctx["in_axis"], ctx["out_axis"]
    for port, axis in (("in", in_axis), ("out", out_axis)):
        words = np.array([int(w, 16) for p_, w, _ in lines if p_ == port], np.uint64)
        last = np.array([int(t) for p_, _, t in lines if p_ == port])
        assert len(words) == len(grid) * axis["beats"]
        assert np.array_equal(last, (np.arange(len(words)) % axis["beats"] == axis["beats"] - 1).astype(int))
        if port == "in":
            # the HLS stream order: channel-last for image inputs
            values = grid if ctx["input_flat"] else \
                grid.reshape(len(grid), ctx["in_c"], ctx["in_hw"]).transpose(0, 2, 1)
        else:
            values = ref.reshape(len(ref), -1).astype(np.float32 if ref.dtype.kind == "f" else np.int32)
        assert np.array_equal(words, _beats_of(values.reshape(len(values), -1), axis)), port
    if case == "cnv":
        assert in_axis["beats_per_pixel"] == 2 and in_axis["tw"] == 64
    if case == "tfc":
        assert in_axis["pixels"] == 1


def test_input_tlast_on_a_wrong_beat_is_a_frame_error(tmp_path):
    graph = random_case(2, 1)[2]
    files = hls.files(graph, TargetOptions())
    bench = files["testbench.cpp"]
    wrong = re.sub(r"word\.last = b == (\w+)_IN_BEATS - 1;", r"word.last = b == 0;", bench)
    assert wrong != bench
    r = subprocess.run([str(hls.build({**files, "testbench.cpp": wrong}))], capture_output=True, text=True)
    assert r.returncode != 0 and "reported a frame error" in r.stderr, r.stderr


def test_ops_and_epilogues_hls_does_not_implement_name_their_layer():
    from bnnc import zoo
    from bnnc.errors import BnncError
    from bnnc.pipeline import compile_graph

    g = compile_graph(zoo.build("pabt", 0))
    conv = next(op for op in g.ops() if isinstance(op, ir.Conv) and getattr(op.epilogue, "planes", 1) > 1)
    ep = conv.epilogue
    conv.epilogue = ir.LevelThresholds(ep.direction, ep.threshold[:, None], -1, 2, planes=ep.planes)
    with pytest.raises(BnncError, match=rf"'{conv.source_ops[0]}': the matrix-vector unit does not implement "
                                        f"multi-level activations with {ep.planes} activation planes"):
        hls.check_supported(g)


def test_what_hls_does_not_hold_is_refused_in_one_line(tmp_path, capsys):
    from .test_concat_softmax import binary_concat_model

    path = tmp_path / "concat.onnx"
    save(binary_concat_model(0), path)
    assert main(["compile", str(path), "--target", "hls", "-o", str(tmp_path / "o"), "--input-scale", "0.015625",
                 "--input-range", "-128:127"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "does not implement Concat ops" in err and "--target c" in err, err
    assert not (tmp_path / "o").exists()


def test_branches_that_are_not_a_residual_block_are_refused():
    """A stream read by three layers (bireal's global pool moved onto a block's input)."""
    from bnnc.errors import BnncError

    g = compile_zoo("bireal", 1)
    gsum = next(op for op in g.ops() if isinstance(op, ir.GlobalSumPool))
    adds = [op for op in g.ops() if isinstance(op, ir.Add)]
    gsum.inputs = [adds[-2].outputs[0]]
    with pytest.raises(BnncError, match=rf"tensor '{adds[-2].outputs[0]}' feeds 3 layers; the HLS backend forks"):
        hls.files(g, TargetOptions())


@pytest.mark.parametrize("name", ["abc-fused", "ternary-ec2t", "hbn"])
def test_cli_verify_passes_on_a_family_model(name, tmp_path, capsys):
    from bnnc import zoo

    path = tmp_path / f"{name}.onnx"
    save(zoo.build(name, 3), path)
    assert main(["verify", str(path), "--target", "hls", "--samples", "25"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"hls == reference \(bit-exact\)\s+25/25", out) and "PASS" in out
    assert main(["report", str(path), "--target", "hls"]) == 0
    assert "HLS dataflow" in capsys.readouterr().out


@pytest.mark.sweep
@pytest.mark.parametrize("i", range(N_SWEEP))
def test_sweep_hls_equals_reference(i):
    hls_equals_reference(3000 + i, STYLES[i % len(STYLES)], 20)


def test_self_checking_testbench_passes(tmp_path):
    model, spec, graph, inputs = random_case(11, 2)
    exe = hls.build(hls.files(graph, TargetOptions()))
    r = subprocess.run([str(exe)], capture_output=True, text=True)
    assert r.returncode == 0 and f"{hls.TB_SAMPLES}/{hls.TB_SAMPLES} samples bit-exact" in r.stdout


def test_testbench_self_check_catches_a_wrong_expectation():
    model, spec, graph, inputs = random_case(12, 2)
    files = hls.files(graph, TargetOptions())
    head, tail = files["tb_data.h"].split("tb_expected", 1)
    decl, values = tail.split("= {{", 1)
    first = re.match(r"[^,}]+", values).group(0)
    files["tb_data.h"] = head + "tb_expected" + decl + "= {{(" + first + ") + 1" + values[len(first):]
    r = subprocess.run([str(hls.build(files))], capture_output=True, text=True)
    assert r.returncode == 1 and "sample 0 differs" in r.stdout


def _vendor_include():
    d = os.environ.get("BNNC_HLS_VENDOR_INCLUDE")
    if d:
        return Path(d)
    spec = importlib.util.find_spec("hls4ml")  # hls4ml ships Xilinx's open-source ap_types headers
    if spec and spec.origin:
        p = Path(spec.origin).parent / "templates" / "vivado" / "ap_types"
        if (p / "ap_int.h").exists():
            return p
    return None


@pytest.mark.parametrize("case, seed, style", [("random", 21, "odd"), ("random", 22, "parallel"), ("w1a2", 1, "odd"),
                                              ("dabn", 2, "parallel"), ("pabt", 1, "odd"), ("int", 2, "odd"),
                                              ("ternary-ec2t", 1, "odd"), ("hbn", 2, "serial"), ("bireal", 1, "odd")])
def test_same_sources_with_vendor_ap_int_and_hls_stream(case, seed, style, tmp_path):
    inc = _vendor_include()
    if inc is None:
        pytest.skip("no vendor ap_int.h/hls_stream.h (set BNNC_HLS_VENDOR_INCLUDE or install hls4ml)")
    if case in ("random", "int"):
        model, spec, graph, inputs = random_case(seed, 6)
        graph = recoded(graph, "int", seed) if case == "int" else graph
    else:
        from bnnc import zoo
        from bnnc.pipeline import compile_graph

        model = zoo.build(case, seed=seed)
        graph = compile_graph(model)
        inputs = driver.prepare_inputs(graph, zoo.inputs(model, 6, seed=seed))
    files = hls.files(graph, TargetOptions(**folding_options(graph, style, seed)))
    # GCC 12 warns inside the vendor headers themselves: include them as system headers, drop
    # -Werror, and require that no warning points into bnnc's sources
    flags = ("-std=c++14", "-O2", "-Wall", "-Wextra", "-ffp-contract=off", "-isystem", str(inc))
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    r = subprocess.run([hls.find_cxx(), *flags, "-fsyntax-only", "model.cpp", "testbench.cpp"], cwd=tmp_path,
                       capture_output=True, text=True)
    assert r.returncode == 0 and not re.search(r"^(model|testbench)\.cpp:\d+:\d+: (warning|error)", r.stderr, re.M), \
        r.stderr[-2000:]
    assert "#define BNNC_VENDOR_HLS_TYPES" in files["bnnc_hls.h"]
    exe = hls.build(files, flags)
    y = c_build.run(exe, inputs.grid, graph.input_info["dtype"],
                    "float32" if graph.output_info["dtype"] == "float32" else "int32", graph.output_info["elements"])
    ref = driver.run_target(graph, "ref", inputs)
    assert np.array_equal(y.reshape(ref.shape), ref)
    assert subprocess.run([str(exe)], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def tfc_path(tmp_path_factory):
    p = tmp_path_factory.mktemp("hls") / "tfc.onnx"
    save(tfc_model(2), p)
    return p


def test_cli_compile_run_verify_report(tfc_path, tmp_path, capsys):
    out = tmp_path / "hls"
    assert main(["compile", str(tfc_path), "--target", "hls", "-o", str(out), "--name", "my-net"]) == 0
    names = {p.name for p in out.iterdir()}
    assert {"model.cpp", "model.h", "bnnc_hls.h", "testbench.cpp", "tb_data.h", "run_hls.tcl", "Makefile", "README.md",
            "folding.json"} <= names
    assert re.search(r"void my_net_top\(hls::stream<my_net_axis_in_t> &in, hls::stream<my_net_axis_out_t> &out, "
                     r"bool &frame_error\)", (out / "model.cpp").read_text())
    r = subprocess.run(["make", "-s", "check"], cwd=out, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    x = tmp_path / "x.npy"
    from bnnc.testing.random_models import random_inputs

    np.save(x, random_inputs(tfc_model(2), 5, 1))
    assert main(["run", str(tfc_path), "--target", "hls", "--input", str(x), "--output", str(tmp_path / "y.npy"),
                 "--stats", str(tmp_path / "s.json")]) == 0
    assert main(["run", str(tfc_path), "--target", "ref", "--input", str(x), "--output", str(tmp_path / "r.npy")]) == 0
    assert np.array_equal(np.load(tmp_path / "y.npy"), np.load(tmp_path / "r.npy"))
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["target"] == "hls" and stats["mvtu_ii_cycles"] > 0 and len(stats["folding"]) == 4
    capsys.readouterr()
    assert main(["verify", str(tfc_path), "--target", "hls", "--samples", "30"]) == 0
    assert re.search(r"hls == reference \(bit-exact\)\s+30/30", capsys.readouterr().out)
    assert main(["report", str(tfc_path), "--target", "hls", "--target-cycles", "500"]) == 0
    text = capsys.readouterr().out
    assert "HLS dataflow" in text and "MVTU initiation interval" in text


def test_run_hls_tcl_defaults_and_overrides(tfc_path):
    from bnnc.pipeline import compile_file as cf

    _, graph = cf(tfc_path)
    tcl = hls.files(graph, TargetOptions(name="net"))["run_hls.tcl"]
    for needle in ("open_project -reset net_hls", "set_top net_top", "add_files model.cpp",
                   "add_files -tb testbench.cpp", "csim_design", "csynth_design", "cosim_design", "export_design -format ip_catalog",
                   f"BNNC_HLS_PART {hls.DEFAULT_PART}", "BNNC_HLS_CLOCK_NS", "create_clock -period $clock",
                   "set_part $part"):
        assert needle in tcl, needle


@pytest.mark.parametrize("args, words", [
    (["--folding", '{"layers": [{"pe": 1, "simd": 1}]}'], ["1 entries"]),
    (["--folding", '{"layers": [{"pe": 65, "simd": 1}, {"pe": 1, "simd": 1}, {"pe": 1, "simd": 1}, '
                   '{"pe": 1, "simd": 1}]}'], ["PE=65 exceeds"]),
    (["--target-cycles", "0"], ["--target-cycles must be at least 1"]),
    (["--name", "%%%"], ["does not make a C identifier"]),
])
def test_bad_options_are_one_line_errors(tfc_path, tmp_path, capsys, args, words):
    spec = [a for a in args]
    if spec[0] == "--folding":  # the CLI takes a path
        p = tmp_path / "f.json"
        p.write_text(spec[1])
        spec[1] = str(p)
    assert main(["compile", str(tfc_path), "--target", "hls", "-o", str(tmp_path / "o"), *spec]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(w in err for w in words), err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("graph_code", ["from tests.helpers import random_case; g = random_case(7, 1)[2]",
                                        "from bnnc import zoo; from bnnc.pipeline import compile_graph; "
                                        "g = compile_graph(zoo.build('abc-explicit', 2))"])
def test_sources_are_byte_identical_run_to_run(graph_code):
    code = ("import sys, json; from bnnc.backends import hls; from bnnc.targets import TargetOptions; "
            f"{graph_code}; "
            "print(json.dumps(hls.files(g, TargetOptions(target_cycles=int(sys.argv[1]))), sort_keys=True))")
    root = Path(__file__).resolve().parents[1]
    outs = set()
    for hashseed in ("0", "1", "12345"):
        r = subprocess.run([sys.executable, "-c", code, "400"], cwd=root, capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": hashseed})
        assert r.returncode == 0, r.stderr[-2000:]
        outs.add(r.stdout)
    assert len(outs) == 1
