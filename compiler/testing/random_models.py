"""Seeded random binarized networks as plain ONNX, the way PyTorch exports them.

bnnc's tests, benchmarks and demo use these models. Every model is plain float ONNX (opset 13,
IR version 8): a `QuantizeLinear -> DequantizeLinear` pair on the float32 input "input" of shape
(1, C, H, W), then `Conv -> BatchNormalization -> Sign` blocks (with optional `MaxPool`), an
optional `GlobalAveragePool`, a flatten, `Gemm`/`MatMul -> BatchNormalization -> Sign` blocks and
a final `Gemm` that gives the logits (optionally followed by a constant `Mul`/`Add`, `ArgMax` or
`TopK`).

The arithmetic is built so that a float runtime and an exact integer compiler can never disagree
(see shared/design/networks.md, sections 3, 5 and 7):

* Weights are `alpha_o * S` with S in {-1, +1} per output channel o; pruned filters are all zero.
  Every linear layer therefore computes `alpha_o * s * acc`, where `acc` is an integer
  accumulator (a sum of +-1 values, of +-(q - zp) on the input's quantization grid, or of +-n with
  n the sum of a channel's +-1 values under a GlobalAveragePool) and s is the scale that multiplies
  it (the input scale, 1 / (H*W) after a GlobalAveragePool, 1 otherwise).
* Each channel's BatchNormalization `mean` is chosen so that BN is exactly 0 at
  `acc = t + 0.5` for an integer t: the decision boundary is a half-integer of the accumulator,
  half a step away from every reachable value, so float rounding cannot flip a `Sign`. About 10%
  of the channels put t outside the reachable range (constant +1 or -1 channels); gamma = 0
  channels get |beta| >= 0.1; pruned channels get |BN(0)| >= 0.1. No pre-activation is ever 0.
* The final layer is exact in float32 and tie-free: its weights and bias, the optional `Mul`
  (powers of two) and `Add` are dyadic, every partial sum fits float32's 24-bit mantissa, and the
  logits of two classes always differ by at least 1/16 of 2^-E / D (alpha' = m * 2^-E, D = 1 or
  the power-of-two pool size). A float runtime gives bit-identical logits and the same top-1.

`random_inputs` draws inputs that cover the whole quantization grid with jitter well inside a grid
step; `evaluate` and `margins` run a model in float64 with numpy and measure how far every
BatchNormalization output stays from 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8
BN_EPSILON = 1e-5
# Channel and feature counts: deliberately not multiples of 32 or 64.
WIDTHS = (3, 5, 7, 13, 31, 33, 47, 65, 70)
# Per-channel probabilities of the BatchNormalization cases.
P_NEGATIVE_GAMMA = 0.2
P_ZERO_GAMMA = 0.04
P_CONSTANT = 0.1

_F32 = np.float32
_F64 = np.float64


@dataclass
class ModelSpec:
    """What `random_model` generated, for tests to inspect.

    `layers` holds one human-readable dict per layer, in order. Every dict has "kind" (one of
    "conv", "gap", "flatten", "dense", "final"); conv and dense layers list the channels that are
    "pruned" (all-zero filters), have "negative_gamma" or "zero_gamma", or are "constant" (their
    decision boundary lies outside the reachable accumulator range).
    """

    seed: int
    input_shape: tuple
    layers: list
    input_scale: float
    input_zero_point: int
    input_dtype: str
    output: str


class Margin(NamedTuple):
    """Per-channel minimum distance of a BatchNormalization output from 0 (the Sign threshold).

    absolute: min |y|. relative: min |y| / m, where m bounds the magnitude of everything that the
    float32 computation of y adds up: |a| * sum |w x| + |a * mean| + |beta|, with
    a = gamma / sqrt(var + eps).
    A float32 runtime's rounding error is a small multiple of 6e-8 * m.
    """

    absolute: np.ndarray
    relative: np.ndarray


@dataclass
class _Accumulator:
    """How the float input of the next linear layer maps to its integer accumulator.

    kind "grid": values are (q - zp) * scale with q in [qlo, qhi];
    "binary": values are +-1; "average": values are n / count with n in [-count, count].
    """

    kind: str
    scale: float
    zero_point: int = 0
    qlo: int = 0
    qhi: int = 0
    count: int = 1


# Naming styles: "plain" (conv_0_weight, unnamed nodes), "torch" (conv.0.weight,
# /conv/0/Conv_output_0), "odd" (conv.0/weight, "bn-1 out"): all legal, some need sanitizing.
_STYLES = ("plain", "torch", "odd")


class _Builder:
    """Accumulates the nodes, initializers and layer descriptions of one model."""

    def __init__(self, rng: np.random.Generator, style: str, keep_all_channels: bool = False):
        self.rng = rng
        self.style = style
        self.keep_all_channels = keep_all_channels  # no constant (prunable) BatchNorm channels
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.layers: list[dict] = []
        self._names: set[str] = {"input"}
        self.tensor = "input"
        self.shape: tuple = ()
        self.acc: _Accumulator | None = None

    # -- names ---------------------------------------------------------------------------------

    def _unique(self, name: str) -> str:
        base, k = name, 1
        while name in self._names:
            name = f"{base}_{k}"
            k += 1
        self._names.add(name)
        return name

    def _param_name(self, scope: str, role: str) -> str:
        if self.style == "plain":
            return self._unique(f"{scope}_{role}".replace(".", "_"))
        if self.style == "torch":
            return self._unique(f"{scope}.{role}")
        return self._unique(f"{scope}/{role}")  # "conv.0/weight"

    def _tensor_name(self, scope: str, op: str) -> str:
        if self.style == "plain":
            return self._unique(f"{scope}_out".replace(".", "_"))
        if self.style == "torch":
            return self._unique(f"/{scope.replace('.', '/')}/{op}_output_0")
        return self._unique(f"{scope.replace('.', '-')} out")  # "bn-1 out"

    def _node_name(self, scope: str, op: str) -> str:
        if self.style == "plain":
            return ""  # unnamed nodes are legal ONNX
        if self.style == "torch":
            return self._unique(f"/{scope.replace('.', '/')}/{op}")
        return self._unique(f"{scope}:{op}")

    # -- graph pieces --------------------------------------------------------------------------

    def const(self, scope: str, role: str, array: np.ndarray) -> str:
        """Adds an initializer and returns its name."""
        name = self._param_name(scope, role)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op: str, inputs: list, scope: str, n_outputs: int = 1, **attrs) -> list:
        """Adds a node and returns its output names."""
        outputs = [self._tensor_name(scope, op) for _ in range(n_outputs)]
        self.nodes.append(
            helper.make_node(op, inputs, outputs, name=self._node_name(scope, op), **attrs))
        return outputs

    # -- random parameters ---------------------------------------------------------------------

    def alphas(self, n: int, dyadic: bool) -> np.ndarray:
        """Per-channel weight scales in [0.05, 2]; dyadic ones have 8 significant bits."""
        a = np.exp(self.rng.uniform(math.log(0.05), math.log(2.0), n))
        if dyadic:
            unit = 2.0 ** (np.floor(np.log2(a)) - 7)
            a = np.rint(a / unit) * unit
        return a.astype(_F32)

    def pick_pruned(self, n: int, fraction: float) -> np.ndarray:
        """A boolean mask of round(fraction * n) pruned filters: at least one pruned when
        fraction > 0, at least one kept."""
        count = min(int(round(fraction * n)), n - 1)
        if fraction > 0 and n >= 2:
            count = max(count, 1)
        mask = np.zeros(n, dtype=bool)
        mask[self.rng.choice(n, size=count, replace=False)] = True
        return mask

    def random_prune_fraction(self) -> float:
        """No pruning half of the time, else a fraction in [0.05, 0.4]."""
        return float(self.rng.uniform(0.05, 0.4)) if self.rng.random() < 0.5 else 0.0

    def accumulator_stats(self, signs: np.ndarray):
        """Mean, spread and reachable [lo, hi] of each output channel's integer accumulator.

        `signs` is the (out, fan_in) matrix of weight signs (0 for pruned weights). The mean and
        spread assume inputs spread uniformly over their range, as `random_inputs` draws them.
        """
        pos = (signs > 0).sum(axis=1).astype(_F64)
        neg = (signs < 0).sum(axis=1).astype(_F64)
        acc = self.acc
        if acc.kind == "grid":
            zp, qlo, qhi = acc.zero_point, acc.qlo, acc.qhi
            mean = ((qlo + qhi) / 2 - zp) * (pos - neg)
            sigma = math.sqrt(((qhi - qlo + 1) ** 2 - 1) / 12) * np.sqrt(pos + neg)
            hi = pos * (qhi - zp) + neg * (zp - qlo)
            lo = -(pos * (zp - qlo) + neg * (qhi - zp))
        else:
            reach = pos + neg if acc.kind == "binary" else (pos + neg) * acc.count
            mean = np.zeros_like(pos)
            sigma = np.sqrt(reach)
            hi, lo = reach, -reach
        return mean, np.maximum(sigma, 1.0), lo, hi

    def batchnorm(self, scope: str, alpha: np.ndarray, signs: np.ndarray, pruned: np.ndarray):
        """Adds a BatchNormalization whose zero crossings sit at half-integer accumulators.

        Returns the output name and a dict of the channels with negative gamma, zero gamma, or a
        boundary outside the reachable range.
        """
        rng = self.rng
        n = len(alpha)
        s = float(_F32(self.acc.scale))
        mean_acc, sigma, lo, hi = self.accumulator_stats(signs)
        spread = alpha.astype(_F64) * s * sigma  # the pre-BN value's spread, as batch stats give
        gamma = rng.uniform(0.25, 2.0, n) * np.where(rng.random(n) < P_NEGATIVE_GAMMA, -1.0, 1.0)
        zero = (rng.random(n) < P_ZERO_GAMMA) & (not self.keep_all_channels)
        gamma[zero] = 0.0
        var = spread**2 * rng.uniform(0.5, 2.0, n)
        beta = rng.normal(0.0, 0.5, n)
        beta[zero] = rng.choice([-1.0, 1.0], zero.sum()) * rng.uniform(0.1, 1.0, zero.sum())
        gamma, var, beta = (v.astype(_F32).astype(_F64) for v in (gamma, var, beta))
        std = np.sqrt(var + BN_EPSILON)
        safe_gamma = np.where(zero, 1.0, gamma)

        # Boundary at acc = t + 0.5: t near the accumulator's typical values, or out of reach.
        t = np.clip(np.rint(rng.normal(mean_acc, sigma)), lo, hi - 1)
        constant = (rng.random(n) < P_CONSTANT) & ~pruned & ~zero & (not self.keep_all_channels)
        offset = rng.integers(0, 4, n)
        t = np.where(constant, np.where(rng.random(n) < 0.5, hi + offset, lo - 1 - offset), t)
        mean = alpha.astype(_F64) * s * (t + 0.5) + beta * std / safe_gamma
        # Pruned filters always see acc = 0: put BN(0) at a chosen value, |BN(0)| >= 0.1.
        bn0 = rng.choice([-1.0, 1.0], n) * rng.uniform(0.1, 1.0, n)
        mean = np.where(pruned, (beta - bn0) * std / safe_gamma, mean)
        mean = np.where(zero, rng.normal(0.0, 1.0, n) * spread, mean)

        params = [self.const(scope, role, v.astype(_F32)) for role, v in
                  (("weight", gamma), ("bias", beta), ("running_mean", mean), ("running_var", var))]
        (out,) = self.node("BatchNormalization", [self.tensor] + params, scope,
                           epsilon=BN_EPSILON, momentum=0.9)
        info = {
            "negative_gamma": np.flatnonzero(gamma < 0).tolist(),
            "zero_gamma": np.flatnonzero(zero).tolist(),
            "constant": np.flatnonzero(constant).tolist(),
        }
        return out, info

    # -- layers --------------------------------------------------------------------------------

    def quantized_input(self, shape: tuple, dtype: str, scale: float, zero_point: int):
        """Input -> QuantizeLinear -> DequantizeLinear."""
        self.shape = shape
        np_dtype = np.uint8 if dtype == "uint8" else np.int8
        info = np.iinfo(np_dtype)
        scale_name = self.const("quant", "scale", np.array(scale, dtype=_F32))
        zp_name = self.const("quant", "zero_point", np.array(zero_point, dtype=np_dtype))
        (q,) = self.node("QuantizeLinear", [self.tensor, scale_name, zp_name], "quant.in")
        (self.tensor,) = self.node("DequantizeLinear", [q, scale_name, zp_name], "dequant.in")
        self.acc = _Accumulator("grid", scale, zero_point, int(info.min), int(info.max))

    def conv_block(self, index: int, out_channels: int, k: int, stride: int, pad: int, *,
                   prune: float = 0.0, bias: bool = False, pool: dict | None = None,
                   dyadic: bool = True):
        """Conv (+-alpha weights) -> BatchNormalization -> Sign, with an optional MaxPool.

        pool: {"k", "stride", "pad", "where": "after_sign" | "before_sign"} or None.
        """
        _, c, h, w = self.shape
        signs = self.rng.choice([-1.0, 1.0], (out_channels, c, k, k))
        pruned = self.pick_pruned(out_channels, prune)
        signs[pruned] = 0.0
        alpha = self.alphas(out_channels, dyadic)
        scope = f"conv.{index}"
        weight = alpha[:, None, None, None] * signs.astype(_F32)
        inputs = [self.tensor, self.const(scope, "weight", weight)]
        if bias:
            inputs.append(self.const(scope, "bias", np.zeros(out_channels, dtype=_F32)))
        (self.tensor,) = self.node("Conv", inputs, scope, kernel_shape=[k, k], pads=[pad] * 4,
                                   strides=[stride] * 2, dilations=[1, 1], group=1)
        h, w = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
        bn, info = self.batchnorm(f"bn.{index}", alpha, signs.reshape(out_channels, -1), pruned)
        self.tensor = bn
        if pool and pool["where"] == "before_sign":
            h, w = self._maxpool(index, pool, h, w)
        (self.tensor,) = self.node("Sign", [self.tensor], f"sign.{index}")
        if pool and pool["where"] == "after_sign":
            h, w = self._maxpool(index, pool, h, w)
        self.shape = (1, out_channels, h, w)
        self.acc = _Accumulator("binary", 1.0)
        self.layers.append({
            "kind": "conv", "in_channels": c, "out_channels": out_channels, "k": k,
            "stride": stride, "pad": pad, "bias": bias, "pool": pool,
            "pruned": np.flatnonzero(pruned).tolist(), **info, "out_shape": self.shape})

    def _maxpool(self, index: int, pool: dict, h: int, w: int) -> tuple:
        k, stride, pad = pool["k"], pool["stride"], pool["pad"]
        (self.tensor,) = self.node("MaxPool", [self.tensor], f"pool.{index}", kernel_shape=[k, k],
                                   strides=[stride] * 2, pads=[pad] * 4)
        return (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1

    def global_average_pool(self):
        """GlobalAveragePool over +-1 values: the next accumulator sums n in [-H*W, H*W]."""
        _, c, h, w = self.shape
        (self.tensor,) = self.node("GlobalAveragePool", [self.tensor], "gap")
        self.shape = (1, c, 1, 1)
        self.acc = _Accumulator("average", 1.0 / (h * w), count=h * w)
        self.layers.append({"kind": "gap", "count": h * w})

    def flatten(self, form: str):
        """Flattens to (1, F): `Flatten`, `Reshape [1, -1]`, or PyTorch's x.view(x.size(0), -1)."""
        features = int(np.prod(self.shape[1:]))
        if form == "flatten":
            (self.tensor,) = self.node("Flatten", [self.tensor], "flatten", axis=1)
        elif form == "reshape":
            shape = self.const("flatten", "shape", np.array([1, -1], dtype=np.int64))
            (self.tensor,) = self.node("Reshape", [self.tensor, shape], "flatten")
        else:  # "shape_subgraph"
            (shape,) = self.node("Shape", [self.tensor], "flatten.shape")
            zero = self.const("flatten", "index", np.array(0, dtype=np.int64))
            (batch,) = self.node("Gather", [shape, zero], "flatten.gather", axis=0)
            axes = self.const("flatten", "axes", np.array([0], dtype=np.int64))
            (batch,) = self.node("Unsqueeze", [batch, axes], "flatten.unsqueeze")
            rest = self.const("flatten", "rest", np.array([-1], dtype=np.int64))
            (target,) = self.node("Concat", [batch, rest], "flatten.concat", axis=0)
            (self.tensor,) = self.node("Reshape", [self.tensor, target], "flatten.reshape")
        self.shape = (1, features)
        self.layers.append({"kind": "flatten", "form": form, "features": features})

    def _linear(self, scope: str, form: str, weight: np.ndarray, bias: np.ndarray | None):
        """(1, F) x weight(out, F)^T [+ bias]: Gemm(transB=1), MatMul or MatMul(Transpose(W))."""
        if form == "gemm":
            inputs = [self.tensor, self.const(scope, "weight", weight)]
            if bias is not None:
                inputs.append(self.const(scope, "bias", bias))
            (self.tensor,) = self.node("Gemm", inputs, scope, transB=1)
            return
        if form == "matmul":
            rhs = self.const(scope, "weight", np.ascontiguousarray(weight.T))
        else:  # "matmul_transpose"
            (rhs,) = self.node("Transpose", [self.const(scope, "weight", weight)],
                               f"{scope}.transpose", perm=[1, 0])
        (self.tensor,) = self.node("MatMul", [self.tensor, rhs], scope)
        if bias is not None:
            (self.tensor,) = self.node("Add", [self.tensor, self.const(scope, "bias", bias)],
                                       f"{scope}.add")

    def dense_block(self, index: int, out_features: int, *, form: str = "gemm",
                    prune: float = 0.0, bias: bool = False, dyadic: bool = True):
        """Gemm / MatMul (+-alpha weights) -> BatchNormalization -> Sign on a (1, F) tensor."""
        features = self.shape[1]
        signs = self.rng.choice([-1.0, 1.0], (out_features, features))
        pruned = self.pick_pruned(out_features, prune)
        signs[pruned] = 0.0
        alpha = self.alphas(out_features, dyadic)
        scope = f"fc.{index}"
        self._linear(scope, form, alpha[:, None] * signs.astype(_F32),
                     np.zeros(out_features, dtype=_F32) if bias else None)
        bn, info = self.batchnorm(f"bn_fc.{index}", alpha, signs, pruned)
        (self.tensor,) = self.node("Sign", [bn], f"sign_fc.{index}")
        self.layers.append({
            "kind": "dense", "form": form, "in_features": features, "out_features": out_features,
            "bias": bias, "pruned": np.flatnonzero(pruned).tolist(), **info,
            "input": self.acc.kind})
        self.shape = (1, out_features)
        self.acc = _Accumulator("binary", 1.0)

    def final_dense(self, classes: int, *, bias: bool = True, mul: str | None = None,
                    add: str | None = None):
        """The logits layer, exact in float32 and free of ties (see the module docstring).

        Effective weights alpha'_o = m_o * 2^-E (m_o in [8, 15]) and effective bias
        (2^-E / D) * (I_o + (f_o + 0.5) / 16) with distinct f_o in [0, 15]: two logits differ by
        (2^-E / D) * (integer + (f_o - f_p) / 16), never 0. The optional Mul multiplies by powers
        of two and the optional Add adds multiples of 2^-E / (32 D), so every step stays exact.
        mul / add: None, "scalar" or "per_logit". Without a Gemm bias, the Add carries the offsets.
        """
        rng = self.rng
        if self.acc.kind == "grid" or self.acc.count & (self.acc.count - 1):
            raise ValueError("the final layer needs +-1 inputs or a power-of-two average pool")
        if not 2 <= classes <= 16:
            raise ValueError("the final layer gives 2 to 16 logits")
        features, d = self.shape[1], self.acc.count
        # In units of 2^-E / (32 D) every partial sum is below 32 * 15 * features * D, plus the
        # bias and offset (< 2^10): it must fit float32's 24-bit mantissa.
        if 32 * 15 * features * d >= 2**24 - 2**10:
            raise ValueError("too many inputs for an exact float32 final layer")
        if not bias:
            add = "per_logit"
        exponent = int(rng.integers(3, 8))
        m = rng.integers(8, 16, classes)
        unit = 2.0**-exponent / (32 * d)
        fraction = rng.permutation(16)[:classes]
        effective_bias = unit * (32 * rng.integers(-8, 9, classes) + 2 * fraction + 1)
        shape = () if mul == "scalar" else (classes,)
        factor = (rng.choice([0.25, 0.5, 2.0, 4.0], shape) if mul == "scalar" else
                  rng.choice([0.25, 0.5, 1.0, 2.0, 4.0], shape) if mul == "per_logit" else 1.0)
        if not bias:
            offset = effective_bias
        elif add is not None:
            offset = unit * rng.integers(-64, 65, () if add == "scalar" else (classes,))
        else:
            offset = 0.0
        alpha = m * 2.0**-exponent / np.broadcast_to(factor, (classes,))
        signs = rng.choice([-1.0, 1.0], (classes, features))
        gemm_bias = ((effective_bias - offset) / factor).astype(_F32) if bias else None
        self._linear("fc.out", "gemm", (alpha[:, None] * signs).astype(_F32), gemm_bias)
        if mul is not None:
            factor_name = self.const("scale", "factor", np.asarray(factor, dtype=_F32))
            (self.tensor,) = self.node("Mul", [self.tensor, factor_name], "scale")
        if add is not None:
            offset_name = self.const("shift", "offset", np.asarray(offset, dtype=_F32))
            (self.tensor,) = self.node("Add", [self.tensor, offset_name], "shift")
        self.layers.append({"kind": "final", "in_features": features, "classes": classes,
                            "bias": bias, "mul": mul, "add": add})
        self.shape = (1, classes)

    def model(self, input_shape: tuple, output: str, output_name: str, name: str,
              doc: str) -> onnx.ModelProto:
        """Adds the output head ("logits", "argmax" or "topk") and assembles the ModelProto."""
        classes = self.shape[1]
        output_name = self._unique(output_name)
        if output == "logits":
            out_info = helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [1, classes])
            self.nodes[-1].output[0] = output_name
        elif output == "argmax":
            out_info = helper.make_tensor_value_info(output_name, TensorProto.INT64, [1])
            node_name = self._node_name("argmax", "ArgMax")
            self.nodes.append(helper.make_node("ArgMax", [self.tensor], [output_name], axis=1,
                                               keepdims=0, name=node_name))
        else:
            k = self.const("topk", "k", np.array([1], dtype=np.int64))
            values = self._tensor_name("topk.values", "TopK")
            out_info = helper.make_tensor_value_info(output_name, TensorProto.INT64, [1, 1])
            self.nodes.append(helper.make_node("TopK", [self.tensor, k], [values, output_name],
                                               axis=1, name=self._node_name("topk", "TopK")))
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(input_shape))],
            [out_info], initializer=self.initializers)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="bnnc.testing.random_models", doc_string=doc)
        model.ir_version = IR_VERSION
        return model


