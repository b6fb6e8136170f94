// Unstructured and N:M pruning (prune/sparsify.h): exact counts for magnitude, Wanda and SparseGPT
// over ragged shapes and sparsities; N:M patterns satisfied exactly; magnitude keeps the largest
// weights and the global threshold spans layers; Wanda's reduction to row-wise magnitude and its
// input-norm weighting; SparseGPT against Wanda and magnitude on correlated inputs, its reduction to
// magnitude when H is the identity, dead inputs and bad Hessians; dtypes; the measurements; and the
// usage errors of the parsers and checks.
//
// LibTorch before Catch2: c10's logging header defines a CHECK macro of its own.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "prune/sparsify.h"
#include "test_util.h"

using Catch::Matchers::Contains;
using dsk::prune::Pattern;
using dsk::prune::SparseGptOptions;
using dsk::test::error_of;
namespace pr = dsk::prune;

namespace {

const std::vector<std::vector<int64_t>> kShapes = {{64, 172}, {172, 64}, {7, 13}};
const std::vector<double> kSparsities = {0.0, 0.3, 0.5, 0.7};

// Correlated calibration inputs X = Z M, [rows, K], float64.
at::Tensor correlated_inputs(int64_t rows, int64_t K) {
  at::Tensor Z = at::randn({rows, K}, at::kDouble);
  at::Tensor M = at::randn({K, K}, at::kDouble);
  return Z.mm(M);
}

at::Tensor hessian_of(const at::Tensor& X) { return X.t().mm(X); }

int64_t pruned_of(const at::Tensor& mask) { return mask.numel() - mask.sum().item<int64_t>(); }

void require_usage(const dsk::Error& e) {
  REQUIRE(e.kind() == dsk::Error::Kind::Usage);
  REQUIRE(e.exit_code() == 2);
  REQUIRE_FALSE(e.hint().empty());
}

}  // namespace

TEST_CASE("prune: pattern parsing, sparsity and pattern checks, prune counts", "[prune]") {
  const Pattern p24 = pr::parse_pattern("2:4");
  REQUIRE(p24.n == 2);
  REQUIRE(p24.m == 4);
  REQUIRE(p24.active());
  REQUIRE(p24.sparsity() == 0.5);
  REQUIRE(pr::parse_pattern(" 4:8 ").m == 8);
  REQUIRE(pr::parse_pattern("1:4").sparsity() == 0.75);
  REQUIRE_FALSE(pr::parse_pattern("").active());
  REQUIRE_FALSE(pr::parse_pattern("none").active());
  REQUIRE_FALSE(pr::parse_pattern("None").active());
  REQUIRE(pr::Pattern{}.sparsity() == 0.0);
  REQUIRE(pr::describe(p24) == "2:4");
  REQUIRE(pr::describe(Pattern{}) == "none");

  for (const std::string bad : {"2", "2:", ":4", "2:4:8", "a:b", "-2:4", "2:-4", "4:4", "5:4", "0:4", "2.0:4", "2 :4", "1:0",
                                "12345678:99999999"}) {
    INFO("pattern '" << bad << "'");
    const dsk::Error e = error_of([&] { pr::parse_pattern(bad); });
    require_usage(e);
    REQUIRE_THAT(e.message(), Contains("'" + bad + "'"));
  }

  for (double s : {-0.1, 1.0, 1.2, std::nan("")}) {
    INFO("sparsity " << s);
    const dsk::Error e = error_of([&] { pr::check_sparsity(s, "prune.sparsity"); });
    require_usage(e);
    REQUIRE_THAT(e.message(), Contains("prune.sparsity") && Contains("outside [0, 1)"));
  }
  REQUIRE(error_of([] { pr::check_sparsity(1.2, "prune.sparsity"); }).message() == "prune.sparsity 1.2 is outside [0, 1)");
  for (double s : {0.0, 0.5, 0.999}) REQUIRE_NOTHROW(pr::check_sparsity(s, "prune.sparsity"));

  {
    const dsk::Error e = error_of([] { pr::check_pattern(Pattern{4, 8}, 172, "model.layers.0.mlp.down_proj"); });
    require_usage(e);
    REQUIRE(e.message() ==
            "model.layers.0.mlp.down_proj: N:M pattern 4:8 needs the input width (172) to be a multiple of 8");
  }
  require_usage(error_of([] { pr::check_pattern(Pattern{4, 4}, 16, "x"); }));
  require_usage(error_of([] { pr::check_pattern(Pattern{0, 4}, 16, "x"); }));
  REQUIRE_NOTHROW(pr::check_pattern(Pattern{2, 4}, 172, "x"));
  REQUIRE_NOTHROW(pr::check_pattern(Pattern{}, 13, "x"));

  REQUIRE(pr::prune_count(0.5, 172) == 86);
  REQUIRE(pr::prune_count(0.3, 10) == 3);  // 0.3 * 10 = 2.9999999999999996 in doubles
  REQUIRE(pr::prune_count(0.7, 10) == 7);
  REQUIRE(pr::prune_count(0.3, 91) == 27);
  REQUIRE(pr::prune_count(0.0, 1000) == 0);
  REQUIRE(pr::prune_count(0.999, 10) == 9);
  REQUIRE(pr::prune_count(0.5, 0) == 0);
}

