"""The generated HLS C++ is in synthesizable style, checked by scanning the sources of many models
and foldings: no dynamic memory, no recursion (call graph of the generated functions), every loop
with a constant trip count, every loop inside a pipelined loop fully unrolled, a DATAFLOW top with
AXI-Stream ports, and weight planes, plane sums and per-row tables partitioned by PE as the folding
says (binary models and the compressed families)."""

import json
import re

import networkx as nx
import numpy as np
import pytest

from bnnc.backends import hls
from bnnc.pipeline import compile_file
from bnnc.targets import TargetOptions

from .helpers import random_case
from .test_hls import STYLES, folding_options

LOOP = re.compile(r"for \(int (\w+) = 0; \1 < (\d+); \1\+\+\) \{")
FUNC = re.compile(r"^(?:static )?(?:inline )?[\w:<>, ]+?\b(\w+)\((.*)\) \{$")
DYNAMIC = re.compile(r"\b(new|delete|malloc|calloc|realloc|free|alloca)\b")


def synthesized_header_part(header: str) -> str:
    """bnnc_hls.h as Vitis HLS sees it: the vendor branch and the shared helpers, not bnnc's own classes."""
    start = header.index("#include <hls_stream.h>")
    a = header.index("#else", start)
    b = header.index("#endif /* BNNC_VENDOR_HLS_TYPES */", a)
    text = header[:a] + header[b:]
    a = text.index("#else", text.index("inline int popcount"))
    b = text.index("#endif", a)
    return text[:a] + text[b:]


def functions(text: str) -> dict:
    """{name: body lines} of the functions defined at file scope (the generated style: one per line)."""
    out, lines = {}, text.splitlines()
    i = 0
    while i < len(lines):
        m = FUNC.match(lines[i])
        if m and not lines[i].startswith(" "):
            depth, body = 0, []
            for j in range(i, len(lines)):
                depth += lines[j].count("{") - lines[j].count("}")
                body.append(lines[j])
                if depth == 0:
                    break
            out[m.group(1)] = body
            i = j
        i += 1
    return out


def check_loops(lines: list, where: str) -> int:
    """Every loop has a constant trip count; a loop nested in a pipelined loop is unrolled. Returns #loops."""
    stack, n = [], 0
    for k, line in enumerate(lines):
        s = line.strip()
        assert not re.match(r"(while|do)\b", s) and "goto" not in s, f"{where}: {s}"
        pending = None
        if s.startswith("for ("):
            n += 1
            assert LOOP.fullmatch(s), f"{where}: loop without a constant trip count: {s}"
            nxt = lines[k + 1].strip()
            pending = ("pipeline" if nxt.startswith("BNNC_HLS(PIPELINE II=1)") else
                       "unroll" if nxt == "BNNC_HLS(UNROLL)" else "plain")
            if "pipeline" in stack:
                assert pending == "unroll", f"{where}: loop inside a pipelined loop is not unrolled: {s}"
        for ch in s:
            if ch == "{":
                stack.append(pending or "block")
                pending = None
            elif ch == "}":
                stack.pop()
    assert not stack
    return n


