#!/usr/bin/env python3
"""MCU firmware figures (Cortex-M and RISC-V): instructions and estimated cycles per inference and
per layer, instructions and cycles per binary and per integer MAC, arena against its lower bound,
flash against packed weights + thresholds + code.

    python bench/bench_mcu.py [--core cortex-m4 [--core rv32imc ...] | --core all] [--quick] [--json PATH]
    python bench/bench_mcu.py --ram [--core ... | --core all] [--json PATH] [NAME ...]

For each model (the random CNV and TFC of bnnc.testing.random_models and, when ../shared/models
is there, the real Brevitas CNV and FINN TFC) the script builds the firmware for the core
(bnnc's emulation build: model.c + startup + harness, zig cc -O2), runs one inference in unicorn,
checks that the output equals bnnc's reference executor bit for bit (it aborts if not) and
reports:

* instructions per inference and per layer, and instructions per MAC of every Conv; "binary
  convs" sums the Conv layers with a bit input that are convolutions in the model (not Gemm /
  MatMul dense layers): on the CNV topology the five 3x3 convs after the first; "integer" sums
  the Conv / dense layers with an integer input (CNV's first conv, TFC's first dense);
* estimated cycles (bnnc.backends.mcu_cycles: the core's cycles per instruction class on the
  executed instructions; zero-wait-state memory) per inference, per layer and per MAC, and the
  latency at the core's default clock;
* the same with BNNC_NAIVE_POPCOUNT (one bit-trick popcount per word instead of bnnc's
  carry-save sequence), the baseline the carry-save kernel is measured against (--quick skips);
* arena bytes against the liveness lower bound (largest total of buffers live together);
* flash bytes against packed weights (one bit per binary weight, one byte per integer weight)
  + thresholds (4 bytes per output channel and border class) + code (.text).

RAM mode (`--ram`): model RAM against its lower bound on the zoo (bnnc.zoo: CNV, TFC and every
family model), the real CNV / TFC when ../shared/models has them, and the shared wild models
(bnnc.testing.wild, with the inputs their README declares). Model RAM is what the firmware
holds for the model, measured: .data + .bss (the static arena) + the deepest stack use from the
model's entry, without the emulator harness's input and output buffers. The lower bound is
plan_arena's: the most bytes of buffers (activations, each layer's scratch, residual and concat
tensors live across a branch) live at one step of the schedule, as disjoint blocks; the arena can
be smaller where a layer's output is planned over its input (plan_arena.raster_distance). A model
whose arena exceeds the core's typical RAM (mcu.CORES) is listed as not fitting, without a build. Writes a table per core
and JSON (default bench/results/bench_mcu_ram.json).

MACs count what the compiled IR computes (O * kh * kw * C * OH * OW after bnnc stripped constant
and pruned channels), as bench_c.py does. Writes a table and JSON (default
bench/results/bench_mcu.json).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bnnc import driver, ir
from bnnc.backends import mcu
from bnnc.pipeline import compile_file, compile_graph
from bnnc.targets import TargetOptions
from bnnc.testing.random_models import cnv_model, random_inputs, tfc_model

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "models"
DEFAULT_JSON = REPO / "bench" / "results" / "bench_mcu.json"
DEFAULT_RAM_JSON = REPO / "bench" / "results" / "bench_mcu_ram.json"
RAM_TARGET = 1.05  # model RAM / lower bound
TARGET = 0.28  # instructions of the whole inference per binary MAC on CNV, Cortex-M4


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def models() -> list:
    """(label, lowered graph, one input on the model's own scale, source)."""
    out = []
    m = cnv_model(0)
    out.append(("cnv", compile_graph(m), random_inputs(m, 1, 1), "random_models.cnv_model(0)"))
    m = tfc_model(0)
    out.append(("tfc", compile_graph(m), random_inputs(m, 1, 1), "random_models.tfc_model(0)"))
    cnv = SHARED / "brevitas-cnv-1w1a"
    if (cnv / "cnv_1w1a.onnx").exists():
        _, g = compile_file(cnv / "cnv_1w1a.onnx")
        out.append(("brevitas-cnv-1w1a", g, np.load(cnv / "input.npy")[:1], "../shared/models/brevitas-cnv-1w1a"))
    tfc = SHARED / "finn-tfc-w1a1"
    if (tfc / "model.onnx").exists():
        _, g = compile_file(tfc / "model.onnx")
        out.append(("finn-tfc-w1a1", g, np.load(tfc / "input.npy")[:1], "../shared/models/finn-tfc-w1a1"))
    if not cnv.exists():
        log(f"(skipping the shared models: {SHARED} not found)")
    return out


def ram_models(names: list) -> list:
    """(label, lowered graph, one input on the model's grid, source) of the RAM table: the zoo, the
    real CNV / TFC of ../shared/models, the shared wild models; `names` selects by label."""
    from bnnc import zoo
    from bnnc.testing.wild import WILD_MODELS, options_of, wild_dir

    specs = [(f"zoo {n}", lambda n=n: compile_graph(zoo.build(n)), f"bnnc.zoo.build('{n}')") for n in zoo.names()]
    for label, d, f in (("brevitas-cnv-1w1a", "brevitas-cnv-1w1a", "cnv_1w1a.onnx"),
                        ("finn-tfc-w1a1", "finn-tfc-w1a1", "model.onnx")):
        if (SHARED / d / f).exists():
            specs.append((label, lambda d=d, f=f: compile_file(SHARED / d / f)[1], f"../shared/models/{d}"))
    if wild_dir().is_dir():
        for n, flags in WILD_MODELS.items():
            specs.append((f"wild {n}", lambda n=n, flags=flags: compile_file(wild_dir() / f"{n}.onnx",
                                                                             options_of(flags))[1],
                          f"../shared/models/wild/{n}.onnx {' '.join(flags)}".strip()))
    else:
        log(f"(skipping the wild models: {wild_dir()} not found)")
    out = []
    for label, make, source in specs:
        if names and not any(n in label for n in names):
            continue
        log(f"[{label}] compiling ...")
        g = make()
        out.append((label, g, driver.random_samples(g, 1, 0), source))
    return out


def bench_ram(label: str, graph: ir.Graph, x: np.ndarray, source: str, core: str) -> dict:
    """Flash, model RAM (static + stack, measured), arena and its lower bound on one core; a model
    whose lower bound exceeds the core's typical RAM is not built."""
    bg = mcu.backend_graph(graph)
    bound, ram = int(bg.arena["lower_bound"]), mcu.CORES[core].ram
    res = {"source": source, "core": core, "core_ram_bytes": ram, "arena_lower_bound_bytes": bound,
           "arena_bytes": int(bg.arena["size"]), "arena_overlap_bound_bytes": int(bg.arena["overlap_bound"]),
           "arena_overlaps": sorted(bg.arena["overlaps"]), "fits": bg.arena["size"] <= ram}
    if not res["fits"]:
        log(f"[{label}] {core}: arena {bg.arena['size']} B > {ram} B of RAM: does not fit")
        return res
    t0 = time.perf_counter()
    inputs = driver.prepare_inputs(graph, x)
    ref = driver.run_target(graph, "ref", inputs)
    log(f"[{label}] building and emulating on {core} ...")
    y, st = mcu.emulate(graph, inputs.grid, TargetOptions(mcu=core))
    if not np.array_equal(y.reshape(ref.shape), ref):
        sys.exit(f"ERROR [{label}]: the {core} output differs from the reference executor")
    res.update({"compiler": st["compiler"], "flash_bytes": st["flash_bytes"], "model_ram_bytes": st["model_ram_bytes"],
                "static_bytes": st["model_ram_bytes"] - st["stack_bytes"], "stack_bytes": st["stack_bytes"],
                "stack_entry_bytes": st["stack_entry_bytes"], "stack_per_layer": st["stack_per_layer"],
                "ram_ratio": round(st["model_ram_bytes"] / max(bound, 1), 4),
                "fits": st["model_ram_bytes"] <= ram, "seconds": round(time.perf_counter() - t0, 1)})
    deepest = max(st["stack_per_layer"], key=st["stack_per_layer"].get, default=None)
    res["deepest_layer"] = deepest
    return res


def ram_report(results: dict, core: str) -> str:
    rows = []
    for label, r in results.items():
        if "model_ram_bytes" not in r:
            rows.append([label, "-", "-", r["arena_lower_bound_bytes"], "-", "-", "-",
                         f"does not fit ({r['core_ram_bytes']})"])
            continue
        d = r["deepest_layer"]
        stack = f"{r['stack_bytes']} = {r['stack_entry_bytes']} + {r['stack_bytes'] - r['stack_entry_bytes']}"
        over = f" ({len(r['arena_overlaps'])} over, {r['arena_overlap_bound_bytes']})" if r["arena_overlaps"] else ""
        rows.append([label, r["flash_bytes"], r["model_ram_bytes"], r["arena_lower_bound_bytes"], f"{r['arena_bytes']}{over}",
                     f"{r['static_bytes']} + {stack}" + (f" ({d})" if d else ""),
                     f"{r['ram_ratio']:.3f}" + ("" if r["ram_ratio"] <= RAM_TARGET else " *"),
                     "yes" if r["fits"] else f"no ({r['core_ram_bytes']})"])
    return (f"{core}: model RAM (static + stack, measured) against the liveness lower bound; * above "
            f"{RAM_TARGET}; arena: (outputs planned over their inputs, the bound with them)\n\n"
            + fmt_table(["model", "flash", "RAM", "lower bound", "arena", "static + stack (entry + deepest layer)",
                         "RAM / bound", "fits"], rows))


def layer_table(graph: ir.Graph) -> list:
    """Per op of the MCU backend graph: name, kind, MACs, packed weight / threshold bytes."""
    bg = mcu.backend_graph(graph)
    rows = []
    for op in bg.ops():
        d = {"name": op.name, "kind": type(op).__name__, "macs": 0, "binary_conv": False, "int_layer": False,
             "weight_bytes": 0, "threshold_bytes": 0}
        if isinstance(op, ir.Conv):
            o, kh, kw, c = op.w.shape
            oh, ow = bg.tensors[op.outputs[0]].shape[:2]
            p = op.packed
            d["macs"] = int(o * kh * kw * c * oh * ow)
            d["int_layer"] = p.in_kind != "bits"
            d["kind"] = ("dense" if op.is_dense else "conv") + ("_bin" if p.in_kind == "bits" else "_int")
            d["binary_conv"] = p.in_kind == "bits" and not op.is_dense
            d["weight_bytes"] = -(-o * kh * kw * c // 8) if p.in_kind == "bits" else o * kh * kw * c
            d["threshold_bytes"] = 0 if p.thr is None else int(p.thr.size) * 4
            d["row_words"], d["dense_window"] = p.taps if p.in_kind == "bits" else None, bool(p.dense)
        rows.append(d)
    return rows


def bench_model(label: str, graph: ir.Graph, x: np.ndarray, source: str, core: str, quick: bool) -> dict:
    t0 = time.perf_counter()
    inputs = driver.prepare_inputs(graph, x)
    ref = driver.run_target(graph, "ref", inputs)
    opts = TargetOptions(mcu=core)
    log(f"[{label}] building and emulating on {core} ...")
    y, st = mcu.emulate(graph, inputs.grid, opts)
    if not np.array_equal(y.reshape(ref.shape), ref):
        sys.exit(f"ERROR [{label}]: the {core} output differs from the reference executor")
    naive = None
    if not quick:
        log(f"[{label}] baseline: BNNC_NAIVE_POPCOUNT ...")
        yn, naive = mcu.emulate(graph, inputs.grid, opts, defines=("BNNC_NAIVE_POPCOUNT",))
        if not np.array_equal(yn.reshape(ref.shape), ref):
            sys.exit(f"ERROR [{label}]: the naive-popcount build differs from the reference executor")
    layers = layer_table(graph)
    for d in layers:
        n = st["instructions_per_layer"][d["name"]]
        d["instructions"] = n
        d["instr_per_mac"] = round(n / d["macs"], 4) if d["macs"] else None
        d["cycles"] = st["cycles_per_layer"][d["name"]]
        d["cycles_per_mac"] = round(d["cycles"] / d["macs"], 4) if d["macs"] else None
        if naive:
            d["naive_instructions"] = naive["instructions_per_layer"][d["name"]]
            d["naive_instr_per_mac"] = round(d["naive_instructions"] / d["macs"], 4) if d["macs"] else None
    bin_convs = [d for d in layers if d["binary_conv"]]
    bin_macs = sum(d["macs"] for d in bin_convs)
    res = {"source": source, "core": core, "compiler": st["compiler"], "instructions": st["instructions"],
           "glue_instructions": st["instructions_per_layer"]["glue"], "layers": layers,
           "binary_conv_macs": bin_macs,
           "binary_conv_instructions": sum(d["instructions"] for d in bin_convs)}
    res["binary_conv_instr_per_mac"] = round(res["binary_conv_instructions"] / bin_macs, 4) if bin_macs else None
    # every instruction of the inference (first layer, quantizer, pools, glue) per binary MAC of
    # the binary convolutions and dense layers
    all_bin = sum(d["macs"] or 0 for d in res["layers"] if d["kind"].endswith("_bin"))
    res["instr_per_binary_mac"] = round(res["instructions"] / all_bin, 4) if all_bin else None
    res["binary_conv_cycles_per_mac"] = (round(sum(d["cycles"] for d in bin_convs) / bin_macs, 4)
                                         if bin_macs else None)
    int_layers = [d for d in layers if d["int_layer"]]
    int_macs = sum(d["macs"] for d in int_layers)
    res["int_macs"] = int_macs
    res["int_instr_per_mac"] = round(sum(d["instructions"] for d in int_layers) / int_macs, 4) if int_macs else None
    res["int_cycles_per_mac"] = round(sum(d["cycles"] for d in int_layers) / int_macs, 4) if int_macs else None
    res.update({"cycles": st["cycles"], "cycle_model": st["cycle_model"], "clock_mhz": st["clock_mhz"],
                "latency_ms": round(st["latency_ms"], 4)})
    if naive:
        res["naive_instructions"] = naive["instructions"]
        res["naive_binary_conv_instr_per_mac"] = (round(sum(d["naive_instructions"] for d in bin_convs) / bin_macs, 4)
                                                 if bin_macs else None)
    weights = sum(d["weight_bytes"] for d in layers)
    thresholds = sum(d["threshold_bytes"] for d in layers)
    code = st["sections"].get(".text", 0)
    res.update({"flash_bytes": st["flash_bytes"], "ram_bytes": st["ram_bytes"], "stack_bytes": st["stack_bytes"],
                "arena_bytes": st["arena_bytes"], "arena_lower_bound_bytes": st["arena_lower_bound_bytes"],
                "arena_ratio": round(st["arena_bytes"] / max(st["arena_lower_bound_bytes"], 1), 4),
                "packed_weight_bytes": weights, "threshold_bytes": thresholds, "code_bytes": code,
                "flash_ratio": round(st["flash_bytes"] / (weights + thresholds + code), 4),
                "sections": st["sections"], "seconds": round(time.perf_counter() - t0, 1)})
    log(f"[{label}] done in {res['seconds']} s")
    return res


def fmt_table(header: list, rows: list) -> str:
    w = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).ljust(w[i]) if i == 0 else str(v).rjust(w[i]) for i, v in enumerate(r))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * x for x in w)] + [line(r) for r in rows])


