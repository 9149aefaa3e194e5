"""RISC-V firmware (rv32imc, rv32imc_zbb) and the cycle estimates of every MCU core: FINN TFC and
random models give the reference executor's outputs bit for bit on the emulated RISC-V cores;
Zbb builds popcount with cpop (and the emulator computes the Zbb instructions unicorn lacks);
block counts and cycle estimates equal the instruction-by-instruction ones; the instruction
classes of the cycle model are those of the encodings."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("unicorn", reason="the MCU tests need the mcu extra (unicorn, ziglang, pyelftools)")
pytest.importorskip("ziglang", reason="the MCU tests need the mcu extra (unicorn, ziglang, pyelftools)")
pytest.importorskip("elftools", reason="the MCU tests need the mcu extra (unicorn, ziglang, pyelftools)")

from bnnc import cli, driver  # noqa: E402
from bnnc.backends import mcu, mcu_cycles  # noqa: E402
from bnnc.backends.mcu_emu import Firmware, zbb_result  # noqa: E402
from bnnc.errors import BnncError  # noqa: E402
from bnnc.pipeline import compile_file  # noqa: E402
from bnnc.targets import TargetOptions  # noqa: E402

from .conftest import sweep_scale  # noqa: E402
from .helpers import random_case  # noqa: E402
from .test_mcu import check_random_model, check_zoo_model  # noqa: E402

RISCV = ("rv32imc", "rv32imc_zbb")
N_SWEEP = int(10 * sweep_scale())
CPOP_MASK, CPOP = 0xFFF0707F, 0x60201013  # cpop rd, rs1


def _cpops(elf) -> int:
    """cpop instructions in the firmware's code."""
    fw = Firmware.load(elf)
    n = 0
    for _, data in fw.segments:
        i = 0
        while i + 3 < len(data):
            if data[i] & 3 == 3:
                n += int.from_bytes(data[i:i + 4], "little") & CPOP_MASK == CPOP
                i += 4
            else:
                i += 2
    return n


@pytest.mark.parametrize("core", RISCV)
def test_finn_tfc_gives_7_2_1_0_on_risc_v(shared_models, core):
    d = shared_models / "finn-tfc-w1a1"
    _, graph = compile_file(d / "model.onnx")
    inputs = driver.prepare_inputs(graph, np.load(d / "input.npy"))
    y, stats = mcu.run(graph, inputs.grid, TargetOptions(mcu=core))
    assert y.ravel().tolist() == [7, 2, 1, 0] == np.load(d / "expected_output.npy").ravel().tolist()
    assert stats["target"] == core and stats["cycles"] > stats["instructions"] > 0
    assert stats["flash_bytes"] > 0 and stats["ram_bytes"] > stats["arena_bytes"] > 0


@pytest.mark.parametrize("core", RISCV)
@pytest.mark.parametrize("seed", [3000, 3001, 3002, 3003])
def test_random_models_on_risc_v(seed, core):
    check_random_model(seed, core)


@pytest.mark.sweep
@pytest.mark.parametrize("core", RISCV)
@pytest.mark.parametrize("seed", range(3100, 3100 + N_SWEEP))
def test_random_model_sweep_on_risc_v(seed, core):
    check_random_model(seed, core)


@pytest.mark.parametrize("name", ["bireal", "ternary-ttq"])
def test_zoo_family_models_on_rv32imc_zbb(name):
    """Residual shortcuts (bireal) and the ternary family kernels through the RISC-V build."""
    check_zoo_model(name, "rv32imc_zbb")


def test_zbb_builds_popcount_with_cpop_and_rv32imc_without():
    _, _, graph, _ = random_case(3000, 1)
    elfs = {}
    for core in RISCV:
        files = mcu.render(graph, TargetOptions(mcu=core), emulation=True)
        elfs[core] = _cpops(mcu.build(files, mcu.CORES[core]))
    assert elfs["rv32imc"] == 0 and elfs["rv32imc_zbb"] > 0, elfs


