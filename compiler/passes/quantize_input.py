"""Quantize the model input.

`input_grid` decides what the generated code takes as input: integers on the grid the model (or
the user) declares -- an integer ONNX input type, a FINN `finn_datatype` annotation such as UINT8,
or `--input-scale S` (real input = S * q) -- or float32 when the model quantizes its float input
itself (Quant / QuantizeLinear / a binarizing sign on the input).

The pass `quantize_input` replaces a bit-producing terminal on an integer input by integer
thresholds: for every element position e, out[e] = +1 iff direction[e] * q >= threshold[e],
found by evaluating the float32 chain at every grid value, so the comparison reproduces the
float model's decision for every representable input.
"""

from __future__ import annotations

import numpy as np

from .. import ir
from ..arith import apply_terminal, eval_chain
from ..errors import BnncError

_INT_DTYPES = ("uint8", "int8", "uint16", "int16", "int32")


def int_dtype_for(lo: int, hi: int) -> str:
    for name in _INT_DTYPES:
        info = np.iinfo(name)
        if info.min <= lo and hi <= info.max:
            return name
    raise BnncError(f"integer range [{lo}, {hi}] does not fit 32 bits")


def input_grid(lm, input_scale=None, input_range=None) -> dict:
    """{"dtype", "range" (lo, hi) or None, "scale"}: how the input reaches the generated code."""
    if input_scale is not None:
        if not input_scale > 0:
            raise BnncError(f"--input-scale must be positive (got {input_scale})")
        lo, hi = input_range if input_range is not None else (-128, 127)
        if lo >= hi:
            raise BnncError(f"--input-range {lo}:{hi} is empty")
        return {"dtype": int_dtype_for(lo, hi), "range": (int(lo), int(hi)), "scale": float(input_scale),
                "why": f"--input-scale {input_scale}"}
    if lm.input_dtype not in ("float32", "float64", "float16"):
        if lm.input_dtype not in _INT_DTYPES and lm.input_dtype not in ("int64", "uint32"):
            raise BnncError(f"input '{lm.input_name}' has type {lm.input_dtype}, which bnnc does not support")
        info = np.iinfo(lm.input_dtype)
        lo, hi = (input_range if input_range is not None else (int(info.min), int(info.max)))
        return {"dtype": int_dtype_for(lo, hi), "range": (int(lo), int(hi)), "scale": 1.0,
                "why": f"ONNX input type {lm.input_dtype}"}
    dt = lm.input_datatype.upper()
    if dt.startswith("UINT") or (dt.startswith("INT") and dt[3:].isdigit()):
        bits = int(dt[4:] if dt.startswith("UINT") else dt[3:])
        lo, hi = (0, 2**bits - 1) if dt.startswith("UINT") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        if input_range is not None:
            lo, hi = input_range
        return {"dtype": int_dtype_for(lo, hi), "range": (lo, hi), "scale": 1.0,
                "why": f"finn_datatype {dt} annotation"}
    if input_range is not None:
        raise BnncError("--input-range needs --input-scale for a float input")
    return {"dtype": "float32", "range": None, "scale": 1.0, "why": "float input quantized by the model"}


def quantize_input(graph: ir.Graph) -> ir.Graph:
    """Integer-source InputQuantize with a bit terminal -> integer thresholds (see module doc)."""
    out = graph.copy()
    for op in out.ops():
        if not isinstance(op, ir.InputQuantize) or op.grid is None:
            continue
        term = op.chain.terminal
        if not isinstance(term, (ir.SignTerminal, ir.ThresholdTerminal)):
            continue
        lo, hi = op.grid
        n = int(np.prod(op.in_shape))
        q = np.arange(lo, hi + 1, dtype=np.int64)
        # values (grid, elements): every element's chain at every grid value
        vals = eval_chain(op.chain.ops, np.broadcast_to(q[:, None].astype(np.float32), (q.size, n)))
        bits = apply_terminal(term, vals)  # (grid, n) in {-1, 0, +1}
        if np.any(bits == 0):
            e = int(np.argwhere(bits == 0)[0][1])
            raise BnncError(f"input binarizer '{term.source}' maps an input value to exactly 0 at element {e}, "
                            "which a 1-bit tensor cannot hold")
        from .fold_batchnorm_into_thresholds import steps_from_table

        op.int_thresholds = steps_from_table(bits, q, term.source, getattr(term, "out_scale", 1.0))
        out.replace(op)
    return out
