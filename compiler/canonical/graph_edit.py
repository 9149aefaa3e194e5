"""Small helpers the canonical rewrites share: constant values, producers and consumers, fresh
names, and removing a node that passes its input through unchanged."""

from __future__ import annotations

import json
import math
from collections.abc import MutableMapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..original import unique_name

STANDARD_DOMAINS = ("", "ai.onnx")
QONNX_DOMAIN = "qonnx.custom_op.general"
# model metadata: {node name: R}, the rewritten straight-through forms that equal the model's values
# only where |x| < R (canonical/ste_sign.py), by the nodes of the function they were read as
STE_EXACT_BELOW = "bnnc.ste_exact_below"


def copy_model(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in STANDARD_DOMAINS), 0)


def attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def set_attr(node: onnx.NodeProto, name: str, value) -> None:
    keep = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend(keep)
    node.attribute.append(helper.make_attribute(name, value))


def is_standard(node: onnx.NodeProto) -> bool:
    return node.domain in STANDARD_DOMAINS


class ConstantValues(MutableMapping):
    """name -> numpy value of a graph's initializers and standard Constant nodes' outputs; an
    initializer is converted when first read. Most rewrites only ask which inputs are constant, and
    converting every weight in each of them took seconds on large models. The rewrites replace
    initializers, never change one in place, so a value read late is the value the graph had."""

    def __init__(self, graph: onnx.GraphProto):
        self._protos = {t.name: t for t in graph.initializer}
        self._values = {}
        for n in graph.node:
            if n.op_type == "Constant" and is_standard(n):
                v = constant_node_value(n)
                if v is not None:
                    self[n.output[0]] = v

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._protos:
            self._values[name] = numpy_helper.to_array(self._protos.pop(name))
        return self._values[name]

    def __setitem__(self, name: str, value) -> None:
        self._protos.pop(name, None)
        self._values[name] = value

    def __delitem__(self, name: str) -> None:
        if self._protos.pop(name, None) is None:
            del self._values[name]

    def __contains__(self, name) -> bool:
        return name in self._protos or name in self._values

    def __iter__(self):
        return iter(list(self._protos) + list(self._values))

    def __len__(self) -> int:
        return len(self._protos) + len(self._values)


def constant_values(graph: onnx.GraphProto) -> ConstantValues:
    """name -> numpy value of every initializer and every standard Constant node's output (read
    when first asked for)."""
    return ConstantValues(graph)


def constant_node_value(node: onnx.NodeProto):
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if a.name == "value":
            return numpy_helper.to_array(v)
        if a.name == "value_float":
            return np.array(v, np.float32)
        if a.name == "value_floats":
            return np.array(v, np.float32)
        if a.name == "value_int":
            return np.array(v, np.int64)
        if a.name == "value_ints":
            return np.array(v, np.int64)
    return None  # sparse or string constants: left alone


def consumers(graph: onnx.GraphProto) -> dict:
    """tensor name -> list of nodes reading it."""
    out: dict = {}
    for n in graph.node:
        for i in n.input:
            if i:
                out.setdefault(i, []).append(n)
    return out


def producers(graph: onnx.GraphProto) -> dict:
    return {o: n for n in graph.node for o in n.output if o}


def graph_outputs(graph: onnx.GraphProto) -> set:
    return {o.name for o in graph.output}


class Names:
    """Fresh tensor / node names that clash with nothing in the graph."""

    def __init__(self, graph: onnx.GraphProto):
        self.taken = {t.name for t in graph.initializer} | {i.name for i in graph.input}
        for n in graph.node:
            self.taken.update(n.output)
            self.taken.update(n.input)
            self.taken.add(n.name)

    def fresh(self, hint: str) -> str:
        return unique_name(self.taken, f"{hint}__canon")


def sole_reader(readers: dict, outs: set, tensor: str):
    """The one node that reads `tensor` (`readers` from `consumers`), where no other node reads it
    and it is no graph output (`outs`); else None."""
    rs = readers.get(tensor, [])
    return rs[0] if len(rs) == 1 and tensor not in outs else None


