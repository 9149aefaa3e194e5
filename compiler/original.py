"""Run the *original* model: QONNX / FINN custom ops rewritten into standard ONNX, one onnxruntime session.

`bnnc verify` compares bnnc's integer reference against the model the user gave it. onnxruntime cannot
run the QONNX/FINN custom ops, and the `qonnx` package's executor runs one session per node (slow) and
is not a dependency of bnnc. `rewrite_custom_ops` replaces every custom op by a small subgraph of
standard ops with the same float32 semantics as the qonnx reference implementation
(qonnx/custom_op/general/{bipolar_quant,intquant,multithreshold}.py):

* ``BipolarQuant(x, scale)``: ``y = scale * (x >= 0 ? +1 : -1)`` (0 maps to +scale).
* ``Quant(x, scale, zeropt, bitwidth; signed, narrow, rounding_mode)`` (also spelled ``IntQuant``):
  ``v = x / scale + zeropt``; ``q = round(clamp(v, min, max))``; ``y = (q - zeropt) * scale``, with
  signed ``min = -2^(b-1) (+1 if narrow)``, ``max = 2^(b-1) - 1``; unsigned ``min = 0``,
  ``max = 2^b - 1 (-1 if narrow)``. As in qonnx, a 1-bit *signed* Quant is bipolar whatever
  ``narrow`` says: ``q = (v >= 0 ? +1 : -1)``, no clamp, no rounding. The bit width must be a
  constant. Rounding modes: ROUND / HALF_EVEN (half to even), CEIL, FLOOR, UP (away from zero),
  DOWN / ROUND_TO_ZERO (towards zero), HALF_UP, HALF_DOWN (ties away from / towards zero).
* ``MultiThreshold(x, T[C, B]; out_scale=1, out_bias=0, data_layout)``:
  ``y = out_scale * #{b : x[..c..] >= T[c, b]} + out_bias``. The channel axis c is the position of
  "C" in ``data_layout``; without a layout it is axis 1, except for 3-D inputs, which qonnx reads as
  NWC (channel last). A threshold matrix with a single row (1, B) applies to every channel.

The ops are accepted in the domains ``onnx.brevitas``, ``qonnx.custom_op.general``,
``finn.custom_op.general`` (and sub-domains of the latter two); any other non-standard op raises
`BnncError`. The rewrite only uses ops available at the model's own default opset (9 and later), so
the meaning of the ops already in the model never changes. `OriginalModel` runs the result.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import BnncError

STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml"}
ORT_DOMAIN = "com.microsoft"  # onnxruntime's contrib ops (its QOperator quantization writes them): it runs them itself
QONNX_DOMAINS = ("onnx.brevitas", "qonnx.custom_op.general", "finn.custom_op.general")
MAX_IR_VERSION = 10  # onnxruntime 1.31 loads up to IR 13; 10 is what current exporters write


def _is_qonnx_domain(domain: str) -> bool:
    return domain in QONNX_DOMAINS or domain.startswith(tuple(d + "." for d in QONNX_DOMAINS[1:]))


def _default_opset(model: onnx.ModelProto) -> int:
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise BnncError("model has no default-domain opset import")
    if versions[0] < 9:
        raise BnncError(f"model opset {versions[0]} is too old (bnnc needs opset 9 or later)")
    return versions[0]


def _describe(node: onnx.NodeProto) -> str:
    return f"node {node.name!r} (op {node.op_type}, domain {node.domain!r})"


def unique_name(taken: set, stem: str) -> str:
    """The first of stem0, stem1, ... not in `taken` (which then holds it too)."""
    i = 0
    while (name := f"{stem}{i}") in taken:
        i += 1
    taken.add(name)
    return name


class _Emitter:
    """Emits standard nodes and constants with fresh names for one rewritten custom node."""

    def __init__(self, opset: int, taken: set[str]):
        self.opset, self.taken = opset, taken
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.prefix = ""

    def fresh(self, hint: str) -> str:
        return unique_name(self.taken, f"{self.prefix}_{hint}")

    def const(self, value, dtype=np.float32) -> str:
        name = self.fresh("c")
        self.initializers.append(numpy_helper.from_array(np.asarray(value, dtype=dtype), name))
        return name

    def op(self, op_type: str, *inputs: str, out: str | None = None, **attrs) -> str:
        out = out or self.fresh(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=self.fresh(op_type), **attrs))
        return out

    # --- opset-dependent spellings -------------------------------------------------------------
    def ge(self, a: str, b: str) -> str:
        """a >= b (GreaterOrEqual exists from opset 12; Not(Less) before)."""
        if self.opset >= 12:
            return self.op("GreaterOrEqual", a, b)
        return self.op("Not", self.op("Less", a, b))

    def unsqueeze_last(self, x: str, rank: int) -> str:
        if self.opset >= 13:
            return self.op("Unsqueeze", x, self.const([rank], np.int64))
        return self.op("Unsqueeze", x, axes=[rank])

    def reduce_sum_last(self, x: str, rank: int, out: str | None = None) -> str:
        if self.opset >= 13:
            return self.op("ReduceSum", x, self.const([rank - 1], np.int64), out=out, keepdims=0)
        return self.op("ReduceSum", x, out=out, axes=[rank - 1], keepdims=0)

    def round_half_even(self, v: str) -> str:
        """ONNX Round (opset 11+) rounds half to even; before 11 build it from Floor, exactly:
        on a = |v|, f = floor(a) and d = a - f are exact in float32, and a rounds up when
        d > 0.5, or d == 0.5 and f is odd; the sign is put back afterwards."""
        if self.opset >= 11:
            return self.op("Round", v)
        a = self.op("Abs", v)
        f = self.op("Floor", a)
        d = self.op("Sub", a, f)
        half, two = self.const(0.5), self.const(2.0)
        odd = self.op("Greater", self.op("Sub", f, self.op("Mul", self.op("Floor", self.op("Div", f, two)), two)), half)
        tie_up = self.op("And", self.op("Not", self.op("Less", d, half)), odd)
        up = self.op("Or", self.op("Greater", d, half), tie_up)
        r = self.op("Add", f, self.op("Cast", up, to=TensorProto.FLOAT))
        return self.op("Mul", self.op("Sign", v), r)

    def rounding(self, v: str, mode: str, where: str) -> str:
        mode = mode.upper()
        if mode in ("ROUND", "HALF_EVEN"):
            return self.round_half_even(v)
        if mode in ("CEIL", "FLOOR"):
            return self.op(mode.capitalize(), v)
        away = {"UP": ("Ceil", None), "DOWN": ("Floor", None), "ROUND_TO_ZERO": ("Floor", None),
                "HALF_UP": ("Floor", "Add"), "HALF_DOWN": ("Ceil", "Sub")}
        if mode not in away:
            raise BnncError(f"{where}: unknown rounding_mode {mode!r}")
        fn, shift = away[mode]  # sign(v) * fn(|v| (+/- 0.5))
        a = self.op("Abs", v)
        if shift:
            a = self.op(shift, a, self.const(0.5))
        return self.op("Mul", self.op("Sign", v), self.op(fn, a))


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Values of initializers and Constant-node outputs (tensor-valued ones)."""
    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            a = _attrs(n)
            if "value" in a:
                values[n.output[0]] = numpy_helper.to_array(a["value"])
    return values