def report(results: dict, core: str) -> str:
    out = [f"{core}: firmware built with {next(iter(results.values()))['compiler']}, one inference each", ""]
    rows = []
    for label, r in results.items():
        ipm, whole = r["binary_conv_instr_per_mac"], r.get("instr_per_binary_mac")
        rows.append([label, r["instructions"], "-" if whole is None else f"{whole:.3f}", "-" if ipm is None else f"{ipm:.3f}",
                     "-" if r.get("naive_binary_conv_instr_per_mac") is None else f"{r['naive_binary_conv_instr_per_mac']:.3f}",
                     f"{r['arena_bytes']} / {r['arena_lower_bound_bytes']} = {r['arena_ratio']:.3f}",
                     f"{r['flash_bytes']} / {r['packed_weight_bytes'] + r['threshold_bytes'] + r['code_bytes']} = "
                     f"{r['flash_ratio']:.3f}", r["ram_bytes"]])
    out.append(fmt_table(["model", "instructions", "instr/bin MAC", "instr/MAC bin conv", "naive", "arena / bound",
                          "flash / (weights+thr+code)", "RAM"], rows))
    out.append(f"instr/bin MAC: all instructions of the inference per binary MAC (target on CNV, Cortex-M4: "
               f"<= {TARGET}); instr/MAC bin conv: those of the binary convolutions alone; naive: the same with "
               f"one bit-trick popcount per word.")
    for label, r in results.items():
        out += ["", f"{label}: per layer ({r['instructions']} instructions, glue {r['glue_instructions']}; flash "
                    f"{r['flash_bytes']} B = code {r['code_bytes']} + packed weights {r['packed_weight_bytes']} + "
                    f"thresholds {r['threshold_bytes']} + other {r['flash_bytes'] - r['code_bytes'] - r['packed_weight_bytes'] - r['threshold_bytes']})"]
        rows = []
        for d in r["layers"]:
            rows.append([d["name"], d["kind"], d["macs"] or "-", d["instructions"],
                         f"{100 * d['instructions'] / r['instructions']:.1f}%",
                         "-" if d["instr_per_mac"] is None else f"{d['instr_per_mac']:.3f}",
                         "-" if d.get("naive_instr_per_mac") is None else f"{d['naive_instr_per_mac']:.3f}",
                         d["cycles"], "-" if d["cycles_per_mac"] is None else f"{d['cycles_per_mac']:.3f}",
                         "-" if d.get("row_words") is None else f"{d['row_words']}{' dense' if d['dense_window'] else ''}"])
        out.append(fmt_table(["layer", "kind", "MACs", "instructions", "share", "instr/MAC", "naive", "cycles (est.)",
                              "cycles/MAC", "row words"], rows))
    return "\n".join(out)


