"""Fused CPU kernels for the fast training cast (``qfx.quant._FixedSTEFast``).

The pure-torch fast cast is about nine element-wise passes forward and six backward;
on the small tensors of training steps their per-op dispatch and memory traffic
dominate. Here one loop does the forward (values plus an ``inside`` byte mask for the
backward) and one the backward (``grad_x`` and the binary-point gradient's dot product).

Build
    A plain C++ shared library (no PyTorch headers, no ninja) compiled on first use
    with ``$QFX_CXX`` or g++ (about 1-2 s; a cached load takes milliseconds) and called
    through ctypes on the tensors' memory (single-threaded). It is cached under torch's extension build root
    (``$TORCH_EXTENSIONS_DIR``, else ``torch.utils.cpp_extension.get_default_build_root()``,
    ``~/.cache/torch_extensions``), in ``qfx_fused_cast/``, keyed by a hash of the
    source, flags and compiler. Without a compiler (or with ``QFX_NO_CPP=1``)
    :func:`kernels` returns None and qfx keeps the pure-torch path (one warning when
    a build fails; none for ``QFX_NO_CPP``).

Exactness
    Under ``_fast_plan`` (float32 input, codes of at most 22 bits, ``0 <= F <= 100``,
    AP_SAT or AP_SAT_SYM) the scaled value ``s = x * 2**F`` is exact in float32 (or
    +-inf beyond every code). The kernel clamps ``s`` to ``[lo - 1, hi + 1]`` first,
    which changes no result (everything beyond rounds outside the range and
    saturates) and leaves ``|s| <= 2**22 + 1``; there truncation through int32, the
    floor, the tie point ``floor(s) + 0.5`` and ``(|s| + 2**23) - 2**23`` (round half
    to even) are all exact in float32, so every mode rounds the exact value of ``s``.
    Signed zeros follow the torch ops (floor, trunc and round keep the sign; ``f + 0``
    gives +0), and NaN propagates (its mask byte is 1: NaN counts as inside, as the
    torch path's codes with NaN as 0 do). The float64 kernel (float64 inputs under
    the same plan, e.g. BatchNorm's scale and shift, otherwise cast by ``_FixedSTE``)
    is the same algorithm in double, with ``grad_x = grad * inside`` as ``_FixedSTE``.
    ``tests/test_fused_cast.py`` compares the fused and torch paths bit for bit.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import threading
import warnings
from pathlib import Path

import torch

from .types import Rounding

__all__ = ["kernels", "available", "ROUNDING_CODES"]

#: The rounding modes' numbers in the C++ source.
ROUNDING_CODES = {
    Rounding.AP_RND: 0,
    Rounding.AP_RND_ZERO: 1,
    Rounding.AP_RND_MIN_INF: 2,
    Rounding.AP_RND_INF: 3,
    Rounding.AP_RND_CONV: 4,
    Rounding.AP_TRN: 5,
    Rounding.AP_TRN_ZERO: 6,
}

_SOURCE = r"""
// qfx fused fast cast (see qfx/_fused.py). Plain C++ with GCC/Clang vector extensions
// (QFX_LANES lanes: 8 with -mavx2, else 4 for SSE2 / NEON), no PyTorch headers.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace {

#ifndef QFX_LANES
#define QFX_LANES 4
#endif
constexpr int L = QFX_LANES;
typedef uint8_t vb __attribute__((vector_size(L)));
typedef int8_t vs8 __attribute__((vector_size(L)));
typedef int32_t vi32 __attribute__((vector_size(4 * L)));

template <typename T> struct Tr;
template <> struct Tr<float> {
  typedef float V __attribute__((vector_size(4 * L)));
  typedef int32_t M __attribute__((vector_size(4 * L)));
  static constexpr float kBig = 8388608.0f;  // 2^23
  static constexpr int32_t kSign = INT32_MIN;
};
template <> struct Tr<double> {
  typedef double V __attribute__((vector_size(8 * L)));
  typedef int64_t M __attribute__((vector_size(8 * L)));
  static constexpr double kBig = 4503599627370496.0;  // 2^52
  static constexpr int64_t kSign = INT64_MIN;
};

