"""`verify`: the target against the reference, bit for bit, and the reference against the original
model (onnxruntime) or the user's expected outputs; with `trace`, layer by layer.

The rules (README.md, "verify"): the target must equal the reference on every sample; the reference
must agree with the original on at least `agreement` of the samples: the same top-1 and a max abs
difference within rtol x max(1, max|original|), plus the stated end-to-end output bound where bnnc
states roundings (`driver.approximations`); only top-1 where that bound does not hold on every input
(`driver.output_bound_holds`: near ties, saturation), and where near ties alone are why, at least half
the samples within that bound. The original computes in float32: a value within its rounding of a
quantizer step can land on the other side of it there, which is why a fraction of the samples and
not every one is required. Expected outputs given by the user take the original's place.

The trace compares the layers that come from ONNX nodes (convolutions and dense layers, with the
BatchNorm and activation folded into them) with the ONNX tensor each follows best among the
outputs of its ONNX nodes and the ops that follow them (`_layer_tensors`; a binary or multi-level
layer only with its activation's outputs), read as NCHW or, for tf2onnx's graphs, NHWC, at the
layer's output or after the MaxPools the frontend moved past its activation, on up to
TRACE_SAMPLES samples (those that fail first), and names the first layer that differs. It runs the reference on the IR as it is after
threshold folding and before pruned channels are stripped (so channels correspond one to one; the
stripping is exact and is checked by the outputs). Binary and multi-level tensors must hold the same
levels as the original, channel by channel (any per-channel map from bnnc's integers to the
original's values that is one to one); real-valued and fixed-point tensors are compared as numbers
(value x scale), within rtol x max(1, max|original|) plus the error bound bnnc states for the layer.
The target is compared with the reference at the outputs (the targets do not expose their layers).
"""

from __future__ import annotations

import time

import numpy as np

from . import driver, error_bounds, ir, progress, reference
from .canonical.node_names import node_names
from .errors import BnncError, one_line

ORIGINAL_CHUNK = 16  # samples per onnxruntime call batch, between progress milestones
TRACE_SAMPLES = 16  # samples the trace runs (every layer's tensors are kept): the failing ones first


def run_original(model, x: np.ndarray) -> np.ndarray:
    """Outputs (N, ...) of the original model in onnxruntime (custom ops rewritten)."""
    from .original import OriginalModel

    n = x.shape[0]
    try:
        om = OriginalModel(model)
        with progress.step(f"running the original model in onnxruntime on {n} sample(s)", total=n) as s:
            outs = []
            for i in range(0, n, ORIGINAL_CHUNK):
                outs.append(om.run(x[i: i + ORIGINAL_CHUNK]))
                s.advance(outs[-1].shape[0])
    except BnncError:
        raise
    except Exception as e:
        raise BnncError(f"onnxruntime cannot run the original model: {str(e).splitlines()[0][:200]}") from None
    return np.concatenate(outs)


def _expected(y, shape: tuple) -> np.ndarray:
    y = np.asarray(y)
    if y.dtype.kind not in "fiub":
        raise BnncError(f"--expected array has dtype {y.dtype}; expected numbers")
    if y.size != int(np.prod(shape)):
        raise BnncError(f"--expected array of shape {y.shape} does not hold {shape[0]} outputs of shape "
                        f"{shape[1:]} (one per input sample)")
    y = y.reshape(shape)
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise BnncError("--expected array contains NaN or infinite values")
    return y


def _top1(y: np.ndarray, indices: bool) -> np.ndarray:
    """The class of each sample: the first of TopK / ArgMax indices, else the largest output (real
    values or a QuantizeLinear's integers)."""
    return y.reshape(y.shape[0], -1)[:, 0] if indices else y.reshape(y.shape[0], -1).argmax(axis=1)


