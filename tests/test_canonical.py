"""The canonical frontend stage: each rewrite on small graphs built here and on the exporters' own
models in ../shared/models/wild, checked against onnxruntime on the original graph."""


import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnnc.canonical import canonicalize
from bnnc.canonical.bipolar_sign import bipolar_sign_from_offset_sign
from bnnc.canonical.clamps_to_clip import clamps_to_clip
from bnnc.canonical.constant_subgraphs import fold_constant_subgraphs
from bnnc.canonical.dense_on_map import dense_on_map_to_pointwise_conv
from bnnc.canonical.layout_transposes import sink_layout_transposes
from bnnc.canonical.one_d_as_two_d import lift_1d_to_2d
from bnnc.canonical.pad_into_window import merge_pads_into_windows
from bnnc.canonical.pass_through_ops import remove_pass_through_ops
from bnnc.canonical.pool_ceil import pool_ceil_to_floor
from bnnc.canonical.qcdq_clip import qcdq_clip_to_quant
from bnnc.canonical.qdq_layout import dequantize_before_layout_ops
from bnnc.canonical.round_quantizer import round_quantizer_to_quant
from bnnc.canonical.spatial_reduce import spatial_reduce_to_global_pool
from bnnc.canonical.graph_edit import ste_exact_below
from bnnc.canonical.ste_sign import probe_values, simplify_ste_sign
from bnnc.canonical.ternary_sign import ternary_sign_to_threshold
from bnnc.canonical.uniform_constants import scalarize_uniform_constants
from bnnc.errors import BnncError
from bnnc.onnx_loader import fold_with_origin, foldable, load, read_model
from bnnc.original import OriginalModel, static_shapes
from bnnc import driver
from bnnc.cli import main
from bnnc.pipeline import Options, compile_file, compile_graph
from bnnc.testing.random_models import random_model

from .helpers import assert_matches_original

WILD = ["birealnet18", "birealnet18_dynamo_extdata", "brevitas_mobilenet_v1_4w4a", "brevitas_qcdq_ternres",
        "larq_quicknet_small", "larq_quicknet_small_nchw", "mainsub_nin", "ttq_squeezenet",
        "zoo_qkeras_jettagging", "zoo_unsw_nb15_mlp_w2a2"]


# ----------------------------------------------------------------------------- helpers

def make(nodes, x_shape, inits=(), opset=17, out="y", x_type=TensorProto.FLOAT, domains=()):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", x_type, x_shape)],
                          [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(np.asarray(v), k) for k, v in dict(inits).items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)]
                          + [helper.make_opsetid(d, 1) for d in domains])
    m.ir_version = 9
    return m


def run(model, x):
    """The model in onnxruntime (QONNX ops through bnnc's standard-op rewrite)."""
    return OriginalModel(model).run(x)


def assert_same(a_model, b_model, x):
    a, b = run(a_model, x), run(b_model, x)
    assert a.dtype == b.dtype == np.float32
    assert np.array_equal(a, b, equal_nan=True), np.abs(a.astype(np.float64) - b).max()


def ops(model):
    return [n.op_type for n in model.graph.node]


def wild(shared_models, name):
    return shared_models / "wild" / f"{name}.onnx"


def wild_x(shared_models, name, n=4):
    return np.load(shared_models / "wild" / f"{name}_x.npy")[:n]


def serialized(model):
    return model.SerializeToString(deterministic=True)


# ----------------------------------------------------------------------------- external data

