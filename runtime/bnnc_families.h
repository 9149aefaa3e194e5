/* bnnc runtime kernels of the compressed families: ternary, two-scale and multi-base
 * weights as masked binary bases, integer (int8) layers, 64-bit accumulators, fixed-point
 * requantization. Included after bnnc_kernels.h (bnnc_word_t, bnnc_popcount, BNNC_INLINE).
 *
 * C99, word-size generic (32- or 64-bit bnnc_word_t), no libc calls, no allocation. */
#ifndef BNNC_FAMILIES_H
#define BNNC_FAMILIES_H

#ifndef BNNC_KERNELS_H
#error "include bnnc_kernels.h before bnnc_families.h"
#endif

#ifndef BNNC_LAYER /* layers stay separate functions (bnnc_kernels.h defines it) */
#define BNNC_LAYER static
#endif

/* BNNC_OPAQUE(p);: on Thumb-2 MCUs (Cortex-M3/M4/M7) the compiler forgets what the pointer p holds
 * (an empty asm that may change it). At the top of a loop body, the addresses derived from p are
 * computed in the body (free in the addressing modes) instead of hoisted before the loop into
 * registers, which on a 13-register core are spilled: stack frame, RAM above the arena. (RISC-V
 * has the registers; on Cortex-M0 it is a wash.) */
#if defined(__ARM_ARCH_PROFILE) && __ARM_ARCH_PROFILE == 'M' && defined(__ARM_ARCH_ISA_THUMB) && \
    __ARM_ARCH_ISA_THUMB >= 2 && (defined(__GNUC__) || defined(__clang__))
#define BNNC_OPAQUE(p) __asm__("" : "+r"(p))
#else
#define BNNC_OPAQUE(p) (void)(p)
#endif

/* BNNC_EPILOGUE: how a layer's out-of-line epilogue (c/families/layer.j2) is defined: a function
 * of its own where the layer's MAC kernel is one (BNNC_INT16_MAC_CALLED): inlined, its 64-bit
 * arithmetic spills the layer's loop state into the layer's frame, under the MAC kernel's; out of
 * line, the stack holds the deeper of the two frames. Inline elsewhere. */
#if defined(BNNC_INT16_MAC_CALLED) && (defined(__GNUC__) || defined(__clang__))
#define BNNC_EPILOGUE static __attribute__((noinline))
#else
#define BNNC_EPILOGUE BNNC_INLINE
#endif


#define BNNC_FAM_OBLOCK 8 /* outputs per block of the plane tables (one 512-bit vector of 64-bit words) */
/* The sums of one block of outputs: a local array on the host (vector registers), in place in the
 * destination (the layer's scratch) on MCUs, where they would be a stack copy. */
#ifdef BNNC_VARIANTS
#define BNNC_FAM_SUMS(type, a, dst) type a[BNNC_FAM_OBLOCK]
#define BNNC_FAM_SUMS_DONE(a, dst)                                                                 \
  for (int j_ = 0; j_ < BNNC_FAM_OBLOCK; j_++) (dst)[j_] = a[j_]
#else
#define BNNC_FAM_SUMS(type, a, dst) type *a = (dst)
#define BNNC_FAM_SUMS_DONE(a, dst) (void)(a)
#endif

/* Popcount planes (compiler/weight_planes.py): what one plane counts per window word x. */
#define BNNC_PLANE_XNOR 0        /* popcount(x ^ b) */
#define BNNC_PLANE_MASKED_XNOR 1 /* popcount((x ^ b) & m) */
#define BNNC_PLANE_AND 2         /* popcount(x & m) */

/* popcount of the whole window (the all-ones plane, shared by every output) */
BNNC_INLINE int32_t bnnc_fam_window_popcount(const bnnc_word_t *src, int rs, int kh, int kwcw) {
  int32_t n = 0;
  for (int ky = 0; ky < kh; ky++)
    for (int t = 0; t < kwcw; t++) n += bnnc_popcount(src[ky * rs + t]);
  return n;
}

/* A family layer's accumulator from its kernels' sums: acc[o] = corr[o] + gw(o) * ones + the sum
 * over the planes j < np of g_j(o) * s[j * stride + o], for o < n; g_j(o) = gtab[j][o] where gtab
 * and gtab[j] are not NULL, else gain[j] (gw likewise from wtab, wgain: 0 where the layer has no
 * window term). One pass over the outputs; np and the gains are compile-time constants once
 * inlined (the layers pass literals), so the planes' loop unrolls into the expression of each o.
 * rolled (a constant): the loop over o stays a loop on MCUs (BNNC_ROLLED). */
#define BNNC_FAM_ACCUMULATE_O(o)                                                                   \
  do {                                                                                             \
    int64_t a = corr[o] + (wtab ? wtab[o] : wgain) * (int64_t)ones;                                \
    for (int j = 0; j < np; j++) a += (gtab && gtab[j] ? gtab[j][o] : gain[j]) * (int64_t)s[j * stride + o]; \
    acc[o] = a;                                                                                    \
  } while (0)
BNNC_INLINE void bnnc_fam_accumulate(int64_t *acc, const int64_t *corr, const int32_t *s, int stride, int np,
                                     const int64_t *const *gtab, const int64_t *gain, int32_t ones,
                                     const int64_t *wtab, int64_t wgain, int n, int rolled) {
  if (rolled) {
    BNNC_ROLLED
    for (int o = 0; o < n; o++) BNNC_FAM_ACCUMULATE_O(o);
  } else {
    for (int o = 0; o < n; o++) BNNC_FAM_ACCUMULATE_O(o);
  }
}
#undef BNNC_FAM_ACCUMULATE_O

/* Expander connectivity on integer inputs: output o reads only the input channels
 * chan[start[o] .. start[o+1]) (window win laid out [tap][c], c < cin); w holds, per listed
 * (o, c), its k x k kernel. acc[o] = sum of those kernels times the window. */
