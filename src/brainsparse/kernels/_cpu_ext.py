"""A small C++ kernel for the CPU sparse linear layer, compiled just in time and loaded with ctypes.

Why this shape
--------------
At the sizes of the papers' MLP (1568×1568 at 1 % density, batch 32) one sparse product is only
~25 k links × 32 samples; the work takes tens of microseconds, so the per-call overhead decides
the speed. PyTorch's CSR kernels cost ~0.2 ms per call however small the product. This kernel
is one plain C++ function per pass (forward; backward = input gradient + link gradients + bias
gradient), called through ``ctypes`` with raw pointers: a few µs per call. On the project
machine (1 thread) a 1568×1568 layer at 1 % density, batch 32, takes ~0.1 ms forward and
~0.25 ms backward, against ~1.3 ms for PyTorch CSR and ~13 ms for the dense-masked layer.

* The source has no PyTorch headers, so it compiles in about a second with any C++ compiler
  (``$CXX``, ``c++``, ``g++`` or ``clang++``) and needs neither ninja nor Python headers
  (``torch.utils.cpp_extension.load_inline`` took ~36 s here for a one-line extension). It is
  portable C++ with GCC/Clang vector extensions, plus AVX intrinsics for the in-register
  transposes when the compiler targets AVX (``-march=native``); without AVX a scalar path.
* It is built once per machine (source, flags and CPU features hashed into the file name) into
  ``$BRAINSPARSE_KERNEL_CACHE`` or ``~/.cache/brainsparse/kernels`` (``$XDG_CACHE_HOME``
  respected), written to a temporary name and renamed, so concurrent processes are safe.
* It uses OpenMP when the compiler supports ``-fopenmp``. The shared object depends on
  ``libgomp.so.1``; PyTorch's Linux wheels already loaded their own copy under that name, so
  the kernel shares PyTorch's OpenMP runtime (no second thread pool) and follows
  ``torch.set_num_threads``. Small passes stay on one thread (see :data:`PARALLEL_MIN`).
* Any failure (no compiler, compile error, load error, self-test mismatch) leaves
  :func:`load` returning ``None``; callers then use the pure-PyTorch implementation.

Data layout: activations arrive row-major ``(N, in)``. The forward pass transposes ``x`` to
``xT (in, N)`` (saved for the backward pass), so every link multiplies a contiguous run of the
batch (SIMD over samples): ``y[:, r] = Σ_{k ∈ row r} v[k] · xT[cols[k], :]``. The backward pass
transposes ``grad_y`` likewise, then computes ``grad_v[k] = ⟨gyT[rows[k]], xT[cols[k]]⟩`` row
by row and ``grad_x[:, c] = Σ_{k ∈ column c} v[k] · gyT[rows[k], :]`` column by column (CSC).
Every output element is summed by one thread in a fixed order, so results do not depend on the
thread count (bit-for-bit reproducible).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE_VERSION = 3
#: Passes with less work than this (multiply-adds: links x samples, twice that for a backward
#: pass, plus the transposed elements) run on one thread; override with
#: $BRAINSPARSE_KERNEL_PARALLEL_MIN. The papers' MLP at batch 32 and 1 % density stays below it
#: (1568x1568: 0.9 M forward, 1.7 M backward): a pass takes 0.1-0.25 ms there, and on a machine
#: shared with other jobs every OpenMP barrier can wait a scheduler tick (~4 ms) for a
#: descheduled thread, which was measured here; bigger batches and densities use all threads.
PARALLEL_MIN = 1 << 21

SOURCE = r"""
// brainsparse CPU sparse linear kernels: plain C++ with GCC/Clang vector extensions, OpenMP optional.
#include <algorithm>
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

// b (m, n) = a (n, m)^T; orphaned worksharing: parallel when called inside a parallel region
template <typename T>
void transpose(const T* __restrict a, T* __restrict b, i64 n, i64 m) {
  const i64 tn = (n + TB - 1) / TB, tm = (m + TB - 1) / TB;
#pragma omp for schedule(static)
  for (i64 t = 0; t < tn * tm; ++t) {
    const i64 i0 = (t / tm) * TB, j0 = (t % tm) * TB;
    copy_t<T>(a + i0 * m + j0, m, b + j0 * n + i0, n, std::min(TB, n - i0), std::min(TB, m - j0), nullptr);
  }
}