enum Mode { RND = 0, RND_ZERO = 1, RND_MIN_INF = 2, RND_INF = 3, RND_CONV = 4, TRN = 5, TRN_ZERO = 6 };

#define QFX_INLINE __attribute__((always_inline)) inline

template <typename T> QFX_INLINE typename Tr<T>::V splat(T v) { return v - typename Tr<T>::V{}; }  // keeps -0.0
template <typename T> QFX_INLINE typename Tr<T>::V copysign_v(typename Tr<T>::V mag, typename Tr<T>::V sgn) {
  typedef typename Tr<T>::M M;
  const M sign = M{} | Tr<T>::kSign;
  return (typename Tr<T>::V)(((M)mag & ~sign) | ((M)sgn & sign));
}
template <typename T> QFX_INLINE typename Tr<T>::V sel(typename Tr<T>::M m, typename Tr<T>::V a, typename Tr<T>::V b) {
  return m ? a : b;
}

// The low bytes of the lanes of a -1/0 mask, as 0/1 bytes (one shuffle where the compiler
// has __builtin_shufflevector, instead of a narrowing conversion it may do lane by lane).
template <typename Mk> QFX_INLINE vb mask_bytes(Mk in) {
#if defined(__has_builtin) && defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#if __has_builtin(__builtin_shufflevector)
  typedef uint8_t vbw __attribute__((vector_size(sizeof(Mk))));
  const vbw b = (vbw)(in & 1);
  constexpr int S = sizeof(Mk) / L;  // bytes per lane
#if QFX_LANES == 8
  return __builtin_shufflevector(b, b, 0, S, 2 * S, 3 * S, 4 * S, 5 * S, 6 * S, 7 * S);
#elif QFX_LANES == 4
  return __builtin_shufflevector(b, b, 0, S, 2 * S, 3 * S);
#endif
#endif
#endif
  return __builtin_convertvector(in & 1, vb);
}

// One block of L elements: q (values) and inside (nonzero where the rounded code is inside
// the range, or NaN). lo, hi: integer codes with |.| <= 2^22, so lo - 1, hi + 0.5, ... are exact.
template <typename T, int M>
QFX_INLINE void block(typename Tr<T>::V x, typename Tr<T>::V& q, typename Tr<T>::M& inside, T scale, T lo, T hi,
                      T inv) {
  typedef typename Tr<T>::V V;
  typedef typename Tr<T>::M Mk;
  const V vlo = splat<T>(lo), vhi = splat<T>(hi), zero = splat<T>(0), one = splat<T>(1);
  const V s = x * splat<T>(scale);                     // exact, or +-inf beyond every code
  const Mk nan = s != s;
  const V c = sel<T>(s < splat<T>(lo - 1), splat<T>(lo - 1), sel<T>(s > splat<T>(hi + 1), splat<T>(hi + 1), s));
  const V z = sel<T>(nan, zero, c);                    // |z| <= 2^22 + 1: every step below is exact
  const V t = copysign_v<T>(__builtin_convertvector(__builtin_convertvector(z, vi32), V), z);  // trunc
  V r;
  if constexpr (M == TRN_ZERO) {
    r = t;
  } else if constexpr (M == RND_CONV) {
    const V big = splat<T>(Tr<T>::kBig);               // (|z| + 2^p) - 2^p: half to even
    V a = copysign_v<T>(z, zero);
    a = a + big;
    a = a - big;
    r = copysign_v<T>(a, z);
  } else {
    const V f = sel<T>(t > z, t - one, t);             // floor (keeps -0.0)
    if constexpr (M == TRN) {
      r = f;
    } else {
      const V mid = f + splat<T>(0.5);                 // the exact tie point
      Mk up;
      if constexpr (M == RND) up = z >= mid;
      else if constexpr (M == RND_ZERO) up = (z > mid) | ((z == mid) & (z < zero));
      else if constexpr (M == RND_MIN_INF) up = z > mid;
      else up = (z > mid) | ((z == mid) & (z > zero));
      r = f + sel<T>(up, one, zero);                   // f + 0 turns -0.0 into +0.0, as torch
    }
  }
  r = sel<T>(nan, s, r);
  const V v = sel<T>(r < vlo, vlo, sel<T>(r > vhi, vhi, r));  // saturate (keeps -0.0 and NaN)
  q = v * splat<T>(inv);
  inside = nan | ((r > splat<T>(lo - T(0.5))) & (r < splat<T>(hi + T(0.5))));
}

