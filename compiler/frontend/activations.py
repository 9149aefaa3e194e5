"""Activations and quantizers: Sign, BipolarQuant, MultiThreshold, Quant, QuantizeLinear /
DequantizeLinear, Relu. A terminal closes the pending value it applies to: the model input
(ir.InputQuantize), a Conv's accumulator (its epilogue) or an integer tensor (ir.Activation)."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from typing import Optional

import numpy as np

from .. import ir
from ..arith import eval_chain
from ..errors import BnncError
from ..onnx_loader import int_range, quant_levels, round_mode
from ..original import trunc_shift
from ..passes.merge_summed_convs import merged_conv
from .context import terminal_type
from .gating import tanh_stream
from .streams import flat_channels, pools_commute, rounding_error, to_stream, uniform
from .registry import handler, where
from .values import AccVal, BitsVal, InputVal, IntChainVal, IntsVal, PendingVal, Val, with_chain


@handler("Sign")
def sign(ctx, node):
    activate(ctx, node, ir.SignTerminal(zero_maps_to=0, source=node.name))


@handler("BipolarQuant")
def bipolar_quant(ctx, node):
    s = np.asarray(ctx.const(node, 1, "scale"), dtype=np.float64)
    if s.size != 1 or not s.ravel()[0] > 0:
        raise BnncError(f"{where(node)}: bnnc supports a positive scalar scale (got {s.ravel()[:4]})")
    activate(ctx, node, ir.SignTerminal(zero_maps_to=1, out_scale=float(s.ravel()[0]), source=node.name))


@handler("MultiThreshold", ignores=("out_dtype",))
def multi_threshold(ctx, node, *, data_layout="NCHW", out_scale=1.0, out_bias=0.0):
    t = np.asarray(ctx.const(node, 1, "thresholds"), dtype=np.float32)
    if t.ndim != 2:
        raise BnncError(f"{where(node)}: thresholds must be 2-D (channels, steps), got {t.shape}")
    v = ctx.val(node)
    if data_layout != "NCHW" and len(v.shape) != 2:
        raise BnncError(f"{where(node)}: data_layout {data_layout} is not supported")
    out_scale = float(out_scale)
    out_bias = float(out_bias)
    term = ir.ThresholdTerminal(t, out_scale, out_bias, source=node.name)
    if not isinstance(v, InputVal) and not _bipolar_1step(term):
        term = _level_terminal(node, t, out_scale, out_bias)
    activate(ctx, node, term)


@handler("Quant")
def quant(ctx, node, *, signed=1, narrow=0, rounding_mode="ROUND"):
    v = ctx.val(node)
    scale = np.asarray(ctx.const(node, 1, "scale"), dtype=np.float32)
    zp = np.asarray(ctx.const(node, 2, "zero point"), dtype=np.float32)
    bw = np.asarray(ctx.const(node, 3, "bit width"))
    if scale.size != 1 or zp.size != 1 or not float(scale) > 0:
        raise BnncError(f"{where(node)}: Quant needs a positive scalar scale and zero point here")
    if float(zp) != round(float(zp)):
        raise BnncError(f"{where(node)}: zero point {float(zp)} is not an integer")
    if isinstance(v, (AccVal, IntsVal, IntChainVal)):
        if int(round(float(bw))) == 1 and signed:
            if float(zp) != 0:
                raise BnncError(f"{where(node)}: a 1-bit Quant with a zero point is not bipolar")
            ops = [ir.ChainOp("div", scale.reshape(()))]
            term = ir.SignTerminal(zero_maps_to=1, out_scale=float(scale), source=node.name)
        else:
            ops, term = _multibit_quant(node, scale, zp, bw, signed, narrow, rounding_mode)
            term.out_scale = float(scale)
        if isinstance(v, IntsVal):
            v = IntChainVal.of(v)
        activate(ctx, node, term, with_chain(v, ops))
        return
    if not isinstance(v, InputVal):
        raise BnncError(f"{where(node)}: Quant of a {v.kind} tensor is not supported")
    ops, term = _multibit_quant(node, scale, zp, bw, signed, narrow, rounding_mode)
    out = ctx.finish_input(node, with_chain(v, ops), term, zp_after_round=0)
    out.scale = float(scale)
    ctx.set(node, out)


@handler("Trunc")
def trunc(ctx, node, *, signed=1, narrow=0, rounding_mode="FLOOR"):
    """QONNX Trunc of an integer tensor n (real value n * s): round(n * s / scale) is the integer
    n * R (R = s / scale, an integer up to float32 rounding, which cannot move a round to
    nearest), then clamp(n * R / 2**k) rounded as the node says, times the output scale."""
    v = ctx.val(node)
    if len(node.inputs) != 6:
        raise BnncError(f"{where(node)}: Trunc needs 6 inputs (x, scale, zeropt, input bit width, "
                        "output scale, output bit width)")
    scale = np.asarray(ctx.const(node, 1, "scale"), np.float64)
    zp = np.asarray(ctx.const(node, 2, "zero point"), np.float64)
    out_scale = np.asarray(ctx.const(node, 4, "output scale"), np.float64)
    bits = np.asarray(ctx.const(node, 5, "output bit width"), np.float64)
    if any(c.size != 1 for c in (scale, zp, out_scale, bits)) or float(zp) != 0 or not float(scale) > 0:
        raise BnncError(f"{where(node)}: bnnc supports Trunc with scalar scales and a zero point of 0")
    if not isinstance(v, IntsVal):
        raise BnncError(f"{where(node)}: Trunc of a {v.kind} tensor is not supported (of integers it is)")
    src = ctx.graph.tensors[v.tensor]
    ratio = v.scale / float(scale)
    r = round(ratio)
    mag = max(abs(src.lo), abs(src.hi))
    if r < 1 or mag * (abs(ratio - r) + 1e-6 * r) >= 0.25 or mag * r >= 2**24:
        raise BnncError(f"{where(node)}: Trunc's scale {float(scale):g} is not the input's scale {v.scale:g} "
                        "divided by an integer; bnnc supports Trunc of integer sums (average pools)")
    step = trunc_shift(float(scale), float(out_scale))
    lo, hi = quant_levels(float(bits), signed, narrow)
    ops = ([ir.ChainOp("mul", np.float32(r).reshape(()))] if r != 1 else []) + \
        [ir.ChainOp("div", np.float32(step).reshape(()))]
    term = ir.RoundClampTerminal(lo, hi, 0, round_mode(rounding_mode), source=node.name, out_scale=float(out_scale))
    activate(ctx, node, term, IntChainVal(v.shape, v.source_ops, chain=ops, tensor=v.tensor, scale=v.scale))


@handler("QuantizeLinear", ignores=("axis", "saturate", "block_size", "output_dtype"))
def quantize_linear(ctx, node):
    if node.inputs[0] in ctx.gridded_outputs:  # after a Softmax that holds it (heads._output_grid)
        ctx.gridded_outputs.add(node.outputs[0])
        ctx.set(node, ctx.val(node))
        return
    v = ctx.val(node)
    scale, zp = linear_quant_params(ctx, node)
    if scale.size != 1 or zp.size != 1 or not float(scale) > 0:
        raise BnncError(f"{where(node)}: bnnc supports per-tensor QuantizeLinear (positive scalar scale) here")
    lo, hi = int_range(zp.dtype)
    ops = [ir.ChainOp("div", scale.reshape(()))]
    term = ir.RoundClampTerminal(lo, hi, int(zp), "half_even", source=node.name)
    if isinstance(v, IntsVal):
        v = IntChainVal.of(v)
    if not isinstance(v, PendingVal):
        raise BnncError(f"{where(node)}: QuantizeLinear of a {v.kind} tensor is not supported")
    ctx.set(node, with_chain(v, ops, quant=(term, float(scale), node.name)))


@handler("DequantizeLinear", ignores=("block_size",))
def dequantize_linear(ctx, node, *, axis=1):
    if node.inputs[0] in ctx.gridded_outputs:  # the Softmax's output grid holds it
        ctx.gridded_outputs.add(node.outputs[0])
        ctx.set(node, ctx.val(node))
        return
    v = ctx.val(node)
    if ctx.integer_input(v):
        ctx.set(node, _dequantized_input(ctx, node, v, axis))
        return
    if not isinstance(v, PendingVal) or v.quant is None:
        raise BnncError(f"{where(node)}: DequantizeLinear must follow a QuantizeLinear (an int8 layer "
                        "boundary) or hold constant weights")
    term, qscale, qname = v.quant
    scale, zp = linear_quant_params(ctx, node)
    if scale.size != 1 or float(scale) != qscale or int(zp.ravel()[0]) != term.zero_point:
        raise BnncError(f"{where(node)}: its scale/zero point differ from QuantizeLinear '{qname}'")
    if isinstance(v, InputVal):
        out = ctx.finish_input(node, replace(v, quant=None), term, zp_after_round=term.zero_point)
        out.scale = qscale
        ctx.set(node, out)
        return
    ctx.set(node, _quantized(ctx, node, v, term.zero_point, qscale))


def quantize_linear_integers(ctx, node, v: PendingVal) -> Val:
    """The integers q = clamp(round(x / scale) + zero_point, qmin, qmax) of a pending QuantizeLinear
    `node` that no DequantizeLinear follows (a model output: the int8 / uint8 logits of tf2onnx's
    full-integer TFLite models): a tensor of q itself, scale 1."""
    if isinstance(v, InputVal):
        raise BnncError(f"{where(node)}: QuantizeLinear of the model input is the model output; bnnc compiles "
                        "networks with at least one layer")
    return _quantized(ctx, node, v, 0, 1.0)


def _quantized(ctx, node, v: PendingVal, zero_point: int, out_scale: float) -> Val:
    """The pending QuantizeLinear of `v` closed: clamp(round(x / scale) + zp, qmin, qmax) - zero_point
    on integers whose step is out_scale (zero_point = zp, out_scale = scale: its DequantizeLinear)."""
    term = v.quant[0]
    term = ir.RoundClampTerminal(term.qmin, term.qmax, zero_point, term.mode, term.source,
                                 add_after_round=term.zero_point, out_scale=out_scale, exact_below=term.exact_below)
    nv = replace(v, quant=None)
    if isinstance(nv, IntChainVal):
        return _activation_op(ctx, node, nv, term)
    return ctx.finish_acc(nv, term, node)


def linear_quant_params(ctx, node) -> tuple:
    """(scale, zero point) of a QuantizeLinear / DequantizeLinear as arrays: the scale float32 (a
    constant: refused otherwise), the zero point as stored, uint8 0 where it is absent."""
    scale = np.asarray(ctx.const(node, 1, "scale"), dtype=np.float32)
    zp = ctx.consts.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else np.uint8(0)
    return scale, np.asarray(zp)


def _dequantized_input(ctx, node, v: InputVal, axis: int) -> InputVal:
    """The integer model input q dequantized: x = (q - zero_point) * scale in float32, per tensor
    or per `axis` (as onnxruntime computes it: q - zero_point is exact in float32 for inputs within
    +-2^24, then one float32 product), as pending ops on the input."""
    scale = np.asarray(ctx.const(node, 1, "scale"), dtype=np.float32)
    zp = np.asarray(ctx.consts.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else 0)
    lo, hi = ctx.grid["range"]
    if max(-lo, hi) + int(np.abs(zp).max(initial=0)) > 2**24:
        raise BnncError(f"{where(node)}: DequantizeLinear of the {ctx.lm.input_dtype} model input with range "
                        f"[{lo}, {hi}] is not exact in float32; declare a narrower --input-range")
    if not np.all(np.isfinite(scale)):
        raise BnncError(f"{where(node)}: its scale is not finite")
    ops = []
    for op, c in (("sub", zp), ("mul", scale)):
        if c.size > 1:
            if c.ndim != 1 or not -len(v.shape) <= axis < len(v.shape) or c.size != v.shape[axis]:
                raise BnncError(f"{where(node)}: its {'zero point' if op == 'sub' else 'scale'} of shape {c.shape} "
                                f"does not match axis {axis} of the input {v.shape}")
            bshape = [1] * len(v.shape)
            bshape[axis] = c.size
            c = c.reshape(bshape)
        elif op == "sub" and not c.any():
            continue
        ops.append(ir.ChainOp(op, ctx.input_const(node, v, c)))
    return with_chain(v, ops)


@handler("Relu", ignores=("consumed_inputs",))
def relu(ctx, node):
    v = ctx.val(node)
    if isinstance(v, IntsVal):
        v = IntChainVal.of(v)  # a fixed-point stream: the relu stays pending on its integers
    if not isinstance(v, PendingVal):
        raise BnncError(f"{where(node)}: Relu on a {v.kind} tensor is not supported")
    ctx.set(node, with_chain(v, [ir.ChainOp("relu")]))


# ----------------------------------------------------------------------------- shared steps


def activate(ctx, node, term, v: Optional[Val] = None):
    """Apply the terminal `term` to the node's input (or to `v`). An ONNX Sign of a value bnnc
    represents with a stated rounding (a rounded fixed-point stream, real-valued weights rounded to
    their grid) maps an exact 0 to +1: the represented 0 stands for real values of either sign
    within that bound, and the activation stays binary instead of becoming ternary. Not where the
    0 is a value of its own, which every x <= 0 gives: right after a Relu (larq's ste_heaviside,
    sign(relu(x)) in {0, 1}), on a stream clamped at 0 or on a product with one (`_zero_is_rounded`)."""
    v = ctx.val(node) if v is None else v
    if term is not None and node.name in ctx.lm.ste_exact_below:  # a straight-through form read as this terminal
        term = replace(term, exact_below=ctx.lm.ste_exact_below[node.name])
    if isinstance(v, AccVal) and v.pools and not pools_commute(v) and term is not None:
        # max and the rest of the chain do not commute: pool the fixed-point values themselves
        v = to_stream(ctx, node, v)
    if isinstance(term, ir.SignTerminal) and term.zero_maps_to == 0 and _rounded(ctx, v) and _zero_is_rounded(ctx, v):
        term = replace(term, zero_maps_to=1, rounded_input=True)
    if isinstance(v, BitsVal) and isinstance(term, ir.SignTerminal):
        ctx.set(node, replace(v, scale=term.out_scale))
        return
    if isinstance(v, InputVal):
        ctx.set(node, ctx.finish_input(node, v, term))
        return
    if isinstance(v, (IntsVal, IntChainVal)):
        ctx.set(node, _activation_op(ctx, node, v, term))
        return
    if not isinstance(v, AccVal):
        raise BnncError(f"{where(node)}: activation of a {v.kind} tensor is not supported")
    ctx.set(node, ctx.finish_acc(v, term, node))


TERMINAL_OPS = {"Sign", "BipolarQuant", "Quant", "MultiThreshold", "QuantizeLinear"}
PENDING_OPS = {"Mul", "Add", "Sub", "Div", "BatchNormalization", "Relu", "Clip", "Identity", "Dropout", "MaxPool"}


@handler("Tanh")
def tanh(ctx, node):
    """Tanh before a quantizer or a sign (Brevitas' QuantTanh): monotone, so it stays pending in the
    chain and the fold finds the terminal's thresholds on the accumulator exactly. Where a path from
    it reaches anything but a terminal through elementwise ops (or a MaxPool), its values continue
    unquantized (QKeras' quantized_tanh as qonnx writes it, a tanh output): a fixed-point stream
    with a stated bound (gating.tanh_stream)."""
    v = ctx.val(node)
    if not _reaches_only_terminals(ctx, node):
        ctx.set(node, tanh_stream(ctx, node, v))
        return
    if isinstance(v, IntsVal):
        v = IntChainVal.of(v)
    if not isinstance(v, PendingVal):
        raise BnncError(f"{where(node)}: Tanh of a {v.kind} tensor is not supported (of a real-valued tensor it is)")
    ctx.set(node, with_chain(v, [ir.ChainOp("tanh")]))


def _reaches_only_terminals(ctx, node) -> bool:
    """Whether every path from the node's output reaches a quantizer or a sign through ops that stay
    pending in the chain (never the model output)."""
    stack, seen = [node.outputs[0]], set()
    while stack:
        t = stack.pop()
        if t == ctx.lm.output_name:
            return False
        for n in ctx.consumers.get(t, []):
            if n.op in TERMINAL_OPS or n.name in seen:
                continue
            if n.op not in PENDING_OPS or n.inputs[0] != t:
                return False
            seen.add(n.name)
            stack.append(n.outputs[0])
    return True


def _zero_is_rounded(ctx, v: Val) -> bool:
    """Whether an exact 0 before the sign is only a rounded value near 0, not the image of a range:
    no Relu whose 0 the ops after it keep at 0 (larq's ste_heaviside, sign(relu(x))), and no
    integer tensor clamped at 0 (or a product of one: `_zero_is_a_range_end`) whose 0 the chain
    keeps at 0."""
    chain = list(getattr(v, "chain", []))
    zero = np.zeros(1, np.float32)
    for i, op in enumerate(chain):
        if op.op == "relu" and np.any(eval_chain(chain[i + 1:], zero) == 0):
            return False
    if isinstance(v, (IntsVal, IntChainVal)):
        if _zero_is_a_range_end(ctx.graph, v.tensor) and np.any(eval_chain(chain, zero) == 0):
            return False
    return True


def _zero_is_a_range_end(graph: ir.Graph, tensor: str) -> bool:
    """Whether the integer tensor's 0 is where a range is clamped: 0 is an end of its range, or it is
    a product of streams one of which is clamped at 0 (a gate that a Relu / Clip / relu6 closes
    gives an exact 0 product; Sign(0) of that is 0 in the model)."""
    t = graph.tensors[tensor]
    if 0 in (t.lo, t.hi):
        return True
    op = graph.producer(tensor)
    return isinstance(op, ir.Mul) and any(_zero_is_a_range_end(graph, i) for i in op.inputs)


def _rounded(ctx, v: Val) -> bool:
    """Whether bnnc represents `v` with a stated rounding error (see `activate`)."""
    if isinstance(v, AccVal):  # rounded weights, or exact ones summing a rounded input
        conv = merged_conv(ctx.graph.op(v.conv))
        return (conv.acc_error is not None and bool(np.any(conv.acc_error))) \
            or rounding_error(ctx.graph, conv.inputs[0]) > 0
    if isinstance(v, (IntsVal, IntChainVal)):
        return rounding_error(ctx.graph, v.tensor) > 0
    return False


def _activation_op(ctx, node, v, term) -> Val:
    """Sign / MultiThreshold / Quant of an integer (fixed-point) tensor: an Activation op."""
    chain = list(v.chain) if isinstance(v, IntChainVal) else [ir.ChainOp("mul", np.float32(v.scale).reshape(()))]
    if v.flat_from is not None and not uniform(chain, term):
        v, chain, term = flat_channels(ctx, v, chain, term)
    src = ctx.graph.tensors[v.tensor]
    name = ctx.new_name("act")
    tname = name + "_out"
    oty, cls, scale = terminal_type(node, term, src.shape)
    ctx.graph.add(ir.Activation(name, [v.tensor], [tname], ir.Chain(chain, term)), {tname: oty})
    # the same map for every element: on the tensor as stored, the flatten still pending
    return cls(v.shape, [node.name], tensor=tname, scale=scale, flat_from=v.flat_from)


def _multibit_quant(node, scale, zp, bw, signed, narrow, rounding_mode) -> tuple:
    """(chain ops, terminal) of a QONNX Quant of more than one bit: divide by the scale, add the
    zero point, round as the node says and clamp to the integer levels."""
    lo, hi = quant_levels(float(bw), signed, narrow)
    ops = [ir.ChainOp("div", scale.reshape(()))]
    if float(zp) != 0:
        ops.append(ir.ChainOp("add", zp.reshape(())))
    term = ir.RoundClampTerminal(lo, hi, int(zp), round_mode(rounding_mode), source=node.name)
    return ops, term


def _bipolar_1step(term: ir.ThresholdTerminal) -> bool:
    return term.thresholds.shape[1] == 1 and term.out_bias == -(term.out_bias + term.out_scale) \
        and term.out_bias + term.out_scale > 0


def _level_terminal(node, t: np.ndarray, out_scale: float, out_bias: float) -> ir.LevelTerminal:
    """MultiThreshold levels out_scale * count + out_bias as integers base + step * count times a
    scale: the smallest power-of-two step that puts out_bias / out_scale on the grid."""
    if not out_scale > 0:
        raise BnncError(f"{where(node)}: MultiThreshold out_scale {out_scale} must be positive")
    r = Fraction(out_bias) / Fraction(out_scale)
    for j in range(0, 9):
        d = 2**j
        if (r * d).denominator == 1:
            if np.any(np.diff(t, axis=1) < 0):
                raise BnncError(f"{where(node)}: MultiThreshold thresholds must be non-decreasing per channel")
            return ir.LevelTerminal(t, int(r * d), d, out_scale / d, source=node.name)
    raise BnncError(f"{where(node)}: MultiThreshold levels {out_scale:g} * n + {out_bias:g} are not on an "
                    "integer grid with a power-of-two step (up to 256)")
