"""Place every activation and scratch buffer in one static arena (liveness + offset packing).

A buffer is live from the op that writes it to the last op that reads it (scratch buffers only
during their op). Buffers whose lifetimes overlap must not overlap in memory; placement is
greedy, largest first, each at the lowest aligned offset that clears every conflicting buffer
placed so far (TFLite Micro's strategy). The graph's input and output live in the caller's
buffers.

`lower_bound`, the liveness lower bound: the most bytes live at one step of the schedule (the
graph's op order), max over ops i of the sum of the sizes of the buffers live at i: every tensor
written at or before i and read at or after i (a residual shortcut or a concat input stays live
across its whole branch), the tensor op i writes (not the buffer of one of its inputs: no layer
computes in place but a residual Add, whose sum takes the buffer of an operand that dies there,
and a Flatten, whose vector is its input's bytes: in_place_operand), and op i's scratch. Sizes are the tensors as
stored (bit tensors in whole words per pixel, integers in their storage type, floats in 4 bytes)
rounded up to the buffer alignment (4 bytes on MCUs, 64 on hosts; on MCUs a buffer of int64 data,
a compressed-family layer's scratch or an int64 tensor, starts at a multiple of 8). No placement of these buffers
as disjoint blocks uses less: at step i they all exist at once.

On MCUs ("rows" weights) a layer's output may overlap its input (`raster_distance`): the MCU
kernels of Conv and MaxPool compute output rows in order and never read an input row again once
the window has moved below it, so the output buffer can start D bytes below its input and write
over the rows already consumed. Where that lowers the most bytes live at a step, the two buffers
are planned as one block of max(out, D + in) bytes; the arena can then be smaller than
`lower_bound`. `overlap_bound` is the same maximum with those blocks: what the placement aims at.
MCU firmware needs the arena plus its stack (the entry's frame and the deepest layer's registers
and spills, measured by the emulator: bench/bench_mcu.py --ram); .data is empty (tables are
const, in flash).
"""

from __future__ import annotations

import itertools
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
    align: int = 1  # its offset a multiple of this (8 for int64 data on MCUs, whose arena aligns to 4)
    # a block of buffers placed together (outputs over their inputs): (offset in the block, size,
    # first, last) of each; () for a buffer of its own
    parts: tuple = ()

    def extents(self) -> tuple:
        return self.parts or ((0, self.size, self.first, self.last),)

    def profile(self, steps: int) -> np.ndarray:
        """Bytes it holds at each step: a block, the extent of its members live at the step."""
        if not self.parts:
            out = np.zeros(steps, np.int64)
            out[self.first:self.last + 1] = self.size
            return out
        lo, hi = np.full(steps, np.iinfo(np.int64).max), np.zeros(steps, np.int64)
        for rel, size, first, last in self.parts:
            lo[first:last + 1] = np.minimum(lo[first:last + 1], rel)
            hi[first:last + 1] = np.maximum(hi[first:last + 1], rel + size)
        return np.where(hi > 0, hi - np.minimum(lo, hi), 0)


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
        elif p.pairs:  # kh padded input rows as int16 and 2 spare values; one position's sums,
            # then one group's 8 sums (in the scratch rather than on the stack: RAM is the bound)
            acc = (0 if p.thr is not None else p.init.shape[1] * 4) + 32
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
        return 0 if op.log else src.shape[2] * 8 + 8  # log-softmax needs only their sum
    if not isinstance(op, ir.Conv) or getattr(op, "packed", None) is None:
        return 0
    if op.packed.acc64:  # the 64-bit accumulator kernels (passes/pack_families) size their own
        return op.packed.scratch_bytes
    return conv_scratch(op, src, word_bits)["size"]


