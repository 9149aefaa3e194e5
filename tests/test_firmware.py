"""Firmware integration (docs/firmware.md): two models in one Cortex-M image share one arena the
app supplies, in a section the app names, with their weights in another; built freestanding with
-nostdlib (directly, and as add_subdirectory()s of a parent CMake project), run in the emulator
bit-exact against the reference; the model keeps no mutable state besides its default arena."""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytest.importorskip("unicorn", reason="the Cortex-M tests need the mcu extra (unicorn, ziglang, pyelftools)")
pytest.importorskip("ziglang", reason="the Cortex-M tests need the mcu extra (unicorn, ziglang, pyelftools)")
pytest.importorskip("elftools", reason="the Cortex-M tests need the mcu extra (unicorn, ziglang, pyelftools)")

from bnnc import driver, zoo  # noqa: E402
from bnnc.backends import c as c_backend  # noqa: E402
from bnnc.backends import mcu  # noqa: E402
from bnnc.backends.mcu_emu import Emulator, Firmware  # noqa: E402
from bnnc.pipeline import compile_graph  # noqa: E402
from bnnc.targets import TargetOptions  # noqa: E402

from .helpers import random_case  # noqa: E402

# (--name, zoo model): a binarized MLP with a float input quantizer, and int8 activations with
# ternary weights (64-bit level thresholds, the compressed-family kernels)
MODELS = (("tfc", "tfc"), ("ec2t", "ternary-ec2t"))
N_INPUTS = 3
NO_UNWIND = ("-fno-unwind-tables", "-fno-asynchronous-unwind-tables")  # clang's .ARM.exidx markers
# the app's linker script: the models' tables and the shared arena in sections of their own
WEIGHTS_OUT = "  .model_weights : { *(.model_weights) } > FLASH\n"
ARENA_OUT = "  .model_arena (NOLOAD) : ALIGN(8) { *(.model_arena) } > RAM\n"

APP_C = """\
/* Two models in one image, one arena for both (they never run at the same time). */
#include <stdint.h>
{includes}

#define MAX2(x, y) ((x) > (y) ? (x) : (y))
#define SHARED_ARENA_SIZE {size}
#define SHARED_ARENA_ALIGN {align}

static uint8_t shared_arena[SHARED_ARENA_SIZE] __attribute__((aligned(SHARED_ARENA_ALIGN), section(".model_arena")));
{contexts}
union {{
{inputs}
}} bnnc_emu_input;
union {{
{outputs}
}} bnnc_emu_output;
volatile uint32_t bnnc_emu_select; /* which model bnnc_emu_infer runs */
volatile uint32_t bnnc_emu_checks; /* one bit per check main makes */

__attribute__((noinline)) void bnnc_emu_infer(void) {{
  switch (bnnc_emu_select) {{
{cases}
  }}
  __asm__ volatile("bkpt #1" ::: "memory");
  for (;;) {{
  }}
}}

int main(void) {{
  uint32_t ok = 0;
{inits}
  {p0}_ctx_t probe;
  ok |= (uint32_t)({p0}_init(&probe, shared_arena + 4, sizeof shared_arena - 4) == -1) << 10; /* misaligned */
  ok |= (uint32_t)({p0}_init(&probe, shared_arena, {P0}_ARENA_SIZE - 1) == -1) << 11;      /* too small */
  ok |= (uint32_t)({p0}_init(&probe, 0, sizeof shared_arena) == -1) << 12;                 /* no arena */
  ok |= (uint32_t)({p0}_init(0, shared_arena, sizeof shared_arena) == -1) << 13;           /* no context */
  bnnc_emu_checks = ok;
  __asm__ volatile("bkpt #0" ::: "memory"); /* start-up done: the host takes over */
  return 0;
}}
"""
CHECKS_OK = (1 << len(MODELS)) - 1 | 0xF << 10


