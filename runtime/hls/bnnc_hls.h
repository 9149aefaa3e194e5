/* bnnc HLS support header: arbitrary-width integers and streams for C simulation with any C++14
 * compiler, and the small helpers the generated HLS sources share.
 *
 * Under Vitis HLS (synthesis, or C simulation with its headers on the include path) the vendor
 * <ap_int.h> and <hls_stream.h> are used instead of the classes below; define
 * BNNC_OWN_HLS_TYPES to force bnnc's own. The generated sources use only the part of the vendor
 * API implemented here, with the same meaning:
 *   ap_uint<N>  (any N): construction from an integer (sign-extended, then cut to N bits), x[i]
 *               (read and write one bit), x.range(hi, lo) = v (write up to 64 bits), ^ & | ~,
 *               ==, !=, to_uint64();
 *   ap_int<N>   (N <= 64): an N-bit two's complement integer that converts to and from the
 *               built-in integers (values are kept in range by construction: bnnc sizes every
 *               accumulator from proven bounds, so nothing ever wraps), to_int();
 *   hls::stream<T>: write, read, empty, size;
 *   ap_axiu<D, 0, 0, 0>: an AXI4-Stream beat with fields data (ap_uint<D>), keep, strb and last
 *               (<ap_axi_sdata.h>'s, which is used where present).
 * bnnc's own classes check what the vendor ones leave undefined: an index outside the word, a
 * read from an empty stream and data left in a stream when it is destroyed abort the simulation.
 */
#ifndef BNNC_HLS_H
#define BNNC_HLS_H

#include <stdint.h>

#if defined(__SYNTHESIS__)
#define BNNC_VENDOR_HLS_TYPES 1
#elif !defined(BNNC_OWN_HLS_TYPES) && defined(__has_include)
#if __has_include(<ap_int.h>) && __has_include(<hls_stream.h>)
#define BNNC_VENDOR_HLS_TYPES 1
#endif
#endif

/* BNNC_HLS(X) is the directive `#pragma HLS X` for Vitis HLS and nothing for other compilers:
 * g++ -Wall warns about unknown pragmas, and GCC before 13 cannot silence that from a header. */
#if defined(__SYNTHESIS__) || defined(__VITIS_HLS__)
#define BNNC_HLS_PRAGMA(text) _Pragma(#text)
#define BNNC_HLS(directive) BNNC_HLS_PRAGMA(HLS directive)
#else
#define BNNC_HLS(directive)
#endif

#ifdef BNNC_VENDOR_HLS_TYPES
#include <ap_int.h>
#include <hls_stream.h>
#if defined(__SYNTHESIS__) || !defined(__has_include) || __has_include(<ap_axi_sdata.h>)
#include <ap_axi_sdata.h>
#define BNNC_VENDOR_AXI_SDATA 1
#endif
#else

#include <cstdio>
#include <cstdlib>
#include <deque>
#include <string>
#include <type_traits>

namespace bnnc_hls_detail {
inline void fail(const char *what, const char *name) {
  std::fprintf(stderr, "bnnc C simulation: %s%s%s\n", what, name[0] ? ": " : "", name);
  std::abort();
}
}  // namespace bnnc_hls_detail

/* N-bit unsigned integer, bit i in word i / 64 at bit i % 64; bits from N up are always 0. */
template <int N>
class ap_uint {
  static_assert(N >= 1 && N <= 32768, "ap_uint width must be 1..32768");

 public:
  static constexpr int WORDS = (N + 63) / 64;
  uint64_t w_[WORDS];

  constexpr ap_uint() : w_{} {}
  constexpr ap_uint(unsigned long long v) : w_{N >= 64 ? v : v & ((1ull << (N % 64)) - 1u)} {}
  template <typename T, typename std::enable_if<std::is_integral<T>::value, int>::type = 0>
  constexpr ap_uint(T v) : w_{} {
    const bool negative = std::is_signed<T>::value && static_cast<long long>(v) < 0;
    w_[0] = static_cast<uint64_t>(v);
    for (int i = 1; i < WORDS; i++) w_[i] = negative ? ~0ull : 0ull;
    clear_top();
  }

