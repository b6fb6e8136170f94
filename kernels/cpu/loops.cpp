// CPU loops for the fused RMSNorm and SwiGLU (kernels/fused.h).
//
// Every dtype has a portable loop that computes in float (double for double) and rounds once on
// store; float32 also has an AVX2+FMA version chosen at run time (__builtin_cpu_supports). Work is
// split over rows (RMSNorm) or 8-element blocks (SwiGLU) with at::parallel_for, and every number
// is computed by the same instructions wherever its row or block lands, so results do not depend
// on the thread count. RMSNorm's weight gradient sums per-block partials in block order for the
// same reason.
#include "kernels/cpu/loops.h"

#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DSK_KERNELS_AVX2 1
#endif

namespace dsk::kernels::cpu {
namespace {

template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

constexpr int64_t kRowsPerBlock = 32;  // RMSNorm backward: rows per weight-gradient partial

#ifdef DSK_KERNELS_AVX2
#define DSK_AVX2 __attribute__((target("avx2,fma")))

DSK_AVX2 inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// exp(x) for 8 floats: Cody-Waite range reduction x = n ln2 + r, a degree-6 polynomial for e^r
// on |r| <= ln2/2 (max relative error ~2 ulp over the clamped range), times 2^n built in the
// exponent bits. Inputs are clamped to [-87, 87], so the result is finite and normal: exp(-87)
// = 1.6e-38, which is what the sigmoid below needs at its extremes.
DSK_AVX2 inline __m256 exp8(__m256 x) {
  x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)), _mm256_set1_ps(87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

DSK_AVX2 inline __m256 sigmoid8(__m256 g) {
  const __m256 one = _mm256_set1_ps(1.0f);
  return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
}

// ---- RMSNorm, float32 rows

DSK_AVX2 void rms_fwd_rows_avx2(const float* x, const float* w, float* y, float* inv_out, int64_t r0, int64_t r1,
                                int64_t C, float eps) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* xr = x + r * C;
    float* yr = y + r * C;
    __m256 acc = _mm256_setzero_ps();
    int64_t c = 0;
    for (; c + 8 <= C; c += 8) {
      const __m256 v = _mm256_loadu_ps(xr + c);
      acc = _mm256_fmadd_ps(v, v, acc);
    }
    float ss = hsum(acc);
    for (; c < C; ++c) ss += xr[c] * xr[c];
    const float inv = 1.0f / std::sqrt(ss / static_cast<float>(C) + eps);
    inv_out[r] = inv;
    const __m256 vi = _mm256_set1_ps(inv);
    for (c = 0; c + 8 <= C; c += 8)
      _mm256_storeu_ps(yr + c, _mm256_mul_ps(_mm256_loadu_ps(w + c), _mm256_mul_ps(_mm256_loadu_ps(xr + c), vi)));
    for (; c < C; ++c) yr[c] = w[c] * (xr[c] * inv);
  }
}

// dx = inv * (dy * w) - x * inv^3 * sum(dy * w * x) / C;  dw_partial += dy * x * inv.
DSK_AVX2 void rms_bwd_rows_avx2(const float* dy, const float* x, const float* w, const float* inv_rms, float* dx,
                                float* dw_part, int64_t r0, int64_t r1, int64_t C) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* dyr = dy + r * C;
    const float* xr = x + r * C;
    const float inv = inv_rms[r];
    const __m256 vi = _mm256_set1_ps(inv);
    if (dx) {
      __m256 acc = _mm256_setzero_ps();
      int64_t c = 0;
      for (; c + 8 <= C; c += 8)
        acc = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_loadu_ps(dyr + c), _mm256_loadu_ps(w + c)), _mm256_loadu_ps(xr + c), acc);
      float dot = hsum(acc);
      for (; c < C; ++c) dot += dyr[c] * w[c] * xr[c];
      const float k = inv * inv * inv * dot / static_cast<float>(C);
      const __m256 vk = _mm256_set1_ps(k);
      float* dxr = dx + r * C;
      for (c = 0; c + 8 <= C; c += 8) {
        const __m256 a = _mm256_mul_ps(_mm256_loadu_ps(dyr + c), _mm256_loadu_ps(w + c));
        _mm256_storeu_ps(dxr + c, _mm256_sub_ps(_mm256_mul_ps(vi, a), _mm256_mul_ps(vk, _mm256_loadu_ps(xr + c))));
      }
      for (; c < C; ++c) dxr[c] = inv * (dyr[c] * w[c]) - k * xr[c];
    }
    if (dw_part) {
      int64_t c = 0;
      for (; c + 8 <= C; c += 8) {
        const __m256 t = _mm256_mul_ps(_mm256_loadu_ps(dyr + c), _mm256_mul_ps(_mm256_loadu_ps(xr + c), vi));
        _mm256_storeu_ps(dw_part + c, _mm256_add_ps(_mm256_loadu_ps(dw_part + c), t));
      }
      for (; c < C; ++c) dw_part[c] += dyr[c] * (xr[c] * inv);
    }
  }
}

