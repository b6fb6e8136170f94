// Weight quantization (quant/quantize.h) and the quantized linear forward (quant/qlinear.h):
// RTN invariants over every width, group size, symmetry and ragged shape; hand-computed codes;
// GPTQ against RTN on correlated inputs, its reduction to RTN when H is diagonal, dead inputs,
// act-order grouping and the non-positive-definite failure; scheme validation; stored sizes
// against the packed tensors; activation fake-quantization.
//
// LibTorch before Catch2: c10's logging header defines a CHECK macro of its own.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/error.h"
#include "quant/pack.h"
#include "quant/qlinear.h"
#include "quant/quantize.h"
#include "test_util.h"

using Catch::Matchers::Contains;
using dsk::quant::dequantize;
using dsk::quant::GptqOptions;
using dsk::quant::QWeight;
using dsk::quant::Scheme;
using dsk::test::error_of;
namespace q = dsk::quant;

namespace {

// Per-element scale / zero point [N, K] gathered through g_idx.
at::Tensor per_element(const at::Tensor& per_group, const at::Tensor& g_idx) {
  return per_group.to(at::kFloat).index_select(1, g_idx.to(at::kLong));
}

// Correlated calibration inputs X = Z M, [rows, K], float64.
at::Tensor correlated_inputs(int64_t rows, int64_t K) {
  at::Tensor Z = at::randn({rows, K}, at::kDouble);
  at::Tensor M = at::randn({K, K}, at::kDouble);
  return Z.mm(M);
}

// ||X W^T - X Wq^T||_F / ||X W^T||_F, measured on the inputs themselves.
double measured_output_error(const at::Tensor& X, const at::Tensor& W, const QWeight& qw) {
  at::Tensor Wd = W.to(at::kDouble), Qd = dequantize(qw).to(at::kDouble);
  at::Tensor Y = X.mm(Wd.t());
  return (Y - X.mm(Qd.t())).norm().item<double>() / Y.norm().item<double>();
}

bool same(const at::Tensor& a, const at::Tensor& b) { return a.sizes() == b.sizes() && at::equal(a, b); }

}  // namespace

TEST_CASE("quantize: RTN invariants over widths, group sizes, symmetry and shapes", "[quantize]") {
  at::manual_seed(1);
  const std::vector<std::vector<int64_t>> shapes = {{64, 172}, {8, 64}, {3, 5}};
  for (const auto& shape : shapes) {
    const int64_t N = shape[0], K = shape[1];
    // A mix of magnitudes per row so per-channel and per-tensor scales differ.
    at::Tensor W = at::randn({N, K}) * at::linspace(0.02, 1.0, N).unsqueeze(1);
    for (int bits : {2, 3, 4, 8}) {
      for (int64_t gs : {int64_t{-1}, int64_t{0}, int64_t{16}, int64_t{32}}) {
        for (bool sym : {true, false}) {
          const Scheme s{bits, gs, sym};
          INFO(q::describe(s) << " on " << N << "x" << K);
          const QWeight qw = q::quantize_rtn(W, s);
          const int64_t G = q::num_groups(K, gs);
          const int levels = (1 << bits) - 1;
          REQUIRE(qw.bits == bits);
          REQUIRE(qw.group_size == gs);
          REQUIRE(qw.q.sizes() == W.sizes());
          REQUIRE(qw.q.scalar_type() == at::kByte);
          REQUIRE(qw.scales.sizes() == at::IntArrayRef({N, G}));
          REQUIRE(qw.zeros.sizes() == at::IntArrayRef({N, G}));
          REQUIRE(qw.zeros.scalar_type() == at::kInt);

          // Codes and zero points in range.
          REQUIRE(qw.q.to(at::kInt).max().item<int>() <= levels);
          REQUIRE(qw.zeros.min().item<int>() >= 0);
          REQUIRE(qw.zeros.max().item<int>() <= levels);
          if (sym) {
            REQUIRE(at::equal(qw.zeros, at::full({N, G}, 1 << (bits - 1), at::kInt)));
            // -max|w| maps to code 1: code 0 stays unused by RTN.
            REQUIRE(qw.q.to(at::kInt).min().item<int>() >= 1);
          }

          // Scales: positive, float16-exact, one value everywhere when per-tensor.
          REQUIRE(qw.scales.min().item<float>() > 0);
          REQUIRE(at::equal(qw.scales, qw.scales.to(at::kHalf).to(at::kFloat)));
          if (gs == -1) {
            REQUIRE(at::equal(qw.scales, qw.scales.flatten()[0].expand({N, G})));
            REQUIRE(at::equal(qw.zeros, qw.zeros.flatten()[0].expand({N, G})));
          }

          // g_idx = k / group_size (0 for one group).
          at::Tensor expect_g = gs > 0 ? at::arange(K, at::kLong).div(gs, "floor").to(at::kInt) : at::zeros({K}, at::kInt);
          REQUIRE(at::equal(qw.g_idx, expect_g));
          REQUIRE(at::equal(q::group_index(K, gs), expect_g));

          // Every value lies in its group's range, so it dequantizes within half a step (the
          // scale is rounded up to float16, so the grid covers the range).
          at::Tensor scale = per_element(qw.scales, qw.g_idx);
          at::Tensor err = (dequantize(qw) - W).abs();
          const double bound = 0.5;
          at::Tensor excess = err - (scale * bound * (1 + 1e-5) + 1e-7);
          INFO("worst |deq - w| / scale = " << (err / scale).max().item<double>());
          REQUIRE(excess.max().item<double>() <= 0);
        }
      }
    }
  }
}