// acc[0:4L] = sum_{j in [j0, j1)} vals[PERM ? perm[j] : j] * src[idx[j] * N + n0 + (0:4L)]
// Two sets of four vector accumulators (links alternate) hide the FMA latency.
template <typename T, bool PERM>
inline void tile_full(const i64* __restrict idx, const i64* __restrict perm, const T* __restrict vals,
                      i64 j0, i64 j1, const T* __restrict src, i64 N, i64 n0, T* __restrict acc) {
  typedef typename Vec<T>::type V;
  constexpr int L = 32 / sizeof(T);
  V a0 = {}, a1 = {}, a2 = {}, a3 = {}, b0 = {}, b1 = {}, b2 = {}, b3 = {};
  i64 j = j0;
  for (; j + 1 < j1; j += 2) {
    const V u = splat<T>(vals[PERM ? perm[j] : j]);
    const V w = splat<T>(vals[PERM ? perm[j + 1] : j + 1]);
    const T* s = src + idx[j] * N + n0;
    const T* t = src + idx[j + 1] * N + n0;
    a0 += u * load<T>(s);         b0 += w * load<T>(t);
    a1 += u * load<T>(s + L);     b1 += w * load<T>(t + L);
    a2 += u * load<T>(s + 2 * L); b2 += w * load<T>(t + 2 * L);
    a3 += u * load<T>(s + 3 * L); b3 += w * load<T>(t + 3 * L);
  }
  if (j < j1) {
    const V u = splat<T>(vals[PERM ? perm[j] : j]);
    const T* s = src + idx[j] * N + n0;
    a0 += u * load<T>(s);
    a1 += u * load<T>(s + L);
    a2 += u * load<T>(s + 2 * L);
    a3 += u * load<T>(s + 3 * L);
  }
  store<T>(acc, a0 + b0);
  store<T>(acc + L, a1 + b1);
  store<T>(acc + 2 * L, a2 + b2);
  store<T>(acc + 3 * L, a3 + b3);
}

template <typename T, bool PERM>
inline void tile_part(const i64* __restrict idx, const i64* __restrict perm, const T* __restrict vals,
                      i64 j0, i64 j1, const T* __restrict src, i64 N, i64 n0, i64 nb, T* __restrict acc) {
  for (i64 i = 0; i < nb; ++i) acc[i] = T(0);
  for (i64 j = j0; j < j1; ++j) {
    const T v = vals[PERM ? perm[j] : j];
    const T* __restrict s = src + idx[j] * N + n0;
    for (i64 i = 0; i < nb; ++i) acc[i] += v * s[i];
  }
}

// out (N, n_out) [+ bias], out[:, r] = sum_{j in ptr[r]..ptr[r+1]} vals[perm j] * srcT[idx[j], :]
// srcT is (n_src, N). A work item is RB consecutive outputs, so writes fill whole cache lines.
template <typename T, bool PERM>
void spmm_t(i64 N, i64 n_out, const i64* ptr, const i64* idx, const i64* perm, const T* vals,
            const T* srcT, const T* bias, T* out) {
  constexpr i64 NB = 4 * (32 / sizeof(T));
  const i64 blocks = (n_out + RB - 1) / RB;
#pragma omp for schedule(dynamic, 1)
  for (i64 b = 0; b < blocks; ++b) {
    const i64 r0 = b * RB, r1 = std::min(r0 + RB, n_out);
    alignas(64) T buf[RB][NB];
    for (i64 n0 = 0; n0 < N; n0 += NB) {
      const i64 nb = std::min<i64>(NB, N - n0);
      for (i64 r = r0; r < r1; ++r) {
        if (nb == NB) tile_full<T, PERM>(idx, perm, vals, ptr[r], ptr[r + 1], srcT, N, n0, buf[r - r0]);
        else tile_part<T, PERM>(idx, perm, vals, ptr[r], ptr[r + 1], srcT, N, n0, nb, buf[r - r0]);
      }
      // out[n0 + i, r] = buf[r - r0][i] (+ bias[r]): a transpose, in register blocks
      copy_t<T>(&buf[0][0], NB, out + n0 * n_out + r0, n_out, r1 - r0, nb, bias ? bias + r0 : nullptr);
    }
  }
}

