// Phase timers and the memory sampler: see profile/phases.h.
#include "profile/phases.h"

#if DSK_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <tuple>

namespace dsk::profile {

const char* phase_name(Phase p) {
  static const char* const kNames[kPhaseCount] = {"data",       "forward",    "backward", "optimizer",
                                                  "communication", "checkpoint", "eval",     "other"};
  return kNames[static_cast<int>(p)];
}

double steady_us() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double epoch_offset_us() {
  const double sys =
      std::chrono::duration<double, std::micro>(std::chrono::system_clock::now().time_since_epoch()).count();
  return sys - steady_us();
}

// ---------------------------------------------------------------------------
// PhaseTimer

void PhaseTimer::close(double now) {
  const double dur = now - open_us_;
  totals_[static_cast<int>(current_)] += dur;
  intervals_.push_back({current_, step_, open_us_, dur});
  open_us_ = now;
}

void PhaseTimer::begin_step(int64_t step) {
  if (!measuring_) return;
  if (sync_) sync_();
  const double now = steady_us();
  in_step_ = true;
  step_ = step;
  current_ = Phase::Other;
  open_us_ = step_start_us_ = now;
  if (first_start_us_ < 0) first_start_us_ = now;
}

void PhaseTimer::enter(Phase p) {
  if (!measuring_ || !in_step_ || p == current_) return;
  if (sync_) sync_();
  close(steady_us());
  current_ = p;
}

void PhaseTimer::end_step() {
  if (!measuring_ || !in_step_) return;
  if (sync_) sync_();
  const double now = steady_us();
  close(now);
  in_step_ = false;
  ++steps_;
  step_us_.push_back(now - step_start_us_);
  last_end_us_ = now;
}

// ---------------------------------------------------------------------------
// Memory

int64_t rss_bytes() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  long size = 0, resident = 0;
  const int n = std::fscanf(f, "%ld %ld", &size, &resident);
  std::fclose(f);
  return n == 2 ? static_cast<int64_t>(resident) * static_cast<int64_t>(sysconf(_SC_PAGESIZE)) : 0;
}

int64_t total_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (in >> key >> kb >> unit)
    if (key == "MemTotal:") return kb * 1024;
  return 0;
}

std::function<std::pair<int64_t, int64_t>()> cuda_memory_reader(int device_index) {
#if DSK_WITH_CUDA
  return [device_index] {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device_index));
    constexpr size_t kAggregate = 0;  // StatType::AGGREGATE, whose namespace moved between releases
    return std::make_pair(static_cast<int64_t>(stats.allocated_bytes[kAggregate].current),
                          static_cast<int64_t>(stats.reserved_bytes[kAggregate].current));
  };
#else
  (void)device_index;
  return {};
#endif
}

MemorySampler::MemorySampler(int interval_ms, std::function<std::pair<int64_t, int64_t>()> device)
    : interval_ms_(interval_ms < 1 ? 1 : interval_ms), device_(std::move(device)) {
  sample();
  thread_ = std::thread([this] {
    while (!stop_.load()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms_));
      if (!stop_.load()) sample();
    }
  });
}

MemorySampler::~MemorySampler() { stop(); }

void MemorySampler::stop() {
  if (!thread_.joinable()) return;
  stop_ = true;
  thread_.join();
  sample();
}

void MemorySampler::sample() {
  MemorySample s;
  s.t_us = steady_us();
  s.rss = rss_bytes();
  if (device_) std::tie(s.device, s.device_reserved) = device_();
  std::lock_guard<std::mutex> lock(mu_);
  samples_.push_back(s);
}

std::vector<MemorySample> MemorySampler::samples() const {
  std::lock_guard<std::mutex> lock(mu_);
  return samples_;
}

}  // namespace dsk::profile
