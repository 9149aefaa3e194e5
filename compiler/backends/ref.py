"""`--target ref`: the Python reference executor, the single definition of the numbers."""

from __future__ import annotations

from .. import reference


def run(graph, grid, opts):
    return reference.run(graph, grid), {}
