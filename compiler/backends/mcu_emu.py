"""Run Cortex-M firmware in unicorn and count its instructions, per inference and per layer.

The firmware (see templates/mcu/emu.c.j2) starts like a real one (reset handler: .data, .bss,
FPU) and stops on `bkpt #0`; each inference then writes the input into `bnnc_emu_input`, runs
`bnnc_emu_infer` to its `bkpt #1` and reads `bnnc_emu_output`.

Counting: a unicorn block hook adds the number of instructions of each translated block that
starts executing (decoded once per block address from the Thumb encoding: a halfword whose top
five bits are 0b11101, 0b11110 or 0b11111 starts a 32-bit instruction). A per-instruction hook
would be about 10x slower. Layers are separate functions of the generated model (BNNC_LAYER);
a block inside a layer function makes that layer current, a block inside `<prefix>_run` makes
"glue" current, and blocks in helpers (compiler-rt: division, soft float) count for whatever is
current, i.e. for the layer that called them.

Sizes come from the ELF: flash = every allocated section stored in flash (vector table, code,
read-only data, the initial values of .data), RAM = .data + .bss + the deepest stack use seen
(the stack is filled with a pattern before running and scanned afterwards).
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


def _instructions_in(code: bytes) -> int:
    """Number of Thumb instructions in `code` (16- and 32-bit encodings)."""
    n = i = 0
    while i + 1 < len(code):
        top = code[i + 1] >> 3
        i += 4 if top in (0x1D, 0x1E, 0x1F) else 2
        n += 1
    return n


class Emulator:
    """One unicorn instance running a firmware; `infer` runs one inference."""

    def __init__(self, fw: Firmware, uc_cpu: str, layers: list, run_function, flash_size: int, ram_size: int,
                 per_instruction: bool = False):
        """run_function: the model's entry point, or a tuple of them (an image of several models),
        counted as glue. per_instruction: count with a hook on every instruction instead of every
        block (about 10x slower; tests use it to check the block counts)."""
        run_functions = (run_function,) if isinstance(run_function, str) else tuple(run_function)
        unicorn, _ = _imports()
        from unicorn import arm_const

        self.unicorn, self.fw = unicorn, fw
        self.uc = uc = unicorn.Uc(unicorn.UC_ARCH_ARM, unicorn.UC_MODE_THUMB | unicorn.UC_MODE_MCLASS)
        uc.ctl_set_cpu_model(getattr(arm_const, uc_cpu))
        self.ram_size = ram_size
        uc.mem_map(FLASH_BASE, flash_size)
        uc.mem_map(RAM_BASE, ram_size)
        uc.mem_map(SCB_PAGE, 0x1000)
        for addr, data in fw.segments:
            uc.mem_write(addr, data)
        self.reg_pc, self.reg_sp = arm_const.UC_ARM_REG_PC, arm_const.UC_ARM_REG_SP
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
        helpers = [set() for _ in range(len(self.layers) + 1)]  # functions outside the model each one ran
        state = {"owner": -1, "bkpt": None}
        n_layers = len(self.layers)
        functions = fw.functions

        def on_block(uc_, address, size, _):
            b = blocks.get(address)
            if b is None:
                n = _instructions_in(bytes(uc_.mem_read(address, size)))
                j = bisect.bisect_right(starts, address) - 1
                owner, fname = None, "?"
                if j >= 0 and address < functions[j][1]:
                    fname = functions[j][2]
                    owner = owner_of.get(fname.split(".")[0])
                b = blocks[address] = (n, None if owner is None else (n_layers if owner < 0 else owner), fname)
            if b[1] is not None:
                state["owner"] = b[1]
            elif b[2] != "?":
                helpers[state["owner"]].add(b[2])
            counts[state["owner"]] += b[0]

        def on_interrupt(uc_, number, _):
            state["bkpt"] = number
            uc_.emu_stop()

        self.counts, self.state, self.helpers = counts, state, helpers
        uc.hook_add(unicorn.UC_HOOK_INTR, on_interrupt)
        # hooks are compiled into translated blocks: add the block hook before anything runs. A code
        # hook calls on_block once per instruction, with that instruction as the "block".
        uc.hook_add(unicorn.UC_HOOK_CODE if per_instruction else unicorn.UC_HOOK_BLOCK, on_block)
        # reset as the core does it: SP and PC from the first two words of the vector table
        sp, pc = (int.from_bytes(bytes(uc.mem_read(FLASH_BASE + 4 * i, 4)), "little") for i in (0, 1))
        uc.reg_write(self.reg_sp, sp)
        self._start(pc & ~1, "start-up")
        # inferences start from a fresh stack pointer: the whole stack is filled, so that its
        # deepest use shows afterwards
        self.stack_fill_end = self.estack
        if self.stack_fill_end > self.stack_floor:
            uc.mem_write(self.stack_floor, bytes([STACK_FILL]) * (self.stack_fill_end - self.stack_floor))

    def _start(self, address: int, what: str) -> None:
        self.state["bkpt"] = None
        try:
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
        """(output bytes, instructions per layer + glue) of one inference on input bytes x."""
        uc = self.uc
        uc.mem_write(self.fw.address("bnnc_emu_input"), x)
        uc.reg_write(self.reg_sp, self.estack)
        self.counts[:] = 0
        self.state["owner"] = len(self.layers)
        self._start(self.fw.address("bnnc_emu_infer"), "inference")
        counts = self.counts.copy()
        counts[-1] -= 1  # the harness's final breakpoint
        y = bytes(uc.mem_read(self.fw.address("bnnc_emu_output"), out_bytes))
        return y, counts

    def helpers_per_layer(self) -> dict:
        """{layer or "glue": sorted names of the functions outside the model it ran} (compiler-rt
        division, soft float...), over every inference so far."""
        names = self.layers + ["glue"]
        return {names[i]: sorted(h) for i, h in enumerate(self.helpers) if h}

    def stack_bytes(self) -> int:
        """Deepest stack use so far (bytes below the initial stack pointer)."""
        lo, hi = self.stack_floor, self.stack_fill_end
        if hi <= lo:
            return 0
        mem = np.frombuffer(bytes(self.uc.mem_read(lo, hi - lo)), np.uint8)
        used = np.flatnonzero(mem != STACK_FILL)
        first = lo + int(used[0]) if used.size else hi
        return self.estack - first
