"""A dilated convolution (Keras' `dilation_rate`, larq-zoo's BinaryDenseNet37Dilated) written as the
undilated convolution whose kernel holds the same taps d apart with zeros between them: kernel
size (k - 1) * d + 1 per axis, tap j at j * d; strides, pads and groups unchanged.

Preserves: every output is the same sum of the same products; the added taps multiply an input
(or a zero pad) by 0. Not necessarily bit-exact in onnxruntime, which may add the products of the
larger kernel in another order (float32 results can differ in the last bits); bnnc's lowering
computes convolutions as exact integer sums, so the deployed network is unaffected. The cost: the kernel is
((k - 1) * d + 1)^2 / k^2 times larger (3x3 dilated by 2: 25 taps for 9; by 4: 81 for 9), and
binary weights with zeros between them become ternary codes in the lowering; a dilation in the IR
itself would keep k^2 taps.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from .graph_edit import Names, add_initializer, attrs, constant_values, copy_model, drop_unused, is_standard


# the largest dilated kernel written out: extent per axis (a larger one covers no real image) and
# weights in all (a hostile dilation must not exhaust memory before the window check refuses it)
MAX_EXTENT = 4096
MAX_DENSE_WEIGHTS = 2**26


def dilated_conv_to_dense_kernel(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    g = out.graph
    values = constant_values(g)
    names = Names(g)
    for n in list(g.node):
        if n.op_type != "Conv" or not is_standard(n) or len(n.input) < 2 or n.input[1] not in values:
            continue
        a = attrs(n)
        d = [int(v) for v in a.get("dilations", [])]
        w = np.asarray(values[n.input[1]])
        if not d or all(v == 1 for v in d) or len(d) != w.ndim - 2 or min(d) < 1:
            continue
        k = w.shape[2:]
        extent = [(kk - 1) * dd + 1 for kk, dd in zip(k, d)]
        if max(extent) > MAX_EXTENT or int(np.prod(w.shape[:2])) * int(np.prod(extent)) > MAX_DENSE_WEIGHTS:
            continue  # left as it is: the lowering refuses it, naming the node
        dense = np.zeros(w.shape[:2] + tuple(extent), w.dtype)
        dense[(slice(None), slice(None)) + tuple(slice(None, None, dd) for dd in d)] = w
        geometry = {key: v for key, v in a.items() if key not in ("dilations", "kernel_shape")}
        geometry["kernel_shape"] = list(dense.shape[2:])
        inputs = list(n.input)
        inputs[1] = add_initializer(g, names, dense, n.input[1])
        idx = list(g.node).index(n)
        g.node.remove(n)
        g.node.insert(idx, helper.make_node("Conv", inputs, list(n.output), name=n.name, **geometry))
    drop_unused(out)
    return out
