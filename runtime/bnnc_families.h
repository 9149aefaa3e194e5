/* bnnc runtime kernels of the compressed families (issue 5): ternary, two-scale and multi-base
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

#define BNNC_FAM_OBLOCK 32 /* output channels per block; weight tables are padded to a multiple */

/* pc[o] = sum over l < taps of popcount(win[l] XOR w[l * opad + o]) (binary weights). */
BNNC_INLINE void bnnc_fam_xnor_popcount(const bnnc_word_t *win, int taps, const bnnc_word_t *w, int opad,
                                        int32_t *pc) {
  for (int ob = 0; ob < opad; ob += BNNC_FAM_OBLOCK) {
    int32_t a[BNNC_FAM_OBLOCK];
    for (int j = 0; j < BNNC_FAM_OBLOCK; j++) a[j] = 0;
    for (int l = 0; l < taps; l++) {
      const bnnc_word_t x = win[l];
      const bnnc_word_t *wr = w + (size_t)l * opad + ob;
      for (int j = 0; j < BNNC_FAM_OBLOCK; j++) a[j] += bnnc_popcount(x ^ wr[j]);
    }
    for (int j = 0; j < BNNC_FAM_OBLOCK; j++) pc[ob + j] = a[j];
  }
}

/* pcp[o] = sum over l < taps of popcount(win[l] & p[l * opad + o]); the same for n into pcn.
 * With bit 1 = -1 in win, popcount(x & P) counts the -1 inputs under the +1 weights. */
BNNC_INLINE void bnnc_masked_popcount(const bnnc_word_t *win, int taps, const bnnc_word_t *p,
                                      const bnnc_word_t *n, int opad, int32_t *pcp, int32_t *pcn) {
  for (int ob = 0; ob < opad; ob += BNNC_FAM_OBLOCK) {
    int32_t ap[BNNC_FAM_OBLOCK], an[BNNC_FAM_OBLOCK];
    for (int j = 0; j < BNNC_FAM_OBLOCK; j++) ap[j] = an[j] = 0;
    for (int l = 0; l < taps; l++) {
      const bnnc_word_t x = win[l];
      const bnnc_word_t *pr = p + (size_t)l * opad + ob;
      const bnnc_word_t *nr = n + (size_t)l * opad + ob;
      for (int j = 0; j < BNNC_FAM_OBLOCK; j++) {
        ap[j] += bnnc_popcount(x & pr[j]);
        an[j] += bnnc_popcount(x & nr[j]);
      }
    }
    for (int j = 0; j < BNNC_FAM_OBLOCK; j++) {
      pcp[ob + j] = ap[j];
      pcn[ob + j] = an[j];
    }
  }
}

/* acc[o] = sum over l < taps of win[l] * w[l * opad + o] in 64 bits (integer inputs and weights). */
BNNC_INLINE void bnnc_int_mac64(const int32_t *win, int taps, const int32_t *w, int opad, int64_t *acc) {
  for (int ob = 0; ob < opad; ob += BNNC_FAM_OBLOCK) {
    int64_t a[BNNC_FAM_OBLOCK];
    for (int j = 0; j < BNNC_FAM_OBLOCK; j++) a[j] = 0;
    for (int l = 0; l < taps; l++) {
      const int64_t x = win[l];
      const int32_t *wr = w + (size_t)l * opad + ob;
      for (int j = 0; j < BNNC_FAM_OBLOCK; j++) a[j] += x * (int64_t)wr[j];
    }
    for (int j = 0; j < BNNC_FAM_OBLOCK; j++) acc[ob + j] = a[j];
  }
}

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

/* Output bits of one pixel from 64-bit accumulators: bit j = (acc[j % n] > thr[j]) XOR neg[j] for
 * j < planes * n (activation bases stored plane after plane); fill bits stay 0. */
BNNC_INLINE void bnnc_threshold_pack64(const int64_t *acc, const int64_t *thr, const uint8_t *neg, int n,
                                       int planes, int cw, bnnc_word_t *dst) {
  for (int c = 0; c < cw; c++) dst[c] = 0;
  for (int p = 0; p < planes; p++) {
    for (int o = 0; o < n; o++) {
      const int j = p * n + o;
      const bnnc_word_t bit = (bnnc_word_t)((acc[o] > thr[j]) ^ neg[j]);
      dst[j / BNNC_WORD_BITS] |= bit << (j % BNNC_WORD_BITS);
    }
  }
}

/* Multi-level output: the number of levels b with dir * acc >= thr[b] (thr non-decreasing). */
BNNC_INLINE int32_t bnnc_level_count(int64_t acc, int8_t dir, const int64_t *thr, int levels) {
  const int64_t x = dir > 0 ? acc : -acc;
  int lo = 0, hi = levels; /* binary search: the first level not passed */
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (x >= thr[mid]) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

#endif /* BNNC_FAMILIES_H */
