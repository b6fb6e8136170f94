// dsk's in-memory quantized weight (QWeight) and its conversion to and from the GPTQ tensor
// layout that Hugging Face transformers / optimum load (quant_method "gptq", checkpoint_format
// "gptq", i.e. AutoGPTQ's "v1" layout).
//
// GPTQ layout of one linear layer, W [N, K] (N = out_features, K = in_features), G groups:
//   qweight  int32   [ceil(K * bits / 32), N]  codes packed along K
//   qzeros   int32   [G, ceil(N * bits / 32)]  (zero - 1) & (2^bits - 1), packed along N
//   scales   float16 [G, N]
//   g_idx    int32   [K]                       group of each input column
// Packing: along the packed dimension the values form one little-endian bit stream; element e
// occupies bits [e * bits, (e + 1) * bits) of the stream, and stream bit s is bit s % 32 of
// word s / 32. For 2, 4 and 8 bits this is AutoGPTQ's rule (value j of word i is element
// i * 32/bits + j at bit offset j * bits). For 3 bits AutoGPTQ writes 32 values into 3 words
// with elements 10 and 21 split across word boundaries; spelled out, that is exactly the same
// bit stream, so one rule covers every width.
//
// Ragged widths (a dsk extension): when K (or N, for qzeros) is not a multiple of 32 / bits
// (of 32 for 3 bits), the last word is completed with zero bits, hence the ceil() row counts.
// Only dsk loads such tensors — AutoGPTQ's kernels need K % (32 / bits) == 0 — and unpacking
// ignores the padding bits.
//
// Zero points: v1 stores zero - 1 masked to `bits`, and its readers add 1 back. dsk unpacks
// ((stored + 1) & mask), the exact inverse, so every zero point in [0, 2^bits - 1] round-trips.
// The one that differs elsewhere is 0 (asymmetric RTN gives it when a row's minimum is 0): it
// is stored as 2^bits - 1, which AutoGPTQ's v1 loader reads back as 2^bits (it adds 1 without
// masking) and so dequantises that group shifted by 2^bits * scale. pack_gptq counts such
// zero points in GptqTensors::zero_wraps so the caller can warn. Symmetric schemes use
// 2^(bits-1) and never hit it.
//
// Scales are stored as float16; unpacking returns them as float32. A round trip is bit-exact
// only when the in-memory scales are already float16 values (quantize.h rounds them so).
//
// Group sizes: GPTQ's group_size -1 means one group over all of K — dsk's per-channel (0).
// dsk's per-tensor scheme (-1: one group, one scale shared by every row) is stored the same
// way; the tensors cannot tell the two apart, so unpack_gptq takes the dsk group_size from
// the caller.
//
// Errors: malformed input in either direction is dsk::fail (exit 1) naming the tensor
// (q, scales, zeros, g_idx / qweight, qzeros, scales, g_idx) and what is wrong; callers add
// the layer's name as context.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace dsk::quant {

// A linear layer's weight W [N, K] (N = out_features, K = in_features) quantized to `bits`:
//   W[n, k] ~= (q[n, k] - zeros[n, g_idx[k]]) * scales[n, g_idx[k]]
struct QWeight {
  int bits = 4;              // 2, 3, 4 or 8
  int64_t group_size = 0;    // > 0 group-wise, 0 per-channel (one group), -1 per-tensor (one group, the same scale in every row)
  at::Tensor q;              // [N, K] uint8 codes in [0, 2^bits - 1]
  at::Tensor scales;         // [N, G] float32
  at::Tensor zeros;          // [N, G] int32 zero points in [0, 2^bits - 1] (symmetric schemes: 2^(bits-1))
  at::Tensor g_idx;          // [K] int32, the group of each input column, in [0, G)
  int64_t out_features() const { return q.size(0); }
  int64_t in_features() const { return q.size(1); }
  int64_t groups() const { return scales.size(1); }
};

// The checks of pack_gptq (bits, dtypes, shapes, codes, zero points and g_idx in range, finite
// scales): w's tensors as CPU contiguous ones, or dsk::fail naming the tensor.
QWeight validated(const QWeight& w);

// float32 [N, K] on the CPU. Validates w first.
at::Tensor dequantize(const QWeight& w);

struct GptqTensors {
  at::Tensor qweight;      // int32 [ceil(K * bits / 32), N]: codes packed along K
  at::Tensor qzeros;       // int32 [G, ceil(N * bits / 32)]: (zero - 1) & mask packed along N
  at::Tensor scales;       // float16 [G, N]
  at::Tensor g_idx;        // int32 [K]
  int64_t zero_wraps = 0;  // zero points equal to 0, which v1 readers other than dsk misread (see above)
};

// Validates w (bits, dtypes, shapes, G = ceil(K / group_size) or 1, codes, zero points and
// g_idx in range, finite scales, one scale for all rows when per-tensor) and packs it; scales
// beyond float16's range are an error. Accepts tensors on any device; the result is on the CPU.
GptqTensors pack_gptq(const QWeight& w);

// The inverse of pack_gptq for a layer of the given shape; t.zero_wraps is ignored. g_idx may
// be undefined (checkpoints without act-order sometimes omit it): it is then k / group_size,
// or 0 for group_size <= 0. G is taken from scales and must be ceil(K / group_size), or 1.
QWeight unpack_gptq(const GptqTensors& t, int bits, int64_t in_features, int64_t out_features, int64_t group_size);

}  // namespace dsk::quant