def test_zbb_instructions_the_emulator_computes():
    def r(f7, rs2, f3, op):  # rd = x10, rs1 = x11
        return f7 << 25 | rs2 << 20 | 11 << 15 | f3 << 12 | 10 << 7 | op

    a, b = 0x80F0_0100, 0x0000_0003
    assert zbb_result(r(0x30, 2, 1, 0x13), a, 0) == 6  # cpop
    assert zbb_result(r(0x30, 0, 1, 0x13), 1, 0) == 31 and zbb_result(r(0x30, 0, 1, 0x13), 0, 0) == 32  # clz
    assert zbb_result(r(0x30, 1, 1, 0x13), a, 0) == 8 and zbb_result(r(0x30, 1, 1, 0x13), 0, 0) == 32  # ctz
    assert zbb_result(r(0x30, 4, 1, 0x13), 0x80, 0) == 0xFFFFFF80  # sext.b
    assert zbb_result(r(0x30, 5, 1, 0x13), 0x7FFF, 0) == 0x7FFF  # sext.h
    assert zbb_result(r(0x20, 12, 4, 0x33), a, b) == ~(a ^ b) & 0xFFFFFFFF  # xnor
    assert zbb_result(r(0x20, 12, 7, 0x33), a, b) == a & ~b  # andn
    assert zbb_result(r(0x05, 12, 4, 0x33), a, b) == a and zbb_result(r(0x05, 12, 5, 0x33), a, b) == b  # min, minu
    assert zbb_result(r(0x05, 12, 6, 0x33), a, b) == b and zbb_result(r(0x05, 12, 7, 0x33), a, b) == a  # max, maxu
    assert zbb_result(r(0x30, 12, 1, 0x33), a, 4) == 0x0F00_1008  # rol
    assert zbb_result(r(0x30, 12, 5, 0x33), a, 4) == 0x080F_0010  # ror
    assert zbb_result(r(0x30, 4, 5, 0x13), a, 0) == 0x080F_0010  # rori 4
    assert zbb_result(0x287 << 20 | 11 << 15 | 5 << 12 | 10 << 7 | 0x13, a, 0) == 0xFFFF_FF00  # orc.b
    assert zbb_result(0x698 << 20 | 11 << 15 | 5 << 12 | 10 << 7 | 0x13, a, 0) == 0x0001_F080  # rev8
    assert zbb_result(r(0x04, 0, 4, 0x33), a, 0) == 0x0100  # zext.h
    assert zbb_result(r(0x01, 12, 0, 0x33), a, b) is None  # mul is not Zbb


@pytest.mark.parametrize("core", ["rv32imc", "rv32imc_zbb", "cortex-m0"])
def test_block_counts_and_cycles_equal_instruction_by_instruction_ones(core):
    """Exact on RISC-V and Cortex-M0 (no IT blocks, no load pipelining across instructions): the
    taken-branch penalties seen block by block are those seen instruction by instruction."""
    _, _, graph, inputs = random_case(3, 2)
    _, fast = mcu.emulate(graph, inputs.grid, TargetOptions(mcu=core))
    _, slow = mcu.emulate(graph, inputs.grid, TargetOptions(mcu=core), per_instruction=True)
    assert fast["instructions_per_layer"] == slow["instructions_per_layer"]
    assert fast["cycles_per_layer"] == slow["cycles_per_layer"]
    assert fast["cycles"] == slow["cycles"] > fast["instructions"] > 1000


def test_cycle_estimates_follow_the_core_tables():
    _, _, graph, inputs = random_case(4, 1)
    st = {c: mcu.emulate(graph, inputs.grid, TargetOptions(mcu=c))[1] for c in ("cortex-m4", "cortex-m7")}
    for s in st.values():
        assert abs(sum(s["cycles_per_layer"].values()) - s["cycles"]) <= len(s["cycles_per_layer"])
        assert s["latency_ms"] == pytest.approx(s["cycles"] / (s["clock_mhz"] * 1e3))
    # same code, the M7's single-cycle loads and cheaper branches: fewer cycles than the M4
    assert st["cortex-m7"]["cycles"] < st["cortex-m4"]["cycles"]
    assert st["cortex-m4"]["cycles"] >= st["cortex-m4"]["instructions"]
    slow = mcu.emulate(graph, inputs.grid, TargetOptions(mcu="cortex-m4", clock_mhz=16))[1]
    assert slow["clock_mhz"] == 16 and slow["latency_ms"] == pytest.approx(slow["cycles"] / 16e3)


def _thumb(*halfwords):
    return b"".join(h.to_bytes(2, "little") for h in halfwords)


