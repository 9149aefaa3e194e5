"""The ONNX frontend: one handler per ONNX op (registry.HANDLERS), grouped by kind in the modules
of this package, working on a LoweringContext; compiler/lower.py walks the graph and calls them.

Every module of the package is imported here, so a new module's handlers register themselves."""

import importlib
import pkgutil

from .context import FRAC_BITS, LoweringContext
from .registry import HANDLERS, supported_ops, where

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

SUPPORTED_OPS = supported_ops()

__all__ = ["FRAC_BITS", "HANDLERS", "LoweringContext", "SUPPORTED_OPS", "where"]