def _external_model(tmp_path, location, offset=0, length=None, data=None, name="w"):
    """A Conv model whose weight lives in an external file; returns (path, weight)."""
    w = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3) / 7
    (tmp_path / "model").mkdir(exist_ok=True)
    if data is not None:
        data.write_bytes(b"\0" * offset + w.tobytes())
    t = numpy_helper.from_array(w, name)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", str(offset)),
                 ("length", str(w.nbytes if length is None else length))):
        e = t.external_data.add()
        e.key, e.value = k, v
    g = helper.make_graph([helper.make_node("Conv", ["x", name], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [t])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    path = tmp_path / "model" / "m.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(m.SerializeToString())
    return path, w


def test_external_data_read_from_the_model_folder(tmp_path, monkeypatch):
    (tmp_path / "model" / "weights").mkdir(parents=True)
    path, w = _external_model(tmp_path, "weights/w.bin", offset=12, data=tmp_path / "model" / "weights" / "w.bin")
    monkeypatch.chdir(tmp_path)  # a different working directory: locations are relative to the model
    m = read_model(path)
    got = numpy_helper.to_array(m.graph.initializer[0])
    assert np.array_equal(got, w)
    assert m.graph.initializer[0].data_location == TensorProto.DEFAULT


@pytest.mark.parametrize("case", ["missing", "absolute", "dotdot", "symlink", "offset", "length", "size"])
def test_external_data_hostile_locations_are_refused(tmp_path, case):
    outside = tmp_path / "outside.bin"
    (tmp_path / "model").mkdir()
    kw = {"missing": dict(location="nope.bin"),
          "absolute": dict(location=str(outside), data=outside),
          "dotdot": dict(location="../outside.bin", data=outside),
          "symlink": dict(location="link.bin", data=outside),
          "offset": dict(location="w.bin", offset=0, data=tmp_path / "model" / "w.bin"),
          "length": dict(location="w.bin", length=10_000, data=tmp_path / "model" / "w.bin"),
          "size": dict(location="w.bin", length=8, data=tmp_path / "model" / "w.bin")}[case]
    if case == "symlink":
        (tmp_path / "model" / "link.bin").symlink_to(outside)
    path, w = _external_model(tmp_path, **kw)
    if case == "offset":  # an offset past the end of the file
        m = onnx.load(path, load_external_data=False)
        for e in m.graph.initializer[0].external_data:
            if e.key == "offset":
                e.value = str(w.nbytes + 1)
        path.write_bytes(m.SerializeToString())
    with pytest.raises(BnncError) as e:
        read_model(path)
    msg = str(e.value)
    assert "'w'" in msg and "\n" not in msg
    assert {"missing": "does not exist", "absolute": "absolute", "dotdot": "outside", "symlink": "outside",
            "offset": "beyond", "length": "beyond", "size": "need"}[case] in msg


def test_external_data_without_folder_is_refused(tmp_path):
    path, _ = _external_model(tmp_path, "w.bin", data=tmp_path / "model" / "w.bin")
    m = onnx.load(path, load_external_data=False)
    with pytest.raises(BnncError, match="'w'"):
        canonicalize(m)
    assert np.array_equal(numpy_helper.to_array(canonicalize(m, path.parent).graph.initializer[0]),
                          numpy_helper.to_array(read_model(path).graph.initializer[0]))


def test_external_data_wild_model_from_another_directory(shared_models, tmp_path, monkeypatch):
    path = wild(shared_models, "birealnet18_dynamo_extdata")
    monkeypatch.chdir(tmp_path)
    m = read_model(path)
    assert not any(t.data_location == TensorProto.EXTERNAL for t in m.graph.initializer)
    x = wild_x(shared_models, "birealnet18_dynamo_extdata", 1)  # the export has a static batch of 1
    opts = ort.SessionOptions()  # as OriginalModel runs a model: no graph optimizations
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    expected = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.array_equal(run(m, x), expected)
    assert np.array_equal(run(canonicalize(m, path.parent), x), expected)


def test_external_data_model_compiles_from_another_directory(shared_models, tmp_path, monkeypatch):
    """End to end: external data, folded latent weights and STE signs of the dynamo export, read from
    a working directory that is not the model's."""
    monkeypatch.chdir(tmp_path)
    model, graph = compile_file(wild(shared_models, "birealnet18_dynamo_extdata"),
                                Options(input_scale=0.0078125, input_range=(0, 255)))
    assert "Less" in ops(model)  # the original, for verify: its STE sign as exported
    assert sum(type(op).__name__ == "Conv" for op in graph.ops()) == 21  # 20 Conv nodes and the Linear


# ----------------------------------------------------------------------------- constant subgraphs

def test_fold_latent_weight_binarisation():
    rng = np.random.default_rng(1)
    latent = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Abs", ["w"], ["a"]),
             helper.make_node("ReduceMean", ["a", "axes"], ["m"], keepdims=1),
             helper.make_node("Sign", ["w"], ["s"]),
             helper.make_node("Mul", ["m", "s"], ["wb"]),
             helper.make_node("Clip", ["w", "lo", "hi"], ["c"]),
             helper.make_node("Sub", ["wb", "c"], ["d"]),
             helper.make_node("Add", ["d", "c"], ["wq"]),
             helper.make_node("Constant", [], ["lo"], value=numpy_helper.from_array(np.float32(-1))),
             helper.make_node("Conv", ["x", "wq"], ["y"], pads=[1, 1, 1, 1])]
    m = make(nodes, [1, 3, 6, 6], {"w": latent, "axes": np.array([1, 2, 3], np.int64), "hi": np.float32(1)},
             opset=18)
    c = fold_constant_subgraphs(m)
    assert ops(c) == ["Conv"]
    x = rng.standard_normal((5, 3, 6, 6)).astype(np.float32)
    assert_same(m, c, x)


def test_fold_keeps_quantizer_integers_for_the_loader():
    """QCDQ weights: QuantizeLinear and Clip fold into integers, DequantizeLinear stays, so the
    loader still records the weight as integers times a scale."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["w", "s", "zp"], ["q"]),
             helper.make_node("Clip", ["q", "lo", "hi"], ["qc"]),
             helper.make_node("DequantizeLinear", ["qc", "s", "zp"], ["wd"]),
             helper.make_node("Conv", ["x", "wd"], ["y"])]
    m = make(nodes, [1, 3, 4, 4], {"w": w, "s": np.float32(0.5), "zp": np.int8(0),
                                   "lo": np.int8(-1), "hi": np.int8(1)})
    c = fold_constant_subgraphs(m)
    assert ops(c) == ["DequantizeLinear", "Conv"]
    assert numpy_helper.to_array(next(t for t in c.graph.initializer if t.name == "qc")).dtype == np.int8
    lm, origins = load(c), {}
    for node in lm.nodes:  # what the lowering does with the nodes on constants
        if foldable(node, lm.consts):
            fold_with_origin(node, lm.consts, origins)
    assert set(np.unique(origins["wd"][0])) <= {-1, 0, 1}
    assert_same(m, c, rng.standard_normal((3, 3, 4, 4)).astype(np.float32))


def test_fold_leaves_custom_domain_ops():
    nodes = [helper.make_node("Quant", ["w", "s", "z", "b"], ["wq"], domain="qonnx.custom_op.general",
                              signed=1, narrow=1, rounding_mode="ROUND"),
             helper.make_node("Conv", ["x", "wq"], ["y"])]
    m = make(nodes, [1, 2, 3, 3], {"w": np.ones((2, 2, 1, 1), np.float32), "s": np.float32(1),
                                   "z": np.float32(0), "b": np.float32(2)}, domains=["qonnx.custom_op.general"])
    assert ops(fold_constant_subgraphs(m)) == ["Quant", "Conv"]


@pytest.mark.parametrize("name", ["birealnet18", "mainsub_nin", "brevitas_qcdq_ternres", "ttq_squeezenet"])
def test_fold_wild(shared_models, name):
    m = read_model(wild(shared_models, name))
    c = fold_constant_subgraphs(m)
    consts = {t.name for t in c.graph.initializer}
    for n in c.graph.node:  # what is left on constants only: the quantizers the loader reads
        if n.input and all(i in consts or not i for i in n.input):
            assert n.op_type == "DequantizeLinear" or n.domain not in ("", "ai.onnx"), n.op_type
    assert "Constant" not in ops(c)
    assert_same(m, c, wild_x(shared_models, name))


# ----------------------------------------------------------------------------- layout transposes

def test_transposes_sink_and_cancel():
    rng = np.random.default_rng(3)
    c = 4
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["a"], ["an"], perm=[0, 2, 3, 1]),
             helper.make_node("Add", ["an", "bias"], ["b"]),           # (C,) on the last axis
             helper.make_node("Mul", ["b", "gain"], ["m"]),            # (1, 1, 1, C)
             helper.make_node("Relu", ["m"], ["r"]),
             helper.make_node("Less", ["r", "half"], ["lt"]),
             helper.make_node("Where", ["lt", "r", "neg"], ["wh"]),
             helper.make_node("Clip", ["wh", "lo", "hi"], ["cl"]),
             helper.make_node("Concat", ["cl", "r"], ["cat"], axis=3),
             helper.make_node("Pad", ["cat", "pads", "one"], ["p"]),
             helper.make_node("ReduceMax", ["p", "ax"], ["peak"], keepdims=1),
             helper.make_node("Sub", ["p", "peak"], ["centred"]),
             helper.make_node("Softmax", ["centred"], ["sm"], axis=-1),
             helper.make_node("Transpose", ["sm"], ["back"], perm=[0, 3, 1, 2]),
             helper.make_node("Conv", ["back", "w2"], ["y"])]
    inits = {"w1": rng.standard_normal((c, 3, 3, 3)).astype(np.float32),
             "bias": rng.standard_normal(c).astype(np.float32),
             "gain": rng.standard_normal((1, 1, 1, c)).astype(np.float32),
             "half": np.float32(0.5), "neg": rng.standard_normal((1, 5, 1, c)).astype(np.float32),
             "lo": np.float32(-0.25), "hi": np.float32(2.0),
             "pads": np.array([0, 1, 0, 0, 0, 0, 2, 0], np.int64), "one": np.float32(1.0),
             "ax": np.array([1, 2], np.int64),
             "w2": rng.standard_normal((3, 2 * c, 1, 1)).astype(np.float32)}
    m = make(nodes, [1, 3, 5, 5], inits, opset=18)
    out = sink_layout_transposes(m)
    assert "Transpose" not in ops(out)
    assert_same(m, out, rng.standard_normal((6, 3, 5, 5)).astype(np.float32) * 3)


def test_unit_axis_reshapes_are_transposes():
    """tf2onnx writes the transposes of (N, C, 1, 1) tensors as Reshapes."""
    rng = np.random.default_rng(4)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"]),
             helper.make_node("Reshape", ["a", "nhwc"], ["an"]),
             helper.make_node("Sign", ["an"], ["s"]),
             helper.make_node("Add", ["s", "bias"], ["b"]),
             helper.make_node("Reshape", ["b", "nchw"], ["back"]),
             helper.make_node("Conv", ["back", "w2"], ["y"])]
    m = make(nodes, [1, 3, 3, 3], {"w1": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
                                   "nhwc": np.array([-1, 1, 1, 8], np.int64),
                                   "bias": rng.standard_normal(8).astype(np.float32),
                                   "nchw": np.array([-1, 8, 1, 1], np.int64),
                                   "w2": rng.standard_normal((2, 8, 1, 1)).astype(np.float32)})
    out = sink_layout_transposes(m)
    assert "Transpose" not in ops(out) and "Reshape" not in ops(out)
    assert_same(m, out, rng.standard_normal((4, 3, 3, 3)).astype(np.float32))


@pytest.mark.parametrize("opset,sizes", [(13, [1, 3]), (13, None), (11, [2, 2])])
def test_transposes_sink_through_split(opset, sizes):
    """tf2onnx's NHWC Split of the channels: the split axis follows the Transpose, each part gets its own."""
    rng = np.random.default_rng(5)
    split_in, split_attr, inits = ["an"], {}, {"w1": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                                              "bias": rng.standard_normal(4).astype(np.float32)}
    if sizes is not None and opset >= 13:
        inits["sizes"] = np.array(sizes, np.int64)
        split_in.append("sizes")
    elif sizes is not None:
        split_attr = {"split": sizes}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["a"], ["an"], perm=[0, 2, 3, 1]),
             helper.make_node("Split", split_in, ["p0", "p1"], axis=-1, **split_attr),
             helper.make_node("Relu", ["p0"], ["r0"]),
             helper.make_node("Transpose", ["r0"], ["t0"], perm=[0, 3, 1, 2]),
             helper.make_node("Transpose", ["p1"], ["t1"], perm=[0, 3, 1, 2]),
             helper.make_node("Concat", ["t1", "t0"], ["y"], axis=1)]
    m = make(nodes, [1, 3, 5, 5], inits, opset=opset)
    out = sink_layout_transposes(m)
    assert "Transpose" not in ops(out)
    split = next(n for n in out.graph.node if n.op_type == "Split")
    assert next(helper.get_attribute_value(a) for a in split.attribute if a.name == "axis") == 1
    assert_same(m, out, rng.standard_normal((4, 3, 5, 5)).astype(np.float32))