@pytest.fixture(scope="module")
def models():
    """(name, graph, input grid, reference outputs) per model."""
    out = []
    for name, zoo_name in MODELS:
        model = zoo.build(zoo_name)
        graph = compile_graph(model)
        inputs = driver.prepare_inputs(graph, zoo.inputs(model, N_INPUTS, seed=3))
        ref = driver.run_target(graph, "ref", inputs)
        out.append((name, graph, inputs.grid, ref.reshape(N_INPUTS, -1)))
    return out


def _max_macro(names: list, what: str) -> str:
    expr = f"{names[0].upper()}_{what}"
    for n in names[1:]:
        expr = f"MAX2({expr}, {n.upper()}_{what})"
    return expr


def write_image_sources(root, models, core: str) -> list:
    """Each model's library in a folder of its name (as `bnnc compile --mcu` writes it), the app
    (app.c), the start-up code and the app's linker script (app.ld) in `root`; returns the C sources."""
    names = [m[0] for m in models]
    for name, graph, _, _ in models:
        (root / name).mkdir(parents=True, exist_ok=True)
        for fname, text in mcu.files(graph, TargetOptions(mcu=core, name=name)).items():
            (root / name / fname).write_text(text)
    emu_files = mcu.render(models[0][1], TargetOptions(mcu=core, name=names[0]), emulation=True)
    ld = next(t for n, t in emu_files.items() if n.endswith(".ld"))
    ld = ld.replace("  .ARM.exidx", WEIGHTS_OUT + "  .ARM.exidx")
    ld = ld.replace("  .bss (NOLOAD)", ARENA_OUT + "  .bss (NOLOAD)")
    assert WEIGHTS_OUT in ld and ARENA_OUT in ld
    (root / "app.ld").write_text(ld)
    (root / "startup.c").write_text(emu_files["startup.c"])
    app = APP_C.format(
        includes="\n".join(f'#include "{n}/model.h"' for n in names),
        size=_max_macro(names, "ARENA_SIZE"), align=_max_macro(names, "ARENA_ALIGN"),
        contexts="\n".join(f"static {n}_ctx_t {n};" for n in names),
        inputs="\n".join(f"  {n}_input_t m{i}[{n.upper()}_INPUT_SIZE];" for i, n in enumerate(names)),
        outputs="\n".join(f"  {n}_output_t m{i}[{n.upper()}_OUTPUT_SIZE];" for i, n in enumerate(names)),
        cases="\n".join(f"  case {i}:\n    {n}_infer(&{n}, bnnc_emu_input.m{i}, bnnc_emu_output.m{i});\n    break;"
                        for i, n in enumerate(names)),
        inits="\n".join(f"  ok |= (uint32_t)({n}_init(&{n}, shared_arena, sizeof shared_arena) == 0) << {i};"
                        for i, n in enumerate(names)),
        p0=names[0], P0=names[0].upper())
    (root / "app.c").write_text(app)
    return ["app.c", "startup.c"] + [f"{n}/model.c" for n in names]


def check_image(elf, models, core: str) -> dict:
    """Run every model of the image on its inputs, interleaved, against the reference; the
    placement and the arena sharing are what the app asked for. Returns instructions per model."""
    fw = Firmware.load(elf)
    assert fw.undefined == [], f"the freestanding image needs {fw.undefined}"
    assert "arena_words" not in fw.symbols, "the models' default arenas are not linked when unused"
    sizes = {}
    for name, graph, _, _ in models:
        ctx = c_backend.build_context(mcu.backend_graph(graph), name)
        sizes[name] = ctx["arena_bytes"]
    arena = fw.sections[".model_arena"]
    assert max(sizes.values()) <= arena < max(sizes.values()) + 8 and arena < sum(sizes.values()), (arena, sizes)
    assert fw.sections[".model_weights"] > 8 * fw.sections.get(".rodata", 0), fw.sections
    c = mcu.CORES[core]
    emu = Emulator(fw, c.uc_cpu, [], tuple(f"{m[0]}_infer" for m in models), mcu.EMU_FLASH, mcu.EMU_RAM)
    assert int.from_bytes(emu.read("bnnc_emu_checks", 4), "little") == CHECKS_OK
    counts = {m[0]: [] for m in models}
    for i in range(N_INPUTS):
        for k, (name, graph, grid, ref) in enumerate(models):
            emu.write("bnnc_emu_select", k.to_bytes(4, "little"))
            x = np.ascontiguousarray(grid[i].reshape(-1).astype(graph.input_info["dtype"])).tobytes()
            out_dtype = np.float32 if graph.output_info["dtype"] == "float32" else np.int32
            y, cnt, _ = emu.infer(x, ref.shape[1] * 4)
            assert np.array_equal(np.frombuffer(y, out_dtype), ref[i]), f"{name}, input {i}: differs from the reference"
            counts[name].append(int(cnt.sum()))
    return {n: int(np.mean(v)) for n, v in counts.items()}