BNNC_INLINE void bnnc_sparse_int_mac64(const int32_t *win, int ktaps, int cin, const int32_t *start,
                                       const int32_t *chan, const int32_t *w, int o, int64_t *acc) {
  for (int i = 0; i < o; i++) {
    int64_t a = 0;
    for (int e = start[i]; e < start[i + 1]; e++) {
      const int32_t *kw = w + (size_t)e * ktaps;
      const int32_t *x = win + chan[e];
      for (int t = 0; t < ktaps; t++) a += (int64_t)x[(size_t)t * cin] * kw[t];
    }
    acc[i] = a;
  }
}

/* Depthwise and pooling convolutions on the padded image, whose values are in output order (the
 * layer puts each output's input channel at its place when it fills the image): s[o] = sum over
 * the kh x kw taps of x[tap][o] * w[tap][o] in int32 (bnnc proved the sums fit) for o < n, 0 up
 * to opad; the window's first value at im, rows rs values apart, c values per pixel. Loops over o
 * innermost, contiguous, so the variants vectorize them. */
BNNC_INLINE void bnnc_depthwise_mac32(const int32_t *im, int rs, int c, int kh, int kw, const int8_t *w, int n,
                                      int opad, int32_t *s) {
  for (int o = 0; o < opad; o++) s[o] = 0;
  for (int ky = 0; ky < kh; ky++) {
    for (int kx = 0; kx < kw; kx++) {
      const int32_t *x = im + (size_t)ky * rs + (size_t)kx * c;
      const int8_t *wt = w + (size_t)(ky * kw + kx) * opad;
      for (int o = 0; o < n; o++) s[o] += x[o] * (int32_t)wt[o];
    }
  }
}

/* The same in 32 bits, for layers whose sums bnnc proved to fit int32. */
BNNC_INLINE void bnnc_sparse_int_mac32(const int32_t *win, int ktaps, int cin, const int32_t *start,
                                       const int32_t *chan, const int32_t *w, int o, int32_t *acc) {
  for (int i = 0; i < o; i++) {
    int32_t a = 0;
    for (int e = start[i]; e < start[i + 1]; e++) {
      const int32_t *kw = w + (size_t)e * ktaps;
      const int32_t *x = win + chan[e];
      for (int t = 0; t < ktaps; t++) a += x[(size_t)t * cin] * kw[t];
    }
    acc[i] = a;
  }
}

/* floor(v / 2**s) for any sign, with shifts of non-negative values only (s < 63). */
BNNC_INLINE int64_t bnnc_shr_floor(int64_t v, int s) { return v >= 0 ? (v >> s) : ~((~v) >> s); }

/* Fixed-point requantization (ir.Requantize): clamp(floor((clamp(acc) * mult + add) / 2**s), lo, hi). */
BNNC_INLINE int32_t bnnc_requantize(int64_t acc, int64_t mult, int64_t add, int s, int64_t acc_lo,
                                    int64_t acc_hi, int32_t lo, int32_t hi) {
  if (acc < acc_lo) acc = acc_lo;
  if (acc > acc_hi) acc = acc_hi;
  const int64_t v = bnnc_shr_floor(acc * mult + add, s);
  return v < lo ? lo : (v > hi ? hi : (int32_t)v);
}

/* dst |= the bits m (at most 8) placed at bit j of the cw words at dst. */
BNNC_INLINE void bnnc_deposit_bits8(bnnc_word_t *dst, int j, uint32_t m, int cw) {
  const int at = j % BNNC_WORD_BITS;
  dst[j / BNNC_WORD_BITS] |= (bnnc_word_t)m << at;
  if (at + 8 > BNNC_WORD_BITS && j / BNNC_WORD_BITS + 1 < cw)
    dst[j / BNNC_WORD_BITS + 1] |= (bnnc_word_t)m >> (BNNC_WORD_BITS - at);
}

/* Multi-level output: the number of levels b < levels with dir * acc >= thr[b * stride] (level-major
 * tables, stride = channels), counted without branches. */
BNNC_INLINE int32_t bnnc_level_count(int64_t acc, int8_t dir, const int64_t *thr, int stride, int levels) {
  const int64_t x = dir > 0 ? acc : -acc;
  int32_t n = 0;
  for (int b = 0; b < levels; b++) n += x >= thr[(size_t)b * stride];
  return n;
}

/* The same count by a branch-free binary search, for many levels (e.g. 255 of an int8 output):
 * bnnc uses it only where every channel's thresholds are non-decreasing. Levels below lo are
 * passed and the count lies in [lo, lo + n]. */
BNNC_INLINE int32_t bnnc_level_search(int64_t acc, int8_t dir, const int64_t *thr, int stride, int levels) {
  const int64_t x = dir > 0 ? acc : -acc;
  if (levels == 0) return 0;
  int lo = 0, n = levels;
  while (n > 1) {
    const int half = n / 2;
    lo = x >= thr[(size_t)(lo + half) * stride] ? lo + half : lo;
    n -= half;
  }
  return lo + (x >= thr[(size_t)lo * stride]);
}

/* The same count from an affine guess checked against two thresholds (bnnc's "guess" kernel,
 * passes/pack_families.py): guess holds the rows a, b, M, K (stride apart), thr the thresholds with
 * a first row a and a last row b + 1; bnnc proved |g - count| <= 1 for every x' in [a, b]. */
BNNC_INLINE int32_t bnnc_level_guess(int64_t acc, int8_t dir, const int64_t *thr, int stride, int levels,
                                     const int64_t *guess, int shift) {
  int64_t x = dir > 0 ? acc : -acc;
  const int64_t a = guess[0], b = guess[stride];
  x = x < a ? a : (x > b ? b : x); /* the count is constant outside [a, b] */
  int64_t g = bnnc_shr_floor((x - a) * guess[2 * (size_t)stride] + guess[3 * (size_t)stride], shift);
  g = g < 0 ? 0 : (g > levels ? levels : g);
  return (int32_t)g - 1 + (x >= thr[(size_t)g * stride]) + (x >= thr[(size_t)(g + 1) * stride]);
}

