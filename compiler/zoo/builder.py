"""The network builder behind `bnnc.zoo`: ONNX graphs of compressed networks whose float32
execution (onnxruntime) and bnnc's exact integer execution agree by construction.

Every linear layer computes p = u_o * A with an integer accumulator A (A sums integer weights
times the integer grid values of the input) and a dyadic unit u_o (a power of two times a small
integer). The builder runs the network on a calibration batch as it goes (`Net.x`, float64,
exact because every value is dyadic with few bits) and places every decision of the float model
half an accumulator step away from every reachable value (networks.md section 7):

- sign activations (BatchNorm -> Sign / BipolarQuant): BN(u * (t + 0.5)) = 0 for an integer t;
- multi-bit activations (MultiThreshold): thresholds u * (t_b + 0.5);
- int8 layer boundaries (Mul, Add -> QuantizeLinear -> DequantizeLinear): x / scale = (A + 1/4) / m
  with m a power of two, never a rounding tie;
- residual streams: Mul / Add with dyadic constants put each branch on the grid 2**-k exactly, so
  float32 sums are exact and a sign of the stream is the sign of an exact value;
- logits: dyadic weights and biases with distinct odd 64ths, so two classes never tie.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import onnx
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8
QONNX = "qonnx.custom_op.general"
F32 = np.float32
BN_EPSILON = 1e-5


def pow2(e: int) -> float:
    return math.ldexp(1.0, e)


@dataclass
class Stream:
    """A real-valued (fixed-point) tensor kept for a residual shortcut."""

    tensor: str
    x: np.ndarray
    step: float


@dataclass
class Pending:
    """A linear layer's output before its activation: p = unit[o] * A."""

    A: np.ndarray  # int64 (N, O, ...) calibration accumulators
    unit: np.ndarray  # float64 (O,)


