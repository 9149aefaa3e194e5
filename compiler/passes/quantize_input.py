"""Quantize the model input.

`input_grid` decides what the generated code takes as input: integers on the grid the model (or
the user) declares -- an integer ONNX input type, a FINN `finn_datatype` annotation such as UINT8,
BIPOLAR (-1 / +1) or BINARY (0 / 1), `--input-scale S` (real input = S * q), or a per-channel
`InputAffine` (real input x[c] = float32 ops on q, e.g. torchvision's `(q / 255 - mean) / std`)
-- or float32 when the model quantizes its float input itself (Quant / QuantizeLinear / a
binarizing sign on the input).

The pass `quantize_input` replaces a bit-producing terminal on an integer input by integer
thresholds: for every element position e, out[e] = +1 iff direction[e] * q >= threshold[e],
found by evaluating the float32 chain at every grid value, so the comparison reproduces the
float model's decision for every representable input.
"""

from __future__ import annotations

from dataclasses import dataclass

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


AFFINE_OPS = ("mul", "div", "add", "sub")


@dataclass(frozen=True)
class InputAffine:
    """The real input the network sees, as float32 operations on the integers q the device hands
    it: x[c] = ops applied in order to float32(q[c]), each op with one constant per channel (or one
    for all). torchvision's ToTensor + Normalize of uint8 pixels is
    (("div", (255,)), ("sub", mean), ("div", std)), bit for bit the float32 values it computes."""

    ops: tuple  # ((op in AFFINE_OPS, (float, ...)), ...)

    def channels(self) -> int:
        counts = {len(v) for _, v in self.ops if len(v) != 1}
        return counts.pop() if counts else 1


def _channel_axis(shape: tuple, channels: int) -> int:
    """The axis of the model input that per-channel constants run along: axis 1 (NCHW, (N, F)),
    or the last axis of an NHWC image whose axis 1 does not have that many entries."""
    if len(shape) < 2:
        raise BnncError(f"per-channel input constants need an input of rank 2 or more (got {tuple(shape)})")
    if channels == 1 or shape[1] == channels:
        return 1
    if shape[-1] == channels:
        return len(shape) - 1
    raise BnncError(f"{channels} per-channel input constants do not match the input shape {tuple(shape)}")


def input_grid(lm, input_scale=None, input_range=None, input_affine: InputAffine = None) -> dict:
    """{"dtype", "range" (lo, hi) or None, "scale", "why"} and, for an InputAffine, "pre": the
    per-element float32 ChainOps (ONNX element order) from q to the model's input; for BIPOLAR
    inputs "values": the only grid values that occur."""
    if input_affine is not None:
        if input_scale is not None:
            raise BnncError("give the input's scale once: either as --input-scale S or inside the per-channel ops")
        lo, hi = input_range if input_range is not None else (0, 255)
        if lo >= hi:
            raise BnncError(f"--input-range {lo}:{hi} is empty")
        shape = tuple(lm.input_shape)
        axis = _channel_axis(shape, input_affine.channels())
        pre = []
        for op, vals in input_affine.ops:
            if op not in AFFINE_OPS:
                raise BnncError(f"input op '{op}' is not one of {', '.join(AFFINE_OPS)}")
            c = np.asarray(vals, np.float32)
            if not np.all(np.isfinite(c)) or (op == "div" and np.any(c == 0)):
                raise BnncError(f"input {op} constants {list(vals)} must be finite (and nonzero for div)")
            if c.size == 1:
                pre.append(ir.ChainOp(op, c.reshape(())))
                continue
            bshape = [1] * len(shape)
            bshape[axis] = c.size
            full = np.broadcast_to(c.reshape(bshape), (1,) + shape[1:])
            pre.append(ir.ChainOp(op, np.ascontiguousarray(full.reshape(-1))))
        text = ", ".join(f"{op} {list(v) if len(v) > 1 else v[0]}" for op, v in input_affine.ops)
        return {"dtype": int_dtype_for(lo, hi), "range": (int(lo), int(hi)), "scale": 1.0, "pre": pre,
                "why": f"declared integers q in [{lo}, {hi}], x = q then {text}"}
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
    if dt in ("BIPOLAR", "BINARY"):
        if input_range is not None:
            raise BnncError(f"the input is annotated {dt}; --input-range does not apply")
        lo, hi = (-1, 1) if dt == "BIPOLAR" else (0, 1)
        return {"dtype": "int8", "range": (lo, hi), "scale": 1.0, "values": (lo, hi) if dt == "BIPOLAR" else None,
                "why": f"finn_datatype {dt} annotation"}
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
        values = graph.input_info.get("grid", {}).get("values")
        q = np.array(values, np.int64) if values else np.arange(lo, hi + 1, dtype=np.int64)
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
