/* bnnc runtime kernels: the inner loops generated models call.
 *
 * Bit layout (bnnc's one convention): a pixel's channels are packed into words, channel c in
 * word c / BNNC_WORD_BITS at bit c % BNNC_WORD_BITS; bit 1 = -1, bit 0 = +1; fill bits are 0.
 * Host kernels: weights in blocks of BNNC_OBLOCK output channels, [O_pad / 32][taps][32], output
 * channels padded with zero filters, so the loops stream one block and vectorize across its 32
 * outputs. A window is kh rows of kwcw consecutive words (or values), `rs` apart: a kernel reads
 * the input in place when the window lies inside it and a gathered copy otherwise.
 * Row kernels (MCU firmware, further down): weights [O][taps], one filter after the other (in
 * parity groups under BNNC_XOR3_GROUPS, each followed by its threshold for BNNC_T2_WORD_T).
 *
 * C99, no libc calls, no allocation. Define BNNC_WORD_BITS (32 or 64) before including.
 *
 * Kernel variants. The block kernels at the end of this file (those with vector paths) are
 * defined by one inclusion of it: by default once, under their plain names, with the vector
 * paths the compiler flags enable (AVX-512 under e.g. -march=native on a machine that has it:
 * VPOPCNTQ for binary kernels, VNNI for byte-input kernels). A file that defines BNNC_VARIANTS
 * before including it gets them once per inclusion with BNNC_VARIANT set to
 * BNNC_KERNELS_PORTABLE, _AVX2 or _AVX512, under the names BNNC_V(name) (name_portable,
 * name_avx2, name_avx512) and with BNNC_VT, the variant's target attribute, on each: so one
 * x86-64 build carries every variant (generated host models pick one at run time with
 * bnnc_cpu_variant()). Code inlined into a variant's functions is compiled for its target too.
 * On Cortex-M4/M7 the row kernels use Thumb-2 DSP assembly and SMLAD. BNNC_PORTABLE keeps the
 * portable C everywhere (and a single variant). Every path gives identical results.
 */
#ifndef BNNC_KERNELS_H
#define BNNC_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifndef BNNC_WORD_BITS
#error "define BNNC_WORD_BITS (32 or 64) before including bnnc_kernels.h"
#endif

#if defined(__GNUC__) || defined(__clang__)
#define BNNC_INLINE static inline __attribute__((always_inline))
#define BNNC_NOINLINE __attribute__((noinline))
/* Weight tables start on a cache line, so vector loads of a block never straddle two. */
#define BNNC_ALIGN64 __attribute__((aligned(64)))
#else
#define BNNC_INLINE static inline
#define BNNC_NOINLINE
#define BNNC_ALIGN64
#endif
/* MCU builds (Cortex-M, RISC-V): code shaped for few registers and a small stack where host builds
 * unroll and inline. */
#if (defined(__ARM_ARCH_PROFILE) && __ARM_ARCH_PROFILE == 'M') || defined(__riscv)
#define BNNC_MCU 1
#else
#define BNNC_MCU 0
#endif
/* BNNC_ROLLED before a for: on MCUs the loop stays a loop. Clang otherwise unrolls the short
 * constant-trip loops of a layer's epilogue (8 or more 64-bit sums at once) and its fill loops,
 * and on a core with 13 general registers what does not fit is spilled: the layer's stack frame,
 * which is RAM above the arena, grows by up to ~150 bytes. Host builds unroll as before. */
#if BNNC_MCU
#if defined(__clang__)
#define BNNC_ROLLED _Pragma("clang loop unroll(disable) vectorize(disable) interleave(disable)")
#elif defined(__GNUC__) && __GNUC__ >= 8
#define BNNC_ROLLED _Pragma("GCC unroll 1")
#endif
#endif
#ifndef BNNC_ROLLED
#define BNNC_ROLLED
#endif
/* BNNC_SOFT_FLOAT: an MCU without an FPU, where float arithmetic is calls into the compiler's
 * runtime. BNNC_ROLLED_SOFT_FLOAT before a for of float arithmetic: rolled there (unrolled copies
 * keep their values across the calls in the frame; the calls cost far more than the loop). */
#if BNNC_MCU && !defined(__ARM_FP) && !defined(__riscv_flen)
#define BNNC_SOFT_FLOAT 1
#define BNNC_ROLLED_SOFT_FLOAT BNNC_ROLLED
#else
#define BNNC_SOFT_FLOAT 0
#define BNNC_ROLLED_SOFT_FLOAT
#endif

/* Layers stay separate functions: profilers (and bnnc's emulator) attribute time to them by symbol.
 * BNNC_VT: the target attribute of the kernel variant being defined (empty outside one). */
#define BNNC_LAYER static BNNC_NOINLINE BNNC_VT

#define BNNC_OBLOCK 32

#if BNNC_WORD_BITS == 64
typedef uint64_t bnnc_word_t;
#elif BNNC_WORD_BITS == 32
typedef uint32_t bnnc_word_t;
#else
#error "BNNC_WORD_BITS must be 32 or 64"
#endif


/* Number of 1 bits. Compilers turn the builtin into one instruction where the target has one;
 * BNNC_SOFT_POPCOUNT forces the portable bit-trick sequence (targets without popcount, such as
 * every Cortex-M, where the builtin would be a call to libgcc's __popcountsi2). */
#if defined(__ARM_ARCH_PROFILE) && __ARM_ARCH_PROFILE == 'M' && !defined(BNNC_SOFT_POPCOUNT)
#define BNNC_SOFT_POPCOUNT 1
#endif
/* RISC-V without Zbb has no popcount instruction either (with Zbb the builtin is one cpop) */
#if defined(__riscv) && !defined(__riscv_zbb) && !defined(BNNC_SOFT_POPCOUNT)
#define BNNC_SOFT_POPCOUNT 1
#endif
BNNC_INLINE int32_t bnnc_popcount(bnnc_word_t x) {
#if (defined(__GNUC__) || defined(__clang__)) && !defined(BNNC_SOFT_POPCOUNT)
#if BNNC_WORD_BITS == 64
  return (int32_t)__builtin_popcountll(x);
#else
  return (int32_t)__builtin_popcount(x);
#endif
#else
  x = x - ((x >> 1) & (bnnc_word_t)0x5555555555555555ull);
  x = (x & (bnnc_word_t)0x3333333333333333ull) + ((x >> 2) & (bnnc_word_t)0x3333333333333333ull);
  x = (x + (x >> 4)) & (bnnc_word_t)0x0F0F0F0F0F0F0F0Full;
  return (int32_t)((bnnc_word_t)(x * (bnnc_word_t)0x0101010101010101ull) >> (BNNC_WORD_BITS - 8));
#endif
}

/* Gathers the window of one output position of a binary input (ih, iw, cw words per pixel)
 * starting at input row y0, column x0 into win ([ky][kx][cw]), with 0 words (+1 values) for
 * padded taps; returns win. */
BNNC_INLINE const bnnc_word_t *bnnc_gather_window_bits(const bnnc_word_t *in, int ih, int iw, int cw, int kh,
                                                       int kw, int y0, int x0, bnnc_word_t *win) {
  for (int ky = 0; ky < kh; ky++) {
    const int y = y0 + ky;
    for (int kx = 0; kx < kw; kx++) {
      const int x = x0 + kx;
      bnnc_word_t *dst = win + (ky * kw + kx) * cw;
      if (y >= 0 && y < ih && x >= 0 && x < iw) {
        const bnnc_word_t *src = in + ((size_t)y * iw + x) * cw;
        for (int c = 0; c < cw; c++) dst[c] = src[c];
      } else {
        for (int c = 0; c < cw; c++) dst[c] = 0;
      }
    }
  }
  return win;
}

/* The same window as a pointer to its first word, with *rs = words from one window row to the
 * next: points into `in` when the window lies inside the input, else gathers it into `win`
 * (rs = kw * cw). */
BNNC_INLINE const bnnc_word_t *bnnc_window_bits(const bnnc_word_t *in, int ih, int iw, int cw, int kh,
                                                int kw, int y0, int x0, bnnc_word_t *win, int *rs) {
  if (y0 >= 0 && x0 >= 0 && y0 + kh <= ih && x0 + kw <= iw) {
    *rs = iw * cw;
    return in + ((size_t)y0 * iw + x0) * cw;
  }
  *rs = kw * cw;
  return bnnc_gather_window_bits(in, ih, iw, cw, kh, kw, y0, x0, win);
}

/* ---- Integer activations: the element types and the windows of integer-input convolutions ---- */

/* The C types of bnnc's integer activations (ir.Ints storage) as kernels that read any of them take
 * them: |type| bytes, signed where negative. A compile-time constant once inlined, so each use
 * compiles to loads of its one type. */
#define BNNC_INT8 (-1)
#define BNNC_UINT8 1
#define BNNC_INT16 (-2)
#define BNNC_UINT16 2
#define BNNC_INT32 (-4)

