"""Each `Activation` (an epilogue applied elementwise to an integer tensor) as a 1x1 Conv.

The Conv has identity integer weights (code "int", int_w[o, 0, 0, c] = [o == c]) and the
Activation's epilogue, so its accumulator is acc[c] = x[c] exactly and every output is unchanged.
Hardware backends run it on their matrix-vector-threshold unit (one AND plane whose mask is the
identity, weight_planes), which already holds threshold, level and requantization tables.
"""

from __future__ import annotations

import numpy as np

from .. import ir
from ..errors import BnncError


def activations_as_convs(graph: ir.Graph) -> ir.Graph:
    """The graph with every Activation of an integer tensor replaced by its identity 1x1 Conv
    (see module docstring); a graph without Activations is returned as is."""
    if not any(isinstance(op, ir.Activation) for op in graph.ops()):
        return graph
    out = graph.copy()
    for op in out.ops():
        if not isinstance(op, ir.Activation):
            continue
        src = out.tensors[op.inputs[0]]
        if not isinstance(src, ir.Ints):
            raise BnncError(f"'{op.name}': an activation of a {type(src).__name__} tensor has no "
                            "integer form a matrix unit can hold")
        c = src.shape[2]
        eye = np.eye(c, dtype=np.int64).reshape(c, 1, 1, c)
        conv = ir.Conv(op.name, list(op.inputs), list(op.outputs), (1, 1), (1, 1), (0, 0, 0, 0), eye.astype(np.int8),
                       np.ones(c), np.ones(c), op.epilogue, source_ops=[op.name], code="int", int_w=eye,
                       unit=np.ones(c))
        out.replace(conv)
    return out
