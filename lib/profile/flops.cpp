// FLOP formulas and the matmul micro-benchmark: see profile/flops.h.
#include "profile/flops.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <fmt/format.h>
#include <torch/cuda.h>

#include <algorithm>

#include "profile/phases.h"

namespace dsk::profile {

double train_flops_per_token(int64_t n_trainable, int64_t n_frozen, int64_t layers, int64_t dim, int64_t seq_len) {
  return 6.0 * static_cast<double>(n_trainable) + 4.0 * static_cast<double>(n_frozen) +
         12.0 * static_cast<double>(layers) * static_cast<double>(dim) * static_cast<double>(seq_len);
}

double forward_flops_per_token(int64_t n_params, int64_t layers, int64_t dim, int64_t seq_len) {
  return 2.0 * static_cast<double>(n_params) +
         4.0 * static_cast<double>(layers) * static_cast<double>(dim) * static_cast<double>(seq_len);
}

PeakFlops measure_peak_flops(c10::Device device, at::ScalarType dtype, int reps) {
  const bool cuda = device.is_cuda();
  const int64_t n = cuda ? 8192 : dtype == at::kFloat ? 2048 : 1024;
  auto opts = at::TensorOptions().device(device).dtype(dtype);
  at::Tensor a = at::randn({n, n}, opts.dtype(at::kFloat)).to(dtype);  // [n, n]
  at::Tensor b = at::randn({n, n}, opts.dtype(at::kFloat)).to(dtype);  // [n, n]
  at::Tensor c = at::mm(a, b);                                         // warm-up
  if (cuda) torch::cuda::synchronize();
  double best_us = 0;
  const double budget_us = 3e6;  // stop early on slow (emulated) types
  const double t_begin = steady_us();
  for (int r = 0; r < reps; ++r) {
    const double t0 = steady_us();
    at::mm_out(c, a, b);
    if (cuda) torch::cuda::synchronize();
    const double dt = steady_us() - t0;
    if (r == 0 || dt < best_us) best_us = dt;
    if (steady_us() - t_begin > budget_us && r >= 1) break;
  }
  PeakFlops p;
  p.flops = 2.0 * static_cast<double>(n) * static_cast<double>(n) * static_cast<double>(n) / (best_us * 1e-6);
  p.method = fmt::format("measured: best of up to {} {}x{} {} matmuls on {}{}", reps, n, n, c10::toString(dtype),
                         cuda ? "CUDA" : "CPU", cuda ? "" : fmt::format(" ({} threads)", at::get_num_threads()));
  return p;
}

}  // namespace dsk::profile
