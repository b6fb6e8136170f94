#include "models/linear.h"

#include <cmath>

#include "core/error.h"

namespace dsk::models {

LoraLinearImpl::LoraLinearImpl(int64_t in_features, int64_t out_features, bool with_bias,
                               at::TensorOptions options)
    : in_features_(in_features), out_features_(out_features) {
  weight = register_parameter("weight", at::empty({out_features, in_features}, options));
  if (with_bias) bias = register_parameter("bias", at::empty({out_features}, options));
}

at::Tensor LoraLinearImpl::forward(const at::Tensor& x) {
  if (input_observer) input_observer(x);
  at::Tensor y;  // [..., out]
  if (qlinear_)
    y = quant::qlinear_forward(x, *qlinear_, bias);
  else if (fake_quant_)
    y = at::linear(quant::fake_quantize_input(x, fake_quant_->act), quant::fake_quantize_weight(weight, fake_quant_->scheme),
                   bias);
  else
    y = at::linear(x, weight, bias);
  if (lora_A_) {
    at::Tensor xd = lora_dropout_ > 0.0 ? at::dropout(x, lora_dropout_, is_training()) : x;
    at::Tensor low;  // [..., out]
    if (sparsity_mask_.defined())  // the update keeps the pruned weights at zero: x (keep * BA)^T
      low = at::linear(xd, at::mm(lora_B_->weight, lora_A_->weight).mul(sparsity_mask_));
    else
      low = at::linear(at::linear(xd, lora_A_->weight), lora_B_->weight);
    y = y.add_(low, lora_scale_);
  }
  return y;
}

void LoraLinearImpl::attach_lora(int64_t r, double scale, double dropout) {
  if (r <= 0) fail_usage("LoRA rank r must be positive, got {}", r);
  if (dropout < 0.0 || dropout >= 1.0) fail_usage("LoRA dropout must be in [0, 1), got {}", dropout);
  if (lora_A_) detach_lora();
  auto opts = weight.options().requires_grad(false);
  at::Tensor a = at::empty({r, in_features()}, opts);  // [r, in]
  at::Tensor b = at::zeros({out_features(), r}, opts);  // [out, r]
  {
    at::NoGradGuard no_grad;
    // kaiming_uniform_(a=sqrt(5)) over fan_in = in: gain sqrt(2/(1+5)), bound = gain*sqrt(3/fan_in)
    // = 1/sqrt(fan_in) — the nn.Linear default PEFT keeps for lora_A.
    double bound = 1.0 / std::sqrt(static_cast<double>(in_features()));
    a.uniform_(-bound, bound);
  }
  a.set_requires_grad(true);
  b.set_requires_grad(true);
  lora_A_ = register_module("lora_A", std::make_shared<WeightImpl>(a));
  lora_B_ = register_module("lora_B", std::make_shared<WeightImpl>(b));
  lora_scale_ = scale;
  lora_dropout_ = dropout;
  weight.set_requires_grad(false);
  if (bias.defined()) bias.set_requires_grad(false);
}

void LoraLinearImpl::detach_lora() {
  if (!lora_A_) return;
  unregister_module("lora_A");
  unregister_module("lora_B");
  lora_A_.reset();
  lora_B_.reset();
  lora_scale_ = 0.0;
  lora_dropout_ = 0.0;
}

void LoraLinearImpl::set_quantized(std::shared_ptr<const quant::QLinear> q) {
  DSK_CHECK(q != nullptr, "set_quantized: no quantized weight");
  DSK_CHECK(q->weight.out_features() == out_features_ && q->weight.in_features() == in_features_,
            "quantized weight {}x{} for a linear layer {}x{}", q->weight.out_features(), q->weight.in_features(),
            out_features_, in_features_);
  qlinear_ = std::move(q);
  at::NoGradGuard no_grad;
  weight.set_requires_grad(false);
  weight.set_data(at::empty({0}, weight.options()));
}

void LoraLinearImpl::merge_lora() {
  if (!lora_A_) return;
  if (qlinear_)
    fail_usage_hint("cannot merge a LoRA adapter into a quantized layer",
                    "save the adapter (adapter/) and apply it to the full-precision base model, or quantize after merging");
  {
    at::NoGradGuard no_grad;
    at::Tensor delta = at::mm(lora_B_->weight.to(at::kFloat), lora_A_->weight.to(at::kFloat));  // [out, in]
    if (sparsity_mask_.defined()) delta.mul_(sparsity_mask_);
    weight.add_(delta.mul_(lora_scale_).to(weight.dtype()));
  }
  detach_lora();
}

void LoraLinearImpl::set_sparsity_mask(at::Tensor keep) {
  if (keep.defined()) {
    DSK_CHECK(keep.scalar_type() == at::kBool && keep.dim() == 2 && keep.size(0) == out_features_ &&
                  keep.size(1) == in_features_,
              "sparsity mask must be bool [{}, {}]", out_features_, in_features_);
    keep = keep.to(weight.device());
  }
  sparsity_mask_ = std::move(keep);
}

const at::Tensor& LoraLinearImpl::lora_A() const {
  DSK_CHECK(lora_A_ != nullptr, "linear layer has no LoRA adapter");
  return lora_A_->weight;
}

const at::Tensor& LoraLinearImpl::lora_B() const {
  DSK_CHECK(lora_B_ != nullptr, "linear layer has no LoRA adapter");
  return lora_B_->weight;
}

}  // namespace dsk::models
