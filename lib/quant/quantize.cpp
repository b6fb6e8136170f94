// RTN and GPTQ weight quantization (quant/quantize.h).
#include "quant/quantize.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace dsk::quant {
namespace {

using at::indexing::Slice;

constexpr float kMinScale = 5.9604645e-08f;  // the smallest positive float16 (2^-24)

// The smallest float16 value >= scale (positive scales): rounding to nearest could shrink the
// grid below [min, max] and clamp the extreme weights by more than half a step.
at::Tensor float16_ceil(const at::Tensor& scale) {
  at::Tensor h = scale.clamp_min(kMinScale).to(at::kHalf);
  at::Tensor below = h.to(at::kFloat) < scale;
  h.view(at::kShort).add_(below.to(at::kShort));  // positive halves: bits + 1 is the next value up
  return h.to(at::kFloat);
}

// Per-row parameters of the values w [N, m]: scale [N, 1] (float16-exact) and zero [N, 1]
// (float, integral). per_tensor: one scale for all rows.
void find_params(const at::Tensor& w, const Scheme& s, bool per_tensor, at::Tensor& scale, at::Tensor& zero) {
  const int64_t N = w.size(0);
  const double levels = std::ldexp(1.0, s.bits) - 1;  // 2^b - 1
  if (s.symmetric) {
    at::Tensor amax = per_tensor ? w.abs().max().expand({N, 1}).clone() : std::get<0>(w.abs().max(1, true));
    scale = amax / (std::ldexp(1.0, s.bits - 1) - 1);
    zero = at::full({N, 1}, std::ldexp(1.0, s.bits - 1), w.options());
  } else {
    at::Tensor lo = per_tensor ? w.min().expand({N, 1}).clone() : std::get<0>(w.min(1, true));
    at::Tensor hi = per_tensor ? w.max().expand({N, 1}).clone() : std::get<0>(w.max(1, true));
    lo = lo.clamp_max(0), hi = hi.clamp_min(0);
    scale = float16_ceil((hi - lo) / levels);
    zero = (-lo / scale).round().clamp(0, levels);
    return;
  }
  scale = float16_ceil(scale);
}

at::Tensor codes_of(const at::Tensor& w, const at::Tensor& scale, const at::Tensor& zero, int bits) {
  return (w / scale).round().add_(zero).clamp_(0, std::ldexp(1.0, bits) - 1);
}

QWeight make_qweight(const Scheme& s, int64_t N, int64_t K) {
  QWeight q;
  q.bits = s.bits;
  q.group_size = s.group_size;
  const int64_t G = num_groups(K, s.group_size);
  q.scales = at::empty({N, G}, at::kFloat);
  q.zeros = at::empty({N, G}, at::kInt);
  q.g_idx = group_index(K, s.group_size);
  return q;
}

}  // namespace

std::string describe(const Scheme& s) {
  std::string g = s.group_size > 0 ? fmt::format("g{}", s.group_size) : s.group_size == 0 ? "per-channel" : "per-tensor";
  return fmt::format("int{} {} {}", s.bits, g, s.symmetric ? "sym" : "asym");
}

void check_scheme(const Scheme& s) {
  if (s.bits != 2 && s.bits != 3 && s.bits != 4 && s.bits != 8)
    fail_usage_hint(fmt::format("quant.bits: {} is not supported", s.bits), "use quant.bits 8, 4, 3 or 2");
  if (s.group_size < -1)
    fail_usage_hint(fmt::format("quant.group_size: {} is not supported", s.group_size),
                    "use a positive group size (e.g. 32, 64, 128), 0 for per-channel or -1 for per-tensor scales");
  if (s.group_size > 0 && (s.group_size < 8 || (s.group_size & (s.group_size - 1)) != 0))
    fail_usage_hint(fmt::format("quant.group_size: {} is not supported", s.group_size),
                    "use a power of two of at least 8 (32, 64 and 128 are the usual ones), 0 for per-channel or -1 "
                    "for per-tensor scales");
}

int64_t num_groups(int64_t in_features, int64_t group_size) {
  return group_size > 0 ? (in_features + group_size - 1) / group_size : 1;
}

at::Tensor group_index(int64_t in_features, int64_t group_size) {
  if (group_size <= 0) return at::zeros({in_features}, at::kInt);
  return at::arange(in_features, at::kLong).div(group_size, "floor").to(at::kInt);
}

QWeight quantize_rtn(const at::Tensor& weight, const Scheme& s) {
  at::NoGradGuard no_grad;
  at::Tensor W = weight.detach().to(at::kCPU, at::kFloat).contiguous();
  const int64_t N = W.size(0), K = W.size(1);
  QWeight q = make_qweight(s, N, K);
  at::Tensor codes = at::empty({N, K}, at::kFloat);
  const int64_t G = q.groups();
  for (int64_t g = 0; g < G; ++g) {
    const int64_t k0 = s.group_size > 0 ? g * s.group_size : 0;
    const int64_t kn = s.group_size > 0 ? std::min(s.group_size, K - k0) : K;
    at::Tensor w = W.narrow(1, k0, kn);
    at::Tensor scale, zero;
    find_params(w, s, s.group_size < 0, scale, zero);
    codes.narrow(1, k0, kn).copy_(codes_of(w, scale, zero, s.bits));
    q.scales.narrow(1, g, 1).copy_(scale);
    q.zeros.narrow(1, g, 1).copy_(zero);
  }
  q.q = codes.to(at::kByte);
  return q;
}