TEST_CASE("prune: magnitude prunes exactly the smallest weights", "[prune]") {
  at::manual_seed(1);
  for (const auto& shape : kShapes) {
    const int64_t N = shape[0], K = shape[1];
    at::Tensor W = at::randn({N, K}) * at::linspace(0.1, 2.0, K).unsqueeze(0);
    for (double s : kSparsities) {
      INFO(N << "x" << K << " at " << s);
      at::Tensor mask = pr::magnitude_mask(W, s);
      REQUIRE(mask.scalar_type() == at::kBool);
      REQUIRE(mask.sizes() == W.sizes());
      REQUIRE(pruned_of(mask) == pr::prune_count(s, N * K));
      if (s > 0) {
        const float max_pruned = W.abs().masked_select(mask.logical_not()).max().item<float>();
        const float min_kept = W.abs().masked_select(mask).min().item<float>();
        REQUIRE(min_kept >= max_pruned);
      }
      // Same answer for the same values in float64.
      REQUIRE(at::equal(pr::magnitude_mask(W.to(at::kDouble), s), mask));
    }
  }
  // Ties go by index: all equal -> the first k (row major) are pruned.
  at::Tensor ones = at::ones({5, 6});
  at::Tensor mask = pr::magnitude_mask(ones, 0.5);
  REQUIRE(at::equal(mask.flatten(), at::arange(30).ge(15)));
  // Existing zeros go first, then the smallest magnitudes regardless of sign.
  at::Tensor w = at::tensor({0.5f, -0.1f, 0.0f, 3.0f, -2.0f, 0.2f}).view({2, 3});
  REQUIRE(at::equal(pr::magnitude_mask(w, 0.5), at::tensor({1, 0, 0, 1, 1, 0}).view({2, 3}).gt(0)));
  // Not a matrix, not floating, not finite: usage errors.
  require_usage(error_of([] { pr::magnitude_mask(at::randn({4}), 0.5); }));
  require_usage(error_of([] { pr::magnitude_mask(at::ones({4, 4}, at::kInt), 0.5); }));
  require_usage(error_of([] { pr::magnitude_mask(at::full({4, 4}, INFINITY), 0.5); }));
  require_usage(error_of([] { pr::magnitude_mask(at::randn({4, 4}), 1.0); }));
}

