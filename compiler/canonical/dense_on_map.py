"""A dense layer applied to every pixel of a channel-last map (Keras's Dense on a 4-D tensor, which
tf2onnx writes as Reshape to (N*H*W, C) -> MatMul -> Reshape back to (N, H, W, O); PyTorch's
nn.Linear on an (N, H, W, C) tensor, a MatMul of the 4-D tensor) as the 1 x 1 convolution it is:
Transpose to (N, C, H, W) -> Conv with weights B^T (O, C, 1, 1) -> Transpose back to (N, H, W, O).
`sink_layout_transposes` then cancels the Transposes against the layout ones around them.

Preserves: every output is the same sum over c of x[n, h, w, c] * B[c, o], its products added in
another order (bnnc computes a layer's sum exactly, so its result does not depend on the order).
Applies where B is a constant (C, O) float32 matrix, the map's H, W and C are static (H * W > 1), and the
Reshapes' intermediate tensors have no other reader; anything else is left unchanged.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..original import static_shapes
from .graph_edit import Names, add_initializer, constant_values, consumers, copy_model, drop_unused, graph_outputs, \
    is_standard, producers, replace_nodes, sole_reader

TO_NCHW = [0, 3, 1, 2]
TO_NHWC = [0, 2, 3, 1]


def dense_on_map_to_pointwise_conv(model: onnx.ModelProto) -> onnx.ModelProto:
    if not any(n.op_type == "MatMul" for n in model.graph.node):
        return model
    out = copy_model(model)
    g = out.graph
    shapes, values = static_shapes(out), constant_values(g)
    names = Names(g)
    changed = False
    for mm in [n for n in g.node if n.op_type == "MatMul" and is_standard(n)]:
        changed |= _rewrite(g, mm, shapes, values, names)
    if changed:
        drop_unused(out)
    return out if changed else model


def _rewrite(g: onnx.GraphProto, mm: onnx.NodeProto, shapes: dict, values: dict, names: Names) -> bool:
    """Replace the dense-on-map pattern at MatMul `mm` (module docstring); False where it does not apply."""
    b = values.get(mm.input[1])
    if b is None or b.ndim != 2 or b.dtype != np.float32:
        return False
    c, o = b.shape
    first, last = mm, mm
    x_shape = shapes.get(mm.input[0])
    if not _is_map(x_shape, c):  # the Tensordot form: Reshape (N*H*W, C) -> MatMul -> Reshape (N, H, W, O)
        readers, outs, prods = consumers(g), graph_outputs(g), producers(g)
        first = prods.get(mm.input[0])
        last = sole_reader(readers, outs, mm.output[0])
        if first is None or first.op_type != "Reshape" or last is None or last.op_type != "Reshape" \
                or not is_standard(first) or not is_standard(last) or last.input[0] != mm.output[0] \
                or sole_reader(readers, outs, first.output[0]) is not mm:
            return False
        x_shape = shapes.get(first.input[0])
        if not _is_map(x_shape, c):
            return False
        n, h, w = x_shape[0] or 1, x_shape[1], x_shape[2]
        rows, back = values.get(first.input[1]), values.get(last.input[1])
        if rows is None or back is None or list(rows) not in ([-1, c], [n * h * w, c]) \
                or list(back) not in ([n, h, w, o], [-1, h, w, o]):
            return False
    x, y = first.input[0], last.output[0]
    weights = add_initializer(g, names, np.ascontiguousarray(b.T).reshape(o, c, 1, 1), "pointwise_weights")
    nchw, conv_out = names.fresh(x + "_nchw"), names.fresh(y + "_nchw")
    base = mm.name or y
    new = [helper.make_node("Transpose", [x], [nchw], name=names.fresh(base + "_to_nchw"), perm=TO_NCHW),
           helper.make_node("Conv", [nchw, weights], [conv_out], name=names.fresh(base + "_pointwise"),
                            kernel_shape=[1, 1]),
           helper.make_node("Transpose", [conv_out], [y], name=names.fresh(base + "_to_nhwc"), perm=TO_NHWC)]
    replace_nodes(g, list({id(n): n for n in (first, mm, last)}.values()), new)
    return True


def _is_map(shape, c: int) -> bool:
    """Whether `shape` is a 4-D (N, H, W, C) map with static H, W and this C, of more than one pixel
    (on one pixel the MatMul is a dense layer of a vector already)."""
    return shape is not None and len(shape) == 4 and None not in shape[1:] and shape[3] == c \
        and shape[1] * shape[2] > 1
