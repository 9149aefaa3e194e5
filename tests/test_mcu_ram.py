"""MCU RAM against the liveness lower bound: the arena planner on graphs with branches (residual
shortcuts, concats) stays valid and optimal where it can be checked, outputs planned over their
inputs never overwrite what is still to be read, the firmware of such graphs stays bit-exact, and
the measured model RAM (static + stack) of small models on Cortex-M4 is within 1.05x of the
bound, with the entry's and the layers' frames small."""

import itertools

import numpy as np
import pytest

from bnnc import driver, ir, zoo
from bnnc.backends import mcu
from bnnc.passes.plan_arena import Buffer, _first_fit, _place, lower_bound, raster_distance, row_distance
from bnnc.pipeline import Options, compile_file, compile_graph
from bnnc.targets import TargetOptions

from .helpers import assert_live_buffers_apart, live_spans
from .test_concat_softmax import binary_concat_model, fire_model

pytest.importorskip("unicorn")
pytest.importorskip("ziglang")

RAM_TARGET = 1.05


def _branchy_lifetimes(seed: int) -> list:
    """Buffers of a random schedule with branches: a chain of ops where some outputs are read
    again later (a residual shortcut, a concat input) and some ops have scratch."""
    rng = np.random.default_rng(seed)
    n_ops = int(rng.integers(3, 6))
    bufs = []
    for i in range(n_ops):
        last = i + 1 if i + 1 < n_ops else i
        if i + 2 < n_ops and rng.random() < 0.4:  # read again by a later op: a branch
            last = int(rng.integers(i + 2, n_ops))
        bufs.append(Buffer(f"t{i}", 4 * int(rng.integers(1, 40)), i, last))
        if rng.random() < 0.4:
            bufs.append(Buffer(f"s{i}", 4 * int(rng.integers(1, 20)), i, i))
    return bufs[:7]


def _check_placement(bufs: list, size: int, offsets: dict) -> None:
    for a, b in itertools.combinations(bufs, 2):
        if a.first <= b.last and b.first <= a.last:
            oa, ob = offsets[a.name], offsets[b.name]
            assert oa + a.size <= ob or ob + b.size <= oa, f"{a.name} and {b.name} overlap while both are live"
    assert size == max(offsets[b.name] + b.size for b in bufs)
    assert size >= lower_bound(bufs)


@pytest.mark.parametrize("seed", range(40))
def test_arena_placement_with_branches_is_valid_and_optimal(seed):
    bufs = _branchy_lifetimes(seed)
    size, offsets = _place(bufs, lower_bound(bufs))
    _check_placement(bufs, size, offsets)
    # the optimum: first fit in the best order (any optimal arena is first fit in its offsets' order)
    best = min(max(o[b.name] + b.size for b in bufs) for o in map(_first_fit, itertools.permutations(bufs)))
    assert size == best


BRANCHY = {
    "fire (concat of real-valued branches)": lambda s: compile_graph(
        fire_model(s, softmax=False), Options(input_scale=1 / 64, input_range=(-128, 127))),
    "binary concat off word boundaries": lambda s: compile_graph(
        binary_concat_model(s), Options(input_scale=1 / 64, input_range=(-128, 127))),
    "bireal (residual shortcuts)": lambda s: compile_graph(zoo.build("bireal", s, size=8)),
    "resnet18-stq (residual, downsampling shortcuts)": lambda s: compile_graph(
        zoo.build("resnet18-stq", s, size=8, widths=(8, 16, 16, 16))),
}


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", list(BRANCHY))
def test_branchy_graphs_keep_branch_tensors_apart_and_run_bit_exact(name, seed):
    g = BRANCHY[name](seed)
    bg = mcu.backend_graph(g)
    arena, spans = bg.arena, live_spans(bg)
    assert any(b - a > 1 for a, b in spans.values()), "no tensor lives across a branch"
    assert bool(arena["in_place"]) == ("residual" in name)
    order = {op.name: i for i, op in enumerate(bg.ops())}
    for t, over in arena["in_place"].items():  # a residual sum over an operand read last by it
        add = bg.producer(t)
        assert isinstance(add, ir.Add) and over in add.inputs
        assert all(order[c.name] <= order[add.name] for c in bg.consumers(over))
        assert arena["buffers"][t] == arena["buffers"][over]
    assert_live_buffers_apart(bg)
    steps = range(len(bg.ops()))
    bound = max(sum(arena["sizes"][t] for t, (f, last) in spans.items() if f <= i <= last) for i in steps)
    assert arena["lower_bound"] == bound and arena["size"] >= arena["overlap_bound"]
    inputs = driver.prepare_inputs(g, driver.random_samples(g, 3, seed))
    ref = driver.run_target(g, "ref", inputs)
    y, st = mcu.emulate(g, inputs.grid, TargetOptions(mcu="cortex-m4"))
    np.testing.assert_array_equal(y.reshape(ref.shape), ref)
    assert st["stack_bytes"] == max(st["stack_per_layer"].values())
    assert 0 < st["stack_entry_bytes"] <= st["stack_bytes"]


