"""Hostile input: the CLI's contract under deliberate misuse, case by case and fuzzed.

The contract (see tests/test_cli_errors.py): exit status 0, or 2 with exactly one stderr line
`bnnc: error: ...` -- never a traceback, an internal error (3), a numpy warning, a partial output
or a silent wrong answer. `bnnc compile` into an existing folder leaves it exactly as it was when
it fails.

The fuzz harness mutates valid models (small zoo models, a random CNN, FINN's TFC when
../shared/models is present) with seeded, deterministic mutations: attributes of the wrong type,
length or value, NaN/Inf/empty/huge initializers, duplicate names, bogus op types and names with
control characters, broken graph wiring, truncated protobuf bytes and random files. The default
run is a sample; the `sweep` variant runs more (BNNC_SWEEP_SCALE scales it).
"""

import copy
import io
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import AttributeProto, TensorProto, helper, numpy_helper

from bnnc import zoo
from bnnc.backends import verilog_resources
from bnnc.cli import main
from bnnc.testing.random_models import random_model

from .conftest import SHARED, sweep_scale
from .test_cli_errors import assert_error, cli, initializer, node, save, snapshot

FINN_TFC = SHARED / "finn-tfc-w1a1" / "model.onnx"
N_FUZZ = 120
N_FUZZ_SWEEP = int(1500 * sweep_scale())


@pytest.fixture(scope="module")
def cnn():
    """random_model(12): QuantizeLinear -> DequantizeLinear -> Conv -> BN -> MaxPool -> Sign -> Conv
    -> BN -> Sign -> Flatten -> Gemm -> Mul -> Add -> ArgMax, input (1, 2, 16, 16)."""
    return random_model(12)[0]


def compile_model(capsys, tmp_path, model, *extra):
    """`bnnc compile` of `model` into a folder holding a file already; asserts the contract and,
    on failure, that the folder is unchanged. Returns (exit status, stderr)."""
    path = save(copy.deepcopy(model), tmp_path / "m.onnx")
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "keep.txt").write_text("the user's file")
    before = snapshot(out)
    rc, _, err = cli(capsys, "compile", path, "-o", out, *extra)
    assert_contract(rc, err)
    if rc != 0:
        assert snapshot(out) == before, "a failed compile changed the output folder"
    return rc, err


def assert_contract(rc, err):
    assert rc in (0, 2), f"exit status {rc}: {err}"
    if rc == 2:
        assert_error(rc, err)
    else:
        assert "Traceback" not in err and "Warning" not in err, err


def set_attribute(n, name, value):
    for a in list(n.attribute):
        if a.name == name:
            n.attribute.remove(a)
    n.attribute.append(value if isinstance(value, AttributeProto) else helper.make_attribute(name, value))


def replace_initializer(model, name, array):
    initializer(model, name).CopyFrom(numpy_helper.from_array(np.asarray(array), name))


def refused(capsys, tmp_path, model, *words):
    rc, err = compile_model(capsys, tmp_path, model)
    return assert_error(rc, err, *words)


# ----------------------------------------------------------------------------------- attributes


@pytest.mark.parametrize("op,key,value,words", [
    ("Conv", "strides", [0, 0], ["strides", "at least 1"]),
    ("MaxPool", "strides", [0, 0], ["strides", "at least 1"]),
    ("Conv", "strides", [1, 1, 1], ["strides", "needs 2 values"]),
    ("Conv", "pads", [1, 1], ["pads", "needs 4 values"]),
    ("Conv", "dilations", [1], ["dilations", "needs 2 values"]),
    ("Conv", "kernel_shape", [3], ["kernel_shape", "does not match weight"]),
    ("MaxPool", "kernel_shape", [2, 2, 2], ["kernel_shape"]),
    ("Conv", "strides", "11", ["strides", "STRING", "INTS"]),
    ("Conv", "kernel_shape", "3x3", ["kernel_shape", "STRING", "INTS"]),
    ("MaxPool", "pads", "0", ["pads", "STRING", "INTS"]),
    ("Conv", "dilations", 1, ["dilations", "INT", "INTS"]),
    ("Gemm", "transB", numpy_helper.from_array(np.array(1, np.int64)), ["transB", "TENSOR", "INT"]),
    ("Gemm", "transB", 7, ["transB", "0 or 1"]),
    ("BatchNormalization", "epsilon", helper.make_graph([], "g", [], []), ["epsilon", "GRAPH", "FLOAT"]),
    ("BatchNormalization", "epsilon", float("nan"), ["epsilon", "finite"]),
    ("MaxPool", "kernel_shape", [40, 40], ["MaxPool", "window is larger than its input"]),
    ("Flatten", "axis", -(2**62), ["axis", "outside the 4-D input"]),
    ("ArgMax", "axis", 2, ["axis", "outside the 2-D input"]),
])
def test_bad_attribute_is_refused_with_node_and_attribute_named(op, key, value, words, cnn, tmp_path, capsys):
    m = copy.deepcopy(cnn)
    n = node(m, op)
    set_attribute(n, key, value)
    refused(capsys, tmp_path, m, n.name, *words)


