"""Run one hw/ building block in Verilator on a stream of records (the blocks' unit tests).

`run_block` builds (cached) the block behind the generic driver `tb/stream_tb.cpp`, feeds it
records given as Python ints of `in_bits` bits, with random valid gaps and back-pressure, and
returns the output records and the cycle of every transfer.
"""

from __future__ import annotations

import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnnc.backends import verilog_sim
from bnnc.resources import resource_dir

BLOCKS = ("bnnc_fifo", "bnnc_rom", "bnnc_axis_in", "bnnc_axis_out", "bnnc_swg", "bnnc_mvtu", "bnnc_maxpool",
          "bnnc_gsum", "bnnc_fork", "bnnc_add", "bnnc_sumpool")


def hw_dir() -> Path:
    return resource_dir("hw")


def sources(top: str) -> dict:
    """{file name: text} of every building block plus the test wrapper `top` if it is one."""
    rtl = hw_dir() / "rtl"
    files = {f"{b}.sv": (rtl / f"{b}.sv").read_text() for b in BLOCKS}
    wrapper = hw_dir() / "tb" / f"{top}.sv"
    if wrapper.exists():
        files[f"{top}.sv"] = wrapper.read_text()
    return files


def words(bits: int) -> int:
    return max(1, -(-bits // 32))


def to_words(records: list, bits: int) -> np.ndarray:
    n = words(bits)
    out = np.zeros((len(records), n), np.uint32)
    for i, r in enumerate(records):
        r = int(r)
        if r < 0 or r >> bits:
            raise ValueError(f"record {i} does not fit {bits} bits")
        for j in range(n):
            out[i, j] = (r >> (32 * j)) & 0xFFFFFFFF
    return out


def from_words(arr: np.ndarray, bits: int) -> list:
    out = []
    for row in arr:
        v = 0
        for j, w in enumerate(row):
            v |= int(w) << (32 * j)
        out.append(v & ((1 << bits) - 1))
    return out


@dataclass
class BlockRun:
    outputs: list  # ints of out_bits bits
    in_cycles: list  # cycle of each input transfer
    out_cycles: list  # cycle of each output transfer


def run_block(top: str, params: dict, records: list, in_bits: int, out_bits: int, n_out: int, *, seed: int = 0,
              p_valid: float = 1.0, p_ready: float = 1.0, max_cycles: int = 1_000_000,
              mem_files: dict | None = None) -> BlockRun:
    """Stream `records` into block `top` (parameters `params`); `mem_files` {name: text} are the
    $readmemh images, written where the simulator runs."""
    cpp = {"stream_tb.cpp": (hw_dir() / "tb" / "stream_tb.cpp").read_text()}
    exe, _ = verilog_sim.build(sources(top), top, cpp, params)
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        for name, text in (mem_files or {}).items():
            (td / name).write_text(text)
        to_words(records, in_bits).tofile(td / "in.bin")
        cmd = [str(exe), "in.bin", str(words(in_bits)), "out.bin", str(words(out_bits)), str(n_out), str(seed),
               str(p_valid), str(p_ready), str(max_cycles), "cycles.txt"]
        r = subprocess.run(cmd, cwd=td, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{top} simulation failed: {r.stderr.strip()[-2000:]}")
        out = np.fromfile(td / "out.bin", np.uint32).reshape(-1, words(out_bits))
        ins, outs = [], []
        for line in (td / "cycles.txt").read_text().split("\n"):
            if line:
                kind, c = line.split()
                (ins if kind == "in" else outs).append(int(c))
    return BlockRun(from_words(out, out_bits), ins, outs)


def pack(values, bits: int) -> int:
    """Elements (lowest first) as one int of len(values) * bits bits, two's complement each."""
    v = 0
    for i, x in enumerate(values):
        v |= (int(x) & ((1 << bits) - 1)) << (i * bits)
    return v


def unpack(record: int, n: int, bits: int, signed: bool = True) -> list:
    out = []
    for i in range(n):
        x = (record >> (i * bits)) & ((1 << bits) - 1)
        if signed and bits > 1 and x >> (bits - 1):
            x -= 1 << bits
        out.append(x)
    return out
