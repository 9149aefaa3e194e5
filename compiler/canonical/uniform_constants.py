"""Constant operands whose elements are all equal, broadcast against an activation, made scalars.

Exporters write per-channel parameters that hold one value (Brevitas' activation quantizers get a
(1, C, 1, 1) scale of C equal entries; QONNX zoo models add a (1,)-shaped 1.0). Rewritten, when
every element of the constant is the same and broadcasting it does not enlarge the activation's
shape (so the output shape is the activation's either way):

* QONNX / FINN `Quant`, `BipolarQuant`, `Trunc`: the scale / zero point / bit width operands;
* QuantizeLinear / DequantizeLinear: the scale and zero point of an activation (their `axis`
  attribute is ignored for scalars);
* Add, Sub, Mul, Div with one constant operand.

Preserves exactly: each output element is computed from the same two float32 operands as before
(a broadcast scalar is the same value at every position), so the outputs are bit-identical.
"""

from __future__ import annotations

import numpy as np
import onnx

from ..original import static_shapes
from .graph_edit import Names, add_initializer, constant_values, copy_model, drop_unused, is_standard

QUANTIZERS = {"Quant", "BipolarQuant", "Trunc", "IntQuant"}
LINEAR_QUANTIZERS = {"QuantizeLinear", "DequantizeLinear"}
ARITHMETIC = {"Add", "Sub", "Mul", "Div"}


def _keeps_shape(x_shape, c_shape) -> bool:
    """True when broadcasting a constant of c_shape against x_shape yields x_shape."""
    if x_shape is None or len(c_shape) > len(x_shape):
        return False
    for xd, cd in zip(reversed(x_shape), reversed(c_shape)):
        if cd != 1 and cd != xd:
            return False
    return True


def _uniform(v: np.ndarray) -> bool:
    flat = np.asarray(v).reshape(-1)
    if np.ndim(v) == 0 or flat.size == 0 or (flat.dtype.kind == "f" and np.isnan(flat[0])):
        return False
    return bool(np.all(flat == flat[0]))


def scalarize_uniform_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    g = out.graph
    values = constant_values(g)
    names = Names(g)
    shapes = None
    changed = False
    for n in g.node:
        custom = not is_standard(n)
        if custom and n.op_type in QUANTIZERS:
            positions = range(1, len(n.input))
        elif not custom and n.op_type in LINEAR_QUANTIZERS:
            positions = range(1, len(n.input))
        elif not custom and n.op_type in ARITHMETIC:
            positions = [k for k in (0, 1) if n.input[k] in values and n.input[1 - k] not in values]
        else:
            continue
        data = [i for k, i in enumerate(n.input) if k not in positions and i]
        if not data or any(d in values for d in data):
            continue  # on constants: constant folding's business
        for k in positions:
            name = n.input[k]
            if not name or name not in values or not _uniform(values[name]):
                continue
            if shapes is None:
                shapes = static_shapes(out)
            # a linear quantizer's per-axis parameter lines up with `axis`, its output is x-shaped
            if n.op_type not in LINEAR_QUANTIZERS and not _keeps_shape(shapes.get(data[0]), np.shape(values[name])):
                continue
            v = np.asarray(values[name])
            n.input[k] = add_initializer(g, names, v.reshape(-1)[0].reshape(()).astype(v.dtype), name + "_scalar")
            changed = True
    if changed:
        drop_unused(out)
    return out
