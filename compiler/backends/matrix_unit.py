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
  REQUANT_STAGES) -> output pixel.
The RTL computes the same numbers from the same parameters; tests check the simulated latency.
"""

from __future__ import annotations

import numpy as np

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


def tree_levels(simd: int, in_bits: int, mac: bool = False) -> int:
    """Register levels after the lane groups until one partial sum per row and plane is left."""
    group = 1 if mac else POPCOUNT_LANES if in_bits == 1 else ADDER_LANES
    n, levels = -(-simd // group), 0
    while n > 1:
        n, levels = -(-n // ADDER_FANIN), levels + 1
    return levels


def pipeline_depth(simd: int, in_bits: int, mac: bool = False, requantize: bool = False) -> int:
    """Cycles a fold spends in the unit's registers beyond the one it is issued in (`mac`: a
    multiply-accumulate unit, `requantize`: a requantizing epilogue, bnnc_mvtu's MAC / REQUANTIZE)."""
    return FIXED_STAGES - 2 + tree_levels(simd, in_bits, mac) + (REQUANT_STAGES if requantize else 0)


def latency(nf: int, sf: int, simd: int, in_bits: int, mac: bool = False, requantize: bool = False) -> int:
    """Cycles from accepting a vector to its output being valid, with nothing stalled."""
    return nf * sf + pipeline_depth(simd, in_bits, mac, requantize)


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


def uses_mac(op, folded) -> bool:
    """A real-valued layer (integer weights, code "int") on integer inputs runs as an integer
    multiply-accumulate (DSP-friendly): one signed weight per row and lane instead of one popcount
    plane per weight bit. Needs the compared value's table layout (several planes: v-space)."""
    return op.code == "int" and folded.in_bits > 1 and folded.gains_in_table


def mac_weight_matrix(folded) -> tuple:
    """(w, bits): the MAC unit's signed weights as int64 (NF*SF, PE, SIMD), w[a, p, s] the weight of
    row p lane s of fold a, w = sum over planes j of G_j[o] * (b_j ? -1 : 1) * m_j (the planes' own
    sum for integer inputs, so the unit's sum of x * w is the compared value v exactly); rows and
    lanes beyond the matrix are 0; `bits` the signed width holding every weight (at least 2)."""
    f = folded
    nfsf, _, pe, simd = f.weight_bits.shape
    w = np.zeros((nfsf, pe, simd), np.int64)
    rows = np.arange(nfsf)[:, None] // f.sf * pe + np.arange(pe)[None, :]  # (folds, PE): matrix row o
    gains = np.zeros((f.gains.shape[0], f.nf * pe), np.int64)
    gains[:, :f.gains.shape[1]] = f.gains
    i = 0
    for j, kind in enumerate(f.plane_kinds):
        sign = 1
        if kind in ("xnor", "masked_xnor"):
            sign = 1 - 2 * f.weight_bits[:, i].astype(np.int64)
            i += 1
        mask = 1
        if kind in ("masked_xnor", "and"):
            mask = f.weight_bits[:, i].astype(np.int64)
            i += 1
        w += gains[j][rows][:, :, None] * sign * mask
    lanes = np.arange(simd)[None, None, :] + np.zeros((nfsf, pe, 1), np.int64)
    cols = np.arange(nfsf)[:, None, None] % f.sf * simd + lanes
    w = np.where(cols < f.mw, w, 0)
    lo, hi = int(w.min()), int(w.max())
    bits = 2
    while not (-(1 << (bits - 1)) <= lo and hi < 1 << (bits - 1)):
        bits += 1
    return w, bits


def mac_weights(folded) -> tuple:
    """(words, bits): the MAC unit's weight memory (mac_weight_matrix), one signed `bits`-bit weight
    per row and lane, row p lane s of fold a at bit (p * SIMD + s) * bits of word a."""
    w, bits = mac_weight_matrix(folded)
    nfsf, pe, simd = w.shape
    flat = (w & ((1 << bits) - 1)).reshape(nfsf, pe * simd)
    words = [sum(int(v) << (k * bits) for k, v in enumerate(row)) for row in flat]
    return words, bits


def rtl_parameter_groups(stage: dict) -> list:
    """bnnc_mvtu's parameters for a conv stage of the Verilog backend (verilog._conv_stage), in
    groups of (name, value) (one line each in the generated top), memory image names left to the
    caller: the one export of the unit's layout to the RTL, used by the generated top and by the
    per-block resource estimate alike. Parameters at their RTL defaults are left out."""
    s = stage
    groups = [[("MATRIX_ROWS", s["mh"]), ("MATRIX_COLS", s["mw"]), ("PE", s["pe"]), ("SIMD", s["simd"]),
               ("INPUT_BITS", s["ib"]), ("SUM_BITS", s["sb"])],
              [("THRESHOLDS", s["nt"]), ("TABLE_BITS", s["tb"]), ("ACC_BITS", s["ab"]), ("GAIN", s["gain"])]]
    if s.get("mac"):
        groups.append([("MAC", 1), ("WEIGHT_BITS", s["wb"])])
    if s["planes"] != "xnor" or s["gm"] or s["npl"] > 1:
        groups += [[("PLANES", s["np"]), ("PLANE_FLIPS", s["pb"]), ("PLANE_MASKS", s["pm"]),
                    ("GAINS_IN_TABLE", s["gm"]), ("GAIN_BITS", s["gb"]), ("VALUE_BITS", s["vb"])],
                   [("ACT_PLANES", s["npl"])]]
    if s["mode"] == "levels":
        groups.append([("LEVEL_BASE", s["lb"]), ("LEVEL_STEP", s["ls"]), ("OUT_BITS", s["ob"])])
    elif s["mode"] == "requant":
        groups.append([("REQUANTIZE", 1), ("SHIFT", s["shift"]), ("OUT_MIN", s["qlo"]), ("OUT_MAX", s["qhi"]),
                       ("PRODUCT_BITS", s["pw"]), ("OUT_BITS", s["ob"])]
                      + ([("PRE_SHIFT", s["pre_shift"])] if s.get("pre_shift") else []))
    groups += [[("BORDER_CLASSES", s["ncls"]), ("COL_CLASS_COUNT", s["nx"]), ("OUT_ROWS", s["ohr"]),
                ("OUT_COLS", s["owc"]), ("ROW_CLASS_BITS", s["yb"]), ("COL_CLASS_BITS", s["xb"])],
               [("ROW_CLASSES", s["ycls"]), ("COL_CLASSES", s["xcls"])]]
    return groups


def rtl_parameters(stage: dict) -> dict:
    """rtl_parameter_groups as one {name: value}."""
    return {k: v for group in rtl_parameter_groups(stage) for k, v in group}
