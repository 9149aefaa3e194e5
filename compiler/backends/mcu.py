"""Cortex-M0 / M4 / M7 and RISC-V (RV32IMC, RV32IMC + Zbb) firmware: the C backend's
templates in their MCU flavour, cross-compiled with ziglang's clang and run bit-exact in unicorn.

MCU flavour (pack_bits(graph, 32, "rows")): 32-bit words; one filter row after the other;
binary layers whose channels do not fill whole words get dense windows; popcount is the
carry-save / SWAR sequence of bnnc_kernels.h (Thumb-2 assembly on M4/M7, C on M0 and RV32IMC:
never a libgcc call; Zbb's cpop on rv32imc_zbb); no libc calls, no allocation; weights and thresholds `const` (flash); one static
activation arena placed by plan_arena; float code only where the model itself has float
operations (M0 then uses compiler-rt's soft float, M4/M7 their single-precision FPU).

`bnnc compile --target c --mcu M` writes the library (model.c, model.h, bnnc_kernels.h), an
example main.c, a minimal startup.c and linker script, a Makefile, and a CMakeLists.txt (with a
toolchain file for the cross gcc when built on its own; a library target `<prefix>` when a
parent project add_subdirectory()s it). The library is freestanding (no libc, -nostdlib) and
reentrant: activations live in an arena the app may supply (`<prefix>_init`), placed and shared
as docs/firmware.md describes. `run` / `verify` / `report` build the same model with an emulator
harness instead of main.c (cached like c_build) and run it in unicorn (mcu_emu), which counts
instructions per inference and per layer, and estimates cycles from the core's cycles per
instruction class (mcu_cycles); flash and RAM come from the ELF's sections.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2
import numpy as np

from .. import ir, progress
from ..errors import BnncError
from ..passes.pack_bits import pack_bits
from ..passes.plan_arena import plan_arena
from ..resources import resource_dir
from . import c as c_backend
from . import c_build

WORD_BITS = 32
OPT = "-O2"  # the figures bnnc reports are for this optimization level
WARN = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off", "-ffunction-sections", "-fdata-sections")
EMU_FLASH = 32 << 20  # the emulated part: memories large enough for any model; budgets are checked apart
EMU_RAM = 16 << 20


@dataclass(frozen=True)
class Core:
    name: str
    zig_target: str
    zig_cpu: str
    gcc_flags: str
    uc_cpu: str
    fpu: bool
    flash: int  # a typical part's memories, for the example linker script
    ram: int
    arch: str = "arm"  # "arm" (Thumb, M profile) or "riscv" (RV32)
    cross: str = "arm-none-eabi-"  # the GNU toolchain prefix of the firmware project
    # binary rows in parity groups (bnnc_kernels.h, BNNC_XOR3_GROUPS): 3 instructions fewer per 3
    # words for the carry-save kernels; not with a popcount instruction (Zbb), one per word there
    xor3_groups: bool = True


CORES = {
    "cortex-m0": Core("cortex-m0", "thumb-freestanding-eabi", "cortex_m0", "-mcpu=cortex-m0 -mthumb -mfloat-abi=soft",
                      "UC_CPU_ARM_CORTEX_M0", False, 256 << 10, 32 << 10),
    "cortex-m4": Core("cortex-m4", "thumb-freestanding-eabihf", "cortex_m4+vfp4d16sp",
                      "-mcpu=cortex-m4 -mthumb -mfpu=fpv4-sp-d16 -mfloat-abi=hard", "UC_CPU_ARM_CORTEX_M4", True,
                      1 << 20, 128 << 10),
    "cortex-m7": Core("cortex-m7", "thumb-freestanding-eabihf", "cortex_m7+fp_armv8d16sp",
                      "-mcpu=cortex-m7 -mthumb -mfpu=fpv5-sp-d16 -mfloat-abi=hard", "UC_CPU_ARM_CORTEX_M7", True,
                      2 << 20, 512 << 10),
    # ESP32-C3 class (400 KiB SRAM, 4 MiB flash); soft float (compiler-rt) like the M0
    "rv32imc": Core("rv32imc", "riscv32-freestanding-none", "generic_rv32+m+c", "-march=rv32imc -mabi=ilp32",
                    "UC_CPU_RISCV32_ANY", False, 4 << 20, 384 << 10, "riscv", "riscv64-unknown-elf-"),
    # a core with the Zbb bit-manipulation extension: popcount is one cpop
    "rv32imc_zbb": Core("rv32imc_zbb", "riscv32-freestanding-none", "generic_rv32+m+c+zbb",
                        "-march=rv32imc_zbb -mabi=ilp32", "UC_CPU_RISCV32_ANY", False, 4 << 20, 384 << 10, "riscv",
                        "riscv64-unknown-elf-", xor3_groups=False),
}


def core_of(opts) -> Core:
    if opts.mcu not in CORES:
        raise BnncError(f"unknown --mcu '{opts.mcu}' (supported: {', '.join(CORES)})")
    return CORES[opts.mcu]


def backend_graph(graph: ir.Graph) -> ir.Graph:
    """The lowered IR with the MCU backend passes: 32-bit words, row weights, arena."""
    return plan_arena(pack_bits(graph, WORD_BITS, "rows"))


def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(resource_dir("templates") / "mcu")),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              trim_blocks=True, lstrip_blocks=True)


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def _memories(ctx: dict, core: Core, opts) -> tuple:
    """(flash, RAM, note) of the example linker script: the budgets when given, else the core's
    typical part, enlarged (to a power of two) when the model's tables or arena need more."""
    tables = sum(int(c["n"]) * 4 for c in ctx["consts"])  # at most 4 bytes per element
    flash = opts.flash or max(core.flash, _pow2_at_least(tables + (64 << 10)))
    ram = opts.ram or max(core.ram, _pow2_at_least(ctx["arena_bytes"] + 16 * (ctx["input_size"]
                                                                               + ctx["output_size"]) + (8 << 10)))
    note = "the --flash / --ram budgets" if (opts.flash or opts.ram) else (
        "a typical part" if (flash, ram) == (core.flash, core.ram) else "enlarged to fit this model")
    return flash, ram, note


