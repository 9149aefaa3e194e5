"""The `bnnc` command: demo, compile, run, verify, report.

Every problem with the user's input ends as one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from . import __version__, driver, ir_dump, targets, userfiles
from .errors import BnncError, one_line
from .pipeline import Options, compile_file
from .passes.quantize_input import InputAffine
from .targets import TargetOptions


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


def _input_scale(text: str) -> float:
    """A scale the float32 input chain holds exactly as given: positive, finite, not subnormal."""
    try:
        v = float(text)
    except ValueError:
        v = float("nan")
    f32 = np.finfo(np.float32)
    if not (np.isfinite(v) and f32.tiny <= v <= f32.max):
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive float32 number "
                                         f"(from {f32.tiny:g} to {f32.max:g})")
    return v


def _options(a) -> Options:
    rng = None
    if getattr(a, "input_range", None) is not None:
        try:
            lo, hi = (int(v) for v in a.input_range.split(":"))
        except ValueError:
            raise BnncError(f"--input-range '{a.input_range}' is not LO:HI") from None
        rng = (lo, hi)
    scale, affine = _input_affine(a)
    frac = getattr(a, "frac_bits", None)
    if frac is not None and not 0 <= frac <= 30:
        raise BnncError(f"--frac-bits {frac} is outside 0..30")
    return Options(input_scale=scale, input_range=rng, input_affine=affine, weight_bits=_weight_bits(a),
                   **({"frac_bits": frac} if frac is not None else {}))


def _weight_bits(a) -> dict:
    """--weight-bits [NODE=]B ... as {node name or "*": B}."""
    out = {}
    for item in getattr(a, "weight_bits", None) or []:
        name, _, bits = item.rpartition("=")
        try:
            b = int(bits)
        except ValueError:
            b = 0
        if not 2 <= b <= 25:
            raise BnncError(f"--weight-bits '{item}': give B or NODE=B with 2 <= B <= 25")
        out[name or "*"] = b
    return out


def _numbers(text: str, flag: str, divisions: bool = False) -> tuple:
    """A comma-separated list of numbers (one per channel, or one for all); with `divisions`,
    items may be written 1/D. Returns ((op, value), ...) with op "mul" / "div"."""
    items = []
    for part in text.split(","):
        part = part.strip()
        try:
            if divisions and part.startswith("1/"):
                items.append(("div", float(part[2:])))
            else:
                items.append(("mul", float(part)))
        except ValueError:
            raise BnncError(f"{flag} '{text}' is not a comma-separated list of numbers"
                            + (" (or 1/D)" if divisions else "")) from None
    return tuple(items)


def _input_affine(a) -> tuple:
    """(--input-scale as one positive float, or None; InputAffine of the per-channel input flags,
    or None). x = ((q * scale + offset) - mean) / std, each a float32 op per channel."""
    text = getattr(a, "input_scale", None)
    extra = [getattr(a, f, None) for f in ("input_offset", "input_mean", "input_std")]
    scale = _numbers(text, "--input-scale", True) if text is not None else ()
    for _, v in scale:  # a scale (or divisor) the float32 input chain holds exactly as given
        try:
            _input_scale(repr(v))
        except argparse.ArgumentTypeError as e:
            raise BnncError(f"--input-scale: {e}") from None
    if not any(e is not None for e in extra) and len(scale) == 1 and scale[0][0] == "mul":
        return scale[0][1], None  # one scalar scale: real input = S * q
    if text is None and not any(e is not None for e in extra):
        return None, None
    ops = []
    if scale:
        kinds = {k for k, _ in scale}
        if len(kinds) > 1:
            raise BnncError(f"--input-scale '{text}': write every channel as a number or every channel as 1/D")
        ops.append((kinds.pop(), tuple(v for _, v in scale)))
    for flag, op, value in zip(("--input-offset", "--input-mean", "--input-std"), ("add", "sub", "div"), extra):
        if value is not None:
            ops.append((op, tuple(v for _, v in _numbers(value, flag))))
    return None, InputAffine(tuple(ops))


def _target_options(a) -> TargetOptions:
    folding = getattr(a, "folding", None)
    if getattr(a, "target_cycles", None) is not None and a.target_cycles < 1:
        raise BnncError("--target-cycles must be at least 1")
    mcu = getattr(a, "mcu", None)
    if mcu is not None:
        targets.check_mcu(mcu)
    return TargetOptions(name=a.name, folding=folding, target_cycles=getattr(a, "target_cycles", None),
                         mcu=mcu, flash=_bytes(getattr(a, "flash", None), "--flash"),
                         ram=_bytes(getattr(a, "ram", None), "--ram"), progress=sys.stderr.isatty(),
                         extra={} if getattr(a, "clock_mhz", None) is None else {"clock_mhz": a.clock_mhz})


def _bytes(text, flag):
    """'64k', '1M', '4096' -> bytes."""
    if text is None:
        return None
    t = str(text).strip().lower().removesuffix("b")
    mult = {"k": 1024, "m": 1024 * 1024}.get(t[-1:], 1)
    try:
        v = int(t[:-1] if mult != 1 else t) * mult
    except ValueError:
        raise BnncError(f"{flag} '{text}' is not a size in bytes (e.g. 65536, 64k, 1M)") from None
    if v <= 0:
        raise BnncError(f"{flag} must be positive")
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


def cmd_compile(a) -> int:
    targets.check_target(a.target, targets.COMPILE_TARGETS)
    opts = _target_options(a)
    dump_ir = getattr(a, "dump_ir", None)
    if dump_ir is not None and Path(dump_ir).suffix not in ir_dump.FORMATS:
        raise BnncError(f"--dump-ir '{dump_ir}' must end in {' or '.join(ir_dump.FORMATS)}")
    out = Path(a.output)
    userfiles.check_output_folder(out, [])
    if dump_ir is not None:
        userfiles.check_output_file(dump_ir, "--dump-ir")
    _, graph = compile_file(a.model, _options(a))
    files = targets.compile_files(graph, a.target, opts)
    dump_text = ir_dump.dump(graph, Path(dump_ir).suffix) if dump_ir is not None else None
    userfiles.write_folder_atomically(out, files)
    top = sorted({n.split("/")[0] for n in files})
    print(f"wrote {', '.join(top)} to {out}/")
    if dump_text is not None:
        userfiles.write_files_atomically({dump_ir: dump_text.encode()})
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
    targets.check_target(a.target)
    _check_outputs(a, "stats", "output")
    opts = _target_options(a)
    _, graph = compile_file(a.model, _options(a))
    inputs = driver.prepare_inputs(graph, _load_npy(a.input))
    y, stats = targets.run(graph, a.target, inputs.grid, opts)
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


def _top1(y: np.ndarray) -> np.ndarray:
    return y.reshape(y.shape[0], -1).argmax(axis=1) if y.dtype.kind == "f" else y.reshape(y.shape[0], -1)[:, 0]


def cmd_verify(a) -> int:
    from .original import OriginalModel

    targets.check_target(a.target)
    if not 0 < a.agreement <= 1:
        raise BnncError(f"--agreement must be in (0, 1] (got {a.agreement})")
    _check_outputs(a, "stats")
    opts = _target_options(a)
    model, graph = compile_file(a.model, _options(a))
    if a.input:
        x = _load_npy(a.input)
    else:
        x = driver.random_samples(graph, a.samples, a.seed)
    inputs = driver.prepare_inputs(graph, x)
    t0 = time.time()
    # on stdout: stderr holds nothing but the one error line when verification fails with an error
    print(f"verifying {inputs.grid.shape[0]} samples of {a.model} on target '{a.target}'")
    try:
        orig = OriginalModel(model).run(inputs.model)
    except BnncError:
        raise
    except Exception as e:
        raise BnncError(f"onnxruntime cannot run the original model: {str(e).splitlines()[0][:200]}") from None
    ref = driver.run_target(graph, "ref", inputs)
    tgt, stats = targets.run(graph, a.target, inputs.grid, opts)
    if getattr(a, "stats", None):
        userfiles.write_files_atomically({a.stats: _json_bytes(stats, sort_keys=True)})
        print(f"wrote {a.stats}")
    orig = orig.reshape(ref.shape)
    n = ref.shape[0]
    same = np.array([np.array_equal(tgt[i], ref[i]) for i in range(n)])
    top_ref, top_orig = _top1(ref), _top1(orig.astype(ref.dtype) if ref.dtype.kind != "f" else orig)
    top_ok = top_ref == top_orig
    if ref.dtype.kind == "f":
        diff = np.abs(ref.astype(np.float64) - orig.astype(np.float64)).reshape(n, -1).max(axis=1)
        scale = max(1.0, float(np.abs(orig).max()))
        tol = a.rtol * scale
        close = diff <= tol
        diff_text = f"{diff.max():.3g} (tolerance {tol:.3g} = {a.rtol:g} x max(1, max|original|))"
    else:
        diff = (ref.reshape(n, -1) != orig.reshape(n, -1)).sum(axis=1).astype(float)
        close = diff == 0
        diff_text = f"{int(diff.max())} differing indices"
    rows = [("samples", str(n)),
            (f"{a.target} == reference (bit-exact)", f"{int(same.sum())}/{n}"),
            ("reference top-1 == original", f"{int(top_ok.sum())}/{n}"),
            ("reference vs original max abs diff", diff_text),
            ("time", f"{time.time() - t0:.2f} s")]
    w = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(w)}  {v}")
    exact = driver.approximations(graph) == []
    agree = top_ok & close if exact else top_ok
    bad = np.flatnonzero(~(same & agree))
    for i in bad[:5]:
        print(f"  sample {i}: target==ref {bool(same[i])}, top-1 ref {top_ref[i]} original {top_orig[i]}, "
              f"diff {diff[i]:.3g}")
    if bad.size == 0 and diff.max() > 0:  # the closest calls, so a user sees how near the tolerance they are
        worst = np.argsort(-diff, kind="stable")[:3]
        print("worst differences: " + ", ".join(f"sample {i} {diff[i]:.3g}" for i in worst if diff[i] > 0))
    # The original computes in float32: a sample whose value lies within its rounding of a quantizer
    # step can land on the other side of it there. The target must match the reference on every
    # sample; the reference must agree with the original on at least --agreement of them: same top-1
    # and, where the lowered model is exact, a difference within the tolerance. Where bnnc states an
    # approximation (real-valued layers on a fixed-point grid, `bnnc report` gives the bounds), the
    # difference is reported, and top-1 must agree.
    ok = bool(same.all()) and agree.mean() >= a.agreement
    if not exact:
        print(f"approximations (stated by bnnc report): {'; '.join(driver.approximations(graph)[:3])}; "
              f"{int(close.sum())}/{n} samples within the tolerance")
    if ok and not agree.all():
        print(f"{int((~agree).sum())} of {n} samples differ from the original: "
              f"{agree.mean():.1%} agree, at least {a.agreement:.1%} required (--agreement)")
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def cmd_report(a) -> int:
    from .report import format_table, report

    opts = _target_options(a)
    target = a.target or opts.mcu
    if target is not None:
        targets.check_target(target)
    _check_outputs(a, "json")
    _, graph = compile_file(a.model, _options(a))
    rep = report(driver.backend_graph(graph))
    print(format_table(rep))
    extra = targets.report(graph, target, opts) if target is not None else None
    if extra:
        print()
        print(extra["text"])
        rep[target] = extra["json"]
    if a.json:
        userfiles.write_files_atomically({a.json: _json_bytes(rep)})
        print(f"wrote {a.json}")
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
    ns = argparse.Namespace(model=str(model_path), target="c", output=str(work / "c"), name="bnnc",
                            input_scale=None, input_range=None, mcu=None)
    cmd_compile(ns)
    ns = argparse.Namespace(model=str(model_path), target="c", input=str(work / "x.npy"), samples=0, seed=0,
                            name="bnnc", rtol=1e-4, input_scale=None, input_range=None, agreement=1.0)
    return cmd_verify(ns)


def _zoo_names() -> list:
    from . import zoo

    return zoo.names()


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bnnc", description="Compile binarized / compressed ONNX networks to bit-exact code.")
    p.add_argument("--version", action="version", version=f"bnnc {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    def model_args(sp, target_help="c"):
        sp.add_argument("model", help="ONNX file")
        if target_help:
            sp.add_argument("--target", default="c", help=f"{target_help} (default c)")
        else:
            sp.add_argument("--target", default=None,
                            help="add the figures of this target (verilog, hls, cortex-m0/m4/m7)")
        sp.add_argument("--name", default="bnnc", help="prefix of the generated identifiers (default bnnc)")
        sp.add_argument("--input-scale", default=None,
                        help="declare the input grid: real input = S * integer; per channel S1,S2,... "
                             "(1/D divides, as torchvision's ToTensor does with 1/255)")
        sp.add_argument("--input-range", default=None, help="LO:HI integer range of the declared input grid")
        sp.add_argument("--input-offset", default=None, help="per-channel offset added after the scale: O1,O2,...")
        sp.add_argument("--input-mean", default=None, help="per-channel mean subtracted (torchvision Normalize)")
        sp.add_argument("--input-std", default=None, help="per-channel std divided by (torchvision Normalize)")
        sp.add_argument("--frac-bits", type=int, default=None, metavar="F",
                        help="grid 2^-F of real-valued (residual) streams, which saturate at +-(2^23 - 1) steps "
                             "(default 16: +-128); finer follows the float model more closely in a narrower range")
        sp.add_argument("--weight-bits", action="append", default=None, metavar="[NODE=]B",
                        help="width of real-valued weights (all layers, or the ONNX node NODE): a narrower "
                             "grid, with the larger error bound bnnc report states (default: up to 24 bits)")
        sp.add_argument("--folding", default=None, help="verilog/hls: JSON {\"layers\": [{\"pe\": P, \"simd\": S}, ...]}")
        sp.add_argument("--target-cycles", type=int, default=None,
                        help="verilog/hls: choose the cheapest folding with at most this many cycles per frame")
        sp.add_argument("--clock-mhz", type=float, default=None,
                        help="verilog: the clock frames/s figures assume (default 200, not checked: "
                             "bench/bench_fpga.py measures Fmax)")
        sp.add_argument("--mcu", default=None, help="cortex-m0 | cortex-m4 | cortex-m7: firmware for this core")
        sp.add_argument("--flash", default=None, help="MCU flash budget in bytes (e.g. 256k); exceeding it is an error")
        sp.add_argument("--ram", default=None, help="MCU RAM budget in bytes (e.g. 64k); exceeding it is an error")

    all_targets = " | ".join(targets.TARGETS)

    sp = sub.add_parser("demo", help="compile a bundled example model, run it and check it")
    sp.add_argument("--seed", type=_non_negative_int, default=0)
    sp.add_argument("--dir", default=None, help="where to write the example (default: a temporary folder)")
    sp.add_argument("--zoo", default=None, metavar="NAME",
                    help="demo a bnnc.zoo model instead of TFC: " + ", ".join(_zoo_names()))
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("compile", help="write the generated sources (C, firmware, Verilog or HLS C++)")
    model_args(sp, " | ".join(targets.COMPILE_TARGETS))
    sp.add_argument("-o", "--output", required=True, help="output folder")
    sp.add_argument("--dump-ir", default=None, metavar="PATH",
                    help="also write the lowered IR (after the passes) as JSON (PATH.json) or Graphviz (PATH.dot)")
    sp.set_defaults(func=cmd_compile)

    sp = sub.add_parser("run", help="run the compiled model on inputs")
    model_args(sp, all_targets)
    sp.add_argument("--stats", default=None, help="write the target's figures (cycles, instructions...) as JSON")
    sp.add_argument("--input", required=True, help=".npy of shape (N, ...), one model input per sample")
    sp.add_argument("--output", default=None, help=".npy to write (N, ...) outputs to")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("verify", help="original model vs reference vs target")
    model_args(sp, all_targets)
    sp.add_argument("--stats", default=None, help="write the target's figures as JSON")
    sp.add_argument("--input", default=None, help=".npy of inputs (default: random samples)")
    sp.add_argument("--samples", type=int, default=100, help="random samples when no --input (default 100)")
    sp.add_argument("--seed", type=_non_negative_int, default=0)
    sp.add_argument("--agreement", type=float, default=0.99,
                    help="fraction of samples on which the reference must agree with the original model "
                         "(same top-1, difference within --rtol; default 0.99). The target must equal the "
                         "reference on every sample")
    sp.add_argument("--rtol", type=_non_negative_float, default=1e-4,
                    help="reference vs original tolerance, relative to max(1, max|original|) (default 1e-4)")
    sp.set_defaults(func=cmd_verify)

    sp = sub.add_parser("report", help="per-layer MACs, storage, pruning and arena figures")
    model_args(sp, target_help=None)
    sp.add_argument("--json", default=None, help="also write the report as JSON")
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
        if getattr(a, "samples", 1) is not None and getattr(a, "samples", 1) < 1 and a.cmd == "verify" \
                and not a.input:
            raise BnncError("--samples must be at least 1")
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