def static_shapes(model: onnx.ModelProto) -> dict:
    """tensor name -> tuple of dims (None where unknown) from ONNX shape inference, best effort.
    Inference runs on a proxy in which every custom-domain node (QONNX / FINN quantizers and
    thresholds, which keep their input's shape) is an Identity of its first input."""
    proxy = onnx.ModelProto()
    proxy.CopyFrom(model)
    for n in proxy.graph.node:
        if n.domain not in STANDARD_DOMAINS and n.input:
            n.CopyFrom(helper.make_node("Identity", [n.input[0]], [n.output[0]], name=n.name))
    keep = [o for o in proxy.opset_import if o.domain in STANDARD_DOMAINS]
    del proxy.opset_import[:]
    proxy.opset_import.extend(keep)
    proxy.ir_version = min(proxy.ir_version, MAX_IR_VERSION)
    weights_as_inputs(proxy.graph)
    try:
        proxy = onnx.shape_inference.infer_shapes(proxy, strict_mode=False, data_prop=True)
    except Exception:  # inference is best effort: a missing shape is reported where it is needed
        pass
    g = proxy.graph
    shapes = {t.name: tuple(t.dims) for t in g.initializer}
    for vi in [*g.input, *g.value_info, *g.output]:
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    return shapes


SHAPE_PROXY_ELEMENTS = 4096  # initializers beyond this size are graph inputs of the shape proxy


