// kernels/fused.h against the ATen expressions they replace: values and gradients over shapes
// (widths that are and are not multiples of the 8-float vectors, one row, many rows), dtypes
// (float32 with and without the AVX2 path's tails, float64, bfloat16, float16), frozen inputs, and
// thread counts (results must not depend on them).
// LibTorch before Catch2: c10's logging header defines its own CHECK, which must not replace Catch's.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/torch.h>

#include <catch2/catch.hpp>

#include <vector>

#include "kernels/fused.h"

using namespace dsk;

namespace {

struct Tol {
  double rtol, atol;
};

Tol tol_for(at::ScalarType t) {
  switch (t) {
    case at::kDouble: return {1e-12, 1e-12};
    case at::kFloat: return {1e-5, 1e-6};
    default: return {2e-2, 2e-2};  // one 16-bit rounding of either side
  }
}

// The reference in float64 from the same (possibly rounded) inputs, cast back to the dtype.
at::Tensor rms_ref64(const at::Tensor& x, const at::Tensor& w, double eps) {
  at::Tensor xd = x.to(at::kDouble), wd = w.to(at::kDouble);
  return wd * xd * at::rsqrt(xd.square().mean(-1, true) + eps);
}

at::Tensor swiglu_ref64(const at::Tensor& g, const at::Tensor& u) {
  return at::silu(g.to(at::kDouble)) * u.to(at::kDouble);
}

void check_close(const at::Tensor& got, const at::Tensor& want, Tol t, const char* what) {
  INFO(what << ": max abs diff " << (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>());
  CHECK(got.scalar_type() == want.scalar_type());
  CHECK(got.sizes() == want.sizes());
  CHECK(at::allclose(got.to(at::kDouble), want.to(at::kDouble), t.rtol, t.atol));
}

const std::vector<std::vector<int64_t>> kShapes = {{1, 8}, {3, 7}, {2, 5, 64}, {4, 33, 100}, {257, 13}, {2, 64, 512}};
const std::vector<at::ScalarType> kTypes = {at::kFloat, at::kDouble, at::kBFloat16, at::kHalf};

}  // namespace

TEST_CASE("kernels: fused RMSNorm matches the float64 reference, values and gradients", "[kernels]") {
  for (auto dtype : kTypes)
    for (const auto& shape : kShapes) {
      INFO("dtype " << dtype << " shape " << at::IntArrayRef(shape));
      torch::manual_seed(1);
      const int64_t C = shape.back();
      at::Tensor x = (torch::randn(shape, at::kDouble) * 3).to(dtype).requires_grad_(true);
      at::Tensor w = (torch::rand({C}, at::kDouble) + 0.5).to(dtype).requires_grad_(true);
      REQUIRE(kernels::rms_norm_fused(x, w));
      at::Tensor y = kernels::rms_norm(x, w, 1e-5);
      at::Tensor dy = torch::randn(shape, at::kDouble).to(dtype);
      auto g = torch::autograd::grad({y}, {x, w}, {dy});

      at::Tensor xr = x.detach().to(at::kDouble).requires_grad_(true), wr = w.detach().to(at::kDouble).requires_grad_(true);
      at::Tensor yr = rms_ref64(xr, wr, 1e-5);
      auto gr = torch::autograd::grad({yr}, {xr, wr}, {dy.to(at::kDouble)});
      const Tol t = tol_for(dtype);
      check_close(y, yr.to(dtype), t, "y");
      check_close(g[0], gr[0].to(dtype), t, "dx");
      // dw sums over every row: scale the tolerance with the magnitude of the sum
      const double scale = gr[1].abs().max().item<double>() + 1;
      check_close(g[1], gr[1].to(dtype), {t.rtol, t.atol * scale}, "dw");
    }
}

TEST_CASE("kernels: fused RMSNorm equals the composite expression it replaces in float32", "[kernels]") {
  torch::manual_seed(2);
  at::Tensor x = torch::randn({8, 16, 96}).requires_grad_(true);
  at::Tensor w = torch::rand({96}).add_(0.5).requires_grad_(true);
  at::Tensor y = kernels::rms_norm(x, w, 1e-6);
  at::Tensor yr = kernels::rms_norm_reference(x, w, 1e-6);
  CHECK((y - yr).abs().max().item<float>() < 2e-6);
  at::Tensor dy = torch::randn_like(y);
  auto g = torch::autograd::grad({y}, {x, w}, {dy});
  auto gr = torch::autograd::grad({yr}, {x, w}, {dy});
  CHECK((g[0] - gr[0]).abs().max().item<float>() < 1e-5);
  CHECK((g[1] - gr[1]).abs().max().item<float>() < 1e-3 * (gr[1].abs().max().item<float>() + 1));
}

TEST_CASE("kernels: fused SwiGLU matches the float64 reference, values and gradients", "[kernels]") {
  for (auto dtype : kTypes)
    for (const auto& shape : kShapes) {
      INFO("dtype " << dtype << " shape " << at::IntArrayRef(shape));
      torch::manual_seed(3);
      // gate values out to +-40 reach the sigmoid's saturated ends
      at::Tensor gt = (torch::randn(shape, at::kDouble) * 6).to(dtype);
      gt.view(-1)[0] = 40;
      if (gt.numel() > 1) gt.view(-1)[1] = -40;
      at::Tensor gate = gt.requires_grad_(true);
      at::Tensor up = torch::randn(shape, at::kDouble).to(dtype).requires_grad_(true);
      REQUIRE(kernels::swiglu_fused(gate, up));
      at::Tensor y = kernels::swiglu(gate, up);
      at::Tensor dy = torch::randn(shape, at::kDouble).to(dtype);
      auto g = torch::autograd::grad({y}, {gate, up}, {dy});

      at::Tensor gr_ = gate.detach().to(at::kDouble).requires_grad_(true), ur = up.detach().to(at::kDouble).requires_grad_(true);
      at::Tensor yr = swiglu_ref64(gr_, ur);
      auto gr = torch::autograd::grad({yr}, {gr_, ur}, {dy.to(at::kDouble)});
      const Tol t = tol_for(dtype);
      check_close(y, yr.to(dtype), t, "y");
      check_close(g[0], gr[0].to(dtype), t, "dgate");
      check_close(g[1], gr[1].to(dtype), t, "dup");
      CHECK(at::isfinite(g[0]).all().item<bool>());
    }
}

TEST_CASE("kernels: frozen inputs get no gradient work and the trainable one is still right", "[kernels]") {
  torch::manual_seed(4);
  at::Tensor x = torch::randn({5, 40}).requires_grad_(true);
  at::Tensor w = torch::rand({40}).add_(0.5);  // frozen (a LoRA base)
  at::Tensor dy = torch::randn({5, 40});
  auto g = torch::autograd::grad({kernels::rms_norm(x, w, 1e-5)}, {x}, {dy});
  auto gr = torch::autograd::grad({kernels::rms_norm_reference(x, w, 1e-5)}, {x}, {dy});
  CHECK((g[0] - gr[0]).abs().max().item<float>() < 1e-5);

  at::Tensor gate = torch::randn({5, 40});
  at::Tensor up = torch::randn({5, 40}).requires_grad_(true);
  auto h = torch::autograd::grad({kernels::swiglu(gate, up)}, {up}, {dy});
  CHECK((h[0] - dy * at::silu(gate)).abs().max().item<float>() < 1e-6);
}

TEST_CASE("kernels: results do not depend on the number of threads", "[kernels]") {
  torch::manual_seed(5);
  at::Tensor x = torch::randn({300, 77}).requires_grad_(true);
  at::Tensor w = torch::rand({77}).add_(0.5).requires_grad_(true);
  at::Tensor u = torch::randn({300, 77}).requires_grad_(true);
  at::Tensor dy = torch::randn({300, 77});
  const int before = at::get_num_threads();
  std::vector<std::vector<at::Tensor>> runs;
  for (int threads : {1, 2, 3}) {
    at::set_num_threads(threads);
    at::Tensor y = kernels::rms_norm(x, w, 1e-5);
    at::Tensor z = kernels::swiglu(x, u);
    auto g = torch::autograd::grad({y, z}, {x, w, u}, {dy, dy});
    runs.push_back({y, z, g[0], g[1], g[2]});
  }
  at::set_num_threads(before);
  for (size_t r = 1; r < runs.size(); ++r)
    for (size_t i = 0; i < runs[0].size(); ++i) CHECK(at::equal(runs[0][i], runs[r][i]));
}

TEST_CASE("kernels: non-contiguous inputs and the fallback cases", "[kernels]") {
  torch::manual_seed(6);
  at::Tensor base = torch::randn({6, 32});
  at::Tensor x = base.t();  // [32, 6], not contiguous
  at::Tensor w = torch::rand({6}).add_(0.5);
  CHECK((kernels::rms_norm(x, w, 1e-5) - kernels::rms_norm_reference(x, w, 1e-5)).abs().max().item<float>() < 1e-6);
  // mixed dtypes (bf16 activations, fp32 weight) take the composite expression, with its promotion
  at::Tensor xb = torch::randn({4, 16}).to(at::kBFloat16);
  at::Tensor wf = torch::rand({16});
  CHECK_FALSE(kernels::rms_norm_fused(xb, wf));
  CHECK(kernels::rms_norm(xb, wf, 1e-5).scalar_type() == at::kFloat);
  CHECK_FALSE(kernels::swiglu_fused(torch::randn({4}), torch::randn({4}).to(at::kDouble)));
  CHECK_FALSE(kernels::rms_norm_fused(torch::randn({4, 16}), torch::rand({8})));
}
