"""The CLI's contract for bad input: exit status 2 and exactly one line on stderr.

Every problem with the user's input (model file, options, data) must end as a single line
`bnnc: error: <message naming the problem>` and exit status 2: no traceback, no "internal error"
(status 3), and for `bnnc compile` no output left behind (an existing output folder stays exactly
as it was). Most cases run `bnnc.cli.main` in-process; two run the real command in a subprocess.

Bad models are built by breaking valid ones from `bnnc.testing.random_models`.
"""

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnnc.cli import main
from bnnc.testing.random_models import random_inputs, random_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "models"
FINN_TFC = SHARED / "finn-tfc-w1a1"

# random_model(12): a small CNN (input (1, 2, 16, 16)) in PyTorch naming:
# QuantizeLinear -> DequantizeLinear -> Conv -> BN -> MaxPool -> Sign -> Conv -> BN -> Sign
# -> Flatten -> Gemm -> Mul -> Add -> ArgMax
BASE_SEED = 12


# ----------------------------------------------------------------------------------- helpers


def cli(capsys, *argv):
    """(exit status, stdout, stderr) of `bnnc argv...` run in-process (without progress lines:
    conftest.py sets BNNC_PROGRESS=quiet)."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:  # argparse errors exit directly
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_error(rc, err, *words):
    """Exit 2, exactly one stderr line starting with 'bnnc: error:', naming every one of `words`."""
    assert "Traceback" not in err, err
    assert "internal error" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith("bnnc: error:"), line
    assert rc == 2, f"exit status {rc}: {line}"
    for w in words:
        assert str(w).lower() in line.lower(), f"{w!r} not in: {line}"
    return line


def snapshot(root: Path) -> dict:
    """{relative path: bytes (files) or None (folders)} of everything under `root`."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = p.read_bytes() if p.is_file() else None
    return out


def save(model: onnx.ModelProto, path: Path) -> Path:
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def node(model, op_type, k=0):
    return [n for n in model.graph.node if n.op_type == op_type][k]


def initializer(model, name):
    return next(i for i in model.graph.initializer if i.name == name)


def rewire(model, old: str, new: str):
    for n in model.graph.node:
        for i, x in enumerate(n.input):
            if x == old:
                n.input[i] = new


@pytest.fixture(scope="module")
def base():
    model, _ = random_model(BASE_SEED)
    return model


@pytest.fixture
def base_file(base, tmp_path):
    return save(copy.deepcopy(base), tmp_path / "base.onnx")


# ----------------------------------------------------------------------------------- bad models


def _missing(base, d):
    return d / "does_not_exist.onnx", ["cannot read", "does_not_exist.onnx", "no such file"]


def _garbage(base, d):
    p = d / "garbage.onnx"
    p.write_bytes(b"\x00\xff\xfe this is not a protobuf \x12\x34\x9a" * 20)
    return p, ["garbage.onnx", "not an onnx model"]


def _empty(base, d):
    p = d / "empty.onnx"
    p.write_bytes(b"")
    return p, ["empty.onnx", "empty"]


def _elu(base, d):
    m = copy.deepcopy(base)
    n = node(m, "Sign")
    n.op_type, n.name = "Elu", "mid/elu"
    return save(m, d / "elu.onnx"), ["mid/elu", "Elu", "not supported", "supported ops",
                                     "Conv", "BatchNormalization", "Sign"]


def _lstm(base, d):
    m = copy.deepcopy(base)
    n = node(m, "Sign", 1)
    n.op_type, n.name = "LSTM", "rnn.0"
    return save(m, d / "lstm.onnx"), ["rnn.0", "LSTM", "not supported", "supported ops"]


def _grouped_conv(base, d):
    m = copy.deepcopy(base)
    conv = node(m, "Conv", 1)
    for a in conv.attribute:
        if a.name == "group":
            a.i = 2
    return save(m, d / "group.onnx"), [conv.name, "Conv", "group=2", "weights of shape"]


def _unknown_attribute(base, d):
    m = copy.deepcopy(base)
    conv = node(m, "Conv")
    conv.attribute.append(helper.make_attribute("frobnicate", 3))
    return save(m, d / "attribute.onnx"), [conv.name, "Conv", "attribute", "frobnicate", "strides"]