/* How bnnc_levels_row counts levels (passes/pack_families.py chooses). */
#define BNNC_LEVELS_COUNT 0  /* bnnc_level_count */
#define BNNC_LEVELS_SEARCH 1 /* bnnc_level_search */
#define BNNC_LEVELS_GUESS 2  /* bnnc_level_guess (guess, shift) */

#endif /* BNNC_FAMILIES_H */

/* ---- Kernels with vector paths, once per kernel variant (see bnnc_kernels.h) ---------------- */
#if defined(BNNC_VARIANT)
#define BNNC_FAMILIES_SECTION 1
#elif !defined(BNNC_VARIANTS) && !defined(BNNC_FAMILIES_DEFAULT_DONE)
#define BNNC_FAMILIES_DEFAULT_DONE 1
#define BNNC_FAMILIES_SECTION 1
#endif
#ifdef BNNC_FAMILIES_SECTION
#undef BNNC_FAMILIES_SECTION

#ifdef BNNC_AVX512
/* Eight int64 just written by the caller (p has 8 readable values), as two 256-bit loads: those
 * forward from the stores of a loop that a compiler vectorized with 256-bit or 512-bit vectors. */
BNNC_INLINE BNNC_VT __m512i BNNC_V(bnnc_load8_i64)(const int64_t *p) {
  return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)p)),
                            _mm256_loadu_si256((const __m256i *)(p + 4)), 1);
}
#endif

/* s[o] = sum over the window's words x of the plane's count (kind, a compile-time constant once
 * inlined), for o < opad: the window is kh rows of kwcw words, rs apart; b and m are blocked
 * [opad / 8][kh * kwcw][8] (either may be NULL where the kind does not read it). With AVX-512
 * VPOPCNTQ and 64-bit words one block is one vector: x broadcast, 8 table words, VPOPCNTQ. */
BNNC_INLINE BNNC_VT void BNNC_V(bnnc_fam_plane_popcount)(int kind, const bnnc_word_t *src, int rs, int kh, int kwcw,
                                         const bnnc_word_t *b, const bnnc_word_t *m, int opad, int32_t *s) {
  const size_t blk = (size_t)kh * kwcw * BNNC_FAM_OBLOCK; /* words per block of a table */
  for (int ob = 0; ob < opad / BNNC_FAM_OBLOCK; ob++) {
    const bnnc_word_t *bb = b ? b + ob * blk : b, *mb = m ? m + ob * blk : m;
#ifdef BNNC_AVX512_POPCNT
    __m512i a = _mm512_setzero_si512();
    for (int ky = 0; ky < kh; ky++) {
      for (int t = 0; t < kwcw; t++) {
        const __m512i x = _mm512_set1_epi64((long long)src[ky * rs + t]);
        __m512i v;
        if (kind == BNNC_PLANE_AND) {
          v = _mm512_and_si512(x, _mm512_loadu_si512(mb));
        } else {
          v = _mm512_xor_si512(x, _mm512_loadu_si512(bb));
          if (kind == BNNC_PLANE_MASKED_XNOR) v = _mm512_and_si512(v, _mm512_loadu_si512(mb));
        }
        a = _mm512_add_epi64(a, _mm512_popcnt_epi64(v));
        if (bb) bb += BNNC_FAM_OBLOCK;
        if (mb) mb += BNNC_FAM_OBLOCK;
      }
    }
    _mm256_storeu_si256((__m256i *)(s + ob * BNNC_FAM_OBLOCK), _mm512_cvtepi64_epi32(a));
#elif defined(BNNC_VARIANTS)
    BNNC_FAM_SUMS(int32_t, a, s + ob * BNNC_FAM_OBLOCK);
    for (int j = 0; j < BNNC_FAM_OBLOCK; j++) a[j] = 0;
    for (int ky = 0; ky < kh; ky++) {
      for (int t = 0; t < kwcw; t++) {
        const bnnc_word_t x = src[ky * rs + t];
        for (int j = 0; j < BNNC_FAM_OBLOCK; j++) {
          const bnnc_word_t v = kind == BNNC_PLANE_AND ? x & mb[j]
                                : kind == BNNC_PLANE_MASKED_XNOR ? (x ^ bb[j]) & mb[j] : x ^ bb[j];
          a[j] += bnnc_popcount(v);
        }
        if (bb) bb += BNNC_FAM_OBLOCK;
        if (mb) mb += BNNC_FAM_OBLOCK;
      }
    }
    BNNC_FAM_SUMS_DONE(a, s + ob * BNNC_FAM_OBLOCK);
#else
    /* MCUs: one output at a time, its sum in a register (eight sums with the popcount's constants
     * and the pointers do not fit 13 registers: the rest spill to the stack) */
    BNNC_ROLLED
    for (int j = 0; j < BNNC_FAM_OBLOCK; j++) {
      const bnnc_word_t *bj = bb ? bb + j : bb, *mj = mb ? mb + j : mb;
      int32_t a = 0;
      for (int ky = 0; ky < kh; ky++) {
        for (int t = 0; t < kwcw; t++) {
          const bnnc_word_t x = src[ky * rs + t];
          const bnnc_word_t v = kind == BNNC_PLANE_AND ? x & *mj
                                : kind == BNNC_PLANE_MASKED_XNOR ? (x ^ *bj) & *mj : x ^ *bj;
          a += bnnc_popcount(v);
          if (bj) bj += BNNC_FAM_OBLOCK;
          if (mj) mj += BNNC_FAM_OBLOCK;
        }
      }
      s[ob * BNNC_FAM_OBLOCK + j] = a;
    }
#endif
  }
}

/* BNNC_INT_MAC64(name, wtype, load8): for the n windows p < n, dx values apart,
 * acc[p * opad + o] = init[p][o] + sum_l x_l * w[l][o] in 64 bits for o < opad, over the taps
 * l = ky * row + j of kh rows of `row` values, x_l = x[p * dx + ky * stride + j] (windows read in
 * place from a padded image: stride is the image's row length, dx a window's step along a row; a
 * gathered window is one row, kh = 1, n = 1), weights [kh * row][opad] of type wtype (int32, or
 * int8 where they fit: a quarter of the table); load8(p) sign-extends eight weights to 64-bit
 * lanes. With AVX-512, eight outputs per vector: VPMULDQ multiplies the low 32 bits of each lane
 * (one micro-op, where a 64-bit VPMULLQ takes three), so x is broadcast as 32 bits straight from
 * memory. Four windows at a time share each weight load (4 x 6 accumulators, 4 broadcasts and
 * one weight vector: 29 of the 32 registers), which leaves the multiplies as the bound; a last
 * one to three windows go one at a time, up to 12 vectors of outputs per pass. */
