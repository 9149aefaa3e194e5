"""bnnc: a deployment compiler for compressed (binary, ternary, multi-bit, pruned) neural networks."""

__version__ = "0.1.0"