// ---- SwiGLU, float32 in blocks of 8 (a short tail goes through a padded block, so every
// element is computed by the same instructions)

DSK_AVX2 inline void swiglu_fwd8(const float* g, const float* u, float* y) {
  const __m256 vg = _mm256_loadu_ps(g);
  _mm256_storeu_ps(y, _mm256_mul_ps(_mm256_mul_ps(vg, sigmoid8(vg)), _mm256_loadu_ps(u)));
}

DSK_AVX2 inline void swiglu_bwd8(const float* dy, const float* g, const float* u, float* dg, float* du) {
  const __m256 vg = _mm256_loadu_ps(g), vdy = _mm256_loadu_ps(dy);
  const __m256 s = sigmoid8(vg);
  if (du) _mm256_storeu_ps(du, _mm256_mul_ps(vdy, _mm256_mul_ps(vg, s)));
  if (dg) {
    const __m256 one = _mm256_set1_ps(1.0f);
    const __m256 ds = _mm256_mul_ps(s, _mm256_fmadd_ps(vg, _mm256_sub_ps(one, s), one));  // d silu / d g
    _mm256_storeu_ps(dg, _mm256_mul_ps(_mm256_mul_ps(vdy, _mm256_loadu_ps(u)), ds));
  }
}

DSK_AVX2 void swiglu_fwd_avx2(const float* g, const float* u, float* y, int64_t b, int64_t e) {
  int64_t i = b;
  for (; i + 8 <= e; i += 8) swiglu_fwd8(g + i, u + i, y + i);
  if (i < e) {
    float pg[8] = {}, pu[8] = {}, py[8];
    std::memcpy(pg, g + i, (e - i) * sizeof(float));
    std::memcpy(pu, u + i, (e - i) * sizeof(float));
    swiglu_fwd8(pg, pu, py);
    std::memcpy(y + i, py, (e - i) * sizeof(float));
  }
}

DSK_AVX2 void swiglu_bwd_avx2(const float* dy, const float* g, const float* u, float* dg, float* du, int64_t b,
                              int64_t e) {
  int64_t i = b;
  for (; i + 8 <= e; i += 8) swiglu_bwd8(dy + i, g + i, u + i, dg ? dg + i : nullptr, du ? du + i : nullptr);
  if (i < e) {
    const size_t bytes = (e - i) * sizeof(float);
    float pdy[8] = {}, pg[8] = {}, pu[8] = {}, pdg[8], pdu[8];
    std::memcpy(pdy, dy + i, bytes);
    std::memcpy(pg, g + i, bytes);
    std::memcpy(pu, u + i, bytes);
    swiglu_bwd8(pdy, pg, pu, dg ? pdg : nullptr, du ? pdu : nullptr);
    if (dg) std::memcpy(dg + i, pdg, bytes);
    if (du) std::memcpy(du + i, pdu, bytes);
  }
}
#endif  // DSK_KERNELS_AVX2

// ---- portable loops, any dtype

template <typename T>
void rms_fwd_rows(const T* x, const T* w, T* y, acc_t<T>* inv_out, int64_t r0, int64_t r1, int64_t C, double eps) {
  using A = acc_t<T>;
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * C;
    A ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += static_cast<A>(xr[c]) * static_cast<A>(xr[c]);
    const A inv = A(1) / std::sqrt(ss / static_cast<A>(C) + static_cast<A>(eps));
    inv_out[r] = inv;
    for (int64_t c = 0; c < C; ++c) y[r * C + c] = static_cast<T>(static_cast<A>(w[c]) * (static_cast<A>(xr[c]) * inv));
  }
}

