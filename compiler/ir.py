"""bnnc's intermediate representation: a networkx graph of typed integer ops.

The IR is the contract between the frontend, the passes, the reference executor and every
backend. `compiler/IR.md` documents it at length; this module is the definition.

Tensors (all activations are stored channel-last, shape (H, W, C); a dense vector is (1, 1, C)):
- `Bits`:  values in {-1, +1} (times a positive real `scale` the consumer absorbs). Packed with
           bit 1 = -1, LSB first, each pixel's channels filled to whole words with 0 bits.
- `Ints`:  integers in the proven range [lo, hi] (times a real `scale`).
- `Reals`: IEEE float32 values, produced by a fixed sequence of float32 operations (`Chain`).

Ops (fields documented on each class): `InputQuantize`, `Conv` (dense layers are convs whose
kernel covers the whole input), `MaxPool`, `GlobalSumPool`, `Flatten` (an (H, W, C) integer tensor
as one vector), `Unflatten` (an integer vector as an (H, W, C) map), `Gather` (values moved: nearest-neighbour
upsampling, slices of rows, columns or channels), `ArgMax`, and for the compressed
families: `Activation` (an epilogue applied to an integer tensor), `Add` (residual
sum of two fixed-point streams), `SumPool` (AveragePool with the divisor in the scale), `Concat`
(channel concatenation of bit or fixed-point tensors), `Softmax` (float32 probabilities of the
output logits, a fixed sequence of IEEE float64 operations), `Sigmoid` and `Gelu` (of a fixed-point
stream, on a fixed-point grid), `Mul` (product of two fixed-point streams, one broadcast per channel). Before
`passes/merge_summed_convs`, `ConvSum` holds the sums of convolutions of one input (or of
activation-base planes of one layer) that the frontend found.

Weights use the shared weight code of networks.md section 2: `w[o, ky, kx, c]` in {-1, 0, +1} with
per-output-channel scales `scale_p` (for +1) and `scale_n` (for -1). Binary layers have no zeros
and scale_p == scale_n; pruned filters are all zero; ternary and two-scale layers reuse the same
arrays. A Conv's epilogue says what happens to its integer accumulator:
- `Chain`: float32 ops then an optional terminal (sign or multi-threshold), as the model wrote it.
- `Thresholds`: the integer form the fold pass derives from a `Chain` with a bit terminal.

The compressed families extend the weight code (fields with defaults; `code == "binary"` keeps the meaning above):
`Conv.code` names it ("binary", "ternary", "two_scale", "multi_base", "int"); every other code
carries exact integer weights `int_w` (acc = sum int_w * a) and, except "int", their decomposition
into masked binary bases (`WeightBase`: masks P = (w == +1), N = (w == -1) and integer multipliers).
New epilogues: `LevelThresholds` (multi-bit integer outputs), `Requantize` (fixed-point outputs),
`Planes` (several activation bases of one accumulator, from `passes/merge_activation_planes`,
before folding).

`verify(graph)` checks the invariants every graph keeps between passes (IR.md lists them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Optional, Union

import networkx as nx
import numpy as np

from .errors import BnncError

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
CHAIN_OPS = ("mul", "add", "sub", "div", "relu", "tanh")  # tanh: monotone, only before a terminal (folded away)


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
    rounded_input: bool = False  # an ONNX Sign of a rounded value: 0 stands for either sign (maps to +1)
    # the model's value is this terminal's only where |x| < exact_below (a straight-through form
    # x + (f(x) - x) read as f(x), canonical/ste_sign.py; None: everywhere); the fold pass states
    # whether the layer's values stay below it
    exact_below: Optional[float] = None


@dataclass
class ThresholdTerminal:
    """FINN MultiThreshold: out_scale * #{b : x >= T[c, b]} + out_bias (T: (C or 1, B))."""

    thresholds: np.ndarray
    out_scale: float
    out_bias: float
    source: str = ""
    exact_below: Optional[float] = None  # see SignTerminal


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
    exact_below: Optional[float] = None  # see SignTerminal


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
    exact_below: Optional[float] = None  # see SignTerminal


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
    near_ties: int = 0  # channels whose step is within float32 rounding of the chain's 0 (order-sensitive)
    # `planes` activation bases of one accumulator. The output has planes * O channels;
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
    near_ties: int = 0  # steps within float32 rounding of the level boundary (as Thresholds.near_ties)


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
    # Wide accumulators (real-valued weights) are first shifted right by `pre_shift` (a floor, before
    # the clamp, which is then in the shifted units): a = clamp(acc >> pre_shift, acc_lo, acc_hi).
    pre_shift: int = 0
    # The largest |value| (real units) the map can reach over the accumulator range: above
    # hi * out_scale (or below lo * out_scale), saturation is reachable (`bnnc report` says so).
    reach: float = 0.0
    near_ties: int = 0  # as LevelThresholds.near_ties, for a Requantize that replaced its level steps


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
    channels_last: bool = False  # the model's input is NHWC (in_shape is (H, W, C)): read in its own order
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
    # --- compressed families (defaults keep the binary meaning above) ---
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
class Flatten:
    """The integers of an (H, W, C) tensor as one (1, 1, H * W * C) vector in storage order (pixel
    after pixel, a pixel's channels in order): values, range and scale unchanged. Per-element ops
    on flattened features (a BatchNorm1d after a Flatten) then act on channels."""

    name: str
    inputs: list
    outputs: list


@dataclass
class Unflatten:
    """A Bits or Ints (1, 1, D) vector as an (H, W, C) map, H * W * C = D: element j of the map in
    storage order (pixel after pixel, a pixel's channels in order) is element order[j] of the
    vector (`order` None: element j, the vector already in the map's storage order, as Keras's
    Reshape to (H, W, C) leaves it). Values, type, range and scale unchanged (bits are packed per
    pixel of the map). A dense layer's output reshaped
    into a map (Keras's Dense -> Reshape -> Conv2D; PyTorch's Linear -> view(N, C, H, W), whose
    (C, H, W) order `order` moves into the map's)."""

    name: str
    inputs: list
    outputs: list
    order: Optional[np.ndarray] = None  # int64 (D,), a permutation