def test_attribute_without_a_type_is_refused(cnn, tmp_path, capsys):
    m = copy.deepcopy(cnn)
    n = node(m, "Conv")
    set_attribute(n, "strides", [1, 1])
    n.attribute.remove(next(a for a in n.attribute if a.name == "strides"))
    n.attribute.append(AttributeProto(name="strides"))
    refused(capsys, tmp_path, m, n.name, "strides", "no valid type")


def test_missing_required_attribute_is_refused(cnn, tmp_path, capsys):
    m = copy.deepcopy(cnn)
    n = node(m, "MaxPool")
    set_attribute(n, "kernel_shape", [2, 2])
    n.attribute.remove(next(a for a in n.attribute if a.name == "kernel_shape"))
    refused(capsys, tmp_path, m, n.name, "kernel_shape", "missing")


# ----------------------------------------------------------------------------------- weights and parameters


def _weight(m, op):
    return node(m, op).input[1]


@pytest.mark.parametrize("op,where,value", [
    ("Conv", 0, np.nan), ("Conv", 5, np.inf), ("Gemm", 0, np.nan), ("Gemm", 3, -np.inf)])
def test_non_finite_weights_are_refused(op, where, value, cnn, tmp_path, capsys):
    m = copy.deepcopy(cnn)
    name = _weight(m, op)
    w = numpy_helper.to_array(initializer(m, name)).copy()
    w.flat[where] = value
    replace_initializer(m, name, w)
    refused(capsys, tmp_path, m, name, node(m, op).name, "NaN" if np.isnan(value) else "Inf")


@pytest.mark.parametrize("layer", [0, -1])  # the first hidden layer, the logits layer
def test_weights_whose_sums_overflow_float32_are_refused(layer, tmp_path, capsys):
    m = zoo.build("tfc")
    gemm = [n for n in m.graph.node if n.op_type == "Gemm"][layer]
    w = numpy_helper.to_array(initializer(m, gemm.input[1]))
    replace_initializer(m, gemm.input[1], np.full_like(w, 1e38))
    refused(capsys, tmp_path, m, gemm.name, gemm.input[1], "below 2^64")


@pytest.mark.parametrize("layer", [0, -1])  # a hidden layer (threshold folding), the logits layer
def test_scales_that_overflow_float32_are_refused(layer, tmp_path, capsys):
    m = zoo.build("tfc")
    gemm = [n for n in m.graph.node if n.op_type == "Gemm"][layer]
    set_attribute(gemm, "alpha", 1e38)
    refused(capsys, tmp_path, m, gemm.name, "too large for a finite answer")


@pytest.mark.parametrize("param", [1, 2, 3, 4])  # scale (gamma), bias, mean, variance
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_batchnorm_parameters_are_refused(param, value, cnn, tmp_path, capsys):
    m = copy.deepcopy(cnn)
    bn = node(m, "BatchNormalization")
    name = bn.input[param]
    p = numpy_helper.to_array(initializer(m, name)).copy()
    p[-1] = value
    replace_initializer(m, name, p)
    refused(capsys, tmp_path, m, name, bn.name)


def test_zero_variance_with_zero_epsilon_is_refused(cnn, tmp_path, capsys):
    m = copy.deepcopy(cnn)
    bn = node(m, "BatchNormalization")
    set_attribute(bn, "epsilon", 0.0)
    var = numpy_helper.to_array(initializer(m, bn.input[4]))
    replace_initializer(m, bn.input[4], np.zeros_like(var))
    refused(capsys, tmp_path, m, bn.name, bn.input[4], "epsilon", "positive")


def test_negative_variance_is_refused_without_warnings(cnn, tmp_path, capsys):
    m = copy.deepcopy(cnn)
    bn = node(m, "BatchNormalization")
    var = numpy_helper.to_array(initializer(m, bn.input[4]))
    replace_initializer(m, bn.input[4], -np.ones_like(var))
    refused(capsys, tmp_path, m, bn.name, bn.input[4])


def test_subnormal_batchnorm_scale_is_refused(cnn, tmp_path, capsys):
    m = copy.deepcopy(cnn)
    bn = node(m, "BatchNormalization")
    gamma = numpy_helper.to_array(initializer(m, bn.input[1]))
    replace_initializer(m, bn.input[1], np.full_like(gamma, 1e-45))
    refused(capsys, tmp_path, m, bn.name, bn.input[1], "subnormal")