TEST_CASE("quantize: the ragged last group has scales of its own", "[quantize]") {
  at::manual_seed(2);
  const int64_t N = 64, K = 172;  // 172 = 10 * 16 + 12 = 5 * 32 + 12
  at::Tensor W = at::randn({N, K});
  for (int64_t gs : {int64_t{16}, int64_t{32}}) {
    for (bool sym : {true, false}) {
      const Scheme s{4, gs, sym};
      INFO(q::describe(s));
      const int64_t G = q::num_groups(K, gs), k0 = (G - 1) * gs;
      REQUIRE(G == (gs == 16 ? 11 : 6));
      REQUIRE(K - k0 == 12);
      at::Tensor W2 = W.clone();
      W2.narrow(1, k0, K - k0).mul_(10);
      const QWeight a = q::quantize_rtn(W, s), b = q::quantize_rtn(W2, s);
      // Every other group is untouched, codes included.
      REQUIRE(at::equal(a.scales.narrow(1, 0, G - 1), b.scales.narrow(1, 0, G - 1)));
      REQUIRE(at::equal(a.zeros.narrow(1, 0, G - 1), b.zeros.narrow(1, 0, G - 1)));
      REQUIRE(at::equal(a.q.narrow(1, 0, k0), b.q.narrow(1, 0, k0)));
      // The last group's scales follow its own 12 columns: 10x (to float16 rounding).
      at::Tensor ratio = b.scales.select(1, G - 1) / a.scales.select(1, G - 1);
      REQUIRE((ratio - 10).abs().max().item<double>() < 10 * 2e-3);
      // ... and are computed from those 12 columns only.
      at::Tensor last = W.narrow(1, k0, K - k0);
      at::Tensor expect = sym ? std::get<0>(last.abs().max(1)) / 7
                              : (std::get<0>(last.max(1)).clamp_min(0) - std::get<0>(last.min(1)).clamp_max(0)) / 15;
      // rounded up to the next float16 value (the value itself when exact)
      at::Tensor h = expect.to(at::kHalf);
      h.view(at::kShort).add_((h.to(at::kFloat) < expect).to(at::kShort));
      REQUIRE(at::equal(a.scales.select(1, G - 1), h.to(at::kFloat)));
    }
  }
}