def test_add_of_channel_padding_into_concat_part():
    """MeliusNet's improvement: cat + Pad(c, zero channels before) is Concat(h, d + c), exactly."""
    from bnnc.canonical.padded_add import add_into_concat_part

    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["h", "w2"], ["d"], pads=[1, 1, 1, 1]),
             helper.make_node("Concat", ["h", "d"], ["cat"], axis=1),
             helper.make_node("Conv", ["cat", "w3"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Pad", ["c", "pads"], ["cp"]),
             helper.make_node("Add", ["cat", "cp"], ["s"]),
             helper.make_node("Mul", ["s", "cat"], ["y"])]  # the Concat has another reader: it stays
    m = make(nodes, [1, 3, 5, 5], {"w1": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                                   "w2": rng.standard_normal((2, 4, 3, 3)).astype(np.float32),
                                   "w3": rng.standard_normal((2, 6, 3, 3)).astype(np.float32),
                                   "pads": np.array([0, 4, 0, 0, 0, 0, 0, 0], np.int64)}, opset=13)
    out = add_into_concat_part(m)
    assert ops(out).count("Pad") == 0 and ops(out).count("Concat") == 2
    assert_same(m, out, rng.standard_normal((4, 3, 5, 5)).astype(np.float32))
    misaligned = add_into_concat_part(make(nodes, [1, 3, 5, 5], {**{t.name: numpy_helper.to_array(t)
                                                                   for t in m.graph.initializer},
                                                                "pads": np.array([0, 3, 0, 0, 0, 1, 0, 0], np.int64)},
                                           opset=13))
    assert "Pad" in ops(misaligned)


def test_transpose_against_an_untransposed_operand_stays():
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Add", ["t", "x2"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 2]),
                                       helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, 2, 2, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert ops(sink_layout_transposes(m)) == ["Transpose", "Add"]


@pytest.mark.parametrize("name", ["larq_quicknet_small", "larq_quicknet_small_nchw"])
def test_larq_transposes(shared_models, name):
    m = read_model(wild(shared_models, name))
    c = canonicalize(m)
    transposes = [n for n in c.graph.node if n.op_type == "Transpose"]
    if name.endswith("nchw"):
        assert transposes == []
    else:  # NHWC input: the one Transpose left reads the model's input
        assert len(transposes) == 1
        assert transposes[0].input[0] == c.graph.input[0].name
        assert list(helper.get_attribute_value(transposes[0].attribute[0])) == [0, 3, 1, 2]
    assert "Sign" not in ops(c) and ops(c).count("BipolarQuant") == 16
    assert_same(m, c, wild_x(shared_models, name))


# ----------------------------------------------------------------------------- STE sign

def _bireal_sign(x="x", out="y"):
    """Bi-Real's ApproxSign as torch's legacy exporter writes it."""
    def k(v):
        return numpy_helper.from_array(np.float32(v))
    n = [helper.make_node("Constant", [], [f"c{v}"], value=k(v)) for v in (-1, 0, 1, 2)]
    n[0].output[0], n[1].output[0], n[2].output[0], n[3].output[0] = "cm1", "c0", "c1", "c2"
    n += [helper.make_node("Sign", [x], ["s"]),
          helper.make_node("Less", [x, "cm1"], ["l1"]), helper.make_node("Less", [x, "c0"], ["l2"]),
          helper.make_node("Less", [x, "c1"], ["l3"]),
          helper.make_node("Cast", ["l1"], ["m1"], to=TensorProto.FLOAT),
          helper.make_node("Cast", ["l2"], ["m2"], to=TensorProto.FLOAT),
          helper.make_node("Cast", ["l3"], ["m3"], to=TensorProto.FLOAT),
          helper.make_node("Mul", ["m1", "cm1"], ["o1"]),
          helper.make_node("Mul", [x, x], ["xx"]), helper.make_node("Mul", [x, "c2"], ["x2"]),
          helper.make_node("Add", ["xx", "x2"], ["q1"]), helper.make_node("Sub", ["c1", "m1"], ["n1"]),
          helper.make_node("Mul", ["q1", "n1"], ["t1"]), helper.make_node("Add", ["o1", "t1"], ["o2"]),
          helper.make_node("Mul", ["o2", "m2"], ["o3"]),
          helper.make_node("Neg", [x], ["nx"]), helper.make_node("Mul", ["nx", x], ["nxx"]),
          helper.make_node("Add", ["nxx", "x2"], ["q2"]), helper.make_node("Sub", ["c1", "m2"], ["n2"]),
          helper.make_node("Mul", ["q2", "n2"], ["t2"]), helper.make_node("Add", ["o3", "t2"], ["o4"]),
          helper.make_node("Mul", ["o4", "m3"], ["o5"]), helper.make_node("Sub", ["c1", "m3"], ["n3"]),
          helper.make_node("Add", ["o5", "n3"], ["p"]),
          helper.make_node("Sub", ["s", "p"], ["d"]), helper.make_node("Add", ["d", "p"], ["ste"]),
          helper.make_node("Mul", ["ste", "gain"], [out])]
    return n


def _sign_test_inputs():
    rng = np.random.default_rng(5)
    special = np.concatenate([probe_values(), [0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 1e-45, -1e-45]]).astype(np.float32)
    near0 = rng.uniform(-1e-6, 1e-6, 4000).astype(np.float32)
    normal = rng.standard_normal(4000).astype(np.float32)
    v = np.concatenate([special, near0, normal])
    v = v[np.abs(v) < 1.8e19]  # beyond sqrt(FLT_MAX) the polynomial itself is NaN (see ste_sign)
    return np.resize(v, (v.size + 63) // 64 * 64).reshape(-1, 64)


def test_ste_sign_is_sign_on_float32():
    m = make(_bireal_sign(), [1, 64], {"gain": np.float32(3.0)})
    c = canonicalize(m)
    assert ops(c) == ["Sign", "Mul"]
    x = _sign_test_inputs()
    assert_same(m, c, x)
    assert np.array_equal(run(c, x), np.sign(x) * np.float32(3))


def test_ste_sign_with_wrong_signed_p_is_kept():
    """sign(x) - p + p with p = -0.6 * 2^-24 at x = 1 is 1 - 2^-24, not 1: not rewritten."""
    nodes = [helper.make_node("Sign", ["x"], ["s"]),
             helper.make_node("Mul", ["x", "k"], ["p"]),
             helper.make_node("Sub", ["s", "p"], ["d"]),
             helper.make_node("Add", ["d", "p"], ["y"])]
    m = make(nodes, [1, 4], {"k": np.float32(-0.6 * 2.0**-24)})
    assert run(m, np.ones((1, 4), np.float32))[0, 0] == np.float32(1 - 2.0**-24)
    assert ops(simplify_ste_sign(m)) == ["Sign", "Mul", "Sub", "Add"]


@pytest.mark.parametrize("name", ["birealnet18", "birealnet18_dynamo_extdata"])
def test_ste_sign_wild(shared_models, name):
    m = read_model(wild(shared_models, name))
    c = canonicalize(m)
    assert not {"Less", "Cast", "Sub", "Neg", "Abs", "ReduceMean"} & set(ops(c))
    assert ops(c).count("Sign") == 16
    assert_same(m, c, wild_x(shared_models, name))


@pytest.mark.parametrize("order", ["x + d", "d + x"])
@pytest.mark.parametrize("sign", ["Sign", "Where"])
def test_detached_ste_sign_is_sign_below_2_pow_24(order, sign):
    """PyTorch's x + (sign(x) - x).detach() (torch.sign, or torch.where(x >= 0, 1., -1.)):
    rewritten to the sign, exactly where |x| < 2^24; the bound is recorded in the model's metadata
    for the fold pass to check, and beyond it the original is not a sign."""
    nodes = [helper.make_node("Sign", ["x"], ["s"]) if sign == "Sign" else None,
             helper.make_node("Sub", ["s", "x"], ["d"]),
             helper.make_node("Add", ["x", "d"] if order == "x + d" else ["d", "x"], ["ste"]),
             helper.make_node("Mul", ["ste", "gain"], ["y"])]
    inits = {"gain": np.float32(2.0)}
    if sign == "Where":
        nodes[:1] = [helper.make_node("GreaterOrEqual", ["x", "zero"], ["ge"]),
                     helper.make_node("Where", ["ge", "one", "minus"], ["s"])]
        inits.update(zero=np.float32(0), one=np.float32(1), minus=np.float32(-1))
    m = make(nodes, [1, 64], inits)
    c = canonicalize(m)
    assert ops(c) == (["Sign", "Mul"] if sign == "Sign" else ["BipolarQuant", "Mul"])
    assert ste_exact_below(c) == {c.graph.node[0].name: 2.0**24}
    x = _sign_test_inputs()
    x = x[np.all(np.abs(x) < 2.0**24, axis=1)]
    assert_same(m, c, x)
    big = np.full((1, 64), 2.0**24 + 2, np.float32)
    assert run(m, big)[0, 0] != run(c, big)[0, 0]  # the original's cancellation


def test_quantizer_straight_through_estimator_is_the_quantizer():
    """DoReFa's activations in PyTorch code, x + (round(clamp(x, 0, 1) * 3) / 3 - x).detach(): the
    quantizer itself (a QONNX Quant after round_quantizer), exact below 2^24, the bound recorded
    for the Round whose name the Quant takes."""
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["c"], name="clip"),
             helper.make_node("Mul", ["c", "k"], ["ck"], name="mul"), helper.make_node("Round", ["ck"], ["r"], name="round"),
             helper.make_node("Div", ["r", "k"], ["q"], name="div"), helper.make_node("Sub", ["q", "x"], ["d"], name="sub"),
             helper.make_node("Add", ["x", "d"], ["ste"], name="add"),
             helper.make_node("Mul", ["ste", "gain"], ["y"], name="gain")]
    m = make(nodes, [1, 64], {"lo": np.float32(0), "hi": np.float32(1), "k": np.float32(3), "gain": np.float32(2)})
    c = canonicalize(m)
    assert "Sub" not in ops(c) and "Quant" in ops(c)
    assert ste_exact_below(c)["round"] == 2.0**24
    x = _sign_test_inputs()
    assert_same(m, c, x[np.all(np.abs(x) < 2.0**24, axis=1)])


def test_ste_sign_of_x_minus_x_plus_sign():
    """x - x.detach() + sign(x).detach(): (x - x) + sign(x), the sign for every finite x."""
    nodes = [helper.make_node("Sign", ["x"], ["s"]), helper.make_node("Sub", ["x", "x"], ["z"]),
             helper.make_node("Add", ["z", "s"], ["ste"]), helper.make_node("Mul", ["ste", "gain"], ["y"])]
    m = make(nodes, [1, 64], {"gain": np.float32(2.0)})
    c = canonicalize(m)
    assert ops(c) == ["Sign", "Mul"] and not ste_exact_below(c)
    assert_same(m, c, _sign_test_inputs())