def _custom_domain(base, d):
    m = copy.deepcopy(base)
    n = node(m, "Sign")
    n.op_type, n.domain, n.name = "Frobnicate", "com.example.magic", "magic"
    m.opset_import.append(helper.make_opsetid("com.example.magic", 1))
    return save(m, d / "domain.onnx"), ["magic", "Frobnicate", "com.example.magic", "domain",
                                        "supported ops"]


def _nonfinite_conv(base, d):
    m = copy.deepcopy(base)
    conv = node(m, "Conv")
    w = initializer(m, conv.input[1])
    arr = np.random.default_rng(0).normal(size=numpy_helper.to_array(w).shape).astype(np.float32)
    arr.reshape(-1)[3] = np.nan
    w.CopyFrom(numpy_helper.from_array(arr, w.name))
    return save(m, d / "nan_conv.onnx"), [conv.name, "Conv", "finite"]


def _nonfinite_gemm(base, d):
    m = copy.deepcopy(base)
    gemm = node(m, "Gemm")
    w = initializer(m, gemm.input[1])
    arr = np.random.default_rng(1).uniform(-1, 1, size=numpy_helper.to_array(w).shape).astype(np.float32)
    arr.reshape(-1)[0] = np.inf
    w.CopyFrom(numpy_helper.from_array(arr, w.name))
    return save(m, d / "inf_gemm.onnx"), [gemm.name, "Gemm", "finite"]


def _two_inputs(base, d):
    m = copy.deepcopy(base)
    m.graph.input.append(helper.make_tensor_value_info("second_image", TensorProto.FLOAT, [1, 3]))
    return save(m, d / "two_inputs.onnx"), ["exactly one input", "2", "second_image"]


def _two_outputs(base, d):
    m = copy.deepcopy(base)
    m.graph.output.append(helper.make_tensor_value_info(node(m, "Conv").output[0], TensorProto.FLOAT, None))
    return save(m, d / "two_outputs.onnx"), ["exactly one output", "2"]


def _dynamic_dim(base, d):
    m = copy.deepcopy(base)
    dim = m.graph.input[0].type.tensor_type.shape.dim[2]
    dim.Clear()
    dim.dim_param = "height"
    return save(m, d / "dynamic.onnx"), ["input", "dynamic", "height", "static"]


def _batch_of_4(base, d):
    m = copy.deepcopy(base)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    return save(m, d / "batch4.onnx"), ["input", "batch of 1", "4"]


def _residual_add(base, d):
    m = copy.deepcopy(base)
    sign0 = node(m, "Sign")
    nodes = list(m.graph.node)
    consumer = next(n for n in nodes if sign0.output[0] in n.input)
    add = helper.make_node("Add", [sign0.output[0], sign0.output[0]], ["shortcut_sum"], name="res.add")
    rewire(m, sign0.output[0], "shortcut_sum")
    m.graph.node.insert(nodes.index(consumer), add)
    return save(m, d / "residual.onnx"), ["res.add", "Add", "both operands are activations", "residual"]


def _no_input_quantizer(base, d):
    m = copy.deepcopy(base)
    q, dq = node(m, "QuantizeLinear"), node(m, "DequantizeLinear")
    rewire(m, dq.output[0], m.graph.input[0].name)
    m.graph.node.remove(q)
    m.graph.node.remove(dq)
    return save(m, d / "float_input.onnx"), [node(m, "Conv").name, "float model input", "Quant",
                                             "--input-scale"]


