"""HLS C++ backend: a Vitis-HLS-style dataflow accelerator, C-simulated bit-exactly with g++ alone.

`bnnc compile --target hls` writes model.h / model.cpp (one top function `<name>_top(in, out)` with
`#pragma HLS DATAFLOW` between per-layer processes), bnnc_hls.h (bnnc's own arbitrary-width
integers and streams; Vitis' ap_int.h / hls_stream.h are used instead where present), a
self-checking testbench with embedded reference vectors, a Makefile for g++ C simulation,
run_hls.tcl for Vitis HLS, and the folding used (folding.json).

Every conv/dense layer becomes a window generator and a matrix-vector-threshold unit folded by
the PE x SIMD folding of compiler/folding.py, laid out by layout_folded_layers exactly as for the
Verilog backend: every weight code (binary, ternary, two-scale, multi-base, integer, expander) is a
few popcount planes, s_j = popcount((x ^ flip_j) & mask_j) on bit inputs or the masked signed sum
on integer inputs, and the unit compares s (one plane) or v = sum_j gain_j * s_j (gains from the
row's table entry, applied once per output) with per-(border class, row) thresholds. A
real-valued layer (code "int") on integer inputs instead multiplies each lane by one signed
weight, the planes' sum (matrix_unit.mac_weight_matrix, the Verilog unit's layout too), and sums
the products into v directly: integer multiply-accumulate in ap_int of the weights' and inputs'
widths, DSP-friendly. Outputs are bit outputs
(one per activation plane), multi-level outputs, the accumulator A + v for a float32 epilogue, or
its fixed-point requantization clamp((clamp(acc >> pre_shift, lo, hi) * mult + add) >> shift, qlo, qhi) in
exact 64-bit-or-narrower integers. Activations of integer streams are identity 1x1 convs on the
same unit (passes/activations_as_convs.py, as in the Verilog backend). Residual blocks are
dataflow too: a fork process copies the block's input stream into both branches, the branch
inputs are FIFOs as deep as the schedule needs (`skip_fifo_depths`), an add process sums the two
fixed-point streams exactly as ir.Add defines, and SumPool shortcuts run on the pool process. The
arithmetic is the passes'; this module only formats their tables.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jinja2
import numpy as np

from .. import folding, ir, reference
from ..errors import BnncError
from ..passes.activations_as_convs import activations_as_convs
from ..passes.layout_folded_layers import layout_folded_layers, signed_bits
from ..passes.pack_bits import pack_input
from ..resources import resource_dir
from . import matrix_unit
from .c import chain_ctx, comment_text, input_terminal_ctx, sanitize_identifier

CXX_FLAGS = ("-std=c++14", "-O2", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off")
DEFAULT_PART = "xc7z020clg400-1"  # a Zynq-7020 (PYNQ-Z1/Z2): run_hls.tcl's default, BNNC_HLS_PART overrides
DEFAULT_CLOCK_NS = 10.0
TB_SAMPLES = 4  # frames embedded in tb_data.h for the testbench's self-check
TB_SEED = 0
STREAM_DEPTH = 2  # depth of the streams between processes, beyond the residual blocks' branch inputs
VENDOR_MAX_W = 32768  # the largest AP_INT_MAX_W Vitis accepts

_IN_CTYPES = {"uint8": "uint8_t", "int8": "int8_t", "uint16": "uint16_t", "int16": "int16_t", "int32": "int32_t",
              "float32": "float"}


# ----------------------------------------------------------------------------- formatting helpers


def cxx_float(x) -> str:
    """A C++14 float literal that reads back as exactly float32(x) (C++14 has no hex floats):
    numpy's shortest digits that identify the float32, which a correctly rounding compiler maps back."""
    f = np.float32(x)
    if not np.isfinite(f):
        raise BnncError(f"a model constant is {float(f)}; bnnc cannot emit non-finite constants")
    if f == 0:
        return "-0.0f" if np.signbit(f) else "0.0f"
    s = np.format_float_scientific(f, unique=True, trim="0") if abs(f) < 1e-4 or abs(f) >= 1e7 else \
        np.format_float_positional(f, unique=True, trim="0")
    if np.float32(s) != f:  # pragma: no cover - numpy's shortest digits always round-trip
        raise AssertionError(s)
    return s + "f"


def _nested(arr: np.ndarray, item) -> str:
    """Brace initializer of an n-d array, one innermost row per line."""
    arr = np.asarray(arr)
    if arr.ndim == 1:
        parts = [item(v) for v in arr]
        lines = [", ".join(parts[i: i + 16]) for i in range(0, len(parts), 16)]
        return "{" + ",\n   ".join(lines) + "}"
    return "{" + ",\n  ".join(_nested(a, item) for a in arr) + "}"


def _hexword(bits: np.ndarray) -> str:
    """Bits (LSB first, at most 64) -> an unsigned literal."""
    v = 0
    for i, b in enumerate(np.asarray(bits).ravel()):
        if b:
            v |= 1 << i
    return f"0x{v:x}" if v else "0"


