// lib/profile: phase timers, self times and operator aggregation, the LibTorch profiler
// wrapper, FLOP formulas, verdict rules on synthetic profiles, the trace writer and the report.
#include <ATen/ATen.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "profile/flops.h"
#include "profile/ops.h"
#include "profile/phases.h"
#include "profile/report.h"
#include "profile/trace.h"
#include "profile/verdict.h"

#include "test_util.h"

using namespace dsk::profile;

namespace {

void busy_us(double us) {
  const double t0 = steady_us();
  while (steady_us() - t0 < us) {
  }
}

OpEvent op(const std::string& name, uint64_t tid, double start, double dur, bool device = false) {
  OpEvent e;
  e.name = name, e.tid = tid, e.start_us = start, e.dur_us = dur, e.device = device;
  return e;
}

VerdictInput balanced() {
  VerdictInput in;
  in.stage = "finetune";
  in.data = 0.01, in.communication = 0.0, in.checkpoint = 0.0, in.eval = 0.0, in.other = 0.01;
  in.mfu = 0.6, in.matmul_share = 0.8, in.mean_op_us = 400, in.batch_tokens = 4096;
  return in;
}

bool mentions(const Verdict& v, const std::string& text) {
  for (const auto& a : v.advice)
    if (a.find(text) != std::string::npos) return true;
  return false;
}

}  // namespace

TEST_CASE("profile: phase timer: phases tile each measured step and add up to the wall time", "[profile]") {
  PhaseTimer t;
  t.begin_step(1);  // not measuring: nothing recorded
  t.enter(Phase::Forward);
  t.end_step();
  CHECK(t.steps() == 0);
  CHECK(t.intervals().empty());

  t.set_measuring(true);
  for (int s = 1; s <= 3; ++s) {
    StepScope scope(&t, s);
    enter_phase(&t, Phase::Data);
    busy_us(200);
    enter_phase(&t, Phase::Forward);
    busy_us(500);
    enter_phase(&t, Phase::Backward);
    busy_us(800);
    enter_phase(&t, Phase::Optimizer);
    busy_us(300);
  }
  CHECK(t.steps() == 3);
  double sum = 0;
  for (int i = 0; i < kPhaseCount; ++i) sum += t.phase_us(static_cast<Phase>(i));
  CHECK(sum == Approx(t.wall_us()).epsilon(0.01));
  CHECK(t.phase_us(Phase::Backward) > t.phase_us(Phase::Forward));
  CHECK(t.phase_us(Phase::Forward) >= 3 * 500);
  CHECK(t.phase_us(Phase::Communication) == 0);
  CHECK(t.step_us().size() == 3);
  enter_phase(nullptr, Phase::Data);  // no timer: nothing happens
  std::string names;
  for (int i = 0; i < kPhaseCount; ++i) names += std::string(phase_name(static_cast<Phase>(i))) + " ";
  CHECK(names == "data forward backward optimizer communication checkpoint eval other ");
}

TEST_CASE("profile: self time subtracts directly nested operators on the same thread", "[profile]") {
  // linear [0, 100) > addmm [10, 90) > {copy [20, 30), gemm-ish [40, 80)}; another thread; a device kernel.
  std::vector<OpEvent> ev = {op("aten::linear", 1, 0, 100), op("aten::addmm", 1, 10, 80), op("aten::copy_", 1, 20, 10),
                             op("aten::mul", 1, 40, 40),    op("aten::add", 1, 120, 5),   op("aten::mm", 2, 0, 50),
                             op("gemm_kernel", 7, 30, 20, true)};
  auto self = self_times_us(ev);
  CHECK(self[0] == Approx(20));  // 100 - 80
  CHECK(self[1] == Approx(30));  // 80 - 10 - 40
  CHECK(self[2] == Approx(10));
  CHECK(self[3] == Approx(40));
  CHECK(self[4] == Approx(5));
  CHECK(self[5] == Approx(50));
  CHECK(self[6] == Approx(20));

  auto agg = aggregate_ops(ev, 3);
  REQUIRE(agg.size() == 3);
  CHECK(agg[0].name == "aten::mm");
  CHECK(agg[0].self_us == Approx(50));
  CHECK(agg[1].name == "aten::mul");
  auto all = aggregate_ops(ev, 0);
  CHECK(all.size() == 7);

  CHECK(is_matmul_op("aten::addmm"));
  CHECK(is_matmul_op("aten::bmm"));
  CHECK(is_matmul_op("aten::addmm_"));
  CHECK_FALSE(is_matmul_op("aten::add_"));
  CHECK(is_matmul_op("aten::linear"));
  CHECK(is_matmul_op("ampere_sgemm_128x64_nn"));
  CHECK_FALSE(is_matmul_op("aten::mul"));
  CHECK_FALSE(is_matmul_op("aten::copy_"));
}

