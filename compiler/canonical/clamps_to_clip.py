"""Chains of clamps to constant bounds (`Min` / `Max` with a scalar constant, `Clip`; TensorFlow's
`clip_by_value` is written by tf2onnx as Min then Max) merged into one `Clip(x, lo, hi)`.

Matched: Min / Max with one scalar float constant operand (broadcast to the other, dynamic one),
Clip with constant scalar bounds; each tensor inside a chain read only by the next clamp and no
graph output. Preserves exactly: min(x, c) and max(x, c) are clip(x, -inf, c) and clip(x, c, inf);
clip(clip(x, a, b), c, d) = clip(x, max(a, c), min(b, d)) whenever max(a, c) <= min(b, d) (a chain
whose bounds cross is left alone); every float32 x, NaN included (each form returns NaN for NaN).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .graph_edit import (Names, add_initializer, attrs, constant_values, consumers, copy_model, default_opset,
                         drop_unused, graph_outputs, is_standard, producers, scalar_constant, scalar_operand,
                         sole_reader)


def clamp_bounds(node: onnx.NodeProto, values: dict):
    """(dynamic input, lo, hi) of a clamp to constant scalar bounds (open sides +-inf), else None."""
    if not is_standard(node) or node.op_type not in ("Min", "Max", "Clip"):
        return None
    if node.op_type == "Clip":
        a = attrs(node)
        lo, hi = float(a.get("min", -np.inf)), float(a.get("max", np.inf))
        for i in (1, 2):
            if len(node.input) > i and node.input[i]:
                c = scalar_constant(values, node.input[i], "f")
                if c is None:
                    return None
                lo, hi = (float(c), hi) if i == 1 else (lo, float(c))
        return (node.input[0], lo, hi) if node.input[0] not in values else None
    found = scalar_operand(node, values)
    if found is None:
        return None
    x, v = found
    return (x, -np.inf, float(v)) if node.op_type == "Min" else (x, float(v), np.inf)


def clamps_to_clip(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    g = out.graph
    values, prods, readers = constant_values(g), producers(g), consumers(g)
    outs = graph_outputs(g)
    names = Names(g)
    opset = default_opset(out)
    changed, merged = False, set()
    for last in reversed(list(g.node)):  # readers first (nodes are in topological order)
        b = clamp_bounds(last, values)
        if b is None or id(last) in merged:
            continue
        x, lo, hi = b
        chain = [last]
        while x in prods and sole_reader(readers, outs, x) is not None:
            inner = clamp_bounds(prods[x], values)
            if inner is None or max(lo, inner[1]) > min(hi, inner[2]):
                break
            chain.append(prods[x])
            merged.add(id(prods[x]))
            x, lo, hi = inner[0], max(lo, inner[1]), min(hi, inner[2])
        if len(chain) == 1 and last.op_type == "Clip":
            continue
        if opset >= 11:
            bounds = [add_initializer(g, names, np.float32(v), hint) if np.isfinite(v) else ""
                      for v, hint in ((lo, "clip_min"), (hi, "clip_max"))]
            while bounds and not bounds[-1]:
                bounds.pop()
            clip = helper.make_node("Clip", [x] + bounds, [last.output[0]], name=last.name or names.fresh("Clip"))
        else:
            kw = {k: float(v) for k, v in (("min", lo), ("max", hi)) if np.isfinite(v)}
            clip = helper.make_node("Clip", [x], [last.output[0]], name=last.name or names.fresh("Clip"), **kw)
        idx = list(g.node).index(last)
        g.node.remove(last)
        g.node.insert(idx, clip)
        changed = True
    if changed:
        drop_unused(out)
    return out