def test_thumb_instruction_classes():
    cases = [
        (_thumb(0x6808), ("load", 0)),  # ldr r0, [r1]
        (_thumb(0x6008), ("store", 0)),  # str r0, [r1]
        (_thumb(0x5888), ("load", 0)),  # ldr r0, [r1, r2]
        (_thumb(0xB510), ("multiple", 2)),  # push {r4, lr}
        (_thumb(0xBD10), ("jump", 2)),  # pop {r4, pc}
        (_thumb(0xC90E), ("multiple", 3)),  # ldmia r1!, {r1, r2, r3}
        (_thumb(0x4348), ("mul", 0)),  # muls r0, r1
        (_thumb(0xD1FE), ("branch", 0)),  # bne
        (_thumb(0xE7FE), ("jump", 0)),  # b
        (_thumb(0x4770), ("jump", 0)),  # bx lr
        (_thumb(0x1840), ("alu", 0)),  # adds r0, r0, r1
        (_thumb(0xF000, 0xF800), ("jump", 0)),  # bl
        (_thumb(0xF040, 0x8000), ("branch", 0)),  # bne.w
        (_thumb(0xFB00, 0xF001), ("mul", 0)),  # mul r0, r0, r1
        (_thumb(0xFB00, 0x2001), ("mac", 0)),  # mla r0, r0, r1, r2
        (_thumb(0xFB00, 0x2011), ("mac", 0)),  # mls r0, r0, r1, r2
        (_thumb(0xFB20, 0x0001), ("mul", 0)),  # smlad r0, r0, r1, r0: one cycle on Cortex-M4 (DSP MAC)
        (_thumb(0xFB20, 0x0011), ("mul", 0)),  # smladx r0, r0, r1, r0
        (_thumb(0xFB20, 0xF001), ("mul", 0)),  # smuad r0, r0, r1
        (_thumb(0xFB40, 0x0001), ("mul", 0)),  # smlsd r0, r0, r1, r0
        (_thumb(0xFB10, 0x0001), ("mul", 0)),  # smlabb r0, r0, r1, r0
        (_thumb(0xFB70, 0x0001), ("mul", 0)),  # usada8 r0, r0, r1, r0
        (_thumb(0xFBB0, 0xF0F1), ("div", 0)),  # udiv r0, r0, r1
        (_thumb(0xFBA0, 0x0101), ("mull", 0)),  # umull r0, r1, r0, r1
        (_thumb(0xE8B1, 0x0070), ("multiple", 3)),  # ldmia.w r1!, {r4, r5, r6}
        (_thumb(0xE8F1, 0xCE02), ("multiple", 2)),  # ldrd r12, lr, [r1], #8 (post-indexed: not an LDM)
        (_thumb(0xE952, 0x0102), ("multiple", 2)),  # ldrd r0, r1, [r2, #-8]
        (_thumb(0xE9D2, 0x0102), ("multiple", 2)),  # ldrd r0, r1, [r2, #8]
        (_thumb(0xF851, 0x0B04), ("load", 0)),  # ldr.w r0, [r1], #4
        (_thumb(0xEA80, 0x0001), ("alu", 0)),  # eor.w r0, r0, r1
        (_thumb(0xEE20, 0x0A01), ("fp", 0)),  # vmul.f32 s0, s0, s2
        (_thumb(0xEE80, 0x0A01), ("fpdiv", 0)),  # vdiv.f32 s0, s0, s2
        (_thumb(0xED91, 0x0A00), ("load", 0)),  # vldr s0, [r1]
    ]
    for code, want in cases:
        assert mcu_cycles.thumb_instructions(code) == [want], (code.hex(), want)