def reshape_transpose_reshape(graph: onnx.GraphProto, values: dict) -> list:
    """[(first, transpose, last)]: the Reshape -> Transpose -> Reshape chains of the graph on a
    dynamic tensor whose inner tensors are each read only by the next node and are no graph
    outputs (how exporters write moves of elements through 5-D and 6-D shapes)."""
    readers, outs = consumers(graph), graph_outputs(graph)
    found = []
    for first in graph.node:
        if first.op_type != "Reshape" or not is_standard(first) or len(first.input) < 2 or first.input[0] in values:
            continue
        trans = sole_reader(readers, outs, first.output[0])
        if trans is None or trans.op_type != "Transpose" or not is_standard(trans):
            continue
        last = sole_reader(readers, outs, trans.output[0])
        if last is not None and last.op_type == "Reshape" and is_standard(last):
            found.append((first, trans, last))
    return found


def replace_node(graph: onnx.GraphProto, old: onnx.NodeProto, new: onnx.NodeProto) -> None:
    """Put `new` where `old` was in the graph's node list."""
    replace_nodes(graph, [old], [new])


def replace_nodes(graph: onnx.GraphProto, old: list, new: list) -> None:
    """Remove the nodes `old` and put `new`, in order, where the first of them was."""
    idx = list(graph.node).index(old[0])
    for n in old:
        graph.node.remove(n)
    for i, n in enumerate(new):
        graph.node.insert(idx + i, n)


