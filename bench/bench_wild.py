#!/usr/bin/env python3
"""The shared real-world models (../shared/models/wild): compile time and latency of bnnc's C vs
onnxruntime.

    python bench/bench_wild.py [--quick] [--rounds R] [--json PATH] [NAME ...]

For each model, with the input its README declares (bnnc.testing.wild), the script times the
compilation (frontend, passes, C rendering; the C compiler's own time separately), compiles the C
with -O3 -march=native, checks once that it equals bnnc's reference executor bit for bit on 8
random samples of the declared grid (it aborts if not), and times it with the generated harness,
against onnxruntime on the original model (one thread, ORT_ENABLE_ALL), in interleaved rounds
(the minimum of each is kept; see bench_families.py, whose timing helpers this uses). A model
bnnc refuses gets its one-line reason instead. The goal: C at least 3x onnxruntime on every model
with binary layers.

It prints a table and writes JSON (default bench/results/bench_wild.json):
{"models": {name: {compile_s, cc_s, c_ns, ort_ns, speedup, binary_macs, int_macs, weight_bytes,
float32_weight_bytes} or {refused}}}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_families import FLAGS, log, ort_session, time_ort  # noqa: E402

from bnnc import driver  # noqa: E402
from bnnc.backends import c as c_backend  # noqa: E402
from bnnc.backends import c_build  # noqa: E402
from bnnc.errors import BnncError  # noqa: E402
from bnnc.onnx_loader import read_model  # noqa: E402
from bnnc.pipeline import compile_graph  # noqa: E402
from bnnc.report import report  # noqa: E402
from bnnc.testing.wild import WILD_MODELS, options_of, wild_dir  # noqa: E402


def bench(name: str, quick: bool, rounds: int) -> dict:
    t0 = time.perf_counter()
    try:
        model = read_model(wild_dir() / f"{name}.onnx")
        graph = compile_graph(model, options_of(WILD_MODELS[name]))
        files = c_backend.render(driver.backend_graph(graph), "bnnc")
    except BnncError as e:
        return {"refused": str(e)}
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    exe = c_build.build(files, FLAGS)
    cc_s = time.perf_counter() - t0
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 8, 0))
    ref = driver.run_target(graph, "ref", inputs)
    odt = "float32" if graph.output_info["dtype"] == "float32" else "int32"
    y = c_build.run(exe, inputs.grid, graph.input_info["dtype"], odt, graph.output_info["elements"])
    if not np.array_equal(y.reshape(ref.shape), ref):
        raise SystemExit(f"{name}: the generated C differs from the reference; not timing it")
    probe = c_build.bench(exe, inputs.grid, graph.input_info["dtype"], 3)
    iters = max(3, min(20000, int((0.05 if quick else 0.3) * 1e9 / max(probe, 1.0))))
    sess, feed = ort_session(model, inputs.model)
    c_ns = ort_ns = float("inf")
    for _ in range(rounds):  # interleaved: a slow phase of a shared machine hits both columns
        c_ns = min(c_ns, c_build.bench(exe, inputs.grid, graph.input_info["dtype"], iters))
        ort_ns = min(ort_ns, time_ort(sess, feed, max(3, iters // 4)))
    t = report(driver.backend_graph(graph))["totals"]
    return {"compile_s": compile_s, "cc_s": cc_s, "c_ns": c_ns, "ort_ns": ort_ns, "speedup": ort_ns / c_ns,
            "binary_macs": t["binary_macs"], "int_macs": t["int_macs"], "weight_bytes": t["weight_bytes"],
            "float32_weight_bytes": t["float32_weight_bytes"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="wild models (default: all)")
    ap.add_argument("--quick", action="store_true", help="shorter timing runs")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (the minimum is kept)")
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "bench_wild.json"))
    a = ap.parse_args(argv)
    if not wild_dir().is_dir():
        raise SystemExit(f"{wild_dir()} is not present")
    names = a.names or list(WILD_MODELS)
    results = {}
    for i, name in enumerate(names, 1):
        log(f"[{i}/{len(names)}] {name}")
        results[name] = bench(name, a.quick, max(1, a.rounds))
    head = ["model", "compile s", "cc s", "C us", "ORT us", "speed-up", "bin MACs", "int MACs", "weights B",
            "goal"]
    rows = []
    for n, r in results.items():
        if "refused" in r:
            rows.append([n, "-", "-", "-", "-", "-", "-", "-", "-", "refused: " + r["refused"][:70]])
            continue
        goal = ("met" if r["speedup"] >= 3 else "MISSED") if r["binary_macs"] else "(no binary layers)"
        rows.append([n, f"{r['compile_s']:.1f}", f"{r['cc_s']:.1f}", f"{r['c_ns'] / 1e3:.1f}",
                     f"{r['ort_ns'] / 1e3:.1f}", f"{r['speedup']:.1f}x", str(r["binary_macs"]), str(r["int_macs"]),
                     str(r["weight_bytes"]), goal])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for r in [head] + rows:
        print("  ".join(str(c).rjust(w) if j < len(r) - 1 else str(c) for j, (c, w) in enumerate(zip(r, widths))))
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"quick": a.quick, "rounds": a.rounds, "flags": FLAGS, "models": results},
                              indent=2) + "\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