def weights_as_inputs(g: onnx.GraphProto) -> set:
    """Large initializers of `g` (a shape-inference proxy) as graph inputs of their type and
    shape: shape inference sees the same shapes without serialising and parsing every weight
    (seconds for a 100 MB model). Small ones stay: data propagation reads shape-like constants (a
    Reshape's target). Returns the names of the inputs added."""
    big = [t for t in g.initializer if int(np.prod(t.dims)) > SHAPE_PROXY_ELEMENTS]
    if not big:
        return set()
    names = {t.name for t in big}
    added = names - {i.name for i in g.input}
    g.input.extend(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in big
                   if t.name in added)
    keep = [t for t in g.initializer if t.name not in names]
    del g.initializer[:]
    g.initializer.extend(keep)
    return added


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor ranks from ONNX shape inference (`static_shapes`)."""
    return {name: len(shape) for name, shape in static_shapes(model).items()}


def _bipolar_quant(e: _Emitter, node, consts, ranks) -> None:
    x, scale = node.input[0], node.input[1]
    sign = e.op("Where", e.ge(x, e.const(0.0)), e.const(1.0), e.const(-1.0))
    e.op("Mul", sign, scale, out=node.output[0])


def _quant(e: _Emitter, node, consts, ranks) -> None:
    where = _describe(node)
    if len(node.input) != 4:
        raise BnncError(f"{where}: Quant needs 4 inputs (x, scale, zeropt, bitwidth)")
    x, scale, zeropt, bw_name = node.input
    if bw_name not in consts or consts[bw_name].size != 1:
        raise BnncError(f"{where}: the bit width must be a constant scalar")
    bits = float(consts[bw_name].reshape(()))
    if bits != int(bits) or bits < 1:
        raise BnncError(f"{where}: bit width {bits} is not a positive integer")
    bits = int(bits)
    a = _attrs(node)
    for required in ("signed", "narrow"):
        if required not in a:
            raise BnncError(f"{where}: required attribute {required!r} is missing")
    signed, narrow = bool(a["signed"]), bool(a["narrow"])
    mode = a.get("rounding_mode", b"ROUND")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)

    # qonnx evaluates with numpy, which promotes an integer zero point or scale (QKeras exports
    # write int64 ones) to float; onnxruntime's Add needs both operands float
    scale, zeropt = (e.const(consts[p].astype(np.float32)) if p in consts and consts[p].dtype != np.float32 else p
                     for p in (scale, zeropt))
    v = e.op("Add", e.op("Div", x, scale), zeropt)
    if bits == 1 and signed:  # qonnx: a 1-bit signed Quant is bipolar (narrow ignored)
        q = e.op("Where", e.ge(v, e.const(0.0)), e.const(1.0), e.const(-1.0))
    else:
        if signed:
            lo, hi = -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
        else:
            lo, hi = 0, 2**bits - 1 - int(narrow)
        clamped = e.op("Max", e.op("Min", v, e.const(hi)), e.const(lo))
        q = e.rounding(clamped, mode, where)
    e.op("Mul", e.op("Sub", q, zeropt), scale, out=node.output[0])


def _multithreshold(e: _Emitter, node, consts, ranks) -> None:
    where = _describe(node)
    x, thresholds = node.input[0], node.input[1]
    if x not in ranks:
        raise BnncError(f"{where}: cannot infer the rank of input {x!r}")
    rank = ranks[x]
    if thresholds in consts and consts[thresholds].ndim != 2:
        raise BnncError(f"{where}: thresholds must be a (C, B) matrix, got shape {consts[thresholds].shape}")
    a = _attrs(node)
    layout = a.get("data_layout", b"")
    layout = layout.decode() if isinstance(layout, bytes) else str(layout)
    if not layout and rank < 5:  # qonnx guesses the layout from the rank
        layout = {2: "NC", 3: "NWC", 4: "NCHW"}.get(rank, "")
    cdim = layout.index("C") if "C" in layout else 1
    if not 0 < cdim < rank:
        raise BnncError(f"{where}: channel axis {cdim} (layout {layout!r}) does not fit a rank-{rank} input")
    # x[..., None] >= T reshaped to (C, 1, ..., 1, B): the C lines up with axis cdim of x.
    t = e.op("Reshape", thresholds, e.const([0] + [1] * (rank - 1 - cdim) + [-1], np.int64))
    hits = e.op("Cast", e.ge(e.unsqueeze_last(x, rank), t), to=TensorProto.FLOAT)
    out_scale, out_bias = float(a.get("out_scale", 1.0)), float(a.get("out_bias", 0.0))
    tail = out_scale != 1.0 or out_bias != 0.0
    y = e.reduce_sum_last(hits, rank + 1, out=None if tail else node.output[0])
    if tail:
        y = e.op("Mul", y, e.const(out_scale), out=None if out_bias != 0.0 else node.output[0])
        if out_bias != 0.0:
            e.op("Add", y, e.const(out_bias), out=node.output[0])


def trunc_shift(scale: float, out_scale: float) -> float:
    """QONNX Trunc's power-of-two step 2**round(log2(out_scale / scale))."""
    return float(2.0 ** np.round(np.log2(np.float64(out_scale) / np.float64(scale))))


