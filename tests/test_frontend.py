"""The frontend's handler table: one handler per ONNX op, attributes as keyword parameters with
defaults, the supported-ops list of error messages derived from it, unknown attributes refused."""

import inspect

import pytest
from onnx import helper

from bnnc.errors import BnncError
from bnnc.frontend import HANDLERS, SUPPORTED_OPS
from bnnc.pipeline import compile_graph
from bnnc.testing.random_models import random_model


def test_every_handler_takes_attributes_as_keywords_with_defaults():
    for op, h in HANDLERS.items():
        params = list(inspect.signature(h.fn).parameters.values())
        assert [p.name for p in params[:2]] == ["ctx", "node"], op
        for p in params[2:]:
            assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty, (op, p)
        assert not (h.attributes & h.ignores), op


def test_supported_ops_come_from_the_registry():
    assert SUPPORTED_OPS == sorted(SUPPORTED_OPS)
    for op, h in HANDLERS.items():
        assert set(h.listed_as) <= set(SUPPORTED_OPS), op
    assert {"Conv", "Gemm", "MatMul", "Sign", "MultiThreshold", "Quant", "TopK", "ArgMax"} <= set(HANDLERS)


@pytest.mark.parametrize("op, attribute", [("Conv", "frobnicate"), ("Gemm", "transC")])
def test_unknown_attribute_is_refused(op, attribute):
    model, _ = random_model(12)
    node = next(n for n in model.graph.node if n.op_type == op)
    node.attribute.append(helper.make_attribute(attribute, 1))
    with pytest.raises(BnncError, match=f"'{node.name}' \\({op}\\) has attribute '{attribute}'") as e:
        compile_graph(model)
    assert "\n" not in str(e.value)


def test_ignored_attributes_are_accepted():
    model, _ = random_model(12)
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    kept = [a for a in bn.attribute if a.name != "momentum"]  # set once (twice is refused)
    del bn.attribute[:]
    bn.attribute.extend(kept + [helper.make_attribute("momentum", 0.5)])
    compile_graph(model)