@pytest.mark.parametrize("core", ["cortex-m4", "cortex-m0"])
def test_two_models_share_one_app_arena_in_one_freestanding_image(models, tmp_path, core):
    sources = write_image_sources(tmp_path, models, core)
    c = mcu.CORES[core]
    defines = [f'-D{m[0].upper()}_WEIGHTS_SECTION=".model_weights"' for m in models]
    cmd = mcu.compile_command(c, [*NO_UNWIND, *defines, *sources], "app.ld", "app.elf")
    if c.fpu:  # an FPU core needs not even the compiler's runtime library
        cmd.remove("-lcompiler_rt")
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    counts = check_image(tmp_path / "app.elf", models, core)
    # through an app-supplied arena each model costs what `bnnc run` measures with its own arena
    for name, graph, grid, _ in models:
        _, stats = mcu.emulate(graph, grid, TargetOptions(mcu=core, name=name))
        assert abs(counts[name] - stats["instructions"]) <= 16, (name, counts[name], stats["instructions"])


def _zig_toolchain(root, core: str):
    """A CMake toolchain file that compiles with ziglang's clang (for hosts without arm-none-eabi-gcc;
    without -O zig cc would add its UBSan runtime calls)."""
    c = mcu.CORES[core]
    tools = {"zcc": f'-m ziglang cc -target {c.zig_target} -mcpu={c.zig_cpu} "$@"', "zar": '-m ziglang ar "$@"',
             "zranlib": '-m ziglang ranlib "$@"'}
    for name, args in tools.items():
        (root / name).write_text(f'#!/bin/sh\nexec "{sys.executable}" {args}\n')
        os.chmod(root / name, 0o755)
    (root / "zig.cmake").write_text(textwrap.dedent(f"""\
        set(CMAKE_SYSTEM_NAME Generic)
        set(CMAKE_SYSTEM_PROCESSOR arm)
        set(CMAKE_C_COMPILER {root}/zcc)
        set(CMAKE_AR {root}/zar CACHE FILEPATH "")
        set(CMAKE_RANLIB {root}/zranlib CACHE FILEPATH "")
        set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
        set(CMAKE_C_FLAGS_INIT "{' '.join(NO_UNWIND)} -fno-sanitize=undefined")
        """))
    return root / "zig.cmake"