def _multithreshold_3_steps(base, d):
    """Float input -> 3-step MultiThreshold -> MatMul(+-1) -> bipolar MultiThreshold -> MatMul.
    (Multi-bit activations inside the network are supported; on the float model
    input a multi-step MultiThreshold is not.)"""
    finn = "finn.custom_op.general"
    rng = np.random.default_rng(0)
    w1 = rng.choice([-1.0, 1.0], (8, 6)).astype(np.float32)
    w2 = rng.choice([-1.0, 1.0], (6, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in (
        (np.array([[-2.0, 0.0, 2.0]] * 8, np.float32), "t_in"), (w1, "w1"),
        (np.zeros((1, 1), np.float32), "t_hidden"), (w2, "w2"))]
    nodes = [
        helper.make_node("MultiThreshold", ["x", "t_in"], ["xq"], domain=finn, name="act.2bit",
                         out_scale=1.0, out_bias=-1.5),
        helper.make_node("MatMul", ["xq", "w1"], ["h"], name="fc.0"),
        helper.make_node("MultiThreshold", ["h", "t_hidden"], ["hb"], domain=finn, name="mt.hidden",
                         out_scale=2.0, out_bias=-1.0),
        helper.make_node("MatMul", ["hb", "w2"], ["y"], name="fc.1"),
    ]
    g = helper.make_graph(nodes, "mt3", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], initializer=inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(finn, 1)])
    return save(m, d / "mt3.onnx"), ["act.2bit", "MultiThreshold", "3-step", "multi-bit", "not supported"]


def _opset_too_new(base, d):
    m = copy.deepcopy(base)
    m.opset_import[0].version = 30
    return save(m, d / "opset30.onnx"), ["opset 30"]


def _no_nodes(base, d):
    m = copy.deepcopy(base)
    del m.graph.node[:]
    return save(m, d / "no_nodes.onnx"), ["no_nodes.onnx", "no onnx graph nodes"]


def _dangling_tensor(base, d):
    m = copy.deepcopy(base)
    conv = node(m, "Conv")
    conv.input[0] = "ghost_tensor"
    return save(m, d / "dangling.onnx"), [conv.name, "nothing produces"]


BAD_MODELS = {
    "missing_file": _missing,
    "garbage_bytes": _garbage,
    "empty_file": _empty,
    "unsupported_op_elu": _elu,
    "unsupported_op_lstm": _lstm,
    "grouped_conv": _grouped_conv,
    "unknown_attribute": _unknown_attribute,
    "unknown_custom_domain": _custom_domain,
    "nonfinite_conv_weights": _nonfinite_conv,
    "nonfinite_gemm_weights": _nonfinite_gemm,
    "two_inputs": _two_inputs,
    "two_outputs": _two_outputs,
    "dynamic_nonbatch_dim": _dynamic_dim,
    "batch_of_4": _batch_of_4,
    "residual_add_of_activations": _residual_add,
    "float_input_without_quantizer": _no_input_quantizer,
    "multithreshold_3_steps": _multithreshold_3_steps,
    "opset_too_new": _opset_too_new,
    "no_nodes": _no_nodes,
    "dangling_tensor": _dangling_tensor,
}


@pytest.mark.parametrize("kind", list(BAD_MODELS))
def test_compile_bad_model(kind, base, tmp_path, capsys):
    models = tmp_path / "models"
    models.mkdir()
    path, words = BAD_MODELS[kind](base, models)
    work = tmp_path / "work"
    work.mkdir()
    before = snapshot(work)
    out = work / "new" / "deeper" / "out"
    rc, stdout, err = cli(capsys, "compile", path, "--target", "c", "-o", out)
    assert_error(rc, err, *words)
    assert not out.exists()
    assert snapshot(work) == before, "compile left files behind"  # no parents, no .bnnc-* temp dirs
    assert stdout == ""


def test_dangling_tensor_is_named(base, tmp_path, capsys):
    path, words = _dangling_tensor(base, tmp_path)
    rc, _, err = cli(capsys, "compile", path, "-o", tmp_path / "out")
    assert_error(rc, err, *words, "ghost_tensor")


@pytest.mark.parametrize("kind", ["garbage_bytes", "unsupported_op_elu", "nonfinite_conv_weights",
                                  "residual_add_of_activations"])
def test_compile_bad_model_leaves_existing_output_dir_unchanged(kind, base, tmp_path, capsys):
    path, words = BAD_MODELS[kind](base, tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.c").write_text("/* an earlier, good build */\n")
    (out / "model.h").write_text("#define OLD 1\n")
    (out / "notes.txt").write_text("user file\n")
    before = snapshot(tmp_path)
    rc, _, err = cli(capsys, "compile", path, "-o", out)
    assert_error(rc, err, *words)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["unsupported_op_elu", "float_input_without_quantizer", "two_inputs"])
