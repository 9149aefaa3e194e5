"""The frontend's handler table: one handler per ONNX op, attributes as keyword parameters with
defaults, the supported-ops list of error messages derived from it, unknown attributes refused."""

import inspect

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from bnnc import driver, ir
from bnnc.errors import BnncError
from bnnc.original import OriginalModel
from bnnc.frontend import HANDLERS, SUPPORTED_OPS
from bnnc.pipeline import compile_graph
from bnnc.testing.random_models import random_model


def test_every_handler_takes_attributes_as_keywords_with_defaults():
    for op, h in HANDLERS.items():
        params = list(inspect.signature(h.fn).parameters.values())
        assert [p.name for p in params[:2]] == ["ctx", "node"], op
        for p in params[2:]:
            assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty, (op, p)
        assert not (h.attributes & h.ignores), op


def test_supported_ops_come_from_the_registry():
    assert SUPPORTED_OPS == sorted(SUPPORTED_OPS)
    for op, h in HANDLERS.items():
        assert set(h.listed_as) <= set(SUPPORTED_OPS), op
    assert {"Conv", "Gemm", "MatMul", "Sign", "MultiThreshold", "Quant", "TopK", "ArgMax"} <= set(HANDLERS)


@pytest.mark.parametrize("op, attribute", [("Conv", "frobnicate"), ("Gemm", "transC")])
def test_unknown_attribute_is_refused(op, attribute):
    model, _ = random_model(12)
    node = next(n for n in model.graph.node if n.op_type == op)
    node.attribute.append(helper.make_attribute(attribute, 1))
    with pytest.raises(BnncError, match=f"'{node.name}' \\({op}\\) has attribute '{attribute}'") as e:
        compile_graph(model)
    assert "\n" not in str(e.value)


def test_ignored_attributes_are_accepted():
    model, _ = random_model(12)
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    kept = [a for a in bn.attribute if a.name != "momentum"]  # set once (twice is refused)
    del bn.attribute[:]
    bn.attribute.extend(kept + [helper.make_attribute("momentum", 0.5)])
    compile_graph(model)