TEST_CASE("quantize: hand-computed RTN codes", "[quantize]") {
  const at::Tensor W = at::tensor({-1.0f, -0.5f, 0.25f, 1.0f}).reshape({1, 4});

  SECTION("int4 per-channel sym") {
    // scale = 1/7 = 0.142857..., rounded up to float16: 1171/1024 * 2^-3 = 0.1429443359375
    // (1170/1024 * 2^-3 is below 1/7); zero = 8.
    // w / scale = -6.9957, -3.4979, 1.7489, 6.9957 -> -7, -3, 2, 7 -> codes 1, 5, 10, 15.
    const QWeight qw = q::quantize_rtn(W, Scheme{4, 0, true});
    REQUIRE(qw.scales.item<float>() == 0.1429443359375f);
    REQUIRE(qw.zeros.item<int>() == 8);
    REQUIRE(at::equal(qw.q, at::tensor({1, 5, 10, 15}, at::kByte).reshape({1, 4})));
    REQUIRE(at::equal(dequantize(qw), at::tensor({-7.f, -3.f, 2.f, 7.f}).reshape({1, 4}) * 0.1429443359375f));
  }
  SECTION("int8 per-channel sym") {
    // scale = 1/127 rounded up to float16: 1033/1024 * 2^-7 = 0.00788116455078125; zero = 128.
    // w / scale = -126.886, -63.443, 31.721, 126.886 -> -127, -63, 32, 127 -> 1, 65, 160, 255.
    const QWeight qw = q::quantize_rtn(W, Scheme{8, 0, true});
    REQUIRE(qw.scales.item<float>() == 0.00788116455078125f);
    REQUIRE(qw.zeros.item<int>() == 128);
    REQUIRE(at::equal(qw.q, at::tensor({1, 65, 160, 255}, at::kByte).reshape({1, 4})));
  }
  SECTION("int2 per-channel asym, non-negative row: zero point 0") {
    // range [0, 3] over 3 steps: scale 1, zero round(0 / 1) = 0, codes = w.
    const QWeight qw = q::quantize_rtn(at::tensor({0.0f, 1.0f, 2.0f, 3.0f}).reshape({1, 4}), Scheme{2, 0, false});
    REQUIRE(qw.scales.item<float>() == 1.0f);
    REQUIRE(qw.zeros.item<int>() == 0);
    REQUIRE(at::equal(qw.q, at::tensor({0, 1, 2, 3}, at::kByte).reshape({1, 4})));
  }
  SECTION("int2 per-channel asym, float16-exact scale") {
    // range [-1, 2] over 3 steps: scale 1, zero 1; 0.5 is a tie and rounds to even (0).
    const QWeight qw = q::quantize_rtn(at::tensor({-1.0f, 0.0f, 0.5f, 2.0f}).reshape({1, 4}), Scheme{2, 0, false});
    REQUIRE(qw.scales.item<float>() == 1.0f);
    REQUIRE(qw.zeros.item<int>() == 1);
    REQUIRE(at::equal(qw.q, at::tensor({0, 1, 1, 3}, at::kByte).reshape({1, 4})));
  }
  SECTION("an all-zero group gets the smallest positive float16 scale") {
    const QWeight qw = q::quantize_rtn(at::zeros({2, 8}), Scheme{4, 0, true});
    REQUIRE(at::equal(qw.scales, at::full({2, 1}, 5.9604645e-08f)));
    REQUIRE(at::equal(dequantize(qw), at::zeros({2, 8})));
  }
}

// Regression: the scale (hi - lo) / levels used to be rounded to the *nearest* float16, which
// can be below the exact value; the grid then spans less than [lo, hi] and the clamp of the top
// code left the top value more than half a step away. Scales now round up.
TEST_CASE("quantize: asymmetric RTN keeps values of the range within half a step", "[quantize]") {
  SECTION("int4: {-1, -0.5, 0.25, 1}") {
    // scale 2/15 -> float16 0.13330078125 (< 2/15); zero round(7.5018) = 8; 1 / scale = 7.5018
    // rounds to 8, 8 + 8 = 16 clamps to 15: 1.0 dequantizes to 7 * scale = 0.9331 (0.5018 steps).
    const at::Tensor W = at::tensor({-1.0f, -0.5f, 0.25f, 1.0f}).reshape({1, 4});
    const QWeight qw = q::quantize_rtn(W, Scheme{4, 0, false});
    const float s = qw.scales.item<float>();
    CHECK((dequantize(qw) - W).abs().max().item<float>() <= 0.5f * s);
  }
  SECTION("int8: {-0.9707359, 0.0258394}") {
    // scale 0.99657 / 255 = 0.0039081 -> float16 0.00390625; zero round(248.508) = 249;
    // 0.0258394 / scale = 6.615 -> 7, 7 + 249 = 256 clamps to 255: 6 * scale = 0.0234375,
    // 0.615 steps away.
    const at::Tensor W = at::tensor({-0.9707359076f, 0.02583938837f}).reshape({1, 2});
    const QWeight qw = q::quantize_rtn(W, Scheme{8, 0, false});
    const float s = qw.scales.item<float>();
    CHECK((dequantize(qw) - W).abs().max().item<float>() <= 0.5f * s);
  }
}

