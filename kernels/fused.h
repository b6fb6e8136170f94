// Fused operators for the Llama blocks (docs/kernels.md): one pass over memory instead of the
// five to eight that the composite ATen expressions take, and fewer saved activations.
//
// Each op has
//   * the fused path: a torch::autograd::Function whose forward and backward are our own loops
//     (kernels/cpu/), taken for CPU tensors of one floating dtype (float32 with an AVX2+FMA
//     version picked at run time; float64, bfloat16 and float16 by the portable loop), and
//   * `*_reference`: the composite ATen expression it replaces, which runs everywhere else
//     (CUDA, mixed dtypes) and is what the tests compare against.
// The fused path computes in float32 (float64 for float64 inputs) and rounds once at the end, so
// for 16-bit inputs it is at least as accurate as the composite, which rounds after every op.
//
// DSK_FUSED_KERNELS=0 in the environment routes every call to the reference (for A/B benchmarks).
#pragma once

#include <ATen/ATen.h>

namespace dsk::kernels {

// weight * x / sqrt(mean(x^2, -1) + eps): RMSNorm over the last dimension (Llama, T5).
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
at::Tensor rms_norm_reference(const at::Tensor& x, const at::Tensor& weight, double eps);

// silu(gate) * up: the SwiGLU gate of Llama's MLP.
at::Tensor swiglu(const at::Tensor& gate, const at::Tensor& up);
at::Tensor swiglu_reference(const at::Tensor& gate, const at::Tensor& up);

// Whether rms_norm / swiglu take the fused path for these arguments (the tests use it to make
// sure they test the kernel and not the fallback).
bool rms_norm_fused(const at::Tensor& x, const at::Tensor& weight);
bool swiglu_fused(const at::Tensor& gate, const at::Tensor& up);

// Whether the float32 loops run their AVX2+FMA version on this CPU.
bool cpu_has_avx2_fma();

}  // namespace dsk::kernels
