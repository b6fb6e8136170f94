// Mixed precision: the autocast region and the dynamic loss scaler.
#include <ATen/ATen.h>
#include <catch2/catch.hpp>

#include <limits>

#include "train/amp.h"

using dsk::train::AutocastGuard;
using dsk::train::LossScaler;

TEST_CASE("AutocastGuard: matmuls run in bf16 inside and fp32 after, fp32 is a no-op, nesting restores", "[amp]") {
  at::Tensor a = at::randn({4, 8}), b = at::randn({8, 3});
  {
    AutocastGuard outer(c10::Device(c10::kCPU), at::kBFloat16);
    CHECK(at::mm(a, b).scalar_type() == at::kBFloat16);
    {
      AutocastGuard off(c10::Device(c10::kCPU), at::kFloat);
      CHECK(at::mm(a, b).scalar_type() == at::kBFloat16);  // fp32 does not switch autocast off
    }
    CHECK(at::mm(a, b).scalar_type() == at::kBFloat16);
  }
  CHECK(at::mm(a, b).scalar_type() == at::kFloat);
  {
    AutocastGuard none(c10::Device(c10::kCPU), at::kFloat);
    CHECK(at::mm(a, b).scalar_type() == at::kFloat);
  }
}

TEST_CASE("LossScaler: unscale divides and detects overflow, backoff on inf, growth after the interval", "[amp]") {
  LossScaler s(true, 1024.0, 2.0, 0.5, 3);
  at::Tensor p = at::zeros({3}).requires_grad_(true);
  p.mutable_grad() = at::full({3}, 2048.0);
  CHECK(s.unscale({p}));
  CHECK(at::allclose(p.grad(), at::full({3}, 2.0)));
  s.update(false);
  s.update(false);
  CHECK(s.scale() == 1024.0);
  s.update(false);  // third clean step: grows
  CHECK(s.scale() == 2048.0);
  p.mutable_grad() = at::tensor({1.0f, std::numeric_limits<float>::infinity(), 0.0f});
  CHECK_FALSE(s.unscale({p}));
  s.update(true);
  CHECK(s.scale() == 1024.0);
  CHECK(s.skipped() == 1);
  // A checkpoint round trip keeps scale, clean-step count and skips.
  s.update(false);
  LossScaler t(true, 1.0, 2.0, 0.5, 3);
  t.load_state(s.state());
  CHECK(t.scale() == 1024.0);
  t.update(false);
  t.update(false);
  CHECK(t.scale() == 2048.0);  // 1 clean step before the save + 2 after = the interval of 3
  CHECK(t.skipped() == 1);
  // Disabled: scale 1, gradients untouched.
  LossScaler off(false);
  p.mutable_grad() = at::full({3}, 5.0);
  CHECK(off.scale() == 1.0);
  CHECK(off.unscale({p}));
  CHECK(at::allclose(p.grad(), at::full({3}, 5.0)));
}
