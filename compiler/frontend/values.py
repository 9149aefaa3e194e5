"""What a dynamic ONNX tensor is in integer terms while the frontend walks the graph.

Two families:
- pending values (`PendingVal`): float32 ops the model applies that wait for a terminal (a
  quantizer, a sign) before they become an IR tensor: the raw model input (`InputVal`), the
  accumulator of an IR Conv (`AccVal`), an integer tensor with elementwise ops (`IntChainVal`);
- IR tensors times a real scale (`TensorVal`): `BitsVal`, `IntsVal`, `RealsVal`, `IndexVal`.

`kind` names the variety in error messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar, Optional

import numpy as np

from .. import ir


@dataclass
class Val:
    shape: tuple  # logical ONNX shape, batch included
    source_ops: list = field(default_factory=list)  # ONNX nodes the next IR op absorbs

    kind: ClassVar[str] = ""


@dataclass
class PendingVal(Val):
    chain: list = field(default_factory=list)  # pending ir.ChainOps
    quant: Optional[tuple] = None  # pending QuantizeLinear: (terminal, scale, node name)


@dataclass
class InputVal(PendingVal):
    """The model input with pending float32 ops, waiting for a quantizer or a binarizer."""

    tensor: str = ""  # the input's ONNX name
    channels_last: bool = False  # an NHWC model input seen as NCHW (tf2onnx's leading Transpose)

    kind: ClassVar[str] = "input"


@dataclass
class AccVal(PendingVal):
    """The integer accumulator of an IR Conv; its chain becomes that Conv's epilogue."""

    conv: str = ""  # the IR Conv it belongs to
    pools: list = field(default_factory=list)  # MaxPools that commute with the final sign:
    #                                            [(MaxPool params, chain length at the pool)]

    kind: ClassVar[str] = "acc"


@dataclass
class TensorVal(Val):
    """An IR tensor (times `scale`)."""

    tensor: str = ""
    scale: float = 1.0
    flat_from: Optional[tuple] = None  # flattened from (C, H, W) with physical (H, W, C)
    # a vector reshaped to a 4-D shape, still the (1, 1, D) IR tensor: a Transpose to NCHW after it
    # reads the shape as (N, H, W, C), any other reader as (N, C, H, W) (frontend/shape.py place_map)
    pending_map: bool = False


@dataclass
class BitsVal(TensorVal):
    kind: ClassVar[str] = "bits"


@dataclass
class IntsVal(TensorVal):
    kind: ClassVar[str] = "ints"


@dataclass
class RealsVal(TensorVal):
    kind: ClassVar[str] = "reals"


@dataclass
class IndexVal(TensorVal):
    kind: ClassVar[str] = "index"


@dataclass
class PaddedBitsVal(TensorVal):
    """A binary tensor with a pending constant padding of +-scale (larq pads the sign's output with
    +1 before a valid convolution): the convolution that reads it takes the padding in
    (frontend/linear.py). `shape` is the padded shape."""

    pads: tuple = (0, 0, 0, 0)  # (top, left, bottom, right)
    value: int = 1  # the padded value in units of scale: +1 or -1

    kind: ClassVar[str] = "padded bits"


@dataclass
class IntChainVal(PendingVal):
    """An integer IR tensor with pending float32 ops (e.g. a shifted sign of a fixed-point
    stream): an activation follows, which becomes an ir.Activation."""

    tensor: str = ""
    scale: float = 1.0
    flat_from: Optional[tuple] = None
    # (C, H, W): the tensor is a feature map's (1, 1, H * W * C) vector (ir.Flatten), whose channels
    # are the map's elements in storage order, so that the pending ops may vary within a channel
    # (frontend/streams.py element_form); the logical shape stays the map's
    map_from: Optional[tuple] = None

    kind: ClassVar[str] = "intchain"

    @classmethod
    def of(cls, v: IntsVal) -> "IntChainVal":
        """`v` with its scale as the first pending op."""
        return cls(v.shape, v.source_ops, chain=[ir.ChainOp("mul", np.float32(v.scale).reshape(()))],
                   tensor=v.tensor, scale=v.scale, flat_from=v.flat_from)


def with_chain(v: PendingVal, ops: list, **changes) -> PendingVal:
    """A copy of `v` with `ops` appended to its pending chain."""
    return replace(v, chain=v.chain + list(ops), **changes)
