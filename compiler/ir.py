"""bnnc's intermediate representation: a networkx graph of typed integer ops.

The IR is the contract between the frontend, the passes, the reference executor and every
backend. `compiler/IR.md` documents it at length; this module is the definition.

Tensors (all activations are stored channel-last, shape (H, W, C); a dense vector is (1, 1, C)):
- `Bits`:  values in {-1, +1} (times a positive real `scale` the consumer absorbs). Packed with
           bit 1 = -1, LSB first, each pixel's channels filled to whole words with 0 bits.
- `Ints`:  integers in the proven range [lo, hi] (times a real `scale`).
- `Reals`: IEEE float32 values, produced by a fixed sequence of float32 operations (`Chain`).

Ops (fields documented on each class): `InputQuantize`, `Conv` (dense layers are convs whose
kernel covers the whole input), `MaxPool`, `GlobalSumPool`, `ArgMax`, and for the compressed
families of issue 5: `Activation` (an epilogue applied to an integer tensor), `Add` (residual
sum of two fixed-point streams), `SumPool` (AveragePool with the divisor in the scale).

Weights use the shared weight code of networks.md section 2: `w[o, ky, kx, c]` in {-1, 0, +1} with
per-output-channel scales `scale_p` (for +1) and `scale_n` (for -1). Binary layers have no zeros
and scale_p == scale_n; pruned filters are all zero; ternary and two-scale layers reuse the same
arrays. A Conv's epilogue says what happens to its integer accumulator:
- `Chain`: float32 ops then an optional terminal (sign or multi-threshold), as the model wrote it.
- `Thresholds`: the integer form the fold pass derives from a `Chain` with a bit terminal.

Issue 5 extends the weight code (fields with defaults; `code == "binary"` keeps the meaning above):
`Conv.code` names it ("binary", "ternary", "two_scale", "multi_base", "int"); every other code
carries exact integer weights `int_w` (acc = sum int_w * a) and, except "int", their decomposition
into masked binary bases (`WeightBase`: masks P = (w == +1), N = (w == -1) and integer multipliers).
New epilogues: `LevelThresholds` (multi-bit integer outputs), `Requantize` (fixed-point outputs),
`Planes` (several activation bases of one accumulator, before folding).
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
    add_after_round: int = 0  # QuantizeLinear adds its zero point after rounding, before the clamp
    out_scale: float = 1.0  # the real value of one output step (inside the network)


@dataclass
class LevelTerminal:
    """Multi-level activation (MultiThreshold with several steps, or unipolar levels), in integer
    units: base + step * #{b : v >= thresholds[c, b]}; the real value is that times out_scale.
    `thresholds`: float32 (C or 1, B), as the model wrote them."""

    thresholds: np.ndarray
    base: int
    step: int
    out_scale: float
    source: str = ""


Terminal = Union[SignTerminal, ThresholdTerminal, RoundClampTerminal, LevelTerminal, None]


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
    # Issue 5: `planes` activation bases of one accumulator. The output has planes * O channels;
    # channel p * O + o compares accumulator o (arrays above have planes * O entries).
    planes: int = 1


@dataclass
class LevelThresholds:
    """Integer epilogue for a multi-level (`Ints`) output:
        out[o] = base + step * #{b : direction[o] * acc >= threshold[o, b]}
    (2-bit / thermometer activations, int8 QuantizeLinear, ternary Sign). Each row of `threshold`
    is non-decreasing; a level passed at every reachable accumulator has its threshold at the
    range's low end, a level never passed at high end + 1, so no sentinel values are needed."""

    direction: np.ndarray  # int8 (O,), +1 or -1
    threshold: np.ndarray  # int64 (O, B)
    base: int
    step: int
    out_scale: float = 1.0  # the output integers times out_scale are the real values
    notes: list = field(default_factory=list)
    planes: int = 1  # as Thresholds.planes: output channel p * O + o reads accumulator o


@dataclass
class Requantize:
    """Fixed-point epilogue (residual / real-valued streams): the real value of the output is
    out * out_scale, with
        a = clamp(acc, acc_lo[o], acc_hi[o])
        out[o] = clamp(floor((a * mult[o] + add[o]) / 2**shift), lo, hi)
    `add` holds the rounding offset 2**(shift-1): the affine map the model specifies, rounded half
    up to the grid out_scale, saturating at [lo, hi] (the defined rounding of every backend).
    The first clamp never changes `out` (beyond [acc_lo, acc_hi] the output saturates anyway); it
    keeps |a * mult + add| < 2**62, so 64-bit integer arithmetic is exact."""

    mult: np.ndarray  # int64 (O,)
    add: np.ndarray  # int64 (O,)
    shift: int
    lo: int
    hi: int
    out_scale: float
    notes: list = field(default_factory=list)
    acc_lo: Optional[np.ndarray] = None  # int64 (O,); None: no clamp needed
    acc_hi: Optional[np.ndarray] = None
    max_error: float = 0.0  # bound on |affine map - out * out_scale| inside the range (0: exact)


@dataclass
class Planes:
    """Before folding: several activations of the same accumulator (ABC-Net / PaBT activation
    bases A_n = sign(x - v_n)). Output channel p * O + o is chains[p] applied to accumulator o.
    `fold_batchnorm_into_thresholds` turns it into `Thresholds(planes=len(chains))`."""

    chains: list  # [Chain] with bit terminals