@pytest.mark.parametrize("test,a,b", [("GreaterOrEqual", 1.0, -1.0), ("Less", -0.5, 0.5), ("GreaterOrEqual", 1.0, 1.0),
                                      ("Less", 1.0, -1.0)])
def test_where_sign_is_bipolar(test, a, b):
    """torch.where(x >= 0, c, -c) and torch.where(x < 0, -c, c) are BipolarQuant(x, c); other
    Where forms are left as they are."""
    nodes = [helper.make_node(test, ["x", "zero"], ["t"]), helper.make_node("Where", ["t", "a", "b"], ["y"])]
    m = make(nodes, [1, 64], {"zero": np.float32(0), "a": np.float32(a), "b": np.float32(b)})
    c = canonicalize(m)
    bipolar = (test == "GreaterOrEqual" and a > 0 and a + b == 0) or (test == "Less" and b > 0 and a + b == 0)
    assert ("BipolarQuant" in ops(c)) == bipolar
    assert_same(m, c, _sign_test_inputs())


@pytest.mark.parametrize("t", [0.05, 0.5, 1.0, 3.0])
@pytest.mark.parametrize("order", ["add_first", "sub_first"])
def test_larq_ste_tern_is_a_two_step_threshold(t, order):
    """sign(sign(x + t) + sign(x - t)) (larq's ste_tern as tf2onnx writes it): one MultiThreshold,
    bit-exact at and around +-t."""
    shifted = [helper.make_node("Add", ["t", "x"], ["xa"]), helper.make_node("Sub", ["x", "t"], ["xs"])]
    nodes = shifted + [helper.make_node("Sign", ["xa"], ["sa"]), helper.make_node("Sign", ["xs"], ["ss"]),
                       helper.make_node("Add", ["sa", "ss"] if order == "add_first" else ["ss", "sa"], ["s2"]),
                       helper.make_node("Sign", ["s2"], ["y"])]
    m = make(nodes, [1, 64], {"t": np.float32(t)})
    c = canonicalize(m)
    assert ops(c) == ["MultiThreshold"]
    near = [np.nextafter(np.float32(v), np.float32(d)) for v in (t, -t) for d in (np.inf, -np.inf)]
    x = np.concatenate([_sign_test_inputs().reshape(-1), np.float32([t, -t, *near, 0.0, -0.0])])
    x = np.resize(x, (x.size + 63) // 64 * 64).reshape(-1, 64).astype(np.float32)
    assert_same(m, c, x)
    assert set(np.unique(run(c, x))) == {-1.0, 0.0, 1.0}


def test_two_signs_of_other_shifts_stay():
    """Different shifts, or both the same way, are other functions: left as they are."""
    for a, b in (("Add", "Add"), ("Sub", "Sub")):
        nodes = [helper.make_node(a, ["x", "t"], ["xa"]), helper.make_node(b, ["x", "u"], ["xs"]),
                 helper.make_node("Sign", ["xa"], ["sa"]), helper.make_node("Sign", ["xs"], ["ss"]),
                 helper.make_node("Add", ["sa", "ss"], ["s2"]), helper.make_node("Sign", ["s2"], ["y"])]
        assert "MultiThreshold" not in ops(canonicalize(make(nodes, [1, 8], {"t": np.float32(0.5), "u": np.float32(0.5)})))
    nodes = [helper.make_node("Add", ["x", "t"], ["xa"]), helper.make_node("Sub", ["x", "u"], ["xs"]),
             helper.make_node("Sign", ["xa"], ["sa"]), helper.make_node("Sign", ["xs"], ["ss"]),
             helper.make_node("Add", ["sa", "ss"], ["s2"]), helper.make_node("Sign", ["s2"], ["y"])]
    assert "MultiThreshold" not in ops(canonicalize(make(nodes, [1, 8], {"t": np.float32(0.5), "u": np.float32(0.25)})))


def test_offset_sign_is_bipolar():
    nodes = [helper.make_node("Sign", ["x"], ["s"]), helper.make_node("Add", ["s", "c"], ["a"]),
             helper.make_node("Sign", ["a"], ["y"])]
    m = make(nodes, [1, 64], {"c": np.float32(0.1)})
    c = bipolar_sign_from_offset_sign(m)
    assert ops(c) == ["BipolarQuant"]
    x = _sign_test_inputs()
    assert_same(m, c, x)
    assert set(np.unique(run(c, x))) == {-1.0, 1.0}
    for offset in (1.5, -0.1):  # other offsets are other functions
        assert "BipolarQuant" not in ops(bipolar_sign_from_offset_sign(make(nodes, [1, 64], {"c": np.float32(offset)})))


# ----------------------------------------------------------------------------- QCDQ activations

@pytest.mark.parametrize("lo,hi,dtype,spec", [(-2, 1, np.int8, (2, 0)), (-1, 1, np.int8, (2, 1)),
                                              (-8, 7, np.int8, (4, 0)), (0, 3, np.uint8, (2, 0)),
                                              (0, 14, np.uint8, (4, 1)), (-1, 0, np.int8, None),
                                              (-3, 2, np.int8, None)])
def test_qcdq_clip_is_quant(lo, hi, dtype, spec):
    nodes = [helper.make_node("Relu", ["x"], ["r"]) if dtype == np.uint8 else helper.make_node("Neg", ["x"], ["r"]),
             helper.make_node("QuantizeLinear", ["r", "s", "zp"], ["q"]),
             helper.make_node("Clip", ["q", "lo", "hi"], ["qc"]),
             helper.make_node("DequantizeLinear", ["qc", "s", "zp"], ["y"])]
    m = make(nodes, [1, 64], {"s": np.float32(0.375), "zp": dtype(0), "lo": dtype(lo), "hi": dtype(hi)})
    c = qcdq_clip_to_quant(m)
    quant = [n for n in c.graph.node if n.op_type == "Quant"]
    if spec is None:  # a 1-bit signed range (QONNX reads it as bipolar) or no bit range at all
        assert not quant
        return
    (n,) = quant
    a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
    width = numpy_helper.to_array(next(t for t in c.graph.initializer if t.name == n.input[3]))
    assert (int(width), a["narrow"], a["signed"]) == (*spec, int(dtype == np.int8))
    rng = np.random.default_rng(10)
    ties = (np.arange(-40, 40) + 0.5) * 0.375  # x / s exactly halfway: round half to even in both
    x = np.concatenate([ties, rng.uniform(-4, 4, 560), [0.0, -0.0, 1e-30, -1e-30, 1e3, -1e3, 1e30, -1e30]])
    x = x.astype(np.float32)  # the large ones saturate the 8-bit QuantizeLinear before the Clip
    x = np.resize(x, (x.size + 63) // 64 * 64).reshape(-1, 64)
    assert_same(m, c, x)


def test_qcdq_ternres_compiles_and_matches_the_original(shared_models):
    path = wild(shared_models, "brevitas_qcdq_ternres")
    m = read_model(path)
    assert "Clip" not in ops(canonicalize(m))
    model, graph = compile_file(path, Options(input_scale=0.0078125, input_range=(0, 255)))
    assert serialized(model) == serialized(m) and "Clip" in ops(model)  # verify's original is the file's
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 4, 0))
    ref = driver.run_target(graph, "ref", inputs)
    assert_matches_original(model, graph, inputs, ref)


# ----------------------------------------------------------------------------- uniform constants

def test_uniform_quantizer_parameters_become_scalars():
    rng = np.random.default_rng(12)
    q = "qonnx.custom_op.general"
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("Quant", ["r", "s", "z", "b"], ["a"], domain=q, signed=0, narrow=0,
                              rounding_mode="ROUND"),
             helper.make_node("QuantizeLinear", ["a", "qs", "qz"], ["qa"], axis=1),
             helper.make_node("DequantizeLinear", ["qa", "qs", "qz"], ["d"], axis=1),
             helper.make_node("Mul", ["d", "one"], ["m"]),                 # (1,): exact as a scalar
             helper.make_node("Add", ["m", "varies"], ["v"]),              # not uniform: stays
             helper.make_node("Sub", ["wide", "v"], ["y"])]                # would enlarge x: stays
    m = make(nodes, [1, 4, 3, 3], {"s": np.full((1, 4, 1, 1), 0.125, np.float32), "z": np.zeros(1, np.float32),
                                   "b": np.float32(3), "qs": np.full(4, 0.25, np.float32),
                                   "qz": np.zeros(4, np.uint8), "one": np.ones(1, np.float32),
                                   "varies": np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1),
                                   "wide": np.ones((2, 4, 3, 3), np.float32)}, domains=[q])
    c = scalarize_uniform_constants(m)
    values = {t.name: numpy_helper.to_array(t) for t in c.graph.initializer}
    node = {n.op_type: n for n in c.graph.node}
    assert all(values[i].shape == () for i in node["Quant"].input[1:3])
    assert all(values[i].shape == () for i in node["QuantizeLinear"].input[1:])
    assert values[node["QuantizeLinear"].input[2]].dtype == np.uint8
    assert values[node["Mul"].input[1]].shape == ()
    assert values[node["Add"].input[1]].shape == (1, 4, 1, 1) and values[node["Sub"].input[0]].shape == (2, 4, 3, 3)
    assert_same(m, c, rng.standard_normal((5, 4, 3, 3)).astype(np.float32))


