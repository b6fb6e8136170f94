// QWeight <-> GPTQ (AutoGPTQ v1) tensors, and dequantisation (quant/pack.h).
//
// Every input is validated serially before any parallel loop runs, so the loops never throw.
#include "quant/pack.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"

namespace dsk::quant {
namespace {

constexpr int64_t kGrain = 1 << 14;     // codes per parallel_for chunk
constexpr float kHalfMax = 65504.0f;    // the largest finite float16

// ---------------------------------------------------------------------------------------------
// Validation helpers. `layout` is "QWeight" or "GPTQ", so a message says which side is wrong.

std::string shape_str(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

const char* dtype_str(at::ScalarType t) {
  switch (t) {
    case at::kByte: return "uint8";
    case at::kInt: return "int32";
    case at::kLong: return "int64";
    case at::kFloat: return "float32";
    case at::kHalf: return "float16";
    case at::kBFloat16: return "bfloat16";
    case at::kDouble: return "float64";
    default: return c10::toString(t);
  }
}

int64_t packed_words(int64_t count, int bits) { return (count * bits + 31) / 32; }
int64_t expected_groups(int64_t K, int64_t group_size) { return group_size > 0 ? (K + group_size - 1) / group_size : 1; }

void check_bits(const char* layout, int bits) {
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8) fail("{}: bits = {}, expected 2, 3, 4 or 8", layout, bits);
}

void check_group_size(const char* layout, int64_t group_size) {
  if (group_size < -1) {
    fail("{}: group_size = {}, expected > 0 (group-wise), 0 (per-channel) or -1 (per-tensor)", layout, group_size);
  }
}

// A CPU, contiguous view or copy of t after checking that it exists, its dtype and its shape;
// `why` explains the expected shape.
at::Tensor checked(const at::Tensor& t, const char* layout, const char* name, at::ScalarType dtype,
                   std::vector<int64_t> shape, const std::string& why = "") {
  if (!t.defined()) fail("{} tensor '{}' is missing", layout, name);
  if (t.scalar_type() != dtype) {
    fail("{} tensor '{}' has dtype {}, expected {}", layout, name, dtype_str(t.scalar_type()), dtype_str(dtype));
  }
  if (t.sizes() != at::IntArrayRef(shape)) {
    fail("{} tensor '{}' has shape {}, expected {}{}", layout, name, shape_str(t.sizes()), shape_str(shape), why);
  }
  return t.to(at::kCPU).contiguous();
}

// Every value of the int tensor t (row-major [rows, cols]) in [0, hi]; names the first one outside.
template <typename T>
void check_range(const at::Tensor& t, const char* layout, const char* name, int64_t hi, const std::string& what) {
  const T* p = t.data_ptr<T>();
  const int64_t cols = t.dim() == 2 ? t.size(1) : t.numel();
  for (int64_t i = 0; i < t.numel(); ++i) {
    const int64_t v = p[i];
    if (v < 0 || v > hi) {
      const std::string at_ = t.dim() == 2 ? fmt::format("[{}, {}]", i / cols, i % cols) : fmt::format("[{}]", i);
      fail("{} tensor '{}' has {} {} at {}, outside [0, {}]", layout, name, what, v, at_, hi);
    }
  }
}

// scales [N, G] float32: all finite, and for a per-tensor scheme (G = 1) the same in every row.
void check_scales(const at::Tensor& scales, const char* layout, bool per_tensor) {
  const float* s = scales.data_ptr<float>();
  const int64_t N = scales.size(0), G = scales.size(1);
  for (int64_t i = 0; i < N * G; ++i) {
    if (!std::isfinite(s[i])) {
      fail("{} tensor 'scales' has the non-finite value {} for output row {}, group {}", layout, s[i], i / G, i % G);
    }
  }
  if (!per_tensor) return;
  for (int64_t n = 1; n < N; ++n) {
    if (s[n] != s[0]) {
      fail("{} tensor 'scales' differs between output rows (row {}: {}, row 0: {}) but group_size -1 (per-tensor) "
           "shares one scale",
           layout, n, s[n], s[0]);
    }
  }
}

}  // namespace

QWeight validated(const QWeight& w) {
  const char* L = "QWeight";
  check_bits(L, w.bits);
  check_group_size(L, w.group_size);
  if (!w.q.defined()) fail("{} tensor 'q' is missing", L);
  if (w.q.dim() != 2 || w.q.size(0) < 1 || w.q.size(1) < 1) {
    fail("{} tensor 'q' has shape {}, expected [out_features, in_features], both >= 1", L, shape_str(w.q.sizes()));
  }
  const int64_t N = w.q.size(0), K = w.q.size(1), G = expected_groups(K, w.group_size);
  const std::string why = w.group_size > 0
                              ? fmt::format(" (G = ceil(K / group_size) = ceil({} / {}))", K, w.group_size)
                              : fmt::format(" (one group for group_size {})", w.group_size);
  QWeight c;
  c.bits = w.bits;
  c.group_size = w.group_size;
  c.q = checked(w.q, L, "q", at::kByte, {N, K});
  c.scales = checked(w.scales, L, "scales", at::kFloat, {N, G}, why);
  c.zeros = checked(w.zeros, L, "zeros", at::kInt, {N, G}, why);
  c.g_idx = checked(w.g_idx, L, "g_idx", at::kInt, {K}, " (one group per input column)");
  const int64_t maxq = (int64_t{1} << w.bits) - 1;
  const std::string bits = fmt::format("{}-bit", w.bits);
  if (w.bits < 8) check_range<uint8_t>(c.q, L, "q", maxq, bits + " code");
  check_range<int32_t>(c.zeros, L, "zeros", maxq, bits + " zero point");
  check_range<int32_t>(c.g_idx, L, "g_idx", G - 1, "group");
  check_scales(c.scales, L, w.group_size == -1);
  return c;
}

namespace {

// ---------------------------------------------------------------------------------------------
// The bit stream (see pack.h): element e at stream bits [e * bits, (e + 1) * bits), stream bit s
// in bit s % 32 of word s / 32. Word i of a stream lives at words[i * stride].

template <typename Code>
void pack_stream(int64_t count, int bits, Code code, uint32_t* words, int64_t stride) {
  const int64_t n_words = packed_words(count, bits);
  for (int64_t i = 0; i < n_words; ++i) words[i * stride] = 0;  // padding bits stay 0
  for (int64_t e = 0; e < count; ++e) {
    const int64_t bit = e * bits;
    const int64_t i = bit / 32;
    const int off = static_cast<int>(bit % 32);
    const uint32_t v = code(e);
    words[i * stride] |= v << off;
    // Only 3-bit elements straddle two words (AutoGPTQ's elements 10 and 21 of each 32).
    if (off + bits > 32) words[(i + 1) * stride] |= v >> (32 - off);
  }
}

template <typename Store>
void unpack_stream(int64_t count, int bits, const uint32_t* words, int64_t stride, Store store) {
  const uint32_t mask = (uint32_t{1} << bits) - 1;
  for (int64_t e = 0; e < count; ++e) {
    const int64_t bit = e * bits;
    const int64_t i = bit / 32;
    const int off = static_cast<int>(bit % 32);
    uint32_t v = words[i * stride] >> off;
    if (off + bits > 32) v |= words[(i + 1) * stride] << (32 - off);
    store(e, v & mask);
  }
}

// int32 and uint32 may alias; the packing arithmetic is unsigned.
uint32_t* words_of(at::Tensor& t) { return reinterpret_cast<uint32_t*>(t.data_ptr<int32_t>()); }
const uint32_t* words_of(const at::Tensor& t) { return reinterpret_cast<const uint32_t*>(t.data_ptr<int32_t>()); }

}  // namespace

// ---------------------------------------------------------------------------------------------

at::Tensor dequantize(const QWeight& w) {
  const QWeight c = validated(w);
  const int64_t N = c.out_features(), K = c.in_features(), G = c.groups();
  at::Tensor out = at::empty({N, K}, at::kFloat);  // [N, K]
  const uint8_t* q = c.q.data_ptr<uint8_t>();
  const float* s = c.scales.data_ptr<float>();
  const int32_t* z = c.zeros.data_ptr<int32_t>();
  const int32_t* gi = c.g_idx.data_ptr<int32_t>();
  float* o = out.data_ptr<float>();
  at::parallel_for(0, N, std::max<int64_t>(1, kGrain / K), [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t k = 0; k < K; ++k) {
        const int64_t g = n * G + gi[k];
        o[n * K + k] = static_cast<float>(int32_t{q[n * K + k]} - z[g]) * s[g];
      }
    }
  });
  return out;
}