@pytest.mark.parametrize("cmd", ["run", "verify", "report"])
def test_other_commands_report_bad_models_the_same_way(cmd, kind, base, tmp_path, capsys):
    path, words = BAD_MODELS[kind](base, tmp_path)
    x = tmp_path / "x.npy"
    np.save(x, random_inputs(base, 2, seed=0))
    extra = {"run": ["--input", x, "--output", tmp_path / "y.npy", "--target", "ref"],
             "verify": ["--input", x, "--target", "ref"], "report": ["--json", tmp_path / "r.json"]}[cmd]
    rc, _, err = cli(capsys, cmd, path, *extra)
    assert_error(rc, err, *words)
    assert not (tmp_path / "y.npy").exists() and not (tmp_path / "r.json").exists()


# ----------------------------------------------------------------------------------- bad data for run / verify


@pytest.fixture
def finn_tfc():
    if not (FINN_TFC / "model.onnx").is_file():
        pytest.skip("../shared/models/finn-tfc-w1a1 is not present")
    return FINN_TFC


def _run_bad_input(capsys, tmp_path, model, x_path, cmd="run"):
    y = tmp_path / "y.npy"
    argv = [cmd, model, "--input", x_path, "--target", "ref"] + (["--output", y] if cmd == "run" else [])
    rc, _, err = cli(capsys, *argv)
    assert not y.exists()
    return rc, err


@pytest.mark.parametrize("cmd", ["run", "verify"])
def test_input_with_wrong_number_of_elements(cmd, base_file, tmp_path, capsys):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((3, 500), np.float32))  # the model takes 2 x 16 x 16 = 512 per sample
    rc, err = _run_bad_input(capsys, tmp_path, base_file, x, cmd)
    assert_error(rc, err, "(3, 500)", "512")


def test_input_of_one_sample_too_few_elements(base_file, tmp_path, capsys):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 2, 16, 15), np.float32))
    rc, err = _run_bad_input(capsys, tmp_path, base_file, x)
    assert_error(rc, err, "(2, 2, 16, 15)", "512", "(1, 2, 16, 16)")


@pytest.mark.parametrize("cmd", ["run", "verify"])
def test_input_off_the_integer_grid(cmd, finn_tfc, tmp_path, capsys):
    x = np.load(finn_tfc / "input.npy") + np.float32(0.5)  # the model takes UINT8 integers
    np.save(tmp_path / "x.npy", x)
    rc, err = _run_bad_input(capsys, tmp_path, finn_tfc / "model.onnx", tmp_path / "x.npy", cmd)
    assert_error(rc, err, "0.5", "integer input grid", "[0, 255]", "UINT8")


def test_input_outside_the_integer_range(finn_tfc, tmp_path, capsys):
    x = np.load(finn_tfc / "input.npy") * np.float32(2)
    np.save(tmp_path / "x.npy", x)
    rc, err = _run_bad_input(capsys, tmp_path, finn_tfc / "model.onnx", tmp_path / "x.npy")
    assert_error(rc, err, "integer input grid", "[0, 255]")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_input_with_nan_or_inf(bad, base, base_file, tmp_path, capsys):
    x = random_inputs(base, 3, seed=0)
    x[1, 0, 4, 4] = bad
    np.save(tmp_path / "x.npy", x)
    rc, err = _run_bad_input(capsys, tmp_path, base_file, tmp_path / "x.npy")
    assert_error(rc, err, "nan or infinite")


def test_input_path_is_not_an_npy_file(base_file, tmp_path, capsys):
    p = tmp_path / "x.npy"
    p.write_text("0.1, 0.2, 0.3\nthis is a CSV, not .npy\n")
    rc, err = _run_bad_input(capsys, tmp_path, base_file, p)
    assert_error(rc, err, str(p), "not a readable .npy")


def test_input_path_is_a_directory(base_file, tmp_path, capsys):
    rc, err = _run_bad_input(capsys, tmp_path, base_file, tmp_path)
    assert_error(rc, err, str(tmp_path), "is a folder")


def test_input_file_missing(base_file, tmp_path, capsys):
    rc, err = _run_bad_input(capsys, tmp_path, base_file, tmp_path / "nope.npy")
    assert_error(rc, err, "nope.npy", "does not exist")


@pytest.mark.parametrize("array, words", [
    (np.array([{"a": 1}], dtype=object), ["not a readable .npy"]),
    (np.array(["a", "b"]), ["dtype", "expected numbers"]),
    (np.zeros((1, 512), np.complex64), ["complex64", "expected numbers"]),
    (np.float32(3.0), ["shape ()"]),
    (np.zeros((0, 512), np.float32), ["(0, 512)"]),
], ids=["object", "strings", "complex", "scalar", "no_samples"])
def test_input_array_of_the_wrong_kind(array, words, base_file, tmp_path, capsys):
    p = tmp_path / "x.npy"
    np.save(p, array, allow_pickle=True)
    rc, err = _run_bad_input(capsys, tmp_path, base_file, p)
    assert_error(rc, err, *words)


# ----------------------------------------------------------------------------------- bad options


@pytest.mark.parametrize("cmd", ["compile", "run", "verify"])
def test_unknown_target(cmd, base_file, tmp_path, capsys):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 512), np.float32))
    extra = {"compile": ["-o", tmp_path / "out"], "run": ["--input", x], "verify": ["--input", x]}[cmd]
    rc, _, err = cli(capsys, cmd, base_file, "--target", "vhdl", *extra)
    assert_error(rc, err, "unknown target", "vhdl", "c", "verilog")
    assert not (tmp_path / "out").exists()


def test_mcu_options_are_checked(base_file, tmp_path, capsys):
    rc, _, err = cli(capsys, "compile", base_file, "--mcu", "cortex-m9", "-o", tmp_path / "out")
    assert_error(rc, err, "--mcu", "cortex-m9", "cortex-m4")
    rc, _, err = cli(capsys, "compile", base_file, "--target", "cortex-m4", "--flash", "lots", "-o", tmp_path / "out")
    assert_error(rc, err, "--flash", "lots")
    assert not (tmp_path / "out").exists()


def test_compile_for_the_reference_target(base_file, tmp_path, capsys):
    rc, _, err = cli(capsys, "compile", base_file, "--target", "ref", "-o", tmp_path / "out")
    assert_error(rc, err, "unknown target", "ref", "c, cortex-m0, cortex-m4, cortex-m7, rv32imc, rv32imc_zbb, verilog, hls")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["abc", "0-255", "1:2:3", "0.5:2", ":", "lo:hi"])
def test_bad_input_range_text(text, base_file, tmp_path, capsys):
    rc, _, err = cli(capsys, "compile", base_file, "--input-scale", "0.1", f"--input-range={text}",
                     "-o", tmp_path / "out")
    assert_error(rc, err, "--input-range", text, "LO:HI")
    assert not (tmp_path / "out").exists()


def test_empty_input_range(base_file, tmp_path, capsys):
    rc, _, err = cli(capsys, "compile", base_file, "--input-scale", "0.1", "--input-range=5:1",
                     "-o", tmp_path / "out")
    assert_error(rc, err, "--input-range", "5:1", "empty")
    assert not (tmp_path / "out").exists()


def test_blank_input_range_text(base_file, tmp_path, capsys):
    rc, _, err = cli(capsys, "compile", base_file, "--input-scale", "0.1", "--input-range=",
                     "-o", tmp_path / "out")
    assert_error(rc, err, "--input-range", "LO:HI")
    assert not (tmp_path / "out").exists()


def test_input_range_without_scale_on_float_input(base, tmp_path, capsys):
    path, _ = _no_input_quantizer(base, tmp_path)
    rc, _, err = cli(capsys, "compile", path, "--input-range", "0:255", "-o", tmp_path / "out")
    assert_error(rc, err, "--input-range", "--input-scale")