class Net:
    """Builds one model node by node (see the module docstring)."""

    def __init__(self, seed: int, name: str, calibration: int = 48):
        self.rng = np.random.default_rng(seed)
        self.seed = seed
        self.name = name
        self.nodes: list = []
        self.inits: list = []
        self.names: set = {"input"}
        self.domains = {"": OPSET}
        self.t = "input"
        self.x: Optional[np.ndarray] = None
        self.step = 1.0
        self.pending: Optional[Pending] = None
        self.calibration = calibration
        self.input_shape: tuple = ()
        self.layers: list = []  # one description dict per layer, for tests and the CLI

    # ------------------------------------------------------------------ graph plumbing
    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.names:
            name = f"{base}_{k}"
            k += 1
        self.names.add(name)
        return name

    def const(self, base: str, value) -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list, base: str, domain: str = "", **attrs) -> str:
        out = self.fresh(base + "_out")
        self.nodes.append(helper.make_node(op, inputs, [out], name=self.fresh(base), domain=domain, **attrs))
        if domain:
            self.domains[domain] = 1
        return out

    # ------------------------------------------------------------------ inputs
    def input_qdq(self, shape: tuple, dtype: str = "int8", scale_exp: int = -7, zero_point: int = 0):
        """Float input -> QuantizeLinear -> DequantizeLinear (an int8 / uint8 grid)."""
        self.input_shape = (1,) + tuple(shape)
        npd = np.int8 if dtype == "int8" else np.uint8
        info = np.iinfo(npd)
        s = self.const("input_scale", np.array(pow2(scale_exp), F32))
        z = self.const("input_zero_point", np.array(zero_point, npd))
        q = self.node("QuantizeLinear", ["input", s, z], "quant_in")
        self.t = self.node("DequantizeLinear", [q, s, z], "dequant_in")
        qv = self.rng.integers(int(info.min), int(info.max) + 1, (self.calibration,) + tuple(shape))
        self.step = pow2(scale_exp)
        self.x = (qv - zero_point) * self.step

    def input_quant(self, shape: tuple, bits: int = 8, scale_exp: int = -7):
        """Float input -> QONNX Quant (signed, `bits` bits)."""
        self.input_shape = (1,) + tuple(shape)
        s = self.const("input_scale", np.array(pow2(scale_exp), F32))
        z = self.const("input_zero_point", np.array(0.0, F32))
        b = self.const("input_bits", np.array(float(bits), F32))
        self.t = self.node("Quant", ["input", s, z, b], "quant_in", domain=QONNX, signed=1, narrow=0,
                           rounding_mode="ROUND")
        lim = 2 ** (bits - 1)
        qv = self.rng.integers(-lim, lim, (self.calibration,) + tuple(shape))
        self.step = pow2(scale_exp)
        self.x = qv * self.step

    # ------------------------------------------------------------------ weights
    def alphas(self, n: int, pow2_only: bool = False) -> np.ndarray:
        """Dyadic per-channel scales: m * 2**-e, m in [8, 15] (or 1 with pow2_only)."""
        e = self.rng.integers(3, 7, n)
        m = np.ones(n) if pow2_only else self.rng.integers(8, 16, n)
        return m * np.exp2(-e.astype(np.float64) - (0 if pow2_only else 3))

    def weights(self, code: str, shape: tuple, prune: float = 0.0, **kw):
        """(K integer weights, unit (O,), emit(scope) -> ONNX weight tensor name).

        codes: binary, ternary (TTQ: {-mn, 0, +mp} per layer), ternary_q (QONNX 2-bit Quant of
        latent weights, {-1, 0, 1} * alpha_o), two_scale (DABN), multi_base (fused sum of binary
        bases), int (DequantizeLinear of integers), expander (binary, D inputs per output)."""
        rng = self.rng
        o = shape[0]
        sign = rng.choice([-1, 1], shape)
        unit = None
        if code in ("binary", "expander"):
            K = sign.copy()
            unit = self.alphas(o, kw.get("pow2", False))
            if code == "expander":
                d = kw.get("degree", max(1, shape[1] // 4))
                mask = np.zeros(shape[:2], bool)
                for i in range(o):
                    mask[i, rng.choice(shape[1], size=min(d, shape[1]), replace=False)] = True
                K = K * mask.reshape(mask.shape + (1,) * (len(shape) - 2))
        elif code == "ternary":
            mp, mn = (int(v) for v in rng.choice([1, 2, 3, 5, 7], 2, replace=False))
            zeros = rng.random(shape) < kw.get("sparsity", 0.4)
            K = np.where(zeros, 0, np.where(sign > 0, mp, -mn))
            unit = np.full(o, pow2(-int(rng.integers(3, 6))))
        elif code == "ternary_q":
            zeros = rng.random(shape) < kw.get("sparsity", 0.4)
            K = np.where(zeros, 0, sign)
            unit = self.alphas(o)
        elif code == "two_scale":
            mp = rng.integers(1, 16, o)
            mn = np.where(rng.random(o) < 0.5, rng.integers(1, 16, o), mp + 1 + rng.integers(0, 4, o))
            bshape = (-1,) + (1,) * (len(shape) - 1)
            K = np.where(sign > 0, mp.reshape(bshape), -mn.reshape(bshape))
            unit = np.full(o, pow2(-int(rng.integers(4, 7))))
        elif code == "multi_base":
            coeffs = kw.get("coeffs") or [(1, 2, 4), (1, 3, 5), (1, 2), (1, 3)][int(rng.integers(0, 4))]
            K = sum(c * rng.choice([-1, 1], shape) for c in coeffs)
            unit = np.full(o, pow2(-int(rng.integers(3, 6))))
        elif code == "int":
            r = kw.get("range", 7)
            K = rng.integers(-r, r + 1, shape)
            unit = np.exp2(-rng.integers(3, 6, o).astype(np.float64)) if not kw.get("pow2_tensor") else \
                np.full(o, pow2(-3))
        else:
            raise ValueError(code)
        pruned = np.zeros(o, bool)
        if prune > 0:
            count = min(max(1, int(round(prune * o))), o - 1)
            pruned[rng.choice(o, count, replace=False)] = True
            K = np.where(pruned.reshape((-1,) + (1,) * (len(shape) - 1)), 0, K)
        K = K.astype(np.int64)
        W = (K * unit.reshape((-1,) + (1,) * (len(shape) - 1))).astype(F32)

        def emit(scope: str) -> str:
            if code == "int":
                q = self.const(scope + "_weight_int8", K.astype(np.int8))
                s = self.const(scope + "_weight_scale", unit.astype(F32))
                z = self.const(scope + "_weight_zero_point", np.zeros(o, np.int8))
                return self.node("DequantizeLinear", [q, s, z], scope + "_dequant_w", axis=0)
            if code == "ternary_q":
                noise = rng.uniform(-0.35, 0.35, shape)  # latent weights around the levels
                latent = ((K + noise) * unit.reshape((-1,) + (1,) * (len(shape) - 1))).astype(F32)
                lw = self.const(scope + "_weight_latent", latent)
                s = self.const(scope + "_weight_scale", unit.reshape((-1,) + (1,) * (len(shape) - 1)).astype(F32))
                z = self.const(scope + "_weight_zero_point", np.array(0.0, F32))
                b = self.const(scope + "_weight_bits", np.array(2.0, F32))
                return self.node("Quant", [lw, s, z, b], scope + "_quant_w", domain=QONNX, signed=1, narrow=1,
                                 rounding_mode="ROUND")
            return self.const(scope + "_weight", W)

        return K, unit, emit, pruned

    # ------------------------------------------------------------------ linear layers
    def conv(self, out_ch: int, k: int = 3, stride: int = 1, pad: int = 1, code: str = "binary",
             prune: float = 0.0, scope: str = "conv", **kw) -> np.ndarray:
        c = self.x.shape[1]
        K, unit, emit, pruned = self.weights(code, (out_ch, c, k, k), prune, **kw)
        w = emit(scope)
        self.t = self.node("Conv", [self.t, w], scope, kernel_shape=[k, k], pads=[pad] * 4,
                           strides=[stride] * 2)
        q = self._grid_ints()
        self.pending = Pending(conv_int(q, K, pad, stride), unit * self.step)
        self.layers.append({"kind": "conv", "code": code, "out": out_ch, "in": c, "k": k, "stride": stride,
                            "pad": pad, "pruned": int(pruned.sum())})
        return K

    def dense(self, out_f: int, code: str = "binary", prune: float = 0.0, scope: str = "fc", **kw) -> np.ndarray:
        if self.x.ndim != 2:
            self.flatten()
        f = self.x.shape[1]
        K, unit, emit, pruned = self.weights(code, (out_f, f), prune, **kw)
        w = emit(scope)
        self.t = self.node("Gemm", [self.t, w], scope, transB=1)
        self.pending = Pending(self._grid_ints() @ K.T, unit * self.step)
        self.layers.append({"kind": "dense", "code": code, "out": out_f, "in": f, "pruned": int(pruned.sum())})
        return K

    def _grid_ints(self) -> np.ndarray:
        q = self.x / self.step
        r = np.rint(q)
        assert np.array_equal(q, r), "calibration values left their grid"
        return r.astype(np.int64)

    # ------------------------------------------------------------------ activations
    def _boundaries(self, A: np.ndarray, levels: int = 1) -> np.ndarray:
        """(O, levels) integers t: decision boundaries at t + 0.5, spread over each channel's values."""
        o = A.shape[1]
        flat = np.moveaxis(A, 1, 0).reshape(o, -1)
        out = np.zeros((o, levels), np.int64)
        for i in range(o):
            qs = np.sort(self.rng.uniform(0.15, 0.85, levels))
            t = np.floor(np.quantile(flat[i], qs)).astype(np.int64)
            for j in range(1, levels):
                t[j] = max(t[j], t[j - 1] + 1)
            out[i] = t
        return out

    def bn_sign(self, op: str = "Sign", scope: str = "bn", negative_gamma: float = 0.2):
        """BatchNormalization -> Sign / BipolarQuant / 1-bit Quant, boundaries at half steps."""
        pend = self.pending
        A, u = pend.A, pend.unit
        o = A.shape[1]
        t = self._boundaries(A)[:, 0].astype(np.float64)
        rng = self.rng
        gamma = rng.uniform(0.25, 2.0, o) * np.where(rng.random(o) < negative_gamma, -1.0, 1.0)
        var = rng.uniform(0.5, 2.0, o) * (u * max(1.0, float(np.std(A)))) ** 2
        beta = rng.normal(0.0, 0.5, o)
        gamma, var, beta = (v.astype(F32).astype(np.float64) for v in (gamma, var, beta))
        std = np.sqrt(var + BN_EPSILON)
        mean = u * (t + 0.5) + beta * std / gamma
        params = [self.const(f"{scope}_{r}", v.astype(F32)) for r, v in
                  (("weight", gamma), ("bias", beta), ("running_mean", mean), ("running_var", var))]
        y = self.node("BatchNormalization", [self.t] + params, scope, epsilon=BN_EPSILON)
        self.t = self.binarize(y, scope + "_act", op)
        shape = (1, -1) + (1,) * (A.ndim - 2)
        up = (A >= (t + 1).reshape(shape)) ^ (gamma < 0).reshape(shape)
        self.x = np.where(up, 1.0, -1.0)
        self.step = 1.0
        self.pending = None

    def binarize(self, tensor: str, scope: str, op: str) -> str:
        if op == "Sign":
            return self.node("Sign", [tensor], scope)
        one = self.const(scope + "_scale", np.array(1.0, F32))
        if op == "BipolarQuant":
            return self.node("BipolarQuant", [tensor, one], scope, domain=QONNX)
        z = self.const(scope + "_zero_point", np.array(0.0, F32))
        b = self.const(scope + "_bits", np.array(1.0, F32))
        return self.node("Quant", [tensor, one, z, b], scope, domain=QONNX, signed=1, narrow=0, rounding_mode="ROUND")

    def multithreshold(self, levels: int = 3, out_scale: float = 1.0, out_bias: float = -1.5,
                       scope: str = "act"):
        """Mul (positive per-channel) -> MultiThreshold with `levels` steps (2-bit: 3)."""
        A, u = self.pending.A, self.pending.unit
        o = A.shape[1]
        c = np.exp2(self.rng.integers(-2, 3, o).astype(np.float64))
        t = self._boundaries(A, levels)
        thr = (c * u)[:, None] * (t + 0.5)
        m = self.node("Mul", [self.t, self.const(scope + "_scale", c.reshape((-1,) + (1,) * (A.ndim - 2)).astype(F32))],
                      scope + "_mul")
        self.t = self.node("MultiThreshold", [m, self.const(scope + "_thresholds", thr.astype(F32))], scope,
                           domain=QONNX, out_scale=float(out_scale), out_bias=float(out_bias))
        shape = (1, o) + (1,) * (A.ndim - 2)
        count = sum((A >= (t[:, j] + 1).reshape(shape)).astype(np.int64) for j in range(levels))
        self.x = out_scale * count + out_bias
        # the grid: the largest power-of-two fraction of out_scale that holds out_bias
        d = 1
        while (out_bias / out_scale * d) != round(out_bias / out_scale * d):
            d *= 2
        self.step = out_scale / d
        self.pending = None

    def qdq(self, scale_exp: int = -4, scope: str = "requant", relu: bool = False):
        """Mul, Add (a folded BatchNorm) -> QuantizeLinear(int8) -> DequantizeLinear: an int8 layer
        boundary with x / scale = (A + 1/4) / m, m a power of two (never a rounding tie)."""
        A, u = self.pending.A, self.pending.unit
        o = A.shape[1]
        flat = np.moveaxis(A, 1, 0).reshape(o, -1)
        r = np.maximum(1, np.abs(flat).max(axis=1))
        m = np.exp2(np.ceil(np.log2(np.maximum(1.0, r / 100.0))))
        s = pow2(scale_exp)
        a = s / (m * u)
        b = s * 0.25 / m
        shape = (-1,) + (1,) * (A.ndim - 2)
        y = self.node("Mul", [self.t, self.const(scope + "_mul", a.reshape(shape).astype(F32))], scope + "_mul")
        y = self.node("Add", [y, self.const(scope + "_add", b.reshape(shape).astype(F32))], scope + "_add")
        if relu:
            y = self.node("Relu", [y], scope + "_relu")
        sc = self.const(scope + "_scale", np.array(s, F32))
        zp = self.const(scope + "_zero_point", np.array(0, np.int8))
        q = self.node("QuantizeLinear", [y, sc, zp], scope + "_q")
        self.t = self.node("DequantizeLinear", [q, sc, zp], scope + "_dq")
        bs = (1, o) + (1,) * (A.ndim - 2)
        v = (A + 0.25) / m.reshape(bs)
        if relu:
            v = np.maximum(v, 0)
        self.x = np.clip(np.rint(v), -128, 127) * s
        self.step = s
        self.pending = None

    def quant_act(self, bits: int = 2, scope: str = "quant_act"):
        """Mul, Add -> QONNX Quant (signed, `bits` bits): a multi-bit activation with
        x / scale = (A + 1/4) / m, never a rounding tie; values clamp to the signed range."""
        A, u = self.pending.A, self.pending.unit
        o = A.shape[1]
        flat = np.moveaxis(A, 1, 0).reshape(o, -1)
        lim = 2 ** (bits - 1)
        m = np.exp2(np.ceil(np.log2(np.maximum(1.0, flat.std(axis=1) / lim))))
        s = pow2(-2)
        a, b = s / (m * u), s * 0.25 / m
        shape = (-1,) + (1,) * (A.ndim - 2)
        y = self.node("Mul", [self.t, self.const(scope + "_mul", a.reshape(shape).astype(F32))], scope + "_mul")
        y = self.node("Add", [y, self.const(scope + "_add", b.reshape(shape).astype(F32))], scope + "_add")
        sc = self.const(scope + "_scale", np.array(s, F32))
        z = self.const(scope + "_zero_point", np.array(0.0, F32))
        bw = self.const(scope + "_bits", np.array(float(bits), F32))
        self.t = self.node("Quant", [y, sc, z, bw], scope, domain=QONNX, signed=1, narrow=0, rounding_mode="ROUND")
        bs = (1, o) + (1,) * (A.ndim - 2)
        self.x = np.clip(np.rint((A + 0.25) / m.reshape(bs)), -lim, lim - 1) * s
        self.step = s
        self.pending = None

    def to_stream(self, frac: int = 8, scope: str = "branch") -> Stream:
        """Mul, Add with dyadic constants: the branch value (c_o * A + n_o) * 2**-frac, exact."""
        A, u = self.pending.A, self.pending.unit
        o = A.shape[1]
        flat = np.moveaxis(A, 1, 0).reshape(o, -1)
        spread = np.maximum(1.0, flat.std(axis=1))
        c = np.maximum(1, np.rint(0.5 * pow2(frac) / spread)).astype(np.int64)
        c = np.where(self.rng.random(o) < 0.2, -c, c)
        n = self.rng.integers(-pow2(frac - 2), pow2(frac - 2) + 1, o).astype(np.int64)
        a = c * pow2(-frac) / u
        b = n * pow2(-frac)
        if np.any(a.astype(F32).astype(np.float64) != a):
            raise ValueError("stream scales must be dyadic: use power-of-two weight units")
        shape = (-1,) + (1,) * (A.ndim - 2)
        y = self.node("Mul", [self.t, self.const(scope + "_mul", a.reshape(shape).astype(F32))], scope + "_mul")
        self.t = self.node("Add", [y, self.const(scope + "_add", b.reshape(shape).astype(F32))], scope + "_add")
        bs = (1, o) + (1,) * (A.ndim - 2)
        self.x = (c.reshape(bs) * A + n.reshape(bs)) * pow2(-frac)
        self.step = pow2(-frac)
        self.pending = None
        return Stream(self.t, self.x, self.step)

    def requant_stream(self, limit: int = 31, scope: str = "requant_out", spread: bool = False):
        """QuantizeLinear -> DequantizeLinear of an exact (dyadic) tensor onto a power-of-two
        grid with |values| up to about `limit` steps (or 3 standard deviations with `spread`;
        larger values saturate). Exact in float32: ties round to even on both sides."""
        r = float(3 * np.std(self.x) if spread else np.abs(self.x).max()) or 1.0
        e = int(np.ceil(np.log2(r / limit)))
        s = pow2(e)
        sc = self.const(scope + "_scale", np.array(s, F32))
        zp = self.const(scope + "_zero_point", np.array(0, np.int8))
        q = self.node("QuantizeLinear", [self.t, sc, zp], scope + "_q")
        self.t = self.node("DequantizeLinear", [q, sc, zp], scope + "_dq")
        self.x = np.clip(np.rint(self.x / s), -128, 127) * s
        self.step = s

    def bn_stream(self, scope: str = "bn") -> Stream:
        """A BatchNormalization with trained-looking float parameters: a real-valued stream that is
        on no grid (bnnc runs it in fixed point; agreement with a float runtime is then within the
        fixed-point rounding, not exact)."""
        A, u = self.pending.A, self.pending.unit
        o = A.shape[1]
        p = A * u.reshape((1, o) + (1,) * (A.ndim - 2))
        flat = np.moveaxis(p, 1, 0).reshape(o, -1)
        rng = self.rng
        gamma = (rng.uniform(0.2, 1.0, o) * np.where(rng.random(o) < 0.2, -1, 1)).astype(F32)
        beta = rng.normal(0, 0.3, o).astype(F32)
        mean = (flat.mean(axis=1) + rng.normal(0, 0.1, o) * flat.std(axis=1)).astype(F32)
        var = (flat.var(axis=1) * rng.uniform(0.7, 1.3, o) + 1e-3).astype(F32)
        params = [self.const(f"{scope}_{r}", v) for r, v in
                  (("weight", gamma), ("bias", beta), ("running_mean", mean), ("running_var", var))]
        self.t = self.node("BatchNormalization", [self.t] + params, scope, epsilon=BN_EPSILON)
        shape = (1, o) + (1,) * (A.ndim - 2)
        g64, b64, m64, v64 = (x.astype(np.float64).reshape(shape) for x in (gamma, beta, mean, var))
        self.x = g64 * (p - m64) / np.sqrt(v64 + BN_EPSILON) + b64
        self.step = 0.0  # on no grid
        self.pending = None
        return self.stream()

    def stream(self) -> Stream:
        return Stream(self.t, self.x, self.step)

    def set_stream(self, s: Stream):
        self.t, self.x, self.step = s.tensor, s.x, s.step

    def residual_add(self, shortcut: Stream, scope: str = "residual") -> Stream:
        self.t = self.node("Add", [self.t, shortcut.tensor], scope)
        self.step = min(self.step, shortcut.step) if self.step and shortcut.step else 0.0
        self.x = self.x + shortcut.x
        return self.stream()

    def sign_of(self, s: Stream, op: str = "BipolarQuant", scope: str = "sign"):
        """Binarize a stream (Bi-Real's sign of the real-valued activation)."""
        self.t = self.binarize(s.tensor, scope, op)
        self.x = np.where(s.x >= 0, 1.0, -1.0) if op != "Sign" else np.sign(s.x)
        self.step = 1.0

    # ------------------------------------------------------------------ pooling, shapes
    def maxpool(self, k: int = 2, scope: str = "pool"):
        self.t = self.node("MaxPool", [self.t], scope, kernel_shape=[k, k], strides=[k, k])
        n, c, h, w = self.x.shape
        self.x = self.x[:, :, : h // k * k, : w // k * k].reshape(n, c, h // k, k, w // k, k).max(axis=(3, 5))

    def avgpool(self, k: int = 2, scope: str = "avgpool"):
        self.t = self.node("AveragePool", [self.t], scope, kernel_shape=[k, k], strides=[k, k])
        n, c, h, w = self.x.shape
        self.x = self.x[:, :, : h // k * k, : w // k * k].reshape(n, c, h // k, k, w // k, k).mean(axis=(3, 5))
        self.step /= k * k

    def gap(self, scope: str = "gap"):
        self.t = self.node("GlobalAveragePool", [self.t], scope)
        n, c, h, w = self.x.shape
        self.x = self.x.mean(axis=(2, 3), keepdims=True)
        self.step /= h * w

    def flatten(self, scope: str = "flatten"):
        self.t = self.node("Flatten", [self.t], scope, axis=1)
        self.x = self.x.reshape(self.x.shape[0], -1)

    # ------------------------------------------------------------------ head
    def logits(self, classes: int = 10, code: str = "binary", scope: str = "fc_out"):
        """The final Gemm: exact in float32 and tie-free (see the module docstring)."""
        if self.x.ndim != 2:
            self.flatten()
        f = self.x.shape[1]
        rng = self.rng
        e = int(rng.integers(3, 7))
        if code == "int":
            K = rng.integers(-7, 8, (classes, f))
            K[:, 0] = np.where(K[:, 0] == 0, 1, K[:, 0])
            m = np.ones(classes)
        else:
            K = rng.choice([-1, 1], (classes, f))
            m = rng.integers(8, 16, classes).astype(np.float64)
        A = self._grid_ints() @ K.T
        g = pow2(-e) * self.step
        # in units of g / 64 every partial sum stays below 2**24: float32 sums are exact
        if np.abs(A).max() * 15 * 64 + 2**10 >= 2**24:
            raise ValueError("the logits layer would not be exact in float32: fewer features")
        frac = rng.permutation(32)[:classes]
        bias = g * (rng.integers(-8, 9, classes) + (2 * frac + 1) / 64.0)
        if code == "int":
            q = self.const(scope + "_weight_int8", K.astype(np.int8))
            s = self.const(scope + "_weight_scale", np.array(pow2(-e), F32))
            z = self.const(scope + "_weight_zero_point", np.array(0, np.int8))
            w = self.node("DequantizeLinear", [q, s, z], scope + "_dequant_w")
        else:
            w = self.const(scope + "_weight", (K * (m * pow2(-e))[:, None]).astype(F32))
        self.t = self.node("Gemm", [self.t, w, self.const(scope + "_bias", bias.astype(F32))], scope, transB=1)
        self.x = (A * m) * g + bias
        self.classes = classes
        self.layers.append({"kind": "logits", "code": code, "in": f, "out": classes})

    def model(self, doc: str = "") -> onnx.ModelProto:
        out = self.nodes[-1].output[0]
        self.nodes[-1].output[0] = "logits"
        self.names.add("logits")
        del out
        g = helper.make_graph(self.nodes, self.name,
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(self.input_shape))],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, self.classes])],
                              initializer=self.inits)
        opsets = [helper.make_opsetid(d, v) for d, v in self.domains.items()]
        m = helper.make_model(g, opset_imports=opsets, producer_name="bnnc.zoo", doc_string=doc)
        m.ir_version = IR_VERSION
        return m


def conv_int(q: np.ndarray, K: np.ndarray, pad: int, stride: int) -> np.ndarray:
    """Exact integer convolution (N, C, H, W) x (O, C, k, k) -> (N, O, OH, OW), zero padding."""
    k = K.shape[2]
    qp = np.pad(q, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = sliding_window_view(qp, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.tensordot(win, K, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2).astype(np.int64)