def _activation_bases_model(order: list, seed: int = 0):
    """conv1 on an int8 input, two sign activations of its accumulator (activation bases), each
    pooled and convolved, the sums added, GAP and a binary Gemm. `order` lists the nodes by key:
    ONNX allows any topological order."""
    rng = np.random.default_rng(seed)
    c1, c2 = 6, 8
    inits = {
        "qs": np.array(1 / 64, np.float32), "qz": np.array(0, np.int8),
        "w1": rng.choice([-1.0, 1.0], size=(c1, 3, 3, 3)).astype(np.float32),
        # accumulators are multiples of 1/64: thresholds halfway between them, no sign ties
        "t0": ((rng.integers(-8, 8, size=(1, c1, 1, 1)) + 0.5) / 64).astype(np.float32),
        "t1": ((rng.integers(-8, 8, size=(1, c1, 1, 1)) + 0.5) / 64).astype(np.float32),
        "w2": rng.choice([-1.0, 1.0], size=(c2, c1, 3, 3)).astype(np.float32),
        "w3": rng.choice([-1.0, 1.0], size=(c2, c1, 3, 3)).astype(np.float32),
        "wf": rng.choice([-1.0, 1.0], size=(10, c2)).astype(np.float32),
        "shape": np.array([1, c2], np.int64),
    }
    pool = dict(kernel_shape=[2, 2], strides=[2, 2])
    nodes = {
        "q": helper.make_node("QuantizeLinear", ["x", "qs", "qz"], ["xq"], name="q"),
        "dq": helper.make_node("DequantizeLinear", ["xq", "qs", "qz"], ["xd"], name="dq"),
        "conv1": helper.make_node("Conv", ["xd", "w1"], ["a1"], name="conv1", pads=[1] * 4),
        "sign0": helper.make_node("Sign", ["d0"], ["s0"], name="sign0"),
        "shift0": helper.make_node("Sub", ["a1", "t0"], ["d0"], name="shift0"),
        "pool0": helper.make_node("MaxPool", ["s0"], ["p0"], name="pool0", **pool),
        "shift1": helper.make_node("Sub", ["a1", "t1"], ["d1"], name="shift1"),
        "sign1": helper.make_node("Sign", ["d1"], ["s1"], name="sign1"),
        "pool1": helper.make_node("MaxPool", ["s1"], ["p1"], name="pool1", **pool),
        "conv2a": helper.make_node("Conv", ["p0", "w2"], ["b0"], name="conv2a", pads=[1] * 4),
        "conv2b": helper.make_node("Conv", ["p1", "w3"], ["b1"], name="conv2b", pads=[1] * 4),
        "add": helper.make_node("Add", ["b0", "b1"], ["b"], name="add"),
        "gap": helper.make_node("GlobalAveragePool", ["b"], ["g"], name="gap"),
        "gap0": helper.make_node("GlobalAveragePool", ["s0"], ["g0"], name="gap0"),
        # the accumulator pooled before its activations (max commutes with each sign)
        "pool_acc": helper.make_node("MaxPool", ["a1"], ["a1p"], name="pool_acc", **pool),
        "shift0_pooled": helper.make_node("Sub", ["a1p", "t0"], ["d0"], name="shift0"),
        "shift1_pooled": helper.make_node("Sub", ["a1p", "t1"], ["d1"], name="shift1"),
        "conv2a_of_sign": helper.make_node("Conv", ["s0", "w2"], ["b0"], name="conv2a", pads=[1] * 4),
        "conv2b_of_sign": helper.make_node("Conv", ["s1", "w3"], ["b1"], name="conv2b", pads=[1] * 4),
        "flat": helper.make_node("Reshape", ["g", "shape"], ["f"], name="flat"),
        "fc": helper.make_node("Gemm", ["f", "wf"], ["y"], name="fc", transB=1),
    }
    g = helper.make_graph([nodes[k] for k in order], "activation_bases_pooled",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


_TAIL = ["add", "gap", "flat", "fc"]


@pytest.mark.parametrize("order", [
    ["q", "dq", "conv1", "shift0", "sign0", "shift1", "sign1", "pool0", "pool1", "conv2a", "conv2b"] + _TAIL,
    ["q", "dq", "conv1", "shift0", "sign0", "pool0", "shift1", "sign1", "pool1", "conv2a", "conv2b"] + _TAIL,
    ["q", "dq", "conv1", "shift0", "sign0", "pool0", "conv2a", "shift1", "sign1", "pool1", "conv2b"] + _TAIL,
    ["q", "dq", "conv1", "shift1", "sign1", "pool1", "conv2b", "shift0", "sign0", "pool0", "conv2a"] + _TAIL,
    ["q", "dq", "conv1", "pool_acc", "shift0_pooled", "sign0", "shift1_pooled", "sign1", "conv2a_of_sign",
     "conv2b_of_sign"] + _TAIL,
], ids=["signs-then-pool", "pool-between-signs", "conv-between-signs", "pooled-plane-first", "pool-before-signs"])
def test_maxpool_of_one_activation_base_pools_its_own_plane(order):
    """A MaxPool of one of a layer's activation-base planes pools all planes of the wide tensor
    once, and its readers read their plane's channels of it, wherever the pool sits in the node
    order (also when it was built before the layer gained its next plane)."""
    model = _activation_bases_model(order)
    graph = compile_graph(model)
    ir.verify(graph)
    pools = [op for op in graph.ops() if isinstance(op, ir.MaxPool)]
    assert len(pools) == 1 and graph.tensors[pools[0].outputs[0]].shape == (4, 4, 12)
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 24, 0))
    ref = driver.run_target(graph, "ref", inputs)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    assert np.array_equal(ref, orig)  # +-1 sums on dyadic grids: exact in float32 too
    assert np.array_equal(driver.run_target(graph, "c", inputs).reshape(ref.shape), ref)


def _gap_of_each_plane(order: list):
    """`_activation_bases_model`'s conv1 and signs, each sign output read by a GlobalAveragePool
    and a binary Gemm, the logits added."""
    model = _activation_bases_model(["q", "dq", "conv1"] + order)
    rng = np.random.default_rng(1)
    for p in (0, 1):
        wf = numpy_helper.from_array(rng.choice([-1.0, 1.0], size=(10, 6)).astype(np.float32), f"wf{p}")
        model.graph.initializer.extend([wf, numpy_helper.from_array(np.array([1, 6], np.int64), f"flat{p}")])
        if p:  # gap0 is in `order`
            model.graph.node.append(helper.make_node("GlobalAveragePool", ["s1"], ["g1"], name="gap1"))
        model.graph.node.extend([helper.make_node("Reshape", [f"g{p}", f"flat{p}"], [f"f{p}"], name=f"flatten{p}"),
                                 helper.make_node("Gemm", [f"f{p}", f"wf{p}"], [f"y{p}"], name=f"fc{p}", transB=1)])
    model.graph.node.append(helper.make_node("Add", ["y0", "y1"], ["y"], name="logits"))
    return model


