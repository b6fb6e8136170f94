// Operator events and their aggregation: see profile/ops.h.
#include "profile/ops.h"

#include <torch/csrc/autograd/profiler_kineto.h>

#include <algorithm>
#include <map>
#include <numeric>
#include <sstream>
#include <tuple>

#include "core/error.h"
#include "core/torch_compat.h"

namespace dsk::profile {
namespace {

namespace tp = torch::profiler::impl;
namespace ap = torch::autograd::profiler;

std::string format_shapes(const ap::KinetoEvent& e) {
  if (!e.hasShapes()) return "";
  std::ostringstream out;
  out << "[";
  bool first = true;
  for (const auto& shape : e.shapes()) {
    out << (first ? "" : ", ") << "[";
    for (size_t i = 0; i < shape.size(); ++i) out << (i ? ", " : "") << shape[i];
    out << "]";
    first = false;
  }
  out << "]";
  return out.str();
}

}  // namespace

OpProfiler::~OpProfiler() {
  if (active_) {
    try {
      ap::disableProfiler();
    } catch (...) {  // a destructor during unwinding: the profiler's result is not wanted
    }
  }
}

void OpProfiler::start(bool record_shapes, bool cuda) {
  if (active_) fail("internal: the profiler is already running");
  tp::ProfilerConfig config(tp::ProfilerState::KINETO, record_shapes, /*profile_memory=*/false,
                            /*with_stack=*/false, /*with_flops=*/false, /*with_modules=*/false);
  std::set<tp::ActivityType> activities{tp::ActivityType::CPU};
  if (cuda) activities.insert(tp::ActivityType::CUDA);
  ap::prepareProfiler(config, activities);
  ap::enableProfiler(config, activities);
  active_ = true;
}

std::vector<OpEvent> OpProfiler::stop() {
  if (!active_) return {};
  active_ = false;
  auto result = ap::disableProfiler();
  std::vector<OpEvent> out;
  out.reserve(result->events().size());
  for (const auto& e : result->events()) {
    OpEvent o;
    o.name = e.name();
    o.device = e.deviceType() != c10::DeviceType::CPU;
    o.tid = o.device ? static_cast<uint64_t>(e.deviceResourceId()) : e.startThreadId();
    std::tie(o.start_us, o.dur_us) = compat::profiler_event_times_us(e);
    o.shapes = format_shapes(e);
    out.push_back(std::move(o));
  }
  return out;
}

std::vector<double> self_times_us(const std::vector<OpEvent>& events) {
  std::vector<double> self(events.size());
  for (size_t i = 0; i < events.size(); ++i) self[i] = events[i].dur_us;
  // Per thread, by start time (the longer first on ties, so a parent precedes its child);
  // a stack of open events finds each one's direct parent.
  std::vector<size_t> order(events.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    const auto& x = events[a];
    const auto& y = events[b];
    return std::make_tuple(x.device, x.tid, x.start_us, -x.dur_us, a) <
           std::make_tuple(y.device, y.tid, y.start_us, -y.dur_us, b);
  });
  std::vector<size_t> stack;
  for (size_t k = 0; k < order.size(); ++k) {
    const size_t i = order[k];
    const auto& e = events[i];
    if (k > 0) {
      const auto& prev = events[order[k - 1]];
      if (prev.device != e.device || prev.tid != e.tid) stack.clear();
    }
    if (e.device) continue;  // device activity: no nesting
    while (!stack.empty() && events[stack.back()].start_us + events[stack.back()].dur_us <= e.start_us) stack.pop_back();
    if (!stack.empty()) self[stack.back()] -= e.dur_us;
    stack.push_back(i);
  }
  for (auto& s : self) s = std::max(s, 0.0);
  return self;
}

std::vector<OpStat> aggregate_ops(const std::vector<OpEvent>& events, size_t n) {
  const std::vector<double> self = self_times_us(events);
  std::map<std::tuple<std::string, std::string, bool>, OpStat> by_key;
  for (size_t i = 0; i < events.size(); ++i) {
    const auto& e = events[i];
    OpStat& s = by_key[{e.name, e.shapes, e.device}];
    s.name = e.name, s.shapes = e.shapes, s.device = e.device;
    ++s.calls;
    s.self_us += self[i];
    s.total_us += e.dur_us;
  }
  std::vector<OpStat> out;
  out.reserve(by_key.size());
  for (auto& [k, s] : by_key) out.push_back(std::move(s));
  std::stable_sort(out.begin(), out.end(), [](const OpStat& a, const OpStat& b) { return a.self_us > b.self_us; });
  if (n > 0 && out.size() > n) out.resize(n);
  return out;
}

bool is_matmul_op(const std::string& name) {
  std::string s = name;
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  std::string base = s.rfind("aten::", 0) == 0 ? s.substr(6) : s;
  if (base.size() > 1 && base.back() == '_') base.pop_back();  // in-place variants: addmm_, baddbmm_
  static const char* const kOps[] = {"mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "dot", "addbmm",
                                     "mv", "addmv", "_convolution", "convolution", "conv2d", "conv1d",
                                     "mkldnn_convolution", "_scaled_dot_product_flash_attention",
                                     "_scaled_dot_product_efficient_attention"};
  for (const char* op : kOps)
    if (base == op) return true;
  return s.find("gemm") != std::string::npos || s.find("cutlass") != std::string::npos;  // device kernels
}

}  // namespace dsk::profile