@dataclass
class Gather:
    """Values of a Bits or Ints tensor moved, not changed: out[y, x, c] = in[rows[y], cols[x],
    channels[c]] (channels None: all, in order); type, range and scale unchanged. A nearest-
    neighbour Resize / Upsample (the row and column each output pixel takes as the model's own
    coordinate and rounding modes pick them: frontend/resize.py), a Slice of the channels or of
    rows and columns, the parts of a Split (frontend/slicing.py). Moves that are not separable
    into rows, columns and channels (DepthToSpace, SpaceToDepth) give every output element its
    input element instead: out.flat[j] = in.flat[index.flat[j]], both in storage order (`index`
    of the output's shape; rows and cols then empty, channels None)."""

    name: str
    inputs: list
    outputs: list
    rows: tuple = ()  # input row of each output row
    cols: tuple = ()  # input column of each output column
    channels: Optional[tuple] = None  # input channel of each output channel
    source_ops: list = field(default_factory=list)
    index: Optional[np.ndarray] = None  # int64 (OH, OW, OC): flat input element of each output element


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
        out = clamp(floor((a * 2**shifts[0] + b * 2**shifts[1] + half) / 2**round_shift), lo, hi)
    with half = 2**(round_shift - 1) if round_shift else 0. The shifts put both operands on the
    finer of their two power-of-two grids, where the sum is exact; a sum that could leave the
    stream's range there is rounded half up to a grid 2**round_shift times coarser. The clamp
    saturates a fixed-point stream at its declared range."""

    name: str
    inputs: list  # [a, b]
    outputs: list
    shifts: tuple = (0, 0)
    lo: int = -(2**31)
    hi: int = 2**31 - 1
    round_shift: int = 0


@dataclass
class SumPool:
    """Window sum of an integer tensor (AveragePool: 1/(kh*kw) moves into the scale). With `pads`
    (zeros) or `multipliers` (an AveragePool whose divisor n[y, x] changes near the border:
    count_include_pad = 0, ceil_mode windows): out[y, x, c] = multipliers[y, x] * (sum of the
    window's taps inside the input), multipliers[y, x] = L / n[y, x] with L the lcm of the
    divisors, and 1/L in the scale (exact)."""

    name: str
    inputs: list
    outputs: list
    kernel: tuple
    stride: tuple
    pads: tuple = (0, 0, 0, 0)  # (top, left, bottom, right), zeros
    multipliers: Optional[np.ndarray] = None  # (oh, ow) int64 >= 1; None: 1 everywhere

    @property
    def border_divisors(self) -> bool:
        """Whether windows near the border have divisors of their own (padding or multipliers)."""
        return any(self.pads) or self.multipliers is not None

    def gains(self, in_hw: tuple) -> np.ndarray:
        """(oh, ow) int64: what a constant input is multiplied by at each output pixel (taps inside
        the input times the multiplier)."""
        g = window_taps(in_hw, self.kernel, self.stride, self.pads)
        return g if self.multipliers is None else g * self.multipliers


@dataclass
class Concat:
    """Channel concatenation of tensors with the same H x W (ONNX Concat on the channel axis):
    output channel offset_i + c is channel c of input i, offset_i = channels of inputs 0..i-1.
    All inputs Bits (of one scale): the output is Bits, packed per pixel as every bit tensor.
    All inputs Ints: out = in_i * 2**shifts[i] (the shifts put every input on the finest of
    their power-of-two grids, exactly, as Add's); the output's [lo, hi] holds every input's."""

    name: str
    inputs: list
    outputs: list
    shifts: tuple = ()  # one per input (Ints); empty for Bits
    source_ops: list = field(default_factory=list)  # ONNX nodes it came from, for messages


# the integer model outputs a QuantizeLinear writes (its q itself, no DequantizeLinear after it), as C
# and the MCUs store them; "int32" outputs are TopK / ArgMax indices
OUTPUT_INT_DTYPES = ("int8", "uint8", "int16", "uint16")
QUANT_ROUND_LIMIT = 2**22  # 1 / scale + |zp| below this: C's 1.5 * 2^23 rounding of Softmax.out_grid is exact


@dataclass
class Softmax:
    """Softmax over C of each pixel of a Reals tensor (ONNX Softmax on the channel axis; the
    model's output); with `log`, its logarithm (ONNX LogSoftmax). No exact integer form exists:
    `arith.softmax` / `arith.log_softmax` define them as fixed sequences of IEEE float64
    operations (max, differences, a range-reduced polynomial exp, a sum in channel order, a
    division or a polynomial log, a rounding to float32) that numpy and C (no FMA, no libm)
    compute identically; their error bounds against the true functions are stated there."""

    name: str
    inputs: list
    outputs: list
    source_ops: list = field(default_factory=list)
    log: bool = False
    # (scale, zero_point, qmin, qmax): the probabilities through the model's QuantizeLinear ->
    # DequantizeLinear (a full-integer TFLite classifier's output), as arith.quantize_linear and
    # arith.dequantize_linear compute them; with
    # an Ints output tensor, the QuantizeLinear's integers q themselves (arith.quantize_linear: an
    # int8 / uint8 model output)
    out_grid: Optional[tuple] = None
    # (zero_point, qmin, qmax): after out_grid's DequantizeLinear, a QuantizeLinear of the same scale
    # (TFLite's int8 -> uint8 output requantization): q = clamp(q - zp + zero_point, qmin, qmax)
    requant: Optional[tuple] = None


@dataclass
class Sigmoid:
    """Sigmoid of a fixed-point stream, on the fixed-point grid 2**-frac_bits: for input integers q,
        out = floor(arith.sigmoid(q * in_scale) * 2**frac_bits + 1/2)
    (real value out * 2**-frac_bits). No exact integer form exists: `arith.sigmoid` defines the
    value as a fixed sequence of IEEE float64 operations (softmax's exp of -|x|, one addition, one
    division) that numpy and C compute identically; `max_error` states the bound against the true
    sigmoid of q * in_scale: half a grid step + the float64 evaluation's error (arith.SIGMOID_EVAL_ERROR)."""

    name: str
    inputs: list
    outputs: list
    in_scale: float = 1.0  # real value of one input step
    frac_bits: int = 16
    source_ops: list = field(default_factory=list)

    @property
    def max_error(self) -> float:
        from .arith import SIGMOID_EVAL_ERROR

        return 2.0 ** -(self.frac_bits + 1) + SIGMOID_EVAL_ERROR


@dataclass
class Gelu:
    """GELU of a fixed-point stream, x Phi(x) (Phi the standard normal CDF: ONNX Gelu, PyTorch's
    nn.GELU), on the fixed-point grid 2**-frac_bits: for input integers q,
        out = floor(arith.gelu(q * in_scale) * 2**frac_bits + 1/2)
    (real value out * 2**-frac_bits). No exact integer form exists: `arith.gelu` defines the value
    as a fixed sequence of IEEE float64 operations (erf by its series of positive terms, exp as
    softmax's) that numpy and C compute identically; `max_error` states the bound against the true
    GELU of q * in_scale: half a grid step + arith.GELU_EVAL_ERROR per unit of max(1, x_max),
    x_max the largest |q * in_scale| of the input's range."""

    name: str
    inputs: list
    outputs: list
    in_scale: float = 1.0  # real value of one input step
    frac_bits: int = 16
    x_max: float = 1.0
    source_ops: list = field(default_factory=list)

    @property
    def max_error(self) -> float:
        from .arith import GELU_EVAL_ERROR

        return 2.0 ** -(self.frac_bits + 1) + GELU_EVAL_ERROR * max(1.0, self.x_max)


@dataclass
class Mul:
    """Elementwise product of two fixed-point streams, `b` either of `a`'s shape or one value per
    channel (shape (1, 1, C), broadcast over the pixels; Squeeze-and-Excitation style gating):
        out = clamp(floor((a * b + half) / 2**round_shift), lo, hi)
    with half = 2**(round_shift - 1) if round_shift else 0: exact in int64 (|a|, |b| < 2**31), then
    rounded half up to a grid 2**round_shift times coarser than scale_a * scale_b where the product
    could leave the widest stream (error <= half an output step); the clamp is reachable only beyond."""

    name: str
    inputs: list  # [a, b]
    outputs: list
    lo: int = -(2**31)
    hi: int = 2**31 - 1
    round_shift: int = 0
    source_ops: list = field(default_factory=list)


@dataclass
class ConvSum:
    """Before `merge_summed_convs`: the summed accumulators of convolutions that read one tensor
    with one window geometry (weight bases written as separate convolutions, PaBT base pairs):
        acc[o] = sum_i k_i[o] * acc_i[o]
    acc_i the accumulator of terms[i] (a Conv, or a ConvSum: sums of sums), then `epilogue` on acc
    as a Conv's on its accumulator. Each term's epilogue is a Chain of mul / div ops and no
    terminal: its factor f_i[o], the exact product of its constants; (unit, k_i) is the exact
    decomposition f_i[o] = unit[o] * k_i[o] with the smallest integers k_i
    (`conv_sum_multipliers`), and the epilogue's own ops start with that unit. The terms' outputs
    name no graph tensor; their window is the op's, and each reads one of its inputs: one tensor,
    or before `merge_activation_planes` several of one type (activation-base planes of one layer,
    the copies of its layer for each activation), which that pass makes one."""

    name: str
    inputs: list
    outputs: list
    terms: list  # [Conv | ConvSum]
    epilogue: object  # as Conv.epilogue
    source_ops: list = field(default_factory=list)

    @property
    def kernel(self) -> tuple:
        return self.terms[0].kernel

    @property
    def stride(self) -> tuple:
        return self.terms[0].stride

    @property
    def pads(self) -> tuple:
        return self.terms[0].pads

    @property
    def is_dense(self) -> bool:
        return self.terms[0].is_dense

    @property
    def channels(self) -> int:
        """Accumulators (output channels before any planes)."""
        t = self.terms[0]
        return t.channels if isinstance(t, ConvSum) else t.w.shape[0]


def chain_factors(ops: list, o: int) -> Optional[list]:
    """Per-channel exact factors (Fractions) of a chain that only multiplies / divides, else None."""
    f = [Fraction(1)] * o
    for op in ops:
        if op.op not in ("mul", "div"):
            return None
        c = np.broadcast_to(np.asarray(op.const, np.float32), (o,))
        f = [x * Fraction(float(ci)) if op.op == "mul" else x / Fraction(float(ci)) for x, ci in zip(f, c)]
    return f


def exact_multipliers(fracs: list) -> tuple:
    """(unit, [k]) with fracs[i] == unit * k[i] exactly, integers k as small as possible."""
    den = 1
    for f in fracs:
        den = den * f.denominator // math.gcd(den, f.denominator)
    ks = [int(f * den) for f in fracs]
    g = 0
    for k in ks:
        g = math.gcd(g, abs(k))
    g = g or 1
    return Fraction(g, den), [k // g for k in ks]


def conv_sum_multipliers(op: ConvSum) -> tuple:
    """(unit float64 (O,), [k_i int64 (O,)] per term) of a ConvSum (see there)."""
    o = op.channels
    factors = [chain_factors(t.epilogue.ops, o) for t in op.terms]
    unit, ks = np.zeros(o), np.zeros((len(op.terms), o), np.int64)
    for j in range(o):
        u, k = exact_multipliers([f[j] for f in factors])
        unit[j], ks[:, j] = float(u), k
    return unit, list(ks)


Op = Union[InputQuantize, Conv, MaxPool, GlobalSumPool, Flatten, Unflatten, Gather, ArgMax, Activation, Add, SumPool,
           Concat, Softmax, Sigmoid, Gelu, Mul, ConvSum]


def output_in_model_order(graph: "Graph", y: np.ndarray) -> np.ndarray:
    """Outputs (N, elements) in the output tensor's (H, W, C) order -> the model's order: a
    feature-map output (`output_info["channels_first"]`) is transposed to (C, H, W)."""
    n = y.shape[0]
    if not graph.output_info.get("channels_first"):
        return y
    _, c, h, w = graph.output_info["shape"]
    return np.ascontiguousarray(y.reshape(n, h, w, c).transpose(0, 3, 1, 2)).reshape(n, -1)


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
    """Ops that need compressed-family support in a backend (non-classic convs and the new op kinds)."""
    return [op for op in graph.ops() if isinstance(op, (Activation, Add, SumPool, Mul))
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
        # {"shape": tuple, "dtype": "float32" | "int32" (TopK / ArgMax indices) | one of OUTPUT_INT_DTYPES, ...}
        self.output_info = dict(output_info)
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


def window_taps(in_hw: tuple, kernel: tuple, stride: tuple, pads: tuple) -> np.ndarray:
    """(oh, ow) int64: how many taps of each window lie inside the (zero-padded) input."""
    oh, ow = out_shape(in_hw, kernel, stride, pads)
    taps = [[min(o * s - p + k, n) - max(o * s - p, 0) for o in range(m)]
            for m, s, p, k, n in zip((oh, ow), stride, pads[:2], kernel, in_hw)]
    return np.outer(np.asarray(taps[0], np.int64), np.asarray(taps[1], np.int64))


def out_shape(in_hw: tuple, kernel: tuple, stride: tuple, pads: tuple) -> tuple:
    """Output (H, W) of a window op (floor mode)."""
    h = (in_hw[0] + pads[0] + pads[2] - kernel[0]) // stride[0] + 1
    w = (in_hw[1] + pads[1] + pads[3] - kernel[1]) // stride[1] + 1
    return (h, w)


# ----------------------------------------------------------------------------- invariants


class IRError(BnncError):
    """An IR graph breaks one of the invariants `verify` checks (a bug in the pass that built it)."""


def verify(graph: "Graph") -> None:
    """Check the IR's invariants; raise IRError naming the op and the rule it breaks.

    Graph: acyclic, every tensor produced once, the declared output produced and the only
    tensor nobody reads. Ops: inputs exist with the types the op reads, window shapes follow from
    kernel / stride / pads, weight arrays have their shapes and dtypes, codes are valid,
    epilogue arrays have one row per output channel, rows of LevelThresholds are non-decreasing.
    Tensor types: 3-D shapes, Ints lo <= hi."""
    if not nx.is_directed_acyclic_graph(graph.g):
        raise IRError(f"graph: has a cycle through {nx.find_cycle(graph.g)[0][0]}")
    produced: dict = {}
    for op in graph.ops():
        for t in op.outputs:
            if t in produced:
                _fail(op, "each tensor has one producer", f"'{t}' is also produced by '{produced[t]}'")
            produced[t] = op.name
    if graph.output not in produced:
        raise IRError(f"graph: the declared output '{graph.output}' is produced by no op")
    for op in graph.ops():
        if type(op) not in _CHECKS:
            _fail(op, "known op type", f"{type(op).__name__} is not an IR op")
        for t in op.outputs:
            if t not in graph.tensors:
                _fail(op, "output tensors have types", f"'{t}' has none")
            _check_type(op, t, graph.tensors[t])
    for op in graph.ops():  # what each op reads, before any op's own checks blame its producer
        if isinstance(op, InputQuantize):
            continue
        for i, t in enumerate(op.inputs):
            if t not in produced:
                _fail(op, "input tensors exist", f"'{t}' is produced by no op")
            _input_type(graph, op, i, _INPUT_TYPES[type(op)])
    for op in graph.ops():
        _CHECKS[type(op)](graph, op)
    read = {t for op in graph.ops() for t in op.inputs}
    for t, name in produced.items():
        if t != graph.output and t not in read:
            _fail(graph.op(name), "exactly the declared outputs", f"its output '{t}' is read by no op "
                  f"and is not the graph output '{graph.output}'")
    out_ty = graph.tensors[graph.output]
    dtype = graph.output_info.get("dtype")
    want = {"float32": Reals, "int32": Ints}.get(dtype, Ints if dtype in OUTPUT_INT_DTYPES else None)
    if want is not None and not isinstance(out_ty, want):
        raise IRError(f"graph: output '{graph.output}' is {type(out_ty).__name__} but output_info says {dtype}")
    if dtype in OUTPUT_INT_DTYPES:
        info = np.iinfo(dtype)
        # the backends store the output tensor in the smallest type holding its range: the output's own width
        narrower = [t for t in OUTPUT_INT_DTYPES if np.iinfo(t).bits < info.bits
                    and np.iinfo(t).min <= out_ty.lo and out_ty.hi <= np.iinfo(t).max]
        if not (info.min <= out_ty.lo <= out_ty.hi <= info.max) or narrower:
            raise IRError(f"graph: output '{graph.output}' holds [{out_ty.lo}, {out_ty.hi}], which its {dtype} "
                          "does not store in its own width")


def _fail(op, rule: str, detail: str):
    raise IRError(f"op '{op.name}' ({type(op).__name__}): {rule}: {detail}")


def _check_type(op, t: str, ty) -> None:
    if not isinstance(ty, (Bits, Ints, Reals)):
        _fail(op, "tensor types are Bits / Ints / Reals", f"'{t}' is {type(ty).__name__}")
    if len(ty.shape) != 3 or any(int(s) < 1 for s in ty.shape):
        _fail(op, "tensor shapes are (H, W, C)", f"'{t}' has shape {ty.shape}")
    if isinstance(ty, Ints) and not ty.lo <= ty.hi:
        _fail(op, "Ints lo <= hi", f"'{t}' has [{ty.lo}, {ty.hi}]")


def _input_type(graph, op, i: int, types: tuple):
    ty = graph.tensors.get(op.inputs[i]) if i < len(op.inputs) else None
    if not isinstance(ty, types):
        _fail(op, "input types", f"input {i} ('{op.inputs[i] if i < len(op.inputs) else ''}') is "
              f"{type(ty).__name__}, not {' / '.join(t.__name__ for t in types)}")
    return ty


def _arity(op, n_in: int) -> None:
    if len(op.inputs) != n_in or len(op.outputs) != 1:
        _fail(op, "arity", f"{len(op.inputs)} inputs and {len(op.outputs)} outputs, expected {n_in} and 1")


def _array(op, what: str, a, shape: tuple, kinds: str) -> None:
    """`a` is an ndarray of `shape` (None: any size along that axis) whose dtype kind is in `kinds`."""
    if not isinstance(a, np.ndarray):
        _fail(op, "array fields are numpy arrays", f"{what} is {type(a).__name__}")
    if a.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, a.shape)):
        _fail(op, "array shapes", f"{what} has shape {a.shape}, expected {tuple('*' if s is None else s for s in shape)}")
    if a.dtype.kind not in kinds:
        _fail(op, "array dtypes", f"{what} has dtype {a.dtype}")


def _check_window(graph, op, src, out, kernel, stride, pads) -> None:
    if len(kernel) != 2 or len(stride) != 2 or len(pads) != 4 or min(kernel) < 1 or min(stride) < 1 \
            or min(pads) < 0:
        _fail(op, "window geometry", f"kernel {kernel}, stride {stride}, pads {pads}")
    oh, ow = out_shape(src.shape[:2], kernel, stride, pads)
    if (oh, ow) != tuple(out.shape[:2]):
        _fail(op, "output shape follows from kernel / stride / pads",
              f"input {src.shape[:2]}, kernel {kernel}, stride {stride}, pads {pads} give {(oh, ow)}, "
              f"output is {out.shape[:2]}")


def _check_chain(op, chain, channels) -> None:
    """A Chain's constants are scalars or one per channel (`channels` entries)."""
    if not isinstance(chain, Chain):
        _fail(op, "epilogue types", f"expected a Chain, got {type(chain).__name__}")
    for c in chain.ops:
        if c.op not in CHAIN_OPS:
            _fail(op, "chain ops", f"unknown chain op {c.op!r}")
        if c.op == "tanh" and chain.terminal is None:
            _fail(op, "chain ops", "a tanh needs a terminal after it (it is folded into thresholds)")
        if c.op in ("relu", "tanh"):
            continue
        if not isinstance(c.const, (np.ndarray, np.generic)) or np.shape(c.const) not in ((), (channels,)):
            _fail(op, "chain constants are scalars or per channel",
                  f"{c.op} constant of shape {getattr(c.const, 'shape', None)} for {channels} channels")


def _epilogue_out(op, ep, o: int) -> tuple:
    """(output type class, output channels) of an epilogue over `o` accumulators; checks its arrays."""
    if isinstance(ep, Chain):
        _check_chain(op, ep, o)
        t = ep.terminal
        if t is None:
            return Reals, o
        if isinstance(t, (SignTerminal, ThresholdTerminal)):
            return Bits, o
        return Ints, o
    if isinstance(ep, Planes):
        for c in ep.chains:
            _check_chain(op, c, o)
            if not isinstance(c.terminal, (SignTerminal, ThresholdTerminal)):
                _fail(op, "Planes hold bit activations", f"terminal {type(c.terminal).__name__}")
        return Bits, o * len(ep.chains)
    if isinstance(ep, Thresholds):
        n = o * ep.planes
        _array(op, "Thresholds.direction", ep.direction, (n,), "i")
        _array(op, "Thresholds.threshold", ep.threshold, (n,), "i")
        _array(op, "Thresholds.constant", ep.constant, (n,), "i")
        if not np.all(np.isin(ep.direction, (-1, 1))):
            _fail(op, "Thresholds.direction is +-1", f"{np.unique(ep.direction)}")
        if not np.all(np.isin(ep.constant, (-1, 0, 1, Thresholds.NOT_CONSTANT))):
            _fail(op, "Thresholds.constant is -1, 0, +1 or NOT_CONSTANT", f"{np.unique(ep.constant)}")
        return Bits, n
    if isinstance(ep, LevelThresholds):
        n = o * ep.planes
        _array(op, "LevelThresholds.direction", ep.direction, (n,), "i")
        _array(op, "LevelThresholds.threshold", ep.threshold, (n, None), "i")
        if not np.all(np.isin(ep.direction, (-1, 1))):
            _fail(op, "LevelThresholds.direction is +-1", f"{np.unique(ep.direction)}")
        if np.any(np.diff(ep.threshold, axis=1) < 0):
            _fail(op, "LevelThresholds rows are non-decreasing",
                  f"row {int(np.argwhere(np.diff(ep.threshold, axis=1) < 0)[0][0])}")
        return Ints, n
    if isinstance(ep, Requantize):
        _array(op, "Requantize.mult", ep.mult, (o,), "i")
        _array(op, "Requantize.add", ep.add, (o,), "i")
        for what, a in (("acc_lo", ep.acc_lo), ("acc_hi", ep.acc_hi)):
            if a is not None:
                _array(op, f"Requantize.{what}", a, (o,), "i")
        if not ep.lo <= ep.hi:
            _fail(op, "Requantize lo <= hi", f"[{ep.lo}, {ep.hi}]")
        return Ints, o
    _fail(op, "epilogue types", f"{type(ep).__name__} is not an epilogue")


def _check_output(op, out, cls, channels: int) -> None:
    if not isinstance(out, cls):
        _fail(op, "output type follows from the epilogue", f"output is {type(out).__name__}, epilogue gives "
              f"{cls.__name__}")
    if out.shape[2] != channels:
        _fail(op, "epilogue arrays match the output channels", f"epilogue gives {channels} channels, output "
              f"has {out.shape[2]}")


def _verify_input_quantize(graph, op) -> None:
    _arity(op, 1)
    if op.inputs[0] != graph.input:
        _fail(op, "InputQuantize reads the graph input", f"reads '{op.inputs[0]}', not '{graph.input}'")
    out = graph.tensors[op.outputs[0]]
    if not 1 <= len(op.in_shape) <= 3:  # (C, H, W) (or (H, W, C) channel-last), or a vector input's (C,) / (C, L)
        _fail(op, "in_shape is (C, H, W), (H, W, C) for a channel-last input, (C, L) or (C,)", f"{op.in_shape}")
    c, h, w = tuple(op.in_shape) + (1,) * (3 - len(op.in_shape))
    if op.channels_last:
        c, h, w = op.in_shape[2], op.in_shape[0], op.in_shape[1]
    if tuple(out.shape) not in ((h, w, c), (1, 1, c * h * w)):
        _fail(op, "output shape follows from in_shape", f"in_shape {op.in_shape}, output {out.shape}")
    n = c * h * w
    if not isinstance(op.chain, Chain):
        _fail(op, "epilogue types", f"chain is {type(op.chain).__name__}")
    for x in op.chain.ops:
        if x.op != "relu" and (not isinstance(x.const, (np.ndarray, np.generic)) or np.shape(x.const) not in ((), (n,))):
            _fail(op, "chain constants are scalars or per element", f"{x.op} constant of shape "
                  f"{getattr(x.const, 'shape', None)} for {n} elements")
    t = op.chain.terminal
    want = Ints if t is None or isinstance(t, (RoundClampTerminal, LevelTerminal)) else Bits
    if not isinstance(out, want):
        _fail(op, "output type follows from the terminal", f"output is {type(out).__name__}")
    if op.grid is not None and not op.grid[0] <= op.grid[1]:
        _fail(op, "grid lo <= hi", f"{op.grid}")
    if op.int_thresholds is not None:
        th = op.int_thresholds
        for what in ("direction", "threshold", "constant"):
            _array(op, f"int_thresholds.{what}", getattr(th, what), (n,), "i")


def _verify_conv(graph, op) -> None:
    _arity(op, 1)
    src = _input_type(graph, op, 0, (Bits, Ints))
    out = graph.tensors[op.outputs[0]]
    if op.code not in WEIGHT_CODES:
        _fail(op, "codes valid", f"weight code {op.code!r}")
    o = op.w.shape[0] if isinstance(op.w, np.ndarray) and op.w.ndim == 4 else None
    kh, kw = op.kernel if len(op.kernel) == 2 else (None, None)
    wshape = (o, kh, kw, src.shape[2])
    if op.is_dense and (tuple(op.kernel) != tuple(src.shape[:2]) or tuple(out.shape[:2]) != (1, 1)):
        _fail(op, "a dense layer's kernel covers its input", f"kernel {op.kernel}, input {src.shape}")
    _array(op, "w", op.w, wshape, "i")
    if op.w.dtype != np.int8 or not np.all(np.isin(op.w, (-1, 0, 1))):
        _fail(op, "w is int8 in {-1, 0, +1}", f"dtype {op.w.dtype}")
    _array(op, "scale_p", op.scale_p, (o,), "f")
    _array(op, "scale_n", op.scale_n, (o,), "f")
    _check_window(graph, op, src, out, op.kernel, op.stride, op.pads)
    if op.code == "binary":
        zero_rows = ~np.any(op.w != 0, axis=(1, 2, 3))
        if np.any((op.w == 0) & ~zero_rows[:, None, None, None]):
            _fail(op, "codes valid", "a binary code has zeros outside all-zero (pruned) filters")
    else:
        _array(op, "int_w", op.int_w, wshape, "i")
        if op.int_w.dtype != np.int64:
            _fail(op, "array dtypes", f"int_w has dtype {op.int_w.dtype}")
        if op.code == "int" and op.bases:
            _fail(op, "codes valid", "the int code has no bases")
        for i, b in enumerate(op.bases):
            _array(op, f"bases[{i}].w", b.w, wshape, "i")
            _array(op, f"bases[{i}].mult_p", b.mult_p, (o,), "i")
            _array(op, f"bases[{i}].mult_n", b.mult_n, (o,), "i")
            if np.any(b.mult_p < 0) or np.any(b.mult_n < 0):
                _fail(op, "codes valid", f"bases[{i}] has a negative multiplier")
        if op.bases and not np.array_equal(bases_weights(op.bases), op.int_w):
            _fail(op, "codes valid", "the bases do not sum to int_w")
        if op.unit is not None:
            _array(op, "unit", op.unit, (o,), "f")
    if op.bias_kernel is not None:
        _array(op, "bias_kernel", op.bias_kernel, (o, kh, kw), "i")
    if op.in_lists is not None and len(op.in_lists) != o:
        _fail(op, "array shapes", f"in_lists has {len(op.in_lists)} rows for {o} filters")
    cls, channels = _epilogue_out(op, op.epilogue, o)
    _check_output(op, out, cls, channels)


def _verify_conv_sum(graph, op) -> None:
    if not op.inputs or len(set(op.inputs)) != len(op.inputs) or len(op.outputs) != 1:
        _fail(op, "arity", f"inputs {op.inputs} (distinct, one or more) and {len(op.outputs)} outputs, expected 1")
    src = _input_type(graph, op, 0, (Bits, Ints))
    for i in range(1, len(op.inputs)):
        if _input_type(graph, op, i, (Bits, Ints)) != src:
            _fail(op, "the inputs of a ConvSum have one type", f"'{op.inputs[i]}' is {graph.tensors[op.inputs[i]]}, "
                  f"'{op.inputs[0]}' {src}")
    read = set()
    out = graph.tensors[op.outputs[0]]
    o = _check_sum_terms(op, op, src, read)
    if read != set(op.inputs):
        _fail(op, "a ConvSum's terms read each of its inputs", f"they read {sorted(read)}, its inputs are {op.inputs}")
    _check_window(graph, op, src, out, op.kernel, op.stride, op.pads)
    cls, channels = _epilogue_out(op, op.epilogue, o)
    _check_output(op, out, cls, channels)


def _check_sum_terms(op, s, src, read: set) -> int:
    """Check the terms of the ConvSum `s` (`op` itself or one of its nested terms); its channels.
    Each Conv term reads one of `op`'s inputs (their names join `read`)."""
    if len(s.terms) < 2:
        _fail(op, "a ConvSum sums two or more terms", f"'{s.name}' has {len(s.terms)}")
    o = None
    for i, t in enumerate(s.terms):
        if not isinstance(t, (Conv, ConvSum)):
            _fail(op, "ConvSum terms are Convs or ConvSums", f"term {i} of '{s.name}' is {type(t).__name__}")
        if not set(t.inputs) <= set(op.inputs) or (isinstance(t, Conv) and len(t.inputs) != 1) or \
                (tuple(t.kernel), tuple(t.stride), tuple(t.pads), t.is_dense) != \
                (tuple(op.kernel), tuple(op.stride), tuple(op.pads), op.is_dense):
            _fail(op, "ConvSum terms read its input with its window", f"term {i} ('{t.name}')")
        if isinstance(t, ConvSum):
            ch = _check_sum_terms(op, t, src, read)
        else:
            read.add(t.inputs[0])
            ch = t.w.shape[0] if isinstance(t.w, np.ndarray) and t.w.ndim == 4 else None
            shape = (ch, t.kernel[0], t.kernel[1], src.shape[2])
            _array(op, f"terms[{i}].w of '{s.name}'", t.w, shape, "i")
            if t.code != "binary":
                _array(op, f"terms[{i}].int_w of '{s.name}'", t.int_w, shape, "i")
        o = ch if o is None else o
        if ch != o:
            _fail(op, "ConvSum terms have one number of output channels", f"term {i} ('{t.name}') has {ch}, "
                  f"term 0 {o}")
        if not isinstance(t.epilogue, Chain) or t.epilogue.terminal is not None \
                or chain_factors(t.epilogue.ops, o) is None:
            _fail(op, "ConvSum terms' epilogues are Chains of mul / div only", f"term {i} ('{t.name}')")
    return o


def _verify_max_pool(graph, op) -> None:
    _arity(op, 1)
    src = _input_type(graph, op, 0, (Bits, Ints))
    out = graph.tensors[op.outputs[0]]
    if type(out) is not type(src) or out.shape[2] != src.shape[2] \
            or (isinstance(src, Ints) and (out.lo, out.hi) != (src.lo, src.hi)):
        _fail(op, "a pool keeps its input's type", f"{src} -> {out}")
    _check_window(graph, op, src, out, op.kernel, op.stride, op.pads)


def _verify_sum_pool(graph, op) -> None:
    _arity(op, 1)
    src = _input_type(graph, op, 0, (Ints,))
    out = graph.tensors[op.outputs[0]]
    if not isinstance(out, Ints) or out.shape[2] != src.shape[2]:
        _fail(op, "output type", f"{src} -> {out}")
    _check_window(graph, op, src, out, op.kernel, op.stride, op.pads)
    if op.multipliers is not None:
        _array(op, "multipliers", op.multipliers, tuple(out.shape[:2]), "i")
        if np.min(op.multipliers) < 1:
            _fail(op, "multipliers are positive", f"min {np.min(op.multipliers)}")


def _verify_global_sum_pool(graph, op) -> None:
    _arity(op, 1)
    src = _input_type(graph, op, 0, (Bits, Ints))
    out = graph.tensors[op.outputs[0]]
    if not isinstance(out, Ints) or tuple(out.shape) != (1, 1, src.shape[2]):
        _fail(op, "output type", f"{src} -> {out}")


def _verify_flatten(graph, op) -> None:
    _arity(op, 1)
    src = _input_type(graph, op, 0, (Ints,))
    out = graph.tensors[op.outputs[0]]
    n = src.shape[0] * src.shape[1] * src.shape[2]
    if not isinstance(out, Ints) or tuple(out.shape) != (1, 1, n) or (out.lo, out.hi, out.scale) != (src.lo, src.hi, src.scale):
        _fail(op, "Flatten keeps the values: Ints (1, 1, H * W * C) of the input's range and scale", f"{src} -> {out}")


def _verify_unflatten(graph, op) -> None:
    _arity(op, 1)
    src = _input_type(graph, op, 0, (Bits, Ints))
    out = graph.tensors[op.outputs[0]]
    n = src.shape[2]
    if src.shape[:2] != (1, 1) or type(out) is not type(src) or out.shape[0] * out.shape[1] * out.shape[2] != n \
            or replace(out, shape=src.shape) != src:
        _fail(op, "Unflatten keeps the values: (1, 1, D) -> (H, W, C), H * W * C = D, of the input's type, range "
              "and scale", f"{src} -> {out}")
    if op.order is not None:
        _array(op, "order", op.order, (n,), "i")
        if not np.array_equal(np.sort(op.order), np.arange(n)):
            _fail(op, "order is a permutation of the vector's elements", f"{op.order[:8]}...")


def _verify_gather(graph, op) -> None:
    _arity(op, 1)
    src = _input_type(graph, op, 0, (Bits, Ints))
    out = graph.tensors[op.outputs[0]]
    h, w, c = src.shape
    channels = tuple(range(c)) if op.channels is None else op.channels
    same = type(out) is type(src) and out.scale == src.scale and \
        (isinstance(out, Bits) or (out.lo, out.hi) == (src.lo, src.hi))
    if op.index is not None:
        if not same or op.rows or op.cols or op.channels is not None or tuple(op.index.shape) != tuple(out.shape) \
                or op.index.dtype != np.int64 or op.index.min(initial=0) < 0 or op.index.max(initial=0) >= h * w * c:
            _fail(op, "a Gather by element index keeps the values (its input's type, range and scale), has no "
                  "row, column or channel tables and an int64 index of the output's shape into the input",
                  f"{src} -> {out}, index {op.index.shape} {op.index.dtype}")
        return
    if not same or tuple(out.shape) != (len(op.rows), len(op.cols), len(channels)):
        _fail(op, "Gather keeps the values: its input's type, range and scale, (len(rows), len(cols), "
              "len(channels))", f"{src} -> {out}, {len(op.rows)} rows, {len(op.cols)} cols, {len(channels)} channels")
    if not all(0 <= r < h for r in op.rows) or not all(0 <= x < w for x in op.cols) \
            or not all(0 <= k < c for k in channels) or not channels:
        _fail(op, "Gather takes input rows, columns and channels that exist",
              f"rows {op.rows}, cols {op.cols}, channels {op.channels} of {h}x{w}x{c}")


def _verify_arg_max(graph, op) -> None:
    _arity(op, 1)
    src = _input_type(graph, op, 0, (Reals, Ints))
    out = graph.tensors[op.outputs[0]]
    c = src.shape[0] * src.shape[1] * src.shape[2]
    if not 1 <= op.k <= c:
        _fail(op, "1 <= k <= channels", f"k={op.k} for {c} values")
    if not isinstance(out, Ints) or tuple(out.shape) != (1, 1, op.k):
        _fail(op, "output type", f"{out}")


def _verify_activation(graph, op) -> None:
    _arity(op, 1)
    src = _input_type(graph, op, 0, (Ints,))
    out = graph.tensors[op.outputs[0]]
    c = src.shape[2]
    cls, channels = _epilogue_out(op, op.epilogue, c)
    _check_output(op, out, cls, channels)
    if tuple(out.shape[:2]) != tuple(src.shape[:2]):
        _fail(op, "an elementwise op keeps the shape", f"{src.shape} -> {out.shape}")


def _verify_add(graph, op) -> None:
    if len(op.inputs) != 2 or len(op.outputs) != 1:
        _fail(op, "arity", f"{len(op.inputs)} inputs and {len(op.outputs)} outputs, expected 2 and 1")
    a = _input_type(graph, op, 0, (Ints,))
    b = _input_type(graph, op, 1, (Ints,))
    out = graph.tensors[op.outputs[0]]
    if not isinstance(out, Ints) or not (tuple(a.shape) == tuple(b.shape) == tuple(out.shape)):
        _fail(op, "Add of equal shapes", f"{a.shape} + {b.shape} -> {out.shape}")
    if not op.lo <= op.hi or len(op.shifts) != 2 or min(op.shifts) < 0 or op.round_shift < 0:
        _fail(op, "Add lo <= hi, shifts >= 0", f"[{op.lo}, {op.hi}], shifts {op.shifts}, round_shift {op.round_shift}")


def _verify_concat(graph, op) -> None:
    if len(op.inputs) < 1 or len(op.outputs) != 1:
        _fail(op, "arity", f"{len(op.inputs)} inputs and {len(op.outputs)} outputs, expected >= 1 and 1")
    srcs = [_input_type(graph, op, i, (Bits, Ints)) for i in range(len(op.inputs))]
    out = graph.tensors[op.outputs[0]]
    kinds = {type(s) for s in srcs}
    if len(kinds) != 1 or type(out) not in kinds:
        _fail(op, "Concat of one tensor kind", f"inputs {sorted(k.__name__ for k in kinds)}, output "
              f"{type(out).__name__}")
    if any(tuple(s.shape[:2]) != tuple(out.shape[:2]) for s in srcs) or \
            sum(s.shape[2] for s in srcs) != out.shape[2]:
        _fail(op, "Concat output shape is H x W x (sum of the input channels)",
              f"{[s.shape for s in srcs]} -> {out.shape}")
    if isinstance(out, Bits):
        if op.shifts or any(s.scale != out.scale for s in srcs):
            _fail(op, "a bit Concat has no shifts and one scale", f"shifts {op.shifts}, scales "
                  f"{[s.scale for s in srcs]} -> {out.scale}")
        return
    if len(op.shifts) != len(srcs) or min(op.shifts) < 0:
        _fail(op, "an integer Concat has a shift >= 0 per input", f"shifts {op.shifts}")
    for s, k in zip(srcs, op.shifts):
        if not (out.lo <= s.lo * 2**k and s.hi * 2**k <= out.hi) or s.scale != out.scale * 2**k:
            _fail(op, "each shifted input lies in the output's range and on its grid",
                  f"[{s.lo}, {s.hi}] x {s.scale:g} << {k} -> [{out.lo}, {out.hi}] x {out.scale:g}")


def _verify_softmax(graph, op) -> None:
    _arity(op, 1)
    src = _input_type(graph, op, 0, (Reals,))
    out = graph.tensors[op.outputs[0]]
    integers = isinstance(out, Ints) and op.out_grid is not None
    if not (isinstance(out, Reals) or integers) or tuple(out.shape) != tuple(src.shape):
        _fail(op, "Softmax keeps its input's shape (Reals, or Ints of its output grid's integers)", f"{src} -> {out}")
    if op.out_grid is not None:
        scale, zp, qmin, qmax = op.out_grid
        lo, hi = (op.requant or op.out_grid)[-2:]
        if integers and (out.lo, out.hi, out.scale) != (lo, hi, 1.0):
            _fail(op, "the integers of an output grid span its last [qmin, qmax] with step 1", f"{out}")
        if op.requant is not None and not (op.requant[1] <= op.requant[0] <= op.requant[2]
                                           and abs(op.requant[0]) < QUANT_ROUND_LIMIT):
            _fail(op, "a requantization's zero point within its [qmin, qmax]", f"{op.requant}")
    elif op.requant is not None:
        _fail(op, "a requantization follows an output grid", f"{op.requant}")
        if op.log or not (0 < scale < math.inf) or not qmin <= zp <= qmax or (1 / scale + abs(zp)) >= QUANT_ROUND_LIMIT:
            _fail(op, "an output grid on Softmax (not LogSoftmax): a positive scale, qmin <= zero point <= qmax, "
                  "steps below 2^22", f"{op.out_grid}")


def _function_of_stream(graph, op) -> tuple:
    """(input, output) types of a function of one fixed-point stream (Sigmoid, Gelu): Ints of one shape."""
    _arity(op, 1)
    src = _input_type(graph, op, 0, (Ints,))
    out = graph.tensors[op.outputs[0]]
    if not isinstance(out, Ints) or tuple(out.shape) != tuple(src.shape):
        _fail(op, f"{type(op).__name__} keeps its input's shape (Ints)", f"{src} -> {out}")
    return src, out


def _verify_sigmoid(graph, op) -> None:
    src, out = _function_of_stream(graph, op)
    if not (0 <= out.lo <= out.hi <= 2**op.frac_bits) or out.scale != 2.0**-op.frac_bits \
            or not (0 < op.in_scale < math.inf) or not 0 <= op.frac_bits <= 30:
        _fail(op, "Sigmoid output in [0, 2**frac_bits] on the grid 2**-frac_bits, a positive finite input scale",
              f"[{out.lo}, {out.hi}] x {out.scale:g}, frac_bits {op.frac_bits}, in_scale {op.in_scale:g}")


def _verify_gelu(graph, op) -> None:
    src, out = _function_of_stream(graph, op)
    if out.scale != 2.0**-op.frac_bits or not (0 < op.in_scale < math.inf) or not 0 <= op.frac_bits <= 30 \
            or op.x_max < max(-src.lo, src.hi) * op.in_scale:
        _fail(op, "Gelu output on the grid 2**-frac_bits, a positive finite input scale, x_max the input's reach",
              f"{out.scale:g}, frac_bits {op.frac_bits}, in_scale {op.in_scale:g}, x_max {op.x_max:g}")


def _verify_mul(graph, op) -> None:
    if len(op.inputs) != 2 or len(op.outputs) != 1:
        _fail(op, "arity", f"{len(op.inputs)} inputs and {len(op.outputs)} outputs, expected 2 and 1")
    a = _input_type(graph, op, 0, (Ints,))
    b = _input_type(graph, op, 1, (Ints,))
    out = graph.tensors[op.outputs[0]]
    if not isinstance(out, Ints) or tuple(out.shape) != tuple(a.shape) or \
            tuple(b.shape) not in (tuple(a.shape), (1, 1, a.shape[2])):
        _fail(op, "Mul of equal shapes or by one value per channel", f"{a.shape} * {b.shape} -> {out}")
    if max(-a.lo, a.hi, -b.lo, b.hi) >= 2**31 or not op.lo <= op.hi or op.round_shift < 0:
        _fail(op, "Mul of 32-bit operands, lo <= hi, round_shift >= 0",
              f"[{a.lo}, {a.hi}] * [{b.lo}, {b.hi}], [{op.lo}, {op.hi}], round_shift {op.round_shift}")


_INPUT_TYPES = {Conv: (Bits, Ints), ConvSum: (Bits, Ints), MaxPool: (Bits, Ints), SumPool: (Ints,),
                GlobalSumPool: (Bits, Ints), Flatten: (Ints,), Unflatten: (Bits, Ints), Gather: (Bits, Ints),
                ArgMax: (Reals, Ints), Activation: (Ints,), Add: (Ints,),
                Concat: (Bits, Ints), Softmax: (Reals,), Sigmoid: (Ints,), Gelu: (Ints,), Mul: (Ints,)}
_CHECKS = {InputQuantize: _verify_input_quantize, Conv: _verify_conv, ConvSum: _verify_conv_sum,
           MaxPool: _verify_max_pool, SumPool: _verify_sum_pool, GlobalSumPool: _verify_global_sum_pool,
           Flatten: _verify_flatten, Unflatten: _verify_unflatten, Gather: _verify_gather,
           ArgMax: _verify_arg_max, Activation: _verify_activation, Add: _verify_add, Concat: _verify_concat, Softmax: _verify_softmax,
           Sigmoid: _verify_sigmoid, Gelu: _verify_gelu, Mul: _verify_mul}