def _output_name(rng: np.random.Generator, style: str) -> str:
    choices = {"plain": ("output", "logits", "y"), "torch": ("output", "logits"),
               "odd": ("class id", "out:0", "logits/final")}[style]
    return str(rng.choice(choices))


def _conv_params(rng: np.random.Generator, size: int) -> tuple:
    """A random (k, stride, pad) that fits a size x size input."""
    kernels = [3, 3, 3, 1] + ([2] if size >= 2 else []) + ([5] if size >= 5 else [])
    while True:
        k = int(rng.choice(kernels))
        pad = int(rng.integers(0, 2)) if k == 3 else 0
        if size + 2 * pad >= k:
            break
    stride = 2 if size >= 4 and rng.random() < 0.3 else 1
    return k, stride, pad


def _pool_params(rng: np.random.Generator, size: int) -> dict | None:
    """A random MaxPool (2x2/2, or 3x3/2 with pads 1) for a size x size input, or None."""
    if size < 2 or rng.random() >= 0.35:
        return None
    where = "after_sign" if rng.random() < 0.5 else "before_sign"
    if rng.random() < 0.7:
        return {"k": 2, "stride": 2, "pad": 0, "where": where}
    return {"k": 3, "stride": 2, "pad": 1, "where": where}


def random_model(seed: int, *, max_convs: int = 3, max_dense: int = 2,
                 allow_gap: bool = True) -> tuple[onnx.ModelProto, ModelSpec]:
    """A random binarized CNN, deterministic in `seed`, and the description of what it contains.

    1..max_convs conv blocks, an optional GlobalAveragePool (only where the next layer stays exact:
    a hidden dense layer follows, or the pooled area is a power of two), a flatten in one of three
    exported forms, 0..max_dense hidden dense blocks and the final logits layer.
    """
    rng = np.random.default_rng(seed)
    style = str(rng.choice(_STYLES))
    b = _Builder(rng, style)
    channels, size = int(rng.integers(1, 5)), int(rng.integers(6, 17))
    input_shape = (1, channels, size, size)
    if rng.random() < 0.5:
        dtype, zero_point = "uint8", (128 if rng.random() < 0.5 else int(rng.integers(0, 256)))
    else:
        dtype, zero_point = "int8", 0
    scale = float(_F32(1.0 / int(rng.integers(32, 256))))
    b.quantized_input(input_shape, dtype, scale, zero_point)

    for i in range(int(rng.integers(1, max_convs + 1))):
        k, stride, pad = _conv_params(rng, size)
        pool = _pool_params(rng, (size + 2 * pad - k) // stride + 1)
        b.conv_block(i, int(rng.choice(WIDTHS)), k, stride, pad, prune=b.random_prune_fraction(),
                     bias=bool(rng.random() < 0.3), pool=pool, dyadic=bool(rng.random() < 0.5))
        size = b.shape[2]

    n_dense = int(rng.integers(0, max_dense + 1))
    area = size * size
    if allow_gap and rng.random() < 0.3 and (n_dense > 0 or area & (area - 1) == 0):
        b.global_average_pool()
    b.flatten(str(rng.choice(["flatten", "reshape", "shape_subgraph"])))
    for j in range(n_dense):
        b.dense_block(j, int(rng.choice(WIDTHS)),
                      form=str(rng.choice(["gemm", "gemm", "matmul", "matmul_transpose"])),
                      prune=b.random_prune_fraction(), bias=bool(rng.random() < 0.3),
                      dyadic=bool(rng.random() < 0.5))

    classes = 10 if rng.random() < 0.5 else int(rng.integers(2, 13))
    mul = rng.choice(["none", "none", "scalar", "per_logit"])
    add = rng.choice(["none", "none", "scalar", "per_logit"])
    b.final_dense(classes, bias=bool(rng.random() < 0.7), mul=None if mul == "none" else str(mul),
                  add=None if add == "none" else str(add))
    output = str(rng.choice(["logits", "argmax", "topk"]))
    model = b.model(input_shape, output, _output_name(rng, style), "random_model",
                    f"random_model(seed={seed})")
    spec = ModelSpec(seed=seed, input_shape=input_shape, layers=b.layers, input_scale=scale,
                     input_zero_point=zero_point, input_dtype=dtype, output=output)
    return model, spec


def cnv_model(seed: int = 0, prune: float = 0.0, keep_all_channels: bool = False) -> onnx.ModelProto:
    """FINN's CIFAR-10 CNV topology as a plain float ONNX model (59.5M MACs).

    Input (1, 3, 32, 32) on an int8 grid of scale 1/128 (values in [-1, 1)); six valid 3x3 convs
    64-64-128-128-256-256 (Conv -> BatchNormalization -> Sign), MaxPool 2x2 after convs 2 and 4
    (32 -> 30 -> 28 -> 14 -> 12 -> 10 -> 5 -> 3 -> 1), Flatten, dense 256 -> 512 -> 512 -> 10.
    `prune`: the fraction of all-zero filters in every hidden layer (STQ-style structured pruning).
    `keep_all_channels`: no BatchNorm channel is constant, so none is pruned by the compiler (the
    dense topology, as FINN's folding of CNV assumes).
    """
    rng = np.random.default_rng(seed)
    b = _Builder(rng, "torch", keep_all_channels)
    input_shape = (1, 3, 32, 32)
    b.quantized_input(input_shape, "int8", 1.0 / 128, 0)
    for i, channels in enumerate((64, 64, 128, 128, 256, 256)):
        pool = {"k": 2, "stride": 2, "pad": 0, "where": "after_sign"} if i in (1, 3) else None
        b.conv_block(i, channels, 3, 1, 0, pool=pool, prune=prune)
    b.flatten("flatten")
    for j in range(2):
        b.dense_block(j, 512, prune=prune)
    b.final_dense(10)
    doc = f"cnv_model(seed={seed})" if not prune else f"cnv_model(seed={seed}, prune={prune})"
    return b.model(input_shape, "logits", "logits", "cnv", doc)


def tfc_model(seed: int = 0) -> onnx.ModelProto:
    """FINN's TFC: a 784-64-64-64-10 binarized MLP on a (1, 1, 28, 28) uint8 input (scale 1/255).

    The first Gemm accumulates the integer grid values; the next two are binary; all three are
    followed by BatchNormalization -> Sign; the last Gemm gives 10 logits.
    """
    return _mlp(seed, 0.0, (784, 64, 64, 64, 10), "tfc")


def mlp_model(seed: int = 0, prune: float = 0.3, sizes=(784, 256, 256, 10)) -> onnx.ModelProto:
    """A binarized MLP like `tfc_model` where round(prune * width) filters of every hidden layer are
    all-zero. The input is (1, 1, r, r) when sizes[0] = r * r, else (1, sizes[0], 1, 1).
    """
    return _mlp(seed, prune, tuple(sizes), "mlp")


def _mlp(seed: int, prune: float, sizes: tuple, name: str) -> onnx.ModelProto:
    if len(sizes) < 3:
        raise ValueError("an MLP needs at least one hidden layer: sizes = (in, hidden..., classes)")
    rng = np.random.default_rng(seed)
    b = _Builder(rng, "torch")
    side = math.isqrt(sizes[0])
    input_shape = (1, 1, side, side) if side * side == sizes[0] else (1, sizes[0], 1, 1)
    b.quantized_input(input_shape, "uint8", 1.0 / 255, 0)
    b.flatten("flatten")
    for j, width in enumerate(sizes[1:-1]):
        b.dense_block(j, width, prune=prune)
    b.final_dense(sizes[-1])
    doc = f"{name} sizes={sizes} prune={prune} seed={seed}"
    return b.model(input_shape, "logits", "logits", name, doc)


def _input_quantization(model_or_spec) -> tuple:
    """(input shape, scale, zero point, numpy dtype) of a ModelSpec or a model's input quantizer."""
    if isinstance(model_or_spec, ModelSpec):
        s = model_or_spec
        return s.input_shape, s.input_scale, s.input_zero_point, np.dtype(s.input_dtype)
    graph = model_or_spec.graph
    dims = graph.input[0].type.tensor_type.shape.dim
    shape = tuple(d.dim_value for d in dims)
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    name = graph.input[0].name
    quant = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == name)
    zp = inits[quant.input[2]]
    return shape, float(inits[quant.input[1]]), int(zp), zp.dtype