  class bit_ref {
   public:
    bit_ref(ap_uint *p, int i) : p_(p), i_(i) {}
    operator bool() const { return p_->bit(i_); }
    bit_ref &operator=(bool b) {
      const uint64_t m = 1ull << (i_ & 63);
      p_->w_[i_ >> 6] = b ? (p_->w_[i_ >> 6] | m) : (p_->w_[i_ >> 6] & ~m);
      return *this;
    }
    bit_ref &operator=(const bit_ref &o) { return *this = static_cast<bool>(o); }

   private:
    ap_uint *p_;
    int i_;
  };

  class range_ref {
   public:
    range_ref(ap_uint *p, int hi, int lo) : p_(p), hi_(hi), lo_(lo) {}
    range_ref &operator=(unsigned long long v) {
      for (int i = lo_; i <= hi_; i++) bit_ref(p_, i) = ((v >> (i - lo_)) & 1u) != 0;
      return *this;
    }
    template <int M>
    range_ref &operator=(const ap_uint<M> &v) { return *this = v.to_uint64(); }
    uint64_t to_uint64() const {
      uint64_t r = 0;
      for (int i = hi_; i >= lo_; i--) r = (r << 1) | (p_->bit(i) ? 1u : 0u);
      return r;
    }

   private:
    ap_uint *p_;
    int hi_, lo_;
  };

  bit_ref operator[](int i) {
    check_index(i);
    return bit_ref(this, i);
  }
  bool operator[](int i) const {
    check_index(i);
    return bit(i);
  }
  range_ref range(int hi, int lo) {
    if (lo < 0 || hi >= N || hi < lo || hi - lo >= 64) bnnc_hls_detail::fail("ap_uint range out of bounds", "");
    return range_ref(this, hi, lo);
  }

  ap_uint operator^(const ap_uint &o) const { ap_uint r(*this); return r ^= o; }
  ap_uint operator&(const ap_uint &o) const { ap_uint r(*this); return r &= o; }
  ap_uint operator|(const ap_uint &o) const { ap_uint r(*this); return r |= o; }
  ap_uint operator~() const {
    ap_uint r;
    for (int i = 0; i < WORDS; i++) r.w_[i] = ~w_[i];
    r.clear_top();
    return r;
  }
  ap_uint &operator^=(const ap_uint &o) { for (int i = 0; i < WORDS; i++) w_[i] ^= o.w_[i]; return *this; }
  ap_uint &operator&=(const ap_uint &o) { for (int i = 0; i < WORDS; i++) w_[i] &= o.w_[i]; return *this; }
  ap_uint &operator|=(const ap_uint &o) { for (int i = 0; i < WORDS; i++) w_[i] |= o.w_[i]; return *this; }
  bool operator==(const ap_uint &o) const {
    for (int i = 0; i < WORDS; i++)
      if (w_[i] != o.w_[i]) return false;
    return true;
  }
  bool operator!=(const ap_uint &o) const { return !(*this == o); }
  uint64_t to_uint64() const { return w_[0]; }

 private:
  bool bit(int i) const { return ((w_[i >> 6] >> (i & 63)) & 1u) != 0; }
  constexpr void clear_top() {
    if (N % 64 != 0) w_[WORDS - 1] &= (1ull << (N % 64)) - 1u;
  }
  static void check_index(int i) {
    if (i < 0 || i >= N) bnnc_hls_detail::fail("ap_uint bit index out of range", "");
  }
};

/* N-bit signed integer (N <= 64) held sign-extended in an int64_t. */
template <int N>
class ap_int {
  static_assert(N >= 1 && N <= 64, "bnnc's ap_int supports widths 1..64");

 public:
  constexpr ap_int() : v_(0) {}
  template <typename T, typename std::enable_if<std::is_integral<T>::value, int>::type = 0>
  constexpr ap_int(T v) : v_(wrap(static_cast<long long>(v))) {}
  template <int M>
  constexpr ap_int(const ap_int<M> &o) : v_(wrap(o.to_int64())) {}
  constexpr operator long long() const { return v_; }
  constexpr int to_int() const { return static_cast<int>(v_); }
  constexpr long long to_int64() const { return v_; }
  ap_int &operator+=(long long x) { v_ = wrap(v_ + x); return *this; }
  ap_int &operator-=(long long x) { v_ = wrap(v_ - x); return *this; }