TEST_CASE("prune: N:M patterns are exact for magnitude, Wanda and SparseGPT", "[prune]") {
  at::manual_seed(2);
  const int64_t N = 24, K = 64;
  at::Tensor X = correlated_inputs(256, K);
  at::Tensor H = hessian_of(X);
  at::Tensor x_sq = H.diagonal().clone();
  at::Tensor W = at::randn({N, K});
  for (const char* text : {"2:4", "4:8", "1:4"}) {
    const Pattern p = pr::parse_pattern(text);
    const double frac = p.sparsity();
    const int64_t expect = N * K * (p.m - p.n) / p.m;
    INFO("pattern " << text);
    at::Tensor m_mag = pr::magnitude_mask(W, 0.9 /* ignored */, p);
    at::Tensor m_wanda = pr::wanda_mask(W, x_sq, 0.1 /* ignored */, p);
    for (int64_t bs : {int64_t{128}, int64_t{6}, int64_t{1}}) {
      SparseGptOptions o;
      o.block_size = bs;  // rounded to a multiple of m
      const pr::Pruned sg = pr::sparsegpt_prune(W, H, 0.0, p, o);
      REQUIRE(pruned_of(sg.mask) == expect);
      REQUIRE(pr::follows_pattern(sg.weight, p));
      REQUIRE(pr::zero_fraction(sg.weight) == frac);
      REQUIRE(at::equal(sg.weight.ne(0), sg.mask));
    }
    for (const at::Tensor& mask : {m_mag, m_wanda}) {
      REQUIRE(pruned_of(mask) == expect);
      at::Tensor pruned = W * mask;
      REQUIRE(pr::follows_pattern(pruned, p));
      REQUIRE(pr::zero_fraction(pruned) == frac);
      // Every group keeps exactly n.
      REQUIRE(at::equal(mask.view({N, K / p.m, p.m}).sum(2), at::full({N, K / p.m}, p.n, at::kLong)));
    }
    // Magnitude keeps the n largest of each group.
    at::Tensor a = W.abs().view({N, K / p.m, p.m});
    at::Tensor mk = m_mag.view({N, K / p.m, p.m});
    at::Tensor min_kept = a.masked_fill(mk.logical_not(), INFINITY).amin(2);
    at::Tensor max_pruned = a.masked_fill(mk, -1.0).amax(2);
    REQUIRE(min_kept.ge(max_pruned).all().item<bool>());
  }
  // 2:4 on the ragged 172 works; 4:8 does not and says why.
  REQUIRE(pr::follows_pattern(W.narrow(1, 0, 4) * pr::magnitude_mask(W.narrow(1, 0, 4), 0, Pattern{2, 4}), Pattern{2, 4}));
  at::Tensor W172 = at::randn({8, 172});
  REQUIRE(pruned_of(pr::magnitude_mask(W172, 0, Pattern{2, 4})) == 8 * 86);
  const dsk::Error e = error_of([&] { pr::magnitude_mask(W172, 0, Pattern{4, 8}); });
  require_usage(e);
  REQUIRE_THAT(e.message(), Contains("multiple of 8"));
  require_usage(error_of([&] { pr::sparsegpt_prune(W172, at::eye(172, at::kDouble), 0, Pattern{4, 8}); }));
  require_usage(error_of([&] { pr::wanda_mask(W172, at::ones({172}), 0, Pattern{4, 8}); }));
}