// The value a block casts: x itself, or BatchNorm's x * s + b (float32, no contraction; the
// caller checks it is exact).
struct Identity {
  template <typename V> QFX_INLINE V operator()(V x) const { return x; }  // keeps -0.0
};
struct MulAdd {
  Tr<float>::V s, b;
  QFX_INLINE Tr<float>::V operator()(Tr<float>::V x) const { return x * s + b; }
};

template <typename T, int M, typename Pre>
QFX_INLINE void fwd(const T* __restrict x, T* __restrict q, uint8_t* __restrict inside, int64_t n, T scale, T lo,
                    T hi, T inv, Pre pre) {
  typedef typename Tr<T>::V V;
  typedef typename Tr<T>::M Mk;
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    V xv, qv;
    Mk in;
    std::memcpy(&xv, x + i, sizeof xv);
    block<T, M>(pre(xv), qv, in, scale, lo, hi, inv);
    std::memcpy(q + i, &qv, sizeof qv);
    const vb bytes = mask_bytes(in);
    std::memcpy(inside + i, &bytes, sizeof bytes);
  }
  if (i < n) {  // the tail, padded with zeros
    const int64_t m = n - i;
    T xs[L] = {}, qs[L];
    std::memcpy(xs, x + i, m * sizeof(T));
    V xv, qv;
    Mk in;
    std::memcpy(&xv, xs, sizeof xv);
    block<T, M>(pre(xv), qv, in, scale, lo, hi, inv);
    std::memcpy(qs, &qv, sizeof qv);
    for (int64_t j = 0; j < m; ++j) {
      q[i + j] = qs[j];
      inside[i + j] = static_cast<uint8_t>(in[j] & 1);
    }
  }
}

template <int M> using ModeC = std::integral_constant<int, M>;

// fn(ModeC<M>{}) for the rounding mode's number: 0, or 1 for an unknown mode.
template <typename Fn>
int with_mode(int mode, Fn fn) {
  switch (mode) {
    case RND: fn(ModeC<RND>{}); return 0;
    case RND_ZERO: fn(ModeC<RND_ZERO>{}); return 0;
    case RND_MIN_INF: fn(ModeC<RND_MIN_INF>{}); return 0;
    case RND_INF: fn(ModeC<RND_INF>{}); return 0;
    case RND_CONV: fn(ModeC<RND_CONV>{}); return 0;
    case TRN: fn(ModeC<TRN>{}); return 0;
    case TRN_ZERO: fn(ModeC<TRN_ZERO>{}); return 0;
  }
  return 1;
}

template <typename T>
int fwd_mode(const T* x, T* q, uint8_t* inside, int64_t n, T scale, T lo, T hi, T inv, int mode) {
  return with_mode(mode, [&](auto m) { fwd<T, decltype(m)::value>(x, q, inside, n, scale, lo, hi, inv, Identity{}); });
}

