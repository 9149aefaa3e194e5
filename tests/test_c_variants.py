"""Kernel variants of host C builds: one build carries the avx512, avx2 and portable kernels
(runtime/bnnc_kernels.h, bnnc_families.h) and picks the best the CPU runs. The kernels are called
directly from a small C program, once per variant this CPU runs, and compared with numpy; the
generated project lists and selects its variants (BNNC_KERNELS, `harness --kernels`), builds for
non-x86 hosts, and every variant gives the reference's numbers."""

import os
import shutil
import subprocess

import numpy as np
import pytest

from bnnc import driver
from bnnc.backends import c_build
from bnnc.errors import BnncError
from bnnc.pipeline import compile_graph
from bnnc.resources import resource_dir
from bnnc.testing.random_models import cnv_model, random_inputs, random_model

from .helpers import random_case

WARN = ("-std=c99", "-pedantic", "-O2", "-Wall", "-Wextra", "-Werror", "-ffp-contract=off")
X86 = os.uname().machine in ("x86_64", "AMD64")


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((ln.split(":", 1)[1].split() for ln in f if ln.startswith("flags")), []))
    except OSError:
        return set()


def expected_variants() -> list:
    """The variants this machine should run, best first, from /proc/cpuinfo."""
    if not X86:
        return ["portable"]
    f = cpu_flags()
    out = []
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512_vpopcntdq", "avx512_vnni"} <= f:
        out.append("avx512")
    if {"avx2", "bmi1", "bmi2", "popcnt"} <= f:
        out.append("avx2")
    return out + ["portable"]


def c_array(ctype: str, name: str, a) -> str:
    suffix = "u" if ctype.startswith("u") else ""
    return f"static const {ctype} {name}[] BNNC_ALIGN64 = {{{', '.join(f'{int(v)}{suffix}' for v in np.ravel(a))}}};"


def popcount64(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.uint64)
    return np.unpackbits(a.view(np.uint8).reshape(a.shape + (8,)), axis=-1).sum(axis=-1).astype(np.int64)


# ---------------------------------------------------------------------------- kernels called directly

# window: KH rows of KWCW words, RS apart (36 words: more than the AVX2 byte counters hold at once);
# VNNI: G groups of 4 bytes
KH, KWCW, RS, OPAD, G = 4, 9, 11, 64, 3
FAM_O, TAPS = 40, 7
DW_C, DW_N, DW_OPAD, DW_RS = 12, 9, 32, 60  # depthwise: channels, outputs, padded outputs, row stride
# int64 sums over several windows of the image, MW_DX values apart: 19 vectors of outputs are full
# passes and a remainder for both four windows at a time (6 vectors) and one (12)
MW_N, MW_O, MW_DX = 5, 152, 2
# integer inputs of any type: the padded image (pads top, left, bottom, right) and a gathered window
# partly outside the input (kh x kw taps from row WG_Y0, column WG_X0)
PI_H, PI_W, PI_C, PI_PADS = 3, 4, 2, (1, 2, 0, 1)
WG_K, WG_Y0, WG_X0 = 3, -1, 2
PI_IM = (PI_H + PI_PADS[0] + PI_PADS[2]) * (PI_W + PI_PADS[1] + PI_PADS[3]) * PI_C
# ternary sums (bnnc_ternary_sums64): TS_O outputs (two blocks of 8, one output with empty lists),
# lists of up to TS_L offsets below TS_OFF into an image of int32 extremes, weights a, b as large
# as bnnc's bound lets them be (2**31 * TS_L * max(|a|, |b|) * 2 < 2**62 ... at 2**62 - 2**31 * 2)
TS_O, TS_L, TS_OFF = 16, 12, 200
TS_N = TS_OFF + 64
TS_W = 2**62 // (2**31 * 2 * TS_L) - 1
RINT_IN = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, 3.4999998, -7.5, 8388607.5, -8388607.5, 16777215.0, 1e9, -0.0]


# the plane images: planes of TS_PLEN values (more than the padded pixels), then zeros up to TS_PLANES
TS_PLEN = (PI_H + PI_PADS[0] + PI_PADS[2]) * (PI_W + PI_PADS[1] + PI_PADS[3]) + 3
TS_PLANES = PI_C * TS_PLEN + 5
# and of an int32 input whose rows and channels are whole blocks of 8 (the AVX-512 transpose) and a rest
TP_H, TP_W, TP_C, TP_PADS = 2, 19, 21, (1, 0, 2, 3)
TP_PLEN = (TP_H + 3) * (TP_W + 3) + 2
TP_N = TP_C * TP_PLEN + 7


def ternary_starts(rng) -> np.ndarray:
    """start (2 * TS_O + 1,) of bnnc_ternary_sums64: list lengths 0 .. TS_L, output 3's both empty."""
    n = rng.integers(0, TS_L + 1, 2 * TS_O)
    n[6:8] = 0
    return np.concatenate([[0], np.cumsum(n)]).astype(np.int32)


