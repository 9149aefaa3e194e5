"""Checks of a model's attributes, constants and static shapes, before anything is computed.

A hostile or broken model must be refused here with the node, the attribute or tensor and what
bnnc supports named, rather than fail deep in the lowering (an internal error) or, worse, compile
to code whose answer is undefined (NaN or Inf weights, a zero BatchNorm variance with a zero
epsilon, subnormal factors that flush to zero on some targets).

`check_graph` runs on the ONNX graph before the loader reads it; `check_loaded` on the loaded
model (attributes as Python values, constants as arrays) before the lowering.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import onnx
import onnx.defs
from onnx import AttributeProto

from .errors import BnncError, one_line
from .onnx_loader import EVALUATED_OPS, STANDARD_DOMAINS
from .original import weights_as_inputs

# The largest tensor bnnc compiles for (the lowering holds several arrays of this size): far above
# any network it targets, far below what would exhaust memory on a development machine.
MAX_TENSOR_BYTES = 256 * 2**20

MAX_WEIGHT_MAGNITUDE = 2.0**64  # see _check_weight_magnitude

# attribute types of the QONNX / FINN custom ops bnnc reads
CUSTOM_ATTRIBUTE_TYPES = {
    "Quant": {"signed": AttributeProto.INT, "narrow": AttributeProto.INT,
              "rounding_mode": AttributeProto.STRING},
    "BipolarQuant": {},
    "MultiThreshold": {"out_scale": AttributeProto.FLOAT, "out_bias": AttributeProto.FLOAT,
                       "out_dtype": AttributeProto.STRING, "data_layout": AttributeProto.STRING},
}
CUSTOM_INPUTS = {"Quant": 4, "BipolarQuant": 2, "MultiThreshold": 2}
# custom ops whose output has the shape of their first input (for static shape inference)
SHAPE_PRESERVING_CUSTOM_OPS = ("Quant", "BipolarQuant", "MultiThreshold", "Trunc")
INTEGER_ZERO_POINT_TYPES = ("int4", "uint4", "int8", "uint8", "int16", "uint16", "int32")


def _where(name: str, op: str) -> str:
    return f"node '{name}' ({op})"


def _type_name(t: int) -> str:
    try:
        return AttributeProto.AttributeType.Name(t)
    except ValueError:
        return f"type {t}"


# ----------------------------------------------------------------------------- the ONNX graph


HALF_TYPES = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def check_graph(model: onnx.ModelProto, opset: int) -> None:
    """Tensor names defined once, numeric constants, attributes of the types their op defines."""
    g = model.graph
    _check_unique_tensors(g)
    constants = [(t.name, t) for t in g.initializer] + [
        (n.output[0], a.t) for n in g.node if n.op_type == "Constant" and n.output
        for a in n.attribute if a.name == "value" and a.type == onnx.AttributeProto.TENSOR]
    for name, t in constants:
        if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
            raise BnncError(f"constant '{one_line(name)}' holds {onnx.TensorProto.DataType.Name(t.data_type).lower()} "
                            "values; bnnc reads numeric tensors only")
    half = [("constant", name) for name, t in constants if t.data_type in HALF_TYPES] + [
        (kind, vi.name) for kind, vis in (("input", g.input), ("output", g.output))
        for vi in vis if vi.type.tensor_type.elem_type in HALF_TYPES]
    if half:
        kind, name = half[0]
        raise BnncError(f"{kind} '{one_line(name)}' is 16-bit floating point: the model computes in half precision, "
                        "whose roundings bnnc (exact integers and float32) does not reproduce; export it in float32")
    for i, n in enumerate(g.node):
        _check_attributes(n, n.name or f"{n.op_type}_{i}", opset)


def _check_unique_tensors(g) -> None:
    inits = {}
    for init in g.initializer:
        if init.name in inits:
            if not _same_tensor(inits[init.name], init):
                raise BnncError(f"initializer '{init.name}' is listed twice with different values; tensor "
                                "names must be unique")
        else:
            inits[init.name] = init
    producer = {i.name: "a graph input" for i in g.input if i.name not in inits}
    producer.update({name: "an initializer" for name in inits})
    for i, n in enumerate(g.node):
        where = _where(n.name or f"{n.op_type}_{i}", n.op_type)
        for o in n.output:
            if o == "":
                continue
            if o in producer:
                raise BnncError(f"{where} writes tensor '{o}', which {producer[o]} already defines; tensor "
                                "names must be unique")
            producer[o] = where


def _same_tensor(a, b) -> bool:
    try:
        x, y = onnx.numpy_helper.to_array(a), onnx.numpy_helper.to_array(b)
    except Exception:
        return a.SerializeToString() == b.SerializeToString()
    return x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y, equal_nan=x.dtype.kind in "fc")


def _standard_schema(node, opset: int):
    """The ONNX schema of the op (custom domains included: the lowering reads a `finn` MaxPool
    as a MaxPool), or None for an op ONNX does not define."""
    if node.domain not in STANDARD_DOMAINS and node.op_type in CUSTOM_ATTRIBUTE_TYPES:
        return None
    try:
        return onnx.defs.get_schema(node.op_type, opset or onnx.defs.onnx_opset_version(), "")
    except Exception:  # onnx.defs.SchemaError: an op ONNX does not define; the lowering names it
        return None


def _schema_attributes(node, opset: int):
    """{name: (type, required)} of the op's attributes, or None for an op bnnc has no schema of."""
    schema = _standard_schema(node, opset)
    if schema is not None:
        return {k: (int(v.type.value), bool(v.required)) for k, v in schema.attributes.items()}
    types = CUSTOM_ATTRIBUTE_TYPES.get(node.op_type) if node.domain not in STANDARD_DOMAINS else None
    return None if types is None else {k: (t, False) for k, t in types.items()}