def verify(compiled, x=None, *, samples=100, seed=0, expected=None, rtol=1e-4, agreement=0.99, trace=False):
    from .api import Verification

    if not 0 < agreement <= 1:
        raise BnncError(f"--agreement must be in (0, 1] (got {agreement})")
    if not (np.isfinite(rtol) and rtol >= 0):
        raise BnncError(f"--rtol must be a finite number >= 0 (got {rtol})")
    graph = compiled.graph
    if x is None:
        if expected is not None:
            raise BnncError("--expected needs --input: expected outputs belong to given inputs")
        x = compiled.samples(samples, seed)
    inputs = compiled.inputs(x)
    n = inputs.grid.shape[0]
    against = "original" if expected is None else "expected"
    lines = [f"verifying {n} samples of {compiled.source} on target '{compiled.target}'"
             + (" against the expected outputs" if expected is not None else "")]
    t0 = time.time()
    with progress.step(f"running the reference on {n} sample(s)"):
        ref = driver.run_target(graph, "ref", inputs)
    orig = run_original(compiled.model, inputs.model) if expected is None else _expected(expected, ref.shape)
    tgt, stats = compiled._run(inputs)
    orig = orig.reshape(ref.shape)
    same = np.array([np.array_equal(tgt[i], ref[i]) for i in range(n)])
    indices = graph.output_info["dtype"] == "int32"
    top_ref, top_orig = _top1(ref, indices), _top1(orig, indices)
    top_ok = top_ref == top_orig
    if not indices:
        diff = np.abs(ref.astype(np.float64) - orig.astype(np.float64)).reshape(n, -1).max(axis=1)
        scale = max(1.0, float(np.abs(orig).max()))
        tol = rtol * scale
        close = diff <= tol
        diff_text = f"{diff.max():.3g} (tolerance {tol:.3g} = {rtol:g} x max(1, max|{against}|))"
    else:
        diff = (ref.reshape(n, -1) != orig.reshape(n, -1)).sum(axis=1).astype(float)
        close = diff == 0
        diff_text = f"{int(diff.max())} differing indices"
    rows = [("samples", str(n)),
            (f"{compiled.target} == reference (bit-exact)", f"{int(same.sum())}/{n}"),
            (f"reference top-1 == {against}", f"{int(top_ok.sum())}/{n}"),
            (f"reference vs {against} max abs diff", diff_text),
            ("time", f"{time.time() - t0:.2f} s")]
    w = max(len(k) for k, _ in rows)
    lines += [f"{k.ljust(w)}  {v}" for k, v in rows]
    approx = driver.approximations(graph)
    exact = approx == []
    exceptions = driver.output_bound_exceptions(graph) if not exact and not indices else set()
    bounded = not exact and not indices and not exceptions
    # only near ties keep the bound from every input: a flip moves some samples, an error in bnnc
    # (a wrong scale) every one, so most samples must still be within the bound
    majority = not exact and not indices and exceptions == {"near ties"}
    if bounded or majority:  # stated roundings: the values may also differ by the end-to-end bound bnnc states
        bound = error_bounds.output_bound(graph)
        within_bound = diff <= tol + bound
        close = within_bound if bounded else close
    agree = top_ok & close if exact or bounded else top_ok
    bad = np.flatnonzero(~(same & agree))
    for i in bad[:5]:
        lines.append(f"  sample {i}: target==ref {bool(same[i])}, top-1 ref {top_ref[i]} {against} {top_orig[i]}, "
                     f"diff {diff[i]:.3g}")
    if not same.all():
        i = int(np.flatnonzero(~same)[0])
        idx = np.flatnonzero(tgt[i].reshape(-1) != ref[i].reshape(-1))
        lines.append(f"  first target/reference difference: sample {i}, output index {int(idx[0])} "
                     f"(target {tgt[i].reshape(-1)[idx[0]]}, reference {ref[i].reshape(-1)[idx[0]]}; "
                     f"{idx.size} of {tgt[i].size} outputs differ)")
    if bad.size == 0 and diff.max() > 0:  # the closest calls, so a user sees how near the tolerance they are
        worst = np.argsort(-diff, kind="stable")[:3]
        lines.append("worst differences: " + ", ".join(f"sample {i} {diff[i]:.3g}" for i in worst if diff[i] > 0))
    passed = bool(same.all()) and agree.mean() >= agreement and (not majority or within_bound.mean() >= 0.5)
    if not exact:
        within = f"the tolerance + the stated output bound {bound:.3g}" if bounded else "the tolerance"
        lines.append(f"approximations (stated by bnnc report): {'; '.join(approx[:3])}; "
                     f"{int(close.sum())}/{n} samples within {within}"
                     + (f", {int(within_bound.sum())}/{n} within the tolerance + the stated output bound {bound:.3g} "
                        "(near ties: at least half required)" if majority else ""))
    if majority and within_bound.mean() < 0.5:
        lines.append(f"{int((~within_bound).sum())} of {n} samples are beyond the tolerance + the stated output bound: "
                     "near ties flip some samples, not most (at least half must be within)")
    if passed and not agree.all():
        lines.append(f"{int((~agree).sum())} of {n} samples differ from the {against}: "
                     f"{agree.mean():.1%} agree, at least {agreement:.1%} required (--agreement)")
    rows_trace = None
    if trace:  # the samples that fail first: they are what the trace is for
        ids = np.concatenate([bad, np.flatnonzero(same & agree)])[:TRACE_SAMPLES]
        rows_trace = trace_layers(compiled, driver.Inputs(inputs.grid[ids], inputs.model[ids]), rtol)
        for r in rows_trace:
            r["samples_traced"] = int(ids.size)
            if r["first_sample"] is not None:
                r["first_sample"] = int(ids[r["first_sample"]])
        lines += format_trace(rows_trace, compiled.target, bool(same.all()))
    lines.append("PASS" if passed else "FAIL")
    return Verification(passed, n, int(same.sum()), int(agree.sum()), against, approx, stats, tgt, rows_trace, lines)


