"""Randomized end-to-end checks: C == reference bit for bit, reference == onnxruntime (top-1, tolerance).

CI runs the sizes below; BNNC_SWEEP_SCALE=N runs N times as many models."""

import numpy as np
import pytest

from bnnc import driver
from bnnc.backends import c_build

from .conftest import sweep_scale
from .helpers import assert_matches_original, random_case

N_MODELS = int(200 * sweep_scale())
N_SANITIZED = int(12 * sweep_scale())
SANITIZE = c_build.DEFAULT_FLAGS[:1] + ("-O1", "-g", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off",
                                         "-fsanitize=address,undefined", "-fno-sanitize-recover=all")


@pytest.mark.sweep
@pytest.mark.parametrize("seed", range(N_MODELS))
def test_c_equals_reference_equals_onnxruntime(seed):
    model, spec, graph, inputs = random_case(seed, 20)
    ref = driver.run_target(graph, "ref", inputs)
    c = driver.run_target(graph, "c", inputs)
    assert c.dtype == ref.dtype and np.array_equal(c, ref), f"seed {seed}: C differs from the reference"
    assert_matches_original(model, graph, inputs, ref)


@pytest.mark.sweep
@pytest.mark.parametrize("seed", range(1000, 1000 + N_SANITIZED))
def test_c_clean_under_address_and_undefined_sanitizers(seed):
    model, spec, graph, inputs = random_case(seed, 5)
    ref = driver.run_target(graph, "ref", inputs)
    c = driver.run_target(graph, "c", inputs, flags=SANITIZE)
    assert np.array_equal(c, ref)


def test_shared_cnv_clean_under_sanitizers(shared_models):
    from bnnc.pipeline import compile_file

    _, graph = compile_file(shared_models / "brevitas-cnv-1w1a" / "cnv_1w1a.onnx")
    inputs = driver.prepare_inputs(graph, np.load(shared_models / "brevitas-cnv-1w1a" / "input.npy")[:2])
    assert np.array_equal(driver.run_target(graph, "c", inputs, flags=SANITIZE),
                          driver.run_target(graph, "ref", inputs))


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_generated_c_builds_warning_free_with_each_compiler(cc):
    import shutil

    if shutil.which(cc) is None:
        pytest.skip(f"{cc} is not installed")
    model, spec, graph, inputs = random_case(5, 4)
    flags = ("-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-pedantic", "-ffp-contract=off")
    c = driver.run_target(graph, "c", inputs, flags=flags) if cc == "gcc" else None
    if cc == "clang":
        files = driver.render_c(graph)
        exe = c_build.build(files, flags, cc="clang")
        c = c_build.run(exe, inputs.grid, graph.input_info["dtype"],
                        "float32" if graph.output_info["dtype"] == "float32" else "int32",
                        graph.output_info["elements"]).reshape(driver.run_target(graph, "ref", inputs).shape)
    assert np.array_equal(c, driver.run_target(graph, "ref", inputs))