def kernel_program(rng) -> tuple:
    """(C source, inputs): a program that runs the block kernels of every variant this CPU runs
    on fixed random data and prints one line per (variant, kernel): the name, then the values."""
    d = {
        "src": rng.integers(0, 2**64, KH * RS, dtype=np.uint64),
        "w": rng.integers(0, 2**64, (OPAD // 32) * KH * KWCW * 32, dtype=np.uint64),
        "thr": rng.integers(KH * KWCW * 32 - 12, KH * KWCW * 32 + 12, OPAD).astype(np.int32),
        "neg": rng.integers(0, 2**32, OPAD // 32, dtype=np.uint64).astype(np.uint32),
        "u": rng.integers(0, 256, KH * RS * 4).astype(np.uint8),
        "wv": rng.integers(-128, 128, (OPAD // 32) * KH * G * 32 * 4).astype(np.int8),
        "corr": rng.integers(-1000, 1000, OPAD).astype(np.int32),
        "pb": rng.integers(0, 2**64, (FAM_O // 8) * KH * KWCW * 8, dtype=np.uint64),
        "pm": rng.integers(0, 2**64, (FAM_O // 8) * KH * KWCW * 8, dtype=np.uint64),
        "win": rng.integers(-2**20, 2**20, TAPS).astype(np.int32),
        "w64": rng.integers(-2**20, 2**20, TAPS * FAM_O).astype(np.int32),
        "w8": rng.integers(-128, 128, TAPS * FAM_O).astype(np.int8),
        "acc": rng.integers(-2**40, 2**40, FAM_O).astype(np.int64),
        "init64": rng.integers(-2**40, 2**40, FAM_O).astype(np.int64),
        "mult": rng.integers(1, 2**20, FAM_O).astype(np.int64),
        "add": rng.integers(-2**30, 2**30, FAM_O).astype(np.int64),
        "alo": rng.integers(-2**39, -2**38, FAM_O).astype(np.int64),
        "ahi": rng.integers(2**38, 2**39, FAM_O).astype(np.int64),
        "thr64": rng.integers(-2**40, 2**40, 2 * 13).astype(np.int64),
        "neg8": np.concatenate([rng.integers(0, 2, 2 * 13), np.zeros(8, int)]).astype(np.uint8),
        "img": rng.integers(-2**20, 2**20, 4 * DW_RS).astype(np.int32),
        "dww": rng.integers(-128, 128, 9 * DW_OPAD).astype(np.int8),
        "wm": rng.integers(-2**24, 2**24, 6 * MW_O).astype(np.int32),
        "wm8": rng.integers(-128, 128, 6 * MW_O).astype(np.int8),
        "initm": rng.integers(-2**40, 2**40, MW_N * MW_O).astype(np.int64),
        "pi8": rng.integers(-128, 128, PI_H * PI_W * PI_C).astype(np.int8),
        "pu8": rng.integers(0, 256, PI_H * PI_W * PI_C).astype(np.uint8),
        "pi16": rng.integers(-2**15, 2**15, PI_H * PI_W * PI_C).astype(np.int16),
        "pu16": rng.integers(0, 2**16, PI_H * PI_W * PI_C).astype(np.uint16),
        "pi32": rng.integers(-2**31, 2**31, PI_H * PI_W * PI_C).astype(np.int32),
        "s32": rng.integers(-2**20, 2**20, 3 * 16).astype(np.int32),
        "tx": np.where(rng.random(TS_N) < 0.5, rng.choice([-2**31, 2**31 - 1], TS_N),
                       rng.integers(-2**31, 2**31, TS_N)).astype(np.int32),
        "tstart": ternary_starts(rng),
        "tpi": rng.integers(-2**31, 2**31, TP_H * TP_W * TP_C).astype(np.int32),
        "toff": rng.integers(0, TS_OFF, 2 * TS_O * TS_L).astype(np.int32),
        "ta": rng.choice([TS_W, -TS_W, 1, -1, 12345], TS_O).astype(np.int64),
        "tb": rng.choice([TS_W, -TS_W, -1, 0], TS_O).astype(np.int64),
    }
    types = {"src": "uint64_t", "w": "uint64_t", "thr": "int32_t", "neg": "uint32_t", "u": "uint8_t", "wv": "int8_t",
             "corr": "int32_t", "pb": "uint64_t", "pm": "uint64_t", "win": "int32_t", "w64": "int32_t", "w8": "int8_t",
             "acc": "int64_t", "init64": "int64_t", "mult": "int64_t", "add": "int64_t", "alo": "int64_t", "ahi": "int64_t",
             "thr64": "int64_t", "neg8": "uint8_t", "img": "int32_t", "dww": "int8_t",
             "wm": "int32_t", "wm8": "int8_t", "initm": "int64_t", "pi8": "int8_t", "pu8": "uint8_t",
             "pi16": "int16_t", "pu16": "uint16_t", "pi32": "int32_t", "s32": "int32_t", "tx": "int32_t",
             "tstart": "int32_t", "tpi": "int32_t", "toff": "int32_t", "ta": "int64_t", "tb": "int64_t"}
    arrays = "\n".join(c_array(types[k], k, v) for k, v in d.items())
    body = []
    vnni = (f"  bnnc_int_mac_vnni_avx512(u, {RS * 4}, {KH}, {G}, wv, corr, {OPAD}, acc);\n"
            f'  show("avx512 int_mac_vnni", acc, {OPAD});')
    for v, code in (("portable", "PORTABLE"), ("avx2", "AVX2"), ("avx512", "AVX512")):
        x86 = v != "portable"
        body.append(f"""
{"#ifdef BNNC_X86_VARIANTS" if x86 else ""}
#undef BNNC_VARIANT
#define BNNC_VARIANT BNNC_KERNELS_{code}
#include "bnnc_kernels.h"
#include "bnnc_families.h"
static BNNC_VT void run_{v}(void) {{
  int32_t acc[{OPAD}], s[{FAM_O}];
  int64_t a64[{FAM_O}];
  int32_t q[{FAM_O}], dw[{DW_OPAD}];
  bnnc_word_t bits[{OPAD // 64}], bits2[1];
  bnnc_xnor_popcount_{v}(src, {RS}, {KH}, {KWCW}, w, {OPAD}, acc);
  show("{v} xnor_popcount", acc, {OPAD});
  bnnc_binary_pixel_{v}(src, {RS}, {KH}, {KWCW}, w, {OPAD}, thr, neg, {OPAD // 64}, acc, bits);
  show_words("{v} binary_pixel", bits, {OPAD // 64});
  for (int kind = 0; kind < 3; kind++) {{
    bnnc_fam_plane_popcount_{v}(kind, src, {RS}, {KH}, {KWCW}, kind == 2 ? 0 : pb, kind == 0 ? 0 : pm, {FAM_O}, s);
    printf("%s plane%d", "{v}", kind);
    show("", s, {FAM_O});
  }}
  const int64_t *init1[1] = {{init64}}, *initm_[{MW_N}];
  int64_t am[{MW_N * MW_O}];
  for (int p = 0; p < {MW_N}; p++) initm_[p] = initm + p * {MW_O};
  bnnc_int_mac64_{v}(win, 0, 1, 0, 1, {TAPS}, w64, {FAM_O}, init1, a64);
  show64("{v} int_mac64", a64, {FAM_O});
  bnnc_int_mac64_w8_{v}(win, 0, 1, 0, 1, {TAPS}, w8, {FAM_O}, init1, a64);
  show64("{v} int_mac64_w8", a64, {FAM_O});
  bnnc_int_mac64_{v}(img, 0, 1, {DW_RS}, 3, 2, w64, {FAM_O}, init1, a64); /* in place: 3 image rows of 2 values */
  show64("{v} int_mac64_image", a64, {FAM_O});
  bnnc_int_mac64_w8_{v}(img, 0, 1, {DW_RS}, 2, 3, w8, {FAM_O}, init1, a64); /* odd rows: the 8-output tail's last tap */
  show64("{v} int_mac64_w8_image", a64, {FAM_O});
  bnnc_int_mac64_{v}(img, {MW_DX}, {MW_N}, {DW_RS}, 3, 2, wm, {MW_O}, initm_, am); /* {MW_N} windows in one call */
  show64("{v} int_mac64_windows", am, {MW_N * MW_O});
  bnnc_int_mac64_w8_{v}(img, {MW_DX}, {MW_N}, {DW_RS}, 3, 2, wm8, {MW_O}, initm_, am);
  show64("{v} int_mac64_w8_windows", am, {MW_N * MW_O});
  bnnc_requantize_row_{v}(acc64, mult, add, 42, alo, ahi, -100000, 100000, 13, q, 4);
  show("{v} requantize_row", q, 13);
  bnnc_threshold_pack64_{v}(acc64, thr64, neg8, 13, 2, 1, bits2);
  show_words("{v} threshold_pack64", bits2, 1);
  {{ /* ternary sums: 64 positions of TS_O outputs, then the plane image of an int8 and an int32 input */
    static int64_t ts[64 * {TS_O}];
    static int32_t planes[{TS_PLANES}], tplanes[{TP_N}];
    bnnc_ternary_sums64_{v}(tx, tstart, toff, ta, tb, {TS_O}, 8, ts);
    show64("{v} ternary_sums64", ts, 64 * {TS_O});
    bnnc_ternary_sums64_{v}(tx, tstart, toff, ta, tb, {TS_O}, 3, ts); /* a last pass of 24 positions */
    show64("{v} ternary_sums64_3", ts, 24 * {TS_O});
    bnnc_planes_image_{v}(pi8, BNNC_INT8, {PI_H}, {PI_W}, {PI_C}, {", ".join(map(str, PI_PADS))}, {TS_PLEN}, {TS_PLANES}, planes);
    show("{v} planes_image8", planes, {TS_PLANES});
    bnnc_planes_image_{v}(tpi, BNNC_INT32, {TP_H}, {TP_W}, {TP_C}, 1, 0, 2, 3, {TP_PLEN}, {TP_N}, tplanes);
    show("{v} planes_image32", tplanes, {TP_N});
    bnnc_planes_image_{v}(tpi, BNNC_INT32, {TP_W}, {TP_H}, {TP_C}, 2, 0, 1, 0, {TP_PLEN}, {TP_N}, tplanes);
    show("{v} planes_image32_flat", tplanes, {TP_N}); /* no zero columns: blocks of 8 across rows */
  }}
  bnnc_depthwise_mac32(img, {DW_RS}, {DW_C}, 3, 3, dww, {DW_N}, {DW_OPAD}, dw);
  show("{v} depthwise", dw, {DW_OPAD});
  {{ /* integer inputs: the padded image and a gathered window, every input type into every element type */
    static const struct {{ const void *in; int type; }} ins[5] = {{{{pi8, BNNC_INT8}}, {{pu8, BNNC_UINT8}},
      {{pi16, BNNC_INT16}}, {{pu16, BNNC_UINT16}}, {{pi32, BNNC_INT32}}}};
    int16_t im16[{PI_IM}];
    int32_t im32[{PI_IM}], w16_32[{WG_K * WG_K * PI_C}], w32[{WG_K * WG_K * PI_C}];
    uint8_t im8[{PI_IM}];
    int16_t w16[{WG_K * WG_K * PI_C}];
    for (int t = 0; t < 5; t++) {{
      bnnc_padded_image(ins[t].in, ins[t].type, {PI_H}, {PI_W}, {PI_C}, {", ".join(map(str, PI_PADS))}, 0, im32, 4);
      printf("{v} padded_image32_%d", t);
      show("", im32, {PI_IM});
      bnnc_gather_window_ints(ins[t].in, ins[t].type, {PI_H}, {PI_W}, {PI_C}, {WG_K}, {WG_K}, {WG_Y0}, {WG_X0}, w32, 4);
      printf("{v} window32_%d", t);
      show("", w32, {WG_K * WG_K * PI_C});
    }}
    bnnc_padded_image(pi8, BNNC_INT8, {PI_H}, {PI_W}, {PI_C}, {", ".join(map(str, PI_PADS))}, 0, im16, 2);
    for (int i = 0; i < {PI_IM}; i++) im32[i] = im16[i];
    show("{v} padded_image16", im32, {PI_IM});
    bnnc_padded_image(pi8, BNNC_INT8, {PI_H}, {PI_W}, {PI_C}, {", ".join(map(str, PI_PADS))}, -128, im8, 1);
    for (int i = 0; i < {PI_IM}; i++) im32[i] = im8[i];
    show("{v} padded_image_vnni", im32, {PI_IM});
    bnnc_gather_window_ints(pu8, BNNC_UINT8, {PI_H}, {PI_W}, {PI_C}, {WG_K}, {WG_K}, {WG_Y0}, {WG_X0}, w16, 2);
    for (int i = 0; i < {WG_K * WG_K * PI_C}; i++) w16_32[i] = w16[i];
    show("{v} window16", w16_32, {WG_K * WG_K * PI_C});
  }}
  {{ /* a family accumulator: corr + the window's count + planes with a uniform gain and a gain table */
    const int64_t *const tabs[3] = {{0, mult, 0}};
    const int64_t gains[3] = {{-3, 0, 7}};
    bnnc_fam_accumulate(a64, init64, s32, 16, 1, 0, gains, 0, 0, 0, 16, 0);
    show64("{v} accumulate_one", a64, 16);
    bnnc_fam_accumulate(a64, init64, s32, 16, 3, tabs, gains, 1234, 0, 5, 16, 1);
    show64("{v} accumulate_planes", a64, 16);
    bnnc_fam_accumulate(a64, init64, s32, 16, 2, 0, gains, -77, mult, 0, 16, 0);
    show64("{v} accumulate_window_table", a64, 16);
  }}
  printf("{v} rint");
  for (int i = 0; i < (int)(sizeof rint_in / sizeof rint_in[0]); i++)
    printf(" %lld", (long long)bnnc_rint_{v}(rint_in[i]));
  printf("\\n");
{vnni if v == "avx512" else ""}
}}
{"#endif" if x86 else ""}
""")
    src = f"""#include <stdio.h>
#include <stdint.h>
#define BNNC_WORD_BITS 64
#define BNNC_VARIANTS
#include "bnnc_kernels.h"
#include "bnnc_families.h"
{arrays}
static int64_t acc64[16];
static const float rint_in[] = {{{", ".join(f"{x!r}f" for x in RINT_IN)}}};
static void show(const char *what, const int32_t *a, int n) {{
  printf("%s", what);
  for (int i = 0; i < n; i++) printf(" %ld", (long)a[i]);
  printf("\\n");
}}
static void show64(const char *what, const int64_t *a, int n) {{
  printf("%s", what);
  for (int i = 0; i < n; i++) printf(" %lld", (long long)a[i]);
  printf("\\n");
}}
static void show_words(const char *what, const bnnc_word_t *a, int n) {{
  printf("%s", what);
  for (int i = 0; i < n; i++) printf(" %llu", (unsigned long long)a[i]);
  printf("\\n");
}}
{"".join(body)}
int main(void) {{
  for (int i = 0; i < 16; i++) acc64[i] = i < {FAM_O} ? acc[i] : 0;
  run_portable();
#ifdef BNNC_X86_VARIANTS
  if (bnnc_cpu_variant() >= BNNC_KERNELS_AVX2) run_avx2();
  if (bnnc_cpu_variant() >= BNNC_KERNELS_AVX512) run_avx512();
#endif
  return 0;
}}
"""
    return src, d


def expected_kernels(d: dict) -> dict:
    """The same kernels in numpy."""
    out = {}
    src = d["src"].reshape(KH, RS)[:, :KWCW]  # the window
    w = d["w"].reshape(OPAD // 32, KH, KWCW, 32)
    acc = np.stack([popcount64(src[:, :, None] ^ w[b]).sum(axis=(0, 1)) for b in range(OPAD // 32)]).ravel()
    out["xnor_popcount"] = acc
    negbits = ((d["neg"].astype(np.uint64)[:, None] >> np.arange(32, dtype=np.uint64)) & 1).ravel().astype(bool)
    bit = (acc > d["thr"]) ^ negbits
    out["binary_pixel"] = [int(sum(int(b) << j for j, b in enumerate(bit[k * 64:(k + 1) * 64])))
                           for k in range(OPAD // 64)]
    pb = d["pb"].reshape(FAM_O // 8, KH, KWCW, 8).transpose(1, 2, 0, 3).reshape(KH, KWCW, FAM_O)
    pm = d["pm"].reshape(FAM_O // 8, KH, KWCW, 8).transpose(1, 2, 0, 3).reshape(KH, KWCW, FAM_O)
    x = src[:, :, None]
    for kind, v in enumerate((x ^ pb, (x ^ pb) & pm, x & pm)):
        out[f"plane{kind}"] = popcount64(v).sum(axis=(0, 1))
    win = d["win"].astype(np.int64)
    init = d["init64"]
    out["int_mac64"] = init + win @ d["w64"].reshape(TAPS, FAM_O).astype(np.int64)
    out["int_mac64_w8"] = init + win @ d["w8"].reshape(TAPS, FAM_O).astype(np.int64)
    rows = d["img"].reshape(4, DW_RS).astype(np.int64)
    out["int_mac64_image"] = init + rows[:3, :2].reshape(-1) @ d["w64"][:6 * FAM_O].reshape(6, FAM_O).astype(np.int64)
    out["int_mac64_w8_image"] = init + rows[:2, :3].reshape(-1) @ d["w8"][:6 * FAM_O].reshape(6, FAM_O).astype(np.int64)
    for key, wm in (("int_mac64_windows", d["wm"]), ("int_mac64_w8_windows", d["wm8"])):
        wins = [rows[:3, p * MW_DX:p * MW_DX + 2].reshape(-1) for p in range(MW_N)]
        init_m = d["initm"].reshape(MW_N, MW_O)
        out[key] = np.concatenate([init_m[p] + wins[p] @ wm.reshape(6, MW_O).astype(np.int64) for p in range(MW_N)])
    a = np.clip(d["acc"], d["alo"], d["ahi"])
    out["requantize_row"] = np.clip((a * d["mult"] + d["add"]) >> 42, -100000, 100000)[:13]
    a13 = d["acc"][:13]
    bits = (np.concatenate([a13, a13]) > d["thr64"]) ^ d["neg8"][:26].astype(bool)
    out["threshold_pack64"] = [int(sum(int(b) << j for j, b in enumerate(bits)))]
    u = d["u"].reshape(KH, RS * 4)[:, :G * 4].astype(np.int64)
    wv = d["wv"].reshape(OPAD // 32, KH, G, 32, 4).astype(np.int64)
    img = d["img"].reshape(4, DW_RS)[:3, :3 * DW_C].reshape(3, 3, DW_C).astype(np.int64)  # the 3x3 window
    dww = d["dww"].reshape(9, DW_OPAD).astype(np.int64)
    sums = (img.reshape(9, DW_C)[:, :DW_N] * dww[:, :DW_N]).sum(axis=0)
    out["depthwise"] = np.concatenate([sums, np.zeros(DW_OPAD - DW_N, np.int64)])
    (pt, pl, pb, pr) = PI_PADS
    for t, k in enumerate(("pi8", "pu8", "pi16", "pu16", "pi32")):
        x = d[k].astype(np.int64).reshape(PI_H, PI_W, PI_C)
        image = np.pad(x, ((pt, pb), (pl, pr), (0, 0)))
        out[f"padded_image32_{t}"] = image.astype(np.int32)  # the low 32 bits, as int32
        big = np.pad(x, ((WG_K, WG_K), (WG_K, WG_K), (0, 0)))  # taps outside the input read 0
        out[f"window32_{t}"] = big[WG_K + WG_Y0:WG_K + WG_Y0 + WG_K, WG_K + WG_X0:WG_K + WG_X0 + WG_K]
        if k == "pi8":
            out["padded_image16"] = image
            out["padded_image_vnni"] = image + 128
        if k == "pu8":
            out["window16"] = out[f"window32_{t}"]
    sp = d["s32"].astype(np.int64).reshape(3, 16)
    init16, mult16 = d["init64"][:16], d["mult"][:16]
    out["accumulate_one"] = init16 - 3 * sp[0]
    out["accumulate_planes"] = init16 + 5 * 1234 - 3 * sp[0] + mult16 * sp[1] + 7 * sp[2]
    out["accumulate_window_table"] = init16 - 77 * mult16 - 3 * sp[0]
    out["rint"] = np.rint(np.array(RINT_IN, np.float32)).astype(np.int64)
    tx, st, off = d["tx"].astype(object), d["tstart"], d["toff"]
    ts = np.zeros((64, TS_O), object)
    for o in range(TS_O):
        for j in range(64):
            sa = sum(tx[j + off[t]] for t in range(st[2 * o], st[2 * o + 1]))
            sb = sum(tx[j + off[t]] for t in range(st[2 * o + 1], st[2 * o + 2]))
            ts[j, o] = int(d["ta"][o]) * sa + int(d["tb"][o]) * sb
    assert np.abs(ts).max() < 2**62  # the bound bnnc proves before it picks the kernel
    out["ternary_sums64"] = ts
    out["ternary_sums64_3"] = ts[:24]
    for name, k, (h, w, c), pads, plen, n in (("8", "pi8", (PI_H, PI_W, PI_C), PI_PADS, TS_PLEN, TS_PLANES),
                                              ("32", "tpi", (TP_H, TP_W, TP_C), TP_PADS, TP_PLEN, TP_N),
                                              ("32_flat", "tpi", (TP_W, TP_H, TP_C), (2, 0, 1, 0), TP_PLEN, TP_N)):
        (pt, pl, pb, pr) = pads
        x = np.pad(d[k].astype(np.int64).reshape(h, w, c), ((pt, pb), (pl, pr), (0, 0)))
        planes = np.zeros((c, plen), np.int64)
        planes[:, :x.shape[0] * x.shape[1]] = x.reshape(-1, c).T
        out["planes_image" + name] = np.concatenate([planes.ravel(), np.zeros(n - c * plen, np.int64)])
    out["int_mac_vnni"] = d["corr"] + np.concatenate(
        [np.einsum("ytq,ytjq->j", u.reshape(KH, G, 4), wv[b]) for b in range(OPAD // 32)])
    return out


def test_every_kernel_variant_equals_numpy(tmp_path):
    src, d = kernel_program(np.random.default_rng(7))
    (tmp_path / "t.c").write_text(src)
    for h in ("bnnc_kernels.h", "bnnc_families.h"):
        shutil.copy(resource_dir("runtime") / h, tmp_path / h)
    exe = tmp_path / "t"
    r = subprocess.run([*c_build.find_cc(), *WARN, "t.c", "-o", str(exe)], cwd=tmp_path, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    lines = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.splitlines()
    want = expected_kernels(d)
    seen = set()
    for ln in lines:
        variant, kernel, *vals = ln.split()
        assert [int(v) for v in vals] == [int(v) for v in np.ravel(want[kernel])], f"{variant} {kernel}"
        seen.add(variant)
    assert seen == set(expected_variants())
    assert sum(ln.startswith("avx512 int_mac_vnni") for ln in lines) == ("avx512" in seen)


# ---------------------------------------------------------------------------- the generated project

def test_one_build_with_default_flags_runs_every_variant_the_cpu_has():
    model = cnv_model(0)
    graph = compile_graph(model)
    exe = c_build.build(driver.render_c(graph), c_build.DEFAULT_FLAGS)
    assert c_build.kernel_variants(exe) == expected_variants()
    inputs = driver.prepare_inputs(graph, random_inputs(model, 3, 2))
    ref = driver.run_target(graph, "ref", inputs)
    odt = "float32"
    for k in expected_variants():
        y = c_build.run(exe, inputs.grid, graph.input_info["dtype"], odt, graph.output_info["elements"],
                        env={"BNNC_KERNELS": k})
        assert np.array_equal(y.reshape(ref.shape), ref), k
    with pytest.raises(RuntimeError, match="BNNC_KERNELS=sse9"):
        c_build.run(exe, inputs.grid, graph.input_info["dtype"], odt, graph.output_info["elements"],
                    env={"BNNC_KERNELS": "sse9"})


def test_c_target_reports_the_variants_it_checked_and_cc_may_carry_flags(monkeypatch):
    from bnnc import targets
    from bnnc.targets import TargetOptions

    _, _, graph, inputs = random_case(5, 4)
    ref = driver.run_target(graph, "ref", inputs)
    y, stats = targets.run(graph, "c", inputs.grid, TargetOptions())
    assert np.array_equal(y, ref) and stats["kernels"] == expected_variants()
    monkeypatch.setenv("CC", f"{c_build.find_cc()[0]} -DBNNC_PORTABLE")  # a compiler command with a flag
    y, stats = targets.run(graph, "c", inputs.grid, TargetOptions())
    assert np.array_equal(y, ref) and stats["kernels"] == ["portable"]
    monkeypatch.setenv("CC", "no-such-cc -O2")
    with pytest.raises(BnncError, match="'no-such-cc' not found"):
        c_build.find_cc()


def zig_cc() -> list | None:
    try:
        import ziglang  # noqa: F401
    except ImportError:
        return None
    import sys

    return [sys.executable, "-m", "ziglang", "cc"]


@pytest.mark.parametrize("target", ["aarch64-linux-gnu", "x86_64-linux-gnu"])
def test_other_hosts_and_clang_build_clean(tmp_path, target):
    """aarch64 builds the portable kernels only; clang (zig cc) builds every x86-64 variant; both
    C99 clean under -Werror."""
    cc = zig_cc()
    if cc is None:
        pytest.skip("ziglang is not installed")
    from bnnc import zoo

    for i, model in enumerate((random_model(22)[0], zoo.build("dabn", 0))):
        d = tmp_path / str(i)
        d.mkdir()
        for name, text in driver.render_c(compile_graph(model)).items():
            (d / name).write_text(text)
        r = subprocess.run([*cc, "-target", target, *WARN, "-c", "model.c", "-o", "model.o"], cwd=d,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        obj = (d / "model.o").read_bytes()
        assert (b"_forward_avx512" in obj) == target.startswith("x86_64")
        assert b"_forward_portable" in obj


def test_padded_average_pool_runs_as_depthwise_on_hosts():
    """A padded AveragePool (count_include_pad) becomes a window-sum convolution with one input
    channel per output: host builds run bnnc_depthwise_mac32 on it (kh * kw multiplies per output,
    not the dense row), every variant equal to the reference; MCU builds keep their lists."""
    from onnx import helper

    from bnnc import targets, zoo
    from bnnc.backends import mcu
    from bnnc.targets import TargetOptions

    model = zoo.build("bireal", 0)
    for n in model.graph.node:
        if n.op_type == "AveragePool":
            del n.attribute[:]
            n.attribute.extend([helper.make_attribute("kernel_shape", [3, 3]), helper.make_attribute("strides", [2, 2]),
                                helper.make_attribute("pads", [1, 1, 1, 1]),
                                helper.make_attribute("count_include_pad", 1)])
    graph = compile_graph(model)
    def pools(bg):
        return [op for op in bg.ops() if getattr(getattr(op, "packed", None), "method", "") == "sparse_int"]

    assert pools(driver.backend_graph(graph)) and all(op.packed.depthwise is not None
                                                      for op in pools(driver.backend_graph(graph)))
    assert pools(mcu.backend_graph(graph)) and all(op.packed.depthwise is None and op.packed.sparse is not None
                                                   for op in pools(mcu.backend_graph(graph)))
    assert "bnnc_depthwise_mac32" in driver.render_c(graph)["model.c"]
    inputs = driver.prepare_inputs(graph, zoo.inputs(model, 4, seed=2))
    y, stats = targets.run(graph, "c", inputs.grid, TargetOptions())
    assert np.array_equal(y, driver.run_target(graph, "ref", inputs)) and stats["kernels"] == expected_variants()


@pytest.mark.parametrize("name", ["bnnc", "bnnc_cpu", "bnnc_kernels"])
def test_model_names_do_not_clash_with_the_runtime(name):
    """The kernel-selection API (<name>_kernels, <name>_use_kernels, <name>_forward_<variant>) next to
    the runtime headers' own names."""
    from bnnc.backends import c as c_backend
    from bnnc.testing.random_models import tfc_model

    files = c_backend.render(driver.backend_graph(compile_graph(tfc_model(0))), name)
    assert c_build.kernel_variants(c_build.build(files, c_build.DEFAULT_FLAGS)) == expected_variants()


def test_large_byte_tables_are_string_literals_with_the_same_bytes(monkeypatch, tmp_path):
    """Byte tables from STRING_TABLE_BYTES on are one string literal (compilers read that many times
    faster than a list): the literal holds the table's bytes, pedantic C99 builds take it with gcc and
    clang, and every variant and the Cortex-M0 firmware give the reference's numbers. The threshold is
    lowered so that the small models' int8 weight tables (first layers, binary weights on integer
    inputs) take the string form."""
    import ast

    from bnnc import zoo
    from bnnc.backends import c as c_backend
    from bnnc.backends import mcu
    from bnnc.targets import TargetOptions

    values = np.array([-128, -1, 0, 1, 7, 8, 9, 63, 64, 127, 0, 0, 5, 50, 100, -100] * 9, np.int8)

    def literal_bytes(text: str) -> bytes:  # the C literal's lines read as Python bytes literals
        return b"".join(ast.literal_eval("b" + ln.strip()) for ln in text.split("\n"))

    text = c_backend.c_string(values, signed=True, per_line=7)
    assert len(text.split("\n")) == -(-values.size // 7)
    assert literal_bytes(text) == values.tobytes()
    assert literal_bytes(c_backend.c_string(np.arange(256), signed=False)) == bytes(range(256))
    with monkeypatch.context() as m:  # formatted a few lines at a time: every chunk and line boundary
        m.setattr(c_backend, "_STRING_CHUNK_LINES", 2)
        for n in (1, 6, 7, 8, 13, 14, 15, 28, 29, values.size):
            assert literal_bytes(c_backend.c_string(values[:n], signed=True, per_line=7)) == values[:n].tobytes()
            assert c_backend.c_string(values[:n].astype(np.float64), signed=True, per_line=7) == \
                c_backend.c_string(values[:n], signed=True, per_line=7)
    assert c_backend.c_string(values[:0], signed=True) == ""
    with pytest.raises(ValueError, match="outside"):
        c_backend.c_string(np.array([0, 128]), signed=True)

    monkeypatch.setattr(c_backend, "STRING_TABLE_BYTES", 16)
    cc = zig_cc()
    for model in (cnv_model(0), zoo.build("w1a2", 0), zoo.build("hbn", 0)):
        graph = compile_graph(model)
        files = driver.render_c(graph)
        assert "BNNC_LONG_STRING_BEGIN\nstatic const int8_t" in files["model.c"]
        exe = c_build.build(files, WARN)
        inputs = driver.prepare_inputs(graph, random_inputs(model, 3, 2))
        ref = driver.run_target(graph, "ref", inputs)
        odt = graph.output_info["dtype"]
        for k in expected_variants():
            y = c_build.run(exe, inputs.grid, graph.input_info["dtype"], odt, graph.output_info["elements"],
                            env={"BNNC_KERNELS": k})
            assert np.array_equal(y.reshape(ref.shape), ref), k
        if cc is not None:
            for name, t in files.items():
                (tmp_path / name).write_text(t)
            r = subprocess.run([*cc, "-target", "x86_64-linux-gnu", *WARN, "-c", "model.c", "-o", "model.o"],
                               cwd=tmp_path, capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
    y, _ = mcu.run(graph, inputs.grid, TargetOptions(mcu="cortex-m0"))
    assert np.array_equal(y.reshape(ref.shape), ref)


def test_element_chain_constants_that_repeat_per_channel_are_per_channel_tables():
    """An input chain's constant over every element (H x W x C, channel last) that repeats every C
    elements, such as a declared mean and std, is a table of C values indexed by the channel; one
    that varies over pixels keeps its elements, and -0 differs from 0 in both tests."""
    from bnnc import ir
    from bnnc.backends import c as c_backend

    rng = np.random.default_rng(0)
    per_channel = np.tile(np.float32([0.485, 0.456, 0.406]), 4 * 5)
    signed_zero = np.tile(np.float32([0.0, 1.0, 2.0]), 20)
    signed_zero[3] = -0.0
    ops = [ir.ChainOp("sub", per_channel), ir.ChainOp("mul", rng.standard_normal(60).astype(np.float32)),
           ir.ChainOp("add", signed_zero), ir.ChainOp("mul", np.full(60, 2.0, np.float32))]
    consts = []
    stmts = c_backend.chain_ctx(ops, "e", "L", consts, channels=(3, "c"))
    assert stmts == ["v = v - L_c0[c];", "v = v * L_c1[e];", "v = v + L_c2[e];", "v = v * 0x1.0000000000000p+1f;"]
    assert [c["n"] for c in consts] == [3, 60, 60]
    consts = []
    assert c_backend.chain_ctx(ops[:1], "e", "L", consts) == ["v = v - L_c0[e];"] and consts[0]["n"] == 60


def test_input_thresholds_that_repeat_per_channel_are_per_channel_tables(tmp_path, capsys):
    """A sign of the declared input (a threshold per element, from the per-channel mean and std)
    keeps one threshold per channel in the C tables, indexed by the channel; bit-exact."""
    from onnx import TensorProto, helper

    from bnnc.cli import main

    rng = np.random.default_rng(3)
    w = np.sign(rng.standard_normal((4, 3, 3, 3))).astype(np.float32)
    g = helper.make_graph([helper.make_node("Sign", ["x"], ["s"], name="sign"),
                           helper.make_node("Conv", ["s", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
                          "sign_input", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])],
                          [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())])
    path = tmp_path / "m.onnx"
    path.write_bytes(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    flags = ["--input-range", "0:255", "--input-scale", "1/255", "--input-mean", "0.485,0.456,0.406",
             "--input-std", "0.229,0.224,0.225"]
    assert main(["compile", str(path), *flags, "--target", "c", "-o", str(tmp_path / "c")]) == 0
    text = (tmp_path / "c" / "model.c").read_text()
    assert "_thr[3]" in text and "const int t = c;" in text
    assert main(["verify", str(path), *flags, "--target", "c", "--samples", "8"]) == 0, capsys.readouterr().out
