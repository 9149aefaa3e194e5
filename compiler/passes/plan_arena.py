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

    acc: o_pad int32 accumulators at offset 0. buf: for a binary input, one gathered window
    (taps words, used at zero-padded borders); for an integer input, the input with its zero
    padding materialized, (ih + pt + pb) x (iw + pl + pr) x C elements of the kernel's type
    (int16 when the accumulator fits int16, else int32; bytes for VNNI, which also reads up to
    3 bytes past a row, hence 4 spare bytes)."""
    p = op.packed
    acc = _align(p.o_pad * 4)
    if p.in_kind == "bits":
        buf = p.taps * word_bits // 8
    else:
        ih, iw, c = src.shape
        t, l, b, r = op.pads
        buf = (ih + t + b) * (iw + l + r) * c * (2 if p.acc16 else 4) + 4
    return {"acc": 0, "buf": acc, "size": acc + _align(buf)}


def scratch_bytes(op, src, word_bits: int) -> int:
    if not isinstance(op, ir.Conv) or getattr(op, "packed", None) is None:
        return 0
    if hasattr(op.packed, "scratch_bytes"):  # issue-5 layers (passes/pack_families) size their own
        return op.packed.scratch_bytes
    return conv_scratch(op, src, word_bits)["size"]


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def plan_arena(graph: ir.Graph) -> ir.Graph:
    """Attach `arena` = {"buffers": {name: offset}, "size", "lower_bound"} to the graph."""
    out = graph.copy()
    wb = getattr(out, "word_bits", 64)
    ops = out.ops()
    bufs = {}
    for i, op in enumerate(ops):
        for t in op.outputs:
            if t != out.output:
                bufs[t] = Buffer(t, _align(tensor_bytes(out.tensors[t], wb)), i, i)
        for t in op.inputs:
            if t in bufs:
                bufs[t].last = max(bufs[t].last, i)
        s = scratch_bytes(op, out.tensors.get(op.inputs[0]), wb)
        if s:
            bufs[op.name + "_scratch"] = Buffer(op.name + "_scratch", _align(s), i, i)
    placed = []
    for b in sorted(bufs.values(), key=lambda b: (-b.size, b.first, b.name)):
        conflicts = sorted((p for p in placed if p.first <= b.last and b.first <= p.last), key=lambda p: p.offset)
        off = 0
        for p in conflicts:
            if off + b.size <= p.offset:
                break
            off = max(off, p.offset + p.size)
        b.offset = off
        placed.append(b)
    size = max((b.offset + b.size for b in placed), default=0)
    bound = max((sum(b.size for b in placed if b.first <= i <= b.last) for i in range(len(ops))), default=0)
    out.arena = {"buffers": {b.name: b.offset for b in placed}, "sizes": {b.name: b.size for b in placed},
                 "size": size, "lower_bound": bound}
    return out
