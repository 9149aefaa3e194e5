"""Tests of bnnc.testing.random_models: the seeded generator of plain-ONNX binarized networks.

Checks that the models are valid (full checker, opset 13, IR 8, onnxruntime runs them), that the
generator is deterministic and covers the variety the compiler's tests rely on, and that the
arithmetic is safe by construction: every BatchNormalization output stays far from the Sign
threshold, the numpy float64 evaluator and onnxruntime agree bit for bit on the logits, and the
logits never tie.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper, shape_inference

from bnnc.testing.random_models import (
    ModelSpec,
    cnv_model,
    evaluate,
    margins,
    mlp_model,
    random_inputs,
    random_model,
    save,
    tfc_model,
)

SEEDS = range(60)
N_INPUTS = 8
# Smallest allowed |BN output| / (sum of the magnitudes the float32 computation adds up). The
# construction guarantees about 0.5 / (fan_in * 255), >= 2.5e-6 for the 784-input MLPs; float32
# rounding errors are a few times 6e-8.
MIN_RELATIVE_MARGIN = 2e-6


@pytest.fixture(scope="module")
def generated():
    return {seed: random_model(seed) for seed in SEEDS}


def _session(model):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _run_ort(model, x):
    session = _session(model)
    return np.stack([session.run(None, {"input": sample[None]})[0] for sample in x])


def _input_shape(model):
    return tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)


def _assert_logits_match(model, x):
    """onnxruntime's float32 logits equal the float64 reference exactly."""
    expected = evaluate(model, x)["logits"].astype(np.float32)
    np.testing.assert_array_equal(_run_ort(model, x), expected)


def _logits_name(model):
    """The tensor holding the logits: the graph output, or the input of ArgMax / TopK."""
    head = next(n for n in model.graph.node if model.graph.output[0].name in n.output)
    return head.input[0] if head.op_type in ("ArgMax", "TopK") else head.output[0]


def _bn_layers(model, spec):
    """(BatchNormalization output name, layer dict) for every conv / dense layer, in order."""
    names = [n.output[0] for n in model.graph.node if n.op_type == "BatchNormalization"]
    layers = [layer for layer in spec.layers if layer["kind"] in ("conv", "dense")]
    assert len(names) == len(layers)
    return list(zip(names, layers))


def _weights(model, op):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    return [inits[n.input[1]] for n in model.graph.node if n.op_type == op]


def test_same_seed_same_bytes_different_seeds_differ():
    a, spec_a = random_model(7)
    b, spec_b = random_model(7)
    assert a.SerializeToString() == b.SerializeToString()
    assert spec_a == spec_b
    assert random_model(8)[0].SerializeToString() != a.SerializeToString()
    assert cnv_model(1).SerializeToString() == cnv_model(1).SerializeToString()
    assert cnv_model(1).SerializeToString() != cnv_model(2).SerializeToString()
    assert tfc_model(3).SerializeToString() == tfc_model(3).SerializeToString()
    assert mlp_model(3).SerializeToString() == mlp_model(3).SerializeToString()
    np.testing.assert_array_equal(random_inputs(spec_a, 4, 1), random_inputs(spec_a, 4, 1))
    assert not np.array_equal(random_inputs(spec_a, 4, 1), random_inputs(spec_a, 4, 2))


def test_models_are_valid_and_run_exactly_like_the_float64_reference(generated):
    for seed, (model, spec) in generated.items():
        assert model.ir_version == 8
        assert [(o.domain, o.version) for o in model.opset_import] == [("", 13)]
        onnx.checker.check_model(model, full_check=True)
        assert [i.name for i in model.graph.input] == ["input"]
        assert _input_shape(model) == spec.input_shape
        x = random_inputs(spec, N_INPUTS, seed)
        assert x.dtype == np.float32 and x.shape == (N_INPUTS,) + spec.input_shape[1:]
        got = _run_ort(model, x)
        reference = evaluate(model, x)
        expected = reference[model.graph.output[0].name]
        if spec.output == "logits":
            # The final layer is exact in float32 and every Sign decision is safe: bit-identical.
            np.testing.assert_array_equal(got, expected.astype(np.float32), err_msg=f"seed {seed}")
        else:
            assert got.dtype == np.int64
            np.testing.assert_array_equal(got, expected, err_msg=f"seed {seed}")
        logits = reference[_logits_name(model)].reshape(N_INPUTS, -1)
        for row in logits:
            assert len(np.unique(row)) == len(row), f"seed {seed}: tied logits {row}"


