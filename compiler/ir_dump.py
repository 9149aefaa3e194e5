"""The lowered IR graph as text, for people and tools (`bnnc compile --dump-ir PATH`).

- JSON: the graph's input and output, every tensor's type, and every op in topological order with
  its fields; arrays appear as their shape, dtype and a SHA-256 of their bytes, not in full.
- Graphviz DOT: one node per op labelled with its type, weight code and output shape, one edge
  per tensor labelled with its type.
Both are deterministic: the same graph gives the same bytes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np

from . import ir

FORMATS = (".json", ".dot")


def dump(graph: ir.Graph, path_suffix: str) -> str:
    """The text of `graph` in the format named by a file suffix (FORMATS)."""
    if path_suffix == ".json":
        return to_json(graph)
    if path_suffix == ".dot":
        return to_dot(graph)
    raise ValueError(f"no IR dump format for {path_suffix!r}")


# ----------------------------------------------------------------------------- JSON


def to_json(graph: ir.Graph) -> str:
    doc = {
        "input": {"tensor": graph.input, **_plain(graph.input_info)},
        "output": {"tensor": graph.output, **_plain(graph.output_info)},
        "tensors": {t: tensor_type(ty) for t, ty in sorted(graph.tensors.items())},
        "ops": [{"name": op.name, "type": type(op).__name__,
                 "inputs": [{"tensor": t, "type": _input_type(graph, t)} for t in op.inputs],
                 "outputs": [{"tensor": t, "type": tensor_type(graph.tensors[t])} for t in op.outputs],
                 "fields": {k: _plain(v) for k, v in vars(op).items() if k not in ("name", "inputs", "outputs")}}
                for op in graph.ops()],
        "notes": _plain(graph.notes),
    }
    return json.dumps(doc, indent=1) + "\n"


def tensor_type(ty) -> dict:
    """{"type": "Bits" | "Ints" | "Reals", "shape": [H, W, C], ...the type's other fields}."""
    return {"type": type(ty).__name__, **{k: _plain(v) for k, v in dataclasses.asdict(ty).items()}}


def _input_type(graph: ir.Graph, t: str):
    if t in graph.tensors:
        return tensor_type(graph.tensors[t])
    return {"type": "model input", "shape": _plain(graph.input_info.get("shape")),
            "dtype": graph.input_info.get("dtype")}


def _plain(v):
    """`v` as JSON values; arrays summarised by shape, dtype and hash."""
    if isinstance(v, np.ndarray):
        a = np.ascontiguousarray(v)
        digest = hashlib.sha256(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes()).hexdigest()
        return {"array": {"shape": list(a.shape), "dtype": str(a.dtype), "sha256": digest[:16]}}
    if isinstance(v, np.generic):
        return v.item()
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {"type": type(v).__name__, **{k: _plain(x) for k, x in vars(v).items()}}
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


# ----------------------------------------------------------------------------- DOT


def to_dot(graph: ir.Graph) -> str:
    lines = ["digraph bnnc {", "  rankdir=TB;", '  node [shape=box, fontname="monospace"];',
             '  edge [fontname="monospace", fontsize=10];']
    info, out = graph.input_info, graph.output_info
    input_label = f"input {_shape(info.get('shape'))} {info.get('dtype')}"
    lines.append(f"  {_id('input')} [shape=ellipse, label={_quote(input_label)}];")
    ops = graph.ops()
    for op in ops:
        lines.append(f"  {_id(op.name)} [label={_quote(_op_label(graph, op))}];")
    lines.append(f"  {_id('output')} [shape=ellipse, label={_quote('output ' + str(out.get('dtype')))}];")
    producers = {t: op.name for op in ops for t in op.outputs}
    for op in ops:
        for t in op.inputs:
            src = producers.get(t, "input" if t == graph.input else None)
            label = _type_label(graph.tensors[t]) if t in graph.tensors else "model input"
            lines.append(f"  {_id(src or t)} -> {_id(op.name)} [label={_quote(label)}];")
    lines.append(f"  {_id(producers.get(graph.output, graph.output))} -> {_id('output')} "
                 f"[label={_quote(_type_label(graph.tensors[graph.output]))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _op_label(graph: ir.Graph, op) -> str:
    parts = [op.name, type(op).__name__]
    if isinstance(op, ir.Conv):
        what = "dense" if op.is_dense else f"{op.kernel[0]}x{op.kernel[1]}/{op.stride[0]}"
        parts.append(f"{what} {op.code}")
        parts.append(type(op.epilogue).__name__)
    elif isinstance(op, (ir.MaxPool, ir.SumPool)):
        parts.append(f"{op.kernel[0]}x{op.kernel[1]}/{op.stride[0]}"
                     + (" border divisors" if getattr(op, "multipliers", None) is not None else ""))
    elif isinstance(op, ir.ArgMax):
        parts.append(f"k={op.k}")
    parts.append(" ".join(_shape(graph.tensors[t].shape) for t in op.outputs))
    return "\n".join(parts)


def _type_label(ty) -> str:
    if isinstance(ty, ir.Bits):
        return f"Bits {_shape(ty.shape)} x{ty.scale:g}"
    if isinstance(ty, ir.Ints):
        return f"Ints[{ty.lo},{ty.hi}] {_shape(ty.shape)} x{ty.scale:g}"
    return f"{type(ty).__name__} {_shape(ty.shape)}"


def _shape(shape) -> str:
    return "x".join(str(int(s)) for s in shape) if shape is not None else "?"


def _id(name: str) -> str:
    return _quote(name)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