def random_inputs(model_or_spec, n: int, seed: int) -> np.ndarray:
    """float32 inputs (n, C, H, W) whose quantized values are uniform over the whole grid.

    x = scale * (q - zp + u) with u uniform in [-0.3, 0.3], pointing inwards at the two ends of
    the grid so that x stays within the grid's real range: QuantizeLinear's rounding is never
    near a tie. `model_or_spec` is a ModelSpec or a model whose input feeds a QuantizeLinear.
    """
    shape, scale, zero_point, dtype = _input_quantization(model_or_spec)
    rng = np.random.default_rng(seed)
    info = np.iinfo(dtype)
    size = (n,) + tuple(shape[1:])
    q = rng.integers(int(info.min), int(info.max) + 1, size)
    u = rng.uniform(-0.3, 0.3, size)
    u = np.where(q == info.min, np.abs(u), np.where(q == info.max, -np.abs(u), u))
    return (scale * (q - zero_point + u)).astype(_F32)


def real_valued_model(seed: int) -> onnx.ModelProto:
    """A random network of real-valued (float) layers, deterministic in `seed`, for a declared
    float input (x in [0, 255] read through a normalisation, e.g. --input-range 0:255): a float
    stem conv (bias, optional BatchNorm, Relu or not, optional MaxPool), one or two float convs
    with an optional residual Add, an AveragePool 2x2 and a float Gemm. Every layer is real-valued:
    each rounding bnnc makes carries into the output (the end-to-end error bound's test)."""
    rng = np.random.default_rng(seed)
    c, size = int(rng.integers(2, 7)), int(rng.choice([8, 12]))
    inits: dict = {}
    nodes: list = []

    def const(name, value):
        inits[name] = np.asarray(value, _F32)
        return name

    def node(op, inputs, **attrs):
        out = f"t{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [out], name=f"{op.lower()}{len(nodes)}", **attrs))
        return out

    gain = float(10.0 ** rng.uniform(-1, 1.5))
    t = node("Conv", ["x", const("w0", rng.normal(size=(c, 3, 3, 3)) * gain), const("b0", rng.normal(size=c))],
             pads=[1, 1, 1, 1])
    if rng.random() < 0.5:
        t = node("BatchNormalization", [t, const("g", rng.uniform(0.5, 2, c)), const("be", rng.normal(size=c)),
                                        const("mu", rng.normal(size=c)), const("var", rng.uniform(0.5, 2, c))],
                 epsilon=1e-5)
    if rng.random() < 0.7:
        t = node("Relu", [t])
    if rng.random() < 0.5:
        t = node("MaxPool", [t], kernel_shape=[2, 2], strides=[2, 2])
        size //= 2
    for i in range(int(rng.integers(1, 3))):
        k = int(rng.choice([1, 3]))
        b = node("Conv", [t, const(f"w{i + 1}", rng.normal(size=(c, c, k, k)) * rng.uniform(0.1, 1))],
                 pads=[k // 2] * 4)
        t = node("Add", [t, b]) if rng.random() < 0.6 else b
    t = node("AveragePool", [t], kernel_shape=[2, 2], strides=[2, 2])
    size //= 2
    t = node("Reshape", [t, "shape"])
    inits["shape"] = np.array([1, c * size * size], np.int64)
    nodes.append(helper.make_node("Gemm", [t, const("wf", rng.normal(size=(10, c * size * size))),
                                           const("bf", rng.normal(size=10))], ["y"], name="fc", transB=1))
    x_size = size * 2 * (2 if any(n.op_type == "MaxPool" for n in nodes) else 1)
    g = helper.make_graph(nodes, f"real_valued_{seed}",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, x_size, x_size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
                          [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


def save(model: onnx.ModelProto, path) -> None:
    """onnx.save after the full checker."""
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


# -- float64 reference evaluation --------------------------------------------------------------


def _conv(x, w, b=None, *, pads=(0, 0, 0, 0), strides=(1, 1), group=1, **_):
    kh, kw = w.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::strides[0], ::strides[1]]
    ci, co = w.shape[1], w.shape[0] // group
    y = np.concatenate([np.tensordot(win[:, g * ci:(g + 1) * ci], w[g * co:(g + 1) * co], axes=([1, 4, 5], [1, 2, 3]))
                        for g in range(group)], axis=-1).transpose(0, 3, 1, 2)
    return y if b is None else y + b[None, :, None, None]


def _average_pool(x, *, kernel_shape, strides, **_):
    win = sliding_window_view(x, tuple(kernel_shape), axis=(2, 3))[:, :, ::strides[0], ::strides[1]]
    return win.mean(axis=(4, 5))


def _max_pool(x, *, kernel_shape, strides, pads=(0, 0, 0, 0), **_):
    pad_width = ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3]))
    xp = np.pad(x, pad_width, constant_values=-np.inf)
    win = sliding_window_view(xp, tuple(kernel_shape), axis=(2, 3))
    win = win[:, :, ::strides[0], ::strides[1]]
    return win.max(axis=(4, 5))


