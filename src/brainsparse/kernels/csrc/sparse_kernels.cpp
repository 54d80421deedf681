// brainsparse CPU kernels: the sparse linear layer (forward; backward = input gradient + link
// gradients + bias gradient) and the Cannistraci–Hebb L3 scorers. Plain C++14 with GCC/Clang
// vector extensions, AVX intrinsics when the compiler targets AVX, OpenMP optional; no PyTorch or
// Python headers. Built and loaded (ctypes) by brainsparse/kernels/_build.py and _cpu_ext.py.
//
// Data layout: activations arrive row-major (N, in). The batch is cut into panels of 128 bytes
// (32 floats / 16 doubles); the forward pass transposes x panel by panel into xP ("panel layout",
// see pack_panel; saved for the backward pass, the plain transpose (in, N) when N fits one panel),
// so every link multiplies a contiguous run of a panel (SIMD over samples) and a whole panel of x
// stays in L2 while all outputs are computed for it: y[n, r] = sum_{k in row r} v[k] * xP[cols[k]].
// The backward pass transposes grad_y one panel at a time (the bias gradient summed on the way)
// and computes, per panel, grad_v[k] = <gyP[rows[k]], xP[cols[k]]> and grad_x[n, c] =
// sum_{k in column c} v[k] * gyP[rows[k]]. With both gradients over several panels they come from
// one pass in CSC order (grads_panel: each gathered row of grad_y serves both products; values
// and link gradients permuted between CSR and CSC order once per call); over one panel on one
// thread from one pass in CSR order (grads_rows: no permutation); otherwise from a CSR pass for
// grad_v and a CSC pass for grad_x. All routes share the per-link arithmetic, so they agree bit for
// bit. Every output element is summed by one thread in a fixed order: results do not depend on
// the thread count.
//
// BS_SOURCE_VERSION and BS_PARALLEL_MIN are passed with -D by the builder (defaults below).
#ifndef BS_SOURCE_VERSION
#define BS_SOURCE_VERSION 6
#endif
#ifndef BS_PARALLEL_MIN
#define BS_PARALLEL_MIN 2097152
#endif
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX__)
#include <immintrin.h>
#endif

typedef int64_t i64;

namespace {

constexpr i64 RB = 16;  // outputs per work item: 16 floats = one 64-byte line of the row-major output
constexpr i64 TB = 32;  // transpose tile

// 32-byte vectors (one AVX register; two SSE/NEON registers elsewhere), unaligned access allowed
template <typename T> struct Vec;
template <> struct Vec<float> { typedef float type __attribute__((vector_size(32), aligned(4))); };
template <> struct Vec<double> { typedef double type __attribute__((vector_size(32), aligned(8))); };

template <typename T> inline typename Vec<T>::type splat(T x) {
  typename Vec<T>::type r = {};
  return r + x;
}
template <typename T> inline typename Vec<T>::type load(const T* p) {
  return *reinterpret_cast<const typename Vec<T>::type*>(p);
}
template <typename T> inline void store(T* p, typename Vec<T>::type v) {
  *reinterpret_cast<typename Vec<T>::type*>(p) = v;
}
#if defined(__AVX__)
inline __m256 as_native(Vec<float>::type v) { __m256 r; std::memcpy(&r, &v, 32); return r; }
inline __m256d as_native(Vec<double>::type v) { __m256d r; std::memcpy(&r, &v, 32); return r; }
template <> inline Vec<float>::type splat<float>(float x) {
  const __m256 b = _mm256_set1_ps(x);
  Vec<float>::type r;
  std::memcpy(&r, &b, 32);
  return r;
}
template <> inline Vec<double>::type splat<double>(double x) {
  const __m256d b = _mm256_set1_pd(x);
  Vec<double>::type r;
  std::memcpy(&r, &b, 32);
  return r;
}
inline float hsum(Vec<float>::type v) {
  const __m256 x = as_native(v);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline double hsum(Vec<double>::type v) {
  const __m256d x = as_native(v);
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(x), _mm256_extractf128_pd(x, 1));
  s = _mm_add_sd(s, _mm_unpackhi_pd(s, s));
  return _mm_cvtsd_f64(s);
}

// dst[j * ldd + i] = src[i * lds + j] (+ add[i]) for one L x L block, in registers
inline void block_t(const float* src, i64 lds, float* dst, i64 ldd, const float* add) {
  const __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + lds), r2 = _mm256_loadu_ps(src + 2 * lds),
               r3 = _mm256_loadu_ps(src + 3 * lds), r4 = _mm256_loadu_ps(src + 4 * lds),
               r5 = _mm256_loadu_ps(src + 5 * lds), r6 = _mm256_loadu_ps(src + 6 * lds),
               r7 = _mm256_loadu_ps(src + 7 * lds);
  const __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1),
               t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3),
               t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
               t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE),
               u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE),
               u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE),
               u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  __m256 o[8] = {_mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
                 _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
                 _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
                 _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
  if (add) {
    const __m256 b = _mm256_loadu_ps(add);
    for (int j = 0; j < 8; ++j) _mm256_storeu_ps(dst + j * ldd, _mm256_add_ps(o[j], b));
  } else {
    for (int j = 0; j < 8; ++j) _mm256_storeu_ps(dst + j * ldd, o[j]);
  }
}
inline void block_t(const double* src, i64 lds, double* dst, i64 ldd, const double* add) {
  const __m256d r0 = _mm256_loadu_pd(src), r1 = _mm256_loadu_pd(src + lds),
                r2 = _mm256_loadu_pd(src + 2 * lds), r3 = _mm256_loadu_pd(src + 3 * lds);
  const __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1),
                t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
  __m256d o[4] = {_mm256_permute2f128_pd(t0, t2, 0x20), _mm256_permute2f128_pd(t1, t3, 0x20),
                  _mm256_permute2f128_pd(t0, t2, 0x31), _mm256_permute2f128_pd(t1, t3, 0x31)};
  if (add) {
    const __m256d b = _mm256_loadu_pd(add);
    for (int j = 0; j < 4; ++j) _mm256_storeu_pd(dst + j * ldd, _mm256_add_pd(o[j], b));
  } else {
    for (int j = 0; j < 4; ++j) _mm256_storeu_pd(dst + j * ldd, o[j]);
  }
}
#else
template <typename T> inline T hsum_any(typename Vec<T>::type v) {
  constexpr int L = 32 / sizeof(T);
  T h[L / 2];
  for (int i = 0; i < L / 2; ++i) h[i] = v[i] + v[i + L / 2];
  T s = T(0);
  for (int i = 0; i < L / 2; ++i) s += h[i];
  return s;
}
inline float hsum(Vec<float>::type v) { return hsum_any<float>(v); }
inline double hsum(Vec<double>::type v) { return hsum_any<double>(v); }
template <typename T>
inline void block_t(const T* src, i64 lds, T* dst, i64 ldd, const T* add) {
  constexpr int L = 32 / sizeof(T);
  for (int j = 0; j < L; ++j)
    for (int i = 0; i < L; ++i) dst[j * ldd + i] = src[i * lds + j] + (add ? add[i] : T(0));
}
#endif

// dst[j * ldd + i] = src[i * lds + j] (+ add[i]) for i < n, j < m, by L x L register blocks
template <typename T>
inline void copy_t(const T* src, i64 lds, T* dst, i64 ldd, i64 n, i64 m, const T* add) {
  constexpr i64 L = 32 / sizeof(T);
  const i64 nf = n - n % L, mf = m - m % L;
  for (i64 i = 0; i < nf; i += L)
    for (i64 j = 0; j < mf; j += L) block_t(src + i * lds + j, lds, dst + j * ldd + i, ldd, add ? add + i : nullptr);
  for (i64 j = 0; j < m; ++j) {  // the ragged edges
    const i64 i0 = j < mf ? nf : 0;
    for (i64 i = i0; i < n; ++i) dst[j * ldd + i] = src[i * lds + j] + (add ? add[i] : T(0));
  }
}

