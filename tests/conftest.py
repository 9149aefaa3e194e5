import os
from pathlib import Path

import pytest

# every model the tests compile is checked by ir.verify after the frontend and after every pass
os.environ.setdefault("BNNC_VERIFY_IR", "1")
# no progress lines from the commands the tests run: a step slower than 2 s on a loaded machine
# would print lines before the one-line errors the tests check (progress tests set their own level)
os.environ.setdefault("BNNC_PROGRESS", "quiet")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "models"


def sweep_scale() -> float:
    """BNNC_SWEEP_SCALE multiplies the size of the randomized sweeps (CI runs 1)."""
    return float(os.environ.get("BNNC_SWEEP_SCALE", "1"))


@pytest.fixture
def shared_models() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/models is not present")
    return SHARED