# ----------------------------------------------------------------------------- trace


def trace_graph(compiled) -> ir.Graph:
    """The IR the trace runs: the passes up to (not including) the stripping of pruned channels."""
    from .passes.strip_pruned_channels import strip_pruned_channels
    from .pipeline import PASSES, frontend

    g = frontend(compiled.model, compiled.lowering)
    for p in PASSES:
        if p is strip_pruned_channels:
            break
        g = p(g)
    return g


# ops whose output may be what a layer's output holds when they follow its ONNX nodes: constant
# elementwise arithmetic (a BatchNorm written as Mul and Add), a Relu the layer's fixed-point stream
# absorbs, the Transposes of an NHWC (tf2onnx) graph
FOLLOWED = ("Mul", "Add", "Sub", "Div", "BatchNormalization", "Relu", "Transpose")


def _layer_tensors(model, graph: ir.Graph) -> dict:
    """{IR op name: [(ONNX tensor, terminal)]} for the ops that come from ONNX nodes, the
    candidates for the layer's output: for each of its source nodes, last first, the node's output
    and the outputs of the ops that follow it one after the other (FOLLOWED, whose other operands
    are computed from constants only: a BatchNorm written as Mul and Add is folded into a layer
    without being named among its sources; a dense layer followed by an ArgMax lists the ArgMax
    last). `terminal`: the tensor comes from the last source node the original has, the layer's
    activation: a layer with binary or multi-level outputs is compared only with those (its
    accumulator's tensors hold other values)."""
    g = model.graph
    dynamic = {i.name for i in g.input} - {t.name for t in g.initializer}
    for n in g.node:  # ONNX lists nodes in topological order
        if any(t in dynamic for t in n.input):
            dynamic.update(n.output)
    produced = {name: n.output[0] for name, n in zip(node_names(g), g.node) if n.output}
    consumers = {}
    for n in g.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    out = {}
    for op in graph.ops():
        chain = []
        for s in reversed(getattr(op, "source_ops", None) or []):
            t = produced.get(s)
            terminal = not chain
            while t is not None and t not in (c for c, _ in chain):
                chain.append((t, terminal))
                follow = consumers.get(t, [])
                n = follow[0] if len(follow) == 1 else None
                ok = n is not None and n.op_type in FOLLOWED and not any(i in dynamic for i in n.input if i != t)
                t = n.output[0] if ok else None
        if chain:
            out[op.name] = chain
    return out


