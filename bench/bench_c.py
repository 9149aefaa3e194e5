#!/usr/bin/env python3
"""Latency of bnnc's generated C against onnxruntime, per model and per binary layer.

    python bench/bench_c.py [--quick] [--json PATH]

For each model (the random CNV and TFC of bnnc.testing.random_models, and the real Brevitas CNV
in ../shared/models/ when it is there) the script

* compiles the model to C and builds it twice: with the generated Makefile's own CFLAGS (what
  `make` gives a user, "C make") and with NATIVE_FLAGS (-march=native, "C native"); batch 1, one
  thread. One build carries every kernel variant (avx512, avx2, portable) and picks the best the
  CPU runs at run time; both builds are checked once against bnnc's reference executor bit for
  bit with every variant this CPU runs (it aborts if one differs), then timed with the generated
  harness (`--bench`: best of 5 runs of `iters` inferences). The portable variant of the make
  build (BNNC_KERNELS=portable: the portable C kernels) is timed too, as "C portable";
* times onnxruntime on the same ONNX model (one intra-op and one inter-op thread, ORT_ENABLE_ALL,
  batch 1; the same statistic: best of 5 runs of `iters` calls to `session.run`, which includes
  the Python call overhead of onnxruntime, plus the median of all calls). The shared QONNX model
  runs after bnnc.original rewrote its custom ops to standard ones (it is skipped if that fails);
* times every layer of the generated C separately: a second harness includes model.c and calls
  the layer functions of `<name>_forward_<variant>` (the variant the make build picks), in order and
  with the same arguments, each `iters` times (a layer run repeatedly on the same input gives the
  same output, so every layer sees the data it sees in a full inference);

C (make, native, portable), per-layer C (make build) and onnxruntime are timed in interleaved
rounds (3, or 1 with --quick) and the minimum over rounds is reported: virtual machines have slow
phases. The script then prints a table and writes JSON (default bench/results/bench_c.json):
{"machine": {...}, "quick": bool, "models": {name: {c_ns, c_native_ns, native_ratio, c_portable_ns,
kernels, ort_ns, speedup, binary_macs, layers: [{name, kind, binary_macs, ns, gmacs_per_s, ...}], ...}}}.

MACs count what the compiled IR computes: O * kh * kw * C * OH * OW from each IR Conv's weight
shape (O, kh, kw, C) and output shape (OH, OW, O), after bnnc removed pruned and constant
channels, so they can be lower than the ONNX model's own MAC count. A layer is "binary" when its
input is packed bits (XNOR-popcount); the first layer of CNV and TFC takes integers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bnnc import driver, ir
from bnnc.backends import c_build
from bnnc.pipeline import compile_graph
from bnnc.testing.random_models import cnv_model, random_inputs, tfc_model

NATIVE_FLAGS = ("-std=c99", "-O3", "-march=native", "-ffp-contract=off", "-Wall", "-Wextra", "-Werror")
NAME = "bnnc"  # C prefix of the generated code: bnnc_run, bnnc_input_t, BNNC_INPUT_SIZE
REPO = Path(__file__).resolve().parent.parent
SHARED_CNV = REPO.parent / "shared" / "models" / "brevitas-cnv-1w1a" / "cnv_1w1a.onnx"
DEFAULT_JSON = REPO / "bench" / "results" / "bench_c.json"
CHECK_SAMPLES = 4


def log(msg: str) -> None:
    print(msg, flush=True)


# -- models -------------------------------------------------------------------------------------

def models() -> list:
    """(label, ModelProto, float inputs (N, ...), ORT model or None, note)."""
    out = []
    m = cnv_model(0, keep_all_channels=True)  # FINN's CNV at full width: 59.5 M MACs, nothing to strip
    out.append(("cnv", m, random_inputs(m, CHECK_SAMPLES, 1), m, "random_models.cnv_model(0, keep_all_channels=True)"))
    m = cnv_model(0)
    out.append(("cnv-stripped", m, random_inputs(m, CHECK_SAMPLES, 1), m,
                "random_models.cnv_model(0): random BatchNorm leaves constant channels, stripped"))
    m = tfc_model(0)
    out.append(("tfc", m, random_inputs(m, CHECK_SAMPLES, 1), m, "random_models.tfc_model(0)"))
    if SHARED_CNV.exists():
        from bnnc.onnx_loader import read_model

        m = read_model(SHARED_CNV)
        x_path = SHARED_CNV.parent / "input.npy"
        x = np.load(x_path)[:CHECK_SAMPLES] if x_path.exists() else \
            np.random.default_rng(1).uniform(0, 1, (CHECK_SAMPLES, 3, 32, 32)).astype(np.float32)
        out.append(("brevitas-cnv-1w1a", m, x, m, str(SHARED_CNV.relative_to(REPO.parent))))
    else:
        log(f"(skipping the shared Brevitas CNV: {SHARED_CNV} not found)")
    return out


# -- onnxruntime --------------------------------------------------------------------------------

def ort_session(model):
    """(session, input name, input shape, input dtype, note) for a model onnxruntime can run,
    or (None, ..., reason). QONNX custom ops are rewritten with bnnc.original first."""
    import onnxruntime as ort
    from onnx import helper

    note = "float ONNX model"
    proto = model
    if any(n.domain not in ("", "ai.onnx") for n in model.graph.node):
        try:
            from bnnc.original import OriginalModel

            proto = OriginalModel(model).model  # checks that the rewritten model runs at all
            note = "QONNX custom ops rewritten to standard ops by bnnc.original"
        except Exception as e:  # noqa: BLE001 - report and skip
            return None, None, None, None, f"onnxruntime cannot run it ({type(e).__name__}: {e})"
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        return None, None, None, None, f"onnxruntime session failed ({type(e).__name__}: {e})"
    g = proto.graph
    inits = {t.name for t in g.initializer}
    inp = next(i for i in g.input if i.name not in inits)
    tt = inp.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in tt.shape.dim)
    return sess, inp.name, shape, helper.tensor_dtype_to_np_dtype(tt.elem_type), note


def time_ort(sess, name: str, feed_x: np.ndarray, iters: int, warm_s: float) -> dict:
    feed = {name: feed_x}
    t_end = time.perf_counter() + warm_s
    n_warm = 0
    while n_warm < 10 or time.perf_counter() < t_end:
        sess.run(None, feed)
        n_warm += 1
    calls, means = [], []
    clock = time.perf_counter_ns
    for _ in range(5):
        t_rep = clock()
        for _ in range(iters):
            t0 = clock()
            sess.run(None, feed)
            calls.append(clock() - t0)
        means.append((clock() - t_rep) / iters)
    return {"ort_ns": min(means), "ort_median_ns": float(statistics.median(calls)),
            "ort_min_ns": float(min(calls)), "ort_iters": iters}


# -- per-layer harness --------------------------------------------------------------------------

def run_calls(model_c: str, prefix: str, kernels: str) -> list:
    """(function, argument text) of each line of `<prefix>_forward_<kernels>` (the layers of one kernel
    variant) in the generated model.c."""
    m = re.search(r"^static void " + re.escape(prefix) + "_forward_" + kernels + r"\([^)]*\)\s*\{\n(.*?)^\}", model_c,
                  re.S | re.M)
    if not m:
        raise RuntimeError(f"cannot find {prefix}_forward_{kernels} in the generated model.c")
    calls = []
    for line in m.group(1).splitlines():
        text = line.strip()
        if not text or text.startswith(("/*", "*")) or re.fullmatch(r"uint8_t \*(volatile|const) arena\w* = .*;", text):
            continue  # comments and the arena pointer (the harness declares its own)
        c = re.fullmatch(r"\s*([A-Za-z_]\w*)\((.*)\);\s*", line)
        if not c:
            raise RuntimeError(f"unexpected line in {prefix}_run: {line!r}")
        calls.append((c.group(1), c.group(2)))
    return calls


def layer_harness(calls: list, prefix: str) -> str:
    P = prefix.upper()
    lines = [
        "/* bench_c.py: times each layer of the generated model (includes model.c). */",
        "#define _POSIX_C_SOURCE 199309L",
        "#include <stdio.h>",
        "#include <stdlib.h>",
        "#include <time.h>",
        '#include "model.c"',
        "",
        f"static {prefix}_input_t in_buf[{P}_INPUT_SIZE];",
        f"static {prefix}_output_t out_buf[{P}_OUTPUT_SIZE];",
        "",
        "static double now_ns(void) {",
        "  struct timespec t;",
        "  clock_gettime(CLOCK_MONOTONIC, &t);",
        "  return (double)t.tv_sec * 1e9 + (double)t.tv_nsec;",
        "}",
        "",
        '#define BARRIER() __asm__ __volatile__("" ::: "memory")',
        "",
        "int main(int argc, char **argv) {",
        "  long n = argc == 3 ? strtol(argv[1], NULL, 10) : 0;",
        "  FILE *fi = argc == 3 ? fopen(argv[2], \"rb\") : NULL;",
        "  if (!fi || n <= 0 || fread(in_buf, sizeof in_buf, 1, fi) != 1) {",
        '    fprintf(stderr, "usage: %s ITERS INPUT_RECORD\\n", argv[0]);',
        "    return 2;",
        "  }",
        "  fclose(fi);",
        "  uint8_t *const arena = (uint8_t *)arena_words;",
        f"  const {prefix}_input_t *input = in_buf;",
        f"  {prefix}_output_t *output = out_buf;",
        f"  double best[{len(calls) + 1}];",
        f"  for (int k = 0; k <= {len(calls)}; k++) best[k] = 1e300;",
        f"  {prefix}_run(input, output); /* warm up (and the kernel variant of the layers timed) */",
        "  for (int rep = 0; rep < 5; rep++) {",
        "    double t0, dt;",
    ]
    for k, (fn, args) in enumerate(calls):
        lines += [
            "    t0 = now_ns();",
            f"    for (long i = 0; i < n; i++) {{ {fn}({args}); BARRIER(); }}",
            "    dt = (now_ns() - t0) / (double)n;",
            f"    if (dt < best[{k}]) best[{k}] = dt;",
        ]
    lines += [  # the whole model in the same program, for comparison with the sum of the layers
        "    t0 = now_ns();",
        f"    for (long i = 0; i < n; i++) {{ {prefix}_run(input, output); BARRIER(); }}",
        "    dt = (now_ns() - t0) / (double)n;",
        f"    if (dt < best[{len(calls)}]) best[{len(calls)}] = dt;",
        "  }",
    ]
    for k, (fn, _) in enumerate(calls):
        lines.append(f'  printf("{fn} %.1f\\n", best[{k}]);')
    lines.append(f'  printf("{prefix}_run %.1f\\n", best[{len(calls)}]);')
    lines += ["  return 0;", "}", ""]
    return "\n".join(lines)


def makefile_cflags(makefile: str) -> tuple:
    """The CFLAGS of the generated Makefile (`CFLAGS ?= ...`): what `make` builds with."""
    m = re.search(r"^CFLAGS \?= (.*)$", makefile, re.M)
    if not m:
        raise RuntimeError("no `CFLAGS ?=` line in the generated Makefile")
    return tuple(m.group(1).split())


def build_layer_bench(files: dict, harness: str, flags) -> Path:
    """Compile the per-layer harness (model.c included into it); cached like c_build.build."""
    sources = {n: t for n, t in files.items() if n != "harness.c"}  # model.c and the headers it includes
    sources["layer_bench.c"] = harness
    cmd = [*c_build.find_cc(), *flags, "layer_bench.c", "-o", "layer_bench"]
    return c_build.cached_build(sources, cmd, "layer_bench", prefix="layers-", what="per-layer harness")


def time_layers(exe: Path, x_grid: np.ndarray, input_dtype: str, iters: int, kernels: str) -> dict:
    with tempfile.TemporaryDirectory() as td:
        fi = Path(td) / "in.bin"
        np.ascontiguousarray(x_grid[:1].reshape(1, -1).astype(input_dtype)).tofile(fi)
        r = subprocess.run([str(exe), str(iters), str(fi)], capture_output=True, text=True, check=True,
                           env={**os.environ, "BNNC_KERNELS": kernels})
    return {ln.split()[0]: float(ln.split()[1]) for ln in r.stdout.splitlines() if ln.strip()}


def layer_info(bg: ir.Graph) -> list:
    out = []
    for op in bg.ops():
        d = {"name": op.name, "kind": type(op).__name__, "macs": 0, "binary_macs": 0}
        shape = bg.tensors[op.outputs[0]].shape
        d["out_shape"] = list(shape)
        if isinstance(op, ir.Conv):
            o, kh, kw, c = op.w.shape
            oh, ow = shape[0], shape[1]
            macs = int(o * kh * kw * c * oh * ow)
            binary = op.packed.in_kind == "bits"
            dense = oh == 1 and ow == 1 and (kh, kw) == tuple(bg.tensors[op.inputs[0]].shape[:2])
            d["kind"] = ("dense" if dense else "conv") + ("_bin" if binary else "_int")
            d["macs"] = macs
            d["binary_macs"] = macs if binary else 0
        out.append(d)
    return out


# -- one model ----------------------------------------------------------------------------------

def calibrate(exe: Path, grid: np.ndarray, dtype: str, target_s: float) -> tuple:
    """(iters, rough ns per inference) so that one timed run of `iters` takes about target_s."""
    n = 1
    while True:
        ns = c_build.bench(exe, grid, dtype, n)
        if ns * n >= 2e7 or n >= 1 << 20:  # 20 ms: a good enough estimate
            break
        n *= 8
    return max(1, int(target_s * 1e9 / ns)), ns


def bench_model(label, model, x, ort_model, source, quick: bool) -> dict:
    t_start = time.perf_counter()
    log(f"[{label}] compiling ({source}) ...")
    graph = compile_graph(model)
    bg = driver.backend_graph(graph)
    files = driver.render_c(graph, NAME)
    make_flags = makefile_cflags(files["Makefile"])
    log(f"[{label}] building C: cc {' '.join(make_flags)} (make), cc {' '.join(NATIVE_FLAGS)} (native)")
    exe = c_build.build(files, make_flags)
    nexe = c_build.build(files, NATIVE_FLAGS)
    kernels = c_build.kernel_variants(exe)
    inputs = driver.prepare_inputs(graph, x)
    in_dtype = graph.input_info["dtype"]

    log(f"[{label}] checking C == reference on {inputs.grid.shape[0]} inputs, both builds, kernels {kernels} ...")
    y_ref = driver.run_target(graph, "ref", inputs)
    for flags in (make_flags, NATIVE_FLAGS):
        y_c = driver.run_target(graph, "c", inputs, NAME, flags)  # every kernel variant, or an error
        if y_c.shape != y_ref.shape or not np.array_equal(y_c, y_ref):
            bad = np.argwhere(np.asarray(y_c != y_ref))[:5]
            sys.exit(f"ERROR [{label}]: the C output ({' '.join(flags)}) differs from the reference executor at "
                     f"{bad.tolist()}\n  C:   {y_c.ravel()[:10]}\n  ref: {y_ref.ravel()[:10]}")
    y_c = driver.run_target(graph, "c", inputs, NAME, make_flags)

    target_s = 0.01 if quick else 0.08  # per timed run; bench does 5 runs
    iters, est_ns = calibrate(exe, inputs.grid, in_dtype, target_s)
    calls = run_calls(files["model.c"], NAME, kernels[0])
    lexe = build_layer_bench(files, layer_harness(calls, NAME), make_flags)
    layers = layer_info(bg)
    names = [c[0].removesuffix("_" + kernels[0]) for c in calls]
    if [d["name"] for d in layers] != names:
        raise RuntimeError(f"{NAME}_run calls {names}, the IR has {[d['name'] for d in layers]}")

    sess, in_name, in_shape, ort_dtype, note = ort_session(ort_model) if ort_model is not None else \
        (None, None, None, None, "no ONNX model for onnxruntime")
    res = {"source": source, "ort_note": note}
    if sess is not None:
        feed = np.asarray(inputs.model[:1], dtype=ort_dtype).reshape(in_shape)
        y_ort = np.asarray(sess.run(None, {in_name: feed})[0]).ravel()
        if y_ort.size == y_c[0].size:
            res["ort_max_abs_diff"] = float(np.max(np.abs(y_ort.astype(np.float64)
                                                          - y_c[0].ravel().astype(np.float64))))
        ort_iters = max(20, min(iters, int(target_s * 1e9 / max(est_ns * 10, 1))))
    else:
        log(f"[{label}] onnxruntime skipped: {note}")

    # Rounds that interleave C, per-layer C and onnxruntime, minimum over rounds: shared or
    # virtual machines have slow phases that a single measurement can fall into.
    rounds = 1 if quick else 3
    c_runs, native_runs, portable_runs, layer_runs, ort_runs = [], [], [], [], []
    for r in range(rounds):
        tag = f"round {r + 1}/{rounds}: " if rounds > 1 else ""
        log(f"[{label}] {tag}timing C make, native and portable ({iters} inferences x 5), each layer, "
            + (f"onnxruntime ({ort_iters} runs x 5)" if sess is not None else "no onnxruntime"))
        c_runs.append(c_build.bench(exe, inputs.grid, in_dtype, iters))
        native_runs.append(c_build.bench(nexe, inputs.grid, in_dtype, iters))
        portable_runs.append(c_build.bench(exe, inputs.grid, in_dtype, max(1, iters // 8), "portable"))
        layer_runs.append(time_layers(lexe, inputs.grid, in_dtype, iters, kernels[0]))
        if sess is not None:
            ort_runs.append(time_ort(sess, in_name, feed, ort_iters, 0.05 if quick else 0.3))
    c_ns = min(c_runs)
    per_layer = {k: min(lr[k] for lr in layer_runs) for k in layer_runs[0]}
    run_in_layer_harness = per_layer.pop(f"{NAME}_run")
    for d in layers:
        d["ns"] = per_layer[d["name"] + "_" + kernels[0]]
        d["gmacs_per_s"] = round(d["macs"] / d["ns"], 3) if d["macs"] else None
        d["share"] = round(d["ns"] / sum(per_layer.values()), 4)

    res.update({"c_ns": c_ns, "c_ns_rounds": c_runs, "c_iters": iters, "rounds": rounds, "cflags": " ".join(make_flags),
                "kernels": kernels, "c_native_ns": min(native_runs), "c_native_ns_rounds": native_runs,
                "native_ratio": round(c_ns / min(native_runs), 3),
                "layers_sum_ns": sum(per_layer.values()), "run_ns_in_layer_harness": run_in_layer_harness,
                "macs": sum(d["macs"] for d in layers), "binary_macs": sum(d["binary_macs"] for d in layers)})
    res["c_gmacs_per_s"] = round(res["macs"] / c_ns, 3)
    res["c_portable_ns"] = min(portable_runs)
    res["c_portable_ns_rounds"] = portable_runs
    if ort_runs:
        res.update({"ort_ns": min(o["ort_ns"] for o in ort_runs),
                    "ort_median_ns": float(statistics.median(o["ort_median_ns"] for o in ort_runs)),
                    "ort_min_ns": min(o["ort_min_ns"] for o in ort_runs),
                    "ort_ns_rounds": [o["ort_ns"] for o in ort_runs], "ort_iters": ort_iters})
        res["speedup"] = round(res["ort_ns"] / c_ns, 2)
        res["speedup_portable"] = round(res["ort_ns"] / res["c_portable_ns"], 2)
    else:
        res.update(ort_ns=None, ort_median_ns=None, speedup=None, speedup_portable=None)
    res["layers"] = layers
    log(f"[{label}] done in {time.perf_counter() - t_start:.1f} s")
    return res


# -- report -------------------------------------------------------------------------------------

def machine_info() -> dict:
    cpu, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key = key.strip()
                if cpu is None and key in ("model name", "Model", "cpu model"):
                    cpu = val.strip()
                elif not flags and key in ("flags", "Features"):
                    flags = set(val.split())
    except OSError:
        pass
    cpu = cpu or platform.processor() or platform.machine()
    cc = c_build.find_cc()
    try:
        ver = subprocess.run([*cc, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        ver = "?"
    try:
        import onnxruntime as ort

        ort_ver = ort.__version__
    except ImportError:
        ort_ver = None
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "machine": platform.machine(),
            "simd": sorted(f for f in flags if f in ("popcnt", "avx2", "avx512f", "avx512bw", "avx512vl",
                                                     "avx512_vpopcntdq", "avx512_bitalg", "neon", "asimd")),
            "cc": " ".join(cc), "cc_version": ver, "native_cflags": " ".join(NATIVE_FLAGS), "onnxruntime": ort_ver,
            "numpy": np.__version__, "python": platform.python_version()}


def fmt_table(header: list, rows: list) -> str:
    w = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    right = [i > 0 for i in range(len(header))]
    def line(r):
        return "  ".join(str(v).rjust(w[i]) if right[i] else str(v).ljust(w[i]) for i, v in enumerate(r))
    return "\n".join([line(header), "  ".join("-" * x for x in w)] + [line(r) for r in rows])


def us(ns) -> str:
    return "-" if ns is None else f"{ns / 1e3:.2f}"


def report(results: dict, machine: dict) -> str:
    out = [f"CPU: {machine['cpu']} ({machine['logical_cpus']} logical CPUs; {' '.join(machine['simd'])})",
           f"C:   {machine['cc_version']}, batch 1, 1 thread; native: {machine['native_cflags']}",
           f"ORT: onnxruntime {machine['onnxruntime']}, 1 thread, ORT_ENABLE_ALL, batch 1", ""]
    rows = []
    for label, r in results.items():
        rows.append([label, us(r["c_ns"]), us(r["c_native_ns"]), f"{r['native_ratio']:.2f}", us(r["c_portable_ns"]),
                     us(r["ort_ns"]), us(r["ort_median_ns"]),
                     "-" if r["speedup"] is None else f"{r['speedup']:.1f}x",
                     "-" if r["speedup_portable"] is None else f"{r['speedup_portable']:.1f}x",
                     f"{r['macs'] / 1e6:.2f}", f"{r['binary_macs'] / 1e6:.2f}", f"{r['c_gmacs_per_s']:.1f}"])
    out.append(fmt_table(["model", "C make us", "C native us", "make/nat.", "C port. us", "ORT us", "ORT med us",
                          "speedup", "sp. port.", "MMACs",
                          "bin MMACs", "GMAC/s"], rows))
    out.append("C and ORT: best of 5 runs of N calls (minimum over rounds); ORT med: median single "
               "session.run call. MACs: of the compiled IR (pruned/constant channels removed).")
    first = next(iter(results.values()), {})
    out.append(f"C make: the generated Makefile's CFLAGS ({first.get('cflags', '?')}), the kernel variant it picks "
               f"({first.get('kernels', ['?'])[0]}); C native: {machine['native_cflags']}; C port.: the make build "
               "with BNNC_KERNELS=portable; speedup, sp. port.: ORT / C make, ORT / C port.")
    for label, r in results.items():
        out += ["", f"{label}: per layer (sum {us(r['layers_sum_ns'])} us; {NAME}_run in the same program "
                    f"{us(r['run_ns_in_layer_harness'])} us, in the generated harness {us(r['c_ns'])} us)"]
        rows = []
        for d in r["layers"]:
            rows.append([d["name"], d["kind"], "x".join(map(str, d["out_shape"])),
                         f"{d['macs'] / 1e6:.3f}" if d["macs"] else "-", f"{d['ns']:.0f}",
                         f"{100 * d['share']:.1f}%", f"{d['gmacs_per_s']:.1f}" if d["gmacs_per_s"] else "-"])
        out.append(fmt_table(["layer", "kind", "out HxWxC", "MMACs", "ns", "share", "GMAC/s"], rows))
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations (CI smoke run)")
    ap.add_argument("--json", type=Path, default=DEFAULT_JSON, help=f"output JSON (default {DEFAULT_JSON})")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    machine = machine_info()
    results = {}
    for label, model, x, ort_model, source in models():
        results[label] = bench_model(label, model, x, ort_model, source, args.quick)
    print()
    print(report(results, machine))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"machine": machine, "quick": args.quick, "models": results}, indent=2) + "\n")
    print(f"\nwrote {args.json} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