TEST_CASE("prune: global magnitude uses one threshold over all layers", "[prune]") {
  at::manual_seed(3);
  std::vector<at::Tensor> Ws = {at::randn({64, 172}), at::randn({172, 64}) * 4.0, at::randn({7, 13}) * 0.25,
                                at::randn({5, 9}, at::kDouble)};
  int64_t total = 0;
  for (const auto& w : Ws) total += w.numel();
  for (double s : kSparsities) {
    INFO("sparsity " << s);
    const std::vector<at::Tensor> masks = pr::global_magnitude_masks(Ws, s);
    REQUIRE(masks.size() == Ws.size());
    int64_t pruned = 0;
    double max_pruned = 0, min_kept = INFINITY;
    for (size_t i = 0; i < Ws.size(); ++i) {
      REQUIRE(masks[i].sizes() == Ws[i].sizes());
      REQUIRE(masks[i].scalar_type() == at::kBool);
      pruned += pruned_of(masks[i]);
      at::Tensor a = Ws[i].abs().to(at::kDouble);
      if (pruned_of(masks[i]) > 0) max_pruned = std::max(max_pruned, a.masked_select(masks[i].logical_not()).max().item<double>());
      if (masks[i].any().item<bool>()) min_kept = std::min(min_kept, a.masked_select(masks[i]).min().item<double>());
    }
    REQUIRE(pruned == pr::prune_count(s, total));
    REQUIRE(min_kept >= max_pruned);
    if (s > 0) {
      // The layer of larger weights keeps more than the one of ordinary weights, which keeps more
      // than the one of small weights.
      const double keep0 = masks[0].to(at::kDouble).mean().item<double>();
      const double keep1 = masks[1].to(at::kDouble).mean().item<double>();
      const double keep2 = masks[2].to(at::kDouble).mean().item<double>();
      REQUIRE(keep1 > keep0 + 0.1);
      REQUIRE(keep0 > keep2);
    }
  }
  // One layer: the same as layer-wise magnitude.
  for (double s : kSparsities) REQUIRE(at::equal(pr::global_magnitude_masks({Ws[0]}, s)[0], pr::magnitude_mask(Ws[0], s)));
  REQUIRE(pr::global_magnitude_masks({}, 0.5).empty());
  require_usage(error_of([&] { pr::global_magnitude_masks(Ws, -0.5); }));
}

TEST_CASE("prune: Wanda counts, its reduction to magnitude and its input weighting", "[prune]") {
  at::manual_seed(4);
  for (const auto& shape : kShapes) {
    const int64_t N = shape[0], K = shape[1];
    at::Tensor W = at::randn({N, K});
    at::Tensor x_sq = at::rand({K}, at::kDouble) * 100;
    for (double s : kSparsities) {
      INFO(N << "x" << K << " at " << s);
      at::Tensor mask = pr::wanda_mask(W, x_sq, s);
      REQUIRE(mask.scalar_type() == at::kBool);
      REQUIRE(pruned_of(mask) == pr::prune_count(s, N * K));
      // Every row within 1 of s*K.
      at::Tensor per_row = mask.logical_not().sum(1).to(at::kDouble);
      REQUIRE((per_row - s * K).abs().max().item<double>() < 1.0);
      // Row-wise: every kept score >= every pruned score of the same row.
      at::Tensor score = W.abs().to(at::kDouble) * x_sq.sqrt().unsqueeze(0);
      at::Tensor min_kept = score.masked_fill(mask.logical_not(), INFINITY).amin(1);
      at::Tensor max_pruned = score.masked_fill(mask, -1.0).amax(1);
      REQUIRE(min_kept.ge(max_pruned).all().item<bool>());
    }
  }

  // Constant input norms: Wanda is magnitude pruning row by row.
  at::Tensor W = at::randn({16, 64});
  at::Tensor four = at::full({64}, 4.0, at::kDouble);
  at::Tensor wm = pr::wanda_mask(W, four, 0.5);
  for (int64_t r = 0; r < 16; ++r) REQUIRE(at::equal(wm[r], pr::magnitude_mask(W.narrow(0, r, 1), 0.5)[0]));
  REQUIRE(at::equal(pr::wanda_mask(W, four, 0, Pattern{2, 4}), pr::magnitude_mask(W, 0, Pattern{2, 4})));
  REQUIRE(at::equal(pr::wanda_mask(W, four.to(at::kFloat), 0.5), wm));

  // One input with a huge norm and small weights: magnitude prunes its column, Wanda keeps it.
  at::Tensor W2 = W.clone();
  W2.select(1, 5).mul_(0.01);
  at::Tensor x_sq = at::ones({64}, at::kDouble);
  x_sq[5] = 1e8;
  REQUIRE_FALSE(pr::magnitude_mask(W2, 0.5).select(1, 5).any().item<bool>());
  REQUIRE(pr::wanda_mask(W2, x_sq, 0.5).select(1, 5).all().item<bool>());
  REQUIRE(pr::wanda_mask(W2, x_sq, 0, Pattern{2, 4}).select(1, 5).all().item<bool>());
  // ... and a dead input loses its weights first, large as they are.
  at::Tensor W3 = W.clone();
  W3.select(1, 7).fill_(100.0);
  x_sq[7] = 0.0;
  REQUIRE_FALSE(pr::wanda_mask(W3, x_sq, 0.3).select(1, 7).any().item<bool>());

  // Bad input norms.
  require_usage(error_of([&] { pr::wanda_mask(W, at::ones({63}), 0.5); }));
  require_usage(error_of([&] { pr::wanda_mask(W, at::ones({64, 1}), 0.5); }));
  require_usage(error_of([&] { pr::wanda_mask(W, at::full({64}, -1.0), 0.5); }));
  require_usage(error_of([&] { pr::wanda_mask(W, at::full({64}, NAN), 0.5); }));
  require_usage(error_of([&] { pr::wanda_mask(W, at::ones({64}, at::kLong), 0.5); }));
  require_usage(error_of([&] { pr::wanda_mask(W, four, 1.5); }));
}