def _pooled_outputs(graph: ir.Graph, op) -> list:
    """`op`'s output and, where MaxPools the frontend moved after the activation follow it (max
    commutes with a monotone activation), each pooled tensor: the model's activation output has
    the pooled shape."""
    out = [op.outputs[0]]
    while True:
        readers = graph.consumers(out[-1])
        if len(readers) != 1 or not isinstance(readers[0], ir.MaxPool):
            return out
        out.append(readers[0].outputs[0])


def _nhwc(u: np.ndarray, shape: tuple) -> list:
    """The original's tensor as bnnc's (N, H, W, C): an (N, C, H, W) tensor transposed, an
    (N, H, W, C) one (tf2onnx computes between its Transposes in TensorFlow's layout) as it is, an
    (N, C) vector as (N, 1, 1, C); every reading whose shape fits (both, where the shape cannot
    tell them apart), none if none does."""
    n = u.shape[0]
    if u.ndim == 4:
        views = [u.transpose(0, 2, 3, 1), u]
    elif u.ndim == 2:
        views = [u.reshape(n, 1, 1, -1)]
    else:
        views = [u]
    return [x.astype(np.float64) for x in views if x.shape[1:] == tuple(shape)]


def _level_mismatch(v: np.ndarray, u: np.ndarray) -> np.ndarray:
    """(N,) count of elements per sample whose value breaks a one-to-one per-channel map from
    bnnc's levels v to the original's values u (N, H, W, C)."""
    eps = 1e-5 * max(1.0, float(np.abs(u).max()) if u.size else 1.0)
    bad = np.zeros(v.shape, bool)
    for c in range(v.shape[-1]):
        vc, uc = v[..., c], u[..., c]
        means = {}
        for level in np.unique(vc):
            sel = vc == level
            m = float(np.median(uc[sel]))
            bad[..., c] |= sel & (np.abs(uc - m) > eps)
            means[int(level)] = (m, int(sel.sum()))
        levels = sorted(means, key=lambda k: means[k][0])
        for a, b in zip(levels, levels[1:]):  # two levels of bnnc on one value of the original
            if abs(means[a][0] - means[b][0]) <= eps:
                smaller = a if means[a][1] <= means[b][1] else b
                bad[..., c] |= vc == smaller
    return bad.reshape(v.shape[0], -1).sum(axis=1)


def trace_layers(compiled, inputs, rtol: float) -> list:
    """Rows {layer, op, onnx, compared, differing, samples, first_sample, max_diff, tolerance} in
    layer order, for the trace described in the module docstring."""
    from .original import OriginalModel

    graph = trace_graph(compiled)
    tensors = _layer_tensors(compiled.model, graph)
    n = inputs.grid.shape[0]
    with progress.step(f"tracing {len(tensors)} layer(s) on {n} sample(s)"):
        ops = {op.name: op for op in graph.ops()}
        outputs = {name: _pooled_outputs(graph, ops[name]) for name in tensors}
        ours = {t: [] for ts in outputs.values() for t in ts}
        for i in range(0, n, reference.BATCH):
            env = reference.run_chunk(graph, inputs.grid[i: i + reference.BATCH], keep=True)
            for t in ours:
                ours[t].append(env[t])
        ours = {t: np.concatenate(v) for t, v in ours.items()}
        try:
            names = sorted({t for chain in tensors.values() for t, _ in chain})
            theirs = OriginalModel.with_outputs(compiled.model, names).run_tensors(inputs.model, names)
        except BnncError:
            raise
        except Exception as e:
            raise BnncError(f"onnxruntime cannot run the original model's layers: {str(e).splitlines()[0][:200]}") \
                from None
    rows = []
    bounds = error_bounds.end_to_end(graph)
    for op in graph.ops():
        if op.name in tensors:
            # a layer's values may differ by the error it inherits too, not only its own rounding
            bound = max(error_bounds.local_bound(op), bounds.layers[op.name].end_to_end)
            levels = _levels(op, graph.tensors[op.outputs[0]])
            # the candidate tensor the layer (or its pooled output) follows best: fewest differing
            # samples, then values
            rows.append(min((_compare(op, graph.tensors[t], ours[t], name, theirs[name], rtol, bound)
                             for name, terminal in tensors[op.name] if terminal or not levels
                             for t in outputs[op.name]),
                            key=lambda r: (not r["compared"], r["samples"], r["differing"], r["max_diff"] or 0)))
    return rows


