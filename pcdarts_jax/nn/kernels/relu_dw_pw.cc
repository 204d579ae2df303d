// relu -> depthwise k x k conv (stride 1 or 2, "same" padding, any dilation) -> 1x1 conv
// (C -> C), forward and backward, as XLA:CPU custom calls (XLA FFI). NHWC float32.
//
// Why: XLA:CPU runs this chain of a PC-DARTS channel slice (4-16 channels) as
// several loops that each write their output to memory; here one image at a time
// stays in cache and every image row is a few 16-lane vectors (W * C = 128 floats
// for the CIFAR search's slices), with the accumulators in registers. A
// channel pattern repeats every C lanes, so a kernel tap is one vector for all
// pixels of a row. The backward pass recomputes the depthwise output from the
// input (no residual besides x), so the chain keeps only x for its gradient;
// called with kernel_gradients = 0 (an architecture gradient, where the kernels
// are constants) it computes only the input gradient, without that recompute.
//
// A call splits its images over XLA's intra-op threads (see Split).
//
// With statistics = 1 the forward call also returns the per-channel means of
// its output and of the output's squares, (2, C), computed while each output
// row is in cache: the BatchNorm after the chain then needs no pass of its own
// over the output to find them.
//
// Supported: C in {4, 8, 16}, an output row's W / stride * C / 16 in
// {1, 2, 4, 8, 16}, even H and W at stride 2; the Python side
// falls back to XLA elsewhere.

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

template <int... L>
using lanes_t = std::integer_sequence<int, L...>;

#if defined(__AVX512F__)
typedef float v16 __attribute__((vector_size(64)));

inline v16 load(const float* p) { v16 r; std::memcpy(&r, p, sizeof(r)); return r; }
inline void store(float* p, v16 v) { std::memcpy(p, &v, sizeof(v)); }

template <int C, int c, int... L>
inline v16 spread_lanes(v16 v, lanes_t<L...>) {
  return __builtin_shufflevector(v, v, ((L / C) * C + c)...);
}

template <int C, int c>
inline v16 spread(v16 v) {
  return spread_lanes<C, c>(v, std::make_integer_sequence<int, 16>{});
}
#else
// Without AVX-512, a 16-lane vector is a pair of 8-lane (AVX2) registers, kept
// as such: GCC holds a 64-byte vector type in memory there and shuffles it
// lane by lane (the forward pass ran 2x slower).
typedef float v8 __attribute__((vector_size(32)));

struct v16 {
  v8 lo, hi;
  float operator[](int l) const { return l < 8 ? lo[l] : hi[l - 8]; }
  v16& operator+=(v16 o) {
    lo += o.lo;
    hi += o.hi;
    return *this;
  }
};

inline v16 operator+(v16 a, v16 b) { return {a.lo + b.lo, a.hi + b.hi}; }
inline v16 operator*(v16 a, v16 b) { return {a.lo * b.lo, a.hi * b.hi}; }

inline v16 load(const float* p) {
  v16 r;
  std::memcpy(&r.lo, p, sizeof(v8));
  std::memcpy(&r.hi, p + 8, sizeof(v8));
  return r;
}

inline void store(float* p, v16 v) {
  std::memcpy(p, &v.lo, sizeof(v8));
  std::memcpy(p + 8, &v.hi, sizeof(v8));
}

template <int C, int c, int... L>
inline v8 spread_lanes(v8 v, lanes_t<L...>) {
  return __builtin_shufflevector(v, v, ((L / C) * C + c)...);
}

template <int C, int c>
inline v16 spread(v16 v) {
  constexpr auto eight = std::make_integer_sequence<int, 8>{};
  if constexpr (C <= 8) {  // a pixel's channels within one half
    return {spread_lanes<C, c>(v.lo, eight), spread_lanes<C, c>(v.hi, eight)};
  } else {  // C = 16: every lane takes channel c of the one pixel
    const v8 b = spread_lanes<8, c % 8>(c < 8 ? v.lo : v.hi, eight);
    return {b, b};
  }
}
#endif

// A vector whose lane l is f(l).
template <typename F>
inline v16 lanes(F f) {
  float values[16];
  for (int l = 0; l < 16; ++l) values[l] = f(l);
  return load(values);
}

// Accumulators of a row are worked on in blocks that fit the vector registers:
// 16 vectors in AVX-512's 32 registers; on AVX2 (16 registers of half the
// width) 4, as two registers hold one vector.
#if defined(__AVX512F__)
constexpr int kRegisterVectors = 16;
#else
constexpr int kRegisterVectors = 4;
#endif
constexpr int block_vectors(int nv) { return nv < kRegisterVectors ? nv : kRegisterVectors; }

