"""The Python API: compile a model for a target, then run, verify, report or write it.

    import bnnc
    m = bnnc.compile("model.onnx", target="cortex-m4", flash="256k")
    y = m.run(x)                      # outputs (N, ...) for inputs (N, ...)
    result = m.verify(samples=100)    # original model vs reference vs target
    print(result.text); assert result.passed
    m.write("fw/")                    # the generated project

The `bnnc` command calls these functions and nothing else: every option has the meaning (and the
error message) of the command-line flag of the same name. Every problem with the user's input
raises `bnnc.Error` (BnncError) with the message the command prints after `bnnc: error:`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import onnx

from . import driver, ir, ir_dump, progress, targets, userfiles
from .errors import BnncError
from .onnx_loader import with_input_shape, with_output
from .passes.quantize_input import InputAffine
from .pipeline import Options, compile_graph
from .targets import TargetOptions

Error = BnncError

# ----------------------------------------------------------------------------- options


def _float32_scale(v: float, text: str) -> float:
    """A scale the float32 input chain holds exactly as given: positive, finite, not subnormal."""
    f32 = np.finfo(np.float32)
    if not (np.isfinite(v) and f32.tiny <= v <= f32.max):
        raise BnncError(f"--input-scale: '{text}' is not a positive float32 number (from {f32.tiny:g} to {f32.max:g})")
    return v


def _numbers(value, flag: str, divisions: bool = False) -> tuple:
    """One number per channel (or one for all) as ((op, value), ...), op "mul" or "div": a
    comma-separated string (items written 1/D divide, with `divisions`), a number or a sequence."""
    if isinstance(value, (int, float, np.number)):
        value = [value]
    if not isinstance(value, str):
        value = ",".join(repr(float(v)) if not isinstance(v, str) else v for v in value)
    items = []
    for part in value.split(","):
        part = part.strip()
        try:
            if divisions and part.startswith("1/"):
                items.append(("div", float(part[2:])))
            else:
                items.append(("mul", float(part)))
        except ValueError:
            raise BnncError(f"{flag} '{value}' is not a comma-separated list of numbers"
                            + (" (or 1/D)" if divisions else "")) from None
    return tuple(items)


def _input_affine(scale_value, offset, mean, std) -> tuple:
    """(one scalar input scale or None; InputAffine of the per-channel input flags or None).
    x = ((q * scale + offset) - mean) / std, each a float32 op per channel."""
    extra = (offset, mean, std)
    scale = _numbers(scale_value, "--input-scale", True) if scale_value is not None else ()
    for _, v in scale:
        _float32_scale(v, repr(v))
    if not any(e is not None for e in extra) and len(scale) == 1 and scale[0][0] == "mul":
        return scale[0][1], None  # one scalar scale: real input = S * q
    if scale_value is None and not any(e is not None for e in extra):
        return None, None
    ops = []
    if scale:
        kinds = {k for k, _ in scale}
        if len(kinds) > 1:
            raise BnncError(f"--input-scale '{scale_value}': write every channel as a number or every channel as 1/D")
        ops.append((kinds.pop(), tuple(v for _, v in scale)))
    for flag, op, value in zip(("--input-offset", "--input-mean", "--input-std"), ("add", "sub", "div"), extra):
        if value is not None:
            ops.append((op, tuple(v for _, v in _numbers(value, flag))))
    return None, InputAffine(tuple(ops))


def _input_range(value) -> Optional[tuple]:
    if value is None:
        return None
    if isinstance(value, str):
        try:
            lo, hi = (int(v) for v in value.split(":"))
        except ValueError:
            raise BnncError(f"--input-range '{value}' is not LO:HI") from None
        return lo, hi
    try:
        lo, hi = value
        return int(lo), int(hi)
    except (TypeError, ValueError):
        raise BnncError(f"--input-range {value!r} is not (LO, HI)") from None


def _input_shape(value) -> tuple:
    """--input-shape N,C,H,W (a string) or a sequence of positive integers."""
    try:
        dims = tuple(int(v) for v in (value.split(",") if isinstance(value, str) else value))
    except (TypeError, ValueError):
        raise BnncError(f"--input-shape {value!r} is not a list of dimensions such as 1,3,32,32") from None
    if not dims or min(dims) < 1:
        raise BnncError(f"--input-shape {value!r}: the dimensions must be positive")
    return dims


def _weight_bits(value) -> dict:
    """--weight-bits [NODE=]B ... (an int, a "NODE=B" string, a list of them or {node: B}) as
    {node name or "*": B}."""
    if value is None:
        return {}
    if isinstance(value, dict):
        items = [f"{k}={v}" if k not in ("*", "") else str(v) for k, v in value.items()]
    elif isinstance(value, (str, int)):
        items = [str(value)]
    else:
        items = [str(v) for v in value]
    out = {}
    for item in items:
        name, _, bits = item.rpartition("=")
        try:
            b = int(bits)
        except ValueError:
            b = 0
        if not 2 <= b <= 25:
            raise BnncError(f"--weight-bits '{item}': give B or NODE=B with 2 <= B <= 25")
        out[name or "*"] = b
    return out


def _bytes(value, flag: str) -> Optional[int]:
    """65536, '64k', '1M', '4096' -> bytes."""
    if value is None:
        return None
    t = str(value).strip().lower().removesuffix("b")
    mult = {"k": 1024, "m": 1024 * 1024}.get(t[-1:], 1)
    try:
        v = int(t[:-1] if mult != 1 else t) * mult
    except ValueError:
        raise BnncError(f"{flag} '{value}' is not a size in bytes (e.g. 65536, 64k, 1M)") from None
    if v <= 0:
        raise BnncError(f"{flag} must be positive")
    return v


def lowering_options(input_scale=None, input_range=None, input_offset=None, input_mean=None, input_std=None,
                     frac_bits=None, weight_bits=None) -> Options:
    """The pipeline's Options from the user's values (as the flags of the same names take them)."""
    scale, affine = _input_affine(input_scale, input_offset, input_mean, input_std)
    if frac_bits is not None and not 0 <= frac_bits <= 30:
        raise BnncError(f"--frac-bits {frac_bits} is outside 0..30")
    return Options(input_scale=scale, input_range=_input_range(input_range), input_affine=affine,
                   weight_bits=_weight_bits(weight_bits), **({"frac_bits": frac_bits} if frac_bits is not None else {}))


HW_TARGETS = ("verilog", "hls")


def resolve_target(target: str, mcu: Optional[str] = None) -> str:
    """The one target name: `c` with `mcu=M` (the command line's `--target c --mcu M`) is the
    alias of target M; every other use of `mcu` must name the target's own core."""
    targets.check_target(target)
    if mcu is None:
        return target
    targets.check_mcu(mcu)
    if target == "c":
        return mcu
    if target in targets.MCUS:
        if mcu != target:
            raise BnncError(f"--mcu {mcu} contradicts --target {target}")
        return target
    raise BnncError(f"--mcu applies to the firmware targets ({', '.join(targets.MCUS)}; --target c --mcu M is "
                    f"the same as --target M), not to --target {target}")


def target_options(target: str, name: str = "bnnc", folding=None, target_cycles=None, flash=None,
                   ram=None, clock_mhz=None) -> TargetOptions:
    """TargetOptions for `target` (already resolved); a flag the target does not use is refused."""
    if target_cycles is not None and target_cycles < 1:
        raise BnncError("--target-cycles must be at least 1")
    for flag, value, users in (("--folding", folding, HW_TARGETS), ("--target-cycles", target_cycles, HW_TARGETS),
                               ("--flash", flash, targets.MCUS), ("--ram", ram, targets.MCUS),
                               ("--clock-mhz", clock_mhz, targets.MCUS + ("verilog",))):
        if value is not None and target not in users:
            raise BnncError(f"{flag} applies to --target {' | '.join(users)}, not to --target {target}")
    if clock_mhz is not None and not 0 < float(clock_mhz) < float("inf"):
        raise BnncError(f"--clock-mhz must be a positive number of MHz (got {clock_mhz})")
    return TargetOptions(name=name, folding=folding, target_cycles=target_cycles,
                         mcu=target if target in targets.MCUS else None, flash=_bytes(flash, "--flash"),
                         ram=_bytes(ram, "--ram"), progress=progress.live(),
                         clock_mhz=None if clock_mhz is None else float(clock_mhz))


# ----------------------------------------------------------------------------- results


@dataclass
class Verification:
    """What `verify` found: `passed`, the counts, and `text` (what `bnnc verify` prints)."""

    passed: bool
    samples: int
    bit_exact: int  # samples on which the target equals the reference bit for bit
    agree: int  # samples on which the reference agrees with the original (or the expected outputs)
    against: str  # "original" (onnxruntime) or "expected" (the user's outputs)
    approximations: list
    stats: dict
    outputs: np.ndarray  # the target's outputs
    trace: Optional[list] = None  # rows of the layer-by-layer comparison (verify(trace=True))
    lines: list = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __str__(self) -> str:
        return self.text


@dataclass
class Report:
    """`report()`: the per-layer table and totals (`data`, also what `--json` writes) and `text`."""

    data: dict
    text: str

    def __str__(self) -> str:
        return self.text


# ----------------------------------------------------------------------------- the compiled model


def check_destination(directory, dump_ir=None) -> None:
    """`write`'s output folder (and IR file) can be written: checked before any work is done."""
    if dump_ir is not None and Path(dump_ir).suffix not in ir_dump.FORMATS:
        raise BnncError(f"--dump-ir '{dump_ir}' must end in {' or '.join(ir_dump.FORMATS)}")
    userfiles.check_output_folder(Path(directory), [])
    if dump_ir is not None:
        userfiles.check_output_file(dump_ir, "--dump-ir")


class Compiled:
    """A model compiled for a target. Make one with `bnnc.compile`."""

    def __init__(self, model: onnx.ModelProto, graph: ir.Graph, target: str, options: TargetOptions,
                 source: str = "model", lowering: Options = Options()):
        self.model = model  # the ONNX model as given (what verify runs in onnxruntime)
        self.graph = graph  # the lowered IR (after the passes)
        self.lowering = lowering  # the input grid and fixed-point options it was lowered with
        self.target = target
        self.options = options
        self.source = source  # the file it came from, for messages

    def __repr__(self) -> str:
        return f"<bnnc.Compiled {self.source} for target {self.target!r}>"

    def files(self) -> dict:
        """{relative path: text} of the generated project (what `write` writes)."""
        if self.target == "ref":
            raise BnncError("target 'ref' (the reference executor) generates no files; "
                            f"choose one of {', '.join(targets.COMPILE_TARGETS)}")
        return targets.compile_files(self.graph, self.target, self.options)

    def write(self, directory, dump_ir=None) -> list:
        """Write the generated project into `directory` (whole or not at all: files already there
        that bnnc does not write are kept); with `dump_ir` (a .json or .dot path) also the lowered
        IR. Returns the top-level names written."""
        out = Path(directory)
        check_destination(out, dump_ir)
        with progress.step(f"generating the {self.target} sources"):
            files = self.files()
        dump_text = ir_dump.dump(self.graph, Path(dump_ir).suffix) if dump_ir is not None else None
        userfiles.write_folder_atomically(out, files)
        if dump_text is not None:
            userfiles.write_files_atomically({str(dump_ir): dump_text.encode()})
        return sorted({n.split("/")[0] for n in files})

    def inputs(self, x) -> driver.Inputs:
        """User inputs (N, ...) checked and converted for the compiled model and for the original."""
        return driver.prepare_inputs(self.graph, x)

    def samples(self, n: int, seed: int = 0) -> np.ndarray:
        """n random inputs spread over the model's input grid (what verify uses without inputs)."""
        if n < 1:
            raise BnncError("--samples must be at least 1")
        return driver.random_samples(self.graph, n, seed)

    def run(self, x, return_stats: bool = False):
        """Outputs (N, ...) of the target for inputs (N, ...); with return_stats, (outputs, the
        target's figures as a dict: what `bnnc run --stats` writes)."""
        y, stats = self._run(self.inputs(x), return_stats)
        return (y, stats) if return_stats else y

    def _run(self, inputs: driver.Inputs, measure: bool = False) -> tuple:
        n = inputs.grid.shape[0]
        opts = TargetOptions(**{**self.options.__dict__, "measure": measure})
        with progress.step(f"running {n} sample(s) on target {self.target}"):
            return targets.run(self.graph, self.target, inputs.grid, opts)

    def verify(self, x=None, *, samples: int = 100, seed: int = 0, expected=None, rtol: float = 1e-4,
               agreement: float = 0.99, trace: bool = False) -> Verification:
        """Run the target, the reference and the original model (onnxruntime) on the same inputs
        (`x`, or `samples` random ones). Passes when the target equals the reference bit for bit
        on every sample and the reference agrees with the original on at least `agreement` of them:
        the same top-1 and, where the lowered model is exact, a max abs difference within
        rtol x max(1, max|original|). With `expected` (outputs (N, ...) for `x`), the reference is
        held to those outputs instead of the original's, by the same rule. With `trace`, the
        result also names the first layer where the reference and the original part ways."""
        from .verify import verify

        return verify(self, x, samples=samples, seed=seed, expected=expected, rtol=rtol, agreement=agreement,
                      trace=trace)

    def report(self) -> Report:
        """Per-layer MACs, storage, pruning and arena figures, and the target's own section
        (cycles and resources for verilog / hls, flash, RAM and instructions for cortex-m*)."""
        from .report import format_table, report

        rep = report(driver.backend_graph(self.graph))
        text = format_table(rep)
        with progress.step(f"the {self.target} figures of the report"):
            extra = targets.report(self.graph, self.target, self.options)
        if extra:
            text += "\n\n" + extra["text"]
            rep[self.target] = extra["json"]
        return Report(rep, text)


def load(model, what: str = "model") -> tuple:
    """(ModelProto, a name for messages) for a path or a ModelProto."""
    from .onnx_loader import read_model

    if isinstance(model, onnx.ModelProto):
        if not model.graph.node:
            raise BnncError("the ONNX model holds no graph nodes")
        return model, model.graph.name or "model"
    if isinstance(model, (str, Path)):
        with progress.step(f"reading {model}"):
            return read_model(model), str(model)
    raise BnncError(f"{what}: expected a path or an onnx.ModelProto, got {type(model).__name__}")


def compile(model, target: str = "c", *, name: str = "bnnc", mcu: Optional[str] = None, folding=None,
            target_cycles: Optional[int] = None, flash=None, ram=None, clock_mhz=None, input_scale=None,
            input_range=None, input_offset=None, input_mean=None, input_std=None, frac_bits: Optional[int] = None,
            weight_bits=None, input_shape=None, model_output=None) -> Compiled:
    """Compile `model` (a path or an onnx.ModelProto) for `target`: ref, c, cortex-m0, cortex-m4,
    cortex-m7, rv32imc, rv32imc_zbb, verilog or hls (`target="c", mcu="cortex-m4"` is the same as target="cortex-m4").
    The options are the command line's flags of the same names, with the same values (strings as
    on the command line, or numbers, sequences and dicts): see README.md."""
    target = resolve_target(target, mcu)
    opts = target_options(target, name, folding, target_cycles, flash, ram, clock_mhz)
    options = lowering_options(input_scale, input_range, input_offset, input_mean, input_std, frac_bits,
                               weight_bits)
    proto, source = load(model)
    if model_output is not None:  # the model as the user declares it: what verify runs too
        proto = with_output(proto, str(model_output))
    if input_shape is not None:
        proto = with_input_shape(proto, _input_shape(input_shape))
    return Compiled(proto, compile_graph(proto, options), target, opts, source, options)