@pytest.mark.parametrize("scale", ["-1", "0"])
def test_non_positive_input_scale(scale, base, tmp_path, capsys):
    path, _ = _no_input_quantizer(base, tmp_path)
    rc, _, err = cli(capsys, "compile", path, f"--input-scale={scale}", "-o", tmp_path / "out")
    assert_error(rc, err, "--input-scale", "positive")


def test_float_input_compiles_once_the_scale_is_declared(base, tmp_path, capsys):
    """The fix that the float-input error message suggests works."""
    path, _ = _no_input_quantizer(base, tmp_path)
    rc, out, err = cli(capsys, "compile", path, "--input-scale", "0.01", "-o", tmp_path / "out")
    assert rc == 0, err
    assert (tmp_path / "out" / "model.c").is_file()


def test_name_starting_with_a_digit_is_sanitized(base_file, tmp_path, capsys):
    rc, _, err = cli(capsys, "compile", base_file, "--name", "9lives", "-o", tmp_path / "out")
    assert rc == 0, err
    h = (tmp_path / "out" / "model.h").read_text()
    assert "void m_9lives_run(" in h and "#define M_9LIVES_INPUT_SIZE" in h
    assert "9lives_run" not in h.replace("m_9lives_run", "")


def test_name_too_long_for_a_c_identifier(base_file, tmp_path, capsys):
    rc, _, err = cli(capsys, "compile", base_file, "--name", "x" * 80, "-o", tmp_path / "out")
    assert_error(rc, err, "--name", "C identifier")
    assert not (tmp_path / "out").exists()


def test_empty_name_is_refused(base_file, tmp_path, capsys):
    rc, _, err = cli(capsys, "compile", base_file, "--name=", "-o", tmp_path / "out")
    assert_error(rc, err, "--name")
    assert not (tmp_path / "out").exists()


def test_name_of_only_punctuation_is_refused(base_file, tmp_path, capsys):
    rc, _, err = cli(capsys, "compile", base_file, "--name=--", "-o", tmp_path / "out")
    assert_error(rc, err, "--name")
    assert not (tmp_path / "out").exists()


def test_output_path_is_an_existing_file(base_file, tmp_path, capsys):
    f = tmp_path / "out"
    f.write_text("not a folder\n")
    rc, _, err = cli(capsys, "compile", base_file, "-o", f)
    assert_error(rc, err, str(f), "not a directory")
    assert f.read_text() == "not a folder\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.onnx", "out"]  # no .bnnc-* temp dir


