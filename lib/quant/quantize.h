// Weight quantization: round-to-nearest (RTN) and GPTQ, for the schemes of `dsk quantize`
// (docs/quantization.md): 2/3/4/8 bits; per-tensor, per-channel or group-wise scales along the
// input dimension; symmetric or asymmetric (zero points).
//
// Conventions (what every function here produces; lib/quant/pack.h holds QWeight and the
// GPTQ tensor layout):
//   * codes are unsigned, q in [0, 2^b - 1], and W ~= (q - zero) * scale;
//   * symmetric: zero = 2^(b-1), scale = max|w| / (2^(b-1) - 1), so -max|w| and +max|w| are
//     exact and the code 0 (one step below -max) stays unused except by GPTQ's error feedback;
//   * asymmetric: the range [min(w, 0), max(w, 0)] over 2^b - 1 steps, zero = round(-min/scale);
//   * group-wise: column k belongs to group k / group_size; when the input width is not a
//     multiple of group_size the last group is shorter ("ragged"), with scales of its own — the
//     rule for shapes such as stories260K's 172-wide down-projection;
//   * scales are rounded up to a float16 value when computed (the GPTQ layout stores float16),
//     so a saved and reloaded model computes exactly what the in-memory one did, and rounding
//     never shrinks the grid below the weights' range; an all-zero group gets the smallest
//     positive float16.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

#include "quant/pack.h"

namespace dsk::quant {

struct Scheme {
  int bits = 4;
  int64_t group_size = 32;  // > 0 group-wise, 0 per-channel, -1 per-tensor
  bool symmetric = true;
};

// "int4 g32 sym", "int8 per-channel sym", ...
std::string describe(const Scheme& s);

// Usage error (exit 2) for unsupported bits or group sizes, naming the key and what is allowed.
void check_scheme(const Scheme& s);

int64_t num_groups(int64_t in_features, int64_t group_size);

// [K] int32: k / group_size for group-wise schemes, zeros otherwise.
at::Tensor group_index(int64_t in_features, int64_t group_size);

// W [N, K] (any float dtype) -> codes, float16-exact scales, zero points.
QWeight quantize_rtn(const at::Tensor& weight, const Scheme& s);

struct GptqOptions {
  double damp = 0.01;        // added to H's diagonal, as a fraction of its mean
  int64_t block_size = 128;  // columns per lazy-update block (rounded to a multiple of group_size)
  bool act_order = false;    // quantize columns in order of decreasing H diagonal (desc_act)
};

// GPTQ (Frantar et al. 2022): quantizes W [N, K] column by column, spreading each column's
// rounding error over the columns not yet quantized through the inverse Hessian of the layer's
// squared output error, H = sum over calibration inputs x of x x^T ([K, K]). With act_order the
// groups are formed in the permuted order and g_idx records each column's group (the GPTQ
// desc_act layout). Throws a usage error when H is not positive definite after damping.
QWeight quantize_gptq(const at::Tensor& weight, const at::Tensor& hessian, const Scheme& s, const GptqOptions& o);

// Errors of a quantized weight against the original: relative Frobenius error of the weight,
// and, given H = sum x x^T of the layer's inputs, the relative error of the layer's outputs on
// those inputs, sqrt(tr(D H D^T) / tr(W H W^T)) with D = W - dequantize(q).
double weight_error(const at::Tensor& weight, const QWeight& q);
double output_error(const at::Tensor& weight, const QWeight& q, const at::Tensor& hessian);

// Bytes of a quantized weight as stored: packed codes, float16 scales, packed zero points and
// the int32 group index.
int64_t stored_bytes(const QWeight& q);

}  // namespace dsk::quant
