"""The `bnnc` command: demo, compile, run, verify, report.

Each command parses its flags and calls the Python API (api.py) with them; what it adds is the
terminal: files named by flags (checked before any work), printing, exit statuses. Every problem
with the user's input ends as one line on stderr and exit status 2; progress lines of long steps
come before it (progress.py; -q: none, -v: every step).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

from . import __version__, api, progress, targets, userfiles
from .errors import BnncError, one_line


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own exit status is 2 already; keep it to one line
        self.exit(2, f"bnnc: error: {one_line(message)}\n")


def _non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not a non-negative integer")
    return v


def _non_negative_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    if not (np.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"'{text}' is not a finite number >= 0")
    return v


def _load_npy(path: str) -> np.ndarray:
    data = userfiles.read_bytes(path, "input file")
    f = io.BytesIO(data)
    try:
        # the header's shape first: numpy allocates the whole array before reading its data
        version = np.lib.format.read_magic(f)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        shape, _, dtype = read_header(f) if read_header else ((), None, np.dtype("u1"))
        need = math.prod(shape) * dtype.itemsize
        if need > len(data) - f.tell():
            raise BnncError(f"'{path}' declares an array of shape {shape} ({need} bytes) but holds "
                            f"{len(data) - f.tell()} bytes of data")
        f.seek(0)
        return np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise BnncError(f"'{path}' is not a readable .npy array ({one_line(e)})") from None


def _compile(a, target=None) -> api.Compiled:
    """The API's compile with the command line's flags."""
    return api.compile(a.model, target or a.target, name=a.name, mcu=a.mcu, folding=a.folding,
                       target_cycles=a.target_cycles, flash=a.flash, ram=a.ram, clock_mhz=a.clock_mhz,
                       input_scale=a.input_scale,
                       input_range=a.input_range, input_offset=a.input_offset, input_mean=a.input_mean,
                       input_std=a.input_std, frac_bits=a.frac_bits, weight_bits=a.weight_bits,
                       input_shape=a.input_shape, model_output=a.model_output)


def cmd_compile(a) -> int:
    target = api.resolve_target(a.target, a.mcu)
    targets.check_target(target, targets.COMPILE_TARGETS)
    dump_ir, out = a.dump_ir, Path(a.output)
    api.check_destination(out, dump_ir)
    top = _compile(a).write(out, dump_ir)
    print(f"wrote {', '.join(top)} to {out}/")
    if dump_ir is not None:
        print(f"wrote the lowered IR to {dump_ir}")
    return 0


def _check_outputs(a, *flags) -> None:
    """Every output file named on the command line is writable, before any work is done."""
    for flag in flags:
        path = getattr(a, flag, None)
        if path:
            userfiles.check_output_file(path, "--" + flag)


def _json_bytes(obj, sort_keys=False) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=sort_keys, default=_json_default) + "\n").encode()


def _npy_bytes(y: np.ndarray) -> bytes:
    f = io.BytesIO()
    np.save(f, y)
    return f.getvalue()


def cmd_run(a) -> int:
    api.resolve_target(a.target, a.mcu)
    _check_outputs(a, "stats", "output")
    m = _compile(a)
    y, stats = m.run(_load_npy(a.input), return_stats=True) if a.stats else (m.run(_load_npy(a.input)), None)
    outputs = {}
    if a.stats:
        outputs[a.stats] = _json_bytes(stats, sort_keys=True)
    if a.output:
        outputs[a.output] = _npy_bytes(y)
    userfiles.write_files_atomically(outputs)
    if a.stats:
        print(f"wrote {a.stats}")
    if a.output:
        print(f"wrote {a.output}: shape {y.shape}, dtype {y.dtype}")
    else:
        np.set_printoptions(threshold=200)
        print(y)
    return 0


def cmd_verify(a) -> int:
    api.resolve_target(a.target, a.mcu)
    if a.input:
        for flag, value in (("--samples", a.samples), ("--seed", a.seed)):
            if value is not None:
                raise BnncError(f"{flag} chooses random samples; it does not apply with --input")
    elif a.expected:
        raise BnncError("--expected needs --input: expected outputs belong to given inputs")
    if not 0 < a.agreement <= 1:
        raise BnncError(f"--agreement must be in (0, 1] (got {a.agreement})")
    _check_outputs(a, "stats")
    m = _compile(a)
    x = _load_npy(a.input) if a.input else None
    expected = _load_npy(a.expected) if a.expected else None
    result = m.verify(x, samples=100 if a.samples is None else a.samples, seed=a.seed or 0, expected=expected,
                      rtol=a.rtol, agreement=a.agreement, trace=a.trace)
    if a.stats:
        userfiles.write_files_atomically({a.stats: _json_bytes(result.stats, sort_keys=True)})
        print(f"wrote {a.stats}")
    print(result.text)
    return 0 if result.passed else 1


def cmd_report(a) -> int:
    target = api.resolve_target(a.target or a.mcu or "c", a.mcu)
    _check_outputs(a, "json", "html")
    rep = _compile(a, target).report()
    print(rep.text)
    if a.json:
        userfiles.write_files_atomically({a.json: _json_bytes(rep.data)})
        print(f"wrote {a.json}")
    if a.html:
        from .report_html import render

        userfiles.write_files_atomically({a.html: render(rep.data, target, Path(a.model).name).encode()})
        print(f"wrote {a.html}")
    return 0


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (tuple, np.ndarray)):
        return list(o)
    return str(o)


def cmd_demo(a) -> int:
    from .testing.random_models import random_inputs, save, tfc_model

    work = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="bnnc-demo-"))
    if getattr(a, "zoo", None):  # a model of bnnc.zoo
        from . import zoo

        model = zoo.build(a.zoo, seed=a.seed)
        work.mkdir(parents=True, exist_ok=True)
        model_path = work / f"{a.zoo}.onnx"
        save(model, model_path)
        print(f"bnnc demo: built zoo model '{a.zoo}' ({zoo.MODELS[a.zoo][1]}) at {model_path}")
        x = zoo.inputs(model, 100, seed=a.seed)
    else:
        work.mkdir(parents=True, exist_ok=True)
        model_path = work / "tfc.onnx"
        model = tfc_model(seed=a.seed)
        save(model, model_path)
        print(f"bnnc demo: built a binarized MLP (784-64-64-64-10) at {model_path}")
        x = random_inputs(model, 100, seed=a.seed)
    np.save(work / "x.npy", x)
    m = api.compile(str(model_path), "c")
    top = m.write(work / "c")
    print(f"wrote {', '.join(top)} to {work / 'c'}/")
    result = m.verify(x, agreement=1.0)
    print(result.text)
    return 0 if result.passed else 1


def _zoo_names() -> list:
    from . import zoo

    return zoo.names()


def build_parser() -> argparse.ArgumentParser:
    # -v / -q before or after the command; SUPPRESS: a command's parser must not reset the value
    # given before the command to a default
    verbosity = argparse.ArgumentParser(add_help=False)
    group = verbosity.add_mutually_exclusive_group()
    group.add_argument("-v", "--verbose", dest="verbosity", action="store_const", const=progress.VERBOSE,
                       default=argparse.SUPPRESS, help="say what every step does and how long it takes")
    group.add_argument("-q", "--quiet", dest="verbosity", action="store_const", const=progress.QUIET,
                       default=argparse.SUPPRESS, help="no progress lines (errors are still printed)")
    p = _Parser(prog="bnnc", description="Compile binarized / compressed ONNX networks to bit-exact code. "
                "Steps that take more than a few seconds say so on stderr (-q: never, -v: every step).",
                parents=[verbosity])
    p.add_argument("--version", action="version", version=f"bnnc {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    def add_parser(name, **kw):
        return sub.add_parser(name, parents=[verbosity], **kw)

    def model_args(sp, target_help="c"):
        sp.add_argument("model", help="ONNX file")
        if target_help:
            sp.add_argument("--target", default="c", help=f"{target_help} (default c)")
        else:
            sp.add_argument("--target", default=None,
                            help="add the figures of this target (verilog, hls, cortex-m0/m4/m7, rv32imc[_zbb])")
        sp.add_argument("--name", default="bnnc", help="prefix of the generated identifiers (default bnnc)")
        sp.add_argument("--input-scale", default=None,
                        help="declare the input grid: real input = S * integer; per channel S1,S2,... "
                             "(1/D divides, as torchvision's ToTensor does with 1/255)")
        sp.add_argument("--input-range", default=None, help="LO:HI integer range of the declared input grid")
        sp.add_argument("--model-output", default=None, metavar="NAME",
                        help="the model output to compile where it has several (or a tensor inside it): "
                             "the nodes it depends on")
        sp.add_argument("--input-shape", default=None, metavar="N,C,H,W",
                        help="the input's shape where the model leaves dimensions open (e.g. H and W of a "
                             "fully convolutional export): 1,3,32,32")
        sp.add_argument("--input-offset", default=None, help="per-channel offset added after the scale: O1,O2,...")
        sp.add_argument("--input-mean", default=None, help="per-channel mean subtracted (torchvision Normalize)")
        sp.add_argument("--input-std", default=None, help="per-channel std divided by (torchvision Normalize)")
        sp.add_argument("--frac-bits", type=int, default=None, metavar="F",
                        help="coarsest grid 2^-F of real-valued (residual) streams (default 16: up to +-16384); "
                             "each takes the finest grid up to 2^-24 that holds its worst case in 31 bits")
        sp.add_argument("--weight-bits", action="append", default=None, metavar="[NODE=]B",
                        help="width of real-valued weights (all layers, or the ONNX node NODE): a narrower "
                             "grid, with the larger error bound bnnc report states (default: up to 24 bits)")
        sp.add_argument("--folding", default=None, help="verilog/hls: JSON {\"layers\": [{\"pe\": P, \"simd\": S}, ...]}")
        sp.add_argument("--target-cycles", type=int, default=None,
                        help="verilog/hls: choose the cheapest folding with at most this many cycles per frame")
        sp.add_argument("--mcu", default=None,
                        help=" | ".join(targets.MCUS) + ": --target c --mcu M is the same as --target M")
        sp.add_argument("--flash", default=None,
                        help="MCU targets: flash budget in bytes (e.g. 256k); exceeding it is an error")
        sp.add_argument("--ram", default=None,
                        help="MCU targets: RAM budget in bytes (e.g. 64k); exceeding it is an error")
        sp.add_argument("--clock-mhz", type=float, default=None, metavar="MHZ",
                        help="MCU targets: clock of the latency estimate (default: a typical part of the core); "
                             "verilog: the clock of the frames/s figures (default 200 MHz, not checked: "
                             "bench/bench_fpga.py measures Fmax)")

    all_targets = " | ".join(targets.TARGETS)

    sp = add_parser("demo", help="compile a bundled example model, run it and check it")
    sp.add_argument("--seed", type=_non_negative_int, default=0)
    sp.add_argument("--dir", default=None, help="where to write the example (default: a temporary folder)")
    sp.add_argument("--zoo", default=None, metavar="NAME",
                    help="demo a bnnc.zoo model instead of TFC: " + ", ".join(_zoo_names()))
    sp.set_defaults(func=cmd_demo)

    sp = add_parser("compile", help="write the generated sources (C, firmware, Verilog or HLS C++)")
    model_args(sp, " | ".join(targets.COMPILE_TARGETS))
    sp.add_argument("-o", "--output", required=True, help="output folder")
    sp.add_argument("--dump-ir", default=None, metavar="PATH",
                    help="also write the lowered IR (after the passes) as JSON (PATH.json) or Graphviz (PATH.dot)")
    sp.set_defaults(func=cmd_compile)

    sp = add_parser("run", help="run the compiled model on inputs")
    model_args(sp, all_targets)
    sp.add_argument("--stats", default=None, help="write the target's figures (cycles, instructions...) as JSON")
    sp.add_argument("--input", required=True, help=".npy of shape (N, ...), one model input per sample")
    sp.add_argument("--output", default=None, help=".npy to write (N, ...) outputs to")
    sp.set_defaults(func=cmd_run)

    sp = add_parser("verify", help="original model vs reference vs target")
    model_args(sp, all_targets)
    sp.add_argument("--stats", default=None, help="write the target's figures as JSON")
    sp.add_argument("--input", default=None, help=".npy of inputs (default: random samples)")
    sp.add_argument("--samples", type=int, default=None, help="random samples when no --input (default 100)")
    sp.add_argument("--seed", type=_non_negative_int, default=None, help="of the random samples (default 0)")
    sp.add_argument("--expected", default=None, metavar="Y.npy",
                    help="the outputs (N, ...) the model should give for --input: the reference is held to them "
                         "instead of to the original model, by the same rules")
    sp.add_argument("--trace", action="store_true",
                    help="also compare the reference with the original layer by layer and name the first layer "
                         "where they part ways")
    sp.add_argument("--agreement", type=float, default=0.99,
                    help="fraction of samples on which the reference must agree with the original model "
                         "(same top-1, difference within --rtol; default 0.99). The target must equal the "
                         "reference on every sample")
    sp.add_argument("--rtol", type=_non_negative_float, default=1e-4,
                    help="reference vs original tolerance, relative to max(1, max|original|) (default 1e-4)")
    sp.set_defaults(func=cmd_verify)

    sp = add_parser("report", help="per-layer MACs, storage, pruning and arena figures")
    model_args(sp, target_help=None)
    sp.add_argument("--json", default=None, help="also write the report as JSON")
    sp.add_argument("--html", default=None, help="also write the report as one self-contained HTML page with charts")
    sp.set_defaults(func=cmd_report)
    return p


VALUE_FLAGS = ("--input-range", "--input-scale", "--input-offset", "--input-mean", "--input-std")


def _attach_negative_values(argv: list) -> list:
    """`--input-range -128:127` as `--input-range=-128:127`: argparse would take a value that
    starts with '-' (and is no plain number) for an option."""
    out = []
    i = 0
    while i < len(argv):
        if argv[i] in VALUE_FLAGS and i + 1 < len(argv) and argv[i + 1].startswith("-"):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def main(argv=None) -> int:
    parser = build_parser()
    a = parser.parse_args(_attach_negative_values(list(sys.argv[1:] if argv is None else argv)))
    try:
        progress.set_verbosity(a.verbosity if hasattr(a, "verbosity") else progress.default_level())
        # numpy's RuntimeWarnings on hostile constants (Inf, zero variance) must not reach the
        # terminal: every such model is refused with its own one-line message
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            rc = a.func(a)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers below
        return rc
    except BnncError as e:
        print(f"bnnc: error: {one_line(e)}", file=sys.stderr)
        return 2
    except MemoryError:
        print("bnnc: error: out of memory: the model or the data is too large for this machine",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bnnc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bnnc report m.onnx | head`: the reader left; nothing more to say
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # (a stdout without a file descriptor)
            pass
        return 141
    except Exception as e:  # a bug in bnnc, not in the user's input
        if os.environ.get("BNNC_DEBUG"):
            raise
        print(f"bnnc: internal error: {type(e).__name__}: {one_line(str(e).splitlines()[0]) if str(e) else ''} "
              "(set BNNC_DEBUG=1 for a traceback; please report it)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