def test_subnormal_variance_plus_epsilon_is_accepted(cnn, tmp_path, capsys):
    m = copy.deepcopy(cnn)  # trained models hold such variances (pruned channels): epsilon makes them normal
    bn = node(m, "BatchNormalization")
    var = numpy_helper.to_array(initializer(m, bn.input[4])).copy()
    var[0] = 5.6e-45
    replace_initializer(m, bn.input[4], var)
    rc, err = compile_model(capsys, tmp_path, m)
    assert rc == 0, err


def test_string_initializer_is_refused(cnn, tmp_path, capsys):
    m = copy.deepcopy(cnn)
    name = _weight(m, "Conv")
    shape = numpy_helper.to_array(initializer(m, name)).shape
    initializer(m, name).CopyFrom(helper.make_tensor(name, TensorProto.STRING, shape, [b"x"] * int(np.prod(shape))))
    refused(capsys, tmp_path, m, name, "numeric")


def test_conv_weight_without_filters_is_refused(cnn, tmp_path, capsys):
    m = copy.deepcopy(cnn)
    name = _weight(m, "Conv")
    replace_initializer(m, name, numpy_helper.to_array(initializer(m, name))[:0])
    refused(capsys, tmp_path, m, name, "no filters")


@pytest.mark.parametrize("shape", [(), (10,), (0, 10)])
def test_gemm_weight_that_is_not_a_matrix_is_refused(shape, cnn, tmp_path, capsys):
    m = copy.deepcopy(cnn)
    name = _weight(m, "Gemm")
    replace_initializer(m, name, np.ones(shape, np.float32))
    refused(capsys, tmp_path, m, name, node(m, "Gemm").name)


def test_float_zero_point_is_refused(cnn, tmp_path, capsys):
    m = copy.deepcopy(cnn)
    q = node(m, "QuantizeLinear")
    replace_initializer(m, q.input[2], np.float32(0.0))
    refused(capsys, tmp_path, m, q.name, q.input[2], "float32", "int8")


def test_per_channel_scale_on_the_input_quantizer_is_refused(cnn, tmp_path, capsys):
    m = copy.deepcopy(cnn)
    q = node(m, "QuantizeLinear")
    replace_initializer(m, q.input[1], np.array([0.1, 0.2], np.float32))
    refused(capsys, tmp_path, m, q.name, "per-tensor")


@pytest.mark.parametrize("scale", [np.inf, 0.0, -1.0])
def test_bipolar_quant_scale_must_be_finite_and_positive(scale, tmp_path, capsys):
    m = zoo.build("ternary-qonnx")
    bq = node(m, "BipolarQuant")
    if bq.input[1] in {i.name for i in m.graph.initializer}:
        replace_initializer(m, bq.input[1], np.float32(scale))
    else:
        m.graph.initializer.append(numpy_helper.from_array(np.float32(scale), "hostile_scale"))
        bq.input[1] = "hostile_scale"
    refused(capsys, tmp_path, m, bq.name, "scale")


@pytest.mark.parametrize("allowzero,shape,words", [
    (1, [0, 0], ["empty"]), (0, [0, 0, 0, 0, 0], ["dimension"]), (0, [0, 0], ["cannot reshape"]),
    (0, [-1, -1], ["one -1"]), (0, [1, -7], ["negative"])])
def test_reshape_to_impossible_shapes_is_refused(allowzero, shape, words, tmp_path, capsys):
    m = random_model(1)[0]  # flattens with Reshape(x, constant shape)
    r = node(m, "Reshape")
    replace_initializer(m, r.input[1], np.array(shape, np.int64))
    set_attribute(r, "allowzero", allowzero)
    refused(capsys, tmp_path, m, r.name, *words)


@pytest.mark.parametrize("k,words", [([], ["TopK needs one integer"]), ([0], ["k >= 1"]), ([99], ["exceeds"])])
def test_topk_with_a_bad_k_is_refused(k, words, tmp_path, capsys):
    m = random_model(1)[0]  # ends in TopK(logits, k)
    topk = node(m, "TopK")
    replace_initializer(m, topk.input[1], np.array(k, np.int64))
    refused(capsys, tmp_path, m, topk.name, *words)


def test_order_sensitive_steps_are_stated(tmp_path, capsys):
    """Found by the fuzz harness: with one per-tensor weight scale, a step of zoo ternary-qonnx's
    conv1 sits where BatchNorm gives 0 up to float32 rounding; onnxruntime (fused BatchNorm) gives
    -3e-8 there, the model's op order >= 0. bnnc keeps the model's order and says so: the report
    notes it and verify lists it among the approximations."""
    m = zoo.build("ternary-qonnx")
    scale = numpy_helper.to_array(initializer(m, "conv1_weight_scale"))
    replace_initializer(m, "conv1_weight_scale", np.float32(scale.ravel()[0]))
    path = save(m, tmp_path / "m.onnx")
    rc, out, err = cli(capsys, "verify", path, "--target", "ref", "--samples", 30)
    assert rc in (0, 1) and "order-sensitive" in out, out + err
    rc, out, err = cli(capsys, "report", path)
    assert rc == 0 and "within rounding of 0" in out