def _check_arity(node, name: str, opset: int) -> None:
    schema = _standard_schema(node, opset)
    if schema is not None:
        lo, hi = schema.min_input, schema.max_input
    elif node.domain not in STANDARD_DOMAINS and node.op_type in CUSTOM_INPUTS:
        lo = hi = CUSTOM_INPUTS[node.op_type]
    else:
        return
    if not lo <= len(node.input) <= hi:
        need = str(lo) if lo == hi else f"{lo} to {hi}" if hi < 2**30 else f"at least {lo}"
        raise BnncError(f"{_where(name, node.op_type)} has {len(node.input)} inputs; {node.op_type} takes {need}")
    if not node.output or node.output[0] == "":
        raise BnncError(f"{_where(name, node.op_type)} has no output")


@functools.lru_cache(maxsize=None)
def _read_ops() -> set:
    """The ops bnnc evaluates or lowers (others are refused as unsupported, whatever their form)."""
    from .frontend import HANDLERS  # (the frontend imports the loader, which calls this module)

    return set(EVALUATED_OPS) | set(HANDLERS) | {"Constant"}


def _check_attributes(node, name: str, opset: int) -> None:
    if node.op_type not in _read_ops():
        return
    where = _where(name, node.op_type)
    _check_arity(node, name, opset)
    expected = _schema_attributes(node, opset)
    seen = set()
    for a in node.attribute:
        if a.name in seen:
            raise BnncError(f"{where} sets attribute '{a.name}' twice")
        seen.add(a.name)
        if a.type == AttributeProto.UNDEFINED or _type_name(a.type).startswith("type "):
            raise BnncError(f"{where}: attribute '{a.name}' has no valid type")
        if expected is not None and a.name in expected and a.type != expected[a.name][0]:
            raise BnncError(f"{where}: attribute '{a.name}' is {_type_name(a.type)}; {node.op_type} defines it "
                            f"as {_type_name(expected[a.name][0])}")
        if a.type == AttributeProto.FLOAT and not math.isfinite(a.f):
            raise BnncError(f"{where}: attribute '{a.name}' is {a.f}; bnnc needs a finite number")
        if a.type == AttributeProto.FLOATS and not all(math.isfinite(f) for f in a.floats):
            raise BnncError(f"{where}: attribute '{a.name}' holds a non-finite number; bnnc needs finite numbers")
    for k, (_, required) in (expected or {}).items():
        if required and k not in seen:
            raise BnncError(f"{where}: required attribute '{k}' is missing")