def _wild(name: str):
    from bnnc.testing.wild import WILD_MODELS, options_of, wild_dir

    if not (wild_dir() / f"{name}.onnx").exists():
        pytest.skip(f"{wild_dir()} has no {name}.onnx")
    return compile_file(wild_dir() / f"{name}.onnx", options_of(WILD_MODELS[name]))[1]


# every zoo and shared wild model of up to ~15 KB of RAM whose RAM on Cortex-M4 is within 1.05x of
# its bound (bench/bench_mcu.py --ram lists the others, and bench/README.md says why they are not)
RAM_MODELS = {n: (lambda n=n: compile_graph(zoo.build(n)))
              for n in ["tfc", "cnv", "cnv-stq40", "bireal", "ternary-qonnx", "ternary-ec2t", "w1a2", "abc-fused",
                        "hbn", "ternary-ttq", "dabn", "xnet", "abc-explicit", "pabt"]}
RAM_MODELS.update({f"wild {n}": (lambda n=n: _wild(n))
                   for n in ["zoo_unsw_nb15_mlp_w2a2", "larq_quicknet_small"]})


@pytest.mark.parametrize("name", list(RAM_MODELS))
def test_model_ram_within_5_percent_of_the_liveness_bound_on_cortex_m4(name):
    g = RAM_MODELS[name]()
    inputs = driver.prepare_inputs(g, driver.random_samples(g, 1, 0))
    _, st = mcu.emulate(g, inputs.grid, TargetOptions(mcu="cortex-m4"))
    bound = st["arena_lower_bound_bytes"]
    # what the model holds: the arena (rounded to 8 bytes), nothing else static, and the stack (the
    # wild models' static RAM also has the padding between the harness's input and output buffers)
    if not name.startswith("wild"):
        assert st["model_ram_bytes"] - st["stack_bytes"] <= -(-st["arena_bytes"] // 8) * 8
    assert st["model_ram_bytes"] <= RAM_TARGET * bound, (
        f"{name}: model RAM {st['model_ram_bytes']} B = static {st['model_ram_bytes'] - st['stack_bytes']} + stack "
        f"{st['stack_bytes']} (per layer {st['stack_per_layer']}) > {RAM_TARGET} x the lower bound {bound} B")


@pytest.mark.parametrize("core", ["cortex-m0", "rv32imc"])
@pytest.mark.parametrize("name", ["cnv", "tfc", "ternary-ttq", "dabn", "xnet", "abc-explicit",
                                  "wild zoo_unsw_nb15_mlp_w2a2"])
def test_model_ram_within_5_percent_of_the_liveness_bound_on_cortex_m0_and_risc_v(name, core):
    """The cores with the deeper frames (Cortex-M0's 8 low registers, RISC-V's 16-byte frames):
    the outputs planned over their inputs keep these models' RAM within 1.05x of the bound too;
    the MLPs' integer first layers (int16-pair MAC and band copy out of line) and float inputs
    (soft float, rolled) with them."""
    g = RAM_MODELS[name]()
    inputs = driver.prepare_inputs(g, driver.random_samples(g, 1, 0))
    ref = driver.run_target(g, "ref", inputs)
    y, st = mcu.emulate(g, inputs.grid, TargetOptions(mcu=core))
    np.testing.assert_array_equal(y.reshape(ref.shape), ref)
    assert st["model_ram_bytes"] <= RAM_TARGET * st["arena_lower_bound_bytes"], (name, core, st["stack_per_layer"])


# small family models, whose stack is a large share of their RAM: measured on Cortex-M4, it is the
# entry's frame and the deepest layer's (an int16-pair or bit-plane conv)
STACK_MODELS = ["ternary-ttq", "dabn", "xnet"]


@pytest.mark.parametrize("name", STACK_MODELS)
def test_entry_holds_two_pointers_and_the_layer_frames_stay_small_on_cortex_m4(name):
    g = compile_graph(zoo.build(name))
    inputs = driver.prepare_inputs(g, driver.random_samples(g, 1, 0))
    ref = driver.run_target(g, "ref", inputs)
    y, st = mcu.emulate(g, inputs.grid, TargetOptions(mcu="cortex-m4"))
    np.testing.assert_array_equal(y.reshape(ref.shape), ref)
    # <prefix>_run keeps the arena and output pointers across the layer calls (r4, r5, and lr with
    # one register for alignment), no volatile slot and no buffer addresses: they cost 24 B
    assert st["stack_entry_bytes"] <= 16, st["stack_entry_bytes"]
    # the layers' frames: 36 B of callee-saved registers, then what the loop nest spills (plus an
    # int16-pair layer's MAC kernel frame); with the position opaque, not held across the row
    assert st["stack_bytes"] <= 100, f"{name}: stack per layer {st['stack_per_layer']}"


def test_first_fit_places_a_buffer_at_its_own_alignment():
    bufs = [Buffer("a", 12, 0, 1), Buffer("b", 16, 1, 1, align=8), Buffer("c", 4, 1, 1)]
    offsets = _first_fit(bufs)
    assert offsets == {"a": 0, "b": 16, "c": 12}  # b skips 12 (4 mod 8); c still fills the gap
    _check_placement(bufs, 32, offsets)


def test_int64_buffers_start_at_multiples_of_8_on_mcus():
    """A compressed-family layer's scratch starts with int64 accumulators: on an MCU (arena aligned
    to 4) it must start at a multiple of 8 (pabt's first conv lay at 700 before) and still run
    bit-exact."""
    g = compile_graph(zoo.build("pabt"))
    bg = mcu.backend_graph(g)
    family = [op.name for op in bg.ops() if hasattr(getattr(op, "packed", None), "scratch_bytes")]
    assert family
    for name in family:
        assert bg.arena["buffers"][name + "_scratch"] % 8 == 0, name
    inputs = driver.prepare_inputs(g, driver.random_samples(g, 1, 0))
    ref = driver.run_target(g, "ref", inputs)
    y, _ = mcu.emulate(g, inputs.grid, TargetOptions(mcu="cortex-m4"))
    np.testing.assert_array_equal(y.reshape(ref.shape), ref)


def _first_clobbered_read(ih, oh, ri, ro, kh, sh, pt, banded, d):
    """Simulate a raster kernel (output rows in order; row oy reads its window's input rows, a
    banded kernel all of them before the row's first output) with the output d bytes below the
    input: the first (output row, input byte) where a write lands on an input byte still to be
    read, else None."""
    rows = [set(range(max(0, oy * sh - pt), min(ih, oy * sh - pt + kh))) for oy in range(oh)]
    for oy in range(oh):
        still_read = set().union(*rows[oy + 1 if banded else oy:])
        for byte in range(oy * ro - d, (oy + 1) * ro - d):  # input byte offsets the row's writes reach
            if 0 <= byte < ih * ri and byte // ri in still_read:
                return oy, byte
    return None


@pytest.mark.parametrize("banded", [False, True])
@pytest.mark.parametrize("seed", range(60))
def test_row_distance_is_the_least_safe_overlap(seed, banded):
    """An output placed row_distance bytes below its input never overwrites an input byte still to
    be read (a byte-level simulation of the kernels' row order), and 8 bytes less would (it is
    the least, up to its alignment to 8): windows with strides and padding, rows of any size."""
    rng = np.random.default_rng(seed)
    kh = int(rng.integers(1, 4))
    sh = int(rng.integers(1, kh + 1))
    pt = int(rng.integers(0, kh))
    ih = int(rng.integers(kh, 14))
    oh = (ih + 2 * pt - kh) // sh + 1
    ri, ro = int(rng.integers(1, 80)), int(rng.integers(1, 80))
    d = row_distance(ih, oh, ri, ro, sh, pt, banded, 8)
    assert d % 8 == 0 and _first_clobbered_read(ih, oh, ri, ro, kh, sh, pt, banded, d) is None
    assert d == 0 or _first_clobbered_read(ih, oh, ri, ro, kh, sh, pt, banded, d - 8) is not None


def test_raster_distance_reads_the_layer_and_saves_bytes_or_says_none():
    """raster_distance takes a layer's rows as stored (bit words, integer storage) and gives None
    where the overlap would save nothing (a dense layer's output needs all of its input)."""
    pool = ir.MaxPool("pool", ["x"], ["y"], (2, 2), (2, 2), (0, 0, 0, 0))
    src, dst = ir.Ints((12, 12, 16), 0, 255), ir.Ints((6, 6, 16), 0, 255)
    assert raster_distance(pool, src, dst, 32, 4) == row_distance(12, 6, 12 * 16, 6 * 16, 2, 0, False, 8)
    assert raster_distance(pool, ir.Bits((12, 12, 40)), ir.Bits((6, 6, 40)), 32, 4) == 6 * 8  # 2 words a pixel
    whole = ir.MaxPool("pool", ["x"], ["y"], (12, 12), (1, 1), (0, 0, 0, 0))  # one output row reads every row
    assert raster_distance(whole, src, ir.Ints((1, 1, 16), 0, 255), 32, 4) is None


# models whose MCU arena puts outputs over inputs, on the cores with different kernels (Thumb-2's
# int16 pairs and bit-plane kernels, Cortex-M0's C forms, RISC-V)
@pytest.mark.parametrize("core", ["cortex-m0", "cortex-m4", "rv32imc"])
@pytest.mark.parametrize("name", ["abc-explicit", "xnet", "w1a2"])
def test_outputs_over_their_inputs_run_bit_exact(name, core):
    g = compile_graph(zoo.build(name))
    bg = mcu.backend_graph(g)
    assert bg.arena["overlaps"] and bg.arena["size"] < bg.arena["lower_bound"]
    assert_live_buffers_apart(bg)
    inputs = driver.prepare_inputs(g, driver.random_samples(g, 2, 1))
    ref = driver.run_target(g, "ref", inputs)
    y, _ = mcu.emulate(g, inputs.grid, TargetOptions(mcu=core))
    np.testing.assert_array_equal(y.reshape(ref.shape), ref)