TEST_CASE("quantize: weight_error and output_error against direct measurement", "[quantize]") {
  at::manual_seed(3);
  const int64_t N = 16, K = 40;
  at::Tensor W = at::randn({N, K});
  at::Tensor X = correlated_inputs(256, K);
  at::Tensor H = X.t().mm(X);
  const QWeight qw = q::quantize_rtn(W, Scheme{3, 8, false});
  const at::Tensor D = W.to(at::kDouble) - dequantize(qw).to(at::kDouble);
  const double we = D.norm().item<double>() / W.to(at::kDouble).norm().item<double>();
  REQUIRE(q::weight_error(W, qw) == Approx(we).epsilon(1e-12));
  REQUIRE(q::weight_error(W, qw) > 0);
  REQUIRE(q::output_error(W, qw, H) == Approx(measured_output_error(X, W, qw)).epsilon(1e-6));
  // An exactly representable weight has no error.
  const QWeight exact = q::quantize_rtn(dequantize(qw), Scheme{3, 8, false});
  REQUIRE(q::weight_error(dequantize(qw), exact) == 0.0);
}

TEST_CASE("quantize: GPTQ beats RTN on the output error it minimizes", "[quantize]") {
  at::manual_seed(4);
  for (int64_t K : {int64_t{64}, int64_t{172}}) {
    at::Tensor X = correlated_inputs(2048, K);
    at::Tensor H = X.t().mm(X);
    at::Tensor W = at::randn({32, K});
    for (int64_t gs : {int64_t{32}, int64_t{0}}) {
      for (bool act_order : {false, true}) {
        const Scheme s{4, gs, true};
        GptqOptions o;
        o.act_order = act_order;
        INFO(q::describe(s) << " K=" << K << " act_order=" << act_order);
        const QWeight rtn = q::quantize_rtn(W, s);
        const QWeight gptq = q::quantize_gptq(W, H, s, o);
        const double e_rtn = q::output_error(W, rtn, H), e_gptq = q::output_error(W, gptq, H);
        INFO("output error: rtn " << e_rtn << ", gptq " << e_gptq);
        REQUIRE(e_gptq < 0.8 * e_rtn);
        // output_error from H is the error measured on the calibration inputs.
        REQUIRE(e_gptq == Approx(measured_output_error(X, W, gptq)).epsilon(1e-6));
        REQUIRE(e_rtn == Approx(measured_output_error(X, W, rtn)).epsilon(1e-6));
        // The result is a valid QWeight of the scheme: codes in range, float16-exact scales.
        REQUIRE(gptq.q.to(at::kInt).max().item<int>() <= 15);
        REQUIRE(at::equal(gptq.zeros, at::full_like(gptq.zeros, 8)));
        REQUIRE(at::equal(gptq.scales, gptq.scales.to(at::kHalf).to(at::kFloat)));
        REQUIRE(gptq.scales.sizes() == at::IntArrayRef({32, q::num_groups(K, gs)}));
        REQUIRE_NOTHROW(q::pack_gptq(gptq));
      }
    }
  }
}

