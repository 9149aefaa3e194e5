"""Lower a loaded ONNX graph to bnnc's IR (see ir.py).

Walks the nodes in order, folding constant subgraphs and calling, for every other node, the
handler its op type is registered with (compiler/frontend: one handler per ONNX op). The
handlers keep, for every dynamic ONNX tensor, what it is in integer terms (frontend/values.py):
- the model input with pending float32 ops, waiting for a quantizer or a binarizer;
- an IR tensor (bits, integers, reals, indices) times a real scale;
- the integer accumulator of an IR Conv, with the float32 ops the model applies to it
  (scales, BatchNorm, constant Mul/Add/...) collected into that Conv's epilogue chain, plus
  MaxPools that commute with the final sign.
Weights are decoded into bnnc's weight code by `weight_codes.decode` (binary, ternary, two-scale,
multi-base, integer grid, and real-valued weights on a per-channel power-of-two grid with a stated
error bound). A fixed-point or integer model output becomes real values through the float32
chain of an identity 1x1 convolution (a binary output too: +-scale).

Beyond binary layers with a sign activation, the compressed families lower to:
- multi-level activations (MultiThreshold with several steps, Quant with more than 1 bit,
  QuantizeLinear -> DequantizeLinear inside the network): `Ints` outputs;
- activation bases: one accumulator activated several ways (ABC-Net / PaBT's sign(x - v_n)):
  each activation closes a copy of the layer (same inputs and weights) with its own output, named
  `<layer>_plane<k>`; `passes/merge_activation_planes` makes the copies of bit activations one
  Conv whose output holds them as channel planes (`ir.Planes`);
- sums of layers that read the same input, or planes of one layer (weight bases written as
  separate convolutions, PaBT pairs): an `ir.ConvSum` of them, one integer-weight Conv after
  `passes/merge_summed_convs`;
- residual streams (Bi-Real): a real-valued tensor that an `Add` of two activations, an
  `AveragePool`, or more than one kind of consumer reads is requantized into a fixed-point
  `Ints` stream (`ir.Requantize`, 2**-frac_bits grid); `Add` / `SumPool` / `Activation` ops
  run on it.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from . import ir
from .errors import BnncError
from .frontend import FRAC_BITS, HANDLERS, SUPPORTED_OPS, LoweringContext, where
from .frontend.activations import quantize_linear_integers
from .frontend.linear import identity_conv
from .frontend.streams import stream_of_intchain
from .frontend.values import AccVal, BitsVal, IndexVal, IntChainVal, IntsVal, RealsVal
from .passes.quantize_input import int_dtype_for
from .onnx_loader import CUSTOM_DOMAINS, STANDARD_DOMAINS, LoadedModel, fold_with_origin, foldable

__all__ = ["FRAC_BITS", "SUPPORTED_OPS", "lower"]


def lower(lm: LoadedModel, input_scale=None, input_range=None, frac_bits: int = FRAC_BITS,
          input_affine=None, weight_bits=None) -> ir.Graph:
    """ONNX (loaded) -> IR with float32 epilogue chains; see module docstring. `weight_bits`
    ({node name or "*": bits}) caps the width of real-valued weights (a wider error bound)."""
    ctx = LoweringContext(lm, input_scale, input_range, frac_bits, input_affine, weight_bits)
    for node in lm.nodes:
        if foldable(node, ctx.consts):
            fold_with_origin(node, ctx.consts, ctx.origins, lm.opset)
            continue
        if node.domain not in STANDARD_DOMAINS + CUSTOM_DOMAINS:
            raise BnncError(f"{where(node)} is in domain '{node.domain}', which bnnc does not know; "
                            f"supported ops: {', '.join(SUPPORTED_OPS)}")
        handler = HANDLERS.get(node.op)
        if handler is None:
            raise BnncError(f"{where(node)} is not supported; supported ops: {', '.join(SUPPORTED_OPS)}")
        handler(ctx, node)
    _set_output(ctx)
    unknown = sorted(set(ctx.weight_bits) - {"*"} - ctx.weight_bits_used)
    if unknown:
        raise BnncError(f"--weight-bits names {', '.join(repr(n) for n in unknown)}, which are no layers with "
                        "real-valued weights in this model")
    return ctx.graph


def _set_output(ctx: LoweringContext) -> None:
    """Close the model output and check that every layer's output is read."""
    out = ctx.lm.output_name
    if out not in ctx.vals:
        raise BnncError(f"model output '{out}' is not computed from the input by supported ops")
    v = ctx.vals[out]
    quantized = getattr(v, "quant", None) is not None  # a QuantizeLinear's integers, no DequantizeLinear after it
    if quantized:
        node = next(n for n in ctx.lm.nodes if n.name == v.quant[2])
        v = quantize_linear_integers(ctx, node, v)
        if v.flat_from is not None and v.flat_from[1] * v.flat_from[2] > 1:
            raise BnncError(f"model output '{out}': the integers of QuantizeLinear '{node.name}' of flattened feature "
                            "maps are not supported (of a dense layer's outputs, or unflattened, they are)")
    if quantized or (out in ctx.gridded_outputs and isinstance(ctx.graph.tensors[v.tensor], ir.Ints)):
        ty = ctx.graph.tensors[v.tensor]  # (the second: a Softmax's QuantizeLinear integers, heads._output_grid)
        dtype = int_dtype_for(ty.lo, ty.hi)
    else:
        if isinstance(v, AccVal):
            v = ctx.finish_acc(v, None, None)
        if isinstance(v, IntChainVal) and v.map_from is not None:  # a map in element form: its stream
            v = stream_of_intchain(ctx, SimpleNamespace(name=out, op="output"), v)
        if isinstance(v, (BitsVal, IntsVal, IntChainVal)) and v.flat_from is None:
            v = ctx.finish_acc(identity_conv(ctx, SimpleNamespace(name=out, op="output"), v), None, None)
        if isinstance(v, RealsVal):
            dtype = "float32"
        elif isinstance(v, IndexVal):
            dtype = "int32"
        else:
            raise BnncError(f"model output '{out}' is a {v.kind} tensor; bnnc supports real-valued outputs "
                            "(logits), a QuantizeLinear's integers or TopK/ArgMax indices")
    ctx.graph.output = v.tensor
    ctx.graph.output_info = {"shape": tuple(v.shape), "dtype": dtype, "onnx_name": out,
                             "elements": int(np.prod(v.shape))}
    if len(v.shape) == 4 and v.shape[1] > 1 and v.shape[2] * v.shape[3] > 1:
        # a feature map: the tensor is (H, W, C), the model's output (C, H, W); see ir.output_in_model_order
        ctx.graph.output_info["channels_first"] = True
    for n in list(ctx.graph.g.nodes):
        op = ctx.graph.op(n)
        if isinstance(op, (ir.Conv, ir.ConvSum)) and op.name not in ctx.finished:
            raise BnncError(f"layer '{op.source_ops[0]}' output is consumed by nothing bnnc supports")
