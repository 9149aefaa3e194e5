"""bnnc.original: QONNX/FINN custom ops rewritten to standard ONNX and run in one onnxruntime session."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnnc.errors import BnncError
from bnnc.original import OriginalModel, rewrite_custom_ops

MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"
QONNX = "qonnx.custom_op.general"


def _model_path(rel: str) -> Path:
    p = MODELS / rel
    if not p.exists():
        pytest.skip(f"shared model {rel} not present")
    return p


# --- the real models ---------------------------------------------------------------------------


def test_finn_tfc_w1a1_exact():
    model = onnx.load(_model_path("finn-tfc-w1a1/model.onnx"))
    x = np.load(_model_path("finn-tfc-w1a1/input.npy"))
    expected = np.load(_model_path("finn-tfc-w1a1/expected_output.npy"))
    om = OriginalModel(model)
    assert om.input_shape == (1, 1, 28, 28)
    y = om.run(x)
    assert y.shape == (4,)
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(y, [7, 2, 1, 0])


def test_qonnx_tfc_1w1a_top1():
    model = onnx.load(_model_path("qonnx-tfc-1w1a/TFC_1W1A.onnx"))
    x = np.load(_model_path("finn-tfc-w1a1/input.npy"))
    y = OriginalModel(model).run(x)
    assert y.shape == (4, 10)
    np.testing.assert_array_equal(y.argmax(axis=1), [7, 2, 1, 0])


def test_brevitas_cnv_1w1a_matches_qonnx_executor():
    model = onnx.load(_model_path("brevitas-cnv-1w1a/cnv_1w1a.onnx"))
    x = np.load(_model_path("brevitas-cnv-1w1a/input.npy"))
    expected = np.load(_model_path("brevitas-cnv-1w1a/expected_output.npy"))
    y = OriginalModel(model).run(x)
    assert y.shape == expected.shape == (8, 10)
    np.testing.assert_allclose(y, expected, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(y.argmax(axis=1), expected.argmax(axis=1))


@pytest.mark.parametrize("rel", ["finn-tfc-w1a1/model.onnx", "qonnx-tfc-1w1a/TFC_1W1A.onnx",
                                 "brevitas-cnv-1w1a/cnv_1w1a.onnx"])
def test_rewrite_is_pure_and_standard(rel):
    model = onnx.load(_model_path(rel))
    before = model.SerializeToString()
    out = rewrite_custom_ops(model)
    assert model.SerializeToString() == before
    assert all(n.domain in ("", "ai.onnx") for n in out.graph.node)
    assert [o.domain for o in out.opset_import] in ([""], ["ai.onnx"])
    default = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    assert [o.version for o in out.opset_import] == default  # the model's own opset, never raised
    assert 4 <= out.ir_version <= 10
    onnx.checker.check_model(out)
    names = [n.name for n in out.graph.node]
    assert len(set(names)) == len(names)


# --- errors ------------------------------------------------------------------------------------


def _single_node(op_type, domain, x_shape, consts, attrs, opset=13, node_name="n0", out_type=TensorProto.FLOAT):
    """One custom node: input x (float), the other inputs as initializers, output y."""
    names = ["x"] + list(consts)
    node = helper.make_node(op_type, names, ["y"], name=node_name, domain=domain, **attrs)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", out_type, list(x_shape))],
        [numpy_helper.from_array(np.asarray(v, dtype=np.float32), k) for k, v in consts.items()],
    )
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid(domain, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=7 if opset <= 12 else 8)


def test_unknown_custom_op_names_the_node():
    m = _single_node("XnorPopcountMatMul", QONNX, (1, 4), {"w": np.ones((4, 4))}, {}, node_name="my_xnor")
    with pytest.raises(BnncError, match="my_xnor") as err:
        rewrite_custom_ops(m)
    assert "XnorPopcountMatMul" in str(err.value) and QONNX in str(err.value)
    m = _single_node("Frobnicate", "com.example", (1, 4), {}, {}, node_name="weird")
    with pytest.raises(BnncError, match="weird.*Frobnicate.*com.example"):
        OriginalModel(m)


def test_quant_needs_constant_bitwidth():
    node = helper.make_node("Quant", ["x", "s", "z", "b"], ["y"], name="q_dyn", domain=QONNX,
                            signed=1, narrow=0, rounding_mode="ROUND")
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in [("x", [1, 4]), ("b", [])]],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.float32(1.0), "s"), numpy_helper.from_array(np.float32(0.0), "z")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(QONNX, 1)],
                          ir_version=8)
    with pytest.raises(BnncError, match="q_dyn.*bit width"):
        rewrite_custom_ops(m)


# --- cross-checks against the qonnx package's executor -----------------------------------------


def _run_ours(model, x):
    """x carries the model's batch-1 dim; run() drops it per sample and stacks: same shape back."""
    return OriginalModel(model).run(x)


