"""Shared test helpers: compile a random model and run every stage on the same inputs."""

import numpy as np

from bnnc import driver
from bnnc.original import OriginalModel
from bnnc.pipeline import compile_graph
from bnnc.testing.random_models import random_inputs, random_model


def random_case(seed: int, n_inputs: int = 20):
    model, spec = random_model(seed)
    graph = compile_graph(model)
    x = random_inputs(model, n_inputs, seed=seed + 1)
    return model, spec, graph, driver.prepare_inputs(graph, x)


def assert_matches_original(model, graph, inputs, ref, rtol=1e-4):
    orig = OriginalModel(model).run(inputs.model).reshape(ref.shape)
    if ref.dtype.kind == "f":
        tol = rtol * max(1.0, float(np.abs(orig).max()))
        assert np.abs(ref - orig).max() <= tol
        assert np.array_equal(ref.reshape(len(ref), -1).argmax(1), orig.reshape(len(orig), -1).argmax(1))
    else:
        assert np.array_equal(ref.reshape(-1), orig.reshape(-1).astype(ref.dtype))


def live_spans(g) -> dict:
    """{buffer: (first op, last op)} recomputed from the graph, independently of the planner."""
    spans = {}
    for i, op in enumerate(g.ops()):
        for t in list(op.outputs) + list(op.inputs) + [op.name + "_scratch"]:
            while t in g.arena["in_place"]:  # a sum written over its operand: one buffer
                t = g.arena["in_place"][t]
            if t in g.arena["buffers"]:
                a, b = spans.get(t, (i, i))
                spans[t] = (min(a, i), max(b, i))
    return spans
