"""The one table of ONNX op handlers.

A handler lowers one ONNX node: `handler(ctx, node, **attributes)`, the node's attributes as
keyword parameters with the ONNX defaults. Attributes the ONNX (or QONNX / FINN) definition
allows but that do not change what bnnc computes are listed in `ignores`; any other attribute is
refused with the node named.
"""

from __future__ import annotations

import inspect

from ..errors import BnncError

HANDLERS: dict = {}  # ONNX op type -> Handler


def where(node) -> str:
    """How messages name an ONNX node."""
    return f"node '{node.name}' ({node.op})"


class Handler:
    def __init__(self, op: str, fn, listed_as: tuple, ignores: tuple):
        self.op = op
        self.fn = fn
        self.listed_as = listed_as  # how the supported-ops list names it
        params = inspect.signature(fn).parameters.values()
        self.attributes = frozenset(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)
        self.ignores = frozenset(ignores)

    def __call__(self, ctx, node) -> None:
        unknown = sorted(a for a in node.attrs if a not in self.attributes and a not in self.ignores)
        if unknown:
            known = sorted(self.attributes | self.ignores)
            raise BnncError(f"{where(node)} has attribute '{unknown[0]}', which bnnc does not "
                            f"know for {node.op} (known: {', '.join(known) or 'none'})")
        self.fn(ctx, node, **{k: v for k, v in node.attrs.items() if k in self.attributes})


def handler(op: str, *, listed_as=None, ignores: tuple = ()):
    """Register the decorated function as the handler of ONNX op `op`. `listed_as`: the entries
    it contributes to the supported-ops list (default: the op's name)."""

    def register(fn):
        if op in HANDLERS:
            raise ValueError(f"two handlers for ONNX op {op}")
        names = (op,) if listed_as is None else ((listed_as,) if isinstance(listed_as, str) else tuple(listed_as))
        HANDLERS[op] = Handler(op, fn, names, ignores)
        return fn

    return register


def supported_ops() -> list:
    """What error messages list as supported, sorted."""
    return sorted(name for h in HANDLERS.values() for name in h.listed_as)
