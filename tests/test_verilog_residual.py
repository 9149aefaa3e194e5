"""Residual networks on the verilog target: stream forks, shortcut FIFOs sized from the pipeline's
schedule, the residual Add of fixed-point streams and SumPool downsampling shortcuts, bit-exact with
the reference under random back-pressure and at the performance model's cycles per frame."""

import numpy as np
import pytest

from bnnc import driver, reference, zoo
from bnnc.backends import verilog, verilog_fifos, verilog_sim
from bnnc.cli import main
from bnnc.pipeline import compile_graph
from bnnc.targets import TargetOptions

from .conftest import sweep_scale

INPUTS = 20


def _case(name: str, n: int = INPUTS):
    model = zoo.build(name, 0)
    graph = compile_graph(model)
    return model, graph, driver.prepare_inputs(graph, zoo.inputs(model, n, 0)).grid


@pytest.mark.parametrize("name", ["bireal", "resnet18-stq"])
def test_residual_zoo_model_bit_exact_under_back_pressure(name):
    _, graph, x = _case(name)
    design = verilog.build_design(graph, TargetOptions())
    verilog_sim.lint(design.sources, design.top)
    kinds = {s["kind"] for s in design.context["stages"]}
    assert {"add", "sumpool"} <= kinds
    ref = reference.run(graph, x).reshape(INPUTS, -1)
    y, stalled = verilog.run(graph, x, TargetOptions(extra={"stalls": (3, 0.6, 0.5)}))
    assert np.array_equal(y, ref)
    y, stats = verilog.run(graph, x, TargetOptions())
    assert np.array_equal(y, ref)
    # the performance model's cycles per frame, within 2%
    assert stats["estimated_ii"] <= stats["cycles_per_frame"] <= 1.02 * stats["estimated_ii"], stats["frame_intervals"]
    assert stalled["sim_cycles"] > stats["sim_cycles"]


def _lag(design, fork_stage: str, add_stage: str) -> int:
    """Records the identity shortcut from a fork to an Add must hold: the long branch's windows need
    input rows ahead of the pixel they produce (composed along the branch, from the geometry)."""
    stages = {s["name"]: s for s in design.context["stages"]}
    path, name = [], add_stage
    add_ins = [s for s in design.context["stages"] if s["name"] == add_stage][0]["ins"]
    # walk back from the Add's long input to the fork
    producers = {f"s{i + 1}": s["name"] for i, s in enumerate(design.context["stages"])}
    long_in = [i for i in add_ins if "_b" not in i][0]
    name = producers[long_in]
    while name != fork_stage:
        path.append(stages[name])
        src = stages[name]["ins"][0]
        name = producers[src.split("_b")[0]]
    need = None
    for s in reversed(path):  # from the fork on
        n = verilog_fifos.window_need(s["ih"], s["iw"], s["kh"], s["sh"], s["pt"], s["oh"], s["ow"]) \
            if s["kind"] == "conv" and s["swg"] else np.arange(s["oh"] * s["ow"])
        need = n if need is None else need[n]
    return int(np.max(need + 1 - np.arange(len(need))))


def test_shortcut_fifo_holds_the_long_branch_lag_and_is_needed():
    """The identity shortcut's FIFO holds at least what the long branch reads ahead; a FIFO of the
    ordinary depth there deadlocks the pipeline (the simulation hangs)."""
    _, graph, x = _case("bireal", 2)
    design = verilog.build_design(graph, TargetOptions())
    stages = design.context["stages"]
    fork = stages[0]["fork"]
    skip = [b for b in fork["branches"] if b["to"].endswith("add")][0]
    lag = _lag(design, stages[0]["name"], skip["to"])
    assert lag >= stages[0]["ow"] and skip["depth"] >= lag
    assert any(f["depth"] == skip["depth"] for f in design.perf["fifos"])

    real_depth = verilog_fifos.depth
    try:
        verilog_fifos.depth = lambda arrival, taken, minimum: minimum
        with pytest.raises(RuntimeError, match="simulation"):
            verilog.run(graph, x, TargetOptions())
    finally:
        verilog_fifos.depth = real_depth