 private:
  static constexpr long long wrap(long long x) {
    return static_cast<long long>(static_cast<uint64_t>(x) << (64 - N)) >> (64 - N);
  }
  long long v_;
};

#ifdef BNNC_HLS_CONCURRENT_CSIM
/* Concurrent C simulation (bnnc's tests): every dataflow process in its own thread (spawn /
 * join_all replace the top function's calls), streams bounded by set_depth (unset: unbounded, as
 * the testbench's) with blocking read and write, as in hardware. A wait during which no stream
 * anywhere moves for 10 s is a deadlock: the simulation aborts naming the stream. With
 * BNNC_HLS_JITTER=SEED in the environment, one stream operation in 16 (a seeded pseudo-random
 * choice) then pauses its process for 20 us, to vary the processes' relative speeds. */
#include <chrono>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace bnnc_hls_concurrent {
struct shared {
  std::mutex mu;
  std::condition_variable moved;
  unsigned long moves = 0;
  std::vector<std::thread> threads;
};
inline shared &state() {
  static shared s;
  return s;
}
inline void spawn(std::function<void()> process) { state().threads.emplace_back(process); }
inline void jitter() {
  static const char *seed = std::getenv("BNNC_HLS_JITTER");
  if (!seed) return;
  thread_local uint32_t x = 0;
  if (x == 0) x = 2463534242u ^ static_cast<uint32_t>(std::atoi(seed)) ^
                  static_cast<uint32_t>(std::hash<std::thread::id>()(std::this_thread::get_id()));
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  if ((x & 15) == 0) std::this_thread::sleep_for(std::chrono::microseconds(20));
}
inline void join_all() {
  for (std::thread &t : state().threads) t.join();
  state().threads.clear();
}
template <typename Ready>
void wait(std::unique_lock<std::mutex> &lock, Ready ready, const char *what, const char *name) {
  shared &s = state();
  while (!ready()) {
    const unsigned long seen = s.moves;
    if (!s.moved.wait_for(lock, std::chrono::seconds(10), [&] { return ready() || s.moves != seen; }))
      bnnc_hls_detail::fail(what, name);
  }
}
}  // namespace bnnc_hls_concurrent
#endif

namespace hls {
/* An unbounded FIFO: C simulation runs the dataflow processes one after the other. */
template <typename T>
class stream {
 public:
  stream() {}
  explicit stream(const char *name) : name_(name) {}
  stream(const stream &) = delete;
  stream &operator=(const stream &) = delete;
  ~stream() {
    if (!q_.empty()) bnnc_hls_detail::fail("stream destroyed with data left in it", name_.c_str());
  }
#ifdef BNNC_HLS_CONCURRENT_CSIM
  void set_depth(unsigned depth) { depth_ = depth; }
  void write(const T &v) {
    std::unique_lock<std::mutex> lock(bnnc_hls_concurrent::state().mu);
    bnnc_hls_concurrent::wait(lock, [&] { return depth_ == 0 || q_.size() < depth_; },
                              "deadlock: a write to a full stream never proceeds", name_.c_str());
    q_.push_back(v);
    moved();
    lock.unlock();
    bnnc_hls_concurrent::jitter();
  }
  T read() {
    std::unique_lock<std::mutex> lock(bnnc_hls_concurrent::state().mu);
    bnnc_hls_concurrent::wait(lock, [&] { return !q_.empty(); },
                              "deadlock: a read from an empty stream never proceeds", name_.c_str());
    T v = q_.front();
    q_.pop_front();
    moved();
    lock.unlock();
    bnnc_hls_concurrent::jitter();
    return v;
  }
  bool empty() {
    std::unique_lock<std::mutex> lock(bnnc_hls_concurrent::state().mu);
    return q_.empty();
  }
  unsigned size() {
    std::unique_lock<std::mutex> lock(bnnc_hls_concurrent::state().mu);
    return static_cast<unsigned>(q_.size());
  }
#else
  void write(const T &v) { q_.push_back(v); }
  T read() {
    if (q_.empty()) bnnc_hls_detail::fail("read from an empty stream", name_.c_str());
    T v = q_.front();
    q_.pop_front();
    return v;
  }
  bool empty() const { return q_.empty(); }
  unsigned size() const { return static_cast<unsigned>(q_.size()); }
#endif
  void read(T &v) { v = read(); }
  bool full() const { return false; }