// ------------------------------------------------------------------ panel layout of the batch
// The batch is cut into panels of P samples (128 bytes: 32 floats, 16 doubles, four vectors);
// the last panel may be narrower. A transposed activation A (N, m) is stored panel by panel: the
// panel at sample n0 of width w = min(P, N - n0) starts at n0 * m and holds A[n0 + i, c] at
// c * w + i. One row of a panel (w samples of one feature) is two cache lines and a whole panel
// (m x w) is contiguous, so the rows that the links gather stay in L2 while every output is
// computed for that panel; with one panel (N <= P) this is the plain transpose (m, N). The
// passes run panel by panel: pack one panel, then every product for it, while it is in cache.
template <typename T> constexpr i64 panel() { return 128 / sizeof(T); }
constexpr i64 PF_DIST = 8;          // links ahead whose rows are prefetched, when a panel is
constexpr i64 PF_MIN = 384 << 10;   // larger than this (prefetching rows already in L2 costs)

// Columns [c0, c0 + nc) of the panel at n0 (width w) of src (N, m) row-major into the panel dst
// (m rows of w), when dst is given; sums[c] = (first ? 0 : sums[c]) + the panel's column sums,
// when sums is given.
template <typename T>
inline void pack_tile(const T* __restrict src, T* __restrict dst, i64 n0, i64 w, i64 m, i64 c0, i64 nc,
                      T* __restrict sums, bool first) {
  const T* s = src + n0 * m + c0;
  if (dst) copy_t<T>(s, m, dst + c0 * w, w, w, nc, nullptr);
  if (!sums) return;
  T acc[TB] = {};
  for (i64 i = 0; i < w; ++i)
    for (i64 j = 0; j < nc; ++j) acc[j] += s[i * m + j];
  for (i64 j = 0; j < nc; ++j) sums[c0 + j] = first ? acc[j] : sums[c0 + j] + acc[j];
}

// one panel (at n0, width w) into dst, the panel's base
template <typename T> void pack_panel(const T* src, T* dst, i64 n0, i64 w, i64 m, T* sums, bool first) {
  for (i64 c0 = 0; c0 < m; c0 += TB) pack_tile<T>(src, dst, n0, w, m, c0, std::min(TB, m - c0), sums, first);
}

// every panel, column tiles shared among the threads (orphaned worksharing, implicit barrier);
// a tile's panels in order, so each column sum is summed by one thread in panel order
template <typename T> void pack_all(const T* src, T* dst, i64 N, i64 m, T* sums) {
  constexpr i64 P = panel<T>();
#pragma omp for schedule(static)
  for (i64 c0 = 0; c0 < m; c0 += TB)
    for (i64 n0 = 0; n0 < N; n0 += P)
      pack_tile<T>(src, dst + n0 * m, n0, std::min(P, N - n0), m, c0, std::min(TB, m - c0), sums, n0 == 0);
}

// acc[0:P] = sum_{j in [j0, j1)} vals[j] * src[idx[j] * P + (0:P)] for a full panel (rows of P).
// SETS = 2: two sets of accumulators (links alternate, the last odd one in the first set) hide
// the FMA latency; SETS = 1: one chain in link order, the order the fused backward pass uses for
// the input gradient. PF: prefetch the rows D links ahead.
template <typename T, bool PF, int SETS>
inline void tile_full(const i64* __restrict idx, const T* __restrict vals, i64 j0, i64 j1, i64 jend,
                      const T* __restrict src, T* __restrict acc) {
  typedef typename Vec<T>::type V;
  constexpr i64 L = 32 / sizeof(T), P = panel<T>(), NV = P / L;
  V a[SETS][NV];
  for (int t = 0; t < SETS; ++t)
    for (i64 q = 0; q < NV; ++q) a[t][q] = V{};
  i64 j = j0;
  for (; j + SETS <= j1; j += SETS) {
    for (int t = 0; t < SETS; ++t) {
      if (PF && j + t + PF_DIST < jend)
        for (i64 q = 0; q < P; q += 64 / sizeof(T)) __builtin_prefetch(src + idx[j + t + PF_DIST] * P + q);
      const V u = splat<T>(vals[j + t]);
      const T* s = src + idx[j + t] * P;
      for (i64 q = 0; q < NV; ++q) a[t][q] += u * load<T>(s + q * L);
    }
  }
  for (; j < j1; ++j) {
    const V u = splat<T>(vals[j]);
    const T* s = src + idx[j] * P;
    for (i64 q = 0; q < NV; ++q) a[0][q] += u * load<T>(s + q * L);
  }
  for (i64 q = 0; q < NV; ++q) store<T>(acc + q * L, SETS == 1 ? a[0][q] : a[0][q] + a[SETS - 1][q]);
}

// the same for a narrower last panel (rows of w < P samples), one chain in link order
template <typename T>
inline void tile_part(const i64* __restrict idx, const T* __restrict vals, i64 j0, i64 j1,
                      const T* __restrict src, i64 w, T* __restrict acc) {
  for (i64 i = 0; i < w; ++i) acc[i] = T(0);
  for (i64 j = j0; j < j1; ++j) {
    const T v = vals[j];
    const T* __restrict s = src + idx[j] * w;
    for (i64 i = 0; i < w; ++i) acc[i] += v * s[i];
  }
}

// Work items of a parallel panel pass over n items: a few chunks per thread. The split never
// changes what is summed, or in which order.
inline i64 chunks_for(i64 n) {
#ifdef _OPENMP
  const i64 threads = omp_get_num_threads();
#else
  const i64 threads = 1;
#endif
  return std::min<i64>(std::max<i64>(n, 1), 4 * threads);
}

// One panel (at n0, width w) of out (N, ld_out) [+ bias], the outputs of row blocks [b0, b1):
// out[n0 + i, r] = sum_{j in ptr[r]..ptr[r+1]} vals[j] * src[idx[j] * w + i], src the panel
// (n_src rows of w). RB consecutive outputs at a time, so the writes fill cache lines.
template <typename T, int SETS>
void spmm_rows(i64 n_out, i64 n_src, const i64* ptr, const i64* idx, const T* vals, const T* src, i64 n0,
               i64 w, i64 ld_out, const T* bias, T* out, i64 b0, i64 b1) {
  constexpr i64 P = panel<T>();
  const i64 jend = ptr[n_out];
  const bool far = n_src * P * i64(sizeof(T)) > PF_MIN;
  alignas(64) T buf[RB][P];
  for (i64 b = b0; b < b1; ++b) {
    const i64 r0 = b * RB, r1 = std::min(r0 + RB, n_out);
    for (i64 r = r0; r < r1; ++r) {
      if (w < P) tile_part<T>(idx, vals, ptr[r], ptr[r + 1], src, w, buf[r - r0]);
      else if (far) tile_full<T, true, SETS>(idx, vals, ptr[r], ptr[r + 1], jend, src, buf[r - r0]);
      else tile_full<T, false, SETS>(idx, vals, ptr[r], ptr[r + 1], jend, src, buf[r - r0]);
    }
    // out[n0 + i, r] = buf[r - r0][i] (+ bias[r]): a transpose, in register blocks
    copy_t<T>(&buf[0][0], P, out + n0 * ld_out + r0, ld_out, r1 - r0, w, bias ? bias + r0 : nullptr);
  }
}

// ------------------------------------------------ link gradients: one dot product per link
// Both orders (CSR: a row of grad_y against gathered rows of x; CSC, fused with the input
// gradient: a row of x against gathered rows of grad_y) compute a link's dot product on a full
// panel with the same operations, so every route gives the same bits.

// <a, b> over one panel row as a vector of partial sums: (a0 b0 + a2 b2) + (a1 b1 + a3 b3)
template <typename T>
inline typename Vec<T>::type dot_row(const typename Vec<T>::type* a, const T* __restrict b) {
  typedef typename Vec<T>::type V;
  constexpr i64 L = 32 / sizeof(T);
  static_assert(panel<T>() == 4 * L, "a panel row is four vectors");
  V p = a[0] * load<T>(b), r = a[1] * load<T>(b + L);
  p += a[2] * load<T>(b + 2 * L);
  r += a[3] * load<T>(b + 3 * L);
  return p + r;
}

// the same on a narrower last panel: one chain in sample order
template <typename T> inline T dot_part(const T* __restrict a, const T* __restrict b, i64 w) {
  T acc = T(0);
  for (i64 i = 0; i < w; ++i) acc += a[i] * b[i];
  return acc;
}

