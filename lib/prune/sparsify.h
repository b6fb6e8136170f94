// Unstructured and N:M weight pruning (docs/pruning.md, "Unstructured and N:M algorithms"):
// layer-wise and global magnitude, Wanda (Sun et al. 2023) and SparseGPT (Frantar & Alistarh
// 2023), plus the measurements reports and tests use.
//
// Conventions (what every function here produces):
//   * a weight W is [N out, K in]; float32 usually, bf16/f16 are computed in float32 and float64 in
//     float64, results come back in W's dtype and on W's device;
//   * a mask is a bool tensor shaped like W, true = KEEP;
//   * unstructured targets are exact: a sparsity s prunes prune_count(s, numel) =
//     floor(s * numel + 1e-9) weights, never "about" that many;
//   * an N:M pattern keeps n of every m consecutive input weights of a row (2:4 keeps 2 of 4 ->
//     50%); with an active pattern the sparsity argument is ignored (not even validated);
//   * ties are broken deterministically: among equal scores the one with the lower index (row
//     major, then in the order of the given matrices) is pruned first;
//   * H = sum over calibration inputs x of x x^T, [K, K] (the convention of quant::quantize_gptq);
//   * bad arguments (shapes, dtypes, non-finite values, out-of-range settings) are usage errors
//     (dsk::Error, exit 2) with a hint; callers add the layer name with Error::context.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>
#include <vector>

namespace dsk::prune {

// N:M sparsity: keep n of every m consecutive input weights of a row. m == 0: inactive
// (unstructured).
struct Pattern {
  int64_t n = 0, m = 0;
  bool active() const { return m > 0; }
  double sparsity() const;  // 1 - n/m when active, 0 otherwise
};

// "2:4" -> {2, 4}; "" or "none" (any case, surrounding blanks ignored) -> inactive. Anything else,
// n < 1 or n >= m: usage error naming the text, with a hint.
Pattern parse_pattern(const std::string& text);
// "2:4", or "none" for an inactive pattern.
std::string describe(const Pattern& p);

// Usage error unless 0 <= s < 1: "prune.sparsity 1.2 is outside [0, 1)" (key = "prune.sparsity").
void check_sparsity(double s, const std::string& key);
// Usage error when an active pattern is invalid (n < 1, n >= m) or m does not divide
// in_features: "<layer>: N:M pattern 4:8 needs the input width (172) to be a multiple of 8".
void check_pattern(const Pattern& p, int64_t in_features, const std::string& layer);

// Number of weights to prune out of `count` for target s: floor(s * count + 1e-9), within
// [0, count] (so 0.5 * 172 = 86 exactly, and 0.3 * 10 = 3 despite 0.3 * 10 = 2.9999...).
int64_t prune_count(double s, int64_t count);

// Layer-wise magnitude: prunes exactly prune_count(s, N*K) weights with the smallest |W|. With
// an active pattern: in every row, every group of m consecutive columns keeps its n largest |W|.
at::Tensor magnitude_mask(const at::Tensor& W, double sparsity, const Pattern& p = {});

// Global magnitude: one threshold over all the given matrices (any shapes, any float dtypes):
// exactly prune_count(s, total numel) weights pruned in all; each layer gets whatever sparsity
// falls out. One mask per input, in order. Memory: one |W| copy per input (float32, float64 when
// any input is float64), no concatenation and no sort — the threshold is found by a radix select
// over the scores' bit patterns (histograms of 16-bit digits; one full pass for the top digit,
// then only the scores that share it).
std::vector<at::Tensor> global_magnitude_masks(const std::vector<at::Tensor>& Ws, double sparsity);

// Wanda: score |W_ij| * sqrt(x_sq_j), x_sq [K] = sum over calibration tokens of x_j^2 (float64
// or float32, finite, >= 0). Compared within each output row (as the paper). Row r prunes
// prune_count(s, K*(r+1)) - prune_count(s, K*r) weights, so every row is within 1 of s*K and
// the matrix total is exactly prune_count(s, N*K) (with s*K integral every row prunes exactly
// s*K). With an active pattern: in every row, every group of m keeps the n highest scores.
at::Tensor wanda_mask(const at::Tensor& W, const at::Tensor& x_sq, double sparsity, const Pattern& p = {});

struct SparseGptOptions {
  double damp = 0.01;        // added to H's diagonal, as a fraction of its mean (>= 0)
  int64_t block_size = 128;  // columns per block (>= 1; with a pattern, rounded down to a
                             // multiple of m, at least m, so no group straddles two blocks)
};

struct Pruned {
  at::Tensor weight;  // W's dtype and device, exactly 0 where mask is false
  at::Tensor mask;    // bool [N, K], true = kept
};

// SparseGPT: prunes W column by column, compensating each pruned weight on the columns not yet
// processed through the inverse Hessian of the layer's squared output error (optimal brain
// surgeon updates on the upper Cholesky factor of H^-1, computed in float64; the weight
// updates run in float32, float64 for a float64 W). The unstructured mask is chosen per block of
// block_size columns over all rows x block columns by W^2 / diag(U)^2, block [c0, c1) pruning
// prune_count(s, N*c1) - prune_count(s, N*c0) so the total is exact. Dead inputs (H_jj == 0)
// get H_jj = 1 and keep their weights, but score 0: pruning them costs nothing on the
// calibration data, so they go first. Usage error when H is not positive definite after
// damping.
Pruned sparsegpt_prune(const at::Tensor& W, const at::Tensor& H, double sparsity, const Pattern& p = {},
                       const SparseGptOptions& opt = {});

// Fraction of entries that are exactly zero (0 for an empty tensor).
double zero_fraction(const at::Tensor& W);
// Whether every group of m consecutive input weights of every row of the 2-D W has at most n
// nonzeros. An inactive pattern: true. A width that m does not divide: false.
bool follows_pattern(const at::Tensor& W, const Pattern& p);
// Relative squared output error on the calibration inputs, through H = sum x x^T:
// ||(W - Wp) X^T||_F^2 / ||W X^T||_F^2 = tr(D H D^T) / tr(W H W^T), D = W - Wp, in float64
// (0 when the denominator is 0). Note: the square of what quant::output_error reports.
double output_error(const at::Tensor& W, const at::Tensor& Wp, const at::Tensor& H);

}  // namespace dsk::prune
