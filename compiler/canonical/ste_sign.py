"""Straight-through estimators replaced by the function they estimate: `f - p + p` by f.

Matched: Add(Sub(f, p), p) (either Add operand order) where
- f = Sign(x) or a bipolar sign BipolarQuant(x, c) (canonical/bipolar_sign.py: +c where x >= 0,
  else -c) and `p` is computed from `x` alone by standard elementwise nodes and constants, or is x
  itself: Bi-Real's ApproxSign, `p` the piecewise polynomial whose gradient training uses, and
  PyTorch's most common form `x + (sign(x) - x).detach()`;
- or f is computed from p itself by standard elementwise nodes: a quantizer's straight-through
  estimator, `x + (q(x) - x).detach()` (DoReFa's `round(clamp(x, 0, 1) * k) / k`);
and Add(Sub(y, y), S) (`x - x.detach() + sign(x).detach()`), which is S exactly: y - y = 0 for
every finite y.

The math. Let s = sign(x) in {-1, 0, +1} and p a finite float32. Then fl(fl(s - p) + p) = s
whenever s = 0, or p is 0 or has the sign of s and |p| <= 2:
  * s = 0: fl(0 - p) = -p exactly, and -p + p = 0.
  * s = 1, p in [1/2, 2]: 1 - p is exact (Sterbenz), so the sum is exactly 1.
  * s = 1, p in [0, 1/2): d = fl(1 - p) lies in [1/2, 1] with rounding error |e| <= 2^-25, so
    d + p = 1 + e exactly; the float32 neighbours of 1 are 1 - 2^-24 and 1 + 2^-23, and 1 + e
    rounds to 1 (|e| = 2^-25 is a tie, which goes to the even 1).
  * s = -1: the mirror image.
Without the sign condition it fails: s = 1, p = -0.6 * 2^-24 gives fl(1 - p) = 1 and
fl(1 + p) = 1 - 2^-24.

Bi-Real's polynomial (p = -1 below -1, x^2 + 2x on [-1, 0), -x^2 + 2x on [0, 1), 1 above, built
with Less / Cast masks) has the sign of x and |p| <= 1 for every float32 with |x| < sqrt(FLT_MAX)
~ 1.8e19. Beyond that x * x overflows to inf, inf * 0 in a mask is NaN, and the original gives
NaN where the rewrite gives +-1; NaN inputs give NaN in both. The signed zero of sign(0) may
differ (-0 vs +0); they compare equal and every reader (a convolution, an add) treats them alike.

With p = x the identity holds only where |x| < 2^24: there 1 - x is exact (Sterbenz's lemma
below 2, an integer's neighbour below 2^24), and x + (1 - x) = 1; from 2^24 + 2 on, 1 - x rounds
to -(x - 2) or -x, and the sum is 2 or 0. The original model itself then outputs those values, not
a sign. A quantizer's levels behave alike: q - x is exact where q and x are within a factor of 2
(Sterbenz; a level is within half a step of x), or where both are small integers' neighbours.

Because `p` and `f` are arbitrary in general, each match is also probed before it is rewritten:
both are evaluated (onnxruntime) on float32 values of every exponent, both signs, zeros,
subnormals and the neighbours of +-1 and +-2. R is the largest power of two below which the
identity holds on every probe (beyond 2^63, differences only where the original is NaN are
allowed); the rewrite is made where R >= 2^16. Where R < 2^63 the model's metadata records it
(graph_edit.STE_EXACT_BELOW, {node: R} for f's nodes: the terminal f becomes, a Sign or a Quant
named after its Round, finds it), and the frontend's terminal carries it (`exact_below`): the fold
pass states whether the layer's reachable values stay below R, i.e. whether the rewrite is exact
there.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import helper

from ..original import MAX_IR_VERSION, static_shapes
from .graph_edit import (QONNX_DOMAIN, constant_values, copy_model, default_opset, drop_unused, graph_outputs,
                         is_standard, onnxruntime_session, producers, rename_input, scalar_constant,
                         set_ste_exact_below, ste_exact_below)

MIN_EXACT_BELOW = 2.0**16  # an STE exact only on a narrower range is not a sign: left as it is

ELEMENTWISE = {"Abs", "Add", "Sub", "Mul", "Div", "Neg", "Less", "LessOrEqual", "Greater", "GreaterOrEqual",
               "Equal", "Cast", "Where", "Clip", "Sign", "Relu", "Min", "Max", "Not", "And", "Or", "Pow",
               "Sqrt", "Identity", "Floor", "Ceil", "Round", "Tanh", "Sigmoid",
               "Shape", "ConstantOfShape"}  # tf2onnx's ones_like(x): a fill of x's shape, whatever x holds


def probe_values() -> np.ndarray:
    """float32 values of every exponent and both signs, zeros, subnormals, and near +-1, +-2."""
    v = [0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-40]
    rng = np.random.default_rng(0)
    for e in range(-126, 128):
        for m in (1.0, 1.25, 1.5, 1.9999999, *rng.uniform(1, 2, 3)):
            v += [m * 2.0**e, -m * 2.0**e]
    for c in (0.5, 1.0, 2.0):
        for start in (np.float32(c), np.float32(-c)):
            for direction in (np.float32(np.inf), np.float32(-np.inf)):
                x = start
                for _ in range(5):
                    v.append(float(x))
                    x = np.nextafter(x, direction, dtype=np.float32)
    v += list(rng.uniform(-2, 2, 4096)) + list(rng.uniform(-1e-3, 1e-3, 1024))
    with np.errstate(over="ignore"):
        return np.unique(np.asarray(v, dtype=np.float32))


def _poly_nodes(p: str, x: str, prods: dict, values: dict):
    """The nodes computing `p` from `x` and constants alone, elementwise; None if anything else feeds it."""
    nodes, seen, stack = [], set(), [p]
    while stack:
        t = stack.pop()
        if t == x or t in values or t in seen:
            continue
        seen.add(t)
        n = prods.get(t)
        if n is None or not is_standard(n) or n.op_type not in ELEMENTWISE:
            return None
        nodes.append(n)
        stack.extend(i for i in n.input if i)
    return nodes


def _probe(shape):
    """The probe values laid out in tensors of the matched tensor's shape (None: not static)."""
    probe = probe_values()
    size = int(np.prod(shape[1:])) if shape and all(d for d in shape[1:]) else 0
    if size == 0:
        return None
    n = -(-probe.size // size)
    return np.resize(probe, n * size).reshape((n, *shape[1:])).astype(np.float32)


def _evaluate(out: str, x: str, xs: np.ndarray, prods: dict, values: dict, opset: int):
    """float32 values of tensor `out` for x = xs, where standard elementwise nodes and constants
    compute it from x (onnxruntime, as the model would); None where anything else feeds it."""
    if out == x:
        return xs
    if out in values:
        return np.broadcast_to(np.asarray(values[out], np.float32), xs.shape)
    nodes = _poly_nodes(out, x, prods, values)
    if not nodes:
        return None
    used = {i for nd in nodes for i in nd.input}
    inits = [onnx.numpy_helper.from_array(np.asarray(values[k]), k) for k in used if k in values]
    order = _topological(nodes, {x} | set(values))
    g = helper.make_graph(order, "probe", [helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None)],
                          [helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, None)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = min(m.ir_version, MAX_IR_VERSION)
    try:
        return np.broadcast_to(onnxruntime_session(m).run(None, {x: xs})[0], xs.shape).astype(np.float32)
    except Exception:
        return None


def _exact_below(xs: np.ndarray, s: np.ndarray, pv: np.ndarray) -> float:
    """R, the largest power of two such that fl(fl(s - p) + p) == s at every probe with |x| < R
    (inf where it holds at every probe, NaN originals aside)."""
    with np.errstate(all="ignore"):
        got = (s - pv) + pv
    small = np.abs(xs) < 2.0**63
    bad = ~((got == s) | np.isnan(xs) | (np.isnan(s) & np.isnan(got))) & (small | ~np.isnan(got))
    if not np.any(bad):
        return math.inf
    least = float(np.abs(xs[bad]).min())
    return 2.0 ** math.floor(math.log2(least)) if least > 0 else 0.0


def _sign_of(node, values: dict):
    """(x, s(xs)) of a sign node: ONNX Sign, or BipolarQuant(x, c) with a positive scalar c; else None."""
    if node is None:
        return None
    if node.op_type == "Sign" and is_standard(node):
        return node.input[0], np.sign
    if node.op_type == "BipolarQuant" and node.domain == QONNX_DOMAIN:
        c = scalar_constant(values, node.input[1], "f")
        if c is not None and float(c) > 0:
            return node.input[0], lambda v: np.where(v >= 0, np.float32(c), np.float32(-c)).astype(np.float32)
    return None


def _difference(node, prods: dict):
    """(f, p) of a node computing f - p: Sub(f, p), or the Add of Neg(p) and f that tf2onnx writes
    for TensorFlow's `-p + f` (QKeras: `x + stop_gradient(-x + q(x))`), the same float32 value:
    negation is exact and addition commutes. None for any other node."""
    if node is None or not is_standard(node):
        return None
    if node.op_type == "Sub":
        return node.input[0], node.input[1]
    if node.op_type == "Add" and len(node.input) == 2:
        for a, b in (tuple(node.input), tuple(reversed(node.input))):
            neg = prods.get(a)
            if neg is not None and neg.op_type == "Neg" and is_standard(neg):
                return b, neg.input[0]
    return None


def _common_source(f: str, p: str, prods: dict, values: dict):
    """The tensor x that f is computed from by elementwise nodes and constants: p itself where it is
    (a quantizer's STE, f = q(p)), else the one tensor both f and p are computed from (QKeras's
    quantized_relu: p a clamped relu of x, f its quantized value); None if there is none."""
    if _poly_nodes(f, p, prods, values) is not None:
        return p
    sources = [_sources(t, prods, values) for t in (f, p)]
    if sources[0] != sources[1] or len(sources[0]) != 1:
        return None
    return next(iter(sources[0]))


def _sources(t: str, prods: dict, values: dict):
    """The tensors not computed by ELEMENTWISE nodes from which those nodes compute `t`."""
    found, seen, stack = set(), set(), [t]
    while stack:
        u = stack.pop()
        if u in values or u in seen or not u:
            continue
        seen.add(u)
        n = prods.get(u)
        if n is None or not is_standard(n) or n.op_type not in ELEMENTWISE:
            found.add(u)
            continue
        stack.extend(n.input)
    return found


def _topological(nodes, known: set) -> list:
    avail, order, pending = set(known), [], list(nodes)
    while pending:
        rest = [n for n in pending if not all(i in avail or not i for i in n.input)]
        ready = [n for n in pending if n not in rest]
        if not ready:
            return []
        for n in ready:
            order.append(n)
            avail.update(n.output)
        pending = rest
    return order


def simplify_ste_sign(model: onnx.ModelProto) -> onnx.ModelProto:
    out = copy_model(model)
    g = out.graph
    prods, values = producers(g), constant_values(g)
    opset = default_opset(out)
    shapes = None
    exact_below = ste_exact_below(out)
    outs = graph_outputs(g)
    changed = False
    for add in list(g.node):
        if add.op_type != "Add" or not is_standard(add) or len(add.input) != 2 or \
                add.output[0] in outs:  # the model's output keeps its producer (and name)
            continue
        for u, p in (tuple(add.input), tuple(reversed(add.input))):
            sub = _difference(prods.get(u), prods)
            if sub is None:
                continue
            if sub[0] == sub[1] and _sign_of(prods.get(p), values) is not None:
                rename_input(g, add.output[0], p)  # (y - y) + S: S exactly
                changed = True
                break
            f = sub[0]
            if sub[1] != p or f == p or f in values:
                continue
            found = _sign_of(prods.get(f), values)
            # a sign of x; else f computed from p itself, or f and p from one tensor x
            x = found[0] if found is not None else _common_source(f, p, prods, values)
            if x is None:
                continue
            if shapes is None:
                shapes = static_shapes(out)
            xs = _probe(shapes.get(x))
            if xs is None:
                continue
            with np.errstate(all="ignore"):
                s = found[1](xs) if found is not None else _evaluate(f, x, xs, prods, values, opset)
            pv = _evaluate(p, x, xs, prods, values, opset)
            if s is None or pv is None:
                continue
            r = _exact_below(xs, s, pv)
            if r < MIN_EXACT_BELOW:
                continue
            if r < 2.0**63:  # the terminal f ends in (a Sign; a Round that becomes a Quant...) carries it
                for n in [prods[f]] + (_poly_nodes(f, x, prods, values) or []):
                    exact_below[n.name] = min(r, exact_below.get(n.name, math.inf))
            rename_input(g, add.output[0], f)
            changed = True
            break
    if changed:
        drop_unused(out)
        set_ste_exact_below(out, exact_below)
    return out
