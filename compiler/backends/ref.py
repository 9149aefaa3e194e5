"""`--target ref`: the Python reference executor, the single definition of the numbers."""

from __future__ import annotations

import time

import numpy as np

from .. import reference


def run(graph, grid, opts):
    """Outputs of the reference; with opts.measure, each sample is run on its own and timed
    (the latency of one inference in numpy), else all in batches."""
    n = grid.shape[0]
    t0 = time.perf_counter()
    if not (opts.measure and n):
        y = reference.run(graph, grid)
        return y, {"target": "ref", "samples": n, "run_seconds": round(time.perf_counter() - t0, 6)}
    ys, us = [], []
    for i in range(n):
        t = time.perf_counter()
        ys.append(reference.run(graph, grid[i: i + 1]))
        us.append((time.perf_counter() - t) * 1e6)
    return np.concatenate(ys), {"target": "ref", "samples": n, "run_seconds": round(time.perf_counter() - t0, 6),
                                "latency_us_mean": round(float(np.mean(us)), 3),
                                "latency_us_min": round(float(np.min(us)), 3),
                                "latency_us_max": round(float(np.max(us)), 3)}
