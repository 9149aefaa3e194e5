"""Where the data folders (templates/, runtime/, hw/) are, in a source checkout or a wheel."""

from __future__ import annotations

import importlib.resources
from pathlib import Path


def resource_dir(name: str) -> Path:
    """templates/, runtime/ or hw/ as a real directory."""
    try:
        p = Path(str(importlib.resources.files(f"bnnc.{name}")))
        if p.is_dir():
            return p
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parent.parent / name