def test_schedule_recurrence_and_occupancy():
    rng = np.random.default_rng(0)
    arrival = np.cumsum(rng.integers(0, 5, 40))
    need = np.sort(rng.integers(0, 40, 25))
    got = verilog_fifos.output_times(need, arrival, 3, 7)
    t, want = -10**9, []
    for p in range(len(need)):
        t = max(arrival[need[p]] + 7, t + 3)
        want.append(t)
    assert got.tolist() == want
    # records arrive at cycles 0..9 and leave 4 cycles later: at cycle 4 records 0..4 are there (a
    # record leaving in the cycle another arrives still counts: the FIFO needs the entry meanwhile)
    assert verilog_fifos.occupancy(np.arange(10), np.arange(10) + 4) == 5
    assert verilog_fifos.occupancy(np.arange(10), np.arange(10)) == 1


def test_report_lists_the_fifo_depths(tmp_path, capsys, monkeypatch):
    import onnx

    from bnnc.backends import verilog_resources

    monkeypatch.setattr(verilog_resources, "available", lambda: False)  # the cycles and FIFOs only: no yosys
    path = tmp_path / "bireal.onnx"
    onnx.save(zoo.build("bireal", 0), str(path))
    assert main(["report", str(path), "--target", "verilog"]) == 0
    out = capsys.readouterr().out
    assert "FIFOs sized from the pipeline's schedule" in out and "fork branch to" in out


@pytest.mark.sweep
@pytest.mark.parametrize("name", ["mainsub_nin", "birealnet18"])
def test_wild_model_bit_exact_at_the_model_cycles(name):
    """The users' networks with real-valued first / shortcut / last layers (multiply-accumulate units,
    24-bit weights with a pre-shift) and Bi-Real's residual stream. Minutes each in Verilator: CI runs
    mainsub_nin on 3 inputs; BNNC_SWEEP_SCALE=2 runs both on 20 (the issue's check; birealnet18 builds
    in about 4 minutes and simulates 10-15 s per frame on one core)."""
    import onnx

    from bnnc.testing.wild import WILD_MODELS, options_of, wild_dir

    if not wild_dir().is_dir():
        pytest.skip("../shared/models/wild is not present")
    if name == "birealnet18" and sweep_scale() <= 1:
        pytest.skip("birealnet18 takes about 10 minutes in Verilator: BNNC_SWEEP_SCALE=2 runs it")
    n = 3 if sweep_scale() <= 1 else INPUTS
    graph = compile_graph(onnx.load(str(wild_dir() / f"{name}.onnx")), options_of(WILD_MODELS[name]))
    x = driver.prepare_inputs(graph, driver.random_samples(graph, n, 0)).grid
    design = verilog.build_design(graph, TargetOptions())
    assert any(s.get("mac") for s in design.context["stages"])
    ref = reference.run(graph, x).reshape(n, -1)
    y, _ = verilog.run(graph, x, TargetOptions(extra={"stalls": (5, 0.7, 0.6)}))
    assert np.array_equal(y, ref)
    y, stats = verilog.run(graph, x, TargetOptions())
    assert np.array_equal(y, ref)
    assert stats["estimated_ii"] <= stats["cycles_per_frame"] <= 1.02 * stats["estimated_ii"], stats["frame_intervals"]


def test_weight_bits_set_the_multiply_accumulate_width():
    """--weight-bits NODE=B: the layer's MAC unit gets B-bit weights (narrower multipliers) and its
    stated error bound grows; the other real-valued layers keep theirs."""
    import onnx

    from bnnc.testing.wild import WILD_MODELS, options_of, wild_dir

    if not wild_dir().is_dir():
        pytest.skip("../shared/models/wild is not present")
    model = onnx.load(str(wild_dir() / "mainsub_nin.onnx"))

    def macs(*flags):
        g = compile_graph(model, options_of(WILD_MODELS["mainsub_nin"] + flags))
        d = verilog.build_design(g, TargetOptions())
        return {op.source_ops[0]: (s["mac_weight_bits"], float(np.max(op.acc_error)))
                for s, op in zip(d.context["stages"], d.plan.hw_ops) if s.get("mac")}

    full = macs()
    first = next(iter(full))
    narrow = macs("--weight-bits", f"{first}=8")
    assert narrow[first][0] == 8 < full[first][0] and narrow[first][1] > full[first][1]
    assert all(narrow[k] == full[k] for k in full if k != first)