TEST_CASE("profile: the LibTorch profiler wrapper records operators with shapes", "[profile]") {
  OpProfiler p;
  at::Tensor a = at::randn({32, 48});
  at::Tensor b = at::randn({48, 16});
  p.start(/*record_shapes=*/true, /*cuda=*/false);
  CHECK(p.active());
  at::Tensor c = at::mm(a, b).relu();
  auto events = p.stop();
  CHECK_FALSE(p.active());
  bool found = false;
  for (const auto& e : events)
    if (e.name == "aten::mm") {
      found = true;
      CHECK(e.shapes == "[[32, 48], [48, 16]]");
      CHECK(e.dur_us >= 0);
      CHECK(e.start_us > 1.6e15);  // µs since the Unix epoch (after 2020)
      CHECK_FALSE(e.device);
    }
  CHECK(found);
  CHECK(p.stop().empty());  // stopping twice is harmless
}

TEST_CASE("profile: FLOP formulas", "[profile]") {
  // stories260K-like: N = 200000 matmul parameters, 5 layers, d 64, T 256.
  CHECK(train_flops_per_token(200000, 0, 5, 64, 256) == Approx(6 * 200000.0 + 12 * 5 * 64 * 256.0));
  CHECK(train_flops_per_token(10000, 190000, 5, 64, 256) == Approx(6 * 10000.0 + 4 * 190000.0 + 12 * 5 * 64 * 256.0));
  CHECK(forward_flops_per_token(200000, 5, 64, 256) == Approx(2 * 200000.0 + 4 * 5 * 64 * 256.0));
  // Forward is a third of full training.
  CHECK(3 * forward_flops_per_token(1000, 2, 32, 16) == Approx(train_flops_per_token(1000, 0, 2, 32, 16)));
}

TEST_CASE("profile: peak FLOP/s micro-benchmark measures something plausible", "[profile]") {
  auto p = measure_peak_flops(c10::Device(c10::kCPU), at::kFloat, 2);
  CHECK(p.flops > 1e8);   // any CPU of this century
  CHECK(p.flops < 1e14);
  CHECK(p.method.find("2048x2048") != std::string::npos);
}

TEST_CASE("profile: verdict rules on synthetic profiles", "[profile]") {
  std::set<std::string> finetune_keys = {"batch_size", "grad_accum", "zero", "dtype", "activation_checkpointing",
                                         "data.pack", "data.train.format", "data.seq_len", "dist.bucket_mb",
                                         "checkpoint.every", "eval.every", "eval.max_batches"};
  auto with_keys = [&](VerdictInput in) {
    in.has_key = [&](const std::string& k) { return finetune_keys.count(k) > 0; };
    return in;
  };
  SECTION("compute bound") {
    auto v = decide(with_keys(balanced()));
    CHECK(v.bound == "compute");
    CHECK(mentions(v, "dtype: bf16"));
  }
  SECTION("data loading bound") {
    auto in = balanced();
    in.data = 0.35;
    auto v = decide(with_keys(in));
    CHECK(v.bound == "data loading");
    CHECK(mentions(v, "data.pack"));
  }
  SECTION("communication bound") {
    auto in = balanced();
    in.communication = 0.3, in.world = 4;
    auto v = decide(with_keys(in));
    CHECK(v.bound == "communication");
    CHECK(mentions(v, "zero: 1"));
    CHECK(mentions(v, "grad_accum"));
  }
  SECTION("memory bandwidth bound") {
    auto in = balanced();
    in.matmul_share = 0.2, in.mfu = 0.05;
    auto v = decide(with_keys(in));
    CHECK(v.bound == "memory bandwidth");
  }
  SECTION("overhead bound: many tiny operators") {
    auto in = balanced();
    in.matmul_share = 0.3, in.mfu = 0.02, in.mean_op_us = 8, in.batch_tokens = 256;
    auto v = decide(with_keys(in));
    CHECK(v.bound == "overhead (small operators)");
    CHECK(mentions(v, "batch_size"));
    CHECK(v.reason.find("8.0 µs") != std::string::npos);
    in.stage = "generate";
    in.has_key = [](const std::string& k) { return k == "dtype"; };
    auto g = decide(in);
    CHECK(g.bound == "overhead (small operators)");
    CHECK_FALSE(mentions(g, "batch_size"));
    CHECK(mentions(g, "one token per forward pass"));
  }
  SECTION("small matmuls at low MFU") {
    auto in = balanced();
    in.mfu = 0.1;
    auto v = decide(with_keys(in));
    CHECK(v.bound == "compute");
    CHECK(mentions(v, "batch_size"));
  }
  SECTION("memory pressure adds activation checkpointing") {
    auto in = balanced();
    in.memory_share = 0.9;
    CHECK(mentions(decide(with_keys(in)), "activation_checkpointing: true"));
    in.activation_checkpointing = true;
    CHECK_FALSE(mentions(decide(with_keys(in)), "activation_checkpointing: true"));
  }
  SECTION("advice names only keys the stage declares") {
    auto in = balanced();
    in.stage = "eval";
    in.communication = 0.5;
    in.has_key = [](const std::string& k) { return k == "batch_size"; };
    auto v = decide(in);
    CHECK(v.bound == "communication");
    CHECK_FALSE(mentions(v, "zero"));
    CHECK_FALSE(mentions(v, "grad_accum"));
    CHECK(mentions(v, "batch_size"));
  }
}

