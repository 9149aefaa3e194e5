"""Per-layer figures of a compiled model: shapes, MACs, storage before and after, pruning.

Storage of a layer's weight code, in bits, exactly as the code holds it:
- binary: 1 bit per kept weight (the scale folds into the thresholds);
- ternary: two masks P, N (2 bits per weight position) + two scales per output channel;
- two-scale: one mask (1 bit per position; N is its complement) + two scales per output channel;
- multi-base: per base, 1 bit per position of its support (2 where the base itself has zeros)
  + one scale per base and output channel; pruned bases (PaBT pairs) are absent;
- int: the bits of its integer range per position + one scale per output channel;
- expander lists: only the listed kernels' positions count, plus ceil(log2 C) bits per list entry.
Scales are stored as 32-bit integer multipliers. `compression` = float32 bits / (weights + scales
+ lists). Ops: `binary_macs` are +-1 products done as bit operations (per base), `int_macs`
integer multiply-accumulates with nonzero weights, `popcounts` the word popcounts the generated C
executes, `multiplies` its integer multiplications (MACs on integer inputs, base multipliers,
requantization).
"""

from __future__ import annotations

import numpy as np

from . import error_bounds, ir
from .arith import GELU_EVAL_ERROR, SIGMOID_EVAL_ERROR


def layer_rows(graph: ir.Graph) -> list:
    """One dict per op of the backend graph (packed + arena planned). Every row has
    `end_to_end_error_bound` (`error_bounds.end_to_end`: the output's largest deviation from real
    arithmetic, real units; 0 where exact), rows of rounding layers `error_bound` (their local
    bound), rows that compare an inexact value (sign, threshold, ArgMax) `tie_margin`."""
    wb = getattr(graph, "word_bits", 64)
    bounds = error_bounds.end_to_end(graph)
    rows = []
    for op in graph.ops():
        rows.append(_layer_row(graph, op, wb))
        lb = bounds.layers[op.name]
        rows[-1]["end_to_end_error_bound"] = lb.end_to_end
        if lb.tie_margin:
            rows[-1]["tie_margin"] = lb.tie_margin
        if lb.notes:
            rows[-1].setdefault("notes", []).extend(lb.notes)
    return rows