def _run_qonnx(model, x):
    pytest.importorskip("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.ir_version = 8  # custom nodes run in Python, but keep anything onnxruntime sees loadable
    return execute_onnx(ModelWrapper(m), {"x": x})["y"]


def _assert_same(model, x):
    ours, ref = _run_ours(model, x), _run_qonnx(model, x)
    assert ours.shape == ref.shape
    np.testing.assert_array_equal(ours, ref.astype(np.float32))


def _quant_input(rng, shape, scale, zeropt, bits):
    """Values spanning (and exceeding) the quantizer's range, a third of them exact ties."""
    span = 2.0 ** bits + 4
    v = rng.uniform(-span, span, size=shape).astype(np.float32)
    ties = rng.integers(-2 * span, 2 * span, size=shape).astype(np.float32) / 2
    v = np.where(rng.random(shape) < 0.33, ties, v)
    v[..., 0] = 0.0
    return ((v - zeropt) * scale).astype(np.float32)


MODES = ["ROUND", "HALF_EVEN", "CEIL", "FLOOR", "UP", "DOWN", "HALF_UP", "HALF_DOWN"]


@pytest.mark.parametrize("opset", [9, 11, 13, 20])
@pytest.mark.parametrize("mode", MODES)
def test_quant_matches_qonnx(mode, opset):
    pytest.importorskip("qonnx")
    rng = np.random.default_rng(100 * MODES.index(mode) + opset)
    shape = (1, 3, 4, 5)
    for bits, signed, narrow in itertools.product([1, 2, 3, 4, 8], [0, 1], [0, 1]):
        for scale, zeropt in [(np.float32(1.0), np.float32(0.0)), (np.float32(0.25), np.float32(1.0)),
                              (rng.uniform(0.1, 2, (1, 3, 1, 1)).astype(np.float32), np.float32(0.0))]:
            consts = {"scale": scale, "zeropt": zeropt, "bitwidth": np.float32(bits)}
            m = _single_node("Quant", QONNX, shape, consts,
                             {"signed": signed, "narrow": narrow, "rounding_mode": mode}, opset=opset)
            _assert_same(m, _quant_input(rng, shape, scale, zeropt, bits))


def test_quant_with_an_integer_zero_point_runs_in_float():
    """QONNX model zoo exports (QKeras jet tagging) store the zero point as int64."""
    rng = np.random.default_rng(7)
    shape = (1, 3, 4, 5)
    consts = {"scale": np.float32(0.25), "zeropt": np.int64(0), "bitwidth": np.float32(6)}
    m = _single_node("Quant", QONNX, shape, consts, {"signed": 1, "narrow": 0, "rounding_mode": "ROUND"})
    zp = next(t for t in m.graph.initializer if t.name == "zeropt")
    zp.CopyFrom(numpy_helper.from_array(np.int64(0), "zeropt"))
    x = _quant_input(rng, shape, np.float32(0.25), np.float32(0.0), 6)
    y = _run_ours(m, x)
    np.testing.assert_array_equal(y, np.clip(np.round(x / np.float32(0.25)), -32, 31) * np.float32(0.25))


def test_quant_round_to_zero_is_qonnx_down():
    pytest.importorskip("qonnx")
    rng = np.random.default_rng(1)
    consts = {"scale": np.float32(0.5), "zeropt": np.float32(0.0), "bitwidth": np.float32(4)}
    x = _quant_input(rng, (1, 64), 0.5, 0.0, 4)
    attrs = {"signed": 1, "narrow": 0}
    ours = _run_ours(_single_node("Quant", QONNX, (1, 64), consts, {**attrs, "rounding_mode": "ROUND_TO_ZERO"}), x)
    ref = _run_qonnx(_single_node("Quant", QONNX, (1, 64), consts, {**attrs, "rounding_mode": "DOWN"}), x)
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("opset", [9, 13])
def test_round_half_even_before_opset_11(opset):
    """Round is emulated before opset 11; check it on ties, large values and signs against numpy."""
    v = np.concatenate([np.arange(-10, 10.5, 0.5), [-0.49999997, 0.49999997, 1.5000001, -2.4999998,
                                                     1e6 + 0.5, 2.0**23 + 1, -(2.0**23) - 3, 3e9]]).astype(np.float32)
    consts = {"scale": np.float32(1.0), "zeropt": np.float32(0.0), "bitwidth": np.float32(32)}
    m = _single_node("Quant", QONNX, (1, v.size), consts, {"signed": 1, "narrow": 0, "rounding_mode": "ROUND"},
                     opset=opset)
    expected = np.round(np.clip(v, np.float32(-(2.0**31)), np.float32(2.0**31 - 1)))
    np.testing.assert_array_equal(_run_ours(m, v[None])[0], expected)


@pytest.mark.parametrize("opset", [9, 12, 20])
@pytest.mark.parametrize("domain", ["onnx.brevitas", QONNX, "finn.custom_op.general"])
def test_bipolar_quant_matches_qonnx(domain, opset):
    pytest.importorskip("qonnx")
    rng = np.random.default_rng(2)
    shape = (1, 4, 3, 3)
    for scale in [np.float32(1.0), np.float32(0.37), rng.uniform(0.1, 2, (4, 1, 1)).astype(np.float32)]:
        x = rng.normal(size=shape).astype(np.float32)
        x[0, :, 0, 0] = [0.0, -0.0, 1e-30, -1e-30]
        ours = _run_ours(_single_node("BipolarQuant", domain, shape, {"scale": scale}, {}, opset=opset), x)
        ref = _run_qonnx(_single_node("BipolarQuant", QONNX, shape, {"scale": scale}, {}, opset=opset), x)
        np.testing.assert_array_equal(ours, ref)
        assert set(np.unique(np.sign(ours))) <= {-1.0, 1.0}


MT_CASES = [  # x shape, data_layout attribute (None: absent), channel axis
    ((1, 6), None, 1),
    ((1, 6, 5, 5), None, 1),
    ((1, 5, 6), None, 2),  # 3-D without a layout: qonnx reads NWC
    ((1, 5, 5, 6), "NHWC", 3),
    ((1, 6, 5, 5), "NCHW", 1),
    ((1, 6, 2, 2, 2), None, 1),
]


def _threshold_input(rng, shape, cdim, t):
    """Random values, half of them exactly equal to one of their own channel's thresholds."""
    chan_last = tuple(d for i, d in enumerate(shape) if i != cdim) + (shape[cdim],)
    rows = np.arange(shape[cdim]) % t.shape[0]
    ties = t[rows, rng.integers(0, t.shape[1], size=chan_last)]
    x = np.where(rng.random(chan_last) < 0.5, ties, rng.uniform(-9, 9, size=chan_last))
    return np.moveaxis(x, -1, cdim).astype(np.float32)


@pytest.mark.parametrize("opset", [9, 12, 13, 20])
@pytest.mark.parametrize("shape,layout,cdim", MT_CASES)
def test_multithreshold_matches_qonnx(shape, layout, cdim, opset):
    pytest.importorskip("qonnx")
    rng = np.random.default_rng(3)
    channels = shape[cdim]
    for rows, steps, out_scale, out_bias in [(channels, 1, 2.0, -1.0), (channels, 3, 1.0, 0.0),
                                             (1, 7, 1.0, 0.0), (channels, 15, 0.5, -3.5), (1, 1, 2.0, -1.0)]:
        t = np.sort(rng.integers(-8, 8, size=(rows, steps)), axis=1).astype(np.float32)
        x = _threshold_input(rng, shape, cdim, t)
        attrs = {"out_dtype": "INT8", "out_scale": out_scale, "out_bias": out_bias}
        if layout is not None:
            attrs["data_layout"] = layout
        for domain in (QONNX, "finn.custom_op.general"):
            ours = _run_ours(_single_node("MultiThreshold", domain, shape, {"thresh": t}, attrs, opset=opset), x)
            ref = _run_qonnx(_single_node("MultiThreshold", QONNX, shape, {"thresh": t}, attrs, opset=opset), x)
            np.testing.assert_array_equal(ours, ref)


def test_multithreshold_semantics_by_hand():
    """Independent of qonnx: channel c counts thresholds T[c, b] <= x, then scale and bias."""
    t = np.array([[0.0, 1.0, 2.0], [-1.0, 5.0, 9.0]], dtype=np.float32)
    x = np.array([[[1.0, -0.5], [5.0, 10.0]]], dtype=np.float32)  # (N=1, C=2, W=2) with layout NCW
    m = _single_node("MultiThreshold", "finn.custom_op.general", x.shape, {"thresh": t},
                     {"out_dtype": "INT4", "out_scale": 2.0, "out_bias": -1.0, "data_layout": "NCW"})
    y = OriginalModel(m).run(x)
    np.testing.assert_array_equal(y, [[[2 * 2 - 1, 0 - 1], [2 * 2 - 1, 3 * 2 - 1]]])


def test_run_shapes():
    """(N, ...) in; batch-1 dim dropped; one-element outputs squeezed to (N,)."""
    consts = {"scale": np.float32(1.0)}
    m = _single_node("BipolarQuant", QONNX, (1, 3), consts, {})
    om = OriginalModel(m)
    assert (om.input_name, om.input_shape, om.output_name) == ("x", (1, 3), "y")
    y = om.run(np.array([[1.0, -1.0, 0.0], [-2.0, 0.5, -0.1]], dtype=np.float32))
    np.testing.assert_array_equal(y, [[1, -1, 1], [-1, 1, -1]])
    one = OriginalModel(_single_node("BipolarQuant", QONNX, (1, 1), consts, {}))
    np.testing.assert_array_equal(one.run(np.array([[-3.0], [3.0], [0.0]], dtype=np.float32)), [-1, 1, 1])