// grad_x (GX): g where inside, else 0 (MUL_MASK: g * (inside ? 1 : 0), which keeps NaN and
// the sign of zero, as torch's grad * inside). dot (DOT): sum g * ((inside ? x : 0) - q), the
// difference rounded to T as the torch path does, products and sums in float64 (L partial
// sums, then a fixed-order total: deterministic for a given n). One pass.
template <typename T, bool MUL_MASK, bool GX, bool DOT>
void bwd(const T* __restrict g, const T* __restrict x, const T* __restrict q, const uint8_t* __restrict inside,
         T* __restrict gx, int64_t n, double* dot) {
  typedef typename Tr<T>::V V;
  typedef typename Tr<T>::M Mk;
  const V zero = splat<T>(0), one = splat<T>(1);
  double acc[L] = {};
  int64_t i = 0;
  for (; i + L <= n; i += L) {
    V gv;
    vb mb;
    std::memcpy(&gv, g + i, sizeof gv);
    std::memcpy(&mb, inside + i, sizeof mb);
    const Mk m = __builtin_convertvector((vs8)mb != vs8{}, Mk);  // -1 where inside
    if constexpr (GX) {
      const V out = MUL_MASK ? gv * sel<T>(m, one, zero) : sel<T>(m, gv, zero);
      std::memcpy(gx + i, &out, sizeof out);
    }
    if constexpr (DOT) {
      V xv, qv;
      std::memcpy(&xv, x + i, sizeof xv);
      std::memcpy(&qv, q + i, sizeof qv);
      const V d = sel<T>(m, xv, zero) - qv;
      for (int j = 0; j < L; ++j) acc[j] += static_cast<double>(gv[j]) * static_cast<double>(d[j]);
    }
  }
  double tail = 0.0;
  for (; i < n; ++i) {
    const T gi = g[i];
    if constexpr (GX) gx[i] = MUL_MASK ? gi * (inside[i] ? T(1) : T(0)) : (inside[i] ? gi : T(0));
    if constexpr (DOT) {
      const T d = (inside[i] ? x[i] : T(0)) - q[i];
      tail += static_cast<double>(gi) * static_cast<double>(d);
    }
  }
  if constexpr (DOT) {
    double total = 0.0;
    for (int j = 0; j < L; ++j) total += acc[j];
    *dot = total + tail;
  }
}

template <typename T, bool MUL_MASK>
void bwd_dispatch(const T* g, const T* x, const T* q, const uint8_t* inside, T* gx, int64_t n, double* dot) {
  if (gx != nullptr && dot != nullptr) bwd<T, MUL_MASK, true, true>(g, x, q, inside, gx, n, dot);
  else if (gx != nullptr) bwd<T, MUL_MASK, true, false>(g, x, q, inside, gx, n, dot);
  else if (dot != nullptr) bwd<T, MUL_MASK, false, true>(g, x, q, inside, gx, n, dot);
}

// BatchNorm2d in training (qfx.nn.norm): float32 NCHW planes, p = H * W elements each.
// Per-channel sums of x and x * x in float64: exact (hence order-free) for fixed-point x
// whose sums fit 53 bits, which the caller checks.
void bn_sums(const float* __restrict x, int64_t n, int64_t c, int64_t p, double* s1, double* s2) {
  for (int64_t ch = 0; ch < c; ++ch) s1[ch] = s2[ch] = 0.0;
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t ch = 0; ch < c; ++ch) {
      const float* r = x + (b * c + ch) * p;
      double a[4] = {}, q2[4] = {};
      int64_t i = 0;
      for (; i + 4 <= p; i += 4) {
        for (int j = 0; j < 4; ++j) {
          const double v = r[i + j];
          a[j] += v;
          q2[j] += v * v;
        }
      }
      for (; i < p; ++i) {
        const double v = r[i];
        a[0] += v;
        q2[0] += v * v;
      }
      s1[ch] += (a[0] + a[1]) + (a[2] + a[3]);
      s2[ch] += (q2[0] + q2[1]) + (q2[2] + q2[3]);
    }
  }
}

// d/dx of (mean, var) of each channel: gx = a[ch] + b[ch] * (x - mean[ch]), in float64, rounded once.
void bn_stats_bwd(const float* __restrict x, int64_t n, int64_t c, int64_t p, const double* a, const double* bb,
                  const double* mean, float* __restrict gx) {
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t ch = 0; ch < c; ++ch) {
      const int64_t o = (b * c + ch) * p;
      const double ac = a[ch], bc = bb[ch], mc = mean[ch];
      for (int64_t i = 0; i < p; ++i) gx[o + i] = static_cast<float>(ac + bc * (static_cast<double>(x[o + i]) - mc));
    }
  }
}