GptqTensors pack_gptq(const QWeight& w) {
  const QWeight c = validated(w);
  const int64_t N = c.out_features(), K = c.in_features(), G = c.groups();
  const int bits = c.bits;
  const uint32_t mask = (uint32_t{1} << bits) - 1;
  GptqTensors t;

  // qweight [ceil(K * bits / 32), N]: column n is the bit stream of row n of q.
  t.qweight = at::empty({packed_words(K, bits), N}, at::kInt);
  {
    const uint8_t* q = c.q.data_ptr<uint8_t>();
    uint32_t* qw = words_of(t.qweight);
    at::parallel_for(0, N, std::max<int64_t>(1, kGrain / K), [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        pack_stream(K, bits, [&](int64_t k) { return uint32_t{q[n * K + k]}; }, qw + n, N);
      }
    });
  }

  // qzeros [G, ceil(N * bits / 32)]: row g is the bit stream of (zero - 1) & mask over n.
  const int64_t zw = packed_words(N, bits);
  t.qzeros = at::empty({G, zw}, at::kInt);
  {
    const int32_t* z = c.zeros.data_ptr<int32_t>();
    uint32_t* qz = words_of(t.qzeros);
    for (int64_t g = 0; g < G; ++g) {
      pack_stream(N, bits, [&](int64_t n) { return static_cast<uint32_t>(z[n * G + g] - 1) & mask; }, qz + g * zw, 1);
    }
    for (int64_t i = 0; i < N * G; ++i) t.zero_wraps += z[i] == 0;
  }

  // scales [G, N] float16. Out-of-range values would become inf, which no reader can recover.
  const float* s = c.scales.data_ptr<float>();
  for (int64_t i = 0; i < N * G; ++i) {
    if (std::abs(s[i]) > kHalfMax) {
      fail("QWeight tensor 'scales' has the value {} for output row {}, group {}, beyond the float16 range "
           "(magnitude <= {}) of the GPTQ layout",
           s[i], i / G, i % G, kHalfMax);
    }
  }
  t.scales = c.scales.t().contiguous().to(at::kHalf);
  t.g_idx = c.g_idx.clone();
  return t;
}