def _trunc(e: _Emitter, node, consts, ranks) -> None:
    where = _describe(node)
    if len(node.input) != 6:
        raise BnncError(f"{where}: Trunc needs 6 inputs (x, scale, zeropt, input bit width, output scale, "
                        "output bit width)")
    x, scale, zeropt, _, out_scale, bw_name = node.input
    for name in (scale, zeropt, out_scale, bw_name):
        if name not in consts:
            raise BnncError(f"{where}: input {name!r} must be a constant")
    bits = int(float(np.asarray(consts[bw_name]).reshape(-1)[0]))
    a = _attrs(node)
    signed, narrow = bool(a.get("signed", 1)), bool(a.get("narrow", 0))
    mode = a.get("rounding_mode", b"FLOOR")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    step = trunc_shift(np.asarray(consts[scale]).reshape(-1)[0], np.asarray(consts[out_scale]).reshape(-1)[0])
    lo = -(2 ** (bits - 1)) + int(narrow) if signed else 0
    hi = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    v = e.round_half_even(e.op("Add", e.op("Div", x, scale), zeropt))
    v = e.op("Div", v, e.const(step))
    clamped = e.op("Max", e.op("Min", v, e.const(float(hi))), e.const(float(lo)))
    q = e.rounding(clamped, mode, where)
    e.op("Mul", e.op("Sub", q, e.op("Div", zeropt, e.const(step))), out_scale, out=node.output[0])


REWRITES = {"BipolarQuant": _bipolar_quant, "Quant": _quant, "IntQuant": _quant,
            "MultiThreshold": _multithreshold, "Trunc": _trunc}


def rewrite_custom_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a copy of `model` in which every QONNX/FINN custom op is replaced by standard ONNX ops
    (semantics in the module docstring), unused custom opset imports are dropped, and the IR
    version is one onnxruntime accepts. Raises `BnncError` for any other non-standard op."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    opset = _default_opset(out)
    for n in g.node:
        if n.domain not in STANDARD_DOMAINS | {ORT_DOMAIN} and not (_is_qonnx_domain(n.domain) and n.op_type in REWRITES):
            raise BnncError(f"{_describe(n)} is not a standard ONNX op and bnnc cannot execute it")
    consts = _constants(g)
    ranks = _ranks(out) if any(n.op_type == "MultiThreshold" and n.domain not in STANDARD_DOMAINS
                               for n in g.node) else {}
    taken = {n.name for n in g.node} | {t for n in g.node for t in [*n.input, *n.output]}
    taken |= {t.name for t in g.initializer} | {v.name for v in [*g.input, *g.output, *g.value_info]}

    e = _Emitter(opset, taken)
    new_nodes = []
    for k, n in enumerate(g.node):
        if n.domain in STANDARD_DOMAINS | {ORT_DOMAIN}:
            new_nodes.append(n)
            continue
        e.prefix = f"{n.name or n.op_type}_{k}"
        e.nodes = []
        REWRITES[n.op_type](e, n, consts, ranks)
        new_nodes.extend(e.nodes)
    del g.node[:]
    g.node.extend(new_nodes)
    g.initializer.extend(e.initializers)

    keep = [o for o in out.opset_import if o.domain in STANDARD_DOMAINS | {ORT_DOMAIN}]
    del out.opset_import[:]
    out.opset_import.extend(keep)
    out.ir_version = max(4, min(out.ir_version, MAX_IR_VERSION))  # IR >= 4: initializers need not be inputs
    return out


