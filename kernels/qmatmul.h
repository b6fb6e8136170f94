// CPU kernels for weight-only quantized linear layers (docs/kernels.md, docs/quantization.md).
//
// The weight is held as codes (one uint8 per weight, any width up to 8 bits) with per-row,
// per-group scales and zero points over *contiguous* column groups: group g covers columns
// [g * group_size, min(K, (g + 1) * group_size)) (the last may be shorter), or all K columns when
// group_size <= 0. Act-order checkpoints are brought into this form once at load by permuting the
// columns (quant::make_qlinear), and the inputs are permuted to match.
//
//   W[n, k] = (codes[n, k] - zeros[n, g(k)]) * scales[n, g(k)]
//
// qgemm_small computes x W^T for a few rows of x (decoding: M = batch) straight from the codes:
// each weight row is read once as bytes and converted to float in an L1-resident row buffer, the
// products of each group accumulate in a vector that is scaled into the row's total, and the zero
// points are applied once per group through the group sums of x — so a decode step reads 1 byte
// per weight from memory instead of 4, where the float GEMV is memory-bound. For many rows (prefill, eval) a float GEMM
// on the dequantized weight is faster: dequantize() writes it in parallel.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace dsk::kernels {

struct QMatrix {
  at::Tensor codes;    // uint8 [N, K], contiguous
  at::Tensor scales;   // float32 [N, G], contiguous
  at::Tensor zeros;    // int32 [N, G], contiguous
  int64_t group_size;  // > 0: contiguous groups of this size; <= 0: one group
};

// float32 [N, K].
at::Tensor dequantize(const QMatrix& w);

// x [M, K] float32 -> [M, N] float32, for small M (any M is correct; it pays off for M <= 8).
at::Tensor qgemm_small(const at::Tensor& x, const QMatrix& w);

}  // namespace dsk::kernels
