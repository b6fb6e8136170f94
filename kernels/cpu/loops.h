// The CPU loops behind kernels/fused.h. Inputs are contiguous CPU tensors of one floating dtype;
// x-like tensors are viewed as [rows, C]. The *_backward functions return undefined tensors for
// the gradients not asked for.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace dsk::kernels::cpu {

// y = weight * x * inv_rms; inv_rms [rows] in float32 (float64 for float64 inputs), saved for
// the backward pass.
std::tuple<at::Tensor, at::Tensor> rms_norm_forward(const at::Tensor& x, const at::Tensor& weight, double eps);
std::tuple<at::Tensor, at::Tensor> rms_norm_backward(const at::Tensor& grad_y, const at::Tensor& x,
                                                     const at::Tensor& weight, const at::Tensor& inv_rms,
                                                     bool need_x, bool need_weight);

at::Tensor swiglu_forward(const at::Tensor& gate, const at::Tensor& up);
std::tuple<at::Tensor, at::Tensor> swiglu_backward(const at::Tensor& grad_y, const at::Tensor& gate,
                                                   const at::Tensor& up, bool need_gate, bool need_up);

bool has_avx2_fma();

}  // namespace dsk::kernels::cpu
