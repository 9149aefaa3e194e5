"""Every shared real-world model (../shared/models/wild) compiles, runs and verifies with the
input its README declares: target == reference bit for bit, and the reference agrees with the
original model in onnxruntime (same top-1 on at least 99% of samples, `bnnc verify`'s rule)."""

import pytest

from bnnc.cli import main
from bnnc.testing.wild import WILD_MODELS, wild_dir

def _cases():
    for name, flags in WILD_MODELS.items():
        yield pytest.param(name, flags, id=name)


@pytest.fixture
def wild():
    d = wild_dir()
    if not d.is_dir():
        pytest.skip("../shared/models/wild is not present")
    return d


@pytest.mark.parametrize("name,flags", list(_cases()))
@pytest.mark.parametrize("target", ["ref", "c"])
def test_wild_model_verifies(wild, name, flags, target, capsys):
    n = "100" if target == "ref" else "20"
    rc = main(["verify", str(wild / f"{name}.onnx"), *flags, "--target", target, "--samples", n])
    out, err = capsys.readouterr()
    assert rc == 0, (out + err)[-2000:]
    assert f"{n}/{n}" in out.split("bit-exact")[1].splitlines()[0]


def test_options_of_reads_the_flags_as_the_cli_does():
    """bench/bench_wild.py compiles with options_of: the README's flags as the command line reads them."""
    from bnnc.testing.wild import AP_FIXED_16_6, IMAGENET, options_of

    fixed = options_of(AP_FIXED_16_6)
    assert fixed.input_scale == 2.0**-10 and fixed.input_range == (-32768, 32767) and fixed.input_affine is None
    image = options_of(IMAGENET)
    assert image.input_range == (0, 255) and image.input_affine is not None