TEST_CASE("prune: SparseGPT prunes exact counts to exact zeros", "[prune]") {
  at::manual_seed(5);
  for (const auto& shape : kShapes) {
    const int64_t N = shape[0], K = shape[1];
    at::Tensor H = hessian_of(correlated_inputs(2 * K, K));
    at::Tensor W = at::randn({N, K});
    for (double s : kSparsities) {
      for (int64_t bs : {int64_t{128}, int64_t{5}}) {
        INFO(N << "x" << K << " at " << s << ", block " << bs);
        SparseGptOptions o;
        o.block_size = bs;
        const pr::Pruned r = pr::sparsegpt_prune(W, H, s, Pattern{}, o);
        REQUIRE(r.weight.scalar_type() == at::kFloat);
        REQUIRE(r.weight.sizes() == W.sizes());
        REQUIRE(r.mask.scalar_type() == at::kBool);
        REQUIRE(pruned_of(r.mask) == pr::prune_count(s, N * K));
        REQUIRE(r.weight.masked_select(r.mask.logical_not()).eq(0).all().item<bool>());
        REQUIRE(r.weight.masked_select(r.mask).ne(0).all().item<bool>());
        REQUIRE(pr::zero_fraction(r.weight) == static_cast<double>(pr::prune_count(s, N * K)) / (N * K));
        // Every block prunes its share: the first c columns hold prune_count(s, N*c) of them.
        for (int64_t c = bs; c < K; c += bs)
          REQUIRE(pruned_of(r.mask.narrow(1, 0, c)) == pr::prune_count(s, N * c));
        if (s == 0) REQUIRE(at::equal(r.weight, W));
        if (s > 0) REQUIRE_FALSE(at::equal(r.weight.masked_select(r.mask), W.masked_select(r.mask)));  // compensated
      }
    }
  }
}

// Calibration inputs whose columns are correlated through a few shared factors, plus noise, with
// uneven feature scales (like a transformer's activations: low effective rank, some loud features).
// On a full-rank Wishart H (X = Z M with a dense random M) unstructured SparseGPT gains only a few
// percent over magnitude at 50% (its greedy left-to-right compensation cannot use the spread), so
// that is not the synthetic used to assert the ordering.
at::Tensor factor_inputs(int64_t rows, int64_t K, int64_t factors) {
  at::Tensor X = at::randn({rows, factors}, at::kDouble).mm(at::randn({factors, K}, at::kDouble));
  X.add_(at::randn({rows, K}, at::kDouble) * 0.5);
  return X.mul_(at::rand({1, K}, at::kDouble) * 3 + 0.2);
}