// out[t] = (first ? 0 : out[t]) + the sum of the lanes of d[t], t < n <= 4: pairwise, in a fixed
// order per lane, so a link's sum does not depend on the other links of its group
#if defined(__AVX__)
inline void add_sums4(const Vec<float>::type* d, i64 n, bool first, float* out) {
  const __m256 s = _mm256_hadd_ps(_mm256_hadd_ps(as_native(d[0]), as_native(d[1])),
                                  _mm256_hadd_ps(as_native(d[2]), as_native(d[3])));
  const __m128 h = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  if (n == 4) {
    _mm_storeu_ps(out, first ? h : _mm_add_ps(_mm_loadu_ps(out), h));
    return;
  }
  alignas(16) float t[4];
  _mm_store_ps(t, h);
  for (i64 j = 0; j < n; ++j) out[j] = first ? t[j] : out[j] + t[j];
}
inline void add_sums4(const Vec<double>::type* d, i64 n, bool first, double* out) {
  const __m256d s01 = _mm256_hadd_pd(as_native(d[0]), as_native(d[1]));
  const __m256d s23 = _mm256_hadd_pd(as_native(d[2]), as_native(d[3]));
  const __m256d h = _mm256_add_pd(_mm256_permute2f128_pd(s01, s23, 0x20), _mm256_permute2f128_pd(s01, s23, 0x31));
  if (n == 4) {
    _mm256_storeu_pd(out, first ? h : _mm256_add_pd(_mm256_loadu_pd(out), h));
    return;
  }
  alignas(32) double t[4];
  _mm256_store_pd(t, h);
  for (i64 j = 0; j < n; ++j) out[j] = first ? t[j] : out[j] + t[j];
}
#else
template <typename T> inline void add_sums4(const typename Vec<T>::type* d, i64 n, bool first, T* out) {
  for (i64 j = 0; j < n; ++j) out[j] = first ? hsum_any<T>(d[j]) : out[j] + hsum_any<T>(d[j]);
}
#endif

// out[j] = (first ? 0 : out[j]) + the lane sum of link(j), j in [j0, j1): the links in order, four
// at a time (the last group padded with zeros)
template <typename T, typename F>
inline void link_sums(i64 j0, i64 j1, bool first, T* out, F&& link) {
  typedef typename Vec<T>::type V;
  i64 j = j0;
  for (; j + 4 <= j1; j += 4) {
    V d[4];
    for (int t = 0; t < 4; ++t) d[t] = link(j + t);
    add_sums4(d, 4, first, out + j);
  }
  if (j < j1) {
    const i64 n = j1 - j;
    V d[4] = {};
    for (i64 t = 0; t < n; ++t) d[t] = link(j + t);
    add_sums4(d, n, first, out + j);
  }
}

// gv[k] = (first ? 0 : gv[k]) + <g, src row cols[k]> for the links [k0, k1) of one output, whose
// panel row g is held in registers; four links at a time.
template <typename T, bool PF>
inline void dots_full(const T* __restrict g, const i64* __restrict cols, i64 k0, i64 k1, i64 kend,
                      const T* __restrict src, bool first, T* __restrict gv) {
  typedef typename Vec<T>::type V;
  constexpr i64 L = 32 / sizeof(T), P = panel<T>();
  const V gr[4] = {load<T>(g), load<T>(g + L), load<T>(g + 2 * L), load<T>(g + 3 * L)};
  auto dot = [&](i64 k) {
    if (PF && k + PF_DIST < kend)
      for (i64 q = 0; q < P; q += 64 / sizeof(T)) __builtin_prefetch(src + cols[k + PF_DIST] * P + q);
    return dot_row<T>(gr, src + cols[k] * P);
  };
  link_sums<T>(k0, k1, first, gv, dot);
}

// One panel of the link gradients in CSR order, outputs [r0, r1): gv[k] (+)= <gyP row r, xP row
// cols[k]> over the panel's w samples; gyP (n_out rows of w), xP (n_in rows of w).
template <typename T>
void sddmm_rows(i64 n_out, i64 n_in, const i64* crow, const i64* cols, const T* gyP, const T* xP, i64 w,
                bool first, T* gv, i64 r0, i64 r1) {
  constexpr i64 P = panel<T>();
  const i64 kend = crow[n_out];
  const bool far = n_in * P * i64(sizeof(T)) > PF_MIN;
  for (i64 r = r0; r < r1; ++r) {
    const T* g = gyP + r * w;
    if (w == P && far) dots_full<T, true>(g, cols, crow[r], crow[r + 1], kend, xP, first, gv);
    else if (w == P) dots_full<T, false>(g, cols, crow[r], crow[r + 1], kend, xP, first, gv);
    else
      for (i64 k = crow[r]; k < crow[r + 1]; ++k) {
        const T acc = dot_part<T>(g, xP + cols[k] * w, w);
        gv[k] = first ? acc : gv[k] + acc;
      }
  }
}

// One panel of both gradients, input feature by feature (CSC): gx[n0 + i, c] = sum over the links
// j of column c of vt[j] * gyP[t_rows[j], i] (one chain, rows ascending, as spmm_rows<T, 1>) and
// gvt[j] (+)= <xP row c, gyP row t_rows[j]> (links in CSC order). Each gathered row of grad_y
// serves both products. Column blocks [b0, b1).
template <typename T, bool PF>
void grads_cols(i64 n_in, const i64* ccol, const i64* t_rows, const T* vt, const T* gyP, const T* xP,
                i64 n0, i64 w, bool first, T* gvt, T* gx, i64 b0, i64 b1) {
  typedef typename Vec<T>::type V;
  constexpr i64 L = 32 / sizeof(T), P = panel<T>();
  const i64 jend = ccol[n_in];
  alignas(64) T buf[RB][P];
  for (i64 b = b0; b < b1; ++b) {
    const i64 c0 = b * RB, c1 = std::min(c0 + RB, n_in);
    for (i64 c = c0; c < c1; ++c) {
      const T* xr = xP + c * w;
      T* o = buf[c - c0];
      if (w < P) {
        for (i64 i = 0; i < w; ++i) o[i] = T(0);
        for (i64 j = ccol[c]; j < ccol[c + 1]; ++j) {
          const T* g = gyP + t_rows[j] * w;
          for (i64 i = 0; i < w; ++i) o[i] += vt[j] * g[i];
          const T acc = dot_part<T>(g, xr, w);
          gvt[j] = first ? acc : gvt[j] + acc;
        }
        continue;
      }
      const V x[4] = {load<T>(xr), load<T>(xr + L), load<T>(xr + 2 * L), load<T>(xr + 3 * L)};
      V a0 = {}, a1 = {}, a2 = {}, a3 = {};
      auto link = [&](i64 j) {  // both products of link j; returns its dot product's lanes
        if (PF && j + PF_DIST < jend)
          for (i64 q = 0; q < P; q += 64 / sizeof(T)) __builtin_prefetch(gyP + t_rows[j + PF_DIST] * P + q);
        const T* g = gyP + t_rows[j] * P;
        const V u = splat<T>(vt[j]);
        a0 += u * load<T>(g);
        a1 += u * load<T>(g + L);
        a2 += u * load<T>(g + 2 * L);
        a3 += u * load<T>(g + 3 * L);
        return dot_row<T>(x, g);
      };
      link_sums<T>(ccol[c], ccol[c + 1], first, gvt, link);  // in link order: the input gradient's chain too
      store<T>(o, a0);
      store<T>(o + L, a1);
      store<T>(o + 2 * L, a2);
      store<T>(o + 3 * L, a3);
    }
    copy_t<T>(&buf[0][0], P, gx + n0 * n_in + c0, n_in, c1 - c0, w, nullptr);
  }
}