def test_generator_covers_the_variety(generated):
    specs = [spec for _, spec in generated.values()]
    layers = [layer for spec in specs for layer in spec.layers]
    convs = [layer for layer in layers if layer["kind"] == "conv"]
    denses = [layer for layer in layers if layer["kind"] == "dense"]
    finals = [layer for layer in layers if layer["kind"] == "final"]
    pools = [c["pool"] for c in convs if c["pool"]]
    assert {c["pad"] for c in convs} == {0, 1}
    assert {c["stride"] for c in convs} == {1, 2}
    assert {c["k"] for c in convs} == {1, 2, 3, 5}
    assert {c["bias"] for c in convs} == {False, True}
    assert {p["where"] for p in pools} == {"after_sign", "before_sign"}
    assert {(p["k"], p["stride"], p["pad"]) for p in pools} == {(2, 2, 0), (3, 2, 1)}
    assert any(layer["kind"] == "gap" for layer in layers)
    assert {layer["form"] for layer in layers if layer["kind"] == "flatten"} == {
        "flatten", "reshape", "shape_subgraph"}
    assert {d["form"] for d in denses} == {"gemm", "matmul", "matmul_transpose"}
    assert {d["input"] for d in denses} >= {"binary", "average"}
    widths = [c["out_channels"] for c in convs] + [d["out_features"] for d in denses]
    assert all(w % 32 != 0 for w in widths)
    with_pruned = [s for s in specs if any(layer.get("pruned") for layer in s.layers)]
    assert len(with_pruned) >= 0.3 * len(specs)
    bn_layers = convs + denses
    for key in ("negative_gamma", "zero_gamma", "constant"):
        assert any(layer[key] for layer in bn_layers), key
    assert {s.output for s in specs} == {"logits", "argmax", "topk"}
    assert {s.input_dtype for s in specs} == {"uint8", "int8"}
    assert {s.input_zero_point for s in specs if s.input_dtype == "int8"} == {0}
    assert len({s.input_zero_point for s in specs if s.input_dtype == "uint8"}) > 2
    assert {f["bias"] for f in finals} == {False, True}
    assert {f["mul"] for f in finals} == {None, "scalar", "per_logit"}
    assert {f["add"] for f in finals} == {None, "scalar", "per_logit"}
    assert len({f["classes"] for f in finals}) > 3
    names = set()
    for model, _ in generated.values():
        names.update(t.name for t in model.graph.initializer)
        names.update(n.output[0] for n in model.graph.node)
    assert any("/" in n for n in names) and any(" " in n for n in names)
    assert any(n.name == "" for model, _ in generated.values() for n in model.graph.node)


def test_spec_matches_the_weights(generated):
    for model, spec in generated.values():
        weights = _weights(model, "Conv")
        convs = [layer for layer in spec.layers if layer["kind"] == "conv"]
        for w, layer in zip(weights, convs, strict=True):
            assert w.shape == (layer["out_channels"], layer["in_channels"], layer["k"], layer["k"])
            zero = np.flatnonzero(~w.reshape(len(w), -1).any(axis=1)).tolist()
            assert zero == layer["pruned"]
            live = w[~np.isin(np.arange(len(w)), zero)]
            # +-alpha per output channel: one magnitude per filter.
            assert all(len(np.unique(np.abs(f))) == 1 for f in live)


@pytest.mark.parametrize("seed", [0, 3, 5, 11, 24, 39])
def test_decision_boundaries_are_far_from_every_reachable_value(generated, seed):
    model, spec = generated[seed]
    x = random_inputs(spec, 16, seed + 1000)
    found = margins(model, x)
    values = evaluate(model, x)
    for name, layer in _bn_layers(model, spec):
        margin = found[name]
        assert margin.relative.min() > MIN_RELATIVE_MARGIN, (name, margin.relative.min())
        assert margin.absolute.min() > 0
        if layer["pruned"]:
            # A pruned filter's BN(0) is a constant well away from 0.
            assert margin.absolute[layer["pruned"]].min() >= 0.1 - 1e-6
        signs = np.sign(values[name]).swapaxes(0, 2)  # (channels, 1, samples, ...)
        for c in layer["constant"] + layer["zero_gamma"] + layer["pruned"]:
            assert len(np.unique(signs[c])) == 1, (name, c)


