"""matrix_unit: the unit's legality (supports, the one check the layout pass, both hardware
backends and the folding reader share) and its two exports (RTL parameters, HLS context)."""

import copy

import pytest

from bnnc import ir, zoo
from bnnc.backends import hls, matrix_unit, verilog
from bnnc.errors import BnncError
from bnnc.folding import LayerFolding, foldable_layers, resolve
from bnnc.passes.layout_folded_layers import layout_folded_layers
from bnnc.pipeline import compile_graph
from bnnc.targets import TargetOptions


@pytest.fixture(scope="module")
def graph():
    return compile_graph(zoo.build("pabt", 0))


def _conv(graph, pred=lambda op: True):
    return next(op for op in graph.ops() if isinstance(op, ir.Conv) and pred(op))


def _with(graph, op, **changes):
    """A copy of `graph` whose Conv `op` has `changes`."""
    g = graph.copy()
    target = next(o for o in g.ops() if o.name == op.name)
    for k, v in changes.items():
        setattr(target, k, v)
    return g, target


def _refusals(graph):
    """(layer, changes, reason fragment) for each way the unit refuses a Conv."""
    conv = _conv(graph, lambda op: op.kernel[0] > 1)
    kh, kw = conv.kernel
    planes = _conv(graph, lambda op: getattr(op.epilogue, "planes", 1) > 1)
    ep = planes.epilogue
    levels = ir.LevelThresholds(ep.direction, ep.threshold[:, None], -1, 2, planes=ep.planes)
    bits = _conv(graph, lambda op: isinstance(op.epilogue, ir.Thresholds))
    b_ep = copy.copy(bits.epilogue)
    b_ep.constant = b_ep.constant.copy()
    b_ep.constant[0] = 0
    return [(conv, {"pads": (kh, 0, 0, 0)}, f"padding ({kh}, 0, 0, 0) is not smaller than its {kh}x{kw} kernel"),
            (conv, {"pads": (0, 0, 0, kw)}, f"padding (0, 0, 0, {kw}) is not smaller than its {kh}x{kw} kernel"),
            (conv, {"epilogue": ir.Planes([])}, "does not implement a Planes epilogue"),
            (planes, {"epilogue": levels}, f"multi-level activations with {ep.planes} activation planes"),
            (bits, {"epilogue": b_ep}, "constantly 0")]


def test_supports_accepts_every_layer_of_a_model_the_backends_build(graph):
    for op, f in zip([op for op in graph.ops() if isinstance(op, ir.Conv)], resolve(graph, None, None)):
        assert matrix_unit.supports(op) is None
        assert matrix_unit.supports(op, f) is None


def test_supports_names_each_refusal(graph):
    for op, changes, why in _refusals(graph):
        assert matrix_unit.supports(op) is None
        _, changed = _with(graph, op, **changes)
        reason = matrix_unit.supports(changed)
        assert reason is not None and why in reason, (changes, reason)
        assert "\n" not in reason


def test_supports_refuses_a_fold_wider_than_the_matrix(graph):
    op = _conv(graph)
    o, kh, kw, c = op.w.shape
    layer = next(L for L in foldable_layers(graph) if L.name == op.name)
    assert matrix_unit.supports(op, LayerFolding(layer, o, kh * kw * c)) is None
    assert matrix_unit.supports(op, LayerFolding(layer, o + 1, 1)) == f"PE={o + 1} exceeds its {o} output channels"
    assert matrix_unit.supports(op, LayerFolding(layer, 1, kh * kw * c + 1)) == \
        f"SIMD={kh * kw * c + 1} exceeds its {kh * kw * c} inputs per output"
    with pytest.raises(BnncError, match=f"PE={o + 1} exceeds its {o} output channels"):
        resolve(graph, {"layers": [{"name": op.name, "pe": o + 1, "simd": 1}]}, None)