TEST_CASE("quantize: GPTQ's lazy blocks do not change the result", "[quantize]") {
  at::manual_seed(5);
  const int64_t K = 172;
  at::Tensor X = correlated_inputs(1024, K);
  at::Tensor H = X.t().mm(X);
  at::Tensor W = at::randn({24, K});
  for (int64_t gs : {int64_t{0}, int64_t{16}}) {
    const Scheme s{4, gs, true};
    GptqOptions one_block, small_blocks;
    one_block.block_size = 1024;
    small_blocks.block_size = 40;  // 40 per-channel; 32 with groups of 16
    INFO(q::describe(s));
    const QWeight a = q::quantize_gptq(W, H, s, one_block), b = q::quantize_gptq(W, H, s, small_blocks);
    // The same arithmetic reordered: only float rounding may flip a rare code.
    const double agree = a.q.eq(b.q).to(at::kDouble).mean().item<double>();
    INFO("codes agreeing: " << agree);
    REQUIRE(agree > 0.99);
    REQUIRE(q::output_error(W, a, H) == Approx(q::output_error(W, b, H)).epsilon(0.02));
  }
}

TEST_CASE("quantize: GPTQ with a diagonal H is RTN", "[quantize]") {
  at::manual_seed(6);
  for (int64_t K : {int64_t{64}, int64_t{172}}) {
    at::Tensor W = at::randn({16, K});
    for (int64_t gs : {int64_t{0}, int64_t{32}, int64_t{-1}}) {
      for (bool sym : {true, false}) {
        for (int bits : {2, 4}) {
          const Scheme s{bits, gs, sym};
          INFO(q::describe(s) << " K=" << K);
          for (const at::Tensor& H : {at::eye(K, at::kDouble), at::diag(at::rand({K}, at::kDouble) + 0.5)}) {
            const QWeight rtn = q::quantize_rtn(W, s);
            const QWeight gptq = q::quantize_gptq(W, H, s, GptqOptions{});
            REQUIRE(same(gptq.q, rtn.q));
            REQUIRE(same(gptq.scales, rtn.scales));
            REQUIRE(same(gptq.zeros, rtn.zeros));
            REQUIRE(same(gptq.g_idx, rtn.g_idx));
          }
        }
      }
    }
  }
}

TEST_CASE("quantize: GPTQ fixes the weights of dead inputs to zero", "[quantize]") {
  at::manual_seed(7);
  const int64_t K = 80;
  const std::vector<int64_t> dead = {0, 5, 33, 79};
  at::Tensor X = correlated_inputs(512, K);
  for (int64_t k : dead) X.select(1, k).zero_();
  at::Tensor H = X.t().mm(X);
  for (int64_t k : dead) REQUIRE(H[k][k].item<double>() == 0);
  at::Tensor W = at::randn({16, K}) + 0.5;  // dead columns have sizeable weights to drop
  for (int64_t gs : {int64_t{0}, int64_t{32}}) {
    for (bool sym : {true, false}) {
      for (bool act_order : {false, true}) {
        const Scheme s{4, gs, sym};
        GptqOptions o;
        o.act_order = act_order;
        INFO(q::describe(s) << " act_order=" << act_order);
        const QWeight qw = q::quantize_gptq(W, H, s, o);
        at::Tensor deq = dequantize(qw);
        at::Tensor zero_e = per_element(qw.zeros, qw.g_idx);
        for (int64_t k : dead) {
          INFO("column " << k);
          REQUIRE(at::equal(deq.select(1, k), at::zeros({16})));
          REQUIRE(at::equal(qw.q.select(1, k).to(at::kFloat), zero_e.select(1, k)));
        }
        // The live part of the output is still well approximated.
        REQUIRE(q::output_error(W, qw, H) < 0.2);
      }
    }
  }
}