@pytest.mark.parametrize("make", [tfc_model, mlp_model])
def test_mlp_margins(make):
    model = make(0)
    found = margins(model, random_inputs(model, 16, 5))
    assert min(m.relative.min() for m in found.values()) > MIN_RELATIVE_MARGIN


def test_random_inputs_cover_the_grid(generated):
    for seed in (0, 1, 2, 3):
        _, spec = generated[seed]
        x = random_inputs(spec, 64, seed).astype(np.float64)
        scaled = x / np.float32(spec.input_scale) + spec.input_zero_point
        q = np.rint(scaled)
        info = np.iinfo(np.dtype(spec.input_dtype))
        assert np.abs(scaled - q).max() <= 0.3 + 1e-4  # never near a rounding tie
        assert q.min() == info.min and q.max() == info.max
        assert len(np.unique(q)) == 256


def _macs(model):
    inferred = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    total = 0
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    for w, node in zip(_weights(model, "Conv"), convs):
        total += int(np.prod(shapes[node.output[0]])) * int(np.prod(w.shape[1:]))
    total += sum(w.size for w in _weights(model, "Gemm"))
    return total


def test_cnv_topology_and_macs():
    model = cnv_model()
    onnx.checker.check_model(model, full_check=True)
    assert _input_shape(model) == (1, 3, 32, 32)
    convs = _weights(model, "Conv")
    assert [w.shape for w in convs] == [(64, 3, 3, 3), (64, 64, 3, 3), (128, 64, 3, 3),
                                        (128, 128, 3, 3), (256, 128, 3, 3), (256, 256, 3, 3)]
    assert [w.shape for w in _weights(model, "Gemm")] == [(512, 256), (512, 512), (10, 512)]
    assert sum(n.op_type == "MaxPool" for n in model.graph.node) == 2
    assert abs(_macs(model) - 59.5e6) <= 0.01 * 59.5e6
    x = random_inputs(model, 3, 0)
    assert x.min() >= -1.0 and x.max() < 1.0
    _assert_logits_match(model, x)
    assert min(m.relative.min() for m in margins(model, x).values()) > MIN_RELATIVE_MARGIN


def test_tfc_and_mlp_shapes_and_pruning():
    tfc = tfc_model()
    assert [w.shape for w in _weights(tfc, "Gemm")] == [(64, 784), (64, 64), (64, 64), (10, 64)]
    mlp = mlp_model(prune=0.3)
    gemms = _weights(mlp, "Gemm")
    assert [w.shape for w in gemms] == [(256, 784), (256, 256), (10, 256)]
    assert [int((~w.any(axis=1)).sum()) for w in gemms] == [77, 77, 0]
    small = mlp_model(seed=2, prune=0.5, sizes=(100, 13, 7, 5))
    assert [w.shape for w in _weights(small, "Gemm")] == [(13, 100), (7, 13), (5, 7)]
    for model, shape in ((tfc, (1, 1, 28, 28)), (mlp, (1, 1, 28, 28)), (small, (1, 1, 10, 10))):
        onnx.checker.check_model(model, full_check=True)
        assert _input_shape(model) == shape
        x = random_inputs(model, 4, 1)
        _assert_logits_match(model, x)


def test_save_checks_and_writes(tmp_path):
    model, spec = random_model(4)
    path = tmp_path / "model.onnx"
    save(model, path)
    assert onnx.load(str(path)).SerializeToString() == model.SerializeToString()
    assert isinstance(spec, ModelSpec) and spec.seed == 4
    broken = onnx.ModelProto()
    broken.CopyFrom(model)
    broken.graph.node[0].input[0] = "missing"
    with pytest.raises(onnx.checker.ValidationError):
        save(broken, tmp_path / "broken.onnx")
    assert not (tmp_path / "broken.onnx").exists()
