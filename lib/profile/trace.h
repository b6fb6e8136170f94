// trace.json: the profile as Chrome trace events (opens in Perfetto and chrome://tracing),
// written by dsk because Debian's LibTorch has no Kineto to save one.
//
//   {"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}
//   "X" complete events (ts, dur in µs from the earliest event): operators on their thread,
//       device activity on "cuda stream N" threads, dsk's phases on a thread of their own
//   "C" counter events: resident memory (and device memory) in MiB
//   "M" metadata: process and thread names
#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "profile/ops.h"
#include "profile/phases.h"

namespace dsk::profile {

// Thread ids of dsk's own tracks (the profiler's thread ids are small integers).
constexpr uint64_t kPhaseTid = 1000000;
constexpr uint64_t kMemoryTid = 1000001;
constexpr uint64_t kDeviceTidBase = 2000000;

struct TraceInput {
  std::vector<OpEvent> ops;             // µs since the Unix epoch
  std::vector<PhaseInterval> phases;    // steady clock µs
  std::vector<MemorySample> memory;     // steady clock µs
  double epoch_offset_us = 0;           // steady + offset = epoch
  int pid = 0;
  std::string process_name = "dsk";
};

nlohmann::json chrome_trace(const TraceInput& in);

}  // namespace dsk::profile
