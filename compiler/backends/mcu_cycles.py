"""Cycle estimates of MCU firmware: per-core cycles per instruction class, applied to the
instruction stream the emulator executes.

Each instruction of a translated block is put in a class by its encoding bits (Thumb-2 for the
Cortex-M cores, RV32IMC + Zbb for the RISC-V ones): alu, load, store, load/store multiple (with
its register count), mul, mac, long mul / mac, div, float, float div, conditional branch, jump
(unconditional branches, calls, returns). A block then costs the sum of its classes' cycles; a
block that ends with a conditional branch costs the taken penalty more when the next block that
runs is not the one after it.

What is modelled: the issue cost of each class from the cores' reference manuals (the tables
below), taken / not-taken conditional branches, and on Cortex-M4 the pipelining of neighbouring
loads and stores (the second and later of a run cost one cycle less). What is ignored: flash wait
states and caches (all memory is zero-wait-state), data-dependent latencies (divides counted at
their worst case, multi-cycle multipliers assumed fast), pipeline hazards other than the ones
above (load-use stalls, register dependencies), dual issue (Cortex-M7), branch prediction (taken
branches always pay the refill), and interrupts. It is an estimate to compare layers, kernels and
cores, not a measurement.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CycleTable:
    """Cycles per instruction class of one core (class -> cycles; "taken": the extra cycles of a
    taken conditional branch; multiple: cycles = multiple_base + registers)."""

    name: str
    source: str
    cycles: dict
    taken: int
    multiple_base: int
    pipelined_loads: bool = False  # neighbouring loads/stores: the later ones cost cycles[load/store] - 1
    clock_mhz: float = 100.0  # a typical part's clock, the default of --clock-mhz


CLASSES = ("alu", "load", "store", "multiple", "mul", "mac", "mull", "div", "fp", "fpdiv", "branch", "jump")

TABLES = {
    # Cortex-M0 TRM (ARM DDI 0432C) table 3-1: loads and stores 2, LDM/STM/PUSH/POP 1+N, MULS 1 (fast
    # multiplier), B taken 3 / not taken 1, BL 4, BX/BLX 3; no divide, no FPU (compiler-rt calls).
    "cortex-m0": CycleTable("cortex-m0", "Cortex-M0 TRM (DDI 0432C) table 3-1",
                            dict(alu=1, load=2, store=2, mul=1, mac=2, mull=1, div=1, fp=1, fpdiv=1, branch=1, jump=3),
                            taken=2, multiple_base=1, clock_mhz=48.0),
    # Cortex-M4 TRM (ARM DDI 0439B) table 3-1: LDR/STR 2 (neighbours pipelined to 1), LDM/STM 1+N, MUL
    # 1, MLA/MLS 2, SMULL/UMULL/SMLAL/UMLAL and the DSP MACs 1, SDIV/UDIV 2..12 (12), branches 1+P
    # (P = 2); FPv4: VADD/VMUL 1, VMLA 3, VDIV/VSQRT 14.
    "cortex-m4": CycleTable("cortex-m4", "Cortex-M4 TRM (DDI 0439B) table 3-1, FPU table 7-1",
                            dict(alu=1, load=2, store=2, mul=1, mac=2, mull=1, div=12, fp=1, fpdiv=14, branch=1,
                                 jump=3),
                            taken=2, multiple_base=1, pipelined_loads=True, clock_mhz=168.0),
    # Cortex-M7: no per-instruction table is published; single issue is assumed (dual issue would
    # lower the figure), loads and stores from TCM take 1, a taken branch 2 (predicted: mispredictions,
    # up to 8 more, are ignored), SDIV/UDIV 12, VDIV 14.
    "cortex-m7": CycleTable("cortex-m7", "single-issue approximation of the Cortex-M7 pipeline (no published table)",
                            dict(alu=1, load=1, store=1, mul=1, mac=1, mull=1, div=12, fp=1, fpdiv=14, branch=1,
                                 jump=2),
                            taken=1, multiple_base=1, clock_mhz=480.0),
    # an in-order single-issue RV32 core of the ESP32-C3 / SiFive E2 / Nuclei N200 class: loads 2 (one
    # load-use bubble), stores 1, MUL 1, an iterative divider (33, worst case), no branch prediction:
    # a taken branch 3, JAL 2, JALR 3; no FPU (compiler-rt soft float).
    "rv32imc": CycleTable("rv32imc", "in-order RV32IMC pipeline (ESP32-C3 / SiFive E2 class)",
                          dict(alu=1, load=2, store=1, mul=1, mac=1, mull=1, div=33, fp=1, fpdiv=1, branch=1, jump=3),
                          taken=2, multiple_base=1, clock_mhz=160.0),
}
TABLES["rv32imc_zbb"] = CycleTable("rv32imc_zbb", TABLES["rv32imc"].source + ", Zbb (cpop 1 cycle)",
                                   TABLES["rv32imc"].cycles, 2, 1, clock_mhz=160.0)


# ----------------------------------------------------------------------------- Thumb-2


def _thumb_class(h1: int, h2: int | None) -> tuple:
    """(class, registers moved) of one Thumb instruction (h2: second halfword of a 32-bit one)."""
    if h2 is None:
        top5 = h1 >> 11
        if (h1 & 0xFE00) == 0xB400:  # PUSH
            return "multiple", bin(h1 & 0x1FF).count("1")
        if (h1 & 0xFE00) == 0xBC00:  # POP (with pc: a return)
            return ("jump" if h1 & 0x100 else "multiple"), bin(h1 & 0x1FF).count("1")
        if top5 in (0b11000, 0b11001):  # STM / LDM
            return "multiple", bin(h1 & 0xFF).count("1")
        if top5 in (0b01101, 0b01111, 0b10001, 0b10011, 0b01001):
            return "load", 0
        if top5 in (0b01100, 0b01110, 0b10000, 0b10010):
            return "store", 0
        if (h1 & 0xF000) == 0x5000:  # register-offset loads and stores
            return ("store" if (h1 >> 9) & 7 < 3 else "load"), 0
        if (h1 & 0xFFC0) == 0x4340:
            return "mul", 0
        if (h1 & 0xF000) == 0xD000 and (h1 >> 8) & 0xF < 0xE:
            return "branch", 0
        if (h1 & 0xF500) == 0xB100:  # CBZ / CBNZ
            return "branch", 0
        if (h1 & 0xF800) == 0xE000 or (h1 & 0xFF00) == 0x4700:  # B, BX / BLX
            return "jump", 0
        if (h1 & 0xFD00) == 0x4400 and ((h1 & 7) | ((h1 >> 4) & 8)) == 15:  # ADD / MOV pc
            return "jump", 0
        return "alu", 0
    if (h1 & 0xF800) == 0xF000 and h2 & 0x8000:  # branches and miscellaneous control
        if (h2 & 0x5000) == 0 and (h1 >> 6) & 0xF < 0xE:
            return "branch", 0
        return ("jump", 0) if h2 & 0x1000 or (h2 & 0x5000) == 0x4000 else ("alu", 0)
    if (h1 & 0xFE00) == 0xE800:
        if h1 & 0x40:  # LDRD / STRD (and exclusives, counted alike); bits 8:7 are P, U here, not LDM's op
            return "multiple", 2
        if (h1 >> 7) & 3 in (1, 2):  # LDM / STM (LDM with pc: a return)
            return ("jump" if h1 & 0x10 and h2 & 0x8000 else "multiple"), bin(h2 & 0xFFFF).count("1")
        return "alu", 0
    if (h1 & 0xFE00) == 0xF800:  # single loads and stores
        return ("load" if h1 & 0x10 else "store"), 0
    if (h1 & 0xFF80) == 0xFB00:  # MUL, MLA, MLS (op1 0), DSP multiplies (op1 1..7)
        # Only MLA / MLS accumulate in a second cycle on Cortex-M4 (TRM table 3-1); the DSP
        # multiplies, with or without accumulate (SMLAD, SMLADX, SMUAD, SMLSD, SMLAxy, SMLAWy,
        # SMMLA, USADA8, ...), issue in one, like MUL: the "mul" class.
        if (h1 >> 4) & 7:
            return "mul", 0
        return ("mul" if (h2 >> 12) == 0xF else "mac"), 0
    if (h1 & 0xFF80) == 0xFB80:  # long multiplies and divides
        op1 = (h1 >> 4) & 7
        return ("div" if op1 in (1, 3) else "mull"), 0
    if (h1 & 0xEE00) == 0xEC00 and (h2 & 0x0E00) == 0x0A00:  # VLDR / VSTR / VLDM / VSTM / VPUSH / VPOP
        if (h1 & 0xFF20) == 0xED00 or (h1 & 0xFF30) == 0xED10:  # VSTR / VLDR
            return ("load" if h1 & 0x10 else "store"), 0
        return "multiple", (h2 & 0xFF) // (2 if h2 & 0x100 else 1)
    if (h1 & 0xEF00) == 0xEE00 and (h2 & 0x0E00) == 0x0A00:  # VFP data processing
        if (h1 & 0xFFB0) == 0xEE80 and not h2 & 0x40:
            return "fpdiv", 0
        if (h1 & 0xFFBF) == 0xEEB1 and (h2 & 0xC0) == 0xC0:  # VSQRT
            return "fpdiv", 0
        return "fp", 0
    return "alu", 0


def thumb_instructions(code: bytes) -> list:
    """[(class, registers)] of the Thumb instructions in `code` (a halfword whose top five bits are
    0b11101, 0b11110 or 0b11111 starts a 32-bit instruction)."""
    out, i = [], 0
    while i + 1 < len(code):
        h1 = code[i] | code[i + 1] << 8
        if h1 >> 11 in (0x1D, 0x1E, 0x1F) and i + 3 < len(code):
            out.append(_thumb_class(h1, code[i + 2] | code[i + 3] << 8))
            i += 4
        else:
            out.append(_thumb_class(h1, None))
            i += 2
    return out


# ----------------------------------------------------------------------------- RISC-V


def _rv16_class(h: int) -> str:
    quadrant, f3 = h & 3, h >> 13
    if quadrant == 0:
        return {2: "load", 6: "store"}.get(f3, "alu")
    if quadrant == 1:
        return {1: "jump", 5: "jump", 6: "branch", 7: "branch"}.get(f3, "alu")
    if f3 == 2:
        return "load"
    if f3 == 6:
        return "store"
    if f3 == 4 and (h >> 2) & 0x1F == 0 and (h >> 7) & 0x1F:  # C.JR / C.JALR
        return "jump"
    return "alu"


def _rv32_class(w: int) -> str:
    op = w & 0x7F
    if op == 0x03:
        return "load"
    if op == 0x23:
        return "store"
    if op == 0x63:
        return "branch"
    if op in (0x6F, 0x67):
        return "jump"
    if op == 0x33 and w >> 25 == 1:  # M extension
        return "div" if (w >> 12) & 7 >= 4 else ("mul" if (w >> 12) & 7 == 0 else "mull")
    return "alu"


def riscv_instructions(code: bytes) -> list:
    """[(class, 0)] of the RV32IMC instructions in `code` (low two bits 0b11: 32 bits, else 16)."""
    out, i = [], 0
    while i + 1 < len(code):
        h = code[i] | code[i + 1] << 8
        if h & 3 == 3 and i + 3 < len(code):
            out.append((_rv32_class(h | (code[i + 2] | code[i + 3] << 8) << 16), 0))
            i += 4
        else:
            out.append((_rv16_class(h), 0))
            i += 2
    return out


def instruction_classes(code: bytes, arch: str) -> list:
    return riscv_instructions(code) if arch == "riscv" else thumb_instructions(code)


def block_cycles(classes: list, table: CycleTable) -> int:
    """Cycles of a straight-line run of instructions, its last branch not taken."""
    total, previous = 0, None
    for cls, regs in classes:
        if cls == "multiple":
            total += table.multiple_base + regs
        elif cls == "jump":  # a POP / LDM of pc moves its registers too
            total += table.cycles["jump"] + regs
        else:
            c = table.cycles[cls]
            if table.pipelined_loads and cls in ("load", "store") and previous in ("load", "store"):
                c -= 1
            total += c
        previous = cls
    return total
