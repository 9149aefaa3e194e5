"""Cortex-M firmware (issue #4): the shared models and the random-model generator give the
reference executor's outputs bit for bit on emulated Cortex-M0/M4/M7; the statistics, budgets,
emitted project and instruction counting do what they say."""

import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("unicorn", reason="the Cortex-M tests need the mcu extra (unicorn, ziglang, pyelftools)")
pytest.importorskip("ziglang", reason="the Cortex-M tests need the mcu extra (unicorn, ziglang, pyelftools)")
pytest.importorskip("elftools", reason="the Cortex-M tests need the mcu extra (unicorn, ziglang, pyelftools)")

from bnnc import cli, driver, ir  # noqa: E402
from bnnc.backends import mcu  # noqa: E402
from bnnc.errors import BnncError  # noqa: E402
from bnnc.pipeline import compile_file  # noqa: E402
from bnnc.targets import TargetOptions  # noqa: E402

from .conftest import sweep_scale  # noqa: E402
from .helpers import random_case  # noqa: E402

CORES = ("cortex-m0", "cortex-m4", "cortex-m7")
N_M4 = int(50 * sweep_scale())
N_M0 = int(20 * sweep_scale())
N_INPUTS = 10
STATS_KEYS = ("instructions", "instructions_per_layer", "flash_bytes", "ram_bytes", "arena_bytes",
              "arena_lower_bound_bytes")
SOFT_FLOAT = ("__aeabi_f", "__aeabi_d", "__aeabi_i2f", "__aeabi_ui2f", "sf3", "df3", "sf2", "df2")


def float_layers(graph) -> set:
    """Layers whose arithmetic is float32 (a float input quantizer, a real-valued output or input)."""
    bg = mcu.backend_graph(graph)
    out = set()
    for op in bg.ops():
        if isinstance(op, ir.InputQuantize) and op.packed.mode == "float":
            out.add(op.name)
        if any(isinstance(bg.tensors.get(t), ir.Reals) for t in list(op.outputs) + list(op.inputs)):
            out.add(op.name)
    return out


def check_random_model(seed, core):
    _, _, graph, inputs = random_case(seed, N_INPUTS)
    ref = driver.run_target(graph, "ref", inputs)
    y, stats = mcu.run(graph, inputs.grid, TargetOptions(mcu=core))
    assert np.array_equal(y.reshape(ref.shape), ref), f"seed {seed}: {core} differs from the reference"
    per_layer = stats["instructions_per_layer"]
    assert abs(sum(per_layer.values()) - stats["instructions"]) <= len(per_layer)  # means, rounded
    assert stats["arena_bytes"] <= 1.05 * stats["arena_lower_bound_bytes"]
    helpers = [h for names in stats["helpers_per_layer"].values() for h in names]
    assert not [h for h in helpers if "popcount" in h], "popcount must be the bit-trick sequence, never libgcc"
    if core == "cortex-m0":  # no FPU: soft float may run only where the model computes in float
        floats = float_layers(graph)
        for layer, helpers in stats["helpers_per_layer"].items():
            if layer not in floats:
                assert not [h for h in helpers if any(k in h for k in SOFT_FLOAT)], (layer, helpers)


# -- the shared models ----------------------------------------------------------------------------

@pytest.mark.parametrize("core", CORES)
def test_finn_tfc_gives_7_2_1_0_on_every_core(shared_models, core):
    d = shared_models / "finn-tfc-w1a1"
    _, graph = compile_file(d / "model.onnx")
    inputs = driver.prepare_inputs(graph, np.load(d / "input.npy"))
    y, stats = mcu.run(graph, inputs.grid, TargetOptions(mcu=core))
    assert y.ravel().tolist() == [7, 2, 1, 0] == np.load(d / "expected_output.npy").ravel().tolist()
    assert all(k in stats for k in STATS_KEYS) and stats["instructions"] > 0