template <typename T>
void rms_bwd_rows(const T* dy, const T* x, const T* w, const acc_t<T>* inv_rms, T* dx, acc_t<T>* dw_part, int64_t r0,
                  int64_t r1, int64_t C) {
  using A = acc_t<T>;
  for (int64_t r = r0; r < r1; ++r) {
    const T* dyr = dy + r * C;
    const T* xr = x + r * C;
    const A inv = inv_rms[r];
    if (dx) {
      A dot = 0;
      for (int64_t c = 0; c < C; ++c) dot += static_cast<A>(dyr[c]) * static_cast<A>(w[c]) * static_cast<A>(xr[c]);
      const A k = inv * inv * inv * dot / static_cast<A>(C);
      for (int64_t c = 0; c < C; ++c)
        dx[r * C + c] =
            static_cast<T>(inv * (static_cast<A>(dyr[c]) * static_cast<A>(w[c])) - k * static_cast<A>(xr[c]));
    }
    if (dw_part)
      for (int64_t c = 0; c < C; ++c) dw_part[c] += static_cast<A>(dyr[c]) * (static_cast<A>(xr[c]) * inv);
  }
}

template <typename T>
void swiglu_fwd(const T* g, const T* u, T* y, int64_t b, int64_t e) {
  using A = acc_t<T>;
  for (int64_t i = b; i < e; ++i) {
    const A vg = static_cast<A>(g[i]);
    y[i] = static_cast<T>(vg / (A(1) + std::exp(-vg)) * static_cast<A>(u[i]));
  }
}

template <typename T>
void swiglu_bwd(const T* dy, const T* g, const T* u, T* dg, T* du, int64_t b, int64_t e) {
  using A = acc_t<T>;
  for (int64_t i = b; i < e; ++i) {
    const A vg = static_cast<A>(g[i]), vdy = static_cast<A>(dy[i]);
    const A s = A(1) / (A(1) + std::exp(-vg));
    if (du) du[i] = static_cast<T>(vdy * (vg * s));
    if (dg) dg[i] = static_cast<T>(vdy * static_cast<A>(u[i]) * (s * (A(1) + vg * (A(1) - s))));
  }
}

bool use_avx2() {
#ifdef DSK_KERNELS_AVX2
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

// rows per parallel task: about 16K elements each
int64_t row_grain(int64_t C) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1)); }
constexpr int64_t kElemGrain = 16384;  // SwiGLU elements per parallel task

template <typename F>
void dispatch(at::ScalarType t, const F& f) {
  switch (t) {
    case at::kFloat: return f(float{});
    case at::kDouble: return f(double{});
    case at::kBFloat16: return f(c10::BFloat16{});
    case at::kHalf: return f(c10::Half{});
    default: TORCH_CHECK(false, "dsk fused kernels: unsupported dtype ", t);
  }
}

}  // namespace

bool has_avx2_fma() { return use_avx2(); }

std::tuple<at::Tensor, at::Tensor> rms_norm_forward(const at::Tensor& x, const at::Tensor& weight, double eps) {
  const int64_t C = x.size(-1), N = C ? x.numel() / C : 0;
  at::Tensor y = at::empty_like(x);
  at::Tensor inv = at::empty({N}, x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat));
  dispatch(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.data_ptr<T>();
    const T* wp = weight.data_ptr<T>();
    T* yp = y.data_ptr<T>();
    acc_t<T>* ip = inv.data_ptr<acc_t<T>>();
    at::parallel_for(0, N, row_grain(C), [&](int64_t r0, int64_t r1) {
#ifdef DSK_KERNELS_AVX2
      if constexpr (std::is_same_v<T, float>)
        if (use_avx2()) return rms_fwd_rows_avx2(xp, wp, yp, ip, r0, r1, C, static_cast<float>(eps));
#endif
      rms_fwd_rows(xp, wp, yp, ip, r0, r1, C, eps);
    });
  });
  return {y, inv};
}

