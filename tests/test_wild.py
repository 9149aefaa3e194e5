"""Every shared real-world model (../shared/models/wild) compiles, runs and verifies with the
input its README declares: target == reference bit for bit, and the reference agrees with the
original model in onnxruntime (same top-1 on at least 99% of samples, `bnnc verify`'s rule)."""

import pytest

from bnnc.cli import main
from bnnc.testing.wild import WILD_MODELS, wild_dir

def _cases():
    for name, flags in WILD_MODELS.items():
        yield pytest.param(name, flags, id=name)


@pytest.fixture
def wild():
    d = wild_dir()
    if not d.is_dir():
        pytest.skip("../shared/models/wild is not present")
    return d


@pytest.mark.parametrize("name,flags", list(_cases()))
@pytest.mark.parametrize("target", ["ref", "c"])
def test_wild_model_verifies(wild, name, flags, target, capsys):
    n = "100" if target == "ref" else "20"
    rc = main(["verify", str(wild / f"{name}.onnx"), *flags, "--target", target, "--samples", n])
    out, err = capsys.readouterr()
    assert rc == 0, (out + err)[-2000:]
    assert f"{n}/{n}" in out.split("bit-exact")[1].splitlines()[0]


def test_options_of_reads_the_flags_as_the_cli_does():
    """bench/bench_wild.py compiles with options_of: the README's flags as the command line reads them."""
    from bnnc.testing.wild import AP_FIXED_16_6, IMAGENET, options_of

    fixed = options_of(AP_FIXED_16_6)
    assert fixed.input_scale == 2.0**-10 and fixed.input_range == (-32768, 32767) and fixed.input_affine is None
    image = options_of(IMAGENET)
    assert image.input_range == (0, 255) and image.input_affine is not None


@pytest.mark.parametrize("name", [n for n, f in WILD_MODELS.items() if "--input-mean" in f])
def test_the_exporters_own_normalised_samples_verify(wild, name, capsys):
    """NAME_x.npy holds the training pipeline's inputs, pixels already normalised (README): verify
    takes them as they are, the compiled model the pixels q they are the normalisation of, the
    original model the floats themselves."""
    import numpy as np

    from bnnc import driver
    from bnnc.arith import eval_chain
    from bnnc.onnx_loader import read_model
    from bnnc.pipeline import compile_graph
    from bnnc.testing.wild import options_of

    x = np.load(wild / f"{name}_x.npy")
    graph = compile_graph(read_model(wild / f"{name}.onnx"), options_of(WILD_MODELS[name]))
    inputs = driver.prepare_inputs(graph, x)
    assert inputs.grid.dtype == np.uint8 and np.array_equal(inputs.model, x)
    normalised = eval_chain(graph.input_info["grid"]["pre"], inputs.grid.astype(np.float32))
    assert np.allclose(normalised, x.reshape(len(x), -1), atol=1e-5)
    with pytest.raises(driver.BnncError, match="nor its declared normalisation"):
        driver.prepare_inputs(graph, x + np.float32(0.3 / 255 / 0.25))  # a third of a pixel step off
    rc = main(["verify", str(wild / f"{name}.onnx"), *WILD_MODELS[name], "--target", "ref", "--input",
               str(wild / f"{name}_x.npy")])
    out, err = capsys.readouterr()
    assert rc == 0, (out + err)[-2000:]


@pytest.mark.parametrize("name", ["larq_quicknet_small", "zoo_qkeras_jettagging", "birealnet18_dynamo_extdata"])
def test_trace_follows_the_wild_models_layer_by_layer(wild, name):
    """tf2onnx's NHWC signs and Conv + Relu stems, QONNX biases quantized in the graph, torch's
    dynamo names: each layer is compared with the tensor that holds its values, and follows it."""
    import bnnc
    from bnnc.cli import _attach_negative_values, build_parser

    a = build_parser().parse_args(_attach_negative_values(["report", "model.onnx", *WILD_MODELS[name]]))
    m = bnnc.compile(str(wild / f"{name}.onnx"), "ref", input_scale=a.input_scale, input_range=a.input_range,
                     input_offset=a.input_offset, input_mean=a.input_mean, input_std=a.input_std)
    rows = m.verify(samples=8, trace=True).trace
    assert rows and all(r["compared"] for r in rows), [r for r in rows if not r["compared"]]
    assert [r["layer"] for r in rows if r["samples"]] == []
