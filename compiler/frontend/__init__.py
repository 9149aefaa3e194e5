"""The ONNX frontend: one handler per ONNX op (registry.HANDLERS), grouped by kind in the modules
below, working on a LoweringContext; compiler/lower.py walks the graph and calls them."""

from . import activations, elementwise, heads, linear, pooling, shape  # noqa: F401  (fill the registry)
from .context import FRAC_BITS, LoweringContext
from .registry import HANDLERS, supported_ops, where

SUPPORTED_OPS = supported_ops()

__all__ = ["FRAC_BITS", "HANDLERS", "LoweringContext", "SUPPORTED_OPS", "where"]