def test_output_path_below_a_file(base_file, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x\n")
    rc, _, err = cli(capsys, "compile", base_file, "-o", f / "sub")
    assert_error(rc, err, "afile")


def test_run_output_into_missing_folder(base, base_file, tmp_path, capsys):
    np.save(tmp_path / "x.npy", random_inputs(base, 2, seed=0))
    y = tmp_path / "no_such_dir" / "y.npy"
    rc, _, err = cli(capsys, "run", base_file, "--input", tmp_path / "x.npy", "--target", "ref", "--output", y)
    assert_error(rc, err, "no_such_dir")


def test_report_json_into_missing_folder(base_file, tmp_path, capsys):
    rc, _, err = cli(capsys, "report", base_file, "--json", tmp_path / "no_such_dir" / "r.json")
    assert_error(rc, err, "no_such_dir")


@pytest.mark.parametrize("samples", ["0", "-3"])
def test_verify_needs_at_least_one_sample(samples, base_file, capsys):
    rc, _, err = cli(capsys, "verify", base_file, "--samples", samples)
    assert_error(rc, err, "--samples", "at least 1")


@pytest.mark.parametrize("argv, words", [
    ([], ["required", "cmd"]),
    (["frobnicate"], ["invalid choice", "frobnicate"]),
    (["compile", "MODEL"], ["required", "-o"]),
    (["run", "MODEL"], ["required", "--input"]),
    (["compile", "MODEL", "-o", "OUT", "--input-scale", "abc"], ["--input-scale", "abc"]),
    (["verify", "MODEL", "--samples", "many"], ["--samples", "many"]),
    (["compile", "MODEL", "-o", "OUT", "--frobnicate"], ["unrecognized", "--frobnicate"]),
], ids=["no_command", "unknown_command", "compile_without_output", "run_without_input",
        "input_scale_not_a_number", "samples_not_a_number", "unknown_option"])
def test_bad_command_lines(argv, words, base_file, tmp_path, capsys):
    argv = [str(base_file) if a == "MODEL" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    rc, _, err = cli(capsys, *argv)
    assert_error(rc, err, *words)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------- the real command


def _bnnc_subprocess(*argv, cwd):
    env = {k: v for k, v in os.environ.items() if k != "BNNC_DEBUG"}
    return subprocess.run([sys.executable, "-m", "bnnc.cli", *map(str, argv)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_subprocess_garbage_model_exits_2(base, tmp_path):
    path, words = _garbage(base, tmp_path)
    r = _bnnc_subprocess("compile", path, "-o", tmp_path / "out", cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert_error(r.returncode, r.stderr, *words)
    assert r.stdout == ""
    assert not (tmp_path / "out").exists()


def test_subprocess_nonfinite_weights_and_usage_error_exit_2(base, tmp_path):
    path, words = _nonfinite_conv(base, tmp_path)
    r = _bnnc_subprocess("compile", path, "-o", tmp_path / "out", cwd=tmp_path)
    assert_error(r.returncode, r.stderr, *words)
    assert not (tmp_path / "out").exists()
    r = _bnnc_subprocess("compile", path, cwd=tmp_path)  # argparse's own error path
    assert_error(r.returncode, r.stderr, "required", "-o")


def test_progress_lines_before_an_error(base_file, tmp_path, capsys, monkeypatch):
    """At the default level, steps slower than progress.SLOW_S print their lines; a failure still
    ends with the one error line, the last on stderr, and exit status 2."""
    from bnnc import progress

    monkeypatch.setenv("BNNC_PROGRESS", "normal")  # the command's default (conftest.py sets quiet)
    monkeypatch.setattr(progress, "SLOW_S", 0.0)  # every step counts as slow
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 3), np.float32))  # the wrong shape: found after the model is compiled
    rc = main(["run", str(base_file), "--target", "ref", "--input", str(x)])
    lines = capsys.readouterr().err.splitlines()
    assert rc == 2 and lines[-1].startswith("bnnc: error: input array of shape (2, 3)"), lines
    progress_lines = lines[:-1]
    assert any("pass fold_batchnorm_into_thresholds: done in" in line for line in progress_lines), lines
    assert all(line.startswith("bnnc: ") and "error" not in line for line in progress_lines), lines


@pytest.mark.parametrize("flags,words", [
    (["run", "--target", "hls", "--mcu", "cortex-m4"], ["--mcu", "--target hls"]),
    (["run", "--target", "cortex-m0", "--mcu", "cortex-m4"], ["--mcu cortex-m4", "contradicts", "cortex-m0"]),
    (["run", "--target", "c", "--folding", "f.json"], ["--folding", "verilog", "--target c"]),
    (["run", "--target", "verilog", "--ram", "64k"], ["--ram", "cortex-m4", "--target verilog"]),
    (["verify", "--samples", "5"], ["--samples", "--input"]),
    (["verify", "--seed", "5"], ["--seed", "--input"]),
])
def test_flags_a_target_does_not_use_are_refused(base_file, tmp_path, capsys, flags, words):
    x = tmp_path / "x.npy"
    np.save(x, random_inputs(random_model(BASE_SEED)[1], 2, seed=0))
    rc, out, err = cli(capsys, flags[0], base_file, "--input", x, *flags[1:])
    assert_error(rc, err, *words)
    assert out == ""


def test_expected_needs_inputs(base_file, tmp_path, capsys):
    np.save(tmp_path / "y.npy", np.zeros((2, 1), np.int32))
    rc, _, err = cli(capsys, "verify", base_file, "--expected", tmp_path / "y.npy")
    assert_error(rc, err, "--expected", "--input")


def test_unknown_progress_level_is_refused(base_file, capsys, monkeypatch):
    monkeypatch.setenv("BNNC_PROGRESS", "loud")
    rc, _, err = cli(capsys, "report", base_file)
    assert_error(rc, err, "BNNC_PROGRESS", "loud", "quiet, normal, verbose")