TEST_CASE("quantize: GPTQ act-order groups", "[quantize]") {
  at::manual_seed(8);
  const int64_t K = 172, gs = 32;
  at::Tensor X = correlated_inputs(1024, K) * (at::rand({1, K}, at::kDouble) * 3 + 0.1);  // spread the diagonal
  at::Tensor H = X.t().mm(X);
  at::Tensor W = at::randn({16, K});
  GptqOptions o;
  o.act_order = true;
  for (bool sym : {true, false}) {
    const QWeight qw = q::quantize_gptq(W, H, Scheme{4, gs, sym}, o);
    const int64_t G = q::num_groups(K, gs);
    REQUIRE(G == 6);
    REQUIRE(qw.g_idx.sizes() == at::IntArrayRef({K}));
    REQUIRE(qw.g_idx.min().item<int>() >= 0);
    REQUIRE(qw.g_idx.max().item<int>() < G);
    // Groups are formed in the order of decreasing H diagonal: 5 full groups, the ragged one last.
    at::Tensor counts = at::bincount(qw.g_idx.to(at::kLong), {}, G);
    REQUIRE(at::equal(counts, at::tensor({32, 32, 32, 32, 32, 12}, at::kLong)));
    at::Tensor order = at::argsort(H.diagonal(), 0, /*descending=*/true);
    at::Tensor g_sorted = qw.g_idx.index_select(0, order).to(at::kLong);
    REQUIRE(at::equal(g_sorted, at::arange(K, at::kLong).div(gs, "floor")));
    // Not the plain k / group_size layout for these inputs.
    REQUIRE_FALSE(at::equal(qw.g_idx, q::group_index(K, gs)));
    // The scales of each group come from its own columns: every value sits inside its group's
    // grid up to the error feedback, and the whole thing packs and dequantizes consistently.
    REQUIRE_NOTHROW(q::pack_gptq(qw));
    REQUIRE(q::weight_error(W, qw) < 0.35);
    const QWeight back = q::unpack_gptq(q::pack_gptq(qw), 4, K, 16, gs);
    REQUIRE(at::equal(dequantize(back), dequantize(qw)));
  }
}

TEST_CASE("quantize: GPTQ rejects a Hessian that is not positive definite", "[quantize]") {
  const int64_t K = 16;
  at::Tensor W = at::randn({4, K});
  for (const at::Tensor& H : {at::eye(K, at::kDouble).neg(), at::ones({K, K}, at::kDouble).mul(-1).add(at::eye(K, at::kDouble) * 0.5)}) {
    const dsk::Error e = error_of([&] { q::quantize_gptq(W, H, Scheme{4, 0, true}, GptqOptions{}); });
    REQUIRE(e.kind() == dsk::Error::Kind::Usage);
    REQUIRE(e.exit_code() == 2);
    REQUIRE_THAT(e.message(), Contains("positive definite"));
    REQUIRE_THAT(e.hint(), Contains("quant.damp"));
  }
  // A wrongly shaped H is an error too, not a crash.
  REQUIRE_THROWS_AS(q::quantize_gptq(W, at::eye(K + 1, at::kDouble), Scheme{4, 0, true}, GptqOptions{}), dsk::Error);
}

TEST_CASE("quantize: scheme validation, names and group arithmetic", "[quantize]") {
  for (int bits : {5, 1, 16, 0, -4}) {
    INFO("bits " << bits);
    const dsk::Error e = error_of([&] { q::check_scheme(Scheme{bits, 32, true}); });
    REQUIRE(e.exit_code() == 2);
    REQUIRE_THAT(e.message(), Contains("quant.bits"));
  }
  for (int64_t gs : {int64_t{12}, int64_t{4}, int64_t{-2}, int64_t{1}, int64_t{2}, int64_t{48}}) {
    INFO("group_size " << gs);
    const dsk::Error e = error_of([&] { q::check_scheme(Scheme{4, gs, true}); });
    REQUIRE(e.exit_code() == 2);
    REQUIRE_THAT(e.message(), Contains("quant.group_size"));
    REQUIRE_FALSE(e.hint().empty());
  }
  for (int bits : {2, 3, 4, 8})
    for (int64_t gs : {int64_t{0}, int64_t{-1}, int64_t{8}, int64_t{32}, int64_t{128}})
      for (bool sym : {true, false}) REQUIRE_NOTHROW(q::check_scheme(Scheme{bits, gs, sym}));

  REQUIRE(q::describe(Scheme{4, 32, true}) == "int4 g32 sym");
  REQUIRE(q::describe(Scheme{8, 0, true}) == "int8 per-channel sym");
  REQUIRE(q::describe(Scheme{3, -1, false}) == "int3 per-tensor asym");

  REQUIRE(q::num_groups(172, 32) == 6);
  REQUIRE(q::num_groups(160, 32) == 5);
  REQUIRE(q::num_groups(5, 16) == 1);
  REQUIRE(q::num_groups(172, 0) == 1);
  REQUIRE(q::num_groups(172, -1) == 1);
  REQUIRE(at::equal(q::group_index(5, 2 * 2), at::tensor({0, 0, 0, 0, 1}, at::kInt)));
  REQUIRE(at::equal(q::group_index(4, 0), at::zeros({4}, at::kInt)));
  REQUIRE(at::equal(q::group_index(4, -1), at::zeros({4}, at::kInt)));
}

