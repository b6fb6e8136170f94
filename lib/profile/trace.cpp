// Chrome trace events: see profile/trace.h.
#include "profile/trace.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

namespace dsk::profile {

nlohmann::json chrome_trace(const TraceInput& in) {
  using nlohmann::json;
  // Origin: the earliest timestamp of anything in the trace (epoch µs).
  double origin = std::numeric_limits<double>::infinity();
  for (const auto& e : in.ops) origin = std::min(origin, e.start_us);
  for (const auto& p : in.phases) origin = std::min(origin, p.start_us + in.epoch_offset_us);
  for (const auto& m : in.memory) origin = std::min(origin, m.t_us + in.epoch_offset_us);
  if (!std::isfinite(origin)) origin = 0;

  json events = json::array();
  auto meta = [&](const char* what, uint64_t tid, const std::string& name) {
    events.push_back({{"name", what}, {"ph", "M"}, {"ts", 0}, {"pid", in.pid}, {"tid", tid}, {"args", {{"name", name}}}});
  };
  meta("process_name", 0, in.process_name);
  meta("thread_name", kPhaseTid, "dsk phases");
  meta("thread_name", kMemoryTid, "memory");
  std::set<uint64_t> threads;
  for (const auto& e : in.ops) {
    const uint64_t tid = e.device ? kDeviceTidBase + e.tid : e.tid;
    if (threads.insert(tid).second)
      meta("thread_name", tid, e.device ? "cuda stream " + std::to_string(e.tid) : "cpu thread " + std::to_string(e.tid));
    json x = {{"name", e.name},           {"cat", e.device ? "kernel" : "cpu_op"}, {"ph", "X"},
              {"ts", e.start_us - origin}, {"dur", std::max(e.dur_us, 0.0)},        {"pid", in.pid},
              {"tid", tid}};
    if (!e.shapes.empty()) x["args"] = {{"input_shapes", e.shapes}};
    events.push_back(std::move(x));
  }
  for (const auto& p : in.phases)
    events.push_back({{"name", phase_name(p.phase)},
                      {"cat", "dsk_phase"},
                      {"ph", "X"},
                      {"ts", p.start_us + in.epoch_offset_us - origin},
                      {"dur", std::max(p.dur_us, 0.0)},
                      {"pid", in.pid},
                      {"tid", kPhaseTid},
                      {"args", {{"step", p.step}}}});
  for (const auto& m : in.memory) {
    json args = {{"rss_mib", static_cast<double>(m.rss) / (1 << 20)}};
    if (m.device >= 0) args["device_mib"] = static_cast<double>(m.device) / (1 << 20);
    events.push_back({{"name", "memory"},
                      {"ph", "C"},
                      {"ts", m.t_us + in.epoch_offset_us - origin},
                      {"pid", in.pid},
                      {"tid", kMemoryTid},
                      {"args", std::move(args)}});
  }
  return {{"traceEvents", std::move(events)},
          {"displayTimeUnit", "ms"},
          {"otherData", {{"producer", "dsk profile"}, {"origin_epoch_us", origin}}}};
}

}  // namespace dsk::profile