// y = cast(x * s[ch] + b[ch]): the multiply-add in float32 (exact: the caller checks that
// float32 holds every x * s + b), then the fused cast, plane by plane.
int bn_affine_fwd(const float* x, int64_t n, int64_t c, int64_t p, const float* s, const float* sh, float* q,
                  uint8_t* inside, float scale, float lo, float hi, float inv, int mode) {
  return with_mode(mode, [&](auto m) {
    for (int64_t b = 0; b < n; ++b) {
      for (int64_t ch = 0; ch < c; ++ch) {
        const int64_t o = (b * c + ch) * p;
        fwd<float, decltype(m)::value>(x + o, q + o, inside + o, p, scale, lo, hi, inv,
                                       MulAdd{splat<float>(s[ch]), splat<float>(sh[ch])});
      }
    }
  });
}

// The backward of bn_affine_fwd: g' = g where inside (else an exact 0, as the float32 fast
// cast); gx = g' * s[ch] (float32, as torch's addcmul backward); ds[ch] = sum g' * x and
// db[ch] = sum g' in float64; dot = sum g * ((inside ? y : 0) - q), y recomputed, for the
// output's binary-point gradient (as bwd). Any of gx, ds/db, dot may be null; inside null: all inside.
void bn_affine_bwd(const float* __restrict g, const float* __restrict x, int64_t n, int64_t c, int64_t p,
                   const float* s, const float* sh, const float* __restrict q, const uint8_t* __restrict inside,
                   float* __restrict gx, double* ds, double* db, double* dot) {
  double dt = 0.0;
  if (ds != nullptr)
    for (int64_t ch = 0; ch < c; ++ch) ds[ch] = db[ch] = 0.0;
  for (int64_t b = 0; b < n; ++b) {
    for (int64_t ch = 0; ch < c; ++ch) {
      const int64_t o = (b * c + ch) * p;
      const float sc = s[ch], bc = sh[ch];
      double as = 0.0, ab = 0.0, ad = 0.0;
      for (int64_t i = 0; i < p; ++i) {
        const float gi = g[o + i];
        const bool in = inside == nullptr || inside[o + i] != 0;
        const float gs = in ? gi : 0.0f;
        if (gx != nullptr) gx[o + i] = gs * sc;
        if (ds != nullptr) {
          as += static_cast<double>(gs) * static_cast<double>(x[o + i]);
          ab += static_cast<double>(gs);
        }
        if (dot != nullptr) {
          const float y = x[o + i] * sc + bc;
          const float d = (in ? y : 0.0f) - q[o + i];
          ad += static_cast<double>(gi) * static_cast<double>(d);
        }
      }
      if (ds != nullptr) {
        ds[ch] += as;
        db[ch] += ab;
      }
      dt += ad;
    }
  }
  if (dot != nullptr) *dot = dt;
}

}  // namespace

