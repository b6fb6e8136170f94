// Weight-only quantized matmul kernels (kernels/qmatmul.h). Portable loops, with AVX2+FMA
// versions of the two inner loops picked at run time.
#include "kernels/qmatmul.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "kernels/cpu/loops.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define DSK_QMM_AVX2 1
#endif

namespace dsk::kernels {
namespace {

int64_t groups_of(const QMatrix& w) { return w.scales.size(1); }
int64_t group_len(const QMatrix& w, int64_t K) { return w.group_size > 0 ? w.group_size : K; }

// codes -> float, n values
void codes_to_float(const uint8_t* c, float* out, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<float>(c[i]);
}

float dot(const float* a, const float* b, int64_t n) {
  float s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

#ifdef DSK_QMM_AVX2
__attribute__((target("avx2,fma"))) void codes_to_float_avx2(const uint8_t* c, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(c + i));
    _mm256_storeu_ps(out + i, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)));
  }
  for (; i < n; ++i) out[i] = static_cast<float>(c[i]);
}

__attribute__((target("avx2,fma"))) float dot_avx2(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  const __m256 acc = _mm256_add_ps(acc0, acc1);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  float r = _mm_cvtss_f32(s);
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

// sum over groups of scale_g * (sum_k code_k x_k - zero_g * sum_k x_k), one horizontal sum per
// row: each group's products accumulate in a vector that is scaled into the running total.
__attribute__((target("avx2,fma"))) float grouped_dot_avx2(const float* row, const float* x, const float* s,
                                                           const int32_t* z, const float* xs, int64_t K, int64_t gl,
                                                           int64_t G) {
  __m256 total = _mm256_setzero_ps();
  float scalar = 0, corr = 0;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t k0 = g * gl, k1 = std::min(K, k0 + gl);
    __m256 acc = _mm256_setzero_ps();
    int64_t k = k0;
    for (; k + 8 <= k1; k += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(row + k), _mm256_loadu_ps(x + k), acc);
    float tail = 0;
    for (; k < k1; ++k) tail += row[k] * x[k];
    total = _mm256_fmadd_ps(_mm256_set1_ps(s[g]), acc, total);
    scalar += s[g] * tail;
    corr += s[g] * static_cast<float>(z[g]) * xs[g];
  }
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(total), _mm256_extractf128_ps(total, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
  return _mm_cvtss_f32(h) + scalar - corr;
}
#endif

void to_float(const uint8_t* c, float* out, int64_t n) {
#ifdef DSK_QMM_AVX2
  if (cpu::has_avx2_fma()) return codes_to_float_avx2(c, out, n);
#endif
  codes_to_float(c, out, n);
}

float dot_any(const float* a, const float* b, int64_t n) {
#ifdef DSK_QMM_AVX2
  if (cpu::has_avx2_fma()) return dot_avx2(a, b, n);
#endif
  return dot(a, b, n);
}

}  // namespace

at::Tensor dequantize(const QMatrix& w) {
  const int64_t N = w.codes.size(0), K = w.codes.size(1), G = groups_of(w), gl = group_len(w, K);
  at::Tensor out = at::empty({N, K}, at::kFloat);
  const uint8_t* c = w.codes.data_ptr<uint8_t>();
  const float* s = w.scales.data_ptr<float>();
  const int32_t* z = w.zeros.data_ptr<int32_t>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, N, std::max<int64_t>(1, 16384 / std::max<int64_t>(K, 1)), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      float* row = o + n * K;
      to_float(c + n * K, row, K);
      for (int64_t g = 0; g < G; ++g) {
        const int64_t k0 = g * gl, k1 = std::min(K, k0 + gl);
        const float sc = s[n * G + g], zf = static_cast<float>(z[n * G + g]);
        for (int64_t k = k0; k < k1; ++k) row[k] = (row[k] - zf) * sc;
      }
    }
  });
  return out;
}

at::Tensor qgemm_small(const at::Tensor& x_in, const QMatrix& w) {
  const int64_t N = w.codes.size(0), K = w.codes.size(1), G = groups_of(w), gl = group_len(w, K);
  at::Tensor x = x_in.contiguous();
  const int64_t M = x.size(0);
  TORCH_CHECK(x.size(1) == K && x.scalar_type() == at::kFloat, "qgemm_small: x must be float32 [M, ", K, "]");
  // group sums of x: the zero points' contribution, sum_k zero * scale * x[k]
  at::Tensor xs = at::empty({M, G}, at::kFloat);
  const float* xp = x.data_ptr<float>();
  float* xsp = xs.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m)
    for (int64_t g = 0; g < G; ++g) {
      const int64_t k0 = g * gl, k1 = std::min(K, k0 + gl);
      float t = 0;
      for (int64_t k = k0; k < k1; ++k) t += xp[m * K + k];
      xsp[m * G + g] = t;
    }
  at::Tensor y = at::empty({M, N}, at::kFloat);
  const uint8_t* c = w.codes.data_ptr<uint8_t>();
  const float* s = w.scales.data_ptr<float>();
  const int32_t* z = w.zeros.data_ptr<int32_t>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, 16, [&](int64_t n0, int64_t n1) {
    std::vector<float> row(static_cast<size_t>(K));
    for (int64_t n = n0; n < n1; ++n) {
      to_float(c + n * K, row.data(), K);  // each weight row read once, for all M rows of x
#ifdef DSK_QMM_AVX2
      if (cpu::has_avx2_fma()) {
        for (int64_t m = 0; m < M; ++m)
          yp[m * N + n] = grouped_dot_avx2(row.data(), xp + m * K, s + n * G, z + n * G, xsp + m * G, K, gl, G);
        continue;
      }
#endif
      for (int64_t m = 0; m < M; ++m) {
        float acc = 0;
        for (int64_t g = 0; g < G; ++g) {
          const int64_t k0 = g * gl, k1 = std::min(K, k0 + gl);
          const float d = dot_any(row.data() + k0, xp + m * K + k0, k1 - k0);
          acc += s[n * G + g] * (d - static_cast<float>(z[n * G + g]) * xsp[m * G + g]);
        }
        yp[m * N + n] = acc;
      }
    }
  });
  return y;
}

}  // namespace dsk::kernels