// A call's images are split into a fixed number of parts (one per thread of
// XLA's intra-op pool), so the kernel gradients, summed part by part, do not
// depend on scheduling. The calling thread and pool tasks take parts in turn;
// the caller then waits only for parts already running, never for a task still
// queued (all pool threads may be running such calls: waiting for queued work
// would deadlock). A task that starts after all parts were taken does nothing.
inline void relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

struct Split {
  std::atomic<int> next{0}, done{0};
  int parts = 1;
  const std::function<void(int, int)>* part = nullptr;
};

int split_parts(int n, ffi::ThreadPool& pool) {
  return (int)std::max<int64_t>(1, std::min<int64_t>(n, pool.num_threads()));
}

void run_split(ffi::ThreadPool& pool, int n, const std::function<void(int, int)>& part) {
  auto split = std::make_shared<Split>();
  split->parts = split_parts(n, pool);
  split->part = &part;
  auto work = [split] {
    for (int i; (i = split->next.fetch_add(1)) < split->parts;) {
      (*split->part)(i, split->parts);
      split->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int i = 1; i < split->parts; ++i) pool.Schedule(decltype(work)(work));
  work();
  while (split->done.load(std::memory_order_acquire) < split->parts) relax();
}

// Images [begin, end) of part i of parts.
inline int part_begin(int n, int i, int parts) { return (int)((int64_t)n * i / parts); }

struct Geometry {
  int n, h, w, c, k, pad, dil, stride;
  int padded_w() const { return w + 2 * pad; }
  int padded_h() const { return h + 2 * pad; }
  int out_h() const { return h / stride; }
  int out_w() const { return w / stride; }
  int phase_w() const { return (padded_w() + 1) / 2; }  // stride 2: see pad_relu_phases
  size_t image() const { return (size_t)h * w * c; }
  size_t out_image() const { return (size_t)out_h() * out_w() * c; }
};

// Per tap, the kernel's C values repeated over the 16 lanes of a vector.
std::vector<float> tap_vectors(const float* kernel, const Geometry& g) {
  std::vector<float> taps((size_t)g.k * g.k * 16);
  for (int t = 0; t < g.k * g.k; ++t)
    for (int l = 0; l < 16; ++l) taps[(size_t)t * 16 + l] = kernel[t * g.c + l % g.c];
  return taps;
}

// Sums of the output rows and of their squares, per lane: over one image's rows
// in float vectors, then over images in double (an image has at most a few
// dozen rows; a part may have thousands of images' rows).
template <int NV>
struct Moments {
  v16 sum[NV], squares[NV];
  double total[2][NV * 16] = {};
  Moments() { clear(); }
  void clear() {
    for (int v = 0; v < NV; ++v) sum[v] = squares[v] = v16{};
  }
  void add_row(const float* y) {
    for (int v = 0; v < NV; ++v) {
      const v16 r = load(y + v * 16);
      sum[v] += r;
      squares[v] += r * r;
    }
  }
  void next_image() {
    for (int v = 0; v < NV; ++v)
      for (int l = 0; l < 16; ++l) {
        total[0][v * 16 + l] += sum[v][l];
        total[1][v * 16 + l] += squares[v][l];
      }
    clear();
  }
  // Per channel (lane l holds channel l % C): out[c] the sum, out[C + c] of squares.
  template <int C>
  void channels(double* out) const {
    for (int c = 0; c < 2 * C; ++c) out[c] = 0.0;
    for (int q = 0; q < NV * 16; ++q) {
      out[q % C] += total[0][q];
      out[C + q % C] += total[1][q];
    }
  }
};

// spread<C, c>(v): lane l takes channel c of lane l's own pixel,
// v[(l / C) * C + c]. The lane pattern is a compile-time constant, so the
// shuffle is one or two instructions (a pattern held in a variable compiled to
// a permute with a variable index, which AVX2 has no 16-lane form of).

// sum over c of spread<C, c>(v) * rows[c]: a 1x1 conv of the 16 / C pixels of v.
template <int C, int... c>
inline v16 mix_channels(v16 v, const v16* rows, std::integer_sequence<int, c...>) {
  return (v16{} + ... + (spread<C, c>(v) * rows[c]));
}

template <int C>
inline v16 mix(v16 v, const v16* rows) {
  return mix_channels<C>(v, rows, std::make_integer_sequence<int, C>{});
}

// acc[c] += spread<C, c>(d) * g for every c: the 1x1 kernel's gradient terms.
template <int C, int... c>
inline void add_outer_channels(v16 d, v16 g, v16* acc, std::integer_sequence<int, c...>) {
  ((acc[c] += spread<C, c>(d) * g), ...);
}

template <int C>
inline void add_outer(v16 d, v16 g, v16* acc) {
  add_outer_channels<C>(d, g, acc, std::make_integer_sequence<int, C>{});
}

// relu(x) into a zero-padded image buffer.
void pad_relu(const float* x, const Geometry& g, float* xp) {
  std::memset(xp, 0, sizeof(float) * g.padded_h() * g.padded_w() * g.c);
  for (int h = 0; h < g.h; ++h) {
    const float* src = x + (size_t)h * g.w * g.c;
    float* dst = xp + ((size_t)(h + g.pad) * g.padded_w() + g.pad) * g.c;
    for (int q = 0; q < g.w * g.c; ++q) dst[q] = src[q] > 0.f ? src[q] : 0.f;
  }
}

// One output row of the depthwise conv of a padded image `src` (row length
// `src_w` pixels) with the tap vectors `taps` (flipped when `flip`).
template <int NV>
inline void depthwise_row(const float* src, int src_w, const float* taps, const Geometry& g,
                          int row, bool flip, float* out) {
  constexpr int B = block_vectors(NV);
  const int k = g.k;
  for (int v0 = 0; v0 < NV; v0 += B) {
    v16 acc[B];
    for (int v = 0; v < B; ++v) acc[v] = v16{};
    for (int i = 0; i < k; ++i) {
      const float* line = src + (size_t)(row + i * g.dil) * src_w * g.c + v0 * 16;
      for (int j = 0; j < k; ++j) {
        const int t = flip ? (k - 1 - i) * k + (k - 1 - j) : i * k + j;
        const v16 tap = load(taps + (size_t)t * 16);
        const float* s = line + j * g.dil * g.c;
        for (int v = 0; v < B; ++v) acc[v] += load(s + v * 16) * tap;
      }
    }
    for (int v = 0; v < B; ++v) store(out + (v0 + v) * 16, acc[v]);
  }
}

// y = d W for the 16 / C pixels of each vector.
template <int C, int NV>
inline void pointwise_row(const float* d, const v16* w_rows, float* y) {
  for (int v = 0; v < NV; ++v) {
    store(y + v * 16, mix<C>(load(d + v * 16), w_rows));
  }
}

// Images [begin, end); with Stats, their output sums into sums[0, 2 C) (see Moments).
template <int C, int NV, bool Stats>
void forward_images(const float* x, const float* kdw, const float* kpw, const Geometry& g,
                    int begin, int end, float* y, double* sums) {
  const std::vector<float> taps = tap_vectors(kdw, g);
  v16 w_rows[C];  // w_rows[c][l] = W[c, l % C]
  for (int c = 0; c < C; ++c) w_rows[c] = lanes([&](int l) { return kpw[c * C + l % C]; });
  std::vector<float> xp((size_t)g.padded_h() * g.padded_w() * C), d((size_t)g.w * C);
  Moments<NV> moments;
  for (int n = begin; n < end; ++n) {
    pad_relu(x + n * g.image(), g, xp.data());
    float* yn = y + n * g.image();
    for (int h = 0; h < g.h; ++h) {
      depthwise_row<NV>(xp.data(), g.padded_w(), taps.data(), g, h, false, d.data());
      pointwise_row<C, NV>(d.data(), w_rows, yn + (size_t)h * g.w * C);
      if (Stats) moments.add_row(yn + (size_t)h * g.w * C);
    }
    if (Stats) moments.next_image();
  }
  if (Stats) moments.template channels<C>(sums);
}

// Stride 2. relu(x), zero-padded, split into its even and odd padded columns
// (phases): output pixel w_o reads padded column 2 w_o + j d, i.e. phase (j d) % 2
// at column w_o + (j d) / 2, so a tap still reads one contiguous row of NV
// vectors. Each phase is padded_h x phase_w pixels; input pixel (h, w) lies in
// the odd one where w + pad is odd, at phase_pixel.
inline size_t phase_pixel(const Geometry& g, int h, int w) {
  return ((size_t)(h + g.pad) * g.phase_w() + (w + g.pad) / 2) * g.c;
}

// Pixel copies between an image row and its two phases, one parity at a time
// (w = first, first + 2, ...): whole C-float pixels of compile-time size, so
// each is a vector move. (Per-pixel copies choosing the phase and applying the
// ReLU mask lane by lane compiled to scalar code: 79% of a stride-2 forward.)
template <int C, bool ToPhases>
inline void move_phase_row(const Geometry& g, int h, float* row, float* even, float* odd) {
  for (int first = 0; first < 2; ++first) {
    float* phase = (first + g.pad) % 2 ? odd : even;
    for (int w = first; w < g.w; w += 2) {
      float* p = phase + phase_pixel(g, h, w);
      float* r = row + (size_t)w * C;
      if (ToPhases) std::memcpy(p, r, sizeof(float) * C);
      else std::memcpy(r, p, sizeof(float) * C);
    }
  }
}

// `row` is scratch of W * C floats.
template <int C>
void pad_relu_phases(const float* x, const Geometry& g, float* even, float* odd, float* row) {
  const size_t phase = (size_t)g.padded_h() * g.phase_w() * C;
  std::memset(even, 0, sizeof(float) * phase);
  std::memset(odd, 0, sizeof(float) * phase);
  for (int h = 0; h < g.h; ++h) {
    const float* src = x + (size_t)h * g.w * C;
    for (int q = 0; q < g.w * C; ++q) row[q] = src[q] > 0.f ? src[q] : 0.f;
    move_phase_row<C, true>(g, h, row, even, odd);
  }
}

// Where tap (i, j) of output row `row` starts in the phases (stride 2).
inline size_t phase_offset(const Geometry& g, int row, int i, int j) {
  return ((size_t)(2 * row + i * g.dil) * g.phase_w() + (j * g.dil) / 2) * g.c;
}

template <int NV>
inline void depthwise_row_s2(const float* even, const float* odd, const float* taps,
                             const Geometry& g, int row, float* out) {
  constexpr int B = block_vectors(NV);
  for (int v0 = 0; v0 < NV; v0 += B) {
    v16 acc[B];
    for (int v = 0; v < B; ++v) acc[v] = v16{};
    for (int i = 0; i < g.k; ++i)
      for (int j = 0; j < g.k; ++j) {
        const v16 tap = load(taps + (size_t)(i * g.k + j) * 16);
        const float* s = ((j * g.dil) % 2 ? odd : even) + phase_offset(g, row, i, j) + v0 * 16;
        for (int v = 0; v < B; ++v) acc[v] += load(s + v * 16) * tap;
      }
    for (int v = 0; v < B; ++v) store(out + (v0 + v) * 16, acc[v]);
  }
}

template <int C, int NV, bool Stats>
void forward_images_s2(const float* x, const float* kdw, const float* kpw, const Geometry& g,
                       int begin, int end, float* y, double* sums) {
  const std::vector<float> taps = tap_vectors(kdw, g);
  v16 w_rows[C];
  for (int c = 0; c < C; ++c) w_rows[c] = lanes([&](int l) { return kpw[c * C + l % C]; });
  const size_t phase = (size_t)g.padded_h() * g.phase_w() * C;
  std::vector<float> even(phase), odd(phase), d((size_t)g.out_w() * C), row((size_t)g.w * C);
  Moments<NV> moments;
  for (int n = begin; n < end; ++n) {
    pad_relu_phases<C>(x + n * g.image(), g, even.data(), odd.data(), row.data());
    float* yn = y + n * g.out_image();
    for (int h = 0; h < g.out_h(); ++h) {
      depthwise_row_s2<NV>(even.data(), odd.data(), taps.data(), g, h, d.data());
      pointwise_row<C, NV>(d.data(), w_rows, yn + (size_t)h * g.out_w() * C);
      if (Stats) moments.add_row(yn + (size_t)h * g.out_w() * C);
    }
    if (Stats) moments.next_image();
  }
  if (Stats) moments.template channels<C>(sums);
}

// The kernel gradients from their per-lane sums: lane l of a vector holds
// channel l % C, so each channel's sum adds its lanes.
template <int C, int NV>
void store_kernel_gradients(const std::vector<v16>& gtaps, const v16* gw, int k, float* gkdw,
                            float* gkpw) {
  for (int t = 0; t < k * k; ++t)
    for (int c = 0; c < C; ++c) {
      float sum = 0.f;
      for (int v = 0; v < NV; ++v)
        for (int l = c; l < 16; l += C) sum += gtaps[(size_t)t * NV + v][l];
      gkdw[t * C + c] = sum;
    }
  for (int c = 0; c < C; ++c)
    for (int o = 0; o < C; ++o) {
      float sum = 0.f;
      for (int l = o; l < 16; l += C) sum += gw[c][l];
      gkpw[c * C + o] = sum;
    }
}

// As backward_images, at stride 2: the input gradient is scattered tap by tap
// into phase buffers, then interleaved back through the ReLU mask.
template <int C, int NV, bool KernelGrads>
void backward_images_s2(const float* x, const float* kdw, const float* kpw, const float* gy,
                        const Geometry& g, int begin, int end, float* gx, float* gkdw,
                        float* gkpw) {
  const std::vector<float> taps = tap_vectors(kdw, g);
  const int k = g.k, row_len = g.out_w() * C;
  v16 wt_rows[C];
  for (int o = 0; o < C; ++o) wt_rows[o] = lanes([&](int l) { return kpw[(l % C) * C + o]; });
  v16 gw[C];
  for (int c = 0; c < C; ++c) gw[c] = v16{};
  std::vector<v16> gtaps((size_t)k * k * NV, v16{});
  const size_t phase = (size_t)g.padded_h() * g.phase_w() * C;
  std::vector<float> even(phase), odd(phase), d_even(phase), d_odd(phase), d(row_len),
      gd((size_t)g.out_h() * row_len), row((size_t)g.w * C);
  for (int n = begin; n < end; ++n) {
    const float* xn = x + n * g.image();
    const float* gyn = gy + n * g.out_image();
    if (KernelGrads) pad_relu_phases<C>(xn, g, even.data(), odd.data(), row.data());
    for (int h = 0; h < g.out_h(); ++h) {
      if (KernelGrads) depthwise_row_s2<NV>(even.data(), odd.data(), taps.data(), g, h, d.data());
      const float* gyr = gyn + (size_t)h * row_len;
      float* gdr = gd.data() + (size_t)h * row_len;
      for (int v = 0; v < NV; ++v) {
        const v16 gv = load(gyr + v * 16);
        const v16 acc = mix<C>(gv, wt_rows);
        if (KernelGrads) {
          const v16 dv = load(d.data() + v * 16);
          add_outer<C>(dv, gv, gw);
        }
        store(gdr + v * 16, acc);
      }
    }
    std::memset(d_even.data(), 0, sizeof(float) * phase);
    std::memset(d_odd.data(), 0, sizeof(float) * phase);
    for (int i = 0; i < k; ++i)
      for (int j = 0; j < k; ++j) {
        const v16 tap = load(taps.data() + (size_t)(i * k + j) * 16);
        const bool odd_phase = (j * g.dil) % 2;
        constexpr int B = block_vectors(NV);
        for (int v0 = 0; v0 < NV; v0 += B) {
          v16 acc[B];
          for (int v = 0; v < B; ++v) acc[v] = v16{};
          for (int h = 0; h < g.out_h(); ++h) {
            const size_t at = phase_offset(g, h, i, j) + v0 * 16;
            const float* gdr = gd.data() + (size_t)h * row_len + v0 * 16;
            float* dst = (odd_phase ? d_odd : d_even).data() + at;
            if (KernelGrads) {
              const float* s = (odd_phase ? odd : even).data() + at;
              for (int v = 0; v < B; ++v) acc[v] += load(s + v * 16) * load(gdr + v * 16);
            }
            for (int v = 0; v < B; ++v)
              store(dst + v * 16, load(dst + v * 16) + load(gdr + v * 16) * tap);
          }
          if (KernelGrads) {
            v16* out = gtaps.data() + (size_t)(i * k + j) * NV + v0;
            for (int v = 0; v < B; ++v) out[v] += acc[v];
          }
        }
      }
    float* gxn = gx + n * g.image();
    for (int h = 0; h < g.h; ++h) {  // The phases' gradients back in rows, ReLU-masked.
      move_phase_row<C, false>(g, h, row.data(), d_even.data(), d_odd.data());
      const float* xr = xn + (size_t)h * g.w * C;
      float* out = gxn + (size_t)h * g.w * C;
      for (int q = 0; q < g.w * C; ++q) out[q] = xr[q] > 0.f ? row[q] : 0.f;
    }
  }
  store_kernel_gradients<C, NV>(gtaps, gw, k, gkdw, gkpw);
}

template <int C, int NV, bool Stats>
void forward_split(ffi::ThreadPool& pool, const float* x, const float* kdw, const float* kpw,
                   const Geometry& g, float* y, float* stats) {
  // Output sums per part, added in part order (deterministic for a split).
  const int parts = split_parts(g.n, pool);
  std::vector<double> partial((size_t)parts * 2 * C);
  run_split(pool, g.n, [&](int i, int parts) {
    const int begin = part_begin(g.n, i, parts), end = part_begin(g.n, i + 1, parts);
    double* sums = partial.data() + (size_t)i * 2 * C;
    if (g.stride == 2)
      forward_images_s2<C, NV, Stats>(x, kdw, kpw, g, begin, end, y, sums);
    else
      forward_images<C, NV, Stats>(x, kdw, kpw, g, begin, end, y, sums);
  });
  const double count = (double)g.n * g.out_h() * g.out_w();
  for (int c = 0; c < 2 * C; ++c) {
    double total = 0.0;
    for (int i = 0; i < parts; ++i) total += Stats ? partial[(size_t)i * 2 * C + c] : 0.0;
    stats[c] = (float)(total / count);
  }
}

template <int C, int NV>
void forward(ffi::ThreadPool& pool, const float* x, const float* kdw, const float* kpw,
             const Geometry& g, bool statistics, float* y, float* stats) {
  if (statistics)
    forward_split<C, NV, true>(pool, x, kdw, kpw, g, y, stats);
  else
    forward_split<C, NV, false>(pool, x, kdw, kpw, g, y, stats);
}

// Input gradient of images [begin, end) into gx; with KernelGrads, their kernel
// gradients into gkdw and gkpw (not accumulated: the caller sums the parts).
// Without, the depthwise output is not recomputed: the input gradient needs
// only gy, the kernels and the ReLU mask.
template <int C, int NV, bool KernelGrads>
void backward_images(const float* x, const float* kdw, const float* kpw, const float* gy,
                     const Geometry& g, int begin, int end, float* gx, float* gkdw,
                     float* gkpw) {
  const std::vector<float> taps = tap_vectors(kdw, g);
  const int k = g.k;
  v16 wt_rows[C];  // wt_rows[o][l] = W[l % C, o]: gd = gy W^T
  for (int o = 0; o < C; ++o) wt_rows[o] = lanes([&](int l) { return kpw[(l % C) * C + o]; });
  v16 gw[C];  // gw[c][l]: sum of d[., c] * gy[., l % C] over the pixels of lane l
  for (int c = 0; c < C; ++c) gw[c] = v16{};
  std::vector<v16> gtaps((size_t)k * k * NV, v16{});
  const int gpad = (k - 1) * g.dil - g.pad;  // the transposed conv's padding
  const int gd_w = g.w + 2 * gpad;
  std::vector<float> xp((size_t)g.padded_h() * g.padded_w() * C), d((size_t)g.w * C),
      gd((size_t)(g.h + 2 * gpad) * gd_w * C, 0.f), dx((size_t)g.w * C);
  for (int n = begin; n < end; ++n) {
    const float* xn = x + n * g.image();
    const float* gyn = gy + n * g.image();
    if (KernelGrads) pad_relu(xn, g, xp.data());
    // Recompute the depthwise output; 1x1 conv gradients; gd into a padded buffer.
    for (int h = 0; h < g.h; ++h) {
      if (KernelGrads)
        depthwise_row<NV>(xp.data(), g.padded_w(), taps.data(), g, h, false, d.data());
      const float* gyr = gyn + (size_t)h * g.w * C;
      float* gdr = gd.data() + ((size_t)(h + gpad) * gd_w + gpad) * C;
      for (int v = 0; v < NV; ++v) {
        const v16 dv = load(d.data() + v * 16), gv = load(gyr + v * 16);
        const v16 acc = mix<C>(gv, wt_rows);
        if (KernelGrads)
          add_outer<C>(dv, gv, gw);
        store(gdr + v * 16, acc);
      }
    }
    // Depthwise kernel gradient: per tap, over all rows with the sums in registers.
    for (int i = 0; i < (KernelGrads ? k : 0); ++i)
      for (int j = 0; j < k; ++j) {
        constexpr int B = block_vectors(NV);
        for (int v0 = 0; v0 < NV; v0 += B) {
          v16 acc[B];
          for (int v = 0; v < B; ++v) acc[v] = v16{};
          for (int h = 0; h < g.h; ++h) {
            const float* s = xp.data() + (size_t)(h + i * g.dil) * g.padded_w() * C +
                             j * g.dil * C + v0 * 16;
            const float* gdr = gd.data() + ((size_t)(h + gpad) * gd_w + gpad) * C + v0 * 16;
            for (int v = 0; v < B; ++v) acc[v] += load(s + v * 16) * load(gdr + v * 16);
          }
          v16* out = gtaps.data() + (size_t)(i * k + j) * NV + v0;
          for (int v = 0; v < B; ++v) out[v] += acc[v];
        }
      }
    // Input gradient: gd correlated with the flipped kernel, masked by x > 0.
    float* gxn = gx + n * g.image();
    for (int h = 0; h < g.h; ++h) {
      depthwise_row<NV>(gd.data(), gd_w, taps.data(), g, h, true, dx.data());
      const float* xr = xn + (size_t)h * g.w * C;
      float* out = gxn + (size_t)h * g.w * C;
      for (int q = 0; q < g.w * C; ++q) out[q] = xr[q] > 0.f ? dx[q] : 0.f;
    }
  }
  store_kernel_gradients<C, NV>(gtaps, gw, k, gkdw, gkpw);
}

template <int C, int NV>
void backward(ffi::ThreadPool& pool, const float* x, const float* kdw, const float* kpw,
              const float* gy, const Geometry& g, bool kernel_grads, float* gx, float* gkdw,
              float* gkpw) {
  const size_t dw_size = (size_t)g.k * g.k * C, pw_size = (size_t)C * C;
  // Kernel gradients per part, summed in part order (deterministic for a split).
  const int parts = split_parts(g.n, pool);
  std::vector<float> partial((size_t)parts * (dw_size + pw_size));
  run_split(pool, g.n, [&](int i, int parts) {
    float* mine = partial.data() + (size_t)i * (dw_size + pw_size);
    const int begin = part_begin(g.n, i, parts), end = part_begin(g.n, i + 1, parts);
    float* gkpw_part = mine + dw_size;
    if (g.stride == 2 && kernel_grads)
      backward_images_s2<C, NV, true>(x, kdw, kpw, gy, g, begin, end, gx, mine, gkpw_part);
    else if (g.stride == 2)
      backward_images_s2<C, NV, false>(x, kdw, kpw, gy, g, begin, end, gx, mine, gkpw_part);
    else if (kernel_grads)
      backward_images<C, NV, true>(x, kdw, kpw, gy, g, begin, end, gx, mine, gkpw_part);
    else
      backward_images<C, NV, false>(x, kdw, kpw, gy, g, begin, end, gx, mine, gkpw_part);
  });
  std::fill(gkdw, gkdw + dw_size, 0.f);
  std::fill(gkpw, gkpw + pw_size, 0.f);
  for (int i = 0; i < parts; ++i) {
    const float* part = partial.data() + (size_t)i * (dw_size + pw_size);
    for (size_t q = 0; q < dw_size; ++q) gkdw[q] += part[q];
    for (size_t q = 0; q < pw_size; ++q) gkpw[q] += part[dw_size + q];
  }
}

ffi::Error check(const Geometry& g, ffi::Span<const int64_t> kdw, ffi::Span<const int64_t> kpw) {
  if (kdw.size() != 4 || kdw[0] != g.k || kdw[1] != g.k || kdw[2] != 1 || kdw[3] != g.c)
    return ffi::Error::InvalidArgument("relu_dw_pw: depthwise kernel must be (k, k, 1, C)");
  if (kpw.size() != 4 || kpw[0] != 1 || kpw[1] != 1 || kpw[2] != g.c || kpw[3] != g.c)
    return ffi::Error::InvalidArgument("relu_dw_pw: 1x1 kernel must be (1, 1, C, C)");
  if (2 * g.pad != g.dil * (g.k - 1))
    return ffi::Error::InvalidArgument("relu_dw_pw: padding must keep the size (2p = d(k - 1))");
  if (g.stride != 1 && g.stride != 2)
    return ffi::Error::InvalidArgument("relu_dw_pw: stride must be 1 or 2");
  if (g.stride == 2 && (g.h % 2 || g.w % 2))
    return ffi::Error::InvalidArgument("relu_dw_pw: stride 2 needs an even height and width");
  return ffi::Error::Success();
}

ffi::Error check_shape(ffi::Span<const int64_t> dims, int n, int h, int w, int c,
                       const char* message) {
  if (dims.size() != 4 || dims[0] != n || dims[1] != h || dims[2] != w || dims[3] != c)
    return ffi::Error::InvalidArgument(message);
  return ffi::Error::Success();
}

Geometry geometry(ffi::Span<const int64_t> x, int64_t k, int64_t pad, int64_t dil,
                  int64_t stride) {
  return Geometry{(int)x[0], (int)x[1], (int)x[2], (int)x[3], (int)k, (int)pad, (int)dil,
                  (int)stride};
}

template <typename Fn>
ffi::Error dispatch(const Geometry& g, Fn&& fn) {
  const int lanes = g.out_w() * g.c;  // an output row
  if (lanes % 16)
    return ffi::Error::InvalidArgument("relu_dw_pw: W / stride * C must be a multiple of 16");
  const int nv = lanes / 16;
#define PCD_CASE(C_, NV_) \
  if (g.c == C_ && nv == NV_) { fn.template operator()<C_, NV_>(); return ffi::Error::Success(); }
#define PCD_CASES(C_) PCD_CASE(C_, 1) PCD_CASE(C_, 2) PCD_CASE(C_, 4) PCD_CASE(C_, 8) PCD_CASE(C_, 16)
  PCD_CASES(4) PCD_CASES(8) PCD_CASES(16)
#undef PCD_CASES
#undef PCD_CASE
  return ffi::Error::InvalidArgument(
      "relu_dw_pw: needs C in {4, 8, 16} and W / stride * C / 16 in {1, 2, 4, 8, 16}");
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kdw, ffi::Buffer<ffi::F32> kpw,
                   ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::F32> stats,
                   int64_t padding, int64_t dilation, int64_t stride, int64_t statistics) {
  if (x.dimensions().size() != 4) return ffi::Error::InvalidArgument("relu_dw_pw: x must be NHWC");
  const Geometry g = geometry(x.dimensions(), kdw.dimensions()[0], padding, dilation, stride);
  if (ffi::Error e = check(g, kdw.dimensions(), kpw.dimensions()); e.failure()) return e;
  if (ffi::Error e = check_shape(y->dimensions(), g.n, g.out_h(), g.out_w(), g.c,
                                 "relu_dw_pw: y must be (N, H / stride, W / stride, C)");
      e.failure())
    return e;
  if (stats->dimensions().size() != 2 || stats->dimensions()[0] != 2 ||
      stats->dimensions()[1] != g.c)
    return ffi::Error::InvalidArgument("relu_dw_pw: stats must be (2, C)");
  return dispatch(g, [&]<int C, int NV>() {
    forward<C, NV>(pool, x.typed_data(), kdw.typed_data(), kpw.typed_data(), g, statistics != 0,
                   y->typed_data(), stats->typed_data());
  });
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kdw, ffi::Buffer<ffi::F32> kpw,
                    ffi::Buffer<ffi::F32> gy, ffi::ResultBuffer<ffi::F32> gx,
                    ffi::ResultBuffer<ffi::F32> gkdw, ffi::ResultBuffer<ffi::F32> gkpw,
                    int64_t padding, int64_t dilation, int64_t stride,
                    int64_t kernel_gradients) {
  if (x.dimensions().size() != 4) return ffi::Error::InvalidArgument("relu_dw_pw: x must be NHWC");
  const Geometry g = geometry(x.dimensions(), kdw.dimensions()[0], padding, dilation, stride);
  if (ffi::Error e = check(g, kdw.dimensions(), kpw.dimensions()); e.failure()) return e;
  if (ffi::Error e = check_shape(gy.dimensions(), g.n, g.out_h(), g.out_w(), g.c,
                                 "relu_dw_pw: gy must be (N, H / stride, W / stride, C)");
      e.failure())
    return e;
  if (ffi::Error e = check_shape(gx->dimensions(), g.n, g.h, g.w, g.c,
                                 "relu_dw_pw: gx must have x's shape");
      e.failure())
    return e;
  return dispatch(g, [&]<int C, int NV>() {
    backward<C, NV>(pool, x.typed_data(), kdw.typed_data(), kpw.typed_data(), gy.typed_data(), g,
                    kernel_gradients != 0, gx->typed_data(), gkdw->typed_data(),
                    gkpw->typed_data());
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    PcdReluDwPwForward, Forward,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>()
        .Attr<int64_t>("padding")
        .Attr<int64_t>("dilation")
        .Attr<int64_t>("stride")
        .Attr<int64_t>("statistics"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    PcdReluDwPwBackward, Backward,
    ffi::Ffi::Bind()
        .Ctx<ffi::ThreadPool>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Arg<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>()
        .Ret<ffi::Buffer<ffi::F32>>()
        .Attr<int64_t>("padding")
        .Attr<int64_t>("dilation")
        .Attr<int64_t>("stride")
        .Attr<int64_t>("kernel_gradients"));
