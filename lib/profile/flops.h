// FLOP counts of a Llama-family step and the peak they are compared with (docs/profiling.md).
//
// Per token, with N the parameters that take part in matrix products (linear weights, the
// classifier; not the embedding lookup), L layers, d the hidden size, T the sequence length:
//   training      6·N_trainable + 4·N_frozen + 12·L·d·T
//   forward only  2·N + 4·L·d·T
// A matmul weight costs 2 FLOPs per token forward, 2 for the input gradient and 2 for its own
// gradient, which frozen weights (LoRA's base) skip. The attention term counts the full T×T
// scores and values (PaLM's appendix, as docs/benchmarks.md); forward only is a third of it.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <string>

namespace dsk::profile {

double train_flops_per_token(int64_t n_trainable, int64_t n_frozen, int64_t layers, int64_t dim, int64_t seq_len);
double forward_flops_per_token(int64_t n_params, int64_t layers, int64_t dim, int64_t seq_len);

struct PeakFlops {
  double flops = 0;    // FLOP/s
  std::string method;  // how it was obtained, for the report
};

// Best of `reps` n×n matrix products in `dtype` on `device` (n: 2048 for fp32, 1024 for a
// 16-bit type on CPU, 8192 on CUDA), on the threads the run uses.
PeakFlops measure_peak_flops(c10::Device device, at::ScalarType dtype, int reps = 10);

}  // namespace dsk::profile
