"""The compressed families on the verilog target: ternary, two-scale, multi-base, expander, integer and multi-bit
layers run on the MVTU's popcount planes (fixed-point requantization and activations of integer
streams too), bit-exact with the reference on zoo models of every family that is a plain chain of
layers, under several foldings, lint-clean with -Wall."""

import numpy as np
import onnx
import pytest

from bnnc import driver, folding, reference, zoo
from bnnc.backends import verilog, verilog_sim
from bnnc.cli import main
from bnnc.passes.activations_as_convs import activations_as_convs
from bnnc.pipeline import compile_graph
from bnnc.targets import TargetOptions

from .conftest import sweep_scale

# the zoo families that are chains of layers (the residual ones, bireal and resnet18-stq: test_verilog_residual.py)
CHAIN_FAMILIES = ("ternary-ttq", "ternary-qonnx", "ternary-ec2t", "xnet", "dabn", "w1a2", "abc-fused", "abc-explicit",
                  "pabt", "hbn")
SEEDS = (0, 1) if sweep_scale() <= 1 else tuple(range(int(2 * sweep_scale())))
INPUTS = 20


def _folding(graph, kind: str, seed: int):
    if kind == "default":
        return None
    rng = np.random.default_rng(seed)
    layers = folding.foldable_layers(activations_as_convs(graph))  # activations are 1x1 units
    if kind == "serial":
        return {"layers": [{"pe": 1, "simd": 1} for _ in layers]}
    # random PE / SIMD that need not divide MH / MW
    return {"layers": [{"pe": int(rng.integers(1, min(L.mh, 8) + 1)), "simd": int(rng.integers(1, min(L.mw, 40) + 1))}
                       for L in layers]}


@pytest.mark.parametrize("name", CHAIN_FAMILIES)
@pytest.mark.parametrize("seed", SEEDS)
def test_family_runs_bit_exact(name, seed):
    model = zoo.build(name, seed)
    graph = compile_graph(model)
    x = driver.prepare_inputs(graph, zoo.inputs(model, INPUTS, seed)).grid
    kind = ("default", "random", "serial")[seed % 3]
    opts = TargetOptions(folding=_folding(graph, kind, seed))
    design = verilog.build_design(graph, opts)
    verilog_sim.lint(design.sources, design.top)
    y, stats = verilog.run(graph, x, opts)
    assert np.array_equal(y, reference.run(graph, x).reshape(INPUTS, -1)), f"{name} seed {seed} ({kind} folding)"
    assert stats["cycles_per_frame"] <= 1.1 * stats["estimated_ii"] + 16


def test_each_code_uses_its_planes():
    """The plane structure the units get: masks for ternary, ones + AND for two-scale, one plane
    per base for multi-base, activation planes for PaBT (the zoo model computes three; one that no
    kept weight pair reads is dropped by the canonical stage)."""
    want = {"ternary-ttq": {"and, and"}, "ternary-qonnx": {"masked_xnor"}, "xnet": {"masked_xnor"},
            "dabn": {"ones, and"}, "abc-fused": {"xnor, xnor"}}
    for name, kinds in want.items():
        graph = compile_graph(zoo.build(name, 0))
        stages = verilog.build_design(graph, TargetOptions()).context["stages"]
        assert kinds <= {s["planes"] for s in stages if s["kind"] == "conv"}, name
    stages = verilog.build_design(compile_graph(zoo.build("pabt", 0)), TargetOptions()).context["stages"]
    assert any(s["kind"] == "conv" and s["mvtu"].get("ACT_PLANES") == 2 for s in stages)
    stages = verilog.build_design(compile_graph(zoo.build("hbn", 0)), TargetOptions()).context["stages"]
    assert sum(s["kind"] == "conv" and s["mvtu"].get("REQUANTIZE") == 1 for s in stages) == 2
    assert any(s["kind"] == "conv" and s["planes"] == "and" and s["name"] == "L06_act" for s in stages)


@pytest.mark.parametrize("name", ["ternary-ttq", "pabt"])
def test_verify_passes_on_families(tmp_path, capsys, name):
    path = tmp_path / f"{name}.onnx"
    onnx.save(zoo.build(name, seed=2), str(path))
    assert main(["verify", str(path), "--target", "verilog", "--samples", "20"]) == 0
    assert "verilog == reference (bit-exact)    20/20" in capsys.readouterr().out


@pytest.mark.parametrize("name", ["hbn", "ternary-ec2t", "bireal", "resnet18-stq"])
def test_activations_as_convs_keeps_every_output(name):
    """The pass on zoo models with Activations of integer streams (after pools, on residual
    streams): the reference gives the same outputs before and after, bit for bit."""
    model = zoo.build(name, 1)
    graph = compile_graph(model)
    x = driver.prepare_inputs(graph, zoo.inputs(model, 8, 1)).grid
    after = activations_as_convs(graph)
    assert not any(type(op).__name__ == "Activation" for op in after.ops())
    assert any(type(op).__name__ == "Activation" for op in graph.ops())  # the input graph is unchanged
    assert np.array_equal(reference.run(after, x), reference.run(graph, x))