# ----------------------------------------------------------------------------- the loaded model


def check_loaded(lm, model: onnx.ModelProto) -> None:
    """Sizes, constants and per-op attribute values of a loaded model (see LoadedModel)."""
    from .frontend.context import _dynamic_tensors  # (the frontend imports the loader, which calls this module)

    _check_size(f"input '{lm.input_name}'", lm.input_shape, np.dtype(_itemsize_dtype(lm.input_dtype)))
    consumers = {}
    for node in lm.nodes:
        for x in node.inputs:
            consumers.setdefault(x, node)
    _check_finite_constants(lm.consts, consumers)
    shapes = static_shapes(model, lm.input_name, lm.input_shape)
    dynamic = _dynamic_tensors(lm)
    for node in lm.nodes:
        _check_axis(node, lm.consts, shapes)
        check = _NODE_CHECKS.get(node.op)
        if check is not None:
            check(node, lm.consts, shapes, node.inputs[0] in dynamic if node.inputs else False)
    for tensor, shape in shapes.items():
        if tensor in lm.consts:
            continue
        if any(d == 0 for d in shape):
            raise BnncError(f"tensor '{tensor}' has shape {tuple(shape)}, which is empty")
        _check_size(f"tensor '{tensor}'", shape, np.dtype(np.float32))


def _itemsize_dtype(name: str) -> str:
    return name if name != "unknown" else "float32"


def _check_size(what: str, shape, dtype: np.dtype) -> None:
    elements = math.prod(int(d) for d in shape)
    nbytes = elements * max(dtype.itemsize, 4)  # every stream is at least 32-bit somewhere in bnnc
    if nbytes > MAX_TENSOR_BYTES:
        raise BnncError(f"{what} of shape {tuple(int(d) for d in shape)} needs {nbytes} bytes; bnnc compiles "
                        f"tensors of at most {MAX_TENSOR_BYTES} bytes")


def _check_finite_constants(consts: dict, consumers: dict) -> None:
    """Numbers only, and finite ones."""
    for name, v in consts.items():
        v = np.asarray(v)
        user = consumers.get(name)
        at = f" (read by {_where(user.name, user.op)})" if user is not None else ""
        if v.dtype.kind not in "biufc" and v.dtype.name not in ("int4", "uint4"):
            raise BnncError(f"constant '{name}'{at} holds {v.dtype.name} values; bnnc reads numeric tensors only")
        if v.dtype.kind in "fc" and not np.all(np.isfinite(v)):
            bad = "NaN" if np.any(np.isnan(v)) else "Inf"
            raise BnncError(f"constant '{name}'{at} holds {bad}; bnnc compiles finite weights and parameters only")


