// Learning-rate schedules against their closed forms at the steps that matter: warmup, the end of
// warmup, mid-decay, the end, and SGDR restart boundaries.
#include <cmath>

#include "core/error.h"
#include "test_util.h"
#include "train/schedule.h"

using dsk::train::Schedule;
using Catch::Matchers::Contains;

namespace {

const double kPi = std::acos(-1.0);

double cosine(double lr, double r, double p) { return lr * (r + (1 - r) * 0.5 * (1 + std::cos(kPi * p))); }

}  // namespace

TEST_CASE("constant schedule with warmup", "[schedule]") {
  Schedule s("constant", {{"warmup_steps", "10"}}, 2.0, 100);
  CHECK(s.lr_at(0) == Approx(0.2));
  CHECK(s.lr_at(4) == Approx(1.0));
  CHECK(s.lr_at(9) == Approx(2.0));  // the 10th update runs at the peak
  CHECK(s.lr_at(10) == 2.0);
  CHECK(s.lr_at(1000) == 2.0);
  Schedule none("constant", {}, 3e-4, 100);
  CHECK(none.lr_at(0) == 3e-4);
}

TEST_CASE("linear schedule decays to min_lr_ratio", "[schedule]") {
  Schedule s("linear", {{"warmup_steps", "10"}, {"min_lr_ratio", "0.1"}}, 1.0, 110);
  CHECK(s.lr_at(10) == Approx(1.0));
  CHECK(s.lr_at(60) == Approx(0.1 + 0.9 * 0.5));
  CHECK(s.lr_at(35) == Approx(0.1 + 0.9 * 0.75));
  CHECK(s.lr_at(110) == Approx(0.1));
  CHECK(s.lr_at(500) == Approx(0.1));
  Schedule zero("linear", {}, 1.0, 100);
  CHECK(zero.lr_at(0) == 1.0);
  CHECK(zero.lr_at(50) == Approx(0.5));
  CHECK(zero.lr_at(100) == Approx(0.0).margin(1e-15));
}

TEST_CASE("cosine schedule", "[schedule]") {
  const double lr = 3e-4, r = 0.1;
  Schedule s("cosine", {{"warmup_steps", "10"}, {"min_lr_ratio", "0.1"}}, lr, 110);
  CHECK(s.lr_at(0) == Approx(lr / 10));
  CHECK(s.lr_at(9) == Approx(lr));
  CHECK(s.lr_at(10) == Approx(lr));
  CHECK(s.lr_at(35) == Approx(cosine(lr, r, 0.25)));
  CHECK(s.lr_at(60) == Approx(lr * (r + (1 - r) * 0.5)));
  CHECK(s.lr_at(110) == Approx(lr * r));
  CHECK(s.lr_at(1000) == Approx(lr * r));
  double prev = s.lr_at(10);
  for (int64_t t = 11; t <= 120; ++t) {
    CHECK(s.lr_at(t) <= prev);
    prev = s.lr_at(t);
  }
}

TEST_CASE("cosine_restarts: fixed cycles", "[schedule]") {
  const double lr = 1.0, r = 0.2;
  Schedule s("cosine_restarts", {{"warmup_steps", "5"}, {"min_lr_ratio", "0.2"}, {"cycle_steps", "20"}}, lr, 200);
  CHECK(s.cycle_steps() == 20);
  CHECK(s.lr_at(4) == Approx(1.0));
  CHECK(s.lr_at(5) == Approx(1.0));
  CHECK(s.lr_at(15) == Approx(cosine(lr, r, 0.5)));
  CHECK(s.lr_at(24) == Approx(cosine(lr, r, 19.0 / 20)));
  CHECK(s.lr_at(25) == Approx(1.0));  // restart
  CHECK(s.lr_at(45) == Approx(1.0));
  CHECK(s.lr_at(50) == Approx(cosine(lr, r, 5.0 / 20)));
  CHECK(s.lr_at(24) < s.lr_at(25));
}

TEST_CASE("cosine_restarts: growing cycles", "[schedule]") {
  const double lr = 1.0, r = 0.0;
  // mult 2, C 10: cycles start at 0, 10, 30, 70 (after 3 warmup steps).
  Schedule s("cosine_restarts", {{"warmup_steps", "3"}, {"cycle_steps", "10"}, {"cycle_mult", "2"}}, lr, 1000);
  for (int64_t start : {0, 10, 30, 70, 150}) CHECK(s.lr_at(3 + start) == Approx(1.0));
  CHECK(s.lr_at(3 + 29) == Approx(cosine(lr, r, 19.0 / 20)));
  CHECK(s.lr_at(3 + 50) == Approx(cosine(lr, r, 20.0 / 40)));
  CHECK(s.lr_at(3 + 69) == Approx(cosine(lr, r, 39.0 / 40)));
  // mult 1.5, C 10: boundaries 0, 10, 25, 47.5, 81.25 (real-valued).
  Schedule f("cosine_restarts", {{"cycle_steps", "10"}, {"cycle_mult", "1.5"}}, lr, 1000);
  CHECK(f.lr_at(25) == Approx(1.0));
  CHECK(f.lr_at(47) == Approx(cosine(lr, r, 22.0 / 22.5)));
  CHECK(f.lr_at(48) == Approx(cosine(lr, r, 0.5 / 33.75)));
  CHECK(f.lr_at(81) == Approx(cosine(lr, r, 33.5 / 33.75)));
  // cycle_steps 0: one cycle over the whole run, i.e. plain cosine.
  Schedule one("cosine_restarts", {{"warmup_steps", "10"}}, lr, 110);
  Schedule cos("cosine", {{"warmup_steps", "10"}}, lr, 110);
  CHECK(one.cycle_steps() == 100);
  for (int64_t t : {0, 9, 10, 37, 60, 109}) CHECK(one.lr_at(t) == Approx(cos.lr_at(t)));
}

TEST_CASE("schedule registry and errors", "[schedule][registry]") {
  const auto& reg = dsk::train::schedule_registry();
  std::vector<std::string> names;
  for (const auto& c : reg) {
    names.push_back(c.name);
    CHECK(c.find("warmup_steps") != nullptr);
    // Every declared default builds.
    dsk::train::HParams defaults;
    for (const auto& p : c.params) defaults[p.key] = p.default_value;
    CHECK(Schedule(c.name, defaults, 1e-3, 100).lr_at(0) == Approx(1e-3));
  }
  CHECK(names == std::vector<std::string>{"constant", "linear", "cosine", "cosine_restarts"});
  auto usage_error = [](const std::string& name, const dsk::train::HParams& hp) -> std::string {
    try {
      Schedule(name, hp, 1e-3, 100);
    } catch (const dsk::Error& e) {
      CHECK(e.exit_code() == dsk::kExitUsage);
      return e.message();
    }
    return "";
  };
  CHECK_THAT(usage_error("cosin", {}), Contains("unknown schedule 'cosin' (valid: constant, linear"));
  CHECK_THAT(usage_error("cosine", {{"min_lr_ratio", "2"}}), Contains("schedule.min_lr_ratio = 2 is out of range"));
  CHECK_THAT(usage_error("linear", {{"warmup_steps", "-1"}}), Contains("schedule.warmup_steps = -1"));
  CHECK_THAT(usage_error("linear", {{"warmup_steps", "1.5"}}), Contains("schedule.warmup_steps: expected an integer"));
  CHECK_THAT(usage_error("cosine_restarts", {{"cycle_mult", "0.5"}}), Contains("schedule.cycle_mult = 0.5"));
}