def test_duplicate_initializer_with_another_value_is_refused(cnn, tmp_path, capsys):
    m = copy.deepcopy(cnn)
    name = _weight(m, "Conv")
    m.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(initializer(m, name)) + 1, name))
    refused(capsys, tmp_path, m, name, "twice")


def test_identical_duplicate_initializer_is_accepted(cnn, tmp_path, capsys):
    m = copy.deepcopy(cnn)
    m.graph.initializer.append(copy.deepcopy(initializer(m, _weight(m, "Conv"))))
    rc, err = compile_model(capsys, tmp_path, m)
    assert rc == 0, err


def test_tensor_written_by_two_nodes_is_refused(cnn, tmp_path, capsys):
    m = copy.deepcopy(cnn)
    signs = [n for n in m.graph.node if n.op_type == "Sign"]
    signs[1].output[0] = signs[0].output[0]
    refused(capsys, tmp_path, m, signs[0].output[0], "unique")


def test_thousands_of_nodes_listed_backwards_load_in_linear_time(tmp_path, capsys):
    m = zoo.build("tfc")
    first, n = m.graph.node[0], 20000
    chain = [helper.make_node("Identity", [first.output[0] if i == 0 else f"id{i - 1}"], [f"id{i}"], name=f"id{i}")
             for i in range(n)]
    rest = list(m.graph.node)[1:]
    for x in rest:
        for j, t in enumerate(x.input):
            if t == first.output[0]:
                x.input[j] = f"id{n - 1}"
    del m.graph.node[:]
    m.graph.node.extend([first] + chain[::-1] + rest)
    path = save(m, tmp_path / "backwards.onnx")
    t0 = time.time()
    rc, _, err = cli(capsys, "report", path)
    assert rc == 0, err
    assert time.time() - t0 < 30  # quadratic: hours


def test_huge_input_is_refused_before_allocating(cnn, tmp_path, capsys):
    m = copy.deepcopy(cnn)
    dims = m.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = dims[3].dim_value = 100000
    refused(capsys, tmp_path, m, "100000", "bytes")


@pytest.mark.parametrize("text", ["Si\ngn", "Sign\r\x1b[31m", "\x00"])
def test_op_type_and_name_with_control_characters_stay_on_one_line(text, cnn, tmp_path, capsys):
    m = copy.deepcopy(cnn)
    n = node(m, "Sign")
    n.op_type = text
    n.name = "name\n" + text
    line = refused(capsys, tmp_path, m, "not supported")
    assert "\\n" in line


# ----------------------------------------------------------------------------------- files and outputs


@pytest.fixture
def cnn_file(cnn, tmp_path):
    return save(copy.deepcopy(cnn), tmp_path / "cnn.onnx")


def test_model_path_that_is_a_device_is_refused(capsys):
    rc, _, err = cli(capsys, "report", "/dev/zero")
    assert_error(rc, err, "/dev/zero", "not a regular file")


def test_model_path_that_is_a_folder_is_refused(tmp_path, capsys):
    rc, _, err = cli(capsys, "report", tmp_path)
    assert_error(rc, err, str(tmp_path), "folder")


def test_empty_input_file_is_refused(cnn_file, tmp_path, capsys):
    (tmp_path / "x.npy").write_bytes(b"")
    rc, _, err = cli(capsys, "run", cnn_file, "--target", "ref", "--input", tmp_path / "x.npy")
    assert_error(rc, err, "x.npy", "empty")


def test_input_file_declaring_a_huge_array_is_refused_before_allocating(cnn_file, tmp_path, capsys):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                  "shape": (100000, 100000, 50)})
    (tmp_path / "x.npy").write_bytes(header.getvalue() + bytes(64))
    rc, _, err = cli(capsys, "run", cnn_file, "--target", "ref", "--input", tmp_path / "x.npy")
    assert_error(rc, err, "x.npy", "(100000, 100000, 50)", "2000000000000 bytes")


def test_deeply_nested_folding_json_is_refused(cnn_file, tmp_path, capsys):
    f = tmp_path / "deep.json"
    f.write_text("[" * 100000 + "]" * 100000)
    out = tmp_path / "rtl"
    rc, _, err = cli(capsys, "compile", cnn_file, "--target", "verilog", "--folding", f, "-o", out)
    assert_error(rc, err, "deep.json", "nests")
    assert not out.exists()


def test_output_name_past_the_file_name_limit_is_refused(cnn_file, tmp_path, capsys):
    rc, _, err = cli(capsys, "compile", cnn_file, "-o", tmp_path / ("o" * 300))
    assert_error(rc, err, "longer than the file system allows")