std::tuple<at::Tensor, at::Tensor> rms_norm_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                                     const at::Tensor& weight, const at::Tensor& inv_rms,
                                                     bool need_x, bool need_weight) {
  const int64_t C = x.size(-1), N = C ? x.numel() / C : 0;
  at::Tensor dx = need_x ? at::empty_like(x) : at::Tensor();
  at::Tensor dw;
  dispatch(x.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const int64_t blocks = (N + kRowsPerBlock - 1) / kRowsPerBlock;
    at::Tensor part = need_weight ? at::zeros({std::max<int64_t>(blocks, 1), C}, inv_rms.options()) : at::Tensor();
    const T* dyp = grad_y.data_ptr<T>();
    const T* xp = x.data_ptr<T>();
    const T* wp = weight.data_ptr<T>();
    const A* ip = inv_rms.data_ptr<A>();
    T* dxp = need_x ? dx.data_ptr<T>() : nullptr;
    A* pp = need_weight ? part.data_ptr<A>() : nullptr;
    at::parallel_for(0, blocks, std::max<int64_t>(1, row_grain(C) / kRowsPerBlock), [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * kRowsPerBlock, r1 = std::min(N, r0 + kRowsPerBlock);
        A* dwp = pp ? pp + b * C : nullptr;
#ifdef DSK_KERNELS_AVX2
        if constexpr (std::is_same_v<T, float>)
          if (use_avx2()) {
            rms_bwd_rows_avx2(dyp, xp, wp, ip, dxp, dwp, r0, r1, C);
            continue;
          }
#endif
        rms_bwd_rows(dyp, xp, wp, ip, dxp, dwp, r0, r1, C);
      }
    });
    if (need_weight) {
      // column sums in block order: the same bits for any thread count
      at::Tensor sum = at::empty({C}, inv_rms.options());
      A* sp = sum.data_ptr<A>();
      at::parallel_for(0, C, 256, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          A s = 0;
          for (int64_t b = 0; b < blocks; ++b) s += pp[b * C + c];
          sp[c] = s;
        }
      });
      dw = sum.to(weight.scalar_type());
    }
  });
  return {dx, dw};
}

at::Tensor swiglu_forward(const at::Tensor& gate, const at::Tensor& up) {
  at::Tensor y = at::empty_like(gate);
  const int64_t n = gate.numel();
  dispatch(gate.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* g = gate.data_ptr<T>();
    const T* u = up.data_ptr<T>();
    T* yp = y.data_ptr<T>();
    at::parallel_for(0, n, kElemGrain, [&](int64_t b, int64_t e) {
#ifdef DSK_KERNELS_AVX2
      if constexpr (std::is_same_v<T, float>)
        if (use_avx2()) return swiglu_fwd_avx2(g, u, yp, b, e);
#endif
      swiglu_fwd(g, u, yp, b, e);
    });
  });
  return y;
}

std::tuple<at::Tensor, at::Tensor> swiglu_backward(const at::Tensor& grad_y, const at::Tensor& gate,
                                                   const at::Tensor& up, bool need_gate, bool need_up) {
  at::Tensor dg = need_gate ? at::empty_like(gate) : at::Tensor();
  at::Tensor du = need_up ? at::empty_like(up) : at::Tensor();
  const int64_t n = gate.numel();
  dispatch(gate.scalar_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* dy = grad_y.data_ptr<T>();
    const T* g = gate.data_ptr<T>();
    const T* u = up.data_ptr<T>();
    T* dgp = need_gate ? dg.data_ptr<T>() : nullptr;
    T* dup = need_up ? du.data_ptr<T>() : nullptr;
    at::parallel_for(0, n, kElemGrain, [&](int64_t b, int64_t e) {
#ifdef DSK_KERNELS_AVX2
      if constexpr (std::is_same_v<T, float>)
        if (use_avx2()) return swiglu_bwd_avx2(dy, g, u, dgp, dup, b, e);
#endif
      swiglu_bwd(dy, g, u, dgp, dup, b, e);
    });
  });
  return {dg, du};
}

}  // namespace dsk::kernels::cpu