def check_sources(files: dict) -> None:
    model = files["model.cpp"]
    for name in ("model.cpp", "model.h"):
        code = re.sub(r"/\*.*?\*/", "", files[name], flags=re.S)
        assert not DYNAMIC.search(code), f"{name}: dynamic memory"
    header = synthesized_header_part(files["bnnc_hls.h"])
    assert not DYNAMIC.search(re.sub(r"/\*.*?\*/", "", header, flags=re.S))
    assert "std::deque" not in header
    funcs = functions(model)
    assert funcs, "no functions found"
    # the call graph of the generated functions has no cycle (no recursion, direct or mutual)
    g = nx.DiGraph()
    for name, body in funcs.items():
        g.add_node(name)
        for callee in re.findall(r"\b(\w+)\(", "\n".join(body[1:])):
            if callee in funcs:
                g.add_edge(name, callee)
    assert nx.is_directed_acyclic_graph(g) and nx.number_of_selfloops(g) == 0, "recursion"
    top = [n for n in funcs if n.endswith("_top")]
    assert len(top) == 1
    top_body = "\n".join(funcs[top[0]])
    for pragma in ("INTERFACE axis port=in", "INTERFACE axis port=out", "DATAFLOW"):
        assert f"BNNC_HLS({pragma})" in top_body
    # every process is called exactly once, by the top, and only there
    processes = [n for n in funcs if n != top[0]]
    for p in processes:
        assert len(re.findall(rf"\b{p}\(", top_body)) == 1, p
        assert list(g.predecessors(p)) == [top[0]], p
    for s in re.findall(r"hls::stream<[^>]+(?:<\d+>)?> (\w+)\(", top_body):
        # the streams into a residual block's branches have the depth the schedule needs, the rest 2
        m = re.search(rf"BNNC_HLS\(STREAM variable={s} depth=(\d+)\)", top_body)
        assert m and (int(m.group(1)) == 2 or "_to_" in s and int(m.group(1)) > 2), s
    loops = sum(check_loops(body, name) for name, body in funcs.items())
    assert loops >= len(processes)
    # helpers called inside pipelined loops: their loops are unrolled too
    hfuncs = functions(header.replace("template <int N>\n", ""))
    assert "popcount" in hfuncs
    for name, body in hfuncs.items():
        for k, line in enumerate(body):
            if line.strip().startswith("for ("):
                assert body[k + 1].strip() == "BNNC_HLS(UNROLL)", f"bnnc_hls.h {name}: {line}"
    # weights, plane sums and tables: constant tables and registers partitioned by PE rows as folded
    fold = json.loads(files["folding.json"])["layers"]
    for entry in fold:
        layer = entry["name"]
        body = "\n".join(funcs[f"{layer}_mvtu"])
        arrays = re.findall(rf"static const bnnc::rom_bits_t<(\d+)> ({layer}_(?:flip|mask)\d+)\[(\d+)\]", model)
        # multiply-accumulate units: one signed weight per row and lane, [PE][NF * SF][SIMD]
        mac = re.findall(rf"static const ap_int<\d+> ({layer}_w)\[(\d+)\]\[\d+\]\[(\d+)\]", model)
        assert arrays or mac, layer
        for width, array, rows in arrays:
            assert int(rows) == entry["pe"] and int(width) == min(64, entry["simd"])
            assert f"BNNC_HLS(ARRAY_PARTITION variable={array} complete dim=1)" in body
        for array, rows, lanes in mac:
            assert int(rows) == entry["pe"] and int(lanes) == entry["simd"]
            assert f"BNNC_HLS(ARRAY_PARTITION variable={array} complete dim=1)" in body
            assert f"BNNC_HLS(ARRAY_RESHAPE variable={array} complete dim=3)" in body
        sums = re.findall(rf"ap_int<\d+> (s\d+|vsum)\[{entry['pe']}\];", body)  # plane sums or MAC sums
        assert sums and all(f"BNNC_HLS(ARRAY_PARTITION variable={s} complete)" in body for s in sums)
        assert f"for (int p = 0; p < {entry['pe']}; p++) {{" in body
        tables = "thr|flag|offset|live|gain|mult|add|acc_lo|acc_hi"
        for table in re.findall(rf"static const \S+ ({layer}_(?:{tables}))\[(\d+)\]", model):
            assert int(table[1]) == entry["pe"], table
            assert f"BNNC_HLS(ARRAY_PARTITION variable={table[0]} complete dim=1)" in body


@pytest.mark.parametrize("seed", range(12))
def test_random_models_are_in_synthesizable_style(seed):
    graph = random_case(seed, 1)[2]
    style = STYLES[seed % len(STYLES)]
    check_sources(hls.files(graph, TargetOptions(**folding_options(graph, style, seed))))


@pytest.mark.parametrize("name", ["w1a2", "dabn", "abc-fused", "pabt", "xnet", "ternary-ec2t", "hbn",
                                  "bireal"])
def test_family_models_are_in_synthesizable_style(name):
    from bnnc import zoo
    from bnnc.pipeline import compile_graph

    graph = compile_graph(zoo.build(name, seed=2))
    for style in ("parallel", "odd"):
        check_sources(hls.files(graph, TargetOptions(**folding_options(graph, style, 2))))