// gv[k] = <gyT[rows k], xT[cols k]> over the batch (links in CSR order); gb[r] = sum of gyT[r, :]
template <typename T>
void sddmm_t(i64 N, i64 n_out, const i64* crow, const i64* cols, const T* gyT, const T* xT, T* gv, T* gb) {
  typedef typename Vec<T>::type V;
  constexpr i64 L = 32 / sizeof(T);
  const i64 nv = N / L;  // whole vectors per row
  const i64 blocks = (n_out + RB - 1) / RB;
#pragma omp for schedule(dynamic, 1)
  for (i64 b = 0; b < blocks; ++b) {
    const i64 r0 = b * RB, r1 = std::min(r0 + RB, n_out);
    for (i64 r = r0; r < r1; ++r) {
      const T* __restrict g = gyT + r * N;
      if (gb) {
        T acc = T(0);
        for (i64 i = 0; i < N; ++i) acc += g[i];
        gb[r] = acc;
      }
      if (!gv) continue;
      i64 k = crow[r];
      const i64 k1 = crow[r + 1];
      if (N == 4 * L) {  // the common case (32 float / 16 double samples): the row stays in registers
        const V g0 = load<T>(g), g1 = load<T>(g + L), g2 = load<T>(g + 2 * L), g3 = load<T>(g + 3 * L);
        for (; k < k1; ++k) {
          const T* s = xT + cols[k] * N;
          const V p = (g0 * load<T>(s) + g1 * load<T>(s + L)) + (g2 * load<T>(s + 2 * L) + g3 * load<T>(s + 3 * L));
          gv[k] = hsum(p);
        }
        continue;
      }
      for (; k < k1; ++k) {
        const T* s = xT + cols[k] * N;
        V p0 = {}, p1 = {};
        i64 q = 0;
        for (; q + 1 < nv; q += 2) {
          p0 += load<T>(g + q * L) * load<T>(s + q * L);
          p1 += load<T>(g + (q + 1) * L) * load<T>(s + (q + 1) * L);
        }
        if (q < nv) p0 += load<T>(g + q * L) * load<T>(s + q * L);
        T acc = hsum(p0 + p1);
        for (i64 i = nv * L; i < N; ++i) acc += g[i] * s[i];
        gv[k] = acc;
      }
    }
  }
}

// Below this much work a pass runs on one thread (see PARALLEL_MIN in _cpu_ext.py).
i64 parallel_min = PARALLEL_MIN_VALUE;

inline bool go_parallel(i64 work) { return work >= parallel_min; }

template <typename T>
void forward(i64 N, i64 n_in, i64 n_out, const T* x, const i64* crow, const i64* cols, const T* vals,
             const T* bias, T* xT, T* y) {
  const i64 K = crow[n_out];
#pragma omp parallel if (go_parallel(K * N + N * (n_in + n_out)))
  {
    transpose<T>(x, xT, N, n_in);  // implicit barrier
    spmm_t<T, false>(N, n_out, crow, cols, nullptr, vals, xT, bias, y);
  }
}

template <typename T>
void backward(i64 N, i64 n_in, i64 n_out, const T* gy, const T* xT, const i64* crow, const i64* cols,
              const i64* t_perm, const i64* t_rows, const i64* ccol, const T* vals, T* gx, T* gv, T* gb) {
  const i64 K = crow[n_out];
  // scratch for gyT: kept per thread between calls (no page faults), up to 16 MiB
  static thread_local std::vector<T> keep;
  std::vector<T> once;
  const size_t need = size_t(std::max<i64>(N * n_out, 1));
  std::vector<T>& scratch = need * sizeof(T) <= (size_t(16) << 20) ? keep : once;
  if (scratch.size() < need) scratch.resize(need);
  T* gyT = scratch.data();
#pragma omp parallel if (go_parallel(2 * K * N + N * (n_in + n_out)))
  {
    transpose<T>(gy, gyT, N, n_out);  // implicit barrier
    if (gv || gb) sddmm_t<T>(N, n_out, crow, cols, gyT, xT, gv, gb);
    if (gx) spmm_t<T, true>(N, n_in, ccol, t_rows, t_perm, vals, gyT, nullptr, gx);
  }
}

}  // namespace