def _rows_to_words(plane: np.ndarray) -> np.ndarray:
    """(..., SIMD) bools -> (..., SIMD) unchanged if SIMD <= 64, else (..., ceil(SIMD / 64), 64) words of bits."""
    simd = plane.shape[-1]
    if simd <= 64:
        return plane
    sw = -(-simd // 64)
    padded = np.zeros(plane.shape[:-1] + (sw * 64,), bool)
    padded[..., :simd] = plane
    return padded.reshape(plane.shape[:-1] + (sw, 64))


def _by_row(table: np.ndarray, pe: int) -> np.ndarray:
    """A per-(border class, row) table (classes, MH, k) as [PE][NF][classes][k]: out[p, nf] =
    table[:, nf * PE + p], 0 for the idle rows of the last neuron fold."""
    ncls, mh, k = table.shape
    nf = -(-mh // pe)
    padded = np.zeros((ncls, nf * pe, k), table.dtype)
    padded[:, :mh] = table
    return padded.reshape(ncls, nf, pe, k).transpose(2, 1, 0, 3)


def _cxx_bool(v) -> str:
    return "true" if v else "false"


def _affine(var: str, mul: int, add: int) -> str:
    """C text of var * mul + add, without the trivial parts."""
    s = var if mul == 1 else f"{var} * {mul}"
    return s if add == 0 else f"{s} + {add}" if add > 0 else f"{s} - {-add}"


def _window_reads(geo: dict, ky: str, kx: str) -> dict:
    """Input row/column of a window tap, its buffer slot, and when it is a real (not padded) tap."""
    ry = _affine("oy", geo["sh"], -geo["pt"]) + (f" + {ky}" if ky else "")
    rx = _affine("ox", geo["sw"], -geo["pl"]) + (f" + {kx}" if kx else "")
    t, l, b, r = geo["pads4"]
    valid = [c for c, need in (("ry >= 0", t), (f"ry < {geo['ih']}", b), ("rx >= 0", l), (f"rx < {geo['iw']}", r))
             if need]
    slot = f"ry % {geo['kh']}" if geo["kh"] > 1 else "0"
    uses_ry = geo["kh"] > 1 or t or b
    return {"decl": f"const int {'ry = ' + ry + ', ' if uses_ry else ''}rx = {rx};", "valid": " && ".join(valid),
            "row_slot": slot, "rows_needed": _affine("oy", geo["sh"], geo["kh"] - geo["pt"])}


def _counters(names: list, outer, indent: int) -> str:
    """Nested counter update: names innermost first [(var, limit)], then `outer`++ (or nothing)."""
    lines = []
    pad = " " * indent
    for depth, (v, n) in enumerate(names):
        p = pad + "  " * depth
        lines.append(f"{p}if ({v} == {n - 1}) {{")
        lines.append(f"{p}  {v} = 0;")
        if depth == len(names) - 1 and outer:
            lines.append(f"{p}  {outer}++;")
    for depth in reversed(range(len(names))):
        p = pad + "  " * depth
        lines.append(f"{p}}} else {{")
        lines.append(f"{p}  {names[depth][0]}++;")
        lines.append(f"{p}}}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the accelerator


class _Builder:
    """Turns the folded IR into the template's processes, constants, streams and calls."""

    def __init__(self, graph: ir.Graph, prefix: str, target_ii: int):
        self.g = graph
        self.prefix = prefix
        self.target_ii = max(1, target_ii)  # the MVTUs' cycles per frame: what the input side should keep up with
        self.in_lanes = 1  # input elements per beat of the top-level input stream
        self.beat_structs = {}  # tensor -> struct type of its stream beat, where a beat holds several values
        self.beat_lanes = {}  # tensor -> integer values per beat of those structs
        self.pixel_beats = set()  # integer tensors whose beat is one whole pixel (conv / pool outputs)
        self.procs, self.consts, self.typedefs, self.structs = [], [], [], []
        self.streams, self.calls, self.folding_rows, self.layers = [], [], [], []
        self.widest = 1
        self.needs = {}  # layer -> N: N[m] beats of its (first) input it reads before writing its m-th output beat
        self.fifo_depths = {}  # stream -> depth, where the schedule needs more than STREAM_DEPTH

    # -- types
    def beat(self, t: str) -> str:
        """Type of one beat of the stream carrying tensor t (a pixel of bits, or one or several values)."""
        if t == self.g.input:
            return f"{self.prefix}_in_t" if self.in_lanes == 1 else f"{self.prefix}_in_beat_t"
        if t == self.g.output:
            return f"{self.prefix}_out_t"
        return self.beat_structs.get(t) or self._typedef_name(t)

    def elem(self, t: str) -> str:
        """Type of one value of tensor t (for bits: one pixel)."""
        if t == self.g.input:
            return f"{self.prefix}_in_t"
        if t == self.g.output:
            return f"{self.prefix}_out_t"
        return self._typedef_name(t)

    def _choose_in_lanes(self, iq) -> int:
        """Input elements per beat: 1 when one per cycle keeps up with the MVTUs, else the fewest lanes
        that do (at most 64) among those that keep a beat inside one pixel (bit outputs: the pixel
        assembles its bits) or one image row (integer outputs, which take several lanes only into a
        window generator; its steps are the beats it reads plus the chunks it writes, so the reads
        get what the writes leave of the budget)."""
        oty = self.g.tensors[iq.outputs[0]]
        n = int(np.prod(iq.in_shape))
        h, w, c = oty.shape
        bits = isinstance(oty, ir.Bits)
        consumer = self.g.consumers(iq.outputs[0])[0]
        if not (bits or isinstance(consumer, ir.Conv)):
            return 1
        budget = self.target_ii
        if not bits:
            out_h, out_w = self.g.tensors[consumer.outputs[0]].shape[:2]
            budget -= out_h * out_w * consumer.folded.fold.sf
        if n <= budget:
            return 1
        unit = c if bits else w * c
        divisors = [d for d in range(1, min(unit, 64) + 1) if unit % d == 0]
        fast = [d for d in divisors if -(-n // d) <= budget]
        return fast[0] if fast else divisors[-1]

    def _typedef_name(self, t: str) -> str:
        return f"{self.g.producer(t).name}_out_t"

    def _declare(self, t: str) -> None:
        ty = self.g.tensors[t]
        if isinstance(ty, ir.Bits):
            self._width(ty.shape[2])
            text = f"ap_uint<{ty.shape[2]}>"
        elif isinstance(ty, ir.Ints):
            text = f"ap_int<{signed_bits(ty.lo, ty.hi)}>"
        else:
            text = "float"
        self.typedefs.append({"name": self._typedef_name(t), "type": text})

    def _beat_struct(self, t: str, name: str, n: int, comment: str) -> None:
        self.beat_structs[t] = name
        self.beat_lanes[t] = n
        self.structs.append({"name": name, "elem": self._typedef_name(t), "n": n, "comment": comment})

    def _width(self, w: int) -> None:
        self.widest = max(self.widest, w)

    def stream(self, name: str, type_: str) -> str:
        self.streams.append({"name": name, "type": type_})
        return name

    def const(self, name, ctype, dims, init, comment):
        self.consts.append({"name": name, "ctype": ctype, "dims": dims, "init": init, "comment": comment})

    # -- graph walk
    def build(self) -> None:
        g = self.g
        ops = g.ops()
        out_producer = g.producer(g.output)
        if not (isinstance(out_producer, ir.ArgMax) or isinstance(g.tensors[g.output], ir.Reals)):
            what = (f"a QuantizeLinear's {g.output_info['dtype']} integers" if g.output_info.get("dtype") in
                    ir.OUTPUT_INT_DTYPES else type(g.tensors[g.output]).__name__)
            raise BnncError("the HLS backend needs a model whose output is real values (logits) or ArgMax/TopK "
                            f"indices; this one ends in {what} (the c, MCU and verilog targets output them)")
        iq = ops[0]
        if not isinstance(iq, ir.InputQuantize):
            raise BnncError("the HLS backend needs the model input quantizer first")
        self.in_lanes = self._choose_in_lanes(iq)
        # the top's AXI4-Stream ports are adapted to these by the axis_in / axis_out processes
        stream_of = {g.input: self.stream("in_values", self.beat(g.input)),
                     g.output: self.stream("out_values", self.beat(g.output))}
        if self.in_lanes > 1 and isinstance(g.tensors[iq.outputs[0]], ir.Ints):
            self._beat_struct(iq.outputs[0], f"{iq.name}_out_beat_t", self.in_lanes,
                              f"{iq.name}: {self.in_lanes} consecutive values per beat")
        for op in ops:
            for t in op.outputs:
                if t != g.output:
                    self._declare(t)
                    ty = g.tensors[t]
                    # integer conv outputs travel a pixel per beat (the unit completes a pixel at once),
                    # and so do pools and residual sums of them
                    if isinstance(ty, ir.Ints) and (isinstance(op, ir.Conv) or
                                                    isinstance(op, (ir.MaxPool, ir.SumPool, ir.Add)) and
                                                    all(t in self.pixel_beats for t in op.inputs)):
                        self.pixel_beats.add(t)
                        self._beat_struct(t, f"{op.name}_out_pixel_t", ty.shape[2],
                                          f"{op.name}: the {ty.shape[2]} values of one output pixel")
                    stream_of[t] = self.stream(f"{op.name}_out", self.beat(t))
        # a tensor read by two layers (a residual block's input) goes through a fork process that
        # copies each beat into one stream per reader
        read_from = {}  # (reader, tensor) -> stream
        forks = []
        for t in list(g.tensors):
            readers = g.consumers(t)
            if len(readers) == 1:
                read_from[(readers[0].name, t)] = stream_of[t]
            elif len(readers) > 1:
                forks.append(t)
                for r in readers:
                    read_from[(r.name, t)] = self.stream(f"{g.producer(t).name}_to_{r.name}", self.beat(t))
        for op in ops:
            src, dst = op.inputs[0], op.outputs[0]
            sin, sout = read_from.get((op.name, src), stream_of.get(src)), stream_of[dst]
            if isinstance(op, ir.InputQuantize):
                self._input(op, sin, sout)
            elif isinstance(op, ir.Conv):
                self._conv(op, sin, sout)
            elif isinstance(op, ir.MaxPool):
                self._maxpool(op, sin, sout)
            elif isinstance(op, ir.GlobalSumPool):
                self._gsp(op, sin, sout)
            elif isinstance(op, ir.ArgMax):
                self._argmax(op, sin, sout)
            elif isinstance(op, ir.SumPool):
                self._maxpool(op, sin, sout)
            elif isinstance(op, ir.Add):
                self._add(op, sin, read_from[(op.name, op.inputs[1])], sout)
            else:  # pragma: no cover - the IR has no other ops
                raise BnncError(f"the HLS backend cannot build {type(op).__name__} '{op.name}'")
            if dst in forks:
                self._fork(dst, sout, [read_from[(r.name, dst)] for r in g.consumers(dst)])
        self.fifo_depths = skip_fifo_depths(g, forks, self.needs,
                                            {(r.name, t): read_from[(r.name, t)] for t in forks
                                             for r in g.consumers(t)})
        for st in self.streams:
            st["depth"] = self.fifo_depths.get(st["name"], STREAM_DEPTH)

    def _comment(self, op) -> str:
        return comment_text(", ".join(getattr(op, "source_ops", []) or [op.name]))

    def _input(self, op: ir.InputQuantize, sin: str, sout: str) -> None:
        g = self.g
        oty = g.tensors[op.outputs[0]]
        p = op.packed
        n = int(np.prod(op.in_shape))
        k = self.in_lanes
        P = {"kind": "input", "name": op.name, "layer": op.name, "out_t": self.beat(op.outputs[0]),
             "elem_t": self.elem(op.outputs[0]), "n": n, "k": k, "mode": p.mode, "bits": isinstance(oty, ir.Bits),
             "c": oty.shape[2], "comment": self._comment(op), "steps": n // k, "partition": []}
        if p.mode == "thresholds":
            P["uniform"] = p.thr.size == 1
            if k > 1 and not P["uniform"]:
                P["partition"] = [f"{op.name}_thr", f"{op.name}_neg"]
            self.const(f"{op.name}_thr", "int32_t", f"[{p.thr.size}]", _nested(p.thr, str),
                       "input thresholds: bit (-1) = (q > thr) XOR neg")
            self.const(f"{op.name}_neg", "bool", f"[{p.neg.size}]", _nested(p.neg, _cxx_bool),
                       "input threshold polarity")
        elif p.mode == "float":
            consts = []
            P["chain"] = chain_ctx(op.chain.ops, "e", op.name, consts, float_fmt=cxx_float)
            for c in consts:
                self.const(c["name"], "float", f"[{c['n']}]", "{" + c["init"] + "}", "input chain constant")
                if k > 1:
                    P["partition"].append(c["name"])
            P.update(input_terminal_ctx(op.chain.terminal, float_fmt=cxx_float))
        P["uses_e"] = (p.mode == "thresholds" and not P["uniform"]) or any("[e]" in st for st in P.get("chain", []))
        self.procs.append(P)
        self.calls.append(f"{op.name}({sin}, {sout});")

    def _window_geometry(self, op, src_ty, oty) -> dict:
        ih, iw, c = src_ty.shape
        oh, ow = oty.shape[:2]
        kh, kw = op.kernel
        return {"ih": ih, "iw": iw, "c": c, "oh": oh, "ow": ow, "kh": kh, "kw": kw, "sh": op.stride[0],
                "sw": op.stride[1], "pt": op.pads[0], "pl": op.pads[1], "pads": "x".join(map(str, op.pads)),
                "pads4": tuple(op.pads)}

    @staticmethod
    def _lane_decls(geo: dict, simd: int, sf: int, mw: int, bits: bool) -> tuple:
        """Statements giving lane l of chunk sf its tap (ky, kx), channel ch, input row ry and column
        rx, and the condition under which it reads the input (else 0: padding or an idle lane)."""
        c, kh, kw = geo["c"], geo["kh"], geo["kw"]
        taps = kh * kw
        m = None
        if c % simd == 0:  # a chunk lies inside one tap
            cf = c // simd
            tap = "sf" if cf == 1 else f"sf / {cf}"
            ch = "l" if cf == 1 else f"(sf % {cf}) * {simd} + l"
            idle = False
        else:
            m = f"sf * {simd} + l" if sf > 1 else "l"
            tap, ch = f"m / {c}", (f"m % {c}" if taps > 1 else "m")
            idle = sf * simd > mw
        parts = ([f"tap = {tap}"] if taps > 1 else []) + ([f"ch = {ch}"] if bits or c > 1 else [])
        decls = []
        if m is not None and (parts or idle):
            decls.append(f"const int m = {m};")
        if parts:
            decls.append(f"const int {', '.join(parts)};")
        ky = None if kh == 1 else ("tap" if kw == 1 else f"tap / {kw}")
        kx = None if kw == 1 else ("tap" if kh == 1 else f"tap % {kw}")
        reads = _window_reads(geo, ky, kx)
        decls.append(reads["decl"])
        valid = " && ".join(([f"m < {mw}"] if idle else []) + ([reads["valid"]] if reads["valid"] else []))
        return decls, valid, reads

    def _class_tables(self, op) -> tuple:
        """(class expression, needs oy, needs ox) of the layer's border classes (layout_folded_layers)."""
        f = op.folded
        for axis, n, table in (("y", f.borders.ny, f.borders.rows), ("x", f.borders.nx, f.borders.cols)):
            if n > 1:
                self.const(f"{op.name}_{axis}cls", "uint8_t" if n < 256 else "uint16_t", f"[{table.size}]",
                           _nested(table, str), f"border class of each output {'row' if axis == 'y' else 'column'}")
        if f.borders.ny > 1 and f.borders.nx > 1:
            return f"{op.name}_ycls[oy] * {f.borders.nx} + {op.name}_xcls[ox]", True, True
        if f.borders.ny > 1:
            return f"{op.name}_ycls[oy]", True, True
        if f.borders.nx > 1:
            return f"{op.name}_xcls[ox]", False, True
        return "0", False, False

    def _requant_tables(self, op) -> dict:
        """The per-row constants of a Requantize epilogue (mult, add, acc_lo, acc_hi: the same for
        every border class in the pass's table) and the widths of its exact integer arithmetic."""
        f, name = op.folded, op.name
        rows = f.table.value[..., 1:]  # (classes, MH, 4)
        if not np.array_equal(rows, np.broadcast_to(rows[:1], rows.shape)):  # pragma: no cover - pass invariant
            raise AssertionError(f"{name}: requantization constants differ between border classes")
        mult, add, lo, hi = (rows[0, :, i] for i in range(4))
        # a = clamp(acc >> pre_shift, lo, hi) lies in [lo, hi], so |a * mult + add| <= big: the products
        # need prod_bits (the record's requant.bits, which bounds each factor over all rows, or where that
        # exceeds 64 bits the rows' own bound; holding the output bounds too); a needs clamp_bits
        big = max(max(abs(int(l_)), abs(int(h_))) * abs(int(m_)) + abs(int(a_))  # Python ints: no int64 overflow
                  for l_, h_, m_, a_ in zip(lo, hi, mult, add))
        row_bits = max(signed_bits(-big, big), signed_bits(f.epilogue.requant.lo, f.epilogue.requant.hi))
        prod_bits = max(f.epilogue.requant.bits, row_bits) if f.epilogue.requant.bits <= 64 else row_bits
        clamp_bits = max(f.epilogue.acc_bits, signed_bits(int(lo.min()), int(hi.max())))
        if max(prod_bits, clamp_bits) > 64:
            raise BnncError(f"layer '{self._comment(op)}': its fixed-point requantization needs "
                            f"{max(prod_bits, clamp_bits)}-bit products (the HLS backend computes in at most 64)")
        by_row = _by_row(rows[:1], f.fold.pe)[:, :, 0]  # (PE, NF, 4)
        what = {"mult": "multiplier", "add": "added offset (rounding included)",
                "acc_lo": "lower accumulator clamp", "acc_hi": "upper accumulator clamp"}
        for i, (key, text) in enumerate(what.items()):
            column = by_row[..., i]
            self.const(f"{name}_{key}", f"ap_int<{signed_bits(int(column.min()), int(column.max()))}>",
                       f"[{f.fold.pe}][{f.fold.nf}]", _nested(column, str),
                       f"{name}: requantization {text} of output o = nf * {f.fold.pe} + p, [p][nf]")
        # an arithmetic shift by prod_bits - 1 or more already gives the sign (0 or -1)
        rq = f.epilogue.requant
        return {"requant_shift": min(rq.shift, prod_bits - 1), "out_min": rq.lo, "out_max": rq.hi,
                "pre_shift": rq.pre_shift,
                "product_t": f"ap_int<{prod_bits}>", "clamp_t": f"ap_int<{clamp_bits}>"}

    def _conv(self, op: ir.Conv, sin: str, sout: str) -> None:
        g = self.g
        src_ty, oty = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
        f = op.folded
        bits = isinstance(src_ty, ir.Bits)
        geo = self._window_geometry(op, src_ty, oty)
        name = op.name
        pixels = geo["oh"] * geo["ow"]
        unit_cycles = matrix_unit.cycles(f, pixels)
        idle_lanes, idle_rows = f.fold.idle_lanes, f.fold.idle_rows
        in_t = self.elem(op.inputs[0])
        in_lanes = 1 if bits else self.beat_lanes.get(op.inputs[0], 1)
        self._width(f.fold.simd)
        if bits:
            lanes_t = f"ap_uint<{f.fold.simd}>"
        else:
            lanes_t = f"{name}_lanes_t"
            self.structs.append({"name": lanes_t, "elem": in_t, "n": f.fold.simd,
                                 "comment": f"{name}: one chunk of {f.fold.simd} window elements"})
        lanes = self.stream(f"{name}_lanes", lanes_t)
        lane_decls, lane_valid, reads = self._lane_decls(geo, f.fold.simd, f.fold.sf, f.fold.mw, bits)
        W = {"kind": "window", "name": f"{name}_window", "layer": name, "bits": bits, "in_t": in_t,
             "in_beat_t": self.beat(op.inputs[0]), "in_lanes": in_lanes,
             "in_struct": op.inputs[0] in self.beat_structs, "lanes_t": lanes_t, "simd": f.fold.simd, "sf": f.fold.sf, "mw": f.fold.mw, "idle_lanes": idle_lanes,
             "lane_decls": lane_decls, "valid": lane_valid, "row_slot": reads["row_slot"],
             "rows_needed": reads["rows_needed"],
             "steps": geo["ih"] * geo["iw"] * (1 if bits else geo["c"]) // in_lanes + pixels * f.fold.sf,
             "advance": _counters([("sf", f.fold.sf), ("ox", geo["ow"])], "oy", 6), **geo}
        self.procs.append(W)
        self.calls.append(f"{name}_window({sin}, {lanes});")
        window_needs = _row_window_needs(geo, geo["iw"] * (1 if bits else geo["c"]) // in_lanes, geo["ow"] * f.fold.sf)

        # weights: a real-valued layer on integer inputs multiplies each lane by one signed weight
        # (the unit's MAC mode, DSP-friendly); otherwise every bit array of the popcount
        # planes as SIMD-bit rows [PE][NF * SF] (or [PE][NF * SF][64-lane word] beyond 64 lanes)
        mac = f.mac is not None
        wide = f.fold.simd > 64 and not mac
        stored = {}
        mac_bits = 0
        if mac:
            w, mac_bits = f.mac.weights, f.mac.bits
            if f.fold.in_bits + mac_bits > 64:
                raise BnncError(f"layer '{self._comment(op)}': its {mac_bits}-bit weights times {f.fold.in_bits}-bit "
                                "inputs need products wider than 64 bits (--weight-bits B narrows the weights)")
            self.const(f"{name}_w", f"ap_int<{mac_bits}>", f"[{f.fold.pe}][{f.fold.nf * f.fold.sf}][{f.fold.simd}]",
                       _nested(w.transpose(1, 0, 2), str),
                       f"{name}: signed weight of each row and lane (the popcount planes' sum), "
                       f"[PE][neuron fold * {f.fold.sf} + synapse fold][lane]")
        for i, (j, which) in enumerate([] if mac else f.weights.arrays):
            array = f"{name}_{'flip' if which == 'b' else 'mask'}{j}"
            rows = _rows_to_words(f.weights.bits[:, i].transpose(1, 0, 2))  # (PE, NF * SF, SIMD)
            dims = f"[{f.fold.pe}][{f.fold.nf * f.fold.sf}]" + (f"[{rows.shape[2]}]" if wide else "")
            what = "XOR bits (the lane's input is negated)" if which == "b" else "lane mask (the lane counts)"
            self.const(array, f"bnnc::rom_bits_t<{min(f.fold.simd, 64)}>", dims, _nested_bits(rows),
                       f"{name}: popcount plane {j} ({f.weights.kinds[j].replace('_', ' ')}), {what}, "
                       f"[PE][neuron fold * {f.fold.sf} + synapse fold]{'[64-lane word]' if wide else ''}, "
                       "bit l = lane l")
            stored[(j, which)] = array
        planes = [{"j": j, "kind": kind, "flip": stored.get((j, "b")), "mask": stored.get((j, "m")),
                   "shared": kind == "ones"} for j, kind in enumerate(f.weights.kinds)]
        cls_expr, need_oy, need_ox = self._class_tables(op)
        for what, width in (("plane sum", f.sums.plane_bits), ("weighted plane sum", f.sums.weighted_bits),
                            ("accumulator", f.epilogue.acc_bits)):
            if width > 64:
                raise BnncError(f"layer '{self._comment(op)}': its {what} needs {width} bits (more than 64)")

        # per-(row, border class) tables, rows folded as o = nf * PE + p (idle rows hold 0)
        k = max(f.epilogue.thresholds, 1)
        tables = f"[{f.fold.pe}][{f.fold.nf}][{f.borders.classes}]"
        value = _by_row(f.table.value, f.fold.pe)  # (PE, NF, classes, k)
        live = False
        rq = {}
        if f.epilogue.mode in ("acc", "requant"):
            offset = value[..., 0]
            self.const(f"{name}_offset", f"ap_int<{signed_bits(int(offset.min()), int(offset.max()))}>", tables,
                       _nested(offset, str),
                       f"{name}: accumulator offset A of output o = nf * {f.fold.pe} + p, [p][nf][border class]")
            live = not f.sums.gains_in_table and not np.all(f.table.flag != 0)
            if live:
                self.const(f"{name}_live", "bool", tables, _nested(_by_row(f.table.flag, f.fold.pe)[..., 0], _cxx_bool),
                           f"{name}: false for rows without weights (their accumulator is the offset)")
            if f.epilogue.mode == "requant":
                rq = self._requant_tables(op)
        else:
            compared = "v = sum_j gain_j * s_j" if f.sums.gains_in_table else "the plane sum s"
            per_row = "[level]" if f.epilogue.mode == "levels" else "[activation plane]" if k > 1 else ""
            self.const(f"{name}_thr", f"ap_int<{f.table.value_bits}>", tables + (f"[{k}]" if k > 1 else ""),
                       _nested(value if k > 1 else value[..., 0], str),
                       f"{name}: thresholds on {compared} of output o = nf * {f.fold.pe} + p, [p][nf][border class]"
                       + per_row)
            flag = _by_row(f.table.flag, f.fold.pe)
            self.const(f"{name}_flag", "bool", tables + (f"[{f.table.flags}]" if f.table.flags > 1 else ""),
                       _nested(flag if f.table.flags > 1 else flag[..., 0], _cxx_bool),
                       f"{name}: " + ("a level counts iff (compared > thr) != flag" if f.epilogue.mode == "levels" else
                                      "output bit (1 = -1) = (compared > thr) != flag"))
        if f.sums.gains_in_table and not mac:
            gains = np.zeros((f.weights.gains.shape[0], f.fold.nf * f.fold.pe), np.int64)
            gains[:, : f.fold.mh] = f.weights.gains
            self.const(f"{name}_gain", f"ap_int<{f.weights.gain_bits}>",
                       f"[{f.fold.pe}][{f.fold.nf}][{f.weights.planes}]",
                       _nested(gains.reshape(-1, f.fold.nf, f.fold.pe).transpose(2, 1, 0), str),
                       f"{name}: gain of each popcount plane for output o = nf * {f.fold.pe} + p, [p][nf][plane]")

        names = [("sf", f.fold.sf), ("nf", f.fold.nf)] + ([("ox", geo["ow"])] if need_ox else [])
        outer = "oy" if need_oy else None
        decl = "int sf = 0, nf = 0" + (", ox = 0" if need_ox else "") + (", oy = 0" if need_oy else "") + ";"
        acc_t = f"ap_int<{f.epilogue.acc_bits}>"
        M = {"kind": "mvtu", "name": f"{name}_mvtu", "layer": name, "bits": bits, "lanes_t": lanes_t,
             "wrow_t": f"ap_uint<{f.fold.simd}>", "wide_words": -(-f.fold.simd // 64) if wide else 0,
             "pixels": pixels, "cycles": unit_cycles, "steps": unit_cycles,
             "planes": planes, "row_planes": [pl for pl in planes if not pl["shared"]],
             "weight_rows": [{"local": f"{'flip' if which == 'b' else 'mask'}{j}", "array": array}
                             for (j, which), array in stored.items()],
             **matrix_unit.hls_context(f), "live": live, "cls_expr": cls_expr, "counters": decl,
             "advance": _counters(names, outer, 4), "elem_t": self.elem(op.outputs[0]), **rq}
        # the unit reads a pixel's SF chunks, then writes its output beat (its accumulators per neuron fold)
        m = np.arange(pixels * (f.fold.nf if f.epilogue.mode == "acc" else 1) + 1)
        self.needs[name] = window_needs[(-(-m // f.fold.nf) if f.epilogue.mode == "acc" else m) * f.fold.sf]
        if f.epilogue.mode != "acc":
            M["out_t"] = self.beat(op.outputs[0])
            self.procs.append(M)
            self.calls.append(f"{name}_mvtu({lanes}, {sout});")
        else:
            acc_struct = f"{name}_acc_t"
            self.structs.append({"name": acc_struct, "elem": acc_t, "n": f.fold.pe,
                                 "comment": f"{name}: the accumulators of one neuron fold"})
            accs = self.stream(f"{name}_acc", acc_struct)
            M["out_t"] = acc_struct
            self.procs.append(M)
            self.calls.append(f"{name}_mvtu({lanes}, {accs});")
            consts = []
            chain = chain_ctx(op.epilogue.ops, "o", name, consts, float_fmt=cxx_float)
            for c in consts:
                self.const(c["name"], "float", f"[{c['n']}]", "{" + c["init"] + "}",
                           f"{name}: epilogue constant")
            self.procs.append({
                "kind": "epilogue", "name": f"{name}_epilogue", "layer": name, "in_t": acc_struct,
                "out_t": self.beat(op.outputs[0]), "pe": f.fold.pe, "nf": f.fold.nf, "mh": f.fold.mh,
                "idle_rows": idle_rows,
                "wide_acc": f.epilogue.acc_bits > 32, "chain": chain, "counters": "int p = 0, nf = 0;",
                "steps": pixels * f.fold.nf * f.fold.pe, "uses_o": idle_rows or any("[o]" in st for st in chain),
                "advance": _counters([("p", f.fold.pe), ("nf", f.fold.nf)], None, 4)})
            self.calls.append(f"{name}_epilogue({accs}, {sout});")
        self.folding_rows.append(f"{name}: {f.fold.mh} x {f.fold.mw}, {pixels} pixel{'s' if pixels > 1 else ''}, "
                                 f"PE={f.fold.pe} SIMD={f.fold.simd} -> {unit_cycles} cycles")
        fold = f.fold
        self.layers.append({"name": name, "source": self._comment(op), "mh": fold.mh, "mw": fold.mw, "pixels": pixels,
                            "pe": fold.pe, "simd": fold.simd, "nf": fold.nf, "sf": fold.sf,
                            "cycles": unit_cycles, "planes": list(f.weights.kinds),
                            "mode": f.epilogue.mode, "act_planes": f.epilogue.act_planes,
                            "weight_bits": (mac_bits if mac else len(f.weights.arrays)) * fold.pe * fold.nf * fold.sf
                            * fold.simd,
                            "mac_weight_bits": mac_bits, "input_bits": f.fold.in_bits,
                            "node": (getattr(op, "source_ops", None) or [op.name])[0],
                            "pre_activation_error": float(np.max(op.acc_error))
                            if mac and op.acc_error is not None else None,
                            # a MAC unit's weights hold the gains: its table entries do not
                            "table_bits": f.fold.pe * f.fold.nf * f.borders.classes
                            * (f.entry_bits - (f.weights.planes * f.weights.gain_bits if mac else 0)),
                            "binary_inputs": bits})

    def _maxpool(self, op, sin: str, sout: str) -> None:
        """A MaxPool, or a SumPool (no padding: the window sum of integers, in the output's type)."""
        src_ty, oty = self.g.tensors[op.inputs[0]], self.g.tensors[op.outputs[0]]
        if isinstance(op, ir.SumPool):
            op = _Unpadded(op)
        geo = self._window_geometry(op, src_ty, oty)
        bits = isinstance(src_ty, ir.Bits)
        pixel = bits or op.inputs[0] in self.pixel_beats  # one beat per pixel, else one per value
        names = [("ox", geo["ow"])] if pixel else [("oc", geo["c"]), ("ox", geo["ow"])]
        per_pixel = 1 if pixel else geo["c"]
        reads = _window_reads(geo, "ky", "kx")
        self.procs.append({"kind": "maxpool", "name": op.name, "bits": bits, "pixel": pixel,
                           "sum": isinstance(op, _Unpadded), "elem_t": self.elem(op.outputs[0]),
                           "in_t": self.beat(op.inputs[0]), **reads, "in_beat_t": self.beat(op.inputs[0]),
                           "out_t": self.beat(op.outputs[0]), "lo": getattr(oty, "lo", 0),
                           "steps": (geo["ih"] * geo["iw"] + geo["oh"] * geo["ow"]) * per_pixel,
                           "advance": _counters(names, "oy", 6), **geo})
        self.calls.append(f"{op.name}({sin}, {sout});")
        self.needs[op.name] = _row_window_needs(geo, geo["iw"] * per_pixel, geo["ow"] * per_pixel)

    def _add(self, op: ir.Add, sin_a: str, sin_b: str, sout: str) -> None:
        """The residual sum: one beat of each operand in, one out."""
        a_ty, b_ty = (self.g.tensors[t] for t in op.inputs)
        pixel = [t in self.pixel_beats for t in op.inputs]
        if not all(isinstance(t, ir.Ints) for t in (a_ty, b_ty)) or pixel[0] != pixel[1]:
            raise BnncError(f"layer '{self._comment(op)}': the HLS backend adds two integer streams of the same beat "
                            "layout only; use --target c")
        sa, sb = op.shifts
        half = (1 << (op.round_shift - 1)) if op.round_shift else 0
        lo = (a_ty.lo << sa) + (b_ty.lo << sb) + half
        hi = (a_ty.hi << sa) + (b_ty.hi << sb) + half
        sum_bits = max(signed_bits(lo, hi), signed_bits(op.lo, op.hi))
        if sum_bits > 64:
            raise BnncError(f"layer '{self._comment(op)}': its residual sum needs {sum_bits} bits (more than 64)")
        h, w, c = self.g.tensors[op.outputs[0]].shape
        n = h * w * (1 if pixel[0] else c)
        self.procs.append({"kind": "add", "name": op.name, "pixel": pixel[0], "c": c, "n": n, "steps": n,
                           "a_t": self.beat(op.inputs[0]), "b_t": self.beat(op.inputs[1]),
                           "out_t": self.beat(op.outputs[0]), "elem_t": self.elem(op.outputs[0]),
                           "sum_t": f"ap_int<{sum_bits}>", "mul_a": 1 << sa, "mul_b": 1 << sb, "half": half,
                           "round_shift": op.round_shift, "lo": op.lo, "hi": op.hi,
                           "comment": self._comment(op)})
        self.calls.append(f"{op.name}({sin_a}, {sin_b}, {sout});")
        self.needs[op.name] = np.arange(n + 1)

    def _fork(self, t: str, sin: str, souts: list) -> None:
        """Copies every beat of tensor t into one stream per reader."""
        n = self.beats(t)
        name = f"{self.g.producer(t).name}_fork"
        self.procs.append({"kind": "fork", "name": name, "beat_t": self.beat(t), "outs": souts, "n": n, "steps": n})
        self.calls.append(f"{name}({sin}, {', '.join(souts)});")

    def beats(self, t: str) -> int:
        """Beats per frame of the stream carrying tensor t (not the top-level input)."""
        h, w, c = self.g.tensors[t].shape
        if isinstance(self.g.tensors[t], ir.Bits) or t in self.pixel_beats:
            return h * w
        return h * w * c // self.beat_lanes.get(t, 1)

    def _gsp(self, op: ir.GlobalSumPool, sin: str, sout: str) -> None:
        src_ty = self.g.tensors[op.inputs[0]]
        h, w, c = src_ty.shape
        bits = isinstance(src_ty, ir.Bits)
        pixel = bits or op.inputs[0] in self.pixel_beats
        sum_bits = signed_bits(0, h * w) if bits else signed_bits(h * w * src_ty.lo, h * w * src_ty.hi)
        self.procs.append({"kind": "gsp", "name": op.name, "bits": bits, "pixel": pixel, "hw": h * w, "c": c,
                           "in_t": self.beat(op.inputs[0]), "out_t": self.beat(op.outputs[0]),
                           "sum_t": f"ap_int<{sum_bits}>", "steps": h * w * (1 if pixel else c) + c})
        self.calls.append(f"{op.name}({sin}, {sout});")
        self.needs[op.name] = np.minimum(np.arange(c + 1), 1) * h * w * (1 if pixel else c)

    def _argmax(self, op: ir.ArgMax, sin: str, sout: str) -> None:
        src_ty = self.g.tensors[op.inputs[0]]
        if not isinstance(src_ty, ir.Reals):
            raise BnncError(f"ArgMax '{op.name}' on {type(src_ty).__name__} is not supported by the HLS backend")
        n = src_ty.shape[2] * src_ty.shape[0] * src_ty.shape[1]
        self.procs.append({"kind": "argmax", "name": op.name, "n": n, "k": op.k, "in_t": self.beat(op.inputs[0]),
                           "out_t": self.beat(op.outputs[0]), "steps": n * (1 + op.k)})
        self.calls.append(f"{op.name}({sin}, {sout});")


class _Unpadded:
    """A SumPool seen as a pool with pads (0, 0, 0, 0), for the pool process."""

    def __init__(self, op: ir.SumPool):
        self.name, self.inputs, self.outputs = op.name, op.inputs, op.outputs
        self.kernel, self.stride, self.pads = op.kernel, op.stride, (0, 0, 0, 0)


def _row_window_needs(geo: dict, row_beats: int, row_writes: int) -> np.ndarray:
    """N[m]: input beats a row-buffered window process (window generator, pool) has read when it
    writes its m-th output beat. It reads input rows only until it holds the rows output row oy
    needs (oy * SH + KH - PT of them, at most IH), then writes that row's `row_writes` beats."""
    m = np.arange(geo["oh"] * row_writes + 1)
    oy = np.maximum(m - 1, 0) // row_writes
    rows = np.minimum(oy * geo["sh"] + geo["kh"] - geo["pt"], geo["ih"])
    return np.where(m > 0, rows * row_beats, 0)


def _branch(g: ir.Graph, reader, t: str) -> tuple:
    """(the layers from `reader` of tensor t to the Add that joins the branch, that Add): a branch
    of a residual block is a chain of single-reader layers."""
    path = []
    op = reader
    while not isinstance(op, ir.Add):
        path.append(op)
        nxt = g.consumers(op.outputs[0])
        if len(nxt) != 1 or len(op.inputs) != 1:
            raise BnncError(f"tensor '{t}' feeds several layers that do not join in one residual Add through chains "
                            "of layers; the HLS backend builds residual blocks of that form only; use --target c")
        op = nxt[0]
    return path, op


def skip_fifo_depths(g: ir.Graph, forks: list, needs: dict, streams: dict) -> dict:
    """Depth of each stream from a fork to a branch of a residual block, from the schedule.

    For a branch X of layers x_1 .. x_k from the fork to the Add, N_X(m) = N_x1(N_x2(...N_xk(m)))
    is the number of beats of the forked tensor X must have read for the Add to hold X's m-th
    beat (each N_x from the process's own read/write order, `_Builder.needs`; N_X(m) = m on the
    plain skip path, k = 0). The fork writes each beat to its first reader, then its second. While
    the Add waits for its m-th pair (m - 1 taken), the other branch still needs beat N_other(m) - 1:
    to write it, the fork has written N_other(m) beats into X if X is written first, else
    N_other(m) - 1. X has taken N_X(m) of them if it has layers (they can always advance to
    X's m-th output, which has room in the stream to the Add), else the Add's m - 1. The rest wait
    in X's input stream, so a depth of max(STREAM_DEPTH, max_m of that rest) lets the Add always go
    on, whatever the processes' relative speeds and the back-pressure on the output: no deadlock.
    On the skip path that is max_m N_main(m) - m, the main branch's read-ahead, and one beat less
    deadlocks. C simulation runs the processes one after the other on unbounded streams and cannot
    show this; the depth is what concurrent execution needs."""
    depths = {}
    for t in forks:
        readers = g.consumers(t)
        if len(readers) != 2:
            raise BnncError(f"tensor '{t}' feeds {len(readers)} layers; the HLS backend forks a stream into two "
                            "branches of a residual block only; use --target c")
        ends, curves, taken = [], [], []
        for r in readers:
            path, add = _branch(g, r, t)
            ends.append(add)
            m = np.arange(1, needs[add.name].size)
            n = m
            for op in reversed(path):
                if op.name not in needs:  # pragma: no cover - processes in a branch all record their needs
                    raise AssertionError(op.name)
                n = needs[op.name][n]
            curves.append(n)
            taken.append(n if path else m - 1)
        if ends[0] is not ends[1]:
            raise BnncError(f"the two branches from tensor '{t}' end in different Adds ('{ends[0].name}', "
                            f"'{ends[1].name}'); the HLS backend builds residual blocks only; use --target c")
        for i, r in enumerate(readers):
            written = curves[1 - i] - (1 if i == 1 else 0)
            depths[streams[(r.name, t)]] = max(STREAM_DEPTH, int((written - taken[i]).max()))
    return depths


def _nested_bits(rows: np.ndarray) -> str:
    """Brace initializer of bit rows (..., bits) as unsigned words, one per innermost element."""
    flat = rows.reshape(-1, rows.shape[-1])
    words = np.array([_hexword(r) for r in flat], dtype=object).reshape(rows.shape[:-1])
    return _nested(words, str)


_ELEMENT_BITS = {"uint8": 8, "int8": 8, "uint16": 16, "int16": 16, "int32": 32, "float32": 32}


def stream_layouts(g: ir.Graph, flat: bool) -> tuple:
    """(input, output) AXI4-Stream layouts of the top, by the Verilog target's rule
    (verilog.stream_layout, docs/axi-stream.md): elements of EB bits, BE = min(C, 64 // EB) of them per
    beat of TW = 8 * ceil(BE * EB / 8) bits, element j in tdata[j*EB +: EB], a pixel in
    ceil(C / BE) beats, pixels in row-major order, TLAST on the last beat of a frame. The input is
    the model input on its grid ((H, W, C) pixels; one pixel of every element when the input is
    not an image or, as the Verilog target streams it, when the first layer is dense over the
    whole input); the output is one pixel of the model output's elements (float32 logits as
    their IEEE bits, or int32 indices)."""
    from .verilog import stream_layout

    in_info, out_info = g.input_info, g.output_info
    iq = next(op for op in g.ops() if isinstance(op, ir.InputQuantize))
    n = int(np.prod(iq.in_shape))
    first = g.consumers(iq.outputs[0])[0]
    qh, qw = g.tensors[iq.outputs[0]].shape[:2]
    dense_first = isinstance(first, ir.Conv) and tuple(first.kernel) == (qh, qw) and not any(first.pads) \
        and qh * qw > 1
    c, h, w = iq.in_shape if not (flat or dense_first) else (n, 1, 1)
    shape = type("Shape", (), {"shape": (h, w, c)})
    in_axis = stream_layout(shape, "in", _ELEMENT_BITS[in_info["dtype"]])
    out_axis = stream_layout(type("Shape", (), {"shape": (1, 1, out_info["elements"])}), "out", 32)
    out_dtype = "float32" if out_info["dtype"] == "float32" else "int32"  # indices and QuantizeLinear integers travel as int32
    for axis, dtype in ((in_axis, in_info["dtype"]), (out_axis, out_dtype)):
        what = "float32 values (IEEE bits)" if dtype == "float32" else f"{dtype} values"
        h, w, c = axis["shape"]
        axis["desc"] = f"{h}x{w}x{c} {what}, {axis['be']} per {axis['tw']}-bit beat, {axis['beats']} beats per frame"
    return in_axis, out_axis


def _axis_in_steps(axis: dict, k: int) -> int:
    """Steps of the axis_in process: each writes k held elements if it has them, then reads a
    beat (a pixel's last beat holding what is left of it) if it holds fewer than k."""
    held = beat = written = steps = 0
    total = axis["pixels"] * axis["c"] // k
    last_part = axis["c"] - (axis["beats_per_pixel"] - 1) * axis["be"]
    while written < total:
        steps += 1
        if held >= k:
            held -= k
            written += 1
        if held < k and beat < axis["beats"]:
            held += last_part if beat % axis["beats_per_pixel"] == axis["beats_per_pixel"] - 1 else axis["be"]
            beat += 1
    return steps


def backend_graph(graph: ir.Graph, foldings: list) -> ir.Graph:
    """The lowered IR with what the HLS processes read: every Conv laid out for its PE x SIMD unit
    (layout_folded_layers, the layout the Verilog backend shares), and the input quantizer's
    comparison tables (pack_bits.pack_input)."""
    g = layout_folded_layers(graph, foldings)
    for op in g.ops():
        if isinstance(op, ir.InputQuantize):
            op.packed = pack_input(op, g.tensors[op.outputs[0]])
    return g


def foldings_for(graph: ir.Graph, opts) -> list:
    """The user's folding (--folding), the cheapest meeting --target-cycles, or folding.py's default,
    one per layer of `folding.foldable_layers(activations_as_convs(graph))`: every Activation is a
    matrix unit too."""
    check_supported(graph)
    return folding.resolve(activations_as_convs(graph), getattr(opts, "folding", None),
                           getattr(opts, "target_cycles", None))


def _testbench_data(graph: ir.Graph, prefix: str) -> dict:
    """Input frames on the grid and the reference outputs for them, as C++ initializers."""
    from .. import driver

    try:
        x = driver.random_samples(graph, TB_SAMPLES, TB_SEED)
    except BnncError:
        return {"tb_samples": 0}
    grid = driver.prepare_inputs(graph, x).grid
    y = np.asarray(reference.run(graph, grid)).reshape(TB_SAMPLES, -1)
    fmt_in = cxx_float if graph.input_info["dtype"] == "float32" else (lambda v: str(int(v)))
    fmt_out = cxx_float if graph.output_info["dtype"] == "float32" else (lambda v: str(int(v)))
    return {"tb_samples": TB_SAMPLES, "tb_input": _nested(grid.reshape(TB_SAMPLES, -1), fmt_in),
            "tb_expected": _nested(y, fmt_out)}


def check_supported(graph: ir.Graph) -> None:
    """Refuse, in one line naming the layer, what the HLS processes do not implement: Concat,
    Softmax, Sigmoid, Gelu, Mul of streams, Flatten (per-element ops on flattened features), Unflatten,
    Gather, padded SumPools, Activations of non-integer tensors, and convs the matrix unit does not implement
    (matrix_unit.supports). Activations of integer streams run as identity 1x1 convs
    (passes/activations_as_convs.py)."""
    for op in graph.ops():
        where = comment_text((getattr(op, "source_ops", None) or [op.name])[0])
        if isinstance(op, (ir.Concat, ir.Softmax, ir.Sigmoid, ir.Gelu, ir.Mul, ir.Flatten, ir.Unflatten, ir.Gather)):
            raise BnncError(f"layer '{where}': the HLS backend does not implement {type(op).__name__} ops (it builds "
                            "chains and residual blocks of conv/dense, activation, pool and Add layers); "
                            "use --target c")
        if isinstance(op, ir.SumPool) and op.border_divisors:
            raise BnncError(f"layer '{where}': the HLS backend runs average pools without padding only (this one's "
                            "divisor changes near the border); use --target c")
        if isinstance(op, ir.Activation) and not isinstance(graph.tensors[op.inputs[0]], ir.Ints):
            raise BnncError(f"layer '{where}': the HLS backend runs activations of integer tensors only, not of "
                            f"{type(graph.tensors[op.inputs[0]]).__name__}; use --target c")
        if isinstance(op, ir.Conv):
            reason = matrix_unit.supports(op)
            if reason:
                raise BnncError(f"layer '{where}': {reason} (the HLS backend); use --target c")


def build_context(graph: ir.Graph, foldings: list, name: str = "bnnc") -> tuple:
    """(template context, per-layer figures) of the accelerator for the lowered `graph`."""
    prefix = sanitize_identifier(name)
    check_supported(graph)
    g = backend_graph(activations_as_convs(graph), foldings)
    b = _Builder(g, prefix, folding.analytic_ii(foldings))
    b.build()
    if b.widest > VENDOR_MAX_W:
        raise BnncError(f"the model needs {b.widest}-bit stream words; Vitis HLS supports at most {VENDOR_MAX_W}")
    in_info, out_info = graph.input_info, graph.output_info
    iq = next(op for op in g.ops() if isinstance(op, ir.InputQuantize))
    if iq.channels_last:
        raise BnncError("an NHWC model input (read channel-last) is not supported by the HLS backend yet; "
                        "use --target c")
    flat = bool(getattr(iq, "flat", False)) or len(iq.in_shape) != 3
    c, h, w = (1, 1, 1) if flat else iq.in_shape
    in_axis, out_axis = stream_layouts(g, flat)
    in_axis["ctype"], out_axis["ctype"] = _IN_CTYPES[in_info["dtype"]], \
        "float" if out_info["dtype"] == "float32" else "int32_t"
    in_stream_t = f"{prefix}_in_t" if b.in_lanes == 1 else f"{prefix}_in_beat_t"
    b.procs.insert(0, {"kind": "axis_in", "name": f"{prefix}_axis_in", "axis": in_axis, "k": b.in_lanes,
                       "n": int(np.prod(iq.in_shape)), "out_t": in_stream_t,
                       "steps": _axis_in_steps(in_axis, b.in_lanes)})
    b.calls.insert(0, f"{prefix}_axis_in(in, in_values, frame_error);")
    b.procs.append({"kind": "axis_out", "name": f"{prefix}_axis_out", "axis": out_axis,
                    "n": out_info["elements"], "steps": out_info["elements"]})
    b.calls.append(f"{prefix}_axis_out(out_values, out);")
    slowest = max(b.procs, key=lambda P: P["steps"])
    ctx = {
        "prefix": prefix, "PREFIX": prefix.upper(), "model_name": comment_text(in_info.get("onnx_name", "")),
        "input_ctype": _IN_CTYPES[in_info["dtype"]], "output_ctype": "float" if out_info["dtype"] == "float32"
        else "int32_t", "input_size": int(np.prod(in_info["shape"])), "input_shape": tuple(in_info["shape"]),
        "output_size": out_info["elements"], "output_shape": tuple(out_info["shape"]),
        "grid": in_info.get("grid", {}), "input_flat": flat,
        "in_c": c, "in_hw": h * w, "in_lanes": b.in_lanes,
        "in_stream_t": in_stream_t, "procs": b.procs, "in_axis": in_axis, "out_axis": out_axis,
        "consts": b.consts, "typedefs": b.typedefs,
        "structs": b.structs, "streams": b.streams, "calls": b.calls, "folding_rows": b.folding_rows,
        "widest": b.widest, "ap_int_max_w": (-(-b.widest // 1024) * 1024) if b.widest > 1024 else 0,
        "part": DEFAULT_PART, "clock_ns": f"{DEFAULT_CLOCK_NS:g}", "fifo_depths": dict(sorted(b.fifo_depths.items())),
    }
    figures = {"layers": b.layers, "mvtu_ii_cycles": folding.analytic_ii(foldings),
               "dataflow_ii_cycles": slowest["steps"], "slowest_process": slowest["name"],
               "processes": {P["name"]: P["steps"] for P in b.procs},
               "weight_bits": sum(L["weight_bits"] for L in b.layers),
               "table_bits": sum(L["table_bits"] for L in b.layers), "input_elements_per_beat": b.in_lanes,
               "skip_fifo_depths": dict(sorted(b.fifo_depths.items()))}
    return ctx, figures


def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(resource_dir("templates") / "hls")),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              trim_blocks=True, lstrip_blocks=True)


def render(graph: ir.Graph, foldings: list, name: str = "bnnc") -> dict:
    """{file name: text} of the HLS project for the lowered `graph` folded by `foldings`."""
    ctx, _ = build_context(graph, foldings, name)
    ctx.update(_testbench_data(graph, ctx["prefix"]))
    env = _env()
    out = {n: env.get_template(n + ".j2").render(**ctx)
           for n in ("model.h", "model.cpp", "testbench.cpp", "tb_data.h", "run_hls.tcl", "Makefile", "README.md")}
    out["bnnc_hls.h"] = (resource_dir("runtime") / "hls" / "bnnc_hls.h").read_text()
    out["folding.json"] = json.dumps({"layers": [f.as_dict() for f in foldings]}, indent=2) + "\n"
    return out


# ----------------------------------------------------------------------------- target interface


def files(graph: ir.Graph, opts) -> dict:
    """`bnnc compile --target hls`: the HLS project."""
    return render(graph, foldings_for(graph, opts), opts.name)


def find_cxx() -> str:
    cxx = os.environ.get("CXX") or "g++"
    if shutil.which(cxx) is None:
        raise BnncError(f"C++ compiler '{cxx}' not found (set CXX)")
    return cxx


def build(sources: dict, flags=CXX_FLAGS, include_dirs=()) -> Path:
    """Compile model.cpp + testbench.cpp; returns the testbench executable (cached by content and flags)."""
    from . import c_build

    cmd = [find_cxx(), *flags, *(f"-I{d}" for d in include_dirs), "model.cpp", "testbench.cpp", "-o", "testbench"]
    return c_build.cached_build(sources, cmd, "testbench", prefix="hls-", what="generated HLS C++")


def stats(graph: ir.Graph, foldings: list, name: str = "bnnc") -> dict:
    _, fig = build_context(graph, foldings, name)
    return {"target": "hls", "folding": [f.as_dict() for f in foldings], **fig}


def run(graph: ir.Graph, grid: np.ndarray, opts):
    """C simulation: build the testbench with g++ (cached) and stream `grid` through the top function."""
    from . import c_build

    foldings = foldings_for(graph, opts)
    sources = render(graph, foldings, opts.name)
    exe = build(sources, tuple(opts.flags) if opts.flags else CXX_FLAGS)
    odt = "float32" if graph.output_info["dtype"] == "float32" else "int32"
    y = c_build.run(exe, grid, graph.input_info["dtype"], odt, graph.output_info["elements"])
    y = y.astype(graph.output_info["dtype"])  # the int32 container of QuantizeLinear integers: their own type
    return ir.output_in_model_order(graph, y.reshape(grid.shape[0], -1)), stats(graph, foldings, opts.name)  # (H, W, C) stream


def report(graph: ir.Graph, opts) -> dict:
    """`bnnc report --target hls`: the folding, cycles per frame and weight storage."""
    foldings = foldings_for(graph, opts)
    st = stats(graph, foldings, opts.name)
    rows = [("layer", "MH x MW", "pixels", "PE", "SIMD", "cycles/frame", "weight bits")]
    for L in st["layers"]:
        rows.append((L["name"], f"{L['mh']} x {L['mw']}", str(L["pixels"]), str(L["pe"]),
                     str(L["simd"]), str(L["cycles"]), str(L["weight_bits"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["HLS dataflow (PE x SIMD folding)"]
    lines += ["  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
              for r in rows]
    fps = 1e9 / (DEFAULT_CLOCK_NS * max(1, st["dataflow_ii_cycles"]))
    lines.append(f"  MVTU initiation interval: {st['mvtu_ii_cycles']} cycles per frame (slowest layer)")
    lines.append(f"  dataflow initiation interval: {st['dataflow_ii_cycles']} cycles per frame "
                 f"(slowest process: {st['slowest_process']}); {fps:,.0f} frames/s at {DEFAULT_CLOCK_NS:g} ns")
    macs = [L for L in st["layers"] if L["mac_weight_bits"]]
    if macs:
        lines.append("  multiply-accumulate units (real-valued weights on integer inputs; --weight-bits NODE=B sets a "
                     "layer's weight bits): " + "; ".join(
                         f"{L['name']} ('{L['node']}') {L['mac_weight_bits']}-bit weights x {L['input_bits']}-bit "
                         "inputs" + (f", pre-activation error <= {L['pre_activation_error']:.3g}"
                                     if L["pre_activation_error"] is not None else "") for L in macs))
    if st["skip_fifo_depths"]:
        lines.append("  residual branch input streams (depth from the schedule, in beats):")
        width = max(len(k) for k in st["skip_fifo_depths"])
        lines += [f"    {k.ljust(width)}  {v}" for k, v in st["skip_fifo_depths"].items()]
    return {"text": "\n".join(lines), "json": st}