def test_every_legality_check_gives_the_units_reason(graph):
    """The layout pass, the Verilog plan and the HLS check refuse with supports()' own words."""
    for op, changes, _ in _refusals(graph):
        g, changed = _with(graph, op, **changes)
        reason = matrix_unit.supports(changed)
        foldings = [LayerFolding(L, 1, 1) for L in foldable_layers(g)]
        for check in (lambda: layout_folded_layers(g, foldings), lambda: verilog._check_conv(changed),
                      lambda: hls.check_supported(g)):
            with pytest.raises(BnncError) as e:
                check()
            assert reason in str(e.value) and changed.name in str(e.value) or \
                reason in str(e.value) and (changed.source_ops or [changed.name])[0] in str(e.value), str(e.value)


def _units(name):
    g = verilog.build_design(compile_graph(zoo.build(name, 0)), TargetOptions()).graph
    return [op.folded for op in g.ops() if isinstance(op, ir.Conv)]


@pytest.mark.parametrize("name", ["pabt", "w1a2", "hbn", "ternary-ec2t"])
def test_rtl_and_hls_exports_agree(name):
    """Both exports give the same numbers for what the RTL parameters and the HLS process share;
    the zoo models cover bit, multi-level, activation-plane, requantized and MAC units."""
    for unit in _units(name):
        for window in (None, (3, 5)):
            rtl, cxx = matrix_unit.rtl_parameters(unit, window), matrix_unit.hls_context(unit)
            mac = rtl.get("MAC", 0) == 1
            assert mac == cxx["mac"] and rtl.get("WEIGHT_BITS", 0) == cxx["mac_weight_bits"]
            for key, word in (("MATRIX_ROWS", "matrix_rows"), ("MATRIX_COLS", "matrix_cols"), ("PE", "pe"),
                              ("SIMD", "simd"), ("INPUT_BITS", "input_bits"), ("THRESHOLDS", "thresholds"),
                              ("GAIN", "gain")):
                assert rtl[key] == cxx[word], (key, rtl[key], cxx[word])
            width = int(cxx["weighted_sum_t" if mac else "sum_t"][len("ap_int<"):-1])
            assert rtl["SUM_BITS"] == width
            if cxx["mode"] in ("acc", "requant"):
                assert rtl["ACC_BITS"] == int(cxx["acc_t"][len("ap_int<"):-1])
            assert rtl.get("ACT_PLANES", 1) == cxx["act_planes"]
            assert rtl.get("GAINS_IN_TABLE", 0) == int(cxx["gains_in_table"])
            assert ("LEVEL_BASE" in rtl) == (cxx["mode"] == "levels")
            if "LEVEL_BASE" in rtl:
                assert (rtl["LEVEL_BASE"], rtl["LEVEL_STEP"]) == (cxx["level_base"], cxx["level_step"])
            assert (rtl.get("REQUANTIZE", 0) == 1) == (cxx["mode"] == "requant")
            assert rtl["OUT_ROWS"] == (window[0] if window else 1)


def test_exports_cover_every_mode():
    modes = {(u.epilogue.mode, u.mac is not None, u.epilogue.act_planes > 1)
             for name in ("pabt", "w1a2", "hbn", "ternary-ec2t") for u in _units(name)}
    assert {m for m, _, _ in modes} >= {"thresholds", "levels", "requant", "acc"}, modes
    assert any(mac for _, mac, _ in modes) and any(ap for _, _, ap in modes), modes


def test_cycles_count_what_the_folding_chose():
    """The unit's cycles per frame are the folding's (chosen before the layout), per layer."""
    graph = compile_graph(zoo.build("w1a2", 0))
    d = verilog.build_design(graph, TargetOptions(folding={"layers": [{"pe": 1, "simd": 3}] * 4}))
    convs = [op for op in d.graph.ops() if isinstance(op, ir.Conv)]
    assert len(convs) == len(d.foldings) >= 2
    for op, f in zip(convs, d.foldings):
        pixels = d.graph.tensors[op.outputs[0]].shape[0] * d.graph.tensors[op.outputs[0]].shape[1]
        assert matrix_unit.cycles(op.folded, pixels) == f.cycles
        assert op.folded.fold.idle_lanes == (op.folded.fold.mw % 3 != 0)