/* in[i] of an array of `type` values */
BNNC_INLINE int32_t bnnc_load_int(const void *in, int type, size_t i) {
  switch (type) {
  case BNNC_INT8: return ((const int8_t *)in)[i];
  case BNNC_UINT8: return ((const uint8_t *)in)[i];
  case BNNC_INT16: return ((const int16_t *)in)[i];
  case BNNC_UINT16: return ((const uint16_t *)in)[i];
  default: return ((const int32_t *)in)[i];
  }
}

/* Integer outputs of `bytes` bytes each (the C types of bnnc's Ints storage): out[o] = v, a value
 * the type holds, stored as its low bytes (an int8_t and a uint8_t array alike). */
BNNC_INLINE void bnnc_store_int(void *out, int bytes, int o, int64_t v) {
  if (bytes == 1) ((uint8_t *)out)[o] = (uint8_t)v;
  else if (bytes == 2) ((uint16_t *)out)[o] = (uint16_t)v;
  else ((uint32_t *)out)[o] = (uint32_t)v;
}

/* The padded image of an integer input of ih x iw pixels of c values (in_type), as the host's
 * integer kernels read their windows in place: pt + ih + pb rows of pl + iw + pr pixels of c
 * elements of im_bytes bytes each, holding x - offset (offset 0: int16 or int32 values; the VNNI
 * kernel's unsigned bytes), with x = 0 at the padding. A fill, then a copy of each input row: GCC
 * 12.2 at -O3 -march=icelake-server miscompiles a per-element "inside ? x : 0" loop. */
BNNC_INLINE void bnnc_padded_image(const void *in, int in_type, int ih, int iw, int c, int pt, int pl, int pb,
                                   int pr, int32_t offset, void *im, int im_bytes) {
  const int rs = (pl + iw + pr) * c; /* elements per image row */
  if (pt || pl || pb || pr)
    for (int i = 0; i < (pt + ih + pb) * rs; i++) bnnc_store_int(im, im_bytes, i, 0 - offset);
  for (int y = 0; y < ih; y++) {
    const int row = (y + pt) * rs + pl * c;
    for (int i = 0; i < iw * c; i++)
      bnnc_store_int(im, im_bytes, row + i, bnnc_load_int(in, in_type, (size_t)y * iw * c + i) - offset);
  }
}

/* The window of one output position of an integer input (ih x iw pixels of c values of in_type)
 * starting at input row y0, column x0, gathered into win ([ky][kx][c], elements of win_bytes bytes:
 * int16 or int32) with 0 for padded taps: what the row kernels (MCU) and the expander kernels read. */
BNNC_INLINE void bnnc_gather_window_ints(const void *in, int in_type, int ih, int iw, int c, int kh, int kw,
                                         int y0, int x0, void *win, int win_bytes) {
  for (int ky = 0; ky < kh; ky++) {
    const int y = y0 + ky;
    for (int kx = 0; kx < kw; kx++) {
      const int x = x0 + kx, at = (ky * kw + kx) * c;
      if (y >= 0 && y < ih && x >= 0 && x < iw) {
        const size_t src = ((size_t)y * iw + x) * c;
        for (int j = 0; j < c; j++) bnnc_store_int(win, win_bytes, at + j, bnnc_load_int(in, in_type, src + j));
      } else {
        for (int j = 0; j < c; j++) bnnc_store_int(win, win_bytes, at + j, 0);
      }
    }
  }
}

/* ---- Kernel variants of x86-64 builds ------------------------------------------------------- */
#define BNNC_KERNELS_PORTABLE 1
#define BNNC_KERNELS_AVX2 2
#define BNNC_KERNELS_AVX512 3 /* F, BW, DQ, VL, VPOPCNTDQ and VNNI */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(BNNC_PORTABLE)
#define BNNC_X86_VARIANTS 1
#include <cpuid.h>
#include <immintrin.h>
/* FMA stays out of both: a build without -ffp-contract=off must not contract the float chains. */
#define BNNC_TARGET_AVX2 __attribute__((target("avx2,bmi,bmi2,popcnt,lzcnt")))
#define BNNC_TARGET_AVX512                                                                              \
  __attribute__((target("avx2,bmi,bmi2,popcnt,lzcnt,avx512f,avx512bw,avx512dq,avx512vl,avx512vpopcntdq," \
                        "avx512vnni")))

/* The best variant this CPU and its operating system run (CPUID, and XGETBV for the register
 * state the OS saves): BNNC_KERNELS_AVX512, BNNC_KERNELS_AVX2 or BNNC_KERNELS_PORTABLE. */