def test_mobilenet_activation_scales_become_scalars(shared_models):
    m = read_model(wild(shared_models, "brevitas_mobilenet_v1_4w4a"))
    c = canonicalize(m)
    values = {t.name: numpy_helper.to_array(t) for t in c.graph.initializer}
    activation_quants = [n for n in c.graph.node if n.op_type == "Quant" and n.input[0] not in values]
    assert activation_quants and all(values[n.input[1]].size == 1 for n in activation_quants)


# ----------------------------------------------------------------------------- pads, pools, pass-through

@pytest.mark.parametrize("window,value", [("Conv", 0.0), ("AveragePool", 0.0), ("MaxPool", -np.inf),
                                          ("Conv", 1.0), ("MaxPool", 0.0)])
def test_pad_merged_into_window(window, value):
    rng = np.random.default_rng(6)
    extra = {"Conv": {}, "AveragePool": {"kernel_shape": [3, 3], "strides": [2, 2]},
             "MaxPool": {"kernel_shape": [3, 3], "strides": [1, 2]}}[window]
    nodes = [helper.make_node("Pad", ["x", "pads", "v"], ["p"]),
             helper.make_node(window, ["p"] + (["w"] if window == "Conv" else []), ["y"], pads=[1, 0, 0, 1],
                              **extra)]
    m = make(nodes, [1, 3, 7, 6], {"pads": np.array([0, 0, 1, 1, 0, 0, 1, 0], np.int64), "v": np.float32(value),
                                   "w": rng.standard_normal((2, 3, 3, 3)).astype(np.float32)})
    if window == "AveragePool":
        for n in m.graph.node:
            if n.op_type == "AveragePool":
                n.attribute.append(helper.make_attribute("count_include_pad", 1))
    c = merge_pads_into_windows(m)
    merged = (window, value) in {("Conv", 0.0), ("AveragePool", 0.0), ("MaxPool", -np.inf)}
    assert ("Pad" not in ops(c)) == merged
    assert_same(m, c, rng.standard_normal((3, 3, 7, 6)).astype(np.float32))


@pytest.mark.parametrize("seed", range(12))
def test_pad_merged_into_random_convolutions(seed):
    """Shapes, strides, kernels, groups (depthwise too) and pads: onnxruntime gives the same bits."""
    rng = np.random.default_rng(100 + seed)
    c, k, s = int(rng.integers(1, 17)), int(rng.choice([1, 3, 5])), int(rng.choice([1, 2]))
    group = c if seed % 3 == 0 else 1
    o = c if group > 1 else int(rng.integers(1, 17))
    h, w = int(rng.integers(k, 20)), int(rng.integers(k, 20))
    pads = [0, 0, *rng.integers(0, 3, 2), 0, 0, *rng.integers(0, 3, 2)]
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"]),
             helper.make_node("Conv", ["p", "w", "b"], ["y"], pads=[int(v) for v in rng.integers(0, 2, 4)],
                              strides=[s, s], group=group)]
    m = make(nodes, [1, c, h, w], {"pads": np.array(pads, np.int64),
                                   "w": rng.standard_normal((o, c // group, k, k)).astype(np.float32),
                                   "b": rng.standard_normal(o).astype(np.float32)})
    merged = merge_pads_into_windows(m)
    assert ops(merged) == ["Conv"]
    assert_same(m, merged, rng.standard_normal((3, c, h, w)).astype(np.float32))


@pytest.mark.parametrize("keepdims", [1, 0])
def test_spatial_mean_to_global_average_pool(keepdims):
    rng = np.random.default_rng(7)
    m = make([helper.make_node("ReduceMean", ["x", "ax"], ["y"], keepdims=keepdims)], [1, 8, 7, 9],
             {"ax": np.array([-1, 2], np.int64)}, opset=18)
    c = spatial_reduce_to_global_pool(m)
    assert "ReduceMean" not in ops(c) and "GlobalAveragePool" in ops(c)
    x = (rng.standard_normal((5, 8, 7, 9)) * 10).astype(np.float32)
    a, b = run(m, x), run(c, x)
    assert a.shape == b.shape
    # not bit-exact: onnxruntime sums the window in another order for each op (see spatial_reduce)
    assert np.abs(a - b).max() <= 4 * np.finfo(np.float32).eps * np.abs(x).max()


@pytest.mark.parametrize("keepdims", [1, 0])
def test_nhwc_spatial_mean_to_global_average_pool(keepdims):
    """tf2onnx's GlobalAveragePooling2D: ReduceMean over axes 1, 2 of the NHWC tensor."""
    rng = np.random.default_rng(11)
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Transpose", ["a"], ["an"], perm=[0, 2, 3, 1]),
             helper.make_node("ReduceMean", ["an", "ax"], ["m"], keepdims=keepdims),
             helper.make_node("Reshape", ["m", "flat"], ["f"]),
             helper.make_node("MatMul", ["f", "dense"], ["y"])]
    m = make(nodes, [1, 3, 6, 5], {"w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
                                   "ax": np.array([1, 2], np.int64), "flat": np.array([-1, 8], np.int64),
                                   "dense": rng.standard_normal((8, 4)).astype(np.float32)}, opset=18)
    c = canonicalize(m)
    assert "ReduceMean" not in ops(c) and "Transpose" not in ops(c) and "GlobalAveragePool" in ops(c)
    x = rng.standard_normal((4, 3, 6, 5)).astype(np.float32)
    a, b = run(m, x), run(c, x)
    assert np.abs(a - b).max() <= 1e-5 * np.abs(a).max()  # summation order differs (see spatial_reduce)


@pytest.mark.parametrize("layout", ["squeeze", "nhwc_flatten"])
def test_dequantize_before_layout_ops(layout):
    """tf2onnx's full-integer TFLite form, QuantizeLinear -> Squeeze (or the NHWC Transpose and
    Reshape of a Flatten) -> DequantizeLinear: the DequantizeLinear moves before the layout ops,
    bit-exact in onnxruntime; a per-axis one stays."""
    rng = np.random.default_rng(3)
    if layout == "squeeze":
        mid = [helper.make_node("Squeeze", ["q", "ax"], ["m"])]
        inits = {"ax": np.array([2, 3], np.int64)}
        shape = [1, 6, 1, 1]
    else:
        mid = [helper.make_node("Transpose", ["q"], ["t"], perm=[0, 2, 3, 1]),
               helper.make_node("Reshape", ["t", "flat"], ["m"])]
        inits = {"flat": np.array([1, -1], np.int64)}
        shape = [1, 6, 2, 3]
    inits.update(s=np.float32(0.05), z=np.int8(3))
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("QuantizeLinear", ["r", "s", "z"], ["q"]),
             *mid, helper.make_node("DequantizeLinear", ["m", "s", "z"], ["y"])]
    m = make(nodes, shape, inits, opset=13)
    c = dequantize_before_layout_ops(m)
    assert ops(c)[:3] == ["Relu", "QuantizeLinear", "DequantizeLinear"]
    x = (rng.standard_normal((5, *shape[1:])) * 4).astype(np.float32)
    assert_same(m, c, x)
    per_axis = make([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=1), *mid,
                     helper.make_node("DequantizeLinear", ["m", "sv", "zv"], ["y"], axis=1)], shape,
                    {**inits, "sv": np.full(6, 0.05, np.float32), "zv": np.zeros(6, np.int8)}, opset=13)
    assert ops(dequantize_before_layout_ops(per_axis)) == ops(per_axis)


@pytest.mark.parametrize("form", ["ReduceMax18", "ReduceMax13", "GlobalMaxPool", "nhwc"])
@pytest.mark.parametrize("keepdims", [1, 0])
def test_spatial_max_to_max_pool(form, keepdims):
    """The dynamo exporter's AdaptiveMaxPool2d(1) (ReduceMax over axes 2, 3; the axes an input from
    opset 18, an attribute before), GlobalMaxPool and tf2onnx's NHWC ReduceMax: a MaxPool over the
    whole map, bit-exact in onnxruntime."""
    if form == "GlobalMaxPool" and not keepdims:
        pytest.skip("GlobalMaxPool keeps its dims")
    rng = np.random.default_rng(5)
    init = {"w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], pads=[1, 1, 1, 1])]
    if form == "ReduceMax18":
        nodes.append(helper.make_node("ReduceMax", ["a", "ax"], ["y"], keepdims=keepdims))
        init["ax"] = np.array([2, -1], np.int64)
    elif form == "ReduceMax13":
        nodes.append(helper.make_node("ReduceMax", ["a"], ["y"], axes=[2, 3], keepdims=keepdims))
    elif form == "GlobalMaxPool":
        nodes.append(helper.make_node("GlobalMaxPool", ["a"], ["y"]))
    else:
        nodes += [helper.make_node("Transpose", ["a"], ["an"], perm=[0, 2, 3, 1]),
                  helper.make_node("ReduceMax", ["an", "ax"], ["y"], keepdims=keepdims)]
        init["ax"] = np.array([1, 2], np.int64)
    m = make(nodes, [1, 3, 6, 5], init, opset=13 if form == "ReduceMax13" else 18)
    c = canonicalize(m)
    assert {"ReduceMax", "GlobalMaxPool", "Transpose"}.isdisjoint(ops(c)) and "MaxPool" in ops(c)
    x = rng.standard_normal((4, 3, 6, 5)).astype(np.float32)
    a, b = run(m, x), run(c, x)
    assert a.shape == b.shape and np.array_equal(a, b)


@pytest.mark.parametrize("size,k,s,pads", [(7, 3, 2, [0, 0, 0, 0]), (8, 3, 2, [0, 0, 0, 0]), (6, 2, 2, [1, 1, 0, 0]),
                                           (10, 3, 3, [1, 0, 1, 0]), (5, 3, 2, [1, 1, 1, 1]), (13, 3, 2, [0, 0, 0, 0])])
def test_maxpool_ceil_mode(size, k, s, pads):
    rng = np.random.default_rng(8)
    m = make([helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[k, k], strides=[s, s], pads=pads,
                               ceil_mode=1)], [1, 2, size, size + 1])
    c = pool_ceil_to_floor(m)
    assert all(a.i == 0 for n in c.graph.node for a in n.attribute if a.name == "ceil_mode")
    x = rng.standard_normal((3, 2, size, size + 1)).astype(np.float32)
    assert run(m, x).shape == run(c, x).shape
    assert_same(m, c, x)


