"""PE x SIMD folding of the conv/dense layers, shared by the Verilog and HLS backends.

A layer with MH output channels, MW = kh*kw*C inputs per output and P output pixels runs on a
matrix-vector-threshold unit of PE rows x SIMD lanes. Each cycle it consumes SIMD inputs for PE
outputs, so one frame takes ceil(MH / PE) * ceil(MW / SIMD) * P cycles. FINN requires PE | MH and
SIMD | MW; bnnc does not, because pruning leaves channel counts like 62 or 255 whose divisors are
useless: the last fold of a layer runs with idle rows/lanes, which the backends mask exactly (an
idle lane contributes a known constant that is folded into the thresholds, or is gated off).
The dataflow pipeline's initiation interval is its slowest layer.

`choose_folding` meets a cycle budget per frame with the fewest resources: for each layer
independently, the legal (PE, SIMD) with cycles <= budget that minimises the cost model below.
Layers are independent because the pipeline's II is a max, so one layer's choice never helps
another meet the budget.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import ir, userfiles
from .backends import matrix_unit
from .errors import BnncError, one_line


@dataclass(frozen=True)
class LayerShape:
    name: str
    mh: int  # output channels (after pruning)
    mw: int  # inputs per output: kh * kw * C
    pixels: int  # output pixels per frame (1 for dense layers)
    in_bits: int  # 1 for bit inputs, else the integer input width

    @property
    def macs(self) -> int:
        return self.mh * self.mw * self.pixels


@dataclass(frozen=True)
class LayerFolding:
    layer: LayerShape
    pe: int
    simd: int

    @property
    def cycles(self) -> int:
        return self.neuron_folds * self.synapse_folds * self.layer.pixels

    @property
    def neuron_folds(self) -> int:
        return -(-self.layer.mh // self.pe)

    @property
    def synapse_folds(self) -> int:
        return -(-self.layer.mw // self.simd)

    def as_dict(self) -> dict:
        return {"name": self.layer.name, "pe": self.pe, "simd": self.simd}


def foldable_layers(graph: ir.Graph) -> list:
    """The conv/dense layers in pipeline order."""
    out = []
    for op in graph.ops():
        if isinstance(op, ir.Conv):
            o, kh, kw, c = op.w.shape
            src = graph.tensors[op.inputs[0]]
            dst = graph.tensors[op.outputs[0]]
            in_bits = 1 if isinstance(src, ir.Bits) else max(1, max(abs(src.lo), abs(src.hi) + 1).bit_length() + 1)
            out.append(LayerShape(op.name, o, kh * kw * c, dst.shape[0] * dst.shape[1], in_bits))
    return out


def fold_widths(n: int) -> list:
    """For every distinct fold count ceil(n / w), the narrowest width w that achieves it."""
    return sorted({-(-n // f) for f in range(1, n + 1)})


def cost(f: LayerFolding) -> float:
    """Relative LUT cost: XNOR/multiply lanes (wider for integer inputs) + a popcount/adder tree
    per PE + an accumulator and comparator per PE."""
    lane = 1 if f.layer.in_bits == 1 else f.layer.in_bits
    return f.pe * f.simd * lane * 2 + f.pe * 24


# a folding file holds one small object per layer; far more is not a folding
MAX_SPEC_BYTES = 16 * 2**20


def read_spec(path) -> object:
    """The JSON document of a --folding file."""
    data = userfiles.read_bytes(path, "folding file", MAX_SPEC_BYTES)
    try:
        return json.loads(data)
    except ValueError as e:
        raise BnncError(f"folding file '{path}' is not valid JSON ({one_line(e)})") from None
    except RecursionError:
        raise BnncError(f"folding file '{path}' nests JSON too deeply (a folding is "
                        '{"layers": [{"pe": P, "simd": S}, ...]})') from None


def parse_folding(spec, graph: ir.Graph) -> list:
    """Validated foldings from a JSON path or dict {"layers": [{"pe": P, "simd": S, ["name": N]}]}."""
    layers = foldable_layers(graph)
    if isinstance(spec, (str, Path)):
        spec = read_spec(spec)
    if not isinstance(spec, dict) or not isinstance(spec.get("layers"), list):
        raise BnncError('a folding is {"layers": [{"pe": P, "simd": S}, ...]}, one entry per conv/dense layer')
    entries = spec["layers"]
    by_name = {L.name: L for L in layers}
    named = [e for e in entries if isinstance(e, dict) and "name" in e]
    for i, e in enumerate(named):
        if not isinstance(e["name"], str):
            raise BnncError(f"folding entry {i}: name must be a string (got {e['name']!r})"[:300])
    if named and len(named) != len(entries):
        raise BnncError("folding entries must either all name their layer or all be in layer order")
    if not named and len(entries) != len(layers):
        raise BnncError(f"the folding has {len(entries)} entries but the model has {len(layers)} conv/dense "
                        f"layers ({', '.join(by_name)})")
    chosen = {}
    for i, e in enumerate(entries):
        if not isinstance(e, dict) or set(e) - {"pe", "simd", "name"}:
            raise BnncError(f"folding entry {i} must be an object with keys pe, simd (and optionally name)")
        L = by_name.get(e["name"]) if named else layers[i]
        if L is None:
            raise BnncError(f"folding entry {i} names layer '{e['name']}', which is not a conv/dense layer "
                            f"(layers: {', '.join(by_name)})")
        if L.name in chosen:
            raise BnncError(f"folding names layer '{L.name}' twice")
        pe, simd = e.get("pe", 1), e.get("simd", 1)
        for key, v in (("pe", pe), ("simd", simd)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise BnncError(f"layer {L.name}: {key} must be a positive integer (got {v!r})")
        reason = matrix_unit.folding_refusal(L.mh, L.mw, pe, simd)
        if reason:
            raise BnncError(f"layer {L.name}: {reason}")
        chosen[L.name] = LayerFolding(L, pe, simd)
    # layers the named form leaves out run fully folded
    return [chosen.get(L.name, LayerFolding(L, 1, 1)) for L in layers]


def choose_folding(graph: ir.Graph, target_cycles: int | None = None) -> list:
    """The cheapest legal folding with every layer at most `target_cycles` per frame.

    Without a budget: the largest layer gets 256 parallel lanes and every other layer is folded to
    the same II (a balanced pipeline of moderate size)."""
    layers = foldable_layers(graph)
    if not layers:
        return []
    if target_cycles is None:
        # never below a layer's output pixels: fully parallel still takes one cycle per pixel
        target_cycles = max(max(L.pixels for L in layers), max(L.macs for L in layers) // 256)
    out = []
    for L in layers:
        best = None
        for pe in fold_widths(L.mh):
            for simd in fold_widths(L.mw):
                f = LayerFolding(L, pe, simd)
                if f.cycles <= target_cycles and (best is None or (cost(f), f.pe) < (cost(best), best.pe)):
                    best = f
        if best is None:
            fastest = LayerFolding(L, L.mh, L.mw)
            raise BnncError(f"layer {L.name} needs at least {fastest.cycles} cycles per frame even fully parallel "
                            f"(PE={L.mh}, SIMD={L.mw}); --target-cycles {target_cycles} cannot be met")
        out.append(best)
    return out


def resolve(graph: ir.Graph, folding=None, target_cycles: int | None = None) -> list:
    """The folding a backend uses: the user's (validated) or a chosen one."""
    if folding is not None:
        if target_cycles is not None:
            raise BnncError("give either --folding or --target-cycles, not both")
        return parse_folding(folding, graph)
    return choose_folding(graph, target_cycles)


def analytic_ii(foldings: list) -> int:
    """Cycles per frame of the MVTU pipeline: its slowest layer."""
    return max((f.cycles for f in foldings), default=0)