QWeight quantize_gptq(const at::Tensor& weight, const at::Tensor& hessian, const Scheme& s, const GptqOptions& o) {
  at::NoGradGuard no_grad;
  at::Tensor W = weight.detach().to(at::kCPU, at::kFloat).clone();
  const int64_t N = W.size(0), K = W.size(1);
  DSK_CHECK(hessian.dim() == 2 && hessian.size(0) == K && hessian.size(1) == K, "GPTQ: H is {} for a weight {}",
            fmt::join(hessian.sizes(), "x"), fmt::join(W.sizes(), "x"));
  at::Tensor H = hessian.detach().to(at::kCPU, at::kDouble).clone();

  // Inputs that are always zero carry no information: fix their weights to 0 (as GPTQ does).
  at::Tensor dead = H.diagonal() == 0;
  H.diagonal().masked_fill_(dead, 1.0);
  W.index_put_({Slice(), dead}, 0.0);

  at::Tensor perm = o.act_order ? at::argsort(H.diagonal(), 0, /*descending=*/true) : at::arange(K, at::kLong);
  W = W.index_select(1, perm).contiguous();
  H = H.index_select(0, perm).index_select(1, perm);
  H.diagonal().add_(o.damp * H.diagonal().mean().item<double>());

  // The upper Cholesky factor of H^-1: row i holds the update direction for column i.
  auto [L, info] = at::linalg_cholesky_ex(H);
  if (info.item<int>() != 0)
    fail_usage_hint("GPTQ: the calibration Hessian is not positive definite after damping",
                    "raise quant.damp (e.g. 0.1) or use more calibration samples (quant.calib_samples)");
  at::Tensor Hinv = at::linalg_cholesky(at::cholesky_inverse(L), /*upper=*/true).to(at::kFloat);

  QWeight q = make_qweight(s, N, K);
  at::Tensor codes = at::empty({N, K}, at::kFloat);  // in permuted column order
  at::Tensor scale, zero;
  const int64_t gs = s.group_size;
  if (gs <= 0) find_params(W, s, gs < 0, scale, zero);
  at::Tensor g_perm = at::zeros({K}, at::kInt);  // group of permuted column j
  auto g_of = g_perm.accessor<int32_t, 1>();
  int64_t block = std::max<int64_t>(o.block_size, 1);
  if (gs > 0) block = std::max(gs, block / gs * gs);  // groups never straddle a block

  for (int64_t i1 = 0; i1 < K; i1 += block) {
    const int64_t cnt = std::min(block, K - i1), i2 = i1 + cnt;
    at::Tensor W1 = W.narrow(1, i1, cnt).clone();
    at::Tensor Err1 = at::zeros({N, cnt}, at::kFloat);
    at::Tensor Hinv1 = Hinv.narrow(0, i1, cnt).narrow(1, i1, cnt);
    auto hinv1 = Hinv1.accessor<float, 2>();
    for (int64_t i = 0; i < cnt; ++i) {
      const int64_t j = i1 + i;
      if (gs > 0 && j % gs == 0) {  // a new group: parameters from its current (updated) columns
        find_params(W1.narrow(1, i, std::min(gs, cnt - i)), s, false, scale, zero);
        q.scales.narrow(1, j / gs, 1).copy_(scale);
        q.zeros.narrow(1, j / gs, 1).copy_(zero);
      }
      if (gs > 0) g_of[j] = static_cast<int32_t>(j / gs);
      at::Tensor w = W1.narrow(1, i, 1);  // [N, 1]
      at::Tensor c = codes_of(w, scale, zero, s.bits);
      codes.narrow(1, j, 1).copy_(c);
      at::Tensor err = (w - (c - zero) * scale) / hinv1[i][i];
      W1.narrow(1, i, cnt - i).sub_(err * Hinv1.narrow(0, i, 1).narrow(1, i, cnt - i));
      Err1.narrow(1, i, 1).copy_(err);
    }
    if (i2 < K) W.narrow(1, i2, K - i2).sub_(Err1.mm(Hinv.narrow(0, i1, cnt).narrow(1, i2, K - i2)));
  }
  if (gs <= 0) {
    q.scales.copy_(scale);
    q.zeros.copy_(zero);
  }
  // Back to the original column order; g_idx maps each original column to its group.
  at::Tensor out = at::empty({N, K}, at::kFloat);
  out.index_copy_(1, perm, codes);
  q.q = out.to(at::kByte);
  if (gs > 0) q.g_idx = at::empty({K}, at::kInt).index_copy_(0, perm, g_perm);
  return q;
}

double weight_error(const at::Tensor& weight, const QWeight& q) {
  at::NoGradGuard no_grad;
  at::Tensor W = weight.detach().to(at::kCPU, at::kDouble);
  const double n = W.norm().item<double>();
  return n > 0 ? (W - dequantize(q).to(at::kDouble)).norm().item<double>() / n : 0.0;
}

double output_error(const at::Tensor& weight, const QWeight& q, const at::Tensor& hessian) {
  at::NoGradGuard no_grad;
  at::Tensor W = weight.detach().to(at::kCPU, at::kDouble);
  at::Tensor H = hessian.to(at::kCPU, at::kDouble);
  at::Tensor D = W - dequantize(q).to(at::kDouble);
  const double base = (W.mm(H) * W).sum().item<double>();
  const double err = (D.mm(H) * D).sum().item<double>();
  return base > 0 ? std::sqrt(std::max(err, 0.0) / base) : 0.0;
}

int64_t stored_bytes(const QWeight& q) {
  const int64_t N = q.out_features(), K = q.in_features(), G = q.groups();
  const int64_t qweight = (K * q.bits + 31) / 32 * N * 4;
  const int64_t qzeros = G * ((N * q.bits + 31) / 32) * 4;
  return qweight + qzeros + G * N * 2 + K * 4;
}

}  // namespace dsk::quant
