// Operator events from LibTorch's profiler and what the report makes of them (docs/profiling.md).
//
// OpProfiler wraps the profiler API (torch/csrc/autograd/profiler_kineto.h; the 1.13 / 2.x
// differences are in core/torch_compat.h): CPU operators with their input shapes, and on CUDA
// runs the device activity (kernels, memcpy). Debian's 1.13 is built without Kineto: the events
// are still collected in-process, and dsk writes the Chrome trace itself (profile/trace.h).
//
// Self time: an operator's duration minus the durations of the operators directly nested in it
// on the same thread (aten::linear -> aten::addmm -> ...), so the self times of one thread add up
// to the time spent inside its outermost operators. Device events have no nesting.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dsk::profile {

struct OpEvent {
  std::string name;    // "aten::addmm", or a CUDA kernel name
  uint64_t tid = 0;    // thread (CPU) or stream (device)
  double start_us = 0; // microseconds since the Unix epoch
  double dur_us = 0;
  std::string shapes;  // input shapes "[[8, 256, 64], [64, 64]]" ("" when not recorded)
  bool device = false; // a device (CUDA) activity rather than a CPU operator
};

class OpProfiler {
 public:
  OpProfiler() = default;
  ~OpProfiler();
  OpProfiler(const OpProfiler&) = delete;
  OpProfiler& operator=(const OpProfiler&) = delete;
  // record_shapes: input shapes of each operator; cuda: device activity too.
  void start(bool record_shapes, bool cuda);
  std::vector<OpEvent> stop();
  bool active() const { return active_; }

 private:
  bool active_ = false;
};

// Self time of each event (same order), by nesting on each thread.
std::vector<double> self_times_us(const std::vector<OpEvent>& events);

struct OpStat {
  std::string name;
  std::string shapes;
  bool device = false;
  int64_t calls = 0;
  double self_us = 0;
  double total_us = 0;
};

// Aggregated by (name, shapes, device), most self time first, at most n (0: all).
std::vector<OpStat> aggregate_ops(const std::vector<OpEvent>& events, size_t n);

// Operator classes the verdict weighs: matrix products (mm, addmm, bmm, baddbmm, matmul, linear,
// dot, conv, GEMM kernels) and the rest (elementwise, copies, reductions, indexing).
bool is_matmul_op(const std::string& name);

}  // namespace dsk::profile
