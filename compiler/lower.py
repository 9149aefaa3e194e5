"""Lower a loaded ONNX graph to bnnc's IR (see ir.py).

Walks the nodes in order, folding constant subgraphs and keeping, for every dynamic ONNX tensor,
what it is in integer terms (`Val`):
- "input": the model input with pending float32 ops, waiting for a quantizer or a binarizer;
- "bits" / "ints": an IR tensor (times a real scale);
- "acc": the integer accumulator of an IR Conv, with the float32 ops the model applies to it
  (scales, BatchNorm, constant Mul/Add/...) collected into that Conv's epilogue chain, plus
  MaxPools that commute with the final sign.
Weights are decoded into bnnc's weight code by `weight_codes.decode` (binary, ternary, two-scale,
multi-base, integer grid); anything else is refused with the node named.

Issue 5 (compressed families) adds, besides those codes:
- multi-level activations (MultiThreshold with several steps, Quant with more than 1 bit,
  QuantizeLinear -> DequantizeLinear inside the network): `Ints` outputs;
- activation bases: one accumulator binarized several ways (ABC-Net / PaBT's sign(x - v_n))
  becomes one Conv whose output holds the bases as channel planes (`ir.Planes`);
- sums of layers that read the same input (weight bases written as separate convolutions, PaBT
  pairs): merged into one integer-weight Conv, exactly;
- residual streams (Bi-Real): a real-valued tensor that an `Add` of two activations, an
  `AveragePool`, or more than one kind of consumer reads is requantized into a fixed-point
  `Ints` stream (`ir.Requantize`, 2**-frac_bits grid); `Add` / `SumPool` / `Activation` ops
  run on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Optional

import numpy as np

import math
from fractions import Fraction

from . import ir, weight_codes
from .arith import eval_chain
from .errors import BnncError
from .onnx_loader import LoadedModel, fold_with_origin, foldable, quant_levels, round_mode
from .original import trunc_shift
from .passes.quantize_input import input_grid

FRAC_BITS = 16  # default fixed-point grid 2**-16 of real-valued streams whose scales are not on a coarser one
STREAM_LIMIT = 2**23 - 1  # streams saturate at +-STREAM_LIMIT grid steps (+-128 at 2**-16). A global average
#                           pool of more than 256 such pixels sums beyond 32 bits: its output range says so and
#                           the backends store it (and accumulate it) in 64 bits, exactly (pack_bits.storage_dtype)
SUM_LIMIT = 2**63 - 1  # the sums of pools are exact int64
REAL_ACC_LIMIT = 2**41  # accumulators of real-valued weights stay within this, so that a 20-bit requantization
#                         multiplier times the accumulator fits int64 (the weights' bits are chosen for it)
TABLE_ELEMENTS = 1 << 24  # an input chain is evaluated at every grid value of every element below this
ACTIVATION_OPS = ("Sign", "BipolarQuant", "MultiThreshold", "Quant", "QuantizeLinear")

SUPPORTED_OPS = sorted([
    "Conv", "Gemm", "MatMul", "BatchNormalization", "Sign", "BipolarQuant", "MultiThreshold", "Quant",
    "QuantizeLinear", "DequantizeLinear", "MaxPool", "GlobalAveragePool", "Flatten", "Reshape", "Squeeze",
    "Unsqueeze", "Transpose (of constants)", "Mul", "Add", "Sub", "Div", "Relu", "Identity", "Dropout",
    "TopK", "ArgMax", "Shape/Gather/Concat (on static shapes)", "AveragePool",
    "Add of two activations (residual streams, sums of convolutions)",
])


@dataclass
class Val:
    kind: str  # "input" | "bits" | "ints" | "acc" | "index"
    shape: tuple  # logical ONNX shape, batch included
    tensor: str = ""  # IR tensor (bits/ints/index) or the input's name
    scale: float = 1.0
    conv: str = ""  # acc: the IR Conv it belongs to
    chain: list = field(default_factory=list)  # acc / input: pending ChainOps
    pools: list = field(default_factory=list)  # acc: [(MaxPool params, chain length at the pool)]
    flat_from: Optional[tuple] = None  # bits/ints flattened from (C, H, W) with physical (H, W, C)
    source_ops: list = field(default_factory=list)
    quant: object = None  # input / acc: pending QuantizeLinear (terminal, scale, node name)
    block: Optional[tuple] = None  # bits: (first channel, channels) of one activation-base plane


def _where(node) -> str:
    return f"node '{node.name}' ({node.op})"


def _multibit_quant(node, scale, zp, bw) -> tuple:
    """(chain ops, terminal) of a QONNX Quant of more than one bit: divide by the scale, add the
    zero point, round as the node says and clamp to the integer levels."""
    lo, hi = quant_levels(float(bw), node.attrs.get("signed", 1), node.attrs.get("narrow", 0))
    ops = [ir.ChainOp("div", scale.reshape(()))]
    if float(zp) != 0:
        ops.append(ir.ChainOp("add", zp.reshape(())))
    term = ir.RoundClampTerminal(lo, hi, int(zp), round_mode(node.attrs.get("rounding_mode", "ROUND")),
                                 source=node.name)
    return ops, term


class Lowering:
    def __init__(self, lm: LoadedModel, input_scale: Optional[float] = None, input_range=None,
                 frac_bits: int = FRAC_BITS, input_affine=None):
        self.lm = lm
        self.consts = dict(lm.consts)
        self.origins = dict(lm.quant_origin)
        self.frac_bits = int(frac_bits)
        self.vals: dict = {}
        self.counter = 0
        self.consumers = _consumers(lm)
        self.finished: set = set()  # Convs whose epilogue is set
        self.merged: set = set()  # Convs merged into another one (sums of convolutions)
        self.grid = input_grid(lm, input_scale, input_range, input_affine)
        shape = lm.input_shape
        self.input_op_name = None
        self.graph = ir.Graph(
            input_name="input",
            input_info={"shape": tuple(shape[1:]), "onnx_name": lm.input_name,
                        "dtype": self.grid["dtype"], "grid": self.grid},
            output_name="", output_info={},
        )
        pre = [ir.ChainOp("mul", np.float32(self.grid["scale"]).reshape(()))] if self.grid["scale"] != 1.0 else []
        pre += self.grid.get("pre", [])
        self.vals[lm.input_name] = Val("input", tuple(shape), tensor=lm.input_name, chain=pre)

    # ------------------------------------------------------------------ helpers
    def _name(self, kind: str) -> str:
        self.counter += 1
        return f"L{self.counter:02d}_{kind}"

    def _const(self, node, i, what="operand"):
        name = node.inputs[i] if i < len(node.inputs) else ""
        if name == "" or name not in self.consts:
            raise BnncError(f"{_where(node)}: its {what} must be a constant; bnnc supports "
                            "graphs whose only dynamic tensor path starts at the model input")
        return self.consts[name]

    def _val(self, node, i=0) -> Val:
        name = node.inputs[i]
        if name not in self.vals:
            raise BnncError(f"{_where(node)} reads '{name}', which bnnc cannot track")
        v = self.vals[name]
        if v.kind == "acc" and self._needs_stream(name):
            # a real-valued tensor with several kinds of consumers (a residual shortcut and a
            # sign, ...) lives in the fixed-point stream, so all of them read the same values
            v = self._to_stream(node, v)
            self.vals[name] = v
        return v

    def _needs_stream(self, name: str) -> bool:
        users = self.consumers.get(name, [])
        if len(users) < 2:
            return False
        return not all(_activation_path(u, name, self.consumers, self.dynamic) for u in users)

    def _channel_const(self, node, v: Val, c: np.ndarray) -> np.ndarray:
        """A constant operand as float32 per channel (shape (C,)) or scalar (shape ())."""
        c = np.asarray(c, dtype=np.float32)
        if c.size == 1:
            return c.reshape(())
        shape = v.shape
        try:
            b = np.broadcast_to(c, shape) if c.ndim <= len(shape) else None
        except ValueError:
            b = None
        if b is None:
            raise BnncError(f"{_where(node)}: constant of shape {c.shape} does not broadcast to {shape}")
        if len(shape) < 2:
            raise BnncError(f"{_where(node)}: elementwise op on a tensor of rank {len(shape)}")
        moved = np.moveaxis(b, 1, -1).reshape(-1, shape[1])
        if not np.all(moved == moved[0]):
            raise BnncError(f"{_where(node)}: constant varies within a channel; bnnc needs per-channel "
                            "or scalar constants here")
        return np.ascontiguousarray(moved[0])

    def _input_const(self, node, v: Val, c: np.ndarray) -> np.ndarray:
        """A constant operand on the raw input, broadcast to every element (NCHW memory order)."""
        c = np.asarray(c, dtype=np.float32)
        if c.size == 1:
            return c.reshape(())
        try:
            return np.ascontiguousarray(np.broadcast_to(c, v.shape).reshape(-1))
        except ValueError:
            raise BnncError(f"{_where(node)}: constant of shape {c.shape} does not broadcast to {v.shape}") from None

    # ------------------------------------------------------------------ walk
    def run(self) -> ir.Graph:
        self.dynamic = _dynamic_tensors(self.lm)
        for node in self.lm.nodes:
            if foldable(node, self.consts):
                fold_with_origin(node, self.consts, self.origins)
                continue
            if node.domain not in ("", "ai.onnx", "onnx.brevitas", "qonnx.custom_op.general",
                                   "finn.custom_op.general", "finn"):
                raise BnncError(f"{_where(node)} is in domain '{node.domain}', which bnnc does not know; "
                                f"supported ops: {', '.join(SUPPORTED_OPS)}")
            handler = getattr(self, "op_" + node.op, None)
            if handler is None:
                raise BnncError(f"{_where(node)} is not supported; supported ops: {', '.join(SUPPORTED_OPS)}")
            handler(node)
        self._finish()
        return self.graph

    def _set(self, node, v: Val, i=0):
        self.vals[node.outputs[i]] = v

    # ------------------------------------------------------------------ shape ops
    def op_Shape(self, node):
        v = self._val(node)
        start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
        self.consts[node.outputs[0]] = np.array(v.shape, dtype=np.int64)[start:end]

    def op_Identity(self, node):
        self._set(node, self._val(node))

    op_Dropout = op_Identity

    def _reshape(self, node, v: Val, new_shape: tuple):
        new_shape = tuple(int(s) for s in new_shape)
        if int(np.prod(new_shape)) != int(np.prod(v.shape)):
            raise BnncError(f"{_where(node)}: cannot reshape {v.shape} to {new_shape}")
        if new_shape[0] != 1:
            raise BnncError(f"{_where(node)}: reshape to {new_shape} moves data into the batch axis")
        nv = Val(**{**v.__dict__, "shape": new_shape, "chain": list(v.chain), "pools": list(v.pools)})
        if v.kind == "input":
            self._set(node, nv)
            return
        if v.kind in ("bits", "ints"):
            if len(v.shape) == 4 and len(new_shape) == 2:
                c, h, w = v.shape[1:]
                nv.flat_from = (c, h, w) if (h * w > 1) else None
            elif len(new_shape) != len(v.shape) or new_shape != v.shape:
                if not _only_unit_dims_changed(v.shape, new_shape):
                    raise BnncError(f"{_where(node)}: reshape {v.shape} -> {new_shape} is not a flatten")
            self._set(node, nv)
            return
        if v.kind == "acc":
            if not _only_unit_dims_changed(v.shape, new_shape):
                raise BnncError(f"{_where(node)}: reshape {v.shape} -> {new_shape} of a layer's output "
                                "before its activation is only supported when it adds or removes unit axes")
            self._set(node, nv)
            return
        raise BnncError(f"{_where(node)}: reshape of a {v.kind} tensor is not supported")

    def op_Reshape(self, node):
        v = self._val(node)
        shape = [int(s) for s in self._const(node, 1, "shape")]
        shape = [v.shape[i] if (s == 0 and not node.attrs.get("allowzero", 0)) else s for i, s in enumerate(shape)]
        if -1 in shape:
            known = int(np.prod([s for s in shape if s != -1]))
            shape[shape.index(-1)] = int(np.prod(v.shape)) // max(known, 1)
        self._reshape(node, v, tuple(shape))

    def op_Flatten(self, node):
        v = self._val(node)
        ax = node.attrs.get("axis", 1)
        ax = ax % len(v.shape) if ax < 0 else ax
        self._reshape(node, v, (int(np.prod(v.shape[:ax])), int(np.prod(v.shape[ax:]))))

    def op_Squeeze(self, node):
        v = self._val(node)
        axes = node.attrs.get("axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1]:
            axes = [int(a) for a in self._const(node, 1, "axes")]
        if axes is None:
            axes = [i for i, s in enumerate(v.shape) if s == 1 and i > 0]
        axes = [a % len(v.shape) for a in axes]
        self._reshape(node, v, tuple(s for i, s in enumerate(v.shape) if i not in axes))

    def op_Unsqueeze(self, node):
        v = self._val(node)
        axes = node.attrs.get("axes")
        if axes is None:
            axes = [int(a) for a in self._const(node, 1, "axes")]
        shape = list(v.shape)
        n = len(shape) + len(axes)
        for a in sorted(a % n for a in axes):
            shape.insert(a, 1)
        self._reshape(node, v, tuple(shape))

    def op_Transpose(self, node):
        v = self._val(node)
        perm = node.attrs.get("perm", list(reversed(range(len(v.shape)))))
        moved = [v.shape[p] for i, p in enumerate(perm) if p != i]
        if all(s == 1 for s in moved):
            self._reshape(node, v, tuple(v.shape[p] for p in perm))
            return
        raise BnncError(f"{_where(node)}: transposing activations (perm {list(perm)}) is not supported; "
                        "only transposes of constant weights are folded")

    # ------------------------------------------------------------------ elementwise with constants
    def _elementwise(self, node, op: str, const_index: int):
        v = self._val(node, 1 - const_index)
        c = self._const(node, const_index)
        if v.kind in ("bits", "ints"):
            if op == "mul" and c.size == 1 and float(c.ravel()[0]) > 0:
                self._set(node, Val(**{**v.__dict__, "scale": v.scale * float(c.ravel()[0])}))
                return
            if op == "div" and c.size == 1 and float(c.ravel()[0]) > 0:
                self._set(node, Val(**{**v.__dict__, "scale": v.scale / float(c.ravel()[0])}))
                return
            if v.kind == "ints":  # e.g. a shifted sign of a fixed-point stream: an activation follows
                v = Val(**{**v.__dict__, "kind": "intchain",
                           "chain": [ir.ChainOp("mul", np.float32(v.scale).reshape(()))]})
            else:
                raise BnncError(f"{_where(node)}: {node.op} of a {v.kind} tensor by {c.ravel()[:4]} would leave "
                                "the +-1 / integer grid; only positive scalar scales are supported here")
        if v.kind not in ("acc", "input", "intchain"):
            raise BnncError(f"{_where(node)}: {node.op} on a {v.kind} tensor is not supported")
        conv = self._const_of(node, v, c)
        ops = []
        if const_index == 0 and op in ("sub", "div"):
            if op == "div":
                raise BnncError(f"{_where(node)}: dividing a constant by an activation is not supported")
            ops = [ir.ChainOp("mul", np.float32(-1.0).reshape(())), ir.ChainOp("add", conv)]
        else:
            ops = [ir.ChainOp(op, conv)]
        nv = Val(**{**v.__dict__, "chain": v.chain + ops, "pools": list(v.pools)})
        self._set(node, nv)

    def _const_of(self, node, v, c):
        return self._input_const(node, v, c) if v.kind == "input" else self._channel_const(node, v, c)

    def _binary(self, node, op):
        a, b = node.inputs[0], node.inputs[1]
        if a in self.consts and b in self.vals:
            return self._elementwise(node, op, 0)
        if b in self.consts and a in self.vals:
            return self._elementwise(node, op, 1)
        if a in self.vals and b in self.vals:
            return self._add_dynamic(node, op)
        raise BnncError(f"{_where(node)}: both operands are activations (e.g. a residual shortcut); "
                        "bnnc supports elementwise ops with a constant operand here")

    def op_Mul(self, node):
        self._binary(node, "mul")

    def op_Add(self, node):
        self._binary(node, "add")

    def op_Sub(self, node):
        self._binary(node, "sub")

    def op_Div(self, node):
        self._binary(node, "div")

    def op_Relu(self, node):
        v = self._val(node)
        if v.kind not in ("acc", "input", "intchain"):
            raise BnncError(f"{_where(node)}: Relu on a {v.kind} tensor is not supported")
        self._set(node, Val(**{**v.__dict__, "chain": v.chain + [ir.ChainOp("relu")], "pools": list(v.pools)}))

    def op_BatchNormalization(self, node):
        v = self._val(node)
        if v.kind == "ints":
            v = Val(**{**v.__dict__, "kind": "intchain", "chain": [ir.ChainOp("mul", np.float32(v.scale).reshape(()))]})
        if v.kind not in ("acc", "input", "intchain"):
            raise BnncError(f"{_where(node)}: BatchNormalization on a {v.kind} tensor is not supported")
        if len(node.outputs) > 1 and any(node.outputs[1:]):
            raise BnncError(f"{_where(node)}: training-mode BatchNormalization is not supported")
        gamma, beta, mean, var = (np.asarray(self._const(node, i, "parameter"), dtype=np.float32)
                                  for i in range(1, 5))
        eps = np.float32(node.attrs.get("epsilon", 1e-5))
        denom = np.sqrt(var + eps).astype(np.float32)  # as the ONNX reference formula evaluates it
        c = lambda x: self._const_of(node, v, x.reshape(-1, *([1] * (len(v.shape) - 2))))
        ops = [ir.ChainOp("sub", c(mean)), ir.ChainOp("div", c(denom)), ir.ChainOp("mul", c(gamma)),
               ir.ChainOp("add", c(beta))]
        self._set(node, Val(**{**v.__dict__, "chain": v.chain + ops, "pools": list(v.pools),
                               "source_ops": v.source_ops + [node.name]}))

    # ------------------------------------------------------------------ sums of two activations
    def _add_dynamic(self, node, op):
        """Add / Sub of two activations: merged convolutions, or a residual fixed-point Add."""
        if op not in ("add", "sub"):
            raise BnncError(f"{_where(node)}: {node.op} of two activations is not supported (Add of "
                            "residual streams and sums of convolutions are)")
        a, b = self._val(node, 0), self._val(node, 1)
        if "bits" in (a.kind, b.kind):
            raise BnncError(f"{_where(node)}: both operands are activations and one is a binary (sign) "
                            "output; a residual Add sums real-valued (fixed-point) streams")
        sign = 1 if op == "add" else -1
        if a.kind == "acc" and b.kind == "acc":
            merged = self._merge_accs(node, a, b, sign)
            if merged is not None:
                self._set(node, merged)
                return
        if sign < 0:
            raise BnncError(f"{_where(node)}: Sub of two residual streams is not supported (Add is)")
        a, b = self._to_stream(node, a), self._to_stream(node, b)
        for v in (a, b):
            if v.kind != "ints":
                raise BnncError(f"{_where(node)}: a residual Add needs fixed-point operands; one is a {v.kind} "
                                "value (an elementwise op with a constant before the Add is not supported)")
        ta, tb = self.graph.tensors[a.tensor], self.graph.tensors[b.tensor]
        if ta.shape != tb.shape or a.shape != b.shape:
            raise BnncError(f"{_where(node)}: residual Add of shapes {a.shape} and {b.shape} (broadcasting "
                            "is not supported)")
        ratio = Fraction(a.scale) / Fraction(b.scale)
        shifts = [0, 0]
        k = _log2_exact(ratio if ratio >= 1 else 1 / ratio)
        if k is None:
            raise BnncError(f"{_where(node)}: residual Add of streams with scales {a.scale:g} and {b.scale:g}, "
                            "whose ratio is not a power of two")
        shifts[0 if ratio >= 1 else 1] = k
        scale = min(a.scale, b.scale)
        lo = max((ta.lo << shifts[0]) + (tb.lo << shifts[1]), -STREAM_LIMIT)
        hi = min((ta.hi << shifts[0]) + (tb.hi << shifts[1]), STREAM_LIMIT)
        name = self._name("add")
        tname = name + "_out"
        self.graph.add(ir.Add(name, [a.tensor, b.tensor], [tname], tuple(shifts), -STREAM_LIMIT, STREAM_LIMIT),
                       {tname: ir.Ints(ta.shape, lo, hi, scale)})
        self._set(node, Val("ints", a.shape, tensor=tname, scale=scale, source_ops=[node.name]))

    def _merge_accs(self, node, a: Val, b: Val, sign: int):
        """conv_a * u_a + sign * conv_b * u_b as one Conv when both read the same tensor with the
        same geometry and their pending chains are per-channel scales (weight bases written as
        separate convolutions, PaBT base pairs). The integer weights are k_a * W_a + sign * k_b * W_b
        with u_a = unit * k_a and u_b = unit * k_b exactly (dyadic scales); None when not mergeable."""
        if a.conv == b.conv or a.pools or b.pools or a.shape != b.shape:
            return None
        ca, cb = self.graph.op(a.conv), self.graph.op(b.conv)
        if ca.name in self.finished or cb.name in self.finished or ca.inputs != cb.inputs \
                or (ca.kernel, ca.stride, ca.pads, ca.is_dense) != (cb.kernel, cb.stride, cb.pads, cb.is_dense):
            return None
        fa, fb = _pure_scale(a.chain, ca.w.shape[0]), _pure_scale(b.chain, cb.w.shape[0])
        if fa is None or fb is None:
            return None
        channels = self.graph.tensors[ca.inputs[0]].shape[2]
        for c in (ca, cb):
            _widen(c, channels)
        o = ca.w.shape[0]
        ka, kb, unit = np.zeros(o, np.int64), np.zeros(o, np.int64), np.zeros(o)
        for i in range(o):
            u, (x, y) = _exact_multipliers([fa[i], sign * fb[i]])
            if max(abs(x), abs(y)) > weight_codes.MAX_MULT:
                raise BnncError(f"{_where(node)}: the scales of the summed layers ({float(fa[i]):g}, {float(fb[i]):g}) "
                                "are too far apart for exact integer multipliers")
            ka[i], kb[i], unit[i] = x, y, float(u)
        shape = (-1, 1, 1, 1)
        int_w = ka.reshape(shape) * ir.int_weights(ca) + kb.reshape(shape) * ir.int_weights(cb)
        ba, bb = _bases_of(ca), _bases_of(cb)
        if ba is None or bb is None:
            code, bases = "int", []
        else:
            bases = [_scale_base(x, ka) for x in ba] + [_scale_base(x, kb) for x in bb]
            bases = [x for x in bases if np.any(x.mult_p) or np.any(x.mult_n)]
            code = "multi_base"
        ca.code, ca.int_w, ca.bases, ca.unit = code, int_w, bases, unit
        ca.w = np.sign(int_w).astype(np.int8)
        ca.scale_p = ca.scale_n = unit.copy()
        for x in ca.bases:
            x.scale_p, x.scale_n = unit * x.mult_p, unit * x.mult_n
        ca.source_ops = ca.source_ops + cb.source_ops + [node.name]
        ca.original_params += cb.original_params
        self.graph.remove(cb.name)
        self.graph.tensors.pop(cb.outputs[0], None)
        self.merged.add(cb.name)
        chain = [ir.ChainOp("mul", unit.astype(np.float32))]
        return Val("acc", a.shape, conv=ca.name, chain=chain, source_ops=a.source_ops + b.source_ops)

    def _to_stream(self, node, v: Val) -> Val:
        """A real-valued layer output as a fixed-point Ints stream (ir.Requantize): the affine map
        relu?(a * acc + b) that the chain specifies, on the coarsest grid 2**-k (k <= frac_bits)
        that holds it exactly, else on 2**-frac_bits rounded half up; saturating at
        +-STREAM_LIMIT grid steps."""
        if v.kind != "acc":
            return v
        conv = self.graph.op(v.conv)
        if v.pools:
            return self._pooled_stream(node, v)
        cut = _after_first_relu(v.chain)
        if cut < len(v.chain):  # relu then more arithmetic (BatchNorm after Relu): two requantizations
            first = self._to_stream(node, Val(**{**v.__dict__, "chain": v.chain[:cut]}))
            return self._stream_of_intchain(node, Val(**{**first.__dict__, "kind": "intchain", "chain": [
                ir.ChainOp("mul", np.float32(first.scale).reshape(()))] + v.chain[cut:]}))
        if conv.name in self.finished:
            raise BnncError(f"{_where(node)}: layer '{conv.source_ops[0]}' output is used both as a residual "
                            "stream and as something else")
        from .passes.fold_batchnorm_into_thresholds import acc_range

        lo_acc, hi_acc = acc_range(conv, self.graph.tensors[conv.inputs[0]])
        ep, lo, hi = self._requantize(node, v.chain, conv.w.shape[0], lo_acc, hi_acc, conv.source_ops[0])
        conv.epilogue = ep
        conv.source_ops = conv.source_ops + v.source_ops
        self.finished.add(conv.name)
        oshape = self.graph.tensors[conv.outputs[0]].shape
        self.graph.tensors[conv.outputs[0]] = ir.Ints(oshape, lo, hi, ep.out_scale)
        return Val("ints", v.shape, tensor=conv.outputs[0], scale=ep.out_scale)

    def _requantize(self, node, chain: list, o: int, lo_acc, hi_acc, layer: str) -> tuple:
        """(ir.Requantize, lo, hi) of the affine map relu?(a * acc + b) that `chain` specifies per
        channel, for accumulators in [lo_acc, hi_acc] (see _to_stream)."""
        affine = _affine_chain(node, chain, o)
        frac = next((k for k in range(self.frac_bits + 1)
                     if all((a * 2**k).denominator == 1 and (b * 2**k).denominator == 1 for a, b, _ in affine)), None)
        exact = frac is not None
        frac = self.frac_bits if frac is None else frac
        shift = 1 if exact else 30
        if not exact:  # small multipliers (wide accumulators) get more bits, up to what int64 holds
            top = max((abs(a) for a, _, _ in affine), default=Fraction(0)) * 2 ** (frac + shift)
            acc_bits = max(abs(int(np.min(lo_acc))), abs(int(np.max(hi_acc))), 1).bit_length()
            while top and top < 2**20 and acc_bits + top.__ceil__().bit_length() + 1 < 62:
                top *= 2
                shift += 1
        big = Fraction(2 ** (frac + shift))
        mult = [_round_half_up(a * big) for a, _, _ in affine]
        add = [_round_half_up(b * big) + 2 ** (shift - 1) for _, b, _ in affine]
        relu = {r for _, _, r in affine}
        if len(relu) > 1:
            raise BnncError(f"{_where(node)}: Relu on some channels only is not supported")
        limit = STREAM_LIMIT
        lo_out, hi_out = (0 if True in relu else -limit), limit
        acc_lo, acc_hi, ends = [], [], []
        for i in range(o):
            m, c = mult[i], add[i]
            if m == 0:
                acc_lo.append(0)
                acc_hi.append(0)
            else:  # beyond these accumulators the output saturates at -limit / +limit
                t_neg = ((-limit + 1) * 2**shift - 1 - c)
                t_pos = (limit * 2**shift - c)
                a_neg = t_neg // m if m > 0 else _ceil_div(t_neg, m)
                a_pos = _ceil_div(t_pos, m) if m > 0 else t_pos // m
                acc_lo.append(min(a_neg, a_pos))
                acc_hi.append(max(a_neg, a_pos))
            for acc in (int(lo_acc[i]), int(hi_acc[i])):
                a = min(max(acc, acc_lo[-1]), acc_hi[-1])
                ends.append(min(max((a * m + c) >> shift, lo_out), hi_out))
            if max(abs(acc_lo[-1]), abs(acc_hi[-1])) * abs(m) + abs(c) >= 2**62:
                raise BnncError(f"{_where(node)}: the fixed-point requantization of layer '{layer}' "
                                "needs more than 64 bits (its scale is too small or too large for the grid)")
        note = (f"fixed-point stream 2^-{frac}: out = floor((acc * mult + add) / 2^{shift}), the layer's affine map "
                + ("exactly (the model's scales are on the grid)" if exact else
                   f"rounded half up (error <= 2^-{frac + 1})") + f", saturating at +-{limit} steps")
        ep = ir.Requantize(np.array(mult, np.int64), np.array(add, np.int64), shift, lo_out, hi_out,
                           2.0**-frac, [note], np.array(acc_lo, np.int64), np.array(acc_hi, np.int64),
                           0.0 if exact else 2.0**-(frac + 1))
        return ep, min(ends), max(ends)

    def _stream_of_intchain(self, node, v: Val) -> Val:
        """Integers with pending float32 ops (after a MaxPool of a stream) as a new fixed-point
        stream: an Activation whose Requantize applies the ops' affine map per channel."""
        cut = _after_first_relu(v.chain)
        src = self.graph.tensors[v.tensor]
        c = src.shape[2]
        name = self._name("act")
        tname = name + "_out"
        ep, lo, hi = self._requantize(node, v.chain[:cut], c, np.full(c, src.lo, np.int64),
                                      np.full(c, src.hi, np.int64), node.name)
        self.graph.add(ir.Activation(name, [v.tensor], [tname], ep), {tname: ir.Ints(src.shape, lo, hi, ep.out_scale)})
        out = Val("ints", v.shape, tensor=tname, scale=ep.out_scale, source_ops=[node.name])
        if cut == len(v.chain):
            return out
        return self._stream_of_intchain(node, Val(**{**out.__dict__, "kind": "intchain", "chain": [
            ir.ChainOp("mul", np.float32(out.scale).reshape(()))] + v.chain[cut:]}))

    def _pooled_stream(self, node, v: Val) -> Val:
        """A real-valued layer output with MaxPools on the way: the chain up to the pools becomes
        the fixed-point stream, the pools run on its integers (rounding to the grid is monotone, so
        the max of the rounded values is the rounded max), and the ops after the pools stay
        pending on the pooled integers ("intchain")."""
        at = v.pools[0][1]
        if any(p_at != at for _, p_at in v.pools):
            raise BnncError(f"{_where(node)}: MaxPools separated by arithmetic on a real-valued stream are "
                            "not supported")
        h, w, c = self.graph.tensors[self.graph.op(v.conv).outputs[0]].shape
        pre = Val(**{**v.__dict__, "chain": v.chain[:at], "pools": [], "shape": (1, c, h, w)})
        out = self._to_stream(node, pre)
        for params, _ in v.pools:
            out = self._maxpool(params, out)
        if at == len(v.chain):
            return out
        return Val(**{**out.__dict__, "kind": "intchain",
                      "chain": [ir.ChainOp("mul", np.float32(out.scale).reshape(()))] + v.chain[at:]})

    # ------------------------------------------------------------------ quantizers / activations
    def op_Sign(self, node):
        self._activation(node, ir.SignTerminal(zero_maps_to=0, source=node.name))

    def op_BipolarQuant(self, node):
        s = np.asarray(self._const(node, 1, "scale"), dtype=np.float64)
        if s.size != 1 or not s.ravel()[0] > 0:
            raise BnncError(f"{_where(node)}: bnnc supports a positive scalar scale (got {s.ravel()[:4]})")
        self._activation(node, ir.SignTerminal(zero_maps_to=1, out_scale=float(s.ravel()[0]), source=node.name))

    def op_MultiThreshold(self, node):
        t = np.asarray(self._const(node, 1, "thresholds"), dtype=np.float32)
        if t.ndim != 2:
            raise BnncError(f"{_where(node)}: thresholds must be 2-D (channels, steps), got {t.shape}")
        layout = node.attrs.get("data_layout", "NCHW")
        v = self._val(node)
        if layout != "NCHW" and len(v.shape) != 2:
            raise BnncError(f"{_where(node)}: data_layout {layout} is not supported")
        out_scale = float(node.attrs.get("out_scale", 1.0))
        out_bias = float(node.attrs.get("out_bias", 0.0))
        term = ir.ThresholdTerminal(t, out_scale, out_bias, source=node.name)
        if v.kind != "input" and not _bipolar_1step(term):
            term = _level_terminal(node, t, out_scale, out_bias)
        self._activation(node, term)

    def _activation(self, node, term, v: Optional[Val] = None):
        v = self._val(node) if v is None else v
        if v.kind == "bits" and isinstance(term, ir.SignTerminal):
            self._set(node, Val(**{**v.__dict__, "scale": term.out_scale}))
            return
        if v.kind == "input":
            self._set(node, self._finish_input(node, v, term))
            return
        if v.kind in ("ints", "intchain"):
            self._set(node, self._activation_op(node, v, term))
            return
        if v.kind != "acc":
            raise BnncError(f"{_where(node)}: activation of a {v.kind} tensor is not supported")
        if v.pools and not _pools_commute(v) and term is not None:
            # max and the rest of the chain do not commute: pool the fixed-point values themselves
            self._set(node, self._activation_op(node, self._to_stream(node, v), term))
            return
        self._set(node, self._finish_acc(v, term, node))

    def _activation_op(self, node, v: Val, term) -> Val:
        """Sign / MultiThreshold / Quant of an integer (fixed-point) tensor: an Activation op."""
        if v.flat_from is not None or v.block is not None:
            raise BnncError(f"{_where(node)}: activation of a flattened integer tensor is not supported")
        chain = list(v.chain) if v.kind == "intchain" else [ir.ChainOp("mul", np.float32(v.scale).reshape(()))]
        src = self.graph.tensors[v.tensor]
        name = self._name("act")
        tname = name + "_out"
        oty, kind, scale = _terminal_type(node, term, src.shape)
        self.graph.add(ir.Activation(name, [v.tensor], [tname], ir.Chain(chain, term)), {tname: oty})
        return Val(kind, v.shape, tensor=tname, scale=scale, source_ops=[node.name])

    def op_Quant(self, node):
        v = self._val(node)
        scale = np.asarray(self._const(node, 1, "scale"), dtype=np.float32)
        zp = np.asarray(self._const(node, 2, "zero point"), dtype=np.float32)
        bw = np.asarray(self._const(node, 3, "bit width"))
        scale, zp = _uniform(scale), _uniform(zp)  # per-channel-shaped constants holding one value
        if scale.size != 1 or zp.size != 1 or not float(scale) > 0:
            raise BnncError(f"{_where(node)}: Quant needs a positive scalar scale and zero point here")
        if float(zp) != round(float(zp)):
            raise BnncError(f"{_where(node)}: zero point {float(zp)} is not an integer")
        if v.kind in ("acc", "ints", "intchain"):
            if int(round(float(bw))) == 1 and node.attrs.get("signed", 1):
                if float(zp) != 0:
                    raise BnncError(f"{_where(node)}: a 1-bit Quant with a zero point is not bipolar")
                ops = [ir.ChainOp("div", scale.reshape(()))]
                term = ir.SignTerminal(zero_maps_to=1, out_scale=float(scale), source=node.name)
            else:
                ops, term = _multibit_quant(node, scale, zp, bw)
                term.out_scale = float(scale)
            if v.kind == "ints":
                v = Val(**{**v.__dict__, "kind": "intchain",
                           "chain": [ir.ChainOp("mul", np.float32(v.scale).reshape(()))]})
            self._activation(node, term, Val(**{**v.__dict__, "chain": v.chain + ops, "pools": list(v.pools)}))
            return
        if v.kind != "input":
            raise BnncError(f"{_where(node)}: Quant of a {v.kind} tensor is not supported")
        ops, term = _multibit_quant(node, scale, zp, bw)
        v2 = Val(**{**v.__dict__, "chain": v.chain + ops})
        out = self._finish_input(node, v2, term, zp_after_round=0)
        out.scale = float(scale)
        self._set(node, out)

    def op_Trunc(self, node):
        """QONNX Trunc of an integer tensor n (real value n * s): round(n * s / scale) is the
        integer n * R (R = s / scale, an integer up to float32 rounding that cannot move a
        round-to-nearest), then clamp(n * R / 2**k) rounded as the node says, times out_scale."""
        v = self._val(node)
        if len(node.inputs) != 6:
            raise BnncError(f"{_where(node)}: Trunc needs 6 inputs (x, scale, zeropt, input bit width, "
                            "output scale, output bit width)")
        scale = _uniform(np.asarray(self._const(node, 1, "scale"), np.float64))
        zp = _uniform(np.asarray(self._const(node, 2, "zero point"), np.float64))
        out_scale = _uniform(np.asarray(self._const(node, 4, "output scale"), np.float64))
        bits = _uniform(np.asarray(self._const(node, 5, "output bit width"), np.float64))
        if any(c.size != 1 for c in (scale, zp, out_scale, bits)) or float(zp) != 0 or not float(scale) > 0:
            raise BnncError(f"{_where(node)}: bnnc supports Trunc with scalar scales and a zero point of 0")
        if v.kind != "ints":
            raise BnncError(f"{_where(node)}: Trunc of a {v.kind} tensor is not supported (only of integers)")
        src = self.graph.tensors[v.tensor]
        ratio = v.scale / float(scale)
        r = round(ratio)
        mag = max(abs(src.lo), abs(src.hi))
        if r < 1 or mag * (abs(ratio - r) + 1e-6 * r) >= 0.25 or mag * r >= 2**24:
            raise BnncError(f"{_where(node)}: Trunc's scale {float(scale):g} is not the input's scale {v.scale:g} "
                            "divided by an integer; bnnc supports Trunc of integer sums (average pools)")
        step = trunc_shift(float(scale), float(out_scale))
        signed, narrow = node.attrs.get("signed", 1), node.attrs.get("narrow", 0)
        lo, hi = quant_levels(float(bits), signed, narrow)
        ops = ([ir.ChainOp("mul", np.float32(r).reshape(()))] if r != 1 else []) + \
            [ir.ChainOp("div", np.float32(step).reshape(()))]
        term = ir.RoundClampTerminal(lo, hi, 0, round_mode(node.attrs.get("rounding_mode", "FLOOR")),
                                     source=node.name, out_scale=float(out_scale))
        self._activation(node, term, Val(**{**v.__dict__, "kind": "intchain", "chain": ops, "pools": []}))

    def op_QuantizeLinear(self, node):
        v = self._val(node)
        scale = np.asarray(self._const(node, 1, "scale"), dtype=np.float32)
        zp = self.consts.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else np.uint8(0)
        zp = np.asarray(zp)
        if scale.size != 1 or zp.size != 1 or not float(scale) > 0:
            raise BnncError(f"{_where(node)}: bnnc supports per-tensor QuantizeLinear (positive scalar scale) here")
        info = np.iinfo(zp.dtype)
        ops = [ir.ChainOp("div", scale.reshape(()))]
        term = ir.RoundClampTerminal(int(info.min), int(info.max), int(zp), "half_even", source=node.name)
        if v.kind == "ints":
            v = Val(**{**v.__dict__, "kind": "intchain", "chain": [ir.ChainOp("mul", np.float32(v.scale).reshape(()))]})
        if v.kind not in ("input", "acc", "intchain"):
            raise BnncError(f"{_where(node)}: QuantizeLinear of a {v.kind} tensor is not supported")
        self._set(node, Val(**{**v.__dict__, "chain": v.chain + ops, "pools": list(v.pools),
                               "quant": (term, float(scale), node.name)}))

    def op_DequantizeLinear(self, node):
        v = self._val(node)
        if v.quant is None:
            raise BnncError(f"{_where(node)}: DequantizeLinear must follow a QuantizeLinear (an int8 layer "
                            "boundary) or hold constant weights")
        term, qscale, qname = v.quant
        scale = np.asarray(self._const(node, 1, "scale"), dtype=np.float32)
        zp = self.consts.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else 0
        if scale.size != 1 or float(scale) != qscale or int(np.asarray(zp).ravel()[0]) != term.zero_point:
            raise BnncError(f"{_where(node)}: its scale/zero point differ from QuantizeLinear '{qname}'")
        if v.kind == "input":
            out = self._finish_input(node, Val(**{**v.__dict__, "quant": None}), term, zp_after_round=term.zero_point)
            out.scale = qscale
            self._set(node, out)
            return
        term = ir.RoundClampTerminal(term.qmin, term.qmax, term.zero_point, term.mode, term.source)
        term.add_after_round = term.zero_point
        term.out_scale = qscale
        nv = Val(**{**v.__dict__, "quant": None})
        if nv.kind == "intchain":
            self._set(node, self._activation_op(node, nv, term))
        else:
            self._set(node, self._finish_acc(nv, term, node))

    def _finish_input(self, node, v: Val, term, zp_after_round=0) -> Val:
        """Create the InputQuantize op: raw input -> chain -> terminal, output Bits or Ints."""
        if self.input_op_name is not None:
            raise BnncError(f"{_where(node)}: the model input is quantized twice")
        c, h, w = _chw(v.shape, self.lm.input_shape)
        flat = len(v.shape) != 4
        out_shape = (1, 1, c * h * w) if flat else (h, w, c)
        name = self._name("input")
        tname = name + "_out"
        if term is None:
            lo, hi = self.grid["range"]
            ty = ir.Ints(out_shape, lo, hi)
        elif isinstance(term, ir.RoundClampTerminal):
            ty = ir.Ints(out_shape, term.qmin - term.zero_point, term.qmax - term.zero_point)
            term = ir.RoundClampTerminal(term.qmin, term.qmax, term.zero_point, term.mode, term.source)
            term.add_after_round = zp_after_round
        else:
            ty = ir.Bits(out_shape, _bit_scale(node, term))
        chain = ir.Chain([_input_order(op, self.lm.input_shape, flat) for op in v.chain], term)
        op = ir.InputQuantize(name, [self.graph.input], [tname], tuple(self.lm.input_shape[1:]),
                              self.grid["dtype"], chain, grid=self.grid.get("range"))
        op.flat = flat
        self.graph.add(op, {tname: ty})
        self.input_op_name = name
        kind = "ints" if isinstance(ty, ir.Ints) else "bits"
        return Val(kind, tuple(v.shape), tensor=tname, scale=getattr(ty, "scale", 1.0), source_ops=[node.name])

    def _finish_acc(self, v: Val, term, node=None) -> Val:
        """Close a Conv's epilogue with `term` (None: real output). A second bit activation of the
        same accumulator adds an activation-base plane (ir.Planes)."""
        conv = self.graph.op(v.conv)
        if term is not None and v.pools:
            for _, at in v.pools:
                for op in v.chain[at:]:
                    if op.op in ("mul", "div") and np.any(op.const < 0):
                        raise BnncError(f"{_where(node)}: a MaxPool sits before a negative scale; "
                                        "max and the activation would not commute")
        if conv.name in self.finished:
            return self._add_plane(conv, v, term, node)
        self.finished.add(conv.name)
        conv.epilogue = ir.Chain(list(v.chain), term)
        conv.source_ops = conv.source_ops + v.source_ops + ([node.name] if node is not None else [])
        oshape = self.graph.tensors[conv.outputs[0]].shape
        if term is None:
            if v.pools:
                raise BnncError(f"MaxPool on real-valued layer outputs ('{conv.name}') is not supported")
            self.graph.tensors[conv.outputs[0]] = ir.Reals(oshape)
            kind, scale = "reals", 1.0
        else:
            oty, kind, scale = _terminal_type(node, term, oshape)
            self.graph.tensors[conv.outputs[0]] = oty
        out = Val(kind, v.shape, tensor=conv.outputs[0], scale=scale, source_ops=[])
        for params, _ in v.pools:
            out = self._maxpool(params, out)
        return out

    def _add_plane(self, conv: ir.Conv, v: Val, term, node) -> Val:
        """Another sign of an accumulator that already has one: activation bases as planes."""
        ep = conv.epilogue
        first = ep.chains[0] if isinstance(ep, ir.Planes) else ep
        if not (isinstance(first, ir.Chain) and isinstance(first.terminal, (ir.SignTerminal, ir.ThresholdTerminal))
                and isinstance(term, (ir.SignTerminal, ir.ThresholdTerminal))):
            raise BnncError(f"{_where(node)}: layer '{conv.source_ops[0]}' output is activated twice; bnnc supports "
                            "several sign activations of one layer (activation bases), not other combinations")
        if v.pools:
            raise BnncError(f"{_where(node)}: activation bases after a MaxPool are not supported")
        old = self.graph.tensors[conv.outputs[0]]
        scale = _bit_scale(node, term)
        if scale != old.scale:
            raise BnncError(f"{_where(node)}: activation bases of layer '{conv.source_ops[0]}' have different "
                            f"scales ({old.scale:g}, {scale:g})")
        chains = list(ep.chains) if isinstance(ep, ir.Planes) else [ep]
        o = conv.w.shape[0]
        if len(chains) == 1:  # the first plane's readers now read a block of a wider tensor
            for k, val in self.vals.items():
                if val.kind == "bits" and val.tensor == conv.outputs[0] and val.block is None:
                    self.vals[k] = Val(**{**val.__dict__, "block": (0, o)})
        chains.append(ir.Chain(list(v.chain), term))
        conv.epilogue = ir.Planes(chains)
        conv.source_ops = conv.source_ops + v.source_ops + [node.name]
        h, w, _ = old.shape
        self.graph.tensors[conv.outputs[0]] = ir.Bits((h, w, o * len(chains)), old.scale)
        return Val("bits", v.shape, tensor=conv.outputs[0], scale=scale, block=((len(chains) - 1) * o, o))

    # ------------------------------------------------------------------ layers
    def _input_magnitude(self, v: Val) -> int:
        """The largest |value| a layer input can hold (real-valued outputs become streams)."""
        if v.kind in ("bits", "ints"):
            t = self.graph.tensors[v.tensor]
            return 1 if isinstance(t, ir.Bits) else max(abs(int(t.lo)), abs(int(t.hi)), 1)
        return STREAM_LIMIT

    def _decode_weights(self, node, w: np.ndarray, origin_name: str, v: Optional[Val] = None):
        """weight_codes.Decoded of a layer's weights (O, ...). Real-valued weights get as many bits
        as keep every accumulator of input `v` within REAL_ACC_LIMIT."""
        live = int(np.count_nonzero(np.reshape(w, (np.shape(w)[0], -1)), axis=1).max(initial=1))
        max_int = weight_codes.REAL_MAX_INT
        if v is not None:
            max_int = max(1, min(max_int, REAL_ACC_LIMIT // (self._input_magnitude(v) * max(live, 1))))
        origin = None
        if origin_name in self.origins:
            k, s = self.origins[origin_name]
            o = k.shape[0]
            s2 = np.asarray(s, np.float64).reshape(o, -1)
            if k.shape == np.shape(w) and np.all(s2 == s2[:, :1]):
                origin = (k, s2[:, 0])
        return weight_codes.decode(_where(node), w, origin, max_int)

    def _materialize(self, node, v: Val) -> Val:
        """The raw input read directly by a layer: integers on the declared grid, positive scalar
        scales folded into the layer; any other float32 ops on the way (per-channel normalisation,
        offsets such as (x + 1) / 2) make it a fixed-point input (`_fixed_point_input`)."""
        if v.kind != "input":
            return v
        if self.grid["range"] is None:
            raise BnncError(f"{_where(node)} reads the float model input directly; bnnc needs integers: add a "
                            "Quant/QuantizeLinear on the input, or declare the grid with --input-scale S "
                            "(or per channel: --input-scale, --input-offset, --input-mean, --input-std)")
        scale = 1.0
        for op in v.chain:
            c = float(op.const) if op.const is not None and op.const.size == 1 else None
            if op.op not in ("mul", "div") or c is None or not c > 0:
                return self._fixed_point_input(node, v)
            scale = scale * c if op.op == "mul" else scale / c
        out = self._finish_input(node, Val(**{**v.__dict__, "chain": []}), None)
        out.scale = scale
        return out

    def _fixed_point_input(self, node, v: Val) -> Val:
        """The model's float32 input x = chain(q), evaluated exactly as the model (or the declared
        normalisation) computes it, as a fixed-point tensor round(x * 2**f) on the coarsest grid
        2**-f (f <= frac_bits, |x| * 2**f < 2**30) that holds every value the grid of q can
        produce; when none does, on 2**-frac_bits (the grid of real-valued streams), rounded half
        to even: an error of at most 2**-(f + 1) per element."""
        lo, hi = self.grid["range"]
        values = self.grid.get("values")
        n_el = int(np.prod(v.shape[1:]))
        grid_size = len(values) if values else hi - lo + 1
        whole = grid_size * n_el <= TABLE_ELEMENTS
        q = np.array(values if values else (np.arange(lo, hi + 1) if whole else [lo, hi]), np.float32)
        with np.errstate(all="ignore"):
            x = eval_chain(v.chain, np.broadcast_to(q[:, None], (q.size, n_el)))
        if not np.all(np.isfinite(x)):
            raise BnncError(f"{_where(node)}: the input's float32 operations give non-finite values on the "
                            f"declared grid [{lo}, {hi}]")
        mag = float(np.abs(x).max())
        fmax = self.frac_bits if mag == 0 else min(self.frac_bits, 30 - math.frexp(mag)[1])
        x64 = x.astype(np.float64)
        frac = next((k for k in range(fmax + 1) if np.all(x64 * 2.0**k == np.rint(x64 * 2.0**k))), None) \
            if whole else None
        exact = frac is not None
        frac = fmax if frac is None else frac
        ints = np.rint(x64 * 2.0**frac)
        term = ir.RoundClampTerminal(int(ints.min()), int(ints.max()), 0, "half_even", source=node.name)
        chain = v.chain + [ir.ChainOp("mul", np.float32(2.0**frac).reshape(()))]
        out = self._finish_input(node, Val(**{**v.__dict__, "chain": chain}), term)
        op = self.graph.op(self.input_op_name)
        op.chain.terminal.out_scale = 2.0**-frac
        op.notes.append(f"fixed-point input 2^-{frac}: " + (
            "exact (every value the declared grid produces is on it)" if exact
            else f"rounded half to even, error <= 2^-{frac + 1} per element"))
        op.max_error = 0.0 if exact else 2.0**-(frac + 1)
        t = self.graph.tensors[out.tensor]
        self.graph.tensors[out.tensor] = ir.Ints(t.shape, t.lo, t.hi, 2.0**-frac)
        out.scale = 2.0**-frac
        return out

    def _input_error(self, v: Val) -> float:
        """Bound on |real value - represented value| per element of a layer input (real units)."""
        if v.kind != "ints":
            return 0.0
        op = self.graph.producer(v.tensor)
        if isinstance(op, ir.InputQuantize):
            return op.max_error
        if isinstance(op, ir.Conv) and isinstance(op.epilogue, ir.Requantize):
            return op.epilogue.max_error
        return 0.0

    def _conv_common(self, node, v: Val, dec, layout, kernel, stride, pads, bias, dense):
        """The IR Conv of decoded weights `dec`; `layout` maps an (O, ...) array to (O, kh, kw, C)."""
        if v.kind == "acc":  # real activations (EC2T, HBN real-input layers): the fixed-point stream
            v = self._to_stream(node, v)
        if v.kind == "intchain":  # a pooled stream with BatchNorm / Relu after the pool
            v = self._stream_of_intchain(node, v)
        if v.kind not in ("bits", "ints"):
            what = "real-valued activations" if v.kind in ("acc", "reals") else f"a {v.kind} tensor"
            if v.kind == "intchain":
                what = "a fixed-point tensor with pending elementwise ops"
            raise BnncError(f"{_where(node)} receives {what}; bnnc needs binary or integer inputs here "
                            "(a quantizer on the input, or a sign activation before this layer)")
        src = self.graph.tensors[v.tensor]
        name = self._name("dense" if dense else "conv")
        tname = name + "_out"
        ih, iw = src.shape[0], src.shape[1]
        oh, ow = ir.out_shape((ih, iw), kernel, stride, pads)
        if oh < 1 or ow < 1:
            raise BnncError(f"{_where(node)}: output would be empty for input {ih}x{iw}")
        signs = np.ascontiguousarray(layout(dec.signs))
        unit = np.asarray(dec.unit, np.float64)
        sp = dec.scale_p if dec.scale_p is not None else unit
        sn = dec.scale_n if dec.scale_n is not None else unit
        op = ir.Conv(name, [v.tensor], [tname], tuple(kernel), tuple(stride), tuple(pads), signs,
                     np.array(sp, np.float64), np.array(sn, np.float64), ir.Chain([], None), is_dense=dense,
                     source_ops=[node.name], original_params=int(dec.signs.size + (bias.size if bias is not None else 0)))
        if dec.code != "binary":
            op.code = dec.code
            op.int_w = np.ascontiguousarray(layout(dec.int_w)).astype(np.int64)
            op.bases = [ir.WeightBase(np.ascontiguousarray(layout(b.w)), b.mult_p, b.mult_n, b.scale_p, b.scale_n)
                        for b in dec.bases]
            op.unit = unit.copy()
        if dec.error is not None:
            op.weight_error = np.asarray(dec.error, np.float64)
        if v.block is not None:
            _place_block(op, v.block[0], src.shape[2])
        o = signs.shape[0]
        in_err = self._input_error(v)
        if op.weight_error is not None and (op.weight_error.any() or in_err):
            # |sum w x - unit * scale * acc| <= unit * scale * err_w * taps * max|q| + sum |w| * err_x
            taps = int(np.prod(signs.shape[1:]))
            mag = max(abs(int(getattr(src, "lo", 1))), abs(int(getattr(src, "hi", 1))))
            wsum = np.abs(ir.int_weights(op).reshape(o, -1)).sum(axis=1) + op.weight_error * taps
            op.acc_error = (unit * v.scale * (op.weight_error * taps * mag + wsum * in_err / v.scale))
        self.graph.add(op, {tname: ir.Reals((oh, ow, o))})
        scale = (unit * v.scale).astype(np.float32)
        chain = [ir.ChainOp("mul", scale)]
        if bias is not None:
            chain.append(ir.ChainOp("add", np.asarray(bias, dtype=np.float32).reshape(-1)))
        shape = (1, o, oh, ow) if not dense else (1, o)
        return Val("acc", shape, conv=name, chain=chain)

    def op_Conv(self, node):
        v = self._materialize(node, self._val(node))
        w = self._const(node, 1, "weight")
        a = node.attrs
        group = int(a.get("group", 1))
        origin = node.inputs[1]
        if group != 1:
            if w.ndim != 4 or len(v.shape) != 4 or w.shape[1] * group != v.shape[1]:
                raise BnncError(f"{_where(node)}: group={group} on an input of {v.shape[1] if len(v.shape) > 1 else '?'} "
                                f"channels needs weights of shape (O, C / {group}, kh, kw); they are {tuple(w.shape)}")
            if origin in self.origins:
                k, sc = self.origins[origin]
                sc = np.asarray(sc)
                self.origins[origin + "\0G"] = (_ungroup(node, np.asarray(k), group),
                                                 _ungroup(node, sc, group) if sc.shape == np.shape(k) else sc)
            origin = origin + "\0G"
            w = _ungroup(node, w, group)
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise BnncError(f"{_where(node)}: dilated convolution is not supported")
        if w.ndim != 4:
            raise BnncError(f"{_where(node)}: only 2-D convolutions are supported (weight shape {w.shape})")
        if len(v.shape) != 4 or v.shape[1] != w.shape[1]:
            raise BnncError(f"{_where(node)}: input shape {v.shape} does not match weights {w.shape}")
        kernel = tuple(int(k) for k in w.shape[2:])
        stride = tuple(a.get("strides", [1, 1]))
        pads = _conv_pads(node, a, v.shape[2:], kernel, stride)
        dec = self._decode_weights(node, w, origin, v)
        bias = self.consts.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        if len(node.inputs) > 2 and node.inputs[2] and bias is None:
            raise BnncError(f"{_where(node)}: its bias must be a constant")
        layout = lambda x: x.transpose(0, 2, 3, 1)  # noqa: E731  OIHW -> OHWC
        self.op_conv_out(node, self._conv_common(node, v, dec, layout, kernel, stride, pads, bias, False))

    def op_conv_out(self, node, val):
        val.source_ops = []
        self._set(node, val)

    def _dense(self, node, v: Val, w_oi: np.ndarray, bias, scale_mult=1.0, origin_name=""):
        v = self._materialize(node, v)
        if len(v.shape) != 2:
            raise BnncError(f"{_where(node)}: dense layer input must be 2-D (got {v.shape})")
        if w_oi.shape[1] != v.shape[1]:
            raise BnncError(f"{_where(node)}: weight shape {w_oi.shape} does not match input {v.shape}")
        dec = self._decode_weights(node, w_oi, origin_name, v)
        dec.unit = dec.unit * scale_mult
        if dec.scale_p is not None:
            dec.scale_p, dec.scale_n = dec.scale_p * scale_mult, dec.scale_n * scale_mult
        src = self.graph.tensors.get(v.tensor) if v.kind in ("bits", "ints") else None
        o = w_oi.shape[0]
        if src is not None:
            h, w_, c = src.shape
            if v.block is not None:
                if h * w_ != 1:
                    raise BnncError(f"{_where(node)}: flattened activation bases are not supported")
                layout = lambda x: x.reshape(o, 1, 1, -1)  # noqa: E731
            elif v.flat_from is not None:
                cc, hh, ww = v.flat_from
                layout = lambda x: x.reshape(o, cc, hh, ww).transpose(0, 2, 3, 1)  # noqa: E731
            else:
                layout = lambda x: x.reshape(o, h, w_, c)  # noqa: E731
            kernel = (h, w_)
        else:
            layout, kernel = (lambda x: x.reshape(o, 1, 1, -1)), (1, 1)
        val = self._conv_common(node, v, dec, layout, kernel, (1, 1), (0, 0, 0, 0), bias, True)
        self._set(node, val)

    def op_Gemm(self, node):
        v = self._val(node)
        a = node.attrs
        if a.get("transA", 0):
            raise BnncError(f"{_where(node)}: transA=1 is not supported")
        w = np.asarray(self._const(node, 1, "weight"), dtype=np.float64)
        origin = node.inputs[1]
        if not a.get("transB", 0):
            w = w.T
            if origin in self.origins:
                k, s = self.origins[origin]
                self.origins[origin + "\0T"] = (k.T, np.asarray(s).T)
                origin = origin + "\0T"
        bias = None
        if len(node.inputs) > 2 and node.inputs[2]:
            bias = np.asarray(self._const(node, 2, "bias"), dtype=np.float32) * np.float32(a.get("beta", 1.0))
            bias = np.broadcast_to(bias, (1, w.shape[0])).reshape(-1)
        self._dense(node, v, w, bias, float(a.get("alpha", 1.0)), origin)

    def op_MatMul(self, node):
        v = self._val(node)
        w = np.asarray(self._const(node, 1, "weight"), dtype=np.float64)
        if w.ndim != 2:
            raise BnncError(f"{_where(node)}: weight must be 2-D (got {w.shape})")
        origin = node.inputs[1]
        if origin in self.origins:
            k, s = self.origins[origin]
            self.origins[origin + "\0T"] = (k.T, np.asarray(s).T)
        self._dense(node, v, w.T, None, 1.0, origin + "\0T")


    # ------------------------------------------------------------------ pooling / heads
    def op_MaxPool(self, node):
        v = self._val(node)
        a = node.attrs
        if len(node.outputs) > 1 and node.outputs[1]:
            raise BnncError(f"{_where(node)}: MaxPool indices output is not supported")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise BnncError(f"{_where(node)}: dilated MaxPool is not supported")
        kernel = tuple(a["kernel_shape"])
        stride = tuple(a.get("strides", [1, 1]))
        if len(v.shape) != 4:
            raise BnncError(f"{_where(node)}: MaxPool needs a 4-D input")
        pads = _conv_pads(node, a, v.shape[2:], kernel, stride)
        oh, ow = ir.out_shape(v.shape[2:], kernel, stride, pads)
        if a.get("ceil_mode", 0):
            # ceil_mode = 1: extra end padding (MaxPool ignores padded taps), without the last
            # window when it would start beyond the input and its start padding
            extra = []
            for ax in range(2):
                size, before, after = v.shape[2 + ax], pads[ax], pads[ax + 2]
                n = -(-(size + before + after - kernel[ax]) // stride[ax]) + 1
                if (n - 1) * stride[ax] >= size + before:
                    n -= 1
                extra.append(max(0, (n - 1) * stride[ax] + kernel[ax] - (size + before + after)))
            pads = (pads[0], pads[1], pads[2] + extra[0], pads[3] + extra[1])
            oh, ow = ir.out_shape(v.shape[2:], kernel, stride, pads)
        params = (kernel, stride, pads, (oh, ow), node.name)
        if v.kind == "acc":
            self._set(node, Val(**{**v.__dict__, "shape": (1, v.shape[1], oh, ow), "chain": list(v.chain),
                                   "pools": v.pools + [(params, len(v.chain))]}))
            return
        if v.kind not in ("bits", "ints"):
            raise BnncError(f"{_where(node)}: MaxPool on a {v.kind} tensor is not supported")
        self._set(node, self._maxpool(params, v))

    def _maxpool(self, params, v: Val) -> Val:
        kernel, stride, pads, (oh, ow), src = params
        name = self._name("maxpool")
        tname = name + "_out"
        ty = self.graph.tensors[v.tensor]
        oty = ir.Bits((oh, ow, ty.shape[2]), ty.scale) if isinstance(ty, ir.Bits) else \
            ir.Ints((oh, ow, ty.shape[2]), ty.lo, ty.hi, ty.scale)
        self.graph.add(ir.MaxPool(name, [v.tensor], [tname], kernel, stride, pads), {tname: oty})
        return Val(v.kind, (1, v.shape[1], oh, ow), tensor=tname, scale=v.scale)

    def op_AveragePool(self, node):
        """AveragePool of a fixed-point stream (Bi-Real's downsample shortcut): a SumPool, with the
        1/(kh*kw) in the scale (exact); only without padding, where every window has kh*kw taps."""
        v = self._val(node)
        a = node.attrs
        if v.kind in ("acc", "intchain", "bits") and len(v.shape) == 4 and a.get("count_include_pad", 0) \
                and not a.get("ceil_mode", 0) and any(a.get("pads", [0])):
            self._set(node, self._window_sum_conv(node, v))
            return
        if v.kind == "acc":
            v = self._to_stream(node, v)
        if v.kind != "ints" or len(v.shape) != 4:
            raise BnncError(f"{_where(node)}: AveragePool of a {v.kind} tensor is not supported (of a fixed-point "
                            "stream it is)")
        kernel = tuple(a["kernel_shape"])
        stride = tuple(a.get("strides", [1, 1]))
        pads = _conv_pads(node, a, v.shape[2:], kernel, stride)
        if a.get("count_include_pad", 0) and any(pads) and not a.get("ceil_mode", 0):
            self._set(node, self._window_sum_conv(node, v))
            return
        if any(pads) or a.get("ceil_mode", 0):
            raise BnncError(f"{_where(node)}: AveragePool with padding and count_include_pad=0, or with ceil_mode, "
                            "is not supported (the divisor would change near the border)")
        ty = self.graph.tensors[v.tensor]
        oh, ow = ir.out_shape(ty.shape[:2], kernel, stride, (0, 0, 0, 0))
        n = kernel[0] * kernel[1]
        name = self._name("sumpool")
        tname = name + "_out"
        _check_int32(node, ty.lo * n, ty.hi * n)
        oty = ir.Ints((oh, ow, ty.shape[2]), ty.lo * n, ty.hi * n, ty.scale / n)
        self.graph.add(ir.SumPool(name, [v.tensor], [tname], kernel, stride), {tname: oty})
        self._set(node, Val("ints", (1, v.shape[1], oh, ow), tensor=tname, scale=v.scale / n,
                            source_ops=[node.name]))

    def _window_sum_conv(self, node, v: Val) -> Val:
        """AveragePool with zero padding counted in the divisor (count_include_pad = 1): a
        convolution with weight 1 from each channel to itself (the zero padding is an exact 0),
        the 1 / (kh * kw) entering the layer's chain like any scale."""
        a = node.attrs
        kernel = tuple(a["kernel_shape"])
        stride = tuple(a.get("strides", [1, 1]))
        pads = _conv_pads(node, a, v.shape[2:], kernel, stride)
        c = v.shape[1]
        ones = _ungroup(node, np.ones((c, 1) + kernel, np.int64), c)
        dec = weight_codes.Decoded("int", ones.astype(np.int8), np.full(c, 1.0 / (kernel[0] * kernel[1])), ones,
                                   what="window sum (AveragePool)")
        layout = lambda x: x.transpose(0, 2, 3, 1)  # noqa: E731  OIHW -> OHWC
        out = self._conv_common(node, v, dec, layout, kernel, stride, pads, None, False)
        out.source_ops = []
        return out

    def op_GlobalAveragePool(self, node):
        v = self._val(node)
        if v.kind == "acc":  # a real-valued layer output: through the fixed-point stream
            v = self._to_stream(node, v)
        if v.kind not in ("bits", "ints"):
            raise BnncError(f"{_where(node)}: GlobalAveragePool of real-valued layer outputs is not supported "
                            "yet; place it after the sign activation")
        ty = self.graph.tensors[v.tensor]
        h, w, c = ty.shape
        name = self._name("gsum")
        tname = name + "_out"
        if isinstance(ty, ir.Bits):
            oty = ir.Ints((1, 1, c), -h * w, h * w, ty.scale / (h * w))
        else:
            oty = ir.Ints((1, 1, c), ty.lo * h * w, ty.hi * h * w, ty.scale / (h * w))
            if max(-oty.lo, oty.hi) > SUM_LIMIT:
                raise BnncError(f"{_where(node)}: the sum over {h}x{w} pixels of values in [{ty.lo}, {ty.hi}] "
                                "needs more than 64 bits")
        self.graph.add(ir.GlobalSumPool(name, [v.tensor], [tname]), {tname: oty})
        self._set(node, Val("ints", (1, c, 1, 1), tensor=tname, scale=oty.scale))

    def _head(self, node, k: int, axis: int, outputs: list):
        v = self._val(node)
        if v.kind == "acc":
            v = self._finish_acc(v, None, node)
        if v.kind != "reals":
            raise BnncError(f"{_where(node)} must follow the last (real-valued) layer")
        ax = axis % len(v.shape)
        if ax != 1 or any(s != 1 for i, s in enumerate(v.shape) if i not in (0, 1)):
            raise BnncError(f"{_where(node)}: only the channel axis of a (1, C) tensor is supported")
        c = v.shape[1]
        if not 1 <= k <= c:
            raise BnncError(f"{_where(node)}: k={k} outside 1..{c}")
        name = self._name("argmax")
        tname = name + "_out"
        self.graph.add(ir.ArgMax(name, [v.tensor], [tname], k), {tname: ir.Ints((1, 1, k), 0, c - 1)})
        for o in outputs:
            self.vals[o] = Val("index", (1, k) if outputs else (1,), tensor=tname)

    def op_TopK(self, node):
        k = int(np.asarray(self._const(node, 1, "k")).ravel()[0]) if len(node.inputs) > 1 else int(node.attrs["k"])
        if not node.attrs.get("largest", 1):
            raise BnncError(f"{_where(node)}: TopK with largest=0 is not supported")
        if node.outputs[0] and node.outputs[0] == self.lm.output_name:
            raise BnncError(f"{_where(node)}: TopK values as the model output are not supported (indices are)")
        self._head(node, k, node.attrs.get("axis", -1), [node.outputs[1]])

    def op_ArgMax(self, node):
        if node.attrs.get("select_last_index", 0):
            raise BnncError(f"{_where(node)}: select_last_index=1 is not supported")
        self._head(node, 1, node.attrs.get("axis", 0), [node.outputs[0]])

    # ------------------------------------------------------------------ end
    def _finish(self):
        out = self.lm.output_name
        if out not in self.vals:
            raise BnncError(f"model output '{out}' is not computed from the input by supported ops")
        v = self.vals[out]
        if v.kind == "acc":
            v = self._finish_acc(v, None, None)
        if v.kind in ("ints", "intchain") and v.flat_from is None and v.block is None:
            # a fixed-point or integer output: its real values, the float32 chain on the integers, as
            # the epilogue of an identity 1x1 convolution (the form every backend's layers have)
            c = self.graph.tensors[v.tensor].shape[2]
            eye = np.eye(c, dtype=np.int64).reshape(c, 1, 1, c)
            dec = weight_codes.Decoded("int", eye.astype(np.int8), np.ones(c), eye, what="identity (output)")
            acc = self._conv_common(SimpleNamespace(name=out, op="output"), Val(**{**v.__dict__, "kind": "ints"}), dec, lambda x: x,
                                    (1, 1), (1, 1), (0, 0, 0, 0), None, False)
            if v.kind == "intchain":
                acc.chain = list(v.chain)
            acc.shape = v.shape
            v = self._finish_acc(acc, None, None)
        if v.kind == "reals":
            dtype = "float32"
        elif v.kind == "index":
            dtype = "int32"
        else:
            raise BnncError(f"model output '{out}' is a {v.kind} tensor; bnnc supports real-valued outputs "
                            "(logits) or TopK/ArgMax indices")
        # drop ops whose outputs nobody reads (e.g. TopK values)
        self.graph.output = v.tensor
        self.graph.output_info = {"shape": tuple(v.shape), "dtype": dtype, "onnx_name": out,
                                  "elements": int(np.prod(v.shape))}
        for n in list(self.graph.g.nodes):
            op = self.graph.op(n)
            if isinstance(op, ir.Conv) and op.name not in self.finished:
                raise BnncError(f"layer '{op.source_ops[0]}' output is consumed by nothing bnnc supports")
            if isinstance(op, ir.Conv):  # activation-base planes added after this layer was built
                _widen(op, self.graph.tensors[op.inputs[0]].shape[2])


def _after_first_relu(chain: list) -> int:
    """Length of the chain up to and including its first relu (the whole chain without one)."""
    return next((i + 1 for i, op in enumerate(chain) if op.op == "relu"), len(chain))


def _pools_commute(v: Val) -> bool:
    """Whether the MaxPools of an accumulator commute with the chain after them (no negative scale)."""
    for _, at in v.pools:
        for op in v.chain[at:]:
            if op.op in ("mul", "div") and np.any(op.const < 0):
                return False
    return True


def _uniform(c: np.ndarray) -> np.ndarray:
    """A constant whose elements are all equal as a scalar (exporters shape scalar activation
    scales per channel, e.g. (1, C, 1, 1)); otherwise unchanged."""
    c = np.asarray(c)
    return c.reshape(-1)[:1].reshape(()) if c.size > 1 and np.all(c == c.reshape(-1)[0]) else c


def _ungroup(node, w: np.ndarray, group: int) -> np.ndarray:
    """Weights (O, C / group, kh, kw) of a grouped (depthwise: group = C) convolution as the dense
    (O, C, kh, kw) weights that are zero outside each output's group: the same sums exactly (a
    zero weight contributes 0); find_sparse_connectivity then lists each row's live channels."""
    o, cg = w.shape[0], w.shape[1]
    if group < 1 or o % group:
        raise BnncError(f"{_where(node)}: group={group} does not divide the {o} output channels")
    dense = np.zeros((o, cg * group) + w.shape[2:], w.dtype)
    per = o // group
    for g in range(group):
        dense[g * per:(g + 1) * per, g * cg:(g + 1) * cg] = w[g * per:(g + 1) * per]
    return dense


def _only_unit_dims_changed(a: tuple, b: tuple) -> bool:
    return [s for s in a if s != 1] == [s for s in b if s != 1] and a[:2] == b[:2] if len(a) > 1 and len(b) > 1 \
        else [s for s in a if s != 1] == [s for s in b if s != 1]


def _chw(shape: tuple, input_shape: tuple) -> tuple:
    if len(input_shape) == 4:
        return tuple(input_shape[1:])
    if len(input_shape) == 2:
        return (input_shape[1], 1, 1)
    if len(input_shape) == 3:
        return (input_shape[1], input_shape[2], 1)
    raise BnncError(f"input rank {len(input_shape)} is not supported")


def _input_order(op: ir.ChainOp, input_shape: tuple, flat: bool) -> ir.ChainOp:
    """Put a per-element input constant in the order InputQuantize writes (HWC unless flat)."""
    if op.const is None or op.const.ndim == 0 or flat or len(input_shape) != 4:
        return op
    c, h, w = input_shape[1:]
    return ir.ChainOp(op.op, np.ascontiguousarray(op.const.reshape(c, h, w).transpose(1, 2, 0).reshape(-1)))


def _bit_scale(node, term) -> float:
    if isinstance(term, ir.SignTerminal):
        return term.out_scale
    t = term.thresholds
    if t.shape[1] != 1:
        raise BnncError(f"{_where(node)}: a {t.shape[1]}-step MultiThreshold (multi-bit activation) on the model "
                        "input is not supported; quantize the input with Quant / QuantizeLinear (multi-bit "
                        "activations inside the network are supported)")
    lo, hi = term.out_bias, term.out_bias + term.out_scale
    if not (lo == -hi and hi > 0):
        raise BnncError(f"{_where(node)}: MultiThreshold outputs {{{lo}, {hi}}} are not bipolar (+-s); "
                        "unipolar activations are not supported")
    return hi


def _conv_pads(node, a, hw, kernel, stride) -> tuple:
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        p = list(a.get("pads", [0, 0, 0, 0]))
        if len(p) != 4 or any(x < 0 for x in p):
            raise BnncError(f"{_where(node)}: pads {p} are not supported")
        if any(p[i] >= kernel[i % 2] for i in range(4)):
            raise BnncError(f"{_where(node)}: padding {p} as large as the kernel {kernel} is not supported")
        return tuple(p)
    if auto == "VALID":
        return (0, 0, 0, 0)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for i in range(2):
            o = -(-hw[i] // stride[i])
            total = max(0, (o - 1) * stride[i] + kernel[i] - hw[i])
            small, big = total // 2, total - total // 2
            out.append((small, big) if auto == "SAME_UPPER" else (big, small))
        return (out[0][0], out[1][0], out[0][1], out[1][1])
    raise BnncError(f"{_where(node)}: auto_pad '{auto}' is not supported")


def lower(lm: LoadedModel, input_scale=None, input_range=None, frac_bits: int = FRAC_BITS,
          input_affine=None) -> ir.Graph:
    """ONNX (loaded) -> IR with float32 epilogue chains; see module docstring."""
    return Lowering(lm, input_scale, input_range, frac_bits, input_affine).run()


# ----------------------------------------------------------------------------- issue 5 helpers


def _consumers(lm: LoadedModel) -> dict:
    """{tensor: [nodes reading it]}."""
    out: dict = {}
    for n in lm.nodes:
        for t in dict.fromkeys(n.inputs):
            if t:
                out.setdefault(t, []).append(n)
    return out


def _dynamic_tensors(lm: LoadedModel) -> set:
    """Tensors that depend on the model input."""
    dyn = {lm.input_name}
    for n in lm.nodes:
        if any(t in dyn for t in n.inputs):
            dyn.update(t for t in n.outputs if t)
    return dyn


def _activation_path(node, tensor: str, consumers: dict, dynamic: set) -> bool:
    """True when `node` (reading `tensor`) leads only to activations through elementwise ops with
    constants: the accumulator may then be binarized several ways (activation bases)."""
    if node.op in ACTIVATION_OPS:
        return True
    if node.op in ("Add", "Sub", "Mul", "Div"):
        others = [t for t in node.inputs if t != tensor]
        if any(t in dynamic for t in others):
            return False
    elif node.op not in ("BatchNormalization", "Identity", "Relu"):
        return False
    users = consumers.get(node.outputs[0], [])
    return bool(users) and all(_activation_path(u, node.outputs[0], consumers, dynamic) for u in users)


def _log2_exact(r: Fraction):
    """k with r == 2**k (k >= 0), else None."""
    if r.denominator != 1 or r.numerator < 1:
        return None
    n = r.numerator
    return n.bit_length() - 1 if n & (n - 1) == 0 else None


def _check_int32(node, lo: int, hi: int) -> None:
    if lo < -(2**31) or hi > 2**31 - 1:
        raise BnncError(f"{_where(node)}: the fixed-point values reach [{lo}, {hi}], beyond 32 bits; "
                        "use fewer fractional bits")


def _pure_scale(chain: list, o: int):
    """Per-channel exact factors (Fractions) when the chain only multiplies/divides, else None."""
    f = [Fraction(1)] * o
    for op in chain:
        if op.op not in ("mul", "div"):
            return None
        c = np.broadcast_to(np.asarray(op.const, np.float32), (o,))
        f = [x * Fraction(float(ci)) if op.op == "mul" else x / Fraction(float(ci)) for x, ci in zip(f, c)]
    return f


def _exact_multipliers(fracs: list) -> tuple:
    """(unit, [k]) with fracs[i] == unit * k[i] exactly, integers k as small as possible."""
    den = 1
    for f in fracs:
        den = den * f.denominator // _gcd(den, f.denominator)
    ks = [int(f * den) for f in fracs]
    g = 0
    for k in ks:
        g = _gcd(g, abs(k))
    g = g or 1
    return Fraction(g, den), [k // g for k in ks]


def _gcd(a: int, b: int) -> int:
    import math

    return math.gcd(a, b)


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


def _widen(conv: ir.Conv, channels: int, offset: int = 0) -> None:
    """Pad the input-channel axis of every weight array to `channels` (new channels read nothing;
    the conv's own channels start at `offset`). A binary code gains zeros: it becomes ternary."""
    c = conv.w.shape[3]
    if c == channels and offset == 0:
        return
    pad = ((0, 0), (0, 0), (0, 0), (offset, channels - c - offset))
    if conv.code == "binary":
        o = conv.w.shape[0]
        conv.code = "ternary"
        conv.int_w = conv.w.astype(np.int64)
        conv.bases = [ir.WeightBase(conv.w.copy(), np.ones(o, np.int64), np.ones(o, np.int64),
                                    conv.scale_p.copy(), conv.scale_n.copy())]
        conv.unit = conv.scale_p.copy()
    conv.w = np.pad(conv.w, pad)
    conv.int_w = np.pad(conv.int_w, pad)
    for b in conv.bases:
        b.w = np.pad(b.w, pad)


def _place_block(conv: ir.Conv, offset: int, channels: int) -> None:
    """A conv built for one activation-base plane reads channels [offset, offset + C) of a wider tensor."""
    _widen(conv, channels, offset)


def _affine_chain(node, chain: list, o: int) -> list:
    """[(a, b, relu)] per channel, exact rationals: the chain is relu?(a * acc + b)."""
    a = [Fraction(1)] * o
    b = [Fraction(0)] * o
    relu = False
    for op in chain:
        if relu:
            raise BnncError(f"{_where(node)}: a Relu followed by more arithmetic on a real-valued stream is not "
                            "supported (no single fixed-point requantization)")
        if op.op == "relu":
            relu = True
            continue
        c = [Fraction(float(x)) for x in np.broadcast_to(np.asarray(op.const, np.float32), (o,))]
        if op.op == "mul":
            a = [x * y for x, y in zip(a, c)]
            b = [x * y for x, y in zip(b, c)]
        elif op.op == "div":
            if any(y == 0 for y in c):
                raise BnncError(f"{_where(node)}: division by zero in a real-valued stream (BatchNorm variance?)")
            a = [x / y for x, y in zip(a, c)]
            b = [x / y for x, y in zip(b, c)]
        elif op.op == "add":
            b = [x + y for x, y in zip(b, c)]
        else:
            b = [x - y for x, y in zip(b, c)]
    return [(x, y, relu) for x, y in zip(a, b)]


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def _round_half_up(x: Fraction) -> int:
    return int((x + Fraction(1, 2)).__floor__())


def _bipolar_1step(term: ir.ThresholdTerminal) -> bool:
    return term.thresholds.shape[1] == 1 and term.out_bias == -(term.out_bias + term.out_scale) \
        and term.out_bias + term.out_scale > 0


def _level_terminal(node, t: np.ndarray, out_scale: float, out_bias: float) -> ir.LevelTerminal:
    """MultiThreshold levels out_scale * count + out_bias as integers base + step * count times a
    scale: the smallest power-of-two step that puts out_bias / out_scale on the grid."""
    if not out_scale > 0:
        raise BnncError(f"{_where(node)}: MultiThreshold out_scale {out_scale} must be positive")
    r = Fraction(out_bias) / Fraction(out_scale)
    for j in range(0, 9):
        d = 2**j
        if (r * d).denominator == 1:
            if np.any(np.diff(t, axis=1) < 0):
                raise BnncError(f"{_where(node)}: MultiThreshold thresholds must be non-decreasing per channel")
            return ir.LevelTerminal(t, int(r * d), d, out_scale / d, source=node.name)
    raise BnncError(f"{_where(node)}: MultiThreshold levels {out_scale:g} * n + {out_bias:g} are not on an "
                    "integer grid with a power-of-two step (up to 256)")


def _terminal_type(node, term, shape: tuple) -> tuple:
    """(IR tensor type, Val kind, scale) of an activation's output."""
    if isinstance(term, ir.LevelTerminal):
        b = term.thresholds.shape[1]
        return ir.Ints(shape, term.base, term.base + term.step * b, term.out_scale), "ints", term.out_scale
    if isinstance(term, ir.RoundClampTerminal):
        lo, hi = term.qmin - term.zero_point, term.qmax - term.zero_point
        return ir.Ints(shape, lo, hi, term.out_scale), "ints", term.out_scale
    scale = _bit_scale(node, term)
    return ir.Bits(shape, scale), "bits", scale