def _batchnorm(x, gamma, beta, mean, var, *, epsilon, **_):
    shape = (1, -1) + (1,) * (x.ndim - 2)
    a = gamma / np.sqrt(var + epsilon)
    return a.reshape(shape) * (x - mean.reshape(shape)) + beta.reshape(shape)


def _quantize(x, scale, zp):
    info = np.iinfo(zp.dtype)
    return np.clip(np.rint(x / scale) + zp.astype(np.int64), info.min, info.max).astype(np.int64)


def _reshape(x, shape):
    shape = [x.shape[i] if d == 0 else int(d) for i, d in enumerate(shape)]
    return x.reshape(shape)


def _gemm(a, b, c=None, *, transA=0, transB=0, alpha=1.0, beta=1.0):
    y = alpha * ((a.T if transA else a) @ (b.T if transB else b))
    return y if c is None else y + beta * c


def _topk(x, k, *, axis=-1, **_):
    order = np.argsort(-x, axis=axis, kind="stable")
    idx = np.take(order, np.arange(int(k[0])), axis=axis)
    return np.take_along_axis(x, idx, axis=axis), idx


_OPS = {
    "QuantizeLinear": _quantize,
    "DequantizeLinear": lambda q, scale, zp: (q - zp.astype(np.int64)) * scale,
    "Conv": _conv,
    "BatchNormalization": _batchnorm,
    "Sign": np.sign,
    "MaxPool": _max_pool,
    "AveragePool": _average_pool,
    "Relu": lambda x: np.maximum(x, 0),
    "Sub": np.subtract,
    "Div": np.divide,
    "GlobalAveragePool": lambda x: x.mean(axis=(2, 3), keepdims=True),
    "Flatten": lambda x, *, axis=1: x.reshape(int(np.prod(x.shape[:axis])), -1),
    "Reshape": _reshape,
    "Shape": lambda x: np.array(x.shape, dtype=np.int64),
    "Gather": lambda x, i, *, axis=0: np.take(x, i, axis=axis),
    "Unsqueeze": lambda x, axes: np.expand_dims(x, tuple(int(a) for a in axes)),
    "Concat": lambda *xs, axis: np.concatenate(xs, axis=axis),
    "Gemm": _gemm,
    "MatMul": np.matmul,
    "Transpose": lambda x, *, perm: x.transpose(perm),
    "Mul": np.multiply,
    "Add": np.add,
    "ArgMax": lambda x, *, axis=0, keepdims=1: np.argmax(x, axis=axis, keepdims=bool(keepdims)),
    "TopK": _topk,
}
_LINEAR = ("Conv", "Gemm", "MatMul")