def add_initializer(graph: onnx.GraphProto, names: Names, value: np.ndarray, hint: str) -> str:
    name = names.fresh(hint)
    graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def rename_input(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Every node that reads `old` reads `new` instead."""
    for n in graph.node:
        for k, i in enumerate(n.input):
            if i == old:
                n.input[k] = new


def bypass(graph: onnx.GraphProto, node: onnx.NodeProto) -> bool:
    """Remove `node`, whose first output equals its first input, wiring its readers to the input.
    When the output is a graph output, the producer of the input is renamed instead (the
    model's interface keeps its names); False when neither is possible."""
    src, dst = node.input[0], node.output[0]
    outs = graph_outputs(graph)
    if dst in outs:
        prods = producers(graph)
        if src not in prods or src in outs or any(i.name == src for i in graph.input):
            return False
        p = prods[src]
        p.output[list(p.output).index(src)] = dst
        rename_input(graph, src, dst)
    else:
        rename_input(graph, dst, src)
    graph.node.remove(node)
    return True


def drop_unused(model: onnx.ModelProto) -> None:
    """Remove nodes whose outputs nobody reads and initializers nobody reads (dead after a rewrite)."""
    g = model.graph
    producers_of: dict = {}  # every writer of a tensor (a malformed graph may have two: validation says so)
    for n in g.node:
        for o in n.output:
            if o:
                producers_of.setdefault(o, []).append(n)
    live_ids, work = set(), [p for t in graph_outputs(g) for p in producers_of.get(t, [])]
    while work:  # nodes the graph outputs depend on, one walk back (linear in the graph)
        n = work.pop()
        if id(n) in live_ids:
            continue
        live_ids.add(id(n))
        work.extend(p for t in n.input for p in producers_of.get(t, []))
    if len(live_ids) != len(g.node):
        kept = [n for n in g.node if id(n) in live_ids]
        del g.node[:]
        g.node.extend(kept)
    used = {i for n in g.node for i in n.input} | graph_outputs(g)
    before = {t.name for t in g.initializer}
    keep = [t for t in g.initializer if t.name in used]
    if len(keep) != len(g.initializer):
        del g.initializer[:]
        g.initializer.extend(keep)
        # initializers that old IR versions also list as graph inputs go with them
        kept = {t.name for t in keep}
        inputs = [i for i in g.input if i.name not in before or i.name in kept]
        del g.input[:]
        g.input.extend(inputs)


def onnxruntime_session(model: onnx.ModelProto):
    """An onnxruntime CPU session run as `original.OriginalModel` runs the original: one thread, no
    graph optimizations, so the float arithmetic is the node-by-node arithmetic of the model."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4  # (fatal only: a probe that onnxruntime refuses is handled by its caller)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def scalar_constant(values: dict, name: str, kinds: str = ""):
    """The 0-d numpy value of a one-element constant `name` (of a dtype kind in `kinds`, e.g. "f" or
    "iu"; any when empty), else None."""
    if not name or name not in values:
        return None
    v = np.asarray(values[name])
    if v.size != 1 or (kinds and v.dtype.kind not in kinds):
        return None
    return v.reshape(())


def scalar_operand(node: onnx.NodeProto, values: dict, op_type: str = ""):
    """(x, k) of a two-input node with a dynamic operand x and a one-element float constant k (0-d),
    in either order; None otherwise. With `op_type`: only of a standard node of that type (None
    for any other node, or none)."""
    if op_type and (node is None or node.op_type != op_type or not is_standard(node)):
        return None
    if len(node.input) != 2:
        return None
    for x, c in (tuple(node.input), tuple(reversed(node.input))):
        k = scalar_constant(values, c, "f")
        if k is not None and x not in values:
            return x, k
    return None


def quant_bit_range(lo: int, hi: int, signed: bool):
    """(bits, narrow) of QONNX's b-bit Quant range [lo, hi] (b <= 8; signed b >= 2: a 1-bit signed
    Quant is bipolar), else None."""
    for b in range(1, 9):
        if signed and b >= 2:
            if (lo, hi) == (-(2 ** (b - 1)), 2 ** (b - 1) - 1):
                return b, 0
            if (lo, hi) == (-(2 ** (b - 1)) + 1, 2 ** (b - 1) - 1):
                return b, 1
        if not signed:
            if (lo, hi) == (0, 2**b - 1):
                return b, 0
            if (lo, hi) == (0, 2**b - 2) and b >= 2:
                return b, 1
    return None


def use_qonnx_domain(model: onnx.ModelProto) -> None:
    """Import the QONNX custom-op domain (for a Quant / BipolarQuant a rewrite wrote)."""
    if not any(o.domain == QONNX_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(QONNX_DOMAIN, 1))


def replace_with_quant(graph: onnx.GraphProto, names: Names, node: onnx.NodeProto, x: str, scale: float,
                       bits: int, signed: bool, narrow: int) -> None:
    """Put a QONNX `Quant(x, scale, 0, bits; signed, narrow, ROUND)` writing `node`'s first output
    where `node` was (the caller imports the domain: use_qonnx_domain)."""
    s = add_initializer(graph, names, np.float32(scale), "quant_scale")
    zero = add_initializer(graph, names, np.float32(0.0), "quant_zero_point")
    width = add_initializer(graph, names, np.float32(bits), "quant_bit_width")
    replace_node(graph, node, helper.make_node("Quant", [x, s, zero, width], [node.output[0]],
                                               name=node.name or names.fresh("Quant"), domain=QONNX_DOMAIN,
                                               signed=int(signed), narrow=narrow, rounding_mode="ROUND"))


def ste_exact_below(model: onnx.ModelProto) -> dict:
    """{node name: R} recorded by canonical/ste_sign.py (STE_EXACT_BELOW); {} if none."""
    for kv in model.metadata_props:
        if kv.key == STE_EXACT_BELOW:
            try:
                table = json.loads(kv.value)
                return {str(k): float(v) for k, v in table.items()} if isinstance(table, dict) else {}
            except (ValueError, TypeError, AttributeError):
                return {}
    return {}


def set_ste_exact_below(model: onnx.ModelProto, table: dict) -> None:
    """Record `table` ({node name: R}, finite R only) under STE_EXACT_BELOW."""
    keep = [kv for kv in model.metadata_props if kv.key != STE_EXACT_BELOW]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    table = {k: v for k, v in sorted(table.items()) if math.isfinite(v)}
    if table:
        model.metadata_props.add(key=STE_EXACT_BELOW, value=json.dumps(table))


def node_axes(node: onnx.NodeProto, values: dict):
    """The axes of a Squeeze / Unsqueeze / Reduce node (its `axes` attribute, or its constant second
    input from opset 13 / 18 on); None where it has none (all axes) or they are not constant."""
    if len(node.input) > 1 and node.input[1]:
        v = values.get(node.input[1])
        return None if v is None else [int(x) for x in np.asarray(v).reshape(-1)]
    a = attrs(node).get("axes")
    return None if a is None else [int(x) for x in a]


def axes_node(op_type: str, x: str, y: str, axes: list, graph: onnx.GraphProto, names: Names, opset: int):
    """A new Squeeze or Unsqueeze node of `axes`, in the form the opset reads (an input from 13 on)."""
    if opset >= 13:
        a = add_initializer(graph, names, np.array(axes, np.int64), "axes")
        return helper.make_node(op_type, [x, a], [y], name=names.fresh(op_type))
    return helper.make_node(op_type, [x], [y], name=names.fresh(op_type), axes=list(axes))