#undef BNNC_INT_MAC64 /* defined once per variant */
#undef BNNC_INT_MAC64_PASS
#undef BNNC_INT_MAC64_WINDOWS
#undef BNNC_LOAD8_W32
#undef BNNC_LOAD8_W8
#ifdef BNNC_AVX512
/* One pass: np windows by nv vectors of outputs from ob (both compile-time constants, so that the
 * accumulators live in registers). */
#define BNNC_INT_MAC64_PASS(np, nv, wtype, load8, x, dx, stride, kh, row, w, opad, init, acc, ob)     \
  do {                                                                                             \
    __m512i a[np][nv];                                                                             \
    for (int p = 0; p < (np); p++)                                                                 \
      for (int v = 0; v < (nv); v++) a[p][v] = _mm512_loadu_si512((const void *)((init)[p] + (ob) + 8 * v)); \
    const wtype *wr = (w) + (ob);                                                                  \
    for (int ky = 0; ky < (kh); ky++) {                                                            \
      const int32_t *xr = (x) + (size_t)ky * (stride);                                             \
      for (int j = 0; j < (row); j++, wr += (opad)) {                                              \
        __m512i xv[np];                                                                            \
        for (int p = 0; p < (np); p++) xv[p] = _mm512_set1_epi32(xr[p * (dx) + j]);               \
        for (int v = 0; v < (nv); v++) {                                                           \
          const __m512i wv = load8(wr + 8 * v);                                                    \
          for (int p = 0; p < (np); p++) a[p][v] = _mm512_add_epi64(a[p][v], _mm512_mul_epi32(xv[p], wv)); \
        }                                                                                          \
      }                                                                                            \
    }                                                                                              \
    for (int p = 0; p < (np); p++)                                                                 \
      for (int v = 0; v < (nv); v++)                                                               \
        _mm512_storeu_si512((void *)((acc) + (size_t)p * (opad) + (ob) + 8 * v), a[p][v]);        \
  } while (0)
/* All outputs of np windows: passes of 6 vectors (4 windows) or 12 (one), then the rest */
#define BNNC_INT_MAC64_WINDOWS(np, wtype, load8, x, dx, stride, kh, row, w, opad, init, acc)            \
  do {                                                                                             \
    enum { nvmax_ = (np) == 4 ? 6 : 12 };                                                          \
    int ob = 0;                                                                                    \
    for (; ob + 8 * nvmax_ <= (opad); ob += 8 * nvmax_)                                            \
      BNNC_INT_MAC64_PASS(np, nvmax_, wtype, load8, x, dx, stride, kh, row, w, opad, init, acc, ob); \
    switch (((opad) - ob) / 8) { /* a constant once inlined into a layer */                        \
    case 1: BNNC_INT_MAC64_PASS(np, 1, wtype, load8, x, dx, stride, kh, row, w, opad, init, acc, ob); break; \
    case 2: BNNC_INT_MAC64_PASS(np, 2, wtype, load8, x, dx, stride, kh, row, w, opad, init, acc, ob); break; \
    case 3: BNNC_INT_MAC64_PASS(np, 3, wtype, load8, x, dx, stride, kh, row, w, opad, init, acc, ob); break; \
    case 4: BNNC_INT_MAC64_PASS(np, 4, wtype, load8, x, dx, stride, kh, row, w, opad, init, acc, ob); break; \
    case 5: BNNC_INT_MAC64_PASS(np, 5, wtype, load8, x, dx, stride, kh, row, w, opad, init, acc, ob); break; \
    case 6: BNNC_INT_MAC64_PASS(np, 6, wtype, load8, x, dx, stride, kh, row, w, opad, init, acc, ob); break; \
    /* more than 5 left: one window at a time (four at a time stop at 6) */                        \
    case 7: BNNC_INT_MAC64_PASS(1, 7, wtype, load8, x, dx, stride, kh, row, w, opad, init, acc, ob); break; \
    case 8: BNNC_INT_MAC64_PASS(1, 8, wtype, load8, x, dx, stride, kh, row, w, opad, init, acc, ob); break; \
    case 9: BNNC_INT_MAC64_PASS(1, 9, wtype, load8, x, dx, stride, kh, row, w, opad, init, acc, ob); break; \
    case 10: BNNC_INT_MAC64_PASS(1, 10, wtype, load8, x, dx, stride, kh, row, w, opad, init, acc, ob); break; \
    case 11: BNNC_INT_MAC64_PASS(1, 11, wtype, load8, x, dx, stride, kh, row, w, opad, init, acc, ob); break; \
    default: break;                                                                                \
    }                                                                                              \
  } while (0)
#define BNNC_INT_MAC64(name, wtype, load8)                                                          \
  BNNC_INLINE BNNC_VT void name(const int32_t *x, int dx, int n, int stride, int kh, int row, const wtype *w, \
                                int opad, const int64_t *const *init, int64_t *acc) {              \
    int q = 0;                                                                                     \
    for (; q + 4 <= n; q += 4)                                                                     \
      BNNC_INT_MAC64_WINDOWS(4, wtype, load8, x + q * dx, dx, stride, kh, row, w, opad, init + q,  \
                             acc + (size_t)q * opad);                                              \
    for (; q < n; q++)                                                                             \
      BNNC_INT_MAC64_WINDOWS(1, wtype, load8, x + q * dx, dx, stride, kh, row, w, opad, init + q,  \
                             acc + (size_t)q * opad);                                              \
  }
