// Phase timers and the memory sampler behind `dsk profile` (docs/profiling.md).
//
// A PhaseTimer splits each measured step into consecutive intervals, one phase each: the loop
// calls enter(phase) where a phase begins, so the intervals tile the step and nothing is counted
// twice. Only measured steps are recorded (set_measuring); a loop without a timer (every normal
// run) passes nullptr and pays one pointer test per boundary (enter_phase). "other" is what the
// named phases leave of the wall time of the measured steps: wall − sum(named), the time between
// and around the instrumented calls (logging, progress, loop bookkeeping).
//
// The MemorySampler reads the resident set size (/proc/self/statm) every interval_ms on a thread
// of its own, plus an optional device reading (CUDA allocator statistics on GPU runs).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace dsk::profile {

// defines: Phase, PhaseTimer, enter_phase, StepScope, MemorySampler, rss_bytes, cuda_memory_reader

enum class Phase : int { Data, Forward, Backward, Optimizer, Communication, Checkpoint, Eval, Other };
constexpr int kPhaseCount = 8;
// "data", "forward", "backward", "optimizer", "communication", "checkpoint", "eval", "other"
const char* phase_name(Phase p);

// Microseconds on the steady clock, and what to add to one to get microseconds since the Unix
// epoch (the clock of the LibTorch profiler's events).
double steady_us();
double epoch_offset_us();

struct PhaseInterval {
  Phase phase;
  int64_t step;
  double start_us;  // steady clock
  double dur_us;
};

class PhaseTimer {
 public:
  // Called at each phase boundary on GPU runs (a device synchronize), so that asynchronous
  // kernels are counted in the phase that launched them.
  void set_sync(std::function<void()> sync) { sync_ = std::move(sync); }
  void set_measuring(bool on) { measuring_ = on; }
  bool measuring() const { return measuring_; }

  void begin_step(int64_t step);  // opens "other" until the first enter()
  void enter(Phase p);
  void end_step();

  // Over the measured steps.
  int64_t steps() const { return steps_; }
  double wall_us() const { return first_start_us_ < 0 ? 0.0 : last_end_us_ - first_start_us_; }
  double phase_us(Phase p) const { return totals_[static_cast<int>(p)]; }
  const std::vector<double>& step_us() const { return step_us_; }
  const std::vector<PhaseInterval>& intervals() const { return intervals_; }

 private:
  void close(double now);

  std::function<void()> sync_;
  bool measuring_ = false;
  bool in_step_ = false;
  Phase current_ = Phase::Other;
  int64_t step_ = 0, steps_ = 0;
  double open_us_ = 0, step_start_us_ = 0, first_start_us_ = -1, last_end_us_ = 0;
  double totals_[kPhaseCount] = {};
  std::vector<double> step_us_;
  std::vector<PhaseInterval> intervals_;
};

// The instrumented loops call this: a no-op without a timer.
inline void enter_phase(PhaseTimer* t, Phase p) {
  if (t) t->enter(p);
}

// One step of an instrumented loop: begin_step here, end_step when the scope ends (also on
// continue, break or an exception).
class StepScope {
 public:
  StepScope(PhaseTimer* t, int64_t step) : t_(t) {
    if (t_) t_->begin_step(step);
  }
  ~StepScope() {
    if (t_) t_->end_step();
  }
  StepScope(const StepScope&) = delete;
  StepScope& operator=(const StepScope&) = delete;

 private:
  PhaseTimer* t_;
};

// Resident set size of this process in bytes (0 where /proc is unavailable).
int64_t rss_bytes();
// Total physical memory in bytes (/proc/meminfo MemTotal; 0 when unknown).
int64_t total_memory_bytes();

struct MemorySample {
  double t_us;           // steady clock
  int64_t rss = 0;       // bytes
  int64_t device = -1;   // bytes allocated on the device (-1: no device reading)
  int64_t device_reserved = -1;
};

// Reads {allocated, reserved} bytes of the CUDA caching allocator on `device_index`; an empty
// function in builds without CUDA (DSK_WITH_CUDA).
std::function<std::pair<int64_t, int64_t>()> cuda_memory_reader(int device_index);

class MemorySampler {
 public:
  // device(): {allocated, reserved} bytes, or empty for CPU runs.
  explicit MemorySampler(int interval_ms, std::function<std::pair<int64_t, int64_t>()> device = {});
  ~MemorySampler();
  MemorySampler(const MemorySampler&) = delete;
  MemorySampler& operator=(const MemorySampler&) = delete;
  void stop();  // joins the thread (idempotent); samples once more at the end
  std::vector<MemorySample> samples() const;

 private:
  void sample();
  int interval_ms_;
  std::function<std::pair<int64_t, int64_t>()> device_;
  std::atomic<bool> stop_{false};
  mutable std::mutex mu_;
  std::vector<MemorySample> samples_;
  std::thread thread_;
};

}  // namespace dsk::profile