TEST_CASE("prune: SparseGPT beats Wanda and magnitude on correlated inputs", "[prune]") {
  at::manual_seed(6);
  const int64_t N = 64, K = 128;
  at::Tensor X = factor_inputs(1024, K, 32);
  at::Tensor H = hessian_of(X);
  at::Tensor x_sq = X.square().sum(0);
  at::Tensor W = at::randn({N, K});
  for (const Pattern& p : {Pattern{}, Pattern{2, 4}}) {
    INFO("pattern " << pr::describe(p));
    const double e_mag = pr::output_error(W, W * pr::magnitude_mask(W, 0.5, p), H);
    const double e_wanda = pr::output_error(W, W * pr::wanda_mask(W, x_sq, 0.5, p), H);
    const pr::Pruned sg = pr::sparsegpt_prune(W, H, 0.5, p);
    const double e_sg = pr::output_error(W, sg.weight, H);
    INFO("magnitude " << e_mag << ", wanda " << e_wanda << ", sparsegpt " << e_sg);
    REQUIRE(pr::zero_fraction(sg.weight) == 0.5);
    REQUIRE(e_sg > 0);
    REQUIRE(e_wanda < e_mag);  // the input scales matter on these inputs
    REQUIRE(e_sg < 0.5 * e_wanda);
    REQUIRE(e_sg < 0.5 * e_mag);
    // Measured on the inputs themselves, output_error is the squared relative output error.
    at::Tensor Y = X.mm(W.to(at::kDouble).t());
    const double measured = (Y - X.mm(sg.weight.to(at::kDouble).t())).square().sum().item<double>() / Y.square().sum().item<double>();
    REQUIRE(std::abs(measured - e_sg) < 1e-6 * (1 + measured));
  }
  // Full-rank correlated inputs: SparseGPT still no worse than magnitude with 2:4, clearly.
  at::Tensor H2 = hessian_of(correlated_inputs(1024, K));
  const double e_mag = pr::output_error(W, W * pr::magnitude_mask(W, 0, Pattern{2, 4}), H2);
  const double e_sg = pr::output_error(W, pr::sparsegpt_prune(W, H2, 0, Pattern{2, 4}).weight, H2);
  INFO("2:4 on Z M inputs: magnitude " << e_mag << ", sparsegpt " << e_sg);
  REQUIRE(e_sg < 0.8 * e_mag);
}

// SparseGPT's weights are the sequential optimal-brain-surgeon updates for its mask: prune column
// i of a row, then move the columns i.. by -w_i / [H_F^-1]_00 * H_F^-1[:, 0] with F = {i, ..., K-1}
// and H damped, recomputing the inverse every time (the naive form of the Cholesky algorithm).
TEST_CASE("prune: SparseGPT matches naive sequential OBS updates", "[prune]") {
  at::manual_seed(11);
  const int64_t N = 6, K = 24;
  at::Tensor H = hessian_of(factor_inputs(96, K, 6));
  at::Tensor W = at::randn({N, K});
  for (const Pattern& p : {Pattern{}, Pattern{2, 4}}) {
    for (int64_t bs : {int64_t{128}, int64_t{8}, int64_t{5}}) {
      INFO("pattern " << pr::describe(p) << ", block " << bs);
      SparseGptOptions o;
      o.block_size = bs;
      o.damp = 0.05;
      const pr::Pruned sg = pr::sparsegpt_prune(W, H, 0.6, p, o);
      at::Tensor Hd = H.clone();
      Hd.diagonal().add_(o.damp * Hd.diagonal().mean().item<double>());
      at::Tensor ref = W.to(at::kDouble).clone();
      for (int64_t r = 0; r < N; ++r) {
        at::Tensor w = ref[r];
        for (int64_t i = 0; i < K; ++i) {
          if (sg.mask[r][i].item<bool>()) continue;
          at::Tensor F = at::arange(i, K, at::kLong);
          at::Tensor Hinv = at::inverse(Hd.index_select(0, F).index_select(1, F));
          w.narrow(0, i, K - i).sub_(Hinv.select(1, 0) * (w[i].item<double>() / Hinv[0][0].item<double>()));
        }
      }
      ref.masked_fill_(sg.mask.logical_not(), 0.0);
      const double scale = W.abs().max().item<double>();
      REQUIRE((ref - sg.weight.to(at::kDouble)).abs().max().item<double>() < 1e-4 * scale);
      REQUIRE(pruned_of(sg.mask) == (p.active() ? N * K / 2 : pr::prune_count(0.6, N * K)));
    }
  }
}

