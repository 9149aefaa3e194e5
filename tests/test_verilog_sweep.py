"""Randomized sweep: simulated Verilog == reference bit for bit, on random models at several foldings.

Each model runs 20 inputs back to back at three foldings: fully folded (PE = SIMD = 1), fully
parallel (PE = MH, SIMD = MW) and a seeded random one (PE not dividing MH, SIMD not dividing MW,
most of the time). Every design also passes `verilator --lint-only -Wall`, and its simulated
cycles per frame are checked against the performance model.

The models are the random-model generator's (convs with padding and stride, max pools before and
after the sign, global average pools, dense layers, pruned channels), restricted to a size a
2-core CI affords: fully folded at most SERIAL_LIMIT cycles per frame, and at most PARALLEL_LIMIT
multiply lanes fully parallel (integer-input lanes, which Verilator unrolls into far more C++,
count 8 times). CI runs N_MODELS = 4 (12 builds, about 3 minutes); the issue's 50 models:
    BNNC_SWEEP_SCALE=12.5 pytest -m sweep tests/test_verilog_sweep.py
"""

import numpy as np
import pytest

from bnnc import driver, folding, reference
from bnnc.backends import verilog, verilog_sim
from bnnc.pipeline import compile_graph
from bnnc.targets import TargetOptions
from bnnc.testing.random_models import random_inputs, random_model

from .conftest import sweep_scale

N_MODELS = int(4 * sweep_scale())
N_INPUTS = 20
SERIAL_LIMIT = 150_000
PARALLEL_LIMIT = 24_000
INT_LANE_WEIGHT = 8


def affordable(graph) -> bool:
    layers = folding.foldable_layers(graph)
    lanes = sum(L.mh * L.mw * (INT_LANE_WEIGHT if L.in_bits > 1 else 1) for L in layers)
    return max(L.macs for L in layers) <= SERIAL_LIMIT and lanes <= PARALLEL_LIMIT


def sweep_seeds(n: int) -> list:
    seeds, seed = [], 0
    while len(seeds) < n:
        if affordable(compile_graph(random_model(seed)[0])):
            seeds.append(seed)
        seed += 1
    return seeds


def folding_for(graph, kind: str, seed: int) -> dict:
    layers = folding.foldable_layers(graph)
    rng = np.random.default_rng(seed)
    if kind == "serial":
        pairs = [(1, 1) for _ in layers]
    elif kind == "parallel":
        pairs = [(L.mh, L.mw) for L in layers]
    else:
        pairs = [(int(rng.integers(1, L.mh + 1)), int(rng.integers(1, L.mw + 1))) for L in layers]
    return {"layers": [{"pe": p, "simd": s} for p, s in pairs]}


@pytest.mark.sweep
@pytest.mark.parametrize("kind", ["serial", "parallel", "random"])
@pytest.mark.parametrize("seed", sweep_seeds(N_MODELS))
def test_verilog_equals_reference(seed, kind):
    model, _ = random_model(seed)
    graph = compile_graph(model)
    inputs = driver.prepare_inputs(graph, random_inputs(model, N_INPUTS, seed + 1))
    opts = TargetOptions(folding=folding_for(graph, kind, seed))
    design = verilog.build_design(graph, opts)
    verilog_sim.lint(design.sources, design.top)
    y, stats = verilog.run(graph, inputs.grid, opts)
    ref = reference.run(graph, inputs.grid).reshape(N_INPUTS, -1)
    assert y.dtype == ref.dtype and np.array_equal(y, ref), f"seed {seed} ({kind}): Verilog differs from the reference"
    # no unit can beat its own analytic cycles; the model's estimate holds within a few percent
    assert stats["analytic_ii"] <= stats["cycles_per_frame"] <= 1.1 * stats["estimated_ii"], stats