extern "C" {

int qfx_cast_fwd_f32(const float* x, float* q, uint8_t* inside, int64_t n, double scale, double lo, double hi,
                     double inv, int mode) {
  return fwd_mode<float>(x, q, inside, n, float(scale), float(lo), float(hi), float(inv), mode);
}

int qfx_cast_fwd_f64(const double* x, double* q, uint8_t* inside, int64_t n, double scale, double lo, double hi,
                     double inv, int mode) {
  return fwd_mode<double>(x, q, inside, n, scale, lo, hi, inv, mode);
}

void qfx_cast_bwd_f32(const float* g, const float* x, const float* q, const uint8_t* inside, float* gx, int64_t n,
                      double* dot) {
  bwd_dispatch<float, false>(g, x, q, inside, gx, n, dot);
}

void qfx_cast_bwd_f64(const double* g, const double* x, const double* q, const uint8_t* inside, double* gx,
                      int64_t n, double* dot) {
  bwd_dispatch<double, true>(g, x, q, inside, gx, n, dot);
}

void qfx_bn_sums_f32(const float* x, int64_t n, int64_t c, int64_t p, double* s1, double* s2) {
  bn_sums(x, n, c, p, s1, s2);
}

void qfx_bn_stats_bwd_f32(const float* x, int64_t n, int64_t c, int64_t p, const double* a, const double* b,
                          const double* mean, float* gx) {
  bn_stats_bwd(x, n, c, p, a, b, mean, gx);
}

int qfx_bn_affine_fwd_f32(const float* x, int64_t n, int64_t c, int64_t p, const float* s, const float* sh,
                          float* q, uint8_t* inside, double scale, double lo, double hi, double inv, int mode) {
  return bn_affine_fwd(x, n, c, p, s, sh, q, inside, float(scale), float(lo), float(hi), float(inv), mode);
}

void qfx_bn_affine_bwd_f32(const float* g, const float* x, int64_t n, int64_t c, int64_t p, const float* s,
                           const float* sh, const float* q, const uint8_t* inside, float* gx, double* ds, double* db,
                           double* dot) {
  bn_affine_bwd(g, x, n, c, p, s, sh, q, inside, gx, ds, db, dot);
}

}  // extern "C"
"""

# No -ffast-math (the rounding relies on IEEE float semantics), no FMA contraction.
# -fno-trapping-math only lets the compiler evaluate both sides of the selects (it
# ignores floating-point exception flags, which nothing reads); values are unchanged.
# AVX2 (8 lanes) where torch itself runs its AVX2 kernels; the flags are part of the
# cache key, so a cache folder shared between machines keeps one build per kind.
_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fno-trapping-math", "-ffp-contract=off", "-Wno-psabi")


def _isa_flags() -> tuple[str, ...]:
    import platform

    if platform.machine().lower() in ("x86_64", "amd64"):
        try:
            cap = torch.backends.cpu.get_cpu_capability()
        except Exception:
            cap = "DEFAULT"
        if cap in ("AVX2", "AVX512"):
            return ("-mavx2", "-DQFX_LANES=8")
    return ("-DQFX_LANES=4",)


class _Kernels:
    """ctypes entry points: ``forward`` and ``backward`` for float32 and float64 tensors."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        P, I64, D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
        self._fwd, self._bwd = {}, {}
        for dtype, suffix in ((torch.float32, "f32"), (torch.float64, "f64")):
            f = getattr(lib, f"qfx_cast_fwd_{suffix}")
            f.restype = ctypes.c_int
            f.argtypes = [P, P, P, I64, D, D, D, D, ctypes.c_int]
            b = getattr(lib, f"qfx_cast_bwd_{suffix}")
            b.restype = None
            b.argtypes = [P, P, P, P, P, I64, P]
            self._fwd[dtype], self._bwd[dtype] = f, b
        self._bn_sums = lib.qfx_bn_sums_f32
        self._bn_sums.restype = None
        self._bn_sums.argtypes = [P, I64, I64, I64, P, P]
        self._bn_stats_bwd = lib.qfx_bn_stats_bwd_f32
        self._bn_stats_bwd.restype = None
        self._bn_stats_bwd.argtypes = [P, I64, I64, I64, P, P, P, P]
        self._bn_affine_fwd = lib.qfx_bn_affine_fwd_f32
        self._bn_affine_fwd.restype = ctypes.c_int
        self._bn_affine_fwd.argtypes = [P, I64, I64, I64, P, P, P, P, D, D, D, D, ctypes.c_int]
        self._bn_affine_bwd = lib.qfx_bn_affine_bwd_f32
        self._bn_affine_bwd.restype = None
        self._bn_affine_bwd.argtypes = [P, P, I64, I64, I64, P, P, P, P, P, P, P, P]
        self._lib = lib  # keep loaded

    def forward(self, x: torch.Tensor, plan, mode: int) -> "tuple[torch.Tensor, torch.Tensor]":
        """``(q, inside)`` of contiguous float32/float64 CPU ``x`` under ``plan = (scale, lo, hi, inv)``."""
        scale, lo, hi, inv = plan
        q = torch.empty(x.shape, dtype=x.dtype)
        inside = torch.empty(x.shape, dtype=torch.uint8)
        if self._fwd[x.dtype](x.data_ptr(), q.data_ptr(), inside.data_ptr(), x.numel(), scale, lo, hi, inv, mode):
            raise ValueError(f"qfx fused cast: unknown rounding code {mode}")
        return q, inside

    def backward(self, g, x, q, inside, want_x: bool, want_dot: bool):
        """``(grad_x or None, dot or None)``; all tensors contiguous CPU, ``g``, ``x``, ``q`` of
        one dtype, ``inside`` uint8, the same numel. float32: ``grad_x`` selects (an exact 0
        outside); float64: ``g * inside`` (as ``_FixedSTE``)."""
        gx = torch.empty(g.shape, dtype=g.dtype) if want_x else None
        dot = ctypes.c_double(0.0) if want_dot else None
        self._bwd[g.dtype](
            g.data_ptr(), x.data_ptr(), q.data_ptr(), inside.data_ptr(),
            gx.data_ptr() if gx is not None else None, g.numel(),
            ctypes.byref(dot) if dot is not None else None,
        )
        return gx, (dot.value if dot is not None else None)


    # -- BatchNorm2d in training (qfx.nn.norm); x: contiguous float32 [N, C, H, W] ----------
    def bn_sums(self, x: torch.Tensor) -> "tuple[list[float], list[float]]":
        """Per-channel ``(sum x, sum x*x)`` in float64 (exact where the caller checked it)."""
        n, c = x.shape[0], x.shape[1]
        s1, s2 = (ctypes.c_double * c)(), (ctypes.c_double * c)()
        self._bn_sums(x.data_ptr(), n, c, x.shape[2] * x.shape[3], s1, s2)
        return list(s1), list(s2)

    def bn_stats_backward(self, x: torch.Tensor, a: "list[float]", b: "list[float]", mean: "list[float]") -> torch.Tensor:
        """``a[c] + b[c] * (x - mean[c])`` per channel, in float64, rounded to float32."""
        c = x.shape[1]
        arr = ctypes.c_double * c
        gx = torch.empty(x.shape, dtype=torch.float32)
        self._bn_stats_bwd(x.data_ptr(), x.shape[0], c, x.shape[2] * x.shape[3], arr(*a), arr(*b), arr(*mean), gx.data_ptr())
        return gx

    def bn_affine_forward(self, x: torch.Tensor, s: torch.Tensor, b: torch.Tensor, plan, mode: int):
        """``(q, inside)``: the fast cast of ``x * s[c] + b[c]`` (float32 ``s``, ``b`` of C elements)."""
        scale, lo, hi, inv = plan
        q = torch.empty(x.shape, dtype=torch.float32)
        inside = torch.empty(x.shape, dtype=torch.uint8)
        if self._bn_affine_fwd(x.data_ptr(), x.shape[0], x.shape[1], x.shape[2] * x.shape[3], s.data_ptr(), b.data_ptr(),
                               q.data_ptr(), inside.data_ptr(), scale, lo, hi, inv, mode):
            raise ValueError(f"qfx fused cast: unknown rounding code {mode}")
        return q, inside

    def bn_affine_sums(self, g, x):
        """Per channel ``(sum g*x, sum g)`` as float64 tensors: :meth:`bn_affine_backward`'s scale
        and shift gradients with every element inside (same order, same bits), nothing else
        computed or allocated."""
        c = x.shape[1]
        ds = torch.empty(c, dtype=torch.float64)
        db = torch.empty(c, dtype=torch.float64)
        zeros = torch.zeros(c, dtype=torch.float32)
        self._bn_affine_bwd(g.data_ptr(), x.data_ptr(), x.shape[0], c, x.shape[2] * x.shape[3], zeros.data_ptr(),
                            zeros.data_ptr(), None, None, None, ds.data_ptr(), db.data_ptr(), None)
        return ds, db

    def bn_affine_backward(self, g, x, s, b, q, inside, want_x: bool, want_sb: bool, want_dot: bool):
        """``(grad_x, grad_s, grad_b, dot)`` of :meth:`bn_affine_forward`, None where not wanted."""
        c = x.shape[1]
        gx = torch.empty(x.shape, dtype=torch.float32) if want_x else None
        ds, db = ((ctypes.c_double * c)(), (ctypes.c_double * c)()) if want_sb else (None, None)
        dot = ctypes.c_double(0.0) if want_dot else None
        self._bn_affine_bwd(
            g.data_ptr(), x.data_ptr(), x.shape[0], c, x.shape[2] * x.shape[3], s.data_ptr(), b.data_ptr(), q.data_ptr(),
            inside.data_ptr(), gx.data_ptr() if gx is not None else None, ds, db,
            ctypes.byref(dot) if dot is not None else None,
        )
        return gx, (list(ds) if ds is not None else None), (list(db) if db is not None else None), (
            dot.value if dot is not None else None)