TEST_CASE("quantize: stored_bytes is the size of the packed tensors", "[quantize]") {
  at::manual_seed(9);
  auto packed_bytes = [](const q::GptqTensors& t) {
    return t.qweight.numel() * 4 + t.qzeros.numel() * 4 + t.scales.numel() * 2 + t.g_idx.numel() * 4;
  };
  {
    const QWeight qw = q::quantize_rtn(at::randn({64, 172}), Scheme{4, 32, true});
    const q::GptqTensors t = q::pack_gptq(qw);
    REQUIRE(t.qweight.scalar_type() == at::kInt);
    REQUIRE(t.scales.scalar_type() == at::kHalf);
    // qweight [22, 64], qzeros [6, 8], scales [6, 64], g_idx [172].
    REQUIRE(q::stored_bytes(qw) == 22 * 64 * 4 + 6 * 8 * 4 + 6 * 64 * 2 + 172 * 4);
    REQUIRE(q::stored_bytes(qw) == packed_bytes(t));
  }
  for (const auto& shape : std::vector<std::vector<int64_t>>{{64, 172}, {8, 64}, {3, 5}, {13, 37}})
    for (int bits : {2, 3, 4, 8})
      for (int64_t gs : {int64_t{-1}, int64_t{0}, int64_t{16}, int64_t{32}}) {
        const QWeight qw = q::quantize_rtn(at::randn({shape[0], shape[1]}), Scheme{bits, gs, false});
        INFO(q::describe(Scheme{bits, gs, false}) << " " << shape[0] << "x" << shape[1]);
        REQUIRE(q::stored_bytes(qw) == packed_bytes(q::pack_gptq(qw)));
      }
}

