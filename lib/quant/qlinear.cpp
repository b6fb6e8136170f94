#include "quant/qlinear.h"

#include <fmt/format.h>

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

at::Tensor qlinear_forward(const at::Tensor& x, const QLinear& q, const at::Tensor& bias) {
  at::Tensor xin = x;
  if (q.act == ActMode::Dynamic) xin = fake_quant_act_dynamic(x);
  if (q.act == ActMode::Static) xin = fake_quant_act_static(x, q.input_scale);
  at::Tensor w = dequantize(q.weight).to(x.device(), x.scalar_type());
  return at::linear(xin, w, bias);
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