#define BNNC_LOAD8_W32(p) _mm512_cvtepi32_epi64(_mm256_loadu_si256((const __m256i *)(p)))
#define BNNC_LOAD8_W8(p) _mm512_cvtepi8_epi64(_mm_loadl_epi64((const __m128i *)(p)))
#else
#define BNNC_INT_MAC64(name, wtype, load8)                                                          \
  BNNC_INLINE BNNC_VT void name(const int32_t *x, int dx, int n, int stride, int kh, int row, const wtype *w, \
                                int opad, const int64_t *const *init, int64_t *acc) {              \
    for (int q = 0; q < n; q++) {                                                                  \
      for (int ob = 0; ob < opad; ob += BNNC_FAM_OBLOCK) {                                         \
        BNNC_FAM_SUMS(int64_t, a, acc + (size_t)q * opad + ob);                                    \
        for (int j = 0; j < BNNC_FAM_OBLOCK; j++) a[j] = init[q][ob + j];                          \
        const wtype *wr = w + ob;                                                                  \
        for (int ky = 0; ky < kh; ky++) {                                                          \
          const int32_t *xr = x + (size_t)q * dx + (size_t)ky * stride;                            \
          for (int l = 0; l < row; l++, wr += opad) {                                              \
            const int64_t v = xr[l];                                                               \
            for (int j = 0; j < BNNC_FAM_OBLOCK; j++) a[j] += v * (int64_t)wr[j];                  \
          }                                                                                        \
        }                                                                                          \
        BNNC_FAM_SUMS_DONE(a, acc + (size_t)q * opad + ob);                                        \
      }                                                                                            \
    }                                                                                              \
  }
#define BNNC_LOAD8_W32(p) 0
#define BNNC_LOAD8_W8(p) 0
#endif
BNNC_INT_MAC64(BNNC_V(bnnc_int_mac64), int32_t, BNNC_LOAD8_W32)
BNNC_INT_MAC64(BNNC_V(bnnc_int_mac64_w8), int8_t, BNNC_LOAD8_W8)

/* The plane image of "ternary_sums" layers (bnnc_ternary_sums64): the integer input (ih x iw pixels
 * of c values of in_type) padded by pt, pl, pb, pr as c planes of plen int32 values, channel ch's
 * padded pixel (y, x) at ch * plen + y * pw + x (pw = pl + iw + pr; plen >= ph * pw), x = 0 at the
 * padding; then zeros up to n values (read by the last pass of positions). With AVX-512, int32
 * inputs move as blocks of 8 pixels x 8 channels, transposed in registers (AVX2 shuffles); without
 * zero columns the blocks run across rows (a 7 x 7 image is 49 pixels in a row). */
BNNC_INLINE BNNC_VT void BNNC_V(bnnc_planes_image)(const void *in, int in_type, int ih, int iw, int c, int pt, int pl,
                                                   int pb, int pr, int plen, int n, int32_t *im) {
  const int pw = pl + iw + pr;
  const int flat = !pl && !pr; /* no zero columns: the rows are back to back, one row of ih * iw pixels */
  const int rows = flat ? 1 : ih, cols = flat ? ih * iw : iw;
  if (pt || pl || pb || pr || plen > (pt + ih + pb) * pw)
    for (int i = 0; i < c * plen; i++) im[i] = 0;
  for (int i = c * plen; i < n; i++) im[i] = 0;
  for (int y = 0; y < rows; y++) {
    int32_t *row = im + (size_t)(y + pt) * pw + pl;
    const size_t first = (size_t)y * cols; /* the row's first pixel */
    int x = 0;
#ifdef BNNC_AVX512
    if (in_type == BNNC_INT32) {
      const int32_t *src = (const int32_t *)in;
      for (; x + 8 <= cols; x += 8) {
        int32_t *d = row + x;
        int ch = 0;
        for (; ch + 8 <= c; ch += 8) {
          const int32_t *r = src + (first + x) * c + ch;
          __m256i t[8], u[8];
          for (int i = 0; i < 8; i += 2) {
            const __m256i r0 = _mm256_loadu_si256((const __m256i *)(r + (size_t)i * c));
            const __m256i r1 = _mm256_loadu_si256((const __m256i *)(r + (size_t)(i + 1) * c));
            t[i] = _mm256_unpacklo_epi32(r0, r1);  /* channels 0, 1 | 4, 5 of pixels i, i + 1 */
            t[i + 1] = _mm256_unpackhi_epi32(r0, r1); /* channels 2, 3 | 6, 7 */
          }
          for (int i = 0; i < 8; i += 4) {
            u[i] = _mm256_unpacklo_epi64(t[i], t[i + 2]);     /* channel 0 | 4 of 4 pixels */
            u[i + 1] = _mm256_unpackhi_epi64(t[i], t[i + 2]); /* 1 | 5 */
            u[i + 2] = _mm256_unpacklo_epi64(t[i + 1], t[i + 3]); /* 2 | 6 */
            u[i + 3] = _mm256_unpackhi_epi64(t[i + 1], t[i + 3]); /* 3 | 7 */
          }
          for (int k = 0; k < 4; k++) {
            _mm256_storeu_si256((__m256i *)(d + (size_t)(ch + k) * plen), _mm256_permute2x128_si256(u[k], u[k + 4], 0x20));
            _mm256_storeu_si256((__m256i *)(d + (size_t)(ch + k + 4) * plen), _mm256_permute2x128_si256(u[k], u[k + 4], 0x31));
          }
        }
        for (; ch < c; ch++)
          for (int i = 0; i < 8; i++) d[(size_t)ch * plen + i] = src[(first + x + i) * c + ch];
      }
    }
#endif
    for (; x < cols; x++) {
      int32_t *d = row + x;
      const size_t at = (first + x) * c;
      for (int ch = 0; ch < c; ch++) d[(size_t)ch * plen] = bnnc_load_int(in, in_type, at + ch);
    }
  }
}

