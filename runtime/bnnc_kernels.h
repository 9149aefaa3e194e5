/* bnnc runtime kernels: the inner loops generated models call.
 *
 * Bit layout (bnnc's one convention): a pixel's channels are packed into words, channel c in
 * word c / BNNC_WORD_BITS at bit c % BNNC_WORD_BITS; bit 1 = -1, bit 0 = +1; fill bits are 0.
 * Weights are stored [tap word][output channel] (output channels padded to a multiple of
 * BNNC_OBLOCK) so the loops below vectorize across output channels.
 *
 * C99, no libc calls, no allocation. Define BNNC_WORD_BITS (32 or 64) before including.
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
#else
#define BNNC_INLINE static inline
#endif

#define BNNC_OBLOCK 32

#if BNNC_WORD_BITS == 64
typedef uint64_t bnnc_word_t;
#elif BNNC_WORD_BITS == 32
typedef uint32_t bnnc_word_t;
#else
#error "BNNC_WORD_BITS must be 32 or 64"
#endif

/* Number of 1 bits. Compilers turn the builtin into one instruction where the target has one;
 * BNNC_SOFT_POPCOUNT forces the portable bit-trick sequence (targets without popcount). */
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

/* The window of one output position of a binary input (ih, iw, cw words per pixel) starting at
 * input row y0, column x0. Returns a pointer into `in` when the window is contiguous there,
 * else gathers it into `win`, with 0 words (+1 values) for padded taps. */
BNNC_INLINE const bnnc_word_t *bnnc_window_bits(const bnnc_word_t *in, int ih, int iw, int cw, int kh,
                                                int kw, int y0, int x0, bnnc_word_t *win) {
  if (y0 >= 0 && x0 >= 0 && y0 + kh <= ih && x0 + kw <= iw && (kw == iw || kh == 1))
    return in + ((size_t)y0 * iw + x0) * cw;
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

/* acc[o] = sum over l < taps of popcount(win[l] XOR w[l * opad + o]), for o < opad. */
BNNC_INLINE void bnnc_xnor_popcount(const bnnc_word_t *win, int taps, const bnnc_word_t *w, int opad,
                                    int32_t *acc) {
  for (int ob = 0; ob < opad; ob += BNNC_OBLOCK) {
    bnnc_word_t a[BNNC_OBLOCK];
    for (int j = 0; j < BNNC_OBLOCK; j++) a[j] = 0;
    for (int l = 0; l < taps; l++) {
      const bnnc_word_t x = win[l];
      const bnnc_word_t *wr = w + (size_t)l * opad + ob;
      for (int j = 0; j < BNNC_OBLOCK; j++) a[j] += (bnnc_word_t)bnnc_popcount(x ^ wr[j]);
    }
    for (int j = 0; j < BNNC_OBLOCK; j++) acc[ob + j] = (int32_t)a[j];
  }
}

/* acc[o] = sum over l < taps of win[l] * w[l * opad + o] (integer inputs, +-1/0 weights). */
BNNC_INLINE void bnnc_int_mac(const int32_t *win, int taps, const int8_t *w, int opad, int32_t *acc) {
  for (int ob = 0; ob < opad; ob += BNNC_OBLOCK) {
    int32_t a[BNNC_OBLOCK];
    for (int j = 0; j < BNNC_OBLOCK; j++) a[j] = 0;
    for (int l = 0; l < taps; l++) {
      const int32_t x = win[l];
      const int8_t *wr = w + (size_t)l * opad + ob;
      for (int j = 0; j < BNNC_OBLOCK; j++) a[j] += x * (int32_t)wr[j];
    }
    for (int j = 0; j < BNNC_OBLOCK; j++) acc[ob + j] = a[j];
  }
}

/* Output bits of one pixel: bit o = (s[o] > thr[o]) XOR neg[o]; fill bits stay 0. */
BNNC_INLINE void bnnc_threshold_pack(const int32_t *s, const int32_t *thr, const uint8_t *neg, int n,
                                     int cw, bnnc_word_t *dst) {
  for (int c = 0; c < cw; c++) dst[c] = 0;
  for (int o = 0; o < n; o++) {
    const bnnc_word_t bit = (bnnc_word_t)((s[o] > thr[o]) ^ neg[o]);
    dst[o / BNNC_WORD_BITS] |= bit << (o % BNNC_WORD_BITS);
  }
}

/* Round half to even in float32 without libm (exact for every float; needs FLT_EVAL_METHOD 0). */
BNNC_INLINE float bnnc_rint(float v) {
  float a = v < 0.0f ? -v : v;
  if (a < 8388608.0f) a = (a + 8388608.0f) - 8388608.0f;
  return v < 0.0f ? -a : a;
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
