"""PE x SIMD folding: validation, the cycle model and the cheapest-folding search."""

import itertools
import json

import numpy as np
import pytest

from bnnc import folding
from bnnc.errors import BnncError
from bnnc.pipeline import compile_graph
from bnnc.testing.random_models import random_model, tfc_model


@pytest.fixture(scope="module")
def tfc():
    return compile_graph(tfc_model(0))


def test_cycles_are_folds_times_pixels(tfc):
    layers = folding.foldable_layers(tfc)
    assert [L.pixels for L in layers] == [1] * len(layers)
    L = layers[0]
    f = folding.LayerFolding(L, 5, 7)
    assert f.cycles == -(-L.mh // 5) * -(-L.mw // 7)
    assert folding.LayerFolding(L, L.mh, L.mw).cycles == 1
    assert folding.LayerFolding(L, 1, 1).cycles == L.mh * L.mw


def test_parse_by_order_and_by_name(tfc, tmp_path):
    layers = folding.foldable_layers(tfc)
    spec = {"layers": [{"pe": 1, "simd": 1} for _ in layers]}
    spec["layers"][1] = {"pe": 2, "simd": 4}
    p = tmp_path / "f.json"
    p.write_text(json.dumps(spec))
    fs = folding.parse_folding(str(p), tfc)
    assert [(f.pe, f.simd) for f in fs][1] == (2, 4)
    fs = folding.parse_folding({"layers": [{"name": layers[2].name, "pe": 4, "simd": 8}]}, tfc)
    assert [(f.pe, f.simd) for f in fs] == [(1, 1), (1, 1), (4, 8), (1, 1)]


@pytest.mark.parametrize("spec, words", [
    ({"layers": [{"pe": 1, "simd": 1}]}, ["1 entries", "4 conv/dense"]),
    ({"layers": [{"pe": 0, "simd": 1}] * 4}, ["pe must be a positive integer"]),
    ({"layers": [{"pe": 1.5, "simd": 1}] * 4}, ["pe must be a positive integer"]),
    ({"layers": [{"pe": 1, "simd": 100000}] * 4}, ["SIMD=100000 exceeds"]),
    ({"layers": [{"pe": 1, "simd": 1, "depth": 2}] * 4}, ["keys pe, simd"]),
    ({"layers": [{"name": "nope", "pe": 1, "simd": 1}]}, ["'nope'", "not a conv/dense layer"]),
    ({"pe": 1}, ["a folding is"]),
])
def test_bad_foldings_are_explained(tfc, spec, words):
    with pytest.raises(BnncError) as e:
        folding.parse_folding(spec, tfc)
    for w in words:
        assert w in str(e.value)


def test_bad_folding_files(tfc, tmp_path):
    with pytest.raises(BnncError, match="does not exist"):
        folding.parse_folding(str(tmp_path / "missing.json"), tfc)
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(BnncError, match="not valid JSON"):
        folding.parse_folding(str(p), tfc)


@pytest.mark.parametrize("seed", range(8))
def test_chosen_folding_is_the_cheapest_that_meets_the_budget(seed):
    g = compile_graph(random_model(seed)[0])
    layers = folding.foldable_layers(g)
    rng = np.random.default_rng(seed)
    fastest = max(L.pixels for L in layers)  # fully parallel: one cycle per output pixel
    budget = max(fastest, int(max(L.macs for L in layers) // rng.integers(2, 200)) + 1)
    chosen = folding.choose_folding(g, budget)
    assert folding.analytic_ii(chosen) <= budget
    for L, f in zip(layers, chosen):
        # brute force over every legal (pe, simd): nothing meeting the budget is cheaper
        best = min(folding.cost(folding.LayerFolding(L, pe, simd))
                   for pe, simd in itertools.product(range(1, L.mh + 1), range(1, L.mw + 1))
                   if folding.LayerFolding(L, pe, simd).cycles <= budget)
        assert folding.cost(f) == best


def test_unmeetable_budget_and_conflicting_options(tfc):
    with pytest.raises(BnncError, match="cannot be met"):
        folding.choose_folding(compile_graph(random_model(3)[0]), 0)
    with pytest.raises(BnncError, match="not both"):
        folding.resolve(tfc, {"layers": []}, 100)
    assert folding.analytic_ii(folding.resolve(tfc)) >= 1
