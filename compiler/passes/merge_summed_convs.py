"""Sums of convolutions of one input (ir.ConvSum) become one Conv with integer weights.

A ConvSum's accumulator is acc = sum_i k_i * acc_i, acc_i = sum over valid taps of W_i * a
(+ the valid taps of bias_i), with k_i the exact integer multipliers of its terms' factors
(`ir.conv_sum_multipliers`). Every term reads the same tensor through the same window, so

    acc = sum over valid taps of (sum_i k_i * W_i) * a + sum over valid taps of sum_i k_i * bias_i

exactly (integer arithmetic): one Conv with `int_w = sum_i k_i * int_weights(term_i)` and
`bias_kernel = sum_i k_i * bias_i`, whose epilogue is the ConvSum's. Its code is `multi_base`
(the terms' bases, each scaled by its k_i: a negative k swaps a base's masks) when every term has
bases or is binary, else `int`. The real weight of one unit is `unit` (`Conv.unit`, scale_p /
scale_n). Sums of sums merge innermost first.

Terms of one sum may read different tensors of one type only before `merge_activation_planes`
(activation-base planes of one layer, which that pass makes channel blocks of one tensor); this
pass refuses such a sum. `merged_conv` of it is the Conv of the same accumulator reading the
channel concatenation of its inputs (each term's weights widened to its input's block), which
the frontend uses for accumulator ranges and errors: the ranges of a sum of terms that read
disjoint channels add up, as they do once the planes are merged."""

from __future__ import annotations

import copy

import numpy as np

from .. import ir
from ..errors import BnncError
from .merge_activation_planes import widen


def merge_summed_convs(graph: ir.Graph) -> ir.Graph:
    """Every ConvSum of `graph` as the one Conv that computes its accumulator (a new graph)."""
    g = graph.copy()
    for op in g.ops():
        if isinstance(op, ir.ConvSum):
            if len(op.inputs) > 1:
                raise BnncError(f"layer '{(op.source_ops or [op.name])[0]}' sums convolutions of different activation "
                                "bases of one layer, some of which other ops than convolutions and MaxPools read; "
                                "bnnc sums convolutions of one tensor")
            g.replace(merged_conv(op))
    return g


def merged_conv(op) -> ir.Conv:
    """The Conv with `op`'s name, input, output and epilogue whose accumulator is `op`'s (a Conv
    is returned as it is). Pure: `op` is not changed."""
    if isinstance(op, ir.Conv):
        return op
    if len(op.inputs) > 1:
        return merged_conv(_read_concatenation(op))
    terms = [merged_conv(t) for t in op.terms]
    unit, ks = ir.conv_sum_multipliers(op)
    shape = (-1, 1, 1, 1)
    int_w = sum(k.reshape(shape) * ir.int_weights(t) for k, t in zip(ks, terms))
    bases = [_bases_of(t) for t in terms]
    if any(b is None for b in bases):
        code, bases = "int", []
    else:
        bases = [_scale_base(b, k) for bs, k in zip(bases, ks) for b in bs]
        bases = [b for b in bases if np.any(b.mult_p) or np.any(b.mult_n)]
        code = "multi_base"
    for b in bases:
        b.scale_p, b.scale_n = unit * b.mult_p, unit * b.mult_n
    biases = [(k, t.bias_kernel) for k, t in zip(ks, terms) if t.bias_kernel is not None]
    out = copy.deepcopy(terms[0])  # geometry
    out.name, out.inputs, out.outputs = op.name, list(op.inputs), list(op.outputs)
    out.epilogue, out.source_ops = op.epilogue, list(op.source_ops)
    out.original_params = sum(t.original_params for t in terms)
    out.code, out.int_w, out.bases, out.unit = code, int_w, bases, unit
    out.w = np.sign(int_w).astype(np.int8)
    out.scale_p = out.scale_n = unit.copy()
    out.bias_kernel = sum(k.reshape(-1, 1, 1) * b for k, b in biases) if biases else None
    out.weight_error, out.acc_error = _summed_errors(terms, ks)
    return out


def _summed_errors(terms: list, ks: list) -> tuple:
    """(weight_error, acc_error) of the sum (see ir.Conv), from its terms' stated ones (None where
    no term states one). Per tap, the merged integer weight sum_i k_i * int_w_i is off the real one
    by at most sum_i |k_i| * weight_error_i steps. A term's acc_error is in real units of its
    accumulator times its chain's first op (the one-unit multiplier the frontend starts every
    layer's chain with); its chain's later factors r_i carry it into the sum's real units, so the
    sum is off by at most sum_i |r_i| * acc_error_i."""
    o = len(ks[0])
    weight_error = acc_error = None
    for t, k in zip(terms, ks):
        if t.weight_error is not None:
            weight_error = (0 if weight_error is None else weight_error) + np.abs(k) * t.weight_error
        if t.acc_error is not None:
            ops = t.epilogue.ops
            assert ops and ops[0].op == "mul", "a summed term's chain starts with its unit"
            r = np.array([abs(float(f)) for f in ir.chain_factors(ops[1:], o)])
            acc_error = (0 if acc_error is None else acc_error) + r * t.acc_error
    return weight_error, acc_error


def _read_concatenation(op: ir.ConvSum) -> ir.ConvSum:
    """A copy of the sum `op` over several inputs of C channels each, whose terms read the channel
    concatenation of its inputs (the copy's one input, named as the first)."""
    out = copy.deepcopy(op)
    stack = [out]
    while stack:
        s = stack.pop()
        for t in s.terms:
            if isinstance(t, ir.ConvSum):
                stack.append(t)
            else:
                c = t.w.shape[3]
                widen(t, c * len(op.inputs), c * op.inputs.index(t.inputs[0]))
            t.inputs = [op.inputs[0]]
        s.inputs = [op.inputs[0]]
    return out


def _bases_of(conv: ir.Conv):
    """The conv's weight code as masked binary bases (None for the "int" code)."""
    if conv.code == "binary":
        o = conv.w.shape[0]
        return [ir.WeightBase(conv.w.copy(), np.ones(o, np.int64), np.ones(o, np.int64))]
    if conv.code == "int":
        return None
    return [ir.WeightBase(b.w.copy(), b.mult_p.copy(), b.mult_n.copy()) for b in conv.bases]


def _scale_base(b: ir.WeightBase, k: np.ndarray) -> ir.WeightBase:
    """A base times signed per-channel integers k (a negative k swaps the masks)."""
    neg = k < 0
    w = np.where(neg.reshape(-1, *([1] * (b.w.ndim - 1))), -b.w, b.w).astype(np.int8)
    mp = np.where(neg, b.mult_n, b.mult_p) * np.abs(k)
    mn = np.where(neg, b.mult_p, b.mult_n) * np.abs(k)
    return ir.WeightBase(w, mp.astype(np.int64), mn.astype(np.int64))