// Both gradients of one panel on one thread, output by output (CSR): gv[k] = <gyP row r, xP row
// cols[k]> and gxP row cols[k] += vals[k] * gyP row r, gxP (n_in rows of w) zeroed first: each
// input's chain runs over rows ascending, as in spmm_rows<T, 1>, without permuting the links.
template <typename T, bool PF>
void grads_rows(i64 n_out, i64 n_in, const i64* crow, const i64* cols, const T* vals, const T* gyP,
                const T* xP, i64 w, T* gv, T* gxP) {
  typedef typename Vec<T>::type V;
  constexpr i64 L = 32 / sizeof(T), P = panel<T>();
  const i64 kend = crow[n_out];
  std::fill(gxP, gxP + n_in * w, T(0));
  for (i64 r = 0; r < n_out; ++r) {
    const T* g = gyP + r * w;
    if (w < P) {
      for (i64 k = crow[r]; k < crow[r + 1]; ++k) {
        T* o = gxP + cols[k] * w;
        for (i64 i = 0; i < w; ++i) o[i] += vals[k] * g[i];
        gv[k] = dot_part<T>(g, xP + cols[k] * w, w);
      }
      continue;
    }
    const V gr[4] = {load<T>(g), load<T>(g + L), load<T>(g + 2 * L), load<T>(g + 3 * L)};
    auto link = [&](i64 k) {
      if (PF && k + PF_DIST < kend)
        for (i64 q = 0; q < P; q += 64 / sizeof(T)) {
          __builtin_prefetch(xP + cols[k + PF_DIST] * P + q);
          __builtin_prefetch(gxP + cols[k + PF_DIST] * P + q, 1);
        }
      T* o = gxP + cols[k] * P;
      const V u = splat<T>(vals[k]);
      store<T>(o, load<T>(o) + u * gr[0]);
      store<T>(o + L, load<T>(o + L) + u * gr[1]);
      store<T>(o + 2 * L, load<T>(o + 2 * L) + u * gr[2]);
      store<T>(o + 3 * L, load<T>(o + 3 * L) + u * gr[3]);
      return dot_row<T>(gr, xP + cols[k] * P);
    };
    link_sums<T>(crow[r], crow[r + 1], true, gv, link);
  }
}

// out[perm[j]] = in[j] (scatter) or out[j] = in[perm[j]] (gather) for j in [j0, j1), a
// permutation between CSR and CSC order; the far side is prefetched 64 links ahead.
template <typename T, bool SCATTER>
void permute(const T* __restrict in, const i64* __restrict perm, i64 K, T* __restrict out, i64 j0, i64 j1) {
  for (i64 j = j0; j < j1; ++j) {
    if (j + 64 < K) __builtin_prefetch(SCATTER ? out + perm[j + 64] : in + perm[j + 64], SCATTER, 2);
    if (SCATTER) out[perm[j]] = in[j];
    else out[j] = in[perm[j]];
  }
}

// the same, the links shared among the threads (orphaned worksharing, no barrier)
template <typename T, bool SCATTER> void permute_shared(const T* in, const i64* perm, i64 K, T* out) {
  const i64 nch = chunks_for(K / 4096);
#pragma omp for schedule(static) nowait
  for (i64 ch = 0; ch < nch; ++ch) permute<T, SCATTER>(in, perm, K, out, K * ch / nch, K * (ch + 1) / nch);
}

// Below this much work a pass runs on one thread (see PARALLEL_MIN in _build.py).
i64 parallel_min = BS_PARALLEL_MIN;

// A pass runs on several threads when there are several and the work (multiply-adds plus
// transposed elements) reaches parallel_min. On one thread the passes go panel by panel (pack
// a panel, then every product for it, while it is in cache) with no OpenMP at all; on several,
// every panel is packed first and the panel loops need no barrier (a static schedule gives a
// chunk of outputs to the same thread in every panel, so sums over panels stay on one thread).
inline bool go_parallel(i64 work) {
#ifdef _OPENMP
  return work >= parallel_min && omp_get_max_threads() > 1;
#else
  (void)work;
  return false;
#endif
}

template <typename T>
void forward(i64 N, i64 n_in, i64 n_out, const T* x, const i64* crow, const i64* cols, const T* vals,
             const T* bias, T* xP, T* y) {
  constexpr i64 P = panel<T>();
  const i64 K = crow[n_out], blocks = (n_out + RB - 1) / RB;
  if (!go_parallel(K * N + N * (n_in + n_out))) {
    for (i64 n0 = 0; n0 < N; n0 += P) {
      const i64 w = std::min(P, N - n0);
      pack_panel<T>(x, xP + n0 * n_in, n0, w, n_in, nullptr, false);
      spmm_rows<T, 2>(n_out, n_in, crow, cols, vals, xP + n0 * n_in, n0, w, n_out, bias, y, 0, blocks);
    }
    return;
  }
#pragma omp parallel
  {
    pack_all<T>(x, xP, N, n_in, nullptr);  // implicit barrier
    const i64 nch = chunks_for(blocks);
    for (i64 n0 = 0; n0 < N; n0 += P) {
#pragma omp for schedule(dynamic, 1) nowait
      for (i64 ch = 0; ch < nch; ++ch)
        spmm_rows<T, 2>(n_out, n_in, crow, cols, vals, xP + n0 * n_in, n0, std::min(P, N - n0), n_out, bias, y,
                        blocks * ch / nch, blocks * (ch + 1) / nch);
    }
  }
}

// Scratch kept per thread between calls (no page faults on reuse), up to 16 MiB; 64-byte aligned,
// so a panel row is two cache lines and no vector load splits one.
template <typename T> T* scratch(std::vector<T>& keep, std::vector<T>& once, i64 n) {
  const size_t need = size_t(std::max<i64>(n, 1)) + 64 / sizeof(T);
  std::vector<T>& s = need * sizeof(T) <= (size_t(16) << 20) ? keep : once;
  if (s.size() < need) s.resize(need);
  const uintptr_t p = reinterpret_cast<uintptr_t>(s.data());
  return reinterpret_cast<T*>((p + 63) & ~uintptr_t(63));
}

// The backward products of one panel (gyP and xP its panels), on one thread or as this thread's
// share: fused (both gradients, CSC order, link gradients into gvt) or a CSR pass for gv and a
// CSC pass for gx (one chain per input, as the fused pass). Static chunks: the same outputs or
// inputs go to the same thread in every panel.
template <typename T>
void backward_panel(i64 n_in, i64 n_out, const i64* crow, const i64* cols, const i64* t_rows, const i64* ccol,
                    const T* vt, const T* gyP, const T* xP, i64 n0, i64 w, bool fused, T* gx, T* gv, T* gvt,
                    bool shared) {
  constexpr i64 P = panel<T>();
  const bool first = n0 == 0, far = n_out * P * i64(sizeof(T)) > PF_MIN;
  const i64 cblocks = (n_in + RB - 1) / RB, cch = shared ? chunks_for(cblocks) : 1;
  if (fused) {
#pragma omp for schedule(static) nowait
    for (i64 ch = 0; ch < cch; ++ch) {
      const i64 b0 = cblocks * ch / cch, b1 = cblocks * (ch + 1) / cch;
      if (far) grads_cols<T, true>(n_in, ccol, t_rows, vt, gyP, xP, n0, w, first, gvt, gx, b0, b1);
      else grads_cols<T, false>(n_in, ccol, t_rows, vt, gyP, xP, n0, w, first, gvt, gx, b0, b1);
    }
    return;
  }
  if (gv) {
    const i64 rch = shared ? chunks_for(n_out / RB) : 1;
#pragma omp for schedule(static) nowait
    for (i64 ch = 0; ch < rch; ++ch)
      sddmm_rows<T>(n_out, n_in, crow, cols, gyP, xP, w, first, gv, n_out * ch / rch, n_out * (ch + 1) / rch);
  }
  if (gx) {
#pragma omp for schedule(dynamic, 1) nowait
    for (i64 ch = 0; ch < cch; ++ch)
      spmm_rows<T, 1>(n_in, n_out, ccol, t_rows, vt, gyP, n0, w, n_in, nullptr, gx, cblocks * ch / cch,
                      cblocks * (ch + 1) / cch);
  }
}

