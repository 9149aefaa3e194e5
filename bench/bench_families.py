#!/usr/bin/env python3
"""Latency and size of the compressed-network families of bnnc.zoo: generated C vs onnxruntime.

    python bench/bench_families.py [--quick] [--json PATH] [NAME ...]

For each zoo family model (seed 0, the zoo's default sizes) the script compiles the model to C
(-O3 -march=native, batch 1, one thread; and the same with -DBNNC_PORTABLE, the portable C
kernels instead of the AVX-512 ones), checks once that both C outputs equal bnnc's reference
executor bit for bit (it aborts if not), and times them with the generated harness (best of 5 runs
of `iters` inferences). onnxruntime runs the same ONNX model (custom QONNX ops rewritten to
standard ones by bnnc.original; one thread, ORT_ENABLE_ALL; best of 5 runs of `iters` calls).
C and onnxruntime are timed in interleaved rounds (--rounds, the minimum of each is kept), so
that a shared machine's slower phases hit both.
From `bnnc report` it takes the figures that explain the speed: binary MACs (bit operations),
integer MACs, word popcounts, integer multiplies, and the weight storage against float32.

It prints a table and writes JSON (default bench/results/bench_families.json):
{"models": {name: {c_ns, c_portable_ns, ort_ns, speedup, binary_macs, int_macs, popcounts,
multiplies, weight_bytes, float32_weight_bytes, compression}}}.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bnnc import driver, zoo
from bnnc.backends import c as c_backend
from bnnc.backends import c_build
from bnnc.original import OriginalModel
from bnnc.pipeline import compile_graph
from bnnc.report import report

FLAGS = ("-std=c99", "-O3", "-march=native", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror")
PORTABLE_FLAGS = FLAGS + ("-DBNNC_PORTABLE",)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ort_session(model, x: np.ndarray):
    """(session, feed) of onnxruntime for the model (custom ops rewritten), one thread."""
    import onnxruntime as ort

    orig = OriginalModel(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(orig.model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    feed = {orig.input_name: x[:1].reshape(orig.input_shape).astype(np.float32)}
    sess.run(None, feed)
    return sess, feed


def time_ort(sess, feed, iters: int) -> float:
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(iters):
            sess.run(None, feed)
        best = min(best, (time.perf_counter() - t0) / iters)
    return best * 1e9


def bench(name: str, quick: bool, rounds: int) -> dict:
    model = zoo.build(name, 0)
    graph = compile_graph(model)
    x = zoo.inputs(model, 8, seed=0)
    inputs = driver.prepare_inputs(graph, x)
    files = c_backend.render(driver.backend_graph(graph), "bnnc")
    odt = "float32" if graph.output_info["dtype"] == "float32" else "int32"
    ref = driver.run_target(graph, "ref", inputs)
    exes = {}
    for label, flags in (("c_ns", FLAGS), ("c_portable_ns", PORTABLE_FLAGS)):
        exes[label] = c_build.build(files, flags)
        y = c_build.run(exes[label], inputs.grid, graph.input_info["dtype"], odt, graph.output_info["elements"])
        if not np.array_equal(y.reshape(ref.shape), ref):
            raise SystemExit(f"{name}: the generated C ({' '.join(flags)}) differs from the reference; not timing it")
    probe = c_build.bench(exes["c_ns"], inputs.grid, graph.input_info["dtype"], 10)
    iters = max(10, min(20000, int((0.05 if quick else 0.3) * 1e9 / max(probe, 1.0))))
    sess, feed = ort_session(model, inputs.model)
    times = {"c_ns": float("inf"), "c_portable_ns": float("inf"), "ort_ns": float("inf")}
    for _ in range(rounds):  # interleaved: a slow phase of a shared machine hits every column
        for label, exe in exes.items():
            times[label] = min(times[label], c_build.bench(exe, inputs.grid, graph.input_info["dtype"], iters))
        times["ort_ns"] = min(times["ort_ns"], time_ort(sess, feed, max(10, iters // 10 if quick else iters // 4)))
    c_ns, ort_ns = times["c_ns"], times["ort_ns"]
    t = report(driver.backend_graph(graph))["totals"]
    return {"c_ns": c_ns, "c_portable_ns": times["c_portable_ns"], "ort_ns": ort_ns, "speedup": ort_ns / c_ns,
            "binary_macs": t["binary_macs"], "int_macs": t["int_macs"], "popcounts": t["popcounts"],
            "multiplies": t["multiplies"],
            "weight_bytes": t["weight_bytes"], "float32_weight_bytes": t["float32_weight_bytes"],
            "compression": t["compression"], "description": zoo.MODELS[name][1]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="zoo models (default: every family)")
    ap.add_argument("--quick", action="store_true", help="shorter timing runs")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (the minimum is kept)")
    ap.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "bench_families.json"))
    a = ap.parse_args(argv)
    names = a.names or [n for n in zoo.FAMILIES if n != "cnv-stq40"] + ["cnv-stq40"]
    results = {}
    for i, name in enumerate(names, 1):
        log(f"[{i}/{len(names)}] {name}")
        results[name] = bench(name, a.quick, max(1, a.rounds))
    head = ["model", "C us", "C port. us", "ORT us", "speed-up", "bin MACs", "int MACs", "popcounts",
            "multiplies", "weights B", "x vs f32"]
    rows = [[n, f"{r['c_ns'] / 1e3:.1f}", f"{r['c_portable_ns'] / 1e3:.1f}", f"{r['ort_ns'] / 1e3:.1f}",
             f"{r['speedup']:.1f}x", str(r["binary_macs"]), str(r["int_macs"]), str(r["popcounts"]),
             str(r["multiplies"]), str(r["weight_bytes"]), f"{r['compression']:.1f}"] for n, r in results.items()]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for r in [head] + rows:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"quick": a.quick, "rounds": a.rounds, "flags": FLAGS}
    out.write_text(json.dumps({**meta, "models": results}, indent=2) + "\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
