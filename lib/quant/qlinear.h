// The forward of a quantized linear layer: y = act_quant(x) W_q^T + b.
//
// Activations (W8A8): none (weight-only), dynamic (per token: each row of x gets the scale
// max|x_row| / 127 and is rounded to int8 levels), static (one scale per layer from calibration:
// input_scale = max|x| over the calibration set / 127; values beyond it clamp).
//
// Weights stay as codes between calls. On CPU a call with a few rows of x (decoding) multiplies
// straight from the codes (kernels::qgemm_small: 1 byte read per weight); a call with many rows
// (prefill, eval) dequantizes the weight into a temporary float matrix freed after the GEMM.
// Activations of W8A8 schemes are rounded to their int8 levels (the values an int8 kernel sees);
// the GEMM itself runs in float32 (no integer GEMM yet, docs/quantization.md).
#pragma once

#include <ATen/ATen.h>

#include <memory>
#include <string>

#include "kernels/qmatmul.h"

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
  // Prepared by make_qlinear for the CPU kernels (kernels/qmatmul.h): the codes with contiguous
  // column groups and, for act-order weights, the column permutation that makes them so
  // (undefined when the groups already are). kernel.codes is undefined when g_idx has a form the
  // kernels cannot use (then the layer dequantizes through QWeight).
  kernels::QMatrix kernel;
  at::Tensor perm;  // int64 [K]
};

// The one way to build a quantized layer: validates w and prepares the kernel form.
std::shared_ptr<QLinear> make_qlinear(QWeight w, ActMode act = ActMode::None, float input_scale = 0.0f);

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
