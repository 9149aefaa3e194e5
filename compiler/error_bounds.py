"""End-to-end error bounds of real-valued tensors: how far bnnc's values can be from real arithmetic.

bnnc states every rounding where it happens (`InputQuantize.max_error`, `Conv.acc_error`,
`Requantize.max_error`, a rounded residual `Add`): those are *local* bounds, each against exact
arithmetic on the layer's own represented input. This module carries them through the lowered
graph: for every tensor, per channel, a bound E on |computed value - real value| (real units),
the real value being the original model's in exact arithmetic on its float32 constants. Computed
from the IR alone (it records nothing, changes nothing); `bnnc report` shows it next to the local
bound.

Per op (E_in the input's bound per channel):
- fixed-point input: its rounding (`max_error`) + the float32 rounding of the chain before it;
- Conv: |sum w x - unit * s * acc| <= unit * (s * err_w * taps * max|q| + sum |k| + err_w) * E_in[c]
  (the weight grid's error on the represented input, plus the real weights times the input's
  error), then the epilogue:
  - a float32 Chain (real output): the error through each op (|c| * E for mul, E / |c| for div,
    E for add / sub / relu) plus 2^-23 of the op's largest |value| (its float32 rounding and that
    of a constant bnnc folded in float32), and the conversion of a wide accumulator to float32;
  - Requantize: |a| * E_acc + its rounding (`max_error`: to the grid, the pre-shift's floor, the
    multiplier's and offset's rounding) + 2^-23 of the map's magnitude where it rounds (constants
    bnnc folded in float32, e.g. BatchNorm's sqrt(var + eps));
  - a sign / threshold / levels: exact except where the compared value lies within its bound of a
    step (a near tie: the report gives the margin); the bounds after it assume no near tie flipped;
- Activation: its epilogue on the input integers (the accumulator is the input value);
- MaxPool, Concat, Gather: the input's bound (a max of values each within E is within E of the real max);
  SumPool / GlobalSumPool: the window's sum of bounds, in the output's scale; residual Add: the
  sum of both bounds + half an output step where it rounds;
- Sigmoid: min(E k / 4, 1) (sigmoid is 1/4-Lipschitz; k = in_scale / the input's scale, 2 for a
  tanh = 2 sigmoid(2x) - 1, whose Activation doubles the result) + its own `max_error` (the grid's
  half step and the float64 evaluation, arith.sigmoid);
- Gelu: 1.13 E k (x Phi(x) is 1.13-Lipschitz; k = in_scale / the input's scale) + its own `max_error`
  (the grid's half step and the float64 evaluation, arith.gelu);
- Mul of two streams a, b (values up to A, B): (A + E_a) E_b + B E_a, + half an output step where
  it rounds;
- Softmax: min(E / 2, e^(2E) - 1) for the input's error (the Jacobian's rows sum to at most 1/2;
  p_i changes by a factor of at most e^(2E)), + `arith.softmax`'s own bound; LogSoftmax: 2E +
  `arith.log_softmax`'s float64 bound, besides its float32 rounding, relative (|y| * 2^-24);
  ArgMax: exact except where two values lie within 2E (a near tie).
A stream that can saturate (`Requantize.reach` beyond its range, an Add beyond its clamp) keeps
its bound only where it does not saturate: the layer's notes say so. Constant channels stripped
into a consumer's `bias_kernel` are exact (bits) or carry a rounding that is not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import ir
from .arith import GELU_LIPSCHITZ, LOG_SOFTMAX_EVAL_ERROR

F32_ULP = 2.0**-23  # twice the float32 unit roundoff: one rounding of the op, one of a folded constant
FOLDED = 2.0**-23  # relative error of a map whose constants bnnc folded in float32 (BatchNorm: sqrt(var + eps))
SOFTMAX_OWN = 2.0**-24 + 2.0**-42  # arith.softmax's bound for p <= 1, without its C * 2^-52 term


@dataclass
class LayerBound:
    """One op's figures: `local` the bound the op states itself (against its represented input),
    `end_to_end` the largest bound of its output (real units), `tie_margin` the bound of a value
    a sign / threshold / ArgMax compares (0: exact comparisons), `saturates` whether the bound
    holds only where the stream does not saturate."""

    local: float = 0.0
    end_to_end: float = 0.0
    tie_margin: float = 0.0
    saturates: bool = False
    notes: list = field(default_factory=list)


@dataclass
class Bounds:
    tensors: dict  # tensor name -> float64 (C,) bound per channel, real units
    layers: dict  # op name -> LayerBound


def local_bound(op) -> float:
    """The bound an op states on its own rounding (real units, largest over channels)."""
    bound = float(op.max_error) if isinstance(op, (ir.InputQuantize, ir.Sigmoid, ir.Gelu)) else 0.0
    if getattr(op, "acc_error", None) is not None:
        bound += float(np.max(op.acc_error))
    ep = getattr(op, "epilogue", None)
    if isinstance(ep, ir.Requantize) and ep.max_error:
        bound += float(ep.max_error)
    return bound


def end_to_end(graph: ir.Graph) -> Bounds:
    """Per-channel end-to-end bounds of every tensor of `graph` and per-op figures (module docstring)."""
    tensors: dict = {}
    layers: dict = {}
    for op in graph.ops():
        lb = LayerBound(local=local_bound(op))
        out = graph.tensors[op.outputs[0]]
        c = out.shape[2]
        if isinstance(op, ir.InputQuantize):
            e = np.full(c, _input_error(graph, op))
        elif isinstance(op, ir.Conv):
            e = _conv(graph, op, tensors, lb)
        elif isinstance(op, ir.Activation):
            src = graph.tensors[op.inputs[0]]
            e_acc = tensors[op.inputs[0]] / src.scale
            lo, hi = np.full(src.shape[2], src.lo, np.int64), np.full(src.shape[2], src.hi, np.int64)
            e = _epilogue(op.epilogue, e_acc, lo, hi, src.scale, lb)
        elif isinstance(op, (ir.MaxPool, ir.Concat)):
            e = np.concatenate([tensors[t] for t in op.inputs])
        elif isinstance(op, ir.Gather) and op.index is not None:  # an output channel: its elements' largest
            e = tensors[op.inputs[0]][op.index % graph.tensors[op.inputs[0]].shape[2]].max(axis=(0, 1))
        elif isinstance(op, ir.Gather):  # values moved, not changed
            e = tensors[op.inputs[0]] if op.channels is None else tensors[op.inputs[0]][list(op.channels)]
        elif isinstance(op, ir.Flatten):  # pixel after pixel: each channel's bound at every pixel
            src = graph.tensors[op.inputs[0]]
            e = np.tile(tensors[op.inputs[0]], src.shape[0] * src.shape[1])
        elif isinstance(op, ir.Unflatten):  # a map channel's bound: the largest of its elements'
            flat = tensors[op.inputs[0]] if op.order is None else tensors[op.inputs[0]][op.order]
            e = flat.reshape(-1, out.shape[2]).max(axis=0)
        elif isinstance(op, (ir.SumPool, ir.GlobalSumPool)):
            src = graph.tensors[op.inputs[0]]
            taps = op.gains(src.shape[:2]).max() if isinstance(op, ir.SumPool) else src.shape[0] * src.shape[1]
            e = tensors[op.inputs[0]] * float(taps) * out.scale / src.scale
        elif isinstance(op, ir.Add):
            e = tensors[op.inputs[0]] + tensors[op.inputs[1]] + (out.scale / 2 if op.round_shift else 0.0)
            a, b = (graph.tensors[t] for t in op.inputs)
            reach = max(-(a.lo * a.scale + b.lo * b.scale), a.hi * a.scale + b.hi * b.scale)
            lb.saturates = reach > max(op.hi, -op.lo) * out.scale
        elif isinstance(op, ir.Softmax) and op.log:
            # l_i = x_i - m - log(sum_j exp(x_j - m)) moves by |dx_i| + a softmax-weighted mean of
            # the |dx_j|; arith.log_softmax's own float64 error, its float32 rounding relative (|l_i| * 2^-24)
            lb.local = LOG_SOFTMAX_EVAL_ERROR
            e = np.full(c, 2 * float(np.max(tensors[op.inputs[0]], initial=0.0)) + lb.local)
        elif isinstance(op, ir.Softmax):
            e_in = float(np.max(tensors[op.inputs[0]], initial=0.0))
            lb.local = SOFTMAX_OWN + c * 2.0**-52 + 2.0**-150  # its own float64 steps and float32 rounding
            if op.out_grid is not None:  # the model's QuantizeLinear -> DequantizeLinear: half a step
                lb.local += op.out_grid[0] / 2
            # |dp_i / dx_j| rows sum to 2 p_i (1 - p_i) <= 1/2 (the relative bound e^(2 |d|) - 1 is never
            # smaller, and overflows for large inputs)
            e = np.full(c, e_in / 2 + lb.local)
        elif isinstance(op, ir.Sigmoid):
            # sigmoid is 1/4-Lipschitz and its values lie in [0, 1]; its input x = q * in_scale (twice
            # the stream's scale for a tanh) is off by the stream's bound times in_scale / scale
            src = graph.tensors[op.inputs[0]]
            e = np.minimum(tensors[op.inputs[0]] * (op.in_scale / src.scale) / 4, 1.0) + op.max_error
        elif isinstance(op, ir.Gelu):
            src = graph.tensors[op.inputs[0]]
            e = tensors[op.inputs[0]] * (op.in_scale / src.scale) * GELU_LIPSCHITZ + op.max_error
        elif isinstance(op, ir.Mul):
            e = _product(graph, op, tensors, lb)
        elif isinstance(op, ir.ArgMax):
            lb.tie_margin = float(np.max(tensors[op.inputs[0]], initial=0.0))
            e = np.zeros(c)
        else:
            raise AssertionError(f"error bounds: {type(op).__name__} is not an IR op")
        tensors[op.outputs[0]] = np.asarray(e, np.float64)
        lb.end_to_end = float(np.max(tensors[op.outputs[0]], initial=0.0))
        _describe(op, lb)
        layers[op.name] = lb
    return Bounds(tensors, layers)


def _product(graph: ir.Graph, op: ir.Mul, tensors: dict, lb: LayerBound) -> np.ndarray:
    """ir.Mul: with computed a', b' (|a'| <= A, |b'| <= B) and real a, b, |a b - a' b'| =
    |a (b - b') + b' (a - a')| <= (A + E_a) E_b + B E_a, + half an output step where it rounds."""
    ta, tb = (graph.tensors[t] for t in op.inputs)
    out = graph.tensors[op.outputs[0]]
    big_a, big_b = (max(-t.lo, t.hi) * t.scale for t in (ta, tb))
    ea, eb = tensors[op.inputs[0]], tensors[op.inputs[1]]
    ends = [x * y * ta.scale * tb.scale for x in (ta.lo, ta.hi) for y in (tb.lo, tb.hi)]
    lb.saturates = max(-min(ends), max(ends)) > max(op.hi, -op.lo) * out.scale
    return (big_a + ea) * eb + big_b * ea + (out.scale / 2 if op.round_shift else 0.0)


def output_bound(graph: ir.Graph, bounds: Bounds | None = None) -> float:
    """The end-to-end bound of the model's output (real units, largest element)."""
    bounds = bounds or end_to_end(graph)
    return float(np.max(bounds.tensors[graph.output], initial=0.0))


def _input_error(graph: ir.Graph, op: ir.InputQuantize) -> float:
    """A fixed-point input: its rounding + the float32 rounding of the model's ops before it. The
    declared ones (--input-scale, an InputAffine) define the input the model is given, in float32."""
    if not op.notes or op.grid is None or not isinstance(op.chain.terminal, ir.RoundClampTerminal):
        return 0.0  # the input as the user gives it, or the model's own quantizer
    grid = graph.input_info.get("grid") or {}
    declared = (grid.get("scale", 1.0) != 1.0) + len(grid.get("pre") or [])
    err, lo, hi = 0.0, np.float64(op.grid[0]), np.float64(op.grid[1])
    for k, x in enumerate(op.chain.ops[:-1]):  # the last op, * 2^f onto the grid, is exact
        err, lo, hi = _chain_step(x, err, lo, hi, rounds=k >= declared)
    return float(op.max_error) + float(np.max(err))


def _chain_step(x: ir.ChainOp, err, lo, hi, rounds: bool = True):
    """One float32 chain op on values in [lo, hi] with error `err`: (error, lo, hi) after it
    (`rounds`: its float32 rounding counts as an error)."""
    if x.op == "relu":
        return err, np.maximum(lo, 0), np.maximum(hi, 0)
    cst = np.asarray(x.const, np.float64)
    if x.op == "mul":
        a, b = lo * cst, hi * cst
        err = err * np.abs(cst)
    elif x.op == "div":
        a, b = lo / cst, hi / cst
        err = err / np.abs(cst)
    elif x.op == "add":
        a, b = lo + cst, hi + cst
    else:
        a, b = lo - cst, hi - cst
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    exact = x.op in ("mul", "div") and np.all(np.frexp(cst)[0] == 0.5)  # a power of two
    if rounds and not exact:
        err = err + F32_ULP * np.maximum(np.abs(lo), np.abs(hi))
    return err, lo, hi


def _conv(graph: ir.Graph, op: ir.Conv, tensors: dict, lb: LayerBound) -> np.ndarray:
    from .passes.fold_batchnorm_into_thresholds import acc_range, tap_range

    src = graph.tensors[op.inputs[0]]
    e_in = tensors[op.inputs[0]]
    o, kh, kw, ci = op.w.shape
    unit = op.unit if op.unit is not None else np.maximum(op.scale_p, op.scale_n)
    k = np.abs(ir.int_weights(op)).astype(np.float64)
    err_w = op.weight_error if op.weight_error is not None else np.zeros(o)
    qlo, qhi = tap_range(src)
    mag = max(-int(qlo), int(qhi), 1)
    taps = kh * kw * ci
    per_channel = k.sum(axis=(1, 2)) + err_w[:, None] * (kh * kw)  # (O, C): sum of |real weight| / unit
    pre = unit * (src.scale * err_w * taps * mag + per_channel @ np.broadcast_to(e_in, (ci,)))
    lo, hi = acc_range(op, src)
    acc_unit = unit * src.scale  # real value of one accumulator step
    e_acc = np.divide(pre, acc_unit, out=np.zeros(o), where=acc_unit > 0)
    return _epilogue(op.epilogue, e_acc, lo, hi, acc_unit, lb, wide=op.wide_acc)


def _epilogue(ep, e_acc, lo, hi, acc_unit, lb: LayerBound, wide: bool = False) -> np.ndarray:
    """Output bound per channel of an epilogue whose accumulator (integers in [lo, hi], one step
    = `acc_unit` real units) is off by `e_acc` accumulator steps."""
    e_acc = np.asarray(e_acc, np.float64)
    if isinstance(ep, ir.Chain) and ep.terminal is None:
        mlo, mhi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
        err = e_acc + (F32_ULP / 2 * np.maximum(np.abs(mlo), np.abs(mhi)) if wide else 0.0)
        for x in ep.ops:
            err, mlo, mhi = _chain_step(x, err, mlo, mhi)
        return np.broadcast_to(err, np.shape(lo)).astype(np.float64)
    if isinstance(ep, ir.Requantize):
        alo, ahi = np.asarray(lo, np.int64) >> ep.pre_shift, np.asarray(hi, np.int64) >> ep.pre_shift
        if ep.acc_lo is not None:
            alo, ahi = np.clip(alo, ep.acc_lo, ep.acc_hi), np.clip(ahi, ep.acc_lo, ep.acc_hi)
        amax = np.maximum(np.abs(alo), np.abs(ahi)).astype(np.float64)
        step = ep.out_scale / 2.0**ep.shift  # real value of one unit of mult * a + add
        # a rounded stream map (streams.requantize: acc_lo set): its multiplier is within half a
        # unit of the map's slope (max_error holds what that rounding does), and its constants may
        # be ones bnnc folded in float32; a coarser-grid rounding (narrow) multiplies by exactly 1
        rounded = bool(ep.max_error) and ep.acc_lo is not None
        slope = (np.abs(ep.mult) + 0.5 * rounded) * step / 2.0**ep.pre_shift  # real units per accumulator step
        offset = np.abs(ep.add - (1 << (ep.shift - 1) if ep.shift else 0)) * step
        e = slope * e_acc + ep.max_error
        if rounded:
            e = e + FOLDED * (slope * amax * 2.0**ep.pre_shift + offset)
        lb.saturates = ep.reach > max(ep.hi, -ep.lo) * ep.out_scale
        return e
    # bits / levels: exact except at a near tie of the compared value
    lb.tie_margin = float(np.max(e_acc * acc_unit, initial=0.0))
    channels = ep.direction.size if hasattr(ep, "direction") else np.size(e_acc)
    return np.zeros(channels)


def _describe(op, lb: LayerBound) -> None:
    if lb.end_to_end and (lb.end_to_end != lb.local or lb.local):
        local = f"<= {lb.local:.3g}" if lb.local else "exact (0)"
        lb.notes.append(f"error bound vs real arithmetic: local {local}, end-to-end <= {lb.end_to_end:.3g}"
                        + (" (where the stream does not saturate)" if lb.saturates else ""))
    if lb.tie_margin:
        what = "values" if isinstance(op, ir.ArgMax) else "pre-activations"
        lb.notes.append(f"compares {what} with end-to-end error <= {lb.tie_margin:.3g}: exact except where "
                        f"{'two values lie' if isinstance(op, ir.ArgMax) else 'one lies'} within that of "
                        f"{'each other' if isinstance(op, ir.ArgMax) else 'its step'} (near ties); "
                        "bounds after it assume no near tie flipped")