static inline int bnnc_cpu_variant(void) {
  unsigned a, b, c, d, xcr0_lo, xcr0_hi;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return BNNC_KERNELS_PORTABLE;
  const unsigned osxsave = 1u << 27, avx = 1u << 28, popcnt = 1u << 23;
  if ((c & (osxsave | avx | popcnt)) != (osxsave | avx | popcnt)) return BNNC_KERNELS_PORTABLE;
  __asm__("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
  (void)xcr0_hi;
  if ((xcr0_lo & 0x6u) != 0x6u || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return BNNC_KERNELS_PORTABLE;
  const unsigned avx2 = (1u << 5) | (1u << 3) | (1u << 8); /* AVX2, BMI1, BMI2 */
  if ((b & avx2) != avx2) return BNNC_KERNELS_PORTABLE;
  const unsigned f_dq_bw_vl = (1u << 16) | (1u << 17) | (1u << 30) | (1u << 31);
  const unsigned popcntdq_vnni = (1u << 14) | (1u << 11);
  if ((xcr0_lo & 0xE6u) == 0xE6u && (b & f_dq_bw_vl) == f_dq_bw_vl && (c & popcntdq_vnni) == popcntdq_vnni)
    return BNNC_KERNELS_AVX512;
  return BNNC_KERNELS_AVX2;
}
#endif

/* acc[o] = sum over the window's values x of x * w, for o < opad (integer inputs, weights in
 * {-1, 0, +1}, 32-bit accumulators): the window is kh rows of kwc values, rs apart; w is blocked
 * [opad / 32][kh * kwc][32]. */
BNNC_INLINE void bnnc_int_mac(const int32_t *src, int rs, int kh, int kwc, const int8_t *w, int opad, int32_t *acc) {
  for (int b = 0; b < opad / BNNC_OBLOCK; b++) {
    const int8_t *wb = w + (size_t)b * kh * kwc * BNNC_OBLOCK;
#ifdef BNNC_VARIANTS
    int32_t a[BNNC_OBLOCK]; /* the host's vector registers */
#else
    int32_t *a = acc + b * BNNC_OBLOCK; /* MCU: more sums than registers: in place, not a stack copy */
#endif
    for (int j = 0; j < BNNC_OBLOCK; j++) a[j] = 0;
    for (int ky = 0; ky < kh; ky++) {
      for (int t = 0; t < kwc; t++, wb += BNNC_OBLOCK) {
        const int32_t x = src[ky * rs + t];
        for (int j = 0; j < BNNC_OBLOCK; j++) a[j] += x * (int32_t)wb[j];
      }
    }
#ifdef BNNC_VARIANTS
    for (int j = 0; j < BNNC_OBLOCK; j++) acc[b * BNNC_OBLOCK + j] = a[j];
#endif
  }
}

/* As bnnc_int_mac with 16-bit values and accumulators, for layers where bnnc proved
 * kh * kwc * max|x| <= 32767 (twice as many lanes per vector). */
BNNC_INLINE void bnnc_int_mac16(const int16_t *src, int rs, int kh, int kwc, const int8_t *w, int opad,
                                int32_t *acc) {
  for (int b = 0; b < opad / BNNC_OBLOCK; b++) {
    const int8_t *wb = w + (size_t)b * kh * kwc * BNNC_OBLOCK;
#ifdef BNNC_VARIANTS
    int16_t a[BNNC_OBLOCK]; /* the host's vector registers */
#else
    int32_t *a = acc + b * BNNC_OBLOCK; /* MCU: in place (each sum kept to int16 as it goes) */
#endif
    for (int j = 0; j < BNNC_OBLOCK; j++) a[j] = 0;
    for (int ky = 0; ky < kh; ky++) {
      for (int t = 0; t < kwc; t++, wb += BNNC_OBLOCK) {
        const int16_t x = src[ky * rs + t];
        for (int j = 0; j < BNNC_OBLOCK; j++) a[j] = (int16_t)(a[j] + x * wb[j]);
      }
    }
#ifdef BNNC_VARIANTS
    for (int j = 0; j < BNNC_OBLOCK; j++) acc[b * BNNC_OBLOCK + j] = a[j];
#endif
  }
}

/* ---- Row-layout kernels (MCU firmware): weights [O][L], one filter after the other ---------- */

/* The window of one output position, contiguous: a pointer into `in` when its kh rows of kw * cw
 * words follow each other there (kw == iw or kh == 1, inside the input), else a copy in `win`
 * with 0 words (+1 values) for padded taps. */
BNNC_INLINE const bnnc_word_t *bnnc_window_words(const bnnc_word_t *in, int ih, int iw, int cw, int kh, int kw,
                                                 int y0, int x0, bnnc_word_t *win) {
  if (y0 >= 0 && x0 >= 0 && y0 + kh <= ih && x0 + kw <= iw && (kw == iw || kh == 1))
    return in + ((size_t)y0 * iw + x0) * cw;
  int rs;
  const bnnc_word_t *src = bnnc_window_bits(in, ih, iw, cw, kh, kw, y0, x0, win, &rs);
  if (src != win) { /* inside, but rows apart: copy them together */
    for (int ky = 0; ky < kh; ky++)
      for (int j = 0; j < kw * cw; j++) win[ky * kw * cw + j] = src[ky * rs + j];
  }
  return win;
}

/* The n words at x with each whole group of 3 from word `first` on as its parities (see
 * BNNC_XOR3_GROUPS), into win (x may be win); returns win. */
BNNC_INLINE const bnnc_word_t *bnnc_xor3_groups(const bnnc_word_t *x, int n, int first, bnnc_word_t *win) {
  int i = 0;
  for (; i < first; i++) win[i] = x[i];
  for (; i + 3 <= n; i += 3) {
    const bnnc_word_t v0 = x[i], v1 = x[i + 1], v2 = x[i + 2];
    win[i] = v0 ^ v1;
    win[i + 1] = v1 ^ v2;
    win[i + 2] = v0 ^ win[i + 1];
  }
  for (; i < n; i++) win[i] = x[i];
  return win;
}

/* The window of one output position, dense: the c channel bits of its kh x kw taps back to back
 * (tap by tap, channel c of a tap at bit offset tap * c + c), 0 bits for padded taps and after
 * the last tap. Filters of "dense" row layers are packed the same way, so the window needs
 * ceil(kh * kw * c / WB) words instead of kh * kw * cw. */
BNNC_INLINE void bnnc_window_dense(const bnnc_word_t *in, int ih, int iw, int cw, int c, int kh, int kw, int y0,
                                   int x0, bnnc_word_t *win) {
  bnnc_word_t acc = 0;
  int nb = 0; /* bits pending in acc */
  const int all_inside = y0 >= 0 && x0 >= 0 && y0 + kh <= ih && x0 + kw <= iw;
  for (int ky = 0; ky < kh; ky++) {
    const int y = y0 + ky;
    for (int kx = 0; kx < kw; kx++) {
      const int x = x0 + kx;
      const int inside = all_inside || (y >= 0 && y < ih && x >= 0 && x < iw);
      for (int j = 0; j < cw; j++) {
        const bnnc_word_t v = inside ? in[((size_t)y * iw + x) * cw + j] : 0;
        const int bits = j < cw - 1 ? BNNC_WORD_BITS : c - BNNC_WORD_BITS * (cw - 1);
        acc |= v << nb;
        if (nb + bits >= BNNC_WORD_BITS) {
          *win++ = acc;
          acc = nb ? v >> (BNNC_WORD_BITS - nb) : 0;
          nb += bits - BNNC_WORD_BITS;
        } else {
          nb += bits;
        }
      }
    }
  }
  if (nb) *win = acc;
}

/* Popcount over 3 (2, 1) words of (*x XOR *w) into the accumulators (a, b); x and w advance past
 * the words. The _START forms begin a row; bnnc_popcount_total(a, b) is the count. Three words go
 * through a carry-save full adder (ones = u ^ c, twos = majority, u = a ^ b) and the two words
 * are counted in 2-bit then 4-bit fields, n = ones + 2 twos (fields <= 12). On Cortex-M4/M7
 * (Thumb-2 with the DSP extension) USADA8 then adds the sum of n's nibbles to a (BNNC_T2_ADD).
 * Elsewhere the same full adder in C, with a multiply for the byte sum. b stays 0 on both (a
 * second accumulator of forms that need one). Rows are unrolled by the generated code.
 *
 * BNNC_XOR3_GROUPS (defined by generated models whose rows use it): every whole 3-word group
 * v0, v1, v2 of a row, filter and window alike, is stored as its parities v0 ^ v1, v1 ^ v2,
 * v0 ^ v1 ^ v2 (bnnc_xor3_groups; the filters at compile time). XORing a window's group with a
 * filter's then gives, for the words a, b, c of x XOR w, U = a ^ b, V = b ^ c and ones =
 * a ^ b ^ c directly, and twos = majority(a, b, c) = ones ^ (U | V) (all three equal: U = V = 0,
 * majority = ones; else two agree and ones is the odd one out): 5 instructions for the XORs and
 * the full adder instead of 8, the window's parities computed once per output pixel for all
 * filters. 21 instructions per 3 words on Cortex-M4/M7 (24 without), against 13 per word for a
 * plain popcount. */
#if defined(BNNC_NAIVE_POPCOUNT)
/* the baseline bench/bench_mcu.py compares with: one bit-trick popcount per word */
BNNC_INLINE uint32_t bnnc_popcount_bits(bnnc_word_t v) {
  v = v - ((v >> 1) & (bnnc_word_t)0x5555555555555555ull);
  v = (v & (bnnc_word_t)0x3333333333333333ull) + ((v >> 2) & (bnnc_word_t)0x3333333333333333ull);
  v = (v + (v >> 4)) & (bnnc_word_t)0x0F0F0F0F0F0F0F0Full;
  return (uint32_t)((bnnc_word_t)(v * (bnnc_word_t)0x0101010101010101ull) >> (BNNC_WORD_BITS - 8));
}
#define BNNC_XNOR_POPCOUNT1(x, w, a, b) ((a) += bnnc_popcount_bits(*(x) ^ *(w)), (x) += 1, (w) += 1)
#ifdef BNNC_XOR3_GROUPS
/* the group's words a = ones ^ V, b = ones ^ U ^ V, c = ones ^ U, one popcount each */
BNNC_INLINE uint32_t bnnc_xor3_popcount_bits(const bnnc_word_t *x, const bnnc_word_t *w) {
  const bnnc_word_t u = x[0] ^ w[0], v = x[1] ^ w[1], ones = x[2] ^ w[2];
  return bnnc_popcount_bits(ones ^ v) + bnnc_popcount_bits(ones ^ u ^ v) + bnnc_popcount_bits(ones ^ u);
}
#define BNNC_XNOR_POPCOUNT3(x, w, a, b) ((a) += bnnc_xor3_popcount_bits((x), (w)), (x) += 3, (w) += 3)
#else
#define BNNC_XNOR_POPCOUNT3(x, w, a, b) \
  (BNNC_XNOR_POPCOUNT1(x, w, a, b), BNNC_XNOR_POPCOUNT1(x, w, a, b), BNNC_XNOR_POPCOUNT1(x, w, a, b))
#endif
#define BNNC_XNOR_POPCOUNT2(x, w, a, b) (BNNC_XNOR_POPCOUNT1(x, w, a, b), BNNC_XNOR_POPCOUNT1(x, w, a, b))
#define BNNC_XNOR_POPCOUNT3_START(x, w, a, b) ((a) = 0, (b) = 0, BNNC_XNOR_POPCOUNT3(x, w, a, b))
#define BNNC_XNOR_POPCOUNT2_START(x, w, a, b) ((a) = 0, (b) = 0, BNNC_XNOR_POPCOUNT2(x, w, a, b))
#define BNNC_XNOR_POPCOUNT1_START(x, w, a, b) ((a) = 0, (b) = 0, BNNC_XNOR_POPCOUNT1(x, w, a, b))
#elif BNNC_WORD_BITS == 32 && defined(__thumb2__) && defined(__ARM_FEATURE_DSP) && !defined(BNNC_PORTABLE)
/* register r: its 4-bit field counts (r8 scratch) */
#define BNNC_T2_NIBBLES(r)                                                                                \
  "and r8, " r ", #0xAAAAAAAA\n\tsub " r ", " r ", r8, lsr #1\n\t"                                      \
  "and r8, " r ", #0xCCCCCCCC\n\tand " r ", " r ", #0x33333333\n\tadd " r ", " r ", r8, lsr #2\n\t"
/* Loads of a step's words: the window's, then the filter's (the _T forms: and the filter's
 * threshold, which follows its row in the weights of BNNC_T2_WORD_T layers, into r12) */
#define BNNC_T2_LOAD3 "ldmia %[xp]!, {r4, r5, r6}\n\tldmia %[wp]!, {r8, r9, r10}\n\t"
#define BNNC_T2_LOAD3_T "ldmia %[xp]!, {r4, r5, r6}\n\tldmia %[wp]!, {r8, r9, r10, r12}\n\t"
#define BNNC_T2_LOAD2 "ldmia %[xp]!, {r4, r5}\n\tldmia %[wp]!, {r8, r9}\n\t"
#define BNNC_T2_LOAD2_T "ldmia %[xp]!, {r4, r5}\n\tldmia %[wp]!, {r8, r9, r12}\n\t"
#define BNNC_T2_LOAD1 "ldr r4, [%[xp]], #4\n\tldr r5, [%[wp]], #4\n\t"
#define BNNC_T2_LOAD1_T "ldr r4, [%[xp]], #4\n\tldmia %[wp]!, {r5, r12}\n\t"
/* 3 words: r5 = ones + 2 twos (4-bit fields <= 12) */
#ifdef BNNC_XOR3_GROUPS
#define BNNC_T2_COUNT3                                                                                    \
  "eor r4, r4, r8\n\teor r5, r5, r9\n\teor r6, r6, r10\n\torr r4, r4, r5\n\teor r4, r4, r6\n\t"          \
  BNNC_T2_NIBBLES("r6") BNNC_T2_NIBBLES("r4") "add r5, r6, r4, lsl #1\n\t"
#else
#define BNNC_T2_COUNT3                                                                                    \
  "eor r4, r4, r8\n\teor r5, r5, r9\n\teor r6, r6, r10\n\t"                                             \
  "eor r8, r4, r5\n\tand r4, r4, r5\n\teor r5, r8, r6\n\tand r8, r8, r6\n\torr r4, r4, r8\n\t"          \
  BNNC_T2_NIBBLES("r5") BNNC_T2_NIBBLES("r4") "add r5, r5, r4, lsl #1\n\t"
#endif
/* 2 words, half adder: r5 = ones + 2 twos (fields <= 8) */
#define BNNC_T2_COUNT2                                                                                    \
  "eor r4, r4, r8\n\teor r5, r5, r9\n\tand r6, r4, r5\n\teor r5, r4, r5\n\t" BNNC_T2_NIBBLES("r5")     \
  BNNC_T2_NIBBLES("r6") "add r5, r5, r6, lsl #1\n\t"
/* 1 word: r5 = its 4-bit field counts */
#define BNNC_T2_COUNT1 "eor r5, r4, r5\n\t" BNNC_T2_NIBBLES("r5")
#define BNNC_T2_WORDS3 BNNC_T2_LOAD3 BNNC_T2_COUNT3
#define BNNC_T2_WORDS2 BNNC_T2_LOAD2 BNNC_T2_COUNT2
#define BNNC_T2_WORDS1 BNNC_T2_LOAD1 BNNC_T2_COUNT1
#define BNNC_T2_WORDS3_T BNNC_T2_LOAD3_T BNNC_T2_COUNT3
#define BNNC_T2_WORDS2_T BNNC_T2_LOAD2_T BNNC_T2_COUNT2
#define BNNC_T2_WORDS1_T BNNC_T2_LOAD1_T BNNC_T2_COUNT1
/* a (+)= the sum of r5's nibbles (each < 16): r8 = 15 x its high nibbles, byte by byte, and
 * USAD(A)8 adds |16 hi + lo - 15 hi| = hi + lo per byte (b stays 0) */
#define BNNC_T2_ADD "and r8, r5, #0xF0F0F0F0\n\tsub r8, r8, r8, lsr #4\n\tusada8 %[sa], r5, r8, %[sa]"
#define BNNC_T2_SET "and r8, r5, #0xF0F0F0F0\n\tsub r8, r8, r8, lsr #4\n\tusad8 %[sa], r5, r8"
#define BNNC_T2_CLOBBERS "r4", "r5", "r6", "r8", "r9", "r10", "memory"
#define BNNC_T2_STEP(words, x, w, a, b)                                                                 \
  __asm__(words BNNC_T2_ADD : [xp] "+r"(x), [wp] "+r"(w), [sa] "+r"(a) : : BNNC_T2_CLOBBERS)
#define BNNC_T2_START(words, x, w, a, b)                                                                \
  do {                                                                                                  \
    (b) = 0;                                                                                            \
    __asm__(words BNNC_T2_SET : [xp] "+r"(x), [wp] "+r"(w), [sa] "=&r"(a) : : BNNC_T2_CLOBBERS);         \
  } while (0)
#define BNNC_XNOR_POPCOUNT3(x, w, a, b) BNNC_T2_STEP(BNNC_T2_WORDS3, x, w, a, b)
#define BNNC_XNOR_POPCOUNT2(x, w, a, b) BNNC_T2_STEP(BNNC_T2_WORDS2, x, w, a, b)
#define BNNC_XNOR_POPCOUNT1(x, w, a, b) BNNC_T2_STEP(BNNC_T2_WORDS1, x, w, a, b)
/* the first step of a row sets a and b instead of adding */
#define BNNC_XNOR_POPCOUNT3_START(x, w, a, b) BNNC_T2_START(BNNC_T2_WORDS3, x, w, a, b)
#define BNNC_XNOR_POPCOUNT2_START(x, w, a, b) BNNC_T2_START(BNNC_T2_WORDS2, x, w, a, b)
#define BNNC_XNOR_POPCOUNT1_START(x, w, a, b) BNNC_T2_START(BNNC_T2_WORDS1, x, w, a, b)
/* One output word of a binary row layer in one assembly loop, bits (in: 1 << (n - 1), n filters,
 * 1..32; out: filter j's bit at 32 - n + j): ROW is the row's steps (BNNC_T2_WORDSk BNNC_T2_SET
 * "\n\t" first, then BNNC_T2_WORDSk BNNC_T2_ADD "\n\t", the generated code's L_T2_ROW); each
 * count is compared with its threshold t (count >= t: the unsigned compare's carry, which RRXS
 * shifts in at bit 31) and the sentinel bit ends the loop when it drops out into the carry. The
 * window pointer x comes back to its row start, w and thr move past the n filters. 5
 * instructions per filter besides the row's steps, against 10 for a C loop over the rows. */
#define BNNC_T2_WORD(ROW, ROW_BYTES, x, w, thr, bits)                                                   \
  do {                                                                                                  \
    uint32_t sa_;                                                                                       \
    __asm__("1:\n\t" ROW "sub %[xp], %[xp], #" ROW_BYTES "\n\tldr r6, [%[tp]], #4\n\t"                   \
            "cmp %[sa], r6\n\trrxs %[b], %[b]\n\tbcc 1b"                                                  \
            : [xp] "+r"(x), [wp] "+r"(w), [tp] "+r"(thr), [b] "+r"(bits), [sa] "=&r"(sa_)               \
            :                                                                                           \
            : BNNC_T2_CLOBBERS, "cc");                                                                  \
  } while (0)
/* The same where each filter's threshold follows its row in the weights (layers with one
 * threshold per filter, no border classes): ROW's last step is a _T form, which loads it with
 * the row's last words. 4 instructions per filter besides the row. */
#define BNNC_T2_WORD_T(ROW, ROW_BYTES, x, w, bits)                                                      \
  do {                                                                                                  \
    uint32_t sa_;                                                                                       \
    __asm__("1:\n\t" ROW "sub %[xp], %[xp], #" ROW_BYTES "\n\tcmp %[sa], r12\n\trrxs %[b], %[b]\n\tbcc 1b" \
            : [xp] "+r"(x), [wp] "+r"(w), [b] "+r"(bits), [sa] "=&r"(sa_)                               \
            :                                                                                           \
            : BNNC_T2_CLOBBERS, "r12", "cc");                                                           \
  } while (0)
#elif BNNC_WORD_BITS == 32 && defined(__riscv_zbb) && !defined(BNNC_PORTABLE)
/* RISC-V with Zbb: one cpop per word (xor, cpop, add) beats the carry-save sequence (and the
 * parity groups: bnnc generates its rows without them) */
#define BNNC_XNOR_POPCOUNT1(x, w, a, b) ((a) += (uint32_t)__builtin_popcount(*(x) ^ *(w)), (x) += 1, (w) += 1)
#define BNNC_XNOR_POPCOUNT2(x, w, a, b) (BNNC_XNOR_POPCOUNT1(x, w, a, b), BNNC_XNOR_POPCOUNT1(x, w, a, b))
#ifdef BNNC_XOR3_GROUPS
BNNC_INLINE uint32_t bnnc_xor3_cpop(const bnnc_word_t *x, const bnnc_word_t *w) {
  const bnnc_word_t u = x[0] ^ w[0], v = x[1] ^ w[1], ones = x[2] ^ w[2];
  return (uint32_t)__builtin_popcount(ones) + 2u * (uint32_t)__builtin_popcount(ones ^ (u | v));
}
#define BNNC_XNOR_POPCOUNT3(x, w, a, b) ((a) += bnnc_xor3_cpop((x), (w)), (x) += 3, (w) += 3)
#else
#define BNNC_XNOR_POPCOUNT3(x, w, a, b) (BNNC_XNOR_POPCOUNT2(x, w, a, b), BNNC_XNOR_POPCOUNT1(x, w, a, b))
#endif
#define BNNC_XNOR_POPCOUNT3_START(x, w, a, b) ((a) = 0, (b) = 0, BNNC_XNOR_POPCOUNT3(x, w, a, b))
#define BNNC_XNOR_POPCOUNT2_START(x, w, a, b) ((a) = 0, (b) = 0, BNNC_XNOR_POPCOUNT2(x, w, a, b))
#define BNNC_XNOR_POPCOUNT1_START(x, w, a, b) ((a) = 0, (b) = 0, BNNC_XNOR_POPCOUNT1(x, w, a, b))
#else
#define BNNC_M1 ((bnnc_word_t)0x5555555555555555ull)
#define BNNC_M2 ((bnnc_word_t)0x3333333333333333ull)
#define BNNC_M4 ((bnnc_word_t)0x0F0F0F0F0F0F0F0Full)
#define BNNC_BYTES ((bnnc_word_t)0x0101010101010101ull)
/* 4-bit field counts of a word */
BNNC_INLINE bnnc_word_t bnnc_nibbles(bnnc_word_t v) {
  v = v - ((v >> 1) & BNNC_M1);
  return (v & BNNC_M2) + ((v >> 2) & BNNC_M2);
}
/* sum of the bytes of a word whose byte fields total at most 255 */
BNNC_INLINE uint32_t bnnc_byte_sum(bnnc_word_t b) { return (uint32_t)((b * BNNC_BYTES) >> (BNNC_WORD_BITS - 8)); }
BNNC_INLINE uint32_t bnnc_xnor_popcount3(const bnnc_word_t *x, const bnnc_word_t *w) {
#ifdef BNNC_XOR3_GROUPS
  const bnnc_word_t u = x[0] ^ w[0], v = x[1] ^ w[1], ones = x[2] ^ w[2];
  const bnnc_word_t n = bnnc_nibbles(ones) + (bnnc_nibbles(ones ^ (u | v)) << 1); /* fields <= 12 */
#else
  const bnnc_word_t a = x[0] ^ w[0], b = x[1] ^ w[1], c = x[2] ^ w[2];
  const bnnc_word_t u = a ^ b;
  const bnnc_word_t n = bnnc_nibbles(u ^ c) + (bnnc_nibbles((a & b) | (u & c)) << 1); /* fields <= 12 */
#endif
  return bnnc_byte_sum((n & BNNC_M4) + ((n >> 4) & BNNC_M4)); /* bytes <= 24 */
}
BNNC_INLINE uint32_t bnnc_xnor_popcount1(const bnnc_word_t *x, const bnnc_word_t *w) {
  const bnnc_word_t n = bnnc_nibbles(x[0] ^ w[0]);
  return bnnc_byte_sum((n & BNNC_M4) + ((n >> 4) & BNNC_M4));
}
#define BNNC_XNOR_POPCOUNT3(x, w, a, b) ((a) += bnnc_xnor_popcount3((x), (w)), (x) += 3, (w) += 3)
#define BNNC_XNOR_POPCOUNT1(x, w, a, b) ((a) += bnnc_xnor_popcount1((x), (w)), (x) += 1, (w) += 1)
#define BNNC_XNOR_POPCOUNT2(x, w, a, b) (BNNC_XNOR_POPCOUNT1(x, w, a, b), BNNC_XNOR_POPCOUNT1(x, w, a, b))
#define BNNC_XNOR_POPCOUNT3_START(x, w, a, b) ((a) = 0, (b) = 0, BNNC_XNOR_POPCOUNT3(x, w, a, b))
#define BNNC_XNOR_POPCOUNT2_START(x, w, a, b) ((a) = 0, (b) = 0, BNNC_XNOR_POPCOUNT2(x, w, a, b))
#define BNNC_XNOR_POPCOUNT1_START(x, w, a, b) ((a) = 0, (b) = 0, BNNC_XNOR_POPCOUNT1(x, w, a, b))
#endif
#define bnnc_popcount_total(a, b) ((a) - (b) + ((b) >> 4))

/* The integer-input kernel of MCU builds for values that fit int16 (passes/pack_bits.int16_pair_weights):
 * one window is N pairs of int16 values back to back (x, read in place from a band of input
 * rows); the weights (int16) hold per pair the G output channels' pairs of weights (tap 2g first;
 * one word per channel) of one group.
 * BNNC_INT16_MAC_FUNC(NAME, G, CHUNKS, REST, KIND) defines (NAME unique in the program: a global,
 * hidden symbol, so that link-time optimization finds it)
 *     void NAME(const int16_t *x, const int16_t *w, const int32_t *init, int32_t *out)
 * for windows of N = 16 CHUNKS + REST pairs (literals, REST < 32) and a group of G = 8, 6 or 4
 * channels (a literal): the sums init[k] + window . weights of channel k, into out[0..G-1] (KIND
 * SUMS) or, G = 8 only, their sign bits packed by bnnc_signs8 into out[0] (KIND SIGNS); the caller
 * moves w on by 2 G N.
 * BNNC_INT16_MAC_2(N, x, w, r) adds the window's sums of a group of G = 2 channels to r[0..1] and
 * moves x by 2 N, w by 4 N.
 * On Cortex-M4/M7 one SMLAD adds two products: NAME is a Thumb-2 function of its own (all
 * registers: the G accumulators from r4 on, loaded by one LDM, stored by one STM), a pair costing
 * one LDR of the window, the weights by LDMs of 3 words and LDRDs of 2, and G SMLADs (12
 * instructions per 16 MACs for G = 8, 9 per 12 for 6, 7 per 8 for 4; BNNC_INT16_MAC_2: 4 per
 * 4), whatever the caller's register pressure or frame pointer (out, r3, waits on the stack). The
 * C form (Cortex-M0, RISC-V, BNNC_PORTABLE) computes the same sums; they are exact (the packer
 * proved that every partial sum fits int32). */
#define BNNC_STR_(x) #x
#define BNNC_STR(x) BNNC_STR_(x)
/* The sign bits of 8 sums of one group in one word: sign(r[2j]) at bit 15 - j and sign(r[2j + 1])
 * at bit 31 - j (j < 4), the layout two PKHTBs per 4 sums give; a word of output bits is
 * b = (b >> 4) | signs8 over its groups, so the packer orders the channels of full output words
 * to land on their own bits (passes/pack_bits.int16_pair_lanes). */
BNNC_INLINE uint32_t bnnc_signs8(const int32_t *r) {
  uint32_t s = 0;
  for (int j = 0; j < 4; j++)
    s |= ((uint32_t)r[2 * j] >> 31) << (15 - j) | ((uint32_t)r[2 * j + 1] >> 31) << (31 - j);
  return s;
}
/* Thumb-2 assembly: Cortex-M4/M7 (M profile with the DSP extension) */
#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32) && defined(__ARM_ARCH_PROFILE) && __ARM_ARCH_PROFILE == 'M' && \
    !defined(BNNC_PORTABLE)
/* BNNC_REP_n(x): n copies of the string x (n <= 32), spelled out rather than by .rept, so that the
 * compiler sees the assembly's real length (branch and literal ranges around inline blocks). */
#define BNNC_REP_0(x) ""
#define BNNC_REP_1(x) BNNC_REP_0(x) x
#define BNNC_REP_2(x) BNNC_REP_1(x) x
#define BNNC_REP_3(x) BNNC_REP_2(x) x
#define BNNC_REP_4(x) BNNC_REP_3(x) x
#define BNNC_REP_5(x) BNNC_REP_4(x) x
#define BNNC_REP_6(x) BNNC_REP_5(x) x
#define BNNC_REP_7(x) BNNC_REP_6(x) x
#define BNNC_REP_8(x) BNNC_REP_7(x) x
#define BNNC_REP_9(x) BNNC_REP_8(x) x
#define BNNC_REP_10(x) BNNC_REP_9(x) x
#define BNNC_REP_11(x) BNNC_REP_10(x) x
#define BNNC_REP_12(x) BNNC_REP_11(x) x
#define BNNC_REP_13(x) BNNC_REP_12(x) x
#define BNNC_REP_14(x) BNNC_REP_13(x) x
#define BNNC_REP_15(x) BNNC_REP_14(x) x
#define BNNC_REP_16(x) BNNC_REP_15(x) x
#define BNNC_REP_17(x) BNNC_REP_16(x) x
#define BNNC_REP_18(x) BNNC_REP_17(x) x
#define BNNC_REP_19(x) BNNC_REP_18(x) x
#define BNNC_REP_20(x) BNNC_REP_19(x) x
#define BNNC_REP_21(x) BNNC_REP_20(x) x
#define BNNC_REP_22(x) BNNC_REP_21(x) x
#define BNNC_REP_23(x) BNNC_REP_22(x) x
#define BNNC_REP_24(x) BNNC_REP_23(x) x
#define BNNC_REP_25(x) BNNC_REP_24(x) x
#define BNNC_REP_26(x) BNNC_REP_25(x) x
#define BNNC_REP_27(x) BNNC_REP_26(x) x
#define BNNC_REP_28(x) BNNC_REP_27(x) x
#define BNNC_REP_29(x) BNNC_REP_28(x) x
#define BNNC_REP_30(x) BNNC_REP_29(x) x
#define BNNC_REP_31(x) BNNC_REP_30(x) x
#define BNNC_REP_32(x) BNNC_REP_31(x) x
/* one pair of taps of the G-channel function (BNNC_PAIR_G): x r0, weights r1, window value r2,
 * weights 3 at a time by LDM into r3/r12/lr (out, r3, waits on the stack), 2 by LDRD into r12/lr;
 * accumulators BNNC_INT16_ACCS_G */
#define BNNC_PAIR_SMLAD2(A, B) "ldrd r12, lr, [r1], #8\n\tsmlad " A ", r2, r12, " A "\n\tsmlad " B ", r2, lr, " B "\n\t"
#define BNNC_PAIR_SMLAD3(A, B, C)                                                                      \
  "ldm r1!, {r3, r12, lr}\n\tsmlad " A ", r2, r3, " A "\n\tsmlad " B ", r2, r12, " B "\n\tsmlad " C  \
  ", r2, lr, " C "\n\t"
#define BNNC_PAIR_4 "ldr r2, [r0], #4\n\t" BNNC_PAIR_SMLAD2("r4", "r5") BNNC_PAIR_SMLAD2("r6", "r7")
#define BNNC_PAIR_6 "ldr r2, [r0], #4\n\t" BNNC_PAIR_SMLAD3("r4", "r5", "r6") BNNC_PAIR_SMLAD3("r7", "r8", "r9")
#define BNNC_PAIR_8 BNNC_PAIR_6 BNNC_PAIR_SMLAD2("r10", "r11")
#define BNNC_INT16_ACCS_4 "r4-r7"
#define BNNC_INT16_ACCS_6 "r4-r9"
#define BNNC_INT16_ACCS_8 "r4-r11"
#define BNNC_INT16_END_SUMS(G) "stm r3, {" BNNC_INT16_ACCS_##G "}\n\t"
#define BNNC_INT16_END_SIGNS(G)                                                                        \
  "pkhtb r2, r5, r4, asr #16\n\tpkhtb r12, r7, r6, asr #16\n\tpkhtb lr, r9, r8, asr #16\n\t"           \
  "pkhtb r0, r11, r10, asr #16\n\tand r2, r2, #0x80008000\n\tand r12, r12, #0x80008000\n\t"            \
  "orr r2, r2, r12, lsr #1\n\tand lr, lr, #0x80008000\n\torr r2, r2, lr, lsr #2\n\t"                   \
  "and r0, r0, #0x80008000\n\torr r2, r2, r0, lsr #3\n\tstr r2, [r3]\n\t"
#define BNNC_INT16_MAC_CALLED 1 /* the MAC kernel is a function of its own: its frame comes under the layer's */
#define BNNC_INT16_THUMB2 1
#define BNNC_INT16_MAC_FUNC(NAME, G, CHUNKS, REST, KIND)                                               \
  void NAME(const int16_t *x, const int16_t *w, const int32_t *init, int32_t *out);                    \
  __asm__(".pushsection .text." #NAME ",\"ax\",%progbits\n\t.syntax unified\n\t.thumb\n\t.p2align 2\n\t" \
          ".global " #NAME "\n\t.hidden " #NAME "\n\t.type " #NAME ", %function\n\t.thumb_func\n" #NAME ":\n\t" \
          "push {r3-r11, lr}\n\tldm r2, {" BNNC_INT16_ACCS_##G "}\n\t"                                 \
          ".if " #CHUNKS "\n\tmovw r2, #" #CHUNKS "\n\tpush {r2}\n"                                     \
          "1:\n\t" BNNC_REP_16(BNNC_PAIR_##G) "ldr r2, [sp]\n\tsubs r2, r2, #1\n\tstr r2, [sp]\n\tbne 1b\n\t" \
          "add sp, sp, #4\n\t.endif\n\t"                                                                \
          BNNC_REP_##REST(BNNC_PAIR_##G) "ldr r3, [sp]\n\t" BNNC_INT16_END_##KIND(G) "pop {r3-r11, pc}\n\t" \
          ".size " #NAME ", .-" #NAME "\n\t.popsection");
#define BNNC_PAIR_2 "ldr %[v], [%[x]], #4\n\tldrd r12, lr, [%[w]], #8\n\tsmlad %[a0], %[v], r12, %[a0]\n\tsmlad %[a1], %[v], lr, %[a1]\n\t"
#define BNNC_INT16_MAC_2(N, XP, WP, R)                                                                 \
  do {                                                                                                 \
    uint32_t v_;                                                                                       \
    __asm__ volatile(BNNC_REP_##N(BNNC_PAIR_2)                                                         \
                     : [x] "+r"(XP), [w] "+r"(WP), [a0] "+r"((R)[0]), [a1] "+r"((R)[1]), [v] "=&r"(v_) \
                     :                                                                                 \
                     : "r12", "lr", "memory");                                                         \
  } while (0)
#else
/* On MCUs (Cortex-M0, RISC-V) the C form is a function of its own as well, and so is the band copy
 * (BNNC_INT16_BAND_FUNC): inlined into the layer, their accumulators, unrolled addresses and the
 * layer's loop state do not fit the registers together and are spilled into the layer's frame,
 * RAM above the arena (Cortex-M0: about 100 bytes), for a call per group and window. Host builds
 * inline them. */
#if BNNC_MCU
#define BNNC_INT16_MAC_CALLED 1
#define BNNC_INT16_MAC_DEF static BNNC_NOINLINE
#else
#define BNNC_INT16_MAC_DEF BNNC_INLINE
#endif
/* r[k] += the window's sum for channel k < g of the group (weights w: per pair, g int16 pairs) */
BNNC_INLINE void bnnc_int16_mac(const int16_t *x, int n, const int16_t *w, int g, int32_t *r) {
  for (int j = 0; j < n; j++, x += 2, w += 2 * g) {
    const int32_t x0 = x[0], x1 = x[1];
    for (int k = 0; k < g; k++) r[k] += x0 * w[2 * k] + x1 * w[2 * k + 1];
  }
}
/* the 8 sums accumulate in `out` (the layer's scratch: no stack copy), then SIGNS packs their signs */
#define BNNC_INT16_FINISH_SUMS(out) (void)(out)
#define BNNC_INT16_FINISH_SIGNS(out) (out)[0] = (int32_t)bnnc_signs8(out)
#define BNNC_INT16_MAC_FUNC(NAME, G, CHUNKS, REST, KIND)                                               \
  BNNC_INT16_MAC_DEF void NAME(const int16_t *x, const int16_t *w, const int32_t *init, int32_t *out) { \
    for (int j_ = 0; j_ < (G); j_++) out[j_] = init[j_];                                               \
    bnnc_int16_mac(x, 16 * (CHUNKS) + (REST), w, (G), out);                                            \
    BNNC_INT16_FINISH_##KIND(out);                                                                     \
  }
#define BNNC_INT16_MAC_2(N, XP, WP, R) (bnnc_int16_mac((XP), (N), (WP), 2, (R)), (XP) += 2 * (N), (WP) += 4 * (N))
#endif

/* The band the int16-pair kernel reads: input rows y0 .. y0 + kh - 1 of an (ih, iw, c) image of any
 * integer type as int16 (their values fit), column after column (kh x c values per column) from
 * column pl on, zero outside the image; the pl + pr padding columns are set to 0 once by the
 * caller. A window at output column ox then is the kh * kw * c values from column ox * sw on. */
#define BNNC_INT16_BAND(band, in, ih, iw, c, kh, pl, y0)                                               \
  do {                                                                                                  \
    for (int ky_ = 0; ky_ < (kh); ky_++) {                                                              \
      const int y_ = (y0) + ky_;                                                                        \
      int16_t *col_ = (band) + (pl) * (kh) * (c) + ky_ * (c);                                           \
      if (y_ < 0 || y_ >= (ih)) {                                                                       \
        for (int x_ = 0; x_ < (iw); x_++, col_ += (kh) * (c))                                           \
          for (int c_ = 0; c_ < (c); c_++) col_[c_] = 0;                                                \
        continue;                                                                                       \
      }                                                                                                 \
      for (int x_ = 0; x_ < (iw); x_++, col_ += (kh) * (c))                                             \
        for (int c_ = 0; c_ < (c); c_++) col_[c_] = (int16_t)(in)[((size_t)y_ * (iw) + x_) * (c) + c_]; \
    }                                                                                                   \
  } while (0)
/* BNNC_INT16_BAND_FUNC(NAME, T, ih, iw, c, kh, pl) and BNNC_INT16_BAND_AT(NAME, band, in, ih, iw, c,
 * kh, pl, y0): a layer's band copy. Where the C form of the MAC kernel is a function of its own
 * (BNNC_INT16_MAC_CALLED without the Thumb-2 one: Cortex-M0, RISC-V), the first defines
 * void NAME(int16_t *band, const T *in, int y0), BNNC_INT16_BAND with the layer's geometry
 * literal, and the second calls it; elsewhere the first is nothing and the second is
 * BNNC_INT16_BAND in place. BNNC_INT16_ROLLED before the loop that zeroes a band: BNNC_ROLLED
 * there, nothing elsewhere. */
#if BNNC_MCU && !defined(BNNC_INT16_THUMB2)
#define BNNC_INT16_ROLLED BNNC_ROLLED
#define BNNC_INT16_BAND_FUNC(NAME, T, ih, iw, c, kh, pl)                                                \
  static BNNC_NOINLINE void NAME(int16_t *band, const T *in, int y0) {                                  \
    BNNC_INT16_BAND(band, in, ih, iw, c, kh, pl, y0);                                                   \
  }
#define BNNC_INT16_BAND_AT(NAME, band, in, ih, iw, c, kh, pl, y0) NAME(band, in, y0)
#else
#define BNNC_INT16_ROLLED
#define BNNC_INT16_BAND_FUNC(NAME, T, ih, iw, c, kh, pl)
#define BNNC_INT16_BAND_AT(NAME, band, in, ih, iw, c, kh, pl, y0) BNNC_INT16_BAND(band, in, ih, iw, c, kh, pl, y0)
#endif

/* b with the sign bit of r shifted in at the top (a word of output bits fills from bit 0 up as
 * its channels come one after the other) */
BNNC_INLINE bnnc_word_t bnnc_shift_in_sign(bnnc_word_t b, int32_t r) {
  return (b >> 1) | ((bnnc_word_t)((uint32_t)r >> 31) << (BNNC_WORD_BITS - 1));
}

/* sum over l < n of x[l] * w[l]: one filter row of an integer-input layer */
BNNC_INLINE int32_t bnnc_int_dot16(const int16_t *x, const int8_t *w, int n) {
  int32_t a = 0;
  for (int l = 0; l < n; l++) a += (int32_t)x[l] * w[l];
  return a;
}

BNNC_INLINE int32_t bnnc_int_dot(const int32_t *x, const int8_t *w, int n) {
  int32_t a = 0;
  for (int l = 0; l < n; l++) a += x[l] * w[l];
  return a;
}

/* Round half to even in float32 without libm (exact for every float; needs FLT_EVAL_METHOD 0 and
 * the default rounding mode). Where the target has a rounding instruction the builtin is one
 * instruction (and never a libm call); elsewhere adding and subtracting 2^23 rounds. */
BNNC_INLINE float bnnc_rint(float v) {
#if (defined(__GNUC__) || defined(__clang__)) && (defined(__SSE4_1__) || defined(__aarch64__))
  return __builtin_rintf(v);
#elif BNNC_SOFT_FLOAT
  /* every float operation a call: the magnitude and the sign by their bits (-0 may stay -0) */
  union { float f; uint32_t u; } x, a;
  x.f = v;
  a.u = x.u & 0x7fffffffu;
  if (a.u < 0x4b000000u) a.f = (a.f + 8388608.0f) - 8388608.0f; /* |v| < 2^23 (NaN is not) */
  a.u |= x.u & 0x80000000u;
  return a.f;
#else
  float a = v < 0.0f ? -v : v;
  if (a < 8388608.0f) a = (a + 8388608.0f) - 8388608.0f;
  return v < 0.0f ? -a : a;
#endif
}

/* Truncation toward zero of a float known to lie well inside the int32 range. */
BNNC_INLINE float bnnc_trunc(float v) { return (float)(int32_t)v; }

BNNC_INLINE float bnnc_floor(float v) {
  float t = bnnc_trunc(v);
  return t > v ? t - 1.0f : t;
}

BNNC_INLINE float bnnc_ceil(float v) {
  float t = bnnc_trunc(v);
  return t < v ? t + 1.0f : t;
}
#endif /* BNNC_KERNELS_H */

/* ---- Block kernels (host), once per kernel variant -------------------------------------------- */
#if defined(BNNC_VARIANT)
#define BNNC_KERNELS_SECTION 1
#elif !defined(BNNC_VARIANTS) && !defined(BNNC_KERNELS_DEFAULT_DONE)
#define BNNC_KERNELS_DEFAULT_DONE 1
#define BNNC_KERNELS_SECTION 1
#endif
#ifdef BNNC_KERNELS_SECTION
#undef BNNC_KERNELS_SECTION
/* the variant's names, target and vector paths (read by bnnc_families.h and generated layers too) */
#undef BNNC_V
#undef BNNC_VT
#undef BNNC_AVX512
#undef BNNC_AVX512_POPCNT
#undef BNNC_AVX512_VNNI
#undef BNNC_AVX512_DQ
#undef BNNC_AVX2_POPCNT
#if !defined(BNNC_VARIANT)
#define BNNC_V(name) name
#define BNNC_VT
#if !defined(BNNC_PORTABLE) && defined(__AVX512F__) && defined(__AVX512BW__)
#define BNNC_AVX512 1
#include <immintrin.h>
#if defined(__AVX512VPOPCNTDQ__) && BNNC_WORD_BITS == 64
#define BNNC_AVX512_POPCNT 1
#endif
#if defined(__AVX512VNNI__)
#define BNNC_AVX512_VNNI 1
#endif
#if defined(__AVX512DQ__)
#define BNNC_AVX512_DQ 1
#endif
#endif
#elif BNNC_VARIANT == BNNC_KERNELS_PORTABLE
#define BNNC_V(name) name##_portable
#define BNNC_VT
#elif BNNC_VARIANT == BNNC_KERNELS_AVX2 && defined(BNNC_X86_VARIANTS)
#define BNNC_V(name) name##_avx2
#define BNNC_VT BNNC_TARGET_AVX2
#if BNNC_WORD_BITS == 64
#define BNNC_AVX2_POPCNT 1
#endif
#elif BNNC_VARIANT == BNNC_KERNELS_AVX512 && defined(BNNC_X86_VARIANTS)
#define BNNC_V(name) name##_avx512
#define BNNC_VT BNNC_TARGET_AVX512
#define BNNC_AVX512 1
#if BNNC_WORD_BITS == 64
#define BNNC_AVX512_POPCNT 1
#endif
#define BNNC_AVX512_VNNI 1
#define BNNC_AVX512_DQ 1
#else
#error "BNNC_VARIANT: BNNC_KERNELS_PORTABLE, or _AVX2 / _AVX512 on x86-64 builds without BNNC_PORTABLE"
#endif

/* Output bits of one pixel: bit o = (s[o] > thr[o]) XOR (bit o % 32 of neg[o / 32]), for
 * o < opad (thr and neg are padded so that padded outputs give 0 bits); cwo output words. */
BNNC_INLINE BNNC_VT void BNNC_V(bnnc_threshold_pack)(const int32_t *s, const int32_t *thr, const uint32_t *neg, int opad,
                                     int cwo, bnnc_word_t *dst) {
  for (int k = 0; k < cwo; k++) dst[k] = 0;
  for (int b = 0; b < opad / BNNC_OBLOCK; b++) {
    const int32_t *sb = s + b * BNNC_OBLOCK, *tb = thr + b * BNNC_OBLOCK;
#ifdef BNNC_AVX512
    const uint32_t m = (uint32_t)_mm512_cmpgt_epi32_mask(_mm512_loadu_si512(sb), _mm512_loadu_si512(tb)) |
                       (uint32_t)_mm512_cmpgt_epi32_mask(_mm512_loadu_si512(sb + 16), _mm512_loadu_si512(tb + 16))
                           << 16;
#else
    uint32_t m = 0;
    for (int j = 0; j < BNNC_OBLOCK; j++) m |= (uint32_t)(sb[j] > tb[j]) << j;
#endif
    dst[b * BNNC_OBLOCK / BNNC_WORD_BITS] |= (bnnc_word_t)(m ^ neg[b]) << (b * BNNC_OBLOCK % BNNC_WORD_BITS);
  }
}

#ifdef BNNC_AVX512_POPCNT
/* Popcounts of one block of 32 outputs (blocked weights wb) as two vectors of 16 int32:
 * 4 x 8 outputs, each window word broadcast, XORed with 8 weight words, VPOPCNTQ, added. */
BNNC_INLINE BNNC_VT void BNNC_V(bnnc_popcount_block)(const bnnc_word_t *src, int rs, int kh, int kwcw, const bnnc_word_t *wb,
                                     __m512i *s01, __m512i *s23) {
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  for (int ky = 0; ky < kh; ky++) {
    for (int j = 0; j < kwcw; j++, wb += BNNC_OBLOCK) {
      const __m512i x = _mm512_set1_epi64((long long)src[ky * rs + j]);
      a0 = _mm512_add_epi64(a0, _mm512_popcnt_epi64(_mm512_xor_si512(x, _mm512_load_si512(wb))));
      a1 = _mm512_add_epi64(a1, _mm512_popcnt_epi64(_mm512_xor_si512(x, _mm512_load_si512(wb + 8))));
      a2 = _mm512_add_epi64(a2, _mm512_popcnt_epi64(_mm512_xor_si512(x, _mm512_load_si512(wb + 16))));
      a3 = _mm512_add_epi64(a3, _mm512_popcnt_epi64(_mm512_xor_si512(x, _mm512_load_si512(wb + 24))));
    }
  }
  *s01 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(a0)), _mm512_cvtepi64_epi32(a1), 1);
  *s23 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(a2)), _mm512_cvtepi64_epi32(a3), 1);
}
#endif

