"""Lower a loaded ONNX graph to bnnc's IR (see ir.py).

Walks the nodes in order, folding constant subgraphs and keeping, for every dynamic ONNX tensor,
what it is in integer terms (`Val`):
- "input": the model input with pending float32 ops, waiting for a quantizer or a binarizer;
- "bits" / "ints": an IR tensor (times a real scale);
- "acc": the integer accumulator of an IR Conv, with the float32 ops the model applies to it
  (scales, BatchNorm, constant Mul/Add/...) collected into that Conv's epilogue chain, plus
  MaxPools that commute with the final sign.
Weights are classified by value: +-alpha per output channel (within a relative tolerance) is
binary; an all-zero filter is pruned; anything else is refused with the node named.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import ir
from .errors import BnncError
from .onnx_loader import LoadedModel, apply_round, fold, foldable, quant_levels, round_mode  # noqa: F401
from .passes.quantize_input import input_grid

WEIGHT_RTOL = 1e-3  # |w| within this relative distance of alpha_o counts as alpha_o

SUPPORTED_OPS = sorted([
    "Conv", "Gemm", "MatMul", "BatchNormalization", "Sign", "BipolarQuant", "MultiThreshold", "Quant",
    "QuantizeLinear", "DequantizeLinear", "MaxPool", "GlobalAveragePool", "Flatten", "Reshape", "Squeeze",
    "Unsqueeze", "Transpose (of constants)", "Mul", "Add", "Sub", "Div", "Relu", "Identity", "Dropout",
    "TopK", "ArgMax", "Shape/Gather/Concat (on static shapes)",
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
    quant: object = None  # input: pending QuantizeLinear (zero point, dtype, scale)


def _where(node) -> str:
    return f"node '{node.name}' ({node.op})"


class Lowering:
    def __init__(self, lm: LoadedModel, input_scale: Optional[float] = None, input_range=None):
        self.lm = lm
        self.consts = dict(lm.consts)
        self.vals: dict = {}
        self.counter = 0
        self.grid = input_grid(lm, input_scale, input_range)
        shape = lm.input_shape
        self.input_op_name = None
        self.graph = ir.Graph(
            input_name="input",
            input_info={"shape": tuple(shape[1:]), "onnx_name": lm.input_name,
                        "dtype": self.grid["dtype"], "grid": self.grid},
            output_name="", output_info={},
        )
        pre = [ir.ChainOp("mul", np.float32(self.grid["scale"]).reshape(()))] if self.grid["scale"] != 1.0 else []
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
        return self.vals[name]

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
        for node in self.lm.nodes:
            if foldable(node, self.consts):
                fold(node, self.consts)
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
            raise BnncError(f"{_where(node)}: {node.op} of a {v.kind} tensor by {c.ravel()[:4]} would leave "
                            "the +-1 / integer grid; only positive scalar scales are supported here")
        if v.kind not in ("acc", "input"):
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
        if v.kind not in ("acc", "input"):
            raise BnncError(f"{_where(node)}: Relu on a {v.kind} tensor is not supported")
        self._set(node, Val(**{**v.__dict__, "chain": v.chain + [ir.ChainOp("relu")], "pools": list(v.pools)}))

    def op_BatchNormalization(self, node):
        v = self._val(node)
        if v.kind not in ("acc", "input"):
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
        term = ir.ThresholdTerminal(t, float(node.attrs.get("out_scale", 1.0)),
                                    float(node.attrs.get("out_bias", 0.0)), source=node.name)
        self._activation(node, term)

    def _activation(self, node, term):
        v = self._val(node)
        if v.kind == "bits" and isinstance(term, ir.SignTerminal):
            self._set(node, Val(**{**v.__dict__, "scale": term.out_scale}))
            return
        if v.kind == "input":
            self._set(node, self._finish_input(node, v, term))
            return
        if v.kind != "acc":
            raise BnncError(f"{_where(node)}: activation of a {v.kind} tensor is not supported")
        self._set(node, self._finish_acc(v, term, node))

    def op_Quant(self, node):
        v = self._val(node)
        scale = np.asarray(self._const(node, 1, "scale"), dtype=np.float32)
        zp = np.asarray(self._const(node, 2, "zero point"), dtype=np.float32)
        bw = np.asarray(self._const(node, 3, "bit width"))
        if v.kind != "input":
            raise BnncError(f"{_where(node)}: multi-bit activation quantizers inside the network are not "
                            "supported yet (only on the model input)")
        if scale.size != 1 or zp.size != 1 or not float(scale) > 0:
            raise BnncError(f"{_where(node)}: input Quant needs a positive scalar scale and zero point")
        if float(zp) != round(float(zp)):
            raise BnncError(f"{_where(node)}: zero point {float(zp)} is not an integer")
        lo, hi = quant_levels(float(bw), node.attrs.get("signed", 1), node.attrs.get("narrow", 0))
        ops = [ir.ChainOp("div", scale.reshape(()))]
        if float(zp) != 0:
            ops.append(ir.ChainOp("add", zp.reshape(())))
        term = ir.RoundClampTerminal(lo, hi, int(zp), round_mode(node.attrs.get("rounding_mode", "ROUND")),
                                     source=node.name)
        v2 = Val(**{**v.__dict__, "chain": v.chain + ops})
        out = self._finish_input(node, v2, term, zp_after_round=0)
        out.scale = float(scale)
        self._set(node, out)

    def op_QuantizeLinear(self, node):
        v = self._val(node)
        if v.kind != "input":
            raise BnncError(f"{_where(node)}: QuantizeLinear inside the network (int8 layers) is not supported yet")
        scale = np.asarray(self._const(node, 1, "scale"), dtype=np.float32)
        zp = self.consts.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else np.uint8(0)
        zp = np.asarray(zp)
        if scale.size != 1 or zp.size != 1 or not float(scale) > 0:
            raise BnncError(f"{_where(node)}: bnnc supports per-tensor QuantizeLinear on the input")
        info = np.iinfo(zp.dtype)
        ops = [ir.ChainOp("div", scale.reshape(()))]
        term = ir.RoundClampTerminal(int(info.min), int(info.max), int(zp), "half_even", source=node.name)
        self._set(node, Val("input", v.shape, tensor=v.tensor, chain=v.chain + ops,
                            quant=(term, float(scale), node.name)))

    def op_DequantizeLinear(self, node):
        v = self._val(node)
        if v.kind != "input" or v.quant is None:
            raise BnncError(f"{_where(node)}: DequantizeLinear must follow the input's QuantizeLinear")
        term, qscale, qname = v.quant
        scale = np.asarray(self._const(node, 1, "scale"), dtype=np.float32)
        zp = self.consts.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else 0
        if scale.size != 1 or float(scale) != qscale or int(np.asarray(zp).ravel()[0]) != term.zero_point:
            raise BnncError(f"{_where(node)}: its scale/zero point differ from QuantizeLinear '{qname}'")
        out = self._finish_input(node, Val(**{**v.__dict__, "quant": None}), term, zp_after_round=term.zero_point)
        out.scale = qscale
        self._set(node, out)

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
        """Close a Conv's epilogue with `term` (None: real output)."""
        conv = self.graph.op(v.conv)
        if term is not None and v.pools:
            for _, at in v.pools:
                for op in v.chain[at:]:
                    if op.op in ("mul", "div") and np.any(op.const < 0):
                        raise BnncError(f"{_where(node)}: a MaxPool sits before a negative scale; "
                                        "max and the activation would not commute")
        conv.epilogue = ir.Chain(list(v.chain), term)
        conv.source_ops = conv.source_ops + v.source_ops + ([node.name] if node is not None else [])
        oshape = self.graph.tensors[conv.outputs[0]].shape
        if term is None:
            if v.pools:
                raise BnncError(f"MaxPool on real-valued layer outputs ('{conv.name}') is not supported")
            self.graph.tensors[conv.outputs[0]] = ir.Reals(oshape)
            kind, scale = "reals", 1.0
        else:
            self.graph.tensors[conv.outputs[0]] = ir.Bits(oshape, _bit_scale(node, term))
            kind, scale = "bits", _bit_scale(node, term)
        out = Val(kind, v.shape, tensor=conv.outputs[0], scale=scale, source_ops=[])
        for params, _ in v.pools:
            out = self._maxpool(params, out)
        return out

    # ------------------------------------------------------------------ layers
    def _classify_weights(self, node, w: np.ndarray):
        """(signs int8 (O, ...), alpha float64 (O,)); raises for non-binary weights."""
        w = np.asarray(w, dtype=np.float64)
        o = w.shape[0]
        flat = w.reshape(o, -1)
        mag = np.abs(flat)
        alpha = np.zeros(o)
        signs = np.zeros(flat.shape, dtype=np.int8)
        for i in range(o):
            nz = mag[i] > 0
            if not nz.any():
                continue  # pruned filter
            a = mag[i][nz].mean()
            if nz.sum() != flat.shape[1] or np.max(np.abs(mag[i] - a)) > WEIGHT_RTOL * a:
                distinct = np.unique(np.round(flat[i] / a, 3)).size
                zeros = int((~nz).sum())
                raise BnncError(
                    f"{_where(node)}: weights of output channel {i} are not binary (+-alpha): {distinct} "
                    f"distinct values, {zeros} zeros among {flat.shape[1]}; supported now: binary weights "
                    "per output channel and all-zero (pruned) filters")
            alpha[i] = a
            signs[i] = np.where(flat[i] > 0, 1, -1)
        return signs.reshape(w.shape), alpha

    def _materialize(self, node, v: Val) -> Val:
        """The raw input read directly by a layer: integers on the declared grid, scales folded."""
        if v.kind != "input":
            return v
        if self.grid["range"] is None:
            raise BnncError(f"{_where(node)} reads the float model input directly; bnnc needs integers: add a "
                            "Quant/QuantizeLinear on the input, or declare the grid with --input-scale S")
        scale = 1.0
        for op in v.chain:
            c = float(op.const) if op.const is not None and op.const.size == 1 else None
            if op.op not in ("mul", "div") or c is None or not c > 0:
                raise BnncError(f"{_where(node)}: the input reaches this layer through a {op.op} by a non-scalar "
                                "or non-positive constant; only positive scalar scales are supported")
            scale = scale * c if op.op == "mul" else scale / c
        out = self._finish_input(node, Val(**{**v.__dict__, "chain": []}), None)
        out.scale = scale
        return out

    def _conv_common(self, node, v: Val, w_ohwc, alpha, kernel, stride, pads, bias, dense):
        if v.kind not in ("bits", "ints"):
            what = "real-valued activations" if v.kind in ("acc", "reals") else f"a {v.kind} tensor"
            raise BnncError(f"{_where(node)} receives {what}; bnnc needs binary or integer inputs here "
                            "(a quantizer on the input, or a sign activation before this layer)")
        src = self.graph.tensors[v.tensor]
        name = self._name("dense" if dense else "conv")
        tname = name + "_out"
        ih, iw = src.shape[0], src.shape[1]
        oh, ow = ir.out_shape((ih, iw), kernel, stride, pads)
        if oh < 1 or ow < 1:
            raise BnncError(f"{_where(node)}: output would be empty for input {ih}x{iw}")
        op = ir.Conv(name, [v.tensor], [tname], tuple(kernel), tuple(stride), tuple(pads), w_ohwc,
                     alpha.copy(), alpha.copy(), ir.Chain([], None), is_dense=dense,
                     source_ops=[node.name], original_params=int(w_ohwc.size + (bias.size if bias is not None else 0)))
        o = w_ohwc.shape[0]
        self.graph.add(op, {tname: ir.Reals((oh, ow, o))})
        scale = (alpha * v.scale).astype(np.float32)
        chain = [ir.ChainOp("mul", scale)]
        if bias is not None:
            chain.append(ir.ChainOp("add", np.asarray(bias, dtype=np.float32).reshape(-1)))
        shape = (1, o, oh, ow) if not dense else (1, o)
        return Val("acc", shape, conv=name, chain=chain)

    def op_Conv(self, node):
        v = self._materialize(node, self._val(node))
        w = self._const(node, 1, "weight")
        a = node.attrs
        if a.get("group", 1) != 1:
            raise BnncError(f"{_where(node)}: grouped convolution (group={a['group']}) is not supported")
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            raise BnncError(f"{_where(node)}: dilated convolution is not supported")
        if w.ndim != 4:
            raise BnncError(f"{_where(node)}: only 2-D convolutions are supported (weight shape {w.shape})")
        if len(v.shape) != 4 or v.shape[1] != w.shape[1]:
            raise BnncError(f"{_where(node)}: input shape {v.shape} does not match weights {w.shape}")
        kernel = tuple(int(k) for k in w.shape[2:])
        stride = tuple(a.get("strides", [1, 1]))
        pads = _conv_pads(node, a, v.shape[2:], kernel, stride)
        signs, alpha = self._classify_weights(node, w)
        bias = self.consts.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        if len(node.inputs) > 2 and node.inputs[2] and bias is None:
            raise BnncError(f"{_where(node)}: its bias must be a constant")
        self.op_conv_out(node, self._conv_common(node, v, signs.transpose(0, 2, 3, 1).copy(), alpha, kernel,
                                                 stride, pads, bias, False))

    def op_conv_out(self, node, val):
        val.source_ops = []
        self._set(node, val)

    def _dense(self, node, v: Val, w_oi: np.ndarray, bias, scale_mult=1.0):
        v = self._materialize(node, v)
        if len(v.shape) != 2:
            raise BnncError(f"{_where(node)}: dense layer input must be 2-D (got {v.shape})")
        if w_oi.shape[1] != v.shape[1]:
            raise BnncError(f"{_where(node)}: weight shape {w_oi.shape} does not match input {v.shape}")
        signs, alpha = self._classify_weights(node, w_oi)
        alpha = alpha * scale_mult
        src = self.graph.tensors.get(v.tensor) if v.kind in ("bits", "ints") else None
        o = w_oi.shape[0]
        if src is not None:
            h, w_, c = src.shape
            if v.flat_from is not None:
                cc, hh, ww = v.flat_from
                w4 = signs.reshape(o, cc, hh, ww).transpose(0, 2, 3, 1)
            else:
                w4 = signs.reshape(o, h, w_, c)
            kernel = (h, w_)
        else:
            w4, kernel = signs.reshape(o, 1, 1, -1), (1, 1)
        val = self._conv_common(node, v, np.ascontiguousarray(w4), alpha, kernel, (1, 1), (0, 0, 0, 0), bias, True)
        self._set(node, val)

    def op_Gemm(self, node):
        v = self._val(node)
        a = node.attrs
        if a.get("transA", 0):
            raise BnncError(f"{_where(node)}: transA=1 is not supported")
        w = np.asarray(self._const(node, 1, "weight"), dtype=np.float64)
        w = w if a.get("transB", 0) else w.T
        bias = None
        if len(node.inputs) > 2 and node.inputs[2]:
            bias = np.asarray(self._const(node, 2, "bias"), dtype=np.float32) * np.float32(a.get("beta", 1.0))
            bias = np.broadcast_to(bias, (1, w.shape[0])).reshape(-1)
        self._dense(node, v, w, bias, float(a.get("alpha", 1.0)))

    def op_MatMul(self, node):
        v = self._val(node)
        w = np.asarray(self._const(node, 1, "weight"), dtype=np.float64)
        if w.ndim != 2:
            raise BnncError(f"{_where(node)}: weight must be 2-D (got {w.shape})")
        self._dense(node, v, w.T, None)

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
            ch = -(-(v.shape[2] + pads[0] + pads[2] - kernel[0]) // stride[0]) + 1
            cw = -(-(v.shape[3] + pads[1] + pads[3] - kernel[1]) // stride[1]) + 1
            if (ch, cw) != (oh, ow):
                raise BnncError(f"{_where(node)}: ceil_mode=1 changes the output size here; not supported")
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

    def op_GlobalAveragePool(self, node):
        v = self._val(node)
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
            if isinstance(op, ir.Conv) and isinstance(op.epilogue, ir.Chain) and not op.epilogue.ops \
                    and op.epilogue.terminal is None and op.outputs[0] != v.tensor:
                raise BnncError(f"layer '{op.source_ops[0]}' output is consumed by nothing bnnc supports")


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
        raise BnncError(f"{_where(node)}: {t.shape[1]}-step MultiThreshold (multi-bit activations) is not "
                        "supported yet; bnnc supports bipolar (1-step) activations now")
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


def lower(lm: LoadedModel, input_scale=None, input_range=None) -> ir.Graph:
    """ONNX (loaded) -> IR with float32 epilogue chains; see module docstring."""
    return Lowering(lm, input_scale, input_range).run()