def test_failed_compile_leaves_existing_files_alone(cnn_file, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "model.h").mkdir(parents=True)  # the compile cannot write model.h
    (out / "model.c").write_text("the user's model.c")
    before = snapshot(out)
    rc, _, err = cli(capsys, "compile", cnn_file, "-o", out)
    assert_error(rc, err, "model.h", "folder")
    assert snapshot(out) == before


def test_compile_into_existing_folder_replaces_only_its_files(cnn_file, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.c").write_text("old")
    (out / "notes.txt").write_text("the user's notes")
    rc, _, err = cli(capsys, "compile", cnn_file, "-o", out)
    assert rc == 0, err
    assert (out / "model.c").read_text() != "old" and (out / "notes.txt").read_text() == "the user's notes"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bnnc-")]


def test_run_checks_every_output_path_before_writing_any(cnn_file, tmp_path, capsys):
    x = np.zeros((1, 2, 16, 16), np.float32)
    np.save(tmp_path / "x.npy", x)
    stats = tmp_path / "s.json"
    rc, _, err = cli(capsys, "run", cnn_file, "--target", "ref", "--input", tmp_path / "x.npy",
                     "--stats", stats, "--output", tmp_path / "nodir" / "y.npy")
    assert_error(rc, err, "nodir")
    assert not stats.exists()


def test_run_writes_outputs_whole(cnn_file, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((2, 2, 16, 16), np.float32))
    rc, _, err = cli(capsys, "run", cnn_file, "--target", "ref", "--input", tmp_path / "x.npy",
                     "--stats", tmp_path / "s.json", "--output", tmp_path / "y.npy")
    assert rc == 0, err
    assert np.load(tmp_path / "y.npy").shape[0] == 2 and (tmp_path / "s.json").read_text().startswith("{")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn.onnx", "s.json", "x.npy", "y.npy"]


def test_closed_stdout_pipe_ends_quietly(cnn_file, monkeypatch, capsys):
    class ClosedPipe(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    rc = main(["report", str(cnn_file)])
    assert rc == 141 and capsys.readouterr().err == ""


def test_old_yosys_is_refused_with_the_version_needed(tmp_path, monkeypatch):
    fake = tmp_path / "yosys"
    fake.write_text("#!/bin/sh\necho 'Yosys 0.9 (git sha1 1979e0b)'\n")
    fake.chmod(0o755)
    verilog_resources.check_yosys_version.cache_clear()
    monkeypatch.setenv("PATH", str(tmp_path))
    try:
        with pytest.raises(Exception) as e:
            verilog_resources.yosys_command()
    finally:
        verilog_resources.check_yosys_version.cache_clear()
    assert type(e.value).__name__ == "BnncError" and "0.9" in str(e.value) and "0.10" in str(e.value)


def test_warnings_never_reach_the_terminal(cnn, tmp_path):
    """A real process (warnings filters are process state): Inf weights and a zero variance."""
    m = copy.deepcopy(cnn)
    bn = node(m, "BatchNormalization")
    set_attribute(bn, "epsilon", 0.0)
    replace_initializer(m, bn.input[4], np.zeros_like(numpy_helper.to_array(initializer(m, bn.input[4]))))
    path = save(m, tmp_path / "m.onnx")
    r = subprocess.run([sys.executable, "-W", "always", "-m", "bnnc.cli", "report", str(path)],
                       capture_output=True, text=True)
    assert_error(r.returncode, r.stderr, bn.name)


# ----------------------------------------------------------------------------------- the fuzz harness


def _base_models() -> list:
    models = [("cnn", random_model(12)[0]), ("tfc", zoo.build("tfc")),
              ("ternary-qonnx", zoo.build("ternary-qonnx")), ("w1a2", zoo.build("w1a2"))]
    if FINN_TFC.is_file():
        models.append(("finn-tfc", onnx.load(str(FINN_TFC))))
    return models


_WRONG_TYPE_VALUES = [
    "text", 3, 2.5, [1, 2], [0.5, 1.5], ["a", "b"], numpy_helper.from_array(np.array(1, np.int64)),
    helper.make_graph([], "g", [], []),
]
_BAD_INTS = [[], [0], [0, 0], [-1, -1], [1, 1, 1, 1, 1], [2**40, 2**40], [1000, 1000], [-(2**62)] * 4]
_BAD_INT = [0, -1, 2, 2**40, -(2**62)]
_BAD_FLOAT = [0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e38, 1e-45]
_BAD_VALUES = [np.nan, np.inf, -np.inf, 0.0, -1.0, 1e38, 1e-45, 3.0e-39]
_HOSTILE_TEXT = ["", "x\ny", "\r\x1b[2J", "\x00\x07", "é\u2028", "' OR 1 --", "a" * 300]


def mutate(model: onnx.ModelProto, rng: np.random.Generator) -> tuple:
    """(mutated copy, description), or (bytes, description) for damaged files."""
    m = copy.deepcopy(model)
    g = m.graph
    kind = str(rng.choice(["attr_type", "attr_value", "attr_value", "init_value", "init_shape", "init_dup",
                           "init_dtype", "op_type", "name", "wiring", "input_shape", "graph", "truncate",
                           "random_bytes"]))
    nodes = list(g.node)
    n = nodes[int(rng.integers(len(nodes)))]
    inits = list(g.initializer)
    if kind == "attr_type" and n.attribute:
        a = n.attribute[int(rng.integers(len(n.attribute)))]
        v = _WRONG_TYPE_VALUES[int(rng.integers(len(_WRONG_TYPE_VALUES)))]
        set_attribute(n, a.name, helper.make_attribute(a.name, v))
        return m, f"{kind}: {n.op_type}.{a.name} = {type(v).__name__}"
    if kind == "attr_value":
        keys = {"Conv": ["strides", "pads", "dilations", "kernel_shape", "group"],
                "MaxPool": ["strides", "pads", "kernel_shape", "dilations", "ceil_mode"],
                "Gemm": ["transA", "transB", "alpha", "beta"], "BatchNormalization": ["epsilon", "momentum"],
                "Flatten": ["axis"], "ArgMax": ["axis", "keepdims"], "TopK": ["axis"],
                "MultiThreshold": ["out_scale", "out_bias"], "Quant": ["signed", "narrow", "rounding_mode"],
                "Transpose": ["perm"]}
        candidates = [x for x in nodes if x.op_type in keys]
        if candidates:
            n = candidates[int(rng.integers(len(candidates)))]
            key = str(rng.choice(keys[n.op_type]))
            current = next((a for a in n.attribute if a.name == key), None)
            kind_of = current.type if current is not None else (
                AttributeProto.INTS if key in ("strides", "pads", "dilations", "kernel_shape", "perm") else
                AttributeProto.FLOAT if key in ("alpha", "beta", "epsilon", "momentum", "out_scale", "out_bias")
                else AttributeProto.STRING if key == "rounding_mode" else AttributeProto.INT)
            if kind_of == AttributeProto.INTS:
                v = _BAD_INTS[int(rng.integers(len(_BAD_INTS)))]
            elif kind_of == AttributeProto.FLOAT:
                v = _BAD_FLOAT[int(rng.integers(len(_BAD_FLOAT)))]
            elif kind_of == AttributeProto.STRING:
                v = _HOSTILE_TEXT[int(rng.integers(len(_HOSTILE_TEXT)))]
            else:
                v = _BAD_INT[int(rng.integers(len(_BAD_INT)))]
            set_attribute(n, key, helper.make_attribute(key, v, attr_type=kind_of))
            return m, f"{kind}: {n.op_type}.{key} = {v!r}"[:200]
    if kind in ("init_value", "init_shape", "init_dup") and inits:
        init = inits[int(rng.integers(len(inits)))]
        a = numpy_helper.to_array(init)
        if kind == "init_value" and a.size and a.dtype.kind == "f":
            a = a.copy()
            v = _BAD_VALUES[int(rng.integers(len(_BAD_VALUES)))]
            if rng.random() < 0.5:
                a.flat[int(rng.integers(a.size))] = v
            else:
                a[...] = v
            init.CopyFrom(numpy_helper.from_array(a, init.name))
            return m, f"{kind}: {init.name} <- {v}"
        if kind == "init_shape":
            choice = int(rng.integers(4))
            if choice == 0:
                b = a.reshape(-1)[:0]
            elif choice == 1:
                b = np.asarray(a.reshape(-1)[0] if a.size else 0, a.dtype)
            elif choice == 2:
                b = a.reshape(-1)
            else:
                b = np.concatenate([a, a]) if a.ndim else np.stack([a, a])
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(b), init.name))
            return m, f"{kind}: {init.name} {a.shape} -> {b.shape}"
        if kind == "init_dup":
            b = a + 1 if a.dtype.kind in "fiu" and a.size else a
            g.initializer.append(numpy_helper.from_array(np.asarray(b, a.dtype), init.name))
            return m, f"{kind}: {init.name}"
    if kind == "init_dtype" and inits:
        init = inits[int(rng.integers(len(inits)))]
        a = numpy_helper.to_array(init)
        dtype = str(rng.choice(["float16", "float64", "int64", "int8", "uint8", "bool", "str"]))
        if dtype == "str":
            t = helper.make_tensor(init.name, TensorProto.STRING, a.shape, [b"x"] * a.size)
        else:
            with np.errstate(all="ignore"):
                t = numpy_helper.from_array(np.nan_to_num(a).astype(dtype), init.name)
        init.CopyFrom(t)
        return m, f"{kind}: {init.name} -> {dtype}"
    if kind == "graph":
        choice = int(rng.integers(5))
        if choice == 0:
            g.output[0].name = "nothing_writes_this"
        elif choice == 1:
            g.output.append(copy.deepcopy(g.output[0]))
        elif choice == 2:
            m.opset_import[0].version = int(rng.choice([0, 1, 6, 23, 10**6]))
        elif choice == 3:
            m.ir_version = int(rng.choice([0, 1, 99]))
        else:
            g.input[0].type.tensor_type.elem_type = int(rng.choice([TensorProto.STRING, TensorProto.BOOL,
                                                                    TensorProto.DOUBLE, TensorProto.INT64, 0]))
        return m, f"{kind} {choice}"
    if kind == "op_type":
        n.op_type = str(rng.choice(["Bogus", "Conv", "Sign\n", "Gemm", "MaxPool", "If", "Loop", "\x1b[31m"]))
        if rng.random() < 0.3:
            n.domain = str(rng.choice(["evil.domain", "finn", "qonnx.custom_op.general"]))
        return m, f"{kind}: {nodes.index(n)} -> {n.op_type!r} domain {n.domain!r}"
    if kind == "name":
        text = _HOSTILE_TEXT[int(rng.integers(len(_HOSTILE_TEXT)))]
        if rng.random() < 0.5:
            n.name = text
        elif n.output:
            old = n.output[0]
            n.output[0] = text
            for x in nodes:
                for i, t in enumerate(x.input):
                    if t == old:
                        x.input[i] = text
            for o in g.output:
                if o.name == old:
                    o.name = text
        return m, f"{kind}: {text!r}"
    if kind == "wiring":
        choice = int(rng.integers(4))
        if choice == 0 and n.input:
            n.input[int(rng.integers(len(n.input)))] = "ghost"
        elif choice == 1:
            g.node.remove(n)
        elif choice == 2:
            g.node.append(copy.deepcopy(n))
        else:
            del n.input[len(n.input) // 2:]
        return m, f"{kind} {choice}: {n.op_type} {n.name!r}"
    if kind == "input_shape":
        dims = g.input[0].type.tensor_type.shape.dim
        d = dims[int(rng.integers(len(dims)))]
        v = int(rng.choice([0, -1, 2, 3, 100000, 2**31, 2**62]))
        d.Clear()
        d.dim_value = v
        return m, f"{kind}: {v}"
    if kind == "truncate":
        data = m.SerializeToString()
        cut = int(rng.integers(1, len(data)))
        return data[:cut], f"{kind}: {cut}/{len(data)} bytes"
    return bytes(rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8)), "random_bytes"


