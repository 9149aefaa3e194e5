"""The targets bnnc compiles for, behind one interface the CLI and the tests use.

A target is a backend module with three functions:

    files(graph, opts) -> {relative path: text}     what `bnnc compile` writes
    run(graph, grid, opts) -> (y, stats)            y: (N, output elements); stats: dict for --stats
    report(graph, opts) -> dict | None              extra `bnnc report` section ({"text", "json"})

`graph` is the lowered IR (after the passes of `pipeline.PASSES`); each backend applies its own
backend passes (packing, arena, folding). `grid` is (N, input elements) on the input grid.
Modules are imported on first use so that a missing optional tool only affects its own target.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import ir
from .errors import BnncError

# target name -> (backend module, what it is)
TARGETS = {
    "ref": ("bnnc.backends.ref", "the Python reference executor (numpy)"),
    "c": ("bnnc.backends.c", "portable C99, built and run on this machine"),
    "verilog": ("bnnc.backends.verilog", "Verilog dataflow accelerator, simulated with Verilator"),
    "hls": ("bnnc.backends.hls", "HLS C++ dataflow, C simulation with g++"),
    "cortex-m0": ("bnnc.backends.mcu", "Cortex-M0 firmware, emulated (unicorn)"),
    "cortex-m4": ("bnnc.backends.mcu", "Cortex-M4 firmware, emulated (unicorn)"),
    "cortex-m7": ("bnnc.backends.mcu", "Cortex-M7 firmware, emulated (unicorn)"),
    "rv32imc": ("bnnc.backends.mcu", "RISC-V RV32IMC firmware (ESP32-C3 class), emulated (unicorn)"),
    "rv32imc_zbb": ("bnnc.backends.mcu", "RISC-V RV32IMC + Zbb (cpop) firmware, emulated (unicorn)"),
}

MCUS = ("cortex-m0", "cortex-m4", "cortex-m7", "rv32imc", "rv32imc_zbb")
COMPILE_TARGETS = ("c", *MCUS, "verilog", "hls")  # what `bnnc compile` writes


@dataclass
class TargetOptions:
    """Backend settings from the command line; each backend reads the ones it understands."""

    name: str = "bnnc"  # prefix of generated identifiers (sanitized by the backend)
    folding: Optional[object] = None  # Verilog/HLS: path to a folding JSON, or its dict
    target_cycles: Optional[int] = None  # Verilog/HLS: cycles per frame to meet when choosing a folding
    mcu: Optional[str] = None  # firmware core for `--target c --mcu` and the cortex-m* targets
    flash: Optional[int] = None  # MCU budget in bytes
    ram: Optional[int] = None  # MCU budget in bytes
    clock_mhz: Optional[float] = None  # MCU clock of the latency estimate (default: the core's typical part)
    progress: bool = False  # long runs print progress on stderr
    flags: Optional[tuple] = None  # host C compiler flags (tests: sanitizers, clang)
    measure: bool = False  # run: also time the inferences for the stats (a benchmark run on the host targets)
    extra: dict = field(default_factory=dict)


def check_target(target: str, allowed=None) -> None:
    allowed = tuple(allowed or TARGETS)
    if target not in allowed:
        raise BnncError(f"unknown target '{target}' (supported: {', '.join(allowed)})")


def backend(target: str):
    """The backend module of `target` (imported on first use)."""
    check_target(target)
    try:
        return importlib.import_module(TARGETS[target][0])
    except ModuleNotFoundError as e:
        if e.name != TARGETS[target][0]:
            raise
        raise BnncError(f"target '{target}' is not available in this version of bnnc") from None


def options_for(target: str, opts: TargetOptions) -> TargetOptions:
    """The MCU targets imply their core."""
    if target in MCUS:
        if opts.mcu not in (None, target):
            raise BnncError(f"--mcu {opts.mcu} contradicts --target {target}")
        opts = TargetOptions(**{**opts.__dict__, "mcu": target})
    return opts


def compile_files(graph: ir.Graph, target: str, opts: TargetOptions) -> dict:
    """{relative path: text} for `bnnc compile --target target`."""
    check_target(target, COMPILE_TARGETS)
    if opts.mcu is not None and target == "c":  # `--target c --mcu M` is target M
        check_mcu(opts.mcu)
        target = opts.mcu
    return backend(target).files(graph, options_for(target, opts))


def check_mcu(mcu: str) -> None:
    if mcu not in MCUS:
        raise BnncError(f"unknown --mcu '{mcu}' (supported: {', '.join(MCUS)})")


def run(graph: ir.Graph, target: str, grid: np.ndarray, opts: TargetOptions) -> tuple:
    """(y (N, *output shape), stats dict) of the compiled model on `target`."""
    mod = backend(target)
    y, stats = mod.run(graph, grid, options_for(target, opts))
    n = grid.shape[0]
    return np.asarray(y).reshape((n,) + tuple(graph.output_info["shape"][1:])), dict(stats or {})


def report(graph: ir.Graph, target: str, opts: TargetOptions):
    """A backend's section of `bnnc report` ({"text": str, "json": dict}) or None."""
    if target in ("ref",):
        return None
    mod = backend(target)
    fn = getattr(mod, "report", None)
    return fn(graph, options_for(target, opts)) if fn else None