def test_shared_models_are_in_synthesizable_style(shared_models):
    for path in ("finn-tfc-w1a1/model.onnx", "brevitas-cnv-1w1a/cnv_1w1a.onnx"):
        _, graph = compile_file(shared_models / path)
        check_sources(hls.files(graph, TargetOptions()))


def test_scanner_rejects_what_it_must():
    graph = random_case(2, 1)[2]
    files = hls.files(graph, TargetOptions())
    good = files["model.cpp"]
    bad_cases = {
        "dynamic memory": good.replace("static L", "static int *leak = new int[4];\nstatic L", 1),
        "unbounded loop": re.sub(r"for \(int i = 0; i < (\d+); i\+\+\)", r"for (int i = 0; i < n; i++)", good, 1),
        "loop in a pipeline": good.replace("        BNNC_HLS(UNROLL)\n", "", 1),
        "recursion": re.sub(r"(static void (\w+)\(.*\) \{\n)", r"\1  \2(in, out);\n", good, count=1),
    }
    messages = {"dynamic memory": "dynamic memory", "unbounded loop": "constant trip count",
                "loop in a pipeline": "not unrolled", "recursion": "recursion"}
    for what, text in bad_cases.items():
        assert text != good, what
        with pytest.raises(AssertionError, match=messages[what]):
            check_sources({**files, "model.cpp": text})
    check_sources(files)


def _table_words(model: str, name: str) -> list:
    """The numbers of constant table `name` in model.cpp, in initializer order (true / false as 1 / 0)."""
    m = re.search(rf" {name}\[[^=]*= (\{{.*?\}});", model, re.S)
    return [int(w, 16) if w.startswith("0x") else int(w) if w[-1].isdigit() else int(w == "true")
            for w in re.findall(r"0x[0-9a-f]+|-?\b\d+\b|true|false", m.group(1))]


@pytest.mark.parametrize("case", ["random", "dabn", "abc-fused"])
def test_weight_rows_hold_the_folded_planes(case):
    """Every plane's flip / mask words in model.cpp decode to layout_folded_layers' weight bits."""
    from bnnc import ir, zoo
    from bnnc.backends.hls import backend_graph, foldings_for
    from bnnc.pipeline import compile_graph

    graph = random_case(9, 1)[2] if case == "random" else compile_graph(zoo.build(case, seed=1))
    opts = TargetOptions(**folding_options(graph, "odd", 9))
    fs = foldings_for(graph, opts)
    model = hls.files(graph, opts)["model.cpp"]
    g = backend_graph(graph, fs)
    for op in g.ops():
        if not isinstance(op, ir.Conv):
            continue
        f = op.folded
        for i, (j, which) in enumerate(f.weights.arrays):
            words = _table_words(model, f"{op.name}_{'flip' if which == 'b' else 'mask'}{j}")
            per_row = -(-f.fold.simd // 64)
            bits = np.zeros((f.fold.pe * f.fold.nf * f.fold.sf, per_row * 64), bool)
            for r in range(bits.shape[0]):
                for k in range(per_row):
                    w = words[r * per_row + k]
                    bits[r, 64 * k: 64 * k + 64] = [(w >> b) & 1 for b in range(64)]
            want = f.weights.bits[:, i].transpose(1, 0, 2)  # [PE][NF * SF][SIMD]
            assert np.array_equal(bits[:, : f.fold.simd].reshape(want.shape), want), (op.name, j, which)
        # per-row tables: entry [p][nf][class] of output o = nf * PE + p, zero for idle rows
        tables = {"offset" if f.epilogue.mode == "acc" else "thr": f.table.value}
        if f.epilogue.mode != "acc":
            tables["flag"] = f.table.flag
        for table, value in tables.items():
            got = np.array(_table_words(model, f"{op.name}_{table}"))
            got = got.reshape(f.fold.pe, f.fold.nf, f.borders.classes, -1)
            for o in range(f.fold.nf * f.fold.pe):
                nf, p = divmod(o, f.fold.pe)
                want = value[:, o] if o < f.fold.mh else np.zeros_like(value[:, 0])
                assert np.array_equal(got[p, nf], want), (op.name, table, o)