// With both gradients and more than one panel the fused CSC pass pays for the two permutations of
// the link order; with one panel on one thread both gradients come from one CSR pass (grads_rows);
// otherwise separate passes. The same bits every way.
template <typename T>
void backward(i64 N, i64 n_in, i64 n_out, const T* gy, const T* xP, const i64* crow, const i64* cols,
              const i64* t_perm, const i64* t_rows, const i64* ccol, const T* vals, T* gx, T* gv, T* gb) {
  constexpr i64 P = panel<T>();
  const i64 K = crow[n_out];
  if (N == 0) {  // an empty batch: zero gradients
    if (gv) std::fill(gv, gv + K, T(0));
    if (gb) std::fill(gb, gb + n_out, T(0));
    return;
  }
  const bool parallel = go_parallel((gx ? K * N : 0) + (gv ? K * N : 0) + N * (n_in + n_out));
  const bool fused = gx && gv && N > P, packed = gx || gv;
  static thread_local std::vector<T> keep_g, keep_v, keep_t;
  std::vector<T> once_g, once_v, once_t;
  // grad_y in panel layout: one panel on one thread (packed as it is used), all of it on several
  T* gyP = scratch<T>(keep_g, once_g, packed ? (parallel ? N : std::min(N, P)) * n_out : 0);
  if (!parallel && gx && gv && N <= P) {
    T* gxP = scratch<T>(keep_v, once_v, N * n_in);
    pack_panel<T>(gy, gyP, 0, N, n_out, gb, true);
    if (n_in * P * i64(sizeof(T)) > PF_MIN) grads_rows<T, true>(n_out, n_in, crow, cols, vals, gyP, xP, N, gv, gxP);
    else grads_rows<T, false>(n_out, n_in, crow, cols, vals, gyP, xP, N, gv, gxP);
    copy_t<T>(gxP, N, gx, n_in, n_in, N, nullptr);  // gx[n, c] = gxP[c * N + n]
    return;
  }
  T* vt = scratch<T>(keep_v, once_v, gx ? K : 0);        // the values in CSC order
  T* gvt = scratch<T>(keep_t, once_t, fused ? K : 0);    // the link gradients in CSC order
  if (!parallel) {
    if (gx) permute<T, false>(vals, t_perm, K, vt, 0, K);
    for (i64 n0 = 0; n0 < N; n0 += P) {
      const i64 w = std::min(P, N - n0);
      pack_panel<T>(gy, packed ? gyP : nullptr, n0, w, n_out, gb, n0 == 0);
      if (packed)
        backward_panel<T>(n_in, n_out, crow, cols, t_rows, ccol, vt, gyP, xP + n0 * n_in, n0, w, fused, gx, gv, gvt,
                          false);
    }
    if (fused) permute<T, true>(gvt, t_perm, K, gv, 0, K);
    return;
  }
#pragma omp parallel
  {
    if (gx) permute_shared<T, false>(vals, t_perm, K, vt);
    pack_all<T>(gy, packed ? gyP : nullptr, N, n_out, gb);  // implicit barrier
    if (packed)
      for (i64 n0 = 0; n0 < N; n0 += P)
        backward_panel<T>(n_in, n_out, crow, cols, t_rows, ccol, vt, gyP + n0 * n_out, xP + n0 * n_in, n0,
                          std::min(P, N - n0), fused, gx, gv, gvt, true);
    if (fused) {
#pragma omp barrier
      permute_shared<T, true>(gvt, t_perm, K, gv);
    }
  }
}

// ------------------------------------------------ Cannistraci–Hebb L3 link prediction (scoring)
// A layer's bool mask (out, in) is a bipartite graph: outputs u, z2 are rows, inputs v, z1 are
// columns. An L3 path of the candidate (u, v) is u – z1 – z2 – v. Both scorers work one output
// row u at a time (one thread per row, fixed summation order: results do not depend on the
// thread count) and never form an (out, out) or (in, in) matrix.
typedef int32_t i32;

struct Graph {  // CSR (crow, cols: columns ascending) and CSC (ccol, rows_t: rows ascending)
  i64 n_out = 0, n_in = 0;
  std::vector<i64> crow, ccol;
  std::vector<i32> cols, rows_t;
  i64 deg_o(i64 r) const { return crow[r + 1] - crow[r]; }
  i64 deg_i(i64 c) const { return ccol[c + 1] - ccol[c]; }
};

// Build the graph from a row-major uint8 mask: one pass for the CSR (skipping all-zero 8-byte
// words), then the CSC by a counting sort of the links.
Graph graph_from_mask(const uint8_t* m, i64 n_out, i64 n_in) {
  Graph g;
  g.n_out = n_out;
  g.n_in = n_in;
  g.crow.assign(size_t(n_out) + 1, 0);
  g.ccol.assign(size_t(n_in) + 1, 0);
  g.cols.reserve(size_t(std::max<i64>(16, n_out * n_in / 64)));
  for (i64 r = 0; r < n_out; ++r) {
    const uint8_t* row = m + r * n_in;
    i64 j = 0;
    for (; j + 8 <= n_in; j += 8) {
      uint64_t word;
      std::memcpy(&word, row + j, 8);
      if (!word) continue;
      for (i64 t = j; t < j + 8; ++t)
        if (row[t]) g.cols.push_back(i32(t));
    }
    for (; j < n_in; ++j)
      if (row[j]) g.cols.push_back(i32(j));
    g.crow[r + 1] = i64(g.cols.size());
  }
  const i64 K = g.crow[n_out];
  for (i64 k = 0; k < K; ++k) ++g.ccol[g.cols[k] + 1];
  for (i64 j = 0; j < n_in; ++j) g.ccol[j + 1] += g.ccol[j];
  g.rows_t.resize(size_t(K));
  std::vector<i64> fill(g.ccol.begin(), g.ccol.end() - 1);
  for (i64 r = 0; r < n_out; ++r)
    for (i64 k = g.crow[r]; k < g.crow[r + 1]; ++k) g.rows_t[fill[g.cols[k]]++] = i32(r);
  return g;
}

// Two-hop counts from node x: cnt[z] = number of walks x – y – z (y over ptr_a/idx_a, z over
// ptr_b/idx_b); every z seen for the first time is appended to `touched`.
inline void count_two_hop(i64 x, const i64* ptr_a, const i32* idx_a, const i64* ptr_b, const i32* idx_b,
                          i32* cnt, std::vector<i32>& touched) {
  for (i64 a = ptr_a[x]; a < ptr_a[x + 1]; ++a) {
    const i32 y = idx_a[a];
    for (i64 b = ptr_b[y]; b < ptr_b[y + 1]; ++b) {
      const i32 z = idx_b[b];
      if (cnt[z]++ == 0) touched.push_back(z);
    }
  }
}

// Output row u: out[u, :] = s (as float), zero at u's existing links; clears s.
inline void finish_row(const Graph& g, i64 u, double* s, float* out) {
  float* o = out + u * g.n_in;
  for (i64 v = 0; v < g.n_in; ++v) {
    o[v] = float(s[v]);
    s[v] = 0.0;
  }
  for (i64 k = g.crow[u]; k < g.crow[u + 1]; ++k) o[g.cols[k]] = 0.0f;
}

// Offsets of the per-link last-hop tables: link e = (z2, z1) in CSC order owns deg(z2) slots.
std::vector<i64> last_hop_offsets(const Graph& g) {
  const i64 K = g.crow[g.n_out];
  std::vector<i64> off(K + 1, 0);
  for (i64 e = 0; e < K; ++e) off[e + 1] = off[e] + g.deg_o(g.rows_t[e]);
  return off;
}

// Number of L3 walks u – z1 – z2 – v: sum over links of deg(z1) * deg(z2).
i64 l3_work(const Graph& g) {
  i64 w = 0;
  for (i64 c = 0; c < g.n_in; ++c)
    for (i64 e = g.ccol[c]; e < g.ccol[c + 1]; ++e) w += g.deg_i(c) * g.deg_o(g.rows_t[e]);
  return w;
}

// Path factor of one path node with internal degree di and degree deg, de = deg − di − 1:
// [CH3-L3] 1/sqrt(1+de); [CH2-L3] sqrt((1+di)/(1+de)); [CH3.1-L3] 1/sqrt(1/(1+di) + de).
// 0 where di = 0 or de < 0 (only on paths that end at an existing link).
template <int VAR> inline double path_factor(double di, double deg) {
  const double de = deg - di - 1.0;
  if (!(di > 0.0) || de < 0.0) return 0.0;
  if (VAR == 0) return 1.0 / std::sqrt(1.0 + de);
  if (VAR == 1) return std::sqrt((1.0 + di) / (1.0 + de));
  return 1.0 / std::sqrt(1.0 / (1.0 + di) + de);
}