def render(graph: ir.Graph, opts, emulation: bool = False, bg: ir.Graph | None = None) -> dict:
    """{file name: text}: the firmware project, or (emulation) the model with bnnc's harness.
    `bg`: the backend graph when the caller has it already."""
    core = core_of(opts)
    bg = bg if bg is not None else backend_graph(graph)
    lib = c_backend.render(bg, opts.name, core.xor3_groups)
    ctx = c_backend.build_context(bg, opts.name, core.xor3_groups)
    ld = f"{ctx['prefix']}_{core.name.replace('-', '_')}.ld"
    flash, ram, note = (EMU_FLASH, EMU_RAM, "bnnc's emulated part") if emulation else _memories(ctx, core, opts)
    ctx.update(core=core, linker_script=ld, flash=flash, ram=ram, note=note,
               toolchain_file=core.cross.rstrip("-") + ".cmake")
    env = _env()
    files = {n: lib[n] for n in ("model.c", "model.h", "bnnc_kernels.h") if n in lib}
    files.update({n: t for n, t in lib.items() if n.startswith("bnnc_") and n.endswith(".h")})
    files["startup.c"] = env.get_template("startup.c.j2").render(**ctx)
    files[ld] = env.get_template("link.ld.j2").render(**ctx)
    if emulation:
        files["emu.c"] = env.get_template("emu.c.j2").render(**ctx)
    else:
        files["main.c"] = env.get_template("main.c.j2").render(**ctx)
        files["Makefile"] = env.get_template("Makefile.j2").render(**ctx)
        files["CMakeLists.txt"] = env.get_template("CMakeLists.txt.j2").render(**ctx)
        files[ctx["toolchain_file"]] = env.get_template("toolchain.cmake.j2").render(**ctx)
    return files


# ----------------------------------------------------------------------------- cross-compiling


@lru_cache(maxsize=None)
def zig_version() -> str:
    try:
        import ziglang  # noqa: F401
    except ModuleNotFoundError:
        raise BnncError("the MCU targets need the 'ziglang' package: pip install 'bnnc[mcu]'") from None
    r = subprocess.run([sys.executable, "-m", "ziglang", "version"], capture_output=True, text=True)
    if r.returncode != 0:
        raise BnncError(f"python -m ziglang does not run: {r.stderr.strip()[:200]}")
    return r.stdout.strip()


