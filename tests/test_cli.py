"""The CLI's happy paths: compile, run, verify, report and demo do what the contract says.

- `bnnc compile MODEL --target c -o OUT` writes model.c, model.h, bnnc_kernels.h, harness.c and a
  Makefile, deterministically; `--name` sets the API prefix; names from the model never reach the C
  code raw; `make -C OUT` builds it.
- `bnnc run` gives the published results of the real FINN / QONNX TFC models on ref and c.
- `bnnc verify` passes; `bnnc report --json` has the documented totals and per-layer pruning figures;
  `bnnc demo` passes.
"""

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from bnnc.cli import main
from bnnc.testing.random_models import mlp_model, random_inputs, random_model, save

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "models"
FINN_TFC = SHARED / "finn-tfc-w1a1"
QONNX_TFC = SHARED / "qonnx-tfc-1w1a" / "TFC_1W1A.onnx"

C_FILES = {"model.c", "model.h", "bnnc_kernels.h", "harness.c", "Makefile"}
# random_model(20): "odd" naming style (initializers "conv.0/weight", tensors "conv-0 out",
# nodes "conv.0:Conv", output "class id"), an ArgMax head, input (1, 2, 8, 8).
ODD_SEED = 20


@pytest.fixture(scope="module", autouse=True)
def private_build_cache(tmp_path_factory):
    """C builds of `run`/`verify` go to a cache of this module's own, not the user's ~/.cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BNNC_CACHE", str(tmp_path_factory.mktemp("bnnc-cache")))
        mp.delenv("BNNC_DEBUG", raising=False)
        yield


def cli(capsys, *argv):
    """(exit status, stdout, stderr) of `bnnc argv...` run in-process."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def ok(capsys, *argv) -> str:
    rc, out, err = cli(capsys, *argv)
    assert rc == 0, f"bnnc {' '.join(map(str, argv))} exited {rc}:\n{err}"
    assert "Traceback" not in err and "bnnc: error" not in err and "internal error" not in err, err
    return out


