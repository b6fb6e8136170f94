#include "quant/qlinear.h"

#include <ATen/core/grad_mode.h>
#include <fmt/format.h>

#include <vector>

#include "core/error.h"

namespace dsk::quant {

ActMode act_mode_from(const std::string& name) {
  if (name == "none") return ActMode::None;
  if (name == "dynamic") return ActMode::Dynamic;
  if (name == "static") return ActMode::Static;
  fail_usage_hint(fmt::format("quant.activations: '{}' is not a mode", name),
                  "use none (weight-only), dynamic (per-token int8) or static (int8 scales from calibration)");
}

const char* act_mode_name(ActMode m) {
  switch (m) {
    case ActMode::Dynamic: return "dynamic";
    case ActMode::Static: return "static";
    default: return "none";
  }
}

at::Tensor fake_quant_act_dynamic(const at::Tensor& x) {
  at::Tensor xf = x.to(at::kFloat);
  at::Tensor step = xf.abs().amax(-1, true).clamp_min(1e-12) / 127.0;
  return (xf / step).round().clamp(-127, 127).mul(step).to(x.scalar_type());
}

at::Tensor fake_quant_act_static(const at::Tensor& x, float step) {
  at::Tensor xf = x.to(at::kFloat);
  return (xf / step).round().clamp(-127, 127).mul(step).to(x.scalar_type());
}

std::shared_ptr<QLinear> make_qlinear(QWeight raw, ActMode act, float input_scale) {
  at::NoGradGuard no_grad;
  QWeight w = validated(raw);  // once, at load: the forward trusts these tensors
  auto q = std::make_shared<QLinear>();
  const int64_t K = w.in_features();
  const int64_t gs = w.group_size > 0 ? w.group_size : 0;
  at::Tensor g_idx = w.g_idx.to(at::kLong);
  at::Tensor codes = w.q.contiguous();
  bool usable = true;
  if (gs > 0) {
    at::Tensor natural = at::arange(K, at::kLong).div(gs, "floor");
    if (!at::equal(g_idx, natural)) {
      // act-order: sort the columns by group; the kernels need group g at [g * gs, ...)
      at::Tensor perm = std::get<1>(at::sort(g_idx, /*stable=*/true, 0, false));
      usable = at::equal(g_idx.index_select(0, perm), natural);
      if (usable) {
        q->perm = perm;
        codes = codes.index_select(1, perm).contiguous();
      }
    }
  }
  if (usable) {
    q->kernel.codes = codes;
    q->kernel.scales = w.scales.to(at::kFloat).contiguous();
    q->kernel.zeros = w.zeros.to(at::kInt).contiguous();
    q->kernel.group_size = gs;
  }
  q->weight = std::move(w);
  q->act = act;
  q->input_scale = input_scale;
  return q;
}

at::Tensor qlinear_forward(const at::Tensor& x, const QLinear& q, const at::Tensor& bias) {
  auto act = [&](const at::Tensor& t) {
    if (q.act == ActMode::Dynamic) return fake_quant_act_dynamic(t);
    if (q.act == ActMode::Static) return fake_quant_act_static(t, q.input_scale);
    return t;
  };
  if (q.kernel.codes.defined() && x.device().is_cpu() && x.scalar_type() == at::kFloat) {
    const int64_t K = q.weight.in_features(), N = q.weight.out_features();
    at::Tensor x2 = act(x.reshape({-1, K}));
    if (q.perm.defined()) x2 = x2.index_select(1, q.perm);
    // few rows and no gradient needed (decoding): straight from the codes
    const bool small = x2.size(0) <= 8 && !(at::GradMode::is_enabled() && x2.requires_grad());
    at::Tensor y = small ? kernels::qgemm_small(x2, q.kernel) : at::mm(x2, kernels::dequantize(q.kernel).t());
    if (bias.defined()) y = y + bias;
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = N;
    return y.view(shape);
  }
  at::Tensor w = dequantize(q.weight).to(x.device(), x.scalar_type());
  return at::linear(act(x), w, bias);
}

at::Tensor fake_quantize_weight(const at::Tensor& weight, const Scheme& s) {
  at::Tensor deq;
  {
    at::NoGradGuard no_grad;
    deq = dequantize(quantize_rtn(weight, s)).to(weight.device(), weight.scalar_type());
  }
  return weight + (deq - weight.detach());  // value deq, gradient 1 with respect to weight
}

at::Tensor fake_quantize_input(const at::Tensor& x, ActMode act) {
  if (act == ActMode::None) return x;
  DSK_CHECK(act == ActMode::Dynamic, "fake quantization of inputs supports dynamic int8 only");
  at::Tensor q;
  {
    at::NoGradGuard no_grad;
    q = fake_quant_act_dynamic(x.detach());
  }
  return x + (q - x.detach());
}

}  // namespace dsk::quant