TEST_CASE("prune: SparseGPT with an identity Hessian is magnitude pruning", "[prune]") {
  at::manual_seed(7);
  for (const auto& shape : kShapes) {
    const int64_t N = shape[0], K = shape[1];
    at::Tensor W = at::randn({N, K});
    at::Tensor I = at::eye(K, at::kDouble);
    SparseGptOptions o;
    o.block_size = 256;  // one block: the selection spans the whole matrix, as magnitude's does
    for (double s : kSparsities) {
      INFO(N << "x" << K << " at " << s);
      const pr::Pruned r = pr::sparsegpt_prune(W, I, s, Pattern{}, o);
      REQUIRE(at::equal(r.mask, pr::magnitude_mask(W, s)));
      REQUIRE(at::equal(r.weight, W * r.mask));  // no compensation: the inputs are uncorrelated
    }
    if (K % 4 == 0) {
      const pr::Pruned r = pr::sparsegpt_prune(W, I * 3.0, 0, Pattern{2, 4});  // default blocks
      REQUIRE(at::equal(r.mask, pr::magnitude_mask(W, 0, Pattern{2, 4})));
      REQUIRE(at::equal(r.weight, W * r.mask));
    }
  }
}

TEST_CASE("prune: SparseGPT dead inputs, bad Hessians and options", "[prune]") {
  at::manual_seed(8);
  const int64_t N = 16, K = 32;
  at::Tensor X = correlated_inputs(128, K);
  X.select(1, 3).zero_();
  X.select(1, 20).zero_();
  at::Tensor H = hessian_of(X);
  REQUIRE(H[3][3].item<double>() == 0.0);
  at::Tensor W = at::randn({N, K});
  W.select(1, 3).fill_(50.0);  // large, but useless on these inputs
  SparseGptOptions o;
  o.block_size = 8;
  const pr::Pruned r = pr::sparsegpt_prune(W, H, 0.3, Pattern{}, o);
  REQUIRE(pruned_of(r.mask) == pr::prune_count(0.3, N * K));
  REQUIRE_FALSE(r.mask.select(1, 3).any().item<bool>());
  REQUIRE_FALSE(r.mask.select(1, 20).any().item<bool>());
  REQUIRE(at::isfinite(r.weight).all().item<bool>());
  const pr::Pruned r24 = pr::sparsegpt_prune(W, H, 0, Pattern{2, 4}, o);
  REQUIRE_FALSE(r24.mask.select(1, 3).any().item<bool>());
  REQUIRE(pr::follows_pattern(r24.weight, Pattern{2, 4}));

  // Not positive definite, wrong shape, non-finite, not floating: usage errors.
  const dsk::Error e = error_of([&] { pr::sparsegpt_prune(W, at::eye(K, at::kDouble).neg(), 0.5); });
  require_usage(e);
  REQUIRE_THAT(e.message(), Contains("positive definite"));
  require_usage(error_of([&] { pr::sparsegpt_prune(W, at::eye(K + 1, at::kDouble), 0.5); }));
  require_usage(error_of([&] { pr::sparsegpt_prune(W, at::ones({K}, at::kDouble), 0.5); }));
  require_usage(error_of([&] { pr::sparsegpt_prune(W, H.clone().fill_diagonal_(NAN), 0.5); }));
  require_usage(error_of([&] { pr::sparsegpt_prune(W, at::eye(K, at::kLong), 0.5); }));
  require_usage(error_of([&] { pr::sparsegpt_prune(W, H, 1.0); }));
  SparseGptOptions bad;
  bad.block_size = 0;
  require_usage(error_of([&] { pr::sparsegpt_prune(W, H, 0.5, Pattern{}, bad); }));
  bad = SparseGptOptions{};
  bad.damp = -1;
  require_usage(error_of([&] { pr::sparsegpt_prune(W, H, 0.5, Pattern{}, bad); }));
}