def files_of(d: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def odd_model(tmp_path_factory):
    model, _ = random_model(ODD_SEED)
    assert any(i.name.endswith("/weight") for i in model.graph.initializer), "not the odd naming style"
    path = tmp_path_factory.mktemp("odd") / "odd.onnx"
    save(model, path)
    return model, path


def _shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not present")
    return path


# ----------------------------------------------------------------------------------- compile


def test_compile_writes_the_c_project(odd_model, tmp_path, capsys):
    _, path = odd_model
    out = tmp_path / "out"
    stdout = ok(capsys, "compile", path, "--target", "c", "-o", out)
    assert set(files_of(out)) == C_FILES
    assert str(out) in stdout
    h = (out / "model.h").read_text()
    assert "void bnnc_run(" in h and "#define BNNC_INPUT_SIZE 128" in h  # 2 x 8 x 8
    assert "#define BNNC_OUTPUT_SIZE 1" in h  # the ArgMax index
    # nothing else next to the output folder (the temporary build folder is gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_compile_is_deterministic(odd_model, tmp_path, capsys):
    _, path = odd_model
    ok(capsys, "compile", path, "-o", tmp_path / "a")
    first = files_of(tmp_path / "a")
    ok(capsys, "compile", path, "-o", tmp_path / "a")  # again, over the existing output
    ok(capsys, "compile", path, "-o", tmp_path / "b")  # and into a fresh folder
    assert files_of(tmp_path / "a") == first
    assert files_of(tmp_path / "b") == first


def test_dump_ir_json(odd_model, tmp_path, capsys):
    _, path = odd_model
    stdout = ok(capsys, "compile", path, "-o", tmp_path / "out", "--dump-ir", tmp_path / "ir.json")
    assert str(tmp_path / "ir.json") in stdout
    doc = json.loads((tmp_path / "ir.json").read_text())
    assert [op["type"] for op in doc["ops"]][0] == "InputQuantize" and doc["ops"][-1]["type"] == "ArgMax"
    assert doc["output"]["tensor"] == doc["ops"][-1]["outputs"][0]["tensor"]
    for op in doc["ops"]:
        for t in op["outputs"]:
            assert t["type"] == doc["tensors"][t["tensor"]] and t["type"]["type"] in ("Bits", "Ints", "Reals")
    conv = next(op for op in doc["ops"] if op["type"] == "Conv")
    w = conv["fields"]["w"]["array"]  # arrays are summarised, not dumped
    assert w["dtype"] == "int8" and len(w["shape"]) == 4 and re.fullmatch(r"[0-9a-f]{16}", w["sha256"])
    assert conv["fields"]["epilogue"]["type"] in ("Thresholds", "Chain")
    assert (tmp_path / "ir.json").stat().st_size < 100_000


def test_dump_ir_dot(odd_model, tmp_path, capsys):
    from bnnc.pipeline import compile_file

    _, path = odd_model
    ok(capsys, "compile", path, "-o", tmp_path / "out", "--dump-ir", tmp_path / "ir.dot")
    dot = (tmp_path / "ir.dot").read_text()
    assert dot.startswith("digraph bnnc {") and dot.rstrip().endswith("}")
    _, graph = compile_file(path)
    for op in graph.ops():
        assert re.search(rf'^  "{op.name}" \[label="{op.name}\\n{type(op).__name__}', dot, re.M), op.name
        for t in op.inputs:
            if t in graph.tensors:  # every edge is labelled with the tensor's type
                kind = type(graph.tensors[t]).__name__
                assert re.search(rf'-> "{op.name}" \[label="{kind}', dot), (op.name, t)
    assert dot.count(" -> ") == sum(len(op.inputs) for op in graph.ops()) + 1  # + the output


def test_dump_ir_is_deterministic(odd_model, tmp_path, capsys):
    _, path = odd_model
    for suffix in (".json", ".dot"):
        ok(capsys, "compile", path, "-o", tmp_path / "a", "--dump-ir", tmp_path / f"a{suffix}")
        ok(capsys, "compile", path, "-o", tmp_path / "b", "--dump-ir", tmp_path / f"b{suffix}")
        assert (tmp_path / f"a{suffix}").read_bytes() == (tmp_path / f"b{suffix}").read_bytes()


def test_dump_ir_needs_a_known_suffix(odd_model, tmp_path, capsys):
    _, path = odd_model
    rc, _, err = cli(capsys, "compile", path, "-o", tmp_path / "out", "--dump-ir", tmp_path / "ir.txt")
    assert rc == 2 and "--dump-ir" in err and ".json" in err and ".dot" in err
    assert not (tmp_path / "out").exists()


def test_compile_into_an_existing_folder_keeps_other_files(odd_model, tmp_path, capsys):
    _, path = odd_model
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.c").write_text("stale\n")
    (out / "README.txt").write_text("mine\n")
    ok(capsys, "compile", path, "-o", out)
    assert set(files_of(out)) == C_FILES | {"README.txt"}
    assert (out / "README.txt").read_text() == "mine\n"
    assert (out / "model.c").read_text() != "stale\n"


def test_name_sets_the_api_prefix(odd_model, tmp_path, capsys):
    _, path = odd_model
    ok(capsys, "compile", path, "--name", "mynet", "-o", tmp_path / "out")
    h = (tmp_path / "out" / "model.h").read_text()
    assert "void mynet_run(const mynet_input_t *input, mynet_output_t *output);" in h
    for macro in ("MYNET_INPUT_SIZE", "MYNET_OUTPUT_SIZE", "MYNET_ARENA_BYTES", "MYNET_MODEL_H"):
        assert f"#define {macro}" in h
    assert "bnnc_run" not in h and "BNNC_INPUT_SIZE" not in h
    assert "mynet_run(" in (tmp_path / "out" / "model.c").read_text()
    assert "libmynet.a" in (tmp_path / "out" / "Makefile").read_text()


def _strip_c_comments(text: str) -> str:
    return re.sub(r"//[^\n]*", "", re.sub(r"/\*.*?\*/", " ", text, flags=re.S))


def _model_names(model: onnx.ModelProto) -> set:
    g = model.graph
    names = {n.name for n in g.node} | {i.name for i in g.initializer}
    names |= {x for n in g.node for x in list(n.input) + list(n.output)}
    names |= {v.name for v in list(g.input) + list(g.output)}
    return {n for n in names if n}


def _hostile(model: onnx.ModelProto) -> onnx.ModelProto:
    """The odd model with names that would break C comments or strings if copied raw."""
    m = copy.deepcopy(model)
    old, new = m.graph.input[0].name, 'image */ int x; /* "in"\n'
    m.graph.input[0].name = new
    for n in m.graph.node:
        for i, x in enumerate(n.input):
            if x == old:
                n.input[i] = new
    m.graph.node[2].name = "conv */ #error injected\n// \\"
    return m


def test_model_names_never_reach_the_c_code_raw(odd_model, tmp_path, capsys):
    model, path = odd_model
    hostile = tmp_path / "hostile.onnx"
    onnx.save(_hostile(model), str(hostile))
    for src, m in ((path, model), (hostile, _hostile(model))):
        out = tmp_path / ("out_" + Path(src).stem)
        ok(capsys, "compile", src, "-o", out)
        odd_names = {n for n in _model_names(m) if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n)}
        assert any(" " in n for n in odd_names) and any("/" in n for n in odd_names)
        for f in ("model.c", "model.h", "harness.c"):
            text = (out / f).read_text()
            code = _strip_c_comments(text)
            for n in odd_names:
                assert n not in code, f"model name {n!r} appears raw in the code of {f}"
                if any(c in n for c in "/*\n\\\""):
                    assert n not in text, f"model name {n!r} appears raw in {f}"
            # comments hold only safe text: no nested comment openers or line continuations
            for c in re.findall(r"/\*(.*?)\*/", text, flags=re.S):
                assert "/*" not in c and "\\\n" not in c