#ifdef BNNC_AVX2_POPCNT
/* Popcounts of one block of 32 outputs (blocked weights wb) into acc, 16 outputs (4 vectors of 4
 * words) at a time: each window word broadcast and XORed with the weights, the bytes counted by
 * a 16-entry nibble table (VPSHUFB) and summed in bytes over up to 31 words (8 * 31 < 256), then
 * into 64-bit lanes (VPSADBW). */
BNNC_INLINE BNNC_VT void BNNC_V(bnnc_popcount_block)(const bnnc_word_t *src, int rs, int kh, int kwcw,
                                                     const bnnc_word_t *wb, int32_t *acc) {
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1,
                                         2, 2, 3, 2, 3, 3, 4);
  const __m256i nibble = _mm256_set1_epi8(0x0F), zero = _mm256_setzero_si256();
  for (int half = 0; half < 2; half++) {
    __m256i t[4] = {zero, zero, zero, zero}, c[4] = {zero, zero, zero, zero};
    const bnnc_word_t *w = wb + 16 * half;
    int pending = 0; /* words counted into c */
    for (int ky = 0; ky < kh; ky++) {
      for (int j = 0; j < kwcw; j++, w += BNNC_OBLOCK) {
        const __m256i x = _mm256_set1_epi64x((long long)src[ky * rs + j]);
        for (int k = 0; k < 4; k++) {
          const __m256i v = _mm256_xor_si256(x, _mm256_load_si256((const __m256i *)(w + 4 * k)));
          const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, nibble));
          const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), nibble));
          c[k] = _mm256_add_epi8(c[k], _mm256_add_epi8(lo, hi));
        }
        if (++pending == 31) {
          for (int k = 0; k < 4; k++) t[k] = _mm256_add_epi64(t[k], _mm256_sad_epu8(c[k], zero));
          for (int k = 0; k < 4; k++) c[k] = zero;
          pending = 0;
        }
      }
    }
    for (int k = 0; k < 4; k++) {
      const __m256i sum = _mm256_add_epi64(t[k], _mm256_sad_epu8(c[k], zero));
      /* the low 32 bits of the four 64-bit lanes */
      const __m256i packed = _mm256_permutevar8x32_epi32(sum, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
      _mm_storeu_si128((__m128i *)(acc + 16 * half + 4 * k), _mm256_castsi256_si128(packed));
    }
  }
}
#endif