TEST_CASE("prune: bfloat16, float16 and float64 weights", "[prune]") {
  at::manual_seed(9);
  const int64_t N = 12, K = 40;
  at::Tensor H = hessian_of(correlated_inputs(128, K));
  at::Tensor W = at::randn({N, K}).to(at::kBFloat16).to(at::kFloat);  // exact in every dtype
  const at::Tensor ref = pr::magnitude_mask(W, 0.5);
  for (at::ScalarType t : {at::kBFloat16, at::kHalf, at::kDouble}) {
    INFO(c10::toString(t));
    at::Tensor Wt = W.to(t);
    REQUIRE(at::equal(pr::magnitude_mask(Wt, 0.5), ref));
    REQUIRE(at::equal(pr::wanda_mask(Wt, H.diagonal(), 0.5), pr::wanda_mask(W, H.diagonal(), 0.5)));
    const pr::Pruned r = pr::sparsegpt_prune(Wt, H, 0.5);
    REQUIRE(r.weight.scalar_type() == t);
    REQUIRE(pruned_of(r.mask) == N * K / 2);
    REQUIRE(r.weight.masked_select(r.mask.logical_not()).eq(0).all().item<bool>());
    const double err = pr::output_error(W, r.weight, H);
    REQUIRE(err < pr::output_error(W, W * ref, H));
  }
}

TEST_CASE("prune: zero fraction, pattern check and output error", "[prune]") {
  at::Tensor w = at::tensor({1.f, 0.f, 0.f, 2.f, 0.f, 3.f, 4.f, 0.f}).view({2, 4});
  REQUIRE(pr::zero_fraction(w) == 0.5);
  REQUIRE(pr::zero_fraction(at::zeros({3, 3})) == 1.0);
  REQUIRE(pr::zero_fraction(at::ones({3, 3})) == 0.0);
  REQUIRE(pr::follows_pattern(w, Pattern{2, 4}));
  REQUIRE_FALSE(pr::follows_pattern(w, Pattern{1, 4}));
  REQUIRE(pr::follows_pattern(w, Pattern{1, 2}));
  REQUIRE_FALSE(pr::follows_pattern(at::tensor({0.f, 1.f, 1.f, 0.f, 1.f, 1.f, 0.f, 0.f}).view({2, 4}), Pattern{1, 2}));
  REQUIRE(pr::follows_pattern(w, Pattern{}));
  REQUIRE_FALSE(pr::follows_pattern(at::zeros({2, 6}), Pattern{2, 4}));  // 4 does not divide 6
  REQUIRE(pr::follows_pattern(at::zeros({2, 8}), Pattern{1, 8}));

  at::manual_seed(10);
  at::Tensor W = at::randn({6, 10});
  at::Tensor H = hessian_of(correlated_inputs(40, 10));
  REQUIRE(pr::output_error(W, W, H) == 0.0);
  REQUIRE(std::abs(pr::output_error(W, at::zeros_like(W), H) - 1.0) < 1e-12);
  REQUIRE(std::abs(pr::output_error(W, W * 0.5, H) - 0.25) < 1e-12);
  // H = I: the squared relative Frobenius error of the weight.
  at::Tensor Wp = W * pr::magnitude_mask(W, 0.5);
  at::Tensor Wd = W.to(at::kDouble), Dd = (W - Wp).to(at::kDouble);
  const double frob = Dd.square().sum().item<double>() / Wd.square().sum().item<double>();
  REQUIRE(std::abs(pr::output_error(W, Wp, at::eye(10, at::kDouble)) - frob) < 1e-12);
  require_usage(error_of([&] { pr::output_error(W, W.narrow(1, 0, 9), H); }));
  require_usage(error_of([&] { pr::output_error(W, W, at::eye(9)); }));
}
