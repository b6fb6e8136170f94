// The forward of a quantized linear layer: y = act_quant(x) W_q^T + b.
//
// Activations (W8A8): none (weight-only), dynamic (per token: each row of x gets the scale
// max|x_row| / 127 and is rounded to int8 levels), static (one scale per layer from calibration:
// input_scale = max|x| over the calibration set / 127; values beyond it clamp).
//
// This version computes in floating point: activations are rounded to their int8 levels
// (the exact values an int8 kernel sees), the weight is dequantized per call into a temporary
// that is freed after the GEMM, so memory holds only the codes and scales between calls. Integer
// kernels replace these paths without changing the numbers (docs/quantization.md).
#pragma once

#include <ATen/ATen.h>

#include <string>

#include "quant/pack.h"
#include "quant/quantize.h"

namespace dsk::quant {

enum class ActMode { None, Dynamic, Static };

ActMode act_mode_from(const std::string& name);  // "none" | "dynamic" | "static" (usage error otherwise)
const char* act_mode_name(ActMode m);

struct QLinear {
  QWeight weight;
  ActMode act = ActMode::None;
  float input_scale = 0.0f;  // ActMode::Static: the int8 step of the layer's inputs
};

// x [..., K] -> [..., N] in x's dtype. bias may be undefined.
at::Tensor qlinear_forward(const at::Tensor& x, const QLinear& q, const at::Tensor& bias);

// The int8 levels activations are rounded to: per row (dynamic) or with one step (static).
at::Tensor fake_quant_act_dynamic(const at::Tensor& x);
at::Tensor fake_quant_act_static(const at::Tensor& x, float step);

// Quantization-aware training: the forward sees exactly the values the quantized layer will use
// (RTN codes of the current weight, int8 levels of the inputs); the backward passes gradients
// straight through the rounding (straight-through estimator). Converting the trained weight with
// quantize_rtn(scheme) afterwards gives the layer that computes what training computed.
struct FakeQuant {
  Scheme scheme;
  ActMode act = ActMode::None;  // None or Dynamic
};
at::Tensor fake_quantize_weight(const at::Tensor& weight, const Scheme& s);
at::Tensor fake_quantize_input(const at::Tensor& x, ActMode act);

}  // namespace dsk::quant
