// LoraLinear — the linear layer of the Llama modules: y = x W^T + b, plus an optional LoRA branch
//   y += scale * B(A(dropout(x)))          A [r, in], B [out, r], scale = alpha / r
// Parameter names: "weight" [out, in], "bias" [out] (only when constructed with bias), and while
// an adapter is attached the submodules "lora_A" and "lora_B", each holding one "weight". Under a
// Llama that gives "model.layers.0.self_attn.q_proj.lora_A.weight" — the PEFT key without its
// "base_model.model." prefix. attach/detach/merge are driven by models/lora.h.
#pragma once

#include <ATen/ATen.h>
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

#include <functional>
#include <memory>

#include "quant/qlinear.h"

namespace dsk::models {

// A module that holds one parameter named "weight" (embeddings, norms, LoRA factors).
class WeightImpl : public torch::nn::Module {
 public:
  explicit WeightImpl(at::Tensor w) { weight = register_parameter("weight", std::move(w)); }
  at::Tensor weight;
};

class LoraLinearImpl : public torch::nn::Module {
 public:
  // Weights are allocated uninitialized with `options`; the owner initializes them.
  LoraLinearImpl(int64_t in_features, int64_t out_features, bool bias, at::TensorOptions options);

  at::Tensor forward(const at::Tensor& x);  // [..., in] -> [..., out]

  // Adds a LoRA adapter of rank r and output scale `scale` (A kaiming-uniform(a=sqrt(5)) as PEFT does, B zeros) with the
  // base weight's dtype and device, and freezes the base weight and bias. Replaces an existing one.
  void attach_lora(int64_t r, double scale, double dropout);
  // Removes the adapter without touching the base weight.
  void detach_lora();
  // weight += scale * B @ A (computed in fp32), then removes the adapter.
  void merge_lora();
  bool has_lora() const { return lora_A_ != nullptr; }
  const at::Tensor& lora_A() const;  // [r, in]
  const at::Tensor& lora_B() const;  // [out, r]
  double lora_scale() const { return lora_scale_; }

  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }

  // A quantized base (dsk quantize, or a GPTQ-layout checkpoint): the layer then computes with
  // the codes and scales (quant::qlinear_forward), `weight` is emptied (0 elements, frozen) and
  // the state lists the packed tensors instead (models::state_tensors). A LoRA adapter on top
  // trains as usual (QLoRA).
  void set_quantized(std::shared_ptr<const quant::QLinear> q);
  const quant::QLinear* quantized() const { return qlinear_.get(); }
  // Quantization-aware training: the forward fake-quantizes the weight (and inputs) with this
  // scheme; null turns it off.
  void set_fake_quant(std::shared_ptr<const quant::FakeQuant> fq) { fake_quant_ = std::move(fq); }
  const quant::FakeQuant* fake_quant() const { return fake_quant_.get(); }

  // Pruned weights (dsk prune; docs/pruning.md): keep [out, in] bool, true where the weight may be
  // nonzero. While set, a LoRA adapter's update is masked too (y += scale * x (keep * BA)^T, and
  // merge_lora adds keep * BA), so the zeros survive LoRA fine-tuning and merging; full training
  // keeps them by masking gradients and weights (stages/trainer). Undefined: no mask.
  void set_sparsity_mask(at::Tensor keep);
  const at::Tensor& sparsity_mask() const { return sparsity_mask_; }

  // Called with every input x before the forward (calibration statistics); empty: none.
  std::function<void(const at::Tensor&)> input_observer;

  at::Tensor weight;  // [out, in]; [0] when quantized
  at::Tensor bias;    // [out], undefined when constructed without bias

 private:
  int64_t in_features_ = 0, out_features_ = 0;
  std::shared_ptr<const quant::QLinear> qlinear_;
  std::shared_ptr<const quant::FakeQuant> fake_quant_;
  at::Tensor sparsity_mask_;  // bool [out, in], or undefined
  std::shared_ptr<WeightImpl> lora_A_, lora_B_;
  double lora_scale_ = 0.0;
  double lora_dropout_ = 0.0;
};
TORCH_MODULE(LoraLinear);

}  // namespace dsk::models
