"""The matrix-vector-threshold unit (hw/rtl/bnnc_mvtu.sv): its pipeline, as the performance model
sees it.

Per fold (one cycle at full speed) the unit reads PE x SIMD weights, and a vector of NF x SF folds
leaves it `latency(...)` cycles after it was accepted. The folds stream through these registered
stages, so throughput stays one fold per cycle and only the first frame pays the depth:
  issue (fold counters) -> weight read (block RAM, address or output registered once more: a
  memory deeper than WEIGHT_BANK_DEPTH is stored as banks side by side, and the bank is selected
  after that register) -> operands (registered: block RAM clock-to-output is most of a cycle at
  speed) -> lane-group sums (popcounts of POPCOUNT_LANES bit lanes, sums of ADDER_LANES integer
  lanes, or one product of a multiply-accumulate lane) -> `tree_levels` register levels adding
  ADDER_FANIN values each -> accumulate -> table read -> table registered -> compared value (gains)
  -> threshold compare / offset (a requantization: offset, clamp, product, sum, one register each,
  REQUANT_STAGES; the count of a multi-bit activation's compare bits: `count_stages` registers)
  -> output pixel.
The RTL computes the same numbers from the same parameters; tests check the simulated latency.

The unit's one home beyond the pipeline: `MatrixUnit`, the record of one layer laid out for it
(passes/layout_folded_layers.py builds it as `Conv.folded`; sub-records Fold, Weights, Sums,
Epilogue with Requant, Table, Borders, Mac), `supports` (what the unit implements: the layout
pass and both hardware backends ask it, the folding reader its folding_refusal), `cycles`, and
the record's two exports, `rtl_parameter_groups` / `rtl_parameters` (bnnc_mvtu's parameters, for
the generated top and the per-block resource estimate) and `hls_context` (the HLS matrix-vector
process's values).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import ir

POPCOUNT_LANES = 16  # bit lanes per first-level register: a 16-input popcount fits one cycle
ADDER_LANES = 2  # integer lanes per first-level register: one adder of two signed lanes
ADDER_FANIN = 2  # values added per further register level: one adder (chains of three missed 150 MHz)
# registered stages of a fold outside the sum tree: issue, weight read (two), operands, lane groups,
# accumulate, table read, table register, compared value, compare, output pixel
FIXED_STAGES = 11
REQUANT_STAGES = 4  # a requantization's registers beyond a threshold compare's
# words per bank of a weight memory (bnnc_rom's BANK_DEPTH): 512 words fit every block RAM shape
# of ECP5 (512 x 36 the widest), so a bank never cascades by depth (a multiplexer on block RAM outputs)
WEIGHT_BANK_DEPTH = 512


def _adder_levels(n: int) -> int:
    """Register levels of ADDER_FANIN-input adders that reduce n registers to one."""
    levels = 0
    while n > 1:
        n, levels = -(-n // ADDER_FANIN), levels + 1
    return levels


def tree_levels(simd: int, in_bits: int, mac: bool = False) -> int:
    """Register levels after the lane groups until one partial sum per row and plane is left."""
    group = 1 if mac else POPCOUNT_LANES if in_bits == 1 else ADDER_LANES
    return _adder_levels(-(-simd // group))


def count_stages(thresholds: int, act_planes: int = 1) -> int:
    """Registers of the threshold count beyond the compare's cycle: a multi-bit activation's
    THRESHOLDS > 1 compare bits are registered, counted in groups of POPCOUNT_LANES into registers,
    then added ADDER_FANIN per register level (bnnc_mvtu's COUNT_STAGES; a one-bit output or
    activation planes have no count: 0)."""
    if thresholds <= 1 or act_planes != 1:
        return 0
    return 2 + _adder_levels(-(-thresholds // POPCOUNT_LANES))


def pipeline_depth(simd: int, in_bits: int, mac: bool = False, requantize: bool = False, thresholds: int = 1,
                   act_planes: int = 1) -> int:
    """Cycles a fold spends in the unit's registers beyond the one it is issued in (`mac`: a
    multiply-accumulate unit, `requantize`: a requantizing epilogue, bnnc_mvtu's MAC / REQUANTIZE;
    `thresholds`, `act_planes`: its THRESHOLDS / ACT_PLANES, for the threshold count)."""
    return (FIXED_STAGES - 2 + tree_levels(simd, in_bits, mac) + (REQUANT_STAGES if requantize else 0)
            + count_stages(thresholds, act_planes))


def latency(nf: int, sf: int, simd: int, in_bits: int, mac: bool = False, requantize: bool = False,
            thresholds: int = 1, act_planes: int = 1) -> int:
    """Cycles from accepting a vector to its output being valid, with nothing stalled."""
    return nf * sf + pipeline_depth(simd, in_bits, mac, requantize, thresholds, act_planes)


def banked_words(words: list, width: int, bank_depth: int = WEIGHT_BANK_DEPTH) -> tuple:
    """(lines, line width): a weight memory of len(words) words of `width` bits as bnnc_rom stores it
    (LATENCY 2): unchanged when it fits one bank, else banks side by side, word a at bits
    (a // bank_depth) * width of line a % bank_depth."""
    if len(words) <= bank_depth:
        return list(words), width
    nb = -(-len(words) // bank_depth)
    lines = [0] * bank_depth
    for a, w in enumerate(words):
        lines[a % bank_depth] |= int(w) << (a // bank_depth * width)
    return lines, nb * width


def unbanked_words(lines: list, width: int, depth: int, bank_depth: int = WEIGHT_BANK_DEPTH) -> list:
    """The `depth` words of `width` bits of a weight memory stored by banked_words."""
    if depth <= bank_depth:
        return [int(v) for v in lines]
    mask = (1 << width) - 1
    return [(int(lines[a % bank_depth]) >> (a // bank_depth * width)) & mask for a in range(depth)]


# ----------------------------------------------------------------------------- the unit's record


@dataclass
class Fold:
    """The matrix and its folding: MH rows (output channels) x MW columns (kh*kw*C inputs per
    output) on PE rows x SIMD lanes; fold (nf, sf) holds rows nf*PE + p and columns sf*SIMD + s."""
    pe: int
    simd: int
    mh: int
    mw: int
    nf: int  # neuron folds: ceil(MH / PE)
    sf: int  # synapse folds: ceil(MW / SIMD)
    in_bits: int  # 1 for bit inputs, else the signed width of the integer inputs

    @property
    def idle_rows(self) -> bool:
        """The last neuron fold has rows beyond the matrix (their weights and outputs are 0)."""
        return self.nf * self.pe > self.mh

    @property
    def idle_lanes(self) -> bool:
        """The last synapse fold has lanes beyond the matrix (their inputs are 0)."""
        return self.sf * self.simd > self.mw


@dataclass
class Weights:
    """The popcount planes' weights (weight_planes.popcount_planes), as the unit's memory holds them."""
    kinds: tuple  # weight_planes kinds, in plane order
    gains: np.ndarray  # int64 (planes, MH): G_j[o]
    gain_bits: int  # signed width of a gain in the table (v-space), else 1
    words: list  # NF*SF ints of len(arrays)*PE*SIMD bits, address nf*SF + sf
    bits: np.ndarray  # bool (NF*SF, arrays, PE, SIMD): the bits of `words`

    @property
    def planes(self) -> int:
        return len(self.kinds)

    @property
    def arrays(self) -> list:
        """[(plane, "b" | "m")]: the bit arrays of a weight word, each PE*SIMD bits, in this order
        (row p lane s of array i at bit (i*PE + p)*SIMD + s)."""
        out = []
        for j, k in enumerate(self.kinds):
            if k in ("xnor", "masked_xnor"):
                out.append((j, "b"))
            if k in ("masked_xnor", "and"):
                out.append((j, "m"))
        return out


@dataclass
class Sums:
    """The compared value: s (one plane's popcount / sum) or, with the gains in the table
    (v-space), v = sum_j G_j[o] * s_j."""
    lo: int  # its range
    hi: int
    plane_bits: int  # signed width holding every plane's popcount / sum
    gains_in_table: bool  # v-space: the unit multiplies by the gains of the table entry
    weighted_bits: int  # signed width of v (v-space), else 1


@dataclass
class Requant:
    """ir.Requantize of the accumulator: out = clamp((clamp(acc >> pre_shift) * mult + add) >> shift, lo, hi)."""
    shift: int = 0
    lo: int = 0
    hi: int = 0
    bits: int = 1  # signed width holding acc * mult + add
    pre_shift: int = 0


@dataclass
class Epilogue:
    """What the unit outputs per row."""
    mode: str  # "thresholds" (one output bit per row and plane) | "levels" (multi-bit) | "acc" (the accumulator)
    #            | "requant" (ir.Requantize of the accumulator: table values A, mult, add, acc_lo, acc_hi)
    thresholds: int  # per row: 1, the levels of LevelThresholds, the activation planes; 0 for "acc"
    level_base: int  # "levels": out = level_base + level_step * count
    level_step: int
    gain: int  # GAIN of the single-plane accumulator output (0 when unused)
    act_planes: int  # activation planes: output channel p * MH + o is row o's threshold p
    acc_lo: int  # "acc" / "requant": range of the accumulator
    acc_hi: int
    acc_bits: int
    out_bits: int  # width of an output element: 1 (bits), the levels' or requantization's type, acc_bits
    requant: Requant = field(default_factory=Requant)


@dataclass
class Table:
    """Per-(border class, row) entries: `values` values of value_bits, the gains (v-space), flags."""
    value: np.ndarray  # int64 (classes, MH, values or max(thresholds, 1)): thresholds or A (and requant's)
    flag: np.ndarray  # int64 (classes, MH, flags): XOR flags or (G != 0)
    value_bits: int  # signed width of the table values
    values: int  # values per row: the thresholds, A, or A, mult, add, acc_lo, acc_hi ("requant")
    flags: int  # flags per entry: 1, or the thresholds for activation planes
    words: list = field(default_factory=list)  # classes*NF ints of PE * entry_bits bits, address class*NF + nf


@dataclass
class Borders:
    """Border classes (pack_bits.border_classes): output positions with the same valid taps."""
    rows: np.ndarray  # (OH,) border class of each output row
    cols: np.ndarray  # (OW,)
    ny: int
    nx: int

    @property
    def classes(self) -> int:
        return self.ny * self.nx


@dataclass
class Mac:
    """The multiply-accumulate mode (uses_mac): one signed weight per row and lane."""
    weights: np.ndarray  # int64 (NF*SF, PE, SIMD): mac_weight_matrix
    bits: int  # signed width holding every weight


@dataclass
class MatrixUnit:
    """One Conv laid out for the unit (passes/layout_folded_layers.py builds it as `op.folded`)."""
    fold: Fold
    weights: Weights
    sums: Sums
    epilogue: Epilogue
    table: Table
    borders: Borders
    mac: Mac | None = None  # None: popcount planes

    @property
    def entry_bits(self) -> int:
        """Bits of one row's table entry: the values, the gains (v-space), then the flags."""
        return self.table.values * self.table.value_bits \
            + (self.weights.planes * self.weights.gain_bits if self.sums.gains_in_table else 0) + self.table.flags



# the epilogues the unit's table implements (a Chain: the accumulator leaves the unit)
EPILOGUES = (ir.Thresholds, ir.LevelThresholds, ir.Requantize, ir.Chain)


def folding_refusal(mh: int, mw: int, pe: int, simd: int) -> str | None:
    """Why PE rows x SIMD lanes cannot fold an MH x MW matrix, or None: a fold wider than the
    matrix would only hold idle rows or lanes."""
    for key, v, n, what in (("PE", pe, mh, "output channels"), ("SIMD", simd, mw, "inputs per output")):
        if v > n:
            return f"{key}={v} exceeds its {n} {what}"
    return None


def supports(op: ir.Conv, folding=None) -> str | None:
    """None when the unit implements the Conv `op` (folded as `folding`, a folding.LayerFolding,
    when given), else why not, as one clause to follow "layer 'NAME': ". The one home of the
    unit's legality: the layout pass and both hardware backends ask it (the folding reader, which
    has no layer yet, asks folding_refusal). Every
    weight code runs (as popcount planes or MAC weights); the unit does not implement:
    - padding as wide as the kernel (a window of padding only: no border class has a valid tap);
    - an epilogue other than bit or multi-level thresholds, a fixed-point Requantize or a float32
      Chain (its accumulators leave the unit);
    - multi-level thresholds with several activation planes (one level count per row);
    - a bit output channel that is constantly 0 (ONNX Sign of 0: a bit holds only +-1);
    - a PE or SIMD wider than the matrix (folding_refusal)."""
    _, kh, kw, _ = op.w.shape
    if op.pads[0] >= kh or op.pads[1] >= kw or op.pads[2] >= kh or op.pads[3] >= kw:
        return f"padding {tuple(op.pads)} is not smaller than its {kh}x{kw} kernel"
    ep = op.epilogue
    if not isinstance(ep, EPILOGUES):
        return (f"the matrix-vector unit does not implement a {type(ep).__name__} epilogue (it holds bit, "
                "multi-level threshold and fixed-point outputs, and float32 accumulator outputs)")
    if isinstance(ep, ir.LevelThresholds) and ep.planes != 1:
        return f"the matrix-vector unit does not implement multi-level activations with {ep.planes} activation planes"
    if isinstance(ep, ir.Thresholds) and np.any(ep.constant == 0):
        return "a channel is constantly 0 (ONNX Sign of 0), which a bit cannot hold"
    if folding is not None:
        return folding_refusal(folding.layer.mh, folding.layer.mw, folding.pe, folding.simd)
    return None


def uses_mac(op, folded) -> bool:
    """A real-valued layer (integer weights, code "int") on integer inputs runs as an integer
    multiply-accumulate (DSP-friendly): one signed weight per row and lane instead of one popcount
    plane per weight bit. Needs the compared value's table layout (several planes: v-space)."""
    return op.code == "int" and folded.fold.in_bits > 1 and folded.sums.gains_in_table


def mac_weight_matrix(folded) -> tuple:
    """(w, bits): the MAC unit's signed weights as int64 (NF*SF, PE, SIMD), w[a, p, s] the weight of
    row p lane s of fold a, w = sum over planes j of G_j[o] * (b_j ? -1 : 1) * m_j (the planes' own
    sum for integer inputs, so the unit's sum of x * w is the compared value v exactly); rows and
    lanes beyond the matrix are 0; `bits` the signed width holding every weight (at least 2)."""
    f = folded
    nfsf, _, pe, simd = f.weights.bits.shape
    w = np.zeros((nfsf, pe, simd), np.int64)
    rows = np.arange(nfsf)[:, None] // f.fold.sf * pe + np.arange(pe)[None, :]  # (folds, PE): matrix row o
    gains = np.zeros((f.weights.gains.shape[0], f.fold.nf * pe), np.int64)
    gains[:, :f.weights.gains.shape[1]] = f.weights.gains
    i = 0
    for j, kind in enumerate(f.weights.kinds):
        sign = 1
        if kind in ("xnor", "masked_xnor"):
            sign = 1 - 2 * f.weights.bits[:, i].astype(np.int64)
            i += 1
        mask = 1
        if kind in ("masked_xnor", "and"):
            mask = f.weights.bits[:, i].astype(np.int64)
            i += 1
        w += gains[j][rows][:, :, None] * sign * mask
    lanes = np.arange(simd)[None, None, :] + np.zeros((nfsf, pe, 1), np.int64)
    cols = np.arange(nfsf)[:, None, None] % f.fold.sf * simd + lanes
    w = np.where(cols < f.fold.mw, w, 0)
    lo, hi = int(w.min()), int(w.max())
    bits = 2
    while not (-(1 << (bits - 1)) <= lo and hi < 1 << (bits - 1)):
        bits += 1
    return w, bits


def mac_weights(folded) -> tuple:
    """(words, bits): the MAC unit's weight memory (folded.mac), one signed `bits`-bit weight
    per row and lane, row p lane s of fold a at bit (p * SIMD + s) * bits of word a."""
    w, bits = folded.mac.weights, folded.mac.bits
    nfsf, pe, simd = w.shape
    flat = (w & ((1 << bits) - 1)).reshape(nfsf, pe * simd)
    words = [sum(int(v) << (k * bits) for k, v in enumerate(row)) for row in flat]
    return words, bits


def cycles(unit: MatrixUnit, pixels: int) -> int:
    """Cycles per frame at full speed, stalls aside: NF x SF folds per output pixel, one a cycle
    (folding.LayerFolding.cycles, before the layout, counts the same)."""
    return unit.fold.nf * unit.fold.sf * pixels


def clog2(n: int) -> int:
    """Bits of an index below n (at least 1), as the RTL's $clog2 with a floor of 1."""
    return max(1, (int(n) - 1).bit_length())


def bits_literal(values, width: int) -> str:
    """A Verilog literal of `values`, value i at bit i * width."""
    v = 0
    for i, x in enumerate(values):
        v |= int(x) << (i * width)
    return f"{len(values) * width}'h{v:x}"


def rtl_parameter_groups(unit: MatrixUnit, window: tuple | None) -> list:
    """bnnc_mvtu's parameters for `unit`, in groups of (name, value) (one line each in the
    generated top), memory image names left to the caller: the one export of the unit to the RTL,
    used by the generated top and by the per-block resource estimate alike. `window`: (OH, OW)
    when a sliding window generator feeds the unit its output position (the border classes look it
    up), None when the unit reads its input stream as is (one border class). Parameters at their
    RTL defaults are left out."""
    fold, w, sums, ep, table, borders, mac = (unit.fold, unit.weights, unit.sums, unit.epilogue, unit.table,
                                             unit.borders, unit.mac)
    groups = [[("MATRIX_ROWS", fold.mh), ("MATRIX_COLS", fold.mw), ("PE", fold.pe), ("SIMD", fold.simd),
               ("INPUT_BITS", fold.in_bits),  # a MAC unit's lanes sum x * w in the compared value's width
               ("SUM_BITS", sums.weighted_bits if mac else sums.plane_bits)],
              [("THRESHOLDS", ep.thresholds), ("TABLE_BITS", table.value_bits),
               ("ACC_BITS", ep.acc_bits if ep.mode in ("acc", "requant") else 1), ("GAIN", ep.gain)]]
    if mac:
        groups.append([("MAC", 1), ("WEIGHT_BITS", mac.bits)])
    if mac or w.kinds != ("xnor",) or sums.gains_in_table or ep.act_planes > 1:
        groups += [[("PLANES", w.planes),
                    ("PLANE_FLIPS", bits_literal([k in ("xnor", "masked_xnor") for k in w.kinds], 1)),
                    ("PLANE_MASKS", bits_literal([k in ("masked_xnor", "and") for k in w.kinds], 1)),
                    ("GAINS_IN_TABLE", int(sums.gains_in_table)), ("GAIN_BITS", w.gain_bits),
                    ("VALUE_BITS", sums.weighted_bits)],
                   [("ACT_PLANES", ep.act_planes)]]
    if ep.mode == "levels":
        groups.append([("LEVEL_BASE", ep.level_base), ("LEVEL_STEP", ep.level_step), ("OUT_BITS", ep.out_bits)])
    elif ep.mode == "requant":
        rq = ep.requant
        # the shifted product is a signed rq.bits-bit value: output bounds beyond that range never clamp, and
        # clipped to it they survive the unit's rq.bits-bit comparison (the IR's +-(2^23 - 1) saturation would not)
        groups.append([("REQUANTIZE", 1), ("SHIFT", rq.shift), ("OUT_MIN", max(rq.lo, -(1 << (rq.bits - 1)))),
                       ("OUT_MAX", min(rq.hi, (1 << (rq.bits - 1)) - 1)), ("PRODUCT_BITS", rq.bits),
                       ("OUT_BITS", ep.out_bits)]
                      + ([("PRE_SHIFT", rq.pre_shift)] if rq.pre_shift else []))
    if window:
        row_bits, col_bits = clog2(borders.ny), clog2(borders.nx)
        out_rows, out_cols = window
        rows, cols = bits_literal(borders.rows, row_bits), bits_literal(borders.cols, col_bits)
    else:
        row_bits = col_bits = out_rows = out_cols = 1
        rows = cols = "1'h0"
    groups += [[("BORDER_CLASSES", borders.classes), ("COL_CLASS_COUNT", borders.nx), ("OUT_ROWS", out_rows),
                ("OUT_COLS", out_cols), ("ROW_CLASS_BITS", row_bits), ("COL_CLASS_BITS", col_bits)],
               [("ROW_CLASSES", rows), ("COL_CLASSES", cols)]]
    return groups


def rtl_parameters(unit: MatrixUnit, window: tuple | None) -> dict:
    """rtl_parameter_groups as one {name: value}."""
    return {k: v for group in rtl_parameter_groups(unit, window) for k, v in group}


def hls_context(unit: MatrixUnit) -> dict:
    """The unit's values for the HLS backend's matrix-vector process (templates/hls/model.cpp.j2,
    kind "mvtu"): the one export of the unit to the HLS context, the same record's numbers that
    rtl_parameter_groups gives the RTL (C++ types of the sums ap_int<N> of the same widths)."""
    fold, sums, ep, mac = unit.fold, unit.sums, unit.epilogue, unit.mac
    return {"pe": fold.pe, "simd": fold.simd, "neuron_folds": fold.nf, "synapse_folds": fold.sf,
            "matrix_rows": fold.mh, "matrix_cols": fold.mw, "idle_rows": fold.idle_rows,
            "input_bits": fold.in_bits, "sum_t": f"ap_int<{sums.plane_bits}>", "gains_in_table": sums.gains_in_table,
            "weighted_sum_t": f"ap_int<{sums.weighted_bits}>", "mac": mac is not None,
            "mac_weight_bits": mac.bits if mac else 0, "mode": ep.mode, "thresholds": ep.thresholds,
            "thresholds_per_row": max(ep.thresholds, 1), "flags": unit.table.flags, "act_planes": ep.act_planes,
            "level_base": ep.level_base, "level_step": ep.level_step, "gain": ep.gain,
            "acc_t": f"ap_int<{ep.acc_bits}>"}