def _align(n: int, align: int = ALIGN) -> int:
    return -(-n // align) * align


def _data_alignment(ty, align: int) -> int:
    """A tensor buffer's own alignment beyond the arena's: 8 for int64 elements where the arena
    aligns to less (an int64 read at an offset of 4 mod 8 is undefined behaviour in C)."""
    return 8 if align < 8 and isinstance(ty, ir.Ints) and storage_dtype(ty) == "int64" else 1


def _alignment(layout: str) -> int:
    """Buffer alignment: a cache line for the host's vector kernels, a word for MCUs."""
    return 4 if layout == "rows" else ALIGN


def plan_arena(graph: ir.Graph) -> ir.Graph:
    """Attach `arena` = {"buffers": {name: offset}, "sizes", "size", "lower_bound", "overlap_bound",
    "align", "in_place": {sum: operand whose buffer it takes}, "overlaps": {output: [input, D]}}
    to the graph: an output in "overlaps" starts D bytes below its input (`raster_distance`).

    The numbers computed are unchanged: only where buffers live is decided (see _place: first
    fit in several orders, then a bounded local search while above the lower bound)."""
    out = graph.copy()
    wb = getattr(out, "word_bits", 64)
    layout = getattr(out, "weight_layout", "blocked")
    align = _alignment(layout)
    found, in_place = buffers(out, wb, align)
    bufs = {b.name: b for b in found}
    bound = liveness = lower_bound(found)
    size, offsets = _place(found, bound)
    blocks, members, overlaps = _overlap_blocks(out, found, wb, align) if layout == "rows" else (found, {}, {})
    if overlaps:  # kept where they make the placed arena smaller
        o_bound = lower_bound(blocks)
        o_size, o_offsets = _place(blocks, o_bound)
        if o_size < size:
            bound, size, offsets = o_bound, o_size, o_offsets
        else:
            blocks, members, overlaps = found, {}, {}
    for blk in blocks:
        for name, rel in members.get(blk.name, {blk.name: 0}).items():
            bufs[name].offset = offsets[blk.name] + rel
    placed = sorted(found, key=lambda b: (b.offset, b.name))
    where = {b.name: b.offset for b in placed}
    sizes = {b.name: b.size for b in placed}
    for t, over in in_place.items():  # a sum written over its operand: that operand's buffer
        root = over
        while root in in_place:
            root = in_place[root]
        where[t], sizes[t] = bufs[root].offset, _align(tensor_bytes(out.tensors[t], wb), align)
    out.arena = {"buffers": where, "sizes": sizes, "size": size, "lower_bound": liveness,
                 "overlap_bound": bound, "align": align, "in_place": dict(in_place), "overlaps": overlaps}
    return out


def raster_distance(op, src, dst, word_bits: int, align: int):
    """The bytes D by which `op`'s output buffer may start below its input buffer, overlapping it,
    or None where that saves nothing. For the MCU kernels of Conv and MaxPool (templates/c,
    "rows" weights): they compute output rows in order, each output row's values written while
    it is computed, and from output row oy on they read only input rows >= max(0, oy * sh - pt);
    an int16-pair layer (PackedConv.pairs) copies a row's input rows into its band before the
    row's first output, so while it writes row oy only the rows of later rows' bands are still
    to be read (`row_distance`)."""
    if not isinstance(op, (ir.Conv, ir.MaxPool)) or (isinstance(op, ir.Conv) and getattr(op, "packed", None) is None):
        return None
    (ih, _, _), (oh, _, _) = src.shape, dst.shape
    ri, ro = tensor_bytes(src, word_bits) // ih, tensor_bytes(dst, word_bits) // oh
    banded = isinstance(op, ir.Conv) and bool(op.packed.pairs)
    d = row_distance(ih, oh, ri, ro, op.stride[0], op.pads[0], banded, max(align, 8))
    in_size, out_size = _align(ri * ih, align), _align(ro * oh, align)
    return d if max(out_size, d + in_size) < out_size + in_size else None


def row_distance(ih: int, oh: int, ri: int, ro: int, sh: int, pt: int, banded: bool, align: int) -> int:
    """The least D >= 0, a multiple of `align`, such that an output of oh rows of ro bytes placed D
    bytes below an input of ih rows of ri bytes overwrites no input row still to be read. Output
    row oy occupies [O + oy * ro, O + (oy + 1) * ro); while it is written the input rows from
    r(oy) on are still to be read, r(oy) = max(0, oy * sh - pt), or for a banded kernel (the
    row's input rows copied before its outputs) r(oy) = (oy + 1) * sh - pt, none after the last
    row. With O = I - D: D = max over oy of (oy + 1) * ro - r(oy) * ri."""
    if banded:
        needs = [((oy + 1) * ro, min(ih, max(0, (oy + 1) * sh - pt))) for oy in range(oh - 1)]
    else:
        needs = [((oy + 1) * ro, max(0, oy * sh - pt)) for oy in range(oh)]
    return _align(max([end - row * ri for end, row in needs] + [0]), align)


def _overlap_blocks(graph: ir.Graph, found: list, word_bits: int, align: int) -> tuple:
    """(blocks, members, overlaps): the buffers with some outputs planned over their inputs
    (`raster_distance`) as one block each (Buffer.parts), members {block: {buffer: offset in the
    block}}, overlaps {output: [input, D]}. An output may overlap its input where the input dies
    at the op (its last reader, read once). A block is a chain (each member dies where the next
    is written), so its members meet only at their op. Runs of consecutive links are merged only
    where that lowers the most bytes live at a step (or the number of steps at that most):
    greedily, the best run first."""
    bufs = {b.name: b for b in found}
    links = []
    for i, op in enumerate(graph.ops()):
        a, b = bufs.get(op.inputs[0] if op.inputs else None), bufs.get(op.outputs[0] if op.outputs else None)
        if a is None or b is None or a.last != i or b.first != i or op.inputs.count(a.name) != 1:
            continue
        d = raster_distance(op, graph.tensors[a.name], graph.tensors[b.name], word_bits, align)
        if d is not None:
            links.append((a.name, b.name, d))
    if not links:
        return found, {}, {}
    runs = [links[j:k] for j in range(len(links)) for k in range(j + 1, len(links) + 1)
            if all(links[m][1] == links[m + 1][0] for m in range(j, k - 1))]
    steps = max(b.last for b in found) + 1
    blocks = {b.name: (b, {b.name: 0}) for b in found}
    block_of = {b.name: b.name for b in found}
    profiles = {b.name: b.profile(steps) for b in found}
    totals = sum(profiles.values())

    def merged(run: list) -> tuple:
        """(block, its members, the blocks it replaces): each link's output d below its input."""
        blk, mem = blocks[block_of[run[0][0]]]
        gone = [blk.name]
        for a, b, d in run:
            gb, mb = blocks[block_of[b]]
            gone.append(gb.name)
            shift = mem[a] - d - mb[b]  # where b's block starts, with a's block at 0
            s, t = (0, shift) if shift >= 0 else (-shift, 0)
            parts = tuple((r + s, *rest) for r, *rest in blk.extents()) + tuple((r + t, *rest) for r, *rest in gb.extents())
            blk = Buffer(gb.name, max(r + size for r, size, _, _ in parts), min(blk.first, gb.first),
                         max(blk.last, gb.last), align=max(blk.align, gb.align), parts=parts)
            mem = {**{n: r + s for n, r in mem.items()}, **{n: r + t for n, r in mb.items()}}
        return blk, mem, gone

    def key(t):
        top = int(t.max())
        return top, int(np.count_nonzero(t == top))

    overlaps = {}
    while True:
        best = None
        for run in runs:
            if any(b in overlaps for _, b, _ in run):
                continue
            blk, mem, gone = merged(run)
            profile = blk.profile(steps)
            trial = totals - sum(profiles[g] for g in gone) + profile
            if key(trial) < key(totals) and (best is None or key(trial) < best[0]):
                best = (key(trial), trial, run, blk, mem, gone, profile)
        if best is None:
            break
        _, totals, run, blk, mem, gone, profile = best
        for g in gone:
            del blocks[g], profiles[g]
        blocks[blk.name], profiles[blk.name] = (blk, mem), profile
        block_of.update({n: blk.name for n in mem})
        overlaps.update({b: [a, d] for a, b, d in run})
    return ([blk for blk, _ in blocks.values()], {blk.name: mem for blk, mem in blocks.values() if len(mem) > 1},
            overlaps)


def buffers(graph: ir.Graph, word_bits: int, align: int) -> tuple:
    """(buffers, in_place): the arena's buffers with their lifetimes (op indices in graph.ops()
    order): every tensor an op writes (but the model's output, which the caller holds, unless it
    is transposed last), from that op to its last reader, and every op's scratch during that op;
    in_place {tensor: tensor whose buffer it takes}: a residual Add writes its sum over an operand
    that dies there (see in_place_operand), one buffer for the two."""
    ops = graph.ops()
    last_read = {t: i for i, op in enumerate(ops) for t in op.inputs}
    bufs, in_place, home = {}, {}, {}
    for i, op in enumerate(ops):
        for t in op.outputs:
            if t != graph.output or graph.output_info.get("channels_first"):  # a feature map is transposed last
                size = _align(tensor_bytes(graph.tensors[t], word_bits), align)
                over = in_place_operand(graph, op, i, last_read, home)
                if over is not None:
                    in_place[t] = over
                    home[t] = home[over]
                    continue
                bufs[t] = Buffer(t, size, i, i, align=_data_alignment(graph.tensors[t], align))
                home[t] = t
        for t in list(op.inputs) + [t for t in op.outputs if t in in_place]:
            if t in home:
                b = bufs[home[t]]
                b.last = max(b.last, i)
        s = scratch_bytes(op, graph.tensors.get(op.inputs[0]), word_bits)
        if s:
            # compressed-family layers keep int64 accumulators at the start of their scratch
            family = getattr(getattr(op, "packed", None), "acc64", False)
            bufs[op.name + "_scratch"] = Buffer(op.name + "_scratch", _align(s, align), i, i,
                                                align=8 if family and align < 8 else 1)
    return list(bufs.values()), in_place


def in_place_operand(graph: ir.Graph, op, i: int, last_read: dict, home: dict):
    """The operand whose buffer op i's output may take, or None. A Flatten's vector is its input's
    bytes, where no later op reads the input, as is an Unflatten's integer map without an order. A residual
    Add's sum: an operand in the arena that no later op reads, of the sum's shape, whose elements
    are at least as wide as the sum's. The Add's loop reads element k of both operands before it
    writes element k of the sum, whose bytes then lie at or below element k's, so it never
    overwrites a value still to be read."""
    if isinstance(op, ir.Flatten) or (isinstance(op, ir.Unflatten) and op.order is None
                                      and isinstance(graph.tensors[op.inputs[0]], ir.Ints)):
        t = op.inputs[0]
        return t if t in home and last_read[t] == i else None
    if not isinstance(op, ir.Add):
        return None
    out = graph.tensors[op.outputs[0]]
    for t in op.inputs:
        ty = graph.tensors[t]
        if (t in home and last_read[t] == i and op.inputs.count(t) == 1 and isinstance(ty, ir.Ints)
                and isinstance(out, ir.Ints) and ty.shape == out.shape
                and np.dtype(storage_dtype(ty)).itemsize >= np.dtype(storage_dtype(out)).itemsize):
            return t
    return None


def lower_bound(bufs: list) -> int:
    """The most bytes of `bufs` live at one step (a block: the extent of its members live then)."""
    if not bufs:
        return 0
    steps = max(b.last for b in bufs) + 1
    return int(max(sum(b.profile(steps) for b in bufs)))


SEARCH_BUDGET = 3000  # first-fit evaluations of the local search, at most
EXHAUSTIVE = 7  # buffers: up to this many, every order of first fit is tried (7! = 5040)


def _place(bufs: list, bound: int) -> tuple:
    """(size, {name: offset}): first fit in several orders (largest first, longest lifetime
    first, by first use), then, while the arena exceeds the lower bound, a local search that
    moves one buffer to another place in the order and keeps strict improvements (with at most
    EXHAUSTIVE buffers: every order, the optimum). Deterministic."""
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
    if size > bound and len(bufs) <= EXHAUSTIVE:
        return _exhaustive(bufs, size, offsets, bound)
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


def _exhaustive(bufs: list, size: int, offsets: dict, bound: int) -> tuple:
    """The smallest arena over every order of first fit: the optimum (placed in the order of
    their offsets in an optimal arena, first fit puts each buffer at or below that offset)."""
    for order in itertools.permutations(sorted(bufs, key=lambda b: (-b.size, b.first, b.name))):
        t_offsets = _first_fit(list(order))
        t_size = max(t_offsets[b.name] + b.size for b in bufs)
        if t_size < size:
            size, offsets = t_size, t_offsets
            if size <= bound:
                break
    return size, offsets


def _first_fit(order: list) -> dict:
    """{name: offset}: each buffer at the lowest offset that clears the buffers placed before it
    whose lifetimes overlap its own (a block: member by member)."""
    placed, offsets, blocks = [], {}, False
    for b in order:
        blocks = blocks or bool(b.parts)
        if not blocks:
            conflicts = sorted((p for p in placed if p.first <= b.last and b.first <= p.last),
                               key=lambda p: offsets[p.name])
            off = 0
            for p in conflicts:
                if off + b.size <= offsets[p.name]:
                    break
                off = _align(max(off, offsets[p.name] + p.size), b.align)
        else:  # the block's offsets `off` where one of its members would meet a live placed buffer
            banned = [(offsets[p.name] + pr - br - bs, offsets[p.name] + pr + ps - br)
                      for p in placed for pr, ps, pf, pl in p.extents()
                      for br, bs, bf, bl in b.extents() if pf <= bl and bf <= pl]
            off = min(c for c in [0] + [_align(max(hi, 0), b.align) for _, hi in banned]
                      if not any(lo < c < hi for lo, hi in banned))
        offsets[b.name] = off
        placed.append(b)
    return offsets