@pytest.mark.parametrize("order", [
    ["shift0", "sign0", "gap0", "shift1", "sign1"],  # pooled before the layer's second activation
    ["shift0", "sign0", "shift1", "sign1", "gap0"],
])
def test_global_average_pool_of_an_activation_base_computes_the_layer_again(order):
    """Activation bases that a GlobalAveragePool reads stay separate layers (the accumulator computed
    once per activation, which merge_activation_planes leaves as they are): exact, and the
    onnxruntime model's numbers."""
    model = _gap_of_each_plane(order)
    graph = compile_graph(model)
    first = [op for op in graph.ops() if isinstance(op, ir.Conv) and op.source_ops[0] == "conv1"]
    assert len(first) == 2 and all(op.epilogue.planes == 1 for op in first)
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 24, 0))
    ref = driver.run_target(graph, "ref", inputs)
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    assert np.array_equal(ref, orig)  # means of +-1 on dyadic grids: exact in float32 too
    assert np.array_equal(driver.run_target(graph, "c", inputs).reshape(ref.shape), ref)


def test_sum_over_activation_bases_that_a_global_average_pool_reads_is_refused():
    """A sum of convolutions of two activation bases of one layer needs them as planes of one
    tensor; when a GlobalAveragePool also reads one, they are not, and the sum is refused."""
    model = _activation_bases_model(["q", "dq", "conv1", "shift0", "sign0", "shift1", "sign1", "pool0", "pool1",
                                     "conv2a", "conv2b", "add", "gap", "gap0"] + _TAIL[2:])
    extra = [helper.make_node("Reshape", ["g0", "flat0"], ["f0"], name="flatten0"),
             helper.make_node("Gemm", ["f0", "wf0"], ["y0"], name="fc0", transB=1)]
    model.graph.node.extend(extra)
    model.graph.initializer.extend([
        numpy_helper.from_array(np.ones((10, 6), np.float32), "wf0"),
        numpy_helper.from_array(np.array([1, 6], np.int64), "flat0")])
    fc = next(n for n in model.graph.node if n.name == "fc")
    fc.output[0] = "y1"
    model.graph.node.append(helper.make_node("Add", ["y0", "y1"], ["y"], name="logits"))
    with pytest.raises(BnncError, match="'conv2a'.*activation bases") as e:
        compile_graph(model)
    assert "\n" not in str(e.value)


def test_a_sign_and_an_int8_quantization_of_one_accumulator_are_two_layers():
    """An accumulator that a Sign and an int8 QuantizeLinear both read is computed by the layer and
    by a copy of it (one epilogue each; merge_activation_planes merges bit activations only), the
    convolutions of the two are not summed as one (their inputs differ in type): exact, the
    onnxruntime model's numbers."""
    rng = np.random.default_rng(3)
    c1, c2 = 6, 8
    inits = {"qs": np.array(1 / 64, np.float32), "qz": np.array(0, np.int8), "as": np.array(1 / 16, np.float32),
             "w1": rng.choice([-1.0, 1.0], (c1, 3, 3, 3)).astype(np.float32),
             "t0": ((rng.integers(-8, 8, (1, c1, 1, 1)) + 0.5) / 64).astype(np.float32),
             "w2": rng.choice([-1.0, 1.0], (c2, c1, 3, 3)).astype(np.float32),
             "w3": rng.choice([-1.0, 1.0], (c2, c1, 3, 3)).astype(np.float32),
             "wf": rng.choice([-1.0, 1.0], (10, c2)).astype(np.float32), "shape": np.array([1, c2], np.int64)}
    node = helper.make_node
    nodes = [node("QuantizeLinear", ["x", "qs", "qz"], ["xq"]), node("DequantizeLinear", ["xq", "qs", "qz"], ["xd"]),
             node("Conv", ["xd", "w1"], ["a1"], name="conv1", pads=[1] * 4),
             node("Sub", ["a1", "t0"], ["d0"]), node("Sign", ["d0"], ["s0"]),
             node("QuantizeLinear", ["a1", "as", "qz"], ["aq"]), node("DequantizeLinear", ["aq", "as", "qz"], ["ad"]),
             node("Conv", ["s0", "w2"], ["b0"], pads=[1] * 4), node("Conv", ["ad", "w3"], ["b1"], pads=[1] * 4),
             node("Add", ["b0", "b1"], ["b"]), node("GlobalAveragePool", ["b"], ["g"]),
             node("Reshape", ["g", "shape"], ["f"]), node("Gemm", ["f", "wf"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "sign_and_int8", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    graph = compile_graph(model)
    first = [op for op in graph.ops() if isinstance(op, ir.Conv) and op.source_ops[0] == "conv1"]
    assert sorted(type(graph.tensors[op.outputs[0]]).__name__ for op in first) == ["Bits", "Ints"]
    inputs = driver.prepare_inputs(graph, driver.random_samples(graph, 24, 0))
    ref = driver.run_target(graph, "ref", inputs)
    assert np.array_equal(ref, OriginalModel(model).run(inputs.model).reshape(ref.shape))
    assert np.array_equal(driver.run_target(graph, "c", inputs).reshape(ref.shape), ref)