/* "ternary_sums" layers (compiler/passes/pack_families.py): output channels whose nonzero weights
 * are two values a[o], b[o] (ternary), stride 1, on the plane image (bnnc_planes_image) from the
 * pass's first position on (x = im + q0). For the 8 * nv <= BNNC_TSUM_Q positions q0 + j (nv a
 * compile-time constant once inlined: 8 but in a layer's last pass) and o < n (a multiple of 8):
 *   s[j * n + o] = a[o] * sum of x[j + off[t]], t in [start[2o], start[2o+1])
 *                + b[o] * sum of x[j + off[t]], t in [start[2o+1], start[2o+2])
 * exact in int64 (bnnc proved |x| * sum |w| < 2**62): adds only, one per nonzero weight and
 * position, the positions in the vector lanes, then each block of 8 outputs x 8 positions
 * transposed so that a position's sums are contiguous, as the epilogues read them. The image is
 * int32: half the bytes per load, which bound the adds (a 256-bit load widened per add). */
#define BNNC_TSUM_Q 64
/* the loops over a pass's nv vectors unrolled, so that the sums stay in registers also where nv
 * is below 8 (GCC 12 keeps a 4-vector loop rolled, its sums in memory) */
#if defined(__clang__)
#define BNNC_UNROLL_NV _Pragma("clang loop unroll(full)")
#elif defined(__GNUC__) && __GNUC__ >= 8
#define BNNC_UNROLL_NV _Pragma("GCC unroll 8")
#else
#define BNNC_UNROLL_NV
#endif
BNNC_INLINE BNNC_VT void BNNC_V(bnnc_ternary_sums64)(const int32_t *x, const int32_t *start, const int32_t *off,
                                                     const int64_t *a, const int64_t *b, int n, int nv, int64_t *s) {
#if defined(BNNC_AVX512_DQ)
  for (int og = 0; og < n; og += 8) {
    __m512i r[8][8]; /* [output in the block][8 positions] */
    for (int i = 0; i < 8; i++) {
      const int o = og + i;
      __m512i sa[8], sb[8];
      BNNC_UNROLL_NV
      for (int v = 0; v < nv; v++) sa[v] = sb[v] = _mm512_setzero_si512();
      for (int t = start[2 * o]; t < start[2 * o + 1]; t++) {
        const int32_t *p = x + off[t];
        BNNC_UNROLL_NV
        for (int v = 0; v < nv; v++) sa[v] = _mm512_add_epi64(sa[v], BNNC_LOAD8_W32(p + 8 * v));
      }
      for (int t = start[2 * o + 1]; t < start[2 * o + 2]; t++) {
        const int32_t *p = x + off[t];
        BNNC_UNROLL_NV
        for (int v = 0; v < nv; v++) sb[v] = _mm512_add_epi64(sb[v], BNNC_LOAD8_W32(p + 8 * v));
      }
      const __m512i va = _mm512_set1_epi64(a[o]), vb = _mm512_set1_epi64(b[o]);
      BNNC_UNROLL_NV
      for (int v = 0; v < nv; v++)
        r[i][v] = _mm512_add_epi64(_mm512_mullo_epi64(sa[v], va), _mm512_mullo_epi64(sb[v], vb));
    }
    BNNC_UNROLL_NV
    for (int v = 0; v < nv; v++) { /* 8 x 8 transpose: positions 8v .. 8v + 7 of the block's outputs */
      const __m512i a0 = _mm512_unpacklo_epi64(r[0][v], r[1][v]), a1 = _mm512_unpackhi_epi64(r[0][v], r[1][v]);
      const __m512i a2 = _mm512_unpacklo_epi64(r[2][v], r[3][v]), a3 = _mm512_unpackhi_epi64(r[2][v], r[3][v]);
      const __m512i a4 = _mm512_unpacklo_epi64(r[4][v], r[5][v]), a5 = _mm512_unpackhi_epi64(r[4][v], r[5][v]);
      const __m512i a6 = _mm512_unpacklo_epi64(r[6][v], r[7][v]), a7 = _mm512_unpackhi_epi64(r[6][v], r[7][v]);
      const __m512i b0 = _mm512_shuffle_i64x2(a0, a2, 0x88), b1 = _mm512_shuffle_i64x2(a0, a2, 0xDD);
      const __m512i b2 = _mm512_shuffle_i64x2(a1, a3, 0x88), b3 = _mm512_shuffle_i64x2(a1, a3, 0xDD);
      const __m512i b4 = _mm512_shuffle_i64x2(a4, a6, 0x88), b5 = _mm512_shuffle_i64x2(a4, a6, 0xDD);
      const __m512i b6 = _mm512_shuffle_i64x2(a5, a7, 0x88), b7 = _mm512_shuffle_i64x2(a5, a7, 0xDD);
      int64_t *d = s + (size_t)(8 * v) * n + og;
      _mm512_storeu_si512((void *)(d + 0 * (size_t)n), _mm512_shuffle_i64x2(b0, b4, 0x88));
      _mm512_storeu_si512((void *)(d + 1 * (size_t)n), _mm512_shuffle_i64x2(b2, b6, 0x88));
      _mm512_storeu_si512((void *)(d + 2 * (size_t)n), _mm512_shuffle_i64x2(b1, b5, 0x88));
      _mm512_storeu_si512((void *)(d + 3 * (size_t)n), _mm512_shuffle_i64x2(b3, b7, 0x88));
      _mm512_storeu_si512((void *)(d + 4 * (size_t)n), _mm512_shuffle_i64x2(b0, b4, 0xDD));
      _mm512_storeu_si512((void *)(d + 5 * (size_t)n), _mm512_shuffle_i64x2(b2, b6, 0xDD));
      _mm512_storeu_si512((void *)(d + 6 * (size_t)n), _mm512_shuffle_i64x2(b1, b5, 0xDD));
      _mm512_storeu_si512((void *)(d + 7 * (size_t)n), _mm512_shuffle_i64x2(b3, b7, 0xDD));
    }
  }
#else
  for (int o = 0; o < n; o++) {
    for (int j = 0; j < 8 * nv; j++) {
      int64_t sa = 0, sb = 0;
      for (int t = start[2 * o]; t < start[2 * o + 1]; t++) sa += x[j + off[t]];
      for (int t = start[2 * o + 1]; t < start[2 * o + 2]; t++) sb += x[j + off[t]];
      s[(size_t)j * n + o] = a[o] * sa + b[o] * sb;
    }
  }
#endif
}

