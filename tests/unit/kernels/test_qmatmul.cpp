// kernels/qmatmul.h against a float64 evaluation of W[n, k] = (codes - zero) * scale.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <catch2/catch.hpp>

#include <vector>

#include "kernels/qmatmul.h"

namespace {

struct Case {
  int64_t N, K, group_size;
};

dsk::kernels::QMatrix random_qmatrix(const Case& c, int bits, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  const int64_t G = c.group_size > 0 ? (c.K + c.group_size - 1) / c.group_size : 1;
  dsk::kernels::QMatrix w;
  w.codes = at::randint(0, 1 << bits, {c.N, c.K}, gen, at::kLong).to(at::kByte);
  w.scales = at::rand({c.N, G}, gen).add_(0.01f).mul_(0.1f);
  w.zeros = at::randint(0, 1 << bits, {c.N, G}, gen, at::kLong).to(at::kInt);
  w.group_size = c.group_size;
  return w;
}

at::Tensor reference_weight(const dsk::kernels::QMatrix& w) {
  const int64_t K = w.codes.size(1);
  at::Tensor g = w.group_size > 0 ? at::arange(K, at::kLong).div(w.group_size, "floor") : at::zeros({K}, at::kLong);
  at::Tensor s = w.scales.to(at::kDouble).index_select(1, g), z = w.zeros.to(at::kDouble).index_select(1, g);
  return (w.codes.to(at::kDouble) - z) * s;
}

}  // namespace

TEST_CASE("kernels: quantized dequantize and small-M GEMM match the float64 reference", "[kernels][qmatmul]") {
  const std::vector<Case> cases = {{64, 172, 32}, {172, 64, 32}, {5, 37, 16}, {33, 256, 0}, {1, 1, 0}, {17, 100, 128}};
  for (const auto& c : cases)
    for (int bits : {4, 8}) {
      INFO("N " << c.N << " K " << c.K << " group " << c.group_size << " bits " << bits);
      auto w = random_qmatrix(c, bits, 7 + c.N);
      at::Tensor ref = reference_weight(w);
      at::Tensor deq = dsk::kernels::dequantize(w);
      CHECK(deq.scalar_type() == at::kFloat);
      CHECK(at::allclose(deq.to(at::kDouble), ref, 1e-6, 1e-6));
      for (int64_t M : {1, 3, 8, 17}) {
        INFO("M " << M);
        at::Tensor x = at::randn({M, c.K});
        at::Tensor y = dsk::kernels::qgemm_small(x, w);
        at::Tensor want = x.to(at::kDouble).mm(ref.t());
        REQUIRE(y.sizes() == at::IntArrayRef({M, c.N}));
        const double scale = want.abs().max().item<double>() + 1;
        CHECK((y.to(at::kDouble) - want).abs().max().item<double>() < 1e-4 * scale);
      }
    }
}

TEST_CASE("kernels: small-M quantized GEMM does not depend on the thread count", "[kernels][qmatmul]") {
  auto w = random_qmatrix({300, 172, 32}, 4, 3);
  at::Tensor x = at::randn({2, 172});
  const int before = at::get_num_threads();
  at::set_num_threads(1);
  at::Tensor a = dsk::kernels::qgemm_small(x, w), da = dsk::kernels::dequantize(w);
  at::set_num_threads(3);
  at::Tensor b = dsk::kernels::qgemm_small(x, w), db = dsk::kernels::dequantize(w);
  at::set_num_threads(before);
  CHECK(at::equal(a, b));
  CHECK(at::equal(da, db));
}