def summary(by_core: dict) -> str:
    """One row per model and core: the figures to compare cores by."""
    rows = []
    labels = list(next(iter(by_core.values())))
    f3 = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for label in labels:
        for core, results in by_core.items():
            r = results[label]
            rows.append([label, core, r["instructions"], r["cycles"], f"{r['latency_ms']:.2f} @ {r['clock_mhz']:g}",
                         f3(r["binary_conv_instr_per_mac"]), f3(r["binary_conv_cycles_per_mac"]),
                         f3(r["int_instr_per_mac"]), f3(r["int_cycles_per_mac"]), r["flash_bytes"], r["ram_bytes"],
                         f"{r['arena_bytes']} / {r['arena_lower_bound_bytes']}"])
    return fmt_table(["model", "core", "instructions", "cycles (est.)", "ms @ MHz", "instr/MAC bin conv",
                      "cyc/MAC bin conv", "instr/MAC int", "cyc/MAC int", "flash", "RAM", "arena / bound"], rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--core", action="append", choices=sorted(mcu.CORES) + ["all"],
                    help="core to build for (repeatable; all: every core; default cortex-m4)")
    ap.add_argument("--quick", action="store_true", help="skip the naive-popcount baseline")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"output JSON (default {DEFAULT_JSON})")
    ap.add_argument("--ram", action="store_true", help="the RAM table: zoo, real CNV / TFC and wild models")
    ap.add_argument("names", nargs="*", help="--ram: only the models whose label contains one of these")
    args = ap.parse_args(argv)
    if args.names and not args.ram:
        ap.error("model names select models of the --ram table only")
    cores = list(mcu.CORES) if "all" in (args.core or []) else list(dict.fromkeys(args.core or ["cortex-m4"]))
    t0 = time.perf_counter()
    if args.ram:
        graphs = ram_models(args.names)
        by_core = {core: {label: bench_ram(label, g, x, src, core) for label, g, x, src in graphs} for core in cores}
        for core in cores:
            print(ram_report(by_core[core], core) + "\n")
        path = DEFAULT_RAM_JSON if args.json == DEFAULT_JSON else args.json
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"target_ram_ratio": RAM_TARGET, "cores": by_core}, indent=2) + "\n")
        print(f"wrote {path} ({time.perf_counter() - t0:.1f} s)")
        return 0
    graphs = models()
    by_core = {}
    for core in cores:
        by_core[core] = {label: bench_model(label, g, x, src, core, args.quick) for label, g, x, src in graphs}
        print(report(by_core[core], core) + "\n")
    if len(cores) > 1:
        print(summary(by_core))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    doc = {"target_instr_per_binary_mac": TARGET, "cores": {c: {"models": r} for c, r in by_core.items()}}
    if len(cores) == 1:  # the single-core layout of earlier runs
        doc.update(core=cores[0], models=by_core[cores[0]])
    args.json.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {args.json} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