def _four_bit_output_as_bytes(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with a 4-bit integer output (int4 / uint4) Cast to 8 bits, the same values:
    onnxruntime's Python API returns no 4-bit arrays."""
    out = model.graph.output[0]
    wide = {onnx.TensorProto.INT4: onnx.TensorProto.INT8,
            onnx.TensorProto.UINT4: onnx.TensorProto.UINT8}.get(out.type.tensor_type.elem_type)
    if wide is None:
        return model
    m = onnx.ModelProto()
    m.CopyFrom(model)
    taken = {t for n in m.graph.node for t in (*n.input, *n.output)} | {t.name for t in m.graph.initializer}
    name, src = unique_name(taken, out.name + "_bytes"), out.name
    if _default_opset(m) < 21:  # no standard 4-bit Cast yet: onnxruntime's own DequantizeLinear, scale 1
        one, real = unique_name(taken, "one"), unique_name(taken, out.name + "_real")
        m.graph.initializer.append(helper.make_tensor(one, onnx.TensorProto.FLOAT, [], [1.0]))
        m.graph.node.append(helper.make_node("DequantizeLinear", [src, one], [real], domain="com.microsoft"))
        if not any(o.domain == "com.microsoft" for o in m.opset_import):
            m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        src = real
    m.graph.node.append(helper.make_node("Cast", [src], [name], to=wide))
    m.graph.output[0].CopyFrom(helper.make_tensor_value_info(name, wide, None))
    return m


class OriginalModel:
    """The original model, custom ops rewritten, in one onnxruntime CPU session (no graph
    optimizations, so the float arithmetic is the node-by-node arithmetic of the model)."""

    def __init__(self, model: onnx.ModelProto):
        import onnxruntime as ort

        self.model = _four_bit_output_as_bytes(rewrite_custom_ops(model))
        g = self.model.graph
        inits = {t.name for t in g.initializer}
        inputs = [i for i in g.input if i.name not in inits]
        if len(inputs) != 1 or not g.output:
            raise BnncError(f"expected a model with one input and an output, got inputs {[i.name for i in inputs]}")
        tt = inputs[0].type.tensor_type
        self.input_name = inputs[0].name
        self.input_shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        self.input_dtype = helper.tensor_dtype_to_np_dtype(tt.elem_type)
        self.output_name = g.output[0].name
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        # fatal only: old exports list initializers as inputs (ORT warns about each), and ORT's own
        # error lines would break bnnc's one-line errors; errors come back as exceptions anyway
        opts.log_severity_level = 4
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        self.session = ort.InferenceSession(self.model.SerializeToString(), opts,
                                            providers=["CPUExecutionProvider"])
        self.run_options = ort.RunOptions()
        self.run_options.log_severity_level = 4

    @classmethod
    def with_outputs(cls, model: onnx.ModelProto, names) -> "OriginalModel":
        """The model with the tensors `names` (outputs of its nodes) as extra graph outputs, for
        `run_tensors` (onnxruntime returns only graph outputs)."""
        m = onnx.ModelProto()
        m.CopyFrom(model)
        have = {o.name for o in m.graph.output}
        m.graph.output.extend(onnx.ValueInfoProto(name=t) for t in names if t not in have)
        return cls(m)

    def run_tensors(self, x: np.ndarray, names: list) -> dict:
        """{name: (N, *tensor shape without its batch dimension)} of graph outputs `names`."""
        outs = {t: [] for t in names}
        for xi in np.asarray(x):
            feed = np.asarray(xi, dtype=self.input_dtype).reshape(self.input_shape)
            for t, y in zip(names, self.session.run(list(names), {self.input_name: feed}, self.run_options)):
                outs[t].append(y[0] if y.ndim and y.shape[0] == 1 else y)
        return {t: np.stack(v) for t, v in outs.items()}

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run each sample x[i] (reshaped to the model's batch-1 input shape) and stack the outputs,
        batch dimension removed: (N, ...) ; (N,) when a sample's output has one element."""
        outs = []
        for xi in np.asarray(x):
            feed = np.asarray(xi, dtype=self.input_dtype).reshape(self.input_shape)
            y = self.session.run([self.output_name], {self.input_name: feed}, self.run_options)[0]
            if y.ndim and y.shape[0] == 1:
                y = y[0]
            outs.append(y.reshape(()) if y.size == 1 else y)
        return np.stack(outs) if outs else np.empty((0,), dtype=np.float32)