@pytest.mark.parametrize("size,k,s,pads,include,changed", [
    (8, 2, 2, [0, 0, 0, 0], 0, True),    # ResNet-D's shortcut on an even map: ceil_mode changes nothing
    (9, 3, 3, [0, 0, 0, 0], 1, True),
    (7, 2, 2, [0, 0, 0, 0], 0, False),   # an extra window of one column: its divisor differs, left as it is
    (6, 3, 2, [1, 1, 1, 1], 1, False)])
def test_average_pool_ceil_mode_where_it_changes_no_window(size, k, s, pads, include, changed):
    m = make([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[k, k], strides=[s, s], pads=pads,
                               ceil_mode=1, count_include_pad=include)], [1, 2, size, size])
    c = pool_ceil_to_floor(m)
    ceil = [a.i for n in c.graph.node for a in n.attribute if a.name == "ceil_mode"]
    assert ceil == [0 if changed else 1]
    x = np.random.default_rng(size).standard_normal((3, 2, size, size)).astype(np.float32)
    assert_same(m, c, x)


def test_multiplication_by_a_constant_one_removed():
    """QKeras multiplies its estimator by 1.0 (either operand order); Div by 1 alike; x * 2 stays."""
    init = {"one": np.array(1.0, np.float32), "one1": np.array([1.0], np.float32), "two": np.array(2.0, np.float32)}
    nodes = [helper.make_node("Mul", ["one", "x"], ["a"]), helper.make_node("Div", ["a", "one1"], ["b"]),
             helper.make_node("Relu", ["b"], ["c"]), helper.make_node("Mul", ["c", "two"], ["y"])]
    m = make(nodes, [1, 4], init)
    c = remove_pass_through_ops(m)
    assert ops(c) == ["Relu", "Mul"] and c.graph.node[0].input[0] == "x"
    assert_same(m, c, np.random.default_rng(10).standard_normal((3, 4)).astype(np.float32))


@pytest.mark.parametrize("form", ["shape_of", "constant", "wider"])
def test_expand_before_a_broadcasting_mul(form):
    """An SE gate's `y.view(b, c, 1, 1).expand_as(x)` then `x * y` (TorchScript: Expand to Shape(x);
    dynamo: to a constant shape): the Mul reads the gate itself. Expanding beyond the other
    operand's shape changes the result's shape: that Expand stays."""
    size = [1, 3, 4, 5]
    target = {"shape_of": None, "constant": size, "wider": [2, 3, 4, 5]}[form]
    init = {}
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Sigmoid", ["p"], ["g"])]
    if target is None:
        nodes.append(helper.make_node("Shape", ["r"], ["s"]))
    else:
        init["s"] = np.array(target, np.int64)
    nodes += [helper.make_node("Expand", ["g", "s"], ["e"]), helper.make_node("Mul", ["r", "e"], ["y"])]
    m = make(nodes, size, init)
    c = remove_pass_through_ops(m)
    assert ("Expand" in ops(c)) == (form == "wider")
    assert_same(m, c, np.random.default_rng(11).standard_normal(size).astype(np.float32))


@pytest.mark.parametrize("seed,opset", [(0, 13), (1, 18)])
def test_one_d_network_lifted_to_two_d(seed, opset):
    """Conv1d / MaxPool1d / AvgPool1d with per-channel (C, 1) constants, a Concat, a Pad, a Softmax over
    L and a ReduceMean over L run on (N, C, 1, L): every output the same bits, no rank-3 activation
    left but the input's."""
    rng = np.random.default_rng(seed)
    init = {"w1": rng.standard_normal((4, 2, 5)).astype(np.float32), "b1": rng.standard_normal(4).astype(np.float32),
            "w2": rng.choice([-1.0, 1.0], (4, 8, 3)).astype(np.float32),
            "g": rng.standard_normal((4, 1)).astype(np.float32), "pads": np.array([0, 0, 1, 0, 0, 2], np.int64),
            "axes": np.array([2], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["a"], pads=[2, 2]),
             helper.make_node("Mul", ["a", "g"], ["m"]),
             helper.make_node("Sign", ["m"], ["s"]),
             helper.make_node("MaxPool", ["m"], ["p"], kernel_shape=[2], strides=[1], pads=[0, 1]),
             helper.make_node("Concat", ["s", "p"], ["cat"], axis=1),
             helper.make_node("Pad", ["cat", "pads"], ["pd"]),
             helper.make_node("Conv", ["pd", "w2"], ["c2"], strides=[2], dilations=[1]),
             helper.make_node("AveragePool", ["c2"], ["ap"], kernel_shape=[3], strides=[3]),
             helper.make_node("Softmax", ["ap"], ["sm"], axis=-1)]
    nodes.append(helper.make_node("ReduceMean", ["sm", "axes"], ["y"], keepdims=0) if opset >= 18 else
                 helper.make_node("ReduceMean", ["sm"], ["y"], axes=[2], keepdims=0))
    m = make(nodes, [1, 2, 31], init, opset=opset)
    c = lift_1d_to_2d(m)
    shapes = static_shapes(c)
    assert all(len(shapes[n.output[0]]) == 4 for n in c.graph.node if n.op_type not in ("ReduceMean",))
    x = rng.standard_normal((3, 2, 31)).astype(np.float32)
    assert_same(m, c, x)


@pytest.mark.parametrize("form", ["nhwc", "inputs_as_nchw"])
def test_transposes_of_a_quantized_model_input(form):
    """A sign of an NHWC model input before tf2onnx's layout Transpose: the Transpose moves up to the
    input (the frontend reads an NHWC input through it). With tf2onnx's inputs_as_nchw the input's
    own Transpose to NHWC sinks and cancels the layout one: no Transpose is left."""
    init = {"w": np.ones((2, 3, 1, 1), np.float32), "c": np.array(0.25, np.float32)}
    first = [helper.make_node("Transpose", ["x"], ["xn"], perm=[0, 2, 3, 1])] if form == "inputs_as_nchw" else []
    src = "xn" if first else "x"
    nodes = first + [helper.make_node("Add", [src, "c"], ["a"]), helper.make_node("Sign", ["a"], ["s"]),
                     helper.make_node("Transpose", ["s"], ["t"], perm=[0, 3, 1, 2]),
                     helper.make_node("Conv", ["t", "w"], ["y"])]
    m = make(nodes, [1, 3, 4, 5] if first else [1, 4, 5, 3], init)
    c = sink_layout_transposes(m)
    if first:
        assert "Transpose" not in ops(c)
    else:
        assert ops(c)[0] == "Transpose" and c.graph.node[0].input[0] == "x"
    x = np.random.default_rng(12).standard_normal((2, 3, 4, 5) if first else (2, 4, 5, 3)).astype(np.float32)
    assert_same(m, c, x)


@pytest.mark.parametrize("form", ["binary", "ternary"])
def test_qkeras_binary_and_ternary_as_tf2onnx_writes_them(form):
    """QKeras's binary(): Sign(x) + (1 - |Sign(x)|), a BipolarQuant; ternary(): Sign(x) * Cast(|x| >= t),
    a two-step MultiThreshold. The same values at 0, at +-t and around them."""
    init = {"one": np.array(1.0, np.float32), "t": np.array(0.33, np.float32)}
    if form == "binary":
        nodes = [helper.make_node("Sign", ["x"], ["s"]), helper.make_node("Abs", ["s"], ["a"]),
                 helper.make_node("Sub", ["one", "a"], ["d"]), helper.make_node("Add", ["s", "d"], ["y"])]
        rewrite, op = bipolar_sign_from_offset_sign, "BipolarQuant"
    else:
        nodes = [helper.make_node("Sign", ["x"], ["s"]), helper.make_node("Abs", ["x"], ["a"]),
                 helper.make_node("GreaterOrEqual", ["a", "t"], ["ge"]),
                 helper.make_node("Cast", ["ge"], ["c"], to=TensorProto.FLOAT),
                 helper.make_node("Mul", ["c", "s"], ["y"])]
        rewrite, op = ternary_sign_to_threshold, "MultiThreshold"
    m = make(nodes, [1, 12], init)
    c = rewrite(m)
    assert ops(c) == [op]
    t = np.float32(0.33)
    x = np.array([[0.0, -0.0, t, -t, np.nextafter(t, np.float32(0)), np.nextafter(-t, np.float32(0)), 1e-30, -1e-30,
                   5.0, -5.0, 0.5, -0.1]], np.float32)
    assert_same(m, c, x)


