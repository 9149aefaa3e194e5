"""Integer-input layers on MCU builds (the int16-pair kernel, bnnc_int16_mac: SMLAD assembly on
Cortex-M4/M7, C on Cortex-M0 and RISC-V): random shapes, strides, paddings, input ranges
(negative ones included), bit and real outputs, dense and conv, bit for bit equal to the
reference executor on every core."""

import numpy as np
import pytest

pytest.importorskip("unicorn", reason="the MCU tests need the mcu extra (unicorn, ziglang, pyelftools)")
pytest.importorskip("ziglang", reason="the MCU tests need the mcu extra (unicorn, ziglang, pyelftools)")
pytest.importorskip("elftools", reason="the MCU tests need the mcu extra (unicorn, ziglang, pyelftools)")

from bnnc import driver, ir  # noqa: E402
from bnnc.backends import mcu  # noqa: E402
from bnnc.pipeline import Options, compile_graph  # noqa: E402
from bnnc.targets import TargetOptions  # noqa: E402

CORES = ("cortex-m0", "cortex-m4", "cortex-m7", "rv32imc")


def int_layer_model(seed: int, c: int, side: tuple, k: tuple, stride: tuple, pads: list, out: int, bits: bool):
    """Conv (+-1 weights) on a float input that --input-range makes integer; then either
    BatchNormalization -> Sign -> Gemm (bit outputs) or nothing (the conv's real outputs)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = []

    def const(name, a):
        inits.append(numpy_helper.from_array(np.asarray(a, np.float32), name))
        return name

    oh = (side[0] + pads[0] + pads[2] - k[0]) // stride[0] + 1
    ow = (side[1] + pads[1] + pads[3] - k[1]) // stride[1] + 1
    nodes = [helper.make_node("Conv", ["x", const("w0", rng.choice([-1.0, 1.0], (out, c) + k))],
                              ["c0" if bits else "y"], kernel_shape=list(k), strides=list(stride), pads=pads)]
    shape_out = [1, out, oh, ow]
    if bits:
        nodes += [
            helper.make_node("BatchNormalization", ["c0", const("g", rng.uniform(0.5, 2, out) * rng.choice([-1, 1], out)),
                                                    const("b", rng.uniform(-300, 300, out)), const("m", np.zeros(out)),
                                                    const("v", np.ones(out))], ["bn0"]),
            helper.make_node("Sign", ["bn0"], ["s0"]),
            helper.make_node("Flatten", ["s0"], ["f"]),
            helper.make_node("Gemm", ["f", const("w1", rng.choice([-1.0, 1.0], (10, out * oh * ow)))], ["y"], transB=1),
        ]
        shape_out = [1, 10]
    g = helper.make_graph(nodes, "int_layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, *side])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape_out)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


# (c, side, kernel, stride, pads, out, bit outputs, input range)
CASES = [
    (3, (8, 9), (3, 3), (1, 1), [0, 0, 0, 0], 50, True, (-128, 127)),
    (2, (7, 7), (3, 2), (2, 1), [1, 0, 1, 1], 17, True, (0, 255)),
    (1, (6, 6), (6, 6), (1, 1), [0, 0, 0, 0], 33, True, (-300, -44)),  # dense: one output position
    (5, (5, 6), (2, 3), (1, 2), [1, 1, 0, 2], 9, False, (-20000, 20000)),
    (4, (6, 5), (2, 2), (1, 1), [1, 1, 1, 1], 64, True, (-3000, 3000)),
    (1, (9, 9), (3, 3), (3, 3), [1, 1, 1, 1], 3, False, (5, 200)),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_integer_layers_equal_the_reference_on_every_core(case):
    c, side, k, stride, pads, out, bits, grid = CASES[case]
    model = int_layer_model(case, c, side, k, stride, pads, out, bits)
    graph = compile_graph(model, Options(input_scale=1.0, input_range=grid))
    first = next(op for op in mcu.backend_graph(graph).ops() if isinstance(op, ir.Conv))
    assert first.packed.pairs  # the int16-pair kernel runs it
    x = np.random.default_rng(case).integers(grid[0], grid[1] + 1, (4, c, *side)).astype(np.float32)
    x[0], x[1] = grid[0], grid[1]
    inputs = driver.prepare_inputs(graph, x)
    ref = driver.run_target(graph, "ref", inputs)
    for core in CORES:
        y, _ = mcu.run(graph, inputs.grid, TargetOptions(mcu=core))
        assert np.array_equal(y.reshape(ref.shape), ref), core


@pytest.mark.parametrize("name", ["w1a2", "dabn", "hbn", "ternary-ec2t", "abc-fused"])
def test_compressed_family_integer_layers_equal_the_reference_on_every_core(name):
    """Multi-bit, ternary and real-valued (fixed-point) weights on an integer input: the family
    layers whose values and weights fit int16 take the same kernel (sums into the family
    epilogues: levels, requantization, thresholds)."""
    from bnnc import zoo

    model = zoo.build(name)
    graph = compile_graph(model)
    bg = mcu.backend_graph(graph)
    fam = {f.name for f in ir.family_ops(bg)}
    assert any(op.packed.pairs for op in bg.ops() if op.name in fam and isinstance(op, ir.Conv))
    inputs = driver.prepare_inputs(graph, zoo.inputs(model, 2))
    ref = driver.run_target(graph, "ref", inputs)
    for core in CORES:
        y, _ = mcu.run(graph, inputs.grid, TargetOptions(mcu=core))
        assert np.array_equal(y.reshape(ref.shape), ref), core