// Node weight of the matrix form for a pair with c common neighbours (c >= 1) and degree deg:
// E = max(deg − c − 1, 0); CH3 1/(E+1); CH2 (c+1)/(E+1); CH3.1 (c+1)/(E+1)^(1 + E/(E+1)).
template <int VAR> inline float node_weight(float c, float deg) {
  float e = deg - c - 1.0f;
  e = e > 0.0f ? e : 0.0f;
  if (VAR == 0) return 1.0f / (e + 1.0f);
  if (VAR == 1) return (c + 1.0f) / (e + 1.0f);
  return (c + 1.0f) / std::pow(e + 1.0f, 1.0f + e / (e + 1.0f));
}

// Exact path form: score(u, v) = sum over paths u – z1 – z2 – v of f(di_z1, deg z1) * f(di_z2, deg z2)
// with di(z1) = |N(z1) ∩ N(v)| and di(z2) = |N(z2) ∩ N(u)|.
template <int VAR> void ch_exact(const Graph& g, float* out) {
  const i64 n_out = g.n_out, n_in = g.n_in;
  const std::vector<i64> off = last_hop_offsets(g);
  // q[off[e] + k] = f(di(z1), deg z1) for link e = (z2, z1) and the k-th input v of z2
  std::vector<double> q(size_t(off.back()));
#pragma omp parallel if (go_parallel(l3_work(g)))
  {
    std::vector<i32> cnt(size_t(std::max<i64>(n_out, n_in)), 0), touched;
    std::vector<double> f(size_t(n_out), 0.0), s(size_t(n_in), 0.0);
#pragma omp for schedule(dynamic, 16)
    for (i64 z1 = 0; z1 < n_in; ++z1) {
      count_two_hop(z1, g.ccol.data(), g.rows_t.data(), g.crow.data(), g.cols.data(), cnt.data(), touched);
      const double dz1 = double(g.deg_i(z1));
      for (i64 e = g.ccol[z1]; e < g.ccol[z1 + 1]; ++e) {
        const i32 z2 = g.rows_t[e];
        double* qe = q.data() + off[e];
        for (i64 k = g.crow[z2]; k < g.crow[z2 + 1]; ++k) *qe++ = path_factor<VAR>(cnt[g.cols[k]], dz1);
      }
      for (i32 v : touched) cnt[v] = 0;
      touched.clear();
    }  // implicit barrier: q is complete
#pragma omp for schedule(dynamic, 16)
    for (i64 u = 0; u < n_out; ++u) {
      count_two_hop(u, g.crow.data(), g.cols.data(), g.ccol.data(), g.rows_t.data(), cnt.data(), touched);
      for (i32 z2 : touched) f[z2] = path_factor<VAR>(cnt[z2], double(g.deg_o(z2)));
      for (i64 a = g.crow[u]; a < g.crow[u + 1]; ++a) {
        const i32 z1 = g.cols[a];
        for (i64 e = g.ccol[z1]; e < g.ccol[z1 + 1]; ++e) {
          const i32 z2 = g.rows_t[e];
          const double w = f[z2];
          if (w == 0.0) continue;
          const double* __restrict qe = q.data() + off[e];
          const i32* __restrict vs = g.cols.data() + g.crow[z2];
          const i64 n = g.deg_o(z2);
          for (i64 k = 0; k < n; ++k) s[vs[k]] += w * qe[k];
        }
      }
      finish_row(g, u, s.data(), out);
      for (i32 z2 : touched) cnt[z2] = 0, f[z2] = 0.0;
      touched.clear();
    }
  }
}

// Matrix form, fused, one output row u at a time; C = A·Aᵀ and C' = Aᵀ·A are never formed.
// S_out[u, :] = sum over z2 with C[u, z2] > 0 of Wt[u, z2]·A[z2, :], where C[u, z2] counts the
// walks u – z1 – z2. Most pairs share one input, so it is split as
//   sum over z1 in N(u), z2 in N(z1) of h(z2)·A[z2, :]      with h(z2) = Wt at C = 1
//   + sum over z2 with C[u, z2] >= 2 of (Wt[u, z2] − C[u, z2]·h(z2))·A[z2, :].
// S_inᵀ[u, v] = sum over z1 in N(u) of Wt'[v, z1]. Both sums over z1 in N(u) use one list per
// input z1, built once: entries (v, Wt'[v, z1] + sum over z2 in N(z1) ∩ N(v) of h(z2)).
template <int VAR> void ch_matrix(const Graph& g, float* out) {
  const i64 n_out = g.n_out, n_in = g.n_in;
  const std::vector<i64> off = last_hop_offsets(g);
  // the list of z1 has at most min(walks z1 – z2 – v, in) entries
  std::vector<i64> base(size_t(n_in) + 1, 0), len(size_t(n_in), 0);
  for (i64 c = 0; c < n_in; ++c) base[c + 1] = base[c] + std::min(off[g.ccol[c + 1]] - off[g.ccol[c]], n_in);
  std::unique_ptr<i32[]> lv(new i32[size_t(std::max<i64>(base.back(), 1))]);  // first touched in parallel
  std::unique_ptr<float[]> lw(new float[size_t(std::max<i64>(base.back(), 1))]);
  std::vector<float> h(static_cast<size_t>(n_out));
  for (i64 z2 = 0; z2 < n_out; ++z2) h[z2] = node_weight<VAR>(1.0f, float(g.deg_o(z2)));
#pragma omp parallel if (go_parallel(2 * l3_work(g)))
  {
    std::vector<i32> cnt(size_t(std::max<i64>(n_out, n_in)), 0), touched;
    std::vector<double> s(size_t(n_in), 0.0);
#pragma omp for schedule(dynamic, 16)
    for (i64 z1 = 0; z1 < n_in; ++z1) {
      for (i64 e = g.ccol[z1]; e < g.ccol[z1 + 1]; ++e) {
        const i32 z2 = g.rows_t[e];
        const double hz = h[z2];
        for (i64 k = g.crow[z2]; k < g.crow[z2 + 1]; ++k) {
          const i32 v = g.cols[k];
          if (cnt[v]++ == 0) touched.push_back(v);
          s[v] += hz;
        }
      }
      const float dz1 = float(g.deg_i(z1));
      i64 b = base[z1];
      for (i32 v : touched) {
        lv[b] = v;
        lw[b++] = float(node_weight<VAR>(float(cnt[v]), dz1) + s[v]);
        cnt[v] = 0;
        s[v] = 0.0;
      }
      len[z1] = i64(touched.size());
      touched.clear();
    }  // implicit barrier: the lists are complete
#pragma omp for schedule(dynamic, 16)
    for (i64 u = 0; u < n_out; ++u) {
      count_two_hop(u, g.crow.data(), g.cols.data(), g.ccol.data(), g.rows_t.data(), cnt.data(), touched);
      for (i32 z2 : touched) {
        const i32 c = cnt[z2];
        cnt[z2] = 0;
        if (c < 2) continue;
        const double w = double(node_weight<VAR>(float(c), float(g.deg_o(z2)))) - double(c) * h[z2];
        for (i64 k = g.crow[z2]; k < g.crow[z2 + 1]; ++k) s[g.cols[k]] += w;
      }
      touched.clear();
      for (i64 a = g.crow[u]; a < g.crow[u + 1]; ++a) {
        const i32 z1 = g.cols[a];
        const i32* __restrict vs = lv.get() + base[z1];
        const float* __restrict w = lw.get() + base[z1];
        for (i64 k = 0; k < len[z1]; ++k) s[vs[k]] += w[k];
      }
      finish_row(g, u, s.data(), out);
    }
  }
}

template <int VAR> void ch_dispatch(const Graph& g, int matrix, float* out) {
  if (matrix) ch_matrix<VAR>(g, out);
  else ch_exact<VAR>(g, out);
}


