// Unstructured and N:M pruning: magnitude, global magnitude, Wanda, SparseGPT (prune/sparsify.h).
#include "prune/sparsify.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>

#include "core/error.h"

namespace dsk::prune {
namespace {

const char* const kPatternHint = "write N:M with 1 <= N < M (e.g. 2:4 or 4:8), or none for unstructured sparsity";

std::string shape_of(const at::Tensor& t) { return fmt::format("[{}]", fmt::join(t.sizes(), ", ")); }

// The dtype a weight is computed in: float64 stays float64, every other float type -> float32.
at::ScalarType compute_dtype(const at::Tensor& W) { return W.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

// Checks a weight (defined, floating, finite, non-empty; 2-D unless any_shape) and returns it
// detached in its compute dtype (a copy when that converts; callers never write into it).
at::Tensor checked_weight(const at::Tensor& W, const char* what, bool any_shape = false) {
  if (!W.defined()) fail_usage_hint(fmt::format("{}: the weight is undefined", what), "pass a loaded weight tensor");
  if (!any_shape && W.dim() != 2)
    fail_usage_hint(fmt::format("{}: the weight is {}, expected a matrix [out, in]", what, shape_of(W)),
                    "prune the 2-D weights of linear layers only");
  if (!at::isFloatingType(W.scalar_type()))
    fail_usage_hint(fmt::format("{}: the weight has dtype {}, expected a floating type", what, c10::toString(W.scalar_type())),
                    "pass float32, bfloat16, float16 or float64 weights (dequantize quantized ones first)");
  if (W.numel() == 0)
    fail_usage_hint(fmt::format("{}: the weight {} is empty", what, shape_of(W)), "pass a weight with at least one entry");
  at::Tensor w = W.detach().to(compute_dtype(W));
  if (!at::isfinite(w).all().item<bool>())
    fail_usage_hint(fmt::format("{}: the weight {} has non-finite values (inf or nan)", what, shape_of(W)),
                    "check the checkpoint: a diverged run cannot be pruned");
  return w;
}

// Checks H [K, K] (floating, finite) and returns it as a float64 copy on `device`.
at::Tensor checked_hessian(const at::Tensor& H, int64_t K, const char* what, c10::Device device) {
  if (!H.defined() || H.dim() != 2 || H.size(0) != K || H.size(1) != K)
    fail_usage_hint(fmt::format("{}: H is {} for a weight with {} inputs, expected [{}, {}]", what,
                                H.defined() ? shape_of(H) : std::string("undefined"), K, K, K),
                    "H must be sum x x^T over the layer's own calibration inputs");
  if (!at::isFloatingType(H.scalar_type()))
    fail_usage_hint(fmt::format("{}: H has dtype {}, expected a floating type", what, c10::toString(H.scalar_type())),
                    "accumulate H in float64");
  at::Tensor h = H.detach().to(device, at::kDouble, /*non_blocking=*/false, /*copy=*/true);
  if (!at::isfinite(h).all().item<bool>())
    fail_usage_hint(fmt::format("{}: H has non-finite values (inf or nan)", what),
                    "check the calibration data and accumulate H in float64");
  return h;
}

// One "keep" mask per score tensor (scores >= 0, finite, all float32 or all float64): false for
// the k lowest scores over all of them together, ties pruned in order (tensor, flattened index).
// The k-th lowest value is found by a radix select over the scores' bit patterns (monotone for
// non-negative IEEE values), 16 bits at a time with a histogram per digit: nothing is
// concatenated or sorted, and after the first digit only the scores sharing the bits decided so
// far are looked at again.
std::vector<at::Tensor> keep_all_but_lowest(const std::vector<at::Tensor>& scores, int64_t k) {
  std::vector<at::Tensor> keep;
  keep.reserve(scores.size());
  if (k <= 0) {
    for (const auto& s : scores) keep.push_back(at::ones(s.sizes(), s.options().dtype(at::kBool)));
    return keep;
  }
  std::vector<at::Tensor> bits, cand;
  bool wide = false;
  for (const auto& s : scores) {
    at::Tensor c = s.contiguous().view(-1);
    wide = c.scalar_type() == at::kDouble;
    bits.push_back(c.view(wide ? at::kLong : at::kInt));  // no copy
  }
  cand = bits;
  constexpr int64_t kDigits = 65536;
  int64_t below = 0;  // scores known to be lower than the prefix decided so far
  int64_t v = 0;      // the bit pattern of the k-th lowest score, 16 bits at a time from the top
  for (int shift = wide ? 48 : 16; shift >= 0; shift -= 16) {
    std::vector<at::Tensor> digits;
    at::Tensor hist = at::zeros({kDigits}, at::kLong);
    for (const auto& c : cand) {
      digits.push_back(c.__rshift__(shift).bitwise_and_(kDigits - 1));
      if (c.numel() > 0) hist.add_(at::bincount(digits.back(), {}, kDigits).to(at::kCPU, at::kLong));
    }
    const int64_t* h = hist.data_ptr<int64_t>();
    int64_t d = 0;
    while (below + h[d] < k) below += h[d++];  // stops at the latest at the last digit present
    v |= d << shift;
    for (size_t i = 0; i < cand.size(); ++i) cand[i] = cand[i].masked_select(digits[i].eq(d));
  }
  int64_t ties_to_prune = k - below;  // >= 1: some of the scores equal to v
  for (size_t i = 0; i < bits.size(); ++i) {
    at::Tensor m = bits[i].gt(v);  // keeps everything above v; ties decided below
    at::Tensor eq = bits[i].eq(v).nonzero().squeeze(1);
    const int64_t e = eq.size(0);
    const int64_t take = std::min(ties_to_prune, e);
    ties_to_prune -= take;
    if (take < e) m.index_fill_(0, eq.narrow(0, take, e - take), true);
    keep.push_back(m.view(scores[i].sizes()));
  }
  return keep;
}

// Keep mask of a [R, C] score: row r loses its counts[r] lowest scores (ties: lower column first).
at::Tensor keep_all_but_lowest_per_row(const at::Tensor& score, const at::Tensor& counts) {
  const int64_t C = score.size(1);
  at::Tensor order = std::get<1>(at::sort(score, /*stable=*/true, /*dim=*/1, /*descending=*/false));
  at::Tensor pruned_sorted = at::arange(C, counts.options()).unsqueeze(0).lt(counts.unsqueeze(1));
  return at::empty(score.sizes(), score.options().dtype(at::kBool)).scatter_(1, order, pruned_sorted.logical_not());
}

// Keep mask of a [R, C] score (C a multiple of p.m): every group of m consecutive columns of a
// row loses its m - n lowest scores (ties: lower column first).
at::Tensor nm_keep(const at::Tensor& score, const Pattern& p) {
  const int64_t R = score.size(0), C = score.size(1);
  at::Tensor grouped = score.reshape({R, C / p.m, p.m});
  at::Tensor order = std::get<1>(at::sort(grouped, /*stable=*/true, /*dim=*/2, /*descending=*/false));
  at::Tensor keep = at::ones(grouped.sizes(), score.options().dtype(at::kBool));
  keep.scatter_(2, order.narrow(2, 0, p.m - p.n), false);
  return keep.view({R, C});
}

std::string layer_name(const at::Tensor& W) { return fmt::format("a {}x{} weight", W.size(0), W.size(1)); }

}  // namespace

double Pattern::sparsity() const { return active() ? 1.0 - static_cast<double>(n) / static_cast<double>(m) : 0.0; }

std::string describe(const Pattern& p) { return p.active() ? fmt::format("{}:{}", p.n, p.m) : "none"; }

Pattern parse_pattern(const std::string& text) {
  size_t b = 0, e = text.size();
  while (b < e && std::isspace(static_cast<unsigned char>(text[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(text[e - 1]))) --e;
  std::string t = text.substr(b, e - b);
  std::string lower = t;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (t.empty() || lower == "none") return {};

  auto number = [&](const std::string& s, int64_t& out) {
    if (s.empty() || s.size() > 6) return false;  // up to 999999: plenty, and no overflow
    for (char c : s)
      if (!std::isdigit(static_cast<unsigned char>(c))) return false;
    out = std::stoll(s);
    return true;
  };
  const size_t colon = t.find(':');
  Pattern p;
  if (colon == std::string::npos || !number(t.substr(0, colon), p.n) || !number(t.substr(colon + 1), p.m))
    fail_usage_hint(fmt::format("'{}' is not an N:M sparsity pattern", text), kPatternHint);
  if (p.n < 1 || p.n >= p.m)
    fail_usage_hint(fmt::format("N:M sparsity pattern '{}' must keep at least 1 and fewer than M of every M weights", text),
                    kPatternHint);
  return p;
}

void check_sparsity(double s, const std::string& key) {
  if (!(s >= 0.0 && s < 1.0))
    fail_usage_hint(fmt::format("{} {} is outside [0, 1)", key, s),
                    "give the fraction of weights to prune, e.g. 0.5 for half of them");
}

void check_pattern(const Pattern& p, int64_t in_features, const std::string& layer) {
  if (!p.active()) return;
  if (p.n < 1 || p.n >= p.m || p.m < 2)
    fail_usage_hint(fmt::format("{}: N:M pattern {} must keep at least 1 and fewer than M of every M weights", layer,
                                describe(p)),
                    kPatternHint);
  if (in_features % p.m != 0)
    fail_usage_hint(fmt::format("{}: N:M pattern {} needs the input width ({}) to be a multiple of {}", layer,
                                describe(p), in_features, p.m),
                    "use a pattern whose M divides every pruned layer's input width, or unstructured sparsity "
                    "(pattern none)");
}

int64_t prune_count(double s, int64_t count) {
  if (count <= 0) return 0;
  const double k = std::floor(s * static_cast<double>(count) + 1e-9);
  if (!(k > 0)) return 0;  // also NaN
  return std::min(count, static_cast<int64_t>(k));
}

at::Tensor magnitude_mask(const at::Tensor& W, double sparsity, const Pattern& p) {
  at::NoGradGuard no_grad;
  at::Tensor w = checked_weight(W, "magnitude pruning");
  if (p.active()) {
    check_pattern(p, w.size(1), layer_name(w));
    return nm_keep(w.abs(), p);
  }
  check_sparsity(sparsity, "sparsity");
  return keep_all_but_lowest({w.abs()}, prune_count(sparsity, w.numel()))[0];
}

std::vector<at::Tensor> global_magnitude_masks(const std::vector<at::Tensor>& Ws, double sparsity) {
  at::NoGradGuard no_grad;
  check_sparsity(sparsity, "sparsity");
  std::vector<at::Tensor> scores;
  scores.reserve(Ws.size());
  bool any_double = false;
  int64_t total = 0;
  for (const auto& W : Ws) {
    scores.push_back(checked_weight(W, "global magnitude pruning", /*any_shape=*/true).abs());
    any_double = any_double || scores.back().scalar_type() == at::kDouble;
    total += W.numel();
  }
  if (any_double)  // one bit-pattern order for all of them
    for (auto& s : scores) s = s.to(at::kDouble);
  return keep_all_but_lowest(scores, prune_count(sparsity, total));
}

at::Tensor wanda_mask(const at::Tensor& W, const at::Tensor& x_sq, double sparsity, const Pattern& p) {
  at::NoGradGuard no_grad;
  at::Tensor w = checked_weight(W, "Wanda");
  const int64_t N = w.size(0), K = w.size(1);
  if (!x_sq.defined() || x_sq.dim() != 1 || x_sq.size(0) != K)
    fail_usage_hint(fmt::format("Wanda: the input norms are {} for a weight {}, expected [{}]",
                                x_sq.defined() ? shape_of(x_sq) : std::string("undefined"), shape_of(w), K),
                    "x_sq must be the sum of x_j^2 over the layer's own calibration inputs, one per input feature");
  if (!at::isFloatingType(x_sq.scalar_type()))
    fail_usage_hint(fmt::format("Wanda: the input norms have dtype {}, expected a floating type",
                                c10::toString(x_sq.scalar_type())),
                    "accumulate x_sq in float64");
  at::Tensor xs = x_sq.detach().to(w.device(), at::kDouble);
  if (!at::isfinite(xs).all().item<bool>() || xs.lt(0).any().item<bool>())
    fail_usage_hint("Wanda: the input norms have negative or non-finite values",
                    "x_sq must be a sum of squares (accumulate it in float64)");
  at::Tensor score = w.abs().mul_(xs.sqrt().to(w.scalar_type()).unsqueeze(0));
  if (p.active()) {
    check_pattern(p, K, layer_name(w));
    return nm_keep(score, p);
  }
  check_sparsity(sparsity, "sparsity");
  std::vector<int64_t> counts(N);
  for (int64_t r = 0; r < N; ++r) counts[r] = prune_count(sparsity, K * (r + 1)) - prune_count(sparsity, K * r);
  at::Tensor c = at::tensor(counts, at::TensorOptions().dtype(at::kLong)).to(w.device());
  return keep_all_but_lowest_per_row(score, c);
}

Pruned sparsegpt_prune(const at::Tensor& W, const at::Tensor& H, double sparsity, const Pattern& p,
                       const SparseGptOptions& opt) {
  at::NoGradGuard no_grad;
  using at::indexing::Slice;
  at::Tensor w = checked_weight(W, "SparseGPT").clone();
  const int64_t N = w.size(0), K = w.size(1);
  at::Tensor h = checked_hessian(H, K, "SparseGPT", w.device());
  if (p.active())
    check_pattern(p, K, layer_name(w));
  else
    check_sparsity(sparsity, "sparsity");
  if (!(opt.damp >= 0.0) || !std::isfinite(opt.damp))
    fail_usage_hint(fmt::format("SparseGPT: dampening {} is not a non-negative number", opt.damp),
                    "use a small fraction of the mean H diagonal, e.g. 0.01");
  if (opt.block_size < 1)
    fail_usage_hint(fmt::format("SparseGPT: block size {} is not positive", opt.block_size), "use e.g. 128");

  // Dead inputs (always zero on the calibration data): H_jj = 1 keeps the factorization defined
  // and decouples them; their weights are left alone but scored 0 below (pruning them is free).
  at::Tensor dead = h.diagonal().eq(0);
  h.diagonal().masked_fill_(dead, 1.0);
  h.diagonal().add_(opt.damp * h.diagonal().mean().item<double>());

  // U: the upper Cholesky factor of H^-1 (float64); row i holds the update direction for column i.
  auto [L, info] = at::linalg_cholesky_ex(h);
  if (info.item<int>() != 0)
    fail_usage_hint("SparseGPT: the calibration Hessian is not positive definite after damping",
                    "raise the SparseGPT dampening (e.g. 0.1) or use more calibration samples");
  at::Tensor U = at::linalg_cholesky(at::cholesky_inverse(L), /*upper=*/true).to(w.scalar_type());
  at::Tensor d = U.diagonal();
  at::Tensor alive = dead.logical_not().to(w.scalar_type());

  at::Tensor mask = at::empty({N, K}, w.options().dtype(at::kBool));
  int64_t block = opt.block_size;
  if (p.active()) block = std::max(p.m, block / p.m * p.m);  // groups never straddle a block

  for (int64_t c0 = 0; c0 < K; c0 += block) {
    const int64_t cnt = std::min(block, K - c0), c1 = c0 + cnt;
    at::Tensor W1 = w.narrow(1, c0, cnt).clone();
    at::Tensor Err1 = at::zeros({N, cnt}, w.options());
    at::Tensor U1 = U.narrow(0, c0, cnt).narrow(1, c0, cnt);
    at::Tensor d1 = d.narrow(0, c0, cnt);
    at::Tensor alive1 = alive.narrow(0, c0, cnt);
    at::Tensor mask1 = mask.narrow(1, c0, cnt);
    if (!p.active()) {
      // The mask of the whole block from its weights as updated by the earlier blocks.
      at::Tensor score = W1.square().div_(d1.square().unsqueeze(0)).mul_(alive1.unsqueeze(0));
      const int64_t k = prune_count(sparsity, N * c1) - prune_count(sparsity, N * c0);
      mask1.copy_(keep_all_but_lowest({score}, k)[0]);
    }
    for (int64_t i = 0; i < cnt; ++i) {
      if (p.active() && i % p.m == 0) {  // the next group, from its columns as updated so far
        at::Tensor g = W1.narrow(1, i, p.m);
        at::Tensor score = g.square().div_(d1.narrow(0, i, p.m).square().unsqueeze(0)).mul_(alive1.narrow(0, i, p.m).unsqueeze(0));
        mask1.narrow(1, i, p.m).copy_(nm_keep(score, p));
      }
      at::Tensor col = W1.narrow(1, i, 1);                    // [N, 1]
      at::Tensor pruned = mask1.narrow(1, i, 1).logical_not();  // [N, 1]
      // OBS: removing w_i costs w_i^2 / [H^-1]_ii and moves the later weights by -err * U[i, i:].
      at::Tensor err = col.mul(pruned.to(w.scalar_type())).div_(d1.narrow(0, i, 1));
      W1.narrow(1, i, cnt - i).sub_(err.mul(U1.narrow(0, i, 1).narrow(1, i, cnt - i)));
      col.masked_fill_(pruned, 0.0);  // exactly 0 (the update leaves rounding residue)
      Err1.narrow(1, i, 1).copy_(err);
    }
    w.narrow(1, c0, cnt).copy_(W1);
    if (c1 < K) w.narrow(1, c1, K - c1).sub_(Err1.mm(U.narrow(0, c0, cnt).narrow(1, c1, K - c1)));
  }
  w.masked_fill_(mask.logical_not(), 0.0);
  return {w.to(W.scalar_type()), mask};
}

double zero_fraction(const at::Tensor& W) {
  at::NoGradGuard no_grad;
  if (!W.defined() || W.numel() == 0) return 0.0;
  return static_cast<double>(W.eq(0).sum().item<int64_t>()) / static_cast<double>(W.numel());
}

bool follows_pattern(const at::Tensor& W, const Pattern& p) {
  at::NoGradGuard no_grad;
  if (!p.active()) return true;
  if (!W.defined() || W.dim() != 2)
    fail_usage_hint(fmt::format("follows_pattern: the weight is {}, expected a matrix [out, in]",
                                W.defined() ? shape_of(W) : std::string("undefined")),
                    "check N:M patterns on the 2-D weights of linear layers");
  if (W.size(1) % p.m != 0) return false;
  if (W.numel() == 0) return true;
  at::Tensor nonzeros = W.ne(0).reshape({W.size(0), W.size(1) / p.m, p.m}).sum(2);
  return nonzeros.le(p.n).all().item<bool>();
}

double output_error(const at::Tensor& W, const at::Tensor& Wp, const at::Tensor& H) {
  at::NoGradGuard no_grad;
  at::Tensor w = checked_weight(W, "output error").to(at::kDouble);
  if (!Wp.defined() || Wp.sizes() != w.sizes())
    fail_usage_hint(fmt::format("output error: the pruned weight is {} for an original {}",
                                Wp.defined() ? shape_of(Wp) : std::string("undefined"), shape_of(w)),
                    "compare a pruned weight with the weight it came from");
  at::Tensor h = checked_hessian(H, w.size(1), "output error", w.device());
  at::Tensor D = w - Wp.detach().to(w.device(), at::kDouble);
  const double base = w.mm(h).mul_(w).sum().item<double>();
  const double err = D.mm(h).mul_(D).sum().item<double>();
  return base > 0 ? std::max(err, 0.0) / base : 0.0;
}

}  // namespace dsk::prune
