// The one place where LibTorch 1.13 (Debian, CPU) and 2.x (the CUDA wheel) differ for dsk.
// Everything else includes this header instead of testing TORCH_VERSION_* itself.
//
//   autocast      1.13: set_cpu_enabled / set_enabled(+ gpu dtype); 2.x: per-device-type calls
//   c10d          2.x: ProcessGroupGloo/NCCL derive from c10d::Backend; 1.13: from ProcessGroup
//   attention     2.x has at::scaled_dot_product_attention (flash / memory-efficient kernels on
//                 CUDA); 1.13 has not, and dsk uses its own baddbmm + softmax + bmm path
//   profiler      KinetoEvent times: startUs()/durationUs() up to 2.0, startNs()/durationNs() from
//                 2.1 (both since the Unix epoch); the profiler API itself (prepareProfiler,
//                 enableProfiler, disableProfiler) is the same
#pragma once

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <utility>

#define DSK_TORCH2 (TORCH_VERSION_MAJOR >= 2)
#define DSK_HAS_SDPA DSK_TORCH2
#define DSK_PROFILER_NS (TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1))

namespace c10d {
class Backend;
class ProcessGroup;
}  // namespace c10d

namespace dsk::compat {

// What ProcessGroupGloo / ProcessGroupNCCL derive from (the type dsk holds them by).
#if DSK_TORCH2
using ProcessGroupBase = c10d::Backend;
#else
using ProcessGroupBase = c10d::ProcessGroup;
#endif

inline bool autocast_enabled(c10::DeviceType type) {
#if DSK_TORCH2
  return at::autocast::is_autocast_enabled(type);
#else
  return type == c10::DeviceType::CUDA ? at::autocast::is_enabled() : at::autocast::is_cpu_enabled();
#endif
}

inline at::ScalarType autocast_dtype(c10::DeviceType type) {
#if DSK_TORCH2
  return at::autocast::get_autocast_dtype(type);
#else
  return type == c10::DeviceType::CUDA ? at::autocast::get_autocast_gpu_dtype() : at::autocast::get_autocast_cpu_dtype();
#endif
}

inline void set_autocast(c10::DeviceType type, bool enabled, at::ScalarType dtype) {
#if DSK_TORCH2
  at::autocast::set_autocast_enabled(type, enabled);
  at::autocast::set_autocast_dtype(type, dtype);
#else
  if (type == c10::DeviceType::CUDA) {
    at::autocast::set_enabled(enabled);
    at::autocast::set_autocast_gpu_dtype(dtype);
  } else {
    at::autocast::set_cpu_enabled(enabled);
    at::autocast::set_autocast_cpu_dtype(dtype);
  }
#endif
}

#if DSK_HAS_SDPA
// Causal attention q [B, H, T, D], k/v [B, H, T, D] -> [B, H, T, D] through PyTorch's fused kernels.
inline at::Tensor causal_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  return at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true);
}
#endif

// {start, duration} of a profiler event (a torch::autograd::profiler::KinetoEvent) in
// microseconds; the start counts from the Unix epoch.
template <typename Event>
std::pair<double, double> profiler_event_times_us(const Event& e) {
#if DSK_PROFILER_NS
  return {static_cast<double>(e.startNs()) / 1000.0, static_cast<double>(e.durationNs()) / 1000.0};
#else
  return {static_cast<double>(e.startUs()), static_cast<double>(e.durationUs())};
#endif
}

}  // namespace dsk::compat
