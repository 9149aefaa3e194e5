"""The reference executor: the single definition of the numbers every backend must reproduce.

It runs an IR graph at any stage of lowering (float32 chains before folding, integer thresholds
after) with numpy, integer-exact: bit tensors are int8 arrays of -1/+1, integer tensors int64,
convolutions are exact integer sums (float64 matmuls of small integers are exact below 2**53),
and real values follow the float32 chains of arith.py operation by operation.
"""

from __future__ import annotations

import numpy as np

from . import ir
from .arith import (acc_to_float, apply_terminal, dequantize_linear, eval_chain, gelu, level_count, log_softmax,
                    multiply_streams, quantize_linear, requantize, sigmoid, softmax)
from .errors import BnncError

BATCH = 32  # samples per chunk
COLS_BLOCK = 1 << 24  # window values gathered at once by conv_accumulator (128 MiB as int64 or float64)


def _windows(x: np.ndarray, kernel, stride, pads, fill) -> np.ndarray:
    """(N, OH, OW, kh, kw, C) windows of (N, H, W, C) padded with `fill`."""
    t, l, b, r = pads
    xp = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=fill)
    win = np.lib.stride_tricks.sliding_window_view(xp, kernel, axis=(1, 2))  # N, H', W', C, kh, kw
    win = win[:, :: stride[0], :: stride[1]]
    return win.transpose(0, 1, 2, 4, 5, 3)


