"""The lowering state every handler works on, and the steps several handlers share: looking up
values and constants, quantizing the model input, closing a Conv's epilogue."""

from __future__ import annotations

from copy import deepcopy
from dataclasses import replace
from typing import Optional

import numpy as np

from .. import ir
from ..errors import BnncError
from ..onnx_loader import LoadedModel
from ..passes.fold_batchnorm_into_thresholds import straight_through_notes
from ..passes.quantize_input import input_grid
from .registry import where
from .streams import TANH_UNQUANTIZED, element_form, stream_of_intchain, to_stream
from .values import AccVal, BitsVal, InputVal, IntChainVal, IntsVal, RealsVal, Val

FRAC_BITS = 16  # default fixed-point grid 2**-16 of real-valued streams whose scales are not on a coarser one
ACTIVATION_OPS = ("Sign", "BipolarQuant", "MultiThreshold", "Quant", "QuantizeLinear")


class LoweringContext:
    def __init__(self, lm: LoadedModel, input_scale: Optional[float] = None, input_range=None,
                 frac_bits: int = FRAC_BITS, input_affine=None, weight_bits=None):
        self.lm = lm
        self.consts = dict(lm.consts)
        self.origins = dict(lm.quant_origin)
        self.frac_bits = int(frac_bits)
        self.weight_bits = dict(weight_bits or {})  # {node name or "*": bits} of real-valued weights
        self.weight_bits_used: set = set()
        self.vals: dict = {}
        self.counter = 0
        self.gridded_outputs: set = set()  # Softmax outputs whose Quantize/DequantizeLinear the op holds
        self.consumers = _consumers(lm)
        self.dynamic = _dynamic_tensors(lm)
        self.finished: dict = {}  # Convs whose epilogue is set: {name: their own ONNX nodes}
        self.copies: dict = {}  # {layer: copies made for more activations of its accumulator}
        self.planes: dict = {}  # {tensor: ((layer, MaxPool windows...), plane)}: activations of one accumulator
        self.plane_pools: dict = {}  # {(layer, windows...): {plane: its MaxPool through them}}
        self.grid = input_grid(lm, input_scale, input_range, input_affine)
        shape = lm.input_shape
        self.input_op_name = None
        self.read_inputs = {}  # the model input as layers read it, by its pending ops (frontend/linear.materialize)
        self.graph = ir.Graph(
            input_name="input",
            input_info={"shape": tuple(shape[1:]), "onnx_name": lm.input_name,
                        "dtype": self.grid["dtype"], "grid": self.grid},
            output_name="", output_info={},
        )
        pre = [ir.ChainOp("mul", np.float32(self.grid["scale"]).reshape(()))] if self.grid["scale"] != 1.0 else []
        pre += self.grid.get("pre", [])  # a declared per-channel normalisation, per element
        self.vals[lm.input_name] = InputVal(tuple(shape), tensor=lm.input_name, chain=pre)

    # ------------------------------------------------------------------ lookups
    def new_name(self, kind: str) -> str:
        """A fresh IR op name."""
        self.counter += 1
        return f"L{self.counter:02d}_{kind}"

    def const(self, node, i, what="operand"):
        name = node.inputs[i] if i < len(node.inputs) else ""
        if name == "" or name not in self.consts:
            raise BnncError(f"{where(node)}: its {what} must be a constant; bnnc supports "
                            "graphs whose only dynamic tensor path starts at the model input")
        return self.consts[name]

    def val(self, node, i=0) -> Val:
        name = node.inputs[i]
        if name not in self.vals:
            raise BnncError(f"{where(node)} reads '{name}', which bnnc cannot track")
        v = self.vals[name]
        if getattr(v, "pending_map", False) and not (node.op == "Transpose" and
                                                     list(node.attrs.get("perm") or []) == [0, 3, 1, 2]):
            from .shape import place_map

            v = place_map(self, node, v, channels_last=False)  # a vector reshaped to (N, C, H, W)
            self.vals[name] = v
        if isinstance(v, AccVal) and self.needs_stream(name):
            # a real-valued tensor with several kinds of consumers (a residual shortcut and a
            # sign, ...) lives in the fixed-point stream, so all of them read the same values
            v = to_stream(self, node, v)
            self.vals[name] = v
        if isinstance(v, IntChainVal) and v.map_from is not None and not self._adds_element_ops(node):
            v = stream_of_intchain(self, node, v)  # a map in element form: the map's stream for other readers
            self.vals[name] = v
        return v

    def _adds_element_ops(self, node) -> bool:
        """Whether `node` adds a pending op to a map in element form (an elementwise op with a
        constant operand, BatchNormalization, PRelu); every other reader gets the map's stream."""
        if node.op in ("Mul", "Add", "Sub", "Div"):
            return any(i in self.consts for i in node.inputs[:2])
        return node.op in ("BatchNormalization", "PRelu")

    def set(self, node, v: Val, i=0):
        self.vals[node.outputs[i]] = v

    def integer_input(self, v: Val) -> bool:
        """Whether `v` is the model input as its integer ONNX type gives it (no float32 op yet)."""
        return isinstance(v, InputVal) and not v.chain and self.lm.input_dtype not in ("float32", "float64", "float16")

    def needs_stream(self, name: str) -> bool:
        users = self.consumers.get(name, [])
        if len(users) < 2:
            return False
        return not all(_activation_path(u, name, self.consumers, self.dynamic) for u in users)

    # ------------------------------------------------------------------ constant operands
    def channel_const(self, node, v: Val, c: np.ndarray) -> np.ndarray:
        """A constant operand as float32 per channel (shape (C,)) or scalar (shape ()); of a map
        in element form (streams.element_form), per element in storage order (shape (H W C,))."""
        c = np.asarray(c, dtype=np.float32)
        if c.size == 1:
            return c.reshape(())
        return self._per_channel(node, v, self._channels_last(node, v, c))

    def _per_channel(self, node, v: Val, moved: np.ndarray) -> np.ndarray:
        """channel_const of the constant `moved` (_channels_last)."""
        if isinstance(v, IntChainVal) and v.map_from is not None:
            return np.ascontiguousarray(moved.reshape(-1))
        if not np.all(moved == moved[0]):
            raise BnncError(f"{where(node)}: constant varies within a channel; bnnc needs per-channel "
                            "or scalar constants here (per-element ones on real-valued feature maps)")
        return np.ascontiguousarray(moved[0])

    def _channels_last(self, node, v: Val, c: np.ndarray) -> np.ndarray:
        """The constant broadcast to `v`'s shape, as (elements in storage order, C)."""
        shape = v.shape
        try:
            b = np.broadcast_to(c, shape) if c.ndim <= len(shape) else None
        except ValueError:
            b = None
        if b is None:
            raise BnncError(f"{where(node)}: constant of shape {c.shape} does not broadcast to {shape}")
        if len(shape) < 2:
            raise BnncError(f"{where(node)}: elementwise op on a tensor of rank {len(shape)}")
        return np.moveaxis(b, 1, -1).reshape(-1, shape[1])

    def const_operand(self, node, v: Val, c) -> tuple:
        """(v, constant) of an elementwise op on `v` (const_of), `v` in element form
        (streams.element_form) where the constant varies within a channel of a real-valued map."""
        if isinstance(v, InputVal) or np.size(c) == 1 or len(v.shape) != 4:
            return v, self.const_of(node, v, c)
        moved = self._channels_last(node, v, np.asarray(c, dtype=np.float32))
        if not np.all(moved == moved[0]):
            v = element_form(self, node, v)  # (the map's logical shape stays: `moved` still fits it)
        return v, self._per_channel(node, v, moved)

    def input_const(self, node, v: Val, c: np.ndarray) -> np.ndarray:
        """A constant operand on the raw input, broadcast to every element (NCHW memory order)."""
        c = np.asarray(c, dtype=np.float32)
        if c.size == 1:
            return c.reshape(())
        try:
            full = np.broadcast_to(c, v.shape)
            if v.channels_last:  # the raw input's own (NHWC) element order
                full = full.transpose(0, 2, 3, 1)
            return np.ascontiguousarray(full.reshape(-1))
        except ValueError:
            raise BnncError(f"{where(node)}: constant of shape {c.shape} does not broadcast to {v.shape}") from None

    def const_of(self, node, v: Val, c):
        """A constant operand of an elementwise op on `v`, as its pending chain holds it."""
        return self.input_const(node, v, c) if isinstance(v, InputVal) else self.channel_const(node, v, c)

    # ------------------------------------------------------------------ closing pending values
    def finish_input(self, node, v: InputVal, term, zp_after_round=0) -> Val:
        """Create the InputQuantize op: raw input -> chain -> terminal, output Bits or Ints."""
        if self.input_op_name is not None:
            raise BnncError(f"{where(node)}: the model input is quantized a second time, in another way (layers "
                            "reading it through the same ops share one quantization; different ones are not supported)")
        # a 1-D input (N, C, L) read as (N, C, 1, L) (canonical/one_d_as_two_d.py): in that shape; an
        # (N, L, C) one channel-last, as (N, 1, L, C) (in_shape in that order)
        lifted = len(self.lm.input_shape) == 3 and len(v.shape) == 4
        c, h, w = v.shape[1:] if v.channels_last or lifted else _chw(v.shape, self.lm.input_shape)
        flat = len(v.shape) != 4
        out_shape = (1, 1, c * h * w) if flat else (h, w, c)
        name = self.new_name("input")
        tname = name + "_out"
        if term is None:
            lo, hi = self.grid["range"]
            ty = ir.Ints(out_shape, lo, hi)
        elif isinstance(term, ir.RoundClampTerminal):
            ty = ir.Ints(out_shape, term.qmin - term.zero_point, term.qmax - term.zero_point)
            term = ir.RoundClampTerminal(term.qmin, term.qmax, term.zero_point, term.mode, term.source,
                                         exact_below=term.exact_below)
            term.add_after_round = zp_after_round
        else:
            ty = ir.Bits(out_shape, bit_scale(node, term))
        chain = ir.Chain([op if v.channels_last else _input_order(op, self.lm.input_shape, flat) for op in v.chain],
                         term)
        in_shape = tuple(self.lm.input_shape[1:]) if len(self.lm.input_shape) == 4 or \
            len(self.lm.input_shape) == 3 and not lifted else (h, w, c) if v.channels_last else (c, h, w)
        op = ir.InputQuantize(name, [self.graph.input], [tname], in_shape,
                              self.grid["dtype"], chain, grid=self.grid.get("range"))
        if self.grid.get("range") is not None:
            op.notes += straight_through_notes(chain, *self.grid["range"])
        op.flat = flat
        op.channels_last = v.channels_last
        self.graph.add(op, {tname: ty})
        self.input_op_name = name
        cls = IntsVal if isinstance(ty, ir.Ints) else BitsVal
        return cls(tuple(v.shape), [node.name], tensor=tname, scale=getattr(ty, "scale", 1.0))

    def finish_acc(self, v: AccVal, term, node=None) -> Val:
        """Close a Conv's epilogue with `term` (None: real output). Another activation of an
        accumulator that already has one closes a copy of its layer (`_copy_layer`)."""
        conv = self.graph.op(v.conv)
        if term is not None and v.pools:
            for _, at in v.pools:
                for op in v.chain[at:]:
                    if op.op in ("mul", "div") and np.any(op.const < 0):
                        raise BnncError(f"{where(node)}: a MaxPool sits before a negative scale; "
                                        "max and the activation would not commute")
        if conv.name in self.finished:
            conv = self._copy_layer(conv)
        self.finish(conv)
        conv.epilogue = ir.Chain(list(v.chain), term)
        conv.source_ops = conv.source_ops + v.source_ops + ([node.name] if node is not None else [])
        oshape = self.graph.tensors[conv.outputs[0]].shape
        if term is None:
            if v.pools:
                raise BnncError(f"MaxPool on real-valued layer outputs ('{conv.name}') is not supported")
            if any(op.op == "tanh" for op in v.chain):
                raise BnncError(f"{where(node) if node is not None else conv.name}: {TANH_UNQUANTIZED}")
            self.graph.tensors[conv.outputs[0]] = ir.Reals(oshape)
            cls, scale = RealsVal, 1.0
        else:
            oty, cls, scale = terminal_type(node, term, oshape)
            self.graph.tensors[conv.outputs[0]] = oty
        out = cls(v.shape, [], tensor=conv.outputs[0], scale=scale)
        for params, _ in v.pools:
            out = self.emit_maxpool(params, out)
        return replace(out, shape=v.shape)  # the pooled value as the model reshaped it (unit axes)

    def finish(self, conv) -> None:
        """Mark the layer `conv` as having its epilogue (set next), keeping its own ONNX nodes."""
        self.finished[conv.name] = list(conv.source_ops)
        self.planes.setdefault(conv.outputs[0], ((conv.name,), 0))

    def _copy_layer(self, conv):
        """A copy of the finished layer `conv` (same inputs, weights, geometry) for another activation
        of its accumulator (ABC-Net / PaBT activation bases): plane k of `conv`, named after it
        (passes/merge_activation_planes makes the planes of bit activations one layer again)."""
        k = self.copies[conv.name] = self.copies.get(conv.name, 0) + 1
        plane = deepcopy(conv)
        plane.name = f"{conv.name}_plane{k}"
        plane.outputs = [plane.name + "_out"]
        plane.source_ops = list(self.finished[conv.name])
        self.graph.add(plane, {plane.outputs[0]: self.graph.tensors[conv.outputs[0]]})
        self.planes[plane.outputs[0]] = ((conv.name,), k)
        return plane

    def emit_maxpool(self, params, v: Val) -> Val:
        """An IR MaxPool of the Bits / Ints tensor `v`. Of an activation-base plane k of a layer
        whose plane j already has a MaxPool `P` of that window, it is named `P_planek` (the pools
        merge_activation_planes makes one keep the first one's name)."""
        kernel, stride, pads, (oh, ow), src = params
        group, k = self.planes.get(v.tensor, ((v.tensor,), 0))
        group = group + ((tuple(kernel), tuple(stride), tuple(pads)),)
        pooled = self.plane_pools.setdefault(group, {})
        name = f"{next(iter(pooled.values()))}_plane{k}" if pooled and k not in pooled else self.new_name("maxpool")
        pooled.setdefault(k, name)
        tname = name + "_out"
        ty = self.graph.tensors[v.tensor]
        oty = ir.Bits((oh, ow, ty.shape[2]), ty.scale) if isinstance(ty, ir.Bits) else \
            ir.Ints((oh, ow, ty.shape[2]), ty.lo, ty.hi, ty.scale)
        self.graph.add(ir.MaxPool(name, [v.tensor], [tname], kernel, stride, pads), {tname: oty})
        self.planes[tname] = (group, k)
        return type(v)((1, v.shape[1], oh, ow), tensor=tname, scale=v.scale)