_lock = threading.Lock()
_kernels: "_Kernels | None" = None
_tried = False


def _disabled() -> bool:
    return os.environ.get("QFX_NO_CPP", "0") not in ("", "0")


def build_dir() -> Path:
    """Where the library is cached: torch's extension build folder, ``qfx_fused_cast/``.

    ``$TORCH_EXTENSIONS_DIR`` or ``torch.utils.cpp_extension.get_default_build_root()``
    (computed as torch does, without importing cpp_extension and setuptools).
    """
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if not root:
        try:
            from torch import _appdirs

            root = os.path.realpath(_appdirs.user_cache_dir(appname="torch_extensions"))
        except (ImportError, AttributeError):  # a torch without _appdirs
            from torch.utils.cpp_extension import get_default_build_root

            root = get_default_build_root()
    return Path(root) / "qfx_fused_cast"


def _build() -> _Kernels:
    from . import _toolchain

    cxx = _toolchain.compiler_path()
    # The compiler's identity from its file, not _toolchain.compiler's --version: a cached load stays
    # subprocess-free.
    st = os.stat(os.path.realpath(cxx))
    ident = f"{os.path.realpath(cxx)}|{st.st_size}|{st.st_mtime_ns}"
    flags = (*_FLAGS, *_isa_flags())
    key = hashlib.sha256("\0".join((_SOURCE, " ".join(flags), ident)).encode()).hexdigest()[:16]
    folder = build_dir()
    folder.mkdir(parents=True, exist_ok=True)
    lib = folder / f"qfx_fused_cast_{key}.so"
    if not lib.is_file():
        with _toolchain.locked(folder, f"qfx_fused_cast_{key}"):
            if not lib.is_file():
                src = folder / f"qfx_fused_cast_{key}.cpp"
                src.write_text(_SOURCE)
                tmp = folder / f".qfx_fused_cast_{key}.{os.getpid()}.so"
                proc = subprocess.run(
                    [cxx, *flags, str(src), "-o", str(tmp)], capture_output=True, text=True, check=False
                )
                if proc.returncode != 0:
                    tmp.unlink(missing_ok=True)
                    raise RuntimeError(f"{cxx} failed:\n{proc.stderr.strip()[-2000:]}")
                os.replace(tmp, lib)
    return _Kernels(ctypes.CDLL(str(lib)))


def kernels() -> "_Kernels | None":
    """The fused kernels, built on first use; None when disabled (``QFX_NO_CPP=1``) or when
    the build failed (warned once)."""
    global _kernels, _tried
    if _disabled():
        return None
    if _tried:
        return _kernels
    with _lock:
        if not _tried:
            try:
                _kernels = _build()
            except Exception as exc:  # no compiler, read-only cache, ...: keep the torch path
                warnings.warn(
                    f"qfx: the fused C++ cast kernel is unavailable ({exc}); using the pure-torch "
                    "cast (same results, slower). Set QFX_NO_CPP=1 to silence this.",
                    RuntimeWarning,
                    stacklevel=3,
                )
                _kernels = None
            _tried = True
    return _kernels


def available() -> bool:
    """Whether the fused kernels are in use (building them if needed)."""
    return kernels() is not None