extern "C" {
int bs_version() { return SOURCE_VERSION_VALUE; }
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
}
""".replace("SOURCE_VERSION_VALUE", str(SOURCE_VERSION)).replace("PARALLEL_MIN_VALUE", str(PARALLEL_MIN))

_I64 = ctypes.c_int64
_PTR = ctypes.c_void_p
_FWD_ARGS = [_I64, _I64, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR]
_BWD_ARGS = [_I64, _I64, _I64, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR, _PTR]

_lock = threading.Lock()
_state: dict[str, object] = {}  # "lib" -> CpuKernels | None once tried, "error" -> str


class CpuKernels:
    """The loaded shared object, with typed entry points per dtype."""

    def __init__(self, lib: ctypes.CDLL, path: Path) -> None:
        self.lib = lib
        self.path = path
        self.forward = {}
        self.backward = {}
        for suffix, dtype in (("f32", torch.float32), ("f64", torch.float64)):
            fwd = getattr(lib, f"bs_forward_{suffix}")
            fwd.argtypes, fwd.restype = _FWD_ARGS, None
            bwd = getattr(lib, f"bs_backward_{suffix}")
            bwd.argtypes, bwd.restype = _BWD_ARGS, None
            self.forward[dtype] = fwd
            self.backward[dtype] = bwd
        lib.bs_max_threads.restype = ctypes.c_int
        lib.bs_set_parallel_min.argtypes, lib.bs_set_parallel_min.restype = [_I64], None
        self.openmp = lib.bs_max_threads() > 0
        env = os.environ.get("BRAINSPARSE_KERNEL_PARALLEL_MIN")
        if env:
            try:
                self.set_parallel_min(int(env))
            except ValueError:
                log.debug("ignoring BRAINSPARSE_KERNEL_PARALLEL_MIN=%r (not an integer)", env)

    def set_parallel_min(self, work: int) -> None:
        """Run a pass multi-threaded only from this many multiply-adds (links × samples) on."""
        self.lib.bs_set_parallel_min(max(0, int(work)))


def cache_dir() -> Path:
    """Where compiled kernels are kept."""
    env = os.environ.get("BRAINSPARSE_KERNEL_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "brainsparse" / "kernels"


def _cpu_signature() -> str:
    """Machine + CPU feature flags: a kernel built with -march=native only runs where they match."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    flags = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{platform.system()}-{platform.machine()}-{flags or platform.processor()}"


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _flag_sets() -> list[list[str]]:
    """Compiler flags to try, fastest first."""
    base = ["-O3", "-std=c++14", "-shared", "-fPIC", "-fno-math-errno"]
    return [
        base + ["-march=native", "-fopenmp"],
        base + ["-fopenmp"],
        base + ["-march=native", "-fopenmp-simd"],
        base,
    ]


