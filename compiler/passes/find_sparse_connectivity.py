"""Expander / sparse connectivity (X-Nets): per output channel, the input channels it reads.

A layer whose output channel o reads only some input channels has all-zero k x k kernels
int_w[o, :, :, c] for the others. When at least `MIN_ZERO_FRACTION` of the kernels of its live
(non-pruned) rows are all zero, the pass records `in_lists[o]` = the input channels with a
nonzero kernel. The weights are unchanged (the zero kernels contribute exactly 0), so the
accumulator and every output are unchanged; the lists tell backends which kernels to skip and
the report what connectivity is kept (networks.md section 5).
"""

from __future__ import annotations

import numpy as np

from .. import ir

MIN_ZERO_FRACTION = 0.25


def connectivity(conv: ir.Conv) -> np.ndarray:
    """bool (O, C): kernel (o, c) has a nonzero weight."""
    w = ir.int_weights(conv)
    return np.any(w != 0, axis=(1, 2))


def find_sparse_connectivity(graph: ir.Graph) -> ir.Graph:
    """Attach `in_lists` to Convs with many all-zero kernels (see module docstring)."""
    out = graph.copy()
    for op in out.ops():
        if not isinstance(op, ir.Conv) or op.in_lists is not None:
            continue
        conn = connectivity(op)
        live = conn.any(axis=1)
        if not live.any() or conn.shape[1] < 2:
            continue
        zero_fraction = 1.0 - conn[live].sum() / (live.sum() * conn.shape[1])
        if zero_fraction < MIN_ZERO_FRACTION:
            continue
        op.in_lists = [np.flatnonzero(row).astype(np.int32) for row in conn]
        out.replace(op)
    return out
