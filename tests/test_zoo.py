"""bnnc.zoo: seeded, valid, deterministic ONNX models of every family, and `bnnc demo --zoo`."""

import numpy as np
import onnx
import pytest

from bnnc import zoo
from bnnc.cli import main
from bnnc.errors import BnncError

QUICK = [n for n in zoo.names() if n not in ("cnv", "cnv-stq40", "resnet18-stq")]


@pytest.mark.parametrize("name", QUICK)
def test_models_are_valid_and_deterministic(name):
    a, b, c = zoo.build(name, 4), zoo.build(name, 4), zoo.build(name, 5)
    onnx.checker.check_model(a, full_check=True)
    assert a.SerializeToString() == b.SerializeToString()
    assert a.SerializeToString() != c.SerializeToString()
    assert a.ir_version <= 10 and a.graph.output[0].name == "logits"


def test_every_family_has_a_model():
    assert set(zoo.FAMILIES) <= set(zoo.names())
    for name in zoo.names():
        assert zoo.MODELS[name][1]  # a description for the CLI


def test_inputs_cover_the_input_grid():
    model = zoo.build("hbn", 0)  # uint8 input, scale 2^-7
    x = zoo.inputs(model, 50, seed=1)
    assert x.shape == (50, 3, 16, 16) and x.dtype == np.float32
    q = np.rint(x / 2.0**-7)
    assert q.min() <= 5 and q.max() >= 250


def test_unknown_model_is_an_error():
    with pytest.raises(BnncError, match="unknown zoo model 'nope'.*ternary-ttq"):
        zoo.build("nope")


def test_demo_runs_a_zoo_model(tmp_path, capsys):
    rc = main(["demo", "--zoo", "pabt", "--dir", str(tmp_path / "d"), "--seed", "2"])
    out = capsys.readouterr().out
    assert rc == 0 and out.strip().splitlines()[-1] == "PASS"
    assert "zoo model 'pabt'" in out and (tmp_path / "d" / "pabt.onnx").is_file()
    assert (tmp_path / "d" / "c" / "bnnc_families.h").is_file()


def test_demo_with_an_unknown_zoo_name_exits_2(tmp_path, capsys):
    rc = main(["demo", "--zoo", "nope", "--dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("bnnc: error: unknown zoo model 'nope'")