def test_identity_and_dropout_removed():
    nodes = [helper.make_node("Identity", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Dropout", ["b"], ["c"]), helper.make_node("Identity", ["c"], ["y"])]
    m = make(nodes, [1, 4])
    c = remove_pass_through_ops(m)
    assert ops(c) == ["Relu"] and c.graph.node[0].output[0] == "y"
    x = np.random.default_rng(9).standard_normal((3, 4)).astype(np.float32)
    assert_same(m, c, x)


def test_ttq_squeezenet_pools_and_identities(shared_models):
    m = read_model(wild(shared_models, "ttq_squeezenet"))
    c = canonicalize(m)
    assert "Identity" not in ops(c) and "Dropout" not in ops(c)
    assert not any(a.name == "ceil_mode" and a.i for n in c.graph.node for a in n.attribute)
    assert_same(m, c, wild_x(shared_models, "ttq_squeezenet"))


# ----------------------------------------------------------------------------- the stage as a whole

@pytest.mark.parametrize("name", WILD)
def test_canonical_wild_models_compute_the_same(shared_models, name):
    m = read_model(wild(shared_models, name))
    before = serialized(m)
    c = canonicalize(m)
    assert serialized(m) == before  # the input is not modified
    assert serialized(canonicalize(c)) == serialized(c)  # a fixed point: nothing left to rewrite
    try:
        expected = run(m, wild_x(shared_models, name))
    except BnncError as e:  # a custom op bnnc's onnxruntime rewrite cannot run (e.g. Trunc)
        pytest.skip(f"onnxruntime cannot run the original: {e}")
    except Exception as e:
        pytest.skip(f"onnxruntime cannot run the original: {str(e)[:120]}")
    assert np.array_equal(run(c, wild_x(shared_models, name)), expected)


def test_compile_file_returns_the_original_model(tmp_path):
    """`bnnc verify` runs what compile_file returns: the file's model, not the canonical rewrite."""
    model, _ = random_model(3)
    # an Identity the canonical stage removes, so original and canonical differ
    g = model.graph
    old = g.output[0].name
    for n in g.node:
        for k, o in enumerate(n.output):
            if o == old:
                n.output[k] = old + "_pre"
    g.node.append(helper.make_node("Identity", [old + "_pre"], [old], name="passthrough"))
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    original, graph = compile_file(path)
    assert serialized(original) == serialized(read_model(path))
    assert "Identity" in ops(original)
    before = serialized(original)
    compile_graph(original)
    assert serialized(original) == before


def test_verify_command_on_a_canonicalized_model(shared_models, tmp_path, monkeypatch, capsys):
    """`bnnc verify` compiles the canonical rewrite and compares it with the file's own model."""
    monkeypatch.chdir(tmp_path)
    path = wild(shared_models, "brevitas_qcdq_ternres")
    assert main(["verify", str(path), "--target", "ref", "--samples", "3", "--input-scale", "0.0078125",
                 "--input-range", "0:255"]) == 0
    assert "PASS" in capsys.readouterr().out


# ----------------------------------------------------------------------------- clamps and Round quantizers

def _edge_values(n=64, scale=1.0):
    """Random floats, ties of a grid of `scale`, signed zeros, tiny and huge values, NaN."""
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.uniform(-3, 3, 400), (np.arange(-40, 40) + 0.5) * scale,
                        [0.0, -0.0, 1e-30, -1e-30, 1.0, -1.0, 1e30, -1e30, np.nan]]).astype(np.float32)
    return np.resize(x, (x.size + n - 1) // n * n).reshape(-1, n)


@pytest.mark.parametrize("chain,opset", [
    ([("Min", 1.0), ("Max", 0.0)], 13),       # tf.clip_by_value as tf2onnx writes it
    ([("Max", -0.5), ("Min", 2.0)], 13),
    ([("Min", 0.75)], 13),
    ([("Max", 0.0), ("Clip", (-1.0, 0.5))], 13),
    ([("Min", 6.0), ("Max", 0.0)], 9),        # Clip's bounds as attributes before opset 11
])
def test_clamp_chains_become_one_clip(chain, opset):
    nodes, inits, t = [], {}, "x"
    for i, (op, c) in enumerate(chain):
        o = "y" if i == len(chain) - 1 else f"t{i}"
        if op == "Clip":
            inits[f"lo{i}"], inits[f"hi{i}"] = np.float32(c[0]), np.float32(c[1])
            nodes.append(helper.make_node("Clip", [t, f"lo{i}", f"hi{i}"], [o]))
        else:
            inits[f"c{i}"] = np.float32(c)
            nodes.append(helper.make_node(op, [f"c{i}", t] if i % 2 else [t, f"c{i}"], [o]))
        t = o
    m = make(nodes, [1, 64], inits, opset=opset)
    c = clamps_to_clip(m)
    assert ops(c) == ["Clip"]
    assert_same(m, c, _edge_values())


def test_crossing_or_shared_clamps_stay():
    inits = {"a": np.float32(0.0), "b": np.float32(1.0)}
    crossing = make([helper.make_node("Min", ["x", "a"], ["t"]), helper.make_node("Max", ["t", "b"], ["y"])],
                    [1, 8], inits)
    assert ops(clamps_to_clip(crossing)) == ["Clip", "Clip"]  # each alone, not merged
    dynamic = make([helper.make_node("Min", ["x", "x"], ["y"])], [1, 8])
    assert ops(clamps_to_clip(dynamic)) == ["Min"]


@pytest.mark.parametrize("bits,lo,hi,expect", [
    (2, 0.0, 1.0, (2, 0, 0)),     # DoReFa: clip to [0, 1], * 3, round
    (4, 0.0, 1.0, (4, 0, 0)),
    (3, -1.0, 1.0, (4, 1, 1)),    # [-7, 7]: signed narrow 4-bit
    (2, 0.0, 0.7, None),          # 0.7 * 3 is no integer: left alone
])
def test_clip_scale_round_becomes_a_quant(bits, lo, hi, expect):
    k = np.float32(2**bits - 1)
    nodes = [helper.make_node("Min", ["x", "hi"], ["t0"]), helper.make_node("Max", ["t0", "lo"], ["t1"]),
             helper.make_node("Mul", ["t1", "k"], ["t2"]), helper.make_node("Round", ["t2"], ["t3"]),
             helper.make_node("Mul", ["t3", "r"], ["y"])]
    m = make(nodes, [1, 64], {"lo": np.float32(lo), "hi": np.float32(hi), "k": k, "r": np.float32(1 / k)}, opset=13)
    c = round_quantizer_to_quant(clamps_to_clip(m))
    quant = [n for n in c.graph.node if n.op_type == "Quant"]
    if expect is None:
        assert not quant and "Round" in ops(c)
        return
    (n,) = quant
    a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
    width = numpy_helper.to_array(next(t for t in c.graph.initializer if t.name == n.input[3]))
    assert (int(width), a["signed"], a["narrow"]) == expect and "Round" not in ops(c)
    x = _edge_values(scale=1 / float(k))
    assert_same(m, c, x[:, :][~np.isnan(x).any(axis=1)])  # QONNX's Quant keeps NaN where Clip would too


def test_dorefa_block_compiles_bit_exact():
    """larq's DoReFaNet head as tf2onnx writes it: Conv (BatchNorm folded) -> MaxPool to 1 x 1 ->
    Flatten -> Min / Max -> Mul(3) -> Round -> Mul(1/3) -> MatMul: a 2-bit activation of a pooled,
    flattened layer output."""
    rng = np.random.default_rng(3)
    k = np.float32(3.0)
    inits = {"w": rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "b": rng.normal(size=8).astype(np.float32),
             "hi": np.float32(1.0), "lo": np.float32(0.0), "k": k, "r": np.float32(1 / k),
             "shape": np.array([-1, 8], np.int64), "wf": rng.normal(size=(8, 10)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[4, 4], strides=[4, 4]),
             helper.make_node("Reshape", ["p", "shape"], ["f"]),
             helper.make_node("Min", ["f", "hi"], ["c0"]), helper.make_node("Max", ["c0", "lo"], ["c1"]),
             helper.make_node("Mul", ["c1", "k"], ["m"]), helper.make_node("Round", ["m"], ["q"]),
             helper.make_node("Mul", ["q", "r"], ["d"]), helper.make_node("MatMul", ["d", "wf"], ["y"])]
    model = make(nodes, [1, 3, 4, 4], inits, opset=13)
    graph = compile_graph(model, Options(input_range=(0, 255), input_scale=1 / 255))
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 40, 0))
    ref = driver.run_target(graph, "ref", inputs)
    assert np.allclose(ref, run(model, inputs.model).reshape(ref.shape), rtol=1e-5, atol=1e-5)
    assert np.array_equal(driver.run_target(graph, "c", inputs), ref)


