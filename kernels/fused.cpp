// Autograd functions and dispatch for kernels/fused.h.
#include "kernels/fused.h"

#include "kernels/cpu/loops.h"

#include <torch/csrc/autograd/custom_function.h>

#include <cstdlib>
#include <cstring>

namespace dsk::kernels {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool enabled() {
  static const bool on = [] {
    const char* v = std::getenv("DSK_FUSED_KERNELS");
    return !(v && std::strcmp(v, "0") == 0);
  }();
  return on;
}

bool floating(const at::Tensor& t) {
  const auto s = t.scalar_type();
  return s == at::kFloat || s == at::kDouble || s == at::kBFloat16 || s == at::kHalf;
}

struct RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, double eps) {
    at::Tensor xc = x.contiguous(), wc = weight.contiguous();
    auto [y, inv] = cpu::rms_norm_forward(xc, wc, eps);
    ctx->save_for_backward({xc, wc, inv});
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto [dx, dw] = cpu::rms_norm_backward(grads[0].contiguous(), saved[0], saved[1], saved[2],
                                           ctx->needs_input_grad(0), ctx->needs_input_grad(1));
    return {dx, dw, at::Tensor()};
  }
};

struct SwigluFunction : public torch::autograd::Function<SwigluFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& gate, const at::Tensor& up) {
    at::Tensor g = gate.contiguous(), u = up.contiguous();
    ctx->save_for_backward({g, u});
    return cpu::swiglu_forward(g, u);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    auto [dg, du] = cpu::swiglu_backward(grads[0].contiguous(), saved[0], saved[1], ctx->needs_input_grad(0),
                                         ctx->needs_input_grad(1));
    return {dg, du};
  }
};

}  // namespace

bool cpu_has_avx2_fma() { return cpu::has_avx2_fma(); }

bool rms_norm_fused(const at::Tensor& x, const at::Tensor& weight) {
  return enabled() && x.device().is_cpu() && weight.device().is_cpu() && floating(x) &&
         x.scalar_type() == weight.scalar_type() && x.dim() >= 1 && weight.dim() == 1 &&
         weight.size(0) == x.size(-1) && x.size(-1) > 0;
}

bool swiglu_fused(const at::Tensor& gate, const at::Tensor& up) {
  return enabled() && gate.device().is_cpu() && up.device().is_cpu() && floating(gate) &&
         gate.scalar_type() == up.scalar_type() && gate.sizes() == up.sizes();
}

at::Tensor rms_norm_reference(const at::Tensor& x, const at::Tensor& weight, double eps) {
  at::Tensor xf = x.to(at::kFloat);  // no copy when already fp32
  at::Tensor inv_rms = at::rsqrt(xf.square().mean(-1, true).add_(eps));
  return weight * (xf * inv_rms).to(x.scalar_type());
}

at::Tensor swiglu_reference(const at::Tensor& gate, const at::Tensor& up) { return at::silu(gate) * up; }

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  if (!rms_norm_fused(x, weight)) return rms_norm_reference(x, weight, eps);
  return RmsNormFunction::apply(x, weight, eps);
}

at::Tensor swiglu(const at::Tensor& gate, const at::Tensor& up) {
  if (!swiglu_fused(gate, up)) return swiglu_reference(gate, up);
  return SwigluFunction::apply(gate, up);
}

}  // namespace dsk::kernels