#ifdef BNNC_AVX512
/* the same for the lanes k of v, out[o ..] */
BNNC_INLINE BNNC_VT void BNNC_V(bnnc_store8_int)(void *out, int bytes, int o, __mmask8 k, __m512i v) {
  if (bytes == 1) _mm512_mask_cvtepi64_storeu_epi8((uint8_t *)out + o, k, v);
  else if (bytes == 2) _mm512_mask_cvtepi64_storeu_epi16((uint16_t *)out + o, k, v);
  else _mm512_mask_cvtepi64_storeu_epi32((uint32_t *)out + o, k, v);
}
#endif

/* out[o] = bnnc_requantize(acc[o], mult[o], add[o], s, acc_lo[o], acc_hi[o], lo, hi) for o < n, as
 * bnnc_store_int; with AVX-512 DQ eight channels at a time (VPMULLQ; VPSRAQ is the floor shift for
 * any sign), reading acc up to n rounded up to 8. */
BNNC_INLINE BNNC_VT void BNNC_V(bnnc_requantize_row)(const int64_t *acc, const int64_t *mult, const int64_t *add, int s,
                                     const int64_t *acc_lo, const int64_t *acc_hi, int32_t lo, int32_t hi,
                                     int n, void *out, int bytes) {
  int o = 0;
#if defined(BNNC_AVX512_DQ)
  const __m512i vlo = _mm512_set1_epi64(lo), vhi = _mm512_set1_epi64(hi);
  for (; o < n; o += 8) {
    const __mmask8 k = (__mmask8)(n - o >= 8 ? 0xFF : (1u << (n - o)) - 1);
    __m512i a = BNNC_V(bnnc_load8_i64)(acc + o);
    a = _mm512_min_epi64(_mm512_max_epi64(a, _mm512_maskz_loadu_epi64(k, acc_lo + o)),
                         _mm512_maskz_loadu_epi64(k, acc_hi + o));
    __m512i v = _mm512_add_epi64(_mm512_mullo_epi64(a, _mm512_maskz_loadu_epi64(k, mult + o)),
                                 _mm512_maskz_loadu_epi64(k, add + o));
    v = _mm512_min_epi64(_mm512_max_epi64(_mm512_srai_epi64(v, (unsigned)s), vlo), vhi);
    BNNC_V(bnnc_store8_int)(out, bytes, o, k, v);
  }
#endif
  BNNC_ROLLED
  for (; o < n; o++)
    bnnc_store_int(out, bytes, o, bnnc_requantize(acc[o], mult[o], add[o], s, acc_lo[o], acc_hi[o], lo, hi));
}

/* Bit l of the result = (x[l] > thr[l]) XOR neg[l] for l < k <= 8 (x and neg are read 8 at a time:
 * bnnc pads neg with 8 zero flags). */
BNNC_INLINE BNNC_VT uint32_t BNNC_V(bnnc_threshold_bits8)(const int64_t *x, const int64_t *thr, const uint8_t *neg, int k) {
#ifdef BNNC_AVX512
  const __mmask8 km = (__mmask8)((1u << k) - 1);
  const __m512i ng = _mm512_cvtepu8_epi64(_mm_loadl_epi64((const __m128i *)neg));
  return (uint32_t)(__mmask8)(_mm512_mask_cmpgt_epi64_mask(km, BNNC_V(bnnc_load8_i64)(x),
                                                           _mm512_maskz_loadu_epi64(km, thr)) ^
                              _mm512_mask_test_epi64_mask(km, ng, ng));
#else
  uint32_t m = 0;
  BNNC_ROLLED
  for (int l = 0; l < k; l++) m |= (uint32_t)((x[l] > thr[l]) ^ neg[l]) << l;
  return m;
#endif
}

/* Output bits of one pixel from 64-bit accumulators: bit j = (acc[j % n] > thr[j]) XOR neg[j] for
 * j < planes * n (activation bases stored plane after plane); fill bits stay 0. */
BNNC_INLINE BNNC_VT void BNNC_V(bnnc_threshold_pack64)(const int64_t *acc, const int64_t *thr, const uint8_t *neg, int n,
                                       int planes, int cw, bnnc_word_t *dst) {
  for (int c = 0; c < cw; c++) dst[c] = 0;
  for (int p = 0; p < planes; p++) {
    for (int o = 0; o < n; o += 8) {
      const int j = p * n + o, k = n - o < 8 ? n - o : 8;
      bnnc_deposit_bits8(dst, j, BNNC_V(bnnc_threshold_bits8)(acc + o, thr + j, neg + j, k), cw);
    }
  }
}

#ifdef BNNC_AVX512
/* bnnc_level_search of `chunks` (<= 4) groups of eight lanes at once, so that the gathers of one
 * step overlap: lane l of group g holds x[g] (dir applied), channel ch[g] + l, valid where k[g]. */
BNNC_INLINE BNNC_VT void BNNC_V(bnnc_level_search8)(const __m512i *x, const __m512i *ch, const __mmask8 *k, int chunks,
                                    const int64_t *thr, int stride, int levels, __m512i *c) {
  const __m512i zero = _mm512_setzero_si512(), st = _mm512_set1_epi64(stride);
  for (int g = 0; g < chunks; g++) c[g] = zero;
  int m = levels;
  while (m > 1) {
    const int half = m / 2;
    const __m512i h = _mm512_set1_epi64(half);
    for (int g = 0; g < chunks; g++) {
      const __m512i at = _mm512_add_epi64(c[g], h);
      const __m512i idx = _mm512_add_epi64(_mm512_mul_epu32(at, st), ch[g]);
      const __m512i t = _mm512_mask_i64gather_epi64(zero, k[g], idx, thr, 8);
      c[g] = _mm512_mask_mov_epi64(c[g], _mm512_mask_cmpge_epi64_mask(k[g], x[g], t), at);
    }
    m -= half;
  }
  for (int g = 0; g < chunks; g++) {
    const __m512i idx = _mm512_add_epi64(_mm512_mul_epu32(c[g], st), ch[g]);
    const __m512i t = _mm512_mask_i64gather_epi64(zero, k[g], idx, thr, 8);
    c[g] = _mm512_mask_add_epi64(c[g], _mm512_mask_cmpge_epi64_mask(k[g], x[g], t), c[g], _mm512_set1_epi64(1));
  }
}
#endif