def test_unnamed_nodes_are_named_by_their_position():
    from bnnc.canonical.node_names import name_unnamed_nodes

    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["b"], name="Relu_2"),
             helper.make_node("Relu", ["b"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])])
    model = helper.make_model(g)
    named = name_unnamed_nodes(model)
    assert [n.name for n in named.graph.node] == ["Relu_0", "Relu_2", "Relu_2_1"]
    assert [n.name for n in model.graph.node] == ["", "Relu_2", ""]  # the input is not changed


@pytest.mark.parametrize("case", ["matmul", "gemm_trans_b", "two_readers", "dynamic_weights"])
def test_nhwc_flatten_moves_into_the_dense_weights(case):
    from bnnc.canonical.nhwc_flatten import nhwc_flatten_into_dense

    rng = np.random.default_rng(1)
    d = 4 * 3 * 5
    w = rng.normal(size=(5, d) if case == "gemm_trans_b" else (d, 5)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]),
             helper.make_node("Flatten", ["t"], ["f"]),
             helper.make_node("Sign", ["f"], ["s"]),
             helper.make_node("Mul", ["s", "e"], ["m"]),
             helper.make_node("Gemm", ["m", "w"], ["y"], transB=1) if case == "gemm_trans_b"
             else helper.make_node("MatMul", ["m", "w" if case != "dynamic_weights" else "wd"], ["y"])]
    inits = {"w": w, "e": rng.uniform(0.5, 2, d).astype(np.float32)}
    if case == "two_readers":
        nodes.append(helper.make_node("Relu", ["f"], ["y2"]))
    if case == "dynamic_weights":
        nodes.insert(0, helper.make_node("Reshape", ["w", "wshape"], ["wd"]))
        inits["wshape"] = np.array(w.shape, np.int64)
    model = make(nodes, (1, 4, 3, 5), inits)
    if case == "two_readers":
        model.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, None))
    x = rng.normal(size=(3, 4, 3, 5)).astype(np.float32)
    out = nhwc_flatten_into_dense(model)
    if case in ("two_readers", "dynamic_weights"):
        assert "Transpose" in ops(out)
        return
    assert "Transpose" not in ops(out)
    assert np.allclose(run(out, x), run(model, x), rtol=1e-6, atol=1e-5)  # the same products, another order


@pytest.mark.parametrize("form", ["tensordot", "matmul_4d", "sequence"])
def test_dense_on_a_map_is_a_pointwise_conv(form):
    """Keras's Dense on a 4-D tensor (tf2onnx: Reshape (H*W, C) -> MatMul -> Reshape (1, H, W, O))
    and nn.Linear on an (N, H, W, C) tensor become Transpose -> 1x1 Conv -> Transpose, the same
    values to float32 rounding of the reordered sums; a MatMul of a 3-D sequence stays."""
    rng = np.random.default_rng(11)
    h, w, c, o = 3, 5, 4, 6
    b = rng.standard_normal((c, o)).astype(np.float32)
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1])]
    inits = {"b": b}
    x_shape = [1, c, h, w]
    if form == "tensordot":
        inits.update(rows=np.array([h * w, c], np.int64), back=np.array([1, h, w, o], np.int64))
        nodes += [helper.make_node("Reshape", ["t", "rows"], ["r"]), helper.make_node("MatMul", ["r", "b"], ["m"]),
                  helper.make_node("Reshape", ["m", "back"], ["y"])]
    elif form == "matmul_4d":
        nodes.append(helper.make_node("MatMul", ["t", "b"], ["y"]))
    else:
        x_shape = [1, w, c]
        nodes = [helper.make_node("MatMul", ["x", "b"], ["y"])]
    m = make(nodes, x_shape, inits)
    out = dense_on_map_to_pointwise_conv(m)
    assert ("Conv" in ops(out)) == (form != "sequence") and ("MatMul" in ops(out)) == (form == "sequence")
    x = rng.standard_normal(x_shape).astype(np.float32)
    np.testing.assert_allclose(run(out, x), run(m, x), rtol=1e-5, atol=1e-5)
    if form != "sequence":  # the layout Transposes then cancel: NCHW in, one Transpose left at the output
        assert ops(sink_layout_transposes(out)).count("Transpose") == 1


# ----------------------------------------------------------------------------- Where around 0


@pytest.mark.parametrize("cmp,above,below,expect", [
    ("Greater", "u", "qu", ["PRelu"]), ("Less", "u", "qu", ["PRelu"]), ("GreaterOrEqual", "u", "zero", ["PRelu"]),
    ("LessOrEqual", "zero", "u", ["Mul", "Neg", "Relu"]), ("Greater", "pu", "qu", ["Mul", "PRelu"]),
    ("Greater", "zero", "qu", ["Mul", "Neg", "Relu"]), ("Greater", "nu", "u", ["Mul", "PRelu"]),
    ("Greater", "ru", "qu", ["Greater", "Mul", "Mul", "Where"])])
def test_where_around_zero_becomes_prelu(cmp, above, below, expect):
    """torch.where(u > 0, ..., ...) piecewise-linear activations (branches u, s u or 0) become
    PRelu (times a power of two), or -q relu(-u), with the same float32 values on every input,
    zeros, both signs and large values included; a slope above 0 that is no power of two stays."""
    from bnnc.canonical.where_prelu import where_to_prelu

    inits = {"zero": np.array(0, np.float32), "q": np.array(0.3, np.float32), "p": np.array(4, np.float32),
             "n": np.array(-0.5, np.float32), "r": np.array(1.5, np.float32)}
    branch = {"qu": ("x", "q"), "pu": ("p", "x"), "nu": ("x", "n"), "ru": ("x", "r")}
    branch = {b: v if b not in ("u", "zero") else None for b, v in branch.items()}
    nodes = [helper.make_node("Mul", list(branch[b]), [b]) for b in (above, below) if b in branch]
    names = {"u": "x", "zero": "zero"}
    a, b = names.get(above, above), names.get(below, below)
    nodes += [helper.make_node(cmp, ["x", "zero"], ["c"]),
              helper.make_node("Where", ["c", a, b] if cmp.startswith("Greater") else ["c", b, a], ["y"])]
    model = make(nodes, [4, 64], {k: v for k, v in inits.items() if any(k in n.input for n in nodes)})
    out = where_to_prelu(model)
    assert sorted(n.op_type for n in out.graph.node) == expect
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.normal(size=(2, 64)) * 10.0 ** rng.integers(-6, 6, size=(2, 64)),
                        np.zeros((1, 64)), -rng.random((1, 64))]).astype(np.float32)
    x[2, ::2] = -0.0
    assert_same(model, out, x[None])


def test_shape_inference_sees_large_weights_as_inputs_with_the_same_shapes(monkeypatch):
    """The shape-inference proxies pass large initializers as graph inputs of their type and shape
    (no weight is serialised); small ones, such as a Reshape's target, stay constants that data
    propagation reads. Both static_shapes give the same shapes as with every initializer kept."""
    from bnnc import original, validate

    rng = np.random.default_rng(0)
    init = {"w": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "shape": np.array([1, -1], np.int64),
            "d": rng.standard_normal((144, 5)).astype(np.float32)}
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"]),
                           helper.make_node("Reshape", ["c", "shape"], ["f"]),
                           helper.make_node("MatMul", ["f", "d"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(v, k) for k, v in init.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    shapes = []
    for limit in (10**9, 8):  # nothing proxied; every initializer but the Reshape's target
        monkeypatch.setattr(original, "SHAPE_PROXY_ELEMENTS", limit)
        shapes.append((original.static_shapes(model), validate.static_shapes(model, "x", (1, 3, 8, 8))))
    assert shapes[0] == shapes[1]
    assert shapes[1][1]["y"] == (1, 5) and shapes[1][0]["w"] == (4, 3, 3, 3)
    assert "w" not in shapes[1][1] and "d" not in shapes[1][1]  # validate's map names computed tensors only
    assert model.graph.initializer[0].name == "w" and len(model.graph.input) == 1  # the model is untouched


def test_constant_values_convert_an_initializer_when_first_read():
    """The rewrites' map of constants: initializers converted on first read (a large model's weights
    are not converted in every rewrite), Constant nodes' values, and the dict operations the
    rewrites use."""
    from bnnc.canonical.graph_edit import constant_values

    g = helper.make_graph([helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.int64(3))),
                           helper.make_node("Add", ["x", "a"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                          [numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "a"),
                           numpy_helper.from_array(np.array([5], np.int64), "b")])
    values = constant_values(g)
    assert values._values.keys() == {"k"} and set(values) == {"a", "b", "k"} and len(values) == 3
    assert "a" in values and "x" not in values and values.get("x") is None
    assert np.array_equal(values["a"], [1.0, 2.0]) and values["a"].dtype == np.float32
    assert "a" in values._values and "b" in values._protos  # read: converted; unread: not yet
    values["b"] = np.array([7])
    del values["k"]
    values.update({"z": np.zeros(1)})
    assert sorted(values) == ["a", "b", "z"] and int(values["b"][0]) == 7
    with pytest.raises(KeyError):
        values["k"]