QWeight unpack_gptq(const GptqTensors& t, int bits, int64_t in_features, int64_t out_features, int64_t group_size) {
  const char* L = "GPTQ";
  check_bits(L, bits);
  check_group_size(L, group_size);
  if (in_features < 1 || out_features < 1) {
    fail("{}: layer shape in_features = {}, out_features = {}, expected both >= 1", L, in_features, out_features);
  }
  const int64_t K = in_features, N = out_features, G = expected_groups(K, group_size);
  const int64_t kw = packed_words(K, bits), zw = packed_words(N, bits);
  const std::string why_g = group_size > 0
                                ? fmt::format(" (G = ceil(K / group_size) = ceil({} / {}), N = {})", K, group_size, N)
                                : fmt::format(" (one group for group_size {}, N = {})", group_size, N);

  const at::Tensor qweight = checked(t.qweight, L, "qweight", at::kInt, {kw, N},
                                     fmt::format(" (ceil(K * bits / 32) = {} rows for K = {}, bits = {}; N = {} columns)",
                                                 kw, K, bits, N));
  const at::Tensor qzeros = checked(t.qzeros, L, "qzeros", at::kInt, {G, zw},
                                    fmt::format("{}; ceil(N * bits / 32) = {} columns", why_g, zw));
  const at::Tensor scales = checked(t.scales, L, "scales", at::kHalf, {G, N}, why_g);
  at::Tensor g_idx;
  if (t.g_idx.defined()) {
    g_idx = checked(t.g_idx, L, "g_idx", at::kInt, {K}, " (one group per input column)").clone();
    check_range<int32_t>(g_idx, L, "g_idx", G - 1, "group");
  } else {
    g_idx = at::empty({K}, at::kInt);
    int32_t* gi = g_idx.data_ptr<int32_t>();
    for (int64_t k = 0; k < K; ++k) gi[k] = static_cast<int32_t>(group_size > 0 ? k / group_size : 0);
  }

  QWeight w;
  w.bits = bits;
  w.group_size = group_size;
  w.scales = scales.to(at::kFloat).t().contiguous();  // [N, G]
  check_scales(w.scales, L, group_size == -1);
  w.g_idx = g_idx;

  // q [N, K]: row n is the bit stream in column n of qweight; padding bits past K are not read.
  w.q = at::empty({N, K}, at::kByte);
  {
    uint8_t* q = w.q.data_ptr<uint8_t>();
    const uint32_t* qw = words_of(qweight);
    at::parallel_for(0, N, std::max<int64_t>(1, kGrain / K), [&](int64_t n0, int64_t n1) {
      for (int64_t n = n0; n < n1; ++n) {
        unpack_stream(K, bits, qw + n, N, [&](int64_t k, uint32_t v) { q[n * K + k] = static_cast<uint8_t>(v); });
      }
    });
  }

  // zeros [N, G]: (stored + 1) & mask inverts pack's (zero - 1) & mask for every zero point.
  const uint32_t mask = (uint32_t{1} << bits) - 1;
  w.zeros = at::empty({N, G}, at::kInt);
  {
    int32_t* z = w.zeros.data_ptr<int32_t>();
    const uint32_t* qz = words_of(qzeros);
    for (int64_t g = 0; g < G; ++g) {
      unpack_stream(N, bits, qz + g * zw, 1,
                    [&](int64_t n, uint32_t v) { z[n * G + g] = static_cast<int32_t>((v + 1) & mask); });
    }
  }
  return w;
}

}  // namespace dsk::quant
