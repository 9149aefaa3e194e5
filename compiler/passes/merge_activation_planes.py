"""Layers that compute one accumulator and binarize it several ways become one layer whose output
holds the activations as channel planes (ABC-Net / PaBT activation bases A_n = sign(x - v_n)).

The frontend writes each activation of an accumulator as a layer of its own (a copy of the Conv or
ConvSum: same inputs, weights, geometry). Layers L_1 .. L_n (graph order) with equal inputs,
weights, geometry and stated errors compute the same integer accumulator acc (O channels); with
epilogues E_k that end in a bit terminal of one output scale s they output y_k = E_k(acc), +-s.
One Conv with epilogue `Planes([E_1, .., E_n])` outputs, on channel k * O + o, E_k(acc)[o]: the
channel concatenation Y = [y_1, .., y_n] of the same Bits type. Its readers then read Y exactly:

- a Conv reading y_k with weights W (O input channels) computes sum W * y_k = sum W' * Y with W'
  = W on channels k * O .. k * O + O - 1 and 0 elsewhere (`widen`: zero weights add exactly 0);
  a ConvSum's terms each read their plane so (then all of them read Y, `merge_summed_convs`);
- a MaxPool is per channel: the pools of the planes with one window are one pool of Y, whose
  planes are the pooled y_k (its readers are rewritten the same way, recursively).

A group is merged only when every reader of its planes (through MaxPools) is a Conv or a ConvSum:
any other reader (GlobalSumPool, Concat, Add, the model output...) leaves the layers as they are,
which computes the same values, the accumulator once per activation. The merged layer keeps the
first layer's name and output tensor (the pools: the first pool's); it lists the ONNX nodes of
all of them once each."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np

from .. import ir


def merge_activation_planes(graph: ir.Graph) -> ir.Graph:
    """`graph` with every group of activations of one accumulator as one Planes layer (a new graph)."""
    g = graph.copy()
    tried: set = set()
    while True:
        group = _next_group(g, tried)
        if group is None:
            return g
        tried.update(op.name for op in group)
        readers = _plane_readers(g, {k: op.outputs[0] for k, op in enumerate(group)})
        if readers is not None:
            _merge(g, group, readers)


def widen(conv, channels: int, offset: int = 0) -> None:
    """Pad the input-channel axis of every weight array of `conv` to `channels` (new channels read
    nothing; the conv's own channels start at `offset`). A binary code gains zeros: it becomes
    ternary. A ConvSum's terms are widened."""
    if isinstance(conv, ir.ConvSum):
        for t in conv.terms:
            widen(t, channels, offset)
        return
    c = conv.w.shape[3]
    if c == channels and offset == 0:
        return
    pad = ((0, 0), (0, 0), (0, 0), (offset, channels - c - offset))
    if conv.code == "binary":
        o = conv.w.shape[0]
        conv.code = "ternary"
        conv.int_w = conv.w.astype(np.int64)
        conv.bases = [ir.WeightBase(conv.w.copy(), np.ones(o, np.int64), np.ones(o, np.int64),
                                    conv.scale_p.copy(), conv.scale_n.copy())]
        conv.unit = conv.scale_p.copy()
    conv.w = np.pad(conv.w, pad)
    conv.int_w = np.pad(conv.int_w, pad)
    for b in conv.bases:
        b.w = np.pad(b.w, pad)


# ----------------------------------------------------------------------------- finding groups

_OWN = ("name", "outputs", "epilogue", "source_ops")  # what the layers of one group may differ in


def _next_group(g: ir.Graph, tried: set):
    """The first group (in graph order) of two or more bit layers with one accumulator, not yet tried."""
    layers = [op for op in g.ops() if op.name not in tried and _bit_layer(g, op)]
    for i, op in enumerate(layers):
        group = [op] + [p for p in layers[i + 1:] if _same(op, p, _OWN)
                        and g.tensors[p.outputs[0]].scale == g.tensors[op.outputs[0]].scale]
        if len(group) > 1:
            return group
    return None


def _bit_layer(g: ir.Graph, op) -> bool:
    ep = getattr(op, "epilogue", None)
    return isinstance(op, (ir.Conv, ir.ConvSum)) and isinstance(ep, ir.Chain) \
        and isinstance(ep.terminal, (ir.SignTerminal, ir.ThresholdTerminal)) and isinstance(g.tensors[op.outputs[0]], ir.Bits)


def _same(a, b, skip=()) -> bool:
    """Field-by-field equality of two IR objects (arrays by value, nested dataclasses recursively)."""
    if type(a) is not type(b):
        return False
    if dataclasses.is_dataclass(a):
        return all(_same(getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(a) if f.name not in skip)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    return a == b


def _plane_readers(g: ir.Graph, planes: dict):
    """The readers of the plane tensors {plane: tensor}: {"tensors": them, "layers": [(Conv or
    ConvSum, plane)], "pools": [({plane: MaxPool} of one window, the readers of their outputs)]};
    None when another op or the model output reads one of them (through MaxPools)."""
    layers, pools = [], {}
    for k, t in sorted(planes.items()):
        if t == g.output:
            return None
        for op in g.consumers(t):
            if isinstance(op, (ir.Conv, ir.ConvSum)):
                layers.append((op, k))
            elif isinstance(op, ir.MaxPool):
                pools.setdefault((tuple(op.kernel), tuple(op.stride), tuple(op.pads)), {})[k] = op
            else:
                return None
    groups = []
    for by_plane in pools.values():
        sub = _plane_readers(g, {k: p.outputs[0] for k, p in by_plane.items()})
        if sub is None:
            return None
        groups.append((by_plane, sub))
    return {"layers": layers, "pools": groups, "tensors": dict(planes)}


# ----------------------------------------------------------------------------- rewriting


def _merge(g: ir.Graph, group: list, readers: dict) -> None:
    first = group[0]
    o = first.channels if isinstance(first, ir.ConvSum) else first.w.shape[0]
    merged = copy.deepcopy(first)
    merged.epilogue = ir.Planes([op.epilogue for op in group])
    merged.source_ops = list(dict.fromkeys(s for op in group for s in op.source_ops))
    wide = first.outputs[0]
    ty = g.tensors[wide]
    for op in group[1:]:
        g.remove(op.name)
        del g.tensors[op.outputs[0]]
    g.tensors[wide] = ir.Bits(ty.shape[:2] + (o * len(group),), ty.scale)
    g.replace(merged)
    _read_wide(g, readers, wide, len(group), o)


def _read_wide(g: ir.Graph, readers: dict, wide: str, n: int, o: int) -> None:
    """Make the readers of the planes read them as channel blocks of `wide` (n planes of o)."""
    planes = readers["tensors"]
    leaves = {}  # id -> (Conv that reads a plane, plane)
    for op, _ in readers["layers"]:
        for leaf in _leaf_convs(op):
            k = next((k for k, t in planes.items() if leaf.inputs == [t]), None)
            if k is not None:
                leaves[id(leaf)] = (leaf, k)
    for leaf, k in leaves.values():
        widen(leaf, n * o, k * o)
        leaf.inputs = [wide]
    for op, _ in readers["layers"]:
        if isinstance(op, ir.ConvSum):
            _set_sum_inputs(op)
        g.replace(op)
    for by_plane, sub in readers["pools"]:
        names = {p.name for p in by_plane.values()}
        pools = [p for p in g.ops() if p.name in names]  # graph order: the first keeps its name
        keep = pools[0]
        for p in pools[1:]:
            g.remove(p.name)
            del g.tensors[p.outputs[0]]
        keep.inputs = [wide]
        ty = g.tensors[keep.outputs[0]]
        g.tensors[keep.outputs[0]] = dataclasses.replace(ty, shape=ty.shape[:2] + (n * o,))
        g.replace(keep)
        _read_wide(g, sub, keep.outputs[0], n, o)


def _leaf_convs(op) -> list:
    return [op] if isinstance(op, ir.Conv) else [c for t in op.terms for c in _leaf_convs(t)]


def _set_sum_inputs(op: ir.ConvSum) -> None:
    """A ConvSum reads the tensors its terms read (in term order)."""
    for t in op.terms:
        if isinstance(t, ir.ConvSum):
            _set_sum_inputs(t)
    op.inputs = list(dict.fromkeys(x for t in op.terms for x in t.inputs))
