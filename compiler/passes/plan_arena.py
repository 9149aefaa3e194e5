"""Place every activation and scratch buffer in one static arena (liveness + offset packing).

A buffer is live from the op that writes it to the last op that reads it (scratch buffers only
during their op). Buffers whose lifetimes overlap must not overlap in memory; placement is
greedy, largest first, each at the lowest aligned offset that clears every conflicting buffer
placed so far (TFLite Micro's strategy). The graph's input and output live in the caller's
buffers. `lower_bound` is the largest total size of buffers live at the same time: no placement
can use less.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import ir
from .pack_bits import storage_dtype, words

ALIGN = 64


@dataclass
class Buffer:
    name: str
    size: int
    first: int
    last: int
    offset: int = -1


def tensor_bytes(ty, word_bits: int) -> int:
    h, w, c = ty.shape
    if isinstance(ty, ir.Bits):
        return h * w * words(c, word_bits) * word_bits // 8
    if isinstance(ty, ir.Ints):
        return h * w * c * np.dtype(storage_dtype(ty)).itemsize
    return h * w * c * 4


def conv_scratch(op, src, word_bits: int) -> dict:
    """Byte layout of a Conv's scratch buffer: {"acc", "buf", "size"}.

    Host ("blocked" weights): acc, o_pad int32 accumulators at offset 0; buf, for a binary input
    one gathered window (taps words, used at zero-padded borders), for an integer input the input
    with its zero padding materialized, (ih + pt + pb) x (iw + pl + pr) x C elements of the
    kernel's type (int16 when the accumulator fits int16, else int32; bytes for VNNI, which also
    reads up to 3 bytes past a row, hence 4 spare bytes).
    MCU ("rows" weights, RAM is scarce): acc only for real outputs (O int32); buf, one window
    gathered per output pixel (taps words, or int32 values), or for int16 inputs a band of kh
    padded input rows as int16 (bnnc_int16_mac reads the windows in place)."""
    p = op.packed
    if p.layout == "rows":
        acc = 0 if p.thr is not None else p.o * 4
        if p.in_kind == "bits":
            buf = p.taps * word_bits // 8
        elif p.pairs:  # kh padded input rows as int16 and 2 spare values; one position's sums
            acc = 0 if p.thr is not None else p.init.shape[1] * 4
            buf = (op.kernel[0] * (src.shape[1] + op.pads[1] + op.pads[3]) * src.shape[2] + 2) * 2
        else:
            buf = p.taps * (2 if p.acc16 else 4)
        align = _alignment("rows")
        return {"acc": 0, "buf": _align(acc, align), "size": _align(acc, align) + _align(buf, align)}
    acc = _align(p.o_pad * 4)
    if p.in_kind == "bits":
        buf = p.taps * word_bits // 8
    else:
        ih, iw, c = src.shape
        t, l, b, r = op.pads
        buf = (ih + t + b) * (iw + l + r) * c * (2 if p.acc16 else 4) + 4
    return {"acc": 0, "buf": acc, "size": acc + _align(buf)}


def scratch_bytes(op, src, word_bits: int) -> int:
    if isinstance(op, ir.Softmax):  # one float64 exp per channel (8 more bytes to align them to 8)
        return src.shape[2] * 8 + 8
    if not isinstance(op, ir.Conv) or getattr(op, "packed", None) is None:
        return 0
    if hasattr(op.packed, "scratch_bytes"):  # compressed-family layers (passes/pack_families) size their own
        return op.packed.scratch_bytes
    return conv_scratch(op, src, word_bits)["size"]


def _align(n: int, align: int = ALIGN) -> int:
    return -(-n // align) * align


def _alignment(layout: str) -> int:
    """Buffer alignment: a cache line for the host's vector kernels, a word for MCUs."""
    return 4 if layout == "rows" else ALIGN


def plan_arena(graph: ir.Graph) -> ir.Graph:
    """Attach `arena` = {"buffers": {name: offset}, "sizes", "size", "lower_bound"} to the graph.

    The numbers computed are unchanged: only where buffers live is decided (see _place: first
    fit in several orders, then a bounded local search while above the lower bound)."""
    out = graph.copy()
    wb = getattr(out, "word_bits", 64)
    align = _alignment(getattr(out, "weight_layout", "blocked"))
    ops = out.ops()
    bufs = {}
    for i, op in enumerate(ops):
        for t in op.outputs:
            if t != out.output or out.output_info.get("channels_first"):  # a feature map is transposed last
                bufs[t] = Buffer(t, _align(tensor_bytes(out.tensors[t], wb), align), i, i)
        for t in op.inputs:
            if t in bufs:
                bufs[t].last = max(bufs[t].last, i)
        s = scratch_bytes(op, out.tensors.get(op.inputs[0]), wb)
        if s:
            bufs[op.name + "_scratch"] = Buffer(op.name + "_scratch", _align(s, align), i, i)
    bound = max((sum(b.size for b in bufs.values() if b.first <= i <= b.last) for i in range(len(ops))), default=0)
    size, offsets = _place(list(bufs.values()), bound)
    for b in bufs.values():
        b.offset = offsets[b.name]
    placed = sorted(bufs.values(), key=lambda b: (b.offset, b.name))
    out.arena = {"buffers": {b.name: b.offset for b in placed}, "sizes": {b.name: b.size for b in placed},
                 "size": size, "lower_bound": bound, "align": align}
    return out


SEARCH_BUDGET = 3000  # first-fit evaluations of the local search, at most


def _place(bufs: list, bound: int) -> tuple:
    """(size, {name: offset}): first fit in several orders (largest first, longest lifetime
    first, by first use), then, while the arena exceeds the lower bound, a local search that
    moves one buffer to another place in the order and keeps strict improvements. Deterministic."""
    def size_of(offsets):
        return max((offsets[b.name] + b.size for b in bufs), default=0)

    best = None
    for key in ((lambda b: (-b.size, b.first, b.name)),
                (lambda b: (-(b.last - b.first), -b.size, b.first, b.name)),
                (lambda b: (b.first, -b.size, b.name))):
        order = sorted(bufs, key=key)
        offsets = _first_fit(order)
        if best is None or size_of(offsets) < best[0]:
            best = (size_of(offsets), offsets, order)
    size, offsets, order = best
    budget, improved = SEARCH_BUDGET, True
    while size > bound and improved and budget > 0:
        improved = False
        for i in range(len(order)):
            for j in range(len(order)):
                if i == j or budget <= 0:
                    continue
                trial = order[:i] + order[i + 1:]
                trial.insert(j, order[i])
                budget -= 1
                t_offsets = _first_fit(trial)
                if size_of(t_offsets) < size:
                    size, offsets, order, improved = size_of(t_offsets), t_offsets, trial, True
                    break
            if improved or size <= bound:
                break
    return size, offsets


def _first_fit(order: list) -> dict:
    """{name: offset}: each buffer at the lowest offset that clears the buffers placed before it
    whose lifetimes overlap its own."""
    placed, offsets = [], {}
    for b in order:
        conflicts = sorted((p for p in placed if p.first <= b.last and b.first <= p.last), key=lambda p: offsets[p.name])
        off = 0
        for p in conflicts:
            if off + b.size <= offsets[p.name]:
                break
            off = max(off, offsets[p.name] + p.size)
        offsets[b.name] = off
        placed.append(b)
    return offsets
