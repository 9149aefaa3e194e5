"""The host C kernels: the portable C and the AVX-512 paths (VPOPCNTQ binary kernels, VNNI byte
kernels, int16 accumulators) give the reference executor's numbers bit for bit, build clean as
C99, and stay clean under the address and undefined-behaviour sanitizers."""

import functools
import shutil
import subprocess

import numpy as np
import pytest

from bnnc import driver, ir
from bnnc.backends import c_build
from bnnc.passes.pack_bits import THR_NEVER
from bnnc.pipeline import compile_graph
from bnnc.testing.random_models import cnv_model, random_inputs, random_model, tfc_model

from .conftest import sweep_scale
from .helpers import random_case

WARN = ("-Wall", "-Wextra", "-Werror", "-ffp-contract=off")
NATIVE = ("-std=c99", "-O3", "-march=native") + WARN  # the benchmark's flags: AVX-512 where the CPU has it
NATIVE_PORTABLE = NATIVE + ("-DBNNC_PORTABLE",)  # the same compiler options, portable kernels
SANITIZE = ("-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-g")
N_MODELS = int(24 * sweep_scale())  # x 3 builds each; BNNC_SWEEP_SCALE=5 for a deeper run


@functools.lru_cache(maxsize=None)
def native_macros() -> frozenset:
    """Macros bnnc_kernels.h defines under -march=native on this machine."""
    from bnnc.resources import resource_dir

    hdr = resource_dir("runtime") / "bnnc_kernels.h"
    r = subprocess.run([*c_build.find_cc(), "-march=native", "-dM", "-E", "-DBNNC_WORD_BITS=64", "-x", "c", str(hdr)],
                       capture_output=True, text=True, check=True)
    return frozenset(ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("#define BNNC_"))


def run_c(graph, inputs, flags):
    return driver.run_target(graph, "c", inputs, flags=flags)


@pytest.mark.sweep
@pytest.mark.parametrize("seed", range(N_MODELS))
def test_portable_and_native_builds_equal_the_reference(seed):
    _, _, graph, inputs = random_case(seed, 8)
    ref = driver.run_target(graph, "ref", inputs)
    for flags in (None, NATIVE, NATIVE_PORTABLE):
        y = run_c(graph, inputs, flags)
        assert y.dtype == ref.dtype and np.array_equal(y, ref), f"seed {seed}, flags {flags}"


def test_native_build_takes_the_avx512_paths_where_the_cpu_has_them():
    m = native_macros()
    with open("/proc/cpuinfo") as f:
        flags = next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), [])
    if "avx512_vpopcntdq" not in flags or "avx512bw" not in flags:
        pytest.skip("this CPU has no AVX-512 VPOPCNTDQ: only the portable kernels can run here")
    assert "BNNC_AVX512_POPCNT" in m
    assert ("BNNC_AVX512_VNNI" in m) == ("avx512_vnni" in flags)


@pytest.mark.parametrize("make", [cnv_model, tfc_model], ids=["cnv", "tfc"])
def test_benchmark_models_equal_the_reference_on_every_path(make):
    model = make(0)
    graph = compile_graph(model)
    inputs = driver.prepare_inputs(graph, random_inputs(model, 3, 5))
    ref = driver.run_target(graph, "ref", inputs)
    for flags in (None, NATIVE, NATIVE_PORTABLE):
        assert np.array_equal(run_c(graph, inputs, flags), ref), f"flags {flags}"