TEST_CASE("quantize: qlinear forward and activation fake-quantization", "[quantize]") {
  at::manual_seed(10);
  const int64_t N = 24, K = 40;
  const QWeight w = q::quantize_rtn(at::randn({N, K}), Scheme{4, 8, true});
  const at::Tensor deq = dequantize(w);
  const at::Tensor bias = at::randn({N});
  at::Tensor x = at::randn({3, 5, K}) * at::linspace(0.1, 4.0, 5).reshape({1, 5, 1});

  SECTION("weight-only") {
    q::QLinear l{w, q::ActMode::None, 0.0f, {}, {}};
    at::Tensor y = q::qlinear_forward(x, l, bias);
    REQUIRE(y.sizes() == at::IntArrayRef({3, 5, N}));
    REQUIRE(at::equal(y, at::linear(x, deq, bias)));
    REQUIRE(at::equal(q::qlinear_forward(x, l, at::Tensor()), at::linear(x, deq)));
    at::Tensor xb = x.to(at::kBFloat16);
    REQUIRE(q::qlinear_forward(xb, l, bias.to(at::kBFloat16)).scalar_type() == at::kBFloat16);
  }
  SECTION("dynamic: per-row int8 levels") {
    q::QLinear l{w, q::ActMode::Dynamic, 0.0f, {}, {}};
    at::Tensor fq = q::fake_quant_act_dynamic(x);
    REQUIRE(fq.sizes() == x.sizes());
    REQUIRE(at::equal(q::qlinear_forward(x, l, bias), at::linear(fq, deq, bias)));
    REQUIRE_FALSE(at::equal(fq, x));
    at::Tensor xr = x.reshape({-1, K}), fr = fq.reshape({-1, K});
    for (int64_t r = 0; r < xr.size(0); ++r) {
      INFO("row " << r);
      at::Tensor row = xr[r], frow = fr[r];
      const float amax = row.abs().max().item<float>();
      const float step = amax / 127.0f;
      at::Tensor lv = frow / step;
      // Integral levels in [-127, 127]: at most 255 distinct values.
      REQUIRE((lv - lv.round()).abs().max().item<float>() < 1e-3f);
      REQUIRE(lv.abs().max().item<float>() <= 127.0f + 1e-3f);
      REQUIRE(std::get<0>(at::_unique(frow)).numel() <= 255);
      // The largest magnitude is the ±127 level and keeps its value (to float rounding).
      const int64_t arg = row.abs().argmax().item<int64_t>();
      REQUIRE(std::lround(lv[arg].item<float>()) == (row[arg].item<float>() > 0 ? 127 : -127));
      REQUIRE(frow[arg].item<float>() == Approx(row[arg].item<float>()).epsilon(1e-6));
      // Everything else within half a step.
      REQUIRE((frow - row).abs().max().item<float>() <= step * 0.5f * (1 + 1e-5f));
    }
    // A long row still has at most 255 levels.
    at::Tensor longrow = q::fake_quant_act_dynamic(at::randn({2, 5000}));
    for (int64_t r = 0; r < 2; ++r) {
      const int64_t distinct = std::get<0>(at::_unique(longrow[r])).numel();
      REQUIRE(distinct <= 255);
      REQUIRE(distinct > 100);
    }
    // A zero row stays zero (no division by zero).
    REQUIRE(at::equal(q::fake_quant_act_dynamic(at::zeros({2, K})), at::zeros({2, K})));
  }
  SECTION("static: one step, clamped beyond 127 steps") {
    const float s = 0.01f;  // 127 * s = 1.27, well inside x's range
    q::QLinear l{w, q::ActMode::Static, s, {}, {}};
    at::Tensor fq = q::fake_quant_act_static(x, s);
    REQUIRE(at::equal(q::qlinear_forward(x, l, bias), at::linear(fq, deq, bias)));
    at::Tensor big = x.abs() > 127 * s;
    REQUIRE(big.any().item<bool>());
    REQUIRE(at::equal(fq.masked_select(big), (x.sign() * (127 * s)).masked_select(big)));
    at::Tensor inside = big.logical_not();
    REQUIRE(((fq - x).abs().masked_select(inside)).max().item<float>() <= s * 0.5f * (1 + 1e-5f));
    at::Tensor lv = fq / s;
    REQUIRE((lv - lv.round()).abs().max().item<float>() < 1e-3f);
  }
  SECTION("activation mode names") {
    REQUIRE(q::act_mode_from("none") == q::ActMode::None);
    REQUIRE(q::act_mode_from("dynamic") == q::ActMode::Dynamic);
    REQUIRE(q::act_mode_from("static") == q::ActMode::Static);
    REQUIRE(std::string(q::act_mode_name(q::ActMode::Static)) == "static");
    const dsk::Error e = error_of([] { q::act_mode_from("int8"); });
    REQUIRE(e.exit_code() == 2);
    REQUIRE_THAT(e.message(), Contains("quant.activations"));
  }
}

TEST_CASE("quantize: make_qlinear's kernel paths (act-order permutation, decode and prefill) match dequantize",
          "[quantize][qlinear]") {
  at::manual_seed(11);
  const int64_t N = 48, K = 172;
  at::Tensor W = at::randn({N, K});
  at::Tensor X = at::randn({512, K}) * at::rand({K}).mul_(3);
  at::Tensor H = X.t().mm(X).to(at::kDouble);
  for (bool act_order : {false, true})
    for (int64_t gs : {int64_t{32}, int64_t{0}}) {
      INFO("act_order " << act_order << " group " << gs);
      q::GptqOptions o;
      o.act_order = act_order;
      QWeight qw = q::quantize_gptq(W, H, Scheme{4, gs, true}, o);
      at::Tensor deq = dequantize(qw);
      auto l = q::make_qlinear(qw);
      REQUIRE(l->kernel.codes.defined());  // the kernels can run it
      CHECK(l->perm.defined() == (act_order && gs > 0));
      at::Tensor bias = at::randn({N});
      for (int64_t rows : {1, 4, 64}) {  // decode (codes) and prefill (dequantized) paths
        at::Tensor x = at::randn({2, rows, K});
        at::Tensor y = q::qlinear_forward(x, *l, bias);
        REQUIRE(y.sizes() == at::IntArrayRef({2, rows, N}));
        CHECK((y - at::linear(x, deq, bias)).abs().max().item<float>() < 1e-4);
      }
    }
}