def run_fuzz(n_cases: int, seed: int, tmp_path, capsys) -> tuple:
    """Run `n_cases` seeded mutations through `bnnc compile` (and, where it compiles, `bnnc run
    --target ref` and `bnnc verify` against onnxruntime). Returns ({exit status: cases},
    [contract violations, described])."""
    bases = _base_models()
    rng = np.random.default_rng(seed)
    x_by_base = {}
    counts, violations = {}, []
    for i in range(n_cases):
        name, base = bases[i % len(bases)]
        m, what = mutate(base, rng)
        case = tmp_path / f"case{i}"
        case.mkdir()
        path = case / "m.onnx"
        path.write_bytes(m if isinstance(m, bytes) else m.SerializeToString())
        out = case / "out"
        out.mkdir()
        (out / "keep.txt").write_text("the user's file")
        before = snapshot(out)
        rc, _, err = cli(capsys, "compile", path, "-o", out)
        counts[rc] = counts.get(rc, 0) + 1
        problem = _contract_violation(rc, err)
        if problem is None and rc != 0 and snapshot(out) != before:
            problem = "a failed compile changed the output folder"
        if problem is None and rc == 0:
            if name not in x_by_base:
                x_by_base[name] = tmp_path / f"x_{name}.npy"
                np.save(x_by_base[name], zoo.inputs(base, 4, seed=i))
            rc_run, _, err = cli(capsys, "run", path, "--target", "ref", "--input", x_by_base[name],
                                 "--output", case / "y.npy")
            problem = _contract_violation(rc_run, err)
            if problem is None and rc_run == 0:
                y = np.load(case / "y.npy")
                if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
                    problem = "run: exit 0 with a non-finite output"
            if problem is None:  # a compiled model must agree with onnxruntime (exit 1: it does not)
                rc_verify, out_verify, err = cli(capsys, "verify", path, "--target", "ref", "--samples", 8)
                problem = _contract_violation(rc_verify, err)
                if problem is None and rc_verify == 1 and "order-sensitive" not in out_verify:
                    # (a stated order-sensitive step is an honest disagreement: the model's own
                    # float32 answer there depends on the runtime's evaluation order)
                    problem = "verify: the reference differs from onnxruntime: " + out_verify[-300:]
        if problem is not None:
            violations.append(f"case {i} ({name}, {what}): {problem}")
    return counts, violations