def _layer_row(graph: ir.Graph, op, wb: int) -> dict:
    """One row of `layer_rows` without the error bounds."""
    src = graph.tensors.get(op.inputs[0])
    dst = graph.tensors[op.outputs[0]]
    row = {"name": op.name, "onnx_nodes": list(getattr(op, "source_ops", [])), "op": type(op).__name__,
           "input_shape": list(src.shape) if src is not None else list(graph.input_info["shape"]),
           "output_shape": list(dst.shape), "output_type": type(dst).__name__,
           "binary_macs": 0, "int_macs": 0, "weight_bits_float32": 0, "weight_bits": 0,
           "stored_bytes": 0, "channels_removed": 0, "input_channels_removed": 0, "thresholds": 0}
    row.update(code="", scale_bits=0, index_bits=0, popcounts=0, multiplies=0)
    if isinstance(op, ir.Conv) and not ir.is_classic(op):
        _family_conv_row(op, src, dst, row, wb)
        return row
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
            stored = sum(w.size * w.itemsize for w in p.weights)
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
        if op.notes:
            row["notes"] = list(op.notes)
            row["error_bound"] = op.max_error
    elif isinstance(op, ir.Activation):
        ep = op.epilogue
        row["thresholds"] = int(np.asarray(ep.threshold).size) if hasattr(ep, "threshold") else 0
        row["notes"] = list(getattr(ep, "notes", []))
        row["stored_bytes"] = family_stored_bytes(op, wb)
    elif isinstance(op, ir.Concat):
        parts = " + ".join(str(graph.tensors[t].shape[2]) for t in op.inputs)
        row["notes"] = [f"channels {parts}" + (f", inputs shifted by {list(op.shifts)} onto the finest grid"
                                               if any(op.shifts) else "")]
    elif isinstance(op, ir.Softmax) and op.log:
        row["notes"] = ["float64 log-softmax (arith.log_softmax): error <= |y| * 2^-24 + 2^-30"]
    elif isinstance(op, ir.Softmax):
        row["notes"] = [f"float64 softmax (arith.softmax): error <= p * (2^-24 + 2^-42 + C * 2^-52) + 2^-150, "
                        f"C = {dst.shape[2]}"]
        if op.out_grid is not None:
            ops = "QuantizeLinear" + (" -> DequantizeLinear -> QuantizeLinear" if op.requant else "") + \
                ("" if isinstance(dst, ir.Ints) else " -> DequantizeLinear")
            row["notes"].append(f"then the model's {ops}: steps of {op.out_grid[0]:.6g}, zero point "
                                f"{op.requant[0] if op.requant else op.out_grid[1]} (arith.quantize_linear; error <= "
                                "half a step)")
    elif isinstance(op, ir.Sigmoid):
        row["notes"] = [f"sigmoid of the stream on the grid 2^-{op.frac_bits} (arith.sigmoid, float64): error <= "
                        f"2^-{op.frac_bits + 1} + {SIGMOID_EVAL_ERROR:.3g}"]
        row["error_bound"] = op.max_error
    elif isinstance(op, ir.Gelu):
        row["notes"] = [f"GELU of the stream on the grid 2^-{op.frac_bits} (arith.gelu, float64): error <= "
                        f"2^-{op.frac_bits + 1} + {GELU_EVAL_ERROR:.3g} x max(1, {op.x_max:.3g})"]
        row["error_bound"] = op.max_error
    elif isinstance(op, ir.Mul):
        row["notes"] = ["product of two fixed-point streams" + (" by one value per channel" if
                        graph.tensors[op.inputs[1]].shape[:2] == (1, 1) != dst.shape[:2] else "") +
                        (f", rounded half up to 2^{np.log2(dst.scale):g} (error <= {dst.scale / 2:.3g})"
                         if op.round_shift else ", exact")]
    if isinstance(op, ir.Conv):
        row["code"] = "binary"
        p = getattr(op, "packed", None)
        if p is not None and isinstance(src, ir.Bits):
            row["popcounts"] = int(p.taps * p.o * np.prod(dst.shape[:2]))
        row["multiplies"] = row["int_macs"]
    return row


def code_storage(op: ir.Conv) -> dict:
    """{"weight_bits", "scale_bits", "index_bits", "text"} of a Conv's weight code (module docstring)."""
    o, kh, kw, c = op.w.shape
    k = kh * kw
    iw = ir.int_weights(op)
    kernels = np.any(iw != 0, axis=(1, 2)) if op.in_lists is not None else \
        np.broadcast_to(np.any(iw.reshape(o, -1) != 0, axis=1)[:, None], (o, c))
    positions = int(kernels.sum()) * k
    index_bits = sum(len(x) for x in op.in_lists) * max(1, int(np.ceil(np.log2(max(c, 2))))) \
        if op.in_lists is not None else 0
    live = int(np.any(kernels, axis=1).sum())
    if op.code == "binary":
        return {"weight_bits": int(np.count_nonzero(op.w)), "scale_bits": 0, "index_bits": index_bits,
                "text": "1 bit per weight"}
    if op.code == "ternary":
        text = f"ternary: 2 masks x {positions} bits + 2 scales x {live} channels"
        return {"weight_bits": 2 * positions, "scale_bits": 64 * live, "index_bits": index_bits, "text": text}
    if op.code == "two_scale":
        text = f"two-scale: 1 mask x {positions} bits + 2 scales x {live} channels"
        return {"weight_bits": positions, "scale_bits": 64 * live, "index_bits": index_bits, "text": text}
    if op.code == "multi_base":
        bits, parts = 0, []
        for b in op.bases:
            bk = np.any(b.w != 0, axis=(1, 2)) & kernels
            n = int(bk.sum()) * k
            holes = bool(np.any((b.w == 0) & bk[:, None, None, :]))
            bits += n * (2 if holes else 1)
            parts.append(n)
        text = f"multi-base: {len(op.bases)} binary bases ({' + '.join(map(str, parts))} bits) + " \
               f"{len(op.bases)} scales x {live} channels"
        return {"weight_bits": bits, "scale_bits": 32 * len(op.bases) * live, "index_bits": index_bits,
                "text": text}
    nb = max(2, int(np.abs(iw).max(initial=1)).bit_length() + 1)
    return {"weight_bits": positions * nb, "scale_bits": 32 * live, "index_bits": index_bits,
            "text": f"int{nb}: {positions} weights + 1 scale x {live} channels"}