def wide_input_model(seed: int, c: int = 3, side: int = 9, k: int = 3, pad: int = 1, out: int = 40, dense: int = 24):
    """A float-input Conv -> BatchNormalization -> Sign -> Gemm model; with a declared input grid
    (--input-scale / --input-range) its first layer takes integers of any range."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = []

    def const(name, a):
        inits.append(numpy_helper.from_array(np.asarray(a, np.float32), name))
        return name

    nodes = [
        helper.make_node("Conv", ["x", const("w0", rng.choice([-1.0, 1.0], (out, c, k, k)))], ["c0"],
                         kernel_shape=[k, k], pads=[pad] * 4),
        helper.make_node("BatchNormalization", ["c0", const("g", rng.uniform(0.5, 2, out)),
                                                const("b", rng.uniform(-50, 50, out)), const("m", np.zeros(out)),
                                                const("v", np.ones(out))], ["bn0"]),
        helper.make_node("Sign", ["bn0"], ["s0"]),
        helper.make_node("Flatten", ["s0"], ["f"]),
        helper.make_node("Gemm", ["f", const("w1", rng.choice([-1.0, 1.0], (dense, out * side * side)))], ["y"],
                         transB=1),
    ]
    g = helper.make_graph(nodes, "wide", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, side, side])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, dense])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


# declared input range -> (int16 accumulators, VNNI offset) the first layer gets
GRIDS = {(-3000, 3000): (False, None), (-20000, 20000): (False, None), (-2**18, 2**18): (False, None),
         (0, 255): (True, 0), (5, 200): (True, 0), (-300, -44): (True, None), (-128, 127): (True, -128),
         (-60, 195): (True, -60)}


@pytest.mark.parametrize("grid", list(GRIDS), ids=[f"{a}:{b}" for a, b in GRIDS])
def test_integer_first_layers_of_every_range_on_every_path(grid):
    from bnnc.pipeline import Options

    model = wide_input_model(grid[0] & 7)
    graph = compile_graph(model, Options(input_scale=1.0, input_range=grid))
    first = next(op for op in driver.backend_graph(graph).ops() if isinstance(op, ir.Conv))
    assert (first.packed.acc16, first.packed.vnni_offset) == GRIDS[grid]
    x = np.random.default_rng(1).integers(grid[0], grid[1] + 1, (6, 3, 9, 9)).astype(np.float32)
    x[0] = grid[0]
    x[1] = grid[1]
    inputs = driver.prepare_inputs(graph, x)
    ref = driver.run_target(graph, "ref", inputs)
    for flags in (None, NATIVE, NATIVE_PORTABLE):
        assert np.array_equal(run_c(graph, inputs, flags), ref), f"flags {flags}"


@pytest.mark.parametrize("seed", [3, 22, 1000, 1003])
@pytest.mark.parametrize("flags", [NATIVE, NATIVE_PORTABLE], ids=["avx512", "portable"])
def test_native_builds_clean_under_sanitizers(seed, flags):
    _, _, graph, inputs = random_case(seed, 3)
    san = tuple(f for f in flags if f != "-O3") + ("-O1",) + SANITIZE
    assert np.array_equal(run_c(graph, inputs, san), driver.run_target(graph, "ref", inputs))


def test_cnv_clean_under_sanitizers_on_the_avx512_path():
    model = cnv_model(1)
    graph = compile_graph(model)
    inputs = driver.prepare_inputs(graph, random_inputs(model, 2, 3))
    san = ("-std=c99", "-O1", "-march=native") + WARN + SANITIZE
    assert np.array_equal(run_c(graph, inputs, san), driver.run_target(graph, "ref", inputs))


@pytest.mark.parametrize("define", ["", "-DBNNC_PORTABLE"], ids=["avx512", "portable"])
def test_generated_c_is_pedantic_c99_with_native_flags(define, tmp_path):
    model, _ = random_model(22)
    files = driver.render_c(compile_graph(model))
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    cmd = [*c_build.find_cc(), "-std=c99", "-pedantic", "-O2", "-march=native", *WARN, *([define] if define else []),
           "-c", "model.c"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_threshold_pack_leaves_fill_bits_zero():
    """Output widths that are not multiples of 32 or 64: the padded outputs never set a bit."""
    hits = 0
    for seed in range(40):
        _, _, graph, inputs = random_case(seed, 2)
        bg = driver.backend_graph(graph)
        for op in bg.ops():
            p = getattr(op, "packed", None)
            if isinstance(op, ir.Conv) and p.thr is not None and p.o % 64:
                hits += 1
                assert np.all(p.thr[:, p.o:] == THR_NEVER) and THR_NEVER > p.k_full
                if p.o % 32:
                    assert int(p.neg_words[-1]) >> (p.o % 32) == 0
    assert hits > 10


@pytest.mark.parametrize("which", ["binary", "family"])
def test_c_build_of_the_makefile_project(tmp_path, which):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    from bnnc import zoo

    model = random_model(4)[0] if which == "binary" else zoo.build("dabn", 0)
    files = driver.render_c(compile_graph(model))
    assert ("bnnc_families.h" in files) == (which == "family")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    r = subprocess.run(["make", "CFLAGS=-std=c99 -O3 -march=native -Wall -Wextra -Werror -ffp-contract=off"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "-c model.c -o model.o" in r.stdout  # the project's own rule, not make's implicit one
