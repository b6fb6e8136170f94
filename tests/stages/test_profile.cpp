// dsk profile end to end on stories260K: a finetune and an eval (and generate) profile write
// report.html, summary.json and trace.json; the trace is Chrome trace-event JSON; the named phases
// add up to the measured wall time within 5%; the report renders in headless Chromium with no
// console errors and shows exactly the summary's numbers (the data-key convention of
// lib/profile/report.h); bad input exits 2 with one line. A missing chromium fails these tests
// (run scripts/setup), it never skips them.
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <vector>
#include <cstring>

#include "stage_util.h"
#include "test_util.h"

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using dsk::test::run_cmd;
using dsk::test::slurp;
using nlohmann::json;

namespace {

dsk::test::CmdResult profile(const std::string& config, const fs::path& out, const std::string& overrides = "") {
  return run_cmd(dsk::test::in_repo(dsk::test::dsk_bin() + " profile " + config + " output_dir=" + out.string() +
                                    " threads=2 " + overrides));
}

// A profile that must succeed: its stdout line.
json profile_ok(const std::string& config, const fs::path& out, const std::string& overrides = "") {
  auto r = profile(config, out, overrides);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  return json::parse(r.out);  // stdout: one JSON line
}

// The value at "a.b.0.c" in j (null when absent).
json at_path(const json& j, const std::string& path) {
  const json* v = &j;
  size_t start = 0;
  while (start <= path.size()) {
    size_t dot = path.find('.', start);
    std::string k = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (v->is_array()) {
      size_t i = std::stoul(k);
      if (i >= v->size()) return nullptr;
      v = &(*v)[i];
    } else if (v->is_object() && v->contains(k)) {
      v = &(*v)[k];
    } else {
      return nullptr;
    }
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return *v;
}

// trace.json: valid JSON in the trace-event format.
void check_trace(const fs::path& file) {
  json t = json::parse(slurp(file));  // throws (fails the test) when it is not JSON
  REQUIRE(t.contains("traceEvents"));
  REQUIRE(t["traceEvents"].is_array());
  CHECK(t["displayTimeUnit"] == "ms");
  int ops = 0, phases = 0, counters = 0;
  for (const auto& e : t["traceEvents"]) {
    INFO(e.dump());
    for (const char* k : {"name", "ph", "ts", "pid", "tid"}) REQUIRE(e.contains(k));
    REQUIRE(e["ts"].is_number());
    const std::string ph = e["ph"];
    CHECK((ph == "X" || ph == "C" || ph == "M"));
    if (ph == "X") {
      REQUIRE(e.contains("dur"));
      CHECK(e["dur"].get<double>() >= 0);
      if (e.value("cat", "") == "dsk_phase") ++phases;
      else ++ops;
    }
    if (ph == "C") ++counters;
  }
  CHECK(ops > 10);
  CHECK(phases > 0);
  CHECK(counters > 0);
}

// The numbers the profile promises: phases add up, throughput and MFU are sane.
json check_summary(const fs::path& dir, const std::string& stage) {
  json s = json::parse(slurp(dir / "summary.json"));
  CHECK(s["stage"] == stage);
  const double wall = s["wall_s"];
  REQUIRE(wall > 0);
  double named = 0, all = 0;
  for (const auto& p : s["phases"]) {
    CHECK(p["seconds"].get<double>() >= 0);
    all += p["seconds"].get<double>();
    if (p["name"] != "other") named += p["seconds"].get<double>();
  }
  INFO(s["phases"].dump());
  CHECK(std::abs(named - wall) <= 0.05 * wall);  // the named phases account for the wall time
  CHECK(all == Approx(wall).epsilon(1e-6));
  CHECK(s["named_phases_s"].get<double>() == Approx(named));
  CHECK(s["steps"]["measured"].get<int>() >= 1);
  CHECK(s["tokens_per_s"].get<double>() > 0);
  CHECK(s["flops_per_s"].get<double>() > 0);
  CHECK(s["peak_flops_per_s"].get<double>() > 0);
  CHECK(s["mfu"].get<double>() > 0);
  CHECK(s["mfu"].get<double>() <= 1);
  REQUIRE(s["top_ops"].size() > 3);
  CHECK(s["top_ops"][0]["calls"].get<int64_t>() >= 1);
  CHECK(s["top_ops"][0]["shapes"].get<std::string>().find('[') != std::string::npos);
  CHECK(s["memory"]["peak_rss_mib"].get<double>() > 10);
  CHECK(s["memory"]["samples"].size() >= 2);
  CHECK_FALSE(s["verdict"]["bound"].get<std::string>().empty());
  CHECK(s["verdict"]["advice"].size() >= 1);
  check_trace(dir / "trace.json");
  const std::string html = slurp(dir / "report.html");
  CHECK(html.find("http://") == std::string::npos);
  CHECK(html.find("https://") == std::string::npos);
  CHECK(html.find("src=\"//") == std::string::npos);
  return s;
}

std::string html_unescape(std::string s) {
  const std::pair<const char*, const char*> kEntities[] = {
      {"&lt;", "<"}, {"&gt;", ">"}, {"&quot;", "\""}, {"&#39;", "'"}, {"&nbsp;", "\xc2\xa0"}, {"&amp;", "&"}};
  for (const auto& [from, to] : kEntities) {
    for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + std::strlen(to)))
      s.replace(p, std::strlen(from), to);
  }
  return s;
}

