"""ir.verify: it accepts every graph the frontend and the passes build (zoo and random models,
checked after every step), and each of its rules catches a graph broken on purpose."""

import dataclasses

import numpy as np
import pytest

from bnnc import ir, zoo
from bnnc.pipeline import PASSES, Options, compile_graph, frontend
from bnnc.testing.random_models import random_model


def _verify_every_step(model):
    g = frontend(model)
    ir.verify(g)
    for p in PASSES:
        g = p(g)
        ir.verify(g)
    return g


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_models_verify_after_every_pass(name):
    _verify_every_step(zoo.build(name, seed=0))


@pytest.mark.parametrize("seed", range(16))
def test_random_models_verify_after_every_pass(seed):
    _verify_every_step(random_model(seed)[0])


def test_pipeline_option_runs_verify(monkeypatch):
    calls = []
    monkeypatch.setattr(ir, "verify", lambda g: calls.append(g))
    compile_graph(zoo.build("tfc", seed=0), Options(verify_ir=True))
    assert len(calls) == 1 + len(PASSES)
    calls.clear()
    compile_graph(zoo.build("tfc", seed=0), Options(verify_ir=False))
    assert calls == []


# ----------------------------------------------------------------------------- broken graphs

_GRAPHS: dict = {}


def _graph(name):
    if name not in _GRAPHS:
        _GRAPHS[name] = compile_graph(zoo.build(name, seed=0))
    return _GRAPHS[name].copy()


def _op(g, name_part, cls=None):
    return next(op for op in g.ops() if name_part in op.name and (cls is None or isinstance(op, cls)))


def _convs(g):
    return [op for op in g.ops() if isinstance(op, ir.Conv)]


def _cycle(g):
    first, last = _convs(g)[0], _convs(g)[-1]
    first.inputs = [last.outputs[0]]
    g._relink()


def _two_producers(g):
    g.add(dataclasses.replace(_convs(g)[1], name="L99_twin"), {})


def _output_not_produced(g):
    g.output = "nowhere"


def _extra_output(g):
    op = _convs(g)[1]
    g.add(dataclasses.replace(op, name="L99_spare", outputs=["spare"]), {"spare": g.tensors[op.outputs[0]]})


def _untyped_output(g):
    del g.tensors[_convs(g)[1].outputs[0]]


def _missing_input(g):
    _convs(g)[1].inputs = ["ghost"]
    g._relink()


def _wrong_input_type(g):
    conv = _convs(g)[1]
    src = g.tensors[conv.inputs[0]]
    g.tensors[conv.inputs[0]] = ir.Reals(src.shape)


def _lo_above_hi(g):
    t = g.tensors[_op(g, "input").outputs[0]]
    g.tensors[_op(g, "input").outputs[0]] = dataclasses.replace(t, lo=t.hi + 1)


def _window_shape(g):
    conv = _op(g, "conv", ir.Conv)
    conv.stride = (conv.stride[0] + 1, conv.stride[1])


def _weight_shape(g):
    conv = _convs(g)[1]
    conv.w = conv.w[:, :, :, :-1]


def _weight_dtype(g):
    conv = _convs(g)[1]
    conv.w = conv.w.astype(np.float32)


def _unknown_code(g):
    _convs(g)[1].code = "quinary"


def _binary_with_zeros(g):
    conv = _convs(g)[1]
    conv.w = conv.w.copy()
    conv.w[0, 0, 0, 0] = 0


def _bases_do_not_sum(g):
    conv = next(op for op in _convs(g) if op.code == "multi_base")
    conv.int_w = conv.int_w + 1


def _epilogue_rows(g):
    ep = _convs(g)[1].epilogue
    ep.threshold = ep.threshold[:-1]


def _level_rows_decreasing(g):
    ep = _op(g, "conv", ir.Conv).epilogue
    ep.threshold = ep.threshold.copy()
    ep.threshold[0] = ep.threshold[0][::-1] - np.arange(ep.threshold.shape[1])


def _epilogue_output_type(g):
    conv = _convs(g)[-1]
    g.tensors[conv.outputs[0]] = ir.Bits(g.tensors[conv.outputs[0]].shape)


def _chain_constant_shape(g):
    conv = _convs(g)[-1]
    conv.epilogue.ops[0].const = np.ones(conv.w.shape[0] + 1, np.float32)