@pytest.fixture
def make():
    exe = shutil.which("make")
    if exe is None or shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("make or a C compiler is missing")
    return exe


def test_generated_makefile_builds_and_the_harness_matches_run(make, odd_model, tmp_path, capsys):
    model, path = odd_model
    out = tmp_path / "out"
    ok(capsys, "compile", path, "--name", "mynet", "-o", out)
    r = subprocess.run([make, "-C", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (out / "libmynet.a").is_file() and (out / "harness").is_file()
    # the harness built by the Makefile agrees with `bnnc run --target ref`
    x = random_inputs(model, 16, seed=3)
    np.save(tmp_path / "x.npy", x)
    ok(capsys, "run", path, "--input", tmp_path / "x.npy", "--target", "ref", "--output", tmp_path / "y.npy")
    x.astype(np.float32).tofile(tmp_path / "in.bin")  # this model takes its float input as is
    r = subprocess.run([str(out / "harness"), str(tmp_path / "in.bin"), str(tmp_path / "out.bin")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    y_ref = np.load(tmp_path / "y.npy")
    y_c = np.fromfile(tmp_path / "out.bin", dtype=np.int32)
    assert np.array_equal(y_c, y_ref.reshape(-1).astype(np.int32))


def test_hostile_names_still_build_with_werror(make, odd_model, tmp_path, capsys):
    model, _ = odd_model
    src = tmp_path / "hostile.onnx"
    onnx.save(_hostile(model), str(src))
    out = tmp_path / "out"
    ok(capsys, "compile", src, "-o", out)
    flags = "CFLAGS=-std=c99 -O1 -Wall -Wextra -Werror -ffp-contract=off"
    r = subprocess.run([make, "-C", str(out), flags], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


# ----------------------------------------------------------------------------------- run


@pytest.mark.parametrize("target", ["ref", "c"])
def test_run_finn_tfc(target, tmp_path, capsys):
    model = _shared(FINN_TFC / "model.onnx")
    y = tmp_path / "Y.npy"
    stdout = ok(capsys, "run", model, "--input", FINN_TFC / "input.npy", "--target", target, "--output", y)
    assert "Y.npy" in stdout
    got = np.load(y)
    expected = np.load(FINN_TFC / "expected_output.npy")
    assert got.shape[0] == 4
    assert np.array_equal(got.reshape(-1), expected.reshape(-1))
    assert got.reshape(-1).tolist() == [7, 2, 1, 0]


@pytest.mark.parametrize("target", ["ref", "c"])
def test_run_qonnx_tfc(target, tmp_path, capsys):
    model = _shared(QONNX_TFC)
    x = _shared(FINN_TFC / "input.npy")
    y = tmp_path / "Y.npy"
    ok(capsys, "run", model, "--input", x, "--target", target, "--output", y)
    logits = np.load(y)
    assert logits.shape == (4, 10) and logits.dtype == np.float32
    assert logits.argmax(axis=1).tolist() == [7, 2, 1, 0]


def test_run_ref_and_c_agree_bit_for_bit(odd_model, tmp_path, capsys):
    model, path = odd_model
    np.save(tmp_path / "x.npy", random_inputs(model, 32, seed=5))
    for t in ("ref", "c"):
        ok(capsys, "run", path, "--input", tmp_path / "x.npy", "--target", t, "--output", tmp_path / f"{t}.npy")
    a, b = np.load(tmp_path / "ref.npy"), np.load(tmp_path / "c.npy")
    assert a.shape[0] == 32 and a.dtype == b.dtype and np.array_equal(a, b)


def test_run_prints_without_output(tmp_path, capsys):
    model = _shared(FINN_TFC / "model.onnx")
    stdout = ok(capsys, "run", model, "--input", FINN_TFC / "input.npy", "--target", "ref")
    assert re.findall(r"\d+", stdout) == ["7", "2", "1", "0"]


# ----------------------------------------------------------------------------------- verify


def test_verify_finn_tfc(capsys):
    model = _shared(FINN_TFC / "model.onnx")
    stdout = ok(capsys, "verify", model, "--target", "c", "--samples", "50")
    assert stdout.strip().splitlines()[-1] == "PASS"
    assert re.search(r"c == reference \(bit-exact\)\s+50/50", stdout)


def test_verify_random_model(odd_model, capsys):
    _, path = odd_model
    stdout = ok(capsys, "verify", path, "--target", "c", "--samples", "50")
    assert stdout.strip().splitlines()[-1] == "PASS"
    assert re.search(r"reference top-1 == original\s+50/50", stdout)


def test_verify_with_given_inputs(odd_model, tmp_path, capsys):
    model, path = odd_model
    np.save(tmp_path / "x.npy", random_inputs(model, 10, seed=9))
    stdout = ok(capsys, "verify", path, "--target", "ref", "--input", tmp_path / "x.npy")
    assert re.search(r"samples\s+10\n", stdout) and stdout.strip().endswith("PASS")


# ----------------------------------------------------------------------------------- report


def _constant_channels(w: np.ndarray, gamma, beta, mean, var, eps, x_lo, x_hi) -> np.ndarray:
    """Channels whose Sign(BN(w @ x)) is the same for every x in the box [x_lo, x_hi] (float64).

    BN(v) is affine in v, so it is enough to look at the smallest and largest reachable v.
    """
    v_lo = np.where(w > 0, w * x_lo, w * x_hi).sum(axis=1)
    v_hi = np.where(w > 0, w * x_hi, w * x_lo).sum(axis=1)
    bn = lambda v: gamma * (v - mean) / np.sqrt(var + eps) + beta
    return np.sign(bn(v_lo)) == np.sign(bn(v_hi))


def test_report_json_of_a_pruned_mlp(tmp_path, capsys):
    model = mlp_model(prune=0.3)  # 784-256-256-10, round(0.3 * 256) = 77 all-zero rows per hidden layer
    path = tmp_path / "mlp.onnx"
    save(model, path)
    stdout = ok(capsys, "report", path, "--json", tmp_path / "r.json")
    rep = json.loads((tmp_path / "r.json").read_text())
    assert "channels removed" in stdout

    t = rep["totals"]
    for key in ("weight_bytes", "float32_weight_bytes", "compression", "arena_bytes", "binary_macs"):
        assert key in t and t[key] > 0, key
    assert t["float32_weight_bytes"] == 4 * (784 * 256 + 256 * 256 + 256 * 10)
    assert t["compression"] == round(t["float32_weight_bytes"] / t["weight_bytes"], 2) > 20

    # The same figures, worked out independently from the ONNX file.
    inits = {i.name: numpy_helper.to_array(i).astype(np.float64) for i in model.graph.initializer}
    gemms = [n for n in model.graph.node if n.op_type == "Gemm"]
    scale = inits["quant.scale"].item()
    x_box = (0.0, 255 * scale)  # uint8 grid, zero point 0
    keep_in = np.ones(784, dtype=bool)
    rows = {}
    for r in rep["layers"]:
        for name in r["onnx_nodes"]:
            rows[name] = r
    binary_macs = 0
    for k, g in enumerate(gemms):
        w = inits[g.input[1]]  # (out, in): transB = 1
        row = rows[g.name]
        assert row["weight_bits_float32"] == 32 * w.size
        assert row["input_channels_removed"] == int((~keep_in).sum())
        if k < len(gemms) - 1:  # hidden: Gemm -> BatchNormalization -> Sign
            bn = next(n for n in model.graph.node if n.input and n.input[0] == g.output[0])
            gamma, beta, mean, var = (inits[x] for x in bn.input[1:])
            eps = next(a.f for a in bn.attribute if a.name == "epsilon")
            constant = _constant_channels(w, gamma, beta, mean, var, eps, *x_box)
            pruned = ~np.any(w != 0, axis=1)
            assert pruned.sum() == 77
            assert np.all(constant[pruned])
            # every constant channel is stripped: the pruned rows and the (gamma = 0 or out of
            # reach) channels that BatchNormalization makes constant
            assert row["channels_removed"] > 0
            assert row["channels_removed"] >= pruned.sum()
            assert row["channels_removed"] == int(constant.sum())
            keep_out = ~constant
        else:
            assert row["channels_removed"] == 0  # the logits are all kept
            keep_out = np.ones(w.shape[0], dtype=bool)
        kept = int(np.count_nonzero(w[keep_out][:, keep_in]))
        assert row["weight_bits"] == kept
        if k > 0:
            binary_macs += kept  # +-1 inputs; one output position per dense layer
        else:
            assert row["int_macs"] == kept and row["binary_macs"] == 0
        keep_in, x_box = keep_out, (-1.0, 1.0)
    assert t["binary_macs"] == binary_macs
    assert t["channels_removed"] == sum(r["channels_removed"] for r in rep["layers"])


# ----------------------------------------------------------------------------------- demo and the command


def test_demo(tmp_path, capsys):
    d = tmp_path / "demo"
    stdout = ok(capsys, "demo", "--dir", d)
    assert stdout.strip().splitlines()[-1] == "PASS"
    assert (d / "tfc.onnx").is_file() and (d / "x.npy").is_file()
    assert C_FILES <= set(files_of(d / "c"))


def test_python_m_bnnc_cli_runs(tmp_path):
    r = subprocess.run([sys.executable, "-m", "bnnc.cli", "--version"], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("bnnc ")
    r = subprocess.run([sys.executable, "-m", "bnnc.cli", "--help"], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 0
    for cmd in ("demo", "compile", "run", "verify", "report"):
        assert cmd in r.stdout


# ----------------------------------------------------------------------------------- one interface


def test_firmware_target_has_one_name(odd_model, tmp_path, capsys):
    """`compile --target cortex-m4` is the firmware project; `--target c --mcu cortex-m4` its alias."""
    _, path = odd_model
    ok(capsys, "compile", path, "--target", "cortex-m4", "-o", tmp_path / "a")
    ok(capsys, "compile", path, "--target", "c", "--mcu", "cortex-m4", "-o", tmp_path / "b")
    assert files_of(tmp_path / "a") == files_of(tmp_path / "b")
    assert "bnnc_cortex_m4.ld" in files_of(tmp_path / "a")


def test_run_stats_for_c_and_ref(odd_model, tmp_path, capsys):
    model, path = odd_model
    np.save(tmp_path / "x.npy", random_inputs(model, 5, seed=1))
    for target in ("c", "ref"):
        ok(capsys, "run", path, "--target", target, "--input", tmp_path / "x.npy", "--stats", tmp_path / "s.json")
        st = json.loads((tmp_path / "s.json").read_text())
        assert st["target"] == target and st["samples"] == 5 and st["latency_us_mean"] > 0, st


def test_verify_expected_outputs(odd_model, tmp_path, capsys):
    model, path = odd_model
    np.save(tmp_path / "x.npy", random_inputs(model, 6, seed=2))
    ok(capsys, "run", path, "--target", "ref", "--input", tmp_path / "x.npy", "--output", tmp_path / "y.npy")
    out = ok(capsys, "verify", path, "--input", tmp_path / "x.npy", "--expected", tmp_path / "y.npy")
    assert "against the expected outputs" in out and out.strip().splitlines()[-1] == "PASS"
    y = np.load(tmp_path / "y.npy")  # ArgMax indices: another class on every sample
    np.save(tmp_path / "wrong.npy", (y + 1) % 10)
    rc, out, _ = cli(capsys, "verify", path, "--input", tmp_path / "x.npy", "--expected", tmp_path / "wrong.npy")
    assert rc == 1 and re.search(r"reference top-1 == expected\s+0/6", out) and out.strip().splitlines()[-1] == "FAIL"


def test_verify_trace(odd_model, capsys):
    _, path = odd_model
    out = ok(capsys, "verify", path, "--samples", 10, "--trace")
    assert "trace: reference vs original on 10 sample(s), layer by layer" in out
    assert "trace: the reference follows the original through every compared layer" in out
    assert re.search(r"L02_conv\s+sign-0 out\s+same", out), out  # (the odd naming style: spaces in names)


def test_progress_lines_when_stderr_is_not_a_terminal(odd_model, tmp_path):
    """`bnnc -v` prints one plain line per step (no carriage returns) into a pipe; -q prints none."""
    _, path = odd_model
    env = {k: v for k, v in os.environ.items() if k != "BNNC_DEBUG"}
    cmd = [sys.executable, "-m", "bnnc.cli"]
    r = subprocess.run([*cmd, "-v", "verify", str(path), "--target", "c", "--samples", "5"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert "\r" not in r.stderr and all(line.startswith("bnnc: ") for line in lines), r.stderr
    for step in ("pass fold_batchnorm_into_thresholds", "running the reference on 5 sample(s)",
                 "running the original model in onnxruntime on 5 sample(s)", "running 5 sample(s) on target c"):
        assert any(line.startswith(f"bnnc: {step}: done in ") for line in lines), (step, r.stderr)
    r = subprocess.run([*cmd, "verify", "-q", str(path), "--target", "c", "--samples", "5"], capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0 and r.stderr == "" and r.stdout.strip().splitlines()[-1] == "PASS"