struct Rendered {
  std::string dom, err;
};

// Loads a page in headless Chromium; the DOM after its scripts ran, and Chromium's stderr.
Rendered render(const fs::path& html, const fs::path& scratch) {
  if (run_cmd("command -v chromium").exit_code != 0)
    FAIL("chromium is not installed: run scripts/setup (it installs Debian's chromium for the report tests)");
  const fs::path profile_dir = scratch / ("chromium-profile-" + html.stem().string());
  fs::remove_all(profile_dir);
  auto r = run_cmd("timeout 120 chromium --headless --no-sandbox --disable-gpu --disable-background-networking "
                   "--disable-component-update --no-first-run --user-data-dir=" + profile_dir.string() +
                   " --enable-logging=stderr --v=0 --virtual-time-budget=5000 --dump-dom 'file://" +
                   fs::absolute(html).string() + "'");
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  return {r.out, r.err};
}

// Chromium logs console messages (uncaught exceptions included) as "...:CONSOLE(line)] ..." lines;
// the report writes none, so any is a failure.
bool has_console_errors(const std::string& err) {
  return err.find(":CONSOLE") != std::string::npos || err.find("Uncaught") != std::string::npos;
}

// The data-key elements of a rendered DOM checked against the summary: every key seen, and those
// whose text is not the summary's value (numbers × data-scale to 4 significant digits).
struct DomCheck {
  std::set<std::string> seen;
  std::vector<std::string> wrong;  // "key: shown 'text', summary has value"
};