TEST_CASE("profile: trace writer: Chrome trace events with phases, operators and memory counters", "[profile]") {
  TraceInput in;
  const double offset = 1.7e15;
  in.epoch_offset_us = offset;
  in.pid = 42;
  in.ops = {op("aten::mm", 1, offset + 100, 50), op("gemm", 3, offset + 120, 10, true)};
  in.ops[0].shapes = "[[2, 3], [3, 4]]";
  in.phases = {{Phase::Forward, 1, 90, 70}, {Phase::Backward, 1, 160, 40}};
  MemorySample m;
  m.t_us = 95, m.rss = 3 << 20;
  in.memory = {m};
  auto j = nlohmann::json::parse(chrome_trace(in).dump());  // survives a round trip
  REQUIRE(j.contains("traceEvents"));
  CHECK(j["displayTimeUnit"] == "ms");
  int x = 0, c = 0, meta = 0;
  for (const auto& e : j["traceEvents"]) {
    for (const char* k : {"name", "ph", "ts", "pid", "tid"}) CHECK(e.contains(k));
    CHECK(e["pid"] == 42);
    CHECK(e["ts"].get<double>() >= 0);
    const std::string ph = e["ph"];
    if (ph == "X") {
      ++x;
      CHECK(e["dur"].get<double>() >= 0);
    } else if (ph == "C") {
      ++c;
      CHECK(e["args"]["rss_mib"].get<double>() == Approx(3.0));
    } else {
      CHECK(ph == "M");
      ++meta;
    }
    if (e["name"] == "forward") {
      CHECK(e["tid"] == kPhaseTid);
      CHECK(e["ts"].get<double>() == Approx(0));  // the earliest event is the origin
      CHECK(e["args"]["step"] == 1);
    }
    if (e["name"] == "aten::mm") {
      CHECK(e["ts"].get<double>() == Approx(10));
      CHECK(e["args"]["input_shapes"] == "[[2, 3], [3, 4]]");
    }
    if (e["name"] == "gemm") CHECK(e["tid"] == kDeviceTidBase + 3);
  }
  CHECK(x == 4);
  CHECK(c == 1);
  CHECK(meta >= 4);
}

TEST_CASE("profile: report: self-contained page embedding the summary safely", "[profile]") {
  nlohmann::ordered_json s = {{"stage", "eval"}, {"config_yaml", "x: \"</script><script>alert(1)</script>\""}};
  std::string html = render_report_html(s);
  CHECK(html.find("http://") == std::string::npos);
  CHECK(html.find("https://") == std::string::npos);
  CHECK(html.find("src=") == std::string::npos);
  CHECK(html.find("<link") == std::string::npos);
  CHECK(html.find("alert(1)</script>") == std::string::npos);  // '<' is escaped inside the data
  CHECK(html.find("\\u003c/script>") != std::string::npos);
  for (const char* id : {"id=\"verdict\"", "id=\"throughput\"", "id=\"phases\"", "id=\"ops\"", "id=\"memory\"",
                         "id=\"machine\"", "id=\"config\"", "id=\"summary-data\""})
    CHECK(html.find(id) != std::string::npos);
}

TEST_CASE("profile: memory sampler reads the resident set size over time", "[profile]") {
  CHECK(rss_bytes() > 0);
  CHECK(total_memory_bytes() > 0);
  MemorySampler m(1);
  // At least one sample from the thread besides the first and the last; waits for it rather than a fixed
  // time, so a loaded CI machine that schedules the thread late does not fail the test.
  for (int i = 0; i < 500 && m.samples().size() < 2; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  m.stop();
  auto s = m.samples();
  CHECK(s.size() >= 3);
  for (size_t i = 1; i < s.size(); ++i) CHECK(s[i].t_us >= s[i - 1].t_us);
  CHECK(s.back().rss > 0);
  CHECK(s.back().device == -1);
}