 private:
#ifdef BNNC_HLS_CONCURRENT_CSIM
  void moved() {
    bnnc_hls_concurrent::state().moves++;
    bnnc_hls_concurrent::state().moved.notify_all();
  }
  unsigned depth_ = 0;
#endif
  std::deque<T> q_;
  std::string name_;
};
}  // namespace hls

#endif /* BNNC_VENDOR_HLS_TYPES */

#ifndef BNNC_VENDOR_AXI_SDATA
/* One AXI4-Stream beat: TDATA, TKEEP, TSTRB, TLAST (no TUSER / TID / TDEST, as U = TI = TD = 0). */
template <int D, int U, int TI, int TD>
struct ap_axiu {
  ap_uint<D> data;
  ap_uint<(D + 7) / 8> keep;
  ap_uint<(D + 7) / 8> strb;
  ap_uint<1> last;
};
#endif

namespace bnnc {

/* The IEEE-754 bits of a float32 and back: how float elements travel on the AXI streams. */
union float_word {
  float f;
  uint32_t u;
};
inline uint32_t float_bits(float f) {
  float_word x;
  x.f = f;
  return x.u;
}
inline float bits_float(uint32_t u) {
  float_word x;
  x.u = u;
  return x.f;
}

/* rom_bits_t<N> (N <= 64): the element type of the constant bit-row tables (weights). For synthesis
 * it is ap_uint<N>, so that a ROM is exactly N bits wide; in bnnc's C simulation it is the
 * smallest built-in unsigned integer holding N bits, which compilers parse far faster than
 * hundreds of thousands of class constants. The tables' values are the same either way. */
#ifdef BNNC_VENDOR_HLS_TYPES
template <int N>
using rom_bits_t = ap_uint<N>;
#else
template <int N>
using rom_bits_t = typename std::conditional<
    N <= 8, uint8_t,
    typename std::conditional<N <= 16, uint16_t, typename std::conditional<N <= 32, uint32_t, uint64_t>::type>::type>::type;
#endif

/* Number of 1 bits of x: an adder tree in hardware, word popcounts in bnnc's C simulation. */
#ifdef BNNC_VENDOR_HLS_TYPES
template <int N>
inline int popcount(const ap_int_base<N, false> &x) {
  int n = 0;
  for (int i = 0; i < N; i++) {
    BNNC_HLS(UNROLL)
    n += x[i] ? 1 : 0;
  }
  return n;
}
#else
template <int N>
inline int popcount(const ap_uint<N> &x) {
  int n = 0;
  for (int i = 0; i < ap_uint<N>::WORDS; i++) n += __builtin_popcountll(x.w_[i]);
  return n;
}
#endif

/* float32 rounding without libm, the definitions of runtime/bnnc_kernels.h (exact for every
 * float; needs FLT_EVAL_METHOD 0 and no contraction: compile with -ffp-contract=off). */
inline float rint_f(float v) {
  float a = v < 0.0f ? -v : v;
  if (a < 8388608.0f) a = (a + 8388608.0f) - 8388608.0f;
  return v < 0.0f ? -a : a;
}
inline float trunc_f(float v) { return static_cast<float>(static_cast<int32_t>(v)); }
inline float floor_f(float v) {
  const float t = trunc_f(v);
  return t > v ? t - 1.0f : t;
}
inline float ceil_f(float v) {
  const float t = trunc_f(v);
  return t < v ? t + 1.0f : t;
}

}  // namespace bnnc

#endif /* BNNC_HLS_H */
