"""Run Cortex-M and RISC-V firmware in unicorn and count its instructions (and estimate its
cycles: mcu_cycles), per inference and per layer.

The firmware (see templates/mcu/emu.c.j2) starts like a real one (reset handler: .data, .bss,
FPU) and stops on `bkpt #0`; each inference then writes the input into `bnnc_emu_input`, runs
`bnnc_emu_infer` to its `bkpt #1` and reads `bnnc_emu_output`.

RISC-V firmware starts at `bnnc_reset_handler` and stops where it calls `bnnc_emu_halt` (the `until`
address of unicorn): unicorn's RISC-V has no breakpoint hook. Unicorn does not decode the Zbb
extension either: its instructions raise an illegal-instruction exception, and the exception hook
computes them here (they are counted like any instruction, in the block that ends with them).

Counting: a unicorn block hook adds the number of instructions of each translated block that
starts executing (decoded once per block address from the Thumb encoding: a halfword whose top
five bits are 0b11101, 0b11110 or 0b11111 starts a 32-bit instruction). A per-instruction hook
would be about 10x slower. Layers are separate functions of the generated model (BNNC_LAYER);
a block inside a layer function makes that layer current, a block inside `<prefix>_run` makes
"glue" current, and blocks in helpers (compiler-rt: division, soft float) count for whatever is
current, i.e. for the layer that called them.

Sizes come from the ELF: flash = every allocated section stored in flash (vector table, code,
read-only data, the initial values of .data), RAM = .data + .bss + the deepest stack use seen
(the stack is filled with a pattern before running and scanned afterwards). The harness calls the
model from the stack pointer's reset value without a frame of its own, so the stack measured is
the model's: its entry's frame and the deepest layer's (and helpers') below it. Each layer's depth
is measured apart: a hook on the layer function's first instruction scans the stack the previous
layer dirtied and fills it again.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from ..errors import BnncError

FLASH_BASE = 0x00000000
RAM_BASE = 0x20000000
SCB_PAGE = 0xE000E000  # system control block: the start-up code enables the FPU there (CPACR)
STACK_FILL = 0xA5
BKPT_READY, BKPT_DONE = 0, 1
MAX_INSTRUCTIONS = 2_000_000_000  # per inference: a runaway program stops here
STACK_WINDOW = 64 << 10  # stack bytes filled again below the stack pointer at each layer's entry


def _imports():
    try:
        import unicorn
        from elftools.elf.elffile import ELFFile
    except ModuleNotFoundError as e:
        raise BnncError(f"the Cortex-M targets need the '{e.name}' package: pip install 'bnnc[mcu]'") from None
    return unicorn, ELFFile


@dataclass
class Firmware:
    """What bnnc needs to know about a linked firmware ELF."""

    path: str
    segments: list  # (address, bytes) to load: PT_LOAD at their run addresses
    functions: list  # (start, end, name), sorted, Thumb bit cleared
    symbols: dict  # name -> (address, size)
    flash_bytes: int
    data_bytes: int
    bss_bytes: int
    flash_end: int
    ram_end: int
    sections: dict = field(default_factory=dict)  # name -> size, allocated sections
    undefined: list = field(default_factory=list)  # symbols the link left undefined, sorted

    @classmethod
    def load(cls, path) -> "Firmware":
        _, ELFFile = _imports()
        with open(path, "rb") as f:
            elf = ELFFile(f)
            segments, flash_end, ram_end = [], 0, 0
            for seg in elf.iter_segments():
                if seg["p_type"] == "PT_LOAD" and seg["p_filesz"]:
                    segments.append((seg["p_vaddr"], seg.data()))
            sections, flash, data, bss = {}, 0, 0, 0
            for sec in elf.iter_sections():
                if not sec["sh_flags"] & 0x2 or sec["sh_size"] == 0:  # SHF_ALLOC
                    continue
                addr, size = sec["sh_addr"], sec["sh_size"]
                sections[sec.name] = size
                if sec["sh_type"] == "SHT_NOBITS":
                    bss += size
                    ram_end = max(ram_end, addr + size)
                elif addr >= RAM_BASE:  # .data: its initial values are in flash too
                    data += size
                    flash += size
                    ram_end = max(ram_end, addr + size)
                else:
                    flash += size
                    flash_end = max(flash_end, addr + size)
            symbols, functions, undefined = {}, [], set()
            for sym in elf.get_section_by_name(".symtab").iter_symbols():
                if sym["st_shndx"] == "SHN_UNDEF" and sym.name:
                    undefined.add(sym.name)
                kind = sym["st_info"]["type"]
                if kind in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE") and sym.name:
                    addr = sym["st_value"] & ~1 if kind == "STT_FUNC" else sym["st_value"]
                    symbols.setdefault(sym.name, (addr, sym["st_size"]))
                    if kind == "STT_FUNC" and sym["st_size"]:
                        functions.append((addr, addr + sym["st_size"], sym.name))
        functions = sorted(set(functions))
        return cls(str(path), segments, functions, symbols, flash, data, bss, flash_end, ram_end, sections,
                   sorted(undefined))

    def address(self, name: str) -> int:
        if name not in self.symbols:
            raise RuntimeError(f"symbol '{name}' not found in {self.path}")
        return self.symbols[name][0]


def _last_instruction(code: bytes, arch: str) -> int:
    """Offset of the last instruction in `code`."""
    i = last = 0
    while i + 1 < len(code):
        last = i
        if arch == "riscv":
            i += 4 if code[i] & 3 == 3 else 2
        else:
            i += 4 if code[i + 1] >> 3 in (0x1D, 0x1E, 0x1F) else 2
    return last


def _rol(v: int, n: int) -> int:
    n &= 31
    return ((v << n) | (v >> (32 - n))) & 0xFFFFFFFF


def _signed(v: int, bits: int) -> int:
    v &= (1 << bits) - 1
    return v - (1 << bits) if v >> (bits - 1) else v


def zbb_result(w: int, a: int, b: int):
    """The value a Zbb instruction `w` writes to rd, from rs1 = a and rs2 = b (None: not Zbb)."""
    op, f3, f7, rs2 = w & 0x7F, (w >> 12) & 7, w >> 25, (w >> 20) & 0x1F
    if op == 0x33 and f7 == 0x20 and f3 in (4, 6, 7):
        return {4: ~(a ^ b), 6: a | ~b, 7: a & ~b}[f3] & 0xFFFFFFFF  # xnor, orn, andn
    if op == 0x33 and f7 == 0x05 and f3 >= 4:
        sa, sb = _signed(a, 32), _signed(b, 32)
        return {4: a if sa < sb else b, 5: min(a, b), 6: a if sa > sb else b, 7: max(a, b)}[f3]
    if op == 0x33 and f7 == 0x30 and f3 in (1, 5):
        return _rol(a, b if f3 == 1 else 32 - (b & 31))  # rol, ror
    if op == 0x33 and f7 == 0x04 and f3 == 4 and rs2 == 0:
        return a & 0xFFFF  # zext.h
    if op == 0x13 and f3 == 1 and f7 == 0x30:
        if rs2 == 0:
            return 32 - a.bit_length()  # clz
        if rs2 == 1:
            return (a & -a).bit_length() - 1 if a else 32  # ctz
        if rs2 == 2:
            return bin(a).count("1")  # cpop
        if rs2 in (4, 5):
            return _signed(a, 8 if rs2 == 4 else 16) & 0xFFFFFFFF  # sext.b, sext.h
    if op == 0x13 and f3 == 5:
        if f7 == 0x30:
            return _rol(a, 32 - rs2)  # rori
        if w >> 20 == 0x287:
            return sum(0xFF << s for s in range(0, 32, 8) if (a >> s) & 0xFF)  # orc.b
        if w >> 20 == 0x698:
            return int.from_bytes(a.to_bytes(4, "little"), "big")  # rev8
    return None


class Emulator:
    """One unicorn instance running a firmware; `infer` runs one inference."""

    def __init__(self, fw: Firmware, uc_cpu: str, layers: list, run_function, flash_size: int, ram_size: int,
                 per_instruction: bool = False, arch: str = "arm", cycle_table=None):
        """run_function: the model's entry point, or a tuple of them (an image of several models),
        counted as glue. per_instruction: count with a hook on every instruction instead of every
        block (about 10x slower; tests use it to check the block counts). arch: "arm" (Thumb, M
        profile) or "riscv" (RV32). cycle_table: a mcu_cycles.CycleTable to estimate cycles with."""
        run_functions = (run_function,) if isinstance(run_function, str) else tuple(run_function)
        unicorn, _ = _imports()
        from . import mcu_cycles

        self.unicorn, self.fw, self.arch = unicorn, fw, arch
        if arch == "riscv":
            from unicorn import riscv_const as regs

            self.uc = uc = unicorn.Uc(unicorn.UC_ARCH_RISCV, unicorn.UC_MODE_RISCV32)
            self.reg_pc, self.reg_sp = regs.UC_RISCV_REG_PC, regs.UC_RISCV_REG_SP
            self.reg_x0 = regs.UC_RISCV_REG_X0
            self.halt = fw.address("bnnc_emu_halt")
        else:
            from unicorn import arm_const as regs

            self.uc = uc = unicorn.Uc(unicorn.UC_ARCH_ARM, unicorn.UC_MODE_THUMB | unicorn.UC_MODE_MCLASS)
            self.reg_pc, self.reg_sp = regs.UC_ARM_REG_PC, regs.UC_ARM_REG_SP
            self.halt = None
        uc.ctl_set_cpu_model(getattr(regs, uc_cpu))
        self.ram_size = ram_size
        uc.mem_map(FLASH_BASE, flash_size)
        uc.mem_map(RAM_BASE, ram_size)
        if arch == "arm":
            uc.mem_map(SCB_PAGE, 0x1000)
        for addr, data in fw.segments:
            uc.mem_write(addr, data)
        self.estack = fw.address("_estack")
        self.stack_floor = fw.address("_ebss")

        # block address -> (instructions, owner): owner is a layer index, -1 for glue, None for helpers
        self.layers = list(layers)
        starts = [f[0] for f in fw.functions]
        owner_of = {name: i for i, name in enumerate(self.layers)}
        for name in run_functions + ("bnnc_emu_infer",):
            owner_of[name] = -1
        # GCC names specialized copies of static functions "name.constprop.0", "name.isra.0"
        present = {name.split(".")[0] for _, _, name in fw.functions}
        missing = [n for n in self.layers + list(run_functions) if n not in present]
        if missing:
            raise RuntimeError(f"functions {missing} not found in the firmware (inlined?)")
        blocks = {}
        counts = np.zeros(len(self.layers) + 1, np.int64)  # last: glue
        cycles = np.zeros(len(self.layers) + 1, np.int64)
        helpers = [set() for _ in range(len(self.layers) + 1)]  # functions outside the model each one ran
        # taken: the cycles the last block adds if the next one is not the one after it (a taken branch)
        state = {"owner": -1, "bkpt": None, "last": 0, "fallthrough": -1, "taken": 0}
        n_layers = len(self.layers)
        functions = fw.functions
        halt = self.halt

        def on_block(uc_, address, size, _):
            b = blocks.get(address)
            if b is None:
                code = bytes(uc_.mem_read(address, size))
                classes = mcu_cycles.instruction_classes(code, arch)
                c = mcu_cycles.block_cycles(classes, cycle_table) if cycle_table else 0
                taken = cycle_table.taken if cycle_table and classes and classes[-1][0] == "branch" else 0
                j = bisect.bisect_right(starts, address) - 1
                owner, fname = None, "?"
                if j >= 0 and address < functions[j][1]:
                    fname = functions[j][2]
                    owner = owner_of.get(fname.split(".")[0])
                if address == halt:  # unicorn stops before running it
                    classes, c = [], 0
                b = blocks[address] = (len(classes), None if owner is None else (n_layers if owner < 0 else owner),
                                       fname, c, taken, address + size, address + _last_instruction(code, arch))
            if state["taken"] and address != state["fallthrough"]:
                cycles[state["owner"]] += state["taken"]
            if b[1] is not None:
                state["owner"] = b[1]
            elif b[2] != "?":
                helpers[state["owner"]].add(b[2])
            counts[state["owner"]] += b[0]
            cycles[state["owner"]] += b[3]
            state["taken"], state["fallthrough"], state["last"] = b[4], b[5], b[6]

        def on_interrupt(uc_, number, _):
            if arch == "riscv" and number == 2 and self._zbb(state["last"]):  # illegal instruction
                return
            state["bkpt"] = number
            uc_.emu_stop()

        self.counts, self.cycles, self.state, self.helpers = counts, cycles, state, helpers
        uc.hook_add(unicorn.UC_HOOK_INTR, on_interrupt)
        # hooks are compiled into translated blocks: add the block hook before anything runs. A code
        # hook calls on_block once per instruction, with that instruction as the "block".
        uc.hook_add(unicorn.UC_HOOK_CODE if per_instruction else unicorn.UC_HOOK_BLOCK, on_block)
        # each layer's stack depth: a hook on the first instruction of each layer function only
        self.layer_stack = np.zeros(len(self.layers), np.int64)
        self.entry_stack = 0  # the most stack in use at a layer's call: the entry's frame
        self._window = None  # (layer, low, high): the stack window filled at that layer's entry
        for start, _, name in functions:
            i = owner_of.get(name.split(".")[0])
            if i is not None and i >= 0:
                uc.hook_add(unicorn.UC_HOOK_CODE, lambda uc_, a, sz, layer: self._layer_entry(layer),
                            user_data=i, begin=start, end=start)
        if arch == "riscv":  # the start-up code sets its stack pointer
            self._start(fw.address("bnnc_reset_handler"), "start-up")
        else:  # reset as the core does it: SP and PC from the first two words of the vector table
            sp, pc = (int.from_bytes(bytes(uc.mem_read(FLASH_BASE + 4 * i, 4)), "little") for i in (0, 1))
            uc.reg_write(self.reg_sp, sp)
            self._start(pc & ~1, "start-up")
        # inferences start from a fresh stack pointer: the whole stack is filled, so that its
        # deepest use shows afterwards
        self.stack_fill_end = self.estack
        if self.stack_fill_end > self.stack_floor:
            uc.mem_write(self.stack_floor, bytes([STACK_FILL]) * (self.stack_fill_end - self.stack_floor))

    def _zbb(self, address: int) -> bool:
        """Execute the Zbb instruction at `address` (unicorn does not know them); False if it is not one."""
        uc, x0 = self.uc, self.reg_x0
        w = int.from_bytes(bytes(uc.mem_read(address, 4)), "little")
        if w & 3 != 3:
            return False
        rd, rs1, rs2 = (w >> 7) & 0x1F, (w >> 15) & 0x1F, (w >> 20) & 0x1F
        v = zbb_result(w, uc.reg_read(x0 + rs1) & 0xFFFFFFFF, uc.reg_read(x0 + rs2) & 0xFFFFFFFF)
        if v is None:
            return False
        if rd:
            uc.reg_write(x0 + rd, v)
        uc.reg_write(self.reg_pc, address + 4)
        self.state["taken"] = 0  # the next block follows this instruction
        return True

    def _start(self, address: int, what: str) -> None:
        self.state["bkpt"] = None
        self.state["taken"] = 0
        try:
            if self.arch == "riscv":
                self.uc.emu_start(address, self.halt, count=MAX_INSTRUCTIONS)
                if self.uc.reg_read(self.reg_pc) == self.halt:
                    self.state["bkpt"] = 0
            else:
                self.uc.emu_start(address | 1, 0xFFFFFFFF, count=MAX_INSTRUCTIONS)
        except self.unicorn.UcError as e:
            pc = self.uc.reg_read(self.reg_pc)
            raise RuntimeError(f"firmware fault during {what} at pc=0x{pc:08x}: {e}") from None
        if self.state["bkpt"] is None:
            pc = self.uc.reg_read(self.reg_pc)
            raise RuntimeError(f"firmware did not reach its breakpoint during {what} (pc=0x{pc:08x})")

    def write(self, symbol: str, data: bytes) -> None:
        """Store `data` at a symbol of the firmware (e.g. a harness's selector)."""
        self.uc.mem_write(self.fw.address(symbol), data)

    def read(self, symbol: str, n: int) -> bytes:
        return bytes(self.uc.mem_read(self.fw.address(symbol), n))

    def infer(self, x: bytes, out_bytes: int) -> tuple:
        """(output bytes, instructions per layer + glue, estimated cycles per layer + glue) of one
        inference on input bytes x."""
        uc = self.uc
        uc.mem_write(self.fw.address("bnnc_emu_input"), x)
        uc.reg_write(self.reg_sp, self.estack)
        self.counts[:] = 0
        self.cycles[:] = 0
        self.state["owner"] = len(self.layers)
        self._start(self.fw.address("bnnc_emu_infer"), "inference")
        self._layer_entry(None)
        counts = self.counts.copy()
        counts[-1] -= 1  # the harness's final breakpoint (RISC-V: its call of bnnc_emu_halt)
        y = bytes(uc.mem_read(self.fw.address("bnnc_emu_output"), out_bytes))
        return y, counts, self.cycles.copy()

    def helpers_per_layer(self) -> dict:
        """{layer or "glue": sorted names of the functions outside the model it ran} (compiler-rt
        division, soft float...), over every inference so far."""
        names = self.layers + ["glue"]
        return {names[i]: sorted(h) for i, h in enumerate(self.helpers) if h}

    def _lowest_used(self, lo: int, hi: int) -> int:
        """The lowest address in [lo, hi) that no longer holds the fill pattern (hi if none)."""
        if hi <= lo:
            return hi
        mem = np.frombuffer(bytes(self.uc.mem_read(lo, hi - lo)), np.uint8)
        used = np.flatnonzero(mem != STACK_FILL)
        return lo + int(used[0]) if used.size else hi

    def _layer_entry(self, layer) -> None:
        """At a layer's first instruction (and, with layer None, after the inference): how deep the
        previous layer went below the model's entry, then the stack below the stack pointer filled
        again for this layer (STACK_WINDOW bytes; the whole stack when a layer went past them)."""
        if self._window is not None:
            prev, lo, hi = self._window
            low = self._lowest_used(lo, hi)
            if low == lo and lo > self.stack_floor:  # deeper than the window: look at the whole stack
                low = self._lowest_used(self.stack_floor, hi)
            self.layer_stack[prev] = max(self.layer_stack[prev], self.estack - low)
            self._window = None
        if layer is None:
            return
        sp = self.uc.reg_read(self.reg_sp)
        self.entry_stack = max(self.entry_stack, self.estack - sp)
        lo = max(self.stack_floor, sp - STACK_WINDOW)
        if sp > lo:
            self.uc.mem_write(lo, bytes([STACK_FILL]) * (sp - lo))
        self._window = (layer, lo, sp)

    def stack_bytes(self) -> int:
        """Deepest stack use so far (bytes below the initial stack pointer): the deepest of the
        layers' (each measured while it ran) and of what the last fill shows."""
        if self.stack_fill_end <= self.stack_floor:
            return 0
        rest = self.estack - self._lowest_used(self.stack_floor, self.stack_fill_end)
        return int(max(rest, self.layer_stack.max(initial=0)))

    def stack_per_layer(self) -> dict:
        """{layer: deepest stack use while it ran, counted from the model's entry}: the entry's
        frame and the layer's (and its helpers'), over every inference so far."""
        return {name: int(self.layer_stack[i]) for i, name in enumerate(self.layers)}