def _cmake(src, build, toolchain, *args):
    for cmd in (["cmake", "-S", str(src), "-B", str(build), f"-DCMAKE_TOOLCHAIN_FILE={toolchain}", *args],
                ["cmake", "--build", str(build), "-j1"]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, (cmd, r.stdout[-3000:] + r.stderr[-3000:])


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_parent_cmake_project_adds_two_models_as_subprojects(models, tmp_path):
    core = "cortex-m4"
    app = tmp_path / "app"
    write_image_sources(app, models, core)
    names = [m[0] for m in models]
    # the first model by add_subdirectory, the second by FetchContent (from a folder: no network)
    (app / "CMakeLists.txt").write_text(textwrap.dedent("""\
        cmake_minimum_required(VERSION 3.14)
        project(two_models C)
        add_subdirectory({n0})
        include(FetchContent)
        FetchContent_Declare({n1} SOURCE_DIR ${{CMAKE_CURRENT_SOURCE_DIR}}/{n1})
        FetchContent_MakeAvailable({n1})
        {sections}
        add_executable(app.elf app.c startup.c)
        target_link_libraries(app.elf PRIVATE {libs})
        target_link_options(app.elf PRIVATE -nostdlib -Wl,--gc-sections -Wl,-u,bnnc_emu_infer
                            -T ${{CMAKE_CURRENT_SOURCE_DIR}}/app.ld)
        """).format(n0=names[0], n1=names[1], libs=" ".join(f"bnnc::{n}" for n in names),
                    sections="\n".join(f"target_compile_definitions({n} PRIVATE "
                                        f'{n.upper()}_WEIGHTS_SECTION=".model_weights")' for n in names)))
    _cmake(app, tmp_path / "build", _zig_toolchain(tmp_path, core))
    check_image(tmp_path / "build" / "app.elf", models, core)


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_generated_cmake_project_builds_on_its_own(models, tmp_path):
    """The example firmware (main.c: an app-supplied arena), freestanding, with the given toolchain."""
    name, graph = models[1][:2]
    src = tmp_path / name
    src.mkdir()
    for fname, text in mcu.files(graph, TargetOptions(mcu="cortex-m0", name=name)).items():
        (src / fname).write_text(text)
    _cmake(src, tmp_path / "build", _zig_toolchain(tmp_path, "cortex-m0"), f"-D{name.upper()}_RUNTIME_LIBS=compiler_rt")
    fw = Firmware.load(tmp_path / "build" / f"{name}.elf")
    assert fw.undefined == [] and {f"{name}_init", f"{name}_infer"} <= set(fw.symbols)
    assert "arena_words" not in fw.symbols  # main.c supplies the arena


def _object_symbols(obj) -> tuple:
    """(data objects in writable sections: the object file's mutable state, undefined symbols,
    {data object: section name})."""
    from elftools.elf.elffile import ELFFile

    with open(obj, "rb") as f:
        elf = ELFFile(f)
        writable, undefined, where = set(), set(), {}
        for sym in elf.get_section_by_name(".symtab").iter_symbols():
            if sym["st_shndx"] == "SHN_UNDEF" and sym.name:
                undefined.add(sym.name)
            if sym["st_info"]["type"] != "STT_OBJECT" or not isinstance(sym["st_shndx"], int):
                continue
            sec = elf.get_section(sym["st_shndx"])
            where[sym.name] = sec.name
            if sec["sh_flags"] & 0x1:  # SHF_WRITE
                writable.add(sym.name)
    return sorted(writable), sorted(undefined), where


def _compile_object(tmp_path, core: str, *args):
    c = mcu.CORES[core]
    cmd = [sys.executable, "-m", "ziglang", "cc", "-target", c.zig_target, f"-mcpu={c.zig_cpu}", mcu.OPT,
           "-ffreestanding", *mcu.WARN, *NO_UNWIND, *args, "-c", "model.c", "-o", "model.o"]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return _object_symbols(tmp_path / "model.o")


@pytest.mark.parametrize("zoo_name", ["tfc", "ternary-ec2t", "hbn", "resnet18-stq", "bireal"])
def test_model_is_freestanding_and_its_only_mutable_state_is_the_default_arena(tmp_path, zoo_name):
    """model.c alone, compiled freestanding: no libc symbol (memset, memcpy: also none from
    initializers), on an FPU core no runtime helper at all; no writable data but the default arena,
    and none with <PREFIX>_NO_STATIC_ARENA."""
    graph = compile_graph(zoo.build(zoo_name))
    for core in ("cortex-m4", "cortex-m7", "cortex-m0"):
        c = mcu.CORES[core]
        for fname, text in mcu.files(graph, TargetOptions(mcu=core, name="net")).items():
            (tmp_path / fname).write_text(text)
        for defines, state in (((), ["arena_words"]), (("-DNET_NO_STATIC_ARENA",), [])):
            writable, undefined, _ = _compile_object(tmp_path, core, *defines)
            assert writable == state, (core, defines)
            if c.fpu:
                assert undefined == [], (core, undefined)
            else:  # soft float and 64-bit multiplication from the compiler's runtime, nothing else
                assert all(s.startswith("__aeabi_") and "mem" not in s for s in undefined), undefined


def test_section_hooks_place_the_tables_and_the_static_arena(tmp_path):
    _, _, graph, _ = random_case(4, 1)
    for fname, text in mcu.files(graph, TargetOptions(mcu="cortex-m4", name="net")).items():
        (tmp_path / fname).write_text(text)
    _, _, default = _compile_object(tmp_path, "cortex-m4")
    tables = sorted(n for n in default if n != "arena_words")
    assert tables and default["arena_words"].startswith(".bss")
    _, _, placed = _compile_object(tmp_path, "cortex-m4", '-DNET_WEIGHTS_SECTION=".ext_flash"',
                                   '-DNET_ARENA_SECTION=".fast_ram"')
    assert placed["arena_words"] == ".fast_ram"
    assert {placed[n] for n in tables} == {".ext_flash"}


def test_host_c_model_has_the_same_api(tmp_path):
    """The host C target's model.h/model.c carry the same arena API; two instances of one model in
    two app arenas give what `run` gives (built with the host compiler)."""
    _, _, graph, inputs = random_case(7, 2)
    files = c_backend.files(graph, TargetOptions(name="net"))
    for fname, text in files.items():
        (tmp_path / fname).write_text(text)
    (tmp_path / "two.c").write_text(textwrap.dedent("""\
        #include <stdio.h>
        #include "model.h"
        static uint8_t a[NET_ARENA_SIZE] __attribute__((aligned(NET_ARENA_ALIGN)));
        static uint8_t b[NET_ARENA_SIZE] __attribute__((aligned(NET_ARENA_ALIGN)));
        int main(int argc, char **argv) {
          static net_input_t x[2][NET_INPUT_SIZE];
          static net_output_t y[2][NET_OUTPUT_SIZE];
          net_ctx_t ca, cb;
          FILE *f = fopen(argv[1], "rb");
          if (argc < 3 || !f || fread(x, sizeof x, 1, f) != 1) return 2;
          fclose(f);
          if (net_init(&ca, a, sizeof a) || net_init(&cb, b, sizeof b)) return 3;
          if (!net_init(&ca, a + 1, sizeof a - 1) || !net_init(&cb, b, NET_ARENA_SIZE - 1)) return 4;
          if (net_init(&ca, a, sizeof a) || net_init(&cb, b, sizeof b)) return 3;
          net_infer(&ca, x[0], y[0]);
          net_infer(&cb, x[1], y[1]);
          f = fopen(argv[2], "wb");
          if (!f || fwrite(y, sizeof y, 1, f) != 1) return 5;
          return fclose(f) != 0;
        }
        """))
    r = subprocess.run(["cc", "-std=c99", "-O2", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off",
                        "-DNET_NO_STATIC_ARENA", "model.c", "two.c", "-o", "two"], cwd=tmp_path, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr[-3000:]
    grid = np.ascontiguousarray(inputs.grid[:2].astype(graph.input_info["dtype"]))
    grid.tofile(tmp_path / "x.bin")
    r = subprocess.run([str(tmp_path / "two"), str(tmp_path / "x.bin"), str(tmp_path / "y.bin")], capture_output=True)
    assert r.returncode == 0, r
    ref = driver.run_target(graph, "ref", inputs)
    odt = np.float32 if graph.output_info["dtype"] == "float32" else np.int32
    assert np.array_equal(np.fromfile(tmp_path / "y.bin", odt), ref[:2].ravel())