def toolchain(core: Core | None = None) -> str:
    """The cross-compiler of emulation builds: "zig" (ziglang's clang, the default) or "gcc"
    (arm-none-eabi-gcc, chosen with BNNC_MCU_CC=arm-none-eabi-gcc; Arm cores only)."""
    cc = os.environ.get("BNNC_MCU_CC", "zig")
    if cc not in ("zig", "arm-none-eabi-gcc"):
        raise BnncError(f"BNNC_MCU_CC={cc!r}: expected 'zig' or 'arm-none-eabi-gcc'")
    return "gcc" if cc == "arm-none-eabi-gcc" and (core is None or core.arch == "arm") else "zig"


@lru_cache(maxsize=None)
def gcc_version() -> str:
    if shutil.which("arm-none-eabi-gcc") is None:
        raise BnncError("BNNC_MCU_CC=arm-none-eabi-gcc, but arm-none-eabi-gcc is not installed")
    return subprocess.run(["arm-none-eabi-gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[0]


def compile_command(core: Core, sources: list, linker_script: str, out: str, cc: str = "zig") -> list:
    """Freestanding and without libc (-nostdlib): only the compiler's own runtime is linked, for
    the soft float and 64-bit multiplication that cores without an FPU (M0) need."""
    # bnnc_emu_infer is called by the emulator only: a root for --gc-sections
    link = ["-nostdlib", "-Wl,--gc-sections", "-Wl,-u,bnnc_emu_infer", "-T", linker_script, *sources, "-o", out]
    if cc == "gcc":
        return ["arm-none-eabi-gcc", *core.gcc_flags.split(), OPT, "-ffreestanding", "-fomit-frame-pointer", *WARN,
                *link, "-lgcc"]
    # zig cc asks the linker for the entry point _start; the linker script's ENTRY() is the reset handler
    return [sys.executable, "-m", "ziglang", "cc", "-target", core.zig_target, f"-mcpu={core.zig_cpu}", OPT,
            "-ffreestanding", "-fomit-frame-pointer", *WARN, "-Wl,--entry=bnnc_reset_handler", *link, "-lcompiler_rt"]


def compiler_name(core: Core) -> str:
    if toolchain(core) == "gcc":
        return f"{gcc_version()} {OPT} {core.gcc_flags}"
    return f"zig cc {zig_version()} {OPT} -mcpu={core.zig_cpu}"


def build(files: dict, core: Core, defines: tuple = ()) -> Path:
    """Cross-compile an emulation build (model.c, emu.c, startup.c); cached by content.
    `defines` (e.g. "BNNC_NAIVE_POPCOUNT") are passed as -D options."""
    ld = next(n for n in files if n.endswith(".ld"))
    sources = sorted(n for n in files if n.endswith(".c"))
    cc = toolchain(core)
    cmd = compile_command(core, [f"-D{d}" for d in defines] + sources, ld, "firmware.elf", cc)
    try:
        return c_build.cached_build(files, cmd, "firmware.elf", prefix="mcu-",
                                    key=gcc_version() if cc == "gcc" else zig_version(), what="firmware")
    except RuntimeError as e:
        overflow = _region_overflow(str(e))
        if overflow is None:
            raise
        region, by = overflow
        size = EMU_FLASH if region == "FLASH" else EMU_RAM
        amount = f"{size >> 20} MiB" if size % (1 << 20) == 0 else f"{size} bytes"
        raise BnncError(f"{core.name}: the model's firmware does not fit bnnc's emulated part, {amount} of "
                        f"{'flash' if region == 'FLASH' else region} ({by} bytes more are needed), nor any "
                        f"{core.name} part") from None


def _region_overflow(messages: str):
    """(memory region, bytes) of the first 'region overflowed' linker error (lld or GNU ld), else None."""
    m = re.search(r"will not fit in region '(\w+)': overflowed by (\d+) bytes", messages) or \
        re.search(r"region `(\w+)' overflowed by (\d+) bytes", messages)
    return (m.group(1), int(m.group(2))) if m else None


# ----------------------------------------------------------------------------- running


def emulate(graph: ir.Graph, grid: np.ndarray, opts, per_instruction: bool = False, defines: tuple = ()) -> tuple:
    """(outputs (N, output elements), stats) of the firmware on inputs on the input grid
    (per_instruction: count instructions one by one, to check the block counts; defines: -D
    options of the build, for benchmarks)."""
    from .mcu_cycles import TABLES
    from .mcu_emu import Emulator, Firmware

    core = core_of(opts)
    bg = backend_graph(graph)
    files = render(graph, opts, emulation=True, bg=bg)
    elf = build(files, core, tuple(defines))
    fw = Firmware.load(elf)
    prefix = c_backend.sanitize_identifier(opts.name)
    layers = [op.name for op in bg.ops()]
    table = TABLES[core.name]
    emu = Emulator(fw, core.uc_cpu, layers, f"{prefix}_run", EMU_FLASH, EMU_RAM, per_instruction, core.arch, table)
    in_dtype = graph.input_info["dtype"]
    out_dtype = np.dtype(graph.output_info["dtype"])
    n_out = graph.output_info["elements"]
    grid = np.asarray(grid)
    n = grid.shape[0]
    ys, counts, cycles = [], [], []
    with progress.step(f"emulating {core.name} firmware on {n} input(s)", total=n) as step:
        for i in range(n):
            x = np.ascontiguousarray(grid[i].reshape(-1).astype(in_dtype)).tobytes()
            y, cnt, cyc = emu.infer(x, n_out * out_dtype.itemsize)
            ys.append(np.frombuffer(y, out_dtype))
            counts.append(cnt)
            cycles.append(cyc)
            step.advance()
    counts = np.array(counts) if counts else np.zeros((0, len(layers) + 1), np.int64)
    cycles = np.array(cycles) if cycles else np.zeros((0, len(layers) + 1), np.int64)
    clock = opts.clock_mhz or table.clock_mhz
    mean_cycles = int(round(cycles.sum(axis=1).mean())) if n else 0
    stack = emu.stack_bytes()
    stats = {
        "target": core.name,
        "instructions": int(round(counts.sum(axis=1).mean())) if n else 0,
        "instructions_min": int(counts.sum(axis=1).min()) if n else 0,
        "instructions_max": int(counts.sum(axis=1).max()) if n else 0,
        "instructions_per_layer": {name: int(round(counts[:, i].mean())) if n else 0
                                   for i, name in enumerate(layers + ["glue"])},
        "helpers_per_layer": emu.helpers_per_layer(),
        "cycles": mean_cycles,  # an estimate: see mcu_cycles (what it models and ignores)
        "cycles_per_layer": {name: int(round(cycles[:, i].mean())) if n else 0
                             for i, name in enumerate(layers + ["glue"])},
        "cycle_model": table.source,
        "clock_mhz": clock,
        "latency_ms": mean_cycles / (clock * 1e3),
        "flash_bytes": fw.flash_bytes,
        "ram_bytes": fw.data_bytes + fw.bss_bytes + stack,
        # what the model itself needs: without the emulation harness's input and output buffers
        # (an app reads its input and writes its output where it likes)
        "model_ram_bytes": fw.data_bytes + fw.bss_bytes + stack
        - sum(fw.symbols[s][1] for s in ("bnnc_emu_input", "bnnc_emu_output") if s in fw.symbols),
        "ram_static_bytes": fw.data_bytes + fw.bss_bytes,
        "stack_bytes": stack,
        # the most stack in use at a layer's call (the entry's frame and arguments), and the
        # deepest use while each layer ran (the entry's frame included)
        "stack_entry_bytes": int(emu.entry_stack),
        "stack_per_layer": emu.stack_per_layer(),
        "arena_bytes": int(bg.arena["size"]),
        "arena_lower_bound_bytes": int(bg.arena["lower_bound"]),
        "arena_overlap_bound_bytes": int(bg.arena["overlap_bound"]),
        "arena_overlaps": len(bg.arena["overlaps"]),
        "sections": dict(fw.sections),
        "compiler": compiler_name(core),
    }
    y = np.stack(ys) if ys else np.zeros((0, n_out), out_dtype)
    return y, stats


def check_budgets(stats: dict, opts) -> None:
    """BnncError when the firmware exceeds a declared --flash / --ram budget."""
    for key, budget, flag in (("flash_bytes", opts.flash, "--flash"), ("ram_bytes", opts.ram, "--ram")):
        need = stats[key]
        if budget is not None and need > budget:
            what = key.split("_")[0].replace("ram", "RAM")
            raise BnncError(f"{stats['target']}: the model needs {need} bytes of {what}, {need - budget} bytes "
                            f"more than the {flag} budget of {budget} bytes")


def _budget_sample(graph: ir.Graph) -> np.ndarray:
    from ..driver import prepare_inputs, random_samples

    try:
        return prepare_inputs(graph, random_samples(graph, 1, 0)).grid
    except BnncError:  # inputs bnnc cannot sample: a zero input still runs every layer
        return np.zeros((1, int(np.prod(graph.input_info["shape"]))), graph.input_info["dtype"])


# ----------------------------------------------------------------------------- target interface


def files(graph: ir.Graph, opts) -> dict:
    """`bnnc compile --target c --mcu M`: the firmware project. With --flash / --ram budgets the
    model is built and run once in the emulator to check that it fits."""
    out = render(graph, opts)
    if opts.flash is not None or opts.ram is not None:
        _, stats = emulate(graph, _budget_sample(graph), opts)
        check_budgets(stats, opts)
    return out


def run(graph: ir.Graph, grid: np.ndarray, opts):
    """Outputs and figures of the firmware on `grid`; with --flash / --ram budgets, one sample is
    emulated and checked first (a model that does not fit is refused before the others run)."""
    if (opts.flash is not None or opts.ram is not None) and len(grid) > 1:
        _, stats = emulate(graph, np.asarray(grid)[:1], opts)
        check_budgets(stats, opts)
    y, stats = emulate(graph, grid, opts)
    check_budgets(stats, opts)
    return y, stats


def report(graph: ir.Graph, opts) -> dict:
    """`bnnc report --mcu M`: flash, RAM, arena, instructions and estimated cycles per layer (one
    emulated inference)."""
    _, stats = emulate(graph, _budget_sample(graph), opts)
    check_budgets(stats, opts)
    bg = backend_graph(graph)
    macs = {}
    for op in bg.ops():
        if isinstance(op, ir.Conv):
            oh, ow = bg.tensors[op.outputs[0]].shape[:2]
            macs[op.name] = (int(np.prod(op.w.shape)) * oh * ow, op.packed.in_kind)
    total = stats["instructions"]
    lines = [f"{stats['target']} firmware ({stats['compiler']}): {total} instructions per inference",
             f"estimated {stats['cycles']} cycles, {stats['latency_ms']:.3f} ms at {stats['clock_mhz']:g} MHz "
             f"(--clock-mhz); cycle model: {stats['cycle_model']}, zero-wait-state memory",
             f"flash {stats['flash_bytes']} B, RAM {stats['ram_bytes']} B (static {stats['ram_static_bytes']} B "
             f"+ stack {stats['stack_bytes']} B), arena {stats['arena_bytes']} B (liveness lower bound "
             f"{stats['arena_lower_bound_bytes']} B" + (f"; {stats['arena_overlaps']} layer outputs over their inputs, "
                                                        f"bound with them {stats['arena_overlap_bound_bytes']} B"
                                                        if stats["arena_overlaps"] else "") + ")", ""]
    rows = [["layer", "instructions", "share", "cycles (est.)", "MACs", "instr/MAC", "cycles/MAC"]]
    for name, n in stats["instructions_per_layer"].items():
        m, kind = macs.get(name, (0, ""))
        c = stats["cycles_per_layer"][name]
        rows.append([name, str(n), f"{100 * n / max(total, 1):.1f}%", str(c), f"{m} {kind}".strip() if m else "-",
                     f"{n / m:.3f}" if m else "-", f"{c / m:.3f}" if m else "-"])
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r)) for r in rows]
    return {"text": "\n".join(lines), "json": stats}