DomCheck check_dom_values(const std::string& dom, const json& summary) {
  DomCheck out;
  static const std::regex element(R"re(<([a-z0-9]+)([^<>]*\bdata-key="([^"]*)"[^<>]*)>([^<]*)</\1>)re");
  static const std::regex scale_attr(R"re(data-scale="([^"]*)")re");
  for (auto it = std::sregex_iterator(dom.begin(), dom.end(), element); it != std::sregex_iterator(); ++it) {
    const std::string attrs = (*it)[2], key = (*it)[3], text = html_unescape((*it)[4]);
    const json v = at_path(summary, key);
    out.seen.insert(key);
    bool ok = false;
    if (v.is_string()) {
      ok = text == v.get<std::string>();
    } else if (v.is_null()) {
      ok = text == "n/a";
    } else if (v.is_number()) {
      std::smatch m;
      if (std::regex_search(attrs, m, scale_attr)) {
        const double expected = v.get<double>() * std::stod(m[1]);
        char* end = nullptr;
        const double shown = std::strtod(text.c_str(), &end);
        ok = end != text.c_str() && std::abs(shown - expected) <= 5e-4 * std::abs(expected) + 1e-12;
      }
    }
    if (!ok) out.wrong.push_back(key + ": shown '" + text + "', summary has " + v.dump());
  }
  return out;
}

// The report in Chromium: rendered completely, every section, the summary's numbers, no console
// errors. Returns the rendered DOM.
std::string check_report_in_browser(const fs::path& dir, const json& summary, const fs::path& scratch) {
  Rendered r = render(dir / "report.html", scratch);
  INFO(r.err);
  CHECK_FALSE(has_console_errors(r.err));
  CHECK_THAT(r.dom, Contains("data-rendered=\"ok\""));
  for (const char* id : {"verdict", "throughput", "phases", "ops", "memory", "machine", "config", "phases-svg",
                         "memory-svg", "phases-table", "ops-table", "ops-by-name-table"})
    CHECK_THAT(r.dom, Contains(std::string("id=\"") + id + "\""));
  DomCheck c = check_dom_values(r.dom, summary);
  for (const auto& w : c.wrong) FAIL_CHECK(w);
  CHECK(c.wrong.empty());
  const auto& keys = c.seen;
  CHECK(keys.size() > 40);
  for (const char* k : {"stage", "wall_s", "tokens_per_s", "flops_per_s", "peak_flops_per_s", "mfu", "verdict.bound",
                        "verdict.advice.0", "phases.0.seconds", "phases.1.fraction", "named_phases_s",
                        "top_ops.0.name", "top_ops.0.shapes", "top_ops.0.calls", "top_ops.0.self_ms",
                        "ops_by_name.0.name", "ops_by_name.0.self_fraction",
                        "memory.peak_rss_mib", "machine.cpu", "config_yaml"})
    CHECK(keys.count(k) == 1);
  return r.dom;
}

void expect_usage_error(const dsk::test::CmdResult& r, const std::string& needle) {
  INFO("stderr: " << r.err);
  CHECK(r.exit_code == 2);
  CHECK_THAT(r.err, Contains(needle));
  CHECK_THAT(r.err, !Contains("terminate called") && !Contains("frame #"));
  std::regex err_line("error: ");
  CHECK(std::distance(std::sregex_iterator(r.err.begin(), r.err.end(), err_line), std::sregex_iterator()) == 1);
  CHECK(r.out.empty());
}

}  // namespace

TEST_CASE("profile: finetune writes report, summary and trace, and the phases add up to the wall time",
          "[stages][profile]") {
  auto d = dsk::test::scratch_dir("profile_finetune");
  json line = profile_ok("configs/stories260k/profile-finetune.yaml", d / "p",
                         "profile.warmup_steps=1 profile.steps=3 batch_size=4");
  CHECK(line["stage"] == "profile");
  CHECK(line["profiled"] == "finetune");
  json s = check_summary(d / "p", "finetune");
  CHECK(s["steps"]["measured"] == 3);
  CHECK(s["steps"]["warmup"] == 1);
  CHECK(line["bound"] == s["verdict"]["bound"]);
  CHECK(s["tokens_per_step"] == 4 * 256);
  CHECK(s["tokens"] == 3 * 4 * 256);
  for (const char* phase : {"data", "forward", "backward", "optimizer"}) {
    bool positive = false;
    for (const auto& p : s["phases"])
      if (p["name"] == phase) positive = p["seconds"].get<double>() > 0;
    INFO(phase);
    CHECK(positive);
  }
  // The matrix products of the model are among the operators, with their shapes.
  bool mm = false;
  for (const auto& o : s["top_ops"]) mm = mm || o["name"] == "aten::mm" || o["name"] == "aten::addmm";
  CHECK(mm);
  // A profile is not a training run: no checkpoints, no model.
  CHECK(fs::exists(d / "p" / "config.yaml"));
  CHECK_FALSE(fs::exists(d / "p" / "model"));
  CHECK_FALSE(fs::exists(d / "p" / "adapter"));
  CHECK_FALSE(fs::exists(d / "p" / "checkpoints"));
}

TEST_CASE("profile: the report renders in headless Chromium with the summary's numbers and no console errors",
          "[stages][profile]") {
  auto d = dsk::test::scratch_dir("profile_report");
  profile_ok("configs/stories260k/profile-finetune.yaml", d / "p", "profile.warmup_steps=1 profile.steps=2 batch_size=4");
  json s = json::parse(slurp(d / "p" / "summary.json"));
  const std::string dom = check_report_in_browser(d / "p", s, d);

  // The checks can fail: a script error is reported on stderr, and a wrong number is caught.
  std::string html = slurp(d / "p" / "report.html");
  std::string broken = std::regex_replace(html, std::regex("\"use strict\";"), "\"use strict\"; undefinedFunction();");
  REQUIRE(broken != html);
  std::ofstream(d / "broken.html") << broken;
  Rendered b = render(d / "broken.html", d);
  CHECK(has_console_errors(b.err));
  CHECK_THAT(b.dom, !Contains("data-rendered=\"ok\""));
  json wrong = s;
  wrong["tokens_per_s"] = s["tokens_per_s"].get<double>() * 1.01;
  wrong["verdict"]["bound"] = "nothing";
  DomCheck c = check_dom_values(dom, wrong);
  REQUIRE(c.wrong.size() == 2);
  CHECK_THAT(c.wrong[0] + c.wrong[1], Contains("tokens_per_s: ") && Contains("verdict.bound: "));
}

TEST_CASE("profile: eval and generate profiles write a report", "[stages][profile]") {
  auto d = dsk::test::scratch_dir("profile_eval");
  profile_ok("configs/stories260k/profile-eval.yaml", d / "e", "profile.steps=3 batch_size=4");
  json s = check_summary(d / "e", "eval");
  CHECK(s["tokens_per_step"] == 4 * 256);
  for (const auto& p : s["phases"])
    if (p["name"] == "backward" || p["name"] == "optimizer") CHECK(p["seconds"].get<double>() == 0);
  CHECK(s["flops_formula"].get<std::string>().find("forward only") != std::string::npos);
  check_report_in_browser(d / "e", s, d);

  profile_ok("configs/stories260k/generate.yaml", d / "g",
             "profile.stage=generate profile.warmup_steps=1 profile.steps=2 generate.max_new_tokens=24");
  json gs = check_summary(d / "g", "generate");
  CHECK(gs["steps"]["measured"] == 2);
}

TEST_CASE("profile: bad input exits 2 with one line", "[stages][profile][bad-input]") {
  auto d = dsk::test::scratch_dir("profile_bad");
  const std::string cfg = "configs/stories260k/profile-finetune.yaml";
  auto r = profile(cfg, d / "zero", "profile.steps=0");
  expect_usage_error(r, "profile.steps");
  CHECK_THAT(r.err, Contains("fix:"));
  CHECK_FALSE(fs::exists(d / "zero"));

  expect_usage_error(profile(cfg, d / "s", "profile.stage=quantize"), "profile.stage 'quantize'");
  expect_usage_error(profile(cfg, d / "s", "profile.stage=evl"), "did you mean 'eval'?");
  expect_usage_error(profile(cfg, d / "k", "profile.stepz=3"), "did you mean 'profile.steps'?");
  expect_usage_error(profile("configs/stories260k/eval-tinystories.yaml", d / "n"), "profile.stage is not set");

  std::ofstream(d / "afile") << "not a directory\n";
  expect_usage_error(profile(cfg, d / "afile"), "is not a directory");
  CHECK(slurp(d / "afile") == "not a directory\n");
  fs::create_directories(d / "full");
  std::ofstream(d / "full" / "keep.txt") << "earlier results\n";
  expect_usage_error(profile(cfg, d / "full"), "already holds files");
  CHECK(slurp(d / "full" / "keep.txt") == "earlier results\n");
}