def conv_accumulator(op: ir.Conv, x: np.ndarray) -> np.ndarray:
    """Integer accumulator (N, OH, OW, O) of a Conv on int input values (N, H, W, C). The windows are
    gathered (im2col) a block of samples, or of one sample's output rows, at a time: at most about
    COLS_BLOCK values, so that large images take bounded memory."""
    win = _windows(x, op.kernel, op.stride, op.pads, 0)
    n, oh, ow = win.shape[:3]
    w = ir.int_weights(op).reshape(op.w.shape[0], -1)
    # windows hold x's values and zero padding: float64 products and sums are exact below 2**53
    exact = not x.size or not w.size or float(np.abs(x).max()) * float(np.abs(w).sum(axis=1).max()) < 2.0**52
    wt = w.T.astype(np.float64 if exact else np.int64)  # else wide integers (streams, large multipliers)
    acc = np.empty((n, oh, ow, w.shape[0]), np.int64)
    per_row = max(1, ow * w.shape[1])
    samples, rows = max(1, COLS_BLOCK // (per_row * max(1, oh))), max(1, COLS_BLOCK // per_row)
    blocks = ([(slice(s, s + samples), slice(None)) for s in range(0, n, samples)] if samples > 1 or rows >= oh else
              [(slice(s, s + 1), slice(y, y + rows)) for s in range(n) for y in range(0, oh, rows)])
    for bs, by in blocks:
        cols = win[bs, by].reshape(-1, w.shape[1])
        block = cols.astype(wt.dtype) @ wt
        acc[bs, by] = (np.rint(block).astype(np.int64) if exact else block).reshape(acc[bs, by].shape)
    if op.bias_kernel is not None:
        acc = acc + bias_map(op, x.shape[1:3])[None]
    return acc


def sum_accumulator(op, env: dict) -> np.ndarray:
    """Integer accumulator (N, OH, OW, O) of a Conv or of a ConvSum (sum_i k_i * acc_i of its terms,
    each reading its own input from `env`)."""
    if isinstance(op, ir.Conv):
        return conv_accumulator(op, env[op.inputs[0]].astype(np.int64))
    _, ks = ir.conv_sum_multipliers(op)
    return sum(k * sum_accumulator(t, env) for k, t in zip(ks, op.terms))


def bias_map(op: ir.Conv, in_hw: tuple) -> np.ndarray:
    """(OH, OW, O): sum of bias_kernel over the valid (non-padding) taps of each output position."""
    valid = _windows(np.ones((1, in_hw[0], in_hw[1], 1), np.int64), op.kernel, op.stride, op.pads, 0)
    valid = valid[0, ..., 0]  # OH, OW, kh, kw
    oh, ow = valid.shape[:2]
    bk = op.bias_kernel.reshape(op.bias_kernel.shape[0], -1)
    return (valid.reshape(oh * ow, -1) @ bk.T).reshape(oh, ow, -1)


def apply_thresholds(th: ir.Thresholds, acc: np.ndarray) -> np.ndarray:
    bits = np.where(th.direction.astype(np.int64) * acc >= th.threshold, 1, -1).astype(np.int8)
    const = th.constant != ir.Thresholds.NOT_CONSTANT
    if np.any(const):
        bits[..., const] = th.constant[const]
    return bits


def _input(op: ir.InputQuantize, x: np.ndarray, out_type) -> np.ndarray:
    n = x.shape[0]
    flat = x.reshape(n, -1)
    if not getattr(op, "flat", False) and not op.channels_last and len(op.in_shape) == 3:
        c, h, w = op.in_shape
        flat = flat.reshape(n, c, h, w).transpose(0, 2, 3, 1).reshape(n, -1)
    if op.int_thresholds is not None:
        return apply_thresholds(op.int_thresholds, flat.astype(np.int64)).reshape((n,) + out_type.shape)
    if op.chain.terminal is None:  # integers straight into the first layer
        return flat.astype(np.int64).reshape((n,) + out_type.shape)
    v = eval_chain(op.chain.ops, flat.astype(np.float32))
    out = apply_terminal(op.chain.terminal, v)
    if isinstance(out_type, ir.Bits) and np.any(out == 0):
        raise BnncError("an input value binarizes to exactly 0 (ONNX Sign of 0), which a bit cannot hold")
    return out.reshape((n,) + out_type.shape)


def apply_planes(planes: int, acc: np.ndarray) -> np.ndarray:
    """Accumulators (..., O) repeated for `planes` activation bases: (..., planes * O)."""
    return acc if planes == 1 else np.concatenate([acc] * planes, axis=-1)


def apply_epilogue(ep, acc: np.ndarray) -> np.ndarray:
    """Any epilogue (Chain, Planes, Thresholds, LevelThresholds, Requantize) on accumulators
    (..., O) whose last axis is the channel."""
    if isinstance(ep, ir.Thresholds):
        return apply_thresholds(ep, apply_planes(ep.planes, acc))
    if isinstance(ep, ir.LevelThresholds):
        return level_count(ep, apply_planes(ep.planes, acc))
    if isinstance(ep, ir.Requantize):
        return requantize(ep, acc)
    if isinstance(ep, ir.Planes):
        return np.concatenate([apply_epilogue(c, acc) for c in ep.chains], axis=-1)
    v = eval_chain(ep.ops, acc_to_float(acc))
    if ep.terminal is None:
        return v
    return apply_terminal(ep.terminal, v)


def _epilogue(op: ir.Conv, acc: np.ndarray) -> np.ndarray:
    return apply_epilogue(op.epilogue, acc)


def _sumpool(op: ir.SumPool, x: np.ndarray) -> np.ndarray:
    win = _windows(x.astype(np.int64), op.kernel, op.stride, op.pads, 0)
    sums = win.sum(axis=(3, 4))
    return sums if op.multipliers is None else sums * op.multipliers[None, :, :, None]


def _maxpool(op: ir.MaxPool, x: np.ndarray) -> np.ndarray:
    low = np.iinfo(np.int64).min if x.dtype.kind == "i" else -np.inf
    win = _windows(x.astype(np.int64), op.kernel, op.stride, op.pads, low)
    return win.max(axis=(3, 4)).astype(x.dtype)


def _argmax(op: ir.ArgMax, x: np.ndarray) -> np.ndarray:
    v = x.reshape(x.shape[0], -1)
    order = np.argsort(-v, axis=1, kind="stable")
    return order[:, : op.k].astype(np.int32)


def _concat(op: ir.Concat, xs: list) -> np.ndarray:
    if not op.shifts:  # bits: +-1 values side by side
        return np.concatenate(xs, axis=-1)
    return np.concatenate([x.astype(np.int64) << k for x, k in zip(xs, op.shifts)], axis=-1)


def run_chunk(graph: ir.Graph, x: np.ndarray, keep: bool = False) -> dict:
    """{tensor: value} after running every op on the chunk `x`: the output, and with `keep` every
    tensor (otherwise each is dropped after the last op that reads it, which bounds the memory of
    deep networks to what is live)."""
    ops = list(graph.ops())
    last_read = {t: i for i, op in enumerate(ops) for t in op.inputs}
    env = {graph.input: x}
    for i, op in enumerate(ops):
        a = env[op.inputs[0]]
        oty = graph.tensors[op.outputs[0]]
        if isinstance(op, ir.InputQuantize):
            r = _input(op, a, oty)
        elif isinstance(op, ir.Conv):
            r = _epilogue(op, conv_accumulator(op, a.astype(np.int64)))
        elif isinstance(op, ir.ConvSum):
            r = apply_epilogue(op.epilogue, sum_accumulator(op, env))
        elif isinstance(op, ir.MaxPool):
            r = _maxpool(op, a)
        elif isinstance(op, ir.GlobalSumPool):
            r = a.astype(np.int64).sum(axis=(1, 2), keepdims=True)
        elif isinstance(op, ir.Flatten):
            r = a.reshape(a.shape[0], 1, 1, -1)
        elif isinstance(op, ir.Unflatten):
            flat = a.reshape(a.shape[0], -1)
            r = (flat if op.order is None else flat[:, op.order]).reshape((a.shape[0],) + oty.shape)
        elif isinstance(op, ir.Gather) and op.index is not None:
            r = a.reshape(a.shape[0], -1)[:, op.index.reshape(-1)].reshape((a.shape[0],) + op.index.shape)
        elif isinstance(op, ir.Gather):
            r = a[:, np.asarray(op.rows, np.int64)][:, :, np.asarray(op.cols, np.int64)]
            r = r if op.channels is None else r[..., np.asarray(op.channels, np.int64)]
        elif isinstance(op, ir.ArgMax):
            r = _argmax(op, a)
        elif isinstance(op, ir.Activation):
            r = apply_epilogue(op.epilogue, a.astype(np.int64))
        elif isinstance(op, ir.Add):
            b = env[op.inputs[1]]
            r = (a.astype(np.int64) << op.shifts[0]) + (b.astype(np.int64) << op.shifts[1])
            if op.round_shift:
                r = (r + (1 << (op.round_shift - 1))) >> op.round_shift
            r = np.clip(r, op.lo, op.hi)
        elif isinstance(op, ir.SumPool):
            r = _sumpool(op, a)
        elif isinstance(op, ir.Concat):
            r = _concat(op, [env[t] for t in op.inputs])
        elif isinstance(op, ir.Softmax):
            r = log_softmax(a) if op.log else softmax(a)
            if op.out_grid is not None:
                r = quantize_linear(r, *op.out_grid)
                zp = op.out_grid[1]
                if op.requant is not None:  # the DequantizeLinear -> QuantizeLinear of one scale
                    r = np.clip(r - np.float32(zp) + np.float32(op.requant[0]), op.requant[1], op.requant[2])
                    zp = op.requant[0]
                r = r.astype(np.int64) if isinstance(oty, ir.Ints) else dequantize_linear(r, op.out_grid[0], zp)
        elif isinstance(op, ir.Sigmoid):
            r = sigmoid(a, op.in_scale, op.frac_bits)
        elif isinstance(op, ir.Gelu):
            r = gelu(a, op.in_scale, op.frac_bits)
        elif isinstance(op, ir.Mul):
            r = multiply_streams(a, env[op.inputs[1]], op.round_shift, op.lo, op.hi)
        else:  # pragma: no cover
            raise TypeError(op)
        env[op.outputs[0]] = r
        if not keep:
            for t in set(op.inputs) - {graph.output}:
                if last_read[t] == i:
                    del env[t]
    return env


def run(graph: ir.Graph, x: np.ndarray) -> np.ndarray:
    """Outputs (N, ...) for inputs (N, ...) in the model's input layout (each x[i] one sample)."""
    n = x.shape[0]
    outs = []
    for i in range(0, n, BATCH):
        env = run_chunk(graph, x[i: i + BATCH])
        y = env[graph.output]
        outs.append(ir.output_in_model_order(graph, y.reshape(y.shape[0], -1)))
    y = np.concatenate(outs) if outs else np.zeros((0, graph.output_info["elements"]))
    return y.reshape((n,) + tuple(graph.output_info["shape"][1:]))


def intermediates(graph: ir.Graph, x: np.ndarray) -> dict:
    """Every tensor's value for inputs x (one chunk): for debugging and backend tests."""
    return run_chunk(graph, x, keep=True)