def _requantize_rows(g):
    ep = _op(g, "conv", ir.Conv).epilogue
    ep.mult = ep.mult[:-1]


def _dense_kernel(g):
    conv = next(op for op in _convs(g) if op.is_dense)
    conv.kernel = (1, 1)


def _add_shapes(g):
    add = _op(g, "add", ir.Add)
    t = g.tensors[add.outputs[0]]
    g.tensors[add.outputs[0]] = dataclasses.replace(t, shape=(t.shape[0], t.shape[1], t.shape[2] + 1))


def _with_gather(g, rows=None, cols=None, channels=None):
    """A Gather (every pixel and channel, unless told) between the first MaxPool and its reader."""
    pool = next(op for op in g.ops() if isinstance(op, ir.MaxPool))
    t = pool.outputs[0]
    h, w, c = g.tensors[t].shape
    reader = g.consumers(t)[0]
    reader.inputs = ["moved" if x == t else x for x in reader.inputs]
    g.add(ir.Gather("L99_gather", [t], ["moved"], tuple(range(h)) if rows is None else rows,
                    tuple(range(w)) if cols is None else cols, channels), {"moved": g.tensors[t]})
    g._relink()


def _gather_rows_out_of_range(g):
    h = next(g.tensors[op.outputs[0]] for op in g.ops() if isinstance(op, ir.MaxPool)).shape[0]
    _with_gather(g, rows=tuple(range(1, h + 1)))


def _gather_shape(g):
    _with_gather(g, channels=(0, 1))


BROKEN = {  # rule: (zoo model, how to break it, words of the message)
    "acyclic": ("tfc", _cycle, "cycle"),
    "one producer per tensor": ("tfc", _two_producers, "one producer"),
    "declared output produced": ("tfc", _output_not_produced, "declared output"),
    "exactly the declared outputs": ("tfc", _extra_output, "exactly the declared outputs"),
    "output tensors typed": ("tfc", _untyped_output, "output tensors have types"),
    "input tensors exist": ("tfc", _missing_input, "input tensors exist"),
    "input types": ("tfc", _wrong_input_type, "input types"),
    "Ints lo <= hi": ("tfc", _lo_above_hi, "lo <= hi"),
    "window shape": ("cnv", _window_shape, "kernel / stride / pads"),
    "weight shape": ("tfc", _weight_shape, "array shapes"),
    "weight dtype": ("tfc", _weight_dtype, "dtype"),
    "weight code": ("tfc", _unknown_code, "codes valid"),
    "binary code has no zeros": ("tfc", _binary_with_zeros, "codes valid"),
    "bases sum to int_w": ("abc-explicit", _bases_do_not_sum, "bases do not sum"),
    "epilogue rows": ("tfc", _epilogue_rows, "array shapes"),
    "LevelThresholds non-decreasing": ("w1a2", _level_rows_decreasing, "non-decreasing"),
    "output type of the epilogue": ("tfc", _epilogue_output_type, "output type follows from the epilogue"),
    "chain constants": ("tfc", _chain_constant_shape, "chain constants"),
    "Requantize rows": ("bireal", _requantize_rows, "Requantize.mult"),
    "dense kernel": ("tfc", _dense_kernel, "kernel"),
    "Add shapes": ("bireal", _add_shapes, "Add of equal shapes"),
    "Gather tables in range": ("cnv", _gather_rows_out_of_range, "Gather takes input rows, columns and channels"),
    "Gather shape": ("cnv", _gather_shape, "Gather keeps the values"),
}


@pytest.mark.parametrize("rule", list(BROKEN))
def test_verify_catches_broken_graph(rule):
    name, breaks, words = BROKEN[rule]
    g = _graph(name)
    ir.verify(g)  # intact
    breaks(g)
    with pytest.raises(ir.IRError, match="(?i)" + words.replace("(", r"\(").replace(")", r"\)")) as e:
        ir.verify(g)
    assert "\n" not in str(e.value)


def test_a_gather_of_every_pixel_verifies():
    g = _graph("cnv")
    _with_gather(g)
    ir.verify(g)


def test_ir_error_is_a_bnnc_error():
    from bnnc.errors import BnncError

    assert issubclass(ir.IRError, BnncError)