def test_riscv_instruction_classes():
    def w32(v):
        return v.to_bytes(4, "little")

    def w16(v):
        return v.to_bytes(2, "little")

    cases = [
        (w32(0x0005A503), "load"),  # lw a0, 0(a1)
        (w32(0x00A5A023), "store"),  # sw a0, 0(a1)
        (w16(0x4188), "load"),  # c.lw a0, 0(a1)
        (w16(0xC188), "store"),  # c.sw a0, 0(a1)
        (w16(0x4502), "load"),  # c.lwsp a0, 0(sp)
        (w32(0x02B50533), "mul"),  # mul a0, a0, a1
        (w32(0x02B53533), "mull"),  # mulhu a0, a0, a1
        (w32(0x02B54533), "div"),  # div a0, a0, a1
        (w32(0x00B50463), "branch"),  # beq a0, a1, +8
        (w16(0xC111), "branch"),  # c.beqz a0
        (w32(0x008000EF), "jump"),  # jal ra, +8
        (w16(0x8082), "jump"),  # ret (c.jr ra)
        (w16(0xA001), "jump"),  # c.j
        (w32(0x00B50533), "alu"),  # add a0, a0, a1
        (w16(0x852E), "alu"),  # c.mv a0, a1
        (w32(0x60259513), "alu"),  # cpop a0, a1
    ]
    for code, want in cases:
        assert mcu_cycles.riscv_instructions(code) == [(want, 0)], (code.hex(), want)
    table = mcu_cycles.TABLES["rv32imc"]
    classes = mcu_cycles.riscv_instructions(w32(0x0005A503) + w32(0x02B54533) + w32(0x00B50463))
    assert mcu_cycles.block_cycles(classes, table) == table.cycles["load"] + table.cycles["div"] + 1


def test_risc_v_budget_too_small_fails():
    _, _, graph, inputs = random_case(6, 1)
    _, st = mcu.run(graph, inputs.grid, TargetOptions(mcu="rv32imc"))
    need = st["flash_bytes"]
    with pytest.raises(BnncError, match=f"rv32imc: the model needs {need} bytes .*10 bytes more than the --flash"):
        mcu.run(graph, inputs.grid, TargetOptions(mcu="rv32imc", flash=need - 10))


def test_cli_run_and_report_on_risc_v(shared_models, tmp_path, capsys):
    d = shared_models / "finn-tfc-w1a1"
    stats = tmp_path / "stats.json"
    assert cli.main(["run", str(d / "model.onnx"), "--target", "rv32imc_zbb", "--input", str(d / "input.npy"),
                     "--output", str(tmp_path / "y.npy"), "--stats", str(stats), "--clock-mhz", "80"]) == 0
    st = json.loads(stats.read_text())
    assert np.load(tmp_path / "y.npy").ravel().tolist() == [7, 2, 1, 0]
    assert st["clock_mhz"] == 80 and st["cycles"] > 0 and st["latency_ms"] == pytest.approx(st["cycles"] / 80e3)
    capsys.readouterr()
    assert cli.main(["report", str(d / "model.onnx"), "--mcu", "rv32imc"]) == 0
    out = capsys.readouterr().out
    assert "rv32imc firmware" in out and "cycles (est.)" in out and "MHz" in out
    assert cli.main(["report", str(d / "model.onnx"), "--mcu", "rv32imc", "--clock-mhz", "-1"]) == 2
    assert "--clock-mhz" in capsys.readouterr().err


@pytest.mark.parametrize("core", RISCV)
def test_risc_v_project_builds(tmp_path, core):
    """The emitted project (main.c, startup.c, linker script) links for the core with zig cc, and
    with the GNU RISC-V toolchain's Make and CMake where one is installed."""
    _, _, graph, _ = random_case(4, 1)
    files = mcu.files(graph, TargetOptions(mcu=core))
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    c = mcu.CORES[core]
    assert f"CROSS ?= {c.cross}" in files["Makefile"] and c.gcc_flags in files["Makefile"]
    ld = next(n for n in files if n.endswith(".ld"))
    assert ".sbss" in files[ld] and ".isr_vector" not in files[ld]
    r = subprocess.run([sys.executable, "-m", "ziglang", "cc", "-target", c.zig_target, f"-mcpu={c.zig_cpu}", "-O2",
                        "-ffreestanding", *mcu.WARN, "-Wl,--gc-sections", "-Wl,--entry=bnnc_reset_handler", "-T", ld,
                        "main.c",
                        "startup.c", "model.c", "-o", "fw.elf"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    from elftools.elf.elffile import ELFFile

    with open(tmp_path / "fw.elf", "rb") as f:
        entry = ELFFile(f).header["e_entry"]
    assert entry == Firmware.load(tmp_path / "fw.elf").address("bnnc_reset_handler") == 0  # at the flash origin
    gcc = c.cross + "gcc"
    if shutil.which(gcc):
        r = subprocess.run(["make"], cwd=tmp_path, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr
