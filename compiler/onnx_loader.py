"""Read an ONNX file into plain Python: validated nodes, constants as numpy arrays, folded.

Real files come from PyTorch, Brevitas (QONNX) and FINN: old IR versions, initializers listed as
graph inputs, Constant nodes, flatten subgraphs built from Shape/Gather/Concat, weights stored as
latent floats behind BipolarQuant/Quant/Transpose. Everything that depends only on constants (and
on the static input shape) is evaluated here with numpy, so the lowering sees only the dynamic
dataflow with constant operands.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from .canonical.external_data import load_external_data
from .canonical.graph_edit import copy_model, ste_exact_below
from .errors import BnncError, one_line
from .userfiles import read_bytes

CUSTOM_DOMAINS = ("onnx.brevitas", "qonnx.custom_op.general", "finn.custom_op.general", "finn")
STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass
class Node:
    name: str
    op: str
    domain: str
    inputs: list
    outputs: list
    attrs: dict


@dataclass
class LoadedModel:
    input_name: str
    input_shape: tuple  # with batch, as declared
    input_dtype: str  # numpy dtype name
    input_datatype: str  # FINN annotation (e.g. "UINT8") or ""
    output_name: str
    nodes: list  # dynamic nodes in topological order
    consts: dict = field(default_factory=dict)  # tensor name -> np.ndarray
    opset: int = 0
    # tensor name -> (integers, scale) for constants a quantizer produced (DequantizeLinear,
    # QONNX Quant): value == integers * scale, both arrays of the tensor's full shape. Weight
    # decoding uses the integers, the model's own exact form of a quantized layer.
    quant_origin: dict = field(default_factory=dict)
    # node name -> R: a straight-through form x + (f(x) - x) read as f(x), exact where |x| < R, by
    # the nodes of f (canonical/ste_sign.py); the terminal f ends in carries it
    ste_exact_below: dict = field(default_factory=dict)


def _attrs(node) -> dict:
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [x.decode("utf-8", "replace") for x in v]
        out[a.name] = v
    return out


def read_model(path) -> onnx.ModelProto:
    """Parse `path`, turning every way a file can be broken into a BnncError."""
    data = read_bytes(path, "model")
    try:
        model = onnx.load_model_from_string(data)
    except Exception as e:  # protobuf raises several types for garbage
        raise BnncError(f"'{path}' is not an ONNX model (protobuf parse failed: {type(e).__name__})") from None
    if not model.graph.node:
        raise BnncError(f"'{path}' holds no ONNX graph nodes")
    # tensors kept in external files are read from the model's own folder: the model stays
    # self-contained, so `bnnc verify` runs the same bytes in onnxruntime
    return load_external_data(model, Path(path).parent)


def _np_dtype(elem_type: int) -> str:
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:
        return "unknown"


def check_graph(model: onnx.ModelProto) -> int:
    """The model's standard opset, after checking it and the graph's structure (tensor names
    defined once, attribute types): done on the file as read, before any rewrite, and again on
    the rewritten graph."""
    from . import validate  # (validate reads this module's op and domain tables)

    opset = 0
    for imp in model.opset_import:
        if imp.domain in STANDARD_DOMAINS:
            opset = imp.version
    if opset and not 7 <= opset <= 22:
        raise BnncError(f"opset {opset} is outside what bnnc reads (7-22)")
    validate.check_graph(model, opset)
    return opset


def load(model: onnx.ModelProto) -> LoadedModel:
    """Validate the graph's interface, fold constants, and compute static shapes."""
    from . import validate  # (validate reads this module's op and domain tables)

    g = model.graph
    opset = check_graph(model)
    consts = {}
    for init in g.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            raise BnncError(f"initializer '{init.name}' uses external data that was not read (read the model "
                            "with read_model, or canonicalize it with its folder)")
        try:
            consts[init.name] = numpy_helper.to_array(init)
        except Exception as e:
            raise BnncError(f"initializer '{init.name}' cannot be decoded: {e}") from None
    inputs = [i for i in g.input if i.name not in consts]
    if len(inputs) != 1:
        raise BnncError(f"bnnc compiles models with exactly one input; this one has {len(inputs)}: "
                        + ", ".join(i.name for i in inputs))
    if len(g.output) != 1:
        raise BnncError(f"bnnc compiles models with exactly one output; this one has {len(g.output)} ("
                        f"{', '.join(o.name for o in g.output)}): choose one with --model-output NAME")
    inp = inputs[0]
    tt = inp.type.tensor_type
    shape = []
    for i, d in enumerate(tt.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            shape.append(d.dim_value)
        elif i == 0:
            shape.append(1)  # symbolic batch: compile for one sample
        else:
            raise BnncError(f"input '{inp.name}' has a dynamic dimension {i} ('{d.dim_param}'); "
                            "bnnc needs static shapes: declare them with --input-shape N,C,H,W")
    if not shape or shape[0] != 1:
        raise BnncError(f"input '{inp.name}' has shape {shape}; bnnc compiles for a batch of 1")
    annotations = {}
    for qa in g.quantization_annotation:
        for kv in qa.quant_parameter_tensor_names:
            if kv.key == "finn_datatype":
                annotations[qa.tensor_name] = kv.value
    lm = LoadedModel(
        input_name=inp.name,
        input_shape=tuple(shape),
        input_dtype=_np_dtype(tt.elem_type),
        input_datatype=annotations.get(inp.name, ""),
        output_name=g.output[0].name,
        nodes=[],
        consts=consts,
        opset=opset,
        ste_exact_below=ste_exact_below(model),
    )
    known = set(consts) | {inp.name, ""}
    for i, n in enumerate(_topological(g.node, known)):
        node = Node(n.name or f"{n.op_type}_{i}", n.op_type, n.domain, list(n.input), list(n.output), _attrs(n))
        if node.op == "Constant":
            consts[node.outputs[0]] = _constant_value(node)
        else:
            lm.nodes.append(node)
    validate.check_loaded(lm, model)
    return lm


def with_input_shape(model: onnx.ModelProto, shape: tuple) -> onnx.ModelProto:
    """A copy of `model` whose input has the static `shape` (--input-shape), where the file leaves
    dimensions open (a dynamic batch, H and W of a fully convolutional export) or gives these:
    the shapes the file records for other tensors are dropped (shape inference finds them again
    from the input), and a shape the graph cannot take is refused."""
    m = copy_model(model)
    inits = {t.name for t in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise BnncError(f"bnnc compiles models with exactly one input; this one has {len(inputs)}")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != len(shape):
        raise BnncError(f"--input-shape {','.join(map(str, shape))} has {len(shape)} dimensions; input "
                        f"'{inputs[0].name}' has {len(dims)}")
    for i, (d, n) in enumerate(zip(dims, shape)):
        if d.HasField("dim_value") and d.dim_value > 0 and d.dim_value != n:
            raise BnncError(f"--input-shape {','.join(map(str, shape))}: dimension {i} of input "
                            f"'{inputs[0].name}' is {d.dim_value} in the model")
        d.Clear()
        d.dim_value = n
    del m.graph.value_info[:]
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    try:
        onnx.shape_inference.infer_shapes(m, strict_mode=True)
    except Exception as e:
        raise BnncError(f"--input-shape {','.join(map(str, shape))}: the model's shapes do not follow from it "
                        f"({one_line(str(e))[:200]})") from None
    return m


def with_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """A copy of `model` whose one output is the tensor `name` (--model-output: one of several model
    outputs, e.g. the logits beside a feature output, or a tensor inside the graph), with only the
    nodes it depends on."""
    m = copy_model(model)
    g = m.graph
    producer = {o: n for n in g.node for o in n.output if o}
    if name not in producer:
        outputs = ", ".join(o.name for o in g.output)
        raise BnncError(f"--model-output '{one_line(name)}' is no tensor a node of the model computes (its outputs: "
                        f"{one_line(outputs)})")
    need, stack = set(), [name]
    while stack:
        t = stack.pop()
        n = producer.get(t)
        if n is not None and id(n) not in need:
            need.add(id(n))
            stack.extend(x for x in n.input if x)
    keep = [n for n in g.node if id(n) in need]
    del g.node[:]
    g.node.extend(keep)
    info = next((v for v in list(g.output) + list(g.value_info) if v.name == name), None)
    del g.output[:]
    g.output.append(info if info is not None else onnx.ValueInfoProto(name=name))
    return m


def foldable(node: Node, consts: dict) -> bool:
    """True when every input of `node` is a known constant, so it can be evaluated now."""
    return node.op not in NOT_FOLDABLE and all((x == "" or x in consts) for x in node.inputs)


NOT_FOLDABLE = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}


def _topological(nodes, known: set) -> list:
    """The nodes in an order where every input is known or produced before it is read: the file's
    order where it already is one. Linear in the graph size (a hostile file may list thousands of
    nodes backwards)."""
    nodes = list(nodes)
    producer = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            producer.setdefault(o, i)
    waiting = [0] * len(nodes)
    readers = [[] for _ in nodes]
    for i, n in enumerate(nodes):
        for x in set(n.input):
            if x in known:
                continue
            waiting[i] += 1
            if x in producer:
                readers[producer[x]].append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for j in readers[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) < len(nodes):
        done = {id(n) for n in order}
        rest = [n for n in nodes if id(n) not in done]
        avail = set(known) | {o for n in order for o in n.output}
        missing = sorted({x for n in rest for x in n.input if x not in avail and x not in producer}) or \
            sorted({x for n in rest for x in n.input if x not in avail})
        raise BnncError(f"node '{rest[0].name or rest[0].op_type}' ({rest[0].op_type}) reads tensors "
                        f"nothing produces: {', '.join(missing[:5])}")
    return order


def _constant_value(node: Node) -> np.ndarray:
    a = node.attrs
    for key in ("value", "value_float", "value_int", "value_floats", "value_ints"):
        if key in a:
            return np.asarray(a[key])
    raise BnncError(f"Constant node '{node.name}' has no supported value attribute")


# ----------------------------------------------------------------------------- constant folding


def _bipolar(x, scale):
    return np.where(x >= 0, 1.0, -1.0).astype(np.float32) * np.asarray(scale, dtype=np.float32)


def quant_levels(bitwidth: float, signed: int, narrow: int) -> tuple:
    """Integer range of a QONNX Quant."""
    b = int(round(float(bitwidth)))
    if signed:
        lo, hi = -(2 ** (b - 1)) + (1 if narrow else 0), 2 ** (b - 1) - 1
    else:
        lo, hi = 0, 2**b - 1 - (1 if narrow else 0)
    return lo, hi


def round_mode(mode: str) -> str:
    table = {"ROUND": "half_even", "HALF_EVEN": "half_even", "ROUND_TO_ZERO": "to_zero", "CEIL": "ceil",
             "FLOOR": "floor", "HALF_UP": "half_away"}
    if mode.upper() not in table:
        raise BnncError(f"Quant rounding_mode '{mode}' is not supported (supported: {', '.join(table)})")
    return table[mode.upper()]


def apply_round(v: np.ndarray, mode: str) -> np.ndarray:
    if mode == "half_even":
        return np.rint(v)
    if mode == "half_away":
        return np.sign(v) * np.floor(np.abs(v) + np.float32(0.5))
    if mode == "floor":
        return np.floor(v)
    if mode == "ceil":
        return np.ceil(v)
    return np.trunc(v)


def _quant(node, x, scale, zp, bw):
    lo, hi = quant_levels(bw, node.attrs.get("signed", 1), node.attrs.get("narrow", 0))
    mode = round_mode(node.attrs.get("rounding_mode", "ROUND"))
    v = (x.astype(np.float32) / np.float32(scale) + np.float32(zp)).astype(np.float32)
    q = np.clip(apply_round(v, mode), lo, hi)
    return ((q - zp) * scale).astype(np.float32)


def _quant_integers(node, x, scale, zp, bw):
    """(integers q - zp, scale broadcast) of a QONNX Quant on constants."""
    lo, hi = quant_levels(bw, node.attrs.get("signed", 1), node.attrs.get("narrow", 0))
    mode = round_mode(node.attrs.get("rounding_mode", "ROUND"))
    v = (x.astype(np.float32) / np.float32(scale) + np.float32(zp)).astype(np.float32)
    if int(round(float(bw))) == 1 and node.attrs.get("signed", 1):
        q = np.where(v >= 0, 1.0, -1.0)  # qonnx: a 1-bit signed Quant is bipolar
        k = q
    else:
        k = np.clip(apply_round(v, mode), lo, hi) - zp
    k = np.asarray(k, np.float64)
    if np.any(k != np.rint(k)):
        return None
    return np.rint(k).astype(np.int64), np.broadcast_to(np.asarray(scale, np.float32), k.shape)


def int_range(dtype) -> tuple:
    """(lo, hi) of an integer dtype, the 4-bit ones onnx decodes to (ml_dtypes int4 / uint4) included."""
    import ml_dtypes

    info = ml_dtypes.iinfo(dtype) if np.dtype(dtype).kind == "V" else np.iinfo(dtype)
    return int(info.min), int(info.max)


def _axis_param(p, x, axis):
    """A QuantizeLinear/DequantizeLinear scale or zero point broadcast along `axis` of x."""
    p = np.asarray(p)
    if p.size == 1:
        return p.reshape(())
    shape = [1] * x.ndim
    shape[axis % x.ndim] = p.size
    return p.reshape(shape)


def fold_with_origin(node: Node, consts: dict, origins: dict, opset: int = 0) -> None:
    """`fold`, also recording which constants are quantizer integers times a scale (see
    LoadedModel.quant_origin), through the layout ops that move weights around."""
    fold(node, consts, opset)
    op, a = node.op, node.attrs
    out = node.outputs[0] if node.outputs else ""
    try:
        if op == "DequantizeLinear":
            q = np.asarray(consts[node.inputs[0]]).astype(np.int64)
            axis = a.get("axis", 1)
            s = _axis_param(consts[node.inputs[1]], q, axis).astype(np.float32)
            zp = _axis_param(consts[node.inputs[2]], q, axis).astype(np.int64) \
                if len(node.inputs) > 2 and node.inputs[2] else np.int64(0)
            origins[out] = (q - zp, np.broadcast_to(s, q.shape))
        elif op == "Quant":
            x = [consts[i] for i in node.inputs[:4]]
            r = _quant_integers(node, x[0], x[1], x[2], x[3])
            if r is not None:
                origins[out] = r
        elif op in ("Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze") \
                and node.inputs[0] in origins:
            k, s = origins[node.inputs[0]]
            sub = Node(node.name, op, node.domain, node.inputs, node.outputs, node.attrs)
            ck = dict(consts)
            ck[node.inputs[0]] = k
            fold(sub, ck)
            cs = dict(consts)
            cs[node.inputs[0]] = np.ascontiguousarray(s)
            fold(sub, cs)
            origins[out] = (np.asarray(ck[out]), np.asarray(cs[out]))
    except (BnncError, KeyError, ValueError):
        origins.pop(out, None)


# the ops `fold` evaluates on constants
EVALUATED_OPS = ("Identity", "Dropout", "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Neg", "Abs", "Sign", "Transpose",
                 "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Concat", "Gather", "Cast", "Shape", "BipolarQuant",
                 "Quant", "QuantizeLinear", "DequantizeLinear", "Slice", "ConstantOfShape")


def fold(node: Node, consts: dict, opset: int = 0) -> None:
    """Evaluate `node` on its constant inputs and store its outputs in `consts` (`opset`: the
    model's, for the ops onnx's evaluators run)."""
    x = [consts[i] if i else None for i in node.inputs]
    a = node.attrs
    op = node.op
    try:
        if op in ("Identity", "Dropout"):
            r = [x[0]]
        elif op in ("Add", "Sub", "Mul", "Div", "Pow"):
            f = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": np.divide, "Pow": np.power}[op]
            r = [f(x[0], x[1]).astype(np.result_type(x[0], x[1]))]
            if op == "Div" and np.issubdtype(r[0].dtype, np.integer):
                r = [np.floor_divide(x[0], x[1])]
        elif op == "Sqrt":
            r = [np.sqrt(x[0])]
        elif op == "Neg":
            r = [-x[0]]
        elif op == "Abs":
            r = [np.abs(x[0])]
        elif op == "Sign":
            r = [np.sign(x[0])]
        elif op == "Transpose":
            r = [np.transpose(x[0], a.get("perm"))]
        elif op == "Reshape":
            shape = [int(s) for s in x[1]]
            shape = [x[0].shape[i] if (s == 0 and not a.get("allowzero", 0)) else s for i, s in enumerate(shape)]
            r = [x[0].reshape(shape)]
        elif op == "Flatten":
            ax = a.get("axis", 1)
            r = [x[0].reshape(int(np.prod(x[0].shape[:ax])), -1)]
        elif op == "Squeeze":
            axes = a.get("axes", None if len(x) < 2 or x[1] is None else list(x[1]))
            r = [np.squeeze(x[0], axis=tuple(axes) if axes is not None else None)]
        elif op == "Unsqueeze":
            axes = a.get("axes", None if len(x) < 2 else list(x[1]))
            v = x[0]
            for ax in sorted(int(i) % (v.ndim + len(axes)) for i in axes):
                v = np.expand_dims(v, ax)
            r = [v]
        elif op == "Concat":
            r = [np.concatenate([np.atleast_1d(v) for v in x], axis=a.get("axis", 0))]
        elif op == "Gather":
            r = [np.take(x[0], x[1], axis=a.get("axis", 0))]
        elif op == "Cast":
            r = [x[0].astype(onnx.helper.tensor_dtype_to_np_dtype(a["to"]))]
        elif op == "Shape":
            r = [np.array(x[0].shape, dtype=np.int64)]
        elif op == "BipolarQuant":
            r = [_bipolar(x[0], x[1])]
        elif op == "Quant":
            r = [_quant(node, x[0], x[1], x[2], x[3])]
        elif op == "QuantizeLinear":
            axis = a.get("axis", 1)
            zp = x[2] if len(x) > 2 and x[2] is not None else np.uint8(0)
            lo, hi = int_range(np.asarray(zp).dtype)
            v = np.rint(x[0].astype(np.float32) / _axis_param(x[1], x[0], axis).astype(np.float32))
            v = v + _axis_param(zp, x[0], axis).astype(np.float64)
            r = [np.clip(v, lo, hi).astype(np.asarray(zp).dtype)]
        elif op == "DequantizeLinear":
            axis = a.get("axis", 1)
            q = x[0].astype(np.int64)
            zp = _axis_param(x[2], q, axis).astype(np.int64) if len(x) > 2 and x[2] is not None else 0
            r = [((q - zp).astype(np.float32) * _axis_param(x[1], q, axis).astype(np.float32)).astype(np.float32)]
        elif op == "Slice":
            starts, ends = x[1], x[2]
            axes = x[3] if len(x) > 3 and x[3] is not None else range(len(starts))
            steps = x[4] if len(x) > 4 and x[4] is not None else [1] * len(starts)
            sl = [slice(None)] * x[0].ndim
            for s, e, ax, st in zip(starts, ends, axes, steps):
                sl[int(ax)] = slice(int(s), int(e), int(st))
            r = [x[0][tuple(sl)]]
        elif op == "ConstantOfShape":
            v = a.get("value", np.zeros(1, np.float32))
            r = [np.full([int(s) for s in x[0]], v.ravel()[0], dtype=v.dtype)]
        else:
            r = _evaluated_by_onnx(node, x, opset)
    except BnncError:
        raise
    except Exception as e:
        raise BnncError(f"node '{node.name}' ({op}): cannot evaluate on its constant inputs ({e})") from None
    for o, v in zip(node.outputs, r):
        consts[o] = np.asarray(v)


def _evaluated_by_onnx(node: Node, x: list, opset: int) -> list:
    """The outputs of a standard op that `fold` has no case for (Expand of a LearnableBias to a
    shape known only now, ...), as the canonical stage folds constants: onnx's reference
    evaluator, or onnxruntime where bits depend on the engine (canonical.constant_subgraphs)."""
    from .canonical.constant_subgraphs import evaluate_node

    r = None
    if node.domain in STANDARD_DOMAINS:
        proto = onnx.helper.make_node(node.op, node.inputs, node.outputs, name=node.name, **node.attrs)
        values = {i: v for i, v in zip(node.inputs, x) if i}
        r = evaluate_node(proto, values, opset or onnx.defs.onnx_opset_version())
    if r is None:
        raise BnncError(f"node '{node.name}' ({node.op}) has only constant inputs but bnnc cannot evaluate "
                        f"{node.op} at compile time")
    return r