def _levels(op, ty) -> bool:
    """Whether the trace compares `op`'s output (type `ty`) as levels, not as numbers."""
    return isinstance(ty, ir.Bits) or (isinstance(ty, ir.Ints) and ty.hi - ty.lo <= 256
                                       and not isinstance(getattr(op, "epilogue", None), ir.Requantize))


def _compare(op, ty, ours: np.ndarray, name: str, theirs: np.ndarray, rtol: float, bound: float) -> dict:
    """One trace row: bnnc's tensor (N, H, W, C) of `op` (or of its pooled output, type `ty`)
    against the original's tensor `name`; values may differ by rtol (float32) + `bound` (bnnc's
    stated error)."""
    row = {"layer": op.name, "op": type(op).__name__, "onnx": name, "compared": False,
           "differing": 0, "samples": 0, "first_sample": None, "max_diff": None, "tolerance": None}
    views = _nhwc(theirs, ty.shape)
    if not views:
        row["why"] = f"shape {theirs.shape[1:]} does not map to {ty.shape}"
        return row
    return min((_compare_view(op, ty, ours, u, dict(row), rtol, bound) for u in views),
               key=lambda r: (r["samples"], r["differing"], r["max_diff"] or 0))


def _compare_view(op, ty, ours: np.ndarray, u: np.ndarray, row: dict, rtol: float, bound: float) -> dict:
    """`_compare` against one reading `u` (N, H, W, C) of the original's tensor."""
    n = ours.shape[0]
    v = ours.astype(np.float64).reshape(u.shape)
    if _levels(op, ty):
        bad = _level_mismatch(v, u)
    else:
        d = np.abs(v * getattr(ty, "scale", 1.0) - u).reshape(n, -1).max(axis=1)
        tol = rtol * max(1.0, float(np.abs(u).max())) + bound
        row["max_diff"], row["tolerance"] = float(d.max()), tol
        bad = (d > tol).astype(int)
    row["compared"] = True
    row["samples"] = int((bad > 0).sum())
    row["differing"] = int(bad.sum())
    row["first_sample"] = int(np.flatnonzero(bad)[0]) if bad.any() else None
    return row


def format_trace(rows: list, target: str, target_same: bool) -> list:
    traced = rows[0]["samples_traced"] if rows else 0
    lines = [f"trace: reference vs original on {traced} sample(s), layer by layer (convolution and dense layers, "
             "before pruned channels are stripped)"]
    table = [("layer", "ONNX tensor", "result")]
    first = None
    for r in rows:
        if not r["compared"]:
            res = f"not compared ({r.get('why', '')})"
        elif r["samples"]:
            res = f"DIFFERS on {r['samples']} sample(s) (first: sample {r['first_sample']})"
            if first is None:
                first = r
        else:
            res = "same"
        if r["max_diff"] is not None:
            res += f", max diff {r['max_diff']:.3g} (tolerance {r['tolerance']:.3g})"
        table.append((r["layer"], one_line(r["onnx"]), res))
    w = [max(len(row[i]) for row in table) for i in range(2)]
    lines += ["  " + f"{a.ljust(w[0])}  {b.ljust(w[1])}  {c}" for a, b, c in table]
    if first is not None:
        lines.append(f"trace: the reference and the original part ways at layer {first['layer']} "
                     f"(ONNX tensor '{one_line(first['onnx'])}')")
    elif any(r["compared"] for r in rows):
        lines.append("trace: the reference follows the original through every compared layer")
    lines.append(f"trace: target {target} vs reference: "
                 + ("bit-exact at the outputs" if target_same else "the outputs differ (see above); the "
                    "targets do not expose their layers"))
    return lines
