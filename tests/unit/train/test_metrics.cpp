// metrics.jsonl: exact line format, per-line flush, truncation on resume; RNG state capture.
#include <ATen/ATen.h>

#include <fstream>
#include <limits>
#include <sstream>

#include "core/error.h"
#include "test_util.h"
#include "train/metrics.h"
#include "train/rng.h"

using dsk::train::MetricsLog;
using nlohmann::ordered_json;

namespace {

std::string slurp(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

std::vector<int64_t> steps_in(const std::filesystem::path& p) {
  std::vector<int64_t> steps;
  std::istringstream is(slurp(p));
  std::string line;
  while (std::getline(is, line)) steps.push_back(nlohmann::json::parse(line).at("step").get<int64_t>());
  return steps;
}

ordered_json train_fields(int64_t step) {
  ordered_json j;
  j["loss"] = 2.0 + 1.0 / static_cast<double>(step);
  j["lr"] = 3e-4 * step;
  j["grad_norm"] = 0.1 * step;
  j["tokens_per_s"] = 1234.5;
  j["elapsed_s"] = 0.5 * step;
  return j;
}

}  // namespace

TEST_CASE("metrics line format", "[metrics]") {
  ordered_json f;
  f["loss"] = static_cast<double>(2.3456789f);
  f["lr"] = 3e-4;
  f["grad_norm"] = std::numeric_limits<double>::quiet_NaN();
  f["tokens_per_s"] = std::numeric_limits<double>::infinity();
  f["elapsed_s"] = 12.0;
  f["tokens"] = int64_t{12345678901};
  f["note"] = "a \"quoted\" word";
  f["done"] = true;
  CHECK(MetricsLog::format_line(7, f) ==
        "{\"step\": 7, \"loss\": 2.34567881, \"lr\": 0.0003, \"grad_norm\": null, \"tokens_per_s\": null, "
        "\"elapsed_s\": 12, \"tokens\": 12345678901, \"note\": \"a \\\"quoted\\\" word\", \"done\": true}");
  // Every line is valid JSON and round-trips float32 values exactly.
  auto j = nlohmann::json::parse(MetricsLog::format_line(7, f));
  CHECK(static_cast<float>(j["loss"].get<double>()) == 2.3456789f);
  CHECK(j["grad_norm"].is_null());
}

TEST_CASE("metrics.jsonl: flushed lines, byte-identical reruns, truncation on resume", "[metrics]") {
  auto dir = dsk::test::scratch_dir("metrics");
  const auto path = dir / "metrics.jsonl";
  {
    MetricsLog log(path);
    for (int64_t s = 1; s <= 10; ++s) {
      log.append(s, train_fields(s));
      if (s == 3) CHECK(steps_in(path) == std::vector<int64_t>{1, 2, 3});  // flushed while open
    }
    ordered_json ev;
    ev["eval_loss"] = 1.75;
    log.append(10, ev);
  }
  const std::string full = slurp(path);
  {
    MetricsLog rerun(dir / "rerun.jsonl");
    for (int64_t s = 1; s <= 10; ++s) rerun.append(s, train_fields(s));
    ordered_json ev;
    ev["eval_loss"] = 1.75;
    rerun.append(10, ev);
  }
  CHECK(slurp(dir / "rerun.jsonl") == full);

  // A crash mid-line after step 10, then resume from the checkpoint at step 6.
  std::ofstream(path, std::ios::app) << "{\"step\": 11, \"loss\": 1.9";
  {
    MetricsLog log(path, int64_t{6});
    CHECK(steps_in(path) == std::vector<int64_t>{1, 2, 3, 4, 5, 6});
    for (int64_t s = 7; s <= 10; ++s) log.append(s, train_fields(s));
  }
  CHECK(steps_in(path) == std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
  // The resumed file holds the same bytes as the uninterrupted one for the same values.
  CHECK(full.rfind(slurp(path), 0) == 0);

  // A fresh start (no resume step) begins with an empty file.
  {
    MetricsLog fresh(path);
    fresh.append(1, train_fields(1));
  }
  CHECK(steps_in(path) == std::vector<int64_t>{1});
  // Resume with no file yet creates it.
  { MetricsLog log(dir / "new.jsonl", int64_t{5}); }
  CHECK(std::filesystem::exists(dir / "new.jsonl"));
}

TEST_CASE("torch CPU generator state round trip", "[rng]") {
  at::manual_seed(123);
  at::Tensor state = dsk::train::rng_state().clone();
  CHECK(state.scalar_type() == at::kByte);
  at::Tensor a = at::rand({5});
  at::Tensor d1 = at::dropout(at::ones({64}), 0.5, true);
  at::rand({100});  // advance further
  dsk::train::set_rng_state(state);
  CHECK(at::equal(at::rand({5}), a));
  CHECK(at::equal(at::dropout(at::ones({64}), 0.5, true), d1));
  CHECK_THROWS_AS(dsk::train::set_rng_state(at::zeros({7}, at::kByte)), dsk::Error);
  CHECK_THROWS_AS(dsk::train::set_rng_state(at::zeros({7}, at::kFloat)), dsk::Error);
}

TEST_CASE("mt19937_64 state round trip", "[rng]") {
  std::mt19937_64 gen(42);
  for (int i = 0; i < 1000; ++i) gen();
  at::Tensor state = dsk::train::mt19937_state(gen);
  std::vector<uint64_t> expected;
  for (int i = 0; i < 5; ++i) expected.push_back(gen());
  std::mt19937_64 other(7);
  dsk::train::set_mt19937_state(other, state);
  std::vector<uint64_t> got;
  for (int i = 0; i < 5; ++i) got.push_back(other());
  CHECK(got == expected);
  std::mt19937_64 untouched(7);
  const std::mt19937_64 copy = untouched;
  CHECK_THROWS_AS(dsk::train::set_mt19937_state(untouched, state.narrow(0, 0, state.numel() / 2)), dsk::Error);
  CHECK(untouched == copy);
  CHECK_THROWS_AS(dsk::train::set_mt19937_state(untouched, at::zeros({3}, at::kByte)), dsk::Error);
}