/* acc[o] = sum over the window's words of popcount(word XOR w), for o < opad: the window is kh
 * rows of kwcw words, rs apart; w is blocked [opad / 32][kh * kwcw][32]. */
BNNC_INLINE BNNC_VT void BNNC_V(bnnc_xnor_popcount)(const bnnc_word_t *src, int rs, int kh, int kwcw, const bnnc_word_t *w,
                                    int opad, int32_t *acc) {
  const int taps = kh * kwcw;
  for (int b = 0; b < opad / BNNC_OBLOCK; b++) {
    const bnnc_word_t *wb = w + (size_t)b * taps * BNNC_OBLOCK;
#ifdef BNNC_AVX512_POPCNT
    __m512i s01, s23;
    BNNC_V(bnnc_popcount_block)(src, rs, kh, kwcw, wb, &s01, &s23);
    _mm512_storeu_si512(acc + b * BNNC_OBLOCK, s01);
    _mm512_storeu_si512(acc + b * BNNC_OBLOCK + 16, s23);
#elif defined(BNNC_AVX2_POPCNT)
    BNNC_V(bnnc_popcount_block)(src, rs, kh, kwcw, wb, acc + b * BNNC_OBLOCK);
#else
    bnnc_word_t a[BNNC_OBLOCK];
    for (int j = 0; j < BNNC_OBLOCK; j++) a[j] = 0;
    for (int ky = 0; ky < kh; ky++) {
      for (int t = 0; t < kwcw; t++, wb += BNNC_OBLOCK) {
        const bnnc_word_t x = src[ky * rs + t];
        for (int j = 0; j < BNNC_OBLOCK; j++) a[j] += (bnnc_word_t)bnnc_popcount(x ^ wb[j]);
      }
    }
    for (int j = 0; j < BNNC_OBLOCK; j++) acc[b * BNNC_OBLOCK + j] = (int32_t)a[j];
#endif
  }
}