def family_stored_bytes(op, wb: int) -> int:
    """Bytes of the constant tables the C backend stores for a compressed-family layer."""
    p = getattr(op, "packed", None)
    if p is None:
        return 0
    n = 0
    for w in getattr(p, "weights", []):
        n += w.size * (wb // 8 if w.dtype == np.uint64 else w.itemsize)
    for plane in getattr(p, "bit_planes", []):
        n += int(plane.gain.nbytes)
    for name in ("corr", "window_gain", "thr", "neg", "direction", "levels"):
        arr = getattr(p, name, None)
        n += 0 if arr is None else int(np.asarray(arr).nbytes)
    for arr in (getattr(p, "sparse", None) or {}).values():
        n += int(arr.nbytes)
    tsums = getattr(p, "tsums", None)
    if tsums is not None:  # ternary_sums: each channel's two weights (the tap lists are `weights`)
        n += int(tsums["a"].nbytes + tsums["b"].nbytes)
    if isinstance(getattr(op, "epilogue", None), ir.Requantize):
        n += 4 * 8 * op.epilogue.mult.size  # mult, add and the accumulator clamp, int64
    return int(n)


def _family_conv_row(op: ir.Conv, src, dst, row: dict, wb: int) -> None:
    o, kh, kw, c = op.w.shape
    oh, ow = dst.shape[:2]
    pix = oh * ow
    st = code_storage(op)
    row["op"] = "Dense" if op.is_dense else "Conv"
    row["kernel"], row["stride"], row["pads"] = list(op.kernel), list(op.stride), list(op.pads)
    row["code"] = op.code + (" (expander)" if op.in_lists is not None else "")
    o0, c0 = o + op.removed_out, c + op.removed_in
    row["weight_bits_float32"] = 32 * o0 * kh * kw * c0
    row["weight_bits"], row["scale_bits"], row["index_bits"] = st["weight_bits"], st["scale_bits"], st["index_bits"]
    row["storage"] = st["text"]
    row["channels_removed"], row["input_channels_removed"] = op.removed_out, op.removed_in
    iw = ir.int_weights(op)
    nonzero = int(np.count_nonzero(iw))
    p = getattr(op, "packed", None)
    method = getattr(p, "method", "")
    if isinstance(src, ir.Bits):
        bases = [b for b in op.bases] if op.bases else []
        per_base = sum(int(np.count_nonzero(b.w)) for b in bases) if bases else nonzero
        row["binary_macs"] = per_base * pix
        if p is not None:
            n_tables = len(p.bit_planes)  # one popcount per plane and output
            row["popcounts"] = p.taps * o * n_tables * pix
            row["multiplies"] = (0 if method == "xnor" else n_tables * o * pix)
    else:
        row["int_macs"] = nonzero * pix
        if p is not None:  # ternary_sums adds the taps of each list and multiplies its two sums
            row["multiplies"] = (nonzero if method == "sparse_int" else 2 * o if method == "ternary_sums"
                                 else p.taps * o) * pix
    if isinstance(op.epilogue, ir.Requantize):
        row["multiplies"] += o * pix
        row["notes"] = list(op.epilogue.notes)
    elif isinstance(op.epilogue, (ir.Thresholds, ir.LevelThresholds)):
        row["thresholds"] = int(np.asarray(op.epilogue.threshold).size)
        row["notes"] = list(op.epilogue.notes)
    if op.in_lists is not None:
        kept = sum(len(x) for x in op.in_lists)
        row["connectivity"] = {"kernels_kept": kept, "kernels": o * c, "inputs_per_output":
                               round(kept / max(o, 1), 2)}
        row.setdefault("notes", []).append(
            f"expander connectivity: {kept} of {o * c} k x k kernels kept "
            f"({100 * kept / max(o * c, 1):.1f}%, {kept / max(o, 1):.1f} of {c} inputs per output)")
    if op.weight_error is not None:
        bits = max(2, int(np.abs(ir.int_weights(op)).max(initial=0)).bit_length() + 1)
        bound = float(op.acc_error.max()) if op.acc_error is not None else 0.0
        row["representation"] = (f"real-valued weights as int{bits} on 2^e per channel, "
                                 + ("exact" if not op.weight_error.any() else "rounded to nearest"))
        row["error_bound"] = bound
        row.setdefault("notes", []).append(
            row["representation"] + "; error bound vs real arithmetic: "
            + (f"|pre-activation error| <= {bound:.3g}" if bound else "exact (0)"))
    row.setdefault("notes", []).append(f"storage: {st['text']}")
    row["stored_bytes"] = family_stored_bytes(op, wb)
    total = st["weight_bits"] + st["scale_bits"] + st["index_bits"]
    row["compression"] = round(row["weight_bits_float32"] / max(total, 1), 2)


def layer_weight_bits(row: dict) -> int:
    """Bits of a layer's weight code: weights, scales and index lists."""
    return row["weight_bits"] + row.get("scale_bits", 0) + row.get("index_bits", 0)


def layer_weight_bytes(row: dict) -> float:
    """A layer's share of the totals' `weight_bytes`: its weight code + one int32 per threshold."""
    return layer_weight_bits(row) / 8 + 4 * row["thresholds"]


def totals(graph: ir.Graph, rows: list) -> dict:
    wbits = sum(layer_weight_bits(r) for r in rows)
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
        "arena_overlaps": len(graph.arena["overlaps"]),
        "binary_macs": int(sum(r["binary_macs"] for r in rows)),
        "int_macs": int(sum(r["int_macs"] for r in rows)),
        "channels_removed": int(sum(r["channels_removed"] for r in rows)),
        "popcounts": int(sum(r.get("popcounts", 0) for r in rows)),
        "multiplies": int(sum(r.get("multiplies", 0) for r in rows)),
    }


def report(graph: ir.Graph) -> dict:
    rows = layer_rows(graph)
    return {"layers": rows, "totals": totals(graph, rows) | {"output_error_bound": error_bounds.output_bound(graph)}, "input": {k: v for k, v in graph.input_info.items()
                                                                     if k != "grid"} | {"grid": graph.input_info["grid"]},
            "output": graph.output_info}


def format_table(rep: dict) -> str:
    cols = [("layer", "name"), ("op", "op"), ("code", "code"), ("in", "input_shape"), ("out", "output_shape"),
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
    lines.append(f"word popcounts: {t['popcounts']}, integer multiplies: {t['multiplies']}")
    lines.append(f"arena: {t['arena_bytes']} B (liveness lower bound {t['arena_lower_bound_bytes']} B"
                 + (f"; {t['arena_overlaps']} layer outputs over their inputs" if t["arena_overlaps"] else "") + ")")
    if t.get("output_error_bound"):
        lines.append(f"output: end-to-end error bound vs real arithmetic <= {t['output_error_bound']:.3g}")
    for r in rep["layers"]:
        for n in r.get("notes", []):
            lines.append(f"{r['name']}: {n}")
    return "\n".join(lines)