# ----------------------------------------------------------------------------- shared helpers


def bit_scale(node, term) -> float:
    """The +-scale of a bit activation's values."""
    if isinstance(term, ir.SignTerminal):
        return term.out_scale
    t = term.thresholds
    if t.shape[1] != 1:
        raise BnncError(f"{where(node)}: a {t.shape[1]}-step MultiThreshold (multi-bit activation) on the model "
                        "input is not supported; quantize the input with Quant / QuantizeLinear (multi-bit "
                        "activations inside the network are supported)")
    lo, hi = term.out_bias, term.out_bias + term.out_scale
    if not (lo == -hi and hi > 0):
        raise BnncError(f"{where(node)}: MultiThreshold outputs {{{lo}, {hi}}} are not bipolar (+-s); "
                        "unipolar activations are not supported")
    return hi


def terminal_type(node, term, shape: tuple) -> tuple:
    """(IR tensor type, value class, scale) of an activation's output."""
    if isinstance(term, ir.LevelTerminal):
        b = term.thresholds.shape[1]
        return ir.Ints(shape, term.base, term.base + term.step * b, term.out_scale), IntsVal, term.out_scale
    if isinstance(term, ir.RoundClampTerminal):
        lo, hi = term.qmin - term.zero_point, term.qmax - term.zero_point
        return ir.Ints(shape, lo, hi, term.out_scale), IntsVal, term.out_scale
    scale = bit_scale(node, term)
    return ir.Bits(shape, scale), BitsVal, scale


def conv_pads(node, hw, kernel, stride, auto_pad="NOTSET", pads=None) -> tuple:
    """(top, left, bottom, right) padding of a window op (Conv, MaxPool, AveragePool)."""
    if auto_pad in ("NOTSET", ""):
        p = list(pads if pads is not None else [0, 0, 0, 0])
        if len(p) != 4 or any(x < 0 for x in p):
            raise BnncError(f"{where(node)}: pads {p} are not supported")
        if any(p[i] >= kernel[i % 2] for i in range(4)):
            raise BnncError(f"{where(node)}: padding {p} as large as the kernel {kernel} is not supported")
        return tuple(p)
    if auto_pad == "VALID":
        return (0, 0, 0, 0)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = []
        for i in range(2):
            o = -(-hw[i] // stride[i])
            total = max(0, (o - 1) * stride[i] + kernel[i] - hw[i])
            small, big = total // 2, total - total // 2
            out.append((small, big) if auto_pad == "SAME_UPPER" else (big, small))
        return (out[0][0], out[1][0], out[0][1], out[1][1])
    raise BnncError(f"{where(node)}: auto_pad '{auto_pad}' is not supported")


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