/* One output pixel of a binary layer with a bit output: popcounts, then thresholds and packing
 * as bnnc_threshold_pack; `acc` is scratch for opad int32 (unused by the fused AVX-512 path). */
BNNC_INLINE BNNC_VT void BNNC_V(bnnc_binary_pixel)(const bnnc_word_t *src, int rs, int kh, int kwcw, const bnnc_word_t *w, int opad,
                                   const int32_t *thr, const uint32_t *neg, int cwo, int32_t *acc,
                                   bnnc_word_t *dst) {
#ifdef BNNC_AVX512_POPCNT
  /* fused: the accumulators stay in registers and are compared there */
  const int taps = kh * kwcw;
  (void)acc;
  for (int k = 0; k < cwo; k++) dst[k] = 0;
  for (int b = 0; b < opad / BNNC_OBLOCK; b++) {
    const int32_t *tb = thr + b * BNNC_OBLOCK;
    __m512i s01, s23;
    BNNC_V(bnnc_popcount_block)(src, rs, kh, kwcw, w + (size_t)b * taps * BNNC_OBLOCK, &s01, &s23);
    const uint32_t m = (uint32_t)_mm512_cmpgt_epi32_mask(s01, _mm512_loadu_si512(tb)) |
                       (uint32_t)_mm512_cmpgt_epi32_mask(s23, _mm512_loadu_si512(tb + 16)) << 16;
    dst[b * BNNC_OBLOCK / BNNC_WORD_BITS] |= (bnnc_word_t)(m ^ neg[b]) << (b * BNNC_OBLOCK % BNNC_WORD_BITS);
  }
#else
  BNNC_V(bnnc_xnor_popcount)(src, rs, kh, kwcw, w, opad, acc);
  BNNC_V(bnnc_threshold_pack)(acc, thr, neg, opad, cwo, dst);
#endif
}

