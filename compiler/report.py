"""Per-layer figures of a compiled model: shapes, MACs, storage before and after, pruning."""

from __future__ import annotations

import numpy as np

from . import ir
from .passes.pack_bits import words


def layer_rows(graph: ir.Graph) -> list:
    """One dict per op of the backend graph (packed + arena planned)."""
    wb = getattr(graph, "word_bits", 64)
    rows = []
    for op in graph.ops():
        src = graph.tensors.get(op.inputs[0])
        dst = graph.tensors[op.outputs[0]]
        row = {"name": op.name, "onnx_nodes": list(getattr(op, "source_ops", [])), "op": type(op).__name__,
               "input_shape": list(src.shape) if src is not None else list(graph.input_info["shape"]),
               "output_shape": list(dst.shape), "output_type": type(dst).__name__,
               "binary_macs": 0, "int_macs": 0, "weight_bits_float32": 0, "weight_bits": 0,
               "stored_bytes": 0, "channels_removed": 0, "input_channels_removed": 0, "thresholds": 0}
        if isinstance(op, ir.Conv):
            o, kh, kw, c = op.w.shape
            oh, ow = dst.shape[:2]
            macs = int(np.count_nonzero(op.w)) * oh * ow
            row["op"] = "Dense" if op.is_dense else "Conv"
            row["kernel"], row["stride"], row["pads"] = list(op.kernel), list(op.stride), list(op.pads)
            row["binary_macs" if isinstance(src, ir.Bits) else "int_macs"] = macs
            o0, c0 = o + op.removed_out, c + op.removed_in
            row["weight_bits_float32"] = 32 * o0 * kh * kw * c0
            row["weight_bits"] = int(np.count_nonzero(op.w))  # one bit per kept weight
            row["channels_removed"], row["input_channels_removed"] = op.removed_out, op.removed_in
            p = getattr(op, "packed", None)
            stored = 0
            if p is not None:
                stored = p.weights.size * p.weights.itemsize
                for arr, item in ((p.thr, 4), (p.neg, 1), (p.kmul, 1)):
                    stored += 0 if arr is None else arr.size * item
                if p.thr is None and np.any(p.corr):
                    stored += p.corr.size * 4
            row["stored_bytes"] = int(stored)
            if isinstance(op.epilogue, ir.Thresholds):
                row["thresholds"] = int(op.epilogue.direction.size)
                row["notes"] = list(op.epilogue.notes)
            row["compression"] = round(row["weight_bits_float32"] / max(row["weight_bits"], 1), 2)
        elif isinstance(op, ir.InputQuantize):
            row["op"] = "InputQuantize"
        rows.append(row)
    return rows


def totals(graph: ir.Graph, rows: list) -> dict:
    wbits = sum(r["weight_bits"] for r in rows)
    thr = sum(r["thresholds"] for r in rows)
    weight_bytes = -(-wbits // 8) + 4 * thr  # packed weights + one int32 threshold per channel
    float_bytes = sum(r["weight_bits_float32"] for r in rows) // 8
    return {
        "weight_bytes": int(weight_bytes),
        "stored_bytes": int(sum(r["stored_bytes"] for r in rows)),
        "float32_weight_bytes": int(float_bytes),
        "compression": round(float_bytes / max(weight_bytes, 1), 2),
        "arena_bytes": int(graph.arena["size"]),
        "arena_lower_bound_bytes": int(graph.arena["lower_bound"]),
        "binary_macs": int(sum(r["binary_macs"] for r in rows)),
        "int_macs": int(sum(r["int_macs"] for r in rows)),
        "channels_removed": int(sum(r["channels_removed"] for r in rows)),
    }


def report(graph: ir.Graph) -> dict:
    rows = layer_rows(graph)
    return {"layers": rows, "totals": totals(graph, rows), "input": {k: v for k, v in graph.input_info.items()
                                                                     if k != "grid"} | {"grid": graph.input_info["grid"]},
            "output": graph.output_info}


def format_table(rep: dict) -> str:
    cols = [("layer", "name"), ("op", "op"), ("in", "input_shape"), ("out", "output_shape"),
            ("bin MACs", "binary_macs"), ("int MACs", "int_macs"), ("w bits f32", "weight_bits_float32"),
            ("w bits", "weight_bits"), ("x", "compression"), ("removed", "channels_removed"),
            ("thr", "thresholds")]
    def cell(r, k):
        v = r.get(k, "")
        return "x".join(map(str, v)) if isinstance(v, list) else str(v)
    table = [[h for h, _ in cols]] + [[cell(r, k) for _, k in cols] for r in rep["layers"]]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in table]
    t = rep["totals"]
    lines.append("")
    lines.append(f"weights: {t['weight_bytes']} B packed + thresholds (float32: {t['float32_weight_bytes']} B, "
                 f"{t['compression']}x smaller); stored in C: {t['stored_bytes']} B")
    lines.append(f"binary MACs: {t['binary_macs']}, integer MACs: {t['int_macs']}, channels removed: "
                 f"{t['channels_removed']}")
    lines.append(f"arena: {t['arena_bytes']} B (lower bound {t['arena_lower_bound_bytes']} B)")
    for r in rep["layers"]:
        for n in r.get("notes", []):
            lines.append(f"{r['name']}: {n}")
    return "\n".join(lines)
