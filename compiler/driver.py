"""What the CLI does, as functions: compile for a target, prepare inputs, run, verify."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import ir, targets
from .arith import eval_chain, invert_chain
from .errors import BnncError
from .passes.pack_bits import pack_bits
from .passes.plan_arena import plan_arena
from .targets import TargetOptions, check_target  # noqa: F401  (re-exported for callers)


def backend_graph(graph: ir.Graph, word_bits: int = 64) -> ir.Graph:
    """The lowered IR with the backend passes applied (packing, arena)."""
    return plan_arena(pack_bits(graph, word_bits))


def render_c(graph: ir.Graph, name: str = "bnnc") -> dict:
    from .backends import c as c_backend

    return c_backend.render(backend_graph(graph), name)


@dataclass
class Inputs:
    grid: np.ndarray  # (N, elems) what the compiled code takes (input dtype)
    model: np.ndarray  # (N, *input_shape) float32 what the original ONNX model takes


def prepare_inputs(graph: ir.Graph, x: np.ndarray) -> Inputs:
    """Check and convert user inputs (N, ...) for the compiled model and for the original."""
    info = graph.input_info
    shape = tuple(info["shape"])
    n_el = int(np.prod(shape))
    x = np.asarray(x)
    if x.dtype.kind not in "fiub":
        raise BnncError(f"input array has dtype {x.dtype}; expected numbers")
    if x.ndim == 0 or x.size == 0 or x.size % n_el != 0 or x.size // x.shape[0] != n_el:
        raise BnncError(f"input array of shape {x.shape} does not hold samples of {n_el} elements "
                        f"(model input {(1,) + shape})")
    n = x.shape[0]
    xf = x.reshape(n, n_el).astype(np.float64)
    if not np.all(np.isfinite(xf)):
        raise BnncError("input array contains NaN or infinite values")
    grid = info["grid"]
    if grid["range"] is None:
        g = xf.astype(np.float32)
        return Inputs(g, g.reshape((n,) + shape))
    lo, hi = grid["range"]
    if grid["scale"] != 1.0:  # declared --input-scale: quantize, feed the original the grid values
        q = np.clip(np.rint(xf / grid["scale"]), lo, hi)
        return Inputs(q.astype(grid["dtype"]), (q * grid["scale"]).astype(np.float32).reshape((n,) + shape))
    off = (xf != np.rint(xf)) | (xf < lo) | (xf > hi)
    if grid.get("values"):
        off |= ~np.isin(xf, grid["values"])
    if np.any(off) and grid.get("pre") and not grid.get("values"):
        q = normalised_to_grid(grid, xf)
        if q is not None:  # the training pipeline's own (normalised) inputs: the device sees q
            return Inputs(q.astype(grid["dtype"]), xf.astype(np.float32).reshape((n,) + shape))
    if np.any(off):
        also = " nor its declared normalisation of one" if grid.get("pre") else ""
        raise BnncError(f"input value {xf[off][0]} is not on the model's integer input grid "
                        f"{list(grid['values']) if grid.get('values') else [lo, hi]}{also} ({grid['why']})")
    real = xf.astype(np.float32)
    if grid.get("pre"):  # the declared per-channel float32 ops give the original model its input
        real = eval_chain(grid["pre"], real)
    return Inputs(xf.astype(grid["dtype"]), real.reshape((n,) + shape))


def normalised_to_grid(grid: dict, xf: np.ndarray):
    """The integers q of the declared grid whose declared normalisation (grid["pre"]) the float
    inputs xf (N, elements) are, as a training pipeline computes it, or None unless every value is
    one: undoing the normalisation must land within 2^-8 of an integer in the range. Pipelines that
    evaluate it in float32 or float64, in any order, land within about 2^-16 of q; other floats
    are refused rather than rounded to a grid they were not on."""
    lo, hi = grid["range"]
    inv = invert_chain(grid["pre"], xf)
    if inv is None:
        return None
    q = np.rint(inv)
    ok = (np.abs(inv - q) <= 2.0**-8) & (q >= lo) & (q <= hi)
    return q if np.all(ok) else None


def approximations(graph: ir.Graph) -> list:
    """The ops whose values bnnc represents on a fixed-point grid with a rounding error (their
    bounds are in `bnnc report`); empty when the lowered model is exact."""
    found = []
    for op in graph.ops():
        ep = getattr(op, "epilogue", None)
        if isinstance(op, ir.InputQuantize) and op.max_error:
            found.append(f"input rounded to the grid (<= {op.max_error:.3g})")
        elif isinstance(op, ir.Conv) and op.acc_error is not None and op.acc_error.any():
            found.append(f"'{op.source_ops[0]}' real-valued weights (<= {float(op.acc_error.max()):.3g})")
        elif isinstance(ep, ir.Thresholds) and ep.near_ties:
            found.append(f"'{(getattr(op, 'source_ops', None) or [op.name])[0]}': {ep.near_ties} step(s) within "
                         "float32 rounding of 0 (order-sensitive)")
        elif isinstance(ep, (ir.LevelThresholds, ir.Requantize)) and ep.near_ties:
            found.append(f"'{(getattr(op, 'source_ops', None) or [op.name])[0]}': {ep.near_ties} level step(s) "
                         "within float32 rounding of their boundary (order-sensitive)")
        elif isinstance(ep, ir.Requantize) and ep.max_error:
            found.append(f"'{(getattr(op, 'source_ops', None) or [op.name])[0]}' fixed-point stream "
                         f"(<= {ep.max_error:.3g})")
        elif isinstance(op, ir.Add) and op.round_shift:
            half_step = graph.tensors[op.outputs[0]].scale / 2
            found.append(f"residual Add '{op.name}' rounded to its grid (<= {half_step:.3g})")
        elif isinstance(op, ir.Softmax) and op.out_grid is not None:
            found.append(f"'{(op.source_ops or [op.name])[0]}' softmax on the output grid {op.out_grid[0]:.6g} "
                         "(near a step boundary the model's own float32 softmax may round the other way)")
        elif isinstance(op, (ir.Sigmoid, ir.Gelu)):
            found.append(f"'{(op.source_ops or [op.name])[0]}' {type(op).__name__.lower()} on the grid "
                         f"2^-{op.frac_bits} (<= {op.max_error:.3g})")
        elif isinstance(op, ir.Mul) and op.round_shift:
            half_step = graph.tensors[op.outputs[0]].scale / 2
            found.append(f"'{(op.source_ops or [op.name])[0]}' product of streams rounded to its grid "
                         f"(<= {half_step:.3g})")
        saturation = _saturation(graph, op)
        if saturation:
            found.append(saturation)
    return found


def _saturation(graph: ir.Graph, op) -> str:
    """What saturates where a stream's values can reach beyond its clamp ('' where none can)."""
    ep = getattr(op, "epilogue", None)
    if isinstance(ep, ir.Requantize) and ep.reach > max(ep.hi, -ep.lo) * ep.out_scale:
        return (f"'{(getattr(op, 'source_ops', None) or [op.name])[0]}' fixed-point stream saturates at "
                f"+-{max(ep.hi, -ep.lo) * ep.out_scale:.6g} (its worst case reaches {ep.reach:.6g})")
    if isinstance(op, ir.Add):
        a, b = (graph.tensors[t] for t in op.inputs)
        reach = max(-(a.lo * a.scale + b.lo * b.scale), a.hi * a.scale + b.hi * b.scale)
        bound = max(op.hi, -op.lo) * graph.tensors[op.outputs[0]].scale
        if reach > bound:
            return f"residual Add '{op.name}' saturates at +-{bound:.6g} (its worst case reaches {reach:.6g})"
    return ""