@pytest.mark.parametrize("core", CORES)
def test_qonnx_tfc_equals_the_reference(shared_models, core):
    _, graph = compile_file(shared_models / "qonnx-tfc-1w1a" / "TFC_1W1A.onnx")
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 3, 0))
    ref = driver.run_target(graph, "ref", inputs)
    y, _ = mcu.run(graph, inputs.grid, TargetOptions(mcu=core))
    assert np.array_equal(y.reshape(ref.shape), ref)


@pytest.mark.parametrize("core", CORES)
def test_brevitas_cnv_equals_the_reference(shared_models, core):
    d = shared_models / "brevitas-cnv-1w1a"
    _, graph = compile_file(d / "cnv_1w1a.onnx")
    inputs = driver.prepare_inputs(graph, np.load(d / "input.npy")[:1])
    ref = driver.run_target(graph, "ref", inputs)
    y, stats = mcu.run(graph, inputs.grid, TargetOptions(mcu=core))
    assert np.array_equal(y.reshape(ref.shape), ref)
    assert stats["arena_bytes"] <= 1.05 * stats["arena_lower_bound_bytes"]


@pytest.mark.parametrize("model", ["finn-tfc-w1a1/model.onnx", "brevitas-cnv-1w1a/cnv_1w1a.onnx"])
def test_bnnc_verify_passes_on_cortex_m4(shared_models, model, capsys):
    rc = cli.main(["verify", str(shared_models / model), "--target", "cortex-m4", "--samples",
                   "20" if "tfc" in model else "1"])
    assert rc == 0, capsys.readouterr().out


