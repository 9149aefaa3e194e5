"""The Python API (`bnnc.compile` -> Compiled) gives what the CLI gives, on small zoo models.

- `run` (path or ModelProto) == `bnnc run --output`, bit for bit; `write` == `bnnc compile` byte for
  byte; `report().data` == `bnnc report --json`; `verify().text` is what `bnnc verify` prints.
- errors raise `bnnc.Error` with the message `bnnc` prints after `bnnc: error:`.
- `verify(expected=...)` holds the reference to the user's outputs; `verify(trace=True)` names the
  first layer where the reference leaves the original (a layer broken on purpose here).
"""

import dataclasses
import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import bnnc
from bnnc import ir, verify as verify_mod, zoo
from bnnc.cli import main
from bnnc.testing.random_models import save

from .test_cli import private_build_cache  # noqa: F401  (autouse: C builds in this module's own cache)


@pytest.fixture(scope="module")
def w1a2(tmp_path_factory):
    """zoo w1a2: binary weights, 2-bit activations; its file and 12 inputs."""
    model = zoo.build("w1a2")
    d = tmp_path_factory.mktemp("w1a2")
    save(model, d / "m.onnx")
    np.save(d / "x.npy", zoo.inputs(model, 12, seed=3))
    return model, d


def cli(capsys, *argv):
    rc = main(["-q", *(str(a) for a in argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_dir_names_the_api():
    for name in ("compile", "Compiled", "Error", "Verification", "Report", "set_verbosity", "TARGETS"):
        assert name in dir(bnnc)
    assert bnnc.Error is bnnc.errors.BnncError


@pytest.mark.parametrize("target", ["ref", "c"])
def test_run_matches_the_cli(w1a2, tmp_path, capsys, target):
    model, d = w1a2
    x = np.load(d / "x.npy")
    rc, _, err = cli(capsys, "run", d / "m.onnx", "--target", target, "--input", d / "x.npy",
                     "--output", tmp_path / "y.npy")
    assert rc == 0, err
    y_cli = np.load(tmp_path / "y.npy")
    y_path = bnnc.compile(d / "m.onnx", target).run(x)
    y_proto = bnnc.compile(model, target=target).run(x)
    assert y_cli.dtype == y_path.dtype and np.array_equal(y_cli, y_path) and np.array_equal(y_path, y_proto)
    assert y_path.shape == (12, 10) and len(np.unique(y_path.argmax(axis=1))) > 1  # not a constant output


def test_run_stats_for_the_host_targets(w1a2):
    model, d = w1a2
    x = np.load(d / "x.npy")
    for target in ("ref", "c"):
        y, stats = bnnc.compile(model, target).run(x, return_stats=True)
        assert stats["target"] == target and stats["samples"] == 12
        assert 0 < stats["latency_us_min"] <= stats["latency_us_mean"] <= stats["latency_us_max"]


def test_write_matches_the_cli(w1a2, tmp_path, capsys):
    model, d = w1a2
    for target in ("c", "cortex-m4"):
        rc, _, err = cli(capsys, "compile", d / "m.onnx", "--target", target, "-o", tmp_path / f"cli-{target}")
        assert rc == 0, err
        names = bnnc.compile(model, target).write(tmp_path / f"api-{target}")
        cli_files = {p.name: p.read_bytes() for p in (tmp_path / f"cli-{target}").iterdir()}
        api_files = {p.name: p.read_bytes() for p in (tmp_path / f"api-{target}").iterdir()}
        assert sorted(names) == sorted(cli_files) and cli_files == api_files
    # the firmware target's two spellings are one target
    alias = bnnc.compile(model, "c", mcu="cortex-m4").files()
    assert alias == bnnc.compile(model, "cortex-m4").files()


def test_report_matches_the_cli(w1a2, tmp_path, capsys):
    model, d = w1a2
    rc, out, err = cli(capsys, "report", d / "m.onnx", "--target", "hls", "--json", tmp_path / "r.json")
    assert rc == 0, err
    rep = bnnc.compile(model, "hls").report()
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(rep.data, default=list))
    assert rep.text in out and "hls" in rep.data


def test_verify_matches_the_cli(w1a2, capsys):
    model, d = w1a2
    rc, out, err = cli(capsys, "verify", d / "m.onnx", "--target", "c", "--input", d / "x.npy")
    assert rc == 0, err
    result = bnnc.compile(d / "m.onnx", "c").verify(np.load(d / "x.npy"))
    assert result.passed and result.samples == 12 and result.bit_exact == 12 and result.against == "original"
    not_timed = [line for line in result.lines if not line.startswith("time")]
    assert [line for line in out.splitlines() if not line.startswith("time")] == not_timed
    assert result.lines[-1] == "PASS"


@pytest.mark.parametrize("call,flags", [
    (lambda p: bnnc.compile(p, "hls", mcu="cortex-m4"), ["compile", "--target", "hls", "--mcu", "cortex-m4"]),
    (lambda p: bnnc.compile(p, "c", folding={"layers": []}), ["compile", "--folding", "f.json"]),
    (lambda p: bnnc.compile(p, "cortex-m4", flash="lots"), ["compile", "--target", "cortex-m4", "--flash", "lots"]),
    (lambda p: bnnc.compile(p, "tpu"), ["compile", "--target", "tpu"]),
    (lambda p: bnnc.compile(p, "c", input_range="0-255"), ["compile", "--input-range", "0-255"]),
])
def test_errors_carry_the_cli_message(w1a2, tmp_path, capsys, call, flags):
    _, d = w1a2
    with pytest.raises(bnnc.Error) as e:
        call(d / "m.onnx")
    rc, _, err = cli(capsys, flags[0], d / "m.onnx", *flags[1:], "-o", tmp_path / "out")
    assert rc == 2 and err.strip() == f"bnnc: error: {e.value}"


def test_input_errors_raise_bnnc_error(w1a2):
    model, _ = w1a2
    m = bnnc.compile(model, "ref")
    with pytest.raises(bnnc.Error, match="does not hold samples"):
        m.run(np.zeros((2, 5), np.float32))
    with pytest.raises(bnnc.Error, match="expected a path or an onnx.ModelProto"):
        bnnc.compile(42)


def test_verify_against_expected_outputs(w1a2):
    model, d = w1a2
    x = np.load(d / "x.npy")
    m = bnnc.compile(model, "c")
    y = m.run(x)
    result = m.verify(x, expected=y)
    assert result.passed and result.against == "expected" and result.agree == 12
    assert "reference top-1 == expected" in result.text
    wrong = y.copy()
    wrong[:6] = -wrong[:6]  # half the samples now have another top-1
    result = m.verify(x, expected=wrong)
    assert not result.passed and result.agree <= 6 and result.lines[-1] == "FAIL"
    assert m.verify(x, expected=wrong, agreement=0.5).passed == (result.agree >= 6)
    with pytest.raises(bnnc.Error, match="--expected array of shape"):
        m.verify(x, expected=y[:5])
    with pytest.raises(bnnc.Error, match="--expected needs --input"):
        m.verify(expected=y)


def test_trace_follows_the_original(w1a2):
    model, _ = w1a2
    result = bnnc.compile(model, "ref").verify(samples=8, trace=True)
    compared = [r for r in result.trace if r["compared"]]
    assert len(compared) == 4 and all(r["samples"] == 0 for r in compared)
    assert "follows the original through every compared layer" in result.text


def test_trace_names_the_first_layer_that_parts_ways(w1a2, monkeypatch):
    """A layer's level thresholds moved on purpose: the trace names that layer, not an earlier one."""
    model, _ = w1a2
    real = verify_mod.trace_graph

    def broken(compiled):
        g = real(compiled)
        op = next(op for op in g.ops() if op.name == "L04_conv")
        ep = op.epilogue
        assert isinstance(ep, ir.LevelThresholds)
        op.epilogue = dataclasses.replace(ep, threshold=ep.threshold + 7)
        return g

    monkeypatch.setattr(verify_mod, "trace_graph", broken)
    result = bnnc.compile(model, "ref").verify(samples=8, trace=True)
    rows = {r["layer"]: r for r in result.trace}
    assert rows["L02_conv"]["samples"] == 0 and rows["L04_conv"]["samples"] > 0
    assert "part ways at layer L04_conv" in result.text


def _tf2onnx_layers(seed=0):
    """Layers as tf2onnx writes a larq model: NHWC input, Transposes around each Conv, the signs
    computed in NHWC between them, a float stem Conv + Relu, a MaxPool before the BatchNorm and sign."""
    rng = np.random.default_rng(seed)
    inits = {"w1": rng.normal(size=(6, 3, 3, 3)).astype(np.float32),
             "w2": rng.normal(size=(8, 6, 1, 1)).astype(np.float32), "b2": rng.uniform(0.1, 1, 8).astype(np.float32),
             "w3": np.where(rng.random((8, 8, 3, 3)) < 0.5, -1, 1).astype(np.float32),
             "g": rng.uniform(0.5, 2, 8).astype(np.float32), "b": rng.normal(size=8).astype(np.float32),
             "m": rng.normal(size=8).astype(np.float32), "v": rng.uniform(0.5, 2, 8).astype(np.float32),
             "w4": rng.normal(size=(8 * 4 * 4, 10)).astype(np.float32)}
    nhwc, nchw = [0, 2, 3, 1], [0, 3, 1, 2]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=nchw),
             helper.make_node("Conv", ["xt", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["c2"]),  # a bias: no exact 0 for the Sign
             helper.make_node("Transpose", ["c2"], ["c2t"], perm=nhwc),
             helper.make_node("Sign", ["c2t"], ["s"]),
             helper.make_node("Transpose", ["s"], ["st"], perm=nchw),
             helper.make_node("Conv", ["st", "w3"], ["c3"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c3"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("BatchNormalization", ["p", "g", "b", "m", "v"], ["bn"]),
             helper.make_node("Transpose", ["bn"], ["bt"], perm=nhwc),
             helper.make_node("Sign", ["bt"], ["s2"]),
             helper.make_node("Transpose", ["s2"], ["s2t"], perm=nchw),
             helper.make_node("Flatten", ["s2t"], ["f"]),
             helper.make_node("MatMul", ["f", "w4"], ["y"])]
    g = helper.make_graph(nodes, "tf2onnx", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def test_trace_follows_a_tf2onnx_graph():
    """Each layer is compared with the tensor that holds its values: the stem's after its Relu, a
    sign's computed in NHWC, a layer's pooled output against the sign after the MaxPool."""
    m = bnnc.compile(_tf2onnx_layers(), "ref", input_range=(0, 255), input_scale=1 / 64)
    result = m.verify(samples=8, trace=True)
    rows = {r["layer"]: r for r in result.trace}
    assert all(r["compared"] and r["samples"] == 0 for r in rows.values()), rows
    assert [r["onnx"] for r in rows.values()][:3] == ["r", "s", "s2"]
    assert "follows the original through every compared layer" in result.text


def test_trace_names_a_tf2onnx_layer_that_parts_ways(monkeypatch):
    real = verify_mod.trace_graph

    def broken(compiled):
        g = real(compiled)
        op = [op for op in g.ops() if isinstance(op, ir.Conv)][2]
        op.epilogue = dataclasses.replace(op.epilogue, threshold=op.epilogue.threshold + 5)
        return g

    monkeypatch.setattr(verify_mod, "trace_graph", broken)
    result = bnnc.compile(_tf2onnx_layers(), "ref", input_range=(0, 255), input_scale=1 / 64).verify(samples=8,
                                                                                                     trace=True)
    parted = [r for r in result.trace if r["samples"]]
    assert parted and parted[0]["onnx"] == "s2"