@dataclass
class WeightBase:
    """One binary (masked) base of a weight code. Its contribution to the accumulator is
        mult_p[o] * (sum of a over P) - mult_n[o] * (sum of a over N),   P = (w == +1), N = (w == -1)
    (sums over valid taps). Binary base: no zeros. Ternary: zeros allowed. Two-scale: no zeros,
    mult_p != mult_n. Multi-bit weights (ABC-Net / PaBT) are a list of bases; pruned bases are
    simply absent."""

    w: np.ndarray  # int8 (O, kh, kw, C) in {-1, 0, +1}
    mult_p: np.ndarray  # int64 (O,) >= 0
    mult_n: np.ndarray  # int64 (O,) >= 0
    scale_p: Optional[np.ndarray] = None  # float64 (O,): the real weight of a +1 (unit * mult_p)
    scale_n: Optional[np.ndarray] = None  # float64 (O,): the real weight of a -1 (unit * mult_n)


WEIGHT_CODES = ("binary", "ternary", "two_scale", "multi_base", "int")

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
    notes: list = field(default_factory=list)  # how a real-valued input is represented
    max_error: float = 0.0  # bound on |real input - represented value| per element (fixed-point inputs)


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
    # --- issue 5 (defaults keep the binary meaning above) ---
    # "binary": w as above (rows +-1, or all zero for a pruned filter). Any other code: `int_w`
    # holds the exact integer weights and acc = sum over valid taps of int_w * a + bias_kernel
    # terms; `w` is then sign(int_w) (its nonzero pattern), scale_p / scale_n the real weights of
    # +1 / -1 for single-base codes. Backends that do not implement a code must refuse it.
    code: str = "binary"
    int_w: Optional[np.ndarray] = None  # int64 (O, kh, kw, C)
    bases: list = field(default_factory=list)  # [WeightBase] summing to int_w (empty for "int")
    unit: Optional[np.ndarray] = None  # float64 (O,): real weight = unit * int_w (times input scale)
    # Expander / sparse connectivity: in_lists[o] = sorted input channels whose k x k kernel is not
    # all zero (every other kernel of row o is zero). None: dense.
    in_lists: Optional[list] = None
    # The accumulator may exceed 2**24 in magnitude (fixed-point inputs, large multipliers): it is
    # an exact int64, and enters a float chain by round-to-nearest-even conversion to float32.
    wide_acc: bool = False
    # Real-valued (float) weights on a per-channel power-of-two grid (code "int"): `weight_error[o]`
    # bounds |real weight - unit[o] * int_w| per tap in units of unit[o] (0: exact, 0.5: rounded to
    # nearest), and `acc_error[o]` bounds |real pre-activation - unit[o] * in_scale * acc| over every
    # reachable input, weight and input representation errors included (None: exact).
    weight_error: Optional[np.ndarray] = None
    acc_error: Optional[np.ndarray] = None


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


@dataclass
class Activation:
    """An epilogue applied elementwise to an integer tensor: the input value of channel c plays
    the accumulator of channel c (Sign / MultiThreshold / Quant of a fixed-point stream).
    `epilogue` is a Chain before folding, Thresholds / LevelThresholds after."""

    name: str
    inputs: list
    outputs: list
    epilogue: object


@dataclass
class Add:
    """Residual sum of two integer tensors of the same shape:
        out = clamp(a * 2**shifts[0] + b * 2**shifts[1], lo, hi)
    (the shifts put both operands on the finer of their two power-of-two grids; the sum is exact,
    the clamp saturates a fixed-point stream at its declared range)."""

    name: str
    inputs: list  # [a, b]
    outputs: list
    shifts: tuple = (0, 0)
    lo: int = -(2**31)
    hi: int = 2**31 - 1


@dataclass
class SumPool:
    """Window sum of an integer tensor, no padding (AveragePool: 1/(kh*kw) moves into the scale)."""

    name: str
    inputs: list
    outputs: list
    kernel: tuple
    stride: tuple


Op = Union[InputQuantize, Conv, MaxPool, GlobalSumPool, ArgMax, Activation, Add, SumPool]


def int_weights(conv: "Conv") -> np.ndarray:
    """The integer weights the accumulator uses (int64 (O, kh, kw, C)), whatever the code."""
    if conv.int_w is not None:
        return conv.int_w
    return conv.w.astype(np.int64)


def bases_weights(bases: list) -> np.ndarray:
    """sum over bases of mult_p * [w == +1] - mult_n * [w == -1] (int64)."""
    total = None
    for b in bases:
        shape = (-1,) + (1,) * (b.w.ndim - 1)
        part = np.where(b.w > 0, b.mult_p.reshape(shape), 0) - np.where(b.w < 0, b.mult_n.reshape(shape), 0)
        total = part.astype(np.int64) if total is None else total + part
    return total


def is_classic(op) -> bool:
    """True for a Conv the foundation's backends run unchanged: binary code, a single-plane
    Thresholds or a Chain epilogue."""
    if not isinstance(op, Conv):
        return False
    ep = op.epilogue
    if op.code != "binary" or op.wide_acc:
        return False
    if isinstance(ep, Thresholds):
        return ep.planes == 1
    return isinstance(ep, Chain)


def family_ops(graph: "Graph") -> list:
    """Ops that need issue-5 support in a backend (non-classic convs and the new op kinds)."""
    return [op for op in graph.ops() if isinstance(op, (Activation, Add, SumPool))
            or (isinstance(op, Conv) and not is_classic(op))]


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