def _contract_violation(rc, err):
    """None when (exit status, stderr) keep the contract, else what is wrong."""
    lines = err.splitlines()
    if rc == 0:
        return None if not any("Traceback" in x or "Warning" in x for x in lines) else f"exit 0 with: {err[:300]}"
    if rc != 2:
        return f"exit status {rc}: {err[-300:]}"
    if len(lines) != 1 or not lines[0].startswith("bnnc: error: "):
        return f"exit 2 but not one 'bnnc: error:' line: {err[:300]!r}"
    return None


def test_fuzz_sample(tmp_path, capsys):
    counts, violations = run_fuzz(N_FUZZ, 0, tmp_path, capsys)
    assert not violations, f"{len(violations)} of {N_FUZZ} cases break the contract:\n" + "\n".join(violations[:20])
    assert counts.get(2, 0) > N_FUZZ // 2  # most mutations break the model


@pytest.mark.sweep
def test_fuzz_sweep(tmp_path, capsys):
    counts, violations = run_fuzz(N_FUZZ_SWEEP, 1, tmp_path, capsys)
    assert not violations, f"{len(violations)} of {N_FUZZ_SWEEP} cases break the contract:\n" + \
        "\n".join(violations[:40])


def test_truncated_and_random_files_in_a_real_process(cnn, tmp_path):
    data = cnn.SerializeToString()
    rng = np.random.default_rng(7)
    files = {"half.onnx": data[: len(data) // 2], "one_byte.onnx": data[:1],
             "noise.onnx": bytes(rng.integers(0, 256, 777, dtype=np.uint8))}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        r = subprocess.run([sys.executable, "-m", "bnnc.cli", "compile", str(tmp_path / name), "-o",
                            str(tmp_path / "out")], capture_output=True, text=True)
        assert_error(r.returncode, r.stderr, name)
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv,words", [
    (["compile"], ["required"]),
    (["compile", "{model}", "-o", "{tmp}/o", "--target", "nope"], ["nope"]),
    (["compile", "{model}", "-o", "{tmp}/o", "--input-range", "1:x"], ["input-range"]),
    (["compile", "{model}", "-o", "{tmp}/o", "--input-scale", "nan\n"], ["input-scale"]),
    (["compile", "{tmp}/missing.onnx", "-o", "{tmp}/o"], ["missing.onnx"]),
    (["compile", "{model}", "-o", "{model}"], ["not a directory"]),
    (["compile", "{model}", "--target", "verilog", "--folding", "{tmp}", "-o", "{tmp}/o"], ["folder"]),
    (["compile", "{model}", "--target", "verilog", "--folding", "/dev/zero", "-o", "{tmp}/o"], ["regular"]),
    (["compile", "{model}", "--target", "verilog", "--folding", "{model}", "-o", "{tmp}/o"], ["JSON"]),
    (["run", "{model}", "--target", "ref", "--input", "{tmp}"], ["folder"]),
    (["run", "{model}", "--target", "ref", "--input", "{model}"], ["npy"]),
    (["run", "{model}", "--target", "ref", "--input", "/dev/null"], ["/dev/null"]),
    (["run", "{model}", "--target", "ref", "--input", "{model}", "--output", "{tmp}"], ["folder"]),
    (["report", "{model}", "--json", "{tmp}/no/such/r.json"], ["does not exist"]),
    (["verify", "{model}", "--samples", "0"], ["samples"]),
    (["compile", "{model}", "-o", "{tmp}/o", "--bogus-flag\n"], ["bogus"]),
    (["report", "{model}", "--input-scale", "inf"], ["input-scale", "inf"]),
    (["report", "{model}", "--input-scale", "1e-45"], ["input-scale", "1e-45"]),
    (["verify", "{model}", "--samples", "2", "--seed", "-5"], ["seed", "-5"]),
    (["verify", "{model}", "--samples", "2", "--rtol", "nan"], ["rtol", "nan"]),
    (["demo", "--seed", "-1", "--dir", "{tmp}/demo"], ["seed"]),
    (["report", "{model}", "--target", "verilog", "--folding", "{tmp}/name_list.json"], ["name must be a string"]),
])
def test_cli_misuse(argv, words, cnn_file, tmp_path, capsys):
    argv = [a.format(model=cnn_file, tmp=tmp_path) for a in argv]
    (tmp_path / "name_list.json").write_text('{"layers": [{"name": ["x"], "pe": 1, "simd": 1}]}')
    before = snapshot(tmp_path)
    rc, _, err = cli(capsys, *argv)
    assert_error(rc, err, *words)
    assert snapshot(tmp_path) == before
