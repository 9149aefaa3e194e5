"""Layout transposes of activations moved down the graph until they cancel (tf2onnx's NHWC form).

tf2onnx writes a TensorFlow (NHWC) network as NCHW convolutions with a Transpose before and
after each, and runs everything between convolutions on NHWC tensors with constants broadcast on
the last axis; where H = W = 1 it writes those Transposes as Reshapes. The rewrite:

1. turns a Reshape that only moves size-1 axes of a 4-D tensor ((N, C, 1, 1) <-> (N, 1, 1, C))
   into the equivalent Transpose;
2. moves every Transpose y = Transpose(x, P) of an activation below each reader that commutes with
   it: f(Transpose(x, P)) = Transpose(f'(x), P), where f' is f with
   * elementwise ops (Relu, Sign, Abs, Neg, Cast, Clip, Add, Sub, Mul, Div, Where, Less, ..., QONNX
     BipolarQuant / Quant with scalar parameters): every other operand is a constant, permuted by
     the inverse of P after broadcasting it to full rank (single-element constants as they are), or
     the output of a Transpose with the same P, whose input is read instead, or an activation
     that the inverse of P moves only size-1 axes of (a per-channel vector (N, 1, 1, C) gating an
     NHWC feature map), read through a Reshape to the permuted shape instead (the same bytes);
   * Pad: the pads of axis i go to axis P[i] (constant mode);
   * Concat: axis a becomes P[a] (every operand transposed by P, or constant);
   * Split: axis a becomes P[a], and every part gets its own Transpose by P;
   * ReduceMax / ReduceMin with keepdims: each axis a becomes P[a] (not the summing reductions:
     onnxruntime adds in memory order, which the layout changes);
   * Softmax / LogSoftmax (opset 13+, one axis): axis a becomes P[a];
   * Transpose(., Q): the two compose to one Transpose with perm P[Q[i]], removed when that is the
     identity;
   * Reshape / Flatten, when P moves only size-1 axes (the bytes are in the same order either way)
     and the Reshape's target has no 0 entry beyond the batch axis: the Reshape reads x directly;
3. replaces each remaining Transpose that moves only size-1 axes by a Reshape to its output shape
   (batch axis copied with 0).

Before step 2, a Transpose that a chain of elementwise ops with single constants computes from a
model input (a quantizer or a sign of the NHWC input, then tf2onnx's layout Transpose) moves up to
the input, above the chain, and is not moved down again: the frontend reads an NHWC input
through it.

Preserves exactly: every step only moves elements (or reads the same elements in the same order);
no arithmetic changes operands or order, so the outputs are bit-identical.

A Transpose that reaches a reader that does not commute with it (a convolution, a pool, the
model's output) stays: for an NHWC model that is the one Transpose right after the input.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..original import static_shapes
from .graph_edit import (Names, add_initializer, attrs, constant_values, consumers, copy_model, default_opset,
                         drop_unused, graph_outputs, is_standard, producers, rename_input, set_attr)

UNARY = {"Relu", "Sign", "Abs", "Neg", "Cast", "Sigmoid", "Tanh", "Floor", "Ceil", "Round", "Not", "Identity",
         "Exp", "Log", "Sqrt", "Reciprocal", "Erf", "Softsign", "Softplus", "Elu", "LeakyRelu", "HardSigmoid",
         "Selu", "IsNaN", "IsInf", "Clip", "Dropout"}
BROADCAST = {"Add", "Sub", "Mul", "Div", "Pow", "Less", "LessOrEqual", "Greater", "GreaterOrEqual", "Equal",
             "Where", "Min", "Max", "And", "Or", "Xor", "Mod", "PRelu", "BitShift", "Sum", "Mean"}
CUSTOM_ELEMENTWISE = {"BipolarQuant", "Quant"}  # QONNX quantizers with scalar parameters
# only the reductions that do not sum: a sum over other axes of another layout changes its order
REDUCE = {"ReduceMax", "ReduceMin"}


def _inverse(perm):
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return inv


def moves_only_unit_axes(perm, shape) -> bool:
    """True when the Transpose keeps the order of every axis longer than 1 (the bytes do not move)."""
    if shape is None or len(shape) != len(perm):
        return False
    big = [p for p in perm if shape[p] != 1]
    return big == sorted(big)


class _Sinker:
    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.g = model.graph
        self.values = constant_values(self.g)
        self.names = Names(self.g)
        self.shapes = static_shapes(model)
        self.opset = default_opset(model)
        self.outputs = graph_outputs(self.g)
        self.inputs = {i.name for i in self.g.input} - set(self.values)
        self.hoisted = set()  # names of the Transposes hoist_to_inputs keeps after a model input or a Reshape

    # -------------------------------------------------------------- reshapes that are transposes
    def reshapes_to_transposes(self):
        for n in list(self.g.node):
            if n.op_type != "Reshape" or not is_standard(n) or n.input[1] not in self.values:
                continue
            shape = self.shapes.get(n.input[0])
            if shape is None or len(shape) != 4 or any(d is None for d in shape[1:]):
                continue
            target = [int(t) for t in np.asarray(self.values[n.input[1]]).reshape(-1)]
            if len(target) != 4 or any(t == 0 for t in target[1:]):
                continue
            for perm in ([0, 2, 3, 1], [0, 3, 1, 2]):
                moved = [shape[p] for p in perm]
                if not moves_only_unit_axes(perm, shape):
                    continue
                if all(t == m or (i == 0 and t in (-1, 0)) for i, (t, m) in enumerate(zip(target, moved))):
                    self._replace(n, helper.make_node("Transpose", [n.input[0]], [n.output[0]],
                                                      name=n.name, perm=perm))
                    self.shapes[n.output[0]] = tuple(moved)
                    break

    def _replace(self, old, new):
        idx = list(self.g.node).index(old)
        self.g.node.remove(old)
        self.g.node.insert(idx, new)

    # -------------------------------------------------------------- sinking
    def _transpose_perm(self, tensor):
        n = self.producers.get(tensor)
        if n is not None and n.op_type == "Transpose" and is_standard(n) and n.input[0] not in self.values:
            return n, list(attrs(n)["perm"])
        return None, None

    def _operands(self, node, t_out, perm):
        """New inputs of `node` when the Transpose producing `t_out` moves below it, or None."""
        new = []
        ops = list(node.input)
        if node.op_type in UNARY:
            rest = ops[1:]
            if any(r and (r not in self.values or np.asarray(self.values[r]).size != 1) for r in rest):
                return None
            return [None] + rest  # None: the transpose's input
        rank = len(perm)
        for i in ops:
            if not i:
                new.append(i)
            elif i == t_out:
                new.append(None)
            elif i in self.values:
                v = np.asarray(self.values[i])
                if v.size == 1 or node.op_type in CUSTOM_ELEMENTWISE:
                    if v.size != 1:
                        return None
                    new.append(i)
                else:
                    if v.ndim > rank:
                        return None
                    full = v.reshape((1,) * (rank - v.ndim) + v.shape)
                    new.append(("const", np.ascontiguousarray(np.transpose(full, _inverse(perm)))))
            else:
                other, operm = self._transpose_perm(i)
                if other is not None and operm == perm:
                    new.append(("input", other.input[0]))
                    continue
                # an activation whose inverse permutation moves only size-1 axes (a per-channel
                # vector reshaped to (N, 1, 1, C)): the same bytes reshaped to the transposed shape
                inv, s = _inverse(perm), self.shapes.get(i)
                if other is not None or not moves_only_unit_axes(inv, s) or inv[0] != 0 \
                        or any(d is None for d in s[1:]):
                    return None
                new.append(("reshape", i, [0] + [int(s[j]) for j in inv[1:]]))
        return new

    def _push(self, t, reader) -> bool:
        """Move Transpose `t` below `reader`; False when they do not commute."""
        perm = list(attrs(t)["perm"])
        x, y = t.input[0], t.output[0]
        op = reader.op_type
        if reader.output and any(o in self.outputs for o in reader.output[1:] if o):
            return False
        a = attrs(reader)
        if op == "Split" and is_standard(reader):
            return self._push_split(t, reader, perm, a)
        if op == "Transpose" and is_standard(reader):
            q = list(a["perm"])
            composed = [perm[i] for i in q]
            if composed == list(range(len(composed))):
                if reader.output[0] in self.outputs:
                    return False
                rename_input(self.g, reader.output[0], x)
                self.g.node.remove(reader)
            else:
                self._replace(reader, helper.make_node("Transpose", [x], [reader.output[0]], name=reader.name,
                                                       perm=composed))
            return True
        if op in ("Reshape", "Flatten") and is_standard(reader):
            if not moves_only_unit_axes(perm, self.shapes.get(x)):
                return False
            if op == "Reshape":
                target = self.values.get(reader.input[1])
                if target is None or any(int(v) == 0 for v in np.asarray(target).reshape(-1)[1:]):
                    return False
            reader.input[0] = x
            return True
        if not is_standard(reader):
            if reader.domain == "" or op not in CUSTOM_ELEMENTWISE:
                return False
        kind = None
        if op in UNARY or op in BROADCAST or op in CUSTOM_ELEMENTWISE:
            kind = "elementwise"
        elif op == "Pad" and a.get("mode", b"constant") in (b"constant", "constant"):
            kind = "pad"
        elif op == "Concat":
            kind = "concat"
        elif op in REDUCE and a.get("keepdims", 1) == 1:
            kind = "reduce"
        elif op in ("Softmax", "LogSoftmax") and self.opset >= 13:
            kind = "softmax"
        if kind is None:
            return False
        if op == "Dropout" and len(reader.output) > 1 and reader.output[1]:
            return False
        new_inputs = list(reader.input)
        if kind in ("elementwise", "concat"):
            ops = self._operands(reader, y, perm)
            if ops is None:
                return False
            new_inputs = []
            for orig, o in zip(reader.input, ops):
                if o is None:
                    new_inputs.append(x)
                elif isinstance(o, tuple) and o[0] == "const":
                    new_inputs.append(add_initializer(self.g, self.names, o[1], orig or "c"))
                elif isinstance(o, tuple) and o[0] == "reshape":
                    target = add_initializer(self.g, self.names, np.array(o[2], np.int64), "shape")
                    moved_operand = self.names.fresh(o[1].split("/")[-1] or "t")
                    source = self.producers.get(o[1])  # a reshape of a reshape reads the first's input
                    source = source.input[0] if source is not None and source.op_type == "Reshape" \
                        and is_standard(source) else o[1]
                    self.g.node.insert(list(self.g.node).index(reader), helper.make_node(
                        "Reshape", [source, target], [moved_operand], name=self.names.fresh("Reshape")))
                    self.shapes[moved_operand] = tuple(self.shapes[o[1]][j] for j in _inverse(perm))
                    new_inputs.append(moved_operand)
                elif isinstance(o, tuple):
                    new_inputs.append(o[1])
                else:
                    new_inputs.append(o)
            if kind == "concat":
                set_attr(reader, "axis", perm[a.get("axis", 0) % len(perm)])
        else:
            if any(i == y for i in reader.input[1:]):
                return False
            new_inputs[0] = x
            if kind == "pad":
                if len(reader.input) > 3 and reader.input[3]:
                    return False  # explicit axes: rare
                if self.opset >= 11:
                    pads = self.values.get(reader.input[1])
                    if pads is None:
                        return False
                    pads = [int(v) for v in np.asarray(pads).reshape(-1)]
                else:
                    pads = list(a["pads"])
                r = len(perm)
                new = [0] * (2 * r)
                for i in range(r):
                    new[perm[i]] = pads[i]
                    new[r + perm[i]] = pads[r + i]
                if self.opset >= 11:
                    new_inputs[1] = add_initializer(self.g, self.names, np.array(new, np.int64), "pads")
                else:
                    set_attr(reader, "pads", new)
            elif kind == "reduce":
                if len(reader.input) > 1 and reader.input[1]:
                    axes = self.values.get(reader.input[1])
                    if axes is None:
                        return False
                    new_axes = [perm[int(v) % len(perm)] for v in np.asarray(axes).reshape(-1)]
                    new_inputs[1] = add_initializer(self.g, self.names, np.array(new_axes, np.int64), "axes")
                elif "axes" in a:
                    set_attr(reader, "axes", [perm[int(v) % len(perm)] for v in a["axes"]])
                # no axes: reduces everything, the same either way
            elif kind == "softmax":
                set_attr(reader, "axis", perm[a.get("axis", -1) % len(perm)])
        out = reader.output[0]
        moved = self.names.fresh(out.split("/")[-1] or "t")
        del reader.input[:]
        reader.input.extend(new_inputs)
        reader.output[0] = moved
        idx = list(self.g.node).index(reader)
        self.g.node.insert(idx + 1, helper.make_node("Transpose", [moved], [out], name=self.names.fresh("Transpose"),
                                                     perm=perm))
        s = self.shapes.get(out)
        if s is not None and len(s) == len(perm):
            self.shapes[moved] = tuple(s[i] for i in _inverse(perm))
        return True

    def _push_split(self, t, split, perm, a) -> bool:
        """Move Transpose `t` below `split`: the split axis a becomes P[a], and each part is
        transposed by P (the parts' sizes are the same either way)."""
        x = t.input[0]
        if any(i == t.output[0] for i in split.input[1:]):
            return False
        set_attr(split, "axis", perm[a.get("axis", 0) % len(perm)])
        split.input[0] = x
        idx = list(self.g.node).index(split)
        for k, out in enumerate(split.output):
            if not out:
                continue
            moved = self.names.fresh(out.split("/")[-1] or "t")
            split.output[k] = moved
            self.g.node.insert(idx + 1, helper.make_node("Transpose", [moved], [out],
                                                         name=self.names.fresh("Transpose"), perm=perm))
            s = self.shapes.get(out)
            if s is not None and len(s) == len(perm):
                self.shapes[moved] = tuple(s[i] for i in _inverse(perm))
        return True

    def sink(self):
        for _ in range(10000):  # each push moves a transpose strictly down a DAG: this ends
            self.producers = producers(self.g)
            readers = consumers(self.g)
            pushed = False
            for t in list(self.g.node):
                if t.op_type != "Transpose" or not is_standard(t) or t.input[0] in self.values:
                    continue
                if t.output[0] in self.outputs or t.name in self.hoisted:
                    continue  # a Transpose moved up to a model input stays where the frontend reads it
                for r in readers.get(t.output[0], []):
                    if self._push(t, r):
                        pushed = True
                        break
                if pushed:
                    break
            if not pushed:
                return
            drop_unused(self.model)

    # -------------------------------------------------------------- hoisting to the model input
    def hoist_to_inputs(self):
        """A Transpose whose input a chain of elementwise ops computes from a model input (a
        quantizer or sign applied to an NHWC input before tf2onnx's layout Transpose; scalar
        constants) or from a vector reshaped into a map (Keras's Dense -> Reshape((H, W, C)) ->
        BatchNormalization; constants broadcast along the map's axes, transposed with it) moves
        above the chain, to right after the input or the Reshape, and stays there: the chain then
        runs on the transposed elements, the same values in another order."""
        prods, readers = producers(self.g), consumers(self.g)
        inputs = self.inputs
        for t in list(self.g.node):
            if t.op_type != "Transpose" or not is_standard(t) or t.input[0] in self.values or t.name in self.hoisted:
                continue
            chain, cur = [], t.input[0]
            while cur not in inputs and not self._map_of_vector(cur, prods):
                n = prods.get(cur)
                rs = readers.get(cur, [])
                if n is None or len(rs) != 1 or cur in self.outputs or not self._scalar_elementwise(n, per_axis=True):
                    break
                chain.append(n)
                cur = next(i for i in n.input if i and i not in self.values)
            from_map = self._map_of_vector(cur, prods)
            if cur not in inputs and not from_map or len(readers.get(cur, [])) != 1:
                continue
            if not from_map and not all(self._scalar_elementwise(n) for n in chain):
                continue
            if not chain:
                if from_map:
                    self.hoisted.add(t.name)  # right after the Reshape already: kept there
                continue
            perm = list(attrs(t)["perm"])
            moved = self.names.fresh(cur.split("/")[-1] or "input")
            first = chain[-1]
            first.input[list(first.input).index(cur)] = moved
            hoisted = helper.make_node("Transpose", [cur], [moved], name=self.names.fresh("Transpose"), perm=perm)
            self.g.node.insert(list(self.g.node).index(first), hoisted)
            self.hoisted.add(hoisted.name)
            rename_input(self.g, t.output[0], t.input[0])
            self.g.node.remove(t)
            for n in chain:  # their shapes are the transposed ones now, and so are their constants
                s = self.shapes.get(n.output[0])
                self.shapes[n.output[0]] = None if s is None else tuple(s[p] for p in perm)
                for k, i in enumerate(n.input):
                    if i in self.values and np.size(self.values[i]) > 1:
                        v = np.asarray(self.values[i])
                        v = v.reshape((1,) * (len(perm) - v.ndim) + v.shape).transpose(perm)
                        n.input[k] = add_initializer(self.g, self.names, v, i)
                        self.values[n.input[k]] = v
            keep = {n.output[0] for n in chain}
            vi = [v for v in self.g.value_info if v.name not in keep]
            del self.g.value_info[:]
            self.g.value_info.extend(vi)
            return self.hoist_to_inputs()

    def _map_of_vector(self, tensor, prods) -> bool:
        """Whether `tensor` is a Reshape of an (N, D) vector into a 4-D map of more than one pixel."""
        n = prods.get(tensor)
        src, out = (None, None) if n is None else (self.shapes.get(n.input[0]), self.shapes.get(tensor))
        return n is not None and n.op_type == "Reshape" and is_standard(n) and src is not None and len(src) == 2 \
            and out is not None and len(out) == 4 and sum(d != 1 for d in out[1:]) >= 2

    def _scalar_elementwise(self, n, per_axis: bool = False) -> bool:
        """An elementwise node of one activation whose other operands are single constants (with
        `per_axis`: constants of rank at most 4, broadcast along the map's axes)."""
        if not (is_standard(n) and (n.op_type in UNARY or n.op_type in BROADCAST)) and \
                not (n.domain != "" and n.op_type in CUSTOM_ELEMENTWISE):
            return False
        dynamic = [i for i in n.input if i and i not in self.values]
        consts = [np.asarray(self.values[i]) for i in n.input if i and i in self.values]
        return len(dynamic) == 1 and len(n.output) == 1 and \
            all(v.size == 1 or (per_axis and v.ndim <= 4 and n.op_type in BROADCAST) for v in consts)

    # -------------------------------------------------------------- leftovers
    def unit_transposes_to_reshapes(self):
        for n in list(self.g.node):
            if n.op_type != "Transpose" or not is_standard(n) or n.input[0] in self.values:
                continue
            perm, shape = list(attrs(n)["perm"]), self.shapes.get(n.input[0])
            if not moves_only_unit_axes(perm, shape) or any(d is None for d in shape[1:]):
                continue
            target = [0] + [shape[p] for p in perm[1:]] if perm[0] == 0 else None
            if target is None:
                continue
            t = add_initializer(self.g, self.names, np.array(target, np.int64), "shape")
            self._replace(n, helper.make_node("Reshape", [n.input[0], t], [n.output[0]], name=n.name))


def sink_layout_transposes(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    s = _Sinker(out)
    s.reshapes_to_transposes()
    s.hoist_to_inputs()
    s.sink()
    s.unit_transposes_to_reshapes()
    drop_unused(out)
    return out