// ------------------------------------------------ chains of sparse layers + ReLU (one call per pass)
// A chain keeps every activation in the panel layout: layer l reads its input panel acts[l] and
// writes its output panel acts[l + 1] directly (rows of w samples), so only the chain's input,
// output and output gradient are packed or unpacked. Each panel goes through all layers while it
// is in cache. Every element is summed in the same order as the single-layer passes above (same
// tiles, bias added after the sum, ReLU after the bias; the same per-panel link-gradient and bias
// sums), so results equal them bit for bit.

// Rows [r0, r1) of one panel: out[r * w + i] = [relu](sum_{j in ptr[r]..ptr[r+1]} vals[j] *
// src[idx[j] * w + i] + bias[r]), then zero where keep[r * w + i] <= 0 when keep is given (the
// backward pass through the previous layer's ReLU). SETS as in tile_full: 2 for the forward
// products, 1 for the input gradient (the chains of the single-layer passes).
template <typename T, int SETS>
void chain_rows(i64 n_out, i64 n_src, const i64* ptr, const i64* idx, const T* vals, const T* src, i64 w,
                const T* bias, bool relu, const T* keep, T* out, i64 r0, i64 r1) {
  constexpr i64 P = panel<T>();
  const i64 jend = ptr[n_out];
  const bool far = n_src * P * i64(sizeof(T)) > PF_MIN;
  alignas(64) T buf[P];
  for (i64 r = r0; r < r1; ++r) {
    if (w < P) tile_part<T>(idx, vals, ptr[r], ptr[r + 1], src, w, buf);
    else if (far) tile_full<T, true, SETS>(idx, vals, ptr[r], ptr[r + 1], jend, src, buf);
    else tile_full<T, false, SETS>(idx, vals, ptr[r], ptr[r + 1], jend, src, buf);
    T* o = out + r * w;
    const T* k = keep ? keep + r * w : nullptr;
    for (i64 i = 0; i < w; ++i) {
      T v = bias ? buf[i] + bias[r] : buf[i];
      if (relu) v = v < T(0) ? T(0) : v;       // as torch.relu: NaN stays NaN
      if (k && k[i] <= T(0)) v = T(0);         // as ReLU's backward (threshold_backward)
      o[i] = v;
    }
  }
}

// the same, rows shared among the threads (orphaned worksharing, implicit barrier)
template <typename T, int SETS>
void chain_rows_shared(i64 n_out, i64 n_src, const i64* ptr, const i64* idx, const T* vals, const T* src, i64 w,
                       const T* bias, bool relu, const T* keep, T* out) {
  const i64 nch = chunks_for(n_out / RB);
#pragma omp for schedule(dynamic, 1)
  for (i64 ch = 0; ch < nch; ++ch)
    chain_rows<T, SETS>(n_out, n_src, ptr, idx, vals, src, w, bias, relu, keep, out, n_out * ch / nch,
                        n_out * (ch + 1) / nch);
}

// The panel at n0 (width w) of src (N, m) into dst / dst (w rows of a (N, m) matrix) from the
// panel src, column tiles shared among the threads (implicit barrier)
template <typename T> void pack_panel_shared(const T* src, T* dst, i64 n0, i64 w, i64 m) {
#pragma omp for schedule(static)
  for (i64 c0 = 0; c0 < m; c0 += TB) pack_tile<T>(src, dst, n0, w, m, c0, std::min(TB, m - c0), nullptr, false);
}
template <typename T> void unpack_panel_shared(const T* src, T* dst, i64 w, i64 m) {
#pragma omp for schedule(static)
  for (i64 c0 = 0; c0 < m; c0 += TB) copy_t<T>(src + c0 * w, w, dst + c0, m, std::min(TB, m - c0), w, nullptr);
}

// Threads when the whole chain's pass has enough work: one parallel region serves every layer,
// so its start-up is paid once (the paper MLP at batch 32 goes parallel: 15-20 % less per step
// on two quiet cores, measured side by side; no worse with another job on one core)
inline bool chain_parallel(i64 L, i64 N, const i64* dims, const i64* const* crow, i64 passes) {
  i64 work = 0;
  for (i64 l = 0; l < L; ++l) work += passes * crow[l][dims[l + 1]] * N + N * (dims[l] + dims[l + 1]);
  return go_parallel(work);
}

template <typename T>
void chain_forward(i64 L, i64 N, const i64* dims, const i64* const* crow, const i64* const* cols,
                   const T* const* vals, const T* const* bias, const uint8_t* relu, const T* x, T* const* acts, T* y) {
  constexpr i64 P = panel<T>();
  if (!chain_parallel(L, N, dims, crow, 1)) {
    for (i64 n0 = 0; n0 < N; n0 += P) {
      const i64 w = std::min(P, N - n0);
      pack_panel<T>(x, acts[0] + n0 * dims[0], n0, w, dims[0], nullptr, false);
      for (i64 l = 0; l < L; ++l)
        chain_rows<T, 2>(dims[l + 1], dims[l], crow[l], cols[l], vals[l], acts[l] + n0 * dims[l], w, bias[l],
                         relu[l] != 0, nullptr, acts[l + 1] + n0 * dims[l + 1], 0, dims[l + 1]);
      copy_t<T>(acts[L] + n0 * dims[L], w, y + n0 * dims[L], dims[L], dims[L], w, nullptr);
    }
    return;
  }
#pragma omp parallel
  for (i64 n0 = 0; n0 < N; n0 += P) {
    const i64 w = std::min(P, N - n0);
    pack_panel_shared<T>(x, acts[0] + n0 * dims[0], n0, w, dims[0]);
    for (i64 l = 0; l < L; ++l)
      chain_rows_shared<T, 2>(dims[l + 1], dims[l], crow[l], cols[l], vals[l], acts[l] + n0 * dims[l], w, bias[l],
                              relu[l] != 0, nullptr, acts[l + 1] + n0 * dims[l + 1]);
    unpack_panel_shared<T>(acts[L] + n0 * dims[L], y + n0 * dims[L], w, dims[L]);
  }
}

// gb[r] = (first ? 0 : gb[r]) + the sum of the panel row r, samples ascending (as the pack's sums).
// L rows at a time, transposed so that they are the lanes of one vector: each lane still adds its
// row's samples in order, without the latency of one scalar chain per row.
template <typename T> inline void row_sums(const T* g, i64 w, bool first, T* gb, i64 r0, i64 r1) {
  constexpr i64 L = 32 / sizeof(T);
  alignas(64) T tb[panel<T>() * L];
  alignas(32) T s[L];
  i64 r = r0;
  for (; r + L <= r1; r += L) {
    copy_t<T>(g + r * w, w, tb, L, L, w, nullptr);  // tb[i * L + k] = g[(r + k) * w + i]
    typename Vec<T>::type acc = splat<T>(T(0));
    for (i64 i = 0; i < w; ++i) acc += load<T>(tb + i * L);
    store<T>(s, acc);
    for (i64 k = 0; k < L; ++k) gb[r + k] = first ? s[k] : gb[r + k] + s[k];
  }
  for (; r < r1; ++r) {
    T acc = T(0);
    for (i64 i = 0; i < w; ++i) acc += g[r * w + i];
    gb[r] = first ? acc : gb[r] + acc;
  }
}

// zero g where keep <= 0 (ReLU's backward), elements [i0, i1)
template <typename T> inline void relu_mask(T* g, const T* keep, i64 i0, i64 i1) {
  for (i64 i = i0; i < i1; ++i) g[i] = keep[i] <= T(0) ? T(0) : g[i];  // a plain store: no masked store
}

