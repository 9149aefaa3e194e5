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
            helper.make_node("BatchNormalization",
                             ["c0", const("g", rng.uniform(0.5, 2, out) * rng.choice([-1, 1], out)),
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
    # 4 or 6 channels left over from the groups of 8 (pack_bits.pair_groups): one group of their own
    (3, (7, 8), (3, 3), (1, 1), [1, 1, 1, 1], 62, True, (-128, 127)),  # 32 + 24 + 6: CNV's first layer
    (2, (6, 7), (2, 2), (1, 1), [0, 1, 1, 0], 13, False, (-500, 500)),  # 8 + 6 (one padding channel)
    (3, (5, 5), (1, 3), (1, 1), [0, 1, 0, 1], 28, True, (0, 255)),  # 24 + 4
    (8, (5, 6), (3, 3), (1, 1), [1, 1, 1, 1], 14, True, (-1000, 1000)),  # 8 + 6 on 36 pairs: the loop over 16
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


def test_int16_pair_kernel_c_form_and_sign_packing_equal_numpy(tmp_path):
    """The C form of BNNC_INT16_MAC_FUNC (groups of 8: sums and signs, of 6 and 4: sums) and
    BNNC_INT16_MAC_2 (Cortex-M0, RISC-V) on random int16 windows and weights, built for the host:
    the sums, the moved pointers and bnnc_signs8. (The Cortex-M4/M7 assembly runs in the model
    tests above.)"""
    import subprocess

    from bnnc.backends import c_build
    from bnnc.passes.pack_bits import int16_pair_weights
    from bnnc.resources import resource_dir

    rng = np.random.default_rng(7)
    n = 13  # pairs: 26 taps
    x = rng.integers(-(2**15), 2**15, 2 * n)
    w8 = rng.integers(-500, 501, (8, 2 * n))  # sums within int32, as the packer proves
    w2 = rng.integers(-500, 501, (2, 2 * n))
    w6, w4 = w8[:6], w8[2:6]
    x[:4], x[5], w8[0, 5], w2[1, 5] = -(2**15), 3, -(2**15), 2**15 - 1  # the extremes
    init = rng.integers(-(2**20), 2**20, 8)

    def arr(name, ctype, v):
        return f"static const {ctype} {name}[{len(v)}] = {{{', '.join(str(int(a)) for a in v)}}};\n"

    def halves(words):
        w = np.asarray(words, np.int64)
        h = np.stack([w & 0xFFFF, w >> 16], -1).ravel()
        return np.where(h >= 2**15, h - 2**16, h)

    src = ('#include <stdio.h>\n#define BNNC_WORD_BITS 32\n#include "bnnc_kernels.h"\n' + arr("x", "int16_t", x)
           + arr("w8", "int16_t", halves(int16_pair_weights(w8))) + arr("w2", "int16_t", halves(int16_pair_weights(w2)))
           + arr("w6", "int16_t", halves(int16_pair_weights(w6))) + arr("w4", "int16_t", halves(int16_pair_weights(w4)))
           + arr("init", "int32_t", init) + f"""
BNNC_INT16_MAC_FUNC(mac8s, 8, 0, {n}, SIGNS)
BNNC_INT16_MAC_FUNC(mac8, 8, 0, {n}, SUMS)
BNNC_INT16_MAC_FUNC(mac6, 6, 0, {n}, SUMS)
BNNC_INT16_MAC_FUNC(mac4, 4, 0, {n}, SUMS)
int main(void) {{
  const int16_t *xp = x, *w = w2;
  int32_t r[8], s[8], r6[6], r4[4], r2[2] = {{0, 0}};
  mac8s(x, w8, init, s);
  mac8(x, w8, init, r);
  mac6(x, w6, init, r6);
  mac4(x, w4, init + 2, r4);
  printf("%u\\n", (unsigned)s[0]);
  for (int j = 0; j < 8; j++) printf("%ld\\n", (long)r[j]);
  for (int j = 0; j < 6; j++) printf("%ld\\n", (long)r6[j]);
  for (int j = 0; j < 4; j++) printf("%ld\\n", (long)r4[j]);
  BNNC_INT16_MAC_2({n}, xp, w, r2);
  printf("%ld %ld %d %d\\n", (long)r2[0], (long)r2[1], (int)(w - w2), (int)(xp - x));
  return 0;
}}
""")
    (tmp_path / "bnnc_kernels.h").write_text((resource_dir("runtime") / "bnnc_kernels.h").read_text())
    (tmp_path / "t.c").write_text(src)
    subprocess.run([*c_build.find_cc(), "-std=c99", "-O1", "-Wall", "-Wextra", "-Werror", "-fsanitize=undefined",
                    "-fno-sanitize-recover=all", "t.c", "-o", "t"], cwd=tmp_path, check=True)
    lines = subprocess.run([str(tmp_path / "t")], capture_output=True, text=True, check=True).stdout.split()
    got = [int(v) for v in lines]
    want = init + w8 @ x
    signs = sum(((int(want[2 * j]) < 0) << (15 - j)) | ((int(want[2 * j + 1]) < 0) << (31 - j)) for j in range(4))
    assert got[0] == signs and got[1:9] == list(want)
    assert got[9:15] == list(want[:6]) and got[15:19] == list(want[2:6])
    assert got[19:] == list(w2 @ x) + [4 * n, 2 * n]


@pytest.mark.parametrize("flags", [("-O0",), ("-Os",), ("-O2", "-fno-omit-frame-pointer"), ("-O3",)])
def test_int16_pair_assembly_builds_with_any_optimization_and_a_frame_pointer(tmp_path, flags):
    """The Cortex-M4 assembly takes no register the compiler may keep (frame pointer, values live
    around it): cnv's and the family models' integer layers build at every optimization level."""
    import subprocess
    import sys

    from bnnc import zoo
    from bnnc.testing.random_models import cnv_model

    c = mcu.CORES["cortex-m4"]
    for name, model in (("cnv", cnv_model()), ("w1a2", zoo.build("w1a2"))):
        for fname, text in mcu.files(compile_graph(model), TargetOptions(mcu="cortex-m4", name="net")).items():
            (tmp_path / fname).write_text(text)
        cmd = [sys.executable, "-m", "ziglang", "cc", "-target", c.zig_target, f"-mcpu={c.zig_cpu}", *flags,
               "-ffreestanding", "-std=c99", "-Wall", "-Wextra", "-Werror", "-c", "model.c", "-o", "model.o"]
        r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, (name, r.stderr[-2000:])


def test_cnv_first_layer_takes_at_most_one_instruction_per_mac_on_cortex_m4():
    """CNV's first layer as Brevitas' CNV has it after pruning: 3 -> 62 channels, 3x3 on 32 x 32
    int8 values, bit outputs. The 6 channels left over from the groups of 8 run as one group of 6
    (9 instructions per 12 MACs; in groups of 2 the layer took 1.002 instructions per MAC):
    at most one instruction per MAC on Cortex-M4, counted in emulation, bit-exact."""
    model = int_layer_model(0, 3, (32, 32), (3, 3), (1, 1), [0, 0, 0, 0], 62, True)
    graph = compile_graph(model, Options(input_scale=1.0, input_range=(-128, 127)))
    first = next(op for op in mcu.backend_graph(graph).ops() if isinstance(op, ir.Conv))
    x = np.random.default_rng(0).integers(-128, 128, (1, 3, 32, 32)).astype(np.float32)
    inputs = driver.prepare_inputs(graph, x)
    ref = driver.run_target(graph, "ref", inputs)
    y, st = mcu.emulate(graph, inputs.grid, TargetOptions(mcu="cortex-m4"))
    assert np.array_equal(y.reshape(ref.shape), ref)
    macs = 62 * 27 * 30 * 30
    assert st["instructions_per_layer"][first.name] <= macs, st["instructions_per_layer"][first.name] / macs