def output_bound_holds(graph: ir.Graph) -> bool:
    """Whether the stated end-to-end output bound (error_bounds) holds on every input: no step of a
    sign or quantizer within float32 rounding of its boundary (the bounds after one assume it did
    not flip), no softmax rounded to an output grid, no stream that can saturate."""
    return not output_bound_exceptions(graph)


def output_bound_exceptions(graph: ir.Graph) -> set:
    """Why the stated output bound does not hold on every input: a subset of {"near ties",
    "saturation", "softmax grid"} (see output_bound_holds)."""
    found = set()
    for op in graph.ops():
        if getattr(getattr(op, "epilogue", None), "near_ties", 0):
            found.add("near ties")
        if _saturation(graph, op):
            found.add("saturation")
        if isinstance(op, ir.Softmax) and op.out_grid is not None:
            found.add("softmax grid")
    return found


def run_target(graph: ir.Graph, target: str, inputs: Inputs, name: str = "bnnc", flags=None,
               opts: TargetOptions | None = None) -> np.ndarray:
    """Outputs (N, ...) of the compiled model on `target` (see `targets.run` for the stats too)."""
    opts = opts or TargetOptions(name=name, flags=tuple(flags) if flags else None)
    return targets.run(graph, target, inputs.grid, opts)[0]


def random_samples(graph: ir.Graph, n: int, seed: int) -> np.ndarray:
    """Inputs spread over the input grid (or over the float input quantizer's decision range)."""
    rng = np.random.default_rng(seed)
    info = graph.input_info
    shape = (n,) + tuple(info["shape"])
    grid = info["grid"]
    if grid["range"] is not None:
        lo, hi = grid["range"]
        if grid.get("values"):
            return rng.choice(np.array(grid["values"], np.float32), size=shape)
        q = rng.integers(lo, hi + 1, size=shape)
        return (q * grid["scale"]).astype(np.float32) if grid["scale"] != 1.0 else q.astype(np.float32)
    op = next(o for o in graph.ops() if isinstance(o, ir.InputQuantize))
    a, b = _affine(op.chain.ops)
    term = op.chain.terminal
    if isinstance(term, ir.RoundClampTerminal):
        # grid values q (plus jitter inside a step) mapped back through v = a*x + b
        q = rng.integers(term.qmin, term.qmax + 1, size=shape) - getattr(term, "add_after_round", 0)
        v = q + rng.uniform(-0.3, 0.3, size=shape)
    else:
        t = float(term.thresholds.ravel()[0]) if isinstance(term, ir.ThresholdTerminal) else 0.0
        v = t + rng.uniform(-1, 1, size=shape) * max(1.0, abs(t))
    return ((v - b) / a).astype(np.float32)


def _affine(ops) -> tuple:
    """(a, b) with chain(x) = a*x + b, for a chain of scalar affine ops."""
    a, b = 1.0, 0.0
    for op in ops:
        if op.op == "relu" or op.const is None or np.asarray(op.const).size != 1:
            raise BnncError("cannot sample inputs for this input quantizer; pass --input X.npy")
        c = float(op.const)
        if op.op == "mul":
            a, b = a * c, b * c
        elif op.op == "div":
            a, b = a / c, b / c
        elif op.op == "add":
            b += c
        else:
            b -= c
    if a == 0:
        raise BnncError("the input quantizer ignores its input; pass --input X.npy")
    return a, b