// Per panel: grad_y packed (through the last ReLU), then from the last layer down the bias sums,
// the link gradients and the input-gradient panel (through the previous ReLU).
template <typename T>
void chain_backward(i64 L, i64 N, const i64* dims, const i64* const* crow, const i64* const* cols,
                    const i64* const* t_perm, const i64* const* t_rows, const i64* const* ccol, const T* const* vals,
                    const uint8_t* relu, const T* const* acts, const T* gy, T* const* gv, T* const* gb, T* gx) {
  constexpr i64 P = panel<T>();
  if (N == 0) {  // an empty batch: zero gradients
    for (i64 l = 0; l < L; ++l) {
      if (gv[l]) std::fill(gv[l], gv[l] + crow[l][dims[l + 1]], T(0));
      if (gb[l]) std::fill(gb[l], gb[l] + dims[l + 1], T(0));
    }
    return;
  }
  const bool parallel = chain_parallel(L, N, dims, crow, 2);
  // one panel on one thread: both gradients of a layer in one CSR pass (grads_rows), no CSC values
  const bool rows_route = !parallel && N <= P;
  i64 dmax = 0;
  std::vector<i64> vt_off(size_t(L) + 1, 0);
  for (i64 l = 0; l <= L; ++l) dmax = std::max(dmax, dims[l]);
  for (i64 l = 0; l < L; ++l)
    vt_off[l + 1] = vt_off[l] + ((!rows_route && (l > 0 || gx)) ? crow[l][dims[l + 1]] : 0);
  static thread_local std::vector<T> keep_p, keep_v;
  std::vector<T> once_p, once_v;
  T* panels = scratch<T>(keep_p, once_p, 2 * dmax * P);
  T* vt = scratch<T>(keep_v, once_v, vt_off[L]);
#pragma omp parallel if (parallel)
  {
    for (i64 l = 0; l < L; ++l)  // the values in CSC order, as the single-layer passes take them
      if (vt_off[l + 1] > vt_off[l]) permute_shared<T, false>(vals[l], t_perm[l], crow[l][dims[l + 1]], vt + vt_off[l]);
#pragma omp barrier
    for (i64 n0 = 0; n0 < N; n0 += P) {
      const i64 w = std::min(P, N - n0);
      const bool first = n0 == 0;
      T* g = panels;  // private copies of the two panel pointers, swapped alike by every thread
      T* next = panels + dmax * P;
      pack_panel_shared<T>(gy, g, n0, w, dims[L]);
      if (relu[L - 1]) {
#pragma omp for schedule(static)
        for (i64 ch = 0; ch < 8; ++ch) relu_mask<T>(g, acts[L] + n0 * dims[L], dims[L] * w * ch / 8, dims[L] * w * (ch + 1) / 8);
      }
      for (i64 l = L - 1; l >= 0; --l) {
        const i64 n_out = dims[l + 1], n_in = dims[l];
        const T* xP = acts[l] + n0 * n_in;
        const T* keep = (l > 0 && relu[l - 1]) ? xP : nullptr;
        const bool want_x = l > 0 || gx;
        if (rows_route && want_x && gv[l]) {  // one thread, one panel
          if (gb[l]) row_sums<T>(g, w, true, gb[l], 0, n_out);
          if (n_in * P * i64(sizeof(T)) > PF_MIN) grads_rows<T, true>(n_out, n_in, crow[l], cols[l], vals[l], g, xP, w, gv[l], next);
          else grads_rows<T, false>(n_out, n_in, crow[l], cols[l], vals[l], g, xP, w, gv[l], next);
          if (keep) relu_mask<T>(next, keep, 0, n_in * w);
          std::swap(g, next);
          continue;
        }
        const i64 rch = chunks_for(n_out / RB);
        if (gb[l] || gv[l]) {
#pragma omp for schedule(static) nowait
          for (i64 ch = 0; ch < rch; ++ch) {
            const i64 r0 = n_out * ch / rch, r1 = n_out * (ch + 1) / rch;
            if (gb[l]) row_sums<T>(g, w, first, gb[l], r0, r1);
            if (gv[l]) sddmm_rows<T>(n_out, n_in, crow[l], cols[l], g, xP, w, first, gv[l], r0, r1);
          }
        }
        if (want_x) {
          chain_rows_shared<T, 1>(n_in, n_out, ccol[l], t_rows[l], vt + vt_off[l], g, w, nullptr, false, keep, next);
          std::swap(g, next);  // the implicit barrier above: every thread is done with g
        } else {
#pragma omp barrier
        }
      }
      if (gx) unpack_panel_shared<T>(g, gx + n0 * dims[0], w, dims[0]);
    }
  }
}

}  // namespace

extern "C" {
int bs_version() { return BS_SOURCE_VERSION; }
void bs_set_parallel_min(i64 work) { parallel_min = work; }
int bs_max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 0;
#endif
}
void bs_forward_f32(i64 N, i64 n_in, i64 n_out, const float* x, const i64* crow, const i64* cols,
                    const float* vals, const float* bias, float* xT, float* y) {
  forward<float>(N, n_in, n_out, x, crow, cols, vals, bias, xT, y);
}
void bs_forward_f64(i64 N, i64 n_in, i64 n_out, const double* x, const i64* crow, const i64* cols,
                    const double* vals, const double* bias, double* xT, double* y) {
  forward<double>(N, n_in, n_out, x, crow, cols, vals, bias, xT, y);
}
void bs_backward_f32(i64 N, i64 n_in, i64 n_out, const float* gy, const float* xT, const i64* crow,
                     const i64* cols, const i64* t_perm, const i64* t_rows, const i64* ccol,
                     const float* vals, float* gx, float* gv, float* gb) {
  backward<float>(N, n_in, n_out, gy, xT, crow, cols, t_perm, t_rows, ccol, vals, gx, gv, gb);
}
void bs_backward_f64(i64 N, i64 n_in, i64 n_out, const double* gy, const double* xT, const i64* crow,
                     const i64* cols, const i64* t_perm, const i64* t_rows, const i64* ccol,
                     const double* vals, double* gx, double* gv, double* gb) {
  backward<double>(N, n_in, n_out, gy, xT, crow, cols, t_perm, t_rows, ccol, vals, gx, gv, gb);
}
// CH L3 scores of every pair of an (n_out, n_in) uint8 mask into out (float32, row-major):
// variant 0 CH3, 1 CH2, 2 CH3.1; matrix 0 exact path form, 1 matrix form. Returns 0 on success.
int bs_ch_l3(i64 n_out, i64 n_in, const uint8_t* mask, int variant, int matrix, float* out) {
  if (variant < 0 || variant > 2) return 1;
  try {
    const Graph g = graph_from_mask(mask, n_out, n_in);
    if (variant == 0) ch_dispatch<0>(g, matrix, out);
    else if (variant == 1) ch_dispatch<1>(g, matrix, out);
    else ch_dispatch<2>(g, matrix, out);
  } catch (...) {  // out of memory: report instead of terminating the process
    return 2;
  }
  return 0;
}

// A chain of L sparse layers (see chain_forward / chain_backward): pointer arrays per layer.
void bs_chain_forward_f32(i64 L, i64 N, const i64* dims, const i64* const* crow, const i64* const* cols,
                          const float* const* vals, const float* const* bias, const uint8_t* relu, const float* x,
                          float* const* acts, float* y) {
  chain_forward<float>(L, N, dims, crow, cols, vals, bias, relu, x, acts, y);
}
void bs_chain_forward_f64(i64 L, i64 N, const i64* dims, const i64* const* crow, const i64* const* cols,
                          const double* const* vals, const double* const* bias, const uint8_t* relu,
                          const double* x, double* const* acts, double* y) {
  chain_forward<double>(L, N, dims, crow, cols, vals, bias, relu, x, acts, y);
}
void bs_chain_backward_f32(i64 L, i64 N, const i64* dims, const i64* const* crow, const i64* const* cols,
                           const i64* const* t_perm, const i64* const* t_rows, const i64* const* ccol,
                           const float* const* vals, const uint8_t* relu, const float* const* acts, const float* gy,
                           float* const* gv, float* const* gb, float* gx) {
  chain_backward<float>(L, N, dims, crow, cols, t_perm, t_rows, ccol, vals, relu, acts, gy, gv, gb, gx);
}
void bs_chain_backward_f64(i64 L, i64 N, const i64* dims, const i64* const* crow, const i64* const* cols,
                           const i64* const* t_perm, const i64* const* t_rows, const i64* const* ccol,
                           const double* const* vals, const uint8_t* relu, const double* const* acts,
                           const double* gy, double* const* gv, double* const* gb, double* gx) {
  chain_backward<double>(L, N, dims, crow, cols, t_perm, t_rows, ccol, vals, relu, acts, gy, gv, gb, gx);
}
}