#ifdef BNNC_AVX512_VNNI
/* acc[o] = corr[o] + sum of u * w over the window with VPDPBUSD (unsigned bytes u times signed
 * weights, exact int32 sums): kh rows of g groups of 4 bytes, rows rs bytes apart; w is
 * [opad / 32][kh][g][32][4]. Two accumulator chains per 16 outputs hide VPDPBUSD's latency. */
BNNC_INLINE BNNC_VT void BNNC_V(bnnc_int_mac_vnni)(const uint8_t *u, int rs, int kh, int g, const int8_t *w, const int32_t *corr,
                                   int opad, int32_t *acc) {
  for (int b = 0; b < opad / BNNC_OBLOCK; b++) {
    const int8_t *wb = w + (size_t)b * kh * g * 4 * BNNC_OBLOCK;
    __m512i a0 = _mm512_loadu_si512(corr + b * BNNC_OBLOCK), a1 = _mm512_loadu_si512(corr + b * BNNC_OBLOCK + 16);
    __m512i c0 = _mm512_setzero_si512(), c1 = c0;
    for (int ky = 0; ky < kh; ky++) {
      const uint8_t *row = u + (size_t)ky * rs;
      int t = 0;
      for (; t + 1 < g; t += 2, wb += 8 * BNNC_OBLOCK) {
        const __m512i x0 = _mm512_broadcastd_epi32(_mm_loadu_si32(row + 4 * t));
        const __m512i x1 = _mm512_broadcastd_epi32(_mm_loadu_si32(row + 4 * t + 4));
        a0 = _mm512_dpbusd_epi32(a0, x0, _mm512_load_si512(wb));
        a1 = _mm512_dpbusd_epi32(a1, x0, _mm512_load_si512(wb + 64));
        c0 = _mm512_dpbusd_epi32(c0, x1, _mm512_load_si512(wb + 128));
        c1 = _mm512_dpbusd_epi32(c1, x1, _mm512_load_si512(wb + 192));
      }
      if (t < g) {
        const __m512i x0 = _mm512_broadcastd_epi32(_mm_loadu_si32(row + 4 * t));
        a0 = _mm512_dpbusd_epi32(a0, x0, _mm512_load_si512(wb));
        a1 = _mm512_dpbusd_epi32(a1, x0, _mm512_load_si512(wb + 64));
        wb += 4 * BNNC_OBLOCK;
      }
    }
    _mm512_storeu_si512(acc + b * BNNC_OBLOCK, _mm512_add_epi32(a0, c0));
    _mm512_storeu_si512(acc + b * BNNC_OBLOCK + 16, _mm512_add_epi32(a1, c1));
  }
}
#endif
#if defined(BNNC_VARIANT)
/* bnnc_rint in the variant: one rounding instruction where the variant's target has SSE4.1's
 * (bnnc_rint decides by the compiler flags, which a variant's target attribute does not change). */
BNNC_INLINE BNNC_VT float BNNC_V(bnnc_rint)(float v) {
#if BNNC_VARIANT == BNNC_KERNELS_AVX2 || BNNC_VARIANT == BNNC_KERNELS_AVX512
  return __builtin_rintf(v);
#else
  return bnnc_rint(v);
#endif
}
#endif

#endif /* BNNC_KERNELS_SECTION */