def _build(cxx: str, flags: list[str], target: Path) -> str | None:
    """Compile the kernel into ``target``; returns why it failed, or ``None`` on success."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="bs-build-", dir=target.parent) as tmp:
            src = Path(tmp) / "bs_kernels.cpp"
            src.write_text(SOURCE, encoding="utf-8")
            tmp_so = Path(tmp) / target.name
            proc = subprocess.run(
                [cxx, *flags, str(src), "-o", str(tmp_so)],
                capture_output=True, text=True, timeout=300, check=False,
            )
            if proc.returncode != 0 or not tmp_so.exists():
                return (proc.stderr or proc.stdout or f"exit status {proc.returncode}").strip()[-500:]
            os.replace(tmp_so, target)  # atomic: concurrent builders all end with a complete file
    except (OSError, subprocess.SubprocessError) as exc:
        return repr(exc)
    log.debug("brainsparse: built %s with %s", target, " ".join(flags))
    return None


def _self_test(kernels: CpuKernels) -> bool:
    """Compare with a dense computation on a tiny layer (guards against a miscompiled build).

    :func:`load` may first be called anywhere — under autocast, in inference mode — so the
    reference is computed in float64 with autocast and autograd off.
    """
    with torch.no_grad(), torch.autocast("cpu", enabled=False):
        return _self_test_checks(kernels)


def _self_test_checks(kernels: CpuKernels) -> bool:
    from .structure import LinkStructure

    gen = torch.Generator().manual_seed(0)
    for dtype in (torch.float32, torch.float64):
        mask = torch.rand(37, 21, generator=gen) < 0.3
        s = LinkStructure.from_mask(mask)
        v = torch.randn(s.nnz, generator=gen, dtype=dtype)
        x = torch.randn(45, 21, generator=gen, dtype=dtype)
        b = torch.randn(37, generator=gen, dtype=dtype)
        gy = torch.randn(45, 37, generator=gen, dtype=dtype)
        xT = torch.empty(21, 45, dtype=dtype)
        y = torch.empty(45, 37, dtype=dtype)
        gx = torch.empty(45, 21, dtype=dtype)
        gv = torch.empty(s.nnz, dtype=dtype)
        gb = torch.empty(37, dtype=dtype)
        kernels.forward[dtype](45, 21, 37, x.data_ptr(), s.crow.data_ptr(), s.cols.data_ptr(),
                               v.data_ptr(), b.data_ptr(), xT.data_ptr(), y.data_ptr())
        kernels.backward[dtype](45, 21, 37, gy.data_ptr(), xT.data_ptr(), s.crow.data_ptr(),
                                s.cols.data_ptr(), s.t_perm.data_ptr(), s.t_rows.data_ptr(),
                                s.ccol.data_ptr(), v.data_ptr(), gx.data_ptr(), gv.data_ptr(), gb.data_ptr())
        x, v, b, gy = (t.double() for t in (x, v, b, gy))
        w = s.to_dense(v)
        tol = 1e-4 if dtype == torch.float32 else 1e-10
        checks = (
            (y.double(), x @ w.T + b),
            (gx.double(), gy @ w),
            (gv.double(), s.gather(gy.T @ x)),
            (gb.double(), gy.sum(0)),
        )
        for name, (got, expected) in zip(("y", "grad_x", "grad_values", "grad_bias"), checks):
            if not torch.allclose(got, expected, rtol=tol, atol=tol):
                log.debug("brainsparse kernel self-test: %s %s differs by %s", dtype, name,
                          (got - expected).abs().max().item())
                return False
    return True


def load() -> CpuKernels | None:
    """The compiled kernels, building them on first use; ``None`` when unavailable."""
    if "lib" in _state:
        return _state["lib"]  # type: ignore[return-value]
    with _lock:
        if "lib" not in _state:
            try:
                _state["lib"] = _load_or_build()
            except Exception as exc:  # noqa: BLE001 - a kernel problem must never break the library
                log.debug("brainsparse C++ kernels unavailable: %s", exc)
                _state["error"] = repr(exc)
                _state["lib"] = None
    return _state["lib"]  # type: ignore[return-value]


def _load_or_build() -> CpuKernels | None:
    if sys.platform.startswith("win"):
        _state["error"] = "the C++ kernel is not built on Windows"
        return None
    cxx = _compiler()
    if cxx is None:
        _state["error"] = "no C++ compiler found (set CXX)"
        return None
    directory = cache_dir()
    # a compiler that cannot build the source is remembered (per source, compiler and machine)
    # so that every new process does not retry; delete the marker file to try again
    failed = directory / f"failed_{_key(cxx, [])}.txt"
    if failed.exists():
        _state["error"] = f"an earlier build failed ({failed}); delete it to retry"
        return None
    reasons: list[str] = []
    targets = [(flags, directory / f"bs_kernels_{_key(cxx, flags)}.so") for flags in _flag_sets()]
    for _, target in targets:  # first whatever an earlier process built, fastest flags first
        if target.exists():
            kernels = _try_load(target, reasons)
            if kernels is not None:
                return kernels
    for flags, target in targets:
        problem = _build(cxx, flags, target)
        if problem:
            reasons.append(f"{' '.join(flags)}: {problem}")
            continue
        kernels = _try_load(target, reasons)
        if kernels is not None:
            return kernels
    _state["error"] = "the C++ kernel failed to build or load: " + " | ".join(reasons)[-2000:]
    log.debug("brainsparse: %s", _state["error"])
    if len(reasons) == len(targets) and all(r.startswith("-") for r in reasons):
        # every flag set failed to compile: the compiler cannot build it, remember that
        try:
            directory.mkdir(parents=True, exist_ok=True)
            failed.write_text("\n".join(reasons), encoding="utf-8")
        except OSError:
            pass
    return None


def _try_load(target: Path, reasons: list[str]) -> CpuKernels | None:
    try:
        kernels = CpuKernels(ctypes.CDLL(str(target)), target)
    except (OSError, AttributeError) as exc:
        reasons.append(f"{target} failed to load: {exc}")
        return None
    if _self_test(kernels):
        return kernels
    reasons.append(f"{target} failed its self-test")
    return None


def _key(cxx: str, flags: list[str]) -> str:
    text = "\n".join([SOURCE, cxx, " ".join(flags), _cpu_signature()])
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def error() -> str | None:
    """Why the kernels are unavailable, after :func:`load` returned ``None``."""
    return _state.get("error")  # type: ignore[return-value]