/* out[o] = base + step * (the level count of acc[o]) for o < n (bnnc_store_int), where value o belongs to channel
 * (ch0 + o) % period (thresholds thr[b * stride + channel], direction dir[channel]; the channels
 * of each group of 8 values are consecutive: period and ch0 multiples of 8, or ch0 + n <= period),
 * counted as `kind` says (a constant once inlined). With AVX-512 eight values at a time (the
 * search and the guess gather thresholds, for up to 32 values at once), reading acc up to n
 * rounded up to 8; dir is padded with 8 flags (a last group of channels reads 8). */
BNNC_INLINE BNNC_VT void BNNC_V(bnnc_levels_row)(const int64_t *acc, const int8_t *dir, const int64_t *thr, int stride, int ch0,
                                 int period, int n, int levels, int kind, const int64_t *guess, int shift,
                                 int32_t base, int32_t step, void *out, int bytes) {
  int o = 0;
#ifdef BNNC_AVX512
  const __m512i zero = _mm512_setzero_si512(), lane = _mm512_set_epi64(7, 6, 5, 4, 3, 2, 1, 0);
  while (o < n && levels > 0) {
    __m512i x[4], ch[4], c[4];
    __mmask8 k[4];
    int chunks = 0;
    for (; chunks < (kind != BNNC_LEVELS_COUNT ? 4 : 1) && o + 8 * chunks < n; chunks++) {
      const int at = o + 8 * chunks, first = (ch0 + at) % period;
      k[chunks] = (__mmask8)(n - at >= 8 ? 0xFF : (1u << (n - at)) - 1);
      const __m512i d = _mm512_cvtepi8_epi64(_mm_loadl_epi64((const __m128i *)(dir + first)));
      x[chunks] = BNNC_V(bnnc_load8_i64)(acc + at);
      x[chunks] = _mm512_mask_sub_epi64(x[chunks], _mm512_cmple_epi64_mask(d, zero), zero, x[chunks]);
      ch[chunks] = _mm512_add_epi64(lane, _mm512_set1_epi64(first));
    }
    if (kind == BNNC_LEVELS_SEARCH) {
      BNNC_V(bnnc_level_search8)(x, ch, k, chunks, thr, stride, levels, c);
    } else if (kind == BNNC_LEVELS_GUESS) {
      const __m512i st = _mm512_set1_epi64(stride), top = _mm512_set1_epi64(levels), one = _mm512_set1_epi64(1);
      for (int g = 0; g < chunks; g++) { /* as bnnc_level_guess; the two gathers of every group overlap */
        const int first = (ch0 + o + 8 * g) % period;
        const int64_t *row = guess + first; /* rows a, b, M, K */
        const __m512i a = _mm512_maskz_loadu_epi64(k[g], row);
        const __m512i b = _mm512_maskz_loadu_epi64(k[g], row + stride);
        const __m512i m = _mm512_maskz_loadu_epi64(k[g], row + 2 * (size_t)stride);
        const __m512i xc = _mm512_min_epi64(_mm512_max_epi64(x[g], a), b);
        const __m512i v = _mm512_add_epi64(_mm512_mul_epu32(_mm512_sub_epi64(xc, a), m),
                                           _mm512_maskz_loadu_epi64(k[g], row + 3 * (size_t)stride));
        const __m512i gi = _mm512_min_epi64(_mm512_max_epi64(_mm512_srai_epi64(v, (unsigned)shift), zero), top);
        const __m512i i0 = _mm512_add_epi64(_mm512_mul_epu32(gi, st), ch[g]);
        const __m512i t0 = _mm512_mask_i64gather_epi64(zero, k[g], i0, thr, 8);
        const __m512i t1 = _mm512_mask_i64gather_epi64(zero, k[g], _mm512_add_epi64(i0, st), thr, 8);
        __m512i cg = _mm512_sub_epi64(gi, one);
        cg = _mm512_mask_add_epi64(cg, _mm512_mask_cmpge_epi64_mask(k[g], xc, t0), cg, one);
        c[g] = _mm512_mask_add_epi64(cg, _mm512_mask_cmpge_epi64_mask(k[g], xc, t1), cg, one);
      }
    } else {
      c[0] = zero;
      for (int b = 0; b < levels; b++)
        c[0] = _mm512_mask_add_epi64(c[0], _mm512_mask_cmpge_epi64_mask(k[0], x[0], _mm512_maskz_loadu_epi64(
                                               k[0], thr + (size_t)b * stride + (ch0 + o) % period)),
                                     c[0], _mm512_set1_epi64(1));
    }
    for (int g = 0; g < chunks; g++, o += 8)
      BNNC_V(bnnc_store8_int)(out, bytes, o, k[g],
                      _mm512_add_epi64(_mm512_set1_epi64(base), _mm512_mul_epi32(c[g], _mm512_set1_epi64(step))));
  }
#endif
  BNNC_ROLLED
  for (; o < n; o++) {
    const int ch = (ch0 + o) % period;
    const int32_t count = kind == BNNC_LEVELS_GUESS    ? bnnc_level_guess(acc[o], dir[ch], thr + ch, stride, levels,
                                                                          guess + ch, shift)
                          : kind == BNNC_LEVELS_SEARCH ? bnnc_level_search(acc[o], dir[ch], thr + ch, stride, levels)
                                                       : bnnc_level_count(acc[o], dir[ch], thr + ch, stride, levels);
    bnnc_store_int(out, bytes, o, base + step * count);
  }
}

#endif /* BNNC_FAMILIES_SECTION */