def _run(model: onnx.ModelProto, x: np.ndarray, magnitudes: dict | None = None) -> dict:
    """Evaluates `model` on x in float64; fills `magnitudes` with sum-of-|terms| tensors."""
    graph = model.graph
    env = {}
    for t in graph.initializer:
        v = numpy_helper.to_array(t)
        env[t.name] = v.astype(_F64) if v.dtype.kind == "f" else v
    env[graph.input[0].name] = np.asarray(x, dtype=_F64)
    for node in graph.node:
        args = [env[name] if name else None for name in node.input]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        outs = _OPS[node.op_type](*args, **attrs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        env.update(zip(node.output, outs))
        if magnitudes is None:
            continue
        if node.op_type in _LINEAR:
            magnitudes[node.output[0]] = _OPS[node.op_type](
                *[None if v is None else np.abs(v) for v in args], **attrs)
        elif node.op_type == "Add" and any(name in magnitudes for name in node.input):
            magnitudes[node.output[0]] = sum(magnitudes.get(name, np.abs(v))
                                             for name, v in zip(node.input, args))
        elif node.op_type == "BatchNormalization" and node.input[0] in magnitudes:
            gamma, beta, mean, var = args[1:]
            a = np.abs(gamma / np.sqrt(var + attrs["epsilon"]))
            shape = (1, -1) + (1,) * (args[0].ndim - 2)
            magnitudes[node.output[0]] = (a.reshape(shape) * magnitudes[node.input[0]]
                                          + (a * np.abs(mean) + np.abs(beta)).reshape(shape))
    return env


def evaluate(model: onnx.ModelProto, x: np.ndarray) -> dict:
    """Runs a model built by this module in float64 with numpy, one (1, C, H, W) sample at a time.

    x: (n, C, H, W). Returns {tensor name: array stacked over the n samples} for every tensor
    that a node produces, the graph outputs included.
    """
    runs = [_run(model, sample[None]) for sample in np.asarray(x)]
    produced = [name for node in model.graph.node for name in node.output]
    return {name: np.stack([r[name] for r in runs]) for name in produced}


def margins(model: onnx.ModelProto, x: np.ndarray) -> dict:
    """{BatchNormalization output name: Margin} over the samples x (n, C, H, W), in float64."""
    result = {}
    for sample in np.asarray(x):
        mags: dict = {}
        env = _run(model, sample[None], mags)
        for node in model.graph.node:
            if node.op_type != "BatchNormalization":
                continue
            name = node.output[0]
            y = np.abs(env[name])
            axes = (0,) + tuple(range(2, y.ndim))
            absolute = y.min(axis=axes)
            relative = (y / mags[name]).min(axis=axes)
            if name in result:
                absolute = np.minimum(absolute, result[name].absolute)
                relative = np.minimum(relative, result[name].relative)
            result[name] = Margin(absolute, relative)
    return result