def static_shapes(model: onnx.ModelProto, input_name: str, input_shape: tuple) -> dict:
    """{tensor: static shape} ONNX shape inference finds for the input shape the loader settled
    on (batch 1), the QONNX/FINN quantizers passing their input's shape through; tensors it
    cannot size are left out."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for i in m.graph.input:
        if i.name == input_name:
            i.type.tensor_type.shape.Clear()
            for d in input_shape:
                i.type.tensor_type.shape.dim.add().dim_value = int(d)
    for n in m.graph.node:
        if n.domain not in STANDARD_DOMAINS and n.op_type in SHAPE_PRESERVING_CUSTOM_OPS:
            inp, out = n.input[0], n.output[0]
            n.Clear()
            n.op_type, n.domain = "Identity", ""
            n.input.append(inp)
            n.output.append(out)
    for vi in list(m.graph.value_info):
        m.graph.value_info.remove(vi)
    for o in m.graph.output:
        o.type.tensor_type.ClearField("shape")
    weights = weights_as_inputs(m.graph)
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False, data_prop=True)
    except Exception:  # inconsistent models: the lowering reports what it cannot follow
        return {}
    out = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input):
        tt = vi.type.tensor_type
        if not tt.HasField("shape") or vi.name in weights:
            continue
        dims = tt.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            out[vi.name] = tuple(int(d.dim_value) for d in dims)
    return out


# ----------------------------------------------------------------------------- per op


def _ints(node, key: str, default=None):
    v = node.attrs.get(key, default)
    return None if v is None else [int(x) for x in v]


def _check_window(node, consts: dict, shapes: dict, dynamic: bool) -> None:
    """kernel_shape / strides / dilations / pads: lengths that match the spatial rank and values
    bnnc can compute with; a window that fits its (padded) input."""
    where = _where(node.name, node.op)
    weight = consts.get(node.inputs[1]) if node.op == "Conv" and len(node.inputs) > 1 else None
    kernel = _ints(node, "kernel_shape")
    if weight is not None:
        weight = np.asarray(weight)
        if weight.ndim < 3:
            raise BnncError(f"{where}: weight '{node.inputs[1]}' has shape {weight.shape}; a convolution weight "
                            "is (filters, channels, kernel...)")
        if weight.size == 0:
            raise BnncError(f"{where}: weight '{node.inputs[1]}' has shape {weight.shape}, with no filters")
        if kernel is not None and tuple(kernel) != weight.shape[2:]:
            raise BnncError(f"{where}: kernel_shape {kernel} does not match weight '{node.inputs[1]}' of shape "
                            f"{weight.shape}")
        kernel = list(weight.shape[2:])
        _check_bias(node, consts, 2, weight.shape[0], exact=True)
        _check_weight_magnitude(node, node.inputs[1], weight)
    in_shape = shapes.get(node.inputs[0])
    if weight is not None:
        rank = weight.ndim - 2
    elif in_shape is not None and len(in_shape) > 2:
        rank = len(in_shape) - 2
    else:
        rank = len(kernel) if kernel else 2
    for key, n, lo in (("kernel_shape", rank, 1), ("strides", rank, 1), ("dilations", rank, 1),
                       ("pads", 2 * rank, 0)):
        v = _ints(node, key)
        if v is None:
            continue
        if len(v) != n:
            raise BnncError(f"{where}: attribute '{key}' is {v}; it needs {n} values for a {rank}-D "
                            f"{'convolution' if weight is not None else 'input'}")
        if any(x < lo for x in v):
            raise BnncError(f"{where}: attribute '{key}' is {v}; its values must be at least {lo}")
    if kernel is None or in_shape is None or len(in_shape) != rank + 2:
        return
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "", "VALID"):
        return  # SAME padding always leaves an output
    pads = _ints(node, "pads", [0] * 2 * rank) if node.attrs.get("auto_pad", "NOTSET") != "VALID" else [0] * 2 * rank
    dil = _ints(node, "dilations", [1] * rank)
    window = [(k - 1) * d + 1 for k, d in zip(kernel, dil)]
    padded = [in_shape[2 + i] + pads[i] + pads[i + rank] for i in range(rank)]
    if any(w > p for w, p in zip(window, padded)):
        raise BnncError(f"{where}: its {'x'.join(map(str, window))} window is larger than its input "
                        f"'{node.inputs[0]}' of {'x'.join(map(str, in_shape[2:]))} "
                        f"(padded {'x'.join(map(str, padded))})")


def _check_axis(node, consts: dict, shapes: dict) -> None:
    """An `axis` attribute within the rank of the node's first input (Flatten may also name the
    end: rank); a per-tensor (one scale) quantizer ignores its axis."""
    if "axis" not in node.attrs or not node.inputs:
        return
    if node.op in ("QuantizeLinear", "DequantizeLinear") and np.size(consts.get(node.inputs[1], 0)) == 1:
        return
    shape = shapes.get(node.inputs[0], np.shape(consts[node.inputs[0]]) if node.inputs[0] in consts else None)
    if shape is None:
        return
    rank = len(shape)
    axis = node.attrs["axis"]
    hi = rank if node.op == "Flatten" else rank - 1
    if isinstance(axis, int) and not -rank <= axis <= hi:
        raise BnncError(f"{_where(node.name, node.op)}: axis {axis} is outside the {rank}-D input "
                        f"'{node.inputs[0]}' (from {-rank} to {hi})")


def _check_weight_magnitude(node, name: str, w: np.ndarray) -> None:
    """Weights small enough that the model's float32 sums cannot overflow: with a fan-in below
    2^24 and inputs below 2^31, |w| < 2^64 keeps every partial sum finite, so the float model and
    bnnc's exact sums agree (beyond that, the model's answer depends on its summation order)."""
    if w.dtype.kind in "fc" and w.size and float(np.max(np.abs(w))) >= MAX_WEIGHT_MAGNITUDE:
        raise BnncError(f"{_where(node.name, node.op)}: weight '{name}' holds {float(np.max(np.abs(w))):g}; bnnc "
                        f"needs weights of magnitude below 2^64 ({MAX_WEIGHT_MAGNITUDE:g}) so that the layer's "
                        "sums stay finite in float32")


def _check_bias(node, consts: dict, i: int, outputs: int, exact: bool) -> None:
    """A constant bias of one value per output (or, where broadcasting allows it, one value)."""
    if i >= len(node.inputs) or node.inputs[i] not in consts:
        return
    b = np.asarray(consts[node.inputs[i]])
    if b.size != outputs and (exact or b.size != 1):
        raise BnncError(f"{_where(node.name, node.op)}: bias '{node.inputs[i]}' has shape {b.shape}; the layer has "
                        f"{outputs} outputs")


def _check_dense(node, consts: dict, shapes: dict, dynamic: bool) -> None:
    where = _where(node.name, node.op)
    if node.op == "Gemm":
        for key in ("transA", "transB"):
            if node.attrs.get(key, 0) not in (0, 1):
                raise BnncError(f"{where}: attribute '{key}' is {node.attrs[key]}; it must be 0 or 1")
    if len(node.inputs) < 2 or node.inputs[1] not in consts:
        return
    w = np.asarray(consts[node.inputs[1]])
    if w.ndim != 2:
        raise BnncError(f"{where}: weight '{node.inputs[1]}' has shape {w.shape}; bnnc needs a 2-D weight matrix")
    if w.size == 0:
        raise BnncError(f"{where}: weight '{node.inputs[1]}' has shape {w.shape}, which is empty")
    _check_weight_magnitude(node, node.inputs[1], w)
    k, n = w.shape[::-1] if node.attrs.get("transB", 0) else w.shape
    in_shape = shapes.get(node.inputs[0])
    if dynamic and in_shape is not None and len(in_shape) == 2 and in_shape[1] != k:
        raise BnncError(f"{where}: weight '{node.inputs[1]}' of shape {w.shape}"
                        f"{' (transB=1)' if node.attrs.get('transB', 0) else ''} takes {k} inputs; the input "
                        f"'{node.inputs[0]}' has {in_shape[1]}")
    if node.op == "Gemm":
        _check_bias(node, consts, 2, n, exact=False)


def _check_batchnorm(node, consts: dict, shapes: dict, dynamic: bool) -> None:
    """Parameters whose float32 normalization is defined: variance + epsilon positive, and no
    subnormal factor (flushed to zero on targets that run with flush-to-zero)."""
    where = _where(node.name, node.op)
    eps = np.float32(node.attrs.get("epsilon", 1e-5))
    if eps < 0:
        raise BnncError(f"{where}: epsilon {float(eps)} is negative")
    params = {}
    for i, role in enumerate(("scale", "bias", "mean", "variance"), start=1):
        if i < len(node.inputs) and node.inputs[i] in consts:
            p = np.asarray(consts[node.inputs[i]])
            if p.size == 0:
                raise BnncError(f"{where}: {role} '{node.inputs[i]}' is empty")
            params[role] = (node.inputs[i], p.astype(np.float32))
    in_shape = shapes.get(node.inputs[0])
    channels = in_shape[1] if in_shape is not None and len(in_shape) > 1 else None
    sizes = {p.size for _, p in params.values()}
    if channels is not None and sizes - {channels} or len(sizes) > 1:
        raise BnncError(f"{where}: parameters of shapes {[p.shape for _, p in params.values()]} for "
                        f"{channels if channels is not None else 'the'} channels; BatchNormalization needs one "
                        "value per channel")
    tiny = np.finfo(np.float32).tiny
    if "scale" in params:  # (a subnormal variance is harmless: epsilon is added to it first)
        name, p = params["scale"]
        if np.any((p != 0) & (np.abs(p) < tiny)):
            raise BnncError(f"{where}: scale '{name}' holds a subnormal float32 value "
                            f"({float(p[(p != 0) & (np.abs(p) < tiny)].ravel()[0]):g}), whose result "
                            "differs between targets")
    if "variance" in params:
        name, var = params["variance"]
        with np.errstate(all="ignore"):
            denom = np.sqrt(var + eps).astype(np.float32)
        if np.any(~(denom >= tiny)):
            i = int(np.flatnonzero(~(denom >= tiny).ravel())[0])
            raise BnncError(f"{where}: variance '{name}' + epsilon {float(eps):g} is "
                            f"{float((var + eps).ravel()[i]):g} at channel {i}; BatchNormalization needs it "
                            "positive (and not subnormal)")
        if "scale" in params:
            with np.errstate(all="ignore"):
                ratio = params["scale"][1] / denom
            if not np.all(np.isfinite(ratio)):
                raise BnncError(f"{where}: scale '{params['scale'][0]}' / sqrt(variance + epsilon) overflows "
                                "float32")


def _check_quantizer(node, consts: dict, shapes: dict, dynamic: bool) -> None:
    """Scales positive where they divide; zero points of an integer type and int32 range; bit
    widths bnnc can hold; on activations, a one-element scale, zero point or bit width given as a
    scalar."""
    where = _where(node.name, node.op)
    if dynamic and node.op in ("Quant", "QuantizeLinear"):  # (BipolarQuant reads any one-element scale)
        for i, role in list(enumerate(("scale", "zero point", "bit width"), start=1))[:len(node.inputs) - 1]:
            p = consts.get(node.inputs[i])
            if p is not None and np.size(p) == 1 and np.ndim(p) != 0:
                raise BnncError(f"{where}: {role} '{node.inputs[i]}' has shape {np.shape(p)}; on activations "
                                f"bnnc supports a scalar {role} (shape ())")
    if node.op == "Quant" and len(node.inputs) > 2 and node.inputs[2] in consts:
        zp = np.asarray(consts[node.inputs[2]], dtype=np.float64)
        if np.any(np.abs(zp) > 2**31) or np.any(zp != np.rint(zp)):
            raise BnncError(f"{where}: zero point '{node.inputs[2]}' must hold integers in the int32 range")
    scale = consts.get(node.inputs[1]) if len(node.inputs) > 1 else None
    if scale is not None:
        scale = np.asarray(scale)
        # Quant and QuantizeLinear divide by their scale (the others only multiply by it)
        if scale.size == 0 or (node.op in ("Quant", "QuantizeLinear") and not np.all(scale.astype(np.float64) > 0)):
            raise BnncError(f"{where}: scale '{node.inputs[1]}' must be positive (got "
                            f"{np.asarray(scale).ravel()[:4].tolist()})")
    if node.op in ("QuantizeLinear", "DequantizeLinear") and len(node.inputs) > 2 and node.inputs[2] in consts:
        zp = np.asarray(consts[node.inputs[2]])
        if zp.dtype.name not in INTEGER_ZERO_POINT_TYPES:
            raise BnncError(f"{where}: zero point '{node.inputs[2]}' is {zp.dtype.name}; bnnc supports "
                            f"{', '.join(INTEGER_ZERO_POINT_TYPES)} zero points")
        if scale is not None and zp.size not in (1, scale.size):
            raise BnncError(f"{where}: zero point '{node.inputs[2]}' has {zp.size} values for {scale.size} scales")
    if node.op == "Quant" and len(node.inputs) > 3 and node.inputs[3] in consts:
        bw = np.asarray(consts[node.inputs[3]], dtype=np.float64)
        if bw.size != 1 or not 1 <= float(bw.ravel()[0]) <= 32:
            raise BnncError(f"{where}: bit width '{node.inputs[3]}' is {bw.ravel()[:4].tolist()}; bnnc supports "
                            "one bit width from 1 to 32")


def _check_reshape(node, consts: dict, shapes: dict, dynamic: bool) -> None:
    if len(node.inputs) < 2 or node.inputs[1] not in consts:
        return
    where = _where(node.name, node.op)
    target = [int(s) for s in np.asarray(consts[node.inputs[1]]).ravel()]
    in_shape = shapes.get(node.inputs[0])
    allowzero = node.attrs.get("allowzero", 0)
    if any(s < -1 for s in target) or target.count(-1) > 1:
        raise BnncError(f"{where}: shape {target} is not a reshape target (one -1 at most, no other negatives)")
    if 0 in target and allowzero:
        raise BnncError(f"{where}: shape {target} with allowzero=1 makes an empty tensor")
    if in_shape is None:
        return
    if any(s == 0 and i >= len(in_shape) for i, s in enumerate(target)):
        raise BnncError(f"{where}: shape {target} copies a dimension (0) the {len(in_shape)}-D input "
                        f"{in_shape} does not have")
    dims = [in_shape[i] if s == 0 else s for i, s in enumerate(target)]
    known = math.prod(d for d in dims if d != -1)
    total = math.prod(in_shape)
    if (-1 in dims and (known == 0 or total % known)) or (-1 not in dims and known != total):
        raise BnncError(f"{where}: cannot reshape the input of shape {in_shape} to {target}")


def _check_multithreshold(node, consts: dict, shapes: dict, dynamic: bool) -> None:
    """Output levels out_scale * n + out_bias that are int32 integers on a step of at least 1/256."""
    t = consts.get(node.inputs[1]) if len(node.inputs) > 1 else None
    in_shape = shapes.get(node.inputs[0])
    if t is not None and np.ndim(t) == 2 and in_shape is not None and len(in_shape) > 1:
        channel_axis = 1 if node.attrs.get("data_layout", "NCHW") == "NCHW" else len(in_shape) - 1
        if np.shape(t)[0] not in (1, in_shape[channel_axis]):
            raise BnncError(f"{_where(node.name, node.op)}: thresholds '{node.inputs[1]}' of shape {np.shape(t)} "
                            f"for {in_shape[channel_axis]} channels; MultiThreshold needs one row per channel "
                            "(or one row)")
    out_scale = float(node.attrs.get("out_scale", 1.0))
    out_bias = float(node.attrs.get("out_bias", 0.0))
    if out_scale == 0 or abs(out_bias) > 2**23 * abs(out_scale):
        raise BnncError(f"{_where(node.name, node.op)}: out_scale {out_scale:g} and out_bias {out_bias:g} give "
                        "output levels outside what bnnc holds (|out_bias / out_scale| up to 2^23, out_scale "
                        "nonzero)")


def _check_topk(node, consts: dict, shapes: dict, dynamic: bool) -> None:
    """One k, from 1 to the size of the axis."""
    if len(node.inputs) < 2 or node.inputs[1] not in consts:
        return
    k = np.asarray(consts[node.inputs[1]])
    where = _where(node.name, node.op)
    if k.size != 1 or k.dtype.kind not in "iu" or int(k.ravel()[0]) < 1:
        raise BnncError(f"{where}: k '{node.inputs[1]}' is {k.ravel()[:4].tolist()}; TopK needs one integer k >= 1")
    shape = shapes.get(node.inputs[0])
    axis = node.attrs.get("axis", -1)
    if shape is not None and isinstance(axis, int) and -len(shape) <= axis < len(shape) \
            and int(k.ravel()[0]) > shape[axis]:
        raise BnncError(f"{where}: k = {int(k.ravel()[0])} exceeds the {shape[axis]} values along axis {axis}")


_NODE_CHECKS = {
    "TopK": _check_topk,
    "MultiThreshold": _check_multithreshold,
    "Conv": _check_window, "MaxPool": _check_window, "AveragePool": _check_window,
    "Gemm": _check_dense, "MatMul": _check_dense,
    "BatchNormalization": _check_batchnorm,
    "QuantizeLinear": _check_quantizer, "DequantizeLinear": _check_quantizer, "Quant": _check_quantizer,
    "BipolarQuant": _check_quantizer,
    "Reshape": _check_reshape,
}
