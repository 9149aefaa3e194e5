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


def assert_live_buffers_apart(g) -> None:
    """Buffers live at the same op lie apart in the arena, but an output planned over its input
    (arena["overlaps"]: it starts exactly D bytes below the input; raster_distance says why that
    is safe); every buffer keeps the arena's alignment."""
    arena, spans = g.arena, live_spans(g)
    overlaps = arena.get("overlaps", {})
    assert all(off % arena["align"] == 0 for off in arena["buffers"].values())
    names = sorted(spans)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if not (spans[a][0] <= spans[b][1] and spans[b][0] <= spans[a][1]):
                continue
            oa, ob = arena["buffers"][a], arena["buffers"][b]
            if overlaps.get(b, [None])[0] == a or overlaps.get(a, [None])[0] == b:
                out, src = (b, a) if b in overlaps else (a, b)
                assert arena["buffers"][out] == arena["buffers"][src] - overlaps[out][1], f"{out} misplaced over {src}"
                continue
            assert oa + arena["sizes"][a] <= ob or ob + arena["sizes"][b] <= oa, f"{a} and {b} overlap"
