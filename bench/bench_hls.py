#!/usr/bin/env python3
"""The HLS backend's figures per model and folding: cycles per frame, weight storage, and the
cost of its g++ C simulation.

    python bench/bench_hls.py [--quick] [--only NAME] [--json PATH]

For each model (bnnc's random TFC and CNV, the compressed-family zoo models --
ternary, two-scale, 2-bit activations, multi-base weights, activation planes, expander kernels,
fixed-point requantization and integer activations (EC2T, HBN), residual blocks (Bi-Real, ResNet-18
STQ: forks, branch-input FIFOs, fixed-point Adds, SumPool shortcuts) --
the real FINN TFC / Brevitas CNV from ../shared/models/ and the users' residual networks with
real-valued layers (birealnet18, mainsub_nin from ../shared/models/wild/, default folding only: their
multiply-accumulate units) when present) and each folding (folding.py's default; a tight and a loose
--target-cycles budget; and fully serial PE = SIMD = 1 for the MLPs) the script

* renders the HLS project and reports the folding's analytic MVTU cycles per frame (slowest
  layer), the generated dataflow's initiation interval (its slowest process, input stream and
  window generators included) and the frames per second that gives at 100 MHz, the most
  popcount planes of a layer, the widest multiply-accumulate weights (real-valued layers), the bits
  the weight planes and the per-row tables hold, and the
  beats the residual blocks' branch-input FIFOs hold (their depths, from the schedule);
* builds the C simulation with g++ (`-std=c++14 -O2 -ffp-contract=off`, in a fresh cache: the
  build time is a cold build), runs it on a batch of frames, checks the outputs equal the
  reference bit for bit (it aborts if not) and reports the simulation speed.

It prints a table and writes JSON (default bench/results/bench_hls.json). Cycle figures are the
generated structure's static schedule (one loop iteration per cycle at II=1), not Vitis reports.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bnnc import driver, zoo
from bnnc.backends import c_build, hls
from bnnc.pipeline import compile_file, compile_graph
from bnnc.targets import TargetOptions
from bnnc.testing.random_models import cnv_model, random_inputs, tfc_model

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "models"
DEFAULT_JSON = REPO / "bench" / "results" / "bench_hls.json"
CLOCK_HZ = 100e6


# bnnc.zoo models of the compressed codes, the fixed-point ones (Requantize layers, Activations)
# and the residual ones
FAMILIES = ("ternary-ttq", "dabn", "w1a2", "abc-fused", "pabt", "xnet", "ternary-ec2t", "hbn", "bireal",
            "resnet18-stq")


def models(quick: bool) -> list:
    out = [("random TFC", *_random(tfc_model(0)))]
    if not quick:
        out.append(("random CNV", *_random(cnv_model(0))))
    for name in FAMILIES[:1] if quick else FAMILIES:
        model = zoo.build(name, seed=0)
        g = compile_graph(model)
        out.append((f"zoo {name}", g, driver.prepare_inputs(g, zoo.inputs(model, 64, seed=0)).grid))
    tfc = SHARED / "finn-tfc-w1a1" / "model.onnx"
    if tfc.exists():
        _, g = compile_file(tfc)
        out.append(("FINN TFC-w1a1", g, driver.prepare_inputs(g, driver.random_samples(g, 64, 0)).grid))
    cnv = SHARED / "brevitas-cnv-1w1a" / "cnv_1w1a.onnx"
    if cnv.exists() and not quick:
        _, g = compile_file(cnv)
        out.append(("Brevitas CNV-1w1a", g, driver.prepare_inputs(g, np.load(cnv.parent / "input.npy")[:8]).grid))
    if not quick:
        from bnnc.testing.wild import WILD_MODELS, options_of, wild_dir

        for name in ("birealnet18", "mainsub_nin"):
            path = wild_dir() / f"{name}.onnx"
            if path.exists():
                import onnx

                g = compile_graph(onnx.load(str(path)), options_of(WILD_MODELS[name]))
                out.append((f"wild {name}", g, driver.prepare_inputs(g, driver.random_samples(g, 20, 0)).grid))
    return out


def _random(model):
    g = compile_graph(model)
    return g, driver.prepare_inputs(g, random_inputs(model, 64, 1)).grid


def foldings(graph, quick: bool, name: str = "") -> list:
    from bnnc import folding
    from bnnc.passes.activations_as_convs import activations_as_convs

    layers = folding.foldable_layers(activations_as_convs(graph))  # the backend's units: Activations too
    default = folding.analytic_ii(folding.choose_folding(activations_as_convs(graph)))
    out = [("default", {})]
    if not quick and not name.startswith("wild "):
        out.append((f"budget {default // 8}", {"target_cycles": max(default // 8, max(L.pixels for L in layers))}))
        out.append((f"budget {default * 8}", {"target_cycles": default * 8}))
        if all(L.pixels == 1 for L in layers):
            out.append(("serial", {"folding": {"layers": [{"pe": 1, "simd": 1} for _ in layers]}}))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one small model, default folding")
    ap.add_argument("--only", help="only the models whose name contains NAME")
    ap.add_argument("--json", default=str(DEFAULT_JSON))
    a = ap.parse_args()
    rows, results = [], []
    with tempfile.TemporaryDirectory() as cache:
        os.environ["BNNC_CACHE"] = cache  # cold builds
        for name, graph, grid in models(a.quick):
            if a.only and a.only not in name:
                continue
            ref = np.asarray(driver.run_target(graph, "ref", driver.Inputs(grid, grid))).reshape(grid.shape[0], -1)
            for fname, fopts in foldings(graph, a.quick, name):
                print(f"{name}, {fname} folding ...", file=sys.stderr)
                opts = TargetOptions(**fopts)
                fs = hls.foldings_for(graph, opts)
                t0 = time.perf_counter()
                files = hls.render(graph, fs)
                t_render = time.perf_counter() - t0
                t0 = time.perf_counter()
                exe = hls.build(files)
                t_build = time.perf_counter() - t0
                odt = "float32" if graph.output_info["dtype"] == "float32" else "int32"
                t0 = time.perf_counter()
                y = c_build.run(exe, grid, graph.input_info["dtype"], odt, graph.output_info["elements"])
                t_run = time.perf_counter() - t0
                if not np.array_equal(y.reshape(ref.shape), ref):
                    print(f"error: {name} ({fname}): HLS C simulation differs from the reference", file=sys.stderr)
                    return 1
                st = hls.stats(graph, fs)
                r = {"model": name, "folding": fname, "layers": st["folding"],
                     "mvtu_ii_cycles": st["mvtu_ii_cycles"], "dataflow_ii_cycles": st["dataflow_ii_cycles"],
                     "slowest_process": st["slowest_process"],
                     "frames_per_s_at_100mhz": CLOCK_HZ / st["dataflow_ii_cycles"], "weight_bits": st["weight_bits"],
                     "table_bits": st["table_bits"], "max_planes": max(len(L["planes"]) for L in st["layers"]),
                     "mac_layers": {L["name"]: L["mac_weight_bits"] for L in st["layers"] if L["mac_weight_bits"]},
                     "skip_fifo_depths": st["skip_fifo_depths"],
                     "skip_fifo_beats": sum(st["skip_fifo_depths"].values()),
                     "model_cpp_bytes": len(files["model.cpp"]), "render_s": t_render, "build_s": t_build,
                     "csim_frames_per_s": grid.shape[0] / t_run, "frames": int(grid.shape[0]), "bit_exact": True}
                results.append(r)
                rows.append((name, fname, str(r["mvtu_ii_cycles"]), str(r["dataflow_ii_cycles"]),
                             r["slowest_process"], f"{r['frames_per_s_at_100mhz']:,.0f}", str(r["max_planes"]),
                             f"{len(r['mac_layers'])} x {max(r['mac_layers'].values())}b" if r["mac_layers"] else "-",
                             f"{r['weight_bits']:,}", f"{r['table_bits']:,}", str(r["skip_fifo_beats"]),
                             f"{t_build:.1f}",
                             f"{r['csim_frames_per_s']:,.0f}"))
    head = ("model", "folding", "MVTU II", "dataflow II", "slowest process", "fps@100MHz", "planes", "MAC",
            "weight bits", "table bits", "FIFO beats", "g++ s", "csim fps")
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    for r in (head, *rows):
        print("  ".join(c.ljust(w) if i < 2 or i == 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    path = Path(a.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"quick": a.quick, "clock_hz": CLOCK_HZ, "results": results}, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
