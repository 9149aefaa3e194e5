"""Reshape -> Transpose -> Reshape chains that move the elements of an (N, C, H, W) tensor between
its channels and pixels (PyTorch's pixel_unshuffle and pixel_shuffle as the exporters write them
through 6-D shapes) as one SpaceToDepth or DepthToSpace (either mode), followed where their channel
orders differ by a Gather of the channels (axis 1).

Matched: a Reshape of a 4-D tensor to any shape, read only by a Transpose, read only by a Reshape
to 4-D, static shapes, none of the inner tensors a graph output, whose composite element map is
such an op's with the output channels permuted (found by running the three on element indices and
the candidates likewise: block sizes from the shapes). Preserves every value exactly: the chain
and its replacement move the same elements to the same places.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..original import static_shapes
from .graph_edit import (Names, add_initializer, attrs, constant_values, copy_model, drop_unused, replace_nodes,
                         reshape_transpose_reshape)


def _candidates(shape: tuple, out: tuple) -> list:
    """[(op type, attributes, element map)] of the SpaceToDepth / DepthToSpace ops from `shape` to
    `out` (N, C, H, W): map[n, c, y, x] = the input element (NCHW flat index) the op puts there."""
    n, c, h, w = shape
    idx = np.arange(n * c * h * w).reshape(shape)
    found = []
    if 0 < out[2] < h and h % out[2] == 0:
        b = h // out[2]
        if w % b == 0 and out == (n, c * b * b, h // b, w // b):
            m = idx.reshape(n, c, h // b, b, w // b, b).transpose(0, 3, 5, 1, 2, 4).reshape(out)
            found.append(("SpaceToDepth", {"blocksize": b}, m))
    if 0 < h < out[2] and out[2] % h == 0:
        b = out[2] // h
        if c % (b * b) == 0 and out == (n, c // (b * b), h * b, w * b):
            dcr = idx.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2).reshape(out)
            crd = idx.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3).reshape(out)
            found += [("DepthToSpace", {"blocksize": b, "mode": "DCR"}, dcr),
                      ("DepthToSpace", {"blocksize": b, "mode": "CRD"}, crd)]
    return found


def _channel_order(op_map: np.ndarray, chain_map: np.ndarray):
    """order with chain_map[:, k] == op_map[:, order[k]] for every channel k, else None."""
    planes = {op_map[:, j].tobytes(): j for j in range(op_map.shape[1])}
    order = [planes.get(chain_map[:, k].tobytes()) for k in range(chain_map.shape[1])]
    return None if None in order else order


def pixel_moves_to_space_depth(model: onnx.ModelProto) -> onnx.ModelProto:
    g0 = model.graph
    if not any(n.op_type == "Transpose" and len(attrs(n).get("perm", [])) > 4 for n in g0.node):
        return model
    out = copy_model(model)
    g = out.graph
    shapes = static_shapes(out)  # None where a dimension is unknown: no match below
    names = Names(g)
    changed = False
    for first, trans, last in reshape_transpose_reshape(g, constant_values(g)):
        x = first.input[0]
        shape, mid, end = shapes.get(x), shapes.get(first.output[0]), shapes.get(last.output[0])
        if shape is None or mid is None or end is None or len(shape) != 4 or len(end) != 4:
            continue
        perm = list(attrs(trans).get("perm", reversed(range(len(mid)))))
        chain = np.arange(int(np.prod(shape))).reshape(mid).transpose(perm).reshape(end)
        for op_type, kw, op_map in _candidates(tuple(shape), tuple(end)):
            order = _channel_order(op_map, chain)
            if order is None:
                continue
            moved = last.output[0] if order == list(range(end[1])) else names.fresh(last.output[0] + "_moved")
            new = [helper.make_node(op_type, [x], [moved], name=last.name or names.fresh(op_type), **kw)]
            if moved != last.output[0]:
                idx = add_initializer(g, names, np.array(order, np.int64), x + "_channels")
                new.append(helper.make_node("Gather", [moved, idx], [last.output[0]], name=names.fresh("Gather"),
                                            axis=1))
            replace_nodes(g, [first, trans, last], new)
            changed = True
            break
    if not changed:
        return model
    drop_unused(out)
    return out
