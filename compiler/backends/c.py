"""C backend: renders templates/c/ from the packed, arena-planned IR.

The backend only formats what the passes computed (packed words, comparison tables, float32
chain constants, arena offsets) into C99; it derives no arithmetic of its own.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import jinja2
import numpy as np

from .. import ir
from ..arith import (EXP_COEFFS, GELU_INV_SQRT2, GELU_TERMS, GELU_TWO_OVER_SQRT_PI, GELU_Z_MAX, LN2_HI, LN2_LO, LOG2E,
                     LOG_COEFFS, SOFTMAX_CUTOFF, SQRT2)
from ..errors import BnncError
from ..passes.pack_bits import pack_bit_rows, pair_groups, storage_dtype, words
from ..passes.pack_families import GUESS_SHIFT, TSUM_POSITIONS
from ..passes.plan_arena import conv_scratch
from ..resources import resource_dir

C_TYPES = {"uint8": "uint8_t", "int8": "int8_t", "uint16": "uint16_t", "int16": "int16_t", "int32": "int32_t",
           "int64": "int64_t",
           "float32": "float"}
# the element types of integer activations as the runtime's kernels that read any of them name them
INT_TYPES = {"uint8": "BNNC_UINT8", "int8": "BNNC_INT8", "uint16": "BNNC_UINT16", "int16": "BNNC_INT16",
             "int32": "BNNC_INT32"}


# Kernel variants of host builds (the blocked weight layout), best first: one build carries them all
# and runs the best one the CPU has (runtime/bnnc_kernels.h); x86-64 only, but for "portable".
KERNEL_VARIANTS = ("avx512", "avx2", "portable")
# the tables only the AVX-512 variant reads
VNNI_GUARD = "defined(BNNC_X86_VARIANTS)"


def sanitize_identifier(name: str) -> str:
    """A C identifier made from user text, or an error when nothing usable remains."""
    if not isinstance(name, str) or not re.search(r"[A-Za-z0-9]", name):
        raise BnncError(f"--name {name!r} does not make a C identifier (it needs a letter or digit)")
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not s or not re.match(r"[A-Za-z_]", s[0]):
        s = "m_" + s
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", s):
        raise BnncError(f"--name '{name}' does not make a C identifier")
    return s


def comment_text(text: str) -> str:
    """Model-provided text made safe inside a C comment."""
    return re.sub(r"[^A-Za-z0-9_.,:;=+\-#()\[\] ]", "_", str(text))[:120]


def c_float(x: float) -> str:
    x = float(np.float32(x))
    if not np.isfinite(x):
        raise BnncError(f"a model constant is {x}; bnnc cannot emit non-finite constants")
    if x == 0.0:
        return "-0.0f" if np.signbit(x) else "0.0f"
    return x.hex() + "f"


def c_array(values, kind: str, per_line: int = 12, float_fmt=c_float) -> str:
    """Comma-separated initializer text for a flat array (`float_fmt` writes a float literal)."""
    v = np.asarray(values).ravel()
    if kind == "float":
        items = [float_fmt(x) for x in v]
        per_line = 6
    else:
        ints = v.tolist() if v.dtype.kind in "iu" else [int(x) for x in v]  # Python ints: fast to format
        if kind == "word64":
            items = [f"0x{x:016x}u" for x in ints]
            per_line = 6
        elif kind == "word32":
            items = [f"0x{x:08x}u" for x in ints]
            per_line = 8
        else:
            items = list(map(str, ints))
            per_line = 20
    lines = [", ".join(items[i: i + per_line]) for i in range(0, len(items), per_line)]
    return ",\n  ".join(lines) if lines else "0"


# Byte tables from this size on are written as one string literal: compilers read that 10-20x faster
# than a list of numbers, in a fifth of the memory (4 M bytes: gcc 12 -O2 8.6 s and 400 MB against
# 0.5 s and 90 MB; clang 3.7 s against 0.2 s), which decides the build time of large integer layers
STRING_TABLE_BYTES = 1 << 16
# the octal escape of each byte value, left-aligned in 4 bytes padded with zero bytes (which the text drops)
_OCTAL_ESCAPES = np.array([list(("\\%o" % v).encode().ljust(4, b"\0")) for v in range(256)], np.uint8)
_STRING_LINE_BREAK = np.frombuffer(b'"\n  "', np.uint8)
_STRING_CHUNK_LINES = 1 << 14  # lines formatted at a time: bounded memory for tables of 100 MB


def c_string(values, signed: bool, per_line: int = 64) -> str:
    """Lines of a C string literal holding the bytes of an int8 (`signed`) or uint8 array: octal
    escapes, each ended by the next one's backslash or the line's closing quote. Formatted with
    table lookups (a large layer's weights are tens of MB)."""
    v = np.asarray(values).ravel()
    v = v if v.dtype.kind in "iu" else v.astype(np.int64)
    lo, hi = (-128, 127) if signed else (0, 255)
    if v.size and (int(v.min()) < lo or int(v.max()) > hi):
        raise ValueError(f"a byte table holds a value outside [{lo}, {hi}]")
    b = v.astype(np.uint8)  # two's complement bytes of int8 values
    lines = -(-b.size // per_line)
    if not lines:
        return ""
    pad = lines * per_line - b.size
    b = np.concatenate([b, np.zeros(pad, np.uint8)])  # whole lines; the padding's escapes are cut below
    parts = ['"']
    for first in range(0, lines, _STRING_CHUNK_LINES):
        rows = b[first * per_line: (first + _STRING_CHUNK_LINES) * per_line].reshape(-1, per_line)
        cells = _OCTAL_ESCAPES[rows].reshape(rows.shape[0], per_line * 4)
        breaks = np.broadcast_to(_STRING_LINE_BREAK, (rows.shape[0], _STRING_LINE_BREAK.size))
        text = np.concatenate([cells, breaks], axis=1).ravel()
        parts.append(text[text != 0].tobytes().decode("ascii"))
    # the last line ends with the padding's escapes ("\\0", two characters each) and a line break
    parts[-1] = parts[-1][: len(parts[-1]) - 2 * pad - _STRING_LINE_BREAK.size]
    parts.append('"')
    return "".join(parts)


def _same_bits(a: np.ndarray) -> bool:
    """Rows of `a` all equal the first one, bit for bit (a float32 -0 apart from 0)."""
    if a.dtype.kind == "f":
        a = np.ascontiguousarray(a, np.float32).view(np.uint32)
    return bool(np.all(a == a[:1]))


def per_channel(values: np.ndarray, n_c: int):
    """The first n_c of the flat `values` (elements of n_c channels, channel last) when they repeat
    every n_c elements, bit for bit (a per-channel constant spread over a map); else None."""
    if n_c and values.size > n_c and values.size % n_c == 0 and _same_bits(values.reshape(-1, n_c)):
        return values[:n_c]
    return None


def chain_ctx(ops, index: str, prefix: str, consts: list, float_fmt=c_float, channels: tuple = (0, "")) -> list:
    """C (or C++) statements of a float32 chain on `v`; per-channel constants become arrays.
    `float_fmt` writes a float literal (C99 hex floats by default). `channels` = (C, name): `index`
    counts elements of C channels, channel `name` last; a table that repeats every C elements (a
    per-channel constant of an element-wise chain, e.g. an input's mean and std) keeps C values,
    indexed by `name`."""
    stmts = []
    for i, op in enumerate(ops):
        if op.op == "relu":
            stmts.append("v = v > 0.0f ? v : 0.0f;")
            continue
        if op.op not in ("mul", "add", "sub", "div"):  # a tanh: the frontend lets it reach only thresholds
            raise BnncError(f"'{prefix}': a {op.op} in a real-valued output chain has no generated-code form")
        sym = {"mul": "*", "add": "+", "sub": "-", "div": "/"}[op.op]
        c = np.asarray(op.const, dtype=np.float32)
        flat = c.ravel()
        if _same_bits(flat):
            stmts.append(f"v = v {sym} {float_fmt(flat[0])};")
            continue
        name, at = f"{prefix}_c{i}", index
        first = per_channel(flat, channels[0])
        if first is not None:
            flat, at = first, channels[1]
        consts.append({"name": name, "ctype": "float", "n": flat.size, "init": c_array(flat, "float", float_fmt=float_fmt)})
        stmts.append(f"v = v {sym} {name}[{at}];")
    return stmts


def input_terminal_ctx(term, float_fmt=c_float) -> dict:
    """Template values of the terminal of a float input quantizer (term: its kind; t: a single
    threshold; qmin / qmax / zp / add_after / mode_round and the float clamp bounds of a
    quantizer); refuses what a bit or the templates cannot hold."""
    ctx = {"term": type(term).__name__}
    if isinstance(term, ir.SignTerminal):
        if term.zero_maps_to == 0:
            raise BnncError(f"'{term.source}': ONNX Sign on the float model input can produce 0, "
                            "which a bit cannot hold; declare the input grid with --input-scale")
    elif isinstance(term, ir.ThresholdTerminal):
        if term.thresholds.size != 1:
            raise BnncError(f"'{term.source}': per-element input thresholds on a float input are not supported")
        ctx["t"] = float_fmt(term.thresholds.ravel()[0])
    else:
        add = getattr(term, "add_after_round", 0)
        ctx.update(qmin=term.qmin, qmax=term.qmax, zp=term.zero_point, add_after=add, mode_round=term.mode,
                   lo_clamp=float_fmt(term.qmin - add - 1), hi_clamp=float_fmt(term.qmax - add + 1))
    return ctx


def _row_unrolling(taps: int) -> dict:
    """How a row kernel covers `taps` words: 3-word steps (a 2- or 1-word step for the rest),
    fully unrolled up to 16 steps, else a loop of 8 steps per turn (code size stays bounded).
    row_steps lists them in order ("loop" for the loop); the first one starts the row."""
    groups = taps // 3
    loop = groups // 8 if groups > 16 else 0
    rest = [3] * (groups - 8 * loop) + ([taps % 3] if taps % 3 else [])
    steps = ([rest[0]] if rest else []) + (["loop"] if loop else []) + rest[1:]
    return {"loop_groups": loop, "row_steps": steps}


def xor3_groups(rows: np.ndarray, first: int = 0) -> np.ndarray:
    """Word rows (..., L) with each whole group of 3 words v0, v1, v2 from word `first` on as its
    parities v0 ^ v1, v1 ^ v2, v0 ^ v1 ^ v2: the filters of MCU row kernels built with
    BNNC_XOR3_GROUPS (runtime/bnnc_kernels.h, whose bnnc_xor3_groups does the same to each
    window); `first`: the words of a row's leading 1- or 2-word step (_row_unrolling)."""
    out = rows.copy()
    for i in range(first, rows.shape[-1] - 2, 3):
        v0, v1, v2 = rows[..., i], rows[..., i + 1], rows[..., i + 2]
        out[..., i], out[..., i + 1], out[..., i + 2] = v0 ^ v1, v1 ^ v2, v0 ^ v1 ^ v2
    return out


def row_thresholds(p, wb: int) -> np.ndarray:
    """The thresholds of a binary row layer (MCU) as t, bit set where count >= t: thr + 1 within
    [0, max count + 1], so that an unsigned compare's carry is the bit (BNNC_T2_WORD)."""
    return np.clip(p.thr.astype(np.int64) + 1, 0, wb * p.taps + 1)


def build_context(graph: ir.Graph, name: str = "bnnc", xor3: bool = False) -> dict:
    """Template values of the generated C; xor3 (MCU cores whose row kernels use them): the
    binary row layers' filters and windows in parity groups (BNNC_XOR3_GROUPS)."""
    prefix = sanitize_identifier(name)
    wb = graph.word_bits
    word_kind = "word64" if wb == 64 else "word32"
    arena = graph.arena
    in_info, out_info = graph.input_info, graph.output_info
    layers, consts = [], []

    def buf(t: str) -> str:
        if t == graph.output and not out_info.get("channels_first"):
            return "output"
        if t == graph.input:
            return "input"
        return f"(arena + {arena['buffers'][t]})"

    family = {f.name for f in ir.family_ops(graph)}
    for op in graph.ops():
        src_t = graph.tensors[op.inputs[0]] if op.inputs[0] in graph.tensors else None
        oty = graph.tensors[op.outputs[0]]
        L = {"name": op.name, "kind": type(op).__name__, "src": buf(op.inputs[0]), "dst": buf(op.outputs[0]),
             "out_type": type(oty).__name__, "comment": comment_text(
                 ", ".join(getattr(op, "source_ops", []) or [op.name]))}
        if isinstance(oty, ir.Ints):
            L["out_ctype"] = C_TYPES[storage_dtype(oty)]
        if isinstance(src_t, ir.Ints):
            L["in_ctype"] = C_TYPES[storage_dtype(src_t)]
            L["in_type"] = INT_TYPES.get(storage_dtype(src_t))
        if isinstance(op, ir.Conv):
            if isinstance(src_t, ir.Ints) and storage_dtype(src_t) not in INT_TYPES:
                # the convolution kernels read 32-bit input windows (bnnc_load_int)
                raise BnncError(f"layer '{(op.source_ops or [op.name])[0]}' reads values beyond 32 bits (e.g. a "
                                "large global average pool of a fixed-point stream); quantize them before the layer")
            L.update(conv_ctx(op, src_t, oty))
        if op.name in family:  # compressed-family layers: family_layer() below, templates/c/families/
            layers.append(family_layer(graph, op, L, consts, buf))
            continue
        if isinstance(op, ir.InputQuantize):
            p = op.packed
            c, h, w = tuple(op.in_shape) + (1,) * (3 - len(op.in_shape))  # a vector input is (C,) or (C, L)
            flat = getattr(op, "flat", False) or op.channels_last  # the output keeps the input's order
            L.update(mode=p.mode, c=c, h=h, w=w, flat=flat, n=c * h * w, cw=words(oty.shape[2], wb),
                     out_c=oty.shape[2], pixels=c * h * w // oty.shape[2])
            if p.mode == "thresholds":
                thr, neg = p.thr.ravel(), p.neg.ravel()
                L["thr_index"] = "0" if thr.size == 1 else "e"
                firsts = [per_channel(a, oty.shape[2]) for a in (thr, neg)]
                if all(f is not None for f in firsts):  # per channel, as declared
                    (thr, neg), L["thr_index"] = firsts, "c"
                const_table(consts, f"{op.name}_thr", "int32_t", thr)
                const_table(consts, f"{op.name}_neg", "uint8_t", neg)
            elif p.mode == "float":
                L["chain"] = chain_ctx(op.chain.ops, "e", op.name, consts, channels=(oty.shape[2], "c"))
                L.update(input_terminal_ctx(op.chain.terminal))
        elif isinstance(op, ir.Conv):
            p = op.packed
            L.update(scratch=f"(arena + {arena['buffers'][op.name + '_scratch']})",
                     buf_offset=conv_scratch(op, src_t, wb)["buf"], acc16=p.acc16, layout=p.layout, dense=p.dense,
                     c=src_t.shape[2], wb=wb, pairs=p.pairs, xor3=False, **_row_unrolling(p.taps))
            wtype, wkind = ("bnnc_word_t", word_kind) if p.in_kind == "bits" else ("int8_t", "int")
            weights = p.weights[0]
            if xor3 and p.layout == "rows" and p.in_kind == "bits":
                first = L["row_steps"][0] if L["row_steps"][0] in (1, 2) else 0
                weights, L["xor3"], L["xor3_first"] = xor3_groups(weights, first), p.taps >= 3, first
            # binary rows with one threshold per filter and no inner loop: each filter's threshold
            # follows its row, loaded with the row's last words (BNNC_T2_WORD_T)
            L["thr_in_w"] = (p.layout == "rows" and p.in_kind == "bits" and p.thr is not None and p.ny * p.nx == 1
                             and "loop" not in L["row_steps"])
            if L["thr_in_w"]:
                weights = np.concatenate([weights, row_thresholds(p, wb).reshape(p.o, 1).astype(weights.dtype)], axis=1)
            if p.pairs:  # the int16 pairs as int16_t, tap 2g first (the assembly reads them as words)
                wtype, weights = "int16_t", int16_halves(weights)
            const_table(consts, f"{op.name}_w", wtype, weights, wkind, align=p.layout == "blocked" or p.pairs)
            if p.vnni_offset is not None:
                vnni_tables(consts, op.name, p.weights_vnni, p.vnni_corr)
            if p.pairs or p.thr is not None:  # (a real-valued output reads them for its corrections only)
                window_class_tables(consts, op.name, p)
            if p.pairs:
                int16_pair_tables(consts, op, p, L)
                if p.thr is None:
                    L["chain"] = chain_ctx(op.epilogue.ops, "o", op.name, consts)
            elif p.thr is not None:
                thr = row_thresholds(p, wb) if p.layout == "rows" and p.in_kind == "bits" else p.thr
                if not L["thr_in_w"]:
                    const_table(consts, f"{op.name}_thr", "int32_t", thr, align=p.layout == "blocked")
                if p.layout == "rows":  # one word of WB output bits per output word
                    negw = pack_bit_rows(np.where(p.neg > 0, -1, 1)[None, :], wb)[0]
                    const_table(consts, f"{op.name}_neg", "bnnc_word_t", negw, word_kind)
                else:
                    const_table(consts, f"{op.name}_neg", "uint32_t", p.neg_words, "word32")
            else:
                L["has_corr"] = bool(np.any(p.corr != 0))
                if L["has_corr"]:
                    window_class_tables(consts, op.name, p)
                    const_table(consts, f"{op.name}_corr", "int32_t", p.corr)
                L["has_kmul"] = bool(np.any(p.kmul == 0))
                if L["has_kmul"]:
                    const_table(consts, f"{op.name}_kmul", "int8_t", p.kmul)
                L["chain"] = chain_ctx(op.epilogue.ops, "o", op.name, consts)
        elif isinstance(op, ir.MaxPool):
            h, w, c = src_t.shape
            oh, ow = oty.shape[:2]
            L.update(ih=h, iw=w, c=c, oh=oh, ow=ow, kh=op.kernel[0], kw=op.kernel[1], sh=op.stride[0],
                     sw=op.stride[1], pt=op.pads[0], pl=op.pads[1], bits=isinstance(src_t, ir.Bits),
                     cw=words(c, wb))
        elif isinstance(op, ir.GlobalSumPool):
            h, w, c = src_t.shape
            # the sum's accumulator: 64 bits where the proven range needs it (large pools of streams)
            L.update(hw=h * w, c=c, bits=isinstance(src_t, ir.Bits), cw=words(c, wb),
                     acc_ctype="int64_t" if storage_dtype(oty) == "int64" else "int32_t")
        elif isinstance(op, ir.Flatten):
            L["n"] = int(np.prod(src_t.shape))
        elif isinstance(op, ir.Unflatten):
            L.update(n=int(np.prod(src_t.shape)), h=oty.shape[0], w=oty.shape[1], c=oty.shape[2],
                     order=op.order is not None, bits=isinstance(src_t, ir.Bits), cw=words(oty.shape[2], wb))
            if op.order is not None:
                const_table(consts, f"{op.name}_order", "uint16_t" if src_t.shape[2] < 65536 else "uint32_t", op.order)
        elif isinstance(op, ir.Gather) and op.index is not None:
            bits = isinstance(src_t, ir.Bits)
            c = src_t.shape[2]
            L.update(by_index=True, bits=bits, n=int(op.index.size), pixels=oty.shape[0] * oty.shape[1], c=c,
                     cw=words(c, wb), oc=oty.shape[2], ocw=words(oty.shape[2], wb))
            const_table(consts, f"{op.name}_index", "uint16_t" if src_t.shape[0] * src_t.shape[1] * c < 65536
                        else "uint32_t", op.index.reshape(-1))
        elif isinstance(op, ir.Gather):
            h, w, c = src_t.shape
            bits = isinstance(src_t, ir.Bits)
            # a pixel: its words of bits, or its channels' integers; with a channel table, one
            # output channel (or bit) at a time
            L.update(by_index=False, iw=w, oh=len(op.rows), ow=len(op.cols), bits=bits, cw=words(c, wb), c=c,
                     oc=oty.shape[2], ocw=words(oty.shape[2], wb), channels=op.channels is not None)
            tables = [("rows", op.rows), ("cols", op.cols)] + ([("channels", op.channels)] if op.channels else [])
            for axis, table in tables:
                const_table(consts, f"{op.name}_{axis}", "uint16_t" if max(h, w, c) < 65536 else "uint32_t", table)
        elif isinstance(op, ir.ArgMax):
            L.update(n=src_t.shape[2], k=op.k)
        elif isinstance(op, ir.Concat):
            L.update(concat_ctx(graph, op, oty))
            L["call_args"] = f"{', '.join(buf(t) for t in op.inputs)}, {L['dst']}"
        elif isinstance(op, ir.Softmax):
            h, w, c = src_t.shape
            L.update(pixels=h * w, c=c, log=op.log, **exp_ctx())
            if op.log:
                L.update(sqrt2=c_double(SQRT2), log_coeffs=[c_double(x) for x in LOG_COEFFS])
            else:
                L["grid"] = None
                if op.out_grid is not None:
                    scale, zp, qmin, qmax = op.out_grid
                    L["grid"] = {"scale": c_float(np.float32(scale)), "zp": c_float(np.float32(zp)),
                                 "qmin": c_float(np.float32(qmin)), "qmax": c_float(np.float32(qmax)),
                                 "integers": isinstance(oty, ir.Ints), "requant": None, "out_zp": c_float(np.float32(zp))}
                    if op.requant is not None:
                        L["grid"]["requant"] = [c_float(np.float32(x)) for x in op.requant]
                        L["grid"]["out_zp"] = L["grid"]["requant"][0]
                L["call_args"] = f"{L['src']}, {L['dst']}, (arena + {arena['buffers'][op.name + '_scratch']})"
        elif isinstance(op, (ir.Sigmoid, ir.Gelu)):
            L.update(n=int(np.prod(oty.shape)), in_scale=c_double(op.in_scale), grid=c_double(2.0**op.frac_bits),
                     frac_bits=op.frac_bits, **exp_ctx())
            if isinstance(op, ir.Gelu):
                L.update(inv_sqrt2=c_double(GELU_INV_SQRT2), two_over_sqrt_pi=c_double(GELU_TWO_OVER_SQRT_PI),
                         z_max=c_double(GELU_Z_MAX), terms=GELU_TERMS)
        layers.append(L)
    in_dtype = in_info["dtype"]
    return {
        "prefix": prefix,
        "PREFIX": prefix.upper(),
        "word_bits": wb,
        "xor3_groups": xor3,
        "input_ctype": C_TYPES[in_dtype],
        "input_size": int(np.prod(in_info["shape"])),
        "input_shape": in_info["shape"],
        "output_ctype": C_TYPES[out_info["dtype"]],
        "output_size": out_info["elements"],
        "output_shape": out_info["shape"],
        # a feature-map output: the last layer writes (H, W, C) into the arena, _run transposes it
        "output_transpose": {"src": buf(graph.output), "c": out_info["shape"][1],
                             "pixels": out_info["shape"][2] * out_info["shape"][3]}
        if out_info.get("channels_first") else None,
        "arena_bytes": max(arena["size"], 64),
        # what an app-supplied arena must be aligned to: the planner's buffer alignment, at least
        # int64_t's and double's (8)
        "arena_align": max(int(arena.get("align", 64)), 8),
        "layers": layers,
        "families": bool(family),
        # MCU builds (row layout) have one set of kernels, chosen by the compiler flags
        "variants": list(KERNEL_VARIANTS) if getattr(graph, "weight_layout", "blocked") == "blocked" else [],
        "consts": consts,
        "grid": in_info.get("grid", {}),
        "model_name": comment_text(in_info.get("onnx_name", "")),
    }


def exp_ctx() -> dict:
    """The constants of arith.softmax_exp (Softmax, Sigmoid) as C literals."""
    return dict(cutoff=c_double(SOFTMAX_CUTOFF), log2e=c_double(LOG2E), ln2_hi=c_double(LN2_HI),
                ln2_lo=c_double(LN2_LO), coeffs=[c_double(x) for x in EXP_COEFFS])


def c_double(x: float) -> str:
    """A C99 hex literal of the float64 `x`, exactly."""
    return float(x).hex()


def concat_ctx(graph: ir.Graph, op: ir.Concat, oty) -> dict:
    """Template values of a Concat: per input its channel offset, channels, words (bits) or
    storage type and shift (integers)."""
    wb = graph.word_bits
    parts, off = [], 0
    for i, t in enumerate(op.inputs):
        ty = graph.tensors[t]
        c = ty.shape[2]
        part = {"off": off, "c": c, "cw": words(c, wb)}
        if isinstance(ty, ir.Ints):
            part.update(ctype=C_TYPES[storage_dtype(ty)], mult=2 ** op.shifts[i])
        parts.append(part)
        off += c
    h, w, c = oty.shape
    return {"parts": parts, "pixels": h * w, "c": c, "cwo": words(c, wb), "bits": isinstance(oty, ir.Bits)}


def conv_ctx(op: ir.Conv, src, oty) -> dict:
    """Template values of every packed convolution, both kernel sets: geometry (the padded input
    ph x pw included), the packed widths, the epilogue, the VNNI offset and groups, the kernel."""
    p = op.packed
    ih, iw = src.shape[:2]
    oh, ow = oty.shape[:2]
    t, left, b, r = op.pads
    return dict(ih=ih, iw=iw, oh=oh, ow=ow, kh=op.kernel[0], kw=op.kernel[1], sh=op.stride[0], sw=op.stride[1],
                pt=t, pl=left, pb=b, pr=r, ph=ih + t + b, pw=iw + left + r, in_kind=p.in_kind, cw=p.cw_in,
                taps=p.taps, o=p.o, opad=p.o_pad, k_full=p.k_full, ny=p.ny, nx=p.nx, cwo=p.cw_out,
                epilogue=p.epilogue, vnni=p.vnni_offset is not None, vnni_offset=p.vnni_offset,
                groups=-(-op.kernel[1] * p.cw_in // 4), kernel=conv_kernel(p))


def conv_kernel(p) -> str:
    """The kernel of the convolution packed as `p` (pack_bits.PackedConv), for every weight code: the
    one place that maps the weight code and its tables (p.code, p.acc64: which kernel set), the
    input's code (p.in_kind), the proven widths (acc16, acc32, int8_weights) and the target (the
    layout: host "blocked" or MCU "rows"; MCU int16 inputs: pairs) to a runtime kernel,
    bnnc_<name> of runtime/bnnc_kernels.h or bnnc_families.h ("xnor_rows": the MCU row kernel the
    template generates per layer). The AVX-512 variant runs bnnc_int_mac_vnni instead where the
    layer has VNNI tables (p.vnni_offset)."""
    if p.in_kind == "bits":
        if p.acc64:  # one popcount per weight plane, then gains
            return "fam_plane_popcount"
        if p.layout == "rows":
            return "xnor_rows"
        return "binary_pixel" if p.thr is not None else "xnor_popcount"
    if p.pairs:  # MCU builds, values and weights in int16: bnnc_int16_mac (pack_bits.int16_pair_weights)
        return "int16_pairs"
    if not p.acc64:  # +-1 weights: int32 or, where bnnc proved the window sum fits, int16 sums
        return "int_mac16" if p.acc16 else "int_mac"
    if p.depthwise is not None:  # one input channel per output
        return "depthwise_mac32"
    if p.tsums is not None:  # two weight values per output channel, int64: adds over the nonzero taps
        return "ternary_sums64"
    if p.sparse is not None:  # expander lists
        return "sparse_int_mac32" if p.acc32 else "sparse_int_mac64"
    return ("int_mac" if p.acc32 else "int_mac64_w8") if p.int8_weights else "int_mac64"


def int16_halves(words: np.ndarray) -> np.ndarray:
    """uint32 words of two int16 values -> the int16 values, low half first."""
    w = np.asarray(words, np.int64).ravel()
    halves = np.stack([w & 0xFFFF, w >> 16], axis=-1).ravel()
    return np.where(halves >= 2**15, halves - 2**16, halves)


def int16_pair_ctx(op, p) -> dict:
    """Template values of an int16-pair layer (either packer): the window's pairs (row_pairs),
    walked as `mac_chunks` unrolled steps of 16 pairs and `mac_rest` pairs (longer windows loop
    over chunks, code size stays bounded), its channel groups (pack_bits.pair_groups: g8 of 8, one
    of gt = 0, 4 or 6, g2 of 2) and the band values from one output column to the next."""
    g8, gt, g2 = pair_groups(p.o)
    chunks, rest = (p.row_pairs // 16, p.row_pairs % 16) if p.row_pairs > 32 else (0, p.row_pairs)
    return {"row_pairs": p.row_pairs, "mac_chunks": chunks, "mac_rest": rest, "g8": g8, "gt": gt, "g2": g2,
            "band_step": op.stride[1] * op.kernel[0] * p.cw_in}


def int16_pair_tables(consts: list, op, p, L: dict) -> None:
    """Tables and template values of the int16-pair kernel (pack_bits.int16_pair_weights): the
    accumulator starts per class (init) and, for bit outputs, per output word NOT neg on the
    word's channels (negx) and how each output word's channels are walked (pair_words: n words
    of g8 groups of 8, a group of gt and g2 groups of 2 channels, the bits shifted right by `shift` and masked
    with `valid`; `packed`: full words gather 8 sign bits per group with bnnc_signs8)."""
    wb = p.word_bits
    ones = (1 << wb) - 1
    const_table(consts, f"{op.name}_init", "int32_t", p.init)
    L.update(int16_pair_ctx(op, p), oe=p.init.shape[1],
             group_sums=0 if p.thr is not None else p.init.shape[1] * 4)  # after the position's sums (plan_arena)
    if p.thr is None:
        return
    negw = pack_bit_rows(np.where(p.neg > 0, -1, 1)[None, :], wb)[0].astype(object)
    full, tail = divmod(p.o, wb)
    valid = [ones] * full + ([(1 << tail) - 1] if tail else [])
    negx = [(~int(n)) & v for n, v in zip(negw, valid)]
    const_table(consts, f"{op.name}_negx", "bnnc_word_t", negx, "word64" if wb == 64 else "word32")
    lit = (lambda v: f"(bnnc_word_t)0x{v:016x}ull") if wb == 64 else (lambda v: f"0x{v:08x}u")
    packed = wb == 32  # sign bits gathered 8 at a time (pack_bits.int16_pair_lanes)
    words = [{"n": full, "first": 0, "g8": wb // 8, "gt": 0, "g2": 0, "shift": 0, "valid": lit(ones),
              "packed": packed}] if full else []
    if tail:
        g8, gt, g2 = pair_groups(tail)  # the last word's channels (the layer's tail groups)
        words.append({"n": 1, "first": full, "g8": g8, "gt": gt, "g2": g2, "shift": wb - tail - tail % 2,
                      "valid": lit(valid[-1]), "packed": packed})
    L["pair_words"] = words


def const_table(consts: list, name: str, ctype: str, values, kind: str = "int", **extra) -> None:
    """Append the constant array `name` (c_array's `kind` of literals; extra: align, guard). A byte
    table of STRING_TABLE_BYTES or more is a string literal instead (`c_string`)."""
    n = int(np.asarray(values).size)
    if kind == "int" and ctype in ("int8_t", "uint8_t") and n >= STRING_TABLE_BYTES:
        consts.append({"name": name, "ctype": ctype, "n": n, "string": c_string(values, ctype == "int8_t"), **extra})
        return
    consts.append({"name": name, "ctype": ctype, "n": n, "init": c_array(values, kind), **extra})


def window_class_tables(consts: list, name: str, p) -> None:
    """The window class of each output row / column (ycls, xcls) of a convolution whose border
    windows differ (p.ny or p.nx > 1; the packers of every weight code give them)."""
    for axis, n, cls in (("y", p.ny, p.ycls), ("x", p.nx, p.xcls)):
        if n > 1:
            const_table(consts, f"{name}_{axis}cls", "uint8_t" if n < 256 else "uint16_t", cls)


def vnni_tables(consts: list, name: str, w_vnni, corr) -> None:
    """The weights and corrections of bnnc_int_mac_vnni (any weight code with byte inputs): the
    AVX-512 variant reads them instead of the layer's other weight table."""
    const_table(consts, f"{name}_w_vnni", "int8_t", w_vnni, align=True, guard=VNNI_GUARD)
    const_table(consts, f"{name}_vnni_corr", "int32_t", corr, guard=VNNI_GUARD)


def family_layer(graph: ir.Graph, op, L: dict, consts: list, buf) -> dict:
    """Context of a compressed-family layer (ir.family_ops: compressed-family convolutions, Activation,
    Add, SumPool, Mul) for templates/c/families/layer.j2; the tables come from passes/pack_families."""
    wb = graph.word_bits
    word_kind = "word64" if wb == 64 else "word32"
    src, oty = graph.tensors[op.inputs[0]], graph.tensors[op.outputs[0]]

    def table(suffix: str, ctype: str, values, kind: str = "int", **extra) -> None:
        const_table(consts, f"{op.name}_{suffix}", ctype, values, kind, **extra)

    def gain(suffix: str, values) -> dict:  # a per-channel multiplier: a table, or one value for all
        if np.all(values == values[0]):  # uniform: a literal
            return {"table": "NULL", "value": int(values[0])}
        table(suffix, "int64_t", values)
        return {"table": f"{op.name}_{suffix}", "value": 0}

    if isinstance(op, ir.Conv):
        p = op.packed
        L.update(family="conv", method=p.method, sums_offset=p.sums_offset, sums_rows=max(1, len(p.bit_planes)),
                 buf_offset=p.window_offset, windows=p.windows)
        L["call_args"] = f"{L['src']}, {L['dst']}, (arena + {graph.arena['buffers'][op.name + '_scratch']})"
        window_class_tables(consts, op.name, p)
        table("corr", "int64_t", p.corr)
        if p.in_kind == "bits":
            for i, w in enumerate(p.weights):
                table(f"w{i}", "bnnc_word_t", w, word_kind, align=True)
            L["bit_planes"] = [{"kind": f"BNNC_PLANE_{pl.kind.upper()}",
                                "b": f"{op.name}_w{pl.tables[0]}" if pl.kind != "and" else "NULL",
                                "m": f"{op.name}_w{pl.tables[-1]}" if pl.kind != "xnor" else "NULL"}
                               for pl in p.bit_planes]
            L["window_gain"] = p.window_gain is not None
            L["accumulate"] = accumulate_args([gain(f"g{j}", pl.gain) for j, pl in enumerate(p.bit_planes)],
                                              gain("gw", p.window_gain) if L["window_gain"] else None)
        else:
            L["accumulate"] = accumulate_args([{"table": "NULL", "value": 1}])  # the kernel's sums
            vnni = p.weights_vnni is not None
            if p.sparse is not None:  # expander lists (32-bit words; host builds use the dense table)
                table("start", "int32_t", p.sparse["start"])
                table("chan", "int32_t", p.sparse["chan"])
                table("sw", "int32_t", p.sparse["w"])
            elif p.depthwise is not None:  # one input channel per output, on the image
                L["dw_gather"] = p.depthwise["gather"]
                if L["dw_gather"]:
                    table("dwc", "int32_t", p.depthwise["chan"][:p.o])
                table("dww", "int8_t", p.depthwise["w"], align=True)
            elif p.tsums is not None:  # the nonzero taps' lists and each channel's two weights
                table("toff", "int32_t", p.tsums["off"])
                table("tstart", "int32_t", p.tsums["start"])
                table("ta", "int64_t", p.tsums["a"])
                table("tb", "int64_t", p.tsums["b"])
                nq = p.tsums["nq"]
                L.update(plen=p.tsums["plen"], tsum_pw=p.tsums["pw"], tsum_zeros=p.tsums["zeros"], nq=nq,
                         tsum_image=p.tsums["image"], tsum_rest=-(-(nq % TSUM_POSITIONS) // 8))
            elif p.pairs:
                L.update(int16_pair_ctx(op, p))
                table("w0", "int16_t", int16_halves(p.weights[0]), align=True)
                if L["g8"] or L["gt"]:  # the sums start at 0 (corr comes after)
                    table("zero", "int32_t", np.zeros(8, np.int64))
            else:
                table("w0", "int8_t" if p.int8_weights else "int32_t", p.weights[0])
            L["image"] = p.image  # in_ctype: build_context
            if vnni:
                vnni_tables(consts, op.name, p.weights_vnni, p.vnni_corr)
        ep = op.epilogue
        if p.epilogue == "bits":
            table("thr", "int64_t", p.thr)
            table("neg", "uint8_t", p.neg)
            L["planes"] = p.planes
        elif p.epilogue == "levels":
            table("dir", "int8_t", p.direction)
            table("lthr", "int64_t", p.levels)
            L.update(base=ep.base, step=ep.step, levels=ep.threshold.shape[1], level_kernel=p.level_kernel)
            _level_guess_table(p, table, L)
        elif p.epilogue == "requant":
            _requant_tables(ep, p.o, table, L)
        else:
            L["chain"] = chain_ctx(ep.ops, "o", op.name, consts)
    elif isinstance(op, ir.Activation):
        p = op.packed
        h, w, c = src.shape
        L.update(family="activation", epilogue=p.epilogue, c=c, pixels=h * w, cwo=p.cw_out)
        L["call_args"] = f"{L['src']}, {L['dst']}"
        if p.epilogue == "bits":
            table("thr", "int64_t", p.thr)
            table("neg", "uint8_t", p.neg)
        elif p.epilogue == "levels":
            table("dir", "int8_t", p.direction)
            table("lthr", "int64_t", p.levels)
            L.update(base=op.epilogue.base, step=op.epilogue.step, levels=op.epilogue.threshold.shape[1],
                     level_kernel=p.level_kernel)
            _level_guess_table(p, table, L)
        else:
            _requant_tables(op.epilogue, c, table, L)
    elif isinstance(op, ir.Add):
        b = graph.tensors[op.inputs[1]]
        L.update(family="add", a_ctype=C_TYPES[storage_dtype(src)], b_ctype=C_TYPES[storage_dtype(b)],
                 n=int(np.prod(oty.shape)), sa=op.shifts[0], sb=op.shifts[1], lo=op.lo, hi=op.hi,
                 round_shift=op.round_shift)
        L["call_args"] = f"{buf(op.inputs[0])}, {buf(op.inputs[1])}, {L['dst']}"
    elif isinstance(op, ir.Mul):
        b = graph.tensors[op.inputs[1]]
        h, w, c = oty.shape
        L.update(family="mul", a_ctype=C_TYPES[storage_dtype(src)], b_ctype=C_TYPES[storage_dtype(b)],
                 pixels=h * w, c=c, per_channel=tuple(b.shape) != tuple(src.shape), lo=op.lo, hi=op.hi,
                 round_shift=op.round_shift)
        L["call_args"] = f"{buf(op.inputs[0])}, {buf(op.inputs[1])}, {L['dst']}"
    elif isinstance(op, ir.SumPool):
        h, w, c = src.shape
        oh, ow = oty.shape[:2]
        L.update(family="sumpool", iw=w, c=c, oh=oh, ow=ow, kh=op.kernel[0], kw=op.kernel[1], sh=op.stride[0],
                 sw=op.stride[1])
        if op.border_divisors:  # taps inside the input only, times each window's multiplier
            mult = np.ones((oh, ow), np.int64) if op.multipliers is None else op.multipliers
            L.update(border=True, ih=h, pt=op.pads[0], pl=op.pads[1],
                     acc_ctype="int64_t" if storage_dtype(oty) == "int64" else "int32_t")
            table("mult", "int32_t" if int(mult.max()) > 65535 else "uint16_t", mult.reshape(-1))
        L["call_args"] = f"{L['src']}, {L['dst']}"
    else:  # pragma: no cover - ir.family_ops lists only the kinds above
        raise BnncError(f"the C backend has no template for {type(op).__name__}")
    return L


def accumulate_args(planes: list, window: dict | None = None) -> str:
    """The arguments of bnnc_fam_accumulate after the sums' stride: the planes (the kernel's sums, or
    a bit layer's weight planes) with their gains and the window term, each gain a table
    {"table": name} or one value for every channel {"table": "NULL", "value": v}; literals, so that
    the call compiles to one expression per channel."""
    tables = [g["table"] for g in planes]
    tabs = "NULL" if all(t == "NULL" for t in tables) else f"(const int64_t *const[]){{{', '.join(tables)}}}"
    gains = f"(const int64_t[]){{{', '.join(str(g['value']) for g in planes)}}}" if planes else "NULL"
    win = f"ones, {window['table']}, {window['value']}" if window else "0, NULL, 0"
    return f"{len(planes)}, {tabs}, {gains}, {win}"


def _level_guess_table(p, table, L: dict) -> None:
    """The "guess" level kernel's rows a, b, M, K (passes/pack_families._level_guess)."""
    L.update(guess="NULL", guess_shift=0)
    if p.level_guess is not None:
        table("lguess", "int64_t", p.level_guess)
        L.update(guess=f"{L['name']}_lguess", guess_shift=GUESS_SHIFT)


def _requant_tables(ep, o: int, table, L: dict) -> None:
    """ir.Requantize as per-channel tables (multiplier, offset, accumulator clamp)."""
    table("rq_mult", "int64_t", ep.mult)
    table("rq_add", "int64_t", ep.add)
    table("rq_lo", "int64_t", ep.acc_lo if ep.acc_lo is not None else np.full(o, -(2**62)))
    table("rq_hi", "int64_t", ep.acc_hi if ep.acc_hi is not None else np.full(o, 2**62))
    L.update(shift=ep.shift, lo=ep.lo, hi=ep.hi, pre_shift=ep.pre_shift)


def _env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(resource_dir("templates") / "c")),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              trim_blocks=True, lstrip_blocks=True)


def render(graph: ir.Graph, name: str = "bnnc", xor3: bool = False) -> dict:
    """{file name: text} of the generated C project (model, runtime header, harness, Makefile);
    xor3: see build_context."""
    ctx = build_context(graph, name, xor3)
    env = _env()
    files = {
        "model.h": env.get_template("model.h.j2").render(**ctx),
        "model.c": env.get_template("model.c.j2").render(**ctx),
        "harness.c": env.get_template("harness.c.j2").render(**ctx),
        "Makefile": env.get_template("Makefile.j2").render(**ctx),
        "bnnc_kernels.h": (resource_dir("runtime") / "bnnc_kernels.h").read_text(),
    }
    if ctx["families"]:
        files["bnnc_families.h"] = (resource_dir("runtime") / "bnnc_families.h").read_text()
    return files


def write(files: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    for n, text in sorted(files.items()):
        (out_dir / n).write_text(text)


# ----------------------------------------------------------------------------- target interface


def files(graph: ir.Graph, opts) -> dict:
    """`bnnc compile --target c`: the generated project for the host (64-bit words)."""
    from ..driver import backend_graph

    return render(backend_graph(graph), opts.name)


def run(graph: ir.Graph, grid: np.ndarray, opts):
    """Build with the host C compiler (cached) and run the harness on `grid` once per kernel variant
    this CPU runs (one build carries them all); returns the outputs, which every variant must give
    bit for bit, and {"kernels": the variants run, best first}."""
    from . import c_build

    flags = opts.flags or c_build.DEFAULT_FLAGS
    exe = c_build.build(files(graph, opts), flags)
    t0 = time.perf_counter()
    ys = {k: c_build.run(exe, grid, graph.input_info["dtype"], graph.output_info["dtype"], graph.output_info["elements"],
                         env={"BNNC_KERNELS": k}) for k in c_build.kernel_variants(exe)}
    run_s = (time.perf_counter() - t0) / len(ys)
    best, y = next(iter(ys.items()))
    for k, yk in ys.items():
        differ = np.flatnonzero([not np.array_equal(a, b) for a, b in zip(y, yk)])
        if differ.size:
            raise BnncError(f"the C build's '{k}' kernels give other outputs than its '{best}' kernels on sample "
                            f"{differ[0]} ({differ.size} of {len(y)} samples): a bug in bnnc's C kernels "
                            "(BNNC_KERNELS=NAME runs one variant of the harness)")
    n = grid.shape[0]
    stats = {"target": "c", "samples": n, "run_seconds": round(run_s, 6), "kernels": list(ys),
             "compiler": " ".join([*c_build.find_cc(), *flags]), "harness_bytes": exe.stat().st_size}
    if opts.measure and n:
        stats.update(c_build.latency(exe, grid, graph.input_info["dtype"], run_s / n))
    return y, stats