@pytest.mark.parametrize("region", ["flash", "RAM"])
def test_a_model_larger_than_the_emulated_part_is_refused_in_one_line(monkeypatch, capsys, shared_models, region):
    """A model whose firmware overflows the emulated part's memory (larq DoReFaNet's 42 MB of weights:
    here a small model on a shrunken part) gets a bnnc error naming the region, not a linker trace."""
    monkeypatch.setattr(mcu, *(("EMU_FLASH", 4096) if region == "flash" else ("EMU_RAM", 64)))
    rc = cli.main(["verify", str(shared_models / "finn-tfc-w1a1" / "model.onnx"), "--target", "cortex-m4",
                   "--samples", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("bnnc: error: cortex-m4: the model's firmware")
    assert f"of {region} (" in err


# -- the random-model generator -------------------------------------------------------------------

@pytest.mark.sweep
@pytest.mark.parametrize("seed", range(N_M4))
def test_random_models_on_cortex_m4(seed):
    check_random_model(seed, "cortex-m4")


@pytest.mark.sweep
@pytest.mark.parametrize("seed", range(1000, 1000 + N_M0))
def test_random_models_on_cortex_m0(seed):
    check_random_model(seed, "cortex-m0")


@pytest.mark.parametrize("core", ["cortex-m0", "cortex-m4"])
def test_wide_layers_take_the_looped_row_kernel(core):
    """Rows of more than 48 words (a loop of 8 three-word steps, then the rest); rows that are all loop
    are in the Brevitas CNV (72 words)."""
    from bnnc.pipeline import compile_graph
    from bnnc.testing.random_models import mlp_model, random_inputs

    for sizes in ((64, 1600, 2048, 10),):
        model = mlp_model(3, 0.0, sizes)
        graph = compile_graph(model)
        rows = [op.packed.taps for op in mcu.backend_graph(graph).ops()
                if isinstance(op, ir.Conv) and op.packed.in_kind == "bits"]
        assert max(rows) > 48
        inputs = driver.prepare_inputs(graph, random_inputs(model, 3, 1))
        ref = driver.run_target(graph, "ref", inputs)
        y, _ = mcu.run(graph, inputs.grid, TargetOptions(mcu=core))
        assert np.array_equal(y.reshape(ref.shape), ref), sizes


def test_row_steps_cover_every_row_length_once():
    from bnnc.backends.c import _row_unrolling

    for taps in range(1, 200):
        plan = _row_unrolling(taps)
        steps = plan["row_steps"]
        covered = sum(24 * plan["loop_groups"] if n == "loop" else n for n in steps)
        assert covered == taps and steps.count("loop") == (1 if plan["loop_groups"] else 0)
        assert all(n in (1, 2, 3, "loop") for n in steps) and steps.count(1) + steps.count(2) <= 1


def test_random_models_on_cortex_m7():
    for seed in (2000, 2001, 2002):
        check_random_model(seed, "cortex-m7")


# -- statistics, counting, budgets ----------------------------------------------------------------

@pytest.mark.parametrize("seed", [3, 8])
def test_block_counts_equal_instruction_by_instruction_counts(seed):
    """Exactly on Cortex-M0. On M4 the per-instruction hook misses the instructions of Thumb-2 IT
    blocks whose condition fails (the core still issues them; the block count includes them)."""
    _, _, graph, inputs = random_case(seed, 2)
    for core in ("cortex-m0", "cortex-m4"):
        _, fast = mcu.emulate(graph, inputs.grid, TargetOptions(mcu=core))
        _, slow = mcu.emulate(graph, inputs.grid, TargetOptions(mcu=core), per_instruction=True)
        if core == "cortex-m0":
            assert fast["instructions_per_layer"] == slow["instructions_per_layer"]
            assert fast["instructions"] == slow["instructions"] > 1000
        else:
            for layer, n in fast["instructions_per_layer"].items():
                assert slow["instructions_per_layer"][layer] <= n <= 1.1 * slow["instructions_per_layer"][layer] + 4


def test_flash_and_ram_come_from_the_elf_sections():
    _, _, graph, inputs = random_case(5, 1)
    _, st = mcu.run(graph, inputs.grid, TargetOptions(mcu="cortex-m4"))
    sec = st["sections"]
    assert st["flash_bytes"] == sum(v for k, v in sec.items() if k != ".bss")
    assert st["ram_bytes"] == sec.get(".data", 0) + sec[".bss"] + st["stack_bytes"] and st["stack_bytes"] > 0
    assert sec[".bss"] >= st["arena_bytes"]  # the arena is one static array
    # the model's RAM: all but the harness's input and output buffers
    io = int(np.prod(graph.input_info["shape"])) * np.dtype(graph.input_info["dtype"]).itemsize \
        + 4 * graph.output_info["elements"]
    assert st["model_ram_bytes"] == st["ram_bytes"] - io >= st["arena_bytes"] + st["stack_bytes"]


@pytest.mark.parametrize("key,flag", [("flash_bytes", "flash"), ("ram_bytes", "ram")])
def test_a_budget_too_small_fails_and_says_by_how_much(key, flag):
    _, _, graph, inputs = random_case(6, 1)
    _, st = mcu.run(graph, inputs.grid, TargetOptions(mcu="cortex-m4"))
    need = st[key]
    with pytest.raises(BnncError, match=f"needs {need} bytes .*, 10 bytes more than the --{flag} budget"):
        mcu.run(graph, inputs.grid, TargetOptions(mcu="cortex-m4", **{flag: need - 10}))
    mcu.run(graph, inputs.grid, TargetOptions(mcu="cortex-m4", **{flag: need}))  # exactly enough


def test_cli_budget_error_is_exit_status_2(shared_models, tmp_path, capsys):
    model = str(shared_models / "finn-tfc-w1a1" / "model.onnx")
    rc = cli.main(["compile", model, "--target", "c", "--mcu", "cortex-m4", "--flash", "4k", "-o", str(tmp_path / "fw")])
    err = capsys.readouterr().err
    assert rc == 2 and "more than the --flash budget of 4096 bytes" in err and not (tmp_path / "fw").exists()


def test_verify_over_budget_stops_after_one_sample(shared_models, monkeypatch, capsys):
    """`verify --flash` on a model that does not fit is refused after one emulated sample, not after
    all of them (MeliusNet22 spent 18 minutes emulating before its budget error)."""
    emulated = []
    real = mcu.emulate
    monkeypatch.setattr(mcu, "emulate", lambda graph, grid, opts, **kw: (emulated.append(len(grid)),
                                                                         real(graph, grid, opts, **kw))[1])
    rc = cli.main(["verify", str(shared_models / "finn-tfc-w1a1" / "model.onnx"), "--target", "cortex-m4",
                   "--samples", "20", "--flash", "4k"])
    assert rc == 2 and "more than the --flash budget" in capsys.readouterr().err
    assert emulated == [1]


def test_cli_run_writes_the_stats(shared_models, tmp_path):
    import json

    d = shared_models / "finn-tfc-w1a1"
    stats = tmp_path / "stats.json"
    assert cli.main(["run", str(d / "model.onnx"), "--target", "cortex-m4", "--input", str(d / "input.npy"),
                     "--output", str(tmp_path / "y.npy"), "--stats", str(stats)]) == 0
    st = json.loads(stats.read_text())
    assert all(k in st for k in STATS_KEYS)
    assert np.load(tmp_path / "y.npy").ravel().tolist() == [7, 2, 1, 0]


def test_report_lists_instructions_per_layer(shared_models, capsys):
    assert cli.main(["report", str(shared_models / "finn-tfc-w1a1" / "model.onnx"), "--mcu", "cortex-m4"]) == 0
    out = capsys.readouterr().out
    assert "instructions per inference" in out and "L02_dense" in out and "arena" in out


# -- the emitted project --------------------------------------------------------------------------

def _project(tmp_path, core="cortex-m4", seed=4, **kw):
    _, _, graph, _ = random_case(seed, 1)
    files = mcu.files(graph, TargetOptions(mcu=core, **kw))
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    return files


def test_compiled_project_is_deterministic_and_complete(tmp_path):
    a = _project(tmp_path)
    b = _project(tmp_path)
    assert a == b
    assert {"model.c", "model.h", "bnnc_kernels.h", "main.c", "startup.c", "Makefile", "CMakeLists.txt",
            "bnnc_cortex_m4.ld"} <= set(a)
    assert "LENGTH = 65536" in _project(tmp_path, flash=1 << 20, ram=65536)["bnnc_cortex_m4.ld"]


def test_mcu_model_calls_no_libc(tmp_path):
    files = _project(tmp_path, core="cortex-m0", seed=9)
    for name in ("model.c", "bnnc_kernels.h"):
        text = files[name]
        assert "#include <stdio.h>" not in text and "malloc" not in text and "__builtin_popcount(" not in text.split(
            "BNNC_SOFT_POPCOUNT")[0].split("bnnc_popcount(bnnc_word_t x)")[0]


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="arm-none-eabi-gcc is not installed")
@pytest.mark.parametrize("core", CORES)
def test_project_builds_with_arm_none_eabi_gcc_make_and_cmake(tmp_path, core):
    _project(tmp_path, core=core)
    r = subprocess.run(["make", "CFLAGS=-std=c99 -O2 -Wall -Wextra -Werror -ffp-contract=off -ffunction-sections "
                        "-fdata-sections"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    if shutil.which("cmake"):
        r = subprocess.run(["cmake", "-B", "build", "-S", "."], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
        r = subprocess.run(["cmake", "--build", "build"], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="arm-none-eabi-gcc is not installed")
@pytest.mark.parametrize("name", ["cnv", "w1a2", "pabt"])
def test_zoo_projects_link_without_libc_under_arm_none_eabi_gcc(tmp_path, name):
    """GCC turns fill and copy loops into memset / memcpy calls even with -ffreestanding; the
    generated firmware (padded images, window copies, .data / .bss set-up) must still link with
    -nostdlib at -O2 and -O3."""
    from bnnc import zoo
    from bnnc.pipeline import compile_graph

    files = mcu.files(compile_graph(zoo.build(name)), TargetOptions(mcu="cortex-m4"))
    for fname, text in files.items():
        (tmp_path / fname).write_text(text)
    for opt in ("-O2", "-O3"):
        r = subprocess.run(["make", "-B", f"CFLAGS=-std=c99 {opt} -Wall -Wextra -Werror -ffreestanding -ffp-contract=off "
                            "-ffunction-sections -fdata-sections"], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(shutil.which("arm-none-eabi-gcc") is None, reason="arm-none-eabi-gcc is not installed")
@pytest.mark.parametrize("core", ["cortex-m0", "cortex-m4"])
def test_arm_none_eabi_gcc_firmware_equals_the_reference(monkeypatch, core):
    monkeypatch.setenv("BNNC_MCU_CC", "arm-none-eabi-gcc")
    for seed in (11, 12):
        check_random_model(seed, core)


def check_zoo_model(name, core):
    """Zoo model `name` on `core`, two inputs: firmware == reference."""
    zoo = pytest.importorskip("bnnc.zoo")
    from bnnc.pipeline import compile_graph

    model = zoo.build(name)
    graph = compile_graph(model)
    inputs = driver.prepare_inputs(graph, zoo.inputs(model, 2))
    ref = driver.run_target(graph, "ref", inputs)
    y, _ = mcu.run(graph, inputs.grid, TargetOptions(mcu=core))
    assert np.array_equal(y.reshape(ref.shape), ref)


@pytest.mark.parametrize("name", ["ternary-ttq", "ternary-ec2t", "dabn", "w1a2", "hbn", "xnet"])
def test_zoo_family_models_on_cortex_m4(name):
    """The compressed-family layers go through the same MCU build and emulator."""
    check_zoo_model(name, "cortex-m4")


def test_portable_c_kernels_on_cortex_m4_equal_the_reference():
    """-DBNNC_PORTABLE: the C forms of the row kernels (no Thumb-2 assembly, no SMLAD), compiled
    for and run on the M4 itself."""
    for seed in (21, 22, 23):
        _, _, graph, inputs = random_case(seed, 3)
        ref = driver.run_target(graph, "ref", inputs)
        y, _ = mcu.emulate(graph, inputs.grid, TargetOptions(mcu="cortex-m4"), defines=("BNNC_PORTABLE",))
        assert np.array_equal(y.reshape(ref.shape), ref), seed


def test_parity_groups_give_the_full_adder_of_the_xor():
    """BNNC_XOR3_GROUPS: a window's and a filter's 3-word groups stored as their parities (c.xor3_groups,
    from the row's first group on) XOR to U = a ^ b, V = b ^ c, ones = a ^ b ^ c of the words a, b, c
    of x XOR w, and twos = ones ^ (U | V) is their majority: ones + 2 twos counts every bit once."""
    from bnnc.backends.c import xor3_groups

    rng = np.random.default_rng(0)
    popcount = np.vectorize(lambda v: bin(int(v)).count("1"))
    for taps, first in ((3, 0), (7, 1), (11, 2), (97, 1)):
        x = rng.integers(0, 2**32, (5, taps), dtype=np.uint64).astype(np.uint32)
        w = rng.integers(0, 2**32, (5, taps), dtype=np.uint64).astype(np.uint32)
        t = xor3_groups(x, first) ^ xor3_groups(w, first)
        assert np.array_equal(t[:, :first], (x ^ w)[:, :first])
        for i in range(first, taps - 2, 3):
            u, v, ones = t[:, i], t[:, i + 1], t[:, i + 2]
            want = popcount(x[:, i:i + 3] ^ w[:, i:i + 3]).sum(axis=1)
            assert np.array_equal(popcount(ones) + 2 * popcount(ones ^ (u | v)), want), (taps, first, i)
        rest = first + 3 * ((taps - first) // 3)
        assert np.array_equal(t[:, rest:], (x ^ w)[:, rest:])
