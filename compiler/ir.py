"""bnnc's intermediate representation: a networkx graph of typed integer ops.

The IR is the contract between the frontend, the passes, the reference executor and every
backend. `compiler/IR.md` documents it at length; this module is the definition.

Tensors (all activations are stored channel-last, shape (H, W, C); a dense vector is (1, 1, C)):
- `Bits`:  values in {-1, +1} (times a positive real `scale` the consumer absorbs). Packed with
           bit 1 = -1, LSB first, each pixel's channels filled to whole words with 0 bits.
- `Ints`:  integers in the proven range [lo, hi] (times a real `scale`).
- `Reals`: IEEE float32 values, produced by a fixed sequence of float32 operations (`Chain`).

Ops (fields documented on each class): `InputQuantize`, `Conv` (dense layers are convs whose
kernel covers the whole input), `MaxPool`, `GlobalSumPool`, `ArgMax`.

Weights use the shared weight code of networks.md section 2: `w[o, ky, kx, c]` in {-1, 0, +1} with
per-output-channel scales `scale_p` (for +1) and `scale_n` (for -1). Binary layers have no zeros
and scale_p == scale_n; pruned filters are all zero; ternary and two-scale layers reuse the same
arrays. A Conv's epilogue says what happens to its integer accumulator:
- `Chain`: float32 ops then an optional terminal (sign or multi-threshold), as the model wrote it.
- `Thresholds`: the integer form the fold pass derives from a `Chain` with a bit terminal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import networkx as nx
import numpy as np

# ----------------------------------------------------------------------------- tensor types


@dataclass(frozen=True)
class Bits:
    """+-1 values (times `scale` > 0), shape (H, W, C)."""

    shape: tuple
    scale: float = 1.0


@dataclass(frozen=True)
class Ints:
    """Integers proven to lie in [lo, hi] (times `scale`), shape (H, W, C)."""

    shape: tuple
    lo: int
    hi: int
    scale: float = 1.0


@dataclass(frozen=True)
class Reals:
    """float32 values, shape (H, W, C)."""

    shape: tuple


TensorType = Union[Bits, Ints, Reals]

# ----------------------------------------------------------------------------- float32 chains

# Elementwise float32 operations with a constant operand, applied in order; `const` is a float32
# array broadcastable to the channel axis (shape () or (C,)) or, for InputQuantize, to every
# element in (H, W, C) order. Each op is monotone in its input, so a chain followed by a sign
# is a step function of the accumulator: the basis of exact threshold folding.
CHAIN_OPS = ("mul", "add", "sub", "div", "relu")


@dataclass
class ChainOp:
    op: str  # one of CHAIN_OPS
    const: Optional[np.ndarray] = None  # float32; None for relu


@dataclass
class SignTerminal:
    """Bipolar activation. `zero_maps_to` is what an exact 0 becomes: 0 (ONNX Sign, which a bit
    cannot hold), or +1 (QONNX BipolarQuant, FINN's x >= t)."""

    zero_maps_to: int
    out_scale: float = 1.0  # the activation's values are +-out_scale
    source: str = ""  # node that defined it, for messages


@dataclass
class ThresholdTerminal:
    """FINN MultiThreshold: out_scale * #{b : x >= T[c, b]} + out_bias (T: (C or 1, B))."""

    thresholds: np.ndarray
    out_scale: float
    out_bias: float
    source: str = ""


@dataclass
class RoundClampTerminal:
    """Quantizer: q = clamp(round(v), qmin, qmax) - zero_point; `mode` is how to round
    ("half_even", "half_away", "floor", "ceil", "to_zero")."""

    qmin: int
    qmax: int
    zero_point: int
    mode: str = "half_even"
    source: str = ""


Terminal = Union[SignTerminal, ThresholdTerminal, RoundClampTerminal, None]


@dataclass
class Chain:
    """Epilogue as the model specifies it: v = float32(acc); v = op(v, const) ...; then terminal.
    With no terminal the output is Reals."""

    ops: list
    terminal: Terminal = None


@dataclass
class Thresholds:
    """Integer epilogue for a bit output: channel o is +1 iff direction[o] * acc >= threshold[o].
    Channels whose output is the same for every reachable accumulator have `constant[o]` in
    {-1, 0, +1} (0 only where an exact-zero Sign output is constant); otherwise constant[o] == 2."""

    direction: np.ndarray  # int8 (O,), +1 or -1
    threshold: np.ndarray  # int64 (O,)
    constant: np.ndarray  # int8 (O,)
    out_scale: float = 1.0
    notes: list = field(default_factory=list)  # what the fold found (ties, unreachable steps)

    NOT_CONSTANT = 2


# ----------------------------------------------------------------------------- ops


@dataclass
class InputQuantize:
    """The model input as the user provides it (NCHW order, `source_dtype` "float32" or an integer
    dtype with values on a grid) -> `chain` -> terminal, written channel-last.

    `grid` is (lo, hi) for integer sources. After folding, a bit terminal on an integer source
    becomes `int_thresholds` (direction, threshold) over the raw integer input values."""

    name: str
    inputs: list
    outputs: list
    in_shape: tuple  # (C, H, W) as the model declares it (batch removed)
    source_dtype: str
    chain: Chain
    grid: Optional[tuple] = None
    int_thresholds: Optional[Thresholds] = None


@dataclass
class Conv:
    """acc[o, y, x] = sum over valid taps (ky, kx) and channels c of w[o, ky, kx, c] * a[..., c]
                     + sum over valid taps of bias_kernel[o, ky, kx]
    where a tap is valid when it falls inside the input (zero padding contributes exactly 0),
    then the epilogue. `bias_kernel` carries constant input channels folded away by
    strip_pruned_channels; the dependence on valid taps makes it exact at zero-padded borders."""

    name: str
    inputs: list
    outputs: list
    kernel: tuple  # (kh, kw)
    stride: tuple  # (sh, sw)
    pads: tuple  # (top, left, bottom, right)
    w: np.ndarray  # int8 (O, kh, kw, C) in {-1, 0, +1}
    scale_p: np.ndarray  # float64 (O,)
    scale_n: np.ndarray  # float64 (O,)
    epilogue: Union[Chain, Thresholds]
    bias_kernel: Optional[np.ndarray] = None  # int64 (O, kh, kw)
    is_dense: bool = False
    source_ops: list = field(default_factory=list)  # ONNX nodes this layer came from
    removed_out: int = 0  # output channels stripped
    removed_in: int = 0  # input channels stripped
    original_params: int = 0  # float parameters of the original layer (weights, bias, BN)


@dataclass
class MaxPool:
    """Max over a kernel window; padded taps are ignored (ONNX pads MaxPool with -inf)."""

    name: str
    inputs: list
    outputs: list
    kernel: tuple
    stride: tuple
    pads: tuple


@dataclass
class GlobalSumPool:
    """Sum over H and W (GlobalAveragePool with the 1/(H*W) moved into the tensor's scale)."""

    name: str
    inputs: list
    outputs: list


@dataclass
class ArgMax:
    """Indices of the k largest values along C, descending, lower index first among equals."""

    name: str
    inputs: list
    outputs: list
    k: int = 1


Op = Union[InputQuantize, Conv, MaxPool, GlobalSumPool, ArgMax]


# ----------------------------------------------------------------------------- graph


class Graph:
    """Ops in a networkx DiGraph (edges carry the tensor name), tensor types in `tensors`.

    `input` is the model input tensor name (its type describes the user's buffer), `output` the
    model output tensor. Passes build new graphs with `copy()`; they never mutate their input."""

    def __init__(self, input_name: str, input_info: dict, output_name: str, output_info: dict):
        self.g = nx.DiGraph()
        self.tensors: dict = {}
        self.input = input_name
        self.input_info = dict(input_info)  # {"shape": (C,H,W), "dtype": ..., "onnx_name": ...}
        self.output = output_name
        self.output_info = dict(output_info)  # {"shape": tuple, "dtype": "float32"|"int32", ...}
        self.notes: list = []  # compile-time findings shown by `bnnc report`

    # -- construction
    def add(self, op, out_types: dict) -> None:
        """Add `op` producing the tensors in `out_types` ({name: type})."""
        self.g.add_node(op.name, op=op)
        for t, ty in out_types.items():
            self.tensors[t] = ty
        self._relink()

    def _relink(self) -> None:
        producers = {}
        for n, d in self.g.nodes(data=True):
            for t in d["op"].outputs:
                producers[t] = n
        self.g.remove_edges_from(list(self.g.edges()))
        for n, d in self.g.nodes(data=True):
            for t in d["op"].inputs:
                if t in producers:
                    self.g.add_edge(producers[t], n, tensor=t)

    def replace(self, op) -> None:
        """Replace the op of the same name (fields may differ, names of tensors too)."""
        self.g.nodes[op.name]["op"] = op
        self._relink()

    def remove(self, name: str) -> None:
        self.g.remove_node(name)
        self._relink()

    def copy(self) -> "Graph":
        import copy as _copy

        return _copy.deepcopy(self)

    # -- queries
    def ops(self) -> list:
        """Ops in a deterministic topological order."""
        order = nx.lexicographical_topological_sort(self.g, key=lambda n: self._order_key(n))
        return [self.g.nodes[n]["op"] for n in order]

    def _order_key(self, n):
        return self.g.nodes[n]["op"].name

    def op(self, name: str):
        return self.g.nodes[name]["op"]

    def producer(self, tensor: str):
        for n, d in self.g.nodes(data=True):
            if tensor in d["op"].outputs:
                return d["op"]
        return None

    def consumers(self, tensor: str) -> list:
        return [d["op"] for n, d in self.g.nodes(data=True) if tensor in d["op"].inputs]


def out_shape(in_hw: tuple, kernel: tuple, stride: tuple, pads: tuple) -> tuple:
    """Output (H, W) of a window op (floor mode)."""
    h = (in_hw[0] + pads[0] + pads[2] - kernel[0]) // stride[0] + 1
    w = (in_hw[1] + pads[1] + pads[3] - kernel[1]) // stride[1] + 1
    return (h, w)
